//! move-trace: why some namespace moves wait longer than others, read from a scheduler
//! trace of the machine.
//!
//! A move waits in `rcu_barrier()` (in `__dev_change_net_namespace`) for the RCU
//! callbacks it queued, which need a whole grace period that starts *after* they were
//! queued. If a grace period is already under way when the move queues them, the move
//! waits for that one to end and then for a whole new one. This tool finds every move's
//! wait in a `perf script` dump, tells whether the grace-period kthread (`rcu_preempt`)
//! was in its forcing loop (`rcu_gp_fqs_loop`, a grace period in flight) when the wait
//! began, and for the grace periods in flight names what started them: a
//! `synchronize_rcu()` caller, or the work items that ran on the CPU in the tick before
//! `rcu_core` asked for it.
//!
//! Record while a benchmark runs (as root), then read:
//!
//! ```text
//! perf record -e sched:sched_switch -e sched:sched_wakeup \
//!     -e workqueue:workqueue_execute_start -a -g -o /tmp/moves.data -- <command>
//! perf script -i /tmp/moves.data -F comm,tid,cpu,time,event,trace,ip,sym > /tmp/moves.txt
//! cargo run --release -p netclaim-tests --bin move-trace -- /tmp/moves.txt
//! ```
//!
//! Moves are grouped by the name of the thread that made them: in `bench-pod-start`
//! the hooks' moves are netclaim's `tokio-rt-worker` threads, the give-backs its
//! `netns` workers, the quiet floor the benchmark's `netns` thread and the series'
//! own moves its `series-floor` thread.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Namespace moves in a perf sched trace, and the grace periods they waited for")]
struct Args {
    /// `perf script` output (see the module docs for the fields); `-` for stdin.
    input: String,
    /// A wait longer than this is a slow move (a clean one ends on its fourth 4 ms
    /// tick).
    #[arg(long, default_value_t = 17.5)]
    slow_ms: f64,
    /// Waits longer than this are left out (moves queued behind another's RTNL).
    #[arg(long, default_value_t = 40.0)]
    longest_ms: f64,
}

/// One trace record: its header fields and the kernel stack under it.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    comm: String,
    tid: u32,
    cpu: u32,
    time: f64,
    event: String,
    trace: String,
    stack: Vec<String>,
}

/// Reads `comm tid [cpu] time: event: trace` headers, each followed by the stack's
/// `address symbol` lines.
fn parse(text: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(r) = header(line) {
            out.push(r);
        } else if let (Some(last), Some(sym)) = (out.last_mut(), line.split_whitespace().nth(1)) {
            last.stack
                .push(sym.split('+').next().unwrap_or(sym).to_string());
        }
    }
    out
}

fn header(line: &str) -> Option<Record> {
    let open = line.find(" [")?;
    let close = open + line[open..].find("] ")?;
    let (comm, tid) = line[..open].trim().rsplit_once(' ')?;
    let cpu = line[open + 2..close].parse().ok()?;
    let mut rest = line[close + 2..].splitn(3, ": ");
    let time = rest.next()?.trim().parse().ok()?;
    let event = rest.next()?.trim().to_string();
    let trace = rest.next().unwrap_or("").to_string();
    Some(Record {
        comm: comm.trim().to_string(),
        tid: tid.parse().ok()?,
        cpu,
        time,
        event,
        trace,
        stack: Vec::new(),
    })
}

fn field<'a>(trace: &'a str, key: &str) -> Option<&'a str> {
    let at = trace.find(key)? + key.len();
    trace[at..].split_whitespace().next()
}

/// One move's wait in `rcu_barrier`.
#[derive(Debug, Clone, PartialEq)]
struct Wait {
    mover: String,
    ms: f64,
    /// What started the grace period that was in flight when the wait began; `None`
    /// when none was.
    source: Option<String>,
}

