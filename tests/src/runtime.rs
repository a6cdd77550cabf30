//! A fake container runtime for tests: the NRI side of containerd / CRI-O.
//!
//! It listens on a unix socket, accepts the plugin, serves `Runtime/RegisterPlugin` on
//! conn 2 (recording name and index), then calls `Configure` (with a request timeout)
//! and `Synchronize` (with the pods it was given) on conn 1, the way the real runtimes
//! do. Afterwards a test drives pod events on demand: in [`Mode::Current`] through
//! `RunPodSandbox`/`StopPodSandbox`/`RemovePodSandbox`, falling back to `StateChange`
//! when the plugin answers Unimplemented (as NRI >= 0.12 runtimes do); in
//! [`Mode::Legacy`] (NRI <= 0.11) through `StateChange` only. Every hook reports the
//! latency measured here and the status the plugin returned.
//!
//! Failures follow containerd (nri `pkg/adaptation/plugin.go`): a hook that runs past
//! the request timeout, a broken connection or a protocol error (such as a mux frame
//! above the runtime's 4096-byte read buffer) makes the runtime close the plugin, and
//! the pod event itself succeeds — the pod starts without the plugin's work.
//! [`HookOutcome::closed`] says when that happened; a plugin error status is returned
//! as an error, as containerd does. One deliberate difference: with no plugin
//! connected at all, containerd starts the pod silently, while this stand-in answers
//! UNAVAILABLE so a test can tell.
//!
//! The transport is [`crate::nri_wire`], written from the upstream sources and sharing
//! no code with netclaim's own mux and ttrpc; only the generated protobuf message
//! types come from netclaim.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netclaim::nri::api::{
    ConfigureRequest, ConfigureResponse, Empty, Event, LinuxNamespace, LinuxPodSandbox, PodSandbox,
    RegisterPluginRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StateChangeEvent,
    StopPodSandboxRequest, SynchronizeRequest, SynchronizeResponse,
};
use prost::Message;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

pub use crate::nri_wire::Status;
use crate::nri_wire::{self, code, CallError, Session, PLUGIN_SERVICE, RUNTIME_SERVICE};

/// Which NRI generation the fake runtime plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// NRI >= 0.12: dedicated pod methods, StateChange as fallback.
    Current,
    /// NRI <= 0.11: pod events only through StateChange.
    Legacy,
}

/// What the runtime sends the plugin at connection time.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub mode: Mode,
    /// Budget of every hook, sent in Configure and enforced on calls: past it the
    /// runtime closes the plugin.
    pub request_timeout: Duration,
    /// How long the plugin has to register after connecting.
    pub registration_timeout: Duration,
    /// Pods handed over in Synchronize.
    pub pods: Vec<PodSandbox>,
}

impl RuntimeConfig {
    pub fn new(mode: Mode) -> Self {
        RuntimeConfig {
            mode,
            request_timeout: Duration::from_secs(2),
            registration_timeout: Duration::from_secs(5),
            pods: Vec::new(),
        }
    }
}

/// What the plugin said at registration and Configure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub idx: String,
    pub nri_version: String,
    /// Events mask from ConfigureResponse.
    pub events: i32,
    /// Number of this registration since the runtime started (1 = first).
    pub generation: u64,
}

/// How a pod event reached the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The dedicated method (RunPodSandbox, ...).
    Method,
    /// StateChange only (legacy mode).
    StateChange,
    /// The dedicated method answered Unimplemented; StateChange followed.
    Fallback,
}

/// Why the runtime closed the plugin during a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginClosed {
    /// The hook ran past the request timeout.
    pub timed_out: bool,
    /// The error that made the runtime close it.
    pub reason: String,
}

/// The result of one hook as the runtime sees it.
#[derive(Clone, Debug)]
pub struct HookOutcome {
    pub latency: Duration,
    pub delivery: Delivery,
    /// `Err` with the plugin's status; `Err` with UNAVAILABLE (14) when no plugin was
    /// connected. `Ok` also when the plugin was closed (see `closed`), as containerd
    /// then starts the pod without error.
    pub status: Result<(), Status>,
    /// Set when the runtime closed the plugin during this hook (timeout, broken
    /// connection, protocol error). The plugin's work did not happen as far as the
    /// runtime knows.
    pub closed: Option<PluginClosed>,
}

impl HookOutcome {
    /// The plugin answered OK within the budget.
    pub fn is_clean(&self) -> bool {
        self.status.is_ok() && self.closed.is_none()
    }
}

/// gRPC code used when the plugin is unreachable.
pub const UNAVAILABLE: i32 = code::UNAVAILABLE;

struct Shared {
    config: RuntimeConfig,
    registration: watch::Sender<Option<Registration>>,
    connected: Mutex<Option<Arc<Session>>>,
}

