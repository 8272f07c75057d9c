//! Attributes: what getattr and lookup show (the database's row, overlaid with an open
//! file's size and mtime) and what setattr changes (mode, owner, times, truncate).

use super::{lock, ns_to_time, time_to_ns, Attr, Live, SetAttr, Vfs, VfsError, VfsResult};
use crate::store::{dirty, now_ns, Db, Entry};
use crate::types::{EntryId, Kind};

impl Vfs {
    pub(super) fn attr_of(&self, e: &Entry, live: Option<&Live>) -> Attr {
        let (size, mtime_ns) = match live {
            // The kernel writes this file without telling the core: the data file knows.
            Some(l) if l.pass_writers > 0 => {
                self.data_file_attrs(e.id).unwrap_or((l.size, l.mtime_ns))
            }
            Some(l) => (l.size, l.mtime_ns),
            None => (e.size, e.mtime_ns),
        };
        Attr {
            ino: e.id.0,
            kind: e.kind,
            size,
            perm: (e.mode & 0o7777) as u16,
            nlink: match (e.kind, e.parent.is_some() || e.id == EntryId::ROOT) {
                (_, false) => 0,
                (Kind::Dir, true) => 2,
                (_, true) => 1,
            },
            uid: e.uid,
            gid: e.gid,
            atime: ns_to_time(e.atime_ns),
            mtime: ns_to_time(mtime_ns),
            ctime: ns_to_time(e.ctime_ns.max(mtime_ns)),
        }
    }

    pub(super) fn attr(&self, e: &Entry) -> Attr {
        let a = {
            let live = lock(&self.live);
            self.attr_of(e, live.get(&e.id))
        };
        self.with_links(e, a)
    }

