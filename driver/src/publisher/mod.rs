//! The ResourceSlice publisher: keeps this node's pool in the API server equal to the
//! inventory's device list.
//!
//! [`Publisher::start`] spawns one task that owns the node's slices (those labelled
//! with [`slices::NODE_LABEL`] and [`slices::DRIVER_LABEL`]). It reconciles when:
//! * the inventory's `watch` channel changes — a new device set or any changed
//!   attribute bumps the pool generation;
//! * a watch on our own slices reports something we did not write (a slice deleted
//!   or edited by someone else): the slice is recreated or overwritten;
//! * a write failed: retried with a backoff from 100 ms up to 5 s.
//!
//! A reconcile lists our slices, builds the desired ones ([`slices::build_slices`]),
//! creates the missing, replaces the differing (with the listed resourceVersion; a
//! 409 re-reads and retries) and then deletes the stale ones (extra indices after a
//! shrink). New-generation slices are written before old ones are deleted, so the
//! scheduler always sees a complete pool of some generation.
//!
//! The Node object is read for its uid so the slices are owned by it (and removed with
//! it); a missing Node is logged and the slices are published without an owner, the
//! lookup being retried every 30 s.
//!
//! This module never touches the kernel and never deletes slices on shutdown: a
//! restarting driver finds its slices by name and overwrites them, and reads the
//! records of devices that are inside pods back from them first ([`records`]).

pub mod records;
pub mod slices;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::inventory::Device;
pub use records::{published_records, until_listed};
pub use slices::PoolIdentity;

/// How many times one slice write is retried after a 409 before the reconcile
/// gives up (and is retried as a whole after the backoff).
const CONFLICT_RETRIES: usize = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a missing Node is looked up again.
const NODE_RETRY: Duration = Duration::from_secs(30);

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("ResourceSlice {slice}: {what}: {source}")]
    Slice {
        slice: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("listing ResourceSlices of node {node}: {source}")]
    List {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("ResourceSlice {slice}: still conflicting after {CONFLICT_RETRIES} attempts")]
    Conflict { slice: String },
}

/// Entry point of the publisher.
#[derive(Debug)]
pub struct Publisher;

impl Publisher {
    /// Starts publishing `devices` as node `node_name`'s pool of driver `driver`.
    /// Must be called inside a tokio runtime.
    pub fn start(
        client: kube::Client,
        driver: String,
        node_name: String,
        devices: watch::Receiver<Arc<Vec<Device>>>,
    ) -> PublisherHandle {
        let (published_tx, published) = watch::channel(None);
        let task = tokio::spawn(run(client, driver, node_name, devices, published_tx));
        PublisherHandle { published, task }
    }
}

