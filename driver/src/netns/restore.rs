//! Giving a device back to the host: [`restore`] undoes [`super::move_and_configure`]
//! from the checkpointed [`HostOriginals`] alone.
//!
//! Steps: find the device (pod namespace by its pod-side name; else still at home;
//! else fallen back into the root namespace); in the pod, remove the policy routing
//! rules and the VRF netclaim created there (recorded in the originals; permanent
//! neighbours go with the device, the kernel flushes them on the move); move it home
//! in one `RTM_SETLINK` that also renames it and restores MTU, MAC and GSO/GRO sizes,
//! then — at home — the addresses, admin state, routes, the per-interface sysctls
//! (`arp_ignore`, `arp_announce`, forwarding: the move reset them to the host's
//! defaults), ethtool features and private flags. Every step
//! is attempted even if an earlier one failed; what could not be restored is
//! reported together ([`RestoreError::Incomplete`]).
//!
//! Why the root namespace: when a pod's namespace is destroyed, the kernel moves
//! physical and macvlan devices to `init_net` under their pod-side name (or `devN`
//! when that name is taken) — not to the namespace that played "host" — while veth
//! ends are destroyed with it. [`restore_device`] takes the root namespace as a
//! parameter so tests can hand it a namespace that *plays* root: a test must never
//! let the kernel drop a device into the machine's real root namespace.

use std::os::fd::AsRawFd;

use super::{
    configure::per_field,
    ethtool::Ethtool,
    host::HostOriginals,
    link::{self, LinkChange, LinkFacts},
    netlink::{NlError, NlSocket},
    rules, sysctl, vrf, Netns, NetnsError,
};

/// How the device is known inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSide {
    pub name: String,
    pub ifindex: Option<u32>,
    /// MAC in the pod (differs from the original when the claim set one).
    pub mac: Option<[u8; 6]>,
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The device is home with its original settings.
    Restored { ifindex: u32 },
    /// The device had fallen back into the root namespace; it is home now.
    RestoredFromRoot { ifindex: u32 },
    /// The device no longer exists (a veth end destroyed with its namespace).
    Gone,
}

/// Why a device could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("device {device}: moving it back to the host as {original}: {source}")]
    Move {
        device: String,
        original: String,
        #[source]
        source: NlError,
    },
    #[error("device {device}: not found in the host after moving it back")]
    Lost { device: String },
    /// Looking for it at home failed (not the same as not finding it).
    #[error("device {device}: looking it up in the host after moving it back: {source}")]
    Lookup {
        device: String,
        #[source]
        source: NlError,
    },
    #[error("device {device}: restored only partly: {}", problems.join("; "))]
    Incomplete {
        device: String,
        problems: Vec<String>,
    },
}

/// Restores `pod_ifname` (in `pod`, if the namespace still exists) to the host as
/// `originals` describe it. A device that fell back to the root namespace is looked
/// up in `/proc/1/ns/net`.
pub fn restore(
    host: &Netns,
    pod: Option<&Netns>,
    pod_ifname: &str,
    originals: &HostOriginals,
) -> Result<RestoreOutcome, RestoreError> {
    let side = PodSide {
        name: pod_ifname.to_string(),
        ifindex: None,
        mac: None,
    };
    let root = Netns::open("/proc/1/ns/net").ok();
    restore_device(host, pod, &side, originals, root.as_ref())
}

/// Where the device was found.
enum Location {
    Pod(u32),
    Host(u32),
    Root(u32),
    Gone,
}

/// Whether `link` (seen in the root namespace) is our device fallen back from a
/// destroyed pod namespace: same permanent MAC, or the pod-side name (or the
/// kernel's `devN` fallback name) together with the pod-side MAC or ifindex.
pub fn matches_fallen_device(link: &LinkFacts, side: &PodSide, originals: &HostOriginals) -> bool {
    if originals.perm_mac.is_some() && link.perm_mac == originals.perm_mac {
        return true;
    }
    let name_ok = link.name == side.name || link.name == format!("dev{}", link.ifindex);
    let mac = side.mac.or(originals.mac);
    let identity = (mac.is_some() && link.mac == mac) || side.ifindex == Some(link.ifindex);
    name_ok && identity
}

