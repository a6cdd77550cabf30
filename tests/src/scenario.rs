//! The whole life of a claimed interface, end to end, with the real `netclaim` binary:
//! a fake API server, a fake kubelet and a fake NRI runtime (all speaking the real
//! protocols), real namespaces as node, pod and "wire", a veth end as the node's NIC,
//! and real eBPF programs. The e2e tests assert on it; `cargo xtask demo` narrates it.
//!
//! ```text
//!  node ns (plays the host)          wire ns
//!   eth1 192.0.2.50/24 mtu 1400 <veth> peer1 192.0.2.1/24
//!   netclaim run, fake apiserver          lo 198.51.100.1, 203.0.113.1
//!  pod ns: gets eth1 as net1 192.0.2.10/24, route 198.51.100.0/24 via 192.0.2.1
//! ```
//! The scenario's own async code runs on threads that entered the node namespace, so
//! the API server's 127.0.0.1 is the node's loopback, which is where the driver (a
//! child process started from there) looks for it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netclaim::kubelet::ClaimRef;
use serde_json::{json, Value};

use crate::{
    apiserver::FakeApiServer,
    kubelet::{DraClient, DraVersion, FakeKubelet, Registered, Verdict},
    netenv::{veth, TestBpfRoot, TestNetns},
    runtime::{pod, FakeRuntime, HookOutcome, Mode, RuntimeConfig},
    traffic::{udp_send, UdpSink},
};

pub const DRIVER: &str = "netclaim.dev";
pub const NODE: &str = "demo-node";
pub const NIC: &str = "eth1";
pub const POD_IF: &str = "net1";
pub const ALLOWED: &str = "198.51.100.1:9000";
pub const FORBIDDEN: &str = "203.0.113.1:9000";
/// Where the driver serves /metrics, /healthz and /readyz (node namespace loopback).
pub const METRICS: &str = "127.0.0.1:9177";

/// A plain HTTP/1.1 GET against the driver's metrics address: (status code, body).
pub fn http_get(path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(METRICS)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// How the scenario talks to a human (demo) or not (tests).
pub trait Narrator: Send + Sync {
    fn step(&self, n: u32, title: &str);
    fn show(&self, label: &str, body: &str);
    fn progress(&self, what: &str, elapsed: Duration);
}

/// Prints nothing but step titles (tests: visible with --nocapture).
pub struct Quiet;

impl Narrator for Quiet {
    fn step(&self, n: u32, title: &str) {
        println!("[e2e] {n}. {title}");
    }
    fn show(&self, _: &str, _: &str) {}
    fn progress(&self, _: &str, _: Duration) {}
}

/// Finds the `netclaim` binary next to the running executable's profile directory.
pub fn netclaim_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETCLAIM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("netclaim");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the netclaim binary was not found near {} (build it: cargo build -p netclaim, or run through cargo xtask test)",
        exe.display()
    )
}

/// Runs `work` on a thread that entered `netns`, inside a multi-thread tokio runtime
/// whose workers (created from that thread) are in the same namespace.
pub fn run_in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = netns.to_path_buf();
    std::thread::spawn(move || -> Result<T> {
        let f = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(work())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("scenario thread panicked"))?
}

/// Size of the tmpfs [`Topology::state_on_tmpfs`] mounts.
pub const STATE_TMPFS_SIZE: &str = "64M";

/// The namespaces and directories of one run; all removed on drop.
pub struct Topology {
    pub node: TestNetns,
    pub wire: TestNetns,
    pub pod: TestNetns,
    pub bpf: TestBpfRoot,
    pub dir: tempfile::TempDir,
}

