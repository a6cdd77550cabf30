//! The socket guard: a cgroup program on the pod's cgroup that keeps every frame a
//! socket sends on the path the egress program sees.
//!
//! tc egress runs in `__dev_queue_xmit`. Two kinds of socket send without it, straight
//! through `__dev_direct_xmit`: an `AF_PACKET` socket with `PACKET_QDISC_BYPASS`, and
//! an `AF_XDP` socket; both need only `CAP_NET_RAW`, which pods have by default. The
//! guard (`nc_guard_sockopt`, cgroup/setsockopt) refuses that option and every
//! `SOL_XDP` option (without which an `AF_XDP` socket cannot send) to every process in
//! the pod's cgroup. Each device's data path owns its guard link, pinned next to its
//! other links, so removing the device's pins (detach) removes its guard.
//!
//! aya 0.14 cannot turn a cgroup attachment into a pinnable link, so the link is made
//! and pinned here with `BPF_LINK_CREATE` and `BPF_OBJ_PIN`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::{CgroupSockopt, ProgramError};
use aya::Ebpf;
use netclaim_common::PROG_GUARD_SOCKOPT;

/// Pin file of the guard link.
pub const LINK_GUARD: &str = "link_guard_sockopt";
/// Pin of the guard program itself, for a data path staged before its pod exists.
pub const PROG_GUARD: &str = "prog_guard_sockopt";

use super::syscall::{bpf, BPF_LINK_CREATE, BPF_OBJ_PIN};

