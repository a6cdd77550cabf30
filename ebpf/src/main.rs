//! netclaim's data path: one loaded instance of these programs per allocated interface.
//!
//! * `nc_egress` (tc egress, TCX or clsact): counts what the pod sends, drops spoofed
//!   sources and destinations outside the claim's prefixes, counts hits per prefix.
//! * `nc_ingress` (XDP) / `nc_ingress_tc` (tc ingress fallback): counts what the pod
//!   receives and drops unicast IP not addressed to the interface.
//! * `nc_guard_sockopt` (cgroup/setsockopt) on the pod's cgroup: refuses the two ways
//!   a socket can send without passing tc egress (`PACKET_QDISC_BYPASS`, `AF_XDP`).
//! * `nc_bare`, `nc_floor`: benchmark baselines (nothing; the same parsing plus one
//!   route lookup and one counter); never attached by the driver.
//!
//! What passes is decided by `netclaim-verdict`, the pure function the host tests fuzz;
//! this file only backs its `Frame` and `Policy` traits with the packet and the maps.
//! Maps and their layouts are declared in `netclaim-common`. Policy is double-buffered
//! (see that crate): every packet reads the active slot once.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::{cgroup_sockopt, classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::{SockoptContext, TcContext, XdpContext},
};
use aya_log_ebpf::info;
use netclaim_common::{
    flags, DatapathMeta, DeviceCounters, RouteValue, SlotConfig, MAX_LOCAL_ADDRS, MAX_PREFIXES,
    MAX_ROUTE_HITS, OWN_INLINE, OWN_OVERFLOW,
};
use netclaim_verdict::{self as verdict, Frame, Pass, Verdict};

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

/// The active policy slot, read once per packet.
#[derive(Clone, Copy)]
struct Policy {
    slot: u32,
    cfg: Option<&'static SlotConfig>,
}

#[inline(always)]
fn policy() -> Policy {
    let slot = ACTIVE.get(0).copied().unwrap_or(0) & 1;
    Policy {
        slot,
        cfg: SLOTS.get(slot),
    }
}

impl Policy {
    #[inline(always)]
    fn generation(&self) -> u32 {
        self.cfg.map_or(0, |c| c.generation)
    }
}

impl verdict::Policy for Policy {
    #[inline(always)]
    fn flags(&self) -> u32 {
        self.cfg.map_or(0, |c| c.flags)
    }

    #[inline(always)]
    fn mac(&self) -> [u8; 6] {
        self.cfg.map_or([0; 6], |c| c.mac)
    }

    #[inline(always)]
    fn own_v4(&self, a: &[u8; 4]) -> bool {
        if let Some(c) = self.cfg {
            if c.own4_len != OWN_OVERFLOW {
                let mut i = 0;
                while i < OWN_INLINE {
                    if i < usize::from(c.own4_len) && c.own4[i] == *a {
                        return true;
                    }
                    i += 1;
                }
                return false;
            }
        }
        // SAFETY: read-only lookups in maps of this program.
        unsafe {
            if self.slot == 0 {
                LOC4_A.get(a).is_some()
            } else {
                LOC4_B.get(a).is_some()
            }
        }
    }

    #[inline(always)]
    fn own_v6(&self, a: &[u8; 16]) -> bool {
        if let Some(c) = self.cfg {
            if c.own6_len != OWN_OVERFLOW {
                let mut i = 0;
                while i < OWN_INLINE {
                    if i < usize::from(c.own6_len) && c.own6[i] == *a {
                        return true;
                    }
                    i += 1;
                }
                return false;
            }
        }
        // SAFETY: read-only lookups in maps of this program.
        unsafe {
            if self.slot == 0 {
                LOC6_A.get(a).is_some()
            } else {
                LOC6_B.get(a).is_some()
            }
        }
    }

    #[inline(always)]
    fn route_v4(&self, a: &[u8; 4]) -> Option<u32> {
        let key = Key::new(32, *a);
        let hit = if self.slot == 0 {
            RT4_A.get(&key)
        } else {
            RT4_B.get(&key)
        };
        hit.map(|v| v.hit_index)
    }

    #[inline(always)]
    fn route_v6(&self, a: &[u8; 16]) -> Option<u32> {
        let key = Key::new(128, *a);
        let hit = if self.slot == 0 {
            RT6_A.get(&key)
        } else {
            RT6_B.get(&key)
        };
        hit.map(|v| v.hit_index)
    }
}

#[inline(always)]
fn counters() -> Option<*mut DeviceCounters> {
    COUNTERS.get_ptr_mut(0)
}

/// A tc packet: bytes read with `bpf_skb_load_bytes` (linear or not), the VLAN tag the
/// kernel may hold in metadata counted as one tag.
struct TcFrame<'a>(&'a TcContext);

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(off).ok()
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn offloaded_tags(&self) -> u32 {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.0.skb.skb).vlan_present & 1 }
    }
}

