//! A claim's data-path policy and its compilation into map contents.
//!
//! Pure functions only: no maps, no syscalls. [`DatapathPolicy`] is what the rest of
//! the driver knows (addresses, routes, knobs); [`CompiledPolicy`] is what one policy
//! slot in the kernel holds (flags, allowed prefixes with hit-counter indices, local
//! addresses). [`allowed_destinations`] decides which route destinations the
//! policy allows once policy routing rules are in play.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netclaim_common::flags;
use serde::{Deserialize, Serialize};

/// The `dataplane` knobs of a claim config. The three checks default to on; the one
/// relaxation (`allowMulticast`) defaults to off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DataplaneKnobs {
    /// Egress destinations must fall inside a route destination or connected subnet.
    pub enforce_routes: bool,
    /// Egress sources must be one of the interface's addresses.
    pub anti_spoofing: bool,
    /// Ingress unicast IP must be addressed to one of the interface's addresses.
    pub ingress_filter: bool,
    /// Egress to multicast groups passes without a route covering them (the source
    /// is still checked). Link-local ND/MLD never needs it.
    pub allow_multicast: bool,
}

impl Default for DataplaneKnobs {
    fn default() -> Self {
        Self {
            enforce_routes: true,
            anti_spoofing: true,
            ingress_filter: true,
            allow_multicast: false,
        }
    }
}

/// What the data path of one device enforces: the interface's addresses (CIDR, as
/// configured in the pod), the destinations of its routes, and the knobs; and who the
/// device is on the wire: its MAC and its IPv6 link-local addresses, which count as
/// its own sources but open no destinations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathPolicy {
    pub addresses: Vec<IpNet>,
    pub routes: Vec<IpNet>,
    pub knobs: DataplaneKnobs,
    /// The device's MAC in the pod; `None` (unknown) lets no source MAC through.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
    /// The device's IPv6 link-local addresses in the pod.
    #[serde(default)]
    pub link_local: Vec<Ipv6Addr>,
    /// The driver is the device's DHCP client (`interface.dhcp`): its own DHCP
    /// broadcasts pass egress, and the checks stay on while `addresses` is still
    /// empty (before the lease), so nothing else leaves meanwhile.
    #[serde(default)]
    pub dhcp_client: bool,
}

/// The kernel's `main` and `default` tables: the default rules (priorities 32766 and
/// 32767) look them up for every packet, so their routes need no rule of the claim.
const ALWAYS_CONSULTED: [u32; 2] = [254, 253];

/// A route through the device and the table it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoute {
    pub destination: IpNet,
    pub table: u32,
}

/// One policy routing rule of the claim, in one family: "traffic to `destination`
/// (anywhere when `None`) looks up `table`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRule {
    pub v6: bool,
    pub destination: Option<IpNet>,
    pub table: u32,
}

/// The destinations the kernel in the pod can send through the device, given the
/// claim's routes and rules — what `enforceRoutes` allows:
///
/// * a route in `main` or `default` counts in full (the kernel's default rules look
///   those tables up for every destination);
/// * a route in any other table counts only through a claim rule of its family that
///   looks that table up: in full when the rule has no destination, otherwise only
///   the part inside the rule's destination (the longer of the two prefixes when one
///   holds the other, nothing when they are disjoint);
/// * a route in a table no rule looks up counts not at all: the kernel never uses it.
///
/// A rule's source selector does not narrow the result: the destination check has no
/// source dimension (anti-spoofing restricts sources to the device's own addresses).
/// Static neighbour entries are not inputs: they make no destination routable.
/// The result is sorted and free of duplicates.
pub fn allowed_destinations(routes: &[TableRoute], rules: &[TableRule]) -> Vec<IpNet> {
    let mut out: BTreeSet<IpNet> = BTreeSet::new();
    for r in routes {
        let dst = r.destination.trunc();
        if ALWAYS_CONSULTED.contains(&r.table) {
            out.insert(dst);
            continue;
        }
        for rule in rules {
            if rule.table != r.table || rule.v6 != dst.addr().is_ipv6() {
                continue;
            }
            match rule.destination.map(|d| d.trunc()) {
                None => {
                    out.insert(dst);
                }
                Some(d) if d.addr().is_ipv6() != dst.addr().is_ipv6() => {}
                Some(d) if dst.contains(&d) => {
                    out.insert(d);
                }
                Some(d) if d.contains(&dst) => {
                    out.insert(dst);
                }
                Some(_) => {}
            }
        }
    }
    out.into_iter().collect()
}

