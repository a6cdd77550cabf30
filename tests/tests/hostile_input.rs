//! Hostile input never crashes the daemon: the claim config parser and validator, the
//! NRI mux and the ttrpc reader and server, and the checkpoint (each entry's decoder,
//! its journal's reader, and whole checkpoint files damaged on disk), fed generated
//! and mutated input.
//!
//! Each target is driven by a seeded xorshift generator and runs as one [`Campaign`]:
//! the targets take turns (so each one's peak RSS is its own), a process-wide panic
//! hook counts every panic, also those in spawned tasks and those caught on the way,
//! and each target ends with one line that `cargo xtask fuzz` collects:
//!
//! ```text
//! fuzz: target=checkpoint-entry inputs=1000000 panics=0 peak_rss_mib=31.2 secs=40.1
//! ```
//!
//! `NETCLAIM_FUZZ_INPUTS` sets the inputs per target (default 100,000 in the suite;
//! `cargo xtask fuzz` runs 1,000,000 in release). Whole checkpoint files cost a file
//! write and a database open each, so that target takes one file per 100 inputs.
//! Success means: no panic, every call returns, peak RSS grows by less than
//! [`MAX_RSS_GROWTH_MIB`] (no allocation follows a length an attacker wrote), and a
//! server keeps answering.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use futures::FutureExt;
use netclaim::config::parse_parameters;
use netclaim::kubelet::prepare::devices_of;
use netclaim::nri::mux::{frame_header, Mux};
use netclaim::nri::ttrpc::{self, read_message, Service, Status};
use netclaim::state::{decode_entry, encode_entry, ClaimPlans, StateError, StateStore};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn inputs() -> u64 {
    std::env::var("NETCLAIM_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// How much a target may raise the process's peak RSS above what it had at its start.
const MAX_RSS_GROWTH_MIB: f64 = 512.0;

/// Panics anywhere in the process since the hook was installed.
static PANICS: AtomicU64 = AtomicU64::new(0);
static PANIC_HOOK: Once = Once::new();
/// One target at a time: the peak RSS of the process is then the running target's.
static SERIAL: Mutex<()> = Mutex::new(());

/// One fuzz target's run: counts its panics, measures its time and peak RSS.
struct Campaign {
    target: &'static str,
    started: Instant,
    rss_at_start_kib: u64,
    panics_at_start: u64,
    _turn: MutexGuard<'static, ()>,
}

impl Campaign {
    fn start(target: &'static str) -> Self {
        let turn = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        PANIC_HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                // The first few are printed with their location, then only those raised
                // by this test itself (a failed check); the rest are counted. No
                // backtrace: symbolising one maps the whole test binary, which would
                // show as the target's RSS.
                let ours = info
                    .location()
                    .is_some_and(|l| l.file().contains("hostile_input"));
                if PANICS.fetch_add(1, Ordering::SeqCst) < 5 || ours {
                    eprintln!("panic: {info}");
                }
            }));
        });
        // "5" resets the peak RSS (VmHWM) to the current RSS (proc(5), Linux >= 4.0).
        // Where that is refused the peak stays the process's, still an upper bound.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self {
            target,
            started: Instant::now(),
            rss_at_start_kib: status_kib("VmRSS").unwrap_or(0),
            panics_at_start: PANICS.load(Ordering::SeqCst),
            _turn: turn,
        }
    }

    fn panics(&self) -> u64 {
        PANICS.load(Ordering::SeqCst) - self.panics_at_start
    }

    /// Prints the target's line and fails the test on a panic or unbounded memory.
    fn finish(self, inputs: u64) {
        self.finish_catching(inputs, None)
    }

    /// [`Campaign::finish`] for a target whose code under test catches some panics
    /// itself (by contract): those `caught` are reported apart and do not fail it.
    fn finish_catching(self, inputs: u64, caught: Option<u64>) {
        let panics = self.panics() - caught.unwrap_or(0);
        let peak_kib = status_kib("VmHWM").unwrap_or(0);
        let peak_mib = peak_kib as f64 / 1024.0;
        let growth_mib = peak_kib.saturating_sub(self.rss_at_start_kib) as f64 / 1024.0;
        let caught = caught
            .map(|c| format!(" caught_panics={c}"))
            .unwrap_or_default();
        println!(
            "fuzz: target={} inputs={inputs} panics={panics} peak_rss_mib={peak_mib:.1} secs={:.1}{caught}",
            self.target,
            self.started.elapsed().as_secs_f64()
        );
        assert_eq!(panics, 0, "{}: {panics} panics", self.target);
        assert!(
            growth_mib < MAX_RSS_GROWTH_MIB,
            "{}: peak RSS grew by {growth_mib:.1} MiB (limit {MAX_RSS_GROWTH_MIB} MiB)",
            self.target
        );
    }
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs one input; a panic is counted by the hook and the campaign goes on.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

/// Valid configs to start mutating from.
fn seeds() -> Vec<Value> {
    vec![
        json!({"interface": {"name": "net1", "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
               "mtu": 9000, "hardwareAddr": "02:00:00:00:00:01", "gsoMaxSize": 65536},
               "routes": [{"destination": "198.51.100.0/24", "gateway": "192.0.2.1"},
                          {"destination": "203.0.113.0/24", "scope": 253, "source": "192.0.2.10", "table": 100}],
               "ethtool": {"features": {"tx-checksumming": false}, "privateFlags": {"x": true}},
               "dataplane": {"enforceRoutes": true, "antiSpoofing": true, "allowMulticast": false},
               "disableEbpfPrograms": false}),
        json!({}),
        json!({"interface": {"addresses": []}, "routes": []}),
    ]
}

