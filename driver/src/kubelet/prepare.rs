//! [`Preparer`]: the real [`ClaimPreparer`]. For each claim kubelet names:
//!
//! 1. the checkpoint already has it → return the stored answer (no API call, no side
//!    effect: prepare is idempotent);
//! 2. read the ResourceClaim, check its UID;
//! 3. [`plan_claim`] (pure): take `status.allocation.devices.results` of this driver,
//!    merge this driver's `status.allocation.devices.config` per device (class configs
//!    before claim configs, later keys override earlier ones, an entry without
//!    `requests` applies to every request), validate the merged parameters, find the
//!    one pod in `status.reservedFor`, and make a [`Plan`] per device;
//! 4. write the plans to the checkpoint, and only then answer.
//!
//! Unprepare forgets the claim's plans, refusing while a plan says its device is still
//! inside the pod. Nothing here touches the kernel: the NRI hooks act on the plans.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::Api;
use serde_json::Value;

use super::{ClaimPreparer, ClaimRef, PrepareResults, PreparedDevice, UnprepareResults};
use crate::state::{ClaimPlans, ClaimRecord, Plan, PodRecord, StateError, StateStore};

/// One check of opaque parameters: `(parameters, path prefix) -> Ok or a message whose
/// field paths start with the prefix`.
pub type ConfigCheck = Arc<dyn Fn(&Value, &str) -> Result<(), String> + Send + Sync>;

/// The check of a device's merged parameters: like [`ConfigCheck`], and on success the
/// validated config to keep in the plan (so the pod hook does not parse it again).
pub type ConfigValidate =
    Arc<dyn Fn(&Value, &str) -> Result<Option<crate::config::ValidConfig>, String> + Send + Sync>;

/// How prepare checks this driver's configs. Injected so the config rules stay in
/// [`crate::config`].
#[derive(Clone)]
pub struct ConfigParser {
    /// Each config entry on its own, before merging: unknown fields and wrong types,
    /// reported at the entry's exact path in the claim.
    pub structure: ConfigCheck,
    /// The merged parameters of one device: every rule.
    pub full: ConfigValidate,
}

/// The config module's checks: [`crate::config::parameters::decode`] per entry and
/// [`crate::config::parse_parameters`] on the merged result, all problems at once,
/// with their field paths.
pub fn network_config_parser() -> ConfigParser {
    ConfigParser {
        structure: Arc::new(|value, prefix| {
            crate::config::parameters::decode(value)
                .map(|_| ())
                .map_err(|errors| errors.prefixed(prefix).to_string())
        }),
        full: Arc::new(|value, prefix| {
            crate::config::parse_parameters(value, prefix)
                .map(Some)
                .map_err(|errors| errors.to_string())
        }),
    }
}

/// Why one claim could not be prepared or unprepared. Every message names the claim.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("claim {claim}: not found in the API server")]
    NotFound { claim: String },
    #[error("claim {claim}: cannot read it from the API server: {message}")]
    Fetch { claim: String, message: String },
    #[error(
        "claim {claim}: metadata.uid is {actual} in the API server but kubelet asked for {expected} (the claim was re-created)"
    )]
    UidMismatch {
        claim: String,
        expected: String,
        actual: String,
    },
    #[error("claim {claim}: status.allocation is not set; the claim is not allocated")]
    NotAllocated { claim: String },
    #[error("claim {claim}: status.reservedFor names no pod")]
    NoPod { claim: String },
    #[error("claim {claim} is reserved for {count} pods; netclaim devices are exclusive")]
    SharedClaim { claim: String, count: usize },
    #[error("claim {claim}: device {device} (request {request}): invalid config: {message}")]
    Config {
        claim: String,
        device: String,
        request: String,
        message: String,
    },
    #[error("claim {claim}: checkpoint: {source}")]
    Checkpoint { claim: String, source: StateError },
    #[error(
        "claim {claim}: device {device} (pool {pool}) is still attached to pod {pod}; it is released when the pod stops"
    )]
    StillAttached {
        claim: String,
        device: String,
        pool: String,
        pod: String,
    },
}

/// Reads claims through the API server and checkpoints their plans.
pub struct Preparer {
    client: kube::Client,
    driver_name: String,
    store: Arc<StateStore>,
    parser: ConfigParser,
    /// Prepare and unprepare of one claim never interleave.
    serial: tokio::sync::Mutex<()>,
}

