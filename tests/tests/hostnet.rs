//! Moving a host interface into a pod, configuring it and restoring it, against the
//! real kernel: a "node" namespace plays the host, pods are other namespaces, devices
//! are veth pairs and macvlans on a veth parent. Nothing touches the root namespace.
//!
//! Every check reads the kernel back through tools that do not share the driver's
//! code: `ip -j` (iproute2 over rtnetlink) for links, addresses and routes, and
//! `ethtool --json -k` (ethtool over genetlink) for features. iproute2 6.1 does not
//! print the IPv4 GSO/GRO limits, so those two are read with a plain netlink GETLINK.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use netclaim::netns::{
    move_and_configure, restore, restore_device, ConfigureError, HostOriginals, InterfaceSettings,
    PodSide, RestoreOutcome, RouteSpec, Step,
};
use netclaim_tests::netenv::{unique, veth, TestNetns};
use serde_json::Value;

/// What the kernel says about one device, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelView {
    name: String,
    ifindex: u32,
    mtu: u64,
    mac: String,
    up: bool,
    gso_max_size: u64,
    gro_max_size: u64,
    gso_ipv4_max_size: Option<u32>,
    gro_ipv4_max_size: Option<u32>,
    /// Global addresses, `ip/prefix`.
    addresses: BTreeSet<String>,
    /// Every route through the device in every table, one normalised line each.
    routes: BTreeSet<String>,
    /// `ethtool -k` names → active.
    features: BTreeMap<String, bool>,
}

fn json(out: std::process::Output) -> Result<Value> {
    serde_json::from_slice(&out.stdout).context("parsing JSON from a tool")
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).map(|x| match x {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn route_line(r: &Value) -> String {
    format!(
        "{} gw={} src={} scope={} table={} proto={} type={} metric={}",
        s(r, "dst").unwrap_or_default(),
        s(r, "gateway").unwrap_or_else(|| "-".into()),
        s(r, "prefsrc").unwrap_or_else(|| "-".into()),
        s(r, "scope").unwrap_or_else(|| "global".into()),
        s(r, "table").unwrap_or_else(|| "main".into()),
        s(r, "protocol").unwrap_or_else(|| "boot".into()),
        s(r, "type").unwrap_or_else(|| "unicast".into()),
        s(r, "metric").unwrap_or_else(|| "-".into()),
    )
}

fn read_kernel(ns: &TestNetns, dev: &str) -> Result<KernelView> {
    let link = json(ns.ip(&["-j", "-d", "addr", "show", "dev", dev])?)?;
    let link = link.get(0).context("no link in ip -j output")?.clone();
    let flags: Vec<String> = link["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let addresses = link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] == "global")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or("?"), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default();
    let routes = json(ns.ip(&["-j", "route", "show", "table", "all", "dev", dev])?)?
        .as_array()
        .map(|a| a.iter().map(route_line).collect())
        .unwrap_or_default();
    let eth = json(ns.exec("ethtool", &["--json", "-k", dev])?)?;
    let features = eth
        .get(0)
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| {
                    v.get("active")
                        .and_then(Value::as_bool)
                        .map(|a| (k.clone(), a))
                })
                .collect()
        })
        .unwrap_or_default();
    // IPv4 GSO/GRO limits: a bare RTM_GETLINK inside the namespace.
    let name = dev.to_string();
    let v4 = ns
        .open()
        .run(move || -> Option<(Option<u32>, Option<u32>)> {
            let mut sock = netclaim::netns::netlink::NlSocket::route().ok()?;
            let l = netclaim::netns::link::link_by_name(&mut sock, &name).ok()??;
            Some((l.gso_ipv4_max_size, l.gro_ipv4_max_size))
        })?
        .context("GETLINK for IPv4 GSO/GRO")?;
    Ok(KernelView {
        name: link["ifname"].as_str().unwrap_or_default().to_string(),
        ifindex: link["ifindex"].as_u64().unwrap_or_default() as u32,
        mtu: link["mtu"].as_u64().unwrap_or_default(),
        mac: link["address"].as_str().unwrap_or_default().to_string(),
        up: flags.iter().any(|f| f == "UP"),
        gso_max_size: link["gso_max_size"].as_u64().unwrap_or_default(),
        gro_max_size: link["gro_max_size"].as_u64().unwrap_or_default(),
        gso_ipv4_max_size: v4.0,
        gro_ipv4_max_size: v4.1,
        addresses,
        routes,
        features,
    })
}

