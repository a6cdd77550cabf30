//! The NRI plugin against the fake runtime: registration, Configure and Synchronize,
//! pod events through the dedicated methods (NRI >= 0.12), through StateChange only
//! (NRI <= 0.11) and through the Unimplemented fallback, handler errors as visible
//! error statuses, and reconnecting when the runtime restarts on the same socket.
//!
//! Sockets live in a per-test temporary directory that is removed at the end.

use std::os::fd::AsRawFd;
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
    /// Pods whose run hook takes this long.
    slow_run: Mutex<Option<(String, Duration)>>,
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
        let delay = match self.slow_run.lock().unwrap().as_ref() {
            Some((id, delay)) if *id == pod.id => Some(*delay),
            _ => None,
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
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
        // The plugin names the hook once; naming the pod is the handler's job.
        assert!(
            status.message.contains("RunPodSandbox"),
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

/// A runtime creates its socket file before it listens (`bind`, then `listen`), and a
/// connection in between is refused; on a loaded machine that window lasts. The plugin
/// tries a socket that just appeared again at once instead of sleeping out its backoff
/// on it (it took the plugin 8 s once, in CI, before it did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_socket_that_refuses_at_first_is_tried_again_soon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let recorder = Arc::new(Recorder::default());
    let plugin = NriPlugin::start(PluginConfig::new(&socket, "netclaim", "00"), recorder).unwrap();
    // Several attempts fail meanwhile, so the backoff has grown to seconds.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert!(!*plugin.connected().borrow());
    let bound = bound_not_listening(&socket);
    let appeared = std::time::Instant::now();
    // The plugin sees the socket and is refused (nothing listens yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*plugin.connected().borrow(), "nothing listens yet");
    // SAFETY: `bound` is a bound AF_UNIX stream socket this test owns.
    assert_eq!(unsafe { libc::listen(bound.as_raw_fd(), 16) }, 0, "listen");
    let listener = std::os::unix::net::UnixListener::from(bound);
    let runtime =
        FakeRuntime::start_on(&socket, listener, RuntimeConfig::new(Mode::Current)).unwrap();
    let listening = std::time::Instant::now();
    wait_connected(&plugin, true).await;
    println!(
        "connected {:?} after the socket appeared, {:?} after it listened",
        appeared.elapsed(),
        listening.elapsed()
    );
    assert!(
        listening.elapsed() < Duration::from_secs(1),
        "took {:?} after the runtime listened; the backoff at this point is 4 s or more",
        listening.elapsed()
    );
    drop(runtime);
}

/// An `AF_UNIX` stream socket bound at `path` (the file exists) that does not listen.
fn bound_not_listening(path: &std::path::Path) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh, valid fd nobody else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `addr` is a valid sockaddr_un of the stated size; `fd` is open.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    owned
}

/// containerd's answer to a hook that runs past `plugin_request_timeout`: it closes the
/// plugin and starts the pod without error. The stand-in does the same and says so in
/// the outcome; netclaim's plugin sees its socket end and registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_hook_gets_the_plugin_closed_and_the_plugin_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let budget = Duration::from_millis(300);
    let mut config = RuntimeConfig::new(Mode::Current);
    config.request_timeout = budget;
    let runtime = FakeRuntime::start(&socket, config).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    *recorder.slow_run.lock().unwrap() = Some(("sb-slow".into(), Duration::from_millis(1500)));
    let plugin = NriPlugin::start(fast_config(&socket), recorder.clone()).unwrap();
    let first = runtime.wait_registered(WAIT).await.unwrap();
    wait_connected(&plugin, true).await;
    assert_eq!(plugin.request_timeout(), Some(budget));

    let slow = pod(
        "sb-slow",
        "default",
        "slow",
        "uid-slow",
        "/var/run/netns/cni-s",
    );
    let outcome = runtime.run_pod(&slow).await;
    // The pod starts without error, as with containerd ...
    assert_eq!(outcome.status, Ok(()));
    // ... but the runtime closed the plugin at the budget, not when the handler ended.
    let closed = outcome.closed.clone().expect("the plugin should be closed");
    assert!(closed.timed_out, "{closed:?}");
    assert!(!outcome.is_clean());
    assert!(
        outcome.latency >= budget && outcome.latency < Duration::from_millis(1200),
        "{:?}",
        outcome.latency
    );

    // The plugin notices the closed socket and registers again on the same socket.
    let closed_at = std::time::Instant::now();
    let again = runtime
        .wait_registration_after(first.generation, WAIT)
        .await
        .unwrap();
    println!(
        "hook closed after {:?} (budget {budget:?}); plugin registered again {:?} later",
        outcome.latency,
        closed_at.elapsed()
    );
    assert!(again.generation > first.generation);
    assert_eq!(again.idx, "00");
    wait_connected(&plugin, true).await;
    assert!(runtime.plugin_connected().await);

    let fast = pod(
        "sb-fast",
        "default",
        "fast",
        "uid-fast",
        "/var/run/netns/cni-f",
    );
    let outcome = runtime.run_pod(&fast).await;
    assert!(outcome.is_clean(), "{outcome:?}");
    let seen: Vec<String> = recorder.events().into_iter().map(|e| e.1).collect();
    assert_eq!(seen, vec!["sb-slow".to_string(), "sb-fast".to_string()]);
}

