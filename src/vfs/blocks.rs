//! The block cache: which parts of a file's data are on this machine, fetching the rest by
//! ranged GETs, evicting least recently used clean blocks, pinning, and back-pressure on
//! writers when data not yet uploaded outgrows the budget.
//!
//! What counts against `--cache-size`: clean blocks (fetched, or written here and uploaded
//! since) and whole files not yet handed over (dirty data). Pinned files are kept because the
//! user asked, outside the budget; `stratus status` shows them separately.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{lock, Vfs, VfsError, VfsResult};
use crate::cache::{FileGate, BLOCK_SIZE};
use crate::remote::RemoteError;
use crate::store::{now_ms, Entry};
use crate::types::{EntryId, Kind};

/// How long a fetch may take while the remote is known to be unreachable.
pub(super) const UNREACHABLE_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Ranged GETs in flight at once for one file.
const FETCHES_IN_FLIGHT: usize = 8;
/// After a fetch failed because the remote is away, further fetches fail at once for this
/// long: the kernel retries a failed read page by page, and each retry must not wait again.
const FAILED_FETCH_QUIET: Duration = Duration::from_secs(2);
/// How stale the figure of dirty bytes may be when a writer consults it.
const DIRTY_FIGURE_TTL: Duration = Duration::from_millis(100);
/// A writer held back by a full cache goes on anyway when the queue has not moved for this
/// long: back-pressure waits for the uploader, it never turns into a hang.
const STALLED_QUEUE: Duration = Duration::from_secs(30);
/// Free space always left on the state dir's disk by writes through the mount: the state
/// database needs room to record what was written (and to delete files, which is how a user
/// makes room). A write that would go below it fails with ENOSPC.
const DISK_FLOOR: u64 = 32 << 20;
/// How stale the free-space figure may be when a writer consults it.
const DISK_FIGURE_TTL: Duration = Duration::from_millis(50);
/// Blocks a pinned file is fetched in, one gate hold each, so readers interleave.
const PIN_CHUNK_BLOCKS: u64 = 16;

/// The cache figures `stratus status` shows.
#[derive(Debug, Clone, Default)]
pub struct CacheFigures {
    /// Bytes of file data on this machine: cached blocks, pinned files and dirty data.
    pub used: u64,
    pub budget: u64,
    pub pinned: u64,
    /// Written here and not yet uploaded (whole files kept outside the block cache).
    pub dirty: u64,
    /// Reads that reached the daemon and found their data here, and those that waited for
    /// a fetch (the kernel's page cache answers many more without asking).
    pub hits: u64,
    pub misses: u64,
}

/// In-memory bookkeeping of the block cache, a field of [`Vfs`].
pub(super) struct BlockState {
    /// Blocks present per partly cached file, loaded on first use.
    pub present: Mutex<HashMap<EntryId, HashSet<u64>>>,
    /// Eviction order of cached blocks; `cached` counts their bytes. Blocks of pinned files
    /// are dropped from it when eviction reaches them, and come back when the pin goes.
    pub lru: Mutex<lru::LruCache<(EntryId, u64), ()>>,
    pub cached: std::sync::atomic::AtomicU64,
    /// Versions whose fetched data failed the SHA-256 check: refused until the remote
    /// version changes.
    pub corrupt: Mutex<HashSet<(EntryId, Option<String>)>>,
    /// Per-file gates that serialize fetching, reading and evicting one file's blocks, an
    /// open's registration, and the sync engine's changes to a closed file's data.
    pub gates: Mutex<HashMap<EntryId, Arc<Mutex<()>>>>,
    /// Files the uploader made clean ([`FileGate::uploaded`]), to be retired.
    pub cleaned: Mutex<Vec<EntryId>>,
    dirty: Mutex<Option<(Instant, u64)>>,
    /// Free bytes on the state dir's disk, when they were read, and what writes added since.
    free: Mutex<Option<(Instant, u64)>>,
    pub grown_since_free: std::sync::atomic::AtomicU64,
    /// Bytes by which written files grew since `dirty` was read from the database: a burst
    /// of writes must not outrun the figure.
    pub grown: std::sync::atomic::AtomicU64,
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
    /// When a fetch last failed because the remote was away.
    failed_at: Mutex<Option<Instant>>,
    /// Bumped when a pin is set; the pinner wakes on it.
    pin_generation: Mutex<u64>,
    pin_wake: std::sync::Condvar,
}

