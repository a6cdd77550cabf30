//! The data path's verdict: frame bytes and a policy in, a verdict and its reason out.
//!
//! This is the one definition of what netclaim's programs let through. The eBPF
//! programs (`ebpf/`) call [`egress`] and [`ingress`] with a [`Frame`] backed by the
//! packet and a [`Policy`] backed by the device's maps; host tests call the same
//! functions with byte slices and plain sets, and fuzz them against an independent
//! oracle. Nothing here touches a map, a socket or the kernel, and nothing panics.
//!
//! The rule (README, "Enforcement"): with egress enforcement on, a frame leaves only if
//! the parser understands it completely, its source (MAC, IP, ARP sender, ND target and
//! link-layer options) is the device's own, and its destination is inside an allowed
//! prefix or one of the control-plane [`Exception`]s. Anything else is dropped with a
//! [`DropReason`] of its own. Ingress drops what the parser does not understand and
//! unicast IP that is not addressed to the device.
#![no_std]

use netclaim_common::flags;
pub use netclaim_common::DropReason;

/// Read access to one frame. Offsets count from the first byte of the Ethernet header.
pub trait Frame {
    /// The `N` bytes at `off`, or `None` when they are not all inside the frame.
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
    /// Length of the whole frame in bytes.
    fn len(&self) -> usize;
    /// Whether the frame has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// VLAN tags the kernel keeps outside the bytes (skb metadata): 0 or 1.
    fn offloaded_tags(&self) -> u32 {
        0
    }
}

/// What the policy of one device answers. Lookups take keys in network byte order.
pub trait Policy {
    /// Bitwise OR of [`netclaim_common::flags`].
    fn flags(&self) -> u32;
    /// The device's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Whether `a` is one of the device's IPv4 addresses.
    fn own_v4(&self, a: &[u8; 4]) -> bool;
    /// Whether `a` is one of the device's IPv6 addresses (its link-local ones included).
    fn own_v6(&self, a: &[u8; 16]) -> bool;
    /// The hit-counter index of the longest allowed prefix covering `a`.
    fn route_v4(&self, a: &[u8; 4]) -> Option<u32>;
    /// The hit-counter index of the longest allowed prefix covering `a`.
    fn route_v6(&self, a: &[u8; 16]) -> Option<u32>;
}

/// The control-plane traffic that passes without an allowed prefix, each as narrow as
/// the protocol allows (README lists the exact conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// Well-formed Ethernet/IPv4 ARP from the device's MAC and address (or an RFC 5227
    /// probe from 0.0.0.0) asking for or announcing an allowed or own address.
    Arp,
    /// RS, NS or NA with hop limit 255 to a link-local unicast or solicited-node /
    /// all-nodes / all-routers group, carrying only the device's own addresses.
    NeighbourDiscovery,
    /// MLD listener report or done with hop limit 1 to a link-local scope group.
    Mld,
    /// A multicast destination with `allowMulticast` on.
    Multicast,
    /// The device's own DHCPv4 client request, broadcast (only when the policy has
    /// [`flags::DHCP_CLIENT`]): see [`dhcp_request`].
    Dhcp,
}

/// Why a frame passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The direction enforces nothing (every knob of it is off).
    Unenforced,
    /// The source checks held and route enforcement is off.
    Unrouted,
    /// The destination is inside the allowed prefix with this hit-counter index.
    Route(u32),
    /// A listed control-plane exception.
    Exception(Exception),
    /// Ingress: addressed to the device.
    Local,
    /// Ingress: a broadcast or multicast frame or packet.
    Group,
}

/// The decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(Pass),
    Drop(DropReason),
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ_OLD: u16 = 0x9100;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_UDP: u8 = 17;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
/// BOOTP's fixed part (236 bytes) and the DHCP magic cookie (RFC 2131 3).
const DHCP_MIN_LEN: usize = 240;
const DHCP_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// IPv6 extension headers walked before the upper-layer header.
const MAX_EXT_HEADERS: usize = 4;
/// ND options inspected for link-layer addresses.
const MAX_ND_OPTIONS: usize = 4;
/// The only IPv4 option egress accepts: Router Alert (RFC 2113), as IGMP sends it.
const ROUTER_ALERT_V4: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

