//! netclaim: a Kubernetes DRA network driver.
//!
//! The library holds every piece of the driver; `src/main.rs` only parses the command
//! line and wires the pieces together. Modules are named after what they own:
//!
//! * [`config`] — the claim's NetworkConfig and its validation;
//! * [`inventory`] — which devices this node publishes;
//! * [`kubelet`] — the kubelet plugin (registration, DRA, health);
//! * [`state`] — the checkpoint of prepared plans;
//! * [`netns`] — entering network namespaces on dedicated threads, moving and
//!   configuring interfaces and restoring them;
//! * [`datapath`] — the eBPF programs per device: load, attach, pin, policy, counters;
//! * [`lifecycle`] — what happens to a claimed device when its pod starts and stops;
//! * [`status`] — the claim's device status (KEP-4817) and device health;
//! * [`cni`] — the chained CNI plugin that starts the hand-over at the CNI ADD;
//! * [`cli`] — the `netclaim` subcommands.
pub mod cli;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod dhcp;
pub mod failpoints;
pub mod inventory;
pub mod kubelet;
pub mod lifecycle;
pub mod metrics;
pub mod netns;
pub mod nri;
pub mod publisher;
pub mod state;
pub mod status;

/// Default DRA driver name; also the domain of device attributes.
pub const DEFAULT_DRIVER_NAME: &str = "netclaim.dev";
/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Default root of the driver's pins on bpffs.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/netclaim";
