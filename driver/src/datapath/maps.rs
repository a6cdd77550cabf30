//! Typed policy maps: fill, clear, read.
//!
//! The programs read their policy from one of two slots (A and B), each an LPM trie of
//! allowed prefixes per family and a hash set of own addresses per family, plus that
//! slot's [`SlotConfig`] in `NC_SLOTS`; `NC_ACTIVE` says which slot is live.
//! [`PolicyMaps`] owns those maps of a pinned data path and knows how to tell which
//! slot is active, whether a slot is empty, clear a slot, fill a slot from a
//! [`CompiledPolicy`], write a slot's settings, flip the active slot, and read the
//! active slot back. The free functions do the same on a freshly loaded [`Ebpf`]
//! before anything is pinned.
//!
//! This file owns the contents of the policy maps and nothing else: it never attaches,
//! pins or unpins, never touches the counter maps, and never decides when a slot may
//! be reused (the RCU wait and the order of an update belong to [`super::device`]).

use std::{
    borrow::BorrowMut,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData,
    },
    Ebpf,
};
use ipnet::IpNet;
use netclaim_common::{
    RouteValue, SlotConfig, MAP_ACTIVE, MAP_LOCAL_V4, MAP_LOCAL_V6, MAP_ROUTES_V4, MAP_ROUTES_V6,
    MAP_SLOTS, OWN_INLINE, OWN_OVERFLOW,
};

use super::{
    error::{map_err, DatapathError},
    pins::DatapathKey,
    policy::{AllowedPrefix, CompiledPolicy, Enforcement, PrefixOrigin},
};

pub(super) type Rt4 = LpmTrie<MapData, [u8; 4], RouteValue>;
pub(super) type Rt6 = LpmTrie<MapData, [u8; 16], RouteValue>;
pub(super) type Loc4 = HashMap<MapData, [u8; 4], u8>;
pub(super) type Loc6 = HashMap<MapData, [u8; 16], u8>;

/// The policy maps of both slots of one pinned data path.
pub(super) struct PolicyMaps {
    active: Array<MapData, u32>,
    slots: Array<MapData, SlotConfig>,
    rt4: [Rt4; 2],
    rt6: [Rt6; 2],
    loc4: [Loc4; 2],
    loc6: [Loc6; 2],
}

impl PolicyMaps {
    pub(super) fn new(
        active: Array<MapData, u32>,
        slots: Array<MapData, SlotConfig>,
        rt4: [Rt4; 2],
        rt6: [Rt6; 2],
        loc4: [Loc4; 2],
        loc6: [Loc6; 2],
    ) -> Self {
        Self {
            active,
            slots,
            rt4,
            rt6,
            loc4,
            loc6,
        }
    }

