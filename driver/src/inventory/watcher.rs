//! [`InventoryWatcher`]: keeps the published device list current.
//!
//! One dedicated OS thread enters the namespace and runs a current-thread runtime
//! with a netlink socket subscribed to `RTNLGRP_LINK`, `IPV4_IFADDR`, `IPV6_IFADDR`,
//! `IPV4_ROUTE`/`IPV6_ROUTE` (only default-route changes count: they move the
//! exclusions) and `RTNLGRP_TC` (cls_bpf filters). Rescans happen:
//! * `debounce` (50 ms) after the first relevant event of a burst — so a change is
//!   visible within debounce + one scan, and a storm costs one scan per window;
//! * when the program fingerprint changes: every `program_poll` (100 ms) one link
//!   dump and two `BPF_PROG_QUERY` per link are compared with the last scan, because
//!   TCX and bpf_link XDP attach/detach send no netlink event;
//! * every `resync` (60 s), and after the netlink socket fails (it is reopened:
//!   a multicast overflow ends the socket stream, and the rescan covers the gap).
//!
//! Scans and polls wait while pod hooks move devices ([`crate::netns::quiet`], at most
//! a second per busy stretch): they take RTNL and queue kernel work that a move in
//! flight would wait for. A move's own events are then picked up by the scan that follows the hook.
//!
//! Each scan's list, merged with the in-use records ([`Inventory::merge_in_use`]), is
//! published on a `tokio::sync::watch` channel only when it differs from the last one.
//! Stopping: [`InventoryWatcher::stop`], dropping the watcher, or dropping every receiver.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};

use super::{
    links, programs, scan_here, Device, Inventory, InventoryError, InventoryOptions,
    ProgramFingerprint,
};
use crate::netns::{quiet::Deferral, Netns};

enum Control {
    InUse(BTreeSet<String>),
    Remember(Vec<Device>),
    Resync,
    Stop,
}

/// Watches one namespace and publishes its device list.
#[derive(Debug)]
pub struct InventoryWatcher {
    control: mpsc::UnboundedSender<Control>,
    devices: watch::Receiver<Arc<Vec<Device>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InventoryWatcher {
    /// Starts watching `netns`; returns once the first scan is published (or failed).
    pub fn start(netns: Arc<Netns>, opts: InventoryOptions) -> Result<Self, InventoryError> {
        let (tx, devices) = watch::channel(Arc::new(Vec::new()));
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), InventoryError>>();
        let thread = std::thread::Builder::new()
            .name("inventory".into())
            .spawn(move || {
                let ready = ready_tx.clone();
                let r = netns.run_async(move || watch_loop(opts, tx, control_rx, ready_tx));
                if let Err(e) = r {
                    let _ = ready.send(Err(e.into()));
                }
            })
            .map_err(|e| InventoryError::Watcher(format!("spawning the thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                control,
                devices,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(InventoryError::Watcher(
                    "stopped before the first scan".into(),
                ))
            }
        }
    }

    /// A receiver of the current device list (already holding the latest one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Device>>> {
        self.devices.clone()
    }

    /// The names of devices currently allocated. Those that disappear from the node
    /// (moved into a pod) stay published from their last seen record; the set
    /// replaces the previous one.
    pub fn pin_in_use(&self, names: BTreeSet<String>) {
        let _ = self.control.send(Control::InUse(names));
    }

    /// Records to use for in-use names the watcher never saw (e.g. after a restart,
    /// from the checkpoint).
    pub fn remember(&self, records: Vec<Device>) {
        let _ = self.control.send(Control::Remember(records));
    }

