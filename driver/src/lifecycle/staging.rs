//! Data paths staged at prepare: attaching tc and XDP takes the kernel's RTNL lock
//! (and waits behind whatever holds it), so it is done when kubelet prepares the claim,
//! before the pod exists and off the runtime's hook budget. The programs go on the
//! device at home and only count; XDP and TCX links travel with the device when it
//! moves into the pod, where the pod start checks they came along and puts the
//! claim's policy in force (a map write). At stop the device goes home counting only;
//! unprepare removes the data path.
//!
//! Staging is a shortcut, never a requirement: a device that cannot be staged (no data
//! plane, `disableEbpfPrograms`, an attach that fails or falls back to clsact, which
//! does not survive a move) gets its data path attached at pod start as before.
//!
//! The checkpoint says `staged` before anything is attached, and stops saying it only
//! after the pins are gone, so a restarted driver never leaves a staged data path
//! that no record names.

use std::sync::{Arc, OnceLock};

use super::{datapath_key, Pods};
use crate::datapath::{
    attach::{EgressMode, IngressMode},
    device::AttachOptions,
    AttachedDatapath, DatapathError, DatapathPolicy,
};
use crate::kubelet::{ClaimPreparer, ClaimRef, PrepareResults, UnprepareResults};
use crate::state::{Placement, Plan, StateError};

/// Why a staged data path could not be removed at unprepare.
#[derive(Debug, thiserror::Error)]
pub enum UnstageError {
    #[error("claim {claim}: reading the checkpoint: {source}")]
    Checkpoint {
        claim: String,
        #[source]
        source: StateError,
    },
    #[error("claim {claim}, device {device}: removing the data path staged at prepare: {source}")]
    Detach {
        claim: String,
        device: String,
        #[source]
        source: Box<DatapathError>,
    },
}

/// Whether `plan`'s device gets a staged data path.
fn wants_stage(plan: &Plan, dataplane: bool) -> bool {
    let disabled = plan.valid.as_ref().is_none_or(|c| c.disable_ebpf_programs);
    dataplane && !plan.staged && plan.placement == Placement::Home && !disabled
}

