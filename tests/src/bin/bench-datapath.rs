//! `cargo xtask bench datapath`: per-packet cost of the programs by BPF_PROG_TEST_RUN
//! (bare pass-through baseline, counting only, full enforcement with 1…65536
//! prefixes, IPv4 and IPv6, and the floor: the same parsing plus one LPM lookup and
//! one counter), packets per second from a pod through netclaim versus the same policy
//! as nftables rules on the same veth, and TCP throughput through a veth pair between
//! two test namespaces with and without the data path attached (iperf3).
//!
//! Prefixes live only in map keys (nothing is sent to them); all packets of the
//! throughput run stay inside the two namespaces this program creates.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::programs::SchedClassifier;
use ipnet::IpNet;
use netclaim::datapath::{
    device::{load_unattached, AttachOptions},
    object::MapSizes,
    AttachedDatapath, DatapathKey, DatapathPolicy, DataplaneKnobs, PinLayout,
};
use netclaim_tests::{
    netenv::TestBpfRoot,
    topology::{PodWire, POD_IF},
};
use serde_json::json;

const PREFIX_COUNTS: [u32; 4] = [1, 16, 1024, 65536];
const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 5;
/// Source MAC of the benchmark frames: the device's own, so enforcement passes them.
const BENCH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// `union bpf_attr` as used by BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs the program `REPEAT` times on `packet`; returns (ns per run, return value).
fn test_run(prog: &SchedClassifier, packet: &[u8]) -> Result<(f64, u32)> {
    let fd = prog.fd()?.as_fd().as_raw_fd();
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: REPEAT,
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix for this command,
    // and the buffers it points to outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    Ok((f64::from(attr.duration), attr.retval))
}

/// Median ns/packet over several rounds.
fn measure(prog: &SchedClassifier, packet: &[u8], expect_retval: u32) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let (ns, ret) = test_run(prog, packet)?;
        if ret != expect_retval {
            bail!("program returned {ret}, expected {expect_retval}: the packet is not on the path being measured");
        }
        samples.push(ns);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn frame_v4(dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend([192, 0, 2, 10]);
    ip.extend(dst);
    p.extend(ip);
    p.extend([0x30, 0x39, 0x23, 0x28, 0, 26, 0, 0]);
    p.extend([0u8; 18]);
    p
}

fn frame_v6(dst: [u8; 16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    p.extend([0x60, 0, 0, 0, 0, 26, 17, 64]);
    p.extend(
        "2001:db8::10"
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or([0; 16]),
    );
    p.extend(dst);
    p.extend([0x30, 0x39, 0x23, 0x28, 0, 26, 0, 0]);
    p.extend([0u8; 18]);
    p
}

fn prefixes_v4(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| IpNet::new([10, (i >> 8) as u8, i as u8, 0].into(), 24).expect("valid /24"))
        .collect()
}

fn prefixes_v6(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[4] = (i >> 8) as u8;
            a[5] = i as u8;
            IpNet::new(a.into(), 48).expect("valid /48")
        })
        .collect()
}

fn policy(routes: Vec<IpNet>) -> DatapathPolicy {
    DatapathPolicy {
        addresses: vec![
            "192.0.2.10/24".parse().expect("cidr"),
            "2001:db8::10/64".parse().expect("cidr"),
        ],
        routes,
        knobs: DataplaneKnobs::default(),
        mac: Some(BENCH_MAC),
        link_local: vec![],
        dhcp_client: false,
    }
}

fn prog<'a>(ebpf: &'a aya::Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    ebpf.program(name)
        .with_context(|| format!("{name} missing"))?
        .try_into()
        .map_err(Into::into)
}

