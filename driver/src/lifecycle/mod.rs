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
//! `synchronize` returns devices of pods that no longer exist and attaches devices of
//! live pods that started while the driver was away.
//!
//! A runtime may never send the stop (see [`keeper`]): while a pod has devices its
//! namespace is held open, and [`Pods::reap_ended`] gives back the devices of pods
//! whose namespace the runtime removed; at start [`Pods::adopt`] does the same for pods
//! that ended while the driver was away.
//!
//! All work is blocking (netlink on namespace threads, bpf syscalls): call it from
//! `spawn_blocking` (the NRI adapter in [`nri`] does). Hooks of one pod are
//! serialised; different pods proceed in parallel (their claims, and so their devices
//! and checkpoint entries, are disjoint). `synchronize` excludes every other call.

pub mod budget;
pub mod keeper;
pub mod leases;
pub mod nri;
pub mod resolver;
pub mod settings;

pub use resolver::InventoryResolver;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::config::parse_parameters;
use crate::datapath::{
    device::AttachOptions, AttachedDatapath, DatapathError, DatapathKey, DatapathPolicy, PinLayout,
};
use crate::netns::{
    remove_foreign_programs, restore_device, ConfigureError, HostOriginals, Netns, NetnsError,
    PodSide, RestoreOutcome, Step,
};
use crate::state::{Attachment, Plan, StateError, StateStore};
use crate::status::{DeviceEvent, DeviceRef, FailedPart, StatusSender};

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

/// The pod lifecycle. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Pods {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<StateStore>,
    host: Netns,
    layout: PinLayout,
    resolver: Arc<dyn DeviceResolver>,
    config: LifecycleConfig,
    status: Option<StatusSender>,
    /// Pod hooks hold it shared, `synchronize` exclusively.
    serial: RwLock<()>,
    /// One lock per pod UID with a hook in flight.
    pod_locks: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
    /// The namespaces of pods that have our devices, held open.
    keeper: Mutex<keeper::Keeper>,
    /// What a device costs to hand over and take back (for the hook budget).
    costs: Mutex<budget::Costs>,
    /// Write-ahead records of devices that went home after a failed start but could
    /// not be cleared (checkpoint I/O error); retried with the ended-pod check.
    stale_intents: Mutex<Vec<(String, Plan)>>,
    /// The DHCP leases of devices inside pods (`interface.dhcp`).
    leases: leases::Leases,
}

/// A failed device, before it is tied to the pod's error.
struct Failure {
    step: LifecycleStep,
    part: FailedPart,
    reason: &'static str,
    message: String,
}

/// A device handed over during this `start_pod`, for undo.
struct Done {
    claim_uid: String,
    plan: Plan,
    side: PodSide,
    originals: HostOriginals,
    datapath: Option<DatapathKey>,
    /// The lease acquired for the device (`interface.dhcp`); its keeper is in
    /// `Inner::leases`.
    lease: Option<crate::dhcp::Lease>,
}

fn lease_key(claim_uid: &str, plan: &Plan) -> leases::LeaseKey {
    leases::LeaseKey {
        claim_uid: claim_uid.to_string(),
        pool: plan.pool.clone(),
        device: plan.device.clone(),
    }
}

fn device_ref(plan: &Plan) -> DeviceRef {
    DeviceRef {
        claim: plan.claim.clone(),
        pod: plan.pod.clone(),
        pool: plan.pool.clone(),
        device: plan.device.clone(),
    }
}