fn link_exists(ns: &TestNetns, dev: &str) -> bool {
    ns.ip(&["link", "show", "dev", dev]).is_ok()
}

/// A node with one claimable veth end `dev` (peer in a third namespace) carrying
/// host addresses and routes, and an empty pod.
struct Setup {
    node: TestNetns,
    pod: TestNetns,
    _peer: TestNetns,
    dev: String,
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal")
}

fn setup(tag: &str) -> Result<Setup> {
    let node = TestNetns::new(&format!("{tag}n"))?;
    let pod = TestNetns::new(&format!("{tag}p"))?;
    let peer = TestNetns::new(&format!("{tag}x"))?;
    let dev = unique("hv");
    veth(&node, &dev, &peer, "peer0")?;
    host_config(&node, &dev)?;
    Ok(Setup {
        node,
        pod,
        _peer: peer,
        dev,
    })
}

/// Addresses and routes the host had on the device before the claim.
fn host_config(node: &TestNetns, dev: &str) -> Result<()> {
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", dev])?;
    node.ip(&["addr", "add", "2001:db8:1::1/64", "dev", dev, "nodad"])?;
    node.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.254",
        "dev",
        dev,
    ])?;
    node.ip(&[
        "route",
        "add",
        "203.0.113.0/25",
        "dev",
        dev,
        "scope",
        "link",
        "src",
        "192.0.2.1",
        "table",
        "100",
    ])?;
    node.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:3::/64",
        "via",
        "2001:db8:1::fe",
        "dev",
        dev,
    ])?;
    Ok(())
}

fn full_settings() -> InterfaceSettings {
    InterfaceSettings {
        name: Some("net1".into()),
        addresses: vec![net("192.0.2.10/24"), net("2001:db8:2::10/64")],
        mtu: Some(9000),
        mac: Some([0x02, 0, 0, 0, 0xaa, 0x01]),
        gso_max_size: Some(131072),
        gro_max_size: Some(131072),
        gso_ipv4_max_size: Some(131072),
        gro_ipv4_max_size: Some(131072),
        routes: vec![
            RouteSpec {
                destination: net("198.51.100.0/24"),
                gateway: Some("192.0.2.1".parse().expect("ip")),
                source: None,
                scope: 0,
                table: None,
            },
            RouteSpec {
                destination: net("203.0.113.0/25"),
                gateway: None,
                source: Some("192.0.2.10".parse().expect("ip")),
                scope: 253,
                table: Some(100),
            },
            RouteSpec {
                destination: net("2001:db8:3::/64"),
                gateway: Some("2001:db8:2::1".parse().expect("ip")),
                source: None,
                scope: 0,
                table: None,
            },
        ],
        ethtool_features: BTreeMap::from([
            ("rx-checksum".to_string(), false),
            ("tx-checksum-ip-generic".to_string(), false),
            ("generic-receive-offload".to_string(), true),
        ]),
        private_flags: BTreeMap::new(),
        ..Default::default()
    }
}

fn has_route(view: &KernelView, prefix: &str) -> bool {
    view.routes.iter().any(|r| r.starts_with(prefix))
}

/// Restores and checks every field against the state before the claim.
fn restore_and_compare(
    s: &Setup,
    pod_ifname: &str,
    originals: &HostOriginals,
    before: &KernelView,
) -> Result<()> {
    let host = s.node.open();
    let pod = s.pod.open();
    let outcome = restore(&host, Some(&pod), pod_ifname, originals)?;
    assert!(
        matches!(outcome, RestoreOutcome::Restored { .. }),
        "{outcome:?}"
    );
    assert!(!link_exists(&s.pod, pod_ifname), "device left in the pod");
    let after = read_kernel(&s.node, &s.dev)?;
    compare_restored(before, &after);
    Ok(())
}

