//! A fake world for the lifecycle's unit tests: devices that are home or in a pod
//! (name, MTU), pinned and enforcing data paths, a checkpoint, held namespaces. Every
//! effect is one or more numbered calls; a test makes call N fail (the effect returns
//! an error and changes nothing) or "crash" (call N and every later one change
//! nothing, as if the process died there). Then it restarts the way the daemon does
//! (adopt, then what the runtime repeats) and checks the world, not the records:
//! every device is home exactly as it was, or in its live pod configured and enforced,
//! and the checkpoint says which.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::effects::{Effects, Moved, MovesTried, Placing};
use super::handover::{self, Ledger};
use super::{budget, decide::PodAction, Failure, LifecycleError, LifecycleStep, PodRuntime};
use crate::datapath::{DatapathError, DatapathKey, DatapathPolicy};
use crate::netns::configure::StepError;
use crate::netns::{
    ConfigureError, Configured, HostOriginals, InterfaceSettings, Left, NetnsError, PodSide,
    RestoreError, RestoreOutcome, Step,
};
use crate::state::{Attachment, ClaimPlans, ClaimRecord, Placement, Plan, PodRecord, StateError};
use crate::status::{DeviceEvent, FailedPart};

const HOST_MTU: u32 = 1500;
const POD_MTU: u32 = 9000;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Device {
    /// `None`: home.
    pod: Option<String>,
    name: String,
    mtu: u32,
}

#[derive(Default)]
struct World {
    devices: BTreeMap<String, Device>,
    checkpoint: BTreeMap<String, ClaimPlans>,
    pinned: BTreeSet<String>,
    enforcing: BTreeSet<String>,
    /// Namespaces that exist.
    pods: BTreeSet<String>,
    held: BTreeSet<String>,
    calls: usize,
    fail_at: Option<usize>,
    crash_at: Option<usize>,
    crashed: bool,
}

/// A device's host state as the fake world has it before any move.
pub(super) fn originals(name: &str) -> HostOriginals {
    HostOriginals {
        name: name.to_string(),
        ifindex: 10,
        kind: None,
        mtu: HOST_MTU,
        mac: Some([2, 0, 0, 0, 0, 1]),
        perm_mac: None,
        up: true,
        addresses: Vec::new(),
        routes: Vec::new(),
        gso_max_size: None,
        gro_max_size: None,
        gso_ipv4_max_size: None,
        gro_ipv4_max_size: None,
        ethtool_features: Default::default(),
        ethtool_changeable: Default::default(),
        private_flags: Default::default(),
        sysctls: None,
        pod_rules: Vec::new(),
        pod_vrf: None,
    }
}

#[derive(Debug)]
struct Injected;

/// A configure step's injected failure on `ifname`, leaving it where `left` says.
fn injected(ifname: &str, step: Step, left: Option<Box<Left>>) -> ConfigureError {
    ConfigureError::Failed {
        device: ifname.to_string(),
        step,
        field: "interface".into(),
        source: StepError::Invalid("injected".into()),
        rollback: None,
        left,
    }
}

struct Fake {
    world: RefCell<World>,
}

impl Fake {
    /// One device of [`Effects::configure_each`].
    fn configure_one(
        &self,
        ifname: &str,
        (side, originals): (PodSide, HostOriginals),
    ) -> Result<Configured, ConfigureError> {
        self.tick().map_err(|_| {
            injected(
                ifname,
                Step::LinkSettings,
                Some(Box::new(Left {
                    side: side.clone(),
                    originals: Some(originals.clone()),
                })),
            )
        })?;
        self.world
            .borrow_mut()
            .devices
            .get_mut(ifname)
            .expect("moved by move_in")
            .mtu = POD_MTU;
        Ok(Configured {
            pod_ifname: side.name,
            ifindex_in_pod: 3,
            mac: side.mac,
            addresses: Vec::new(),
            link_local: Vec::new(),
            originals,
            link_requests: 1,
        })
    }

