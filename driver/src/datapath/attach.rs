//! The attach ladder: how a device's programs get onto its interface inside the pod's
//! namespace, and how clsact filters (which no link owns) come off again.
//!
//! Egress tries TCX, then clsact + cls_bpf; ingress tries XDP native, XDP generic,
//! TCX, then clsact ingress. [`AttachOptions`] can force one rung (tests exercise the
//! fallbacks for real); [`EgressMode`] and [`IngressMode`] name the rung that held and
//! are recorded as codes in `NC_META`. Every function here runs on the namespace
//! thread (`wire_identity` too: it reads the interface's MAC and IPv6 link-local
//! addresses there), except `detach_clsact`, which enters the namespace itself.
//!
//! This file owns attaching and the clsact clean-up; it never writes policy maps and
//! never pins or unpins anything (the links it returns are pinned by [`super::pins`]).

use std::{
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
};

use aya::{
    programs::{
        links::FdLink,
        tc::{self, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use netclaim_common::{attach_mode, DatapathMeta, PROG_EGRESS, PROG_INGRESS_TC, PROG_INGRESS_XDP};
use serde::Serialize;

use super::{
    error::{map_err, prog_err, DatapathError},
    object::MapSizes,
    pins::DatapathKey,
};
use crate::netns::Netns;

/// How the egress program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    Tcx,
    Clsact,
}

/// How the ingress program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngressMode {
    XdpNative,
    XdpGeneric,
    Tcx,
    Clsact,
}

impl EgressMode {
    pub(super) fn code(self) -> u32 {
        match self {
            Self::Tcx => attach_mode::EGRESS_TCX,
            Self::Clsact => attach_mode::EGRESS_CLSACT,
        }
    }
    pub(super) fn from_code(c: u32) -> Option<Self> {
        match c {
            attach_mode::EGRESS_TCX => Some(Self::Tcx),
            attach_mode::EGRESS_CLSACT => Some(Self::Clsact),
            _ => None,
        }
    }
}

impl IngressMode {
    pub(super) fn code(self) -> u32 {
        match self {
            Self::XdpNative => attach_mode::INGRESS_XDP_NATIVE,
            Self::XdpGeneric => attach_mode::INGRESS_XDP_GENERIC,
            Self::Tcx => attach_mode::INGRESS_TCX,
            Self::Clsact => attach_mode::INGRESS_CLSACT,
        }
    }
    pub(super) fn from_code(c: u32) -> Option<Self> {
        match c {
            attach_mode::INGRESS_XDP_NATIVE => Some(Self::XdpNative),
            attach_mode::INGRESS_XDP_GENERIC => Some(Self::XdpGeneric),
            attach_mode::INGRESS_TCX => Some(Self::Tcx),
            attach_mode::INGRESS_CLSACT => Some(Self::Clsact),
            _ => None,
        }
    }
}

/// Which attach methods to try. `Auto` tries the best first and falls back; the
/// others force one method (tests use them to exercise the fallbacks for real).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachOptions {
    pub egress: Option<EgressMode>,
    pub ingress: Option<IngressMode>,
    pub sizes: Option<MapSizes>,
    /// The pod's cgroup directory: when set, the socket guard ([`super::guard`]) is
    /// attached there, and the data path is not attached without it.
    pub guard_cgroup: Option<PathBuf>,
    /// Staged before its pod exists (count only, on the host): the guard program is
    /// pinned too, so the pod start attaches it without the object.
    pub stage: bool,
}

/// The result of attaching inside the namespace: modes and clsact handles.
pub(super) struct Attached {
    pub(super) meta: DatapathMeta,
    pub(super) egress_link: Option<FdLink>,
    pub(super) ingress_link: Option<FdLink>,
}

/// Runs on the namespace thread: the MAC and IPv6 link-local addresses of `ifname`
/// (nothing when it cannot be read; the data path then lets no source MAC through).
pub(super) fn wire_identity(ifname: &str) -> (Option<[u8; 6]>, Vec<Ipv6Addr>) {
    use crate::netns::{link, netlink::NlSocket};
    let Ok(mut sock) = NlSocket::route() else {
        return (None, Vec::new());
    };
    let Ok(Some(facts)) = link::link_by_name(&mut sock, ifname) else {
        return (None, Vec::new());
    };
    let link_local = link::addresses(&mut sock, facts.ifindex)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| match a.net.addr() {
            IpAddr::V6(v6) if a.scope == 253 => Some(v6),
            _ => None,
        })
        .collect();
    (facts.mac, link_local)
}

