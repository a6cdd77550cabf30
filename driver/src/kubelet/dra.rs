//! The DRA services (PROTOCOLS.md §2): `v1.DRAPlugin` and `v1beta1.DRAPlugin` on
//! `<kubelet-dir>/plugins/<driver>/dra.sock`, plus the health stream ([`super::health`])
//! on the same socket.
//!
//! Both versions translate to [`ClaimRef`]s and back and delegate to one
//! [`ClaimPreparer`]. A claim that fails only fills that claim's `error`; the call
//! itself succeeds, unless the request is one kubelet never sends ([`check_claims`]:
//! more than [`MAX_CLAIMS_PER_CALL`] claims, a namespace, name or UID no API object
//! can have): then it fails with `INVALID_ARGUMENT` naming the field, and the preparer
//! is not called. (Undecodable or oversized messages never get here: tonic answers
//! them with `INTERNAL` or `OUT_OF_RANGE`.)

use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::health::{DeviceHealth, HealthService};
use super::proto::health_v1alpha1::dra_resource_health_server::DraResourceHealthServer;
use super::proto::{dra_v1, dra_v1beta1};
use super::socket::SocketGuard;
use super::{stopped, ClaimPreparer, ClaimRef, PreparedDevice};

/// One preparer behind both versions of the DRA service.
#[derive(Clone)]
pub struct DraService {
    preparer: Arc<dyn ClaimPreparer>,
}

impl DraService {
    pub fn new(preparer: Arc<dyn ClaimPreparer>) -> Self {
        Self { preparer }
    }
}

/// Serves DRA v1, v1beta1 and health on the DRA socket until `stop`.
pub(crate) async fn run(
    mut socket: SocketGuard,
    preparer: Arc<dyn ClaimPreparer>,
    health: watch::Receiver<Vec<DeviceHealth>>,
    stop: watch::Receiver<bool>,
) {
    let Some(listener) = socket.take_listener() else {
        return;
    };
    let service = DraService::new(preparer);
    tracing::info!(socket = %socket.path().display(), "serving DRA v1, v1beta1 and health");
    let result = tonic::transport::Server::builder()
        .add_service(dra_v1::dra_plugin_server::DraPluginServer::new(
            service.clone(),
        ))
        .add_service(dra_v1beta1::dra_plugin_server::DraPluginServer::new(
            service,
        ))
        .add_service(DraResourceHealthServer::new(HealthService::new(
            health,
            stop.clone(),
        )))
        .serve_with_incoming_shutdown(
            super::authority::incoming(listener, socket.path()),
            stopped(stop),
        )
        .await;
    if let Err(err) = result {
        tracing::error!(socket = %socket.path().display(), "DRA server failed: {err}");
    }
}

macro_rules! dra_version {
    ($version:ident, $to_device:ident) => {
        #[tonic::async_trait]
        impl $version::dra_plugin_server::DraPlugin for DraService {
            async fn node_prepare_resources(
                &self,
                request: Request<$version::NodePrepareResourcesRequest>,
            ) -> Result<Response<$version::NodePrepareResourcesResponse>, Status> {
                let claims: Vec<ClaimRef> = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(claim_ref)
                    .collect();
                check_claims(&claims).map_err(refused)?;
                tracing::debug!(version = stringify!($version), "NodePrepareResources");
                let results = self.preparer.prepare(claims).await;
                let claims = results
                    .into_iter()
                    .map(|(uid, result)| {
                        let answer = match result {
                            Ok(devices) => $version::NodePrepareResourceResponse {
                                devices: devices.into_iter().map($to_device).collect(),
                                error: String::new(),
                            },
                            Err(error) => $version::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error,
                            },
                        };
                        (uid, answer)
                    })
                    .collect();
                Ok(Response::new($version::NodePrepareResourcesResponse {
                    claims,
                }))
            }

            async fn node_unprepare_resources(
                &self,
                request: Request<$version::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$version::NodeUnprepareResourcesResponse>, Status> {
                let claims: Vec<ClaimRef> = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(claim_ref)
                    .collect();
                check_claims(&claims).map_err(refused)?;
                tracing::debug!(version = stringify!($version), "NodeUnprepareResources");
                let results = self.preparer.unprepare(claims).await;
                let claims = results
                    .into_iter()
                    .map(|(uid, result)| {
                        let error = result.err().unwrap_or_default();
                        (uid, $version::NodeUnprepareResourceResponse { error })
                    })
                    .collect();
                Ok(Response::new($version::NodeUnprepareResourcesResponse {
                    claims,
                }))
            }
        }
    };
}

