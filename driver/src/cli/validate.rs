//! `netclaim validate`.

use clap::Args;

#[derive(Debug, Args)]
pub struct ValidateArgs {}

pub fn run(_args: ValidateArgs) -> anyhow::Result<i32> {
    Err(super::NotBuilt("validate").into())
}
