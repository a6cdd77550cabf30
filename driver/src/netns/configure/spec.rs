//! What a claim asks of one interface ([`InterfaceSettings`], plain parsed values the
//! caller maps from the validated claim config) and what the kernel reports once it is
//! configured in the pod ([`Configured`]).

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::super::{host::HostOriginals, restore::PodSide, rules::RuleSpec, sysctl::IfSysctls};

/// A permanent neighbour entry requested for the interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourSpec {
    pub destination: IpAddr,
    pub mac: [u8; 6],
}

/// One rule to install, with the index of the claim's `rules[]` entry it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub index: usize,
    pub spec: RuleSpec,
}

/// The VRF the interface joins in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrfSpec {
    pub name: String,
    pub table: u32,
}

/// A static route requested for the interface inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Preferred source address (`ip route ... src`).
    pub source: Option<IpAddr>,
    /// 0 (universe) or 253 (link).
    pub scope: u8,
    /// Routing table; main when `None`.
    pub table: Option<u32>,
}

/// Parsed settings for one interface (mapped from the claim's NetworkConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSettings {
    pub name: Option<String>,
    pub addresses: Vec<IpNet>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    pub routes: Vec<RouteSpec>,
    /// Policy routing rules, one per family (`rules[i]` may give two).
    pub rules: Vec<ClaimRule>,
    pub neighbours: Vec<NeighbourSpec>,
    pub sysctls: IfSysctls,
    pub vrf: Option<VrfSpec>,
    pub ethtool_features: BTreeMap<String, bool>,
    pub private_flags: BTreeMap<String, bool>,
    /// `interface.dhcp`: the address and routes come from a DHCP lease acquired after
    /// the move (`crate::dhcp`), so the host's are not carried along.
    pub dhcp: bool,
}

/// The device as the kernel reports it inside the pod once configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub pod_ifname: String,
    pub ifindex_in_pod: u32,
    pub mac: Option<[u8; 6]>,
    /// Global addresses on the device in the pod, read back from the kernel.
    pub addresses: Vec<IpNet>,
    /// IPv6 link-local addresses the kernel has given the device in the pod so far.
    pub link_local: Vec<std::net::Ipv6Addr>,
    pub originals: HostOriginals,
    /// How many `RTM_SETLINK` requests the move + link settings took (1 when the
    /// kernel accepted the combined message).
    pub link_requests: usize,
}

impl Configured {
    /// What [`mod@crate::netns::restore`] needs to find the device again.
    pub fn pod_side(&self) -> PodSide {
        PodSide {
            name: self.pod_ifname.clone(),
            ifindex: Some(self.ifindex_in_pod),
            mac: self.mac,
        }
    }
}
