//! The DaemonSet's pod, run for real: the pod template of `deploy/netclaim.yaml` (read
//! from the file, not copied) is translated into the CRI pod sandbox and container
//! configs kubelet would send, and `crictl` runs them on the real containerd 2.3.4 in
//! the namespace that plays the node, from the image `cargo xtask image` built. The
//! containerized driver then has to do the whole job through what the template gives
//! it: register with the kubelet stand-in over the mounted plugin directories, connect
//! to containerd's NRI socket, publish the node's NIC, serve an ordinary pod's claim
//! (device moved, configured, data path enforcing, status written), survive a restart
//! of its container with the pins adopted from bpffs, and give the device back when the
//! pod stops.
//!
//! What kubelet does and this test does in its place (there is no kubelet here):
//! * hostPath paths are remapped to this test's directories (the kubelet dir, the NRI
//!   socket's dir, containerd's netns dir, a directory of bpffs, the state dir), on the
//!   host side and in the container alike, since the template mounts each at its own
//!   path; the template's args are remapped the same way;
//! * `$(NODE_NAME)` in args is expanded from the env, whose downward-API value is the
//!   test's node name;
//! * the real pod gets API credentials from its ServiceAccount token (in-cluster
//!   config); here a kubeconfig naming the fake API server is mounted read-only and
//!   passed with `--kubeconfig`;
//! * a mount with HostToContainer or Bidirectional propagation needs a shared (or
//!   slave) source mount, which a systemd host has everywhere; this machine's mounts are
//!   private, so the test bind-mounts each such (test-owned) source onto itself and
//!   makes it shared, and removes that on drop.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::PodTemplateSpec};
use netclaim_tests::{
    apiserver::FakeApiServer,
    containerd::{peers_or_skip, Containerd, Options},
    kubelet::{DraVersion, FakeKubelet, Verdict},
    netenv::require_root,
    scenario::{
        self, claim, good_parameters, prepare_with, run_in_netns, status_entry, unprepare_with,
        Topology, DRIVER, NIC, NODE, POD_IF,
    },
};
use serde::Deserialize;
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The YAML documents of `deploy/netclaim.yaml`.
fn deploy_docs() -> Vec<Value> {
    let path = repo_root().join("deploy/netclaim.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/netclaim.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn doc_of_kind(kind: &str) -> Value {
    deploy_docs()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/netclaim.yaml"))
}

/// The DaemonSet's pod template, as the file has it.
fn pod_template() -> PodTemplateSpec {
    let ds: DaemonSet = serde_json::from_value(doc_of_kind("DaemonSet")).expect("DaemonSet");
    ds.spec.expect("DaemonSet spec").template
}

// CRI enum values (k8s.io/cri-api runtime/v1).
const NAMESPACE_POD: u8 = 0;
const NAMESPACE_CONTAINER: u8 = 1;
const NAMESPACE_NODE: u8 = 2;
const PROPAGATION_PRIVATE: u8 = 0;
const PROPAGATION_HOST_TO_CONTAINER: u8 = 1;
const PROPAGATION_BIDIRECTIONAL: u8 = 2;
const SECCOMP_RUNTIME_DEFAULT: u8 = 0;
const SECCOMP_UNCONFINED: u8 = 1;

/// kubelet's default masked and read-only paths for an unprivileged container
/// (pkg/securitycontext, `DefaultProcMount`).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where this node's things are, and what kubelet would fill in.
struct Node {
    name: String,
    /// `(template path, this node's path, also in the container)`, matched per path
    /// component. Paths the driver tells a peer (the plugin sockets kubelet connects
    /// to, the pod netns paths containerd names) must be the same inside and out; the
    /// others (bpffs, whose /sys/fs/bpf is a fixed sysfs directory in the container)
    /// keep the template's container path.
    remaps: Vec<(String, PathBuf, bool)>,
    kubeconfig: PathBuf,
    cgroup_parent: String,
    log_dir: PathBuf,
    pod_uid: String,
}

impl Node {
    fn remap(&self, path: &str) -> String {
        self.remap_where(path, false)
    }

    fn remap_where(&self, path: &str, in_container: bool) -> String {
        for (from, to, inside) in &self.remaps {
            if in_container && !inside {
                continue;
            }
            if let Ok(rest) = Path::new(path).strip_prefix(from) {
                return if rest.as_os_str().is_empty() {
                    to.display().to_string()
                } else {
                    to.join(rest).display().to_string()
                };
            }
        }
        path.to_string()
    }

    /// `--flag=/path` with a remapped path; other args unchanged.
    fn remap_arg(&self, arg: &str) -> String {
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") && value.starts_with('/') => {
                format!("{flag}={}", self.remap_where(value, true))
            }
            _ => arg.to_string(),
        }
    }
}

