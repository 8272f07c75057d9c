//! FUSE passthrough, the core's side: which opens may hand the kernel the data file to read
//! and write directly, what the core learns back at fsync and close, and the mode the mount
//! is in. The FUSE adapter registers the file with the kernel (`fuse.rs`); nothing here
//! knows FUSE.
//!
//! What the kernel still sends with a handle in passthrough mode: flush, fsync, release,
//! getattr, setattr (truncate), fallocate. Reads, writes, splice and mmap go to the data
//! file. So the core arms the upload at open for writing (as at a first write), takes size
//! and mtime from the data file while such a handle is open, and at the last close.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::{lock, Handle, Live, Vfs, VfsResult};
use crate::store::{dirty, Entry};
use crate::types::EntryId;

/// A writer's file must have this much room on the state dir's disk above the floor every
/// write keeps (`BlockCache::check_disk_room`) to pass through: the kernel's writes are not
/// checked one by one, so the floor holds only while the file grows by less than this.
const PASS_WRITE_ROOM: u64 = 1 << 30;

/// fcntl's F_SETSIG (asm-generic/fcntl.h), which the libc crate does not define.
const F_SETSIG: libc::c_int = 10;

/// How often a handle whose release waits for a writable mapping checks again.
const LINGER_CHECK: Duration = Duration::from_millis(100);

/// Whether the mount opens files in passthrough mode, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassthroughMode {
    On,
    Off(String),
}

/// The passthrough figures `stratus status` shows.
#[derive(Debug, Clone, Default)]
pub struct PassthroughReport {
    pub on: bool,
    /// Why it is off (the option, the kernel, a refusal).
    pub reason: Option<String>,
    /// Handles opened in passthrough mode since the mount.
    pub opens: u64,
    /// Reads and writes that reached the core (FUSE ops, not bytes): a passthrough handle
    /// sends none.
    pub reads: u64,
    pub writes: u64,
}

/// What an open gives the FUSE adapter.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the file's page cache (`FOPEN_KEEP_CACHE`).
    pub keep_cache: bool,
    /// The data file, for the kernel to read and write directly: reply in passthrough mode
    /// with it, or, if the kernel refuses it, tell [`Vfs::passthrough_refused`].
    pub backing: Option<File>,
}

/// A file the kernel may still write without the core's knowledge.
#[derive(Clone)]
pub(super) enum Lingering {
    /// Closed while a writable mapping of its data file lived on.
    Handle(Arc<Handle>),
    /// Held open for writing through a file the kernel opened for the previous run of the
    /// daemon (its writes still reach the data file after that daemon died).
    Orphan(EntryId),
}

impl Lingering {
    fn id(&self) -> EntryId {
        match self {
            Lingering::Handle(h) => h.id,
            Lingering::Orphan(id) => *id,
        }
    }

    fn same(&self, other: &Lingering) -> bool {
        match (self, other) {
            (Lingering::Handle(a), Lingering::Handle(b)) => Arc::ptr_eq(a, b),
            (Lingering::Orphan(a), Lingering::Orphan(b)) => a == b,
            _ => false,
        }
    }
}

/// The passthrough state of one mount, owned by the core.
pub(super) struct State {
    mode: Mutex<PassthroughMode>,
    opens: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    /// Files whose close waits for the kernel to stop writing their data file (`linger`).
    lingering: Mutex<Vec<Lingering>>,
    wake: Condvar,
}

impl Default for State {
    fn default() -> State {
        State {
            mode: Mutex::new(PassthroughMode::Off("not mounted through FUSE".into())),
            opens: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            lingering: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }
    }
}

impl State {
    pub(super) fn is_on(&self) -> bool {
        *lock(&self.mode) == PassthroughMode::On
    }

    pub(super) fn count_open(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether some file description other than the daemon's read-only ones has the data file at
/// `path` open for writing: a read lease is refused (EAGAIN) exactly then. The lease lives
/// for two system calls; should an open for writing break it meanwhile, the kernel signals
/// SIGWINCH (ignored by default), not SIGIO (which would end the daemon).
fn open_for_writing_elsewhere(path: &std::path::Path) -> bool {
    File::open(path).is_ok_and(|f| written_elsewhere(&f))
}

/// [`open_for_writing_elsewhere`] through `f`, a read-only descriptor of the data file.
fn written_elsewhere(f: &File) -> bool {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        libc::fcntl(fd, F_SETSIG, libc::SIGWINCH);
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            return false;
        }
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EAGAIN) {
        return true;
    }
    tracing::debug!(error = %err, "cannot tell whether a data file is still mapped for writing");
    false
}

