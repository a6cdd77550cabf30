//! Real packets between test namespaces: UDP senders and counting receivers that run
//! on threads inside a namespace.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use netclaim::netns::Netns;

/// Sends `count` UDP datagrams of `payload` bytes from `src` (bound; port 0 = any) to
/// `dst` inside `ns`. Returns how many the kernel accepted; sends that the data path
/// drops still count as accepted for the socket when the drop happens at tc egress.
pub fn udp_send(
    ns: &Netns,
    src: SocketAddr,
    dst: SocketAddr,
    count: u32,
    payload: usize,
) -> Result<u32> {
    ns.run(move || -> Result<u32> {
        let sock = UdpSocket::bind(src).with_context(|| format!("bind {src}"))?;
        let buf = vec![0x5a_u8; payload];
        let mut sent = 0;
        for _ in 0..count {
            // A drop at tc egress surfaces as an error (EPERM) on some kernels; the
            // packet was still offered to the data path, which is what tests count.
            let _ = sock.send_to(&buf, dst);
            sent += 1;
        }
        Ok(sent)
    })?
}

/// A UDP receiver counting datagrams on a thread inside a namespace.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Binds `addr` inside `ns` and starts counting.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let sock = ns.run(move || -> Result<UdpSocket> {
            let s = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            // A deep buffer, so a receiver thread starved of CPU loses less; what it
            // still loses is visible in `udp_rcvbuf_errors`.
            let size: libc::c_int = 16 << 20;
            // SAFETY: valid socket fd and a c_int option value of the stated size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            Ok(s)
        })??;
        // A bound socket keeps its namespace; it can be read from any thread.
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s2, r2) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    r2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            stop,
            received,
            thread: Some(thread),
        })
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `expected` arrived or `timeout` passed; returns the count.
    pub fn wait_for(&self, expected: u64, timeout: Duration) -> u64 {
        let deadline = std::time::Instant::now() + timeout;
        while self.count() < expected && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Give stragglers a moment so "more than expected" is caught too.
        std::thread::sleep(Duration::from_millis(50));
        self.count()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// UDP datagrams the namespace's sockets dropped because their receive buffer was
/// full (`RcvbufErrors` of `/proc/net/snmp`, read from inside the namespace): losses
/// that happen after the network, in a receiver that could not keep up.
pub fn udp_rcvbuf_errors(ns: &Netns) -> Result<u64> {
    ns.run(|| -> Result<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            anyhow::bail!("no Udp lines in /proc/net/snmp");
        };
        let i = names
            .split_whitespace()
            .position(|n| n == "RcvbufErrors")
            .context("no RcvbufErrors column")?;
        values
            .split_whitespace()
            .nth(i)
            .context("short Udp line")?
            .parse()
            .context("RcvbufErrors value")
    })?
}

/// Ids of BPF programs, maps and links currently loaded in the kernel.
pub fn kernel_bpf_ids() -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let progs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect();
    let links = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .collect();
    (progs, maps, links)
}
