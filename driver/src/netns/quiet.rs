//! [`Quiet`]: netclaim's background work stays out of the way while a pod hook moves
//! devices between namespaces, and for a moment after, while the runtime finishes the
//! sandbox.
//!
//! Why: a namespace move ends in `rcu_barrier()` under RTNL, which waits for every RCU
//! callback queued anywhere on the machine. Work that runs next to the move (a link
//! dump, ethtool reads, sysfs walks, the publisher's HTTP write that follows a changed
//! inventory) can queue callbacks, or take RTNL, while a move is in flight, and the
//! move then waits for one more grace period. Measured on a 2-core machine
//! (`cargo xtask bench pod-start --runs-8`): with the inventory rescanning in the middle
//! of a pod's eight moves, the moves took 15.6 to 35 ms each instead of 16, and the
//! hook 1.29 floors per device instead of 1.14. After the hook, the runtime still has
//! work to do before it answers its caller ([`LINGER`]).
//!
//! A pod start is also quiet between its CNI ADD and its RunPodSandbox hook (a *start
//! window*, [`Quiet::open_window`]): containerd calls the hook only after it has set up
//! the pod's network and started its pause container, and the CNI ADD is the first the
//! driver hears of it. The pod's own veth appearing at the node wakes the inventory 50 ms
//! later, in the middle of that work; measured with the real containerd here
//! (`cargo xtask bench pod-start`), a rescan and ResourceSlice write there, and the
//! status writes after an ahead hand-over, made `crictl runp` 8-14 ms slower than
//! without the driver. A window closes when the pod's RunPodSandbox (or Stop/Remove, or
//! a CNI DEL) arrives, or on its own after [`WINDOW_LONGEST`].
//!
//! Pod hooks take a [`Hold`] for as long as they run; background work waits in
//! [`Deferral::after_pod_hooks`] (async) or [`Quiet::settled_blocking`] until no hold is
//! left and [`LINGER`] has passed since the last one ended, but never longer than its
//! bound, so a node that starts pods back to back still gets its inventory, status and
//! checkpoint caught up.

use std::{
    collections::BTreeMap,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// How long background work keeps waiting after the last pod hook ended: containerd
/// finishes the sandbox (its own store writes) after the hook's answer.
pub const LINGER: Duration = Duration::from_millis(50);

/// Longest background work defers to pod hooks, counted from the first deferred step of
/// a busy stretch.
pub const QUIET_LONGEST: Duration = Duration::from_secs(1);

/// Longest a start window stays open without its RunPodSandbox: containerd's budget
/// for the hook that closes it is 2 s, and a runtime that gave the pod up sends none.
pub const WINDOW_LONGEST: Duration = Duration::from_secs(2);

/// How many pod hooks are in flight, when the last one ended, the pod starts between
/// their CNI ADD and their RunPodSandbox, and a wake-up for who waits for none.
#[derive(Debug)]
pub struct Quiet {
    holds: AtomicUsize,
    last_release: Mutex<Option<Instant>>,
    /// Open start windows: pod UID → when the window closes on its own.
    windows: Mutex<BTreeMap<String, Instant>>,
    idle: Notify,
    linger: Duration,
}

impl Default for Quiet {
    fn default() -> Self {
        Self::with_linger(LINGER)
    }
}

/// A pod hook in flight; dropping it lets waiting background work go on (once no other
/// hook holds and the linger has passed).
#[derive(Debug)]
#[must_use = "the quiet lasts as long as the hold"]
pub struct Hold<'a> {
    quiet: &'a Quiet,
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// No hook was in flight, none had ended within the linger.
    Already,
    /// Hooks were in flight or had just ended; quiet came after this long.
    After(Duration),
    /// Hooks were still in flight (or just ended) when the bound ran out.
    GaveUp,
}

impl Quiet {
    /// A gate whose waits last until `linger` after the last hook.
    pub fn with_linger(linger: Duration) -> Self {
        Self {
            holds: AtomicUsize::new(0),
            last_release: Mutex::new(None),
            windows: Mutex::new(BTreeMap::new()),
            idle: Notify::new(),
            linger,
        }
    }

