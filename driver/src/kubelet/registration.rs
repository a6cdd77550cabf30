//! Plugin registration (PROTOCOLS.md §1): the `pluginregistration.Registration`
//! service on `<kubelet-dir>/plugins_registry/<driver>-reg.sock`.
//!
//! Kubelet finds the socket, asks `GetInfo` (type `DRAPlugin`, the DRA socket's path,
//! the versions served) and reports back with `NotifyRegistrationStatus`. A success
//! makes the plugin ready. A refusal is logged, makes it not ready, and the socket is
//! removed and created again after a backoff (doubling, capped) so that kubelet's
//! directory watch sees a new plugin and retries.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use super::proto::pluginregistration::{
    registration_server::{Registration, RegistrationServer},
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use super::socket::{SocketError, SocketGuard};
use super::{stopped, KubeletPluginConfig, SUPPORTED_VERSIONS};

/// Where the handshake with kubelet stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// The registration socket is up; kubelet has not answered yet.
    Waiting { attempt: u32 },
    /// Kubelet accepted the plugin.
    Registered { attempt: u32 },
    /// Kubelet refused the plugin; the socket comes back after a backoff.
    Refused { attempt: u32, error: String },
}

impl RegistrationState {
    pub fn is_registered(&self) -> bool {
        matches!(self, Self::Registered { .. })
    }

    /// 1 for the first registration socket, +1 for every re-creation.
    pub fn attempt(&self) -> u32 {
        match self {
            Self::Waiting { attempt }
            | Self::Registered { attempt }
            | Self::Refused { attempt, .. } => *attempt,
        }
    }
}

/// The gRPC service kubelet talks to during registration.
pub struct RegistrationService {
    driver_name: String,
    endpoint: PathBuf,
    attempt: u32,
    state: watch::Sender<RegistrationState>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!(driver = %self.driver_name, "kubelet asked for plugin info");
        Ok(Response::new(PluginInfo {
            r#type: "DRAPlugin".into(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.to_string_lossy().into_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let attempt = self.attempt;
        if status.plugin_registered && status.error.is_empty() {
            tracing::info!(driver = %self.driver_name, attempt, "kubelet registered the plugin");
            self.state
                .send_replace(RegistrationState::Registered { attempt });
        } else {
            let error = if status.error.is_empty() {
                "kubelet reported the plugin as not registered".to_owned()
            } else {
                status.error
            };
            tracing::error!(
                driver = %self.driver_name,
                attempt,
                "kubelet refused the plugin registration: {error}; not ready, will register again"
            );
            self.state
                .send_replace(RegistrationState::Refused { attempt, error });
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Binds the registration socket and spawns the loop that serves it and re-creates it
/// after refusals.
pub(crate) fn start(
    config: KubeletPluginConfig,
    endpoint: PathBuf,
    stop: watch::Receiver<bool>,
) -> Result<(watch::Receiver<RegistrationState>, JoinHandle<()>), SocketError> {
    let path = config.registration_socket();
    let guard = SocketGuard::bind(&path)?;
    let (state, state_rx) = watch::channel(RegistrationState::Waiting { attempt: 1 });
    let task = tokio::spawn(registration_loop(config, endpoint, guard, state, stop));
    Ok((state_rx, task))
}

async fn registration_loop(
    config: KubeletPluginConfig,
    endpoint: PathBuf,
    first: SocketGuard,
    state: watch::Sender<RegistrationState>,
    stop: watch::Receiver<bool>,
) {
    let path = config.registration_socket();
    let mut guard = Some(first);
    let mut attempt = 1u32;
    let mut backoff = config.registration_backoff;
    loop {
        if let Some(mut socket) = guard.take() {
            state.send_replace(RegistrationState::Waiting { attempt });
            let refused = serve_once(&config, &endpoint, &mut socket, attempt, &state, &stop).await;
            drop(socket);
            if *stop.borrow() || !refused {
                return;
            }
        }
        // Refused (or the socket could not be bound): wait, then offer a new socket.
        tracing::info!(
            socket = %path.display(),
            "registering again in {}",
            humanize(backoff)
        );
        tokio::select! {
            _ = stopped(stop.clone()) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(config.max_registration_backoff);
        attempt += 1;
        match SocketGuard::bind(&path) {
            Ok(socket) => guard = Some(socket),
            Err(err) => tracing::error!("cannot re-create the registration socket: {err}"),
        }
    }
}

/// Serves one registration socket until stop (returns false) or a refusal (true).
async fn serve_once(
    config: &KubeletPluginConfig,
    endpoint: &std::path::Path,
    socket: &mut SocketGuard,
    attempt: u32,
    state: &watch::Sender<RegistrationState>,
    stop: &watch::Receiver<bool>,
) -> bool {
    let Some(listener) = socket.take_listener() else {
        return true;
    };
    let service = RegistrationService {
        driver_name: config.driver_name.clone(),
        endpoint: endpoint.to_owned(),
        attempt,
        state: state.clone(),
    };
    let mut refusals = state.subscribe();
    let stop_signal = stopped(stop.clone());
    let refused_signal = async move {
        let _ = refusals
            .wait_for(|s| matches!(s, RegistrationState::Refused { .. }))
            .await;
    };
    let result = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(service))
        .serve_with_incoming_shutdown(
            super::authority::incoming(listener, socket.path()),
            async move {
                tokio::select! {
                    _ = stop_signal => {}
                    _ = refused_signal => {}
                }
            },
        )
        .await;
    if let Err(err) = result {
        tracing::error!(socket = %socket.path().display(), "registration server failed: {err}");
        return true;
    }
    matches!(*state.borrow(), RegistrationState::Refused { .. })
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
