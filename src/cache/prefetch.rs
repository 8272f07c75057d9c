//! Reads of blocks not yet cached: ranged GETs run as background tasks and land in the data
//! file on their own, so a sequential reader keeps a window of blocks in flight ahead of it
//! and never waits at the end of a batch. (Regression: the reader fetched 17 blocks, waited
//! for all of them, and only then asked for more, which capped a cold read at a fifth of one
//! plain GET.)
//!
//! A reader takes the file's gate, finds what it needs missing, schedules it (and, when
//! sequential, the read-ahead window), lets go of the gate and waits for the blocks to land.
//! A landing takes the gate, checks that the file is still the version the fetch asked for,
//! writes the bytes and lists the blocks. Contiguous missing blocks go out as one GET of up
//! to [`CHUNK_BLOCKS`] blocks: a GET of 8 MiB costs the server little more than one of 1 MiB.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::blocks::{disk_bytes, lock};
use super::fetch::FETCHES_IN_FLIGHT;
use super::{BlockCache, CacheError, CacheResult, BLOCK_SIZE};
use crate::remote::RemoteError;
use crate::store::Entry;
use crate::types::EntryId;

/// Blocks one GET fetches at most.
const CHUNK_BLOCKS: u64 = 16;
/// Blocks a sequential reader keeps in flight or cached ahead of itself, at most; a small
/// cache budget shrinks it (a quarter of the budget).
const READ_AHEAD_BLOCKS: u64 = 128;
/// Under a download limit, the read-ahead window holds what the limit lets in in this time.
const READ_AHEAD_UNDER_LIMIT: Duration = Duration::from_secs(8);
/// A reader whose blocks keep being evicted before it gets to them gives up after this many
/// rounds (only a cache far too small for the readers at hand does that).
const MAX_ROUNDS: u32 = 6;

/// Why a fetch failed, kept for the reader waiting on it.
#[derive(Debug, Clone)]
struct Failure {
    at: Instant,
    conflict: bool,
    transient: bool,
    message: String,
}

impl Failure {
    fn of(err: &RemoteError) -> Failure {
        Failure {
            at: Instant::now(),
            conflict: matches!(err, RemoteError::Conflict(_)),
            transient: err.is_transient(),
            message: err.to_string(),
        }
    }

    fn error(&self, key: &str) -> CacheError {
        CacheError::Remote(if self.conflict {
            RemoteError::Conflict(key.to_string())
        } else if self.transient {
            RemoteError::unavailable(self.message.clone())
        } else {
            RemoteError::Permanent(self.message.clone())
        })
    }
}

#[derive(Default)]
struct Flights {
    inflight: HashMap<EntryId, HashSet<u64>>,
    failed: HashMap<(EntryId, u64), Failure>,
    /// Files read through one long GET from their start (see `stream`).
    streaming: HashSet<EntryId>,
    /// The furthest block a reader of each file asked for: a stream keeps at most the
    /// read-ahead window beyond it.
    reader_at: HashMap<EntryId, u64>,
}

/// Blocks a stream claims (marks in flight) ahead of where it is, so that a reader behind it
/// waits for it instead of fetching the same blocks again.
const STREAM_CLAIM_BLOCKS: u64 = 16;
/// How long a stream waits for a reader that stopped reading before it lets go.
const STREAM_PATIENCE: Duration = Duration::from_secs(20);

/// A SHA-256 of a file's data computed as its blocks land, in order: block `next` is the
/// first not yet hashed. Checking a 1 GiB file at the end would stall its reader for seconds.
struct Running {
    etag: Option<String>,
    hasher: sha2::Sha256,
    next: u64,
}

/// Fetches in flight, a field of [`BlockCache`].
pub(super) struct Prefetch {
    flights: Mutex<Flights>,
    hashing: Mutex<HashMap<EntryId, Running>>,
    landed: Condvar,
    /// GETs of file data in flight at once, all files together.
    slots: Arc<tokio::sync::Semaphore>,
    /// Set by [`BlockCache::start`]: until then reads fetch in their own thread.
    started: AtomicBool,
}

impl Prefetch {
    pub fn new() -> Prefetch {
        Prefetch {
            flights: Mutex::default(),
            hashing: Mutex::default(),
            landed: Condvar::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(FETCHES_IN_FLIGHT)),
            started: AtomicBool::new(false),
        }
    }
}

