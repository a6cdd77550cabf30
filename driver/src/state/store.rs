//! [`StateStore`]: the checkpoint of prepared claims: a redb file (one table keyed by
//! claim UID) and its mirror, a second copy written independently (one file per claim,
//! [`mirror`]).
//!
//! Every value is `sha256(json) ‖ json` of a [`ClaimPlans`], so a flipped bit is caught
//! even where redb itself does not notice. Every change is committed to the redb file
//! and then written to the mirror before the call returns; a call whose mirror write
//! fails fails (the caller must not act on a record that has one copy), and the next
//! write brings the whole mirror in step again. Both copies carry a generation (redb:
//! a `meta` row in the same transaction; mirror: a `generation` file written after the
//! record), so opening knows which copy saw the last write.
//!
//! Opening scans every entry of both copies:
//! * the redb file refused by redb, panicking redb, or holding an entry whose checksum
//!   or JSON is wrong is renamed to `<file>.corrupt-<unix seconds>` and rebuilt from the
//!   mirror (one error line names both); so is an empty or missing file next to a
//!   mirror that has records, and a file whose generation is behind the mirror's (redb
//!   rolled back a commit it found damaged);
//! * a mirror record that does not decode is renamed aside and rewritten from the redb
//!   file; records the redb file lacks or holds differently are brought in step;
//! * with both copies of a claim damaged the claim is gone: the store starts without
//!   it, [`StateStore::moved_aside`] says where the file went and the caller rebuilds
//!   what it can from the cluster and the kernel. A corrupt checkpoint never stops the
//!   driver.
//!
//! A second table indexes claims by the pods their plans name, so a pod hook reads its
//! own claims instead of the whole checkpoint ([`StateStore::plans_of_pod`]).
//!
//! A pod hook's placement record ([`StateStore::update`]) does not wait for either
//! copy: it is committed to redb without a sync and made durable by one append to the
//! write-ahead [`journal`] (two copies, about 0.2 ms). The redb file and the mirror
//! catch up off the hook: a flusher thread ([`StateStore::spawn_flusher`]) commits
//! durably and rewrites the changed mirror records once writes have paused, as does
//! every [`StateStore::put`] and [`StateStore::remove`], a clean shutdown
//! ([`StateStore::flush`]) and dropping the store. Records a catch-up has covered stay
//! in the journal until it grows past [`JOURNAL_KEEP`] (emptying it rewrites it, which
//! a catch-up need not pay every time); opening replays the journal's records newer
//! than the copy it settled on and empties it, so a process killed between a hook's
//! record and the catch-up loses nothing. Should the
//! journal not take a write, the change is made durable in both copies at once, as
//! before it existed.
//!
//! After an I/O error (a full disk, a failing device) redb refuses every later call
//! until the database is reopened. The store then reopens it and retries the call once,
//! so a driver whose disk filled up works again as soon as there is room, without a
//! restart. The failed call itself still fails: nothing is recorded that was not
//! written.
//!
//! The parts: `opening` (reading, checking and repairing both copies, the journal's
//! replay), `entry` (one checksummed value), [`journal`] and `mirror`; this file keeps
//! the open store's reads, writes and catch-ups.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::plan::ClaimPlans;

mod decoded;
mod entry;
pub mod journal;
mod mirror;
mod opening;
use entry::{decode, encode};
pub use entry::{decode_entry, encode_entry};
use journal::Journal;
pub use journal::JOURNAL_FILES;
use mirror::Mirror;
pub use mirror::MIRROR_DIR;
use opening::{corrupt_name, replay_journal};

/// File name of the checkpoint inside `--state-dir`.
pub const CHECKPOINT_FILE: &str = "checkpoint.redb";