dra_version!(dra_v1, v1_device);
dra_version!(dra_v1beta1, v1beta1_device);

fn v1_device(d: PreparedDevice) -> dra_v1::Device {
    dra_v1::Device {
        request_names: d.request_names,
        pool_name: d.pool,
        device_name: d.device,
        cdi_device_ids: d.cdi_device_ids,
        share_id: d.share_id,
    }
}

/// v1beta1 has no `share_id`.
fn v1beta1_device(d: PreparedDevice) -> dra_v1beta1::Device {
    dra_v1beta1::Device {
        request_names: d.request_names,
        pool_name: d.pool,
        device_name: d.device,
        cdi_device_ids: d.cdi_device_ids,
    }
}

trait WireClaim {
    fn into_ref(self) -> ClaimRef;
}

impl WireClaim for dra_v1::Claim {
    fn into_ref(self) -> ClaimRef {
        ClaimRef {
            namespace: self.namespace,
            name: self.name,
            uid: self.uid,
        }
    }
}

impl WireClaim for dra_v1beta1::Claim {
    fn into_ref(self) -> ClaimRef {
        ClaimRef {
            namespace: self.namespace,
            name: self.name,
            uid: self.uid,
        }
    }
}

fn claim_ref(claim: impl WireClaim) -> ClaimRef {
    claim.into_ref()
}

/// The most claims one call may name. Kubelet sends the claims of one pod that hold
/// devices of this driver on this node, and each holds at least one of the node's
/// network devices: a thousand is far past any node, and the bound keeps a caller
/// from making the preparer read 100,000 claims from the API server in one call.
pub const MAX_CLAIMS_PER_CALL: usize = 1024;
/// Longest claim UID taken (the API server's are 36-character UUIDs).
pub const MAX_UID_LEN: usize = 128;

/// Why a prepare or unprepare request was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimListError {
    #[error("claims: {count} in one call; at most {MAX_CLAIMS_PER_CALL}")]
    TooMany { count: usize },
    #[error("claims[{index}].{field}: {problem}")]
    Field {
        index: usize,
        field: &'static str,
        problem: String,
    },
}

/// Checks what kubelet names in a call against what an API object can have: at most
/// [`MAX_CLAIMS_PER_CALL`] claims, each with a namespace that is a DNS label, a name
/// that is a DNS subdomain (the API server's rules for both) and a UID of printable
/// ASCII, 1 to [`MAX_UID_LEN`] bytes. The first problem is reported.
pub fn check_claims(claims: &[ClaimRef]) -> Result<(), ClaimListError> {
    if claims.len() > MAX_CLAIMS_PER_CALL {
        return Err(ClaimListError::TooMany {
            count: claims.len(),
        });
    }
    for (index, claim) in claims.iter().enumerate() {
        let field = |field, problem: Option<String>| match problem {
            Some(problem) => Err(ClaimListError::Field {
                index,
                field,
                problem,
            }),
            None => Ok(()),
        };
        field("namespace", dns_label_problem(&claim.namespace, 63))?;
        field("name", dns_subdomain_problem(&claim.name))?;
        field("uid", uid_problem(&claim.uid))?;
    }
    Ok(())
}

fn length_problem(value: &str, max: usize) -> Option<String> {
    (value.is_empty() || value.len() > max)
        .then(|| format!("must be 1 to {max} characters, not {}", value.len()))
}