    /// The attributes of the entry `read` finds, read under the `live` lock. A copy read
    /// outside it may predate a release that has since written the file's size back and
    /// dropped its live state; combined, they show the size from before the writes.
    /// (Regression: `stat` right after `close` and `chmod` showed a 50 kB file as empty.)
    pub(super) fn fresh_attr(
        &self,
        read: impl FnOnce(&Db<'_>) -> crate::store::StoreResult<Option<Entry>>,
    ) -> VfsResult<Attr> {
        let (e, a) = {
            let live = lock(&self.live);
            let e = self.store.read(read)?.ok_or(VfsError::NotFound)?;
            let a = self.attr_of(&e, live.get(&e.id));
            (e, a)
        };
        Ok(self.with_links(&e, a))
    }

    pub(super) fn with_links(&self, e: &Entry, mut a: Attr) -> Attr {
        if e.link_group.is_some() && e.parent.is_some() {
            if let Ok(n) = self.store.read(|db| db.link_count(e.id)) {
                a.nlink = n;
            }
        }
        if e.kind == Kind::Dir {
            // A directory is linked from its parent, from its own '.', and from the '..' of
            // each subdirectory.
            if let Ok(n) = self.store.read(|db| db.subdir_count(e.id)) {
                a.nlink = 2 + n as u32;
            }
        }
        a
    }

    pub fn getattr(&self, ino: EntryId) -> VfsResult<Attr> {
        match self.fresh_attr(|db| db.get(ino)) {
            // A directory removed while open: fstat on it answers, with nlink 0.
            Err(VfsError::NotFound) => lock(&self.gone_dirs)
                .get(&ino)
                .cloned()
                .ok_or(VfsError::NotFound),
            other => other,
        }
    }

    pub fn setattr(&self, ino: EntryId, set: &SetAttr) -> VfsResult<Attr> {
        // The change goes up with all the entry's attributes: the real ones, not defaults.
        self.read_meta_first(ino)?;
        let mut e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        let now = now_ns();
        let mut flags = 0;
        let mut truncate_to = None;
        let mut truncate_changes = None;
        let gate;
        let mut _gate_guard = None;
        if let Some(size) = set.size {
            if e.kind == Kind::Dir {
                return Err(VfsError::IsDir);
            }
            if e.kind != Kind::File {
                return Err(VfsError::Invalid("truncate of a symlink".into()));
            }
            // Held to the end: nothing may evict or retire the data file while it is made
            // whole and cut.
            gate = self.blocks.gate(e.id);
            _gate_guard = Some(lock(&gate));
            e = self
                .store
                .read(|db| db.get(ino))?
                .ok_or(VfsError::NotFound)?;
            if !e.local && size > 0 {
                self.blocks.fill(&e)?;
            }
            // Before anything changes: the entry as it is now says whether the data file
            // is the remote's version. Everything between the two lengths changes.
            self.start_changes(&e);
            truncate_changes = Some(size.min(e.size)..size.max(e.size));
            self.note_change(e.id, size.min(e.size)..size.max(e.size), false);
            // Emptied without a fetch: the old blocks go with the commit below.
            e.local = true;
            truncate_to = Some(size);
            e.size = size;
            e.mtime_ns = now;
            flags |= dirty::CONTENT;
        }
        if let Some(mode) = set.mode {
            e.mode = mode & 0o7777;
            flags |= dirty::META;
        }
        if let Some(uid) = set.uid {
            e.uid = uid;
            flags |= dirty::META;
        }
        if let Some(gid) = set.gid {
            e.gid = gid;
            flags |= dirty::META;
        }
        if let Some(t) = set.mtime {
            e.mtime_ns = time_to_ns(t);
            flags |= dirty::META;
        }
        if let Some(t) = set.atime {
            e.atime_ns = time_to_ns(t);
        }
        e.ctime_ns = now;
        let mut live = lock(&self.live);
        // Growing: the data file first, so that a length it refuses (EFBIG past the disk
        // filesystem's largest file) fails the call before anything is committed. A crash
        // before the commit leaves a longer data file, which `recover` cuts back to the
        // committed size: the bytes past it were zeros. Shrinking goes the other way (below).
        // (Regression: `truncate -s 20T` answered EFBIG after committing 20 TiB, which then
        // counted as dirty data, blocked writers and made the state dir refuse to mount.)
        let grown_from = match truncate_to {
            Some(size) => {
                let len = self.cache.len(e.id)?.unwrap_or(0);
                if size > len {
                    self.cache.set_len(e.id, size)?;
                    Some(len)
                } else {
                    None
                }
            }
            None => None,
        };
        let ready = match live.get(&e.id) {
            Some(l) if l.armed => None,
            _ => Some(self.ready_at()),
        };
        let unlinked = e.parent.is_none() && e.id != EntryId::ROOT;
        let becomes_local = truncate_to.is_some();
        // A shrink commits first and cuts the data file after (below). Its upload must not
        // start in between: the uploader would send the old bytes as the new version and
        // mark the entry clean. So the job is held over the cut and let go after it.
        // (Found by the in-process model test: a truncate never reached the remote, and the
        // next remote edit replaced it silently.)
        let shrinking = truncate_to.is_some() && grown_from.is_none();
        let queued_ready = if shrinking { None } else { ready };
        let committed = self.w(|db| {
            // Only what this call sets is written: the copy read above may be older than a
            // release that just wrote the file's size back. (Regression: a chmod racing the
            // release of a freshly written file wrote size 0 back, and exec of the file
            // failed with ENOEXEC.)
            let mut cur = db.get(e.id)?.ok_or(VfsError::NotFound)?;
            if set.size.is_some() {
                cur.size = e.size;
                cur.mtime_ns = e.mtime_ns;
            }
            if set.mode.is_some() {
                cur.mode = e.mode;
            }
            if set.uid.is_some() {
                cur.uid = e.uid;
            }
            if set.gid.is_some() {
                cur.gid = e.gid;
            }
            if set.mtime.is_some() {
                cur.mtime_ns = e.mtime_ns;
            }
            if set.atime.is_some() {
                cur.atime_ns = e.atime_ns;
            }
            cur.ctime_ns = e.ctime_ns;
            db.update(&cur)?;
            if becomes_local && !cur.local {
                db.set_local(e.id, true)?;
            }
            if flags != 0 && !unlinked && e.id != EntryId::ROOT {
                db.enqueue_sync(e.id, flags, queued_ready)?;
            }
            Ok(cur)
        });
        let e = match committed {
            Ok(e) => e,
            Err(err) => {
                if let Some(len) = grown_from {
                    // Nothing was committed: the data file goes back to what it held.
                    if let Err(undo) = self.cache.set_len(e.id, len) {
                        tracing::warn!(id = e.id.0, error = %undo, "could not cut a data file back after a failed truncate");
                    }
                }
                return Err(err);
            }
        };
        // Only now does the open file's state follow: a failed call changes nothing.
        if let Some(l) = live.get_mut(&e.id) {
            if set.size.is_some() {
                l.size = e.size;
            }
            if set.size.is_some() || set.mtime.is_some() {
                l.mtime_ns = e.mtime_ns;
            }
        }
        let pass_written = live.get(&e.id).is_some_and(|l| l.pass_writers > 0);
        // Shrinking: the data file follows the committed size, never leads it: after a
        // crash in between, `recover` cuts it to the size the database holds. (Regression:
        // it was cut first, and a crash before the commit left the old size, the truncated
        // data and the old content on the remote for good.)
        if becomes_local {
            self.blocks.forget_blocks(e.id);
            self.blocks.forget_dirty_figure();
        }
        if let (Some(size), None) = (truncate_to, grown_from) {
            self.cache.set_len(e.id, size)?;
            // Let the upload go, unless an armed writer holds it anyway. Should this fail,
            // the job stays held until the next mount releases held jobs at `recover`.
            if ready.is_some() && flags != 0 && !unlinked && e.id != EntryId::ROOT {
                if let Err(err) = self.w(|db| Ok(db.set_ready(e.id, ready)?)) {
                    tracing::warn!(id = e.id.0, error = %err, "truncated file's upload stays held until the next mount");
                }
            }
        }
        if let Some(changed) = truncate_changes {
            self.note_change(e.id, changed, true);
        }
        if pass_written && (set.size.is_some() || set.mtime.is_some()) {
            // While the kernel writes it, the data file's mtime is the file's (`attr_of`).
            let t = super::ns_to_time(e.mtime_ns);
            if let Err(err) = self.cache.open_file(e.id, false).and_then(|f| {
                f.set_modified(t)
                    .map_err(|source| crate::cache::CacheError::Io {
                        path: self.cache.path(e.id),
                        source,
                    })
            }) {
                tracing::warn!(id = e.id.0, error = %err, "could not set a data file's mtime");
            }
        }
        // Taken before the lock goes: see `fresh_attr`.
        let a = self.attr_of(&e, live.get(&e.id));
        drop(live);
        Ok(self.with_links(&e, a))
    }
}
