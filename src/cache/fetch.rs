//! The fetcher: every byte of file data that comes down from the remote reaches this disk
//! through here, under one rule for versions and one for space.
//!
//! - Versions: a ranged GET names the version the entry records (`If-Match` on its ETag);
//!   an object changed since answers `Conflict`, and the bytes of another version are never
//!   mixed into a data file. A landing checks under the file's gate that the entry still
//!   records the version the fetch asked for.
//! - Space: unless the file is pinned, room for the blocks is made first (`make_room`), and
//!   blocks that land are listed and counted against the budget (`list_blocks`); every byte
//!   fetched counts in the remote's `downloaded` figure. A version fetched whole for a
//!   conflict copy (`fetch_version`) becomes a new file written here: it counts as dirty
//!   data, like any file not yet uploaded, once the conflict engine places it.
//! - A file whose every block is here and whose object carries our SHA-256 is checked before
//!   it is served (`verify`).
//!
//! Blocks a caller waits for in its own thread come in through [`BlockCache::ensure_blocks`];
//! reads and read-ahead go through `cache/prefetch.rs`, which fetches in the background.

use std::os::unix::fs::FileExt;

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::blocks::lock;
use super::{BlockCache, CacheError, CacheResult, BLOCK_SIZE};
use crate::remote::RemoteError;
use crate::store::Entry;
use crate::types::EntryId;

/// How long a fetch may take while the remote is known to be unreachable.
pub(super) const UNREACHABLE_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Ranged GETs of file data in flight at once: per call of `ensure_blocks`, and for all the
/// background fetches together.
pub(super) const FETCHES_IN_FLIGHT: usize = 8;
/// After a fetch failed because the remote is away, further fetches fail at once for this
/// long: the kernel retries a failed read page by page, and each retry must not wait again.
const FAILED_FETCH_QUIET: Duration = Duration::from_secs(2);

impl BlockCache {
    /// Fetches every block of `e` the data file lacks and marks the file whole: a file about
    /// to be written must be whole, since what is uploaded is the whole file. The caller
    /// holds the file's gate.
    pub fn fill(&self, e: &Entry) -> CacheResult<()> {
        let fresh = self
            .store
            .read(|db| db.get(e.id))?
            .ok_or(CacheError::NotFound)?;
        if fresh.local {
            return Ok(());
        }
        let blocks = fresh.size.div_ceil(BLOCK_SIZE);
        if blocks > 0 {
            self.ensure_blocks(&fresh, 0, blocks - 1)?;
        } else {
            self.files.create_empty(e.id)?;
        }
        self.store.write(|db| db.set_local(e.id, true))?;
        self.forget_blocks(e.id);
        self.forget_dirty_figure();
        Ok(())
    }