const LONG: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Field names of the claim config, for generated objects.
const CONFIG_KEYS: &[&str] = &[
    "interface",
    "name",
    "addresses",
    "mtu",
    "routes",
    "destination",
    "gateway",
    "scope",
    "table",
    "ethtool",
    "features",
    "dataplane",
    "hardwareAddr",
    "unknown",
    "source",
    "privateFlags",
];

/// A random JSON value: deep, wide, huge numbers, odd strings; objects use `keys`.
fn random_value(r: &mut Rng, depth: usize, keys: &[&str]) -> Value {
    match r.below(if depth > 6 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.below(2) == 1),
        2 => json!(r.next() as i64),
        3 => json!(f64::from_bits(r.next())).clone(),
        4 => {
            let pick = [
                "",
                "net1",
                "192.0.2.1/24",
                "::ffff:1.2.3.4/120",
                LONG,
                "\u{0}\u{202e}é",
                "02:00:00:00:00:01",
                "eth0/1",
                "-1",
                "1e309",
            ];
            json!(pick[r.below(pick.len())])
        }
        5 => Value::Array(
            (0..r.below(8))
                .map(|_| random_value(r, depth + 1, keys))
                .collect(),
        ),
        _ => Value::Object(
            (0..r.below(6))
                .map(|_| {
                    (
                        keys[r.below(keys.len())].to_string(),
                        random_value(r, depth + 1, keys),
                    )
                })
                .collect(),
        ),
    }
}

/// Replaces one random node of `v` with a random value.
fn mutate(r: &mut Rng, v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) if !m.is_empty() && r.below(3) > 0 => {
            let k = m.keys().nth(r.below(m.len())).cloned().unwrap_or_default();
            if let Some(child) = m.get_mut(&k) {
                mutate(r, child, keys);
            }
        }
        Value::Array(a) if !a.is_empty() && r.below(3) > 0 => {
            let i = r.below(a.len());
            mutate(r, &mut a[i], keys);
        }
        _ => *v = random_value(r, 0, keys),
    }
}

/// A random node of `v` (the root included).
fn pick_node<'a>(r: &mut Rng, v: &'a Value) -> &'a Value {
    let child = match v {
        Value::Object(m) if !m.is_empty() => m.values().nth(r.below(m.len())),
        Value::Array(a) if !a.is_empty() => a.get(r.below(a.len())),
        _ => None,
    };
    match child {
        Some(child) if r.below(4) > 0 => pick_node(r, child),
        _ => v,
    }
}

/// Replaces one random node of `v` with `with`.
fn splice(r: &mut Rng, v: &mut Value, with: Value) {
    match v {
        Value::Object(m) if !m.is_empty() && r.below(4) > 0 => {
            let k = m.keys().nth(r.below(m.len())).cloned().unwrap_or_default();
            if let Some(child) = m.get_mut(&k) {
                splice(r, child, with);
            }
        }
        Value::Array(a) if !a.is_empty() && r.below(4) > 0 => {
            let i = r.below(a.len());
            splice(r, &mut a[i], with);
        }
        _ => *v = with,
    }
}

/// One to four byte-level changes: a random byte, a cut, or a JSON-ish byte inserted.
fn mutate_bytes(r: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + r.below(4) {
        let at = r.below(bytes.len());
        match r.below(3) {
            0 if !bytes.is_empty() => bytes[at] = r.next() as u8,
            1 => bytes.truncate(at),
            _ => bytes.insert(at.min(bytes.len()), b"{}[]\",0:e-9\\"[r.below(12)]),
        }
    }
}

