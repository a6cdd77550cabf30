//! The NRI plugin: what happens between the runtime and netclaim when a pod sandbox
//! starts, stops or goes away.
//!
//! A session, top down: connect to the runtime's socket, split it with the
//! [`mux`](super::mux), call `Runtime/RegisterPlugin` on conn 2, then serve `Plugin` on
//! conn 1 — `Configure` (answer the events mask [`EVENT_MASK`](super::EVENT_MASK) and
//! remember the hook budget), `Synchronize` (hand the existing pods to the handler),
//! `RunPodSandbox`/`StopPodSandbox`/`RemovePodSandbox` (NRI >= 0.12) and `StateChange`
//! (every version) to the [`PodHandler`]. A handler error becomes a ttrpc error status,
//! so the runtime fails the sandbox visibly. When the runtime goes away the plugin
//! reconnects with a capped exponential backoff, cut short as soon as a new socket
//! appears at the path (a restarted runtime); [`NriPlugin::connected`] follows it.
//!
//! This file owns the session and the dispatch; it does not touch namespaces, links or
//! the datapath — that is the handler's job.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::api::{
    self, ConfigureRequest, ConfigureResponse, Empty, Event, PodSandbox, RegisterPluginRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StateChangeEvent, StopPodSandboxRequest,
    SynchronizeRequest, SynchronizeResponse,
};
use super::mux::{Mux, MuxError, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use super::ttrpc::{self, code, Client, Status, TtrpcError};
use super::{EVENT_MASK, PLUGIN_SERVICE, RUNTIME_SERVICE};

/// NRI API version sent at registration.
pub const NRI_VERSION: &str = "v0.12.0";

/// What netclaim does with pod events. Errors are shown to the runtime (and thus in the
/// pod's events) as the hook's failure message.
#[async_trait::async_trait]
pub trait PodHandler: Send + Sync {
    /// The sandbox exists and its network namespace is set up; attach devices now,
    /// within `budget` (the runtime's request timeout, from this hook's arrival).
    async fn run_pod(&self, pod: &PodSandbox, budget: Option<Duration>) -> Result<(), String>;
    /// The sandbox is stopping; give devices back.
    async fn stop_pod(&self, pod: &PodSandbox) -> Result<(), String>;
    /// The sandbox is gone; forget it.
    async fn remove_pod(&self, pod: &PodSandbox) -> Result<(), String>;
    /// The pods that exist when the plugin (re)connects.
    async fn synchronize(&self, pods: &[PodSandbox]);
}

/// Why the plugin cannot start or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    #[error("NRI plugin index {0:?} must be exactly two digits")]
    InvalidIndex(String),
    #[error("NRI plugin name must not be empty")]
    EmptyName,
    #[error("cannot connect to the NRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NRI multiplexer: {0}")]
    Mux(#[from] MuxError),
    #[error("NRI registration as {name} ({idx}) failed: {source}")]
    Register {
        name: String,
        idx: String,
        #[source]
        source: TtrpcError,
    },
}

/// How to reach the runtime and how patiently.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub socket_path: PathBuf,
    pub name: String,
    /// Two digits, "00".."99"; orders plugins in the runtime.
    pub idx: String,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long RegisterPlugin may take.
    pub registration_timeout: Duration,
}

impl PluginConfig {
    pub fn new(
        socket_path: impl Into<PathBuf>,
        name: impl Into<String>,
        idx: impl Into<String>,
    ) -> PluginConfig {
        PluginConfig {
            socket_path: socket_path.into(),
            name: name.into(),
            idx: idx.into(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(5),
        }
    }

    fn validate(&self) -> Result<(), NriError> {
        if self.name.is_empty() {
            return Err(NriError::EmptyName);
        }
        if self.idx.len() != 2 || !self.idx.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NriError::InvalidIndex(self.idx.clone()));
        }
        Ok(())
    }
}

/// A running NRI plugin. It keeps (re)connecting until dropped.
pub struct NriPlugin {
    connected: watch::Receiver<bool>,
    request_timeout: Arc<StdMutex<Option<Duration>>>,
    task: JoinHandle<()>,
}

impl NriPlugin {
    /// Starts the plugin with default backoff; must be called inside a tokio runtime.
    /// Returns at once; [`connected`](Self::connected) says when it is registered.
    pub fn connect(
        socket_path: impl Into<PathBuf>,
        name: impl Into<String>,
        idx: impl Into<String>,
        handler: Arc<dyn PodHandler>,
    ) -> Result<NriPlugin, NriError> {
        NriPlugin::start(PluginConfig::new(socket_path, name, idx), handler)
    }

