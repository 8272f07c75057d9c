//! Real mounts for tests: a fresh remote (a local folder, a bucket on a moto S3 server, a
//! container on Azurite, or a bucket on the in-repo GCS test server),
//! the built `stratus` binary mounting it, and a view of what landed on the remote that does
//! not go through the mount.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use stratus::remote::Meta;

use super::azurite::Azurite;
use super::gcs::GcsServer;
use super::moto::Moto;

pub const BIN: &str = env!("CARGO_BIN_EXE_stratus");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
    Azure,
    Gcs,
}

/// One moto server per test binary; every test gets its own bucket on it. It is started
/// from a thread that never ends, so that it dies with the test process (PR_SET_PDEATHSIG
/// fires when the starting thread exits, and test threads end with their test).
fn moto() -> Arc<Moto> {
    static MOTO: OnceLock<Arc<Moto>> = OnceLock::new();
    MOTO.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Arc::new(Moto::start()));
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("starting moto")
    })
    .clone()
}

/// One Azurite per test binary, started like `moto()`.
fn azurite() -> Arc<Azurite> {
    static AZURITE: OnceLock<Arc<Azurite>> = OnceLock::new();
    AZURITE
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Arc::new(Azurite::start()));
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("starting azurite")
        })
        .clone()
}

/// One GCS test server (scripts/gcs_server.py) per test binary, started like `moto()`.
fn gcs_server() -> Arc<GcsServer> {
    static GCS: OnceLock<Arc<GcsServer>> = OnceLock::new();
    GCS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Arc::new(GcsServer::start(false)));
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("starting the gcs server")
    })
    .clone()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjKind {
    File,
    Dir,
    Symlink,
}

/// One object on the remote as another tool would see it.
#[derive(Debug, Clone)]
pub struct RemoteObj {
    pub kind: ObjKind,
    pub data: Vec<u8>,
    pub meta: Meta,
}

pub struct Env {
    pub backend: Backend,
    pub tmp: tempfile::TempDir,
    /// The remote folder (Local) or unused.
    pub root: PathBuf,
    pub bucket: String,
    pub moto: Option<Arc<Moto>>,
    pub azurite: Option<Arc<Azurite>>,
    pub gcs: Option<Arc<GcsServer>>,
    /// Where stratus talks to S3 (the moto endpoint, or a proxy in front of it).
    pub endpoint: Mutex<String>,
}

impl Env {
    pub fn new(backend: Backend) -> Env {
        Env::build(backend, None, None)
    }

    /// A GCS remote on a server of the test's own (one started with flags the shared server
    /// does not have, such as `--ignore-preconditions`).
    pub fn on_gcs_server(server: Arc<GcsServer>) -> Env {
        Env::build(Backend::Gcs, None, Some(server))
    }

    /// An S3 remote on a moto server of the test's own (see `on_gcs_server`).
    pub fn on_moto(server: Arc<Moto>) -> Env {
        Env::build(Backend::S3, Some(server), None)
    }

    /// An S3 remote on a moto server of the test's own, in a bucket of a given name (one the
    /// server was started with, `MOTO_SEED`).
    pub fn on_moto_bucket(server: Arc<Moto>, bucket: &str) -> Env {
        let mut env = Env::build(Backend::S3, Some(server), None);
        env.bucket = bucket.to_string();
        env.moto.as_ref().expect("S3 backend").create_bucket(bucket);
        env
    }

    /// A local-folder remote and state dirs under `base` (the in-process tests put them on
    /// tmpfs, where an fsync costs nothing).
    pub fn local_in(base: &Path) -> Env {
        let mut env = Env::build(Backend::Local, None, None);
        env.tmp = tempfile::tempdir_in(base).expect("temp dir");
        env.root = env.tmp.path().join("remote");
        std::fs::create_dir(&env.root).unwrap();
        env
    }

