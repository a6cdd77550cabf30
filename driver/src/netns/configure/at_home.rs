//! The host namespace's part of a hand-over: find and capture the devices, all in one
//! job through one pair of sockets ([`capture_all_for_move`]), then move the captured
//! devices back to back in one job ([`move_captured`]), each with one `RTM_SETLINK`
//! that also renames it and carries its link settings.

use std::{
    fmt,
    os::fd::{AsRawFd, OwnedFd},
};

use super::super::{
    ethtool::Ethtool,
    host::{self, HostOriginals},
    link::{self, LinkChange},
    netlink::NlSocket,
    Netns, NetnsError,
};
use super::{
    checks::{link_settings, validate, ResolvedFeatures},
    failure::{fail, finish_failure, untouched, ConfigureError, HostFailure, Step},
    in_pod::MovedIn,
    pod_name_of,
    spec::InterfaceSettings,
};

/// What a move needs of a device captured at home.
#[derive(Debug)]
struct AtHomeParts {
    ifindex: u32,
    name: String,
    originals: HostOriginals,
    features: ResolvedFeatures,
}

/// The host sockets that captured devices: the first device of a capture carries them
/// (the others `None`) and the moves use them.
struct HostSockets {
    route: Option<NlSocket>,
    /// Closed only after the moves: a socket closed just before a move makes it wait.
    _eth: Option<Ethtool>,
}

/// A captured device with the host sockets that found it, if it carries them.
struct AtHome {
    sockets: HostSockets,
    parts: AtHomeParts,
}

