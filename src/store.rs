//! The state database: the tree of entries, what the remote holds for each, and the journal
//! that is also the offline queue.
//!
//! One SQLite connection behind a `std::sync::Mutex`: SQLite serialises writers anyway, and a
//! single connection lets every FUSE op and the uploader compose their reads and writes into one
//! `BEGIN IMMEDIATE` transaction. The lock is never held across an `.await`.

mod schema;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::Notify;

pub use schema::SCHEMA_VERSION;

use crate::types::VersionMark;

/// The id of an entry, which is also its inode number. Stable across remounts of one state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

impl EntryId {
    pub const ROOT: EntryId = EntryId(1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    fn to_sql(self) -> i64 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        }
    }

    fn from_sql(v: i64) -> rusqlite::Result<Self> {
        match v {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            3 => Ok(Kind::Symlink),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(0, other)),
        }
    }
}

/// Bits of `Entry::dirty`: what the remote copy lacks.
pub mod dirty {
    pub const CONTENT: i64 = 1;
    pub const META: i64 = 2;
}

/// What the remote held for an entry the last time we synced it: the base of later decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub key: Option<String>,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: EntryId,
    /// `None` for the root and for a file that was unlinked while still open.
    pub parent: Option<EntryId>,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub atime_ns: i64,
    pub target: Option<Vec<u8>>,
    /// The data file in the cache holds the whole content.
    pub local: bool,
    pub synced: Synced,
    pub dirty: i64,
    /// Bumped by every change that must reach the remote; the uploader compares it before
    /// declaring an entry clean, so a change made during an upload is never forgotten.
    pub dirty_seq: i64,
    /// Set on a `.conflict` copy: the entry whose conflict it records. Such a copy stays
    /// local (never uploaded) unless the user keeps both versions.
    pub conflict_of: Option<EntryId>,
}

/// The fields of a new entry; the rest start empty.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub parent: EntryId,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub target: Option<Vec<u8>>,
    pub local: bool,
    pub synced: Synced,
    pub dirty: i64,
    pub conflict_of: Option<EntryId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Make the remote match this entry's current state and path.
    Sync(EntryId),
    /// Remove a key that no entry owns any more; `etag` is the version the delete meant to
    /// remove, so a remote edit made since can win over it.
    Delete {
        key: String,
        dir: bool,
        etag: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Uploading,
    Parked,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Uploading => "uploading",
            JobState::Parked => "parked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub seq: i64,
    pub kind: JobKind,
    pub attempts: i64,
    pub state: JobState,
    pub last_error: Option<String>,
    /// Content hashes this job has sent to the remote (a sync of a file), oldest first: a
    /// version at the key with one of them is ours, whether or not we heard the answer.
    pub tried: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub entries: u64,
    pub bytes: u64,
    pub held: u64,
    pub parked: u64,
    pub uploading: u64,
    pub max_seq: i64,
    pub last_error: Option<String>,
}

/// What the kernel must forget because something other than a FUSE request changed the tree
/// (the poller, a conflict settled through an attribute). Sent over a channel to the FUSE
/// session, which neither the sync engine nor the core knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A name in a directory appeared, vanished or now means another entry.
    Entry { parent: EntryId, name: Vec<u8> },
    /// An entry's attributes and data changed.
    Inode(EntryId),
}

/// How a conflict is settled, as the user names it. `Local` and `Remote` are relative to this
/// mount (the version written here, the other one); `Path` and `Copy` name where a version
/// sits, which means the same on every mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Local,
    Remote,
    /// The version at the original path stays; the copy goes.
    Path,
    /// The copy's version takes the path.
    Copy,
    /// Both stay: the copy becomes an ordinary file under its own name.
    Both,
}

impl Keep {
    pub fn parse(s: &str) -> Option<Keep> {
        match s.trim() {
            "local" => Some(Keep::Local),
            "remote" => Some(Keep::Remote),
            "path" => Some(Keep::Path),
            "copy" => Some(Keep::Copy),
            "both" => Some(Keep::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Local => "local",
            Keep::Remote => "remote",
            Keep::Path => "path",
            Keep::Copy => "copy",
            Keep::Both => "both",
        }
    }

    /// Where the kept version sits (`Path`, `Copy` or `Both`), given which side this mount
    /// wrote (`mine`). `Local`/`Remote` on a mount that wrote neither side is refused with a
    /// reason.
    pub fn placed(self, mine: Option<&str>) -> Result<Keep, String> {
        match (self, mine) {
            (Keep::Path | Keep::Copy | Keep::Both, _) => Ok(self),
            (Keep::Local, Some("path")) | (Keep::Remote, Some("copy")) => Ok(Keep::Path),
            (Keep::Local, Some("copy")) | (Keep::Remote, Some("path")) => Ok(Keep::Copy),
            (Keep::Local | Keep::Remote, _) => Err(
                "neither version was written on this mount: use path (keep the file), copy (keep the .conflict copy) or both"
                    .into(),
            ),
        }
    }
}

/// One conflict: one version at `path`, the other at `copy_path` beside it, both synced.
/// `local_*`/`remote_*` are the version this mount wrote and the other one (kept for the JSON
/// that scripts read); `at_path`/`in_copy` say where each version sits and who wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conflict {
    pub id: i64,
    pub entry_id: u64,
    pub copy_id: u64,
    pub path: String,
    pub copy_path: String,
    pub local_size: u64,
    pub local_mtime_ns: i64,
    pub local_etag: Option<String>,
    pub remote_size: u64,
    pub remote_mtime_ns: Option<i64>,
    pub remote_etag: Option<String>,
    pub remote_version: Option<String>,
    pub detected_ms: i64,
    pub policy: String,
    pub resolved_ms: Option<i64>,
    pub resolution: Option<String>,
    #[serde(default)]
    pub at_path: VersionMark,
    #[serde(default)]
    pub in_copy: VersionMark,
    /// Which version this mount wrote: `path`, `copy`, or neither.
    #[serde(default)]
    pub mine: Option<String>,
}

/// The `versions` column.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Versions {
    at_path: VersionMark,
    in_copy: VersionMark,
}

const CONFLICT_COLS: &str = "id, entry_id, copy_id, path, copy_path, local_size, local_mtime_ns, \
     local_etag, remote_size, remote_mtime_ns, remote_etag, remote_version, detected_ms, policy, \
     resolved_ms, resolution, versions, mine";

fn versions_json(c: &Conflict) -> String {
    serde_json::to_string(&Versions {
        at_path: c.at_path.clone(),
        in_copy: c.in_copy.clone(),
    })
    .unwrap_or_default()
}

