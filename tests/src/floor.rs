//! The kernel's floor for handing a device to a pod: one network-namespace move of a
//! veth, done the cheapest way the kernel allows (one `RTM_NEWLINK` with
//! `IFLA_NET_NS_FD` from a netlink socket that is already open), timed one move at a
//! time. Benchmarks measure it in the same run as what they compare with it.
//!
//! [`up_netns_move_floor`] is the same move for a device as a pod leaves it: up, with
//! an address, IPv6 on (the kernel's default), its peer up, resting between moves. The
//! kernel closes such a device inside the move, and on these machines that costs about
//! half a floor more (measured: 23.5 ms against 15.6; the same veth with IPv6 disabled
//! moves at the floor).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netclaim::netns::link::{self, LinkChange};
use netclaim::netns::netlink::NlSocket;

use crate::netenv::TestNetns;

/// Runs `lines` with `ip -batch` in `ns`.
fn batch(ns: &TestNetns, lines: impl Iterator<Item = String>) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), lines.collect::<Vec<_>>().join("\n") + "\n")?;
    ns.ip(&["-batch", &file.path().to_string_lossy()])?;
    Ok(())
}

/// Median and all samples of `moves` single veth moves between two test namespaces.
pub fn netns_move_floor(moves: usize) -> Result<(Duration, Vec<Duration>)> {
    let from = TestNetns::new("flf")?;
    let to = TestNetns::new("flt")?;
    batch(
        &from,
        (0..moves).map(|i| format!("link add fl{i} type veth peer name flp{i}")),
    )?;
    time_moves("fl", &from, &to, moves, Duration::ZERO)
}

/// Median and all samples of `moves` single moves of up veths with an IPv4 address
/// and IPv6 on, peers up in a third namespace, each after `rest` without traffic.
pub fn up_netns_move_floor(moves: usize, rest: Duration) -> Result<(Duration, Vec<Duration>)> {
    let from = TestNetns::new("fuf")?;
    let to = TestNetns::new("fut")?;
    let wire = TestNetns::new("fuw")?;
    let wire_name = wire.name().to_string();
    batch(
        &from,
        (0..moves).map(|i| format!("link add fu{i} type veth peer name fup{i} netns {wire_name}")),
    )?;
    batch(&wire, (0..moves).map(|i| format!("link set fup{i} up")))?;
    batch(
        &from,
        (0..moves).flat_map(|i| {
            [
                format!("link set fu{i} up"),
                format!("addr add 192.0.2.{}/32 dev fu{i}", i % 250 + 1),
            ]
        }),
    )?;
    // Link-local addresses and their routes settle before the first move.
    std::thread::sleep(Duration::from_millis(500));
    time_moves("fu", &from, &to, moves, rest)
}

/// Moves `{prefix}{i}` from `from` to `to`, one at a time.
fn time_moves(
    prefix: &'static str,
    from: &TestNetns,
    to: &TestNetns,
    moves: usize,
    rest: Duration,
) -> Result<(Duration, Vec<Duration>)> {
    let target = std::fs::File::open(to.path()).context("opening the target namespace")?;
    let target_fd = target.as_raw_fd();
    let samples = from.open().run(move || -> Result<Vec<Duration>> {
        let mut sock = NlSocket::route()?;
        let mut samples = Vec::with_capacity(moves);
        for i in 0..moves {
            let idx = netclaim::netns::ifindex_of(&format!("{prefix}{i}")).context("veth")?;
            std::thread::sleep(rest);
            let change = LinkChange {
                netns_fd: Some(target_fd),
                ..Default::default()
            };
            let started = Instant::now();
            link::set_link(&mut sock, idx, &change)?;
            samples.push(started.elapsed());
        }
        Ok(samples)
    })??;
    drop(target);
    let mut sorted = samples.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    Ok((median, samples))
}
