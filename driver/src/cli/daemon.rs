//! `netclaim run`: the node daemon. Reading this file top-down shows what runs:
//!
//! 1. the network namespace the daemon starts in is captured as the node's ("home"
//!    for every device);
//! 2. the checkpoint is opened (plans and host originals survive restarts);
//! 3. `/metrics`, `/healthz`, `/readyz` start;
//! 4. the inventory watches netlink in the node namespace, the publisher turns its
//!    device list into this node's ResourceSlices;
//! 5. the kubelet plugin registers and serves DRA (prepare = read claim, validate,
//!    plan, checkpoint) and the health stream;
//! 6. the NRI plugin connects to the runtime; pod events move devices in and out and
//!    attach the data path; the status writer reports to the ResourceClaim;
//! 7. SIGTERM/SIGINT: sockets are removed, tasks stop. Devices inside pods and their
//!    pinned data paths are left as they are: they keep working, and the next start
//!    adopts them.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use crate::{
    datapath::PinLayout,
    inventory::{Device, DeviceFilter, Inventory, InventoryOptions, InventoryWatcher},
    kubelet::{
        self, prepare::Preparer, ClaimPreparer, ClaimRef, KubeletPluginConfig, PrepareResults,
        UnprepareResults,
    },
    lifecycle::{LifecycleConfig, Pods},
    metrics::{Metrics, Readiness},
    netns::Netns,
    nri::{NriPlugin, PodHandler, PodSandbox},
    publisher::Publisher,
    state::StateStore,
    status::{status_channel, StatusConfig, StatusWriter},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// DRA driver name; also the domain of device attributes.
    #[arg(long, default_value = crate::DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// This node's name (the pool name and the ResourceSlices' nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// kubeconfig to use instead of the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubelet's root directory (plugin sockets live below it).
    #[arg(long, default_value = crate::kubelet::DEFAULT_KUBELET_DIR)]
    pub kubelet_dir: PathBuf,
    /// Where the checkpoint lives.
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Root of the driver's pins on bpffs.
    #[arg(long, default_value = crate::DEFAULT_BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// The runtime's NRI socket.
    #[arg(long, default_value = crate::nri::DEFAULT_SOCKET_PATH)]
    pub nri_socket: PathBuf,
    /// NRI plugin index (two digits; orders plugins).
    #[arg(long, default_value = "00")]
    pub nri_index: String,
    /// CEL expression over device attributes selecting what is published
    /// (default: every device that is not loopback or part of a default-route uplink).
    #[arg(long)]
    pub filter: Option<String>,
    /// `off` disables the eBPF data path (no enforcement, no counters).
    #[arg(long, value_enum, default_value = "on")]
    pub dataplane: Dataplane,
    /// How often claim status (counters, conditions) is refreshed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub status_interval: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9177")]
    pub metrics_address: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataplane {
    On,
    Off,
}

/// Parses `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by ms, s or m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

/// Counts and times DRA calls, delegates, and tells the inventory right away which
/// devices are claimed (so a device moving into a pod never drops out of the slices).
struct MeteredPreparer {
    inner: Arc<dyn ClaimPreparer>,
    metrics: Arc<Metrics>,
    claimed_changed: Arc<dyn Fn() + Send + Sync>,
}

#[async_trait::async_trait]
impl ClaimPreparer for MeteredPreparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let started = Instant::now();
        let results = self.inner.prepare(claims).await;
        let ok = results.values().all(Result::is_ok);
        self.metrics
            .observe_dra("NodePrepareResources", ok, started.elapsed());
        (self.claimed_changed)();
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let started = Instant::now();
        let results = self.inner.unprepare(claims).await;
        let ok = results.values().all(Result::is_ok);
        self.metrics
            .observe_dra("NodeUnprepareResources", ok, started.elapsed());
        (self.claimed_changed)();
        results
    }
}

