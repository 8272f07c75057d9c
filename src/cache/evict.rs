//! Eviction: least recently used clean blocks go when the budget needs room, and whole files
//! the uploader made clean join the blocks that may go (retire).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::blocks::{disk_bytes, lock};
use super::{BlockCache, CacheResult, BLOCK_SIZE};
use crate::types::EntryId;

impl BlockCache {
    /// Evicts least recently used blocks until `need` more bytes fit the budget next to the
    /// dirty data. The caller holds `for_id`'s gate; blocks of `for_id` in `keep` (being read
    /// or fetched) stay. Another file's blocks are evicted only under that file's gate, taken
    /// without waiting: a file being read right now keeps its blocks until the read is done.
    /// (Regression: a read-ahead that needed room punched the blocks the same read was about
    /// to return.) Blocks of pinned files leave the eviction order instead of the disk.
    pub(super) fn make_room(
        &self,
        need: u64,
        for_id: EntryId,
        keep: &std::ops::RangeInclusive<u64>,
        fetching: &[u64],
    ) {
        self.retire_cleaned();
        let budget = self.cfg.budget;
        let dirty = self.dirty_bytes();
        let mut spared = Vec::new();
        let mut pinned: HashMap<EntryId, bool> = HashMap::new();
        let over = |need: u64| {
            self.cached.load(Ordering::Relaxed)
                + self.reserved.load(Ordering::Relaxed)
                + dirty
                + need
                > budget
        };
        while over(need) {
            let Some(((id, idx), bytes)) = lock(&self.lru).pop_lru() else {
                break;
            };
            let is_pinned = *pinned.entry(id).or_insert_with(|| {
                self.store
                    .read(|db| db.pinned_by(id))
                    .ok()
                    .flatten()
                    .is_some()
            });
            if is_pinned {
                self.cached.fetch_sub(bytes, Ordering::Relaxed);
                continue;
            }
            let gate;
            let _guard = if id == for_id {
                if keep.contains(&idx) || fetching.contains(&idx) {
                    spared.push((id, idx, bytes));
                    continue;
                }
                None
            } else {
                gate = self.gate(id);
                match gate.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => {
                        spared.push((id, idx, bytes));
                        continue;
                    }
                }
            };
            // The kernel reads this file straight from its data file (FUSE passthrough): a
            // hole punched now would read as zeros. It may go once that handle closes.
            if self.is_passthrough(id) {
                spared.push((id, idx, bytes));
                continue;
            }
            // Only a block the database still lists is a cached block: the eviction order
            // can hold stale ones, and punching those would cut into a complete file.
            if self
                .store
                .write(|db| db.drop_block(id, idx))
                .unwrap_or(false)
            {
                let _ = self.files.punch_hole(id, idx * BLOCK_SIZE, BLOCK_SIZE);
            }
            if let Some(set) = lock(&self.present).get_mut(&id) {
                set.remove(&idx);
            }
            self.cached.fetch_sub(bytes, Ordering::Relaxed);
        }
        // Spared blocks keep their place at the old end of the order: they are the first to
        // go once their reader lets go of them.
        let mut lru = lock(&self.lru);
        for (id, idx, bytes) in spared {
            lru.put((id, idx), bytes);
            lru.demote(&(id, idx));
        }
    }

    /// Whether the cache holds more than its budget (blocks spared by an earlier eviction
    /// because a reader held them): the housekeeping evicts then.
    pub fn over_budget(&self) -> bool {
        self.cached.load(Ordering::Relaxed)
            + self.reserved.load(Ordering::Relaxed)
            + self.dirty_bytes()
            > self.cfg.budget
    }

    /// Makes room for blocks `fetching` of `for_id` (see [`BlockCache::make_room`]) and
    /// reserves it until they land: the caller hands the bytes returned back to
    /// [`BlockCache::unreserve`] once the blocks are listed or the fetch failed.
    pub(super) fn reserve_room(
        &self,
        size: u64,
        for_id: EntryId,
        keep: &std::ops::RangeInclusive<u64>,
        fetching: &[u64],
    ) -> u64 {
        let need: u64 = fetching.iter().map(|i| disk_bytes(size, *i)).sum();
        // Reserved before the room is made, so that a fetch planned at the same moment for
        // another file already counts this one.
        self.reserved.fetch_add(need, Ordering::Relaxed);
        self.make_room(0, for_id, keep, fetching);
        need
    }

    /// Gives back room reserved by [`BlockCache::reserve_room`].
    pub(super) fn unreserve(&self, bytes: u64) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Evicts down to the budget on behalf of no file in particular (a writer waiting, a pin
    /// released, clean files taken over).
    pub fn evict_to_budget(&self) {
        // No block of an entry 0 exists: nothing is spared.
        self.make_room(0, EntryId(0), &(0..=0), &[]);
    }

    /// Evicts every clean, unpinned cached block now (`stratus clean --cache`); pinned files,
    /// blocks being fetched and data not yet uploaded stay.
    pub fn evict_clean(&self) {
        self.make_room(self.cfg.budget, EntryId(0), &(0..=0), &[]);
    }

    /// Hands a whole file that the remote now holds exactly to the block cache, where it
    /// counts against the budget and can be evicted. False when its gate was busy: try again
    /// later. A file that is open is marked instead and handed over at its last close.
    pub(super) fn retire(&self, id: EntryId) -> bool {
        let gate = self.gate(id);
        let Ok(_g) = gate.try_lock() else {
            return false;
        };
        // Under the gate no open can register; a file open now is handed over at its close.
        if self.retire_on_close(id) {
            return true;
        }
        let size = match self.store.write(|db| db.retire(id, BLOCK_SIZE)) {
            Ok(Some(size)) => size,
            Ok(None) => return true,
            Err(err) => {
                tracing::warn!(id = id.0, %err, "could not hand a file to the block cache");
                return true;
            }
        };
        self.forget_dirty_figure();
        let pinned = self
            .store
            .read(|db| db.pinned_by(id))
            .ok()
            .flatten()
            .is_some();
        if !pinned {
            for i in 0..size.div_ceil(BLOCK_SIZE) {
                self.count_block(id, i, disk_bytes(size, i));
            }
        }
        true
    }

    /// The uploader made `id` clean: it is retired the next time the cache looks (before it
    /// evicts, when it counts, and in the pinner's rounds), on a FUSE thread rather than the
    /// uploader's task.
    pub fn uploaded(&self, id: EntryId) {
        lock(&self.cleaned).push(id);
    }

    /// Retires the files the uploader made clean since the last call, and evicts down to the
    /// budget if that took the cache over it.
    pub fn take_cleaned(&self) {
        if self.retire_cleaned() {
            self.evict_to_budget();
        }
    }

    /// Retires the files the uploader made clean since the last call; true if there were any.
    fn retire_cleaned(&self) -> bool {
        let ids: Vec<EntryId> = std::mem::take(&mut *lock(&self.cleaned));
        if ids.is_empty() {
            return false;
        }
        let again: Vec<EntryId> = ids.into_iter().filter(|id| !self.retire(*id)).collect();
        if !again.is_empty() {
            lock(&self.cleaned).extend(again);
        }
        true
    }

    /// Called at start: whole clean files left by an earlier run join the block cache.
    pub fn retire_all(&self) -> CacheResult<()> {
        for id in self.store.read(|db| db.retirable())? {
            self.retire(id);
        }
        Ok(())
    }
}
