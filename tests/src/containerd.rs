//! The real container runtime of the test suite: containerd 2.3.4 (NRI 0.12.0, ttrpc
//! 1.2.8) built from its upstream tag, driven with `crictl` the way kubelet drives it.
//!
//! Each [`Containerd`] is private to one test: it runs inside the namespace that plays
//! the node (so its CNI bridge and the pods' veths live there), with its own root, state,
//! sockets, CNI configuration and cgroup parent under one temporary directory, and its
//! NRI socket where the test's `netclaim run` connects. Nothing touches a system
//! containerd or the machine's root namespace. `cargo xtask setup` installs the binaries
//! and builds the sandbox image (`tests/pause/pause.c`); a machine without them skips
//! these tests loudly, unless `NETCLAIM_REQUIRE_REAL_RUNTIME=1` (set by `.ci/run`), when
//! they fail.
//!
//! Clean-up on drop, even after a failure: every pod is removed, containerd is stopped,
//! any shim or pod process still running in this runtime's cgroup is killed by PID, the
//! mounts under the directory are detached and the cgroups removed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Where `cargo xtask setup` installs containerd (overridable for a machine that has
/// it elsewhere).
const INSTALL_DIR: &str = "/opt/netclaim/containerd-2.3.4/bin";
/// The sandbox image `cargo xtask setup` builds.
pub const PAUSE_IMAGE: &str = "netclaim.test/pause:1";
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pods' CNI network (eth0), a documentation range no other test routes.
pub const POD_CIDR: &str = "203.0.113.128/25";

/// What a real-runtime test needs from the machine.
#[derive(Clone, Debug)]
pub struct Peers {
    pub bin: PathBuf,
    pub pause_archive: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The peers, or why they cannot be used here.
pub fn peers() -> std::result::Result<Peers, String> {
    let bin = std::env::var_os("NETCLAIM_CONTAINERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(INSTALL_DIR));
    for b in ["containerd", "containerd-shim-runc-v2", "ctr", "crictl"] {
        if !bin.join(b).is_file() {
            return Err(format!(
                "{} is missing (run `cargo xtask setup`, which installs containerd 2.3.4 from ../shared/real-peers)",
                bin.join(b).display()
            ));
        }
    }
    if !Path::new(CNI_BIN_DIR).join("bridge").is_file() {
        return Err(format!(
            "{CNI_BIN_DIR}/bridge is missing (Debian package containernetworking-plugins)"
        ));
    }
    if Command::new("runc").arg("--version").output().is_err() {
        return Err("runc is not on PATH (Debian package runc)".into());
    }
    let pause_archive = repo_root().join("target/real-peers/pause-oci.tar");
    if !pause_archive.is_file() {
        return Err(format!(
            "the sandbox image {} is missing (cargo xtask setup builds it)",
            pause_archive.display()
        ));
    }
    Ok(Peers { bin, pause_archive })
}

/// The peers for test `test`, or `None` after saying loudly why it is skipped. With
/// `NETCLAIM_REQUIRE_REAL_RUNTIME=1` a missing peer is a failure instead.
pub fn peers_or_skip(test: &str) -> Option<Peers> {
    match peers() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("NETCLAIM_REQUIRE_REAL_RUNTIME").as_deref() == Ok("1") => {
            panic!("{test}: the real-runtime tier is required here but cannot run: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED {test}: the real containerd tier cannot run on this machine: {why} ***\n"
            );
            None
        }
    }
}

/// Settings of one containerd.
#[derive(Clone, Debug)]
pub struct Options {
    /// NRI `plugin_request_timeout`: the budget of every hook.
    pub request_timeout: Duration,
    /// Where the NRI socket goes (where `netclaim run --nri-socket` connects).
    pub nri_socket: PathBuf,
    /// `netclaim-cni`, chained after the pods' network, or none.
    pub cni_plugin: Option<CniPlugin>,
}

/// netclaim's CNI plugin as a node installs it: the binary in a CNI bin directory
/// (here one of this runtime's own, under the name `netclaim`) and an entry last in the
/// network's plugin list.
#[derive(Clone, Debug)]
pub struct CniPlugin {
    pub binary: PathBuf,
    /// The driver's CNI socket (`netclaim run --cni-socket`, by default in its state
    /// directory).
    pub socket: PathBuf,
}

impl CniPlugin {
    /// The `netclaim-cni` built next to the `netclaim` binary, for a driver whose state
    /// directory is `state_dir`.
    pub fn beside_driver(state_dir: &Path) -> Result<Self> {
        let binary = crate::scenario::netclaim_binary()?.with_file_name("netclaim-cni");
        if !binary.is_file() {
            bail!(
                "{} is missing (cargo build -p netclaim --bins builds it)",
                binary.display()
            );
        }
        Ok(Self {
            binary,
            socket: state_dir.join("cni.sock"),
        })
    }
}

/// One containerd, running in the node namespace.
pub struct Containerd {
    peers: Peers,
    node: PathBuf,
    dir: tempfile::TempDir,
    opts: Options,
    child: Option<Child>,
    /// The cgroup parent (`/netclaim-rt-…`) of every pod of this runtime.
    pub cgroup_parent: String,
    log: PathBuf,
    pods: std::sync::Mutex<Vec<String>>,
}

fn config(dir: &Path, opts: &Options) -> String {
    let d = dir.display();
    format!(
        r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "debug"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins.'io.containerd.cri.v1.runtime']
  # These machines do not give CAP_SYS_RESOURCE; runc fails without this.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN_DIR}", "{d}/cni-bin"]
    conf_dir = "{d}/cni"
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = "{nri}"
  plugin_path = "{d}/nri-plugins"
  plugin_config_path = "{d}/nri-conf"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "{timeout}ms"
"#,
        nri = opts.nri_socket.display(),
        timeout = opts.request_timeout.as_millis(),
    )
}

