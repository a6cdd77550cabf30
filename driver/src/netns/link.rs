//! rtnetlink reads and writes for one device: link facts, addresses and routes.
//!
//! Everything here works in the calling thread's namespace through an [`NlSocket`]
//! the caller opened there; nothing reads `/sys` (sysfs describes the namespace it was
//! mounted in, not the thread's). Reads return plain values ([`LinkFacts`],
//! [`RouteRecord`]); writes take exactly what they change. Owns no kernel objects.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
    link::{
        AfSpecInet, AfSpecInet6, AfSpecUnspec, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
        LinkMessage, LinkXdp,
    },
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    tc::{TcHandle, TcMessage},
    AddressFamily, RouteNetlinkMessage,
};
use serde::{Deserialize, Serialize};

use super::netlink::{NlError, NlSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use super::sysctl::IfSysctls;

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;
/// The local routing table (addresses of this host; the kernel manages it).
pub const RT_TABLE_LOCAL: u32 = 255;
/// Routes the kernel creates itself (prefix routes of addresses).
pub const RTPROT_KERNEL: u8 = 2;
/// Routes the driver creates.
pub const RTPROT_STATIC: u8 = 4;
/// Route scope `link` (directly connected).
pub const RT_SCOPE_LINK: u8 = 253;

/// What the kernel reports about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub ifindex: u32,
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub min_mtu: Option<u32>,
    pub max_mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub perm_mac: Option<[u8; 6]>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    /// Parent link (macvlan, vlan) when in the same namespace.
    pub link: Option<u32>,
    /// XDP program attached (any mode), by id.
    pub xdp_prog_id: Option<u32>,
    /// The per-interface sysctls, from the reply's `IFLA_AF_SPEC` (the same values
    /// `/proc/sys/net/ipv{4,6}/conf/<name>` shows, without four file reads); a family
    /// the device has no configuration for (IPv6 off at boot, an MTU below the
    /// family's minimum) leaves its entries `None`, as its files are absent then.
    pub sysctls: IfSysctls,
}

/// A route through one device, as the kernel reports it (and as we re-create it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Preferred source (`ip route ... src`).
    pub source: Option<IpAddr>,
    pub scope: u8,
    pub table: u32,
    pub priority: Option<u32>,
    pub protocol: u8,
    /// `RTN_*` type (1 = unicast).
    pub kind: u8,
}

/// One change to a link, sent as a single `RTM_SETLINK`.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub up: Option<bool>,
    /// Move to the namespace open at this fd (`IFLA_NET_NS_FD`).
    pub netns_fd: Option<RawFd>,
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
}

