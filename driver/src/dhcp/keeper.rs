//! [`LeaseKeeper`]: the one owner of a device's DHCP lease while its pod runs.
//!
//! [`LeaseKeeper::start`] spawns a thread that enters the pod's namespace, acquires a
//! lease before the caller's deadline (the pod-start hook's budget), installs it
//! ([`super::install`]) and hands the lease back; a lease that does not come in time
//! fails the call and leaves nothing on the interface. The thread then stays in the
//! namespace: it renews at T1 (unicast to the server), rebinds at T2 (broadcast),
//! and when the lease runs out removes what it installed and starts over. Every
//! change is reported to the caller's [`LeaseEvent`] callback (the data path's
//! anti-spoofing set and the claim status follow it). [`LeaseKeeper::stop`] — or
//! dropping the keeper — sends DHCPRELEASE and removes the address and routes.
//!
//! When to act is decided by [`next_step`], a pure function of the lease timing.

use std::{
    io,
    os::fd::AsFd,
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sched::{setns, CloneFlags};

use super::{
    exchange::{self, ClientId, ExchangeError, ExchangeStats},
    install::{self, InstallError, Installed},
    lease::{Lease, Timing},
    socket::DeviceSocket,
};
use crate::netns::{
    ifindex_of,
    netlink::{NlError, NlSocket},
    Netns, NetnsError,
};

/// How long one renewal or re-acquisition attempt may take before the keeper checks
/// for a stop and reschedules.
pub const ATTEMPT: Duration = Duration::from_secs(10);
/// The shortest wait between failed renewal attempts.
pub const MIN_RETRY: Duration = Duration::from_secs(1);

/// Why a device's lease could not be had or given back.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("device {device}: not found in the pod's namespace")]
    NotFound { device: String },
    #[error("device {device}: DHCP socket: {source}")]
    Socket {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("device {device}: DHCP: {source}")]
    Exchange {
        device: String,
        #[source]
        source: ExchangeError,
    },
    #[error("device {device}: installing the lease: {source}")]
    Install {
        device: String,
        #[source]
        source: InstallError,
    },
    #[error("device {device}: netlink: {source}")]
    Netlink {
        device: String,
        #[source]
        source: NlError,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("device {device}: the DHCP thread ended unexpectedly")]
    Gone { device: String },
}

/// A change of the lease after it was first acquired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The server extended the lease (renewing or rebinding).
    Renewed(Lease),
    /// The lease ran out; its address and routes were removed.
    Lost { address: ipnet::Ipv4Net },
    /// A new lease after a lost one, installed.
    Acquired(Lease),
}

/// What the keeper does next (see [`next_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until then (`None`: an infinite lease; only a stop ends the wait).
    WaitUntil(Option<Instant>),
    /// Extend by unicast to the server, giving up on this attempt at the deadline.
    Renew { deadline: Instant },
    /// Extend by broadcast to any server.
    Rebind { deadline: Instant },
    /// The lease is gone.
    Expired,
}

/// The step for a lease granted at `granted` with `timing`, at `now`; `retry_at`
/// holds a failed attempt's back-off.
pub fn next_step(
    timing: Option<Timing>,
    granted: Instant,
    now: Instant,
    retry_at: Option<Instant>,
) -> Step {
    let Some(t) = timing else {
        return Step::WaitUntil(None);
    };
    let (t1, t2, end) = (granted + t.renew, granted + t.rebind, granted + t.expire);
    if now >= end {
        return Step::Expired;
    }
    if let Some(r) = retry_at.filter(|r| *r > now && *r < end) {
        return Step::WaitUntil(Some(r));
    }
    if now < t1 {
        Step::WaitUntil(Some(t1))
    } else if now < t2 {
        Step::Renew {
            deadline: (now + ATTEMPT).min(t2),
        }
    } else {
        Step::Rebind {
            deadline: (now + ATTEMPT).min(end),
        }
    }
}

/// The monotonic instant of a grant recorded as `granted_at` (Unix seconds), given
/// the wall clock `now_unix` and the monotonic `now` read together; a grant in the
/// future (the wall clock stepped back) counts as now.
pub fn granted_instant(granted_at: u64, now_unix: u64, now: Instant) -> Instant {
    let ago = Duration::from_secs(now_unix.saturating_sub(granted_at));
    now.checked_sub(ago).unwrap_or(now)
}

