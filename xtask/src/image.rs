//! The driver's container image, built without a container engine or a base image:
//! the release `netclaim` binary (with the eBPF object embedded by `driver/build.rs`)
//! at `/usr/local/bin/netclaim`, exactly the shared libraries the dynamic loader maps
//! for it (read from `ldd`, each at the path the loader looks for it), the loader
//! itself at the binary's `PT_INTERP` path, minimal `/etc/passwd` and `/etc/group`,
//! and Debian's CA bundle (`ca-certificates`): the Kubernetes client (kube with rustls
//! and the platform's roots) refuses to start when it finds no system CA certificate,
//! even when the kubeconfig or in-cluster config brings the cluster's own CA (seen in
//! `tests/tests/daemonset.rs`: the first image without it failed there).
//!
//! The archive is written by [`crate::oci`], so the digest is a function of those
//! files only: the same binary and libraries give the same digest on any machine.
//! `deploy/Dockerfile` is the equivalent for users with a Docker engine (same binary
//! path, entrypoint, command and user).
//!
//! The image runs as root (uid 0): the driver needs capabilities (CAP_NET_ADMIN,
//! CAP_SYS_ADMIN, CAP_BPF, …) and Kubernetes cannot give a non-root container
//! capabilities without file capabilities on the binary, which an OCI layer built
//! here does not carry. The pod spec (`deploy/netclaim.yaml`) limits what root may do.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::oci;

/// Where the binary goes in the image (the Dockerfile's path too).
pub const BINARY_PATH: &str = "/usr/local/bin/netclaim";
/// netclaim's CNI plugin, which `netclaim install-cni` (the DaemonSet's init container)
/// copies into the node's CNI bin directory.
pub const CNI_PLUGIN_PATH: &str = "/usr/local/bin/netclaim-cni";
/// The default repository; the tag is the workspace version.
pub const REPOSITORY: &str = "ghcr.io/netclaim/netclaim";
/// Debian's CA bundle (package ca-certificates), where rustls-native-certs looks.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The default archive, relative to the repository root.
pub const DEFAULT_OUT: &str = "target/image/netclaim-oci.tar";

/// One shared object the loader maps: where the image has it and where it is read
/// from on the build machine (the same path; kept apart for tests and for symlinks,
/// which are followed: the image holds regular files only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedObject {
    pub image_path: String,
    pub source: PathBuf,
}

/// Parses `ldd` output into the objects the loader maps, the loader included.
/// `linux-vdso.so.1` is the kernel's and is skipped; a library `ldd` cannot find is
/// an error (the image would not start).
pub fn parse_ldd(text: &str) -> Result<Vec<SharedObject>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("linux-vdso.so") || line.starts_with("linux-gate.so")
        {
            continue;
        }
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("ldd line {}: {} is not found", n + 1, name.trim());
                }
                target.split_whitespace().next().unwrap_or("")
            }
            // `/lib64/ld-linux-x86-64.so.2 (0x…)`: the loader.
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if !path.starts_with('/') {
            bail!("ldd line {}: {line:?} names no absolute path", n + 1);
        }
        out.push(SharedObject {
            image_path: path.to_string(),
            source: PathBuf::from(path),
        });
    }
    if out.is_empty() {
        bail!("ldd listed no shared objects (a static binary needs none: build it dynamically or adapt the image)");
    }
    Ok(out)
}

/// The program interpreter (`PT_INTERP`) of an ELF binary, from `readelf -l`.
pub fn parse_interpreter(readelf: &str) -> Option<String> {
    readelf.lines().find_map(|l| {
        l.split_once("[Requesting program interpreter: ")
            .and_then(|(_, rest)| rest.strip_suffix(']'))
            .map(str::to_string)
    })
}

/// `/etc/passwd` and `/etc/group`: root only (the driver's user) and nobody.
fn account_files() -> Vec<oci::Entry> {
    vec![
        oci::Entry {
            path: "/etc/passwd".into(),
            data: b"root:x:0:0:root:/:/usr/local/bin/netclaim\nnobody:x:65534:65534:nobody:/nonexistent:/usr/local/bin/netclaim\n".to_vec(),
            mode: 0o644,
        },
        oci::Entry {
            path: "/etc/group".into(),
            data: b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            mode: 0o644,
        },
    ]
}

