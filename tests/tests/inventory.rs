//! Inventory against the real kernel: attributes of veth/macvlan links, exclusion of
//! loopback and the uplink stack, the CEL filter, the watcher's latency for link,
//! address and BPF program changes, and in-use pinning. Every test builds its own
//! namespaces (`TestNetns`) and bpffs directory; nothing touches the root namespace.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use netclaim::{
    datapath::{device::AttachOptions, AttachedDatapath, DatapathKey, DatapathPolicy, PinLayout},
    inventory::{
        device::attr, AttrValue, Device, DeviceFilter, Inventory, InventoryOptions,
        InventoryWatcher,
    },
};
use netclaim_tests::netenv::{veth, TestBpfRoot, TestNetns};
use tokio::sync::watch;

const D: &str = "netclaim.dev";
const LIMIT: Duration = Duration::from_millis(250);

fn opts() -> InventoryOptions {
    InventoryOptions::default()
}

fn by_ifname<'a>(devs: &'a [Device], ifname: &str) -> Option<&'a Device> {
    devs.iter().find(|d| d.ifname == ifname)
}

fn s(v: &str) -> AttrValue {
    AttrValue::String(v.into())
}

fn get<'a>(d: &'a Device, name: &str) -> Option<&'a AttrValue> {
    d.attribute(D, name)
}

#[test]
fn veth_attributes() {
    let node = TestNetns::new("iva").unwrap();
    let peer = TestNetns::new("ivb").unwrap();
    veth(&node, "v0", &peer, "p0").unwrap();
    veth(&node, "Ab_c.1", &peer, "p1").unwrap();
    node.ip(&["addr", "add", "192.0.2.10/24", "dev", "v0"])
        .unwrap();
    node.ip(&["addr", "add", "192.0.2.11/24", "dev", "v0"])
        .unwrap();
    node.ip(&["-6", "addr", "add", "2001:db8::10/64", "dev", "v0", "nodad"])
        .unwrap();
    node.ip(&["link", "set", "v0", "mtu", "1400"]).unwrap();

    let devs = Inventory::scan(&node.open(), &opts()).unwrap();
    println!("{}", serde_json::to_string_pretty(&devs).unwrap());
    assert!(
        by_ifname(&devs, "lo").is_none(),
        "loopback is never published"
    );
    let v0 = by_ifname(&devs, "v0").expect("v0 published");
    assert_eq!(v0.name, "v0");
    assert_eq!(v0.ifindex, node.ifindex("v0").unwrap());
    assert_eq!(get(v0, attr::IF_NAME), Some(&s("v0")));
    assert_eq!(get(v0, attr::MAC), Some(&s(&node.mac("v0").unwrap())));
    assert_eq!(get(v0, attr::MTU), Some(&AttrValue::Int(1400)));
    assert_eq!(get(v0, attr::KIND), Some(&s("veth")));
    assert_eq!(get(v0, attr::VIRTUAL), Some(&AttrValue::Bool(true)));
    assert_eq!(get(v0, attr::STATE), Some(&s("up")));
    assert_eq!(get(v0, attr::IPV4), Some(&s("192.0.2.10/24,192.0.2.11/24")));
    assert_eq!(
        get(v0, attr::IPV6),
        Some(&s("2001:db8::10/64")),
        "link-local is not listed"
    );
    assert_eq!(get(v0, attr::DRIVER), Some(&s("veth")));
    assert_eq!(get(v0, attr::EBPF), Some(&AttrValue::Bool(false)));
    assert!(
        get(v0, attr::PCI_ADDRESS).is_none(),
        "veth has no PCI parent"
    );

    let odd = by_ifname(&devs, "Ab_c.1").expect("Ab_c.1 published");
    assert_eq!(odd.name, "ab-c-1");
    assert!(get(odd, attr::IPV4).is_none());
}