/// Whether `link`, seen in the pod namespace, is our device. The pod may hold a
/// stranger with the wanted name (a failed rename leaves ours under its host name),
/// so a name match needs the MAC or ifindex too — unless the caller knows only the
/// name (`ifindex` and `mac` both unknown), in which case the name is trusted.
pub fn is_ours_in_pod(link: &LinkFacts, side: &PodSide, originals: &HostOriginals) -> bool {
    if link.name != side.name && link.name != originals.name {
        return false;
    }
    if side.ifindex.is_none() && side.mac.is_none() && link.name == side.name {
        return true;
    }
    side.ifindex == Some(link.ifindex)
        || (side.mac.is_some() && link.mac == side.mac)
        || (originals.mac.is_some() && link.mac == originals.mac)
        || (originals.perm_mac.is_some() && link.perm_mac == originals.perm_mac)
}

/// The link settings of the originals, as one change.
fn original_settings(o: &HostOriginals) -> LinkChange {
    LinkChange {
        mtu: Some(o.mtu),
        mac: o.mac,
        gso_max_size: o.gso_max_size,
        gro_max_size: o.gro_max_size,
        gso_ipv4_max_size: o.gso_ipv4_max_size,
        gro_ipv4_max_size: o.gro_ipv4_max_size,
        ..Default::default()
    }
}

/// [`restore`] with the pod-side identity and the root namespace given explicitly
/// (`root: None` skips the root lookup, as the rollback of a failed configure does).
pub fn restore_device(
    host: &Netns,
    pod: Option<&Netns>,
    side: &PodSide,
    originals: &HostOriginals,
    root: Option<&Netns>,
) -> Result<RestoreOutcome, RestoreError> {
    let device = originals.name.clone();
    let started = std::time::Instant::now();
    // The socket that found the device in the pod moves it: one closed just before
    // the move would make the move wait for the kernel's deferred frees.
    let (location, pod_sock) = locate(host, pod, side, originals, root)?;
    let located = started.elapsed();
    let settings = original_settings(originals);

    // Move home in one message when the device is elsewhere.
    let (from, idx) = match location {
        Location::Gone => {
            tracing::info!(device = %device, "device gone with its namespace");
            return Ok(RestoreOutcome::Gone);
        }
        Location::Host(idx) => (None, idx),
        Location::Pod(idx) => (pod, idx),
        Location::Root(idx) => (root, idx),
    };
    let mut pending = settings.clone();
    let mut pod_problems = Vec::new();
    if let (Location::Pod(idx), Some(pod)) = (&location, pod) {
        if !originals.pod_rules.is_empty() || originals.pod_vrf.is_some() {
            let o = originals.clone();
            let idx = *idx;
            pod_problems = pod.run(move || undo_pod_additions(&o, idx))?;
        }
    }
    if let Some(ns) = from {
        let host_fd = host.dup_fd()?;
        let combined = LinkChange {
            up: Some(false),
            netns_fd: None,
            name: Some(originals.name.clone()),
            ..settings.clone()
        };
        let o_name = originals.name.clone();
        let moved = ns.run(move || -> Result<bool, NlError> {
            let mut sock = match pod_sock {
                Some(sock) => sock,
                None => NlSocket::route()?,
            };

            let with_fd = |c: LinkChange| LinkChange {
                netns_fd: Some(host_fd.as_raw_fd()),
                ..c
            };
            if link::set_link(&mut sock, idx, &with_fd(combined)).is_ok() {
                return Ok(true);
            }
            let still_here = link::link_by_index(&mut sock, idx)?.is_some();
            if still_here {
                let bare = LinkChange {
                    up: Some(false),
                    name: Some(o_name),
                    ..Default::default()
                };
                link::set_link(&mut sock, idx, &with_fd(bare))?;
            }
            Ok(false)
        })?;
        match moved {
            Ok(true) => pending = LinkChange::default(),
            Ok(false) => {}
            Err(source) => {
                return Err(RestoreError::Move {
                    device: side.name.clone(),
                    original: originals.name.clone(),
                    source,
                })
            }
        }
    }

    let moved_at = started.elapsed();
    let o = originals.clone();
    let job_pending = pending;
    let combined_at_home = from.is_none();
    let result = host.run(move || home_job(&o, &job_pending, combined_at_home))?;
    tracing::debug!(
        device = %device,
        locate_us = located.as_micros() as u64,
        move_us = (moved_at - located).as_micros() as u64,
        home_us = (started.elapsed() - moved_at).as_micros() as u64,
        "restore timing"
    );
    let (ifindex, mut problems) = result.map_err(|missing| match missing {
        Missing::NotFound => RestoreError::Lost {
            device: device.clone(),
        },
        Missing::Lookup(source) => RestoreError::Lookup {
            device: device.clone(),
            source,
        },
    })?;
    problems.splice(0..0, pod_problems);
    if !problems.is_empty() {
        return Err(RestoreError::Incomplete { device, problems });
    }
    tracing::info!(device = %device, ifindex, "device restored");
    Ok(match location {
        Location::Root(_) => RestoreOutcome::RestoredFromRoot { ifindex },
        _ => RestoreOutcome::Restored { ifindex },
    })
}

