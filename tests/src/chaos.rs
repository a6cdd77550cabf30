//! Seeded fault injection against the real `netclaim run`, checked from the kernel.
//!
//! The world: a node namespace with `2 × pods` NICs (veth ends whose peers sit in a
//! wire namespace), each with host state worth restoring (IPv4 and IPv6 addresses,
//! routes in the main table and in a table of its own, an IPv6 route via a gateway,
//! GRO off and TSO on), one namespace per pod, the fake API server and kubelet, the NRI
//! runtime stand-in, and the real binary with its checkpoint on a small tmpfs. Each
//! pod's claim holds two devices, each configured with an address, an MTU, a route
//! and two ethtool features the other way round from the host's. Every round is one
//! fault, drawn by [`FaultMix`]:
//!
//! * **kill**: 1–3 pods take their next step at once (prepare → run → stop →
//!   unprepare, or a synchronize) and `kill -9` lands 0–80 ms later, among them;
//! * **fail point**: the driver's Nth netlink request or Nth bpf operation fails
//!   (`driver/src/failpoints.rs`, N drawn below the number of calls the step made the
//!   last time); the step must succeed, or fail naming the injected failure and leave
//!   its devices home and restored (a failed stop: home, or in the pod as before);
//! * **full disk**: the checkpoint's file system is filled to the last byte while 1–3
//!   pods take their steps, then freed; the same outcome rule;
//! * **corrupt**: with the driver stopped, bytes of the checkpoint file are flipped or
//!   a page zeroed, or it is truncated, or a record of its mirror or one copy of its
//!   journal is damaged; with
//!   `corrupt-both` (not in the default mix) the file and every mirror record at once.
//!
//! After each fault the driver restarts with the runtime's view of which pods live
//! (Synchronize), kubelet's retries are repeated until they succeed, and the run
//! checks, from the kernel and not from netclaim's records:
//!
//! * **lost**: a NIC found neither at home nor in its pod;
//! * **mismatched**: a NIC at home whose name, MTU, MAC, addresses, routes (all
//!   tables, both families, as `ip route show table all` prints them) or changeable
//!   ethtool features differ from before the run; a NIC of a live pod that is not in
//!   it configured (name, address, MTU, route, features) and enforcing (one egress and
//!   one ingress program); a NIC of a stopped pod still in the pod; a claim status
//!   that does not show every device of a live pod Ready within 5 s; a checkpoint
//!   (read with the driver stopped cleanly) that records a device in its pod when the
//!   pod does not run or the other way round, or whose mirror differs from it;
//! * **leaked**: data-path pins of a device that is not in a live pod, a program on a
//!   NIC at home, or more than one program per direction on a NIC in a pod.
//!
//! The run ends with `chaos: seed=S faults=N lost=L leaked=K mismatched=M`.
//!
//! [`run_real`] is the real-runtime variant: containerd (`crate::containerd`) makes
//! the pods, `crictl` plays kubelet's CRI side, and `kill -9` lands during `crictl
//! runp`, `crictl rmp`, prepare, unprepare or the restart's Synchronize (containerd
//! reconnects the new plugin and synchronizes its real pods); the same kernel checks
//! follow. A stop hook is not cut there: containerd removes the pod's namespace at stop
//! and a veth dies with it (a physical NIC would fall back to the root namespace,
//! which netclaim handles), so the check could not tell netclaim's fault from the test
//! device's; the stand-in campaign cuts stop hooks.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    kubelet::{DraClient, DraVersion, FakeKubelet, Verdict},
    netenv::TestNetns,
    runtime::{pod, FakeRuntime, Mode, RuntimeConfig},
    scenario::{
        self, claim_with_devices, indexed_parameters, nic_name, prepare_with, unprepare_with,
        ClaimDevice, Cluster, Topology, DRIVER,
    },
    tmpfs::SmallFs,
};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub seed: u64,
    pub faults: usize,
    pub pods: usize,
    pub mix: FaultMix,
}

/// Relative weights of the fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultMix {
    pub kill: u32,
    pub failpoint: u32,
    pub full_disk: u32,
    pub corrupt: u32,
    /// The checkpoint file and every mirror record damaged at once: what a claim loses
    /// then is reported, not prevented (see `driver/src/state/store.rs` and `store/opening.rs`).
    pub corrupt_both: u32,
}

impl Default for FaultMix {
    fn default() -> Self {
        Self {
            kill: 50,
            failpoint: 30,
            full_disk: 10,
            corrupt: 10,
            corrupt_both: 0,
        }
    }
}

impl FaultMix {
    /// Parses `kill=50,failpoint=30,full-disk=10,corrupt=10,corrupt-both=0`; kinds not
    /// named keep their default weight.
    pub fn parse(text: &str) -> Result<Self> {
        let mut mix = Self::default();
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                continue;
            }
            let (name, weight) = part
                .split_once('=')
                .with_context(|| format!("mix[{i}] {part:?}: expected kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .with_context(|| format!("mix[{i}] {part:?}: weight is not a number"))?;
            match name.trim() {
                "kill" => mix.kill = weight,
                "failpoint" => mix.failpoint = weight,
                "full-disk" => mix.full_disk = weight,
                "corrupt" => mix.corrupt = weight,
                "corrupt-both" => mix.corrupt_both = weight,
                other => bail!(
                    "mix[{i}] {other:?}: unknown kind (kill, failpoint, full-disk, corrupt, corrupt-both)"
                ),
            }
        }
        if mix.total() == 0 {
            bail!("mix: every weight is 0");
        }
        Ok(mix)
    }

    fn total(&self) -> u32 {
        self.kill + self.failpoint + self.full_disk + self.corrupt + self.corrupt_both
    }

    fn draw(&self, rng: &mut fastrand::Rng) -> Kind {
        let mut x = rng.u32(..self.total());
        for (w, kind) in [
            (self.kill, Kind::Kill),
            (self.failpoint, Kind::FailPoint),
            (self.full_disk, Kind::FullDisk),
            (self.corrupt, Kind::Corrupt),
            (self.corrupt_both, Kind::CorruptBoth),
        ] {
            if x < w {
                return kind;
            }
            x -= w;
        }
        Kind::Kill
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Kill,
    FailPoint,
    FullDisk,
    Corrupt,
    CorruptBoth,
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
    /// How many faults of each kind (and step) were injected.
    pub mix: BTreeMap<String, usize>,
    /// (kind, pod, NIC) already counted: a problem that persists is counted once.
    seen: std::collections::BTreeSet<(String, String, String)>,
    /// What the current round does (printed with its problems, for a replay).
    doing: String,
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
        self.problems.push(format!(
            "round {round} [{}]: {kind}: pod {pod} {nic}: {what}",
            self.doing
        ));
    }

    fn count(&mut self, what: impl Into<String>) {
        *self.mix.entry(what.into()).or_default() += 1;
    }

    fn doing(&mut self, what: String) {
        self.doing = what;
    }

    fn add(&mut self, found: Vec<Finding>, round: usize) {
        for f in found {
            self.found(f.kind, &f.pod, &f.nic, round, f.what);
        }
    }

    pub fn line(&self) -> String {
        format!(
            "chaos: seed={} faults={} lost={} leaked={} mismatched={}",
            self.seed, self.faults, self.lost, self.leaked, self.mismatched
        )
    }
}

/// One problem seen in the kernel or the checkpoint.
#[derive(Debug)]
struct Finding {
    kind: &'static str,
    pod: String,
    nic: String,
    what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Unprepared,
    Prepared,
    Running,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Prepare,
    Run,
    Stop,
    Unprepare,
    Synchronize,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Run => "run",
            Step::Stop => "stop",
            Step::Unprepare => "unprepare",
            Step::Synchronize => "synchronize",
        }
    }

    /// The pod's next step; a running pod either stops or lives through a restart.
    fn next(phase: Phase, rng: &mut fastrand::Rng, allow_sync: bool) -> Step {
        match phase {
            Phase::Unprepared => Step::Prepare,
            Phase::Prepared => Step::Run,
            Phase::Running if allow_sync && rng.bool() => Step::Synchronize,
            Phase::Running => Step::Stop,
            Phase::Stopped => Step::Unprepare,
        }
    }
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

