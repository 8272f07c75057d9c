//! Links fuser's method calls to the filesystem core: each op translates, calls, replies.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::control::Control;
use crate::types::{EntryId, Kind, Special};
use crate::vfs::{Attr, PassthroughMode, SetAttr, Vfs, VfsError};

/// One span per request, so every line logged while serving it carries the request id, the
/// inode and the file handle (`STRATUS_LOG=debug` shows them; at the default level the span is
/// disabled and costs one check).
macro_rules! op_span {
    ($req:expr, $op:literal, $ino:expr, $fh:expr) => {
        tracing::debug_span!($op, req = $req.unique().0, ino = $ino.0, fh = $fh).entered()
    };
}

/// How long the kernel may trust attributes and names. Every change made through the mount
/// reaches the kernel with the op's own reply, and every change made elsewhere (the poller
/// taking a remote version, a conflict settled through an attribute) is invalidated
/// explicitly (`forward_invalidations`), so the TTL only bounds how long a lost invalidation
/// could show a stale name. At 1 s every name older than a second cost a `lookup` round trip
/// again (a `stat` after a burst of creates, `tar` revisiting its directories).
const TTL: Duration = Duration::from_secs(30);

pub struct StratusFs {
    vfs: Arc<Vfs>,
    control: Arc<Control>,
    view: View,
    backing: Backing,
}

/// The kernel's ids of the data files handed to it for passthrough: fuser's `BackingId`,
/// which the core must not see. The kernel wants one id per inode for all its open handles
/// (another id for the same inode fails the open with EIO), kept registered until each
/// handle's release.
#[derive(Default)]
struct Backing {
    ids: std::sync::Mutex<Backings>,
}

#[derive(Default)]
struct Backings {
    by_fh: std::collections::HashMap<u64, Arc<BackingId>>,
    by_ino: std::collections::HashMap<u64, std::sync::Weak<BackingId>>,
}

impl Backing {
    /// The id of `ino`'s data file for handle `fh`: the inode's if some handle holds one,
    /// else `register(file)`'s.
    fn get(
        &self,
        ino: u64,
        fh: u64,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let id = match ids.by_ino.get(&ino).and_then(|w| w.upgrade()) {
            Some(id) => id,
            None => {
                let id = Arc::new(register()?);
                ids.by_ino.insert(ino, Arc::downgrade(&id));
                id
            }
        };
        ids.by_fh.insert(fh, id.clone());
        Ok(id)
    }

    /// Handle `fh` was released: its id goes, and with the inode's last, the registration.
    fn release(&self, ino: u64, fh: u64) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.by_fh.remove(&fh).is_some()
            && ids.by_ino.get(&ino).is_some_and(|w| w.strong_count() == 0)
        {
            ids.by_ino.remove(&ino);
        }
    }
}

/// How the mount presents itself, from the mount options: read-only, and the owner and mode
/// mask every entry is shown with (`uid=`, `gid=`, `umask=`, as vfat and rclone do).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub read_only: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: u32,
    /// Open cached files in FUSE passthrough mode where the kernel allows it (asked for with
    /// `-o passthrough`).
    pub passthrough: bool,
}

impl View {
    fn attr(&self, a: &Attr) -> FileAttr {
        let mut f = fattr(a);
        f.uid = self.uid.unwrap_or(f.uid);
        f.gid = self.gid.unwrap_or(f.gid);
        f.perm &= !(self.umask as u16);
        f
    }
}

/// Answers EROFS to a change on a read-only mount. The kernel refuses most changes on an
/// `ro` mount before they get here; this holds for the rest (and whatever a future kernel
/// lets through), because such a mount must never change the local state either.
macro_rules! refuse_on_ro {
    ($self:expr, $reply:expr) => {
        if $self.view.read_only {
            $reply.error(Errno::EROFS);
            return;
        }
    };
}

