//! Builds and starts the core of a mount (state database, block cache, remote, VFS and sync
//! engine): the one wiring the daemon and the in-process tests share.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cache::{FileCache, FileGate};
use crate::remote::{ObjectInfo, ObjectKind, Remote, RemoteUrl};
use crate::store::Store;
use crate::sync::{populate, Engine, Poller, SyncConfig, SyncError};
use crate::types::Invalidation;
use crate::vfs::{Vfs, VfsConfig};

/// The parts of a core, opened but not serving: the daemon checks the remote and fills a new
/// state dir through them before it starts the core.
pub struct CoreBuilder {
    rt: tokio::runtime::Runtime,
    store: Arc<Store>,
    cache: FileCache,
    remote: Arc<Remote>,
    identity: String,
}

impl CoreBuilder {
    /// Opens the state database in `state_dir` (refusing one that belongs to another remote),
    /// the block cache, the async runtime and the remote.
    pub fn open(
        state_dir: &Path,
        remote: &RemoteUrl,
        options: &[(String, String)],
    ) -> anyhow::Result<CoreBuilder> {
        let identity = remote.canonical();
        CoreBuilder::open_on(state_dir, &identity, || {
            Remote::open(remote, options).map_err(anyhow::Error::msg)
        })
    }

    /// [`CoreBuilder::open`] over a remote made by `remote` (in-process tests: memory, behind
    /// faults), recorded in the state dir as `identity`.
    pub fn open_on(
        state_dir: &Path,
        identity: &str,
        remote: impl FnOnce() -> anyhow::Result<Remote>,
    ) -> anyhow::Result<CoreBuilder> {
        // SQLite creates the database 0644 and gives its -wal and -shm files the database's
        // mode: created 0600 first, all three stay private.
        let db = state_dir.join("state.db");
        std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create(true),
            0o600,
        )
        .open(&db)
        .with_context(|| format!("creating {}", db.display()))?;
        let store = Arc::new(Store::open(&db)?);
        let identity = identity.to_string();
        match store.read(|db| db.meta_get("remote"))? {
            Some(r) if r != identity => bail!(
                "state dir {} belongs to remote {r}, not {identity}",
                state_dir.display()
            ),
            Some(_) => {}
            None => store.write(|db| db.meta_set("remote", &identity))?,
        }
        let cache = FileCache::open(state_dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("stratus-io")
            .build()
            .context("starting the async runtime")?;
        let remote = Arc::new(remote()?);
        Ok(CoreBuilder {
            rt,
            store,
            cache,
            remote,
            identity,
        })
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn cache(&self) -> &FileCache {
        &self.cache
    }

    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// The remote as the state dir records it (`RemoteUrl::canonical`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Fills a new state dir with the remote tree; a state dir filled before is left as it is.
    pub fn populate(&self, cfg: &SyncConfig) -> anyhow::Result<()> {
        if self.store.read(|db| db.meta_get("populated"))?.is_some() {
            return Ok(());
        }
        tracing::info!(remote = %self.identity, "listing the remote");
        let started = std::time::Instant::now();
        // A listing, no HEADs: the metadata a listing lacks is read once the mount is live
        // (`sync::MetaReader`), so a bucket of any size mounts in the time of its listing.
        let mut objects = self
            .rt
            .block_on(self.remote.list())
            .with_context(|| format!("listing {}", self.identity))?;
        let listed = started.elapsed();
        let complete = self.remote.listing_has_meta();
        let mut headed = std::collections::HashSet::new();
        if !complete {
            // A `.conflict` copy records its open conflict in its metadata: those few are
            // read before the mount is live, so `stratus conflicts` shows the conflict at once.
            for o in objects.iter_mut().filter(|o| {
                o.kind == ObjectKind::File
                    && o.key
                        .rsplit('/')
                        .next()
                        .is_some_and(|n| n.contains(".conflict-"))
            }) {
                let h = self
                    .rt
                    .block_on(self.remote.head(&o.key, false))
                    .with_context(|| format!("reading the metadata of {}", o.key))?;
                if let Some(h) = h {
                    *o = ObjectInfo {
                        last_modified_ns: o.last_modified_ns,
                        ..h
                    };
                    headed.insert(o.key.clone());
                }
            }
        }
        let n = populate(&self.store, &objects, cfg, |o| {
            complete || headed.contains(&o.key)
        })?;
        drop(objects);
        tracing::info!(
            entries = n,
            listing_secs = listed.as_secs_f64(),
            secs = started.elapsed().as_secs_f64(),
            "state dir filled from the remote's listing"
        );
        Ok(())
    }

    /// Starts the core: the VFS takes back the writes a previous run left, and the sync
    /// engine runs on the runtime until [`Core::stop_sync`]. Invalidations go to `notices`.
    pub fn start(
        self,
        vfs_cfg: VfsConfig,
        sync_cfg: SyncConfig,
        notices: Option<std::sync::mpsc::Sender<Invalidation>>,
    ) -> anyhow::Result<Core> {
        let vfs = Arc::new(Vfs::new(
            self.store.clone(),
            self.cache.clone(),
            self.remote.clone(),
            self.rt.handle().clone(),
            vfs_cfg,
        ));
        let held = vfs.recover()?;
        vfs.start();
        if let Some(n) = &notices {
            vfs.set_notices(n.clone());
        }
        if held > 0 {
            tracing::info!(entries = held, "recovered writes from the previous run");
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        // The sync engine reaches the block cache's data files only through this gate.
        let files: Arc<dyn FileGate> = vfs.clone();
        let engine = Engine::new(
            self.store,
            self.cache,
            files,
            self.remote,
            sync_cfg,
            notices,
        );
        let poller = engine.poller();
        let reader = engine.meta_reader(self.rt.handle().clone());
        let source: Arc<dyn crate::types::MetaSource> = reader.clone();
        vfs.set_meta_source(Arc::downgrade(&source));
        self.rt.spawn(reader.run(stop_rx.clone()));
        let engine = self.rt.spawn(engine.run(stop_rx));
        Ok(Core {
            rt: self.rt,
            vfs,
            _reader: source,
            poller,
            stop,
            engine: Some(engine),
        })
    }
}

/// A running core: the VFS serves calls (FUSE's, or a test's), the sync engine runs.
/// Dropped, it drops its runtime, which cancels the engine where it stands; stop it first
/// ([`Core::stop_sync`], [`Core::shutdown`]) to leave the journal tidy.
pub struct Core {
    rt: tokio::runtime::Runtime,
    vfs: Arc<Vfs>,
    /// The metadata reader the VFS reaches (weakly) for entries a listing alone made.
    _reader: Arc<dyn crate::types::MetaSource>,
    poller: Arc<Poller>,
    stop: tokio::sync::watch::Sender<bool>,
    engine: Option<tokio::task::JoinHandle<()>>,
}

impl Core {
    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// The remote, with its health and the offline switch.
    pub fn remote(&self) -> &Arc<Remote> {
        self.vfs.remote()
    }

    pub fn store(&self) -> &Arc<Store> {
        self.vfs.store()
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Polls the remote once now, outside the engine's schedule (after any poll in progress).
    pub fn poll(&self) -> Result<(), SyncError> {
        self.rt.block_on(self.poller.poll())
    }

    /// Stops the sync engine and waits for it, at most `within` (a job it was running stays
    /// queued). Later calls do nothing.
    pub fn stop_sync(&mut self, within: Option<Duration>) {
        let _ = self.stop.send(true);
        if let Some(engine) = self.engine.take() {
            match within {
                Some(d) => {
                    // The timer is made inside the runtime: `timeout` made outside it
                    // panicked ("no reactor running"), so every unmount ended in a panic
                    // (exit 101) before the runtime was shut down.
                    let _ = self
                        .rt
                        .block_on(async { tokio::time::timeout(d, engine).await });
                }
                None => {
                    let _ = self.rt.block_on(engine);
                }
            }
        }
    }

    /// Stops the sync engine (waiting at most `within`), then the runtime.
    pub fn shutdown(mut self, within: Duration) {
        self.stop_sync(Some(within));
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}