impl Preparer {
    pub fn new(
        client: kube::Client,
        driver_name: impl Into<String>,
        store: Arc<StateStore>,
        parser: ConfigParser,
    ) -> Self {
        Self {
            client,
            driver_name: driver_name.into(),
            store,
            parser,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    async fn prepare_one(&self, claim: &ClaimRef) -> Result<Vec<PreparedDevice>, PrepareError> {
        let name = claim.to_string();
        let checkpoint = |source| PrepareError::Checkpoint {
            claim: name.clone(),
            source,
        };
        if let Some(stored) = self.store.get(&claim.uid).map_err(checkpoint)? {
            tracing::debug!(claim = %name, "already prepared; answering from the checkpoint");
            return Ok(devices_of(&stored));
        }
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &claim.namespace);
        let object = match api.get_opt(&claim.name).await {
            Ok(Some(object)) => object,
            Ok(None) => return Err(PrepareError::NotFound { claim: name }),
            Err(err) => {
                return Err(PrepareError::Fetch {
                    claim: name,
                    message: err.to_string(),
                })
            }
        };
        let plans = plan_claim(
            claim,
            &object,
            &self.driver_name,
            &self.parser,
            crate::unix_now(),
        )?;
        self.store.put(&plans).map_err(checkpoint)?;
        for plan in &plans.plans {
            tracing::info!(
                claim = %name,
                pod = %plan.pod,
                device = %plan.device,
                pool = %plan.pool,
                "prepared"
            );
        }
        Ok(devices_of(&plans))
    }

    fn unprepare_one(&self, claim: &ClaimRef) -> Result<(), PrepareError> {
        let name = claim.to_string();
        let checkpoint = |source| PrepareError::Checkpoint {
            claim: name.clone(),
            source,
        };
        let Some(stored) = self.store.get(&claim.uid).map_err(checkpoint)? else {
            tracing::debug!(claim = %name, "unprepare of an unknown claim: nothing to do");
            return Ok(());
        };
        // Attached, or a write-ahead record of a hand-over that was cut off: the device
        // may be in a pod either way and goes home first (pod stop or synchronize).
        if let Some(plan) = stored
            .plans
            .iter()
            .find(|p| p.placement != crate::state::Placement::Home)
        {
            return Err(PrepareError::StillAttached {
                claim: name,
                device: plan.device.clone(),
                pool: plan.pool.clone(),
                pod: plan.pod.to_string(),
            });
        }
        self.store.remove(&claim.uid).map_err(checkpoint)?;
        tracing::info!(claim = %name, devices = stored.plans.len(), "unprepared");
        Ok(())
    }
}

#[async_trait::async_trait]
impl ClaimPreparer for Preparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let _serial = self.serial.lock().await;
        let mut out = BTreeMap::new();
        for claim in claims {
            let result = self.prepare_one(&claim).await.map_err(|err| {
                tracing::warn!(claim = %claim, "prepare failed: {err}");
                err.to_string()
            });
            out.insert(claim.uid, result);
        }
        out
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let _serial = self.serial.lock().await;
        let mut out = BTreeMap::new();
        for claim in claims {
            let result = self.unprepare_one(&claim).map_err(|err| {
                tracing::warn!(claim = %claim, "unprepare failed: {err}");
                err.to_string()
            });
            out.insert(claim.uid, result);
        }
        out
    }
}

/// The answer kubelet gets for a prepared claim.
pub fn devices_of(plans: &ClaimPlans) -> Vec<PreparedDevice> {
    plans
        .plans
        .iter()
        .map(|plan| PreparedDevice {
            request_names: plan.requests.clone(),
            pool: plan.pool.clone(),
            device: plan.device.clone(),
            cdi_device_ids: Vec::new(),
            share_id: plan.share_id.clone(),
        })
        .collect()
}

