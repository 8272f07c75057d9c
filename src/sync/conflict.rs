//! Keeping both versions when both sides changed: `.conflict` siblings that sync like any
//! file, the policies that decide which version stays at the path, and the mark by which
//! other mounts recognise a copy.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{ConflictPolicy, Invalidation, Shared, SyncError};
use crate::cache::CacheError;
use crate::remote::{hash_file, ObjectInfo, ObjectKind, RemoteError};
use crate::store::{dirty, now_ms, now_ns, Conflict, Db, Entry, NewEntry, StoreError, Synced};
use crate::types::{EntryId, Kind, VersionMark};

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

/// Whether `name` is a `.conflict` name of `of` (what [`conflict_name`] makes of it). A mark
/// counts only on such a name: a copy renamed over its original, or to a name of its own,
/// carries the mark along (a server-side copy keeps metadata) but is no copy any more.
pub fn is_conflict_name(name: &[u8], of: &[u8]) -> bool {
    let split = of
        .iter()
        .rposition(|b| *b == b'.')
        .filter(|i| *i > 0 && *i + 1 < of.len());
    let (stem, ext) = match split {
        Some(i) => (&of[..i], &of[i..]),
        None => (of, &b""[..]),
    };
    let mut head = stem.to_vec();
    head.extend_from_slice(b".conflict-");
    name != of && name.starts_with(&head) && name.ends_with(ext) && name.len() > head.len()
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

/// `dir/name` for a key, from the parent's path.
fn join(db: &Db<'_>, parent: EntryId, name: &[u8]) -> Result<String, StoreError> {
    let parent_path = db.path_of(parent)?.unwrap_or_default();
    let name = String::from_utf8_lossy(name);
    Ok(if parent_path.is_empty() {
        name.into_owned()
    } else {
        format!("{}/{name}", String::from_utf8_lossy(&parent_path))
    })
}

fn remote_mtime(r: &ObjectInfo) -> Option<i64> {
    r.meta.mtime_ns.or(r.last_modified_ns)
}

/// The remote version `r`, as a conflict records it.
fn mark_of_remote(r: &ObjectInfo) -> VersionMark {
    VersionMark {
        sha256: r.meta.sha256.clone(),
        size: r.size,
        mtime_ns: remote_mtime(r),
        etag: r.etag.clone(),
        writer: r.meta.writer.clone(),
    }
}

/// The fields of an entry that holds the remote version `r` at `key`.
fn entry_of_remote(
    parent: EntryId,
    name: Vec<u8>,
    key: &str,
    r: &ObjectInfo,
    like: &Entry,
) -> NewEntry {
    let kind = match r.kind {
        ObjectKind::Symlink => Kind::Symlink,
        ObjectKind::Special(s) => Kind::Special(s),
        _ => Kind::File,
    };
    let target = r.meta.symlink.clone().map(String::into_bytes);
    NewEntry {
        parent,
        name,
        kind,
        mode: r.meta.mode.unwrap_or(like.mode),
        uid: r.meta.uid.unwrap_or(like.uid),
        gid: r.meta.gid.unwrap_or(like.gid),
        size: match kind {
            Kind::Symlink => target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
            Kind::Special(_) => 0,
            _ => r.size,
        },
        mtime_ns: remote_mtime(r).unwrap_or_else(now_ns),
        target,
        local: kind != Kind::File,
        synced: super::base_of(key, r),
        dirty: 0,
        conflict_of: None,
        unread: false,
    }
}

/// The conflict engine: what the uploader (a refused write) and the poller (a remote change
/// over a local one) call when both sides changed a file.
#[derive(Clone)]
pub(super) struct Conflicts {
    ctx: Arc<Shared>,
}

impl Conflicts {
    pub(super) fn new(ctx: Arc<Shared>) -> Conflicts {
        Conflicts { ctx }
    }

    /// Both sides changed `e` (at `key`) differently; `r` is the remote version. Both versions
    /// end up in the bucket and on every mount: one at the path, the other in a `.conflict`
    /// sibling that is uploaded like any new file (create-only) and carries a mark naming the
    /// original, so other mounts list the conflict too.
    ///
    /// Which version keeps the path: under `manual` and `remote` the one that reached the
    /// server first (the remote's), as Dropbox does, so nothing at the path is overwritten
    /// and other mounts see no change there; under `local` ours; under `newest` the later
    /// mtime. Only `manual` leaves the conflict open.
    ///
    /// Returns `false` when it must wait: the local version would move under an open file.
    pub(super) async fn keep_both(
        &self,
        e: &Entry,
        key: &str,
        r: &ObjectInfo,
    ) -> Result<bool, SyncError> {
        let local_wins = match self.ctx.cfg.policy {
            ConflictPolicy::Manual | ConflictPolicy::Remote => false,
            ConflictPolicy::Local => true,
            ConflictPolicy::Newest => e.mtime_ns >= remote_mtime(r).unwrap_or(0),
        };
        if e.kind == Kind::File && !e.local {
            // A metadata-only change (chmod, touch) of a file this mount never fetched, while
            // the remote replaced its content: there is no second content to keep. Its cached
            // blocks go, so not under an open handle.
            let Some(taken) = self
                .ctx
                .files
                .with_closed(e.id, || self.take_remote_over_meta(e, key, r))
            else {
                return Ok(false);
            };
            taken?;
            tracing::warn!(path = key, "a metadata change made here lost to a remote edit of the content; taking the remote version");
            return Ok(true);
        }
        if self.ctx.files.with_closed(e.id, || ()).is_none() {
            // Whichever way it goes, the entry changes under an open handle: wait for it.
            // (Each way commits under the file's gate too: an open may come meanwhile.)
            return Ok(false);
        }
        if local_wins {
            self.keep_remote_aside(e, key, r).await
        } else {
            self.move_local_aside(e, key, r)
        }
    }

    /// The remote version takes the path; the local one moves into the copy. The entry
    /// itself (its id, data file and queued job) becomes the copy, renamed in the same
    /// transaction that puts a new entry for the remote version at the path: no data moves,
    /// and a crash leaves one state or the other.
    fn move_local_aside(&self, e: &Entry, key: &str, r: &ObjectInfo) -> Result<bool, SyncError> {
        let parent = e.parent.ok_or(SyncError::Vanished)?;
        let open = self.ctx.cfg.policy == ConflictPolicy::Manual;
        let done = self.ctx.files.with_closed(e.id, || {
            self.ctx.store.write(|db| {
                let Some(mut cur) = db.get(e.id)? else {
                    return Ok::<_, StoreError>(None);
                };
                if cur.parent != Some(parent) || cur.name != e.name {
                    return Ok(None);
                }
                let copy_name = free_name(db, parent, &cur.name)?;
                let copy_path = join(db, parent, &copy_name)?;
                cur.name = copy_name.clone();
                cur.ctime_ns = now_ns();
                db.update(&cur)?;
                // No base: the copy goes up create-only under its own name.
                db.set_synced(e.id, &Synced::default())?;
                db.enqueue_sync(e.id, dirty::CONTENT | dirty::META, Some(now_ms()))?;
                let at_path = db.insert(&entry_of_remote(parent, e.name.clone(), key, r, &cur))?;
                if open {
                    db.set_conflict_of(e.id, Some(at_path.id))?;
                }
                let c = self.found(&cur, r, key, copy_path, (at_path.id, e.id), true, open);
                let id = db.insert_conflict(&c)?;
                Ok(Some(Conflict { id, ..c }))
            })
        });
        let Some(done) = done else {
            // Opened meanwhile.
            return Ok(false);
        };
        let Some(c) = done? else {
            return Ok(true);
        };
        tracing::warn!(path = key, copy = %c.copy_path, policy = self.ctx.cfg.policy.as_str(), "conflict: both sides changed; the remote version stays at the path, ours goes up as the copy");
        self.ctx.notify(Invalidation::Entry {
            parent,
            name: e.name.clone(),
        });
        if let Some(name) = c.copy_path.rsplit('/').next() {
            self.ctx.notify(Invalidation::Entry {
                parent,
                name: name.as_bytes().to_vec(),
            });
        }
        self.ctx.notify(Invalidation::Inode(e.id));
        Ok(true)
    }

    /// Our version keeps the path (uploaded against the remote version `r`); `r` goes into a
    /// new copy. Its bytes are fetched first and checked, and the copy's entry, its data file
    /// and our re-armed upload are committed together: the remote version is never
    /// overwritten before it is on this disk.
    async fn keep_remote_aside(
        &self,
        e: &Entry,
        key: &str,
        r: &ObjectInfo,
    ) -> Result<bool, SyncError> {
        let parent = e.parent.ok_or(SyncError::Vanished)?;
        let tmp = self.ctx.cache.temp_path(e.id).with_extension("theirs");
        if matches!(r.kind, ObjectKind::File | ObjectKind::Dir) {
            // Through the block cache's fetcher, pinned to the version `r` names: another
            // version is the next round's business.
            let (files, path) = (self.ctx.files.clone(), tmp.clone());
            let (k, etag, size) = (key.to_string(), r.etag.clone(), r.size);
            let fetched = tokio::task::spawn_blocking(move || {
                files.fetch_version(&k, etag.as_deref(), size, &path)?;
                Ok::<_, CacheError>(hash_file(&path).ok())
            })
            .await
            .map_err(|err| SyncError::Local(err.to_string()))?;
            let (changed, hash) = match fetched {
                Ok(hash) => (false, hash),
                Err(CacheError::Remote(RemoteError::Conflict(_))) => (true, None),
                Err(CacheError::Remote(err)) => return Err(err.into()),
                Err(err) => return Err(SyncError::Local(err.to_string())),
            };
            let n = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            let same =
                !changed && n == r.size && (r.meta.sha256.is_none() || hash == r.meta.sha256);
            if !same {
                // Changed again since the HEAD: the next round sees the newer version.
                let _ = std::fs::remove_file(&tmp);
                return Ok(false);
            }
        }
        let result = self.ctx.files.with_closed(e.id, || {
            self.ctx.store.write(|db| {
                let Some(cur) = db.get(e.id)? else {
                    return Ok::<_, SyncError>(None);
                };
                let copy_name = free_name(db, parent, &cur.name)?;
                let copy_path = join(db, parent, &copy_name)?;
                let mut fields = entry_of_remote(parent, copy_name, key, r, &cur);
                fields.synced = Synced::default();
                fields.local = true;
                fields.dirty = dirty::CONTENT | dirty::META;
                let copy = db.insert(&fields)?;
                db.enqueue_sync(copy.id, dirty::CONTENT | dirty::META, Some(now_ms()))?;
                if matches!(r.kind, ObjectKind::File | ObjectKind::Dir) {
                    // Inside the transaction: if it fails, nothing was recorded; if the commit
                    // fails after it, the data file has no entry and is swept at the next start.
                    std::fs::rename(&tmp, self.ctx.cache.path(copy.id)).map_err(|err| {
                        SyncError::Local(format!("placing the remote version: {err}"))
                    })?;
                }
                db.set_synced(
                    e.id,
                    &Synced {
                        hash: cur.synced.hash.clone(),
                        ..super::base_of(key, r)
                    },
                )?;
                db.enqueue_sync(e.id, dirty::CONTENT | dirty::META, Some(now_ms()))?;
                let c = self.found(&cur, r, key, copy_path, (e.id, copy.id), false, false);
                let id = db.insert_conflict(&c)?;
                Ok(Some((copy, Conflict { id, ..c })))
            })
        });
        let Some(result) = result else {
            // Opened meanwhile: the next round downloads again.
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        };
        let Some((copy, c)) = result.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?
        else {
            let _ = std::fs::remove_file(&tmp);
            return Ok(true);
        };
        tracing::warn!(path = key, copy = %c.copy_path, policy = self.ctx.cfg.policy.as_str(), "conflict: both sides changed; our version stays at the path, the remote one goes up as the copy");
        self.ctx.notify(Invalidation::Entry {
            parent,
            name: copy.name.clone(),
        });
        self.ctx.notify(Invalidation::Inode(e.id));
        Ok(true)
    }

    /// The row for a conflict found here between our version `cur` and the remote's `r`;
    /// `ours_in_copy` says where ours went, `open` whether the user still has to settle it.
    #[allow(clippy::too_many_arguments)]
    fn found(
        &self,
        cur: &Entry,
        r: &ObjectInfo,
        key: &str,
        copy_path: String,
        (entry_id, copy_id): (EntryId, EntryId),
        ours_in_copy: bool,
        open: bool,
    ) -> Conflict {
        let mine = VersionMark {
            sha256: None,
            size: cur.size,
            mtime_ns: Some(cur.mtime_ns),
            etag: None,
            writer: Some(self.ctx.cfg.writer.clone()),
        };
        let theirs = mark_of_remote(r);
        let policy = self.ctx.cfg.policy.as_str().to_string();
        let (at_path, in_copy) = if ours_in_copy {
            (theirs.clone(), mine.clone())
        } else {
            (mine.clone(), theirs.clone())
        };
        Conflict {
            entry_id: entry_id.0,
            copy_id: copy_id.0,
            path: key.to_string(),
            copy_path,
            local_size: mine.size,
            local_mtime_ns: cur.mtime_ns,
            local_etag: None,
            remote_size: theirs.size,
            remote_mtime_ns: theirs.mtime_ns,
            remote_etag: theirs.etag,
            remote_version: r.version.clone(),
            detected_ms: now_ms(),
            resolved_ms: (!open).then(now_ms),
            resolution: (!open).then(|| policy.clone()),
            policy,
            at_path,
            in_copy,
            mine: Some(if ours_in_copy { "copy" } else { "path" }.into()),
            ..Default::default()
        }
    }

    /// Gives the `.conflict` copy `e`, whose name turned out to be taken on the remote, the
    /// next name free both here and there. `false` when `e` is no copy.
    pub(super) async fn rename_copy(&self, e: &Entry) -> Result<bool, SyncError> {
        let Some(parent) = e.parent else {
            return Ok(false);
        };
        let found = self.ctx.store.read(|db| {
            let path = join(db, parent, &e.name)?;
            Ok::<_, StoreError>(
                db.last_conflict_for(e.id, &path)?
                    .filter(|c| c.copy_id == e.id.0),
            )
        })?;
        let Some(c) = found else {
            return Ok(false);
        };
        let orig = c
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&c.path)
            .as_bytes()
            .to_vec();
        let at = Utc::now();
        for n in 2..1000 {
            let cand = conflict_name(&orig, at, n);
            let (taken, key) = self.ctx.store.read(|db| {
                Ok::<_, StoreError>((
                    db.lookup(parent, &cand)?.is_some(),
                    join(db, parent, &cand)?,
                ))
            })?;
            if taken || self.ctx.remote.head(&key, false).await?.is_some() {
                continue;
            }
            let renamed = self.ctx.store.write(|db| {
                let Some(mut cur) = db.get(e.id)? else {
                    return Ok::<_, StoreError>(false);
                };
                if cur.name != e.name || db.lookup(parent, &cand)?.is_some() {
                    return Ok(false);
                }
                cur.name = cand.clone();
                cur.ctime_ns = now_ns();
                db.update(&cur)?;
                db.set_conflict_copy_path(c.id, &key)?;
                db.enqueue_sync(e.id, 0, Some(now_ms()))?;
                Ok(true)
            })?;
            if renamed {
                tracing::info!(from = %String::from_utf8_lossy(&e.name), to = %key, "conflict copy renamed: its name was taken on the remote");
                self.ctx.notify(Invalidation::Entry {
                    parent,
                    name: e.name.clone(),
                });
                self.ctx.notify(Invalidation::Entry { parent, name: cand });
            }
            return Ok(renamed);
        }
        Ok(false)
    }

    /// The remote version replaces a local change that held no content of its own.
    fn take_remote_over_meta(&self, e: &Entry, key: &str, r: &ObjectInfo) -> Result<(), SyncError> {
        self.ctx.store.write(|db| {
            let Some(mut cur) = db.get(e.id)? else {
                return Ok::<_, StoreError>(());
            };
            let f = entry_of_remote(EntryId::ROOT, Vec::new(), key, r, &cur);
            cur.size = f.size;
            cur.mtime_ns = f.mtime_ns;
            cur.mode = f.mode;
            cur.uid = f.uid;
            cur.gid = f.gid;
            cur.ctime_ns = now_ns();
            db.update(&cur)?;
            db.set_local(e.id, false)?;
            db.set_synced(e.id, &f.synced)?;
            db.mark_clean(e.id)
        })?;
        let _ = self.ctx.cache.remove(e.id);
        self.ctx.notify(Invalidation::Inode(e.id));
        Ok(())
    }
}

