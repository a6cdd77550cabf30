//! What sysfs says about the PCI function behind a network link: vendor, device and
//! subsystem ids, NUMA node, SR-IOV (as physical function: VFs possible and enabled; as
//! virtual function: its physical function), RDMA devices and the PCIe root complex.
//!
//! [`RdmaNetdevs`] finds RDMA devices by the net device they sit on (soft RoCE on any
//! Ethernet link, IPoIB by GUID), as DraNet's `rdmamap` does.
//!
//! Everything is read below a [`SysfsRoot`] (normally `/sys`), so tests build a fake
//! tree in a temporary directory with the same files and symlinks the kernel makes.
//! PCI devices are not namespaced: `/sys/bus/pci/devices/<address>` describes the same
//! hardware whatever network namespace sysfs was mounted for. The PCI *address* comes
//! from netlink or ethtool of the link in the scanned namespace (see
//! [`super::attributes::pci_address`]), never from `/sys/class/net`. Read-only.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Where sysfs is mounted. Every read of this module is below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsRoot(PathBuf);

impl Default for SysfsRoot {
    fn default() -> Self {
        Self(PathBuf::from("/sys"))
    }
}

impl SysfsRoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `<root>/bus/pci/devices/<address>`: a symlink into `<root>/devices/...`.
    fn pci_link(&self, address: &str) -> PathBuf {
        self.0.join("bus/pci/devices").join(address)
    }

    /// The facts of the PCI function at `address` (`dddd:bb:dd.f`), or `None` when the
    /// address is malformed or sysfs does not know it. Missing files leave their
    /// field empty: a device without SR-IOV has no `sriov_totalvfs`, a machine without
    /// NUMA reports `numa_node` -1.
    pub fn pci_function(&self, address: &str) -> Option<PciFunction> {
        if !is_pci_address(address) {
            return None;
        }
        let dir = self.pci_link(address);
        if !dir.exists() {
            return None;
        }
        let read = |f: &str| read_trimmed(&dir.join(f));
        let hex = |f: &str| read(f).map(|s| s.trim_start_matches("0x").to_ascii_lowercase());
        let int = |f: &str| read(f).and_then(|s| s.parse::<i64>().ok());
        let physfn = std::fs::read_link(dir.join("physfn")).ok().and_then(|t| {
            t.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| is_pci_address(n))
        });
        let rdma_devices = dir_names(&dir.join("infiniband"));
        Some(PciFunction {
            address: address.to_string(),
            vendor: hex("vendor"),
            device: hex("device"),
            subsystem_device: hex("subsystem_device"),
            // -1 means "no NUMA affinity": publishing it would make every such device
            // match every other one under matchAttribute.
            numa_node: int("numa_node").filter(|n| *n >= 0),
            sriov_total_vfs: int("sriov_totalvfs"),
            sriov_num_vfs: int("sriov_numvfs"),
            physfn,
            rdma_devices,
            pcie_root: self
                .pcie_root(address)
                .map_err(|e| tracing::debug!(error = %e, "no pcieRoot"))
                .ok(),
        })
    }

    /// The PCIe root complex of `address`, `pci<domain>:<bus>`, as the Kubernetes
    /// helper `deviceattribute.GetPCIeRootAttributeByPCIBusID` derives it: the target
    /// of `<root>/bus/pci/devices/<address>` must lie below `<root>/devices/pci…` and
    /// end with the address; the root is its first component below `devices/`.
    pub fn pcie_root(&self, address: &str) -> Result<String, PcieRootError> {
        let link = self.pci_link(address);
        let target = std::fs::read_link(&link).map_err(|source| PcieRootError::Unreadable {
            link: link.clone(),
            source,
        })?;
        // A relative target is relative to the link's directory; resolve it lexically
        // (as Go's filepath.Join does), not through the filesystem.
        let target = match link.parent() {
            Some(dir) if target.is_relative() => clean(&dir.join(&target)),
            _ => clean(&target),
        };
        let devices = clean(&self.0.join("devices"));
        let invalid = |why: &'static str| PcieRootError::Invalid {
            link: link.clone(),
            target: target.clone(),
            why,
        };
        let below = target
            .strip_prefix(&devices)
            .map_err(|_| invalid("not below <sysfs>/devices"))?;
        let root = below
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|r| r.starts_with("pci"))
            .ok_or_else(|| invalid("not below <sysfs>/devices/pci…"))?;
        if target.file_name().is_none_or(|n| n != address) {
            return Err(invalid("does not end with the PCI address"));
        }
        Ok(root)
    }
}