/// kubelet's `$(VAR)` expansion of args from the container's env.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn propagation(mode: Option<&str>, at: &str) -> Result<u8, String> {
    match mode {
        None | Some("None") => Ok(PROPAGATION_PRIVATE),
        Some("HostToContainer") => Ok(PROPAGATION_HOST_TO_CONTAINER),
        Some("Bidirectional") => Ok(PROPAGATION_BIDIRECTIONAL),
        Some(other) => Err(format!(
            "{at}: mountPropagation {other:?} is not one kubelet knows"
        )),
    }
}

/// One host directory the container mounts, as the translation saw it.
#[derive(Debug, Clone, PartialEq)]
struct HostMount {
    host_path: PathBuf,
    propagation: u8,
    create: bool,
}

/// The CRI configs kubelet would send for `template`'s first container on `node`
/// (attempt `attempt`), and the host directories they mount. Pure: no effects.
fn translate(
    template: &PodTemplateSpec,
    node: &Node,
    attempt: u32,
) -> Result<(Value, Value, Vec<HostMount>), String> {
    let spec = template.spec.as_ref().ok_or("template.spec: missing")?;
    let c = match spec.containers.as_slice() {
        [c] => c,
        other => {
            return Err(format!(
                "spec.containers: {} containers, expected 1",
                other.len()
            ))
        }
    };
    let host_network = spec.host_network == Some(true);
    let ns_options = json!({
        "network": if host_network { NAMESPACE_NODE } else { NAMESPACE_POD },
        "pid": if spec.host_pid == Some(true) { NAMESPACE_NODE } else { NAMESPACE_CONTAINER },
        "ipc": if spec.host_ipc == Some(true) { NAMESPACE_NODE } else { NAMESPACE_POD },
    });
    let sc = c.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged == Some(true);
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let sandbox = json!({
        "metadata": {"name": format!("netclaim-{}", node.name), "namespace": "netclaim",
                     "uid": node.pod_uid, "attempt": 0},
        "log_directory": node.log_dir,
        "labels": labels,
        "linux": {
            "cgroup_parent": node.cgroup_parent,
            "security_context": {"namespace_options": ns_options, "privileged": privileged},
        },
    });

    // Env: plain values and the downward API's spec.nodeName.
    let mut env = BTreeMap::new();
    for (i, e) in c.env.iter().flatten().enumerate() {
        let at = format!("containers[0].env[{i}]");
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("spec.nodeName") => node.name.clone(),
                other => return Err(format!("{at}.valueFrom: {other:?} is not supported here")),
            },
            _ => return Err(format!("{at}: needs exactly one of value and valueFrom")),
        };
        env.insert(e.name.clone(), value);
    }
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|a| node.remap_arg(&expand(a, &env)))
        .chain(std::iter::once(format!(
            "--kubeconfig={}",
            node.kubeconfig.display()
        )))
        .collect();

    // Volumes: hostPath only; each mount by name.
    let mut volumes = BTreeMap::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let hp = v.host_path.as_ref().ok_or_else(|| {
            format!(
                "volumes[{i}] ({}): only hostPath volumes are supported",
                v.name
            )
        })?;
        volumes.insert(v.name.clone(), hp.clone());
    }
    let mut mounts = Vec::new();
    let mut host_mounts = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let at = format!("containers[0].volumeMounts[{i}]");
        let hp = volumes
            .get(&m.name)
            .ok_or_else(|| format!("{at}: volume {:?} is not defined", m.name))?;
        let prop = propagation(m.mount_propagation.as_deref(), &at)?;
        if prop == PROPAGATION_BIDIRECTIONAL && !privileged {
            return Err(format!(
                "{at}: Bidirectional propagation is only allowed for privileged containers"
            ));
        }
        let host_path = PathBuf::from(node.remap(&hp.path));
        mounts.push(json!({
            "container_path": node.remap_where(&m.mount_path, true),
            "host_path": host_path,
            "readonly": m.read_only == Some(true),
            "propagation": prop,
        }));
        host_mounts.push(HostMount {
            host_path,
            propagation: prop,
            create: hp.type_.as_deref() == Some("DirectoryOrCreate"),
        });
    }
    // Where kubelet would mount the ServiceAccount token, the test mounts a kubeconfig.
    mounts.push(json!({
        "container_path": node.kubeconfig, "host_path": node.kubeconfig, "readonly": true,
    }));

    let caps = sc.capabilities.clone().unwrap_or_default();
    let seccomp = match sc
        .seccomp_profile
        .as_ref()
        .or(spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str())
    {
        None | Some("Unconfined") => SECCOMP_UNCONFINED,
        Some("RuntimeDefault") => SECCOMP_RUNTIME_DEFAULT,
        Some(other) => return Err(format!("seccompProfile {other:?} is not supported here")),
    };
    let mut security = json!({
        "privileged": privileged,
        "namespace_options": ns_options,
        "capabilities": {
            "add_capabilities": caps.add.unwrap_or_default(),
            "drop_capabilities": caps.drop.unwrap_or_default(),
        },
        "readonly_rootfs": sc.read_only_root_filesystem == Some(true),
        "no_new_privs": sc.allow_privilege_escalation == Some(false),
        "seccomp": {"profile_type": seccomp},
    });
    if let Some(uid) = sc.run_as_user {
        security["run_as_user"] = json!({"value": uid});
    }
    if !privileged {
        security["masked_paths"] = json!(MASKED_PATHS);
        security["readonly_paths"] = json!(READONLY_PATHS);
    }
    let container = json!({
        "metadata": {"name": c.name, "attempt": attempt},
        "image": {"image": c.image.clone().ok_or("containers[0].image: missing")?},
        "command": c.command.clone().unwrap_or_default(),
        "args": args,
        "envs": env.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        "mounts": mounts,
        "log_path": format!("{}/{attempt}.log", c.name),
        "linux": {"security_context": security},
    });
    Ok((sandbox, container, host_mounts))
}

