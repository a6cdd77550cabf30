//! Taking a stopped pod's devices back ([`give_back`]): every device still in the pod
//! is recorded `Leaving` in one write before any is touched, then each goes home
//! through [`unwind`], and the pod's status says which came back and which were lost
//! with its namespace.

use std::time::Instant;

use super::super::effects::{Effects, Placing};
use super::super::{device_ref, Action, DeviceOutcome, LifecycleError};
use super::{checkpoint_error, unwind, Taken};
use crate::netns::RestoreOutcome;
use crate::state::Placement;
use crate::status::{DeviceEvent, FailedPart};

/// Gives back every device of the pod that is not home. Every device in the pod is
/// recorded `Leaving` (one transaction) before any is touched.
pub fn give_back<E: Effects>(e: &E, pod_uid: &str) -> Result<Vec<DeviceOutcome>, LifecycleError> {
    let started = Instant::now();
    let plans = e.plans_of(pod_uid).map_err(checkpoint_error(pod_uid))?;
    let pod_label = plans
        .first()
        .map(|(_, p)| p.pod.to_string())
        .unwrap_or_else(|| pod_uid.to_string());
    let leaving: Vec<Placing<'_>> = plans
        .iter()
        .filter_map(|(claim_uid, plan)| match &plan.placement {
            Placement::InPod { attachment } => Some(Placing {
                claim_uid,
                plan,
                placement: Placement::Leaving {
                    attachment: attachment.clone(),
                },
            }),
            _ => None,
        })
        .collect();
    let recording = Instant::now();
    if !leaving.is_empty() {
        e.place(leaving)
            .map_err(|(_, source)| LifecycleError::Checkpoint {
                pod: pod_label.clone(),
                source,
            })?;
    }
    let recorded = Instant::now();
    let mut outcomes = Vec::new();
    let mut problems = Vec::new();
    for (claim_uid, plan) in plans {
        let Some(att) = plan.attachment().cloned() else {
            continue;
        };
        let span = tracing::info_span!("device", claim = %plan.claim, pod = %plan.pod, device = %plan.device);
        let _entered = span.enter();
        // The held namespace first: the runtime's path may be gone or name another.
        let pod = e.find_pod(pod_uid, &att.pod_netns);
        let taken = Taken::from_record(&claim_uid, &plan, &att);
        let unwound = unwind(e, &taken, pod.as_ref());
        match &unwound.outcome {
            Some(RestoreOutcome::Gone) => {
                tracing::warn!(interface = %att.originals.name, "device lost: destroyed with the pod's network namespace");
                e.emit(DeviceEvent::Failed {
                    device: device_ref(&plan),
                    part: FailedPart::Network,
                    reason: "DeviceLost".into(),
                    message: format!(
                        "interface {} was destroyed with the network namespace of pod {} before it could be returned",
                        att.originals.name, plan.pod
                    ),
                });
            }
            Some(_) => {
                tracing::info!(interface = %att.originals.name, "device restored on the host");
                e.emit(DeviceEvent::Stopped {
                    device: device_ref(&plan),
                });
            }
            None => tracing::warn!("restoring the device failed; will retry"),
        }
        if let Some(outcome) = unwound.outcome {
            outcomes.push(DeviceOutcome {
                claim: plan.claim.to_string(),
                pool: plan.pool.clone(),
                device: plan.device.clone(),
                action: Action::Returned(outcome),
            });
        }
        problems.extend(
            unwound
                .problems
                .into_iter()
                .map(|p| format!("claim {}, device {}: {p}", plan.claim, plan.device)),
        );
    }
    tracing::debug!(
        before_record_us = (recording - started).as_micros() as u64,
        leaving_record_us = (recorded - recording).as_micros() as u64,
        devices_us = recorded.elapsed().as_micros() as u64,
        "stop timing"
    );
    if problems.is_empty() {
        e.let_go(pod_uid);
        Ok(outcomes)
    } else {
        Err(LifecycleError::Incomplete {
            pod: pod_label,
            problems,
        })
    }
}
