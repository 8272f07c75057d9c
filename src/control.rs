//! The control protocol: `user.stratus.*` extended attributes that a running mount answers.
//!
//! The CLI reaches a mount only through these, so a shell with `getfattr`/`setfattr` can do
//! everything the CLI does.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

mod report;

pub use report::{
    BwLimitReport, ConflictCounts, ConflictInfo, Counters, HealthReport, LogEntry, Page,
    PassthroughReport, Pending, PendingJob, QueueEntry, QueueReport, Status, StorageReport, Totals,
    PENDING_SHOWN,
};

use crate::store::{JobKind, JobState};
use crate::types::{EntryId, Keep};
use crate::vfs::{Vfs, VfsError, VfsResult};

mod dashboard;
pub use dashboard::{Refusal, TreeEntry};
/// Per file: `synced`, `pending`, `uploading` or `error`.
pub const STATE: &str = "user.stratus.state";
/// On the root: the status report (`key: value` lines, see [`Status`]).
pub const STATUS: &str = "user.stratus.status";
/// Per file: `none`, `partial`, `full` or `pinned` (pinned and wholly here): how much of its
/// data is on this machine.
pub const CACHE: &str = "user.stratus.cache";
/// Per file or directory: `1` when pinned (kept on this machine, by itself or by a directory
/// above), `0` otherwise; set to `1` or `0` to pin or unpin.
pub const PIN: &str = "user.stratus.pin";
/// On the root, set: sync now (cut write-back delays and backoffs short).
pub const SYNC: &str = "user.stratus.sync";
/// On the root: the newest journal sequence number handed out so far.
pub const BARRIER: &str = "user.stratus.barrier";
/// On the root, `user.stratus.pending.N`: the jobs at or below N that have not finished.
pub const PENDING_PREFIX: &str = "user.stratus.pending.";
/// Per file, set to `path`, `copy`, `both`, `local` or `remote`: settles the open conflict the
/// file (the original or its `.conflict` copy) takes part in.
pub const RESOLVE: &str = "user.stratus.resolve";
/// Per file: the last conflict it took part in, open or settled, as JSON (ENODATA: none).
pub const CONFLICT: &str = "user.stratus.conflict";
/// On the root: `1` while offline (no network traffic at all), `0` otherwise; settable.
pub const OFFLINE: &str = "user.stratus.offline";
/// On the root: the bandwidth limit, `off`, `4M` or `4M:20M` (upload:download) as rclone
/// writes it; settable (`stratus bwlimit`).
pub const BWLIMIT: &str = "user.stratus.bwlimit";
/// On the root: every conflict, open and resolved, as a JSON array.
pub const CONFLICTS: &str = "user.stratus.conflicts";
/// On the root: `STARTED DONE`, how many polls of the remote have started and completed.
pub const POLLS: &str = "user.stratus.polls";
/// On the root, `user.stratus.queue.N`: a [`Page`] of [`QueueEntry`], the queued operations
/// after sequence number N in the order they run.
pub const QUEUE_PREFIX: &str = "user.stratus.queue.";
/// On the root, `user.stratus.log.N.SINCE`: a [`Page`] of [`LogEntry`], the activity log's
/// events after id N and not older than SINCE (ms since the epoch).
pub const LOG_PREFIX: &str = "user.stratus.log.";
/// On the root: the id of the newest event of the activity log (0: none).
pub const LOG_HEAD: &str = "user.stratus.loghead";
/// Set on the root to `all`, or on a file or directory to `1`: its parked operations (a
/// directory: everything below it too) go back in line now.
pub const RETRY: &str = "user.stratus.retry";
/// Set on the root to a time (ms since the epoch): the history of conflicts settled before
/// it is dropped (`stratus clean --conflicts`). Open conflicts are never touched.
pub const FORGET_SETTLED: &str = "user.stratus.forget-settled";
/// Set on the root to `1`: evict every clean, unpinned cached block now (`stratus clean
/// --cache`).
pub const EVICT: &str = "user.stratus.evict";
/// Per entry: why the last change asked through an attribute of it (`resolve`, `pin`,
/// `retry`) was refused (ENODATA: nothing refused).
pub const REFUSAL: &str = "user.stratus.refusal";