/// Plans for this driver's devices of `object`, as kubelet named it in `claim`.
/// Pure: no I/O.
pub fn plan_claim(
    claim: &ClaimRef,
    object: &ResourceClaim,
    driver_name: &str,
    parser: &ConfigParser,
    now: u64,
) -> Result<ClaimPlans, PrepareError> {
    let name = claim.to_string();
    let actual_uid = object.metadata.uid.clone().unwrap_or_default();
    if actual_uid != claim.uid {
        return Err(PrepareError::UidMismatch {
            claim: name,
            expected: claim.uid.clone(),
            actual: actual_uid,
        });
    }
    let status = object.status.as_ref();
    let Some(devices) = status
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
    else {
        return Err(PrepareError::NotAllocated { claim: name });
    };
    let record = ClaimRecord {
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        uid: claim.uid.clone(),
    };

    // This driver's results, one plan per (pool, device), in allocation order.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut by_device: BTreeMap<(String, String), (Vec<String>, Option<String>)> = BTreeMap::new();
    for result in devices.results.iter().flatten() {
        if result.driver != driver_name {
            continue;
        }
        let key = (result.pool.clone(), result.device.clone());
        let entry = by_device.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            (Vec::new(), result.share_id.clone())
        });
        if !entry.0.contains(&result.request) {
            entry.0.push(result.request.clone());
        }
    }
    if order.is_empty() {
        return Ok(ClaimPlans {
            claim: record,
            plans: Vec::new(),
        });
    }

    let pods: Vec<_> = status
        .and_then(|s| s.reserved_for.as_ref())
        .into_iter()
        .flatten()
        .filter(|r| r.resource == "pods" && r.api_group.as_deref().unwrap_or("").is_empty())
        .collect();
    let pod = match pods.as_slice() {
        [] => return Err(PrepareError::NoPod { claim: name }),
        [pod] => PodRecord {
            namespace: claim.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        },
        many => {
            return Err(PrepareError::SharedClaim {
                claim: name,
                count: many.len(),
            })
        }
    };

    // This driver's configs in precedence order: FromClass, then FromClaim.
    let mut configs: Vec<(
        usize,
        &k8s_openapi::api::resource::v1::DeviceAllocationConfiguration,
    )> = devices
        .config
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| c.opaque.as_ref().is_some_and(|o| o.driver == driver_name))
        .collect();
    configs.sort_by_key(|(index, c)| (c.source != "FromClass", *index));

    let mut plans = Vec::with_capacity(order.len());
    for key in order {
        let Some((requests, share_id)) = by_device.remove(&key) else {
            continue;
        };
        let (pool, device) = key;
        let applicable: Vec<(usize, &Value)> = configs
            .iter()
            .filter(|(_, c)| applies_to(c.requests.as_deref(), &requests))
            .filter_map(|(index, c)| c.opaque.as_ref().map(|o| (*index, &o.parameters.0)))
            .collect();
        let config_error = |message: String| PrepareError::Config {
            claim: name.clone(),
            device: device.clone(),
            request: requests.join(","),
            message,
        };
        let mut merged = Value::Object(Default::default());
        for (index, parameters) in &applicable {
            let prefix = format!("status.allocation.devices.config[{index}].opaque.parameters");
            (parser.structure)(parameters, &prefix).map_err(config_error)?;
            merge(&mut merged, parameters);
        }
        let prefix = match applicable.as_slice() {
            [(index, _)] => format!("status.allocation.devices.config[{index}].opaque.parameters"),
            _ => "parameters".to_owned(),
        };
        let valid = match (parser.full)(&merged, &prefix) {
            Ok(valid) => valid,
            Err(message) => {
                let message = if applicable.len() > 1 {
                    let sources: Vec<String> = applicable
                        .iter()
                        .map(|(index, _)| format!("config[{index}]"))
                        .collect();
                    format!(
                        "{message} (merged from status.allocation.devices.{})",
                        sources.join(", ")
                    )
                } else {
                    message
                };
                return Err(config_error(message));
            }
        };
        plans.push(Plan {
            claim: record.clone(),
            pod: pod.clone(),
            device,
            pool,
            requests,
            config: merged,
            valid,
            placement: Default::default(),
            staged: false,
            parked: false,
            share_id,
            prepared_at: now,
        });
    }
    Ok(ClaimPlans {
        claim: record,
        plans,
    })
}

/// Whether a config entry with these `requests` applies to a device allocated for
/// `device_requests`. No list means every request; `req` also matches its
/// sub-requests (`req/sub`).
fn applies_to(config_requests: Option<&[String]>, device_requests: &[String]) -> bool {
    match config_requests {
        None | Some([]) => true,
        Some(listed) => device_requests.iter().any(|request| {
            let parent = request.split('/').next().unwrap_or(request);
            listed.iter().any(|l| l == request || l == parent)
        }),
    }
}

