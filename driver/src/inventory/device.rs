//! [`Device`] and [`AttrValue`]: what the inventory publishes for one link, in the
//! shape of a ResourceSlice device (`name` + qualified `attributes`).
//!
//! This file only defines the records and the attribute names; it never talks to the
//! kernel. Attribute values follow the ResourceSlice rules: strings and versions are
//! at most [`MAX_STRING_LEN`] characters, so list-valued facts (addresses, program
//! names) are comma-joined and cut at the last whole item that fits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest string (and version) attribute value the API server accepts.
pub const MAX_STRING_LEN: usize = 64;

/// Domain of the standard, driver-independent attributes.
pub const STANDARD_DOMAIN: &str = "resource.kubernetes.io";

/// Attribute names (unqualified; qualified by the driver name when published).
pub mod attr {
    /// Interface name in the node's namespace.
    pub const IF_NAME: &str = "ifName";
    /// MAC address, lowercase `aa:bb:cc:dd:ee:ff`; absent for links without one.
    pub const MAC: &str = "mac";
    pub const MTU: &str = "mtu";
    /// `IFLA_OPERSTATE` spelled as DraNet does: `up`, `down`, `lower-layer-down`,
    /// `not-present`, `testing`, `dormant`, `unknown`,
    /// corrected by admin state and carrier while the kernel's deferred operstate
    /// update is pending (see [`crate::inventory::links::link_state`]).
    pub const STATE: &str = "state";
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, `bridge`, `vxlan`, `tun`, …); `physical`
    /// when the link has no kind but a parent device; `unknown` otherwise.
    pub const KIND: &str = "kind";
    /// `false` only for `kind == "physical"`.
    pub const VIRTUAL: &str = "virtual";
    /// DraNet's `type`: the link kind as the Go netlink library names it — `kind`,
    /// except `tuntap` for `tun` and `device` for a link without a kind (a NIC).
    pub const TYPE: &str = "type";
    /// Link-layer type (`ARPHRD_*` of the link header) spelled as DraNet (the Go
    /// netlink library) does: `ether`, `none` (tun, wireguard), `ipip`, `gre`,
    /// `infiniband`, `loopback`, … Always present.
    pub const ENCAPSULATION: &str = "encapsulation";
    /// `IFLA_IFALIAS` (`ip link set <dev> alias <text>`); `""` when unset, as DraNet
    /// publishes it, so selectors can compare without a presence check.
    pub const ALIAS: &str = "alias";
    /// Global-scope addresses as CIDRs, kernel order (primary first), comma-joined,
    /// as many whole entries as fit in 64 characters. Absent when there are none.
    pub const IPV4: &str = "ipv4";
    pub const IPV6: &str = "ipv6";
    /// PCI address `0000:3b:00.0` (from `IFLA_PARENT_DEV_NAME` or ethtool bus info).
    pub const PCI_ADDRESS: &str = "pciAddress";
    /// PCI vendor / device id, 4 lowercase hex digits as `lspci -n` prints them.
    pub const PCI_VENDOR: &str = "pciVendor";
    pub const PCI_DEVICE: &str = "pciDevice";
    /// PCI subsystem device id (`subsystem_device`), 4 lowercase hex digits.
    pub const PCI_SUBSYSTEM: &str = "pciSubsystem";
    /// NUMA node of the PCI function (`numa_node`), absent when the kernel reports -1.
    /// Published in both the driver's and the standard domain.
    pub const NUMA_NODE: &str = "numaNode";
    /// SR-IOV capable physical function (`sriov_totalvfs > 0`); `false` for non-PCI links.
    pub const SRIOV: &str = "sriov";
    /// VFs currently enabled on the PF (`sriov_numvfs`), only on SR-IOV PFs.
    pub const SRIOV_VFS: &str = "sriovVfs";
    /// The PCI function is a virtual function (it has a `physfn`); `false` otherwise.
    pub const IS_SRIOV_VF: &str = "isSriovVf";
    /// On a VF: the PCI address of its physical function.
    pub const SRIOV_PF: &str = "sriovPf";
    /// The PCI function has an RDMA device (`infiniband/` in sysfs); `false` otherwise.
    pub const RDMA: &str = "rdma";
    /// Kernel driver (ethtool drvinfo), e.g. `veth`, `mlx5_core`.
    pub const DRIVER: &str = "driver";
    /// Link speed in Mb/s (ethtool), only when the driver knows it.
    pub const SPEED: &str = "speed";
    /// Any BPF program attached (XDP, TCX, tc cls_bpf).
    pub const EBPF: &str = "ebpf";
    /// Sorted, comma-joined names of the attached programs (64-char limit as above).
    pub const EBPF_PROGRAMS: &str = "ebpfPrograms";
    /// DraNet's: sorted names of the tc `cls_bpf` filters on clsact ingress/egress (as
    /// tc reports them), only when there are some.
    pub const TC_FILTER_NAMES: &str = "tcFilterNames";
    /// DraNet's: sorted names of the TCX programs (ingress and egress), only when
    /// there are some.
    pub const TCX_PROGRAM_NAMES: &str = "tcxProgramNames";
    /// Standard attribute (domain `resource.kubernetes.io`): `pci<domain>:<bus>`.
    pub const PCIE_ROOT: &str = "pcieRoot";
    /// Standard attribute (domain `resource.kubernetes.io`): the PCI address.
    pub const PCI_BUS_ID: &str = "pciBusID";
}