/// RFC 2131 4.4.5: after a failed attempt, wait half the time left to `until`, but
/// at least [`MIN_RETRY`].
pub fn back_off(now: Instant, until: Instant) -> Instant {
    now + (until.saturating_duration_since(now) / 2).max(MIN_RETRY)
}

enum Command {
    /// Renew (or rebind, when true) now, whatever the timers say; answers with the
    /// new lease.
    Extend(bool, mpsc::Sender<Result<Lease, DhcpError>>),
    /// Release (or just forget, when `release` is false) and remove what was installed.
    Stop {
        release: bool,
        done: mpsc::Sender<Result<(), DhcpError>>,
    },
    /// End the thread and leave the lease as it is (installed, booked at the server).
    Abandon,
}

/// The owner of one device's lease (see the module docs).
pub struct LeaseKeeper {
    device: String,
    commands: mpsc::Sender<Command>,
    current: Arc<Mutex<Option<Lease>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("device", &self.device)
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

/// The lease-holding thread's state.
struct Held {
    device: String,
    client: ClientId,
    lease: Option<Lease>,
    granted: Instant,
    installed: Option<Installed>,
    ifindex: u32,
}

fn exchange_err(device: &str, source: ExchangeError) -> DhcpError {
    DhcpError::Exchange {
        device: device.to_string(),
        source,
    }
}

impl Held {
    fn socket(&self) -> Result<DeviceSocket, DhcpError> {
        DeviceSocket::open(&self.device).map_err(|source| DhcpError::Socket {
            device: self.device.clone(),
            source,
        })
    }

    fn netlink(&self) -> Result<NlSocket, DhcpError> {
        NlSocket::route().map_err(|source| DhcpError::Netlink {
            device: self.device.clone(),
            source,
        })
    }

    /// Acquires and installs a lease before `deadline`.
    fn acquire(&mut self, deadline: Instant) -> Result<Lease, DhcpError> {
        let mut sock = self.socket()?;
        let mut stats = ExchangeStats::default();
        let started = Instant::now();
        let lease = exchange::acquire(&mut sock, &self.client, deadline, &mut stats)
            .map_err(|e| exchange_err(&self.device, e))?;
        drop(sock);
        let mut nl = self.netlink()?;
        let installed =
            install::install(&mut nl, self.ifindex, &lease.install_plan()).map_err(|source| {
                DhcpError::Install {
                    device: self.device.clone(),
                    source,
                }
            })?;
        tracing::info!(device = %self.device, address = %lease.address, server = %lease.server,
            lease_secs = lease.lease_secs, sent = stats.sent, ms = started.elapsed().as_millis() as u64,
            "DHCP lease acquired");
        self.lease = Some(lease.clone());
        self.granted = started;
        self.installed = Some(installed);
        Ok(lease)
    }

    fn extend(&mut self, rebinding: bool, deadline: Instant) -> Result<Lease, DhcpError> {
        let Some(current) = self.lease.clone() else {
            return Err(DhcpError::Exchange {
                device: self.device.clone(),
                source: ExchangeError::Timeout {
                    waiting_for: "ACK",
                    waited: Duration::ZERO,
                    sent: 0,
                    ignored: 0,
                },
            });
        };
        let mut sock = self.socket()?;
        let mut stats = ExchangeStats::default();
        let started = Instant::now();
        let lease = exchange::extend(
            &mut sock,
            &self.client,
            &current,
            rebinding,
            deadline,
            &mut stats,
        )
        .map_err(|e| exchange_err(&self.device, e))?;
        tracing::info!(device = %self.device, address = %lease.address, rebinding,
            lease_secs = lease.lease_secs, "DHCP lease extended");
        self.lease = Some(lease.clone());
        self.granted = started;
        Ok(lease)
    }