impl BlockState {
    pub fn new() -> BlockState {
        BlockState {
            present: Mutex::default(),
            lru: Mutex::new(lru::LruCache::unbounded()),
            cached: Default::default(),
            corrupt: Mutex::default(),
            gates: Mutex::default(),
            cleaned: Mutex::default(),
            dirty: Mutex::default(),
            free: Mutex::default(),
            grown_since_free: Default::default(),
            grown: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
            failed_at: Mutex::default(),
            pin_generation: Mutex::default(),
            pin_wake: Default::default(),
        }
    }
}

/// The sync engine's way to the block cache's data files.
impl FileGate for Vfs {
    fn uploaded(&self, id: EntryId) {
        // Retired the next time the cache looks (before it evicts, when it counts, and in
        // the pinner's rounds), on a FUSE thread rather than the uploader's task.
        lock(&self.blocks.cleaned).push(id);
    }

    fn run_closed(&self, id: EntryId, f: &mut dyn FnMut()) -> bool {
        let gate = self.gate(id);
        let _g = lock(&gate);
        // Every open of an existing file registers in `live` under this gate (`Vfs::open`);
        // `create` registers a new entry, which the sync engine does not know yet.
        if lock(&self.live).get(&id).is_some_and(|l| l.open > 0) {
            return false;
        }
        f();
        // `f` may have dropped the file's blocks and data file. What this cache knew of them
        // in memory goes too, and is loaded from the database at the next use: a fetch that
        // landed after the last close had loaded the present set again, and a later open read
        // the hole of the new data file where that set said block 0 was (found by
        // `tests/handoff.rs` in one run of seven; the old `is_busy` check had the same gap).
        lock(&self.blocks.present).remove(&id);
        true
    }
}

impl Vfs {
    /// Fetches every block of `e` the data file lacks and marks the file whole: a file about
    /// to be written must be whole, since what is uploaded is the whole file. The caller
    /// holds the file's gate.
    pub(super) fn fill_locked(&self, e: &Entry) -> VfsResult<()> {
        let fresh = self
            .store
            .read(|db| db.get(e.id))?
            .ok_or(VfsError::NotFound)?;
        if fresh.local {
            return Ok(());
        }
        let blocks = fresh.size.div_ceil(BLOCK_SIZE);
        if blocks > 0 {
            self.ensure_blocks(&fresh, 0, blocks - 1)?;
        } else {
            self.cache.create_empty(e.id)?;
        }
        self.store.write(|db| db.set_local(e.id, true))?;
        self.forget_blocks(e.id);
        self.forget_dirty_figure();
        Ok(())
    }

    /// Drops the in-memory block list of `id` (its blocks are no longer evictable: the file
    /// became whole, or it is gone).
    pub(super) fn forget_blocks(&self, id: EntryId) {
        if let Some(set) = lock(&self.blocks.present).remove(&id) {
            let mut lru = lock(&self.blocks.lru);
            for idx in set {
                if lru.pop(&(id, idx)).is_some() {
                    self.blocks.cached.fetch_sub(BLOCK_SIZE, Ordering::Relaxed);
                }
            }
        }
    }