/// A hook error longer than the runtime's 4096-byte mux read buffer reaches the runtime
/// whole: netclaim must split its frames the way containerd reads them (issue 11,
/// item 2). The stand-in refuses any larger frame and closes the plugin, as containerd
/// does.
#[tokio::test]
async fn long_hook_error_fits_the_runtime_read_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(Mode::Current))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let long = format!("device eth9 is gone: {}end", "x".repeat(9000));
    *recorder.refuse_run.lock().unwrap() = Some(("sb-long".into(), long.clone()));
    let _plugin = NriPlugin::start(fast_config(&socket), recorder.clone()).unwrap();
    runtime.wait_registered(WAIT).await.unwrap();

    let sandbox = pod(
        "sb-long",
        "default",
        "long",
        "uid-l",
        "/var/run/netns/cni-l",
    );
    let outcome = runtime.run_pod(&sandbox).await;
    assert_eq!(outcome.closed, None, "{outcome:?}");
    let status = outcome.status.expect_err("run should fail");
    assert!(
        status.message.contains(&long),
        "{} bytes",
        status.message.len()
    );
    assert!(runtime.plugin_connected().await);
}

/// A plugin written byte by byte from the upstream wire layout (containerd/nri
/// `pkg/net/multiplex`, containerd/ttrpc `channel.go` and `request.proto`), so the
/// stand-in is pinned to hand-computed bytes and not to any other implementation.
mod wire {
    use super::*;
    use netclaim_tests::nri_wire::{
        encode_message, frame_message, Request, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN,
        TYPE_REQUEST,
    };
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(|b| b.is_ascii_hexdigit())
            .map(|b| (b as char).to_digit(16).unwrap() as u8)
            .collect();
        digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
    }

    /// RegisterPlugin{plugin_name: "netclaim", plugin_idx: "00"} from the plugin on
    /// conn 2, stream 1, without a deadline.
    fn register_plugin_bytes() -> Vec<u8> {
        let mut bytes = hex("00000002 00000048 \
             0000003e 00000001 01 00 \
             0a 1c");
        bytes.extend_from_slice(b"nri.pkg.api.v1alpha1.Runtime");
        bytes.extend_from_slice(&hex("12 0e"));
        bytes.extend_from_slice(b"RegisterPlugin");
        bytes.extend_from_slice(&hex("1a 0e 0a 08"));
        bytes.extend_from_slice(b"netclaim");
        bytes.extend_from_slice(&hex("12 02"));
        bytes.extend_from_slice(b"00");
        bytes
    }

    /// What the runtime writes for one ttrpc message on the trunk, read by hand: the
    /// mux header, the ttrpc header and the body (one frame: these are small).
    async fn read_message(stream: &mut UnixStream) -> (u32, [u8; 10], Vec<u8>) {
        let mut mux = [0u8; 8];
        stream.read_exact(&mut mux).await.unwrap();
        let conn = u32::from_be_bytes(mux[..4].try_into().unwrap());
        let len = u32::from_be_bytes(mux[4..].try_into().unwrap()) as usize;
        let mut header = [0u8; 10];
        stream.read_exact(&mut header).await.unwrap();
        let body_len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        assert_eq!(len, 10 + body_len, "one message, one frame");
        let mut body = vec![0u8; body_len];
        stream.read_exact(&mut body).await.unwrap();
        (conn, header, body)
    }

    fn varint(mut bytes: &[u8]) -> (u64, &[u8]) {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let b = bytes[0];
            bytes = &bytes[1..];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return (value, bytes);
            }
            shift += 7;
        }
    }

    /// The stand-in's own encoder produces the hand-computed RegisterPlugin bytes.
    #[test]
    fn encoder_matches_hand_computed_register_plugin() {
        let request = Request {
            service: "nri.pkg.api.v1alpha1.Runtime".into(),
            method: "RegisterPlugin".into(),
            payload: hex("0a 08 6e6574636c61696d 12 02 3030"),
            timeout_nano: 0,
            metadata: Vec::new(),
        };
        let message = encode_message(1, TYPE_REQUEST, 0, &request.encode_to_vec()).unwrap();
        assert_eq!(
            frame_message(RUNTIME_SERVICE_CONN, &message),
            register_plugin_bytes()
        );
        // And the frame a Go runtime would write for the 4193-byte message of the
        // issue: 4096 bytes, then the 97 left in the buffer.
        let big = encode_message(3, TYPE_REQUEST, 0, &vec![0xab; 4183]).unwrap();
        let trunk = frame_message(PLUGIN_SERVICE_CONN, &big);
        assert_eq!(&trunk[..8], hex("00000001 00001000").as_slice());
        assert_eq!(&trunk[8..18], hex("00001057 00000003 01 00").as_slice());
        assert_eq!(
            &trunk[8 + 4096..8 + 4096 + 8],
            hex("00000001 00000061").as_slice()
        );
        assert_eq!(trunk.len(), 8 + 4096 + 8 + 97);
    }

    /// Registration, Configure and Synchronize against the live stand-in, every byte
    /// checked or written by hand; then a frame above 4096 bytes makes it close the
    /// plugin.
    #[tokio::test]
    async fn runtime_speaks_the_hand_computed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nri.sock");
        let runtime = FakeRuntime::start(&socket, RuntimeConfig::new(Mode::Current))
            .await
            .unwrap();
        let mut plugin = UnixStream::connect(&socket).await.unwrap();
        plugin.write_all(&register_plugin_bytes()).await.unwrap();

        // The runtime's answer: OK status, empty payload (`Empty{}` encodes to nothing).
        let (conn, header, body) = read_message(&mut plugin).await;
        assert_eq!(conn, 2);
        assert_eq!(header.as_slice(), hex("00000002 00000001 02 00").as_slice());
        assert_eq!(body, hex("0a 00"));

        // Configure on conn 1, stream 1: service, method, payload, then the deadline.
        let (conn, header, body) = read_message(&mut plugin).await;
        assert_eq!(conn, 1);
        assert_eq!(&header[4..], hex("00000001 01 00").as_slice());
        let mut expected = hex("0a 1b");
        expected.extend_from_slice(b"nri.pkg.api.v1alpha1.Plugin");
        expected.extend_from_slice(&hex("12 09"));
        expected.extend_from_slice(b"Configure");
        let version = env!("CARGO_PKG_VERSION");
        let mut payload = hex("12 15");
        payload.extend_from_slice(b"netclaim-fake-runtime");
        payload.push(0x1a);
        payload.push(version.len() as u8);
        payload.extend_from_slice(version.as_bytes());
        // registration_timeout 5000 ms, request_timeout 2000 ms, NRI_version.
        payload.extend_from_slice(&hex("20 8827 28 d00f 32 07"));
        payload.extend_from_slice(b"v0.12.0");
        expected.push(0x1a);
        expected.push(payload.len() as u8);
        expected.extend_from_slice(&payload);
        assert_eq!(&body[..expected.len()], expected.as_slice());
        let tail = &body[expected.len()..];
        assert_eq!(tail[0], 0x20, "timeout_nano follows");
        let (timeout_nano, rest) = varint(&tail[1..]);
        assert!(rest.is_empty(), "no metadata");
        assert!(
            timeout_nano > 1_000_000_000 && timeout_nano <= 2_000_000_000,
            "{timeout_nano}"
        );

        // ConfigureResponse{events: 7} inside an OK Response, on stream 1.
        plugin
            .write_all(&hex(
                "00000001 00000010 00000006 00000001 02 00 0a00 1202 1007",
            ))
            .await
            .unwrap();

        // Synchronize on stream 3 with no pods: `more` false, so the payload is empty.
        let (conn, header, body) = read_message(&mut plugin).await;
        assert_eq!(conn, 1);
        assert_eq!(&header[4..], hex("00000003 01 00").as_slice());
        let mut expected = hex("0a 1b");
        expected.extend_from_slice(b"nri.pkg.api.v1alpha1.Plugin");
        expected.extend_from_slice(&hex("12 0b"));
        expected.extend_from_slice(b"Synchronize");
        assert_eq!(&body[..expected.len()], expected.as_slice());
        assert_eq!(body[expected.len()], 0x20, "empty payload omitted");
        plugin
            .write_all(&hex("00000001 0000000c 00000002 00000003 02 00 0a00"))
            .await
            .unwrap();

        let registration = runtime.wait_registered(WAIT).await.unwrap();
        assert_eq!(registration.name, "netclaim");
        assert_eq!(registration.idx, "00");
        assert_eq!(registration.events, 7);
        assert!(runtime.plugin_connected().await);

        // A 4097-byte frame on conn 2: containerd's read fails and it closes the plugin.
        let mut frame = hex("00000002 00001001");
        frame.extend_from_slice(&vec![0u8; 4097]);
        plugin.write_all(&frame).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, plugin.read_to_end(&mut rest))
            .await
            .expect("the runtime should close the socket");
        assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
        let sandbox = pod("sb-x", "default", "x", "uid-x", "/var/run/netns/cni-x");
        let outcome = runtime.run_pod(&sandbox).await;
        assert!(outcome.closed.is_some(), "{outcome:?}");
        assert!(
            outcome.closed.as_ref().unwrap().reason.contains("4096"),
            "{outcome:?}"
        );
    }
}