fn locate(
    host: &Netns,
    pod: Option<&Netns>,
    side: &PodSide,
    originals: &HostOriginals,
    root: Option<&Netns>,
) -> Result<(Location, Option<NlSocket>), RestoreError> {
    let lookup = |source: NlError| RestoreError::Lookup {
        device: originals.name.clone(),
        source,
    };
    if let Some(pod) = pod {
        let side = side.clone();
        let o = originals.clone();
        let found = pod.run(move || -> Result<(Option<u32>, NlSocket), NlError> {
            let mut sock = NlSocket::route()?;
            let idx = link::links(&mut sock)?
                .into_iter()
                .find(|l| is_ours_in_pod(l, &side, &o))
                .map(|l| l.ifindex);
            Ok((idx, sock))
        });
        match found {
            Ok(Ok((Some(idx), sock))) => return Ok((Location::Pod(idx), Some(sock))),
            Ok(Ok((None, _))) => {}
            // The pod's namespace answered with an error: the device may well be in
            // it, so it is not declared gone (chaos: a failed link dump during a stop
            // had a device in a live pod reported gone and its record cleared).
            Ok(Err(source)) => return Err(lookup(source)),
            // A namespace that cannot be entered any more counts as gone.
            Err(_) => {}
        }
    }
    let (o_name, o_idx, o_mac) = (originals.name.clone(), originals.ifindex, originals.mac);
    let side_name = side.name.clone();
    let at_home = host.run(move || -> Result<Option<u32>, NlError> {
        let mut sock = NlSocket::route()?;
        for name in [&o_name, &side_name] {
            if let Some(l) = link::link_by_name(&mut sock, name)? {
                if l.ifindex == o_idx || (o_mac.is_some() && l.mac == o_mac) {
                    return Ok(Some(l.ifindex));
                }
            }
        }
        Ok(None)
    })?;
    match at_home {
        Ok(Some(idx)) => return Ok((Location::Host(idx), None)),
        Ok(None) => {}
        Err(source) => {
            return Err(RestoreError::Move {
                device: side.name.clone(),
                original: originals.name.clone(),
                source,
            })
        }
    }
    if let Some(root) = root {
        let side = side.clone();
        let o = originals.clone();
        let found = root.run(move || -> Result<Option<u32>, NlError> {
            let mut sock = NlSocket::route()?;
            Ok(link::links(&mut sock)?
                .into_iter()
                .find(|l| matches_fallen_device(l, &side, &o))
                .map(|l| l.ifindex))
        })?;
        if let Some(idx) = found.map_err(lookup)? {
            return Ok((Location::Root(idx), None));
        }
    }
    Ok((Location::Gone, None))
}

/// Why [`home_job`] found no device to restore.
enum Missing {
    /// Not under its original name.
    NotFound,
    /// The netlink socket or the lookup failed: whether it is there is not known.
    Lookup(NlError),
}

