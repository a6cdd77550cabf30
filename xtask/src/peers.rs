//! The real peers of the test suite: containerd 2.3.4 (with its shim, `ctr` and
//! `crictl`) and the sandbox image its pods need.
//!
//! containerd comes from, in order: the directory named by `NETCLAIM_REAL_PEERS`, the
//! `real-peers/` directory of `../shared` beside the checkout, or a `containerd` already
//! on `PATH` whose version matches. The archive's binaries are checked against its
//! `SHA256SUMS` before they are installed under [`INSTALL_DIR`]. No registry is
//! reachable, so the sandbox image is built here: `tests/pause/pause.c`, compiled
//! static, in a one-layer OCI archive at `target/real-peers/pause-oci.tar`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::oci;

pub const CONTAINERD_VERSION: &str = "2.3.4";
const ARCHIVE: &str = "containerd-2.3.4-linux-amd64.tar.xz";
/// Where the binaries are installed; the tests look here first.
pub const INSTALL_DIR: &str = "/opt/netclaim/containerd-2.3.4/bin";
const BINARIES: &[&str] = &["containerd", "containerd-shim-runc-v2", "ctr", "crictl"];
/// The name the test containerd pins as its sandbox image.
pub const PAUSE_IMAGE: &str = "netclaim.test/pause:1";

fn installed_version_ok(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("v{CONTAINERD_VERSION}")))
        .unwrap_or(false)
}

fn installed() -> bool {
    let dir = Path::new(INSTALL_DIR);
    BINARIES.iter().all(|b| dir.join(b).exists()) && installed_version_ok(&dir.join("containerd"))
}

/// Where the archive is, if anywhere.
fn archive(repo_root: &Path) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("NETCLAIM_REAL_PEERS") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(parent) = repo_root.parent() {
        dirs.push(parent.join("shared/real-peers"));
    }
    dirs.into_iter()
        .map(|d| d.join(ARCHIVE))
        .find(|p| p.exists())
}

/// `SHA256SUMS` lines (`<hex>  <name>`) checked against the unpacked files.
fn verify_sums(bin_dir: &Path) -> Result<()> {
    let sums = std::fs::read_to_string(bin_dir.join("SHA256SUMS"))
        .context("the containerd archive has no bin/SHA256SUMS")?;
    for b in BINARIES {
        let want = sums
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(_, name)| name.trim().trim_start_matches('*').rsplit('/').next() == Some(b))
            .map(|(hex, _)| hex.to_string())
            .with_context(|| format!("SHA256SUMS has no line for {b}"))?;
        let got = format!("{:x}", Sha256::digest(std::fs::read(bin_dir.join(b))?));
        if got != want {
            bail!("{b}: checksum {got} does not match SHA256SUMS ({want})");
        }
    }
    Ok(())
}

/// Installs containerd; returns what was done, for setup's summary.
pub fn install_containerd(repo_root: &Path) -> Result<String> {
    if installed() {
        return Ok(format!(
            "present:   containerd {CONTAINERD_VERSION} ({INSTALL_DIR})"
        ));
    }
    if let Some(archive) = archive(repo_root) {
        let scratch = tempfile::tempdir()?;
        crate::run(
            Command::new("tar")
                .arg("-xJf")
                .arg(&archive)
                .arg("-C")
                .arg(scratch.path()),
        )?;
        let bin = scratch.path().join("bin");
        verify_sums(&bin)?;
        std::fs::create_dir_all(INSTALL_DIR)?;
        for b in BINARIES {
            let dest = Path::new(INSTALL_DIR).join(b);
            let tmp = dest.with_extension("new");
            std::fs::copy(bin.join(b), &tmp)?;
            std::fs::rename(&tmp, &dest)?;
        }
        if !installed() {
            bail!(
                "containerd from {} does not report v{CONTAINERD_VERSION}",
                archive.display()
            );
        }
        return Ok(format!(
            "installed: containerd {CONTAINERD_VERSION} from {} (checksums verified)",
            archive.display()
        ));
    }
    // A containerd on PATH of the right version is linked into place.
    let on_path = which("containerd").filter(|p| installed_version_ok(p));
    if let Some(p) = on_path {
        let dir = p.parent().context("containerd path")?;
        std::fs::create_dir_all(INSTALL_DIR)?;
        for b in BINARIES {
            let src = which(b)
                .or_else(|| Some(dir.join(b)).filter(|p| p.exists()))
                .with_context(|| format!("{b} is not on PATH beside {}", p.display()))?;
            let dest = Path::new(INSTALL_DIR).join(b);
            let _ = std::fs::remove_file(&dest);
            std::os::unix::fs::symlink(&src, &dest)?;
        }
        return Ok(format!(
            "installed: containerd {CONTAINERD_VERSION} linked from PATH ({})",
            p.display()
        ));
    }
    bail!(
        "containerd {CONTAINERD_VERSION} not found: put {ARCHIVE} in a directory named by \
         NETCLAIM_REAL_PEERS or in ../shared/real-peers, or containerd v{CONTAINERD_VERSION} on PATH"
    )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Builds the sandbox image archive when its source changed; returns the summary line.
pub fn build_pause_image(repo_root: &Path) -> Result<String> {
    let src = repo_root.join("tests/pause/pause.c");
    let out_dir = repo_root.join("target/real-peers");
    std::fs::create_dir_all(&out_dir)?;
    let archive = out_dir.join("pause-oci.tar");
    let stamp = out_dir.join("pause.c.built");
    let source = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    if archive.exists() && std::fs::read(&stamp).ok().as_deref() == Some(source.as_slice()) {
        return Ok(format!(
            "present:   sandbox image {PAUSE_IMAGE} ({})",
            archive.display()
        ));
    }
    let bin = out_dir.join("pause");
    crate::run(
        Command::new("cc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&bin)
            .arg(&src),
    )
    .context("compiling the sandbox image's pause program (needs a C compiler and libc6-dev)")?;
    let built = oci::write_archive(
        &archive,
        PAUSE_IMAGE,
        &[oci::Entry::from_file("/pause", &bin, 0o755)?],
        &oci::RunConfig {
            entrypoint: vec!["/pause".into()],
            ..Default::default()
        },
    )?;
    std::fs::write(&stamp, &source)?;
    Ok(format!(
        "installed: sandbox image {PAUSE_IMAGE} {} ({} bytes)",
        built.manifest_digest, built.archive_bytes
    ))
}
