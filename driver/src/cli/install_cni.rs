//! `netclaim install-cni --bin-dir DIR`: puts `netclaim-cni` into the node's CNI bin
//! directory as `netclaim` (the name a CNI configuration's `"type": "netclaim"` finds),
//! for the DaemonSet's init container. The copy is written beside the target and
//! renamed over it, so a runtime executing the plugin meanwhile runs either the old or
//! the new one, never a half-written file; an identical plugin is left alone.
//!
//! The node's CNI configuration is not touched: chaining the plugin is the cluster
//! operator's choice (see the README).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// The node's CNI bin directory (mounted from the host).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: PathBuf,
    /// The plugin to install [default: `netclaim-cni` beside this binary].
    #[arg(long, value_name = "FILE")]
    pub plugin: Option<PathBuf>,
}

/// The name the plugin has in the CNI bin directory.
pub const INSTALLED_NAME: &str = "netclaim";

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    Copied(PathBuf),
    AlreadyThere(PathBuf),
}

/// Copies `plugin` to `bin_dir/netclaim` (mode 0755) unless the same bytes are there.
pub fn install(plugin: &Path, bin_dir: &Path) -> anyhow::Result<Installed> {
    let bytes = std::fs::read(plugin)
        .with_context(|| format!("reading the plugin {}", plugin.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an executable (no ELF header)", plugin.display());
    }
    if !bin_dir.is_dir() {
        bail!(
            "--bin-dir {}: not a directory (mount the node's CNI bin directory there)",
            bin_dir.display()
        );
    }
    let target = bin_dir.join(INSTALLED_NAME);
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(Installed::AlreadyThere(target));
    }
    let tmp = bin_dir.join(format!(".{INSTALLED_NAME}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    Ok(Installed::Copied(target))
}

pub fn run(args: InstallCniArgs) -> anyhow::Result<i32> {
    let plugin = match args.plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("netclaim-cni"),
    };
    match install(&plugin, &args.bin_dir)? {
        Installed::Copied(to) => println!("installed {} as {}", plugin.display(), to.display()),
        Installed::AlreadyThere(to) => println!("{} is already this plugin", to.display()),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_atomically_and_refuses_what_is_not_a_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("netclaim-cni");
        std::fs::write(&plugin, b"\x7fELF v1").unwrap();
        let bin = dir.path().join("bin");
        assert!(install(&plugin, &bin)
            .unwrap_err()
            .to_string()
            .contains("--bin-dir"));
        std::fs::create_dir(&bin).unwrap();
        let target = bin.join("netclaim");
        assert_eq!(
            install(&plugin, &bin).unwrap(),
            Installed::Copied(target.clone())
        );
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            install(&plugin, &bin).unwrap(),
            Installed::AlreadyThere(target.clone())
        );
        std::fs::write(&plugin, b"\x7fELF v2").unwrap();
        assert_eq!(
            install(&plugin, &bin).unwrap(),
            Installed::Copied(target.clone())
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"\x7fELF v2");
        // Nothing but the plugin is left in the directory.
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);
        std::fs::write(&plugin, b"#!/bin/sh\n").unwrap();
        assert!(install(&plugin, &bin)
            .unwrap_err()
            .to_string()
            .contains("ELF"));
        assert_eq!(std::fs::read(&target).unwrap(), b"\x7fELF v2");
    }
}
