//! Recovery at mount: what a previous run left behind (unlinked entries, data files of
//! deleted entries, armed writers, sizes not applied) is brought back in line.

use super::{time_to_ns, Vfs, VfsResult};
use crate::store::{now_ms, now_ns};
use crate::types::{EntryId, Kind};

impl Vfs {
    /// Called once at start: the previous run may have died with writers armed. Their data
    /// files hold everything that was acknowledged, so size and mtime come from there.
    ///
    /// Only a database that cannot be read fails it: an entry whose row cannot be applied
    /// to its data file is reported (`set_aside`) and the mount goes on, since refusing to
    /// mount would strand everything still queued in the state dir.
    pub fn recover(&self) -> VfsResult<usize> {
        let orphans = self.store.read(|db| db.orphans())?;
        for id in &orphans {
            self.store.write(|db| db.delete_entry(*id))?;
            if let Err(e) = self.cache.remove(*id) {
                tracing::warn!(id = id.0, error = %e, "could not remove an unlinked file's data");
            }
        }
        // Data files whose entry is gone: removals whose deferred delete a crash cut short.
        let mut swept = 0;
        let known = self.store.read(|db| db.entry_ids())?;
        for id in self.cache.ids()? {
            if !known.contains(&id.0) {
                match self.cache.remove(id) {
                    Ok(()) => swept += 1,
                    Err(e) => {
                        tracing::warn!(id = id.0, error = %e, "could not remove a deleted file's data")
                    }
                }
            }
        }
        if swept > 0 {
            tracing::info!(files = swept, "removed data files of deleted entries");
        }
        self.blocks.load_blocks()?;
        let mut held = self.store.write(|db| db.release_held(now_ms()))?;
        // Written by the kernel since their last upload: the data file holds writes the
        // database never heard of, as for a held writer.
        for id in self.store.read(|db| db.passthrough_written())? {
            if !held.contains(&id) {
                held.push(id);
            }
        }
        // A committed truncate may not have reached the data file: outside the entries that
        // were being written (whose data file is the truth, below), the database's size is.
        let complete = self.store.read(|db| db.complete_files())?;
        for (id, size) in complete {
            if held.contains(&id) {
                continue;
            }
            let len = match self.cache.len(id) {
                Ok(Some(len)) => len,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(id = id.0, error = %e, "cannot read a data file's length");
                    continue;
                }
            };
            if len != size {
                tracing::info!(id = id.0, len, size, "data file follows the committed size");
                if let Err(e) = self.cache.set_len(id, size) {
                    self.set_aside(id, size, len, &e)?;
                }
            }
        }
        for id in &held {
            let Some(e) = self.store.read(|db| db.get(*id))? else {
                continue;
            };
            if e.kind != Kind::File || !e.local {
                continue;
            }
            if self.hold_orphan_writer(*id)? {
                continue;
            }
            let path = self.cache.path(*id);
            if let Ok(m) = std::fs::metadata(&path) {
                let mtime = m.modified().map(time_to_ns).unwrap_or(e.mtime_ns);
                self.store
                    .write(|db| db.set_size_mtime(*id, m.len(), mtime.max(e.mtime_ns)))?;
            }
        }
        self.blocks.retire_all()?;
        Ok(held.len())
    }

    /// A recorded size the data file refuses (EFBIG for a size past the largest file the
    /// state dir's filesystem holds, left by an older build's failed truncate): the data
    /// file, which holds every byte that was acknowledged, is kept as it is and its length
    /// becomes the entry's size. Logged, and shown as the last error in `stratus status`.
    pub(super) fn set_aside(
        &self,
        id: EntryId,
        size: u64,
        len: u64,
        err: &crate::cache::CacheError,
    ) -> VfsResult<()> {
        let path = self
            .store
            .read(|db| db.path_of(id))?
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_else(|| format!("entry {}", id.0));
        tracing::warn!(%path, size, len, error = %err, "recorded size cannot be applied to the data file; keeping the data file's length");
        self.remote.health().record_local_error(&format!(
            "{path}: recorded size {size} could not be applied ({err}); kept the {len} bytes of its data file"
        ));
        let mtime = self
            .store
            .read(|db| db.get(id))?
            .map_or_else(now_ns, |e| e.mtime_ns);
        self.store.write(|db| db.set_size_mtime(id, len, mtime))?;
        Ok(())
    }
}