/// What [`inspect`] needs to know of a pod: its claim, NICs and namespace (none when
/// the runtime has no sandbox for it).
struct PodView<'a> {
    name: &'a str,
    claim: &'a str,
    nics: &'a [String],
    netns: Option<&'a Path>,
}

impl PodModel {
    fn view(&self) -> PodView<'_> {
        PodView {
            name: &self.name,
            claim: &self.claim,
            nics: &self.nics,
            netns: Some(self.netns.path()),
        }
    }

    fn sandbox(&self) -> netclaim::nri::api::PodSandbox {
        pod(
            &format!("sandbox-{}", self.uid),
            "default",
            &self.name,
            &self.uid,
            &self.netns.path().display().to_string(),
        )
    }

    /// The model after `step` answered `ok` (what kubelet and the runtime believe).
    /// kubelet repeats a prepare or unprepare until it succeeds ([`converge`] does),
    /// and the runtime goes on with a stop whatever the plugin answers; a failed start
    /// leaves the pod waiting for its next start.
    fn after(&self, step: Step, ok: bool) -> Phase {
        match step {
            Step::Prepare => Phase::Prepared,
            Step::Run if ok => Phase::Running,
            Step::Stop => Phase::Stopped,
            Step::Unprepare => Phase::Unprepared,
            _ => self.phase,
        }
    }
}

/// The `j`-th device's claim parameters: [`indexed_parameters`] plus two ethtool
/// features set the other way round from the host's, so restore has work to do.
fn chaos_parameters(j: usize) -> Value {
    let mut v = indexed_parameters(j);
    v["ethtool"] = json!({"features": {
        "tcp-segmentation-offload": false,
        "generic-receive-offload": true
    }});
    v
}

/// The route the `j`-th device gets in its pod ([`indexed_parameters`]).
fn pod_route(j: usize) -> String {
    format!("198.51.100.{}/28", 16 * ((j.max(1) - 1) % 16))
}

// ---------------------------------------------------------------------------------
// Reading the kernel.
// ---------------------------------------------------------------------------------

/// Link facts as `ip -j -d addr` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkFacts {
    name: String,
    /// Administratively up (`UP` in the link's flags).
    up: bool,
    mtu: u64,
    mac: String,
    addrs: Vec<String>,
    xdp: usize,
}

fn nsenter(ns: &Path, program: &str, args: &[&str]) -> Result<std::process::Output> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("running nsenter {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} in {}: {}",
            ns.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn links_in(ns: &Path) -> Result<Vec<LinkFacts>> {
    let out = nsenter(ns, "ip", &["-j", "-d", "addr", "show"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|l| LinkFacts {
            name: l["ifname"].as_str().unwrap_or("").to_string(),
            up: l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "UP")),
            mtu: l["mtu"].as_u64().unwrap_or(0),
            mac: l["address"].as_str().unwrap_or("").to_string(),
            addrs: {
                let mut a: Vec<String> = l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["scope"] == "global")
                    .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
                    .collect();
                a.sort();
                a
            },
            xdp: match l.get("xdp") {
                None => 0,
                Some(x) => x["attached"].as_array().map(|a| a.len()).unwrap_or(1),
            },
        })
        .collect())
}

/// Every route of every table and both families in `ns`, by device, each as the
/// kernel shows it (`ip -j route show table all`, without the device).
fn routes_in(ns: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for family in ["-4", "-6"] {
        let o = nsenter(ns, "ip", &["-j", family, "route", "show", "table", "all"])?;
        let v: Value = serde_json::from_slice(&o.stdout)?;
        for mut r in v.as_array().cloned().unwrap_or_default() {
            let Some(obj) = r.as_object_mut() else {
                continue;
            };
            let Some(dev) = obj
                .remove("dev")
                .and_then(|d| d.as_str().map(str::to_owned))
            else {
                continue;
            };
            let sorted: BTreeMap<String, Value> = obj.clone().into_iter().collect();
            out.entry(dev)
                .or_default()
                .push(serde_json::to_string(&sorted)?);
        }
    }
    for routes in out.values_mut() {
        routes.sort();
    }
    Ok(out)
}

/// `ethtool -k` of `link` in `ns`: every feature that is not `[fixed]`.
fn features_of(ns: &Path, link: &str) -> Result<BTreeMap<String, bool>> {
    let out = nsenter(ns, "ethtool", &["-k", link])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.contains("[fixed]"))
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(':')?;
            let state = rest.split_whitespace().next()?;
            Some((name.to_string(), state == "on"))
        })
        .collect())
}

/// Programs attached to `link` in `ns`: (egress, ingress), counting XDP, TCX and
/// clsact (bpftool 7.1 does not list TCX: it is asked of the kernel through aya).
/// Programs on a link by attach point.
#[derive(Clone, Copy, Debug, Default)]
struct Programs {
    tcx_egress: usize,
    tcx_ingress: usize,
    clsact_egress: usize,
    clsact_ingress: usize,
    xdp: usize,
}

impl Programs {
    fn egress(&self) -> usize {
        self.tcx_egress + self.clsact_egress
    }
    fn ingress(&self) -> usize {
        self.tcx_ingress + self.clsact_ingress + self.xdp
    }
}

fn programs_on(ns: &Path, link: &str, xdp: usize) -> Result<(usize, usize)> {
    let p = programs_detail(ns, link, xdp)?;
    Ok((p.egress(), p.ingress()))
}

fn programs_detail(ns: &Path, link: &str, xdp: usize) -> Result<Programs> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let netns = netclaim::netns::Netns::open(ns)?;
    let name = link.to_string();
    let tcx = netns.run(move || {
        let count = |t| SchedClassifier::query_tcx(&name, t).map(|(_, p)| p.len());
        (count(TcAttachType::Egress), count(TcAttachType::Ingress))
    })?;
    let (tcx_egress, tcx_ingress) = (tcx.0.unwrap_or(0), tcx.1.unwrap_or(0));
    let out = nsenter(ns, "bpftool", &["-j", "net", "show", "dev", link])?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let (mut cls_egress, mut cls_ingress) = (0, 0);
    for e in v.as_array().into_iter().flatten() {
        for f in e["tc"].as_array().into_iter().flatten() {
            match f["kind"].as_str() {
                Some(k) if k.contains("egress") => cls_egress += 1,
                _ => cls_ingress += 1,
            }
        }
    }
    Ok(Programs {
        tcx_egress,
        tcx_ingress,
        clsact_egress: cls_egress,
        clsact_ingress: cls_ingress,
        xdp,
    })
}

/// What a NIC at home must look like again: its link facts, routes and features.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HomeFacts {
    link: LinkFacts,
    routes: Vec<String>,
    features: BTreeMap<String, bool>,
}

fn home_facts(
    ns: &Path,
    link: &LinkFacts,
    routes: &BTreeMap<String, Vec<String>>,
) -> Result<HomeFacts> {
    Ok(HomeFacts {
        link: LinkFacts {
            xdp: 0,
            ..link.clone()
        },
        routes: routes.get(&link.name).cloned().unwrap_or_default(),
        features: features_of(ns, &link.name)?,
    })
}

