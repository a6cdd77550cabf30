//! Where a device's BPF objects are pinned.
//!
//! ```text
//! <bpf-root>/                       --bpf-root, default /sys/fs/bpf/netclaim
//!   <claim-namespace>/<claim-name>/<device>/
//!     link_egress   link_ingress    bpf_link pins (TCX, XDP); hold the attachment
//!     prog_egress   prog_ingress    the loaded programs
//!     NC_COUNTERS NC_ACTIVE NC_SLOTS NC_RT4_A … NC_HITS NC_META   the maps, by name
//! ```
//! Namespace, claim and device names are DNS labels/subdomains, so they are safe path
//! components; [`DatapathKey::new`] refuses anything else.
//!
//! This file also does the pin I/O: [`PinLayout::ensure_root`] checks at start that the
//! root sits on bpffs and creates it, `pin_all` pins a freshly attached instance (maps,
//! then programs, then links) and `remove_pins` removes a device's pins (links first).
//! It never attaches, never writes policy into the maps (only the attachment record in
//! `NC_META`, just before pinning) and never removes clsact filters, which no pin owns
//! (see [`super::attach`]).

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, Map, MapData},
    Ebpf,
};
use netclaim_common::{DatapathMeta, MAP_COUNTERS, MAP_META, PROG_INGRESS_TC, PROG_INGRESS_XDP};

use super::{
    attach::{Attached, IngressMode},
    error::{map_err, DatapathError},
    maps::typed_mut,
};

/// Pin file of the egress link.
pub const LINK_EGRESS: &str = "link_egress";
/// Pin file of the ingress link (XDP, or TCX ingress when XDP could not attach).
pub const LINK_INGRESS: &str = "link_ingress";
/// Pin file of the egress program.
pub const PROG_EGRESS: &str = "prog_egress";
/// Pin file of the ingress program.
pub const PROG_INGRESS: &str = "prog_ingress";

/// Identifies one device of one claim: the unit that owns a data path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatapathKey {
    pub claim_namespace: String,
    pub claim_name: String,
    pub device: String,
}

/// A key component that cannot be used as a pin path component.
#[derive(Debug, thiserror::Error)]
#[error("datapath key {field} {value:?} is not a valid path component (DNS names only)")]
pub struct InvalidKey {
    pub field: &'static str,
    pub value: String,
}

impl DatapathKey {
    pub fn new(
        claim_namespace: impl Into<String>,
        claim_name: impl Into<String>,
        device: impl Into<String>,
    ) -> Result<Self, InvalidKey> {
        let key = Self {
            claim_namespace: claim_namespace.into(),
            claim_name: claim_name.into(),
            device: device.into(),
        };
        for (field, value) in [
            ("claim namespace", &key.claim_namespace),
            ("claim name", &key.claim_name),
            ("device", &key.device),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 253
                && value != "."
                && value != ".."
                && value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok {
                return Err(InvalidKey {
                    field,
                    value: value.clone(),
                });
            }
        }
        Ok(key)
    }
}

impl std::fmt::Display for DatapathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.claim_namespace, self.claim_name, self.device
        )
    }
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why the root of the pin tree cannot be used. The messages leave the root itself to
/// the caller (it names the flag it came from).
#[derive(Debug, thiserror::Error)]
pub enum PinRootError {
    #[error("cannot stat its parent {parent}")]
    Stat {
        parent: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{parent} is not a bpffs mount (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { parent: PathBuf },
    #[error("creating {root}")]
    Create {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pin tree under one bpffs directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that the root's parent is a bpffs mount (pins can live nowhere else),
    /// then creates the root if it is missing.
    pub fn ensure_root(&self) -> Result<(), PinRootError> {
        let root = self.root.as_path();
        let parent = root.parent().unwrap_or(root);
        let st = nix::sys::statfs::statfs(parent).map_err(|source| PinRootError::Stat {
            parent: parent.to_owned(),
            source,
        })?;
        if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(PinRootError::NotBpffs {
                parent: parent.to_owned(),
            });
        }
        std::fs::create_dir_all(root).map_err(|source| PinRootError::Create {
            root: root.to_owned(),
            source,
        })
    }

    /// The directory holding one device's pins.
    pub fn device_dir(&self, key: &DatapathKey) -> PathBuf {
        self.root
            .join(&key.claim_namespace)
            .join(&key.claim_name)
            .join(&key.device)
    }

    /// Every device directory present under the root: what a restarted driver or
    /// `netclaim inspect` finds. Unreadable or malformed entries are skipped.
    pub fn devices(&self) -> Vec<DatapathKey> {
        let mut found = Vec::new();
        for ns in read_dirs(&self.root) {
            for claim in read_dirs(&self.root.join(&ns)) {
                for device in read_dirs(&self.root.join(&ns).join(&claim)) {
                    if let Ok(key) = DatapathKey::new(ns.clone(), claim.clone(), device) {
                        found.push(key);
                    }
                }
            }
        }
        found.sort();
        found
    }

    /// Removes the device directory's now-empty parents up to (not including) the root.
    pub fn prune_parents(&self, key: &DatapathKey) {
        let claim = self.root.join(&key.claim_namespace).join(&key.claim_name);
        let _ = std::fs::remove_dir(&claim);
        let _ = std::fs::remove_dir(self.root.join(&key.claim_namespace));
    }
}

fn read_dirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Pins maps, programs and links. The links are pinned last: until then, dropping
/// them (on error) detaches the programs.
pub(super) fn pin_all(
    ebpf: &mut Ebpf,
    key: &DatapathKey,
    dir: &Path,
    attached: &mut Attached,
) -> Result<(), DatapathError> {
    let pin_err = |path: &Path, e: &dyn std::fmt::Display| DatapathError::Pin {
        key: key.to_string(),
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    if dir.join(MAP_COUNTERS).exists() {
        return Err(pin_err(dir, &"already holds a data path (detach it first)"));
    }
    if dir.exists() {
        // No marker: what is there is the rest of a removal or an attach that was cut
        // short, and no data path; it would only make the pins below collide.
        tracing::warn!(path = %dir.display(), "removing the leftovers of a cut-short data path before pinning");
        remove_pins(dir);
    }
    std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, &e))?;
    // Test builds: a fail point in front of the meta update and of every pin.
    let injected = |path: &Path| match crate::failpoints::fires(crate::failpoints::BPF) {
        Some(text) => Err(pin_err(path, &text)),
        None => Ok(()),
    };
    injected(dir)?;
    {
        let mut meta: Array<&mut MapData, DatapathMeta> = typed_mut(ebpf, key, MAP_META)?;
        meta.set(0, attached.meta, 0)
            .map_err(|e| map_err(key, MAP_META, e))?;
    }
    for (name, map) in ebpf.maps() {
        if name.starts_with("NC_") {
            let path = dir.join(name);
            injected(&path)?;
            map.pin(&path).map_err(|e| pin_err(&path, &e))?;
        }
    }
    let ingress_prog = match IngressMode::from_code(attached.meta.ingress_mode) {
        Some(IngressMode::XdpNative | IngressMode::XdpGeneric) => PROG_INGRESS_XDP,
        _ => PROG_INGRESS_TC,
    };
    for (prog, file) in [
        (netclaim_common::PROG_EGRESS, PROG_EGRESS),
        (ingress_prog, PROG_INGRESS),
    ] {
        let path = dir.join(file);
        if let Some(p) = ebpf.program_mut(prog) {
            injected(&path)?;
            p.pin(&path).map_err(|e| pin_err(&path, &e))?;
        }
    }
    for (link, file) in [
        (attached.egress_link.take(), LINK_EGRESS),
        (attached.ingress_link.take(), LINK_INGRESS),
    ] {
        if let Some(link) = link {
            let path = dir.join(file);
            injected(&path)?;
            // Dropping the PinnedLink closes our fd; the pin keeps the link alive.
            link.pin(&path).map_err(|e| pin_err(&path, &e))?;
        }
    }
    Ok(())
}

/// Whether `pin` is a link's pin file.
fn is_link(pin: &Path) -> bool {
    pin.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("link_"))
}

