//! The kubelet plugin end to end, without a cluster: the driver's library serves the
//! registration and DRA sockets in-process, the fake kubelet drives them over the real
//! gRPC protocols, and the fake API server holds ResourceClaims allocated the way the
//! scheduler would.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use netclaim::kubelet::{
    self, prepare, ClaimPreparer, ClaimRef, DeviceHealth, KubeletPlugin, KubeletPluginConfig,
    PrepareResults, PreparedDevice, UnprepareResults,
};
use netclaim::state::StateStore;
use netclaim_tests::apiserver::FakeApiServer;
use netclaim_tests::kubelet::{DraVersion, FakeKubelet, Verdict};
use serde_json::{json, Value};
use tokio::sync::watch;

const DRIVER: &str = "netclaim.dev";
const WAIT: Duration = Duration::from_secs(10);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(dir: &std::path::Path) -> KubeletPluginConfig {
    let mut config = KubeletPluginConfig::new(dir, DRIVER);
    config.registration_backoff = Duration::from_millis(100);
    config
}

/// A preparer that answers every claim with one fixed device and records the calls.
#[derive(Default)]
struct StubPreparer {
    calls: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ClaimPreparer for StubPreparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        claims
            .into_iter()
            .map(|c| {
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(format!("prepare {c}"));
                }
                let result = if c.name == "broken" {
                    Err(format!("claim {c}: broken on purpose"))
                } else {
                    Ok(vec![PreparedDevice {
                        request_names: vec!["nic".into()],
                        pool: "node-a".into(),
                        device: "eth1".into(),
                        cdi_device_ids: vec![],
                        share_id: Some("share-1".into()),
                    }])
                };
                (c.uid, result)
            })
            .collect()
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        claims.into_iter().map(|c| (c.uid, Ok(()))).collect()
    }
}

fn cref(name: &str, uid: &str) -> ClaimRef {
    ClaimRef {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

async fn wait_ready(plugin: &KubeletPlugin, attempt: u32) {
    let mut state = plugin.registration();
    let waited = tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.is_registered() && s.attempt() == attempt),
    )
    .await
    .is_ok();
    assert!(
        waited,
        "plugin not registered: {:?}",
        *plugin.registration().borrow()
    );
}

#[tokio::test]
async fn registration_handshake_and_both_dra_versions() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (health_tx, health_rx) = watch::channel(vec![DeviceHealth {
        pool: "node-a".into(),
        device: "eth1".into(),
        healthy: true,
    }]);
    let stub = Arc::new(StubPreparer::default());
    let plugin = kubelet::serve(config.clone(), stub.clone(), health_rx)
        .await
        .unwrap();
    assert!(!plugin.is_ready());

    for socket in [plugin.dra_socket(), plugin.registration_socket()] {
        let mode = std::fs::metadata(socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", socket.display());
    }
    let dra_dir = plugin.dra_socket().parent().unwrap();
    assert_eq!(
        std::fs::metadata(dra_dir).unwrap().permissions().mode() & 0o777,
        0o750
    );

    let kubelet = FakeKubelet::new(dir.path());
    let registered = kubelet
        .wait_and_register(DRIVER, Verdict::Accept, WAIT)
        .await
        .unwrap();
    assert_eq!(registered.info.r#type, "DRAPlugin");
    assert_eq!(registered.info.name, DRIVER);
    assert_eq!(
        std::path::Path::new(&registered.info.endpoint),
        config.dra_socket()
    );
    assert!(std::path::Path::new(&registered.info.endpoint).is_absolute());
    assert_eq!(
        registered.info.supported_versions,
        vec![
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1alpha1.DRAResourceHealth"
        ]
    );
    assert_eq!(
        DraVersion::preferred(&registered.info),
        Some(DraVersion::V1)
    );
    wait_ready(&plugin, 1).await;

    let claims = [cref("good", "uid-1"), cref("broken", "uid-2")];
    for version in [DraVersion::V1, DraVersion::V1beta1] {
        let dra = registered.dra(version).await.unwrap();
        let answers = dra.prepare(&claims).await.unwrap();
        let good = &answers["uid-1"];
        assert_eq!(good.error, "");
        assert_eq!(good.devices.len(), 1);
        assert_eq!(good.devices[0].device, "eth1");
        assert_eq!(good.devices[0].pool, "node-a");
        assert_eq!(good.devices[0].request_names, vec!["nic"]);
        // share_id exists only in v1.
        let expected_share = (version == DraVersion::V1).then(|| "share-1".to_owned());
        assert_eq!(good.devices[0].share_id, expected_share);
        assert_eq!(
            answers["uid-2"].error,
            "claim default/broken: broken on purpose"
        );
        assert!(answers["uid-2"].devices.is_empty());
        let unprepared = dra.unprepare(&claims).await.unwrap();
        assert_eq!(unprepared["uid-1"], "");
    }

    // Health: full list on connect, then on every change.
    let mut health = registered.health().await.unwrap();
    let first = health.next(WAIT).await.unwrap().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].device, "eth1");
    assert_eq!(
        first[0].status,
        netclaim::kubelet::proto::health_v1alpha1::HealthStatus::Healthy
    );
    health_tx.send_replace(vec![
        DeviceHealth {
            pool: "node-a".into(),
            device: "eth1".into(),
            healthy: false,
        },
        DeviceHealth {
            pool: "node-a".into(),
            device: "eth2".into(),
            healthy: true,
        },
    ]);
    let second = health.next(WAIT).await.unwrap().unwrap();
    assert_eq!(second.len(), 2);
    assert_eq!(
        second[0].status,
        netclaim::kubelet::proto::health_v1alpha1::HealthStatus::Unhealthy
    );

    let (dra_socket, reg_socket) = (
        plugin.dra_socket().to_owned(),
        plugin.registration_socket().to_owned(),
    );
    tokio::time::timeout(WAIT, plugin.shutdown())
        .await
        .expect("shutdown hangs");
    assert!(!dra_socket.exists(), "DRA socket left behind");
    assert!(!reg_socket.exists(), "registration socket left behind");
}

