//! The claim's opaque parameters (`driver: netclaim.dev`): [`NetworkConfig`].
//!
//! Field names follow DraNet's `NetworkConfig` (`pkg/apis/types.go`): `interface`,
//! `routes`, `rules`, `neighbors`, `ethtool` and DraNet's `profile`, so a DraNet
//! config parses unchanged; netclaim adds its `dataplane` knobs, `routes[].table` and a
//! top-level `disableEbpfPrograms` (the same switch as DraNet's
//! `interface.disableEbpfPrograms`). Unknown fields are rejected at parse time;
//! semantic checks live in `validate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::datapath::DataplaneKnobs;

/// The whole opaque config of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default)]
    pub interface: InterfaceConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Policy routing rules in the pod's namespace (`ip rule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Permanent neighbour (ARP/NDP) entries on the interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<NeighborConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethtool: Option<EthtoolConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneKnobs>,
    /// Remove foreign tc/TCX/XDP programs from the device before handing it over;
    /// the same switch as `interface.disableEbpfPrograms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_ebpf_programs: Option<bool>,
    /// DraNet's provider-plugin profile name. Parsed so the error can say why it is
    /// refused (netclaim has no provider plugins); never accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Properties of the interface inside the pod (`ip link` settings and addresses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterfaceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// CIDRs, e.g. `192.0.2.10/24`, `2001:db8::10/64`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gso_max_size: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gro_max_size: Option<i32>,
    #[serde(
        default,
        rename = "gsoIPv4MaxSize",
        skip_serializing_if = "Option::is_none"
    )]
    pub gso_ipv4_max_size: Option<i32>,
    #[serde(
        default,
        rename = "groIPv4MaxSize",
        skip_serializing_if = "Option::is_none"
    )]
    pub gro_ipv4_max_size: Option<i32>,
    /// Acquire the address by DHCPv4 instead of `addresses` (exclusive with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// DraNet's spelling of the top-level `disableEbpfPrograms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_ebpf_programs: Option<bool>,
    /// `net.ipv4.conf.<if>.forwarding` and `net.ipv6.conf.<if>.forwarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<bool>,
    /// `net.ipv4.conf.<if>.arp_ignore`: 0-3 or 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_ignore: Option<i32>,
    /// `net.ipv4.conf.<if>.arp_announce`: 0-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_announce: Option<i32>,
    /// Enslave the interface to a VRF device in the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrf: Option<VrfConfig>,
}

/// A VRF device the interface joins inside the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VrfConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The VRF's routing table; derived from the name when absent (as DraNet does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i64>,
}

/// One policy routing rule: traffic matching the selectors looks up `table`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// 0..=32767; 0 when absent, as in DraNet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Source prefix (CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Destination prefix (CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i64>,
}

/// One permanent neighbour entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NeighborConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
}

/// One static route through the interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// 0 (universe, needs a gateway) or 253 (link).
    #[serde(default)]
    pub scope: u8,
    /// Routing table; the main table when absent or 0 (as in DraNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i64>,
}

/// ethtool settings: features (`ethtool -K`) and private flags (`--set-priv-flags`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EthtoolConfig {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub private_flags: BTreeMap<String, bool>,
}
