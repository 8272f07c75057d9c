//! Settling conflicts: `stratus resolve` (and `user.stratus.resolve`) on a file that takes
//! part in an open conflict, and the last conflict recorded for a file.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::{Vfs, VfsError, VfsResult};
use crate::types::{EntryId, Invalidation, Keep};

impl Vfs {
    /// Settles the open conflict that `ino` (the original or its `.conflict` copy) takes part
    /// in: what `stratus resolve` and `user.stratus.resolve` do. Keeping one version is the
    /// same as deleting the copy or renaming it over the original, so it settles the conflict
    /// on every mount the same way.
    pub fn resolve(&self, ino: EntryId, keep: Keep) -> VfsResult<()> {
        let c = self
            .r(|db| Ok(db.open_conflict_for(ino)?))?
            .ok_or_else(|| VfsError::Invalid("no open conflict on this file".into()))?;
        let keep = keep.placed(c.mine.as_deref()).map_err(VfsError::Invalid)?;
        let (orig, copy) =
            self.r(|db| Ok((db.get(EntryId(c.entry_id))?, db.get(EntryId(c.copy_id))?)))?;
        let copy = copy.ok_or(VfsError::NotFound)?;
        let cp = copy.parent.ok_or(VfsError::NotFound)?;
        match keep {
            Keep::Path => {
                self.unlink(cp, OsStr::from_bytes(&copy.name))?;
                self.notify(Invalidation::Entry {
                    parent: cp,
                    name: copy.name,
                });
            }
            Keep::Copy => {
                let orig = orig.ok_or(VfsError::NotFound)?;
                let op = orig.parent.ok_or(VfsError::NotFound)?;
                self.rename(
                    cp,
                    OsStr::from_bytes(&copy.name),
                    op,
                    OsStr::from_bytes(&orig.name),
                    false,
                )?;
                self.notify(Invalidation::Entry {
                    parent: cp,
                    name: copy.name,
                });
                self.notify(Invalidation::Entry {
                    parent: op,
                    name: orig.name,
                });
            }
            Keep::Both | Keep::Local | Keep::Remote => {
                self.w(|db| Ok(db.keep_both(&c)?))?;
            }
        }
        tracing::info!(path = %c.path, keep = keep.as_str(), "conflict resolved");
        Ok(())
    }

    /// The last conflict recorded for `ino` or its path, settled or not.
    pub fn last_conflict(&self, ino: EntryId) -> VfsResult<Option<crate::store::Conflict>> {
        self.r(|db| {
            let path = db
                .path_of(ino)?
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_default();
            Ok(db.last_conflict_for(ino, &path)?)
        })
    }
}