/// Deep merge: objects merge key by key, anything else is replaced by `overlay`.
fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(value: Value) -> ResourceClaim {
        serde_json::from_value(value).unwrap()
    }

    fn strict_parser() -> ConfigParser {
        let check: ConfigCheck = Arc::new(|value, prefix| {
            let Some(obj) = value.as_object() else {
                return Err(format!("{prefix}: expected an object"));
            };
            for key in obj.keys() {
                if !["interface", "routes", "dataplane"].contains(&key.as_str()) {
                    return Err(format!("{prefix}.{key}: unknown field"));
                }
            }
            Ok(())
        });
        ConfigParser {
            structure: check.clone(),
            full: Arc::new(move |value, prefix| check(value, prefix).map(|()| None)),
        }
    }

    fn allocated(configs: Value, reserved: Value) -> ResourceClaim {
        claim(json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
            "spec": {},
            "status": {
                "allocation": {"devices": {
                    "results": [
                        {"request": "nic", "driver": "netclaim.dev", "pool": "node-a", "device": "eth1"},
                        {"request": "gpu", "driver": "gpu.example.com", "pool": "node-a", "device": "gpu0"},
                        {"request": "nic2", "driver": "netclaim.dev", "pool": "node-a", "device": "eth2"}
                    ],
                    "config": configs
                }},
                "reservedFor": reserved
            }
        }))
    }

    fn cref() -> ClaimRef {
        ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: "u1".into(),
        }
    }

    fn one_pod() -> Value {
        json!([{"resource": "pods", "name": "p", "uid": "pu"}])
    }

    #[test]
    fn merges_class_then_claim_configs_per_request() {
        let object = allocated(
            json!([
                {"source": "FromClaim", "requests": ["nic"], "opaque": {"driver": "netclaim.dev", "parameters": {"interface": {"mtu": 9000}}}},
                {"source": "FromClass", "opaque": {"driver": "netclaim.dev", "parameters": {"interface": {"mtu": 1500, "name": "net1"}, "dataplane": {"enforceRoutes": true}}}},
                {"source": "FromClaim", "requests": ["nic"], "opaque": {"driver": "other.dev", "parameters": {"bogus": 1}}}
            ]),
            one_pod(),
        );
        let plans = plan_claim(&cref(), &object, "netclaim.dev", &strict_parser(), 7).unwrap();
        assert_eq!(plans.plans.len(), 2);
        let eth1 = &plans.plans[0];
        assert_eq!(eth1.device, "eth1");
        assert_eq!(eth1.requests, vec!["nic"]);
        assert_eq!(eth1.pod.name, "p");
        assert_eq!(
            eth1.config,
            json!({"interface": {"mtu": 9000, "name": "net1"}, "dataplane": {"enforceRoutes": true}})
        );
        let eth2 = &plans.plans[1];
        assert_eq!(
            eth2.config,
            json!({"interface": {"mtu": 1500, "name": "net1"}, "dataplane": {"enforceRoutes": true}})
        );
    }

    #[test]
    fn bad_config_names_claim_device_and_field() {
        let object = allocated(
            json!([{"source": "FromClaim", "requests": ["nic2"], "opaque": {"driver": "netclaim.dev", "parameters": {"interfaec": {}}}}]),
            one_pod(),
        );
        let err = plan_claim(&cref(), &object, "netclaim.dev", &strict_parser(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("claim ns/c"), "{err}");
        assert!(err.contains("eth2"), "{err}");
        assert!(
            err.contains("status.allocation.devices.config[0].opaque.parameters.interfaec"),
            "{err}"
        );
    }

    #[test]
    fn shared_claim_is_refused() {
        let object = allocated(
            json!([]),
            json!([
                {"resource": "pods", "name": "p", "uid": "pu"},
                {"resource": "pods", "name": "q", "uid": "qu"}
            ]),
        );
        let err = plan_claim(&cref(), &object, "netclaim.dev", &strict_parser(), 0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "claim ns/c is reserved for 2 pods; netclaim devices are exclusive"
        );
    }

    #[test]
    fn uid_mismatch_and_unallocated() {
        let mut other = cref();
        other.uid = "u2".into();
        let object = allocated(json!([]), one_pod());
        let err = plan_claim(&other, &object, "netclaim.dev", &strict_parser(), 0).unwrap_err();
        assert!(matches!(err, PrepareError::UidMismatch { .. }));
        let bare =
            claim(json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u1"}, "spec": {}}));
        let err = plan_claim(&cref(), &bare, "netclaim.dev", &strict_parser(), 0).unwrap_err();
        assert!(matches!(err, PrepareError::NotAllocated { .. }));
    }

    #[test]
    fn sub_requests_match_their_parent() {
        assert!(applies_to(Some(&["nic".into()]), &["nic/fast".into()]));
        assert!(!applies_to(Some(&["nic".into()]), &["other".into()]));
        assert!(applies_to(Some(&[]), &["x".into()]));
        assert!(applies_to(None, &["x".into()]));
    }
}
