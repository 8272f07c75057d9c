//! Keeping both versions when both sides changed: `.conflict` siblings and the policies that
//! decide which version stays at the path.

use chrono::{DateTime, Utc};

use super::uploader::{SyncError, Uploader};
use super::{ConflictPolicy, Invalidation};
use crate::remote::ObjectInfo;
use crate::store::{
    now_ms, now_ns, Conflict, Db, Entry, EntryId, Keep, Kind, NewEntry, StoreError, Synced,
};

/// `STEM.conflict-YYYYMMDD-HHMMSS.EXT`, or `NAME.conflict-YYYYMMDD-HHMMSS` without an
/// extension; `n > 1` appends `-n` to the timestamp. Times are UTC. A leading dot does not
/// start an extension (`.bashrc` has none).
pub fn conflict_name(name: &[u8], at: DateTime<Utc>, n: u32) -> Vec<u8> {
    let stamp = at.format("%Y%m%d-%H%M%S").to_string();
    let suffix = if n > 1 {
        format!("conflict-{stamp}-{n}")
    } else {
        format!("conflict-{stamp}")
    };
    let split = name
        .iter()
        .rposition(|b| *b == b'.')
        .filter(|i| *i > 0 && *i + 1 < name.len());
    match split {
        Some(i) => {
            let mut out = name[..i].to_vec();
            out.push(b'.');
            out.extend_from_slice(suffix.as_bytes());
            out.extend_from_slice(&name[i..]);
            out
        }
        None => {
            let mut out = name.to_vec();
            out.push(b'.');
            out.extend_from_slice(suffix.as_bytes());
            out
        }
    }
}

/// A free `.conflict` name beside `e`.
fn free_name(db: &Db<'_>, parent: EntryId, name: &[u8]) -> Result<Vec<u8>, StoreError> {
    let at = Utc::now();
    for n in 1..1000 {
        let cand = conflict_name(name, at, n);
        if cand.len() <= crate::remote::NAME_MAX && db.lookup(parent, &cand)?.is_none() {
            return Ok(cand);
        }
    }
    // 999 conflicts of one file in one second: fall back to a name with the clock's nanos.
    let mut cand = name.to_vec();
    cand.extend_from_slice(format!(".conflict-{}", now_ns()).as_bytes());
    Ok(cand)
}

