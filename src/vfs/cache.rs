//! The core's side of the block cache (`crate::cache`): the gate the sync engine reaches
//! data files through, pins, and the figures `stratus status` shows.

use super::{Vfs, VfsResult};
use std::os::unix::fs::MetadataExt;

use crate::cache::{Base, CacheError, CacheFigures, CacheResult, FileGate};
use crate::store::{dirty, Entry};
use crate::types::{EntryId, Kind};

/// The sync engine's way to the block cache's data files.
impl FileGate for Vfs {
    fn uploaded(&self, id: EntryId) {
        self.blocks.uploaded(id);
    }

    fn version_dropped(&self, id: EntryId) {
        if self.blocks.pinned(id).unwrap_or(false) {
            self.blocks.pins_changed();
        }
    }

    fn changes(&self, id: EntryId) -> crate::cache::Snapshot {
        self.blocks.changes().snapshot(id)
    }

    fn landed(&self, id: EntryId, gen: u64, base: Option<crate::cache::Base>) {
        self.blocks.changes().landed(id, gen, base);
        // A passthrough writer is still open (the upload was let go by its fsync): the
        // kernel may have written since the uploader read the file, and will write on
        // without telling. Armed again before the uploader marks the entry clean, which the
        // moved `dirty_seq` then stops: the entry stays dirty, its upload held to the close.
        let mut live = super::lock(&self.live);
        if let Some(l) = live.get_mut(&id) {
            if l.pass_writers > 0 && !l.armed && !l.unlinked {
                let armed = self
                    .store
                    .write(|db| db.enqueue_sync(id, dirty::CONTENT | dirty::PASSTHROUGH, None));
                match armed {
                    Ok(()) => l.armed = true,
                    Err(e) => {
                        tracing::warn!(id = id.0, error = %e, "could not hold a file open in passthrough mode after its upload")
                    }
                }
            }
        }
    }

    fn run_closed(&self, id: EntryId, f: &mut dyn FnMut()) -> bool {
        let gate = self.blocks.gate(id);
        let _g = super::lock(&gate);
        // Every open of an existing file registers its handle under this gate (`Vfs::open`);
        // `create` registers a new entry, which the sync engine does not know yet.
        if self.blocks.is_open(id) {
            return false;
        }
        f();
        // `f` may have dropped the file's blocks and data file. What this cache knew of them
        // in memory goes too, and is loaded from the database at the next use: a fetch that
        // landed after the last close had loaded the present set again, and a later open read
        // the hole of the new data file where that set said block 0 was (found by
        // `tests/handoff.rs` in one run of seven; the old `is_busy` check had the same gap).
        self.blocks.forget_present(id);
        true
    }

    fn fill(&self, id: EntryId) -> CacheResult<()> {
        let gate = self.blocks.gate(id);
        let _g = super::lock(&gate);
        let e = self
            .store
            .read(|db| db.get(id))?
            .ok_or(CacheError::NotFound)?;
        self.blocks.fill(&e)
    }

    fn fetch_version(
        &self,
        key: &str,
        etag: Option<&str>,
        size: u64,
        dest: &std::path::Path,
    ) -> CacheResult<()> {
        self.blocks.fetch_version(key, etag, size, dest)
    }
}

impl Vfs {
    /// Starts the change record of `e` (read before this change is committed) if this run
    /// has none: from its synced version if the entry is clean (whatever blocks its data file
    /// holds are that version's), else unknown (its next upload is whole). Call before the first [`Vfs::note_change`] of a change.
    pub(super) fn start_changes(&self, e: &Entry) {
        let changes = self.blocks.changes();
        if changes.knows(e.id) {
            return;
        }
        let base = (e.kind == Kind::File && e.dirty & dirty::CONTENT == 0)
            .then_some(())
            .and_then(|()| e.synced.key.as_ref().and(e.synced.etag.clone()))
            .and_then(|etag| {
                let ino = std::fs::metadata(self.cache.path(e.id)).ok()?.ino();
                Some(Base {
                    etag,
                    len: e.size,
                    ino,
                })
            });
        changes.start(e.id, base);
    }

    /// Bytes `range` of `id` are about to change (`done` false) or have changed.
    pub(super) fn note_change(&self, id: EntryId, range: std::ops::Range<u64>, done: bool) {
        self.blocks.changes().note(id, range, done);
    }

    /// `user.stratus.pin`: whether `ino` is pinned, by itself or by a directory above it.
    pub fn pinned(&self, ino: EntryId) -> VfsResult<bool> {
        Ok(self.blocks.pinned(ino)?)
    }

    /// Pins or unpins `ino` (see [`crate::cache::BlockCache::set_pinned`]).
    pub fn set_pinned(&self, ino: EntryId, on: bool) -> VfsResult<()> {
        Ok(self.blocks.set_pinned(ino, on)?)
    }

    /// `none`, `partial`, `full` or `pinned` (pinned and wholly here): how much of a file's
    /// data is on this machine.
    pub fn cache_state(&self, ino: EntryId) -> VfsResult<&'static str> {
        Ok(self.blocks.cache_state(ino)?)
    }

    pub fn cache_budget(&self) -> u64 {
        self.blocks.budget()
    }

    /// Bytes of evictable cached blocks, as the eviction budget counts them.
    pub fn cached_bytes(&self) -> u64 {
        self.blocks.cached_bytes()
    }

    /// Evicts every clean, unpinned cached block now (`stratus clean --cache`).
    pub fn evict_clean(&self) {
        self.blocks.evict_clean();
    }

    pub fn cache_figures(&self) -> VfsResult<CacheFigures> {
        Ok(self.blocks.figures()?)
    }
}
