//! bench-netns: how long handing one interface to a pod and back takes.
//!
//! Measures, inside test namespaces only (a "node" namespace plays the host):
//! * one veth moved + fully configured (rename, MTU, MAC, GSO/GRO, two addresses,
//!   three routes, three ethtool features) + restored, `--runs` times (≥ 200):
//!   `netclaim_p50_ms`, `netclaim_p99_ms`;
//! * 64 interfaces into 64 pods at once, each on its own thread, then back:
//!   `concurrent_64_total_ms`;
//! * the same steps as a shell script of `ip`/`ethtool` commands: `script_p50_ms`,
//!   and `speedup_p50` = script / netclaim.
//!
//! Prints a table and writes `bench/results/netns.json`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netclaim::netns::{move_and_configure, restore, InterfaceSettings, Netns, RouteSpec};
use netclaim_tests::netenv::{unique, veth, TestNetns};

const HOST_MAC: &str = "02:00:00:00:99:01";

fn settings() -> Result<InterfaceSettings> {
    Ok(InterfaceSettings {
        name: Some("net1".into()),
        addresses: vec!["192.0.2.10/24".parse()?, "2001:db8:2::10/64".parse()?],
        mtu: Some(9000),
        mac: Some([0x02, 0, 0, 0, 0xaa, 0x01]),
        gso_max_size: Some(131072),
        gro_max_size: Some(131072),
        gso_ipv4_max_size: None,
        gro_ipv4_max_size: None,
        routes: vec![
            RouteSpec {
                destination: "198.51.100.0/24".parse()?,
                gateway: Some("192.0.2.1".parse()?),
                source: None,
                scope: 0,
                table: None,
            },
            RouteSpec {
                destination: "203.0.113.0/25".parse()?,
                gateway: None,
                source: Some("192.0.2.10".parse()?),
                scope: 253,
                table: Some(100),
            },
            RouteSpec {
                destination: "2001:db8:3::/64".parse()?,
                gateway: Some("2001:db8:2::1".parse()?),
                source: None,
                scope: 0,
                table: None,
            },
        ],
        ethtool_features: BTreeMap::from([
            ("rx-checksum".to_string(), false),
            ("tx-checksum-ip-generic".to_string(), false),
            ("rx-gro".to_string(), true),
        ]),
        private_flags: BTreeMap::new(),
        ..Default::default()
    })
}

/// Host-side configuration the restore has to bring back.
fn host_config(node: &TestNetns, dev: &str) -> Result<()> {
    node.ip(&["link", "set", dev, "address", HOST_MAC])?;
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", dev])?;
    node.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.254",
        "dev",
        dev,
    ])?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn netclaim_cycle(host: &Netns, pod: &Netns, dev: &str, s: &InterfaceSettings) -> Result<usize> {
    let done = move_and_configure(host, pod, dev, s)?;
    let requests = done.link_requests;
    restore(host, Some(pod), &done.pod_ifname, &done.originals)?;
    Ok(requests)
}

fn script(node: &TestNetns, pod: &TestNetns, dev: &str) -> String {
    let (n, p) = (node.name(), pod.name());
    let pod_path = pod.path().display();
    let node_path = node.path().display();
    format!(
        r#"set -e
ip -n {n} link set {dev} down
ip -n {n} link set {dev} netns {p} name net1 mtu 9000 address 02:00:00:00:aa:01 gso_max_size 131072 gro_max_size 131072
ip -n {p} addr add 192.0.2.10/24 dev net1
ip -n {p} addr add 2001:db8:2::10/64 dev net1 nodad
ip -n {p} link set net1 up
ip -n {p} route add 198.51.100.0/24 via 192.0.2.1 dev net1 proto static
ip -n {p} route add 203.0.113.0/25 dev net1 scope link src 192.0.2.10 table 100 proto static
ip -n {p} -6 route add 2001:db8:3::/64 via 2001:db8:2::1 dev net1 proto static
nsenter --net={pod_path} ethtool -K net1 rx-checksum off tx-checksum-ip-generic off rx-gro on
ip -n {p} link set net1 down
ip -n {p} link set net1 netns {n} name {dev} mtu 1500 address {HOST_MAC} gso_max_size 65536 gro_max_size 65536
ip -n {n} addr add 192.0.2.1/24 dev {dev}
ip -n {n} link set {dev} up
ip -n {n} route add 198.51.100.0/24 via 192.0.2.254 dev {dev}
nsenter --net={node_path} ethtool -K {dev} rx-checksum on tx-checksum-ip-generic on rx-gro off
"#
    )
}