fn waits(records: &[Record]) -> Vec<Wait> {
    // The grace-period kthread's state, from where it went to sleep.
    let gp: Vec<(f64, bool)> = records
        .iter()
        .filter(|r| r.event == "sched:sched_switch" && r.comm == "rcu_preempt")
        .map(|r| (r.time, r.stack.iter().any(|s| s == "rcu_gp_fqs_loop")))
        .collect();
    let in_flight_at = |t: f64| {
        let i = gp.partition_point(|g| g.0 <= t);
        i > 0 && gp[i - 1].1
    };
    let mut open: BTreeMap<u32, (String, f64)> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.event != "sched:sched_switch" {
            continue;
        }
        let next = field(&r.trace, "next_pid=").and_then(|p| p.parse::<u32>().ok());
        if let Some((mover, start)) = next.and_then(|n| open.remove(&n)) {
            let source = in_flight_at(start).then(|| started_by(&records[..i], start));
            out.push(Wait {
                mover,
                ms: (r.time - start) * 1000.0,
                source,
            });
        }
        let s = &r.stack;
        if s.iter().any(|f| f == "rcu_barrier")
            && s.iter().any(|f| f == "__dev_change_net_namespace")
        {
            open.insert(r.tid, (r.comm.clone(), r.time));
        }
    }
    out
}

/// What woke the grace-period kthread to start the grace period in flight at `at`:
/// the last wake-up before it that asked for one.
fn started_by(before: &[Record], at: f64) -> String {
    let woken = before
        .iter()
        .rev()
        .take_while(|r| at - r.time < 0.05)
        .find(|r| {
            r.event == "sched:sched_wakeup"
                && field(&r.trace, "comm=") == Some("rcu_preempt")
                && r.stack
                    .iter()
                    .any(|s| s == "rcu_core" || s.starts_with("synchronize_rcu"))
        });
    let Some(w) = woken else {
        return "woken from the other CPU or earlier than 50 ms".into();
    };
    if let Some(k) = w
        .stack
        .iter()
        .position(|s| s.starts_with("synchronize_rcu"))
    {
        let callers: Vec<&str> = w.stack[k + 1..]
            .iter()
            .take(2)
            .map(String::as_str)
            .collect();
        return format!("synchronize_rcu from {}", callers.join(" < "));
    }
    // `rcu_core` on a tick: the callbacks were queued on this CPU within the tick before.
    let mut works: Vec<&str> = before
        .iter()
        .rev()
        .take_while(|r| w.time - r.time < 0.0045)
        .filter(|r| r.cpu == w.cpu && r.event == "workqueue:workqueue_execute_start")
        .filter_map(|r| field(&r.trace, "function "))
        .collect();
    works.sort_unstable();
    works.dedup();
    if works.is_empty() {
        "no work item (softirq, timers or tasks)".into()
    } else {
        format!("work: {}", works.join(", "))
    }
}

#[derive(Debug, Default)]
struct Tally {
    idle: usize,
    idle_slow: usize,
    in_flight: usize,
    in_flight_slow: usize,
    sources: BTreeMap<String, (usize, usize)>,
}

