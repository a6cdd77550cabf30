//! [`AttachedDatapath`]: one device's programs, links and maps, owned through pins.
//!
//! Lifecycle: [`AttachedDatapath::attach`] loads a fresh instance of the object, writes
//! the policy into slot A, attaches egress and ingress inside the device's namespace,
//! pins links, programs and maps, and returns a handle that works only through the
//! pins. [`AttachedDatapath::adopt`] builds the same handle from the pins alone (a
//! restarted driver, `netclaim inspect`). [`AttachedDatapath::detach`] removes the
//! pins, which releases the links (detaching the programs) and lets the kernel free
//! programs and maps.
//!
//! This file is the handle only: it decides the order of things (notably the slot swap
//! of [`AttachedDatapath::update_policy`]) and leaves the how to the files named after
//! what they touch — the attach ladder to [`super::attach`], map contents to
//! [`super::maps`], pin I/O to [`super::pins`], errors to [`super::error`]. It never
//! talks netlink and never walks a map's keys itself.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        ProgramInfo, SchedClassifier,
    },
    Ebpf,
};
use ipnet::IpNet;
use netclaim_common::{
    DatapathMeta, DeviceCounters, SlotConfig, MAP_ACTIVE, MAP_COUNTERS, MAP_LOCAL_V4, MAP_LOCAL_V6,
    MAP_META, MAP_ROUTES_V4, MAP_ROUTES_V6, MAP_ROUTE_HITS, MAP_SLOTS,
};
use serde::Serialize;

// Re-exported so `datapath::device::AttachOptions` (and the modes and error type)
// keep resolving for callers.
pub use super::attach::{AttachOptions, EgressMode, IngressMode};
pub use super::error::DatapathError;

use super::{
    attach::{attach_in_netns, detach_clsact, wire_identity},
    counters::CounterSnapshot,
    error::{map_err, prog_err},
    logs::LogPump,
    maps::{is_link_local, write_initial_policy, zero_per_cpu, Loc4, Loc6, PolicyMaps, Rt4, Rt6},
    object::MapSizes,
    pins::{self, pin_all, remove_pins, DatapathKey, PinLayout},
    policy::{AllowedPrefix, CompiledPolicy, DatapathPolicy, Enforcement},
};
use crate::netns::Netns;

/// What a device's data path looks like, for status, metrics and `netclaim inspect`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathInfo {
    pub pin_dir: PathBuf,
    pub ifindex: u32,
    pub netns_inode: u64,
    pub egress_mode: Option<EgressMode>,
    pub ingress_mode: Option<IngressMode>,
    pub egress_program_id: Option<u32>,
    pub ingress_program_id: Option<u32>,
    pub egress_link_id: Option<u32>,
    pub ingress_link_id: Option<u32>,
    pub generation: u32,
    pub enforcement: Enforcement,
    pub flags: u32,
    pub prefixes: Vec<AllowedPrefix>,
    pub local_addresses: Vec<IpAddr>,
    /// Whether the socket guard holds the pod's cgroup (see [`super::guard`]).
    pub socket_guard: bool,
    /// The only source MAC egress accepts.
    pub mac: String,
}

/// One device's data path, reached through its pins.
pub struct AttachedDatapath {
    key: DatapathKey,
    dir: PathBuf,
    counters: PerCpuArray<MapData, DeviceCounters>,
    hits: PerCpuArray<MapData, u64>,
    meta: Array<MapData, DatapathMeta>,
    /// Both policy slots and the switch between them.
    maps: PolicyMaps,
    /// What the active slot holds, as read back from (or written to) the maps.
    current: CompiledPolicy,
    generation: u32,
}

