//! The pod lifecycle and the claim's device status against the real kernel and the
//! fake API server.
//!
//! Topology (nothing in the machine's root namespace):
//! ```text
//!  node ns                      wire ns
//!  nic0 203.0.113.77/24 <veth>  w0 192.0.2.1/24, lo 198.51.100.1, 203.0.113.1
//!  (the "NIC" of device nic-a)
//!  pod ns: receives nic0 as net1 192.0.2.10/24, route 198.51.100.0/24 via 192.0.2.1
//! ```
//! Plans are written straight into a `StateStore` in a temp dir, as prepare leaves
//! them; the ResourceClaim in the fake API server is allocated as a scheduler would.
//! Every check reads the kernel back with `ip -j` or the fake API server's stored
//! object, not through the driver's own code.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use netclaim::{
    lifecycle::{budget::Deadline, Action, DeviceResolver, LifecycleConfig, PodRuntime, Pods},
    netns::RestoreOutcome,
    state::{ClaimPlans, ClaimRecord, Plan, PodRecord, StateStore},
    status::{status_channel, DeviceEvent, StatusConfig, StatusReceiver, StatusWriter},
};
use netclaim_tests::{
    apiserver::FakeApiServer,
    dhcp_server::{DhcpServer, SERVER},
    netenv::{veth, TestBpfRoot, TestNetns},
    traffic::{udp_send, UdpSink},
};
use serde_json::{json, Value};

const DRIVER: &str = "netclaim.dev";
const POD_UID: &str = "pod-uid-1";
const N: u32 = 25;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn no_ipv6(ns: &TestNetns) {
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    .expect("sysctl");
}

struct Env {
    node: TestNetns,
    wire: TestNetns,
    pod: TestNetns,
    bpf: TestBpfRoot,
    state: tempfile::TempDir,
    api: FakeApiServer,
}

impl Env {
    async fn new(tag: &str) -> Env {
        let node = TestNetns::new(&format!("{tag}n")).expect("node ns");
        let wire = TestNetns::new(&format!("{tag}w")).expect("wire ns");
        let pod = TestNetns::new(&format!("{tag}p")).expect("pod ns");
        for ns in [&node, &wire, &pod] {
            no_ipv6(ns);
        }
        veth(&node, "nic0", &wire, "w0").expect("veth");
        node.ip(&["addr", "add", "203.0.113.77/24", "dev", "nic0"])
            .expect("host address");
        wire.ip(&["addr", "add", "192.0.2.1/24", "dev", "w0"])
            .expect("wire address");
        for a in ["198.51.100.1/32", "203.0.113.1/32"] {
            wire.ip(&["addr", "add", a, "dev", "lo"])
                .expect("lo address");
        }
        let bpf = TestBpfRoot::new(tag).expect("bpf root");
        let state = tempfile::tempdir().expect("state dir");
        let api = FakeApiServer::start().await.expect("fake apiserver");
        Env {
            node,
            wire,
            pod,
            bpf,
            state,
            api,
        }
    }

    /// nic0 is home as it was before any pod (name, MTU, address), and no pin is left.
    fn assert_nic_home(&self) {
        let (name, mtu, addrs) = link(&self.node, "nic0").expect("nic0 home");
        assert_eq!((name.as_str(), mtu), ("nic0", 1500));
        assert_eq!(addrs, vec!["203.0.113.77/24".to_string()]);
        assert!(
            self.bpf.leftovers().is_empty(),
            "pins left: {:?}",
            self.bpf.leftovers()
        );
    }

    fn store(&self) -> Arc<StateStore> {
        Arc::new(StateStore::open(self.state.path()).expect("checkpoint"))
    }

    fn pods(&self, store: Arc<StateStore>, status: Option<netclaim::status::StatusSender>) -> Pods {
        let resolver: Arc<dyn DeviceResolver> =
            Arc::new(|_pool: &str, device: &str| (device == "nic-a").then(|| "nic0".to_string()));
        let mut config = LifecycleConfig::new(self.bpf.path());
        config.root_netns = None;
        Pods::new(store, self.node.open(), resolver, config, status)
    }