/// At home: link settings still pending, addresses, admin state, routes, ethtool.
fn home_job(
    o: &HostOriginals,
    pending: &LinkChange,
    combined_first: bool,
) -> Result<(u32, Vec<String>), Missing> {
    let mut problems = Vec::new();
    let mut sock = NlSocket::route().map_err(Missing::Lookup)?;
    let Some(l) = link::link_by_name(&mut sock, &o.name).map_err(Missing::Lookup)? else {
        return Err(Missing::NotFound);
    };
    let idx = l.ifindex;

    let needs_settings = !per_field(pending).is_empty();
    let combined_ok =
        combined_first && needs_settings && link::set_link(&mut sock, idx, pending).is_ok();
    if needs_settings && !combined_ok {
        for (field, change) in per_field(pending) {
            if let Err(e) = link::set_link(&mut sock, idx, &change) {
                problems.push(format!("{}: {e}", field_name(field)));
            }
        }
    }

    match link::addresses(&mut sock, idx) {
        Ok(have) => {
            for net in &o.addresses {
                if have.iter().any(|a| a.net == *net) {
                    continue;
                }
                match link::add_address(&mut sock, idx, *net) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => problems.push(format!("address {net}: {e}")),
                }
            }
        }
        Err(e) => problems.push(format!("reading addresses: {e}")),
    }

    let admin = LinkChange {
        up: Some(o.up),
        ..Default::default()
    };
    if let Err(e) = link::set_link(&mut sock, idx, &admin) {
        problems.push(format!("admin state: {e}"));
    }

    for r in &o.routes {
        match link::add_route(&mut sock, idx, r) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => problems.push(format!(
                "route {} table {}{}: {e}",
                r.destination,
                r.table,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            )),
        }
    }

    if let Some(host_values) = &o.sysctls {
        // As the link read above found them: the move reset them, and nothing since
        // (settings, addresses, routes) touches them.
        let back = host_values.differing_from(&l.sysctls);
        if let Err((key, e)) = sysctl::write(&o.name, &back) {
            problems.push(format!("sysctl {key}: {e}"));
        }
    }

    restore_ethtool(o, idx, &mut problems);
    Ok((idx, problems))
}

/// In the pod: removes the rules netclaim created there and its VRF when nothing else
/// is enslaved. Problems as text.
fn undo_pod_additions(o: &HostOriginals, ifindex: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let mut sock = match NlSocket::route() {
        Ok(s) => s,
        Err(e) => return vec![format!("pod rules: {e}")],
    };
    for r in &o.pod_rules {
        if let Err(e) = rules::delete_rule(&mut sock, r) {
            problems.push(format!(
                "rule priority {} table {} in the pod: {e}",
                r.priority, r.table
            ));
        }
    }
    if let Some(name) = &o.pod_vrf {
        if let Err(e) = vrf::remove_if_unused(&mut sock, name, Some(ifindex)) {
            problems.push(format!("VRF {name} in the pod: {e}"));
        }
    }
    problems
}

fn field_name(config_field: &str) -> &str {
    config_field
        .strip_prefix("interface.")
        .unwrap_or(config_field)
}

