//! The sync engine: fills a new state dir from the remote, drains the journal to it, and
//! brings remote changes in, keeping both versions where both sides changed.

mod conflict;
mod engine;
mod metadata;
mod poller;
pub mod reconcile;
mod uploader;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use engine::{Engine, USER_QUIET};
pub use metadata::MetaReader;
pub use poller::Poller;

use crate::cache::{FileCache, FileGate};
use crate::remote::{ObjectInfo, ObjectKind, Remote, RemoteError};
use crate::store::{now_ns, NewEntry, Store, StoreError, StoreResult, Synced};
use crate::types::{EntryId, Kind};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Local(String),
    /// The entry was deleted while we worked on it.
    #[error("entry deleted during sync")]
    Vanished,
    /// Another job has to run first (the reason says which); retried shortly, not an error
    /// of the remote.
    #[error("{0}")]
    Wait(String),
}

/// What the uploader, the poller and the conflict engine all work on. Each holds an `Arc` of
/// it; its fields are private to `sync`, so nothing outside reaches the parts through it.
struct Shared {
    store: Arc<Store>,
    cache: FileCache,
    /// The block cache's gate to data files: a clean file is handed over through it, and a
    /// closed file's data is replaced or deleted only under it.
    files: Arc<dyn FileGate>,
    remote: Arc<Remote>,
    cfg: SyncConfig,
    notices: Option<std::sync::mpsc::Sender<Invalidation>>,
}

impl Shared {
    /// Tells the kernel (through the FUSE adapter) that an entry changed under it.
    fn notify(&self, i: Invalidation) {
        if let Some(n) = &self.notices {
            let _ = n.send(i);
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Owner given to objects that carry no owner metadata.
    pub default_uid: u32,
    pub default_gid: u32,
    /// How often the remote is listed for changes; `None` turns polling off.
    pub poll_interval: Option<Duration>,
    pub policy: ConflictPolicy,
    /// Who we are in the `stratus_writer` metadata of what we upload (`host:mountpoint`), so
    /// that a conflict can say which mount wrote each version.
    pub writer: String,
    /// Quiet the user must leave before the next job runs (`USER_QUIET`); the in-process
    /// model test, which has no competing FUSE threads, sets zero.
    pub user_quiet: Duration,
}

/// What happens when both sides changed a file differently. Every policy keeps the other
/// version as a `.conflict` sibling, uploaded like any file, so every mount has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The version that reached the remote first keeps the path, the other goes beside it, and
    /// the conflict stays open until someone settles it.
    Manual,
    /// The later mtime keeps the path; settled at once.
    Newest,
    /// Our version keeps the path; settled at once.
    Local,
    /// The remote version keeps the path; settled at once.
    Remote,
}

impl ConflictPolicy {
    pub fn parse(s: &str) -> Option<ConflictPolicy> {
        match s {
            "manual" => Some(ConflictPolicy::Manual),
            "newest" => Some(ConflictPolicy::Newest),
            "local" => Some(ConflictPolicy::Local),
            "remote" => Some(ConflictPolicy::Remote),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Manual => "manual",
            ConflictPolicy::Newest => "newest",
            ConflictPolicy::Local => "local",
            ConflictPolicy::Remote => "remote",
        }
    }
}

pub use crate::types::Invalidation;

/// The base an entry gets when it takes (or matches) the remote object `o` at `key`.
pub(crate) fn base_of(key: &str, o: &ObjectInfo) -> Synced {
    Synced {
        key: Some(key.to_string()),
        etag: o.etag.clone(),
        version: o.version.clone(),
        hash: o.meta.sha256.clone(),
    }
}

/// Capped exponential backoff for transient failures: 0.5 s, 1 s, 2 s ... up to 60 s.
pub fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(0, 7) as u32;
    Duration::from_millis(500u64 << exp).min(Duration::from_secs(60))
}

/// Fills an empty state database with the remote tree (one transaction: a crash midway
/// leaves an empty database, and the next mount lists again). Objects for which `meta_read`
/// is false come from a listing alone: files and directory markers are marked unread and show
/// defaults (mode 0644 or 0755, the mount's owner, the listing's last-modified as mtime) until
/// the metadata reader (`sync/metadata.rs`) has HEADed them.
pub fn populate(
    store: &Store,
    objects: &[ObjectInfo],
    cfg: &SyncConfig,
    meta_read: impl Fn(&ObjectInfo) -> bool,
) -> StoreResult<usize> {
    store.write(|db| {
        db.insert_root(
            0o755,
            cfg.default_uid,
            cfg.default_gid,
            &Synced {
                key: Some(String::new()),
                ..Default::default()
            },
        )?;
        let mut ids: HashMap<&str, EntryId> = HashMap::new();
        // `.conflict` copies whose conflicts are recorded once their originals exist too.
        let mut marked = Vec::new();
        ids.insert("", EntryId::ROOT);
        let now = now_ns();
        let mut n = 0;
        // Sorted by key, so every parent comes before its children.
        for o in objects {
            let (parent_key, name) = o.key.rsplit_once('/').unwrap_or(("", &o.key));
            let Some(&parent) = ids.get(parent_key) else {
                tracing::warn!(key = %o.key, "skipping remote key whose parent is not a directory");
                continue;
            };
            let kind = entry_kind(o.kind);
            let default_mode = poller::default_mode(kind);
            let target = o.meta.symlink.clone().map(String::into_bytes);
            let has_object = kind != Kind::Dir || o.etag.is_some();
            let id = db.insert_quick(&NewEntry {
                parent,
                name: name.as_bytes().to_vec(),
                kind,
                mode: o.meta.mode.unwrap_or(default_mode),
                uid: o.meta.uid.unwrap_or(cfg.default_uid),
                gid: o.meta.gid.unwrap_or(cfg.default_gid),
                size: match kind {
                    Kind::File => o.size,
                    Kind::Symlink => target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
                    Kind::Dir | Kind::Special(_) => 0,
                },
                mtime_ns: o.meta.mtime_ns.or(o.last_modified_ns).unwrap_or(now),
                target,
                local: kind != Kind::File,
                synced: Synced {
                    key: has_object.then(|| o.key.clone()),
                    etag: o.etag.clone(),
                    version: o.version.clone(),
                    hash: o.meta.sha256.clone(),
                },
                dirty: 0,
                conflict_of: None,
                unread: has_object && !meta_read(o),
            })?;
            if kind == Kind::Dir {
                ids.insert(&o.key, id);
            }
            if let Some(group) = o.meta.link.as_deref().filter(|_| kind != Kind::Dir) {
                db.join_link_group(id, group, o.meta.sha256.as_deref())?;
            }
            if o.meta.conflict.is_some() {
                marked.push((id, o));
            }
            n += 1;
        }
        for (id, o) in marked {
            let copy = db.must_get(id)?;
            conflict::adopt_mark(db, &copy, &o.key, o, &cfg.writer)?;
        }
        db.meta_set("populated", "1")?;
        Ok(n)
    })
}

/// The kind of entry a remote object stands for.
fn entry_kind(k: ObjectKind) -> Kind {
    match k {
        ObjectKind::File => Kind::File,
        ObjectKind::Dir => Kind::Dir,
        ObjectKind::Symlink => Kind::Symlink,
        ObjectKind::Special(s) => Kind::Special(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(7), Duration::from_secs(60));
        assert_eq!(backoff(1000), Duration::from_secs(60));
        assert!((0..20).all(|a| backoff(a) <= backoff(a + 1)));
    }
}
