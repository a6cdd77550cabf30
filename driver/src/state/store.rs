//! [`StateStore`]: the checkpoint file of prepared claims (redb, one table keyed by
//! claim UID).
//!
//! Every value is `sha256(json) ‖ json` of a [`ClaimPlans`], so a flipped bit is caught
//! even where redb itself does not notice. Opening scans every entry; a file that redb
//! refuses, that panics redb, or that holds an entry whose checksum or JSON is wrong is
//! renamed to `<file>.corrupt-<unix seconds>`, reported with one error line, and the
//! store starts empty: the caller rebuilds what it can from the cluster. A corrupt
//! checkpoint never stops the driver.
//!
//! A second table indexes claims by the pods their plans name, so a pod hook reads its
//! own claims instead of the whole checkpoint ([`StateStore::plans_of_pod`]).
//!
//! After an I/O error (a full disk, a failing device) redb refuses every later call
//! until the database is reopened. The store then reopens it and retries the call once,
//! so a driver whose disk filled up works again as soon as there is room, without a
//! restart. The failed call itself still fails: nothing is recorded that was not
//! written.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

use super::plan::ClaimPlans;

/// File name of the checkpoint inside `--state-dir`.
pub const CHECKPOINT_FILE: &str = "checkpoint.redb";

const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
/// (pod UID, claim UID) for every plan: a pod hook reads only its own claims. Rebuilt
/// from `claims` at every open (so a checkpoint written before it existed works) and
/// kept in the same write transaction as every change to `claims`.
const POD_CLAIMS: TableDefinition<(&str, &str), ()> = TableDefinition::new("pod_claims");
const DIGEST_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("checkpoint {path}: cannot move the corrupt file aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint entry for claim UID {uid}: {message}")]
    Entry { uid: String, message: String },
    /// The claim (or the device in it) is no longer in the checkpoint: unprepared
    /// while a pod hook was working on it.
    #[error("claim UID {uid}: not in the checkpoint any more (unprepared meanwhile)")]
    Unprepared { uid: String },
    /// An earlier I/O error closed the database for every call until it is reopened.
    #[error("checkpoint {path}: an earlier I/O error left the database closed: {message}")]
    Closed { path: PathBuf, message: String },
}

/// The open checkpoint. Cheap to share behind an `Arc`; every call is one redb
/// transaction (durable on return).
pub struct StateStore {
    path: PathBuf,
    /// `None` only while it is being reopened after an I/O error.
    db: RwLock<Option<Database>>,
    /// Set by an I/O error: the next call reopens the database first.
    reopen: std::sync::atomic::AtomicBool,
    /// Where a corrupt checkpoint found at open was moved, if any.
    moved_aside: Option<PathBuf>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .field("moved_aside", &self.moved_aside)
            .finish()
    }
}

