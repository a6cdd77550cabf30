//! The client's UDP socket: port 68 on one interface, in the namespace of the thread
//! that opens it (a pod's, entered on a dedicated thread; see [`super::keeper`]).
//!
//! The interface has no IPv4 address while a lease is being acquired, so the socket
//! is bound to 0.0.0.0:68 and pinned to the device with `SO_BINDTODEVICE`: the kernel
//! sends to 255.255.255.255 out of that device with source 0.0.0.0, and delivers
//! broadcast replies to it (kernel 6.18, checked by the DHCP kernel tests).
//! `SO_REUSEADDR` lets clients on several interfaces of one pod bind port 68 at once.
//! The socket is opened per exchange and closed after it; it owns nothing else.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    time::Instant,
};

use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};

use super::exchange::{Destination, Transport};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// A UDP socket on port 68 of one device.
#[derive(Debug)]
pub struct DeviceSocket {
    socket: UdpSocket,
}

fn io_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl DeviceSocket {
    /// Opens the socket on `device` in the calling thread's namespace.
    pub fn open(device: &str) -> io::Result<Self> {
        let fd: OwnedFd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io_err)?;
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io_err)?;
        setsockopt(&fd, sockopt::Broadcast, &true).map_err(io_err)?;
        setsockopt(
            &fd,
            sockopt::BindToDevice,
            &std::ffi::OsString::from(device),
        )
        .map_err(io_err)?;
        let any = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
        bind(fd.as_raw_fd(), &any).map_err(io_err)?;
        Ok(Self {
            socket: UdpSocket::from(fd),
        })
    }
}

impl Transport for DeviceSocket {
    fn send(&mut self, msg: &[u8], to: Destination) -> io::Result<()> {
        let ip = match to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Server(s) => s,
        };
        self.socket
            .send_to(msg, SocketAddrV4::new(ip, SERVER_PORT))
            .map(|_| ())
    }

    fn recv(&mut self, until: Instant, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(buf) {
                Ok((n, from)) if from.port() == SERVER_PORT => return Ok(Some(n)),
                // Only servers (and relays) send from port 67.
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }
}
