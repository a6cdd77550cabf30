//! Everything the lifecycle does to the world, behind one trait: the checkpoint, the
//! kernel (move, configure, data path, restore), DHCP, the held namespaces and the
//! status events. [`Kernel`] is the real one; the unit tests drive the same
//! [`super::handover`] code through a fake that can fail or "crash" at any call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{keeper, leases, DeviceResolver, Failure, LifecycleConfig, LifecycleError, PodRuntime};
use crate::datapath::{
    device::AttachOptions, AttachedDatapath, DatapathError, DatapathKey, DatapathPolicy, PinLayout,
};
use crate::netns::configure::{Captured, MovedIn};
use crate::netns::{
    remove_foreign_programs, restore_device, ConfigureError, Configured, HostOriginals,
    InterfaceSettings, Netns, NetnsError, PodSide, RestoreError, RestoreOutcome,
};
use crate::state::{Attachment, Placement, Plan, StateError, StateStore};
use crate::status::{DeviceEvent, StatusSender};

/// One device's new placement, for [`Effects::place`].
pub struct Placing<'a> {
    pub claim_uid: &'a str,
    pub plan: &'a Plan,
    pub placement: Placement,
}

/// Where a device is about to go: written with its host state before it moves.
#[derive(Clone, Debug)]
pub struct Intent {
    pub pod_netns: PathBuf,
    pub pod_ifname: String,
    pub pod_mac: Option<[u8; 6]>,
    pub datapath: bool,
}

impl Intent {
    /// The write-ahead record of the device: where it goes, and the host state it
    /// leaves (`originals`, captured just before the move).
    pub fn attachment(self, originals: HostOriginals) -> Attachment {
        Attachment {
            pod_netns: self.pod_netns,
            pod_ifname: self.pod_ifname,
            pod_ifindex: None,
            pod_mac: self.pod_mac,
            originals,
            datapath: self.datapath,
            attached_at: 0,
            dhcp: None,
        }
    }
}

/// A device [`Effects::move_all`] moved into its pod: where it is and what it left,
/// for an undo, and what configuring it still needs.
pub struct Moved<M> {
    pub side: PodSide,
    pub originals: HostOriginals,
    pub rest: M,
}

/// What [`Effects::configure_each`] gives: one result per device, in order.
pub type Configuring<'a> = Box<dyn ConfiguringEach + 'a>;

/// The devices of one start being configured in their pod, one after another.
pub trait ConfiguringEach: Iterator<Item = Result<Configured, ConfigureError>> {
    /// Stops after the device being configured now and returns the results not taken
    /// yet; nothing configures any more once it returns.
    fn stop(self: Box<Self>) -> Vec<Result<Configured, ConfigureError>>;
}

impl ConfiguringEach for crate::netns::configuring::Configuring {
    fn stop(self: Box<Self>) -> Vec<Result<Configured, ConfigureError>> {
        (*self).stop()
    }
}

/// Results made one at a time as they are asked for: nothing runs ahead, so stopping
/// leaves none behind.
pub struct OnAsk<I>(pub I);

impl<I: Iterator<Item = Result<Configured, ConfigureError>>> Iterator for OnAsk<I> {
    type Item = Result<Configured, ConfigureError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl<I: Iterator<Item = Result<Configured, ConfigureError>>> ConfiguringEach for OnAsk<I> {
    fn stop(self: Box<Self>) -> Vec<Result<Configured, ConfigureError>> {
        Vec::new()
    }
}

/// What [`Effects::move_all`] did: one result per device tried, in order.
pub type MovesTried<M> = Vec<Result<Moved<M>, ConfigureError>>;

/// What the lifecycle does to the world.
pub trait Effects {
    /// A pod's network namespace, held open.
    type Pod;