    /// Removes what was installed (and releases the lease first when asked).
    fn give_back(&mut self, release: bool) -> Result<(), DhcpError> {
        let mut first = None;
        if let (true, Some(lease)) = (release, self.lease.as_ref()) {
            let sent = self.socket().and_then(|mut s| {
                exchange::release(&mut s, &self.client, lease)
                    .map_err(|e| exchange_err(&self.device, e))
            });
            match sent {
                Ok(()) => {
                    tracing::info!(device = %self.device, address = %lease.address, "DHCP lease released")
                }
                Err(e) => first = Some(e),
            }
        }
        if let Some(installed) = self.installed.take() {
            let removed = self.netlink().and_then(|mut nl| {
                install::remove(&mut nl, &installed).map_err(|source| DhcpError::Install {
                    device: self.device.clone(),
                    source,
                })
            });
            if let Err(e) = removed {
                first.get_or_insert(e);
            }
        }
        self.lease = None;
        first.map_or(Ok(()), Err)
    }
}

impl LeaseKeeper {
    /// Acquires a lease for `device` (MAC `mac`) inside `pod` before `deadline`,
    /// installs it and keeps it until [`LeaseKeeper::stop`]. `on_change` hears about
    /// every later change, on the keeper's thread.
    pub fn start(
        pod: &Netns,
        device: &str,
        mac: [u8; 6],
        deadline: Instant,
        on_change: impl FnMut(&LeaseEvent) + Send + 'static,
    ) -> Result<(Self, Lease), DhcpError> {
        Self::spawn(pod, device, None, on_change, move |name, ifindex| {
            let mut held = Held {
                device: name,
                client: ClientId { mac },
                lease: None,
                granted: Instant::now(),
                installed: None,
                ifindex,
            };
            let lease = held.acquire(deadline)?;
            Ok((held, lease))
        })
    }

    /// Takes over a lease that an earlier run of the driver acquired and installed on
    /// `device` inside `pod` (read from the checkpoint): no exchange now; renewal,
    /// rebinding and expiry follow the lease's timers, counted from when it was
    /// granted (a lease that ran out meanwhile is removed and acquired again, reported
    /// to `on_change` like any loss).
    pub fn resume(
        pod: &Netns,
        device: &str,
        mac: [u8; 6],
        lease: Lease,
        on_change: impl FnMut(&LeaseEvent) + Send + 'static,
    ) -> Result<Self, DhcpError> {
        let first = lease.clone();
        let (keeper, ()) =
            Self::spawn(pod, device, Some(first), on_change, move |name, ifindex| {
                let installed = Installed {
                    ifindex,
                    address: lease.address,
                    routes: install::route_records(&lease.install_plan()),
                };
                let granted = granted_instant(
                    lease.granted_at,
                    super::lease::unix_secs(std::time::SystemTime::now()),
                    Instant::now(),
                );
                let held = Held {
                    device: name,
                    client: ClientId { mac },
                    lease: Some(lease),
                    granted,
                    installed: Some(installed),
                    ifindex,
                };
                Ok((held, ()))
            })?;
        Ok(keeper)
    }