    /// Makes blocks `first..=last` of a partly cached file present in this thread (the
    /// caller holds the file's gate), fetching what is missing by ranged GETs pinned to the
    /// version the entry records (`If-Match`), several in flight. For callers that must hold
    /// the gate throughout (filling a file for a writer, the pinner); readers go through
    /// `with_blocks`. Returns whether anything had to be fetched.
    pub(super) fn ensure_blocks(&self, e: &Entry, first: u64, last: u64) -> VfsResult<bool> {
        let nblocks = e.size.div_ceil(BLOCK_SIZE);
        let last = last.min(nblocks.saturating_sub(1));
        if nblocks == 0 || first > last {
            return Ok(false);
        }
        self.check_not_corrupt(e.id, &e.synced.etag)?;
        let want: Vec<u64> = self.with_present(e.id, |set| {
            (first..=last).filter(|i| !set.contains(i)).collect()
        })?;
        self.touch_blocks(e.id, first, last);
        if want.is_empty() {
            return Ok(false);
        }
        let key = e.synced.key.clone().ok_or_else(|| {
            VfsError::Invalid("entry has neither local data nor a remote copy".into())
        })?;
        self.check_fetch_allowed(&key)?;
        let pinned = self.store.read(|db| db.pinned_by(e.id))?.is_some();
        if !pinned {
            self.make_room(want.len() as u64 * BLOCK_SIZE, e.id, &(first..=last), &want);
        }
        self.cache.ensure_sparse(e.id, e.size)?;
        let etag = e.synced.etag.clone();
        let size = e.size;
        tracing::debug!(%key, blocks = want.len(), first = want[0], "fetching blocks");
        let fetched = self.rt.block_on(async {
            let gets = futures::stream::iter(want.iter().copied())
                .map(|i| {
                    let (key, etag) = (&key, &etag);
                    async move {
                        let range = i * BLOCK_SIZE..((i + 1) * BLOCK_SIZE).min(size);
                        self.remote
                            .get_range(key, range, etag.as_deref())
                            .await
                            .map(|b| (i, b))
                    }
                })
                .buffer_unordered(FETCHES_IN_FLIGHT)
                .collect::<Vec<_>>();
            // While the remote is known to be away, a read of data not cached here fails
            // within seconds instead of waiting out the network's timeouts.
            let limit = if self.store.health().is_reachable() {
                self.cfg.fetch_timeout
            } else {
                UNREACHABLE_FETCH_TIMEOUT
            };
            tokio::time::timeout(limit, gets).await
        });
        let results = fetched.map_err(|_| {
            tracing::warn!(%key, "block fetch timed out");
            self.mark_fetch_failed();
            self.store
                .health()
                .record_error(true, &format!("{key}: block fetch timed out"));
            VfsError::Remote(RemoteError::unavailable("fetch timed out"))
        })?;
        let f = self.cache.open_file(e.id, false)?;
        let mut got = Vec::with_capacity(results.len());
        let mut failure = None;
        for r in results {
            match r {
                Ok((i, bytes)) => {
                    f.write_all_at(&bytes, i * BLOCK_SIZE)?;
                    self.store
                        .health()
                        .downloaded
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    got.push(i);
                }
                Err(err) => failure = Some(err),
            }
        }
        let complete = self.list_blocks(e.id, &got, pinned)? >= nblocks;
        if !got.is_empty() {
            self.store.health().record_ok();
        }
        match failure {
            None if complete => self.verify(e, &key).map(|()| true),
            None => Ok(true),
            Some(RemoteError::Conflict(_)) => {
                tracing::warn!(%key, "the object changed since this file was opened; reopen it for the new version");
                Err(VfsError::Remote(RemoteError::Conflict(key)))
            }
            Some(err) => {
                tracing::warn!(%key, %err, "block fetch failed");
                if let RemoteError::Unavailable { message, .. } = &err {
                    // The next uncached read fails within seconds instead of waiting too.
                    self.store.health().record_error(true, message);
                    self.mark_fetch_failed();
                }
                Err(VfsError::Remote(err))
            }
        }
    }

    /// Runs `f` over the blocks present in `id`'s data file (loaded on first use). The
    /// caller holds the gate.
    pub(super) fn with_present<R>(
        &self,
        id: EntryId,
        f: impl FnOnce(&mut HashSet<u64>) -> R,
    ) -> VfsResult<R> {
        let mut present = lock(&self.blocks.present);
        if let Some(s) = present.get_mut(&id) {
            return Ok(f(s));
        }
        let loaded: HashSet<u64> = self
            .store
            .read(|db| db.blocks_of(id))?
            .into_iter()
            .collect();
        Ok(f(present.entry(id).or_insert(loaded)))
    }

    /// Marks blocks being read as recently used.
    pub(super) fn touch_blocks(&self, id: EntryId, first: u64, last: u64) {
        let mut lru = lock(&self.blocks.lru);
        for i in first..=last {
            lru.get(&(id, i));
        }
    }

