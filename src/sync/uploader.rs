//! Drains the journal to the remote, oldest job first, one at a time.
//!
//! A job names an entry, not an operation: it makes the remote match the entry's current
//! path and content, so a crash anywhere only means the job runs again. Transient failures
//! pause the whole queue with backoff (the remote is most likely down for every job);
//! permanent ones park the job with the server's message and the queue moves on.

use std::sync::Arc;
use std::time::Duration;

use super::conflict::Conflicts;
use super::{backoff, Invalidation, Shared, SyncError};
use crate::cache::{Base, CacheError, ChangeSet};
use crate::remote::{hash_file, Cond, ConflictMark, Delta, Meta, RemoteError, Written};
use crate::store::{
    dirty, now_ms, now_ns, Entry, Event, EventKind, Job, JobKind, JobState, StoreError, Synced,
};
use crate::types::{EntryId, Kind};

/// Drains the journal: one job at a time, as the engine hands them out.
pub(super) struct Uploader {
    ctx: Arc<Shared>,
    conflicts: Conflicts,
    /// Set by a job that learnt the remote changed: poll once the queue is drained.
    poll_wanted: std::sync::atomic::AtomicBool,
}

/// How often a directory delete looks again while a job below it waits for a writer to
/// close, for the user (parked) or for a conflict to be settled.
const DEFER_WHILE_STUCK: Duration = Duration::from_secs(1);

/// What `Job::tried` records for a server-side copy of the version with ETag `source`.
fn copy_mark(source: Option<&str>) -> String {
    format!("copy of {}", source.unwrap_or("?"))
}

pub(super) enum Outcome {
    Done,
    /// The entry changed while we worked; the job stays queued for another round.
    Again,
}

/// How a job ended, as the engine's schedule needs to know.
pub(super) enum Settled {
    /// It ran (done, or to run again at once because the entry changed meanwhile).
    Done,
    /// The remote could not be reached: the whole queue pauses for `retry_in`.
    Unreachable { retry_in: Duration },
    /// It waits for another job, or was parked: the queue moves on.
    Later,
}