/// Records the conflict that a `.conflict` copy's mark names, on a mount that learns of it
/// from the remote (a poll, or a new state dir): `copy` is the entry just made for the
/// object `o`. Nothing happens when the mark does not hold: the name is not a conflict name
/// of the original, the original is missing, or the conflict is already recorded.
pub(crate) fn adopt_mark(
    db: &Db<'_>,
    copy: &Entry,
    copy_key: &str,
    o: &ObjectInfo,
    writer: &str,
) -> Result<bool, StoreError> {
    let Some(mark) = &o.meta.conflict else {
        return Ok(false);
    };
    let Some(parent) = copy.parent else {
        return Ok(false);
    };
    if !is_conflict_name(&copy.name, mark.of.as_bytes()) || copy.conflict_of.is_some() {
        return Ok(false);
    }
    let Some(orig) = db.lookup(parent, mark.of.as_bytes())? else {
        return Ok(false);
    };
    if orig.kind == Kind::Dir || orig.conflict_of.is_some() {
        return Ok(false);
    }
    if db.open_conflict_for(orig.id)?.is_some() || db.open_conflict_for(copy.id)?.is_some() {
        return Ok(false);
    }
    let in_copy = mark_of_remote(o);
    let mine = if mark.at_path.writer.as_deref() == Some(writer) {
        Some("path".to_string())
    } else if in_copy.writer.as_deref() == Some(writer) {
        Some("copy".to_string())
    } else {
        None
    };
    db.set_conflict_of(copy.id, Some(orig.id))?;
    let (local, remote) = if mine.as_deref() == Some("path") {
        (&mark.at_path, &in_copy)
    } else {
        (&in_copy, &mark.at_path)
    };
    db.insert_conflict(&Conflict {
        entry_id: orig.id.0,
        copy_id: copy.id.0,
        path: join(db, parent, &orig.name)?,
        copy_path: copy_key.to_string(),
        local_size: local.size,
        local_mtime_ns: local.mtime_ns.unwrap_or(0),
        local_etag: local.etag.clone(),
        remote_size: remote.size,
        remote_mtime_ns: remote.mtime_ns,
        remote_etag: remote.etag.clone(),
        remote_version: None,
        detected_ms: mark.detected_ms,
        policy: "manual".into(),
        at_path: mark.at_path.clone(),
        in_copy,
        mine,
        ..Default::default()
    })?;
    tracing::warn!(path = %String::from_utf8_lossy(&orig.name), copy = copy_key, "conflict found on another mount: both versions are here");
    Ok(true)
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

    #[test]
    fn conflict_names_are_recognised() {
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 7, 8, 9).unwrap();
        for (name, n) in [
            ("report.docx", 1),
            ("Makefile", 3),
            (".bashrc", 1),
            ("a.tar.gz", 2),
        ] {
            let c = conflict_name(name.as_bytes(), at, n);
            assert!(is_conflict_name(&c, name.as_bytes()), "{name}");
        }
        // The original itself, another file's copy and plain names are not.
        assert!(!is_conflict_name(b"report.docx", b"report.docx"));
        assert!(!is_conflict_name(
            b"other.conflict-20261125-070809.docx",
            b"report.docx"
        ));
        assert!(!is_conflict_name(b"report-final.docx", b"report.docx"));
        assert!(!is_conflict_name(
            b"report.conflict-20261125-070809.txt",
            b"report.docx"
        ));
    }
}
