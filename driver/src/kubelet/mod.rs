//! The kubelet plugin: registration, the DRA services and the health stream.
//!
//! What happens when kubelet meets the driver, top-down:
//! 1. [`serve`] binds the DRA socket `<kubelet-dir>/plugins/<driver>/dra.sock` and
//!    serves `v1.DRAPlugin`, `v1beta1.DRAPlugin` and `v1alpha1.DRAResourceHealth` on it
//!    ([`dra`], [`health`]);
//! 2. then it binds `<kubelet-dir>/plugins_registry/<driver>-reg.sock`
//!    ([`registration`]). Kubelet notices the file, calls `GetInfo`, connects to the DRA
//!    socket and answers with `NotifyRegistrationStatus`. A refusal makes the plugin
//!    not ready and re-creates the registration socket after a backoff, so kubelet
//!    tries again;
//! 3. `NodePrepareResources` / `NodeUnprepareResources` of either version go to one
//!    [`ClaimPreparer`]; the real one is [`prepare::Preparer`] (claim → plans →
//!    checkpoint). [`NotifyingPreparer`] wraps it to tell others when the prepared
//!    claims may have changed;
//! 4. after a corrupt checkpoint, [`rebuild`] prepares again, from the API server,
//!    the claims kubelet would have asked for.
//!
//! This module owns the two sockets (created 0600 in 0750 directories, stale files
//! replaced, removed when the plugin stops). It does not publish ResourceSlices and
//! does not touch the kernel.

pub mod authority;
pub mod dra;
pub mod health;
pub mod prepare;
pub mod proto;
pub mod rebuild;
pub mod registration;
pub mod socket;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use dra::DraService;
pub use health::{DeviceHealth, HealthService};
pub use prepare::{ConfigParser, PrepareError, Preparer};
pub use rebuild::{rebuild_plans, RebuildError};
pub use registration::{RegistrationService, RegistrationState};
pub use socket::{SocketError, SocketGuard};

/// Default kubelet root directory.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

/// Versions advertised in `PluginInfo.supported_versions` (PROTOCOLS.md §1).
pub const SUPPORTED_VERSIONS: [&str; 3] = [
    "v1.DRAPlugin",
    "v1beta1.DRAPlugin",
    "v1alpha1.DRAResourceHealth",
];

/// A claim as kubelet names it in a prepare or unprepare call.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One device of a prepared claim, as returned to kubelet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreparedDevice {
    pub request_names: Vec<String>,
    pub pool: String,
    pub device: String,
    pub cdi_device_ids: Vec<String>,
    /// Only sent over v1.
    pub share_id: Option<String>,
}

/// Per-claim results of a prepare call, keyed by claim UID.
pub type PrepareResults = BTreeMap<String, Result<Vec<PreparedDevice>, String>>;
/// Per-claim results of an unprepare call, keyed by claim UID.
pub type UnprepareResults = BTreeMap<String, Result<(), String>>;

/// What the DRA services delegate to. Failures are per claim: an `Err` becomes that
/// claim's `error` and the call as a whole still succeeds.
#[async_trait::async_trait]
pub trait ClaimPreparer: Send + Sync + 'static {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults;
    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults;
}

/// A [`ClaimPreparer`] that calls `changed` after every prepare and unprepare call of
/// `inner`, whatever its outcome, before the call returns: whoever derives state from
/// the prepared claims (the claimed devices the inventory keeps published) catches up
/// before kubelet hears the answer.
pub struct NotifyingPreparer {
    inner: Arc<dyn ClaimPreparer>,
    changed: Arc<dyn Fn() + Send + Sync>,
}

impl NotifyingPreparer {
    pub fn new(inner: Arc<dyn ClaimPreparer>, changed: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self { inner, changed }
    }
}

#[async_trait::async_trait]
impl ClaimPreparer for NotifyingPreparer {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let results = self.inner.prepare(claims).await;
        (self.changed)();
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let results = self.inner.unprepare(claims).await;
        (self.changed)();
        results
    }
}

/// Where and as whom the plugin serves.
#[derive(Clone, Debug)]
pub struct KubeletPluginConfig {
    /// Kubelet's root directory (`/var/lib/kubelet`).
    pub kubelet_dir: PathBuf,
    /// The DRA driver name (`netclaim.dev`).
    pub driver_name: String,
    /// First wait before re-registering after kubelet refused the plugin; doubles up
    /// to [`KubeletPluginConfig::max_registration_backoff`].
    pub registration_backoff: Duration,
    pub max_registration_backoff: Duration,
}

impl KubeletPluginConfig {
    pub fn new(kubelet_dir: impl Into<PathBuf>, driver_name: impl Into<String>) -> Self {
        Self {
            kubelet_dir: kubelet_dir.into(),
            driver_name: driver_name.into(),
            registration_backoff: Duration::from_secs(1),
            max_registration_backoff: Duration::from_secs(60),
        }
    }

    /// `<kubelet-dir>/plugins_registry/<driver>-reg.sock`
    pub fn registration_socket(&self) -> PathBuf {
        self.kubelet_dir
            .join("plugins_registry")
            .join(format!("{}-reg.sock", self.driver_name))
    }

    /// `<kubelet-dir>/plugins/<driver>/dra.sock`, made absolute.
    pub fn dra_socket(&self) -> PathBuf {
        absolute(
            &self
                .kubelet_dir
                .join("plugins")
                .join(&self.driver_name)
                .join("dra.sock"),
        )
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The running plugin. Dropping it stops the servers (sockets are removed as the
/// tasks end); [`KubeletPlugin::shutdown`] waits for that.
pub struct KubeletPlugin {
    stop: watch::Sender<bool>,
    registration: watch::Receiver<RegistrationState>,
    tasks: Vec<JoinHandle<()>>,
    dra_socket: PathBuf,
    registration_socket: PathBuf,
}

impl KubeletPlugin {
    /// True once kubelet confirmed the registration (and has not refused it since).
    pub fn is_ready(&self) -> bool {
        self.registration.borrow().is_registered()
    }

    /// Registration state changes, for readiness probes and tests.
    pub fn registration(&self) -> watch::Receiver<RegistrationState> {
        self.registration.clone()
    }

    pub fn dra_socket(&self) -> &Path {
        &self.dra_socket
    }

    pub fn registration_socket(&self) -> &Path {
        &self.registration_socket
    }

    /// Stops both servers and waits until their sockets are removed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for KubeletPlugin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the DRA services, then registration. Returns once both sockets exist.
pub async fn serve(
    config: KubeletPluginConfig,
    preparer: Arc<dyn ClaimPreparer>,
    health: watch::Receiver<Vec<DeviceHealth>>,
) -> Result<KubeletPlugin, SocketError> {
    let (stop, stop_rx) = watch::channel(false);
    let dra_socket = config.dra_socket();
    let dra_listener = SocketGuard::bind(&dra_socket)?;
    let dra_task = tokio::spawn(dra::run(dra_listener, preparer, health, stop_rx.clone()));
    let (registration, registration_task) =
        match registration::start(config.clone(), dra_socket.clone(), stop_rx) {
            Ok(started) => started,
            Err(err) => {
                let _ = stop.send(true);
                let _ = dra_task.await;
                return Err(err);
            }
        };
    Ok(KubeletPlugin {
        stop,
        registration,
        tasks: vec![dra_task, registration_task],
        dra_socket,
        registration_socket: config.registration_socket(),
    })
}

/// Resolves when `stop` turns true or its sender is gone.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