/// Waits until no address in `ns` is tentative (DAD still running).
async fn settle_ipv6(ns: &Path) -> Result<()> {
    let t = Instant::now();
    loop {
        let out = nsenter(ns, "ip", &["-j", "addr", "show"])?;
        if !String::from_utf8_lossy(&out.stdout).contains("\"tentative\":true") {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "IPv6 addresses still tentative after 10 s in {}",
                ns.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gives NIC `i` host state worth restoring (see the module docs).
fn furnish_home(node: &TestNetns, i: usize) -> Result<()> {
    let nic = nic_name(i);
    let six = format!("2001:db8:c{i:x}::");
    node.ip(&[
        "addr",
        "add",
        &format!("198.51.100.{}/32", 128 + i),
        "dev",
        &nic,
    ])?;
    node.ip(&["addr", "add", &format!("{six}1/64"), "dev", &nic, "nodad"])?;
    let dst = format!("203.0.113.{}/29", 8 * i);
    node.ip(&["route", "add", &dst, "dev", &nic, "scope", "link"])?;
    node.ip(&[
        "route",
        "add",
        &dst,
        "dev",
        &nic,
        "table",
        &(100 + i).to_string(),
        "src",
        &format!("198.51.100.{}", 128 + i),
    ])?;
    node.ip(&[
        "-6",
        "route",
        "add",
        &format!("2001:db8:d{i:x}::/48"),
        "via",
        &format!("{six}2"),
        "dev",
        &nic,
    ])?;
    node.exec("ethtool", &["-K", &nic, "gro", "off", "tso", "on"])?;
    Ok(())
}

/// What the kernel shows for the pods' NICs against what `expect` says of each pod.
fn inspect(
    topo: &Topology,
    pods: &[PodView],
    expect: &[Phase],
    home: &BTreeMap<String, HomeFacts>,
) -> Result<Vec<Finding>> {
    let node = links_in(topo.node.path())?;
    let node_routes = routes_in(topo.node.path())?;
    let mut found = Vec::new();
    for (p, &phase) in pods.iter().zip(expect) {
        let pod_ns = p.netns.filter(|ns| ns.exists());
        let inside = match pod_ns {
            Some(ns) => links_in(ns)?,
            None => Vec::new(),
        };
        for (j, nic) in p.nics.iter().enumerate() {
            let want = &home[nic];
            let at_home = node.iter().find(|l| l.mac == want.link.mac);
            let in_pod = inside.iter().find(|l| l.mac == want.link.mac);
            let mut push = |kind: &'static str, what: String| {
                found.push(Finding {
                    kind,
                    pod: p.name.to_string(),
                    nic: nic.clone(),
                    what,
                })
            };
            match (phase == Phase::Running, at_home, in_pod) {
                (_, None, None) => push("lost", "neither at home nor in the pod".into()),
                (true, _, Some(l)) => {
                    let want_if = format!("net{}", j + 1);
                    let ns = pod_ns.context("a link in a pod without a namespace")?;
                    let (egress, ingress) = programs_on(ns, &l.name, l.xdp)?;
                    let features = features_of(ns, &l.name).unwrap_or_default();
                    let route = pod_route(j + 1);
                    let routed = nsenter(ns, "ip", &["-j", "route", "show", "dev", &l.name])
                        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&route))
                        .unwrap_or(false);
                    let configured = l.name == want_if
                        && l.addrs.len() == 1
                        && l.mtu == 1500
                        && routed
                        && features.get("generic-receive-offload") == Some(&true)
                        && features.get("tcp-segmentation-offload") == Some(&false);
                    if !configured || egress == 0 || ingress == 0 {
                        push(
                            "mismatched",
                            format!(
                                "in the live pod as {l:?}, route {route} {}, gro={:?} tso={:?}, programs egress={egress} ingress={ingress}",
                                if routed { "present" } else { "missing" },
                                features.get("generic-receive-offload"),
                                features.get("tcp-segmentation-offload"),
                            ),
                        );
                    }
                    if egress > 1 || ingress > 1 {
                        push(
                            "leaked",
                            format!("more than one program per direction: egress={egress} ingress={ingress}"),
                        );
                    }
                }
                (true, Some(_), None) => push(
                    "mismatched",
                    "the pod runs but its device is at home".into(),
                ),
                (false, _, Some(l)) => push(
                    "mismatched",
                    format!("the pod does not run but the device is in it as {}", l.name),
                ),
                (false, Some(l), None) => {
                    let now = home_facts(topo.node.path(), l, &node_routes)?;
                    if &now != want {
                        push("mismatched", describe_difference(want, &now));
                    }
                    // A prepared claim's device may carry its data path at home (staged
                    // at prepare, or come home from its pod counting only) until
                    // unprepare: at most one program per direction, each link owned by
                    // its pin. An unprepared claim's device has neither programs nor pins.
                    let programs = programs_detail(topo.node.path(), &l.name, l.xdp)?;
                    let pins = pins_of(topo, p.claim, nic);
                    let pinned = |name: &str| pins.iter().any(|f| f.ends_with(name));
                    let unowned = (programs.tcx_egress > 0 && !pinned("link_egress"))
                        || (programs.tcx_ingress + programs.xdp > 0 && !pinned("link_ingress"))
                        || (programs.clsact_egress + programs.clsact_ingress > 0
                            && pins.is_empty());
                    let names = || {
                        pins.iter()
                            .filter_map(|p| p.file_name())
                            .map(|n| n.to_string_lossy().to_string())
                            .collect::<Vec<_>>()
                    };
                    if phase == Phase::Unprepared {
                        if programs.egress() + programs.ingress() > 0 || !pins.is_empty() {
                            push(
                                "leaked",
                                format!(
                                    "the claim is unprepared but at home there are programs {programs:?} and pins {:?}",
                                    names()
                                ),
                            );
                        }
                    } else if programs.egress() > 1 || programs.ingress() > 1 || unowned {
                        push(
                            "leaked",
                            format!(
                                "programs at home {programs:?} that its pins {:?} do not own",
                                names()
                            ),
                        );
                    }
                }
            }
        }
        // Pins under the claim that name none of its devices.
        let strays: Vec<PathBuf> = crate::netenv::files_below(topo.bpf.path())
            .into_iter()
            .filter(|f| {
                let f = f.to_string_lossy();
                f.contains(&format!("/{}/", p.claim))
                    && !p
                        .nics
                        .iter()
                        .any(|n| f.contains(&format!("/{}/{n}/", p.claim)))
            })
            .collect();
        if !strays.is_empty() {
            found.push(Finding {
                kind: "leaked",
                pod: p.name.to_string(),
                nic: "pins".into(),
                what: format!("pins of no device of the claim: {strays:?}"),
            });
        }
    }
    Ok(found)
}

/// The pins of claim `claim`'s device `nic` (`<root>/<namespace>/<claim>/<device>/`).
fn pins_of(topo: &Topology, claim: &str, nic: &str) -> Vec<PathBuf> {
    crate::netenv::files_below(topo.bpf.path())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(&format!("/{claim}/{nic}/")))
        .collect()
}

/// [`inspect`] until it finds nothing or 2 s have passed: the kernel releases a link
/// whose last reference went (an unpinned XDP or TCX link) a moment later, from a work
/// queue, so a program still attached right after its pin went is not yet a leak.
async fn inspect_settled(
    topo: &Topology,
    pods: &[PodView<'_>],
    expect: &[Phase],
    home: &BTreeMap<String, HomeFacts>,
) -> Result<Vec<Finding>> {
    let t = Instant::now();
    loop {
        let found = inspect(topo, pods, expect, home)?;
        if found.is_empty() || t.elapsed() > Duration::from_secs(2) {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fields in which a NIC at home differs from before the run.
fn describe_difference(want: &HomeFacts, now: &HomeFacts) -> String {
    let mut parts = Vec::new();
    if want.link != now.link {
        parts.push(format!("link {:?}, was {:?}", now.link, want.link));
    }
    let missing: Vec<&String> = want
        .routes
        .iter()
        .filter(|r| !now.routes.contains(r))
        .collect();
    let extra: Vec<&String> = now
        .routes
        .iter()
        .filter(|r| !want.routes.contains(r))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        parts.push(format!("routes missing {missing:?}, extra {extra:?}"));
    }
    let changed: Vec<String> = want
        .features
        .iter()
        .filter(|(k, v)| now.features.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} {} (was {})",
                onoff(now.features.get(k).copied()),
                onoff(Some(*v))
            )
        })
        .collect();
    if !changed.is_empty() {
        parts.push(format!("features {changed:?}"));
    }
    format!("home but not restored: {}", parts.join("; "))
}

