//! The eBPF data path of each allocated interface.
//!
//! Every device gets its own loaded instance of the programs in `ebpf/` (so counters
//! and policy of two devices never mix, even when they share an ifindex in different
//! namespaces), attached inside the pod's namespace: tc egress through TCX (clsact
//! when TCX is unavailable) and XDP ingress (native, then generic, then tc ingress).
//! Links, programs and maps are pinned under one directory per claim and device (see
//! [`pins`]); the pins are the single owner of those kernel objects, which is what
//! lets the programs keep working while the driver is down and lets a restarted
//! driver adopt them again.
//!
//! * [`object`] — the embedded object and how it is loaded;
//! * [`pins`] — where everything is pinned, and pinning/unpinning it;
//! * [`pool`] — spare pre-verified instances that keep the verifier off pod start;
//! * [`policy`] — claim addresses/routes/knobs compiled into map contents (pure);
//! * [`attach`] — the attach ladder (TCX/clsact egress; XDP/TCX/clsact ingress) and
//!   clsact clean-up, on the namespace thread;
//! * [`maps`] — the typed policy maps of both slots: fill, clear, flip, read back;
//! * [`device`] — [`AttachedDatapath`]: attach, adopt, update, read, detach;
//! * [`error`] — [`DatapathError`];
//! * [`counters`] — per-CPU values summed into [`CounterSnapshot`];
//! * [`logs`] — forwarding `aya-log` records from the programs to `tracing`;
//! * `syscall` — the raw `bpf(2)` commands aya does not offer (cgroup links, link
//!   detach, a pinned link's device).

pub mod attach;
pub mod counters;
pub mod device;
pub mod error;
pub mod grace;
pub mod guard;
pub mod logs;
pub mod maps;
pub mod object;
pub mod pins;
pub mod policy;
pub mod pool;
mod syscall;

pub use attach::{EgressMode, IngressMode};
pub use counters::CounterSnapshot;
pub use device::AttachedDatapath;
pub use error::DatapathError;
pub use pins::{DatapathKey, PinLayout, PinRootError};
pub use policy::{
    allowed_destinations, DatapathPolicy, DataplaneKnobs, Enforcement, TableRoute, TableRule,
};
