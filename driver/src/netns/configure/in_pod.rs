//! The pod namespace's part of a hand-over: a moved device ([`MovedIn`]) gets its
//! remaining link settings, sysctls, VRF, addresses, admin state, routes, rules,
//! neighbours and ethtool settings, each checked, and the result is read back from the
//! kernel ([`configure_here`]).

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::super::{
    ethtool::Ethtool,
    host::HostOriginals,
    link::{self, LinkChange, LinkFacts, RouteRecord, RTPROT_STATIC, RT_TABLE_MAIN},
    netlink::NlSocket,
    restore::PodSide,
    rules::{self, RuleSpec},
    sysctl, vrf, Netns,
};
use super::{
    checks::{per_field, ResolvedFeatures},
    failure::{fail, finish_failure, ConfigureError, Failure, Step, StepError},
    spec::{Configured, InterfaceSettings},
};

/// A device [`super::move_captured`] moved into a pod and [`configure_moved`] has still to
/// configure there.
#[derive(Debug)]
pub struct MovedIn {
    /// Its name in the pod (the move renamed it).
    pub(super) pod_name: String,
    pub(super) originals: HostOriginals,
    /// Link settings still to apply in the pod (empty when the combined message took).
    pub(super) pending: LinkChange,
    pub(super) link_requests: usize,
    pub(super) features: ResolvedFeatures,
    /// The MAC the claim asks for, if any.
    pub(super) mac: Option<[u8; 6]>,
}

impl MovedIn {
    /// The host state captured before the move (what a restore puts back).
    pub fn originals(&self) -> &HostOriginals {
        &self.originals
    }

    /// What [`mod@crate::netns::restore`] needs to find the moved device in the pod.
    pub fn pod_side(&self) -> PodSide {
        PodSide {
            name: self.pod_name.clone(),
            ifindex: None,
            mac: self.mac.or(self.originals.mac),
        }
    }
}

/// The last step of [`super::move_and_configure_with`]: configures in the pod a device
/// [`super::move_captured`] moved there. On failure the device is left in the pod (the error's
/// `left` says so, with what to restore).
pub fn configure_moved(
    pod: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
    moved: MovedIn,
) -> Result<Configured, ConfigureError> {
    let (host_ifname, settings) = (host_ifname.to_string(), settings.clone());
    pod.run(move || configure_here(&mut None, &host_ifname, &settings, moved))?
}

/// [`configure_moved`] on a thread already in the pod's namespace, through `sock` (opened
/// here when `None`; a caller configuring several devices keeps one for all of them).
pub(crate) fn configure_here(
    sock: &mut Option<NlSocket>,
    host_ifname: &str,
    settings: &InterfaceSettings,
    moved: MovedIn,
) -> Result<Configured, ConfigureError> {
    let MovedIn {
        pod_name,
        originals,
        pending,
        link_requests,
        features,
        mac: _,
    } = moved;
    let pod_started = std::time::Instant::now();
    let mut added = PodAdditions::default();
    let opened = match sock.take() {
        Some(open) => Ok(open),
        None => NlSocket::route().map_err(|e| fail(Step::Move, "device", e)),
    };
    let pod_result = opened.and_then(|mut open| {
        let result = pod_job(
            &mut open, &pod_name, settings, &originals, &pending, &features, &mut added,
        );
        *sock = Some(open);
        result
    });
    tracing::debug!(
        device = host_ifname,
        configure_us = pod_started.elapsed().as_micros() as u64,
        "pod side: configured"
    );
    // What was added in the pod is undone by restore, on failure now or at stop.
    let mut originals = originals;
    originals.pod_rules = added.rules;
    originals.pod_vrf = added.vrf;
    match pod_result {
        Ok((facts, addresses, link_local)) => Ok(Configured {
            pod_ifname: facts.name,
            ifindex_in_pod: facts.ifindex,
            mac: facts.mac,
            addresses,
            link_local,
            originals,
            link_requests: link_requests + per_field(&pending).len(),
        }),
        Err(failure) => Err(finish_failure(
            host_ifname,
            &pod_name,
            settings.mac,
            failure,
            Some(originals),
        )),
    }
}

/// Namespace-wide things the pod job created, recorded as it goes.
#[derive(Debug, Default)]
struct PodAdditions {
    rules: Vec<RuleSpec>,
    vrf: Option<String>,
}