impl Topology {
    pub fn new(tag: &str) -> Result<Self> {
        let node = TestNetns::new(&format!("{tag}n"))?;
        let wire = TestNetns::new(&format!("{tag}w"))?;
        let pod = TestNetns::new(&format!("{tag}p"))?;
        veth(&node, NIC, &wire, "peer1")?;
        node.ip(&["link", "set", NIC, "mtu", "1400"])?;
        wire.ip(&["link", "set", "peer1", "mtu", "1400"])?;
        node.ip(&["addr", "add", "192.0.2.50/24", "dev", NIC])?;
        wire.ip(&["addr", "add", "192.0.2.1/24", "dev", "peer1"])?;
        for a in ["198.51.100.1/32", "203.0.113.1/32"] {
            wire.ip(&["addr", "add", a, "dev", "lo"])?;
        }
        Ok(Self {
            node,
            wire,
            pod,
            bpf: TestBpfRoot::new(tag)?,
            dir: tempfile::tempdir()?,
        })
    }

    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }
    /// The driver's `--state-dir` (the checkpoint and its journal).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// Mounts a tmpfs of [`STATE_TMPFS_SIZE`] at [`Self::state_dir`], as the
    /// DaemonSet's `/var/run/netclaim` is on a node; unmounted when the result drops,
    /// which must be before the topology.
    pub fn state_on_tmpfs(&self) -> Result<crate::tmpfs::SmallFs> {
        crate::tmpfs::SmallFs::mount(&self.state_dir(), STATE_TMPFS_SIZE)
    }
    pub fn nri_socket(&self) -> PathBuf {
        self.dir.path().join("nri.sock")
    }
}

/// The driver process; stopped with SIGTERM on drop.
pub struct Driver {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Driver {
    /// Starts `netclaim run` in the calling thread's namespace.
    pub fn start(topo: &Topology, kubeconfig: &Path, status_interval: &str) -> Result<Self> {
        Self::start_with_env(topo, kubeconfig, status_interval, &[])
    }

