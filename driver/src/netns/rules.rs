//! Policy routing rules (`ip rule`) and permanent neighbour entries (`ip neigh`) over
//! rtnetlink, in the calling thread's namespace.
//!
//! Rules belong to the namespace, not to a device: netclaim records the ones it
//! created ([`RuleSpec`], checkpointed with the device's host originals) and removes
//! exactly those when the device leaves the pod. A rule that already existed is not
//! recorded, so it is never removed by netclaim. Neighbour entries belong to the
//! device: the kernel flushes them when the device leaves the namespace, so they need
//! no record. Owns no kernel objects beyond what a caller asks for.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteProtocol, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
    AddressFamily, RouteNetlinkMessage,
};
use serde::{Deserialize, Serialize};

use super::netlink::{NlError, NlSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};

/// `NLM_F_REPLACE`.
const NLM_F_REPLACE: u16 = 0x100;
/// `RTPROT_STATIC`: how netclaim's rules show in `ip rule` (`proto static`).
const RULE_PROTOCOL: u8 = 4;

/// One rule in one family: traffic matching the selectors looks up `table`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub v6: bool,
    pub priority: u32,
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    pub table: u32,
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn message(rule: &RuleSpec) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family(rule.v6);
    m.header.action = RuleAction::ToTable;
    m.header.table = u8::try_from(rule.table).unwrap_or(0);
    m.attributes.push(RuleAttribute::Table(rule.table));
    m.attributes.push(RuleAttribute::Priority(rule.priority));
    if let Some(s) = rule.source {
        m.header.src_len = s.prefix_len();
        m.attributes.push(RuleAttribute::Source(s.network()));
    }
    if let Some(d) = rule.destination {
        m.header.dst_len = d.prefix_len();
        m.attributes.push(RuleAttribute::Destination(d.network()));
    }
    m
}

/// Adds `rule`; `Ok(false)` when an identical rule already exists (it stays someone
/// else's).
pub fn add_rule(sock: &mut NlSocket, rule: &RuleSpec) -> Result<bool, NlError> {
    let mut m = message(rule);
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(RULE_PROTOCOL)));
    match sock.route_request(
        RouteNetlinkMessage::NewRule(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `rule`; one that is already gone is fine.
pub fn delete_rule(sock: &mut NlSocket, rule: &RuleSpec) -> Result<(), NlError> {
    match sock.route_request(RouteNetlinkMessage::DelRule(message(rule)), NLM_F_ACK) {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every `lookup` rule of the namespace, both families (the kernel's own included).
pub fn rules(sock: &mut NlSocket) -> Result<Vec<RuleSpec>, NlError> {
    let replies = sock.route_request(
        RouteNetlinkMessage::GetRule(RuleMessage::default()),
        NLM_F_DUMP,
    )?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewRule(m) = r else {
            continue;
        };
        if m.header.action != RuleAction::ToTable {
            continue;
        }
        let v6 = match m.header.family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => continue,
        };
        let mut spec = RuleSpec {
            v6,
            priority: 0,
            source: None,
            destination: None,
            table: u32::from(m.header.table),
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => spec.priority = *p,
                RuleAttribute::Table(t) => spec.table = *t,
                RuleAttribute::Source(ip) => {
                    spec.source = IpNet::new(*ip, m.header.src_len).ok();
                }
                RuleAttribute::Destination(ip) => {
                    spec.destination = IpNet::new(*ip, m.header.dst_len).ok();
                }
                _ => {}
            }
        }
        out.push(spec);
    }
    Ok(out)
}

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourRecord {
    pub destination: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

/// Adds (or replaces) a permanent entry `destination` → `mac` on link `ifindex`.
pub fn add_permanent_neighbour(
    sock: &mut NlSocket,
    ifindex: u32,
    destination: IpAddr,
    mac: [u8; 6],
) -> Result<(), NlError> {
    let mut m = NeighbourMessage::default();
    m.header.family = family(destination.is_ipv6());
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(NeighbourAttribute::Destination(match destination {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    sock.route_request(
        RouteNetlinkMessage::NewNeighbour(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    Ok(())
}

/// Neighbour entries on link `ifindex`, both families.
pub fn neighbours(sock: &mut NlSocket, ifindex: u32) -> Result<Vec<NeighbourRecord>, NlError> {
    let replies = sock.route_request(
        RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        NLM_F_DUMP,
    )?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewNeighbour(m) = r else {
            continue;
        };
        if m.header.ifindex != ifindex {
            continue;
        }
        let mut destination = None;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    destination = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    destination = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(l) => mac = l.as_slice().try_into().ok(),
                _ => {}
            }
        }
        if let Some(destination) = destination {
            out.push(NeighbourRecord {
                destination,
                mac,
                permanent: m.header.state == NeighbourState::Permanent,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_message_carries_family_selectors_and_table() {
        let m = message(&RuleSpec {
            v6: true,
            priority: 100,
            source: Some("2001:db8::/64".parse().unwrap()),
            destination: None,
            table: 1000,
        });
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert_eq!(m.header.src_len, 64);
        assert_eq!(m.header.dst_len, 0);
        assert_eq!(
            m.header.table, 0,
            "tables above 255 travel only as FRA_TABLE"
        );
        assert!(m.attributes.contains(&RuleAttribute::Table(1000)));
        assert!(m.attributes.contains(&RuleAttribute::Priority(100)));
    }
}
