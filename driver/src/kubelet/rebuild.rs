//! Rebuilding the checkpoint's plans from the API server, after a corrupt checkpoint
//! was moved aside ([`crate::state::StateStore::moved_aside`]).
//!
//! Every claim allocated on this node by this driver and reserved for a pod
//! ([`claims_to_rebuild`]) is prepared again through the [`ClaimPreparer`] kubelet
//! calls — the same way kubelet's `NodePrepareResources` would — so the plans exist
//! again before kubelet or the runtime ask. Host originals of devices already inside
//! pods are lost with the checkpoint; those devices are returned by name when their
//! pod stops.
//!
//! This lives with the kubelet plugin because a rebuild *is* prepare: the plans are
//! made by the same preparer, from the same claims, with the same checks. The
//! checkpoint ([`crate::state`]) only stores them and never talks to the API server.

use std::path::Path;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::ListParams;
use kube::Api;

use super::{ClaimPreparer, ClaimRef, PrepareResults};

/// Why the claims to re-prepare could not be found.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("listing ResourceClaims: {source}")]
    List {
        #[source]
        source: kube::Error,
    },
}

/// Lists every ResourceClaim, re-prepares those [`claims_to_rebuild`] selects and
/// logs the outcome (a summary, then one error per claim that failed). `aside` is
/// where the corrupt checkpoint was moved, for the log.
///
/// A claim that fails here is not lost: kubelet prepares it again when it asks.
pub async fn rebuild_plans(
    client: &kube::Client,
    driver_name: &str,
    node_name: &str,
    preparer: &dyn ClaimPreparer,
    aside: &Path,
) -> Result<PrepareResults, RebuildError> {
    let api: Api<ResourceClaim> = Api::all(client.clone());
    let claims = api
        .list(&ListParams::default())
        .await
        .map_err(|source| RebuildError::List { source })?
        .items;
    let results = preparer
        .prepare(claims_to_rebuild(&claims, driver_name, node_name))
        .await;
    let ok = results.values().filter(|r| r.is_ok()).count();
    tracing::warn!(
        moved_aside = %aside.display(),
        rebuilt = ok,
        failed = results.len() - ok,
        "checkpoint rebuilt from the API server after corruption"
    );
    for (uid, r) in &results {
        if let Err(e) = r {
            tracing::error!(claim_uid = %uid, error = %e, "checkpoint rebuild: claim not prepared");
        }
    }
    Ok(results)
}

/// The claims whose allocation has a result of driver `driver_name` in pool
/// `node_name` (this node's pool) and whose `status.reservedFor` is not empty, as
/// kubelet would name them. Claims without namespace, name or UID are skipped.
/// Pure: no I/O.
pub fn claims_to_rebuild(
    claims: &[ResourceClaim],
    driver_name: &str,
    node_name: &str,
) -> Vec<ClaimRef> {
    claims
        .iter()
        .filter(|c| {
            let status = c.status.as_ref();
            let ours = status
                .and_then(|s| s.allocation.as_ref())
                .and_then(|a| a.devices.as_ref())
                .is_some_and(|d| {
                    d.results
                        .iter()
                        .flatten()
                        .any(|r| r.driver == driver_name && r.pool == node_name)
                });
            let reserved = status
                .and_then(|s| s.reserved_for.as_ref())
                .is_some_and(|r| !r.is_empty());
            ours && reserved
        })
        .filter_map(|c| {
            Some(ClaimRef {
                namespace: c.metadata.namespace.clone()?,
                name: c.metadata.name.clone()?,
                uid: c.metadata.uid.clone()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn claim(name: &str, driver: &str, pool: &str, reserved: Value) -> ResourceClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {},
            "status": {
                "allocation": {"devices": {"results": [
                    {"request": "nic", "driver": driver, "pool": pool, "device": "eth1"}
                ]}},
                "reservedFor": reserved
            }
        }))
        .unwrap()
    }

    #[test]
    fn selects_this_nodes_reserved_claims_of_this_driver() {
        let pod = json!([{"resource": "pods", "name": "p", "uid": "pu"}]);
        let claims = [
            claim("ours", "netclaim.dev", "node-a", pod.clone()),
            claim("other-node", "netclaim.dev", "node-b", pod.clone()),
            claim("other-driver", "gpu.example.com", "node-a", pod),
            claim("unreserved", "netclaim.dev", "node-a", json!([])),
            serde_json::from_value(
                json!({"metadata": {"name": "bare", "namespace": "ns", "uid": "u"}, "spec": {}}),
            )
            .unwrap(),
        ];
        assert_eq!(
            claims_to_rebuild(&claims, "netclaim.dev", "node-a"),
            vec![ClaimRef {
                namespace: "ns".into(),
                name: "ours".into(),
                uid: "uid-ours".into(),
            }]
        );
    }
}
