//! A plain folder as the remote: files stay files, directories stay directories, symlinks stay
//! symlinks, and mode, owner and mtime are the file's own attributes.
//!
//! object_store's `LocalFileSystem` refuses object metadata and conditional updates, so this
//! backend writes the folder itself. Every write lands in a temporary sibling that is fsync'd
//! and renamed over the target, so another reader never sees half a file.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{Cond, ConflictMark, Meta, ObjectInfo, ObjectKind, RemoteError, RemoteResult, Written};

const TEMP_PREFIX: &str = ".stratus-tmp-";
/// Held (flock) around each compare-then-write, so that stratus mounts sharing one folder
/// see an atomic conditional write; other programs do not take it.
const LOCK_NAME: &str = ".stratus-lock";
const SHA_XATTR: &str = "user.stratus_sha256";
/// Who wrote the file, and a `.conflict` copy's mark (`remote::ConflictMark`).
const WRITER_XATTR: &str = "user.stratus_writer";
const CONFLICT_XATTR: &str = "user.stratus_conflict";
/// A fifo, socket or device node is an empty regular file carrying its type and device
/// number, as on every other backend: a real one in the folder could not be read by a scan
/// (a fifo blocks its reader), and a device node needs root to make.
const TYPE_XATTR: &str = "user.stratus_type";
const RDEV_XATTR: &str = "user.stratus_rdev";
/// A hard link's group (`Meta::link`).
const LINK_XATTR: &str = "user.stratus_link";

pub struct LocalRemote {
    root: PathBuf,
}

/// The folder-wide write lock; dropping it unlocks.
struct WriteLock(#[allow(dead_code)] fs::File);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path, e: io::Error) -> RemoteError {
    match e.kind() {
        io::ErrorKind::NotFound => RemoteError::NotFound(path.display().to_string()),
        io::ErrorKind::PermissionDenied => {
            RemoteError::Permanent(format!("{}: {e}", path.display()))
        }
        _ => match e.raw_os_error() {
            Some(libc::ENAMETOOLONG) | Some(libc::EINVAL) | Some(libc::EILSEQ) => {
                RemoteError::Permanent(format!("{}: {e}", path.display()))
            }
            // A full or vanished disk under the remote folder may recover: keep retrying.
            _ => RemoteError::unavailable(format!("{}: {e}", path.display())),
        },
    }
}

fn etag_of(m: &fs::Metadata) -> String {
    format!(
        "{:x}-{:x}-{:x}",
        m.ino(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.size()
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> RemoteResult<T> + Send + 'static,
) -> RemoteResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::unavailable(format!("worker thread failed: {e}")))?
}

impl LocalRemote {
    pub fn new(root: PathBuf) -> LocalRemote {
        LocalRemote { root }
    }

