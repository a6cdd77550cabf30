//! [`StatusWriter`]: the task that owns this driver's `status.devices[]` entries.
//!
//! Top-down: `lifecycle` sends a [`DeviceEvent`] per state change (never waiting on
//! the API server); the writer updates its in-memory entry for that device, reads the
//! device back from the kernel, and writes every entry of the claim in one
//! server-side apply on `resourceclaims/{name}/status` with field manager = driver
//! name (so other drivers' entries stay untouched, and entries this driver no longer
//! applies are removed). A refresher does the same for every live device every
//! `--status-interval`. A claim is written only when its entries changed; failed
//! writes (409, 429, 5xx, transport) are retried with backoff, and what still failed
//! is written again on the next change or refresh. The writer also feeds the kubelet
//! health stream: carrier lost or a drop spike marks a device unhealthy.
//!
//! It never touches links, namespaces or pins other than by reading them.

use crate::netns::quiet::{Deferral, Quiet};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::conditions::{
    now_rfc3339, transition, Condition, Desired, DATAPATH_READY, NETWORK_READY, READY,
};
use super::event::{DeviceEvent, DeviceRef, FailedPart};
use super::observe::{observe, Observation, Target};
use super::render;
use crate::datapath::PinLayout;
use crate::dhcp::Lease;
use crate::kubelet::health::DeviceHealth;
use crate::state::{ClaimRecord, StateStore};

/// Default `--status-interval`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Default drops per refresh interval that count as a spike.
pub const DEFAULT_DROP_SPIKE: u64 = 10_000;

/// Sending side of the event channel (held by `lifecycle`).
pub type StatusSender = mpsc::UnboundedSender<DeviceEvent>;
/// Receiving side (held by the writer).
pub type StatusReceiver = mpsc::UnboundedReceiver<DeviceEvent>;

/// A new event channel.
pub fn status_channel() -> (StatusSender, StatusReceiver) {
    mpsc::unbounded_channel()
}

/// How the writer behaves.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// Driver name: the entries' `driver` and the field manager.
    pub driver_name: String,
    /// `--status-interval`: how often counters and link state are re-read.
    pub interval: Duration,
    /// `--bpf-root`: where the data paths are pinned.
    pub bpf_root: PathBuf,
    /// Drops (all reasons) within one interval that mark a device unhealthy.
    pub drop_spike: u64,
    /// Attempts per write, and the first pause between them (doubled, capped at 5 s).
    pub attempts: u32,
    pub backoff: Duration,
    /// Pod hooks in flight: observing devices and writing status waits for them
    /// (bounded), so it does not compete with a namespace move or the runtime
    /// finishing the sandbox.
    pub quiet: &'static Quiet,
}

impl StatusConfig {
    pub fn new(driver_name: impl Into<String>, bpf_root: impl Into<PathBuf>) -> Self {
        Self {
            driver_name: driver_name.into(),
            interval: DEFAULT_STATUS_INTERVAL,
            bpf_root: bpf_root.into(),
            drop_spike: DEFAULT_DROP_SPIKE,
            attempts: 5,
            backoff: Duration::from_millis(200),
            quiet: Quiet::global(),
        }
    }
}

/// Why a claim's status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("claim {claim}: not found; its status entries are dropped")]
    ClaimGone { claim: String },
    #[error("claim {claim}: writing status.devices failed after {attempts} attempt(s): {source}")]
    Write {
        claim: String,
        attempts: u32,
        #[source]
        source: kube::Error,
    },
}

/// How a device got to where it is (from the last event).
#[derive(Clone, Debug)]
enum Origin {
    Started {
        datapath: bool,
    },
    Failed {
        part: FailedPart,
        reason: String,
        message: String,
    },
}

/// A device's DHCP lease as its entry shows it (`data.dhcp`).
#[derive(Clone, Debug, PartialEq)]
enum Dhcp {
    /// The device's config does not use DHCP: no `data.dhcp`.
    NotUsed,
    Held(Lease),
    /// The lease ran out and no new one came yet.
    Lost,
}

impl Dhcp {
    fn of(lease: Option<Lease>) -> Self {
        lease.map_or(Dhcp::Lost, Dhcp::Held)
    }
}

/// One device's entry as the writer keeps it.
#[derive(Clone, Debug)]
struct Tracked {
    device: DeviceRef,
    origin: Origin,
    dhcp: Dhcp,
    target: Option<Target>,
    observation: Option<Observation>,
    conditions: Vec<Condition>,
    /// Total drops at the previous refresh.
    prev_drops: Option<u64>,
    drop_spike: bool,
}

