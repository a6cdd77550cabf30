//! Handing a host device to a pod: [`move_and_configure`].
//!
//! Top-down, what happens when a pod starts with a claimed interface:
//! 1. host namespace: read the device and capture [`HostOriginals`]; check the
//!    settings against what the device allows (MTU range, ethtool names) *before*
//!    touching anything;
//! 2. host namespace: one `RTM_SETLINK` that sets the link down, moves it into the pod
//!    (`IFLA_NET_NS_FD`) and, in the same message, renames it and sets MTU, MAC and
//!    GSO/GRO sizes. Kernel 6.18 accepts all of these together (the move is done
//!    first in `do_setlink`, the rest applies in the new namespace). If the combined
//!    message is refused, it is retried as a bare move + rename followed by one
//!    request per setting, so the error names the exact field;
//! 3. pod namespace: per-interface sysctls (`arp_ignore`, `arp_announce`,
//!    forwarding — before the link is up, so no ARP is answered the old way), the VRF
//!    (created if missing, the device enslaved), addresses (or the host's addresses
//!    carried along when the claim sets none — a netns move drops them), link up,
//!    routes, policy routing rules, permanent neighbours, ethtool features and
//!    private flags, each checked by reading the kernel back;
//! 4. the result ([`Configured`]) is read back from the kernel, not from our inputs.
//!
//! A failure after the device was touched reports the step and the config field, and
//! where the device was left ([`Left`]): [`move_and_configure`] puts it back home as it
//! was (via [`super::restore`], which also removes the rules and VRF created so far:
//! they are recorded in the [`HostOriginals`] handed to it); the lifecycle calls
//! [`move_and_configure_with`] and undoes through its own rollback owner. Sysctl and VRF failures report [`Step::LinkSettings`], rule and neighbour
//! failures [`Step::Routes`]; the field path says which. The input is
//! [`InterfaceSettings`], plain parsed values the caller maps from the validated
//! claim config; this module does not read claim configs itself.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use serde::{Deserialize, Serialize};

use ipnet::IpNet;

use super::{
    ethtool::{resolve_features, DeviceFeatures, Ethtool, EthtoolError, FeatureProblem},
    host::{self, CaptureError, HostOriginals},
    link::{self, LinkChange, LinkFacts, RouteRecord, RTPROT_STATIC, RT_TABLE_MAIN},
    netlink::{NlError, NlSocket},
    restore::{restore_device, PodSide},
    rules::{self, RuleSpec},
    sysctl::{self, IfSysctls},
    vrf::{self, VrfError},
    Netns, NetnsError,
};

/// A permanent neighbour entry requested for the interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourSpec {
    pub destination: IpAddr,
    pub mac: [u8; 6],
}

/// One rule to install, with the index of the claim's `rules[]` entry it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub index: usize,
    pub spec: RuleSpec,
}

/// The VRF the interface joins in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrfSpec {
    pub name: String,
    pub table: u32,
}

/// A static route requested for the interface inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Preferred source address (`ip route ... src`).
    pub source: Option<IpAddr>,
    /// 0 (universe) or 253 (link).
    pub scope: u8,
    /// Routing table; main when `None`.
    pub table: Option<u32>,
}

/// Parsed settings for one interface (mapped from the claim's NetworkConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSettings {
    pub name: Option<String>,
    pub addresses: Vec<IpNet>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    pub routes: Vec<RouteSpec>,
    /// Policy routing rules, one per family (`rules[i]` may give two).
    pub rules: Vec<ClaimRule>,
    pub neighbours: Vec<NeighbourSpec>,
    pub sysctls: IfSysctls,
    pub vrf: Option<VrfSpec>,
    pub ethtool_features: BTreeMap<String, bool>,
    pub private_flags: BTreeMap<String, bool>,
    /// `interface.dhcp`: the address and routes come from a DHCP lease acquired after
    /// the move (`crate::dhcp`), so the host's are not carried along.
    pub dhcp: bool,
}

/// The device as the kernel reports it inside the pod once configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub pod_ifname: String,
    pub ifindex_in_pod: u32,
    pub mac: Option<[u8; 6]>,
    /// Global addresses on the device in the pod, read back from the kernel.
    pub addresses: Vec<IpNet>,
    /// IPv6 link-local addresses the kernel has given the device in the pod so far.
    pub link_local: Vec<std::net::Ipv6Addr>,
    pub originals: HostOriginals,
    /// How many `RTM_SETLINK` requests the move + link settings took (1 when the
    /// kernel accepted the combined message).
    pub link_requests: usize,
}

