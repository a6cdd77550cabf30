//! `disableEbpfPrograms: true`: removing other people's tc, TCX and XDP programs from a
//! device before it is handed to a pod, and saying which ones were removed.
//!
//! Runs inside the device's namespace (call it through [`super::Netns::run_async`]).
//! * TCX: `BPF_PROG_QUERY` on the ifindex returns the attached programs *and* the ids
//!   of the links holding them (kernel ≥ 6.6), so exactly this device's attachments are
//!   detached — link-held ones with `BPF_LINK_DETACH`, the rest with `BPF_PROG_DETACH`.
//! * XDP: the program id comes from the link dump; a bpf_link holding it (same program,
//!   same ifindex, type XDP) is detached, otherwise the netlink attachment is cleared
//!   with `IFLA_XDP_FD = -1`.
//! * tc `cls_bpf`: the clsact/ingress qdisc is deleted, which removes its filters.
//!
//! Never called for devices netclaim itself attached to: at hand-over time the device
//! is still on the host and carries no netclaim program.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya::programs::{loaded_programs, ProgramInfo};
use futures::TryStreamExt;
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp},
    tc::{TcAttribute, TcFilterBpfOption, TcOption},
};

/// A program that was removed, for logs and the error-free report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedProgram {
    pub attach: &'static str,
    pub id: u32,
    pub name: String,
}

impl std::fmt::Display for RemovedProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (id {})", self.attach, self.name, self.id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForeignProgramError {
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("interface {ifname}: {what}: {source}")]
    Syscall {
        ifname: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {ifname}: {what}: {detail}")]
    Netlink {
        ifname: String,
        what: &'static str,
        detail: String,
    },
}

const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_LINK_TYPE_XDP: u32 = 6;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;

/// `union bpf_attr`, large enough for every command used here (zero-filled).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised 128-byte bpf_attr; the commands used here
    // read and write only within it and within buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}

/// Programs and link ids of one TCX direction.
fn tcx_query(ifindex: u32, attach_type: u32) -> std::io::Result<Vec<(u32, u32)>> {
    let mut progs = [0u32; 64];
    let mut links = [0u32; 64];
    let mut attr = Attr::new();
    attr.put_u32(0, ifindex);
    attr.put_u32(4, attach_type);
    attr.put_u64(16, progs.as_mut_ptr() as u64);
    attr.put_u32(24, progs.len() as u32);
    attr.put_u64(40, links.as_mut_ptr() as u64);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr.u32_at(24) as usize).min(progs.len());
    Ok((0..count).map(|i| (progs[i], links[i])).collect())
}

fn program_name(id: u32) -> String {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p: ProgramInfo| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| format!("prog-{id}"))
}

fn detach_link(id: u32) -> std::io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, id);
    let fd = fd_from(bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?);
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

fn detach_prog(ifindex: u32, prog_id: u32, attach_type: u32) -> std::io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, prog_id);
    let fd = fd_from(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?);
    let mut attr = Attr::new();
    attr.put_u32(0, ifindex);
    attr.put_u32(4, fd.as_raw_fd() as u32);
    attr.put_u32(8, attach_type);
    bpf(BPF_PROG_DETACH, &mut attr).map(|_| ())
}

/// (type, prog_id, ifindex) of a link.
fn link_target(id: u32) -> Option<(u32, u32, u32)> {
    let mut attr = Attr::new();
    attr.put_u32(0, id);
    let fd = fd_from(bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).ok()?);
    // struct bpf_link_info: type, id, prog_id, (pad), union { …; xdp { ifindex } } at 16
    let mut info = [0u8; 256];
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, info.len() as u32);
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let word = |off: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&info[off..off + 4]);
        u32::from_ne_bytes(b)
    };
    Some((word(0), word(8), word(16)))
}

fn all_link_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    let mut next = 0u32;
    loop {
        let mut attr = Attr::new();
        attr.put_u32(0, next);
        if bpf(BPF_LINK_GET_NEXT_ID, &mut attr).is_err() {
            break;
        }
        next = attr.u32_at(4);
        ids.push(next);
    }
    ids
}