/// Counts and times NRI pod events, then delegates.
struct MeteredPods {
    inner: Arc<dyn PodHandler>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl PodHandler for MeteredPods {
    async fn run_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let started = Instant::now();
        let r = self.inner.run_pod(pod).await;
        self.metrics
            .observe_nri("RunPodSandbox", r.is_ok(), started.elapsed());
        r
    }

    async fn stop_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let started = Instant::now();
        let r = self.inner.stop_pod(pod).await;
        self.metrics
            .observe_nri("StopPodSandbox", r.is_ok(), started.elapsed());
        r
    }

    async fn remove_pod(&self, pod: &PodSandbox) -> Result<(), String> {
        let started = Instant::now();
        let r = self.inner.remove_pod(pod).await;
        self.metrics
            .observe_nri("RemovePodSandbox", r.is_ok(), started.elapsed());
        r
    }

    async fn synchronize(&self, pods: &[PodSandbox]) {
        let started = Instant::now();
        self.inner.synchronize(pods).await;
        self.metrics
            .observe_nri("Synchronize", true, started.elapsed());
    }
}

/// After a corrupt checkpoint was moved aside: re-prepares, from the API server, every
/// claim allocated on this node by this driver and reserved for a pod — the same way
/// kubelet's NodePrepareResources would — so the plans exist again before kubelet or
/// the runtime ask. Host originals of devices already inside pods are lost with the
/// checkpoint; those devices are returned by name when their pod stops.
async fn rebuild_plans(
    client: &kube::Client,
    args: &RunArgs,
    preparer: &dyn ClaimPreparer,
    aside: &std::path::Path,
) {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    let api: kube::Api<ResourceClaim> = kube::Api::all(client.clone());
    let claims = match api.list(&kube::api::ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::error!(error = %e, "checkpoint rebuild: listing ResourceClaims failed; claims are prepared again when kubelet asks");
            return;
        }
    };
    let refs: Vec<ClaimRef> = claims
        .iter()
        .filter(|c| {
            let status = c.status.as_ref();
            let ours = status
                .and_then(|s| s.allocation.as_ref())
                .and_then(|a| a.devices.as_ref())
                .is_some_and(|d| {
                    d.results
                        .iter()
                        .flatten()
                        .any(|r| r.driver == args.driver_name && r.pool == args.node_name)
                });
            let reserved = status
                .and_then(|s| s.reserved_for.as_ref())
                .is_some_and(|r| !r.is_empty());
            ours && reserved
        })
        .filter_map(|c| {
            Some(ClaimRef {
                namespace: c.metadata.namespace.clone()?,
                name: c.metadata.name.clone()?,
                uid: c.metadata.uid.clone()?,
            })
        })
        .collect();
    let results = preparer.prepare(refs).await;
    let ok = results.values().filter(|r| r.is_ok()).count();
    tracing::warn!(
        moved_aside = %aside.display(),
        rebuilt = ok,
        failed = results.len() - ok,
        "checkpoint rebuilt from the API server after corruption"
    );
    for (uid, r) in &results {
        if let Err(e) = r {
            tracing::error!(claim_uid = %uid, error = %e, "checkpoint rebuild: claim not prepared");
        }
    }
}

/// Devices of this driver in prepared claims (from the checkpoint): they stay
/// published while inside pods, and the status writer reports their health.
fn claimed_devices(store: &StateStore) -> std::collections::BTreeSet<String> {
    match store.list() {
        Ok(claims) => claims
            .into_iter()
            .flat_map(|c| c.plans.into_iter().map(|p| p.device))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the checkpoint for claimed devices");
            Default::default()
        }
    }
}