fn per_packet() -> Result<serde_json::Value> {
    const TC_ACT_OK: u32 = 0;
    let sizes = MapSizes {
        prefixes: 65536 + 16,
    };
    let count_only = load_unattached(sizes, &DatapathPolicy::default())?;
    let pkt = frame_v4([10, 0, 0, 7]);
    let bare_ns = measure(prog(&count_only, "nc_bare")?, &pkt, TC_ACT_OK)?;
    let count_ns = measure(prog(&count_only, "nc_egress")?, &pkt, TC_ACT_OK)?;
    println!(
        "{:<34} {:>10.1} ns/packet",
        "bare pass-through (baseline)", bare_ns
    );
    println!(
        "{:<34} {:>10.1} ns/packet  ({:.2}x bare)",
        "counting only",
        count_ns,
        count_ns / bare_ns
    );

    let mut v4 = BTreeMap::new();
    let mut v6 = BTreeMap::new();
    for n in PREFIX_COUNTS {
        let ebpf = load_unattached(sizes, &policy(prefixes_v4(n)))?;
        // Hit the last prefix inserted (deepest in key order).
        let i = n - 1;
        let ns = measure(
            prog(&ebpf, "nc_egress")?,
            &frame_v4([10, (i >> 8) as u8, i as u8, 7]),
            TC_ACT_OK,
        )?;
        println!(
            "{:<34} {:>10.1} ns/packet  ({:.2}x bare)",
            format!("enforce IPv4, {n} prefixes"),
            ns,
            ns / bare_ns
        );
        v4.insert(n.to_string(), ns);
        drop(ebpf);

        let ebpf = load_unattached(sizes, &policy(prefixes_v6(n)))?;
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        dst[4] = (i >> 8) as u8;
        dst[5] = i as u8;
        dst[15] = 7;
        let ns = measure(prog(&ebpf, "nc_egress")?, &frame_v6(dst), TC_ACT_OK)?;
        println!(
            "{:<34} {:>10.1} ns/packet  ({:.2}x bare)",
            format!("enforce IPv6, {n} prefixes"),
            ns,
            ns / bare_ns
        );
        v6.insert(n.to_string(), ns);
    }
    let ratio16 = v4.get("16").copied().unwrap_or(f64::NAN) / bare_ns;
    // The floor: the same parsing, one LPM lookup and one per-CPU counter, no policy,
    // on the same instance and packet as enforcement with 16 prefixes.
    let ebpf = load_unattached(sizes, &policy(prefixes_v4(16)))?;
    let pkt16 = frame_v4([10, 0, 15, 7]);
    let floor_ns = measure(prog(&ebpf, "nc_floor")?, &pkt16, TC_ACT_OK)?;
    let enforce16_ns = measure(prog(&ebpf, "nc_egress")?, &pkt16, TC_ACT_OK)?;
    let over_floor = enforce16_ns / floor_ns;
    println!(
        "{:<34} {:>10.1} ns/packet  ({:.2}x bare)",
        "floor (parse + 1 LPM + 1 counter)",
        floor_ns,
        floor_ns / bare_ns
    );
    println!(
        "enforce_16_over_floor: {enforce16_ns:.1} / {floor_ns:.1} = {over_floor:.2}  (target <= 1.3)"
    );
    Ok(json!({
        "floor_ns": floor_ns,
        "enforce_16_ns": enforce16_ns,
        "enforce_16_over_floor": over_floor,
        "bare_ns": bare_ns,
        "count_ns": count_ns,
        "enforce_v4_ns": v4,
        "enforce_v6_ns": v6,
        "enforce_16_ratio_v4": ratio16,
        "repeat_per_round": REPEAT,
        "rounds": ROUNDS,
    }))
}

