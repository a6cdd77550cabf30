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
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use crate::{
    datapath::PinLayout,
    inventory::{DeviceFilter, InventoryOptions, InventoryWatcher},
    kubelet::{
        self, ClaimPreparer, KubeletPluginConfig, NotifyingPreparer, Preparer, RegistrationState,
        SocketGuard,
    },
    lifecycle::{
        staging::StagingPreparer, DeviceOutcome, InventoryResolver, LifecycleConfig,
        LifecycleError, Pods,
    },
    metrics::{MeteredPods, MeteredPreparer, Metrics, Readiness},
    netns::Netns,
    nri::NriPlugin,
    publisher::{self, PoolIdentity, Publisher},
    state::StateStore,
    status::{health::host_health, status_channel, StatusConfig, StatusWriter},
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
    /// The socket `netclaim-cni` (chained in the node's CNI configuration) reaches the
    /// driver on [default: `<state-dir>/cni.sock`].
    #[arg(long)]
    pub cni_socket: Option<PathBuf>,
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

/// Calls `f` with the current value of `rx`, then again after every change, until the
/// sender is gone: one owner's state carried into another's (readiness, metrics).
async fn follow<T: Clone>(mut rx: watch::Receiver<T>, mut f: impl FnMut(&T)) {
    loop {
        let value = rx.borrow_and_update().clone();
        f(&value);
        if rx.changed().await.is_err() {
            break;
        }
    }
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
    let layout = PinLayout::new(&args.bpf_root);
    if args.dataplane == Dataplane::On {
        layout
            .ensure_root()
            .with_context(|| format!("--bpf-root {}", args.bpf_root.display()))?;
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
    // Pod hooks record placements in the checkpoint's journal; the redb file and the
    // mirror catch up once writes pause.
    StateStore::spawn_flusher(
        &store,
        CHECKPOINT_CATCH_UP,
        crate::netns::quiet::Quiet::global(),
    )
    .context("starting the checkpoint flusher")?;

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
    let claimed_now = {
        let store = store.clone();
        move || {
            store.claimed_devices().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the checkpoint for claimed devices");
                BTreeSet::new()
            })
        }
    };
    let (claimed_tx, claimed_rx) = watch::channel(claimed_now());
    inventory.pin_in_use(claimed_rx.borrow().clone());
    // After a restart, devices already inside pods are not on the node: their records
    // come from the slices the previous run published, before anything is republished.
    let pool = PoolIdentity {
        driver: args.driver_name.clone(),
        node: args.node_name.clone(),
        owner: None,
    };
    let claimed = claimed_rx.borrow().clone();
    let remembered = publisher::published_records(&client, &pool, &claimed)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the previous ResourceSlices for claimed devices failed; devices inside pods reappear when they come home");
            Vec::new()
        });
    let names: Vec<String> = remembered.iter().map(|d| d.name.clone()).collect();
    inventory.remember(remembered);
    // The publisher starts only once the inventory lists them, so they never vanish.
    if !publisher::until_listed(&devices, &names, Duration::from_secs(2)).await {
        tracing::warn!("the inventory did not take up the claimed devices in time");
    }
    let pin_claimed: Arc<dyn Fn() + Send + Sync> = {
        let inventory = inventory.clone();
        Arc::new(move || {
            let claimed = claimed_now();
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
    tokio::spawn(follow(publisher.published(), {
        let (readiness, metrics, devices) = (readiness.clone(), metrics.clone(), devices.clone());
        move |published: &Option<u64>| {
            if published.is_some() {
                readiness.slices_published.store(true, Ordering::Relaxed);
                metrics.set_published_devices(devices.borrow().len());
            }
        }
    }));

    // 5. Kubelet plugin.
    let (health_tx, health_rx) = watch::channel(Vec::new());
    // Health of published devices still on the node, from carrier: devices in claims
    // are reported by the status writer from inside their pods instead.
    tokio::spawn(host_health(
        devices.clone(),
        claimed_rx.clone(),
        health_tx.clone(),
        args.node_name.clone(),
    ));
    let preparer = Preparer::new(
        client.clone(),
        args.driver_name.clone(),
        store.clone(),
        kubelet::prepare::network_config_parser(),
    );
    // Data paths are staged at prepare once the lifecycle exists (step 6).
    let staging = Arc::new(std::sync::OnceLock::new());
    let preparer: Arc<dyn ClaimPreparer> = Arc::new(NotifyingPreparer::new(
        Arc::new(MeteredPreparer::new(
            Arc::new(StagingPreparer::new(Arc::new(preparer), staging.clone())),
            metrics.clone(),
        )),
        pin_claimed,
    ));
    if let Some(aside) = store.moved_aside() {
        let rebuilt = kubelet::rebuild_plans(
            &client,
            &args.driver_name,
            &args.node_name,
            preparer.as_ref(),
            aside,
        )
        .await;
        if let Err(e) = rebuilt {
            tracing::error!(error = %e, "checkpoint rebuild failed; claims are prepared again when kubelet asks");
        }
    }
    let plugin = kubelet::serve(
        KubeletPluginConfig::new(&args.kubelet_dir, &args.driver_name),
        preparer,
        health_rx,
    )
    .await
    .context("starting the kubelet plugin")?;
    tokio::spawn(follow(plugin.registration(), {
        let readiness = readiness.clone();
        move |registration: &RegistrationState| {
            readiness
                .kubelet_registered
                .store(registration.is_registered(), Ordering::Relaxed);
        }
    }));

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

    let resolver = InventoryResolver::new(
        args.node_name.clone(),
        devices.clone(),
        host.clone(),
        inventory_options,
    );
    let mut lifecycle = LifecycleConfig::new(&args.bpf_root);
    lifecycle.dataplane = args.dataplane == Dataplane::On;
    let dataplane = lifecycle.dataplane;
    let pods = Pods::new(
        store.clone(),
        host.try_clone().context("the node's network namespace")?,
        Arc::new(resolver),
        lifecycle,
        Some(status_tx),
    );
    if dataplane {
        let _ = staging.set(pods.clone());
    }
    // Pods that ended while the driver was away, then pods that end without a stop.
    for (uid, result) in tokio::task::spawn_blocking({
        let pods = pods.clone();
        move || pods.adopt()
    })
    .await
    .context("adopting the pods' namespaces")?
    {
        log_ended(&uid, result);
    }
    tokio::spawn(reap_ended(pods.clone()));
    let pods_for_cni = pods.clone();
    let nri = NriPlugin::connect(
        &args.nri_socket,
        args.driver_name.clone(),
        args.nri_index.clone(),
        Arc::new(MeteredPods::new(Arc::new(pods), metrics.clone())),
    )
    .context("starting the NRI plugin")?;
    let cni_socket = args
        .cni_socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join("cni.sock"));
    let cni = SocketGuard::bind(&cni_socket).context("starting the CNI socket")?;
    tracing::info!(socket = %cni.path().display(), "CNI socket ready (netclaim-cni starts hand-overs at the CNI ADD)");
    let cni_task = crate::cni::server::serve(cni, pods_for_cni, nri.request_timeout_handle());
    tokio::spawn(follow(nri.connected(), {
        let readiness = readiness.clone();
        move |&up: &bool| {
            readiness.nri_connected.store(up, Ordering::Relaxed);
            tracing::info!(connected = up, "NRI connection state");
        }
    }));

    // 7. Run until told to stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    drop(nri);
    cni_task.abort();
    let _ = cni_task.await;
    plugin.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), status_task).await;
    drop(publisher);
    drop(inventory);
    if let Err(e) = store.flush() {
        tracing::warn!(error = %e, "checkpoint not caught up at shutdown; its journal is replayed at the next start");
    }
    tracing::info!("netclaim stopped; devices in pods and their data paths stay in place");
    Ok(0)
}

/// How long checkpoint writes must pause before the redb file and the mirror catch up
/// with the journal (a catch-up holds the writers for a few milliseconds).
const CHECKPOINT_CATCH_UP: Duration = Duration::from_secs(1);

/// How often the pods' held namespaces are compared with the runtime's mounts.
const ENDED_POD_CHECK: Duration = Duration::from_millis(500);

/// Gives back the devices of pods whose namespace the runtime removed without a stop.
async fn reap_ended(pods: Pods) {
    let mut tick = tokio::time::interval(ENDED_POD_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pods = pods.clone();
        let Ok(results) = tokio::task::spawn_blocking(move || pods.reap_ended()).await else {
            continue;
        };
        for (uid, result) in results {
            log_ended(&uid, result);
        }
    }
}

fn log_ended(uid: &str, result: Result<Vec<DeviceOutcome>, LifecycleError>) {
    match result {
        Ok(outcomes) => {
            for o in outcomes {
                tracing::info!(pod_uid = uid, claim = %o.claim, device = %o.device, action = ?o.action, "device of an ended pod handled");
            }
        }
        Err(e) => tracing::warn!(
            pod_uid = uid,
            "returning the devices of an ended pod: {e}; will retry"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
