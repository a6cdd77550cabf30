//! A claim's data-path policy and its compilation into map contents.
//!
//! Pure functions only: no maps, no syscalls. [`DatapathPolicy`] is what the rest of
//! the driver knows (addresses, routes, knobs); [`CompiledPolicy`] is what one policy
//! slot in the kernel holds (flags, allowed prefixes with hit-counter indices, local
//! addresses).

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
        let enforcement = if self.addresses.is_empty() {
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