    /// A closure that takes the write lock, to move into a blocking task.
    fn lock_fn(&self) -> impl Fn() -> RemoteResult<WriteLock> + Send + 'static {
        let root = self.root.clone();
        move || LocalRemote::new(root.clone()).lock()
    }

    fn lock(&self) -> RemoteResult<WriteLock> {
        root_present(&self.root)?;
        let path = self.root.join(LOCK_NAME);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(io_err(&path, io::Error::last_os_error()));
        }
        Ok(WriteLock(f))
    }

    fn path(&self, key: &str) -> PathBuf {
        if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }

    pub fn max_key_len(&self) -> usize {
        (libc::PATH_MAX as usize).saturating_sub(self.root.as_os_str().len() + 2)
    }

    pub fn check_name(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }

    pub async fn check(&self) -> RemoteResult<()> {
        let root = self.root.clone();
        blocking(move || match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(RemoteError::Permanent(format!(
                "{} is not a directory",
                root.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RemoteError::unavailable(
                format!("remote folder {} does not exist", root.display()),
            )),
            Err(e) => Err(io_err(&root, e)),
        })
        .await
    }

    pub async fn scan(&self) -> RemoteResult<Vec<ObjectInfo>> {
        let root = self.root.clone();
        root_present(&root)?;
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![(root.clone(), String::new())];
            while let Some((dir, prefix)) = stack.pop() {
                let rd = fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
                for ent in rd {
                    let ent = ent.map_err(|e| io_err(&dir, e))?;
                    let name = ent.file_name();
                    let Some(name) = name.to_str() else {
                        tracing::warn!(path = %ent.path().display(), "skipping remote name that is not UTF-8");
                        continue;
                    };
                    if name.starts_with(TEMP_PREFIX) || (prefix.is_empty() && name == LOCK_NAME) {
                        continue;
                    }
                    let key = if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}/{name}")
                    };
                    let path = ent.path();
                    let m = match fs::symlink_metadata(&path) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(&path, e)),
                    };
                    if m.is_dir() {
                        stack.push((path.clone(), key.clone()));
                    }
                    match info_of(&path, key, &m)? {
                        Some(o) => out.push(o),
                        None => {
                            tracing::warn!(path = %path.display(), "skipping special file in remote folder")
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn head(&self, key: &str, dir: bool) -> RemoteResult<Option<ObjectInfo>> {
        let path = self.path(key);
        let key = key.to_string();
        root_present(&self.root)?;
        blocking(move || match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() == dir => info_of(&path, key, &m),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        })
        .await
    }

    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> RemoteResult<bytes::Bytes> {
        let src = self.path(key);
        let if_match = if_match.map(str::to_string);
        let root = self.root.clone();
        let got = blocking(move || {
            root_present(&root)?;
            let f = fs::File::open(&src).map_err(|e| io_err(&src, e))?;
            let m = f.metadata().map_err(|e| io_err(&src, e))?;
            if if_match.as_ref().is_some_and(|want| etag_of(&m) != *want) {
                return Err(RemoteError::Conflict(src.display().to_string()));
            }
            let end = range.end.min(m.size());
            let mut buf = vec![0u8; end.saturating_sub(range.start) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, range.start)
                .map_err(|e| io_err(&src, e))?;
            // Checked again after the read: another program may rewrite the file in place
            // (`open(O_TRUNC)`, write) while we read it, and a write updates the mtime before
            // its bytes land. (Regression: a read through the mount returned a blend of the
            // old and the new content, 1 run in ~10 under load.)
            let after = f.metadata().map_err(|e| io_err(&src, e))?;
            if etag_of(&after) != etag_of(&m) {
                return Err(RemoteError::Conflict(src.display().to_string()));
            }
            Ok(bytes::Bytes::from(buf))
        })
        .await?;
        // A folder is read at disk speed; the limit applies to what was read.
        super::bwlimit::pace_down(got.len() as u64).await;
        Ok(got)
    }

    pub async fn download(&self, key: &str, dest: &Path) -> RemoteResult<u64> {
        let src = self.path(key);
        let dest = dest.to_path_buf();
        let root = self.root.clone();
        let n = blocking(move || {
            root_present(&root)?;
            let mut from = fs::File::open(&src).map_err(|e| io_err(&src, e))?;
            let before = from.metadata().map_err(|e| io_err(&src, e))?;
            let mut to = fs::File::create(&dest).map_err(RemoteError::Io)?;
            let n = io::copy(&mut from, &mut to).map_err(|e| io_err(&src, e))?;
            // As in `get_range`: a file rewritten in place while we copied it is no version.
            let after = from.metadata().map_err(|e| io_err(&src, e))?;
            if etag_of(&after) != etag_of(&before) {
                return Err(RemoteError::unavailable(format!(
                    "{}: changed while it was read",
                    src.display()
                )));
            }
            Ok(n)
        })
        .await?;
        super::bwlimit::pace_down(n).await;
        Ok(n)
    }

    pub async fn upload_file(
        &self,
        key: &str,
        src: &Path,
        size: u64,
        meta: &Meta,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        let dest = self.path(key);
        let src = src.to_path_buf();
        let meta = meta.clone();
        let cond = cond.clone();
        let lock = self.lock_fn();
        // The copy runs at disk speed; under a limit the file pays for its bytes first.
        super::bwlimit::pace_up(size).await;
        blocking(move || {
            let tmp = temp_beside(&dest)?;
            let r = (|| {
                let mut from = fs::File::open(&src).map_err(RemoteError::Io)?;
                let mut to = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
                io::copy(&mut from, &mut to).map_err(|e| io_err(&tmp, e))?;
                to.flush().map_err(|e| io_err(&tmp, e))?;
                apply_meta(&tmp, &meta, false)?;
                if let Some(h) = &meta.sha256 {
                    set_sha_xattr(&tmp, h);
                }
                set_extra_xattrs(&tmp, &meta);
                to.sync_all().map_err(|e| io_err(&tmp, e))?;
                let _lock = lock()?;
                precheck(&dest, &cond)?;
                replace(&tmp, &dest)
            })();
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r
        })
        .await
    }

    pub async fn put_symlink(&self, key: &str, meta: &Meta, cond: &Cond) -> RemoteResult<Written> {
        let dest = self.path(key);
        let meta = meta.clone();
        let cond = cond.clone();
        let lock = self.lock_fn();
        blocking(move || {
            let _lock = lock()?;
            precheck(&dest, &cond)?;
            let tmp = temp_beside(&dest)?;
            if let Some(special) = meta.special {
                let r = (|| {
                    let f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
                    set_special_xattrs(&tmp, special)?;
                    apply_meta(&tmp, &meta, false)?;
                    f.sync_all().map_err(|e| io_err(&tmp, e))?;
                    replace(&tmp, &dest)
                })();
                if r.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                return r;
            }
            let target = meta.symlink.clone().unwrap_or_default();
            std::os::unix::fs::symlink(&target, &tmp).map_err(|e| io_err(&tmp, e))?;
            let r = apply_meta(&tmp, &meta, true).and_then(|_| replace(&tmp, &dest));
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r
        })
        .await
    }

    pub async fn put_dir(&self, key: &str, meta: &Meta) -> RemoteResult<Written> {
        root_present(&self.root)?;
        let dest = self.path(key);
        let meta = meta.clone();
        blocking(move || {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(RemoteError::Permanent(format!(
                        "{} exists and is not a directory",
                        dest.display()
                    )))
                }
                Err(_) => fs::create_dir_all(&dest).map_err(|e| io_err(&dest, e))?,
            }
            apply_meta(&dest, &meta, false)?;
            let m = fs::metadata(&dest).map_err(|e| io_err(&dest, e))?;
            Ok(Written {
                etag: Some(etag_of(&m)),
                version: None,
            })
        })
        .await
    }

    /// Copies `from` to `to` while `from` still holds `source` and `to` satisfies `cond`,
    /// both compared under the folder's lock (atomic between stratus mounts; another program
    /// writing in between wins, see docs/semantics.md).
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        source: Option<&str>,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        let src = self.path(from);
        let dest = self.path(to);
        let lock = self.lock_fn();
        let source = source.map(str::to_string);
        let cond = cond.clone();
        let from = from.to_string();
        blocking(move || {
            let _lock = lock()?;
            let m = match fs::symlink_metadata(&src) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(RemoteError::NotFound(from))
                }
                Err(e) => return Err(io_err(&src, e)),
            };
            if source.as_ref().is_some_and(|want| *want != etag_of(&m)) {
                return Err(RemoteError::Conflict(from));
            }
            precheck(&dest, &cond)?;
            let sha256 = get_sha_xattr(&src);
            // A file another program rewrote in place keeps our attributes: believe them
            // only while our stamped hash still holds.
            let ours = sha256.is_some() || m.file_type().is_symlink();
            let meta = Meta {
                mtime_ns: Some(m.mtime() * 1_000_000_000 + m.mtime_nsec()),
                mode: Some(m.mode() & 0o7777),
                uid: Some(m.uid()),
                gid: Some(m.gid()),
                sha256,
                symlink: None,
                special: None,
                link: ours.then(|| get_xattr(&src, LINK_XATTR)).flatten(),
                writer: ours.then(|| get_xattr(&src, WRITER_XATTR)).flatten(),
                conflict: ours
                    .then(|| get_xattr(&src, CONFLICT_XATTR))
                    .flatten()
                    .and_then(|v| ConflictMark::decode(&v))
                    .map(Box::new),
            };
            let tmp = temp_beside(&dest)?;
            let r = (|| {
                if m.file_type().is_symlink() {
                    let t = fs::read_link(&src).map_err(|e| io_err(&src, e))?;
                    std::os::unix::fs::symlink(t, &tmp).map_err(|e| io_err(&tmp, e))?;
                    apply_meta(&tmp, &meta, true)?;
                } else {
                    let mut from = fs::File::open(&src).map_err(|e| io_err(&src, e))?;
                    let mut out = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
                    io::copy(&mut from, &mut out).map_err(|e| io_err(&tmp, e))?;
                    apply_meta(&tmp, &meta, false)?;
                    if let Some(h) = &meta.sha256 {
                        set_sha_xattr(&tmp, h);
                    }
                    set_extra_xattrs(&tmp, &meta);
                    out.sync_all().map_err(|e| io_err(&tmp, e))?;
                }
                replace(&tmp, &dest)
            })();
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r
        })
        .await
    }

    pub async fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        let p = self.path(key);
        let expect = expect.map(str::to_string);
        let lock = self.lock_fn();
        blocking(move || {
            let _lock = lock()?;
            if let (Some(want), false) = (&expect, dir) {
                if let Ok(m) = fs::symlink_metadata(&p) {
                    if !m.is_dir() && etag_of(&m) != *want {
                        return Err(RemoteError::Conflict(p.display().to_string()));
                    }
                }
            }
            // A key of the other kind (a directory where a file was, or the reverse) is not
            // ours to delete.
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() != dir => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                _ => {}
            }
            let r = if dir {
                fs::remove_dir(&p)
            } else {
                fs::remove_file(&p)
            };
            match r {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    // Something we never knew about lives there: leave it rather than lose it.
                    tracing::warn!(path = %p.display(), "remote directory not empty; left in place");
                    Ok(())
                }
                Err(e) => Err(io_err(&p, e)),
            }
        })
        .await
    }
}

