//! `crictl runp` against the real containerd, with and without netclaim, and 32 pods
//! started at once: the real-runtime half of `cargo xtask bench pod-start`.
//!
//! Without netclaim means containerd with no NRI plugin connected (the driver is
//! stopped) and netclaim's CNI plugin out of the pods' network; with netclaim means
//! the driver running, `netclaim-cni` chained last, and the pod holding one claimed
//! device, so the difference is everything netclaim adds to a pod start. Two more
//! series split it: pods with the driver connected but no claim (what being an NRI
//! plugin at all costs a pod start), and pods with a claim started
//! [`PREPARE_SETTLED`] after prepare (what is left once prepare's background work is
//! over). The driver's state directory is a tmpfs, as the DaemonSet's
//! `/var/run/netclaim` on a node. The series run interleaved, in rounds. Each series is also timed by
//! containerd itself ([`containerd_runp_times`]: its log's `RunPodSandbox for …` to
//! `… returns sandbox id`), which leaves out `crictl`'s process start-up and the
//! CRI round trip, most of the `crictl` series' spread. The hook
//! times of the concurrent run are the driver's own (`NRI hook finished` in its log,
//! measured around the whole hook), compared with containerd's request budget.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    containerd::{self, Peers, RealCluster},
    scenario::{self, claim, good_parameters, prepare_with, unprepare_with, Topology},
};

/// How long the `with_prepare_settled` series waits between prepare and `crictl runp`.
pub const PREPARE_SETTLED: Duration = Duration::from_millis(500);

/// Pods per series in one round of [`measure`].
const RUNS_PER_ROUND: usize = 5;

/// What the real-runtime run measured (milliseconds).
#[derive(Debug, Default)]
pub struct RunpMeasured {
    /// Each pod's `crictl runp` time.
    pub crictl: Series<f64>,
    /// The same pods as containerd timed them in its log.
    pub containerd: Series<f64>,
    /// The driver's own RunPodSandbox hook times during the runs with a claim.
    pub with_hooks: Vec<f64>,
    /// The hand-overs netclaim-cni started at the CNI ADD during those runs, as the
    /// driver timed them (off the runtime's path: the pause container starts meanwhile).
    pub with_ahead: Vec<f64>,
    /// How many pods of those runs had a claim.
    pub claimed_pods: usize,
    /// What the driver logged for ADDs that did not start a hand-over ahead.
    pub ahead_not_started: Vec<String>,
    pub concurrent_hooks: Vec<f64>,
    pub concurrent_ahead: Vec<f64>,
    pub concurrent_wall_ms: f64,
    pub budget_ms: f64,
}

/// One value per pod for each series, in the order the pods ran.
#[derive(Debug)]
pub struct Series<T> {
    /// No NRI plugin connected.
    pub without: Vec<T>,
    /// The driver connected, the pod without claims.
    pub plugin_only: Vec<T>,
    /// One claimed device, the pod started right after prepare.
    pub with: Vec<T>,
    /// One claimed device, the pod started [`PREPARE_SETTLED`] after prepare.
    pub with_prepare_settled: Vec<T>,
}

impl<T> Default for Series<T> {
    fn default() -> Self {
        Self {
            without: Vec::new(),
            plugin_only: Vec::new(),
            with: Vec::new(),
            with_prepare_settled: Vec::new(),
        }
    }
}

impl<T> Series<T> {
    /// Each series' values through `f`, leaving out those it has none for.
    fn filter_map<U>(&self, f: impl Fn(&T) -> Option<U>) -> Series<U> {
        let each = |v: &[T]| v.iter().filter_map(&f).collect();
        Series {
            without: each(&self.without),
            plugin_only: each(&self.plugin_only),
            with: each(&self.with),
            with_prepare_settled: each(&self.with_prepare_settled),
        }
    }
}