    /// One device's capture (a fault may be injected at it).
    fn capture_one(
        &self,
        ifname: &str,
        settings: &InterfaceSettings,
    ) -> Result<(String, String, HostOriginals), ConfigureError> {
        self.tick()
            .map_err(|_| injected(ifname, Step::Capture, None))?;
        let home = self.world.borrow().devices.get(ifname).cloned();
        match home {
            Some(d) if d.pod.is_none() => {}
            _ => {
                return Err(ConfigureError::NotFound {
                    device: ifname.into(),
                    netns: "node".into(),
                })
            }
        }
        let pod_ifname = settings.name.clone().unwrap_or_else(|| ifname.to_string());
        Ok((ifname.to_string(), pod_ifname, originals(ifname)))
    }

    /// One numbered call: `Err` when it is the failing one or the process "died".
    fn tick(&self) -> Result<(), Injected> {
        let mut w = self.world.borrow_mut();
        w.calls += 1;
        if w.crashed {
            return Err(Injected);
        }
        if w.crash_at == Some(w.calls) {
            w.crashed = true;
            return Err(Injected);
        }
        if w.fail_at == Some(w.calls) {
            return Err(Injected);
        }
        Ok(())
    }

    fn store_err() -> StateError {
        StateError::Closed {
            path: PathBuf::from("/fake/checkpoint.redb"),
            message: "injected I/O error".into(),
        }
    }

    fn dp_err(key: &DatapathKey) -> DatapathError {
        DatapathError::Attach {
            key: key.to_string(),
            direction: "ingress",
            interface: "fake".into(),
            detail: "injected".into(),
        }
    }

    fn write(&self, entries: Vec<Placing<'_>>) -> Result<(), (usize, StateError)> {
        let mut w = self.world.borrow_mut();
        for (i, e) in entries.into_iter().enumerate() {
            let Some(claim) = w.checkpoint.get_mut(e.claim_uid) else {
                return Err((
                    i,
                    StateError::Unprepared {
                        uid: e.claim_uid.into(),
                    },
                ));
            };
            let Some(p) = claim
                .plans
                .iter_mut()
                .find(|p| p.device == e.plan.device && p.pool == e.plan.pool)
            else {
                return Err((
                    i,
                    StateError::Unprepared {
                        uid: e.claim_uid.into(),
                    },
                ));
            };
            p.placement = e.placement;
        }
        Ok(())
    }
}

impl Effects for Fake {
    type Pod = String;
    type Captured = (String, String, HostOriginals);
    type Moved = (PodSide, HostOriginals);

    fn plans_of(&self, pod_uid: &str) -> Result<Vec<(String, Plan)>, StateError> {
        self.tick().map_err(|_| Self::store_err())?;
        let w = self.world.borrow();
        Ok(w.checkpoint
            .iter()
            .flat_map(|(uid, c)| {
                c.plans
                    .iter()
                    .filter(|p| p.pod.uid == pod_uid)
                    .map(|p| (uid.clone(), p.clone()))
            })
            .collect())
    }

    fn place(&self, entries: Vec<Placing<'_>>) -> Result<(), (usize, StateError)> {
        self.tick().map_err(|_| (0, Self::store_err()))?;
        self.write(entries)
    }

    fn resolve(&self, plan: &Plan) -> Option<String> {
        Some(format!("eth-{}", plan.device))
    }

    fn remove_foreign(&self, _ifname: &str) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    fn capture_each(
        &self,
        wanted: Vec<(String, InterfaceSettings)>,
    ) -> Vec<Result<(String, String, HostOriginals), ConfigureError>> {
        let mut tried = Vec::with_capacity(wanted.len());
        for (ifname, settings) in wanted {
            let captured = self.capture_one(&ifname, &settings);
            let failed = captured.is_err();
            tried.push(captured);
            if failed {
                break;
            }
        }
        tried
    }

