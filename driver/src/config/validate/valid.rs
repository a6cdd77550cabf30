//! What [`super::validate`] returns: the config with every value parsed
//! ([`ValidConfig`] and its parts), so the modules that plan and apply it never parse
//! strings again.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::RT_TABLE_MAIN;
use crate::datapath::{
    allowed_destinations, DatapathPolicy, DataplaneKnobs, TableRoute, TableRule,
};

/// A config that passed [`super::validate`], with every value parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidConfig {
    pub interface: ValidInterface,
    pub routes: Vec<ValidRoute>,
    /// Policy routing rules, in the order given.
    #[serde(default)]
    pub rules: Vec<ValidRule>,
    /// Permanent neighbour entries on the interface.
    #[serde(default)]
    pub neighbors: Vec<ValidNeighbor>,
    pub ethtool: ValidEthtool,
    /// The `dataplane` knobs, defaults filled in.
    pub knobs: DataplaneKnobs,
    pub disable_ebpf_programs: bool,
}

/// The interface part of a [`ValidConfig`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidInterface {
    /// Name inside the pod; `None` keeps the device's name.
    pub name: Option<String>,
    /// Addresses with their prefix length, e.g. `192.0.2.10/24`; no duplicates.
    pub addresses: Vec<IpNet>,
    pub mtu: Option<u32>,
    /// A unicast, non-zero MAC.
    #[serde(with = "mac_serde")]
    pub hardware_addr: Option<[u8; 6]>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    /// The address comes from DHCPv4 (then `addresses` is empty).
    #[serde(default)]
    pub dhcp: bool,
    /// Per-interface IPv4 and IPv6 forwarding; `None` leaves the pod's default.
    #[serde(default)]
    pub forwarding: Option<bool>,
    /// `arp_ignore`: 0-3 or 8.
    #[serde(default)]
    pub arp_ignore: Option<u8>,
    /// `arp_announce`: 0-2.
    #[serde(default)]
    pub arp_announce: Option<u8>,
    #[serde(default)]
    pub vrf: Option<ValidVrf>,
}

/// The VRF the interface joins, with its table resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidVrf {
    pub name: String,
    pub table: u32,
}

/// One policy routing rule of a [`ValidConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidRule {
    pub priority: u32,
    /// Networks (host bits clear); when both are set they have the same family.
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    /// Never 0.
    pub table: u32,
}

impl ValidRule {
    /// The address families the rule is installed in: the family of its prefixes, or
    /// both when it has none (DraNet installs such a rule for IPv4 only).
    pub fn families(&self) -> Vec<IpFamily> {
        match self.source.or(self.destination) {
            Some(IpNet::V4(_)) => vec![IpFamily::V4],
            Some(IpNet::V6(_)) => vec![IpFamily::V6],
            None => vec![IpFamily::V4, IpFamily::V6],
        }
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

/// One permanent neighbour of a [`ValidConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidNeighbor {
    pub destination: IpAddr,
    #[serde(with = "mac_plain")]
    pub hardware_addr: [u8; 6],
}

/// The scopes a claim's route may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteScope {
    /// `RT_SCOPE_UNIVERSE` (0): through a gateway.
    Universe,
    /// `RT_SCOPE_LINK` (253): directly on the link, no gateway.
    Link,
}

impl RouteScope {
    /// The kernel's `rtm_scope` value.
    pub fn as_u8(self) -> u8 {
        match self {
            RouteScope::Universe => 0,
            RouteScope::Link => 253,
        }
    }
}

/// One route of a [`ValidConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidRoute {
    /// The destination network, host bits clear.
    pub destination: IpNet,
    /// Set exactly when the scope is [`RouteScope::Universe`]; same family as the destination.
    pub gateway: Option<IpAddr>,
    /// Preferred source; one of the interface's addresses when the claim sets any.
    pub source: Option<IpAddr>,
    pub scope: RouteScope,
    /// `None` is the main table; never 0 or the local table.
    pub table: Option<u32>,
}

/// ethtool settings of a [`ValidConfig`] (empty when the config has none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidEthtool {
    pub features: BTreeMap<String, bool>,
    pub private_flags: BTreeMap<String, bool>,
}

impl ValidConfig {
    /// What the data path of the device enforces for this config: the addresses, the
    /// destinations the kernel can route through the device given the routes *and*
    /// the rules ([`allowed_destinations`]), and the knobs. Neighbour entries open
    /// nothing.
    pub fn datapath_policy(&self) -> DatapathPolicy {
        let routes: Vec<TableRoute> = self
            .routes
            .iter()
            .map(|r| TableRoute {
                destination: r.destination,
                table: r.table.unwrap_or(RT_TABLE_MAIN),
            })
            .collect();
        let rules: Vec<TableRule> = self
            .rules
            .iter()
            .flat_map(|r| {
                r.families().into_iter().map(move |f| TableRule {
                    v6: f == IpFamily::V6,
                    destination: r.destination,
                    table: r.table,
                })
            })
            .collect();
        DatapathPolicy {
            addresses: self.interface.addresses.clone(),
            routes: allowed_destinations(&routes, &rules),
            knobs: self.knobs,
            mac: self.interface.hardware_addr,
            link_local: Vec::new(),
            dhcp_client: self.interface.dhcp,
        }
    }
}

/// A MAC as `aa:bb:cc:dd:ee:ff` in the serialized config (optional).
mod mac_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Option<[u8; 6]>, s: S) -> Result<S::Ok, S::Error> {
        match mac {
            Some(m) => s.serialize_some(&super::super::format_mac(m)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::super::parse_mac(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a MAC address"))),
        }
    }
}

/// A MAC as `aa:bb:cc:dd:ee:ff` in the serialized config.
mod mac_plain {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::super::format_mac(mac))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 6], D::Error> {
        let s = String::deserialize(d)?;
        super::super::parse_mac(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a MAC address")))
    }
}
