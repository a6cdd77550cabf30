//! netclaim's data path: one loaded instance of these programs per allocated interface.
//!
//! * `nc_egress` (tc egress, TCX or clsact): counts what the pod sends, drops spoofed
//!   sources and destinations outside the claim's prefixes, counts hits per prefix.
//! * `nc_ingress` (XDP) / `nc_ingress_tc` (tc ingress fallback): counts what the pod
//!   receives and drops unicast IP not addressed to the interface.
//! * `nc_bare`: a pass-through baseline for benchmarks; never attached by the driver.
//!
//! Maps and their layouts are declared in `netclaim-common`; this file only reads them.
//! Policy is double-buffered (see that crate): every packet reads the active slot once.
//! ARP, IPv6 neighbour discovery, link-local and broadcast traffic always pass; non-IP
//! traffic passes; one 802.1Q tag is parsed.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::info;
use netclaim_common::{
    flags, DatapathMeta, DeviceCounters, DropReason, RouteValue, SlotConfig, MAX_LOCAL_ADDRS,
    MAX_PREFIXES, MAX_ROUTE_HITS,
};

#[map(name = "NC_COUNTERS")]
static COUNTERS: PerCpuArray<DeviceCounters> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "NC_ACTIVE")]
static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
#[map(name = "NC_SLOTS")]
static SLOTS: Array<SlotConfig> = Array::with_max_entries(2, 0);
#[map(name = "NC_RT4_A")]
static RT4_A: LpmTrie<[u8; 4], RouteValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "NC_RT4_B")]
static RT4_B: LpmTrie<[u8; 4], RouteValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "NC_RT6_A")]
static RT6_A: LpmTrie<[u8; 16], RouteValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "NC_RT6_B")]
static RT6_B: LpmTrie<[u8; 16], RouteValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "NC_LOC4_A")]
static LOC4_A: HashMap<[u8; 4], u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map(name = "NC_LOC4_B")]
static LOC4_B: HashMap<[u8; 4], u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map(name = "NC_LOC6_A")]
static LOC6_A: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map(name = "NC_LOC6_B")]
static LOC6_B: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
#[map(name = "NC_HITS")]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_ROUTE_HITS, 0);
/// Written by the driver only (attach modes, ifindex, netns); see `DatapathMeta`.
#[map(name = "NC_META")]
static META: Array<DatapathMeta> = Array::with_max_entries(1, 0);
#[map(name = "NC_LOG_SEEN")]
static LOG_SEEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const IPV6_HLEN: usize = 40;
const IPPROTO_ICMPV6: u8 = 58;
/// Headers the parser may need in the linear part of an skb: Ethernet, one VLAN tag,
/// IPv6 and the ICMPv6 type byte.
const PARSE_LEN: usize = ETH_HLEN + VLAN_HLEN + IPV6_HLEN + 1;

/// What the program decides for one packet.
#[derive(Clone, Copy)]
enum Verdict {
    Pass,
    Drop(DropReason),
}

/// The active policy slot and its flags.
#[derive(Clone, Copy)]
struct Policy {
    slot: u32,
    flags: u32,
    generation: u32,
}

#[inline(always)]
fn policy() -> Policy {
    let slot = ACTIVE.get(0).copied().unwrap_or(0) & 1;
    match SLOTS.get(slot) {
        Some(cfg) => Policy {
            slot,
            flags: cfg.flags,
            generation: cfg.generation,
        },
        None => Policy {
            slot,
            flags: 0,
            generation: 0,
        },
    }
}

#[inline(always)]
fn counters() -> Option<*mut DeviceCounters> {
    COUNTERS.get_ptr_mut(0)
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe { (*c).drops[reason as usize] += 1 };
    }
}

/// Reads `N` bytes at `off` if they lie inside the packet.
#[inline(always)]
fn bytes<const N: usize>(data: usize, end: usize, off: usize) -> Option<[u8; N]> {
    if data + off + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; [u8; N] has alignment 1.
    Some(unsafe { *((data + off) as *const [u8; N]) })
}

/// Returns the L3 protocol and the offset of the L3 header, skipping one 802.1Q tag.
#[inline(always)]
fn l3(data: usize, end: usize) -> Option<(u16, usize)> {
    let proto = u16::from_be_bytes(bytes::<2>(data, end, 12)?);
    if proto == ETH_P_8021Q {
        let inner = u16::from_be_bytes(bytes::<2>(data, end, 16)?);
        return Some((inner, ETH_HLEN + VLAN_HLEN));
    }
    Some((proto, ETH_HLEN))
}

