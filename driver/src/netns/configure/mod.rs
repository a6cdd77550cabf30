//! Handing a host device to a pod: [`move_and_configure`].
//!
//! Top-down, what happens when a pod starts with a claimed interface:
//! 1. host namespace: read the device and capture [`HostOriginals`]; check the
//!    settings against what the device allows (MTU range, ethtool names) *before*
//!    touching anything;
//! 2. host namespace: one `RTM_SETLINK` that sets the link down, moves it into the pod
//!    (`IFLA_NET_NS_FD`) and, in the same message, renames it and sets MTU, MAC and
//!    GSO/GRO sizes. Kernel 6.18 accepts all of these together (the move is done
//!    first in `do_setlink`, the rest applies in the new namespace). If the combined
//!    message is refused, it is retried as a bare move + rename followed by one
//!    request per setting, so the error names the exact field;
//! 3. pod namespace: per-interface sysctls (`arp_ignore`, `arp_announce`,
//!    forwarding — before the link is up, so no ARP is answered the old way), the VRF
//!    (created if missing, the device enslaved), addresses (or the host's addresses
//!    carried along when the claim sets none — a netns move drops them), link up,
//!    routes, policy routing rules, permanent neighbours, ethtool features and
//!    private flags, each checked by reading the kernel back;
//! 4. the result ([`Configured`]) is read back from the kernel, not from our inputs.
//!
//! A failure after the device was touched reports the step and the config field, and
//! where the device was left ([`Left`]): [`move_and_configure`] puts it back home as it
//! was (via [`mod@super::restore`], which also removes the rules and VRF created so far:
//! they are recorded in the [`HostOriginals`] handed to it); the lifecycle calls
//! [`move_and_configure_with`] and undoes through its own rollback owner. Sysctl and VRF failures report [`Step::LinkSettings`], rule and neighbour
//! failures [`Step::Routes`]; the field path says which. The input is
//! [`InterfaceSettings`], plain parsed values the caller maps from the validated
//! claim config; this module does not read claim configs itself.
//!
//! The parts: `spec` (the input and the result), `checks` (decisions before the
//! device is touched), `at_home` (capture and move), `in_pod` (configuration in the
//! pod), `failure` (errors and where a device was left).

mod at_home;
mod checks;
mod failure;
mod in_pod;
mod spec;

pub use at_home::{capture_all_for_move, capture_for_move, move_captured, Captured};
pub(crate) use checks::per_field;
pub use failure::{ConfigureError, Left, Step, StepError};
pub(crate) use in_pod::configure_here;
pub use in_pod::{configure_moved, MovedIn};
pub use spec::{ClaimRule, Configured, InterfaceSettings, NeighbourSpec, RouteSpec, VrfSpec};

use super::{host::HostOriginals, restore::restore_device, Netns};
use failure::{finish_failure, untouched};

/// Moves `host_ifname` from `host` into `pod` and configures it there; on failure
/// the device is back in `host` exactly as it was. Blocks; runs its netlink work on
/// dedicated namespace threads.
pub fn move_and_configure(
    host: &Netns,
    pod: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
) -> Result<Configured, ConfigureError> {
    move_and_configure_with(host, pod, host_ifname, settings, None)
        .map_err(|e| put_back(host, pod, e))
}

/// Restores the device a failed [`move_and_configure_with`] left touched, and says in
/// the error whether that worked.
fn put_back(host: &Netns, pod: &Netns, err: ConfigureError) -> ConfigureError {
    let ConfigureError::Failed {
        device,
        step,
        field,
        source,
        rollback,
        left: Some(left),
    } = err
    else {
        return err;
    };
    let rollback = match &left.originals {
        Some(o) => match restore_device(host, Some(pod), &left.side, o, None) {
            Ok(_) => rollback,
            Err(e) => Some(e.to_string()),
        },
        None => Some("originals were never captured".to_string()),
    };
    ConfigureError::Failed {
        device,
        step,
        field,
        source,
        rollback,
        left: None,
    }
}

/// Called with the device's captured host state after validation and before the first
/// change to the device (the move): the caller makes it durable (write-ahead), so a
/// process killed at any later point leaves a record of what to restore. It may
/// complete the state from what it knows (a device prepare took down was up); what it
/// leaves is what is restored. An error stops everything before the device is touched.
pub type BeforeMove = Box<dyn FnOnce(&mut HostOriginals) -> Result<(), String> + Send>;

/// [`move_and_configure`] with a write-ahead hook: [`capture_for_move`], the hook,
/// [`move_captured`] and [`configure_moved`] for one device.
pub fn move_and_configure_with(
    host: &Netns,
    pod: &Netns,
    host_ifname: &str,
    settings: &InterfaceSettings,
    before_move: Option<BeforeMove>,
) -> Result<Configured, ConfigureError> {
    let mut captured = capture_for_move(host, host_ifname, settings)?;
    if let Some(record) = before_move {
        if let Err(e) = record(captured.originals_mut()) {
            let (failure, _) = *untouched(Step::Capture, "checkpoint", StepError::Intent(e));
            return Err(finish_failure(
                host_ifname,
                &pod_name_of(settings, host_ifname),
                settings.mac,
                failure,
                None,
            ));
        }
    }
    let moved = move_captured(host, pod, vec![captured])?
        .pop()
        .ok_or_else(|| ConfigureError::NotFound {
            device: host_ifname.to_string(),
            netns: host.path().display().to_string(),
        })??;
    configure_moved(pod, host_ifname, settings, moved)
}

pub(super) fn pod_name_of(settings: &InterfaceSettings, host_ifname: &str) -> String {
    settings
        .name
        .clone()
        .unwrap_or_else(|| host_ifname.to_string())
}