    /// The claim (allocated, reserved for the pod, with another driver's status entry)
    /// in the API server and its plan in the checkpoint.
    fn claim(&self, store: &StateStore, name: &str, parameters: Value) {
        let uid = format!("uid-{name}");
        self.api
            .put(json!({
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": name, "namespace": "default", "uid": uid},
                "spec": {"devices": {
                    "requests": [{"name": "nic", "exactly": {"deviceClassName": "netclaim"}},
                                 {"name": "gpu", "exactly": {"deviceClassName": "other"}}],
                    "config": [{"requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters.clone()}}]
                }},
                "status": {
                    // The other driver's entry is for a device allocated to this claim too:
                    // the API server refuses entries for devices that are not.
                    "allocation": {"devices": {
                        "results": [{"request": "nic", "driver": DRIVER, "pool": "node-a", "device": "nic-a"},
                                    {"request": "gpu", "driver": "other.dev", "pool": "p", "device": "gpu0"}],
                        "config": [{"source": "FromClaim", "requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters}}]
                    }},
                    "reservedFor": [{"resource": "pods", "name": "pod1", "uid": POD_UID}],
                    "devices": [{"driver": "other.dev", "pool": "p", "device": "gpu0",
                                 "conditions": [], "data": {"x": 1}}]
                }
            }))
            .expect("put claim");
        let claim = ClaimRecord {
            namespace: "default".into(),
            name: name.into(),
            uid,
        };
        store
            .put(&ClaimPlans {
                claim: claim.clone(),
                plans: vec![Plan {
                    claim,
                    pod: PodRecord {
                        namespace: "default".into(),
                        name: "pod1".into(),
                        uid: POD_UID.into(),
                    },
                    device: "nic-a".into(),
                    pool: "node-a".into(),
                    requests: vec!["nic".into()],
                    config: parameters,
                    ..Default::default()
                }],
            })
            .expect("put plan");
    }

    async fn writer(&self) -> StatusWriter {
        let client = self.api.client().await.expect("client");
        let mut config = StatusConfig::new(DRIVER, self.bpf.path());
        config.backoff = Duration::from_millis(20);
        StatusWriter::new(client, config)
    }

    fn our_entry(&self, name: &str) -> Option<Value> {
        let claim = self.api.get("ResourceClaim", "default", name)?;
        claim["status"]["devices"]
            .as_array()?
            .iter()
            .find(|d| d["driver"] == DRIVER)
            .cloned()
    }

    fn other_entry_kept(&self, name: &str) -> bool {
        self.api
            .get("ResourceClaim", "default", name)
            .and_then(|c| c["status"]["devices"].as_array().cloned())
            .is_some_and(|l| {
                l.iter()
                    .any(|d| d["driver"] == "other.dev" && d["data"]["x"] == 1)
            })
    }
}

async fn drain(rx: &mut StatusReceiver, writer: &mut StatusWriter) -> Vec<DeviceEvent> {
    let mut seen = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        seen.push(ev.clone());
        writer.handle(ev).await;
    }
    seen
}

fn ip_json(ns: &TestNetns, args: &[&str]) -> Value {
    let out = ns.ip(args).expect("ip -j");
    serde_json::from_slice(&out.stdout).expect("ip json")
}

/// (name, mtu, global addresses) of a link, or None.
fn link(ns: &TestNetns, dev: &str) -> Option<(String, u64, Vec<String>)> {
    let out = ns.ip(&["-j", "addr", "show", "dev", dev]).ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let l = v.get(0)?;
    let addrs = l["addr_info"]
        .as_array()?
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect();
    Some((l["ifname"].as_str()?.to_string(), l["mtu"].as_u64()?, addrs))
}

fn condition<'a>(entry: &'a Value, ty: &str) -> &'a Value {
    entry["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

fn good_config() -> Value {
    json!({
        "interface": {"name": "net1", "addresses": ["192.0.2.10/24"], "mtu": 1400},
        "routes": [{"destination": "198.51.100.0/24", "gateway": "192.0.2.1"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_traffic_status_stop() {
    let env = Env::new("lc").await;
    let store = env.store();
    env.claim(&store, "c1", good_config());
    let (tx, mut rx) = status_channel();
    let pods = env.pods(store.clone(), Some(tx));
    let mut writer = env.writer().await;

    // Start: interface in the pod, named, addressed, routed; data path attached.
    let outcomes = pods
        .start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect("start_pod");
    assert_eq!(
        outcomes[0].action,
        Action::Attached {
            pod_ifname: "net1".into(),
            datapath: true
        }
    );
    let (name, mtu, addrs) = link(&env.pod, "net1").expect("net1 in the pod");
    assert_eq!((name.as_str(), mtu), ("net1", 1400));
    assert_eq!(addrs, vec!["192.0.2.10/24".to_string()]);
    assert!(link(&env.node, "nic0").is_none(), "nic0 left the node");
    let routes = ip_json(&env.pod, &["-j", "route", "show", "dev", "net1"]);
    assert!(
        routes
            .as_array()
            .expect("routes")
            .iter()
            .any(|r| r["dst"] == "198.51.100.0/24" && r["gateway"] == "192.0.2.1"),
        "claim route present: {routes}"
    );
    assert!(!env.bpf.leftovers().is_empty(), "data path pinned");
    let plan = store.get("uid-c1").expect("get").expect("plan");
    let att = plan.plans[0].attachment().expect("attachment recorded");
    assert!(plan.plans[0].in_pod() && att.datapath && att.pod_ifname == "net1");
    assert_eq!(att.originals.name, "nic0");

    // Repeated hook: nothing happens twice.
    let again = pods
        .start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect("start_pod again");
    assert!(matches!(again[0].action, Action::AlreadyAttached { .. }));

    // Status: all three conditions True, networkData read back from the kernel.
    let events = drain(&mut rx, &mut writer).await;
    assert!(matches!(events.as_slice(), [DeviceEvent::Started { .. }]));
    let entry = env
        .our_entry("c1")
        .unwrap_or_else(|| panic!("status entry written; refused: {:?}", env.api.rejections()));
    for ty in ["Ready", "NetworkReady", "DataPathReady"] {
        assert_eq!(condition(&entry, ty)["status"], "True", "{ty}: {entry}");
    }
    assert_eq!(condition(&entry, "Ready")["reason"], "NetworkDeviceReady");
    assert_eq!(entry["pool"], "node-a");
    assert_eq!(entry["device"], "nic-a");
    assert_eq!(entry["networkData"]["interfaceName"], "net1");
    assert_eq!(
        entry["networkData"]["hardwareAddress"],
        env.pod.mac("net1").expect("mac").as_str()
    );
    assert_eq!(entry["networkData"]["ips"], json!(["192.0.2.10/24"]));
    assert_eq!(entry["data"]["state"], "Available");
    assert!(entry["data"]["datapath"]["egressProgramId"]
        .as_u64()
        .is_some());
    assert!(env.other_entry_kept("c1"), "other driver's entry untouched");
    let ready_since = condition(&entry, "Ready")["lastTransitionTime"].clone();

    // Traffic: the claim's route passes, another destination is dropped.
    let pod_mac = env.pod.mac("net1").expect("pod mac");
    let wire_mac = env.wire.mac("w0").expect("wire mac");
    env.pod
        .ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &wire_mac,
            "dev",
            "net1",
            "nud",
            "permanent",
        ])
        .expect("neigh");
    env.wire
        .ip(&[
            "neigh",
            "replace",
            "192.0.2.10",
            "lladdr",
            &pod_mac,
            "dev",
            "w0",
            "nud",
            "permanent",
        ])
        .expect("neigh");
    env.pod
        .ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "net1",
        ])
        .expect("extra route outside the claim");
    let wire_ns = env.wire.open();
    let allowed = UdpSink::start(&wire_ns, sa("198.51.100.1:5000")).expect("sink");
    let forbidden = UdpSink::start(&wire_ns, sa("203.0.113.1:5000")).expect("sink");
    let pod_ns = env.pod.open();
    udp_send(&pod_ns, sa("192.0.2.10:0"), sa("198.51.100.1:5000"), N, 100).expect("send");
    udp_send(&pod_ns, sa("192.0.2.10:0"), sa("203.0.113.1:5000"), N, 100).expect("send");
    assert_eq!(
        allowed.wait_for(u64::from(N), Duration::from_secs(5)),
        u64::from(N)
    );
    assert_eq!(forbidden.wait_for(0, Duration::from_millis(300)), 0);

    // Refresh: counters match the traffic; no transition, so the time is kept.
    writer.refresh().await;
    let entry = env.our_entry("c1").expect("entry");
    let counters = &entry["data"]["counters"];
    assert_eq!(
        counters["routeHits"]["198.51.100.0/24"],
        u64::from(N),
        "{counters}"
    );
    let drops: u64 = counters["drops"]
        .as_object()
        .expect("drops")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(drops, u64::from(N), "{counters}");
    assert!(counters["txPackets"].as_u64().unwrap_or(0) >= u64::from(N));
    assert_eq!(
        condition(&entry, "Ready")["lastTransitionTime"],
        ready_since
    );

    // Stop: the device is home as it was, pins gone, checkpoint and status cleared.
    let stopped = pods.stop_pod(POD_UID).expect("stop_pod");
    assert!(matches!(
        stopped[0].action,
        Action::Returned(RestoreOutcome::Restored { .. })
    ));
    env.assert_nic_home();
    assert!(link(&env.pod, "net1").is_none());
    let plan = store.get("uid-c1").expect("get").expect("plan");
    assert_eq!(plan.plans[0].placement, netclaim::state::Placement::Home);
    drain(&mut rx, &mut writer).await;
    assert!(env.our_entry("c1").is_none(), "our entry removed on stop");
    assert!(env.other_entry_kept("c1"));

    // Remove after stop: nothing left to do, not an error.
    assert!(pods.remove_pod(POD_UID).expect("remove_pod").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_route_goes_home_and_reports_false() {
    let env = Env::new("lf").await;
    let store = env.store();
    // No addresses: the host's 203.0.113.77/24 is carried; 198.51.100.1 is no
    // neighbour on that link, so the kernel refuses the route.
    env.claim(
        &store,
        "c2",
        json!({
            "interface": {"name": "bad1", "mtu": 1300},
            "routes": [{"destination": "192.0.2.0/24", "gateway": "198.51.100.1"}]
        }),
    );
    let (tx, mut rx) = status_channel();
    let pods = env.pods(store.clone(), Some(tx));
    let mut writer = env.writer().await;

    let err = pods
        .start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect_err("the route cannot be added");
    let text = err.to_string();
    assert!(text.contains("claim default/c2"), "{text}");
    assert!(text.contains("device nic-a"), "{text}");
    assert!(text.contains("adding routes"), "{text}");

    env.assert_nic_home();
    assert!(link(&env.pod, "bad1").is_none());
    let plan = store.get("uid-c2").expect("get").expect("plan");
    assert_eq!(plan.plans[0].placement, netclaim::state::Placement::Home);

    drain(&mut rx, &mut writer).await;
    let entry = env.our_entry("c2").expect("status entry");
    let ready = condition(&entry, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "RoutesFailed");
    assert!(
        ready["message"].as_str().unwrap_or("").contains("routes"),
        "{ready}"
    );
    assert_eq!(condition(&entry, "NetworkReady")["status"], "False");
    assert_eq!(condition(&entry, "DataPathReady")["status"], "False");
    assert_eq!(condition(&entry, "DataPathReady")["reason"], "NotAttempted");
    assert_eq!(entry["data"]["state"], "Error");
    assert!(entry.get("networkData").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_driver_stops_a_pod_started_before() {
    let env = Env::new("lr").await;
    {
        let store = env.store();
        env.claim(&store, "c3", good_config());
        let pods = env.pods(store, None);
        pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
            .expect("start_pod");
        assert!(link(&env.pod, "net1").is_some());
    } // the old driver is gone; its pins and the device stay

    let store = env.store();
    let pods = env.pods(store.clone(), None);
    let stopped = pods.stop_pod(POD_UID).expect("stop by the new driver");
    assert_eq!(stopped.len(), 1);
    env.assert_nic_home();
}

/// StopPodSandbox answers before the device goes home (`stop_pod_behind`). What a
/// runtime does right after a stop must not cost the device or mix up the pod's
/// hooks: containerd tears the network down and deletes the namespace at once (done
/// here before the give-back can have finished; a veth dies with its namespace unless
/// it is held), kubelet may start a new sandbox of the same pod, and RemovePodSandbox
/// follows. Each later hook of the pod waits for the give-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_first_and_the_pods_next_hooks_wait_for_the_device() {
    let env = Env::new("lb").await;
    let store = env.store();
    env.claim(&store, "c9", good_config());
    let pods = env.pods(store.clone(), None);
    pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect("start_pod");
    assert!(link(&env.pod, "net1").is_some());

    let (done, gave_back) = std::sync::mpsc::channel();
    pods.stop_pod_behind(POD_UID, Some(done));
    netclaim_tests::netenv::run(std::process::Command::new("ip").args([
        "netns",
        "del",
        env.pod.name(),
    ]))
    .expect("the runtime deletes the pod's namespace");
    // A new sandbox of the same pod: it starts after the give-back, from home.
    let second = TestNetns::new("lb2").expect("second sandbox");
    no_ipv6(&second);
    pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(second.path()))
        .expect("start in the new sandbox");
    let returned = gave_back
        .recv_timeout(Duration::from_secs(10))
        .expect("the give-back ended")
        .expect("the give-back succeeded");
    assert!(
        matches!(
            returned[..],
            [netclaim::lifecycle::DeviceOutcome {
                action: Action::Returned(RestoreOutcome::Restored { .. }),
                ..
            }]
        ),
        "{returned:?}"
    );
    assert!(
        link(&second, "net1").is_some(),
        "not handed to the new sandbox"
    );

    // Stop and remove at once: remove returns with the device home and restored.
    pods.stop_pod_behind(POD_UID, None);
    pods.remove_pod(POD_UID).expect("remove_pod");
    env.assert_nic_home();
    assert!(link(&second, "net1").is_none());
    let plan = store.get("uid-c9").expect("get").expect("plan");
    assert_eq!(plan.plans[0].placement, netclaim::state::Placement::Home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronize_returns_devices_of_vanished_pods() {
    let env = Env::new("ls").await;
    let store = env.store();
    env.claim(&store, "c4", good_config());
    let pods = env.pods(store.clone(), None);
    pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect("start_pod");
    // The runtime lists no pods: the device goes home.
    let report = pods.synchronize(&BTreeMap::<String, PodRuntime>::new());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.returned.len(), 1);
    assert!(link(&env.node, "nic0").is_some());
    // The pod is listed again: its unattached device is handed over.
    let live = BTreeMap::from([(POD_UID.to_string(), PodRuntime::netns(env.pod.path()))]);
    let report = pods.synchronize(&live);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.started.len(), 1);
    assert!(link(&env.pod, "net1").is_some());
    pods.stop_pod(POD_UID).expect("stop");
}

/// A claim at the edges of what the API server takes in a status entry: 20 addresses
/// (networkData holds 16), an IPv4-mapped IPv6 address (which the server accepts only
/// written as IPv4) and 1,000 routes (whose hit counters alone would pass the 10 KiB
/// `data` limit). Every write goes to the enforcing fake API server, which fails the
/// test on any refusal; the entry must be complete or say what it left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fits_what_the_api_server_accepts() {
    let env = Env::new("fit").await;
    env.pod
        .exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )
        .expect("IPv6 in the pod");
    let mut addresses: Vec<String> = (10..28).map(|i| format!("192.0.2.{i}/24")).collect();
    addresses.push("::ffff:192.0.2.31/120".into());
    addresses.push("2001:db8::10/64".into());
    let routes: Vec<Value> = (0..1000)
        .map(|i| json!({"destination": format!("10.{}.{}.0/24", i / 256, i % 256), "gateway": "192.0.2.1"}))
        .collect();
    let store = env.store();
    env.claim(
        &store,
        "c5",
        json!({"interface": {"name": "net1", "addresses": addresses}, "routes": routes}),
    );
    let (tx, mut rx) = status_channel();
    let pods = env.pods(store.clone(), Some(tx));
    let mut writer = env.writer().await;
    pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect("start_pod");
    drain(&mut rx, &mut writer).await;
    writer.refresh().await;
    let entry = env
        .our_entry("c5")
        .unwrap_or_else(|| panic!("status entry written; refused: {:?}", env.api.rejections()));
    assert!(
        env.api.rejections().is_empty(),
        "{:?}",
        env.api.rejections()
    );
    let ips: Vec<&str> = entry["networkData"]["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ips.len(), 16, "{ips:?}");
    for ip in &ips {
        assert!(
            netclaim_tests::validation::interface_address(ip).is_ok(),
            "{ip} is not canonical"
        );
        assert!(!ip.starts_with("::ffff:"), "{ip}");
    }
    assert_eq!(entry["data"]["link"]["addresses"], 20, "{entry}");
    assert_eq!(
        entry["data"]["link"]["addressesNotInNetworkData"], 4,
        "{entry}"
    );
    let counters = &entry["data"]["counters"];
    assert_eq!(
        counters["routes"], 1003,
        "1,000 routes + three connected subnets (192.0.2.0/24, ::ffff:192.0.2.0/120, 2001:db8::/64): {counters}"
    );
    assert_eq!(counters["routeHits"].as_object().map(|m| m.len()), Some(16));
    let data_len = serde_json::to_string(&entry["data"]).expect("json").len();
    assert!(data_len <= 10 * 1024, "data is {data_len} bytes");
    println!("status data with 1,000 routes: {data_len} bytes; ips {ips:?}");
    for ty in ["Ready", "NetworkReady", "DataPathReady"] {
        assert_eq!(condition(&entry, ty)["status"], "True", "{ty}: {entry}");
    }
    pods.stop_pod(POD_UID).expect("stop");
}

/// When the API server refuses the full entry, the writer falls back to what
/// identifies the device and its conditions, and says why in a condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_status_keeps_its_conditions_and_says_why() {
    let env = Env::new("rej").await;
    env.api.refuse_status_field("networkData");
    let store = env.store();
    env.claim(&store, "c6", good_config());
    let (tx, mut rx) = status_channel();
    let pods = env.pods(store.clone(), Some(tx));
    let mut writer = env.writer().await;
    pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
        .expect("start_pod");
    drain(&mut rx, &mut writer).await;
    let entry = env.our_entry("c6").expect("the minimal entry was written");
    assert!(entry.get("networkData").is_none(), "{entry}");
    for ty in ["Ready", "NetworkReady", "DataPathReady"] {
        assert_eq!(
            condition(&entry, ty)["status"],
            "True",
            "{ty} kept: {entry}"
        );
    }
    let why = condition(&entry, "StatusComplete");
    assert_eq!(why["status"], "False", "{entry}");
    assert_eq!(why["reason"], "RejectedByAPIServer");
    assert!(
        why["message"]
            .as_str()
            .is_some_and(|m| m.contains("].networkData")),
        "{why}"
    );
    assert_eq!(entry["data"]["state"], "Available", "{entry}");
    assert!(!env.api.rejections().is_empty());
    pods.stop_pod(POD_UID).expect("stop");
}

fn dhcp_config() -> Value {
    json!({"interface": {"name": "net1", "dhcp": true}})
}

/// A runtime that gives the hook containerd's default budget (2 s), starting now.
fn runtime_with_budget(env: &Env, budget: Duration) -> PodRuntime {
    PodRuntime {
        deadline: Some(Deadline::new(budget)),
        ..PodRuntime::netns(env.pod.path())
    }
}

/// The leased IPv4 address on net1 in the pod (the only one), e.g. `192.0.2.117/24`.
fn pod_v4(env: &Env) -> Vec<String> {
    link(&env.pod, "net1")
        .map(|(_, _, a)| a)
        .unwrap_or_default()
}

/// Drops counted by the data path, summed over reasons, from the status entry.
fn drops_of(entry: &Value) -> u64 {
    entry["data"]["counters"]["drops"]
        .as_object()
        .map(|d| d.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// `interface.dhcp: true` through the pod lifecycle against dnsmasq on the wire: the
/// lease arrives within containerd's default hook budget, becomes the pod's address
/// and default route (the host's address is not carried along), the data path's
/// anti-spoofing set and the status' `data.dhcp`; stop releases it at the server and
/// the device comes home with its host address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_claim_gets_a_lease_enforced_and_released() {
    let env = Env::new("ld").await;
    let server = DhcpServer::start_on(&env.wire, "w0", 120, &["--no-ping"]).expect("dnsmasq");
    let store = env.store();
    env.claim(&store, "c7", dhcp_config());
    let (tx, mut rx) = status_channel();
    let pods = env.pods(store.clone(), Some(tx));
    let mut writer = env.writer().await;

    let started = std::time::Instant::now();
    let outcomes = pods
        .start_pod(
            POD_UID,
            "default/pod1",
            &runtime_with_budget(&env, Duration::from_secs(2)),
        )
        .expect("start_pod with a DHCP claim");
    let took = started.elapsed();
    println!("dhcp pod start: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        outcomes[0].action,
        Action::Attached {
            pod_ifname: "net1".into(),
            datapath: true
        }
    );
    let addrs = pod_v4(&env);
    assert_eq!(addrs.len(), 1, "only the leased address: {addrs:?}");
    let leased: std::net::Ipv4Addr = addrs[0]
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("address");
    assert!((100..=150).contains(&leased.octets()[3]), "{leased}");
    assert!(addrs[0].ends_with("/24"));
    let routes = ip_json(&env.pod, &["-j", "route", "show", "dev", "net1"]);
    assert!(
        routes
            .as_array()
            .expect("routes")
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "192.0.2.1"),
        "default route from the lease: {routes}"
    );
    let pod_mac = env.pod.mac("net1").expect("pod mac");
    server
        .wait_for(Duration::from_secs(2), "the pod's lease", |l| {
            l.iter().any(|x| x.address == leased && x.mac == pod_mac)
        })
        .expect("server booked the lease");
    let plan = store.get("uid-c7").expect("get").expect("plan");
    let att = plan.plans[0].attachment().expect("attachment");
    let record = att.dhcp.as_ref().expect("lease recorded");
    assert_eq!(
        record.lease.as_ref().map(|l| l.address.addr()),
        Some(leased)
    );
    assert!(
        record.policy.as_ref().is_some_and(|p| p.dhcp_client),
        "base policy recorded"
    );

    // Status: the lease in data.dhcp, accepted by the validating API server.
    let events = drain(&mut rx, &mut writer).await;
    assert!(matches!(
        events.as_slice(),
        [DeviceEvent::Started { dhcp: Some(_), .. }]
    ));
    let entry = env
        .our_entry("c7")
        .unwrap_or_else(|| panic!("status entry written; refused: {:?}", env.api.rejections()));
    assert_eq!(entry["data"]["dhcp"]["address"], addrs[0].as_str());
    assert_eq!(entry["data"]["dhcp"]["server"], SERVER.to_string());
    assert_eq!(entry["data"]["dhcp"]["leaseSeconds"], 120);
    assert!(entry["data"]["dhcp"]["expiresAt"].is_string());
    assert_eq!(entry["networkData"]["ips"], json!([addrs[0]]));
    for ty in ["Ready", "NetworkReady", "DataPathReady"] {
        assert_eq!(condition(&entry, ty)["status"], "True", "{ty}: {entry}");
    }

    // Traffic: from the leased address it passes; from an address the pod added
    // itself (the kernel would send it) the data path drops it.
    let wire_mac = env.wire.mac("w0").expect("wire mac");
    env.pod
        .ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &wire_mac,
            "dev",
            "net1",
            "nud",
            "permanent",
        ])
        .expect("neigh");
    env.pod
        .ip(&["addr", "add", "192.0.2.99/32", "dev", "net1"])
        .expect("spoof address");
    let wire_ns = env.wire.open();
    let sink = UdpSink::start(&wire_ns, sa("198.51.100.1:5000")).expect("sink");
    let pod_ns = env.pod.open();
    udp_send(
        &pod_ns,
        SocketAddr::new(leased.into(), 0),
        sa("198.51.100.1:5000"),
        N,
        100,
    )
    .expect("send");
    assert_eq!(
        sink.wait_for(u64::from(N), Duration::from_secs(5)),
        u64::from(N)
    );
    udp_send(&pod_ns, sa("192.0.2.99:0"), sa("198.51.100.1:5000"), N, 100).expect("send");
    assert_eq!(
        sink.wait_for(u64::from(2 * N), Duration::from_millis(300)),
        u64::from(N),
        "spoofed source dropped"
    );
    writer.refresh().await;
    let entry = env.our_entry("c7").expect("entry");
    assert_eq!(
        drops_of(&entry),
        u64::from(N),
        "{}",
        entry["data"]["counters"]
    );

    // Stop: RELEASE at the server, device home with its host address, nothing left.
    let stopped = pods.stop_pod(POD_UID).expect("stop_pod");
    assert!(matches!(
        stopped[0].action,
        Action::Returned(RestoreOutcome::Restored { .. })
    ));
    server
        .wait_for(Duration::from_secs(2), "no lease", |l| l.is_empty())
        .expect("lease released");
    assert!(server.log().contains("DHCPRELEASE"), "{}", server.log());
    env.assert_nic_home();
    let plan = store.get("uid-c7").expect("get").expect("plan");
    assert_eq!(plan.plans[0].placement, netclaim::state::Placement::Home);
    drain(&mut rx, &mut writer).await;
    assert!(env.our_entry("c7").is_none());
}

/// A server that never answers (dnsmasq ignoring every unknown client): the pod start
/// fails before the runtime's budget runs out, names the step, and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_without_an_answer_fails_within_the_budget_and_leaves_nothing() {
    let env = Env::new("lq").await;
    let server = DhcpServer::start_on(
        &env.wire,
        "w0",
        120,
        &["--no-ping", "--dhcp-ignore=tag:!known"],
    )
    .expect("dnsmasq");
    let store = env.store();
    env.claim(&store, "c8", dhcp_config());
    let (tx, mut rx) = status_channel();
    let pods = env.pods(store.clone(), Some(tx));
    let mut writer = env.writer().await;
    let budget = Duration::from_millis(1500);
    let started = std::time::Instant::now();
    let err = pods
        .start_pod(POD_UID, "default/pod1", &runtime_with_budget(&env, budget))
        .expect_err("no lease, no pod start");
    let took = started.elapsed();
    println!("dhcp silent server: failed after {took:?}: {err}");
    assert!(took < budget, "{took:?}");
    let text = err.to_string();
    assert!(
        text.contains("claim default/c8")
            && text.contains("device nic-a")
            && text.contains("acquiring a DHCP lease"),
        "{text}"
    );
    env.assert_nic_home();
    assert!(link(&env.pod, "net1").is_none());
    let plan = store.get("uid-c8").expect("get").expect("plan");
    assert_eq!(plan.plans[0].placement, netclaim::state::Placement::Home);
    assert!(server.leases().expect("leases").is_empty());
    assert!(
        server.log().contains("DHCPDISCOVER"),
        "the server was asked"
    );
    drain(&mut rx, &mut writer).await;
    let entry = env.our_entry("c8").expect("failure entry");
    assert_eq!(
        condition(&entry, "NetworkReady")["reason"],
        "DhcpLeaseFailed"
    );
    assert_eq!(entry["data"]["state"], "Error");
}

/// A driver that shuts down leaves the lease installed and booked; the next run takes
/// it over from the checkpoint at start (`adopt`), renews it (T1 of 3 s here) and
/// releases it when the pod stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_driver_renews_and_releases_the_recorded_lease() {
    let env = Env::new("lt").await;
    let server = DhcpServer::start_on(
        &env.wire,
        "w0",
        120,
        &[
            "--no-ping",
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,100",
        ],
    )
    .expect("dnsmasq");
    let leased;
    {
        let store = env.store();
        env.claim(&store, "c9", dhcp_config());
        let pods = env.pods(store, None);
        pods.start_pod(POD_UID, "default/pod1", &PodRuntime::netns(env.pod.path()))
            .expect("start_pod");
        leased = pod_v4(&env);
        assert_eq!(leased.len(), 1);
    } // the driver stops; the pod runs on
    assert_eq!(pod_v4(&env), leased, "the lease stays installed");
    let booked = server.leases().expect("leases");
    assert_eq!(booked.len(), 1, "not released at shutdown: {booked:?}");
    let first_expiry = booked[0].expires;

