//! Reads the metadata a listing lacks. A first mount of a bucket fills its state dir from a
//! listing alone (key, size, ETag, last-modified) and goes live; each file and directory
//! marker is then `unread` until one HEAD has brought its metadata: in the background, a few
//! at a time, and at once for an entry the core needs now (`MetaSource`, an open or a change).
//!
//! What a HEAD can change: the attributes (mode, owner, mtime), the kind (an object the
//! listing showed as a file is a symlink or a special file: the entry is replaced, as the
//! poller replaces one whose kind changed remotely), hard links (a name joins its group's
//! inode) and conflict marks. Every change the kernel may have cached is invalidated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::{base_of, conflict, entry_kind, poller::default_mode, Invalidation, Shared, SyncError};
use crate::remote::ObjectInfo;
use crate::store::{Entry, NewEntry, StoreError};
use crate::types::{EntryId, Kind, MetaSource};

/// HEADs in flight at once in the background: modest, so that the user's own requests (and
/// other clients of the server) are not crowded out.
const READ_CONCURRENCY: usize = 8;
/// Unread entries taken from the database per round.
const BATCH: usize = 256;
/// The background reads start this long after the core: the first requests of a new mount
/// (a `ls`, a `find`) do not queue behind HEADs at the server.
const START_DELAY: Duration = Duration::from_secs(2);

/// How long an on-demand read (an `open` waiting on it) waits for the server's answer: the
/// time a data read allows its first byte.
const ON_DEMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// [`ON_DEMAND_TIMEOUT`] while the remote is known not to answer.
const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(3);
/// After an on-demand read got no answer, others fail at once for this long unless the remote
/// has answered something since: the kernel retries a failed call, and each retry must not wait again.
const FAILED_QUIET: Duration = Duration::from_secs(2);

/// What applying one entry's metadata did, for the invalidations and the caller.
#[derive(Debug, Default)]
struct Applied {
    /// The kernel's idea of the name is wrong: another kind, or another inode (a link
    /// joined), or a mode or owner an open must be checked against.
    stale: bool,
    notices: Vec<Invalidation>,
    /// The cached data went (a newer version than the listing's).
    dropped: bool,
}

impl Shared {
    /// Reads and applies the metadata of `id` if it is still unread. `Ok(true)` as
    /// [`MetaSource::read_now`] answers.
    pub(super) async fn read_meta(&self, id: EntryId) -> Result<bool, SyncError> {
        let Some(e) = self.store.read(|db| db.get(id))? else {
            return Ok(false);
        };
        if !e.unread {
            return Ok(false);
        }
        let Some(key) = e.synced.key.clone() else {
            self.store.write(|db| db.set_unread(id, false))?;
            return Ok(false);
        };
        let dir = e.kind == Kind::Dir;
        let Some(h) = self.remote.head(&key, dir).await? else {
            // Gone since the listing: the next poll removes it. Nothing to read.
            self.store.write(|db| db.set_unread(id, false))?;
            return Ok(false);
        };
        // A HEAD carries no last-modified on every backend: the listing's stands in for an
        // mtime the object does not carry.
        let h = ObjectInfo {
            last_modified_ns: h.last_modified_ns.or(Some(e.mtime_ns)),
            ..h
        };
        let applied = if dir {
            self.store.write(|db| self.apply_dir(db, &e, &h))?
        } else {
            match self.files.with_closed(id, || {
                self.store.write(|db| self.apply_file(db, &e, &key, &h))
            }) {
                Some(r) => r?,
                // Open (an open in between read it first): the next round looks again.
                None => return Ok(false),
            }
        };
        if applied.dropped {
            // Out of the transaction: the block cache reads the store.
            self.files.version_dropped(id);
        }
        for n in applied.notices {
            self.notify(n);
        }
        Ok(applied.stale)
    }

