//! OCI image archives built without a registry or a container engine.
//!
//! An archive is the OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! in one tar file, which `ctr images import` and registries' push tools accept. Every
//! byte is a function of the inputs: entries are sorted, and timestamps, owners and
//! modes are fixed, so the same inputs give the same digest on every machine.
//! Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`), so a layer's
//! diff id and its digest are the same.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One file of a layer.
pub struct Entry {
    /// Absolute path inside the image (`/usr/local/bin/netclaim`).
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

impl Entry {
    /// A file read from the build machine.
    pub fn from_file(image_path: &str, source: &Path, mode: u32) -> Result<Self> {
        let data =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        Ok(Self {
            path: image_path.to_string(),
            data,
            mode,
        })
    }
}

/// What the image runs, as the OCI image config says it.
#[derive(Default)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `uid[:gid]`; empty means root.
    pub user: String,
    pub labels: BTreeMap<String, String>,
}

/// A built archive.
pub struct Built {
    /// `sha256:…` of the image manifest: what a registry calls the image's digest.
    pub manifest_digest: String,
    /// Size of the archive file in bytes.
    pub archive_bytes: u64,
    /// Size of the layer (the image's content) in bytes.
    pub layer_bytes: u64,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A deterministic tar header for `path`.
fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .with_context(|| format!("tar path {path}"))?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    Ok(h)
}

/// The layer tar: parent directories first, then files, all sorted.
pub fn layer(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut dirs = std::collections::BTreeSet::new();
    let mut files = BTreeMap::new();
    for e in entries {
        let rel = e
            .path
            .strip_prefix('/')
            .filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".." || c.is_empty()))
            .with_context(|| format!("image path {:?} must be absolute and normal", e.path))?;
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", p.display()));
            parent = p.parent();
        }
        if files.insert(rel.to_string(), e).is_some() {
            bail!("image path {} given twice", e.path);
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    for d in &dirs {
        let h = header(d, 0, 0o755, tar::EntryType::Directory)?;
        tar.append(&h, std::io::empty())?;
    }
    for (rel, e) in &files {
        let h = header(rel, e.data.len() as u64, e.mode, tar::EntryType::Regular)?;
        tar.append(&h, e.data.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

/// Writes the archive for image `name` (`registry/repo:tag`) with one layer.
pub fn write_archive(out: &Path, name: &str, entries: &[Entry], run: &RunConfig) -> Result<Built> {
    let tag = name
        .rsplit_once(':')
        .filter(|(repo, _)| !repo.contains('/') || !repo.ends_with('/'))
        .map(|(_, t)| t)
        .with_context(|| format!("image name {name:?} needs a tag (repo:tag)"))?;
    let layer = layer(entries)?;
    let layer_digest = sha256(&layer);
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let c = &mut config["config"];
    if !run.entrypoint.is_empty() {
        c["Entrypoint"] = json!(run.entrypoint);
    }
    if !run.cmd.is_empty() {
        c["Cmd"] = json!(run.cmd);
    }
    if !run.env.is_empty() {
        c["Env"] = json!(run.env);
    }
    if !run.user.is_empty() {
        c["User"] = json!(run.user);
    }
    if !run.labels.is_empty() {
        c["Labels"] = json!(run.labels);
    }
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config), "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer.len(),
        }],
    }))?;
    let manifest_digest = sha256(&manifest);
    let index: Value = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                // containerd names the imported image after this one…
                "io.containerd.image.name": name,
                // …and OCI tools after this one.
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), serde_json::to_vec(&index)?),
    ];
    for blob in [&layer, &config, &manifest] {
        let d = sha256(blob);
        let hex = d.trim_start_matches("sha256:");
        files.push((format!("blobs/sha256/{hex}"), blob.to_vec()));
    }
    files.sort();
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append(
            &header(dir, 0, 0o755, tar::EntryType::Directory)?,
            std::io::empty(),
        )?;
    }
    for (path, data) in &files {
        let h = header(path, data.len() as u64, 0o644, tar::EntryType::Regular)?;
        tar.append(&h, data.as_slice())?;
    }
    let archive = tar.into_inner()?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a reader never sees half an archive.
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &archive).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)?;
    Ok(Built {
        manifest_digest,
        archive_bytes: archive.len() as u64,
        layer_bytes: layer.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                path: "/usr/local/bin/x".into(),
                data: b"binary".to_vec(),
                mode: 0o755,
            },
            Entry {
                path: "/etc/passwd".into(),
                data: b"root:x:0:0::/:/x\n".to_vec(),
                mode: 0o644,
            },
        ]
    }

    #[test]
    fn the_same_inputs_give_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunConfig {
            entrypoint: vec!["/usr/local/bin/x".into()],
            ..Default::default()
        };
        let a = write_archive(&dir.path().join("a.tar"), "r/x:1", &entries(), &run).unwrap();
        let mut reversed = entries();
        reversed.reverse();
        let b = write_archive(&dir.path().join("b.tar"), "r/x:1", &reversed, &run).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(
            std::fs::read(dir.path().join("a.tar")).unwrap(),
            std::fs::read(dir.path().join("b.tar")).unwrap()
        );
        let other = RunConfig {
            entrypoint: vec!["/other".into()],
            ..Default::default()
        };
        let c = write_archive(&dir.path().join("c.tar"), "r/x:1", &entries(), &other).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest);
    }

    #[test]
    fn the_layer_lists_parents_before_files() {
        let tar = layer(&entries()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "etc/passwd",
                "usr/local/bin/x"
            ]
        );
    }

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in ["relative", "/a/../b", "/", "/a//b"] {
            let e = Entry {
                path: bad.into(),
                data: vec![],
                mode: 0o644,
            };
            assert!(layer(&[e]).is_err(), "{bad} accepted");
        }
    }
}
