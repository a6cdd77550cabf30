//! bench-move-gaps: what work between back-to-back namespace moves costs the moves.
//!
//! A pod with several devices moves them one after another, and every move ends in
//! `rcu_barrier()` under RTNL. This measures, in test namespaces only, eight
//! back-to-back moves of down veths (one `RTM_NEWLINK` each from a warm netlink socket,
//! as the floor in `bench-pod-start`) with something done between each move and the
//! next, `--rounds` times per kind of gap:
//!
//! * `none`: nothing (the floor's own series);
//! * `user_3ms`, `user_4ms`: that long of work in user space on the moving thread;
//! * `getlink_worker`: a namespace worker (another thread, in the target namespace)
//!   reads the moved link through a socket it keeps open;
//! * `socket_worker`: the worker opens a netlink socket and closes it;
//! * `address_worker`: the worker adds an IPv4 address to the moved link through a
//!   socket it keeps open (what configuring a device in its pod starts with);
//! * `address_mover`, `config_mover`: the moving thread itself adds the address (and,
//!   for `config`, sets the link up with an MTU) through a socket made in the target
//!   namespace: whether configuring each device between the moves, on the thread that
//!   moves them, would come free.
//!
//! Keys (`bench/results/move-gaps.json`): `moves_8_<gap>_p50_ms` (the eight moves and
//! the seven gaps, start of the first to end of the last) and
//! `moves_8_<gap>_over_none` (against `none` in the same run); `floor_ms` is the
//! median single move measured first, as in `bench-pod-start`. Each round starts after
//! a pause of its own length, so first moves start at any point of a scheduler tick.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netclaim::netns::{
    ifindex_of,
    link::{self, LinkChange},
    netlink::NlSocket,
    Netns,
};
use netclaim_tests::{floor, netenv::TestNetns};

const DEVICES: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Gap {
    None,
    User(Duration),
    GetlinkWorker,
    SocketWorker,
    AddressWorker,
    AddressMover,
    ConfigMover,
}

impl Gap {
    fn key(self) -> String {
        match self {
            Gap::None => "none".into(),
            Gap::User(d) => format!("user_{}ms", d.as_millis()),
            Gap::GetlinkWorker => "getlink_worker".into(),
            Gap::SocketWorker => "socket_worker".into(),
            Gap::AddressWorker => "address_worker".into(),
            Gap::AddressMover => "address_mover".into(),
            Gap::ConfigMover => "config_mover".into(),
        }
    }
}

thread_local! {
    /// The worker's socket in the target namespace, kept open across gaps.
    static KEPT: RefCell<Option<NlSocket>> = const { RefCell::new(None) };
}

/// Runs `gap` after device `moved` (`gx{moved}`, now in `to`) went.
fn run_gap(gap: Gap, to: &Netns, moved: usize, round: usize) -> Result<()> {
    let name = format!("gx{moved}");
    match gap {
        Gap::None | Gap::AddressMover | Gap::ConfigMover => Ok(()),
        Gap::User(d) => {
            let started = Instant::now();
            while started.elapsed() < d {
                std::hint::spin_loop();
            }
            Ok(())
        }
        Gap::SocketWorker => to.run(|| -> Result<()> {
            drop(NlSocket::route()?);
            Ok(())
        })?,
        Gap::GetlinkWorker | Gap::AddressWorker => to.run(move || -> Result<()> {
            KEPT.with(|kept| -> Result<()> {
                let mut kept = kept.borrow_mut();
                let sock = match kept.as_mut() {
                    Some(s) => s,
                    None => kept.insert(NlSocket::route()?),
                };
                let facts = link::link_by_name(sock, &name)?
                    .with_context(|| format!("{name} is not in the target namespace"))?;
                if matches!(gap, Gap::AddressWorker) {
                    let address = format!("192.0.2.{}/32", round % 25 * 8 + moved + 1);
                    link::add_address(sock, facts.ifindex, address.parse()?)?;
                }
                Ok(())
            })
        })?,
    }
}

