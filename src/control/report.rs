//! The JSON the control attributes answer and the CLI prints (`--json`, `docs/json.md`):
//! the status, the queue, the activity log, conflicts, and the pending list `sync --wait`
//! reads. Defined apart from the database's rows, which may change without changing these.

use crate::store::Conflict;
use crate::types::VersionMark;

/// A conflict as `user.stratus.conflicts` (all of them) and `user.stratus.conflict` (a file's
/// last one) carry it, and as `stratus conflicts --json` prints it for scripts: the
/// database's row (`store::Conflict`) may change without changing this.
/// `local_*`/`remote_*` are the version this mount wrote and the other one; `at_path` and
/// `in_copy` say where each version sits and who wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConflictInfo {
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

impl From<&Conflict> for ConflictInfo {
    fn from(c: &Conflict) -> ConflictInfo {
        // Destructured, so that a new column cannot be forgotten here.
        let Conflict {
            id,
            entry_id,
            copy_id,
            path,
            copy_path,
            local_size,
            local_mtime_ns,
            local_etag,
            remote_size,
            remote_mtime_ns,
            remote_etag,
            remote_version,
            detected_ms,
            policy,
            resolved_ms,
            resolution,
            at_path,
            in_copy,
            mine,
        } = c.clone();
        ConflictInfo {
            id,
            entry_id,
            copy_id,
            path,
            copy_path,
            local_size,
            local_mtime_ns,
            local_etag,
            remote_size,
            remote_mtime_ns,
            remote_etag,
            remote_version,
            detected_ms,
            policy,
            resolved_ms,
            resolution,
            at_path,
            in_copy,
            mine,
        }
    }
}

/// What `stratus status` prints, as the mount reports it: one struct that the CLI, the
/// `user.stratus.status` attribute (its JSON) and the dashboard all read. Times are
/// milliseconds since the epoch. `docs/json.md` documents it; fields are only ever added.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Status {
    pub pid: u32,
    pub remote: String,
    pub health: HealthReport,
    pub queue: QueueReport,
    pub totals: Totals,
    pub storage: StorageReport,
    pub conflicts: ConflictCounts,
    /// `enforced`, `ignored` or `not checked yet` for a cloud remote (see
    /// `daemon::check_preconditions`); `None` for a local folder.
    pub preconditions: Option<String>,
    pub bwlimit: BwLimitReport,
    pub passthrough: PassthroughReport,
}

/// FUSE passthrough: whether cached files are opened so that the kernel reads and writes
/// their data files directly, and what reached the daemon anyway.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PassthroughReport {
    /// `on` or `off`.
    pub state: String,
    /// Why it is off: the mount option, the kernel, or a refusal.
    pub reason: Option<String>,
    /// Files opened in passthrough mode since the mount.
    pub opens: u64,
    /// Read and write requests that reached the daemon since the mount (none come for a
    /// file open in passthrough mode).
    pub fuse_reads: u64,
    pub fuse_writes: u64,
}

/// The bandwidth limit in force (`--bwlimit`, `stratus bwlimit`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BwLimitReport {
    /// Bytes a second; `None`: no limit.
    pub upload: Option<u64>,
    pub download: Option<u64>,
    /// As `--bwlimit` takes it: `off`, `4M`, `4M:20M`.
    pub text: String,
}