    /// The process's one gate: pod hooks and the background work share it.
    pub fn global() -> &'static Quiet {
        static QUIET: OnceLock<Quiet> = OnceLock::new();
        QUIET.get_or_init(Quiet::default)
    }

    /// Marks a pod hook in flight until the returned hold is dropped.
    pub fn hold(&self) -> Hold<'_> {
        self.holds.fetch_add(1, Ordering::AcqRel);
        Hold { quiet: self }
    }

    /// Opens `pod_uid`'s start window (at its CNI ADD) until [`Self::close_window`] or
    /// `longest` from now; opening it again moves its end.
    pub fn open_window(&self, pod_uid: &str, longest: Duration) {
        let until = Instant::now() + longest;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.insert(pod_uid.to_string(), until);
    }

    /// Closes `pod_uid`'s start window, if open (its RunPodSandbox came, or its start
    /// ended otherwise). Closing one that is not open does nothing.
    pub fn close_window(&self, pod_uid: &str) {
        let removed = self
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_uid)
            .is_some();
        if removed {
            self.released_now();
            self.idle.notify_waiters();
        }
    }

    /// A hook or window just ended: the linger counts from now.
    fn released_now(&self) {
        *self.last_release.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// How long until it is quiet if no new hook starts: `None` while a hook runs,
    /// zero when quiet now; otherwise the linger after the last hook or window, or the
    /// end of the last open window.
    fn quiet_in(&self) -> Option<Duration> {
        if self.holds.load(Ordering::Acquire) != 0 {
            return None;
        }
        let now = Instant::now();
        let window_left = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            windows.retain(|_, until| *until > now);
            windows
                .values()
                .max()
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
        };
        let last = *self.last_release.lock().unwrap_or_else(|p| p.into_inner());
        let linger_left = last.map_or(Duration::ZERO, |at| {
            (at + self.linger).saturating_duration_since(now)
        });
        Some(window_left.max(linger_left))
    }

    /// Whether no pod hook is in flight or just ended.
    pub fn is_quiet(&self) -> bool {
        self.quiet_in() == Some(Duration::ZERO)
    }

    /// Waits until quiet, or `longest` has passed.
    pub async fn settled(&self, longest: Duration) -> Settled {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + longest);
        let mut waited = false;
        loop {
            let mut woken = pin!(self.idle.notified());
            // Registered before the check, so a release between the two is not missed.
            woken.as_mut().enable();
            let wake_at = match self.quiet_in() {
                Some(Duration::ZERO) if !waited => return Settled::Already,
                Some(Duration::ZERO) => return Settled::After(started.elapsed()),
                Some(left) => Some(tokio::time::Instant::now() + left),
                None => None,
            };
            if tokio::time::Instant::now() >= deadline {
                return Settled::GaveUp;
            }
            waited = true;
            let until = wake_at.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// [`Quiet::settled`] for a plain thread (it looks every few milliseconds).
    pub fn settled_blocking(&self, longest: Duration) -> Settled {
        const LOOK: Duration = Duration::from_millis(5);
        let started = Instant::now();
        let mut waited = false;
        loop {
            match self.quiet_in() {
                Some(Duration::ZERO) if !waited => return Settled::Already,
                Some(Duration::ZERO) => return Settled::After(started.elapsed()),
                left => {
                    let spent = started.elapsed();
                    if spent >= longest {
                        return Settled::GaveUp;
                    }
                    waited = true;
                    std::thread::sleep(left.unwrap_or(LOOK).min(LOOK).min(longest - spent));
                }
            }
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.quiet.released_now();
        if self.quiet.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet.idle.notify_waiters();
        }
    }
}

/// A background loop's deferral to pod hooks: each of its waits is bounded by what is
/// left of [`QUIET_LONGEST`] since it first deferred in the current busy stretch, so a
/// loop with several waiting steps still defers at most that long.
#[derive(Debug, Default)]
pub struct Deferral(Option<Instant>);

