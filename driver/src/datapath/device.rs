//! [`AttachedDatapath`]: one device's programs, links and maps, owned through pins.
//!
//! Lifecycle: [`AttachedDatapath::attach`] loads a fresh instance of the object, writes
//! the policy into slot A, attaches egress and ingress inside the device's namespace,
//! pins links, programs and maps, and returns a handle that works only through the
//! pins. [`AttachedDatapath::adopt`] builds the same handle from the pins alone (a
//! restarted driver, `netclaim inspect`). [`AttachedDatapath::detach`] removes the
//! pins, which releases the links (detaching the programs) and lets the kernel free
//! programs and maps.

use std::{
    borrow::BorrowMut,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
    },
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use ipnet::IpNet;
use netclaim_common::{
    attach_mode, DatapathMeta, DeviceCounters, RouteValue, SlotConfig, MAP_ACTIVE, MAP_COUNTERS,
    MAP_LOCAL_V4, MAP_LOCAL_V6, MAP_META, MAP_ROUTES_V4, MAP_ROUTES_V6, MAP_ROUTE_HITS, MAP_SLOTS,
    OWN_INLINE, OWN_OVERFLOW, PROG_EGRESS, PROG_INGRESS_TC, PROG_INGRESS_XDP,
};
use serde::Serialize;

use super::{
    counters::CounterSnapshot,
    logs::LogPump,
    object::MapSizes,
    pins::{self, DatapathKey, InvalidKey, PinLayout},
    policy::{AllowedPrefix, CompiledPolicy, DatapathPolicy, Enforcement, PrefixOrigin},
};
use crate::netns::{Netns, NetnsError};

/// How the egress program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    Tcx,
    Clsact,
}

/// How the ingress program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngressMode {
    XdpNative,
    XdpGeneric,
    Tcx,
    Clsact,
}

impl EgressMode {
    fn code(self) -> u32 {
        match self {
            Self::Tcx => attach_mode::EGRESS_TCX,
            Self::Clsact => attach_mode::EGRESS_CLSACT,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        match c {
            attach_mode::EGRESS_TCX => Some(Self::Tcx),
            attach_mode::EGRESS_CLSACT => Some(Self::Clsact),
            _ => None,
        }
    }
}

impl IngressMode {
    fn code(self) -> u32 {
        match self {
            Self::XdpNative => attach_mode::INGRESS_XDP_NATIVE,
            Self::XdpGeneric => attach_mode::INGRESS_XDP_GENERIC,
            Self::Tcx => attach_mode::INGRESS_TCX,
            Self::Clsact => attach_mode::INGRESS_CLSACT,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        match c {
            attach_mode::INGRESS_XDP_NATIVE => Some(Self::XdpNative),
            attach_mode::INGRESS_XDP_GENERIC => Some(Self::XdpGeneric),
            attach_mode::INGRESS_TCX => Some(Self::Tcx),
            attach_mode::INGRESS_CLSACT => Some(Self::Clsact),
            _ => None,
        }
    }
}

/// Which attach methods to try. `Auto` tries the best first and falls back; the
/// others force one method (tests use them to exercise the fallbacks for real).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachOptions {
    pub egress: Option<EgressMode>,
    pub ingress: Option<IngressMode>,
    pub sizes: Option<MapSizes>,
    /// The pod's cgroup directory: when set, the socket guard ([`super::guard`]) is
    /// attached there, and the data path is not attached without it.
    pub guard_cgroup: Option<PathBuf>,
}

/// Everything that can go wrong with a device's data path; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("datapath {key}: socket guard: {source}")]
    Guard {
        key: String,
        #[source]
        source: super::guard::GuardError,
    },
    #[error(transparent)]
    Key(#[from] InvalidKey),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("datapath {key}: loading the eBPF object: {source}")]
    Load {
        key: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("datapath {key}: program {program}: {source}")]
    Program {
        key: String,
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("datapath {key}: interface {interface:?} not found in namespace {netns}")]
    NoInterface {
        key: String,
        interface: String,
        netns: String,
    },
    #[error("datapath {key}: attaching {direction} to {interface}: every method failed: {detail}")]
    Attach {
        key: String,
        direction: &'static str,
        interface: String,
        detail: String,
    },
    #[error("datapath {key}: map {map}: {detail}")]
    Map {
        key: String,
        map: &'static str,
        detail: String,
    },
    #[error("datapath {key}: pin {path}: {detail}")]
    Pin {
        key: String,
        path: PathBuf,
        detail: String,
    },
    #[error("datapath {key}: {source}")]
    Policy {
        key: String,
        #[source]
        source: super::policy::TooManyPrefixes,
    },
    #[error("datapath {key}: no pinned data path at {path}")]
    NotPinned { key: String, path: PathBuf },
}

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

type Rt4 = LpmTrie<MapData, [u8; 4], RouteValue>;
type Rt6 = LpmTrie<MapData, [u8; 16], RouteValue>;
type Loc4 = HashMap<MapData, [u8; 4], u8>;
type Loc6 = HashMap<MapData, [u8; 16], u8>;

/// One device's data path, reached through its pins.
pub struct AttachedDatapath {
    key: DatapathKey,
    dir: PathBuf,
    counters: PerCpuArray<MapData, DeviceCounters>,
    hits: PerCpuArray<MapData, u64>,
    active: Array<MapData, u32>,
    slots: Array<MapData, SlotConfig>,
    meta: Array<MapData, DatapathMeta>,
    rt4: [Rt4; 2],
    rt6: [Rt6; 2],
    loc4: [Loc4; 2],
    loc6: [Loc6; 2],
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

fn map_err(key: &DatapathKey, map: &'static str, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Map {
        key: key.to_string(),
        map,
        detail: e.to_string(),
    }
}

fn prog_err(
    key: &DatapathKey,
    program: &'static str,
    e: aya::programs::ProgramError,
) -> DatapathError {
    DatapathError::Program {
        key: key.to_string(),
        program,
        source: Box::new(e),
    }
}

/// The result of attaching inside the namespace: modes and clsact handles.
struct Attached {
    meta: DatapathMeta,
    egress_link: Option<FdLink>,
    ingress_link: Option<FdLink>,
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

