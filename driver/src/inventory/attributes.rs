//! The attributes one link is published with: a pure function of what netlink,
//! ethtool, sysfs and the BPF queries said about it ([`LinkSources`]), so every rule
//! is unit-tested with plain values and a fake sysfs tree.
//!
//! The set follows what DraNet publishes where it applies to the hardware netclaim
//! sees (names in [`super::device::attr`]), plus netclaim's own (`kind`, `driver`,
//! `speed`, `isSriovVf`, `sriovPf`, `ebpfPrograms`) and the standard
//! `resource.kubernetes.io/{pcieRoot,pciBusID,numaNode}` for PCI functions. Differences
//! from DraNet: `pciVendor`/`pciDevice` are ids (`8086`), not names from a PCI id
//! database the node may lack; `ebpf` also counts XDP programs. Every value stays
//! within the API server's 64-character limit, and a device never has more than
//! [`MAX_ATTRIBUTES`] attributes ([`PUBLISHABLE`] lists every one that can appear).
//!
//! Nothing here touches the kernel or the filesystem.

use std::collections::BTreeMap;

use super::device::{attr, join_limited, limit, AttrValue, STANDARD_DOMAIN};
use super::host::EthtoolFacts;
use super::links::LinkFacts;
use super::sysfs::{is_pci_address, PciFunction};

/// `ResourceSliceMaxAttributesAndCapacitiesPerDevice`: attributes plus capacities of
/// one device (netclaim publishes no capacities).
pub const MAX_ATTRIBUTES: usize = 32;

/// Every attribute a device may carry: (domain is the driver's?, name). Standard ones
/// are in [`STANDARD_DOMAIN`].
pub const PUBLISHABLE: &[(bool, &str)] = &[
    (true, attr::IF_NAME),
    (true, attr::MAC),
    (true, attr::MTU),
    (true, attr::STATE),
    (true, attr::KIND),
    (true, attr::TYPE),
    (true, attr::VIRTUAL),
    (true, attr::ENCAPSULATION),
    (true, attr::ALIAS),
    (true, attr::IPV4),
    (true, attr::IPV6),
    (true, attr::DRIVER),
    (true, attr::SPEED),
    (true, attr::PCI_ADDRESS),
    (true, attr::PCI_VENDOR),
    (true, attr::PCI_DEVICE),
    (true, attr::PCI_SUBSYSTEM),
    (true, attr::NUMA_NODE),
    (true, attr::SRIOV),
    (true, attr::SRIOV_VFS),
    (true, attr::IS_SRIOV_VF),
    (true, attr::SRIOV_PF),
    (true, attr::RDMA),
    (true, attr::EBPF),
    (true, attr::EBPF_PROGRAMS),
    (true, attr::TC_FILTER_NAMES),
    (true, attr::TCX_PROGRAM_NAMES),
    (false, attr::PCIE_ROOT),
    (false, attr::PCI_BUS_ID),
    (false, attr::NUMA_NODE),
];

/// Names of the BPF programs attached to one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkPrograms {
    /// Every attached program (XDP, TCX, tc), by kernel name (or id when it has
    /// none), sorted and deduplicated.
    pub all: Vec<String>,
    /// TCX programs (ingress and egress), by kernel name.
    pub tcx: Vec<String>,
    /// tc `cls_bpf` filters on the clsact hooks, by the name tc reports.
    pub tc_filters: Vec<String>,
}

/// What is known about one link, from every source.
#[derive(Clone, Copy, Debug)]
pub struct LinkSources<'a> {
    pub link: &'a LinkFacts,
    pub ethtool: &'a EthtoolFacts,
    /// The PCI function behind the link, when sysfs knows [`pci_address`].
    pub pci: Option<&'a PciFunction>,
    /// An RDMA device sits on the link itself (soft RoCE, IPoIB), see
    /// [`super::sysfs::RdmaNetdevs`].
    pub rdma_on_link: bool,
    pub programs: &'a LinkPrograms,
}