    /// The pod's plans, through the checkpoint's pod index.
    fn plans_of(&self, pod_uid: &str) -> Result<Vec<(String, Plan)>, StateError>;
    /// Records new placements durably, one transaction per claim. On failure, the
    /// index of the first entry not written (a claim unprepared meanwhile is one).
    fn place(&self, entries: Vec<Placing<'_>>) -> Result<(), (usize, StateError)>;

    /// The host interface of a planned device.
    fn resolve(&self, plan: &Plan) -> Option<String>;
    /// Removes eBPF programs other tools attached to the host interface.
    fn remove_foreign(&self, ifname: &str) -> Result<Vec<String>, String>;
    /// A device captured at home, not touched yet.
    type Captured;
    /// What a device moved into its pod still needs to be configured there.
    type Moved;

    /// Finds each of `wanted` at home, captures its host state and checks its settings
    /// against it, in order, stopping at the first that fails: one result per device
    /// tried. Touches nothing.
    fn capture_each(
        &self,
        wanted: Vec<(String, InterfaceSettings)>,
    ) -> Vec<Result<Self::Captured, ConfigureError>>;
    /// The host state a capture found, as a restore would put it back (the caller may
    /// complete it before recording it).
    fn captured_originals<'c>(&self, captured: &'c mut Self::Captured) -> &'c mut HostOriginals;
    /// Moves captured devices into `pod` in order, back to back, and stops at the
    /// first that fails: one result per device tried. The caller recorded each as
    /// [`Placement::Entering`] first (durable, write-ahead). An `Err` for the whole
    /// call means any of them may have moved.
    fn move_all(
        &self,
        pod: &Self::Pod,
        devices: Vec<Self::Captured>,
    ) -> Result<MovesTried<Self::Moved>, ConfigureError>;
    /// Configures in `pod` the devices [`Effects::move_all`] moved there, in order, and
    /// stops at the first that fails: one result per device, each as soon as it is
    /// done (the caller gives one its data path while the next is configured). A
    /// device that failed is still in the pod; the caller undoes, after dropping the
    /// iterator (which waits until nothing configures any more).
    fn configure_each<'a>(
        &'a self,
        pod: &'a Self::Pod,
        devices: Vec<(String, InterfaceSettings, Self::Moved)>,
    ) -> Configuring<'a>;
    /// Attaches (and pins) the device's data path in the pod.
    fn attach(
        &self,
        key: &DatapathKey,
        pod: &Self::Pod,
        pod_ifname: &str,
        policy: &DatapathPolicy,
        guard: Option<&Path>,
    ) -> Result<(), DatapathError>;
    /// Takes over the data path staged at prepare now that the device is in the pod
    /// as `ifindex` (see [`AttachedDatapath::take_staged`]). False when there is
    /// none, or when it did not survive the move (then it is removed): the caller
    /// attaches a fresh one.
    fn take_staged(
        &self,
        key: &DatapathKey,
        pod: &Self::Pod,
        ifindex: u32,
        policy: &DatapathPolicy,
        guard: Option<&Path>,
    ) -> bool;
    /// Acquires the device's DHCP lease in the pod before `until` and keeps it renewed.
    #[allow(clippy::too_many_arguments)]
    fn acquire_lease(
        &self,
        claim_uid: &str,
        plan: &Plan,
        pod: &Self::Pod,
        side: &PodSide,
        datapath: Option<(&DatapathKey, DatapathPolicy)>,
        until: Instant,
    ) -> Result<crate::dhcp::Lease, Failure>;
    /// The newest lease held for the device (a renewal may have come meanwhile).
    fn current_lease(&self, claim_uid: &str, plan: &Plan) -> Option<crate::dhcp::Lease>;
    /// Releases the device's lease: through its keeper, or from the recorded lease.
    fn release_lease(
        &self,
        claim_uid: &str,
        plan: &Plan,
        recorded: Option<&Attachment>,
        pod: Option<&Self::Pod>,
    );
    /// Makes the device's data path count only.
    fn stand_down(&self, key: &DatapathKey) -> Result<(), DatapathError>;
    /// Removes the device's data path (found through its pins; none is fine).
    fn detach(&self, key: &DatapathKey, pod: Option<&Self::Pod>) -> Result<(), DatapathError>;
    /// Brings the device home wherever it is and restores its host state.
    fn restore(
        &self,
        pod: Option<&Self::Pod>,
        side: &PodSide,
        originals: &HostOriginals,
    ) -> Result<RestoreOutcome, RestoreError>;