fn compare_restored(before: &KernelView, after: &KernelView) {
    assert_eq!(after.name, before.name, "name");
    assert_eq!(after.mtu, before.mtu, "mtu");
    assert_eq!(after.mac, before.mac, "mac");
    assert_eq!(after.up, before.up, "admin state");
    assert_eq!(after.gso_max_size, before.gso_max_size, "gso_max_size");
    assert_eq!(after.gro_max_size, before.gro_max_size, "gro_max_size");
    assert_eq!(
        after.gso_ipv4_max_size, before.gso_ipv4_max_size,
        "gso_ipv4_max_size"
    );
    assert_eq!(
        after.gro_ipv4_max_size, before.gro_ipv4_max_size,
        "gro_ipv4_max_size"
    );
    assert_eq!(after.addresses, before.addresses, "addresses");
    assert_eq!(after.routes, before.routes, "routes");
    assert_eq!(after.features, before.features, "ethtool features");
}

#[test]
fn every_field_is_applied_in_the_pod_and_restored_on_the_host() -> Result<()> {
    let s = setup("all")?;
    let before = read_kernel(&s.node, &s.dev)?;
    assert_eq!(before.features.get("rx-checksumming"), Some(&true));
    assert_eq!(before.features.get("generic-receive-offload"), Some(&false));

    let settings = full_settings();
    let done = move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &settings)?;
    assert_eq!(done.pod_ifname, "net1");
    assert_eq!(done.originals.name, s.dev);
    // The kernel takes down + netns move + rename + MTU + MAC + GSO/GRO in one request.
    assert_eq!(done.link_requests, 1, "combined RTM_SETLINK was refused");
    assert!(!link_exists(&s.node, &s.dev), "device still on the host");

    let got = read_kernel(&s.pod, "net1")?;
    assert_eq!(got.name, "net1");
    assert_eq!(got.ifindex, done.ifindex_in_pod);
    assert!(got.up);
    assert_eq!(got.mtu, 9000);
    assert_eq!(got.mac, "02:00:00:00:aa:01");
    assert_eq!(got.gso_max_size, 131072);
    assert_eq!(got.gro_max_size, 131072);
    assert_eq!(got.gso_ipv4_max_size, Some(131072));
    assert_eq!(got.gro_ipv4_max_size, Some(131072));
    let want: BTreeSet<String> = ["192.0.2.10/24", "2001:db8:2::10/64"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got.addresses, want);
    let returned: BTreeSet<String> = done.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(returned, want, "Configured.addresses must match the kernel");
    for r in [
        "198.51.100.0/24 gw=192.0.2.1 src=- scope=global table=main proto=static",
        "203.0.113.0/25 gw=- src=192.0.2.10 scope=link table=100 proto=static",
        "2001:db8:3::/64 gw=2001:db8:2::1 src=- scope=global table=main proto=static",
    ] {
        assert!(
            has_route(&got, r),
            "missing route {r:?} in {:#?}",
            got.routes
        );
    }
    // Host routes are not carried along when the claim sets addresses.
    assert!(!has_route(&got, "198.51.100.0/24 gw=192.0.2.254"));
    assert_eq!(got.features.get("rx-checksumming"), Some(&false));
    assert_eq!(got.features.get("tx-checksum-ip-generic"), Some(&false));
    assert_eq!(got.features.get("generic-receive-offload"), Some(&true));

    restore_and_compare(&s, "net1", &done.originals, &before)
}

fn assert_home_unchanged(s: &Setup, before: &KernelView) -> Result<()> {
    let after = read_kernel(&s.node, &s.dev)?;
    compare_restored(before, &after);
    let left = s.pod.ip(&["-o", "link", "show"])?;
    let text = String::from_utf8_lossy(&left.stdout);
    assert_eq!(text.lines().count(), 1, "pod should only have lo: {text}");
    Ok(())
}

