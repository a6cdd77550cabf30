//! Facts outside rtnetlink: the kernel driver, bus info and speed, from ethtool ioctls
//! on a socket of the calling thread's namespace (so they describe the link in the
//! scanned namespace). PCI details come from sysfs ([`super::sysfs`]). Read-only.

use std::{
    ffi::c_void,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSET: u32 = 0x0000_0001;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const IFNAMSIZ: usize = 16;

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
struct EthtoolCmd {
    cmd: u32,
    supported: u32,
    advertising: u32,
    speed: u16,
    duplex: u8,
    port: u8,
    phy_address: u8,
    transceiver: u8,
    autoneg: u8,
    mdio_support: u8,
    maxtxpkt: u32,
    maxrxpkt: u32,
    speed_hi: u16,
    eth_tp_mdix: u8,
    eth_tp_mdix_ctrl: u8,
    lp_advertising: u32,
    reserved: [u32; 2],
}

/// What ethtool knows about one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EthtoolFacts {
    pub driver: Option<String>,
    pub bus_info: Option<String>,
    /// Mb/s.
    pub speed: Option<u32>,
}

/// An `AF_INET` datagram socket in the calling thread's namespace, for ethtool ioctls.
pub struct EthtoolSocket(OwnedFd);

impl EthtoolSocket {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, ifname: &str, data: *mut c_void) -> bool {
        let bytes = ifname.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ {
            return false;
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data,
            _pad: [0; 16],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: req is a valid ifreq whose data points at a live ethtool struct of
        // the size the command expects.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        rc == 0
    }

    /// Driver, bus info and speed of `ifname`; missing pieces stay `None`.
    pub fn facts(&self, ifname: &str) -> EthtoolFacts {
        let mut out = EthtoolFacts::default();
        // SAFETY: all-zero is a valid value of this plain-data struct.
        let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        if self.ioctl(ifname, (&mut info as *mut EthtoolDrvinfo).cast()) {
            out.driver = c_string(&info.driver);
            out.bus_info = c_string(&info.bus_info);
        }
        // SAFETY: as above.
        let mut cmd: EthtoolCmd = unsafe { std::mem::zeroed() };
        cmd.cmd = ETHTOOL_GSET;
        if self.ioctl(ifname, (&mut cmd as *mut EthtoolCmd).cast()) {
            let speed = (u32::from(cmd.speed_hi) << 16) | u32::from(cmd.speed);
            if speed != 0 && speed != u32::MAX && speed != u32::from(u16::MAX) {
                out.speed = Some(speed);
            }
        }
        out
    }
}

fn c_string(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<EthtoolDrvinfo>(), 196);
        assert_eq!(std::mem::size_of::<EthtoolCmd>(), 44);
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
