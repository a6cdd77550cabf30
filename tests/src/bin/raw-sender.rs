//! An attacker process for the socket-guard tests: joins a cgroup (as a pod's
//! processes are), enters a network namespace, tries the two ways to send past tc
//! egress, and sends the given frames anyway.
//!
//! Usage: `raw-sender <cgroup-dir> <netns-path> <ifname> <hex-frame>...`
//! Prints one JSON object: what `PACKET_QDISC_BYPASS` and `AF_XDP` answered and how
//! many frames the kernel accepted.

use anyhow::{bail, Context, Result};
use netclaim::netns::Netns;
use netclaim_tests::raw::{try_af_xdp, RawSender};

fn hex(s: &str) -> Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).context("odd hex")?, 16).context("hex"))
        .collect()
}

fn answer(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e
            .raw_os_error()
            .map_or(e.to_string(), |n| format!("errno {n}")),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cgroup, netns, ifname, frames @ ..] = args.as_slice() else {
        bail!("usage: raw-sender <cgroup-dir> <netns-path> <ifname> <hex-frame>...");
    };
    std::fs::write(
        format!("{cgroup}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("joining cgroup {cgroup}"))?;
    let netns = Netns::open(netns)?;
    let frames: Vec<Vec<u8>> = frames.iter().map(|f| hex(f)).collect::<Result<_>>()?;
    // Sockets belong to the cgroup of the process that creates them: joined above.
    let xdp = answer(try_af_xdp());
    let sender = RawSender::open(&netns, ifname)?;
    let bypass = answer(sender.request_qdisc_bypass());
    let sent = frames.iter().filter(|f| sender.send(f).is_ok()).count();
    let report = serde_json::json!({"qdisc_bypass": bypass, "af_xdp": xdp, "sent": sent});
    println!("{report}");
    Ok(())
}
