//! Hand-overs started ahead of RunPodSandbox, when the runtime's CNI ADD says the pod's
//! network namespace exists ([`crate::cni`]).
//!
//! containerd calls NRI's RunPodSandbox last, after the pod's network is set up and its
//! pause container started (30-40 ms on the test machines), so a hand-over done in the
//! hook adds its whole namespace move to every pod start. netclaim's CNI plugin, chained
//! after the pod's network, tells the driver as soon as the namespace exists; the
//! hand-over then runs while containerd starts the pause container, and the hook only
//! collects its result.
//!
//! The order is kept by the pod's turn: the ahead start takes it before the plugin is
//! answered, so the hook (which always comes after the CNI ADD) waits for it and then
//! finds its result here. A result is taken once, and only by a hook for the same
//! namespace; an ahead start whose pod never reaches the hook (the runtime failed the
//! start after the CNI ADD) is undone by the CNI DEL that follows, or by the keeper
//! when the runtime removes the namespace. Until its hook comes, the pod is not in a
//! runtime's Synchronize (containerd lists a sandbox once it is created), so a
//! Synchronize leaves a pod with a result waiting ([`Finished::pending`]). Every
//! give-back drops the pod's result first (`Pods::give_back_now`), so a result the hook
//! still finds describes devices that are where the ahead start left them; without one
//! the hook hands them over again.
//!
//! Here: the decisions ([`ahead_decision`], [`del_decision`]), the results kept for the
//! hook ([`Finished`]), and the lifecycle's two entry points for the CNI socket
//! ([`Pods::start_pod_ahead`], [`Pods::end_in_netns`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{DeviceOutcome, LifecycleError, PodRuntime, Pods};
use crate::state::Plan;

/// The budget of an ahead start until the runtime announced its own (NRI Configure):
/// containerd's default request timeout. The hook that collects the result runs
/// under the runtime's budget, so an ahead start keeps to it from the CNI ADD on.
pub const AHEAD_BUDGET: Duration = Duration::from_secs(2);

/// What the driver did with a CNI ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AheadStart {
    /// The hand-over of this many devices runs now; the hook collects it.
    Started { devices: usize },
    /// No device of this pod is waiting to be handed over.
    Nothing,
    /// Not started ahead (why); the hook does the whole hand-over as without the plugin.
    Declined(String),
}

/// Whether a pod's devices can be handed over ahead of the hook into `netns`. A device
/// recorded in another pod namespace (an earlier sandbox) is waiting too: the start
/// gives it back first.
pub fn ahead_decision(
    plans: &[(String, Plan)],
    netns: &Path,
    dataplane: bool,
    cgroup: Option<&str>,
) -> AheadStart {
    let waiting = plans
        .iter()
        .filter(|(_, p)| !super::decide::in_pod_at(&p.placement, netns))
        .count();
    if waiting == 0 {
        return AheadStart::Nothing;
    }
    // The socket guard goes on the pod's cgroup; without it the hook, which knows the
    // cgroup from NRI, must do the hand-over.
    if dataplane && cgroup.is_none_or(str::is_empty) {
        return AheadStart::Declined(
            "the CNI call carries no runtimeConfig.cgroupPath (add \"capabilities\": {\"cgroupPath\": true} to the netclaim entry of the CNI configuration)"
                .into(),
        );
    }
    AheadStart::Started { devices: waiting }
}

/// What a CNI DEL does for a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelAction {
    /// Nothing of this pod is in that namespace, or a stop already gives it back.
    Nothing,
    /// Give back the pod's devices (as a stop would).
    GiveBack,
}

/// The decision for a CNI DEL of namespace `netns`: devices recorded there (or on
/// their way there) go home, unless a stop of the pod is already giving them back.
pub fn del_decision(plans: &[(String, Plan)], netns: &Path, giving_back: bool) -> DelAction {
    if giving_back || netns.as_os_str().is_empty() {
        // An empty path: containerd found the namespace closed; the keeper returns
        // whatever was in it.
        return DelAction::Nothing;
    }
    let there = plans
        .iter()
        .any(|(_, p)| p.attachment().is_some_and(|a| a.pod_netns == netns));
    if there {
        DelAction::GiveBack
    } else {
        DelAction::Nothing
    }
}

/// A finished ahead start: the namespace it went to, and how it went.
type Kept = (PathBuf, Result<Vec<DeviceOutcome>, LifecycleError>);

/// The finished ahead starts, by pod UID, until their hook collects them.
#[derive(Default)]
pub struct Finished {
    by_pod: Mutex<BTreeMap<String, Kept>>,
}

impl Finished {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Kept>> {
        self.by_pod.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the result of pod `uid`'s ahead start into `netns` (replacing an older one).
    pub fn put(
        &self,
        uid: &str,
        netns: PathBuf,
        result: Result<Vec<DeviceOutcome>, LifecycleError>,
    ) {
        self.map().insert(uid.to_string(), (netns, result));
    }