#[tokio::test]
async fn stale_sockets_are_replaced() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for path in [config.registration_socket(), config.dra_socket()] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"stale").unwrap();
    }
    let (_tx, rx) = watch::channel(Vec::new());
    let plugin = kubelet::serve(config, Arc::new(StubPreparer::default()), rx)
        .await
        .unwrap();
    let registered = FakeKubelet::new(dir.path())
        .wait_and_register(DRIVER, Verdict::Accept, WAIT)
        .await
        .unwrap();
    wait_ready(&plugin, 1).await;
    let answers = registered
        .dra(DraVersion::V1beta1)
        .await
        .unwrap()
        .prepare(&[cref("x", "u")])
        .await
        .unwrap();
    assert_eq!(answers["u"].error, "");
    plugin.shutdown().await;
}

#[tokio::test]
async fn refused_registration_is_not_ready_and_registers_again() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(Vec::new());
    let plugin = kubelet::serve(config(dir.path()), Arc::new(StubPreparer::default()), rx)
        .await
        .unwrap();
    let kubelet = FakeKubelet::new(dir.path());
    let (socket, first_socket) = kubelet.wait_for_socket(DRIVER, None, WAIT).await.unwrap();
    kubelet
        .register(&socket, Verdict::Refuse("version mismatch".into()))
        .await
        .unwrap();
    let mut state = plugin.registration();
    // (The watch guard must not outlive the check: it blocks the plugin's writer.)
    let refused = tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, kubelet::RegistrationState::Refused { .. })),
    )
    .await
    .is_ok();
    assert!(refused);
    assert!(!plugin.is_ready());
    match &*plugin.registration().borrow() {
        kubelet::RegistrationState::Refused { error, attempt } => {
            assert_eq!(error, "version mismatch");
            assert_eq!(*attempt, 1);
        }
        other => panic!("unexpected state {other:?}"),
    }

    // A new socket file appears after the backoff; kubelet registers it.
    let (socket, _) = kubelet
        .wait_for_socket(DRIVER, Some(first_socket), WAIT)
        .await
        .unwrap();
    kubelet.register(&socket, Verdict::Accept).await.unwrap();
    wait_ready(&plugin, 2).await;
    assert!(plugin.is_ready());
    plugin.shutdown().await;
}

// ------------------------------------------------------------------ real preparer