    /// Lists blocks just written into `id`'s data file: in the database, in the present set
    /// and, unless the file is pinned, in the eviction order. The present set is loaded before
    /// the rows are added, so the new blocks are counted once. Returns how many blocks are
    /// present now. The caller holds the file's gate.
    pub(super) fn list_blocks(&self, id: EntryId, got: &[u64], pinned: bool) -> VfsResult<u64> {
        self.with_present(id, |_| ())?;
        self.store.write(|db| db.add_blocks(id, got))?;
        self.with_present(id, |set| {
            let mut lru = lock(&self.blocks.lru);
            for i in got {
                if set.insert(*i) && !pinned {
                    lru.put((id, *i), ());
                    self.blocks.cached.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
                }
            }
            set.len() as u64
        })
    }

    /// Refuses a version whose fetched data failed its checksum.
    pub(super) fn check_not_corrupt(&self, id: EntryId, etag: &Option<String>) -> VfsResult<()> {
        if lock(&self.blocks.corrupt).contains(&(id, etag.clone())) {
            return Err(VfsError::Remote(RemoteError::Permanent(
                "this version failed its checksum".into(),
            )));
        }
        Ok(())
    }

    /// Fails when data not cached here cannot be fetched now: offline, or the remote just
    /// failed to answer (the kernel retries a failed read page by page, and each retry must
    /// not wait again).
    pub(super) fn check_fetch_allowed(&self, key: &str) -> VfsResult<()> {
        if self.store.health().is_offline() {
            tracing::warn!(%key, "offline: this part of the file is not cached here");
            return Err(VfsError::Remote(RemoteError::unavailable("offline")));
        }
        let quiet = lock(&self.blocks.failed_at).is_some_and(|t| t.elapsed() < FAILED_FETCH_QUIET);
        if quiet && !self.store.health().is_reachable() {
            tracing::warn!(%key, "the remote is not answering; this part of the file is not cached here");
            return Err(VfsError::Remote(RemoteError::unavailable(
                "the remote is not answering",
            )));
        }
        Ok(())
    }

    pub(super) fn mark_fetch_failed(&self) {
        *lock(&self.blocks.failed_at) = Some(Instant::now());
    }