/// Every entry of one claim.
#[derive(Debug)]
struct ClaimStatus {
    claim: ClaimRecord,
    devices: BTreeMap<(String, String), Tracked>,
    /// The `status.devices` last written successfully.
    written: Option<Value>,
}

/// The status task; see the module docs.
pub struct StatusWriter {
    client: kube::Client,
    config: StatusConfig,
    layout: PinLayout,
    health: Option<watch::Sender<Vec<DeviceHealth>>>,
    claims: BTreeMap<String, ClaimStatus>,
    on_write_error: Option<Box<dyn Fn() + Send + Sync>>,
}

impl StatusWriter {
    pub fn new(client: kube::Client, config: StatusConfig) -> Self {
        let layout = PinLayout::new(config.bpf_root.clone());
        Self {
            client,
            config,
            layout,
            health: None,
            claims: BTreeMap::new(),
            on_write_error: None,
        }
    }

    /// Calls `hook` for every status write that failed after its retries (metrics).
    pub fn on_write_error(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_write_error = Some(Box::new(hook));
        self
    }

    /// Also publish device health on `sender` (the kubelet health stream's list).
    pub fn with_health(mut self, sender: watch::Sender<Vec<DeviceHealth>>) -> Self {
        self.health = Some(sender);
        self
    }

    /// Picks up the devices a previous run left attached (from the checkpoint), so a
    /// restarted driver keeps refreshing them. Conditions start fresh.
    pub fn seed(&mut self, store: &StateStore) {
        let claims = match store.list() {
            Ok(claims) => claims,
            Err(err) => {
                tracing::warn!("status: cannot read the checkpoint to seed entries: {err}");
                return;
            }
        };
        for plans in claims {
            for plan in plans.plans {
                let crate::state::Placement::InPod { attachment: att } = plan.placement else {
                    continue;
                };
                let datapath = if att.datapath {
                    crate::datapath::DatapathKey::new(
                        plan.claim.namespace.clone(),
                        plan.claim.name.clone(),
                        plan.device.clone(),
                    )
                    .ok()
                } else {
                    None
                };
                let device = DeviceRef {
                    claim: plan.claim,
                    pod: plan.pod,
                    pool: plan.pool,
                    device: plan.device,
                };
                let dhcp = att
                    .dhcp
                    .map_or(Dhcp::NotUsed, |record| Dhcp::of(record.lease));
                self.track(Tracked {
                    origin: Origin::Started {
                        datapath: datapath.is_some(),
                    },
                    dhcp,
                    target: Some(Target {
                        pod_netns: att.pod_netns,
                        pod_ifname: att.pod_ifname,
                        datapath,
                    }),
                    device,
                    observation: None,
                    conditions: Vec::new(),
                    prev_drops: None,
                    drop_spike: false,
                });
            }
        }
    }

