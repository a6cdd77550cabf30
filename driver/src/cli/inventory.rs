//! `netclaim inventory`.

use clap::Args;

#[derive(Debug, Args)]
pub struct InventoryArgs {}

pub fn run(_args: InventoryArgs) -> anyhow::Result<i32> {
    Err(super::NotBuilt("inventory").into())
}
