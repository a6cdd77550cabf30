//! DraNet's interface settings on a real kernel: a claim with DraNet's `rules`,
//! `neighbors`, `arpIgnore`/`arpAnnounce`/`forwarding` and `vrf` goes through
//! `move_and_configure` from a namespace playing the node into one playing the pod,
//! with a third playing the wire.
//!
//! ```text
//!  node ns           pod ns                                wire ns
//!  nc0 (host end) -> net1 192.0.2.10/24  <veth>            b0 192.0.2.1/24
//!                    rule to 198.51.100.0/24 lookup 100     lo 198.51.100.1, 203.0.113.7
//!                    table 100: default via 192.0.2.1
//! ```
//! What is shown: the rules exist in the pod (read back over netlink), traffic to a
//! destination reachable only through the rule's table passes the data path and
//! reaches the wire, traffic elsewhere is dropped (`no_route`) even with a permanent
//! neighbour for it; neighbours are permanent; the sysctls read back in the pod and
//! the host's own values come back with the device; VRF fails with a clear error and
//! leaves nothing behind. Every namespace is removed by its guard.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context, Result};
use netclaim::{
    config::parse_parameters,
    datapath::{device::AttachOptions, AttachedDatapath, DatapathKey, PinLayout},
    lifecycle::settings::interface_settings,
    netns::{
        move_and_configure, restore,
        rules::{self, RuleSpec},
        sysctl::{self, IfSysctls},
        Netns,
    },
};
use netclaim_common::DropReason;
use netclaim_tests::{
    netenv::{veth, TestBpfRoot, TestNetns},
    traffic::{udp_send, UdpSink},
};
use serde_json::json;

const HOST_IF: &str = "nc0";
const POD_IF: &str = "net1";
const WIRE_IF: &str = "b0";
const POD_MAC: &str = "02:00:00:00:aa:01";
const N: u32 = 30;

struct Setup {
    node: TestNetns,
    pod: TestNetns,
    wire: TestNetns,
    wire_mac: String,
}

fn setup(tag: &str) -> Result<Setup> {
    let node = TestNetns::new(&format!("{tag}n"))?;
    let pod = TestNetns::new(&format!("{tag}p"))?;
    let wire = TestNetns::new(&format!("{tag}w"))?;
    for ns in [&node, &pod, &wire] {
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.default.router_solicitations=0",
            ],
        )?;
    }
    veth(&node, HOST_IF, &wire, WIRE_IF)?;
    let wire_mac = wire.mac(WIRE_IF)?;
    wire.ip(&["addr", "add", "192.0.2.1/24", "dev", WIRE_IF])?;
    wire.ip(&["addr", "add", "2001:db8::1/64", "dev", WIRE_IF, "nodad"])?;
    for a in ["198.51.100.1/32", "203.0.113.7/32"] {
        wire.ip(&["addr", "add", a, "dev", "lo"])?;
    }
    wire.ip(&[
        "neigh",
        "replace",
        "192.0.2.10",
        "lladdr",
        POD_MAC,
        "dev",
        WIRE_IF,
        "nud",
        "permanent",
    ])?;
    // Host values that differ from every namespace's defaults, to see them come back.
    node.exec(
        "sysctl",
        &[
            "-qw",
            &format!("net.ipv4.conf.{HOST_IF}.arp_ignore=1"),
            &format!("net.ipv4.conf.{HOST_IF}.arp_announce=2"),
            &format!("net.ipv4.conf.{HOST_IF}.forwarding=1"),
            &format!("net.ipv6.conf.{HOST_IF}.forwarding=1"),
        ],
    )?;
    Ok(Setup {
        node,
        pod,
        wire,
        wire_mac,
    })
}

fn host_values() -> IfSysctls {
    IfSysctls {
        arp_ignore: Some(1),
        arp_announce: Some(2),
        forwarding_v4: Some(true),
        forwarding_v6: Some(true),
    }
}

fn read_sysctls(ns: &Netns, ifname: &str) -> Result<IfSysctls> {
    let name = ifname.to_string();
    Ok(ns.run(move || sysctl::read(&name))??)
}

