//! A hostile gRPC client on the DRA socket gets a gRPC error status, not a dropped
//! server, and a well-behaved client is answered after it and while it holds streams
//! open: a message length prefix declaring 4 GiB, a message over the 4 MiB limit,
//! garbage protobuf, a compressed flag with no encoding, messages cut short, a claim
//! list of 100,000 entries, a 3 MiB claim name, an unknown method, and a hundred
//! streams that declare 4 MiB each and never send it.
//!
//! The hostile client is a bare HTTP/2 client (h2), so it can send what no gRPC
//! library would; the well-behaved one is the generated tonic client, as the fake
//! kubelet uses. (tests/tests/kubelet.rs breaks the HTTP/2 framing itself.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netclaim::kubelet::proto::{dra_v1, dra_v1beta1};
use netclaim::kubelet::{
    self, ClaimPreparer, ClaimRef, KubeletPluginConfig, PrepareResults, PreparedDevice,
    UnprepareResults,
};
use netclaim_tests::kubelet::unix_channel;
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::watch;

const V1_PREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources";
const V1_UNPREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources";
const V1BETA1_PREPARE: &str = "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources";
const WAIT: Duration = Duration::from_secs(20);

/// gRPC status codes the cases expect.
const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const OUT_OF_RANGE: u32 = 11;
const UNIMPLEMENTED: u32 = 12;
const INTERNAL: u32 = 13;

/// Answers every claim with one device and counts the claims it was given.
#[derive(Default)]
struct CountingPreparer {
    claims: AtomicUsize,
}

#[async_trait::async_trait]
impl ClaimPreparer for CountingPreparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        self.claims.fetch_add(claims.len(), Ordering::SeqCst);
        claims
            .into_iter()
            .map(|c| {
                let device = PreparedDevice {
                    request_names: vec!["nic".into()],
                    pool: "node-a".into(),
                    device: "eth1".into(),
                    cdi_device_ids: vec![],
                    share_id: None,
                };
                (c.uid, Ok(vec![device]))
            })
            .collect()
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        self.claims.fetch_add(claims.len(), Ordering::SeqCst);
        claims.into_iter().map(|c| (c.uid, Ok(()))).collect()
    }
}

/// What the server answered one raw call with.
#[derive(Debug)]
struct Answer {
    http: u16,
    /// `grpc-status` from the headers (trailers-only answer) or the trailers.
    code: Option<u32>,
    message: String,
}

/// An HTTP/2 connection to the DRA socket that sends whatever bytes it is given.
struct RawClient {
    send: h2::client::SendRequest<Bytes>,
}