fn onoff(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "absent",
    }
}

// ---------------------------------------------------------------------------------
// Steps and the driver.
// ---------------------------------------------------------------------------------

/// How a step answered.
#[derive(Debug)]
struct Answer {
    ok: bool,
    error: String,
}

async fn do_step(dra: &DraClient, runtime: &FakeRuntime, p: &PodModel, step: Step) -> Answer {
    let from = |r: Result<String>| match r {
        Ok(e) => Answer {
            ok: e.is_empty(),
            error: e,
        },
        Err(e) => Answer {
            ok: false,
            error: format!("{e:#}"),
        },
    };
    match step {
        Step::Prepare => from(prepare_with(dra, &p.claim, &p.claim_uid).await),
        Step::Unprepare => from(unprepare_with(dra, &p.claim, &p.claim_uid).await),
        Step::Run => {
            let out = runtime.run_pod(&p.sandbox()).await;
            Answer {
                ok: out.status.is_ok(),
                error: out.status.err().map(|s| s.message).unwrap_or_default(),
            }
        }
        Step::Stop => {
            let out = runtime.stop_pod(&p.sandbox()).await;
            let _ = runtime.remove_pod(&p.sandbox()).await;
            Answer {
                ok: out.status.is_ok(),
                error: out.status.err().map(|s| s.message).unwrap_or_default(),
            }
        }
        Step::Synchronize => Answer {
            ok: true,
            error: String::new(),
        },
    }
}

/// Runs `steps` (pod index, step) at once; answers in the same order.
async fn steps_at_once(
    dra: &DraClient,
    runtime: &FakeRuntime,
    pods: &[PodModel],
    steps: &[(usize, Step)],
) -> Vec<Answer> {
    futures::future::join_all(
        steps
            .iter()
            .map(|&(i, step)| do_step(dra, runtime, &pods[i], step)),
    )
    .await
}

/// The fail point control file (see `driver/src/failpoints.rs`) and what it reports.
struct FailPoints {
    file: PathBuf,
}

