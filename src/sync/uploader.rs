//! Drains the journal to the remote, oldest job first, one at a time.
//!
//! A job names an entry, not an operation: it makes the remote match the entry's current
//! path and content, so a crash anywhere only means the job runs again. Transient failures
//! pause the whole queue with backoff (the remote is most likely down for every job);
//! permanent ones park the job with the server's message and the queue moves on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::backoff;
use crate::cache::FileCache;
use crate::remote::{hash_file, Cond, Meta, Remote, RemoteError, Written};
use crate::store::{
    now_ms, Entry, EntryId, Job, JobKind, JobState, Kind, Store, StoreError, Synced,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Local(String),
    /// The entry was deleted while we worked on it.
    #[error("entry deleted during sync")]
    Vanished,
}

pub struct Uploader {
    store: Arc<Store>,
    cache: FileCache,
    remote: Arc<Remote>,
}

enum Outcome {
    Done,
    /// The entry changed while we worked; the job stays queued for another round.
    Again,
}

impl Uploader {
    pub fn new(store: Arc<Store>, cache: FileCache, remote: Arc<Remote>) -> Uploader {
        Uploader {
            store,
            cache,
            remote,
        }
    }

    /// Runs until `shutdown` turns true. A job interrupted by shutdown stays queued.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut pause_until: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some(until) = pause_until {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = self.store.kick.notified() => {}
                    _ = shutdown.changed() => return,
                }
                pause_until = None;
            }
            let job = self.store.write(|db| {
                let job = db.next_job(now_ms())?;
                if let Some(j) = &job {
                    db.set_job_state(j.seq, JobState::Uploading)?;
                }
                Ok::<_, StoreError>(job)
            });
            let job = match job {
                Ok(Some(j)) => j,
                Ok(None) => {
                    let next = self.store.read(|db| db.next_ready_at()).ok().flatten();
                    let wait = next
                        .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64))
                        .unwrap_or(Duration::from_secs(3600));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.store.wake.notified() => {}
                        _ = self.store.kick.notified() => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the journal");
                    pause_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    continue;
                }
            };
            let span = tracing::info_span!("job", seq = job.seq);
            let result = tokio::select! {
                r = self.run_job(&job).instrument(span) => r,
                _ = shutdown.changed() => {
                    let _ = self.store.write(|db| db.set_job_state(job.seq, JobState::Queued));
                    return;
                }
            };
            match result {
                Ok(_) => self.store.health.record_ok(),
                Err(SyncError::Remote(e)) if e.is_transient() => {
                    let wait = match &e {
                        RemoteError::Unavailable {
                            retry_after: Some(d),
                            ..
                        } => *d,
                        _ => backoff(job.attempts),
                    };
                    tracing::warn!(seq = job.seq, error = %e, retry_in = ?wait, "remote unavailable; will retry");
                    self.store.health.record_error(true, &e.to_string());
                    let msg = e.to_string();
                    let retry_at = now_ms() + wait.as_millis() as i64;
                    let _ = self.store.write(|db| db.retry_job(job.seq, &msg, retry_at));
                    pause_until = Some(tokio::time::Instant::now() + wait);
                }
                Err(e) => {
                    tracing::warn!(seq = job.seq, error = %e, "sync failed for good; parking this entry");
                    self.store.health.record_error(false, &e.to_string());
                    let msg = e.to_string();
                    let _ = self.store.write(|db| db.park_job(job.seq, &msg));
                }
            }
        }
    }

    async fn run_job(&self, job: &Job) -> Result<Outcome, SyncError> {
        match &job.kind {
            JobKind::Sync(id) => match self.sync_entry(job, *id).await {
                Err(SyncError::Vanished) => {
                    let linked = self
                        .store
                        .read(|db| Ok::<_, StoreError>(db.path_of(*id)?.is_some()))?;
                    if linked {
                        return Err(SyncError::Local(
                            "the cached data of this file is missing from the state dir".into(),
                        ));
                    }
                    // Its unlink already queued what the remote must lose; nothing to do.
                    self.store.write(|db| db.remove_job(job.seq))?;
                    Ok(Outcome::Done)
                }
                other => other,
            },
            JobKind::Delete { key, dir } => {
                self.delete_key(key, *dir, None).await?;
                self.store.write(|db| db.remove_job(job.seq))?;
                Ok(Outcome::Done)
            }
        }
    }

    fn meta_of(&self, e: &Entry, sha256: Option<String>) -> Meta {
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
        }
    }

    /// Before `key` is overwritten or deleted, any other entry whose remote copy still sits
    /// there (it was renamed away and its own job has not run yet) gets that copy moved to its
    /// new path, so no version is lost to job order.
    async fn evict_tenants(&self, key: &str, except: Option<EntryId>) -> Result<(), SyncError> {
        let tenants = self.store.read(|db| {
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
                self.store
                    .write(|db| db.set_synced(t.id, &Synced::default()))?;
                continue;
            }
            tracing::debug!(from = key, to = %new_key, "moving a renamed entry's object before its key is reused");
            let w = self.remote.copy(key, &new_key).await?;
            self.store.write(|db| {
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
    async fn delete_key(
        &self,
        key: &str,
        dir: bool,
        moving: Option<EntryId>,
    ) -> Result<(), SyncError> {
        let owned = self.store.read(|db| {
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
        self.remote.delete(key, dir).await?;
        Ok(())
    }

    async fn sync_entry(&self, job: &Job, id: EntryId) -> Result<Outcome, SyncError> {
        let snap = self.store.read(|db| {
            let Some(e) = db.get(id)? else {
                return Ok::<_, StoreError>(None);
            };
            let path = db.path_of(id)?;
            Ok(path.map(|p| (e, p)))
        })?;
        let Some((e, path)) = snap else {
            // Deleted or unlinked since it was queued: nothing to upload.
            self.store.write(|db| db.remove_job(job.seq))?;
            return Ok(Outcome::Done);
        };
        let key = String::from_utf8(path)
            .map_err(|_| SyncError::Local("path is not valid UTF-8".into()))?;
        let old = e.synced.key.clone().filter(|k| *k != key);
        let moved_only = e.dirty == 0 && old.is_some();
        if e.synced.key.as_deref() == Some(key.as_str()) && e.dirty == 0 {
            return self.finish(job, &e, e.synced.clone()).await;
        }
        self.evict_tenants(&key, Some(id)).await?;
        let (written, hash): (Written, Option<String>) = match e.kind {
            Kind::Dir => (
                self.remote.put_dir(&key, &self.meta_of(&e, None)).await?,
                None,
            ),
            Kind::Symlink => (
                self.remote
                    .put_symlink(&key, &self.meta_of(&e, None), &Cond::Overwrite)
                    .await?,
                None,
            ),
            Kind::File if moved_only => {
                let from = old.clone().expect("moved_only implies an old key");
                tracing::debug!(%from, to = %key, "server-side copy");
                match self.remote.copy(&from, &key).await {
                    Ok(w) => (w, e.synced.hash.clone()),
                    Err(RemoteError::NotFound(_)) if e.local => self.upload(&e, &key).await?,
                    Err(err) => return Err(err.into()),
                }
            }
            Kind::File => {
                if !e.local {
                    // A metadata-only change of a file we never fetched: the object must be
                    // written again, so fetch it first.
                    self.fetch(&e).await?;
                }
                self.upload(&e, &key).await?
            }
        };
        match &old {
            // An old directory marker is removed by the delete job that the rename queued
            // behind the children's moves.
            Some(_) if e.kind == Kind::Dir => {}
            Some(old) => self.delete_key(old, false, Some(id)).await?,
            None => {}
        }
        let synced = Synced {
            key: Some(key),
            etag: written.etag,
            version: written.version,
            hash: hash.or(e.synced.hash.clone()),
        };
        self.finish(job, &e, synced).await
    }

    async fn finish(&self, job: &Job, e: &Entry, synced: Synced) -> Result<Outcome, SyncError> {
        let uploaded_key = synced.key.clone();
        let (clean, gone) = self.store.write(|db| {
            if db
                .get(e.id)?
                .and_then(|x| x.parent.or((x.id == EntryId::ROOT).then_some(x.id)))
                .is_none()
            {
                db.remove_job(job.seq)?;
                return Ok::<_, StoreError>((true, true));
            }
            Ok((
                db.complete_sync(job.seq, e.id, e.dirty_seq, &synced)?,
                false,
            ))
        })?;
        if gone {
            // Unlinked while we uploaded: take back what we just wrote.
            if let Some(k) = uploaded_key {
                self.delete_key(&k, e.kind == Kind::Dir, Some(e.id)).await?;
            }
            return Ok(Outcome::Done);
        }
        Ok(if clean { Outcome::Done } else { Outcome::Again })
    }

    async fn upload(&self, e: &Entry, key: &str) -> Result<(Written, Option<String>), SyncError> {
        let path = self.cache.path(e.id);
        let p2 = path.clone();
        let (hash, size) = tokio::task::spawn_blocking(move || {
            let h = hash_file(&p2)?;
            let n = std::fs::metadata(&p2)?.len();
            Ok::<_, std::io::Error>((h, n))
        })
        .await
        .map_err(|e| SyncError::Local(e.to_string()))?
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                SyncError::Vanished
            } else {
                SyncError::Local(format!("reading cached data of {key}: {err}"))
            }
        })?;
        tracing::debug!(key, size, "uploading");
        let meta = self.meta_of(e, Some(hash.clone()));
        let w = self
            .remote
            .upload_file(key, &path, size, &meta, &Cond::Overwrite)
            .await?;
        Ok((w, Some(hash)))
    }

    async fn fetch(&self, e: &Entry) -> Result<(), SyncError> {
        let key = e
            .synced
            .key
            .clone()
            .ok_or_else(|| SyncError::Local("no local data and no remote copy".into()))?;
        let tmp = self.cache.temp_path(e.id);
        self.remote.download(&key, &tmp).await?;
        self.cache
            .commit_temp(e.id)
            .map_err(|err| SyncError::Local(err.to_string()))?;
        self.store.write(|db| db.set_local(e.id, true))?;
        Ok(())
    }
}
