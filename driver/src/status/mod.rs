//! Claim device status (KEP-4817): this driver's `ResourceClaim.status.devices[]`
//! entries, and the kubelet health of its published devices (those handed out, as seen
//! inside their pods; the others, from their carrier on the node).
//!
//! Off the pod hooks' critical path: `lifecycle` only sends [`DeviceEvent`]s on a
//! channel; the [`StatusWriter`] task turns them (and a periodic refresh of link
//! state, addresses and data-path counters) into server-side applies on the claim's
//! `status` subresource. Entry shape: `{driver, pool, device, conditions[Ready,
//! NetworkReady, DataPathReady], data{state, counters, datapath, link, ...},
//! networkData{interfaceName, hardwareAddress, ips}}`.
//!
//! * [`event`] — what lifecycle reports;
//! * [`conditions`] — condition transitions and timestamps (pure);
//! * [`observe`] — reading a device back from the kernel (blocking, read-only);
//! * [`render`] — the typed entry, kept inside the API server's limits (pure);
//! * [`writer`] — the task: entries in memory, apply with retry, health of claimed
//!   devices;
//! * [`health`] — health of the unclaimed devices still on the node (carrier).

pub mod conditions;
pub mod event;
pub mod health;
pub mod observe;
pub mod render;
pub mod writer;

pub use event::{DeviceEvent, DeviceRef, FailedPart};
pub use writer::{
    status_channel, StatusConfig, StatusError, StatusReceiver, StatusSender, StatusWriter,
    DEFAULT_DROP_SPIKE, DEFAULT_STATUS_INTERVAL,
};
