//! The kernel's floor for handing a device to a pod: one network-namespace move of a
//! veth, done the cheapest way the kernel allows (one `RTM_NEWLINK` with
//! `IFLA_NET_NS_FD` from a netlink socket that is already open), timed one move at a
//! time. Benchmarks measure it in the same run as what they compare with it.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netclaim::netns::link::{self, LinkChange};
use netclaim::netns::netlink::NlSocket;

use crate::netenv::TestNetns;

/// Median and all samples of `moves` single veth moves between two test namespaces.
pub fn netns_move_floor(moves: usize) -> Result<(Duration, Vec<Duration>)> {
    let from = TestNetns::new("flf")?;
    let to = TestNetns::new("flt")?;
    let mut batch = String::new();
    for i in 0..moves {
        batch.push_str(&format!("link add fl{i} type veth peer name flp{i}\n"));
    }
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), batch)?;
    from.ip(&["-batch", &file.path().to_string_lossy()])?;
    let target = std::fs::File::open(to.path()).context("opening the target namespace")?;
    let target_fd = target.as_raw_fd();
    let samples = from.open().run(move || -> Result<Vec<Duration>> {
        let mut sock = NlSocket::route()?;
        let mut samples = Vec::with_capacity(moves);
        for i in 0..moves {
            let idx = netclaim::netns::ifindex_of(&format!("fl{i}")).context("veth")?;
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
