//! Running code inside a network namespace on a dedicated OS thread.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so netns work runs on a
//! thread of its own ([`workers`]): it enters the target namespace, does the job and
//! goes back to the driver's namespace before it takes the next. Tokio workers and the
//! caller's thread are never moved. This module owns no kernel objects; it only holds
//! the namespace file for the duration of the call.

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

mod workers;

/// Why work could not be run inside a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path}: setns failed: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("network namespace {path}: worker thread could not be spawned: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path}: worker thread panicked")]
    Panicked { path: PathBuf },
    #[error("network namespace {path}: the worker thread is gone")]
    WorkerGone { path: PathBuf },
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The name of interface `index` in the calling thread's namespace.
pub fn ifname_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// A network namespace the driver holds open: the node's own (captured at start) or a
/// pod's (from its bind-mount path). Holding the file keeps the namespace reachable
/// even if its bind mount disappears while we work.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace bind-mounted (or linked from /proc) at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self { file, path })
    }

    /// The namespace of the calling thread: the driver calls this once at start to
    /// capture the namespace that plays the node ("home" for every device).
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// A second handle on the same namespace (the file is duplicated, not reopened, so
    /// it is the same namespace even if the path now names another).
    pub fn try_clone(&self) -> Result<Self, NetnsError> {
        let file = self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        Ok(Self {
            file,
            path: self.path.clone(),
        })
    }

    /// The path this namespace was opened from (for messages and status).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file, e.g. to move a link into it (`IFLA_NET_NS_FD`).
    /// A descriptor of the namespace of its own (for `IFLA_NET_NS_FD`).
    pub fn dup_fd(&self) -> Result<std::os::fd::OwnedFd, NetnsError> {
        self.file()
            .try_clone()
            .map(std::os::fd::OwnedFd::from)
            .map_err(|source| NetnsError::Open {
                path: self.path().to_path_buf(),
                source,
            })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the calling thread is in this namespace (same namespace file identity).
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (
            self.file.metadata(),
            std::fs::metadata("/proc/thread-self/ns/net"),
        ) {
            (Ok(ours), Ok(here)) => ours.dev() == here.dev() && ours.ino() == here.ino(),
            _ => false,
        }
    }

    /// [`Netns::run`], but on the calling thread when that thread is in this namespace
    /// already: nothing needs entering, and the hop to a worker and back is saved. On
    /// the pod-start path that hop is a sleeping thread woken twice per job (0.1-0.4
    /// ms each here, 2 vCPUs, read from the driver's log). A panic in `work` is caught
    /// as on a worker.
    pub fn run_in_place<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if !self.is_current() {
            return self.run(work);
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|_| {
            NetnsError::Panicked {
                path: self.path.clone(),
            }
        })
    }

    /// Runs `work` on a worker thread that has entered this namespace, and returns its
    /// result. The worker goes back to the driver's namespace before its next job, so
    /// nothing else ever runs in this namespace by accident; a worker that cannot go
    /// back ends instead.
    pub fn run<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.spawn(work)?.wait()
    }

    /// [`Netns::run`] without waiting: `work` starts on a worker in this namespace and
    /// the caller goes on; [`Pending::wait`] returns its result.
    pub fn spawn<T, F>(&self, work: F) -> Result<Pending<T>, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let fd = self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        let thread_path = self.path.clone();
        let (answer, result) = std::sync::mpsc::sync_channel(1);
        let job: workers::Job = Box::new(move || {
            let outcome = setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetnsError::Enter {
                    path: thread_path.clone(),
                    source,
                })
                .and_then(|()| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                        .map_err(|_| NetnsError::Panicked { path: thread_path })
                });
            let deliver: workers::Deliver = Box::new(move || {
                // The caller may have given up (it panicked); nobody to tell then.
                let _ = answer.send(outcome);
            });
            deliver
        });
        workers::run(job).map_err(|source| NetnsError::Spawn {
            path: self.path.clone(),
            source,
        })?;
        Ok(Pending {
            result,
            path: self.path.clone(),
        })
    }

    /// Like [`Netns::run`], for async work: the thread builds a current-thread tokio
    /// runtime (needed by rtnetlink) inside the namespace.
    pub fn run_async<T, F, Fut>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = self.path.clone();
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetnsError::Spawn { path, source })?;
            Ok(rt.block_on(work()))
        })?
    }
}

/// Work [`Netns::spawn`] started in a namespace, until its result is taken.
#[must_use = "the work runs on; wait for it before touching what it works on"]
pub struct Pending<T> {
    result: std::sync::mpsc::Receiver<Result<T, NetnsError>>,
    path: PathBuf,
}

impl<T> Pending<T> {
    /// Blocks until the work is done (its worker is back home) and returns its result.
    pub fn wait(self) -> Result<T, NetnsError> {
        self.result
            .recv()
            .map_err(|_| NetnsError::WorkerGone { path: self.path })?
    }
}

/// The inode of the calling thread's network namespace (0 if unreadable), for tests.
#[cfg(test)]
fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_for_the_callers_own_namespace_runs_in_place() {
        let home = Netns::current().expect("own namespace");
        assert!(home.is_current());
        let caller = std::thread::current().id();
        let ran_on = home
            .run_in_place(|| std::thread::current().id())
            .expect("ran");
        assert_eq!(ran_on, caller, "the work hopped to another thread");
        // A panic is caught as on a worker, and the caller goes on.
        let panicked = home.run_in_place(|| -> u8 { panic!("on purpose") });
        assert!(matches!(panicked, Err(NetnsError::Panicked { .. })));
    }

    #[test]
    fn work_for_another_namespace_runs_on_a_worker_inside_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a new network namespace needs root");
            return;
        }
        // A namespace of its own, held open by the handle (the thread that made it ends).
        let other = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            Netns::current().expect("the new namespace")
        })
        .join()
        .expect("thread");
        let other_inode = {
            use std::os::unix::fs::MetadataExt;
            other.file().metadata().expect("metadata").ino()
        };
        assert!(!other.is_current());
        let caller = std::thread::current().id();
        let (ran_on, inode) = other
            .run_in_place(|| (std::thread::current().id(), netns_inode()))
            .expect("ran");
        assert_ne!(ran_on, caller, "work for another namespace ran in place");
        assert_eq!(inode, other_inode, "the worker was not in the namespace");
        assert_ne!(netns_inode(), other_inode, "the caller moved");
    }
}