impl FailPoints {
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.file.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Arms `spec` in the running driver and waits until it says it applied it.
    async fn arm(&self, spec: &str, driver_log: impl Fn() -> String) -> Result<()> {
        for f in [self.sibling(".applied"), self.sibling(".hits")] {
            let _ = std::fs::remove_file(f);
        }
        std::fs::write(&self.file, spec)?;
        let t = Instant::now();
        loop {
            if std::fs::read_to_string(self.sibling(".applied")).is_ok_and(|a| a == spec) {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(3) {
                bail!(
                    "the driver did not apply the fail points {spec:?} within 3 s: is it built with \
                     `--features failpoints` (cargo xtask chaos does that)?\n{}",
                    driver_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn disarm(&self) -> Result<()> {
        std::fs::write(&self.file, "")?;
        Ok(())
    }

    /// Calls of `point` since the last arm.
    fn hits(&self, point: &str) -> u64 {
        std::fs::read_to_string(self.sibling(".hits"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == point)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

struct World {
    topo: Arc<Topology>,
    pods: Vec<PodModel>,
    home: BTreeMap<String, HomeFacts>,
    failpoints: FailPoints,
    state: PathBuf,
    /// The small file system under `state` (unmounted when the run ends).
    _state_fs: SmallFs,
    /// Calls each (fail point, step) made the last time it was counted: N is drawn
    /// below it.
    calls: BTreeMap<(&'static str, Step), u64>,
}

impl World {
    fn phases(&self) -> Vec<Phase> {
        self.pods.iter().map(|p| p.phase).collect()
    }

    fn views(&self) -> Vec<PodView<'_>> {
        self.pods.iter().map(PodModel::view).collect()
    }

    async fn check_kernel(&self, report: &mut ChaosReport, round: usize) -> Result<()> {
        let found = inspect_settled(&self.topo, &self.views(), &self.phases(), &self.home).await?;
        report.add(found, round);
        Ok(())
    }

    /// Right after steps that ran without a restart (call before [`apply_answers`]):
    /// a step that succeeded left its pod in the next phase; one that failed left it
    /// as before (a failed start: devices home and restored), except that a failed
    /// stop may leave the devices home or in the pod as they were, but not between.
    async fn check_steps_without_restart(
        &self,
        steps: &[(usize, Step)],
        answers: &[Answer],
        report: &mut ChaosReport,
        round: usize,
    ) -> Result<()> {
        let mut expect = self.phases();
        let mut stops = Vec::new();
        for ((i, step), a) in steps.iter().zip(answers) {
            if a.ok {
                expect[*i] = self.pods[*i].after(*step, true);
            } else if *step == Step::Stop {
                expect[*i] = Phase::Stopped;
                stops.push(*i);
            }
        }
        let home = inspect_settled(&self.topo, &self.views(), &expect, &self.home).await?;
        if home.is_empty() || stops.is_empty() {
            report.add(home, round);
            return Ok(());
        }
        let mut as_before = expect.clone();
        for i in &stops {
            as_before[*i] = Phase::Running;
        }
        let before = inspect_settled(&self.topo, &self.views(), &as_before, &self.home).await?;
        if !before.is_empty() {
            report.add(home, round);
        }
        Ok(())
    }
}

/// Runs one chaos campaign; call on a thread in `topo.node` (see
/// [`scenario::run_in_netns`]).
async fn campaign(topo: Arc<Topology>, cfg: ChaosConfig) -> Result<ChaosReport> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut report = ChaosReport {
        seed: cfg.seed,
        ..Default::default()
    };
    let nics: Vec<String> = (1..=cfg.pods * 2).map(nic_name).collect();
    // No duplicate address detection in the node: an IPv6 address (and its local
    // route) is there as soon as it is added, so the routes read back do not depend
    // on when DAD ends. A device coming home takes the namespace's defaults.
    for conf in ["all", "default"] {
        topo.node.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{conf}.accept_dad=0")],
        )?;
    }
    for i in 1..=nics.len() {
        topo.node.exec(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.accept_dad=0", nic_name(i)),
            ],
        )?;
        furnish_home(&topo.node, i)?;
    }
    settle_ipv6(topo.node.path()).await?;
    // The checkpoint lives on a small file system of its own (the full-disk faults).
    let state = topo.state_dir();
    let state_fs = SmallFs::mount(&state, "16M")?;
    let failpoints = FailPoints {
        file: topo.dir.path().join("failpoints"),
    };
    failpoints.disarm()?;
    let mut c = start_cluster(&topo, &failpoints).await?;
    let devices =
        scenario::wait_devices(&c, &scenario::Quiet, &nics, Duration::from_secs(30)).await?;
    // The host state every NIC must come home to.
    let routes = routes_in(topo.node.path())?;
    let mut home = BTreeMap::new();
    for l in links_in(topo.node.path())? {
        if nics.contains(&l.name) {
            home.insert(l.name.clone(), home_facts(topo.node.path(), &l, &routes)?);
        }
    }
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
                parameters: chaos_parameters(j + 1),
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
    let mut w = World {
        topo: topo.clone(),
        pods,
        home,
        failpoints,
        state,
        _state_fs: state_fs,
        calls: BTreeMap::new(),
    };

    for round in 0..cfg.faults {
        mark_log(&c, &format!("chaos round {round}"));
        let kind = cfg.mix.draw(&mut rng);
        // What the restarted driver must log at error level (a damaged checkpoint).
        let mut must_log: Option<&'static str> = None;
        let resync = match kind {
            Kind::Kill => kill_round(&mut c, &mut w, &mut rng, &mut report).await?,
            Kind::FailPoint => {
                failpoint_round(&mut c, &mut w, &mut rng, &mut report, round).await?
            }
            Kind::FullDisk => full_disk_round(&mut c, &mut w, &mut rng, &mut report, round).await?,
            Kind::Corrupt | Kind::CorruptBoth => {
                must_log = corrupt_round(
                    &mut c,
                    &mut w,
                    &mut rng,
                    &mut report,
                    kind == Kind::CorruptBoth,
                )
                .await?;
                false
            }
        };
        mark_log(
            &c,
            &format!("chaos round {round}: {}; restart", report.doing),
        );
        let log_from = c.driver.log_text().len();
        restart(&mut c, &w, resync, &mut rng).await?;
        // kubelet repeats prepare and unprepare until they succeed.
        converge(&mut c, &mut w.pods, &mut report, round).await?;
        if let Some(needle) = must_log {
            let text = c.driver.log_text();
            let logged = text
                .get(log_from..)
                .unwrap_or("")
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(needle));
            if !logged {
                report.found(
                    "mismatched",
                    "checkpoint",
                    "log",
                    round,
                    format!("the restarted driver did not log an error saying {needle:?}"),
                );
            }
        }
        w.check_kernel(&mut report, round).await?;
        check_status(&c, &w.pods, round, &mut report).await;
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
        check_checkpoint(&w, round, &mut report)?;
        restart(&mut c, &w, false, &mut rng).await?;
        report.faults += 1;
    }
    // Clean end: every pod stopped, every claim unprepared, all NICs home.
    report.doing("clean end".into());
    for i in 0..w.pods.len() {
        if w.pods[i].phase == Phase::Running {
            let _ = do_step(&c.dra, &c.runtime, &w.pods[i], Step::Stop).await;
            w.pods[i].phase = Phase::Stopped;
        }
    }
    converge(&mut c, &mut w.pods, &mut report, cfg.faults).await?;
    for p in w.pods.iter_mut() {
        if p.phase != Phase::Unprepared {
            let err = unprepare_with(&c.dra, &p.claim, &p.claim_uid).await?;
            if !err.is_empty() {
                report.found("mismatched", &p.name, "unprepare", cfg.faults, err);
            }
            p.phase = Phase::Unprepared;
        }
    }
    w.check_kernel(&mut report, cfg.faults).await?;
    let _ = c.driver.stop();
    check_checkpoint(&w, cfg.faults, &mut report)?;
    // The driver's log, with the rounds marked in it, for a post-mortem.
    if let Some(dest) = std::env::var_os("NETCLAIM_CHAOS_LOG") {
        std::fs::copy(&c.driver.log, &dest)
            .with_context(|| format!("copying the driver log to {dest:?}"))?;
    }
    Ok(report)
}

/// Appends a marker line to the driver's log (which every restarted driver appends to).
fn mark_log(c: &Cluster, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&c.driver.log) {
        let _ = writeln!(f, "===== {text}");
    }
}

async fn start_cluster(topo: &Topology, failpoints: &FailPoints) -> Result<Cluster> {
    let mut c = scenario::bring_up(topo, Mode::Current, &scenario::Quiet).await?;
    // bring_up started a driver without the fail point control file: replace it.
    c.driver.stop()?;
    relaunch(&mut c, topo, failpoints, Vec::new()).await?;
    c.runtime
        .wait_registered(Duration::from_secs(20))
        .await
        .with_context(|| c.driver.log_text())?;
    Ok(c)
}

/// A new runtime stand-in that knows `running` pods, then a new driver registered
/// with a new kubelet (the driver is dead: the old runtime goes, and takes its
/// socket, first).
async fn relaunch(
    c: &mut Cluster,
    topo: &Topology,
    failpoints: &FailPoints,
    running: Vec<netclaim::nri::api::PodSandbox>,
) -> Result<()> {
    let mut config = RuntimeConfig::new(Mode::Current);
    config.pods = running;
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
    c.driver.kill9()?;
    c.driver = start_driver(topo, c.api.kubeconfig_path(), failpoints)?;
    reconnect(c, topo).await
}

fn start_driver(
    topo: &Topology,
    kubeconfig: &Path,
    failpoints: &FailPoints,
) -> Result<scenario::Driver> {
    scenario::Driver::start_with_env(
        topo,
        kubeconfig,
        "1s",
        &[(
            "NETCLAIM_FAILPOINTS_FILE",
            OsStr::new(failpoints.file.as_os_str()),
        )],
    )
}

/// Picks `k` distinct pods.
fn pick_pods(rng: &mut fastrand::Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut all);
    all.truncate(k.min(n));
    all
}

/// 1–3 pods take their steps at once; `kill -9` lands among them. Returns whether the
/// restart is itself cut off (a synchronize step).
async fn kill_round(
    c: &mut Cluster,
    w: &mut World,
    rng: &mut fastrand::Rng,
    report: &mut ChaosReport,
) -> Result<bool> {
    let k = 1 + rng.usize(..3.min(w.pods.len()));
    let steps: Vec<(usize, Step)> = pick_pods(rng, w.pods.len(), k)
        .into_iter()
        .map(|i| (i, Step::next(w.pods[i].phase, rng, true)))
        .collect();
    report.count(format!("kill: {} pod(s) at once", steps.len()));
    for (_, s) in &steps {
        report.count(format!("kill during {}", s.name()));
    }
    let delay = Duration::from_millis(rng.u64(0..80));
    report.doing(format!(
        "kill -9 after {} ms during {}",
        delay.as_millis(),
        describe(&w.pods, &steps)
    ));
    let Cluster {
        dra,
        runtime,
        driver,
        ..
    } = &mut *c;
    let run = steps_at_once(dra, runtime, &w.pods, &steps);
    let kill = async {
        tokio::time::sleep(delay).await;
        driver.kill9()
    };
    let (answers, killed) = tokio::join!(run, kill);
    killed?;
    report.doing.push_str(&answered(&answers));
    apply_answers(w, &steps, &answers);
    Ok(steps.iter().any(|(_, s)| *s == Step::Synchronize))
}

fn answered(answers: &[Answer]) -> String {
    let parts: Vec<String> = answers
        .iter()
        .map(|a| {
            if a.ok {
                "ok".to_string()
            } else {
                format!("failed: {}", a.error.chars().take(160).collect::<String>())
            }
        })
        .collect();
    format!("; answers: {}", parts.join(" | "))
}

fn describe(pods: &[PodModel], steps: &[(usize, Step)]) -> String {
    steps
        .iter()
        .map(|(i, s)| format!("{} {}", s.name(), pods[*i].name))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn apply_answers(w: &mut World, steps: &[(usize, Step)], answers: &[Answer]) {
    for ((i, step), a) in steps.iter().zip(answers) {
        w.pods[*i].phase = w.pods[*i].after(*step, a.ok);
    }
}

/// The Nth netlink request or bpf operation of one step fails.
async fn failpoint_round(
    c: &mut Cluster,
    w: &mut World,
    rng: &mut fastrand::Rng,
    report: &mut ChaosReport,
    round: usize,
) -> Result<bool> {
    use netclaim::failpoints::{BPF, NETLINK};
    let point = if rng.bool() { NETLINK } else { BPF };
    // Prefer a pod whose next step moves devices (run, stop).
    let movers: Vec<usize> = (0..w.pods.len())
        .filter(|&i| matches!(w.pods[i].phase, Phase::Prepared | Phase::Running))
        .collect();
    let i = if movers.is_empty() {
        rng.usize(..w.pods.len())
    } else {
        movers[rng.usize(..movers.len())]
    };
    let step = Step::next(w.pods[i].phase, rng, false);
    let known = *w.calls.entry((point, step)).or_insert(match (point, step) {
        (NETLINK, Step::Run | Step::Stop) => 80,
        (_, Step::Run) => 30,
        (_, Step::Stop) => 8,
        _ => 4,
    });
    let n = rng.u64(0..known.max(1));
    let spec = format!("{point}={n}*off->1*return->off");
    report.doing(format!(
        "fail point {spec} during {}",
        describe(&w.pods, &[(i, step)])
    ));
    w.failpoints.arm(&spec, || c.driver.log_text()).await?;
    let answer = do_step(&c.dra, &c.runtime, &w.pods[i], step).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let calls = w.failpoints.hits(point);
    w.failpoints.disarm()?;
    report.doing.push_str(&format!(
        " ({calls} calls){}",
        answered(std::slice::from_ref(&answer))
    ));
    let fired = calls > n;
    w.calls.insert(
        (point, step),
        if fired {
            known.max(n + 1)
        } else {
            calls.max(1)
        },
    );
    report.count(format!(
        "fail point {point} during {}: {}",
        step.name(),
        match (fired, answer.ok) {
            (true, false) => "fired, step failed",
            (true, true) => "fired, absorbed (step succeeded)",
            (false, _) => "N past the last call",
        }
    ));
    let pod = w.pods[i].name.clone();
    if !answer.ok {
        if !fired {
            report.found(
                "mismatched",
                &pod,
                step.name(),
                round,
                format!(
                    "failed with no fail point fired ({calls} calls, N={n}): {}",
                    answer.error
                ),
            );
        } else if !answer.error.contains("injected by fail point")
            // On a starved machine the runtime's hook budget may end the step first.
            && !answer.error.contains("hook budget")
        {
            report.found(
                "mismatched",
                &pod,
                step.name(),
                round,
                format!(
                    "the error does not name the injected failure ({spec}): {:?}",
                    answer.error
                ),
            );
        }
    }
    let steps = [(i, step)];
    w.check_steps_without_restart(&steps, std::slice::from_ref(&answer), report, round)
        .await?;
    apply_answers(w, &steps, std::slice::from_ref(&answer));
    // Then a restart without faults.
    c.driver.kill9()?;
    Ok(false)
}

/// The checkpoint's file system is full while 1–3 pods take their steps.
async fn full_disk_round(
    c: &mut Cluster,
    w: &mut World,
    rng: &mut fastrand::Rng,
    report: &mut ChaosReport,
    round: usize,
) -> Result<bool> {
    let k = 1 + rng.usize(..3.min(w.pods.len()));
    let steps: Vec<(usize, Step)> = pick_pods(rng, w.pods.len(), k)
        .into_iter()
        .map(|i| (i, Step::next(w.pods[i].phase, rng, false)))
        .collect();
    for (_, s) in &steps {
        report.count(format!("full disk during {}", s.name()));
    }
    report.doing(format!("full disk during {}", describe(&w.pods, &steps)));
    let filler = SmallFs::fill(&w.state, "filler")?;
    let answers = steps_at_once(&c.dra, &c.runtime, &w.pods, &steps).await;
    std::fs::remove_file(&filler)?;
    report.doing.push_str(&answered(&answers));
    for ((i, step), a) in steps.iter().zip(&answers) {
        if !a.ok && !a.error.contains("checkpoint") {
            report.found(
                "mismatched",
                &w.pods[*i].name,
                step.name(),
                round,
                format!(
                    "failed on a full disk without naming the checkpoint: {:?}",
                    a.error
                ),
            );
        }
    }
    w.check_steps_without_restart(&steps, &answers, report, round)
        .await?;
    apply_answers(w, &steps, &answers);
    // Half the time the driver lives on (it must recover without a restart).
    if rng.bool() {
        c.driver.kill9()?;
    } else {
        c.driver.stop()?;
    }
    Ok(false)
}

/// With the driver stopped, the checkpoint is damaged; with `both`, its mirror too.
async fn corrupt_round(
    c: &mut Cluster,
    w: &mut World,
    rng: &mut fastrand::Rng,
    report: &mut ChaosReport,
    both: bool,
) -> Result<Option<&'static str>> {
    if rng.bool() {
        c.driver.kill9()?;
    } else {
        c.driver.stop()?;
    }
    let file = w.state.join(netclaim::state::CHECKPOINT_FILE);
    let mirror = w.state.join(netclaim::state::store::MIRROR_DIR);
    // Damage the driver must notice and report (the others may hit unused bytes).
    let mut must_log = None;
    let how = if both {
        must_log = Some("lost (both copies damaged)");
        damage(&file, rng, "garbage")?;
        for f in mirror_records(&mirror) {
            damage(&f, rng, "flip")?;
        }
        "both: the file and every mirror record".to_string()
    } else {
        match rng.u32(..6) {
            0 => damage(&file, rng, "flip")?,
            1 => damage(&file, rng, "zero")?,
            2 => damage(&file, rng, "truncate")?,
            3 => {
                must_log = Some("rebuilt it from the mirror");
                damage(&file, rng, "garbage")?
            }
            4 => {
                // One copy of the journal: the other still has every record.
                let copy = netclaim::state::store::JOURNAL_FILES[rng.usize(..2)];
                let done = damage_records(&w.state.join(copy), rng)?;
                format!("journal {copy}: {done}")
            }
            _ => {
                let records = mirror_records(&mirror);
                match records.len() {
                    0 => damage(&file, rng, "flip")?,
                    n => {
                        must_log = Some("mirror records damaged");
                        let how = if rng.bool() { "flip" } else { "truncate" };
                        let done = damage(&records[rng.usize(..n)], rng, how)?;
                        format!("mirror record {}", done.split(':').next().unwrap_or(how))
                    }
                }
            }
        }
    };
    report.count(format!(
        "corrupt {}",
        how.split(':').next().unwrap_or("checkpoint")
    ));
    report.doing(format!("corrupt checkpoint ({how})"));
    Ok(must_log)
}

/// The record files of the checkpoint's mirror (none before the first write).
fn mirror_records(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "claim"))
        .collect();
    out.sort();
    out
}