/// Source directories made shared bind mounts (what a systemd host has); unmounted on
/// drop.
#[derive(Default)]
struct SharedMounts(Vec<PathBuf>);

impl SharedMounts {
    fn make_shared(&mut self, dir: &Path) -> Result<()> {
        use nix::mount::{mount, MsFlags};
        if self.0.iter().any(|d| d == dir) {
            return Ok(());
        }
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting {} onto itself", dir.display()))?;
        self.0.push(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .with_context(|| format!("making {} shared", dir.display()))?;
        Ok(())
    }
}

impl Drop for SharedMounts {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = nix::mount::umount2(d, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Pin files below `dir` with their inode numbers (same inode = the same pin).
fn pins(dir: &Path) -> BTreeMap<PathBuf, u64> {
    netclaim_tests::netenv::files_below(dir)
        .into_iter()
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.ino())))
        .collect()
}

/// The driver container: its configs and id.
struct DriverContainer {
    sandbox_id: String,
    sandbox: Value,
    id: String,
    log: PathBuf,
}

impl DriverContainer {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Creates and starts attempt `attempt` of the driver container.
fn start_driver_container(
    rt: &Containerd,
    node: &Node,
    sandbox_id: &str,
    sandbox: &Value,
    attempt: u32,
) -> Result<DriverContainer> {
    let (_, container, _) =
        translate(&pod_template(), node, attempt).map_err(anyhow::Error::msg)?;
    let id = rt.create_container_config(sandbox_id, sandbox, &container)?;
    rt.crictl_ok(&["start", &id])?;
    Ok(DriverContainer {
        sandbox_id: sandbox_id.to_string(),
        sandbox: sandbox.clone(),
        id,
        log: node
            .log_dir
            .join(container["log_path"].as_str().unwrap_or("netclaim/0.log")),
    })
}

/// Capability numbers (linux/capability.h) of the names a template may add.
fn cap_bit(name: &str) -> Option<u32> {
    Some(match name.trim_start_matches("CAP_") {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        _ => return None,
    })
}

/// The driver process as the kernel sees it: it runs with exactly the capabilities
/// the template grants (when it drops ALL) and the seccomp mode it asks for.
fn assert_privileges(rt: &Containerd, driver: &DriverContainer) -> Result<()> {
    let info: Value = serde_json::from_str(&rt.crictl_ok(&["inspect", "-o", "json", &driver.id])?)?;
    let pid = info["info"]["pid"].as_u64().context("container pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let sc = pod_template()
        .spec
        .map(|s| s.containers[0].clone())
        .and_then(|c| c.security_context)
        .unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    if sc.privileged != Some(true) && caps.drop.iter().flatten().any(|d| d == "ALL") {
        let mut want = 0u64;
        for name in caps.add.iter().flatten() {
            want |= 1u64 << cap_bit(name).with_context(|| format!("capability {name}"))?;
        }
        let eff = u64::from_str_radix(&field("CapEff:"), 16)?;
        assert_eq!(
            eff, want,
            "CapEff {eff:#x} is not what the template grants ({want:#x})"
        );
    }
    if sc.seccomp_profile.map(|p| p.type_) == Some("RuntimeDefault".into()) {
        assert_eq!(
            field("Seccomp:"),
            "2",
            "the driver runs without its seccomp filter"
        );
    }
    println!(
        "[daemonset] driver pid {pid}: CapEff {} Seccomp {}",
        field("CapEff:"),
        field("Seccomp:")
    );
    Ok(())
}

/// Registration with the kubelet stand-in over the mounted plugin directories, then
/// NRI registration in containerd's log.
async fn registered(
    rt: &Containerd,
    topo: &Topology,
    driver: &DriverContainer,
    log_from: usize,
) -> Result<(netclaim_tests::kubelet::Registered, Duration)> {
    let t = Instant::now();
    let reg = FakeKubelet::new(topo.kubelet_dir())
        .wait_and_register(DRIVER, Verdict::Accept, Duration::from_secs(20))
        .await
        .with_context(|| {
            format!(
                "kubelet registration; container log:\n{}",
                driver.log_text()
            )
        })?;
    rt.wait_plugin("netclaim", log_from)
        .await
        .with_context(|| format!("NRI registration; container log:\n{}", driver.log_text()))?;
    Ok((reg, t.elapsed()))
}

fn image_archive() -> PathBuf {
    std::env::var_os("NETCLAIM_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/image/netclaim-oci.tar"))
}

#[test]
fn the_daemonset_pod_serves_a_claim_from_its_container_on_real_containerd() {
    require_root();
    let test = "the_daemonset_pod_serves_a_claim_from_its_container_on_real_containerd";
    let Some(peers) = peers_or_skip(test) else {
        return;
    };
    let archive = image_archive();
    if !archive.is_file() {
        let why = format!(
            "{} is missing (build it: cargo xtask image)",
            archive.display()
        );
        if std::env::var("NETCLAIM_REQUIRE_REAL_RUNTIME").as_deref() == Ok("1") {
            panic!("{test}: {why}");
        }
        eprintln!("\n*** SKIPPED {test}: {why} ***\n");
        return;
    }
    let topo = std::sync::Arc::new(Topology::new("dsp").unwrap());
    let node_path = topo.node.path().to_path_buf();
    let t = topo.clone();
    run_in_netns(&node_path, move || async move {
        let topo = t;
        let started = Instant::now();
        let mut shared = SharedMounts::default();
        let nri_dir = topo.dir.path().join("nri");
        std::fs::create_dir_all(&nri_dir)?;
        let rt = Containerd::start(
            peers,
            topo.node.path(),
            "dsp",
            Options {
                request_timeout: Duration::from_secs(2),
                nri_socket: nri_dir.join("nri.sock"),
                cni_plugin: None,
            },
        )?;
        // The image as `cargo xtask image` built it, under the template's name.
        let image = pod_template().spec.and_then(|s| s.containers[0].image.clone()).context("image")?;
        rt.ctr_ok(&["images", "import", &archive.to_string_lossy()])?;
        let index: Value = serde_json::from_slice(
            &std::process::Command::new("tar")
                .arg("-xOf")
                .arg(&archive)
                .arg("index.json")
                .output()?
                .stdout,
        )
        .context("the image archive's index.json")?;
        let built = index["manifests"][0]["annotations"]["io.containerd.image.name"]
            .as_str()
            .context("index.json names no image")?
            .to_string();
        if built != image {
            rt.ctr_ok(&["images", "tag", "--force", &built, &image])?;
        }

        // containerd's netns directory: where the pods' namespaces are mounted.
        let (probe, _) = rt.run_pod("probe-0", "pod-uid-probe")?;
        let netns_dir = rt.pod_netns(&probe)?.parent().context("netns dir")?.to_path_buf();
        rt.stop_pod(&probe)?;
        rt.remove_pod(&probe)?;

        let api_dir = topo.dir.path().join("api");
        std::fs::create_dir_all(&api_dir)?;
        let api = FakeApiServer::start_on(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(api_dir.join("kubeconfig")),
        )
        .await?;
        api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": "node-uid-1"}}))?;
        api.put(doc_of_kind("DeviceClass"))?;

        let node = Node {
            name: NODE.into(),
            remaps: vec![
                ("/var/lib/kubelet".into(), topo.kubelet_dir(), true),
                ("/var/run/nri".into(), nri_dir.clone(), true),
                ("/var/run/netns".into(), netns_dir.clone(), true),
                ("/sys/fs/bpf".into(), topo.bpf.path().to_path_buf(), false),
                ("/var/run/netclaim".into(), topo.state_dir(), true),
            ],
            kubeconfig: api.kubeconfig_path().to_path_buf(),
            cgroup_parent: rt.cgroup_parent.clone(),
            log_dir: rt.dir().join("logs/netclaim-pod"),
            pod_uid: "pod-uid-netclaim".into(),
        };
        let (sandbox, container, host_mounts) =
            translate(&pod_template(), &node, 0).map_err(anyhow::Error::msg)?;
        println!("[daemonset] container config:\n{}", serde_json::to_string_pretty(&container)?);
        for m in &host_mounts {
            if m.create {
                std::fs::create_dir_all(&m.host_path)?;
            }
            if m.propagation != PROPAGATION_PRIVATE {
                shared.make_shared(&m.host_path)?;
            }
        }
        let sandbox_id = rt.run_pod_config(&sandbox)?;
        let log_from = rt.log_len();
        let driver = start_driver_container(&rt, &node, &sandbox_id, &sandbox, 0)?;
        let (reg, took) = registered(&rt, &topo, &driver, log_from).await?;
        println!("[daemonset] registered with kubelet and NRI {took:?} after the container started ({:?} since the test began)", started.elapsed());
        let dra = reg.dra(DraVersion::V1).await?;
        assert_privileges(&rt, &driver)?;

        // Published: the node's NIC in a ResourceSlice; the probes' endpoint answers.
        let devices = scenario::wait_devices_of(&api, &[NIC.to_string()], Duration::from_secs(20))
            .await
            .with_context(|| driver.log_text())?;
        let device = devices.get(NIC).context("eth1 published")?.clone();
        let (code, _) = scenario::http_get("/readyz")?;
        assert_eq!(code, 200, "readinessProbe target /readyz");

        // An ordinary pod with a claim on it.
        api.put(claim("web", "claim-uid-ds", &device, "web-0", "pod-uid-ds", good_parameters()))?;
        let err = prepare_with(&dra, "web", "claim-uid-ds").await?;
        assert_eq!(err, "", "prepare; container log:\n{}", driver.log_text());
        let (pod, _) = rt.run_pod("web-0", "pod-uid-ds")?;
        let netns = rt.pod_netns(&pod)?;
        let facts = netclaim_tests::scenario::link_facts_at(&netns, POD_IF)?
            .with_context(|| format!("{POD_IF} is not in the pod; container log:\n{}", driver.log_text()))?;
        assert_eq!(facts, (1500, vec!["192.0.2.10/24".to_string()]));
        assert!(netclaim_tests::scenario::link_facts_at(topo.node.path(), NIC)?.is_none(), "{NIC} still on the node");
        let (allowed, forbidden) = netclaim_tests::containerd::pod_traffic(&topo, &netns, 200)?;
        assert_eq!((allowed, forbidden), (200, 0), "data path enforcing");
        scenario::wait_for(&scenario::Quiet, "Ready status", Duration::from_secs(10), || {
            status_entry(&api, "web").filter(|e| {
                scenario::condition(e, "Ready").is_some_and(|r| r["status"] == "True")
            })
        })
        .await
        .with_context(|| driver.log_text())?;

        // Restart the container the way kubelet does: stop, remove, create attempt 1.
        let before = pins(topo.bpf.path());
        assert!(!before.is_empty(), "no pins on the host's bpffs");
        rt.crictl_ok(&["stop", "--timeout", "10", &driver.id])?;
        let first_log = driver.log_text();
        assert!(first_log.contains("SIGTERM"), "the driver did not see SIGTERM:\n{first_log}");
        rt.crictl_ok(&["rm", &driver.id])?;
        let log_from = rt.log_len();
        let t = Instant::now();
        let driver = start_driver_container(&rt, &node, &driver.sandbox_id, &driver.sandbox, 1)?;
        let (reg, _) = registered(&rt, &topo, &driver, log_from).await?;
        println!("[daemonset] restarted container registered again in {:?}", t.elapsed());
        let dra = reg.dra(DraVersion::V1).await?;
        assert_eq!(pins(topo.bpf.path()), before, "pins replaced instead of adopted");
        let log = driver.log_text();
        assert!(
            log.contains("forwarding eBPF logs of adopted data paths"),
            "the restarted driver did not adopt the pinned data path:\n{log}"
        );
        let (allowed, forbidden) = netclaim_tests::containerd::pod_traffic(&topo, &netns, 200)?;
        assert_eq!((allowed, forbidden), (200, 0), "data path enforcing after the restart");

        // The pod stops: the device comes home with its host configuration.
        // (RemovePodSandbox waits for the give-back that StopPodSandbox started.)
        rt.stop_pod(&pod)?;
        rt.remove_pod(&pod)?;
        let (mtu, addrs) = scenario::link_facts(&topo.node, NIC)?;
        assert_eq!((mtu, addrs), (1400, vec!["192.0.2.50/24".to_string()]), "{NIC} home; container log:\n{}", driver.log_text());
        assert_eq!(unprepare_with(&dra, "web", "claim-uid-ds").await?, "");
        let left = topo.bpf.leftovers();
        assert!(left.is_empty(), "pins left after the pod stopped: {left:?}");

        rt.crictl_ok(&["stop", "--timeout", "10", &driver.id])?;
        println!("[daemonset] whole lifecycle in {:?}", started.elapsed());
        drop(rt);
        drop(shared);
        Ok(())
    })
    .unwrap();
}

#[cfg(test)]
mod translation {
    use super::*;

