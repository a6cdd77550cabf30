//! bench-control-plane: the driver's API-facing costs, against the in-process fake API
//! server (so the numbers are the driver's, not a real apiserver's).
//!
//! * `publish_1000_ms`: 1000 veth devices (500 pairs, made with one `ip -batch`) in a
//!   fresh test namespace; from starting the `InventoryWatcher` + `Publisher` until all
//!   their ResourceSlices (8 × ≤ 128 devices, one generation) are stored.
//!   `republish_1000_ms`: one more veth pair added, until both ends are published.
//! * `rss_1000_mib`: the process's VmRSS at that size (it includes the fake API server
//!   and its store) and `rss_1000_delta_mib`, the growth since just before starting
//!   inventory + publisher.
//! * `prepare_1_p50_ms` / `prepare_1_p99_ms`: `NodePrepareResources` (DRA v1, fake
//!   kubelet over the real socket) with one fresh claim per call, through the real
//!   `Preparer` (claim read from the API, config validated, plan checkpointed);
//!   `prepare_32_p50_ms` / `prepare_32_p99_ms`: 32 fresh claims per call.
//!
//! RSS depends on glibc's per-thread malloc arenas (run to run ±10 MiB here);
//! `MALLOC_ARENA_MAX` from the environment is recorded in the JSON.
//!
//! Prints a table and writes the JSON to `--out <path>` (default
//! `bench/results/control-plane.json`). The namespace, the kubelet and state
//! directories are removed by guards, also on failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netclaim::inventory::{InventoryOptions, InventoryWatcher};
use netclaim::kubelet::{self, prepare, ClaimRef, KubeletPluginConfig};
use netclaim::publisher::Publisher;
use netclaim::state::StateStore;
use netclaim_tests::apiserver::FakeApiServer;
use netclaim_tests::kubelet::{DraClient, DraVersion, FakeKubelet, Verdict};
use netclaim_tests::netenv::{unique, TestNetns};
use serde_json::{json, Value};
use tokio::sync::watch;