fn failed_field(e: &ConfigureError) -> (Option<Step>, String, bool) {
    match e {
        ConfigureError::Failed {
            step,
            field,
            rollback,
            ..
        } => (Some(*step), field.clone(), rollback.is_none()),
        _ => (None, String::new(), false),
    }
}

#[test]
fn a_route_failing_after_the_move_puts_the_device_back_exactly() -> Result<()> {
    let s = setup("rtf")?;
    let before = read_kernel(&s.node, &s.dev)?;
    let mut settings = full_settings();
    // Gateway outside every connected subnet: the kernel refuses it.
    settings.routes.push(RouteSpec {
        destination: net("198.51.100.128/25"),
        gateway: Some("203.0.113.77".parse()?),
        source: None,
        scope: 0,
        table: None,
    });
    let err = match move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &settings) {
        Ok(c) => bail!("configure should fail, got {c:?}"),
        Err(e) => e,
    };
    let (step, field, rolled_back) = failed_field(&err);
    assert_eq!(step, Some(Step::Routes), "{err}");
    assert_eq!(field, "routes[3]", "{err}");
    assert!(rolled_back, "{err}");
    assert!(err.to_string().contains(&s.dev), "{err}");
    assert_home_unchanged(&s, &before)
}

#[test]
fn an_unknown_ethtool_feature_is_refused_before_anything_changes() -> Result<()> {
    let s = setup("eth")?;
    let before = read_kernel(&s.node, &s.dev)?;
    let mut settings = full_settings();
    settings.ethtool_features.insert("foo".into(), true);
    let err = match move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &settings) {
        Ok(c) => bail!("configure should fail, got {c:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "ethtool.features[\"foo\"]: not a feature of {}",
            s.dev
        )),
        "{msg}"
    );
    assert_eq!(err.step(), Some(Step::Validate));
    assert_home_unchanged(&s, &before)
}

#[test]
fn an_mtu_above_the_device_maximum_names_interface_mtu() -> Result<()> {
    let s = setup("mtu")?;
    let before = read_kernel(&s.node, &s.dev)?;
    let settings = InterfaceSettings {
        mtu: Some(70000),
        ..full_settings()
    };
    let err = match move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &settings) {
        Ok(c) => bail!("configure should fail, got {c:?}"),
        Err(e) => e,
    };
    assert_eq!(err.field(), Some("interface.mtu"), "{err}");
    assert!(err.to_string().contains("maximum MTU"), "{err}");
    assert_home_unchanged(&s, &before)
}

#[test]
fn a_name_taken_in_the_pod_fails_the_move_and_leaves_the_device_home() -> Result<()> {
    let s = setup("clash")?;
    let before = read_kernel(&s.node, &s.dev)?;
    s.pod.ip(&[
        "link", "add", "net1", "type", "veth", "peer", "name", "net1p",
    ])?;
    let stranger = read_kernel(&s.pod, "net1")?;
    let err = match move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &full_settings()) {
        Ok(c) => bail!("configure should fail, got {c:?}"),
        Err(e) => e,
    };
    assert_eq!(err.step(), Some(Step::Move), "{err}");
    assert_eq!(err.field(), Some("interface.name"), "{err}");
    // The kernel moves the device under its host name before the rename fails; the
    // stranger called net1 must not be mistaken for it.
    assert_eq!(read_kernel(&s.pod, "net1")?, stranger, "stranger changed");
    s.pod.ip(&["link", "del", "net1"])?;
    assert_home_unchanged(&s, &before)
}