    /// Rebuilds the policy of the active slot in the kernel, with that slot's
    /// generation.
    pub(super) fn read_active(
        &self,
        key: &DatapathKey,
    ) -> Result<(CompiledPolicy, u32), DatapathError> {
        let slot = self.active_slot(key)?;
        let cfg = self
            .slots
            .get(&(slot as u32), 0)
            .map_err(|e| map_err(key, MAP_SLOTS, e))?;
        let mut prefixes = Vec::new();
        for item in self.rt4[slot].iter() {
            let (k, v) = item.map_err(|e| map_err(key, MAP_ROUTES_V4[slot], e))?;
            if let Ok(net) = IpNet::new(IpAddr::V4(Ipv4Addr::from(k.data())), k.prefix_len() as u8)
            {
                prefixes.push((net, v.hit_index));
            }
        }
        for item in self.rt6[slot].iter() {
            let (k, v) = item.map_err(|e| map_err(key, MAP_ROUTES_V6[slot], e))?;
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
        let current = CompiledPolicy {
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
        Ok((current, cfg.generation))
    }

    pub(super) fn active_slot(&self, key: &DatapathKey) -> Result<usize, DatapathError> {
        let slot = self
            .active
            .get(&0, 0)
            .map_err(|e| map_err(key, MAP_ACTIVE, e))?;
        Ok((slot & 1) as usize)
    }

    pub(super) fn slot_is_empty(&self, slot: usize) -> bool {
        self.rt4[slot].keys().next().is_none()
            && self.rt6[slot].keys().next().is_none()
            && self.loc4[slot].keys().next().is_none()
            && self.loc6[slot].keys().next().is_none()
    }

    pub(super) fn clear_slot(
        &mut self,
        key: &DatapathKey,
        slot: usize,
    ) -> Result<(), DatapathError> {
        let k4: Vec<Key<[u8; 4]>> = self.rt4[slot].keys().filter_map(Result::ok).collect();
        for k in k4 {
            self.rt4[slot]
                .remove(&k)
                .map_err(|e| map_err(key, MAP_ROUTES_V4[slot], e))?;
        }
        let k6: Vec<Key<[u8; 16]>> = self.rt6[slot].keys().filter_map(Result::ok).collect();
        for k in k6 {
            self.rt6[slot]
                .remove(&k)
                .map_err(|e| map_err(key, MAP_ROUTES_V6[slot], e))?;
        }
        let l4: Vec<[u8; 4]> = self.loc4[slot].keys().filter_map(Result::ok).collect();
        for k in l4 {
            self.loc4[slot]
                .remove(&k)
                .map_err(|e| map_err(key, MAP_LOCAL_V4[slot], e))?;
        }
        let l6: Vec<[u8; 16]> = self.loc6[slot].keys().filter_map(Result::ok).collect();
        for k in l6 {
            self.loc6[slot]
                .remove(&k)
                .map_err(|e| map_err(key, MAP_LOCAL_V6[slot], e))?;
        }
        Ok(())
    }

    /// Writes `compiled` into the (empty) tries and address sets of `slot`.
    pub(super) fn fill_slot(
        &mut self,
        key: &DatapathKey,
        slot: usize,
        compiled: &CompiledPolicy,
    ) -> Result<(), DatapathError> {
        fill_slot(
            key,
            slot,
            compiled,
            &mut self.rt4[slot],
            &mut self.rt6[slot],
            &mut self.loc4[slot],
            &mut self.loc6[slot],
        )
    }

    /// Writes the settings of `slot` (see `slot_config`).
    pub(super) fn write_slot_config(
        &mut self,
        key: &DatapathKey,
        slot: usize,
        compiled: &CompiledPolicy,
        generation: u32,
    ) -> Result<(), DatapathError> {
        injected(key, MAP_SLOTS)?;
        self.slots
            .set(slot as u32, slot_config(compiled, generation), 0)
            .map_err(|e| map_err(key, MAP_SLOTS, e))
    }

    /// Makes `slot` the active one: one u32 store.
    pub(super) fn flip(&mut self, key: &DatapathKey, slot: usize) -> Result<(), DatapathError> {
        injected(key, MAP_ACTIVE)?;
        self.active
            .set(0, slot as u32, 0)
            .map_err(|e| map_err(key, MAP_ACTIVE, e))
    }
}

/// Test builds: the bpf fail point in front of a map update (`crate::failpoints`).
fn injected(key: &DatapathKey, map: &'static str) -> Result<(), DatapathError> {
    match crate::failpoints::fires(crate::failpoints::BPF) {
        Some(text) => Err(map_err(key, map, text)),
        None => Ok(()),
    }
}

pub(super) fn zero_per_cpu() -> Result<Vec<u64>, std::io::Error> {
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

pub(super) fn typed_mut<'a, T>(
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

pub(super) fn write_initial_policy(
    ebpf: &mut Ebpf,
    key: &DatapathKey,
    compiled: &CompiledPolicy,
) -> Result<(), DatapathError> {
    injected(key, MAP_ROUTES_V4[0])?;
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

pub(super) fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}
