//! [`HostOriginals`]: everything about a device the host had before the driver touched
//! it, captured over netlink in the host namespace and checkpointed with the plan, so
//! [`super::restore`] can put the device back exactly as it was — even after a
//! restart of the driver.
//!
//! The record also holds what netclaim added *inside the pod* for the device and
//! must take away when it leaves: the policy routing rules it created and a VRF
//! device it created ([`HostOriginals::pod_rules`], [`HostOriginals::pod_vrf`]),
//! so the one restore path undoes them from the checkpoint alone.
//!
//! Capture only reads. Routes the kernel derives itself (the local table, `proto
//! kernel` prefix routes, IPv6 link-local) are left out: re-adding the addresses
//! re-creates them, and adding them by hand would collide with the kernel's own.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    ethtool::{Ethtool, EthtoolError},
    link::{self, LinkFacts, RouteRecord, RTPROT_KERNEL, RT_TABLE_LOCAL},
    netlink::{NlError, NlSocket},
    rules::RuleSpec,
    sysctl::IfSysctls,
};

/// RTN_UNICAST.
const RTN_UNICAST: u8 = 1;
/// Address scopes the driver treats as the host's own configuration (universe, site).
const MAX_GLOBAL_SCOPE: u8 = 200;

/// The host-side state of one device before it was handed to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOriginals {
    pub name: String,
    pub ifindex: u32,
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, ...); `None` for physical devices.
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Permanent address, when the driver reports one (physical NICs): the surest
    /// way to recognise the device wherever it ends up.
    pub perm_mac: Option<[u8; 6]>,
    pub up: bool,
    /// Global (universe/site scope) addresses.
    pub addresses: Vec<IpNet>,
    /// Routes through the device in every table, except the ones the kernel derives.
    pub routes: Vec<RouteRecord>,
    pub gso_max_size: Option<u32>,
    pub gro_max_size: Option<u32>,
    pub gso_ipv4_max_size: Option<u32>,
    pub gro_ipv4_max_size: Option<u32>,
    /// Active state of every named feature (`ethtool -k`). Shared: a start copies a
    /// device's originals into several records, and these two are most of their size.
    pub ethtool_features: Arc<BTreeMap<String, bool>>,
    /// The features the device lets us change (the others are `[fixed]`).
    pub ethtool_changeable: Arc<BTreeSet<String>>,
    /// Private flags and their states; empty when the driver has none.
    pub private_flags: BTreeMap<String, bool>,
    /// `arp_ignore`, `arp_announce` and forwarding on the host (a netns move resets
    /// them); `None` in checkpoints written before they were recorded.
    #[serde(default)]
    pub sysctls: Option<IfSysctls>,
    /// Rules netclaim created in the pod's namespace for this device.
    #[serde(default)]
    pub pod_rules: Vec<RuleSpec>,
    /// A VRF device netclaim created in the pod for this device.
    #[serde(default)]
    pub pod_vrf: Option<String>,
}

/// Why the originals could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("reading link, addresses or routes: {0}")]
    Netlink(#[from] NlError),
    #[error("reading ethtool features: {0}")]
    Ethtool(#[from] EthtoolError),
}

/// Whether a route is one the driver must re-create (see the module docs).
pub fn is_recreatable(route: &RouteRecord) -> bool {
    route.table != RT_TABLE_LOCAL
        && route.protocol != RTPROT_KERNEL
        && route.kind == RTN_UNICAST
        && !is_ipv6_link_local(&route.destination)
}

fn is_ipv6_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(v6) => (v6.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(_) => false,
    }
}

/// Reads the originals of `link` in the calling thread's namespace. Leaves `sock`
/// strict ([`NlSocket::set_strict`]), so the address and route dumps return this link's
/// only, not the whole node's (best effort: a kernel without strict checking returns
/// everything, and the dumps filter it).
pub fn capture(
    sock: &mut NlSocket,
    ethtool: &mut Ethtool,
    link: &LinkFacts,
) -> Result<HostOriginals, CaptureError> {
    let _ = sock.set_strict(true);
    let addresses = link::addresses(sock, link.ifindex)?
        .into_iter()
        .filter(|a| a.scope < MAX_GLOBAL_SCOPE)
        .map(|a| a.net)
        .collect();
    let routes = link::routes(sock, link.ifindex)?
        .into_iter()
        .filter(is_recreatable)
        .collect();
    let features = ethtool.features(link.ifindex)?;
    let private_flags = ethtool.private_flags(link.ifindex)?;
    Ok(HostOriginals {
        name: link.name.clone(),
        ifindex: link.ifindex,
        kind: link.kind.clone(),
        mtu: link.mtu,
        mac: link.mac,
        perm_mac: link.perm_mac,
        up: link.up,
        addresses,
        routes,
        gso_max_size: link.gso_max_size,
        gro_max_size: link.gro_max_size,
        gso_ipv4_max_size: link.gso_ipv4_max_size,
        gro_ipv4_max_size: link.gro_ipv4_max_size,
        ethtool_features: Arc::new(features.active),
        ethtool_changeable: Arc::new(features.changeable),
        private_flags,
        sysctls: Some(link.sysctls),
        pod_rules: Vec::new(),
        pod_vrf: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, table: u32, protocol: u8) -> RouteRecord {
        RouteRecord {
            destination: dst.parse().unwrap(),
            gateway: None,
            source: None,
            scope: 0,
            table,
            priority: None,
            protocol,
            kind: RTN_UNICAST,
        }
    }

    #[test]
    fn kernel_derived_routes_are_not_recreated() {
        assert!(is_recreatable(&route("198.51.100.0/24", 254, 4)));
        assert!(is_recreatable(&route("0.0.0.0/0", 100, 3)));
        assert!(!is_recreatable(&route("192.0.2.0/24", 254, RTPROT_KERNEL)));
        assert!(!is_recreatable(&route("192.0.2.1/32", RT_TABLE_LOCAL, 4)));
        assert!(!is_recreatable(&route("fe80::/64", 254, 4)));
    }

    #[test]
    fn originals_survive_a_checkpoint() {
        let o = HostOriginals {
            name: "eth1".into(),
            ifindex: 4,
            kind: Some("veth".into()),
            mtu: 1500,
            mac: Some([2, 0, 0, 0, 0, 1]),
            perm_mac: None,
            up: true,
            addresses: vec!["192.0.2.1/24".parse().unwrap()],
            routes: vec![route("198.51.100.0/24", 254, 4)],
            gso_max_size: Some(65536),
            gro_max_size: Some(65536),
            gso_ipv4_max_size: Some(65536),
            gro_ipv4_max_size: Some(65536),
            ethtool_features: Arc::new(BTreeMap::from([("rx-gro".into(), true)])),
            ethtool_changeable: Arc::new(BTreeSet::from(["rx-gro".into()])),
            private_flags: BTreeMap::new(),
            sysctls: Some(IfSysctls {
                arp_ignore: Some(1),
                ..Default::default()
            }),
            pod_rules: vec![RuleSpec {
                v6: false,
                priority: 10,
                source: Some("192.0.2.0/24".parse().unwrap()),
                destination: None,
                table: 100,
            }],
            pod_vrf: None,
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<HostOriginals>(&json).unwrap(), o);
        // A checkpoint from before sysctls and pod rules were recorded still loads.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        for k in ["sysctls", "pod_rules", "pod_vrf"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let o2: HostOriginals = serde_json::from_value(old).unwrap();
        assert_eq!(o2.sysctls, None);
        assert!(o2.pod_rules.is_empty());
    }
}