impl Configured {
    /// What [`super::restore`] needs to find the device again.
    pub fn pod_side(&self) -> PodSide {
        PodSide {
            name: self.pod_ifname.clone(),
            ifindex: Some(self.ifindex_in_pod),
            mac: self.mac,
        }
    }
}

/// The stage of [`move_and_configure`] that failed.
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
        /// ([`move_and_configure_with`] leaves that to its caller); `None` otherwise.
        left: Option<Box<Left>>,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// A device that a failed [`move_and_configure_with`] touched: what
/// [`super::restore_device`] needs to bring it home.
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
struct Failure {
    step: Step,
    field: String,
    source: StepError,
    /// Whether the device may have been changed.
    touched: bool,
}

fn fail(step: Step, field: impl Into<String>, source: impl Into<StepError>) -> Failure {
    Failure {
        step,
        field: field.into(),
        source: source.into(),
        touched: true,
    }
}

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
fn validate(
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
    let device = DeviceFeatures {
        active: originals.ethtool_features.clone(),
        changeable: originals.ethtool_changeable.clone(),
    };
    let features = match resolve_features(&settings.ethtool_features, &device) {
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
type ResolvedFeatures = BTreeMap<String, (bool, String)>;

/// The link settings part of the combined move message.
fn link_settings(settings: &InterfaceSettings) -> LinkChange {
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

/// Moves `host_ifname` from `host` into `pod` and configures it there; on failure
/// the device is back in `host` exactly as it was. Blocks; runs its netlink work on
/// dedicated namespace threads.
pub fn move_and_configure(
    host: &Netns,
    pod: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
) -> Result<Configured, ConfigureError> {
    move_and_configure_with(host, pod, host_ifname, settings, None)
        .map_err(|e| put_back(host, pod, e))
}

/// Restores the device a failed [`move_and_configure_with`] left touched, and says in
/// the error whether that worked.
fn put_back(host: &Netns, pod: &Netns, err: ConfigureError) -> ConfigureError {
    let ConfigureError::Failed {
        device,
        step,
        field,
        source,
        rollback,
        left: Some(left),
    } = err
    else {
        return err;
    };
    let rollback = match &left.originals {
        Some(o) => match restore_device(host, Some(pod), &left.side, o, None) {
            Ok(_) => rollback,
            Err(e) => Some(e.to_string()),
        },
        None => Some("originals were never captured".to_string()),
    };
    ConfigureError::Failed {
        device,
        step,
        field,
        source,
        rollback,
        left: None,
    }
}

/// Called with the device's captured host state after validation and before the first
/// change to the device (the move): the caller makes it durable (write-ahead), so a
/// process killed at any later point leaves a record of what to restore. It may
/// complete the state from what it knows (a device prepare took down was up); what it
/// leaves is what is restored. An error stops everything before the device is touched.
pub type BeforeMove = Box<dyn FnOnce(&mut HostOriginals) -> Result<(), String> + Send>;

/// [`move_and_configure`] with a write-ahead hook: [`capture_for_move`], the hook,
/// [`move_captured`] and [`configure_moved`] for one device.
pub fn move_and_configure_with(
    host: &Netns,
    pod: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
    before_move: Option<BeforeMove>,
) -> Result<Configured, ConfigureError> {
    let mut captured = capture_for_move(host, host_ifname, settings)?;
    if let Some(record) = before_move {
        if let Err(e) = record(captured.originals_mut()) {
            let (failure, _) = *untouched(Step::Capture, "checkpoint", StepError::Intent(e));
            return Err(finish_failure(
                host_ifname,
                &pod_name_of(settings, host_ifname),
                settings.mac,
                failure,
                None,
            ));
        }
    }
    let moved = move_captured(host, pod, vec![captured])?
        .pop()
        .ok_or_else(|| ConfigureError::NotFound {
            device: host_ifname.to_string(),
            netns: host.path().display().to_string(),
        })??;
    configure_moved(pod, host_ifname, settings, moved)
}

/// A device [`move_captured`] moved into a pod and [`configure_moved`] has still to
/// configure there.
#[derive(Debug)]
pub struct MovedIn {
    /// Its name in the pod (the move renamed it).
    pod_name: String,
    originals: HostOriginals,
    /// Link settings still to apply in the pod (empty when the combined message took).
    pending: LinkChange,
    link_requests: usize,
    features: ResolvedFeatures,
    /// The MAC the claim asks for, if any.
    mac: Option<[u8; 6]>,
}

impl MovedIn {
    /// The host state captured before the move (what a restore puts back).
    pub fn originals(&self) -> &HostOriginals {
        &self.originals
    }

    /// What [`super::restore`] needs to find the moved device in the pod.
    pub fn pod_side(&self) -> PodSide {
        PodSide {
            name: self.pod_name.clone(),
            ifindex: None,
            mac: self.mac.or(self.originals.mac),
        }
    }
}

/// The last step of [`move_and_configure_with`]: configures in the pod a device
/// [`move_captured`] moved there. On failure the device is left in the pod (the error's
/// `left` says so, with what to restore).
pub fn configure_moved(
    pod: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
    moved: MovedIn,
) -> Result<Configured, ConfigureError> {
    let (host_ifname, settings) = (host_ifname.to_string(), settings.clone());
    pod.run(move || configure_here(&host_ifname, &settings, moved))?
}

/// [`configure_moved`] on a thread already in the pod's namespace.
pub(crate) fn configure_here(
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
    let pod_result = pod_job(
        &pod_name, settings, &originals, &pending, &features, &mut added,
    );
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

/// Turns a failure into the error; a touched device is left where it is, for the
/// caller (the lifecycle's single rollback owner, or [`move_and_configure`]).
fn finish_failure(
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
type HostFailure = Box<(Failure, Option<HostOriginals>)>;

fn untouched(step: Step, field: &str, e: StepError) -> HostFailure {
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

/// What a move needs of a device captured at home.
#[derive(Debug)]
struct AtHomeParts {
    ifindex: u32,
    name: String,
    originals: HostOriginals,
    features: ResolvedFeatures,
}

/// A captured device with the host socket that found it.
struct AtHome {
    sock: NlSocket,
    /// Closed only after the moves: a socket closed just before a move makes it wait.
    _eth: Ethtool,
    parts: AtHomeParts,
}

/// Finds the device at home, captures its host state and validates the settings
/// against it; `None` when there is no such device. Changes nothing.
fn capture_job(
    host_ifname: &str,
    settings: &InterfaceSettings,
) -> Result<Option<AtHome>, HostFailure> {
    let opening = std::time::Instant::now();
    let mut sock = NlSocket::route().map_err(|e| untouched(Step::Capture, "device", e.into()))?;
    let mut eth = Ethtool::open().map_err(|e| untouched(Step::Capture, "ethtool", e.into()))?;
    let Some(link) = link::link_by_name(&mut sock, host_ifname)
        .map_err(|e| untouched(Step::Capture, "device", e.into()))?
    else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let originals = host::capture(&mut sock, &mut eth, &link)
        .map_err(|e| untouched(Step::Capture, "device", e.into()))?;
    let features = validate(settings, &link, &originals).map_err(|f| Box::new((f, None)))?;
    tracing::debug!(
        device = host_ifname,
        sockets_and_lookup_us = (started - opening).as_micros() as u64,
        capture_us = started.elapsed().as_micros() as u64,
        "host side: captured"
    );
    Ok(Some(AtHome {
        sock,
        _eth: eth,
        parts: AtHomeParts {
            ifindex: link.ifindex,
            name: link.name,
            originals,
            features,
        },
    }))
}

/// Moves a captured device into the pod: down + move + rename + link settings in one
/// message, or, when the kernel refuses that, the bare move (the settings are then
/// left pending for the pod side).
fn move_job(
    sock: &mut NlSocket,
    parts: AtHomeParts,
    pod_name: &str,
    settings: &InterfaceSettings,
    pod_fd: &OwnedFd,
) -> Result<MovedIn, HostFailure> {
    let AtHomeParts {
        ifindex,
        name,
        originals,
        features,
    } = parts;
    let settings_change = link_settings(settings);
    let combined = LinkChange {
        up: Some(false),
        netns_fd: Some(pod_fd.as_raw_fd()),
        name: Some(pod_name.to_string()),
        ..settings_change.clone()
    };
    match link::set_link(sock, ifindex, &combined) {
        Ok(()) => {
            return Ok(MovedIn {
                pod_name: pod_name.to_string(),
                originals,
                pending: LinkChange::default(),
                link_requests: 1,
                features,
                mac: settings.mac,
            });
        }
        Err(e) => {
            tracing::debug!(device = %name, error = %e,
                "combined move + settings refused; retrying step by step");
        }
    }
    // Did the move itself happen before the refusal?
    let still_home = link::link_by_index(sock, ifindex)
        .map_err(|e| Box::new((fail(Step::Move, "device", e), Some(originals.clone()))))?
        .is_some_and(|l| l.name == name);
    if still_home {
        let bare = LinkChange {
            up: Some(false),
            netns_fd: Some(pod_fd.as_raw_fd()),
            name: Some(pod_name.to_string()),
            ..Default::default()
        };
        if let Err(e) = link::set_link(sock, ifindex, &bare) {
            let field = if settings.name.is_some() {
                "interface.name"
            } else {
                "device"
            };
            return Err(Box::new((fail(Step::Move, field, e), Some(originals))));
        }
    }
    Ok(MovedIn {
        pod_name: pod_name.to_string(),
        originals,
        pending: settings_change,
        link_requests: 2,
        features,
        mac: settings.mac,
    })
}

/// A device captured at home by [`capture_for_move`], not touched yet.
pub struct Captured {
    host_ifname: String,
    settings: InterfaceSettings,
    at_home: AtHome,
}

impl Captured {
    /// Its host state, as a restore would put it back. A caller may complete it
    /// before recording it (a device prepare took down was up): what it leaves is
    /// what [`move_captured`] carries into [`MovedIn`].
    pub fn originals_mut(&mut self) -> &mut HostOriginals {
        &mut self.at_home.parts.originals
    }

    pub fn originals(&self) -> &HostOriginals {
        &self.at_home.parts.originals
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Captured")
            .field("host_ifname", &self.host_ifname)
            .field("parts", &self.at_home.parts)
            .finish_non_exhaustive()
    }
}

/// Finds `host_ifname` in `host`, captures its host state and checks `settings`
/// against it, touching nothing: the first part of a move that a pod with several
/// devices does for all of them before recording their intent at once and moving
/// them back to back ([`move_captured`]).
pub fn capture_for_move(
    host: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
) -> Result<Captured, ConfigureError> {
    let job_settings = settings.clone();
    let job_ifname = host_ifname.to_string();
    let found = host.run(move || capture_job(&job_ifname, &job_settings))?;
    match found {
        Ok(Some(at_home)) => Ok(Captured {
            host_ifname: host_ifname.to_string(),
            settings: settings.clone(),
            at_home,
        }),
        Ok(None) => Err(ConfigureError::NotFound {
            device: host_ifname.to_string(),
            netns: host.path().display().to_string(),
        }),
        Err(boxed) => {
            let (failure, originals) = *boxed;
            let pod_name = pod_name_of(settings, host_ifname);
            Err(finish_failure(
                host_ifname,
                &pod_name,
                settings.mac,
                failure,
                originals,
            ))
        }
    }
}

/// Moves captured devices into `pod` in order, back to back in one job on the host's
/// thread, and stops at the first that fails. One result per device tried: every
/// device after a failure is untouched (and not in the answer).
pub fn move_captured(
    host: &Netns,
    pod: &Netns,
    devices: Vec<Captured>,
) -> Result<Vec<Result<MovedIn, ConfigureError>>, NetnsError> {
    let pod_fd = pod.dup_fd()?;
    let tried = host.run(move || {
        let mut out = Vec::with_capacity(devices.len());
        // Every socket stays open until all moves are done.
        let mut sockets = Vec::with_capacity(devices.len());
        for d in devices {
            let Captured {
                host_ifname,
                settings,
                at_home:
                    AtHome {
                        mut sock,
                        _eth,
                        parts,
                    },
            } = d;
            let pod_name = pod_name_of(&settings, &host_ifname);
            let started = std::time::Instant::now();
            let moved = move_job(&mut sock, parts, &pod_name, &settings, &pod_fd);
            tracing::debug!(device = %host_ifname, move_us = started.elapsed().as_micros() as u64,
                "host side: moved");
            sockets.push((sock, _eth));
            let failed = moved.is_err();
            out.push((host_ifname, settings, pod_name, moved));
            if failed {
                break;
            }
        }
        drop(sockets);
        out
    })?;
    Ok(tried
        .into_iter()
        .map(|(host_ifname, settings, pod_name, moved)| {
            moved.map_err(|boxed| {
                let (failure, originals) = *boxed;
                finish_failure(&host_ifname, &pod_name, settings.mac, failure, originals)
            })
        })
        .collect())
}

fn pod_name_of(settings: &InterfaceSettings, host_ifname: &str) -> String {
    settings
        .name
        .clone()
        .unwrap_or_else(|| host_ifname.to_string())
}

/// Namespace-wide things the pod job created, recorded as it goes.
#[derive(Debug, Default)]
struct PodAdditions {
    rules: Vec<RuleSpec>,
    vrf: Option<String>,
}

fn pod_job(
    pod_name: &str,
    settings: &InterfaceSettings,
    originals: &HostOriginals,
    pending: &LinkChange,
    features: &ResolvedFeatures,
    added: &mut PodAdditions,
) -> Result<(LinkFacts, Vec<IpNet>, Vec<std::net::Ipv6Addr>), Failure> {
    let mut sock = NlSocket::route().map_err(|e| fail(Step::Move, "device", e))?;
    // Find our device by name *and* identity: when the combined message is refused,
    // the kernel may already have moved the device under its host name (the rename
    // is applied after the move), and the pod may hold a stranger with `pod_name`.
    let side = PodSide {
        name: pod_name.to_string(),
        ifindex: None,
        mac: settings.mac.or(originals.mac),
    };
    let link = link::links(&mut sock)
        .map_err(|e| fail(Step::Move, "device", e))?
        .into_iter()
        .find(|l| super::restore::is_ours_in_pod(l, &side, originals))
        .ok_or_else(|| {
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
        link::set_link(&mut sock, link.ifindex, &rename)
            .map_err(|e| fail(Step::Move, "interface.name", e))?;
    }
    let idx = link.ifindex;

    for (field, change) in per_field(pending) {
        link::set_link(&mut sock, idx, &change).map_err(|e| fail(Step::LinkSettings, field, e))?;
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
        let created = vrf::ensure(&mut sock, &v.name, v.table)
            .map_err(|e| fail(Step::LinkSettings, "interface.vrf", Box::new(e)))?;
        if created {
            added.vrf = Some(v.name.clone());
        }
        let master = link::link_by_name(&mut sock, &v.name)
            .map_err(|e| fail(Step::LinkSettings, "interface.vrf", e))?
            .ok_or_else(|| {
                fail(
                    Step::LinkSettings,
                    "interface.vrf",
                    StepError::Invalid(format!("VRF {} disappeared", v.name)),
                )
            })?;
        vrf::enslave(&mut sock, idx, master.ifindex)
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
        link::add_address(&mut sock, idx, *net).map_err(|e| fail(Step::Addresses, field, e))?;
    }

    link::set_link(
        &mut sock,
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
        link::add_route(&mut sock, idx, &record)
            .map_err(|e| fail(Step::Routes, format!("routes[{i}]"), e))?;
    }
    if carried {
        for r in &originals.routes {
            match link::add_route(&mut sock, idx, r) {
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
        rules::rules(&mut sock).map_err(|e| fail(Step::Routes, "rules", e))?
    };
    for rule in &settings.rules {
        if existing.contains(&rule.spec) {
            continue; // someone else's: not recorded, so never removed by netclaim
        }
        let created = rules::add_rule(&mut sock, &rule.spec)
            .map_err(|e| fail(Step::Routes, format!("rules[{}]", rule.index), e))?;
        if created {
            added.rules.push(rule.spec.clone());
        }
    }

    for (i, n) in settings.neighbours.iter().enumerate() {
        rules::add_permanent_neighbour(&mut sock, idx, n.destination, n.mac)
            .map_err(|e| fail(Step::Routes, format!("neighbors[{i}]"), e))?;
    }

    if !features.is_empty() || !settings.private_flags.is_empty() {
        let mut eth = Ethtool::open().map_err(|e| fail(Step::Ethtool, "ethtool", e))?;
        apply_ethtool(&mut eth, idx, &link.name, features, &settings.private_flags)?;
    }

    let facts = link::link_by_index(&mut sock, idx)
        .map_err(|e| fail(Step::ReadBack, "device", e))?
        .ok_or_else(|| {
            fail(
                Step::ReadBack,
                "device",
                StepError::Invalid(format!("{pod_name} disappeared")),
            )
        })?;
    let (global, link_scope): (Vec<_>, Vec<_>) = link::addresses(&mut sock, idx)
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

#[cfg(test)]
mod tests {

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
