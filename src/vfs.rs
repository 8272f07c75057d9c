//! The filesystem core: POSIX operations over the state database and the file cache, with no
//! FUSE types, so it can be tested without a kernel in the loop.
//!
//! Every operation that changes the tree commits its effect and its journal row in one
//! transaction before it returns, so a SIGKILL right after any reply loses nothing. Writes go
//! to the entry's data file; the first write after the entry was last released "arms" it: the
//! journal row is held until the last writer lets go (close or fsync), then waits out the
//! write-back delay.

mod attr;
mod cache;
mod conflicts;
mod error;
mod handles;
mod namespace;
mod passthrough;
mod recover;

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::cache::CacheFigures;
pub use error::{VfsError, VfsResult};
pub use passthrough::{Opened, PassthroughMode, PassthroughReport};

use crate::cache::{BlockCache, CacheConfig, FileCache};
use crate::remote::Remote;
use crate::store::{now_ms, Db, Store};
use crate::types::{EntryId, Invalidation, Kind, MetaSource};

#[derive(Debug, Clone)]
pub struct VfsConfig {
    /// How long a closed file is left alone before it is uploaded.
    pub write_back: Duration,
    /// Owner of remote objects that carry no owner metadata.
    pub default_uid: u32,
    pub default_gid: u32,
    /// Longest wait for one batch of block fetches before the read fails with EIO.
    pub fetch_timeout: Duration,
    /// Bytes of clean blocks plus dirty data kept on disk before the least recently used
    /// clean blocks go.
    pub cache_budget: u64,
    /// Free space left on the state dir's disk: pinned downloads stop short of it.
    pub disk_reserve: u64,
    /// The user's quota for the mount (`--quota`): `statfs` (so `df`) answers from it and
    /// the bytes of the files in the mount instead of from the local disk.
    pub quota: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// A change requested by setattr; `None` leaves the field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// The sync state of one entry, as `user.stratus.state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    Pending,
    Uploading,
    Error,
    /// Part of an open conflict, as the local version or as the `.conflict` copy.
    Conflict,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Pending => "pending",
            SyncState::Uploading => "uploading",
            SyncState::Error => "error",
            SyncState::Conflict => "conflict",
        }
    }
}

