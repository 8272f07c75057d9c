//! The data files: one sparse file per entry under `STATE/data/`, holding the bytes of an
//! entry at their own offsets, either the whole file (`Entry::local`) or the blocks the
//! `blocks` table lists.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{CacheError, CacheResult};
use crate::types::EntryId;

#[derive(Debug, Clone)]
pub struct FileCache {
    root: PathBuf,
}

impl FileCache {
    pub fn open(state_dir: &Path) -> CacheResult<FileCache> {
        let root = state_dir.join("data");
        // The cached copies of the user's files are the user's alone: 0700 here, 0600 each.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|source| CacheError::Io {
                path: root.clone(),
                source,
            })?;
        Ok(FileCache { root })
    }

    pub fn path(&self, id: EntryId) -> PathBuf {
        self.root.join(id.0.to_string())
    }

    /// A scratch path beside the data files, for downloads that are renamed into place.
    pub fn temp_path(&self, id: EntryId) -> PathBuf {
        self.root.join(format!("{}.part", id.0))
    }

    fn err(&self, id: EntryId) -> impl Fn(io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            path: self.path(id),
            source,
        }
    }

    /// Opens the data file for reading and writing, creating an empty one when asked.
    pub fn open_file(&self, id: EntryId, create: bool) -> CacheResult<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .open(self.path(id))
            .map_err(self.err(id))
    }

    pub fn create_empty(&self, id: EntryId) -> CacheResult<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.path(id))
            .map_err(self.err(id))
    }

    /// Cuts or extends the data file (creating it empty first if it is missing).
    pub fn set_len(&self, id: EntryId, len: u64) -> CacheResult<()> {
        self.open_file(id, true)?.set_len(len).map_err(self.err(id))
    }

    pub fn len(&self, id: EntryId) -> CacheResult<Option<u64>> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(id)(e)),
        }
    }

    /// Ids of every data file present (scratch `.part` files are not listed).
    pub fn ids(&self) -> CacheResult<Vec<EntryId>> {
        let rd = std::fs::read_dir(&self.root).map_err(|source| CacheError::Io {
            path: self.root.clone(),
            source,
        })?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .map(EntryId)
            .collect())
    }

    pub fn remove(&self, id: EntryId) -> CacheResult<()> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(id)(e)),
        }
    }

    /// Gives a block's disk space back without changing the file's length.
    pub fn punch_hole(&self, id: EntryId, offset: u64, len: u64) -> CacheResult<()> {
        let f = match OpenOptions::new().write(true).open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(id)(e)),
        };
        // SAFETY: fallocate on a descriptor we own, with a range inside i64.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(self.err(id)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Makes sure a sparse data file of `size` bytes exists, keeping what it holds.
    pub fn ensure_sparse(&self, id: EntryId, size: u64) -> CacheResult<()> {
        let f = self.open_file(id, true)?;
        let len = f.metadata().map_err(self.err(id))?.len();
        if len != size {
            f.set_len(size).map_err(self.err(id))?;
        }
        Ok(())
    }

    /// Free and total bytes of the disk under the cache, for statfs.
    pub fn disk_space(&self) -> CacheResult<(u64, u64, u64)> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).map_err(|_| {
            CacheError::Io {
                path: self.root.clone(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            }
        })?;
        // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(CacheError::Io {
                path: self.root.clone(),
                source: io::Error::last_os_error(),
            });
        }
        let bs = st.f_frsize as u64;
        Ok((st.f_blocks as u64 * bs, st.f_bavail as u64 * bs, bs))
    }
}