/// Runs on the namespace thread: loads and attaches both directions.
pub(super) fn attach_in_netns(
    ebpf: &mut Ebpf,
    key: &DatapathKey,
    ifname: &str,
    netns_name: &str,
    options: AttachOptions,
) -> Result<Attached, DatapathError> {
    let idx = crate::netns::ifindex_of(ifname).ok_or_else(|| DatapathError::NoInterface {
        key: key.to_string(),
        interface: ifname.to_string(),
        netns: netns_name.to_string(),
    })?;
    let mut meta = DatapathMeta {
        ifindex: idx,
        ..Default::default()
    };

    let started = std::time::Instant::now();
    // Egress: TCX first (kernel >= 6.6), clsact + cls_bpf otherwise.
    let mut failures = Vec::new();
    let egress: &mut SchedClassifier = ebpf
        .program_mut(PROG_EGRESS)
        .ok_or_else(|| map_err(key, "program nc_egress", "missing from the eBPF object"))?
        .try_into()
        .map_err(|e| prog_err(key, "nc_egress", e))?;
    let mut egress_link = None;
    if matches!(options.egress, None | Some(EgressMode::Tcx)) {
        let attempt = match crate::failpoints::fires(crate::failpoints::BPF) {
            Some(injected) => Err(injected),
            None => egress
                .attach_with_options(
                    ifname,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| e.to_string()),
        };
        match attempt {
            Ok(id) => {
                let link = egress
                    .take_link(id)
                    .map_err(|e| prog_err(key, "nc_egress", e))?;
                egress_link = Some(FdLink::try_from(link).map_err(|e| {
                    map_err(
                        key,
                        "link egress",
                        format!("TCX link is not an fd link: {e}"),
                    )
                })?);
                meta.egress_mode = EgressMode::Tcx.code();
            }
            Err(e) => failures.push(format!("tcx: {e}")),
        }
    }
    if meta.egress_mode == 0 && matches!(options.egress, None | Some(EgressMode::Clsact)) {
        let (prio, handle) = attach_clsact(egress, ifname, TcAttachType::Egress, &mut meta)
            .map_err(|e| {
                failures.push(format!("clsact: {e}"));
                DatapathError::Attach {
                    key: key.to_string(),
                    direction: "egress",
                    interface: ifname.to_string(),
                    detail: failures.join("; "),
                }
            })?;
        meta.egress_mode = EgressMode::Clsact.code();
        meta.egress_priority = prio;
        meta.egress_handle = handle;
    }
    if meta.egress_mode == 0 {
        return Err(DatapathError::Attach {
            key: key.to_string(),
            direction: "egress",
            interface: ifname.to_string(),
            detail: failures.join("; "),
        });
    }

    let egress_done = started.elapsed();
    // Ingress: XDP native, XDP generic, then tc ingress (TCX, clsact).
    let mut failures = Vec::new();
    let mut ingress_link = None;
    let want = options.ingress;
    if matches!(
        want,
        None | Some(IngressMode::XdpNative) | Some(IngressMode::XdpGeneric)
    ) {
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_INGRESS_XDP)
            .ok_or_else(|| map_err(key, "program nc_ingress", "missing from the eBPF object"))?
            .try_into()
            .map_err(|e| prog_err(key, "nc_ingress", e))?;
        let modes: &[(XdpMode, IngressMode)] = match want {
            Some(IngressMode::XdpGeneric) => &[(XdpMode::Skb, IngressMode::XdpGeneric)],
            Some(IngressMode::XdpNative) => &[(XdpMode::Driver, IngressMode::XdpNative)],
            _ => &[
                (XdpMode::Driver, IngressMode::XdpNative),
                (XdpMode::Skb, IngressMode::XdpGeneric),
            ],
        };
        for (mode, ingress_mode) in modes {
            let attempt = match crate::failpoints::fires(crate::failpoints::BPF) {
                Some(injected) => Err(injected),
                None => xdp
                    .attach_to_if_index(idx, *mode)
                    .map_err(|e| e.to_string()),
            };
            match attempt {
                Ok(id) => {
                    let link = xdp
                        .take_link(id)
                        .map_err(|e| prog_err(key, "nc_ingress", e))?;
                    match FdLink::try_from(link) {
                        Ok(fd) => {
                            ingress_link = Some(fd);
                            meta.ingress_mode = ingress_mode.code();
                            break;
                        }
                        Err(e) => {
                            // A netlink attachment (kernels before 5.9) is not owned by
                            // any fd: dropping the link leaves it in place, so remove it.
                            let flags = match mode {
                                XdpMode::Skb => XDP_FLAGS_SKB_MODE,
                                _ => XDP_FLAGS_DRV_MODE,
                            };
                            let removed =
                                crate::netns::netlink::NlSocket::route().and_then(|mut sock| {
                                    crate::netns::link::detach_xdp(&mut sock, idx, flags)
                                });
                            failures.push(match removed {
                                Ok(()) => format!("{ingress_mode:?}: not a bpf_link ({e}); detached"),
                                Err(d) => format!("{ingress_mode:?}: not a bpf_link ({e}); detaching it failed: {d}"),
                            });
                        }
                    }
                }
                Err(e) => failures.push(format!("{ingress_mode:?}: {e}")),
            }
        }
    }
    if meta.ingress_mode == 0
        && matches!(
            want,
            None | Some(IngressMode::Tcx) | Some(IngressMode::Clsact)
        )
    {
        let tc_in: &mut SchedClassifier = ebpf
            .program_mut(PROG_INGRESS_TC)
            .ok_or_else(|| map_err(key, "program nc_ingress_tc", "missing from the eBPF object"))?
            .try_into()
            .map_err(|e| prog_err(key, "nc_ingress_tc", e))?;
        if want != Some(IngressMode::Clsact) {
            let attempt = match crate::failpoints::fires(crate::failpoints::BPF) {
                Some(injected) => Err(injected),
                None => tc_in
                    .attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| e.to_string()),
            };
            match attempt {
                Ok(id) => {
                    let link = tc_in
                        .take_link(id)
                        .map_err(|e| prog_err(key, "nc_ingress_tc", e))?;
                    if let Ok(fd) = FdLink::try_from(link) {
                        ingress_link = Some(fd);
                        meta.ingress_mode = attach_mode::INGRESS_TCX;
                    }
                }
                Err(e) => failures.push(format!("tcx ingress: {e}")),
            }
        }
        if meta.ingress_mode == 0 {
            match attach_clsact(tc_in, ifname, TcAttachType::Ingress, &mut meta) {
                Ok((prio, handle)) => {
                    meta.ingress_mode = attach_mode::INGRESS_CLSACT;
                    meta.ingress_priority = prio;
                    meta.ingress_handle = handle;
                }
                Err(e) => failures.push(format!("clsact ingress: {e}")),
            }
        }
    }
    if meta.ingress_mode == 0 {
        // Undo egress before failing: the link objects detach on drop; clsact needs netlink.
        drop(egress_link);
        if meta.egress_mode == attach_mode::EGRESS_CLSACT {
            detach_clsact_here(&meta);
        }
        return Err(DatapathError::Attach {
            key: key.to_string(),
            direction: "ingress",
            interface: ifname.to_string(),
            detail: failures.join("; "),
        });
    }
    tracing::debug!(
        interface = ifname,
        egress_us = egress_done.as_micros() as u64,
        ingress_us = (started.elapsed() - egress_done).as_micros() as u64,
        "attached in the namespace"
    );
    Ok(Attached {
        meta,
        egress_link,
        ingress_link,
    })
}