/// On the root: the URL of the mount's web dashboard, token included (ENODATA: the mount
/// was started without `--dashboard`).
pub const DASHBOARD: &str = "user.stratus.dashboard";

/// Key in the state dir's `meta` table holding the precondition check's answer.
pub const PRECONDITIONS_META: &str = "preconditions";

/// The one line a user sees (mount output, log, `stratus status`) when the server ignores
/// preconditions.
pub const PRECONDITIONS_IGNORED: &str = "preconditions: ignored by this server: conflicting \
    writes elsewhere can overwrite each other (each write compares with a HEAD first, best effort)";

/// Serves the control attributes of a mount.
pub struct Control {
    vfs: Arc<Vfs>,
    remote: String,
    /// The lifetime counters when this mount started, so status can show "since mount".
    at_mount: Counters,
    /// Why the last refused `setxattr` on an entry was refused, so the CLI can print the
    /// reason instead of "Invalid argument" (an attribute write carries back only an errno).
    refusals: std::sync::Mutex<std::collections::VecDeque<(EntryId, String)>>,
    /// The dashboard's URL with its token, once the daemon serves one.
    dashboard_url: std::sync::OnceLock<String>,
}

/// A status read asks the remote again when it has not answered for this long.
const CONTACT_FRESH_MS: i64 = 5_000;

/// How many refusal reasons are remembered.
const REFUSALS_KEPT: usize = 32;
/// The JSON of one page stays under this many bytes (an attribute value may hold 64 KiB).
const PAGE_BYTES: usize = 48 * 1024;
/// Rows read from the database for one page at most.
const PAGE_ROWS: usize = 200;

/// Builds a page of `rows` whose JSON fits [`PAGE_BYTES`]; `more` says whether the
/// database had rows past those read.
fn page<T: serde::Serialize>(
    rows: Vec<T>,
    key: impl Fn(&T) -> i64,
    more: bool,
) -> VfsResult<Vec<u8>> {
    let mut out = Page {
        rows: Vec::new(),
        next: None,
    };
    let mut size = 32;
    let total = rows.len();
    for (i, r) in rows.into_iter().enumerate() {
        let len = serde_json::to_vec(&r).map(|v| v.len()).unwrap_or(0) + 1;
        if size + len > PAGE_BYTES && !out.rows.is_empty() {
            out.next = out.rows.last().map(&key);
            break;
        }
        size += len;
        out.rows.push(r);
        if i + 1 == total && more {
            out.next = out.rows.last().map(&key);
        }
    }
    serde_json::to_vec(&out).map_err(|e| VfsError::Invalid(e.to_string()))
}