/// A claim as the scheduler leaves it: spec with requests and config, status with the
/// allocation (class config first, then the claim's) and the reserving pod(s).
fn allocated_claim(name: &str, uid: &str, parameters: Value, pods: &[&str]) -> Value {
    let reserved: Vec<Value> = pods
        .iter()
        .map(|p| json!({"resource": "pods", "name": p, "uid": format!("{p}-uid")}))
        .collect();
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"devices": {
            "requests": [{"name": "nic", "exactly": {"deviceClassName": "netclaim"}}],
            "config": [{"requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters.clone()}}]
        }},
        "status": {
            "allocation": {"devices": {
                "results": [{"request": "nic", "driver": DRIVER, "pool": "node-a", "device": format!("dev-{name}")}],
                "config": [
                    {"source": "FromClass", "opaque": {"driver": DRIVER, "parameters": {"interface": {"mtu": 1500}}}},
                    {"source": "FromClaim", "requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters}}
                ]
            }},
            "reservedFor": reserved
        }
    })
}

struct Driver {
    plugin: KubeletPlugin,
    store: Arc<StateStore>,
    dra: netclaim_tests::kubelet::DraClient,
}

async fn start_driver(
    api: &FakeApiServer,
    kubelet_dir: &std::path::Path,
    state_dir: &std::path::Path,
    version: DraVersion,
) -> Driver {
    let store = Arc::new(StateStore::open(state_dir).unwrap());
    let client = api.client().await.unwrap();
    let preparer = prepare::Preparer::new(
        client,
        DRIVER,
        store.clone(),
        prepare::network_config_parser(),
    );
    let (_tx, rx) = watch::channel(Vec::new());
    let plugin = kubelet::serve(config(kubelet_dir), Arc::new(preparer), rx)
        .await
        .unwrap();
    let registered = FakeKubelet::new(kubelet_dir)
        .wait_and_register(DRIVER, Verdict::Accept, WAIT)
        .await
        .unwrap();
    wait_ready(&plugin, 1).await;
    let dra = registered.dra(version).await.unwrap();
    Driver { plugin, store, dra }
}

