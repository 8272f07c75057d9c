//! The filesystem core: POSIX operations over the state database and the file cache, with no
//! FUSE types, so it can be tested without a kernel in the loop.
//!
//! Every operation that changes the tree commits its effect and its journal row in one
//! transaction before it returns, so a SIGKILL right after any reply loses nothing. Writes go
//! to the entry's data file; the first write after the entry was last released "arms" it: the
//! journal row is held until the last writer lets go (close or fsync), then waits out the
//! write-back delay.

mod blocks;
mod error;
mod prefetch;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use blocks::CacheFigures;
pub use error::{VfsError, VfsResult};

use crate::cache::{FileCache, BLOCK_SIZE};
use crate::remote::Remote;
use crate::store::{dirty, now_ms, now_ns, Db, Entry, NewEntry, Store, Synced};
use crate::types::{EntryId, Invalidation, Keep, Kind};

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

/// What a removal does after its transaction commits.
#[derive(Default)]
struct Removal {
    files: Vec<EntryId>,
    unlinked: Vec<EntryId>,
}

struct Handle {
    id: EntryId,
    file: Option<File>,
    writable: bool,
    /// Where the previous read ended: a read starting there is sequential.
    last_end: AtomicU64,
    /// Directory listing taken at the first readdir, so that paging is stable.
    listing: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// In-memory state of an entry that is open.
#[derive(Debug, Clone)]
struct Live {
    open: u32,
    writers: u32,
    /// Written since the journal row was last released: the row is held.
    armed: bool,
    size: u64,
    mtime_ns: i64,
    unlinked: bool,
    /// The uploader made this file clean while it was open: hand it to the block cache at
    /// the last close.
    retire_on_close: bool,
}

/// What a file was opened at: its remote version, size and mtime.
type OpenedVersion = (Option<String>, u64, i64);

pub struct Vfs {
    store: Arc<Store>,
    cache: FileCache,
    remote: Arc<Remote>,
    rt: tokio::runtime::Handle,
    cfg: VfsConfig,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Lock order: `live` before the store's connection, never the other way round.
    live: Mutex<HashMap<EntryId, Live>>,
    notices: Mutex<Option<std::sync::mpsc::Sender<Invalidation>>>,
    blocks: blocks::BlockState,
    prefetch: prefetch::Prefetch,
    /// The version (etag, size, mtime) each file was last opened at: when a file is opened
    /// again at the same version, the kernel keeps its page cache.
    opened: Mutex<HashMap<EntryId, OpenedVersion>>,
    /// Data files of removed entries, deleted by a background thread after the removal
    /// committed: deleting a file on the state dir's disk took a third of an unlink, under the
    /// `live` lock. Ids are never reused, and `recover` sweeps what a crash left behind.
    reaper: std::sync::mpsc::Sender<EntryId>,
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

/// Reads up to `size` bytes at `offset`; short only at the end of the file.
fn read_at(f: &File, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read_at(&mut buf[n..], offset + n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
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
        Vfs {
            store,
            cache,
            remote,
            rt,
            cfg,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            notices: Mutex::new(None),
            reaper,
            blocks: blocks::BlockState::new(),
            prefetch: prefetch::Prefetch::new(),
            opened: Mutex::new(HashMap::new()),
        }
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

    fn attr_of(&self, e: &Entry, live: Option<&Live>) -> Attr {
        let (size, mtime_ns) = match live {
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

    fn attr(&self, e: &Entry) -> Attr {
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
    fn fresh_attr(
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

    fn with_links(&self, e: &Entry, mut a: Attr) -> Attr {
        if e.kind == Kind::Dir {
            // A directory is linked from its parent, from its own '.', and from the '..' of
            // each subdirectory.
            if let Ok(n) = self.store.read(|db| db.subdir_count(e.id)) {
                a.nlink = 2 + n as u32;
            }
        }
        a
    }

    fn ready_at(&self) -> i64 {
        now_ms() + self.cfg.write_back.as_millis() as i64
    }

    /// Checks a new name against POSIX and the remote's key rules.
    fn check_new_name(&self, db: &Db<'_>, parent: EntryId, name: &[u8]) -> VfsResult<()> {
        if name.len() > crate::remote::NAME_MAX {
            return Err(VfsError::NameTooLong(format!("{} bytes", name.len())));
        }
        if let Err(reason) = self.remote.check_name(name) {
            tracing::warn!(name = %String::from_utf8_lossy(name), %reason, "refusing a name the remote cannot store");
            return Err(VfsError::Invalid(reason));
        }
        let parent_path = db.path_of(parent)?.ok_or(VfsError::NotFound)?;
        let key_len = parent_path.len() + usize::from(!parent_path.is_empty()) + name.len();
        if key_len > self.remote.max_key_len() {
            tracing::warn!(
                key_len,
                max = self.remote.max_key_len(),
                "refusing a path longer than the remote's key limit"
            );
            return Err(VfsError::NameTooLong(format!(
                "path of {key_len} bytes exceeds the remote's {}-byte key limit",
                self.remote.max_key_len()
            )));
        }
        Ok(())
    }

    fn dir(&self, db: &Db<'_>, id: EntryId) -> VfsResult<Entry> {
        let e = db.get(id)?.ok_or(VfsError::NotFound)?;
        if e.kind != Kind::Dir {
            return Err(VfsError::NotDir);
        }
        Ok(e)
    }

    fn touch_dir(&self, db: &Db<'_>, dir: &Entry) -> VfsResult<()> {
        let mut d = dir.clone();
        let now = now_ns();
        d.mtime_ns = now;
        d.ctime_ns = now;
        db.update(&d)?;
        Ok(())
    }

    /// A directory that exists on the remote only because keys lie below it (no marker, no
    /// base) would vanish with its last child there, and the next poll would take it away
    /// here too: one that loses a child gets its own marker. (Found by the sync model: a
    /// file another tool wrote at `f/g`, unlinked here, took `f` with it.)
    fn keep_dir(&self, db: &Db<'_>, dir: &Entry) -> VfsResult<()> {
        if dir.id != EntryId::ROOT && dir.synced.key.is_none() && db.job_for(dir.id)?.is_none() {
            db.enqueue_sync(dir.id, dirty::META, Some(now_ms()))?;
        }
        Ok(())
    }

    pub fn lookup(&self, parent: EntryId, name: &OsStr) -> VfsResult<Attr> {
        let name = name.as_bytes();
        if name.len() > crate::remote::NAME_MAX {
            return Err(VfsError::NameTooLong(format!("{} bytes", name.len())));
        }
        self.fresh_attr(|db| db.lookup(parent, name))
    }

    pub fn getattr(&self, ino: EntryId) -> VfsResult<Attr> {
        self.fresh_attr(|db| db.get(ino))
    }

    pub fn setattr(&self, ino: EntryId, set: &SetAttr) -> VfsResult<Attr> {
        let mut e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        let now = now_ns();
        let mut flags = 0;
        let mut truncate_to = None;
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
            gate = self.gate(e.id);
            _gate_guard = Some(lock(&gate));
            e = self
                .store
                .read(|db| db.get(ino))?
                .ok_or(VfsError::NotFound)?;
            if !e.local && size > 0 {
                self.fill_locked(&e)?;
            }
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
        // Shrinking: the data file follows the committed size, never leads it: after a
        // crash in between, `recover` cuts it to the size the database holds. (Regression:
        // it was cut first, and a crash before the commit left the old size, the truncated
        // data and the old content on the remote for good.)
        if becomes_local {
            self.forget_blocks(e.id);
            self.forget_dirty_figure();
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
        // Taken before the lock goes: see `fresh_attr`.
        let a = self.attr_of(&e, live.get(&e.id));
        drop(live);
        Ok(self.with_links(&e, a))
    }

    pub fn readlink(&self, ino: EntryId) -> VfsResult<Vec<u8>> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        match (e.kind, e.target) {
            (Kind::Symlink, Some(t)) => Ok(t),
            _ => Err(VfsError::Invalid("not a symlink".into())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_child(
        &self,
        parent: EntryId,
        name: &[u8],
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        target: Option<Vec<u8>>,
        ready: Option<i64>,
    ) -> VfsResult<(Entry, Option<File>)> {
        self.w(|db| {
            let p = self.dir(db, parent)?;
            self.check_new_name(db, parent, name)?;
            if db.lookup(parent, name)?.is_some() {
                return Err(VfsError::Exists);
            }
            // setgid directories hand their group down, as on a local disk.
            let gid = if p.mode & 0o2000 != 0 { p.gid } else { gid };
            let mode = if kind == Kind::Dir && p.mode & 0o2000 != 0 {
                mode | 0o2000
            } else {
                mode
            };
            let e = db.insert(&NewEntry {
                parent,
                name: name.to_vec(),
                kind,
                mode: mode & 0o7777,
                uid,
                gid,
                size: target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
                mtime_ns: now_ns(),
                target: target.clone(),
                local: true,
                synced: Synced::default(),
                dirty: 0,
                conflict_of: None,
            })?;
            // The file stays open for `create`: a second open would walk the path again.
            let file = if kind == Kind::File {
                Some(self.cache.create_empty(e.id)?)
            } else {
                None
            };
            db.enqueue_sync(e.id, dirty::CONTENT | dirty::META, ready)?;
            self.touch_dir(db, &p)?;
            Ok((e, file))
        })
    }

    pub fn mkdir(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VfsResult<Attr> {
        let (e, _) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::Dir,
            mode,
            uid,
            gid,
            None,
            Some(now_ms()),
        )?;
        Ok(self.attr(&e))
    }

    pub fn symlink(
        &self,
        parent: EntryId,
        name: &OsStr,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> VfsResult<Attr> {
        if std::str::from_utf8(target).is_err() {
            return Err(VfsError::Invalid(
                "symlink target is not valid UTF-8".into(),
            ));
        }
        let (e, _) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::Symlink,
            0o777,
            uid,
            gid,
            Some(target.to_vec()),
            Some(now_ms()),
        )?;
        Ok(self.attr(&e))
    }

    /// Creates and opens a regular file. The journal row is held until the handle is released.
    pub fn create(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VfsResult<(Attr, u64)> {
        let mut live = lock(&self.live);
        let (e, file) = self.insert_child(
            parent,
            name.as_bytes(),
            Kind::File,
            mode,
            uid,
            gid,
            None,
            None,
        )?;
        let file = file.expect("insert_child opens a file it creates");
        live.insert(
            e.id,
            Live {
                open: 1,
                writers: 1,
                armed: true,
                size: 0,
                mtime_ns: e.mtime_ns,
                unlinked: false,
                retire_on_close: false,
            },
        );
        drop(live);
        let fh = self.add_handle(e.id, Some(file), true);
        Ok((self.attr(&e), fh))
    }

    fn add_handle(&self, id: EntryId, file: Option<File>, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                id,
                file,
                writable,
                last_end: AtomicU64::new(u64::MAX),
                listing: Mutex::new(None),
            }),
        );
        fh
    }

    fn handle(&self, fh: u64) -> VfsResult<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(VfsError::BadHandle)
    }

    /// Opens a file; `truncate` is O_TRUNC, which empties the file as part of the open.
    /// Also answers whether the kernel may keep the file's page cache: yes when the file is
    /// opened at the version it was last opened at here (a remote change, which the poller
    /// takes only while the file is closed, changes the version).
    pub fn open(&self, ino: EntryId, writable: bool, truncate: bool) -> VfsResult<(u64, bool)> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        match e.kind {
            Kind::Dir => return Ok((self.add_handle(e.id, None, false), false)),
            Kind::Symlink => return Err(VfsError::Invalid("open of a symlink".into())),
            Kind::File => {}
        }
        if truncate {
            self.setattr(
                e.id,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
            )?;
        }
        // Everything from here to the registration in `live` runs under the file's gate,
        // which is also what the sync engine takes to replace or delete the data of a closed
        // file (`FileGate::run_closed`): either it ran before (and the entry read below is
        // its result), or it sees this handle and leaves the file alone. Opening the data
        // file first and registering after let the poller delete the data file in between:
        // the handle then read a file nobody wrote to any more. A writer also needs the
        // whole file, and from its registration on the file cannot be handed to the block
        // cache (retire), whose eviction would punch holes into it.
        let gate = self.gate(e.id);
        let _g = lock(&gate);
        let mut e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        if e.kind != Kind::File {
            return Err(VfsError::NotFound);
        }
        if !e.local {
            if writable {
                self.fill_locked(&e)?;
                e = self
                    .store
                    .read(|db| db.get(ino))?
                    .ok_or(VfsError::NotFound)?;
            } else {
                // Read-only: blocks come in as they are read.
                self.cache.ensure_sparse(e.id, e.size)?;
            }
        }
        let file = if writable {
            self.cache.open_file(e.id, false)?
        } else {
            File::open(self.cache.path(e.id))?
        };
        let mut live = lock(&self.live);
        let size = if e.local {
            self.cache.len(e.id)?.unwrap_or(e.size)
        } else {
            e.size
        };
        let l = live.entry(e.id).or_insert(Live {
            open: 0,
            writers: 0,
            armed: false,
            size,
            mtime_ns: e.mtime_ns,
            unlinked: false,
            retire_on_close: false,
        });
        l.open += 1;
        if writable {
            l.writers += 1;
        }
        drop(live);
        let version = (e.synced.etag.clone(), e.size, e.mtime_ns);
        let keep_cache = {
            let mut opened = lock(&self.opened);
            if opened.len() > 100_000 {
                opened.clear();
            }
            opened.insert(e.id, version.clone()).as_ref() == Some(&version)
        };
        Ok((self.add_handle(e.id, Some(file), writable), keep_cache))
    }

    pub fn opendir(&self, ino: EntryId) -> VfsResult<u64> {
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        if e.kind != Kind::Dir {
            return Err(VfsError::NotDir);
        }
        Ok(self.add_handle(e.id, None, false))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        let f = h.file.as_ref().ok_or(VfsError::IsDir)?;
        if !h.writable {
            let e = self
                .store
                .read(|db| db.get(h.id))?
                .ok_or(VfsError::NotFound)?;
            if !e.local && size > 0 && offset < e.size {
                // The kernel reads ahead with several requests at once, so a sequential
                // reader's requests may arrive a little out of order.
                let prev = h.last_end.swap(offset + size as u64, Ordering::Relaxed);
                let sequential = prev != u64::MAX
                    && offset + BLOCK_SIZE >= prev
                    && offset <= prev.saturating_add(BLOCK_SIZE);
                let last = (offset + size as u64 - 1) / BLOCK_SIZE;
                // The read runs under the file's gate, so the blocks cannot be evicted
                // between their arrival and the read.
                let (buf, waited) =
                    self.with_blocks(&e, offset / BLOCK_SIZE, last, sequential, || {
                        read_at(f, offset, size)
                    })?;
                let counter = if waited {
                    &self.blocks.misses
                } else {
                    &self.blocks.hits
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Ok(buf);
            }
            self.blocks.hits.fetch_add(1, Ordering::Relaxed);
        }
        read_at(f, offset, size)
    }

    /// Starts what runs beside the FUSE threads: background fetches hold the `Vfs`, and the
    /// pinner keeps pinned files downloaded.
    pub fn start(self: &Arc<Self>) {
        self.prefetch.set_owner(self);
        self.start_pinner();
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(VfsError::BadHandle);
        }
        let f = h.file.as_ref().ok_or(VfsError::IsDir)?;
        self.throttle_writer()?;
        {
            let mut live = lock(&self.live);
            let l = live.get_mut(&h.id).ok_or(VfsError::BadHandle)?;
            self.check_disk_room((offset + data.len() as u64).saturating_sub(l.size))?;
            if !l.armed && !l.unlinked {
                // Journal first: once this write is acknowledged, a crash must find it queued.
                self.store
                    .write(|db| db.enqueue_sync(h.id, dirty::CONTENT, None))?;
                l.armed = true;
            }
        }
        f.write_all_at(data, offset)?;
        let mut live = lock(&self.live);
        if let Some(l) = live.get_mut(&h.id) {
            let end = offset + data.len() as u64;
            if end > l.size {
                self.blocks.grown.fetch_add(end - l.size, Ordering::Relaxed);
            }
            l.size = l.size.max(end);
            l.mtime_ns = now_ns();
        }
        Ok(data.len() as u32)
    }

    /// Writes an armed entry's size and mtime back and lets its upload go after the
    /// write-back delay. Called with the `live` lock held.
    fn disarm(&self, id: EntryId, l: &mut Live) -> VfsResult<()> {
        if !l.armed {
            return Ok(());
        }
        let ready = self.ready_at();
        let unlinked = l.unlinked;
        self.w(|db| {
            db.set_size_mtime(id, l.size, l.mtime_ns)?;
            if !unlinked {
                db.set_ready(id, Some(ready))?;
            }
            Ok(())
        })?;
        l.armed = false;
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> VfsResult<()> {
        let h = self.handle(fh)?;
        if let Some(f) = &h.file {
            if datasync {
                f.sync_data()?;
            } else {
                f.sync_all()?;
            }
        }
        {
            let mut live = lock(&self.live);
            if let Some(l) = live.get_mut(&h.id) {
                self.disarm(h.id, l)?;
            }
        }
        self.store.make_durable()?;
        Ok(())
    }

    pub fn release(&self, fh: u64) -> VfsResult<()> {
        let h = lock(&self.handles).remove(&fh).ok_or(VfsError::BadHandle)?;
        if h.file.is_none() {
            return Ok(());
        }
        let mut live = lock(&self.live);
        let Some(l) = live.get_mut(&h.id) else {
            return Ok(());
        };
        l.open = l.open.saturating_sub(1);
        if h.writable {
            l.writers = l.writers.saturating_sub(1);
        }
        let mut result = Ok(());
        if l.writers == 0 {
            result = self.disarm(h.id, l);
        }
        if l.open == 0 {
            let l = live.remove(&h.id).expect("present");
            // Reloaded from the database on the next open: while nothing is open the poller
            // may replace the data under this entry.
            lock(&self.blocks.present).remove(&h.id);
            if l.unlinked {
                self.store.write(|db| db.delete_entry(h.id))?;
                self.cache.remove(h.id)?;
            } else if l.retire_on_close {
                drop(live);
                if !self.retire(h.id) {
                    lock(&self.blocks.cleaned).push(h.id);
                }
            }
        }
        result
    }

    pub fn releasedir(&self, fh: u64) -> VfsResult<()> {
        lock(&self.handles).remove(&fh);
        Ok(())
    }

    pub fn readdir(&self, fh: u64, ino: EntryId, offset: u64) -> VfsResult<Arc<Vec<DirEntry>>> {
        let h = self.handle(fh)?;
        let mut listing = lock(&h.listing);
        if offset == 0 || listing.is_none() {
            let (me, children) = self.r(|db| {
                let me = db.get(ino)?.ok_or(VfsError::NotFound)?;
                Ok((me.clone(), db.children(ino)?))
            })?;
            let mut v = Vec::with_capacity(children.len() + 2);
            v.push(DirEntry {
                ino: me.id.0,
                kind: Kind::Dir,
                name: b".".to_vec(),
            });
            v.push(DirEntry {
                ino: me.parent.map(|p| p.0).unwrap_or(EntryId::ROOT.0),
                kind: Kind::Dir,
                name: b"..".to_vec(),
            });
            v.extend(children.into_iter().map(|c| DirEntry {
                ino: c.id.0,
                kind: c.kind,
                name: c.name,
            }));
            *listing = Some(Arc::new(v));
        }
        Ok(listing.clone().expect("set above"))
    }

    /// Removes `e` from the tree: its remote copy is queued for deletion, and an open file
    /// lives on, unnamed, until its last handle is released.
    fn remove_entry(
        &self,
        db: &Db<'_>,
        live: &HashMap<EntryId, Live>,
        e: &Entry,
        rm: &mut Removal,
    ) -> VfsResult<()> {
        if let Some(key) = &e.synced.key {
            db.enqueue_delete(key, e.kind == Kind::Dir, e.synced.etag.as_deref())?;
        }
        if e.kind == Kind::Dir {
            // A directory may exist remotely without its own upload having run: a file below
            // it, uploaded first, created it (a local-folder remote makes parents). Deleting a
            // key that is not there costs one request and is harmless.
            if let Some(path) = db.path_of(e.id)? {
                let path = String::from_utf8_lossy(&path).into_owned();
                if e.synced.key.as_deref() != Some(path.as_str()) {
                    db.enqueue_delete(&path, true, None)?;
                }
            }
        }
        match live.get(&e.id) {
            Some(l) if l.open > 0 => {
                rm.unlinked.push(e.id);
                let mut gone = e.clone();
                gone.parent = None;
                gone.ctime_ns = now_ns();
                db.update(&gone)?;
                db.set_synced(e.id, &Synced::default())?;
                if let Some(job) = db.job_for(e.id)? {
                    db.remove_job(job.seq)?;
                }
            }
            _ => {
                db.delete_entry(e.id)?;
                if e.kind == Kind::File {
                    rm.files.push(e.id);
                }
            }
        }
        Ok(())
    }

    /// Carries out what a removal may only do once its transaction has committed: drop the
    /// data files, mark open files unlinked. (Regression: the data file went inside the
    /// transaction, so a crash before the commit kept the entry but lost its content.)
    fn finish_removal(&self, rm: Removal, live: &mut HashMap<EntryId, Live>) {
        for id in rm.unlinked {
            if let Some(l) = live.get_mut(&id) {
                l.unlinked = true;
            }
        }
        for id in rm.files {
            if self.reaper.send(id).is_err() {
                let _ = self.cache.remove(id);
            }
        }
    }

    pub fn unlink(&self, parent: EntryId, name: &OsStr) -> VfsResult<()> {
        let mut live = lock(&self.live);
        let mut rm = Removal::default();
        self.w(|db| {
            let p = self.dir(db, parent)?;
            let e = db
                .lookup(parent, name.as_bytes())?
                .ok_or(VfsError::NotFound)?;
            if e.kind == Kind::Dir {
                return Err(VfsError::IsDir);
            }
            if let Some(c) = db.open_conflict_for(e.id)? {
                if c.copy_id == e.id.0 {
                    // Deleting the `.conflict` copy keeps the version at the path; the copy's
                    // object goes like any other, which settles it on every mount.
                    db.resolve_conflict(c.id, "path")?;
                } else {
                    // The original is gone; the copy stays, as an ordinary file (without its
                    // mark once it has gone up again).
                    db.set_conflict_of(EntryId(c.copy_id), None)?;
                    db.enqueue_sync(EntryId(c.copy_id), dirty::META, Some(now_ms()))?;
                    db.resolve_conflict(c.id, "original deleted")?;
                }
            }
            self.remove_entry(db, &live, &e, &mut rm)?;
            self.keep_dir(db, &p)?;
            self.touch_dir(db, &p)
        })?;
        self.finish_removal(rm, &mut live);
        Ok(())
    }

    pub fn rmdir(&self, parent: EntryId, name: &OsStr) -> VfsResult<()> {
        if name.as_bytes() == b"." {
            return Err(VfsError::Invalid("rmdir of '.'".into()));
        }
        let mut live = lock(&self.live);
        let mut rm = Removal::default();
        self.w(|db| {
            let p = self.dir(db, parent)?;
            let e = db
                .lookup(parent, name.as_bytes())?
                .ok_or(VfsError::NotFound)?;
            if e.kind != Kind::Dir {
                return Err(VfsError::NotDir);
            }
            if db.has_children(e.id)? {
                return Err(VfsError::NotEmpty);
            }
            self.remove_entry(db, &live, &e, &mut rm)?;
            self.keep_dir(db, &p)?;
            self.touch_dir(db, &p)
        })?;
        self.finish_removal(rm, &mut live);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: EntryId,
        name: &OsStr,
        newparent: EntryId,
        newname: &OsStr,
        noreplace: bool,
    ) -> VfsResult<()> {
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        let mut live = lock(&self.live);
        let ready_now = Some(now_ms());
        let mut rm = Removal::default();
        let r = self.w(|db| {
            let p = self.dir(db, parent)?;
            let np = self.dir(db, newparent)?;
            let src = db.lookup(parent, name)?.ok_or(VfsError::NotFound)?;
            if parent == newparent && name == newname {
                return Ok(());
            }
            self.check_new_name(db, newparent, newname)?;
            if src.kind == Kind::Dir {
                // A directory cannot move below itself.
                let mut cur = Some(newparent);
                while let Some(c) = cur {
                    if c == src.id {
                        return Err(VfsError::Invalid(
                            "cannot move a directory inside itself".into(),
                        ));
                    }
                    cur = db.get(c)?.and_then(|e| e.parent);
                }
            }
            // A party to an open conflict that moves settles it: the copy renamed over its
            // original keeps the copy's version (an ordinary replacing rename, conditioned on
            // the version it replaces); any other move keeps both.
            for id in [src.id].into_iter().chain(
                db.lookup(newparent, newname)?
                    .filter(|d| d.id != src.id)
                    .map(|d| d.id),
            ) {
                if let Some(c) = db.open_conflict_for(id)? {
                    let over_original = c.copy_id == src.id.0
                        && db.lookup(newparent, newname)?.map(|d| d.id.0) == Some(c.entry_id);
                    db.set_conflict_of(EntryId(c.copy_id), None)?;
                    if c.copy_id != src.id.0 {
                        // The copy stays where it is: it goes up again without its mark.
                        db.enqueue_sync(EntryId(c.copy_id), dirty::META, ready_now)?;
                    }
                    db.resolve_conflict(c.id, if over_original { "copy" } else { "both" })?;
                }
            }
            if let Some(dst) = db.lookup(newparent, newname)? {
                if dst.id == src.id {
                    return Ok(());
                }
                if noreplace {
                    return Err(VfsError::Exists);
                }
                match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                    (true, true) => {
                        if db.has_children(dst.id)? {
                            return Err(VfsError::NotEmpty);
                        }
                    }
                    (true, false) => return Err(VfsError::NotDir),
                    (false, true) => return Err(VfsError::IsDir),
                    (false, false) => {}
                }
                self.remove_entry(db, &live, &dst, &mut rm)?;
            }
            // Directory keys to delete once the children have moved.
            let below = if src.kind == Kind::Dir {
                db.descendants(src.id)?
            } else {
                Vec::new()
            };
            let mut old_dirs: Vec<String> = Vec::new();
            for d in std::iter::once(&src)
                .chain(below.iter())
                .filter(|d| d.kind == Kind::Dir)
            {
                // The synced key, and the current path too: an upload in flight or a file
                // below may have created the directory there already (see remove_entry).
                old_dirs.extend(d.synced.key.clone());
                if let Some(p) = db.path_of(d.id)? {
                    let p = String::from_utf8_lossy(&p).into_owned();
                    if d.synced.key.as_deref() != Some(p.as_str()) {
                        old_dirs.push(p);
                    }
                }
            }
            let mut moved = src.clone();
            moved.parent = Some(newparent);
            moved.name = newname.to_vec();
            moved.ctime_ns = now_ns();
            db.update(&moved)?;
            let held = |id: EntryId| matches!(live.get(&id), Some(l) if l.armed);
            db.enqueue_sync(src.id, 0, if held(src.id) { None } else { ready_now })?;
            for d in &below {
                db.enqueue_sync(d.id, 0, if held(d.id) { None } else { ready_now })?;
            }
            // Behind the children's moves in the queue, deepest first.
            old_dirs.sort_by_key(|k| std::cmp::Reverse(k.matches('/').count()));
            for k in old_dirs {
                db.enqueue_delete(&k, true, None)?;
            }
            self.touch_dir(db, &p)?;
            if newparent != parent {
                self.keep_dir(db, &p)?;
                self.touch_dir(db, &np)?;
            }
            Ok(())
        });
        if r.is_ok() {
            self.finish_removal(rm, &mut live);
            drop(live);
            if newparent != parent && self.store.read(|db| db.any_pinned())? {
                // Moved into or out of a pinned directory.
                if let Some(e) = self.store.read(|db| db.lookup(newparent, newname))? {
                    self.release_to_eviction(&e)?;
                    self.pins_changed();
                }
            }
        }
        r
    }

    pub fn statfs(&self) -> VfsResult<StatFs> {
        let (total, avail, bs) = self.cache.disk_space()?;
        let files = self.store.read(|db| db.entry_count())?;
        let bsize = bs.max(512);
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

    /// What is still to do for the entry comes first (a `.conflict` copy not yet uploaded is
    /// `pending`, not `conflict`); a synced party to an open conflict is `conflict`.
    pub fn sync_state(&self, ino: EntryId) -> VfsResult<SyncState> {
        self.r(|db| {
            let e = db.get(ino)?.ok_or(VfsError::NotFound)?;
            if lock(&self.blocks.corrupt).contains(&(ino, e.synced.etag)) {
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

    /// Settles the open conflict that `ino` (the original or its `.conflict` copy) takes part
    /// in: what `stratus resolve` and `user.stratus.resolve` do. Keeping one version is the
    /// same as deleting the copy or renaming it over the original, so it settles the conflict
    /// on every mount the same way.
    pub fn resolve(&self, ino: EntryId, keep: Keep) -> VfsResult<()> {
        let c = self
            .r(|db| Ok(db.open_conflict_for(ino)?))?
            .ok_or_else(|| VfsError::Invalid("no open conflict on this file".into()))?;
        let keep = keep.placed(c.mine.as_deref()).map_err(VfsError::Invalid)?;
        let (orig, copy) =
            self.r(|db| Ok((db.get(EntryId(c.entry_id))?, db.get(EntryId(c.copy_id))?)))?;
        let copy = copy.ok_or(VfsError::NotFound)?;
        let cp = copy.parent.ok_or(VfsError::NotFound)?;
        match keep {
            Keep::Path => {
                self.unlink(cp, OsStr::from_bytes(&copy.name))?;
                self.notify(Invalidation::Entry {
                    parent: cp,
                    name: copy.name,
                });
            }
            Keep::Copy => {
                let orig = orig.ok_or(VfsError::NotFound)?;
                let op = orig.parent.ok_or(VfsError::NotFound)?;
                self.rename(
                    cp,
                    OsStr::from_bytes(&copy.name),
                    op,
                    OsStr::from_bytes(&orig.name),
                    false,
                )?;
                self.notify(Invalidation::Entry {
                    parent: cp,
                    name: copy.name,
                });
                self.notify(Invalidation::Entry {
                    parent: op,
                    name: orig.name,
                });
            }
            Keep::Both | Keep::Local | Keep::Remote => {
                self.w(|db| Ok(db.keep_both(&c)?))?;
            }
        }
        tracing::info!(path = %c.path, keep = keep.as_str(), "conflict resolved");
        Ok(())
    }

    /// The last conflict recorded for `ino` or its path, settled or not.
    pub fn last_conflict(&self, ino: EntryId) -> VfsResult<Option<crate::store::Conflict>> {
        self.r(|db| {
            let path = db
                .path_of(ino)?
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_default();
            Ok(db.last_conflict_for(ino, &path)?)
        })
    }

    /// Called once at start: the previous run may have died with writers armed. Their data
    /// files hold everything that was acknowledged, so size and mtime come from there.
    ///
    /// Only a database that cannot be read fails it: an entry whose row cannot be applied
    /// to its data file is reported (`set_aside`) and the mount goes on, since refusing to
    /// mount would strand everything still queued in the state dir.
    pub fn recover(&self) -> VfsResult<usize> {
        let orphans = self.store.read(|db| db.orphans())?;
        for id in &orphans {
            self.store.write(|db| db.delete_entry(*id))?;
            if let Err(e) = self.cache.remove(*id) {
                tracing::warn!(id = id.0, error = %e, "could not remove an unlinked file's data");
            }
        }
        // Data files whose entry is gone: removals whose deferred delete a crash cut short.
        let mut swept = 0;
        let known = self.store.read(|db| db.entry_ids())?;
        for id in self.cache.ids()? {
            if !known.contains(&id.0) {
                match self.cache.remove(id) {
                    Ok(()) => swept += 1,
                    Err(e) => {
                        tracing::warn!(id = id.0, error = %e, "could not remove a deleted file's data")
                    }
                }
            }
        }
        if swept > 0 {
            tracing::info!(files = swept, "removed data files of deleted entries");
        }
        {
            let blocks = self.store.read(|db| db.all_blocks())?;
            let mut lru = lock(&self.blocks.lru);
            for b in blocks {
                lru.put(b, ());
                self.blocks.cached.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
            }
        }
        let held = self.store.write(|db| db.release_held(now_ms()))?;
        // A committed truncate may not have reached the data file: outside the entries that
        // were being written (whose data file is the truth, below), the database's size is.
        let complete = self.store.read(|db| db.complete_files())?;
        for (id, size) in complete {
            if held.contains(&id) {
                continue;
            }
            let len = match self.cache.len(id) {
                Ok(Some(len)) => len,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(id = id.0, error = %e, "cannot read a data file's length");
                    continue;
                }
            };
            if len != size {
                tracing::info!(id = id.0, len, size, "data file follows the committed size");
                if let Err(e) = self.cache.set_len(id, size) {
                    self.set_aside(id, size, len, &e)?;
                }
            }
        }
        for id in &held {
            let Some(e) = self.store.read(|db| db.get(*id))? else {
                continue;
            };
            if e.kind != Kind::File || !e.local {
                continue;
            }
            let path = self.cache.path(*id);
            if let Ok(m) = std::fs::metadata(&path) {
                let mtime = m.modified().map(time_to_ns).unwrap_or(e.mtime_ns);
                self.store
                    .write(|db| db.set_size_mtime(*id, m.len(), mtime.max(e.mtime_ns)))?;
            }
        }
        self.retire_all()?;
        Ok(held.len())
    }

    /// A recorded size the data file refuses (EFBIG for a size past the largest file the
    /// state dir's filesystem holds, left by an older build's failed truncate): the data
    /// file, which holds every byte that was acknowledged, is kept as it is and its length
    /// becomes the entry's size. Logged, and shown as the last error in `stratus status`.
    fn set_aside(
        &self,
        id: EntryId,
        size: u64,
        len: u64,
        err: &crate::cache::CacheError,
    ) -> VfsResult<()> {
        let path = self
            .store
            .read(|db| db.path_of(id))?
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_else(|| format!("entry {}", id.0));
        tracing::warn!(%path, size, len, error = %err, "recorded size cannot be applied to the data file; keeping the data file's length");
        self.store.health().record_local_error(&format!(
            "{path}: recorded size {size} could not be applied ({err}); kept the {len} bytes of its data file"
        ));
        let mtime = self
            .store
            .read(|db| db.get(id))?
            .map_or_else(now_ns, |e| e.mtime_ns);
        self.store.write(|db| db.set_size_mtime(id, len, mtime))?;
        Ok(())
    }

    /// `posix_fallocate` (mode 0): reserves `offset..offset + len` in the data file and
    /// makes the file at least that long. An acknowledged reservation is real disk space
    /// (writes into it cannot fail for lack of room), so one that does not fit the state
    /// dir's disk, less the floor every write keeps free (`check_disk_room`), fails with
    /// ENOSPC and changes nothing. Punching holes and the other modes are not supported.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> VfsResult<()> {
        if mode != 0 {
            tracing::warn!(
                mode,
                "fallocate modes other than 0 are not supported; answering ENOTSUP"
            );
            return Err(VfsError::NotSupported("fallocate mode"));
        }
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(VfsError::BadHandle);
        }
        let f = h.file.as_ref().ok_or(VfsError::IsDir)?;
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or_else(|| VfsError::Invalid("fallocate range overflows".into()))?;
        let size = {
            let live = lock(&self.live);
            live.get(&h.id).ok_or(VfsError::BadHandle)?.size
        };
        self.check_disk_room(len)?;
        let before = f.metadata()?.len();
        // SAFETY: fallocate(2) on a descriptor this handle owns; the range was checked to fit
        // in an off_t above.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as i64, len as i64) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            // A reservation that ran out of room part way may have grown the file.
            if f.metadata().map(|m| m.len() != before).unwrap_or(true) {
                if let Err(e) = f.set_len(before) {
                    tracing::warn!(id = h.id.0, error = %e, "could not cut a data file back after a failed fallocate");
                }
            }
            return Err(VfsError::Io(err));
        }
        if end <= size {
            return Ok(());
        }
        let grown = self.setattr(
            h.id,
            &SetAttr {
                size: Some(end),
                ..Default::default()
            },
        );
        if grown.is_err() {
            // Nothing was committed: the data file goes back to its length.
            if let Err(e) = f.set_len(before) {
                tracing::warn!(id = h.id.0, error = %e, "could not cut a data file back after a failed fallocate");
            }
        }
        grown.map(|_| ())
    }

    /// Hard links: one object per path cannot express them.
    pub fn link(&self) -> VfsResult<Attr> {
        tracing::warn!("hard links are not supported (one object per path); answering ENOTSUP");
        Err(VfsError::NotSupported("hard links"))
    }

    /// Device nodes, fifos and sockets have no object form.
    pub fn mknod(
        &self,
        parent: EntryId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> VfsResult<(Attr, u64)> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            tracing::warn!(
                "special files (devices, fifos, sockets) are not supported; answering ENOTSUP"
            );
            return Err(VfsError::NotSupported("special files"));
        }
        let (attr, fh) = self.create(parent, name, mode & 0o7777, uid, gid)?;
        self.release(fh)?;
        Ok((attr, 0))
    }

    pub fn default_owner(&self) -> (u32, u32) {
        (self.cfg.default_uid, self.cfg.default_gid)
    }
}
