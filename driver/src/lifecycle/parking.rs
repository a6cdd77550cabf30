//! Prepared devices wait down ("parked"): prepare takes a claimed device that is up at
//! home down, so the pod start moves a down device; unprepare brings it up again.
//!
//! Why: a namespace move closes a device that is up, under RTNL, and the work that
//! leaves behind (RCU callbacks of the addresses, routes and queues it tears down)
//! makes the move itself wait. Measured on the benchmark machine (kernel 6.18, 2
//! vCPUs; 40 back-to-back moves of a veth from a warm netlink socket each, medians):
//! a down device 15.9 ms; an up one 23.5 ms; one taken down just before the move 18.1
//! ms (the down itself takes 0.1 ms); one taken down 50 ms before 13.7 ms. Kubelet
//! prepares a claim before the runtime builds the sandbox and calls the pod start, so
//! the down happens well ahead of the move and off every hook.
//!
//! A parked device is out of the host's service from prepare on (it is the pod's from
//! then anyway). The pod start records it as up in the host state it restores
//! ([`complete`]), so a stop or any undo brings it back up as it was before prepare.
//! Only a device that loses nothing by going down is parked ([`parkable`]): the
//! kernel keeps IPv4 addresses on a down device and brings back the routes it derives
//! from them, but deletes its other routes and its IPv6 addresses, which a start could
//! then no longer capture to restore.
//!
//! Write-ahead: the checkpoint says `parked` before the device is taken down and stops
//! saying it only after unprepare brought it up again, so a driver killed in between
//! finds the mark and its unprepare brings the device up (bringing up a device that is
//! up changes nothing). A device that cannot be parked is only slower to move.

use super::Pods;
use crate::netns::{
    ethtool::{Ethtool, EthtoolError},
    host::{self, CaptureError},
    link::{self, LinkChange},
    netlink::{NlError, NlSocket},
    HostOriginals, Netns, NetnsError,
};
use crate::state::{Placement, Plan, StateError};

/// Why unprepare could not bring a parked device up again.
#[derive(Debug, thiserror::Error)]
pub enum UnparkError {
    #[error("claim {claim}: reading the checkpoint: {source}")]
    Checkpoint {
        claim: String,
        #[source]
        source: StateError,
    },
    #[error(
        "claim {claim}, device {device}: bringing interface {interface} up again (prepare took it down): {source}"
    )]
    Up {
        claim: String,
        device: String,
        interface: String,
        #[source]
        source: LinkStateError,
    },
}

