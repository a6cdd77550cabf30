//! `netclaim inspect`.

use clap::Args;

#[derive(Debug, Args)]
pub struct InspectArgs {}

pub fn run(_args: InspectArgs) -> anyhow::Result<i32> {
    Err(super::NotBuilt("inspect").into())
}