/// Flips bits inside the records of a journal copy (the zeros after them are not
/// worth damaging); returns what was done.
fn damage_records(file: &Path, rng: &mut fastrand::Rng) -> Result<String> {
    let mut bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let end = netclaim::state::store::journal::read_records(&bytes).end;
    if end == 0 {
        return Ok("empty (nothing to damage)".into());
    }
    let n = 1 + rng.usize(..8);
    for _ in 0..n {
        let at = rng.usize(..end);
        bytes[at] ^= 1 << rng.u32(..8);
    }
    std::fs::write(file, &bytes)?;
    Ok(format!("flip: {n} bits in {end} bytes of records"))
}

/// Damages `file` one way; returns what was done.
fn damage(file: &Path, rng: &mut fastrand::Rng, how: &str) -> Result<String> {
    let mut bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let len = bytes.len();
    let what = match how {
        "flip" if len > 0 => {
            let n = 1 + rng.usize(..8);
            for _ in 0..n {
                let at = rng.usize(..len);
                bytes[at] ^= 1 << rng.u32(..8);
            }
            format!("flip: {n} bits of {len} bytes")
        }
        "zero" if len > 4096 => {
            let page = rng.usize(..len / 4096);
            bytes[page * 4096..(page + 1) * 4096].fill(0);
            format!("zero: page {page} of {}", len / 4096)
        }
        "truncate" if len > 0 => {
            let keep = rng.usize(..len);
            bytes.truncate(keep);
            format!("truncate: {keep} of {len} bytes kept")
        }
        _ => {
            bytes = b"definitely not a checkpoint".to_vec();
            "garbage".to_string()
        }
    };
    std::fs::write(file, &bytes)?;
    Ok(what)
}