    /// Starts the keeper's thread in `pod`: `first` makes the [`Held`] lease (an
    /// exchange, or one taken over) and what the caller gets back; then the thread
    /// keeps the lease until stopped.
    fn spawn<T: Send + 'static>(
        pod: &Netns,
        device: &str,
        current: Option<Lease>,
        on_change: impl FnMut(&LeaseEvent) + Send + 'static,
        first: impl FnOnce(String, u32) -> Result<(Held, T), DhcpError> + Send + 'static,
    ) -> Result<(Self, T), DhcpError> {
        let ns = pod.try_clone()?;
        let (commands, inbox) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::channel();
        let current = Arc::new(Mutex::new(current));
        let shared = current.clone();
        let name = device.to_string();
        let thread = std::thread::Builder::new()
            .name("dhcp".into())
            .spawn(move || {
                if let Err(source) = setns(ns.file().as_fd(), CloneFlags::CLONE_NEWNET) {
                    let _ = first_tx.send(Err(DhcpError::Netns(NetnsError::Enter {
                        path: ns.path().to_path_buf(),
                        source,
                    })));
                    return;
                }
                let Some(ifindex) = ifindex_of(&name) else {
                    let _ = first_tx.send(Err(DhcpError::NotFound { device: name }));
                    return;
                };
                match first(name, ifindex) {
                    Ok((mut held, value)) => {
                        set(&shared, held.lease.clone());
                        if first_tx.send(Ok(value)).is_err() {
                            // The caller is gone: nobody owns the lease but us.
                            let _ = held.give_back(true);
                            return;
                        }
                        keep(held, inbox, shared, on_change);
                    }
                    Err(e) => {
                        let _ = first_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| NetnsError::Spawn {
                path: pod.path().to_path_buf(),
                source,
            })?;
        let keeper = Self {
            device: device.to_string(),
            commands,
            current,
            thread: Some(thread),
        };
        match first_rx.recv() {
            Ok(Ok(value)) => Ok((keeper, value)),
            Ok(Err(e)) => {
                keeper.join();
                Err(e)
            }
            Err(_) => {
                keeper.join();
                Err(DhcpError::Gone {
                    device: device.to_string(),
                })
            }
        }
    }

    /// The device this keeper serves.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The lease held now (`None` after it was lost and before a new one came).
    pub fn lease(&self) -> Option<Lease> {
        self.current.lock().map(|l| l.clone()).unwrap_or(None)
    }

    /// Renews the lease now (unicast to its server), whatever its timers say.
    pub fn renew_now(&self) -> Result<Lease, DhcpError> {
        self.extend_now(false)
    }

    /// Rebinds the lease now (broadcast to any server), whatever its timers say.
    pub fn rebind_now(&self) -> Result<Lease, DhcpError> {
        self.extend_now(true)
    }

    fn extend_now(&self, rebinding: bool) -> Result<Lease, DhcpError> {
        let (tx, rx) = mpsc::channel();
        let gone = || DhcpError::Gone {
            device: self.device.clone(),
        };
        self.commands
            .send(Command::Extend(rebinding, tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// Releases the lease (DHCPRELEASE) and removes its address and routes.
    pub fn stop(mut self) -> Result<(), DhcpError> {
        self.finish(true)
    }

    /// Removes the address and routes without telling the server (the lease stays
    /// booked there until it expires).
    pub fn forget(mut self) -> Result<(), DhcpError> {
        self.finish(false)
    }

    /// Ends the keeper's thread but leaves the lease in place: address and routes stay,
    /// no DHCPRELEASE. For a driver that shuts down while the pod runs on: the next run
    /// takes the lease over from the checkpoint ([`LeaseKeeper::resume`]).
    pub fn abandon(mut self) {
        let _ = self.commands.send(Command::Abandon);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn finish(&mut self, release: bool) -> Result<(), DhcpError> {
        let (done, rx) = mpsc::channel();
        let result = match self.commands.send(Command::Stop { release, done }) {
            Ok(()) => rx.recv().unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        result
    }

    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.finish(true) {
                tracing::warn!(device = %self.device, error = %e, "DHCP lease not given back cleanly");
            }
        }
    }
}

fn set(shared: &Mutex<Option<Lease>>, lease: Option<Lease>) {
    if let Ok(mut g) = shared.lock() {
        *g = lease;
    }
}

/// The keeper thread's loop after the first lease.
fn keep(
    mut held: Held,
    inbox: mpsc::Receiver<Command>,
    shared: Arc<Mutex<Option<Lease>>>,
    mut on_change: impl FnMut(&LeaseEvent),
) {
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let step = match &held.lease {
            Some(l) => next_step(l.timing, held.granted, now, retry_at),
            // Lost: try to acquire again, in bounded attempts.
            None => Step::WaitUntil(retry_at.filter(|r| *r > now)),
        };
        let wait_until = match step {
            Step::WaitUntil(t) => t,
            _ => Some(now),
        };
        let command = match wait_until {
            Some(t) if t > now => match inbox.recv_timeout(t - now) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = held.give_back(true);
                    return;
                }
            },
            Some(_) => match inbox.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    let _ = held.give_back(true);
                    return;
                }
            },
            None => match inbox.recv() {
                Ok(c) => Some(c),
                Err(_) => {
                    let _ = held.give_back(true);
                    return;
                }
            },
        };
        match command {
            Some(Command::Stop { release, done }) => {
                let r = held.give_back(release);
                set(&shared, None);
                let _ = done.send(r);
                return;
            }
            Some(Command::Abandon) => return,
            Some(Command::Extend(rebinding, reply)) => {
                let r = held.extend(rebinding, Instant::now() + ATTEMPT);
                if let Ok(l) = &r {
                    retry_at = None;
                    set(&shared, Some(l.clone()));
                    on_change(&LeaseEvent::Renewed(l.clone()));
                }
                let _ = reply.send(r);
                continue;
            }
            None => {}
        }
        if held.lease.is_none() {
            match held.acquire(Instant::now() + ATTEMPT) {
                Ok(l) => {
                    retry_at = None;
                    set(&shared, Some(l.clone()));
                    on_change(&LeaseEvent::Acquired(l));
                }
                Err(e) => {
                    tracing::warn!(device = %held.device, error = %e, "DHCP: no lease yet; trying again");
                    retry_at = Some(Instant::now() + MIN_RETRY);
                }
            }
            continue;
        }
        let now = Instant::now();
        let Some(lease) = held.lease.clone() else {
            continue;
        };
        match next_step(lease.timing, held.granted, now, retry_at) {
            Step::WaitUntil(_) => {}
            Step::Renew { deadline } | Step::Rebind { deadline } => {
                let rebinding = matches!(
                    next_step(lease.timing, held.granted, now, None),
                    Step::Rebind { .. }
                );
                match held.extend(rebinding, deadline) {
                    Ok(l) => {
                        retry_at = None;
                        set(&shared, Some(l.clone()));
                        on_change(&LeaseEvent::Renewed(l));
                    }
                    Err(e) => {
                        let t = lease.timing.unwrap_or(Timing {
                            renew: Duration::ZERO,
                            rebind: Duration::ZERO,
                            expire: Duration::ZERO,
                        });
                        let until = if rebinding {
                            held.granted + t.expire
                        } else {
                            held.granted + t.rebind
                        };
                        tracing::warn!(device = %held.device, rebinding, error = %e, "DHCP: lease not extended yet");
                        retry_at = Some(back_off(Instant::now(), until));
                    }
                }
            }
            Step::Expired => {
                let address = lease.address;
                tracing::warn!(device = %held.device, %address, "DHCP lease expired; address and routes removed");
                let _ = held.give_back(false);
                set(&shared, None);
                retry_at = None;
                on_change(&LeaseEvent::Lost { address });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(t1: u64, t2: u64, end: u64) -> Option<Timing> {
        Some(Timing {
            renew: Duration::from_secs(t1),
            rebind: Duration::from_secs(t2),
            expire: Duration::from_secs(end),
        })
    }

    #[test]
    fn steps_follow_t1_t2_and_expiry() {
        let g = Instant::now();
        let t = timing(60, 105, 120);
        let at = |s: u64| g + Duration::from_secs(s);
        assert_eq!(next_step(t, g, at(0), None), Step::WaitUntil(Some(at(60))));
        assert_eq!(
            next_step(t, g, at(60), None),
            Step::Renew { deadline: at(70) }
        );
        assert_eq!(
            next_step(t, g, at(100), None),
            Step::Renew { deadline: at(105) },
            "a renewal attempt ends at T2"
        );
        assert_eq!(
            next_step(t, g, at(105), None),
            Step::Rebind { deadline: at(115) }
        );
        assert_eq!(
            next_step(t, g, at(115), None),
            Step::Rebind { deadline: at(120) }
        );
        assert_eq!(next_step(t, g, at(120), None), Step::Expired);
        assert_eq!(next_step(None, g, at(10_000), None), Step::WaitUntil(None));
    }

    #[test]
    fn a_resumed_lease_counts_from_its_recorded_grant() {
        let now = Instant::now() + Duration::from_secs(1000);
        assert_eq!(
            granted_instant(1_000, 1_090, now),
            now - Duration::from_secs(90)
        );
        assert_eq!(
            granted_instant(2_000, 1_090, now),
            now,
            "clock stepped back"
        );
        // 90 s into a 120 s lease (T1 60, T2 105): renew now.
        let t = timing(60, 105, 120);
        let g = granted_instant(1_000, 1_090, now);
        assert!(matches!(next_step(t, g, now, None), Step::Renew { .. }));
        assert_eq!(
            next_step(t, granted_instant(1_000, 1_200, now), now, None),
            Step::Expired,
            "a lease that ran out while the driver was down"
        );
    }

    #[test]
    fn a_back_off_delays_the_next_attempt_but_not_past_expiry() {
        let g = Instant::now();
        let t = timing(60, 105, 120);
        let at = |s: u64| g + Duration::from_secs(s);
        assert_eq!(
            next_step(t, g, at(61), Some(at(80))),
            Step::WaitUntil(Some(at(80)))
        );
        assert_eq!(next_step(t, g, at(121), Some(at(130))), Step::Expired);
        assert_eq!(
            back_off(at(60), at(105)),
            at(60) + Duration::from_millis(22_500)
        );
        assert_eq!(back_off(at(104), at(105)), at(105), "at least MIN_RETRY");
    }
}