/// What a background fetch needs of the entry, as it was when the fetch was planned.
#[derive(Clone)]
struct Target {
    id: EntryId,
    key: String,
    etag: Option<String>,
    size: u64,
}

impl BlockCache {
    /// Starts what runs beside the callers: background fetches, and the pinner that keeps
    /// pinned files downloaded.
    pub fn start(self: &Arc<Self>) {
        self.prefetch.started.store(true, Ordering::Relaxed);
        self.start_pinner();
    }

    fn read_ahead_blocks(&self) -> u64 {
        let window = (self.cfg.budget / BLOCK_SIZE / 4).clamp(1, READ_AHEAD_BLOCKS);
        // Under a download limit, no more ahead than the limit lets in within a few
        // seconds: a reader waiting behind a long window would otherwise wait out its fetch
        // timeout for blocks queued behind the read-ahead.
        let down = self.remote.bwlimit().down;
        if down.is_off() {
            window
        } else {
            window.min((down.0 * READ_AHEAD_UNDER_LIMIT.as_secs() / BLOCK_SIZE).max(1))
        }
    }

    /// Runs `f` under the file's gate once blocks `first..=last` of `e` are in its data
    /// file, fetching what is missing in the background (and, for a sequential reader, the
    /// blocks ahead). Returns `f`'s result and whether anything had to be waited for.
    pub fn with_blocks<T, E: From<CacheError>>(
        self: &Arc<Self>,
        e: &Entry,
        first: u64,
        last: u64,
        sequential: bool,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, bool), E> {
        if !self.prefetch.started.load(Ordering::Relaxed) {
            // Not started (tests of the core alone): fetch in this thread.
            let gate = self.gate(e.id);
            let _g = lock(&gate);
            let waited = self.ensure_blocks(e, first, last)?;
            return Ok((f()?, waited));
        };
        let nblocks = e.size.div_ceil(BLOCK_SIZE);
        let last = last.min(nblocks.saturating_sub(1));
        let key = e.synced.key.clone().ok_or_else(|| {
            CacheError::Invalid("entry has neither local data nor a remote copy".into())
        })?;
        let target = Target {
            id: e.id,
            key: key.clone(),
            etag: e.synced.etag.clone(),
            size: e.size,
        };
        let mut streaming = {
            let mut fl = lock(&self.prefetch.flights);
            let at = fl.reader_at.entry(e.id).or_insert(0);
            *at = (*at).max(last);
            fl.streaming.contains(&e.id)
        };
        // A sequential reader near the start of a large file that is not cached: one long GET
        // of the whole object serves it at the speed of the network.
        if sequential && !streaming && last < 4 && nblocks > 2 * CHUNK_BLOCKS {
            let untouched = self.with_present(e.id, |p| p.iter().all(|i| *i <= last))?;
            if untouched && self.check_fetch_allowed(&key).is_ok() {
                streaming = self.start_stream(&target);
            }
        }
        let mut waited = false;
        for _ in 0..MAX_ROUNDS {
            let gate = self.gate(e.id);
            let g = lock(&gate);
            let window = last + 1..nblocks.min(last + 1 + self.read_ahead_blocks());
            let (missing, ahead) = self.with_present(e.id, |present| {
                let missing: Vec<u64> = (first..=last).filter(|i| !present.contains(i)).collect();
                let ahead: Vec<u64> = if sequential && !streaming {
                    window.filter(|i| !present.contains(i)).collect()
                } else {
                    Vec::new()
                };
                (missing, ahead)
            })?;
            {
                // Keep the window ahead full, also when nothing is missing here.
                if !ahead.is_empty() {
                    let keep = first..=last;
                    self.schedule(&target, &ahead, &keep, true)?;
                }
            }
            if missing.is_empty() {
                self.touch_blocks(e.id, first, last);
                let out = f()?;
                drop(g);
                return Ok((out, waited));
            }
            waited = true;
            self.schedule(&target, &missing, &(first..=last), false)?;
            drop(g);
            self.wait_for(e.id, &missing, &key)?;
        }
        tracing::warn!(%key, "blocks were evicted before they could be read; the cache is too small for the readers at hand");
        Err(CacheError::Remote(RemoteError::unavailable(
            "cache too small for the reads in flight",
        ))
        .into())
    }

