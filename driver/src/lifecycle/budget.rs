//! The runtime's hook budget.
//!
//! containerd gives every NRI hook `plugin_request_timeout` (2 s by default; the plugin
//! learns it in Configure). A hook that runs past it makes containerd close the plugin
//! and start the pod anyway, without error and without its devices: the worst outcome.
//! So a pod start checks, before each device, that the device and undoing everything
//! done so far still fit in what is left of the budget; when they do not, it undoes
//! and fails the hook while the runtime still listens, and the pod start fails with a
//! reason instead of running without its network.
//!
//! What a device costs is learnt from the devices handed over and returned so far
//! (moving averages), starting from conservative guesses.

use std::time::{Duration, Instant};

/// What handing over and taking back one device costs here, as measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Costs {
    pub attach: Duration,
    pub undo: Duration,
}

impl Default for Costs {
    /// Guesses until the first measurements: about twice what one veth costs here.
    fn default() -> Self {
        Self {
            attach: Duration::from_millis(100),
            undo: Duration::from_millis(50),
        }
    }
}

/// A pod start stopped because the budget would have run out.
#[derive(Debug, thiserror::Error)]
#[error(
    "pod {pod}: the runtime's hook budget of {budget:?} would run out before claim {claim}, device {device}: \
     {done} device(s) were handed over in {spent:?} and each takes about {:?} (undoing about {:?}); \
     everything was undone and the pod start fails (raise the runtime's plugin_request_timeout, or claim fewer devices per pod){}",
    costs.attach,
    costs.undo,
    if problems.is_empty() { String::new() } else { format!(" (undo problems: {})", problems.join("; ")) }
)]
pub struct Exceeded {
    pub pod: String,
    pub claim: String,
    pub device: String,
    pub budget: Duration,
    pub spent: Duration,
    pub done: usize,
    pub costs: Costs,
    /// Problems while undoing.
    pub problems: Vec<String>,
}

/// Weight of a new sample in the moving averages.
const WEIGHT: f64 = 0.25;

fn blend(old: Duration, sample: Duration) -> Duration {
    old.mul_f64(1.0 - WEIGHT) + sample.mul_f64(WEIGHT)
}

impl Costs {
    pub fn attached(&mut self, took: Duration) {
        self.attach = blend(self.attach, took);
    }
    pub fn undone(&mut self, took: Duration) {
        self.undo = blend(self.undo, took);
    }
}

/// How long a pod start waits for a DHCP lease when the runtime names no budget.
pub const LEASE_WAIT: Duration = Duration::from_secs(10);

/// Time kept back for the answer to reach the runtime and for the runtime's clock,
/// which started before the request was sent: a tenth of the budget, at least 50 ms.
pub fn margin(budget: Duration) -> Duration {
    (budget / 10).max(Duration::from_millis(50))
}

/// The deadline of a hook that arrived at `arrived` with `budget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub arrived: Instant,
    pub budget: Duration,
}

impl Deadline {
    pub fn new(budget: Duration) -> Self {
        Self {
            arrived: Instant::now(),
            budget,
        }
    }

    /// When a DHCP lease for the device being handed over must have come (with
    /// `done` devices before it): what is left of the budget after the margin
    /// and undoing this device and the ones before it. Already past when nothing is
    /// left (the acquisition then fails at once).
    pub fn lease_until(&self, done: usize, costs: &Costs) -> Instant {
        let keep = costs.undo * (done as u32 + 1) + margin(self.budget);
        (self.arrived + self.budget)
            .checked_sub(keep)
            .unwrap_or(self.arrived)
            .max(self.arrived)
    }

    /// Whether `devices` devices, and then undoing all of them, fit in what is left at
    /// `now` (a pod start moves its devices back to back, so it asks once for all).
    pub fn all_fit(&self, now: Instant, devices: usize, costs: &Costs) -> bool {
        let spent = now.saturating_duration_since(self.arrived);
        let n = devices as u32;
        let needed = (costs.attach + costs.undo) * n + margin(self.budget);
        spent + needed <= self.budget
    }

    /// Whether the next device, and then undoing it and the `done` devices before it,
    /// fit in what is left at `now`.
    pub fn next_fits(&self, now: Instant, done: usize, costs: &Costs) -> bool {
        let spent = now.saturating_duration_since(self.arrived);
        let needed = costs.attach + costs.undo * (done as u32 + 1) + margin(self.budget);
        spent + needed <= self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs(attach: u64, undo: u64) -> Costs {
        Costs {
            attach: Duration::from_millis(attach),
            undo: Duration::from_millis(undo),
        }
    }

    #[test]
    fn a_device_starts_only_if_it_and_the_undo_fit() {
        let t0 = Instant::now();
        let d = Deadline {
            arrived: t0,
            budget: Duration::from_secs(2),
        };
        let c = costs(50, 20);
        // Margin 200 ms: 0 + 50 + 20 + 200 <= 2000.
        assert!(d.next_fits(t0, 0, &c));
        // 1700 spent, 5 done: 1700 + 50 + 120 + 200 = 2070 > 2000.
        assert!(!d.next_fits(t0 + Duration::from_millis(1700), 5, &c));
        // Exactly at the limit still fits: 1630 + 50 + 120 + 200 = 2000.
        assert!(d.next_fits(t0 + Duration::from_millis(1630), 5, &c));
        assert!(!d.next_fits(t0 + Duration::from_millis(1631), 5, &c));
    }

    #[test]
    fn a_tiny_budget_refuses_even_the_first_device() {
        let t0 = Instant::now();
        let d = Deadline {
            arrived: t0,
            budget: Duration::from_millis(100),
        };
        assert!(!d.next_fits(t0, 0, &costs(60, 30)));
        assert_eq!(
            margin(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_millis(200));
    }

    #[test]
    fn a_lease_must_come_before_the_undo_and_the_margin() {
        let t0 = Instant::now();
        let d = Deadline {
            arrived: t0,
            budget: Duration::from_secs(2),
        };
        // 2000 - 200 (margin) - 2 * 50 (undo this and one before) = 1700.
        assert_eq!(
            d.lease_until(1, &costs(80, 50)),
            t0 + Duration::from_millis(1700)
        );
        let tiny = Deadline {
            arrived: t0,
            budget: Duration::from_millis(40),
        };
        assert_eq!(tiny.lease_until(0, &costs(80, 50)), t0, "nothing left");
    }

    #[test]
    fn costs_follow_measurements() {
        let mut c = Costs::default();
        for _ in 0..30 {
            c.attached(Duration::from_millis(40));
            c.undone(Duration::from_millis(10));
        }
        assert!(c.attach.abs_diff(Duration::from_millis(40)) < Duration::from_millis(1));
        assert!(c.undo.abs_diff(Duration::from_millis(10)) < Duration::from_millis(1));
    }
}
