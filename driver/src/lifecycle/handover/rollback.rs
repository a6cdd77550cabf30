//! The one rollback owner, [`unwind`]: takes a device back from wherever a
//! [`Taken`] says it got to (in the pod, moved but not configured, home with a record
//! still standing), step by step as [`decide::undo_steps`] lists them, and clears its
//! write-ahead record only when every step before succeeded.

use std::time::{Duration, Instant};

use super::super::decide::{self, Progress, UndoStep};
use super::super::effects::{Effects, Placing};
use super::super::{datapath_key, LifecycleStep};
use crate::datapath::DatapathKey;
use crate::netns::{HostOriginals, PodSide, RestoreOutcome};
use crate::state::{Attachment, Placement, Plan};

/// A device somewhere between home and its pod: what [`unwind`] needs.
#[derive(Clone, Debug)]
pub struct Taken {
    pub claim_uid: String,
    pub plan: Plan,
    /// Where it may be and what to restore; `None` when it never left home. The
    /// originals are `None` only when a failure came before they were captured.
    pub moved: Option<(PodSide, Option<HostOriginals>)>,
    /// Its data path, when one is (or may be) pinned.
    pub datapath: Option<DatapathKey>,
    /// That data path was staged at prepare (it stays after the device is home).
    pub staged: bool,
    /// A DHCP lease may be held for it.
    pub lease: bool,
    /// A write-ahead record stands for it.
    pub recorded: bool,
    /// The checkpoint's record (its recorded lease is released from it).
    pub record: Option<Attachment>,
}

impl Taken {
    fn progress(&self) -> Progress {
        Progress {
            recorded: self.recorded,
            moved: self.moved.is_some(),
            datapath: self.datapath.is_some(),
            lease: self.lease,
            staged: self.staged,
        }
    }

    /// A device as its checkpoint record says (after a restart, or at a stop).
    pub fn from_record(claim_uid: &str, plan: &Plan, att: &Attachment) -> Self {
        Self {
            claim_uid: claim_uid.to_string(),
            plan: plan.clone(),
            moved: Some((
                PodSide {
                    name: att.pod_ifname.clone(),
                    ifindex: att.pod_ifindex,
                    mac: att.pod_mac,
                },
                Some(att.originals.clone()),
            )),
            datapath: att.datapath.then(|| datapath_key(plan).ok()).flatten(),
            staged: plan.staged && att.datapath,
            lease: att.dhcp.is_some(),
            recorded: true,
            record: Some(att.clone()),
        }
    }
}

/// What [`unwind`] did with one device.
#[derive(Debug, Default)]
pub struct Unwound {
    /// What went wrong, each naming its step; empty when the device is home, restored,
    /// its data path gone and its record cleared.
    pub problems: Vec<String>,
    /// How the restore went, when the device had moved and restoring succeeded.
    pub outcome: Option<RestoreOutcome>,
    /// Everything succeeded but clearing the record (a checkpoint I/O error).
    pub uncleared: bool,
}

/// The rollback owner: takes one device back from wherever `taken` says it got to,
/// in the order of [`decide::undo_steps`]. The record is cleared only when every
/// step before succeeded; otherwise it stays for the next stop, synchronize or start.
pub fn unwind<E: Effects>(e: &E, taken: &Taken, pod: Option<&E::Pod>) -> Unwound {
    let mut out = Unwound::default();
    let mut detached = false;
    let mut restore_failed = false;
    let mut timing: Vec<(UndoStep, Duration)> = Vec::new();
    for step in decide::undo_steps(taken.progress()) {
        let began = Instant::now();
        match step {
            UndoStep::ReleaseLease => {
                e.release_lease(&taken.claim_uid, &taken.plan, taken.record.as_ref(), pod)
            }
            UndoStep::StandDown => {
                let Some(key) = &taken.datapath else { continue };
                if let Err(err) = e.stand_down(key) {
                    tracing::debug!(error = %err, "cannot stand the data path down; detaching before the move");
                    detached = true;
                    if let Err(d) = e.detach(key, pod) {
                        out.problems.push(format!("{}: {d}", LifecycleStep::Detach));
                    }
                }
            }
            UndoStep::Restore => {
                let Some((side, originals)) = &taken.moved else {
                    continue;
                };
                let restored = match originals {
                    Some(o) => e.restore(pod, side, o).map_err(|r| r.to_string()),
                    None => Err("the host state was never captured".to_string()),
                };
                match restored {
                    Ok(outcome) => out.outcome = Some(outcome),
                    Err(r) => {
                        restore_failed = true;
                        out.problems
                            .push(format!("{}: {r}", LifecycleStep::Restore));
                    }
                }
            }
            UndoStep::Detach => {
                let Some(key) = &taken.datapath else { continue };
                if detached {
                    continue;
                }
                // Home (or gone): tc filters died with the move, nothing to remove in
                // the pod. Still in the pod: remove them there.
                let in_pod = if restore_failed { pod } else { None };
                if let Err(d) = e.detach(key, in_pod) {
                    out.problems.push(format!("{}: {d}", LifecycleStep::Detach));
                }
            }
            UndoStep::ClearRecord => {
                if !out.problems.is_empty() {
                    continue;
                }
                let cleared = e.place(vec![Placing {
                    claim_uid: &taken.claim_uid,
                    plan: &taken.plan,
                    placement: Placement::Home,
                }]);
                match cleared {
                    Ok(()) => {}
                    // Unprepared meanwhile: nothing left to clear.
                    Err((_, crate::state::StateError::Unprepared { .. })) => {}
                    Err((_, err)) => {
                        out.uncleared = true;
                        out.problems
                            .push(format!("{}: {err}", LifecycleStep::Checkpoint));
                    }
                }
            }
        }
        timing.push((step, began.elapsed()));
    }
    tracing::debug!(steps = ?timing, "undo timing");
    out
}
