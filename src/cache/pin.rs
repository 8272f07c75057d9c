//! Pinned files: downloaded in the background and kept out of eviction, by a thread that
//! wakes when a pin is set, after each poll of the remote and, while a download failed, every
//! few seconds. Every 2 s the same thread is the cache's housekeeping: it retires uploaded
//! files and evicts down to the budget when an eviction had to spare blocks a reader held.

use std::sync::Arc;
use std::time::Duration;

use super::blocks::{disk_bytes, lock};
use super::{BlockCache, CacheError, CacheResult, BLOCK_SIZE};
use crate::store::Entry;
use crate::types::{EntryId, Kind};

/// Blocks a pinned file is fetched in, one gate hold each, so readers interleave.
const PIN_CHUNK_BLOCKS: u64 = 16;

impl BlockCache {
    /// `user.stratus.pin`: whether `ino` is pinned, by itself or by a directory above it.
    pub fn pinned(&self, ino: EntryId) -> CacheResult<bool> {
        self.store.read(|db| {
            db.get(ino)?.ok_or(CacheError::NotFound)?;
            Ok(db.pinned_by(ino)?.is_some())
        })
    }

    /// Pins or unpins `ino`. A pinned file (or everything below a pinned directory, now and
    /// later) is downloaded in the background and never evicted. Unpinning releases what is
    /// no longer pinned to normal eviction; a pin inherited from a directory above stays.
    pub fn set_pinned(&self, ino: EntryId, on: bool) -> CacheResult<()> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(CacheError::NotFound)?;
        self.store.write(|db| db.set_pinned(ino, on))?;
        tracing::info!(id = ino.0, on, "pin changed");
        if on {
            self.pins_changed();
        } else {
            self.release_to_eviction(&e)?;
            self.evict_to_budget();
        }
        Ok(())
    }

    /// Wakes the pinner: what is pinned may have changed.
    pub fn pins_changed(&self) {
        *lock(&self.pin_generation) += 1;
        self.pin_wake.notify_all();
    }

    /// Puts the cached blocks of `e` (and of everything below it) that are no longer pinned
    /// back into the eviction order.
    pub fn release_to_eviction(&self, e: &Entry) -> CacheResult<()> {
        let files = self.store.read(|db| {
            let mut files = if e.kind == Kind::Dir {
                db.descendants(e.id)?
            } else {
                vec![e.clone()]
            };
            files.retain(|f| f.kind == Kind::File && !f.local);
            let mut out = Vec::new();
            for f in files {
                if db.pinned_by(f.id)?.is_none() {
                    out.push((f.id, f.size, db.blocks_of(f.id)?));
                }
            }
            Ok::<_, CacheError>(out)
        })?;
        for (id, size, blocks) in files {
            for i in blocks {
                self.count_block(id, i, disk_bytes(size, i));
            }
        }
        Ok(())
    }

    /// Downloads every pinned file that is not wholly here; false when some could not be
    /// (offline, remote away, disk short), so the pinner tries again.
    fn download_pinned(&self) -> bool {
        let files = match self.store.read(|db| db.pinned_files()) {
            Ok(f) => f,
            Err(err) => {
                tracing::warn!(%err, "listing pinned files");
                return false;
            }
        };
        let mut done = true;
        for f in files {
            if f.local || f.synced.key.is_none() {
                continue;
            }
            let n = f.size.div_ceil(BLOCK_SIZE);
            let mut first = 0;
            while first < n {
                if self.remote.health().is_offline() {
                    return false;
                }
                let (_, avail, _) = self.files.disk_space().unwrap_or((0, 0, 0));
                if avail < self.cfg.disk_reserve + PIN_CHUNK_BLOCKS * BLOCK_SIZE {
                    tracing::warn!(
                        file = f.id.0,
                        "not enough free disk to download a pinned file"
                    );
                    return false;
                }
                let last = (first + PIN_CHUNK_BLOCKS - 1).min(n - 1);
                let gate = self.gate(f.id);
                let r = {
                    let _g = lock(&gate);
                    // Re-read under the gate: the file may have been written, replaced or
                    // unpinned since the list was taken.
                    match self.store.read(|db| db.get(f.id)) {
                        Ok(Some(cur))
                            if !cur.local
                                && cur.synced.etag == f.synced.etag
                                && cur.size == f.size =>
                        {
                            self.ensure_blocks(&cur, first, last).map(|_| ())
                        }
                        // Gone or changed since the list: the next round takes what is there
                        // now (a new version's metadata, read after the listing, wakes no poll).
                        _ => {
                            done = false;
                            break;
                        }
                    }
                };
                if let Err(err) = r {
                    tracing::warn!(file = f.id.0, %err, "pinned file not downloaded yet");
                    done = false;
                    break;
                }
                first = last + 1;
            }
        }
        done
    }

    /// Starts the thread that keeps pinned files downloaded: after a pin is set, after each
    /// poll of the remote (new or changed files below a pinned directory) and, while some
    /// download failed, every few seconds.
    pub fn start_pinner(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("stratus-pinner".into())
            .spawn(move || {
                let mut seen = (u64::MAX, u64::MAX);
                let mut retry = false;
                loop {
                    let Some(cache) = weak.upgrade() else { return };
                    let gen = {
                        let g = lock(&cache.pin_generation);
                        let (g, _) = cache
                            .pin_wake
                            .wait_timeout(g, Duration::from_secs(2))
                            .unwrap_or_else(|e| e.into_inner());
                        *g
                    };
                    cache.take_cleaned();
                    if cache.over_budget() {
                        // Blocks a reader held while eviction went by go now.
                        cache.evict_to_budget();
                    }
                    let polls = cache.remote.health().polls().1;
                    if (gen, polls) == seen && !retry {
                        continue;
                    }
                    let health = &cache.remote.health();
                    if health.is_offline() || !health.is_reachable() {
                        // The uploader and the poller notice when it is back.
                        retry = true;
                        continue;
                    }
                    if !cache.store.read(|db| db.any_pinned()).unwrap_or(false) {
                        seen = (gen, polls);
                        retry = false;
                        continue;
                    }
                    retry = !cache.download_pinned();
                    seen = (gen, polls);
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "could not start the pinned-file downloader");
        }
    }
}