    /// Once every block of a file is here and the object carries our SHA-256, the data is
    /// checked: a mismatch is never served. The blocks go (a later read fetches them again)
    /// and the read fails with EIO.
    pub(super) fn verify(&self, e: &Entry, key: &str) -> VfsResult<()> {
        let Some(want) = e.synced.hash.as_deref() else {
            return Ok(());
        };
        let got = crate::remote::hash_file(&self.cache.path(e.id))?;
        if got == want {
            return Ok(());
        }
        tracing::error!(%key, want, got = %got, "fetched data does not match the object's SHA-256; not serving it");
        self.store.health().record_error(
            false,
            &format!("{key}: fetched data does not match its SHA-256"),
        );
        lock(&self.blocks.corrupt).insert((e.id, e.synced.etag.clone()));
        self.store.write(|db| db.set_local(e.id, false))?;
        self.forget_blocks(e.id);
        // Punched, not removed: an open handle keeps reading this same file.
        let _ = self
            .cache
            .punch_hole(e.id, 0, e.size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE);
        Err(VfsError::Remote(RemoteError::Permanent(format!(
            "{key}: checksum mismatch"
        ))))
    }

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
        let budget = self.cfg.cache_budget;
        let dirty = self.dirty_bytes();
        let mut spared = Vec::new();
        let mut pinned: HashMap<EntryId, bool> = HashMap::new();
        while self.blocks.cached.load(Ordering::Relaxed) + dirty + need > budget {
            let Some(((id, idx), ())) = lock(&self.blocks.lru).pop_lru() else {
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
                self.blocks.cached.fetch_sub(BLOCK_SIZE, Ordering::Relaxed);
                continue;
            }
            let gate;
            let _guard = if id == for_id {
                if keep.contains(&idx) || fetching.contains(&idx) {
                    spared.push((id, idx));
                    continue;
                }
                None
            } else {
                gate = self.gate(id);
                match gate.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => {
                        spared.push((id, idx));
                        continue;
                    }
                }
            };
            // Only a block the database still lists is a cached block: the eviction order
            // can hold stale ones, and punching those would cut into a complete file.
            if self
                .store
                .write(|db| db.drop_block(id, idx))
                .unwrap_or(false)
            {
                let _ = self.cache.punch_hole(id, idx * BLOCK_SIZE, BLOCK_SIZE);
            }
            if let Some(set) = lock(&self.blocks.present).get_mut(&id) {
                set.remove(&idx);
            }
            self.blocks.cached.fetch_sub(BLOCK_SIZE, Ordering::Relaxed);
        }
        let mut lru = lock(&self.blocks.lru);
        for b in spared {
            lru.put(b, ());
        }
    }

    /// Evicts down to the budget on behalf of no file in particular (a writer waiting, a pin
    /// released, clean files taken over).
    pub(super) fn evict_to_budget(&self) {
        // No block of an entry 0 exists: nothing is spared.
        self.make_room(0, EntryId(0), &(0..=0), &[]);
    }

    /// Evicts every clean, unpinned cached block now (`stratus clean --cache`); pinned files,
    /// blocks being fetched and data not yet uploaded stay.
    pub fn evict_clean(&self) {
        self.make_room(self.cfg.cache_budget, EntryId(0), &(0..=0), &[]);
    }

    /// The per-file gate that serializes fetching, reading and evicting one file's blocks.
    pub(super) fn gate(&self, id: EntryId) -> Arc<Mutex<()>> {
        let mut gates = lock(&self.blocks.gates);
        if gates.len() > 4096 {
            // Gates nobody holds or waits for are recreated on demand.
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(id).or_default().clone()
    }

    /// `none`, `partial`, `full` or `pinned` (pinned and wholly here): how much of a file's
    /// data is on this machine.
    pub fn cache_state(&self, ino: EntryId) -> VfsResult<&'static str> {
        let (e, pinned, blocks) = self.store.read(|db| {
            let e = db.get(ino)?.ok_or(VfsError::NotFound)?;
            let pinned = db.pinned_by(ino)?.is_some();
            let blocks = if e.kind == Kind::File && !e.local {
                db.blocks_of(ino)?.len() as u64
            } else {
                0
            };
            Ok::<_, VfsError>((e, pinned, blocks))
        })?;
        let complete = e.kind != Kind::File || e.local || blocks >= e.size.div_ceil(BLOCK_SIZE);
        Ok(match (complete, pinned, blocks) {
            (true, true, _) => "pinned",
            (true, false, _) => "full",
            (false, _, 0) => "none",
            (false, _, _) => "partial",
        })
    }

    pub fn cache_budget(&self) -> u64 {
        self.cfg.cache_budget
    }

    /// Bytes of evictable cached blocks, as the eviction budget counts them.
    pub fn cached_bytes(&self) -> u64 {
        self.blocks.cached.load(Ordering::Relaxed)
    }

    pub fn cache_figures(&self) -> VfsResult<CacheFigures> {
        self.take_cleaned();
        let (blocks, dirty, pinned) = self.store.read(|db| {
            let blocks = db.block_count()?;
            let dirty = db.whole_file_bytes()?;
            let mut pinned = 0;
            for f in db.pinned_files()? {
                pinned += if f.local {
                    f.size
                } else {
                    (db.blocks_of(f.id)?.len() as u64 * BLOCK_SIZE).min(f.size)
                };
            }
            Ok::<_, VfsError>((blocks, dirty, pinned))
        })?;
        Ok(CacheFigures {
            used: blocks * BLOCK_SIZE + dirty,
            budget: self.cfg.cache_budget,
            pinned,
            dirty,
            hits: self.blocks.hits.load(Ordering::Relaxed),
            misses: self.blocks.misses.load(Ordering::Relaxed),
        })
    }

    /// Bytes of whole files not handed to the block cache (written here, not yet uploaded):
    /// the database's figure, at most [`DIRTY_FIGURE_TTL`] old, plus what files grew by since.
    fn dirty_bytes(&self) -> u64 {
        let mut memo = lock(&self.blocks.dirty);
        if let Some((at, v)) = *memo {
            if at.elapsed() < DIRTY_FIGURE_TTL {
                return v + self.blocks.grown.load(Ordering::Relaxed);
            }
        }
        // Files still open for writing have their size written back at close: until then
        // their growth is not in the database's figure (nor can the uploader drain it).
        self.blocks.grown.store(0, Ordering::Relaxed);
        let v = self
            .store
            .read(|db| db.whole_file_bytes())
            .unwrap_or_default();
        *memo = Some((Instant::now(), v));
        v
    }

    pub(super) fn forget_dirty_figure(&self) {
        *lock(&self.blocks.dirty) = None;
    }

    /// Hands a whole file that the remote now holds exactly to the block cache, where it
    /// counts against the budget and can be evicted. False when its gate was busy: try again
    /// later. A file that is open is marked instead and handed over at its last close.
    pub(super) fn retire(&self, id: EntryId) -> bool {
        let gate = self.gate(id);
        let Ok(_g) = gate.try_lock() else {
            return false;
        };
        let mut live = lock(&self.live);
        if let Some(l) = live.get_mut(&id) {
            l.retire_on_close = true;
            return true;
        }
        let n = match self.store.write(|db| db.retire(id, BLOCK_SIZE)) {
            Ok(Some(n)) => n,
            Ok(None) => return true,
            Err(err) => {
                tracing::warn!(id = id.0, %err, "could not hand a file to the block cache");
                return true;
            }
        };
        drop(live);
        self.forget_dirty_figure();
        let pinned = self
            .store
            .read(|db| db.pinned_by(id))
            .ok()
            .flatten()
            .is_some();
        if !pinned {
            let mut lru = lock(&self.blocks.lru);
            for i in 0..n {
                lru.put((id, i), ());
            }
            self.blocks
                .cached
                .fetch_add(n * BLOCK_SIZE, Ordering::Relaxed);
        }
        true
    }

    /// Retires the files the uploader made clean since the last call, and evicts down to the
    /// budget if that took the cache over it.
    pub(super) fn take_cleaned(&self) {
        if self.retire_cleaned() {
            self.evict_to_budget();
        }
    }

    /// Retires the files the uploader made clean since the last call; true if there were any.
    fn retire_cleaned(&self) -> bool {
        let ids: Vec<EntryId> = std::mem::take(&mut *lock(&self.blocks.cleaned));
        if ids.is_empty() {
            return false;
        }
        let again: Vec<EntryId> = ids.into_iter().filter(|id| !self.retire(*id)).collect();
        if !again.is_empty() {
            lock(&self.blocks.cleaned).extend(again);
        }
        true
    }

    /// Called at start: whole clean files left by an earlier run join the block cache.
    pub(super) fn retire_all(&self) -> VfsResult<()> {
        for id in self.store.read(|db| db.retirable())? {
            self.retire(id);
        }
        Ok(())
    }

    /// Back-pressure: while dirty data alone exceeds the budget and the uploader has work it
    /// can do, a writer waits for it instead of filling the disk. Offline, or when every dirty
    /// byte belongs to a file still open for writing, the write goes on (only a full disk
    /// stops it, with ENOSPC).
    pub(super) fn throttle_writer(&self) -> VfsResult<()> {
        let budget = self.cfg.cache_budget;
        if self.dirty_bytes() <= budget {
            return Ok(());
        }
        let mut hurried = false;
        let mut last = (Instant::now(), u64::MAX);
        let started = Instant::now();
        loop {
            self.evict_to_budget();
            let dirty = self.dirty_bytes();
            if dirty <= budget {
                break;
            }
            let health = &self.store.health();
            if health.is_offline() || !health.is_reachable() {
                break;
            }
            let q = self.store.read(|db| db.queue_stats())?;
            if q.entries.saturating_sub(q.held + q.parked) == 0 {
                break;
            }
            if dirty < last.1 {
                last = (Instant::now(), dirty);
            } else if last.0.elapsed() > STALLED_QUEUE {
                tracing::warn!(
                    dirty,
                    budget,
                    "the upload queue is not moving; writing past the cache budget"
                );
                break;
            }
            if !hurried {
                tracing::info!(
                    dirty,
                    budget,
                    "data not yet uploaded exceeds the cache budget; writers wait for the uploader"
                );
                // The write-back delay is there to batch edits, not to fill the disk.
                self.store.write(|db| db.hurry(now_ms()))?;
                hurried = true;
            }
            std::thread::sleep(Duration::from_millis(20));
            self.forget_dirty_figure();
        }
        if hurried {
            tracing::debug!(
                waited_ms = started.elapsed().as_millis() as u64,
                "writer resumes"
            );
        }
        Ok(())
    }

    /// Refuses a write that would grow a file into the last [`DISK_FLOOR`] bytes of the state
    /// dir's disk: ENOSPC while the database can still record everything acknowledged so far
    /// (and the deletes that make room).
    pub(super) fn check_disk_room(&self, growth: u64) -> VfsResult<()> {
        if growth == 0 {
            return Ok(());
        }
        let mut memo = lock(&self.blocks.free);
        let free = match *memo {
            Some((at, v)) if at.elapsed() < DISK_FIGURE_TTL => {
                v.saturating_sub(self.blocks.grown_since_free.load(Ordering::Relaxed))
            }
            _ => {
                let (_, avail, _) = self.cache.disk_space()?;
                self.blocks.grown_since_free.store(0, Ordering::Relaxed);
                *memo = Some((Instant::now(), avail));
                avail
            }
        };
        if free < DISK_FLOOR.saturating_add(growth) {
            tracing::warn!(
                free,
                growth,
                "the state dir's disk is full; refusing to write more"
            );
            return Err(VfsError::Io(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )));
        }
        // Only growth that goes ahead counts against the figure: a refused 200 GB
        // reservation must not fail the small writes after it.
        self.blocks
            .grown_since_free
            .fetch_add(growth, Ordering::Relaxed);
        Ok(())
    }

    /// `user.stratus.pin`: whether `ino` is pinned, by itself or by a directory above it.
    pub fn pinned(&self, ino: EntryId) -> VfsResult<bool> {
        self.store.read(|db| {
            db.get(ino)?.ok_or(VfsError::NotFound)?;
            Ok(db.pinned_by(ino)?.is_some())
        })
    }

    /// Pins or unpins `ino`. A pinned file (or everything below a pinned directory, now and
    /// later) is downloaded in the background and never evicted. Unpinning releases what is
    /// no longer pinned to normal eviction; a pin inherited from a directory above stays.
    pub fn set_pinned(&self, ino: EntryId, on: bool) -> VfsResult<()> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
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
    pub(super) fn pins_changed(&self) {
        *lock(&self.blocks.pin_generation) += 1;
        self.blocks.pin_wake.notify_all();
    }

    /// Puts the cached blocks of `e` (and of everything below it) that are no longer pinned
    /// back into the eviction order.
    pub(super) fn release_to_eviction(&self, e: &Entry) -> VfsResult<()> {
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
                    out.push((f.id, db.blocks_of(f.id)?));
                }
            }
            Ok::<_, VfsError>(out)
        })?;
        let mut lru = lock(&self.blocks.lru);
        for (id, blocks) in files {
            for i in blocks {
                if lru.put((id, i), ()).is_none() {
                    self.blocks.cached.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
                }
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
                if self.store.health().is_offline() {
                    return false;
                }
                let (_, avail, _) = self.cache.disk_space().unwrap_or((0, 0, 0));
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
                        _ => break,
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
    pub(super) fn start_pinner(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("stratus-pinner".into())
            .spawn(move || {
                let mut seen = (u64::MAX, u64::MAX);
                let mut retry = false;
                loop {
                    let Some(vfs) = weak.upgrade() else { return };
                    let gen = {
                        let g = lock(&vfs.blocks.pin_generation);
                        let (g, _) = vfs
                            .blocks
                            .pin_wake
                            .wait_timeout(g, Duration::from_secs(2))
                            .unwrap_or_else(|e| e.into_inner());
                        *g
                    };
                    vfs.take_cleaned();
                    let polls = vfs.store.health().polls.load(Ordering::Relaxed);
                    if (gen, polls) == seen && !retry {
                        continue;
                    }
                    let health = &vfs.store.health();
                    if health.is_offline() || !health.is_reachable() {
                        // The uploader and the poller notice when it is back.
                        retry = true;
                        continue;
                    }
                    if !vfs.store.read(|db| db.any_pinned()).unwrap_or(false) {
                        seen = (gen, polls);
                        retry = false;
                        continue;
                    }
                    retry = !vfs.download_pinned();
                    seen = (gen, polls);
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "could not start the pinned-file downloader");
        }
    }
}