impl super::Backend for LocalRemote {
    fn max_key_len(&self) -> usize {
        LocalRemote::max_key_len(self)
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        LocalRemote::check_name(self, name)
    }

    fn check(&self) -> BoxFuture<'_, RemoteResult<()>> {
        Box::pin(LocalRemote::check(self))
    }

    fn scan(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(LocalRemote::scan(self))
    }

    /// A folder's walk reads every file's attributes anyway (`list` is `scan`).
    fn listing_has_meta(&self) -> bool {
        true
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>> {
        Box::pin(LocalRemote::head(self, key, dir))
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: std::ops::Range<u64>,
        if_match: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<bytes::Bytes>> {
        Box::pin(LocalRemote::get_range(self, key, range, if_match))
    }

    fn download<'a>(&'a self, key: &'a str, dest: &'a Path) -> BoxFuture<'a, RemoteResult<u64>> {
        Box::pin(LocalRemote::download(self, key, dest))
    }

    fn upload_file<'a>(
        &'a self,
        key: &'a str,
        src: &'a Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(LocalRemote::upload_file(self, key, src, size, meta, cond))
    }

    fn put_symlink<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(LocalRemote::put_symlink(self, key, meta, cond))
    }

    fn put_dir<'a>(&'a self, key: &'a str, meta: &'a Meta) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(LocalRemote::put_dir(self, key, meta))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(LocalRemote::copy(self, from, to, source, cond))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>> {
        Box::pin(LocalRemote::delete(self, key, dir, expect))
    }
}