        let guard_cgroup = options.guard_cgroup.clone();
        let thread_key = key.clone();
        let ifname = interface.to_string();
        let netns_name = netns.path().display().to_string();
        // aya's Ebpf holds raw fds and is Send; it travels to the netns thread and back.
        let (mut ebpf, attached) = netns.run(move || {
            let r = attach_in_netns(&mut ebpf, &thread_key, &ifname, &netns_name, options);
            (ebpf, r)
        })?;
        let mut attached = attached?;
        attached.meta.netns_inode = netns_inode;

        let pinned = pin_all(&mut ebpf, &key, &dir, &mut attached).and_then(|()| {
            let Some(cgroup) = &guard_cgroup else {
                return Ok(());
            };
            super::guard::attach(&mut ebpf, cgroup, &dir.join(super::guard::LINK_GUARD)).map_err(
                |source| DatapathError::Guard {
                    key: key.to_string(),
                    source,
                },
            )
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

        let handle = Self::adopt(layout, key.clone());
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
            active,
            slots,
            meta,
            rt4,
            rt6,
            loc4,
            loc6,
        };
        dp.read_back()?;
        Ok(dp)
    }

    /// Rebuilds [`Self::current`] from the active slot in the kernel.
    fn read_back(&mut self) -> Result<(), DatapathError> {
        let slot = self.active_slot()?;
        let cfg = self
            .slots
            .get(&(slot as u32), 0)
            .map_err(|e| map_err(&self.key, MAP_SLOTS, e))?;
        let mut prefixes = Vec::new();
        for item in self.rt4[slot].iter() {
            let (k, v) = item.map_err(|e| map_err(&self.key, MAP_ROUTES_V4[slot], e))?;
            if let Ok(net) = IpNet::new(IpAddr::V4(Ipv4Addr::from(k.data())), k.prefix_len() as u8)
            {
                prefixes.push((net, v.hit_index));
            }
        }
        for item in self.rt6[slot].iter() {
            let (k, v) = item.map_err(|e| map_err(&self.key, MAP_ROUTES_V6[slot], e))?;
            if let Ok(net) = IpNet::new(IpAddr::V6(Ipv6Addr::from(k.data())), k.prefix_len() as u8)
            {
                prefixes.push((net, v.hit_index));
            }
        }
        let mut local_v4: Vec<Ipv4Addr> = self.loc4[slot]
            .keys()
            .filter_map(Result::ok)
            .map(Ipv4Addr::from)
            .collect();
        local_v4.sort();
        let mut local_v6: Vec<Ipv6Addr> = self.loc6[slot]
            .keys()
            .filter_map(Result::ok)
            .map(Ipv6Addr::from)
            .collect();
        local_v6.sort();
        prefixes.sort();
        let locals: Vec<IpNet> = local_v4
            .iter()
            .map(|a| IpNet::from(IpAddr::V4(*a)))
            .chain(local_v6.iter().map(|a| IpNet::from(IpAddr::V6(*a))))
            .collect();
        self.current = CompiledPolicy {
            flags: cfg.flags,
            mac: cfg.mac,
            enforcement: if cfg.flags == 0 {
                Enforcement::CountOnly {
                    reason: if local_v4.is_empty() && local_v6.iter().all(is_link_local) {
                        "the device has no IP addresses, so there is nothing to enforce".into()
                    } else {
                        "every dataplane knob is off".into()
                    },
                }
            } else {
                Enforcement::Enforcing
            },
            prefixes: prefixes
                .into_iter()
                .map(|(prefix, hit_index)| AllowedPrefix {
                    prefix,
                    // The kernel does not know where a prefix came from; a prefix that
                    // equals the subnet of a local address is reported as connected.
                    origin: if locals
                        .iter()
                        .any(|l| l.addr() == prefix.addr() || prefix.contains(&l.addr()))
                        && prefix.prefix_len() < prefix.max_prefix_len()
                    {
                        PrefixOrigin::Connected
                    } else {
                        PrefixOrigin::Route
                    },
                    hit_index,
                })
                .collect(),
            local_v4,
            local_v6,
        };
        self.generation = cfg.generation;
        Ok(())
    }

