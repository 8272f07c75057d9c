//! Brings remote changes in: one listing compared with the last synced versions, each path
//! decided by `reconcile::decide`, each change applied in its own short transaction that
//! re-checks the local side first (the user may have written meanwhile).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::conflict::Conflicts;
use super::reconcile::{decide, Action, Local, Remote as RemoteSide};
use super::{Invalidation, Shared, SyncError};
use crate::remote::{hash_file, ObjectInfo, ObjectKind};
use crate::store::{
    dirty, now_ms, now_ns, Entry, Event, EventKind, JobKind, JobState, NewEntry, StoreError, Synced,
};
use crate::types::{EntryId, Kind};

/// Paths of all live entries, from one snapshot of the tree.
fn paths_of(entries: &HashMap<EntryId, Entry>) -> HashMap<EntryId, String> {
    fn walk(
        id: EntryId,
        entries: &HashMap<EntryId, Entry>,
        memo: &mut HashMap<EntryId, Option<String>>,
    ) -> Option<String> {
        if id == EntryId::ROOT {
            return Some(String::new());
        }
        if let Some(p) = memo.get(&id) {
            return p.clone();
        }
        let e = entries.get(&id)?;
        let p = e.parent.and_then(|parent| {
            let pp = walk(parent, entries, memo)?;
            let name = std::str::from_utf8(&e.name).ok()?;
            Some(if pp.is_empty() {
                name.to_string()
            } else {
                format!("{pp}/{name}")
            })
        });
        memo.insert(id, p.clone());
        p
    }
    let mut memo = HashMap::new();
    let mut out = HashMap::new();
    for id in entries.keys() {
        if let Some(p) = walk(*id, entries, &mut memo) {
            out.insert(*id, p);
        }
    }
    out
}

/// A listing as `Remote::list` gives it (normalized: sorted by key, each key once), looked up
/// by key. Kept as the listing's own vector: a map of it cost a second copy of every row and
/// key, which a poll of a big bucket paid on every poll.
struct Listing(Vec<ObjectInfo>);

impl Listing {
    fn get(&self, key: &str) -> Option<&ObjectInfo> {
        self.0
            .binary_search_by(|o| o.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i])
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

pub(super) fn default_mode(kind: Kind) -> u32 {
    match kind {
        Kind::File | Kind::Special(_) => 0o644,
        Kind::Dir => 0o755,
        Kind::Symlink => 0o777,
    }
}

/// Lists the remote and brings in what changed there; a change over a local one goes to the
/// conflict engine.
pub struct Poller {
    ctx: Arc<Shared>,
    conflicts: Conflicts,
    /// Held for a whole poll: the engine's polls and a direct [`Poller::poll`] never overlap.
    polling: tokio::sync::Mutex<()>,
}

impl Poller {
    pub(super) fn new(ctx: Arc<Shared>, conflicts: Conflicts) -> Poller {
        Poller {
            ctx,
            conflicts,
            polling: tokio::sync::Mutex::new(()),
        }
    }

