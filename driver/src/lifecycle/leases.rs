//! The DHCP leases of devices inside pods (`interface.dhcp`): one
//! [`LeaseKeeper`] per (claim, device), owned here from the pod start that acquired
//! it (or the daemon start that resumed it from the checkpoint) until the stop that
//! releases it.
//!
//! Every change of a lease after the first ([`LeaseEvent`]) is followed in three
//! places by [`Follower`], on the keeper's thread: the device's data-path policy (the
//! leased address is its IPv4 anti-spoofing set, [`crate::dhcp::policy_with_lease`]),
//! the checkpoint's [`DhcpRecord`] (so a restarted driver renews the lease it holds;
//! dropping [`Leases`] at shutdown leaves every lease installed for it)
//! and the claim status (a [`DeviceEvent::Lease`]). The follower takes no lifecycle
//! lock: a stop joins the keeper's thread while holding the pod's lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Failure, LifecycleStep};
use crate::netns::{Netns, PodSide};
use crate::state::{Attachment, Plan};
use crate::status::FailedPart;

use crate::datapath::{AttachedDatapath, DatapathError, DatapathKey, DatapathPolicy, PinLayout};
use crate::dhcp::{policy_with_lease, Lease, LeaseEvent, LeaseKeeper};
use crate::state::{DhcpRecord, StateError, StateStore};
use crate::status::{DeviceEvent, DeviceRef, StatusSender};

/// Which device a keeper serves: claim UID, pool, device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseKey {
    pub claim_uid: String,
    pub pool: String,
    pub device: String,
}

/// The keepers of every leased device.
#[derive(Default)]
pub struct Leases {
    keepers: Mutex<BTreeMap<LeaseKey, LeaseKeeper>>,
}

impl Leases {
    fn keepers(&self) -> std::sync::MutexGuard<'_, BTreeMap<LeaseKey, LeaseKeeper>> {
        self.keepers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes ownership of `keeper`; a keeper already held for the key is released.
    pub fn hold(&self, key: LeaseKey, keeper: LeaseKeeper) {
        let old = self.keepers().insert(key, keeper);
        if let Some(old) = old {
            release(old);
        }
    }

    /// Whether a keeper is held for `key`.
    pub fn holds(&self, key: &LeaseKey) -> bool {
        self.keepers().contains_key(key)
    }

    /// The lease held now for `key`.
    pub fn lease(&self, key: &LeaseKey) -> Option<Lease> {
        self.keepers().get(key).and_then(LeaseKeeper::lease)
    }

    /// Releases the lease of `key` (DHCPRELEASE, address and routes removed); returns
    /// whether a keeper was held. A release that fails is logged: the device goes home
    /// anyway and the server lets the lease run out.
    pub fn release(&self, key: &LeaseKey) -> bool {
        // Out of the map first: stopping joins the keeper's thread.
        let keeper = self.keepers().remove(key);
        match keeper {
            Some(k) => {
                release(k);
                true
            }
            None => false,
        }
    }
}

impl Drop for Leases {
    /// The driver shuts down, the pods run on: their leases stay installed and booked
    /// (the checkpoint has them; the next run resumes renewing). Only a pod's stop
    /// releases its lease.
    fn drop(&mut self) {
        let keepers = std::mem::take(&mut *self.keepers());
        for (key, keeper) in keepers {
            tracing::debug!(device = %key.device, "leaving the DHCP lease to the next run");
            keeper.abandon();
        }
    }
}

fn release(keeper: LeaseKeeper) {
    let device = keeper.device().to_string();
    if let Err(e) = keeper.stop() {
        tracing::warn!(%device, "DHCP lease not released cleanly: {e}");
    }
}

/// Puts `lease` (or no lease) into the device's pinned data-path policy.
pub fn apply_to_datapath(
    layout: &PinLayout,
    key: &DatapathKey,
    base: &DatapathPolicy,
    lease: Option<&Lease>,
) -> Result<(), DatapathError> {
    AttachedDatapath::adopt(layout, key.clone())?.update_policy(&policy_with_lease(base, lease))
}

/// Writes the lease into the device's checkpoint record (only while the device is
/// recorded as attached with a DHCP record).
pub fn record_lease(
    store: &StateStore,
    key: &LeaseKey,
    lease: Option<&Lease>,
) -> Result<(), StateError> {
    store.update(&key.claim_uid, |claim| {
        let Some(record) = claim
            .plans
            .iter_mut()
            .filter(|p| p.pool == key.pool && p.device == key.device)
            .find_map(|p| p.placement.attachment_mut().and_then(|a| a.dhcp.as_mut()))
        else {
            return false;
        };
        record.lease = lease.cloned();
        true
    })?;
    Ok(())
}

