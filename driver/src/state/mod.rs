//! The checkpoint: prepared plans and host originals, surviving restarts.
//!
//! [`Plan`] is what `NodePrepareResources` decided for one device of one claim; the
//! NRI hooks read it when the pod starts and set [`Plan::attached`] while the device is
//! inside the pod. [`StateStore`] keeps the plans of every prepared claim, keyed by claim
//! UID, in one embedded key-value file under `--state-dir`, so a restarted driver finds
//! them again. This module owns that file and nothing else: it never talks to kubelet,
//! the API server or the kernel.

pub mod plan;
pub mod store;

pub use plan::{Attachment, ClaimPlans, ClaimRecord, DhcpRecord, Placement, Plan, PodRecord};
pub use store::{decode_entry, encode_entry, StateError, StateStore, CHECKPOINT_FILE};

/// Default directory of the checkpoint (`--state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/run/netclaim";
