//! Map layouts shared by netclaim's eBPF programs (`ebpf/`) and the driver.
//!
//! Every allocated interface gets its own loaded instance of the programs, so every map
//! below belongs to exactly one device: nothing is keyed by ifindex, and two pods whose
//! interfaces share an ifindex can never see each other's counters or policy.
//!
//! Policy is double-buffered. There are two *slots* (A = 0, B = 1), each with its own
//! route tries, local-address sets and flags. The programs read [`MAP_ACTIVE`] once per
//! packet and use that slot only. The driver fills the inactive slot completely, then
//! flips the single `u32` in [`MAP_ACTIVE`], so an update has no window where a
//! half-written policy is consulted.
//!
//! This crate owns layouts and names only; it must not grow logic.
#![no_std]

/// Capacity of each route trie (per family, per slot). Validation allows 1024 routes
/// and 64 addresses per claim; the rest is headroom. Benchmarks raise it at load time.
pub const MAX_PREFIXES: u32 = 2048;
/// Capacity of each local-address set (per family, per slot).
pub const MAX_LOCAL_ADDRS: u32 = 64;
/// Number of per-route hit counters; route indices are below this.
pub const MAX_ROUTE_HITS: u32 = MAX_PREFIXES;

// Map names as they appear in the object and in `bpftool map show` (at most 15 bytes).
pub const MAP_COUNTERS: &str = "NC_COUNTERS";
pub const MAP_ACTIVE: &str = "NC_ACTIVE";
pub const MAP_SLOTS: &str = "NC_SLOTS";
pub const MAP_ROUTES_V4: [&str; 2] = ["NC_RT4_A", "NC_RT4_B"];
pub const MAP_ROUTES_V6: [&str; 2] = ["NC_RT6_A", "NC_RT6_B"];
pub const MAP_LOCAL_V4: [&str; 2] = ["NC_LOC4_A", "NC_LOC4_B"];
pub const MAP_LOCAL_V6: [&str; 2] = ["NC_LOC6_A", "NC_LOC6_B"];
pub const MAP_ROUTE_HITS: &str = "NC_HITS";
pub const MAP_META: &str = "NC_META";

// Program names (function names in `ebpf/src/main.rs`).
/// tc egress: counts tx, enforces anti-spoofing and routes.
pub const PROG_EGRESS: &str = "nc_egress";
/// XDP ingress: counts rx, drops unicast not addressed to the device.
pub const PROG_INGRESS_XDP: &str = "nc_ingress";
/// tc ingress: the same as [`PROG_INGRESS_XDP`], used when XDP cannot attach.
pub const PROG_INGRESS_TC: &str = "nc_ingress_tc";
/// tc pass-through without maps: the baseline of `cargo xtask bench datapath`.
pub const PROG_BARE: &str = "nc_bare";
/// tc: the verdict's parsing, one route lookup and one counter; the floor of
/// `cargo xtask bench datapath`.
pub const PROG_FLOOR: &str = "nc_floor";
/// cgroup/setsockopt on the pod's cgroup: refuses the options that send past tc.
pub const PROG_GUARD_SOCKOPT: &str = "nc_guard_sockopt";

/// Why a packet was dropped; the index into [`DeviceCounters::drops`].
///
/// The verdict (crate `netclaim-verdict`) picks exactly one reason per dropped frame;
/// README's "Enforcement" section lists what each one means.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Egress: the source IP is not one of the device's addresses.
    SpoofedSource = 0,
    /// Egress: no allowed prefix covers the destination (and no exception applies).
    NoRoute = 1,
    /// Ingress: unicast to an address that is not the device's.
    NotLocal = 2,
    /// Egress: multicast destination while `allowMulticast` is off and no route covers it.
    Multicast = 3,
    /// Egress: the source MAC is not the device's.
    SpoofedMac = 4,
    /// An EtherType the parser does not understand (or an 802.3 length field).
    UnknownEtherType = 5,
    /// More VLAN tags than the parser accepts (one).
    VlanStack = 6,
    /// A truncated or malformed Ethernet, VLAN, ARP, IPv4, IPv6 or ICMPv6 header.
    Malformed = 7,
    /// Egress: IPv4 options other than a lone Router Alert.
    IpOptions = 8,
    /// IPv6 extension headers the parser refuses: a routing header with segments
    /// left, hop-by-hop not first, or more headers than it walks.
    Ipv6ExtHeader = 9,
    /// Egress: ARP whose sender MAC or sender IP is not the device's.
    ArpSpoof = 10,
    /// Egress: neighbour discovery claiming an address or link-layer address that is
    /// not the device's (NA target, SLLA/TLLA options, unspecified source misuse).
    NdSpoof = 11,
    /// Egress: ICMPv6 control messages a host never sends (router advertisement,
    /// redirect, MLD query) or ND/MLD with the wrong hop limit.
    NdForbidden = 12,
}