fn pod_job(
    sock: &mut NlSocket,
    pod_name: &str,
    settings: &InterfaceSettings,
    originals: &HostOriginals,
    pending: &LinkChange,
    features: &ResolvedFeatures,
    added: &mut PodAdditions,
) -> Result<(LinkFacts, Vec<IpNet>, Vec<std::net::Ipv6Addr>), Failure> {
    // Find our device by name *and* identity: when the combined message is refused,
    // the kernel may already have moved the device under its host name (the rename
    // is applied after the move), and the pod may hold a stranger with `pod_name`.
    // Asked for by name first (one reply), the whole namespace listed only if that
    // is not ours.
    let side = PodSide {
        name: pod_name.to_string(),
        ifindex: None,
        mac: settings.mac.or(originals.mac),
    };
    let ours = |l: &LinkFacts| crate::netns::restore::is_ours_in_pod(l, &side, originals);
    let named = link::link_by_name(sock, pod_name)
        .map_err(|e| fail(Step::Move, "device", e))?
        .filter(ours);
    let listed = match named {
        Some(link) => Some(link),
        None => link::links(sock)
            .map_err(|e| fail(Step::Move, "device", e))?
            .into_iter()
            .find(ours),
    };
    let link = listed.ok_or_else(|| {
        fail(
            Step::Move,
            "interface.name",
            StepError::Invalid(format!("{pod_name} not found in the pod after the move")),
        )
    })?;
    if link.name != pod_name {
        let rename = LinkChange {
            name: Some(pod_name.to_string()),
            ..Default::default()
        };
        link::set_link(sock, link.ifindex, &rename)
            .map_err(|e| fail(Step::Move, "interface.name", e))?;
    }
    let idx = link.ifindex;

    for (field, change) in per_field(pending) {
        link::set_link(sock, idx, &change).map_err(|e| fail(Step::LinkSettings, field, e))?;
    }

    // The move reset these to the pod's defaults; set what the claim asks before the
    // link comes up, and read them back.
    if !settings.sysctls.is_empty() {
        sysctl::write(pod_name, &settings.sysctls)
            .map_err(|(key, e)| fail(Step::LinkSettings, sysctl::field_of(key), e))?;
        let now = sysctl::read(pod_name)
            .map_err(|e| fail(Step::LinkSettings, "interface.forwarding", e))?;
        let mut wanted = settings.sysctls;
        if now.forwarding_v6.is_none() {
            wanted.forwarding_v6 = None; // no IPv6 on the interface: skipped, as in DraNet
        }
        let missed = wanted.differing_from(&now);
        if !missed.is_empty() {
            let field = if missed.arp_ignore.is_some() {
                "interface.arpIgnore"
            } else if missed.arp_announce.is_some() {
                "interface.arpAnnounce"
            } else {
                "interface.forwarding"
            };
            return Err(fail(
                Step::LinkSettings,
                field,
                StepError::Invalid(format!(
                    "{pod_name} reads back {now:?} after writing {wanted:?}"
                )),
            ));
        }
    }

    if let Some(v) = &settings.vrf {
        let created = vrf::ensure(sock, &v.name, v.table)
            .map_err(|e| fail(Step::LinkSettings, "interface.vrf", Box::new(e)))?;
        if created {
            added.vrf = Some(v.name.clone());
        }
        let master = link::link_by_name(sock, &v.name)
            .map_err(|e| fail(Step::LinkSettings, "interface.vrf", e))?
            .ok_or_else(|| {
                fail(
                    Step::LinkSettings,
                    "interface.vrf",
                    StepError::Invalid(format!("VRF {} disappeared", v.name)),
                )
            })?;
        vrf::enslave(sock, idx, master.ifindex)
            .map_err(|e| fail(Step::LinkSettings, "interface.vrf", e))?;
    }

    // Addresses: the claim's, or the host's carried along (a move drops them); none
    // for DHCP, whose lease brings them later.
    let carried = settings.addresses.is_empty() && !settings.dhcp;
    let addresses: &[IpNet] = if carried {
        &originals.addresses
    } else {
        &settings.addresses
    };
    for (i, net) in addresses.iter().enumerate() {
        let field = if carried {
            format!("host address {net} (carried along, interface.addresses empty)")
        } else {
            format!("interface.addresses[{i}]")
        };
        link::add_address(sock, idx, *net).map_err(|e| fail(Step::Addresses, field, e))?;
    }

    link::set_link(
        sock,
        idx,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .map_err(|e| fail(Step::LinkUp, "interface", e))?;

    for (i, r) in settings.routes.iter().enumerate() {
        let record = RouteRecord {
            destination: r.destination,
            gateway: r.gateway,
            source: r.source,
            scope: r.scope,
            table: r.table.unwrap_or(RT_TABLE_MAIN),
            priority: None,
            protocol: RTPROT_STATIC,
            kind: 1,
        };
        link::add_route(sock, idx, &record)
            .map_err(|e| fail(Step::Routes, format!("routes[{i}]"), e))?;
    }
    if carried {
        for r in &originals.routes {
            match link::add_route(sock, idx, r) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(fail(
                        Step::Routes,
                        format!("host route {} (carried along)", r.destination),
                        e,
                    ))
                }
            }
        }
    }

    // The kernel keeps a rule that differs only in its protocol as a second rule, so
    // "already there" is decided on what routes: family, priority, selectors, table.
    let existing = if settings.rules.is_empty() {
        Vec::new()
    } else {
        rules::rules(sock).map_err(|e| fail(Step::Routes, "rules", e))?
    };
    for rule in &settings.rules {
        if existing.contains(&rule.spec) {
            continue; // someone else's: not recorded, so never removed by netclaim
        }
        let created = rules::add_rule(sock, &rule.spec)
            .map_err(|e| fail(Step::Routes, format!("rules[{}]", rule.index), e))?;
        if created {
            added.rules.push(rule.spec.clone());
        }
    }

    for (i, n) in settings.neighbours.iter().enumerate() {
        rules::add_permanent_neighbour(sock, idx, n.destination, n.mac)
            .map_err(|e| fail(Step::Routes, format!("neighbors[{i}]"), e))?;
    }

    if !features.is_empty() || !settings.private_flags.is_empty() {
        let mut eth = Ethtool::open().map_err(|e| fail(Step::Ethtool, "ethtool", e))?;
        apply_ethtool(&mut eth, idx, &link.name, features, &settings.private_flags)?;
    }

    let facts = link::link_by_index(sock, idx)
        .map_err(|e| fail(Step::ReadBack, "device", e))?
        .ok_or_else(|| {
            fail(
                Step::ReadBack,
                "device",
                StepError::Invalid(format!("{pod_name} disappeared")),
            )
        })?;
    let (global, link_scope): (Vec<_>, Vec<_>) = link::addresses(sock, idx)
        .map_err(|e| fail(Step::ReadBack, "device", e))?
        .into_iter()
        .partition(|a| a.scope < 200);
    let link_local = link_scope
        .into_iter()
        .filter_map(|a| match a.net.addr() {
            std::net::IpAddr::V6(v6) => Some(v6),
            std::net::IpAddr::V4(_) => None,
        })
        .collect();
    Ok((
        facts,
        global.into_iter().map(|a| a.net).collect(),
        link_local,
    ))
}

