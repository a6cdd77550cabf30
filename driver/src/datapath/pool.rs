//! A few loaded-and-verified instances of the programs kept ready, so attaching a
//! device on the pod-start path does not pay for parsing the object, creating maps and
//! running the verifier (about 20 ms here). Spares are not attached and not pinned;
//! `bpftool prog show` lists them as unattached `nc_*` programs. They belong to this
//! process and disappear with it.
//!
//! A spare is used up by prepare (staging), and the pod start that follows a prepare
//! comes within a few hundred milliseconds. The refill waits for it ([`refill_now`]):
//! until [`REFILL_AFTER`] has passed since the last spare was taken and no pod hook
//! runs. The verifier is 20-40 ms of kernel time on one CPU; next to a pod start's
//! namespace moves it delays the grace periods each move waits for (measured on 2
//! cores, eight devices staged 100 ms before their pod start: the eight moves took
//! 141.6 ms (median of 8 pods) with the refill running right after staging, against
//! 126 ms with the pod start 1 s after prepare).

use std::{
    sync::{Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use netclaim_common::{PROG_EGRESS, PROG_INGRESS_TC, PROG_INGRESS_XDP};

use super::object::{self, MapSizes};

/// How many spare instances are kept.
const SPARES: usize = 1;

/// How long after the last spare was taken the refill may run (if no pod hook runs).
pub const REFILL_AFTER: Duration = Duration::from_millis(300);

/// How often a refill waiting for pod hooks to end looks again.
const REFILL_LOOK: Duration = Duration::from_millis(20);

/// Whether the refill may run the verifier now: no pod hook in flight or just ended
/// (`quiet`), and [`REFILL_AFTER`] since a spare was last taken (`since_take`, `None`
/// when none was taken yet), so the pod start that follows a prepare is not slowed.
pub fn refill_now(quiet: bool, since_take: Option<Duration>) -> bool {
    quiet && since_take.is_none_or(|d| d >= REFILL_AFTER)
}

/// The refill thread's view: the spares, and whether it was asked to refill.
#[derive(Default)]
struct Spares {
    ready: Vec<Ebpf>,
    /// Set by [`WarmPool::warm`], cleared by the refill thread when it looks.
    asked: bool,
    /// The last refill failed: not retried until asked again.
    failed: bool,
    /// When a spare was last handed out.
    taken_at: Option<Instant>,
}

pub struct WarmPool {
    spares: Mutex<Spares>,
    wake: Condvar,
    /// The refill thread, started once and kept: a thread that ends queues kernel
    /// work (RCU) that the next namespace move waits for.
    refiller: OnceLock<bool>,
}

impl WarmPool {
    pub fn global() -> &'static WarmPool {
        static POOL: OnceLock<WarmPool> = OnceLock::new();
        POOL.get_or_init(|| WarmPool {
            spares: Mutex::new(Spares::default()),
            wake: Condvar::new(),
            refiller: OnceLock::new(),
        })
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for the pool to be filled in the background (the daemon calls this at
    /// start; [`WarmPool::take`] after each spare it hands out).
    pub fn warm(&'static self) {
        let running = *self.refiller.get_or_init(|| {
            std::thread::Builder::new()
                .name("ebpf-warm".into())
                .spawn(move || self.refill_forever())
                .is_ok()
        });
        if running {
            self.spares().asked = true;
            self.wake.notify_one();
        }
    }

    /// The refill thread: idle priority (the verifier's CPU time never competes with
    /// the runtime starting a pod), woken by [`WarmPool::warm`].
    fn refill_forever(&'static self) {
        idle_priority();
        loop {
            {
                let mut s = self.spares();
                while !s.asked {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.asked = false;
                s.failed = false;
            }
            loop {
                let need = {
                    let s = self.spares();
                    s.ready.len() < SPARES && !s.failed
                };
                if !need {
                    break;
                }
                self.wait_for_pod_starts();
                match load_verified(MapSizes::default()) {
                    Ok(e) => self.spares().ready.push(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "pre-loading a spare eBPF instance failed");
                        self.spares().failed = true;
                    }
                }
            }
        }
    }

    /// Sleeps until [`refill_now`] says the verifier may run.
    fn wait_for_pod_starts(&self) {
        let quiet = crate::netns::quiet::Quiet::global();
        loop {
            let since_take = self.spares().taken_at.map(|at| at.elapsed());
            if refill_now(quiet.is_quiet(), since_take) {
                return;
            }
            // Asleep for the rest of REFILL_AFTER at once; then in steps while a hook runs.
            let rest = since_take.map_or(Duration::ZERO, |d| REFILL_AFTER.saturating_sub(d));
            std::thread::sleep(rest.max(REFILL_LOOK));
        }
    }

    /// A loaded instance with every program verified: a spare when one is ready and
    /// the sizes are the default ones, a fresh one otherwise. Refills in the background.
    pub fn take(&'static self, sizes: MapSizes) -> Result<Ebpf, aya::EbpfError> {
        let spare = if sizes == MapSizes::default() {
            let mut s = self.spares();
            s.taken_at = Some(Instant::now());
            s.ready.pop()
        } else {
            None
        };
        let ebpf = match spare {
            Some(e) => Ok(e),
            None => load_verified(sizes),
        };
        if sizes == MapSizes::default() {
            self.warm();
        }
        ebpf
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs when nothing else wants
/// the CPU. Best effort (a refused change leaves the normal class).
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "the eBPF refill thread keeps its priority");
    }
}

/// Loads the object and runs the verifier on the attachable programs. Every instance
/// that `AttachedDatapath::attach` uses comes from here.
pub(super) fn load_verified(sizes: MapSizes) -> Result<Ebpf, aya::EbpfError> {
    let mut ebpf = object::load(sizes)?;
    for name in [PROG_EGRESS, PROG_INGRESS_TC] {
        if let Some(p) = ebpf.program_mut(name) {
            let p: &mut SchedClassifier = p.try_into().map_err(aya::EbpfError::ProgramError)?;
            p.load().map_err(aya::EbpfError::ProgramError)?;
        }
    }
    if let Some(p) = ebpf.program_mut(PROG_INGRESS_XDP) {
        let p: &mut Xdp = p.try_into().map_err(aya::EbpfError::ProgramError)?;
        p.load().map_err(aya::EbpfError::ProgramError)?;
    }
    if let Some(p) = ebpf.program_mut(netclaim_common::PROG_GUARD_SOCKOPT) {
        let p: &mut aya::programs::CgroupSockopt =
            p.try_into().map_err(aya::EbpfError::ProgramError)?;
        p.load().map_err(aya::EbpfError::ProgramError)?;
    }
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refill_waits_for_the_pod_start_that_follows_a_prepare() {
        let ms = Duration::from_millis;
        // Nothing taken yet (start-up): at once, unless a hook runs.
        assert!(refill_now(true, None));
        assert!(!refill_now(false, None));
        // Right after a prepare took the spare: not yet, hook or not.
        assert!(!refill_now(true, Some(ms(0))));
        assert!(!refill_now(true, Some(REFILL_AFTER - ms(1))));
        // Long enough after, but a pod hook runs: still not.
        assert!(!refill_now(false, Some(REFILL_AFTER + ms(1))));
        assert!(refill_now(true, Some(REFILL_AFTER)));
    }
}
