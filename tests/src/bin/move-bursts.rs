//! move-bursts: the kernel's namespace moves without netclaim, in bursts as a pod with
//! several devices has them, and what other work on the machine does to them.
//!
//! Each burst moves `--size` veths back to back, each with one `RTM_NEWLINK` (target
//! namespace, new name, down) from a warm netlink socket, the way netclaim's hook moves
//! a pod's devices; `--rest-ms` passes between bursts. Every move waits in the kernel
//! for an RCU grace period (`rcu_barrier` in `__dev_change_net_namespace`), so
//! anything else that queues RCU callbacks meanwhile can make it wait longer:
//!
//! * `--socket-churn-us N`: a second thread opens and closes a netlink socket every N µs;
//! * `--up-after`: after each burst its veths come up in the target namespace, with
//!   their peers up in a third one, so IPv6 address configuration, router
//!   solicitations and MLD reports run on the earlier bursts' devices as on the devices
//!   earlier pods gave back in `bench-pod-start`;
//! * `--ipv6-off-peers`, `--ipv6-off-target`: IPv6 disabled on either side.
//!
//! Prints the median, mean and p99 move, how many took a fifth 4 ms tick (over
//! 18.5 ms), and the median burst over `--size` median moves. Test namespaces only.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use netclaim::netns::link::{self, LinkChange};
use netclaim::netns::netlink::NlSocket;
use netclaim_tests::floor::batch;
use netclaim_tests::netenv::{require_root, TestNetns};
use netclaim_tests::topology::disable_ipv6;

#[derive(Parser, Debug)]
#[command(about = "Bursts of veth namespace moves, alone or beside other kernel work")]
struct Args {
    #[arg(long, default_value_t = 25)]
    bursts: usize,
    #[arg(long, default_value_t = 8)]
    size: usize,
    #[arg(long, default_value_t = 1000)]
    rest_ms: u64,
    #[arg(long)]
    socket_churn_us: Option<u64>,
    #[arg(long)]
    up_after: bool,
    #[arg(long)]
    ipv6_off_peers: bool,
    #[arg(long)]
    ipv6_off_target: bool,
}

/// Opens and closes a netlink socket every `every` until `stop` is set.
fn churn(every: Duration, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        drop(NlSocket::route());
        std::thread::sleep(every);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    ensure!(
        args.bursts >= 1 && args.size >= 1,
        "--bursts and --size must be at least 1"
    );
    let n = args.bursts * args.size;
    let from = TestNetns::new("mbf")?;
    let to = TestNetns::new("mbt")?;
    let peers = TestNetns::new("mbp")?;
    if args.ipv6_off_peers {
        disable_ipv6(&peers)?;
    }
    if args.ipv6_off_target {
        disable_ipv6(&to)?;
    }
    let peers_name = peers.name().to_string();
    batch(
        &from,
        (0..n).map(|i| format!("link add mb{i} type veth peer name mbp{i} netns {peers_name}")),
    )?;
    batch(&peers, (0..n).map(|i| format!("link set mbp{i} up")))?;
    let target = std::fs::File::open(to.path()).context("opening the target namespace")?;
    let target_fd = target.as_raw_fd();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = args.socket_churn_us.map(|us| {
        let stop = stop.clone();
        std::thread::spawn(move || churn(Duration::from_micros(us), stop))
    });
    let mover = from.open();
    let into = to.open();
    let mut bursts: Vec<Vec<f64>> = Vec::with_capacity(args.bursts);
    let measured = (|| -> Result<()> {
        for b in 0..args.bursts {
            std::thread::sleep(Duration::from_millis(args.rest_ms));
            let names: Vec<(String, String)> = (b * args.size..(b + 1) * args.size)
                .map(|i| (format!("mb{i}"), format!("moved{i}")))
                .collect();
            let to_move = names.clone();
            let times = mover.run(move || -> Result<Vec<f64>> {
                let mut sock = NlSocket::route()?;
                let idx: Vec<u32> = to_move
                    .iter()
                    .map(|(name, _)| netclaim::netns::ifindex_of(name).context("veth"))
                    .collect::<Result<_>>()?;
                let mut times = Vec::with_capacity(idx.len());
                for (i, (_, new_name)) in idx.into_iter().zip(&to_move) {
                    let change = LinkChange {
                        netns_fd: Some(target_fd),
                        up: Some(false),
                        name: Some(new_name.clone()),
                        ..Default::default()
                    };
                    let started = Instant::now();
                    link::set_link(&mut sock, i, &change)?;
                    times.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(times)
            })??;
            bursts.push(times);
            if args.up_after {
                into.run(move || -> Result<()> {
                    let mut sock = NlSocket::route()?;
                    for (_, moved) in &names {
                        let i = netclaim::netns::ifindex_of(moved).context("moved veth")?;
                        let up = LinkChange {
                            up: Some(true),
                            ..Default::default()
                        };
                        link::set_link(&mut sock, i, &up)?;
                    }
                    Ok(())
                })??;
            }
        }
        Ok(())
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(c) = churner {
        let _ = c.join();
    }
    measured?;

    let mut all: Vec<f64> = bursts.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let mut totals: Vec<f64> = bursts.iter().map(|b| b.iter().sum()).collect();
    totals.sort_by(f64::total_cmp);
    let median = all[all.len() / 2];
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    let slow = all.iter().filter(|t| **t > 18.5).count();
    let burst = totals[totals.len() / 2];
    println!("{args:?}");
    println!(
        "moves {}: median {median:.2} ms, mean {mean:.2}, p99 {p99:.2}, over 18.5 ms {slow}",
        all.len()
    );
    println!(
        "burst of {}: median {burst:.2} ms = {:.3} x {} median moves",
        args.size,
        burst / (args.size as f64 * median),
        args.size
    );
    Ok(())
}
