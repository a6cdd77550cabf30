//! [`crate::nri::PodHandler`] for [`Pods`]: NRI pod events run the blocking lifecycle
//! through [`blocking`], so no other task of the ttrpc server waits for it. A pod without a
//! network namespace (host network) has nothing to receive devices; that is an error
//! only when devices were claimed for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{budget::Deadline, PodRuntime, Pods};
use crate::nri::{PodHandler, PodSandbox};

/// Runs a hook's blocking work. On the daemon's multi-threaded runtime it runs right
/// here (`block_in_place`: this worker hands its other tasks to another thread), so the
/// hook does not wait for a thread of the blocking pool to wake up: measured in
/// `bench-pod-start`, `spawn_blocking` started the work 0.1 ms after the request at the
/// median and 2 ms at the 75th percentile, `block_in_place` 13 and 28 µs. Each request
/// is a task of its own (`nri::ttrpc`), so nothing else waits behind it. A
/// current-thread runtime (some tests) uses the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(work);
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("netclaim pod hook task failed: {e}"))?
}

#[async_trait::async_trait]
impl PodHandler for Pods {
    async fn run_pod(&self, pod: &PodSandbox, budget: Option<Duration>) -> Result<(), String> {
        // The runtime's clock started when it sent the request; ours starts here.
        let deadline = budget.map(Deadline::new);
        let pods = self.clone();
        let uid = pod.uid.clone();
        let name = pod.display_name();
        let netns = pod.netns_path().map(PathBuf::from);
        let cgroup_parent = pod.cgroup_parent().map(str::to_string);
        blocking(move || {
            let Some(netns) = netns else {
                let claimed = pods
                    .store()
                    .list()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .flat_map(|c| c.plans.iter())
                    .any(|p| p.pod.uid == uid);
                return if claimed {
                    Err(format!(
                        "pod {name} has claimed network devices but no network namespace (host network?)"
                    ))
                } else {
                    Ok(())
                };
            };
            let runtime = PodRuntime {
                netns,
                cgroup_parent,
                deadline,
            };
            pods.start_pod(&uid, &name, &runtime)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Answers once the pod's turn is taken; its devices go home right after, on a
    /// thread of their own ([`Pods::stop_pod_behind`]). The runtime tears the pod's
    /// network down meanwhile; the keeper holds the namespace, so the devices in it
    /// outlive that, and every later hook of this pod (RemovePodSandbox, a new
    /// sandbox) and unprepare of its claims wait for them. containerd ignores what a
    /// plugin answers to this event, so nothing the runtime does depends on the
    /// devices being home when it returns.
    async fn stop_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let pods = self.clone();
        let uid = pod.uid.clone();
        blocking(move || {
            pods.stop_pod_behind(&uid, None);
            Ok(())
        })
        .await
    }

    async fn remove_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let pods = self.clone();
        let uid = pod.uid.clone();
        blocking(move || pods.remove_pod(&uid).map(|_| ()).map_err(|e| e.to_string())).await
    }

    async fn synchronize(&self, pods: &[PodSandbox]) {
        let live: BTreeMap<String, PodRuntime> = pods
            .iter()
            .filter_map(|p| {
                let runtime = PodRuntime {
                    netns: PathBuf::from(p.netns_path()?),
                    cgroup_parent: p.cgroup_parent().map(str::to_string),
                    // Synchronize answers within the budget and finishes in the
                    // background (see `crate::nri`); no pod fails for its clock.
                    deadline: None,
                };
                Some((p.uid.clone(), runtime))
            })
            .collect();
        let this = self.clone();
        let report = blocking(move || Ok(this.synchronize(&live))).await;
        match report {
            Ok(report) => {
                for err in report.errors {
                    tracing::warn!("synchronize: {err}");
                }
            }
            Err(e) => tracing::warn!("synchronize: {e}"),
        }
    }
}
