//! `netclaim run`: the node daemon.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// DRA driver name; also the domain of device attributes.
    #[arg(long, default_value = crate::DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Root of the driver's pins on bpffs.
    #[arg(long, default_value = crate::DEFAULT_BPF_ROOT)]
    pub bpf_root: PathBuf,
}

pub async fn run(_args: RunArgs) -> anyhow::Result<i32> {
    Err(super::NotBuilt("run").into())
}