/// The record of a freshly acquired lease.
pub fn new_record(lease: Lease, base: Option<DatapathPolicy>) -> DhcpRecord {
    DhcpRecord {
        lease: Some(lease),
        policy: base,
    }
}

/// What follows a device's lease changes (see the module docs).
pub struct Follower {
    pub key: LeaseKey,
    pub device: DeviceRef,
    pub store: Arc<StateStore>,
    pub status: Option<StatusSender>,
    pub layout: PinLayout,
    /// The data path and its policy without the lease; `None` with `--dataplane=off`.
    pub datapath: Option<(DatapathKey, DatapathPolicy)>,
    /// The lease the data path enforces now.
    pub current: Option<Lease>,
}

/// Whether going from `before` to `after` changes what the data path enforces (the
/// address and the routes; a renewal that only moves the times does not).
pub fn policy_changes(before: Option<&Lease>, after: Option<&Lease>) -> bool {
    match (before, after) {
        (Some(b), Some(a)) => {
            b.address != a.address || b.install_plan().routes != a.install_plan().routes
        }
        (None, None) => false,
        _ => true,
    }
}

impl Follower {
    /// Applies one change; problems are logged (the keeper's thread has nobody to
    /// tell, and the next change tries again).
    pub fn follow(&mut self, event: &LeaseEvent) {
        let lease = match event {
            LeaseEvent::Renewed(l) | LeaseEvent::Acquired(l) => Some(l),
            LeaseEvent::Lost { .. } => None,
        };
        if let Some((key, base)) = &self.datapath {
            if policy_changes(self.current.as_ref(), lease) {
                match apply_to_datapath(&self.layout, key, base, lease) {
                    Ok(()) => {
                        tracing::info!(device = %self.key.device, address = ?lease.map(|l| l.address), "data-path policy follows the DHCP lease")
                    }
                    Err(e) => {
                        tracing::warn!(device = %self.key.device, "data-path policy not updated to the DHCP lease: {e}")
                    }
                }
            }
        }
        self.current = lease.cloned();
        if let Err(e) = record_lease(&self.store, &self.key, lease) {
            tracing::warn!(device = %self.key.device, "DHCP lease not recorded in the checkpoint: {e}");
        }
        if let Some(tx) = &self.status {
            let _ = tx.send(DeviceEvent::Lease {
                device: self.device.clone(),
                lease: lease.cloned(),
            });
        }
    }

    /// The callback for [`LeaseKeeper::start`] / [`LeaseKeeper::resume`].
    pub fn into_callback(mut self) -> impl FnMut(&LeaseEvent) + Send + 'static {
        move |event| self.follow(event)
    }
}

/// What acquiring, releasing and resuming a device's lease needs of the lifecycle.
pub struct Context<'a> {
    pub store: &'a Arc<StateStore>,
    pub status: Option<&'a StatusSender>,
    pub layout: &'a PinLayout,
    pub leases: &'a Leases,
}

/// The keeper key of a planned device.
pub fn key_of(claim_uid: &str, plan: &Plan) -> LeaseKey {
    LeaseKey {
        claim_uid: claim_uid.to_string(),
        pool: plan.pool.clone(),
        device: plan.device.clone(),
    }
}

impl Context<'_> {
    fn follower(
        &self,
        key: &LeaseKey,
        plan: &Plan,
        datapath: Option<(DatapathKey, DatapathPolicy)>,
        current: Option<Lease>,
    ) -> Follower {
        Follower {
            key: key.clone(),
            device: super::device_ref(plan),
            store: self.store.clone(),
            status: self.status.cloned(),
            layout: self.layout.clone(),
            datapath,
            current,
        }
    }
}

