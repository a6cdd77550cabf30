//! The `netclaim` command line: one file per subcommand, each with its arguments and
//! its `run` function. `main.rs` only parses and dispatches.

pub mod daemon;
pub mod inspect;
pub mod install_cni;
pub mod inventory;
pub mod validate;

use clap::{Parser, Subcommand};

/// Kubernetes DRA network driver: hands node interfaces to pods, restores them
/// exactly, and enforces each claim's routing with eBPF.
#[derive(Debug, Parser)]
#[command(name = "netclaim", version, propagate_version = true)]
pub struct Cli {
    /// Log filter in RUST_LOG syntax (also read from RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of `Run`'s arguments costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the driver on this node (kubelet plugin, NRI plugin, publisher).
    Run(daemon::RunArgs),
    /// Show the devices this node would publish, with their attributes.
    Inventory(inventory::InventoryArgs),
    /// Show attached data paths (programs, modes, policy, counters) from the kernel.
    Inspect(inspect::InspectArgs),
    /// Validate a ResourceClaim, ResourceClaimTemplate or bare config file.
    Validate(validate::ValidateArgs),
    /// Install `netclaim-cni` into the node's CNI bin directory (init container).
    InstallCni(install_cni::InstallCniArgs),
    /// Print the version and the embedded eBPF object's size.
    Version,
}

/// Output formats shared by listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}