#[test]
fn a_claim_without_addresses_carries_the_host_addresses_and_routes() -> Result<()> {
    let s = setup("carry")?;
    let before = read_kernel(&s.node, &s.dev)?;
    let settings = InterfaceSettings {
        name: Some("net1".into()),
        ..Default::default()
    };
    let done = move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &settings)?;
    let got = read_kernel(&s.pod, "net1")?;
    assert_eq!(got.addresses, before.addresses);
    let returned: BTreeSet<String> = done.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(returned, before.addresses);
    assert_eq!(got.mac, before.mac, "MAC kept");
    assert_eq!(got.mtu, before.mtu, "MTU kept");
    for r in [
        "198.51.100.0/24 gw=192.0.2.254 src=- scope=global table=main proto=boot",
        "203.0.113.0/25 gw=- src=192.0.2.1 scope=link table=100 proto=boot",
        "2001:db8:3::/64 gw=2001:db8:1::fe",
    ] {
        assert!(
            has_route(&got, r),
            "missing carried route {r:?} in {:#?}",
            got.routes
        );
    }
    restore_and_compare(&s, "net1", &done.originals, &before)
}

#[test]
fn a_veth_destroyed_with_its_namespace_is_reported_gone() -> Result<()> {
    let s = setup("gone")?;
    let fake_root = TestNetns::new("gonr")?;
    let done = {
        let host = s.node.open();
        let pod = s.pod.open();
        move_and_configure(&host, &pod, &s.dev, &full_settings())?
        // `pod` (an open fd that keeps the namespace alive) is dropped here.
    };
    let side = done.pod_side();
    let Setup {
        node, pod, _peer, ..
    } = s;
    drop(pod); // ip netns del: the namespace and the veth in it go away
               // The peer end disappears with it (netns cleanup runs asynchronously).
    let mut gone = false;
    for _ in 0..100 {
        if !link_exists(&_peer, "peer0") {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "veth peer should vanish with the pod namespace");
    let outcome = restore_device(
        &node.open(),
        None,
        &side,
        &done.originals,
        Some(&fake_root.open()),
    )?;
    assert_eq!(outcome, RestoreOutcome::Gone);
    Ok(())
}

/// A macvlan on a veth parent in the node.
fn macvlan_setup(tag: &str) -> Result<Setup> {
    let node = TestNetns::new(&format!("{tag}n"))?;
    let pod = TestNetns::new(&format!("{tag}p"))?;
    let peer = TestNetns::new(&format!("{tag}x"))?;
    let parent = unique("par");
    veth(&node, &parent, &peer, "peer0")?;
    let dev = unique("mv");
    node.ip(&[
        "link", "add", "link", &parent, "name", &dev, "type", "macvlan", "mode", "bridge",
    ])?;
    node.ip(&["link", "set", &dev, "up"])?;
    host_config(&node, &dev)?;
    Ok(Setup {
        node,
        pod,
        _peer: peer,
        dev,
    })
}

fn macvlan_settings() -> InterfaceSettings {
    InterfaceSettings {
        name: Some("net2".into()),
        addresses: vec![net("198.51.100.20/24")],
        mtu: Some(1400),
        mac: Some([0x02, 0, 0, 0, 0xbb, 0x02]),
        routes: vec![RouteSpec {
            destination: net("203.0.113.0/24"),
            gateway: Some("198.51.100.1".parse().expect("ip")),
            source: None,
            scope: 0,
            table: Some(200),
        }],
        ..Default::default()
    }
}

#[test]
fn a_macvlan_is_configured_and_restored_from_a_live_namespace() -> Result<()> {
    let s = macvlan_setup("mvl")?;
    let before = read_kernel(&s.node, &s.dev)?;
    let done = move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &macvlan_settings())?;
    let got = read_kernel(&s.pod, "net2")?;
    assert_eq!(got.mtu, 1400);
    assert_eq!(got.mac, "02:00:00:00:bb:02");
    assert!(got.addresses.contains("198.51.100.20/24"));
    assert!(has_route(
        &got,
        "203.0.113.0/24 gw=198.51.100.1 src=- scope=global table=200"
    ));
    restore_and_compare(&s, "net2", &done.originals, &before)
}