/// The modified EUI-64 link-local address the kernel derives from `mac` (RFC 4291
/// appendix A; `addr_gen_mode` 0, the default).
pub fn eui64_link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// Whether a compiled policy enforces anything, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "camelCase")]
pub enum Enforcement {
    /// Some checks are active (see the flags).
    Enforcing,
    /// Packets are only counted.
    CountOnly { reason: String },
}

/// Where an allowed prefix comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PrefixOrigin {
    /// The destination of a configured route.
    Route,
    /// The subnet of one of the interface's addresses.
    Connected,
}

/// One allowed destination prefix and the hit counter it feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedPrefix {
    pub prefix: IpNet,
    pub origin: PrefixOrigin,
    pub hit_index: u32,
}

/// The content of one policy slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub flags: u32,
    /// The only source MAC egress accepts (all zeros when unknown).
    pub mac: [u8; 6],
    pub enforcement: Enforcement,
    pub prefixes: Vec<AllowedPrefix>,
    pub local_v4: Vec<Ipv4Addr>,
    pub local_v6: Vec<Ipv6Addr>,
}

/// The policy needs more hit counters or prefixes than the maps hold.
#[derive(Debug, thiserror::Error)]
#[error("policy has {count} allowed prefixes; the data path holds at most {capacity}")]
pub struct TooManyPrefixes {
    pub count: usize,
    pub capacity: u32,
}