fn cni_config(dir: &Path, plugin: Option<&CniPlugin>) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                 "dataDir": dir.join("ipam")}
    })];
    if let Some(p) = plugin {
        plugins.push(json!({
            "type": "netclaim", "socket": p.socket, "capabilities": {"cgroupPath": true}
        }));
    }
    json!({"cniVersion": "1.0.0", "name": "netclaim-test", "plugins": plugins})
}

/// The network configuration's file in the runtime's CNI configuration directory.
const CONFLIST: &str = "cni/10-netclaim-test.conflist";

/// A pod as `crictl runp` gets it.
pub fn pod_config(name: &str, uid: &str, cgroup_parent: &str, logs: &Path) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
        "log_directory": logs.join(uid),
        "linux": {"cgroup_parent": cgroup_parent}
    })
}

impl Containerd {
    /// Starts containerd in `node` and imports the sandbox image.
    pub fn start(peers: Peers, node: &Path, tag: &str, opts: Options) -> Result<Self> {
        // Sockets need a short path (108 bytes), so not under a long target directory.
        let dir = tempfile::Builder::new()
            .prefix(&format!("nc-ctd-{tag}-"))
            .tempdir_in("/tmp")?;
        std::fs::create_dir_all(dir.path().join("cni"))?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        std::fs::create_dir_all(dir.path().join("cni-bin"))?;
        if let Some(p) = &opts.cni_plugin {
            std::os::unix::fs::symlink(&p.binary, dir.path().join("cni-bin/netclaim"))?;
        }
        std::fs::write(dir.path().join("config.toml"), config(dir.path(), &opts))?;
        std::fs::write(
            dir.path().join(CONFLIST),
            serde_json::to_vec(&cni_config(dir.path(), opts.cni_plugin.as_ref()))?,
        )?;
        std::fs::write(
            dir.path().join("crictl.yaml"),
            format!(
                "runtime-endpoint: unix://{0}/containerd.sock\nimage-endpoint: unix://{0}/containerd.sock\ntimeout: 20\n",
                dir.path().display()
            ),
        )?;
        let log = dir.path().join("containerd.log");
        let mut c = Self {
            peers,
            node: node.to_path_buf(),
            cgroup_parent: format!("/netclaim-rt-{tag}-{}", std::process::id()),
            dir,
            opts,
            child: None,
            log,
            pods: Default::default(),
        };
        c.pod_cgroup_parent()?;
        c.launch()?;
        let import = c.ctr(&["images", "import"], &[c.peers.pause_archive.as_os_str()])?;
        if !import.status.success() {
            bail!(
                "importing the sandbox image: {}",
                String::from_utf8_lossy(&import.stderr)
            );
        }
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the pods' cgroup parent in the cgroup v2 hierarchy before any pod, as
    /// kubelet creates a pod's cgroup before it asks for the pod's sandbox (the socket
    /// guard of a hand-over started at the CNI ADD goes there). Removed on drop with
    /// the rest of this runtime's cgroups.
    fn pod_cgroup_parent(&self) -> Result<()> {
        let root = netclaim::datapath::guard::cgroup2_mount()?;
        let dir = root.join(self.cgroup_parent.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
    }

    /// Chains netclaim's CNI plugin after the pods' network (`on`), or takes it out, and
    /// waits until containerd's CRI has loaded the change (`crictl info` shows it):
    /// the file is replaced by a rename, which containerd's watcher reloads on.
    pub fn set_cni_chain(&self, on: bool) -> Result<()> {
        let Some(plugin) = &self.opts.cni_plugin else {
            bail!("this runtime was started without netclaim's CNI plugin");
        };
        let conf = cni_config(self.dir.path(), on.then_some(plugin));
        let tmp = self.dir.path().join("cni/.next");
        std::fs::write(&tmp, serde_json::to_vec(&conf)?)?;
        std::fs::rename(&tmp, self.dir.path().join(CONFLIST))?;
        let marker = plugin.socket.to_string_lossy().into_owned();
        let started = Instant::now();
        loop {
            let info = self.crictl(&["info"])?;
            let loaded = String::from_utf8_lossy(&info.stdout).contains(&marker);
            if info.status.success() && loaded == on {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "containerd did not load the CNI configuration with the plugin {} within 10 s",
                    if on { "in" } else { "out" }
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Spawns the daemon and waits for its CRI service to answer.
    fn launch(&mut self) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let path = format!(
            "{}:{}",
            self.peers.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // nsenter execs containerd: the child's PID is containerd's.
        let mut cmd = Command::new("nsenter");
        crate::scenario::die_with_parent(&mut cmd);
        let child = cmd
            .arg(format!("--net={}", self.node.display()))
            .arg("--")
            .arg(self.peers.bin.join("containerd"))
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if self.socket().exists() {
                let v = self.crictl(&["version"])?;
                if v.status.success() {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("containerd exited with {status}:\n{}", self.log_tail(40));
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "containerd did not answer within 20 s:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops containerd with `signal` (pods and their shims keep running, as on a
    /// real node) and waits for it to exit.
    pub fn stop_daemon(&mut self, signal: nix::sys::signal::Signal) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("containerd did not exit within 15 s of {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The sockets go with it; a restart must not see stale ones as "ready".
        let _ = std::fs::remove_file(self.socket());
        Ok(())
    }

    /// Stops containerd (SIGTERM) and starts it again on the same state.
    pub fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.stop_daemon(nix::sys::signal::Signal::SIGTERM)?;
        self.launch()?;
        Ok(t.elapsed())
    }

    /// Starts it again after [`stop_daemon`](Self::stop_daemon).
    pub fn start_again(&mut self) -> Result<()> {
        self.launch()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `crictl` against this containerd.
    pub fn crictl(&self, args: &[&str]) -> Result<Output> {
        Command::new(self.peers.bin.join("crictl"))
            .arg("--config")
            .arg(self.dir.path().join("crictl.yaml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running crictl")
    }

    /// `crictl` that must succeed: its output, or its error text.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.crictl(args)?;
        if !out.status.success() {
            bail!(
                "crictl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn ctr(&self, args: &[&str], more: &[&std::ffi::OsStr]) -> Result<Output> {
        Command::new(self.peers.bin.join("ctr"))
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .args(more)
            .output()
            .context("running ctr")
    }

    /// `crictl runp`: the pod's sandbox id and how long the call took, or the
    /// runtime's error text.
    pub fn runp(
        &self,
        name: &str,
        uid: &str,
    ) -> Result<std::result::Result<(String, Duration), String>> {
        let file = self.dir.path().join(format!("pod-{uid}.json"));
        let cfg = pod_config(
            name,
            uid,
            &self.cgroup_parent,
            &self.dir.path().join("logs"),
        );
        std::fs::write(&file, serde_json::to_vec(&cfg)?)?;
        let t = Instant::now();
        let out = self.crictl(&["runp", &file.to_string_lossy()])?;
        let took = t.elapsed();
        if !out.status.success() {
            return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Ok(mut pods) = self.pods.lock() {
            pods.push(id.clone());
        }
        Ok(Ok((id, took)))
    }

    /// `crictl runp` that must succeed.
    pub fn run_pod(&self, name: &str, uid: &str) -> Result<(String, Duration)> {
        self.runp(name, uid)?.map_err(|e| {
            anyhow::anyhow!(
                "crictl runp {name}: {e}\ncontainerd log:\n{}",
                self.log_tail(30)
            )
        })
    }

    /// `crictl stopp`, with its duration.
    pub fn stop_pod(&self, id: &str) -> Result<Duration> {
        let t = Instant::now();
        self.crictl_ok(&["stopp", id])?;
        Ok(t.elapsed())
    }

    /// `crictl rmp`.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.crictl_ok(&["rmp", "-f", id])?;
        if let Ok(mut pods) = self.pods.lock() {
            pods.retain(|p| p != id);
        }
        Ok(())
    }

    /// The pod's network namespace, as its runtime spec names it.
    pub fn pod_netns(&self, id: &str) -> Result<PathBuf> {
        let text = self.crictl_ok(&["inspectp", "-o", "json", id])?;
        let v: Value = serde_json::from_str(&text)?;
        v["info"]["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .context("the pod's runtime spec names no network namespace")
    }

    /// The pod's state as the runtime reports it (`SANDBOX_READY`, `SANDBOX_NOTREADY`).
    pub fn pod_state(&self, id: &str) -> Result<String> {
        let text = self.crictl_ok(&["inspectp", "-o", "json", id])?;
        let v: Value = serde_json::from_str(&text)?;
        Ok(v["status"]["state"].as_str().unwrap_or("").to_string())
    }

    /// Creates and starts a container (the sandbox image's pause program) in pod `id`.
    pub fn run_container(&self, pod_id: &str, pod_uid: &str, name: &str) -> Result<String> {
        let cfile = self.dir.path().join(format!("ctr-{pod_uid}-{name}.json"));
        std::fs::write(
            &cfile,
            serde_json::to_vec(&json!({
                "metadata": {"name": name},
                "image": {"image": PAUSE_IMAGE},
                "log_path": format!("{name}.log"),
                "linux": {}
            }))?,
        )?;
        let pfile = self.dir.path().join(format!("pod-{pod_uid}.json"));
        let id = self.crictl_ok(&[
            "create",
            pod_id,
            &cfile.to_string_lossy(),
            &pfile.to_string_lossy(),
        ])?;
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// The container's state (`CONTAINER_RUNNING`, …).
    pub fn container_state(&self, id: &str) -> Result<String> {
        let text = self.crictl_ok(&["inspect", "-o", "json", id])?;
        let v: Value = serde_json::from_str(&text)?;
        Ok(v["status"]["state"].as_str().unwrap_or("").to_string())
    }

    /// `ctr -n k8s.io <args>` against this containerd, which must succeed (e.g.
    /// `images import <archive>`, `images tag <from> <to>`).
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args, &[])?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// This runtime's pod `name` as [`Self::runp`] writes it, for a caller to change.
    pub fn pod_config(&self, name: &str, uid: &str) -> Value {
        pod_config(
            name,
            uid,
            &self.cgroup_parent,
            &self.dir.path().join("logs"),
        )
    }

    /// `crictl runp` of `config` that the runtime must refuse: its error text.
    pub fn runp_refused(&self, config: &Value) -> Result<String> {
        let uid = config["metadata"]["uid"].as_str().unwrap_or("custom");
        let file = self.dir.path().join(format!("pod-{uid}.json"));
        std::fs::write(&file, serde_json::to_vec(config)?)?;
        let out = self.crictl(&["runp", &file.to_string_lossy()])?;
        if out.status.success() {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Ok(mut pods) = self.pods.lock() {
                pods.push(id.clone());
            }
            bail!("the runtime started pod {uid} ({id})");
        }
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }

    /// `crictl runp` of a pod sandbox config the caller wrote (a translated pod spec);
    /// the pod is removed on drop like the others. Returns the sandbox id.
    pub fn run_pod_config(&self, config: &Value) -> Result<String> {
        let uid = config["metadata"]["uid"].as_str().unwrap_or("custom");
        let file = self.dir.path().join(format!("pod-{uid}.json"));
        std::fs::write(&file, serde_json::to_vec(config)?)?;
        let id = self
            .crictl_ok(&["runp", &file.to_string_lossy()])
            .with_context(|| {
                format!("crictl runp {uid}\ncontainerd log:\n{}", self.log_tail(30))
            })?;
        if let Ok(mut pods) = self.pods.lock() {
            pods.push(id.clone());
        }
        Ok(id)
    }

    /// `crictl create` of a container config the caller wrote, in pod `pod_id` whose
    /// sandbox config is `pod_config`. Returns the container id (not started).
    pub fn create_container_config(
        &self,
        pod_id: &str,
        pod_config: &Value,
        container: &Value,
    ) -> Result<String> {
        let name = container["metadata"]["name"].as_str().unwrap_or("c");
        let attempt = container["metadata"]["attempt"].as_u64().unwrap_or(0);
        let cfile = self
            .dir
            .path()
            .join(format!("ctr-{pod_id}-{name}-{attempt}.json"));
        let pfile = self.dir.path().join(format!("pod-{pod_id}.json"));
        std::fs::write(&cfile, serde_json::to_vec(container)?)?;
        std::fs::write(&pfile, serde_json::to_vec(pod_config)?)?;
        self.crictl_ok(&[
            "create",
            pod_id,
            &cfile.to_string_lossy(),
            &pfile.to_string_lossy(),
        ])
    }

    /// The NRI budget this runtime gives each hook.
    pub fn request_timeout(&self) -> Duration {
        self.opts.request_timeout
    }

    /// PIDs of processes in this runtime's pod cgroups (any hierarchy).
    fn pod_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for root in cgroup_roots() {
            let base = root.join(self.cgroup_parent.trim_start_matches('/'));
            walk_dirs(&base, &mut |d| {
                if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            });
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// PIDs of this runtime's shims (their command line names our socket).
    fn shim_pids(&self) -> Vec<i32> {
        let needle = self.socket().display().to_string();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("containerd-shim") && c.contains(&needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut roots: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    roots
}

/// Calls `f` on `base` and every directory below it, deepest first.
fn walk_dirs(base: &Path, f: &mut dyn FnMut(&Path)) {
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk_dirs(&e.path(), f);
            }
        }
    }
    if base.is_dir() {
        f(base);
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods first, through the runtime, so CNI and netclaim see them go.
        if self.child.is_some() {
            let ids = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
            for id in ids {
                let _ = self.crictl(&["stopp", &id]);
                let _ = self.crictl(&["rmp", "-f", &id]);
            }
        }
        let _ = self.stop_daemon(nix::sys::signal::Signal::SIGTERM);
        for pid in self.shim_pids().into_iter().chain(self.pod_pids()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for m in mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // Cgroups empty once their processes are reaped; give them a moment.
        for root in cgroup_roots() {
            let base = root.join(self.cgroup_parent.trim_start_matches('/'));
            for _ in 0..50 {
                walk_dirs(&base, &mut |d| {
                    let _ = std::fs::remove_dir(d);
                });
                if !base.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A real containerd and the driver side (fake API server and kubelet, the real
/// `netclaim run`), all in `topo`'s node namespace; containerd starts first so the
/// driver finds its NRI socket.
pub struct RealCluster {
    pub runtime: Containerd,
    pub side: crate::scenario::DriverSide,
}

/// How long after containerd started the plugin's registration may take to appear.
const REGISTRATION_WAIT: Duration = Duration::from_secs(20);

impl Containerd {
    /// Waits until containerd's log shows plugin `name` registered `after` log byte
    /// offset `from` (so a restart waits for the new registration).
    pub async fn wait_plugin(&self, name: &str, from: usize) -> Result<Duration> {
        let t = Instant::now();
        loop {
            let text = self.log_text();
            let tail = text.get(from..).unwrap_or("");
            if tail
                .lines()
                .any(|l| l.contains("plugin") && l.contains(name) && l.contains("registered"))
            {
                return Ok(t.elapsed());
            }
            if t.elapsed() > REGISTRATION_WAIT {
                bail!(
                    "containerd did not log plugin {name} registered within {REGISTRATION_WAIT:?}:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log_len(&self) -> usize {
        std::fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }
}

/// Starts containerd, then the driver side; must run on a thread in `topo.node`
/// (see [`crate::scenario::run_in_netns`]).
pub async fn bring_up(
    topo: &crate::scenario::Topology,
    peers: Peers,
    tag: &str,
    request_timeout: Duration,
) -> Result<RealCluster> {
    let runtime = Containerd::start(
        peers,
        topo.node.path(),
        tag,
        Options {
            request_timeout,
            nri_socket: topo.nri_socket(),
            cni_plugin: Some(CniPlugin::beside_driver(&topo.state_dir())?),
        },
    )?;
    let side = crate::scenario::driver_side(topo, &crate::scenario::Quiet, || {
        runtime.wait_plugin("netclaim", 0)
    })
    .await?;
    Ok(RealCluster { runtime, side })
}

impl RealCluster {
    /// Stops `netclaim run` (SIGTERM); pods keep their devices.
    pub fn stop_driver(&mut self) -> Result<()> {
        match self.side.driver.stop()? {
            Some(0) => Ok(()),
            other => bail!(
                "netclaim exited with {other:?}:\n{}",
                self.side.driver.log_text()
            ),
        }
    }

    /// Starts `netclaim run` again and waits until kubelet and containerd both have it.
    pub async fn start_driver(&mut self, topo: &crate::scenario::Topology) -> Result<()> {
        use crate::kubelet::{DraVersion, FakeKubelet, Verdict};
        let from = self.runtime.log_len();
        self.side.driver =
            crate::scenario::Driver::start(topo, self.side.api.kubeconfig_path(), "1s")?;
        let registered = FakeKubelet::new(topo.kubelet_dir())
            .wait_and_register(crate::scenario::DRIVER, Verdict::Accept, REGISTRATION_WAIT)
            .await
            .with_context(|| self.side.driver.log_text())?;
        self.side.dra = registered.dra(DraVersion::V1).await?;
        self.side.registered = registered;
        self.runtime
            .wait_plugin("netclaim", from)
            .await
            .with_context(|| self.side.driver.log_text())?;
        Ok(())
    }
}

/// `n` datagrams from a pod the runtime made, through its claimed device:
/// (arrived allowed, arrived forbidden). The claim's route around goes to
/// 203.0.113.0/25, the half of the range the pods' CNI network does not use.
pub fn pod_traffic(
    topo: &crate::scenario::Topology,
    pod_netns: &Path,
    n: u32,
) -> anyhow::Result<(u64, u64)> {
    crate::scenario::traffic_from(topo, pod_netns, "203.0.113.0/25", n)
}