#[inline(always)]
fn is_local_v4(slot: u32, addr: &[u8; 4]) -> bool {
    // SAFETY: read-only lookups in maps of this program.
    unsafe {
        if slot == 0 {
            LOC4_A.get(addr).is_some()
        } else {
            LOC4_B.get(addr).is_some()
        }
    }
}

#[inline(always)]
fn is_local_v6(slot: u32, addr: &[u8; 16]) -> bool {
    // SAFETY: read-only lookups in maps of this program.
    unsafe {
        if slot == 0 {
            LOC6_A.get(addr).is_some()
        } else {
            LOC6_B.get(addr).is_some()
        }
    }
}

#[inline(always)]
fn route_v4(slot: u32, dst: [u8; 4]) -> Option<u32> {
    let key = Key::new(32, dst);
    let hit = if slot == 0 {
        RT4_A.get(&key)
    } else {
        RT4_B.get(&key)
    };
    hit.map(|v| v.hit_index)
}

#[inline(always)]
fn route_v6(slot: u32, dst: [u8; 16]) -> Option<u32> {
    let key = Key::new(128, dst);
    let hit = if slot == 0 {
        RT6_A.get(&key)
    } else {
        RT6_B.get(&key)
    };
    hit.map(|v| v.hit_index)
}

#[inline(always)]
fn count_hit(index: u32) {
    if let Some(h) = HITS.get_ptr_mut(index) {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe { *h += 1 };
    }
}

#[inline(always)]
fn is_link_local_v6(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && (a[1] & 0xc0) == 0x80
}

/// ICMPv6 types of neighbour discovery (router/neighbour solicitation and
/// advertisement, redirect) and multicast listener reports.
#[inline(always)]
fn is_nd_or_mld(icmp_type: u8) -> bool {
    (133..=137).contains(&icmp_type) || (130..=132).contains(&icmp_type) || icmp_type == 143
}

/// The egress decision for one frame starting at `data`.
#[inline(always)]
fn egress_verdict(data: usize, end: usize, p: Policy) -> Verdict {
    let enforce = p.flags & (flags::ENFORCE_ROUTES | flags::ANTI_SPOOFING);
    let Some((proto, off)) = l3(data, end) else {
        return Verdict::Pass;
    };
    if proto == ETH_P_IP {
        let (Some(src), Some(dst)) = (
            bytes::<4>(data, end, off + 12),
            bytes::<4>(data, end, off + 16),
        ) else {
            return Verdict::Pass;
        };
        if dst == [255, 255, 255, 255] || (dst[0] == 169 && dst[1] == 254) {
            return Verdict::Pass;
        }
        if dst[0] & 0xf0 == 0xe0 {
            if p.flags & flags::ALLOW_MULTICAST == 0 {
                return Verdict::Drop(DropReason::Multicast);
            }
            return Verdict::Pass;
        }
        if enforce == 0 {
            return Verdict::Pass;
        }
        if p.flags & flags::ANTI_SPOOFING != 0 && !is_local_v4(p.slot, &src) {
            return Verdict::Drop(DropReason::SpoofedSource);
        }
        if p.flags & flags::ENFORCE_ROUTES != 0 {
            match route_v4(p.slot, dst) {
                Some(i) => count_hit(i),
                None => return Verdict::Drop(DropReason::NoRoute),
            }
        }
        return Verdict::Pass;
    }
    if proto == ETH_P_IPV6 {
        let (Some(next), Some(src), Some(dst)) = (
            bytes::<1>(data, end, off + 6),
            bytes::<16>(data, end, off + 8),
            bytes::<16>(data, end, off + 24),
        ) else {
            return Verdict::Pass;
        };
        if next[0] == IPPROTO_ICMPV6 {
            if let Some(t) = bytes::<1>(data, end, off + IPV6_HLEN) {
                if is_nd_or_mld(t[0]) {
                    return Verdict::Pass;
                }
            }
        }
        if is_link_local_v6(&dst) {
            return Verdict::Pass;
        }
        if dst[0] == 0xff {
            // Link-local scope multicast (ff02::/16) is part of how IPv6 works at all.
            if dst[1] & 0x0f == 2 || p.flags & flags::ALLOW_MULTICAST != 0 {
                return Verdict::Pass;
            }
            return Verdict::Drop(DropReason::Multicast);
        }
        if enforce == 0 {
            return Verdict::Pass;
        }
        if p.flags & flags::ANTI_SPOOFING != 0 && !is_local_v6(p.slot, &src) {
            return Verdict::Drop(DropReason::SpoofedSource);
        }
        if p.flags & flags::ENFORCE_ROUTES != 0 {
            match route_v6(p.slot, dst) {
                Some(i) => count_hit(i),
                None => return Verdict::Drop(DropReason::NoRoute),
            }
        }
    }
    Verdict::Pass
}