impl Pods {
    /// Stages a counting data path on every device of claim `claim_uid` that is home
    /// and does not have one yet; returns how many were staged. Problems are logged:
    /// those devices get their data path at pod start.
    pub fn stage(&self, claim_uid: &str) -> usize {
        let k = &self.inner.kernel;
        let plans = match k.store.get(claim_uid) {
            Ok(Some(c)) => c.plans,
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(claim_uid, "not staging: reading the checkpoint: {e}");
                return 0;
            }
        };
        let mut staged = 0;
        for plan in plans {
            if !wants_stage(&plan, k.config.dataplane) {
                continue;
            }
            let span = tracing::info_span!("stage", claim = %plan.claim, device = %plan.device);
            let _entered = span.enter();
            match self.locked(&plan.pod.uid, || self.stage_one(claim_uid, &plan)) {
                Ok(true) => staged += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("not staged; the data path is attached at pod start: {e}")
                }
            }
        }
        staged
    }

    fn stage_one(&self, claim_uid: &str, plan: &Plan) -> Result<bool, String> {
        let k = &self.inner.kernel;
        let Some(ifname) = k.resolver.host_ifname(&plan.pool, &plan.device) else {
            return Err("the device is not in the node's inventory".into());
        };
        let key = datapath_key(plan).map_err(|e| e.to_string())?;
        // Write-ahead: recorded before anything is pinned; re-checked under the pod's
        // lock (a start may have come first).
        let recorded = k
            .store
            .update(claim_uid, |stored| match stored.plan_mut(plan) {
                Some(p) if p.placement == Placement::Home && !p.staged => {
                    p.staged = true;
                    true
                }
                _ => false,
            })
            .map_err(|e| e.to_string())?;
        if !recorded {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let attached = AttachedDatapath::attach(
            &k.layout,
            key.clone(),
            &k.host,
            &ifname,
            &DatapathPolicy::default(),
            AttachOptions {
                stage: true,
                ..Default::default()
            },
        );
        let travels = |dp: &AttachedDatapath| {
            dp.info().is_ok_and(|info| {
                info.egress_mode == Some(EgressMode::Tcx)
                    && info.ingress_mode.is_some_and(|m| m != IngressMode::Clsact)
            })
        };
        let attached = attached.and_then(|dp| {
            if travels(&dp) {
                return Ok(dp);
            }
            // clsact filters die with a move: staging them would only leave a filter
            // on the host. Removed here (in the node's namespace, where they are).
            let info = dp.info();
            dp.detach(&k.layout, Some(&k.host))?;
            Err(DatapathError::Attach {
                key: key.to_string(),
                direction: "egress or ingress",
                interface: ifname.clone(),
                detail: format!(
                    "only a clsact attachment was possible ({:?}), and it would not survive the move",
                    info.map(|i| (i.egress_mode, i.ingress_mode))
                ),
            })
        });
        match attached {
            Ok(dp) => {
                let info = dp.info().map_err(|e| e.to_string())?;
                tracing::info!(
                    interface = %ifname,
                    egress = ?info.egress_mode,
                    ingress = ?info.ingress_mode,
                    took_us = started.elapsed().as_micros() as u64,
                    "data path staged on the host (counting only)"
                );
                Ok(true)
            }
            Err(e) => {
                if let Err(c) = self.unmark_staged(claim_uid, plan) {
                    tracing::warn!(
                        "the staged mark stays in the checkpoint ({c}); unprepare clears it"
                    );
                }
                Err(e.to_string())
            }
        }
    }

    /// Records that no data path is staged for `plan`'s device (any more).
    fn unmark_staged(&self, claim_uid: &str, plan: &Plan) -> Result<bool, StateError> {
        self.inner.kernel.store.update(claim_uid, |stored| {
            stored.plan_mut(plan).map(|p| p.staged = false).is_some()
        })
    }

    /// Removes the data paths staged for claim `claim_uid` on devices that are home
    /// (a device in a pod keeps its data path; unprepare refuses that claim anyway).
    /// Every device is tried; the first failure is returned (kubelet retries, and the
    /// others are gone by then).
    pub fn unstage(&self, claim_uid: &str) -> Result<(), UnstageError> {
        let k = &self.inner.kernel;
        let claim = |c: &str| c.to_string();
        let plans = match k.store.get(claim_uid) {
            Ok(Some(c)) => c.plans,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(UnstageError::Checkpoint {
                    claim: claim(claim_uid),
                    source,
                })
            }
        };
        let mut first_failure = None;
        for plan in plans
            .iter()
            .filter(|p| p.staged && p.placement == Placement::Home)
        {
            let removed = self.locked(&plan.pod.uid, || -> Result<(), UnstageError> {
                let detach_err = |source| UnstageError::Detach {
                    claim: plan.claim.to_string(),
                    device: plan.device.clone(),
                    source: Box::new(source),
                };
                let key = datapath_key(plan).map_err(detach_err)?;
                // At home: any clsact filter of it is in the node's namespace. Whole
                // or left half removed by a killed driver, it goes.
                AttachedDatapath::remove(&k.layout, &key, Some(&k.host)).map_err(detach_err)?;
                self.unmark_staged(claim_uid, plan)
                    .map_err(|source| UnstageError::Checkpoint {
                        claim: plan.claim.to_string(),
                        source,
                    })?;
                Ok(())
            });
            match removed {
                Ok(()) => {
                    tracing::info!(claim = %plan.claim, device = %plan.device, "staged data path removed")
                }
                Err(e) => {
                    tracing::warn!(claim = %plan.claim, device = %plan.device, "{e}");
                    first_failure.get_or_insert(e);
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// A [`ClaimPreparer`] that parks devices ([`super::parking`]) and stages data paths
/// after each claim is prepared, and removes them and brings the devices up again
/// before it is unprepared. `pods` is filled once the lifecycle exists (claims
/// prepared before that are staged by their pod start instead).
pub struct StagingPreparer {
    inner: Arc<dyn ClaimPreparer>,
    pods: Arc<OnceLock<Pods>>,
}

impl StagingPreparer {
    pub fn new(inner: Arc<dyn ClaimPreparer>, pods: Arc<OnceLock<Pods>>) -> Self {
        Self { inner, pods }
    }
}

#[async_trait::async_trait]
impl ClaimPreparer for StagingPreparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let results = self.inner.prepare(claims).await;
        if let Some(pods) = self.pods.get() {
            let prepared: Vec<String> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(uid, _)| uid.clone())
                .collect();
            let pods = pods.clone();
            // Parked first: the staged programs then go onto a down device.
            let staged = tokio::task::spawn_blocking(move || {
                for uid in &prepared {
                    pods.park(uid);
                    pods.stage(uid);
                }
            })
            .await;
            if let Err(e) = staged {
                tracing::warn!("parking devices and staging data paths: {e}");
            }
        }
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let Some(pods) = self.pods.get().cloned() else {
            return self.inner.unprepare(claims).await;
        };
        let uids: Vec<String> = claims.iter().map(|c| c.uid.clone()).collect();
        let unstaged = tokio::task::spawn_blocking(move || {
            uids.into_iter()
                .map(|uid| {
                    let r = pods
                        .unstage(&uid)
                        .map_err(|e| e.to_string())
                        .and_then(|()| pods.unpark(&uid).map_err(|e| e.to_string()));
                    (uid, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut failed = UnprepareResults::new();
        let mut rest = Vec::new();
        match unstaged {
            Ok(outcomes) => {
                let outcomes: std::collections::BTreeMap<String, Result<(), String>> =
                    outcomes.into_iter().collect();
                for c in claims {
                    match outcomes.get(&c.uid) {
                        Some(Err(e)) => {
                            failed.insert(c.uid.clone(), Err(e.clone()));
                        }
                        _ => rest.push(c),
                    }
                }
            }
            Err(e) => {
                tracing::warn!("removing staged data paths: {e}");
                rest = claims;
            }
        }
        let mut results = self.inner.unprepare(rest).await;
        results.extend(failed);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_home_devices_with_a_data_plane_and_no_stage_yet_are_staged() {
        let mut plan = Plan {
            valid: Some(crate::config::ValidConfig::default()),
            ..Default::default()
        };
        assert!(wants_stage(&plan, true));
        assert!(!wants_stage(&plan, false), "--dataplane=off");
        plan.staged = true;
        assert!(!wants_stage(&plan, true), "already staged");
        plan.staged = false;
        plan.valid = None;
        assert!(!wants_stage(&plan, true), "config not validated at prepare");
        plan.valid = Some(crate::config::ValidConfig {
            disable_ebpf_programs: true,
            ..Default::default()
        });
        assert!(!wants_stage(&plan, true), "disableEbpfPrograms");
    }
}