impl Uploader {
    /// Both sides changed `e` (at `key`) differently. The remote version `r` goes into a
    /// `.conflict` sibling (fetched now: the remote will be overwritten once this is
    /// settled), and the policy decides what stays at the path. No policy drops a version.
    pub(super) async fn conflict(
        &self,
        e: &Entry,
        key: &str,
        r: &ObjectInfo,
    ) -> Result<(), SyncError> {
        let policy = match self.cfg.policy {
            ConflictPolicy::Newest => {
                let remote_mtime = r.meta.mtime_ns.or(r.last_modified_ns).unwrap_or(0);
                if e.mtime_ns >= remote_mtime {
                    ConflictPolicy::Local
                } else {
                    ConflictPolicy::Remote
                }
            }
            p => p,
        };
        if policy == ConflictPolicy::Remote && self.store.is_busy(e.id) {
            // The local version would move to the copy under an open handle: wait for it.
            return Ok(());
        }
        let parent = e.parent.ok_or(SyncError::Vanished)?;
        let (copy, conflict) = self.store.write(|db| {
            let name = free_name(db, parent, &e.name)?;
            let holds_local = policy == ConflictPolicy::Remote;
            let copy = db.insert(&NewEntry {
                parent,
                name: name.clone(),
                kind: Kind::File,
                mode: if holds_local {
                    e.mode
                } else {
                    r.meta.mode.unwrap_or(e.mode)
                },
                uid: e.uid,
                gid: e.gid,
                size: if holds_local { e.size } else { r.size },
                mtime_ns: if holds_local {
                    e.mtime_ns
                } else {
                    r.meta
                        .mtime_ns
                        .or(r.last_modified_ns)
                        .unwrap_or_else(now_ns)
                },
                target: None,
                local: holds_local,
                synced: if holds_local {
                    Synced::default()
                } else {
                    super::base_of(key, r)
                },
                dirty: 0,
                conflict_of: Some(e.id),
            })?;
            let parent_path = db.path_of(parent)?.unwrap_or_default();
            let copy_path = if parent_path.is_empty() {
                String::from_utf8_lossy(&name).into_owned()
            } else {
                format!(
                    "{}/{}",
                    String::from_utf8_lossy(&parent_path),
                    String::from_utf8_lossy(&name)
                )
            };
            let c = Conflict {
                entry_id: e.id.0,
                copy_id: copy.id.0,
                path: key.to_string(),
                copy_path,
                local_size: e.size,
                local_mtime_ns: e.mtime_ns,
                local_etag: e.synced.etag.clone(),
                remote_size: r.size,
                remote_mtime_ns: r.meta.mtime_ns.or(r.last_modified_ns),
                remote_etag: r.etag.clone(),
                remote_version: r.version.clone(),
                detected_ms: now_ms(),
                policy: self.cfg.policy.as_str().to_string(),
                ..Default::default()
            };
            let id = db.insert_conflict(&c)?;
            Ok::<_, StoreError>((copy, Conflict { id, ..c }))
        })?;
        tracing::warn!(path = key, copy = %conflict.copy_path, policy = self.cfg.policy.as_str(), "conflict: both sides changed; keeping both versions");
        match policy {
            ConflictPolicy::Remote => {
                // The local version moves into the copy; the path takes the remote version.
                std::fs::rename(self.cache.path(e.id), self.cache.path(copy.id)).map_err(
                    |err| SyncError::Local(format!("moving the local version aside: {err}")),
                )?;
                self.store.write(|db| {
                    db.set_local(e.id, false)?;
                    db.set_synced(e.id, &super::base_of(key, r))?;
                    let mut cur = db.must_get(e.id)?;
                    cur.size = r.size;
                    cur.mtime_ns = r
                        .meta
                        .mtime_ns
                        .or(r.last_modified_ns)
                        .unwrap_or(cur.mtime_ns);
                    if let Some(m) = r.meta.mode {
                        cur.mode = m;
                    }
                    cur.local = false;
                    db.update(&cur)?;
                    db.mark_clean(e.id)?;
                    db.resolve_conflict(conflict.id, "remote")
                })?;
            }
            ConflictPolicy::Local => {
                self.fetch_copy(copy.id, key, r).await;
                self.store
                    .write(|db| db.settle_conflict(&conflict, Keep::Local))?;
                // The copy stays as a resolved `.conflict` sibling: no policy destroys a version.
                self.store
                    .write(|db| db.set_conflict_of(copy.id, Some(e.id)))?;
            }
            ConflictPolicy::Manual | ConflictPolicy::Newest => {
                self.fetch_copy(copy.id, key, r).await;
            }
        }
        self.notify(Invalidation::Entry {
            parent,
            name: copy.name.clone(),
        });
        self.notify(Invalidation::Inode(e.id));
        Ok(())
    }

    /// Materializes a `.conflict` copy's content now, pinned to the version it records. If
    /// that fails the copy still knows its key and is fetched on first open.
    async fn fetch_copy(&self, copy: EntryId, key: &str, r: &ObjectInfo) {
        let tmp = self.cache.temp_path(copy);
        match self.remote.download(key, &tmp).await {
            Ok(n) if n == r.size => {
                if self.cache.commit_temp(copy).is_ok() {
                    let _ = self.store.write(|db| db.set_local(copy, true));
                }
            }
            Ok(_) | Err(_) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(
                    key,
                    "could not fetch the remote version for its .conflict copy now"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn conflict_names() {
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 7, 8, 9).unwrap();
        let s = |n: &str, i| String::from_utf8(conflict_name(n.as_bytes(), at, i)).unwrap();
        assert_eq!(s("report.docx", 1), "report.conflict-20261125-070809.docx");
        assert_eq!(s("Makefile", 1), "Makefile.conflict-20261125-070809");
        assert_eq!(s("a.tar.gz", 1), "a.tar.conflict-20261125-070809.gz");
        assert_eq!(s(".bashrc", 1), ".bashrc.conflict-20261125-070809");
        assert_eq!(s("trailing.", 1), "trailing..conflict-20261125-070809");
        assert_eq!(
            s("report.docx", 2),
            "report.conflict-20261125-070809-2.docx"
        );
    }
}