    fn active_slot(&self) -> Result<usize, DatapathError> {
        let slot = self
            .active
            .get(&0, 0)
            .map_err(|e| map_err(&self.key, MAP_ACTIVE, e))?;
        Ok((slot & 1) as usize)
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
        let active = self.active_slot()?;
        let next = 1 - active;
        if !self.slot_is_empty(next) {
            // A previous update stopped between its flip and its clear (the process
            // died, or the clear failed): readers of that flip may be recent.
            super::grace::wait_for_readers().map_err(|e| map_err(&self.key, MAP_ACTIVE, e))?;
            self.clear_slot(next)?;
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
        fill_slot(
            &self.key,
            next,
            &compiled,
            &mut self.rt4[next],
            &mut self.rt6[next],
            &mut self.loc4[next],
            &mut self.loc6[next],
        )?;
        let generation = self.generation.wrapping_add(1);
        self.slots
            .set(next as u32, slot_config(&compiled, generation), 0)
            .map_err(|e| map_err(&self.key, MAP_SLOTS, e))?;
        // The switch: one u32 store; packets see either the old slot or the new one.
        self.active
            .set(0, next as u32, 0)
            .map_err(|e| map_err(&self.key, MAP_ACTIVE, e))?;
        tracing::info!(
            device = %self.key,
            generation,
            slot = next,
            prefixes = compiled.prefixes.len(),
            "datapath policy replaced"
        );
        self.current = compiled;
        self.generation = generation;
        // Leave the old slot empty so a later reader cannot mistake it for live policy,
        // once no program run that may have chosen it is still going.
        super::grace::wait_for_readers().map_err(|e| map_err(&self.key, MAP_ACTIVE, e))?;
        self.clear_slot(active)
    }

    fn slot_is_empty(&self, slot: usize) -> bool {
        self.rt4[slot].keys().next().is_none()
            && self.rt6[slot].keys().next().is_none()
            && self.loc4[slot].keys().next().is_none()
            && self.loc6[slot].keys().next().is_none()
    }

    fn clear_slot(&mut self, slot: usize) -> Result<(), DatapathError> {
        let key = self.key.clone();
        let k4: Vec<Key<[u8; 4]>> = self.rt4[slot].keys().filter_map(Result::ok).collect();
        for k in k4 {
            self.rt4[slot]
                .remove(&k)
                .map_err(|e| map_err(&key, MAP_ROUTES_V4[slot], e))?;
        }
        let k6: Vec<Key<[u8; 16]>> = self.rt6[slot].keys().filter_map(Result::ok).collect();
        for k in k6 {
            self.rt6[slot]
                .remove(&k)
                .map_err(|e| map_err(&key, MAP_ROUTES_V6[slot], e))?;
        }
        let l4: Vec<[u8; 4]> = self.loc4[slot].keys().filter_map(Result::ok).collect();
        for k in l4 {
            self.loc4[slot]
                .remove(&k)
                .map_err(|e| map_err(&key, MAP_LOCAL_V4[slot], e))?;
        }
        let l6: Vec<[u8; 16]> = self.loc6[slot].keys().filter_map(Result::ok).collect();
        for k in l6 {
            self.loc6[slot]
                .remove(&k)
                .map_err(|e| map_err(&key, MAP_LOCAL_V6[slot], e))?;
        }
        Ok(())
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
        LogPump::global().remove(&self.key);
        if let (Some(meta), Some(netns)) = (meta, netns) {
            detach_clsact(netns, &meta);
        }
        let Self { key, dir, .. } = self;
        remove_pins(&dir);
        if dir.exists() {
            return Err(DatapathError::Pin {
                key: key.to_string(),
                path: dir,
                detail: "pin directory could not be removed".into(),
            });
        }
        layout.prune_parents(&key);
        tracing::info!(device = %key, "datapath detached");
        Ok(())
    }
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

fn zero_per_cpu() -> Result<Vec<u64>, std::io::Error> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(vec![0u64; n])
}

/// A map of the object as its typed wrapper.
fn typed<'a, T>(
    map: Option<&'a mut Map>,
    key: &DatapathKey,
    name: &'static str,
) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut Map>,
    <T as TryFrom<&'a mut Map>>::Error: std::fmt::Display,
{
    let map = map.ok_or_else(|| map_err(key, name, "missing from the eBPF object"))?;
    T::try_from(map).map_err(|e| map_err(key, name, e))
}

fn typed_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    key: &DatapathKey,
    name: &'static str,
) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut Map>,
    <T as TryFrom<&'a mut Map>>::Error: std::fmt::Display,
{
    typed(ebpf.map_mut(name), key, name)
}