/// This node's devices named in `claimed`, as this driver last published them in
/// ResourceSlices (so a restarted driver keeps publishing devices that are in pods).
async fn published_records(
    client: &kube::Client,
    args: &RunArgs,
    claimed: &std::collections::BTreeSet<String>,
) -> Vec<Device> {
    use k8s_openapi::api::resource::v1::ResourceSlice;
    if claimed.is_empty() {
        return Vec::new();
    }
    let api: kube::Api<ResourceSlice> = kube::Api::all(client.clone());
    let slices = match api.list(&kube::api::ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, "listing ResourceSlices for claimed devices failed; devices inside pods reappear when they come home");
            return Vec::new();
        }
    };
    let mut records = Vec::new();
    for slice in slices
        .iter()
        .filter(|s| s.spec.driver == args.driver_name && s.spec.pool.name == args.node_name)
    {
        for d in slice.spec.devices.iter().flatten() {
            if !claimed.contains(&d.name) {
                continue;
            }
            let attributes = d
                .attributes
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok())
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let mut record = Device {
                name: d.name.clone(),
                ifname: String::new(),
                ifindex: 0,
                attributes,
                carrier_lost: false,
            };
            record.ifname = record
                .attribute(&args.driver_name, "ifName")
                .map(ToString::to_string)
                .unwrap_or_default();
            records.push(record);
        }
    }
    if !records.is_empty() {
        tracing::info!(
            devices = records.len(),
            "claimed devices kept published from the previous slices"
        );
    }
    records
}