type Step<T> = Result<T, DropReason>;

#[inline(always)]
fn need<const N: usize, F: Frame + ?Sized>(f: &F, off: usize) -> Step<[u8; N]> {
    f.load::<N>(off).ok_or(DropReason::Malformed)
}

/// Like [`need`], and the bytes must also end by `end` (a packet's payload end).
#[inline(always)]
fn need_within<const N: usize, F: Frame + ?Sized>(f: &F, off: usize, end: usize) -> Step<[u8; N]> {
    if off + N > end {
        return Err(DropReason::Malformed);
    }
    need::<N, F>(f, off)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The layer-2 result: EtherType of the payload and where it starts.
#[inline(always)]
fn parse_l2<F: Frame + ?Sized>(f: &F) -> Step<(u16, usize)> {
    let mut tags = f.offloaded_tags();
    let mut off = 12;
    let mut proto = be16(need::<2, F>(f, off)?);
    // One tag is parsed; a second one (QinQ, or a tag behind an offloaded one) is a
    // stack the parser refuses.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD || proto == ETH_P_QINQ_OLD {
        tags += 1;
        off += 4;
        proto = be16(need::<2, F>(f, off)?);
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD || proto == ETH_P_QINQ_OLD {
            return Err(DropReason::VlanStack);
        }
    }
    if tags > 1 {
        return Err(DropReason::VlanStack);
    }
    Ok((proto, off + 2))
}

// The parsed headers are written into zero-initialised structs the caller owns: a
// struct returned inside a `Result` leaves fields a path does not use undefined, and
// the BPF backend may then store a register it never set, which the verifier refuses.

/// A parsed IPv4 header.
#[derive(Default)]
struct Ipv4 {
    src: [u8; 4],
    dst: [u8; 4],
    /// Header length in bytes.
    ihl: usize,
    /// Total length in bytes (header and payload).
    total: usize,
    /// The upper-layer protocol.
    proto: u8,
    /// Flags and fragment offset (the MF bit and the offset: 0x3fff).
    frag: u16,
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(f: &F, off: usize, ip: &mut Ipv4) -> Step<()> {
    let h = need::<20, F>(f, off)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(be16([h[2], h[3]]));
    if ihl < 20 || total < ihl || off + total > f.len() {
        return Err(DropReason::Malformed);
    }
    ip.src = [h[12], h[13], h[14], h[15]];
    ip.dst = [h[16], h[17], h[18], h[19]];
    ip.ihl = ihl;
    ip.total = total;
    ip.proto = h[9];
    ip.frag = be16([h[6], h[7]]);
    Ok(())
}

/// A parsed IPv6 header with its extension headers walked.
#[derive(Default)]
struct Ipv6 {
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    /// The upper-layer protocol, and its offset in `upper_at`; meaningful only when
    /// `later_fragment` is false (a non-first fragment carries no upper-layer header).
    upper: u8,
    upper_at: usize,
    later_fragment: bool,
    /// Whether a fragment header was present (first fragment or not).
    fragmented: bool,
    /// Offset just past the packet's payload (Ethernet padding excluded).
    end: usize,
}

impl Ipv6 {
    /// The ICMPv6 message's offset, for a complete (unfragmented) ICMPv6 packet.
    #[inline(always)]
    fn icmp_at(&self) -> Option<usize> {
        (self.upper == IPPROTO_ICMPV6 && !self.fragmented && !self.later_fragment)
            .then_some(self.upper_at)
    }
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(f: &F, off: usize, ip: &mut Ipv6) -> Step<()> {
    let h = need::<8, F>(f, off)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let payload = usize::from(be16([h[4], h[5]]));
    let end = off + 40 + payload;
    // A zero payload length announces a jumbogram, which no Ethernet frame carries.
    if payload == 0 || end > f.len() {
        return Err(DropReason::Malformed);
    }
    ip.src = need::<16, F>(f, off + 8)?;
    ip.dst = need::<16, F>(f, off + 24)?;
    ip.hop_limit = h[7];
    ip.end = end;
    let mut next = h[6];
    let mut at = off + 40;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING => {
                if next == IPPROTO_HOPOPTS && i != 0 {
                    // RFC 8200 4.1: hop-by-hop options only directly after the header.
                    return Err(DropReason::Ipv6ExtHeader);
                }
                let e = need::<4, F>(f, at)?;
                if next == IPPROTO_ROUTING && e[3] != 0 {
                    // Segments left: the packet's real destination is not `dst`.
                    return Err(DropReason::Ipv6ExtHeader);
                }
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                // RFC 4302: length in 4-octet units, minus 2.
                let e = need::<2, F>(f, at)?;
                if e[1] == 0 {
                    return Err(DropReason::Malformed);
                }
                next = e[0];
                at += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                if ip.fragmented {
                    return Err(DropReason::Ipv6ExtHeader);
                }
                let e = need::<4, F>(f, at)?;
                ip.fragmented = true;
                next = e[0];
                // RFC 8200 4.1: only AH, ESP, destination options or the upper layer
                // follow a fragment header.
                if matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT) {
                    return Err(DropReason::Ipv6ExtHeader);
                }
                at += 8;
                if at > end {
                    return Err(DropReason::Malformed);
                }
                if be16([e[2], e[3]]) & 0xfff8 != 0 {
                    // A later fragment: what follows is data, not headers.
                    ip.later_fragment = true;
                    ip.upper = next;
                    ip.upper_at = at;
                    return Ok(());
                }
            }
            _ => break,
        }
        if at > end {
            return Err(DropReason::Malformed);
        }
        i += 1;
    }
    if matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH
    ) {
        return Err(DropReason::Ipv6ExtHeader);
    }
    ip.upper = next;
    ip.upper_at = at;
    Ok(())
}