impl SysfsRoot {
    /// Every RDMA device of `<root>/class/infiniband` indexed by the net devices its
    /// ports' GID tables name (`ports/<p>/gid_attrs/ndevs/<i>`) and by its
    /// `node_guid`. Read once per scan; empty when there is no RDMA device at all.
    pub fn rdma_netdevs(&self) -> RdmaNetdevs {
        let mut out = RdmaNetdevs::default();
        let class = self.0.join("class/infiniband");
        for dev in dir_names(&class) {
            let dir = class.join(&dev);
            if let Some(guid) = read_trimmed(&dir.join("node_guid")).and_then(|g| hex_bytes(&g)) {
                out.by_guid.insert(guid, dev.clone());
            }
            for port in dir_names(&dir.join("ports")) {
                let ndevs = dir.join("ports").join(port).join("gid_attrs/ndevs");
                // Unused GID slots fail to read (EINVAL on a real kernel): skipped.
                for slot in dir_names(&ndevs) {
                    if let Some(netdev) = read_trimmed(&ndevs.join(slot)) {
                        let devs = out.by_netdev.entry(netdev).or_default();
                        if !devs.contains(&dev) {
                            devs.push(dev.clone());
                        }
                    }
                }
            }
        }
        out
    }
}

/// RDMA devices by net device, from `<root>/class/infiniband`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RdmaNetdevs {
    by_netdev: BTreeMap<String, Vec<String>>,
    by_guid: BTreeMap<Vec<u8>, String>,
}

/// `ARPHRD_INFINIBAND`.
const ARPHRD_INFINIBAND: u16 = 32;

impl RdmaNetdevs {
    /// Whether an RDMA device sits on the link: for IPoIB (`link_layer_type` 32), one
    /// whose `node_guid` is the last 8 bytes of the 20-byte hardware address; for
    /// others, one whose GID table names `ifname`.
    pub fn has_rdma(&self, ifname: &str, link_layer_type: u16, mac: Option<&str>) -> bool {
        if link_layer_type == ARPHRD_INFINIBAND {
            let eui = mac
                .and_then(hex_bytes)
                .filter(|b| b.len() == 20)
                .map(|b| b[12..].to_vec());
            return eui.is_some_and(|e| self.by_guid.contains_key(&e));
        }
        self.by_netdev.contains_key(ifname)
    }
}

/// Bytes of `aa:bb:…` or `aabb:ccdd:…` (hex digits, colons ignored).
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|c| *c != b':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// Entry names of a directory, sorted; none when it cannot be read.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Why the PCIe root of a function could not be derived (the attribute is then left
/// out; the error is only logged at debug level).
#[derive(Debug, thiserror::Error)]
pub enum PcieRootError {
    #[error("pcieRoot: reading the symlink {link}: {source}")]
    Unreadable {
        link: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pcieRoot: symlink {link} points to {target}, which is {why}")]
    Invalid {
        link: PathBuf,
        target: PathBuf,
        why: &'static str,
    },
}

/// What sysfs knows about one PCI function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciFunction {
    /// `dddd:bb:dd.f`.
    pub address: String,
    /// `vendor`, `device`, `subsystem_device`: 4 lowercase hex digits, no `0x`.
    pub vendor: Option<String>,
    pub device: Option<String>,
    pub subsystem_device: Option<String>,
    /// `numa_node`, only when it is not negative.
    pub numa_node: Option<i64>,
    /// `sriov_totalvfs` / `sriov_numvfs` (present on SR-IOV capable physical functions).
    pub sriov_total_vfs: Option<i64>,
    pub sriov_num_vfs: Option<i64>,
    /// For a virtual function, the address its `physfn` symlink names.
    pub physfn: Option<String>,
    /// Names below `infiniband/` (e.g. `mlx5_0`): the RDMA devices of this function.
    pub rdma_devices: Vec<String>,
    /// `pci<domain>:<bus>`.
    pub pcie_root: Option<String>,
}

impl PciFunction {
    /// SR-IOV capable physical function (`sriov_totalvfs > 0`).
    pub fn is_sriov_pf(&self) -> bool {
        self.sriov_total_vfs.unwrap_or(0) > 0
    }

