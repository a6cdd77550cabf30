//! netclaim: a Kubernetes DRA network driver.
//!
//! The library holds every piece of the driver; `src/main.rs` only parses the command
//! line and wires the pieces together. Modules are named after what they own:
//!
//! * [`netns`] — entering network namespaces on dedicated threads;
//! * [`datapath`] — the eBPF programs per device: load, attach, pin, policy, counters.
pub mod config;
pub mod datapath;
pub mod netns;

/// Default DRA driver name; also the domain of device attributes.
pub const DEFAULT_DRIVER_NAME: &str = "netclaim.dev";
/// Default root of the driver's pins on bpffs.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/netclaim";