impl Deferral {
    /// Waits until quiet, as long as the stretch's bound allows; says so (`what`) when
    /// it gives up.
    pub async fn after_pod_hooks(&mut self, quiet: &Quiet, what: &str) {
        if quiet.is_quiet() {
            self.0 = None;
            return;
        }
        let since = *self.0.get_or_insert_with(Instant::now);
        let left = (since + QUIET_LONGEST).saturating_duration_since(Instant::now());
        match quiet.settled(left).await {
            Settled::GaveUp if !left.is_zero() => tracing::debug!(
                waited = ?QUIET_LONGEST,
                "{what}: pod hooks keep running; going on anyway"
            ),
            Settled::GaveUp => {}
            Settled::Already | Settled::After(_) => self.0 = None,
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
        assert_eq!(q.settled_blocking(Duration::from_secs(5)), Settled::Already);
    }

    #[tokio::test]
    async fn waits_for_the_last_hold_and_the_linger() {
        let q: &'static Quiet = Box::leak(Box::new(Quiet::with_linger(Duration::from_millis(40))));
        let first = q.hold();
        let second = q.hold();
        let waiter = tokio::spawn(q.settled(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "one hold is left");
        let released = Instant::now();
        drop(second);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "the linger has not passed");
        match waiter.await.unwrap() {
            Settled::After(d) => assert!(d >= Duration::from_millis(100), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert!(released.elapsed() >= Duration::from_millis(40));
        assert!(q.is_quiet());
    }

    #[test]
    fn a_thread_waits_for_the_linger() {
        let q = Quiet::with_linger(Duration::from_millis(40));
        drop(q.hold());
        let started = Instant::now();
        assert!(matches!(
            q.settled_blocking(Duration::from_secs(5)),
            Settled::After(_)
        ));
        assert!(started.elapsed() >= Duration::from_millis(35));
    }

    #[tokio::test]
    async fn gives_up_at_the_bound() {
        let q = Quiet::default();
        let _held = q.hold();
        let started = Instant::now();
        assert_eq!(q.settled(Duration::from_millis(50)).await, Settled::GaveUp);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            q.settled_blocking(Duration::from_millis(20)),
            Settled::GaveUp
        );
    }

    #[tokio::test]
    async fn a_deferral_spends_its_bound_once_per_stretch() {
        let q = Quiet::default();
        let _held = q.hold();
        let mut d = Deferral(Some(Instant::now() - QUIET_LONGEST));
        let started = Instant::now();
        d.after_pod_hooks(&q, "test").await;
        d.after_pod_hooks(&q, "test").await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_start_window_keeps_work_waiting_until_it_closes_and_the_linger_passes() {
        let q: &'static Quiet = Box::leak(Box::new(Quiet::with_linger(Duration::from_millis(40))));
        q.open_window("pod-a", Duration::from_secs(10));
        q.open_window("pod-b", Duration::from_secs(10));
        assert!(!q.is_quiet());
        let waiter = tokio::spawn(q.settled(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        q.close_window("pod-a");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!waiter.is_finished(), "pod-b's window is open");
        let closed = Instant::now();
        q.close_window("pod-b");
        match waiter.await.unwrap() {
            Settled::After(d) => assert!(d >= Duration::from_millis(90), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert!(closed.elapsed() >= Duration::from_millis(35), "the linger");
        assert!(q.is_quiet());
    }

    #[tokio::test]
    async fn a_window_nobody_closes_ends_on_its_own() {
        let q = Quiet::with_linger(Duration::ZERO);
        q.open_window("lost", Duration::from_millis(60));
        let started = Instant::now();
        assert!(matches!(
            q.settled(Duration::from_secs(5)).await,
            Settled::After(_)
        ));
        assert!(started.elapsed() >= Duration::from_millis(55));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Reopening moves its end; the blocking wait sees windows too.
        q.open_window("lost", Duration::from_millis(30));
        q.open_window("lost", Duration::from_millis(80));
        let started = Instant::now();
        assert!(matches!(
            q.settled_blocking(Duration::from_secs(5)),
            Settled::After(_)
        ));
        assert!(started.elapsed() >= Duration::from_millis(75));
    }

    #[test]
    fn closing_a_window_that_is_not_open_changes_nothing() {
        let q = Quiet::with_linger(Duration::from_secs(10));
        q.close_window("never-opened");
        assert!(
            q.is_quiet(),
            "no linger starts for a window that was not open"
        );
        let _held = q.hold();
        q.open_window("pod", Duration::from_secs(10));
        q.close_window("pod");
        assert!(!q.is_quiet(), "a hook still holds");
    }
}