    /// Starts background GETs for those of `want` that are neither in flight nor just
    /// failed, after making room for them. The caller holds the file's gate. `ahead`: these
    /// are read-ahead, which goes only as far as fetches in flight, all readers together,
    /// stay within half the budget: several readers' windows must not add up past the budget
    /// (a reader's own missing blocks always go).
    fn schedule(
        self: &Arc<Self>,
        t: &Target,
        want: &[u64],
        keep: &std::ops::RangeInclusive<u64>,
        ahead: bool,
    ) -> CacheResult<()> {
        self.check_not_corrupt(t.id, &t.etag)?;
        let todo: Vec<u64> = {
            let mut fl = lock(&self.prefetch.flights);
            let Flights {
                inflight, failed, ..
            } = &mut *fl;
            let set = inflight.entry(t.id).or_default();
            want.iter()
                .copied()
                .filter(|i| !set.contains(i))
                .filter(|i| match failed.get(&(t.id, *i)) {
                    // A reader waiting for it takes the error; a later one tries again.
                    Some(f) if f.at.elapsed() < Duration::from_secs(2) => false,
                    Some(_) => {
                        failed.remove(&(t.id, *i));
                        true
                    }
                    None => true,
                })
                .collect()
        };
        let mut todo = todo;
        if ahead {
            let room = (self.cfg.budget / 2).saturating_sub(self.reserved.load(Ordering::Relaxed));
            todo.truncate((room / BLOCK_SIZE) as usize);
        }
        if todo.is_empty() {
            return Ok(());
        }
        self.check_fetch_allowed(&t.key)?;
        let pinned = self.store.read(|db| db.pinned_by(t.id))?.is_some();
        if !pinned {
            // Each GET below gives back its share when it lands or fails.
            self.reserve_room(t.size, t.id, keep, &todo);
        }
        if let Err(err) = self.files.ensure_sparse(t.id, t.size) {
            if !pinned {
                self.unreserve(todo.iter().map(|i| disk_bytes(t.size, *i)).sum());
            }
            return Err(err);
        }
        {
            let mut fl = lock(&self.prefetch.flights);
            let set = fl.inflight.entry(t.id).or_default();
            for i in &todo {
                set.insert(*i);
            }
        }
        // Runs of contiguous blocks, cut into chunks of at most CHUNK_BLOCKS.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in todo {
            match runs.last_mut() {
                Some((a, b)) if *b + 1 == i && i - *a < CHUNK_BLOCKS => *b = i,
                _ => runs.push((i, i)),
            }
        }
        tracing::debug!(key = %t.key, ?runs, "fetching blocks");
        for (a, b) in runs {
            let reserved: u64 = if pinned {
                0
            } else {
                (a..=b).map(|i| disk_bytes(t.size, i)).sum()
            };
            let (cache, t) = (self.clone(), t.clone());
            let slots = self.prefetch.slots.clone();
            self.rt.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    cache.unreserve(reserved);
                    return;
                };
                let range = a * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(t.size);
                let got = cache
                    .remote
                    .get_range(&t.key, range, t.etag.as_deref())
                    .await;
                let _ = tokio::task::spawn_blocking(move || {
                    cache.land(&t, a, b, got, false);
                    cache.unreserve(reserved);
                })
                .await;
            });
        }
        Ok(())
    }

    /// Starts one GET of the whole object that lands its blocks in order, paced by the reader:
    /// it stays at most the read-ahead window ahead of the furthest block asked for, and lets
    /// go (the reader then fetches by ranges) when the reader stops or the transfer fails.
    /// True when a stream runs for the file (this one or one started before).
    fn start_stream(self: &Arc<Self>, t: &Target) -> bool {
        if !lock(&self.prefetch.flights).streaming.insert(t.id) {
            return true;
        }
        let (cache, t) = (self.clone(), t.clone());
        self.rt.spawn(async move {
            let mut claimed: Vec<u64> = Vec::new();
            let r = cache.stream(&t, &mut claimed).await;
            if let Err(err) = &r {
                tracing::debug!(key = %t.key, %err, "stream ended early; reading by ranges");
            }
            let mut fl = lock(&cache.prefetch.flights);
            fl.streaming.remove(&t.id);
            if let Some(set) = fl.inflight.get_mut(&t.id) {
                for i in &claimed {
                    set.remove(i);
                }
            }
            drop(fl);
            cache.prefetch.landed.notify_all();
        });
        true
    }

    async fn stream(
        self: &Arc<Self>,
        t: &Target,
        claimed: &mut Vec<u64>,
    ) -> Result<(), RemoteError> {
        let nblocks = t.size.div_ceil(BLOCK_SIZE);
        let Some(body) = self.remote.get_stream(&t.key, t.etag.as_deref()).await else {
            return Ok(());
        };
        let mut body = body?;
        let mut buf = bytes::BytesMut::with_capacity(BLOCK_SIZE as usize * 2);
        let mut next = 0u64;
        let ahead = self.read_ahead_blocks();
        while next < nblocks {
            // Claim the blocks just ahead that nobody has or fetches.
            {
                let present = lock(&self.present).get(&t.id).cloned().unwrap_or_default();
                let mut fl = lock(&self.prefetch.flights);
                let set = fl.inflight.entry(t.id).or_default();
                for i in next..(next + STREAM_CLAIM_BLOCKS).min(nblocks) {
                    if !claimed.contains(&i) && !present.contains(&i) && set.insert(i) {
                        claimed.push(i);
                    }
                }
            }
            let len = (BLOCK_SIZE.min(t.size - next * BLOCK_SIZE)) as usize;
            while buf.len() < len {
                let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
                    .await
                    .map_err(|_| RemoteError::unavailable("stream stalled"))?;
                match chunk {
                    Some(c) => buf.extend_from_slice(&c?),
                    None => return Err(RemoteError::unavailable("stream ended short")),
                }
            }
            let block = buf.split_to(len).freeze();
            if let Some(pos) = claimed.iter().position(|i| *i == next) {
                claimed.swap_remove(pos);
                let (cache, t2) = (self.clone(), t.clone());
                let i = next;
                // Room is made as each block lands: the stream reserves none ahead.
                tokio::task::spawn_blocking(move || cache.land(&t2, i, i, Ok(block), true))
                    .await
                    .map_err(|e| RemoteError::unavailable(e.to_string()))?;
            }
            next += 1;
            // Pace: wait for the reader, and give up on one that went away.
            let since = std::time::Instant::now();
            loop {
                let at = lock(&self.prefetch.flights)
                    .reader_at
                    .get(&t.id)
                    .copied()
                    .unwrap_or(0);
                if next <= at + ahead {
                    break;
                }
                if since.elapsed() > STREAM_PATIENCE {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Puts a finished GET's bytes in place, if the file is still the version it asked for;
    /// `room`: make room for them first (the whole-object stream, which reserves none).
    fn land(&self, t: &Target, a: u64, b: u64, got: Result<bytes::Bytes, RemoteError>, room: bool) {
        let mut failure = None;
        match got {
            Ok(bytes) => {
                let gate = self.gate(t.id);
                let _g = lock(&gate);
                match self
                    .land_locked(t, a, b, &bytes, room)
                    .and_then(|landed| match landed {
                        Some(e) => self.hash_landed(&e, t, a, &bytes),
                        None => Ok(()),
                    }) {
                    Ok(()) => {}
                    Err(CacheError::Remote(err)) => failure = Some(Failure::of(&err)),
                    Err(err) => {
                        tracing::warn!(key = %t.key, %err, "could not store fetched blocks");
                        failure = Some(Failure {
                            at: Instant::now(),
                            conflict: false,
                            transient: false,
                            message: err.to_string(),
                        });
                    }
                }
            }
            Err(err) => {
                if let RemoteError::Conflict(_) = &err {
                    tracing::warn!(key = %t.key, "the object changed since this file was opened; reopen it for the new version");
                } else {
                    tracing::warn!(key = %t.key, %err, "block fetch failed");
                }
                if err.is_transient() {
                    // The next uncached read fails within seconds instead of waiting too.
                    self.remote.health().record_error(true, &err.to_string());
                    self.mark_fetch_failed();
                }
                failure = Some(Failure::of(&err));
            }
        }
        {
            let mut fl = lock(&self.prefetch.flights);
            if let Some(set) = fl.inflight.get_mut(&t.id) {
                for i in a..=b {
                    set.remove(&i);
                }
                if set.is_empty() {
                    fl.inflight.remove(&t.id);
                }
            }
            if let Some(f) = failure {
                for i in a..=b {
                    fl.failed.insert((t.id, i), f.clone());
                }
            }
            if fl.failed.len() > 10_000 {
                fl.failed.clear();
            }
        }
        self.prefetch.landed.notify_all();
    }

    /// [`BlockCache::land`] under the gate; the entry, when the bytes were stored.
    fn land_locked(
        &self,
        t: &Target,
        a: u64,
        b: u64,
        bytes: &[u8],
        room: bool,
    ) -> CacheResult<Option<Entry>> {
        let Some(cur) = self.store.read(|db| db.get(t.id))? else {
            return Ok(None);
        };
        if cur.local || cur.synced.etag != t.etag || cur.size != t.size {
            // Written, replaced or emptied meanwhile: these bytes belong to no one.
            return Ok(None);
        }
        let pinned = self.store.read(|db| db.pinned_by(t.id))?.is_some();
        if room && !pinned {
            let need = (a..=b).map(|i| disk_bytes(t.size, i)).sum();
            self.make_room(need, t.id, &(a..=b), &[]);
        }
        let f = self.files.open_file(t.id, false)?;
        f.write_all_at(bytes, a * BLOCK_SIZE)?;
        self.count_downloaded(bytes.len());
        self.remote.health().record_ok();
        let got: Vec<u64> = (a..=b).collect();
        self.list_blocks(t.id, t.size, &got, pinned)?;
        Ok(Some(cur))
    }

    /// Advances the file's running SHA-256 over the blocks now present in order (the bytes
    /// just fetched from memory, earlier ones from the data file). When it reaches the end
    /// and the object carries our hash, a mismatch refuses the version (see `verify`) before
    /// any reader waiting for these blocks is woken. Called under the file's gate.
    fn hash_landed(&self, e: &Entry, t: &Target, a: u64, bytes: &[u8]) -> CacheResult<()> {
        use sha2::Digest;
        let Some(want) = e.synced.hash.as_deref() else {
            return Ok(());
        };
        let nblocks = t.size.div_ceil(BLOCK_SIZE);
        let mut hashing = lock(&self.prefetch.hashing);
        if hashing.len() > 4096 {
            // Files read in part and left: their hash starts over if they are ever completed.
            hashing.clear();
        }
        let run = hashing.entry(t.id).or_insert_with(|| Running {
            etag: t.etag.clone(),
            hasher: sha2::Sha256::new(),
            next: 0,
        });
        if run.etag != t.etag {
            *run = Running {
                etag: t.etag.clone(),
                hasher: sha2::Sha256::new(),
                next: 0,
            };
        }
        let fetched = a..a + (bytes.len() as u64).div_ceil(BLOCK_SIZE);
        let from = run.next;
        let upto = self
            .with_present(t.id, |p| (from..nblocks).find(|i| !p.contains(i)))?
            .unwrap_or(nblocks);
        let mut file = None;
        let mut buf = Vec::new();
        while run.next < upto {
            let i = run.next;
            let len = (BLOCK_SIZE.min(t.size - i * BLOCK_SIZE)) as usize;
            if fetched.contains(&i) {
                let at = ((i - a) * BLOCK_SIZE) as usize;
                run.hasher.update(&bytes[at..at + len]);
            } else {
                let f = match &file {
                    Some(f) => f,
                    None => file.insert(self.files.open_file(t.id, false)?),
                };
                buf.resize(len, 0);
                f.read_exact_at(&mut buf, i * BLOCK_SIZE)?;
                run.hasher.update(&buf);
            }
            run.next += 1;
        }
        if run.next < nblocks {
            return Ok(());
        }
        let run = hashing.remove(&t.id).expect("present");
        drop(hashing);
        if hex::encode(run.hasher.finalize()) == want {
            return Ok(());
        }
        // Hashed again from the data file, which also settles a block punched and fetched
        // anew while the running hash went by.
        self.verify(e, &t.key)
    }

    /// Waits until none of `blocks` is in flight; fails with the error of a fetch that failed.
    fn wait_for(&self, id: EntryId, blocks: &[u64], key: &str) -> CacheResult<()> {
        let limit = self.fetch_limit();
        let deadline = Instant::now() + limit;
        let mut fl = lock(&self.prefetch.flights);
        loop {
            for i in blocks {
                if let Some(f) = fl.failed.remove(&(id, *i)) {
                    return Err(f.error(key));
                }
            }
            let busy = fl
                .inflight
                .get(&id)
                .is_some_and(|s| blocks.iter().any(|i| s.contains(i)));
            if !busy {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(%key, "block fetch timed out");
                self.remote
                    .health()
                    .record_error(true, &format!("{key}: block fetch timed out"));
                self.mark_fetch_failed();
                return Err(CacheError::Remote(RemoteError::unavailable(
                    "fetch timed out",
                )));
            }
            fl = self
                .prefetch
                .landed
                .wait_timeout(fl, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