impl std::fmt::Debug for AttachedDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedDatapath")
            .field("key", &self.key)
            .field("dir", &self.dir)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl AttachedDatapath {
    /// Loads a fresh instance of the programs, fills slot A with `policy`, attaches to
    /// `interface` inside `netns` and pins everything under the layout. On any error
    /// nothing of this device remains attached or pinned.
    pub fn attach(
        layout: &PinLayout,
        key: DatapathKey,
        netns: &Netns,
        interface: &str,
        policy: &DatapathPolicy,
        options: AttachOptions,
    ) -> Result<Self, DatapathError> {
        let sizes = options.sizes.unwrap_or_default();
        let started = std::time::Instant::now();
        let resolved;
        let policy = if policy.mac.is_none() {
            // The caller does not know who the device is on the wire: ask the kernel
            // (one extra namespace hop; the lifecycle always passes the MAC).
            let name = interface.to_string();
            let (mac, link_local) = netns.run(move || wire_identity(&name))?;
            resolved = DatapathPolicy {
                mac,
                link_local,
                ..policy.clone()
            };
            &resolved
        } else {
            policy
        };
        let compiled = policy
            .compile(&BTreeMap::new(), sizes.prefixes)
            .map_err(|source| DatapathError::Policy {
                key: key.to_string(),
                source,
            })?;
        let dir = layout.device_dir(&key);
        let netns_inode = std::fs::metadata(netns.path())
            .map(|m| m.ino())
            .unwrap_or(0);

        let mut ebpf =
            super::pool::WarmPool::global()
                .take(sizes)
                .map_err(|e| DatapathError::Load {
                    key: key.to_string(),
                    source: Box::new(e),
                })?;
        write_initial_policy(&mut ebpf, &key, &compiled)?;
        let loaded = started.elapsed();

        let guard_cgroup = options.guard_cgroup.clone();
        let stage = options.stage;
        let thread_key = key.clone();
        let ifname = interface.to_string();
        let netns_name = netns.path().display().to_string();
        // aya's Ebpf holds raw fds and is Send; it travels to the netns thread and back.
        let (mut ebpf, attached, in_thread) = netns.run(move || {
            let t = std::time::Instant::now();
            let r = attach_in_netns(&mut ebpf, &thread_key, &ifname, &netns_name, options);
            (ebpf, r, t.elapsed())
        })?;
        let mut attached = attached?;
        attached.meta.netns_inode = netns_inode;
        let hooked = started.elapsed();

        let pinned =
            pin_all(&mut ebpf, &key, &dir, &mut attached).and_then(|()| {
                if stage {
                    super::guard::pin_program(&mut ebpf, &dir.join(super::guard::PROG_GUARD))
                        .map_err(|source| DatapathError::Guard {
                            key: key.to_string(),
                            source,
                        })?;
                }
                let Some(cgroup) = &guard_cgroup else {
                    return Ok(());
                };
                super::guard::attach(&mut ebpf, cgroup, &dir.join(super::guard::LINK_GUARD))
                    .map_err(|source| DatapathError::Guard {
                        key: key.to_string(),
                        source,
                    })
            });
        if let Err(e) = pinned {
            remove_pins(&dir);
            // Dropping `ebpf` and the unpinned links detaches what was attached;
            // clsact filters are not owned by a link and are removed explicitly.
            detach_clsact(netns, &attached.meta);
            return Err(e);
        }
        LogPump::global().add_from_object(&key, &mut ebpf);
        drop(ebpf);
        let pinned = started.elapsed();

        let handle = Self::adopt(layout, key.clone());
        tracing::debug!(
            device = %key,
            load_and_fill_us = loaded.as_micros() as u64,
            attach_us = (hooked - loaded).as_micros() as u64,
            attach_in_thread_us = in_thread.as_micros() as u64,
            pin_us = (pinned - hooked).as_micros() as u64,
            adopt_us = (started.elapsed() - pinned).as_micros() as u64,
            "datapath attach timing"
        );
        match handle {
            Ok(h) => {
                tracing::info!(
                    device = %key,
                    interface,
                    netns = %netns.path().display(),
                    egress = ?EgressMode::from_code(attached.meta.egress_mode),
                    ingress = ?IngressMode::from_code(attached.meta.ingress_mode),
                    "datapath attached"
                );
                Ok(h)
            }
            Err(e) => {
                remove_pins(&dir);
                detach_clsact(netns, &attached.meta);
                Err(e)
            }
        }
    }

    /// Opens an existing data path from its pins, without touching the attachment.
    pub fn adopt(layout: &PinLayout, key: DatapathKey) -> Result<Self, DatapathError> {
        let dir = layout.device_dir(&key);
        if !dir.join(MAP_COUNTERS).exists() {
            return Err(DatapathError::NotPinned {
                key: key.to_string(),
                path: dir,
            });
        }
        let open = |name: &'static str| -> Result<MapData, DatapathError> {
            MapData::from_pin(dir.join(name)).map_err(|e| map_err(&key, name, e))
        };
        macro_rules! typed {
            ($variant:ident, $name:expr) => {{
                let name: &'static str = $name;
                Map::$variant(open(name)?)
                    .try_into()
                    .map_err(|e| map_err(&key, name, e))?
            }};
        }
        let counters: PerCpuArray<MapData, DeviceCounters> = typed!(PerCpuArray, MAP_COUNTERS);
        let hits: PerCpuArray<MapData, u64> = typed!(PerCpuArray, MAP_ROUTE_HITS);
        let active: Array<MapData, u32> = typed!(Array, MAP_ACTIVE);
        let slots: Array<MapData, SlotConfig> = typed!(Array, MAP_SLOTS);
        let meta: Array<MapData, DatapathMeta> = typed!(Array, MAP_META);
        let rt4: [Rt4; 2] = [
            typed!(LpmTrie, MAP_ROUTES_V4[0]),
            typed!(LpmTrie, MAP_ROUTES_V4[1]),
        ];
        let rt6: [Rt6; 2] = [
            typed!(LpmTrie, MAP_ROUTES_V6[0]),
            typed!(LpmTrie, MAP_ROUTES_V6[1]),
        ];
        let loc4: [Loc4; 2] = [
            typed!(HashMap, MAP_LOCAL_V4[0]),
            typed!(HashMap, MAP_LOCAL_V4[1]),
        ];
        let loc6: [Loc6; 2] = [
            typed!(HashMap, MAP_LOCAL_V6[0]),
            typed!(HashMap, MAP_LOCAL_V6[1]),
        ];
        let mut dp = Self {
            current: CompiledPolicy {
                flags: 0,
                mac: [0; 6],
                enforcement: Enforcement::CountOnly {
                    reason: String::new(),
                },
                prefixes: Vec::new(),
                local_v4: Vec::new(),
                local_v6: Vec::new(),
            },
            generation: 0,
            key,
            dir,
            counters,
            hits,
            meta,
            maps: PolicyMaps::new(active, slots, rt4, rt6, loc4, loc6),
        };
        dp.read_back()?;
        Ok(dp)
    }

    /// Rebuilds [`Self::current`] from the active slot in the kernel.
    fn read_back(&mut self) -> Result<(), DatapathError> {
        let (current, generation) = self.maps.read_active(&self.key)?;
        self.current = current;
        self.generation = generation;
        Ok(())
    }

    pub fn key(&self) -> &DatapathKey {
        &self.key
    }

    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// The policy the kernel is enforcing now.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.current
    }

    /// Replaces the policy without a window: the inactive slot is rewritten completely,
    /// its hit counters for new prefixes are zeroed, then the active slot flips.
    ///
    /// A program that read the old slot number just before the flip may still be
    /// looking things up in the old slot on another CPU. The old slot is therefore
    /// cleared only after an RCU grace period (every tc/XDP program run that began
    /// before the flip has finished), so no reader ever sees a slot change under it.
    pub fn update_policy(&mut self, policy: &DatapathPolicy) -> Result<(), DatapathError> {
        self.replace_policy(policy, true)
    }

    fn replace_policy(
        &mut self,
        policy: &DatapathPolicy,
        clear_old: bool,
    ) -> Result<(), DatapathError> {
        let previous: BTreeMap<IpNet, u32> = self
            .current
            .prefixes
            .iter()
            .map(|a| (a.prefix, a.hit_index))
            .collect();
        let kept;
        let policy = if policy.mac.is_none() {
            // Who the device is on the wire does not change with the policy: keep the
            // MAC and link-local addresses the data path enforces now.
            kept = DatapathPolicy {
                mac: Some(self.current.mac),
                link_local: self
                    .current
                    .local_v6
                    .iter()
                    .copied()
                    .filter(is_link_local)
                    .collect(),
                ..policy.clone()
            };
            &kept
        } else {
            policy
        };
        let compiled = policy
            .compile(&previous, self.hits.len())
            .map_err(|source| DatapathError::Policy {
                key: self.key.to_string(),
                source,
            })?;
        let active = self.maps.active_slot(&self.key)?;
        let next = 1 - active;
        if !self.maps.slot_is_empty(next) {
            // A previous update stopped between its flip and its clear (the process
            // died, or the clear failed): readers of that flip may be recent.
            super::grace::wait_for_readers().map_err(|e| map_err(&self.key, MAP_ACTIVE, e))?;
            self.maps.clear_slot(&self.key, next)?;
        }
        let zero = zero_per_cpu().map_err(|e| map_err(&self.key, MAP_ROUTE_HITS, e))?;
        for a in &compiled.prefixes {
            if !previous.contains_key(&a.prefix) {
                let values = PerCpuValues::try_from(zero.clone())
                    .map_err(|e| map_err(&self.key, MAP_ROUTE_HITS, e))?;
                self.hits
                    .set(a.hit_index, values, 0)
                    .map_err(|e| map_err(&self.key, MAP_ROUTE_HITS, e))?;
            }
        }
        self.maps.fill_slot(&self.key, next, &compiled)?;
        let generation = self.generation.wrapping_add(1);
        self.maps
            .write_slot_config(&self.key, next, &compiled, generation)?;
        // The switch: one u32 store; packets see either the old slot or the new one.
        self.maps.flip(&self.key, next)?;
        tracing::info!(
            device = %self.key,
            generation,
            slot = next,
            prefixes = compiled.prefixes.len(),
            "datapath policy replaced"
        );
        self.current = compiled;
        self.generation = generation;
        if !clear_old {
            return Ok(());
        }
        // Leave the old slot empty so a later reader cannot mistake it for live policy,
        // once no program run that may have chosen it is still going.
        super::grace::wait_for_readers().map_err(|e| map_err(&self.key, MAP_ACTIVE, e))?;
        self.maps.clear_slot(&self.key, active)
    }

    /// Takes over a data path staged before its pod existed ([`AttachOptions::stage`])
    /// once its device is in the pod as `ifindex`: checks that both links came along
    /// with the device (XDP and TCX links survive a namespace move; clsact filters do
    /// not, and a staged path that fell back to them is refused), puts `policy` in
    /// force ([`Self::enforce`]) and attaches the socket guard to `guard_cgroup`.
    pub fn take_staged(
        &mut self,
        ifindex: u32,
        policy: &DatapathPolicy,
        guard_cgroup: Option<&Path>,
    ) -> Result<(), DatapathError> {
        for link in [pins::LINK_EGRESS, pins::LINK_INGRESS] {
            let path = self.dir.join(link);
            let at = super::syscall::link_ifindex(&path).map_err(|e| DatapathError::Pin {
                key: self.key.to_string(),
                path: path.clone(),
                detail: format!("reading the link's device: {e}"),
            })?;
            if at != ifindex {
                return Err(DatapathError::Attach {
                    key: self.key.to_string(),
                    direction: if link == pins::LINK_EGRESS {
                        "egress"
                    } else {
                        "ingress"
                    },
                    interface: format!("ifindex {ifindex}"),
                    detail: format!(
                        "the staged link is on ifindex {at}, not on the device in the pod"
                    ),
                });
            }
        }
        self.enforce(policy)?;
        if let Some(cgroup) = guard_cgroup {
            let program = self.dir.join(super::guard::PROG_GUARD);
            super::guard::attach_pinned(&program, cgroup, &self.dir.join(super::guard::LINK_GUARD))
                .map_err(|source| DatapathError::Guard {
                    key: self.key.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Puts `policy` in force without waiting: like [`Self::update_policy`], but the
    /// old slot is left for the next update to clear after its grace period. Right
    /// for a path that only counted (staged, or stood down) until now: a program still
    /// reading the old slot lets its packet through, as it did a moment earlier.
    pub fn enforce(&mut self, policy: &DatapathPolicy) -> Result<(), DatapathError> {
        self.replace_policy(policy, false)
    }

    /// Stops enforcing without detaching: the active slot's flags become 0 (count
    /// only), one map write, no grace period (a program that read the old flags lets
    /// its packet through or drops it by the old policy, as it would have a moment
    /// earlier). For a device that leaves its pod with the programs still attached
    /// (XDP and TCX links survive a namespace move: `tests/tests/datapath_move.rs`),
    /// so the node's own traffic is never held to the pod's policy. The socket guard's
    /// link is removed (it is the pod's).
    pub fn stand_down(&mut self) -> Result<(), DatapathError> {
        let active = self.maps.active_slot(&self.key)?;
        let compiled = CompiledPolicy {
            flags: 0,
            enforcement: Enforcement::CountOnly {
                reason: "the device is leaving its pod".into(),
            },
            ..self.current.clone()
        };
        let generation = self.generation.wrapping_add(1);
        self.maps
            .write_slot_config(&self.key, active, &compiled, generation)?;
        self.current = compiled;
        self.generation = generation;
        // The socket guard belongs to the pod's cgroup: it goes with the pod.
        let guard = self.dir.join(super::guard::LINK_GUARD);
        match std::fs::remove_file(&guard) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DatapathError::Pin {
                key: self.key.to_string(),
                path: guard,
                detail: e.to_string(),
            }),
        }
    }

    /// Reads and sums the counters, including packets per allowed prefix.
    pub fn counters(&self) -> Result<CounterSnapshot, DatapathError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(|e| map_err(&self.key, MAP_COUNTERS, e))?;
        let mut snap = CounterSnapshot::from_per_cpu(per_cpu.iter());
        for a in &self.current.prefixes {
            let values = self
                .hits
                .get(&a.hit_index, 0)
                .map_err(|e| map_err(&self.key, MAP_ROUTE_HITS, e))?;
            snap.route_hits
                .insert(a.prefix.to_string(), values.iter().sum());
        }
        Ok(snap)
    }

    /// Attach modes, ids and policy, read from the kernel.
    pub fn info(&self) -> Result<DatapathInfo, DatapathError> {
        let meta = self
            .meta
            .get(&0, 0)
            .map_err(|e| map_err(&self.key, MAP_META, e))?;
        let prog_id = |name: &str| {
            ProgramInfo::from_pin(self.dir.join(name))
                .ok()
                .map(|i| i.id())
        };
        let link_id = |name: &str| {
            PinnedLink::from_pin(self.dir.join(name))
                .ok()
                .and_then(|l| FdLink::from(l).info().ok())
                .map(|i| i.id())
        };
        Ok(DatapathInfo {
            pin_dir: self.dir.clone(),
            ifindex: meta.ifindex,
            netns_inode: meta.netns_inode,
            egress_mode: EgressMode::from_code(meta.egress_mode),
            ingress_mode: IngressMode::from_code(meta.ingress_mode),
            egress_program_id: prog_id(pins::PROG_EGRESS),
            ingress_program_id: prog_id(pins::PROG_INGRESS),
            egress_link_id: link_id(pins::LINK_EGRESS),
            ingress_link_id: link_id(pins::LINK_INGRESS),
            generation: self.generation,
            enforcement: self.current.enforcement.clone(),
            flags: self.current.flags,
            prefixes: self.current.prefixes.clone(),
            local_addresses: self
                .current
                .local_v4
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(self.current.local_v6.iter().map(|a| IpAddr::V6(*a)))
                .collect(),
            socket_guard: super::guard::is_pinned(&self.dir),
            mac: crate::netns::link::format_mac(&self.current.mac),
        })
    }

    /// Detaches and removes everything of this device. `netns` is needed only for
    /// clsact attachments (filters are removed over netlink inside the namespace);
    /// `None` means the namespace is gone, and with it the filters.
    pub fn detach(self, layout: &PinLayout, netns: Option<&Netns>) -> Result<(), DatapathError> {
        let meta = self.meta.get(&0, 0).ok();
        let Self { key, dir, .. } = self;
        remove_everything(layout, &key, &dir, meta, netns)?;
        tracing::info!(device = %key, "datapath detached");
        Ok(())
    }

    /// Removes whatever is pinned for `key`, whole or not. A data path that opens is
    /// [`Self::detach`]ed. One that a killed driver left half pinned or half removed
    /// (its maps no longer all open, or its marker map is gone but other pins are
    /// not) has its links detached and every pin removed all the same, and its clsact
    /// filters removed if its meta map is still there to name them. Nothing pinned is
    /// not an error: removal is idempotent, so a retry after a crash finishes the job.
    pub fn remove(
        layout: &PinLayout,
        key: &DatapathKey,
        netns: Option<&Netns>,
    ) -> Result<(), DatapathError> {
        let dir = layout.device_dir(key);
        match Self::adopt(layout, key.clone()) {
            Ok(dp) => dp.detach(layout, netns),
            Err(_) if !dir.exists() => Ok(()),
            Err(why) => {
                tracing::warn!(
                    device = %key,
                    path = %dir.display(),
                    "removing a partial data path (an attach or removal was cut short): {why}"
                );
                let meta = pins::pinned_meta(&dir);
                remove_everything(layout, key, &dir, meta, netns)?;
                tracing::info!(device = %key, "partial datapath removed");
                Ok(())
            }
        }
    }
}