    /// Runs until `stop` turns true (or its sender goes away) or every event sender
    /// is dropped.
    pub async fn run(mut self, mut events: StatusReceiver, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deferral = Deferral::default();
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                event = events.recv() => match event {
                    Some(event) => {
                        deferral.after_pod_hooks(self.config.quiet, "status").await;
                        self.handle(event).await
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    deferral.after_pod_hooks(self.config.quiet, "status").await;
                    self.refresh().await
                }
            }
        }
        tracing::debug!("status writer stopped");
    }

    /// Applies one event: updates the device's entry and writes its claim.
    pub async fn handle(&mut self, event: DeviceEvent) {
        let uid = event.device().claim.uid.clone();
        match event {
            DeviceEvent::Started {
                device,
                pod_netns,
                pod_ifname,
                datapath,
                dhcp,
            } => {
                let previous = self.previous_conditions(&device);
                let mut tracked = Tracked {
                    origin: Origin::Started {
                        datapath: datapath.is_some(),
                    },
                    dhcp: dhcp.map_or(Dhcp::NotUsed, Dhcp::Held),
                    target: Some(Target {
                        pod_netns,
                        pod_ifname,
                        datapath,
                    }),
                    device,
                    observation: None,
                    conditions: previous,
                    prev_drops: None,
                    drop_spike: false,
                };
                self.observe_one(&mut tracked).await;
                self.track(tracked);
            }
            DeviceEvent::Failed {
                device,
                part,
                reason,
                message,
            } => {
                let previous = self.previous_conditions(&device);
                self.track(Tracked {
                    device,
                    origin: Origin::Failed {
                        part,
                        reason,
                        message,
                    },
                    dhcp: Dhcp::NotUsed,
                    target: None,
                    observation: None,
                    conditions: previous,
                    prev_drops: None,
                    drop_spike: false,
                });
            }
            DeviceEvent::Lease { device, lease } => {
                let key = (device.pool.clone(), device.device.clone());
                let Some(tracked) = self
                    .claims
                    .get_mut(&uid)
                    .and_then(|c| c.devices.get_mut(&key))
                else {
                    return; // stopped meanwhile: nothing to show it on
                };
                if !matches!(tracked.origin, Origin::Started { .. }) {
                    return;
                }
                tracked.dhcp = Dhcp::of(lease);
            }
            DeviceEvent::Stopped { device } => {
                if let Some(claim) = self.claims.get_mut(&uid) {
                    claim
                        .devices
                        .remove(&(device.pool.clone(), device.device.clone()));
                }
                self.publish_health(&[(device.pool.clone(), device.device.clone(), true)]);
            }
        }
        self.write_claim(&uid).await;
    }

    /// Re-reads every live device and writes the claims whose entries changed.
    pub async fn refresh(&mut self) {
        let uids: Vec<String> = self.claims.keys().cloned().collect();
        let mut health = Vec::new();
        for uid in uids {
            let keys: Vec<(String, String)> = match self.claims.get(&uid) {
                Some(c) => c.devices.keys().cloned().collect(),
                None => continue,
            };
            for key in keys {
                let Some(mut tracked) = self
                    .claims
                    .get_mut(&uid)
                    .and_then(|c| c.devices.remove(&key))
                else {
                    continue;
                };
                if tracked.target.is_some() {
                    self.observe_one(&mut tracked).await;
                    health.push((key.0.clone(), key.1.clone(), is_healthy(&tracked)));
                }
                if let Some(c) = self.claims.get_mut(&uid) {
                    c.devices.insert(key, tracked);
                }
            }
            self.write_claim(&uid).await;
        }
        self.publish_health(&health);
    }

    fn previous_conditions(&self, device: &DeviceRef) -> Vec<Condition> {
        self.claims
            .get(&device.claim.uid)
            .and_then(|c| c.devices.get(&(device.pool.clone(), device.device.clone())))
            .map(|t| t.conditions.clone())
            .unwrap_or_default()
    }

    fn track(&mut self, mut tracked: Tracked) {
        update_conditions(&mut tracked);
        let claim = self
            .claims
            .entry(tracked.device.claim.uid.clone())
            .or_insert_with(|| ClaimStatus {
                claim: tracked.device.claim.clone(),
                devices: BTreeMap::new(),
                written: None,
            });
        claim.devices.insert(
            (tracked.device.pool.clone(), tracked.device.device.clone()),
            tracked,
        );
    }

    async fn observe_one(&self, tracked: &mut Tracked) {
        let Some(target) = tracked.target.clone() else {
            return;
        };
        let layout = self.layout.clone();
        let observation = match tokio::task::spawn_blocking(move || observe(&target, &layout)).await
        {
            Ok(o) => o,
            Err(err) => Observation {
                link: Err(format!("observer task failed: {err}")),
                counters: None,
                info: None,
            },
        };
        if let Some(Ok(counters)) = &observation.counters {
            let total: u64 = counters.drops.values().sum();
            tracked.drop_spike = tracked
                .prev_drops
                .is_some_and(|prev| total.saturating_sub(prev) >= self.config.drop_spike);
            tracked.prev_drops = Some(total);
        }
        tracked.observation = Some(observation);
        update_conditions(tracked);
    }

    fn render(&self, claim: &ClaimStatus) -> Vec<AllocatedDeviceStatus> {
        claim
            .devices
            .values()
            .map(|t| render_entry(&self.config.driver_name, t))
            .collect()
    }

    async fn write_claim(&mut self, uid: &str) {
        let Some(claim) = self.claims.get(uid) else {
            return;
        };
        let entries = self.render(claim);
        let devices = json!(entries);
        if claim.written.as_ref() == Some(&devices) {
            return;
        }
        let record = claim.claim.clone();
        let now_empty = claim.devices.is_empty();
        let mut result = self.patch(&record, &devices).await;
        if let Err(StatusError::Write {
            source: kube::Error::Api(refused),
            ..
        }) = &result
        {
            if refused.code == 422 {
                // The server refused the entries as they are: keep what identifies each
                // device and its conditions, drop the optional parts, say why.
                tracing::warn!(claim = %record, "status refused by the API server ({}); writing conditions only", refused.message);
                let minimal: Vec<AllocatedDeviceStatus> = entries
                    .iter()
                    .map(|e| render::minimal(e, &refused.message))
                    .collect();
                result = self.patch(&record, &json!(minimal)).await;
            }
        }
        match result {
            Ok(()) => {
                tracing::debug!(claim = %record, entries = devices.as_array().map_or(0, Vec::len), "status written");
                if now_empty {
                    self.claims.remove(uid);
                } else if let Some(claim) = self.claims.get_mut(uid) {
                    claim.written = Some(devices);
                }
            }
            Err(StatusError::ClaimGone { claim }) => {
                tracing::info!(claim = %claim, "claim gone; dropping its status entries");
                self.claims.remove(uid);
            }
            Err(err) => {
                tracing::warn!("{err}");
                if let Some(hook) = &self.on_write_error {
                    hook();
                }
            }
        }
    }

    async fn patch(&self, claim: &ClaimRecord, devices: &Value) -> Result<(), StatusError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &claim.namespace);
        let body = json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": claim.name, "namespace": claim.namespace},
            "status": {"devices": devices},
        });
        let params = PatchParams::apply(&self.config.driver_name).force();
        let attempts = self.config.attempts.max(1);
        let mut pause = self.config.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match api
                .patch_status(&claim.name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    return Err(StatusError::ClaimGone {
                        claim: claim.to_string(),
                    })
                }
                Err(err) if attempt < attempts && retryable(&err) => {
                    tracing::debug!(claim = %claim, attempt, "status write failed, retrying: {err}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(source) => {
                    return Err(StatusError::Write {
                        claim: claim.to_string(),
                        attempts: attempt,
                        source,
                    })
                }
            }
        }
    }

    fn publish_health(&self, updates: &[(String, String, bool)]) {
        let Some(sender) = &self.health else { return };
        if updates.is_empty() {
            return;
        }
        sender.send_if_modified(|list| {
            let mut changed = false;
            for (pool, device, healthy) in updates {
                match list
                    .iter_mut()
                    .find(|d| &d.pool == pool && &d.device == device)
                {
                    Some(d) if d.healthy != *healthy => {
                        tracing::info!(pool = %pool, device = %device, healthy, "device health changed");
                        d.healthy = *healthy;
                        changed = true;
                    }
                    Some(_) => {}
                    None => {
                        list.push(DeviceHealth {
                            pool: pool.clone(),
                            device: device.clone(),
                            healthy: *healthy,
                        });
                        changed = true;
                    }
                }
            }
            changed
        });
    }
}