    fn captured_originals<'c>(
        &self,
        captured: &'c mut (String, String, HostOriginals),
    ) -> &'c mut HostOriginals {
        &mut captured.2
    }

    fn move_all(
        &self,
        pod: &String,
        devices: Vec<(String, String, HostOriginals)>,
    ) -> Result<MovesTried<(PodSide, HostOriginals)>, ConfigureError> {
        let mut tried = Vec::new();
        for (ifname, pod_ifname, originals) in devices {
            // Move (and rename) in one message.
            let moved = self
                .tick()
                .ok()
                .filter(|_| self.world.borrow().pods.contains(pod));
            if moved.is_none() {
                tried.push(Err(injected(&ifname, Step::Move, None)));
                break;
            }
            {
                let mut w = self.world.borrow_mut();
                let d = w.devices.get_mut(&ifname).expect("captured at home");
                d.pod = Some(pod.clone());
                d.name = pod_ifname.clone();
            }
            let side = PodSide {
                name: pod_ifname,
                ifindex: Some(3),
                mac: originals.mac,
            };
            tried.push(Ok(Moved {
                side: side.clone(),
                originals: originals.clone(),
                rest: (side, originals),
            }));
        }
        Ok(tried)
    }

    fn configure_each<'a>(
        &'a self,
        _pod: &'a String,
        devices: Vec<(String, InterfaceSettings, (PodSide, HostOriginals))>,
    ) -> super::effects::Configuring<'a> {
        // One at a time as the caller asks, as the kernel's worker hands them over (so
        // a fault injected at the nth effect hits the same step either way).
        let mut failed = false;
        Box::new(super::effects::OnAsk(devices.into_iter().map_while(
            move |(ifname, _, moved)| {
                if failed {
                    return None;
                }
                let result = self.configure_one(&ifname, moved);
                failed = result.is_err();
                Some(result)
            },
        )))
    }

    fn attach(
        &self,
        key: &DatapathKey,
        _pod: &String,
        _pod_ifname: &str,
        _policy: &DatapathPolicy,
        _guard: Option<&Path>,
    ) -> Result<(), DatapathError> {
        // Pinned first, then attached: a failure between leaves pins behind.
        self.tick().map_err(|_| Self::dp_err(key))?;
        self.world.borrow_mut().pinned.insert(key.to_string());
        self.tick().map_err(|_| Self::dp_err(key))?;
        self.world.borrow_mut().enforcing.insert(key.to_string());
        Ok(())
    }

    fn take_staged(
        &self,
        key: &DatapathKey,
        _pod: &String,
        _ifindex: u32,
        _policy: &DatapathPolicy,
        _guard: Option<&Path>,
    ) -> bool {
        // A failure here is "not usable": the caller attaches a fresh one.
        if self.tick().is_err() {
            return false;
        }
        let mut w = self.world.borrow_mut();
        let key = key.to_string();
        if !w.pinned.contains(&key) {
            return false;
        }
        w.enforcing.insert(key);
        true
    }

    fn acquire_lease(
        &self,
        _claim_uid: &str,
        _plan: &Plan,
        _pod: &String,
        _side: &PodSide,
        _datapath: Option<(&DatapathKey, DatapathPolicy)>,
        _until: Instant,
    ) -> Result<crate::dhcp::Lease, Failure> {
        Err(Failure::new(
            LifecycleStep::Dhcp,
            FailedPart::Network,
            "DhcpLeaseFailed",
            "no DHCP in the fake",
        ))
    }

    fn current_lease(&self, _claim_uid: &str, _plan: &Plan) -> Option<crate::dhcp::Lease> {
        None
    }

    fn release_lease(&self, _: &str, _: &Plan, _: Option<&Attachment>, _: Option<&String>) {}

    fn stand_down(&self, key: &DatapathKey) -> Result<(), DatapathError> {
        self.tick().map_err(|_| Self::dp_err(key))?;
        let mut w = self.world.borrow_mut();
        if !w.pinned.contains(&key.to_string()) {
            return Err(DatapathError::NotPinned {
                key: key.to_string(),
                path: PathBuf::from("/fake"),
            });
        }
        w.enforcing.remove(&key.to_string());
        Ok(())
    }

    fn detach(&self, key: &DatapathKey, _pod: Option<&String>) -> Result<(), DatapathError> {
        self.tick().map_err(|_| Self::dp_err(key))?;
        let mut w = self.world.borrow_mut();
        w.pinned.remove(&key.to_string());
        w.enforcing.remove(&key.to_string());
        Ok(())
    }

    fn restore(
        &self,
        _pod: Option<&String>,
        side: &PodSide,
        originals: &HostOriginals,
    ) -> Result<RestoreOutcome, RestoreError> {
        let lost = || RestoreError::Lost {
            device: originals.name.clone(),
        };
        // Move home, then settings: a failure between leaves it home, unrestored.
        self.tick().map_err(|_| lost())?;
        {
            let mut w = self.world.borrow_mut();
            let d = w.devices.get_mut(&originals.name).ok_or_else(lost)?;
            if d.pod.is_some() && d.name != side.name {
                return Err(lost());
            }
            d.pod = None;
        }
        self.tick().map_err(|_| lost())?;
        let mut w = self.world.borrow_mut();
        let d = w.devices.get_mut(&originals.name).ok_or_else(lost)?;
        d.name = originals.name.clone();
        d.mtu = originals.mtu;
        Ok(RestoreOutcome::Restored {
            ifindex: originals.ifindex,
        })
    }

    fn pod_path(&self, pod: &String) -> PathBuf {
        PathBuf::from(format!("/run/netns/{pod}"))
    }

    fn open_pod(&self, path: &Path) -> Result<String, NetnsError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.world.borrow().pods.contains(&name) {
            Ok(name)
        } else {
            Err(NetnsError::Open {
                path: path.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            })
        }
    }

    fn find_pod(&self, _pod_uid: &str, recorded: &Path) -> Option<String> {
        self.open_pod(recorded).ok()
    }

    fn hold(&self, pod_uid: &str, _pod: &String) {
        self.world.borrow_mut().held.insert(pod_uid.to_string());
    }

    fn let_go(&self, pod_uid: &str) {
        self.world.borrow_mut().held.remove(pod_uid);
    }

    fn socket_guard(
        &self,
        _pod_label: &str,
        _runtime: &PodRuntime,
    ) -> Result<Option<PathBuf>, LifecycleError> {
        Ok(None)
    }

    fn emit(&self, _event: DeviceEvent) {}

    fn dataplane(&self) -> bool {
        true
    }
}