fn write_initial_policy(
    ebpf: &mut Ebpf,
    key: &DatapathKey,
    compiled: &CompiledPolicy,
) -> Result<(), DatapathError> {
    let [rt4, rt6, loc4, loc6] = ebpf.maps_disjoint_mut([
        MAP_ROUTES_V4[0],
        MAP_ROUTES_V6[0],
        MAP_LOCAL_V4[0],
        MAP_LOCAL_V6[0],
    ]);
    fill_slot(
        key,
        0,
        compiled,
        &mut typed(rt4, key, MAP_ROUTES_V4[0])?,
        &mut typed(rt6, key, MAP_ROUTES_V6[0])?,
        &mut typed(loc4, key, MAP_LOCAL_V4[0])?,
        &mut typed(loc6, key, MAP_LOCAL_V6[0])?,
    )?;
    let mut slots: Array<&mut MapData, SlotConfig> = typed_mut(ebpf, key, MAP_SLOTS)?;
    slots
        .set(0, slot_config(compiled, 1), 0)
        .map_err(|e| map_err(key, MAP_SLOTS, e))?;
    let mut active: Array<&mut MapData, u32> = typed_mut(ebpf, key, MAP_ACTIVE)?;
    active
        .set(0, 0, 0)
        .map_err(|e| map_err(key, MAP_ACTIVE, e))?;
    Ok(())
}

