//! The state database: the tree of entries, what the remote holds for each, and the journal
//! that is also the offline queue.
//!
//! One SQLite connection behind a `std::sync::Mutex`: SQLite serialises writers anyway, and a
//! single connection lets every FUSE op and the uploader compose their reads and writes into one
//! `BEGIN IMMEDIATE` transaction. The lock is never held across an `.await`.

mod activity;
mod conflicts;
mod entries;
mod journal;
mod queue;
mod schema;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub use activity::{counter, ActivityRow, Event, EventKind, ACTIVITY_KEPT, LAST_FULL_SYNC};
pub use conflicts::Conflict;
pub use entries::{dirty, Entry, NewEntry, Synced};
pub use journal::{Job, JobKind, JobState, QueueStats, Woken};
pub use queue::QueueRow;
pub use schema::SCHEMA_VERSION;

use crate::types::EntryId;

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
    /// The uploader's wake-ups: a commit that queued work it must see, a forced sync, the
    /// user's activity it stands aside for. Owned here because only the journal's commits
    /// know when there is new work; reached through [`Store::wait_for_jobs`] and
    /// [`Store::kick`].
    wakeups: journal::Wakeups,
}

/// What a state database not in use holds that has not reached the remote: queued operations
/// and bytes of content among them. Read without migrating or changing it (`stratus clean
/// --state-dirs` decides from this whether a state dir may go).
pub fn unsynced_in(path: &Path) -> StoreResult<(u64, u64)> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let (jobs, bytes): (i64, i64) = conn.query_row(
        "SELECT (SELECT count(*) FROM journal), \
         coalesce((SELECT sum(size) FROM entries WHERE kind = 1 AND (dirty & 1) = 1), 0)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((jobs as u64, bytes as u64))
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
            wakeups: journal::Wakeups::new(),
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
        self.wakeups.committed(woke, wake_at);
        Ok(out)
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
}

#[cfg(test)]
mod test_util {
    use super::*;
    use crate::types::Kind;

    pub(super) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        s.write(|db| db.insert_root(0o755, 0, 0, &Synced::default()))
            .unwrap();
        (dir, s)
    }

    pub(super) fn file(s: &Store, name: &str) -> EntryId {
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
                unread: false,
            })
        })
        .unwrap()
        .id
    }
}