impl RawClient {
    async fn connect(socket: &std::path::Path) -> Self {
        let io = UnixStream::connect(socket).await.expect("connect");
        let (send, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { send }
    }

    /// Opens a gRPC call to `path` and sends `body` (ending the stream when `end`).
    async fn start(
        &mut self,
        path: &str,
        body: Bytes,
        end: bool,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let mut ready = self.send.clone().ready().await.expect("connection ready");
        let (response, mut stream) = ready.send_request(request, false).expect("send request");
        stream.send_data(body, end).expect("send body");
        (response, stream)
    }

    /// One call: sends `body`, ends the stream, reads the answer to its trailers.
    async fn call(&mut self, path: &str, body: Bytes) -> Answer {
        let (response, _stream) = self.start(path, body, true).await;
        tokio::time::timeout(WAIT, answer(response))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer in {WAIT:?}"))
    }
}

async fn answer(response: h2::client::ResponseFuture) -> Answer {
    let response = response.await.expect("a response, not a reset stream");
    let http = response.status().as_u16();
    let status = |headers: &http::HeaderMap| {
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let message = headers
            .get("grpc-message")
            .map(|v| percent_decoded(v.as_bytes()))
            .unwrap_or_default();
        (code, message)
    };
    let (code, message) = status(response.headers());
    if code.is_some() {
        return Answer {
            http,
            code,
            message,
        };
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    let (code, message) = status(&trailers);
    Answer {
        http,
        code,
        message,
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_decoded(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC message: flag, big-endian length, body.
fn framed(flag: u8, declared: u32, body: &[u8]) -> Bytes {
    let mut out = vec![flag];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(body);
    out.into()
}

fn message(body: &[u8]) -> Bytes {
    framed(0, body.len() as u32, body)
}

fn v1_claim(i: usize) -> dra_v1::Claim {
    dra_v1::Claim {
        namespace: "default".into(),
        name: format!("claim-{i}"),
        uid: format!("0d5e-{i}"),
    }
}

/// The well-behaved client: prepares one claim over v1 and expects its device.
async fn well_behaved(socket: &std::path::Path, i: usize) {
    let channel = unix_channel(socket).await.expect("connect");
    let mut client = dra_v1::dra_plugin_client::DraPluginClient::new(channel);
    let answer = tokio::time::timeout(
        WAIT,
        client.node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: vec![v1_claim(i)],
        }),
    )
    .await
    .expect("answered in time")
    .expect("prepared")
    .into_inner();
    let claim = &answer.claims[&format!("0d5e-{i}")];
    assert_eq!(claim.error, "");
    assert_eq!(claim.devices[0].device_name, "eth1");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_grpc_client_gets_errors_and_others_are_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_health_tx, health_rx) = watch::channel(Vec::new());
    let preparer = Arc::new(CountingPreparer::default());
    let plugin = kubelet::serve(
        KubeletPluginConfig::new(dir.path(), "netclaim.dev"),
        preparer.clone(),
        health_rx,
    )
    .await
    .expect("serve");
    let socket = plugin.dra_socket().to_path_buf();
    well_behaved(&socket, 0).await;

    let many = dra_v1::NodePrepareResourcesRequest {
        claims: (0..100_000).map(v1_claim).collect(),
    }
    .encode_to_vec();
    assert!(
        many.len() < 4 << 20,
        "under the message limit: reaches the service"
    );
    let huge_name = dra_v1beta1::NodePrepareResourcesRequest {
        claims: vec![dra_v1beta1::Claim {
            namespace: "default".into(),
            name: "x".repeat(3 << 20),
            uid: "0d5e-huge".into(),
        }],
    }
    .encode_to_vec();
    let bad_namespace = dra_v1::NodeUnprepareResourcesRequest {
        claims: vec![
            v1_claim(1),
            dra_v1::Claim {
                namespace: "Not A Namespace".into(),
                ..v1_claim(2)
            },
        ],
    }
    .encode_to_vec();
    let over_limit = vec![0u8; 5 << 20];
    // (name, path, body, expected code, words the message must contain)
    let cases: Vec<(&str, &str, Bytes, u32, &str)> = vec![
        (
            "a length prefix declaring 4 GiB",
            V1_PREPARE,
            framed(0, u32::MAX, b"\x0a\x03abc"),
            OUT_OF_RANGE,
            "too large",
        ),
        (
            "a 5 MiB message",
            V1_PREPARE,
            message(&over_limit),
            OUT_OF_RANGE,
            "too large",
        ),
        (
            "a field length past the end",
            V1_PREPARE,
            message(b"\x0a\xff\xff\xff\xff\x0f"),
            INTERNAL,
            "decode",
        ),
        (
            "wire type 7",
            V1BETA1_PREPARE,
            message(b"\x0f\x01\x02"),
            INTERNAL,
            "decode",
        ),
        (
            "a varint cut short",
            V1_UNPREPARE,
            message(b"\x0a\x05\x0a\x03ab"),
            INTERNAL,
            "decode",
        ),
        (
            "the compressed flag without grpc-encoding",
            V1_PREPARE,
            framed(1, 3, b"\x0a\x01\x00"),
            INTERNAL,
            "compress",
        ),
        (
            "an unknown compression flag",
            V1_PREPARE,
            framed(7, 0, b""),
            INTERNAL,
            "compression flag",
        ),
        (
            "a message shorter than its prefix",
            V1_PREPARE,
            framed(0, 1000, b"\x0a\x00"),
            INTERNAL,
            "",
        ),
        (
            "a prefix cut short",
            V1_PREPARE,
            Bytes::from_static(b"\x00\x00\x01"),
            INTERNAL,
            "",
        ),
        (
            "100,000 claims",
            V1_PREPARE,
            message(&many),
            INVALID_ARGUMENT,
            "claims: 100000",
        ),
        (
            "100,000 claims to unprepare",
            V1_UNPREPARE,
            message(&many),
            INVALID_ARGUMENT,
            "claims: 100000",
        ),
        (
            "a 3 MiB claim name",
            V1BETA1_PREPARE,
            message(&huge_name),
            INVALID_ARGUMENT,
            "claims[0].name",
        ),
        (
            "a namespace that is no DNS label",
            V1_UNPREPARE,
            message(&bad_namespace),
            INVALID_ARGUMENT,
            "claims[1].namespace",
        ),
        (
            "an unknown method",
            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/Explode",
            message(b""),
            UNIMPLEMENTED,
            "",
        ),
    ];
    let mut raw = RawClient::connect(&socket).await;
    for (i, (name, path, body, code, words)) in cases.into_iter().enumerate() {
        let got = raw.call(path, body).await;
        println!("{name}: {got:?}");
        assert_eq!(got.http, 200, "{name}: {got:?}");
        assert_eq!(got.code, Some(code), "{name}: {got:?}");
        assert!(got.message.contains(words), "{name}: {got:?}");
        well_behaved(&socket, 10 + i).await;
    }
    // What was refused never reached the preparer: only the well-behaved calls did.
    assert_eq!(preparer.claims.load(Ordering::SeqCst), 15);

    // Random bodies behind well-formed prefixes: every one answered with a status.
    let mut x: u64 = 0x6772_7063_0000_0001;
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let len = (x % 200) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_f491_4f6c_dd1d) as u8
            })
            .collect();
        let got = raw.call(V1_PREPARE, message(&body)).await;
        *codes.entry(got.code).or_insert(0) += 1;
    }
    println!("random bodies: {codes:?}");
    assert!(
        !codes.contains_key(&None),
        "every call ends with a grpc-status"
    );
    assert!(codes.contains_key(&Some(INTERNAL)) && codes.contains_key(&Some(OK)));

    // A hundred streams that each declare 4 MiB and send 10 bytes, held open: a
    // well-behaved client is answered meanwhile and memory does not follow the
    // declared lengths.
    let before = rss_kib();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(
            raw.start(V1_PREPARE, framed(0, 4 << 20, &[0; 5]), false)
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    well_behaved(&socket, 100).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    println!("100 held streams declaring 4 MiB each: RSS grew by {grown_mib} MiB");
    assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
    drop(held);
    drop(raw);
    well_behaved(&socket, 101).await;
    plugin.shutdown().await;
}