impl StateStore {
    /// Opens (or creates) `<state_dir>/checkpoint.redb`. A corrupt file is moved aside
    /// and an empty store is returned; see the module docs.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(CHECKPOINT_FILE);
        match open_and_verify(&path) {
            Ok(db) => Ok(Self {
                path,
                db: RwLock::new(Some(db)),
                reopen: Default::default(),
                moved_aside: None,
            }),
            Err(Problem::Fatal(err)) => Err(err),
            Err(Problem::Corrupt(reason)) => {
                let aside = corrupt_name(&path);
                std::fs::rename(&path, &aside).map_err(|source| StateError::MoveAside {
                    path: path.clone(),
                    source,
                })?;
                tracing::error!(
                    checkpoint = %path.display(),
                    moved_to = %aside.display(),
                    "checkpoint is corrupt ({reason}); moved it aside and starting with no prepared claims"
                );
                let db = match open_and_verify(&path) {
                    Ok(db) => db,
                    Err(Problem::Fatal(err)) => return Err(err),
                    Err(Problem::Corrupt(message)) => {
                        return Err(StateError::Database { path, message })
                    }
                };
                Ok(Self {
                    path,
                    db: RwLock::new(Some(db)),
                    reopen: Default::default(),
                    moved_aside: Some(aside),
                })
            }
        }
    }

    /// Where a corrupt checkpoint was moved when this store was opened.
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// Stores (replaces) the plans of one claim, keyed by `plans.claim.uid`.
    pub fn put(&self, plans: &ClaimPlans) -> Result<(), StateError> {
        let value = encode(plans)?;
        self.with_db(|db| self.put_in(db, plans, &value))
    }

    fn put_in(&self, db: &Database, plans: &ClaimPlans, value: &[u8]) -> Result<(), StateError> {
        let txn = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = txn.open_table(CLAIMS).map_err(|e| self.db_err(e))?;
            let old = table
                .insert(plans.claim.uid.as_str(), value)
                .map_err(|e| self.db_err(e))?
                .map(|v| decode(&plans.claim.uid, v.value()))
                .transpose()?;
            let mut index = txn.open_table(POD_CLAIMS).map_err(|e| self.db_err(e))?;
            self.reindex(&mut index, &plans.claim.uid, old.as_ref(), Some(plans))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Changes the plans of one claim in a single write transaction (so two threads
    /// changing different devices of one claim do not lose each other's change).
    /// `change` returns whether it changed anything; a missing claim is left alone.
    /// Returns whether the claim was found and rewritten.
    pub fn update(
        &self,
        uid: &str,
        change: impl FnOnce(&mut ClaimPlans) -> bool,
    ) -> Result<bool, StateError> {
        self.with_db(|db| self.update_in(db, uid, change))
    }

    fn update_in(
        &self,
        db: &Database,
        uid: &str,
        change: impl FnOnce(&mut ClaimPlans) -> bool,
    ) -> Result<bool, StateError> {
        let txn = db.begin_write().map_err(|e| self.db_err(e))?;
        let written = {
            let mut table = txn.open_table(CLAIMS).map_err(|e| self.db_err(e))?;
            let stored = match table.get(uid).map_err(|e| self.db_err(e))? {
                Some(value) => Some(decode(uid, value.value())?),
                None => None,
            };
            let mut changed = None;
            if let Some(before) = stored {
                let mut plans = before.clone();
                if change(&mut plans) {
                    changed = Some((encode(&plans)?, before, plans));
                }
            }
            if let Some((value, before, after)) = &changed {
                table
                    .insert(uid, value.as_slice())
                    .map_err(|e| self.db_err(e))?;
                let mut index = txn.open_table(POD_CLAIMS).map_err(|e| self.db_err(e))?;
                self.reindex(&mut index, uid, Some(before), Some(after))?;
            }
            changed.is_some()
        };
        if written {
            txn.commit().map_err(|e| self.db_err(e))?;
        } else {
            txn.abort().map_err(|e| self.db_err(e))?;
        }
        Ok(written)
    }

    /// The plans of the claim with this UID.
    pub fn get(&self, uid: &str) -> Result<Option<ClaimPlans>, StateError> {
        self.with_db(|db| self.get_in(db, uid))
    }

    fn get_in(&self, db: &Database, uid: &str) -> Result<Option<ClaimPlans>, StateError> {
        let txn = db.begin_read().map_err(|e| self.db_err(e))?;
        let table = match txn.open_table(CLAIMS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.db_err(e)),
        };
        match table.get(uid).map_err(|e| self.db_err(e))? {
            Some(value) => decode(uid, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the claim's plans; returns what was stored.
    pub fn remove(&self, uid: &str) -> Result<Option<ClaimPlans>, StateError> {
        self.with_db(|db| self.remove_in(db, uid))
    }

    fn remove_in(&self, db: &Database, uid: &str) -> Result<Option<ClaimPlans>, StateError> {
        let txn = db.begin_write().map_err(|e| self.db_err(e))?;
        let removed = {
            let mut table = txn.open_table(CLAIMS).map_err(|e| self.db_err(e))?;
            let removed = table.remove(uid).map_err(|e| self.db_err(e))?;
            removed.map(|value| decode(uid, value.value()))
        };
        {
            let mut index = txn.open_table(POD_CLAIMS).map_err(|e| self.db_err(e))?;
            match &removed {
                Some(Ok(old)) => self.reindex(&mut index, uid, Some(old), None)?,
                // An entry that does not decode names no pods: drop its index rows by scan.
                _ => {
                    let stale: Vec<(String, String)> = index
                        .iter()
                        .map_err(|e| self.db_err(e))?
                        .filter_map(|e| e.ok())
                        .map(|(k, _)| (k.value().0.to_string(), k.value().1.to_string()))
                        .filter(|(_, claim)| claim == uid)
                        .collect();
                    for (pod, claim) in stale {
                        index
                            .remove((pod.as_str(), claim.as_str()))
                            .map_err(|e| self.db_err(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        removed.transpose()
    }

    /// The plans that name pod `pod_uid`, with their claim UIDs, read through the pod
    /// index (only this pod's claims are read and decoded).
    pub fn plans_of_pod(
        &self,
        pod_uid: &str,
    ) -> Result<Vec<(String, super::plan::Plan)>, StateError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.db_err(e))?;
            let (index, claims) = match (txn.open_table(POD_CLAIMS), txn.open_table(CLAIMS)) {
                (Ok(i), Ok(c)) => (i, c),
                (Err(redb::TableError::TableDoesNotExist(_)), _)
                | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(self.db_err(e)),
            };
            let mut uids = Vec::new();
            for entry in index.range((pod_uid, "")..).map_err(|e| self.db_err(e))? {
                let (key, _) = entry.map_err(|e| self.db_err(e))?;
                let (pod, claim) = key.value();
                if pod != pod_uid {
                    break;
                }
                uids.push(claim.to_string());
            }
            let mut out = Vec::new();
            for uid in uids {
                let Some(value) = claims.get(uid.as_str()).map_err(|e| self.db_err(e))? else {
                    continue;
                };
                let plans = decode(&uid, value.value())?;
                out.extend(
                    plans
                        .plans
                        .into_iter()
                        .filter(|p| p.pod.uid == pod_uid)
                        .map(|p| (uid.clone(), p)),
                );
            }
            Ok(out)
        })
    }

    /// Moves claim `uid`'s index rows from the pods of `old` to the pods of `new`.
    fn reindex(
        &self,
        index: &mut redb::Table<(&str, &str), ()>,
        uid: &str,
        old: Option<&ClaimPlans>,
        new: Option<&ClaimPlans>,
    ) -> Result<(), StateError> {
        let pods = |c: Option<&ClaimPlans>| -> BTreeSet<String> {
            c.map(|c| c.plans.iter().map(|p| p.pod.uid.clone()).collect())
                .unwrap_or_default()
        };
        let (before, after) = (pods(old), pods(new));
        for pod in before.difference(&after) {
            index
                .remove((pod.as_str(), uid))
                .map_err(|e| self.db_err(e))?;
        }
        for pod in after.difference(&before) {
            index
                .insert((pod.as_str(), uid), ())
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    /// Every stored claim, ordered by UID.
    pub fn list(&self) -> Result<Vec<ClaimPlans>, StateError> {
        self.with_db(|db| self.list_in(db))
    }

    fn list_in(&self, db: &Database) -> Result<Vec<ClaimPlans>, StateError> {
        let txn = db.begin_read().map_err(|e| self.db_err(e))?;
        let table = match txn.open_table(CLAIMS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.db_err(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_err(e))? {
            let (key, value) = entry.map_err(|e| self.db_err(e))?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// The devices named in the plans of every stored claim: the devices this driver
    /// has handed out or is about to (they stay published while inside pods).
    pub fn claimed_devices(&self) -> Result<BTreeSet<String>, StateError> {
        Ok(self
            .list()?
            .into_iter()
            .flat_map(|c| c.plans.into_iter().map(|p| p.device))
            .collect())
    }

    /// Runs `f` on the open database, reopening it first after an I/O error.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        use std::sync::atomic::Ordering;
        if self.reopen.swap(false, Ordering::AcqRel) {
            let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
            // The old handle holds the file lock: it goes before the new one opens.
            *slot = None;
            match Database::create(&self.path) {
                Ok(db) => {
                    tracing::info!(checkpoint = %self.path.display(), "checkpoint reopened after an I/O error");
                    *slot = Some(db);
                }
                Err(e) => {
                    self.reopen.store(true, Ordering::Release);
                    return Err(StateError::Closed {
                        path: self.path.clone(),
                        message: format!("reopening failed: {e}"),
                    });
                }
            }
        }
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(db) => f(db),
            None => {
                self.reopen
                    .store(true, std::sync::atomic::Ordering::Release);
                Err(StateError::Closed {
                    path: self.path.clone(),
                    message: "not open".into(),
                })
            }
        }
    }

    fn db_err(&self, err: impl Into<redb::Error>) -> StateError {
        let err = err.into();
        match err {
            redb::Error::PreviousIo => {
                self.reopen
                    .store(true, std::sync::atomic::Ordering::Release);
                StateError::Closed {
                    path: self.path.clone(),
                    message: err.to_string(),
                }
            }
            redb::Error::Io(_) => {
                // redb refuses every later call after an I/O error; reopen next time.
                self.reopen
                    .store(true, std::sync::atomic::Ordering::Release);
                StateError::Database {
                    path: self.path.clone(),
                    message: err.to_string(),
                }
            }
            other => StateError::Database {
                path: self.path.clone(),
                message: other.to_string(),
            },
        }
    }
}

enum Problem {
    /// The file is damaged: move it aside and start over.
    Corrupt(String),
    /// Something else (permissions, already open): report to the caller.
    Fatal(StateError),
}

fn open_and_verify(path: &Path) -> Result<Database, Problem> {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Database, Problem> {
        let db = Database::create(path).map_err(|err| classify(path, err.into()))?;
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

/// `sha256(json) ‖ json` of `plans`.
fn encode(plans: &ClaimPlans) -> Result<Vec<u8>, StateError> {
    let json = serde_json::to_vec(plans).map_err(|err| StateError::Entry {
        uid: plans.claim.uid.clone(),
        message: err.to_string(),
    })?;
    let mut value = Vec::with_capacity(DIGEST_LEN + json.len());
    value.extend_from_slice(&Sha256::digest(&json));
    value.extend_from_slice(&json);
    Ok(value)
}

fn decode(uid: &str, value: &[u8]) -> Result<ClaimPlans, StateError> {
    let entry_err = |message: String| StateError::Entry {
        uid: uid.to_owned(),
        message,
    };
    if value.len() < DIGEST_LEN {
        return Err(entry_err(format!(
            "value of {} bytes is too short",
            value.len()
        )));
    }
    let (digest, json) = value.split_at(DIGEST_LEN);
    if Sha256::digest(json).as_slice() != digest {
        return Err(entry_err("checksum mismatch".into()));
    }
    let plans: ClaimPlans =
        serde_json::from_slice(json).map_err(|err| entry_err(format!("bad JSON: {err}")))?;
    if plans.claim.uid != uid {
        return Err(entry_err(format!(
            "entry is for claim UID {}",
            plans.claim.uid
        )));
    }
    Ok(plans)
}

fn corrupt_name(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClaimRecord, Plan, PodRecord};

    /// The checkpoint decoder against corrupt entries: random bytes, and mutated JSON
    /// behind a correct digest (so the JSON decoder is reached). Every input gives a
    /// typed error or plans; none panics. `NETCLAIM_FUZZ_INPUTS` sets the count.
    #[test]
    fn decode_survives_corrupt_entries() {
        let n: u64 = std::env::var("NETCLAIM_FUZZ_INPUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let base = serde_json::to_vec(&sample("uid-1")).expect("json");
        let mut x: u64 = 0x5eed_c4ec_0000_0001;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let (mut ok, mut refused) = (0u64, 0u64);
        for i in 0..n {
            let mut json = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % json.len().max(1);
                match next() % 3 {
                    0 if !json.is_empty() => json[at] = next() as u8,
                    1 => json.truncate(at),
                    _ => json.insert(at, b"{}[]\",0:e-9"[(next() % 10) as usize]),
                }
            }
            let mut value = Vec::new();
            if i % 8 != 0 {
                value.extend_from_slice(&Sha256::digest(&json));
            }
            value.extend_from_slice(&json);
            match decode("uid-1", &value) {
                Ok(_) => ok += 1,
                Err(StateError::Entry { .. }) => refused += 1,
                Err(other) => panic!("unexpected error kind: {other}"),
            }
        }
        println!("checkpoint decoder: {n} inputs, {ok} decoded, {refused} refused, 0 panics");
        assert!(refused > 0);
    }

    fn sample(uid: &str) -> ClaimPlans {
        let claim = ClaimRecord {
            namespace: "default".into(),
            name: format!("claim-{uid}"),
            uid: uid.into(),
        };
        ClaimPlans {
            claim: claim.clone(),
            plans: vec![Plan {
                claim,
                pod: PodRecord {
                    namespace: "default".into(),
                    name: "pod".into(),
                    uid: "pod-uid".into(),
                },
                device: "eth1".into(),
                pool: "node-a".into(),
                requests: vec!["nic".into()],
                config: serde_json::json!({"interface": {"mtu": 9000}}),
                valid: None,
                placement: Default::default(),
                share_id: None,
                prepared_at: 1,
            }],
        }
    }

    fn for_pod(uid: &str, pod: &str) -> ClaimPlans {
        let mut c = sample(uid);
        c.plans[0].pod.uid = pod.into();
        c
    }

    fn pod_claims(store: &StateStore, pod: &str) -> Vec<String> {
        store
            .plans_of_pod(pod)
            .unwrap()
            .into_iter()
            .map(|(uid, _)| uid)
            .collect()
    }

    #[test]
    fn the_pod_index_follows_every_write_and_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.put(&for_pod("c1", "pod-a")).unwrap();
        store.put(&for_pod("c2", "pod-b")).unwrap();
        store.put(&for_pod("c3", "pod-a")).unwrap();
        // "pod-a" must not pick up "pod-ab"'s claims (a prefix of another UID).
        store.put(&for_pod("c4", "pod-ab")).unwrap();
        assert_eq!(pod_claims(&store, "pod-a"), ["c1", "c3"]);
        assert_eq!(pod_claims(&store, "pod-ab"), ["c4"]);
        assert!(pod_claims(&store, "pod-").is_empty());
        // A put that moves a claim to another pod moves its index row.
        store.put(&for_pod("c3", "pod-b")).unwrap();
        assert_eq!(pod_claims(&store, "pod-a"), ["c1"]);
        assert_eq!(pod_claims(&store, "pod-b"), ["c2", "c3"]);
        // So does an update.
        assert!(store
            .update("c1", |c| {
                c.plans[0].pod.uid = "pod-c".into();
                true
            })
            .unwrap());
        assert!(pod_claims(&store, "pod-a").is_empty());
        assert_eq!(pod_claims(&store, "pod-c"), ["c1"]);
        store.remove("c2").unwrap();
        assert_eq!(pod_claims(&store, "pod-b"), ["c3"]);
        // The plans come back whole, with their claim UID.
        let (uid, plan) = &store.plans_of_pod("pod-b").unwrap()[0];
        assert_eq!((uid.as_str(), plan.device.as_str()), ("c3", "eth1"));
        drop(store);

        // A checkpoint whose index went missing (written before the index existed).
        {
            let db = Database::create(dir.path().join(CHECKPOINT_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(POD_CLAIMS).unwrap();
            txn.commit().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(pod_claims(&store, "pod-b"), ["c3"]);
        assert_eq!(pod_claims(&store, "pod-c"), ["c1"]);
        assert_eq!(pod_claims(&store, "pod-ab"), ["c4"]);
    }

    #[test]
    fn update_changes_in_one_transaction_and_loses_nothing_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(StateStore::open(dir.path()).unwrap());
        assert!(
            !store.update("absent", |_| true).unwrap(),
            "a missing claim"
        );
        let mut two = sample("uid-u");
        let mut second = two.plans[0].clone();
        second.device = "eth2".into();
        two.plans.push(second);
        store.put(&two).unwrap();
        assert!(
            !store.update("uid-u", |_| false).unwrap(),
            "nothing changed"
        );
        // Two threads each bump their own device's counter 50 times.
        let threads: Vec<_> = ["eth1", "eth2"]
            .into_iter()
            .map(|dev| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        store
                            .update("uid-u", |c| {
                                let p = c.plans.iter_mut().find(|p| p.device == dev).unwrap();
                                p.prepared_at += 1;
                                true
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = store.get("uid-u").unwrap().unwrap();
        let counts: Vec<u64> = got.plans.iter().map(|p| p.prepared_at).collect();
        assert_eq!(counts, vec![51, 51]);
    }

    #[test]
    fn put_get_list_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            assert!(store.list().unwrap().is_empty());
            store.put(&sample("a")).unwrap();
            store.put(&sample("b")).unwrap();
            assert_eq!(store.get("a").unwrap(), Some(sample("a")));
            assert_eq!(store.get("zzz").unwrap(), None);
            assert_eq!(store.remove("b").unwrap(), Some(sample("b")));
            assert_eq!(store.remove("b").unwrap(), None);
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.moved_aside().is_none());
        let all = store.list().unwrap();
        assert_eq!(all, vec![sample("a")]);
        let claimed: Vec<String> = store.claimed_devices().unwrap().into_iter().collect();
        assert_eq!(claimed, vec!["eth1".to_string()]);
    }

    #[test]
    fn garbage_file_is_moved_aside_and_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        std::fs::write(&path, b"this is not a database at all, just garbage bytes").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let aside = store.moved_aside().unwrap().to_owned();
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(".corrupt-"));
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"this is not a database at all, just garbage bytes"
        );
        assert!(store.list().unwrap().is_empty());
        store.put(&sample("a")).unwrap();
        assert_eq!(store.get("a").unwrap(), Some(sample("a")));
    }

    #[test]
    fn damaged_entry_is_detected_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        {
            // A value whose checksum does not match, written behind the store's back.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(CLAIMS).unwrap();
                let mut value = vec![0u8; DIGEST_LEN];
                value.extend_from_slice(
                    br#"{"claim":{"namespace":"a","name":"b","uid":"u"},"plans":[]}"#,
                );
                table.insert("u", value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.moved_aside().is_some());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn truncated_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.put(&sample("a")).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len().min(700)]).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.moved_aside().is_some());
        assert!(store.list().unwrap().is_empty());
    }
}
