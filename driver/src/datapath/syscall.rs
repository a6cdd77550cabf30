//! The `bpf(2)` commands aya 0.14 does not offer: making and pinning a cgroup link
//! (the socket guard), opening a pin, reading a pinned link's device, and detaching a
//! link where it is. Each takes a zero-padded prefix of `union bpf_attr`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Commands of uapi `enum bpf_cmd`.
pub(super) const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub(super) const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// One `bpf(2)` call; returns what the kernel returned (a new fd for some commands).
pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a zero-padded bpf_attr prefix valid for the command, and every
    // pointer in it outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 64usize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// `path` as the kernel takes it (no interior NUL).
pub(super) fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// A new fd of the object pinned at `pin` (`BPF_OBJ_GET`).
pub(super) fn obj_get(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = c_path(pin)?;
    // obj_get: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ifindex of the device the link pinned at `pin` is attached to (XDP and TCX
/// links: `bpf_link_info`'s union starts at byte 16 and both begin with `ifindex`);
/// 0 when its device is gone or it was detached.
pub(super) fn link_ifindex(pin: &Path) -> std::io::Result<u32> {
    let link = obj_get(pin)?;
    let mut info = [0u8; 64];
    // info: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u64; 8];
    attr[0] = u64::from(link.as_raw_fd() as u32) | (info.len() as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes([info[16], info[17], info[18], info[19]]))
}

/// Detaches the link pinned at `pin` from its hook now (`BPF_LINK_DETACH`), in this
/// thread. Removing a pin only drops a reference: the kernel releases the link after a
/// grace period, from a workqueue, and an XDP or TCX release takes RTNL and waits for
/// grace periods there, in the middle of whatever the node does next. Detached here,
/// that later release has nothing left to do. The pin stays; the link stays pinned
/// (and its program loaded) until the pin is removed.
pub(super) fn detach_link(pin: &Path) -> std::io::Result<()> {
    let link = obj_get(pin)?;
    // link_detach: link_fd (u32).
    let mut attr = [0u64; 8];
    attr[0] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}