fn tally(waits: &[Wait], slow_ms: f64, longest_ms: f64) -> BTreeMap<String, Tally> {
    let mut by: BTreeMap<String, Tally> = BTreeMap::new();
    for w in waits.iter().filter(|w| w.ms <= longest_ms) {
        let t = by.entry(w.mover.clone()).or_default();
        let slow = usize::from(w.ms > slow_ms);
        if let Some(source) = &w.source {
            t.in_flight += 1;
            t.in_flight_slow += slow;
            let s = t.sources.entry(source.clone()).or_default();
            s.0 += 1;
            s.1 += slow;
        } else {
            t.idle += 1;
            t.idle_slow += slow;
        }
    }
    by
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut text = String::new();
    if args.input == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text =
            std::fs::read_to_string(&args.input).with_context(|| format!("read {}", args.input))?;
    }
    let waits = waits(&parse(&text));
    anyhow::ensure!(
        !waits.is_empty(),
        "no move waited in rcu_barrier in {}: was perf recording with -g while devices moved?",
        args.input
    );
    for (mover, t) in tally(&waits, args.slow_ms, args.longest_ms) {
        println!(
            "{mover}: {} moves; no grace period in flight: {} ({} slow, {:.0}%); one in flight: {} ({} slow, {:.0}%)",
            t.idle + t.in_flight,
            t.idle,
            t.idle_slow,
            pct(t.idle_slow, t.idle),
            t.in_flight,
            t.in_flight_slow,
            pct(t.in_flight_slow, t.in_flight)
        );
        let mut sources: Vec<_> = t.sources.into_iter().collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.1 .0));
        for (source, (n, slow)) in sources {
            println!("    {n:4} ({slow} slow)  {source}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up trace in `perf script`'s layout: a grace period started by
    /// `rcu_core` right after an MLD work item, in flight when a move begins its wait.
    const TRACE: &str = "\
kworker/0:1-eve 18613 [000] 100.000100: workqueue:workqueue_execute_start: work struct 0xffff: function mld_ifc_work
swapper 0 [000] 100.002000: sched:sched_wakeup: comm=rcu_preempt pid=15 prio=120 target_cpu=000
\tffffffff813b4d73 try_to_wake_up
\tffffffff81411dff rcu_core
\tffffffff81311676 handle_softirqs

rcu_preempt 15 [000] 100.002010: sched:sched_switch: prev_comm=rcu_preempt prev_pid=15 prev_prio=120 prev_state=I ==> next_comm=swapper/0 next_pid=0 next_prio=120
\tffffffff82265908 __schedule+0x628 ([kernel.kallsyms])
\tffffffff8226d5d0 rcu_gp_fqs_loop+0x100 ([kernel.kallsyms])

tokio-rt-worker 19981 [001] 100.003000: sched:sched_switch: prev_comm=tokio-rt-worker prev_pid=19981 prev_prio=120 prev_state=D ==> next_comm=swapper/1 next_pid=0 next_prio=120
\tffffffff82265908 __schedule
\tffffffff81412b84 rcu_barrier
\tffffffff81ebe943 __dev_change_net_namespace

swapper 0 [001] 100.026000: sched:sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=tokio-rt-worker next_pid=19981 next_prio=120
rcu_preempt 15 [000] 100.030000: sched:sched_switch: prev_comm=rcu_preempt prev_pid=15 prev_prio=120 prev_state=I ==> next_comm=swapper/0 next_pid=0 next_prio=120
\tffffffff82265908 __schedule
\tffffffff81395bdc rcu_gp_kthread

tokio-rt-worker 19981 [001] 100.031000: sched:sched_switch: prev_comm=tokio-rt-worker prev_pid=19981 prev_prio=120 prev_state=D ==> next_comm=swapper/1 next_pid=0 next_prio=120
\tffffffff81412b84 rcu_barrier
\tffffffff81ebe943 __dev_change_net_namespace

swapper 0 [001] 100.044000: sched:sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=tokio-rt-worker next_pid=19981 next_prio=120
";

    #[test]
    fn headers_and_stacks_are_read() {
        let r = parse(TRACE);
        assert_eq!(r.len(), 8);
        assert_eq!(r[0].comm, "kworker/0:1-eve");
        assert_eq!((r[2].tid, r[2].cpu), (15, 0));
        assert_eq!(r[2].stack, ["__schedule", "rcu_gp_fqs_loop"]);
        assert_eq!(field(&r[0].trace, "function "), Some("mld_ifc_work"));
    }

    #[test]
    fn a_wait_begun_while_a_grace_period_ran_names_what_started_it() {
        let w = waits(&parse(TRACE));
        assert_eq!(w.len(), 2);
        assert!(w[0].source.is_some());
        assert!((w[0].ms - 23.0).abs() < 1e-6, "{}", w[0].ms);
        assert_eq!(w[0].source.as_deref(), Some("work: mld_ifc_work"));
        // The second began after the kthread went back to waiting for a request.
        assert!(w[1].source.is_none());
        assert_eq!(w[1].source, None);
        let t = &tally(&w, 17.5, 40.0)["tokio-rt-worker"];
        assert_eq!(
            (t.in_flight, t.in_flight_slow, t.idle, t.idle_slow),
            (1, 1, 1, 0)
        );
    }
}
