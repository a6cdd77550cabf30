//! What netlink says about the links of the namespace the calling thread is in: one
//! [`NetlinkSnapshot`] per scan (links, global addresses, default-route interfaces,
//! tc `cls_bpf` programs). Read-only: this file sends dump requests and nothing else.
//!
//! Everything is read over netlink, never from `/sys/class/net`, because sysfs keeps
//! describing the namespace it was mounted in (see TOOLCHAIN.md).

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope},
    link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkLayerType, LinkXdp, State},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
    tc::{TcAttribute, TcFilterBpfOption, TcOption},
    AddressFamily,
};
use rtnetlink::Handle;

use super::InventoryError;

/// The facts netlink gives about one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub ifindex: u32,
    pub ifname: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Lowercased operstate, corrected by the flags (see [`link_state`]).
    pub state: Option<String>,
    /// `IFLA_INFO_KIND`.
    pub kind: Option<String>,
    /// `ifi_type` of the link header: the `ARPHRD_*` link-layer type (1 = Ethernet).
    pub link_layer_type: u16,
    /// `IFLA_IFALIAS` (set with `ip link set <dev> alias <text>`); `None` when unset.
    pub alias: Option<String>,
    pub loopback: bool,
    /// `IFLA_MASTER`: the bridge/bond/VRF this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK` when it names a link of this namespace (vlan/macvlan lower device,
    /// veth peer in the same namespace).
    pub lower: Option<u32>,
    /// `IFLA_PARENT_DEV_BUS_NAME` / `IFLA_PARENT_DEV_NAME` (e.g. `pci`, `0000:3b:00.0`).
    pub parent_bus: Option<String>,
    pub parent_dev: Option<String>,
    /// XDP program ids (any mode).
    pub xdp_prog_ids: BTreeSet<u32>,
    /// Global addresses as CIDRs, kernel order.
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    /// tc `cls_bpf` programs on the clsact hooks: id → name reported by tc.
    pub tc_progs: BTreeMap<u32, String>,
    /// Administratively up (`IFF_UP`) without carrier (`IFF_LOWER_UP`).
    pub carrier_lost: bool,
}

/// One namespace's links as netlink reports them.
#[derive(Clone, Debug, Default)]
pub struct NetlinkSnapshot {
    pub links: Vec<LinkFacts>,
    /// Interfaces carrying a default route in the main table (v4 or v6).
    pub default_route_ifindexes: BTreeSet<u32>,
    /// Default routes that name a nexthop object (`RTA_NH_ID`) we cannot resolve.
    pub unresolved_default_routes: usize,
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> InventoryError {
    move |source| InventoryError::Netlink { what, source }
}

/// Dumps links only (used by the program poll too).
pub async fn dump_links(handle: &Handle) -> Result<Vec<LinkFacts>, InventoryError> {
    let msgs: Vec<_> = handle
        .link()
        .get()
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute()
        .try_collect()
        .await
        .map_err(nl("link dump"))?;
    let mut links = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut f = LinkFacts {
            ifindex: m.header.index,
            link_layer_type: u16::from(m.header.link_layer_type),
            loopback: m.header.link_layer_type == LinkLayerType::Loopback
                || m.header.flags.contains(LinkFlags::Loopback),
            ..Default::default()
        };
        let mut link_netns = false;
        let mut link_attr = None;
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => f.ifname = n,
                LinkAttribute::Address(mac) if !mac.is_empty() => {
                    f.mac = Some(
                        mac.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    )
                }
                LinkAttribute::Mtu(mtu) => f.mtu = Some(mtu),
                LinkAttribute::IfAlias(a) if !a.is_empty() => f.alias = Some(a),
                LinkAttribute::OperState(s) => f.state = Some(operstate_name(s).to_string()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            f.kind = Some(k.to_string());
                        }
                    }
                }
                LinkAttribute::Controller(m) if m != 0 => f.master = Some(m),
                LinkAttribute::Link(l) if l != 0 => link_attr = Some(l),
                LinkAttribute::LinkNetNsId(_) => link_netns = true,
                LinkAttribute::ParentDevBusName(b) => f.parent_bus = Some(b),
                LinkAttribute::ParentDevName(d) => f.parent_dev = Some(d),
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        match x {
                            LinkXdp::ProgId(id)
                            | LinkXdp::DrvProgId(id)
                            | LinkXdp::SkbProgId(id)
                            | LinkXdp::HwProgId(id)
                                if id != 0 =>
                            {
                                f.xdp_prog_ids.insert(id);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let (admin_up, carrier) = (
            m.header.flags.contains(LinkFlags::Up),
            m.header.flags.contains(LinkFlags::LowerUp),
        );
        f.carrier_lost = admin_up && !carrier;
        f.state = Some(link_state(f.state.take(), admin_up, carrier));
        // IFLA_LINK with IFLA_LINK_NETNSID points into another namespace.
        if !link_netns && link_attr != Some(f.ifindex) {
            f.lower = link_attr;
        }
        links.push(f);
    }
    links.sort_by_key(|l| l.ifindex);
    Ok(links)
}