/// The slot settings for `compiled`: flags, MAC, and the own addresses inline when
/// they fit (the hash sets hold them all regardless).
fn slot_config(compiled: &CompiledPolicy, generation: u32) -> SlotConfig {
    let mut cfg = SlotConfig {
        flags: compiled.flags,
        generation,
        mac: compiled.mac,
        ..Default::default()
    };
    if compiled.local_v4.len() <= OWN_INLINE {
        cfg.own4_len = compiled.local_v4.len() as u8;
        for (slot, a) in cfg.own4.iter_mut().zip(&compiled.local_v4) {
            *slot = a.octets();
        }
    } else {
        cfg.own4_len = OWN_OVERFLOW;
    }
    if compiled.local_v6.len() <= OWN_INLINE {
        cfg.own6_len = compiled.local_v6.len() as u8;
        for (slot, a) in cfg.own6.iter_mut().zip(&compiled.local_v6) {
            *slot = a.octets();
        }
    } else {
        cfg.own6_len = OWN_OVERFLOW;
    }
    cfg
}

/// Writes `compiled` into one slot's (empty) tries and address sets.
fn fill_slot<T: BorrowMut<MapData>>(
    key: &DatapathKey,
    slot: usize,
    compiled: &CompiledPolicy,
    rt4: &mut LpmTrie<T, [u8; 4], RouteValue>,
    rt6: &mut LpmTrie<T, [u8; 16], RouteValue>,
    loc4: &mut HashMap<T, [u8; 4], u8>,
    loc6: &mut HashMap<T, [u8; 16], u8>,
) -> Result<(), DatapathError> {
    for a in &compiled.prefixes {
        let value = RouteValue {
            hit_index: a.hit_index,
        };
        match a.prefix {
            IpNet::V4(n) => rt4
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    value,
                    0,
                )
                .map_err(|e| map_err(key, MAP_ROUTES_V4[slot], e))?,
            IpNet::V6(n) => rt6
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    value,
                    0,
                )
                .map_err(|e| map_err(key, MAP_ROUTES_V6[slot], e))?,
        }
    }
    for a in &compiled.local_v4 {
        loc4.insert(a.octets(), 1, 0)
            .map_err(|e| map_err(key, MAP_LOCAL_V4[slot], e))?;
    }
    for a in &compiled.local_v6 {
        loc6.insert(a.octets(), 1, 0)
            .map_err(|e| map_err(key, MAP_LOCAL_V6[slot], e))?;
    }
    Ok(())
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Runs on the namespace thread: the MAC and IPv6 link-local addresses of `ifname`
/// (nothing when it cannot be read; the data path then lets no source MAC through).
fn wire_identity(ifname: &str) -> (Option<[u8; 6]>, Vec<Ipv6Addr>) {
    use crate::netns::{link, netlink::NlSocket};
    let Ok(mut sock) = NlSocket::route() else {
        return (None, Vec::new());
    };
    let Ok(Some(facts)) = link::link_by_name(&mut sock, ifname) else {
        return (None, Vec::new());
    };
    let link_local = link::addresses(&mut sock, facts.ifindex)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| match a.net.addr() {
            IpAddr::V6(v6) if a.scope == 253 => Some(v6),
            _ => None,
        })
        .collect();
    (facts.mac, link_local)
}

