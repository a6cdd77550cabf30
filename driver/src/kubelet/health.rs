//! The health stream (PROTOCOLS.md §3): `v1alpha1.DRAResourceHealth.NodeWatchResources`.
//!
//! The driver keeps the health of its devices in a `tokio::sync::watch` of
//! [`DeviceHealth`]; every watcher gets the full list when it connects and again on
//! every change. Streams end when the plugin stops.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::proto::health_v1alpha1::{
    dra_resource_health_server::DraResourceHealth, DeviceHealth as WireDeviceHealth,
    DeviceIdentifier, HealthStatus, NodeWatchResourcesRequest, NodeWatchResourcesResponse,
};
use super::stopped;

/// Health of one published device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceHealth {
    pub pool: String,
    pub device: String,
    pub healthy: bool,
}

/// Serves `NodeWatchResources` from a watch channel.
pub struct HealthService {
    devices: watch::Receiver<Vec<DeviceHealth>>,
    stop: watch::Receiver<bool>,
}

impl HealthService {
    pub fn new(devices: watch::Receiver<Vec<DeviceHealth>>, stop: watch::Receiver<bool>) -> Self {
        Self { devices, stop }
    }
}

type HealthStream =
    Pin<Box<dyn Stream<Item = Result<NodeWatchResourcesResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = HealthStream;

    async fn node_watch_resources(
        &self,
        _: Request<NodeWatchResourcesRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        tracing::debug!("kubelet watches device health");
        // The current list first, then the list again after every change.
        let stream = futures::stream::unfold(
            (self.devices.clone(), true),
            |(mut devices, first)| async move {
                if !first && devices.changed().await.is_err() {
                    return None;
                }
                let message = to_wire(&devices.borrow_and_update());
                Some((Ok(message), (devices, false)))
            },
        )
        .take_until(stopped(self.stop.clone()));
        Ok(Response::new(Box::pin(stream)))
    }
}

fn to_wire(devices: &[DeviceHealth]) -> NodeWatchResourcesResponse {
    let now = i64::try_from(crate::unix_now()).unwrap_or(i64::MAX);
    NodeWatchResourcesResponse {
        devices: devices
            .iter()
            .map(|d| WireDeviceHealth {
                device: Some(DeviceIdentifier {
                    pool_name: d.pool.clone(),
                    device_name: d.device.clone(),
                }),
                health: if d.healthy {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                } as i32,
                last_updated_time: now,
                health_check_timeout_seconds: 0,
            })
            .collect(),
    }
}