/// Finds the device at home through `sockets` (opened here when they are not yet),
/// captures its host state and validates the settings against it; `None` when there is
/// no such device. Changes nothing.
fn capture_job(
    sockets: &mut Option<(NlSocket, Ethtool)>,
    host_ifname: &str,
    settings: &InterfaceSettings,
) -> Result<Option<AtHomeParts>, HostFailure> {
    let opening = std::time::Instant::now();
    let (sock, eth) = match sockets {
        Some(open) => open,
        None => {
            let sock =
                NlSocket::route().map_err(|e| untouched(Step::Capture, "device", e.into()))?;
            let eth = Ethtool::open().map_err(|e| untouched(Step::Capture, "ethtool", e.into()))?;
            sockets.insert((sock, eth))
        }
    };
    let Some(link) = link::link_by_name(sock, host_ifname)
        .map_err(|e| untouched(Step::Capture, "device", e.into()))?
    else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let originals = host::capture(sock, eth, &link)
        .map_err(|e| untouched(Step::Capture, "device", e.into()))?;
    let features = validate(settings, &link, &originals).map_err(|f| Box::new((f, None)))?;
    tracing::debug!(
        device = host_ifname,
        sockets_and_lookup_us = (started - opening).as_micros() as u64,
        capture_us = started.elapsed().as_micros() as u64,
        "host side: captured"
    );
    Ok(Some(AtHomeParts {
        ifindex: link.ifindex,
        name: link.name,
        originals,
        features,
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
        // No such device (deleted since its capture): refused before anything
        // happened, so nothing moved.
        Err(e) if e.errno() == Some(libc::ENODEV) => {
            return Err(untouched(Step::Move, "device", e.into()));
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

/// A device captured at home by [`capture_all_for_move`], not touched yet.
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
/// against it, touching nothing: [`capture_all_for_move`] for one device.
pub fn capture_for_move(
    host: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
) -> Result<Captured, ConfigureError> {
    let wanted = vec![(host_ifname.to_string(), settings.clone())];
    capture_all_for_move(host, wanted)?
        .pop()
        .unwrap_or_else(|| {
            Err(ConfigureError::NotFound {
                device: host_ifname.to_string(),
                netns: host.path().display().to_string(),
            })
        })
}

/// Finds each wanted device in `host`, captures its host state and checks its
/// settings against it, in order, in one job through one pair of sockets, touching
/// nothing: the first part of a move that a pod with several devices does for all of
/// them before recording their intent at once and moving them back to back
/// ([`move_captured`]). Stops at the first device that is missing or fails: one
/// result per device tried. Runs on the calling thread when it is in `host` (the
/// driver's own namespace, as on a node), on a worker there otherwise
/// ([`Netns::run_in_place`]).
pub fn capture_all_for_move(
    host: &Netns,
    wanted: Vec<(String, InterfaceSettings)>,
) -> Result<Vec<Result<Captured, ConfigureError>>, NetnsError> {
    let netns = host.path().display().to_string();
    let (tried, mut sockets) = host.run_in_place(move || {
        // One pair for every device, opened once and closed once, after the last move.
        let mut sockets = None;
        let mut tried = Vec::with_capacity(wanted.len());
        for (host_ifname, settings) in wanted {
            let found = capture_job(&mut sockets, &host_ifname, &settings);
            let stop = !matches!(found, Ok(Some(_)));
            tried.push((host_ifname, settings, found));
            if stop {
                break;
            }
        }
        (tried, sockets)
    })?;
    Ok(tried
        .into_iter()
        .map(|(host_ifname, settings, found)| match found {
            Ok(Some(parts)) => {
                // The first device found carries the sockets to the moves.
                let (route, eth) = sockets.take().unzip();
                Ok(Captured {
                    host_ifname,
                    settings,
                    at_home: AtHome {
                        sockets: HostSockets { route, _eth: eth },
                        parts,
                    },
                })
            }
            Ok(None) => Err(ConfigureError::NotFound {
                device: host_ifname,
                netns: netns.clone(),
            }),
            Err(boxed) => {
                let (failure, originals) = *boxed;
                let pod_name = pod_name_of(&settings, &host_ifname);
                Err(finish_failure(
                    &host_ifname,
                    &pod_name,
                    settings.mac,
                    failure,
                    originals,
                ))
            }
        })
        .collect())
}

/// Moves captured devices into the namespace `pod_fd` names, in order, back to back,
/// in the host namespace, and stops at the first that fails: one result
/// per device tried (every device after a failure is untouched and not in the answer).
fn move_here(devices: Vec<Captured>, pod_fd: &OwnedFd) -> Vec<Result<MovedIn, ConfigureError>> {
    let mut out = Vec::with_capacity(devices.len());
    // Every socket stays open until all moves are done.
    let (mut kept_routes, mut kept_eth) = (Vec::new(), Vec::new());
    let mut route: Option<NlSocket> = None;
    for d in devices {
        let Captured {
            host_ifname,
            settings,
            at_home: AtHome { sockets, parts },
        } = d;
        if let Some(carried) = sockets.route {
            kept_routes.extend(route.replace(carried));
        }
        kept_eth.push(sockets._eth);
        let pod_name = pod_name_of(&settings, &host_ifname);
        let started = std::time::Instant::now();
        let moved = match &mut route {
            Some(sock) => move_job(sock, parts, &pod_name, &settings, pod_fd),
            None => match NlSocket::route() {
                Ok(sock) => move_job(route.insert(sock), parts, &pod_name, &settings, pod_fd),
                Err(e) => Err(untouched(Step::Move, "device", e.into())),
            },
        };
        tracing::debug!(device = %host_ifname, move_us = started.elapsed().as_micros() as u64,
            "host side: moved");
        let moved = moved.map_err(|boxed| {
            let (failure, originals) = *boxed;
            finish_failure(&host_ifname, &pod_name, settings.mac, failure, originals)
        });
        let failed = moved.is_err();
        out.push(moved);
        if failed {
            break;
        }
    }
    drop((route, kept_routes, kept_eth));
    out
}

/// Moves captured devices into `pod` in order, back to back in one job in the host
/// namespace ([`move_here`]; in place, like [`capture_all_for_move`]), and stops at
/// the first that fails. One result per device tried: every device after a failure
/// is untouched (and not in the answer).
pub fn move_captured(
    host: &Netns,
    pod: &Netns,
    devices: Vec<Captured>,
) -> Result<Vec<Result<MovedIn, ConfigureError>>, NetnsError> {
    let pod_fd = pod.dup_fd()?;
    host.run_in_place(move || move_here(devices, &pod_fd))
}