/// Removes every tc, TCX and XDP program from `ifname` in the calling thread's
/// namespace. Returns what was removed.
pub async fn remove_foreign_programs(
    ifname: &str,
) -> Result<Vec<RemovedProgram>, ForeignProgramError> {
    let ifindex = super::ifindex_of(ifname)
        .ok_or_else(|| ForeignProgramError::NoInterface(ifname.to_string()))?;
    let sys = |what: &'static str| {
        let ifname = ifname.to_string();
        move |source| ForeignProgramError::Syscall {
            ifname,
            what,
            source,
        }
    };
    let mut removed = Vec::new();

    // TCX.
    for (attach_type, label) in [
        (BPF_TCX_INGRESS, "tcx-ingress"),
        (BPF_TCX_EGRESS, "tcx-egress"),
    ] {
        let attached = match tcx_query(ifindex, attach_type) {
            Ok(a) => a,
            // No TCX on this kernel or device: nothing attached that way.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Vec::new(),
            Err(e) => return Err(sys("BPF_PROG_QUERY")(e)),
        };
        for (prog_id, link_id) in attached {
            let name = program_name(prog_id);
            if link_id != 0 {
                detach_link(link_id).map_err(sys("BPF_LINK_DETACH"))?;
            } else {
                detach_prog(ifindex, prog_id, attach_type).map_err(sys("BPF_PROG_DETACH"))?;
            }
            removed.push(RemovedProgram {
                attach: label,
                id: prog_id,
                name,
            });
        }
    }

    // XDP and tc, over rtnetlink.
    let (conn, handle, _) = rtnetlink::new_connection().map_err(sys("netlink socket"))?;
    tokio::spawn(conn);
    let nl = |what: &'static str| {
        let ifname = ifname.to_string();
        move |e: rtnetlink::Error| ForeignProgramError::Netlink {
            ifname,
            what,
            detail: e.to_string(),
        }
    };
    let mut links = handle.link().get().match_index(ifindex).execute();
    let mut xdp_prog = 0u32;
    if let Some(msg) = links.try_next().await.map_err(nl("link dump"))? {
        for attr in &msg.attributes {
            if let LinkAttribute::Xdp(x) = attr {
                for x in x {
                    if let LinkXdp::ProgId(id) = x {
                        xdp_prog = *id;
                    }
                }
            }
        }
    }
    if xdp_prog != 0 {
        let name = program_name(xdp_prog);
        let by_link = all_link_ids()
            .into_iter()
            .find(|id| link_target(*id) == Some((BPF_LINK_TYPE_XDP, xdp_prog, ifindex)));
        match by_link {
            Some(link) => detach_link(link).map_err(sys("BPF_LINK_DETACH (xdp)"))?,
            None => {
                let mut msg = LinkMessage::default();
                msg.header.index = ifindex;
                msg.attributes
                    .push(LinkAttribute::Xdp(vec![LinkXdp::Fd(-1)]));
                handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(nl("clearing IFLA_XDP"))?;
            }
        }
        removed.push(RemovedProgram {
            attach: "xdp",
            id: xdp_prog,
            name,
        });
    }

    // tc cls_bpf: find bpf filters under clsact/ingress, then drop the qdisc.
    let mut tc_progs = Vec::new();
    for egress in [false, true] {
        let req = handle.traffic_filter(ifindex as i32).get();
        let req = if egress { req.egress() } else { req.ingress() };
        let mut filters = req.execute();
        while let Ok(Some(f)) = filters.try_next().await {
            for attr in &f.attributes {
                if let TcAttribute::Options(opts) = attr {
                    for o in opts {
                        if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = o {
                            tc_progs.push(*id);
                        }
                    }
                }
            }
        }
    }
    if !tc_progs.is_empty() {
        let mut qdisc = handle.qdisc();
        let mut del = qdisc.del(ifindex as i32);
        del.message_mut().header.parent = TC_H_CLSACT.into();
        del.message_mut().header.handle = 0xFFFF_0000u32.into();
        del.execute()
            .await
            .map_err(nl("deleting the clsact qdisc"))?;
        tc_progs.sort_unstable();
        tc_progs.dedup();
        for id in tc_progs {
            removed.push(RemovedProgram {
                attach: "tc",
                id,
                name: program_name(id),
            });
        }
    }
    for r in &removed {
        tracing::info!(interface = ifname, program = %r, "removed foreign eBPF program (disableEbpfPrograms)");
    }
    Ok(removed)
}