    fn build(
        backend: Backend,
        own_moto: Option<Arc<Moto>>,
        own_gcs: Option<Arc<GcsServer>>,
    ) -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = tmp.path().join("remote");
        std::fs::create_dir(&root).unwrap();
        let bucket = format!("bucket-{}-{n}", std::process::id());
        let moto = (backend == Backend::S3).then(|| {
            let m = own_moto.clone().unwrap_or_else(moto);
            m.create_bucket(&bucket);
            m
        });
        let azurite = (backend == Backend::Azure).then(|| {
            let a = azurite();
            a.create_container(&bucket);
            a
        });
        let gcs = (backend == Backend::Gcs).then(|| {
            let g = own_gcs.clone().unwrap_or_else(gcs_server);
            g.create_bucket(&bucket);
            g
        });
        let endpoint = moto
            .as_ref()
            .map(|m| m.endpoint.clone())
            .or(azurite.as_ref().map(|a| a.endpoint.clone()))
            .or(gcs.as_ref().map(|g| g.endpoint.clone()))
            .unwrap_or_default();
        Env {
            backend,
            tmp,
            root,
            bucket,
            moto,
            azurite,
            gcs,
            endpoint: Mutex::new(endpoint),
        }
    }

    pub fn set_endpoint(&self, e: &str) {
        *self.endpoint.lock().unwrap() = e.to_string();
    }

    pub fn remote_url(&self) -> String {
        match self.backend {
            Backend::Local => self.root.display().to_string(),
            Backend::S3 => format!("s3://{}/data", self.bucket),
            Backend::Azure => format!("az://{}/data", self.bucket),
            Backend::Gcs => format!("gs://{}/data", self.bucket),
        }
    }

    fn prefix(&self) -> &'static str {
        "data/"
    }

    pub fn envs(&self) -> Vec<(String, String)> {
        let endpoint = self.endpoint.lock().unwrap().clone();
        vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), endpoint.clone()),
            // object_store skips OAuth for a key with `disable_oauth`, and sends everything
            // to its `gcs_base_url` (see tests/common/gcs.rs).
            (
                "GOOGLE_SERVICE_ACCOUNT_KEY".into(),
                super::gcs::service_account_key(&endpoint),
            ),
            ("STRATUS_LOG".into(), "stratus=debug,info".into()),
        ]
    }

    pub fn stratus(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args);
        for (k, v) in self.envs() {
            c.env(k, v);
        }
        c.output().expect("run stratus")
    }

    /// A new, empty state dir under this test's temp dir.
    pub fn new_state_dir(&self) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = self.tmp.path().join(format!("state-{n}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn new_mountpoint(&self) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = self.tmp.path().join(format!("mnt-{n}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts with a fresh state dir; panics with the daemon's reason if it fails.
    pub fn mount(&self) -> Mount {
        self.mount_state(&self.new_state_dir())
    }

    /// [`Env::mount`], then waits until the metadata a first mount's listing lacked (S3, GCS:
    /// modes, times, symlinks, special files, hard links) has been read in the background.
    pub fn mount_read(&self) -> Mount {
        let m = self.mount();
        if matches!(self.backend, Backend::S3 | Backend::Gcs) {
            assert!(
                eventually(30, || !m
                    .log_lines_with("metadata of the listed entries read")
                    .is_empty()),
                "the metadata was not read within 30 s"
            );
        }
        m
    }

    pub fn mount_state(&self, state: &Path) -> Mount {
        self.try_mount(state, &["--write-back", "0.2"])
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    pub fn try_mount(&self, state: &Path, extra: &[&str]) -> Result<Mount, String> {
        let mp = self.new_mountpoint();
        let url = self.remote_url();
        let mut args = vec![
            "mount",
            url.as_str(),
            mp.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = self.stratus(&args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Mount {
            dir: mp,
            state: state.to_path_buf(),
            envs: self.envs(),
            mounted: true,
            mount_stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn s3(&self) -> AmazonS3 {
        let m = self.moto.as_ref().expect("S3 backend");
        AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&m.endpoint)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// A client of our own for the test's container (account key and explicit endpoint, so
    /// it does not depend on the environment the daemon gets).
    fn azure(&self) -> MicrosoftAzure {
        let a = self.azurite.as_ref().expect("Azure backend");
        MicrosoftAzureBuilder::new()
            .with_account(super::azurite::ACCOUNT)
            .with_access_key(super::azurite::KEY)
            .with_container_name(&self.bucket)
            .with_endpoint(format!("{}/{}", a.endpoint, super::azurite::ACCOUNT))
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// object_store's GCS client of the test's bucket, straight to the server.
    fn gcs_client(&self) -> GoogleCloudStorage {
        let g = self.gcs.as_ref().expect("GCS backend");
        GoogleCloudStorageBuilder::new()
            .with_bucket_name(&self.bucket)
            .with_service_account_key(g.service_account_key())
            .build()
            .unwrap()
    }

    /// Plain signed requests to the test's bucket, for keys object_store cannot address.
    fn raw(&self) -> super::raw::S3 {
        super::raw::S3 {
            endpoint: self.moto.as_ref().expect("S3 backend").endpoint.clone(),
            bucket: self.bucket.clone(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Everything on the remote, keyed by path relative to the mount root.
    pub fn remote_tree(&self) -> BTreeMap<String, RemoteObj> {
        match self.backend {
            Backend::Local => {
                let mut out = BTreeMap::new();
                walk_local(&self.root, "", &mut out);
                out
            }
            Backend::S3 => {
                let rt = Env::rt();
                let raw = self.raw();
                let s3 = self.s3();
                rt.block_on(async {
                    let mut out = BTreeMap::new();
                    for o in raw.list(self.prefix()).await {
                        let rel = o.key[self.prefix().len()..].to_string();
                        let meta =
                            Meta::from_pairs(o.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                        if let Some(d) = rel.strip_suffix('/') {
                            out.insert(
                                d.to_string(),
                                RemoteObj {
                                    kind: ObjKind::Dir,
                                    data: vec![],
                                    meta,
                                },
                            );
                            continue;
                        }
                        let Ok(path) = ObjPath::parse(&o.key) else {
                            // A key object_store cannot address (`a//b`): listed, not read.
                            out.insert(
                                rel,
                                RemoteObj {
                                    kind: ObjKind::File,
                                    data: vec![],
                                    meta,
                                },
                            );
                            continue;
                        };
                        let data = s3.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
                        let kind = if meta.symlink.is_some() {
                            ObjKind::Symlink
                        } else {
                            ObjKind::File
                        };
                        out.insert(rel, RemoteObj { kind, data, meta });
                    }
                    out
                })
            }
            Backend::Azure => {
                let az = self.azure();
                // object_store's listing fails whole on a name its Path rejects (`a//b`).
                let container_url = format!(
                    "{}/{}/{}",
                    self.azurite.as_ref().unwrap().endpoint,
                    super::azurite::ACCOUNT,
                    self.bucket
                );
                Env::rt().block_on(async {
                    let mut out = BTreeMap::new();
                    let blobs = super::raw::azure_list(
                        &container_url,
                        super::azurite::ACCOUNT,
                        super::azurite::KEY,
                        self.prefix(),
                    )
                    .await;
                    for b in blobs {
                        let rel = b.name[self.prefix().len()..].to_string();
                        let parsed = ObjPath::parse(&b.name)
                            .ok()
                            .filter(|_| !b.name.ends_with('/'));
                        let Some(location) = parsed else {
                            // A name object_store cannot address: listed, not read.
                            let kind = if b.folder {
                                ObjKind::Dir
                            } else {
                                ObjKind::File
                            };
                            let meta = Meta::default();
                            out.insert(
                                rel,
                                RemoteObj {
                                    kind,
                                    data: vec![],
                                    meta,
                                },
                            );
                            continue;
                        };
                        let got = az.get(&location).await.unwrap();
                        let attrs = got.attributes.clone();
                        let data = got.bytes().await.unwrap().to_vec();
                        let pairs: Vec<(String, String)> = attrs
                            .iter()
                            .filter_map(|(k, v)| match k {
                                object_store::Attribute::Metadata(k) => {
                                    Some((k.to_string(), v.to_string()))
                                }
                                _ => None,
                            })
                            .collect();
                        let folder = pairs
                            .iter()
                            .any(|(k, v)| k == "hdi_isfolder" && v == "true");
                        let meta =
                            Meta::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                        let kind = if folder {
                            ObjKind::Dir
                        } else if meta.symlink.is_some() {
                            ObjKind::Symlink
                        } else {
                            ObjKind::File
                        };
                        out.insert(rel, RemoteObj { kind, data, meta });
                    }
                    out
                })
            }
            Backend::Gcs => {
                // Read with plain requests to the server: object_store's listing cannot hold
                // a `dir/` marker or a key like `a//b`.
                let g = self.gcs.as_ref().unwrap();
                let mut out = BTreeMap::new();
                for key in g.list_keys(&self.bucket, self.prefix()) {
                    let rel = key[self.prefix().len()..].to_string();
                    let Some((data, headers)) = g.get_object(&self.bucket, &key) else {
                        continue;
                    };
                    let meta = Meta::from_pairs(headers.iter().filter_map(|(k, v)| {
                        k.strip_prefix("x-goog-meta-").map(|k| (k, v.as_str()))
                    }));
                    if let Some(d) = rel.strip_suffix('/') {
                        out.insert(
                            d.to_string(),
                            RemoteObj {
                                kind: ObjKind::Dir,
                                data: vec![],
                                meta,
                            },
                        );
                        continue;
                    }
                    let kind = if meta.symlink.is_some() {
                        ObjKind::Symlink
                    } else {
                        ObjKind::File
                    };
                    out.insert(rel, RemoteObj { kind, data, meta });
                }
                out
            }
        }
    }

    /// Files only, as path -> bytes.
    pub fn remote_files(&self) -> BTreeMap<String, Vec<u8>> {
        self.remote_tree()
            .into_iter()
            .filter(|(_, o)| o.kind == ObjKind::File)
            .map(|(k, o)| (k, o.data))
            .collect()
    }

    /// Writes an object that claims a SHA-256 (as stratus metadata) it may not have.
    pub fn put_remote_claiming_hash(&self, key: &str, data: &[u8], sha256: &str) {
        match self.backend {
            Backend::Local => {
                self.put_remote(key, data);
                // The hash applies to this mtime and size (see remote/local.rs).
                let m = std::fs::metadata(self.root.join(key)).unwrap();
                let stamp = format!(
                    "{:x}-{:x}",
                    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                    m.size()
                );
                let st = std::process::Command::new("setfattr")
                    .args([
                        "-n",
                        "user.stratus_sha256",
                        "-v",
                        &format!("{sha256} {stamp}"),
                    ])
                    .arg(self.root.join(key))
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            Backend::S3 | Backend::Azure | Backend::Gcs => {
                let full = format!("{}{key}", self.prefix());
                let attrs: object_store::Attributes = [(
                    object_store::Attribute::Metadata("stratus_sha256".into()),
                    object_store::AttributeValue::from(sha256.to_string()),
                )]
                .into_iter()
                .collect();
                let opts = object_store::PutOptions {
                    attributes: attrs,
                    ..Default::default()
                };
                let store: Box<dyn ObjectStore> = match self.backend {
                    Backend::Azure => Box::new(self.azure()),
                    Backend::Gcs => Box::new(self.gcs_client()),
                    _ => Box::new(self.s3()),
                };
                Env::rt()
                    .block_on(store.put_opts(
                        &ObjPath::parse(&full).unwrap(),
                        PutPayload::from(data.to_vec()),
                        opts,
                    ))
                    .unwrap();
            }
        }
    }

    /// Writes an object the way another tool would (no stratus metadata).
    pub fn put_remote(&self, key: &str, data: &[u8]) {
        match self.backend {
            Backend::Local => {
                let p = self.root.join(key);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, data).unwrap();
            }
            Backend::S3 => {
                let full = format!("{}{key}", self.prefix());
                let rt = Env::rt();
                if full.contains("//")
                    || full.contains("/./")
                    || full.contains("../")
                    || full.ends_with('/')
                {
                    rt.block_on(self.raw().put(&full, data));
                } else {
                    rt.block_on(self.s3().put(
                        &ObjPath::parse(&full).unwrap(),
                        PutPayload::from(data.to_vec()),
                    ))
                    .unwrap();
                }
            }
            Backend::Azure => {
                let full = format!("{}{key}", self.prefix());
                match ObjPath::parse(&full) {
                    Ok(path) if !full.ends_with('/') => {
                        Env::rt()
                            .block_on(self.azure().put(&path, PutPayload::from(data.to_vec())))
                            .unwrap();
                    }
                    // A name object_store cannot express (`a//b`, `dir/`): signed by hand.
                    _ => self
                        .azurite
                        .as_ref()
                        .unwrap()
                        .put_blob(&self.bucket, &full, data),
                }
            }
            Backend::Gcs => {
                let full = format!("{}{key}", self.prefix());
                match ObjPath::parse(&full) {
                    Ok(path) if !full.ends_with('/') => {
                        Env::rt()
                            .block_on(
                                self.gcs_client()
                                    .put(&path, PutPayload::from(data.to_vec())),
                            )
                            .unwrap();
                    }
                    // A name object_store cannot express (`a//b`, `dir/`): a plain PUT.
                    _ => {
                        let g = self.gcs.as_ref().unwrap();
                        let (status, body) = g.http(
                            "PUT",
                            &super::gcs::object_path(&self.bucket, &full),
                            &[],
                            data,
                        );
                        assert_eq!(status, 200, "PUT {full}: {body}");
                    }
                }
            }
        }
    }
}

impl Env {
    /// An object_store client of the cloud remote (not stratus's own request code), and the
    /// full key of a path under the mount's root; `None` for a local folder.
    pub fn direct_client(&self) -> Option<Box<dyn ObjectStore>> {
        match self.backend {
            Backend::Local => None,
            Backend::S3 => Some(Box::new(self.s3())),
            Backend::Azure => Some(Box::new(self.azure())),
            Backend::Gcs => Some(Box::new(self.gcs_client())),
        }
    }

    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }
}

fn walk_local(dir: &Path, prefix: &str, out: &mut BTreeMap<String, RemoteObj>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        // Our own bookkeeping in the remote folder: temporary uploads and the write lock.
        if name.starts_with(".stratus-tmp-") || name == ".stratus-lock" {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let meta = Meta {
            mtime_ns: Some(m.mtime() * 1_000_000_000 + m.mtime_nsec()),
            mode: Some(m.permissions().mode() & 0o7777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            sha256: None,
            symlink: None,
            ..Default::default()
        };
        if m.is_dir() {
            out.insert(
                rel.clone(),
                RemoteObj {
                    kind: ObjKind::Dir,
                    data: vec![],
                    meta,
                },
            );
            walk_local(&e.path(), &rel, out);
        } else if m.file_type().is_symlink() {
            let t = std::fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(
                rel,
                RemoteObj {
                    kind: ObjKind::Symlink,
                    data: vec![],
                    meta: Meta {
                        symlink: Some(t),
                        ..meta
                    },
                },
            );
        } else {
            // A special file is an empty file with its type in xattrs, read here with plain
            // getxattr(2) and parsed by the same rules as any backend's metadata.
            let pairs: Vec<(&str, String)> = [
                ("stratus_type", "user.stratus_type"),
                ("stratus_rdev", "user.stratus_rdev"),
                ("stratus_link", "user.stratus_link"),
            ]
            .into_iter()
            .filter_map(|(k, x)| local_xattr(&e.path(), x).map(|v| (k, v)))
            .collect();
            let ours = Meta::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
            out.insert(
                rel,
                RemoteObj {
                    kind: ObjKind::File,
                    data: std::fs::read(e.path()).unwrap(),
                    meta: Meta {
                        special: ours.special,
                        link: ours.link,
                        ..meta
                    },
                },
            );
        }
    }
}

fn local_xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated path and name; `buf` is writable for its length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| String::from_utf8_lossy(&buf[..r as usize]).into_owned())
}

pub struct Mount {
    pub dir: PathBuf,
    pub state: PathBuf,
    envs: Vec<(String, String)>,
    mounted: bool,
    /// What `stratus mount` printed on stderr (its warnings).
    pub mount_stderr: String,
}

impl Mount {
    /// A mount that `stratus mount` just made with `envs` (for envs other than an `Env`'s, such
    /// as tests/common/cluster.rs's per-gateway endpoints).
    pub fn mounted(
        dir: PathBuf,
        state: PathBuf,
        envs: Vec<(String, String)>,
        stderr: String,
    ) -> Mount {
        Mount {
            dir,
            state,
            envs,
            mounted: true,
            mount_stderr: stderr,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn stratus(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c.output().expect("run stratus")
    }

    /// `stratus sync --wait`, which must succeed. The timeout only bounds a hang: under
    /// injected faults on a loaded 2-core machine a drain can take most of a minute.
    pub fn sync(&self) {
        let out = self.stratus(&[
            "sync",
            self.dir.to_str().unwrap(),
            "--wait",
            "--timeout",
            "180",
        ]);
        assert!(
            out.status.success(),
            "sync --wait failed: {}{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    pub fn status(&self) -> String {
        let out = self.stratus(&["status", self.dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `stratus status --json`: the figures a script reads (`docs/json.md`).
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.stratus(&["status", "--json", self.dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "status --json failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// The health state status reports: `online`, `offline` or `unreachable`.
    pub fn health(&self) -> String {
        self.status_json()["health"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn state_of(&self, rel: &str) -> String {
        let out = Command::new("getfattr")
            .args(["--only-values", "-n", "user.stratus.state"])
            .arg(self.path(rel))
            .output()
            .expect("getfattr (apt install attr)");
        assert!(
            out.status.success(),
            "getfattr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.state.join("stratus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every line of the daemon's log that mentions `needle`.
    pub fn log_lines_with(&self, needle: &str) -> String {
        let log = std::fs::read_to_string(self.state.join("stratus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        lines.join("\n")
    }

    pub fn daemon_pid(&self) -> u32 {
        std::fs::read_to_string(self.state.join("lock"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn unmount(mut self) {
        self.do_unmount();
    }

    fn do_unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let out = self.stratus(&["unmount", self.dir.to_str().unwrap()]);
        if !out.status.success() {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.dir)
                .status();
        }
    }

    /// SIGKILLs the daemon and detaches the dead mount, as after a crash.
    pub fn kill9(mut self) {
        let pid = self.daemon_pid();
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Gone means its state dir lock is free: what the remount that follows needs. (On a
        // loaded CI machine a remount once still found it held.)
        let lock = self.state.join("lock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Ok(f) = std::fs::File::open(&lock) else {
                break;
            };
            // SAFETY: flock on a descriptor we own; released when `f` closes.
            if unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            } == 0
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.dir)
            .status();
        self.mounted = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

/// Whether a process is still running (a zombie waiting to be reaped counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a test body once per backend (local folder, S3, Azure, GCS):
/// `every_backend!(name, |env| { ... })`.
#[macro_export]
macro_rules! every_backend {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn local() {
                let f: fn(&common::mount::Env) = $body;
                f(&common::mount::Env::new(common::mount::Backend::Local));
            }
            #[test]
            fn s3() {
                let f: fn(&common::mount::Env) = $body;
                f(&common::mount::Env::new(common::mount::Backend::S3));
            }
            #[test]
            fn azure() {
                let f: fn(&common::mount::Env) = $body;
                f(&common::mount::Env::new(common::mount::Backend::Azure));
            }
            #[test]
            fn gcs() {
                let f: fn(&common::mount::Env) = $body;
                f(&common::mount::Env::new(common::mount::Backend::Gcs));
            }
        }
    };
}