const POD: &str = "pod-a";
const POD_UID: &str = "uid-pod-a";
const DEVICES: [&str; 2] = ["nic1", "nic2"];

/// A node with two NICs at home, prepared for one pod (one claim, both devices).
fn world() -> Fake {
    let mut w = World::default();
    let claim = ClaimRecord {
        namespace: "ns".into(),
        name: "claim-a".into(),
        uid: "uid-claim-a".into(),
    };
    let plans = DEVICES
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut valid = crate::config::ValidConfig::default();
            valid.interface.name = Some(format!("net{}", i + 1));
            valid.interface.mtu = Some(POD_MTU);
            Plan {
                claim: claim.clone(),
                pod: PodRecord {
                    namespace: "ns".into(),
                    name: POD.into(),
                    uid: POD_UID.into(),
                },
                device: d.to_string(),
                pool: "node".into(),
                requests: vec![format!("r{i}")],
                valid: Some(valid),
                ..Default::default()
            }
        })
        .collect();
    w.checkpoint.insert(
        claim.uid.clone(),
        ClaimPlans {
            claim: claim.clone(),
            plans,
        },
    );
    for d in DEVICES {
        let name = format!("eth-{d}");
        w.devices.insert(
            name.clone(),
            Device {
                pod: None,
                name,
                mtu: HOST_MTU,
            },
        );
    }
    w.pods.insert(POD.into());
    Fake {
        world: RefCell::new(w),
    }
}