/// Merges the carrier-based health of unclaimed `devices` into the health list: adds
/// and updates their entries, drops entries of unclaimed devices that are gone, and
/// leaves claimed devices' entries to the status writer.
fn host_device_health(
    health: &watch::Sender<Vec<kubelet::DeviceHealth>>,
    node: &str,
    devices: &[Device],
    claimed: &std::collections::BTreeSet<String>,
) {
    health.send_if_modified(|list| {
        let before = list.clone();
        list.retain(|h| {
            h.pool != node
                || claimed.contains(&h.device)
                || devices.iter().any(|d| d.name == h.device)
        });
        for d in devices.iter().filter(|d| !claimed.contains(&d.name)) {
            let healthy = !d.carrier_lost;
            match list.iter_mut().find(|h| h.pool == node && h.device == d.name) {
                Some(h) => {
                    if h.healthy != healthy {
                        tracing::info!(device = %d.name, healthy, "device health changed (carrier)");
                        h.healthy = healthy;
                    }
                }
                None => list.push(kubelet::DeviceHealth {
                    pool: node.to_string(),
                    device: d.name.clone(),
                    healthy,
                }),
            }
        }
        *list != before
    });
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig and no in-cluster configuration")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

fn check_bpf_root(root: &std::path::Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let parent = root.parent().unwrap_or(root);
    let st = nix::sys::statfs::statfs(parent)
        .with_context(|| format!("--bpf-root {}: cannot stat its parent", root.display()))?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        anyhow::bail!(
            "--bpf-root {}: {} is not a bpffs mount (mount -t bpf bpf /sys/fs/bpf)",
            root.display(),
            parent.display()
        );
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    tracing::info!(
        driver = %args.driver_name,
        node = %args.node_name,
        version = env!("CARGO_PKG_VERSION"),
        "netclaim starting"
    );
    // 1. The node's namespace: wherever we were started.
    let host = Arc::new(Netns::current().context("capturing the node's network namespace")?);
    if args.dataplane == Dataplane::On {
        check_bpf_root(&args.bpf_root)?;
    }
    let layout = PinLayout::new(&args.bpf_root);
    if args.dataplane == Dataplane::On {
        crate::datapath::pool::WarmPool::global().warm();
        // Programs attached before a restart keep logging into their own buffers.
        let resumed = crate::datapath::logs::LogPump::global().resume_pinned(&layout);
        if resumed > 0 {
            tracing::info!(
                devices = resumed,
                "forwarding eBPF logs of adopted data paths"
            );
        }
    }

    // 2. Checkpoint.
    let store = Arc::new(
        StateStore::open(&args.state_dir)
            .with_context(|| format!("opening the checkpoint in {}", args.state_dir.display()))?,
    );

    // 3. Metrics and health.
    let metrics = Metrics::new((args.dataplane == Dataplane::On).then(|| layout.clone()));
    let readiness = Arc::new(Readiness::default());
    let _http = crate::metrics::serve(args.metrics_address, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("--metrics-address {}", args.metrics_address))?;

    let client = kube_client(args.kubeconfig.as_ref()).await?;

    // 4. Inventory and the ResourceSlice publisher.
    let filter = match &args.filter {
        Some(expr) => Some(DeviceFilter::new(expr).context("--filter")?),
        None => None,
    };
    let inventory_options = InventoryOptions {
        driver_name: args.driver_name.clone(),
        filter,
        ..InventoryOptions::default()
    };
    let inventory = Arc::new(
        InventoryWatcher::start(host.clone(), inventory_options.clone())
            .context("starting the inventory")?,
    );
    let devices = inventory.subscribe();
    // Devices in prepared claims stay published while they are inside pods (and absent
    // here). The set changes only through prepare/unprepare, which recompute it at once
    // (the checkpoint rebuild goes through the same preparer).
    let (claimed_tx, claimed_rx) = watch::channel(claimed_devices(&store));
    inventory.pin_in_use(claimed_rx.borrow().clone());
    // After a restart, devices already inside pods are not on the node: their records
    // come from the slices the previous run published, before anything is republished.
    let claimed_now = claimed_rx.borrow().clone();
    let remembered = published_records(&client, &args, &claimed_now).await;
    let names: Vec<String> = remembered.iter().map(|d| d.name.clone()).collect();
    inventory.remember(remembered);
    if !names.is_empty() {
        // The publisher starts only once the inventory lists them, so they never vanish.
        let mut listed = devices.clone();
        let present = |l: &Arc<Vec<Device>>| names.iter().all(|n| l.iter().any(|d| &d.name == n));
        if tokio::time::timeout(Duration::from_secs(2), listed.wait_for(present))
            .await
            .is_err()
        {
            tracing::warn!("the inventory did not take up the claimed devices in time");
        }
    }
    let pin_claimed: Arc<dyn Fn() + Send + Sync> = {
        let (store, inventory) = (store.clone(), inventory.clone());
        Arc::new(move || {
            let claimed = claimed_devices(&store);
            inventory.pin_in_use(claimed.clone());
            claimed_tx.send_if_modified(|c| {
                let changed = *c != claimed;
                *c = claimed;
                changed
            });
        })
    };

    let publisher = Publisher::start(
        client.clone(),
        args.driver_name.clone(),
        args.node_name.clone(),
        devices.clone(),
    );
    {
        let mut published = publisher.published();
        let (readiness, metrics, devices) = (readiness.clone(), metrics.clone(), devices.clone());
        tokio::spawn(async move {
            loop {
                if published.borrow_and_update().is_some() {
                    readiness.slices_published.store(true, Ordering::Relaxed);
                    metrics.set_published_devices(devices.borrow().len());
                }
                if published.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    // 5. Kubelet plugin.
    let (health_tx, health_rx) = watch::channel(Vec::new());
    // Health of published devices still on the node, from carrier: devices in claims
    // are reported by the status writer from inside their pods instead.
    {
        let (mut devices, mut claimed, health) =
            (devices.clone(), claimed_rx.clone(), health_tx.clone());
        let node = args.node_name.clone();
        tokio::spawn(async move {
            loop {
                let list: Arc<Vec<Device>> = devices.borrow_and_update().clone();
                let claimed_now = claimed.borrow_and_update().clone();
                host_device_health(&health, &node, &list, &claimed_now);
                tokio::select! {
                    r = devices.changed() => if r.is_err() { break },
                    r = claimed.changed() => if r.is_err() { break },
                }
            }
        });
    }
    let preparer: Arc<dyn ClaimPreparer> = Arc::new(MeteredPreparer {
        inner: Arc::new(Preparer::new(
            client.clone(),
            args.driver_name.clone(),
            store.clone(),
            kubelet::prepare::network_config_parser(),
        )),
        metrics: metrics.clone(),
        claimed_changed: pin_claimed.clone(),
    });
    if let Some(aside) = store.moved_aside() {
        rebuild_plans(&client, &args, preparer.as_ref(), aside).await;
    }
    let plugin = kubelet::serve(
        KubeletPluginConfig::new(&args.kubelet_dir, &args.driver_name),
        preparer,
        health_rx,
    )
    .await
    .context("starting the kubelet plugin")?;
    {
        let mut registration = plugin.registration();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            loop {
                let registered = registration.borrow_and_update().is_registered();
                readiness
                    .kubelet_registered
                    .store(registered, Ordering::Relaxed);
                if registration.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    // 6. Status writer, pod lifecycle, NRI plugin.
    let (status_tx, status_rx) = status_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut status_config = StatusConfig::new(args.driver_name.clone(), args.bpf_root.clone());
    status_config.interval = args.status_interval;
    let write_errors = metrics.clone();
    let mut writer = StatusWriter::new(client.clone(), status_config)
        .with_health(health_tx)
        .on_write_error(move || write_errors.status_write_failed());
    writer.seed(&store);
    let status_task = tokio::spawn(writer.run(status_rx, stop_rx));

    let node = args.node_name.clone();
    let resolver_devices = devices.clone();
    let (scan_host, scan_opts) = (host.clone(), inventory_options.clone());
    let resolver = move |pool: &str, device: &str| -> Option<String> {
        if pool != node {
            return None;
        }
        let list: Arc<Vec<Device>> = resolver_devices.borrow().clone();
        if let Some(d) = list.iter().find(|d| d.name == device) {
            return Some(d.ifname.clone());
        }
        // The watcher may not have rescanned yet (a device that just came home from
        // another pod): ask the kernel directly.
        match Inventory::scan(&scan_host, &scan_opts) {
            Ok(fresh) => fresh
                .into_iter()
                .find(|d| d.name == device)
                .map(|d| d.ifname),
            Err(e) => {
                tracing::warn!(device, error = %e, "inventory rescan for the resolver failed");
                None
            }
        }
    };
    let mut lifecycle = LifecycleConfig::new(&args.bpf_root);
    lifecycle.dataplane = args.dataplane == Dataplane::On;
    let pods = Pods::new(
        store.clone(),
        host.try_clone().context("the node's network namespace")?,
        Arc::new(resolver),
        lifecycle,
        Some(status_tx),
    );
    let nri = NriPlugin::connect(
        &args.nri_socket,
        args.driver_name.clone(),
        args.nri_index.clone(),
        Arc::new(MeteredPods {
            inner: Arc::new(pods),
            metrics: metrics.clone(),
        }),
    )
    .context("starting the NRI plugin")?;
    {
        let mut connected = nri.connected();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            loop {
                let up = *connected.borrow_and_update();
                readiness.nri_connected.store(up, Ordering::Relaxed);
                tracing::info!(connected = up, "NRI connection state");
                if connected.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    // 7. Run until told to stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    drop(nri);
    plugin.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), status_task).await;
    drop(publisher);
    drop(inventory);
    tracing::info!("netclaim stopped; devices in pods and their data paths stay in place");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, carrier_lost: bool) -> Device {
        Device {
            name: name.into(),
            ifname: name.into(),
            ifindex: 2,
            attributes: Default::default(),
            carrier_lost,
        }
    }

    fn entry(device: &str, healthy: bool) -> kubelet::DeviceHealth {
        kubelet::DeviceHealth {
            pool: "node-a".into(),
            device: device.into(),
            healthy,
        }
    }

    #[test]
    fn host_health_follows_carrier_and_leaves_claimed_devices_alone() {
        // eth9 is claimed (inside a pod): the status writer said unhealthy; keep it.
        // gone0 vanished from the node and is not claimed: drop it.
        let (tx, rx) = watch::channel(vec![entry("eth9", false), entry("gone0", true)]);
        let claimed = ["eth9".to_string()].into_iter().collect();
        let devices = [dev("eth1", false), dev("eth2", true), dev("eth9", false)];
        host_device_health(&tx, "node-a", &devices, &claimed);
        let mut got = rx.borrow().clone();
        got.sort_by(|a, b| a.device.cmp(&b.device));
        assert_eq!(
            got,
            vec![
                entry("eth1", true),
                entry("eth2", false),
                entry("eth9", false)
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