const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
/// (pod UID, claim UID) for every plan: a pod hook reads only its own claims. Rebuilt
/// from `claims` at every open (so a checkpoint written before it existed works) and
/// kept in the same write transaction as every change to `claims`.
const POD_CLAIMS: TableDefinition<(&str, &str), ()> = TableDefinition::new("pod_claims");
/// `generation` → the number of writes this file has committed (both copies count
/// the same writes; see the module docs).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";

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
    /// The second copy could not be written: the change is in the redb file only, so
    /// the call fails (the next write brings the mirror in step).
    #[error("checkpoint mirror {path}: {source}")]
    Mirror {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What opening found wrong and repaired (also logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Claims written into a new redb file from the mirror.
    pub from_mirror: usize,
    /// Claims whose both copies were damaged (their UIDs): lost.
    pub lost: Vec<String>,
    /// Mirror records rewritten from the redb file (damaged, missing or behind).
    pub mirror_rewritten: usize,
    /// Mirror records removed (claims the redb file no longer has).
    pub mirror_removed: usize,
    /// Where damaged mirror records were moved.
    pub mirror_quarantined: Vec<PathBuf>,
    /// Claims whose newest state came from the journal (changes after the last
    /// catch-up of the redb file).
    pub from_journal: usize,
}

/// A journal holding more than this is emptied at the next catch-up.
const JOURNAL_KEEP: u64 = 512 << 10;

/// What the writers share, behind one lock: every change goes to redb, the journal
/// and the mirror in the same order.
struct Writer {
    /// `None` when the journal files could not be opened: every change is then durable
    /// in both copies before its call returns.
    journal: Option<Journal>,
    /// Claims changed since the redb file and the mirror last caught up.
    dirty: BTreeSet<String>,
    /// When the last journaled change was made.
    last_change: Option<std::time::Instant>,
}

/// Wakes the flusher when a settled change owes its journal record.
#[derive(Default)]
struct OwedSignal {
    pending: std::sync::Mutex<bool>,
    ready: std::sync::Condvar,
}

impl OwedSignal {
    fn raise(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.ready.notify_one();
    }

    /// Waits up to `timeout` for [`Self::raise`]; whether it was raised.
    fn wait(&self, timeout: std::time::Duration) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (mut pending, _) = self
            .ready
            .wait_timeout_while(pending, timeout, |raised| !*raised)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending)
    }
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
    /// The second copy.
    mirror: Mirror,
    /// Set when a mirror write failed: the next write rewrites the whole mirror.
    mirror_stale: std::sync::atomic::AtomicBool,
    /// Held across a change's redb transaction, its journal record and its mirror
    /// write, so every copy sees the same changes in the same order.
    writer: std::sync::Mutex<Writer>,
    /// Changes committed by [`Self::update_settled`] whose journal records are not
    /// written yet: the flusher writes them at once, any journal write or durable
    /// commit before that carries them, and reopening after an I/O error applies them
    /// again. Changed only with `writer` held; read without it by the reopen.
    owed: std::sync::Mutex<Vec<journal::Entry>>,
    owed_signal: std::sync::Arc<OwedSignal>,
    /// What opening repaired.
    recovery: Recovery,
    /// The last decoded form of each entry (decoding is most of a read's cost).
    decoded: decoded::Decoded,
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
    /// What opening found damaged or behind and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Rewrites the mirror from the redb file: records that differ or are missing
    /// are written (a damaged one is moved aside first), records of claims the redb
    /// file lacks are removed, then the generation. Clears the stale mark.
    fn sync_mirror(&self) -> Result<Recovery, StateError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let done = self.sync_mirror_locked()?;
        // At open: the journal's records are in both copies now, and the generation
        // may have gone back (a file rebuilt from the mirror), so none may stay.
        self.caught_up_and(&mut w, true);
        Ok(done)
    }

    /// [`Self::sync_mirror`] with `writer` held by the caller; the redb file must be
    /// durable (a commit without a sync is not on the disk yet).
    fn sync_mirror_locked(&self) -> Result<Recovery, StateError> {
        let (primary, generation) = self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.db_err(e))?;
            let mut out = BTreeMap::new();
            match txn.open_table(CLAIMS) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| self.db_err(e))? {
                        let (k, v) = entry.map_err(|e| self.db_err(e))?;
                        out.insert(k.value().to_string(), v.value().to_vec());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.db_err(e)),
            }
            let generation = read_generation(&txn).map_err(|e| self.db_err(e))?;
            Ok((out, generation))
        })?;
        let mirror_err = |source: std::io::Error| StateError::Mirror {
            path: self.mirror.dir().to_owned(),
            source,
        };
        let have = self.mirror.read_all().map_err(mirror_err)?;
        let mut done = Recovery::default();
        for (uid, value) in &have.records {
            if primary.get(uid) == Some(value) {
                continue;
            }
            if decode(uid, value).is_err() {
                done.mirror_quarantined
                    .push(self.mirror.quarantine(uid).map_err(mirror_err)?);
            } else if !primary.contains_key(uid) {
                self.mirror.remove(uid).map_err(mirror_err)?;
                done.mirror_removed += 1;
            }
        }
        for (uid, value) in &primary {
            if have.records.get(uid) != Some(value) {
                self.mirror.write(uid, value).map_err(mirror_err)?;
                done.mirror_rewritten += 1;
            }
        }
        if self.mirror.generation() != generation {
            self.mirror
                .write_generation(generation)
                .map_err(mirror_err)?;
        }
        self.mirror_stale
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(done)
    }

    /// After a durable redb commit at `generation` (the change of `uid`, `value`
    /// `None`: removed, when there was one): writes the mirror's copies of every claim
    /// changed since the last catch-up and of this one, then the generation, and
    /// empties the journal. After an earlier failure the whole mirror is rewritten
    /// instead. The caller holds `writer` from before its redb transaction, so the
    /// mirror sees changes in the order the redb file did.
    fn after_durable(
        &self,
        w: &mut Writer,
        change: Option<(&str, Option<&[u8]>)>,
        generation: u64,
    ) -> Result<(), StateError> {
        use std::sync::atomic::Ordering;
        if self.mirror_stale.load(Ordering::Acquire) {
            self.sync_mirror_locked()?;
            self.caught_up(w);
            return Ok(());
        }
        let own = change.map(|(uid, _)| uid);
        let mut failed_at = None;
        let mut written = Ok(());
        for uid in w.dirty.iter().filter(|u| Some(u.as_str()) != own) {
            written = match self.with_db(|db| self.raw_in(db, uid)) {
                Ok(Some(v)) => self.mirror.write(uid, &v),
                Ok(None) => self.mirror.remove(uid),
                Err(e) => return Err(self.stale(e)),
            };
            if written.is_err() {
                failed_at = Some(uid.clone());
                break;
            }
        }
        if written.is_ok() {
            if let Some((uid, value)) = change {
                written = match value {
                    Some(v) => self.mirror.write(uid, v),
                    None => self.mirror.remove(uid),
                };
                failed_at = Some(uid.to_string());
            }
        }
        let written = written.and_then(|()| self.mirror.write_generation(generation));
        match written {
            Ok(()) => {
                self.caught_up(w);
                Ok(())
            }
            Err(source) => {
                self.mirror_stale.store(true, Ordering::Release);
                Err(StateError::Mirror {
                    path: failed_at
                        .map(|uid| self.mirror.file_of(&uid))
                        .unwrap_or_else(|| self.mirror.dir().to_owned()),
                    source,
                })
            }
        }
    }

    /// Marks the mirror stale and passes the error on.
    fn stale(&self, e: StateError) -> StateError {
        self.mirror_stale
            .store(true, std::sync::atomic::Ordering::Release);
        e
    }

    /// Both copies hold every change: the journal's records are not needed any more.
    fn caught_up(&self, w: &mut Writer) {
        self.caught_up_and(w, false);
    }

    /// [`Self::caught_up`]; the journal is emptied when `empty_journal` is set or it has
    /// grown past [`JOURNAL_KEEP`]. Until then its records stay (replay skips records
    /// older than the checkpoint), so a catch-up costs no rewrite of the journal.
    fn caught_up_and(&self, w: &mut Writer, empty_journal: bool) {
        // A durable commit persisted every change committed before it.
        self.owed_now().clear();
        w.dirty.clear();
        w.last_change = None;
        if let Some(j) = w.journal.as_mut() {
            if !j.is_empty() && (empty_journal || j.used() > JOURNAL_KEEP) {
                if let Err(e) = j.clear() {
                    // Its records are older than both copies: replay skips them.
                    tracing::warn!(error = %e, "checkpoint journal not emptied");
                }
            }
        }
    }

    /// Makes every journaled change durable in the redb file and the mirror (the
    /// journal is emptied once it is large). Called by the flusher once writes pause, at a clean shutdown, and
    /// when the store is dropped; a no-op when nothing is pending.
    pub fn flush(&self) -> Result<(), StateError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.dirty.is_empty() {
            return Ok(());
        }
        self.flush_locked(&mut w)
    }

    /// Flushes when writes have paused for `idle`; returns whether anything was pending.
    fn flush_if_idle(&self, idle: std::time::Duration) -> bool {
        {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            match w.last_change {
                None => return false,
                Some(at) if at.elapsed() < idle => return true,
                Some(_) => {}
            }
        }
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "checkpoint catch-up failed; the journal keeps the changes, retried shortly");
        }
        true
    }

    /// Starts the thread that brings the redb file and the mirror up to the journal
    /// once writes have paused for `idle`. It ends when the store is dropped. Owed
    /// records wait until `quiet` says no pod hook runs (bounded): their fsync would
    /// compete with the runtime's own writes as it finishes the sandbox.
    pub fn spawn_flusher(
        store: &std::sync::Arc<Self>,
        idle: std::time::Duration,
        quiet: &'static crate::netns::quiet::Quiet,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak = std::sync::Arc::downgrade(store);
        let signal = store.owed_signal.clone();
        std::thread::Builder::new()
            .name("checkpoint-flush".into())
            .spawn(move || loop {
                let owed = signal.wait(idle / 2);
                let Some(store) = weak.upgrade() else {
                    return;
                };
                if owed {
                    quiet.settled_blocking(crate::netns::quiet::QUIET_LONGEST);
                    store.pay_owed();
                }
                store.flush_if_idle(idle);
            })
    }

    /// The stored bytes of claim `uid`, undecoded.
    fn raw_in(&self, db: &Database, uid: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = db.begin_read().map_err(|e| self.db_err(e))?;
        let table = match txn.open_table(CLAIMS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.db_err(e)),
        };
        Ok(table
            .get(uid)
            .map_err(|e| self.db_err(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Where a corrupt checkpoint was moved when this store was opened.
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// Stores (replaces) the plans of one claim, keyed by `plans.claim.uid`.
    pub fn put(&self, plans: &ClaimPlans) -> Result<(), StateError> {
        let value = encode(plans)?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.with_db(|db| self.put_in(db, plans, &value))?;
        self.after_durable(&mut w, Some((&plans.claim.uid, Some(&value))), generation)
    }

    fn put_in(&self, db: &Database, plans: &ClaimPlans, value: &[u8]) -> Result<u64, StateError> {
        let txn = db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = txn.open_table(CLAIMS).map_err(|e| self.db_err(e))?;
            let old = table
                .insert(plans.claim.uid.as_str(), value)
                .map_err(|e| self.db_err(e))?
                .map(|v| self.decoded.decode(&plans.claim.uid, v.value()))
                .transpose()?;
            let mut index = txn.open_table(POD_CLAIMS).map_err(|e| self.db_err(e))?;
            self.reindex(&mut index, &plans.claim.uid, old.as_ref(), Some(plans))?;
        }
        let generation = bump_generation(&txn).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))?;
        self.decoded.remember(&plans.claim.uid, value, plans);
        Ok(generation)
    }

    /// Changes the plans of one claim in a single write transaction (so two threads
    /// changing different devices of one claim do not lose each other's change).
    /// `change` returns whether it changed anything; a missing claim is left alone.
    /// Returns whether the claim was found and rewritten. Durable on return: through
    /// the journal when it takes the record, otherwise in both copies.
    pub fn update(
        &self,
        uid: &str,
        change: impl FnOnce(&mut ClaimPlans) -> bool,
    ) -> Result<bool, StateError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let journaled = w.journal.is_some();
        let Some((value, generation)) =
            self.with_db(|db| self.update_in(db, uid, change, !journaled))?
        else {
            return Ok(false);
        };
        if w.journal.is_some() {
            let entry = journal::Entry {
                generation,
                uid: uid.to_string(),
                value,
            };
            w.dirty.insert(uid.to_string());
            match self.journal_with_owed(&mut w, Some(entry)) {
                Some(Ok(())) => {
                    w.last_change = Some(std::time::Instant::now());
                    return Ok(true);
                }
                None => {}
                Some(Err(e)) => {
                    tracing::warn!(claim_uid = uid, error = %e,
                        "checkpoint journal did not take a record; writing it to both copies instead");
                }
            }
            // Not in the journal: a durable commit persists it (and every earlier
            // commit without a sync), then the mirror.
            self.flush_locked(&mut w)?;
            return Ok(true);
        }
        self.after_durable(&mut w, Some((uid, Some(&value))), generation)?;
        Ok(true)
    }

    /// [`Self::update`] for a change that only settles what an earlier, durable record
    /// already allows for (a device found where its write-ahead record said it might
    /// be). It is committed and visible to every reader on return; its journal record
    /// follows off the caller's path (the flusher writes it at once), so a crash just
    /// after the call may bring back the record before it. Without a journal it is
    /// durable on return, like [`Self::update`].
    pub fn update_settled(
        &self,
        uid: &str,
        change: impl FnOnce(&mut ClaimPlans) -> bool,
    ) -> Result<bool, StateError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.journal.is_none() {
            drop(w);
            return self.update(uid, change);
        }
        let Some((value, generation)) =
            self.with_db(|db| self.update_in(db, uid, change, false))?
        else {
            return Ok(false);
        };
        self.owed_now().push(journal::Entry {
            generation,
            uid: uid.to_string(),
            value,
        });
        w.dirty.insert(uid.to_string());
        w.last_change = Some(std::time::Instant::now());
        drop(w);
        self.owed_signal.raise();
        Ok(true)
    }

    /// Writes the journal records [`Self::update_settled`] owes; if the journal
    /// refuses them, makes the changes durable in both copies instead.
    pub fn pay_owed(&self) {
        if crate::failpoints::fires(crate::failpoints::SETTLE).is_some() {
            return;
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.owed_now().is_empty() {
            return;
        }
        match self.journal_with_owed(&mut w, None) {
            Some(Ok(())) => return,
            Some(Err(e)) => tracing::warn!(error = %e,
                "checkpoint journal did not take settled records; writing them to both copies instead"),
            None => {}
        }
        // A durable commit clears them (see `caught_up_and`); failing, they stay owed.
        if let Err(e) = self.flush_locked(&mut w) {
            tracing::warn!(error = %e, "settled checkpoint records are not durable yet; retried at the next write or catch-up");
        }
    }

    /// Writes the owed records and then `next` to the journal (one write and sync) and
    /// clears the owed ones once they are in. `None` without a journal.
    fn journal_with_owed(
        &self,
        w: &mut Writer,
        next: Option<journal::Entry>,
    ) -> Option<std::io::Result<()>> {
        let journal = w.journal.as_mut()?;
        let mut entries = self.owed_now().clone();
        entries.extend(next);
        let written = journal.append_all(&entries);
        if written.is_ok() {
            self.owed_now().clear();
        }
        Some(written)
    }

    fn owed_now(&self) -> std::sync::MutexGuard<'_, Vec<journal::Entry>> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Self::flush`] with `writer` held.
    fn flush_locked(&self, w: &mut Writer) -> Result<(), StateError> {
        let generation = self.with_db(|db| {
            let mut txn = db.begin_write().map_err(|e| self.db_err(e))?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| self.db_err(e))?;
            let generation = bump_generation(&txn).map_err(|e| self.db_err(e))?;
            txn.commit().map_err(|e| self.db_err(e))?;
            Ok(generation)
        })?;
        self.after_durable(w, None, generation)
    }

    fn update_in(
        &self,
        db: &Database,
        uid: &str,
        change: impl FnOnce(&mut ClaimPlans) -> bool,
        durable: bool,
    ) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        let mut txn = db.begin_write().map_err(|e| self.db_err(e))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| self.db_err(e))?;
        }
        let written = {
            let mut table = txn.open_table(CLAIMS).map_err(|e| self.db_err(e))?;
            let stored = match table.get(uid).map_err(|e| self.db_err(e))? {
                Some(value) => Some(self.decoded.decode(uid, value.value())?),
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
            changed.map(|(value, _, after)| (value, after))
        };
        match written {
            Some((value, after)) => {
                let generation = bump_generation(&txn).map_err(|e| self.db_err(e))?;
                txn.commit().map_err(|e| self.db_err(e))?;
                self.decoded.remember(uid, &value, &after);
                Ok(Some((value, generation)))
            }
            None => {
                txn.abort().map_err(|e| self.db_err(e))?;
                Ok(None)
            }
        }
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
            Some(value) => self.decoded.decode(uid, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the claim's plans; returns what was stored.
    pub fn remove(&self, uid: &str) -> Result<Option<ClaimPlans>, StateError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (removed, generation) = self.with_db(|db| self.remove_in(db, uid))?;
        self.after_durable(&mut w, Some((uid, None)), generation)?;
        removed.transpose()
    }

    #[allow(clippy::type_complexity)]
    fn remove_in(
        &self,
        db: &Database,
        uid: &str,
    ) -> Result<(Option<Result<ClaimPlans, StateError>>, u64), StateError> {
        let txn = db.begin_write().map_err(|e| self.db_err(e))?;
        let removed = {
            let mut table = txn.open_table(CLAIMS).map_err(|e| self.db_err(e))?;
            let removed = table.remove(uid).map_err(|e| self.db_err(e))?;
            self.decoded.forget(uid);
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
        let generation = bump_generation(&txn).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok((removed, generation))
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
                let plans = self.decoded.decode(&uid, value.value())?;
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
            out.push(self.decoded.decode(key.value(), value.value())?);
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
                    // Commits made without a sync before the error are in the journal,
                    // or still owe their record to it.
                    let owed = self.owed_now().clone();
                    if let Err(e) = replay_journal(&db, self.state_dir(), &owed) {
                        tracing::error!(error = %e, "checkpoint journal not replayed after reopening");
                    }
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

    fn state_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
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

impl Drop for StateStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "checkpoint not caught up at close; its journal is replayed at the next open");
        }
        // The flusher wakes, finds the store gone and ends.
        self.owed_signal.raise();
    }
}

