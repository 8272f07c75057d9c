//! The activity log and the sync statistics: what the sync did (an upload, a remote change
//! taken, a conflict, a retry ...), kept in the state database so that `stratus log` and the
//! totals of `stratus status` survive restarts and cost no parsing of `stratus.log`.
//!
//! Each event is one row of a bounded table (the oldest rows go past [`ACTIVITY_KEPT`]) and
//! bumps two counters of the `stats` table (events and bytes of its kind), in the caller's
//! transaction: an event is recorded exactly when the change it describes commits.

use rusqlite::{params, OptionalExtension, Row};

use super::{now_ms, Db, StoreResult};

/// Rows the activity log keeps; older ones are dropped as new ones come.
pub const ACTIVITY_KEPT: i64 = 10_000;

/// What happened. The names are the `kind` column, the counters' names and the JSON of
/// `stratus log --json`: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A file's content went up.
    Upload,
    /// A file's data came down (a whole file or the blocks a read needed).
    Download,
    /// A key was deleted on the remote because it was deleted here.
    Delete,
    /// An entry moved on the remote because it was renamed here.
    Move,
    /// A directory or a symlink was created on the remote.
    Create,
    /// Only metadata (mode, times) went up.
    Metadata,
    /// A change made elsewhere was taken into this mount (new or changed file, directory).
    RemoteChange,
    /// A deletion made elsewhere was taken into this mount.
    RemoteDelete,
    /// A conflict was found; both versions are kept.
    Conflict,
    /// A conflict was settled (by the user, a policy, or another mount).
    Settled,
    /// An operation failed for good and waits for the user (parked).
    Error,
    /// An operation failed and will be tried again.
    Retry,
    /// The user took the mount offline or back online.
    Offline,
    Online,
    Mount,
    Unmount,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        EventKind::Upload,
        EventKind::Download,
        EventKind::Delete,
        EventKind::Move,
        EventKind::Create,
        EventKind::Metadata,
        EventKind::RemoteChange,
        EventKind::RemoteDelete,
        EventKind::Conflict,
        EventKind::Settled,
        EventKind::Error,
        EventKind::Retry,
        EventKind::Offline,
        EventKind::Online,
        EventKind::Mount,
        EventKind::Unmount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Upload => "upload",
            EventKind::Download => "download",
            EventKind::Delete => "delete",
            EventKind::Move => "move",
            EventKind::Create => "create",
            EventKind::Metadata => "metadata",
            EventKind::RemoteChange => "remote-change",
            EventKind::RemoteDelete => "remote-delete",
            EventKind::Conflict => "conflict",
            EventKind::Settled => "settled",
            EventKind::Error => "error",
            EventKind::Retry => "retry",
            EventKind::Offline => "offline",
            EventKind::Online => "online",
            EventKind::Mount => "mount",
            EventKind::Unmount => "unmount",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub path: Option<String>,
    pub bytes: Option<u64>,
    /// How long it took; for an upload, from the file's close (or last change) to the upload
    /// landing, the figure `stratus status` averages.
    pub duration_ms: Option<i64>,
    pub detail: Option<String>,
}

impl Event {
    pub fn new(kind: EventKind) -> Event {
        Event {
            kind,
            path: None,
            bytes: None,
            duration_ms: None,
            detail: None,
        }
    }

    pub fn path(mut self, p: impl Into<String>) -> Event {
        self.path = Some(p.into());
        self
    }

    pub fn bytes(mut self, b: u64) -> Event {
        self.bytes = Some(b);
        self
    }

    pub fn duration_ms(mut self, d: i64) -> Event {
        self.duration_ms = Some(d.max(0));
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = Some(d.into());
        self
    }
}

/// One row of the activity log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    pub id: i64,
    pub at_ms: i64,
    pub kind: String,
    pub path: Option<String>,
    pub bytes: Option<u64>,
    pub duration_ms: Option<i64>,
    pub detail: Option<String>,
}

fn row(r: &Row<'_>) -> rusqlite::Result<ActivityRow> {
    Ok(ActivityRow {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        kind: r.get(2)?,
        path: r.get(3)?,
        bytes: r.get::<_, Option<i64>>(4)?.map(|b| b as u64),
        duration_ms: r.get(5)?,
        detail: r.get(6)?,
    })
}

/// The name of the counter of events (`upload`) or of their bytes (`upload.bytes`).
pub fn counter(kind: EventKind, bytes: bool) -> String {
    if bytes {
        format!("{}.bytes", kind.as_str())
    } else {
        kind.as_str().to_string()
    }
}

/// Counter of the moment the whole queue last reached the remote (milliseconds).
pub const LAST_FULL_SYNC: &str = "last_full_sync_ms";