fn runtime() -> PodRuntime {
    PodRuntime::netns(format!("/run/netns/{POD}"))
}

fn start(f: &Fake) -> Result<Vec<super::DeviceOutcome>, LifecycleError> {
    let costs = std::sync::Mutex::new(budget::Costs::default());
    let stale = std::sync::Mutex::new(Vec::new());
    let ledger = Ledger {
        costs: &costs,
        stale: &stale,
    };
    handover::start(f, &ledger, POD_UID, POD, &runtime())
}

/// What the daemon does at start ([`super::Pods::adopt`]), on the fake.
fn adopt(f: &Fake) {
    let plans = f.plans_of(POD_UID).expect("plans");
    let alive = f.world.borrow().pods.contains(POD);
    match handover::adopt_action(&plans, alive) {
        PodAction::GiveBack => {
            handover::give_back(f, POD_UID).expect("give back at adopt");
        }
        PodAction::Hold => f.hold(POD_UID, &POD.to_string()),
        _ => {}
    }
}

/// A new process on the same world: no faults, nothing held.
fn restart(f: &Fake) {
    let mut w = f.world.borrow_mut();
    w.crashed = false;
    w.crash_at = None;
    w.fail_at = None;
    w.held.clear();
}

/// Every device home exactly as it was, no data path left, every record `Home`.
fn assert_all_home(f: &Fake, what: &str) {
    let w = f.world.borrow();
    for d in DEVICES {
        let name = format!("eth-{d}");
        assert_eq!(
            w.devices[&name],
            Device {
                pod: None,
                name: name.clone(),
                mtu: HOST_MTU
            },
            "{what}: {name}"
        );
    }
    assert!(w.pinned.is_empty(), "{what}: pins left: {:?}", w.pinned);
    assert!(w.enforcing.is_empty(), "{what}: programs left");
    for c in w.checkpoint.values() {
        for p in &c.plans {
            assert_eq!(
                p.placement,
                Placement::Home,
                "{what}: record of {}",
                p.device
            );
        }
    }
}

/// Every device in the pod configured and enforcing, every record `InPod`.
fn assert_all_in_pod(f: &Fake, what: &str) {
    let w = f.world.borrow();
    for (i, d) in DEVICES.iter().enumerate() {
        let dev = &w.devices[&format!("eth-{d}")];
        assert_eq!(
            dev,
            &Device {
                pod: Some(POD.into()),
                name: format!("net{}", i + 1),
                mtu: POD_MTU
            },
            "{what}: {d}"
        );
        let key = DatapathKey::new("ns".to_string(), "claim-a".to_string(), d.to_string())
            .expect("key")
            .to_string();
        assert!(
            w.pinned.contains(&key) && w.enforcing.contains(&key),
            "{what}: {d} not enforced"
        );
    }
    for c in w.checkpoint.values() {
        for p in &c.plans {
            assert!(
                p.in_pod(),
                "{what}: record of {} is {}",
                p.device,
                p.placement.phase()
            );
        }
    }
    assert!(w.held.contains(POD_UID), "{what}: namespace not held");
}

/// How many calls a clean run of `op` makes.
fn calls_of(op: impl Fn(&Fake)) -> usize {
    let f = world();
    op(&f);
    let calls = f.world.borrow().calls;
    calls
}

fn started() -> Fake {
    let f = world();
    start(&f).expect("clean start");
    assert_all_in_pod(&f, "clean start");
    f
}

#[test]
fn a_clean_start_and_stop_go_all_the_way_and_back() {
    let f = started();
    handover::give_back(&f, POD_UID).expect("stop");
    assert_all_home(&f, "after stop");
    assert!(f.world.borrow().held.is_empty());
}

#[test]
fn any_failing_call_of_a_start_is_undone_and_named() {
    let n = calls_of(|f| {
        start(f).expect("start");
    });
    assert!(n >= 12, "a start of two devices makes {n} calls");
    for k in 1..=n {
        let f = world();
        f.world.borrow_mut().fail_at = Some(k);
        let err = start(&f).expect_err("a call failed");
        let text = err.to_string();
        assert!(text.contains("pod"), "call {k}: {text}");
        // Undoing made no failing call (only call k failed): nothing is left.
        assert_all_home(&f, &format!("start failing at call {k}: {text}"));
    }
}