impl LinkChange {
    pub fn is_empty(&self) -> bool {
        self.up.is_none()
            && self.netns_fd.is_none()
            && self.name.is_none()
            && self.mtu.is_none()
            && self.mac.is_none()
            && self.gso_max_size.is_none()
            && self.gro_max_size.is_none()
            && self.gso_ipv4_max_size.is_none()
            && self.gro_ipv4_max_size.is_none()
    }
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

fn facts(msg: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        ifindex: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name = n.clone(),
            LinkAttribute::Mtu(m) => f.mtu = *m,
            LinkAttribute::MinMtu(m) => f.min_mtu = Some(*m),
            LinkAttribute::MaxMtu(m) => f.max_mtu = Some(*m),
            LinkAttribute::Address(a) => f.mac = mac6(a),
            LinkAttribute::PermAddress(a) => f.perm_mac = mac6(a).filter(|m| m != &[0; 6]),
            LinkAttribute::GsoMaxSize(v) => f.gso_max_size = Some(*v),
            LinkAttribute::GroMaxSize(v) => f.gro_max_size = Some(*v),
            LinkAttribute::GsoIpv4MaxSize(v) => f.gso_ipv4_max_size = Some(*v),
            LinkAttribute::GroIpv4MaxSize(v) => f.gro_ipv4_max_size = Some(*v),
            LinkAttribute::Link(l) => f.link = Some(*l),
            LinkAttribute::AfSpecUnspec(families) => f.sysctls = sysctls_of(families),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        f.kind = Some(k.to_string());
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => {
                for x in xdp {
                    if let netlink_packet_route::link::LinkXdp::ProgId(id) = x {
                        if *id != 0 {
                            f.xdp_prog_id = Some(*id);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    f
}

/// The per-interface sysctls in a link's `IFLA_AF_SPEC`: IPv4's from its devconf
/// array, IPv6 forwarding from IPv6's.
fn sysctls_of(families: &[AfSpecUnspec]) -> IfSysctls {
    let mut s = IfSysctls::default();
    for family in families {
        match family {
            AfSpecUnspec::Inet(specs) => {
                for spec in specs {
                    if let AfSpecInet::DevConf(c) = spec {
                        s.arp_ignore = u8::try_from(c.arp_ignore).ok();
                        s.arp_announce = u8::try_from(c.arp_announce).ok();
                        s.forwarding_v4 = Some(c.forwarding != 0);
                    }
                }
            }
            AfSpecUnspec::Inet6(specs) => {
                for spec in specs {
                    if let AfSpecInet6::DevConf(c) = spec {
                        s.forwarding_v6 = Some(c.forwarding != 0);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// A `RTM_GETLINK` that leaves the counters out (`RTEXT_FILTER_SKIP_STATS`): nothing
/// here reads them, and the kernel then neither sums them nor sends them.
fn get_link_message() -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    m
}

fn is_no_device(e: &NlError) -> bool {
    matches!(e.errno(), Some(libc::ENODEV))
}

/// The link called `name`, if any.
pub fn link_by_name(sock: &mut NlSocket, name: &str) -> Result<Option<LinkFacts>, NlError> {
    let mut m = get_link_message();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    get_link(sock, m)
}

/// The link with `ifindex`, if any.
pub fn link_by_index(sock: &mut NlSocket, ifindex: u32) -> Result<Option<LinkFacts>, NlError> {
    let mut m = get_link_message();
    m.header.index = ifindex;
    get_link(sock, m)
}

fn get_link(sock: &mut NlSocket, m: LinkMessage) -> Result<Option<LinkFacts>, NlError> {
    match sock.route_request(RouteNetlinkMessage::GetLink(m), 0) {
        Ok(replies) => Ok(replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(facts(l)),
            _ => None,
        })),
        Err(e) if is_no_device(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every link in the namespace.
pub fn links(sock: &mut NlSocket) -> Result<Vec<LinkFacts>, NlError> {
    let replies =
        sock.route_request(RouteNetlinkMessage::GetLink(get_link_message()), NLM_F_DUMP)?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(facts(l)),
            _ => None,
        })
        .collect())
}

/// Applies `change` to link `ifindex` in one `RTM_SETLINK`.
pub fn set_link(sock: &mut NlSocket, ifindex: u32, change: &LinkChange) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    if let Some(up) = change.up {
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
    }
    let attrs = &mut m.attributes;
    if let Some(fd) = change.netns_fd {
        attrs.push(LinkAttribute::NetNsFd(fd));
    }
    if let Some(n) = &change.name {
        attrs.push(LinkAttribute::IfName(n.clone()));
    }
    if let Some(v) = change.mtu {
        attrs.push(LinkAttribute::Mtu(v));
    }
    if let Some(mac) = change.mac {
        attrs.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(v) = change.gso_max_size {
        attrs.push(LinkAttribute::GsoMaxSize(v));
    }
    if let Some(v) = change.gro_max_size {
        attrs.push(LinkAttribute::GroMaxSize(v));
    }
    if let Some(v) = change.gso_ipv4_max_size {
        attrs.push(LinkAttribute::GsoIpv4MaxSize(v));
    }
    if let Some(v) = change.gro_ipv4_max_size {
        attrs.push(LinkAttribute::GroIpv4MaxSize(v));
    }
    sock.route_request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
    Ok(())
}

/// Removes a netlink-attached (not bpf_link) XDP program of link `ifindex` in the
/// mode given by `xdp_flags` (`XDP_FLAGS_SKB_MODE` 2, `XDP_FLAGS_DRV_MODE` 4).
pub fn detach_xdp(sock: &mut NlSocket, ifindex: u32, xdp_flags: u32) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(-1),
        LinkXdp::Flags(xdp_flags),
    ]));
    sock.route_request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
    Ok(())
}

/// The clsact qdisc's two filter parents (ingress, egress).
const CLSACT_PARENTS: [TcHandle; 2] = [
    TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    },
    TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_EGRESS,
    },
];

/// How many tc filters hang below link `ifindex`'s clsact qdisc (both directions).
pub fn clsact_filters(sock: &mut NlSocket, ifindex: u32) -> Result<usize, NlError> {
    let mut n = 0;
    for parent in CLSACT_PARENTS {
        let mut m = TcMessage::default();
        m.header.index = ifindex as i32;
        m.header.parent = parent;
        let replies = sock.route_request(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP)?;
        n += replies
            .iter()
            .filter(|r| matches!(r, RouteNetlinkMessage::NewTrafficFilter(_)))
            .count();
    }
    Ok(n)
}

/// Deletes link `ifindex`'s clsact qdisc (`tc qdisc del dev X clsact`).
pub fn delete_clsact(sock: &mut NlSocket, ifindex: u32) -> Result<(), NlError> {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.parent = TcHandle::CLSACT;
    sock.route_request(RouteNetlinkMessage::DelQueueDiscipline(m), NLM_F_ACK)?;
    Ok(())
}

/// An address on a link with its scope (`RT_SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRecord {
    pub net: IpNet,
    pub scope: u8,
}

/// Addresses on link `ifindex`, both families. On a strict socket
/// ([`NlSocket::set_strict`]) the kernel dumps that link's addresses only; otherwise it
/// ignores the filter and the whole namespace's list is filtered here.
pub fn addresses(sock: &mut NlSocket, ifindex: u32) -> Result<Vec<AddressRecord>, NlError> {
    let mut request = AddressMessage::default();
    request.header.index = ifindex;
    let replies = sock.route_request(RouteNetlinkMessage::GetAddress(request), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewAddress(a) = r else {
            continue;
        };
        if a.header.index != ifindex {
            continue;
        }
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                out.push(AddressRecord {
                    net,
                    scope: u8::from(a.header.scope),
                });
            }
        }
    }
    Ok(out)
}