/// Runs on the namespace thread: loads and attaches both directions.
fn attach_in_netns(
    ebpf: &mut Ebpf,
    key: &DatapathKey,
    ifname: &str,
    netns_name: &str,
    options: AttachOptions,
) -> Result<Attached, DatapathError> {
    let idx = crate::netns::ifindex_of(ifname).ok_or_else(|| DatapathError::NoInterface {
        key: key.to_string(),
        interface: ifname.to_string(),
        netns: netns_name.to_string(),
    })?;
    let mut meta = DatapathMeta {
        ifindex: idx,
        ..Default::default()
    };

    // Egress: TCX first (kernel >= 6.6), clsact + cls_bpf otherwise.
    let mut failures = Vec::new();
    let egress: &mut SchedClassifier = ebpf
        .program_mut(PROG_EGRESS)
        .ok_or_else(|| map_err(key, "program nc_egress", "missing from the eBPF object"))?
        .try_into()
        .map_err(|e| prog_err(key, "nc_egress", e))?;
    let mut egress_link = None;
    if matches!(options.egress, None | Some(EgressMode::Tcx)) {
        match egress.attach_with_options(
            ifname,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(id) => {
                let link = egress
                    .take_link(id)
                    .map_err(|e| prog_err(key, "nc_egress", e))?;
                egress_link = Some(FdLink::try_from(link).map_err(|e| {
                    map_err(
                        key,
                        "link egress",
                        format!("TCX link is not an fd link: {e}"),
                    )
                })?);
                meta.egress_mode = EgressMode::Tcx.code();
            }
            Err(e) => failures.push(format!("tcx: {e}")),
        }
    }
    if meta.egress_mode == 0 && matches!(options.egress, None | Some(EgressMode::Clsact)) {
        let (prio, handle) = attach_clsact(egress, ifname, TcAttachType::Egress, &mut meta)
            .map_err(|e| {
                failures.push(format!("clsact: {e}"));
                DatapathError::Attach {
                    key: key.to_string(),
                    direction: "egress",
                    interface: ifname.to_string(),
                    detail: failures.join("; "),
                }
            })?;
        meta.egress_mode = EgressMode::Clsact.code();
        meta.egress_priority = prio;
        meta.egress_handle = handle;
    }
    if meta.egress_mode == 0 {
        return Err(DatapathError::Attach {
            key: key.to_string(),
            direction: "egress",
            interface: ifname.to_string(),
            detail: failures.join("; "),
        });
    }

    // Ingress: XDP native, XDP generic, then tc ingress (TCX, clsact).
    let mut failures = Vec::new();
    let mut ingress_link = None;
    let want = options.ingress;
    if matches!(
        want,
        None | Some(IngressMode::XdpNative) | Some(IngressMode::XdpGeneric)
    ) {
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_INGRESS_XDP)
            .ok_or_else(|| map_err(key, "program nc_ingress", "missing from the eBPF object"))?
            .try_into()
            .map_err(|e| prog_err(key, "nc_ingress", e))?;
        let modes: &[(XdpMode, IngressMode)] = match want {
            Some(IngressMode::XdpGeneric) => &[(XdpMode::Skb, IngressMode::XdpGeneric)],
            Some(IngressMode::XdpNative) => &[(XdpMode::Driver, IngressMode::XdpNative)],
            _ => &[
                (XdpMode::Driver, IngressMode::XdpNative),
                (XdpMode::Skb, IngressMode::XdpGeneric),
            ],
        };
        for (mode, ingress_mode) in modes {
            match xdp.attach_to_if_index(idx, *mode) {
                Ok(id) => {
                    let link = xdp
                        .take_link(id)
                        .map_err(|e| prog_err(key, "nc_ingress", e))?;
                    match FdLink::try_from(link) {
                        Ok(fd) => {
                            ingress_link = Some(fd);
                            meta.ingress_mode = ingress_mode.code();
                            break;
                        }
                        Err(e) => {
                            // A netlink attachment (kernels before 5.9) is not owned by
                            // any fd: dropping the link leaves it in place, so remove it.
                            let flags = match mode {
                                XdpMode::Skb => XDP_FLAGS_SKB_MODE,
                                _ => XDP_FLAGS_DRV_MODE,
                            };
                            let removed =
                                crate::netns::netlink::NlSocket::route().and_then(|mut sock| {
                                    crate::netns::link::detach_xdp(&mut sock, idx, flags)
                                });
                            failures.push(match removed {
                                Ok(()) => format!("{ingress_mode:?}: not a bpf_link ({e}); detached"),
                                Err(d) => format!("{ingress_mode:?}: not a bpf_link ({e}); detaching it failed: {d}"),
                            });
                        }
                    }
                }
                Err(e) => failures.push(format!("{ingress_mode:?}: {e}")),
            }
        }
    }
    if meta.ingress_mode == 0
        && matches!(
            want,
            None | Some(IngressMode::Tcx) | Some(IngressMode::Clsact)
        )
    {
        let tc_in: &mut SchedClassifier = ebpf
            .program_mut(PROG_INGRESS_TC)
            .ok_or_else(|| map_err(key, "program nc_ingress_tc", "missing from the eBPF object"))?
            .try_into()
            .map_err(|e| prog_err(key, "nc_ingress_tc", e))?;
        if want != Some(IngressMode::Clsact) {
            match tc_in.attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => {
                    let link = tc_in
                        .take_link(id)
                        .map_err(|e| prog_err(key, "nc_ingress_tc", e))?;
                    if let Ok(fd) = FdLink::try_from(link) {
                        ingress_link = Some(fd);
                        meta.ingress_mode = attach_mode::INGRESS_TCX;
                    }
                }
                Err(e) => failures.push(format!("tcx ingress: {e}")),
            }
        }
        if meta.ingress_mode == 0 {
            match attach_clsact(tc_in, ifname, TcAttachType::Ingress, &mut meta) {
                Ok((prio, handle)) => {
                    meta.ingress_mode = attach_mode::INGRESS_CLSACT;
                    meta.ingress_priority = prio;
                    meta.ingress_handle = handle;
                }
                Err(e) => failures.push(format!("clsact ingress: {e}")),
            }
        }
    }
    if meta.ingress_mode == 0 {
        // Undo egress before failing: the link objects detach on drop; clsact needs netlink.
        drop(egress_link);
        if meta.egress_mode == attach_mode::EGRESS_CLSACT {
            detach_clsact_here(&meta);
        }
        return Err(DatapathError::Attach {
            key: key.to_string(),
            direction: "ingress",
            interface: ifname.to_string(),
            detail: failures.join("; "),
        });
    }
    Ok(Attached {
        meta,
        egress_link,
        ingress_link,
    })
}