#[test]
fn the_config_parser_survives_generated_and_mutated_configs() {
    let campaign = Campaign::start("config");
    let n = inputs();
    let mut r = Rng(0xc0f1_6000_0000_0001);
    let seeds = seeds();
    let (mut ok, mut refused) = (0u64, 0u64);
    for i in 0..n {
        let mut v = seeds[(i % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + r.below(4) {
            mutate(&mut r, &mut v, CONFIG_KEYS);
        }
        if i % 4 == 0 {
            // Byte-level mutation of the text, when it still parses as JSON.
            let mut text = serde_json::to_vec(&v).unwrap_or_default();
            if !text.is_empty() {
                let at = r.below(text.len());
                text[at] = r.next() as u8;
            }
            if let Ok(parsed) = serde_json::from_slice(&text) {
                v = parsed;
            }
        }
        let outcome = guarded(|| {
            match parse_parameters(&v, "spec.devices.config[0].opaque.parameters") {
                Ok(_) => true,
                Err(e) => {
                    // Every refusal names a field and says why.
                    assert!(!e.to_string().is_empty());
                    false
                }
            }
        });
        match outcome {
            Some(true) => ok += 1,
            Some(false) => refused += 1,
            None => {}
        }
    }
    println!("config parser: {n} inputs, {ok} accepted, {refused} refused");
    campaign.finish(n);
    assert!(ok > 0 && refused > 0, "the generator reaches both outcomes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttrpc_reader_survives_garbage_and_lying_lengths() {
    let campaign = Campaign::start("ttrpc-reader");
    let n = inputs();
    let mut r = Rng(0x77_7270_0000_0001);
    let (mut messages, mut errors) = (0u64, 0u64);
    for _ in 0..n {
        let mut buf = Vec::new();
        match r.below(4) {
            // A header whose length lies (up to u32::MAX), then too few bytes.
            0 => {
                buf.extend((r.next() as u32).to_be_bytes());
                buf.extend({
                    let k = 6 + r.below(64);
                    r.bytes(k)
                });
            }
            // A well-formed message with a garbage body.
            1 => {
                let body = r.some_bytes(256);
                buf.extend(ttrpc::encode_message(r.next() as u32, 1, 0, &body).unwrap_or_default());
            }
            _ => buf.extend(r.some_bytes(128)),
        }
        let read_all = async {
            let (mut messages, mut errors) = (0u64, 0u64);
            let mut reader = buf.as_slice();
            loop {
                match read_message(&mut reader).await {
                    Ok(Some(m)) => {
                        messages += 1;
                        // What the server does next: decode it as a request.
                        let _ = <ttrpc::Request as prost::Message>::decode(m.body.as_slice());
                    }
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (messages, errors)
        };
        if let Ok((m, e)) = AssertUnwindSafe(read_all).catch_unwind().await {
            messages += m;
            errors += e;
        }
    }
    println!("ttrpc reader: {n} inputs, {messages} messages read, {errors} refused");
    campaign.finish(n);
    assert!(messages > 0 && errors > 0);
}

struct Echo;

#[async_trait::async_trait]
impl Service for Echo {
    async fn call(&self, _service: &str, _method: &str, payload: &[u8]) -> Result<Vec<u8>, Status> {
        Ok(payload.to_vec())
    }
}

/// A hostile NRI peer: garbage frames on unknown conn ids, frames whose length lies,
/// garbage ttrpc inside valid frames. The mux skips and closes cleanly; a ttrpc server
/// behind it answers garbage with an error and still answers a good request after it.
/// Every frame counts as one input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mux_and_a_ttrpc_server_survive_a_hostile_peer() {
    const FRAMES_PER_STREAM: u64 = 500;
    let campaign = Campaign::start("nri-mux-ttrpc-server");
    let streams = inputs().div_ceil(FRAMES_PER_STREAM).max(20);
    let mut r = Rng(0x6d75_7800_0000_0001);
    let mut frames_sent = 0u64;
    for s in 0..streams {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (mux, mut conns) = Mux::start(ours, &[1, 2]).expect("mux");
        let server_conn = conns.remove(0);
        let server = tokio::spawn(ttrpc::serve(server_conn, Arc::new(Echo)));
        let mut out = Vec::new();
        for _ in 0..FRAMES_PER_STREAM - 2 {
            let conn = [0u32, 1, 2, 3, 0xffff_ffff][r.below(5)];
            let payload = if conn == 1 {
                // Garbage inside a well-formed ttrpc message. (Stray bytes on the
                // server's conn would desynchronise it for good: the other conns get
                // those.)
                ttrpc::encode_message(r.next() as u32 | 1, 1, 0, &r.some_bytes(64))
                    .unwrap_or_default()
            } else {
                r.some_bytes(200)
            };
            out.extend(frame_header(conn, payload.len() as u32));
            out.extend(payload);
            frames_sent += 1;
        }
        // A good request after all that, on the server's conn.
        let request = <ttrpc::Request as prost::Message>::encode_to_vec(&ttrpc::Request {
            service: "s".into(),
            method: "m".into(),
            payload: b"still here".to_vec(),
            ..Default::default()
        });
        let good = ttrpc::encode_message(0x7fff_fff1, 1, 0, &request).expect("encode");
        out.extend(frame_header(1, good.len() as u32));
        out.extend(&good);
        frames_sent += 1;
        // And a frame whose length lies about a 4 GiB payload (or, every other stream,
        // a header cut short), then the peer goes.
        if s % 2 == 0 {
            out.extend(frame_header(2, u32::MAX));
            out.extend(r.bytes(100));
        } else {
            out.extend(&frame_header(2, 16)[..5]);
        }
        frames_sent += 1;
        let writer = tokio::spawn(async move {
            let _ = theirs.write_all(&out).await;
            theirs
        });
        // Drain what the server answers until the good request's reply shows up.
        let mut answered = Vec::new();
        let mut buf = [0u8; 4096];
        let mut theirs = writer.await.expect("writer");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !answered.windows(10).any(|w| w == b"still here") {
            match tokio::time::timeout_at(deadline, theirs.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answered.extend_from_slice(&buf[..n]),
                other => panic!("stream {s}: no answer to the good request ({other:?})"),
            }
        }
        drop(theirs);
        tokio::time::timeout(Duration::from_secs(5), mux.closed())
            .await
            .expect("the mux closes when the peer goes");
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Err(join)) if join.is_panic() => panic!("stream {s}: the ttrpc server panicked"),
            _ => {}
        }
    }
    println!("mux + ttrpc server: {streams} hostile streams, {frames_sent} frames");
    campaign.finish(frames_sent);
}

// ---------------------------------------------------------------------------------
// The checkpoint.

/// Field names of stored plans (both the present layout and the one before
/// `placement`), for generated objects.
const PLAN_KEYS: &[&str] = &[
    "claim",
    "plans",
    "namespace",
    "name",
    "uid",
    "pod",
    "device",
    "pool",
    "requests",
    "config",
    "valid",
    "attached",
    "attachment",
    "placement",
    "phase",
    "shareId",
    "preparedAt",
    "podNetns",
    "podIfname",
    "podIfindex",
    "podMac",
    "originals",
    "datapath",
    "attachedAt",
    "dhcp",
    "lease",
    "policy",
    "addresses",
    "routes",
    "mac",
    "perm_mac",
    "ifindex",
    "mtu",
    "kind",
    "interface",
];

/// Claims as a driver stores them: a device in its pod with every host original
/// recorded, a DHCP lease and its data-path policy; a device still at home; a
/// write-ahead record of a hand-over that was cut off. Written in the layout from
/// before `placement` (which every later layout still reads) and parsed through the
/// real types, so the seeds are what the store writes today.
fn checkpoint_seeds() -> Vec<ClaimPlans> {
    let claim = |name: &str, uid: &str| json!({"namespace": "team-a", "name": name, "uid": uid});
    let pod = json!({"namespace": "team-a", "name": "server-0", "uid": "0d5e-pod-a"});
    let originals = json!({
        "name": "eth1", "ifindex": 7, "kind": "veth", "mtu": 1500,
        "mac": [2, 0, 0, 0, 0, 9], "perm_mac": null, "up": true,
        "addresses": ["192.0.2.9/24", "2001:db8::9/64"],
        "routes": [
            {"destination": "198.51.100.0/24", "gateway": "192.0.2.1", "source": null,
             "scope": 0, "table": 254, "priority": 100, "protocol": 4, "kind": 1},
            {"destination": "2001:db8:1::/48", "gateway": null, "source": "2001:db8::9",
             "scope": 253, "table": 100, "priority": null, "protocol": 3, "kind": 1}
        ],
        "gso_max_size": 65536, "gro_max_size": 65536,
        "gso_ipv4_max_size": 65536, "gro_ipv4_max_size": 65536,
        "ethtool_features": {"tx-checksumming": true, "rx-gro": true, "tx-tcp-segmentation": false},
        "ethtool_changeable": ["rx-gro", "tx-checksumming"],
        "private_flags": {"legacy-rx": false},
        "sysctls": {"arpIgnore": 1, "arpAnnounce": 2, "forwardingV4": false, "forwardingV6": null},
        "pod_rules": [{"v6": false, "priority": 100, "source": "192.0.2.0/24",
                       "destination": null, "table": 100}],
        "pod_vrf": null
    });
    let config = json!({
        "interface": {"name": "net1", "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                      "mtu": 9000, "hardwareAddr": "02:00:00:00:00:01"},
        "routes": [{"destination": "198.51.100.0/24", "gateway": "192.0.2.1"},
                   {"destination": "203.0.113.0/24", "scope": 253, "source": "192.0.2.10", "table": 100}],
        "ethtool": {"features": {"tx-checksumming": false}},
        "dataplane": {"allowMulticast": true}
    });
    let in_pod = json!({
        "claim": claim("fast-nic", "6f1c2a9e-0000-4000-8000-00000000000a"),
        "plans": [
            {"claim": claim("fast-nic", "6f1c2a9e-0000-4000-8000-00000000000a"), "pod": pod,
             "device": "eth1", "pool": "node-a", "requests": ["nic"], "config": config,
             "attached": true, "shareId": "share-1", "preparedAt": 1_767_000_000u64,
             "attachment": {
                 "podNetns": "/var/run/netns/cni-5f0c1d2e", "podIfname": "net1",
                 "podIfindex": 3, "podMac": [2, 0, 0, 0, 0, 1],
                 "originals": originals, "datapath": true, "attachedAt": 1_767_000_001u64,
                 "dhcp": {
                     "lease": {"address": "192.0.2.101/24", "server": "192.0.2.1",
                               "routers": ["192.0.2.1"],
                               "classless_routes": [["203.0.113.0/24", "192.0.2.1"]],
                               "lease_secs": 3600,
                               "timing": {"renew": {"secs": 1800, "nanos": 0},
                                          "rebind": {"secs": 3150, "nanos": 0},
                                          "expire": {"secs": 3600, "nanos": 0}},
                               "granted_at": 1_767_000_002u64},
                     "policy": {"addresses": ["2001:db8::10/64"], "routes": ["198.51.100.0/24"],
                                "knobs": {"enforceRoutes": true, "antiSpoofing": true,
                                          "ingressFilter": true, "allowMulticast": false},
                                "mac": [2, 0, 0, 0, 0, 1], "link_local": ["fe80::1"],
                                "dhcp_client": true}
                 }
             }},
            {"claim": claim("fast-nic", "6f1c2a9e-0000-4000-8000-00000000000a"), "pod": pod,
             "device": "eth2", "pool": "node-a", "requests": ["nic", "backup"],
             "config": {"interface": {"dhcp": true}}, "preparedAt": 1_767_000_000u64}
        ]
    });
    let at_home = json!({
        "claim": claim("plain", "6f1c2a9e-0000-4000-8000-00000000000b"),
        "plans": [{"claim": claim("plain", "6f1c2a9e-0000-4000-8000-00000000000b"),
                   "pod": {"namespace": "team-a", "name": "client", "uid": "0d5e-pod-b"},
                   "device": "enp3s0f1", "pool": "node-a", "requests": ["nic"],
                   "config": {"interface": {"addresses": ["198.51.100.7/24"]}}}]
    });
    let write_ahead = json!({
        "claim": claim("cut-off", "6f1c2a9e-0000-4000-8000-00000000000c"),
        "plans": [{"claim": claim("cut-off", "6f1c2a9e-0000-4000-8000-00000000000c"),
                   "pod": {"namespace": "team-a", "name": "server-1", "uid": "0d5e-pod-c"},
                   "device": "eth3", "pool": "node-a", "requests": ["nic"], "config": {},
                   "attachment": {"podNetns": "/var/run/netns/cni-77", "podIfname": "eth3",
                                  "originals": originals}}]
    });
    let seeds: Vec<ClaimPlans> = [in_pod, at_home, write_ahead]
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("a seed the store's types read"))
        .collect();
    // The attachment, the lease and the policy were read, not skipped as unknown.
    let text = serde_json::to_string(&seeds).expect("seeds to JSON");
    for fact in [
        "cni-5f0c1d2e",
        "192.0.2.101/24",
        "fe80::1",
        "legacy-rx",
        "cni-77",
    ] {
        assert!(text.contains(fact), "the seeds lost {fact}: {text}");
    }
    seeds
}

/// The checkpoint value of `plans` with the digest recomputed over `json`.
fn with_digest(json: &[u8]) -> Vec<u8> {
    let mut value = Sha256::digest(json).to_vec();
    value.extend_from_slice(json);
    value
}

/// How the decoder answered one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EntryOutcome {
    Decoded,
    TooShort,
    Checksum,
    BadJson,
    WrongUid,
}

/// What the store does with an entry, and what the driver does with a decoded one
/// (the answer kubelet gets, the config a pod hook validates), then a round trip:
/// whatever decodes encodes again and decodes to as many plans.
fn decode_and_use(uid: &str, value: &[u8]) -> EntryOutcome {
    match decode_entry(uid, value) {
        Ok(plans) => {
            assert_eq!(devices_of(&plans).len(), plans.plans.len());
            for (i, plan) in plans.plans.iter().enumerate() {
                let _ = parse_parameters(&plan.config, &format!("plans[{i}].config"));
            }
            let again = encode_entry(&plans).expect("decoded plans encode again");
            let back = decode_entry(uid, &again).expect("re-encoded plans decode");
            assert_eq!(back.plans.len(), plans.plans.len());
            EntryOutcome::Decoded
        }
        Err(StateError::Entry {
            uid: named,
            message,
        }) => {
            assert_eq!(named, uid, "the error names the entry's claim UID");
            if message.starts_with("checksum mismatch") {
                EntryOutcome::Checksum
            } else if message.starts_with("bad JSON") {
                EntryOutcome::BadJson
            } else if message.starts_with("entry is for claim UID") {
                EntryOutcome::WrongUid
            } else if message.contains("too short") {
                EntryOutcome::TooShort
            } else {
                panic!("checkpoint entry {uid}: unexpected refusal {message:?}")
            }
        }
        Err(other) => panic!("checkpoint entry {uid}: not an entry error: {other}"),
    }
}

/// The checkpoint entry decoder against random bytes, truncated and bit-flipped
/// entries, and entries whose JSON was mutated (structurally: a node replaced by a
/// random value or by a node from elsewhere; and byte by byte) with the digest
/// recomputed, so the JSON parser and the plan types see the garbage, not only the
/// checksum.
#[test]
fn the_checkpoint_entry_decoder_survives_corrupt_entries() {
    let campaign = Campaign::start("checkpoint-entry");
    let n = inputs();
    let mut r = Rng(0x5eed_c4ec_0000_0002);
    let seeds = checkpoint_seeds();
    let seed_json: Vec<Value> = seeds
        .iter()
        .map(|s| serde_json::to_value(s).expect("seed to JSON"))
        .collect();
    let seed_values: Vec<Vec<u8>> = seeds
        .iter()
        .map(|s| encode_entry(s).expect("seed encodes"))
        .collect();
    for (seed, value) in seeds.iter().zip(&seed_values) {
        assert_eq!(
            &decode_entry(&seed.claim.uid, value).expect("seed decodes"),
            seed
        );
    }
    let mut outcomes: BTreeMap<EntryOutcome, u64> = BTreeMap::new();
    for _ in 0..n {
        let k = r.below(seeds.len());
        let mut uid = seeds[k].claim.uid.clone();
        let value = match r.below(10) {
            0 => r.some_bytes(600),
            1 => {
                let mut v = seed_values[k].clone();
                v.truncate(r.below(v.len()));
                v
            }
            2 => {
                let mut v = seed_values[k].clone();
                for _ in 0..1 + r.below(4) {
                    let at = r.below(v.len());
                    v[at] ^= 1 << r.below(8);
                }
                v
            }
            3..=5 => {
                let mut tree = seed_json[k].clone();
                for _ in 0..1 + r.below(3) {
                    mutate(&mut r, &mut tree, PLAN_KEYS);
                }
                with_digest(&serde_json::to_vec(&tree).unwrap_or_default())
            }
            6 | 7 => {
                let mut json = seed_values[k][32..].to_vec();
                mutate_bytes(&mut r, &mut json);
                with_digest(&json)
            }
            8 => {
                // A node from one seed where another node was: right syntax, wrong place.
                let mut tree = seed_json[k].clone();
                let from = r.below(seeds.len());
                let donor = pick_node(&mut r, &seed_json[from]).clone();
                splice(&mut r, &mut tree, donor);
                with_digest(&serde_json::to_vec(&tree).unwrap_or_default())
            }
            _ => {
                // A good entry under another claim's UID, or a UID that is no UID.
                uid = match r.below(3) {
                    0 => seeds[(k + 1) % seeds.len()].claim.uid.clone(),
                    1 => String::new(),
                    _ => LONG.to_string(),
                };
                seed_values[k].clone()
            }
        };
        if let Some(outcome) = guarded(|| decode_and_use(&uid, &value)) {
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    println!("checkpoint entry decoder: {n} inputs, {outcomes:?}");
    campaign.finish(n);
    for kind in [
        EntryOutcome::Decoded,
        EntryOutcome::Checksum,
        EntryOutcome::BadJson,
        EntryOutcome::WrongUid,
        EntryOutcome::TooShort,
    ] {
        assert!(
            outcomes.contains_key(&kind),
            "the generator reaches {kind:?}"
        );
    }
}

/// The checkpoint journal's reader against journals of real records that were cut,
/// bit-flipped, spliced or overwritten with garbage, and against records whose
/// checksum is right but whose body is not (a UID length past the end, a UID that is
/// not UTF-8, a value that does not decode). The reader must return only records that
/// were written (a forged checksum aside), in order, stop at the first bad one, and
/// never allocate what a length field says before it is checked.
#[test]
fn the_checkpoint_journal_reader_survives_damaged_journals() {
    use netclaim::state::store::journal::{encode, read_records, Entry};
    let campaign = Campaign::start("checkpoint-journal");
    let n = inputs();
    let mut r = Rng(0x5eed_c4ec_0000_0004);
    let entries: Vec<Entry> = checkpoint_seeds()
        .iter()
        .enumerate()
        .map(|(i, c)| Entry {
            generation: 100 + i as u64,
            uid: c.claim.uid.clone(),
            value: encode_entry(c).expect("seed encodes"),
        })
        .collect();
    let journal: Vec<u8> = entries.iter().flat_map(encode).collect();
    assert_eq!(read_records(&journal).entries, entries);
    let (mut read_some, mut read_none, mut forged) = (0u64, 0u64, 0u64);
    for _ in 0..n {
        let mut bytes = journal.clone();
        let mut forging = false;
        match r.below(6) {
            0 => bytes.truncate(r.below(bytes.len())),
            1 => {
                for _ in 0..1 + r.below(4) {
                    let at = r.below(bytes.len());
                    bytes[at] ^= 1 << r.below(8);
                }
            }
            2 => {
                let at = r.below(bytes.len());
                let junk = r.some_bytes(300);
                bytes.splice(at..at, junk);
            }
            3 => bytes = r.some_bytes(2000),
            4 => {
                // A record whose checksum is right over a body that is not.
                forging = true;
                let mut body = r.bytes(8);
                let uid = r.some_bytes(40);
                let uid_len = match r.below(3) {
                    0 => u16::MAX,
                    _ => uid.len() as u16,
                };
                body.extend_from_slice(&uid_len.to_le_bytes());
                body.extend_from_slice(&uid);
                body.extend(r.some_bytes(200));
                let mut rec = b"NCJ1".to_vec();
                rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
                rec.extend_from_slice(&Sha256::digest(&body)[..16]);
                rec.extend_from_slice(&body);
                let at = [0, journal.len()][r.below(2)];
                bytes.splice(at..at, rec);
            }
            _ => {
                // A length field that says 4 GiB.
                let at = r.below(bytes.len().saturating_sub(8));
                bytes[at..at + 4].copy_from_slice(b"NCJ1");
                bytes[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
            }
        }
        let Some(read) = guarded(|| read_records(&bytes)) else {
            continue;
        };
        if read.entries.is_empty() {
            read_none += 1;
        } else {
            read_some += 1;
        }
        for e in &read.entries {
            if entries.contains(e) {
                // A written record still decodes as the claim it was.
                let _ = guarded(|| decode_entry(&e.uid, &e.value));
            } else {
                assert!(forging, "a record that was never written read back: {e:?}");
                forged += 1;
                let _ = guarded(|| decode_entry(&e.uid, &e.value));
            }
        }
        assert!(read.end <= bytes.len());
    }
    println!("checkpoint journal reader: {n} inputs, {read_some} with records, {read_none} without, {forged} forged records read");
    campaign.finish(n);
    assert!(
        read_some > 0 && read_none > 0 && forged > 0,
        "the generator reaches every case"
    );
}

/// A copy of `seed` for another claim and pod.
fn variant(seed: &ClaimPlans, k: usize) -> ClaimPlans {
    let mut c = seed.clone();
    c.claim.uid = format!("{}-{k}", seed.claim.uid);
    c.claim.name = format!("{}-{k}", seed.claim.name);
    for plan in &mut c.plans {
        plan.claim = c.claim.clone();
        plan.pod.uid = format!("{}-{k}", plan.pod.uid);
    }
    c
}

/// A real checkpoint: eight claims written, one rewritten, one removed (so the redb
/// file holds freed pages and an older commit too), in `dir` (the redb file and its
/// mirror). Returns every version of a claim that any commit held, and the claims of
/// the last commit.
fn damaged_checkpoint_base(dir: &Path) -> (Vec<ClaimPlans>, Vec<ClaimPlans>) {
    let seeds = checkpoint_seeds();
    let mut known = Vec::new();
    let store = StateStore::open(dir).expect("open a new checkpoint");
    for k in 0..8 {
        let claim = variant(&seeds[k % seeds.len()], k);
        store.put(&claim).expect("put");
        known.push(claim);
    }
    let rewritten = known[2].claim.uid.clone();
    assert!(store
        .update(&rewritten, |c| {
            c.plans[0].prepared_at += 1;
            true
        })
        .expect("update"));
    known.push(
        store
            .get(&rewritten)
            .expect("get")
            .expect("rewritten claim"),
    );
    store.remove(&known[5].claim.uid).expect("remove");
    let last = store.list().expect("list");
    assert_eq!(last.len(), 7);
    (known, last)
}

/// What opening one damaged checkpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FileOutcome {
    /// Opened with every claim of the last commit, the redb file as it was.
    Intact,
    /// Opened with every claim of the last commit after moving the redb file aside
    /// and rebuilding it from the mirror.
    Rebuilt,
    /// Opened with fewer claims: redb fell back to an earlier commit, or both copies
    /// of a claim were damaged (each claim read is still one that was written).
    Fewer,
    /// `open` refused with a typed error.
    Refused,
}

/// Opens the damaged checkpoint in `dir` and uses the store: every claim it returns
/// is one that was written, and a claim put now reads back. Err: a wrong answer.
fn open_damaged(
    dir: &Path,
    known: &[ClaimPlans],
    last: &[ClaimPlans],
) -> Result<FileOutcome, String> {
    let store = match StateStore::open(dir) {
        Ok(store) => store,
        Err(err) => {
            return match err {
                StateError::Database { .. }
                | StateError::MoveAside { .. }
                | StateError::Mirror { .. } => Ok(FileOutcome::Refused),
                other => Err(format!("open refused with an unexpected error: {other}")),
            }
        }
    };
    let listed = store
        .list()
        .map_err(|e| format!("list after a successful open: {e}"))?;
    if let Some(stray) = listed.iter().find(|c| !known.contains(c)) {
        return Err(format!("a claim that was never written: {stray:?}"));
    }
    for claim in &listed {
        for plan in &claim.plans {
            let of_pod = store
                .plans_of_pod(&plan.pod.uid)
                .map_err(|e| format!("plans_of_pod({}): {e}", plan.pod.uid))?;
            if of_pod.is_empty() {
                return Err(format!("pod {} lost its index row", plan.pod.uid));
            }
        }
    }
    let fresh = variant(&known[0], 99);
    store
        .put(&fresh)
        .map_err(|e| format!("put after a successful open: {e}"))?;
    if store.get(&fresh.claim.uid).map_err(|e| e.to_string())? != Some(fresh) {
        return Err("a claim put after open does not read back".into());
    }
    Ok(if listed != last {
        FileOutcome::Fewer
    } else if store.moved_aside().is_some() {
        FileOutcome::Rebuilt
    } else {
        FileOutcome::Intact
    })
}

/// One random kind of damage to a checkpoint file. `used` are the offsets of the
/// file's non-zero 4 KiB pages, where most of the damage goes.
fn damage(r: &mut Rng, file: &mut Vec<u8>, used: &[usize]) {
    const PAGE: usize = 4096;
    let len = file.len().max(1);
    let offset = |r: &mut Rng| -> usize {
        match r.below(8) {
            // The header and the commit slots.
            0 | 1 => r.below(512.min(len)),
            2 => r.below(len),
            _ => used[r.below(used.len())] + r.below(PAGE),
        }
    };
    for _ in 0..1 + r.below(3) {
        if file.is_empty() {
            return;
        }
        match r.below(6) {
            0 | 1 => {
                for _ in 0..1 + r.below(8) {
                    let at = offset(r).min(file.len() - 1);
                    file[at] ^= 1 << r.below(8);
                }
            }
            2 => {
                let at = offset(r).min(file.len());
                file.truncate(at);
            }
            3 => {
                let at = offset(r).min(file.len());
                let end = (at + 1 + r.below(2 * PAGE)).min(file.len());
                file[at..end].fill(0);
            }
            4 => {
                let at = offset(r).min(file.len());
                let end = (at + 1 + r.below(256)).min(file.len());
                for b in &mut file[at..end] {
                    *b = r.next() as u8;
                }
            }
            _ => {
                // One used page copied over another: valid-looking, wrong place.
                let from = used[r.below(used.len())];
                let to = used[r.below(used.len())];
                if from + PAGE <= file.len() && to + PAGE <= file.len() {
                    let page = file[from..from + PAGE].to_vec();
                    file[to..to + PAGE].copy_from_slice(&page);
                }
            }
        }
    }
}

/// What the damaged checkpoint's mirror looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MirrorCase {
    /// As written: whatever happened to the redb file, every claim must come back.
    Intact,
    /// Gone (a checkpoint from before the mirror, or a lost directory).
    Absent,
    /// One record or the generation file damaged as well.
    Damaged,
    /// The redb file untouched, one mirror file damaged: every claim must come back.
    OnlyMirrorDamaged,
}

/// Whole checkpoints damaged on disk: the redb file's bits flipped, cut short, zeroed,
/// garbled, pages swapped, at random offsets (mostly the header and the used pages),
/// next to an intact, absent or damaged mirror. `StateStore::open` either opens or
/// refuses with a typed error, within 30 s; what it then lists is only what was
/// written (and everything, while the mirror is intact), and the store takes a new
/// claim. One checkpoint per 100 inputs; each is written to a tmpfs where there is one
/// (`/dev/shm`), so the count is bounded by redb, not by the disk.
#[test]
fn the_checkpoint_survives_damaged_files() {
    let campaign = Campaign::start("checkpoint-file");
    let files = inputs().div_ceil(100).max(50);
    let work = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().expect("tempdir"),
    };
    let base_dir = work.path().join("base");
    let (known, last) = damaged_checkpoint_base(&base_dir);
    let base = std::fs::read(base_dir.join(netclaim::state::CHECKPOINT_FILE)).expect("read");
    let mirror_dir = base_dir.join(netclaim::state::store::MIRROR_DIR);
    let mirror: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&mirror_dir)
        .expect("the mirror directory")
        .map(|e| {
            let e = e.expect("mirror entry");
            (e.file_name(), std::fs::read(e.path()).expect("mirror file"))
        })
        .collect();
    assert!(
        mirror.len() > last.len(),
        "a record per claim and the generation"
    );
    let used: Vec<usize> = (0..base.len())
        .step_by(4096)
        .filter(|&at| {
            base[at..(at + 4096).min(base.len())]
                .iter()
                .any(|&b| b != 0)
        })
        .collect();
    let (known, last) = (Arc::new(known), Arc::new(last));
    let mut r = Rng(0xf11e_c4ec_0000_0001);
    let mut outcomes: BTreeMap<(FileOutcome, &str), u64> = BTreeMap::new();
    let mut escaped = 0u64;
    for i in 0..files {
        let dir = work.path().join("damaged");
        let _ = std::fs::remove_dir_all(&dir);
        let case = match r.below(8) {
            0..=3 => MirrorCase::Intact,
            4 | 5 => MirrorCase::Absent,
            6 => MirrorCase::Damaged,
            _ => MirrorCase::OnlyMirrorDamaged,
        };
        let mut file = base.clone();
        if case != MirrorCase::OnlyMirrorDamaged {
            damage(&mut r, &mut file, &used);
        }
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(netclaim::state::CHECKPOINT_FILE), &file).expect("write");
        if case != MirrorCase::Absent {
            let damaged = r.below(mirror.len());
            let copy = dir.join(netclaim::state::store::MIRROR_DIR);
            std::fs::create_dir_all(&copy).expect("mkdir mirror");
            for (k, (name, bytes)) in mirror.iter().enumerate() {
                let mut bytes = bytes.clone();
                if k == damaged
                    && matches!(case, MirrorCase::Damaged | MirrorCase::OnlyMirrorDamaged)
                {
                    mutate_bytes(&mut r, &mut bytes);
                }
                std::fs::write(copy.join(name), &bytes).expect("write mirror");
            }
        }
        // The mirror as given, for the evidence (the store rewrites it).
        let given = work.path().join("given-mirror");
        let _ = std::fs::remove_dir_all(&given);
        if case != MirrorCase::Absent {
            let _ = std::fs::rename(dir.join(netclaim::state::store::MIRROR_DIR), &given);
            copy_dir(&given, &dir.join(netclaim::state::store::MIRROR_DIR));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (known_, last_, opened) = (known.clone(), last.clone(), dir.clone());
        std::thread::spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| {
                open_damaged(&opened, &known_, &last_)
            })));
        });
        let result = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                escaped += 1;
                Err("panicked".to_string())
            }
            Err(_) => Err("open did not return in 30 s".to_string()),
        };
        let result = result.and_then(|outcome| match (case, outcome) {
            (
                MirrorCase::Intact | MirrorCase::OnlyMirrorDamaged,
                FileOutcome::Fewer | FileOutcome::Refused,
            ) => Err(format!("{outcome:?} although the mirror was intact")),
            _ => Ok(outcome),
        });
        match result {
            Ok(outcome) => {
                let case = match case {
                    MirrorCase::Intact => "mirror intact",
                    MirrorCase::Absent => "no mirror",
                    MirrorCase::Damaged => "mirror damaged too",
                    MirrorCase::OnlyMirrorDamaged => "only the mirror damaged",
                };
                *outcomes.entry((outcome, case)).or_default() += 1;
            }
            Err(wrong) => {
                let mirror = (case != MirrorCase::Absent).then_some(given.as_path());
                let kept = keep_evidence(&file, mirror, i);
                let failure = format!(
                    "damaged checkpoint {i} ({case:?} mirror; kept in {}): {wrong}",
                    kept.display()
                );
                if wrong == "panicked" {
                    eprintln!("{failure}");
                } else {
                    panic!("{failure}");
                }
            }
        }
    }
    let caught = campaign.panics() - escaped;
    println!(
        "checkpoint files: {files} damaged checkpoints (redb file of {} bytes, mirror of {} files), {outcomes:?}, {escaped} panics escaped, {caught} caught inside the store",
        base.len(),
        mirror.len()
    );
    // Panics the store caught itself (redb panicking on a damaged file, turned into
    // "moved aside") are part of its contract; only what escaped fails the target.
    campaign.finish_catching(files, Some(caught));
    assert!(outcomes.keys().any(|(o, _)| *o == FileOutcome::Rebuilt));
}

/// Copies a damaged checkpoint (the redb file as damaged, the mirror as given to the
/// store) somewhere it outlives the test.
fn keep_evidence(file: &[u8], mirror: Option<&Path>, i: u64) -> PathBuf {
    let kept = std::env::temp_dir().join(format!("netclaim-fuzz-checkpoint-{i}"));
    let _ = std::fs::remove_dir_all(&kept);
    let _ = std::fs::create_dir_all(&kept);
    let _ = std::fs::write(kept.join(netclaim::state::CHECKPOINT_FILE), file);
    if let Some(mirror) = mirror {
        let to = kept.join(netclaim::state::store::MIRROR_DIR);
        let _ = std::fs::create_dir_all(&to);
        for entry in std::fs::read_dir(mirror).into_iter().flatten().flatten() {
            let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
        }
    }
    kept
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
