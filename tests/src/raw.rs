//! Raw Ethernet frames as an attacker in a pod sends them, and a sniffer on the far
//! end of the wire that records what arrived.
//!
//! Both are `AF_PACKET` sockets bound to one interface, opened on a thread inside the
//! namespace (the socket keeps its namespace afterwards). The receiving kernel may
//! strip VLAN tags into metadata, so callers match frames by a payload marker, never
//! by their raw bytes.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// `SOL_XDP` and `XDP_UMEM_REG` (uapi `linux/if_xdp.h`, `linux/socket.h`).
const SOL_XDP: libc::c_int = 283;
const XDP_UMEM_REG: libc::c_int = 4;

/// Creates an `AF_XDP` socket and registers a small UMEM, the first step of sending
/// through one; returns the step's error.
pub fn try_af_xdp() -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let area = vec![0u8; 2 * 4096 + 4096];
    let start = (area.as_ptr() as usize + 4095) & !4095;
    // struct xdp_umem_reg { u64 addr; u64 len; u32 chunk_size; u32 headroom; u32 flags; u32 tx_metadata_len; }
    let reg: [u64; 4] = [start as u64, 2 * 4096, 2048, 0];
    // SAFETY: reg is a valid xdp_umem_reg of the stated size; `area` outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            XDP_UMEM_REG,
            reg.as_ptr() as *const libc::c_void,
            std::mem::size_of_val(&reg) as u32,
        )
    };
    drop(area);
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
use netclaim::netns::Netns;

const ETH_P_ALL: u16 = 0x0003;
/// `SOL_PACKET` option that sends straight to the driver, skipping the qdisc layer.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// `sll_pkttype` of a frame the interface sent.
const PACKET_OUTGOING: u8 = 4;

fn packet_socket(ifindex: u32, protocol: u16) -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = sockaddr_ll(ifindex, protocol);
    // SAFETY: addr is a valid sockaddr_ll of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
    }
    Ok(fd)
}

fn sockaddr_ll(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr
}

/// Sends hand-made frames out of one interface, as `CAP_NET_RAW` in a pod allows.
pub struct RawSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl RawSender {
    /// Opens the sender on `ifname` inside `ns`.
    pub fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        let name = ifname.to_string();
        ns.run(move || -> Result<Self> {
            let ifindex = netclaim::netns::ifindex_of(&name).context("no such interface")?;
            let fd = packet_socket(ifindex, 0)?;
            Ok(Self { fd, ifindex })
        })?
    }

    /// Asks for `PACKET_QDISC_BYPASS`: frames straight to the driver, past tc egress,
    /// as an attacker would try. The kernel's (or a guard's) refusal is returned.
    pub fn request_qdisc_bypass(&self) -> std::io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: valid fd and an int option of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one frame; an error from the kernel (a drop reported as EPERM, say) is
    /// returned, not hidden.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let addr = sockaddr_ll(self.ifindex, 0);
        // SAFETY: frame and addr are valid for the stated lengths.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Records every frame arriving on one interface, on a thread.
pub struct Sniffer {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    pub fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let name = ifname.to_string();
        let fd = ns.run(move || -> Result<OwnedFd> {
            let ifindex = netclaim::netns::ifindex_of(&name).context("no such interface")?;
            packet_socket(ifindex, ETH_P_ALL)
        })??;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: valid fd and a timeval of the stated size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f2, s2) = (frames.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                let mut from = sockaddr_ll(0, 0);
                let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buf and from are valid for their stated lengths.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut from_len,
                    )
                };
                // Only what arrived: the sniffing side's own replies (an ICMP error
                // quoting the marker, say) are not frames that crossed the wire.
                if n > 0 && from.sll_pkttype != PACKET_OUTGOING {
                    if let Ok(mut v) = f2.lock() {
                        v.push(buf[..n as usize].to_vec());
                    }
                }
            }
        });
        Ok(Self {
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// How many recorded frames contain `marker`.
    pub fn seen(&self, marker: &[u8]) -> usize {
        let frames = self.frames.lock().map(|v| v.clone()).unwrap_or_default();
        frames
            .iter()
            .filter(|f| f.windows(marker.len()).any(|w| w == marker))
            .count()
    }

    /// Waits until `marker` was seen `want` times or `timeout` passed.
    pub fn wait_seen(&self, marker: &[u8], want: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.seen(marker);
            if n >= want || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails unless the sniffer is recording (a frame sent to it arrives).
    pub fn prove_alive(&self, sender: &RawSender, frame: &[u8], marker: &[u8]) -> Result<()> {
        sender.send(frame).context("sending the control frame")?;
        if self.wait_seen(marker, 1, Duration::from_secs(3)) == 0 {
            bail!("the control frame never reached the sniffer");
        }
        Ok(())
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frame builders for the attack tests: only what the tests need, written plainly.
pub mod frame {
    /// Ethernet header with optional VLAN tags (TPID, VID) before `ethertype`.
    pub fn eth(dst: [u8; 6], src: [u8; 6], tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        for (tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in bytes.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// IPv4 header (with `options`) + a UDP header + `payload`. `total_len` overrides
    /// the header's total length (for truncation attacks); `frag` is flags+offset.
    pub fn ipv4_udp(
        src: [u8; 4],
        dst: [u8; 4],
        options: &[u8],
        frag: u16,
        payload: &[u8],
        total_len: Option<u16>,
    ) -> Vec<u8> {
        let ihl = 5 + options.len() / 4;
        let udp_len = 8 + payload.len();
        let total = total_len.unwrap_or((ihl * 4 + udp_len) as u16);
        let mut h = vec![0x40 | ihl as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, 17, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&[0x30, 0x39, 0x23, 0x28]);
        h.extend_from_slice(&(udp_len as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(payload);
        h
    }

    /// IPv6 header + `body` (already holding any extension headers), `next` the first
    /// next-header value.
    pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, hop_limit: u8, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.push(next);
        h.push(hop_limit);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(body);
        h
    }

    /// Ethernet/IPv4 ARP.
    pub fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&tpa);
        a
    }

    /// ICMPv6 neighbour discovery message (`kind` 133/135/136) with `target` (NS/NA)
    /// and one link-layer address option (`lla`: option type and MAC), then `tail`.
    pub fn nd(
        kind: u8,
        target: Option<[u8; 16]>,
        lla: Option<(u8, [u8; 6])>,
        tail: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![kind, 0, 0, 0];
        m.extend_from_slice(&[if kind == 136 { 0x60 } else { 0 }, 0, 0, 0]);
        if let Some(t) = target {
            m.extend_from_slice(&t);
        }
        if let Some((ty, mac)) = lla {
            m.extend_from_slice(&[ty, 1]);
            m.extend_from_slice(&mac);
        }
        m.extend_from_slice(tail);
        m
    }
}