/// Moves `gx0..gx7` from `from` to `to` back to back with `gap` between them; the time
/// from the first move's start to the last one's end.
fn eight_moves(from: &Netns, to: &Netns, to_fd: i32, gap: Gap, round: usize) -> Result<Duration> {
    let indexes = from.run(|| -> Result<Vec<u32>> {
        (0..DEVICES)
            .map(|i| ifindex_of(&format!("gx{i}")).with_context(|| format!("gx{i} is not home")))
            .collect()
    })??;
    let to = to.try_clone()?;
    // For the mover's own gaps: a socket made in the target namespace, used from the
    // moving thread (a socket works in the namespace it was made in).
    let mut in_target = match gap {
        Gap::AddressMover | Gap::ConfigMover => Some(to.run(NlSocket::route)??),
        _ => None,
    };
    from.run(move || -> Result<Duration> {
        let mut sock = NlSocket::route()?;
        let started = Instant::now();
        for (i, index) in indexes.into_iter().enumerate() {
            if i > 0 {
                run_gap(gap, &to, i - 1, round)?;
                if let Some(t) = in_target.as_mut() {
                    let name = format!("gx{}", i - 1);
                    let facts = link::link_by_name(t, &name)?
                        .with_context(|| format!("{name} is not in the target namespace"))?;
                    let address = format!("192.0.2.{}/32", round % 25 * 8 + i);
                    link::add_address(t, facts.ifindex, address.parse()?)?;
                    if matches!(gap, Gap::ConfigMover) {
                        let up = LinkChange {
                            up: Some(true),
                            mtu: Some(1400),
                            ..Default::default()
                        };
                        link::set_link(t, facts.ifindex, &up)?;
                    }
                }
            }
            floor::move_link(&mut sock, index, to_fd)?;
        }
        Ok(started.elapsed())
    })?
}

/// Brings `gx0..gx7` home again (flushing what a gap added) and pauses.
fn back_home(from_fd: i32, to: &Netns, pause: Duration) -> Result<()> {
    to.run(move || -> Result<()> {
        let mut sock = NlSocket::route()?;
        for i in 0..DEVICES {
            let index = ifindex_of(&format!("gx{i}")).with_context(|| format!("gx{i} moved"))?;
            floor::move_link(&mut sock, index, from_fd)?;
        }
        Ok(())
    })??;
    std::thread::sleep(pause);
    Ok(())
}

/// The median of `samples`, in milliseconds.
fn median_ms(samples: &[Duration]) -> f64 {
    floor::median(samples).as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let mut out = PathBuf::from("bench/results/move-gaps.json");
    let mut rounds = 24usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(args.next().context("--out needs a path")?),
            "--rounds" => rounds = args.next().context("--rounds needs a number")?.parse()?,
            other => {
                bail!("unknown argument {other} (usage: bench-move-gaps [--rounds N] [--out FILE])")
            }
        }
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let (floor_at, _) = floor::netns_move_floor(40)?;
    let floor_ms = floor_at.as_secs_f64() * 1e3;

    let from = TestNetns::new("mgf")?;
    let to = TestNetns::new("mgt")?;
    floor::batch(
        &from,
        (0..DEVICES).map(|i| format!("link add gx{i} type veth peer name gxp{i}")),
    )?;
    let from_file = std::fs::File::open(from.path()).context("opening the home namespace")?;
    let to_file = std::fs::File::open(to.path()).context("opening the target namespace")?;
    let (from_ns, to_ns) = (from.open(), to.open());
    let gaps = [
        Gap::None,
        Gap::User(Duration::from_millis(3)),
        Gap::User(Duration::from_millis(4)),
        Gap::GetlinkWorker,
        Gap::SocketWorker,
        Gap::AddressWorker,
        Gap::AddressMover,
        Gap::ConfigMover,
    ];
    let mut samples: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for round in 0..rounds {
        // Interleaved, so every kind of gap sees the same machine.
        for gap in gaps {
            let took = eight_moves(&from_ns, &to_ns, to_file.as_raw_fd(), gap, round)?;
            samples.entry(gap.key()).or_default().push(took);
            // Home again, after a pause that puts the next first move anywhere in a tick.
            let pause = Duration::from_micros(30_000 + (round as u64 * 1_337) % 4_000);
            back_home(from_file.as_raw_fd(), &to_ns, pause)?;
        }
    }
    let none = median_ms(samples.get("none").context("no baseline samples")?);
    let mut result = serde_json::Map::new();
    result.insert("benchmark".into(), "move-gaps".into());
    result.insert("devices".into(), DEVICES.into());
    result.insert("rounds".into(), rounds.into());
    result.insert("floor_ms".into(), round3(floor_ms).into());
    println!("{:<34} {:>10.2}", "floor_ms (1 netns move)", floor_ms);
    for gap in gaps {
        let key = gap.key();
        let p50 = median_ms(samples.get(&key).context("samples")?);
        println!(
            "{:<34} {:>10.2}  over none {:>6.3}  over 8 floors {:>6.3}",
            format!("moves_8_{key}_p50_ms"),
            p50,
            p50 / none,
            p50 / (8.0 * floor_ms)
        );
        result.insert(format!("moves_8_{key}_p50_ms"), round3(p50).into());
        result.insert(
            format!("moves_8_{key}_over_none"),
            round3(p50 / none).into(),
        );
    }
    result.insert(
        "note".into(),
        "eight back-to-back moves of down veths between two test namespaces (one RTM_NEWLINK each from a warm socket) with the named work between each move and the next; medians of --rounds, gaps interleaved per round".into(),
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("wrote {}", out.display());
    Ok(())
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
