//! What happens to a claimed device when its pod starts and stops: [`Pods`].
//!
//! Top-down, `start_pod(uid, name, netns)`:
//! 1. the plans of this pod UID from the checkpoint (made by `NodePrepareResources`);
//! 2. per device: the claim's config ([`crate::config::parse_parameters`]), the host
//!    interface of the device (a [`DeviceResolver`]; the daemon's is the
//!    [`InventoryResolver`]), [`crate::netns::move_and_configure`] from the node's
//!    namespace into the pod's (after removing foreign eBPF programs when the config says
//!    `disableEbpfPrograms`), then [`AttachedDatapath::attach`] with the claim's policy (or the
//!    addresses the device carried from the host) unless `--dataplane=off`; for
//!    `interface.dhcp` a lease within the hook budget, put into the policy ([`leases`]);
//! 3. the checkpoint records `attached`, the pod-side name, the [`HostOriginals`] and
//!    whether a data path is pinned, so a restarted driver can still give it back;
//! 4. a [`DeviceEvent`] goes to the status writer (a channel send: no API call here).
//!
//! If any device fails, everything already done for this pod is undone (detach,
//! restore, checkpoint cleared) and the error names claim, device and step.
//! `stop_pod`/`remove_pod` detach and restore field by field
//! ([`crate::netns::restore_device`]) and clear the record; a namespace that is
//! already gone is fine (a veth end dies with it and is reported as `Gone`).
//! StopPodSandbox uses `stop_pod_behind`: it takes the pod's turn, answers, and the
//! same give-back runs right after on a thread of the blocking pool (the runtime
//! ignores the answer and tears the pod's network down meanwhile; the [`keeper`]
//! holds the namespace, so the devices outlive that). The pod's later hooks, the
//! unprepare of its claims and `synchronize` take the turn after it.
//! `synchronize` returns devices of pods that no longer exist and attaches devices of
//! live pods that started while the driver was away.
//!
//! The parts: what to do is decided in [`decide`] from the checkpoint's
//! [`crate::state::Placement`] and the event; [`handover`] does it through
//! [`effects::Effects`] ([`effects::Kernel`] in the daemon, a fake in the unit tests),
//! with one rollback owner ([`handover::unwind`]) for every way a device goes home.
//!
//! A runtime may never send the stop (see [`keeper`]): while a pod has devices its
//! namespace is held open, and [`Pods::reap_ended`] gives back the devices of pods
//! whose namespace the runtime removed; at start [`Pods::adopt`] does the same for pods
//! that ended while the driver was away.
//!
//! All work is blocking (netlink on namespace threads, bpf syscalls): call it off the
//! async runtime's tasks (`block_in_place` or `spawn_blocking`; the NRI adapter in
//! [`nri`] does). Hooks of one pod are
//! serialised; different pods proceed in parallel (their claims, and so their devices
//! and checkpoint entries, are disjoint). `synchronize` excludes every other call.

pub mod ahead;
pub mod budget;
pub mod decide;
pub mod effects;
#[cfg(test)]
mod fake;
pub mod handover;
pub mod keeper;
pub mod leases;
pub mod nri;
pub mod parking;
pub mod resolver;
pub mod settings;
pub mod staging;

pub use resolver::InventoryResolver;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use parking_lot::RwLock;

use crate::datapath::{DatapathError, DatapathKey, PinLayout};
use crate::netns::{Netns, NetnsError, RestoreOutcome, Step};
use crate::state::{Placement, Plan, StateError, StateStore};
use crate::status::{DeviceRef, FailedPart, StatusSender};

use decide::PodAction;
use effects::Kernel;

/// Finds the host interface of a published device. The daemon answers from the
/// inventory ([`InventoryResolver`]); tests pass a closure over a map.
pub trait DeviceResolver: Send + Sync {
    fn host_ifname(&self, pool: &str, device: &str) -> Option<String>;
}