/// `XDP_FLAGS_SKB_MODE`, `XDP_FLAGS_DRV_MODE` (uapi `linux/if_link.h`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Attaches with clsact + cls_bpf and leaves the filter in place (not owned by a
/// link: it survives the process like a pinned link does). Returns priority and handle.
fn attach_clsact(
    prog: &mut SchedClassifier,
    ifname: &str,
    attach_type: TcAttachType,
    meta: &mut DatapathMeta,
) -> Result<(u32, u32), String> {
    match tc::qdisc_add_clsact(ifname) {
        // Ours: removed again when the last filter of ours goes (detach).
        Ok(()) => meta.owned |= netclaim_common::owned::CLSACT_QDISC,
        Err(e) => {
            let exists =
                matches!(&e, tc::TcError::NetlinkError(n) if n.to_string().contains("exists"));
            if !exists {
                tracing::debug!(interface = ifname, error = %e, "clsact qdisc add failed");
            }
        }
    }
    let id = prog
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::Netlink(tc::NlOptions::default()),
        )
        .map_err(|e| e.to_string())?;
    let link: SchedClassifierLink = prog.take_link(id).map_err(|e| e.to_string())?;
    let prio = link.priority().map_err(|e| e.to_string())?;
    let handle = link.handle().map_err(|e| e.to_string())?;
    // The filter stays attached; its identity is recorded in NC_META for detach.
    std::mem::forget(link);
    Ok((u32::from(prio), u32::from(handle)))
}

/// Removes clsact filters recorded in `meta`, entering `netns` to do it.
fn detach_clsact(netns: &Netns, meta: &DatapathMeta) {
    if meta.egress_mode != attach_mode::EGRESS_CLSACT
        && meta.ingress_mode != attach_mode::INGRESS_CLSACT
    {
        return;
    }
    let meta = *meta;
    if let Err(e) = netns.run(move || detach_clsact_here(&meta)) {
        tracing::warn!(error = %e, "could not enter namespace to remove clsact filters");
    }
}

