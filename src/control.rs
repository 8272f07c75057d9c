//! The control protocol: `user.stratus.*` extended attributes that a running mount answers.
//!
//! The CLI reaches a mount only through these, so a shell with `getfattr`/`setfattr` can do
//! everything the CLI does.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::store::{Conflict, JobKind, JobState};
use crate::types::{EntryId, Keep, VersionMark};
use crate::vfs::{Vfs, VfsError, VfsResult};

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
/// On the root: every conflict, open and resolved, as a JSON array.
pub const CONFLICTS: &str = "user.stratus.conflicts";
/// On the root: `STARTED DONE`, how many polls of the remote have started and completed.
pub const POLLS: &str = "user.stratus.polls";

/// Key in the state dir's `meta` table holding the precondition check's answer.
pub const PRECONDITIONS_META: &str = "preconditions";

/// The one line a user sees (mount output, log, `stratus status`) when the server ignores
/// preconditions.
pub const PRECONDITIONS_IGNORED: &str = "preconditions: ignored by this server: conflicting \
    writes elsewhere can overwrite each other (each write compares with a HEAD first, best effort)";

/// What `stratus status` prints, as the mount reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub remote: String,
    pub reachable: bool,
    pub queued_entries: u64,
    pub queued_bytes: u64,
    pub waiting_for_writer: u64,
    pub uploading: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub offline: bool,
    pub open_conflicts: u64,
    pub cache_used: u64,
    pub cache_budget: u64,
    pub cache_pinned: u64,
    pub cache_dirty: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub downloaded: u64,
    /// `enforced`, `ignored` or `not checked yet` for a cloud remote (see
    /// `daemon::check_preconditions`); `None` for a local folder.
    pub preconditions: Option<String>,
}

impl Status {
    pub fn encode(&self) -> String {
        let mut s = format!(
            "pid: {}\nremote: {}\nreachable: {}\nqueued_entries: {}\nqueued_bytes: {}\n\
             waiting_for_writer: {}\nuploading: {}\nerrors: {}\n",
            self.pid,
            self.remote,
            if self.reachable { "yes" } else { "no" },
            self.queued_entries,
            self.queued_bytes,
            self.waiting_for_writer,
            self.uploading,
            self.errors
        );
        s.push_str(&format!(
            "offline: {}\nopen_conflicts: {}\ncache_used: {}\ncache_budget: {}\n\
             cache_pinned: {}\ncache_dirty: {}\ncache_hits: {}\ncache_misses: {}\ndownloaded: {}\n",
            if self.offline { "yes" } else { "no" },
            self.open_conflicts,
            self.cache_used,
            self.cache_budget,
            self.cache_pinned,
            self.cache_dirty,
            self.cache_hits,
            self.cache_misses,
            self.downloaded
        ));
        if let Some(p) = &self.preconditions {
            s.push_str(&format!("preconditions: {p}\n"));
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!("last_error: {}\n", e.replace('\n', " ")));
        }
        s
    }

    pub fn decode(s: &str) -> Status {
        let mut st = Status::default();
        for line in s.lines() {
            let Some((k, v)) = line.split_once(": ") else {
                continue;
            };
            match k {
                "pid" => st.pid = v.parse().unwrap_or(0),
                "remote" => st.remote = v.to_string(),
                "reachable" => st.reachable = v == "yes",
                "queued_entries" => st.queued_entries = v.parse().unwrap_or(0),
                "queued_bytes" => st.queued_bytes = v.parse().unwrap_or(0),
                "waiting_for_writer" => st.waiting_for_writer = v.parse().unwrap_or(0),
                "uploading" => st.uploading = v.parse().unwrap_or(0),
                "errors" => st.errors = v.parse().unwrap_or(0),
                "offline" => st.offline = v == "yes",
                "open_conflicts" => st.open_conflicts = v.parse().unwrap_or(0),
                "cache_used" => st.cache_used = v.parse().unwrap_or(0),
                "cache_budget" => st.cache_budget = v.parse().unwrap_or(0),
                "cache_pinned" => st.cache_pinned = v.parse().unwrap_or(0),
                "cache_dirty" => st.cache_dirty = v.parse().unwrap_or(0),
                "cache_hits" => st.cache_hits = v.parse().unwrap_or(0),
                "cache_misses" => st.cache_misses = v.parse().unwrap_or(0),
                "downloaded" => st.downloaded = v.parse().unwrap_or(0),
                "last_error" => st.last_error = Some(v.to_string()),
                "preconditions" => st.preconditions = Some(v.to_string()),
                _ => {}
            }
        }
        st
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

/// Serves the control attributes of a mount.
pub struct Control {
    vfs: Arc<Vfs>,
    remote: String,
}

impl Control {
    pub fn new(vfs: Arc<Vfs>, remote: String) -> Control {
        Control { vfs, remote }
    }

    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    fn status(&self) -> VfsResult<Status> {
        let store = self.vfs.store();
        let q = store.read(|db| db.queue_stats())?;
        let last_error = store
            .health()
            .last_error()
            .map(|(_, m)| m)
            .or(q.last_error.clone());
        let open_conflicts = store
            .read(|db| db.conflicts())?
            .iter()
            .filter(|c| c.resolved_ms.is_none())
            .count() as u64;
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
        Ok(Status {
            preconditions,
            cache_used: cache.used,
            cache_budget: cache.budget,
            cache_pinned: cache.pinned,
            cache_dirty: cache.dirty,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            downloaded: store
                .health()
                .downloaded
                .load(std::sync::atomic::Ordering::Relaxed),
            offline: store.health().is_offline(),
            open_conflicts,
            pid: std::process::id(),
            remote: self.remote.clone(),
            reachable: store.health().is_reachable(),
            queued_entries: q.entries,
            queued_bytes: q.bytes,
            waiting_for_writer: q.held,
            uploading: q.uploading,
            errors: q.parked,
            last_error,
        })
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
            STATUS if root => Ok(self.status()?.encode().into_bytes()),
            OFFLINE if root => Ok(if self.vfs.store().health().is_offline() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            }),
            POLLS if root => {
                let h = self.vfs.store().health();
                let load =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                Ok(format!("{} {}", load(&h.polls_started), load(&h.polls)).into_bytes())
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
                store
                    .health()
                    .offline
                    .store(on, std::sync::atomic::Ordering::Relaxed);
                if !on {
                    store.write(|db| db.retry_now(crate::store::now_ms()))?;
                }
                store.kick();
                tracing::info!(offline = on, "offline mode changed");
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
            names.extend([STATUS, OFFLINE, CONFLICTS]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        let s = Status {
            pid: 42,
            remote: "s3://b/p".into(),
            reachable: false,
            queued_entries: 3,
            queued_bytes: 1 << 20,
            waiting_for_writer: 1,
            uploading: 1,
            errors: 2,
            last_error: Some("remote unavailable: connection\nrefused".into()),
            offline: true,
            open_conflicts: 3,
            cache_used: 5,
            cache_budget: 6,
            cache_pinned: 8,
            cache_dirty: 9,
            cache_hits: 10,
            cache_misses: 11,
            downloaded: 7,
            preconditions: Some("ignored".into()),
        };
        let back = Status::decode(&s.encode());
        assert_eq!(
            back.last_error.as_deref(),
            Some("remote unavailable: connection refused")
        );
        assert_eq!(
            Status {
                last_error: None,
                ..back
            },
            Status {
                last_error: None,
                ..s
            }
        );
    }

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