impl<F> DeviceResolver for F
where
    F: Fn(&str, &str) -> Option<String> + Send + Sync,
{
    fn host_ifname(&self, pool: &str, device: &str) -> Option<String> {
        self(pool, device)
    }
}

/// Command-line settings of the pod lifecycle.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// `--dataplane`: attach the eBPF data path (`on`) or only move and configure.
    pub dataplane: bool,
    /// `--bpf-root`.
    pub bpf_root: PathBuf,
    /// Where the kernel drops physical devices of a destroyed pod namespace (the
    /// machine's root namespace); `None` skips that lookup. Tests pass a namespace that
    /// plays root, or `None`.
    pub root_netns: Option<PathBuf>,
}

impl LifecycleConfig {
    pub fn new(bpf_root: impl Into<PathBuf>) -> Self {
        Self {
            dataplane: true,
            bpf_root: bpf_root.into(),
            root_netns: Some(PathBuf::from("/proc/1/ns/net")),
        }
    }
}

/// The part of handing a device over that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleStep {
    Config,
    Resolve,
    ForeignPrograms,
    Configure(Option<Step>),
    Datapath,
    Dhcp,
    Checkpoint,
    Detach,
    Restore,
}

impl fmt::Display for LifecycleStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifecycleStep::Config => f.write_str("reading the claim config"),
            LifecycleStep::Resolve => f.write_str("finding the host interface"),
            LifecycleStep::ForeignPrograms => f.write_str("removing foreign eBPF programs"),
            LifecycleStep::Configure(Some(step)) => write!(f, "configuring: {step}"),
            LifecycleStep::Configure(None) => f.write_str("configuring"),
            LifecycleStep::Datapath => f.write_str("attaching the data path"),
            LifecycleStep::Dhcp => f.write_str("acquiring a DHCP lease"),
            LifecycleStep::Checkpoint => f.write_str("recording in the checkpoint"),
            LifecycleStep::Detach => f.write_str("detaching the data path"),
            LifecycleStep::Restore => f.write_str("restoring the device on the host"),
        }
    }
}

/// What the runtime tells about a running pod that the hand-over needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRuntime {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The pod's cgroup as the runtime names it (a path below the cgroup v2 root, or a
    /// systemd slice), where the socket guard goes; `None` when the runtime says none.
    pub cgroup_parent: Option<String>,
    /// When the runtime stops waiting for this hook (its request budget).
    pub deadline: Option<budget::Deadline>,
}

impl PodRuntime {
    /// A pod known only by its network namespace.
    pub fn netns(path: impl Into<PathBuf>) -> Self {
        Self {
            netns: path.into(),
            cgroup_parent: None,
            deadline: None,
        }
    }
}

/// Why a pod hook failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("pod {pod}: reading the checkpoint: {source}")]
    Checkpoint {
        pod: String,
        #[source]
        source: StateError,
    },
    #[error("pod {pod}: {source}")]
    PodNetns {
        pod: String,
        #[source]
        source: NetnsError,
    },
    #[error("pod {pod}: socket guard: {source}")]
    SocketGuard {
        pod: String,
        #[source]
        source: crate::datapath::guard::GuardError,
    },
    #[error(
        "claim {claim}, device {device}, pod {pod}: {step}: {message}{}",
        if undo.is_empty() { String::new() } else { format!(" (undoing the pod's other devices: {})", undo.join("; ")) }
    )]
    Device {
        claim: String,
        device: String,
        pod: String,
        step: LifecycleStep,
        message: String,
        /// Problems while undoing what was already done for the pod.
        undo: Vec<String>,
    },
    #[error("{0}")]
    Budget(Box<budget::Exceeded>),
    #[error("pod {pod}: {} device(s) could not be returned: {}", problems.len(), problems.join("; "))]
    Incomplete { pod: String, problems: Vec<String> },
}