struct Handle {
    id: EntryId,
    /// The data file; read-only for a passthrough handle (the kernel writes through a file of
    /// its own), so that only the kernel's files count as writers of it (`linger`).
    file: Option<File>,
    writable: bool,
    /// The kernel reads and writes this handle's data straight from the data file (FUSE
    /// passthrough): no read or write of it reaches the core.
    passthrough: bool,
    /// Where the previous read ended: a read starting there is sequential.
    last_end: AtomicU64,
    /// Directory listing taken at the first readdir, so that paging is stable.
    listing: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// In-memory state of an entry that is open: it exists while the block cache counts a handle
/// of the entry open (`BlockCache::opened` / `closed`, which own that count).
#[derive(Debug, Clone)]
struct Live {
    writers: u32,
    /// Handles in passthrough mode, those of them open for writing, and the other handles.
    /// The kernel refuses (EIO) a passthrough open of a file it has open otherwise and the
    /// reverse, so an open follows the handles already there (`Vfs::may_pass`).
    pass: u32,
    pass_writers: u32,
    plain: u32,
    /// Written since the journal row was last released: the row is held.
    armed: bool,
    size: u64,
    mtime_ns: i64,
    unlinked: bool,
}

/// What a file was opened at: its remote version, size and mtime.
type OpenedVersion = (Option<String>, u64, i64);

pub struct Vfs {
    store: Arc<Store>,
    cache: FileCache,
    remote: Arc<Remote>,
    cfg: VfsConfig,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Lock order: `live` before the store's connection, never the other way round.
    live: Mutex<HashMap<EntryId, Live>>,
    notices: Mutex<Option<std::sync::mpsc::Sender<Invalidation>>>,
    /// The block cache: blocks present, eviction, fetching, pins, and the per-file gates.
    blocks: Arc<BlockCache>,
    /// The version (etag, size, mtime) each file was last opened at: when a file is opened
    /// again at the same version, the kernel keeps its page cache.
    opened: Mutex<HashMap<EntryId, OpenedVersion>>,
    /// Data files of removed entries, deleted by a background thread after the removal
    /// committed: deleting a file on the state dir's disk took a third of an unlink, under the
    /// `live` lock. Ids are never reused, and `recover` sweeps what a crash left behind.
    reaper: std::sync::mpsc::Sender<EntryId>,
    /// Bytes of every file in the mount, and when they were read (`used_bytes`).
    used: Mutex<Option<(std::time::Instant, u64)>>,
    /// Directories removed (rmdir, or renamed over) while a handle had them open: what
    /// `fstat` on that handle answers (nlink 0, as on a local disk) until the last one closes.
    gone_dirs: Mutex<HashMap<EntryId, Attr>>,
    /// FUSE passthrough: whether opens may use it, counts of what used it, and handles whose
    /// release waits for a writable mapping of the data file to go (`vfs/passthrough.rs`).
    passthrough: passthrough::State,
    /// Reads the metadata of an entry a listing alone made (`Entry::unread`), before an open
    /// or a change; set by the wiring once the sync engine exists. Weak: the reader holds the
    /// sync engine's parts, which hold this core (as the `FileGate`); the wiring's `Core` owns it.
    meta: Mutex<Option<std::sync::Weak<dyn MetaSource>>>,
}

/// Starts the thread that deletes the data files of removed entries.
fn spawn_reaper(cache: FileCache) -> std::sync::mpsc::Sender<EntryId> {
    let (tx, rx) = std::sync::mpsc::channel::<EntryId>();
    let spawned = std::thread::Builder::new()
        .name("stratus-reaper".into())
        .spawn(move || {
            for id in rx {
                if let Err(e) = cache.remove(id) {
                    tracing::warn!(error = %e, "could not remove a deleted file's cached data");
                }
            }
        });
    if let Err(e) = spawned {
        // finish_removal falls back to deleting in place when the channel is closed.
        tracing::warn!(error = %e, "could not start the data file reaper");
    }
    tx
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ns_to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

impl Vfs {
    pub fn new(
        store: Arc<Store>,
        cache: FileCache,
        remote: Arc<Remote>,
        rt: tokio::runtime::Handle,
        cfg: VfsConfig,
    ) -> Vfs {
        let reaper = spawn_reaper(cache.clone());
        let blocks = BlockCache::new(
            store.clone(),
            cache.clone(),
            remote.clone(),
            rt,
            CacheConfig {
                budget: cfg.cache_budget,
                fetch_timeout: cfg.fetch_timeout,
                disk_reserve: cfg.disk_reserve,
            },
        );
        Vfs {
            store,
            cache,
            remote,
            cfg,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            gone_dirs: Mutex::new(HashMap::new()),
            notices: Mutex::new(None),
            reaper,
            blocks,
            opened: Mutex::new(HashMap::new()),
            used: Mutex::new(None),
            passthrough: passthrough::State::default(),
            meta: Mutex::new(None),
        }
    }

    /// Where the metadata of unread entries is read on demand (the sync engine's reader).
    pub fn set_meta_source(&self, source: std::sync::Weak<dyn MetaSource>) {
        *lock(&self.meta) = Some(source);
    }

    /// Reads the entry's metadata first if a listing alone made it: an open or a change must
    /// not act on the defaults it shows until then. `Err(Stale)` when the kernel's view of
    /// it no longer stands (another kind or inode, another mode or owner): the kernel looks
    /// the path up again and retries the call once.
    pub(crate) fn read_meta_first(&self, id: EntryId) -> VfsResult<()> {
        if !self.r(|db| Ok(db.get(id)?.is_some_and(|e| e.unread)))? {
            return Ok(());
        }
        let source = match lock(&self.meta).as_ref() {
            // No sync engine (a core without one): nothing can read it.
            None => return Ok(()),
            Some(weak) => weak.upgrade(),
        };
        let Some(source) = source else {
            return Err(VfsError::Metadata("the mount is shutting down".into()));
        };
        match source.read_now(id) {
            Ok(false) => Ok(()),
            Ok(true) => Err(VfsError::Stale),
            Err(reason) => {
                tracing::warn!(ino = id.0, %reason, "could not read an entry's metadata");
                Err(VfsError::Metadata(reason))
            }
        }
    }

    /// The remote, whose health and offline switch the control attributes show and set.
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn r<T>(&self, f: impl FnOnce(&Db<'_>) -> VfsResult<T>) -> VfsResult<T> {
        self.store.read(f)
    }

    fn w<T>(&self, f: impl FnOnce(&Db<'_>) -> VfsResult<T>) -> VfsResult<T> {
        self.store.user_was_active();
        self.store.write(f)
    }

    fn ready_at(&self) -> i64 {
        now_ms() + self.cfg.write_back.as_millis() as i64
    }

    /// Starts what runs beside the FUSE threads: the block cache's background fetches, the
    /// pinner that keeps pinned files downloaded, and the watch on passthrough files whose
    /// writable mapping outlived their last close.
    pub fn start(self: &Arc<Self>) {
        self.blocks.start();
        passthrough::spawn_linger_watch(Arc::downgrade(self));
    }

    pub fn statfs(&self) -> VfsResult<StatFs> {
        let (mut total, mut avail, bs) = self.cache.disk_space()?;
        let files = self.store.read(|db| db.entry_count())?;
        let bsize = bs.max(512);
        if let Some(quota) = self.cfg.quota {
            total = quota;
            avail = quota.saturating_sub(self.used_bytes()?);
        }
        Ok(StatFs {
            blocks: total / bsize,
            bfree: avail / bsize,
            bavail: avail / bsize,
            files: files + 1_000_000,
            ffree: 1_000_000,
            bsize: bsize as u32,
            namelen: crate::remote::NAME_MAX as u32,
        })
    }

    /// Bytes of every file in the mount, as a quota counts them; read from the database at
    /// most once a second (`df` and file managers may ask often).
    pub fn used_bytes(&self) -> VfsResult<u64> {
        let mut cached = lock(&self.used);
        if let Some((at, v)) = *cached {
            if at.elapsed() < Duration::from_secs(1) {
                return Ok(v);
            }
        }
        let v = self.store.read(|db| db.file_bytes())?;
        *cached = Some((std::time::Instant::now(), v));
        Ok(v)
    }

    /// The user's quota, if one was set.
    pub fn quota(&self) -> Option<u64> {
        self.cfg.quota
    }

    /// What is still to do for the entry comes first (a `.conflict` copy not yet uploaded is
    /// `pending`, not `conflict`); a synced party to an open conflict is `conflict`.
    pub fn sync_state(&self, ino: EntryId) -> VfsResult<SyncState> {
        self.r(|db| {
            let e = db.get(ino)?.ok_or(VfsError::NotFound)?;
            if self.blocks.is_corrupt(ino, &e.synced.etag) {
                return Ok(SyncState::Error);
            }
            Ok(match db.job_for(ino)? {
                Some(j) => match j.state {
                    crate::store::JobState::Parked => SyncState::Error,
                    crate::store::JobState::Uploading => SyncState::Uploading,
                    crate::store::JobState::Queued => SyncState::Pending,
                },
                None if db.open_conflict_for(ino)?.is_some() => SyncState::Conflict,
                None => SyncState::Synced,
            })
        })
    }

    fn notify(&self, i: Invalidation) {
        if let Some(n) = lock(&self.notices).as_ref() {
            let _ = n.send(i);
        }
    }

    /// Where kernel invalidations go for changes that are not the reply to a request.
    pub fn set_notices(&self, tx: std::sync::mpsc::Sender<Invalidation>) {
        *lock(&self.notices) = Some(tx);
    }

    pub fn default_owner(&self) -> (u32, u32) {
        (self.cfg.default_uid, self.cfg.default_gid)
    }
}
