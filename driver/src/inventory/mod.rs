//! Device discovery: which links of the node's namespace this driver publishes, with
//! which attributes.
//!
//! A scan ([`Inventory::scan`]) runs on a dedicated thread inside the given namespace
//! and reads, over netlink, every link, its global addresses, the default routes and
//! tc filters ([`links`]); ethtool adds driver, bus info and speed, `/sys/bus/pci`
//! the PCI details ([`host`]); [`programs`] finds attached BPF programs. Then:
//! 1. [`exclusion`] drops loopback and the uplinks' stack (never published);
//! 2. [`naming`] gives each remaining link a stable DNS-label device name;
//! 3. attributes are built (names in [`device::attr`], qualified by the driver name);
//! 4. the optional CEL [`filter`] keeps the devices it selects (default: all).
//!
//! [`InventoryWatcher`] keeps the list current: netlink events (links, addresses,
//! default routes, tc filters) trigger a debounced rescan, a cheap poll catches BPF
//! attach/detach (no netlink event for TCX and bpf_link XDP), and a periodic full
//! resync is the safety net. Devices the publisher reports as in use (moved into a
//! pod, so gone from the node) stay published from their last record
//! ([`Inventory::merge_in_use`]).
//!
//! This module only reads the kernel; it never changes links, addresses or programs.

pub mod attributes;
pub mod device;
pub mod exclusion;
pub mod filter;
pub mod host;
pub mod links;
pub mod names;
pub mod naming;
pub mod programs;
pub mod sysfs;
pub mod watcher;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

pub use device::{AttrValue, Device};
pub use filter::{DeviceFilter, FilterError};
pub use watcher::InventoryWatcher;

use crate::netns::{Netns, NetnsError};
use links::NetlinkSnapshot;
use programs::{ProgramFingerprint, ProgramNames};

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("inventory: opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("inventory: netlink {what} failed: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("inventory: watcher thread: {0}")]
    Watcher(String),
}

/// How to scan and watch.
#[derive(Clone, Debug)]
pub struct InventoryOptions {
    /// The DRA driver name, also the attribute domain.
    pub driver_name: String,
    /// Devices to publish among the not-excluded ones; `None` publishes all.
    pub filter: Option<DeviceFilter>,
    /// Where sysfs is mounted (for `/sys/bus/pci`).
    pub sysfs: PathBuf,
    /// Quiet time after a netlink event before rescanning.
    pub debounce: Duration,
    /// Full rescan interval, whatever the events say.
    pub resync: Duration,
    /// How often attached BPF programs are compared (no netlink events for TCX).
    pub program_poll: Duration,
    /// Pod hooks moving devices: scans and polls wait for them (bounded).
    pub quiet: &'static crate::netns::quiet::Quiet,
}

impl Default for InventoryOptions {
    fn default() -> Self {
        Self {
            driver_name: crate::DEFAULT_DRIVER_NAME.to_string(),
            filter: None,
            sysfs: PathBuf::from("/sys"),
            debounce: Duration::from_millis(50),
            resync: Duration::from_secs(60),
            program_poll: Duration::from_millis(100),
            quiet: crate::netns::quiet::Quiet::global(),
        }
    }
}

/// The result of one scan, with what the watcher needs to detect program changes.
#[derive(Clone, Debug, Default)]
pub struct ScanResult {
    /// Devices to publish, sorted by name.
    pub devices: Vec<Device>,
    /// Devices the filter dropped or could not evaluate: (device name, reason).
    pub filtered_out: Vec<(String, Option<String>)>,
    /// Program ids per ifindex at scan time.
    pub fingerprint: ProgramFingerprint,
}

/// Entry points of discovery.
#[derive(Debug)]
pub struct Inventory;

impl Inventory {
    /// Scans `netns` once (on a dedicated thread inside it) and returns the devices
    /// that would be published.
    pub fn scan(netns: &Netns, opts: &InventoryOptions) -> Result<Vec<Device>, InventoryError> {
        Ok(Self::scan_detailed(netns, opts)?.devices)
    }

