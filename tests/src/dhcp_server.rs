//! A real DHCP server for tests: Debian's `dnsmasq` (package `dnsmasq-base`, installed
//! by `cargo xtask setup`) running in a test's wire namespace, killed by PID on drop.
//!
//! ```text
//!  pod ns                          wire ns
//!  a0  (no address)     <veth>     b0  192.0.2.1/24   dnsmasq: 192.0.2.100-150, router 192.0.2.1
//!                                  lo  198.51.100.1, 203.0.113.1
//! ```
//! The lease file lives in a temporary directory the server owns, so a test can read
//! what the server believes (which client holds which address, until when).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netenv::{veth, TestNetns};

pub const POD_IF: &str = "a0";
pub const WIRE_IF: &str = "b0";
pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// A pod namespace whose interface has no address, and a wire namespace with the
/// server's address on the other end.
pub struct DhcpWire {
    pub pod: TestNetns,
    pub wire: TestNetns,
    pub pod_mac: String,
}

impl DhcpWire {
    pub fn new(tag: &str) -> Result<Self> {
        let pod = TestNetns::new(&format!("{tag}p"))?;
        let wire = TestNetns::new(&format!("{tag}w"))?;
        for ns in [&pod, &wire] {
            // Only IPv4 (and the test's own packets) on the veth.
            ns.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
        }
        veth(&pod, POD_IF, &wire, WIRE_IF)?;
        let pod_mac = pod.mac(POD_IF)?;
        wire.ip(&["addr", "add", "192.0.2.1/24", "dev", WIRE_IF])?;
        for dst in ["198.51.100.1/32", "203.0.113.1/32"] {
            wire.ip(&["addr", "add", dst, "dev", "lo"])?;
        }
        Ok(Self { pod, wire, pod_mac })
    }

    /// The pod interface's MAC as bytes.
    pub fn pod_mac_bytes(&self) -> Result<[u8; 6]> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = self.pod_mac.split(':').collect();
        if parts.len() != 6 {
            bail!("MAC {:?}", self.pod_mac);
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).with_context(|| format!("MAC {:?}", self.pod_mac))?;
        }
        Ok(out)
    }
}

/// One line of dnsmasq's lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLease {
    /// Unix seconds when the server lets the lease go.
    pub expires: u64,
    pub mac: String,
    pub address: Ipv4Addr,
}

/// A running dnsmasq, killed (by its PID) and reaped on drop.
pub struct DhcpServer {
    child: Child,
    dir: tempfile::TempDir,
}

impl DhcpServer {
    /// Starts dnsmasq on `wire`'s `b0` handing out 192.0.2.100-150 for `lease_secs`
    /// (dnsmasq's minimum is 120) with router 192.0.2.1, plus `extra` arguments.
    pub fn start(wire: &TestNetns, lease_secs: u32, extra: &[&str]) -> Result<Self> {
        Self::start_on(wire, WIRE_IF, lease_secs, extra)
    }

    /// As [`DhcpServer::start`], on interface `iface` of `wire` (which must hold an
    /// address in 192.0.2.0/24).
    pub fn start_on(
        wire: &TestNetns,
        iface: &str,
        lease_secs: u32,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for dnsmasq")?;
        let leases = dir.path().join("leases");
        let log = dir.path().join("log");
        std::fs::write(&leases, "").context("creating the lease file")?;
        let log_file = std::fs::File::create(&log).context("creating the dnsmasq log")?;
        let mut cmd = wire.command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--group=root",
            "--bind-interfaces",
            &format!("--interface={iface}"),
            &format!("--dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,{lease_secs}s"),
            "--dhcp-option=3,192.0.2.1",
            "--dhcp-authoritative",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
        let mut child = cmd
            .spawn()
            .context("spawning dnsmasq (is dnsmasq-base installed? `cargo xtask setup`)")?;
        // In --no-daemon mode dnsmasq writes no PID file; it is ready once it says its
        // DHCP sockets are bound.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("sockets bound") {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("dnsmasq exited at start ({status}): {}", text.trim());
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dnsmasq did not start within 5 s: {}", text.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, dir })
    }

    pub fn lease_file(&self) -> PathBuf {
        self.dir.path().join("leases")
    }

    /// The leases the server holds now (its lease file, rewritten on every change).
    pub fn leases(&self) -> Result<Vec<ServerLease>> {
        parse_leases(&self.lease_file())
    }

    /// Waits until `check` holds for the server's leases, or fails after `within`.
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&[ServerLease]) -> bool,
    ) -> Result<Vec<ServerLease>> {
        let until = Instant::now() + within;
        loop {
            let leases = self.leases()?;
            if check(&leases) {
                return Ok(leases);
            }
            if Instant::now() > until {
                bail!("server leases never showed {what}: {leases:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What dnsmasq logged so far (one line per DHCP message it handled).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq's lease file: `expiry mac ip hostname client-id` per line.
pub fn parse_leases(path: &Path) -> Result<Vec<ServerLease>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || line.starts_with("duid") {
            continue;
        }
        out.push(ServerLease {
            expires: f[0]
                .parse()
                .with_context(|| format!("lease line {line:?}"))?,
            mac: f[1].to_string(),
            address: f[2]
                .parse()
                .with_context(|| format!("lease line {line:?}"))?,
        });
    }
    Ok(out)
}
