//! Configuring the devices of one pod start in the pod, one after another in one job on
//! one worker, each result handed over as soon as it is done ([`configure_each`]). The
//! caller works on a device (its data path: `bpf` calls, no RTNL) while the worker
//! configures the next one, and one job replaces a thread hop per device.
//!
//! The worker stops at the first device that fails, and when the caller lets go of
//! [`Configuring`] early: dropping it waits until the worker is out of the job, so a
//! caller that undoes after a failure never races a configuration still running.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    mpsc, Arc,
};

use super::{
    configure::{configure_here, ConfigureError, Configured, InterfaceSettings, MovedIn},
    thread::Pending,
    Netns, NetnsError,
};

/// One moved device to configure: its host name (for messages), its settings and
/// what the move left to do.
pub type ToConfigure = (String, InterfaceSettings, MovedIn);

/// The results of [`configure_each`], in the order of its devices; ends after the first
/// failure, or early if the worker could not run the job (then the last item says so).
pub struct Configuring {
    results: mpsc::Receiver<Result<Configured, ConfigureError>>,
    stop: Arc<AtomicBool>,
    job: Option<Pending<()>>,
}

/// Starts configuring `devices` in `pod`, in order, on one worker.
pub fn configure_each(pod: &Netns, devices: Vec<ToConfigure>) -> Result<Configuring, NetnsError> {
    let (tx, results) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    // The worker's log lines belong to the pod start that asked for them.
    let span = tracing::Span::current();
    let job = pod.spawn(move || {
        let _entered = span.enter();
        // One socket for every device of the job.
        let mut sock = None;
        for (host_ifname, settings, moved) in devices {
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let result = configure_here(&mut sock, &host_ifname, &settings, moved);
            let failed = result.is_err();
            if tx.send(result).is_err() || failed {
                return;
            }
        }
    })?;
    Ok(Configuring {
        results,
        stop,
        job: Some(job),
    })
}

impl Iterator for Configuring {
    type Item = Result<Configured, ConfigureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Ok(result) = self.results.recv() {
            return Some(result);
        }
        // The job ended: normally after its last device; otherwise say why it stopped.
        match self.job.take()?.wait() {
            Ok(()) => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

impl Configuring {
    /// Stops after the device being configured now, waits until the worker is out of
    /// the job, and returns the results not taken yet (the undo needs to know what
    /// configuring those added in the pod).
    pub fn stop(mut self) -> Vec<Result<Configured, ConfigureError>> {
        self.halt();
        self.results.try_iter().collect()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(job) = self.job.take() {
            // Out of the job before anyone touches its devices again.
            let _ = job.wait();
        }
    }
}

impl Drop for Configuring {
    fn drop(&mut self) {
        self.halt();
    }
}
