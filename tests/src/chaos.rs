//! Seeded fault injection against the real `netclaim run`: `kill -9` at random points
//! of prepare, pod start, pod stop, unprepare and synchronize, with several devices per
//! pod, then a restart, and a check of what the kernel shows.
//!
//! The world: a node namespace with `2 × pods` NICs (veth ends whose peers sit in a
//! wire namespace), one namespace per pod, the fake API server and kubelet, the NRI
//! runtime stand-in, and the real binary. Each pod's claim holds two devices. Every
//! round picks a pod and its next step (prepare → run → stop → unprepare), starts it,
//! kills the driver after a random delay (0 to 80 ms: before, inside or after the
//! step), restarts it with the runtime's view of which pods live (Synchronize), repeats
//! what kubelet would repeat (prepare and unprepare are retried until they succeed),
//! and then checks, from the kernel and not from netclaim's records:
//!
//! * **lost**: a NIC found neither at home nor in its pod;
//! * **mismatched**: a NIC at home whose name, MTU, MAC or addresses differ from before
//!   the run, a NIC of a live pod that is not in it with its configuration and data
//!   path, or a NIC of a stopped pod still in the pod; the checkpoint (read after a
//!   clean stop) saying attached for a NIC at home, or home for a NIC in a pod;
//! * **leaked**: data-path pins of a device that is not in a live pod, or an XDP/tc
//!   program left on a NIC at home;
//!
//! and, after stopping the driver cleanly, that the checkpoint records a device in its
//! pod exactly when the pod runs, and that the claim status shows every device of a
//! live pod Ready (both counted as mismatched).
//!
//! The run ends with `chaos: seed=S faults=N lost=L leaked=K mismatched=M`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    kubelet::{DraVersion, FakeKubelet, Verdict},
    netenv::TestNetns,
    runtime::{pod, FakeRuntime, Mode, RuntimeConfig},
    scenario::{
        self, claim_with_devices, indexed_parameters, nic_name, prepare_with, unprepare_with,
        ClaimDevice, Cluster, Topology, DRIVER,
    },
};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub seed: u64,
    pub faults: usize,
    pub pods: usize,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub faults: usize,
    pub lost: usize,
    pub leaked: usize,
    pub mismatched: usize,
    /// One line per problem, with the round it was found in.
    pub problems: Vec<String>,
    /// How many faults hit each step.
    pub mix: BTreeMap<&'static str, usize>,
    /// (kind, pod, NIC) already counted: a problem that persists is counted once.
    seen: std::collections::BTreeSet<(String, String, String)>,
}

impl ChaosReport {
    /// Counts a problem once per (kind, pod, NIC).
    fn found(&mut self, kind: &str, pod: &str, nic: &str, round: usize, what: String) {
        if !self
            .seen
            .insert((kind.to_string(), pod.to_string(), nic.to_string()))
        {
            return;
        }
        match kind {
            "lost" => self.lost += 1,
            "leaked" => self.leaked += 1,
            _ => self.mismatched += 1,
        }
        self.problems
            .push(format!("round {round}: {kind}: pod {pod} {nic}: {what}"));
    }
}

impl ChaosReport {
    pub fn line(&self) -> String {
        format!(
            "chaos: seed={} faults={} lost={} leaked={} mismatched={}",
            self.seed, self.faults, self.lost, self.leaked, self.mismatched
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Unprepared,
    Prepared,
    Running,
    Stopped,
}

struct PodModel {
    uid: String,
    name: String,
    claim: String,
    claim_uid: String,
    nics: Vec<String>,
    netns: TestNetns,
    phase: Phase,
}

/// Link facts as `ip -j addr` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkFacts {
    name: String,
    mtu: u64,
    mac: String,
    addrs: Vec<String>,
    xdp: bool,
}

fn links_in(ns: &Path) -> Result<Vec<LinkFacts>> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-j", "-d", "addr", "show"])
        .output()
        .context("running nsenter ip")?;
    if !out.status.success() {
        bail!(
            "ip addr in {}: {}",
            ns.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|l| LinkFacts {
            name: l["ifname"].as_str().unwrap_or("").to_string(),
            mtu: l["mtu"].as_u64().unwrap_or(0),
            mac: l["address"].as_str().unwrap_or("").to_string(),
            addrs: l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["scope"] == "global")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
                .collect(),
            xdp: l.get("xdp").is_some(),
        })
        .collect())
}