fn conflict_from_row(r: &Row<'_>) -> rusqlite::Result<Conflict> {
    Ok(Conflict {
        id: r.get(0)?,
        entry_id: r.get::<_, i64>(1)? as u64,
        copy_id: r.get::<_, i64>(2)? as u64,
        path: r.get(3)?,
        copy_path: r.get(4)?,
        local_size: r.get::<_, i64>(5)? as u64,
        local_mtime_ns: r.get(6)?,
        local_etag: r.get(7)?,
        remote_size: r.get::<_, i64>(8)? as u64,
        remote_mtime_ns: r.get(9)?,
        remote_etag: r.get(10)?,
        remote_version: r.get(11)?,
        detected_ms: r.get(12)?,
        policy: r.get(13)?,
        resolved_ms: r.get(14)?,
        resolution: r.get(15)?,
        at_path: Default::default(),
        in_copy: Default::default(),
        mine: r.get(17)?,
    })
    .map(|mut c| {
        let v: Option<String> = r.get(16).ok().flatten();
        let v: Versions = v
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        c.at_path = v.at_path;
        c.in_copy = v.in_copy;
        c
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database {path} is corrupt ({detail}); it was left untouched because it may hold unsynced changes")]
    Corrupt { path: String, detail: String },
    #[error("state database {path} was written by a newer stratus (schema {found}, this build knows up to {supported}); it was left untouched")]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("entry {0:?} not found")]
    Missing(EntryId),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Read-only connections for `Store::read`, taken and given back: in WAL mode a reader
    /// sees the last commit without waiting for the writer, so lookups, getattr and readdir
    /// no longer queue behind other ops' (or the uploader's) writes.
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    checkpointer: Checkpointer,
    /// Wakes the uploader when the journal gains work it must see before `idle_until`.
    pub wake: Notify,
    /// When the idle uploader will look at the journal by itself (ms since the epoch), or
    /// `i64::MIN` while it is awake. A commit whose jobs become ready only after this wakes
    /// nobody: during a burst of creates every job waits out the write-back delay, and one
    /// wake-up (with its journal query under the store's lock) per create was most of the
    /// daemon's CPU.
    pub idle_until: std::sync::atomic::AtomicI64,
    /// When a FUSE op last changed the tree (ms since the epoch): the uploader stands aside
    /// while the user is busy.
    user_active_ms: std::sync::atomic::AtomicI64,
    /// A forced sync: also cuts short a backoff after a transient failure.
    pub kick: Notify,
    /// What the uploader last learnt about the remote; in memory only.
    pub health: Health,
    /// Open handles per entry, kept by the filesystem core: the poller never swaps the data
    /// of a file under an open handle.
    pub busy: Mutex<std::collections::HashMap<EntryId, u32>>,
    /// Files the uploader just made clean, for the block cache to take over (it lives above
    /// the sync engine, which cannot reach it).
    pub cleaned: Mutex<Vec<EntryId>>,
}

/// The remote's health as the uploader saw it last, shown by `stratus status`.
#[derive(Debug, Default)]
pub struct Health {
    pub unreachable: std::sync::atomic::AtomicBool,
    /// The user asked for no network traffic at all.
    pub offline: std::sync::atomic::AtomicBool,
    pub last_error: Mutex<Option<(i64, String)>>,
    /// Polls of the remote started and completed, so `stratus sync --wait` can wait for one
    /// that started after it was called.
    pub polls_started: std::sync::atomic::AtomicU64,
    pub polls: std::sync::atomic::AtomicU64,
    /// Bytes of file data fetched from the remote since the mount started.
    pub downloaded: std::sync::atomic::AtomicU64,
}

impl Health {
    pub fn record_error(&self, transient: bool, msg: &str) {
        // A permanent error is an answer: the remote is reachable.
        self.unreachable
            .store(transient, std::sync::atomic::Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((now_ms(), msg.to_string()));
    }

    /// A failure that says nothing about the remote (a state dir row set aside at mount):
    /// shown as the last error, reachability left alone.
    pub fn record_local_error(&self, msg: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((now_ms(), msg.to_string()));
    }

    pub fn record_ok(&self) {
        self.unreachable
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_reachable(&self) -> bool {
        !self.unreachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<(i64, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Store {
    /// Opens (or creates) the database. A corrupt or newer database is refused, never rewritten.
    pub fn open(path: &Path) -> StoreResult<Store> {
        let display = path.display().to_string();
        let existed = path.exists();
        let conn = Connection::open(path)?;
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: display.clone(),
            detail: e.to_string(),
        };
        if existed {
            // Any read of the header fails on a file that is not a database.
            let check: String = conn
                .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
                .map_err(corrupt)?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: display,
                    detail: check,
                });
            }
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: display,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode survives a crash of this process (SIGKILL); fsync(2) on a file
        // upgrades to a FULL commit, see `make_durable`.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        schema::migrate(&conn)?;
        // Checkpoints run on their own thread (`Checkpointer`); this one only steps in
        // should that fall far behind.
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BACKSTOP_PAGES)?;
        Ok(Store {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            checkpointer: Checkpointer::start(path)?,
            wake: Notify::new(),
            idle_until: std::sync::atomic::AtomicI64::new(i64::MIN),
            user_active_ms: std::sync::atomic::AtomicI64::new(0),
            kick: Notify::new(),
            health: Health::default(),
            busy: Mutex::new(std::collections::HashMap::new()),
            cleaned: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back on
        // drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one read transaction on a reader connection: it sees every transaction
    /// committed before it started and nothing after, and it cannot write.
    pub fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let taken = lock_pool(&self.readers).pop();
        let mut conn = match taken {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let out = {
            let tx = conn.transaction().map_err(StoreError::from)?;
            let db = Db {
                conn: &tx,
                woke: std::cell::Cell::new(false),
                wake_at: std::cell::Cell::new(None),
            };
            let out = f(&db);
            // Ending a read transaction cannot lose anything; an error here is one of the
            // connection, which is then not reused.
            if tx.commit().is_err() {
                return out;
            }
            out
        };
        lock_pool(&self.readers).push(conn);
        out
    }

    fn open_reader(&self) -> StoreResult<Connection> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    /// Records that the user changed something in the mount just now.
    pub fn user_was_active(&self) {
        self.user_active_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn user_active_ms(&self) -> i64 {
        self.user_active_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commits since the database was opened; the checkpointer watches it.
    fn committed(&self) {
        self.checkpointer
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction; commits only if it returns `Ok`.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let db = Db {
            conn: &tx,
            woke: std::cell::Cell::new(false),
            wake_at: std::cell::Cell::new(None),
        };
        let out = f(&db)?;
        let (woke, wake_at) = (db.woke.get(), db.wake_at.get());
        tx.commit().map_err(StoreError::from)?;
        drop(conn);
        self.committed();
        let idle_until = self.idle_until.load(std::sync::atomic::Ordering::SeqCst);
        if woke || wake_at.is_some_and(|t| t < idle_until) {
            self.wake.notify_one();
        }
        Ok(out)
    }

    pub fn is_busy(&self, id: EntryId) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|n| *n > 0)
    }

    pub fn mark_open(&self, id: EntryId, delta: i32) {
        let mut b = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let n = b.entry(id).or_insert(0);
        *n = (*n as i64 + delta as i64).max(0) as u32;
        if *n == 0 {
            b.remove(&id);
        }
    }

    /// Makes every transaction committed so far survive a power cut: one commit with
    /// `synchronous=FULL` syncs the WAL, which holds all earlier frames too.
    pub fn make_durable(&self) -> StoreResult<()> {
        let conn = self.lock();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let r = conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_fsync', ?1)",
            params![now_ms().to_string()],
        );
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        r?;
        Ok(())
    }
}

fn lock_pool(m: &Mutex<Vec<Connection>>) -> MutexGuard<'_, Vec<Connection>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pages the writer lets the WAL reach before it checkpoints by itself, inside a commit.
const CHECKPOINT_BACKSTOP_PAGES: i64 = 20_000;
/// Commits after which the checkpointer copies the WAL into the database (about as often as
/// SQLite's own default of 1000 pages), and how often it looks.
const CHECKPOINT_EVERY_COMMITS: u64 = 100;
const CHECKPOINT_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies the WAL into the database file from a thread of its own. SQLite's automatic
/// checkpoint runs inside the commit that crosses its threshold, and its two syncs (WAL, then
/// database) stalled that op and every op queued behind the writer's lock. A checkpoint from
/// another connection runs beside the writer; durability is unchanged, since committed
/// transactions are in the WAL either way and a checkpoint syncs the database before the WAL
/// may be reused.
struct Checkpointer {
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Dropped to stop the thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let seen_commits = commits.clone();
        let thread = std::thread::Builder::new()
            .name("stratus-checkpoint".into())
            .spawn(move || {
                let mut done = 0u64;
                let mut ticks_since = 0u32;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(CHECKPOINT_TICK)
                {
                    let n = seen_commits.load(std::sync::atomic::Ordering::Relaxed);
                    ticks_since += 1;
                    // Every so many commits, or once things are quiet for a second.
                    if n == done || (n - done < CHECKPOINT_EVERY_COMMITS && ticks_since < 10) {
                        continue;
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "checkpoint failed; will retry");
                        continue;
                    }
                    done = n;
                    ticks_since = 0;
                }
            })
            .expect("spawning the checkpoint thread");
        Ok(Checkpointer {
            commits,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A view of the database inside `Store::read` or `Store::write`: all SQL lives here.
pub struct Db<'a> {
    conn: &'a Connection,
    /// The uploader must look at the journal after this transaction.
    woke: std::cell::Cell<bool>,
    /// The earliest time a job touched by this transaction becomes ready: the uploader must
    /// look by then.
    wake_at: std::cell::Cell<Option<i64>>,
}

/// A whole file the remote holds exactly (clean, no job, not a conflict copy): what
/// [`Db::retire`] may hand to the block cache.
const RETIRABLE: &str = "kind = 1 AND local = 1 AND dirty = 0 AND synced_key IS NOT NULL \
     AND synced_etag IS NOT NULL AND conflict_of IS NULL \
     AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.entry_id = entries.id)";

const ENTRY_COLS: &str = "id, parent, name, kind, mode, uid, gid, size, mtime_ns, ctime_ns, \
     atime_ns, target, local, synced_key, synced_etag, synced_version, synced_hash, dirty, dirty_seq, \
     conflict_of";

fn entry_from_row(r: &Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: EntryId(r.get::<_, i64>(0)? as u64),
        parent: r.get::<_, Option<i64>>(1)?.map(|p| EntryId(p as u64)),
        name: r.get(2)?,
        kind: Kind::from_sql(r.get(3)?)?,
        mode: r.get(4)?,
        uid: r.get(5)?,
        gid: r.get(6)?,
        size: r.get::<_, i64>(7)? as u64,
        mtime_ns: r.get(8)?,
        ctime_ns: r.get(9)?,
        atime_ns: r.get(10)?,
        target: r.get(11)?,
        local: r.get(12)?,
        synced: Synced {
            key: r.get(13)?,
            etag: r.get(14)?,
            version: r.get(15)?,
            hash: r.get(16)?,
        },
        dirty: r.get(17)?,
        dirty_seq: r.get(18)?,
        conflict_of: r.get::<_, Option<i64>>(19)?.map(|c| EntryId(c as u64)),
    })
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let entry: Option<i64> = r.get(1)?;
    let key: Option<String> = r.get(2)?;
    let kind = match (entry, key) {
        (Some(id), _) => JobKind::Sync(EntryId(id as u64)),
        (None, Some(key)) => JobKind::Delete {
            key,
            dir: r.get(3)?,
            etag: r.get(7)?,
        },
        (None, None) => return Err(rusqlite::Error::InvalidQuery),
    };
    let state: String = r.get(5)?;
    Ok(Job {
        seq: r.get(0)?,
        kind,
        attempts: r.get(4)?,
        state: match state.as_str() {
            "uploading" => JobState::Uploading,
            "parked" => JobState::Parked,
            _ => JobState::Queued,
        },
        last_error: r.get(6)?,
        tried: r
            .get::<_, Option<String>>(8)?
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

const JOB_COLS: &str =
    "seq, entry_id, delete_key, delete_dir, attempts, state, last_error, delete_etag, tried";

/// How many hashes a job remembers having sent (`Job::tried`).
const TRIED_KEPT: usize = 8;

impl Db<'_> {
    pub fn meta_get(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn meta_set(&self, key: &str, value: &str) -> StoreResult<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn get(&self, id: EntryId) -> StoreResult<Option<Entry>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {ENTRY_COLS} FROM entries WHERE id = ?1"))?;
        Ok(st.query_row([id.0 as i64], entry_from_row).optional()?)
    }

    pub fn must_get(&self, id: EntryId) -> StoreResult<Entry> {
        self.get(id)?.ok_or(StoreError::Missing(id))
    }

    pub fn lookup(&self, parent: EntryId, name: &[u8]) -> StoreResult<Option<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND name = ?2"
        ))?;
        Ok(st
            .query_row(params![parent.0 as i64, name], entry_from_row)
            .optional()?)
    }

    pub fn children(&self, parent: EntryId) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 ORDER BY name"
        ))?;
        let rows = st.query_map([parent.0 as i64], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn subdir_count(&self, parent: EntryId) -> StoreResult<u64> {
        let mut st = self
            .conn
            .prepare_cached("SELECT count(*) FROM entries WHERE parent = ?1 AND kind = 2")?;
        Ok(st.query_row([parent.0 as i64], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn has_children(&self, parent: EntryId) -> StoreResult<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM entries WHERE parent = ?1 LIMIT 1")?;
        Ok(st.exists([parent.0 as i64])?)
    }

    /// Every entry below `dir`, depth first.
    pub fn descendants(&self, dir: EntryId) -> StoreResult<Vec<Entry>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for c in self.children(d)? {
                if c.kind == Kind::Dir {
                    stack.push(c.id);
                }
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The entry's path relative to the mount root, `None` when it is unlinked.
    pub fn path_of(&self, id: EntryId) -> StoreResult<Option<Vec<u8>>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = id;
        while cur != EntryId::ROOT {
            let mut st = self
                .conn
                .prepare_cached("SELECT parent, name FROM entries WHERE id = ?1")?;
            let row: Option<(Option<i64>, Vec<u8>)> = st
                .query_row([cur.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((Some(p), name)) => {
                    parts.push(name);
                    cur = EntryId(p as u64);
                }
                _ => return Ok(None),
            }
        }
        parts.reverse();
        Ok(Some(parts.join(&b'/')))
    }

    /// The live entry at a relative path, if any.
    pub fn resolve(&self, path: &[u8]) -> StoreResult<Option<Entry>> {
        let mut cur = match self.get(EntryId::ROOT)? {
            Some(e) => e,
            None => return Ok(None),
        };
        for part in path.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
            match self.lookup(cur.id, part)? {
                Some(e) => cur = e,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    pub fn insert_root(&self, mode: u32, uid: u32, gid: u32, synced: &Synced) -> StoreResult<()> {
        let now = now_ns();
        self.conn.execute(
            "INSERT OR IGNORE INTO entries(id, parent, name, kind, mode, uid, gid, size, mtime_ns, \
             ctime_ns, atime_ns, local, synced_key) VALUES (1, NULL, x'', 2, ?1, ?2, ?3, 0, ?4, ?4, ?4, 1, ?5)",
            params![mode, uid, gid, now, synced.key],
        )?;
        Ok(())
    }

    pub fn insert(&self, e: &NewEntry) -> StoreResult<Entry> {
        let now = now_ns();
        let mut st = self.conn.prepare_cached(
            "INSERT INTO entries(parent, name, kind, mode, uid, gid, size, mtime_ns, ctime_ns, atime_ns, \
             target, local, synced_key, synced_etag, synced_version, synced_hash, dirty, dirty_seq, \
             conflict_of) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 0, ?17)",
        )?;
        st.execute(params![
            e.parent.0 as i64,
            e.name,
            e.kind.to_sql(),
            e.mode,
            e.uid,
            e.gid,
            e.size as i64,
            e.mtime_ns,
            now,
            e.target,
            e.local,
            e.synced.key,
            e.synced.etag,
            e.synced.version,
            e.synced.hash,
            e.dirty,
            e.conflict_of.map(|c| c.0 as i64),
        ])?;
        let id = EntryId(self.conn.last_insert_rowid() as u64);
        self.must_get(id)
    }

    /// Writes back every attribute of `e` (the caller read, changed and hands it back) except
    /// `local`: whether the data file is whole changes only through [`Db::set_local`] and
    /// [`Db::retire`], which keep the block list in step, so a copy read before a retire
    /// cannot write a stale `local` back over it.
    pub fn update(&self, e: &Entry) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "UPDATE entries SET parent = ?2, name = ?3, mode = ?4, uid = ?5, gid = ?6, size = ?7, \
             mtime_ns = ?8, ctime_ns = ?9, atime_ns = ?10, target = ?11, dirty = ?12 \
             WHERE id = ?1",
        )?;
        st.execute(params![
            e.id.0 as i64,
            e.parent.map(|p| p.0 as i64),
            e.name,
            e.mode,
            e.uid,
            e.gid,
            e.size as i64,
            e.mtime_ns,
            e.ctime_ns,
            e.atime_ns,
            e.target,
            e.dirty,
        ])?;
        Ok(())
    }

    pub fn set_size_mtime(&self, id: EntryId, size: u64, mtime_ns: i64) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "UPDATE entries SET size = ?2, mtime_ns = ?3, ctime_ns = max(ctime_ns, ?3) WHERE id = ?1",
        )?;
        st.execute(params![id.0 as i64, size as i64, mtime_ns])?;
        Ok(())
    }

    /// Whether the data file holds the whole content. Either way the block list goes: a
    /// complete file needs none, and `false` means the data file is no longer valid.
    pub fn set_local(&self, id: EntryId, local: bool) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET local = ?2 WHERE id = ?1",
            params![id.0 as i64, local],
        )?;
        self.conn
            .execute("DELETE FROM blocks WHERE entry_id = ?1", [id.0 as i64])?;
        Ok(())
    }

    /// Blocks of a partly fetched file that its data file holds.
    pub fn blocks_of(&self, id: EntryId) -> StoreResult<Vec<u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT idx FROM blocks WHERE entry_id = ?1")?;
        let rows = st.query_map([id.0 as i64], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_blocks(&self, id: EntryId, idx: &[u64]) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO blocks(entry_id, idx) VALUES (?1, ?2)")?;
        for i in idx {
            st.execute(params![id.0 as i64, *i as i64])?;
        }
        Ok(())
    }

    /// Forgets a cached block; false when it was not listed (the file became complete, or
    /// was replaced, since the block was cached).
    pub fn drop_block(&self, id: EntryId, idx: u64) -> StoreResult<bool> {
        let n = self.conn.execute(
            "DELETE FROM blocks WHERE entry_id = ?1 AND idx = ?2",
            params![id.0 as i64, idx as i64],
        )?;
        Ok(n == 1)
    }

    /// Ids of every entry, for the sweep of data files at start.
    pub fn entry_ids(&self) -> StoreResult<std::collections::HashSet<u64>> {
        let mut st = self.conn.prepare("SELECT id FROM entries")?;
        let rows = st.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Turns a whole, clean file into a fully cached one: its data file stays as it is, but
    /// its blocks are listed, so they count against the cache budget and can be evicted like
    /// fetched ones. Only a file the remote holds exactly (clean, no job) qualifies; returns
    /// how many blocks it now lists, or `None` when it did not qualify.
    pub fn retire(&self, id: EntryId, block_size: u64) -> StoreResult<Option<u64>> {
        let size: Option<i64> = self
            .conn
            .query_row(
                &format!("SELECT size FROM entries WHERE id = ?1 AND {RETIRABLE}"),
                [id.0 as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(size) = size else {
            return Ok(None);
        };
        self.conn
            .execute("UPDATE entries SET local = 0 WHERE id = ?1", [id.0 as i64])?;
        let n = (size as u64).div_ceil(block_size);
        let idx: Vec<u64> = (0..n).collect();
        self.add_blocks(id, &idx)?;
        Ok(Some(n))
    }

    /// Whole files that [`Db::retire`] would take: at start, before anything is open.
    pub fn retirable(&self) -> StoreResult<Vec<EntryId>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT id FROM entries WHERE {RETIRABLE}"))?;
        let rows = st.query_map([], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bytes of files whose data file is whole and not yet handed to the block cache: what
    /// was written here and waits for (or is in) its upload.
    pub fn whole_file_bytes(&self) -> StoreResult<u64> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum(size), 0) FROM entries WHERE local = 1 AND kind = 1",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn set_pinned(&self, id: EntryId, on: bool) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET pinned = ?2 WHERE id = ?1",
            params![id.0 as i64, on],
        )?;
        Ok(())
    }

    /// The pinned entry nearest to `id`: itself or an ancestor, since a directory's pin is
    /// inherited by everything below it.
    pub fn pinned_by(&self, id: EntryId) -> StoreResult<Option<EntryId>> {
        let mut st = self.conn.prepare_cached(
            "WITH RECURSIVE up(id, parent, pinned, depth) AS ( \
                SELECT id, parent, pinned, 0 FROM entries WHERE id = ?1 \
                UNION ALL \
                SELECT e.id, e.parent, e.pinned, up.depth + 1 FROM entries e JOIN up ON e.id = up.parent \
             ) SELECT id FROM up WHERE pinned = 1 ORDER BY depth LIMIT 1",
        )?;
        Ok(st
            .query_row([id.0 as i64], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))
            .optional()?)
    }

    pub fn any_pinned(&self) -> StoreResult<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM entries WHERE pinned = 1 LIMIT 1", [], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Cached blocks of files not wholly local, all files together.
    pub fn block_count(&self) -> StoreResult<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM blocks", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Every file that is pinned, directly or through a directory above it.
    pub fn pinned_files(&self) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "WITH RECURSIVE down(id) AS ( \
                SELECT id FROM entries WHERE pinned = 1 AND (parent IS NOT NULL OR id = 1) \
                UNION \
                SELECT e.id FROM entries e JOIN down ON e.parent = down.id \
             ) SELECT {ENTRY_COLS} FROM entries WHERE kind = 1 AND id IN (SELECT id FROM down)"
        ))?;
        let rows = st.query_map([], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every cached block, for rebuilding the eviction order at start.
    pub fn all_blocks(&self) -> StoreResult<Vec<(EntryId, u64)>> {
        let mut st = self.conn.prepare("SELECT entry_id, idx FROM blocks")?;
        let rows = st.query_map([], |r| {
            Ok((
                EntryId(r.get::<_, i64>(0)? as u64),
                r.get::<_, i64>(1)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_synced(&self, id: EntryId, synced: &Synced) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET synced_key = ?2, synced_etag = ?3, synced_version = ?4, synced_hash = ?5 \
             WHERE id = ?1",
            params![id.0 as i64, synced.key, synced.etag, synced.version, synced.hash],
        )?;
        Ok(())
    }

    pub fn delete_entry(&self, id: EntryId) -> StoreResult<()> {
        self.conn
            .execute("DELETE FROM entries WHERE id = ?1", [id.0 as i64])?;
        self.conn
            .execute("DELETE FROM blocks WHERE entry_id = ?1", [id.0 as i64])?;
        self.conn
            .execute("DELETE FROM journal WHERE entry_id = ?1", [id.0 as i64])?;
        Ok(())
    }

    /// Live entries (other than `except`) whose remote copy sits at `key`.
    pub fn owners_of_key(&self, key: &str, except: Option<EntryId>) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE synced_key = ?1 AND parent IS NOT NULL AND id != ?2 \
             AND conflict_of IS NULL"
        ))?;
        let rows = st.query_map(
            params![key, except.map(|e| e.0 as i64).unwrap_or(-1)],
            entry_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Entries unlinked while open; after a restart nothing holds them any more.
    pub fn orphans(&self) -> StoreResult<Vec<EntryId>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM entries WHERE parent IS NULL AND id != 1")?;
        let rows = st.query_map([], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn entry_count(&self) -> StoreResult<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Complete files and their recorded sizes, for recovery at start.
    pub fn complete_files(&self) -> StoreResult<Vec<(EntryId, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, size FROM entries WHERE kind = 1 AND local = 1")?;
        let rows = st.query_map([], |r| {
            Ok((
                EntryId(r.get::<_, i64>(0)? as u64),
                r.get::<_, i64>(1)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every entry, for the poller's comparison with a listing.
    pub fn all_entries(&self) -> StoreResult<Vec<Entry>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {ENTRY_COLS} FROM entries"))?;
        let rows = st.query_map([], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_conflict_of(&self, id: EntryId, of: Option<EntryId>) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET conflict_of = ?2 WHERE id = ?1",
            params![id.0 as i64, of.map(|o| o.0 as i64)],
        )?;
        Ok(())
    }

    /// Marks an entry clean: the remote holds what it shows. Drops its sync job.
    pub fn mark_clean(&self, id: EntryId) -> StoreResult<()> {
        self.conn
            .execute("UPDATE entries SET dirty = 0 WHERE id = ?1", [id.0 as i64])?;
        self.conn
            .execute("DELETE FROM journal WHERE entry_id = ?1", [id.0 as i64])?;
        Ok(())
    }

    // ---- conflicts ----

    pub fn insert_conflict(&self, c: &Conflict) -> StoreResult<i64> {
        self.conn.execute(
            "INSERT INTO conflicts(entry_id, copy_id, path, copy_path, local_size, local_mtime_ns, \
             local_etag, remote_size, remote_mtime_ns, remote_etag, remote_version, detected_ms, \
             policy, resolved_ms, resolution, versions, mine) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                c.entry_id as i64,
                c.copy_id as i64,
                c.path,
                c.copy_path,
                c.local_size as i64,
                c.local_mtime_ns,
                c.local_etag,
                c.remote_size as i64,
                c.remote_mtime_ns,
                c.remote_etag,
                c.remote_version,
                c.detected_ms,
                c.policy,
                c.resolved_ms,
                c.resolution,
                versions_json(c),
                c.mine,
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records what is now known of a conflict's two versions (the copy's ETag once it is
    /// uploaded, say).
    pub fn update_conflict_versions(&self, c: &Conflict) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE conflicts SET versions = ?2 WHERE id = ?1",
            params![c.id, versions_json(c)],
        )?;
        Ok(())
    }

    /// The most recent conflict, open or not, that `id` took part in, or that was recorded
    /// for `path`: what `stratus resolve` reports when there is nothing left to settle.
    pub fn last_conflict_for(&self, id: EntryId, path: &str) -> StoreResult<Option<Conflict>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CONFLICT_COLS} FROM conflicts WHERE entry_id = ?1 OR copy_id = ?1 \
             OR path = ?2 OR copy_path = ?2 ORDER BY id DESC LIMIT 1"
        ))?;
        Ok(st
            .query_row(params![id.0 as i64, path], conflict_from_row)
            .optional()?)
    }

    pub fn set_conflict_copy_path(&self, id: i64, copy_path: &str) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE conflicts SET copy_path = ?2 WHERE id = ?1",
            params![id, copy_path],
        )?;
        Ok(())
    }

    /// The open conflict whose copy is `copy`.
    pub fn open_conflict_of_copy(&self, copy: EntryId) -> StoreResult<Option<Conflict>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CONFLICT_COLS} FROM conflicts WHERE resolved_ms IS NULL AND copy_id = ?1 \
             ORDER BY id LIMIT 1"
        ))?;
        Ok(st
            .query_row([copy.0 as i64], conflict_from_row)
            .optional()?)
    }

    /// The open conflict that `id` takes part in, as the local version or as the copy.
    pub fn open_conflict_for(&self, id: EntryId) -> StoreResult<Option<Conflict>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {CONFLICT_COLS} FROM conflicts WHERE resolved_ms IS NULL \
             AND (entry_id = ?1 OR copy_id = ?1) ORDER BY id LIMIT 1"
        ))?;
        Ok(st.query_row([id.0 as i64], conflict_from_row).optional()?)
    }

    pub fn resolve_conflict(&self, id: i64, resolution: &str) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE conflicts SET resolved_ms = ?2, resolution = ?3 WHERE id = ?1",
            params![id, now_ms(), resolution],
        )?;
        Ok(())
    }

    /// Settles a conflict by keeping both versions: the copy becomes an ordinary file under its
    /// own name, and goes up again without its conflict mark so that every other mount learns
    /// the conflict is settled. (Keeping one side is an unlink or a rename, done by the caller.)
    pub fn keep_both(&self, c: &Conflict) -> StoreResult<()> {
        let copy = EntryId(c.copy_id);
        if self.get(copy)?.is_some() {
            self.set_conflict_of(copy, None)?;
            self.enqueue_sync(copy, dirty::META, Some(now_ms()))?;
        }
        self.resolve_conflict(c.id, "both")
    }

    pub fn conflicts(&self) -> StoreResult<Vec<Conflict>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {CONFLICT_COLS} FROM conflicts ORDER BY id"
        ))?;
        let rows = st.query_map([], conflict_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- journal ----

    /// Queued deletes, for the poller: a key deleted here but edited remotely comes back.
    pub fn pending_deletes(&self) -> StoreResult<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE delete_key IS NOT NULL ORDER BY seq"
        ))?;
        let rows = st.query_map([], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The oldest queued delete of the file at `key`, as the version it means to remove
    /// (`Some(None)`: whatever is there).
    pub fn pending_file_delete(&self, key: &str) -> StoreResult<Option<Option<String>>> {
        let mut st = self.conn.prepare_cached(
            "SELECT delete_etag FROM journal WHERE delete_key = ?1 AND delete_dir = 0 \
             ORDER BY seq LIMIT 1",
        )?;
        Ok(st.query_row([key], |r| r.get(0)).optional()?)
    }

    /// Queues (or re-arms) the sync of `id`, keeping its place in the queue if it had one.
    /// `ready_at_ms = None` holds the job until an open writer lets go.
    pub fn enqueue_sync(
        &self,
        id: EntryId,
        dirty: i64,
        ready_at_ms: Option<i64>,
    ) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET dirty = dirty | ?2, dirty_seq = dirty_seq + 1 WHERE id = ?1",
            params![id.0 as i64, dirty],
        )?;
        let mut st = self.conn.prepare_cached(
            "INSERT INTO journal(entry_id, ready_at_ms, state) VALUES (?1, ?2, 'queued') \
             ON CONFLICT(entry_id) WHERE entry_id IS NOT NULL DO UPDATE SET \
             ready_at_ms = CASE WHEN journal.ready_at_ms IS NULL THEN NULL ELSE excluded.ready_at_ms END, \
             state = CASE WHEN state = 'parked' THEN 'queued' ELSE state END, \
             attempts = CASE WHEN state = 'parked' THEN 0 ELSE attempts END",
        )?;
        st.execute(params![id.0 as i64, ready_at_ms])?;
        self.wake_by(ready_at_ms);
        Ok(())
    }

    /// Records that a job becomes ready at `ready_at_ms` (never, while held: `None`).
    fn wake_by(&self, ready_at_ms: Option<i64>) {
        if let Some(t) = ready_at_ms {
            self.wake_at
                .set(Some(self.wake_at.get().map_or(t, |w| w.min(t))));
        }
    }

    /// Sets when a queued sync may run, without counting it as a new change.
    pub fn set_ready(&self, id: EntryId, ready_at_ms: Option<i64>) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("UPDATE journal SET ready_at_ms = ?2 WHERE entry_id = ?1")?;
        st.execute(params![id.0 as i64, ready_at_ms])?;
        self.wake_by(ready_at_ms);
        Ok(())
    }

    pub fn enqueue_delete(&self, key: &str, dir: bool, etag: Option<&str>) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO journal(delete_key, delete_dir, delete_etag, ready_at_ms, state) \
             VALUES (?1, ?2, ?3, 0, 'queued')",
            params![key, dir, etag],
        )?;
        self.woke.set(true);
        Ok(())
    }

    /// The unfinished jobs that still change remote keys below the directory `dir_key`:
    /// deletes of keys below it, and syncs of entries whose remote copy sits below it (a
    /// move away, not run yet). `except` is the asking job. Answers how many there are and
    /// the latest time one of them becomes ready (`None` when one waits for a writer, the
    /// user or a conflict: held, parked or in conflict).
    pub fn jobs_below(&self, dir_key: &str, except: i64) -> StoreResult<(u64, Option<i64>)> {
        // Keys that start with `dir_key/`: from `dir_key/` up to, not including, `dir_key0`
        // ('0' follows '/'), a range both key indexes answer.
        let from = format!("{dir_key}/");
        let to = format!("{dir_key}0");
        let mut st = self.conn.prepare_cached(
            "SELECT count(*), max(ready_at_ms), \
             coalesce(sum(ready_at_ms IS NULL OR state = 'parked' OR entry_id IN \
               (SELECT entry_id FROM conflicts WHERE resolved_ms IS NULL)), 0) \
             FROM (SELECT seq, entry_id, ready_at_ms, state FROM journal \
                   WHERE delete_key >= ?1 AND delete_key < ?2 AND seq != ?3 \
                   UNION ALL \
                   SELECT j.seq, j.entry_id, j.ready_at_ms, j.state FROM entries e \
                   JOIN journal j ON j.entry_id = e.id \
                   WHERE e.synced_key >= ?1 AND e.synced_key < ?2)",
        )?;
        let (n, latest, stuck): (i64, Option<i64>, i64) = st
            .query_row(params![from, to, except], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        Ok((n as u64, if stuck > 0 { None } else { latest }))
    }

    /// Puts a job back in the queue, at its place, to be taken again at `ready_at_ms`.
    pub fn defer_job(&self, seq: i64, ready_at_ms: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = 'queued', ready_at_ms = ?2 WHERE seq = ?1",
            params![seq, ready_at_ms],
        )?;
        self.wake_by(Some(ready_at_ms));
        Ok(())
    }

    /// Held jobs whose writer is gone (the daemon restarted): they are ready now.
    pub fn release_held(&self, ready_at_ms: i64) -> StoreResult<Vec<EntryId>> {
        let mut st = self.conn.prepare(
            "SELECT entry_id FROM journal WHERE ready_at_ms IS NULL AND entry_id IS NOT NULL",
        )?;
        let ids: Vec<EntryId> = st
            .query_map([], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))?
            .collect::<Result<_, _>>()?;
        self.conn.execute(
            "UPDATE journal SET ready_at_ms = ?1 WHERE ready_at_ms IS NULL",
            [ready_at_ms],
        )?;
        self.conn.execute(
            "UPDATE journal SET state = 'queued' WHERE state = 'uploading'",
            [],
        )?;
        Ok(ids)
    }

    /// The oldest job that may run now, skipping parked and held ones.
    ///
    /// Walking the queue in order from its head is what finds it at once while a backlog
    /// drains; but after a burst of creates the head is thousands of jobs still in their
    /// write-back delay, and the walk read all of them for every job run (a delete, a
    /// mkdir), under the writer's lock. So: a short walk from the head, and if that finds
    /// nothing, the walk starts at the oldest ready job, found through `journal_by_ready`.
    pub fn next_job(&self, now_ms: i64) -> StoreResult<Option<Job>> {
        const HEAD: i64 = 64;
        // The oldest job that may run among `seq` in `?2..?3`.
        let mut within = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE seq >= ?2 AND seq < ?3 AND state != 'parked' \
             AND ready_at_ms IS NOT NULL AND ready_at_ms <= ?1 \
             ORDER BY seq LIMIT 1"
        ))?;
        let mut head = self
            .conn
            .prepare_cached("SELECT seq FROM journal ORDER BY seq LIMIT 1 OFFSET ?1")?;
        // The first seq past the head, if the queue is longer than that.
        let head_end: Option<i64> = head.query_row([HEAD], |r| r.get(0)).optional()?;
        let head_end = head_end.unwrap_or(i64::MAX);
        let found = within
            .query_row(params![now_ms, i64::MIN, head_end], job_from_row)
            .optional()?;
        if found.is_some() || head_end == i64::MAX {
            return Ok(found);
        }
        let mut oldest_ready = self.conn.prepare_cached(
            "SELECT min(seq) FROM journal INDEXED BY journal_by_ready WHERE ready_at_ms <= ?1",
        )?;
        let from: Option<i64> = oldest_ready.query_row([now_ms], |r| r.get(0))?;
        let Some(from) = from else {
            return Ok(None);
        };
        Ok(within
            .query_row(params![now_ms, from.max(head_end), i64::MAX], job_from_row)
            .optional()?)
    }

    /// When the next not-yet-ready job becomes ready.
    pub fn next_ready_at(&self) -> StoreResult<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT min(ready_at_ms) FROM journal WHERE state != 'parked' AND ready_at_ms IS NOT NULL",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn job_for(&self, id: EntryId) -> StoreResult<Option<Job>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE entry_id = ?1"
        ))?;
        Ok(st.query_row([id.0 as i64], job_from_row).optional()?)
    }

    pub fn set_job_state(&self, seq: i64, state: JobState) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = ?2 WHERE seq = ?1",
            params![seq, state.as_str()],
        )?;
        Ok(())
    }

    /// A transient failure: the job stays first in line, retried after `retry_at_ms`.
    pub fn retry_job(&self, seq: i64, error: &str, retry_at_ms: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = 'queued', attempts = attempts + 1, last_error = ?2, \
             ready_at_ms = CASE WHEN ready_at_ms IS NULL THEN NULL ELSE ?3 END WHERE seq = ?1",
            params![seq, error, retry_at_ms],
        )?;
        Ok(())
    }

    /// A permanent failure: the job waits for the user (or a later change) instead of
    /// blocking the rest of the queue.
    pub fn park_job(&self, seq: i64, error: &str) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = 'parked', attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, error],
        )?;
        Ok(())
    }

    /// Records, before it goes out, that the job sends content with hash `sha256`.
    pub fn note_tried(&self, seq: i64, sha256: &str) -> StoreResult<()> {
        let cur: Option<String> = self
            .conn
            .query_row("SELECT tried FROM journal WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()?
            .flatten();
        let mut tried: Vec<&str> = cur
            .as_deref()
            .map(|t| t.lines().collect())
            .unwrap_or_default();
        if tried.last() == Some(&sha256) {
            return Ok(());
        }
        tried.push(sha256);
        let keep = &tried[tried.len().saturating_sub(TRIED_KEPT)..];
        self.conn.execute(
            "UPDATE journal SET tried = ?2 WHERE seq = ?1",
            params![seq, keep.join("\n")],
        )?;
        Ok(())
    }

    pub fn remove_job(&self, seq: i64) -> StoreResult<()> {
        self.conn
            .execute("DELETE FROM journal WHERE seq = ?1", [seq])?;
        Ok(())
    }

    /// Finishes a sync: the remote now holds `synced`. The job and the dirty bits go only if
    /// nothing changed since `seen_dirty_seq`; otherwise the job stays for another round.
    pub fn complete_sync(
        &self,
        seq: i64,
        id: EntryId,
        seen_dirty_seq: i64,
        synced: &Synced,
    ) -> StoreResult<bool> {
        self.set_synced(id, synced)?;
        let changed = self.conn.execute(
            "UPDATE entries SET dirty = 0 WHERE id = ?1 AND dirty_seq = ?2",
            params![id.0 as i64, seen_dirty_seq],
        )?;
        if changed == 1 {
            self.remove_job(seq)?;
            Ok(true)
        } else {
            self.set_job_state(seq, JobState::Queued)?;
            Ok(false)
        }
    }

    /// Makes every waiting job run at once (a forced sync): write-back delays and backoffs
    /// are cut short, parked jobs get another try; held ones still wait for their writer.
    pub fn retry_now(&self, now_ms: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET ready_at_ms = ?1 WHERE ready_at_ms > ?1",
            [now_ms],
        )?;
        self.conn.execute(
            "UPDATE journal SET state = 'queued' WHERE state = 'parked'",
            [],
        )?;
        self.woke.set(true);
        Ok(())
    }

    /// Cuts the write-back delay of queued jobs short (not held ones, not parked ones): the
    /// cache is full of data waiting for upload.
    pub fn hurry(&self, now_ms: i64) -> StoreResult<()> {
        let n = self.conn.execute(
            "UPDATE journal SET ready_at_ms = ?1 WHERE ready_at_ms > ?1 AND state = 'queued'",
            [now_ms],
        )?;
        if n > 0 {
            self.woke.set(true);
        }
        Ok(())
    }

    pub fn queue_stats(&self) -> StoreResult<QueueStats> {
        let (entries, bytes, held, parked, uploading, max_seq): (i64, i64, i64, i64, i64, i64) =
            self.conn.query_row(
                "SELECT count(*), coalesce(sum(CASE WHEN e.kind = 1 AND (e.dirty & 1) = 1 THEN e.size ELSE 0 END), 0), \
                 coalesce(sum(j.ready_at_ms IS NULL), 0), coalesce(sum(j.state = 'parked'), 0), \
                 coalesce(sum(j.state = 'uploading'), 0), \
                 coalesce((SELECT max(seq) FROM journal), 0) \
                 FROM journal j LEFT JOIN entries e ON e.id = j.entry_id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )?;
        let max_seq = max_seq.max(self.journal_barrier()?);
        let last_error = self
            .conn
            .query_row(
                "SELECT last_error FROM journal WHERE last_error IS NOT NULL ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(QueueStats {
            entries: entries as u64,
            bytes: bytes as u64,
            held: held as u64,
            parked: parked as u64,
            uploading: uploading as u64,
            max_seq,
            last_error,
        })
    }

    /// The highest journal sequence number handed out so far, including finished jobs.
    pub fn journal_barrier(&self) -> StoreResult<i64> {
        Ok(self.conn.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Jobs at or below `barrier` that have not finished, oldest first.
    pub fn pending_up_to(&self, barrier: i64) -> StoreResult<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE seq <= ?1 ORDER BY seq"
        ))?;
        let rows = st.query_map([barrier], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        s.write(|db| db.insert_root(0o755, 0, 0, &Synced::default()))
            .unwrap();
        (dir, s)
    }

    fn file(s: &Store, name: &str) -> EntryId {
        s.write(|db| {
            db.insert(&NewEntry {
                parent: EntryId::ROOT,
                name: name.as_bytes().to_vec(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 0,
                mtime_ns: 0,
                target: None,
                local: true,
                synced: Synced::default(),
                dirty: 0,
                conflict_of: None,
            })
        })
        .unwrap()
        .id
    }

    #[test]
    fn a_job_keeps_its_place_and_a_held_job_stays_held() {
        let (_d, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        s.write(|db| db.enqueue_sync(b, dirty::CONTENT, Some(0)))
            .unwrap();
        // A later change to `a` does not send it behind `b`.
        s.write(|db| db.enqueue_sync(a, dirty::META, Some(0)))
            .unwrap();
        let first = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert_eq!(first.kind, JobKind::Sync(a));
        // Held by a writer: skipped, and a rename-style re-queue does not release it.
        s.write(|db| db.enqueue_sync(a, 0, None)).unwrap();
        s.write(|db| db.enqueue_sync(a, 0, Some(0))).unwrap();
        let next = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert_eq!(next.kind, JobKind::Sync(b));
        // Until the writer lets go.
        s.write(|db| db.set_ready(a, Some(0))).unwrap();
        let next = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert_eq!(next.kind, JobKind::Sync(a));
        let e = s.read(|db| db.must_get(a)).unwrap();
        assert_eq!(e.dirty, dirty::CONTENT | dirty::META);
    }

    /// A ready job behind a long queue of jobs still in their write-back delay is found
    /// (through the ready index), and order still wins among ready ones.
    #[test]
    fn next_job_looks_past_a_long_head_of_waiting_jobs() {
        let (_d, s) = store();
        let waiting: Vec<EntryId> = (0..100).map(|i| file(&s, &format!("w{i}"))).collect();
        for id in &waiting {
            s.write(|db| db.enqueue_sync(*id, dirty::CONTENT, Some(1_000)))
                .unwrap();
        }
        s.write(|db| db.enqueue_delete("gone", false, None))
            .unwrap();
        s.write(|db| db.enqueue_delete("gone2", false, None))
            .unwrap();
        let next = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert!(matches!(next.kind, JobKind::Delete { ref key, .. } if key == "gone"));
        assert_eq!(
            s.read(|db| db.pending_file_delete("gone2")).unwrap(),
            Some(None)
        );
        assert_eq!(s.read(|db| db.pending_file_delete("w1")).unwrap(), None);
        // Once the head is ready, it goes first again.
        let first = s.read(|db| db.next_job(1_000)).unwrap().unwrap();
        assert_eq!(first.kind, JobKind::Sync(waiting[0]));
    }

    /// What holds a directory's delete back: only jobs on keys strictly below it (not `d.x`,
    /// `dd` or `d` itself), counted with when they can run.
    #[test]
    fn jobs_below_a_directory_are_those_under_its_prefix() {
        let (_d, s) = store();
        s.write(|db| db.enqueue_delete("d", true, None)).unwrap();
        let dir_job = s.read(|db| db.next_job(10)).unwrap().unwrap().seq;
        for k in ["d.x", "dd", "c/d/x"] {
            s.write(|db| db.enqueue_delete(k, false, None)).unwrap();
        }
        assert_eq!(s.read(|db| db.jobs_below("d", dir_job)).unwrap().0, 0);

        s.write(|db| db.enqueue_delete("d/sub/x", false, None))
            .unwrap();
        // A file whose base is still below `d`, its move not run yet, due at 5000.
        let moved = file(&s, "moved");
        s.write(|db| {
            db.set_synced(
                moved,
                &Synced {
                    key: Some("d/moved".into()),
                    ..Default::default()
                },
            )?;
            db.enqueue_sync(moved, 0, Some(5_000))
        })
        .unwrap();
        assert_eq!(
            s.read(|db| db.jobs_below("d", dir_job)).unwrap(),
            (2, Some(5_000))
        );
        // Held by a writer: no time can be named.
        s.write(|db| db.set_ready(moved, None)).unwrap();
        assert_eq!(s.read(|db| db.jobs_below("d", dir_job)).unwrap(), (2, None));
    }

    #[test]
    fn a_change_during_upload_keeps_the_job() {
        let (_d, s) = store();
        let a = file(&s, "a");
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        let job = s.read(|db| db.next_job(10)).unwrap().unwrap();
        let seen = s.read(|db| db.must_get(a)).unwrap().dirty_seq;
        // The user writes again while the upload runs.
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        let synced = Synced {
            key: Some("a".into()),
            ..Default::default()
        };
        let clean = s
            .write(|db| db.complete_sync(job.seq, a, seen, &synced))
            .unwrap();
        assert!(!clean);
        assert!(s.read(|db| db.job_for(a)).unwrap().is_some());
        let seen = s.read(|db| db.must_get(a)).unwrap().dirty_seq;
        assert!(s
            .write(|db| db.complete_sync(job.seq, a, seen, &synced))
            .unwrap());
        assert!(s.read(|db| db.job_for(a)).unwrap().is_none());
        assert_eq!(s.read(|db| db.must_get(a)).unwrap().dirty, 0);
    }

    #[test]
    fn parked_jobs_leave_the_queue_until_retried() {
        let (_d, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        s.write(|db| db.enqueue_sync(b, dirty::CONTENT, Some(0)))
            .unwrap();
        let ja = s.read(|db| db.next_job(10)).unwrap().unwrap();
        s.write(|db| db.park_job(ja.seq, "403")).unwrap();
        assert_eq!(
            s.read(|db| db.next_job(10)).unwrap().unwrap().kind,
            JobKind::Sync(b)
        );
        let q = s.read(|db| db.queue_stats()).unwrap();
        assert_eq!((q.entries, q.parked), (2, 1));
        assert_eq!(q.last_error.as_deref(), Some("403"));
        s.write(|db| db.retry_now(10)).unwrap();
        assert_eq!(
            s.read(|db| db.next_job(10)).unwrap().unwrap().kind,
            JobKind::Sync(a)
        );
    }

    /// Regression: ids were SQLite rowids and the newest one was reused after a delete. An
    /// upload in flight for a deleted directory then recorded its key on the new entry, and
    /// the next sync of that entry copied a directory over a file ("Is a directory").
    #[test]
    fn regression_entry_ids_are_never_reused() {
        let (_d, s) = store();
        let a = file(&s, "a");
        s.write(|db| db.delete_entry(a)).unwrap();
        let b = file(&s, "b");
        assert!(b.0 > a.0);
    }

    #[test]
    fn paths_and_resolution() {
        let (_d, s) = store();
        let a = file(&s, "a");
        assert_eq!(s.read(|db| db.path_of(a)).unwrap(), Some(b"a".to_vec()));
        assert_eq!(
            s.read(|db| db.resolve(b"a")).unwrap().map(|e| e.id),
            Some(a)
        );
        assert!(s.read(|db| db.resolve(b"a/b")).unwrap().is_none());
    }
}
