//! [`SmallFs`]: a tmpfs mounted for a test or a benchmark under its own temporary
//! directory, unmounted on drop. Chaos runs fill one to the last byte (a full disk
//! under the checkpoint); the benchmarks put the driver's state directory on one, as
//! the DaemonSet does (`/var/run/netclaim` is a tmpfs on a systemd node).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A small tmpfs mounted for a test, unmounted on drop.
pub struct SmallFs(PathBuf);

impl SmallFs {
    pub fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .with_context(|| format!("mounting a {size} tmpfs at {}", at.display()))?;
        Ok(SmallFs(at.to_path_buf()))
    }

    /// Fills the file system holding `dir` to the last byte with a file `name` in it;
    /// returns its path.
    pub fn fill(dir: &Path, name: &str) -> Result<PathBuf> {
        use std::io::Write;
        let filler = dir.join(name);
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        Ok(filler)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