/// RFC 1123 label as Kubernetes checks it: lowercase letters, digits and `-`,
/// starting and ending with a letter or digit.
fn dns_label_problem(value: &str, max: usize) -> Option<String> {
    length_problem(value, max).or_else(|| {
        let b = value.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = b.iter().all(|c| alnum(c) || *c == b'-')
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum);
        (!ok).then(|| {
            "must be a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)".to_string()
        })
    })
}

/// RFC 1123 subdomain as Kubernetes checks it: at most 253 characters, labels joined
/// by `.`.
fn dns_subdomain_problem(value: &str) -> Option<String> {
    length_problem(value, 253).or_else(|| {
        value
            .split('.')
            .any(|label| dns_label_problem(label, 253).is_some())
            .then(|| {
                "must be a DNS subdomain (lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit)".to_string()
            })
    })
}

fn uid_problem(value: &str) -> Option<String> {
    length_problem(value, MAX_UID_LEN).or_else(|| {
        (!value.bytes().all(|c| c.is_ascii_graphic()))
            .then(|| "must be printable ASCII without spaces".to_string())
    })
}

fn refused(err: ClaimListError) -> Status {
    tracing::warn!("refused a DRA call: {err}");
    Status::invalid_argument(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(namespace: &str, name: &str, uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn claims_kubelet_sends_pass() {
        let claims = [
            claim("default", "web", "uid-1"),
            claim(
                "kube-system",
                "pod-0-nic.v2",
                "6f1c2a9e-0000-4000-8000-00000000000a",
            ),
            claim(&"a".repeat(63), &"b".repeat(253), &"c".repeat(128)),
        ];
        assert_eq!(check_claims(&claims), Ok(()));
        assert_eq!(check_claims(&[]), Ok(()));
        let many = vec![claim("default", "web", "uid-1"); MAX_CLAIMS_PER_CALL];
        assert_eq!(check_claims(&many), Ok(()));
    }

    #[test]
    fn each_problem_names_its_field() {
        let many = vec![claim("default", "web", "uid-1"); MAX_CLAIMS_PER_CALL + 1];
        assert_eq!(
            check_claims(&many).unwrap_err().to_string(),
            "claims: 1025 in one call; at most 1024"
        );
        let cases = [
            (
                claim("", "web", "u"),
                "claims[1].namespace: must be 1 to 63 characters, not 0",
            ),
            (
                claim(&"a".repeat(64), "web", "u"),
                "claims[1].namespace: must be 1 to 63",
            ),
            (
                claim("Default", "web", "u"),
                "claims[1].namespace: must be a DNS label",
            ),
            (
                claim("-x", "web", "u"),
                "claims[1].namespace: must be a DNS label",
            ),
            (
                claim("a.b", "web", "u"),
                "claims[1].namespace: must be a DNS label",
            ),
            (
                claim("default", "", "u"),
                "claims[1].name: must be 1 to 253",
            ),
            (
                claim("default", &"x".repeat(3 << 20), "u"),
                "claims[1].name: must be 1 to 253 characters, not 3145728",
            ),
            (
                claim("default", "a..b", "u"),
                "claims[1].name: must be a DNS subdomain",
            ),
            (
                claim("default", "web.", "u"),
                "claims[1].name: must be a DNS subdomain",
            ),
            (
                claim("default", "wéb", "u"),
                "claims[1].name: must be a DNS subdomain",
            ),
            (
                claim("default", "web", ""),
                "claims[1].uid: must be 1 to 128",
            ),
            (
                claim("default", "web", &"u".repeat(129)),
                "claims[1].uid: must be 1 to 128",
            ),
            (
                claim("default", "web", "a b"),
                "claims[1].uid: must be printable ASCII",
            ),
            (
                claim("default", "web", "a\nb"),
                "claims[1].uid: must be printable ASCII",
            ),
        ];
        for (bad, expected) in cases {
            let got = check_claims(&[claim("default", "web", "uid-1"), bad.clone()])
                .expect_err(expected)
                .to_string();
            assert!(got.starts_with(expected), "{bad:?}: {got}");
        }
    }
}
