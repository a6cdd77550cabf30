//! The claim's opaque parameters (`driver: netclaim.dev`): [`NetworkConfig`].
//!
//! Field names follow the interface-configuration format users already know from the
//! well-known Go driver (`interface`, `routes`, `ethtool`), plus netclaim's own
//! `dataplane` knobs and `disableEbpfPrograms`. Unknown fields are rejected at parse
//! time; semantic checks live in `validate`.

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethtool: Option<EthtoolConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneKnobs>,
    /// Remove foreign tc/TCX/XDP programs from the device before handing it over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_ebpf_programs: bool,
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
    /// Routing table; the main table when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
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