#[tokio::test]
async fn prepare_checkpoint_restart_unprepare() {
    init_tracing();
    let api = FakeApiServer::start().await.unwrap();
    let good_params =
        json!({"interface": {"name": "net1", "addresses": ["192.0.2.10/24"], "mtu": 9000}});
    api.put(allocated_claim("good", "uid-good", good_params, &["pod-a"]))
        .unwrap();
    api.put(allocated_claim(
        "bad",
        "uid-bad",
        json!({"interface": {"mtuu": 9000}}),
        &["pod-b"],
    ))
    .unwrap();
    api.put(allocated_claim(
        "invalid",
        "uid-invalid",
        json!({"interface": {"addresses": ["192.0.2.300/24"]}}),
        &["pod-e"],
    ))
    .unwrap();
    api.put(allocated_claim(
        "shared",
        "uid-shared",
        json!({}),
        &["pod-c", "pod-d"],
    ))
    .unwrap();
    let kubelet_dir = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();

    let driver = start_driver(
        &api,
        kubelet_dir.path(),
        state_dir.path(),
        DraVersion::V1beta1,
    )
    .await;

    // A mixed batch: one good claim, one with bad config, one shared, one stale UID,
    // one missing. Only the good one gets devices; the call itself succeeds.
    let batch = [
        cref("good", "uid-good"),
        cref("bad", "uid-bad"),
        cref("invalid", "uid-invalid"),
        cref("shared", "uid-shared"),
        cref("good", "uid-of-a-deleted-claim"),
        cref("missing", "uid-missing"),
    ];
    let answers = driver.dra.prepare(&batch).await.unwrap();
    assert_eq!(answers.len(), 6);
    let good = &answers["uid-good"];
    assert_eq!(good.error, "", "good claim failed");
    assert_eq!(good.devices.len(), 1);
    assert_eq!(good.devices[0].device, "dev-good");
    assert_eq!(good.devices[0].pool, "node-a");
    assert_eq!(good.devices[0].request_names, vec!["nic"]);

    let bad = &answers["uid-bad"].error;
    assert!(bad.contains("claim default/bad"), "{bad}");
    assert!(bad.contains("mtuu"), "{bad}");
    assert!(
        bad.contains("status.allocation.devices.config[1].opaque.parameters.interface.mtuu"),
        "{bad}"
    );
    // A semantic problem (found on the merged config) names the field too.
    let invalid = &answers["uid-invalid"].error;
    assert!(invalid.contains("claim default/invalid"), "{invalid}");
    assert!(invalid.contains("interface.addresses[0]"), "{invalid}");
    assert!(answers["uid-bad"].devices.is_empty());
    assert_eq!(
        answers["uid-shared"].error,
        "claim default/shared is reserved for 2 pods; netclaim devices are exclusive"
    );
    assert!(
        answers["uid-of-a-deleted-claim"].error.contains("uid"),
        "{}",
        answers["uid-of-a-deleted-claim"].error
    );
    assert!(answers["uid-missing"]
        .error
        .contains("claim default/missing: not found"));

    // The plan is in the checkpoint, with the merged config (class then claim).
    let stored = driver
        .store
        .get("uid-good")
        .unwrap()
        .expect("plan checkpointed");
    assert_eq!(stored.plans.len(), 1);
    let plan = &stored.plans[0];
    assert_eq!(plan.pod.name, "pod-a");
    assert_eq!(plan.pod.uid, "pod-a-uid");
    assert_eq!(plan.claim.uid, "uid-good");
    assert_eq!(plan.config["interface"]["mtu"], 9000);
    assert_eq!(plan.config["interface"]["name"], "net1");
    assert_eq!(plan.placement, netclaim::state::Placement::Home);
    assert!(driver.store.get("uid-bad").unwrap().is_none());

    // Idempotent: the second prepare answers from the checkpoint, even with the
    // claim gone from the API server.
    api.delete("ResourceClaim", "default", "good").unwrap();
    let again = driver
        .dra
        .prepare(&[cref("good", "uid-good")])
        .await
        .unwrap();
    assert_eq!(again["uid-good"], *good);

    // Restart: new plugin, new store from the same state dir.
    let Driver { plugin, store, dra } = driver;
    drop(dra);
    tokio::time::timeout(WAIT, plugin.shutdown()).await.unwrap();
    drop(store);
    let driver = start_driver(&api, kubelet_dir.path(), state_dir.path(), DraVersion::V1).await;
    assert_eq!(driver.store.list().unwrap().len(), 1);
    let after = driver
        .dra
        .prepare(&[cref("good", "uid-good")])
        .await
        .unwrap();
    assert_eq!(after["uid-good"].error, "");
    assert_eq!(after["uid-good"].devices[0].device, "dev-good");

    // Unprepare refuses while the device is inside the pod...
    let mut stored = driver.store.get("uid-good").unwrap().unwrap();
    let home = stored.plans[0].placement.clone();
    stored.plans[0].placement = netclaim::state::Placement::InPod {
        attachment: serde_json::from_value(serde_json::json!({
            "podNetns": "/run/netns/pod-a", "podIfname": "net1",
            "originals": {"name": "eth1", "ifindex": 7, "kind": null, "mtu": 1500,
                "mac": null, "perm_mac": null, "up": true, "addresses": [], "routes": [],
                "gso_max_size": null, "gro_max_size": null, "gso_ipv4_max_size": null,
                "gro_ipv4_max_size": null, "ethtool_features": {}, "ethtool_changeable": [],
                "private_flags": {}}
        }))
        .unwrap(),
    };
    driver.store.put(&stored).unwrap();
    let refused = driver
        .dra
        .unprepare(&[cref("good", "uid-good")])
        .await
        .unwrap();
    assert!(
        refused["uid-good"].contains("still attached to pod default/pod-a"),
        "{}",
        refused["uid-good"]
    );
    assert!(driver.store.get("uid-good").unwrap().is_some());

    // ...and forgets the claim once it is not.
    stored.plans[0].placement = home;
    driver.store.put(&stored).unwrap();
    let done = driver
        .dra
        .unprepare(&[cref("good", "uid-good"), cref("never", "uid-never")])
        .await
        .unwrap();
    assert_eq!(
        done,
        BTreeMap::from([
            ("uid-good".into(), String::new()),
            ("uid-never".into(), String::new())
        ])
    );
    assert!(driver.store.list().unwrap().is_empty());
    driver.plugin.shutdown().await;
}

