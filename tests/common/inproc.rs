//! The core of a mount in-process, without FUSE: store, block cache, VFS and sync engine over
//! a local-folder remote (or any `Remote`: in memory, behind injected faults), wired by the
//! daemon's own `CoreBuilder`. Calls go straight to `Vfs`, the way `fuse.rs` makes them, so a
//! test can run thousands of cases in seconds; the real-mount suites stay the proof on real
//! servers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stratus::daemon::CoreBuilder;
use stratus::remote::{Remote, RemoteUrl};
use stratus::store::Store;
use stratus::sync::{ConflictPolicy, SyncConfig};
use stratus::types::{EntryId, Keep, Kind};
use stratus::vfs::{SetAttr, Vfs, VfsConfig, VfsError};

/// Files by path, with their content.
pub type Files = BTreeMap<String, Vec<u8>>;

pub struct Core {
    pub state: PathBuf,
    remote_dir: PathBuf,
    pub vfs: Arc<Vfs>,
    core: stratus::daemon::Core,
}

fn parts(path: &str) -> (Option<&str>, &str) {
    match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    }
}

impl Core {
    /// Starts the core on `state` (new or left by an earlier `Core`) over the folder `remote`.
    pub fn start(state: &Path, remote_dir: &Path) -> Core {
        let url = RemoteUrl::Local(remote_dir.to_path_buf());
        let remote = Remote::open(&url, &[]).unwrap();
        let mut core = Core::start_with(state, &url.canonical(), remote);
        core.remote_dir = remote_dir.to_path_buf();
        core
    }

    /// Starts the core on `state` over any remote (`Remote::memory`, `Remote::faulty`); the
    /// test keeps its own handle to that remote.
    pub fn start_on(state: &Path, remote: Remote) -> Core {
        Core::start_with(state, "memory://in-process", remote)
    }

    /// Starts the core on `state` over `remote`, which the state dir records as `identity`.
    fn start_with(state: &Path, identity: &str, remote: Remote) -> Core {
        // `STRATUS_LOG=debug cargo test ...` shows the core's log on stderr.
        if let Ok(filter) = std::env::var("STRATUS_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
        std::fs::create_dir_all(state).unwrap();
        let parts = CoreBuilder::open_on(state, identity, || Ok(remote)).unwrap();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let sync_cfg = SyncConfig {
            default_uid: uid,
            default_gid: gid,
            // Polls only when asked (`drain`), as `--poll-interval 0` mounts do.
            poll_interval: None,
            policy: ConflictPolicy::Manual,
            writer: "core-test".into(),
            user_quiet: Duration::ZERO,
        };
        parts.populate(&sync_cfg).unwrap();
        let vfs_cfg = VfsConfig {
            write_back: Duration::ZERO,
            default_uid: uid,
            default_gid: gid,
            fetch_timeout: Duration::from_secs(30),
            cache_budget: 64 << 20,
            disk_reserve: 0,
            quota: None,
        };
        let core = parts.start(vfs_cfg, sync_cfg, None).unwrap();
        Core {
            state: state.to_path_buf(),
            remote_dir: PathBuf::new(),
            vfs: core.vfs().clone(),
            core,
        }
    }

    /// Stops the sync engine (a job it was running stays queued) and lets go of the state dir,
    /// as an unmount does; `start` on the same dirs is the next mount.
    pub fn stop(mut self) -> (PathBuf, PathBuf) {
        self.halt();
        (self.state.clone(), self.remote_dir.clone())
    }

    fn halt(&mut self) {
        self.core.stop_sync(None);
    }

    pub fn store(&self) -> &Arc<Store> {
        self.vfs.store()
    }

    /// The entry at `path` (`""` is the root), or the error a lookup gives.
    pub fn resolve(&self, path: &str) -> Result<EntryId, VfsError> {
        let mut id = EntryId::ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            id = EntryId(self.vfs.lookup(id, OsStr::new(name))?.ino);
        }
        Ok(id)
    }

    fn parent_of(&self, path: &str) -> Result<(EntryId, String), VfsError> {
        let (dir, name) = parts(path);
        Ok((self.resolve(dir.unwrap_or(""))?, name.to_string()))
    }

