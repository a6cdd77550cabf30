//! The threads that run namespace work for [`super::Netns::run`], kept between jobs.
//!
//! A thread that ends hands its task to RCU, and a namespace move waits for RCU under
//! RTNL (`rcu_barrier` in `__dev_change_net_namespace`): a move that starts while
//! that grace period runs pays for it too. Measured here (back-to-back moves of a
//! down veth from a warm netlink socket, 40 each): 15.9 ms at the median, 19.5–23.5
//! ms with one thread started and ended before each move, with a tail to 40 ms; a
//! netlink socket opened and closed, a `setns` there and back, or a namespace file
//! opened and closed before each move cost nothing. A pod start captures the host
//! side, moves, and configures in the pod, each in a namespace of its own, so a
//! thread per job put a thread's end right before every move.
//!
//! So a worker takes one job at a time and stays: it enters the job's namespace (the
//! job does that), runs it, goes back to the driver's namespace ([`home`]), offers
//! itself for the next job and only then hands the result over, so a caller that
//! runs one job after another keeps finding the same worker. A job that finds no idle
//! worker gets a new one: there are as many as the most jobs that ever ran at once. A
//! worker that cannot go back home ends instead of taking another job.

use std::{
    fs::File,
    os::fd::AsFd,
    sync::{mpsc, Mutex, OnceLock},
};

use nix::sched::{setns, CloneFlags};

/// What a job gives back to run once its worker is home again (the hand-over of its
/// result).
pub type Deliver = Box<dyn FnOnce() + Send>;
/// One piece of namespace work: enters its namespace, works, and returns its delivery.
pub type Job = Box<dyn FnOnce() -> Deliver + Send>;

/// Workers waiting for a job, most recently used last.
static IDLE: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

/// The driver's namespace: the process's (its first thread's, which never leaves it).
/// `None` when it cannot be opened; workers then end after every job.
fn home() -> Option<&'static File> {
    static HOME: OnceLock<Option<File>> = OnceLock::new();
    HOME.get_or_init(|| match File::open("/proc/self/ns/net") {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the driver's own network namespace; namespace workers end after each job");
            None
        }
    })
    .as_ref()
}

fn idle() -> std::sync::MutexGuard<'static, Vec<mpsc::Sender<Job>>> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `job` on an idle worker, or on a new one when none is idle.
pub fn run(mut job: Job) -> std::io::Result<()> {
    loop {
        let Some(worker) = idle().pop() else {
            return spawn(job);
        };
        match worker.send(job) {
            Ok(()) => return Ok(()),
            // That worker ended (it could not go home): try the next.
            Err(mpsc::SendError(back)) => job = back,
        }
    }
}

fn spawn(first: Job) -> std::io::Result<()> {
    let (jobs, inbox) = mpsc::channel::<Job>();
    jobs.send(first)
        .map_err(|_| std::io::Error::other("a new worker's inbox is closed"))?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || work(inbox, move || idle().push(jobs.clone())))?;
    Ok(())
}

/// A worker's life: each job, then home, then `offer` itself for the next (only once
/// its inbox is empty: a worker is idle only when nothing waits for it).
fn work(inbox: mpsc::Receiver<Job>, offer: impl Fn()) {
    while let Ok(job) = inbox.recv() {
        let deliver = job();
        let back = home().is_some_and(|h| setns(h.as_fd(), CloneFlags::CLONE_NEWNET).is_ok());
        if back {
            offer();
        }
        deliver();
        if !back {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::netns_inode;
    use super::*;

    fn thread_id() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    fn on_worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::sync_channel(1);
        run(Box::new(move || {
            let out = f();
            Box::new(move || {
                let _ = tx.send(out);
            })
        }))
        .expect("run");
        rx.recv().expect("answer")
    }

    #[test]
    fn one_job_after_another_keeps_its_worker() {
        // Other tests of this binary may use workers at the same time: at least the
        // second of three jobs in a row must come back to a thread used before.
        let ids: Vec<_> = (0..3).map(|_| on_worker(thread_id)).collect();
        assert!(
            ids[1] == ids[0] || ids[2] == ids[1] || ids[2] == ids[0],
            "every job got a new thread: {ids:?}"
        );
        assert!(ids.iter().all(|id| *id != thread_id()));
    }

    #[test]
    fn jobs_at_once_get_workers_of_their_own() {
        let gate = std::sync::Arc::new(std::sync::Barrier::new(3));
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let (gate, tx) = (gate.clone(), tx.clone());
            run(Box::new(move || {
                // All three wait here: they can only meet on three threads.
                gate.wait();
                let id = thread_id();
                Box::new(move || {
                    let _ = tx.send(id);
                })
            }))
            .expect("run");
        }
        let ids: std::collections::BTreeSet<_> = (0..3)
            .map(|_| format!("{:?}", rx.recv().expect("answer")))
            .collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn a_worker_is_home_before_its_next_job() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: entering a new network namespace needs root");
            return;
        }
        let home_inode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self/ns/net")
                .map(|m| m.ino())
                .expect("own netns")
        };
        // One worker of our own (kept off the idle list), given two jobs in a row:
        // the first leaves it in a new namespace of its own.
        let (jobs, inbox) = mpsc::channel::<Job>();
        std::thread::spawn(move || work(inbox, || {}));
        let (tx, rx) = mpsc::channel();
        let leave = tx.clone();
        jobs.send(Box::new(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            let there = netns_inode();
            Box::new(move || {
                let _ = leave.send(there);
            })
        }))
        .expect("first job");
        jobs.send(Box::new(move || {
            let here = netns_inode();
            Box::new(move || {
                let _ = tx.send(here);
            })
        }))
        .expect("second job");
        let there = rx.recv().expect("first answer");
        let here = rx.recv().expect("second answer");
        assert_ne!(there, home_inode, "the first job did not leave home");
        assert_eq!(
            here, home_inode,
            "the second job started outside the driver's namespace"
        );
    }
}