/// What a hook did with one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOutcome {
    /// `namespace/name` of the claim.
    pub claim: String,
    pub pool: String,
    pub device: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Moved, configured and (when `datapath`) attached.
    Attached { pod_ifname: String, datapath: bool },
    /// Was already in the pod (a repeated hook).
    AlreadyAttached { pod_ifname: String },
    /// Left the pod: restored at home, or gone with the namespace.
    Returned(RestoreOutcome),
}

/// What [`Pods::synchronize`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub returned: Vec<DeviceOutcome>,
    pub started: Vec<DeviceOutcome>,
    pub errors: Vec<LifecycleError>,
}

/// Serialises one pod's hooks.
type PodLock = parking_lot::Mutex<()>;

/// A pod's turn ([`Pods::turn`]): its lock, and `synchronize` kept out. Sendable.
struct Turn {
    // Released in this order: the pod first, then the shared hold.
    _pod: parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>,
    _shared: parking_lot::ArcRwLockReadGuard<parking_lot::RawRwLock, ()>,
}

/// The pod lifecycle. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Pods {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    /// Pod hooks hold it shared, `synchronize` exclusively.
    serial: Arc<RwLock<()>>,
    /// One lock per pod UID with a hook (or a give-back after a stop) in flight.
    pod_locks: Mutex<BTreeMap<String, Arc<PodLock>>>,
    /// What a device costs to hand over and take back (for the hook budget).
    costs: Mutex<budget::Costs>,
    /// Write-ahead records of devices that went home after a failed start but could
    /// not be cleared (checkpoint I/O error); retried with the ended-pod check.
    stale_intents: Mutex<Vec<(String, Plan)>>,
    /// Hand-overs started at the CNI ADD, until their RunPodSandbox collects them.
    ahead: ahead::Finished,
    /// Pods whose stop is giving their devices back (from the stop until they are home).
    giving_back: Mutex<std::collections::BTreeSet<String>>,
}

/// A failed device, before it is tied to the pod's error.
#[derive(Debug)]
pub struct Failure {
    pub step: LifecycleStep,
    pub part: FailedPart,
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(
        step: LifecycleStep,
        part: FailedPart,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            step,
            part,
            reason,
            message: message.into(),
        }
    }
}

/// The key of a planned device's data path (its pins: claim namespace/name, device).
pub(crate) fn datapath_key(plan: &Plan) -> Result<DatapathKey, DatapathError> {
    DatapathKey::new(
        plan.claim.namespace.clone(),
        plan.claim.name.clone(),
        plan.device.clone(),
    )
    .map_err(DatapathError::from)
}

pub(crate) fn device_ref(plan: &Plan) -> DeviceRef {
    DeviceRef {
        claim: plan.claim.clone(),
        pod: plan.pod.clone(),
        pool: plan.pool.clone(),
        device: plan.device.clone(),
    }
}

