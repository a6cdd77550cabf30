//! The NRI plugin against the fake runtime: registration, Configure and Synchronize,
//! pod events through the dedicated methods (NRI >= 0.12), through StateChange only
//! (NRI <= 0.11) and through the Unimplemented fallback, handler errors as visible
//! error statuses, and reconnecting when the runtime restarts on the same socket.
//!
//! Sockets live in a per-test temporary directory that is removed at the end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use netclaim::nri::api::PodSandbox;
use netclaim::nri::ttrpc::{self, code, Status};
use netclaim::nri::{NriPlugin, PluginConfig, PodHandler, EVENT_MASK};
use netclaim_tests::runtime::{pod, Delivery, FakeRuntime, Mode, RuntimeConfig};

const WAIT: Duration = Duration::from_secs(10);

/// One delivered event: (event, pod id, uid, netns path).
type Seen = (String, String, String, Option<String>);

/// What the handler saw, in order.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Seen>>,
    synced: Mutex<Vec<Vec<String>>>,
    /// Pods whose run hook fails with this message.
    refuse_run: Mutex<Option<(String, String)>>,
}

impl Recorder {
    fn record(&self, event: &str, pod: &PodSandbox) {
        self.events.lock().unwrap().push((
            event.to_string(),
            pod.id.clone(),
            pod.uid.clone(),
            pod.netns_path().map(str::to_string),
        ));
    }

    fn events(&self) -> Vec<Seen> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl PodHandler for Recorder {
    async fn run_pod(
        &self,
        pod: &PodSandbox,
        _budget: Option<std::time::Duration>,
    ) -> Result<(), String> {
        self.record("run", pod);
        match self.refuse_run.lock().unwrap().as_ref() {
            Some((id, message)) if *id == pod.id => Err(message.clone()),
            _ => Ok(()),
        }
    }

    async fn stop_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        self.record("stop", pod);
        Ok(())
    }

    async fn remove_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        self.record("remove", pod);
        Ok(())
    }

    async fn synchronize(&self, pods: &[PodSandbox]) {
        self.synced
            .lock()
            .unwrap()
            .push(pods.iter().map(|p| p.id.clone()).collect());
    }
}

fn fast_config(socket: &std::path::Path) -> PluginConfig {
    let mut config = PluginConfig::new(socket, "netclaim", "00");
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

async fn wait_connected(plugin: &NriPlugin, want: bool) {
    let mut connected = plugin.connected();
    tokio::time::timeout(WAIT, connected.wait_for(|c| *c == want))
        .await
        .expect("plugin connection state did not change in time")
        .expect("plugin task ended");
}

#[tokio::test]
async fn registers_configures_and_synchronizes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let mut config = RuntimeConfig::new(Mode::Current);
    config.request_timeout = Duration::from_millis(1500);
    config.pods = vec![
        pod("sb-1", "default", "a", "uid-a", "/var/run/netns/cni-a"),
        pod("sb-2", "default", "b", "uid-b", "/var/run/netns/cni-b"),
    ];
    let runtime = FakeRuntime::start(&socket, config).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let plugin = NriPlugin::start(fast_config(&socket), recorder.clone()).unwrap();

    let registration = runtime.wait_registered(WAIT).await.unwrap();
    assert_eq!(registration.name, "netclaim");
    assert_eq!(registration.idx, "00");
    assert_eq!(registration.events, EVENT_MASK);
    assert_eq!(registration.events, 0x7);
    wait_connected(&plugin, true).await;
    assert_eq!(plugin.request_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(
        *recorder.synced.lock().unwrap(),
        vec![vec!["sb-1".to_string(), "sb-2".to_string()]]
    );
}

async fn pod_lifecycle(mode: Mode, expected: Delivery) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(mode))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let _plugin = NriPlugin::start(fast_config(&socket), recorder.clone()).unwrap();
    runtime.wait_registered(WAIT).await.unwrap();

    let sandbox = pod("sb-9", "team", "web", "uid-9", "/var/run/netns/cni-9");
    for (step, outcome) in [
        ("run", runtime.run_pod(&sandbox).await),
        ("stop", runtime.stop_pod(&sandbox).await),
        ("remove", runtime.remove_pod(&sandbox).await),
    ] {
        assert_eq!(outcome.status, Ok(()), "{step}");
        assert_eq!(outcome.delivery, expected, "{step}");
        assert!(
            outcome.latency < Duration::from_secs(2),
            "{step}: {:?}",
            outcome.latency
        );
    }
    let netns = Some("/var/run/netns/cni-9".to_string());
    let expected_events: Vec<_> = ["run", "stop", "remove"]
        .iter()
        .map(|e| {
            (
                e.to_string(),
                "sb-9".to_string(),
                "uid-9".to_string(),
                netns.clone(),
            )
        })
        .collect();
    assert_eq!(recorder.events(), expected_events);
}