#[tokio::test]
async fn fake_apiserver_speaks_kubernetes() {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    use kube::api::{Patch, PatchParams, PostParams};
    use kube::Api;

    init_tracing();
    let api = FakeApiServer::start().await.unwrap();
    api.put(allocated_claim("c", "uid-c", json!({}), &["p"]))
        .unwrap();
    let client = api.client().await.unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");

    let got = claims.get("c").await.unwrap();
    assert_eq!(got.metadata.uid.as_deref(), Some("uid-c"));
    let err = claims.get("nope").await.unwrap_err();
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 404),
        other => panic!("{other}"),
    }

    // Stale resourceVersion → 409.
    let mut stale = got.clone();
    stale.metadata.resource_version = Some("1".into());
    api.put(allocated_claim("c", "uid-c", json!({"x": 1}), &["p"]))
        .unwrap();
    let err = claims
        .replace("c", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 409),
        other => panic!("{other}"),
    }

    // Like kube-apiserver, the server refuses a status entry for a device the claim
    // was not allocated, naming the field.
    api.expect_rejections();
    let other = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "status": {"devices": [{"driver": "gpu.example.com", "pool": "p", "device": "gpu0"}]}});
    let err = claims
        .patch_status(
            "c",
            &PatchParams::apply("gpu.example.com"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            let causes = status.details.map(|d| d.causes).unwrap_or_default();
            assert_eq!(causes[0].field, "status.devices[0]", "{causes:?}");
            assert!(causes[0]
                .message
                .contains("must be an allocated device in the claim"));
        }
        other => panic!("{other}"),
    }
    let mut allocated = api.get("ResourceClaim", "default", "c").unwrap();
    allocated["status"]["allocation"]["devices"]["results"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"request": "nic", "driver": "gpu.example.com", "pool": "p", "device": "gpu0"}),
        );
    api.put(allocated).unwrap();

    // Server-side apply of status.devices keeps another driver's entries.
    claims
        .patch_status(
            "c",
            &PatchParams::apply("gpu.example.com"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    let mine = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "status": {"devices": [{"driver": DRIVER, "pool": "node-a", "device": "dev-c",
            "networkData": {"interfaceName": "net1"}}]}});
    let patched = claims
        .patch_status("c", &PatchParams::apply(DRIVER), &Patch::Apply(&mine))
        .await
        .unwrap();
    let devices = patched.status.unwrap().devices.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().any(|d| d.driver == "gpu.example.com"));
    // The status write did not touch the spec.
    let stored = api.get("ResourceClaim", "default", "c").unwrap();
    assert_eq!(
        stored["spec"]["devices"]["config"][0]["opaque"]["parameters"]["x"],
        1
    );

    // Watch from the list's resourceVersion sees later changes, filtered by field.
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let list = claims
        .list(&ListParams::default().fields("metadata.name=d"))
        .await
        .unwrap();
    assert!(list.items.is_empty());
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = claims
        .watch(
            &WatchParams::default().fields("metadata.name=d").timeout(10),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    api.put(allocated_claim("other", "uid-o", json!({}), &["p"]))
        .unwrap();
    api.put(allocated_claim("d", "uid-d", json!({}), &["p"]))
        .unwrap();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Added(claim) => assert_eq!(claim.metadata.name.as_deref(), Some("d")),
        other => panic!("unexpected {other:?}"),
    }
    api.delete("resourceclaims", "default", "d").unwrap();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(event, WatchEvent::Deleted(_)), "{event:?}");
}