    /// `mkdir -p`.
    pub fn mkdirs(&self, path: &str) -> Result<(), VfsError> {
        let mut id = EntryId::ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            id = match self.vfs.lookup(id, OsStr::new(name)) {
                Ok(a) => EntryId(a.ino),
                Err(VfsError::NotFound) => {
                    match self.vfs.mkdir(id, OsStr::new(name), 0o755, 0, 0) {
                        Ok(a) => EntryId(a.ino),
                        // A poll brought the directory in meanwhile: `mkdir -p` takes it.
                        Err(VfsError::Exists) => {
                            EntryId(self.vfs.lookup(id, OsStr::new(name))?.ino)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
        }
        Ok(())
    }

    /// Creates or replaces the file's content and fsyncs it, as `write` + `fsync` + `close`.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), VfsError> {
        let (parent, name) = self.parent_of(path)?;
        let fh = match self.vfs.lookup(parent, OsStr::new(&name)) {
            Ok(a) => self.vfs.open(EntryId(a.ino), true, true)?.0,
            Err(VfsError::NotFound) => {
                let (uid, gid) = self.vfs.default_owner();
                self.vfs
                    .create(parent, OsStr::new(&name), 0o644, uid, gid)?
                    .1
            }
            Err(e) => return Err(e),
        };
        let r = (|| {
            let mut off = 0;
            while off < data.len() {
                off += self.vfs.write(fh, off as u64, &data[off..])? as usize;
            }
            self.vfs.fsync(fh, false)
        })();
        self.vfs.release(fh)?;
        r
    }

    pub fn truncate(&self, path: &str, len: u64) -> Result<(), VfsError> {
        let id = self.resolve(path)?;
        let fh = self.vfs.open(id, true, false)?.0;
        let r = self
            .vfs
            .setattr(
                id,
                &SetAttr {
                    size: Some(len),
                    ..Default::default()
                },
            )
            .and_then(|_| self.vfs.fsync(fh, false));
        self.vfs.release(fh)?;
        r
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, VfsError> {
        self.read_entry(self.resolve(path)?)
    }

    fn read_entry(&self, id: EntryId) -> Result<Vec<u8>, VfsError> {
        let fh = self.vfs.open(id, false, false)?.0;
        let mut out = Vec::new();
        let r = loop {
            match self.vfs.read(fh, out.len() as u64, 1 << 20) {
                Ok(b) if b.is_empty() => break Ok(()),
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => break Err(e),
            }
        };
        self.vfs.release(fh)?;
        r.map(|_| out)
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<(), VfsError> {
        let (p, n) = self.parent_of(from)?;
        let (np, nn) = self.parent_of(to)?;
        self.vfs
            .rename(p, OsStr::new(&n), np, OsStr::new(&nn), false)
    }

    pub fn unlink(&self, path: &str) -> Result<(), VfsError> {
        let (p, n) = self.parent_of(path)?;
        self.vfs.unlink(p, OsStr::new(&n))
    }

    pub fn rmdir(&self, path: &str) -> Result<(), VfsError> {
        let (p, n) = self.parent_of(path)?;
        self.vfs.rmdir(p, OsStr::new(&n))
    }

    pub fn mkdir(&self, path: &str) -> Result<(), VfsError> {
        let (p, n) = self.parent_of(path)?;
        self.vfs.mkdir(p, OsStr::new(&n), 0o755, 0, 0).map(|_| ())
    }

    /// Every file (path → content) and directory the core serves, walked through the VFS.
    pub fn tree(&self) -> Result<(Files, BTreeSet<String>), VfsError> {
        self.walk(false)
    }

    /// `tree` without the files that cannot be read now because their data is not cached
    /// here and the remote cannot be reached (offline): what a user offline can open.
    pub fn cached_tree(&self) -> Result<(Files, BTreeSet<String>), VfsError> {
        self.walk(true)
    }

    fn walk(&self, cached_only: bool) -> Result<(Files, BTreeSet<String>), VfsError> {
        let mut files = Files::new();
        let mut dirs = BTreeSet::new();
        let mut todo = vec![(EntryId::ROOT, String::new())];
        while let Some((id, path)) = todo.pop() {
            let fh = self.vfs.opendir(id)?;
            let listing = self.vfs.readdir(fh, id, 0);
            self.vfs.releasedir(fh)?;
            for e in listing?.iter() {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let name = String::from_utf8_lossy(&e.name).into_owned();
                let p = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                match e.kind {
                    Kind::Dir => {
                        dirs.insert(p.clone());
                        todo.push((EntryId(e.ino), p));
                    }
                    // By the listed entry, not its path: the uploader runs meanwhile, and a
                    // conflict may have put another entry at the path since the listing.
                    Kind::File => match self.read_entry(EntryId(e.ino)) {
                        Ok(data) => {
                            files.insert(p, data);
                        }
                        Err(VfsError::Remote(e)) if cached_only && e.is_transient() => {}
                        Err(e) => return Err(e),
                    },
                    Kind::Symlink | Kind::Special(_) => {}
                }
            }
        }
        Ok((files, dirs))
    }

    /// Turns offline mode on or off, as `stratus offline` does.
    pub fn offline(&self, on: bool) {
        stratus::control::Control::new(self.vfs.clone(), "core-test".into())
            .setxattr(
                EntryId::ROOT,
                stratus::control::OFFLINE.as_bytes(),
                if on { b"1" } else { b"0" },
            )
            .unwrap();
    }

    /// Asks for a sync and waits until every job that can run has run and a poll that
    /// started after the call has finished, as `stratus sync --wait` does: jobs that poll
    /// queues (a conflict copy to upload) run before the queue is empty again.
    pub fn drain(&self) -> Result<(), String> {
        self.drain_asking_every(None)
    }

    /// `drain`, asking for the sync again every `again` until it is done, as a user repeats
    /// `stratus sync`: a job or poll that failed is retried at once instead of after its
    /// backoff (half a second and more), which a test of thousands of faulty cases cannot
    /// wait out.
    pub fn drain_asking_every(&self, again: Option<Duration>) -> Result<(), String> {
        let control = stratus::control::Control::new(self.vfs.clone(), "core-test".into());
        let (started_before, _) = self.polls();
        let ask = || {
            control
                .setxattr(EntryId::ROOT, stratus::control::SYNC.as_bytes(), b"1")
                .map_err(|e| e.to_string())
        };
        ask()?;
        let mut asked = Instant::now();
        let mut empty_at = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if again.is_some_and(|d| asked.elapsed() >= d) {
                ask()?;
                asked = Instant::now();
            }
            let q = self
                .store()
                .read(|db| db.queue_stats())
                .map_err(|e| e.to_string())?;
            let drained = q.entries == q.parked;
            if again.is_some() {
                // Asking again, the poll that ends the wait starts once the queue is empty:
                // one that ran while a job waited out a failure saw the remote before that
                // job settled what it found there.
                empty_at = match (drained, empty_at) {
                    (false, _) => None,
                    (true, None) => {
                        let at = self.polls().0;
                        ask()?;
                        asked = Instant::now();
                        Some(at)
                    }
                    (true, at) => at,
                };
            }
            if drained && self.polls().1 > empty_at.unwrap_or(started_before) {
                if q.parked > 0 {
                    return Err(format!("{} jobs parked: {:?}", q.parked, q.last_error));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("queue did not drain: {q:?}"));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Polls of the remote started and completed.
    fn polls(&self) -> (u64, u64) {
        self.vfs.remote().health().polls()
    }

    /// Keeps both versions of every open conflict (`stratus resolve --keep both`); how many.
    pub fn keep_all(&self) -> Result<usize, VfsError> {
        let open: Vec<_> = self
            .store()
            .read(|db| db.conflicts())?
            .into_iter()
            .filter(|c| c.resolved_ms.is_none())
            .collect();
        for c in &open {
            self.vfs.resolve(EntryId(c.copy_id), Keep::Both)?;
        }
        Ok(open.len())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.halt();
    }
}