#[tokio::test]
async fn pod_events_through_dedicated_methods() {
    pod_lifecycle(Mode::Current, Delivery::Method).await;
}

#[tokio::test]
async fn pod_events_through_state_change_on_legacy_runtimes() {
    pod_lifecycle(Mode::Legacy, Delivery::StateChange).await;
}

#[tokio::test]
async fn handler_error_is_an_error_status_for_the_runtime() {
    for mode in [Mode::Current, Mode::Legacy] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nri.sock");
        let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(mode))
            .await
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        *recorder.refuse_run.lock().unwrap() =
            Some(("sb-bad".into(), "device eth9 is gone".into()));
        let _plugin = NriPlugin::start(fast_config(&socket), recorder.clone()).unwrap();
        runtime.wait_registered(WAIT).await.unwrap();

        let bad = pod(
            "sb-bad",
            "default",
            "bad",
            "uid-bad",
            "/var/run/netns/cni-bad",
        );
        let outcome = runtime.run_pod(&bad).await;
        let status = outcome.status.expect_err("run should fail");
        assert_ne!(status.code, code::OK, "{mode:?}");
        assert!(
            status.message.contains("device eth9 is gone"),
            "{mode:?}: {}",
            status.message
        );
        assert!(
            status.message.contains("default/bad"),
            "{mode:?}: {}",
            status.message
        );

        let good = pod("sb-ok", "default", "ok", "uid-ok", "/var/run/netns/cni-ok");
        assert_eq!(runtime.run_pod(&good).await.status, Ok(()), "{mode:?}");
    }
}

/// A plugin that serves only the pre-0.12 methods, so the runtime must fall back.
struct LegacyPlugin(Arc<Recorder>);

#[async_trait::async_trait]
impl ttrpc::Service for LegacyPlugin {
    async fn call(&self, service: &str, method: &str, payload: &[u8]) -> Result<Vec<u8>, Status> {
        use netclaim::nri::api::{ConfigureResponse, Empty, StateChangeEvent, SynchronizeResponse};
        use prost::Message;
        match method {
            "Configure" => Ok(ConfigureResponse { events: EVENT_MASK }.encode_to_vec()),
            "Synchronize" => Ok(SynchronizeResponse::default().encode_to_vec()),
            "StateChange" => {
                let event = StateChangeEvent::decode(payload)
                    .map_err(|e| Status::new(code::INVALID_ARGUMENT, e.to_string()))?;
                if let Some(pod) = event.pod.as_ref() {
                    self.0.record(&format!("state-change-{}", event.event), pod);
                }
                Ok(Empty {}.encode_to_vec())
            }
            _ => Err(Status::unimplemented(service, method)),
        }
    }
}