/// Runs one unary call with grpcio (Debian's python3-grpcio): `Ok(response)` or
/// `Err(status text)`.
fn grpcio_call(
    socket: &std::path::Path,
    method: &str,
    request: &[u8],
    authority: Option<&str>,
) -> Result<Vec<u8>, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("grpcio/unary.py");
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(socket)
        .arg(method)
        .arg(hex)
        .args(authority)
        .output()
        .expect("running /usr/bin/python3 (cargo xtask setup installs python3-grpcio)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "grpcio client failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match text.split_once(' ') {
        Some(("OK", hex)) => Ok((0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect()),
        None if text == "OK" => Ok(Vec::new()),
        _ => Err(text),
    }
}

/// Operators' tools use other gRPC stacks than kubelet's: grpcio sends the
/// percent-encoded socket path as `:authority`. Both sockets must answer it.
#[tokio::test]
async fn grpcio_clients_are_served_on_both_sockets() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (_health_tx, health_rx) = watch::channel(Vec::new());
    let stub = Arc::new(StubPreparer::default());
    let plugin = kubelet::serve(config.clone(), stub.clone(), health_rx)
        .await
        .unwrap();
    // grpcio 1.51 (Debian) sends "localhost"; newer releases send the socket path
    // percent-encoded, which is what the second round asks for explicitly.
    let encoded = plugin
        .registration_socket()
        .display()
        .to_string()
        .replace('/', "%2F");
    for authority in [None, Some(encoded)] {
        let reg = plugin.registration_socket().to_path_buf();
        let a = authority.clone();
        let info = tokio::task::spawn_blocking(move || {
            grpcio_call(
                &reg,
                "/pluginregistration.Registration/GetInfo",
                &[],
                a.as_deref(),
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("GetInfo over grpcio (authority {authority:?}): {e}"));
        let text = String::from_utf8_lossy(&info);
        assert!(
            text.contains("DRAPlugin") && text.contains(DRIVER),
            "GetInfo answered {text:?}"
        );

        // NodePrepareResources with one claim (field 1: Claim{namespace=1, uid=2, name=3}).
        let claim = [
            &[0x0a, 0x07][..],
            b"default",
            &[0x12, 0x05],
            b"uid-1",
            &[0x1a, 0x03],
            b"web",
        ]
        .concat();
        let mut request = vec![0x0a, claim.len() as u8];
        request.extend_from_slice(&claim);
        let dra = plugin.dra_socket().to_path_buf();
        let a = authority.clone();
        let answer = tokio::task::spawn_blocking(move || {
            grpcio_call(
                &dra,
                "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
                &request,
                a.as_deref(),
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("NodePrepareResources over grpcio (authority {authority:?}): {e}")
        });
        assert!(
            String::from_utf8_lossy(&answer).contains("uid-1"),
            "the answer names the claim: {answer:?}"
        );
    }
    assert!(stub.calls.lock().unwrap().iter().any(|c| c.contains("web")));
}

/// A client that breaks HTTP/2 framing loses its own connection, not the server: the
/// socket keeps answering others.
#[tokio::test]
async fn broken_http2_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_health_tx, health_rx) = watch::channel(Vec::new());
    let plugin = kubelet::serve(
        config(dir.path()),
        Arc::new(StubPreparer::default()),
        health_rx,
    )
    .await
    .unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        // CONTINUATION without a HEADERS before it.
        (
            "stray continuation",
            [&[0, 0, 1, 0x9, 0x4, 0, 0, 0, 1][..], &[0x82]].concat(),
        ),
        // HEADERS whose HPACK block indexes past the (empty) dynamic table.
        (
            "bad hpack",
            [&[0, 0, 2, 0x1, 0x4, 0, 0, 0, 1][..], &[0xff, 0x7f]].concat(),
        ),
        // A preface, then the connection ends in the middle of a frame header.
        ("truncated", vec![0, 0, 9, 0x1]),
    ];
    for socket in [plugin.registration_socket(), plugin.dra_socket()] {
        for (name, frames) in &cases {
            let mut conn = tokio::net::UnixStream::connect(socket).await.unwrap();
            conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            conn.write_all(frames).await.unwrap();
            if *name == "truncated" {
                conn.shutdown().await.unwrap();
            }
            // The server's SETTINGS (and maybe a GOAWAY) arrive, then the end.
            let mut seen = Vec::new();
            let read = tokio::time::timeout(WAIT, conn.read_to_end(&mut seen)).await;
            assert!(
                matches!(read, Ok(Ok(_)) | Ok(Err(_))),
                "{name} on {}: the connection stays open",
                socket.display()
            );
        }
        let reg = plugin.registration_socket().to_path_buf();
        let info = tokio::task::spawn_blocking(move || {
            grpcio_call(&reg, "/pluginregistration.Registration/GetInfo", &[], None)
        })
        .await
        .unwrap()
        .expect("GetInfo after the broken connections");
        assert!(String::from_utf8_lossy(&info).contains("DRAPlugin"));
    }
}