    /// Starts the plugin with an explicit configuration.
    pub fn start(
        config: PluginConfig,
        handler: Arc<dyn PodHandler>,
    ) -> Result<NriPlugin, NriError> {
        config.validate()?;
        let (connected_tx, connected) = watch::channel(false);
        let request_timeout = Arc::new(StdMutex::new(None));
        let task = tokio::spawn(reconnect_loop(
            config,
            handler,
            connected_tx,
            request_timeout.clone(),
        ));
        Ok(NriPlugin {
            connected,
            request_timeout,
            task,
        })
    }

    /// `true` while registered with a runtime; for readiness.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// [`Self::request_timeout`], readable from elsewhere (the hand-overs started at the
    /// CNI ADD run under the budget of the hook that collects them).
    pub fn request_timeout_handle(&self) -> impl Fn() -> Option<Duration> + Send + Sync + 'static {
        let timeout = self.request_timeout.clone();
        move || {
            *timeout
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    /// The per-hook budget the runtime announced in Configure, if any yet.
    pub fn request_timeout(&self) -> Option<Duration> {
        *self
            .request_timeout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for NriPlugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn reconnect_loop(
    config: PluginConfig,
    handler: Arc<dyn PodHandler>,
    connected: watch::Sender<bool>,
    request_timeout: Arc<StdMutex<Option<Duration>>>,
) {
    let mut delay = config.backoff_initial;
    // The socket the attempts go to, and when it was first seen.
    let mut seen: Option<((u64, u64), std::time::Instant)> = None;
    loop {
        let service = Arc::new(PluginService {
            handler: handler.clone(),
            request_timeout: request_timeout.clone(),
            sync_pods: StdMutex::new(Vec::new()),
        });
        if let Some(id) = socket_identity(&config.socket_path) {
            if seen.is_none_or(|(was, _)| was != id) {
                // A socket not seen before: a (re)started runtime, a new backoff.
                seen = Some((id, std::time::Instant::now()));
                delay = config.backoff_initial;
            }
        }
        let ended = session(&config, service, &connected).await;
        connected.send_replace(false);
        let tried = socket_identity(&config.socket_path);
        let fresh_for = match (tried, seen) {
            (Some(id), Some((was, at))) if id == was => Some(at.elapsed()),
            _ => None,
        };
        match ended {
            Ok(()) => {
                tracing::info!(socket = %config.socket_path.display(), "NRI runtime disconnected");
                delay = config.backoff_initial;
            }
            Err(err) => {
                let next = after_failure(fresh_for, delay);
                tracing::debug!(error = %err, retry_in = ?next.wait(), "NRI connection failed");
                if let AfterFailure::Soon(wait) = next {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        wait_for_new_socket(&config.socket_path, tried, delay).await;
        delay = (delay * 2).min(config.backoff_max);
    }
}

/// How often the socket path is looked at while waiting to reconnect.
const SOCKET_WATCH: Duration = Duration::from_millis(20);

/// How long a socket that just appeared is retried every [`SOCKET_WATCH`] before the
/// backoff applies to it: a runtime creates the socket file (`bind`) before it listens
/// and serves, and a connection inside that window is refused (on a loaded node it
/// lasts milliseconds and more).
const FRESH_SOCKET: Duration = Duration::from_secs(1);

/// What the reconnect loop does after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// Try the same socket again after this short wait.
    Soon(Duration),
    /// Wait out the backoff (cut short by a new socket).
    Backoff(Duration),
}

impl AfterFailure {
    fn wait(self) -> Duration {
        match self {
            AfterFailure::Soon(d) | AfterFailure::Backoff(d) => d,
        }
    }
}

/// After a failed attempt: a socket that appeared less than [`FRESH_SOCKET`] ago
/// (`fresh_for`, `None` when there is none) is tried again soon; otherwise the backoff.
fn after_failure(fresh_for: Option<Duration>, backoff: Duration) -> AfterFailure {
    match fresh_for {
        Some(age) if age < FRESH_SOCKET => AfterFailure::Soon(SOCKET_WATCH),
        _ => AfterFailure::Backoff(backoff),
    }
}

/// The socket file's identity (device, inode), if it exists.
fn socket_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Waits up to `backoff` before the next attempt, but returns as soon as a socket
/// appears at `path` that is not the one the last attempt used: a restarted runtime
/// (containerd removes and recreates its NRI socket) is reconnected within
/// [`SOCKET_WATCH`], not after the backoff; a runtime that keeps refusing on the same
/// socket still gets the backoff.
async fn wait_for_new_socket(path: &std::path::Path, tried: Option<(u64, u64)>, backoff: Duration) {
    let deadline = tokio::time::Instant::now() + backoff;
    while tokio::time::Instant::now() < deadline {
        let now = socket_identity(path);
        if now.is_some() && now != tried {
            return;
        }
        tokio::time::sleep(SOCKET_WATCH.min(backoff)).await;
    }
}

/// One connection to the runtime, from connect to disconnect. `Ok` means the plugin was
/// registered and the runtime later went away.
async fn session(
    config: &PluginConfig,
    service: Arc<PluginService>,
    connected: &watch::Sender<bool>,
) -> Result<(), NriError> {
    let stream = UnixStream::connect(&config.socket_path)
        .await
        .map_err(|source| NriError::Connect {
            path: config.socket_path.clone(),
            source,
        })?;
    let (mux, mut conns) = Mux::start(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])?;
    let (Some(runtime_conn), Some(plugin_conn)) = (conns.pop(), conns.pop()) else {
        return Err(NriError::Mux(MuxError::ReservedConn));
    };
    let mut server = tokio::spawn(ttrpc::serve(plugin_conn, service));
    let client = Client::new(runtime_conn);
    let register = RegisterPluginRequest {
        plugin_name: config.name.clone(),
        plugin_idx: config.idx.clone(),
        nri_version: NRI_VERSION.to_string(),
    };
    let registered = client
        .call::<_, Empty>(
            RUNTIME_SERVICE,
            "RegisterPlugin",
            &register,
            Some(config.registration_timeout),
        )
        .await;
    if let Err(source) = registered {
        server.abort();
        return Err(NriError::Register {
            name: config.name.clone(),
            idx: config.idx.clone(),
            source,
        });
    }
    tracing::info!(socket = %config.socket_path.display(), name = %config.name, idx = %config.idx, "NRI plugin registered");
    connected.send_replace(true);
    tokio::select! {
        _ = mux.closed() => {}
        ended = &mut server => {
            if let Ok(Err(err)) = ended {
                tracing::debug!(error = %err, "NRI plugin service ended");
            }
        }
    }
    server.abort();
    Ok(())
}

/// The `Plugin` ttrpc service of one session.
struct PluginService {
    handler: Arc<dyn PodHandler>,
    request_timeout: Arc<StdMutex<Option<Duration>>>,
    /// Pods of a Synchronize split over several calls (`more = true`).
    sync_pods: StdMutex<Vec<PodSandbox>>,
}

/// The hook as containerd's logs and CRI errors spell it.
fn hook_name(event: Event) -> &'static str {
    match event {
        Event::RunPodSandbox => "RunPodSandbox",
        Event::StopPodSandbox => "StopPodSandbox",
        Event::RemovePodSandbox => "RemovePodSandbox",
        _ => "pod event",
    }
}

fn decode<M: Message + Default>(method: &str, payload: &[u8]) -> Result<M, Status> {
    M::decode(payload).map_err(|err| {
        Status::new(
            code::INVALID_ARGUMENT,
            format!("{method}: undecodable request: {err}"),
        )
    })
}

fn required_pod(method: &str, pod: Option<PodSandbox>) -> Result<PodSandbox, Status> {
    pod.ok_or_else(|| {
        Status::new(
            code::INVALID_ARGUMENT,
            format!("{method}: request carries no pod"),
        )
    })
}

impl PluginService {
    async fn pod_event(&self, event: Event, pod: &PodSandbox) -> Result<(), Status> {
        let span = tracing::info_span!("nri", pod = %pod.display_name(), uid = %pod.uid, event = event.as_str_name());
        // Pod hooks move devices: netclaim's background work (inventory, status,
        // checkpoint catch-up) waits until they are done (`netns::quiet`).
        let _moving = crate::netns::quiet::Quiet::global().hold();
        let result = match event {
            Event::RunPodSandbox => {
                let budget = *self
                    .request_timeout
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.handler
                    .run_pod(pod, budget)
                    .instrument(span.clone())
                    .await
            }
            Event::StopPodSandbox => self.handler.stop_pod(pod).instrument(span.clone()).await,
            Event::RemovePodSandbox => self.handler.remove_pod(pod).instrument(span.clone()).await,
            _ => return Ok(()),
        };
        // The runtime has reached the pod's hooks: its start window (opened at the CNI
        // ADD) ends, and the quiet lasts for the linger after this hook.
        crate::netns::quiet::Quiet::global().close_window(&pod.uid);
        result.map_err(|message| {
            tracing::warn!(parent: &span, error = %message, "NRI pod hook failed");
            Status::new(
                code::UNKNOWN,
                // The lifecycle's messages name pod, claim, device and step already.
                format!("netclaim: {}: {message}", hook_name(event)),
            )
        })
    }

    async fn synchronize(&self, request: SynchronizeRequest) -> SynchronizeResponse {
        let pods = {
            let mut pending = self
                .sync_pods
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.extend(request.pods);
            if request.more {
                None
            } else {
                Some(std::mem::take(&mut *pending))
            }
        };
        if let Some(pods) = pods {
            tracing::info!(pods = pods.len(), "NRI synchronize");
            // Returning devices and attaching them to pods that started meanwhile can
            // take longer than the runtime waits; answer within the budget and let the
            // rest finish in the background rather than be cut off.
            let budget = self
                .request_timeout
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .unwrap_or(Duration::from_secs(2));
            let handler = self.handler.clone();
            let work =
                tokio::spawn(async move { handler.synchronize(&pods).await }.in_current_span());
            let answer_by = budget.mul_f64(0.8);
            if tokio::time::timeout(answer_by, work).await.is_err() {
                tracing::warn!(
                    ?budget,
                    "synchronize takes longer than the runtime waits; answering now, it finishes in the background"
                );
            }
        }
        SynchronizeResponse {
            update: Vec::new(),
            more: request.more,
        }
    }
}

#[async_trait::async_trait]
impl ttrpc::Service for PluginService {
    async fn call(&self, service: &str, method: &str, payload: &[u8]) -> Result<Vec<u8>, Status> {
        if service != PLUGIN_SERVICE {
            return Err(Status::unimplemented(service, method));
        }
        match method {
            "Configure" => {
                let request: ConfigureRequest = decode(method, payload)?;
                let budget = u64::try_from(request.request_timeout)
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis);
                *self
                    .request_timeout
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = budget;
                tracing::info!(
                    runtime = %request.runtime_name,
                    version = %request.runtime_version,
                    request_timeout = ?budget,
                    "NRI configure"
                );
                Ok(ConfigureResponse { events: EVENT_MASK }.encode_to_vec())
            }
            "Synchronize" => {
                let request: SynchronizeRequest = decode(method, payload)?;
                Ok(self.synchronize(request).await.encode_to_vec())
            }
            "Shutdown" => {
                tracing::info!("NRI runtime asked the plugin to shut down");
                Ok(Empty {}.encode_to_vec())
            }
            "RunPodSandbox" => {
                let request: RunPodSandboxRequest = decode(method, payload)?;
                self.pod_event(Event::RunPodSandbox, &required_pod(method, request.pod)?)
                    .await?;
                Ok(api::RunPodSandboxResponse {}.encode_to_vec())
            }
            "StopPodSandbox" => {
                let request: StopPodSandboxRequest = decode(method, payload)?;
                self.pod_event(Event::StopPodSandbox, &required_pod(method, request.pod)?)
                    .await?;
                Ok(api::StopPodSandboxResponse {}.encode_to_vec())
            }
            "RemovePodSandbox" => {
                let request: RemovePodSandboxRequest = decode(method, payload)?;
                self.pod_event(Event::RemovePodSandbox, &required_pod(method, request.pod)?)
                    .await?;
                Ok(api::RemovePodSandboxResponse {}.encode_to_vec())
            }
            "StateChange" => {
                let request: StateChangeEvent = decode(method, payload)?;
                let event = Event::try_from(request.event).unwrap_or(Event::Unknown);
                match event {
                    Event::RunPodSandbox | Event::StopPodSandbox | Event::RemovePodSandbox => {
                        self.pod_event(event, &required_pod(method, request.pod)?)
                            .await?;
                    }
                    _ => tracing::debug!(event = request.event, "NRI state change ignored"),
                }
                Ok(Empty {}.encode_to_vec())
            }
            _ => Err(Status::unimplemented(service, method)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_just_appeared_is_tried_again_soon() {
        // Refused between the runtime's bind and listen: retried within SOCKET_WATCH.
        assert_eq!(
            after_failure(Some(Duration::ZERO), Duration::from_secs(8)),
            AfterFailure::Soon(SOCKET_WATCH)
        );
        assert_eq!(
            after_failure(Some(Duration::from_millis(900)), Duration::from_secs(8)),
            AfterFailure::Soon(SOCKET_WATCH)
        );
    }

    #[test]
    fn a_socket_that_keeps_refusing_gets_the_backoff() {
        assert_eq!(
            after_failure(Some(FRESH_SOCKET), Duration::from_secs(8)),
            AfterFailure::Backoff(Duration::from_secs(8))
        );
        assert_eq!(
            after_failure(None, Duration::from_secs(2)),
            AfterFailure::Backoff(Duration::from_secs(2))
        );
    }

    #[test]
    fn index_must_be_two_digits() {
        for bad in ["", "0", "000", "a1", "1 "] {
            assert!(matches!(
                PluginConfig::new("/x", "n", bad).validate(),
                Err(NriError::InvalidIndex(_))
            ));
        }
        assert!(PluginConfig::new("/x", "n", "00").validate().is_ok());
        assert!(PluginConfig::new("/x", "n", "99").validate().is_ok());
        assert!(matches!(
            PluginConfig::new("/x", "", "10").validate(),
            Err(NriError::EmptyName)
        ));
    }
}