/// `IFLA_OPERSTATE` spelled as DraNet publishes it (the Go netlink library, like
/// `ip link`): `up`, `down`, `lower-layer-down`, `not-present`, `testing`, `dormant`,
/// and `unknown` for anything else.
pub fn operstate_name(state: State) -> &'static str {
    match state {
        State::Up => "up",
        State::Down => "down",
        State::LowerLayerDown => "lower-layer-down",
        State::NotPresent => "not-present",
        State::Testing => "testing",
        State::Dormant => "dormant",
        _ => "unknown",
    }
}

/// The `state` attribute: the operstate, except where the kernel has not caught up
/// yet. Admin state and carrier (`IFF_UP`, `IFF_LOWER_UP`) change synchronously, but
/// the operstate follows carrier through linkwatch, which may defer the update by up
/// to a second. So: not `IFF_UP` → `down`; carrier on while the operstate still says
/// `down`/`lower-layer-down` → `up`; carrier off while it still says `up` → `down`;
/// anything else (`unknown`, `dormant`, `testing`, …) as the kernel reports it.
pub fn link_state(operstate: Option<String>, admin_up: bool, carrier: bool) -> String {
    let op = operstate.unwrap_or_else(|| "unknown".into());
    if !admin_up {
        return "down".into();
    }
    match op.as_str() {
        "down" | "lower-layer-down" if carrier => "up".into(),
        "up" if !carrier => "down".into(),
        _ => op,
    }
}

/// Dumps links, addresses, default routes and tc filters.
pub async fn snapshot(handle: &Handle) -> Result<NetlinkSnapshot, InventoryError> {
    let mut links = dump_links(handle).await?;
    let index: BTreeMap<u32, usize> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.ifindex, i))
        .collect();

    let addrs: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("address dump"))?;
    for a in addrs {
        if a.header.scope != AddressScope::Universe
            || a.header.flags.contains(AddressHeaderFlags::Dadfailed)
        {
            continue;
        }
        let mut addr = None;
        let mut local = None;
        let mut failed = false;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Address(ip) => addr = Some(*ip),
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Flags(fl) => failed = fl.contains(AddressFlags::Dadfailed),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address on point-to-point links.
        let Some(ip) = local.or(addr) else { continue };
        if failed {
            continue;
        }
        let Some(&i) = index.get(&a.header.index) else {
            continue;
        };
        let cidr = format!("{ip}/{}", a.header.prefix_len);
        if ip.is_ipv4() {
            links[i].ipv4.push(cidr);
        } else {
            links[i].ipv6.push(cidr);
        }
    }

    let mut default_route_ifindexes = BTreeSet::new();
    let mut unresolved_default_routes = 0;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let routes: Vec<_> = handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(nl("route dump"))?;
        for r in routes {
            if r.header.destination_prefix_length != 0 || r.header.kind != RouteType::Unicast {
                continue;
            }
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let mut found = false;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => {
                        default_route_ifindexes.insert(*i);
                        found = true;
                    }
                    RouteAttribute::MultiPath(hops) => {
                        for h in hops {
                            default_route_ifindexes.insert(h.interface_index);
                            found = true;
                        }
                    }
                    _ => {}
                }
            }
            if !found {
                unresolved_default_routes += 1;
            }
        }
    }

    for l in &mut links {
        if l.loopback {
            continue;
        }
        l.tc_progs = tc_bpf_programs(handle, l.ifindex).await;
    }

    Ok(NetlinkSnapshot {
        links,
        default_route_ifindexes,
        unresolved_default_routes,
    })
}

/// `cls_bpf` filters on the clsact ingress and egress hooks of one link. A link
/// without clsact answers with an error or nothing; both mean "none".
async fn tc_bpf_programs(handle: &Handle, ifindex: u32) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let Ok(idx) = i32::try_from(ifindex) else {
        return out;
    };
    for ingress in [true, false] {
        let mut tf = handle.clone().traffic_filter(idx);
        let req = if ingress {
            tf.get().ingress()
        } else {
            tf.get().egress()
        };
        let Ok(msgs) = req.execute().try_collect::<Vec<_>>().await else {
            continue;
        };
        for m in msgs {
            for a in m.attributes {
                let TcAttribute::Options(opts) = a else {
                    continue;
                };
                let mut id = None;
                let mut name = String::new();
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(i),
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = n,
                        _ => {}
                    }
                }
                if let Some(id) = id {
                    out.insert(id, name);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{link_state, operstate_name, State};

    #[test]
    fn state_follows_flags_while_operstate_lags() {
        let st = |op: &str, up, carrier| link_state(Some(op.into()), up, carrier);
        assert_eq!(st("up", false, false), "down");
        assert_eq!(st("down", true, true), "up");
        assert_eq!(st("lower-layer-down", true, true), "up");
        assert_eq!(st("up", true, false), "down");
        assert_eq!(st("up", true, true), "up");
        assert_eq!(st("unknown", true, false), "unknown");
        assert_eq!(st("dormant", true, true), "dormant");
    }

    #[test]
    fn operstate_spelled_like_dranet() {
        assert_eq!(operstate_name(State::LowerLayerDown), "lower-layer-down");
        assert_eq!(operstate_name(State::NotPresent), "not-present");
        assert_eq!(operstate_name(State::Up), "up");
        assert_eq!(operstate_name(State::Other(9)), "unknown");
    }
}