impl BwLimitReport {
    pub fn of(l: crate::remote::Limits) -> BwLimitReport {
        let bps = |r: crate::remote::Rate| (!r.is_off()).then_some(r.0);
        BwLimitReport {
            upload: bps(l.up),
            download: bps(l.down),
            text: l.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HealthReport {
    /// `online`, `offline` (by the user) or `unreachable`.
    pub state: String,
    /// Since when the state holds (offline or unreachable).
    pub since_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// The last time the remote answered.
    pub last_contact_ms: Option<i64>,
    /// The last completed listing of the remote.
    pub last_poll_ms: Option<i64>,
    /// The last time everything queued had reached the remote.
    pub last_full_sync_ms: Option<i64>,
    /// Bytes a second the server took (upload) and sent (download), averaged over the last
    /// five seconds (`remote::RATE_WINDOW_MS`).
    pub upload_rate: u64,
    pub download_rate: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct QueueReport {
    pub entries: u64,
    /// Bytes of file content waiting to go up.
    pub bytes: u64,
    pub uploading: u64,
    /// Bytes of the files being uploaded now.
    pub uploading_bytes: u64,
    /// The upload in progress: its path, and the bytes of it the server has taken so far
    /// (a large file's parts as each is answered; a small file's at its end).
    pub uploading_path: Option<String>,
    pub uploading_done: u64,
    /// Still open by a writer (they go once closed or fsync'd).
    pub waiting_for_writer: u64,
    /// Failed for good; waiting for the user (`stratus queue --retry`).
    pub parked: u64,
    /// When the oldest queued operation was queued.
    pub oldest_ms: Option<i64>,
}

/// Counts of what the sync did, per kind of event (see `store::EventKind`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub downloaded_files: u64,
    pub downloaded_bytes: u64,
    pub deleted: u64,
    pub moved: u64,
    pub remote_changes: u64,
    pub conflicts_opened: u64,
    pub conflicts_settled: u64,
    /// Operations that failed for good (parked).
    pub failed: u64,
    /// Failed attempts that were tried again.
    pub retried: u64,
}

impl Counters {
    /// From the `stats` table's counters.
    pub fn from_stats(s: &std::collections::HashMap<String, i64>) -> Counters {
        use crate::store::EventKind as K;
        let get = |k: K, bytes: bool| {
            let name = crate::store::counter(k, bytes);
            s.get(&name).copied().unwrap_or(0).max(0) as u64
        };
        Counters {
            uploaded_files: get(K::Upload, false),
            uploaded_bytes: get(K::Upload, true),
            downloaded_files: get(K::Download, false),
            downloaded_bytes: get(K::Download, true),
            deleted: get(K::Delete, false),
            moved: get(K::Move, false),
            remote_changes: get(K::RemoteChange, false) + get(K::RemoteDelete, false),
            conflicts_opened: get(K::Conflict, false),
            conflicts_settled: get(K::Settled, false),
            failed: get(K::Error, false),
            retried: get(K::Retry, false),
        }
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            uploaded_files: self.uploaded_files.saturating_sub(earlier.uploaded_files),
            uploaded_bytes: self.uploaded_bytes.saturating_sub(earlier.uploaded_bytes),
            downloaded_files: self
                .downloaded_files
                .saturating_sub(earlier.downloaded_files),
            downloaded_bytes: self
                .downloaded_bytes
                .saturating_sub(earlier.downloaded_bytes),
            deleted: self.deleted.saturating_sub(earlier.deleted),
            moved: self.moved.saturating_sub(earlier.moved),
            remote_changes: self.remote_changes.saturating_sub(earlier.remote_changes),
            conflicts_opened: self
                .conflicts_opened
                .saturating_sub(earlier.conflicts_opened),
            conflicts_settled: self
                .conflicts_settled
                .saturating_sub(earlier.conflicts_settled),
            failed: self.failed.saturating_sub(earlier.failed),
            retried: self.retried.saturating_sub(earlier.retried),
        }
    }

    /// Operations that reached the remote over all that were tried (successes and failed
    /// attempts); `None` before anything was tried.
    pub fn success_rate(&self) -> Option<f64> {
        let ok = self.uploaded_files + self.deleted + self.moved;
        let bad = self.failed + self.retried;
        (ok + bad > 0).then(|| ok as f64 / (ok + bad) as f64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Totals {
    pub since_mount: Counters,
    /// Over the life of the state dir.
    pub lifetime: Counters,
    /// Since the mount, as a fraction (0 to 1).
    pub success_rate: Option<f64>,
    /// From a file's close (or last change) to its upload landing, over the last uploads.
    pub sync_time_avg_ms: Option<i64>,
    pub sync_time_p95_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StorageReport {
    pub cache_used: u64,
    pub cache_budget: u64,
    pub pinned: u64,
    /// Written here and not yet uploaded.
    pub dirty: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes of every file in the mount, and the user's quota (`--quota`) if set.
    pub used: u64,
    pub quota: Option<u64>,
    /// Objects and bytes under the mount's prefix at the last full listing.
    pub remote_objects: Option<u64>,
    pub remote_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ConflictCounts {
    pub open: u64,
    pub settled: u64,
}

/// One queued operation, as `user.stratus.queue.N` and `stratus queue --json` give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct QueueEntry {
    pub seq: i64,
    /// `upload`, `mkdir`, `symlink`, `mknod` (a fifo, socket or device node), `move`, `metadata` or `delete`.
    pub op: String,
    pub path: String,
    pub bytes: u64,
    /// `waiting-for-writer`, `waiting` (write-back delay), `queued`, `uploading`, `retrying`
    /// or `parked`.
    pub state: String,
    pub tries: i64,
    /// When it runs next (a retry's next try, the end of the write-back delay).
    pub next_try_ms: Option<i64>,
    pub last_error: Option<String>,
    pub queued_ms: Option<i64>,
}

/// A page of the queue or of the activity log: the rows, and where the next page starts
/// (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page<T> {
    pub rows: Vec<T>,
    #[serde(default)]
    pub next: Option<i64>,
}

/// One event of the activity log, as `user.stratus.log.N` and `stratus log --json` give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LogEntry {
    pub id: i64,
    pub at_ms: i64,
    /// See `store::EventKind`: `upload`, `download`, `delete`, `move`, `create`,
    /// `metadata`, `remote-change`, `remote-delete`, `conflict`, `settled`, `error`,
    /// `retry`, `offline`, `online`, `mount`, `unmount`.
    pub kind: String,
    pub path: Option<String>,
    pub bytes: Option<u64>,
    pub duration_ms: Option<i64>,
    pub detail: Option<String>,
}

impl From<crate::store::ActivityRow> for LogEntry {
    fn from(r: crate::store::ActivityRow) -> LogEntry {
        let crate::store::ActivityRow {
            id,
            at_ms,
            kind,
            path,
            bytes,
            duration_ms,
            detail,
        } = r;
        LogEntry {
            id,
            at_ms,
            kind,
            path,
            bytes,
            duration_ms,
            detail,
        }
    }
}

/// One unfinished job: `SEQ STATE PATH [ERROR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJob {
    pub seq: i64,
    pub state: String,
    pub path: String,
    pub error: Option<String>,
}

/// What `user.stratus.pending.N` answers: the counts of unfinished jobs at or below N, and
/// the oldest few of them (an attribute value must stay well under the kernel's 64 KiB).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    pub total: u64,
    /// Parked after a permanent failure.
    pub errors: u64,
    /// Open conflicts (informational: no job waits for them; both versions sync).
    pub conflicts: u64,
    pub oldest: Vec<PendingJob>,
}

/// How many jobs `user.stratus.pending.N` lists in full.
pub const PENDING_SHOWN: usize = 50;

impl Pending {
    pub fn encode(&self) -> String {
        let mut s = format!(
            "total\t{}\terrors\t{}\tconflicts\t{}\n",
            self.total, self.errors, self.conflicts
        );
        for j in &self.oldest {
            let clean = |t: &str| t.replace(['\t', '\n'], " ");
            s.push_str(&format!("{}\t{}\t{}", j.seq, j.state, clean(&j.path)));
            if let Some(e) = &j.error {
                let e: String = clean(e).chars().take(300).collect();
                s.push('\t');
                s.push_str(&e);
            }
            s.push('\n');
        }
        s
    }

    pub fn decode(s: &str) -> Pending {
        let mut lines = s.lines();
        let mut p = Pending::default();
        if let Some(head) = lines.next() {
            let f: Vec<&str> = head.split('\t').collect();
            if f.len() >= 6 {
                p.total = f[1].parse().unwrap_or(0);
                p.errors = f[3].parse().unwrap_or(0);
                p.conflicts = f[5].parse().unwrap_or(0);
            }
        }
        p.oldest = lines
            .filter_map(|l| {
                let mut it = l.split('\t');
                Some(PendingJob {
                    seq: it.next()?.parse().ok()?,
                    state: it.next()?.to_string(),
                    path: it.next()?.to_string(),
                    error: it.next().map(str::to_string),
                })
            })
            .collect();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_round_trip() {
        let p = Pending {
            total: 70,
            errors: 1,
            conflicts: 2,
            oldest: vec![
                PendingJob {
                    seq: 1,
                    state: "pending".into(),
                    path: "a\tb".into(),
                    error: None,
                },
                PendingJob {
                    seq: 7,
                    state: "error".into(),
                    path: "x".into(),
                    error: Some("403".into()),
                },
            ],
        };
        let back = Pending::decode(&p.encode());
        assert_eq!((back.total, back.errors, back.conflicts), (70, 1, 2));
        assert_eq!(back.oldest[0].path, "a b");
        assert_eq!(back.oldest[1], p.oldest[1]);
    }
}