#[test]
fn a_crash_anywhere_in_a_start_is_finished_by_the_restart() {
    let n = calls_of(|f| {
        start(f).expect("start");
    });
    for k in 1..=n {
        for pod_lives in [true, false] {
            let f = world();
            f.world.borrow_mut().crash_at = Some(k);
            let _ = start(&f);
            restart(&f);
            if !pod_lives {
                f.world.borrow_mut().pods.remove(POD);
            }
            adopt(&f);
            if pod_lives {
                // The runtime saw the hook fail or succeed; synchronize (or the
                // runtime's retry) starts the pod again, which is idempotent.
                start(&f).expect("start after restart");
                assert_all_in_pod(&f, &format!("crash at call {k} of a start"));
            } else {
                // The pod's namespace is gone: its devices come home (the fake
                // keeps a device that was in it, as a physical NIC falls back).
                assert_all_home(&f, &format!("crash at call {k} of a start, pod gone"));
            }
        }
    }
}

#[test]
fn a_crash_anywhere_in_a_stop_is_finished_by_the_restart() {
    let n = {
        let f = started();
        let before = f.world.borrow().calls;
        handover::give_back(&f, POD_UID).expect("stop");
        let after = f.world.borrow().calls;
        after - before
    };
    assert!(n >= 8, "a stop of two devices makes {n} calls");
    for k in 1..=n {
        let f = started();
        let base = f.world.borrow().calls;
        f.world.borrow_mut().crash_at = Some(base + k);
        let _ = handover::give_back(&f, POD_UID);
        restart(&f);
        adopt(&f);
        // Whatever the restart left in the pod, the runtime's repeated stop (or the
        // reaper once the namespace is removed) brings home.
        handover::give_back(&f, POD_UID).expect("stop after restart");
        assert_all_home(&f, &format!("crash at call {k} of a stop"));
    }
}

#[test]
fn a_stop_cut_off_in_a_live_pod_is_finished_at_adopt_not_held() {
    let f = started();
    let base = f.world.borrow().calls;
    // The Leaving records are the first write; crash right after them.
    f.world.borrow_mut().crash_at = Some(base + 3);
    let _ = handover::give_back(&f, POD_UID);
    restart(&f);
    let plans = f.plans_of(POD_UID).expect("plans");
    assert!(plans
        .iter()
        .all(|(_, p)| matches!(p.placement, Placement::Leaving { .. })));
    adopt(&f);
    assert_all_home(&f, "adopt after a cut-off stop");
}

#[test]
fn any_failing_call_of_a_stop_is_reported_and_the_retry_finishes() {
    let n = {
        let f = started();
        let before = f.world.borrow().calls;
        handover::give_back(&f, POD_UID).expect("stop");
        let after = f.world.borrow().calls;
        after - before
    };
    for k in 1..=n {
        let f = started();
        let base = f.world.borrow().calls;
        f.world.borrow_mut().fail_at = Some(base + k);
        if handover::give_back(&f, POD_UID).is_ok() {
            // Only a failure that changed nothing can be absorbed (a stand-down
            // failure falls back to detaching first).
            assert_all_home(&f, &format!("stop with call {k} failing"));
            continue;
        }
        // Not all home: the record says so, and the namespace stays held.
        let w = f.world.borrow();
        let pending = w
            .checkpoint
            .values()
            .flat_map(|c| &c.plans)
            .filter(|p| p.placement != Placement::Home)
            .count();
        assert!(pending > 0, "a failed stop left no record (call {k})");
        drop(w);
        restart(&f);
        handover::give_back(&f, POD_UID).expect("the retried stop");
        assert_all_home(&f, &format!("stop retried after call {k} failed"));
    }
}