    /// Makes blocks `first..=last` of a partly cached file present in this thread (the
    /// caller holds the file's gate), fetching what is missing by ranged GETs pinned to the
    /// version the entry records (`If-Match`), several in flight. For callers that must hold
    /// the gate throughout (filling a file for a writer, the pinner); readers go through
    /// `with_blocks`. Returns whether anything had to be fetched.
    pub fn ensure_blocks(&self, e: &Entry, first: u64, last: u64) -> CacheResult<bool> {
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
            CacheError::Invalid("entry has neither local data nor a remote copy".into())
        })?;
        self.check_fetch_allowed(&key)?;
        let pinned = self.store.read(|db| db.pinned_by(e.id))?.is_some();
        let reserved = if pinned {
            0
        } else {
            self.reserve_room(e.size, e.id, &(first..=last), &want)
        };
        let r = self.fetch_blocks(e, &key, &want, nblocks, pinned);
        self.unreserve(reserved);
        r
    }

    /// [`BlockCache::ensure_blocks`] once room is made: fetches `want`, writes and lists
    /// what came.
    fn fetch_blocks(
        &self,
        e: &Entry,
        key: &str,
        want: &[u64],
        nblocks: u64,
        pinned: bool,
    ) -> CacheResult<bool> {
        let key = key.to_string();
        self.files.ensure_sparse(e.id, e.size)?;
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
            tokio::time::timeout(self.fetch_limit(), gets).await
        });
        let results = fetched.map_err(|_| {
            tracing::warn!(%key, "block fetch timed out");
            self.mark_fetch_failed();
            self.remote
                .health()
                .record_error(true, &format!("{key}: block fetch timed out"));
            CacheError::Remote(RemoteError::unavailable("fetch timed out"))
        })?;
        let f = self.files.open_file(e.id, false)?;
        let mut got = Vec::with_capacity(results.len());
        let mut failure = None;
        for r in results {
            match r {
                Ok((i, bytes)) => {
                    f.write_all_at(&bytes, i * BLOCK_SIZE)?;
                    self.count_downloaded(bytes.len());
                    got.push(i);
                }
                Err(err) => failure = Some(err),
            }
        }
        let complete = self.list_blocks(e.id, e.size, &got, pinned)? >= nblocks;
        if !got.is_empty() {
            self.remote.health().record_ok();
        }
        match failure {
            None if complete => self.verify(e, &key).map(|()| true),
            None => Ok(true),
            Some(RemoteError::Conflict(_)) => {
                tracing::warn!(%key, "the object changed since this file was opened; reopen it for the new version");
                Err(CacheError::Remote(RemoteError::Conflict(key)))
            }
            Some(err) => {
                tracing::warn!(%key, %err, "block fetch failed");
                if let RemoteError::Unavailable { message, .. } = &err {
                    // The next uncached read fails within seconds instead of waiting too.
                    self.remote.health().record_error(true, message);
                    self.mark_fetch_failed();
                }
                Err(CacheError::Remote(err))
            }
        }
    }

    /// Downloads version `etag` of `key` (`size` bytes) into a new file at `dest`, outside
    /// the data files: ranged GETs pinned to that version, several in flight, each block
    /// written as it arrives. No time limit beyond the remote's own (a copy may be large, and
    /// nobody waits on it but the uploader).
    pub fn fetch_version(
        &self,
        key: &str,
        etag: Option<&str>,
        size: u64,
        dest: &std::path::Path,
    ) -> CacheResult<()> {
        let io = |source| CacheError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let f = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            0o600,
        )
        .open(dest)
        .map_err(io)?;
        f.set_len(size).map_err(io)?;
        tracing::debug!(%key, size, "fetching a version");
        self.rt.block_on(async {
            let mut gets = futures::stream::iter(0..size.div_ceil(BLOCK_SIZE))
                .map(|i| async move {
                    let range = i * BLOCK_SIZE..((i + 1) * BLOCK_SIZE).min(size);
                    self.remote
                        .get_range(key, range, etag)
                        .await
                        .map(|b| (i, b))
                })
                .buffer_unordered(FETCHES_IN_FLIGHT);
            while let Some(got) = gets.next().await {
                let (i, bytes) = got?;
                f.write_all_at(&bytes, i * BLOCK_SIZE).map_err(io)?;
                self.count_downloaded(bytes.len());
            }
            Ok(())
        })
    }

    /// How long a batch of fetches may take: short while the remote is known to be away.
    pub(super) fn fetch_limit(&self) -> Duration {
        if self.remote.health().is_reachable() {
            self.cfg.fetch_timeout
        } else {
            UNREACHABLE_FETCH_TIMEOUT
        }
    }

    /// Counts bytes that came down in the remote's `downloaded` figure.
    pub(super) fn count_downloaded(&self, bytes: usize) {
        self.remote.health().add_downloaded(bytes as u64);
    }

    /// Refuses a version whose fetched data failed its checksum.
    pub(super) fn check_not_corrupt(&self, id: EntryId, etag: &Option<String>) -> CacheResult<()> {
        if self.is_corrupt(id, etag) {
            return Err(CacheError::Remote(RemoteError::Permanent(
                "this version failed its checksum".into(),
            )));
        }
        Ok(())
    }

    /// Fails when data not cached here cannot be fetched now: offline, or the remote just
    /// failed to answer (the kernel retries a failed read page by page, and each retry must
    /// not wait again).
    pub(super) fn check_fetch_allowed(&self, key: &str) -> CacheResult<()> {
        if self.remote.health().is_offline() {
            tracing::warn!(%key, "offline: this part of the file is not cached here");
            return Err(CacheError::Remote(RemoteError::unavailable("offline")));
        }
        let quiet = lock(&self.failed_at).is_some_and(|t| t.elapsed() < FAILED_FETCH_QUIET);
        if quiet && !self.remote.health().is_reachable() {
            tracing::warn!(%key, "the remote is not answering; this part of the file is not cached here");
            return Err(CacheError::Remote(RemoteError::unavailable(
                "the remote is not answering",
            )));
        }
        Ok(())
    }

    pub(super) fn mark_fetch_failed(&self) {
        *lock(&self.failed_at) = Some(Instant::now());
    }

    /// Once every block of a file is here and the object carries our SHA-256, the data is
    /// checked: a mismatch is never served. The blocks go (a later read fetches them again)
    /// and the read fails with EIO.
    pub(super) fn verify(&self, e: &Entry, key: &str) -> CacheResult<()> {
        let Some(want) = e.synced.hash.as_deref() else {
            return Ok(());
        };
        let got = crate::remote::hash_file(&self.files.path(e.id))?;
        if got == want {
            return Ok(());
        }
        tracing::error!(%key, want, got = %got, "fetched data does not match the object's SHA-256; not serving it");
        self.remote.health().record_error(
            false,
            &format!("{key}: fetched data does not match its SHA-256"),
        );
        lock(&self.corrupt).insert((e.id, e.synced.etag.clone()));
        self.store.write(|db| db.set_local(e.id, false))?;
        self.forget_blocks(e.id);
        // Punched, not removed: an open handle keeps reading this same file.
        let _ = self
            .files
            .punch_hole(e.id, 0, e.size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE);
        Err(CacheError::Remote(RemoteError::Permanent(format!(
            "{key}: checksum mismatch"
        ))))
    }
}