    /// [`Driver::start`] with extra environment variables (e.g. the fail point
    /// control file of `cargo xtask chaos`).
    pub fn start_with_env(
        topo: &Topology,
        kubeconfig: &Path,
        status_interval: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let log = topo.dir.path().join("netclaim.log");
        // Appended to, so a restarted driver's log follows the earlier one.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(netclaim_binary()?);
        cmd.envs(env.iter().copied());
        die_with_parent(&mut cmd);
        let child = cmd
            .args([
                "--log",
                "info,netclaim=debug",
                "run",
                "--node-name",
                NODE,
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .arg("--kubelet-dir")
            .arg(topo.kubelet_dir())
            .arg("--state-dir")
            .arg(topo.state_dir())
            .arg("--bpf-root")
            .arg(topo.bpf.path())
            .arg("--nri-socket")
            .arg(topo.nri_socket())
            .args([
                // The node namespace has its own loopback: a fixed port cannot collide.
                "--metrics-address",
                METRICS,
                "--status-interval",
                status_interval,
            ])
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("starting netclaim run")?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    /// The driver's process id while it runs (to signal it from another thread).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (`kill -9`) and reap: the driver gets no chance to clean up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("netclaim did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Makes a child process get SIGKILL when the thread that spawned it dies, so a test
/// harness killed from outside (a timeout, Ctrl-C) leaves no driver behind holding
/// namespaces, pins and locks. (Spawn from a thread that lives as long as the child:
/// the scenario's runtime threads do.)
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Waits until `check` returns `Some`, reporting progress; fails after `timeout`.
pub async fn wait_for<T>(
    narrator: &dyn Narrator,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            narrator.progress(what, started.elapsed());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A claim allocated to the node's NIC the way the scheduler would, reserved for one pod.
pub fn claim(
    name: &str,
    uid: &str,
    device: &str,
    pod_name: &str,
    pod_uid: &str,
    parameters: Value,
) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"devices": {
            "requests": [{"name": "nic", "exactly": {"deviceClassName": DRIVER}}],
            "config": [{"requests": ["nic"], "opaque": {"driver": DRIVER, "parameters": parameters.clone()}}]
        }},
        "status": {
            "allocation": {"devices": {
                "results": [{"request": "nic", "driver": DRIVER, "pool": NODE, "device": device}],
                "config": [{"source": "FromClaim", "requests": ["nic"],
                            "opaque": {"driver": DRIVER, "parameters": parameters}}]
            }},
            "reservedFor": [{"resource": "pods", "name": pod_name, "uid": pod_uid}]
        }
    })
}

/// The claim config of the happy path.
pub fn good_parameters() -> Value {
    json!({
        "interface": {"name": POD_IF, "addresses": ["192.0.2.10/24"], "mtu": 1500},
        "routes": [{"destination": "198.51.100.0/24", "gateway": "192.0.2.1"}],
        "dataplane": {"enforceRoutes": true, "antiSpoofing": true, "ingressFilter": true}
    })
}

/// The running stand-ins plus the driver.
pub struct Cluster {
    pub api: FakeApiServer,
    pub runtime: FakeRuntime,
    pub dra: DraClient,
    pub driver: Driver,
    pub device: String,
    /// The plugin as the fake kubelet registered it (health watch, other versions).
    pub registered: Registered,
}

impl Cluster {
    /// SIGKILL (`kill -9`) of the driver, then a new one with `env` (status every
    /// second), registered with the runtime again.
    pub async fn kill_and_restart(
        &mut self,
        topo: &Topology,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<()> {
        self.kill_then_restart(topo, env, || Ok(())).await
    }

    /// [`Self::kill_and_restart`] with `meanwhile` done while no driver runs (what a
    /// killed driver left half done, set up by the test).
    pub async fn kill_then_restart(
        &mut self,
        topo: &Topology,
        env: &[(&str, &std::ffi::OsStr)],
        meanwhile: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let registered = self.runtime.wait_registered(Duration::from_secs(5)).await?;
        self.driver.kill9()?;
        meanwhile()?;
        self.driver = Driver::start_with_env(topo, self.api.kubeconfig_path(), "1s", env)?;
        self.runtime
            .wait_registration_after(registered.generation, Duration::from_secs(20))
            .await
            .with_context(|| self.driver.log_text())?;
        Ok(())
    }
}

/// Steps 1–2: stand-ins and driver up, registered, devices published.
pub async fn bring_up(topo: &Topology, mode: Mode, narrator: &dyn Narrator) -> Result<Cluster> {
    bring_up_with(topo, RuntimeConfig::new(mode), narrator).await
}

/// [`bring_up`] with a runtime configuration of the caller's choosing (e.g. a larger
/// hook budget for a benchmark that sends many hooks at once).
pub async fn bring_up_with(
    topo: &Topology,
    config: RuntimeConfig,
    narrator: &dyn Narrator,
) -> Result<Cluster> {
    bring_up_env(topo, config, narrator, &[]).await
}

/// [`bring_up_with`] with extra environment variables for the driver (e.g.
/// `FAILPOINTS` for a driver built with fail points).
pub async fn bring_up_env(
    topo: &Topology,
    config: RuntimeConfig,
    narrator: &dyn Narrator,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<Cluster> {
    narrator.step(
        1,
        "start the fake API server, the fake NRI runtime and `netclaim run` in the node namespace",
    );
    let runtime = FakeRuntime::start(topo.nri_socket(), config).await?;
    let side = driver_side_env(topo, narrator, env, || async {
        runtime.wait_registered(Duration::from_secs(20)).await
    })
    .await?;
    Ok(Cluster {
        api: side.api,
        runtime,
        dra: side.dra,
        driver: side.driver,
        device: side.device,
        registered: side.registered,
    })
}

/// Everything but the container runtime: API server, driver, kubelet registration,
/// the published device.
pub struct DriverSide {
    pub api: FakeApiServer,
    pub dra: DraClient,
    pub driver: Driver,
    pub device: String,
    pub registered: Registered,
}

/// Starts the fake API server and `netclaim run` (whose runtime must already listen
/// on `topo.nri_socket()`), registers it with the fake kubelet, waits for
/// `nri_registered` and for `eth1` to be published.
pub async fn driver_side<R, F, Fut>(
    topo: &Topology,
    narrator: &dyn Narrator,
    nri_registered: F,
) -> Result<DriverSide>
where
    R: std::fmt::Debug,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<R>>,
{
    driver_side_env(topo, narrator, &[], nri_registered).await
}

/// [`driver_side`] with extra environment variables for the driver.
pub async fn driver_side_env<R, F, Fut>(
    topo: &Topology,
    narrator: &dyn Narrator,
    env: &[(&str, &std::ffi::OsStr)],
    nri_registered: F,
) -> Result<DriverSide>
where
    R: std::fmt::Debug,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<R>>,
{
    let api = FakeApiServer::start().await?;
    api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": "node-uid-1"}}))?;
    api.put(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        "spec": {"selectors": [{"cel": {"expression": format!("device.driver == \"{DRIVER}\"")}}]}
    }))?;
    let driver = Driver::start_with_env(topo, api.kubeconfig_path(), "1s", env)?;
    let kubelet = FakeKubelet::new(topo.kubelet_dir());
    let registered = kubelet
        .wait_and_register(DRIVER, Verdict::Accept, Duration::from_secs(20))
        .await
        .with_context(|| format!("registration; driver log:\n{}", driver.log_text()))?;
    narrator.show(
        "kubelet registration (GetInfo)",
        &format!("{:#?}", registered.info),
    );
    let reg = nri_registered()
        .await
        .with_context(|| format!("NRI registration; driver log:\n{}", driver.log_text()))?;
    narrator.show("NRI registration", &format!("{reg:?}"));
    let dra = registered.dra(DraVersion::V1).await?;

