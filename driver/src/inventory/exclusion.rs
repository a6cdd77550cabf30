//! Links the driver never publishes, whatever the filter says: loopback, and the
//! node's uplinks with everything stacked with them.
//!
//! An *uplink* is a link carrying a default route (v4 or v6) in the main table. The
//! excluded set starts with the uplinks and grows, transitively, along every
//! relation where handing one link to a pod would change the other:
//! * its master (`IFLA_MASTER`: the bond/bridge/VRF it is enslaved to),
//! * its slaves (links whose `IFLA_MASTER` is it: bond members, bridge ports),
//! * its lower device (`IFLA_LINK` in the same namespace: `eth0` under `eth0.100`),
//! * its upper devices (links whose `IFLA_LINK` is it: VLANs, macvlans on the uplink).
//!
//! Upper devices are excluded on purpose: a macvlan or VLAN someone built on the
//! uplink is node plumbing (storage VLANs, host shims), not a spare device; a driver
//! that wants to hand out children of the uplink creates them itself. Default routes
//! through nexthop objects (`RTA_NH_ID`) name no interface and cannot be resolved with
//! the netlink crates in use; they are logged. Pure function of a snapshot.

use std::collections::BTreeSet;

use super::links::NetlinkSnapshot;

/// Ifindexes that must never be published.
pub fn excluded(snapshot: &NetlinkSnapshot) -> BTreeSet<u32> {
    let mut out: BTreeSet<u32> = snapshot
        .links
        .iter()
        .filter(|l| l.loopback)
        .map(|l| l.ifindex)
        .collect();
    let mut todo: Vec<u32> = snapshot.default_route_ifindexes.iter().copied().collect();
    let mut stack = BTreeSet::new();
    while let Some(i) = todo.pop() {
        if !stack.insert(i) {
            continue;
        }
        for l in &snapshot.links {
            if l.ifindex == i {
                todo.extend(l.master);
                todo.extend(l.lower);
            }
            if l.master == Some(i) || l.lower == Some(i) {
                todo.push(l.ifindex);
            }
        }
    }
    out.extend(stack);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::links::LinkFacts;

    fn link(i: u32, master: Option<u32>, lower: Option<u32>) -> LinkFacts {
        LinkFacts {
            ifindex: i,
            ifname: format!("l{i}"),
            master,
            lower,
            ..Default::default()
        }
    }

    #[test]
    fn uplink_stack_is_excluded() {
        let mut lo = link(1, None, None);
        lo.loopback = true;
        let snap = NetlinkSnapshot {
            links: vec![
                lo,
                link(2, Some(4), None), // bond member
                link(3, Some(4), None), // bond member
                link(4, None, None),    // bond0
                link(5, None, Some(4)), // bond0.100 carries the default route
                link(6, None, Some(4)), // macvlan on bond0
                link(7, None, None),    // free
                link(8, Some(9), None), // port of an unrelated bridge
                link(9, None, None),
            ],
            default_route_ifindexes: [5].into(),
            unresolved_default_routes: 0,
        };
        let ex = excluded(&snap);
        assert_eq!(ex, [1, 2, 3, 4, 5, 6].into());
    }
}