impl Db<'_> {
    /// Records `e` now, in the current transaction.
    pub fn record(&self, e: &Event) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO activity(at_ms, kind, path, bytes, duration_ms, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        st.execute(params![
            now_ms(),
            e.kind.as_str(),
            e.path,
            e.bytes.map(|b| b as i64),
            e.duration_ms,
            e.detail
                .as_deref()
                .map(|d| d.chars().take(500).collect::<String>()),
        ])?;
        let id = self.conn.last_insert_rowid();
        if id % 64 == 0 {
            // A range delete on the primary key, every 64 rows: the table stays near its bound.
            self.conn
                .execute("DELETE FROM activity WHERE id <= ?1", [id - ACTIVITY_KEPT])?;
        }
        self.bump(&counter(e.kind, false), 1)?;
        // Downloaded bytes are counted as they arrive, blocks included, not per event (a
        // read of a few blocks is no event): see `Health::downloaded`.
        if let Some(b) = e.bytes.filter(|_| e.kind != EventKind::Download) {
            self.bump(&counter(e.kind, true), b as i64)?;
        }
        Ok(())
    }

    /// Adds `by` to the counter `name`.
    pub fn bump(&self, name: &str, by: i64) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO stats(name, value) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        )?;
        st.execute(params![name, by])?;
        Ok(())
    }

    /// Sets the counter `name`.
    pub fn set_stat(&self, name: &str, value: i64) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO stats(name, value) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        )?;
        st.execute(params![name, value])?;
        Ok(())
    }

    /// Every counter, over the life of the state dir.
    pub fn stats(&self) -> StoreResult<std::collections::HashMap<String, i64>> {
        let mut st = self.conn.prepare("SELECT name, value FROM stats")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rows after `after_id`, newer than `since_ms`, of the given kinds (all when empty),
    /// oldest first, at most `limit`.
    pub fn activity_after(
        &self,
        after_id: i64,
        since_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<ActivityRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at_ms, kind, path, bytes, duration_ms, detail FROM activity \
             WHERE id > ?1 AND at_ms >= ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = st.query_map(params![after_id, since_ms, limit as i64], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest `limit` rows newer than `since_ms`, oldest first.
    pub fn activity_last(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<ActivityRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at_ms, kind, path, bytes, duration_ms, detail FROM activity \
             WHERE at_ms >= ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let mut rows: Vec<ActivityRow> = st
            .query_map(params![since_ms, limit as i64], row)?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// The id of the newest row (0 when the log is empty).
    pub fn activity_head(&self) -> StoreResult<i64> {
        Ok(self
            .conn
            .query_row("SELECT max(id) FROM activity", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()?
            .flatten()
            .unwrap_or(0))
    }

    /// The durations of the last `n` uploads (close to landing), newest first.
    pub fn recent_upload_times(&self, n: usize) -> StoreResult<Vec<i64>> {
        let mut st = self.conn.prepare_cached(
            "SELECT duration_ms FROM activity WHERE kind = 'upload' AND duration_ms IS NOT NULL \
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([n as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Drops the history of conflicts settled before `before_ms`; answers how many went.
    pub fn forget_settled_conflicts(&self, before_ms: i64) -> StoreResult<usize> {
        Ok(self.conn.execute(
            "DELETE FROM conflicts WHERE resolved_ms IS NOT NULL AND resolved_ms < ?1",
            [before_ms],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn events_are_kept_counted_and_bounded() {
        let (_d, s) = store();
        s.write(|db| {
            db.record(
                &Event::new(EventKind::Upload)
                    .path("a")
                    .bytes(10)
                    .duration_ms(5),
            )?;
            db.record(&Event::new(EventKind::Upload).path("b").bytes(20))?;
            db.record(&Event::new(EventKind::Retry).path("b").detail("timeout"))
        })
        .unwrap();
        let stats = s.read(|db| db.stats()).unwrap();
        assert_eq!(stats.get("upload"), Some(&2));
        assert_eq!(stats.get("upload.bytes"), Some(&30));
        assert_eq!(stats.get("retry"), Some(&1));
        let rows = s.read(|db| db.activity_after(0, 0, 10)).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ["upload", "upload", "retry"]
        );
        assert_eq!(rows[0].bytes, Some(10));
        assert_eq!(rows[2].detail.as_deref(), Some("timeout"));
        assert_eq!(s.read(|db| db.recent_upload_times(10)).unwrap(), [5]);
        let last = s.read(|db| db.activity_last(0, 2)).unwrap();
        assert_eq!(last[0].path.as_deref(), Some("b"));
        assert_eq!(last.len(), 2);

        // Past the bound the oldest rows go; the counters keep counting.
        s.write(|db| {
            for _ in 0..ACTIVITY_KEPT + 200 {
                db.record(&Event::new(EventKind::Download).bytes(1))?;
            }
            Ok::<_, super::super::StoreError>(())
        })
        .unwrap();
        let n: i64 = s
            .read(|db| Ok::<_, super::super::StoreError>(db.activity_last(0, usize::MAX >> 1)?.len() as i64))
            .unwrap();
        assert!(n <= ACTIVITY_KEPT + 64, "{n} rows kept");
        assert!(n >= ACTIVITY_KEPT, "{n} rows kept");
        let stats = s.read(|db| db.stats()).unwrap();
        assert_eq!(stats.get("download"), Some(&(ACTIVITY_KEPT + 200)));
    }
}