    /// Like [`Inventory::scan`], with the filter's verdicts and the program fingerprint.
    pub fn scan_detailed(
        netns: &Netns,
        opts: &InventoryOptions,
    ) -> Result<ScanResult, InventoryError> {
        let opts = opts.clone();
        netns.run_async(move || async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(InventoryError::Socket)?;
            tokio::spawn(conn);
            let mut names = ProgramNames::default();
            scan_here(&handle, &opts, &mut names).await
        })?
    }

    /// `current` plus, for every name in `in_use` that `current` lacks, the record
    /// last seen for it: a device inside a pod is gone from the node but stays
    /// allocated, so it must stay published. Devices present in `current` win (their
    /// attributes are fresh). The result is sorted by name.
    pub fn merge_in_use(current: Vec<Device>, in_use: &BTreeMap<String, Device>) -> Vec<Device> {
        let present: BTreeSet<String> = current.iter().map(|d| d.name.clone()).collect();
        let mut out = current;
        out.extend(
            in_use
                .iter()
                .filter(|(name, _)| !present.contains(*name))
                .map(|(_, d)| d.clone()),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// One scan on the calling thread (which is inside the namespace).
pub(crate) async fn scan_here(
    handle: &rtnetlink::Handle,
    opts: &InventoryOptions,
    names: &mut ProgramNames,
) -> Result<ScanResult, InventoryError> {
    let snap = links::snapshot(handle).await?;
    // Links whose names are not UTF-8 are missing from the snapshot; say so, once each.
    names::report_undecodable();
    if snap.unresolved_default_routes > 0 {
        tracing::warn!(
            count = snap.unresolved_default_routes,
            "default route(s) through nexthop objects: their uplinks cannot be identified and are not excluded"
        );
    }
    let ethtool = host::EthtoolSocket::new().map_err(InventoryError::Socket)?;
    Ok(build(&snap, opts, names, |ifname| ethtool.facts(ifname)))
}

/// `items` sorted, duplicates dropped.
fn sorted_unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let set: BTreeSet<String> = items.collect();
    set.into_iter().collect()
}

/// Builds the devices from a snapshot (the kernel is only touched through `ethtool`,
/// the TCX query and sysfs reads).
fn build(
    snap: &NetlinkSnapshot,
    opts: &InventoryOptions,
    names: &mut ProgramNames,
    ethtool: impl Fn(&str) -> host::EthtoolFacts,
) -> ScanResult {
    let excluded = exclusion::excluded(snap);
    let d = &opts.driver_name;

    // Over every link, excluded ones too, exactly as the watcher's poll computes it;
    // taken before the per-device queries so a change in between triggers a rescan.
    let fingerprint = programs::fingerprint(&snap.links);
    let mut live_ids = BTreeSet::new();
    let mut candidates = Vec::new();
    let sysfs = sysfs::SysfsRoot::new(&opts.sysfs);
    let rdma = sysfs.rdma_netdevs();
    for l in snap.links.iter().filter(|l| !excluded.contains(&l.ifindex)) {
        let eth = ethtool(&l.ifname);
        let pci_address = attributes::pci_address(l, &eth);
        let pci = pci_address.as_deref().and_then(|a| sysfs.pci_function(a));

        // Programs: XDP and cls_bpf from netlink, TCX from BPF_PROG_QUERY.
        let tcx = programs::tcx_programs(&l.ifname);
        for (id, n) in tcx.iter().chain(&l.tc_progs) {
            names.learn(*id, n);
        }
        let mut all_ids = l.xdp_prog_ids.clone();
        all_ids.extend(tcx.keys().copied());
        all_ids.extend(l.tc_progs.keys().copied());
        live_ids.extend(all_ids.iter().copied());
        // tc filters by the name tc reports (as DraNet); unnamed ones by program name.
        let tc_filters = l.tc_progs.iter().flat_map(|(id, n)| {
            if n.is_empty() {
                names.resolve(&BTreeSet::from([*id]))
            } else {
                vec![n.clone()]
            }
        });
        let tc_filters = sorted_unique(tc_filters.collect::<Vec<_>>().into_iter());
        let progs = attributes::LinkPrograms {
            all: names.resolve(&all_ids),
            tcx: sorted_unique(tcx.values().filter(|n| !n.is_empty()).cloned()),
            tc_filters,
        };
        let a = attributes::link_attributes(
            d,
            attributes::LinkSources {
                link: l,
                ethtool: &eth,
                pci: pci.as_ref(),
                rdma_on_link: rdma.has_rdma(&l.ifname, l.link_layer_type, l.mac.as_deref()),
                programs: &progs,
            },
        );

        candidates.push((
            naming::NameRequest {
                ifname: l.ifname.clone(),
                pci_address,
            },
            l,
            a,
        ));
    }
    names.retain(&live_ids);

    let requests: Vec<_> = candidates.iter().map(|(r, _, _)| r.clone()).collect();
    let assigned = naming::assign_names(&requests);
    let mut devices = Vec::new();
    let mut filtered_out = Vec::new();
    for ((_, l, attributes), name) in candidates.into_iter().zip(assigned) {
        let dev = Device {
            name,
            ifname: l.ifname.clone(),
            ifindex: l.ifindex,
            attributes,
            carrier_lost: l.carrier_lost,
        };
        match &opts.filter {
            None => devices.push(dev),
            Some(f) => match f.matches(d, &dev) {
                Ok(true) => devices.push(dev),
                Ok(false) => filtered_out.push((dev.name, None)),
                Err(e) => {
                    tracing::debug!(error = %e, "filter excludes device");
                    filtered_out.push((dev.name, Some(e.to_string())));
                }
            },
        }
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    ScanResult {
        devices,
        filtered_out,
        fingerprint,
    }
}