/// Number of [`DropReason`] variants.
pub const DROP_REASONS: usize = 13;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::SpoofedSource,
        DropReason::NoRoute,
        DropReason::NotLocal,
        DropReason::Multicast,
        DropReason::SpoofedMac,
        DropReason::UnknownEtherType,
        DropReason::VlanStack,
        DropReason::Malformed,
        DropReason::IpOptions,
        DropReason::Ipv6ExtHeader,
        DropReason::ArpSpoof,
        DropReason::NdSpoof,
        DropReason::NdForbidden,
    ];

    /// The name used in status, metrics and `netclaim inspect`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoRoute => "no_route",
            DropReason::NotLocal => "not_local",
            DropReason::Multicast => "multicast",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::UnknownEtherType => "unknown_ethertype",
            DropReason::VlanStack => "vlan_stack",
            DropReason::Malformed => "malformed",
            DropReason::IpOptions => "ip_options",
            DropReason::Ipv6ExtHeader => "ipv6_ext_header",
            DropReason::ArpSpoof => "arp_spoof",
            DropReason::NdSpoof => "nd_spoof",
            DropReason::NdForbidden => "nd_forbidden",
        }
    }
}

/// Traffic counters of one device; one copy per CPU in [`MAP_COUNTERS`] (index 0),
/// summed by the driver.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: [u64; DROP_REASONS],
    /// The policy generation this CPU last logged (not a counter; kept here so the
    /// programs find it in the value they already hold).
    pub logged_generation: u64,
}

/// Policy flags of one slot ([`SlotConfig::flags`]).
pub mod flags {
    /// Egress destinations must match a prefix in the slot's route tries.
    pub const ENFORCE_ROUTES: u32 = 1 << 0;
    /// Egress sources must be one of the slot's local addresses.
    pub const ANTI_SPOOFING: u32 = 1 << 1;
    /// Ingress unicast must be addressed to one of the slot's local addresses.
    pub const INGRESS_FILTER: u32 = 1 << 2;
    /// Multicast egress destinations are allowed without a route covering them
    /// (sources are still checked). Off unless the claim sets `allowMulticast`.
    pub const ALLOW_MULTICAST: u32 = 1 << 3;
    /// The driver is the device's DHCPv4 client (`interface.dhcp`): egress lets the
    /// client's own broadcast requests through (UDP 68 to 255.255.255.255:67 from
    /// 0.0.0.0 or an own address, carrying the device's MAC as `chaddr`), and
    /// enforcement stays on while the device has no address yet.
    pub const DHCP_CLIENT: u32 = 1 << 4;
}

/// One slot's settings, in [`MAP_SLOTS`] at the slot's index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotConfig {
    /// Bitwise OR of [`flags`] constants; 0 means count only.
    pub flags: u32,
    /// Incremented by the driver on every policy change; logged by the programs.
    pub generation: u32,
    /// The device's own MAC address: the only source MAC (and ARP/ND link-layer
    /// address) egress lets through under [`flags::ANTI_SPOOFING`].
    pub mac: [u8; 6],
    /// How many of the slot's IPv4 / IPv6 own addresses are inline below; when a
    /// family has more than [`OWN_INLINE`], this is [`OWN_OVERFLOW`] and the programs
    /// look the address up in the slot's hash set instead.
    pub own4_len: u8,
    pub own6_len: u8,
    /// The first own addresses, inline: most claims have one or two per family, and a
    /// few compares cost less than a hash lookup on every packet.
    pub own4: [[u8; 4]; OWN_INLINE],
    pub own6: [[u8; 16]; OWN_INLINE],
}

/// Own addresses per family kept inline in [`SlotConfig`].
pub const OWN_INLINE: usize = 4;
/// [`SlotConfig::own4_len`] / `own6_len` when the inline array does not hold them all.
pub const OWN_OVERFLOW: u8 = 0xff;

/// Value of the route tries: which hit counter the prefix feeds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteValue {
    /// Index into [`MAP_ROUTE_HITS`].
    pub hit_index: u32,
}

/// How a device's programs are attached, written by the driver into [`MAP_META`]
/// (index 0) so that anyone holding the pins can tell without asking the driver.
/// The programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathMeta {
    /// Inode of the network namespace the interface was in when attached.
    pub netns_inode: u64,
    /// Interface index inside that namespace.
    pub ifindex: u32,
    /// One of the `EGRESS_*` constants in [`attach_mode`].
    pub egress_mode: u32,
    /// One of the `INGRESS_*` constants in [`attach_mode`].
    pub ingress_mode: u32,
    /// For clsact attachments: filter priority and handle, needed to detach.
    pub egress_priority: u32,
    pub egress_handle: u32,
    pub ingress_priority: u32,
    pub ingress_handle: u32,
    /// Bitwise OR of [`owned`] constants: what the driver created besides the
    /// attachments and must remove with them.
    pub owned: u32,
}

/// What a device's driver created on the interface ([`DatapathMeta::owned`]).
pub mod owned {
    /// The clsact qdisc did not exist before the clsact fallback added it.
    pub const CLSACT_QDISC: u32 = 1 << 0;
}

/// Attach modes recorded in [`DatapathMeta`].
pub mod attach_mode {
    pub const EGRESS_TCX: u32 = 1;
    pub const EGRESS_CLSACT: u32 = 2;
    pub const INGRESS_XDP_NATIVE: u32 = 1;
    pub const INGRESS_XDP_GENERIC: u32 = 2;
    pub const INGRESS_TCX: u32 = 3;
    pub const INGRESS_CLSACT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are `repr(C)` plain integers without padding.
    unsafe impl aya::Pod for super::DeviceCounters {}
    unsafe impl aya::Pod for super::SlotConfig {}
    unsafe impl aya::Pod for super::RouteValue {}
    unsafe impl aya::Pod for super::DatapathMeta {}
}