impl StratusFs {
    /// Asks the kernel for passthrough, and says why the mount goes without it.
    fn passthrough_mode(&self, config: &mut KernelConfig) -> PassthroughMode {
        if !self.view.passthrough {
            return PassthroughMode::Off("not asked for: -o passthrough".into());
        }
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            // FUSE_DEV_IOC_BACKING_OPEN wants CAP_SYS_ADMIN.
            return PassthroughMode::Off(format!(
                "needs CAP_SYS_ADMIN (the mount runs as uid {euid}; mount as root for it)"
            ));
        }
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH) {
            tracing::debug!(?missing, "kernel lacks FUSE passthrough");
            return PassthroughMode::Off(
                "the kernel does not offer it (Linux 6.9 or later with CONFIG_FUSE_PASSTHROUGH)"
                    .into(),
            );
        }
        // 2: the data files may sit on a stacked filesystem (overlayfs, as in a container);
        // the price is that nothing may be stacked on this mount.
        if let Err(max) = config.set_max_stack_depth(2) {
            if let Err(e) = config.set_max_stack_depth(max) {
                return PassthroughMode::Off(format!("the kernel allows no stacking depth ({e})"));
            }
        }
        PassthroughMode::On
    }

    pub fn new(control: Arc<Control>, view: View) -> StratusFs {
        StratusFs {
            vfs: control.vfs().clone(),
            control,
            view,
            backing: Backing::default(),
        }
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Special(Special::Fifo) => FileType::NamedPipe,
        Kind::Special(Special::Socket) => FileType::Socket,
        Kind::Special(Special::CharDev(_)) => FileType::CharDevice,
        Kind::Special(Special::BlockDev(_)) => FileType::BlockDevice,
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev` in include/linux/kdev_t.h): minor
/// bits 0-7 and 20-31, major bits 8-19.
fn kernel_major(dev: u32) -> u32 {
    (dev & 0xfff00) >> 8
}

fn kernel_minor(dev: u32) -> u32 {
    (dev & 0xff) | ((dev >> 12) & 0xfff00)
}

/// `rdev` for the kernel, in the same encoding.
fn kernel_rdev(k: Kind) -> u32 {
    let dev = match k {
        Kind::Special(s) => s.rdev(),
        _ => return 0,
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: kernel_rdev(a.kind),
        blksize: 4096,
        flags: 0,
    }
}

/// Logs at the level the error deserves and gives the kernel its errno.
fn errno(op: &str, e: VfsError) -> Errno {
    if e.is_expected() {
        tracing::debug!(op, error = %e, "op failed");
    } else {
        tracing::warn!(op, error = %e, "op failed");
    }
    Errno::from_i32(e.errno())
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn ino(i: INodeNo) -> EntryId {
    EntryId(i.0)
}

impl Filesystem for StratusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open, so a file that is about to be emptied is not fetched
        // first (which would also fail while offline).
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::debug!(?missing, "kernel lacks atomic O_TRUNC");
        }
        // Listings carry attributes, so `ls -l` and `du` need no lookup per entry; "auto"
        // lets the kernel use plain READDIR where it would not use them.
        if let Err(missing) = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        ) {
            tracing::debug!(?missing, "kernel lacks READDIRPLUS");
        }
        self.vfs.set_passthrough(self.passthrough_mode(config));
        tracing::info!("mounted");
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = op_span!(req, "lookup", parent, None::<u64>);
        match self.vfs.lookup(ino(parent), name) {
            Ok(a) => reply.entry(&TTL, &self.view.attr(&a), Generation(0)),
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn getattr(&self, req: &Request, i: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = op_span!(req, "getattr", i, fh.map(|h| h.0));
        match self.vfs.getattr(ino(i)) {
            Ok(a) => reply.attr(&TTL, &self.view.attr(&a)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = op_span!(req, "setattr", i, fh.map(|h| h.0));
        refuse_on_ro!(self, reply);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.vfs.setattr(ino(i), &set) {
            Ok(a) => reply.attr(&TTL, &self.view.attr(&a)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, req: &Request, i: INodeNo, reply: ReplyData) {
        let _op = op_span!(req, "readlink", i, None::<u64>);
        match self.vfs.readlink(ino(i)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = op_span!(req, "mknod", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        // The kernel hands the device number in its own encoding (`new_encode_dev`); stored
        // as the `dev_t` glibc's `makedev` builds, it is the same number for every reader.
        let rdev = libc::makedev(kernel_major(rdev), kernel_minor(rdev));
        match self.vfs.mknod(
            ino(parent),
            name,
            mode & (libc::S_IFMT | !umask),
            rdev,
            req.uid(),
            req.gid(),
        ) {
            Ok(a) => reply.entry(&TTL, &self.view.attr(&a), Generation(0)),
            Err(e) => reply.error(errno("mknod", e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = op_span!(req, "mkdir", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        match self
            .vfs
            .mkdir(ino(parent), name, mode & !umask, req.uid(), req.gid())
        {
            Ok(a) => reply.entry(&TTL, &self.view.attr(&a), Generation(0)),
            Err(e) => reply.error(errno("mkdir", e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op_span!(req, "unlink", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        match self.vfs.unlink(ino(parent), name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = op_span!(req, "rmdir", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        match self.vfs.rmdir(ino(parent), name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _op = op_span!(req, "symlink", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        match self.vfs.symlink(
            ino(parent),
            link_name,
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        ) {
            Ok(a) => reply.entry(&TTL, &self.view.attr(&a), Generation(0)),
            Err(e) => reply.error(errno("symlink", e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "rename", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            tracing::warn!(
                ?flags,
                "rename exchange/whiteout is not supported; answering EINVAL"
            );
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .vfs
            .rename(ino(parent), name, ino(newparent), newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = op_span!(req, "link", i, None::<u64>);
        refuse_on_ro!(self, reply);
        match self.vfs.link(ino(i), ino(newparent), newname) {
            Ok(a) => reply.entry(&TTL, &self.view.attr(&a), Generation(0)),
            Err(e) => reply.error(errno("link", e)),
        }
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = op_span!(req, "open", i, None::<u64>);
        let writable = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        if writable {
            refuse_on_ro!(self, reply);
        }
        let truncate = writable && flags.0 & libc::O_TRUNC != 0;
        match self.vfs.open_with(ino(i), writable, truncate, true) {
            Ok(o) => {
                let flags = if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                if let Some(file) = &o.backing {
                    match self.backing.get(i.0, o.fh, || reply.open_backing(file)) {
                        // No FOPEN_KEEP_CACHE: the kernel (6.18) answers EIO to an open
                        // that asks for passthrough and to keep a page cache it does not use.
                        Ok(id) => {
                            return reply.opened_passthrough(
                                FileHandle(o.fh),
                                FopenFlags::empty(),
                                &id,
                            )
                        }
                        Err(e) => self.vfs.passthrough_refused(o.fh, &e.to_string()),
                    }
                }
                reply.opened(FileHandle(o.fh), flags)
            }
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = op_span!(req, "read", i, Some(fh.0));
        match self.vfs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno("read", e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = op_span!(req, "write", i, Some(fh.0));
        refuse_on_ro!(self, reply);
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "flush", i, Some(fh.0));
        reply.ok();
    }

    fn release(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "release", i, Some(fh.0));
        let r = self.vfs.release(fh.0);
        self.backing.release(i.0, fh.0);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("release", e)),
        }
    }

    fn fsync(&self, req: &Request, i: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _op = op_span!(req, "fsync", i, Some(fh.0));
        match self.vfs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        }
    }

    fn opendir(&self, req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = op_span!(req, "opendir", i, None::<u64>);
        match self.vfs.opendir(ino(i)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = op_span!(req, "readdir", i, Some(fh.0));
        let listing = match self.vfs.readdir(fh.0, ino(i), offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdir", e)),
        };
        for (n, d) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(d.ino),
                (n + 1) as u64,
                kind(d.kind),
                OsStr::from_bytes(&d.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = op_span!(req, "readdirplus", i, Some(fh.0));
        let listing = match self.vfs.readdir(fh.0, ino(i), offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdirplus", e)),
        };
        for (n, d) in listing.iter().enumerate().skip(offset as usize) {
            // Attributes as of this reply, not of the listing: the kernel takes them as
            // fresh, and a file may have been written since the listing was taken.
            let Ok(attr) = self.vfs.getattr(EntryId(d.ino)) else {
                continue;
            };
            if reply.add(
                INodeNo(d.ino),
                (n + 1) as u64,
                OsStr::from_bytes(&d.name),
                &TTL,
                &self.view.attr(&attr),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "releasedir", i, Some(fh.0));
        let _ = self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "fsyncdir", i, Some(fh.0));
        match self.vfs.store().make_durable() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", e.into())),
        }
    }

    fn statfs(&self, req: &Request, i: INodeNo, reply: ReplyStatfs) {
        let _op = op_span!(req, "statfs", i, None::<u64>);
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "setxattr", i, None::<u64>);
        refuse_on_ro!(self, reply);
        match self.control.setxattr(ino(i), name.as_bytes(), value) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("setxattr", e)),
        }
    }

    fn getxattr(&self, req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = op_span!(req, "getxattr", i, None::<u64>);
        reply_xattr(self.control.getxattr(ino(i), name.as_bytes()), size, reply);
    }

    fn listxattr(&self, req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = op_span!(req, "listxattr", i, None::<u64>);
        reply_xattr(self.control.listxattr(ino(i)), size, reply);
    }

    fn removexattr(&self, req: &Request, i: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _op = op_span!(req, "removexattr", i, None::<u64>);
        match self.vfs.getattr(ino(i)) {
            Ok(_) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(errno("removexattr", e)),
        }
    }

    fn access(&self, req: &Request, i: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _op = op_span!(req, "access", i, None::<u64>);
        // Permission checks are the kernel's (default_permissions); this only says it exists.
        match self.vfs.getattr(ino(i)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno("access", e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _op = op_span!(req, "fallocate", i, Some(fh.0));
        refuse_on_ro!(self, reply);
        match self.vfs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fallocate", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = op_span!(req, "create", parent, None::<u64>);
        refuse_on_ro!(self, reply);
        match self.vfs.create_with(
            ino(parent),
            name,
            mode & !umask & 0o7777,
            req.uid(),
            req.gid(),
            true,
        ) {
            Ok((a, o)) => {
                let attr = self.view.attr(&a);
                if let Some(file) = &o.backing {
                    match self.backing.get(a.ino, o.fh, || reply.open_backing(file)) {
                        Ok(id) => {
                            return reply.created_passthrough(
                                &TTL,
                                &attr,
                                Generation(0),
                                FileHandle(o.fh),
                                FopenFlags::empty(),
                                &id,
                            )
                        }
                        Err(e) => self.vfs.passthrough_refused(o.fh, &e.to_string()),
                    }
                }
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(o.fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(errno("create", e)),
        }
    }
}

/// Hands the sync engine's invalidations to the kernel, from a thread of its own: a notify
/// sent from inside a request handler can deadlock the session.
pub fn forward_invalidations(
    notifier: fuser::Notifier,
    rx: std::sync::mpsc::Receiver<crate::types::Invalidation>,
) {
    std::thread::Builder::new()
        .name("stratus-notify".into())
        .spawn(move || {
            for inv in rx {
                // ENOENT means the kernel holds nothing to forget: fine.
                let r = match &inv {
                    crate::types::Invalidation::Entry { parent, name } => {
                        notifier.inval_entry(INodeNo(parent.0), OsStr::from_bytes(name))
                    }
                    crate::types::Invalidation::Inode(id) => {
                        notifier.inval_inode(INodeNo(id.0), 0, 0)
                    }
                };
                if let Err(e) = r {
                    tracing::trace!(?inv, error = %e, "invalidation not delivered");
                }
            }
        })
        .expect("spawning the notify thread");
}

fn reply_xattr(r: Result<Vec<u8>, VfsError>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::from_i32(libc::ERANGE)),
        Err(e) => reply.error(errno("xattr", e)),
    }
}
