//! The `conflicts` table: each conflict found, both of its versions, and how it was settled.

use rusqlite::{params, OptionalExtension, Row};

use super::activity::{Event, EventKind};
use super::entries::dirty;
use super::{now_ms, Db, StoreResult};
use crate::types::{EntryId, VersionMark};

/// One conflict: one version at `path`, the other at `copy_path` beside it, both synced.
/// `local_*`/`remote_*` are the version this mount wrote and the other one (kept for the JSON
/// that scripts read); `at_path`/`in_copy` say where each version sits and who wrote it. The
/// row as the database keeps it; what the CLI reads is `control::ConflictInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    pub at_path: VersionMark,
    pub in_copy: VersionMark,
    /// Which version this mount wrote: `path`, `copy`, or neither.
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

impl Db<'_> {
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
        let id = self.conn.last_insert_rowid();
        self.record(
            &Event::new(EventKind::Conflict)
                .path(c.path.clone())
                .bytes(c.local_size.max(c.remote_size))
                .detail(format!("the other version is in {}", c.copy_path)),
        )?;
        Ok(id)
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
        let path: Option<String> = self
            .conn
            .query_row("SELECT path FROM conflicts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let mut e = Event::new(EventKind::Settled).detail(format!("kept {resolution}"));
        e.path = path;
        self.record(&e)
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
}