/// The one way a device's data path goes: clsact filters named by `meta` (when the
/// namespace is given), the log pump's entry, every pin (links first, the marker map
/// last), the directory and its empty parents.
fn remove_everything(
    layout: &PinLayout,
    key: &DatapathKey,
    dir: &Path,
    meta: Option<DatapathMeta>,
    netns: Option<&Netns>,
) -> Result<(), DatapathError> {
    LogPump::global().remove(key);
    if let (Some(meta), Some(netns)) = (meta, netns) {
        detach_clsact(netns, &meta);
    }
    remove_pins(dir);
    if dir.exists() {
        return Err(DatapathError::Pin {
            key: key.to_string(),
            path: dir.to_path_buf(),
            detail: "pin directory could not be removed".into(),
        });
    }
    layout.prune_parents(key);
    Ok(())
}

/// Loads a fresh instance with `policy` in slot A and every program verified (the
/// benchmark baselines `nc_bare` and `nc_floor` too), but attaches nothing: for
/// `BPF_PROG_TEST_RUN` benchmarks and verifier checks.
pub fn load_unattached(sizes: MapSizes, policy: &DatapathPolicy) -> Result<Ebpf, DatapathError> {
    let key = DatapathKey::new("bench", "bench", "bench")?;
    let compiled = policy
        .compile(&BTreeMap::new(), sizes.prefixes)
        .map_err(|source| DatapathError::Policy {
            key: key.to_string(),
            source,
        })?;
    let mut ebpf = super::pool::load_verified(sizes).map_err(|e| DatapathError::Load {
        key: key.to_string(),
        source: Box::new(e),
    })?;
    write_initial_policy(&mut ebpf, &key, &compiled)?;
    for name in [netclaim_common::PROG_BARE, netclaim_common::PROG_FLOOR] {
        let baseline: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| map_err(&key, "program", format!("{name} missing from the object")))?
            .try_into()
            .map_err(|e| prog_err(&key, name, e))?;
        baseline.load().map_err(|e| prog_err(&key, name, e))?;
    }
    Ok(ebpf)
}
