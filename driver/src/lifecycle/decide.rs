//! The lifecycle's decisions, as plain functions of what the checkpoint records
//! ([`Placement`]) and what the runtime and kernel show (a [`PodEvent`]). They decide;
//! [`super::handover`] carries the decision out through [`super::effects::Effects`].
//!
//! * [`pod_action`]: what to do with a pod's devices on an event (start, end, a
//!   driver restart that finds the pod's namespace alive or gone);
//! * [`undo_steps`]: how to take one device back from wherever its hand-over got to,
//!   in order. Every way a device goes home (a failed start, a stop, a restart that
//!   finds a cut-off start or stop) uses this one list.

use crate::state::Placement;

/// What happened to a pod, as the lifecycle sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodEvent {
    /// The runtime starts the pod (RunPodSandbox), or synchronize finds it running.
    Starting,
    /// The pod stopped or was removed, or synchronize finds it no longer exists, or its
    /// namespace was removed without a stop.
    Ended,
    /// The driver (re)started and finds the pod's network namespace alive or gone.
    Adopting { alive: bool },
}

/// What to do with a pod's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodAction {
    /// Nothing of the pod is out of place.
    Nothing,
    /// Hand over the devices at home; those in the pod stay.
    HandOver,
    /// A hand-over or give-back was cut off: bring every device home from its record,
    /// then hand them all over again.
    GiveBackThenHandOver,
    /// Bring every device that is not home back.
    GiveBack,
    /// Keep the devices in the pod (hold its namespace, resume leases).
    Hold,
}

/// The decision for a pod whose devices are recorded at `placements`.
pub fn pod_action<'a>(
    placements: impl IntoIterator<Item = &'a Placement>,
    event: PodEvent,
) -> PodAction {
    let (mut home, mut in_pod, mut cut_off) = (0usize, 0usize, 0usize);
    for p in placements {
        match p {
            Placement::Home => home += 1,
            Placement::InPod { .. } => in_pod += 1,
            Placement::Entering { .. } | Placement::Leaving { .. } => cut_off += 1,
        }
    }
    let out = in_pod + cut_off;
    match event {
        // A start cut off half-way never answered the runtime: start over from home.
        PodEvent::Starting if cut_off > 0 => PodAction::GiveBackThenHandOver,
        PodEvent::Starting if home > 0 => PodAction::HandOver,
        PodEvent::Starting => PodAction::Nothing,
        PodEvent::Ended | PodEvent::Adopting { alive: false } if out > 0 => PodAction::GiveBack,
        // A live pod with a cut-off start or stop: the runtime saw that hook fail (or
        // is stopping the pod); finish bringing the devices home. Synchronize hands
        // them over again if the pod runs.
        PodEvent::Adopting { alive: true } if cut_off > 0 => PodAction::GiveBack,
        PodEvent::Adopting { alive: true } if in_pod > 0 => PodAction::Hold,
        PodEvent::Ended | PodEvent::Adopting { .. } => PodAction::Nothing,
    }
}

/// Whether a start into namespace `netns` finds devices recorded in another pod
/// namespace (an earlier sandbox of the pod, or a hand-over begun for a namespace the
/// runtime does not use for it): those go home before the hand-over, never stay there
/// as "already in the pod".
pub fn elsewhere<'a>(
    placements: impl IntoIterator<Item = &'a Placement>,
    netns: &std::path::Path,
) -> bool {
    placements
        .into_iter()
        .any(|p| matches!(p, Placement::InPod { .. }) && !in_pod_at(p, netns))
}

/// Whether a device is recorded in the pod, in namespace `netns`: the one placement a
/// start into `netns` leaves as it is.
pub fn in_pod_at(placement: &Placement, netns: &std::path::Path) -> bool {
    matches!(placement, Placement::InPod { attachment } if attachment.pod_netns == netns)
}

/// What one device has been through, in this run or according to its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// A write-ahead record (`Entering`/`Leaving`) stands for it.
    pub recorded: bool,
    /// It may have left home (moved, or its record says it was about to).
    pub moved: bool,
    /// A data path is (or may be) pinned for it.
    pub datapath: bool,
    /// That data path was staged at prepare: it goes home with the device, counting
    /// only, and stays until unprepare.
    pub staged: bool,
    /// A DHCP lease may be held for it.
    pub lease: bool,
}

