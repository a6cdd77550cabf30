//! The claim's validated config mapped onto what `netns` and `datapath` take (pure).

use crate::config::ValidConfig;
use crate::datapath::DatapathPolicy;
use crate::netns::rules::RuleSpec;
use crate::netns::sysctl::IfSysctls;
use crate::netns::{ClaimRule, Configured, InterfaceSettings, NeighbourSpec, RouteSpec, VrfSpec};

/// [`InterfaceSettings`] for `move_and_configure` from a [`ValidConfig`].
pub fn interface_settings(cfg: &ValidConfig) -> InterfaceSettings {
    let i = &cfg.interface;
    InterfaceSettings {
        name: i.name.clone(),
        addresses: i.addresses.clone(),
        mtu: i.mtu,
        mac: i.hardware_addr,
        gso_max_size: i.gso_max_size,
        gro_max_size: i.gro_max_size,
        gso_ipv4_max_size: i.gso_ipv4_max_size,
        gro_ipv4_max_size: i.gro_ipv4_max_size,
        routes: cfg
            .routes
            .iter()
            .map(|r| RouteSpec {
                destination: r.destination,
                gateway: r.gateway,
                source: r.source,
                scope: r.scope.as_u8(),
                table: r.table,
            })
            .collect(),
        rules: cfg
            .rules
            .iter()
            .enumerate()
            .flat_map(|(index, r)| {
                r.families().into_iter().map(move |f| ClaimRule {
                    index,
                    spec: RuleSpec {
                        v6: f == crate::config::validate::IpFamily::V6,
                        priority: r.priority,
                        source: r.source,
                        destination: r.destination,
                        table: r.table,
                    },
                })
            })
            .collect(),
        neighbours: cfg
            .neighbors
            .iter()
            .map(|n| NeighbourSpec {
                destination: n.destination,
                mac: n.hardware_addr,
            })
            .collect(),
        sysctls: IfSysctls {
            arp_ignore: i.arp_ignore,
            arp_announce: i.arp_announce,
            forwarding_v4: i.forwarding,
            forwarding_v6: i.forwarding,
        },
        vrf: i.vrf.as_ref().map(|v| VrfSpec {
            name: v.name.clone(),
            table: v.table,
        }),
        ethtool_features: cfg.ethtool.features.clone(),
        private_flags: cfg.ethtool.private_flags.clone(),
        dhcp: i.dhcp,
    }
}

/// The data-path policy: the config's, with the addresses the device carried from the
/// host (read back in the pod) when the config sets none, and the device's MAC and
/// link-local addresses as the kernel reports them in the pod.
pub fn datapath_policy(cfg: &ValidConfig, in_pod: &Configured) -> DatapathPolicy {
    policy_for(cfg, &in_pod.addresses, in_pod.mac, &in_pod.link_local)
}

fn policy_for(
    cfg: &ValidConfig,
    addresses_in_pod: &[ipnet::IpNet],
    mac_in_pod: Option<[u8; 6]>,
    link_local: &[std::net::Ipv6Addr],
) -> DatapathPolicy {
    let mut policy = cfg.datapath_policy();
    if policy.addresses.is_empty() {
        policy.addresses = addresses_in_pod.to_vec();
    }
    policy.mac = mac_in_pod.or(policy.mac);
    policy.link_local = link_local.to_vec();
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_parameters;

    #[test]
    fn maps_every_field() {
        let cfg = parse_parameters(
            &serde_json::json!({
                "interface": {"name": "net1", "addresses": ["192.0.2.10/24"], "mtu": 1400,
                              "hardwareAddr": "02:00:00:00:00:01"},
                "routes": [{"destination": "198.51.100.0/24", "gateway": "192.0.2.1"}],
                "ethtool": {"features": {"tx-checksumming": false}}
            }),
            "parameters",
        )
        .expect("valid config");
        let s = interface_settings(&cfg);
        assert_eq!(s.name.as_deref(), Some("net1"));
        assert_eq!(s.mtu, Some(1400));
        assert_eq!(s.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.routes[0].scope, 0);
        assert_eq!(s.ethtool_features.get("tx-checksumming"), Some(&false));
        let dranet = parse_parameters(
            &serde_json::json!({
                "interface": {"arpIgnore": 1, "forwarding": true},
                "rules": [{"table": 100}, {"destination": "198.51.100.0/24", "table": 101}],
                "neighbors": [{"destination": "192.0.2.1", "hardwareAddr": "02:00:00:00:00:02"}]
            }),
            "parameters",
        )
        .expect("valid config");
        let s = interface_settings(&dranet);
        let rules: Vec<(usize, bool, u32)> = s
            .rules
            .iter()
            .map(|r| (r.index, r.spec.v6, r.spec.table))
            .collect();
        assert_eq!(
            rules,
            vec![(0, false, 100), (0, true, 100), (1, false, 101)],
            "a rule without prefixes goes into both families"
        );
        assert_eq!(s.neighbours.len(), 1);
        assert_eq!(s.sysctls.arp_ignore, Some(1));
        assert_eq!(s.sysctls.forwarding_v6, Some(true));
        assert_eq!(s.sysctls.arp_announce, None);
        assert!(!s.dhcp);
        let dhcp = parse_parameters(
            &serde_json::json!({"interface": {"name": "net1", "dhcp": true}}),
            "parameters",
        )
        .expect("valid config");
        let s = interface_settings(&dhcp);
        assert!(s.dhcp && s.addresses.is_empty());
        assert!(policy_for(&dhcp, &[], None, &[]).dhcp_client);
        let carried: Vec<ipnet::IpNet> = vec!["203.0.113.5/24".parse().expect("net")];
        let ll: Vec<std::net::Ipv6Addr> = vec!["fe80::1".parse().expect("ll")];
        let p = policy_for(&cfg, &carried, Some([2, 0, 0, 0, 0, 9]), &ll);
        assert_eq!(p.addresses, cfg.interface.addresses);
        assert_eq!(
            p.mac,
            Some([2, 0, 0, 0, 0, 9]),
            "the MAC read in the pod wins"
        );
        assert_eq!(p.link_local, ll);
        let bare = ValidConfig::default();
        let p = policy_for(&bare, &carried, None, &[]);
        assert_eq!(p.addresses, carried);
        assert_eq!(p.mac, None);
    }
}