fn iperf(net: &PodWire, seconds: u32) -> Result<f64> {
    let mut server = net
        .wire
        .command("iperf3")
        .args(["-s", "-1", "-B", "192.0.2.1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 server (cargo xtask setup installs iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = net
        .pod
        .command("iperf3")
        .args([
            "-c",
            "192.0.2.1",
            "-p",
            "5201",
            "-B",
            "192.0.2.10",
            "-J",
            "-t",
        ])
        .arg(seconds.to_string())
        .output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no throughput in iperf3 output: {}", v["error"]))?;
    Ok(bps / 1e9)
}

fn throughput() -> Result<serde_json::Value> {
    let net = PodWire::new("bdp", false)?;
    let bpf = TestBpfRoot::new("bdp")?;
    let layout = PinLayout::new(bpf.path());
    let pod = net.pod.open();
    let p = DatapathPolicy {
        addresses: vec!["192.0.2.10/24".parse()?],
        routes: vec!["198.51.100.0/24".parse()?],
        knobs: DataplaneKnobs::default(),
        ..Default::default()
    };
    let (mut bare, mut with) = (Vec::new(), Vec::new());
    for round in 0..3 {
        bare.push(iperf(&net, 3)?);
        let key = DatapathKey::new("bench", "throughput", format!("r{round}"))?;
        let dp =
            AttachedDatapath::attach(&layout, key, &pod, POD_IF, &p, AttachOptions::default())?;
        with.push(iperf(&net, 3)?);
        let c = dp.counters()?;
        if c.drops.values().any(|d| *d > 0) {
            bail!("the data path dropped benchmark traffic: {c:?}");
        }
        dp.detach(&layout, Some(&pod))?;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (b, w) = (mean(&bare), mean(&with));
    println!(
        "{:<34} {:>10.2} Gbit/s  (runs {:?})",
        "TCP over veth, bare", b, bare
    );
    println!(
        "{:<34} {:>10.2} Gbit/s  (runs {:?})",
        "TCP over veth, with datapath", w, with
    );
    println!(
        "throughput ratio (with / without): {:.3}  (target >= 0.95)",
        w / b
    );
    Ok(json!({
        "throughput_bare_gbps": b,
        "throughput_datapath_gbps": w,
        "throughput_ratio": w / b,
        "throughput_runs_bare_gbps": bare,
        "throughput_runs_datapath_gbps": with,
    }))
}

/// Datagrams per packets-per-second round.
const PPS_PACKETS: usize = 400_000;
const PPS_ROUNDS: usize = 5;
/// An allowed destination no host answers: the wire namespace drops it on arrival
/// (no forwarding), so the receiving side costs the same in every configuration.
const PPS_DST: &str = "198.51.100.7:9";

/// Sends `PPS_PACKETS` 64-byte UDP datagrams from the pod with `sendmmsg` and returns
/// packets per second. Each datagram goes through the pod's egress (tc or nftables),
/// the veth and the wire's receive path in the sender's own softirq context, so the
/// elapsed time includes every per-packet cost of the path.
fn blast(net: &PodWire) -> Result<f64> {
    let pod = net.pod.open();
    pod.run(|| -> Result<f64> {
        let sock = std::net::UdpSocket::bind("192.0.2.10:0")?;
        sock.connect(PPS_DST)?;
        let payload = [0x5au8; 64];
        const BATCH: usize = 64;
        let mut iov: Vec<libc::iovec> = (0..BATCH)
            .map(|_| libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is valid before the fields are set.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = 1;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let started = std::time::Instant::now();
        let mut sent = 0usize;
        while sent < PPS_PACKETS {
            // SAFETY: msgs points to BATCH initialised headers whose buffers live on.
            let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN)
                {
                    continue;
                }
                bail!("sendmmsg: {e}");
            }
            sent += n as usize;
        }
        Ok(sent as f64 / started.elapsed().as_secs_f64())
    })?
}

/// The same policy as netclaim's (source MAC and IP are the device's, destination in
/// one of the allowed prefixes, ARP from the device) as an nftables netdev egress chain
/// on the pod's interface.
fn nft_policy(net: &PodWire, prefixes: &[IpNet]) -> Result<()> {
    let elements: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    let script = format!(
        "table netdev ncbench {{
  set allowed {{ type ipv4_addr; flags interval; elements = {{ {} }} }}
  chain egress {{
    type filter hook egress device \"{POD_IF}\" priority 0; policy drop;
    ether saddr != {mac} drop
    arp saddr ether {mac} arp saddr ip 192.0.2.10 accept
    ip saddr 192.0.2.10 ip daddr @allowed accept
  }}
}}
",
        elements.join(", "),
        mac = net.pod_mac
    );
    let mut child = net
        .pod
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting nft (cargo xtask setup installs nftables)")?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("nft -f rejected the policy:\n{script}");
    }
    Ok(())
}