/// A missing remote folder is an unplugged disk or an unmounted share: wait for it (and
/// never recreate it by writing below it).
fn root_present(root: &Path) -> RemoteResult<()> {
    if root.is_dir() {
        Ok(())
    } else {
        Err(RemoteError::unavailable(format!(
            "remote folder {} is missing",
            root.display()
        )))
    }
}

/// What a scan or a head reports for one path; `None` for special files.
fn info_of(path: &Path, key: String, m: &fs::Metadata) -> RemoteResult<Option<ObjectInfo>> {
    let ft = m.file_type();
    let (kind, symlink) = if ft.is_dir() {
        (ObjectKind::Dir, None)
    } else if ft.is_symlink() {
        let t = fs::read_link(path).map_err(|e| io_err(path, e))?;
        (ObjectKind::Symlink, Some(t.to_string_lossy().into_owned()))
    } else if ft.is_file() {
        // An empty file with our type mark; written into since, it is a file again.
        match get_special(path).filter(|_| m.size() == 0) {
            Some(s) => (ObjectKind::Special(s), None),
            None => (ObjectKind::File, None),
        }
    } else {
        return Ok(None);
    };
    let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    let sha256 = if kind == ObjectKind::File {
        get_sha_xattr(path)
    } else {
        None
    };
    // A file rewritten in place by another program keeps its xattrs; only a hash that is
    // still valid says it is still the linked inode's content.
    let link = sha256.as_ref().and_then(|_| get_xattr(path, LINK_XATTR));
    Ok(Some(ObjectInfo {
        key,
        kind,
        size: if kind == ObjectKind::File {
            m.size()
        } else {
            0
        },
        etag: Some(etag_of(m)),
        version: None,
        last_modified_ns: Some(mtime_ns),
        meta: Meta {
            mtime_ns: Some(mtime_ns),
            mode: Some(m.mode() & 0o7777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            sha256: sha256.clone(),
            symlink,
            special: match kind {
                ObjectKind::Special(s) => Some(s),
                _ => None,
            },
            link,
            // A file another program rewrote in place keeps our attributes: believe them
            // only while our stamped hash still holds.
            writer: sha256
                .is_some()
                .then(|| get_xattr(path, WRITER_XATTR))
                .flatten(),
            conflict: sha256
                .is_some()
                .then(|| get_xattr(path, CONFLICT_XATTR))
                .flatten()
                .and_then(|v| ConflictMark::decode(&v))
                .map(Box::new),
        },
    }))
}

/// A folder cannot condition a rename, so the check runs just before it; another program
/// writing the same path in between wins the race (docs/semantics.md).
fn precheck(dest: &Path, cond: &Cond) -> RemoteResult<()> {
    let meta = fs::symlink_metadata(dest).ok();
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(RemoteError::Permanent(format!(
            "{} is a directory in the remote folder",
            dest.display()
        )));
    }
    let current = meta.map(|m| etag_of(&m));
    if cond.admits(current.as_deref()) {
        Ok(())
    } else {
        Err(RemoteError::Conflict(dest.display().to_string()))
    }
}