#[test]
fn uplink_stack_and_loopback_are_excluded() {
    let node = TestNetns::new("iua").unwrap();
    let peer = TestNetns::new("iub").unwrap();
    // v4 uplink with a macvlan on top.
    veth(&node, "up0", &peer, "pu0").unwrap();
    node.ip(&["route", "add", "default", "dev", "up0"]).unwrap();
    node.ip(&[
        "link", "add", "mv0", "link", "up0", "type", "macvlan", "mode", "bridge",
    ])
    .unwrap();
    node.ip(&["link", "set", "mv0", "up"]).unwrap();
    // v6 uplink on a bridge, with a port.
    node.ip(&["link", "add", "br1", "type", "bridge"]).unwrap();
    node.ip(&["link", "set", "br1", "up"]).unwrap();
    veth(&node, "s0", &peer, "ps0").unwrap();
    node.ip(&["link", "set", "s0", "master", "br1"]).unwrap();
    node.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "br1",
        "nodad",
    ])
    .unwrap();
    node.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:1::ff",
        "dev",
        "br1",
    ])
    .unwrap();
    // Not related to any uplink: a macvlan on a free veth is publishable.
    veth(&node, "free0", &peer, "pf0").unwrap();
    node.ip(&[
        "link", "add", "mv1", "link", "free0", "type", "macvlan", "mode", "bridge",
    ])
    .unwrap();

    let devs = Inventory::scan(&node.open(), &opts()).unwrap();
    let names: BTreeSet<&str> = devs.iter().map(|d| d.ifname.as_str()).collect();
    println!("published: {names:?}");
    assert_eq!(names, ["free0", "mv1"].into());
    let mv1 = by_ifname(&devs, "mv1").unwrap();
    assert_eq!(get(mv1, attr::KIND), Some(&s("macvlan")));

    // Removing the v4 default route frees up0 and its macvlan.
    node.ip(&["route", "del", "default", "dev", "up0"]).unwrap();
    let devs = Inventory::scan(&node.open(), &opts()).unwrap();
    let names: BTreeSet<&str> = devs.iter().map(|d| d.ifname.as_str()).collect();
    assert_eq!(names, ["free0", "mv0", "mv1", "up0"].into());
}