/// 409 (conflict), 429 and 5xx from the API server, and transport errors.
fn retryable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 409 || status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn is_healthy(t: &Tracked) -> bool {
    let link_up = match t.observation.as_ref().map(|o| &o.link) {
        Some(Ok(view)) => view.state == "up",
        Some(Err(_)) => false,
        None => true,
    };
    link_up && !t.drop_spike
}

/// What the three conditions should say for `t` now.
fn desired(t: &Tracked) -> Vec<Desired> {
    match &t.origin {
        Origin::Failed {
            part,
            reason,
            message,
        } => {
            let failed = |ty| Desired::failed(ty, reason, message.clone());
            match part {
                FailedPart::Network => vec![
                    failed(READY),
                    failed(NETWORK_READY),
                    Desired::failed(
                        DATAPATH_READY,
                        "NotAttempted",
                        "the interface could not be configured",
                    ),
                ],
                FailedPart::DataPath => vec![
                    failed(READY),
                    Desired::failed(
                        NETWORK_READY,
                        "RolledBack",
                        "the interface was configured, then returned to the host because its data path failed",
                    ),
                    failed(DATAPATH_READY),
                ],
                FailedPart::Sibling => {
                    vec![failed(READY), failed(NETWORK_READY), failed(DATAPATH_READY)]
                }
            }
        }
        Origin::Started { datapath } => {
            let link = t.observation.as_ref().map(|o| &o.link);
            let ready = match link {
                Some(Ok(view)) if view.state != "up" => Desired::failed(
                    READY,
                    "LinkDown",
                    format!("interface {} is {}", view.ifname, view.state),
                ),
                Some(Err(e)) => Desired::failed(READY, "InterfaceNotFound", e.clone()),
                _ => Desired::ok(READY, "NetworkDeviceReady"),
            };
            let network = match link {
                Some(Err(e)) => Desired::failed(NETWORK_READY, "InterfaceNotFound", e.clone()),
                _ => Desired::ok(NETWORK_READY, "NetworkReady"),
            };
            let dp = if !datapath {
                Desired::ok(DATAPATH_READY, "DataPathDisabled")
            } else {
                match t.observation.as_ref().and_then(|o| o.info.as_ref()) {
                    Some(Err(e)) => Desired::failed(DATAPATH_READY, "DataPathMissing", e.clone()),
                    _ => Desired::ok(DATAPATH_READY, "DataPathReady"),
                }
            };
            vec![ready, network, dp]
        }
    }
}

