//! A fake sysfs tree in a temporary directory, for the hardware these machines lack:
//! PCI network functions with NUMA nodes, SR-IOV physical functions with their
//! virtual functions, RDMA devices. Laid out as the kernel does it: the function's
//! directory lives under `devices/pci<domain>:<bus>/<bridge>/…/<address>` and
//! `bus/pci/devices/<address>` is a relative symlink to it; a VF has a `physfn`
//! symlink to its PF and the PF a `virtfn<N>` symlink to each VF. RDMA devices on
//! net devices (soft RoCE) appear under `class/infiniband`. Removed on drop.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One PCI function to create.
#[derive(Clone, Debug, Default)]
pub struct FakePciFunction {
    /// `dddd:bb:dd.f`.
    pub address: String,
    /// Directories between `devices/` and the function, root complex first, e.g.
    /// `["pci0000:3a", "0000:3a:00.0"]`.
    pub parents: Vec<String>,
    /// Written as `0x<hex>` like the kernel does.
    pub vendor: Option<String>,
    pub device: Option<String>,
    pub subsystem_device: Option<String>,
    /// Written as is (the kernel writes -1 when there is no NUMA affinity).
    pub numa_node: Option<i64>,
    pub sriov_totalvfs: Option<i64>,
    pub sriov_numvfs: Option<i64>,
    /// Address of the PF, for a VF.
    pub physfn: Option<String>,
    /// Entries under `infiniband/`.
    pub rdma: Vec<String>,
}

/// The tree; its root plays `/sys`.
pub struct FakeSysfs {
    dir: tempfile::TempDir,
}

impl FakeSysfs {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir().context("temporary sysfs root")?;
        std::fs::create_dir_all(dir.path().join("bus/pci/devices"))?;
        Ok(Self { dir })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn function_dir(&self, f: &FakePciFunction) -> PathBuf {
        let mut p = self.root().join("devices");
        for parent in &f.parents {
            p.push(parent);
        }
        p.join(&f.address)
    }

    /// Creates `f` (its parents, attribute files, bus symlink, SR-IOV links).
    pub fn add(&self, f: &FakePciFunction) -> Result<()> {
        let dir = self.function_dir(f);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, value: String| {
            std::fs::write(dir.join(name), format!("{value}\n"))
                .with_context(|| format!("writing {name} of {}", f.address))
        };
        for (name, v) in [
            ("vendor", &f.vendor),
            ("device", &f.device),
            ("subsystem_device", &f.subsystem_device),
        ] {
            if let Some(v) = v {
                write(name, format!("0x{v}"))?;
            }
        }
        for (name, v) in [
            ("numa_node", f.numa_node),
            ("sriov_totalvfs", f.sriov_totalvfs),
            ("sriov_numvfs", f.sriov_numvfs),
        ] {
            if let Some(v) = v {
                write(name, v.to_string())?;
            }
        }
        for r in &f.rdma {
            std::fs::create_dir_all(dir.join("infiniband").join(r))?;
        }
        // bus/pci/devices/<address> -> ../../../devices/<parents>/<address>
        let rel = Path::new("../../../devices")
            .join(f.parents.iter().collect::<PathBuf>())
            .join(&f.address);
        symlink(&rel, self.root().join("bus/pci/devices").join(&f.address))
            .with_context(|| format!("bus link of {}", f.address))?;
        if let Some(pf) = &f.physfn {
            // Siblings under the same bridge, as SR-IOV functions are.
            symlink(Path::new("..").join(pf), dir.join("physfn"))?;
            let pf_dir = dir
                .parent()
                .map(|p| p.join(pf))
                .context("VF without a parent directory")?;
            let n = std::fs::read_dir(&pf_dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("virtfn"))
                        .count()
                })
                .unwrap_or(0);
            symlink(
                Path::new("..").join(&f.address),
                pf_dir.join(format!("virtfn{n}")),
            )?;
        }
        Ok(())
    }

    /// An RDMA device `rdma` whose port 1 GID table names `netdev` (as soft RoCE on
    /// an Ethernet link shows it).
    pub fn add_rdma_on_netdev(&self, rdma: &str, netdev: &str) -> Result<()> {
        let ndevs = self
            .root()
            .join("class/infiniband")
            .join(rdma)
            .join("ports/1/gid_attrs/ndevs");
        std::fs::create_dir_all(&ndevs)?;
        std::fs::write(ndevs.join("0"), format!("{netdev}\n"))?;
        Ok(())
    }
}