fn pod_rules(ns: &Netns) -> Result<Vec<RuleSpec>> {
    let all = ns.run(|| -> Result<Vec<RuleSpec>> {
        let mut sock = netclaim::netns::netlink::NlSocket::route()?;
        Ok(rules::rules(&mut sock)?)
    })??;
    // Leave out the kernel's own three per family.
    Ok(all
        .into_iter()
        .filter(|r| ![0, 32766, 32767].contains(&r.priority))
        .collect())
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

#[test]
fn rules_neighbours_and_sysctls_are_applied_enforced_and_undone() -> Result<()> {
    let s = setup("dnp")?;
    let bpf = TestBpfRoot::new("dnp")?;
    let layout = PinLayout::new(bpf.path());
    let (node, pod, wire) = (s.node.open(), s.pod.open(), s.wire.open());
    assert_eq!(read_sysctls(&node, HOST_IF)?, host_values());

    let raw = json!({
        "interface": {
            "name": POD_IF,
            "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
            "hardwareAddr": POD_MAC,
            "arpIgnore": 2, "arpAnnounce": 1, "forwarding": false
        },
        "routes": [
            {"destination": "0.0.0.0/0", "gateway": "192.0.2.1", "table": 100},
            {"destination": "::/0", "gateway": "2001:db8::1", "table": 100}
        ],
        "rules": [
            {"priority": 100, "destination": "198.51.100.0/24", "table": 100},
            {"priority": 101, "destination": "2001:db8:100::/48", "table": 100}
        ],
        "neighbors": [
            {"destination": "192.0.2.1", "hardwareAddr": s.wire_mac},
            {"destination": "2001:db8::1", "hardwareAddr": s.wire_mac},
            {"destination": "203.0.113.7", "hardwareAddr": s.wire_mac}
        ]
    });
    let cfg = parse_parameters(&raw, "parameters").map_err(|e| anyhow::anyhow!("{e}"))?;
    let configured = move_and_configure(&node, &pod, HOST_IF, &interface_settings(&cfg))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        configured.originals.sysctls,
        Some(host_values()),
        "host values recorded before the move"
    );

    // Rules: exactly the claim's, read back from the pod's kernel.
    let mut got = pod_rules(&pod)?;
    got.sort_by_key(|r| r.priority);
    assert_eq!(
        got,
        vec![
            RuleSpec {
                v6: false,
                priority: 100,
                source: None,
                destination: Some("198.51.100.0/24".parse()?),
                table: 100
            },
            RuleSpec {
                v6: true,
                priority: 101,
                source: None,
                destination: Some("2001:db8:100::/48".parse()?),
                table: 100
            },
        ]
    );
    assert_eq!(configured.originals.pod_rules, got, "recorded for restore");

    // Neighbours: permanent, both families.
    let idx = configured.ifindex_in_pod;
    let neigh = pod.run(move || -> Result<Vec<rules::NeighbourRecord>> {
        let mut sock = netclaim::netns::netlink::NlSocket::route()?;
        Ok(rules::neighbours(&mut sock, idx)?)
    })??;
    for ip in ["192.0.2.1", "2001:db8::1", "203.0.113.7"] {
        let n = neigh
            .iter()
            .find(|n| n.destination == ip.parse::<std::net::IpAddr>().expect("ip"))
            .with_context(|| format!("no neighbour {ip}: {neigh:?}"))?;
        assert!(n.permanent, "{ip} is not permanent: {n:?}");
    }

    // Sysctls in the pod are the claim's, not the host's and not the defaults.
    assert_eq!(
        read_sysctls(&pod, POD_IF)?,
        IfSysctls {
            arp_ignore: Some(2),
            arp_announce: Some(1),
            forwarding_v4: Some(false),
            forwarding_v6: Some(false),
        }
    );

    // The data path allows what the rule makes reachable, and nothing for the
    // neighbour entry outside it.
    let policy = cfg.datapath_policy();
    let allowed: Vec<String> = policy.routes.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["198.51.100.0/24", "2001:db8:100::/48"]);
    // A route the pod has outside the claim, so the kernel sends and the data path decides.
    s.pod
        .ip(&["route", "add", "203.0.113.0/24", "dev", POD_IF])?;
    let key = DatapathKey::new("default", "dnp", "nc0")?;
    let dp = AttachedDatapath::attach(
        &layout,
        key,
        &pod,
        POD_IF,
        &policy,
        AttachOptions::default(),
    )?;
    let before = dp.counters()?;
    let sink = UdpSink::start(&wire, sa("198.51.100.1:9000"))?;
    udp_send(&pod, sa("192.0.2.10:0"), sa("198.51.100.1:9000"), N, 64)?;
    let passed = sink.wait_for(N.into(), Duration::from_secs(5));
    drop(sink);
    let sink = UdpSink::start(&wire, sa("203.0.113.7:9000"))?;
    udp_send(&pod, sa("192.0.2.10:0"), sa("203.0.113.7:9000"), N, 64)?;
    std::thread::sleep(Duration::from_millis(300));
    let leaked = sink.count();
    drop(sink);
    let after = dp.counters()?;
    let no_route = after.dropped(DropReason::NoRoute) - before.dropped(DropReason::NoRoute);
    println!(
        "through rule table 100: {passed}/{N} arrived; to the neighbour-only 203.0.113.7: {leaked} arrived, {no_route} dropped as no_route"
    );
    assert_eq!(passed, u64::from(N), "traffic via the rule's table lost");
    assert_eq!(leaked, 0, "a neighbour entry widened the data path");
    assert_eq!(no_route, u64::from(N), "{after:?}");
    dp.detach(&layout, Some(&pod))?;

    // The device comes home: rules gone from the pod, host sysctls back.
    restore(&node, Some(&pod), POD_IF, &configured.originals)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(pod_rules(&pod)?.is_empty(), "rules left in the pod");
    assert!(
        s.pod.ip(&["link", "show", POD_IF]).is_err(),
        "device still in the pod"
    );
    assert_eq!(
        read_sysctls(&node, HOST_IF)?,
        host_values(),
        "host sysctls restored after the move reset them"
    );
    let home_neigh = s
        .node
        .ip(&["neigh", "show", "dev", HOST_IF, "nud", "permanent"])?;
    assert!(
        String::from_utf8_lossy(&home_neigh.stdout)
            .trim()
            .is_empty(),
        "pod neighbours came home with the device: {}",
        String::from_utf8_lossy(&home_neigh.stdout)
    );
    Ok(())
}

