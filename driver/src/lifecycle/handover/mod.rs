//! Handing a pod's devices over ([`start`]) and taking them back ([`give_back`]),
//! generic over [`Effects`] so the same code runs against the kernel and, in the unit
//! tests, against a fake that fails or dies at any call.
//!
//! There is one rollback owner: [`unwind`]. A device that failed half-way, the devices
//! already handed over when a later one failed or the hook budget ran out, a pod stop,
//! and a restart that finds a cut-off start or stop all go home through it, step by
//! step as [`decide::undo_steps`] lists them. Nothing else restores or detaches.
//!
//! A start captures every device of the pod, records them all `Entering` in one write,
//! moves them back to back and only then configures each: work done between two moves
//! (a configuration, a socket closed) queues kernel frees the next move waits for.
//!
//! The checkpoint is written ahead of the kernel: `Entering` (with the host state)
//! before any of the pod's devices moves, `InPod` for all of a pod's devices before the hook answers,
//! `Leaving` for all of them before a stop touches any, `Home` after each is back.

mod rollback;
mod taking_back;

pub use rollback::{unwind, Taken, Unwound};
pub use taking_back::give_back;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::decide::{self, PodAction, PodEvent};
use super::effects::{Effects, Intent, Placing};
use super::{
    budget, datapath_key, device_ref, settings, Action, DeviceOutcome, Failure, LifecycleError,
    LifecycleStep, PodRuntime,
};
use crate::netns::{ConfigureError, Configured, HostOriginals, NetnsError, PodSide, Step};

use crate::state::{Attachment, Placement, Plan};
use crate::status::{DeviceEvent, FailedPart};

/// What the hand-over shares across pods.
pub struct Ledger<'a> {
    /// What a device costs to hand over and take back (for the hook budget).
    pub costs: &'a Mutex<budget::Costs>,
    /// Write-ahead records of devices that went home after a failed start but could
    /// not be cleared (checkpoint I/O error); retried with the ended-pod check.
    pub stale: &'a Mutex<Vec<(String, Plan)>>,
}

impl Ledger<'_> {
    fn costs(&self) -> std::sync::MutexGuard<'_, budget::Costs> {
        self.costs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A device that is home but whose write-ahead record could not be cleared: the
    /// record is retried in the background (until then unprepare waits).
    fn keep_if_uncleared(&self, unwound: &Unwound, taken: &Taken) {
        if unwound.uncleared {
            tracing::warn!(device = %taken.plan.device, "the device is home but its write-ahead record could not be cleared; retrying in the background");
            self.stale
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((taken.claim_uid.clone(), taken.plan.clone()));
        }
    }
}

/// A device handed over in this call.
struct Handed {
    taken: Taken,
    side: PodSide,
    lease: Option<crate::dhcp::Lease>,
    /// What the checkpoint gets once every device of the pod is in.
    record: Attachment,
    /// How long the DHCP server took to answer (not what the device costs).
    waited: Duration,
}

fn checkpoint_error(pod: &str) -> impl Fn(crate::state::StateError) -> LifecycleError + '_ {
    move |source| LifecycleError::Checkpoint {
        pod: pod.to_string(),
        source,
    }
}