fn configure_reason(err: &ConfigureError) -> &'static str {
    match err.step() {
        None => "DeviceNotFound",
        Some(Step::Capture) => "CaptureFailed",
        Some(Step::Validate) => "InvalidForDevice",
        Some(Step::Move) => "MoveFailed",
        Some(Step::LinkSettings) => "LinkSettingsFailed",
        Some(Step::Addresses) => "AddressesFailed",
        Some(Step::LinkUp) => "LinkUpFailed",
        Some(Step::Routes) => "RoutesFailed",
        Some(Step::Ethtool) => "EthtoolFailed",
        Some(Step::ReadBack) => "ReadBackFailed",
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
                layout: PinLayout::new(config.bpf_root.clone()),
                store,
                host,
                resolver,
                config,
                status,
                serial: RwLock::new(()),
                pod_locks: Mutex::new(BTreeMap::new()),
                keeper: Mutex::new(keeper::Keeper::default()),
                costs: Mutex::new(budget::Costs::default()),
                stale_intents: Mutex::new(Vec::new()),
                leases: leases::Leases::default(),
            }),
        }
    }

    /// The checkpoint this lifecycle records into.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.inner.store
    }

    /// Hands every device planned for pod `pod_uid` to the pod's network namespace.
    pub fn start_pod(
        &self,
        pod_uid: &str,
        pod_name: &str,
        pod: &PodRuntime,
    ) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let _shared = self.shared();
        let lock = self.pod_lock(pod_uid);
        let _pod = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.start(pod_uid, pod_name, pod)
    }

    /// Gives back every device of pod `pod_uid` (pod stopping).
    pub fn stop_pod(&self, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let _shared = self.shared();
        let pod = self.pod_lock(pod_uid);
        let _pod = pod.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.give_back(pod_uid)
    }

    /// Finishes whatever `stop_pod` left (pod removed; its namespace may be gone).
    pub fn remove_pod(&self, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let result = {
            let _shared = self.shared();
            let pod = self.pod_lock(pod_uid);
            let _pod = pod.lock().unwrap_or_else(|p| p.into_inner());
            self.inner.give_back(pod_uid)
        };
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
    /// attached to any other pod go home; live pods with unattached plans get them.
    pub fn synchronize(&self, live: &BTreeMap<String, PodRuntime>) -> SyncReport {
        let _exclusive = self
            .inner
            .serial
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut report = SyncReport::default();
        let plans = match self.inner.store.list() {
            Ok(p) => p,
            Err(source) => {
                report.errors.push(LifecycleError::Checkpoint {
                    pod: "*".into(),
                    source,
                });
                return report;
            }
        };
        let mut stale = std::collections::BTreeSet::new();
        let mut pending = BTreeMap::new();
        for plan in plans.iter().flat_map(|c| c.plans.iter()) {
            let is_live = live.contains_key(&plan.pod.uid);
            if (plan.attached || plan.attachment.is_some()) && !is_live {
                stale.insert(plan.pod.uid.clone());
            } else if !plan.attached && is_live {
                pending.insert(plan.pod.uid.clone(), plan.pod.to_string());
            }
        }
        for uid in stale {
            tracing::info!(pod_uid = %uid, "pod no longer exists; returning its devices");
            match self.inner.give_back(&uid) {
                Ok(o) => report.returned.extend(o),
                Err(e) => report.errors.push(e),
            }
        }
        for (uid, name) in pending {
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
        let ended = self.inner.keeper().over();
        let mut results = Vec::new();
        for (uid, path) in ended {
            tracing::warn!(
                pod_uid = %uid,
                netns = %path.display(),
                "the runtime removed the pod's network namespace without stopping the pod through NRI; returning its devices"
            );
            let _shared = self.shared();
            let lock = self.pod_lock(&uid);
            let _pod = lock.lock().unwrap_or_else(|p| p.into_inner());
            results.push((uid.clone(), self.inner.give_back(&uid)));
        }
        results
    }

    /// At start: holds the namespace of every pod the checkpoint says has devices, and
    /// gives back the devices of pods whose namespace is already gone.
    pub fn adopt(&self) -> Vec<(String, Result<Vec<DeviceOutcome>, LifecycleError>)> {
        let plans = match self.inner.store.list() {
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
        let mut pods: BTreeMap<String, PathBuf> = BTreeMap::new();
        for plan in plans.iter().flat_map(|c| c.plans.iter()) {
            if let Some(att) = &plan.attachment {
                pods.entry(plan.pod.uid.clone())
                    .or_insert_with(|| att.pod_netns.clone());
            }
        }
        let mut results = Vec::new();
        for (uid, path) in pods {
            match Netns::open(&path) {
                Ok(ns) => {
                    self.inner.keeper().hold(&uid, &ns);
                    for problem in self.inner.resume_leases(&uid, &ns) {
                        tracing::warn!(pod_uid = %uid, "{problem}");
                    }
                }
                Err(e) => {
                    tracing::warn!(pod_uid = %uid, netns = %path.display(), "the pod's network namespace is gone ({e}); returning what is left of its devices");
                    let _shared = self.shared();
                    let lock = self.pod_lock(&uid);
                    let _pod = lock.lock().unwrap_or_else(|p| p.into_inner());
                    results.push((uid.clone(), self.inner.give_back(&uid)));
                }
            }
        }
        results
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.inner
            .serial
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pod_lock(&self, pod_uid: &str) -> Arc<Mutex<()>> {
        self.inner
            .pod_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(pod_uid.to_string())
            .or_default()
            .clone()
    }
}

/// How every failure path of a hand-over says that putting the device back failed.
const RESTORE_FAILED: &str = "restoring the device failed";

impl Inner {
    /// Drops the write-ahead record of a device that is home (not attached).
    fn clear_intent(&self, claim_uid: &str, plan: &Plan) -> Result<(), StateError> {
        self.update_plan(claim_uid, plan, |p| {
            if !p.attached {
                p.attachment = None;
            }
        })
    }

    fn keeper(&self) -> std::sync::MutexGuard<'_, keeper::Keeper> {
        self.keeper.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn costs(&self) -> std::sync::MutexGuard<'_, budget::Costs> {
        self.costs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod's plans, read through the checkpoint's pod index.
    fn plans_of(&self, pod_uid: &str) -> Result<Vec<(String, Plan)>, LifecycleError> {
        self.store
            .plans_of_pod(pod_uid)
            .map_err(|source| LifecycleError::Checkpoint {
                pod: pod_uid.to_string(),
                source,
            })
    }

    /// Changes one plan in the checkpoint. A claim that was unprepared meanwhile is
    /// left alone.
    fn update_plan(
        &self,
        claim_uid: &str,
        plan: &Plan,
        change: impl FnOnce(&mut Plan),
    ) -> Result<(), StateError> {
        // One transaction: a lease keeper's thread may record a renewal meanwhile.
        self.store.update(claim_uid, |stored| {
            match stored
                .plans
                .iter_mut()
                .find(|p| p.pool == plan.pool && p.device == plan.device)
            {
                Some(p) => {
                    change(p);
                    true
                }
                None => false,
            }
        })?;
        Ok(())
    }

    fn emit(&self, event: DeviceEvent) {
        if let Some(tx) = &self.status {
            // The writer may be gone at shutdown; the kernel state is what matters.
            let _ = tx.send(event);
        }
    }

    fn start(
        &self,
        pod_uid: &str,
        pod_name: &str,
        runtime: &PodRuntime,
    ) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let netns = runtime.netns.as_path();
        let hook_started = Instant::now();
        let mut plans = self.plans_of(pod_uid)?;
        if plans.is_empty() {
            tracing::debug!(pod = %pod_name, pod_uid, "no claimed devices for this pod");
            return Ok(Vec::new());
        }
        // A hand-over that a dead driver left half done (its write-ahead record without
        // `attached`): bring the pod's devices home from their records, then start over.
        if plans
            .iter()
            .any(|(_, p)| !p.attached && p.attachment.is_some())
        {
            tracing::info!(pod = %pod_name, "an earlier start of this pod was cut off; returning its devices before starting again");
            self.give_back(pod_uid)?;
            plans = self.plans_of(pod_uid)?;
        }
        let pod_label = plans
            .first()
            .map(|(_, p)| p.pod.to_string())
            .unwrap_or_else(|| pod_name.to_string());
        let pod = Netns::open(netns).map_err(|source| LifecycleError::PodNetns {
            pod: pod_label.clone(),
            source,
        })?;
        let guard = self.socket_guard(&pod_label, runtime)?;
        let before_devices = hook_started.elapsed();
        let mut done: Vec<Done> = Vec::new();
        // What the checkpoint gets once every device is in: one transaction per claim.
        let mut records: Vec<Attachment> = Vec::new();
        let mut outcomes = Vec::new();
        for (claim_uid, plan) in plans {
            let span = tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
            let _entered = span.enter();
            if let (true, Some(att)) = (plan.attached, &plan.attachment) {
                tracing::debug!("already in the pod");
                outcomes.push(DeviceOutcome {
                    claim: plan.claim.to_string(),
                    pool: plan.pool.clone(),
                    device: plan.device.clone(),
                    action: Action::AlreadyAttached {
                        pod_ifname: att.pod_ifname.clone(),
                    },
                });
                continue;
            }
            if let Some(deadline) = runtime.deadline {
                let costs = *self.costs();
                if !deadline.next_fits(Instant::now(), done.len(), &costs) {
                    let spent = deadline.arrived.elapsed();
                    tracing::warn!(budget = ?deadline.budget, ?spent, done = done.len(), "the hook budget would run out; undoing the pod's devices");
                    let message = format!(
                        "not handed over: the runtime's hook budget of {:?} would run out",
                        deadline.budget
                    );
                    self.emit(DeviceEvent::Failed {
                        device: device_ref(&plan),
                        part: FailedPart::Network,
                        reason: "HookBudget".into(),
                        message: message.clone(),
                    });
                    drop(_entered);
                    let n = done.len();
                    let problems = self.undo(done, &pod, &message);
                    return Err(LifecycleError::Budget(Box::new(budget::Exceeded {
                        pod: plan.pod.to_string(),
                        claim: plan.claim.to_string(),
                        device: plan.device.clone(),
                        budget: deadline.budget,
                        spent,
                        done: n,
                        costs,
                        problems,
                    })));
                }
            }
            let attach_started = Instant::now();
            let lease_until = match runtime.deadline {
                Some(d) => d.lease_until(done.len(), &self.costs()),
                None => attach_started + budget::LEASE_WAIT,
            };
            match self.attach_one(&claim_uid, &plan, &pod, guard.as_deref(), lease_until) {
                Ok((d, waited, record)) => {
                    // The server's answer time is not what a device costs to move.
                    self.costs()
                        .attached(attach_started.elapsed().saturating_sub(waited));
                    tracing::info!(
                        interface = %d.side.name,
                        datapath = d.datapath.is_some(),
                        "device handed to the pod"
                    );
                    records.push(record);
                    outcomes.push(DeviceOutcome {
                        claim: plan.claim.to_string(),
                        pool: plan.pool.clone(),
                        device: plan.device.clone(),
                        action: Action::Attached {
                            pod_ifname: d.side.name.clone(),
                            datapath: d.datapath.is_some(),
                        },
                    });
                    done.push(d);
                }
                Err(f) => {
                    tracing::warn!(step = %f.step, reason = f.reason, "handing the device to the pod failed: {}", f.message);
                    self.emit(DeviceEvent::Failed {
                        device: device_ref(&plan),
                        part: f.part,
                        reason: f.reason.to_string(),
                        message: f.message.clone(),
                    });
                    drop(_entered);
                    let cause = format!("device {} of claim {} failed", plan.device, plan.claim);
                    let undo = self.undo(done, &pod, &cause);
                    // The failed device is home again unless its restore failed; then
                    // its write-ahead record stays for the next stop or synchronize.
                    if !f.message.contains(RESTORE_FAILED) {
                        if let Err(e) = self.clear_intent(&claim_uid, &plan) {
                            tracing::warn!("the device is home but its write-ahead record could not be cleared ({e}); retrying in the background");
                            self.stale_intents
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((claim_uid.clone(), plan.clone()));
                        }
                    }
                    return Err(LifecycleError::Device {
                        claim: plan.claim.to_string(),
                        device: plan.device.clone(),
                        pod: plan.pod.to_string(),
                        step: f.step,
                        message: f.message,
                        undo,
                    });
                }
            }
        }
        // Durable before the hook answers: a driver killed earlier finds only the
        // write-ahead intents, returns the devices and starts the pod over.
        let record_started = Instant::now();
        let devices_took = record_started - hook_started - before_devices;
        if let Err((i, e)) = self.record_attached(&done, records) {
            let failed = &done[i].plan;
            let (claim, device, pod_name) = (
                failed.claim.to_string(),
                failed.device.clone(),
                failed.pod.to_string(),
            );
            let message = format!("{}: {e}", LifecycleStep::Checkpoint);
            tracing::warn!(claim = %claim, device = %device, "recording the hand-over failed: {e}");
            let undo = self.undo(done, &pod, &message);
            return Err(LifecycleError::Device {
                claim,
                device,
                pod: pod_name,
                step: LifecycleStep::Checkpoint,
                message: e.to_string(),
                undo,
            });
        }
        tracing::debug!(
            devices = done.len(),
            checkpoint_us = record_started.elapsed().as_micros() as u64,
            "hand-over recorded"
        );
        for d in &done {
            self.emit(DeviceEvent::Started {
                device: device_ref(&d.plan),
                pod_netns: netns.to_path_buf(),
                pod_ifname: d.side.name.clone(),
                datapath: d.datapath.clone(),
                dhcp: d.lease.clone(),
            });
        }
        let held_at = Instant::now();
        self.keeper().hold(pod_uid, &pod);
        tracing::debug!(
            before_devices_us = before_devices.as_micros() as u64,
            devices_us = devices_took.as_micros() as u64,
            record_and_events_us = (held_at - record_started).as_micros() as u64,
            hold_us = held_at.elapsed().as_micros() as u64,
            "start timing"
        );
        Ok(outcomes)
    }

    /// Marks the devices of `done` attached with their `records` (same order): one
    /// write transaction per claim. On failure, the index in `done` of a device whose
    /// claim could not be written.
    fn record_attached(
        &self,
        done: &[Done],
        records: Vec<Attachment>,
    ) -> Result<(), (usize, StateError)> {
        let mut by_claim: BTreeMap<&str, Vec<(usize, Attachment)>> = BTreeMap::new();
        for (i, (d, record)) in done.iter().zip(records).enumerate() {
            by_claim
                .entry(d.claim_uid.as_str())
                .or_default()
                .push((i, record));
        }
        for (claim_uid, entries) in by_claim {
            let first = entries.first().map(|(i, _)| *i).unwrap_or(0);
            let mut missing = None;
            let written = self
                .store
                .update(claim_uid, |stored| {
                    for (i, record) in entries {
                        let plan = &done[i].plan;
                        match stored
                            .plans
                            .iter_mut()
                            .find(|p| p.pool == plan.pool && p.device == plan.device)
                        {
                            Some(p) => {
                                p.attached = true;
                                p.attachment = Some(record);
                            }
                            None => {
                                missing = Some(i);
                                return false;
                            }
                        }
                    }
                    true
                })
                .map_err(|e| (first, e))?;
            if !written {
                let i = missing.unwrap_or(first);
                return Err((
                    i,
                    StateError::Entry {
                        uid: claim_uid.to_string(),
                        message: format!(
                            "unprepared meanwhile (device {} was being recorded)",
                            done[i].plan.device
                        ),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Where the pod's socket guard goes: the pod's cgroup when the runtime names one.
    /// A named cgroup that cannot be found fails the pod start (the data path would be
    /// bypassable); a runtime that names none gets a warning and no guard.
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

    /// Hands one device over; on success also how long its DHCP lease took to come and
    /// the record that says so, for the caller to make durable with the pod's others.
    fn attach_one(
        &self,
        claim_uid: &str,
        plan: &Plan,
        pod: &Netns,
        guard: Option<&Path>,
        lease_until: Instant,
    ) -> Result<(Done, std::time::Duration, Attachment), Failure> {
        let one_started = Instant::now();
        let cfg = parse_parameters(&plan.config, "parameters").map_err(|e| Failure {
            step: LifecycleStep::Config,
            part: FailedPart::Network,
            reason: "InvalidConfig",
            message: e.to_string(),
        })?;
        let ifname = self
            .resolver
            .host_ifname(&plan.pool, &plan.device)
            .ok_or_else(|| Failure {
                step: LifecycleStep::Resolve,
                part: FailedPart::Network,
                reason: "DeviceNotFound",
                message: format!(
                    "device {} of pool {} is not in the node's inventory",
                    plan.device, plan.pool
                ),
            })?;
        if cfg.disable_ebpf_programs {
            let name = ifname.clone();
            let removed = self
                .host
                .run_async(move || async move { remove_foreign_programs(&name).await })
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|message| Failure {
                    step: LifecycleStep::ForeignPrograms,
                    part: FailedPart::Network,
                    reason: "ForeignProgramsNotRemoved",
                    message,
                })?;
            for program in removed {
                tracing::info!(interface = %ifname, "removed foreign program {program}");
            }
        }
        tracing::debug!(
            config_and_resolve_us = one_started.elapsed().as_micros() as u64,
            "device resolved"
        );
        // Write-ahead: the host state and where the device goes are durable before the
        // device is touched, so a driver killed at any later point can bring it home.
        let settings = settings::interface_settings(&cfg);
        let (pod_netns, pod_ifname, pod_mac, datapath) = (
            pod.path().to_path_buf(),
            settings.name.clone().unwrap_or_else(|| ifname.clone()),
            settings.mac,
            self.config.dataplane,
        );
        let (store, uid, pool, device) = (
            self.store.clone(),
            claim_uid.to_string(),
            plan.pool.clone(),
            plan.device.clone(),
        );
        let before_move: crate::netns::configure::BeforeMove = Box::new(move |originals| {
            let intent = Attachment {
                pod_netns,
                pod_ifname,
                pod_ifindex: None,
                pod_mac,
                originals: originals.clone(),
                datapath,
                attached_at: 0,
                dhcp: None,
            };
            store
                .update(&uid, |stored| {
                    match stored
                        .plans
                        .iter_mut()
                        .find(|p| p.pool == pool && p.device == device)
                    {
                        Some(p) => {
                            p.attached = false;
                            p.attachment = Some(intent);
                            true
                        }
                        None => false,
                    }
                })
                .map_err(|e| e.to_string())
                .and_then(|found| {
                    if found {
                        Ok(())
                    } else {
                        Err(format!("claim {uid} was unprepared meanwhile"))
                    }
                })
        });
        let configured = crate::netns::configure::move_and_configure_with(
            &self.host,
            pod,
            &ifname,
            &settings,
            Some(before_move),
        )
        .map_err(|e| Failure {
            step: LifecycleStep::Configure(e.step()),
            part: FailedPart::Network,
            reason: configure_reason(&e),
            message: e.detail(),
        })?;
        let side = configured.pod_side();
        let originals = configured.originals.clone();
        let configured_at = Instant::now();

        let mut datapath = None;
        let mut base_policy = None;
        if self.config.dataplane {
            let policy = settings::datapath_policy(&cfg, &configured);
            base_policy = Some(policy.clone());
            let attached = DatapathKey::new(
                plan.claim.namespace.clone(),
                plan.claim.name.clone(),
                plan.device.clone(),
            )
            .map_err(DatapathError::from)
            .and_then(|key| {
                AttachedDatapath::attach(
                    &self.layout,
                    key,
                    pod,
                    &configured.pod_ifname,
                    &policy,
                    AttachOptions {
                        guard_cgroup: guard.map(Path::to_path_buf),
                        ..Default::default()
                    },
                )
            });
            match attached {
                Ok(dp) => datapath = Some(dp.key().clone()),
                Err(e) => {
                    let mut message = e.to_string();
                    if let Err(r) = restore_device(&self.host, Some(pod), &side, &originals, None) {
                        message.push_str(&format!(" (and restoring the device failed: {r})"));
                    }
                    return Err(Failure {
                        step: LifecycleStep::Datapath,
                        part: FailedPart::DataPath,
                        reason: "DataPathAttachFailed",
                        message,
                    });
                }
            }
        }

        let mut lease = None;
        let mut waited = std::time::Duration::ZERO;
        if cfg.interface.dhcp {
            let asked = Instant::now();
            let acquired = self.acquire_lease(
                claim_uid,
                plan,
                pod,
                &side,
                datapath.as_ref().zip(base_policy.clone()),
                lease_until,
            );
            waited = asked.elapsed();
            match acquired {
                Ok(l) => lease = Some(l),
                Err(mut failure) => {
                    if let Some(key) = &datapath {
                        if let Some(problem) = self.detach(key, Some(pod)) {
                            failure.message.push_str(&format!(" (and {problem})"));
                        }
                    }
                    if let Err(r) = restore_device(&self.host, Some(pod), &side, &originals, None) {
                        failure
                            .message
                            .push_str(&format!(" (and restoring the device failed: {r})"));
                    }
                    return Err(failure);
                }
            }
        }

        let attachment = Attachment {
            pod_netns: pod.path().to_path_buf(),
            pod_ifname: side.name.clone(),
            pod_ifindex: side.ifindex,
            pod_mac: side.mac,
            originals: originals.clone(),
            datapath: datapath.is_some(),
            attached_at: crate::unix_now(),
            dhcp: lease.clone().map(|l| {
                // A renewal may already have come: record the newest.
                let newest = self.leases.lease(&lease_key(claim_uid, plan)).unwrap_or(l);
                leases::new_record(newest, base_policy.clone())
            }),
        };
        tracing::debug!(
            after_configure_us = configured_at.elapsed().as_micros() as u64,
            "data path attached (and lease, if any)"
        );
        let done = Done {
            claim_uid: claim_uid.to_string(),
            plan: plan.clone(),
            side,
            originals,
            datapath,
            lease,
        };
        Ok((done, waited, attachment))
    }

    /// Acquires the device's DHCP lease inside the pod before `until`, puts it into the
    /// data path's policy, and keeps its keeper in `leases`. On failure nothing of the
    /// lease is left (no address, no route, no keeper); the caller detaches and
    /// restores.
    fn acquire_lease(
        &self,
        claim_uid: &str,
        plan: &Plan,
        pod: &Netns,
        side: &PodSide,
        datapath: Option<(&DatapathKey, DatapathPolicy)>,
        until: Instant,
    ) -> Result<crate::dhcp::Lease, Failure> {
        let failed = |message: String| Failure {
            step: LifecycleStep::Dhcp,
            part: FailedPart::Network,
            reason: "DhcpLeaseFailed",
            message,
        };
        let mac = side.mac.ok_or_else(|| {
            failed(format!(
                "interface {} has no MAC address in the pod to ask for a lease with",
                side.name
            ))
        })?;
        let key = lease_key(claim_uid, plan);
        // The follower does not know the first lease: its first change rewrites the
        // policy once, even when only the times moved.
        let follower = leases::Follower {
            key: key.clone(),
            device: device_ref(plan),
            store: self.store.clone(),
            status: self.status.clone(),
            layout: self.layout.clone(),
            datapath: datapath.as_ref().map(|(k, p)| ((*k).clone(), p.clone())),
            current: None,
        };
        let asked = Instant::now();
        let (keeper, lease) =
            crate::dhcp::LeaseKeeper::start(pod, &side.name, mac, until, follower.into_callback())
                .map_err(|e| {
                    failed(format!(
                        "{e} (the lease had to come within {:?}: what the hook budget leaves after undoing)",
                        until.saturating_duration_since(asked)
                    ))
                })?;
        if let Some((dp, base)) = &datapath {
            if let Err(e) = leases::apply_to_datapath(&self.layout, dp, base, Some(&lease)) {
                let mut message = format!(
                    "putting the leased address {} into the data path: {e}",
                    lease.address
                );
                if let Err(r) = keeper.stop() {
                    message.push_str(&format!(" (and releasing the lease failed: {r})"));
                }
                return Err(Failure {
                    step: LifecycleStep::Datapath,
                    part: FailedPart::DataPath,
                    reason: "DataPathPolicyFailed",
                    message,
                });
            }
        }
        tracing::info!(interface = %side.name, address = %lease.address, server = %lease.server, "DHCP lease acquired in the pod");
        self.leases.hold(key, keeper);
        Ok(lease)
    }

    /// Detaches and restores one device handed over in this call; problems as text.
    fn take_back(&self, done: &Done, pod: Option<&Netns>) -> Vec<String> {
        let mut problems = Vec::new();
        self.leases.release(&lease_key(&done.claim_uid, &done.plan));
        if let Some(key) = &done.datapath {
            problems.extend(self.detach(key, pod));
        }
        if let Err(e) = restore_device(&self.host, pod, &done.side, &done.originals, None) {
            problems.push(format!("{}: {e}", LifecycleStep::Restore));
        }
        problems
    }

    /// Releases the device's DHCP lease before it leaves the pod: through its keeper,
    /// or, when none is held (a driver that restarted and could not resume it), by
    /// taking the recorded lease over just to release it.
    fn release_lease(&self, claim_uid: &str, plan: &Plan, att: &Attachment, pod: Option<&Netns>) {
        if self.leases.release(&lease_key(claim_uid, plan)) {
            return;
        }
        let (Some(lease), Some(mac), Some(pod)) = (
            att.dhcp.as_ref().and_then(|r| r.lease.clone()),
            att.pod_mac,
            pod,
        ) else {
            return;
        };
        let released = crate::dhcp::LeaseKeeper::resume(pod, &att.pod_ifname, mac, lease, |_| {})
            .and_then(crate::dhcp::LeaseKeeper::stop);
        if let Err(e) = released {
            tracing::warn!(interface = %att.pod_ifname, "recorded DHCP lease not released: {e}");
        }
    }

    /// Takes over the leases of a pod's devices recorded in the checkpoint (daemon
    /// start), so they are renewed and released as if this run had acquired them.
    fn resume_leases(&self, pod_uid: &str, pod: &Netns) -> Vec<String> {
        let plans = match self.plans_of(pod_uid) {
            Ok(p) => p,
            Err(e) => return vec![e.to_string()],
        };
        let mut problems = Vec::new();
        for (claim_uid, plan) in plans {
            let Some(att) = plan.attachment.as_ref() else {
                continue;
            };
            let Some(record) = att.dhcp.as_ref() else {
                continue;
            };
            let key = lease_key(&claim_uid, &plan);
            if self.leases.holds(&key) {
                continue;
            }
            let datapath = if att.datapath {
                DatapathKey::new(
                    plan.claim.namespace.clone(),
                    plan.claim.name.clone(),
                    plan.device.clone(),
                )
                .ok()
                .zip(record.policy.clone())
            } else {
                None
            };
            let follower = leases::Follower {
                key: key.clone(),
                device: device_ref(&plan),
                store: self.store.clone(),
                status: self.status.clone(),
                layout: self.layout.clone(),
                datapath: datapath.clone(),
                current: record.lease.clone(),
            };
            let Some(mac) = att.pod_mac else {
                problems.push(format!(
                    "claim {}, device {}: no MAC recorded to renew its DHCP lease with",
                    plan.claim, plan.device
                ));
                continue;
            };
            let resumed = match record.lease.clone() {
                Some(lease) => {
                    crate::dhcp::LeaseKeeper::resume(pod, &att.pod_ifname, mac, lease, follower.into_callback())
                }
                // Lost when the driver stopped: ask again (the data path already
                // enforces "no lease"; the follower puts the new one in).
                None => crate::dhcp::LeaseKeeper::start(
                    pod,
                    &att.pod_ifname,
                    mac,
                    Instant::now() + budget::LEASE_WAIT,
                    follower.into_callback(),
                )
                .map(|(keeper, lease)| {
                    if let Some((dp, base)) = &datapath {
                        if let Err(e) = leases::apply_to_datapath(&self.layout, dp, base, Some(&lease)) {
                            tracing::warn!(device = %plan.device, "data-path policy not updated to the DHCP lease: {e}");
                        }
                    }
                    if let Err(e) = leases::record_lease(&self.store, &key, Some(&lease)) {
                        tracing::warn!(device = %plan.device, "DHCP lease not recorded in the checkpoint: {e}");
                    }
                    keeper
                }),
            };
            match resumed {
                Ok(keeper) => {
                    tracing::info!(claim = %plan.claim, device = %plan.device, "DHCP lease taken over from the checkpoint");
                    self.leases.hold(key, keeper);
                }
                Err(e) => problems.push(format!(
                    "claim {}, device {}: DHCP lease not taken over: {e}",
                    plan.claim, plan.device
                )),
            }
        }
        problems
    }

    /// Detaches a device's data path found through its pins (already gone is fine);
    /// a problem as text.
    /// Makes the device's data path count only (see [`AttachedDatapath::stand_down`]).
    fn stand_down(&self, key: &DatapathKey) -> Result<(), DatapathError> {
        AttachedDatapath::adopt(&self.layout, key.clone())?.stand_down()
    }

    fn detach(&self, key: &DatapathKey, pod: Option<&Netns>) -> Option<String> {
        let result = match AttachedDatapath::adopt(&self.layout, key.clone()) {
            Ok(dp) => dp.detach(&self.layout, pod),
            Err(DatapathError::NotPinned { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        result
            .err()
            .map(|e| format!("{}: {e}", LifecycleStep::Detach))
    }

    /// Undoes the devices already handed to the pod when a later one failed.
    fn undo(&self, done: Vec<Done>, pod: &Netns, cause: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for d in done.into_iter().rev() {
            let span = tracing::info_span!("device", claim = %d.plan.claim, pod = %d.plan.pod, device = %d.plan.device);
            let _entered = span.enter();
            let undo_started = Instant::now();
            let mut mine = self.take_back(&d, Some(pod));
            self.costs().undone(undo_started.elapsed());
            if mine.is_empty() {
                if let Err(e) = self.update_plan(&d.claim_uid, &d.plan, |p| {
                    p.attached = false;
                    p.attachment = None;
                }) {
                    mine.push(format!("{}: {e}", LifecycleStep::Checkpoint));
                }
                tracing::info!("device returned because {cause}");
            }
            self.emit(DeviceEvent::Failed {
                device: device_ref(&d.plan),
                part: FailedPart::Sibling,
                reason: "PodStartFailed".into(),
                message: format!("returned to the host because {cause}"),
            });
            problems.extend(
                mine.into_iter()
                    .map(|p| format!("claim {}, device {}: {p}", d.plan.claim, d.plan.device)),
            );
        }
        problems
    }

    /// Gives back every device of the pod that the checkpoint says is in it.
    fn give_back(&self, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
        let plans = self.plans_of(pod_uid)?;
        let mut outcomes = Vec::new();
        let mut problems = Vec::new();
        let mut pod_label = pod_uid.to_string();
        // The held namespace first: the runtime's path may be gone or name another.
        let held = self.keeper().get(pod_uid);
        for (claim_uid, plan) in plans {
            pod_label = plan.pod.to_string();
            let span = tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
            let _entered = span.enter();
            let Some(att) = plan.attachment.clone() else {
                if plan.attached {
                    // Attached without a record (older checkpoint): nothing to restore from.
                    tracing::warn!("attached without a record of the host state; marking it home");
                    if let Err(e) = self.update_plan(&claim_uid, &plan, |p| p.attached = false) {
                        problems.push(format!(
                            "claim {}, device {}: {}: {e}",
                            plan.claim,
                            plan.device,
                            LifecycleStep::Checkpoint
                        ));
                    }
                }
                continue;
            };
            let pod = held
                .as_ref()
                .and_then(|h| h.try_clone().ok())
                .or_else(|| Netns::open(&att.pod_netns).ok());
            let side = PodSide {
                name: att.pod_ifname.clone(),
                ifindex: att.pod_ifindex,
                mac: att.pod_mac,
            };
            let done = Done {
                claim_uid: claim_uid.clone(),
                plan: plan.clone(),
                side,
                originals: att.originals.clone(),
                datapath: if att.datapath {
                    DatapathKey::new(
                        plan.claim.namespace.clone(),
                        plan.claim.name.clone(),
                        plan.device.clone(),
                    )
                    .ok()
                } else {
                    None
                },
                lease: None,
            };
            let mut mine = Vec::new();
            let stop_started = Instant::now();
            self.release_lease(&claim_uid, &plan, &att, pod.as_ref());
            // The programs go home with the device and come off after the move: XDP
            // and TCX links survive it, and detaching first made the kernel's deferred
            // link release (two RCU waits under RTNL) race the move for RTNL. They stop
            // enforcing before the move (count only), so the node's traffic on its
            // returned device is never held to the pod's policy. When that fails, the
            // old order: detach, then move.
            let mut detach_later = None;
            if let Some(key) = &done.datapath {
                match self.stand_down(key) {
                    Ok(()) => detach_later = Some(key),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot stand the data path down; detaching before the move");
                        mine.extend(self.detach(key, pod.as_ref()));
                    }
                }
            }
            let detached = stop_started.elapsed();
            let root = self
                .config
                .root_netns
                .as_ref()
                .and_then(|p| Netns::open(p).ok());
            let restored = restore_device(
                &self.host,
                pod.as_ref(),
                &done.side,
                &done.originals,
                root.as_ref(),
            );
            let restored_at = stop_started.elapsed();
            if let Some(key) = detach_later {
                // Home (or gone): clsact filters died with the move, nothing to
                // remove in the pod. Still in the pod: remove them there.
                let in_pod = restored.is_err().then_some(pod.as_ref()).flatten();
                mine.extend(self.detach(key, in_pod));
            }
            let detached_at = stop_started.elapsed();
            match restored {
                Ok(outcome) => {
                    let restored = restored_at;
                    match &outcome {
                        RestoreOutcome::Gone => {
                            tracing::warn!(interface = %done.originals.name, "device lost: destroyed with the pod's network namespace");
                            self.emit(DeviceEvent::Failed {
                                device: device_ref(&plan),
                                part: FailedPart::Network,
                                reason: "DeviceLost".into(),
                                message: format!(
                                    "interface {} was destroyed with the network namespace of pod {} before it could be returned",
                                    done.originals.name, plan.pod
                                ),
                            });
                        }
                        _ => {
                            tracing::info!(interface = %done.originals.name, "device restored on the host")
                        }
                    }
                    if let Err(e) = self.update_plan(&claim_uid, &plan, |p| {
                        p.attached = false;
                        p.attachment = None;
                    }) {
                        mine.push(format!("{}: {e}", LifecycleStep::Checkpoint));
                    }
                    tracing::debug!(
                        stand_down_us = detached.as_micros() as u64,
                        restore_us = (restored - detached).as_micros() as u64,
                        detach_us = (detached_at - restored).as_micros() as u64,
                        checkpoint_us = (stop_started.elapsed() - detached_at).as_micros() as u64,
                        "stop timing"
                    );
                    // A lost device keeps its `DeviceLost` entry in the status.
                    if outcome != RestoreOutcome::Gone {
                        self.emit(DeviceEvent::Stopped {
                            device: device_ref(&plan),
                        });
                    }
                    outcomes.push(DeviceOutcome {
                        claim: plan.claim.to_string(),
                        pool: plan.pool.clone(),
                        device: plan.device.clone(),
                        action: Action::Returned(outcome),
                    });
                }
                Err(e) => {
                    tracing::warn!("restoring the device failed; will retry: {e}");
                    mine.push(format!("{}: {e}", LifecycleStep::Restore));
                }
            }
            problems.extend(
                mine.into_iter()
                    .map(|p| format!("claim {}, device {}: {p}", plan.claim, plan.device)),
            );
        }
        if problems.is_empty() {
            self.keeper().release(pod_uid);
            Ok(outcomes)
        } else {
            Err(LifecycleError::Incomplete {
                pod: pod_label,
                problems,
            })
        }
    }
}