    narrator.step(2, "devices published as a ResourceSlice");
    let slice = wait_for(
        narrator,
        "the ResourceSlice with eth1",
        Duration::from_secs(20),
        || {
            api.list("ResourceSlice").into_iter().find(|s| {
                s["spec"]["devices"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|d| d["attributes"][format!("{DRIVER}/ifName")]["string"] == NIC)
                })
            })
        },
    )
    .await
    .with_context(|| format!("driver log:\n{}", driver.log_text()))?;
    let device = slice["spec"]["devices"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["attributes"][format!("{DRIVER}/ifName")]["string"] == NIC)
                .and_then(|d| d["name"].as_str())
        })
        .context("device name")?
        .to_string();
    narrator.show("ResourceSlice", &serde_yaml::to_string(&slice)?);
    Ok(DriverSide {
        api,
        dra,
        driver,
        device,
        registered,
    })
}

/// [`bring_up`] with pod `web-0`'s claim `web` prepared ([`prepare_web`]).
pub async fn bring_up_prepared(topo: &Topology) -> Result<Cluster> {
    let c = bring_up(topo, Mode::Current, &Quiet).await?;
    prepare_web(&c).await?;
    Ok(c)
}

/// Puts pod `web-0`'s claim `web` on the NIC, configured by [`good_parameters`], and
/// prepares it (the device parked at home); a prepare error fails.
pub async fn prepare_web(c: &Cluster) -> Result<()> {
    c.api.put(claim(
        "web",
        "uid-web",
        &c.device,
        "web-0",
        "pod-uid-web",
        good_parameters(),
    ))?;
    let err = prepare(c, "web", "uid-web").await?;
    anyhow::ensure!(err.is_empty(), "prepare failed: {err}");
    Ok(())
}

/// Prepares a claim through the fake kubelet; returns the per-claim error (empty = ok).
pub async fn prepare(c: &Cluster, name: &str, uid: &str) -> Result<String> {
    prepare_with(&c.dra, name, uid).await
}

/// [`prepare`] through any kubelet connection.
pub async fn prepare_with(dra: &DraClient, name: &str, uid: &str) -> Result<String> {
    let answers = dra
        .prepare(&[ClaimRef {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        }])
        .await?;
    let answer = answers.get(uid).context("no answer for the claim")?;
    Ok(answer.error.clone())
}

pub async fn unprepare(c: &Cluster, name: &str, uid: &str) -> Result<String> {
    unprepare_with(&c.dra, name, uid).await
}

/// [`unprepare`] through any kubelet connection.
pub async fn unprepare_with(dra: &DraClient, name: &str, uid: &str) -> Result<String> {
    let answers = dra
        .unprepare(&[ClaimRef {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        }])
        .await?;
    Ok(answers.get(uid).cloned().unwrap_or_default())
}

pub async fn run_pod(c: &Cluster, topo: &Topology, uid: &str, name: &str) -> HookOutcome {
    run_pod_in(c, topo.pod.path(), uid, name).await
}

pub async fn stop_pod(
    c: &Cluster,
    topo: &Topology,
    uid: &str,
    name: &str,
) -> (HookOutcome, HookOutcome) {
    stop_pod_in(c, topo.pod.path(), uid, name).await
}

/// Sends `n` datagrams from the pod to an allowed and to a forbidden destination;
/// returns how many arrived at each.
pub fn traffic(topo: &Topology, n: u32) -> Result<(u64, u64)> {
    traffic_from(topo, topo.pod.path(), "203.0.113.0/24", n)
}