    fn apply_dir(
        &self,
        db: &crate::store::Db<'_>,
        e: &Entry,
        h: &ObjectInfo,
    ) -> Result<Applied, StoreError> {
        let Some(mut cur) = db.get(e.id)? else {
            return Ok(Applied::default());
        };
        if !cur.unread {
            return Ok(Applied::default());
        }
        let before = (cur.mode, cur.uid, cur.gid, cur.mtime_ns);
        cur.mode = h.meta.mode.unwrap_or(cur.mode);
        cur.uid = h.meta.uid.unwrap_or(cur.uid);
        cur.gid = h.meta.gid.unwrap_or(cur.gid);
        cur.mtime_ns = h.meta.mtime_ns.unwrap_or(cur.mtime_ns);
        db.set_unread(e.id, false)?;
        let mut out = Applied::default();
        if before != (cur.mode, cur.uid, cur.gid, cur.mtime_ns) {
            db.update(&cur)?;
            out.stale = (before.0, before.1, before.2) != (cur.mode, cur.uid, cur.gid);
            out.notices.push(Invalidation::Inode(e.id));
        }
        Ok(out)
    }

    /// Under the file's gate, while nothing has it open.
    fn apply_file(
        &self,
        db: &crate::store::Db<'_>,
        e: &Entry,
        key: &str,
        h: &ObjectInfo,
    ) -> Result<Applied, StoreError> {
        let Some(mut cur) = db.get(e.id)? else {
            return Ok(Applied::default());
        };
        if !cur.unread {
            return Ok(Applied::default());
        }
        let Some(parent) = cur.parent else {
            db.set_unread(e.id, false)?;
            return Ok(Applied::default());
        };
        if cur.dirty != 0 || cur.synced.key.as_deref() != Some(key) {
            // Changed here since it was listed. Every change reads the metadata first, so
            // this is a race lost to one: the change carries its own attributes. (A move
            // leaves the entry clean, its base at the old key until the copy lands: read.)
            db.set_unread(e.id, false)?;
            return Ok(Applied::default());
        }
        let kind = entry_kind(h.kind);
        let mut out = Applied::default();
        let id = if kind != cur.kind {
            // A symlink or special file the listing showed as a file: a new entry (a new
            // inode number, since the kernel cannot change an inode's type).
            db.delete_entry(e.id)?;
            let target = h.meta.symlink.clone().map(String::into_bytes);
            let new = db.insert(&NewEntry {
                parent,
                name: cur.name.clone(),
                kind,
                mode: h.meta.mode.unwrap_or(default_mode(kind)),
                uid: h.meta.uid.unwrap_or(self.cfg.default_uid),
                gid: h.meta.gid.unwrap_or(self.cfg.default_gid),
                size: match kind {
                    Kind::Symlink => target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
                    Kind::File => h.size,
                    Kind::Dir | Kind::Special(_) => 0,
                },
                mtime_ns: h.meta.mtime_ns.unwrap_or(cur.mtime_ns),
                target,
                local: kind != Kind::File,
                synced: base_of(key, h),
                dirty: 0,
                conflict_of: None,
                unread: false,
            })?;
            out.stale = true;
            out.notices.push(Invalidation::Entry {
                parent,
                name: cur.name.clone(),
            });
            new.id
        } else {
            let before = (cur.mode, cur.uid, cur.gid, cur.mtime_ns, cur.size);
            cur.mode = h.meta.mode.unwrap_or(cur.mode);
            cur.uid = h.meta.uid.unwrap_or(cur.uid);
            cur.gid = h.meta.gid.unwrap_or(cur.gid);
            cur.mtime_ns = h.meta.mtime_ns.unwrap_or(cur.mtime_ns);
            cur.size = h.size;
            if h.etag != cur.synced.etag {
                // A new version since the listing: nothing of the old one may be served.
                db.set_local(e.id, false)?;
                let _ = self.cache.remove(e.id);
                tracing::info!(
                    path = key,
                    "a newer version than the listing's; cached data dropped"
                );
                out.dropped = true;
            }
            db.update(&cur)?;
            db.set_synced(e.id, &base_of(key, h))?;
            db.set_unread(e.id, false)?;
            if before != (cur.mode, cur.uid, cur.gid, cur.mtime_ns, cur.size) {
                out.stale = (before.0, before.1, before.2) != (cur.mode, cur.uid, cur.gid);
                out.notices.push(Invalidation::Inode(e.id));
            }
            e.id
        };
        if let Some(group) = h.meta.link.as_deref() {
            db.join_link_group(id, group, h.meta.sha256.as_deref())?;
            if let Some(inode) = db.get(id)?.and_then(|n| n.link_of) {
                // Another name of an inode already here: the name now shows that inode.
                out.stale = true;
                out.notices.push(Invalidation::Entry {
                    parent,
                    name: cur.name.clone(),
                });
                out.notices.push(Invalidation::Inode(inode));
            }
        }
        if h.meta.conflict.is_some() {
            if let Some(copy) = db.get(id)? {
                conflict::adopt_mark(db, &copy, key, h, &self.cfg.writer)?;
            }
        }
        Ok(out)
    }
}