/// `XDP_FLAGS_SKB_MODE`, `XDP_FLAGS_DRV_MODE` (uapi `linux/if_link.h`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Attaches with clsact + cls_bpf and leaves the filter in place (not owned by a
/// link: it survives the process like a pinned link does). Returns priority and handle.
fn attach_clsact(
    prog: &mut SchedClassifier,
    ifname: &str,
    attach_type: TcAttachType,
    meta: &mut DatapathMeta,
) -> Result<(u32, u32), String> {
    if let Some(injected) = crate::failpoints::fires(crate::failpoints::BPF) {
        return Err(injected);
    }
    match tc::qdisc_add_clsact(ifname) {
        // Ours: removed again when the last filter of ours goes (detach).
        Ok(()) => meta.owned |= netclaim_common::owned::CLSACT_QDISC,
        Err(e) => {
            let exists =
                matches!(&e, tc::TcError::NetlinkError(n) if n.to_string().contains("exists"));
            if !exists {
                tracing::debug!(interface = ifname, error = %e, "clsact qdisc add failed");
            }
        }
    }
    let id = prog
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::Netlink(tc::NlOptions::default()),
        )
        .map_err(|e| e.to_string())?;
    let link: SchedClassifierLink = prog.take_link(id).map_err(|e| e.to_string())?;
    let prio = link.priority().map_err(|e| e.to_string())?;
    let handle = link.handle().map_err(|e| e.to_string())?;
    // The filter stays attached; its identity is recorded in NC_META for detach.
    std::mem::forget(link);
    Ok((u32::from(prio), u32::from(handle)))
}

