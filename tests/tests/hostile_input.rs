//! Hostile input never crashes the daemon: the claim config parser and validator, the
//! NRI mux and the ttrpc reader and server, fed generated and mutated input.
//!
//! Each target is driven by a seeded xorshift generator. `NETCLAIM_FUZZ_INPUTS` sets
//! the inputs per target (default 100,000 in the suite; the closing figures were run
//! with 1,000,000). Success means: no panic, every call returns, memory stays bounded
//! (no allocation follows a length an attacker wrote), and a server keeps answering.

use std::sync::Arc;
use std::time::Duration;

use netclaim::config::parse_parameters;
use netclaim::nri::mux::{frame_header, Mux};
use netclaim::nri::ttrpc::{self, read_message, Service, Status};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn inputs() -> u64 {
    std::env::var("NETCLAIM_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
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

const LONG: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// A random JSON value: deep, wide, huge numbers, odd strings.
fn random_value(r: &mut Rng, depth: usize) -> Value {
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
                .map(|_| random_value(r, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
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
            Value::Object(
                (0..r.below(6))
                    .map(|_| {
                        (
                            keys[r.below(keys.len())].to_string(),
                            random_value(r, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Replaces one random node of `v` with a random value.
fn mutate(r: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() && r.below(3) > 0 => {
            let k = m.keys().nth(r.below(m.len())).cloned().unwrap_or_default();
            if let Some(child) = m.get_mut(&k) {
                mutate(r, child);
            }
        }
        Value::Array(a) if !a.is_empty() && r.below(3) > 0 => {
            let i = r.below(a.len());
            mutate(r, &mut a[i]);
        }
        _ => *v = random_value(r, 0),
    }
}

#[test]
fn the_config_parser_survives_generated_and_mutated_configs() {
    let n = inputs();
    let mut r = Rng(0xc0f1_6000_0000_0001);
    let seeds = seeds();
    let (mut ok, mut refused) = (0u64, 0u64);
    for i in 0..n {
        let mut v = seeds[(i % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + r.below(4) {
            mutate(&mut r, &mut v);
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
        match parse_parameters(&v, "spec.devices.config[0].opaque.parameters") {
            Ok(_) => ok += 1,
            Err(e) => {
                // Every refusal names a field and says why.
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    println!("config parser: {n} inputs, {ok} accepted, {refused} refused, 0 panics");
    assert!(ok > 0 && refused > 0, "the generator reaches both outcomes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttrpc_reader_survives_garbage_and_lying_lengths() {
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
    }
    println!("ttrpc reader: {n} inputs, {messages} messages read, {errors} refused, 0 panics");
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mux_and_a_ttrpc_server_survive_a_hostile_peer() {
    let streams = (inputs() / 500).max(20);
    let mut r = Rng(0x6d75_7800_0000_0001);
    let mut frames_sent = 0u64;
    for s in 0..streams {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (mux, mut conns) = Mux::start(ours, &[1, 2]).expect("mux");
        let server_conn = conns.remove(0);
        let server = tokio::spawn(ttrpc::serve(server_conn, Arc::new(Echo)));
        let mut out = Vec::new();
        for _ in 0..500 {
            let conn = [0u32, 1, 2, 3, 0xffff_ffff][r.below(5)];
            let payload = if conn == 1 && r.below(2) == 0 {
                // Garbage inside a well-formed ttrpc message.
                ttrpc::encode_message(r.next() as u32 | 1, 1, 0, &r.some_bytes(64))
                    .unwrap_or_default()
            } else if conn == 1 {
                // Stray bytes on the server's conn would desynchronise it for good:
                // keep those to the other conns.
                continue;
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
        if s % 2 == 0 {
            // And a frame whose length lies about a 4 GiB payload, then the peer goes.
            out.extend(frame_header(2, u32::MAX));
            out.extend(r.bytes(100));
        }
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
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    println!("mux + ttrpc server: {streams} hostile streams, {frames_sent} frames, 0 panics");
}