/// Reads unread entries' metadata in the background, and for the core on demand.
pub struct MetaReader {
    ctx: Arc<Shared>,
    rt: tokio::runtime::Handle,
    /// When an on-demand read last got no answer (and that time in ms since the epoch, as the
    /// remote's health records its last answer).
    failed_at: Mutex<Option<(Instant, i64)>>,
}

impl MetaReader {
    pub(super) fn new(ctx: Arc<Shared>, rt: tokio::runtime::Handle) -> MetaReader {
        MetaReader {
            ctx,
            rt,
            failed_at: Mutex::new(None),
        }
    }

    /// Entries whose metadata is still to be read.
    pub fn pending(&self) -> Result<u64, SyncError> {
        Ok(self.ctx.store.read(|db| db.unread_count())?)
    }

    /// Reads every unread entry's metadata, [`READ_CONCURRENCY`] at a time, then returns;
    /// idles while offline, backs off while the remote fails, stops at `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let ctx = &self.ctx;
        let mut after = EntryId(0);
        let mut read = 0u64;
        let mut failures = 0i64;
        let started = std::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(START_DELAY) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            if ctx.remote.health().is_offline() || failures > 0 {
                let wait = if failures > 0 {
                    super::backoff(failures - 1)
                } else {
                    Duration::from_secs(1)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                if ctx.remote.health().is_offline() {
                    continue;
                }
            }
            let batch = match ctx.store.read(|db| db.unread_after(after, BATCH)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the unread entries");
                    failures += 1;
                    continue;
                }
            };
            let Some(&last) = batch.last() else {
                if after == EntryId(0) {
                    if read > 0 {
                        tracing::info!(
                            entries = read,
                            secs = started.elapsed().as_secs_f64(),
                            "metadata of the listed entries read"
                        );
                    }
                    return;
                }
                // Once more from the start: entries left (open, or failed) are retried.
                after = EntryId(0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            let results: Vec<Result<bool, SyncError>> = futures::stream::iter(batch)
                .map(|id| ctx.read_meta(id))
                .buffer_unordered(READ_CONCURRENCY)
                .collect()
                .await;
            let mut transient = false;
            for r in results {
                match r {
                    Ok(_) => read += 1,
                    Err(SyncError::Remote(e)) if e.is_transient() => transient = true,
                    Err(e) => tracing::warn!(error = %e, "reading an entry's metadata"),
                }
            }
            if transient {
                // The batch is taken again (its read entries are no longer unread).
                failures += 1;
            } else {
                failures = 0;
                after = last;
            }
        }
    }
}

impl MetaSource for MetaReader {
    /// A caller waits on this (an `open`), so it fails fast as a data read does: at once
    /// while offline or within [`FAILED_QUIET`] of a read that got no answer (the kernel may
    /// retry at once), and after [`ON_DEMAND_TIMEOUT`] when a server that accepted the
    /// request says nothing (sooner while the remote is known not to answer).
    fn read_now(&self, id: EntryId) -> Result<bool, String> {
        const UNREAD: &str = "this entry's metadata has not been read yet";
        let health = self.ctx.remote.health();
        if health.is_offline() {
            return Err(format!("offline, and {UNREAD}"));
        }
        // Quiet: a read got no answer a moment ago, and the server has answered nothing since.
        let failed = *self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let quiet = failed.is_some_and(|(at, at_ms)| {
            at.elapsed() < FAILED_QUIET && health.last_ok().unwrap_or(0) < at_ms
        });
        if quiet {
            return Err(format!("the remote is not answering, and {UNREAD}"));
        }
        let limit = if health.is_reachable() {
            ON_DEMAND_TIMEOUT
        } else {
            UNREACHABLE_TIMEOUT
        };
        match self
            .rt
            // The timer is made inside the runtime: `timeout` made outside it panics.
            .block_on(async { tokio::time::timeout(limit, self.ctx.read_meta(id)).await })
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => {
                *self
                    .failed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), crate::store::now_ms()));
                Err(format!("the remote gave no answer within {limit:?}"))
            }
        }
    }
}