impl Pods {
    /// `host` is the node's namespace, captured once at start (home of every device).
    pub fn new(
        store: Arc<StateStore>,
        host: Netns,
        resolver: Arc<dyn DeviceResolver>,
        config: LifecycleConfig,
        status: Option<StatusSender>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kernel: Kernel {
                    layout: PinLayout::new(config.bpf_root.clone()),
                    store,
                    host,
                    resolver,
                    config,
                    status,
                    keeper: Mutex::new(keeper::Keeper::default()),
                    leases: leases::Leases::default(),
                },
                serial: Arc::new(RwLock::new(())),
                pod_locks: Mutex::new(BTreeMap::new()),
                costs: Mutex::new(budget::Costs::default()),
                stale_intents: Mutex::new(Vec::new()),
                ahead: ahead::Finished::default(),
                giving_back: Mutex::new(std::collections::BTreeSet::new()),
            }),
        }
    }

    /// The checkpoint this lifecycle records into.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.inner.kernel.store
    }

    /// Hands every device planned for pod `pod_uid` to the pod's network namespace.
    pub fn start_pod(
        &self,
        pod_uid: &str,
        pod_name: &str,
        pod: &PodRuntime,
    ) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        self.locked(pod_uid, || {
            // Started at the CNI ADD ([`ahead`]): that start held the turn until now.
            match self.inner.ahead.take(pod_uid, &pod.netns) {
                // It counted the runtime's budget from the CNI ADD, before the sandbox
                // started; this hook has its own, so it tries again under that.
                Some(Err(LifecycleError::Budget(b))) => tracing::info!(
                    pod = %pod_name,
                    "the hand-over started at the CNI ADD stopped on the budget; RunPodSandbox tries under its own: {b}"
                ),
                // Still kept, it stands: every give-back drops it ([`Self::give_back_now`]).
                Some(done) => {
                    tracing::debug!(pod = %pod_name, "hand-over was started at the CNI ADD; collecting its result");
                    return done;
                }
                None => {}
            }
            self.inner.start(pod_uid, pod_name, pod)
        })
    }

    /// Gives back every device of pod `pod_uid` (pod stopping).
    pub fn stop_pod(&self, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        self.locked(pod_uid, || self.give_back_now(pod_uid))
    }

    /// Gives back every device of pod `pod_uid` now; the caller holds the pod's turn
    /// or `synchronize`'s exclusion. Every give-back goes through here and drops first
    /// what an ahead start ([`ahead`]) kept for the pod's RunPodSandbox, so a result
    /// the hook still finds describes devices that are where that start left them.
    fn give_back_now(&self, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        self.inner.ahead.forget(pod_uid);
        handover::give_back(&self.inner.kernel, pod_uid)
    }

    /// Gives back every device of pod `pod_uid` after this returns: the pod's turn is
    /// taken here, so every later hook of this pod, unprepare of its claims and
    /// `synchronize` run after the give-back, which runs on a thread of the blocking
    /// pool (or a thread of its own outside a runtime). The devices stay alive
    /// meanwhile: the keeper holds the pod's namespace until they are home, whatever
    /// the runtime removes. Outcomes and problems are logged and go to the status as
    /// a synchronous stop's would; `done` (if given) gets the result.
    pub fn stop_pod_behind(
        &self,
        pod_uid: &str,
        done: Option<std::sync::mpsc::Sender<Result<Vec<DeviceOutcome>, LifecycleError>>>,
    ) {
        self.inner.giving_back().insert(pod_uid.to_string());
        let turn = self.turn(pod_uid);
        self.give_back_behind(turn, pod_uid, done);
    }

    /// [`Self::stop_pod_behind`] with the pod's turn already taken.
    fn give_back_behind(
        &self,
        turn: Turn,
        pod_uid: &str,
        done: Option<std::sync::mpsc::Sender<Result<Vec<DeviceOutcome>, LifecycleError>>>,
    ) {
        let this = self.clone();
        let uid = pod_uid.to_string();
        let span = tracing::Span::current();
        let work = move || {
            let _entered = span.enter();
            // A move like a hook's: background scans wait for it (`netns::quiet`).
            let _moving = crate::netns::quiet::Quiet::global().hold();
            let started = std::time::Instant::now();
            let result = this.give_back_now(&uid);
            this.inner.giving_back().remove(&uid);
            drop(turn);
            match &result {
                Ok(outcomes) => tracing::info!(
                    pod_uid = %uid,
                    devices = outcomes.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "devices of the stopped pod returned"
                ),
                Err(e) => {
                    tracing::warn!(pod_uid = %uid, "returning the devices of the stopped pod: {e}")
                }
            }
            if let Some(done) = done {
                let _ = done.send(result);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => drop(std::thread::spawn(work)),
        }
    }

    /// Finishes whatever `stop_pod` left (pod removed; its namespace may be gone).
    pub fn remove_pod(&self, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let result = self.stop_pod(pod_uid);
        // The pod is gone: forget its lock unless another hook holds it.
        let mut locks = self
            .inner
            .pod_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if locks
            .get(pod_uid)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(pod_uid);
        }
        result
    }

    /// Reconciles with the pods that exist (`uid → network namespace path`): devices
    /// of any other pod go home; live pods without all their devices get them.
    pub fn synchronize(&self, live: &BTreeMap<String, PodRuntime>) -> SyncReport {
        let _exclusive = self.inner.serial.write();
        let mut report = SyncReport::default();
        let pods = match self.inner.pods_in_checkpoint() {
            Ok(p) => p,
            Err(source) => {
                report.errors.push(LifecycleError::Checkpoint {
                    pod: "*".into(),
                    source,
                });
                return report;
            }
        };
        let mut to_start = Vec::new();
        for (uid, plans) in pods {
            let runtime = live.get(&uid);
            match handover::sync_action(&plans, runtime.is_some()) {
                PodAction::GiveBack if self.inner.ahead.pending(&uid) => {
                    // Handed over at its CNI ADD, its RunPodSandbox still to come: the
                    // runtime lists a sandbox only once it is created. If it never is,
                    // the CNI DEL or the keeper returns the devices.
                    tracing::info!(pod_uid = %uid, "pod not listed yet: its sandbox is being created (devices handed over at its CNI ADD); they stay");
                }
                PodAction::GiveBack => {
                    tracing::info!(pod_uid = %uid, "pod no longer exists; returning its devices");
                    match self.give_back_now(&uid) {
                        Ok(o) => report.returned.extend(o),
                        Err(e) => report.errors.push(e),
                    }
                }
                PodAction::HandOver | PodAction::GiveBackThenHandOver => {
                    let name = plans
                        .first()
                        .map(|(_, p)| p.pod.to_string())
                        .unwrap_or_else(|| uid.clone());
                    to_start.push((uid, name));
                }
                PodAction::Nothing | PodAction::Hold => {}
            }
        }
        // Returns first: their devices may be what the starting pods wait for.
        for (uid, name) in to_start {
            let Some(runtime) = live.get(&uid) else {
                continue;
            };
            tracing::info!(pod = %name, "live pod without its devices; attaching them");
            match self.inner.start(&uid, &name, runtime) {
                Ok(o) => report.started.extend(o),
                Err(e) => report.errors.push(e),
            }
        }
        report
    }

    /// Gives back the devices of every pod whose namespace the runtime removed without
    /// telling us (no StopPodSandbox/RemovePodSandbox); returns what each pod gave.
    pub fn reap_ended(&self) -> Vec<(String, Result<Vec<DeviceOutcome>, LifecycleError>)> {
        let stale = std::mem::take(
            &mut *self
                .inner
                .stale_intents
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (claim_uid, plan) in stale {
            if let Err(e) = self.inner.clear_intent(&claim_uid, &plan) {
                tracing::debug!("clearing a write-ahead record still fails: {e}");
                self.inner
                    .stale_intents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((claim_uid, plan));
            }
        }
        let ended = self.inner.kernel.keeper().over();
        let mut results = Vec::new();
        for (uid, path) in ended {
            tracing::warn!(
                pod_uid = %uid,
                netns = %path.display(),
                "the runtime removed the pod's network namespace without stopping the pod through NRI; returning its devices"
            );
            results.push((uid.clone(), self.stop_pod(&uid)));
        }
        results
    }

    /// At start: holds the namespace of every pod the checkpoint says has devices in
    /// it, and gives back the devices of pods whose namespace is gone and of pods
    /// whose start or stop was cut off.
    pub fn adopt(&self) -> Vec<(String, Result<Vec<DeviceOutcome>, LifecycleError>)> {
        let pods = match self.inner.pods_in_checkpoint() {
            Ok(p) => p,
            Err(source) => {
                return vec![(
                    "*".into(),
                    Err(LifecycleError::Checkpoint {
                        pod: "*".into(),
                        source,
                    }),
                )]
            }
        };
        let mut results = Vec::new();
        for (uid, plans) in pods {
            let Some(path) = plans
                .iter()
                .find_map(|(_, p)| p.attachment().map(|a| a.pod_netns.clone()))
            else {
                continue;
            };
            let ns = Netns::open(&path);
            match handover::adopt_action(&plans, ns.is_ok()) {
                PodAction::Hold => {
                    let Ok(ns) = ns else { continue };
                    self.inner.kernel.keeper().hold(&uid, &ns);
                    for problem in leases::resume(&self.inner.lease_context(), plans, &ns) {
                        tracing::warn!(pod_uid = %uid, "{problem}");
                    }
                }
                PodAction::GiveBack => {
                    match &ns {
                        Ok(_) => {
                            tracing::warn!(pod_uid = %uid, "a start or stop of this pod was cut off; returning its devices")
                        }
                        Err(e) => {
                            tracing::warn!(pod_uid = %uid, netns = %path.display(), "the pod's network namespace is gone ({e}); returning what is left of its devices")
                        }
                    }
                    results.push((uid.clone(), self.stop_pod(&uid)));
                }
                PodAction::Nothing | PodAction::HandOver | PodAction::GiveBackThenHandOver => {}
            }
        }
        results
    }

    /// Pod `pod_uid`'s turn: beside other pods' hooks (not beside `synchronize`),
    /// after and before this pod's others. It may be handed to another thread.
    fn turn(&self, pod_uid: &str) -> Turn {
        let shared = self.inner.serial.read_arc();
        let pod = self.pod_lock(pod_uid).lock_arc();
        Turn {
            _pod: pod,
            _shared: shared,
        }
    }

    /// Runs `work` as one of pod `pod_uid`'s hooks ([`Self::turn`]).
    fn locked<T>(&self, pod_uid: &str, work: impl FnOnce() -> T) -> T {
        let _turn = self.turn(pod_uid);
        work()
    }

    fn pod_lock(&self, pod_uid: &str) -> Arc<PodLock> {
        self.inner
            .pod_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(pod_uid.to_string())
            .or_default()
            .clone()
    }
}