    let store = env.store();
    let pods = env.pods(store.clone(), None);
    let adopted = pods.adopt();
    assert!(adopted.is_empty(), "the pod is alive: {adopted:?}");
    // The new run renews at T1 (3 s after the grant): the server moves the expiry on.
    server
        .wait_for(Duration::from_secs(8), "a renewal by the new run", |l| {
            l.iter().any(|x| x.expires > first_expiry)
        })
        .expect("renewed after the restart");
    assert!(server.log().contains("DHCPREQUEST"), "{}", server.log());
    let plan = store.get("uid-c9").expect("get").expect("plan");
    let recorded = plan.plans[0]
        .attachment()
        .and_then(|a| a.dhcp.as_ref())
        .and_then(|d| d.lease.clone())
        .expect("lease in the checkpoint");
    assert_eq!(recorded.address.to_string(), leased[0]);
    pods.stop_pod(POD_UID).expect("stop by the new run");
    server
        .wait_for(Duration::from_secs(2), "no lease", |l| l.is_empty())
        .expect("released by the new run");
    assert_eq!(
        link(&env.node, "nic0").map(|l| l.2),
        Some(vec!["203.0.113.77/24".to_string()])
    );
    assert!(env.bpf.leftovers().is_empty(), "{:?}", env.bpf.leftovers());
}