/// Hands every device planned for pod `pod_uid` to the pod's network namespace.
pub fn start<E: Effects>(
    e: &E,
    ledger: &Ledger<'_>,
    pod_uid: &str,
    pod_name: &str,
    runtime: &PodRuntime,
) -> Result<Vec<DeviceOutcome>, LifecycleError> {
    let hook_started = Instant::now();
    let mut plans = e.plans_of(pod_uid).map_err(checkpoint_error(pod_uid))?;
    if plans.is_empty() {
        tracing::debug!(pod = %pod_name, pod_uid, "no claimed devices for this pod");
        return Ok(Vec::new());
    }
    // A start or stop cut off half-way, or devices recorded in another pod namespace:
    // everything goes home first, then the hand-over starts from there.
    let cut_off = pod_action(&plans, PodEvent::Starting) == PodAction::GiveBackThenHandOver;
    if cut_off || decide::elsewhere(plans.iter().map(|(_, p)| &p.placement), &runtime.netns) {
        let why = if cut_off {
            "an earlier start or stop of this pod was cut off"
        } else {
            "devices of this pod are in another network namespace"
        };
        tracing::info!(pod = %pod_name, netns = %runtime.netns.display(), "{why}; returning its devices before starting again");
        give_back(e, pod_uid)?;
        plans = e.plans_of(pod_uid).map_err(checkpoint_error(pod_uid))?;
    }
    let pod_label = plans
        .first()
        .map(|(_, p)| p.pod.to_string())
        .unwrap_or_else(|| pod_name.to_string());
    let pod = e
        .open_pod(&runtime.netns)
        .map_err(|source| LifecycleError::PodNetns {
            pod: pod_label.clone(),
            source,
        })?;
    let guard = e.socket_guard(&pod_label, runtime)?;
    let before_devices = hook_started.elapsed();
    // Each device's outcome, in the order of its plan.
    let mut outcomes: Vec<Option<DeviceOutcome>> = Vec::new();
    let to_move = plans
        .iter()
        .filter(|(_, p)| !matches!(p.placement, Placement::InPod { .. }))
        .count();
    if let (Some(deadline), Some((_, first))) = (
        runtime.deadline,
        plans
            .iter()
            .find(|(_, p)| !matches!(p.placement, Placement::InPod { .. })),
    ) {
        let costs = *ledger.costs();
        if !deadline.all_fit(Instant::now(), to_move, &costs) {
            return Err(over_budget(
                e,
                ledger,
                deadline,
                costs,
                first,
                Vec::new(),
                &pod,
            ));
        }
    }
    // Every device is resolved, then all are captured in one job, then all are
    // recorded `Entering` at once, then they move back to back, and only then is each
    // configured: a device configured (or a
    // record synced) between two moves queues kernel work the next move waits for.
    // The captures cannot overlap the moves either: reading a link (RTM_GETLINK)
    // waits for the RTNL the moves hold (measured: 35-50 ms during a run of moves).
    // After the moves, one worker in the pod configures them one after another while
    // this thread gives each configured device its data path (no RTNL).
    let mut resolved: Vec<Resolved> = Vec::new();
    for (claim_uid, plan) in plans {
        let span = tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
        let _entered = span.enter();
        if let Placement::InPod { attachment } = &plan.placement {
            tracing::debug!("already in the pod");
            outcomes.push(Some(DeviceOutcome {
                claim: plan.claim.to_string(),
                pool: plan.pool.clone(),
                device: plan.device.clone(),
                action: Action::AlreadyAttached {
                    pod_ifname: attachment.pod_ifname.clone(),
                },
            }));
            continue;
        }
        match resolve_one(e, &claim_uid, &plan, &pod) {
            Ok(mut r) => {
                r.slot = outcomes.len();
                outcomes.push(None);
                resolved.push(r);
            }
            Err(failed) => {
                drop(_entered);
                let others = resolved.into_iter().map(|r| r.taken).collect();
                return Err(failed_device(e, ledger, *failed, others, &pod));
            }
        }
    }
    // All captured in one go (one job in the host namespace).
    let wanted = resolved
        .iter()
        .map(|r| (r.ifname.clone(), r.settings.clone()))
        .collect();
    let mut tried = e.capture_each(wanted).into_iter();
    let mut capturing: Vec<Capturing<E::Captured>> = Vec::with_capacity(resolved.len());
    for r in resolved {
        let err = match tried.next() {
            Some(Ok(captured)) => {
                capturing.push(Capturing {
                    device: r,
                    captured,
                });
                continue;
            }
            Some(Err(err)) => err,
            // Ended without saying why: this device was not captured.
            None => ConfigureError::NotFound {
                device: r.ifname.clone(),
                netns: "the host namespace".into(),
            },
        };
        let others = capturing.into_iter().map(|c| c.device.taken).collect();
        return Err(failed_device(
            e,
            ledger,
            (configure_failure(&err), r.taken),
            others,
            &pod,
        ));
    }
    let captured_at = Instant::now();
    // Durable before any device moves.
    let entering: Vec<Placing<'_>> = capturing
        .iter_mut()
        .map(|c| {
            let originals = e.captured_originals(&mut c.captured);
            super::parking::complete(&c.device.taken.plan, originals);
            Placing {
                claim_uid: &c.device.taken.claim_uid,
                plan: &c.device.taken.plan,
                placement: Placement::Entering {
                    attachment: c.device.intent.clone().attachment(originals.clone()),
                },
            }
        })
        .collect();
    let recorded = e.place(entering);
    // Written in part at worst (one transaction per claim): each may stand.
    for c in &mut capturing {
        c.device.taken.recorded = true;
    }
    if let Err((_, err)) = recorded {
        let mut rest = capturing.into_iter().map(|c| c.device.taken);
        let Some(first) = rest.next() else {
            return Err(checkpoint_error(pod_uid)(err));
        };
        let failure = Failure::new(
            LifecycleStep::Checkpoint,
            FailedPart::Network,
            "CheckpointFailed",
            err.to_string(),
        );
        return Err(failed_device(
            e,
            ledger,
            (failure, first),
            rest.collect(),
            &pod,
        ));
    }
    tracing::debug!(
        devices = capturing.len(),
        intent_us = captured_at.elapsed().as_micros() as u64,
        "intent recorded"
    );
    if let (Some(deadline), Some(first)) = (runtime.deadline, capturing.first()) {
        let costs = *ledger.costs();
        if !deadline.all_fit(Instant::now(), capturing.len(), &costs) {
            let plan = first.device.taken.plan.clone();
            let others = capturing.into_iter().map(|c| c.device.taken).collect();
            return Err(over_budget(e, ledger, deadline, costs, &plan, others, &pod));
        }
    }
    let moves_started = Instant::now();
    let mut rest = Vec::with_capacity(capturing.len());
    let mut devices = Vec::with_capacity(capturing.len());
    for mut c in capturing {
        let side = c.side_before_move(e);
        devices.push(c.captured);
        let d = c.device;
        rest.push((d.taken, d.cfg, d.settings, d.ifname, d.slot, side));
    }
    let n = devices.len();
    let tried = match e.move_all(&pod, devices) {
        Ok(tried) => tried,
        Err(err) => {
            // Any of them may have moved: each is looked for in the pod and at home.
            let mut takens: Vec<Taken> = rest
                .into_iter()
                .map(|(mut taken, _, _, _, _, side)| {
                    taken.moved = Some(side);
                    taken
                })
                .collect();
            let first = takens.remove(0);
            let failure = configure_failure(&err);
            return Err(failed_device(e, ledger, (failure, first), takens, &pod));
        }
    };
    let move_each = moves_started.elapsed() / n.max(1) as u32;
    let mut moving: Vec<Moving> = Vec::new();
    let mut to_configure = Vec::new();
    let mut rest = rest.into_iter();
    for result in tried {
        let Some((mut taken, cfg, settings, ifname, slot, _)) = rest.next() else {
            break;
        };
        match result {
            Ok(moved) => {
                taken.moved = Some((moved.side, Some(moved.originals)));
                to_configure.push((ifname, settings, moved.rest));
                moving.push(Moving {
                    taken,
                    cfg,
                    slot,
                    move_took: move_each,
                });
            }
            Err(err) => {
                if let Some(left) = left_by(&err) {
                    taken.moved = Some(left);
                }
                let failure = configure_failure(&err);
                // The ones moved before it, then the ones never tried (recorded only).
                let others = moving
                    .into_iter()
                    .map(|m| m.taken)
                    .chain(rest.map(|r| r.0))
                    .collect();
                return Err(failed_device(e, ledger, (failure, taken), others, &pod));
            }
        }
    }
    let mut done: Vec<Handed> = Vec::new();
    // Each device gets its data path while the next one is configured.
    let mut configuring = e.configure_each(&pod, to_configure);
    let mut pending = moving.into_iter();
    while let Some(m) = pending.next() {
        let plan = m.taken.plan.clone();
        let span = tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
        let _entered = span.enter();
        // A lease that does not come in time leaves every moved device to undo.
        let to_undo = done.len() + pending.len();
        let lease_until = match runtime.deadline {
            Some(d) => d.lease_until(to_undo, &ledger.costs()),
            None => Instant::now() + budget::LEASE_WAIT,
        };
        let (slot, move_took) = (m.slot, m.move_took);
        let finish_started = Instant::now();
        let configured = configuring.next().unwrap_or_else(|| {
            Err(ConfigureError::Netns(NetnsError::WorkerGone {
                path: e.pod_path(&pod),
            }))
        });
        match finish_one(e, m, configured, &pod, guard.as_deref(), lease_until) {
            Ok(h) => {
                ledger
                    .costs()
                    .attached((move_took + finish_started.elapsed()).saturating_sub(h.waited));
                tracing::info!(interface = %h.side.name, datapath = h.taken.datapath.is_some(), "device handed to the pod");
                outcomes[slot] = Some(DeviceOutcome {
                    claim: plan.claim.to_string(),
                    pool: plan.pool.clone(),
                    device: plan.device.clone(),
                    action: Action::Attached {
                        pod_ifname: h.side.name.clone(),
                        datapath: h.taken.datapath.is_some(),
                    },
                });
                done.push(h);
            }
            Err(failed) => {
                drop(_entered);
                // Nothing configures any more before the undo starts; a device
                // configured meanwhile is undone with what configuring it added.
                let mut late = configuring.stop().into_iter();
                let others = done
                    .into_iter()
                    .map(|h| h.taken)
                    .chain(pending.map(|m| configured_meanwhile(m.taken, late.next())))
                    .collect();
                return Err(failed_device(e, ledger, *failed, others, &pod));
            }
        }
    }
    drop(configuring);
    let outcomes: Vec<DeviceOutcome> = outcomes.into_iter().flatten().collect();
    // Durable before the hook answers: a driver killed earlier finds only the
    // write-ahead `Entering` records, returns the devices and starts the pod over.
    let record_started = Instant::now();
    let devices_took = record_started - hook_started - before_devices;
    let in_pod: Vec<Placing<'_>> = done
        .iter()
        .map(|h| Placing {
            claim_uid: &h.taken.claim_uid,
            plan: &h.taken.plan,
            placement: Placement::InPod {
                attachment: h.record.clone(),
            },
        })
        .collect();
    if let Err((i, err)) = e.place(in_pod) {
        let failed = &done[i.min(done.len().saturating_sub(1))].taken.plan;
        let (claim, device, pod_name) = (
            failed.claim.to_string(),
            failed.device.clone(),
            failed.pod.to_string(),
        );
        let message = format!("{}: {err}", LifecycleStep::Checkpoint);
        tracing::warn!(claim = %claim, device = %device, "recording the hand-over failed: {err}");
        let done = done.into_iter().map(|h| h.taken).collect();
        let undo = undo(e, ledger, done, &pod, &message);
        return Err(LifecycleError::Device {
            claim,
            device,
            pod: pod_name,
            step: LifecycleStep::Checkpoint,
            message: err.to_string(),
            undo,
        });
    }
    for h in &done {
        e.emit(DeviceEvent::Started {
            device: device_ref(&h.taken.plan),
            pod_netns: runtime.netns.clone(),
            pod_ifname: h.side.name.clone(),
            datapath: h.taken.datapath.clone(),
            dhcp: h.lease.clone(),
        });
    }
    let held_at = Instant::now();
    e.hold(pod_uid, &pod);
    tracing::debug!(
        before_devices_us = before_devices.as_micros() as u64,
        devices_us = devices_took.as_micros() as u64,
        record_and_events_us = (held_at - record_started).as_micros() as u64,
        hold_us = held_at.elapsed().as_micros() as u64,
        "start timing"
    );
    Ok(outcomes)
}