#[test]
fn a_macvlan_fallen_into_root_is_found_and_brought_home() -> Result<()> {
    // The kernel would move the macvlan into the real root namespace when the pod
    // namespace dies; a test must not let that happen. Instead a namespace plays
    // root, and we move the device there ourselves, as the kernel would (same name).
    let s = macvlan_setup("mvr")?;
    let fake_root = TestNetns::new("mvrr")?;
    let before = read_kernel(&s.node, &s.dev)?;
    let done = move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &macvlan_settings())?;
    s.pod
        .ip(&["link", "set", "net2", "netns", fake_root.name()])?;
    assert!(link_exists(&fake_root, "net2"));
    let outcome = restore_device(
        &s.node.open(),
        None,
        &done.pod_side(),
        &done.originals,
        Some(&fake_root.open()),
    )?;
    assert!(
        matches!(outcome, RestoreOutcome::RestoredFromRoot { .. }),
        "{outcome:?}"
    );
    assert!(!link_exists(&fake_root, "net2"));
    let after = read_kernel(&s.node, &s.dev)?;
    compare_restored(&before, &after);
    Ok(())
}

#[test]
fn the_lookup_in_root_ignores_a_stranger_with_the_same_name() -> Result<()> {
    let s = macvlan_setup("mvs")?;
    let fake_root = TestNetns::new("mvsr")?;
    let done = move_and_configure(&s.node.open(), &s.pod.open(), &s.dev, &macvlan_settings())?;
    // A different device called net2 in "root", with another MAC.
    fake_root.ip(&[
        "link",
        "add",
        "net2",
        "address",
        "02:00:00:00:cc:03",
        "type",
        "veth",
        "peer",
        "name",
        "x0",
    ])?;
    let mut side: PodSide = done.pod_side();
    side.ifindex = None;
    let outcome = restore_device(
        &s.node.open(),
        None,
        &side,
        &done.originals,
        Some(&fake_root.open()),
    )?;
    assert_eq!(outcome, RestoreOutcome::Gone);
    assert!(
        link_exists(&fake_root, "net2"),
        "stranger must stay where it is"
    );
    // The real device is still in the pod; put it back for a clean finish.
    restore(&s.node.open(), Some(&s.pod.open()), "net2", &done.originals)?;
    Ok(())
}

/// The global IPv4 addresses in `ns`, `name address/prefix` per line, sorted.
fn ipv4_by_link(ns: &TestNetns) -> Result<Vec<String>> {
    let out = ns.ip(&["-o", "-4", "addr", "show"])?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"inet")).then(|| format!("{} {}", f[1], f[3]))
        })
        .filter(|l| !l.starts_with("lo "))
        .collect();
    lines.sort();
    Ok(lines)
}

/// Every device of `devs` captured in one job through one pair of sockets (which the
/// first device carries to the moves), with `settings(i)` for the `i`-th.
fn capture_all(
    host: &netclaim::netns::Netns,
    devs: &[String],
    settings: impl Fn(usize) -> InterfaceSettings,
) -> Result<Vec<netclaim::netns::configure::Captured>> {
    let wanted = devs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), settings(i)))
        .collect();
    Ok(
        netclaim::netns::configure::capture_all_for_move(host, wanted)?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?,
    )
}

