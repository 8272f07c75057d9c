//! The block cache: which parts of each file's data are on this machine, in data files under
//! `STATE/data/`, and everything that decides what stays there.
//!
//! It owns the data files (`cache/files.rs`), the per-file gates and the bookkeeping of
//! cached, dirty and pinned bytes (`cache/blocks.rs`), eviction (`cache/evict.rs`), the one
//! fetcher through which file data comes down (`cache/fetch.rs`, with read-ahead in
//! `cache/prefetch.rs`) and the pinner (`cache/pin.rs`). The filesystem core calls it; the
//! sync engine reaches it through [`FileGate`].

mod blocks;
mod changes;
mod evict;
mod fetch;
mod files;
mod pin;
mod prefetch;

use std::io;
use std::path::PathBuf;

use crate::remote::RemoteError;
use crate::store::StoreError;
use crate::types::EntryId;

pub use blocks::{BlockCache, CacheConfig, CacheFigures, Closed};
pub use changes::{Base, ChangeLog, ChangeSet, Snapshot};
pub use files::FileCache;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// I/O on a data file already open (writing fetched bytes, hashing them).
    #[error("i/o: {0}")]
    DataIo(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("fetching from the remote: {0}")]
    Remote(#[from] RemoteError),
    /// The entry went away while its data was being fetched.
    #[error("no such entry")]
    NotFound,
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl CacheError {
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CacheError::Io { source, .. } => source.raw_os_error(),
            CacheError::DataIo(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

pub type CacheResult<T> = Result<T, CacheError>;

/// What the sync engine may do to data files, which the block cache owns: hand over a file
/// it has just uploaded, and replace or remove the data of a file nobody has open. The
/// filesystem core implements it and the daemon hands it to the sync engine, so that `vfs`
/// and `sync` never import each other and no hand-off sits in a public field of the store.
pub trait FileGate: Send + Sync {
    /// The remote now holds exactly the whole data file of `id` (written here, uploaded,
    /// unchanged since): the block cache takes it over, to count and evict it like fetched
    /// blocks. A file still open is taken over at its last close.
    fn uploaded(&self, id: EntryId);

    /// The cached data of `id` went because the remote holds a newer version that no poll
    /// brought (the metadata reader found it): a pinned file is downloaded again.
    fn version_dropped(&self, id: EntryId);

    /// What an upload of `id` starting now may build on: the blocks changed since the
    /// remote's version, if this run knows that version (see `cache/changes.rs`).
    fn changes(&self, id: EntryId) -> Snapshot;

    /// An upload of `id` whose snapshot was taken at `gen` landed as `base` (`None`: as a
    /// version later changes cannot build on): changes noted up to `gen` are in it.
    fn landed(&self, id: EntryId, gen: u64, base: Option<Base>);

    /// Runs `f` under the file's gate if no handle has `id` open, and says whether it ran.
    /// An open registers its handle under the same gate before it opens the data file, so
    /// `f` may change the entry's row and replace or delete its data file: no open sees half
    /// of it, and no handle reads a data file that `f` took away. Use [`with_closed`].
    ///
    /// [`with_closed`]: trait.FileGate.html#method.with_closed
    fn run_closed(&self, id: EntryId, f: &mut dyn FnMut()) -> bool;

    /// Makes the data file of `id` whole for an upload that must send the whole file: the
    /// blocks it lacks come through the block cache's fetcher (pinned to the version the
    /// entry records, counted against the budget), in place and under the file's gate, so a
    /// handle open on the file reads the same data file throughout. Then the file is local.
    /// Blocking: call it off the async threads.
    fn fill(&self, id: EntryId) -> CacheResult<()>;

    /// Downloads the version `etag` of `key`, `size` bytes, to `dest` (a scratch file beside
    /// the data files, which the caller checks and places): a conflict's remote version set
    /// aside as a copy. Through the same fetcher as every download; another version answers
    /// `Conflict`. Blocking: call it off the async threads.
    fn fetch_version(
        &self,
        key: &str,
        etag: Option<&str>,
        size: u64,
        dest: &std::path::Path,
    ) -> CacheResult<()>;
}

impl dyn FileGate {
    /// [`FileGate::run_closed`] with a result: `None` when the file is open (try again once it
    /// is closed).
    pub fn with_closed<T>(&self, id: EntryId, f: impl FnOnce() -> T) -> Option<T> {
        let mut f = Some(f);
        let mut out = None;
        self.run_closed(id, &mut || {
            if let Some(f) = f.take() {
                out = Some(f());
            }
        });
        out
    }
}

/// Files are fetched in blocks of this size: small enough that a 4 KiB read from the middle
/// of a large object costs one short ranged GET, large enough that a sequential read with
/// several blocks in flight runs at the speed of the network (see docs/architecture.md).
pub const BLOCK_SIZE: u64 = 1 << 20;