/// One step of taking a device back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UndoStep {
    /// Release its DHCP lease from inside the pod, while the device is still there.
    ReleaseLease,
    /// Make the data path count only, so the node's traffic on the returned device is
    /// never held to the pod's policy; if that fails, detach now instead.
    StandDown,
    /// Move it home and restore its host state field by field.
    Restore,
    /// Remove the data path (after the move: XDP and TCX links survive it, and
    /// detaching first makes the kernel's deferred link release race the move for
    /// RTNL). Where restoring failed, in the pod. Not for a staged data path: that
    /// one stays, counting only, until unprepare.
    Detach,
    /// Record it home. Only when every step before it succeeded: otherwise the
    /// record stays and the next stop, synchronize or restart tries again.
    ClearRecord,
}

/// The steps, in order, that take a device back from `progress`.
pub fn undo_steps(progress: Progress) -> Vec<UndoStep> {
    let mut steps = Vec::with_capacity(5);
    if progress.lease {
        steps.push(UndoStep::ReleaseLease);
    }
    if progress.datapath {
        steps.push(UndoStep::StandDown);
    }
    if progress.moved {
        steps.push(UndoStep::Restore);
    }
    if progress.datapath && !progress.staged {
        steps.push(UndoStep::Detach);
    }
    if progress.recorded {
        steps.push(UndoStep::ClearRecord);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Attachment;

    fn att() -> Attachment {
        Attachment::for_tests("/run/netns/p")
    }

    fn placements(s: &str) -> Vec<Placement> {
        s.chars()
            .map(|c| match c {
                'h' => Placement::Home,
                'e' => Placement::Entering { attachment: att() },
                'i' => Placement::InPod { attachment: att() },
                'l' => Placement::Leaving { attachment: att() },
                other => panic!("unknown placement {other}"),
            })
            .collect()
    }

    #[test]
    fn every_placement_mix_and_event_has_one_answer() {
        use PodAction::*;
        use PodEvent::*;
        let cases: &[(&str, PodEvent, PodAction)] = &[
            ("h", Starting, HandOver),
            ("hh", Starting, HandOver),
            ("ih", Starting, HandOver),
            ("i", Starting, Nothing),
            ("", Starting, Nothing),
            ("e", Starting, GiveBackThenHandOver),
            ("ie", Starting, GiveBackThenHandOver),
            ("hl", Starting, GiveBackThenHandOver),
            ("h", Ended, Nothing),
            ("i", Ended, GiveBack),
            ("e", Ended, GiveBack),
            ("l", Ended, GiveBack),
            ("hi", Ended, GiveBack),
            ("i", Adopting { alive: true }, Hold),
            ("ih", Adopting { alive: true }, Hold),
            ("ie", Adopting { alive: true }, GiveBack),
            ("l", Adopting { alive: true }, GiveBack),
            ("h", Adopting { alive: true }, Nothing),
            ("i", Adopting { alive: false }, GiveBack),
            ("e", Adopting { alive: false }, GiveBack),
            ("h", Adopting { alive: false }, Nothing),
        ];
        for (mix, event, want) in cases {
            let p = placements(mix);
            assert_eq!(pod_action(&p, *event), *want, "{mix:?} on {event:?}");
        }
    }

    #[test]
    fn devices_in_another_pod_namespace_are_elsewhere() {
        let here = std::path::Path::new("/run/netns/p");
        assert!(!elsewhere(&placements("hie"), here));
        assert!(elsewhere(
            &placements("hi"),
            std::path::Path::new("/run/netns/q")
        ));
        // Cut-off starts and stops are the cut-off rule's (GiveBackThenHandOver).
        assert!(!elsewhere(
            &placements("hel"),
            std::path::Path::new("/run/netns/q")
        ));
    }

    #[test]
    fn undo_goes_in_the_reverse_order_of_the_hand_over_and_clears_last() {
        use UndoStep::*;
        let all = Progress {
            recorded: true,
            moved: true,
            datapath: true,
            lease: true,
            staged: false,
        };
        assert_eq!(
            undo_steps(all),
            vec![ReleaseLease, StandDown, Restore, Detach, ClearRecord]
        );
        // Failed before the move: only the record (if written) goes.
        let before_move = Progress {
            recorded: true,
            ..Default::default()
        };
        assert_eq!(undo_steps(before_move), vec![ClearRecord]);
        assert!(undo_steps(Progress::default()).is_empty());
        // Moved and configured, the data path failed to attach.
        let no_datapath = Progress {
            recorded: true,
            moved: true,
            ..Default::default()
        };
        assert_eq!(undo_steps(no_datapath), vec![Restore, ClearRecord]);
        // A staged data path goes home counting only and stays.
        let staged = Progress {
            staged: true,
            ..all
        };
        assert_eq!(
            undo_steps(staged),
            vec![ReleaseLease, StandDown, Restore, ClearRecord]
        );
    }
}
