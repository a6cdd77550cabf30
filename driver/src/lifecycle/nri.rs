//! [`crate::nri::PodHandler`] for [`Pods`]: NRI pod events run the blocking lifecycle
//! on `spawn_blocking`, so the ttrpc server's tasks never block. A pod without a
//! network namespace (host network) has nothing to receive devices; that is an error
//! only when devices were claimed for it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Pods;
use crate::nri::{PodHandler, PodSandbox};

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("netclaim pod hook task failed: {e}"))?
}

#[async_trait::async_trait]
impl PodHandler for Pods {
    async fn run_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let pods = self.clone();
        let uid = pod.uid.clone();
        let name = pod.display_name();
        let netns = pod.netns_path().map(PathBuf::from);
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
            pods.start_pod(&uid, &name, &netns)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn stop_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let pods = self.clone();
        let uid = pod.uid.clone();
        blocking(move || pods.stop_pod(&uid).map(|_| ()).map_err(|e| e.to_string())).await
    }

    async fn remove_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let pods = self.clone();
        let uid = pod.uid.clone();
        blocking(move || pods.remove_pod(&uid).map(|_| ()).map_err(|e| e.to_string())).await
    }

    async fn synchronize(&self, pods: &[PodSandbox]) {
        let live: BTreeMap<String, PathBuf> = pods
            .iter()
            .filter_map(|p| p.netns_path().map(|n| (p.uid.clone(), PathBuf::from(n))))
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