/// The running publisher; dropping it stops the task (the slices stay).
#[derive(Debug)]
pub struct PublisherHandle {
    published: watch::Receiver<Option<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl PublisherHandle {
    /// The pool generation last written completely (every slice of it created or
    /// up to date, stale ones deleted); `None` until the first publish succeeds.
    pub fn published(&self) -> watch::Receiver<Option<u64>> {
        self.published.clone()
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The publisher's memory between reconciles.
struct State {
    api: Api<ResourceSlice>,
    nodes: Api<Node>,
    pool: PoolIdentity,
    /// Generation of the pool as last built, 0 before the first reconcile.
    generation: u64,
    /// The device list `generation` describes.
    described: Option<Arc<Vec<Device>>>,
    /// (name, resourceVersion) of our own writes whose watch events are still due,
    /// and names we deleted: their events need no reconcile.
    own_writes: HashSet<(String, String)>,
    own_deletes: HashSet<String>,
    node_checked: Option<Instant>,
    published: watch::Sender<Option<u64>>,
}

async fn run(
    client: kube::Client,
    driver: String,
    node: String,
    mut devices: watch::Receiver<Arc<Vec<Device>>>,
    published: watch::Sender<Option<u64>>,
) {
    let pool = PoolIdentity {
        driver,
        node,
        owner: None,
    };
    let config = watcher::Config::default().labels(&pool.selector());
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    let mut state = State {
        api,
        nodes: Api::all(client),
        pool,
        generation: 0,
        described: None,
        own_writes: HashSet::new(),
        own_deletes: HashSet::new(),
        node_checked: None,
        published,
    };
    let mut dirty = true;
    let mut devices_open = true;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        if !dirty {
            tokio::select! {
                changed = devices.changed(), if devices_open => {
                    if changed.is_err() {
                        tracing::debug!("inventory stopped; keeping its last device list published");
                        devices_open = false;
                    } else {
                        dirty = true;
                    }
                }
                event = events.next() => match event {
                    Some(event) => dirty |= state.needs_reconcile(event),
                    None => return,
                },
                _ = sleep_until(retry_at), if retry_at.is_some() => dirty = true,
            }
            continue;
        }
        // Take every event already queued, so a burst costs one reconcile.
        while let Some(Some(event)) = events.next().now_or_never() {
            state.needs_reconcile(event);
        }
        let current = devices.borrow_and_update().clone();
        match state.reconcile(current).await {
            Ok(()) => {
                dirty = false;
                retry_at = None;
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "publishing ResourceSlices failed");
                dirty = false;
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

impl State {
    /// Whether a watch event on our slices asks for a reconcile (it does unless we
    /// caused it ourselves).
    fn needs_reconcile(
        &mut self,
        event: Result<watcher::Event<ResourceSlice>, watcher::Error>,
    ) -> bool {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "ResourceSlice watch error (it restarts)");
                return false;
            }
        };
        match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                let key = (
                    s.metadata.name.clone().unwrap_or_default(),
                    s.metadata.resource_version.clone().unwrap_or_default(),
                );
                !self.own_writes.remove(&key)
            }
            watcher::Event::Delete(s) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                !self.own_deletes.remove(&name)
            }
            watcher::Event::Init => false,
            // After a (re)start of the watch anything may have been missed.
            watcher::Event::InitDone => true,
        }
    }

    /// Looks up the Node for the owner reference (at first and then every 30 s
    /// while it is missing).
    async fn refresh_owner(&mut self) {
        if self.pool.owner.is_some() || self.node_checked.is_some_and(|t| t.elapsed() < NODE_RETRY)
        {
            return;
        }
        self.node_checked = Some(Instant::now());
        match self.nodes.get_opt(&self.pool.node).await {
            Ok(Some(node)) => match node.metadata.uid {
                Some(uid) => {
                    self.pool.owner = Some(slices::node_owner(&self.pool.node, &uid));
                }
                None => {
                    tracing::warn!(node = %self.pool.node, "Node has no uid; publishing ResourceSlices without an owner")
                }
            },
            Ok(None) => {
                tracing::warn!(node = %self.pool.node, "Node not found; publishing ResourceSlices without an owner (retrying every 30 s)")
            }
            Err(e) => {
                tracing::warn!(node = %self.pool.node, error = %e, "reading the Node failed; publishing ResourceSlices without an owner")
            }
        }
    }

    async fn reconcile(&mut self, devices: Arc<Vec<Device>>) -> Result<(), PublishError> {
        self.refresh_owner().await;
        let listed = self
            .api
            .list(&ListParams::default().labels(&self.pool.selector()))
            .await
            .map_err(|source| PublishError::List {
                node: self.pool.node.clone(),
                source,
            })?;
        let observed: BTreeMap<String, ResourceSlice> = listed
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name.clone().map(|n| (n, s)))
            .collect();
        let highest = observed
            .values()
            .filter(|s| s.spec.pool.name == self.pool.node && s.spec.driver == self.pool.driver)
            .map(|s| u64::try_from(s.spec.pool.generation).unwrap_or(0))
            .max()
            .unwrap_or(0);

        let changed = self.described.as_ref().is_none_or(|d| **d != *devices);
        if self.generation == 0 {
            // First reconcile: keep the stored generation if the stored slices already
            // say exactly this, otherwise start above it.
            let same = highest > 0 && {
                let want = slices::build_slices(&self.pool, &devices, highest);
                want.len() == observed.len()
                    && want.iter().all(|w| {
                        w.metadata
                            .name
                            .as_ref()
                            .and_then(|n| observed.get(n))
                            .is_some_and(|o| slices::up_to_date(o, w))
                    })
            };
            self.generation = if same { highest } else { highest + 1 };
        } else if changed || highest > self.generation {
            self.generation = self.generation.max(highest) + 1;
        }
        self.described = Some(devices.clone());

        let desired = slices::build_slices(&self.pool, &devices, self.generation);
        let mut writes = 0usize;
        for want in &desired {
            let name = want.metadata.name.clone().unwrap_or_default();
            if self.write(&name, want, observed.get(&name)).await? {
                writes += 1;
            }
        }
        let wanted: HashSet<&str> = desired
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        for (name, stale) in observed
            .iter()
            .filter(|(n, _)| !wanted.contains(n.as_str()))
        {
            let mut params = DeleteParams::default();
            if let Some(uid) = &stale.metadata.uid {
                params = params.preconditions(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                });
            }
            self.own_deletes.insert(name.clone());
            match self.api.delete(name, &params).await {
                Ok(_) => writes += 1,
                Err(e) if matches!(code(&e), Some(404 | 409)) => {
                    self.own_deletes.remove(name);
                }
                Err(source) => {
                    self.own_deletes.remove(name);
                    return Err(PublishError::Slice {
                        slice: name.clone(),
                        what: "delete",
                        source,
                    });
                }
            }
        }
        if writes > 0 {
            tracing::info!(
                node = %self.pool.node,
                generation = self.generation,
                slices = desired.len(),
                devices = devices.len(),
                writes,
                "published ResourceSlices"
            );
        }
        self.published.send_if_modified(|p| {
            let new = Some(self.generation);
            let modified = *p != new;
            *p = new;
            modified
        });
        Ok(())
    }

    /// Makes slice `name` equal to `want`; `Ok(true)` when something was written.
    async fn write(
        &mut self,
        name: &str,
        want: &ResourceSlice,
        observed: Option<&ResourceSlice>,
    ) -> Result<bool, PublishError> {
        let pp = PostParams::default();
        let mut current = observed.cloned();
        for _ in 0..CONFLICT_RETRIES {
            let result = match &current {
                Some(o) if slices::up_to_date(o, want) => return Ok(false),
                Some(o) => {
                    self.api
                        .replace(name, &pp, &slices::replacement(o, want))
                        .await
                }
                None => self.api.create(&pp, want).await,
            };
            match result {
                Ok(stored) => {
                    if self.own_writes.len() > 4096 {
                        // Events lost while the watch was down; forget them.
                        self.own_writes.clear();
                    }
                    if let Some(rv) = stored.metadata.resource_version {
                        self.own_writes.insert((name.to_string(), rv));
                    }
                    return Ok(true);
                }
                // Created meanwhile, changed meanwhile, or deleted meanwhile: re-read.
                Err(e) if matches!(code(&e), Some(404 | 409)) => {
                    tracing::debug!(slice = name, error = %e, "slice changed under us; re-reading");
                    current =
                        self.api
                            .get_opt(name)
                            .await
                            .map_err(|source| PublishError::Slice {
                                slice: name.to_string(),
                                what: "get",
                                source,
                            })?;
                }
                Err(source) => {
                    return Err(PublishError::Slice {
                        slice: name.to_string(),
                        what: if current.is_some() {
                            "replace"
                        } else {
                            "create"
                        },
                        source,
                    })
                }
            }
        }
        Err(PublishError::Conflict {
            slice: name.to_string(),
        })
    }
}