/// Why a device's state at home could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum LinkStateError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink: {0}")]
    Netlink(#[from] NlError),
    #[error("ethtool: {0}")]
    Ethtool(#[from] EthtoolError),
    #[error("reading its state: {0}")]
    Capture(#[from] CaptureError),
}

/// Whether prepare parks `plan`'s device (when it is up): it is home and not parked.
pub fn wants_park(plan: &Plan) -> bool {
    plan.placement == Placement::Home && !plan.parked
}

/// Completes the host state a pod start captured: a parked device was up.
pub fn complete(plan: &Plan, originals: &mut HostOriginals) {
    if plan.parked {
        originals.up = true;
    }
}

/// Whether a device in state `at_home` is parked: it is up, and going down loses
/// nothing a start captures (no routes but those the kernel derives, no IPv6 address).
pub fn parkable(at_home: &HostOriginals) -> bool {
    at_home.up
        && at_home.routes.is_empty()
        && at_home
            .addresses
            .iter()
            .all(|a| matches!(a, ipnet::IpNet::V4(_)))
}

/// The state of interface `ifname` in `host`, as a pod start captures it; `None` when
/// there is no such interface.
fn at_home(host: &Netns, ifname: &str) -> Result<Option<HostOriginals>, LinkStateError> {
    let name = ifname.to_string();
    host.run(move || -> Result<_, LinkStateError> {
        let mut sock = NlSocket::route()?;
        let mut eth = Ethtool::open()?;
        match link::link_by_name(&mut sock, &name)? {
            Some(link) => Ok(Some(host::capture(&mut sock, &mut eth, &link)?)),
            None => Ok(None),
        }
    })?
}

/// Sets interface `ifname` in `host` up or down; false when there is no such interface.
fn set_up(host: &Netns, ifname: &str, up: bool) -> Result<bool, LinkStateError> {
    let name = ifname.to_string();
    let done = host.run(move || -> Result<bool, NlError> {
        let mut sock = NlSocket::route()?;
        let Some(facts) = link::link_by_name(&mut sock, &name)? else {
            return Ok(false);
        };
        let change = LinkChange {
            up: Some(up),
            ..Default::default()
        };
        link::set_link(&mut sock, facts.ifindex, &change)?;
        Ok(true)
    })??;
    Ok(done)
}

impl Pods {
    /// Takes down every device of claim `claim_uid` that is home and up (called right
    /// after prepare); returns how many. Problems are logged: such a device stays up
    /// and only moves slower.
    pub fn park(&self, claim_uid: &str) -> usize {
        let plans = match self.store().get(claim_uid) {
            Ok(Some(c)) => c.plans,
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(claim_uid, "not parking: reading the checkpoint: {e}");
                return 0;
            }
        };
        let mut parked = 0;
        for plan in plans.iter().filter(|p| wants_park(p)) {
            let span = tracing::info_span!("park", claim = %plan.claim, device = %plan.device);
            let _entered = span.enter();
            match self.locked(&plan.pod.uid, || self.park_one(claim_uid, plan)) {
                Ok(true) => parked += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!("not parked; it moves up, which is slower: {e}"),
            }
        }
        parked
    }

    fn park_one(&self, claim_uid: &str, plan: &Plan) -> Result<bool, String> {
        let k = &self.inner.kernel;
        let Some(ifname) = k.resolver.host_ifname(&plan.pool, &plan.device) else {
            return Err("the device is not in the node's inventory".into());
        };
        match at_home(&k.host, &ifname).map_err(|e| e.to_string())? {
            Some(state) if parkable(&state) => {}
            Some(state) if state.up => {
                tracing::debug!(interface = %ifname, "not parked: going down would drop its routes or IPv6 addresses");
                return Ok(false);
            }
            _ => return Ok(false),
        }
        // Write-ahead, re-checked under the pod's lock (a start may have come first).
        let recorded = self
            .mark_parked(claim_uid, plan, true)
            .map_err(|e| e.to_string())?;
        if !recorded {
            return Ok(false);
        }
        match set_up(&k.host, &ifname, false) {
            Ok(true) => {
                tracing::info!(interface = %ifname, "device parked: down at home until its pod starts");
                Ok(true)
            }
            outcome => {
                if let Err(e) = self.mark_parked(claim_uid, plan, false) {
                    tracing::warn!(
                        "the parked mark stays in the checkpoint ({e}); unprepare clears it"
                    );
                }
                Err(match outcome {
                    Err(e) => format!("taking interface {ifname} down: {e}"),
                    _ => format!("interface {ifname} disappeared"),
                })
            }
        }
    }

    /// Records `parked` for `plan`'s device; setting it needs the device home and not
    /// parked yet. Returns whether the record changed.
    fn mark_parked(&self, claim_uid: &str, plan: &Plan, parked: bool) -> Result<bool, StateError> {
        self.store()
            .update(claim_uid, |stored| match stored.plan_mut(plan) {
                Some(p) if parked && !wants_park(p) => false,
                Some(p) if p.parked != parked => {
                    p.parked = parked;
                    true
                }
                _ => false,
            })
    }

    /// Brings up again the parked devices of claim `claim_uid` that are home (called
    /// before unprepare; a device in a pod makes unprepare refuse anyway). A device
    /// that is gone has nothing to bring up.
    pub fn unpark(&self, claim_uid: &str) -> Result<(), UnparkError> {
        let k = &self.inner.kernel;
        let plans = match self.store().get(claim_uid) {
            Ok(Some(c)) => c.plans,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(UnparkError::Checkpoint {
                    claim: claim_uid.to_string(),
                    source,
                })
            }
        };
        for plan in plans
            .iter()
            .filter(|p| p.parked && p.placement == Placement::Home)
        {
            self.locked(&plan.pod.uid, || -> Result<(), UnparkError> {
                if let Some(ifname) = k.resolver.host_ifname(&plan.pool, &plan.device) {
                    set_up(&k.host, &ifname, true).map_err(|source| UnparkError::Up {
                        claim: plan.claim.to_string(),
                        device: plan.device.clone(),
                        interface: ifname.clone(),
                        source,
                    })?;
                    tracing::info!(claim = %plan.claim, interface = %ifname, "parked device up again");
                }
                self.mark_parked(claim_uid, plan, false)
                    .map_err(|source| UnparkError::Checkpoint {
                        claim: plan.claim.to_string(),
                        source,
                    })?;
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_home_devices_not_yet_parked_are_parked() {
        let mut plan = Plan::default();
        assert!(wants_park(&plan));
        plan.parked = true;
        assert!(!wants_park(&plan), "already parked");
        plan.parked = false;
        plan.placement = Placement::Entering {
            attachment: crate::state::Attachment {
                pod_netns: "/run/netns/p".into(),
                pod_ifname: "net1".into(),
                pod_ifindex: None,
                pod_mac: None,
                originals: super::super::fake::originals("eth1"),
                datapath: false,
                attached_at: 0,
                dhcp: None,
            },
        };
        assert!(!wants_park(&plan), "on its way into a pod");
    }

    #[test]
    fn only_a_device_that_loses_nothing_by_going_down_is_parked() {
        let mut state = super::super::fake::originals("eth1");
        state.up = true;
        state.routes.clear();
        state.addresses = vec!["192.0.2.50/24".parse().expect("net")];
        assert!(parkable(&state), "IPv4 addresses stay on a down device");
        state.up = false;
        assert!(!parkable(&state), "down already");
        state.up = true;
        state
            .addresses
            .push("2001:db8::50/64".parse().expect("net"));
        assert!(!parkable(&state), "IPv6 addresses go with the down");
        state.addresses.truncate(1);
        state.routes = vec![crate::netns::link::RouteRecord {
            destination: "198.51.100.0/24".parse().expect("net"),
            gateway: Some("192.0.2.1".parse().expect("ip")),
            source: None,
            scope: 0,
            table: 254,
            priority: None,
            protocol: 4,
            kind: 1,
        }];
        assert!(!parkable(&state), "routes through it go with the down");
    }

    #[test]
    fn a_parked_device_is_restored_up() {
        let mut originals = super::super::fake::originals("eth1");
        originals.up = false;
        let mut plan = Plan::default();
        complete(&plan, &mut originals);
        assert!(!originals.up, "down before prepare: restored down");
        plan.parked = true;
        complete(&plan, &mut originals);
        assert!(originals.up, "parked by prepare: restored up");
    }
}
