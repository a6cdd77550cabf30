//! The ResourceSlice publisher against the fake API server: attributes of real veth
//! devices found by a real `InventoryWatcher` in a test namespace, the 128-device split
//! with one pool generation, republish latency on link add/remove, repair after
//! outside deletes and edits, stale slices after a shrink, and the owner reference to
//! the Node. Kernel objects live only in the tests' own namespaces.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netclaim::inventory::{AttrValue, Device, InventoryOptions, InventoryWatcher};
use netclaim::publisher::{Publisher, PublisherHandle};
use netclaim_tests::apiserver::FakeApiServer;
use netclaim_tests::netenv::{veth, TestNetns};
use serde_json::{json, Value};
use tokio::sync::watch;

const DRIVER: &str = "netclaim.dev";
const NODE: &str = "node-a";
/// Republish and repair deadline.
const DEADLINE: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(10);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// This node's slices, by name.
fn slices(api: &FakeApiServer) -> BTreeMap<String, Value> {
    api.list("ResourceSlice")
        .into_iter()
        .filter(|s| s["spec"]["nodeName"] == NODE)
        .filter_map(|s| Some((s["metadata"]["name"].as_str()?.to_string(), s)))
        .collect()
}

/// Every device of the node's slices.
fn devices(api: &FakeApiServer) -> Vec<Value> {
    slices(api)
        .values()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn device_by_ifname(api: &FakeApiServer, ifname: &str) -> Option<Value> {
    devices(api)
        .into_iter()
        .find(|d| d["attributes"][format!("{DRIVER}/ifName")]["string"] == ifname)
}

/// The pool's generations (one per slice).
fn generations(api: &FakeApiServer) -> Vec<i64> {
    slices(api)
        .values()
        .filter_map(|s| s["spec"]["pool"]["generation"].as_i64())
        .collect()
}

/// Polls the fake server until `pred` holds; returns how long it took from `since`.
async fn wait_until(
    what: &str,
    since: Instant,
    api: &FakeApiServer,
    pred: impl Fn(&FakeApiServer) -> bool,
) -> Duration {
    loop {
        if pred(api) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < WAIT,
            "{what}: not seen after {WAIT:?}; slices: {:#}",
            json!(slices(api))
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the publisher reports a generation (other than `not`).
async fn wait_published(handle: &PublisherHandle, not: Option<u64>) -> u64 {
    let mut rx = handle.published();
    let r = tokio::time::timeout(WAIT, rx.wait_for(|g| g.is_some() && *g != not))
        .await
        .map(|r| r.map(|g| *g).ok());
    let g = *rx.borrow();
    assert!(r.is_ok(), "publisher did not publish (last {g:?})");
    g.unwrap_or_default()
}

fn put_node(api: &FakeApiServer) -> String {
    let node = api
        .put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .unwrap();
    node["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn synthetic(count: usize) -> Vec<Device> {
    (0..count)
        .map(|i| Device {
            name: format!("dev-{i:04}"),
            ifname: format!("eth{i}"),
            ifindex: u32::try_from(i).unwrap_or(0) + 2,
            attributes: BTreeMap::from([
                (
                    format!("{DRIVER}/ifName"),
                    AttrValue::String(format!("eth{i}")),
                ),
                (format!("{DRIVER}/mtu"), AttrValue::Int(1500)),
            ]),
            carrier_lost: false,
        })
        .collect()
}

async fn start(api: &FakeApiServer, devices: watch::Receiver<Arc<Vec<Device>>>) -> PublisherHandle {
    let client = api.client().await.unwrap();
    Publisher::start(client, DRIVER.into(), NODE.into(), devices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_slices_owner_and_republish_latency() {
    init_tracing();
    let api = FakeApiServer::start().await.unwrap();
    let uid = put_node(&api);
    let ns = TestNetns::new("pub").unwrap();
    veth(&ns, "va", &ns, "vb").unwrap();
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "va"])
        .unwrap();

    let watcher =
        InventoryWatcher::start(Arc::new(ns.open()), InventoryOptions::default()).unwrap();
    let started = Instant::now();
    let publisher = start(&api, watcher.subscribe()).await;
    let g1 = wait_published(&publisher, None).await;
    println!("first publish: {:?}", started.elapsed());

    let all = slices(&api);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (name, slice) = all.iter().next().unwrap();
    assert_eq!(name, "node-a-netclaim-dev-0");
    assert_eq!(slice["spec"]["driver"], DRIVER);
    assert_eq!(slice["spec"]["pool"]["name"], NODE);
    assert_eq!(slice["spec"]["pool"]["generation"], g1);
    assert_eq!(slice["spec"]["pool"]["resourceSliceCount"], 1);
    assert_eq!(slice["metadata"]["labels"]["netclaim.dev/node"], NODE);
    assert_eq!(
        slice["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": uid, "controller": true}])
    );
    for (ifname, peer) in [("va", "vb"), ("vb", "va")] {
        let d = device_by_ifname(&api, ifname).unwrap_or_else(|| panic!("{ifname} not published"));
        let a = &d["attributes"];
        let q = |n: &str| a[format!("{DRIVER}/{n}")].clone();
        assert_eq!(q("kind"), json!({"string": "veth"}), "{d:#}");
        assert_eq!(q("virtual"), json!({"bool": true}));
        assert_eq!(q("mac"), json!({"string": ns.mac(ifname).unwrap()}));
        assert_eq!(q("mtu"), json!({"int": 1500}));
        assert_eq!(q("driver"), json!({"string": "veth"}));
        assert!(d["name"].as_str().is_some_and(|n| !n.is_empty()), "{peer}");
    }
    let va = device_by_ifname(&api, "va").unwrap_or_default();
    assert_eq!(
        va["attributes"][format!("{DRIVER}/ipv4")],
        json!({"string": "192.0.2.1/24"})
    );
    assert!(device_by_ifname(&api, "lo").is_none());

    // Link added: both ends appear within 1 s, one generation higher.
    let t = Instant::now();
    veth(&ns, "vc", &ns, "vd").unwrap();
    let took = wait_until("link add", t, &api, |api| {
        device_by_ifname(api, "vc").is_some() && device_by_ifname(api, "vd").is_some()
    })
    .await;
    println!("republish after link add: {took:?}");
    assert!(took < DEADLINE, "link add took {took:?}");
    let g2 = wait_published(&publisher, Some(g1)).await;
    assert!(g2 > g1);
    assert_eq!(generations(&api), vec![i64::try_from(g2).unwrap_or(0)]);

    // Attribute change: a new generation too.
    let t = Instant::now();
    ns.ip(&["link", "set", "vc", "mtu", "1400"]).unwrap();
    let took = wait_until("mtu change", t, &api, |api| {
        device_by_ifname(api, "vc")
            .is_some_and(|d| d["attributes"][format!("{DRIVER}/mtu")]["int"] == 1400)
    })
    .await;
    println!("republish after mtu change: {took:?}");
    assert!(took < DEADLINE);
    let g3 = wait_published(&publisher, Some(g2)).await;
    assert!(g3 > g2);

    // Link removed.
    let t = Instant::now();
    ns.ip(&["link", "del", "vc"]).unwrap();
    let took = wait_until("link remove", t, &api, |api| {
        device_by_ifname(api, "vc").is_none() && device_by_ifname(api, "vd").is_none()
    })
    .await;
    println!("republish after link remove: {took:?}");
    assert!(took < DEADLINE, "link remove took {took:?}");
    assert!(device_by_ifname(&api, "va").is_some());
    drop(publisher);
    drop(watcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_into_slices_of_128_and_shrink_deletes_stale() {
    init_tracing();
    let api = FakeApiServer::start().await.unwrap();
    put_node(&api);
    let (tx, rx) = watch::channel(Arc::new(synthetic(129)));
    let publisher = start(&api, rx).await;
    let g1 = wait_published(&publisher, None).await;

    let all = slices(&api);
    let names: Vec<&String> = all.keys().collect();
    assert_eq!(names, ["node-a-netclaim-dev-0", "node-a-netclaim-dev-1"]);
    let sizes: Vec<usize> = all
        .values()
        .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![128, 1]);
    for s in all.values() {
        assert_eq!(s["spec"]["pool"]["generation"], g1);
        assert_eq!(s["spec"]["pool"]["resourceSliceCount"], 2);
    }
    // Sorted by device name: the last one lands alone in slice 1.
    assert_eq!(
        all["node-a-netclaim-dev-1"]["spec"]["devices"][0]["name"],
        "dev-0128"
    );

    // 300 devices: three slices, one new generation.
    tx.send_replace(Arc::new(synthetic(300)));
    let g2 = wait_published(&publisher, Some(g1)).await;
    let all = slices(&api);
    assert_eq!(all.len(), 3);
    assert!(all
        .values()
        .all(|s| s["spec"]["pool"]["generation"] == g2
            && s["spec"]["pool"]["resourceSliceCount"] == 3));

    // Shrink to 5: the extra slices are deleted, the remaining one has a new generation.
    let t = Instant::now();
    tx.send_replace(Arc::new(synthetic(5)));
    let took = wait_until("shrink", t, &api, |api| slices(api).len() == 1).await;
    println!("shrink 300 -> 5 devices: {took:?}");
    assert!(took < DEADLINE);
    let g3 = wait_published(&publisher, Some(g2)).await;
    let all = slices(&api);
    let only = &all["node-a-netclaim-dev-0"];
    assert_eq!(only["spec"]["pool"]["generation"], g3);
    assert_eq!(only["spec"]["pool"]["resourceSliceCount"], 1);
    assert_eq!(only["spec"]["devices"].as_array().map(Vec::len), Some(5));

    // No devices at all: one empty slice keeps the pool visible.
    tx.send_replace(Arc::new(Vec::new()));
    let g4 = wait_published(&publisher, Some(g3)).await;
    let all = slices(&api);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all["node-a-netclaim-dev-0"]["spec"]["pool"]["generation"],
        g4
    );

    // A restarted publisher with the same devices keeps the generation.
    drop(publisher);
    let (_tx2, rx2) = watch::channel(Arc::new(Vec::new()));
    let again = start(&api, rx2).await;
    assert_eq!(wait_published(&again, None).await, g4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_deletes_and_edits_are_repaired() {
    init_tracing();
    let api = FakeApiServer::start().await.unwrap();
    put_node(&api);
    let (_tx, rx) = watch::channel(Arc::new(synthetic(200)));
    let publisher = start(&api, rx).await;
    let g = wait_published(&publisher, None).await;
    let original = slices(&api);
    assert_eq!(original.len(), 2);
    let name = "node-a-netclaim-dev-1";
    let intact = |api: &FakeApiServer| {
        slices(api).get(name).is_some_and(|s| {
            s["spec"] == original[name]["spec"]
                && ["netclaim.dev/node", "netclaim.dev/driver"]
                    .iter()
                    .all(|k| s["metadata"]["labels"][k] == original[name]["metadata"]["labels"][k])
        })
    };

    // Deleted by someone else: recreated.
    let t = Instant::now();
    assert!(api.delete("ResourceSlice", "", name).is_some());
    let took = wait_until("recreate after delete", t, &api, intact).await;
    println!("repair after outside delete: {took:?}");
    assert!(took < DEADLINE, "{took:?}");

    // Spec edited by someone else: overwritten.
    let mut edited = slices(&api)[name].clone();
    edited["spec"]["devices"][0]["attributes"][format!("{DRIVER}/mtu")] = json!({"int": 9000});
    edited["spec"]["pool"]["generation"] = json!(g);
    let t = Instant::now();
    api.put(edited).unwrap();
    let took = wait_until("overwrite after edit", t, &api, intact).await;
    println!("repair after outside edit: {took:?}");
    assert!(took < DEADLINE, "{took:?}");

    // Our labels removed (the slice leaves our selector): found and relabelled.
    let mut unlabeled = slices(&api)[name].clone();
    unlabeled["metadata"]["labels"] = json!({"someone": "else"});
    let t = Instant::now();
    api.put(unlabeled).unwrap();
    let took = wait_until("relabel", t, &api, intact).await;
    println!("repair after label removal: {took:?}");
    assert!(took < DEADLINE, "{took:?}");
    assert_eq!(slices(&api)[name]["metadata"]["labels"]["someone"], "else");

    // A stray slice with our labels: deleted.
    let mut stray = slices(&api)[name].clone();
    stray["metadata"] =
        json!({"name": "node-a-netclaim-dev-7", "labels": original[name]["metadata"]["labels"]});
    let t = Instant::now();
    api.put(stray).unwrap();
    let took = wait_until("stray deleted", t, &api, |api| {
        !slices(api).contains_key("node-a-netclaim-dev-7")
    })
    .await;
    println!("stray slice deleted: {took:?}");
    assert!(took < DEADLINE, "{took:?}");

    // A storm of outside edits racing the repairs (the publisher's replaces hit 409s
    // on stale resourceVersions and re-read): it still ends intact.
    for i in 0..50 {
        let mut edited = slices(&api)[name].clone();
        edited["spec"]["devices"][0]["attributes"][format!("{DRIVER}/mtu")] = json!({"int": i});
        api.put(edited).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t = Instant::now();
    let took = wait_until("repair after edit storm", t, &api, intact).await;
    println!("repair after 50 racing edits: {took:?}");
    assert!(took < DEADLINE, "{took:?}");

    // The generation never moved: the devices did not change.
    assert_eq!(*publisher.published().borrow(), Some(g));
    assert!(generations(&api)
        .iter()
        .all(|x| u64::try_from(*x).ok() == Some(g)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_node_publishes_without_owner() {
    init_tracing();
    let api = FakeApiServer::start().await.unwrap();
    let (_tx, rx) = watch::channel(Arc::new(synthetic(3)));
    let publisher = start(&api, rx).await;
    wait_published(&publisher, None).await;
    let all = slices(&api);
    assert_eq!(all.len(), 1);
    let s = &all["node-a-netclaim-dev-0"];
    assert!(
        s["metadata"]["ownerReferences"].is_null() || s["metadata"]["ownerReferences"] == json!([])
    );
    assert_eq!(s["spec"]["devices"].as_array().map(Vec::len), Some(3));
}

/// A node with 300 real links under the longest names the kernel allows, scanned by
/// the real inventory and published to the enforcing fake API server: every slice is
/// accepted (any refusal fails this test when the server is dropped) and every link is
/// in one of the three slices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_real_links_with_long_names_are_accepted() {
    use netclaim::inventory::Inventory;
    init_tracing();
    let node = TestNetns::new("p300").unwrap();
    let peer = TestNetns::new("p300p").unwrap();
    let mut batch = String::new();
    for i in 0..150 {
        // 15 bytes, IFNAMSIZ - 1: the longest name a link can have.
        batch.push_str(&format!(
            "link add nc-longname-{i:03} type veth peer name nc-peer-name{i:03} netns {}\n",
            peer.name()
        ));
        batch.push_str(&format!("link set nc-longname-{i:03} up\n"));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    node.ip(&["-batch", file.path().to_str().unwrap()]).unwrap();
    let mut batch = String::new();
    for i in 0..150 {
        batch.push_str(&format!(
            "link add nc-node-side{i:03} type veth peer name nc-node-othr{i:03}\n"
        ));
    }
    std::fs::write(file.path(), batch).unwrap();
    node.ip(&["-batch", file.path().to_str().unwrap()]).unwrap();

    let opts = InventoryOptions::default();
    let scanned = Inventory::scan(&node.open(), &opts).unwrap();
    assert!(scanned.len() >= 300, "{} devices", scanned.len());
    let api = FakeApiServer::start().await.unwrap();
    put_node(&api);
    let (_tx, rx) = watch::channel(Arc::new(scanned.clone()));
    let publisher = start(&api, rx).await;
    wait_published(&publisher, None).await;
    let all = slices(&api);
    let published: usize = all
        .values()
        .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(published, scanned.len());
    assert_eq!(all.len(), scanned.len().div_ceil(128));
    assert!(api.rejections().is_empty(), "{:?}", api.rejections());
}

/// PCI devices rendered from a fake sysfs tree (an SR-IOV PF with RDMA and one VF) go
/// through the real publisher to the enforcing fake API server: accepted (any refusal
/// fails the test), with the standard `resource.kubernetes.io` attributes and the
/// SR-IOV facts readable from the stored slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pci_attributes_from_a_fake_sysfs_are_published() {
    use netclaim::inventory::attributes::{link_attributes, LinkPrograms, LinkSources};
    use netclaim::inventory::host::EthtoolFacts;
    use netclaim::inventory::links::LinkFacts;
    use netclaim::inventory::sysfs::SysfsRoot;
    use netclaim_tests::fake_sysfs::{FakePciFunction, FakeSysfs};

    init_tracing();
    let fake = FakeSysfs::new().unwrap();
    let parents = vec!["pci0000:17".to_string(), "0000:17:02.0".to_string()];
    fake.add(&FakePciFunction {
        address: "0000:18:00.0".into(),
        parents: parents.clone(),
        vendor: Some("8086".into()),
        device: Some("159b".into()),
        subsystem_device: Some("0003".into()),
        numa_node: Some(0),
        sriov_totalvfs: Some(64),
        sriov_numvfs: Some(1),
        rdma: vec!["irdma0".into()],
        ..Default::default()
    })
    .unwrap();
    fake.add(&FakePciFunction {
        address: "0000:18:01.0".into(),
        parents,
        vendor: Some("8086".into()),
        device: Some("1889".into()),
        numa_node: Some(0),
        physfn: Some("0000:18:00.0".into()),
        ..Default::default()
    })
    .unwrap();
    let sysfs = SysfsRoot::new(fake.root());
    let devices: Vec<Device> = [
        (2, "ens785f0", "0000:18:00.0"),
        (3, "ens785f0v0", "0000:18:01.0"),
    ]
    .into_iter()
    .map(|(ifindex, ifname, address)| {
        let link = LinkFacts {
            ifindex,
            ifname: ifname.into(),
            mtu: Some(1500),
            link_layer_type: 1,
            parent_bus: Some("pci".into()),
            parent_dev: Some(address.into()),
            ..Default::default()
        };
        let pci = sysfs.pci_function(address);
        Device {
            name: format!("pci-{}", address.replace([':', '.'], "-")),
            ifname: ifname.into(),
            ifindex,
            attributes: link_attributes(
                DRIVER,
                LinkSources {
                    link: &link,
                    ethtool: &EthtoolFacts::default(),
                    pci: pci.as_ref(),
                    rdma_on_link: false,
                    programs: &LinkPrograms::default(),
                },
            ),
            carrier_lost: false,
        }
    })
    .collect();

    let api = FakeApiServer::start().await.unwrap();
    put_node(&api);
    let (_tx, rx) = watch::channel(Arc::new(devices));
    let publisher = start(&api, rx).await;
    wait_published(&publisher, None).await;
    assert!(api.rejections().is_empty(), "{:?}", api.rejections());

    let pf = device_by_ifname(&api, "ens785f0").expect("PF published");
    let a = &pf["attributes"];
    assert_eq!(pf["name"], "pci-0000-18-00-0");
    assert_eq!(
        a["resource.kubernetes.io/pcieRoot"],
        json!({"string": "pci0000:17"})
    );
    assert_eq!(
        a["resource.kubernetes.io/pciBusID"],
        json!({"string": "0000:18:00.0"})
    );
    assert_eq!(a["resource.kubernetes.io/numaNode"], json!({"int": 0}));
    assert_eq!(a[format!("{DRIVER}/sriov")], json!({"bool": true}));
    assert_eq!(a[format!("{DRIVER}/sriovVfs")], json!({"int": 1}));
    assert_eq!(a[format!("{DRIVER}/rdma")], json!({"bool": true}));
    assert_eq!(
        a[format!("{DRIVER}/pciSubsystem")],
        json!({"string": "0003"})
    );
    let vf = device_by_ifname(&api, "ens785f0v0").expect("VF published");
    let a = &vf["attributes"];
    assert_eq!(a[format!("{DRIVER}/isSriovVf")], json!({"bool": true}));
    assert_eq!(
        a[format!("{DRIVER}/sriovPf")],
        json!({"string": "0000:18:00.0"})
    );
    assert_eq!(
        a["resource.kubernetes.io/pcieRoot"],
        json!({"string": "pci0000:17"})
    );
    drop(publisher);
}
