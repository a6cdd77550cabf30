//! The driver's side of the CNI socket: one request per connection, answered once the
//! lifecycle has taken the pod's turn ([`Pods::start_pod_ahead`], [`Pods::end_in_netns`]).
//!
//! The socket is the driver's alone (mode 0600 in its state directory): the runtime runs
//! the plugin as root. A request is still outside input: a line longer than
//! [`MAX_LINE`], one that is not a request, or one not sent within [`READ_WAIT`] gets an
//! error reply naming what was wrong, and nothing else happens.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::wire::{Command, Reply, Request, MAX_LINE};
use crate::kubelet::SocketGuard;
use crate::lifecycle::ahead::{AheadStart, DelAction, AHEAD_BUDGET};
use crate::lifecycle::budget::Deadline;
use crate::lifecycle::{PodRuntime, Pods};

/// How long a connection may take to send its request.
pub const READ_WAIT: Duration = Duration::from_secs(2);

/// Serves requests for `pods` on `socket` (bound by [`SocketGuard::bind`]: a stale file
/// replaced, mode 0600, removed when the task ends) until the returned task is aborted.
/// `budget` reads the runtime's hook budget (NRI Configure's request timeout), which an
/// ahead start runs under from the CNI ADD ([`AHEAD_BUDGET`] until the runtime said one).
pub fn serve(
    mut socket: SocketGuard,
    pods: Pods,
    budget: impl Fn() -> Option<Duration> + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let listener = socket.take_listener();
    tokio::spawn(async move {
        let Some(listener) = listener else { return };
        // Owned here, so the file goes when the task ends.
        let _socket = socket;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let budget = budget().unwrap_or(AHEAD_BUDGET);
                    tokio::spawn(answer(stream, pods.clone(), budget));
                }
                Err(e) => {
                    tracing::warn!("CNI socket: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Reads one request from `stream`, acts on it, writes the reply.
async fn answer(stream: UnixStream, pods: Pods, budget: Duration) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64 + 1));
    let reply = match tokio::time::timeout(READ_WAIT, reader.read_line(&mut line)).await {
        Err(_) => Reply::Error {
            message: format!("no request line within {READ_WAIT:?}"),
        },
        Ok(Err(e)) => Reply::Error {
            message: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) if line.len() > MAX_LINE => Reply::Error {
            message: format!("request longer than {MAX_LINE} bytes"),
        },
        Ok(Ok(_)) => match Request::parse(&line) {
            Err(e) => Reply::Error {
                message: e.to_string(),
            },
            Ok(req) => crate::lifecycle::nri::blocking(move || Ok(act(&pods, &req, budget)))
                .await
                .unwrap_or_else(|message| Reply::Error { message }),
        },
    };
    if let Reply::Error { message } = &reply {
        tracing::warn!("CNI socket: {message}");
    }
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// What the lifecycle does for one request.
fn act(pods: &Pods, req: &Request, budget: Duration) -> Reply {
    let pod = req.pod_label();
    let span = tracing::info_span!("cni", pod = %pod, uid = %req.pod_uid, sandbox = %req.sandbox);
    let _entered = span.enter();
    let quiet = crate::netns::quiet::Quiet::global();
    match req.command {
        Command::Add => {
            // Until its RunPodSandbox, the runtime is still starting the pod: netclaim's
            // background work waits (`netns::quiet`), whether or not the pod claims.
            quiet.open_window(&req.pod_uid, crate::netns::quiet::WINDOW_LONGEST);
            let runtime = PodRuntime {
                netns: req.netns.clone(),
                cgroup_parent: req.cgroup_path.clone().filter(|c| !c.is_empty()),
                deadline: Some(Deadline::new(budget)),
            };
            match pods.start_pod_ahead(&req.pod_uid, &pod, runtime) {
                Ok(AheadStart::Started { devices }) => {
                    tracing::info!(devices, netns = %req.netns.display(), "CNI ADD: hand-over started ahead of RunPodSandbox");
                    Reply::Started { devices }
                }
                Ok(AheadStart::Nothing) => Reply::Nothing,
                Ok(AheadStart::Declined(reason)) => {
                    tracing::info!("CNI ADD: hand-over left to RunPodSandbox: {reason}");
                    Reply::Declined { reason }
                }
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            }
        }
        Command::Del => {
            quiet.close_window(&req.pod_uid);
            match pods.end_in_netns(&req.pod_uid, &req.netns) {
                Ok(DelAction::GiveBack) => Reply::GivingBack,
                Ok(DelAction::Nothing) => Reply::Nothing,
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            }
        }
    }
}