fn main() -> Result<()> {
    let mut runs = 200usize;
    let mut out = PathBuf::from("bench/results/netns.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .context("--runs needs a value")?
                    .parse()
                    .context("--runs")?
            }
            "--out" => out = PathBuf::from(args.next().context("--out needs a path")?),
            other => bail!("unknown argument {other} (usage: bench-netns [--runs N] [--out FILE])"),
        }
    }
    let s = settings()?;

    // One interface, many cycles.
    let node = TestNetns::new("bn")?;
    let pod = TestNetns::new("bp")?;
    let peer = TestNetns::new("bx")?;
    let dev = unique("bd");
    veth(&node, &dev, &peer, "peer0")?;
    host_config(&node, &dev)?;
    let (host_ns, pod_ns) = (node.open(), pod.open());
    let mut link_requests = 0;
    for _ in 0..5 {
        link_requests = netclaim_cycle(&host_ns, &pod_ns, &dev, &s)?; // warm-up
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        netclaim_cycle(&host_ns, &pod_ns, &dev, &s)?;
        times.push(t.elapsed());
    }
    times.sort();
    let nc_p50 = percentile(&times, 0.50);
    let nc_p99 = percentile(&times, 0.99);

    // The same steps as a script.
    let text = script(&node, &pod, &dev);
    let mut stimes = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        let out = Command::new("sh").arg("-c").arg(&text).output()?;
        if !out.status.success() {
            bail!(
                "script run {i} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        stimes.push(t.elapsed());
    }
    stimes.sort();
    let sc_p50 = percentile(&stimes, 0.50);
    let sc_p99 = percentile(&stimes, 0.99);
    drop((host_ns, pod_ns));
    drop((node, pod, peer));

    // 64 at once.
    let node = TestNetns::new("cn")?;
    let peer = TestNetns::new("cx")?;
    let mut pods = Vec::new();
    let mut devs = Vec::new();
    for i in 0..64 {
        let d = format!("cv{i}");
        veth(&node, &d, &peer, &format!("cp{i}"))?;
        node.ip(&["addr", "add", &format!("192.0.2.{}/32", i + 1), "dev", &d])?;
        devs.push(d);
        pods.push(TestNetns::new("cp")?);
    }
    let t = Instant::now();
    let handles: Vec<_> = devs
        .iter()
        .zip(&pods)
        .map(|(d, p)| {
            let host = node.open();
            let pod = p.open();
            let d = d.clone();
            let s = s.clone();
            std::thread::spawn(move || netclaim_cycle(&host, &pod, &d, &s).map(|_| ()))
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => bail!("a concurrent worker panicked"),
        }
    }
    let conc_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(pods);
    drop((node, peer));

    // The floor, measured in this run: one netns move of a veth from a warm socket. A
    // cycle here has two moves (into the pod and home) plus configure and restore.
    let (floor, _) = netclaim_tests::floor::netns_move_floor(50)?;
    let floor_ms = floor.as_secs_f64() * 1000.0;
    let over_floor = nc_p50 / floor_ms;
    println!("{:<28} {:>10.2}", "floor_ms (1 netns move)", floor_ms);
    println!(
        "{:<28} {:>10.2}  (the cycle has two moves: {:.2} per move)",
        "netclaim_p50_over_floor",
        over_floor,
        over_floor / 2.0
    );
    let speedup = if nc_p50 > 0.0 { sc_p50 / nc_p50 } else { 0.0 };
    println!("{:<28} {:>10}", "metric", "value");
    println!("{:<28} {:>10}", "runs", runs);
    println!("{:<28} {:>10}", "link_requests_per_move", link_requests);
    println!("{:<28} {:>10.2}", "netclaim_p50_ms", nc_p50);
    println!("{:<28} {:>10.2}", "netclaim_p99_ms", nc_p99);
    println!("{:<28} {:>10.2}", "script_p50_ms", sc_p50);
    println!("{:<28} {:>10.2}", "script_p99_ms", sc_p99);
    println!("{:<28} {:>10.2}", "speedup_p50", speedup);
    println!("{:<28} {:>10.2}", "concurrent_64_total_ms", conc_ms);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let result = serde_json::json!({
        "benchmark": "netns",
        "kernel": kernel,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "runs": runs,
        "link_requests_per_move": link_requests,
        "netclaim_p50_ms": nc_p50,
        "netclaim_p99_ms": nc_p99,
        "script_p50_ms": sc_p50,
        "script_p99_ms": sc_p99,
        "speedup_p50": speedup,
        "concurrent_64_total_ms": conc_ms,
        "floor_ms": floor_ms,
        "netclaim_p50_over_floor": over_floor,
        "netclaim_p50_over_two_floors": over_floor / 2.0,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = out;
    std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
