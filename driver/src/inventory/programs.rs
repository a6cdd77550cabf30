//! BPF programs attached to links: XDP (from `IFLA_XDP`), TCX (`BPF_PROG_QUERY`
//! through aya) and tc `cls_bpf` (from the filter dump in [`super::links`]).
//!
//! Attaching or detaching a TCX program, or an XDP program through a bpf_link, sends
//! no netlink notification, so the watcher polls [`ProgramFingerprint`] (one link dump
//! plus two `BPF_PROG_QUERY` per link) every `program_poll` (default 100 ms) and
//! rescans when it changes. tc filter changes do notify (`RTNLGRP_TC`). Read-only.

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{loaded_programs, SchedClassifier, TcAttachType};

use super::links::LinkFacts;

/// Program ids attached per ifindex (XDP and TCX, both directions).
pub type ProgramFingerprint = BTreeMap<u32, BTreeSet<u32>>;

/// TCX program ids and names on `ifname` (both directions), in the calling thread's
/// namespace. Links without TCX support or that vanished report nothing.
pub fn tcx_programs(ifname: &str) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        if let Ok((_, infos)) = SchedClassifier::query_tcx(ifname, dir) {
            for info in infos {
                out.insert(
                    info.id(),
                    info.name_as_str().unwrap_or_default().to_string(),
                );
            }
        }
    }
    out
}

/// The fingerprint of `links` (their XDP ids plus a fresh TCX query each).
pub fn fingerprint(links: &[LinkFacts]) -> ProgramFingerprint {
    links
        .iter()
        .filter(|l| !l.loopback)
        .map(|l| {
            let mut ids = l.xdp_prog_ids.clone();
            ids.extend(tcx_programs(&l.ifname).into_keys());
            (l.ifindex, ids)
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

/// Program id → kernel name, filled lazily from the list of loaded programs. Ids are
/// never reused while the cache lives in practice (the kernel allocates them
/// cyclically), so entries are kept; [`ProgramNames::retain`] drops the stale ones.
#[derive(Debug, Default)]
pub struct ProgramNames {
    names: BTreeMap<u32, String>,
}

impl ProgramNames {
    /// Records names already known (TCX queries return them).
    pub fn learn(&mut self, id: u32, name: &str) {
        if !name.is_empty() {
            self.names.insert(id, name.to_string());
        }
    }

    /// Name of each id; walks the loaded programs once if any id is unknown. An id
    /// whose program has no name (or vanished) is shown as its number.
    pub fn resolve(&mut self, ids: &BTreeSet<u32>) -> Vec<String> {
        if ids.iter().any(|id| !self.names.contains_key(id)) {
            for info in loaded_programs().flatten() {
                if let Some(n) = info.name_as_str().filter(|n| !n.is_empty()) {
                    self.names.insert(info.id(), n.to_string());
                }
            }
        }
        let mut out: Vec<String> = ids
            .iter()
            .map(|id| {
                self.names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Forgets ids not in `live`.
    pub fn retain(&mut self, live: &BTreeSet<u32>) {
        self.names.retain(|id, _| live.contains(id));
    }
}
