//! The block cache's state and accounting: which blocks each file has here, the per-file
//! gates, the open files, and the figures of cached, dirty and free bytes that eviction,
//! back-pressure and the disk floor go by.
//!
//! What counts against `--cache-size`: clean blocks (fetched, or written here and uploaded
//! since) and whole files not yet handed over (dirty data). Pinned files are kept because the
//! user asked, outside the budget; `stratus status` shows them separately. Each counts what
//! it occupies on disk (see [`disk_bytes`]), as `du` would: a 3-byte file is 4 KiB, not a block.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::changes::ChangeLog;
use super::prefetch::Prefetch;
use super::{CacheError, CacheResult, FileCache, BLOCK_SIZE};
use crate::remote::Remote;
use crate::store::{now_ms, Store};
use crate::types::{EntryId, Kind};

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

/// The unit in which the disk's filesystem allocates space to a data file (4 KiB on ext4,
/// xfs and btrfs): a cached block occupies its length rounded up to it, which is what `du`
/// shows and what the cache counts.
pub(super) const DISK_UNIT: u64 = 4096;

/// The bytes block `idx` of a file of `size` bytes occupies in its sparse data file: its
/// length (the last block is short, a 3-byte file's only block is 3 bytes) rounded up to
/// [`DISK_UNIT`]. A block past the end (a stale row of a file since cut) occupies nothing.
pub(super) fn disk_bytes(size: u64, idx: u64) -> u64 {
    let len = size.saturating_sub(idx * BLOCK_SIZE).min(BLOCK_SIZE);
    len.next_multiple_of(DISK_UNIT)
}

/// What the block cache is allowed: its budget, its patience with the remote, and the free
/// space it leaves on the disk.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of clean blocks plus dirty data kept on disk before the least recently used
    /// clean blocks go.
    pub budget: u64,
    /// Longest wait for one batch of block fetches before the read fails with EIO.
    pub fetch_timeout: Duration,
    /// Free space left on the state dir's disk: pinned downloads stop short of it.
    pub disk_reserve: u64,
}

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

/// What [`BlockCache::closed`] found when a handle went.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    /// That was the file's last open handle.
    pub last: bool,
    /// The uploader made the file clean while it was open: hand it over now
    /// ([`BlockCache::hand_over`]), unless it was unlinked.
    pub retire: bool,
}

/// A file some handle has open.
#[derive(Debug, Default)]
struct Holder {
    handles: u32,
    /// Handles the kernel reads through straight from the data file (FUSE passthrough):
    /// while there are any, eviction leaves the file's blocks alone, since no read of them
    /// reaches the cache to fetch a block back.
    passthrough: u32,
    /// The uploader made this file clean while it was open: hand it over at the last close.
    retire_on_close: bool,
}