    /// A virtual function (has a `physfn`).
    pub fn is_vf(&self) -> bool {
        self.physfn.is_some()
    }
}

/// Whether `s` looks like a PCI address `dddd:bb:dd.f` (hex digits).
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `path` with `.` dropped and `..` applied to the part before it, without touching
/// the filesystem.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn pci_address_shape() {
        assert!(is_pci_address("0000:3b:00.0"));
        assert!(!is_pci_address("virtio0"));
        assert!(!is_pci_address("0000:3b:00:0"));
        assert!(!is_pci_address("3b:00.0"));
    }

    #[test]
    fn clean_is_lexical() {
        assert_eq!(
            clean(Path::new(
                "/sys/bus/pci/devices/../../../devices/pci0000:00/./x"
            )),
            PathBuf::from("/sys/devices/pci0000:00/x")
        );
    }

    /// One function `0000:3b:00.0` behind a bridge; `target` overrides where the bus
    /// link points.
    fn tree(target: Option<&str>) -> (tempfile::TempDir, SysfsRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path());
        let dev = dir
            .path()
            .join("devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(dir.path().join("bus/pci/devices")).unwrap();
        symlink(
            target.unwrap_or("../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0"),
            root.pci_link("0000:3b:00.0"),
        )
        .unwrap();
        (dir, root)
    }

    #[test]
    fn pcie_root_follows_the_upstream_rule() {
        let (_d, root) = tree(None);
        assert_eq!(root.pcie_root("0000:3b:00.0").unwrap(), "pci0000:3a");
        assert!(matches!(
            root.pcie_root("0000:3c:00.0"),
            Err(PcieRootError::Unreadable { .. })
        ));
        // Not below devices/pci… (e.g. a platform bus).
        let (_d, root) = tree(Some("../../../devices/platform/0000:3b:00.0"));
        let err = root.pcie_root("0000:3b:00.0").unwrap_err().to_string();
        assert!(err.contains("devices/pci"), "{err}");
        // Points at another function.
        let (_d, root) = tree(Some("../../../devices/pci0000:3a/0000:3b:00.1"));
        let err = root.pcie_root("0000:3b:00.0").unwrap_err().to_string();
        assert!(err.contains("does not end"), "{err}");
    }

    #[test]
    fn rdma_found_by_netdev_and_by_ipoib_guid() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path());
        assert_eq!(root.rdma_netdevs(), RdmaNetdevs::default(), "no class dir");
        let rxe = dir.path().join("class/infiniband/rxe0");
        let ndevs = rxe.join("ports/1/gid_attrs/ndevs");
        std::fs::create_dir_all(&ndevs).unwrap();
        std::fs::write(ndevs.join("0"), "veth7\n").unwrap();
        std::fs::write(ndevs.join("1"), "veth7\n").unwrap();
        std::fs::create_dir(ndevs.join("2")).unwrap(); // unreadable slot
        let ib = dir.path().join("class/infiniband/mlx5_1");
        std::fs::create_dir_all(&ib).unwrap();
        std::fs::write(ib.join("node_guid"), "0c42:a103:0065:ba4e\n").unwrap();

        let idx = root.rdma_netdevs();
        assert!(idx.has_rdma("veth7", 1, None));
        assert!(!idx.has_rdma("veth8", 1, None));
        let ipoib = "00:00:10:29:fe:80:00:00:00:00:00:00:0c:42:a1:03:00:65:ba:4e";
        assert!(idx.has_rdma("ib0", 32, Some(ipoib)));
        let other = "00:00:10:29:fe:80:00:00:00:00:00:00:0c:42:a1:03:00:65:ba:4f";
        assert!(!idx.has_rdma("ib0", 32, Some(other)));
        assert!(
            !idx.has_rdma("veth7", 32, Some("aa:bb")),
            "IPoIB only by GUID"
        );
    }

    #[test]
    fn missing_files_leave_fields_empty() {
        let (_d, root) = tree(None);
        let f = root.pci_function("0000:3b:00.0").unwrap();
        assert_eq!(
            f,
            PciFunction {
                address: "0000:3b:00.0".into(),
                pcie_root: Some("pci0000:3a".into()),
                ..Default::default()
            }
        );
        assert!(!f.is_sriov_pf() && !f.is_vf());
        assert!(root.pci_function("0000:99:00.0").is_none());
        assert!(root.pci_function("../../etc").is_none());
    }
}