/// Removes clsact filters recorded in `meta` in the current thread's namespace.
fn detach_clsact_here(meta: &DatapathMeta) {
    let Some(ifname) = crate::netns::ifname_of(meta.ifindex) else {
        return; // interface gone: its filters went with it
    };
    for (mode, want, attach_type, prio, handle) in [
        (
            meta.egress_mode,
            attach_mode::EGRESS_CLSACT,
            TcAttachType::Egress,
            meta.egress_priority,
            meta.egress_handle,
        ),
        (
            meta.ingress_mode,
            attach_mode::INGRESS_CLSACT,
            TcAttachType::Ingress,
            meta.ingress_priority,
            meta.ingress_handle,
        ),
    ] {
        if mode != want {
            continue;
        }
        match SchedClassifierLink::attached(
            &ifname,
            attach_type,
            prio as u16,
            TcHandle::from(handle),
            None,
        ) {
            Ok(link) => {
                if let Err(e) = aya::programs::links::Link::detach(link) {
                    tracing::warn!(interface = %ifname, error = %e, "removing clsact filter");
                }
            }
            Err(e) => tracing::warn!(interface = %ifname, error = %e, "finding clsact filter"),
        }
    }
    if meta.owned & netclaim_common::owned::CLSACT_QDISC != 0 {
        remove_own_clsact(&ifname, meta.ifindex);
    }
}

/// Deletes the clsact qdisc the driver added, unless filters of someone else still
/// hang below it (deleting it would take theirs too).
fn remove_own_clsact(ifname: &str, ifindex: u32) {
    use crate::netns::{link, netlink::NlSocket};
    let result =
        NlSocket::route().and_then(|mut sock| match link::clsact_filters(&mut sock, ifindex)? {
            0 => link::delete_clsact(&mut sock, ifindex).map(|()| true),
            _ => Ok(false),
        });
    match result {
        Ok(true) => tracing::debug!(
            interface = ifname,
            "removed the clsact qdisc netclaim added"
        ),
        Ok(false) => tracing::info!(
            interface = ifname,
            "kept the clsact qdisc netclaim added: other filters use it now"
        ),
        Err(e) => tracing::warn!(interface = ifname, error = %e, "removing the clsact qdisc"),
    }
}

/// Pins maps, programs and links. The links are pinned last: until then, dropping
/// them (on error) detaches the programs.
fn pin_all(
    ebpf: &mut Ebpf,
    key: &DatapathKey,
    dir: &Path,
    attached: &mut Attached,
) -> Result<(), DatapathError> {
    let pin_err = |path: &Path, e: &dyn std::fmt::Display| DatapathError::Pin {
        key: key.to_string(),
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    if dir.join(MAP_COUNTERS).exists() {
        return Err(pin_err(dir, &"already holds a data path (detach it first)"));
    }
    std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, &e))?;
    {
        let mut meta: Array<&mut MapData, DatapathMeta> = typed_mut(ebpf, key, MAP_META)?;
        meta.set(0, attached.meta, 0)
            .map_err(|e| map_err(key, MAP_META, e))?;
    }
    for (name, map) in ebpf.maps() {
        if name.starts_with("NC_") {
            let path = dir.join(name);
            map.pin(&path).map_err(|e| pin_err(&path, &e))?;
        }
    }
    let ingress_prog = match IngressMode::from_code(attached.meta.ingress_mode) {
        Some(IngressMode::XdpNative | IngressMode::XdpGeneric) => PROG_INGRESS_XDP,
        _ => PROG_INGRESS_TC,
    };
    for (prog, file) in [
        (PROG_EGRESS, pins::PROG_EGRESS),
        (ingress_prog, pins::PROG_INGRESS),
    ] {
        let path = dir.join(file);
        if let Some(p) = ebpf.program_mut(prog) {
            p.pin(&path).map_err(|e| pin_err(&path, &e))?;
        }
    }
    for (link, file) in [
        (attached.egress_link.take(), pins::LINK_EGRESS),
        (attached.ingress_link.take(), pins::LINK_INGRESS),
    ] {
        if let Some(link) = link {
            let path = dir.join(file);
            // Dropping the PinnedLink closes our fd; the pin keeps the link alive.
            link.pin(&path).map_err(|e| pin_err(&path, &e))?;
        }
    }
    Ok(())
}

/// Removes a device's pin directory and everything in it. Removing the link pins
/// releases the links, which detaches the programs.
fn remove_pins(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        // Links first, so programs are detached before anything else goes.
        files.sort_by_key(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("link_"))
        });
        for f in files {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(path = %f.display(), error = %e, "removing pin");
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