/// One attribute value, serialised exactly as in a ResourceSlice:
/// `{"string": ..}`, `{"int": ..}`, `{"bool": ..}`, `{"version": ..}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttrValue {
    String(String),
    Int(i64),
    Bool(bool),
    Version(String),
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String(s) | Self::Version(s) => f.write_str(s),
            Self::Int(i) => write!(f, "{i}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One publishable link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// ResourceSlice device name: a DNS label, see [`super::naming`].
    pub name: String,
    /// Interface name in the scanned namespace at scan time.
    pub ifname: String,
    /// Interface index in the scanned namespace at scan time.
    pub ifindex: u32,
    /// Qualified attribute name (`<driver>/ifName`, `resource.kubernetes.io/pcieRoot`) → value.
    pub attributes: BTreeMap<String, AttrValue>,
    /// The link is administratively up but has no carrier. Not published as an
    /// attribute (it would churn the slices); it feeds the kubelet health stream.
    #[serde(skip)]
    pub carrier_lost: bool,
}

impl Device {
    /// The value of attribute `name` in `domain`.
    pub fn attribute(&self, domain: &str, name: &str) -> Option<&AttrValue> {
        self.attributes.get(&format!("{domain}/{name}"))
    }
}

/// Joins `items` with commas, keeping only whole items while the result fits in
/// [`MAX_STRING_LEN`]. `None` when `items` is empty.
pub fn join_limited<I, S>(items: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    let mut any = false;
    for item in items {
        let item = item.as_ref();
        let extra = if out.is_empty() {
            item.len()
        } else {
            item.len() + 1
        };
        if out.len() + extra > MAX_STRING_LEN {
            // Later items might be shorter, but skipping would reorder the list.
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(item);
        any = true;
    }
    any.then_some(out)
}

/// Cuts a single string to [`MAX_STRING_LEN`] bytes on a character boundary.
pub fn limit(s: &str) -> String {
    if s.len() <= MAX_STRING_LEN {
        return s.to_string();
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_value_serialises_like_a_resource_slice() {
        let v = serde_json::to_string(&AttrValue::String("eth0".into())).unwrap();
        assert_eq!(v, r#"{"string":"eth0"}"#);
        assert_eq!(
            serde_json::to_string(&AttrValue::Int(1500)).unwrap(),
            r#"{"int":1500}"#
        );
        assert_eq!(
            serde_json::to_string(&AttrValue::Bool(true)).unwrap(),
            r#"{"bool":true}"#
        );
        let back: AttrValue = serde_json::from_str(r#"{"version":"1.2.3"}"#).unwrap();
        assert_eq!(back, AttrValue::Version("1.2.3".into()));
    }

    #[test]
    fn join_keeps_whole_items_within_limit() {
        assert_eq!(join_limited(Vec::<String>::new()), None);
        assert_eq!(join_limited(["a", "b"]).as_deref(), Some("a,b"));
        let long: Vec<String> = (0..10).map(|i| format!("192.0.2.{i}/24")).collect();
        let joined = join_limited(&long).unwrap();
        assert!(joined.len() <= MAX_STRING_LEN);
        assert!(joined.ends_with("/24"));
        assert_eq!(joined.split(',').count(), 5);
    }
}