/// Watches the handles whose release waits for a writable mapping (`Vfs::linger`), and
/// finishes each once nothing writes to its data file any more.
pub(super) fn spawn_linger_watch(vfs: Weak<Vfs>) {
    let spawned = std::thread::Builder::new()
        .name("stratus-linger".into())
        .spawn(move || loop {
            let Some(v) = vfs.upgrade() else { return };
            let waiting: Vec<Lingering> = {
                let list = lock(&v.passthrough.lingering);
                let (list, _) = v
                    .passthrough
                    .wake
                    .wait_timeout_while(list, Duration::from_secs(1), |l| l.is_empty())
                    .unwrap_or_else(|e| e.into_inner());
                list.clone()
            };
            if waiting.is_empty() {
                continue;
            }
            drop(v);
            std::thread::sleep(LINGER_CHECK);
            let Some(v) = vfs.upgrade() else { return };
            for l in waiting {
                let id = l.id();
                if open_for_writing_elsewhere(&v.cache.path(id)) {
                    continue;
                }
                lock(&v.passthrough.lingering).retain(|x| !x.same(&l));
                tracing::debug!(
                    id = id.0,
                    "nothing writes the data file any more; closing it"
                );
                let r = match &l {
                    Lingering::Handle(h) => v.finish_release(h),
                    Lingering::Orphan(id) => v.finish_orphan(*id),
                };
                if let Err(e) = r {
                    tracing::warn!(id = id.0, error = %e, "closing a passthrough file failed");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the passthrough mapping watch");
    }
}

impl Vfs {
    /// Sets the mode the mount is in (the FUSE adapter, at init), logged once.
    pub fn set_passthrough(&self, mode: PassthroughMode) {
        match &mode {
            PassthroughMode::On => tracing::info!(
                "passthrough on: cached files are read and written by the kernel directly"
            ),
            PassthroughMode::Off(why) => tracing::info!(reason = %why, "passthrough off"),
        }
        *lock(&self.passthrough.mode) = mode;
    }

    pub fn passthrough_report(&self) -> PassthroughReport {
        let p = &self.passthrough;
        let (on, reason) = match &*lock(&p.mode) {
            PassthroughMode::On => (true, None),
            PassthroughMode::Off(why) => (false, Some(why.clone())),
        };
        PassthroughReport {
            on,
            reason,
            opens: p.opens.load(Ordering::Relaxed),
            reads: p.reads.load(Ordering::Relaxed),
            writes: p.writes.load(Ordering::Relaxed),
        }
    }

    /// The kernel refused the backing file of `fh` (the FUSE adapter could not register
    /// it): the handle goes on the core's path, and the mount stops trying (one warn line).
    pub fn passthrough_refused(&self, fh: u64, why: &str) {
        let was_on = {
            let mut mode = lock(&self.passthrough.mode);
            let on = *mode == PassthroughMode::On;
            *mode = PassthroughMode::Off(format!("the kernel refused it: {why}"));
            on
        };
        if was_on {
            tracing::warn!(reason = %why, "the kernel refused passthrough; files are read and written through the daemon");
        }
        let Ok(h) = self.handle(fh) else { return };
        if !h.passthrough {
            return;
        }
        let file = if h.writable {
            self.cache.open_file(h.id, false).ok()
        } else {
            File::open(self.cache.path(h.id)).ok()
        };
        {
            let mut live = lock(&self.live);
            if let Some(l) = live.get_mut(&h.id) {
                l.pass = l.pass.saturating_sub(1);
                l.plain += 1;
                if h.writable {
                    l.pass_writers = l.pass_writers.saturating_sub(1);
                }
            }
        }
        self.blocks.set_passthrough(h.id, false);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                id: h.id,
                file: file.or_else(|| h.file.as_ref().and_then(|f| f.try_clone().ok())),
                writable: h.writable,
                passthrough: false,
                last_end: AtomicU64::new(u64::MAX),
                listing: Mutex::new(None),
            }),
        );
    }

    /// Whether a new file written from scratch may pass through: the mount uses
    /// passthrough and the disk has room to spare (see [`PASS_WRITE_ROOM`]).
    pub(super) fn may_pass_write(&self) -> bool {
        self.passthrough.is_on() && self.blocks.has_room(PASS_WRITE_ROOM)
    }

    /// Whether the data of `e` allows a passthrough handle (the caller holds its gate):
    /// wholly here, and for a writer, about to be uploaded whole anyway (see
    /// [`Vfs::open_with`]).
    pub(super) fn may_pass_data(
        &self,
        e: &Entry,
        writable: bool,
        truncate: bool,
    ) -> VfsResult<bool> {
        if !self.passthrough.is_on() {
            return Ok(false);
        }
        if writable {
            let whole_upload = truncate
                || e.size == 0
                || e.synced.key.is_none()
                || e.dirty & dirty::CONTENT != 0 && !self.blocks.changes().knows(e.id);
            return Ok(e.local && whole_upload && self.blocks.has_room(PASS_WRITE_ROOM));
        }
        if e.local {
            return Ok(true);
        }
        let n = e.size.div_ceil(crate::cache::BLOCK_SIZE);
        Ok(self
            .blocks
            .with_present(e.id, |set| set.iter().filter(|i| **i < n).count() as u64)?
            >= n)
    }

    /// Size and mtime of a file some passthrough handle writes: the data file's (the
    /// kernel writes it without telling the core). Called with the `live` lock held.
    pub(super) fn take_data_file_attrs(&self, id: EntryId, l: &mut Live) {
        if let Some((size, mtime)) = self.data_file_attrs(id) {
            l.size = size;
            l.mtime_ns = mtime;
        }
    }

    pub(super) fn data_file_attrs(&self, id: EntryId) -> Option<(u64, i64)> {
        let m = std::fs::metadata(self.cache.path(id)).ok()?;
        Some((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
    }

    /// At the last close of a passthrough writer: if a writable shared mapping of the file
    /// outlived it (`mmap`, then `close`, then writes through the mapping, a common idiom),
    /// the kernel still writes the data file, and the close is finished only once the
    /// mapping is gone (checked every [`LINGER_CHECK`]): until then the file counts as open
    /// for writing, its upload held, as with FUSE's own page cache, where the release comes
    /// after the mapping goes. True if the handle waits.
    pub(super) fn linger(&self, h: &Arc<Handle>) -> bool {
        let last = lock(&self.live)
            .get(&h.id)
            .is_some_and(|l| l.pass_writers <= 1);
        if !last {
            return false;
        }
        // The handle's own descriptor is read-only (see `Handle::file`): it does not count.
        let written = match &h.file {
            Some(f) => written_elsewhere(f),
            None => open_for_writing_elsewhere(&self.cache.path(h.id)),
        };
        if !written {
            return false;
        }
        tracing::debug!(
            id = h.id.0,
            "data file still open for writing after the last close; waiting"
        );
        lock(&self.passthrough.lingering).push(Lingering::Handle(h.clone()));
        self.passthrough.wake.notify_all();
        true
    }

    /// At mount, for a file the previous run left armed: if the kernel still writes its data
    /// file through a file opened for that run (a passthrough handle outlives its daemon,
    /// and its writes still land), the upload stays held and the file counts as open (the
    /// poller leaves it alone) until that file is closed. True if it does.
    pub(super) fn hold_orphan_writer(&self, id: EntryId) -> VfsResult<bool> {
        if !open_for_writing_elsewhere(&self.cache.path(id)) {
            return Ok(false);
        }
        self.store.write(|db| db.set_ready(id, None))?;
        self.blocks.opened(id);
        tracing::warn!(
            id = id.0,
            "a program still writes this file through a descriptor opened before the daemon stopped; its upload waits until that is closed"
        );
        lock(&self.passthrough.lingering).push(Lingering::Orphan(id));
        self.passthrough.wake.notify_all();
        Ok(true)
    }

    /// The kernel no longer writes a file `hold_orphan_writer` held: its size and mtime
    /// come from the data file, and its upload (whole) goes after the write-back delay.
    fn finish_orphan(&self, id: EntryId) -> VfsResult<()> {
        self.blocks.changes().untracked_change(id);
        if let (Some((size, mtime)), Some(e)) =
            (self.data_file_attrs(id), self.store.read(|db| db.get(id))?)
        {
            let ready = self.ready_at();
            self.w(|db| {
                db.set_size_mtime(id, size, mtime.max(e.mtime_ns))?;
                db.set_ready(id, Some(ready))?;
                Ok(())
            })?;
        }
        if self.blocks.closed(id).retire {
            self.blocks.hand_over(id);
        }
        Ok(())
    }
}