impl Shared {
    /// containerd's `plugin.close()`: forget the plugin and close its socket, if it
    /// is still the current one.
    async fn close_plugin(&self, session: &Arc<Session>) {
        let mut connected = self.connected.lock().await;
        if connected.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            if let Some(session) = connected.take().and_then(|s| Arc::try_unwrap(s).ok()) {
                session.close().await;
            }
        }
    }
}

/// The fake runtime. Dropping it closes the plugin connection and removes the socket.
pub struct FakeRuntime {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FakeRuntime {
    /// Binds `path` (replacing a stale socket file) and starts accepting the plugin.
    pub async fn start(path: impl Into<PathBuf>, config: RuntimeConfig) -> anyhow::Result<Self> {
        let path = path.into();
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(Self::serve(path, listener, config))
    }

    /// Starts accepting the plugin on `listener`, a socket already bound at `path` and
    /// listening (for tests that control when it starts to listen).
    pub fn start_on(
        path: impl Into<PathBuf>,
        listener: std::os::unix::net::UnixListener,
        config: RuntimeConfig,
    ) -> anyhow::Result<Self> {
        listener
            .set_nonblocking(true)
            .context("a non-blocking listener")?;
        let listener = UnixListener::from_std(listener).context("registering the listener")?;
        Ok(Self::serve(path.into(), listener, config))
    }

    fn serve(path: PathBuf, listener: UnixListener, config: RuntimeConfig) -> Self {
        let (registration, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            config,
            registration,
            connected: Mutex::new(None),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeRuntime {
            path,
            shared,
            accept,
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Whether a plugin is registered and not closed.
    pub async fn plugin_connected(&self) -> bool {
        self.shared
            .connected
            .lock()
            .await
            .as_ref()
            .is_some_and(|s| s.ended().is_none())
    }

    /// Waits until a plugin has registered and been configured and synchronized.
    pub async fn wait_registered(&self, timeout: Duration) -> anyhow::Result<Registration> {
        let mut rx = self.shared.registration.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some())).await;
        match waited {
            Ok(Ok(registration)) => registration.clone().context("registration vanished"),
            Ok(Err(_)) => bail!("fake runtime stopped"),
            Err(_) => bail!("no plugin registered within {timeout:?}"),
        }
    }

    /// Waits for a registration newer than `generation` (after a reconnect).
    pub async fn wait_registration_after(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> anyhow::Result<Registration> {
        let mut rx = self.shared.registration.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|r| r.as_ref().is_some_and(|r| r.generation > generation)),
        )
        .await;
        match waited {
            Ok(Ok(registration)) => registration.clone().context("registration vanished"),
            Ok(Err(_)) => bail!("fake runtime stopped"),
            Err(_) => bail!("no new registration within {timeout:?}"),
        }
    }

    pub async fn run_pod(&self, pod: &PodSandbox) -> HookOutcome {
        self.pod_event(Event::RunPodSandbox, pod).await
    }

    pub async fn stop_pod(&self, pod: &PodSandbox) -> HookOutcome {
        self.pod_event(Event::StopPodSandbox, pod).await
    }

    pub async fn remove_pod(&self, pod: &PodSandbox) -> HookOutcome {
        self.pod_event(Event::RemovePodSandbox, pod).await
    }

    /// Calls `Plugin/Shutdown` and closes the connection, as a runtime going down does.
    pub async fn shutdown_plugin(&self) -> anyhow::Result<()> {
        let session = self.shared.connected.lock().await.take();
        if let Some(session) = session {
            let deadline = tokio::time::Instant::now() + self.shared.config.request_timeout;
            let answer: Result<Empty, CallError> = session
                .call_message(PLUGIN_SERVICE, "Shutdown", &Empty {}, deadline)
                .await;
            if let Ok(session) = Arc::try_unwrap(session) {
                session.close().await;
            }
            answer.context("Plugin/Shutdown")?;
        }
        Ok(())
    }

    /// Stops listening, drops the plugin connection and removes the socket file.
    pub async fn stop(self) {
        drop(self);
    }

