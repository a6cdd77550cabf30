//! [`Mirror`]: the checkpoint's second copy, one file per claim in
//! `<state-dir>/checkpoint.mirror/`, written after every change of the redb file and
//! checked against it at open.
//!
//! Each file holds exactly the value the redb table holds (`sha256(json) ‖ json`), so
//! one decoder checks both copies, and the two copies share no code below that: a
//! page of redb that goes bad loses nothing the mirror does not still have, and a
//! mirror file that goes bad costs one claim's second copy, which the redb file
//! rewrites. A file is written whole or not at all (a temporary file, `fsync`, rename,
//! `fsync` of the directory), so a crash leaves the old record or the new one.
//!
//! File names are the claim UIDs when they are plain (`[A-Za-z0-9_.-]`, not starting
//! with a dot), otherwise `x` and the UID's bytes in hex; both end in `.claim`. A file
//! found damaged is renamed to `<name>.corrupt-<unix seconds>` and never read again.
//!
//! This file owns the directory and its files, nothing else: which copy wins and what
//! is rewritten is decided in [`super`].

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

/// Name of the mirror directory inside `--state-dir`.
pub const MIRROR_DIR: &str = "checkpoint.mirror";
const SUFFIX: &str = ".claim";
const TMP_SUFFIX: &str = ".tmp";
/// The number of writes the mirror has seen, with a check of its own.
const GENERATION_FILE: &str = "generation";

/// The directory of per-claim files.
#[derive(Debug, Clone)]
pub struct Mirror {
    dir: PathBuf,
}

/// What [`Mirror::read_all`] found.
#[derive(Debug, Default)]
pub struct MirrorContents {
    /// Claim UID → the file's bytes, for every file whose name decodes to a UID.
    pub records: BTreeMap<String, Vec<u8>>,
    /// Files whose name is not a mirror record name (left alone).
    pub foreign: Vec<PathBuf>,
}