#[test]
fn a_rule_that_already_exists_is_neither_recorded_nor_removed() -> Result<()> {
    let s = setup("dnx")?;
    let (node, pod) = (s.node.open(), s.pod.open());
    s.pod.ip(&[
        "rule",
        "add",
        "priority",
        "50",
        "to",
        "198.51.100.0/24",
        "table",
        "100",
    ])?;
    let raw = json!({
        "interface": {"name": POD_IF, "addresses": ["192.0.2.10/24"]},
        "rules": [{"priority": 50, "destination": "198.51.100.0/24", "table": 100}]
    });
    let cfg = parse_parameters(&raw, "parameters").map_err(|e| anyhow::anyhow!("{e}"))?;
    let configured = move_and_configure(&node, &pod, HOST_IF, &interface_settings(&cfg))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(configured.originals.pod_rules.is_empty());
    restore(&node, Some(&pod), POD_IF, &configured.originals)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(pod_rules(&pod)?.len(), 1, "the pod's own rule was removed");
    Ok(())
}

#[test]
fn vrf_on_a_kernel_without_vrf_is_a_clear_error_and_leaves_nothing() -> Result<()> {
    let s = setup("dnv")?;
    let (node, pod) = (s.node.open(), s.pod.open());
    // Precondition: this kernel really has no VRF (on one with it, this test does not
    // apply and says so instead of passing silently).
    if s.pod
        .ip(&["link", "add", "probe", "type", "vrf", "table", "10"])
        .is_ok()
    {
        bail!("this kernel supports VRF; the unsupported-VRF test does not apply here");
    }
    let raw = json!({
        "interface": {"name": POD_IF, "addresses": ["192.0.2.10/24"], "arpIgnore": 2,
                      "vrf": {"name": "vrf-blue"}},
        "routes": [{"destination": "198.51.100.0/24", "gateway": "192.0.2.1"}],
        "neighbors": [{"destination": "192.0.2.1", "hardwareAddr": s.wire_mac}]
    });
    let cfg = parse_parameters(&raw, "parameters").map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = match move_and_configure(&node, &pod, HOST_IF, &interface_settings(&cfg)) {
        Ok(c) => bail!("configure should fail without VRF support, got {c:?}"),
        Err(e) => e,
    };
    println!("{err}");
    assert_eq!(err.field(), Some("interface.vrf"), "{err}");
    let text = err.to_string();
    assert!(text.contains("CONFIG_NET_VRF"), "{text}");
    assert!(!text.contains("restoring the device failed"), "{text}");
    // Nothing left: the device is home under its name with the host's sysctls (which
    // the failed attempt had changed in the pod), the pod holds only lo, no rules.
    assert!(
        s.node.ip(&["link", "show", HOST_IF]).is_ok(),
        "device not home"
    );
    assert_eq!(read_sysctls(&node, HOST_IF)?, host_values());
    let links = s.pod.ip(&["-o", "link", "show"])?;
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert_eq!(links.lines().count(), 1, "pod holds more than lo: {links}");
    assert!(pod_rules(&pod)?.is_empty());
    Ok(())
}
