//! The queue as `stratus queue` shows it: the journal's unfinished jobs in the order they
//! run, each described as the operation it makes on the remote.

use rusqlite::params;

use super::journal::JobKind;
use super::{Db, StoreResult};
use crate::types::EntryId;

/// One queued operation as `stratus queue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub seq: i64,
    /// `upload`, `mkdir`, `symlink`, `mknod` (a fifo, socket or device node), `move`, `metadata` or `delete`.
    pub op: &'static str,
    pub path: String,
    /// Bytes the operation sends (an upload's file size).
    pub bytes: u64,
    /// `queued`, `uploading` or `parked`.
    pub state: &'static str,
    /// When it may run (ms); `None` while a writer still has the file open.
    pub ready_at_ms: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub queued_ms: Option<i64>,
}

/// Whether the remote key `key` is the object of the mount-relative `path` (the mount's prefix
/// ahead of it): if not, the entry was renamed and its job moves it.
fn key_names(key: &str, path: &str) -> bool {
    let key = key.trim_end_matches('/');
    key == path
        || key
            .strip_suffix(path)
            .is_some_and(|head| head.ends_with('/'))
}

impl Db<'_> {
    /// Unfinished jobs after `after_seq`, in the order they run (oldest first), at most
    /// `limit`.
    pub fn queue_rows(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<QueueRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT j.seq, j.entry_id, j.delete_key, j.state, j.ready_at_ms, \
             j.attempts, j.last_error, j.queued_ms, e.kind, e.dirty, e.size, e.synced_key \
             FROM journal j LEFT JOIN entries e ON e.id = j.entry_id \
             WHERE j.seq > ?1 ORDER BY j.seq LIMIT ?2",
        )?;
        #[allow(clippy::type_complexity)]
        let raw: Vec<(
            i64,
            Option<i64>,
            Option<String>,
            String,
            Option<i64>,
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<String>,
        )> = st
            .query_map(params![after_seq, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(raw.len());
        for (
            seq,
            entry,
            key,
            state,
            ready,
            attempts,
            err,
            queued,
            kind,
            dirty_bits,
            size,
            synced_key,
        ) in raw
        {
            let (op, path, bytes) = match (entry, key) {
                (Some(id), _) => {
                    let path = self.job_path(&JobKind::Sync(EntryId(id as u64)))?;
                    let content = dirty_bits.unwrap_or(0) & super::dirty::CONTENT != 0;
                    let op = match (kind, synced_key.as_deref()) {
                        (None, _) => "delete",
                        (Some(2), None) => "mkdir",
                        (Some(3), None) => "symlink",
                        (Some(4..=7), None) => "mknod",
                        (Some(1), k) if content || k.is_none() => "upload",
                        (_, Some(k)) if !key_names(k, &path) => "move",
                        _ => "metadata",
                    };
                    let bytes = if op == "upload" {
                        size.unwrap_or(0) as u64
                    } else {
                        0
                    };
                    (op, path, bytes)
                }
                (None, Some(k)) => ("delete", k.trim_end_matches('/').to_string(), 0),
                (None, None) => continue,
            };
            out.push(QueueRow {
                seq,
                op,
                path,
                bytes,
                state: match state.as_str() {
                    "uploading" => "uploading",
                    "parked" => "parked",
                    _ => "queued",
                },
                ready_at_ms: ready,
                attempts,
                last_error: err,
                queued_ms: queued,
            });
        }
        Ok(out)
    }
}
