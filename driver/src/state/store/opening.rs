//! Opening the checkpoint ([`StateStore::open`]): both copies read and checked, the
//! damaged or behind one repaired from the other (a corrupt redb file moved aside and
//! rebuilt from the mirror), the journal's records newer than the copy it settled on
//! replayed, the pod index rebuilt. See the store's module docs for what counts as
//! damaged and which copy wins.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::entry::decode;
use super::journal::{self, Journal};
use super::mirror::Mirror;
use super::{
    generation_of, Recovery, StateError, StateStore, Writer, CHECKPOINT_FILE, CLAIMS, GENERATION,
    META, POD_CLAIMS,
};

impl StateStore {
    /// Opens (or creates) `<state_dir>/checkpoint.redb` and its mirror, repairing
    /// whichever copy is damaged or behind from the other; see the module docs.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(CHECKPOINT_FILE);
        let mirror = Mirror::new(state_dir);
        let copy = read_mirror(&mirror);
        // A missing or empty file holds nothing to lose: redb makes a new one.
        let fresh = std::fs::metadata(&path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let mut recovery = Recovery::default();
        let (db, moved_aside) = match open_and_verify(&path) {
            Ok(db) => {
                let behind = generation_of(&db).map_err(|e| StateError::Database {
                    path: path.clone(),
                    message: e.to_string(),
                })? < copy.generation;
                if (fresh && !copy.good.is_empty()) || behind {
                    let why = if behind {
                        format!(
                            "its generation is behind the mirror's ({})",
                            copy.generation
                        )
                    } else {
                        "it is missing or empty".to_string()
                    };
                    let old = raw_claims(&db).map_err(|e| StateError::Database {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                    let aside = if fresh {
                        None
                    } else {
                        Some(move_aside(&path)?)
                    };
                    drop(db);
                    let db = reopen_empty(&path)?;
                    recovery.from_mirror =
                        import(&db, &copy, Some(&old)).map_err(|e| StateError::Database {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                    tracing::error!(
                        checkpoint = %path.display(),
                        moved_to = ?aside.as_ref().map(|a| a.display().to_string()),
                        recovered = recovery.from_mirror,
                        "checkpoint file not usable ({why}); rebuilt it from the mirror"
                    );
                    (db, aside)
                } else {
                    (db, None)
                }
            }
            Err(Problem::Fatal(err)) => return Err(err),
            Err(Problem::Corrupt(reason)) => {
                let aside = move_aside(&path)?;
                let db = reopen_empty(&path)?;
                recovery.from_mirror =
                    import(&db, &copy, None).map_err(|e| StateError::Database {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                recovery.lost = copy.bad.keys().cloned().collect();
                tracing::error!(
                    checkpoint = %path.display(),
                    moved_to = %aside.display(),
                    mirror = %mirror.dir().display(),
                    recovered = recovery.from_mirror,
                    lost = ?recovery.lost,
                    "checkpoint is corrupt ({reason}); moved it aside and rebuilt it from the mirror: {} claim(s) recovered, {} lost (both copies damaged)",
                    recovery.from_mirror,
                    recovery.lost.len()
                );
                (db, Some(aside))
            }
        };
        // Changes made after the last catch-up are in the journal only.
        let state_dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        recovery.from_journal =
            replay_journal(&db, &state_dir, &[]).map_err(|e| StateError::Database {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let journal = match Journal::open(&state_dir) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!(state_dir = %state_dir.display(), error = %e,
                    "checkpoint journal cannot be opened; every change is written to both copies before it counts (slower pod hooks)");
                None
            }
        };
        let store = Self {
            path,
            db: RwLock::new(Some(db)),
            reopen: Default::default(),
            moved_aside,
            mirror,
            mirror_stale: Default::default(),
            writer: std::sync::Mutex::new(Writer {
                journal,
                dirty: BTreeSet::new(),
                last_change: None,
            }),
            owed: Default::default(),
            owed_signal: Default::default(),
            recovery,
            decoded: Default::default(),
        };
        let mut store = store;
        match store.sync_mirror() {
            Ok(synced) => {
                if !synced.mirror_quarantined.is_empty() {
                    tracing::error!(
                        mirror = %store.mirror.dir().display(),
                        moved_to = ?synced.mirror_quarantined,
                        "checkpoint mirror records damaged; moved them aside and rewrote them from the checkpoint"
                    );
                } else if synced.mirror_rewritten + synced.mirror_removed > 0 {
                    tracing::warn!(
                        mirror = %store.mirror.dir().display(),
                        rewritten = synced.mirror_rewritten,
                        removed = synced.mirror_removed,
                        "checkpoint mirror brought in step (a write was cut off)"
                    );
                }
                store.recovery.mirror_rewritten = synced.mirror_rewritten;
                store.recovery.mirror_removed = synced.mirror_removed;
                store.recovery.mirror_quarantined = synced.mirror_quarantined;
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint mirror not brought in step; retried at the next write");
                store
                    .mirror_stale
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        Ok(store)
    }
}

/// Writes the journal's records, and the `owed` ones not written to it yet (a reopen
/// after an I/O error), newer than `db`'s generation into `db` (durably) and returns
/// how many claims they changed. Bytes of the journal that do not read back
/// (a write cut off by a crash, or damage) are logged and skipped.
pub(super) fn replay_journal(
    db: &Database,
    state_dir: &Path,
    owed: &[journal::Entry],
) -> Result<usize, redb::Error> {
    let (mut entries, trailing) = match journal::read_both(state_dir) {
        Ok(read) => read,
        Err(e) => {
            tracing::error!(state_dir = %state_dir.display(), error = %e,
                "checkpoint journal unreadable: changes after the last catch-up are not recovered");
            return Ok(0);
        }
    };
    if trailing.iter().any(|&t| t > 0) {
        tracing::warn!(
            state_dir = %state_dir.display(),
            unreadable_bytes = ?trailing,
            "checkpoint journal ends in bytes that do not read back (a write cut off, or damage); the records before them count"
        );
    }
    entries.extend(owed.iter().cloned());
    entries.sort_by_key(|e| e.generation);
    entries.dedup_by_key(|e| e.generation);
    let base = generation_of(db)?;
    let newer: Vec<journal::Entry> = entries
        .into_iter()
        .filter(|e| e.generation > base)
        .collect();
    let Some(first) = newer.first() else {
        return Ok(0);
    };
    if first.generation != base + 1 {
        tracing::warn!(
            generation = base,
            journal_from = first.generation,
            "checkpoint journal starts after the checkpoint's generation: changes between them are lost"
        );
    }
    let mut claims = BTreeSet::new();
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(CLAIMS)?;
        let mut last = base;
        for e in &newer {
            if let Err(err) = decode(&e.uid, &e.value) {
                tracing::error!(claim_uid = %e.uid, generation = e.generation, error = %err,
                    "checkpoint journal record does not decode; skipped");
                continue;
            }
            table.insert(e.uid.as_str(), e.value.as_slice())?;
            claims.insert(e.uid.clone());
            last = e.generation;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(GENERATION, last)?;
    }
    txn.commit()?;
    rebuild_pod_index(db)?;
    tracing::info!(
        records = newer.len(),
        claims = claims.len(),
        from_generation = base,
        "checkpoint journal replayed (changes made after the last catch-up)"
    );
    Ok(claims.len())
}

/// The mirror as read at open: decodable records, damaged ones, its generation.
struct MirrorCopy {
    good: BTreeMap<String, Vec<u8>>,
    bad: BTreeMap<String, Vec<u8>>,
    generation: u64,
}

/// Reads and checks every mirror record; an unreadable mirror is an empty one
/// (logged): the redb file is then the only copy and the mirror is rewritten from it.
fn read_mirror(mirror: &Mirror) -> MirrorCopy {
    let mut copy = MirrorCopy {
        good: BTreeMap::new(),
        bad: BTreeMap::new(),
        generation: mirror.generation(),
    };
    match mirror.read_all() {
        Ok(contents) => {
            for (uid, value) in contents.records {
                if decode(&uid, &value).is_ok() {
                    copy.good.insert(uid, value);
                } else {
                    copy.bad.insert(uid, value);
                }
            }
        }
        Err(e) => {
            tracing::error!(mirror = %mirror.dir().display(), error = %e, "checkpoint mirror unreadable");
            copy.generation = 0;
        }
    }
    copy
}

/// Renames a damaged checkpoint file aside; returns where it went.
fn move_aside(path: &Path) -> Result<PathBuf, StateError> {
    let aside = corrupt_name(path);
    std::fs::rename(path, &aside).map_err(|source| StateError::MoveAside {
        path: path.to_owned(),
        source,
    })?;
    Ok(aside)
}

/// A new, empty redb file at `path` (the old one is gone or moved aside).
fn reopen_empty(path: &Path) -> Result<Database, StateError> {
    if std::fs::metadata(path).is_ok() {
        // An empty file redb made or found: start it over.
        std::fs::remove_file(path).map_err(|source| StateError::MoveAside {
            path: path.to_owned(),
            source,
        })?;
    }
    match open_and_verify(path) {
        Ok(db) => Ok(db),
        Err(Problem::Fatal(err)) => Err(err),
        Err(Problem::Corrupt(message)) => Err(StateError::Database {
            path: path.to_owned(),
            message,
        }),
    }
}

/// Writes the mirror's good records into an empty redb file, with the mirror's
/// generation and the pod index; `old` adds records the mirror has damaged. Returns
/// how many claims were written.
fn import(
    db: &Database,
    copy: &MirrorCopy,
    old: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<usize, redb::Error> {
    let txn = db.begin_write()?;
    let mut n = 0;
    {
        let mut claims = txn.open_table(CLAIMS)?;
        for (uid, value) in &copy.good {
            claims.insert(uid.as_str(), value.as_slice())?;
            n += 1;
        }
        for (uid, value) in old.into_iter().flatten() {
            if copy.bad.contains_key(uid) {
                claims.insert(uid.as_str(), value.as_slice())?;
                n += 1;
            }
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(GENERATION, copy.generation)?;
    }
    txn.commit()?;
    rebuild_pod_index(db)?;
    Ok(n)
}

/// Every claim's stored value, undecoded.
pub(super) fn raw_claims(db: &Database) -> Result<BTreeMap<String, Vec<u8>>, redb::Error> {
    let txn = db.begin_read()?;
    let mut out = BTreeMap::new();
    match txn.open_table(CLAIMS) {
        Ok(table) => {
            for entry in table.iter()? {
                let (k, v) = entry?;
                out.insert(k.value().to_string(), v.value().to_vec());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(out)
}

enum Problem {
    /// The file is damaged: move it aside and start over.
    Corrupt(String),
    /// Something else (permissions, already open): report to the caller.
    Fatal(StateError),
}

fn open_and_verify(path: &Path) -> Result<Database, Problem> {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Database, Problem> {
        let mut db = Database::create(path).map_err(|err| classify(path, err.into()))?;
        // redb checks page checksums only when it repairs a file that was not closed
        // cleanly: in a file closed cleanly, a damaged page or an old page where a
        // newer one was is read as it is (claims come back stale, the generation says
        // nothing). Check every page. Ok(false): repaired by rolling back a commit,
        // which the generation check against the mirror sees.
        db.check_integrity()
            .map_err(|err| classify(path, err.into()))?;
        verify(&db).map_err(|err| match err {
            VerifyError::Redb(err) => classify(path, err),
            VerifyError::Entry(message) => Problem::Corrupt(message),
        })?;
        rebuild_pod_index(&db).map_err(|err| classify(path, err))?;
        Ok(db)
    }));
    match result {
        Ok(result) => result,
        Err(_) => Err(Problem::Corrupt(
            "the database library panicked reading it".into(),
        )),
    }
}

fn classify(path: &Path, err: redb::Error) -> Problem {
    match err {
        redb::Error::Corrupted(message) => Problem::Corrupt(message),
        redb::Error::UpgradeRequired(version) => {
            Problem::Corrupt(format!("unknown file format version {version}"))
        }
        redb::Error::Io(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            Problem::Corrupt(err.to_string())
        }
        redb::Error::Io(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            Problem::Corrupt(format!("truncated: {err}"))
        }
        other => Problem::Fatal(StateError::Database {
            path: path.to_owned(),
            message: other.to_string(),
        }),
    }
}

enum VerifyError {
    Redb(redb::Error),
    Entry(String),
}

impl<E: Into<redb::Error>> From<E> for VerifyError {
    fn from(err: E) -> Self {
        Self::Redb(err.into())
    }
}

/// Reads every entry once so damage is found at open, not in the middle of a prepare.
/// Writes the pod index afresh from the claims (at open; cheap, and it makes a
/// checkpoint from before the index existed, or an index that went wrong, right again).
fn rebuild_pod_index(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let _ = txn.delete_table(POD_CLAIMS)?;
        let mut index = txn.open_table(POD_CLAIMS)?;
        let claims = txn.open_table(CLAIMS)?;
        for entry in claims.iter()? {
            let (key, value) = entry?;
            // verify() has decoded every entry already.
            if let Ok(plans) = decode(key.value(), value.value()) {
                let pods: BTreeSet<&str> = plans.plans.iter().map(|p| p.pod.uid.as_str()).collect();
                for pod in pods {
                    index.insert((pod, key.value()), ())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn verify(db: &Database) -> Result<(), VerifyError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(CLAIMS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    for entry in table.iter()? {
        let (key, value) = entry?;
        decode(key.value(), value.value()).map_err(|err| VerifyError::Entry(err.to_string()))?;
    }
    Ok(())
}

pub(super) fn corrupt_name(path: &Path) -> PathBuf {
    let secs = crate::unix_now();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let mut candidate = PathBuf::from(&name);
    let mut n = 1;
    while candidate.exists() {
        let mut next = name.clone();
        next.push(format!("-{n}"));
        candidate = PathBuf::from(next);
        n += 1;
    }
    candidate
}