    /// Lists the remote and applies what changed there.
    pub async fn poll(&self) -> Result<(), SyncError> {
        let _one_at_a_time = self.polling.lock().await;
        self.ctx.remote.health().poll_started();
        let listing = self.ctx.remote.list().await?;
        let remote = Listing(listing);
        let (entries, jobs, sent, deletes) = self.ctx.store.read(|db| {
            let entries: HashMap<EntryId, Entry> =
                db.all_entries()?.into_iter().map(|e| (e.id, e)).collect();
            let (mut jobs, mut sent) = (HashSet::new(), HashSet::new());
            for j in db.pending_up_to(i64::MAX)? {
                if let JobKind::Sync(id) = j.kind {
                    jobs.insert(id);
                    if !j.tried.is_empty() && j.state != JobState::Parked {
                        sent.insert(id);
                    }
                }
            }
            Ok::<_, StoreError>((entries, jobs, sent, db.pending_deletes()?))
        })?;
        let paths = paths_of(&entries);
        let by_path: HashMap<&str, EntryId> =
            paths.iter().map(|(id, p)| (p.as_str(), *id)).collect();
        let mut based: HashSet<&str> = HashSet::new();

        // 1. Files and symlinks that have a base: did the remote change them?
        for e in entries.values() {
            // `.conflict` copies take part like any file: they are synced objects.
            if e.kind == Kind::Dir || e.id == EntryId::ROOT {
                continue;
            }
            let (Some(key), Some(path)) = (e.synced.key.as_deref(), paths.get(&e.id)) else {
                continue;
            };
            // Known here even when moved away: otherwise the old key would look like a new
            // remote object and come back as a second entry. (Regression: a rename right
            // after mounting left both names on the remote.)
            based.insert(key);
            if path != key {
                // Moved away locally: the journal carries the move.
                continue;
            }
            let r = remote.get(key).filter(|o| o.kind != ObjectKind::Dir);
            let rside = match r {
                None => RemoteSide::Deleted,
                Some(o) if o.etag == e.synced.etag => continue,
                Some(_) => RemoteSide::Modified,
            };
            if sent.contains(&e.id) {
                // Its job sent a version and did not hear back (an answer lost): the change
                // may be that version. The job's next attempt meets it through its condition
                // and tells ours from another writer's (`write_conflict`); taken here for a
                // remote edit, it was a conflict with ourselves. (Found by the in-process
                // model test over the faulty remote.)
                continue;
            }
            let lside = if e.dirty != 0 || jobs.contains(&e.id) {
                Local::Modified
            } else {
                Local::Unchanged
            };
            if let Some(of) = e.link_of {
                self.link_changed(e, of, key, lside, rside).await?;
                continue;
            }
            if e.link_group.is_some()
                && lside == Local::Unchanged
                && self.inode_name_changed(e, key, rside, &remote).await?
            {
                continue;
            }
            self.apply(e, key, lside, rside).await?;
        }

        // 1b. Open conflicts settled as "keep both" on another mount: the copy lost its mark.
        //     S3 keeps an object's ETag when only its metadata changes, so the listing cannot
        //     tell; open conflicts are few, and each costs one HEAD per poll.
        for e in entries.values().filter(|e| e.conflict_of.is_some()) {
            let (Some(key), Some(path)) = (e.synced.key.as_deref(), paths.get(&e.id)) else {
                continue;
            };
            if path != key || remote.get(key).map(|o| &o.etag) != Some(&e.synced.etag) {
                continue;
            }
            if let Some(h) = self.ctx.remote.head(key, false).await? {
                let marked =
                    h.meta.conflict.as_ref().is_some_and(|m| {
                        super::conflict::is_conflict_name(&e.name, m.of.as_bytes())
                    });
                if !marked {
                    self.ctx.store.write(|db| {
                        if let Some(c) = db.open_conflict_of_copy(e.id)? {
                            db.set_conflict_of(e.id, None)?;
                            db.resolve_conflict(c.id, "both (on another mount)")?;
                        }
                        Ok::<_, StoreError>(())
                    })?;
                }
            }
        }

        // 2. Remote keys nothing here has a base for: new objects, directories, a delete of
        //    ours that a remote edit overtook, or a path both sides created.
        let mut marked = Vec::new();
        for o in remote.0.iter() {
            let key = &o.key;
            if based.contains(key.as_str()) {
                continue;
            }
            match by_path.get(key.as_str()).and_then(|id| entries.get(id)) {
                Some(e) if o.kind == ObjectKind::Dir => {
                    if e.kind == Kind::Dir && e.synced.key.is_none() && o.etag.is_some() {
                        self.ctx.store.write(|db| {
                            db.set_synced(
                                e.id,
                                &Synced {
                                    key: Some(key.clone()),
                                    etag: o.etag.clone(),
                                    ..Default::default()
                                },
                            )
                        })?;
                    }
                }
                Some(e) if e.kind == Kind::Dir => {
                    tracing::warn!(%key, "remote object where the mount has a directory; left alone");
                }
                Some(e) if e.synced.key.is_some() && jobs.contains(&e.id) => {
                    // Moving here from its old key: the object may be our own copy, half
                    // way through the move. The job finishes it (and compares first).
                }
                Some(_)
                    if deletes.iter().any(|j| {
                        matches!(&j.kind, JobKind::Delete { key: k, etag, .. }
                            if k == key && (etag.is_none() || *etag == o.etag))
                    }) =>
                {
                    // The version a delete of ours still has to remove (the file was deleted
                    // here and created again): not the other side of a conflict. The queue
                    // removes it, or replaces it conditioned on it. (Found by the faults
                    // test: a poll between the two made a conflict copy of our own file.)
                }
                Some(e) => {
                    // Created on both sides without a common base. (Regression: before the
                    // conflict moved our version aside, the entry stayed "created" and every
                    // poll made another copy: 7 after 20 s at a 3 s interval.)
                    self.apply(e, key, Local::Created, RemoteSide::Created)
                        .await?;
                }
                None => {
                    let pending = deletes.iter().find_map(|j| match &j.kind {
                        JobKind::Delete { key: k, etag, .. } if k == key => {
                            Some((j.seq, etag.clone()))
                        }
                        _ => None,
                    });
                    match pending {
                        Some((_, etag)) if o.kind == ObjectKind::Dir || etag == o.etag => {}
                        Some((seq, _)) => {
                            // Deleted here, edited there: the edit wins.
                            if decide(Local::Deleted, RemoteSide::Modified, false)
                                == Action::Restore
                            {
                                self.ctx.store.write(|db| db.remove_job(seq))?;
                                marked.extend(self.create_from_remote(key, o).await?);
                            }
                        }
                        None => marked.extend(self.create_from_remote(key, o).await?),
                    }
                }
            }
        }

        self.adopt_marks(marked)?;

        // 3. Directories the remote no longer has, deepest first. One that still holds
        //    local changes keeps them (and gets its marker back). Where the remote cannot
        //    store an empty directory, its absence proves nothing: all are kept.
        let markers = self.ctx.remote.has_dir_markers();
        let mut dirs: Vec<(&String, &Entry)> = entries
            .values()
            .filter(|_| markers)
            .filter(|e| e.kind == Kind::Dir && e.id != EntryId::ROOT && e.conflict_of.is_none())
            .filter_map(|e| paths.get(&e.id).map(|p| (p, e)))
            .filter(|(p, _)| !remote.contains_key(p.as_str()))
            .collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.matches('/').count()));
        for (path, e) in dirs {
            let came_from_remote = e.synced.key.as_deref() == Some(path.as_str())
                || (e.synced.key.is_none() && !jobs.contains(&e.id));
            if !came_from_remote {
                continue;
            }
            let removed = self.ctx.store.write(|db| {
                let Some(cur) = db.get(e.id)? else {
                    return Ok::<_, StoreError>(None);
                };
                if db.has_children(e.id)? || db.job_for(e.id)?.is_some() {
                    if cur.synced.key.is_some() {
                        db.set_synced(e.id, &Synced::default())?;
                        db.enqueue_sync(e.id, dirty::META, Some(now_ms()))?;
                    }
                    return Ok(None);
                }
                db.delete_entry(e.id)?;
                Ok(cur.parent.map(|p| (p, cur.name)))
            })?;
            if let Some((parent, name)) = removed {
                self.ctx.notify(Invalidation::Entry { parent, name });
            }
        }
        let files = remote.0.iter().filter(|o| o.kind != ObjectKind::Dir);
        let (n, bytes) = files.fold((0u64, 0u64), |(n, b), o| (n + 1, b + o.size));
        self.ctx.remote.health().listed(n, bytes);
        self.ctx.remote.health().poll_done();
        Ok(())
    }

    async fn apply(
        &self,
        e: &Entry,
        key: &str,
        lside: Local,
        rside: RemoteSide,
    ) -> Result<(), SyncError> {
        let head = match rside {
            RemoteSide::Deleted | RemoteSide::Absent => None,
            _ => match self.ctx.remote.head(key, false).await? {
                Some(h) => Some(h),
                // Gone again since the listing: next poll.
                None => return Ok(()),
            },
        };
        let same = match (&head, lside) {
            (Some(h), Local::Modified | Local::Created) => self.same_content(e, h).await,
            _ => false,
        };
        match decide(lside, rside, same) {
            Action::TakeRemote => {
                self.take_remote(e, key, head.as_ref().expect("remote side exists"))
            }
            Action::DeleteLocal => self.delete_local(e),
            Action::AdoptBase => {
                let h = head.expect("remote side exists");
                self.ctx
                    .store
                    .write(|db| db.set_synced(e.id, &super::base_of(key, &h)))?;
                Ok(())
            }
            Action::Conflict => {
                // Postponed (an open file) means: the next poll looks again.
                self.conflicts
                    .keep_both(e, key, head.as_ref().expect("remote side exists"))
                    .await
                    .map(|_| ())
            }
            Action::Reupload => {
                self.ctx.store.write(|db| {
                    db.set_synced(e.id, &Synced::default())?;
                    db.enqueue_sync(e.id, dirty::CONTENT | dirty::META, Some(now_ms()))
                })?;
                Ok(())
            }
            Action::Nothing | Action::Upload | Action::DeleteRemote | Action::Restore => Ok(()),
        }
    }

    /// A further hard link's key changed on the remote. Another mount's new version of the
    /// inode (its copy carries the link group) only moves this name's base: the inode's own
    /// key brings the content. Anything else (another tool wrote or deleted the name) detaches
    /// the name: it becomes a file of its own, taken from the remote like any file. The inode
    /// keeps its content under its other names, so nothing written here is lost.
    async fn link_changed(
        &self,
        e: &Entry,
        of: EntryId,
        key: &str,
        lside: Local,
        rside: RemoteSide,
    ) -> Result<(), SyncError> {
        let Some(parent) = e.parent else {
            return Ok(());
        };
        let head = match rside {
            RemoteSide::Deleted | RemoteSide::Absent => None,
            _ => match self.ctx.remote.head(key, false).await? {
                Some(h) => Some(h),
                None => return Ok(()),
            },
        };
        let group = self
            .ctx
            .store
            .read(|db| db.get(of))?
            .and_then(|i| i.link_group);
        if let Some(h) = &head {
            if h.meta.link.is_some() && h.meta.link == group && h.meta.sha256.is_some() {
                self.ctx
                    .store
                    .write(|db| db.set_synced(e.id, &super::base_of(key, h)))?;
                return Ok(());
            }
        }
        if head.is_none() && lside != Local::Unchanged {
            // Its own job puts the name back.
            return Ok(());
        }
        let detached = self.ctx.store.write(|db| {
            let Some(cur) = db.get(e.id)? else {
                return Ok::<_, StoreError>(None);
            };
            if cur.dirty_seq != e.dirty_seq && head.is_none() {
                return Ok(None);
            }
            if head.is_none() {
                db.delete_entry(e.id)?;
                return Ok(None);
            }
            // Whatever copy of the inode this name still waited for is moot now.
            if let Some(job) = db.job_for(e.id)? {
                db.remove_job(job.seq)?;
            }
            db.set_link_of(e.id, None)?;
            db.mark_clean(e.id)?;
            db.get(e.id)
        })?;
        if let Some(d) = detached {
            tracing::info!(
                path = key,
                "a hard link edited elsewhere is a file of its own now"
            );
            self.apply(&d, key, Local::Unchanged, rside).await?;
        }
        self.ctx.notify(Invalidation::Entry {
            parent,
            name: e.name.clone(),
        });
        self.ctx.notify(Invalidation::Inode(of));
        Ok(())
    }

    /// The key of an inode with further names was deleted or written by another tool: the
    /// inode moves to one of its other names (keeping its content), and what is at the key
    /// now, if anything, comes in as a new file. `false` when it has no other name left, or
    /// the change is another mount's new version of the inode (same link group).
    async fn inode_name_changed(
        &self,
        e: &Entry,
        key: &str,
        rside: RemoteSide,
        remote: &Listing,
    ) -> Result<bool, SyncError> {
        let Some(parent) = e.parent else {
            return Ok(false);
        };
        let head = match rside {
            RemoteSide::Deleted | RemoteSide::Absent => None,
            _ => match self.ctx.remote.head(key, false).await? {
                Some(h)
                    if h.meta.link.is_some()
                        && h.meta.link == e.link_group
                        && h.meta.sha256.is_some() =>
                {
                    return Ok(false)
                }
                Some(h) => Some(h),
                None => return Ok(true),
            },
        };
        let moved = self.ctx.files.with_closed(e.id, || {
            self.ctx.store.write(|db| {
                let Some(cur) = db.get(e.id)? else {
                    return Ok::<_, StoreError>(None);
                };
                if cur.dirty_seq != e.dirty_seq || db.job_for(e.id)?.is_some() {
                    return Ok(None);
                }
                // A name whose object the listing shows unchanged: one changed too is split
                // off by its own turn in this poll, and the inode must not move onto it.
                let unchanged = |l: &Entry| {
                    l.synced
                        .key
                        .as_ref()
                        .is_some_and(|k| remote.get(k).is_some_and(|o| o.etag == l.synced.etag))
                };
                let Some(other) = db.links_of(e.id)?.into_iter().find(unchanged) else {
                    return Ok(None);
                };
                db.take_name_of_link(e.id, &other)?;
                Ok(Some(other))
            })
        });
        let Some(Ok(Some(other))) = moved else {
            return Ok(false);
        };
        tracing::info!(
            path = key,
            "a hard-linked name changed elsewhere; the inode keeps its other names"
        );
        self.ctx.notify(Invalidation::Entry {
            parent,
            name: e.name.clone(),
        });
        if let Some(p) = other.parent {
            self.ctx.notify(Invalidation::Entry {
                parent: p,
                name: other.name.clone(),
            });
        }
        self.ctx.notify(Invalidation::Inode(e.id));
        if let Some(h) = head {
            self.store_new(key, &h)?;
        }
        Ok(true)
    }

    /// Whether the local data of `e` has the SHA-256 the remote object carries.
    async fn same_content(&self, e: &Entry, r: &ObjectInfo) -> bool {
        let Some(remote_hash) = r.meta.sha256.clone() else {
            return false;
        };
        if e.kind != Kind::File {
            return e
                .target
                .as_deref()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                == r.meta.symlink
                && r.meta.symlink.is_some();
        }
        if !e.local {
            return e.synced.hash.as_deref() == Some(remote_hash.as_str());
        }
        let path = self.ctx.cache.path(e.id);
        tokio::task::spawn_blocking(move || hash_file(&path).ok())
            .await
            .ok()
            .flatten()
            .is_some_and(|h| h == remote_hash)
    }

    /// The remote version replaces an unchanged local one: attributes now, data on next open.
    /// Never under an open handle (next poll), and under the file's gate, so that no open
    /// sees the old row with the new data or holds a data file deleted here.
    fn take_remote(&self, e: &Entry, key: &str, r: &ObjectInfo) -> Result<(), SyncError> {
        self.ctx
            .files
            .with_closed(e.id, || self.take_remote_closed(e, key, r))
            .unwrap_or(Ok(()))
    }

    /// [`Self::take_remote`], run under the file's gate while nothing has it open.
    fn take_remote_closed(&self, e: &Entry, key: &str, r: &ObjectInfo) -> Result<(), SyncError> {
        let want_kind = match r.kind {
            ObjectKind::Symlink => Kind::Symlink,
            ObjectKind::Special(s) => Kind::Special(s),
            _ => Kind::File,
        };
        if want_kind != e.kind {
            // A file became a symlink or the reverse (or a fifo, or another device): replace
            // the entry.
            self.delete_local_closed(e)?;
            return self.store_new(key, r);
        }
        let took = self.ctx.store.write(|db| {
            let Some(mut cur) = db.get(e.id)? else {
                return Ok::<_, StoreError>(false);
            };
            if cur.dirty_seq != e.dirty_seq || cur.dirty != 0 || db.job_for(e.id)?.is_some() {
                return Ok(false);
            }
            cur.size = match want_kind {
                Kind::Symlink => r.meta.symlink.as_ref().map(|t| t.len() as u64).unwrap_or(0),
                Kind::Special(_) => 0,
                _ => r.size,
            };
            cur.mtime_ns = r
                .meta
                .mtime_ns
                .or(r.last_modified_ns)
                .unwrap_or_else(now_ns);
            cur.ctime_ns = now_ns();
            cur.mode = r.meta.mode.unwrap_or(cur.mode);
            cur.uid = r.meta.uid.unwrap_or(cur.uid);
            cur.gid = r.meta.gid.unwrap_or(cur.gid);
            cur.target = r.meta.symlink.clone().map(String::into_bytes);
            cur.local = want_kind != Kind::File;
            db.update(&cur)?;
            // The cached data (whole or in blocks) is the old version's.
            db.set_local(e.id, cur.local)?;
            db.set_synced(e.id, &super::base_of(key, r))?;
            // `r` is a HEAD: its metadata is read.
            db.set_unread(e.id, false)?;
            if let Some(c) = db.open_conflict_of_copy(e.id)? {
                let still_marked =
                    r.meta.conflict.as_ref().is_some_and(|m| {
                        super::conflict::is_conflict_name(&cur.name, m.of.as_bytes())
                    });
                if !still_marked {
                    // Kept as an ordinary file on another mount.
                    db.set_conflict_of(e.id, None)?;
                    db.resolve_conflict(c.id, "both (on another mount)")?;
                }
            }
            db.record(
                &Event::new(EventKind::RemoteChange)
                    .path(key)
                    .bytes(cur.size)
                    .detail("changed"),
            )?;
            Ok(true)
        })?;
        if took {
            if e.kind == Kind::File {
                let _ = self.ctx.cache.remove(e.id);
            }
            tracing::info!(path = key, "remote change taken");
            self.ctx.notify(Invalidation::Inode(e.id));
        }
        Ok(())
    }

    /// Removes an entry deleted remotely and unchanged here; left for the next poll while
    /// the file is open.
    fn delete_local(&self, e: &Entry) -> Result<(), SyncError> {
        self.ctx
            .files
            .with_closed(e.id, || self.delete_local_closed(e))
            .unwrap_or(Ok(()))
    }

    /// [`Self::delete_local`], run under the file's gate while nothing has it open.
    fn delete_local_closed(&self, e: &Entry) -> Result<(), SyncError> {
        let gone = self.ctx.store.write(|db| {
            let Some(cur) = db.get(e.id)? else {
                return Ok::<_, StoreError>(None);
            };
            if cur.dirty_seq != e.dirty_seq || cur.dirty != 0 || db.job_for(e.id)?.is_some() {
                return Ok(None);
            }
            if let Some(c) = db.open_conflict_for(e.id)? {
                // Settled on another mount: by deleting the copy, by renaming it over the
                // original, or by deleting the original.
                let how = if c.copy_id == e.id.0 {
                    "copy removed on another mount"
                } else {
                    "original removed on another mount"
                };
                if let Some(copy) = db.get(EntryId(c.copy_id))? {
                    if copy.id != e.id {
                        db.set_conflict_of(copy.id, None)?;
                    }
                }
                db.resolve_conflict(c.id, how)?;
            }
            db.delete_entry(e.id)?;
            if let Some(key) = &cur.synced.key {
                db.record(&Event::new(EventKind::RemoteDelete).path(key.trim_end_matches('/')))?;
            }
            Ok(cur.parent.map(|p| (p, cur.name)))
        })?;
        if let Some((parent, name)) = gone {
            let _ = self.ctx.cache.remove(e.id);
            tracing::info!(name = %String::from_utf8_lossy(&name), "deleted remotely; removed here");
            self.ctx.notify(Invalidation::Entry { parent, name });
        }
        Ok(())
    }

    /// Returns the object when it carries a conflict mark, to be recorded once the whole
    /// listing is in (the copy sorts before its original).
    async fn create_from_remote(
        &self,
        key: &str,
        listed: &ObjectInfo,
    ) -> Result<Option<ObjectInfo>, SyncError> {
        if listed.kind == ObjectKind::Dir {
            self.store_new(key, listed)?;
            return Ok(None);
        }
        match self.ctx.remote.head(key, false).await? {
            Some(h) => {
                let o = ObjectInfo {
                    last_modified_ns: listed.last_modified_ns,
                    ..h
                };
                self.store_new(key, &o)?;
                Ok(o.meta.conflict.is_some().then_some(o))
            }
            None => Ok(None),
        }
    }

    /// Records the conflicts that newly seen `.conflict` copies name.
    fn adopt_marks(&self, marked: Vec<ObjectInfo>) -> Result<(), SyncError> {
        for o in marked {
            self.ctx.store.write(|db| {
                let Some(copy) = db.resolve(o.key.as_bytes())? else {
                    return Ok::<_, StoreError>(false);
                };
                super::conflict::adopt_mark(db, &copy, &o.key, &o, &self.ctx.cfg.writer)
            })?;
        }
        Ok(())
    }

    /// Inserts an entry for a remote object, with any missing parent directories.
    fn store_new(&self, key: &str, r: &ObjectInfo) -> Result<(), SyncError> {
        let kind = super::entry_kind(r.kind);
        let created = self.ctx.store.write(|db| {
            let mut parent = EntryId::ROOT;
            let mut first_new: Option<(EntryId, Vec<u8>)> = None;
            let parts: Vec<&str> = key.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                match db.lookup(parent, part.as_bytes())? {
                    Some(existing) if !last => {
                        if existing.kind != Kind::Dir {
                            tracing::warn!(key, "remote object below a local file; left alone");
                            return Ok::<_, StoreError>(None);
                        }
                        parent = existing.id;
                    }
                    Some(_) => return Ok(None),
                    None => {
                        let this_kind = if last { kind } else { Kind::Dir };
                        let e = db.insert(&NewEntry {
                            parent,
                            name: part.as_bytes().to_vec(),
                            kind: this_kind,
                            mode: if last {
                                r.meta.mode.unwrap_or(default_mode(kind))
                            } else {
                                0o755
                            },
                            uid: r.meta.uid.unwrap_or(self.ctx.cfg.default_uid),
                            gid: r.meta.gid.unwrap_or(self.ctx.cfg.default_gid),
                            size: match (last, kind) {
                                (true, Kind::File) => r.size,
                                (true, Kind::Symlink) => {
                                    r.meta.symlink.as_ref().map(|t| t.len() as u64).unwrap_or(0)
                                }
                                _ => 0,
                            },
                            mtime_ns: if last {
                                r.meta
                                    .mtime_ns
                                    .or(r.last_modified_ns)
                                    .unwrap_or_else(now_ns)
                            } else {
                                now_ns()
                            },
                            target: if last {
                                r.meta.symlink.clone().map(String::into_bytes)
                            } else {
                                None
                            },
                            local: this_kind != Kind::File,
                            synced: if last && (kind != Kind::Dir || r.etag.is_some()) {
                                super::base_of(key, r)
                            } else {
                                Synced::default()
                            },
                            dirty: 0,
                            conflict_of: None,
                            unread: false,
                        })?;
                        if first_new.is_none() {
                            first_new = Some((parent, part.as_bytes().to_vec()));
                        }
                        if let Some(group) = r.meta.link.as_deref().filter(|_| last) {
                            db.join_link_group(e.id, group, r.meta.sha256.as_deref())?;
                        }
                        parent = e.id;
                    }
                }
            }
            if first_new.is_some() {
                let mut ev = Event::new(EventKind::RemoteChange).path(key).detail("new");
                if kind == Kind::File {
                    ev = ev.bytes(r.size);
                }
                db.record(&ev)?;
            }
            Ok(first_new)
        })?;
        if let Some((parent, name)) = created {
            tracing::info!(path = key, "new remote entry");
            self.ctx.notify(Invalidation::Entry { parent, name });
        }
        Ok(())
    }
}