fn restore_ethtool(o: &HostOriginals, idx: u32, problems: &mut Vec<String>) {
    if o.ethtool_features.is_empty() && o.private_flags.is_empty() {
        return;
    }
    let mut eth = match Ethtool::open() {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("ethtool: {e}"));
            return;
        }
    };
    match eth.features(idx) {
        Ok(now) => {
            let changes: std::collections::BTreeMap<String, bool> = o
                .ethtool_features
                .iter()
                .filter(|(n, on)| {
                    o.ethtool_changeable.contains(*n) && now.active.get(*n) != Some(*on)
                })
                .map(|(n, on)| (n.clone(), *on))
                .collect();
            if let Err(e) = eth.set_features(idx, &changes) {
                problems.push(format!("ethtool features: {e}"));
            } else if let Ok(after) = eth.features(idx) {
                for (n, on) in &changes {
                    if after.active.get(n) != Some(on) {
                        problems.push(format!("ethtool feature {n} stayed {}", !on));
                    }
                }
            }
        }
        Err(e) => problems.push(format!("ethtool features: {e}")),
    }
    if !o.private_flags.is_empty() {
        match eth.private_flags(idx) {
            Ok(now) => {
                let changes: std::collections::BTreeMap<String, bool> = o
                    .private_flags
                    .iter()
                    .filter(|(n, on)| now.get(*n) != Some(*on))
                    .map(|(n, on)| (n.clone(), *on))
                    .collect();
                if let Err(e) = eth.set_private_flags(idx, &changes) {
                    problems.push(format!("private flags: {e}"));
                }
            }
            Err(e) => problems.push(format!("private flags: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn originals() -> HostOriginals {
        HostOriginals {
            name: "eth1".into(),
            ifindex: 7,
            kind: Some("macvlan".into()),
            mtu: 1500,
            mac: Some([2, 0, 0, 0, 0, 7]),
            perm_mac: None,
            up: true,
            addresses: vec![],
            routes: vec![],
            gso_max_size: None,
            gro_max_size: None,
            gso_ipv4_max_size: None,
            gro_ipv4_max_size: None,
            ethtool_features: Default::default(),
            ethtool_changeable: Default::default(),
            private_flags: BTreeMap::new(),
            sysctls: None,
            pod_rules: vec![],
            pod_vrf: None,
        }
    }

    fn link(name: &str, ifindex: u32, mac: [u8; 6]) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            ifindex,
            mac: Some(mac),
            ..Default::default()
        }
    }

    #[test]
    fn fallen_device_found_by_pod_name_and_mac() {
        let side = PodSide {
            name: "net0".into(),
            ifindex: Some(3),
            mac: Some([2, 0, 0, 0, 0, 9]),
        };
        let o = originals();
        assert!(matches_fallen_device(
            &link("net0", 40, [2, 0, 0, 0, 0, 9]),
            &side,
            &o
        ));
        // The kernel's fallback name when the pod-side name is taken in root.
        assert!(matches_fallen_device(
            &link("dev41", 41, [2, 0, 0, 0, 0, 9]),
            &side,
            &o
        ));
        assert!(matches_fallen_device(
            &link("net0", 3, [2, 0, 0, 0, 0, 1]),
            &side,
            &o
        ));
        // Same name, other device.
        assert!(!matches_fallen_device(
            &link("net0", 40, [2, 0, 0, 0, 0, 1]),
            &side,
            &o
        ));
        assert!(!matches_fallen_device(
            &link("eth9", 40, [2, 0, 0, 0, 0, 9]),
            &side,
            &o
        ));
    }

    #[test]
    fn a_stranger_with_the_pod_name_is_not_ours() {
        let o = originals();
        let side = PodSide {
            name: "net0".into(),
            ifindex: None,
            mac: Some([2, 0, 0, 0, 0, 9]),
        };
        assert!(!is_ours_in_pod(
            &link("net0", 3, [2, 9, 9, 9, 9, 9]),
            &side,
            &o
        ));
        assert!(is_ours_in_pod(
            &link("net0", 3, [2, 0, 0, 0, 0, 9]),
            &side,
            &o
        ));
        // Moved, but the rename failed: still under the host name, original MAC.
        assert!(is_ours_in_pod(
            &link("eth1", 4, [2, 0, 0, 0, 0, 7]),
            &side,
            &o
        ));
        // Name only: trusted.
        let by_name = PodSide {
            name: "net0".into(),
            ifindex: None,
            mac: None,
        };
        assert!(is_ours_in_pod(
            &link("net0", 3, [2, 9, 9, 9, 9, 9]),
            &by_name,
            &o
        ));
    }

    #[test]
    fn fallen_device_found_by_original_mac_when_pod_kept_it() {
        let side = PodSide {
            name: "net0".into(),
            ifindex: None,
            mac: None,
        };
        assert!(matches_fallen_device(
            &link("net0", 40, [2, 0, 0, 0, 0, 7]),
            &side,
            &originals()
        ));
    }

    #[test]
    fn fallen_device_found_by_permanent_mac_anywhere() {
        let mut o = originals();
        o.perm_mac = Some([0, 0x1b, 0x21, 1, 2, 3]);
        let side = PodSide {
            name: "net0".into(),
            ifindex: None,
            mac: None,
        };
        let mut l = link("eth7", 90, [2, 2, 2, 2, 2, 2]);
        l.perm_mac = o.perm_mac;
        assert!(matches_fallen_device(&l, &side, &o));
    }
}
