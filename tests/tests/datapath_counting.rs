//! Foundation test: the programs attach inside a pod namespace, count exactly the
//! packets sent, log through tracing, show up in bpftool, and leave nothing behind.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netclaim::datapath::{
    device::AttachOptions, AttachedDatapath, DatapathKey, DatapathPolicy, PinLayout,
};
use netclaim_tests::{
    netenv::TestBpfRoot,
    topology::{PodWire, POD_IF},
    traffic::{kernel_bpf_ids, udp_send, UdpSink},
};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn counts_exactly_logs_and_cleans_up() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let net = PodWire::new("cnt", false).unwrap();
    let bpf = TestBpfRoot::new("cnt").unwrap();
    let layout = PinLayout::new(bpf.path());
    let key = DatapathKey::new("default", "claim-count", "a0").unwrap();
    let pod_ns = net.pod.open();
    let wire_ns = net.wire.open();

    // Count only: no addresses in the policy.
    let dp = AttachedDatapath::attach(
        &layout,
        key.clone(),
        &pod_ns,
        POD_IF,
        &DatapathPolicy::default(),
        AttachOptions::default(),
    )
    .unwrap();
    let info = dp.info().unwrap();
    let egress_id = info.egress_program_id.expect("egress program pinned");
    let ingress_id = info.ingress_program_id.expect("ingress program pinned");
    println!("attached: {info:?}");

    // While attached, bpftool lists both programs by name.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .unwrap();
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let named = |id: u32| {
        progs
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["name"].as_str().map(str::to_string))
    };
    assert_eq!(named(egress_id).as_deref(), Some("nc_egress"));
    assert_eq!(named(ingress_id).as_deref(), Some("nc_ingress"));

    // Map and link ids, to check the kernel after detach.
    let mut our_maps: Vec<u32> = Vec::new();
    for id in [egress_id, ingress_id] {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .unwrap();
        our_maps.extend(info.map_ids().unwrap().unwrap_or_default());
    }
    let our_links: Vec<u32> = [info.egress_link_id, info.ingress_link_id]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(our_links.len(), 2, "TCX and XDP links are pinned");

    let wire_sink = UdpSink::start(&wire_ns, sa("192.0.2.1:7000")).unwrap();
    let pod_sink = UdpSink::start(&pod_ns, sa("192.0.2.10:7001")).unwrap();
    let before = dp.counters().unwrap();
    assert_eq!((before.tx_packets, before.rx_packets), (0, 0));

    const TX: u32 = 100;
    const RX: u32 = 50;
    udp_send(&pod_ns, sa("192.0.2.10:0"), sa("192.0.2.1:7000"), TX, 100).unwrap();
    udp_send(&wire_ns, sa("192.0.2.1:0"), sa("192.0.2.10:7001"), RX, 60).unwrap();
    assert_eq!(
        wire_sink.wait_for(u64::from(TX), Duration::from_secs(5)),
        u64::from(TX)
    );
    assert_eq!(
        pod_sink.wait_for(u64::from(RX), Duration::from_secs(5)),
        u64::from(RX)
    );

    let c = dp.counters().unwrap();
    // Ethernet 14 + IPv4 20 + UDP 8 + payload.
    assert_eq!(c.tx_packets, u64::from(TX), "{c:?}");
    assert_eq!(c.tx_bytes, u64::from(TX) * (14 + 20 + 8 + 100), "{c:?}");
    assert_eq!(c.rx_packets, u64::from(RX), "{c:?}");
    assert_eq!(c.rx_bytes, u64::from(RX) * (14 + 20 + 8 + 60), "{c:?}");
    assert!(c.drops.values().all(|d| *d == 0), "{c:?}");

    // The egress program logged its policy generation through aya-log -> tracing.
    netclaim::datapath::logs::LogPump::global().flush();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("egress policy generation 1 active in slot 0"),
        "eBPF log line missing from tracing output:\n{text}"
    );
    assert!(text.contains("device=default/claim-count/a0"), "{text}");

    drop(wire_sink);
    drop(pod_sink);
    dp.detach(&layout, Some(&pod_ns)).unwrap();
    assert!(
        bpf.leftovers().is_empty(),
        "pins left: {:?}",
        bpf.leftovers()
    );

    // The kernel frees programs, maps and links asynchronously; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (progs, maps, links) = kernel_bpf_ids();
        let left_progs: Vec<_> = [egress_id, ingress_id]
            .into_iter()
            .filter(|i| progs.contains(i))
            .collect();
        let left_maps: Vec<_> = our_maps.iter().filter(|i| maps.contains(i)).collect();
        let left_links: Vec<_> = our_links.iter().filter(|i| links.contains(i)).collect();
        if left_progs.is_empty() && left_maps.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel after detach: programs {left_progs:?} maps {left_maps:?} links {left_links:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing attached on the interface either.
    let out = net
        .pod
        .exec("bpftool", &["net", "show", "dev", POD_IF])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("nc_"), "{text}");
}