#[tokio::test]
async fn current_runtime_falls_back_to_state_change_on_unimplemented() {
    use netclaim::nri::api::{Empty, RegisterPluginRequest};
    use netclaim::nri::mux::{Mux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(Mode::Current))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (_mux, mut conns) =
        Mux::start(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]).unwrap();
    let runtime_conn = conns.pop().unwrap();
    let plugin_conn = conns.pop().unwrap();
    let server = tokio::spawn(ttrpc::serve(
        plugin_conn,
        Arc::new(LegacyPlugin(recorder.clone())),
    ));
    let client = ttrpc::Client::new(runtime_conn);
    let register = RegisterPluginRequest {
        plugin_name: "old".into(),
        plugin_idx: "42".into(),
        nri_version: String::new(),
    };
    let _: Empty = client
        .call(
            netclaim::nri::RUNTIME_SERVICE,
            "RegisterPlugin",
            &register,
            Some(WAIT),
        )
        .await
        .unwrap();
    let registration = runtime.wait_registered(WAIT).await.unwrap();
    assert_eq!(registration.idx, "42");

    let sandbox = pod("sb-f", "default", "f", "uid-f", "/var/run/netns/cni-f");
    let outcome = runtime.run_pod(&sandbox).await;
    assert_eq!(outcome.status, Ok(()));
    assert_eq!(outcome.delivery, Delivery::Fallback);
    assert_eq!(
        recorder.events(),
        vec![(
            "state-change-1".into(),
            "sb-f".into(),
            "uid-f".into(),
            Some("/var/run/netns/cni-f".into())
        )]
    );
    server.abort();
}

#[tokio::test]
async fn reconnects_after_the_runtime_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let recorder = Arc::new(Recorder::default());
    // The plugin starts first and retries until the runtime appears.
    let plugin = NriPlugin::start(fast_config(&socket), recorder.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!*plugin.connected().borrow());

    let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(Mode::Current))
        .await
        .unwrap();
    runtime.wait_registered(WAIT).await.unwrap();
    wait_connected(&plugin, true).await;

    runtime.stop().await;
    wait_connected(&plugin, false).await;
    assert!(!socket.exists());

    let mut config = RuntimeConfig::new(Mode::Legacy);
    config.pods = vec![pod("sb-r", "default", "r", "uid-r", "/var/run/netns/cni-r")];
    let runtime = FakeRuntime::start(&socket, config).await.unwrap();
    let registration = runtime.wait_registered(WAIT).await.unwrap();
    assert_eq!(registration.idx, "00");
    wait_connected(&plugin, true).await;
    let outcome = runtime
        .run_pod(&pod(
            "sb-r",
            "default",
            "r",
            "uid-r",
            "/var/run/netns/cni-r",
        ))
        .await;
    assert_eq!(outcome.status, Ok(()));
    assert_eq!(
        recorder.synced.lock().unwrap().last(),
        Some(&vec!["sb-r".to_string()])
    );

    // Shutdown from the runtime also ends the session; the plugin comes back.
    runtime.shutdown_plugin().await.unwrap();
    let again = runtime
        .wait_registration_after(registration.generation, WAIT)
        .await
        .unwrap();
    assert!(again.generation > registration.generation);
    drop(runtime);
    assert!(!socket.exists());
}

/// With the default backoff (0.5 s doubling to 10 s), a runtime that comes back after
/// several failed attempts is still reconnected at once: the plugin watches the socket
/// path instead of sleeping out the backoff. The window is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_as_soon_as_the_socket_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let recorder = Arc::new(Recorder::default());
    let config = PluginConfig::new(&socket, "netclaim", "00");
    assert!(
        config.backoff_initial >= Duration::from_millis(500),
        "default backoff"
    );
    let plugin = NriPlugin::start(config, recorder.clone()).unwrap();
    // Several attempts fail meanwhile, so the backoff has grown to seconds.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert!(!*plugin.connected().borrow());
    let appeared = std::time::Instant::now();
    let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(Mode::Current))
        .await
        .unwrap();
    wait_connected(&plugin, true).await;
    let window = appeared.elapsed();
    println!("reconnect window after the socket came back: {window:?}");
    assert!(
        window < Duration::from_secs(1),
        "took {window:?}; the backoff at this point is 4 s"
    );
    drop(runtime);
}