    async fn pod_event(&self, event: Event, pod: &PodSandbox) -> HookOutcome {
        let started = Instant::now();
        let session = self.shared.connected.lock().await.clone();
        let Some(session) = session else {
            return HookOutcome {
                latency: started.elapsed(),
                delivery: Delivery::Method,
                status: Err(Status::new(UNAVAILABLE, "no plugin connected")),
                closed: None,
            };
        };
        // One deadline for the hook, fallback included (the context upstream).
        let deadline = tokio::time::Instant::now() + self.shared.config.request_timeout;
        let (delivery, result) = match self.shared.config.mode {
            Mode::Legacy => (
                Delivery::StateChange,
                state_change(&session, event, pod, deadline).await,
            ),
            Mode::Current => {
                let sandbox = Some(pod.clone());
                let (method, payload) = match event {
                    Event::RunPodSandbox => (
                        "RunPodSandbox",
                        RunPodSandboxRequest { pod: sandbox }.encode_to_vec(),
                    ),
                    Event::StopPodSandbox => (
                        "StopPodSandbox",
                        StopPodSandboxRequest { pod: sandbox }.encode_to_vec(),
                    ),
                    _ => (
                        "RemovePodSandbox",
                        RemovePodSandboxRequest { pod: sandbox }.encode_to_vec(),
                    ),
                };
                let direct = session
                    .call(PLUGIN_SERVICE, method, payload, deadline)
                    .await
                    .map(|_| ());
                match direct {
                    Err(err) if err.code() == code::UNIMPLEMENTED => (
                        Delivery::Fallback,
                        state_change(&session, event, pod, deadline).await,
                    ),
                    other => (Delivery::Method, other),
                }
            }
        };
        let (status, closed) = match result {
            Ok(()) => (Ok(()), None),
            Err(CallError::Status(status)) => (Err(status), None),
            Err(fatal) => {
                self.shared.close_plugin(&session).await;
                let closed = PluginClosed {
                    timed_out: matches!(fatal, CallError::DeadlineExceeded(_)),
                    reason: error_chain(&fatal),
                };
                (Ok(()), Some(closed))
            }
        };
        HookOutcome {
            latency: started.elapsed(),
            delivery,
            status,
            closed,
        }
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut connected) = self.shared.connected.try_lock() {
            *connected = None;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn state_change(
    session: &Session,
    event: Event,
    pod: &PodSandbox,
    deadline: tokio::time::Instant,
) -> Result<(), CallError> {
    let request = StateChangeEvent {
        event: event as i32,
        pod: Some(pod.clone()),
        container: None,
    };
    session
        .call(
            PLUGIN_SERVICE,
            "StateChange",
            request.encode_to_vec(),
            deadline,
        )
        .await
        .map(|_| ())
}

/// Aborts the task when dropped, so stopping the accept loop also stops a plugin
/// setup in progress.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut generation = 0u64;
    let mut current: Option<AbortOnDrop> = None;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        generation += 1;
        // One plugin at a time: a new connection replaces the old one.
        current.take();
        current = Some(AbortOnDrop(tokio::spawn(handle_plugin(
            stream,
            shared.clone(),
            generation,
        ))));
    }
}

/// The `Runtime` service: RegisterPlugin; anything else is Unimplemented, worded as
/// ttrpc's server words it.
fn runtime_service(registered: mpsc::UnboundedSender<RegisterPluginRequest>) -> nri_wire::Handler {
    Arc::new(move |service, method, payload| {
        if service != RUNTIME_SERVICE {
            return Err(Status::new(
                code::UNIMPLEMENTED,
                format!("service {service}"),
            ));
        }
        match method {
            "RegisterPlugin" => {
                let request = RegisterPluginRequest::decode(payload)
                    .map_err(|err| Status::new(code::INVALID_ARGUMENT, err.to_string()))?;
                let _ = registered.send(request);
                Ok(Empty {}.encode_to_vec())
            }
            _ => Err(Status::new(code::UNIMPLEMENTED, format!("method {method}"))),
        }
    })
}

async fn handle_plugin(stream: tokio::net::UnixStream, shared: Arc<Shared>, generation: u64) {
    if let Err(err) = configure_plugin(stream, &shared, generation).await {
        tracing::warn!(error = %format!("{err:#}"), "fake runtime: plugin setup failed; plugin closed");
    }
}

async fn configure_plugin(
    stream: tokio::net::UnixStream,
    shared: &Shared,
    generation: u64,
) -> anyhow::Result<()> {
    let (registered_tx, mut registered_rx) = mpsc::unbounded_channel();
    // On any error below the session is dropped, which closes the socket.
    let session = Session::start(stream, runtime_service(registered_tx));
    let config = &shared.config;
    let register = tokio::time::timeout(config.registration_timeout, registered_rx.recv())
        .await
        .context("plugin did not register in time")?
        .context("plugin went away before registering")?;
    let deadline = tokio::time::Instant::now() + config.request_timeout;
    let configure = ConfigureRequest {
        config: String::new(),
        runtime_name: "netclaim-fake-runtime".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        registration_timeout: config.registration_timeout.as_millis() as i64,
        request_timeout: config.request_timeout.as_millis() as i64,
        nri_version: "v0.12.0".into(),
    };
    let configured: ConfigureResponse = session
        .call_message(PLUGIN_SERVICE, "Configure", &configure, deadline)
        .await
        .context("Plugin/Configure")?;
    let deadline = tokio::time::Instant::now() + config.request_timeout;
    let sync = SynchronizeRequest {
        pods: config.pods.clone(),
        containers: Vec::new(),
        more: false,
    };
    let _: SynchronizeResponse = session
        .call_message(PLUGIN_SERVICE, "Synchronize", &sync, deadline)
        .await
        .context("Plugin/Synchronize")?;
    *shared.connected.lock().await = Some(Arc::new(session));
    shared.registration.send_replace(Some(Registration {
        name: register.plugin_name,
        idx: register.plugin_idx,
        nri_version: register.nri_version,
        events: configured.events,
        generation,
    }));
    Ok(())
}

/// A pod sandbox as the runtime would describe it.
pub fn pod(id: &str, namespace: &str, name: &str, uid: &str, netns: &str) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: name.into(),
        uid: uid.into(),
        namespace: namespace.into(),
        runtime_handler: "runc".into(),
        linux: Some(LinuxPodSandbox {
            cgroup_parent: String::new(),
            namespaces: vec![
                LinuxNamespace {
                    r#type: "ipc".into(),
                    path: String::new(),
                },
                LinuxNamespace {
                    r#type: "network".into(),
                    path: netns.into(),
                },
            ],
        }),
        pid: 4242,
        ..Default::default()
    }
}