fn temp_beside(dest: &Path) -> RemoteResult<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id())))
}

fn replace(tmp: &Path, dest: &Path) -> RemoteResult<Written> {
    if let Ok(m) = fs::symlink_metadata(dest) {
        if m.is_dir() {
            return Err(RemoteError::Permanent(format!(
                "{} is a directory in the remote folder",
                dest.display()
            )));
        }
    }
    fs::rename(tmp, dest).map_err(|e| io_err(dest, e))?;
    let m = fs::symlink_metadata(dest).map_err(|e| io_err(dest, e))?;
    Ok(Written {
        etag: Some(etag_of(&m)),
        version: None,
    })
}

fn apply_meta(path: &Path, meta: &Meta, symlink: bool) -> RemoteResult<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RemoteError::Permanent(format!("{}: NUL in path", path.display())))?;
    if meta.uid.is_some() || meta.gid.is_some() {
        let uid = meta.uid.map(|u| u as libc::uid_t).unwrap_or(u32::MAX);
        let gid = meta.gid.map(|g| g as libc::gid_t).unwrap_or(u32::MAX);
        // SAFETY: plain syscall on a NUL-terminated path. Failure (not root) is expected and
        // harmless: the file keeps our owner.
        unsafe { libc::lchown(c.as_ptr(), uid, gid) };
    }
    if !symlink {
        if let Some(mode) = meta.mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_err(path, e))?;
        }
    }
    if let Some(ns) = meta.mtime_ns {
        let t = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
        let ts = libc::timespec {
            tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
        };
        let times = [ts, ts];
        let flags = if symlink {
            libc::AT_SYMLINK_NOFOLLOW
        } else {
            0
        };
        // SAFETY: `times` holds two valid timespecs; the path is NUL-terminated.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) };
        if r != 0 {
            tracing::debug!(path = %path.display(), time = ?t, "could not set mtime in remote folder");
        }
    }
    Ok(())
}