fn apply_ethtool(
    eth: &mut Ethtool,
    idx: u32,
    dev: &str,
    features: &ResolvedFeatures,
    private_flags: &BTreeMap<String, bool>,
) -> Result<(), Failure> {
    let first_key = |prefix: &str, keys: &mut dyn Iterator<Item = &String>| {
        keys.next()
            .map(|k| format!("{prefix}[{k:?}]"))
            .unwrap_or_else(|| prefix.to_string())
    };
    if !features.is_empty() {
        let wanted: BTreeMap<String, bool> = features
            .iter()
            .map(|(n, (on, _))| (n.clone(), *on))
            .collect();
        eth.set_features(idx, &wanted).map_err(|e| {
            let mut keys = features.values().map(|(_, k)| k);
            fail(Step::Ethtool, first_key("ethtool.features", &mut keys), e)
        })?;
        let now = eth
            .features(idx)
            .map_err(|e| fail(Step::Ethtool, "ethtool.features", e))?;
        for (name, (want, key)) in features {
            if now.active.get(name) != Some(want) {
                return Err(fail(
                    Step::Ethtool,
                    format!("ethtool.features[{key:?}]"),
                    StepError::Invalid(format!(
                        "{dev} kept {name} {} (it depends on another feature)",
                        if *want { "off" } else { "on" }
                    )),
                ));
            }
        }
    }
    if !private_flags.is_empty() {
        eth.set_private_flags(idx, private_flags).map_err(|e| {
            let mut keys = private_flags.keys();
            fail(
                Step::Ethtool,
                first_key("ethtool.privateFlags", &mut keys),
                e,
            )
        })?;
        let now = eth
            .private_flags(idx)
            .map_err(|e| fail(Step::Ethtool, "ethtool.privateFlags", e))?;
        for (name, want) in private_flags {
            if now.get(name) != Some(want) {
                return Err(fail(
                    Step::Ethtool,
                    format!("ethtool.privateFlags[{name:?}]"),
                    StepError::Invalid(format!("{dev} did not take the new state")),
                ));
            }
        }
    }
    Ok(())
}
