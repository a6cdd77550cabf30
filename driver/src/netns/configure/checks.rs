//! Decisions taken before the device is touched: the settings checked against what the
//! device allows, and the link settings that ride in the move's own message (or one
//! request per field when the kernel refuses them together).

use std::collections::BTreeMap;

use super::super::{
    ethtool::{resolve_features, FeatureProblem},
    host::HostOriginals,
    link::{self, LinkChange, LinkFacts},
};
use super::{
    failure::{Failure, Step, StepError},
    spec::InterfaceSettings,
};

/// Names the kernel accepts for a link (`dev_valid_name`).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

/// Checks settings against the device before anything is changed.
pub(super) fn validate(
    settings: &InterfaceSettings,
    link: &LinkFacts,
    originals: &HostOriginals,
) -> Result<ResolvedFeatures, Failure> {
    let invalid = |field: String, msg: String| Failure {
        step: Step::Validate,
        field,
        source: StepError::Invalid(msg),
        touched: false,
    };
    let dev = &link.name;
    if let Some(name) = &settings.name {
        if !valid_ifname(name) {
            return Err(invalid(
                "interface.name".into(),
                format!("{name:?} is not a valid interface name"),
            ));
        }
    }
    if let Some(mtu) = settings.mtu {
        if let Some(max) = link.max_mtu.filter(|m| *m > 0) {
            if mtu > max {
                return Err(invalid(
                    "interface.mtu".into(),
                    format!("{mtu} is above the maximum MTU of {dev} ({max})"),
                ));
            }
        }
        if let Some(min) = link.min_mtu {
            if mtu < min {
                return Err(invalid(
                    "interface.mtu".into(),
                    format!("{mtu} is below the minimum MTU of {dev} ({min})"),
                ));
            }
        }
    }
    if let Some(mac) = settings.mac {
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(invalid(
                "interface.hardwareAddr".into(),
                format!("{} is not a unicast address", link::format_mac(&mac)),
            ));
        }
    }
    let features = match resolve_features(
        &settings.ethtool_features,
        &originals.ethtool_features,
        &originals.ethtool_changeable,
    ) {
        Ok(f) => f,
        Err((name, problem)) => {
            let why = match problem {
                FeatureProblem::Unknown => format!("not a feature of {dev}"),
                FeatureProblem::Fixed { active } => {
                    format!("fixed to {} on {dev}", if active { "on" } else { "off" })
                }
            };
            return Err(invalid(format!("ethtool.features[{name:?}]"), why));
        }
    };
    for name in settings.private_flags.keys() {
        if !originals.private_flags.contains_key(name) {
            return Err(invalid(
                format!("ethtool.privateFlags[{name:?}]"),
                format!("not a private flag of {dev}"),
            ));
        }
    }
    Ok(features)
}

/// Kernel feature name → (wanted state, the config key it came from).
pub(super) type ResolvedFeatures = BTreeMap<String, (bool, String)>;

/// The link settings part of the combined move message.
pub(super) fn link_settings(settings: &InterfaceSettings) -> LinkChange {
    LinkChange {
        mtu: settings.mtu,
        mac: settings.mac,
        gso_max_size: settings.gso_max_size,
        gro_max_size: settings.gro_max_size,
        gso_ipv4_max_size: settings.gso_ipv4_max_size,
        gro_ipv4_max_size: settings.gro_ipv4_max_size,
        ..Default::default()
    }
}

/// Splits a link change into one change per config field, for precise errors.
pub(crate) fn per_field(change: &LinkChange) -> Vec<(&'static str, LinkChange)> {
    let mut out = Vec::new();
    let base = LinkChange::default;
    if let Some(v) = change.mtu {
        out.push((
            "interface.mtu",
            LinkChange {
                mtu: Some(v),
                ..base()
            },
        ));
    }
    if let Some(v) = change.mac {
        out.push((
            "interface.hardwareAddr",
            LinkChange {
                mac: Some(v),
                ..base()
            },
        ));
    }
    if let Some(v) = change.gso_max_size {
        out.push((
            "interface.gsoMaxSize",
            LinkChange {
                gso_max_size: Some(v),
                ..base()
            },
        ));
    }
    if let Some(v) = change.gro_max_size {
        out.push((
            "interface.groMaxSize",
            LinkChange {
                gro_max_size: Some(v),
                ..base()
            },
        ));
    }
    if let Some(v) = change.gso_ipv4_max_size {
        out.push((
            "interface.gsoIPv4MaxSize",
            LinkChange {
                gso_ipv4_max_size: Some(v),
                ..base()
            },
        ));
    }
    if let Some(v) = change.gro_ipv4_max_size {
        out.push((
            "interface.groIPv4MaxSize",
            LinkChange {
                gro_ipv4_max_size: Some(v),
                ..base()
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(valid_ifname("net0"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(""));
    }

    #[test]
    fn per_field_names_each_setting() {
        let c = LinkChange {
            mtu: Some(9000),
            mac: Some([2, 0, 0, 0, 0, 1]),
            gro_ipv4_max_size: Some(1),
            ..Default::default()
        };
        let fields: Vec<_> = per_field(&c).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "interface.mtu",
                "interface.hardwareAddr",
                "interface.groIPv4MaxSize"
            ]
        );
    }
}