    /// Asks for a full rescan now.
    pub fn resync(&self) {
        let _ = self.control.send(Control::Resync);
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InventoryWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether a notification can change the device list.
fn relevant(msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    use RouteNetlinkMessage as M;
    match &msg.payload {
        NetlinkPayload::InnerMessage(m) => match m {
            M::NewLink(_) | M::DelLink(_) | M::SetLink(_) => true,
            M::NewAddress(_) | M::DelAddress(_) => true,
            M::NewRoute(r) | M::DelRoute(r) => r.header.destination_prefix_length == 0,
            M::NewTrafficFilter(_) | M::DelTrafficFilter(_) => true,
            M::NewQueueDiscipline(_) | M::DelQueueDiscipline(_) => true,
            _ => false,
        },
        NetlinkPayload::Overrun(_) => true,
        _ => false,
    }
}

struct State {
    opts: InventoryOptions,
    tx: watch::Sender<Arc<Vec<Device>>>,
    names: programs::ProgramNames,
    fingerprint: ProgramFingerprint,
    last_scan: Vec<Device>,
    in_use: BTreeSet<String>,
    remembered: BTreeMap<String, Device>,
}

/// What the loop does after a control message.
#[derive(PartialEq, Eq)]
enum Next {
    Go,
    Rescan,
    Stop,
}

impl State {
    fn apply(&mut self, control: Option<Control>) -> Next {
        match control {
            Some(Control::InUse(names)) => {
                self.in_use = names;
                self.publish();
            }
            Some(Control::Remember(records)) => {
                for d in records {
                    self.remembered.entry(d.name.clone()).or_insert(d);
                }
                self.publish();
            }
            Some(Control::Resync) => return Next::Rescan,
            Some(Control::Stop) | None => return Next::Stop,
        }
        Next::Go
    }

    async fn rescan(&mut self, handle: &rtnetlink::Handle) -> Result<(), InventoryError> {
        let started = Instant::now();
        let r = scan_here(handle, &self.opts, &mut self.names).await?;
        self.fingerprint = r.fingerprint;
        self.last_scan = r.devices;
        tracing::trace!(elapsed = ?started.elapsed(), devices = self.last_scan.len(), "inventory scan");
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        for d in &self.last_scan {
            if self.in_use.contains(&d.name) {
                self.remembered.insert(d.name.clone(), d.clone());
            }
        }
        let in_use = &self.in_use;
        self.remembered.retain(|n, _| in_use.contains(n));
        let list = Inventory::merge_in_use(self.last_scan.clone(), &self.remembered);
        self.tx.send_if_modified(|cur| {
            if **cur == list {
                false
            } else {
                tracing::debug!(devices = list.len(), "inventory changed");
                *cur = Arc::new(list);
                true
            }
        });
    }
}

type Events = futures::channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
)>;

fn connect() -> Result<(rtnetlink::Handle, Events), InventoryError> {
    let (conn, handle, events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Tc,
    ])
    .map_err(InventoryError::Socket)?;
    tokio::spawn(conn);
    Ok((handle, events))
}

async fn watch_loop(
    opts: InventoryOptions,
    tx: watch::Sender<Arc<Vec<Device>>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    ready: std::sync::mpsc::Sender<Result<(), InventoryError>>,
) {
    let debounce = opts.debounce;
    let mut resync = tokio::time::interval(opts.resync.max(Duration::from_millis(10)));
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(opts.program_poll.max(Duration::from_millis(10)));
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut state = State {
        opts,
        tx,
        names: programs::ProgramNames::default(),
        fingerprint: ProgramFingerprint::new(),
        last_scan: Vec::new(),
        in_use: BTreeSet::new(),
        remembered: BTreeMap::new(),
    };

    let first = async {
        let (handle, events) = connect()?;
        state.rescan(&handle).await?;
        Ok::<_, InventoryError>((handle, events))
    }
    .await;
    let (mut handle, mut events) = match first {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    resync.reset();

    let mut pending: Option<Instant> = None;
    let mut deferral = Deferral::default();
    loop {
        let deadline = pending.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut rescan = false;
        tokio::select! {
            ev = events.next() => match ev {
                Some((msg, _)) => {
                    if relevant(&msg) && pending.is_none() {
                        pending = Some(Instant::now() + debounce);
                    }
                }
                None => {
                    tracing::warn!("inventory: netlink event socket closed; reopening");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match connect() {
                        Ok((h, e)) => {
                            handle = h;
                            events = e;
                            rescan = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "inventory: reopening netlink failed"),
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                rescan = true;
            }
            _ = resync.tick() => rescan = true,
            _ = poll.tick() => {
                deferral.after_pod_hooks(state.opts.quiet, "inventory").await;
                match links::dump_links(&handle).await {
                    Ok(l) => {
                        if programs::fingerprint(&l) != state.fingerprint {
                            rescan = true;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "inventory: program poll failed"),
                }
            }
            c = control.recv() => match state.apply(c) {
                Next::Stop => break,
                Next::Rescan => rescan = true,
                Next::Go => {}
            },
            _ = state.tx.closed() => break,
        }
        if rescan {
            pending = None;
            deferral
                .after_pod_hooks(state.opts.quiet, "inventory")
                .await;
            // What prepare and unprepare said while the scan waited counts for it (a
            // device that left for a pod must already be pinned as in use).
            let mut stop = false;
            while let Ok(c) = control.try_recv() {
                stop |= state.apply(Some(c)) == Next::Stop;
            }
            if stop {
                break;
            }
            if let Err(e) = state.rescan(&handle).await {
                tracing::warn!(error = %e, "inventory: scan failed; retrying");
                pending = Some(Instant::now() + Duration::from_millis(200));
            }
        }
    }
}