/// Seconds since midnight of a containerd log line's `time="…T12:34:56.789…Z"`.
fn log_seconds(line: &str) -> Option<f64> {
    let at = line.find("time=\"")? + 6;
    let clock = line.get(at..)?.split('T').nth(1)?;
    let clock = clock.split(['Z', '"', '+']).next()?;
    let mut parts = clock.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// containerd's own time for each RunPodSandbox in `log` (its debug log), by pod name,
/// in milliseconds: from the `RunPodSandbox for name:"…"` line to the same pod's
/// `… returns sandbox id` line. A pod started twice keeps its last time.
pub fn containerd_runp_times(log: &str) -> std::collections::BTreeMap<String, f64> {
    let mut started = std::collections::BTreeMap::new();
    let mut took = std::collections::BTreeMap::new();
    for line in log.lines() {
        let Some(at) = line.find("RunPodSandbox for name:\\\"") else {
            continue;
        };
        let rest = &line[at + "RunPodSandbox for name:\\\"".len()..];
        let Some(name) = rest.split('\\').next() else {
            continue;
        };
        let Some(t) = log_seconds(line) else {
            continue;
        };
        if line.contains("returns sandbox id") {
            if let Some(t0) = started.remove(name) {
                // Across midnight the clock starts over.
                let d: f64 = if t >= t0 { t - t0 } else { t + 86400.0 - t0 };
                took.insert(name.to_string(), d * 1000.0);
            }
        } else {
            started.insert(name.to_string(), t);
        }
    }
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Hook durations (ms) of `hook` logged by the driver after byte offset `from`.
pub fn hook_times(log: &str, hook: &str, from: usize) -> Vec<f64> {
    log.get(from..)
        .unwrap_or("")
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("NRI hook finished") && l.contains(hook))
        .filter_map(|l| {
            let v = l.split("hook_ms=").nth(1)?;
            v.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The hand-overs started at the CNI ADD that the driver logged as done: pod name
/// (without its namespace) → duration (ms).
pub fn ahead_times(log: &str) -> std::collections::BTreeMap<String, f64> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("hand-over started at the CNI ADD is done"))
        .filter_map(|l| {
            let (_, fields) = l.split_once("is done")?;
            let field = |name: &str| {
                fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix(name).map(str::to_string))
            };
            let pod = field("pod=")?;
            let pod = pod.rsplit('/').next()?.to_string();
            let us: f64 = field("took_us=")?.parse().ok()?;
            Some((pod, us / 1000.0))
        })
        .collect()
}

/// The line without terminal colour sequences (`ESC [ ... m`), which the driver's
/// log writer puts between a field's name and its `=`.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One pod started and removed again; the runp time.
fn cycle(c: &RealCluster, name: &str, uid: &str) -> Result<Duration> {
    let (id, took) = c.runtime.run_pod(name, uid)?;
    c.runtime.stop_pod(&id)?;
    c.runtime.remove_pod(&id)?;
    Ok(took)
}

/// `n` pods without claims, one after the other (`{tag}-{i}`); their names and runp
/// times.
fn unclaimed_pods(c: &RealCluster, tag: &str, n: usize) -> Result<Vec<(String, f64)>> {
    (0..n)
        .map(|i| {
            let name = format!("{tag}-{i}");
            let took = cycle(c, &name, &format!("pod-uid-{tag}-{i}"))?;
            Ok((name, ms(took)))
        })
        .collect()
}

/// Adds each pod of `runs` (name, runp time) to a series' names and times.
fn record(names: &mut Vec<String>, times: &mut Vec<f64>, runs: Vec<(String, f64)>) {
    for (name, took) in runs {
        names.push(name);
        times.push(took);
    }
}

/// Runs the measurement in `topo` (which needs `concurrent + 1` NICs); call on a thread
/// in `topo.node`.
pub async fn measure(
    topo: &Topology,
    peers: Peers,
    runs: usize,
    concurrent: usize,
    keep_logs: Option<&Path>,
) -> Result<RunpMeasured> {
    let budget = Duration::from_secs(2);
    let mut c = containerd::bring_up(topo, peers, "bp", budget).await?;
    let mut m = RunpMeasured {
        budget_ms: ms(budget),
        ..Default::default()
    };
    // Each counted pod's name, for containerd's times of it.
    let mut pods = Series::<String>::default();
    let names: Vec<String> = (1..=concurrent).map(scenario::nic_name).collect();
    let devices = scenario::wait_devices_of(&c.side.api, &names, Duration::from_secs(30)).await?;
    // Warm-up: the first pod of a containerd pays for image and CNI caches.
    cycle(&c, "warm-0", "pod-uid-warm")?;

    // Rounds of (without, plugin only, with), so that a machine that drifts (the
    // `without` median moved by 20 ms between blocks of one run here) weighs on every
    // series alike. After each driver start, one uncounted pod and a pause let its
    // start-up work (scan, publish, eBPF spares, checkpoint) finish.
    let rounds = runs.div_ceil(RUNS_PER_ROUND).max(1);
    for round in 0..rounds {
        let k = RUNS_PER_ROUND.min(runs - round * RUNS_PER_ROUND);
        c.stop_driver()?;
        c.runtime.set_cni_chain(false)?;
        let bare = unclaimed_pods(&c, &format!("bare-{round}"), k)?;
        record(&mut pods.without, &mut m.crictl.without, bare);
        c.runtime.set_cni_chain(true)?;
        c.start_driver(topo).await?;
        cycle(
            &c,
            &format!("warm-{round}"),
            &format!("pod-uid-warm-{round}"),
        )?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let plain = unclaimed_pods(&c, &format!("plain-{round}"), k)?;
        record(&mut pods.plugin_only, &mut m.crictl.plugin_only, plain);
        let from = std::fs::metadata(&c.side.driver.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        // With a claim: right after prepare (as kubelet does), and alternately half a
        // second after it, when prepare's background work (the data path staged on
        // the host, the inventory's rescan) is over.
        for i in 0..2 * k {
            let settled = i % 2 == 1;
            let (name, uid, pod_uid) = (
                format!("one-{round}-{i}"),
                format!("claim-uid-one-{round}-{i}"),
                format!("pod-uid-one-{round}-{i}"),
            );
            c.side.api.put(claim(
                &name,
                &uid,
                &c.side.device,
                &format!("{name}-pod"),
                &pod_uid,
                good_parameters(),
            ))?;
            let err = prepare_with(&c.side.dra, &name, &uid).await?;
            if !err.is_empty() {
                bail!("prepare {name}: {err}");
            }
            if settled {
                tokio::time::sleep(PREPARE_SETTLED).await;
            }
            let pod = format!("{name}-pod");
            let took = ms(cycle(&c, &pod, &pod_uid)?);
            let (names, times) = if settled {
                (
                    &mut pods.with_prepare_settled,
                    &mut m.crictl.with_prepare_settled,
                )
            } else {
                (&mut pods.with, &mut m.crictl.with)
            };
            record(names, times, vec![(pod, took)]);
            let err = unprepare_with(&c.side.dra, &name, &uid).await?;
            if !err.is_empty() {
                bail!("unprepare {name}: {err}");
            }
        }
        m.with_hooks
            .extend(hook_times(&c.side.driver.log_text(), "RunPodSandbox", from));
    }

    // Which claimed pods' hand-overs started at the CNI ADD (the others' hooks did them).
    let ahead = ahead_times(&c.side.driver.log_text());
    m.with_ahead = pods
        .with
        .iter()
        .chain(&pods.with_prepare_settled)
        .filter_map(|name| ahead.get(name).copied())
        .collect();
    m.claimed_pods = pods.with.len() + pods.with_prepare_settled.len();
    // Why the others did not start ahead, as the driver logged it.
    m.ahead_not_started = c
        .side
        .driver
        .log_text()
        .lines()
        .map(strip_ansi)
        .filter_map(|l| {
            if l.contains("hand-over left to RunPodSandbox") {
                l.split_once("RunPodSandbox: ")
                    .map(|(_, why)| why.to_string())
            } else if l.contains("hand-over started at the CNI ADD failed") {
                Some(
                    l.split_once("failed")
                        .map_or(l.clone(), |(_, e)| format!("failed{e}")),
                )
            } else {
                None
            }
        })
        .collect();
    // The same pods as containerd timed them.
    let timed = containerd_runp_times(&c.runtime.log_text());
    m.containerd = pods.filter_map(|name| timed.get(name).copied());

    // `concurrent` pods, one device each, started at once.
    for j in 1..=concurrent {
        let mut p = scenario::indexed_parameters(j);
        p["interface"]["name"] = serde_json::json!("net1");
        let nic = scenario::nic_name(j);
        c.side.api.put(claim(
            &format!("c{j}"),
            &format!("claim-uid-c{j}"),
            devices
                .get(&nic)
                .with_context(|| format!("{nic} published"))?,
            &format!("c{j}-pod"),
            &format!("pod-uid-c{j}"),
            p,
        ))?;
        let err = prepare_with(&c.side.dra, &format!("c{j}"), &format!("claim-uid-c{j}")).await?;
        if !err.is_empty() {
            bail!("prepare c{j}: {err}");
        }
    }
    let from = std::fs::metadata(&c.side.driver.log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let shared = Arc::new(c);
    let t0 = Instant::now();
    let started: Vec<_> = (1..=concurrent)
        .map(|j| {
            let c = shared.clone();
            std::thread::spawn(move || {
                c.runtime
                    .run_pod(&format!("c{j}-pod"), &format!("pod-uid-c{j}"))
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for h in started {
        match h.join() {
            Ok(Ok((id, _))) => ids.push(id),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("a runp thread panicked".into()),
        }
    }
    m.concurrent_wall_ms = ms(t0.elapsed());
    let c = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("runp threads still hold the cluster"))?;
    if !failures.is_empty() {
        bail!(
            "{} of {concurrent} concurrent pods failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    let log = c.side.driver.log_text();
    m.concurrent_hooks = hook_times(&log, "RunPodSandbox", from);
    let ahead = ahead_times(&log);
    m.concurrent_ahead = (1..=concurrent)
        .filter_map(|j| ahead.get(&format!("c{j}-pod")).copied())
        .collect();
    for id in ids {
        c.runtime.stop_pod(&id)?;
        c.runtime.remove_pod(&id)?;
    }
    if m.concurrent_hooks.len() != concurrent {
        bail!(
            "the driver logged {} RunPodSandbox hooks for {concurrent} pods",
            m.concurrent_hooks.len()
        );
    }
    if let Some(dir) = keep_logs {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("driver.log"), c.side.driver.log_text())?;
        std::fs::write(dir.join("containerd.log"), c.runtime.log_text())?;
    }
    drop(c);
    Ok(m)
}

/// [`measure`] in a topology of its own, or `None` (said loudly) when the real runtime
/// is missing. With `keep_logs`, the driver's and containerd's logs are copied there
/// (`driver.log`, `containerd.log`) to see what ran during each `crictl runp`.
pub fn measure_here(
    runs: usize,
    concurrent: usize,
    keep_logs: Option<PathBuf>,
) -> Result<Option<RunpMeasured>> {
    let Some(peers) = containerd::peers_or_skip("bench pod-start (real containerd)") else {
        return Ok(None);
    };
    let topo = Arc::new(Topology::with_nics("bp", concurrent)?);
    let state_fs = topo.state_on_tmpfs()?;
    let node: &Path = topo.node.path();
    let node = node.to_path_buf();
    let t = topo.clone();
    let m = scenario::run_in_netns(&node, move || async move {
        measure(&t, peers, runs, concurrent, keep_logs.as_deref()).await
    });
    // Unmounted before the topology's directory goes (the driver has stopped by now).
    drop(state_fs);
    Ok(Some(m?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_times_are_read_from_the_driver_log() {
        let log = "x\n\u{1b}[2m2026\u{1b}[0m INFO cni{pod=a}: hand-over started at the CNI ADD is done pod=default/a devices=1 took_us=23456\nhand-over started at the CNI ADD failed took_us=9\n";
        let times = ahead_times(log);
        assert_eq!(times.len(), 1, "{times:?}");
        assert_eq!(times.get("a"), Some(&23.456));
    }

    #[test]
    fn hook_times_are_read_from_the_driver_log() {
        let log = "x\n2026 DEBUG netclaim::metrics: NRI hook finished hook=\"RunPodSandbox\" ok=true hook_ms=51.25\n\
                   2026 DEBUG netclaim::metrics: NRI hook finished hook=\"StopPodSandbox\" ok=true hook_ms=20.5\n\
                   2026 DEBUG netclaim::metrics: NRI hook finished hook=\"RunPodSandbox\" ok=false hook_ms=7\n";
        assert_eq!(hook_times(log, "RunPodSandbox", 0), vec![51.25, 7.0]);
        assert_eq!(hook_times(log, "StopPodSandbox", 0), vec![20.5]);
        assert!(hook_times(log, "RunPodSandbox", log.len()).is_empty());
        let coloured = "\u{1b}[2mnetclaim::metrics\u{1b}[0m: NRI hook finished \u{1b}[3mhook\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"RunPodSandbox\" \u{1b}[3mhook_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m12.5\n";
        assert_eq!(hook_times(coloured, "RunPodSandbox", 0), vec![12.5]);
    }

    #[test]
    fn containerd_times_each_runp_from_its_own_log() {
        let log = r#"time="2026-12-01T10:15:11.334743031Z" level=info msg="RunPodSandbox for name:\"one-0-0-pod\" uid:\"pod-uid-one-0-0\" namespace:\"default\""
time="2026-12-01T10:15:11.337484499Z" level=debug msg="begin cni setup" podsandboxid=93a1
time="2026-12-01T10:15:11.400000000Z" level=info msg="RunPodSandbox for name:\"bare-0-0\" uid:\"pod-uid-bare-0-0\" namespace:\"default\""
time="2026-12-01T10:15:11.431845384Z" level=info msg="RunPodSandbox for name:\"one-0-0-pod\" uid:\"pod-uid-one-0-0\" namespace:\"default\" returns sandbox id \"93a1\""
time="2026-12-01T23:59:59.990000000Z" level=info msg="RunPodSandbox for name:\"late\" uid:\"u\" namespace:\"default\""
time="2026-12-02T00:00:00.070000000Z" level=info msg="RunPodSandbox for name:\"late\" uid:\"u\" namespace:\"default\" returns sandbox id \"ab\""
"#;
        let t = containerd_runp_times(log);
        assert!((t["one-0-0-pod"] - 97.102353).abs() < 1e-3, "{t:?}");
        assert!((t["late"] - 80.0).abs() < 1e-3, "{t:?}");
        assert!(!t.contains_key("bare-0-0"), "never returned: {t:?}");
        assert_eq!(t.len(), 2);
    }
}