/// Adds `net` to link `ifindex` (IPv6 without duplicate address detection, so the
/// address is usable at once, as a static assignment should be).
pub fn add_address(sock: &mut NlSocket, ifindex: u32, net: IpNet) -> Result<(), NlError> {
    let mut m = AddressMessage::default();
    m.header.index = ifindex;
    m.header.prefix_len = net.prefix_len();
    m.header.scope = AddressScope::Universe;
    match net.addr() {
        IpAddr::V4(v4) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(IpAddr::V4(v4)));
            m.attributes.push(AddressAttribute::Address(IpAddr::V4(v4)));
        }
        IpAddr::V6(v6) => {
            m.header.family = AddressFamily::Inet6;
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Address(IpAddr::V6(v6)));
        }
    }
    sock.route_request(
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )?;
    Ok(())
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Routes whose (single) next hop is link `ifindex`, in every table and family. On a
/// strict socket ([`NlSocket::set_strict`]) the kernel dumps only routes that use the
/// link (`RTA_OIF`); otherwise every route comes back and is filtered here.
pub fn routes(sock: &mut NlSocket, ifindex: u32) -> Result<Vec<RouteRecord>, NlError> {
    let mut request = RouteMessage::default();
    request.attributes.push(RouteAttribute::Oif(ifindex));
    let replies = sock.route_request(RouteNetlinkMessage::GetRoute(request), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewRoute(rt) = r else {
            continue;
        };
        let h = &rt.header;
        let v6 = match h.address_family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => continue,
        };
        let mut oif = None;
        let mut dst = None;
        let mut gateway = None;
        let mut source = None;
        let mut table = u32::from(h.table);
        let mut priority = None;
        for a in &rt.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Destination(d) => dst = route_ip(d),
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::PrefSource(s) => source = route_ip(s),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(p) => priority = Some(*p),
                _ => {}
            }
        }
        if oif != Some(ifindex) {
            continue;
        }
        let dst = dst.unwrap_or(if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        let Ok(destination) = IpNet::new(dst, h.destination_prefix_length) else {
            continue;
        };
        out.push(RouteRecord {
            destination,
            gateway,
            source,
            scope: u8::from(h.scope),
            table,
            priority,
            protocol: u8::from(h.protocol),
            kind: u8::from(h.kind),
        });
    }
    Ok(out)
}

