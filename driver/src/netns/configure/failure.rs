//! How a hand-over fails: the [`Step`], the config field and the cause
//! ([`ConfigureError`]), and where a touched device was left ([`Left`]) so that one
//! rollback owner can bring it home.

use std::fmt;

use super::super::{
    ethtool::EthtoolError,
    host::{CaptureError, HostOriginals},
    netlink::NlError,
    restore::PodSide,
    sysctl,
    vrf::VrfError,
    NetnsError,
};

/// The stage of [`super::move_and_configure`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Capture,
    Validate,
    Move,
    LinkSettings,
    Addresses,
    LinkUp,
    Routes,
    Ethtool,
    ReadBack,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Capture => "capturing host originals",
            Step::Validate => "validating against the device",
            Step::Move => "moving into the pod namespace",
            Step::LinkSettings => "setting link attributes",
            Step::Addresses => "adding addresses",
            Step::LinkUp => "setting the link up",
            Step::Routes => "adding routes",
            Step::Ethtool => "setting ethtool features",
            Step::ReadBack => "reading the result back",
        })
    }
}

/// What went wrong inside a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error(transparent)]
    Ethtool(#[from] EthtoolError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Vrf(#[from] Box<VrfError>),
    #[error("{0}")]
    Invalid(String),
    /// The caller's write-ahead record could not be made; nothing was changed.
    #[error("recording the intent before the move: {0}")]
    Intent(String),
}

/// Why a device could not be handed to the pod.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("device {device}: not found in host namespace {netns}")]
    NotFound { device: String, netns: String },
    #[error(
        "device {device}: {step}: {field}: {source}{}",
        match rollback { Some(r) => format!(" (and restoring the device failed: {r})"), None => String::new() }
    )]
    Failed {
        device: String,
        step: Step,
        /// Config field path, e.g. `interface.mtu`, `routes[1]`, `ethtool.features["foo"]`.
        field: String,
        #[source]
        source: StepError,
        /// `None` when the device was left (or put back) exactly as it was.
        rollback: Option<String>,
        /// Where the device was left when it was touched and not put back
        /// ([`super::move_and_configure_with`] leaves that to its caller); `None` otherwise.
        left: Option<Box<Left>>,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// A device that a failed [`super::move_and_configure_with`] touched: what
/// [`crate::netns::restore_device`] needs to bring it home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub side: PodSide,
    /// `None` when the failure came before the host state was captured.
    pub originals: Option<HostOriginals>,
}

impl ConfigureError {
    /// What went wrong without the device and step, for callers that name those
    /// themselves (one sentence, nothing said twice).
    pub fn detail(&self) -> String {
        match self {
            ConfigureError::Failed {
                field,
                source,
                rollback,
                ..
            } => {
                let mut text = format!("{field}: {source}");
                if let Some(r) = rollback {
                    text.push_str(&format!(" (and restoring the device failed: {r})"));
                }
                text
            }
            other => other.to_string(),
        }
    }

    /// The config field the failure is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigureError::Failed { field, .. } => Some(field),
            _ => None,
        }
    }

    pub fn step(&self) -> Option<Step> {
        match self {
            ConfigureError::Failed { step, .. } => Some(*step),
            _ => None,
        }
    }
}

/// A failure inside one namespace job, before it is tied to a device name.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) step: Step,
    pub(super) field: String,
    pub(super) source: StepError,
    /// Whether the device may have been changed.
    pub(super) touched: bool,
}

pub(super) fn fail(step: Step, field: impl Into<String>, source: impl Into<StepError>) -> Failure {
    Failure {
        step,
        field: field.into(),
        source: source.into(),
        touched: true,
    }
}

/// Turns a failure into the error; a touched device is left where it is, for the
/// caller (the lifecycle's single rollback owner, or [`super::move_and_configure`]).
pub(super) fn finish_failure(
    host_ifname: &str,
    pod_name: &str,
    mac: Option<[u8; 6]>,
    failure: Failure,
    originals: Option<HostOriginals>,
) -> ConfigureError {
    let left = failure.touched.then(|| {
        Box::new(Left {
            side: PodSide {
                name: pod_name.to_string(),
                ifindex: None,
                mac: mac.or(originals.as_ref().and_then(|o| o.mac)),
            },
            originals,
        })
    });
    tracing::warn!(device = host_ifname, step = %failure.step, field = %failure.field,
        error = %failure.source, touched = left.is_some(), "configure failed");
    ConfigureError::Failed {
        device: host_ifname.to_string(),
        step: failure.step,
        field: failure.field,
        source: failure.source,
        rollback: None,
        left,
    }
}

/// A host-side failure, with the originals when they were captured.
pub(super) type HostFailure = Box<(Failure, Option<HostOriginals>)>;

pub(super) fn untouched(step: Step, field: &str, e: StepError) -> HostFailure {
    Box::new((
        Failure {
            step,
            field: field.to_string(),
            source: e,
            touched: false,
        },
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_says_the_step_once() {
        let e = ConfigureError::Failed {
            device: "eth1".into(),
            step: Step::Move,
            field: "interface.name".into(),
            source: StepError::Invalid("File exists".into()),
            rollback: None,
            left: None,
        };
        assert_eq!(e.detail(), "interface.name: File exists");
        assert_eq!(
            e.to_string(),
            "device eth1: moving into the pod namespace: interface.name: File exists"
        );
    }
}
