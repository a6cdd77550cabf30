//! Data-path enforcement with real programs and real packets: route enforcement,
//! anti-spoofing and ingress filtering in IPv4 and IPv6, per-route hits, isolation of
//! two devices with the same ifindex, atomic policy updates under traffic, survival of
//! the owning process, the clsact/generic-XDP fallbacks, and clean detach.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;
use netclaim::datapath::{
    device::AttachOptions, AttachedDatapath, DatapathKey, DatapathPolicy, DataplaneKnobs,
    EgressMode, IngressMode, PinLayout,
};
use netclaim_common::DropReason;
use netclaim_tests::{
    netenv::TestBpfRoot,
    topology::{PodWire, POD_IF, WIRE_IF},
    traffic::{kernel_bpf_ids, udp_rcvbuf_errors, udp_send, UdpSink},
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn nets(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

/// The claim: 192.0.2.10/24 + 2001:db8::10/64, routes to 198.51.100.0/24 and
/// 2001:db8:100::/48. 203.0.113.0/24 and 2001:db8:200::/48 are routed by the pod's
/// table but not allowed by the claim.
fn claim_policy() -> DatapathPolicy {
    DatapathPolicy {
        addresses: nets(&["192.0.2.10/24", "2001:db8::10/64"]),
        routes: nets(&["198.51.100.0/24", "2001:db8:100::/48"]),
        knobs: DataplaneKnobs::default(),
        ..Default::default()
    }
}

const N: u32 = 40;
const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

struct Fixture {
    net: PodWire,
    _bpf: TestBpfRoot,
    layout: PinLayout,
}

fn fixture(tag: &str) -> Fixture {
    let net = PodWire::new(tag, true).unwrap();
    let bpf = TestBpfRoot::new(tag).unwrap();
    let layout = PinLayout::new(bpf.path());
    Fixture {
        net,
        _bpf: bpf,
        layout,
    }
}

#[test]
fn enforces_routes_spoofing_and_ingress_v4_and_v6() {
    let f = fixture("enf");
    let pod = f.net.pod.open();
    let wire = f.net.wire.open();
    // A secondary address that the host has but the claim does not.
    f.net
        .pod
        .ip(&["addr", "add", "192.0.2.99/24", "dev", POD_IF])
        .unwrap();
    f.net
        .pod
        .ip(&["addr", "add", "2001:db8::99/64", "dev", POD_IF, "nodad"])
        .unwrap();
    let key = DatapathKey::new("default", "enf", "a0").unwrap();
    let dp = AttachedDatapath::attach(
        &f.layout,
        key,
        &pod,
        POD_IF,
        &claim_policy(),
        AttachOptions::default(),
    )
    .unwrap();

    for (family, allowed, forbidden, spoof_src, good_src, local_sink_ok, not_local) in [
        (
            "v4",
            "198.51.100.1:9000",
            "203.0.113.1:9000",
            "192.0.2.99:0",
            "192.0.2.10:0",
            "192.0.2.10:9100",
            "192.0.2.77",
        ),
        (
            "v6",
            "[2001:db8:100::1]:9000",
            "[2001:db8:200::1]:9000",
            "[2001:db8::99]:0",
            "[2001:db8::10]:0",
            "[2001:db8::10]:9100",
            "2001:db8::77",
        ),
    ] {
        let before = dp.counters().unwrap();
        // Allowed destination passes and counts a hit on its route.
        let sink = UdpSink::start(&wire, sa(allowed)).unwrap();
        udp_send(&pod, sa(good_src), sa(allowed), N, 64).unwrap();
        assert_eq!(
            sink.wait_for(N.into(), WAIT),
            u64::from(N),
            "{family}: allowed traffic lost"
        );
        drop(sink);

        // Destination outside every allowed prefix: dropped, counted as no_route.
        let sink = UdpSink::start(&wire, sa(forbidden)).unwrap();
        udp_send(&pod, sa(good_src), sa(forbidden), N, 64).unwrap();
        std::thread::sleep(QUIET);
        assert_eq!(
            sink.count(),
            0,
            "{family}: forbidden destination reached the wire"
        );
        drop(sink);

        // Spoofed source (an address of the host, not of the claim): spoofed_source.
        let sink = UdpSink::start(&wire, sa(allowed)).unwrap();
        udp_send(&pod, sa(spoof_src), sa(allowed), N, 64).unwrap();
        std::thread::sleep(QUIET);
        assert_eq!(sink.count(), 0, "{family}: spoofed source reached the wire");
        drop(sink);

        // Ingress: unicast to our MAC but to an address that is not the device's.
        let not_local_ip = not_local;
        let lladdr = f.net.pod_mac.clone();
        let v6 = family == "v6";
        let mut args = vec![];
        if v6 {
            args.push("-6");
        }
        args.extend([
            "neigh",
            "replace",
            not_local_ip,
            "lladdr",
            &lladdr,
            "dev",
            WIRE_IF,
            "nud",
            "permanent",
        ]);
        f.net.wire.ip(&args).unwrap();
        let src = if v6 { "[2001:db8::1]:0" } else { "192.0.2.1:0" };
        let dst = if v6 {
            format!("[{not_local_ip}]:9200")
        } else {
            format!("{not_local_ip}:9200")
        };
        udp_send(&wire, sa(src), sa(&dst), N, 64).unwrap();
        // Local unicast still passes.
        let sink = UdpSink::start(&pod, sa(local_sink_ok)).unwrap();
        udp_send(&wire, sa(src), sa(local_sink_ok), N, 64).unwrap();
        assert_eq!(
            sink.wait_for(N.into(), WAIT),
            u64::from(N),
            "{family}: local ingress lost"
        );
        drop(sink);

        let after = dp.counters().unwrap();
        let delta = |r: DropReason| after.dropped(r) - before.dropped(r);
        assert_eq!(
            delta(DropReason::NoRoute),
            u64::from(N),
            "{family} {after:?}"
        );
        assert_eq!(
            delta(DropReason::SpoofedSource),
            u64::from(N),
            "{family} {after:?}"
        );
        assert_eq!(
            delta(DropReason::NotLocal),
            u64::from(N),
            "{family} {after:?}"
        );
        let route = if v6 {
            "2001:db8:100::/48"
        } else {
            "198.51.100.0/24"
        };
        assert_eq!(
            after.route_hits.get(route).copied().unwrap_or(0)
                - before.route_hits.get(route).copied().unwrap_or(0),
            u64::from(N),
            "{family}: hits per route {after:?}"
        );
    }
    dp.detach(&f.layout, Some(&pod)).unwrap();
}

#[test]
fn same_ifindex_in_two_namespaces_never_mix() {
    let f1 = fixture("iso1");
    let f2 = fixture("iso2");
    let (p1, p2) = (f1.net.pod.open(), f2.net.pod.open());
    let (w1, w2) = (f1.net.wire.open(), f2.net.wire.open());
    assert_eq!(
        f1.net.pod.ifindex(POD_IF).unwrap(),
        f2.net.pod.ifindex(POD_IF).unwrap(),
        "the test needs equal ifindexes"
    );
    let k1 = DatapathKey::new("ns1", "iso", "a0").unwrap();
    let k2 = DatapathKey::new("ns2", "iso", "a0").unwrap();
    // Same layout root for both: per-device directories keep them apart.
    let dp1 = AttachedDatapath::attach(
        &f1.layout,
        k1,
        &p1,
        POD_IF,
        &claim_policy(),
        AttachOptions::default(),
    )
    .unwrap();
    let mut other = claim_policy();
    other.routes = nets(&["203.0.113.0/24"]); // device 2 allows what device 1 forbids
    let dp2 = AttachedDatapath::attach(
        &f1.layout,
        k2,
        &p2,
        POD_IF,
        &other,
        AttachOptions::default(),
    )
    .unwrap();

    let s1 = UdpSink::start(&w1, sa("203.0.113.1:9000")).unwrap();
    let s2 = UdpSink::start(&w2, sa("203.0.113.1:9000")).unwrap();
    udp_send(&p1, sa("192.0.2.10:0"), sa("203.0.113.1:9000"), N, 32).unwrap();
    udp_send(&p2, sa("192.0.2.10:0"), sa("203.0.113.1:9000"), N, 32).unwrap();
    assert_eq!(
        s2.wait_for(N.into(), WAIT),
        u64::from(N),
        "device 2 allows 203.0.113.0/24"
    );
    assert_eq!(s1.count(), 0, "device 1 forbids 203.0.113.0/24");
    let (c1, c2) = (dp1.counters().unwrap(), dp2.counters().unwrap());
    assert_eq!(c1.dropped(DropReason::NoRoute), u64::from(N));
    assert_eq!(c2.dropped(DropReason::NoRoute), 0);
    assert_eq!(c2.route_hits.get("203.0.113.0/24"), Some(&u64::from(N)));

    // Detaching device 1 leaves device 2 attached and counting.
    dp1.detach(&f1.layout, Some(&p1)).unwrap();
    let before = dp2.counters().unwrap().tx_packets;
    udp_send(&p2, sa("192.0.2.10:0"), sa("203.0.113.1:9000"), N, 32).unwrap();
    assert_eq!(s2.wait_for(2 * u64::from(N), WAIT), 2 * u64::from(N));
    assert!(dp2.counters().unwrap().tx_packets >= before + u64::from(N));
    drop((s1, s2));
    dp2.detach(&f1.layout, Some(&p2)).unwrap();
    let _ = f2;
}

#[test]
fn policy_swap_under_traffic_loses_nothing_and_leaks_nothing() {
    let f = fixture("swap");
    let pod = f.net.pod.open();
    let wire = f.net.wire.open();
    let key = DatapathKey::new("default", "swap", "a0").unwrap();
    let mut dp = AttachedDatapath::attach(
        &f.layout,
        key,
        &pod,
        POD_IF,
        &claim_policy(),
        AttachOptions::default(),
    )
    .unwrap();
    let allowed_sink = UdpSink::start(&wire, sa("198.51.100.1:9000")).unwrap();
    let forbidden_sink = UdpSink::start(&wire, sa("203.0.113.1:9000")).unwrap();
    let socket_drops_before = udp_rcvbuf_errors(&wire).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stop2, sent2) = (stop.clone(), sent.clone());
    let sender_ns = f.net.pod.open();
    let sender = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            udp_send(
                &sender_ns,
                sa("192.0.2.10:0"),
                sa("198.51.100.1:9000"),
                50,
                32,
            )
            .unwrap();
            udp_send(
                &sender_ns,
                sa("192.0.2.10:0"),
                sa("203.0.113.1:9000"),
                10,
                32,
            )
            .unwrap();
            sent2.fetch_add(50, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    // Alternate between two policies that both allow 198.51.100.0/24 and both forbid
    // 203.0.113.0/24, with different extra prefixes and addresses.
    let mut a = claim_policy();
    a.routes.push("10.99.0.0/16".parse().unwrap());
    let mut b = claim_policy();
    b.addresses.push("192.0.2.11/24".parse().unwrap());
    b.routes = nets(&["2001:db8:100::/48", "198.51.100.0/25", "198.51.100.0/24"]);
    let started = Instant::now();
    let mut swaps = 0;
    while started.elapsed() < Duration::from_secs(2) {
        dp.update_policy(if swaps % 2 == 0 { &a } else { &b })
            .unwrap();
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    let got = allowed_sink.wait_for(total, WAIT);
    // Datagrams the receiving socket could not take (a starved receiver thread) are
    // not data-path losses; they are counted by the kernel and accounted for here.
    let socket_drops = udp_rcvbuf_errors(&wire).unwrap() - socket_drops_before;
    println!("{swaps} policy swaps under {total} allowed datagrams ({socket_drops} dropped by a full receive buffer)");
    assert!(swaps > 20, "too few swaps ({swaps}) to mean anything");
    assert_eq!(
        got + socket_drops,
        total,
        "allowed packets lost during policy swaps (received {got}, socket-buffer drops {socket_drops})"
    );
    assert_eq!(
        forbidden_sink.count(),
        0,
        "forbidden packets passed during swaps"
    );
    let c = dp.counters().unwrap();
    assert!(c.dropped(DropReason::NoRoute) > 0);
    assert_eq!(c.dropped(DropReason::SpoofedSource), 0, "{c:?}");
    drop((allowed_sink, forbidden_sink));
    dp.detach(&f.layout, Some(&pod)).unwrap();
}

#[test]
fn programs_outlive_their_owner_and_are_adopted_with_counters() {
    let f = fixture("rst");
    let pod = f.net.pod.open();
    let wire = f.net.wire.open();
    let policy = serde_json::to_string(&claim_policy()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datapath-owner"))
        .arg(f.layout.root())
        .arg(f.net.pod.path())
        .args([POD_IF, "default", "rst", "a0", &policy])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The owner has exited: programs must still count and enforce.
    let sink = UdpSink::start(&wire, sa("198.51.100.1:9000")).unwrap();
    udp_send(&pod, sa("192.0.2.10:0"), sa("198.51.100.1:9000"), N, 32).unwrap();
    udp_send(&pod, sa("192.0.2.10:0"), sa("203.0.113.1:9000"), N, 32).unwrap();
    assert_eq!(sink.wait_for(N.into(), WAIT), u64::from(N));

    // `netclaim inspect` reads the same from the pins alone, with no owner running.
    let seen = netclaim::cli::inspect::inspect(&f.layout, Some("default/rst"));
    assert_eq!(seen.len(), 1, "{seen:?}");
    let d = seen[0].as_ref().unwrap();
    assert_eq!(d.device, "a0");
    assert_eq!(d.interface.as_deref(), Some(POD_IF));
    assert_eq!(d.netns.as_deref(), Some(f.net.pod.path().to_str().unwrap()));
    assert_eq!(d.counters.dropped(DropReason::NoRoute), u64::from(N));
    assert_eq!(
        serde_json::json!(d.datapath.egress_link_id),
        first["egressLinkId"]
    );

    // A new owner adopts the pins without re-attaching: same program and link ids.
    let key = DatapathKey::new("default", "rst", "a0").unwrap();
    let dp = AttachedDatapath::adopt(&f.layout, key).unwrap();
    let info = dp.info().unwrap();
    assert_eq!(
        serde_json::json!(info.egress_program_id),
        first["egressProgramId"]
    );
    assert_eq!(
        serde_json::json!(info.egress_link_id),
        first["egressLinkId"]
    );
    assert_eq!(
        serde_json::json!(info.ingress_link_id),
        first["ingressLinkId"]
    );
    let c = dp.counters().unwrap();
    assert_eq!(c.dropped(DropReason::NoRoute), u64::from(N));
    assert_eq!(c.route_hits.get("198.51.100.0/24"), Some(&u64::from(N)));

    // Counting continues from where it was.
    udp_send(&pod, sa("192.0.2.10:0"), sa("198.51.100.1:9000"), N, 32).unwrap();
    assert_eq!(sink.wait_for(2 * u64::from(N), WAIT), 2 * u64::from(N));
    let c2 = dp.counters().unwrap();
    assert_eq!(
        c2.route_hits.get("198.51.100.0/24"),
        Some(&(2 * u64::from(N)))
    );

    // The adopted programs' log buffer is read again: a policy change is logged by the
    // program on the next packet and reaches tracing with the device.
    let pump = netclaim::datapath::logs::LogPump::global();
    assert_eq!(
        pump.resume_pinned(&f.layout),
        1,
        "log buffer of the adopted device"
    );
    assert_eq!(pump.resume_pinned(&f.layout), 0, "registered once");
    let logs = capture_logs();
    let mut dp = dp;
    let mut wider = claim_policy();
    wider.routes.push("10.99.0.0/16".parse().unwrap());
    dp.update_policy(&wider).unwrap();
    udp_send(&pod, sa("192.0.2.10:0"), sa("198.51.100.1:9000"), N, 32).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
        if text.contains("default/rst/a0") && text.contains("policy generation 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no program log after adoption: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(sink);
    dp.detach(&f.layout, Some(&pod)).unwrap();
}

/// Installs a process-wide tracing subscriber writing into a buffer (the log pump
/// runs on its own thread, so a thread-local one would miss it).
fn capture_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static BUF: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || BufWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct BufWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn clsact_and_generic_xdp_fallbacks_work_and_detach_cleanly() {
    for (egress, ingress) in [
        (EgressMode::Clsact, IngressMode::XdpGeneric),
        (EgressMode::Tcx, IngressMode::Tcx),
        (EgressMode::Clsact, IngressMode::Clsact),
    ] {
        let f = fixture("fb");
        let pod = f.net.pod.open();
        let wire = f.net.wire.open();
        let key = DatapathKey::new("default", "fb", "a0").unwrap();
        let opts = AttachOptions {
            egress: Some(egress),
            ingress: Some(ingress),
            ..Default::default()
        };
        let dp =
            AttachedDatapath::attach(&f.layout, key, &pod, POD_IF, &claim_policy(), opts).unwrap();
        let info = dp.info().unwrap();
        assert_eq!(info.egress_mode, Some(egress));
        assert_eq!(info.ingress_mode, Some(ingress));
        let ids = [
            info.egress_program_id.unwrap(),
            info.ingress_program_id.unwrap(),
        ];

        let sink = UdpSink::start(&wire, sa("198.51.100.1:9000")).unwrap();
        udp_send(&pod, sa("192.0.2.10:0"), sa("198.51.100.1:9000"), N, 32).unwrap();
        udp_send(&pod, sa("192.0.2.10:0"), sa("203.0.113.1:9000"), N, 32).unwrap();
        assert_eq!(
            sink.wait_for(N.into(), WAIT),
            u64::from(N),
            "{egress:?}/{ingress:?}"
        );
        let local = UdpSink::start(&pod, sa("192.0.2.10:9100")).unwrap();
        udp_send(&wire, sa("192.0.2.1:0"), sa("192.0.2.10:9100"), N, 32).unwrap();
        assert_eq!(local.wait_for(N.into(), WAIT), u64::from(N));
        let c = dp.counters().unwrap();
        assert_eq!(
            c.dropped(DropReason::NoRoute),
            u64::from(N),
            "{egress:?}/{ingress:?}"
        );
        assert!(c.rx_packets >= u64::from(N), "{egress:?}/{ingress:?} {c:?}");
        drop((sink, local));

        dp.detach(&f.layout, Some(&pod)).unwrap();
        let out = f
            .net
            .pod
            .exec("bpftool", &["net", "show", "dev", POD_IF])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("nc_"),
            "{egress:?}/{ingress:?} left attached: {text}"
        );
        // The clsact qdisc the fallback added goes with its filters.
        let qdiscs = f
            .net
            .pod
            .exec("tc", &["qdisc", "show", "dev", POD_IF])
            .unwrap();
        let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
        assert!(
            !qdiscs.contains("clsact"),
            "{egress:?}/{ingress:?} left the clsact qdisc: {qdiscs}"
        );
        let deadline = Instant::now() + WAIT;
        while kernel_bpf_ids().0.iter().any(|i| ids.contains(i)) {
            assert!(
                Instant::now() < deadline,
                "{egress:?}/{ingress:?}: programs not freed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_clsact_qdisc_that_was_there_before_stays() {
    let f = fixture("cq");
    let pod = f.net.pod.open();
    f.net
        .pod
        .exec("tc", &["qdisc", "add", "dev", POD_IF, "clsact"])
        .unwrap();
    let key = DatapathKey::new("default", "cq", "a0").unwrap();
    let opts = AttachOptions {
        egress: Some(EgressMode::Clsact),
        ingress: Some(IngressMode::Clsact),
        ..Default::default()
    };
    let dp = AttachedDatapath::attach(&f.layout, key, &pod, POD_IF, &claim_policy(), opts).unwrap();
    dp.detach(&f.layout, Some(&pod)).unwrap();
    let qdiscs = f
        .net
        .pod
        .exec("tc", &["qdisc", "show", "dev", POD_IF])
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(
        qdiscs.contains("clsact"),
        "someone else's qdisc was removed: {qdiscs}"
    );
    let filters = f
        .net
        .pod
        .exec("tc", &["filter", "show", "dev", POD_IF, "egress"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&filters.stdout).trim().is_empty(),
        "netclaim's filter stayed"
    );
}

#[test]
fn no_addresses_means_counting_only() {
    let f = fixture("l2");
    let pod = f.net.pod.open();
    let wire = f.net.wire.open();
    let key = DatapathKey::new("default", "l2", "a0").unwrap();
    let policy = DatapathPolicy {
        addresses: vec![],
        routes: nets(&["198.51.100.0/24"]),
        knobs: DataplaneKnobs::default(),
        ..Default::default()
    };
    let dp = AttachedDatapath::attach(
        &f.layout,
        key,
        &pod,
        POD_IF,
        &policy,
        AttachOptions::default(),
    )
    .unwrap();
    let info = dp.info().unwrap();
    assert!(
        matches!(&info.enforcement, netclaim::datapath::Enforcement::CountOnly { reason } if reason.contains("no IP addresses")),
        "{info:?}"
    );
    let sink = UdpSink::start(&wire, sa("203.0.113.1:9000")).unwrap();
    udp_send(&pod, sa("192.0.2.10:0"), sa("203.0.113.1:9000"), N, 32).unwrap();
    assert_eq!(
        sink.wait_for(N.into(), WAIT),
        u64::from(N),
        "count-only must not drop"
    );
    assert!(dp.counters().unwrap().tx_packets >= u64::from(N));
    drop(sink);
    dp.detach(&f.layout, Some(&pod)).unwrap();
}