const DRIVER: &str = "netclaim.dev";
const NODE: &str = "bench-node";
const PAIRS: usize = 500;
const WAIT: Duration = Duration::from_secs(60);

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("netclaim-bench-{}", unique(tag)));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// VmRSS of this process in MiB.
fn rss_mib() -> Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted durations, in ms.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    ms(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `ip -n <ns> -batch -` with `lines` on stdin.
fn ip_batch(ns: &TestNetns, lines: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ip -batch")?;
    child
        .stdin
        .take()
        .context("ip -batch stdin")?
        .write_all(lines.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Devices of node `NODE` in the fake server's slices, and the slices' generations.
fn stored(api: &FakeApiServer) -> (usize, usize, Vec<i64>) {
    let slices: Vec<Value> = api
        .list("ResourceSlice")
        .into_iter()
        .filter(|s| s["spec"]["nodeName"] == NODE)
        .collect();
    let devices = slices
        .iter()
        .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
        .sum();
    let gens = slices
        .iter()
        .filter_map(|s| s["spec"]["pool"]["generation"].as_i64())
        .collect();
    (slices.len(), devices, gens)
}

async fn wait_devices(api: &FakeApiServer, want: usize, since: Instant) -> Result<(usize, u64)> {
    loop {
        let (slices, devices, gens) = stored(api);
        let one_gen = gens.windows(2).all(|w| w[0] == w[1]);
        if devices == want && one_gen {
            let g = gens.first().copied().unwrap_or_default();
            return Ok((slices, u64::try_from(g).unwrap_or_default()));
        }
        if since.elapsed() > WAIT {
            bail!("{devices} of {want} devices published after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct PublishNumbers {
    publish_ms: f64,
    republish_ms: f64,
    slices: usize,
    rss_before: f64,
    /// After the inventory's first scan, before the publisher started.
    rss_inventory: f64,
    rss_after: f64,
}

async fn bench_publish(api: &FakeApiServer) -> Result<PublishNumbers> {
    api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))?;
    let ns = TestNetns::new("bcp")?;
    let mut lines = String::new();
    for i in 0..PAIRS {
        lines.push_str(&format!("link add b{i}a type veth peer name b{i}b\n"));
    }
    let t = Instant::now();
    ip_batch(&ns, &lines)?;
    println!(
        "created {} veth devices in {:.0} ms",
        2 * PAIRS,
        ms(t.elapsed())
    );
    let client = api.client().await?;

    let rss_before = rss_mib()?;
    let started = Instant::now();
    let netns = Arc::new(ns.open());
    let watcher = tokio::task::spawn_blocking(move || {
        InventoryWatcher::start(netns, InventoryOptions::default())
    })
    .await??;
    let rss_inventory = rss_mib()?;
    let publisher = Publisher::start(client, DRIVER.into(), NODE.into(), watcher.subscribe());
    let (slices, generation) = wait_devices(api, 2 * PAIRS, started).await?;
    let publish = started.elapsed();
    let mut published = publisher.published();
    tokio::time::timeout(WAIT, published.wait_for(|g| *g == Some(generation)))
        .await
        .context("publisher never reported the generation")??;
    let rss_after = rss_mib()?;

    let t = Instant::now();
    ip_batch(&ns, "link add bxa type veth peer name bxb\n")?;
    wait_devices(api, 2 * PAIRS + 2, t).await?;
    let republish = t.elapsed();

    drop(publisher);
    drop(watcher);
    drop(ns);
    Ok(PublishNumbers {
        publish_ms: ms(publish),
        republish_ms: ms(republish),
        slices,
        rss_before,
        rss_inventory,
        rss_after,
    })
}

/// A claim as the scheduler leaves it, allocated one device of this node's pool.
fn allocated_claim(name: &str, uid: &str) -> Value {
    let parameters =
        json!({"interface": {"name": "net1", "addresses": ["192.0.2.10/24"], "mtu": 9000}});
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"devices": {
            "requests": [{"name": "nic", "exactly": {"deviceClassName": "netclaim"}}],
            "config": [{"requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters.clone()}}]
        }},
        "status": {
            "allocation": {"devices": {
                "results": [{"request": "nic", "driver": DRIVER, "pool": NODE, "device": format!("dev-{name}")}],
                "config": [
                    {"source": "FromClass", "opaque": {"driver": DRIVER, "parameters": {"interface": {"mtu": 1500}}}},
                    {"source": "FromClaim", "requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters}}
                ]
            }},
            "reservedFor": [{"resource": "pods", "name": format!("pod-{name}"), "uid": format!("pod-{uid}")}]
        }
    })
}

/// `count` fresh claims stored in the fake server.
fn claims(api: &FakeApiServer, prefix: &str, count: usize) -> Result<Vec<ClaimRef>> {
    (0..count)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let uid = format!("uid-{name}");
            api.put(allocated_claim(&name, &uid))?;
            Ok(ClaimRef {
                namespace: "default".into(),
                name,
                uid,
            })
        })
        .collect()
}

/// Times one prepare call per batch; every claim must succeed.
async fn time_calls(dra: &DraClient, batches: &[Vec<ClaimRef>]) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(batches.len());
    for batch in batches {
        let t = Instant::now();
        let answers = dra.prepare(batch).await?;
        times.push(t.elapsed());
        for c in batch {
            match answers.get(&c.uid) {
                Some(a) if a.error.is_empty() && a.devices.len() == 1 => {}
                Some(a) => bail!("claim {c}: {:?}", a),
                None => bail!("claim {c}: no answer"),
            }
        }
    }
    times.sort();
    Ok(times)
}

struct PrepareNumbers {
    p1: Vec<Duration>,
    p32: Vec<Duration>,
}

async fn bench_prepare(
    api: &FakeApiServer,
    calls_1: usize,
    calls_32: usize,
) -> Result<PrepareNumbers> {
    let kubelet_dir = TempDir::new("kubelet")?;
    let state_dir = TempDir::new("state")?;
    let store = Arc::new(StateStore::open(&state_dir.0)?);
    let preparer = prepare::Preparer::new(
        api.client().await?,
        DRIVER,
        store,
        prepare::network_config_parser(),
    );
    let (_health_tx, health_rx) = watch::channel(Vec::new());
    let mut config = KubeletPluginConfig::new(&kubelet_dir.0, DRIVER);
    config.registration_backoff = Duration::from_millis(100);
    let plugin = kubelet::serve(config, Arc::new(preparer), health_rx).await?;
    let registered = FakeKubelet::new(&kubelet_dir.0)
        .wait_and_register(DRIVER, Verdict::Accept, WAIT)
        .await?;
    let mut state = plugin.registration();
    tokio::time::timeout(WAIT, state.wait_for(|s| s.is_registered()))
        .await
        .context("plugin never registered")??;
    let dra = registered.dra(DraVersion::V1).await?;

    let warm: Vec<Vec<ClaimRef>> = claims(api, "warm", 10)?
        .into_iter()
        .map(|c| vec![c])
        .collect();
    time_calls(&dra, &warm).await?;
    let single: Vec<Vec<ClaimRef>> = claims(api, "one", calls_1)?
        .into_iter()
        .map(|c| vec![c])
        .collect();
    let p1 = time_calls(&dra, &single).await?;
    let batched: Vec<Vec<ClaimRef>> = claims(api, "many", calls_32 * 32)?
        .chunks(32)
        .map(<[ClaimRef]>::to_vec)
        .collect();
    let p32 = time_calls(&dra, &batched).await?;
    plugin.shutdown().await;
    Ok(PrepareNumbers { p1, p32 })
}

fn parse_args() -> Result<(PathBuf, usize, usize)> {
    let mut out = PathBuf::from("bench/results/control-plane.json");
    let (mut calls_1, mut calls_32) = (200usize, 30usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--out" => out = PathBuf::from(value("--out")?),
            "--calls-1" => calls_1 = value("--calls-1")?.parse().context("--calls-1")?,
            "--calls-32" => calls_32 = value("--calls-32")?.parse().context("--calls-32")?,
            other => bail!(
                "unknown argument {other} (usage: bench-control-plane [--out PATH] [--calls-1 N] [--calls-32 N])"
            ),
        }
    }
    Ok((out, calls_1.max(1), calls_32.max(1)))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let (out, calls_1, calls_32) = parse_args()?;
    let api = FakeApiServer::start().await?;

    let publish = bench_publish(&api).await?;
    let prep = bench_prepare(&api, calls_1, calls_32).await?;

    let rss_delta = publish.rss_after - publish.rss_before;
    let rows: BTreeMap<&str, f64> = BTreeMap::from([
        ("publish_1000_ms", publish.publish_ms),
        ("republish_1000_ms", publish.republish_ms),
        ("rss_1000_mib", publish.rss_after),
        ("rss_1000_delta_mib", rss_delta),
        ("rss_before_mib", publish.rss_before),
        (
            "rss_inventory_delta_mib",
            publish.rss_inventory - publish.rss_before,
        ),
        ("prepare_1_p50_ms", percentile(&prep.p1, 0.50)),
        ("prepare_1_p99_ms", percentile(&prep.p1, 0.99)),
        ("prepare_32_p50_ms", percentile(&prep.p32, 0.50)),
        ("prepare_32_p99_ms", percentile(&prep.p32, 0.99)),
    ]);
    println!("{:<22} {:>10}   target", "metric", "value");
    for (k, v) in &rows {
        let target = match *k {
            "publish_1000_ms" => "<= 2000",
            "rss_1000_mib" => "<= 64",
            _ => "",
        };
        println!("{k:<22} {v:>10.2}   {target}");
    }
    println!("{:<22} {:>10}", "slices_1000", publish.slices);
    println!("{:<22} {:>10}", "prepare_1_calls", prep.p1.len());
    println!("{:<22} {:>10}", "prepare_32_calls", prep.p32.len());

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut result = json!({
        "benchmark": "control-plane",
        "kernel": kernel,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "devices": 2 * PAIRS,
        "slices_1000": publish.slices,
        "prepare_1_calls": prep.p1.len(),
        "prepare_32_calls": prep.p32.len(),
        "targets": {"publish_1000_ms": 2000, "rss_1000_mib": 64},
        "malloc_arena_max": std::env::var("MALLOC_ARENA_MAX").ok(),
        "note": "RSS includes the in-process fake API server; rss_1000_delta_mib is the growth from just before inventory + publisher started",
    });
    for (k, v) in rows {
        result[k] = json!((v * 100.0).round() / 100.0);
    }
    write_json(&out, &result)?;
    println!("wrote {}", out.display());
    Ok(())
}
