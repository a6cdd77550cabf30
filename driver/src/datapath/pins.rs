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

use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