impl DatapathPolicy {
    /// Compiles the policy. `previous` maps prefixes of the policy being replaced to
    /// their hit-counter indices: a prefix that stays keeps its index (and its count);
    /// new prefixes take the lowest free indices. `capacity` bounds the indices.
    pub fn compile(
        &self,
        previous: &BTreeMap<IpNet, u32>,
        capacity: u32,
    ) -> Result<CompiledPolicy, TooManyPrefixes> {
        let mut wanted: BTreeMap<IpNet, PrefixOrigin> = BTreeMap::new();
        for route in &self.routes {
            wanted.insert(route.trunc(), PrefixOrigin::Route);
        }
        for addr in &self.addresses {
            wanted
                .entry(addr.trunc())
                .or_insert(PrefixOrigin::Connected);
        }
        if wanted.len() > capacity as usize {
            return Err(TooManyPrefixes {
                count: wanted.len(),
                capacity,
            });
        }
        let kept: BTreeSet<u32> = wanted
            .keys()
            .filter_map(|p| previous.get(p).copied())
            .filter(|i| *i < capacity)
            .collect();
        let mut free = (0..capacity).filter(|i| !kept.contains(i));
        let mut prefixes = Vec::with_capacity(wanted.len());
        for (prefix, origin) in wanted {
            let hit_index = match previous.get(&prefix) {
                Some(i) if *i < capacity => *i,
                _ => free.next().ok_or(TooManyPrefixes {
                    count: prefixes.len() + 1,
                    capacity,
                })?,
            };
            prefixes.push(AllowedPrefix {
                prefix,
                origin,
                hit_index,
            });
        }

        let mut local_v4: Vec<Ipv4Addr> = Vec::new();
        let mut local_v6: Vec<Ipv6Addr> = Vec::new();
        for addr in &self.addresses {
            match addr.addr() {
                IpAddr::V4(a) if !local_v4.contains(&a) => local_v4.push(a),
                IpAddr::V6(a) if !local_v6.contains(&a) => local_v6.push(a),
                _ => {}
            }
        }
        let mut link_local = self.link_local.clone();
        link_local.extend(self.mac.map(eui64_link_local));
        for a in link_local {
            if !local_v6.contains(&a) {
                local_v6.push(a);
            }
        }

        let k = self.knobs;
        let mut flag_bits = 0;
        if k.enforce_routes {
            flag_bits |= flags::ENFORCE_ROUTES;
        }
        if k.anti_spoofing {
            flag_bits |= flags::ANTI_SPOOFING;
        }
        if k.ingress_filter {
            flag_bits |= flags::INGRESS_FILTER;
        }
        let enforcement = if self.addresses.is_empty() && !self.dhcp_client {
            flag_bits = 0;
            Enforcement::CountOnly {
                reason: "the device has no IP addresses (neither from the claim nor from the host), so there is nothing to enforce".into(),
            }
        } else if flag_bits == 0 {
            Enforcement::CountOnly {
                reason:
                    "enforceRoutes, antiSpoofing and ingressFilter are all off in the claim config"
                        .into(),
            }
        } else {
            if k.allow_multicast {
                flag_bits |= flags::ALLOW_MULTICAST;
            }
            if self.dhcp_client {
                flag_bits |= flags::DHCP_CLIENT;
            }
            Enforcement::Enforcing
        };
        Ok(CompiledPolicy {
            flags: flag_bits,
            mac: self.mac.unwrap_or([0; 6]),
            enforcement,
            prefixes,
            local_v4,
            local_v6,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn policy(addrs: &[&str], routes: &[&str]) -> DatapathPolicy {
        DatapathPolicy {
            addresses: addrs.iter().map(|a| net(a)).collect(),
            routes: routes.iter().map(|a| net(a)).collect(),
            knobs: DataplaneKnobs::default(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            link_local: vec![],
            dhcp_client: false,
        }
    }

    #[test]
    fn routes_and_connected_subnets_are_allowed_once() {
        let p = policy(
            &["192.0.2.10/24", "2001:db8::10/64"],
            &["198.51.100.0/24", "192.0.2.0/24"],
        );
        let c = p.compile(&BTreeMap::new(), 16).unwrap();
        let got: Vec<(String, PrefixOrigin)> = c
            .prefixes
            .iter()
            .map(|a| (a.prefix.to_string(), a.origin))
            .collect();
        assert_eq!(
            got,
            vec![
                ("192.0.2.0/24".to_string(), PrefixOrigin::Route),
                ("198.51.100.0/24".to_string(), PrefixOrigin::Route),
                ("2001:db8::/64".to_string(), PrefixOrigin::Connected),
            ]
        );
        assert_eq!(c.local_v4, vec![Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(
            c.local_v6,
            vec![
                "2001:db8::10".parse::<Ipv6Addr>().unwrap(),
                "fe80::ff:fe00:1".parse::<Ipv6Addr>().unwrap()
            ],
            "the EUI-64 link-local address is the device's own"
        );
        assert_eq!(c.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            c.flags,
            flags::ENFORCE_ROUTES | flags::ANTI_SPOOFING | flags::INGRESS_FILTER,
            "multicast is not allowed unless the claim asks"
        );
        assert!(
            !c.prefixes
                .iter()
                .any(|a| a.prefix.to_string().starts_with("fe80")),
            "link-local addresses open no destinations"
        );
        assert_eq!(c.enforcement, Enforcement::Enforcing);
    }

    #[test]
    fn kept_prefixes_keep_their_hit_index() {
        let first = policy(&["192.0.2.10/24"], &["198.51.100.0/24"])
            .compile(&BTreeMap::new(), 16)
            .unwrap();
        let previous: BTreeMap<IpNet, u32> = first
            .prefixes
            .iter()
            .map(|a| (a.prefix, a.hit_index))
            .collect();
        let second = policy(&["192.0.2.10/24"], &["203.0.113.0/24", "198.51.100.0/24"])
            .compile(&previous, 16)
            .unwrap();
        for a in &second.prefixes {
            if let Some(old) = previous.get(&a.prefix) {
                assert_eq!(*old, a.hit_index, "{} moved", a.prefix);
            }
        }
        let mut indices: Vec<u32> = second.prefixes.iter().map(|a| a.hit_index).collect();
        indices.sort();
        indices.dedup();
        assert_eq!(indices.len(), 3, "indices are unique");
    }

    #[test]
    fn no_addresses_means_count_only_with_reason() {
        let c = policy(&[], &["198.51.100.0/24"])
            .compile(&BTreeMap::new(), 16)
            .unwrap();
        assert_eq!(c.flags, 0);
        assert!(
            matches!(c.enforcement, Enforcement::CountOnly { ref reason } if reason.contains("no IP addresses"))
        );
    }

    #[test]
    fn knobs_map_to_flags() {
        let mut p = policy(&["192.0.2.10/24"], &[]);
        p.knobs = DataplaneKnobs {
            enforce_routes: false,
            anti_spoofing: true,
            ingress_filter: false,
            allow_multicast: false,
        };
        let c = p.compile(&BTreeMap::new(), 16).unwrap();
        assert_eq!(c.flags, flags::ANTI_SPOOFING);
        p.knobs = DataplaneKnobs {
            enforce_routes: false,
            anti_spoofing: false,
            ingress_filter: false,
            allow_multicast: true,
        };
        let c = p.compile(&BTreeMap::new(), 16).unwrap();
        assert_eq!(c.flags, 0);
        assert!(matches!(c.enforcement, Enforcement::CountOnly { .. }));
        p.knobs.enforce_routes = true;
        let c = p.compile(&BTreeMap::new(), 16).unwrap();
        assert_eq!(c.flags, flags::ENFORCE_ROUTES | flags::ALLOW_MULTICAST);
    }

    fn troute(d: &str, table: u32) -> TableRoute {
        TableRoute {
            destination: net(d),
            table,
        }
    }

    fn trule(d: Option<&str>, table: u32, v6: bool) -> TableRule {
        TableRule {
            v6,
            destination: d.map(net),
            table,
        }
    }

    fn strings(v: Vec<IpNet>) -> Vec<String> {
        v.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn main_and_default_routes_count_without_rules() {
        let got = allowed_destinations(
            &[
                troute("198.51.100.0/24", 254),
                troute("203.0.113.0/24", 253),
            ],
            &[],
        );
        assert_eq!(strings(got), ["198.51.100.0/24", "203.0.113.0/24"]);
    }

    #[test]
    fn routes_in_a_table_no_rule_looks_up_count_not() {
        let got = allowed_destinations(
            &[troute("198.51.100.0/24", 100)],
            &[trule(None, 200, false)],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_rule_without_destination_opens_its_table_in_its_family_only() {
        let routes = [
            troute("198.51.100.0/24", 100),
            troute("2001:db8:5::/48", 100),
        ];
        let got = allowed_destinations(&routes, &[trule(None, 100, false)]);
        assert_eq!(strings(got), ["198.51.100.0/24"]);
        let got = allowed_destinations(&routes, &[trule(None, 100, false), trule(None, 100, true)]);
        assert_eq!(strings(got), ["198.51.100.0/24", "2001:db8:5::/48"]);
    }

    #[test]
    fn a_rule_destination_clips_a_wider_route() {
        // Default route in table 100, reached only for 203.0.113.0/25.
        let got = allowed_destinations(
            &[troute("0.0.0.0/0", 100)],
            &[trule(Some("203.0.113.0/25"), 100, false)],
        );
        assert_eq!(strings(got), ["203.0.113.0/25"]);
    }

    #[test]
    fn a_narrower_route_inside_the_rule_destination_counts_as_itself() {
        let got = allowed_destinations(
            &[
                troute("198.51.100.128/25", 100),
                troute("192.0.2.0/24", 100),
            ],
            &[trule(Some("198.51.100.0/24"), 100, false)],
        );
        assert_eq!(
            strings(got),
            ["198.51.100.128/25"],
            "the disjoint route stays closed"
        );
    }

    #[test]
    fn overlapping_rules_union_without_duplicates() {
        let got = allowed_destinations(
            &[troute("0.0.0.0/0", 100), troute("198.51.100.0/24", 254)],
            &[
                trule(Some("198.51.100.0/24"), 100, false),
                trule(Some("203.0.113.0/24"), 100, false),
                trule(Some("203.0.113.0/24"), 100, false),
            ],
        );
        assert_eq!(strings(got), ["198.51.100.0/24", "203.0.113.0/24"]);
    }

    #[test]
    fn a_dhcp_client_enforces_before_its_lease_and_keeps_the_flag_after() {
        let mut before = policy(&[], &[]);
        before.dhcp_client = true;
        let c = before.compile(&BTreeMap::new(), 16).unwrap();
        assert_eq!(
            c.flags,
            flags::ENFORCE_ROUTES
                | flags::ANTI_SPOOFING
                | flags::INGRESS_FILTER
                | flags::DHCP_CLIENT
        );
        assert_eq!(c.enforcement, Enforcement::Enforcing);
        assert!(c.local_v4.is_empty() && c.prefixes.is_empty());
        let mut after = policy(&["192.0.2.101/24"], &["0.0.0.0/0"]);
        after.dhcp_client = true;
        let c = after.compile(&BTreeMap::new(), 16).unwrap();
        assert_eq!(c.local_v4, vec![Ipv4Addr::new(192, 0, 2, 101)]);
        assert_ne!(c.flags & flags::DHCP_CLIENT, 0);
        let mut off = before.clone();
        off.knobs = DataplaneKnobs {
            enforce_routes: false,
            anti_spoofing: false,
            ingress_filter: false,
            allow_multicast: false,
        };
        assert_eq!(off.compile(&BTreeMap::new(), 16).unwrap().flags, 0);
    }

    #[test]
    fn capacity_is_enforced() {
        let routes: Vec<String> = (0..20).map(|i| format!("10.{i}.0.0/16")).collect();
        let refs: Vec<&str> = routes.iter().map(String::as_str).collect();
        let err = policy(&["192.0.2.1/24"], &refs)
            .compile(&BTreeMap::new(), 16)
            .unwrap_err();
        assert_eq!(err.count, 21);
    }
}
