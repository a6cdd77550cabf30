//! The pods' network namespaces, held open while they have our devices.
//!
//! A runtime may forget to tell a plugin that a pod stopped: containerd sends no
//! StopPodSandbox or RemovePodSandbox for pods that were running before it restarted
//! (containerd issue 8426). The pod's namespace is then torn down with our device in
//! it: a veth dies with it, a physical NIC falls back into the root namespace with the
//! pod's name and addresses. So netclaim does not depend on those events.
//!
//! While a pod has devices, the keeper holds a file descriptor of its namespace. That
//! keeps the namespace, and the devices in it, alive after the runtime removed it. A
//! periodic check compares the runtime's bind mount with the held namespace: when the
//! mount is gone, or names another namespace, the pod is over, and its devices are
//! given back from the held namespace exactly as a stop would. Then the descriptor is
//! closed and the kernel frees the namespace.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt, path::PathBuf};

use crate::netns::Netns;

/// One held namespace.
struct Held {
    netns: Netns,
    /// The nsfs inode of the namespace (what its bind mount must still show).
    ino: u64,
    dev: u64,
}

/// What the runtime's mount path shows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountView {
    /// The path names a namespace with this (device, inode).
    Names(u64, u64),
    /// The path does not exist.
    Missing,
    /// The path could not be inspected (permissions, I/O); no conclusion.
    Unknown,
}

/// Whether a pod whose namespace we hold is over, given its mount path's view.
pub fn is_over(held: (u64, u64), view: MountView) -> bool {
    match view {
        MountView::Names(dev, ino) => (dev, ino) != held,
        MountView::Missing => true,
        MountView::Unknown => false,
    }
}

fn view_of(path: &std::path::Path) -> MountView {
    match std::fs::metadata(path) {
        Ok(m) => MountView::Names(m.dev(), m.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => MountView::Missing,
        Err(_) => MountView::Unknown,
    }
}

/// Pod UID → its held namespace.
#[derive(Default)]
pub struct Keeper {
    held: BTreeMap<String, Held>,
}

impl Keeper {
    /// Holds `netns` for pod `uid` (replacing an earlier hold).
    pub fn hold(&mut self, uid: &str, netns: &Netns) {
        let Ok(meta) = netns.file().metadata() else {
            return;
        };
        let Ok(copy) = netns.try_clone() else {
            return;
        };
        self.held.insert(
            uid.to_string(),
            Held {
                netns: copy,
                ino: meta.ino(),
                dev: meta.dev(),
            },
        );
    }

    /// A handle to the held namespace of pod `uid`.
    pub fn get(&self, uid: &str) -> Option<Netns> {
        self.held.get(uid).and_then(|h| h.netns.try_clone().ok())
    }

    /// Closes pod `uid`'s namespace.
    pub fn release(&mut self, uid: &str) {
        self.held.remove(uid);
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Pods whose runtime mount no longer shows the namespace we hold.
    pub fn over(&self) -> Vec<(String, PathBuf)> {
        self.held
            .iter()
            .filter(|(_, h)| is_over((h.dev, h.ino), view_of(h.netns.path())))
            .map(|(uid, h)| (uid.clone(), h.netns.path().to_path_buf()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_over_when_its_mount_is_gone_or_replaced() {
        let held = (4, 4026532000);
        assert!(!is_over(held, MountView::Names(4, 4026532000)));
        assert!(
            is_over(held, MountView::Names(4, 4026532999)),
            "a new namespace at the same path"
        );
        assert!(is_over(held, MountView::Names(5, 4026532000)));
        assert!(is_over(held, MountView::Missing));
        assert!(
            !is_over(held, MountView::Unknown),
            "no conclusion from an unreadable path"
        );
    }

    #[test]
    fn the_keeper_sees_a_removed_mount() {
        // A namespace file stand-in: the keeper only compares what the path shows with
        // what the held descriptor is.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        std::fs::write(&path, b"").unwrap();
        let ns = Netns::open(&path).unwrap();
        let mut k = Keeper::default();
        k.hold("pod-a", &ns);
        assert!(k.over().is_empty());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(k.over(), vec![("pod-a".to_string(), path.clone())]);
        // Another file at the same path is another namespace.
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(k.over().len(), 1);
        k.release("pod-a");
        assert!(k.over().is_empty() && k.is_empty());
    }
}