/// `configure_each` works one device ahead of its caller. A caller that stops after
/// the first result (a data path failed, say) gets back every device the worker
/// configured meanwhile, so its undo knows them, and once `stop` returns nothing in
/// the pod changes any more.
#[test]
fn configuring_ahead_stops_when_asked_and_reports_what_it_did_meanwhile() -> Result<()> {
    use netclaim::netns::configure::move_captured;
    use netclaim::netns::configuring::configure_each;
    let node = TestNetns::new("cen")?;
    let pod = TestNetns::new("cep")?;
    let peer = TestNetns::new("cex")?;
    let n = 8;
    let devs: Vec<String> = (0..n).map(|_| unique("ce")).collect();
    for (i, d) in devs.iter().enumerate() {
        veth(&node, d, &peer, &format!("cp{i}"))?;
    }
    let settings = |i: usize| InterfaceSettings {
        name: Some(format!("net{i}")),
        addresses: vec![net(&format!("192.0.2.{}/32", i + 10))],
        ..Default::default()
    };
    let (host, in_pod) = (node.open(), pod.open());
    let captured = capture_all(&host, &devs, settings)?;
    assert_eq!(captured.len(), n, "every device captured");
    let moved = move_captured(&host, &in_pod, captured)?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(moved.len(), n, "every device moved");
    let items = moved
        .into_iter()
        .enumerate()
        .map(|(i, m)| (devs[i].clone(), settings(i), m))
        .collect();

    let mut each = configure_each(&in_pod, items)?;
    let first = each.next().context("no first result")??;
    assert_eq!(first.pod_ifname, "net0");
    let late = each.stop();
    let at_stop = ipv4_by_link(&pod)?;
    let mut reported = vec![format!("net0 192.0.2.10/32")];
    for (k, r) in late.into_iter().enumerate() {
        let c = r.map_err(|e| anyhow::anyhow!("device {} failed: {e}", k + 1))?;
        assert_eq!(c.pod_ifname, format!("net{}", k + 1), "in order");
        assert_eq!(c.addresses, vec![net(&format!("192.0.2.{}/32", k + 11))]);
        reported.push(format!("{} {}", c.pod_ifname, c.addresses[0]));
    }
    reported.sort();
    assert_eq!(
        at_stop, reported,
        "the pod holds exactly the devices reported configured"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        ipv4_by_link(&pod)?,
        at_stop,
        "something was configured after stop returned"
    );
    Ok(())
}

/// A device gone between its capture and its move (another tool deleted it) stops the
/// moves there: the devices before it moved, it is reported failed, and the devices
/// after it are never touched.
#[test]
fn a_device_gone_before_its_move_stops_the_moves_there() -> Result<()> {
    use netclaim::netns::configure::move_captured;
    let node = TestNetns::new("cgn")?;
    let pod = TestNetns::new("cgp")?;
    let peer = TestNetns::new("cgx")?;
    let devs: Vec<String> = (0..3).map(|_| unique("cg")).collect();
    for (i, d) in devs.iter().enumerate() {
        veth(&node, d, &peer, &format!("cg{i}"))?;
    }
    let settings = |i: usize| InterfaceSettings {
        name: Some(format!("net{i}")),
        ..Default::default()
    };
    let (host, in_pod) = (node.open(), pod.open());
    let captured = capture_all(&host, &devs, settings)?;
    node.ip(&["link", "del", "dev", &devs[1]])?;

    let moved = move_captured(&host, &in_pod, captured)?;
    assert_eq!(moved.len(), 2, "the moves stop at the missing device");
    assert!(moved[0].is_ok(), "the first device moved: {:?}", moved[0]);
    assert!(moved[1].is_err(), "the missing device is reported failed");
    assert!(link_exists(&pod, "net0"), "the first device is in the pod");
    assert!(
        link_exists(&node, &devs[2]),
        "the last device was never touched"
    );
    assert!(!link_exists(&pod, "net2"));
    Ok(())
}

/// Capturing stops at the first device that is not there: the ones before it are
/// captured, it is reported missing by name, and nothing after it is looked at.
#[test]
fn capturing_stops_at_a_missing_device_and_names_it() -> Result<()> {
    use netclaim::netns::configure::capture_all_for_move;
    let node = TestNetns::new("cmn")?;
    let peer = TestNetns::new("cmx")?;
    let present = unique("cm");
    veth(&node, &present, &peer, "cm0")?;
    let missing = unique("cm");
    let wanted = vec![
        (present.clone(), InterfaceSettings::default()),
        (missing.clone(), InterfaceSettings::default()),
        (present.clone(), InterfaceSettings::default()),
    ];
    let tried = capture_all_for_move(&node.open(), wanted)?;
    assert_eq!(tried.len(), 2, "nothing after the missing device is tried");
    assert!(tried[0].is_ok());
    match &tried[1] {
        Err(ConfigureError::NotFound { device, .. }) => assert_eq!(device, &missing),
        other => panic!("expected NotFound for {missing}, got {other:?}"),
    }
    Ok(())
}
