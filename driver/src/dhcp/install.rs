//! Putting a lease on the interface inside the pod and taking it off again.
//!
//! [`install`] adds the leased address and the lease's routes (protocol `dhcp`, so
//! `ip route` shows where they came from) through an [`NlSocket`] opened in the pod's
//! namespace, and returns [`Installed`]: exactly what it added, which is all that
//! [`remove`] takes away. A failure half-way removes what was already added, so the
//! interface is left as it was before the call. Runs on a namespace thread.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use serde::{Deserialize, Serialize};

use super::lease::InstallPlan;
use crate::netns::{
    link::{self, RouteRecord, RT_SCOPE_LINK, RT_TABLE_MAIN},
    netlink::{NlError, NlSocket, NLM_F_ACK},
};

/// `RTPROT_DHCP`: routes installed by a DHCP client.
pub const RTPROT_DHCP: u8 = 16;

/// What [`install`] added to one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub ifindex: u32,
    pub address: Ipv4Net,
    pub routes: Vec<RouteRecord>,
}

/// Which part of a lease the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("address {address}: {source}")]
    Address {
        address: Ipv4Net,
        #[source]
        source: NlError,
    },
    #[error("route {destination} via {}: {source}", gateway.map_or("on-link".to_string(), |g| g.to_string()))]
    Route {
        destination: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        #[source]
        source: NlError,
    },
}

/// The route records a plan asks for (pure).
pub fn route_records(plan: &InstallPlan) -> Vec<RouteRecord> {
    plan.routes
        .iter()
        .map(|r| RouteRecord {
            destination: IpNet::V4(r.destination),
            gateway: r.gateway.map(IpAddr::V4),
            source: Some(IpAddr::V4(plan.address.addr())),
            scope: if r.gateway.is_some() {
                0
            } else {
                RT_SCOPE_LINK
            },
            table: RT_TABLE_MAIN,
            priority: None,
            protocol: RTPROT_DHCP,
            kind: 1,
        })
        .collect()
}

/// Adds the plan's address and routes to `ifindex`.
pub fn install(
    sock: &mut NlSocket,
    ifindex: u32,
    plan: &InstallPlan,
) -> Result<Installed, InstallError> {
    link::add_address(sock, ifindex, IpNet::V4(plan.address)).map_err(|source| {
        InstallError::Address {
            address: plan.address,
            source,
        }
    })?;
    let mut done = Installed {
        ifindex,
        address: plan.address,
        routes: Vec::new(),
    };
    for (record, r) in route_records(plan).into_iter().zip(&plan.routes) {
        if let Err(source) = link::add_route(sock, ifindex, &record) {
            let _ = remove(sock, &done);
            return Err(InstallError::Route {
                destination: r.destination,
                gateway: r.gateway,
                source,
            });
        }
        done.routes.push(record);
    }
    Ok(done)
}

/// Whether a delete failed only because the object is already gone.
fn gone(e: &NlError) -> bool {
    matches!(
        e.errno(),
        Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)
    )
}

/// Removes what [`install`] added (routes first, then the address). Objects that are
/// already gone are not an error.
pub fn remove(sock: &mut NlSocket, installed: &Installed) -> Result<(), InstallError> {
    let mut first_error = None;
    for r in installed.routes.iter().rev() {
        if let Err(source) = del_route(sock, installed.ifindex, r) {
            if !gone(&source) && first_error.is_none() {
                let destination = match r.destination {
                    IpNet::V4(n) => n,
                    IpNet::V6(_) => Ipv4Net::default(),
                };
                let gateway = match r.gateway {
                    Some(IpAddr::V4(g)) => Some(g),
                    _ => None,
                };
                first_error = Some(InstallError::Route {
                    destination,
                    gateway,
                    source,
                });
            }
        }
    }
    if let Err(source) = del_address(sock, installed.ifindex, installed.address) {
        if !gone(&source) && first_error.is_none() {
            first_error = Some(InstallError::Address {
                address: installed.address,
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn del_address(sock: &mut NlSocket, ifindex: u32, net: Ipv4Net) -> Result<(), NlError> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.index = ifindex;
    m.header.prefix_len = net.prefix_len();
    m.header.scope = AddressScope::Universe;
    m.attributes
        .push(AddressAttribute::Local(IpAddr::V4(net.addr())));
    m.attributes
        .push(AddressAttribute::Address(IpAddr::V4(net.addr())));
    sock.route_request(RouteNetlinkMessage::DelAddress(m), NLM_F_ACK)?;
    Ok(())
}

fn del_route(sock: &mut NlSocket, ifindex: u32, r: &RouteRecord) -> Result<(), NlError> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = r.destination.prefix_len();
    m.header.table = u8::try_from(r.table).unwrap_or(0);
    m.header.protocol = RouteProtocol::from(r.protocol);
    m.header.scope = RouteScope::from(r.scope);
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Table(r.table));
    if r.destination.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.destination.network(),
            )));
    }
    if let Some(g) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    m.attributes.push(RouteAttribute::Oif(ifindex));
    sock.route_request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::lease::LeaseRoute;

    #[test]
    fn gateway_routes_are_universe_and_on_link_routes_link_scope() {
        let plan = InstallPlan {
            address: "192.0.2.100/24".parse().unwrap(),
            routes: vec![
                LeaseRoute {
                    destination: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
                },
                LeaseRoute {
                    destination: "198.51.100.0/24".parse().unwrap(),
                    gateway: None,
                },
            ],
        };
        let r = route_records(&plan);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].scope, 0);
        assert_eq!(r[0].gateway, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(r[1].scope, RT_SCOPE_LINK);
        assert!(r.iter().all(|x| x.protocol == RTPROT_DHCP
            && x.source == Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)))));
    }
}
