//! The socket guard: cgroup programs on the pod's cgroup that keep every frame a raw
//! socket sends on the path the egress program sees.
//!
//! tc egress runs in `__dev_queue_xmit`. Two kinds of socket send without it, straight
//! through `__dev_direct_xmit`: an `AF_PACKET` socket with `PACKET_QDISC_BYPASS`, and
//! an `AF_XDP` socket; both need only `CAP_NET_RAW`, which pods have by default. The
//! guard refuses that socket option (`nc_guard_sockopt`, cgroup/setsockopt) and that
//! socket family (`nc_guard_sock`, cgroup/sock_create) for every process in the pod's
//! cgroup. Each device's data path owns its own guard links, pinned next to its other
//! links, so detaching the device (removing its pins) removes its guard.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::programs::{
    links::{CgroupAttachMode, FdLink},
    CgroupSock, CgroupSockopt, Program,
};
use aya::Ebpf;
use netclaim_common::{PROG_GUARD_SOCK, PROG_GUARD_SOCKOPT};

/// Pin file of the setsockopt guard link.
pub const LINK_GUARD_SOCKOPT: &str = "link_guard_sockopt";
/// Pin file of the sock_create guard link.
pub const LINK_GUARD_SOCK: &str = "link_guard_sock";

/// Why the guard could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("the pod's cgroup {cgroup:?} is not at {path}")]
    NoSuchCgroup { cgroup: String, path: PathBuf },
    #[error("opening cgroup {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guard program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("guard program {0} is missing from the eBPF object")]
    Missing(&'static str),
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

/// Resolves the runtime's name for a pod cgroup to an existing directory.
pub fn resolve(cgroup_parent: &str) -> Result<PathBuf, GuardError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
        GuardError::Open {
            path: "/proc/self/mountinfo".into(),
            source,
        }
    })?;
    let root = cgroup2_root(&mountinfo).ok_or(GuardError::NoCgroup2)?;
    let dir = pod_cgroup_dir(&root, cgroup_parent);
    if !dir.is_dir() {
        return Err(GuardError::NoSuchCgroup {
            cgroup: cgroup_parent.to_string(),
            path: dir,
        });
    }
    Ok(dir)
}

/// Verifies the guard programs of a fresh instance (done with the others, off the
/// pod-start path).
pub fn load(ebpf: &mut Ebpf) -> Result<(), GuardError> {
    let program = |name| GuardError::Program {
        program: name,
        source: aya::programs::ProgramError::AlreadyLoaded,
    };
    if let Some(Program::CgroupSockopt(p)) = ebpf.program_mut(PROG_GUARD_SOCKOPT) {
        if p.fd().is_err() {
            p.load().map_err(|source| GuardError::Program {
                program: PROG_GUARD_SOCKOPT,
                source,
            })?;
        }
    } else {
        return Err(GuardError::Missing(PROG_GUARD_SOCKOPT));
    }
    if let Some(Program::CgroupSock(p)) = ebpf.program_mut(PROG_GUARD_SOCK) {
        if p.fd().is_err() {
            p.load().map_err(|source| GuardError::Program {
                program: PROG_GUARD_SOCK,
                source,
            })?;
        }
    } else {
        return Err(program(PROG_GUARD_SOCK));
    }
    Ok(())
}

/// Attaches both guard programs to the cgroup directory `cgroup` (alongside whatever
/// else is attached there) and returns their links, setsockopt first.
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path) -> Result<[FdLink; 2], GuardError> {
    load(ebpf)?;
    let dir = std::fs::File::open(cgroup).map_err(|source| GuardError::Open {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let err = |program| move |source| GuardError::Program { program, source };
    let sockopt: &mut CgroupSockopt = ebpf
        .program_mut(PROG_GUARD_SOCKOPT)
        .ok_or(GuardError::Missing(PROG_GUARD_SOCKOPT))?
        .try_into()
        .map_err(err(PROG_GUARD_SOCKOPT))?;
    let id = sockopt
        .attach(dir.as_fd(), CgroupAttachMode::AllowMultiple)
        .map_err(err(PROG_GUARD_SOCKOPT))?;
    let first: FdLink = sockopt
        .take_link(id)
        .map_err(err(PROG_GUARD_SOCKOPT))?
        .into();
    let sock: &mut CgroupSock = ebpf
        .program_mut(PROG_GUARD_SOCK)
        .ok_or(GuardError::Missing(PROG_GUARD_SOCK))?
        .try_into()
        .map_err(err(PROG_GUARD_SOCK))?;
    let id = sock
        .attach(dir.as_fd(), CgroupAttachMode::AllowMultiple)
        .map_err(err(PROG_GUARD_SOCK))?;
    let second: FdLink = sock.take_link(id).map_err(err(PROG_GUARD_SOCK))?.into();
    Ok([first, second])
}

/// Whether a device's pin directory holds a guard.
pub fn is_pinned(dir: &Path) -> bool {
    dir.join(LINK_GUARD_SOCKOPT).exists() && dir.join(LINK_GUARD_SOCK).exists()
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