/// Acquires the device's DHCP lease inside the pod before `until`, puts it into the
/// data path's policy, and keeps its keeper in `ctx.leases`. On failure nothing of the
/// lease is left (no address, no route, no keeper); the caller undoes the device.
#[allow(clippy::too_many_arguments)]
pub fn acquire(
    ctx: &Context<'_>,
    claim_uid: &str,
    plan: &Plan,
    pod: &Netns,
    side: &PodSide,
    datapath: Option<(&DatapathKey, DatapathPolicy)>,
    until: Instant,
) -> Result<Lease, Failure> {
    let failed = |message: String| {
        Failure::new(
            LifecycleStep::Dhcp,
            FailedPart::Network,
            "DhcpLeaseFailed",
            message,
        )
    };
    let mac = side.mac.ok_or_else(|| {
        failed(format!(
            "interface {} has no MAC address in the pod to ask for a lease with",
            side.name
        ))
    })?;
    let key = key_of(claim_uid, plan);
    // The follower does not know the first lease: its first change rewrites the
    // policy once, even when only the times moved.
    let follower = ctx.follower(
        &key,
        plan,
        datapath.as_ref().map(|(k, p)| ((*k).clone(), p.clone())),
        None,
    );
    let asked = Instant::now();
    let (keeper, lease) = LeaseKeeper::start(pod, &side.name, mac, until, follower.into_callback())
        .map_err(|e| {
            failed(format!(
                "{e} (the lease had to come within {:?}: what the hook budget leaves after undoing)",
                until.saturating_duration_since(asked)
            ))
        })?;
    if let Some((dp, base)) = &datapath {
        if let Err(e) = apply_to_datapath(ctx.layout, dp, base, Some(&lease)) {
            let mut message = format!(
                "putting the leased address {} into the data path: {e}",
                lease.address
            );
            if let Err(r) = keeper.stop() {
                message.push_str(&format!(" (and releasing the lease failed: {r})"));
            }
            return Err(Failure::new(
                LifecycleStep::Datapath,
                FailedPart::DataPath,
                "DataPathPolicyFailed",
                message,
            ));
        }
    }
    tracing::info!(interface = %side.name, address = %lease.address, server = %lease.server, "DHCP lease acquired in the pod");
    ctx.leases.hold(key, keeper);
    Ok(lease)
}

/// Releases the device's DHCP lease before it leaves the pod: through its keeper, or,
/// when none is held (a driver that restarted and could not resume it), by taking the
/// recorded lease over just to release it.
pub fn release_for_device(
    leases: &Leases,
    claim_uid: &str,
    plan: &Plan,
    recorded: Option<&Attachment>,
    pod: Option<&Netns>,
) {
    if leases.release(&key_of(claim_uid, plan)) {
        return;
    }
    let Some(att) = recorded else { return };
    let (Some(lease), Some(mac), Some(pod)) = (
        att.dhcp.as_ref().and_then(|r| r.lease.clone()),
        att.pod_mac,
        pod,
    ) else {
        return;
    };
    let released =
        LeaseKeeper::resume(pod, &att.pod_ifname, mac, lease, |_| {}).and_then(LeaseKeeper::stop);
    if let Err(e) = released {
        tracing::warn!(interface = %att.pod_ifname, "recorded DHCP lease not released: {e}");
    }
}