    /// The path a pod's namespace is recorded under.
    fn pod_path(&self, pod: &Self::Pod) -> PathBuf;
    /// Opens the namespace the runtime names.
    fn open_pod(&self, path: &Path) -> Result<Self::Pod, NetnsError>;
    /// The pod's namespace as held since its start, or opened from `recorded`.
    fn find_pod(&self, pod_uid: &str, recorded: &Path) -> Option<Self::Pod>;
    /// Keeps the pod's namespace open while it has devices.
    fn hold(&self, pod_uid: &str, pod: &Self::Pod);
    /// Lets go of the pod's namespace (its devices are home).
    fn let_go(&self, pod_uid: &str);
    /// Where the pod's socket guard goes (`None`: no guard).
    fn socket_guard(
        &self,
        pod_label: &str,
        runtime: &PodRuntime,
    ) -> Result<Option<PathBuf>, LifecycleError>;
    /// Tells the status writer (never an API call on the hook's path).
    fn emit(&self, event: DeviceEvent);
    /// `--dataplane`.
    fn dataplane(&self) -> bool;
}

/// The real world: netlink in namespaces, aya, redb, the status channel.
pub struct Kernel {
    pub(super) store: Arc<StateStore>,
    pub(super) host: Netns,
    pub(super) layout: PinLayout,
    pub(super) resolver: Arc<dyn DeviceResolver>,
    pub(super) config: LifecycleConfig,
    pub(super) status: Option<StatusSender>,
    /// The namespaces of pods that have our devices, held open.
    pub(super) keeper: Mutex<keeper::Keeper>,
    /// The DHCP leases of devices inside pods (`interface.dhcp`).
    pub(super) leases: leases::Leases,
}

impl Kernel {
    pub(super) fn keeper(&self) -> std::sync::MutexGuard<'_, keeper::Keeper> {
        self.keeper.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sets the placement of the plans named in `entries` inside one claim's stored
/// record; the index of an entry whose plan is gone.
fn set_placements(
    stored: &mut crate::state::ClaimPlans,
    entries: &mut Vec<(usize, &Plan, Placement)>,
) -> Result<(), usize> {
    for (i, plan, placement) in entries.drain(..) {
        match stored.plan_mut(plan) {
            Some(p) => p.placement = placement,
            None => return Err(i),
        }
    }
    Ok(())
}

/// Whether recording `placement` only settles what the device's durable write-ahead
/// record already allows for, so its journal record may follow the hook's answer:
/// `InPod` comes after a durable `Entering`, `Home` after a durable `Entering` or
/// `Leaving` (or after `Home`). Should a crash lose it, the restarted driver finds that
/// earlier record and takes the device back from wherever it is, the same as for a
/// hook cut off just before it: home exactly as before (restoring a device that is
/// already home changes nothing), a live pod's devices then handed over again by
/// synchronize. `Entering` and `Leaving` come before a kernel step: durable first.
pub(crate) fn settles(placement: &Placement) -> bool {
    matches!(placement, Placement::InPod { .. } | Placement::Home)
}

/// [`Effects::place`] over a store (also what the write-ahead hook of `move_in` uses).
fn place_in(store: &StateStore, entries: Vec<Placing<'_>>) -> Result<(), (usize, StateError)> {
    let mut by_claim: std::collections::BTreeMap<&str, Vec<(usize, &Plan, Placement)>> =
        Default::default();
    for (i, e) in entries.into_iter().enumerate() {
        by_claim
            .entry(e.claim_uid)
            .or_default()
            .push((i, e.plan, e.placement));
    }
    for (claim_uid, mut entries) in by_claim {
        let first = entries.first().map(|(i, _, _)| *i).unwrap_or(0);
        let mut missing = None;
        let settled = entries.iter().all(|(_, _, p)| settles(p));
        let change =
            |stored: &mut crate::state::ClaimPlans| match set_placements(stored, &mut entries) {
                Ok(()) => true,
                Err(i) => {
                    missing = Some(i);
                    false
                }
            };
        let written = if settled {
            store.update_settled(claim_uid, change)
        } else {
            store.update(claim_uid, change)
        }
        .map_err(|e| (first, e))?;
        if !written {
            return Err((
                missing.unwrap_or(first),
                StateError::Unprepared {
                    uid: claim_uid.to_string(),
                },
            ));
        }
    }
    Ok(())
}

impl Effects for Kernel {
    type Pod = Netns;
    type Captured = Captured;
    type Moved = MovedIn;