    /// The result for the hook of pod `uid` with namespace `netns`; a result for
    /// another namespace (an earlier sandbox) is dropped.
    pub fn take(
        &self,
        uid: &str,
        netns: &Path,
    ) -> Option<Result<Vec<DeviceOutcome>, LifecycleError>> {
        let (at, result) = self.map().remove(uid)?;
        (at == netns).then_some(result)
    }

    /// Forgets pod `uid`'s result (its pod ended before a hook collected it).
    pub fn forget(&self, uid: &str) {
        self.map().remove(uid);
    }

    /// Whether pod `uid` has a result its RunPodSandbox has not collected yet: the
    /// runtime is still creating the sandbox, and does not list it in a Synchronize.
    pub fn pending(&self, uid: &str) -> bool {
        self.map().contains_key(uid)
    }
}

impl Pods {
    /// Starts handing pod `pod_uid`'s devices to `runtime.netns` now, on a thread of its
    /// own, because the runtime's CNI ADD says the namespace exists (this module). Returns
    /// once the pod's turn is taken, so the pod's RunPodSandbox (which comes after the
    /// CNI ADD) waits for the hand-over and collects its result.
    pub fn start_pod_ahead(
        &self,
        pod_uid: &str,
        pod_name: &str,
        runtime: PodRuntime,
    ) -> Result<AheadStart, LifecycleError> {
        let decide = || -> Result<AheadStart, LifecycleError> {
            let plans = self.recorded_plans(pod_uid, pod_name)?;
            Ok(ahead_decision(
                &plans,
                &runtime.netns,
                self.inner.kernel.config.dataplane,
                runtime.cgroup_parent.as_deref(),
            ))
        };
        // Most pods claim nothing: they are answered without waiting for a turn.
        let first = decide()?;
        if !matches!(first, AheadStart::Started { .. }) {
            return Ok(first);
        }
        // The socket guard goes on the pod's cgroup, which kubelet creates before the
        // pod's sandbox; where it does not exist yet, the hook attaches it later.
        if let Err(e) =
            super::effects::Effects::socket_guard(&self.inner.kernel, pod_name, &runtime)
        {
            return Ok(AheadStart::Declined(format!(
                "{e}; RunPodSandbox hands the devices over"
            )));
        }
        let turn = self.turn(pod_uid);
        let decision = decide()?;
        if !matches!(decision, AheadStart::Started { .. }) {
            return Ok(decision);
        }
        let this = self.clone();
        let (uid, name) = (pod_uid.to_string(), pod_name.to_string());
        let span = tracing::Span::current();
        let work = move || {
            let _entered = span.enter();
            let _moving = crate::netns::quiet::Quiet::global().hold();
            let started = std::time::Instant::now();
            let result = this.inner.start(&uid, &name, &runtime);
            match &result {
                Ok(outcomes) => tracing::info!(
                    pod = %name,
                    devices = outcomes.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "hand-over started at the CNI ADD is done"
                ),
                Err(e) => {
                    tracing::warn!(pod = %name, "hand-over started at the CNI ADD failed (RunPodSandbox reports it): {e}")
                }
            }
            // Kept before the turn is let go, so the hook finds it.
            this.inner.ahead.put(&uid, runtime.netns.clone(), result);
            drop(turn);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("handover-ahead".into())
            .spawn(work)
        {
            return Ok(AheadStart::Declined(format!(
                "no thread for the hand-over: {e}"
            )));
        }
        Ok(decision)
    }

    /// The runtime's CNI DEL for pod `pod_uid`'s namespace `netns`: devices there go
    /// home as after a stop ([`Self::stop_pod_behind`]), unless a stop already gives them
    /// back. A hand-over started ahead for a pod that never ran (the runtime failed its
    /// start after the CNI ADD) is undone here. Returns once the give-back is ordered.
    pub fn end_in_netns(
        &self,
        pod_uid: &str,
        netns: &std::path::Path,
    ) -> Result<DelAction, LifecycleError> {
        // Most pods claim nothing, and their DEL may come after RemovePodSandbox forgot
        // their turn: answered without one.
        if self.giving_back(pod_uid) || self.recorded_plans(pod_uid, pod_uid)?.is_empty() {
            self.inner.ahead.forget(pod_uid);
            return Ok(DelAction::Nothing);
        }
        // After any hand-over of this pod still running.
        let turn = self.turn(pod_uid);
        if let Some(Err(e)) = self.inner.ahead.take(pod_uid, netns) {
            tracing::debug!(
                pod_uid,
                "forgetting a failed hand-over no hook collected: {e}"
            );
        }
        let plans = self.recorded_plans(pod_uid, pod_uid)?;
        let action = del_decision(&plans, netns, self.giving_back(pod_uid));
        if action == DelAction::GiveBack {
            tracing::info!(pod_uid, netns = %netns.display(), "CNI DEL of a namespace that holds the pod's devices; returning them");
            self.give_back_behind(turn, pod_uid, None);
        }
        Ok(action)
    }

    /// The checkpoint's plans of pod `pod_uid` (`pod` names it in an error).
    fn recorded_plans(
        &self,
        pod_uid: &str,
        pod: &str,
    ) -> Result<Vec<(String, Plan)>, LifecycleError> {
        self.inner
            .kernel
            .store
            .plans_of_pod(pod_uid)
            .map_err(|source| LifecycleError::Checkpoint {
                pod: pod.to_string(),
                source,
            })
    }

    fn giving_back(&self, pod_uid: &str) -> bool {
        self.inner.giving_back().contains(pod_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Attachment, Placement};

    fn plan(placement: Placement) -> (String, Plan) {
        let mut p: Plan = serde_json::from_value(serde_json::json!({
            "claim": {"namespace": "ns", "name": "c", "uid": "claim-uid"},
            "pod": {"namespace": "ns", "name": "p", "uid": "uid-1"},
            "device": "dev", "pool": "pool", "requests": ["r"]
        }))
        .expect("plan");
        p.placement = placement;
        ("claim-uid".into(), p)
    }

    fn att(netns: &str) -> Attachment {
        Attachment::for_tests(netns)
    }

    #[test]
    fn ahead_only_for_devices_waiting_and_with_a_cgroup_when_guarded() {
        let home = vec![plan(Placement::Home)];
        let in_pod = vec![plan(Placement::InPod {
            attachment: att("/run/netns/a"),
        })];
        let a = Path::new("/run/netns/a");
        assert_eq!(
            ahead_decision(&in_pod, Path::new("/run/netns/b"), true, Some("/kubepods")),
            AheadStart::Started { devices: 1 },
            "in an earlier sandbox's namespace: it comes over to this one"
        );
        assert_eq!(
            ahead_decision(&[], a, true, Some("/kubepods")),
            AheadStart::Nothing
        );
        assert_eq!(
            ahead_decision(&in_pod, a, true, Some("/kubepods")),
            AheadStart::Nothing
        );
        assert_eq!(
            ahead_decision(&home, a, true, Some("/kubepods")),
            AheadStart::Started { devices: 1 }
        );
        assert_eq!(
            ahead_decision(&home, a, false, None),
            AheadStart::Started { devices: 1 }
        );
        for cgroup in [None, Some("")] {
            let AheadStart::Declined(why) = ahead_decision(&home, a, true, cgroup) else {
                panic!("a guarded start without a cgroup must be left to the hook");
            };
            assert!(why.contains("cgroupPath"), "{why}");
        }
    }

    #[test]
    fn del_gives_back_only_what_is_in_its_namespace_and_not_already_going() {
        let a = Path::new("/run/netns/a");
        for placement in [
            Placement::InPod {
                attachment: att("/run/netns/a"),
            },
            Placement::Entering {
                attachment: att("/run/netns/a"),
            },
            Placement::Leaving {
                attachment: att("/run/netns/a"),
            },
        ] {
            let plans = vec![plan(Placement::Home), plan(placement)];
            assert_eq!(del_decision(&plans, a, false), DelAction::GiveBack);
            assert_eq!(del_decision(&plans, a, true), DelAction::Nothing);
            assert_eq!(
                del_decision(&plans, Path::new(""), false),
                DelAction::Nothing
            );
            assert_eq!(
                del_decision(&plans, Path::new("/run/netns/b"), false),
                DelAction::Nothing,
                "a DEL of an earlier sandbox must not take the devices of the current one"
            );
        }
        assert_eq!(
            del_decision(&[plan(Placement::Home)], a, false),
            DelAction::Nothing
        );
    }

    #[test]
    fn a_pending_result_is_pending_until_taken_or_forgotten() {
        let f = Finished::default();
        assert!(!f.pending("uid-1"));
        f.put("uid-1", PathBuf::from("/run/netns/a"), Ok(Vec::new()));
        assert!(f.pending("uid-1"));
        assert!(f.take("uid-1", Path::new("/run/netns/a")).is_some());
        assert!(!f.pending("uid-1"));
        f.put("uid-1", PathBuf::from("/run/netns/a"), Ok(Vec::new()));
        f.forget("uid-1");
        assert!(!f.pending("uid-1"));
    }

    #[test]
    fn a_result_is_taken_once_and_only_for_its_namespace() {
        let f = Finished::default();
        f.put("u", PathBuf::from("/run/netns/a"), Ok(Vec::new()));
        assert!(f.take("u", Path::new("/run/netns/b")).is_none());
        assert!(
            f.take("u", Path::new("/run/netns/a")).is_none(),
            "dropped by the mismatch"
        );
        f.put("u", PathBuf::from("/run/netns/a"), Ok(Vec::new()));
        assert!(matches!(
            f.take("u", Path::new("/run/netns/a")),
            Some(Ok(_))
        ));
        assert!(f.take("u", Path::new("/run/netns/a")).is_none());
        f.put("u", PathBuf::from("/run/netns/a"), Ok(Vec::new()));
        f.forget("u");
        assert!(f.take("u", Path::new("/run/netns/a")).is_none());
    }
}