fn read_generation(txn: &redb::ReadTransaction) -> Result<u64, redb::Error> {
    match txn.open_table(META) {
        Ok(meta) => Ok(meta.get(GENERATION)?.map(|g| g.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The redb file's generation (0 for a file written before generations existed).
fn generation_of(db: &Database) -> Result<u64, redb::Error> {
    read_generation(&db.begin_read()?)
}

/// Counts one more write in `txn`; returns the new generation.
fn bump_generation(txn: &redb::WriteTransaction) -> Result<u64, redb::Error> {
    let mut meta = txn.open_table(META)?;
    let next = meta
        .get(GENERATION)?
        .map(|g| g.value())
        .unwrap_or(0)
        .wrapping_add(1);
    meta.insert(GENERATION, next)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClaimRecord, Plan, PodRecord};
    use entry::DIGEST_LEN;
    use opening::raw_claims;
    use sha2::{Digest, Sha256};

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

    pub(super) fn sample(uid: &str) -> ClaimPlans {
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
                staged: false,
                parked: false,
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
        // Without its mirror (see the mirror tests for what it saves).
        std::fs::remove_dir_all(dir.path().join(MIRROR_DIR)).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.moved_aside().is_some());
        assert!(store.list().unwrap().is_empty());
    }

    // ---- the mirror (second copy) ----

    fn mirror_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        Mirror::new(dir).read_all().unwrap().records
    }

    fn raw(store: &StateStore) -> BTreeMap<String, Vec<u8>> {
        store.with_db(|db| Ok(raw_claims(db).unwrap())).unwrap()
    }

    fn two_claims(dir: &Path) -> (ClaimPlans, ClaimPlans) {
        let store = StateStore::open(dir).unwrap();
        store.put(&sample("a")).unwrap();
        store.put(&sample("b")).unwrap();
        assert!(store
            .update("a", |c| {
                c.plans[0].prepared_at = 7;
                true
            })
            .unwrap());
        // The update is in the journal; the mirror catches up at the flush. Then
        // every write has reached both copies, byte for byte.
        assert_ne!(mirror_files(dir), raw(&store));
        store.flush().unwrap();
        assert_eq!(mirror_files(dir), raw(&store));
        let a = store.get("a").unwrap().unwrap();
        (a, sample("b"))
    }

    #[test]
    fn a_corrupt_truncated_or_emptied_file_is_rebuilt_from_the_mirror() {
        for damage in ["garbage", "truncate", "empty", "deleted"] {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = two_claims(dir.path());
            let path = dir.path().join(CHECKPOINT_FILE);
            let bytes = std::fs::read(&path).unwrap();
            match damage {
                "garbage" => std::fs::write(&path, b"not a database").unwrap(),
                "truncate" => std::fs::write(&path, &bytes[..bytes.len().min(700)]).unwrap(),
                "empty" => std::fs::write(&path, b"").unwrap(),
                _ => std::fs::remove_file(&path).unwrap(),
            }
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(store.list().unwrap(), vec![a.clone(), b], "{damage}");
            assert_eq!(store.recovery().from_mirror, 2, "{damage}");
            assert!(store.recovery().lost.is_empty(), "{damage}");
            // The pod index came back with the claims.
            assert_eq!(pod_claims(&store, "pod-uid"), ["a", "b"], "{damage}");
            // A damaged file is kept aside for a post-mortem; nothing was to keep of
            // an empty or missing one.
            let kept = matches!(damage, "garbage" | "truncate");
            assert_eq!(store.moved_aside().is_some(), kept, "{damage}");
            // And it works on.
            store.remove("a").unwrap();
            assert_eq!(mirror_files(dir.path()), raw(&store), "{damage}");
        }
    }

    #[test]
    fn a_damaged_mirror_record_is_moved_aside_and_rewritten_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_claims(dir.path());
        let file = Mirror::new(dir.path()).file_of("a");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[40] ^= 0x20;
        std::fs::write(&file, &bytes).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap(), vec![a, b]);
        assert!(store.moved_aside().is_none());
        assert_eq!(store.recovery().mirror_quarantined.len(), 1);
        assert_eq!(
            std::fs::read(&store.recovery().mirror_quarantined[0]).unwrap(),
            bytes
        );
        assert_eq!(mirror_files(dir.path()), raw(&store));
    }

    #[test]
    fn with_both_copies_of_a_claim_damaged_only_that_claim_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (_, b) = two_claims(dir.path());
        std::fs::write(dir.path().join(CHECKPOINT_FILE), b"garbage").unwrap();
        std::fs::write(Mirror::new(dir.path()).file_of("a"), b"also garbage").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap(), vec![b]);
        assert_eq!(store.recovery().lost, vec!["a".to_string()]);
        assert!(store.moved_aside().is_some());
        assert_eq!(mirror_files(dir.path()), raw(&store));
    }

    #[test]
    fn a_write_cut_off_before_its_mirror_copy_is_completed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_claims(dir.path());
        let m = Mirror::new(dir.path());
        // The redb file committed "a" and a removal of "c", the mirror did not follow.
        std::fs::remove_file(m.file_of("a")).unwrap();
        m.write("c", &encode(&sample("c")).unwrap()).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap(), vec![a, b]);
        assert_eq!(store.recovery().mirror_rewritten, 1);
        assert_eq!(store.recovery().mirror_removed, 1);
        assert_eq!(mirror_files(dir.path()), raw(&store));
    }

    #[test]
    fn a_file_rolled_back_behind_the_mirror_is_rebuilt_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let older = {
            let store = StateStore::open(dir.path()).unwrap();
            store.put(&sample("a")).unwrap();
            drop(store);
            std::fs::read(&path).unwrap()
        };
        let (a, b) = two_claims(dir.path());
        // The file goes back to an earlier commit (as redb does with a commit it
        // finds damaged): the mirror saw more writes and wins.
        std::fs::write(&path, &older).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap(), vec![a, b]);
        assert_eq!(store.recovery().from_mirror, 2);
        assert!(store.moved_aside().is_some());
    }

    #[test]
    fn a_failed_mirror_write_fails_the_call_and_the_next_write_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.put(&sample("a")).unwrap();
        let m = Mirror::new(dir.path());
        std::fs::remove_dir_all(m.dir()).unwrap();
        // A file where the directory should be: every mirror write fails.
        std::fs::write(m.dir(), b"in the way").unwrap();
        let err = store.put(&sample("b")).unwrap_err();
        assert!(matches!(err, StateError::Mirror { .. }), "{err}");
        assert!(err.to_string().contains("checkpoint mirror"), "{err}");
        std::fs::remove_file(m.dir()).unwrap();
        store.put(&sample("c")).unwrap();
        assert_eq!(
            mirror_files(dir.path()).keys().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(mirror_files(dir.path()), raw(&store));
    }

    fn stamp(store: &StateStore, uid: &str, at: u64) {
        assert!(store
            .update(uid, |c| {
                c.plans[0].prepared_at = at;
                true
            })
            .unwrap());
    }

    fn prepared_at(dir: &Path, uid: &str) -> Option<u64> {
        let store = StateStore::open(dir).unwrap();
        store.get(uid).unwrap().map(|c| c.plans[0].prepared_at)
    }

    /// A copy of the state dir's checkpoint and mirror as they are now (a copy of
    /// what is on the disk after the last durable write).
    fn durable_image(from: &Path, to: &Path) {
        std::fs::copy(from.join(CHECKPOINT_FILE), to.join(CHECKPOINT_FILE)).unwrap();
        let mirror = to.join(MIRROR_DIR);
        std::fs::create_dir_all(&mirror).unwrap();
        for e in std::fs::read_dir(from.join(MIRROR_DIR)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), mirror.join(e.file_name())).unwrap();
        }
    }

    fn copy_journal(from: &Path, to: &Path) {
        for name in JOURNAL_FILES {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }

    /// What a kill leaves after `puts` (durable) and then `stamps` (journaled only): the
    /// file and mirror of the last durable write, and the journal of everything after.
    fn crash_image(puts: &[&str], stamps: &[(&str, u64)]) -> tempfile::TempDir {
        let live = tempfile::tempdir().unwrap();
        let store = StateStore::open(live.path()).unwrap();
        for uid in puts {
            store.put(&sample(uid)).unwrap();
        }
        let crashed = tempfile::tempdir().unwrap();
        durable_image(live.path(), crashed.path());
        for (uid, at) in stamps {
            stamp(&store, uid, *at);
        }
        copy_journal(live.path(), crashed.path());
        crashed
    }

    #[test]
    fn a_process_killed_before_the_catch_up_loses_no_journaled_change() {
        let crashed = crash_image(&["a", "b"], &[("a", 10), ("b", 20), ("a", 11)]);

        let reopened = StateStore::open(crashed.path()).unwrap();
        assert_eq!(reopened.recovery().from_journal, 2);
        let at = |uid| reopened.get(uid).unwrap().unwrap().plans[0].prepared_at;
        assert_eq!((at("a"), at("b")), (11, 20));
        // Opening brought both copies up to the journal and emptied it.
        assert_eq!(mirror_files(crashed.path()), raw(&reopened));
        assert_eq!(journal::read_both(crashed.path()).unwrap().0, vec![]);
        // The generation goes on after the replayed records.
        stamp(&reopened, "b", 21);
        drop(reopened);
        assert_eq!(prepared_at(crashed.path(), "b"), Some(21));
        assert_eq!(prepared_at(crashed.path(), "a"), Some(11));
    }

    #[test]
    fn a_journal_record_cut_off_by_the_crash_is_the_only_change_lost() {
        let crashed = crash_image(&["a"], &[("a", 10), ("a", 11)]);
        // The last record's write was cut off in both copies (its call never returned).
        for name in JOURNAL_FILES {
            let path = crashed.path().join(name);
            let mut bytes = std::fs::read(&path).unwrap();
            let end = journal::read_records(&bytes).end;
            bytes.truncate(end - 7);
            std::fs::write(&path, bytes).unwrap();
        }
        assert_eq!(prepared_at(crashed.path(), "a"), Some(10));
    }

    #[test]
    fn a_damaged_file_is_rebuilt_from_the_mirror_and_then_the_journal() {
        let crashed = crash_image(&["a"], &[("a", 10)]);
        std::fs::write(crashed.path().join(CHECKPOINT_FILE), b"not a redb file").unwrap();
        // And one journal copy damaged as well: the other still has the record.
        let a = crashed.path().join(JOURNAL_FILES[0]);
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[30] ^= 0x40;
        std::fs::write(&a, bytes).unwrap();
        let reopened = StateStore::open(crashed.path()).unwrap();
        assert!(reopened.moved_aside().is_some());
        assert_eq!(reopened.recovery().from_journal, 1);
        assert_eq!(reopened.get("a").unwrap().unwrap().plans[0].prepared_at, 10);
    }

    #[test]
    fn journal_records_older_than_the_file_are_not_replayed() {
        let live = tempfile::tempdir().unwrap();
        let store = StateStore::open(live.path()).unwrap();
        store.put(&sample("a")).unwrap();
        stamp(&store, "a", 10);
        // Kept aside before the catch-up empties it.
        let old = tempfile::tempdir().unwrap();
        copy_journal(live.path(), old.path());
        // A durable write after it (put catches up), then the old journal comes back
        // (a crash between the catch-up's commit and emptying the journal).
        store.put(&sample("a")).unwrap();
        drop(store);
        copy_journal(old.path(), live.path());
        let reopened = StateStore::open(live.path()).unwrap();
        assert_eq!(reopened.recovery().from_journal, 0);
        assert_eq!(reopened.get("a").unwrap().unwrap().plans[0].prepared_at, 1);
    }

    #[test]
    fn without_a_journal_every_change_is_in_both_copies_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where a journal file should be: the journal cannot be opened.
        std::fs::create_dir(dir.path().join(JOURNAL_FILES[1])).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.put(&sample("a")).unwrap();
        stamp(&store, "a", 10);
        assert_eq!(mirror_files(dir.path()), raw(&store));
        assert_eq!(
            decode("a", &mirror_files(dir.path())["a"]).unwrap().plans[0].prepared_at,
            10
        );
    }

    fn settle(store: &StateStore, uid: &str, at: u64) {
        assert!(store
            .update_settled(uid, |c| {
                c.plans[0].prepared_at = at;
                true
            })
            .unwrap());
    }

    #[test]
    fn a_settled_change_is_read_at_once_and_its_record_follows_before_any_later_one() {
        let live = tempfile::tempdir().unwrap();
        let store = StateStore::open(live.path()).unwrap();
        store.put(&sample("a")).unwrap();
        store.put(&sample("b")).unwrap();
        let (killed_early, killed_late, killed_paid) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        for image in [&killed_early, &killed_late, &killed_paid] {
            durable_image(live.path(), image.path());
        }
        stamp(&store, "a", 10);
        settle(&store, "a", 11);
        assert_eq!(store.get("a").unwrap().unwrap().plans[0].prepared_at, 11);
        // Killed before its record was written: the record before it comes back.
        copy_journal(live.path(), killed_early.path());
        assert_eq!(prepared_at(killed_early.path(), "a"), Some(10));
        // The next journaled change writes the owed record first, in order.
        stamp(&store, "b", 20);
        copy_journal(live.path(), killed_late.path());
        assert_eq!(prepared_at(killed_late.path(), "a"), Some(11));
        assert_eq!(prepared_at(killed_late.path(), "b"), Some(20));
        let (records, _) = journal::read_both(live.path()).unwrap();
        let generations: Vec<u64> = records.iter().map(|r| r.generation).collect();
        assert!(
            generations.windows(2).all(|w| w[0] < w[1]),
            "{generations:?}"
        );
        // Paid on its own (what the flusher does).
        settle(&store, "b", 21);
        store.pay_owed();
        copy_journal(live.path(), killed_paid.path());
        assert_eq!(prepared_at(killed_paid.path(), "b"), Some(21));
        // A durable catch-up covers what is still owed.
        settle(&store, "a", 12);
        drop(store);
        assert_eq!(prepared_at(live.path(), "a"), Some(12));
    }

    #[test]
    fn a_reopen_applies_what_is_still_owed_after_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.put(&sample("a")).unwrap();
        store.put(&sample("b")).unwrap();
        stamp(&store, "a", 10);
        let base = store.with_db(|db| Ok(generation_of(db).unwrap())).unwrap();
        // What a settled change left owed when the database had to be reopened: its
        // redb commit is gone, its record never reached the journal.
        let mut b = sample("b");
        b.plans[0].prepared_at = 40;
        let owed = vec![journal::Entry {
            generation: base + 1,
            uid: "b".into(),
            value: encode(&b).unwrap(),
        }];
        let changed = store
            .with_db(|db| Ok(replay_journal(db, dir.path(), &owed).unwrap()))
            .unwrap();
        assert_eq!(changed, 1, "only the owed record is newer than the file");
        assert_eq!(store.get("b").unwrap().unwrap().plans[0].prepared_at, 40);
        assert_eq!(store.get("a").unwrap().unwrap().plans[0].prepared_at, 10);
    }

    #[test]
    fn the_flusher_writes_owed_records_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(StateStore::open(dir.path()).unwrap());
        // Catch-up only after a minute: what reaches the journal here is the flusher
        // paying what the settled change owes.
        let flusher = StateStore::spawn_flusher(
            &store,
            std::time::Duration::from_secs(60),
            crate::netns::quiet::Quiet::global(),
        )
        .unwrap();
        store.put(&sample("a")).unwrap();
        settle(&store, "a", 30);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (records, _) = journal::read_both(dir.path()).unwrap();
            if records.iter().any(|r| r.uid == "a") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the owed record never reached the journal"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(store);
        flusher.join().unwrap();
    }

    #[test]
    fn the_flusher_catches_up_once_writes_pause() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(StateStore::open(dir.path()).unwrap());
        let flusher = StateStore::spawn_flusher(
            &store,
            std::time::Duration::from_millis(40),
            crate::netns::quiet::Quiet::global(),
        )
        .unwrap();
        store.put(&sample("a")).unwrap();
        stamp(&store, "a", 10);
        assert_ne!(mirror_files(dir.path()), raw(&store));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while mirror_files(dir.path()) != raw(&store) {
            assert!(
                std::time::Instant::now() < deadline,
                "the mirror never caught up"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The redb file is durable too: what the journal still holds is older.
        let generation = store.with_db(|db| Ok(generation_of(db).unwrap())).unwrap();
        let (records, _) = journal::read_both(dir.path()).unwrap();
        assert!(
            records.iter().all(|r| r.generation <= generation),
            "{records:?}"
        );
        // The thread ends with the store.
        drop(store);
        flusher.join().unwrap();
    }
}