/// Removes clsact filters recorded in `meta`, entering `netns` to do it.
pub(super) fn detach_clsact(netns: &Netns, meta: &DatapathMeta) {
    if meta.egress_mode != attach_mode::EGRESS_CLSACT
        && meta.ingress_mode != attach_mode::INGRESS_CLSACT
    {
        return;
    }
    let meta = *meta;
    if let Err(e) = netns.run(move || detach_clsact_here(&meta)) {
        tracing::warn!(error = %e, "could not enter namespace to remove clsact filters");
    }
}

/// Removes clsact filters recorded in `meta` in the current thread's namespace.
fn detach_clsact_here(meta: &DatapathMeta) {
    let Some(ifname) = crate::netns::ifname_of(meta.ifindex) else {
        return; // interface gone: its filters went with it
    };
    for (mode, want, attach_type, prio, handle) in [
        (
            meta.egress_mode,
            attach_mode::EGRESS_CLSACT,
            TcAttachType::Egress,
            meta.egress_priority,
            meta.egress_handle,
        ),
        (
            meta.ingress_mode,
            attach_mode::INGRESS_CLSACT,
            TcAttachType::Ingress,
            meta.ingress_priority,
            meta.ingress_handle,
        ),
    ] {
        if mode != want {
            continue;
        }
        match SchedClassifierLink::attached(
            &ifname,
            attach_type,
            prio as u16,
            TcHandle::from(handle),
            None,
        ) {
            Ok(link) => {
                if let Err(e) = aya::programs::links::Link::detach(link) {
                    tracing::warn!(interface = %ifname, error = %e, "removing clsact filter");
                }
            }
            Err(e) => tracing::warn!(interface = %ifname, error = %e, "finding clsact filter"),
        }
    }
    if meta.owned & netclaim_common::owned::CLSACT_QDISC != 0 {
        remove_own_clsact(&ifname, meta.ifindex);
    }
}

/// Deletes the clsact qdisc the driver added, unless filters of someone else still
/// hang below it (deleting it would take theirs too).
fn remove_own_clsact(ifname: &str, ifindex: u32) {
    use crate::netns::{link, netlink::NlSocket};
    let result =
        NlSocket::route().and_then(|mut sock| match link::clsact_filters(&mut sock, ifindex)? {
            0 => link::delete_clsact(&mut sock, ifindex).map(|()| true),
            _ => Ok(false),
        });
    match result {
        Ok(true) => tracing::debug!(
            interface = ifname,
            "removed the clsact qdisc netclaim added"
        ),
        Ok(false) => tracing::info!(
            interface = ifname,
            "kept the clsact qdisc netclaim added: other filters use it now"
        ),
        Err(e) => tracing::warn!(interface = ifname, error = %e, "removing the clsact qdisc"),
    }
}