#[test]
fn cel_filter_includes_and_excludes() {
    let node = TestNetns::new("ifa").unwrap();
    let peer = TestNetns::new("ifb").unwrap();
    veth(&node, "v0", &peer, "p0").unwrap();
    veth(&node, "w0", &peer, "p1").unwrap();
    node.ip(&["link", "set", "w0", "mtu", "9000"]).unwrap();
    let scan = |expr: &str| -> BTreeSet<String> {
        let o = InventoryOptions {
            filter: Some(DeviceFilter::new(expr).unwrap()),
            ..opts()
        };
        Inventory::scan(&node.open(), &o)
            .unwrap()
            .into_iter()
            .map(|d| d.ifname)
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        scan(r#"device.attributes["netclaim.dev"].ifName.startsWith("v")"#),
        set(&["v0"])
    );
    assert_eq!(
        scan(r#"device.attributes["netclaim.dev"].ifName != "v0""#),
        set(&["w0"])
    );
    assert_eq!(
        scan(r#"device.attributes["netclaim.dev"].mtu > 1500"#),
        set(&["w0"])
    );
    assert_eq!(
        scan(
            r#"device.driver == "netclaim.dev" && device.attributes["netclaim.dev"].kind == "veth""#
        ),
        set(&["v0", "w0"])
    );
    // A missing attribute is an evaluation error: the device is not published.
    assert_eq!(
        scan(r#"device.attributes["netclaim.dev"].pciAddress == "x""#),
        set(&[])
    );
    assert!(DeviceFilter::new("device.attributes[").is_err());
}

/// Waits until `pred` holds for the published list; returns how long it took.
fn wait_for(
    rx: &watch::Receiver<Arc<Vec<Device>>>,
    what: &str,
    started: Instant,
    pred: impl Fn(&[Device]) -> bool,
) -> Duration {
    loop {
        if pred(&rx.borrow()) {
            let took = started.elapsed();
            println!("{what}: observed after {took:?}");
            return took;
        }
        if started.elapsed() > Duration::from_secs(3) {
            panic!("{what}: not observed within 3 s; list: {:?}", rx.borrow());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn attr_is(devs: &[Device], ifname: &str, name: &str, v: &AttrValue) -> bool {
    by_ifname(devs, ifname).and_then(|d| get(d, name)) == Some(v)
}

#[test]
fn watcher_sees_changes_within_250ms() {
    let node = TestNetns::new("iwa").unwrap();
    let peer = TestNetns::new("iwb").unwrap();
    let watcher = InventoryWatcher::start(Arc::new(node.open()), opts()).unwrap();
    let rx = watcher.subscribe();
    let mut worst = Duration::ZERO;
    let mut check = |what: &str, action: &dyn Fn(), pred: &dyn Fn(&[Device]) -> bool| {
        let t = Instant::now();
        action();
        let took = wait_for(&rx, what, t, pred);
        assert!(took < LIMIT, "{what}: {took:?} >= {LIMIT:?}");
        worst = worst.max(took);
    };

    check(
        "link added",
        &|| {
            node.ip(&[
                "link",
                "add",
                "n0",
                "type",
                "veth",
                "peer",
                "name",
                "pn0",
                "netns",
                peer.name(),
            ])
            .unwrap();
        },
        &|d| by_ifname(d, "n0").is_some(),
    );
    peer.ip(&["link", "set", "pn0", "up"]).unwrap();
    check(
        "link up",
        &|| {
            node.ip(&["link", "set", "n0", "up"]).unwrap();
        },
        &|d| attr_is(d, "n0", attr::STATE, &s("up")),
    );
    check(
        "address added",
        &|| {
            node.ip(&["addr", "add", "192.0.2.20/24", "dev", "n0"])
                .unwrap();
        },
        &|d| attr_is(d, "n0", attr::IPV4, &s("192.0.2.20/24")),
    );
    check(
        "address removed",
        &|| {
            node.ip(&["addr", "del", "192.0.2.20/24", "dev", "n0"])
                .unwrap();
        },
        &|d| by_ifname(d, "n0").is_some_and(|x| get(x, attr::IPV4).is_none()),
    );
    check(
        "link down",
        &|| {
            node.ip(&["link", "set", "n0", "down"]).unwrap();
        },
        &|d| attr_is(d, "n0", attr::STATE, &s("down")),
    );
    check(
        "link renamed",
        &|| {
            node.ip(&["link", "set", "n0", "name", "n1"]).unwrap();
        },
        &|d| by_ifname(d, "n0").is_none() && by_ifname(d, "n1").is_some_and(|x| x.name == "n1"),
    );
    check(
        "link removed",
        &|| {
            node.ip(&["link", "del", "n1"]).unwrap();
        },
        &|d| by_ifname(d, "n1").is_none(),
    );
    check(
        "default route moves the uplink out",
        &|| {
            veth(&node, "u0", &peer, "pu0").unwrap();
            node.ip(&["route", "add", "default", "dev", "u0"]).unwrap();
        },
        &|d| by_ifname(d, "u0").is_none(),
    );
    println!("worst latency: {worst:?}");
    watcher.stop();
}

#[test]
fn watcher_sees_bpf_programs_within_250ms() {
    let node = TestNetns::new("iba").unwrap();
    let peer = TestNetns::new("ibb").unwrap();
    let bpf = TestBpfRoot::new("inv").unwrap();
    veth(&node, "b0", &peer, "pb0").unwrap();
    let netns = node.open();
    let watcher = InventoryWatcher::start(Arc::new(node.open()), opts()).unwrap();
    let rx = watcher.subscribe();
    assert!(attr_is(
        &rx.borrow(),
        "b0",
        attr::EBPF,
        &AttrValue::Bool(false)
    ));

    let layout = PinLayout::new(bpf.path());
    let key = DatapathKey::new("inv", "claim", "b0").unwrap();
    let dp = AttachedDatapath::attach(
        &layout,
        key,
        &netns,
        "b0",
        &DatapathPolicy::default(),
        AttachOptions::default(),
    )
    .unwrap();
    // Measured from attach() returning: load and verification are not the watcher's.
    let t = Instant::now();
    let attached = wait_for(&rx, "programs attached", t, |d| {
        attr_is(d, "b0", attr::EBPF, &AttrValue::Bool(true))
    });
    let progs = by_ifname(&rx.borrow(), "b0")
        .and_then(|d| get(d, attr::EBPF_PROGRAMS).cloned())
        .expect("program names");
    println!("ebpfPrograms = {progs}");
    let progs = progs.to_string();
    assert!(progs.contains("nc_egress"), "{progs}");
    assert!(progs.contains("nc_ingress"), "{progs}");

    let t = Instant::now();
    dp.detach(&layout, Some(&netns)).unwrap();
    let detached = wait_for(&rx, "programs detached", t, |d| {
        attr_is(d, "b0", attr::EBPF, &AttrValue::Bool(false))
            && by_ifname(d, "b0").is_some_and(|x| get(x, attr::EBPF_PROGRAMS).is_none())
    });
    assert!(attached < LIMIT, "attach seen after {attached:?}");
    assert!(detached < LIMIT, "detach seen after {detached:?}");
    watcher.stop();
}

#[test]
fn in_use_devices_stay_published() {
    let node = TestNetns::new("ipa").unwrap();
    let peer = TestNetns::new("ipb").unwrap();
    veth(&node, "k0", &peer, "pk0").unwrap();
    let watcher = InventoryWatcher::start(Arc::new(node.open()), opts()).unwrap();
    let rx = watcher.subscribe();
    let before = by_ifname(&rx.borrow(), "k0")
        .cloned()
        .expect("k0 published");
    watcher.pin_in_use(["k0".to_string()].into());
    // Give the watcher the pin before the device goes.
    std::thread::sleep(Duration::from_millis(50));

    // Move k0 away (as if into a pod): it must stay published, unchanged.
    node.ip(&["link", "set", "k0", "netns", peer.name()])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let kept = by_ifname(&rx.borrow(), "k0").cloned();
    assert_eq!(kept.as_ref(), Some(&before));

    // Unpinned and absent: it goes.
    let t = Instant::now();
    watcher.pin_in_use(BTreeSet::new());
    wait_for(&rx, "unpinned device removed", t, |d| {
        by_ifname(d, "k0").is_none()
    });

    // merge_in_use on its own.
    let merged = Inventory::merge_in_use(Vec::new(), &[("k0".to_string(), before.clone())].into());
    assert_eq!(merged, vec![before]);
    watcher.stop();
}

/// The kernel allows interface names that are not UTF-8; netclaim cannot publish
/// them. The other links are still published, the CLI succeeds, and the link is
/// reported once, not as a decoder error per scan.
#[test]
fn a_link_name_that_is_not_utf8_is_skipped_with_one_warning() {
    use std::os::unix::ffi::OsStrExt;
    let node = TestNetns::new("iu8").unwrap();
    let peer = TestNetns::new("iu8p").unwrap();
    veth(&node, "good0", &peer, "p0").unwrap();
    let out = std::process::Command::new("ip")
        .args(["-n", node.name(), "link", "add"])
        .arg(std::ffi::OsStr::from_bytes(b"ab\xffc"))
        .args(["type", "veth", "peer", "name", "good1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let devs = Inventory::scan(&node.open(), &opts()).unwrap();
    assert!(by_ifname(&devs, "good0").is_some());
    assert!(by_ifname(&devs, "good1").is_some(), "its peer is published");
    assert!(devs.iter().all(|d| !d.ifname.starts_with("ab")), "{devs:?}");

    let bin = netclaim_tests::scenario::netclaim_binary().unwrap();
    let out = node
        .command(bin.to_str().unwrap())
        .args(["inventory", "-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("not UTF-8").count(),
        1,
        "one warning: {stderr}"
    );
    assert!(
        !stderr.contains("failed to decode"),
        "decoder noise: {stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("good1"));
}