/// An XDP frame: bytes read with `bpf_xdp_load_bytes` (multi-buffer aware).
struct XdpFrame<'a>(&'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: the helper writes at most N bytes into `buf`.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                off as u32,
                buf.as_mut_ptr() as *mut c_void,
                N as u32,
            )
        };
        if ret == 0 {
            Some(buf)
        } else {
            None
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: the helper only reads the program's own context.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as usize }
    }
}

#[inline(always)]
fn count(verdict: Verdict) -> bool {
    match verdict {
        Verdict::Pass(Pass::Route(i)) => {
            if let Some(h) = HITS.get_ptr_mut(i) {
                // SAFETY: per-CPU value of a live map; only this CPU writes it.
                unsafe { *h += 1 };
            }
            true
        }
        Verdict::Pass(_) => true,
        Verdict::Drop(reason) => {
            if let Some(c) = counters() {
                // SAFETY: per-CPU value of a live map; only this CPU writes it.
                // (`get_mut`: an index the compiler cannot bound would be a panic path,
                // which the verifier refuses.)
                if let Some(d) = unsafe { (*c).drops.get_mut(reason as usize) } {
                    *d += 1;
                }
            }
            false
        }
    }
}

/// Counts a transmitted packet and logs the policy generation once per CPU whenever
/// it changes (the marker lives in the counters value already at hand).
#[inline(always)]
fn count_tx(ctx: &TcContext, p: Policy) {
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe {
            (*c).tx_packets += 1;
            (*c).tx_bytes += u64::from(ctx.len());
            let generation = u64::from(p.generation());
            if (*c).logged_generation != generation {
                (*c).logged_generation = generation;
                info!(
                    ctx,
                    "netclaim: egress policy generation {} active in slot {} (flags {:x})",
                    generation,
                    p.slot,
                    verdict::Policy::flags(&p)
                );
            }
        }
    }
}

#[inline(always)]
fn count_rx(len: u64) {
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe {
            (*c).rx_packets += 1;
            (*c).rx_bytes += len;
        }
    }
}

#[classifier]
pub fn nc_egress(ctx: TcContext) -> i32 {
    let p = policy();
    count_tx(&ctx, p);
    if count(verdict::egress(&TcFrame(&ctx), &p)) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

#[xdp]
pub fn nc_ingress(ctx: XdpContext) -> u32 {
    let frame = XdpFrame(&ctx);
    count_rx(frame.len() as u64);
    if count(verdict::ingress(&frame, &policy())) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[classifier]
pub fn nc_ingress_tc(ctx: TcContext) -> i32 {
    count_rx(u64::from(ctx.len()));
    if count(verdict::ingress(&TcFrame(&ctx), &policy())) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// The benchmark floor: the same parsing as `nc_egress`, one LPM lookup and one
/// per-CPU counter increment, no policy. Never attached by the driver.
#[classifier]
pub fn nc_floor(ctx: TcContext) -> i32 {
    if let Some(c) = counters() {
        // SAFETY: per-CPU value of a live map; only this CPU writes it.
        unsafe { (*c).tx_packets += 1 };
    }
    let floor = Floor(policy().slot);
    // The verdict is computed for its cost only; helper calls and lookups stay.
    let _ = verdict::egress(&TcFrame(&ctx), &floor);
    TC_ACT_OK
}

/// The floor's policy: parse everything, one route lookup, nothing else.
struct Floor(u32);

impl verdict::Policy for Floor {
    #[inline(always)]
    fn flags(&self) -> u32 {
        flags::ENFORCE_ROUTES
    }

    #[inline(always)]
    fn mac(&self) -> [u8; 6] {
        [0; 6]
    }

    #[inline(always)]
    fn own_v4(&self, _: &[u8; 4]) -> bool {
        true
    }

    #[inline(always)]
    fn own_v6(&self, _: &[u8; 16]) -> bool {
        true
    }

    #[inline(always)]
    fn route_v4(&self, a: &[u8; 4]) -> Option<u32> {
        Policy {
            slot: self.0,
            cfg: None,
        }
        .route_v4(a)
    }

    #[inline(always)]
    fn route_v6(&self, a: &[u8; 16]) -> Option<u32> {
        Policy {
            slot: self.0,
            cfg: None,
        }
        .route_v6(a)
    }
}

/// `SOL_PACKET`, `SOL_XDP` (uapi `linux/socket.h`) and `PACKET_QDISC_BYPASS`
/// (`linux/if_packet.h`).
const SOL_PACKET: i32 = 263;
const SOL_XDP: i32 = 283;
const PACKET_QDISC_BYPASS: i32 = 20;

/// cgroup/setsockopt on the pod's cgroup. `PACKET_QDISC_BYPASS` hands frames straight
/// to the driver (`__dev_direct_xmit`), past tc egress, and so does an `AF_XDP`
/// socket, which cannot work without its `SOL_XDP` options (UMEM, rings). Refusing
/// both keeps every frame a pod sends on the path `nc_egress` guards. 0 = EPERM.
#[cgroup_sockopt(setsockopt)]
pub fn nc_guard_sockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: reading fields of the program's own context.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    if level == SOL_XDP || level == SOL_PACKET && optname == PACKET_QDISC_BYPASS {
        return 0;
    }
    1
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