#[test]
fn a_failed_start_names_the_device_the_step_and_the_cause() {
    let f = world();
    // Call 5 is the first device's move (plans, two captures, both intents, move).
    f.world.borrow_mut().fail_at = Some(5);
    let err = start(&f).expect_err("move fails");
    let text = err.to_string();
    assert!(
        text.contains("claim ns/claim-a, device nic1, pod ns/pod-a"),
        "{text}"
    );
    assert!(text.contains("configuring: moving"), "{text}");
    assert_all_home(&f, "move failed");
}

/// The world after prepare staged both data paths: pinned, counting only.
fn staged_world() -> Fake {
    let f = world();
    {
        let mut w = f.world.borrow_mut();
        for c in w.checkpoint.values_mut() {
            for p in &mut c.plans {
                p.staged = true;
            }
        }
        for d in DEVICES {
            let key = DatapathKey::new("ns".to_string(), "claim-a".to_string(), d.to_string())
                .expect("key");
            w.pinned.insert(key.to_string());
        }
    }
    f
}

/// Home as it was, with the staged data paths still pinned and only counting.
fn assert_home_staged(f: &Fake, what: &str) {
    {
        let mut w = f.world.borrow_mut();
        assert_eq!(
            w.pinned.len(),
            DEVICES.len(),
            "{what}: staged pins {:?}",
            w.pinned
        );
        assert!(w.enforcing.is_empty(), "{what}: still enforcing at home");
        // What is left to check is what a world without staging must show.
        w.pinned.clear();
    }
    assert_all_home(f, what);
}

#[test]
fn a_staged_data_path_is_taken_over_in_the_pod_and_stays_when_the_device_goes_home() {
    let f = staged_world();
    start(&f).expect("start");
    assert_all_in_pod(&f, "staged start");
    handover::give_back(&f, POD_UID).expect("stop");
    assert_home_staged(&f, "staged stop");
}

#[test]
fn any_failing_call_of_a_staged_start_goes_back_to_the_staged_state() {
    let n = {
        let f = staged_world();
        start(&f).expect("start");
        let calls = f.world.borrow().calls;
        calls
    };
    for k in 1..=n {
        let f = staged_world();
        f.world.borrow_mut().fail_at = Some(k);
        match start(&f) {
            Err(err) => assert_home_staged(&f, &format!("staged start failing at call {k}: {err}")),
            // A failing take-over falls back to a fresh attach: the pod starts.
            Ok(_) => assert_all_in_pod(&f, &format!("staged start, call {k} failed")),
        }
    }
}

#[test]
fn a_start_into_another_namespace_takes_the_devices_from_the_first_one() {
    // The devices went to one namespace (a hand-over started for a namespace the
    // runtime does not use for the pod, or an earlier sandbox); the pod's start names
    // another. They must end up there, not stay behind as "already in the pod".
    let f = started();
    let second = "pod-b".to_string();
    f.world.borrow_mut().pods.insert(second.clone());
    let costs = std::sync::Mutex::new(budget::Costs::default());
    let stale = std::sync::Mutex::new(Vec::new());
    let ledger = Ledger {
        costs: &costs,
        stale: &stale,
    };
    let outcomes = handover::start(
        &f,
        &ledger,
        POD_UID,
        POD,
        &PodRuntime::netns(format!("/run/netns/{second}")),
    )
    .expect("start into the second namespace");
    assert_eq!(outcomes.len(), DEVICES.len());
    let w = f.world.borrow();
    for d in DEVICES {
        assert_eq!(
            w.devices[&format!("eth-{d}")].pod.as_deref(),
            Some(second.as_str()),
            "{d} stayed in the first namespace"
        );
    }
    for c in w.checkpoint.values() {
        for p in &c.plans {
            let Placement::InPod { attachment } = &p.placement else {
                panic!("record of {} is {}", p.device, p.placement.phase());
            };
            assert_eq!(attachment.pod_netns, Path::new("/run/netns/pod-b"));
        }
    }
}