/// Arguments of `netclaim-testbed runtime`.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Socket to listen on (the plugin connects here).
    #[arg(long, default_value = netclaim::nri::DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// NRI generation: current (dedicated pod methods) or legacy (StateChange only).
    #[arg(long, default_value = "current")]
    pub mode: String,
    /// Hook budget sent in Configure, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub request_timeout_ms: u64,
    /// Pods to hand over in Synchronize, as `id,namespace/name,uid,netns`.
    #[arg(long = "sync-pod")]
    pub sync_pods: Vec<String>,
}

/// Parses `id,namespace/name,uid,netns`.
pub fn parse_pod(spec: &str) -> anyhow::Result<PodSandbox> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [id, ns_name, uid, netns] = parts.as_slice() else {
        bail!("pod {spec:?}: expected id,namespace/name,uid,netns");
    };
    let Some((namespace, name)) = ns_name.split_once('/') else {
        bail!("pod {spec:?}: expected namespace/name in the second field");
    };
    Ok(pod(id, namespace, name, uid, netns))
}

/// `netclaim-testbed runtime`: serves NRI on `--socket`, prints the registration as a
/// JSON line, then reads commands from stdin — `run|stop|remove id,ns/name,uid,netns`
/// — and prints each outcome as a JSON line. Ends at EOF on stdin.
pub async fn serve_cli(args: RuntimeArgs) -> anyhow::Result<()> {
    let mode = match args.mode.as_str() {
        "current" => Mode::Current,
        "legacy" => Mode::Legacy,
        other => bail!("unknown mode {other:?}: expected current or legacy"),
    };
    let mut config = RuntimeConfig::new(mode);
    config.request_timeout = Duration::from_millis(args.request_timeout_ms);
    config.pods = args
        .sync_pods
        .iter()
        .map(|spec| parse_pod(spec))
        .collect::<anyhow::Result<_>>()?;
    let runtime = FakeRuntime::start(&args.socket, config).await?;
    let registration = runtime.wait_registered(Duration::from_secs(3600)).await?;
    println!(
        "{}",
        serde_json::json!({
            "registered": registration.name, "idx": registration.idx,
            "nri_version": registration.nri_version, "events": registration.events,
        })
    );
    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((verb, spec)) = line.split_once(' ') else {
            eprintln!("expected: run|stop|remove id,namespace/name,uid,netns");
            continue;
        };
        let pod = match parse_pod(spec.trim()) {
            Ok(pod) => pod,
            Err(err) => {
                eprintln!("{err}");
                continue;
            }
        };
        let outcome = match verb {
            "run" => runtime.run_pod(&pod).await,
            "stop" => runtime.stop_pod(&pod).await,
            "remove" => runtime.remove_pod(&pod).await,
            other => {
                eprintln!("unknown command {other:?}");
                continue;
            }
        };
        let (code, message) = match &outcome.status {
            Ok(()) => (0, String::new()),
            Err(status) => (status.code, status.message.clone()),
        };
        println!(
            "{}",
            serde_json::json!({
                "event": verb, "pod": pod.id, "delivery": format!("{:?}", outcome.delivery),
                "latency_us": outcome.latency.as_micros() as u64, "code": code, "message": message,
                "plugin_closed": outcome.closed.as_ref().map(|c| c.reason.clone()),
            })
        );
    }
    runtime.stop().await;
    Ok(())
}