/// The PCI address of a link: its netlink parent device when that is on the `pci` bus,
/// else ethtool's bus info when it has the shape of one.
pub fn pci_address(link: &LinkFacts, ethtool: &EthtoolFacts) -> Option<String> {
    match (&link.parent_bus, &link.parent_dev) {
        (Some(bus), Some(dev)) if bus == "pci" && is_pci_address(dev) => Some(dev.clone()),
        _ => ethtool.bus_info.clone().filter(|b| is_pci_address(b)),
    }
}

/// netclaim's `kind`: `IFLA_INFO_KIND`; `physical` for a link without one that has a
/// parent device (a NIC); `unknown` otherwise.
pub fn kind(link: &LinkFacts, pci_address: Option<&str>) -> String {
    match &link.kind {
        Some(k) => k.clone(),
        None if pci_address.is_some() || link.parent_dev.is_some() => "physical".into(),
        None => "unknown".into(),
    }
}

/// DraNet's `type` (the Go netlink library's `Link.Type()`): the kind, except `tuntap`
/// for `tun` and `device` for a link without a kind.
pub fn link_type(kind: Option<&str>) -> String {
    match kind {
        None => "device".into(),
        Some("tun") => "tuntap".into(),
        Some(k) => k.to_string(),
    }
}

/// DraNet's `encapsulation`: the link-layer type (`ARPHRD_*`) by the names the Go
/// netlink library gives them (`IfInfomsg.EncapType`), `unknown<N>` for others.
pub fn encapsulation(arphrd: u16) -> String {
    let name = match arphrd {
        0 => "generic",
        1 => "ether",
        2 => "eether",
        3 => "ax25",
        4 => "pronet",
        5 => "chaos",
        6 => "ieee802",
        7 => "arcnet",
        8 => "atalk",
        15 => "dlci",
        19 => "atm",
        23 => "metricom",
        24 => "ieee1394",
        32 => "infiniband",
        256 => "slip",
        257 => "cslip",
        258 => "slip6",
        259 => "cslip6",
        260 => "rsrvd",
        264 => "adapt",
        270 => "rose",
        271 => "x25",
        272 => "hwx25",
        512 => "ppp",
        513 => "hdlc",
        516 => "lapb",
        517 => "ddcmp",
        518 => "rawhdlc",
        768 => "ipip",
        769 => "tunnel6",
        770 => "frad",
        771 => "skip",
        772 => "loopback",
        773 => "ltalk",
        774 => "fddi",
        775 => "bif",
        776 => "sit",
        777 => "ip/ddp",
        778 => "gre",
        779 => "pimreg",
        780 => "hippi",
        781 => "ash",
        782 => "econet",
        783 => "irda",
        784 => "fcpp",
        785 => "fcal",
        786 => "fcpl",
        787..=799 => return format!("fcfb{}", arphrd - 787),
        800 => "tr",
        801 => "ieee802.11",
        802 => "ieee802.11/prism",
        803 => "ieee802.11/radiotap",
        804 => "ieee802.15.4",
        65534 => "none",
        65535 => "void",
        other => return format!("unknown{other}"),
    };
    name.to_string()
}