    fn node() -> Node {
        Node {
            name: "n1".into(),
            remaps: vec![
                ("/var/lib/kubelet".into(), PathBuf::from("/t/kubelet"), true),
                (
                    "/sys/fs/bpf".into(),
                    PathBuf::from("/sys/fs/bpf/nct-x"),
                    false,
                ),
            ],
            kubeconfig: PathBuf::from("/t/api/kubeconfig"),
            cgroup_parent: "/rt".into(),
            log_dir: PathBuf::from("/t/logs"),
            pod_uid: "u".into(),
        }
    }

    /// Every mount, propagation and privilege of the file's template reaches the CRI
    /// config, remapped per component (`/var/lib/kubelet2` is not below the kubelet dir).
    #[test]
    fn the_template_becomes_the_cri_configs() {
        let template = pod_template();
        let (sandbox, container, host) = translate(&template, &node(), 3).unwrap();
        let spec = template.spec.clone().unwrap();
        let c = &spec.containers[0];
        let ns = &sandbox["linux"]["security_context"]["namespace_options"];
        assert_eq!(ns["network"], NAMESPACE_NODE, "hostNetwork");
        assert_eq!(container["metadata"]["attempt"], 3);
        let mounts = container["mounts"].as_array().unwrap();
        let template_mounts = c.volume_mounts.clone().unwrap_or_default();
        assert_eq!(mounts.len(), template_mounts.len() + 1, "+ the kubeconfig");
        assert_eq!(host.len(), template_mounts.len());
        for (m, t) in mounts.iter().zip(&template_mounts) {
            let want = propagation(t.mount_propagation.as_deref(), "").unwrap();
            assert_eq!(m["propagation"], want, "{}", t.mount_path);
            assert_eq!(m["readonly"], t.read_only == Some(true));
        }
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(args.contains(&"--node-name=n1"), "{args:?}");
        assert!(args.contains(&"--kubelet-dir=/t/kubelet"), "{args:?}");
        assert!(args.contains(&"--kubeconfig=/t/api/kubeconfig"), "{args:?}");
        let sc = &container["linux"]["security_context"];
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
        assert_eq!(sc["privileged"], privileged);
        assert_eq!(sc["masked_paths"].is_null(), privileged);
        assert_eq!(node().remap("/var/lib/kubelet2"), "/var/lib/kubelet2");
        assert_eq!(node().remap("/var/lib/kubelet"), "/t/kubelet");
        assert_eq!(
            node().remap("/sys/fs/bpf/netclaim"),
            "/sys/fs/bpf/nct-x/netclaim"
        );
        assert!(
            args.contains(&"--bpf-root=/sys/fs/bpf/netclaim"),
            "{args:?}"
        );
    }

    #[test]
    fn what_kubelet_would_refuse_is_refused() {
        let mut template = pod_template();
        let spec = template.spec.as_mut().unwrap();
        let c = &mut spec.containers[0];
        c.security_context
            .get_or_insert_with(Default::default)
            .privileged = Some(false);
        c.volume_mounts.get_or_insert_with(Vec::new).push(
            serde_json::from_value(
                json!({"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}),
            )
            .unwrap(),
        );
        spec.volumes.get_or_insert_with(Vec::new).push(
            serde_json::from_value(json!({"name": "v", "hostPath": {"path": "/v"}})).unwrap(),
        );
        let err = translate(&template, &node(), 0).unwrap_err();
        assert!(err.contains("Bidirectional"), "{err}");

        let mut template = pod_template();
        let spec = template.spec.as_mut().unwrap();
        spec.volumes
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(json!({"name": "e", "emptyDir": {}})).unwrap());
        let err = translate(&template, &node(), 0).unwrap_err();
        assert!(err.contains("only hostPath"), "{err}");
    }
}