/// The ingress decision for one frame starting at `data`.
#[inline(always)]
fn ingress_verdict(data: usize, end: usize, p: Policy) -> Verdict {
    if p.flags & flags::INGRESS_FILTER == 0 {
        return Verdict::Pass;
    }
    // Broadcast and multicast frames (group bit of the destination MAC) always pass.
    // (The whole Ethernet header is checked at once: a one-byte check at offset 0
    // compiles to `data >= data_end`, which the verifier does not accept as a bound.)
    match bytes::<ETH_HLEN>(data, end, 0) {
        Some(eth) if eth[0] & 1 == 0 => {}
        _ => return Verdict::Pass,
    }
    let Some((proto, off)) = l3(data, end) else {
        return Verdict::Pass;
    };
    if proto == ETH_P_IP {
        let Some(dst) = bytes::<4>(data, end, off + 16) else {
            return Verdict::Pass;
        };
        if dst[0] == 169 && dst[1] == 254 || dst[0] & 0xf0 == 0xe0 || is_local_v4(p.slot, &dst) {
            return Verdict::Pass;
        }
        return Verdict::Drop(DropReason::NotLocal);
    }
    if proto == ETH_P_IPV6 {
        let (Some(next), Some(dst)) = (
            bytes::<1>(data, end, off + 6),
            bytes::<16>(data, end, off + 24),
        ) else {
            return Verdict::Pass;
        };
        if next[0] == IPPROTO_ICMPV6 {
            if let Some(t) = bytes::<1>(data, end, off + IPV6_HLEN) {
                if is_nd_or_mld(t[0]) {
                    return Verdict::Pass;
                }
            }
        }
        if is_link_local_v6(&dst) || dst[0] == 0xff || is_local_v6(p.slot, &dst) {
            return Verdict::Pass;
        }
        return Verdict::Drop(DropReason::NotLocal);
    }
    Verdict::Pass
}

/// Makes the headers the parser needs linear, if the skb has them at all.
#[inline(always)]
fn linearize(ctx: &TcContext) {
    let linear = ctx.data_end() - ctx.data();
    if linear < PARSE_LEN && (ctx.len() as usize) > linear {
        let want = if (ctx.len() as usize) < PARSE_LEN {
            ctx.len()
        } else {
            PARSE_LEN as u32
        };
        let _ = ctx.pull_data(want);
    }
}

/// Logs the policy generation once per CPU whenever it changes.
#[inline(always)]
fn log_generation(ctx: &TcContext, p: Policy) {
    if let Some(seen) = LOG_SEEN.get_ptr_mut(0) {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe {
            if *seen != p.generation {
                *seen = p.generation;
                info!(
                    ctx,
                    "netclaim: egress policy generation {} active in slot {} (flags {:x})",
                    p.generation,
                    p.slot,
                    p.flags
                );
            }
        }
    }
}

#[classifier]
pub fn nc_egress(ctx: TcContext) -> i32 {
    let p = policy();
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe {
            (*c).tx_packets += 1;
            (*c).tx_bytes += u64::from(ctx.len());
        }
    }
    log_generation(&ctx, p);
    if p.flags == 0 {
        return TC_ACT_OK;
    }
    linearize(&ctx);
    match egress_verdict(ctx.data(), ctx.data_end(), p) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

#[xdp]
pub fn nc_ingress(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe {
            (*c).rx_packets += 1;
            (*c).rx_bytes += (end - data) as u64;
        }
    }
    match ingress_verdict(data, end, policy()) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop(reason) => {
            count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

#[classifier]
pub fn nc_ingress_tc(ctx: TcContext) -> i32 {
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe {
            (*c).rx_packets += 1;
            (*c).rx_bytes += u64::from(ctx.len());
        }
    }
    let p = policy();
    if p.flags & flags::INGRESS_FILTER == 0 {
        return TC_ACT_OK;
    }
    linearize(&ctx);
    match ingress_verdict(ctx.data(), ctx.data_end(), p) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

#[classifier]
pub fn nc_bare(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