impl Control {
    pub fn new(vfs: Arc<Vfs>, remote: String) -> Control {
        let at_mount = vfs
            .store()
            .read(|db| db.stats())
            .map(|s| Counters::from_stats(&s))
            .unwrap_or_default();
        Control {
            vfs,
            remote,
            at_mount,
            refusals: Default::default(),
            dashboard_url: Default::default(),
        }
    }

    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// Remembers why a change asked through an attribute of `ino` was refused.
    fn refused(&self, ino: EntryId, e: &VfsError) {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|(i, _)| *i != ino);
        if r.len() >= REFUSALS_KEPT {
            r.pop_front();
        }
        let why = match e {
            VfsError::Invalid(m) => m.clone(),
            other => other.to_string(),
        };
        r.push_back((ino, why));
    }

    pub fn status(&self) -> VfsResult<Status> {
        let store = self.vfs.store();
        let h = self.vfs.remote().health();
        let (q, stats, times, conflicts) = store.read(|db| {
            Ok::<_, VfsError>((
                db.queue_stats()?,
                db.stats()?,
                db.recent_upload_times(1000)?,
                db.conflicts()?,
            ))
        })?;
        let open = conflicts.iter().filter(|c| c.resolved_ms.is_none()).count() as u64;
        let mut lifetime = Counters::from_stats(&stats);
        let mut since_mount = lifetime.since(&self.at_mount);
        // Fetched bytes are counted in memory as they arrive and added to the lifetime
        // figure at unmount.
        let fetched = h.downloaded();
        since_mount.downloaded_bytes = fetched;
        lifetime.downloaded_bytes += fetched;
        let cache = self.vfs.cache_figures()?;
        let preconditions = if self.remote.starts_with("file://") {
            None
        } else {
            let known = store.read(|db| db.meta_get(PRECONDITIONS_META))?;
            Some(
                match known
                    .as_deref()
                    .and_then(crate::remote::Preconditions::decode)
                {
                    Some(crate::remote::Preconditions::Enforced) => "enforced",
                    Some(crate::remote::Preconditions::Ignored { .. }) => "ignored",
                    None => "not checked yet",
                }
                .to_string(),
            )
        };
        // Someone is looking: a remote not heard from for a while is asked now (a poll), so
        // that one which stopped answering shows as unreachable within seconds (the watch on
        // unanswered requests, `remote::STALL_MS`), not at the next poll or an HTTP timeout.
        let heard = h
            .last_ok()
            .is_some_and(|t| crate::store::now_ms() - t < CONTACT_FRESH_MS);
        if !h.is_offline() && h.is_reachable() && !heard && !h.waiting() {
            store.kick();
        }
        let (state, since_ms) = if h.is_offline() {
            ("offline", h.offline_since())
        } else if !h.is_reachable() {
            ("unreachable", h.unreachable_since())
        } else {
            ("online", None)
        };
        let (last_error_ms, last_error) = match h.last_error() {
            Some((t, m)) => (Some(t), Some(m)),
            None => (None, q.last_error.clone()),
        };
        let (sync_time_avg_ms, sync_time_p95_ms) = if times.is_empty() {
            (None, None)
        } else {
            let mut sorted = times.clone();
            sorted.sort_unstable();
            let p95 = sorted[((sorted.len() * 95).div_ceil(100)).saturating_sub(1)];
            (
                Some(times.iter().sum::<i64>() / times.len() as i64),
                Some(p95),
            )
        };
        let usage = h.remote_usage();
        let progress = h.upload_progress();
        let (upload_rate, download_rate) = h.rates();
        Ok(Status {
            pid: std::process::id(),
            remote: self.remote.clone(),
            health: HealthReport {
                state: state.to_string(),
                since_ms,
                last_error,
                last_error_ms,
                last_contact_ms: h.last_ok(),
                last_poll_ms: h.last_poll(),
                last_full_sync_ms: stats
                    .get(crate::store::LAST_FULL_SYNC)
                    .copied()
                    .filter(|_| q.entries == 0),
                upload_rate,
                download_rate,
            },
            queue: QueueReport {
                entries: q.entries,
                bytes: q.bytes,
                uploading: q.uploading,
                uploading_bytes: q.uploading_bytes,
                uploading_path: progress.as_ref().map(|p| p.0.clone()),
                uploading_done: progress.as_ref().map(|p| p.1).unwrap_or(0),
                waiting_for_writer: q.held,
                parked: q.parked,
                oldest_ms: q.oldest_ms,
            },
            totals: Totals {
                success_rate: since_mount.success_rate(),
                since_mount,
                lifetime,
                sync_time_avg_ms,
                sync_time_p95_ms,
            },
            storage: StorageReport {
                cache_used: cache.used,
                cache_budget: cache.budget,
                pinned: cache.pinned,
                dirty: cache.dirty,
                cache_hits: cache.hits,
                cache_misses: cache.misses,
                used: self.vfs.used_bytes()?,
                quota: self.vfs.quota(),
                remote_objects: usage.map(|u| u.0),
                remote_bytes: usage.map(|u| u.1),
            },
            conflicts: ConflictCounts {
                open,
                settled: conflicts.len() as u64 - open,
            },
            preconditions,
            bwlimit: BwLimitReport::of(self.vfs.remote().bwlimit()),
            passthrough: {
                let p = self.vfs.passthrough_report();
                PassthroughReport {
                    state: if p.on { "on" } else { "off" }.into(),
                    reason: p.reason,
                    opens: p.opens,
                    fuse_reads: p.reads,
                    fuse_writes: p.writes,
                }
            },
        })
    }

    /// A page of the queue: operations after `after_seq`, in the order they run.
    fn queue(&self, after_seq: i64) -> VfsResult<Vec<u8>> {
        let now = crate::store::now_ms();
        let rows = self
            .vfs
            .store()
            .read(|db| db.queue_rows(after_seq, PAGE_ROWS + 1))?;
        let more = rows.len() > PAGE_ROWS;
        let rows: Vec<QueueEntry> = rows
            .into_iter()
            .take(PAGE_ROWS)
            .map(|r| {
                let state = match (r.state, r.ready_at_ms) {
                    ("uploading", _) => "uploading",
                    ("parked", _) => "parked",
                    (_, None) => "waiting-for-writer",
                    (_, Some(_)) if r.attempts > 0 => "retrying",
                    (_, Some(t)) if t > now => "waiting",
                    _ => "queued",
                };
                QueueEntry {
                    seq: r.seq,
                    op: r.op.to_string(),
                    path: r.path,
                    bytes: r.bytes,
                    state: state.to_string(),
                    tries: r.attempts,
                    next_try_ms: r.ready_at_ms.filter(|t| *t > now),
                    last_error: r
                        .last_error
                        .map(|e| e.chars().take(300).collect::<String>()),
                    queued_ms: r.queued_ms,
                }
            })
            .collect();
        page(rows, |r| r.seq, more)
    }

    /// A page of the activity log: events after `after_id` and not older than `since_ms`.
    fn log(&self, after_id: i64, since_ms: i64) -> VfsResult<Vec<u8>> {
        let rows = self
            .vfs
            .store()
            .read(|db| db.activity_after(after_id, since_ms, PAGE_ROWS + 1))?;
        let more = rows.len() > PAGE_ROWS;
        let rows: Vec<LogEntry> = rows
            .into_iter()
            .take(PAGE_ROWS)
            .map(LogEntry::from)
            .collect();
        page(rows, |r| r.id, more)
    }

    fn pending(&self, barrier: i64) -> VfsResult<Pending> {
        let store = self.vfs.store();
        store.read(|db| {
            let mut out = Pending {
                conflicts: db
                    .conflicts()?
                    .iter()
                    .filter(|c| c.resolved_ms.is_none())
                    .count() as u64,
                ..Default::default()
            };
            for j in db.pending_up_to(barrier)? {
                out.total += 1;
                if j.state == JobState::Parked {
                    out.errors += 1;
                }
                if out.oldest.len() >= PENDING_SHOWN {
                    continue;
                }
                let path = match &j.kind {
                    JobKind::Sync(id) => db
                        .path_of(*id)?
                        .map(|p| String::from_utf8_lossy(&p).into_owned())
                        .unwrap_or_else(|| format!("(unlinked entry {})", id.0)),
                    JobKind::Delete { key, .. } => format!("(delete) {key}"),
                };
                out.oldest.push(PendingJob {
                    seq: j.seq,
                    state: match j.state {
                        JobState::Queued => "pending",
                        JobState::Uploading => "uploading",
                        JobState::Parked => "error",
                    }
                    .to_string(),
                    path,
                    error: j.last_error,
                });
            }
            Ok(out)
        })
    }

    pub fn getxattr(&self, ino: EntryId, name: &[u8]) -> VfsResult<Vec<u8>> {
        let name = std::str::from_utf8(name).map_err(|_| VfsError::NoAttr)?;
        let root = ino == EntryId::ROOT;
        match name {
            STATE => Ok(self.vfs.sync_state(ino)?.as_str().as_bytes().to_vec()),
            CACHE => Ok(self.vfs.cache_state(ino)?.as_bytes().to_vec()),
            PIN => Ok(if self.vfs.pinned(ino)? {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            }),
            STATUS if root => {
                serde_json::to_vec(&self.status()?).map_err(|e| VfsError::Invalid(e.to_string()))
            }
            LOG_HEAD if root => Ok(self
                .vfs
                .store()
                .read(|db| db.activity_head())?
                .to_string()
                .into_bytes()),
            n if root && n.starts_with(QUEUE_PREFIX) => {
                let after: i64 = n[QUEUE_PREFIX.len()..]
                    .parse()
                    .map_err(|_| VfsError::NoAttr)?;
                self.queue(after)
            }
            n if root && n.starts_with(LOG_PREFIX) => {
                let (after, since) = n[LOG_PREFIX.len()..]
                    .split_once('.')
                    .ok_or(VfsError::NoAttr)?;
                let after: i64 = after.parse().map_err(|_| VfsError::NoAttr)?;
                let since: i64 = since.parse().map_err(|_| VfsError::NoAttr)?;
                self.log(after, since)
            }
            REFUSAL => {
                let r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
                match r.iter().rev().find(|(i, _)| *i == ino) {
                    Some((_, why)) => Ok(why.clone().into_bytes()),
                    None => Err(VfsError::NoAttr),
                }
            }
            DASHBOARD if root => self
                .dashboard_url
                .get()
                .map(|u| u.clone().into_bytes())
                .ok_or(VfsError::NoAttr),
            BWLIMIT if root => Ok(self.vfs.remote().bwlimit().to_string().into_bytes()),
            OFFLINE if root => Ok(if self.vfs.remote().health().is_offline() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            }),
            POLLS if root => {
                let (started, done) = self.vfs.remote().health().polls();
                Ok(format!("{started} {done}").into_bytes())
            }
            CONFLICTS if root => {
                let all = self.vfs.store().read(|db| db.conflicts())?;
                let all: Vec<ConflictInfo> = all.iter().map(ConflictInfo::from).collect();
                Ok(serde_json::to_vec(&all).unwrap_or_default())
            }
            CONFLICT if !root => match self.vfs.last_conflict(ino)? {
                Some(c) => Ok(serde_json::to_vec(&ConflictInfo::from(&c)).unwrap_or_default()),
                None => Err(VfsError::NoAttr),
            },
            BARRIER if root => {
                let b = self.vfs.store().read(|db| db.journal_barrier())?;
                Ok(b.to_string().into_bytes())
            }
            n if root && n.starts_with(PENDING_PREFIX) => {
                let barrier: i64 = n[PENDING_PREFIX.len()..]
                    .parse()
                    .map_err(|_| VfsError::NoAttr)?;
                Ok(self.pending(barrier)?.encode().into_bytes())
            }
            _ => {
                // Makes sure the entry exists, so a stale inode answers ENOENT, not ENODATA.
                self.vfs.getattr(ino)?;
                Err(VfsError::NoAttr)
            }
        }
    }

    pub fn setxattr(&self, ino: EntryId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        let r = self.set(ino, name, value);
        if let Err(e) = &r {
            if !matches!(e, VfsError::NotSupported(_) | VfsError::NotFound) {
                self.refused(ino, e);
            }
        }
        r
    }

    fn set(&self, ino: EntryId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        let name = std::str::from_utf8(name).unwrap_or("");
        let value = String::from_utf8_lossy(value);
        match name {
            RESOLVE => {
                let keep = Keep::parse(&value).ok_or_else(|| {
                    VfsError::Invalid(format!(
                        "{RESOLVE}: expected path, copy, both, local or remote, not {value:?}"
                    ))
                })?;
                self.vfs.resolve(ino, keep)
            }
            PIN => {
                let on = match value.trim() {
                    "1" => true,
                    "0" => false,
                    v => {
                        return Err(VfsError::Invalid(format!(
                            "{PIN}: expected 1 or 0, not {v:?}"
                        )))
                    }
                };
                self.vfs.set_pinned(ino, on)
            }
            BWLIMIT if ino == EntryId::ROOT => {
                let limits = crate::remote::Limits::parse(&value)
                    .map_err(|e| VfsError::Invalid(format!("{BWLIMIT}: {e}")))?;
                self.vfs.remote().set_bwlimit(limits);
                tracing::info!(bwlimit = %limits, "bandwidth limit changed");
                Ok(())
            }
            OFFLINE if ino == EntryId::ROOT => {
                let on = match value.trim() {
                    "1" | "on" | "true" => true,
                    "0" | "off" | "false" => false,
                    v => {
                        return Err(VfsError::Invalid(format!(
                            "{OFFLINE}: expected 1 or 0, not {v:?}"
                        )))
                    }
                };
                let store = self.vfs.store();
                let changed = self.vfs.remote().health().set_offline(on);
                store.write(|db| {
                    if !on {
                        db.retry_now(crate::store::now_ms())?;
                    }
                    if changed {
                        db.record(&crate::store::Event::new(if on {
                            crate::store::EventKind::Offline
                        } else {
                            crate::store::EventKind::Online
                        }))?;
                    }
                    Ok::<_, VfsError>(())
                })?;
                store.kick();
                tracing::info!(offline = on, "offline mode changed");
                Ok(())
            }
            RETRY => {
                let all = ino == EntryId::ROOT && value.trim() == "all";
                if !all && value.trim() != "1" {
                    return Err(VfsError::Invalid(format!(
                        "{RETRY}: expected 1 (or all, on the mount's root), not {value:?}"
                    )));
                }
                self.vfs.getattr(ino)?;
                let now = crate::store::now_ms();
                let n = self.vfs.store().write(|db| {
                    if all {
                        return Ok::<_, VfsError>(db.retry_parked(None, now)?);
                    }
                    let mut ids = vec![ino];
                    ids.extend(db.descendants(ino)?.iter().map(|e| e.id));
                    let mut n = 0;
                    for id in ids {
                        if let Some(j) = db.job_for(id)? {
                            n += db.retry_parked(Some(j.seq), now)?;
                        }
                    }
                    Ok(n)
                })?;
                if n == 0 {
                    return Err(VfsError::Invalid(
                        "nothing parked there: only failed operations are retried".into(),
                    ));
                }
                self.vfs.store().kick();
                tracing::info!(operations = n, "retry of parked operations requested");
                Ok(())
            }
            EVICT if ino == EntryId::ROOT => {
                self.vfs.evict_clean();
                tracing::info!("clean cached data evicted on request");
                Ok(())
            }
            FORGET_SETTLED if ino == EntryId::ROOT => {
                let before: i64 = value.trim().parse().map_err(|_| {
                    VfsError::Invalid(format!(
                        "{FORGET_SETTLED}: expected a time in ms, not {value:?}"
                    ))
                })?;
                let n = self
                    .vfs
                    .store()
                    .write(|db| db.forget_settled_conflicts(before))?;
                tracing::info!(conflicts = n, "settled conflict history dropped");
                Ok(())
            }
            SYNC if ino == EntryId::ROOT => {
                let store = self.vfs.store();
                store.write(|db| db.retry_now(crate::store::now_ms()))?;
                store.kick();
                tracing::info!("sync requested");
                Ok(())
            }
            _ => {
                self.vfs.getattr(ino)?;
                tracing::warn!(
                    name,
                    "extended attributes are not stored; answering ENOTSUP"
                );
                Err(VfsError::NotSupported("extended attributes"))
            }
        }
    }

    pub fn listxattr(&self, ino: EntryId) -> VfsResult<Vec<u8>> {
        self.vfs.getattr(ino)?;
        let mut names = vec![STATE, CACHE, PIN];
        if ino == EntryId::ROOT {
            names.extend([STATUS, OFFLINE, BWLIMIT, CONFLICTS]);
        }
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}

/// Client side: reads an attribute of a path on a mount.
pub fn get(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: NUL-terminated strings and a buffer whose length is passed.
    let r = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Client side: sets an attribute of a path on a mount.
pub fn set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: NUL-terminated strings and a buffer whose length is passed.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
