//! The DRA services (PROTOCOLS.md §2): `v1.DRAPlugin` and `v1beta1.DRAPlugin` on
//! `<kubelet-dir>/plugins/<driver>/dra.sock`, plus the health stream ([`super::health`])
//! on the same socket.
//!
//! Both versions translate to [`ClaimRef`]s and back and delegate to one
//! [`ClaimPreparer`]. A claim that fails only fills that claim's `error`; the call
//! itself always succeeds.

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
                let claims = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(claim_ref)
                    .collect();
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
                let claims = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(claim_ref)
                    .collect();
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