/// Takes over the leases of a pod's devices recorded in the checkpoint (daemon
/// start), so they are renewed and released as if this run had acquired them.
pub fn resume(ctx: &Context<'_>, plans: Vec<(String, Plan)>, pod: &Netns) -> Vec<String> {
    let mut problems = Vec::new();
    for (claim_uid, plan) in plans {
        let Some(att) = plan.attachment() else {
            continue;
        };
        let Some(record) = att.dhcp.as_ref() else {
            continue;
        };
        let key = key_of(&claim_uid, &plan);
        if ctx.leases.holds(&key) {
            continue;
        }
        let datapath = if att.datapath {
            super::datapath_key(&plan).ok().zip(record.policy.clone())
        } else {
            None
        };
        let follower = ctx.follower(&key, &plan, datapath.clone(), record.lease.clone());
        let Some(mac) = att.pod_mac else {
            problems.push(format!(
                "claim {}, device {}: no MAC recorded to renew its DHCP lease with",
                plan.claim, plan.device
            ));
            continue;
        };
        let resumed = match record.lease.clone() {
            Some(lease) => {
                LeaseKeeper::resume(pod, &att.pod_ifname, mac, lease, follower.into_callback())
            }
            // Lost when the driver stopped: ask again (the data path already enforces
            // "no lease"; the follower puts the new one in).
            None => LeaseKeeper::start(
                pod,
                &att.pod_ifname,
                mac,
                Instant::now() + super::budget::LEASE_WAIT,
                follower.into_callback(),
            )
            .map(|(keeper, lease)| {
                if let Some((dp, base)) = &datapath {
                    if let Err(e) = apply_to_datapath(ctx.layout, dp, base, Some(&lease)) {
                        tracing::warn!(device = %plan.device, "data-path policy not updated to the DHCP lease: {e}");
                    }
                }
                if let Err(e) = record_lease(ctx.store, &key, Some(&lease)) {
                    tracing::warn!(device = %plan.device, "DHCP lease not recorded in the checkpoint: {e}");
                }
                keeper
            }),
        };
        match resumed {
            Ok(keeper) => {
                tracing::info!(claim = %plan.claim, device = %plan.device, "DHCP lease taken over from the checkpoint");
                ctx.leases.hold(key, keeper);
            }
            Err(e) => problems.push(format!(
                "claim {}, device {}: DHCP lease not taken over: {e}",
                plan.claim, plan.device
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(addr: &str, classless: Vec<(&str, &str)>, secs: u32) -> Lease {
        Lease {
            address: addr.parse().unwrap(),
            server: "192.0.2.1".parse().unwrap(),
            routers: vec!["192.0.2.1".parse().unwrap()],
            classless_routes: classless
                .into_iter()
                .map(|(d, g)| (d.parse().unwrap(), g.parse().unwrap()))
                .collect(),
            lease_secs: secs,
            timing: None,
            granted_at: 1,
        }
    }

    #[test]
    fn only_address_and_route_changes_touch_the_data_path() {
        let a = lease("192.0.2.101/24", vec![], 120);
        let renewed = Lease {
            granted_at: 99,
            lease_secs: 300,
            ..a.clone()
        };
        assert!(!policy_changes(Some(&a), Some(&renewed)));
        assert!(policy_changes(
            Some(&a),
            Some(&lease("192.0.2.102/24", vec![], 120))
        ));
        assert!(policy_changes(
            Some(&a),
            Some(&lease(
                "192.0.2.101/24",
                vec![("198.51.100.0/24", "192.0.2.1")],
                120
            ))
        ));
        assert!(policy_changes(Some(&a), None), "lost");
        assert!(policy_changes(None, Some(&a)), "acquired again");
        assert!(!policy_changes(None, None));
    }

    #[test]
    fn the_lease_is_recorded_only_on_an_attached_dhcp_device() {
        use crate::state::{Attachment, ClaimPlans, ClaimRecord, Plan};
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let claim = ClaimRecord {
            namespace: "default".into(),
            name: "c".into(),
            uid: "uid-c".into(),
        };
        let attachment = Attachment {
            pod_netns: "/run/netns/x".into(),
            pod_ifname: "net1".into(),
            pod_ifindex: Some(3),
            pod_mac: None,
            originals: crate::netns::HostOriginals {
                name: "eth1".into(),
                ifindex: 7,
                kind: None,
                mtu: 1500,
                mac: None,
                perm_mac: None,
                up: true,
                addresses: vec![],
                routes: vec![],
                gso_max_size: None,
                gro_max_size: None,
                gso_ipv4_max_size: None,
                gro_ipv4_max_size: None,
                ethtool_features: Default::default(),
                ethtool_changeable: Default::default(),
                private_flags: Default::default(),
                sysctls: None,
                pod_rules: vec![],
                pod_vrf: None,
            },
            datapath: false,
            attached_at: 1,
            dhcp: Some(new_record(lease("192.0.2.101/24", vec![], 120), None)),
        };
        let plan = |device: &str, att: Option<Attachment>| Plan {
            claim: claim.clone(),
            device: device.into(),
            pool: "p".into(),
            placement: match att {
                Some(attachment) => crate::state::Placement::InPod { attachment },
                None => crate::state::Placement::Home,
            },
            ..Default::default()
        };
        store
            .put(&ClaimPlans {
                claim: claim.clone(),
                plans: vec![plan("nic-a", Some(attachment)), plan("nic-b", None)],
            })
            .unwrap();
        let key = |device: &str| LeaseKey {
            claim_uid: "uid-c".into(),
            pool: "p".into(),
            device: device.into(),
        };
        let next = lease("192.0.2.101/24", vec![], 600);
        record_lease(&store, &key("nic-a"), Some(&next)).unwrap();
        record_lease(&store, &key("nic-b"), Some(&next)).unwrap();
        let got = store.get("uid-c").unwrap().unwrap();
        let rec = got.plans[0].attachment().unwrap().dhcp.as_ref();
        assert_eq!(rec.and_then(|r| r.lease.as_ref()), Some(&next));
        assert!(
            got.plans[1].attachment().is_none(),
            "not attached: untouched"
        );
        record_lease(&store, &key("nic-a"), None).unwrap();
        let got = store.get("uid-c").unwrap().unwrap();
        let rec = got.plans[0].attachment().unwrap().dhcp.clone();
        assert_eq!(rec.map(|r| r.lease), Some(None), "lost");
    }
}
