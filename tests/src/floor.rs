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

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netclaim::netns::link::{self, LinkChange};
use netclaim::netns::netlink::NlSocket;

use crate::netenv::TestNetns;

/// Runs `lines` with `ip -batch` in `ns`.
pub fn batch(ns: &TestNetns, lines: impl Iterator<Item = String>) -> Result<()> {
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
            let started = Instant::now();
            move_link(&mut sock, idx, target_fd)?;
            samples.push(started.elapsed());
        }
        Ok(samples)
    })??;
    drop(target);
    Ok((median(&samples), samples))
}

/// The floor's move: link `index` into the namespace open at `target_fd`, one
/// `RTM_NEWLINK` with `IFLA_NET_NS_FD` and nothing else.
pub fn move_link(sock: &mut NlSocket, index: u32, target_fd: RawFd) -> Result<()> {
    let change = LinkChange {
        netns_fd: Some(target_fd),
        ..Default::default()
    };
    link::set_link(sock, index, &change)?;
    Ok(())
}

/// The median of `samples` (the upper one of an even count; zero for none).
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// What the mover thread is asked: move the next `n` spares, answer their times.
type Ask = (usize, tokio::sync::oneshot::Sender<Result<Vec<Duration>>>);

/// The floor read again inside a series of pods: spare veths (both ends in a namespace
/// of their own, down, never up) moved a few at a time between the pods, each move the
/// same single `RTM_NEWLINK` from a warm socket as [`netns_move_floor`]. The floor
/// measured before a series sees a quiet kernel; these moves see the kernel as the
/// hooks do, with the devices earlier pods gave back coming up at home (IPv6 address
/// configuration and multicast reports start on them and on their peers), work that
/// delays the RCU grace period every move waits for.
pub struct SeriesFloor {
    ask: Option<std::sync::mpsc::Sender<Ask>>,
    mover: Option<std::thread::JoinHandle<()>>,
    // Dropped after the mover ended (fields drop in order).
    _from: TestNetns,
    _to: TestNetns,
}

impl SeriesFloor {
    /// Creates `spares` veth pairs; each is moved once.
    pub fn new(spares: usize) -> Result<Self> {
        let from = TestNetns::new("fsf")?;
        let to = TestNetns::new("fst")?;
        if spares > 0 {
            batch(
                &from,
                (0..spares).map(|i| format!("link add fs{i} type veth peer name fsp{i}")),
            )?;
        }
        let source = std::fs::File::open(from.path()).context("opening the spares' namespace")?;
        let target = std::fs::File::open(to.path()).context("opening the target namespace")?;
        let (ask, asks) = std::sync::mpsc::channel::<Ask>();
        let mover = std::thread::Builder::new()
            .name("series-floor".into())
            .spawn(move || {
                let ready = nix::sched::setns(&source, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("entering the spares' namespace")
                    .and_then(|()| NlSocket::route().context("opening a netlink socket"));
                let mut sock = match ready {
                    Ok(sock) => sock,
                    Err(why) => {
                        // The first asker gets the error; the rest learn the mover is gone.
                        if let Ok((_, reply)) = asks.recv() {
                            let _ = reply.send(Err(why));
                        }
                        return;
                    }
                };
                let mut next = 0usize;
                for (n, reply) in asks {
                    let moved = (0..n)
                        .map(|_| {
                            let name = format!("fs{next}");
                            next += 1;
                            let idx = netclaim::netns::ifindex_of(&name)
                                .with_context(|| format!("looking up {name}"))?;
                            let change = LinkChange {
                                netns_fd: Some(target.as_raw_fd()),
                                ..Default::default()
                            };
                            let started = Instant::now();
                            link::set_link(&mut sock, idx, &change)
                                .with_context(|| format!("moving {name}"))?;
                            Ok(started.elapsed())
                        })
                        .collect();
                    let _ = reply.send(moved);
                }
            })
            .context("starting the series floor's mover")?;
        Ok(Self {
            ask: Some(ask),
            mover: Some(mover),
            _from: from,
            _to: to,
        })
    }

    /// Moves the next `n` spares back to back; the time of each move.
    pub async fn moves(&self, n: usize) -> Result<Vec<Duration>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.ask
            .as_ref()
            .context("the series floor is closed")?
            .send((n, reply))
            .map_err(|_| anyhow::anyhow!("the series floor's mover ended"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the series floor's mover ended"))?
            .context("series floor")
    }
}

impl Drop for SeriesFloor {
    fn drop(&mut self) {
        drop(self.ask.take());
        if let Some(mover) = self.mover.take() {
            let _ = mover.join();
        }
    }
}