impl Inner {
    /// The pods whose stop is giving their devices back.
    fn giving_back(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.giving_back.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(
        &self,
        pod_uid: &str,
        pod_name: &str,
        runtime: &PodRuntime,
    ) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let ledger = handover::Ledger {
            costs: &self.costs,
            stale: &self.stale_intents,
        };
        handover::start(&self.kernel, &ledger, pod_uid, pod_name, runtime)
    }

    /// Every pod the checkpoint names, with its plans.
    fn pods_in_checkpoint(&self) -> Result<BTreeMap<String, Vec<(String, Plan)>>, StateError> {
        let mut pods: BTreeMap<String, Vec<(String, Plan)>> = BTreeMap::new();
        for claim in self.kernel.store.list()? {
            for plan in claim.plans {
                pods.entry(plan.pod.uid.clone())
                    .or_default()
                    .push((claim.claim.uid.clone(), plan));
            }
        }
        Ok(pods)
    }

    /// Records home a device that went home after a failed start (its `Entering`
    /// record; anything else is left alone).
    fn clear_intent(&self, claim_uid: &str, plan: &Plan) -> Result<(), StateError> {
        self.kernel
            .store
            .update(claim_uid, |stored| match stored.plan_mut(plan) {
                Some(p) if matches!(p.placement, Placement::Entering { .. }) => {
                    p.placement = Placement::Home;
                    true
                }
                _ => false,
            })?;
        Ok(())
    }

    fn lease_context(&self) -> leases::Context<'_> {
        leases::Context {
            store: &self.kernel.store,
            status: self.kernel.status.as_ref(),
            layout: &self.kernel.layout,
            leases: &self.kernel.leases,
        }
    }
}