fn pod_action(plans: &[(String, Plan)], event: PodEvent) -> PodAction {
    decide::pod_action(plans.iter().map(|(_, p)| &p.placement), event)
}

/// The failure of a configure step, named by its step and reason.
fn configure_failure(err: &ConfigureError) -> Failure {
    Failure::new(
        LifecycleStep::Configure(err.step()),
        FailedPart::Network,
        configure_reason(err),
        err.detail(),
    )
}

/// Where a failed configure step left the device, when it touched it.
fn left_by(err: &ConfigureError) -> Option<(PodSide, Option<HostOriginals>)> {
    match err {
        ConfigureError::Failed {
            left: Some(left), ..
        } => Some((left.side.clone(), left.originals.clone())),
        _ => None,
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

/// A device moved into the pod in this call and not configured yet.
struct Moving {
    taken: Taken,
    cfg: crate::config::ValidConfig,
    /// Where its outcome goes among the pod's.
    slot: usize,
    /// What moving it took (its share of the device's cost).
    move_took: Duration,
}

/// A moved device's undo state once its configuration (`late`, if it ran) is known.
fn configured_meanwhile(
    mut taken: Taken,
    late: Option<Result<Configured, ConfigureError>>,
) -> Taken {
    match late {
        Some(Ok(c)) => taken.moved = Some((c.pod_side(), Some(c.originals))),
        Some(Err(err)) => {
            if let Some(left) = left_by(&err) {
                taken.moved = Some(left);
            }
        }
        None => {}
    }
    taken
}

/// Reports a device that failed half-way, takes it back, then takes back `others`
/// (every other device this call moved, in the order they moved), and says why.
fn failed_device<E: Effects>(
    e: &E,
    ledger: &Ledger<'_>,
    (f, taken): (Failure, Taken),
    others: Vec<Taken>,
    pod: &E::Pod,
) -> LifecycleError {
    let plan = taken.plan.clone();
    let span =
        tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
    let entered = span.enter();
    tracing::warn!(step = %f.step, reason = f.reason, "handing the device to the pod failed: {}", f.message);
    e.emit(DeviceEvent::Failed {
        device: device_ref(&plan),
        part: f.part,
        reason: f.reason.to_string(),
        message: f.message.clone(),
    });
    // The failed device first (it is the furthest from a clean state), then the
    // others in reverse order.
    let mine = unwind(e, &taken, Some(pod));
    ledger.keep_if_uncleared(&mine, &taken);
    let mut message = f.message;
    if !mine.problems.is_empty() {
        message.push_str(&format!(
            " (and putting it back: {})",
            mine.problems.join("; ")
        ));
    }
    drop(entered);
    let cause = format!("device {} of claim {} failed", plan.device, plan.claim);
    let undo = undo(e, ledger, others, pod, &cause);
    LifecycleError::Device {
        claim: plan.claim.to_string(),
        device: plan.device.clone(),
        pod: plan.pod.to_string(),
        step: f.step,
        message,
        undo,
    }
}

/// A device resolved in this call (its record, what it is to become in the pod, its
/// config), not touched yet.
struct Resolved {
    taken: Taken,
    intent: Intent,
    cfg: crate::config::ValidConfig,
    settings: crate::netns::InterfaceSettings,
    ifname: String,
    slot: usize,
}

/// A resolved device captured at home, not touched yet.
struct Capturing<C> {
    device: Resolved,
    captured: C,
}

impl<C> Capturing<C> {
    /// Where the device would be found in the pod should its move be cut off, and what
    /// a restore puts back.
    fn side_before_move<E: Effects<Captured = C>>(
        &mut self,
        e: &E,
    ) -> (PodSide, Option<HostOriginals>) {
        let originals = e.captured_originals(&mut self.captured).clone();
        let side = PodSide {
            name: self.device.intent.pod_ifname.clone(),
            ifindex: None,
            mac: self.device.intent.pod_mac.or(originals.mac),
        };
        (side, Some(originals))
    }
}

/// Fails a pod start whose devices would not fit in the runtime's hook budget: says
/// so on `plan`'s device, undoes `others` and returns the error.
#[allow(clippy::too_many_arguments)]
fn over_budget<E: Effects>(
    e: &E,
    ledger: &Ledger<'_>,
    deadline: budget::Deadline,
    costs: budget::Costs,
    plan: &Plan,
    others: Vec<Taken>,
    pod: &E::Pod,
) -> LifecycleError {
    let spent = deadline.arrived.elapsed();
    tracing::warn!(budget = ?deadline.budget, ?spent, devices = others.len(), "the hook budget would run out; undoing the pod's devices");
    let message = format!(
        "not handed over: the runtime's hook budget of {:?} would run out",
        deadline.budget
    );
    e.emit(DeviceEvent::Failed {
        device: device_ref(plan),
        part: FailedPart::Network,
        reason: "HookBudget".into(),
        message: message.clone(),
    });
    let problems = undo(e, ledger, others, pod, &message);
    LifecycleError::Budget(Box::new(budget::Exceeded {
        pod: plan.pod.to_string(),
        claim: plan.claim.to_string(),
        device: plan.device.clone(),
        budget: deadline.budget,
        spent,
        done: 0,
        costs,
        problems,
    }))
}

/// Resolves one device: its config, its host interface, the foreign programs the claim
/// wants gone; [`Effects::capture_each`] captures it next. On failure, what failed
/// (nothing was captured or recorded).
fn resolve_one<E: Effects>(
    e: &E,
    claim_uid: &str,
    plan: &Plan,
    pod: &E::Pod,
) -> Result<Resolved, Box<(Failure, Taken)>> {
    let taken = Taken {
        claim_uid: claim_uid.to_string(),
        plan: plan.clone(),
        moved: None,
        datapath: None,
        staged: false,
        lease: false,
        recorded: false,
        record: None,
    };
    macro_rules! fail {
        ($failure:expr) => {
            return Err(Box::new(($failure, taken)))
        };
    }
    let one_started = Instant::now();
    // Validated at prepare; older checkpoints carry only the JSON.
    let cfg = match &plan.valid {
        Some(valid) => valid.clone(),
        None => match crate::config::parse_parameters(&plan.config, "parameters") {
            Ok(cfg) => cfg,
            Err(err) => fail!(Failure::new(
                LifecycleStep::Config,
                FailedPart::Network,
                "InvalidConfig",
                err.to_string()
            )),
        },
    };
    let Some(ifname) = e.resolve(plan) else {
        fail!(Failure::new(
            LifecycleStep::Resolve,
            FailedPart::Network,
            "DeviceNotFound",
            format!(
                "device {} of pool {} is not in the node's inventory",
                plan.device, plan.pool
            ),
        ))
    };
    if cfg.disable_ebpf_programs {
        match e.remove_foreign(&ifname) {
            Ok(removed) => {
                for program in removed {
                    tracing::info!(interface = %ifname, "removed foreign program {program}");
                }
            }
            Err(message) => fail!(Failure::new(
                LifecycleStep::ForeignPrograms,
                FailedPart::Network,
                "ForeignProgramsNotRemoved",
                message
            )),
        }
    }
    tracing::debug!(
        config_and_resolve_us = one_started.elapsed().as_micros() as u64,
        "device resolved"
    );
    let settings = settings::interface_settings(&cfg);
    let intent = Intent {
        pod_netns: e.pod_path(pod),
        pod_ifname: settings.name.clone().unwrap_or_else(|| ifname.clone()),
        pod_mac: settings.mac,
        datapath: e.dataplane(),
    };
    Ok(Resolved {
        taken,
        intent,
        cfg,
        settings,
        ifname,
        slot: 0,
    })
}

/// Configures a moved device in the pod, gives it its data path and, if it asks, its
/// DHCP lease. On failure, what failed and how far it got (for [`unwind`]).
fn finish_one<E: Effects>(
    e: &E,
    m: Moving,
    configured: Result<Configured, ConfigureError>,
    pod: &E::Pod,
    guard: Option<&Path>,
    lease_until: Instant,
) -> Result<Handed, Box<(Failure, Taken)>> {
    let Moving { mut taken, cfg, .. } = m;
    macro_rules! fail {
        ($failure:expr) => {
            return Err(Box::new(($failure, taken)))
        };
    }
    let plan = taken.plan.clone();
    let dataplane = e.dataplane();
    let configured = match configured {
        Ok(c) => c,
        Err(err) => {
            // Still in the pod (where the move left it) unless `left` says better.
            if let Some(left) = left_by(&err) {
                taken.moved = Some(left);
            }
            fail!(configure_failure(&err))
        }
    };
    let side = configured.pod_side();
    taken.moved = Some((side.clone(), Some(configured.originals.clone())));
    let configured_at = Instant::now();

    let mut base_policy = None;
    if dataplane {
        let policy = settings::datapath_policy(&cfg, &configured);
        let key = match datapath_key(&plan) {
            Ok(key) => key,
            Err(err) => fail!(Failure::new(
                LifecycleStep::Datapath,
                FailedPart::DataPath,
                "DataPathAttachFailed",
                err.to_string()
            )),
        };
        // Pinned in part even when attaching fails: the undo removes what is there.
        taken.datapath = Some(key.clone());
        // Staged at prepare: the links came with the device; only the policy and the
        // guard are left (no attach, no RTNL). Otherwise attach now.
        taken.staged =
            plan.staged && e.take_staged(&key, pod, configured.ifindex_in_pod, &policy, guard);
        if !taken.staged {
            if let Err(err) = e.attach(&key, pod, &configured.pod_ifname, &policy, guard) {
                fail!(Failure::new(
                    LifecycleStep::Datapath,
                    FailedPart::DataPath,
                    "DataPathAttachFailed",
                    err.to_string()
                ))
            }
        }
        base_policy = Some(policy);
    }

    let mut lease = None;
    let mut waited = Duration::ZERO;
    if cfg.interface.dhcp {
        let asked = Instant::now();
        let acquired = e.acquire_lease(
            &taken.claim_uid,
            &plan,
            pod,
            &side,
            taken.datapath.as_ref().zip(base_policy.clone()),
            lease_until,
        );
        waited = asked.elapsed();
        match acquired {
            Ok(l) => {
                taken.lease = true;
                lease = Some(l);
            }
            Err(failure) => fail!(failure),
        }
    }

    let record = Attachment {
        pod_netns: e.pod_path(pod),
        pod_ifname: side.name.clone(),
        pod_ifindex: side.ifindex,
        pod_mac: side.mac,
        originals: configured.originals.clone(),
        datapath: taken.datapath.is_some(),
        attached_at: crate::unix_now(),
        dhcp: lease.clone().map(|l| {
            // A renewal may already have come: record the newest.
            let newest = e.current_lease(&taken.claim_uid, &plan).unwrap_or(l);
            super::leases::new_record(newest, base_policy.clone())
        }),
    };
    taken.record = Some(record.clone());
    tracing::debug!(
        after_configure_us = configured_at.elapsed().as_micros() as u64,
        "data path attached (and lease, if any)"
    );
    Ok(Handed {
        taken,
        side,
        lease,
        record,
        waited,
    })
}

/// Takes back the devices moved in this call when a later one failed (the last moved
/// first).
fn undo<E: Effects>(
    e: &E,
    ledger: &Ledger<'_>,
    done: Vec<Taken>,
    pod: &E::Pod,
    cause: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for taken in done.into_iter().rev() {
        let plan = &taken.plan;
        let span = tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
        let _entered = span.enter();
        let undo_started = Instant::now();
        let mine = unwind(e, &taken, Some(pod));
        ledger.costs().undone(undo_started.elapsed());
        ledger.keep_if_uncleared(&mine, &taken);
        if mine.problems.is_empty() {
            tracing::info!("device returned because {cause}");
        }
        e.emit(DeviceEvent::Failed {
            device: device_ref(plan),
            part: FailedPart::Sibling,
            reason: "PodStartFailed".into(),
            message: format!("returned to the host because {cause}"),
        });
        problems.extend(
            mine.problems
                .into_iter()
                .map(|p| format!("claim {}, device {}: {p}", plan.claim, plan.device)),
        );
    }
    problems
}

/// What to do with a pod found in the checkpoint when the driver starts.
pub fn adopt_action(plans: &[(String, Plan)], alive: bool) -> PodAction {
    pod_action(plans, PodEvent::Adopting { alive })
}

/// Whether synchronize must give back the pod's devices (it no longer runs) or start
/// it (it runs without all of them).
pub fn sync_action(plans: &[(String, Plan)], live: bool) -> PodAction {
    pod_action(
        plans,
        if live {
            PodEvent::Starting
        } else {
            PodEvent::Ended
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved_taken() -> (Taken, PodSide, HostOriginals) {
        let originals = Attachment::for_tests("/run/netns/pod").originals;
        let side = PodSide {
            name: "net2".into(),
            ifindex: None,
            mac: None,
        };
        let taken = Taken {
            claim_uid: "uid".into(),
            plan: Plan::default(),
            moved: Some((side.clone(), Some(originals.clone()))),
            datapath: None,
            staged: false,
            lease: false,
            recorded: true,
            record: None,
        };
        (taken, side, originals)
    }

    #[test]
    fn a_device_configured_meanwhile_is_undone_with_what_configuring_it_added() {
        let (taken, _, originals) = moved_taken();
        let mut added = originals.clone();
        added.pod_vrf = Some("blue".into());
        let configured = Configured {
            pod_ifname: "net2".into(),
            ifindex_in_pod: 9,
            mac: Some([2, 0, 0, 0, 0, 2]),
            addresses: Vec::new(),
            link_local: Vec::new(),
            originals: added.clone(),
            link_requests: 1,
        };
        let taken = configured_meanwhile(taken, Some(Ok(configured)));
        let (side, kept) = taken.moved.expect("still moved");
        assert_eq!(side.ifindex, Some(9), "found by the index configuring read");
        assert_eq!(
            kept,
            Some(added),
            "the VRF it created is removed by the undo"
        );
    }

    #[test]
    fn a_device_not_configured_keeps_what_its_move_said() {
        let (taken, side, originals) = moved_taken();
        let taken = configured_meanwhile(taken, None);
        assert_eq!(taken.moved, Some((side.clone(), Some(originals.clone()))));
        // A failure that says nothing of where it left the device changes nothing.
        let gone = ConfigureError::Netns(NetnsError::WorkerGone {
            path: "/run/netns/pod".into(),
        });
        let taken = configured_meanwhile(taken, Some(Err(gone)));
        assert_eq!(taken.moved, Some((side, Some(originals))));
    }
}