    fn plans_of(&self, pod_uid: &str) -> Result<Vec<(String, Plan)>, StateError> {
        self.store.plans_of_pod(pod_uid)
    }

    fn place(&self, entries: Vec<Placing<'_>>) -> Result<(), (usize, StateError)> {
        place_in(&self.store, entries)
    }

    fn resolve(&self, plan: &Plan) -> Option<String> {
        self.resolver.host_ifname(&plan.pool, &plan.device)
    }

    fn remove_foreign(&self, ifname: &str) -> Result<Vec<String>, String> {
        let name = ifname.to_string();
        let removed = self
            .host
            .run_async(move || async move { remove_foreign_programs(&name).await })
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(removed.into_iter().map(|p| p.to_string()).collect())
    }

    /// All in one job in the host namespace, through one pair of sockets.
    fn capture_each(
        &self,
        wanted: Vec<(String, InterfaceSettings)>,
    ) -> Vec<Result<Captured, ConfigureError>> {
        crate::netns::configure::capture_all_for_move(&self.host, wanted)
            .unwrap_or_else(|e| vec![Err(e.into())])
    }

    fn captured_originals<'c>(&self, captured: &'c mut Captured) -> &'c mut HostOriginals {
        captured.originals_mut()
    }

    fn move_all(
        &self,
        pod: &Netns,
        devices: Vec<Captured>,
    ) -> Result<MovesTried<MovedIn>, ConfigureError> {
        let tried = crate::netns::configure::move_captured(&self.host, pod, devices)?;
        Ok(tried
            .into_iter()
            .map(|r| {
                r.map(|m| Moved {
                    side: m.pod_side(),
                    originals: m.originals().clone(),
                    rest: m,
                })
            })
            .collect())
    }

    fn configure_each<'a>(
        &'a self,
        pod: &'a Netns,
        devices: Vec<(String, InterfaceSettings, MovedIn)>,
    ) -> Configuring<'a> {
        match crate::netns::configuring::configure_each(pod, devices) {
            Ok(each) => Box::new(each),
            Err(e) => Box::new(OnAsk(std::iter::once(Err(e.into())))),
        }
    }

    fn attach(
        &self,
        key: &DatapathKey,
        pod: &Netns,
        pod_ifname: &str,
        policy: &DatapathPolicy,
        guard: Option<&Path>,
    ) -> Result<(), DatapathError> {
        AttachedDatapath::attach(
            &self.layout,
            key.clone(),
            pod,
            pod_ifname,
            policy,
            AttachOptions {
                guard_cgroup: guard.map(Path::to_path_buf),
                ..Default::default()
            },
        )
        .map(|_| ())
    }

    fn take_staged(
        &self,
        key: &DatapathKey,
        pod: &Netns,
        ifindex: u32,
        policy: &DatapathPolicy,
        guard: Option<&Path>,
    ) -> bool {
        let mut dp = match AttachedDatapath::adopt(&self.layout, key.clone()) {
            Ok(dp) => dp,
            Err(DatapathError::NotPinned { .. }) => return false,
            Err(e) => {
                tracing::warn!(device = %key, "the staged data path cannot be opened ({e}); attaching a fresh one");
                let _ = self.detach(key, Some(pod));
                return false;
            }
        };
        match dp.take_staged(ifindex, policy, guard) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(device = %key, "the staged data path is not usable in the pod ({e}); attaching a fresh one");
                if let Err(d) = dp.detach(&self.layout, Some(pod)) {
                    tracing::warn!(device = %key, "removing the staged data path: {d}");
                }
                false
            }
        }
    }

    fn acquire_lease(
        &self,
        claim_uid: &str,
        plan: &Plan,
        pod: &Netns,
        side: &PodSide,
        datapath: Option<(&DatapathKey, DatapathPolicy)>,
        until: Instant,
    ) -> Result<crate::dhcp::Lease, Failure> {
        leases::acquire(
            &leases::Context {
                store: &self.store,
                status: self.status.as_ref(),
                layout: &self.layout,
                leases: &self.leases,
            },
            claim_uid,
            plan,
            pod,
            side,
            datapath,
            until,
        )
    }

    fn current_lease(&self, claim_uid: &str, plan: &Plan) -> Option<crate::dhcp::Lease> {
        self.leases.lease(&leases::key_of(claim_uid, plan))
    }

    fn release_lease(
        &self,
        claim_uid: &str,
        plan: &Plan,
        recorded: Option<&Attachment>,
        pod: Option<&Netns>,
    ) {
        leases::release_for_device(&self.leases, claim_uid, plan, recorded, pod)
    }

    fn stand_down(&self, key: &DatapathKey) -> Result<(), DatapathError> {
        AttachedDatapath::adopt(&self.layout, key.clone())?.stand_down()
    }

    fn detach(&self, key: &DatapathKey, pod: Option<&Netns>) -> Result<(), DatapathError> {
        AttachedDatapath::remove(&self.layout, key, pod)
    }

    fn restore(
        &self,
        pod: Option<&Netns>,
        side: &PodSide,
        originals: &HostOriginals,
    ) -> Result<RestoreOutcome, RestoreError> {
        let root = self
            .config
            .root_netns
            .as_ref()
            .and_then(|p| Netns::open(p).ok());
        restore_device(&self.host, pod, side, originals, root.as_ref())
    }

    fn pod_path(&self, pod: &Netns) -> PathBuf {
        pod.path().to_path_buf()
    }

    fn open_pod(&self, path: &Path) -> Result<Netns, NetnsError> {
        Netns::open(path)
    }

    fn find_pod(&self, pod_uid: &str, recorded: &Path) -> Option<Netns> {
        self.keeper()
            .get(pod_uid)
            .and_then(|h| h.try_clone().ok())
            .or_else(|| Netns::open(recorded).ok())
    }

    fn hold(&self, pod_uid: &str, pod: &Netns) {
        self.keeper().hold(pod_uid, pod);
    }

    fn let_go(&self, pod_uid: &str) {
        self.keeper().release(pod_uid);
    }

    fn socket_guard(
        &self,
        pod_label: &str,
        runtime: &PodRuntime,
    ) -> Result<Option<PathBuf>, LifecycleError> {
        if !self.config.dataplane {
            return Ok(None);
        }
        let Some(parent) = &runtime.cgroup_parent else {
            tracing::warn!(pod = %pod_label, "the runtime did not name the pod's cgroup; no socket guard (PACKET_QDISC_BYPASS and AF_XDP can send past tc egress)");
            return Ok(None);
        };
        crate::datapath::guard::resolve(parent)
            .map(Some)
            .map_err(|source| LifecycleError::SocketGuard {
                pod: pod_label.to_string(),
                source,
            })
    }

    fn emit(&self, event: DeviceEvent) {
        if let Some(tx) = &self.status {
            // The writer may be gone at shutdown; the kernel state is what matters.
            let _ = tx.send(event);
        }
    }

    fn dataplane(&self) -> bool {
        self.config.dataplane
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_after_a_durable_write_ahead_record_follow_the_answer() {
        let attachment = Attachment {
            pod_netns: "/run/netns/p".into(),
            pod_ifname: "net1".into(),
            pod_ifindex: None,
            pod_mac: None,
            originals: super::super::fake::originals("eth1"),
            datapath: true,
            attached_at: 0,
            dhcp: None,
        };
        let cases = [
            (Placement::Home, true),
            (
                Placement::InPod {
                    attachment: attachment.clone(),
                },
                true,
            ),
            (
                Placement::Entering {
                    attachment: attachment.clone(),
                },
                false,
            ),
            (Placement::Leaving { attachment }, false),
        ];
        for (placement, settled) in cases {
            assert_eq!(settles(&placement), settled, "{placement:?}");
        }
    }
}