fn update_conditions(t: &mut Tracked) {
    let next = transition(&t.conditions, &desired(t), &now_rfc3339());
    for c in &next {
        let before = t.conditions.iter().find(|p| p.type_ == c.type_);
        if before.map(|p| &p.status) != Some(&c.status) {
            tracing::info!(
                claim = %t.device.claim,
                pod = %t.device.pod,
                device = %t.device.device,
                condition = %c.type_,
                status = %c.status,
                reason = %c.reason,
                "device condition"
            );
        }
    }
    t.conditions = next;
}

/// `Available`, `Error`, or `Pending` (started, not yet read back).
fn state(t: &Tracked) -> &'static str {
    match t.origin {
        Origin::Failed { .. } => "Error",
        Origin::Started { .. } if t.observation.is_none() => "Pending",
        Origin::Started { .. } => {
            if t.conditions.iter().all(|c| c.status == "True") {
                "Available"
            } else {
                "Error"
            }
        }
    }
}

fn render_entry(driver: &str, t: &Tracked) -> AllocatedDeviceStatus {
    let mut data = serde_json::Map::new();
    data.insert("state".into(), json!(state(t)));
    data.insert("pod".into(), json!(t.device.pod.to_string()));
    if let Origin::Failed { message, .. } = &t.origin {
        data.insert("error".into(), json!(message));
    }
    match &t.dhcp {
        Dhcp::NotUsed => {}
        Dhcp::Held(lease) => {
            data.insert("dhcp".into(), render::dhcp_lease(Some(lease)));
        }
        Dhcp::Lost => {
            data.insert("dhcp".into(), render::dhcp_lease(None));
        }
    }
    let mut network_data = None;
    if let Some(obs) = &t.observation {
        match &obs.link {
            Ok(view) => {
                let (nd, total) =
                    render::network_data(&view.ifname, view.mac.as_deref(), &view.ips);
                let mut link = json!({"state": view.state, "addresses": total});
                if total > render::MAX_IPS {
                    // networkData holds at most 16; the rest is counted here.
                    link["addressesNotInNetworkData"] = json!(total - render::MAX_IPS);
                }
                data.insert("link".into(), link);
                network_data = Some(nd);
            }
            Err(e) => {
                data.insert("link".into(), json!({"error": e}));
            }
        }
        match &obs.counters {
            Some(Ok(c)) => {
                data.insert("counters".into(), render::bounded_counters(c));
            }
            Some(Err(e)) => {
                data.insert("counters".into(), json!({"error": e}));
            }
            None => {}
        }
        match &obs.info {
            Some(Ok(info)) => {
                data.insert(
                    "datapath".into(),
                    json!({
                        "egressMode": info.egress_mode,
                        "ingressMode": info.ingress_mode,
                        "egressProgramId": info.egress_program_id,
                        "ingressProgramId": info.ingress_program_id,
                        "egressLinkId": info.egress_link_id,
                        "ingressLinkId": info.ingress_link_id,
                        "pinDir": info.pin_dir,
                        "policyGeneration": info.generation,
                        "enforcement": info.enforcement,
                        "flags": info.flags,
                        "socketGuard": info.socket_guard,
                    }),
                );
            }
            Some(Err(e)) => {
                data.insert("datapath".into(), json!({"error": e}));
            }
            None => {
                if matches!(t.origin, Origin::Started { datapath: false }) {
                    data.insert("datapath".into(), json!({"enabled": false}));
                }
            }
        }
    }
    render::entry(
        driver,
        &t.device.pool,
        &t.device.device,
        &t.conditions,
        data,
        network_data,
    )
}