/// Whether a tc filter or TCX program is attached to `link` in `ns`.
fn tc_attached(ns: &Path, link: &str) -> bool {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["bpftool", "-j", "net", "show", "dev", link])
        .output();
    let Ok(out) = out else { return false };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array().into_iter().flatten().any(|e| {
        ["tc", "tcx"]
            .iter()
            .any(|k| e[k].as_array().is_some_and(|a| !a.is_empty()))
    })
}

/// Runs one chaos campaign; call on a thread in `topo.node` (see
/// [`scenario::run_in_netns`]).
async fn campaign(topo: Arc<Topology>, cfg: ChaosConfig) -> Result<ChaosReport> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut report = ChaosReport {
        seed: cfg.seed,
        ..Default::default()
    };
    let mut c = scenario::bring_up(&topo, Mode::Current, &scenario::Quiet).await?;
    let nics: Vec<String> = (1..=cfg.pods * 2).map(nic_name).collect();
    let devices =
        scenario::wait_devices(&c, &scenario::Quiet, &nics, Duration::from_secs(30)).await?;
    // The host state every NIC must come home to.
    let home: BTreeMap<String, LinkFacts> = links_in(topo.node.path())?
        .into_iter()
        .filter(|l| nics.contains(&l.name))
        .map(|l| (l.name.clone(), l))
        .collect();
    if home.len() != nics.len() {
        bail!(
            "expected {} NICs in the node, found {}",
            nics.len(),
            home.len()
        );
    }
    let mut pods: Vec<PodModel> = Vec::new();
    for p in 0..cfg.pods {
        let nics = vec![nic_name(2 * p + 1), nic_name(2 * p + 2)];
        let m = PodModel {
            uid: format!("pod-uid-chaos-{p}"),
            name: format!("chaos-{p}"),
            claim: format!("chaos-{p}"),
            claim_uid: format!("claim-uid-chaos-{p}"),
            netns: TestNetns::new(&format!("cp{p}"))?,
            nics,
            phase: Phase::Unprepared,
        };
        let claimed: Vec<ClaimDevice> = m
            .nics
            .iter()
            .enumerate()
            .map(|(j, nic)| ClaimDevice {
                request: format!("nic{}", j + 1),
                device: devices[nic].clone(),
                parameters: indexed_parameters(j + 1),
            })
            .collect();
        c.api.put(claim_with_devices(
            &m.claim,
            &m.claim_uid,
            &claimed,
            &m.name,
            &m.uid,
        ))?;
        pods.push(m);
    }

    for round in 0..cfg.faults {
        let i = rng.usize(..pods.len());
        let delay = Duration::from_millis(rng.u64(0..80));
        let step = match pods[i].phase {
            Phase::Unprepared => "prepare",
            Phase::Prepared => "run",
            Phase::Running => {
                if rng.bool() {
                    "stop"
                } else {
                    "synchronize"
                }
            }
            Phase::Stopped => "unprepare",
        };
        *report.mix.entry(step).or_default() += 1;
        let p = &pods[i];
        let sandbox = pod(
            &format!("sandbox-{}", p.uid),
            "default",
            &p.name,
            &p.uid,
            &p.netns.path().display().to_string(),
        );
        // The step runs while the driver is killed under it.
        let outcome = {
            let fut = async {
                match step {
                    "prepare" => prepare_with(&c.dra, &p.claim, &p.claim_uid)
                        .await
                        .map(|e| e.is_empty()),
                    "run" => Ok(c.runtime.run_pod(&sandbox).await.status.is_ok()),
                    "stop" => {
                        let s = c.runtime.stop_pod(&sandbox).await;
                        let _ = c.runtime.remove_pod(&sandbox).await;
                        Ok(s.status.is_ok())
                    }
                    "unprepare" => unprepare_with(&c.dra, &p.claim, &p.claim_uid)
                        .await
                        .map(|e| e.is_empty()),
                    _ => Ok(true),
                }
            };
            let kill = async {
                tokio::time::sleep(delay).await;
                c.driver.kill9()
            };
            // `synchronize` is the restart itself: kill during the reconnect below.
            let (done, killed) = tokio::join!(fut, kill);
            killed?;
            done.unwrap_or(false)
        };
        // What the runtime and kubelet now believe.
        match step {
            "prepare" if outcome => pods[i].phase = Phase::Prepared,
            "run" if outcome => pods[i].phase = Phase::Running,
            "stop" => pods[i].phase = Phase::Stopped,
            "unprepare" if outcome => pods[i].phase = Phase::Unprepared,
            _ => {}
        }
        restart(&mut c, &topo, &pods, step == "synchronize", &mut rng).await?;
        // kubelet repeats prepare and unprepare until they succeed; a pod whose start
        // failed is retried by kubelet too (a new sandbox, here the same namespace).
        converge(&mut c, &mut pods).await?;
        check(&topo, &c, &pods, &home, round, &mut report)?;
        check_status(&c, &pods, round, &mut report).await;
        // The checkpoint is read with the driver stopped cleanly (it holds the file).
        if c.driver.stop()? != Some(0) {
            report.found(
                "mismatched",
                "driver",
                "exit",
                round,
                "netclaim did not exit cleanly on SIGTERM".into(),
            );
        }
        check_checkpoint(&topo, &pods, round, &mut report)?;
        restart(&mut c, &topo, &pods, false, &mut rng).await?;
        report.faults += 1;
    }
    // Clean end: every pod stopped, every claim unprepared, all NICs home.
    for p in pods.iter_mut() {
        if p.phase == Phase::Running {
            let sandbox = pod(
                &format!("sandbox-{}", p.uid),
                "default",
                &p.name,
                &p.uid,
                &p.netns.path().display().to_string(),
            );
            let _ = c.runtime.stop_pod(&sandbox).await;
            let _ = c.runtime.remove_pod(&sandbox).await;
            p.phase = Phase::Stopped;
        }
        if p.phase != Phase::Unprepared {
            let err = unprepare_with(&c.dra, &p.claim, &p.claim_uid).await?;
            if !err.is_empty() {
                report.found("mismatched", &p.name, "unprepare", cfg.faults, err);
            }
            p.phase = Phase::Unprepared;
        }
    }
    check(&topo, &c, &pods, &home, cfg.faults, &mut report)?;
    let _ = c.driver.stop();
    check_checkpoint(&topo, &pods, cfg.faults, &mut report)?;
    Ok(report)
}