/// Creates `route` through link `ifindex`.
pub fn add_route(sock: &mut NlSocket, ifindex: u32, route: &RouteRecord) -> Result<(), NlError> {
    let mut m = RouteMessage::default();
    let v6 = route.destination.addr().is_ipv6();
    m.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.destination_prefix_length = route.destination.prefix_len();
    m.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::from(route.protocol);
    m.header.scope = RouteScope::from(route.scope);
    m.header.kind = if route.kind == 0 {
        RouteType::Unicast
    } else {
        RouteType::from(route.kind)
    };
    let attrs = &mut m.attributes;
    attrs.push(RouteAttribute::Table(route.table));
    if route.destination.prefix_len() > 0 {
        attrs.push(RouteAttribute::Destination(RouteAddress::from(
            route.destination.network(),
        )));
    }
    if let Some(g) = route.gateway {
        attrs.push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(s) = route.source {
        attrs.push(RouteAttribute::PrefSource(RouteAddress::from(s)));
    }
    if let Some(p) = route.priority {
        attrs.push(RouteAttribute::Priority(p));
    }
    attrs.push(RouteAttribute::Oif(ifindex));
    sock.route_request(
        RouteNetlinkMessage::NewRoute(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )?;
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{Inet6DevConf, InetDevConf};

    use super::*;
    use crate::netns::sysctl;

    #[test]
    fn sysctls_come_from_each_family_devconf() {
        let mut v4 = InetDevConf::default();
        (v4.arp_ignore, v4.arp_announce, v4.forwarding) = (2, 1, 1);
        let mut v6 = Inet6DevConf::default();
        v6.forwarding = 0;
        let families = vec![
            AfSpecUnspec::Inet(vec![AfSpecInet::DevConf(v4)]),
            AfSpecUnspec::Inet6(vec![AfSpecInet6::DevConf(v6)]),
        ];
        assert_eq!(
            sysctls_of(&families),
            IfSysctls {
                arp_ignore: Some(2),
                arp_announce: Some(1),
                forwarding_v4: Some(true),
                forwarding_v6: Some(false),
            }
        );
        // No IPv6 configuration on the device: no IPv6 entry, as no file.
        let v4_only = &families[..1];
        assert_eq!(sysctls_of(v4_only).forwarding_v6, None);
        assert_eq!(sysctls_of(&[]), IfSysctls::default());
    }

    /// The values a link read carries are the ones `/proc/sys/net` shows, on this
    /// kernel, after they were changed from the defaults.
    #[test]
    fn a_link_read_carries_the_sysctls_proc_shows() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a new network namespace needs root");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let mut sock = NlSocket::route().expect("socket");
            let before = link_by_name(&mut sock, "lo").expect("read").expect("lo");
            assert_eq!(before.sysctls, sysctl::read("lo").expect("proc"));
            let changed = IfSysctls {
                arp_ignore: Some(2),
                arp_announce: Some(1),
                forwarding_v4: Some(true),
                forwarding_v6: Some(true),
            };
            assert_ne!(
                before.sysctls, changed,
                "the test needs values off the defaults"
            );
            sysctl::write("lo", &changed).expect("write");
            let after = link_by_name(&mut sock, "lo").expect("read").expect("lo");
            assert_eq!(after.sysctls, changed);
            assert_eq!(sysctl::read("lo").expect("proc"), changed);
            let by_index = link_by_index(&mut sock, after.ifindex)
                .expect("read")
                .expect("lo");
            assert_eq!(by_index.sysctls, changed);
            let listed = links(&mut sock).expect("dump");
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].sysctls, changed);
        })
        .join()
        .expect("the namespace thread");
    }
}
