//! [`Quiet`]: background netlink work stays out of the way while a pod hook moves
//! devices between namespaces.
//!
//! Why: a namespace move ends in `rcu_barrier()` under RTNL, which waits for every RCU
//! callback queued anywhere on the machine. Work that runs next to the move (a link
//! dump, ethtool reads, sysfs walks, the publisher's HTTP write that follows a changed
//! inventory) can queue callbacks, or take RTNL, while a move is in flight, and the
//! move then waits for one more grace period. Measured on a 2-core machine
//! (`cargo xtask bench pod-start --runs-8`): with the inventory rescanning in the middle
//! of a pod's eight moves, the moves took 15.6 to 35 ms each instead of 16, and the
//! hook 1.29 floors per device instead of 1.14.
//!
//! Pod hooks take a [`Hold`] for as long as they move and configure devices; the
//! inventory's scans and program polls wait in [`Quiet::settled`] until no hold is
//! left, but never longer than the bound they pass, so a node that starts pods back to
//! back still sees its inventory refreshed.

use std::{
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    time::Duration,
};

use tokio::sync::Notify;

/// How many pod hooks are moving devices now, and a wake-up for who waits for none.
#[derive(Debug, Default)]
pub struct Quiet {
    holds: AtomicUsize,
    idle: Notify,
}

/// A pod hook in flight; dropping it lets waiting background work go on (once no other
/// hook holds).
#[derive(Debug)]
#[must_use = "the quiet lasts as long as the hold"]
pub struct Hold<'a> {
    quiet: &'a Quiet,
}

/// How a wait in [`Quiet::settled`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// No hook was in flight.
    Already,
    /// Hooks were in flight; the last one ended after this long.
    After(Duration),
    /// Hooks were still in flight when the bound ran out.
    GaveUp,
}

impl Quiet {
    /// The process's one gate: pod hooks and the node's inventory share it.
    pub fn global() -> &'static Quiet {
        static QUIET: OnceLock<Quiet> = OnceLock::new();
        QUIET.get_or_init(Quiet::default)
    }

    /// Marks a pod hook in flight until the returned hold is dropped.
    pub fn hold(&self) -> Hold<'_> {
        self.holds.fetch_add(1, Ordering::AcqRel);
        Hold { quiet: self }
    }

    /// Whether no pod hook is in flight.
    pub fn is_quiet(&self) -> bool {
        self.holds.load(Ordering::Acquire) == 0
    }

    /// Waits until no pod hook is in flight, or `longest` has passed.
    pub async fn settled(&self, longest: Duration) -> Settled {
        if self.is_quiet() {
            return Settled::Already;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + longest;
        loop {
            let mut woken = pin!(self.idle.notified());
            // Registered before the check, so a release between the two is not missed.
            woken.as_mut().enable();
            if self.is_quiet() {
                return Settled::After(started.elapsed());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return if self.is_quiet() {
                    Settled::After(started.elapsed())
                } else {
                    Settled::GaveUp
                };
            }
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if self.quiet.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_held_means_no_wait() {
        let q = Quiet::default();
        assert_eq!(q.settled(Duration::from_secs(5)).await, Settled::Already);
    }

    #[tokio::test]
    async fn waits_for_the_last_hold() {
        let q: &'static Quiet = Box::leak(Box::default());
        let first = q.hold();
        let second = q.hold();
        let waiter = tokio::spawn(q.settled(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "one hold is left");
        drop(second);
        match waiter.await.unwrap() {
            Settled::After(d) => assert!(d >= Duration::from_millis(60), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert!(q.is_quiet());
    }

    #[tokio::test]
    async fn gives_up_at_the_bound() {
        let q = Quiet::default();
        let _held = q.hold();
        let started = std::time::Instant::now();
        assert_eq!(q.settled(Duration::from_millis(50)).await, Settled::GaveUp);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