/// Starts the driver again with the runtime's view of live pods; with `twice`, kills
/// it once more in the middle of that Synchronize.
async fn restart(
    c: &mut Cluster,
    topo: &Topology,
    pods: &[PodModel],
    twice: bool,
    rng: &mut fastrand::Rng,
) -> Result<()> {
    let rounds = if twice { 2 } else { 1 };
    for r in 0..rounds {
        let mut config = RuntimeConfig::new(Mode::Current);
        config.pods = pods
            .iter()
            .filter(|p| p.phase == Phase::Running)
            .map(|p| {
                pod(
                    &format!("sandbox-{}", p.uid),
                    "default",
                    &p.name,
                    &p.uid,
                    &p.netns.path().display().to_string(),
                )
            })
            .collect();
        // The driver is dead: the old runtime goes (and takes its socket) first.
        let next = FakeRuntime::start(
            topo.dir.path().join("nri-spare.sock"),
            RuntimeConfig::new(Mode::Current),
        )
        .await
        .context("starting a placeholder runtime")?;
        std::mem::replace(&mut c.runtime, next).stop().await;
        let next = FakeRuntime::start(topo.nri_socket(), config)
            .await
            .context("starting the runtime stand-in")?;
        std::mem::replace(&mut c.runtime, next).stop().await;
        c.driver = scenario::Driver::start(topo, c.api.kubeconfig_path(), "1s")?;
        // The killed driver's sockets are still there until the new one replaces them;
        // kubelet retries on a refused connection, and so does this.
        let t = std::time::Instant::now();
        let (registered, dra) = loop {
            let attempt = async {
                let registered = FakeKubelet::new(topo.kubelet_dir())
                    .wait_and_register(DRIVER, Verdict::Accept, Duration::from_secs(20))
                    .await?;
                let dra = registered.dra(DraVersion::V1).await?;
                anyhow::Ok((registered, dra))
            };
            match attempt.await {
                Ok(ok) => break ok,
                Err(e) if t.elapsed() > Duration::from_secs(20) => {
                    return Err(e.context(format!(
                        "kubelet registration after a restart; driver log:\n{}",
                        c.driver.log_text()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        c.dra = dra;
        c.registered = registered;
        if r + 1 < rounds {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..60))).await;
            c.driver.kill9()?;
        } else {
            c.runtime
                .wait_registered(Duration::from_secs(20))
                .await
                .with_context(|| c.driver.log_text())?;
        }
    }
    Ok(())
}

/// Repeats what kubelet repeats until the world matches the model.
async fn converge(c: &mut Cluster, pods: &mut [PodModel]) -> Result<()> {
    for p in pods.iter_mut() {
        match p.phase {
            Phase::Prepared | Phase::Running | Phase::Stopped => {
                // A prepare that was cut off is repeated; it is idempotent.
                let err = prepare_with(&c.dra, &p.claim, &p.claim_uid).await?;
                if !err.is_empty() && p.phase != Phase::Stopped {
                    bail!("prepare {} after a restart: {err}", p.claim);
                }
            }
            Phase::Unprepared => {
                let err = unprepare_with(&c.dra, &p.claim, &p.claim_uid).await?;
                if !err.is_empty() {
                    bail!("unprepare {} after a restart: {err}", p.claim);
                }
            }
        }
    }
    // Synchronize runs in the background after its answer: give it time to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn check(
    topo: &Topology,
    c: &Cluster,
    pods: &[PodModel],
    home: &BTreeMap<String, LinkFacts>,
    round: usize,
    report: &mut ChaosReport,
) -> Result<()> {
    let node = links_in(topo.node.path())?;
    for p in pods {
        let inside = links_in(p.netns.path())?;
        for (j, nic) in p.nics.iter().enumerate() {
            let want = &home[nic];
            let at_home = node.iter().find(|l| l.mac == want.mac);
            let in_pod = inside.iter().find(|l| l.mac == want.mac);
            let (name, mut found) = (p.name.clone(), Vec::<(&str, String)>::new());
            match (p.phase == Phase::Running, at_home, in_pod) {
                (_, None, None) => found.push(("lost", "neither at home nor in the pod".into())),
                (true, _, Some(l)) => {
                    let want_if = format!("net{}", j + 1);
                    let enforcing = l.xdp || tc_attached(p.netns.path(), &l.name);
                    if l.name != want_if || l.addrs.is_empty() || l.mtu != 1500 || !enforcing {
                        found.push((
                            "mismatched",
                            format!("in the live pod as {l:?}, enforcing={enforcing}"),
                        ));
                    }
                }
                (true, Some(_), None) => found.push((
                    "mismatched",
                    "the pod runs but its device is at home".into(),
                )),
                (false, _, Some(l)) => found.push((
                    "mismatched",
                    format!("the pod is stopped but the device is in it as {}", l.name),
                )),
                (false, Some(l), None) => {
                    let facts = LinkFacts {
                        xdp: false,
                        ..l.clone()
                    };
                    if &facts != want {
                        found.push(("mismatched", format!("home as {l:?}, was {want:?}")));
                    }
                    if l.xdp || tc_attached(topo.node.path(), &l.name) {
                        found.push(("leaked", "a program is still attached at home".into()));
                    }
                }
            }
            for (kind, what) in found {
                report.found(kind, &name, nic, round, what);
            }
        }
        // Pins of a pod that is not running must be gone.
        if p.phase != Phase::Running {
            let pins: Vec<PathBuf> = crate::netenv::files_below(topo.bpf.path())
                .into_iter()
                .filter(|f| f.to_string_lossy().contains(&p.claim))
                .collect();
            if !pins.is_empty() {
                report.found("leaked", &p.name, "pins", round, format!("{pins:?}"));
            }
        }
    }
    let _ = c;
    Ok(())
}

/// The claim status converges: every device of a live pod is reported Ready.
async fn check_status(c: &Cluster, pods: &[PodModel], round: usize, report: &mut ChaosReport) {
    for p in pods.iter().filter(|p| p.phase == Phase::Running) {
        let ready = |claim: &Value| {
            claim["status"]["devices"].as_array().is_some_and(|ds| {
                let ready: usize = ds
                    .iter()
                    .filter(|d| {
                        d["conditions"].as_array().is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .count();
                ready == p.nics.len()
            })
        };
        let converged =
            scenario::wait_for(&scenario::Quiet, "status", Duration::from_secs(5), || {
                c.api
                    .get("ResourceClaim", "default", &p.claim)
                    .filter(|cl| ready(cl))
            })
            .await;
        if converged.is_err() {
            let now = c.api.get("ResourceClaim", "default", &p.claim);
            report.found(
                "mismatched",
                &p.name,
                "status",
                round,
                format!(
                    "the claim status did not show every device Ready within 5 s: {:?}",
                    now.map(|c| c["status"]["devices"].clone())
                ),
            );
        }
    }
}

/// The checkpoint agrees with the kernel: a device is recorded in its pod exactly when
/// the pod runs (the kernel side was checked by [`check`]).
fn check_checkpoint(
    topo: &Topology,
    pods: &[PodModel],
    round: usize,
    report: &mut ChaosReport,
) -> Result<()> {
    let store = netclaim::state::StateStore::open(&topo.dir.path().join("state"))
        .context("opening the checkpoint")?;
    let claims = store.list().context("reading the checkpoint")?;
    for p in pods {
        let record = claims.iter().find(|c| c.claim.uid == p.claim_uid);
        match (p.phase, record) {
            (Phase::Unprepared, Some(_)) => report.found(
                "mismatched",
                &p.name,
                "checkpoint",
                round,
                "the claim is unprepared but still in the checkpoint".into(),
            ),
            (Phase::Unprepared, None) => {}
            (_, None) => report.found(
                "mismatched",
                &p.name,
                "checkpoint",
                round,
                "the claim is prepared but not in the checkpoint".into(),
            ),
            (phase, Some(r)) => {
                for plan in &r.plans {
                    let running = phase == Phase::Running;
                    if plan.in_pod() != running || plan.attachment().is_some() != running {
                        report.found(
                            "mismatched",
                            &p.name,
                            &format!("checkpoint {}", plan.device),
                            round,
                            format!(
                                "recorded {} while the pod {}",
                                plan.placement.phase(),
                                if running { "runs" } else { "does not run" }
                            ),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs a campaign in a topology of its own.
pub fn run(cfg: ChaosConfig) -> Result<ChaosReport> {
    let topo = Arc::new(Topology::with_nics("ch", cfg.pods * 2)?);
    let node = topo.node.path().to_path_buf();
    let t = topo.clone();
    scenario::run_in_netns(&node, move || campaign(t, cfg))
}
