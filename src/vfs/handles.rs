//! Open handles and data I/O: open, read, write, fsync, release and fallocate on a file's
//! data file, arming its upload at the first write and letting it go at the last close.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{lock, ns_to_time, Handle, Live, Opened, SetAttr, Vfs, VfsError, VfsResult};
use crate::cache::BLOCK_SIZE;
use crate::store::{dirty, now_ns};
use crate::types::{EntryId, Kind};

/// Reads up to `size` bytes at `offset`; short only at the end of the file.
fn read_at(f: &File, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read_at(&mut buf[n..], offset + n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
}

impl Vfs {
    pub(super) fn add_handle(
        &self,
        id: EntryId,
        file: Option<File>,
        writable: bool,
        passthrough: bool,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                id,
                file,
                writable,
                passthrough,
                last_end: AtomicU64::new(u64::MAX),
                listing: Mutex::new(None),
            }),
        );
        fh
    }

    pub(super) fn handle(&self, fh: u64) -> VfsResult<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(VfsError::BadHandle)
    }

    /// Opens a file; `truncate` is O_TRUNC, which empties the file as part of the open.
    /// Also answers whether the kernel may keep the file's page cache: yes when the file is
    /// opened at the version it was last opened at here (a remote change, which the poller
    /// takes only while the file is closed, changes the version).
    pub fn open(&self, ino: EntryId, writable: bool, truncate: bool) -> VfsResult<(u64, bool)> {
        let o = self.open_with(ino, writable, truncate, false)?;
        Ok((o.fh, o.keep_cache))
    }

    /// [`Vfs::open`] for the kernel, which may take the handle in passthrough mode
    /// (`passthrough`, when the mount uses it): then `Opened::backing` is the data file for
    /// the kernel to read and write directly, and no read or write of the handle reaches the
    /// core. A file passes through when its data is wholly here (a writer's always is, it is
    /// filled first) and, for a writer, when its next upload is whole anyway: written from
    /// scratch (`truncate`, empty) or never uploaded. A writer of a file the remote holds
    /// stays on the core's path, whose writes the change log notes, so a change to a large
    /// file still goes up as a differential upload.
    pub fn open_with(
        &self,
        ino: EntryId,
        writable: bool,
        truncate: bool,
        passthrough: bool,
    ) -> VfsResult<Opened> {
        // A file a listing alone made may be a symlink, or have a mode that forbids this.
        self.read_meta_first(ino)?;
        let e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        match e.kind {
            Kind::Dir => {
                return Ok(Opened {
                    fh: self.add_handle(e.id, None, false, false),
                    keep_cache: false,
                    backing: None,
                })
            }
            Kind::Symlink => return Err(VfsError::Invalid("open of a symlink".into())),
            // The kernel opens fifos, sockets and devices itself (`init_special_inode`) and
            // never asks a FUSE daemon to.
            Kind::Special(_) => return Err(VfsError::Invalid("open of a special file".into())),
            Kind::File => {}
        }
        if writable && passthrough && self.passthrough.is_on() {
            // As in `create_with`: a writer that may get the data file waits here, not at
            // each write, while the cache is over its budget.
            self.blocks.throttle_direct_writer()?;
        }
        if truncate {
            self.setattr(
                e.id,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
            )?;
        }
        // Everything from here to the registration of the handle (`BlockCache::opened`, with
        // its `live` state) runs under the file's gate, which is also what the sync engine
        // takes to replace or delete the data of a closed file (`FileGate::run_closed`):
        // either it ran before (and the entry read below is its result), or it sees this
        // handle and leaves the file alone. Opening the data
        // file first and registering after let the poller delete the data file in between:
        // the handle then read a file nobody wrote to any more. A writer also needs the
        // whole file, and from its registration on the file cannot be handed to the block
        // cache (retire), whose eviction would punch holes into it.
        let gate = self.blocks.gate(e.id);
        let _g = lock(&gate);
        let mut e = self
            .store
            .read(|db| db.get(ino))?
            .ok_or(VfsError::NotFound)?;
        if e.kind != Kind::File {
            return Err(VfsError::NotFound);
        }
        if !e.local {
            if writable {
                self.blocks.fill(&e)?;
                e = self
                    .store
                    .read(|db| db.get(ino))?
                    .ok_or(VfsError::NotFound)?;
            } else {
                // Read-only: blocks come in as they are read.
                self.cache.ensure_sparse(e.id, e.size)?;
            }
        }
        let wanted = passthrough && self.may_pass_data(&e, writable, truncate)?;
        let mut live = lock(&self.live);
        let size = if e.local {
            self.cache.len(e.id)?.unwrap_or(e.size)
        } else {
            e.size
        };
        let l = live.entry(e.id).or_insert(Live {
            writers: 0,
            pass: 0,
            pass_writers: 0,
            plain: 0,
            armed: false,
            size,
            mtime_ns: e.mtime_ns,
            unlinked: false,
        });
        // The kernel's rule: every open of a file open in passthrough mode passes through
        // (with the same backing file), and none does while it is open otherwise.
        let pass = self.passthrough.is_on() && (l.pass > 0 || (wanted && l.plain == 0));
        let (file, backing) = if pass {
            // Ours read-only: the kernel writes through a file of its own (see `linger`).
            let f = File::open(self.cache.path(e.id))?;
            let b = f.try_clone()?;
            (f, Some(b))
        } else if writable {
            (self.cache.open_file(e.id, false)?, None)
        } else {
            (File::open(self.cache.path(e.id))?, None)
        };
        if pass && writable && !l.unlinked && !l.armed {
            // Journal first, as for the first write (`write`): from this reply on the
            // kernel writes without asking, and a crash must find the file queued.
            self.store
                .write(|db| db.enqueue_sync(e.id, dirty::CONTENT | dirty::PASSTHROUGH, None))?;
            l.armed = true;
        }
        if pass && writable {
            // The kernel's writes are not noted block by block: the next upload is whole.
            self.blocks.changes().untracked_change(e.id);
            if l.pass_writers == 0 {
                // The data file's mtime is the file's from now until the last close (the
                // kernel's writes move it): it starts as the file's own.
                if let Err(err) = file.set_modified(ns_to_time(l.mtime_ns)) {
                    tracing::debug!(id = e.id.0, error = %err, "could not set a data file's mtime");
                }
            }
        }
        self.blocks.opened(e.id);
        if pass {
            l.pass += 1;
            if !e.local {
                self.blocks.set_passthrough(e.id, true);
            }
        } else {
            l.plain += 1;
        }
        if writable {
            l.writers += 1;
            if pass {
                l.pass_writers += 1;
            }
        }
        drop(live);
        let version = (e.synced.etag.clone(), e.size, e.mtime_ns);
        let keep_cache = {
            let mut opened = lock(&self.opened);
            if opened.len() > 100_000 {
                opened.clear();
            }
            opened.insert(e.id, version.clone()).as_ref() == Some(&version)
        };
        let fh = self.add_handle(e.id, Some(file), writable, pass);
        if pass {
            self.passthrough.count_open();
        }
        Ok(Opened {
            fh,
            keep_cache,
            backing,
        })
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        self.passthrough.count_read();
        let h = self.handle(fh)?;
        let f = h.file.as_ref().ok_or(VfsError::IsDir)?;
        if !h.writable {
            let e = self
                .store
                .read(|db| db.get(h.id))?
                .ok_or(VfsError::NotFound)?;
            if !e.local && size > 0 && offset < e.size {
                // The kernel reads ahead with several requests at once, so a sequential
                // reader's requests may arrive a little out of order.
                let prev = h.last_end.swap(offset + size as u64, Ordering::Relaxed);
                let sequential = prev != u64::MAX
                    && offset + BLOCK_SIZE >= prev
                    && offset <= prev.saturating_add(BLOCK_SIZE);
                let last = (offset + size as u64 - 1) / BLOCK_SIZE;
                // The read runs under the file's gate, so the blocks cannot be evicted
                // between their arrival and the read.
                let (buf, waited) =
                    self.blocks
                        .with_blocks(&e, offset / BLOCK_SIZE, last, sequential, || {
                            read_at(f, offset, size)
                        })?;
                self.blocks.count_read(waited);
                return Ok(buf);
            }
            self.blocks.count_read(false);
        }
        read_at(f, offset, size)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        self.passthrough.count_write();
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(VfsError::BadHandle);
        }
        let f = h.file.as_ref().ok_or(VfsError::IsDir)?;
        self.blocks.throttle_writer()?;
        if !self.blocks.changes().knows(h.id) {
            // Read before this write arms the entry: clean now means the data file is the
            // remote's version, which a differential upload may build on.
            if let Some(e) = self.store.read(|db| db.get(h.id))? {
                self.start_changes(&e);
            }
        }
        let end = offset + data.len() as u64;
        let changed = {
            let mut live = lock(&self.live);
            let l = live.get_mut(&h.id).ok_or(VfsError::BadHandle)?;
            self.blocks
                .check_disk_room((offset + data.len() as u64).saturating_sub(l.size))?;
            // A write past the end changes the hole before it too (zeros, not the base's bytes).
            let changed = offset.min(l.size)..end;
            self.note_change(h.id, changed.clone(), false);
            if !l.armed && !l.unlinked {
                // Journal first: once this write is acknowledged, a crash must find it queued.
                self.store
                    .write(|db| db.enqueue_sync(h.id, dirty::CONTENT, None))?;
                l.armed = true;
            }
            changed
        };
        f.write_all_at(data, offset)?;
        self.note_change(h.id, changed, true);
        let mut live = lock(&self.live);
        if let Some(l) = live.get_mut(&h.id) {
            if end > l.size {
                self.blocks.note_growth(end - l.size);
            }
            l.size = l.size.max(end);
            l.mtime_ns = now_ns();
        }
        Ok(data.len() as u32)
    }

    /// Writes an armed entry's size and mtime back and lets its upload go after the
    /// write-back delay. Called with the `live` lock held.
    pub(super) fn disarm(&self, id: EntryId, l: &mut Live) -> VfsResult<()> {
        if !l.armed {
            return Ok(());
        }
        let ready = self.ready_at();
        let unlinked = l.unlinked;
        self.w(|db| {
            db.set_size_mtime(id, l.size, l.mtime_ns)?;
            if !unlinked {
                db.set_ready(id, Some(ready))?;
            }
            Ok(())
        })?;
        l.armed = false;
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> VfsResult<()> {
        let h = self.handle(fh)?;
        if let Some(f) = &h.file {
            // A passthrough handle's file is another descriptor of the same data file: its
            // fsync writes back what the kernel wrote through its own.
            if datasync {
                f.sync_data()?;
            } else {
                f.sync_all()?;
            }
        }
        {
            let mut live = lock(&self.live);
            if let Some(l) = live.get_mut(&h.id) {
                if l.pass_writers > 0 {
                    // The kernel writes without asking: size and mtime are the data file's.
                    // The upload goes as for any writer's fsync; the kernel's writes after
                    // it are covered by `dirty::PASSTHROUGH` at a crash, and by the re-arm
                    // when that upload lands (`FileGate::landed`).
                    self.take_data_file_attrs(h.id, l);
                    if l.armed {
                        self.disarm(h.id, l)?;
                    } else {
                        let (size, mtime) = (l.size, l.mtime_ns);
                        self.w(|db| Ok(db.set_size_mtime(h.id, size, mtime)?))?;
                    }
                } else {
                    self.disarm(h.id, l)?;
                }
            }
        }
        self.store.make_durable()?;
        Ok(())
    }

    pub fn release(&self, fh: u64) -> VfsResult<()> {
        let h = lock(&self.handles).remove(&fh).ok_or(VfsError::BadHandle)?;
        if h.file.is_none() {
            return Ok(());
        }
        if h.passthrough && h.writable && self.linger(&h) {
            return Ok(());
        }
        self.finish_release(&h)
    }

    /// What closing `h` does, once no mapping of it writes any more (see `linger`).
    pub(super) fn finish_release(&self, h: &Handle) -> VfsResult<()> {
        let mut live = lock(&self.live);
        let Some(l) = live.get_mut(&h.id) else {
            return Ok(());
        };
        if h.writable {
            l.writers = l.writers.saturating_sub(1);
        }
        if h.passthrough {
            l.pass = l.pass.saturating_sub(1);
            if h.writable {
                // What the kernel wrote: the data file's size and mtime are the file's, and
                // its next upload is whole (written after any upload that started before).
                self.take_data_file_attrs(h.id, l);
                l.pass_writers = l.pass_writers.saturating_sub(1);
                self.blocks.changes().untracked_change(h.id);
            }
        } else {
            l.plain = l.plain.saturating_sub(1);
        }
        let mut result = Ok(());
        if h.passthrough && h.writable && l.pass_writers == 0 && !l.armed && !l.unlinked {
            // Let go by an fsync and not armed since: queued again (a job already waiting
            // keeps its place), so that nothing the kernel wrote after may go unsent.
            let ready = self.ready_at();
            result = self.w(|db| {
                db.enqueue_sync(h.id, dirty::CONTENT | dirty::PASSTHROUGH, Some(ready))?;
                Ok(db.set_size_mtime(h.id, l.size, l.mtime_ns)?)
            });
        }
        if l.writers == 0 {
            result = result.and(self.disarm(h.id, l));
        }
        if h.passthrough && h.writable {
            // The kernel's writes never reached `note_growth`: the next writer's throttle
            // reads the figure again, with this file's size just written back.
            self.blocks.forget_dirty_figure();
        }
        if h.passthrough {
            self.blocks.set_passthrough(h.id, false);
        }
        let closed = self.blocks.closed(h.id);
        if closed.last {
            let l = live.remove(&h.id).expect("present");
            if l.unlinked {
                self.store.write(|db| db.delete_entry(h.id))?;
                self.cache.remove(h.id)?;
            } else if closed.retire {
                drop(live);
                self.blocks.hand_over(h.id);
            }
        }
        result
    }

    pub fn releasedir(&self, fh: u64) -> VfsResult<()> {
        let h = lock(&self.handles).remove(&fh);
        if let Some(h) = h {
            let mut gone = lock(&self.gone_dirs);
            if gone.contains_key(&h.id) && !self.dir_is_open(h.id) {
                gone.remove(&h.id);
            }
        }
        Ok(())
    }

    /// Whether a directory handle of `id` is open.
    pub(super) fn dir_is_open(&self, id: EntryId) -> bool {
        lock(&self.handles)
            .values()
            .any(|h| h.id == id && h.file.is_none())
    }

    /// `posix_fallocate` (mode 0): reserves `offset..offset + len` in the data file and
    /// makes the file at least that long. An acknowledged reservation is real disk space
    /// (writes into it cannot fail for lack of room), so one that does not fit the state
    /// dir's disk, less the floor every write keeps free (`check_disk_room`), fails with
    /// ENOSPC and changes nothing. Punching holes and the other modes are not supported.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> VfsResult<()> {
        if mode != 0 {
            tracing::warn!(
                mode,
                "fallocate modes other than 0 are not supported; answering ENOTSUP"
            );
            return Err(VfsError::NotSupported("fallocate mode"));
        }
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(VfsError::BadHandle);
        }
        let own;
        let f = if h.passthrough {
            // Its own file is read-only (see `Handle::file`).
            own = self.cache.open_file(h.id, false)?;
            &own
        } else {
            h.file.as_ref().ok_or(VfsError::IsDir)?
        };
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or_else(|| VfsError::Invalid("fallocate range overflows".into()))?;
        let size = {
            let mut live = lock(&self.live);
            let l = live.get_mut(&h.id).ok_or(VfsError::BadHandle)?;
            if l.pass_writers > 0 {
                self.take_data_file_attrs(h.id, l);
            }
            l.size
        };
        self.blocks.check_disk_room(len)?;
        let before = f.metadata()?.len();
        // SAFETY: fallocate(2) on a descriptor this handle owns; the range was checked to fit
        // in an off_t above.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as i64, len as i64) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            // A reservation that ran out of room part way may have grown the file.
            if f.metadata().map(|m| m.len() != before).unwrap_or(true) {
                if let Err(e) = f.set_len(before) {
                    tracing::warn!(id = h.id.0, error = %e, "could not cut a data file back after a failed fallocate");
                }
            }
            return Err(VfsError::Io(err));
        }
        if end <= size {
            return Ok(());
        }
        let grown = self.setattr(
            h.id,
            &SetAttr {
                size: Some(end),
                ..Default::default()
            },
        );
        if grown.is_err() {
            // Nothing was committed: the data file goes back to its length.
            if let Err(e) = f.set_len(before) {
                tracing::warn!(id = h.id.0, error = %e, "could not cut a data file back after a failed fallocate");
            }
        }
        grown.map(|_| ())
    }
}