/// [`traffic`] from a pod namespace given by path (e.g. one a real runtime made); the
/// pod first gets a route to `around` (holding the forbidden destination) via the
/// claim's interface, so only the data path can stop that traffic.
pub fn traffic_from(topo: &Topology, pod_netns: &Path, around: &str, n: u32) -> Result<(u64, u64)> {
    let pod = netclaim::netns::Netns::open(pod_netns)?;
    let wire = topo.wire.open();
    crate::netenv::run(
        Command::new("nsenter")
            .arg(format!("--net={}", pod_netns.display()))
            .args([
                "ip",
                "route",
                "replace",
                around,
                "via",
                "192.0.2.1",
                "dev",
                POD_IF,
            ]),
    )?;
    let allowed = UdpSink::start(&wire, ALLOWED.parse()?)?;
    let forbidden = UdpSink::start(&wire, FORBIDDEN.parse()?)?;
    let src: SocketAddr = "192.0.2.10:0".parse()?;
    // The first datagram may wait for ARP; send one and let it resolve.
    udp_send(&pod, src, ALLOWED.parse()?, 1, 32)?;
    allowed.wait_for(1, Duration::from_secs(3));
    udp_send(&pod, src, ALLOWED.parse()?, n - 1, 32)?;
    udp_send(&pod, src, FORBIDDEN.parse()?, n, 32)?;
    let got = allowed.wait_for(u64::from(n), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    Ok((got, forbidden.count()))
}

/// Our entry in the claim's `status.devices`.
pub fn status_entry(api: &FakeApiServer, name: &str) -> Option<Value> {
    let claim = api.get("ResourceClaim", "default", name)?;
    claim["status"]["devices"]
        .as_array()?
        .iter()
        .find(|d| d["driver"] == DRIVER)
        .cloned()
}

pub fn condition<'a>(entry: &'a Value, type_: &str) -> Option<&'a Value> {
    entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// `ip -j` facts of a link in a namespace: (mtu, addresses as CIDR strings).
pub fn link_facts(ns: &TestNetns, link: &str) -> Result<(u64, Vec<String>)> {
    link_facts_at(ns.path(), link)?.context("no such link")
}

/// [`link_facts`] in a namespace given by path; `None` when the link is not there.
pub fn link_facts_at(netns: &Path, link: &str) -> Result<Option<(u64, Vec<String>)>> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j", "addr", "show", "dev", link])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let Some(l) = v.get(0) else { return Ok(None) };
    let addrs = l["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|a| a["scope"] == "global")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((l["mtu"].as_u64().unwrap_or(0), addrs)))
}

// ---------------------------------------------------------------------------------
// Several NICs and claims with several devices (`cargo xtask bench pod-start`).
// ---------------------------------------------------------------------------------

/// The node's `i`-th NIC in a [`Topology::with_nics`] topology (`eth1` is the first).
pub fn nic_name(i: usize) -> String {
    format!("eth{i}")
}

impl Topology {
    /// [`Topology::new`] plus `eth2..ethK` in the node namespace, each a veth whose peer
    /// `peer2..peerK` is in the wire namespace; up, no addresses (`eth1` is as in `new`).
    pub fn with_nics(tag: &str, k: usize) -> Result<Self> {
        let topo = Self::new(tag)?;
        for i in 2..=k {
            veth(&topo.node, &nic_name(i), &topo.wire, &format!("peer{i}"))?;
        }
        Ok(topo)
    }
}