/// What runs: the Dockerfile's ENTRYPOINT and CMD, as root.
pub fn run_config(version: &str) -> oci::RunConfig {
    oci::RunConfig {
        entrypoint: vec![BINARY_PATH.into()],
        cmd: vec!["run".into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        user: "0:0".into(),
        labels: BTreeMap::from([
            (
                "org.opencontainers.image.title".to_string(),
                "netclaim".to_string(),
            ),
            (
                "org.opencontainers.image.version".to_string(),
                version.to_string(),
            ),
            (
                "org.opencontainers.image.description".to_string(),
                "netclaim DRA network driver (binary and the libraries it loads, no base image)"
                    .to_string(),
            ),
        ]),
    }
}

/// The image's files for `binary`, the objects it loads and the CA bundle at `ca`.
pub fn entries(
    binary: &Path,
    cni_plugin: &Path,
    objects: &[SharedObject],
    ca: &Path,
) -> Result<Vec<oci::Entry>> {
    let mut entries = vec![
        oci::Entry::from_file(BINARY_PATH, binary, 0o755)?,
        oci::Entry::from_file(CNI_PLUGIN_PATH, cni_plugin, 0o755)?,
        oci::Entry::from_file(CA_BUNDLE, ca, 0o644)
            .context("the CA bundle (Debian package ca-certificates)")?,
    ];
    for o in objects {
        entries.push(oci::Entry::from_file(&o.image_path, &o.source, 0o755)?);
    }
    entries.extend(account_files());
    Ok(entries)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The shared objects `binary` loads, the loader checked against its `PT_INTERP`.
pub fn shared_objects(binary: &Path) -> Result<Vec<SharedObject>> {
    let objects = parse_ldd(&output(Command::new("ldd").arg(binary))?)
        .with_context(|| format!("ldd {}", binary.display()))?;
    let interp = parse_interpreter(&output(Command::new("readelf").arg("-l").arg(binary))?)
        .with_context(|| format!("{} has no program interpreter", binary.display()))?;
    if !objects.iter().any(|o| o.image_path == interp) {
        bail!("ldd did not list the program interpreter {interp}");
    }
    Ok(objects)
}

/// Image name for the workspace version unless `tag` names one.
pub fn image_name(tag: Option<&str>, version: &str) -> String {
    match tag {
        Some(t) if t.contains(':') => t.to_string(),
        Some(t) => format!("{REPOSITORY}:{t}"),
        None => format!("{REPOSITORY}:{version}"),
    }
}

/// `cargo xtask image`: build-ebpf, the release driver, then the archive.
pub fn build(root: &Path, out: Option<PathBuf>, tag: Option<&str>) -> Result<()> {
    let started = Instant::now();
    crate::build_ebpf(false)?;
    println!("[image] cargo build --release --locked -p netclaim");
    crate::run(Command::new(crate::host_cargo()).current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "netclaim",
        "--bin",
        "netclaim",
        "--bin",
        "netclaim-cni",
    ]))?;
    let binary = root.join("target/release/netclaim");
    let cni_plugin = root.join("target/release/netclaim-cni");
    let version = env!("CARGO_PKG_VERSION");
    let name = image_name(tag, version);
    let out = out.unwrap_or_else(|| root.join(DEFAULT_OUT));
    // The plugin loads a subset of the driver's libraries; both sets go in, once.
    let mut objects = shared_objects(&binary)?;
    for o in shared_objects(&cni_plugin)? {
        if !objects.iter().any(|known| known.image_path == o.image_path) {
            objects.push(o);
        }
    }
    let built = oci::write_archive(
        &out,
        &name,
        &entries(&binary, &cni_plugin, &objects, Path::new(CA_BUNDLE))?,
        &run_config(version),
    )?;
    println!(
        "[image] {name}\n[image]   archive  {} ({:.1} MiB, layer {:.1} MiB)\n[image]   digest   {}\n[image]   files    {BINARY_PATH}, {CNI_PLUGIN_PATH}, {}, {CA_BUNDLE}, /etc/passwd, /etc/group\n[image]   built in {:.1}s; load it with: ctr -n k8s.io images import {}",
        out.display(),
        built.archive_bytes as f64 / (1024.0 * 1024.0),
        built.layer_bytes as f64 / (1024.0 * 1024.0),
        built.manifest_digest,
        objects
            .iter()
            .map(|o| o.image_path.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64(),
        out.display(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffd5c3f1000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f4edc0ed000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f4edc00d000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4eda81e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f4edc120000)
";

    #[test]
    fn ldd_gives_the_libraries_and_the_loader() {
        let got: Vec<String> = parse_ldd(LDD)
            .unwrap()
            .into_iter()
            .map(|o| o.image_path)
            .collect();
        assert_eq!(
            got,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn a_missing_library_fails_the_build() {
        let text = format!("{LDD}\tlibssl.so.3 => not found\n");
        let err = parse_ldd(&text).unwrap_err().to_string();
        assert!(err.contains("libssl.so.3 is not found"), "{err}");
        assert!(parse_ldd("\tlinux-vdso.so.1 (0x1)\n").is_err());
    }

    #[test]
    fn the_interpreter_comes_from_readelf() {
        let text = "  INTERP         0x0000000000000318 0x0000000000000318 0x0000000000000318\n                 0x000000000000001c 0x000000000000001c  R      0x1\n      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]\n";
        assert_eq!(
            parse_interpreter(text).as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(parse_interpreter("no interp"), None);
    }

    #[test]
    fn names_default_to_the_workspace_version() {
        assert_eq!(image_name(None, "0.1.0"), "ghcr.io/netclaim/netclaim:0.1.0");
        assert_eq!(
            image_name(Some("dev"), "0.1.0"),
            "ghcr.io/netclaim/netclaim:dev"
        );
        assert_eq!(image_name(Some("r.example/x:1"), "0.1.0"), "r.example/x:1");
    }

    /// The same binary and libraries give the same archive bytes and digest; another
    /// binary gives another digest.
    #[test]
    fn the_image_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("netclaim");
        let plugin = dir.path().join("netclaim-cni");
        std::fs::write(&plugin, b"\x7fELF plugin").unwrap();
        let lib = dir.path().join("libc.so.6");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----").unwrap();
        std::fs::write(&bin, b"\x7fELF driver").unwrap();
        std::fs::write(&lib, b"\x7fELF libc").unwrap();
        let objects = [SharedObject {
            image_path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            source: lib,
        }];
        let build = |out: &str| {
            oci::write_archive(
                &dir.path().join(out),
                "r/netclaim:1",
                &entries(&bin, &plugin, &objects, &ca).unwrap(),
                &run_config("1"),
            )
            .unwrap()
        };
        let a = build("a.tar");
        let b = build("b.tar");
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(
            std::fs::read(dir.path().join("a.tar")).unwrap(),
            std::fs::read(dir.path().join("b.tar")).unwrap()
        );
        std::fs::write(&bin, b"\x7fELF driver v2").unwrap();
        assert_ne!(build("c.tar").manifest_digest, a.manifest_digest);
    }
}