/// What a stored hash applies to: mtime and size when it was written. Another program that
/// rewrites the file in place keeps the inode and its xattrs, so a hash without a matching
/// stamp is stale and ignored.
fn stamp(m: &fs::Metadata) -> String {
    format!(
        "{:x}-{:x}",
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.size()
    )
}

/// Records the content hash of `path`; call once its mtime and size are final.
fn set_sha_xattr(path: &Path, hash: &str) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let Ok(m) = fs::symlink_metadata(path) else {
        return;
    };
    let value = format!("{hash} {}", stamp(&m));
    let name = CString::new(SHA_XATTR).expect("static name");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length. Filesystems
    // without user xattrs simply do not keep the hash.
    unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
}

fn set_special_xattrs(path: &Path, special: super::Special) -> RemoteResult<()> {
    // Unlike the hash, the type is the object itself: a folder that cannot keep it would
    // turn the fifo into a plain empty file, so the write fails instead.
    for (name, value) in [
        (TYPE_XATTR, special.name().to_string()),
        (RDEV_XATTR, super::rdev_text(special.rdev())),
    ] {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| RemoteError::Permanent(format!("{}: NUL in path", path.display())))?;
        let n = CString::new(name).expect("constant name");
        // SAFETY: NUL-terminated path and name; the value pointer and length describe `value`.
        let r = unsafe {
            libc::setxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            return Err(RemoteError::Permanent(format!(
                "{}: the remote folder cannot keep a special file's type ({name}): {}",
                path.display(),
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

fn get_special(path: &Path) -> Option<super::Special> {
    let t = get_xattr(path, TYPE_XATTR)?;
    let rdev = get_xattr(path, RDEV_XATTR)
        .and_then(|r| super::parse_rdev(&r))
        .unwrap_or(0);
    super::Special::parse(&t, rdev)
}

/// The writer and the conflict mark, as plain xattrs (kept only where the filesystem keeps
/// user xattrs, like the hash).
fn set_extra_xattrs(path: &Path, meta: &Meta) {
    if let Some(w) = &meta.writer {
        set_xattr(path, WRITER_XATTR, w);
    }
    if let Some(c) = &meta.conflict {
        set_xattr(path, CONFLICT_XATTR, &c.encode());
    }
    if let Some(l) = &meta.link {
        set_xattr(path, LINK_XATTR, l);
    }
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    let (Ok(c), Ok(name)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
}

fn get_xattr(path: &Path, name: &str) -> Option<String> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: the buffer outlives the call and its length is passed.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok()
}

fn get_sha_xattr(path: &Path) -> Option<String> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(SHA_XATTR).ok()?;
    let mut buf = [0u8; 160];
    // SAFETY: the buffer outlives the call and its length is passed.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    let value = String::from_utf8(buf[..n as usize].to_vec()).ok()?;
    let m = fs::symlink_metadata(path).ok()?;
    match value.split_once(' ') {
        Some((hash, st)) if st == stamp(&m) => Some(hash.to_string()),
        _ => None,
    }
}

/// SHA-256 of a file, hex-encoded.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