/// Waits until the published ResourceSlices carry a device for every one of
/// `ifnames`; returns interface name → device name.
pub async fn wait_devices(
    c: &Cluster,
    narrator: &dyn Narrator,
    ifnames: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, String>> {
    wait_devices_in(&c.api, narrator, ifnames, timeout)
        .await
        .with_context(|| format!("driver log:\n{}", c.driver.log_text()))
}

/// [`wait_devices`] against any API server, quietly.
pub async fn wait_devices_of(
    api: &FakeApiServer,
    ifnames: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, String>> {
    wait_devices_in(api, &Quiet, ifnames, timeout).await
}

async fn wait_devices_in(
    api: &FakeApiServer,
    narrator: &dyn Narrator,
    ifnames: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, String>> {
    let key = format!("{DRIVER}/ifName");
    wait_for(
        narrator,
        "a published device for every NIC",
        timeout,
        || {
            let mut found = BTreeMap::new();
            for slice in api.list("ResourceSlice") {
                for d in slice["spec"]["devices"].as_array().into_iter().flatten() {
                    if let (Some(ifname), Some(name)) =
                        (d["attributes"][&key]["string"].as_str(), d["name"].as_str())
                    {
                        if ifnames.iter().any(|n| n == ifname) {
                            found.insert(ifname.to_string(), name.to_string());
                        }
                    }
                }
            }
            (found.len() == ifnames.len()).then_some(found)
        },
    )
    .await
}

/// One allocated device of a claim: its request, the published device, its config.
#[derive(Clone, Debug)]
pub struct ClaimDevice {
    pub request: String,
    pub device: String,
    pub parameters: Value,
}

/// A claim with one request per device, each with its own config entry, allocated the
/// way the scheduler would and reserved for one pod.
pub fn claim_with_devices(
    name: &str,
    uid: &str,
    devices: &[ClaimDevice],
    pod_name: &str,
    pod_uid: &str,
) -> Value {
    let requests: Vec<Value> = devices
        .iter()
        .map(|d| json!({"name": d.request, "exactly": {"deviceClassName": DRIVER}}))
        .collect();
    let spec_config: Vec<Value> = devices
        .iter()
        .map(|d| json!({"requests": [d.request], "opaque": {"driver": DRIVER, "parameters": d.parameters}}))
        .collect();
    let results: Vec<Value> = devices
        .iter()
        .map(|d| json!({"request": d.request, "driver": DRIVER, "pool": NODE, "device": d.device}))
        .collect();
    let alloc_config: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({"source": "FromClaim", "requests": [d.request],
                   "opaque": {"driver": DRIVER, "parameters": d.parameters}})
        })
        .collect();
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"devices": {"requests": requests, "config": spec_config}},
        "status": {
            "allocation": {"devices": {"results": results, "config": alloc_config}},
            "reservedFor": [{"resource": "pods", "name": pod_name, "uid": pod_uid}]
        }
    })
}

/// The happy-path config for the `j`-th interface of a pod (1-based, up to 16): named
/// `net{j}`, its own /28 of 192.0.2.0/24, a route to its own /28 of 198.51.100.0/24,
/// enforcement on; so up to 16 interfaces coexist in one pod.
pub fn indexed_parameters(j: usize) -> Value {
    let base = 16 * ((j.max(1) - 1) % 16);
    json!({
        "interface": {"name": format!("net{j}"), "addresses": [format!("192.0.2.{}/28", base + 10)], "mtu": 1500},
        "routes": [{"destination": format!("198.51.100.{base}/28"), "gateway": format!("192.0.2.{}", base + 1)}],
        "dataplane": {"enforceRoutes": true, "antiSpoofing": true, "ingressFilter": true}
    })
}

/// [`run_pod`] into a namespace of the caller's choosing.
pub async fn run_pod_in(c: &Cluster, netns: &Path, uid: &str, name: &str) -> HookOutcome {
    run_pod_in_cgroup(c, netns, None, uid, name).await
}

/// [`run_pod_in`] for a pod whose cgroup the runtime names (`linux.cgroup_parent`), as
/// containerd does for kubelet's pods.
pub async fn run_pod_in_cgroup(
    c: &Cluster,
    netns: &Path,
    cgroup_parent: Option<&str>,
    uid: &str,
    name: &str,
) -> HookOutcome {
    let mut p = pod(
        &format!("sandbox-{uid}"),
        "default",
        name,
        uid,
        &netns.display().to_string(),
    );
    if let (Some(linux), Some(cgroup)) = (p.linux.as_mut(), cgroup_parent) {
        linux.cgroup_parent = cgroup.to_string();
    }
    c.runtime.run_pod(&p).await
}

/// [`stop_pod`] of a pod started with [`run_pod_in`]: (StopPodSandbox, RemovePodSandbox).
pub async fn stop_pod_in(
    c: &Cluster,
    netns: &Path,
    uid: &str,
    name: &str,
) -> (HookOutcome, HookOutcome) {
    let p = pod(
        &format!("sandbox-{uid}"),
        "default",
        name,
        uid,
        &netns.display().to_string(),
    );
    let stop = c.runtime.stop_pod(&p).await;
    let remove = c.runtime.remove_pod(&p).await;
    (stop, remove)
}