/// Starts the driver again with the runtime's view of live pods; with `twice`, kills
/// it once more in the middle of that Synchronize.
async fn restart(c: &mut Cluster, w: &World, twice: bool, rng: &mut fastrand::Rng) -> Result<()> {
    let rounds = if twice { 2 } else { 1 };
    for r in 0..rounds {
        let running = w
            .pods
            .iter()
            .filter(|p| p.phase == Phase::Running)
            .map(PodModel::sandbox)
            .collect();
        relaunch(c, &w.topo, &w.failpoints, running).await?;
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

/// Registers the (re)started driver with a fresh fake kubelet. The killed driver's
/// sockets are still there until the new one replaces them; kubelet retries on a
/// refused connection, and so does this.
async fn reconnect(c: &mut Cluster, topo: &Topology) -> Result<()> {
    let (registered, dra) = register_again(topo, &c.driver).await?;
    c.dra = dra;
    c.registered = registered;
    Ok(())
}

/// [`reconnect`]'s registration: (the registration, its DRA client).
async fn register_again(
    topo: &Topology,
    driver: &scenario::Driver,
) -> Result<(crate::kubelet::Registered, DraClient)> {
    let t = Instant::now();
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
                    driver.log_text()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Ok((registered, dra))
}

/// Starts `netclaim run` again beside real containerd: kubelet registration (retried
/// while the killed driver's socket lingers), then containerd's plugin registration.
async fn restart_real(c: &mut crate::containerd::RealCluster, topo: &Topology) -> Result<()> {
    c.side.driver.kill9()?;
    let from = c.runtime.log_len();
    c.side.driver = scenario::Driver::start(topo, c.side.api.kubeconfig_path(), "1s")?;
    let (registered, dra) = register_again(topo, &c.side.driver).await?;
    c.side.dra = dra;
    c.side.registered = registered;
    c.runtime
        .wait_plugin("netclaim", from)
        .await
        .with_context(|| c.side.driver.log_text())?;
    Ok(())
}

/// Repeats what kubelet repeats until the world matches the model (kubelet retries
/// a refused prepare or unprepare; here for up to 5 s each).
async fn converge(
    c: &mut Cluster,
    pods: &mut [PodModel],
    report: &mut ChaosReport,
    round: usize,
) -> Result<()> {
    for p in pods.iter_mut() {
        let t = Instant::now();
        loop {
            let err = match p.phase {
                // A prepare that was cut off is repeated; it is idempotent.
                Phase::Prepared | Phase::Running => {
                    prepare_with(&c.dra, &p.claim, &p.claim_uid).await?
                }
                // Repeated too, but a stopped pod's answer does not matter.
                Phase::Stopped => {
                    let _ = prepare_with(&c.dra, &p.claim, &p.claim_uid).await?;
                    String::new()
                }
                Phase::Unprepared => unprepare_with(&c.dra, &p.claim, &p.claim_uid).await?,
            };
            if err.is_empty() {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                report.found(
                    "mismatched",
                    &p.name,
                    "kubelet",
                    round,
                    format!("{:?} refused for 5 s after a restart: {err}", p.phase),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Synchronize runs in the background after its answer: give it time to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// The claim status converges: every device of a live pod is reported Ready.
async fn check_status(c: &Cluster, pods: &[PodModel], round: usize, report: &mut ChaosReport) {
    let views: Vec<PodView> = pods.iter().map(PodModel::view).collect();
    let phases: Vec<Phase> = pods.iter().map(|p| p.phase).collect();
    check_status_in(&c.api, &views, &phases, round, report).await
}

async fn check_status_in(
    api: &crate::apiserver::FakeApiServer,
    pods: &[PodView<'_>],
    phases: &[Phase],
    round: usize,
    report: &mut ChaosReport,
) {
    for (p, _) in pods
        .iter()
        .zip(phases)
        .filter(|(_, phase)| **phase == Phase::Running)
    {
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
                api.get("ResourceClaim", "default", p.claim)
                    .filter(|cl| ready(cl))
            })
            .await;
        if converged.is_err() {
            let now = api.get("ResourceClaim", "default", p.claim);
            report.found(
                "mismatched",
                p.name,
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
/// the pod runs (the kernel side was checked by [`inspect`]), and its mirror holds the
/// same records. Damaged copies moved aside by a corrupt round are removed afterwards.
fn check_checkpoint(w: &World, round: usize, report: &mut ChaosReport) -> Result<()> {
    use netclaim::state::{decode_entry, store::MIRROR_DIR};
    // The mirror as the driver left it, before opening the store repairs anything.
    let mut mirror = BTreeMap::new();
    // No directory yet: nothing was ever written.
    let entries = std::fs::read_dir(w.state.join(MIRROR_DIR))
        .into_iter()
        .flatten()
        .flatten();
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(uid) = name.strip_suffix(".claim") {
            match decode_entry(uid, &std::fs::read(e.path())?) {
                Ok(plans) => {
                    mirror.insert(uid.to_string(), plans);
                }
                Err(err) => report.found(
                    "mismatched",
                    "checkpoint",
                    &format!("mirror {uid}"),
                    round,
                    format!("a mirror record does not decode after a clean stop: {err}"),
                ),
            }
        }
    }
    let store = netclaim::state::StateStore::open(&w.state).context("opening the checkpoint")?;
    let claims = store.list().context("reading the checkpoint")?;
    drop(store);
    let primary: BTreeMap<String, _> = claims
        .iter()
        .map(|c| (c.claim.uid.clone(), c.clone()))
        .collect();
    if primary != mirror {
        report.found(
            "mismatched",
            "checkpoint",
            "mirror",
            round,
            format!(
                "the mirror differs from the checkpoint file: file has {:?}, mirror {:?}",
                primary.keys().collect::<Vec<_>>(),
                mirror.keys().collect::<Vec<_>>()
            ),
        );
    }
    for p in &w.pods {
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
    // Damaged copies moved aside: kept only for the round's post-mortem.
    for dir in [w.state.clone(), w.state.join(MIRROR_DIR)] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(".corrupt-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Runs a campaign in a topology of its own.
pub fn run(cfg: ChaosConfig) -> Result<ChaosReport> {
    if cfg.pods == 0 || cfg.pods > 15 {
        bail!("pods: 1 to 15 (each has two NICs of the 31 the addressing plan allows)");
    }
    let topo = Arc::new(Topology::with_nics("ch", cfg.pods * 2)?);
    let node = topo.node.path().to_path_buf();
    let t = topo.clone();
    scenario::run_in_netns(&node, move || campaign(t, cfg))
}

// ---------------------------------------------------------------------------------
// The real containerd tier: `kill -9` during crictl runp, rmp, kubelet's prepare and
// unprepare, and the restart's Synchronize.
// ---------------------------------------------------------------------------------

/// A pod as the real runtime has it: its sandbox and namespace while it runs.
struct RealPod {
    name: String,
    uid: String,
    claim: String,
    claim_uid: String,
    nics: Vec<String>,
    sandbox: Option<String>,
    netns: Option<PathBuf>,
    phase: Phase,
}

impl RealPod {
    fn view(&self) -> PodView<'_> {
        PodView {
            name: &self.name,
            claim: &self.claim,
            nics: &self.nics,
            netns: self.netns.as_deref(),
        }
    }
}

/// Sends SIGKILL to the driver after `delay`, from a thread of its own, so the kill
/// lands while the caller blocks in `crictl`.
fn kill_later(driver: &scenario::Driver, delay: Duration) -> std::thread::JoinHandle<()> {
    let pid = driver.pid();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    })
}

/// Removes every sandbox of pod `name` (a start that failed can leave one NotReady).
fn remove_sandboxes(rt: &crate::containerd::Containerd, name: &str) {
    if let Ok(ids) = rt.crictl_ok(&["pods", "--name", name, "-q"]) {
        for id in ids.split_whitespace() {
            let _ = rt.remove_pod(id);
        }
    }
}

/// Runs a kill-only campaign against real containerd (see the module docs; the mix
/// does not apply). Call on a thread in `topo.node`.
async fn campaign_real(
    topo: Arc<Topology>,
    cfg: ChaosConfig,
    peers: crate::containerd::Peers,
) -> Result<ChaosReport> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut report = ChaosReport {
        seed: cfg.seed,
        ..Default::default()
    };
    let nics: Vec<String> = (1..=cfg.pods * 2).map(nic_name).collect();
    for conf in ["all", "default"] {
        topo.node.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{conf}.accept_dad=0")],
        )?;
    }
    for i in 1..=nics.len() {
        topo.node.exec(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.accept_dad=0", nic_name(i)),
            ],
        )?;
        furnish_home(&topo.node, i)?;
    }
    settle_ipv6(topo.node.path()).await?;
    let mut c = crate::containerd::bring_up(&topo, peers, "chr", Duration::from_secs(2)).await?;
    let devices = scenario::wait_devices_of(&c.side.api, &nics, Duration::from_secs(30)).await?;
    let routes = routes_in(topo.node.path())?;
    let mut home = BTreeMap::new();
    for l in links_in(topo.node.path())? {
        if nics.contains(&l.name) {
            home.insert(l.name.clone(), home_facts(topo.node.path(), &l, &routes)?);
        }
    }
    let mut pods = Vec::new();
    for p in 0..cfg.pods {
        let pod = RealPod {
            name: format!("chaos-real-{p}"),
            uid: format!("pod-uid-chaos-real-{p}"),
            claim: format!("chaos-real-{p}"),
            claim_uid: format!("claim-uid-chaos-real-{p}"),
            nics: vec![nic_name(2 * p + 1), nic_name(2 * p + 2)],
            sandbox: None,
            netns: None,
            phase: Phase::Unprepared,
        };
        let claimed: Vec<ClaimDevice> = pod
            .nics
            .iter()
            .enumerate()
            .map(|(j, nic)| ClaimDevice {
                request: format!("nic{}", j + 1),
                device: devices[nic].clone(),
                parameters: chaos_parameters(j + 1),
            })
            .collect();
        c.side.api.put(claim_with_devices(
            &pod.claim,
            &pod.claim_uid,
            &claimed,
            &pod.name,
            &pod.uid,
        ))?;
        pods.push(pod);
    }

    for round in 0..cfg.faults {
        let i = rng.usize(..pods.len());
        let step = Step::next(pods[i].phase, &mut rng, true);
        let delay = Duration::from_millis(rng.u64(0..80));
        report.count(format!("containerd: kill during {}", step.name()));
        report.doing(format!(
            "containerd: kill -9 after {} ms during {} {}",
            delay.as_millis(),
            step.name(),
            pods[i].name
        ));
        let p = &mut pods[i];
        match step {
            Step::Prepare | Step::Unprepare => {
                let dra = &c.side.dra;
                let call = async {
                    if step == Step::Prepare {
                        prepare_with(dra, &p.claim, &p.claim_uid).await
                    } else {
                        unprepare_with(dra, &p.claim, &p.claim_uid).await
                    }
                };
                let killer = kill_later(&c.side.driver, delay);
                let _ = call.await;
                let _ = killer.join();
                p.phase = p_after(step, p.phase);
            }
            Step::Run => {
                let killer = kill_later(&c.side.driver, delay);
                let started = tokio::task::block_in_place(|| c.runtime.runp(&p.name, &p.uid))?;
                let _ = killer.join();
                match started {
                    Ok((id, _)) => {
                        p.netns = Some(c.runtime.pod_netns(&id)?);
                        p.sandbox = Some(id);
                        p.phase = Phase::Running;
                    }
                    Err(e) => {
                        report.doing.push_str(&format!("; runp failed: {e}"));
                        tokio::task::block_in_place(|| remove_sandboxes(&c.runtime, &p.name));
                    }
                }
            }
            Step::Stop => {
                // A veth dies with the namespace containerd removes at stop, so the
                // kill lands once the stop's give-back has the NICs home (during
                // rmp): see the report for why stop hooks are cut only in the
                // stand-in campaign. StopPodSandbox answers before the give-back; a
                // kill before the NICs are home is a kill during the stop.
                if let Some(id) = p.sandbox.take() {
                    tokio::task::block_in_place(|| c.runtime.stop_pod(&id))?;
                    let t = Instant::now();
                    while !p.nics.iter().all(|n| {
                        scenario::link_facts_at(topo.node.path(), n).is_ok_and(|l| l.is_some())
                    }) && t.elapsed() < Duration::from_secs(5)
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let killer = kill_later(&c.side.driver, delay);
                    tokio::task::block_in_place(|| c.runtime.remove_pod(&id))?;
                    let _ = killer.join();
                }
                p.netns = None;
                p.phase = Phase::Stopped;
            }
            Step::Synchronize => {
                restart_real(&mut c, &topo).await?;
                let killer = kill_later(&c.side.driver, delay);
                let _ = killer.join();
            }
        }
        restart_real(&mut c, &topo).await?;
        // kubelet repeats prepare and unprepare until they succeed.
        for p in pods.iter_mut() {
            let t = Instant::now();
            loop {
                let err = match p.phase {
                    Phase::Unprepared => {
                        unprepare_with(&c.side.dra, &p.claim, &p.claim_uid).await?
                    }
                    Phase::Stopped => {
                        let _ = prepare_with(&c.side.dra, &p.claim, &p.claim_uid).await?;
                        String::new()
                    }
                    _ => prepare_with(&c.side.dra, &p.claim, &p.claim_uid).await?,
                };
                if err.is_empty() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(5) {
                    report.found(
                        "mismatched",
                        &p.name,
                        "kubelet",
                        round,
                        format!("{:?} refused for 5 s: {err}", p.phase),
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let views: Vec<PodView> = pods.iter().map(RealPod::view).collect();
        let phases: Vec<Phase> = pods.iter().map(|p| p.phase).collect();
        let found = inspect_settled(&topo, &views, &phases, &home).await?;
        report.add(found, round);
        check_status_in(&c.side.api, &views, &phases, round, &mut report).await;
        report.faults += 1;
    }
    // Clean end: every pod stopped and removed, every claim unprepared, NICs home.
    report.doing("containerd: clean end".into());
    for p in pods.iter_mut() {
        if let Some(id) = p.sandbox.take() {
            tokio::task::block_in_place(|| c.runtime.stop_pod(&id))?;
            tokio::task::block_in_place(|| c.runtime.remove_pod(&id))?;
        }
        p.netns = None;
        let t = Instant::now();
        loop {
            let err = unprepare_with(&c.side.dra, &p.claim, &p.claim_uid).await?;
            if err.is_empty() {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                report.found("mismatched", &p.name, "unprepare", cfg.faults, err);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p.phase = Phase::Unprepared;
    }
    let views: Vec<PodView> = pods.iter().map(RealPod::view).collect();
    let phases: Vec<Phase> = pods.iter().map(|p| p.phase).collect();
    let found = inspect_settled(&topo, &views, &phases, &home).await?;
    report.add(found, cfg.faults);
    if let Some(dest) = std::env::var_os("NETCLAIM_CHAOS_LOG") {
        let _ = std::fs::copy(&c.side.driver.log, &dest);
    }
    c.stop_driver()?;
    Ok(report)
}

/// What kubelet believes after it asked for `step` (it repeats until it succeeds).
fn p_after(step: Step, phase: Phase) -> Phase {
    match step {
        Step::Prepare => Phase::Prepared,
        Step::Unprepare => Phase::Unprepared,
        _ => phase,
    }
}

/// Runs a kill-only campaign against the real containerd (`crate::containerd`), in a
/// topology of its own; `cfg.mix` does not apply.
pub fn run_real(cfg: ChaosConfig, peers: crate::containerd::Peers) -> Result<ChaosReport> {
    if cfg.pods == 0 || cfg.pods > 15 {
        bail!("pods: 1 to 15 (each has two NICs of the 31 the addressing plan allows)");
    }
    let topo = Arc::new(Topology::with_nics("chr", cfg.pods * 2)?);
    let node = topo.node.path().to_path_buf();
    let t = topo.clone();
    scenario::run_in_netns(&node, move || campaign_real(t, cfg, peers))
}