/// The attributes of one link, keyed by qualified name (`<driver>/<name>` or
/// `resource.kubernetes.io/<name>`).
pub fn link_attributes(driver: &str, src: LinkSources<'_>) -> BTreeMap<String, AttrValue> {
    let LinkSources {
        link: l,
        ethtool: eth,
        pci,
        rdma_on_link,
        programs,
    } = src;
    let q = |n: &str| format!("{driver}/{n}");
    let std = |n: &str| format!("{STANDARD_DOMAIN}/{n}");
    let s = |v: &str| AttrValue::String(limit(v));
    let b = AttrValue::Bool;
    let pci_addr = pci_address(l, eth);

    let mut a: BTreeMap<String, AttrValue> = BTreeMap::new();
    a.insert(q(attr::IF_NAME), s(&l.ifname));
    if let Some(mac) = &l.mac {
        a.insert(q(attr::MAC), s(mac));
    }
    if let Some(mtu) = l.mtu {
        a.insert(q(attr::MTU), AttrValue::Int(i64::from(mtu)));
    }
    if let Some(st) = &l.state {
        a.insert(q(attr::STATE), s(st));
    }
    let kind = kind(l, pci_addr.as_deref());
    a.insert(q(attr::VIRTUAL), b(kind != "physical"));
    a.insert(q(attr::KIND), s(&kind));
    a.insert(q(attr::TYPE), s(&link_type(l.kind.as_deref())));
    a.insert(q(attr::ENCAPSULATION), s(&encapsulation(l.link_layer_type)));
    a.insert(q(attr::ALIAS), s(l.alias.as_deref().unwrap_or("")));
    if let Some(v) = join_limited(&l.ipv4) {
        a.insert(q(attr::IPV4), AttrValue::String(v));
    }
    if let Some(v) = join_limited(&l.ipv6) {
        a.insert(q(attr::IPV6), AttrValue::String(v));
    }
    if let Some(drv) = &eth.driver {
        a.insert(q(attr::DRIVER), s(drv));
    }
    if let Some(speed) = eth.speed {
        a.insert(q(attr::SPEED), AttrValue::Int(i64::from(speed)));
    }

    if let Some(addr) = &pci_addr {
        a.insert(q(attr::PCI_ADDRESS), s(addr));
        a.insert(std(attr::PCI_BUS_ID), s(addr));
    }
    // The PCI facts only count when they describe this link's function.
    let pci = pci.filter(|p| pci_addr.as_deref() == Some(p.address.as_str()));
    if let Some(p) = pci {
        for (name, v) in [
            (attr::PCI_VENDOR, &p.vendor),
            (attr::PCI_DEVICE, &p.device),
            (attr::PCI_SUBSYSTEM, &p.subsystem_device),
        ] {
            if let Some(v) = v {
                a.insert(q(name), s(v));
            }
        }
        if let Some(n) = p.numa_node {
            a.insert(q(attr::NUMA_NODE), AttrValue::Int(n));
            a.insert(std(attr::NUMA_NODE), AttrValue::Int(n));
        }
        if p.is_sriov_pf() {
            a.insert(
                q(attr::SRIOV_VFS),
                AttrValue::Int(p.sriov_num_vfs.unwrap_or(0)),
            );
        }
        if let Some(pf) = &p.physfn {
            a.insert(q(attr::SRIOV_PF), s(pf));
        }
        if let Some(root) = &p.pcie_root {
            a.insert(std(attr::PCIE_ROOT), s(root));
        }
    }
    // Published for every device, as DraNet does, so selectors need no presence check.
    a.insert(q(attr::SRIOV), b(pci.is_some_and(PciFunction::is_sriov_pf)));
    a.insert(q(attr::IS_SRIOV_VF), b(pci.is_some_and(PciFunction::is_vf)));
    a.insert(
        q(attr::RDMA),
        b(rdma_on_link || pci.is_some_and(|p| !p.rdma_devices.is_empty())),
    );

    a.insert(q(attr::EBPF), b(!programs.all.is_empty()));
    if let Some(v) = join_limited(&programs.all) {
        a.insert(q(attr::EBPF_PROGRAMS), AttrValue::String(v));
    }
    if let Some(v) = join_limited(&programs.tc_filters) {
        a.insert(q(attr::TC_FILTER_NAMES), AttrValue::String(v));
    }
    if let Some(v) = join_limited(&programs.tcx) {
        a.insert(q(attr::TCX_PROGRAM_NAMES), AttrValue::String(v));
    }
    debug_assert!(a.len() <= MAX_ATTRIBUTES);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::device::MAX_STRING_LEN;

    fn nic() -> LinkFacts {
        LinkFacts {
            ifindex: 4,
            ifname: "ens1f0".into(),
            mac: Some("0c:42:a1:00:00:01".into()),
            mtu: Some(9000),
            state: Some("up".into()),
            link_layer_type: 1,
            parent_bus: Some("pci".into()),
            parent_dev: Some("0000:3b:00.0".into()),
            ipv4: vec!["192.0.2.5/24".into()],
            ..Default::default()
        }
    }

    fn pf() -> PciFunction {
        PciFunction {
            address: "0000:3b:00.0".into(),
            vendor: Some("15b3".into()),
            device: Some("1017".into()),
            subsystem_device: Some("0007".into()),
            numa_node: Some(1),
            sriov_total_vfs: Some(8),
            sriov_num_vfs: Some(2),
            physfn: None,
            rdma_devices: vec!["mlx5_0".into()],
            pcie_root: Some("pci0000:3a".into()),
        }
    }

    fn get<'a>(a: &'a BTreeMap<String, AttrValue>, name: &str) -> Option<&'a AttrValue> {
        a.get(&format!("netclaim.dev/{name}"))
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::String(v.into())
    }

    #[test]
    fn encapsulation_and_type_spell_like_dranet() {
        assert_eq!(encapsulation(1), "ether");
        assert_eq!(encapsulation(772), "loopback");
        assert_eq!(encapsulation(65534), "none");
        assert_eq!(encapsulation(768), "ipip");
        assert_eq!(encapsulation(778), "gre");
        assert_eq!(encapsulation(32), "infiniband");
        assert_eq!(encapsulation(790), "fcfb3");
        assert_eq!(encapsulation(823), "unknown823");
        assert_eq!(link_type(None), "device");
        assert_eq!(link_type(Some("tun")), "tuntap");
        assert_eq!(link_type(Some("macvlan")), "macvlan");
    }

    #[test]
    fn a_pci_pf_gets_every_pci_fact() {
        let link = nic();
        let (eth, progs, p) = (EthtoolFacts::default(), LinkPrograms::default(), pf());
        let a = link_attributes(
            "netclaim.dev",
            LinkSources {
                link: &link,
                ethtool: &eth,
                pci: Some(&p),
                rdma_on_link: false,
                programs: &progs,
            },
        );
        assert_eq!(get(&a, attr::KIND), Some(&s("physical")));
        assert_eq!(get(&a, attr::TYPE), Some(&s("device")));
        assert_eq!(get(&a, attr::VIRTUAL), Some(&AttrValue::Bool(false)));
        assert_eq!(get(&a, attr::ENCAPSULATION), Some(&s("ether")));
        assert_eq!(get(&a, attr::ALIAS), Some(&s("")));
        assert_eq!(get(&a, attr::PCI_ADDRESS), Some(&s("0000:3b:00.0")));
        assert_eq!(get(&a, attr::PCI_SUBSYSTEM), Some(&s("0007")));
        assert_eq!(get(&a, attr::NUMA_NODE), Some(&AttrValue::Int(1)));
        assert_eq!(get(&a, attr::SRIOV), Some(&AttrValue::Bool(true)));
        assert_eq!(get(&a, attr::SRIOV_VFS), Some(&AttrValue::Int(2)));
        assert_eq!(get(&a, attr::IS_SRIOV_VF), Some(&AttrValue::Bool(false)));
        assert_eq!(get(&a, attr::SRIOV_PF), None);
        assert_eq!(get(&a, attr::RDMA), Some(&AttrValue::Bool(true)));
        let std = |n: &str| a.get(&format!("resource.kubernetes.io/{n}"));
        assert_eq!(std(attr::PCIE_ROOT), Some(&s("pci0000:3a")));
        assert_eq!(std(attr::PCI_BUS_ID), Some(&s("0000:3b:00.0")));
        assert_eq!(std(attr::NUMA_NODE), Some(&AttrValue::Int(1)));
    }

    #[test]
    fn facts_of_another_function_are_ignored() {
        let link = nic();
        let mut other = pf();
        other.address = "0000:3b:00.1".into();
        let (eth, progs) = (EthtoolFacts::default(), LinkPrograms::default());
        let a = link_attributes(
            "netclaim.dev",
            LinkSources {
                link: &link,
                ethtool: &eth,
                pci: Some(&other),
                rdma_on_link: false,
                programs: &progs,
            },
        );
        assert_eq!(get(&a, attr::NUMA_NODE), None);
        assert_eq!(get(&a, attr::SRIOV), Some(&AttrValue::Bool(false)));
        assert_eq!(get(&a, attr::RDMA), Some(&AttrValue::Bool(false)));
    }

    #[test]
    fn virtual_link_has_the_always_present_facts_false() {
        let link = LinkFacts {
            ifname: "tun0".into(),
            kind: Some("tun".into()),
            link_layer_type: 65534,
            alias: Some("a".repeat(100)),
            ..Default::default()
        };
        let eth = EthtoolFacts::default();
        let progs = LinkPrograms {
            all: vec!["a".into(), "b".into()],
            tcx: vec!["a".into()],
            tc_filters: vec!["b".into()],
        };
        let a = link_attributes(
            "netclaim.dev",
            LinkSources {
                link: &link,
                ethtool: &eth,
                pci: None,
                rdma_on_link: true,
                programs: &progs,
            },
        );
        assert_eq!(get(&a, attr::TYPE), Some(&s("tuntap")));
        assert_eq!(get(&a, attr::ENCAPSULATION), Some(&s("none")));
        assert_eq!(
            get(&a, attr::ALIAS),
            Some(&s(&"a".repeat(MAX_STRING_LEN))),
            "cut at 64"
        );
        for f in [attr::SRIOV, attr::IS_SRIOV_VF] {
            assert_eq!(get(&a, f), Some(&AttrValue::Bool(false)), "{f}");
        }
        assert_eq!(
            get(&a, attr::RDMA),
            Some(&AttrValue::Bool(true)),
            "soft RDMA on the link"
        );
        assert_eq!(get(&a, attr::TCX_PROGRAM_NAMES), Some(&s("a")));
        assert_eq!(get(&a, attr::TC_FILTER_NAMES), Some(&s("b")));
        assert_eq!(get(&a, attr::EBPF_PROGRAMS), Some(&s("a,b")));
        assert!(a.keys().all(|k| !k.starts_with("resource.kubernetes.io/")));
    }

    #[test]
    fn publishable_set_fits_the_per_device_limit() {
        assert!(
            PUBLISHABLE.len() <= MAX_ATTRIBUTES,
            "{} attributes can be published, the API allows {MAX_ATTRIBUTES}",
            PUBLISHABLE.len()
        );
        let mut names: Vec<_> = PUBLISHABLE.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PUBLISHABLE.len(), "listed twice");
    }

    #[test]
    fn every_attribute_built_is_listed_as_publishable() {
        // The fullest PF and the fullest VF together use every attribute.
        let mut link = nic();
        link.alias = Some("x".into());
        link.ipv6 = vec!["2001:db8::5/64".into()];
        let eth = EthtoolFacts {
            driver: Some("mlx5_core".into()),
            bus_info: None,
            speed: Some(100_000),
        };
        let progs = LinkPrograms {
            all: vec!["p".into()],
            tcx: vec!["p".into()],
            tc_filters: vec!["p".into()],
        };
        let mut vf = pf();
        vf.physfn = Some("0000:3b:00.0".into());
        let mut seen = std::collections::BTreeSet::new();
        for p in [pf(), vf] {
            let a = link_attributes(
                "netclaim.dev",
                LinkSources {
                    link: &link,
                    ethtool: &eth,
                    pci: Some(&p),
                    rdma_on_link: false,
                    programs: &progs,
                },
            );
            assert!(a.len() <= MAX_ATTRIBUTES, "{}", a.len());
            seen.extend(a.into_keys());
        }
        let listed: std::collections::BTreeSet<String> = PUBLISHABLE
            .iter()
            .map(|(own, n)| {
                let domain = if *own {
                    "netclaim.dev"
                } else {
                    STANDARD_DOMAIN
                };
                format!("{domain}/{n}")
            })
            .collect();
        assert_eq!(seen, listed);
    }
}