impl Mirror {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(MIRROR_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of claim `uid`.
    pub fn file_of(&self, uid: &str) -> PathBuf {
        self.dir.join(file_name(uid))
    }

    /// Writes claim `uid`'s record durably (replacing the old one whole).
    pub fn write(&self, uid: &str, value: &[u8]) -> std::io::Result<()> {
        self.replace(&self.file_of(uid), value)
    }

    /// The generation last written; 0 when there is none or it does not check out
    /// (then the redb file's copy is taken as the newer one).
    pub fn generation(&self) -> u64 {
        std::fs::read_to_string(self.dir.join(GENERATION_FILE))
            .ok()
            .and_then(|text| parse_generation(&text))
            .unwrap_or(0)
    }

    /// Records that the mirror has seen `generation` writes.
    pub fn write_generation(&self, generation: u64) -> std::io::Result<()> {
        self.replace(
            &self.dir.join(GENERATION_FILE),
            format_generation(generation).as_bytes(),
        )
    }

    fn replace(&self, path: &Path, value: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = path.to_path_buf();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(value)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Removes claim `uid`'s record durably; a missing record is not an error.
    pub fn remove(&self, uid: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.file_of(uid)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every record file's bytes by claim UID (unverified: the caller decodes them).
    /// A missing directory is an empty mirror. Temporary files of a write that was
    /// cut off are removed.
    pub fn read_all(&self) -> std::io::Result<MirrorContents> {
        let mut out = MirrorContents::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                out.foreign.push(path);
                continue;
            };
            if name.ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match uid_of(&name) {
                Some(uid) => {
                    out.records.insert(uid, std::fs::read(&path)?);
                }
                None => out.foreign.push(path),
            }
        }
        Ok(out)
    }

    /// Renames claim `uid`'s damaged record aside; returns where it went.
    pub fn quarantine(&self, uid: &str) -> std::io::Result<PathBuf> {
        let path = self.file_of(uid);
        let aside = super::corrupt_name(&path);
        std::fs::rename(&path, &aside)?;
        sync_dir(&self.dir)?;
        Ok(aside)
    }
}

/// `<n> <first 16 hex digits of sha256(n)>`: a flipped digit is caught.
fn format_generation(n: u64) -> String {
    format!("{n} {}\n", generation_check(n))
}

fn generation_check(n: u64) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(n.to_string().as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_generation(text: &str) -> Option<u64> {
    let (n, check) = text.trim().split_once(' ')?;
    let n: u64 = n.parse().ok()?;
    (generation_check(n) == check).then_some(n)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn plain(uid: &str) -> bool {
    !uid.is_empty()
        && !uid.starts_with('.')
        && !uid.starts_with('x')
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The file name of claim `uid`'s record.
pub fn file_name(uid: &str) -> String {
    if plain(uid) {
        format!("{uid}{SUFFIX}")
    } else {
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}{SUFFIX}")
    }
}

/// The claim UID a record file name stands for; `None` for any other file.
pub fn uid_of(name: &str) -> Option<String> {
    let stem = name.strip_suffix(SUFFIX)?;
    if let Some(hex) = stem.strip_prefix('x') {
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        return String::from_utf8(bytes?).ok();
    }
    plain(stem).then(|| stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_for_plain_and_odd_uids() {
        for uid in [
            "0b3c1a2e-5f7d-4c1e-9a55-1234567890ab",
            "uid-1",
            "../etc/passwd",
            "x-starts-with-x",
            ".hidden",
            "ünïcode",
            "a/b",
        ] {
            let name = file_name(uid);
            assert!(!name.contains('/'), "{name}");
            assert!(!name.starts_with('.'), "{name}");
            assert_eq!(uid_of(&name).as_deref(), Some(uid), "{name}");
        }
        assert_eq!(file_name("uid-1"), "uid-1.claim");
        assert_eq!(uid_of("uid-1.claim.corrupt-17"), None);
        assert_eq!(uid_of("uid-1.claim.tmp"), None);
        assert_eq!(uid_of("xzz.claim"), None);
    }

    #[test]
    fn the_generation_round_trips_and_a_damaged_one_reads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new(dir.path());
        assert_eq!(m.generation(), 0);
        m.write_generation(41).unwrap();
        m.write_generation(42).unwrap();
        assert_eq!(m.generation(), 42);
        assert!(uid_of(GENERATION_FILE).is_none(), "not a record");
        let text = std::fs::read_to_string(m.dir().join(GENERATION_FILE)).unwrap();
        std::fs::write(m.dir().join(GENERATION_FILE), text.replacen("42", "92", 1)).unwrap();
        assert_eq!(m.generation(), 0);
        assert_eq!(parse_generation("7"), None);
    }

    #[test]
    fn write_replaces_whole_remove_is_idempotent_and_read_skips_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new(dir.path());
        assert!(m.read_all().unwrap().records.is_empty(), "no directory yet");
        m.write("a", b"first, longer value").unwrap();
        m.write("a", b"second").unwrap();
        m.write("../b", b"odd").unwrap();
        // A write cut off before its rename leaves a temporary file: ignored, removed.
        std::fs::write(m.dir().join("c.claim.tmp"), b"half").unwrap();
        std::fs::write(m.dir().join("README"), b"not ours").unwrap();
        let got = m.read_all().unwrap();
        assert_eq!(got.records.len(), 2);
        assert_eq!(got.records["a"], b"second");
        assert_eq!(got.records["../b"], b"odd");
        assert_eq!(got.foreign, vec![m.dir().join("README")]);
        assert!(!m.dir().join("c.claim.tmp").exists());
        m.remove("a").unwrap();
        m.remove("a").unwrap();
        let aside = m.quarantine("../b").unwrap();
        assert!(aside.exists());
        assert!(m.read_all().unwrap().records.is_empty());
    }
}
