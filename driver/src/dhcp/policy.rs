//! What a lease changes in the device's data-path policy (pure): the leased address
//! becomes the whole anti-spoofing set of IPv4 (its subnet a connected destination),
//! and the lease's routes are the allowed IPv4 destinations next to the claim's own.
//! Without a lease (before the first, after one was lost) the device has no IPv4
//! address, so nothing but its DHCP exchange leaves ([`netclaim_common::flags::DHCP_CLIENT`]).

use ipnet::IpNet;

use super::lease::Lease;
use crate::datapath::DatapathPolicy;

/// `base` (the claim's policy, `dhcp_client` set) with `lease` applied; `None` gives
/// the policy of a device without a lease.
pub fn policy_with_lease(base: &DatapathPolicy, lease: Option<&Lease>) -> DatapathPolicy {
    let mut p = base.clone();
    p.dhcp_client = true;
    // IPv4 comes from the lease only; IPv6 the claim may still set.
    p.addresses.retain(|a| a.addr().is_ipv6());
    if let Some(lease) = lease {
        p.addresses.push(IpNet::V4(lease.address));
        for r in lease.install_plan().routes {
            let dst = IpNet::V4(r.destination);
            if !p.routes.contains(&dst) {
                p.routes.push(dst);
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn lease(routes: Vec<(&str, &str)>) -> Lease {
        Lease {
            address: "192.0.2.101/24".parse().unwrap(),
            server: "192.0.2.1".parse().unwrap(),
            routers: vec!["192.0.2.1".parse().unwrap()],
            classless_routes: routes
                .into_iter()
                .map(|(d, g)| (d.parse().unwrap(), g.parse().unwrap()))
                .collect(),
            lease_secs: 120,
            timing: None,
            granted_at: super::super::lease::unix_secs(SystemTime::now()),
        }
    }

    #[test]
    fn the_lease_is_the_ipv4_anti_spoofing_set_and_its_routes_the_destinations() {
        let base = DatapathPolicy {
            addresses: vec!["2001:db8::10/64".parse().unwrap()],
            routes: vec!["203.0.113.0/24".parse().unwrap()],
            dhcp_client: true,
            ..Default::default()
        };
        let none = policy_with_lease(&base, None);
        assert_eq!(none.addresses, base.addresses);
        assert!(none.dhcp_client);
        let p = policy_with_lease(&base, Some(&lease(vec![])));
        assert_eq!(
            p.addresses,
            vec![
                "2001:db8::10/64".parse::<IpNet>().unwrap(),
                "192.0.2.101/24".parse().unwrap()
            ]
        );
        assert_eq!(
            p.routes,
            vec![
                "203.0.113.0/24".parse::<IpNet>().unwrap(),
                "0.0.0.0/0".parse().unwrap()
            ],
            "option 3 gives a default route"
        );
        let p = policy_with_lease(&base, Some(&lease(vec![("198.51.100.0/24", "192.0.2.1")])));
        assert_eq!(
            p.routes,
            vec![
                "203.0.113.0/24".parse::<IpNet>().unwrap(),
                "198.51.100.0/24".parse().unwrap()
            ],
            "option 121 instead of option 3"
        );
        // A stale IPv4 address (the previous lease) never survives.
        let stale = DatapathPolicy {
            addresses: vec!["192.0.2.140/24".parse().unwrap()],
            ..base
        };
        assert!(policy_with_lease(&stale, None).addresses.is_empty());
    }
}