/// Where a pin comes in a removal: links first, so the programs are off the device
/// before anything else goes; the marker map ([`MAP_COUNTERS`], which
/// [`super::AttachedDatapath::adopt`] and [`pin_all`] look for) last, so a removal cut
/// short still reads as a data path and the next one finishes it.
fn removal_rank(pin: &Path) -> u8 {
    if is_link(pin) {
        0
    } else if pin.file_name().and_then(|n| n.to_str()) == Some(MAP_COUNTERS) {
        2
    } else {
        1
    }
}

/// The meta map's entry of a pin directory, if that map is still pinned and readable
/// (a partial data path's clsact filters are found through it).
pub(super) fn pinned_meta(dir: &Path) -> Option<DatapathMeta> {
    let data = MapData::from_pin(dir.join(MAP_META)).ok()?;
    let meta: Array<MapData, DatapathMeta> = Map::Array(data).try_into().ok()?;
    meta.get(&0, 0).ok()
}

/// Removes a device's pin directory and everything in it: each link detached from
/// its hook first, so the programs are off the device when this returns.
pub(super) fn remove_pins(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort_by_key(|p| removal_rank(p));
        for f in files {
            if is_link(&f) {
                // Detached now, in this thread, rather than by the kernel's deferred
                // release of the unpinned link (see `syscall::detach_link`). A link
                // whose device is gone or that a restart found detached refuses; the
                // pin goes all the same.
                if let Err(e) = super::syscall::detach_link(&f) {
                    tracing::debug!(path = %f.display(), error = %e, "detaching link before unpinning");
                }
            }
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(path = %f.display(), error = %e, "removing pin");
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_takes_links_first_and_the_marker_last() {
        let dir = Path::new("/sys/fs/bpf/netclaim/default/c/eth1");
        let mut pins: Vec<PathBuf> = [
            MAP_COUNTERS,
            "NC_HITS",
            PROG_EGRESS,
            LINK_INGRESS,
            MAP_META,
            LINK_EGRESS,
            "link_guard_sockopt",
        ]
        .iter()
        .map(|n| dir.join(n))
        .collect();
        pins.sort_by_key(|p| removal_rank(p));
        let names: Vec<&str> = pins
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert!(
            names[..3].iter().all(|n| n.starts_with("link_")),
            "{names:?}"
        );
        assert_eq!(names.last(), Some(&MAP_COUNTERS), "{names:?}");
    }

    #[test]
    fn keys_must_be_dns_names() {
        assert!(DatapathKey::new("default", "claim-a", "eth1").is_ok());
        for bad in ["", "..", "a/b", "Upper", "sp ace"] {
            let err = DatapathKey::new("default", bad, "eth1").unwrap_err();
            assert_eq!(err.field, "claim name");
        }
    }

    #[test]
    fn device_dir_is_namespace_claim_device() {
        let layout = PinLayout::new("/sys/fs/bpf/netclaim");
        let key = DatapathKey::new("ns1", "c1", "veth0").unwrap();
        assert_eq!(
            layout.device_dir(&key),
            PathBuf::from("/sys/fs/bpf/netclaim/ns1/c1/veth0")
        );
    }
}