/// `BPF_CGROUP_SETSOCKOPT` (uapi `enum bpf_attach_type`).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Why the guard could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("the pod's cgroup {cgroup:?} is not at {path}")]
    NoSuchCgroup { cgroup: String, path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guard program {PROG_GUARD_SOCKOPT}: {0}")]
    Program(#[source] ProgramError),
    #[error("guard program {PROG_GUARD_SOCKOPT} is missing from the eBPF object")]
    Missing,
    #[error("pinning the guard program at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

/// Where the cgroup v2 hierarchy is mounted, from a `/proc/self/mountinfo` text.
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> ..."
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The directory of a pod cgroup below `root`. Runtimes name it either as a path
/// (cgroupfs driver: `/kubepods/besteffort/pod<uid>`) or as a systemd slice
/// (`kubepods-besteffort-pod<uid>.slice`, nested by its dash-separated prefixes:
/// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice`).
pub fn pod_cgroup_dir(root: &Path, cgroup_parent: &str) -> PathBuf {
    let name = cgroup_parent.trim_start_matches('/');
    if !name.contains('/') && name.ends_with(".slice") {
        let stem = name.trim_end_matches(".slice");
        let mut dir = root.to_path_buf();
        let mut prefix = String::new();
        for part in stem.split('-') {
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(part);
            dir.push(format!("{prefix}.slice"));
        }
        return dir;
    }
    root.join(name)
}

/// Where this process sees the cgroup v2 hierarchy. Read from `/proc/self/mountinfo`
/// once; later pod starts reuse it instead of reading the mount table again.
pub fn cgroup2_mount() -> Result<PathBuf, GuardError> {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(root) = ROOT.get() {
        return Ok(root.clone());
    }
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| GuardError::Io {
            what: "reading",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let root = cgroup2_root(&mountinfo).ok_or(GuardError::NoCgroup2)?;
    Ok(ROOT.get_or_init(|| root).clone())
}

/// Resolves the runtime's name for a pod cgroup to an existing directory.
pub fn resolve(cgroup_parent: &str) -> Result<PathBuf, GuardError> {
    let dir = pod_cgroup_dir(&cgroup2_mount()?, cgroup_parent);
    if !dir.is_dir() {
        return Err(GuardError::NoSuchCgroup {
            cgroup: cgroup_parent.to_string(),
            path: dir,
        });
    }
    Ok(dir)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut CgroupSockopt, GuardError> {
    ebpf.program_mut(PROG_GUARD_SOCKOPT)
        .ok_or(GuardError::Missing)?
        .try_into()
        .map_err(GuardError::Program)
}

/// Verifies the guard program of a fresh instance (with the others, off the pod-start
/// path).
pub fn load(ebpf: &mut Ebpf) -> Result<(), GuardError> {
    let p = program(ebpf)?;
    if p.fd().is_err() {
        p.load().map_err(GuardError::Program)?;
    }
    Ok(())
}

/// Attaches the guard to the cgroup directory `cgroup` (alongside whatever else is
/// attached there: cgroup links are always multi) and pins its link at `pin`. The
/// pin holds the attachment; removing it detaches the guard.
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path, pin: &Path) -> Result<(), GuardError> {
    load(ebpf)?;
    let prog_fd = program(ebpf)?
        .fd()
        .map_err(GuardError::Program)?
        .as_fd()
        .as_raw_fd();
    link_and_pin(prog_fd, cgroup, pin)
}

/// Pins the guard program of a loaded instance at `pin`, so a later pod start can
/// attach it ([`attach_pinned`]) without the object (a data path staged at prepare).
pub fn pin_program(ebpf: &mut Ebpf, pin: &Path) -> Result<(), GuardError> {
    load(ebpf)?;
    program(ebpf)?.pin(pin).map_err(|source| GuardError::Pin {
        path: pin.to_path_buf(),
        source,
    })
}

/// [`attach`] with the program pinned at `program_pin` by [`pin_program`].
pub fn attach_pinned(program_pin: &Path, cgroup: &Path, pin: &Path) -> Result<(), GuardError> {
    let prog = super::syscall::obj_get(program_pin).map_err(|source| GuardError::Io {
        what: "opening the pinned guard program",
        path: program_pin.to_path_buf(),
        source,
    })?;
    link_and_pin(prog.as_raw_fd(), cgroup, pin)
}

fn c_path(path: &Path) -> Result<std::ffi::CString, GuardError> {
    super::syscall::c_path(path).map_err(|source| GuardError::Io {
        what: "pin path",
        path: path.to_path_buf(),
        source,
    })
}

fn link_and_pin(prog_fd: std::os::fd::RawFd, cgroup: &Path, pin: &Path) -> Result<(), GuardError> {
    let dir = std::fs::File::open(cgroup).map_err(|source| GuardError::Io {
        what: "opening cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags (u32 each).
    let mut attr = [0u64; 8];
    attr[0] = u64::from(prog_fd as u32) | u64::from(dir.as_raw_fd() as u32) << 32;
    attr[1] = u64::from(BPF_CGROUP_SETSOCKOPT);
    let fd = bpf(BPF_LINK_CREATE, &mut attr).map_err(|source| GuardError::Io {
        what: "attaching the guard (BPF_LINK_CREATE) to cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    // SAFETY: the kernel returned a fresh link fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = c_path(pin)?;
    // union bpf_attr, obj_pin: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    attr[1] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map_err(|source| GuardError::Io {
        what: "pinning the guard link at",
        path: pin.to_path_buf(),
        source,
    })?;
    // Our fd closes here; the pin keeps the link (and the attachment) alive.
    drop(link);
    Ok(())
}

/// Whether a device's pin directory holds a guard.
pub fn is_pinned(dir: &Path) -> bool {
    dir.join(LINK_GUARD).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let mountinfo = "\
35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_root(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_root("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn pod_cgroups_in_both_driver_spellings() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            pod_cgroup_dir(root, "/kubepods/besteffort/pod1234"),
            PathBuf::from("/sys/fs/cgroup/kubepods/besteffort/pod1234")
        );
        assert_eq!(
            pod_cgroup_dir(root, "kubepods-besteffort-pod1234.slice"),
            PathBuf::from(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice"
            )
        );
    }
}