/// The block cache. The filesystem core holds it in an `Arc`, and so do the background
/// fetches and the pinner it starts: they call back into nothing but the cache.
pub struct BlockCache {
    pub(super) store: Arc<Store>,
    pub(super) files: FileCache,
    pub(super) remote: Arc<Remote>,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) cfg: CacheConfig,
    /// Blocks present per partly cached file, loaded on first use.
    pub(super) present: Mutex<HashMap<EntryId, HashSet<u64>>>,
    /// Eviction order of cached blocks, each with the bytes it occupies on disk
    /// ([`disk_bytes`]); `cached` is their sum. Blocks of pinned files are dropped from it
    /// when eviction reaches them, and come back when the pin goes.
    pub(super) lru: Mutex<lru::LruCache<(EntryId, u64), u64>>,
    pub(super) cached: AtomicU64,
    /// Bytes of fetches in flight that room was made for: counted against the budget from
    /// the moment room is made until they land (or fail), so fetches planned one after
    /// another cannot each find the same free room.
    pub(super) reserved: AtomicU64,
    /// Versions whose fetched data failed the SHA-256 check: refused until the remote
    /// version changes.
    pub(super) corrupt: Mutex<HashSet<(EntryId, Option<String>)>>,
    /// Per-file gates that serialize fetching, reading and evicting one file's blocks, an
    /// open's registration, and the sync engine's changes to a closed file's data.
    gates: Mutex<HashMap<EntryId, Arc<Mutex<()>>>>,
    /// Files with open handles, registered under their gate. Lock order: a file's gate, then
    /// the core's `live` map, then this, then the store.
    open: Mutex<HashMap<EntryId, Holder>>,
    /// Files the uploader made clean ([`super::FileGate::uploaded`]), to be retired.
    pub(super) cleaned: Mutex<Vec<EntryId>>,
    dirty: Mutex<Option<(Instant, u64)>>,
    /// Free bytes on the state dir's disk, when they were read, and what writes added since.
    free: Mutex<Option<(Instant, u64)>>,
    /// Free bytes on the state dir's disk for [`BlockCache::has_room`], and when read.
    room: Mutex<Option<(Instant, u64)>>,
    grown_since_free: AtomicU64,
    /// Bytes by which written files grew since `dirty` was read from the database: a burst
    /// of writes must not outrun the figure.
    grown: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    /// When a fetch last failed because the remote was away.
    pub(super) failed_at: Mutex<Option<Instant>>,
    /// Bumped when a pin is set; the pinner wakes on it.
    pub(super) pin_generation: Mutex<u64>,
    pub(super) pin_wake: std::sync::Condvar,
    /// Fetches in flight in the background (reads and read-ahead).
    pub(super) prefetch: Prefetch,
    /// What changed in each file since the remote's version, for differential uploads.
    changes: ChangeLog,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockCache {
    pub fn new(
        store: Arc<Store>,
        files: FileCache,
        remote: Arc<Remote>,
        rt: tokio::runtime::Handle,
        cfg: CacheConfig,
    ) -> Arc<BlockCache> {
        Arc::new(BlockCache {
            store,
            files,
            remote,
            rt,
            cfg,
            present: Mutex::default(),
            lru: Mutex::new(lru::LruCache::unbounded()),
            cached: Default::default(),
            reserved: Default::default(),
            corrupt: Mutex::default(),
            gates: Mutex::default(),
            open: Mutex::default(),
            cleaned: Mutex::default(),
            dirty: Mutex::default(),
            free: Mutex::default(),
            room: Mutex::default(),
            grown_since_free: Default::default(),
            grown: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
            failed_at: Mutex::default(),
            pin_generation: Mutex::default(),
            pin_wake: Default::default(),
            prefetch: Prefetch::new(),
            changes: ChangeLog::default(),
        })
    }

    /// Which blocks of each file changed since the version the remote holds.
    pub fn changes(&self) -> &ChangeLog {
        &self.changes
    }

    /// The data files.
    pub fn files(&self) -> &FileCache {
        &self.files
    }

    /// The per-file gate that serializes fetching, reading and evicting one file's blocks.
    pub fn gate(&self, id: EntryId) -> Arc<Mutex<()>> {
        let mut gates = lock(&self.gates);
        if gates.len() > 4096 {
            // Gates nobody holds or waits for are recreated on demand.
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(id).or_default().clone()
    }

    /// Registers an open handle of `id`. Called under the file's gate (or for a file just
    /// created, which nobody else knows yet).
    pub fn opened(&self, id: EntryId) {
        lock(&self.open).entry(id).or_default().handles += 1;
    }

    /// Whether some handle has `id` open.
    pub fn is_open(&self, id: EntryId) -> bool {
        lock(&self.open).contains_key(&id)
    }

    /// One of `id`'s open handles reads through the kernel straight from the data file
    /// (`on`), or no longer does. Called under the file's gate when `on`, so an eviction,
    /// which checks [`BlockCache::is_passthrough`] under that gate, sees it.
    pub fn set_passthrough(&self, id: EntryId, on: bool) {
        let mut open = lock(&self.open);
        if let Some(h) = open.get_mut(&id) {
            if on {
                h.passthrough += 1;
            } else {
                h.passthrough = h.passthrough.saturating_sub(1);
            }
        }
    }

    /// Whether a handle of `id` reads from its data file without asking the cache: its
    /// blocks must stay. The caller holds the file's gate.
    pub fn is_passthrough(&self, id: EntryId) -> bool {
        lock(&self.open).get(&id).is_some_and(|h| h.passthrough > 0)
    }

    /// A handle of `id` went. At the last one, what this cache knew of the file's blocks in
    /// memory goes: it is reloaded from the database at the next open, since while nothing
    /// is open the poller may replace the data under this entry.
    pub fn closed(&self, id: EntryId) -> Closed {
        let retire = {
            let mut open = lock(&self.open);
            let Some(h) = open.get_mut(&id) else {
                return Closed {
                    last: true,
                    retire: false,
                };
            };
            h.handles = h.handles.saturating_sub(1);
            if h.handles > 0 {
                return Closed {
                    last: false,
                    retire: false,
                };
            }
            open.remove(&id).is_some_and(|h| h.retire_on_close)
        };
        lock(&self.present).remove(&id);
        Closed { last: true, retire }
    }

    /// Hands a closed file the uploader made clean to the block cache, now or, if its gate
    /// is busy, the next time the cache looks.
    pub fn hand_over(&self, id: EntryId) {
        if !self.retire(id) {
            lock(&self.cleaned).push(id);
        }
    }

    /// Marks `id` to be handed to the block cache at its last close; false if it is not open.
    pub(super) fn retire_on_close(&self, id: EntryId) -> bool {
        match lock(&self.open).get_mut(&id) {
            Some(h) => {
                h.retire_on_close = true;
                true
            }
            None => false,
        }
    }

    /// Runs `f` over the blocks present in `id`'s data file (loaded on first use). The
    /// caller holds the gate.
    pub fn with_present<R>(
        &self,
        id: EntryId,
        f: impl FnOnce(&mut HashSet<u64>) -> R,
    ) -> CacheResult<R> {
        let mut present = lock(&self.present);
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

    /// Forgets what this cache knew of `id`'s blocks in memory: the sync engine may have
    /// replaced its data. Loaded from the database at the next use.
    pub fn forget_present(&self, id: EntryId) {
        lock(&self.present).remove(&id);
    }

    /// Marks blocks being read as recently used.
    pub fn touch_blocks(&self, id: EntryId, first: u64, last: u64) {
        let mut lru = lock(&self.lru);
        for i in first..=last {
            lru.get(&(id, i));
        }
    }

    /// Lists blocks just written into `id`'s data file: in the database, in the present set
    /// and, unless the file is pinned, in the eviction order. The present set is loaded before
    /// the rows are added, so the new blocks are counted once. Returns how many blocks are
    /// present now. The caller holds the file's gate.
    pub(super) fn list_blocks(
        &self,
        id: EntryId,
        size: u64,
        got: &[u64],
        pinned: bool,
    ) -> CacheResult<u64> {
        self.with_present(id, |_| ())?;
        self.store.write(|db| db.add_blocks(id, got))?;
        self.with_present(id, |set| {
            for i in got {
                if set.insert(*i) && !pinned {
                    self.count_block(id, *i, disk_bytes(size, *i));
                }
            }
            set.len() as u64
        })
    }

    /// Puts a block in the eviction order, counted at `bytes`. A block already there (a
    /// stale entry of an earlier copy) is counted once.
    pub(super) fn count_block(&self, id: EntryId, idx: u64, bytes: u64) {
        let old = lock(&self.lru).put((id, idx), bytes);
        self.cached.fetch_add(bytes, Ordering::Relaxed);
        if let Some(old) = old {
            self.cached.fetch_sub(old, Ordering::Relaxed);
        }
    }

    /// Takes a block out of the eviction order and its bytes out of `cached`.
    pub(super) fn uncount_block(&self, id: EntryId, idx: u64) {
        if let Some(bytes) = lock(&self.lru).pop(&(id, idx)) {
            self.cached.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Drops the in-memory block list of `id` (its blocks are no longer evictable: the file
    /// became whole, or it is gone).
    pub fn forget_blocks(&self, id: EntryId) {
        if let Some(set) = lock(&self.present).remove(&id) {
            for idx in set {
                self.uncount_block(id, idx);
            }
        }
    }

    /// Called at start: every block the database lists joins the eviction order.
    pub fn load_blocks(&self) -> CacheResult<()> {
        let blocks = self.store.read(|db| db.all_blocks())?;
        for (id, idx, size) in blocks {
            self.count_block(id, idx, disk_bytes(size, idx));
        }
        Ok(())
    }

    /// Whether the version `etag` of `id` failed its checksum.
    pub fn is_corrupt(&self, id: EntryId, etag: &Option<String>) -> bool {
        lock(&self.corrupt).contains(&(id, etag.clone()))
    }

    /// Counts a read that reached the daemon: `waited` when it waited for a fetch.
    pub fn count_read(&self, waited: bool) {
        let counter = if waited { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A written file grew by `bytes`: counted as dirty data until the database's figure
    /// catches up.
    pub fn note_growth(&self, bytes: u64) {
        self.grown.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `none`, `partial`, `full` or `pinned` (pinned and wholly here): how much of a file's
    /// data is on this machine.
    pub fn cache_state(&self, ino: EntryId) -> CacheResult<&'static str> {
        let (e, pinned, blocks) = self.store.read(|db| {
            let e = db.get(ino)?.ok_or(CacheError::NotFound)?;
            let pinned = db.pinned_by(ino)?.is_some();
            let blocks = if e.kind == Kind::File && !e.local {
                db.blocks_of(ino)?.len() as u64
            } else {
                0
            };
            Ok::<_, CacheError>((e, pinned, blocks))
        })?;
        let complete = e.kind != Kind::File || e.local || blocks >= e.size.div_ceil(BLOCK_SIZE);
        Ok(match (complete, pinned, blocks) {
            (true, true, _) => "pinned",
            (true, false, _) => "full",
            (false, _, 0) => "none",
            (false, _, _) => "partial",
        })
    }

    pub fn budget(&self) -> u64 {
        self.cfg.budget
    }

    /// Bytes of evictable cached blocks, as the eviction budget counts them.
    pub fn cached_bytes(&self) -> u64 {
        self.cached.load(Ordering::Relaxed)
    }

    pub fn figures(&self) -> CacheResult<CacheFigures> {
        self.take_cleaned();
        let (blocks, dirty, pinned) = self.store.read(|db| {
            let blocks = db.block_bytes(BLOCK_SIZE, DISK_UNIT)?;
            let dirty = db.whole_file_bytes(DISK_UNIT)?;
            let mut pinned = 0;
            for f in db.pinned_files()? {
                pinned += if f.local {
                    f.size.next_multiple_of(DISK_UNIT)
                } else {
                    db.blocks_of(f.id)?
                        .into_iter()
                        .map(|i| disk_bytes(f.size, i))
                        .sum()
                };
            }
            Ok::<_, CacheError>((blocks, dirty, pinned))
        })?;
        Ok(CacheFigures {
            used: blocks + dirty,
            budget: self.cfg.budget,
            pinned,
            dirty,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        })
    }

    /// Bytes of whole files not handed to the block cache (written here, not yet uploaded):
    /// the database's figure, at most [`DIRTY_FIGURE_TTL`] old, plus what files grew by since.
    pub(super) fn dirty_bytes(&self) -> u64 {
        let mut memo = lock(&self.dirty);
        if let Some((at, v)) = *memo {
            if at.elapsed() < DIRTY_FIGURE_TTL {
                return v + self.grown.load(Ordering::Relaxed);
            }
        }
        // Files still open for writing have their size written back at close: until then
        // their growth is not in the database's figure (nor can the uploader drain it).
        self.grown.store(0, Ordering::Relaxed);
        let v = self
            .store
            .read(|db| db.whole_file_bytes(DISK_UNIT))
            .unwrap_or_default();
        *memo = Some((Instant::now(), v));
        v
    }

    pub fn forget_dirty_figure(&self) {
        *lock(&self.dirty) = None;
    }

    /// Whether the state dir's disk has `bytes` free above the floor writes keep, without
    /// counting them as written (a write handed to the kernel is checked here once, at open).
    /// The figure is at most a second old: a burst of creates asks once.
    pub fn has_room(&self, bytes: u64) -> bool {
        let mut memo = lock(&self.room);
        let avail = match *memo {
            Some((at, v)) if at.elapsed() < Duration::from_secs(1) => v,
            _ => match self.files.disk_space() {
                Ok((_, avail, _)) => {
                    *memo = Some((Instant::now(), avail));
                    avail
                }
                Err(_) => return false,
            },
        };
        avail >= DISK_FLOOR.saturating_add(bytes)
    }

    /// Back-pressure: while dirty data alone exceeds the budget and the uploader has work it
    /// can do, a writer waits for it instead of filling the disk. Offline, or when every dirty
    /// byte belongs to a file still open for writing, the write goes on (only a full disk
    /// stops it, with ENOSPC).
    /// [`BlockCache::throttle_writer`] for a writer the kernel will serve directly (FUSE
    /// passthrough), called once at its open: files the uploader made clean since are handed
    /// over and the cache evicted down to its budget first, which the writes themselves,
    /// never reaching the cache, would not do.
    pub fn throttle_direct_writer(&self) -> CacheResult<()> {
        self.take_cleaned();
        if self.over_budget() {
            self.evict_to_budget();
        }
        self.throttle_writer()
    }

    pub fn throttle_writer(&self) -> CacheResult<()> {
        let budget = self.cfg.budget;
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
            let health = &self.remote.health();
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
    pub fn check_disk_room(&self, growth: u64) -> CacheResult<()> {
        if growth == 0 {
            return Ok(());
        }
        let mut memo = lock(&self.free);
        let free = match *memo {
            Some((at, v)) if at.elapsed() < DISK_FIGURE_TTL => {
                v.saturating_sub(self.grown_since_free.load(Ordering::Relaxed))
            }
            _ => {
                let (_, avail, _) = self.files.disk_space()?;
                self.grown_since_free.store(0, Ordering::Relaxed);
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
            return Err(CacheError::DataIo(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )));
        }
        // Only growth that goes ahead counts against the figure: a refused 200 GB
        // reservation must not fail the small writes after it.
        self.grown_since_free.fetch_add(growth, Ordering::Relaxed);
        Ok(())
    }
}