impl Uploader {
    pub(super) fn new(ctx: Arc<Shared>, conflicts: Conflicts) -> Uploader {
        Uploader {
            ctx,
            conflicts,
            poll_wanted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a job learnt since the last call that the remote changed (a delete refused
    /// because of an edit there): the engine then polls once the queue is drained.
    pub(super) fn take_poll_wanted(&self) -> bool {
        self.poll_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The oldest ready job, marked as being uploaded.
    pub(super) fn next_job(&self) -> Result<Option<Job>, StoreError> {
        self.ctx.store.write(|db| {
            let job = db.next_job(now_ms())?;
            if let Some(j) = &job {
                db.set_job_state(j.seq, JobState::Uploading)?;
            }
            Ok::<_, StoreError>(job)
        })
    }

    /// A job interrupted by shutdown goes back to the queue for the next run.
    pub(super) fn requeue(&self, job: &Job) {
        let _ = self
            .ctx
            .store
            .write(|db| db.set_job_state(job.seq, JobState::Queued));
    }

    /// Records how a job ended in the journal and the remote's health: a transient failure
    /// retries it with backoff, a permanent one parks it with the server's message.
    pub(super) fn settle(&self, job: &Job, result: Result<Outcome, SyncError>) -> Settled {
        match result {
            Ok(_) => {
                self.ctx.remote.health().record_ok();
                Settled::Done
            }
            Err(SyncError::Remote(e)) if e.is_transient() => {
                let wait = match &e {
                    RemoteError::Unavailable {
                        retry_after: Some(d),
                        ..
                    } => *d,
                    _ => backoff(job.attempts),
                };
                tracing::warn!(seq = job.seq, error = %e, retry_in = ?wait, "remote unavailable; will retry");
                self.ctx.remote.health().record_error(true, &e.to_string());
                let msg = e.to_string();
                let retry_at = now_ms() + wait.as_millis() as i64;
                let _ = self
                    .ctx
                    .store
                    .write(|db| db.retry_job(job.seq, &msg, retry_at));
                Settled::Unreachable { retry_in: wait }
            }
            Err(SyncError::Wait(why)) => {
                tracing::debug!(seq = job.seq, %why, "job waits for another");
                let _ = self
                    .ctx
                    .store
                    .write(|db| db.retry_job(job.seq, &why, now_ms() + 1000));
                Settled::Later
            }
            Err(e) => {
                tracing::warn!(seq = job.seq, error = %e, "sync failed for good; parking this entry");
                self.ctx.remote.health().record_error(false, &e.to_string());
                let msg = e.to_string();
                let _ = self.ctx.store.write(|db| db.park_job(job.seq, &msg));
                Settled::Later
            }
        }
    }

    pub(super) async fn run_job(&self, job: &Job) -> Result<Outcome, SyncError> {
        match &job.kind {
            JobKind::Sync(id) => match self.sync_entry(job, *id).await {
                Err(SyncError::Vanished) => {
                    let linked = self
                        .ctx
                        .store
                        .read(|db| Ok::<_, StoreError>(db.path_of(*id)?.is_some()))?;
                    if linked {
                        return Err(SyncError::Local(
                            "the cached data of this file is missing from the state dir".into(),
                        ));
                    }
                    // Its unlink already queued what the remote must lose; nothing to do.
                    self.ctx.store.write(|db| db.remove_job(job.seq))?;
                    Ok(Outcome::Done)
                }
                other => other,
            },
            JobKind::Delete { key, dir, etag } => {
                if *dir && self.defer_dir_delete(job, key)? {
                    return Ok(Outcome::Again);
                }
                self.delete_key(key, *dir, None, etag.as_deref()).await?;
                self.ctx.store.write(|db| {
                    let mut ev = Event::new(EventKind::Delete).path(key.trim_end_matches('/'));
                    if let Some(d) = db.job_age_since_close(job.seq)? {
                        ev = ev.duration_ms(d);
                    }
                    db.record(&ev)?;
                    db.remove_job(job.seq)
                })?;
                Ok(Outcome::Done)
            }
        }
    }

    /// A directory is deleted only once nothing queued still moves or deletes a key below
    /// it: otherwise (a file unlinked after its directory was renamed, a file below still
    /// open for writing, a job parked or retrying) the delete ran first, a local-folder
    /// remote kept the directory because it was not empty yet, and the next poll brought
    /// the emptied directory back as a new remote one. Deferred, the job keeps its place
    /// in the queue (so `stratus sync --wait` still waits for it), and its pending delete
    /// keeps the poller from taking the directory as new meanwhile. Answers whether the job
    /// was deferred.
    fn defer_dir_delete(&self, job: &Job, key: &str) -> Result<bool, SyncError> {
        let deferred = self.ctx.store.write(|db| {
            let (n, latest) = db.jobs_below(key, job.seq)?;
            if n == 0 {
                return Ok::<_, StoreError>(None);
            }
            // Just after the last of them can run; while one waits for a writer, the user
            // or a conflict, a look now and then (a cheap query).
            let now = now_ms();
            let step = (n as i64 * 20).clamp(100, 2_000);
            let at = match latest {
                Some(t) => t.max(now) + step,
                None => now + DEFER_WHILE_STUCK.as_millis() as i64,
            };
            db.defer_job(job.seq, at)?;
            Ok(Some((n, at - now)))
        })?;
        if let Some((jobs, wait_ms)) = deferred {
            tracing::debug!(
                key,
                jobs,
                wait_ms,
                "directory delete waits for the jobs below it"
            );
        }
        Ok(deferred.is_some())
    }

    fn meta_of(&self, e: &Entry, sha256: Option<String>) -> Meta {
        // The copy of an open conflict says so, so that every mount lists the conflict.
        let conflict = e
            .conflict_of
            .and_then(|_| {
                self.ctx
                    .store
                    .read(|db| db.open_conflict_of_copy(e.id))
                    .ok()
            })
            .flatten()
            .map(|c| ConflictMark {
                of: c.path.rsplit('/').next().unwrap_or(&c.path).to_string(),
                at_path: c.at_path,
                detected_ms: c.detected_ms,
            });
        Meta {
            mtime_ns: Some(e.mtime_ns),
            mode: Some(e.mode),
            uid: Some(e.uid),
            gid: Some(e.gid),
            sha256,
            symlink: e
                .target
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            special: match e.kind {
                Kind::Special(s) => Some(s),
                _ => None,
            },
            link: e.link_group.clone(),
            writer: Some(self.ctx.cfg.writer.clone()),
            conflict: conflict.map(Box::new),
        }
    }

    /// Before `key` is overwritten or deleted, any other entry whose remote copy still sits
    /// there (it was renamed away and its own job has not run yet) gets that copy moved to its
    /// new path, so no version is lost to job order.
    async fn evict_tenants(&self, key: &str, except: Option<EntryId>) -> Result<(), SyncError> {
        let tenants = self.ctx.store.read(|db| {
            let mut out = Vec::new();
            for t in db.owners_of_key(key, except)? {
                if let Some(p) = db.path_of(t.id)? {
                    if p != key.as_bytes() {
                        out.push((t, String::from_utf8_lossy(&p).into_owned()));
                    }
                }
            }
            Ok::<_, StoreError>(out)
        })?;
        for (t, new_key) in tenants {
            if t.kind == Kind::Dir {
                self.ctx
                    .store
                    .write(|db| db.set_synced(t.id, &Synced::default()))?;
                continue;
            }
            tracing::debug!(from = key, to = %new_key, "moving a renamed entry's object before its key is reused");
            // Conditioned as the entry's own move would be: only the version it knew, and
            // only onto what it expects at the new name. Refused, the move itself sorts it
            // out (an edit, a delete, a writer at the new name), and this upload waits.
            let cond = self.expected_at(&t, &new_key)?;
            let w = match self
                .ctx
                .remote
                .copy(key, &new_key, t.synced.etag.as_deref(), &cond)
                .await
            {
                Ok(w) => w,
                Err(RemoteError::Conflict(_) | RemoteError::NotFound(_)) => {
                    return Err(SyncError::Wait(format!(
                        "waiting for the move of {key} to {new_key} to run first"
                    )));
                }
                Err(err) => return Err(err.into()),
            };
            self.ctx.store.write(|db| {
                db.set_synced(
                    t.id,
                    &Synced {
                        key: Some(new_key.clone()),
                        etag: w.etag.clone(),
                        version: w.version.clone(),
                        hash: t.synced.hash.clone(),
                    },
                )
            })?;
        }
        Ok(())
    }

    /// Deletes `key` unless a live entry of the same kind already owns it (its remote copy is
    /// at `key` and it still lives there). An entry that merely sits at `key` without having
    /// been uploaded there yet does not stop the delete: it may be gone again before its
    /// upload runs, and the stale object would stay behind. `moving` is the entry that is
    /// leaving `key`: it is not a tenant to rescue.
    ///
    /// `expect` is the version the delete means to remove: if the remote holds another one
    /// now (edited elsewhere since), the edit wins and nothing is deleted; the poller then
    /// brings that version back.
    async fn delete_key(
        &self,
        key: &str,
        dir: bool,
        moving: Option<EntryId>,
        expect: Option<&str>,
    ) -> Result<(), SyncError> {
        let owned = self.ctx.store.read(|db| {
            for e in db.owners_of_key(key, moving)? {
                if (e.kind == Kind::Dir) == dir
                    && db.path_of(e.id)?.as_deref() == Some(key.as_bytes())
                {
                    return Ok::<_, StoreError>(true);
                }
            }
            Ok(false)
        })?;
        if owned {
            return Ok(());
        }
        self.evict_tenants(key, moving).await?;
        tracing::debug!(key, dir, "deleting remote object");
        match self.ctx.remote.delete(key, dir, expect).await {
            Err(RemoteError::Conflict(_)) if self.still_holds(key, dir, expect).await? => {
                // The key still holds the version we meant to delete: the refusal was the
                // server's, not another writer's (see `write_conflict`). Taken for an edit,
                // the next poll brought the deleted file back. (Found by the in-process model
                // test over the faulty remote.)
                return Err(SyncError::Wait(
                    "the server refused a delete whose precondition holds; retrying".into(),
                ));
            }
            Err(RemoteError::Conflict(_)) => {
                // Edited elsewhere since: the edit wins over our delete, and the next poll
                // brings that version back here.
                tracing::info!(
                    key,
                    "not deleting: the remote object changed since; the edit wins"
                );
                self.poll_wanted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            other => other?,
        }
        Ok(())
    }

    /// Whether `key` holds the version with ETag `expect` now.
    async fn still_holds(
        &self,
        key: &str,
        dir: bool,
        expect: Option<&str>,
    ) -> Result<bool, SyncError> {
        let Some(expect) = expect else {
            return Ok(false);
        };
        let now = self.ctx.remote.head(key, dir).await?;
        Ok(now.and_then(|h| h.etag).as_deref() == Some(expect))
    }

    async fn sync_entry(&self, job: &Job, id: EntryId) -> Result<Outcome, SyncError> {
        // Attributes from a listing alone are defaults: an upload must never write them over
        // the object's own (every change the core makes reads them first; this is the net).
        if self
            .ctx
            .store
            .read(|db| db.get(id))?
            .is_some_and(|e| e.unread)
        {
            self.ctx.read_meta(id).await?;
        }
        let snap = self.ctx.store.read(|db| {
            let Some(e) = db.get(id)? else {
                return Ok::<_, StoreError>(None);
            };
            let path = db.path_of(id)?;
            Ok(path.map(|p| (e, p)))
        })?;
        let Some((e, path)) = snap else {
            // Deleted or unlinked since it was queued: nothing to upload.
            self.ctx.store.write(|db| db.remove_job(job.seq))?;
            return Ok(Outcome::Done);
        };
        let key = String::from_utf8(path)
            .map_err(|_| SyncError::Local("path is not valid UTF-8".into()))?;
        if let Some(of) = e.link_of {
            return self.sync_link(job, &e, of, key).await;
        }
        let old = e.synced.key.clone().filter(|k| *k != key);
        let moved_only = e.dirty == 0 && old.is_some();
        if e.synced.key.as_deref() == Some(key.as_str()) && e.dirty == 0 {
            return self.finish(job, &e, e.synced.clone()).await;
        }
        let cond = self.expected_at(&e, &key)?;
        self.evict_tenants(&key, Some(id)).await?;
        // The version the old key must still hold for a move's delete of it.
        let mut old_etag = e.synced.etag.clone();
        // Whether the move took that newer version: its hash (none, if its writer left
        // none) is the base's, never ours. (Found by the race test: reads of the edit were
        // refused for failing our version's checksum.)
        let mut took_edit = false;
        let written: Result<(Written, Option<String>), RemoteError> = match e.kind {
            Kind::Dir => self
                .ctx
                .remote
                .put_dir(&key, &self.meta_of(&e, None))
                .await
                .map(|w| (w, None)),
            // A special file is an empty object, written whole like a symlink.
            Kind::Symlink | Kind::Special(_) => self
                .ctx
                .remote
                .put_symlink(&key, &self.meta_of(&e, None), &cond)
                .await
                .map(|w| (w, None)),
            Kind::File if moved_only => {
                let from = old.clone().expect("moved_only implies an old key");
                tracing::debug!(%from, to = %key, "server-side copy");
                // Written down before it goes out, as an upload's hash is (`copy_refused`).
                self.ctx
                    .store
                    .write(|db| db.note_tried(job.seq, &copy_mark(e.synced.etag.as_deref())))?;
                // The server decides both sides: the old key must still hold our version, the
                // new one what `cond` expects.
                match self
                    .ctx
                    .remote
                    .copy(&from, &key, e.synced.etag.as_deref(), &cond)
                    .await
                {
                    Ok(w) => Ok((w, e.synced.hash.clone())),
                    Err(err @ (RemoteError::Conflict(_) | RemoteError::NotFound(_))) => {
                        match self.copy_refused(job, &e, &from, &key, &cond, err).await {
                            Ok((w, hash, taken)) => {
                                // The move took the old key's newer version: that version,
                                // not ours, is what the old key may be deleted over.
                                if taken.is_some() {
                                    old_etag = taken;
                                    took_edit = true;
                                }
                                Ok((w, hash))
                            }
                            Err(RemoteError::NotFound(_)) if !e.local => {
                                return self.moved_file_deleted_elsewhere(job, &e).await;
                            }
                            Err(err) => Err(err),
                        }
                    }
                    Err(err) => Err(err),
                }
            }
            Kind::File if !e.local => {
                // A metadata-only change of a file we never fetched (chmod, touch): replaced
                // in place where the server can, else fetched and written again.
                let meta = self.meta_of(&e, e.synced.hash.clone());
                match self
                    .ctx
                    .remote
                    .update_meta(&key, &meta, &cond, e.size)
                    .await
                {
                    Ok(Some(w)) => Ok((w, e.synced.hash.clone())),
                    Ok(None) => match self.fetch(&e).await {
                        Ok(()) => self.upload(job, &e, &key, &cond).await,
                        // Changed on the remote since our base: a conflict, as the upload
                        // conditioned on the base would have found.
                        Err(SyncError::Remote(err @ RemoteError::Conflict(_))) => Err(err),
                        Err(err) => return Err(err),
                    },
                    Err(err) => Err(err),
                }
            }
            Kind::File => self.upload(job, &e, &key, &cond).await,
        };
        let (written, hash) = match written {
            Ok(w) => w,
            Err(RemoteError::Conflict(_)) => return self.write_conflict(job, &e, &key).await,
            Err(RemoteError::Io(io)) if io.kind() == std::io::ErrorKind::NotFound => {
                return Err(SyncError::Vanished)
            }
            Err(err) => return Err(err.into()),
        };
        match &old {
            // An old directory marker is removed by the delete job that the rename queued
            // behind the children's moves.
            Some(_) if e.kind == Kind::Dir => {}
            Some(old) => {
                self.delete_key(old, false, Some(id), old_etag.as_deref())
                    .await?
            }
            None => {}
        }
        let synced = Synced {
            key: Some(key),
            etag: written.etag,
            version: written.version,
            hash: if took_edit {
                hash
            } else {
                hash.or(e.synced.hash.clone())
            },
        };
        if e.conflict_of.is_some() {
            // The copy's version is now known by its ETag too.
            self.ctx.store.write(|db| {
                if let Some(mut c) = db.open_conflict_of_copy(e.id)? {
                    c.in_copy.etag = synced.etag.clone();
                    c.in_copy.sha256 = synced.hash.clone();
                    c.local_etag = synced.etag.clone();
                    db.update_conflict_versions(&c)?;
                }
                Ok::<_, StoreError>(())
            })?;
        }
        self.finish(job, &e, synced).await
    }

    async fn finish(&self, job: &Job, e: &Entry, synced: Synced) -> Result<Outcome, SyncError> {
        let uploaded_key = synced.key.clone();
        let synced_etag = synced.etag.clone();
        let (clean, gone) = self.ctx.store.write(|db| {
            if db
                .get(e.id)?
                .and_then(|x| x.parent.or((x.id == EntryId::ROOT).then_some(x.id)))
                .is_none()
            {
                db.remove_job(job.seq)?;
                return Ok::<_, StoreError>((true, true));
            }
            if let Some(ev) = sync_event(e, &synced) {
                let ev = match db.job_age_since_close(job.seq)? {
                    Some(d) => ev.duration_ms(d),
                    None => ev,
                };
                db.record(&ev)?;
            }
            Ok((
                db.complete_sync(job.seq, e.id, e.dirty_seq, &synced)?,
                false,
            ))
        })?;
        if gone {
            // Unlinked while we uploaded: take back what we just wrote.
            if let Some(k) = uploaded_key {
                self.delete_key(&k, e.kind == Kind::Dir, Some(e.id), None)
                    .await?;
            }
            return Ok(Outcome::Done);
        }
        if clean && e.kind == Kind::File {
            self.ctx.files.uploaded(e.id);
        }
        // S3 keeps an object's ETag when only its metadata changed: a chmod goes to the
        // links too.
        if e.link_group.is_some()
            && e.link_of.is_none()
            && (e.dirty != 0 || e.synced.etag != synced_etag)
        {
            // A new version of an inode with further names: each name's object copies it.
            self.ctx.store.write(|db| {
                for l in db.links_of(e.id)? {
                    db.enqueue_sync(l.id, dirty::CONTENT | dirty::META, Some(now_ms()))?;
                }
                Ok::<_, StoreError>(())
            })?;
        }
        Ok(if clean { Outcome::Done } else { Outcome::Again })
    }

    /// A further name of a hard-linked inode: its object is a server-side copy of the
    /// inode's object, once that is up (the copy carries the data, the metadata and the link
    /// group). A copy refused (the inode's object or this name's key changed elsewhere)
    /// waits: the next poll sorts out what changed.
    async fn sync_link(
        &self,
        job: &Job,
        e: &Entry,
        of: EntryId,
        key: String,
    ) -> Result<Outcome, SyncError> {
        let (inode, busy) = self
            .ctx
            .store
            .read(|db| Ok::<_, StoreError>((db.get(of)?, db.job_for(of)?.is_some())))?;
        let Some(inode) = inode else {
            self.ctx.store.write(|db| db.remove_job(job.seq))?;
            return Ok(Outcome::Done);
        };
        let (Some(src), Some(src_etag)) = (inode.synced.key.clone(), inode.synced.etag.clone())
        else {
            return Err(SyncError::Wait(
                "a hard link waits for its inode's upload".into(),
            ));
        };
        if busy || inode.dirty != 0 {
            return Err(SyncError::Wait(
                "a hard link waits for its inode's upload".into(),
            ));
        }
        if e.dirty == 0 && e.synced.key.as_deref() == Some(key.as_str()) {
            return self.finish(job, e, e.synced.clone()).await;
        }
        let cond = self.expected_at(e, &key)?;
        self.evict_tenants(&key, Some(e.id)).await?;
        let written = match inode.kind {
            Kind::File => {
                self.ctx
                    .remote
                    .copy(&src, &key, Some(&src_etag), &cond)
                    .await
            }
            _ => {
                self.ctx
                    .remote
                    .put_symlink(&key, &self.meta_of(&inode, None), &cond)
                    .await
            }
        };
        let w = match written {
            Ok(w) => w,
            Err(err @ (RemoteError::Conflict(_) | RemoteError::NotFound(_))) => {
                self.poll_wanted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(SyncError::Wait(format!(
                    "a hard link's copy was refused ({err}); waiting for a poll"
                )));
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(old) = e.synced.key.as_deref().filter(|k| *k != key) {
            self.delete_key(old, false, Some(e.id), e.synced.etag.as_deref())
                .await?;
        }
        let synced = Synced {
            key: Some(key),
            etag: w.etag,
            version: w.version,
            hash: inode.synced.hash.clone(),
        };
        self.finish(job, e, synced).await
    }

    /// What the key must hold for our write to be the next version: our base there, or the
    /// version a delete of ours is about to remove (a replace by rename), or nothing.
    fn expected_at(&self, e: &Entry, key: &str) -> Result<Cond, SyncError> {
        if e.synced.key.as_deref() == Some(key) {
            return Ok(Cond::Match {
                etag: e.synced.etag.clone(),
                version: e.synced.version.clone(),
            });
        }
        let replaced = self.ctx.store.read(|db| db.pending_file_delete(key))?;
        Ok(match replaced {
            Some(Some(etag)) => Cond::Match {
                etag: Some(etag),
                version: None,
            },
            Some(None) => Cond::Overwrite,
            None => Cond::Create,
        })
    }

    /// The server refused our conditional write: someone else wrote the key since our base.
    /// Identical content is no conflict; otherwise both versions are kept.
    async fn write_conflict(&self, job: &Job, e: &Entry, key: &str) -> Result<Outcome, SyncError> {
        let current = self.ctx.remote.head(key, false).await?;
        let Some(r) = current else {
            // Deleted remotely since: our version goes up as a new object, after a short
            // pause so that a key that keeps changing cannot spin this loop. A base at another
            // key (a move on its way) stays: its object is still ours to move or delete.
            // (Found by the in-process model over the faulty remote: a move refused at its
            // empty new name forgot the old key, and the next poll brought the old name back.)
            self.ctx.store.write(|db| {
                if e.synced.key.as_deref() == Some(key) {
                    db.set_synced(e.id, &Synced::default())?;
                }
                db.retry_job(
                    job.seq,
                    "the remote object changed during the upload",
                    now_ms() + 500,
                )
            })?;
            return Ok(Outcome::Again);
        };
        // The key still holds our base: the condition we sent holds, so the refusal was the
        // server's, not another writer's (a distributed store catching up after an outage
        // answered 412 to an If-Match on the version it held). Nothing to keep aside: try
        // again shortly. (Seen on the SeaweedFS cluster suite: a file only one mount wrote
        // ended as a conflict of that mount with itself.)
        let holds_base = e.synced.key.as_deref() == Some(key)
            && r.etag.is_some()
            && r.etag == e.synced.etag
            && (r.version.is_none() || e.synced.version.is_none() || r.version == e.synced.version);
        if holds_base {
            return Err(SyncError::Wait(
                "the server refused a write whose precondition holds; retrying".into(),
            ));
        }
        let same = match (&r.meta.sha256, e.local) {
            (Some(h), true) => {
                let path = self.ctx.cache.path(e.id);
                tokio::task::spawn_blocking(move || hash_file(&path).ok())
                    .await
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(h.as_str())
            }
            _ => false,
        };
        // A version this job sent earlier whose answer was lost (the daemon stopped or the
        // connection dropped while it was in flight): ours, not a conflict, even if the file
        // changed since. (Found by the in-process model test: an upload of a file just
        // emptied by O_TRUNC landed as the daemon stopped, and after the restart the file's
        // written content met it as another writer's version: a conflict with ourselves.)
        let ours = r
            .meta
            .sha256
            .as_ref()
            .is_some_and(|h| job.tried.contains(h));
        self.ctx
            .store
            .write(|db| db.set_job_state(job.seq, JobState::Queued))?;
        if same || ours {
            // Most likely our own write whose answer was lost. If the entry was moving, its
            // old key still has to go before the base moves to the new one. (Regression:
            // the old key was forgotten and stayed on the remote.)
            if let Some(old) = e.synced.key.as_deref().filter(|k| *k != key) {
                self.delete_key(old, false, Some(e.id), e.synced.etag.as_deref())
                    .await?;
            }
            self.ctx
                .store
                .write(|db| db.set_synced(e.id, &super::base_of(key, &r)))?;
            return Ok(Outcome::Again);
        }
        if e.synced.key.is_none() && self.conflicts.rename_copy(e).await? {
            // A `.conflict` copy whose name another mount took in the same second (both
            // found their conflicts at once): it takes the next free name, not a conflict
            // of its own.
            return Ok(Outcome::Again);
        }
        if !self.conflicts.keep_both(e, key, &r).await? {
            // Open here: the versions are sorted out once it is closed.
            self.ctx.store.write(|db| {
                db.retry_job(
                    job.seq,
                    "conflict: waiting for the file to be closed",
                    now_ms() + 2000,
                )
            })?;
        }
        Ok(Outcome::Done)
    }

    /// A file moved here whose old key was deleted elsewhere before the move reached the
    /// remote, and whose data was never whole here: no version of it exists anywhere to move,
    /// and whoever deleted it had seen it. It goes here too, as a remote delete of an
    /// unchanged file does. (Found by the race test: the move was parked for good, and
    /// `sync --wait` failed.) A file open here is looked at again once it is closed.
    async fn moved_file_deleted_elsewhere(
        &self,
        job: &Job,
        e: &Entry,
    ) -> Result<Outcome, SyncError> {
        // Under the file's gate, and not while it is open: its data file goes.
        let gone = self.ctx.files.with_closed(e.id, || {
            let gone = self.ctx.store.write(|db| {
                let Some(cur) = db.get(e.id)? else {
                    db.remove_job(job.seq)?;
                    return Ok::<_, StoreError>(Some(None));
                };
                if cur.dirty_seq != e.dirty_seq || cur.dirty != 0 {
                    // Written here since: that write goes up as a new file.
                    return Ok(None);
                }
                db.remove_job(job.seq)?;
                db.delete_entry(e.id)?;
                Ok(Some(cur.parent.map(|p| (p, cur.name))))
            })?;
            if gone.is_some() {
                let _ = self.ctx.cache.remove(e.id);
            }
            Ok::<_, StoreError>(gone)
        });
        let Some(gone) = gone.transpose()? else {
            self.ctx.store.write(|db| {
                db.retry_job(
                    job.seq,
                    "deleted elsewhere: waiting for the file to be closed",
                    now_ms() + 2000,
                )
            })?;
            return Ok(Outcome::Done);
        };
        let Some(gone) = gone else {
            return Ok(Outcome::Again);
        };
        if let Some((parent, name)) = gone {
            tracing::info!(
                name = %String::from_utf8_lossy(&name),
                "moved here, but deleted elsewhere first and never fetched here; removed here"
            );
            self.ctx.notify(Invalidation::Entry { parent, name });
        }
        Ok(Outcome::Done)
    }

    /// A move's conditional copy was refused (`Conflict`) or found no source (`NotFound`):
    /// tells which side moved on. The move may be done already (an earlier attempt lost its
    /// answers); `Conflict` when the new key holds someone else's version; otherwise the old
    /// key no longer holds ours.
    async fn copy_refused(
        &self,
        job: &Job,
        e: &Entry,
        from: &str,
        key: &str,
        cond: &Cond,
        refused: RemoteError,
    ) -> Result<(Written, Option<String>, Option<String>), RemoteError> {
        let current = self.ctx.remote.head(key, false).await?;
        // Same content hash, or the same ETag (a server-side copy keeps a single-part
        // object's ETag, which is its content's MD5).
        // Or, when this job has sent this very copy before, the same size and the same mtime to
        // the nanosecond: a copy keeps both, and a folder's copy or an Azure copy of an object
        // that carries no hash gets a new ETag. (Found by the in-process model test: a move of
        // a file another tool wrote, whose copy landed as the daemon stopped, met its own copy
        // after the restart as a conflict; the old name came back with the next poll.)
        let tried_before = job.tried.contains(&copy_mark(e.synced.etag.as_deref()));
        let ours = current.as_ref().filter(|h| {
            (h.meta.sha256.is_some() && h.meta.sha256 == e.synced.hash)
                || (h.etag.is_some() && h.etag == e.synced.etag)
                || (tried_before
                    && h.size == e.size
                    && h.meta.mtime_ns.or(h.last_modified_ns) == Some(e.mtime_ns))
        });
        if let Some(h) = ours {
            // Already there: a previous attempt copied (and maybe deleted the old key) and
            // lost the answers. (Regression: the retried copy found the old key gone and
            // parked the entry for good.)
            return Ok((
                Written {
                    etag: h.etag.clone(),
                    version: h.version.clone(),
                },
                e.synced.hash.clone(),
                None,
            ));
        }
        let source_gone = matches!(refused, RemoteError::NotFound(_));
        if !source_gone && !cond.admits(current.as_ref().and_then(|o| o.etag.as_deref())) {
            return Err(RemoteError::Conflict(key.to_string()));
        }
        // The old key was edited or deleted elsewhere since. Our version goes up from the
        // data here (conditioned like the copy); an edit stays at the old key (our delete of
        // it is refused in turn) and comes back with the next poll.
        if e.local {
            return self
                .upload(job, e, key, cond)
                .await
                .map(|(w, h)| (w, h, None));
        }
        if source_gone {
            return Err(refused);
        }
        // Our data is not whole here (never fetched, or retired into the block cache after
        // its upload) and our version is no longer on the remote either: the move takes what
        // the old key holds now, pinned to that version (its hash, where the object carries
        // one, becomes the base's).
        let Some(h) = self.ctx.remote.head(from, false).await? else {
            return Err(RemoteError::NotFound(from.to_string()));
        };
        let w = self
            .ctx
            .remote
            .copy(from, key, h.etag.as_deref(), cond)
            .await?;
        tracing::info!(%from, to = %key, "the moved file was edited elsewhere; the move takes the edit");
        // Blocks cached from our version must not be served as the edit's: they go, and
        // reads fetch the edit. (Found by the race test: the mount showed the old bytes under
        // the new base.) A file open here keeps what it has until the next open.
        // Its size and times are the edit's too. (Found by the race test: the mount read the
        // edit's bytes through our version's size.)
        let took = self.ctx.store.write(|db| {
            let Some(mut cur) = db.get(e.id)? else {
                return Ok::<_, StoreError>(());
            };
            if cur.dirty != 0 || cur.dirty_seq != e.dirty_seq {
                // Written here since: that write is a new version and goes up on its own.
                return Ok(());
            }
            cur.size = h.size;
            cur.mtime_ns = h
                .meta
                .mtime_ns
                .or(h.last_modified_ns)
                .unwrap_or(cur.mtime_ns);
            cur.ctime_ns = now_ns();
            cur.mode = h.meta.mode.unwrap_or(cur.mode);
            cur.local = false;
            db.update(&cur)?;
            db.set_local(e.id, false)
        });
        if let Err(err) = took {
            tracing::warn!(error = %err, "could not drop the blocks of the version moved away");
        }
        self.ctx.notify(super::Invalidation::Inode(e.id));
        Ok((w, h.meta.sha256.clone(), h.etag.clone()))
    }

    async fn upload(
        &self,
        job: &Job,
        e: &Entry,
        key: &str,
        cond: &Cond,
    ) -> Result<(Written, Option<String>), RemoteError> {
        let path = self.ctx.cache.path(e.id);
        let p2 = path.clone();
        // Taken before the file is read: whatever changes after is counted for the next upload.
        let snap = self.ctx.files.changes(e.id);
        let (hash, size, ino) = tokio::task::spawn_blocking(move || {
            let h = hash_file(&p2)?;
            let m = std::fs::metadata(&p2)?;
            Ok::<_, std::io::Error>((h, m.len(), std::os::unix::fs::MetadataExt::ino(&m)))
        })
        .await
        .map_err(|e| RemoteError::Io(std::io::Error::other(e.to_string())))?
        .map_err(RemoteError::Io)?;
        tracing::debug!(key, size, ?cond, "uploading");
        // Written down before it goes out: should the answer be lost, the next attempt
        // knows the version it meets as its own (`write_conflict`).
        self.ctx
            .store
            .write(|db| db.note_tried(job.seq, &hash))
            .map_err(|err| RemoteError::Io(std::io::Error::other(err.to_string())))?;
        let meta = self.meta_of(e, Some(hash.clone()));
        let delta = differential(e, key, cond, ino, snap.changes);
        let w = self
            .ctx
            .remote
            .upload_changes(key, &path, size, &meta, cond, delta.as_ref())
            .await?;
        // The object now is this data file as of the snapshot: later changes build on it.
        let landed = w.etag.clone().map(|etag| Base {
            etag,
            len: size,
            ino,
        });
        self.ctx.files.landed(e.id, snap.gen, landed);
        Ok((w, Some(hash)))
    }

    /// Makes the file whole through the block cache's fetcher. (Regression: it downloaded
    /// into a new data file renamed over the old one, without the file's gate; a reader that
    /// had the file open kept the old sparse file, now taken for whole, and read zeros.)
    async fn fetch(&self, e: &Entry) -> Result<(), SyncError> {
        let (files, id) = (self.ctx.files.clone(), e.id);
        tokio::task::spawn_blocking(move || files.fill(id))
            .await
            .map_err(|err| SyncError::Local(err.to_string()))?
            .map_err(|err| match err {
                CacheError::Remote(err) => SyncError::Remote(err),
                CacheError::Store(err) => SyncError::Store(err),
                CacheError::NotFound => SyncError::Vanished,
                err => SyncError::Local(err.to_string()),
            })
    }
}

/// The plan of a differential upload of `e` to `key`, when its changes are counted from the
/// very version the upload replaces (`cond` pins it) on this same data file (`ino`); `None`
/// sends the whole file. A wrong plan would put a mix of versions on the remote, so every
/// doubt answers `None`.
fn differential(
    e: &Entry,
    key: &str,
    cond: &Cond,
    ino: u64,
    changes: Option<ChangeSet>,
) -> Option<Delta> {
    let c = changes?;
    let Cond::Match {
        etag: Some(want), ..
    } = cond
    else {
        return None;
    };
    let same = e.synced.key.as_deref() == Some(key)
        && e.synced.etag.as_deref() == Some(c.base.etag.as_str())
        && *want == c.base.etag
        && c.base.ino == ino;
    same.then_some(Delta {
        base_etag: c.base.etag,
        base_len: c.base.len,
        changed: c.changed,
    })
}

/// The activity-log event of a finished sync of `e` that left the remote at `synced`: an
/// upload of its content, a move, a new directory or symlink, or a metadata change;
/// `None` when nothing went to the remote.
fn sync_event(e: &Entry, synced: &Synced) -> Option<Event> {
    let path = synced.key.as_deref()?.trim_end_matches('/').to_string();
    let moved_from = e
        .synced
        .key
        .as_deref()
        .filter(|k| Some(*k) != synced.key.as_deref());
    let content = e.dirty & dirty::CONTENT != 0;
    let ev = match e.kind {
        Kind::File if content || e.synced.key.is_none() => {
            Event::new(EventKind::Upload).bytes(e.size)
        }
        Kind::Dir | Kind::Symlink | Kind::Special(_) if e.synced.key.is_none() => {
            Event::new(EventKind::Create)
        }
        _ if moved_from.is_some() => Event::new(EventKind::Move).detail(format!(
            "from {}",
            moved_from.unwrap_or_default().trim_end_matches('/')
        )),
        _ if e.dirty != 0 => Event::new(EventKind::Metadata),
        _ => return None,
    };
    Some(ev.path(path))
}