fn nft_flush(net: &PodWire) -> Result<()> {
    net.pod
        .exec("nft", &["delete", "table", "netdev", "ncbench"])?;
    Ok(())
}

/// Packets per second from the pod through nothing, through netclaim's programs and
/// through the same policy in nftables, alternating, medians of the same run.
fn pps() -> Result<serde_json::Value> {
    let net = PodWire::new("bpp", false)?;
    let bpf = TestBpfRoot::new("bpp")?;
    let layout = PinLayout::new(bpf.path());
    let pod = net.pod.open();
    // 16 allowed prefixes: the one the traffic goes to and 15 others.
    let mut routes = prefixes_v4(15);
    routes.push("198.51.100.0/24".parse()?);
    let p = DatapathPolicy {
        addresses: vec!["192.0.2.10/24".parse()?],
        routes: routes.clone(),
        knobs: DataplaneKnobs::default(),
        ..Default::default()
    };
    let mut nft_prefixes = routes.clone();
    nft_prefixes.push("192.0.2.0/24".parse()?);
    let (mut bare, mut ours, mut nft) = (Vec::new(), Vec::new(), Vec::new());
    blast(&net)?; // warm up neighbour and route caches
    for round in 0..PPS_ROUNDS {
        bare.push(blast(&net)?);
        let key = DatapathKey::new("bench", "pps", format!("r{round}"))?;
        let dp =
            AttachedDatapath::attach(&layout, key, &pod, POD_IF, &p, AttachOptions::default())?;
        ours.push(blast(&net)?);
        let c = dp.counters()?;
        if c.drops.values().any(|d| *d > 0) {
            bail!("netclaim dropped benchmark traffic: {c:?}");
        }
        dp.detach(&layout, Some(&pod))?;
        nft_policy(&net, &nft_prefixes)?;
        nft.push(blast(&net)?);
        nft_flush(&net)?;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, o, n) = (median(&mut bare), median(&mut ours), median(&mut nft));
    println!("{:<34} {:>10.0} pps", "no filter", b);
    println!(
        "{:<34} {:>10.0} pps  ({:.3}x no filter)",
        "netclaim (tc + XDP)",
        o,
        o / b
    );
    println!(
        "{:<34} {:>10.0} pps  ({:.3}x no filter)",
        "nftables netdev egress",
        n,
        n / b
    );
    println!(
        "nft_pps_ratio (netclaim / nftables): {:.3}  (target >= 1.0, goal 1.5)",
        o / n
    );
    Ok(json!({
        "pps_bare": b,
        "pps_netclaim": o,
        "pps_nftables": n,
        "nft_pps_ratio": o / n,
        "pps_packets_per_round": PPS_PACKETS,
        "pps_rounds": PPS_ROUNDS,
    }))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench/results/datapath.json".into());
    println!(
        "== datapath benchmark (BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, median) =="
    );
    let mut result = per_packet()?;
    println!("== packets per second from a pod: netclaim vs the same policy in nftables ==");
    let p = pps()?;
    println!("== TCP throughput through a veth pair (iperf3, 3 x 3 s each) ==");
    let t = throughput()?;
    for part in [p, t] {
        if let (Some(r), Some(part)) = (result.as_object_mut(), part.as_object()) {
            r.extend(part.clone());
        }
    }
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    println!("written to {out}");
    Ok(())
}