#[inline(always)]
fn is_multicast_v4(a: &[u8; 4]) -> bool {
    a[0] & 0xf0 == 0xe0
}

#[inline(always)]
fn is_link_local_unicast_v6(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_unspecified_v6(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// ff02::1 (all nodes), ff02::2 (all routers), ff02::16 (MLDv2 routers) and the
/// solicited-node groups ff02::1:ffXX:XXXX: the link-local groups ND and MLD use.
#[inline(always)]
fn is_nd_group_v6(a: &[u8; 16]) -> bool {
    if a[0] != 0xff || a[1] != 0x02 {
        return false;
    }
    let mut i = 2;
    while i < 11 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    let solicited = a[11] == 0x01 && a[12] == 0xff;
    let fixed = a[11] == 0 && a[12] == 0 && a[13] == 0 && a[14] == 0;
    solicited || fixed && (a[15] == 1 || a[15] == 2 || a[15] == 0x16)
}

/// The destination check of egress: an allowed prefix, or multicast with the knob.
#[inline(always)]
fn route_or_drop(flags: u32, route: Option<u32>, multicast: bool) -> Verdict {
    if flags & flags::ENFORCE_ROUTES == 0 {
        return Verdict::Pass(Pass::Unrouted);
    }
    match route {
        Some(i) => Verdict::Pass(Pass::Route(i)),
        None if multicast && flags & flags::ALLOW_MULTICAST != 0 => {
            Verdict::Pass(Pass::Exception(Exception::Multicast))
        }
        None if multicast => Verdict::Drop(DropReason::Multicast),
        None => Verdict::Drop(DropReason::NoRoute),
    }
}

#[inline(always)]
fn verdict(step: Step<Verdict>) -> Verdict {
    match step {
        Ok(v) => v,
        Err(reason) => Verdict::Drop(reason),
    }
}

/// The egress decision for a frame the pod sends.
#[inline(always)]
pub fn egress<F: Frame + ?Sized, P: Policy>(f: &F, p: &P) -> Verdict {
    verdict(egress_step(f, p))
}

#[inline(always)]
fn egress_step<F: Frame + ?Sized, P: Policy>(f: &F, p: &P) -> Step<Verdict> {
    let fl = p.flags();
    if fl & (flags::ENFORCE_ROUTES | flags::ANTI_SPOOFING) == 0 {
        return Ok(Verdict::Pass(Pass::Unenforced));
    }
    let spoof = fl & flags::ANTI_SPOOFING != 0;
    let eth = need::<ETH_HLEN, F>(f, 0)?;
    let mac = p.mac();
    if spoof && eth[6..12] != mac {
        return Err(DropReason::SpoofedMac);
    }
    let (proto, off) = parse_l2(f)?;
    match proto {
        ETH_P_IP => egress_ipv4(f, p, off),
        ETH_P_IPV6 => egress_ipv6(f, p, off),
        ETH_P_ARP => egress_arp(f, p, off),
        _ => Err(DropReason::UnknownEtherType),
    }
}

#[inline(always)]
fn egress_ipv4<F: Frame + ?Sized, P: Policy>(f: &F, p: &P, off: usize) -> Step<Verdict> {
    let fl = p.flags();
    let mut ip = Ipv4::default();
    parse_ipv4(f, off, &mut ip)?;
    if ip.ihl != 20 {
        // Options can steer a packet (source routes) or hide state the policy does not
        // see; the one IGMP needs is accepted alone.
        if ip.ihl != 24 || need::<4, F>(f, off + 20)? != ROUTER_ALERT_V4 {
            return Err(DropReason::IpOptions);
        }
    }
    if fl & flags::DHCP_CLIENT != 0 && dhcp_request(f, p, off, &ip)? {
        return Ok(Verdict::Pass(Pass::Exception(Exception::Dhcp)));
    }
    if fl & flags::ANTI_SPOOFING != 0 && !p.own_v4(&ip.src) {
        return Err(DropReason::SpoofedSource);
    }
    let route = if fl & flags::ENFORCE_ROUTES != 0 {
        p.route_v4(&ip.dst)
    } else {
        None
    };
    Ok(route_or_drop(fl, route, is_multicast_v4(&ip.dst)))
}

/// Whether an IPv4 packet (header parsed into `ip`, no options) is the device's own
/// DHCP client broadcast, which passes without a source address or a route:
///
/// * shape: UDP from port 68 to port 67, to 255.255.255.255, from 0.0.0.0 (no lease
///   yet: DISCOVER, REQUEST, DECLINE) or from an own address (REBIND), unfragmented;
///   anything else is `Ok(false)` and judged as ordinary traffic — unicast renewals
///   and releases from the leased address to the server go through the route check;
/// * content, once the shape matches: a BOOTREQUEST (op 1) for Ethernet (htype 1,
///   hlen 6) with the magic cookie, all inside the UDP datagram and the IP packet
///   (`malformed`); `chaddr` the device's MAC (`spoofed_mac`); `ciaddr` the packet's
///   source and `giaddr` 0, since a client relays nothing (`spoofed_source`).
#[inline(always)]
fn dhcp_request<F: Frame + ?Sized, P: Policy>(f: &F, p: &P, off: usize, ip: &Ipv4) -> Step<bool> {
    if ip.proto != IPPROTO_UDP || ip.ihl != 20 || ip.frag & 0x3fff != 0 {
        return Ok(false);
    }
    let from_none = ip.src == [0; 4];
    if ip.dst != [255; 4] || !(from_none || p.own_v4(&ip.src)) {
        return Ok(false);
    }
    let end = off + ip.total;
    let udp = need_within::<8, F>(f, off + 20, end)?;
    if be16([udp[0], udp[1]]) != DHCP_CLIENT_PORT || be16([udp[2], udp[3]]) != DHCP_SERVER_PORT {
        return Ok(false);
    }
    let udp_len = usize::from(be16([udp[4], udp[5]]));
    if udp_len < 8 + DHCP_MIN_LEN || off + 20 + udp_len > end {
        return Err(DropReason::Malformed);
    }
    let at = off + 28;
    let b = need::<34, F>(f, at)?;
    if b[0] != 1 || b[1] != 1 || b[2] != 6 || need::<4, F>(f, at + 236)? != DHCP_COOKIE {
        return Err(DropReason::Malformed);
    }
    if b[28..34] != p.mac() {
        return Err(DropReason::SpoofedMac);
    }
    if b[12..16] != ip.src || b[24..28] != [0; 4] {
        return Err(DropReason::SpoofedSource);
    }
    Ok(true)
}

#[inline(always)]
fn egress_arp<F: Frame + ?Sized, P: Policy>(f: &F, p: &P, off: usize) -> Step<Verdict> {
    let fl = p.flags();
    let a = need::<28, F>(f, off)?;
    // Ethernet hardware, IPv4 protocol, 6/4 address lengths, request or reply.
    let op = be16([a[6], a[7]]);
    if a[0..6] != [0, 1, 0x08, 0x00, 6, 4] || !(op == 1 || op == 2) {
        return Err(DropReason::Malformed);
    }
    let spa = [a[14], a[15], a[16], a[17]];
    let tpa = [a[24], a[25], a[26], a[27]];
    if fl & flags::ANTI_SPOOFING != 0 {
        if a[8..14] != p.mac() {
            return Err(DropReason::ArpSpoof);
        }
        // An RFC 5227 probe asks from 0.0.0.0; everything else speaks for an own address.
        let probe = op == 1 && spa == [0, 0, 0, 0];
        if !probe && !p.own_v4(&spa) {
            return Err(DropReason::ArpSpoof);
        }
    }
    if fl & flags::ENFORCE_ROUTES != 0 && !p.own_v4(&tpa) && p.route_v4(&tpa).is_none() {
        return Err(DropReason::NoRoute);
    }
    Ok(Verdict::Pass(Pass::Exception(Exception::Arp)))
}

#[inline(always)]
fn egress_ipv6<F: Frame + ?Sized, P: Policy>(f: &F, p: &P, off: usize) -> Step<Verdict> {
    let fl = p.flags();
    let spoof = fl & flags::ANTI_SPOOFING != 0;
    let mut ip = Ipv6::default();
    parse_ipv6(f, off, &mut ip)?;
    let unspecified = is_unspecified_v6(&ip.src);
    let own_src = p.own_v6(&ip.src);
    // ICMPv6 control messages, judged on their own terms (never inside fragments).
    if let Some(at) = ip.icmp_at() {
        // The message must lie inside the IPv6 payload, not in what trails it.
        let icmp = need_within::<4, F>(f, at, ip.end)?;
        match icmp[0] {
            // RS, NS, NA.
            133 | 135 | 136 => {
                if ip.hop_limit != 255 {
                    return Err(DropReason::NdForbidden);
                }
                if spoof {
                    nd_sources_are_own(f, p, icmp[0], at, &ip, unspecified)?;
                    if !own_src && !unspecified {
                        return Err(DropReason::SpoofedSource);
                    }
                }
                if is_link_local_unicast_v6(&ip.dst) || is_nd_group_v6(&ip.dst) {
                    return Ok(Verdict::Pass(Pass::Exception(
                        Exception::NeighbourDiscovery,
                    )));
                }
                if unspecified {
                    return Err(DropReason::NdSpoof);
                }
                // Unicast ND to a global neighbour is ordinary traffic.
            }
            // MLDv1 report and done, MLDv2 report.
            131 | 132 | 143 => {
                if ip.hop_limit != 1 {
                    return Err(DropReason::NdForbidden);
                }
                if spoof && !own_src && !unspecified {
                    return Err(DropReason::SpoofedSource);
                }
                if is_nd_group_v6(&ip.dst) || ip.dst[0] == 0xff && ip.dst[1] == 0x02 {
                    return Ok(Verdict::Pass(Pass::Exception(Exception::Mld)));
                }
                if unspecified {
                    return Err(DropReason::NdSpoof);
                }
            }
            // Router advertisement, redirect, MLD query: a host never sends them.
            130 | 134 | 137 => return Err(DropReason::NdForbidden),
            _ => {}
        }
    }
    if spoof && !own_src {
        return Err(DropReason::SpoofedSource);
    }
    let route = if fl & flags::ENFORCE_ROUTES != 0 {
        p.route_v6(&ip.dst)
    } else {
        None
    };
    Ok(route_or_drop(fl, route, ip.dst[0] == 0xff))
}

/// The addresses an RS/NS/NA speaks for: an NA's target and every source or target
/// link-layer address option must be the device's own; a DAD probe (unspecified
/// source) must go to a solicited-node group and carry no link-layer address.
#[inline(always)]
fn nd_sources_are_own<F: Frame + ?Sized, P: Policy>(
    f: &F,
    p: &P,
    kind: u8,
    at: usize,
    ip: &Ipv6,
    unspecified: bool,
) -> Step<()> {
    let dst = &ip.dst;
    // Fixed part: RS 8 bytes; NS and NA 24 (8 + target address).
    let mut opt = if kind == 133 { at + 8 } else { at + 24 };
    if opt > ip.end {
        return Err(DropReason::Malformed);
    }
    if kind == 136 {
        let target = need::<16, F>(f, at + 8)?;
        if unspecified || !p.own_v6(&target) {
            return Err(DropReason::NdSpoof);
        }
    }
    if kind == 135 {
        need::<16, F>(f, at + 8)?;
        if unspecified && !(dst[0] == 0xff && dst[11] == 0x01 && dst[12] == 0xff) {
            return Err(DropReason::NdSpoof);
        }
    }
    let mac = p.mac();
    let mut i = 0;
    while i < MAX_ND_OPTIONS {
        if opt >= ip.end {
            return Ok(());
        }
        let o = need_within::<2, F>(f, opt, ip.end)?;
        if o[1] == 0 {
            return Err(DropReason::Malformed);
        }
        if o[0] == 1 || o[0] == 2 {
            let lladdr = need_within::<8, F>(f, opt, ip.end)?;
            if unspecified || lladdr[2..8] != mac {
                return Err(DropReason::NdSpoof);
            }
        }
        opt += usize::from(o[1]) * 8;
        i += 1;
    }
    if opt < ip.end {
        // More options than inspected: one of them could name another address.
        return Err(DropReason::NdSpoof);
    }
    Ok(())
}

/// The ingress decision for a frame arriving for the pod.
#[inline(always)]
pub fn ingress<F: Frame + ?Sized, P: Policy>(f: &F, p: &P) -> Verdict {
    verdict(ingress_step(f, p))
}

#[inline(always)]
fn ingress_step<F: Frame + ?Sized, P: Policy>(f: &F, p: &P) -> Step<Verdict> {
    if p.flags() & flags::INGRESS_FILTER == 0 {
        return Ok(Verdict::Pass(Pass::Unenforced));
    }
    let eth = need::<ETH_HLEN, F>(f, 0)?;
    let group_mac = eth[0] & 1 == 1;
    let (proto, off) = parse_l2(f)?;
    match proto {
        ETH_P_ARP => {
            let a = need::<28, F>(f, off)?;
            let op = be16([a[6], a[7]]);
            if a[0..6] != [0, 1, 0x08, 0x00, 6, 4] || !(op == 1 || op == 2) {
                return Err(DropReason::Malformed);
            }
            Ok(Verdict::Pass(Pass::Exception(Exception::Arp)))
        }
        ETH_P_IP => {
            let mut ip = Ipv4::default();
            parse_ipv4(f, off, &mut ip)?;
            if p.own_v4(&ip.dst) {
                Ok(Verdict::Pass(Pass::Local))
            } else if group_mac || is_multicast_v4(&ip.dst) || ip.dst == [255; 4] {
                Ok(Verdict::Pass(Pass::Group))
            } else {
                Err(DropReason::NotLocal)
            }
        }
        ETH_P_IPV6 => {
            let mut ip = Ipv6::default();
            parse_ipv6(f, off, &mut ip)?;
            if p.own_v6(&ip.dst) {
                Ok(Verdict::Pass(Pass::Local))
            } else if group_mac || ip.dst[0] == 0xff {
                Ok(Verdict::Pass(Pass::Group))
            } else {
                Err(DropReason::NotLocal)
            }
        }
        _ => Err(DropReason::UnknownEtherType),
    }
}

/// A [`Frame`] over a byte slice, for host-side callers.
impl Frame for [u8] {
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        self.get(off..end)?.try_into().ok()
    }

    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}
