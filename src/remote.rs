//! The remote: one interface (`Backend`) over a local folder or a cloud, speaking in keys
//! relative to the mount's root, and the vocabulary every backend shares.

mod azure;
mod backend;
mod bucket;
mod bwlimit;
mod delta;
mod error;
mod faulty;
mod gcs;
mod health;
mod http;
mod interop;
mod local;
mod memory;
mod s3;
mod xml;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use backend::{Backend, ByteStream};
pub use bwlimit::{Limits, Rate};
pub use delta::Delta;
pub use error::{brief_text, RemoteError, RemoteResult};
pub use faulty::{FaultPlan, Faults, Faulty, Injected};
pub use health::{Health, Watch, SLOWEST_SEND, STALL_MS};
pub use interop::Flavor;
pub use local::{hash_file, LocalRemote};
pub use memory::Memory;

pub use crate::types::{Special, VersionMark};

/// Attributes that ride along with each object, as `stratus_*` metadata (underscores, not
/// dashes: Azure refuses dashes in metadata names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub mtime_ns: Option<i64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub sha256: Option<String>,
    pub symlink: Option<String>,
    /// A fifo, socket or device node: the object is empty and this is what it stands for
    /// (`stratus_type`, and for a device `stratus_rdev` as `MAJOR:MINOR`).
    pub special: Option<Special>,
    /// The hard-link group: every name of one inode carries the same value (with the same
    /// content hash), so another mount joins them into one inode again.
    pub link: Option<String>,
    /// Which mount wrote this version (`host:mountpoint`), so that a conflict can say who
    /// wrote each side.
    pub writer: Option<String>,
    /// Set on the `.conflict` copy of an open conflict, so that every mount that sees the
    /// copy knows it is one, and which version sits at the original path. Boxed: rare, and
    /// inline it was half the size of every listing row a first mount holds.
    pub conflict: Option<Box<ConflictMark>>,
}

/// What an open conflict's `.conflict` copy carries in its metadata: the name of the file it
/// sits beside and the version that file held when the conflict was found. The copy's own
/// version is the object itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictMark {
    /// The original's file name (the copy always sits in the same directory).
    pub of: String,
    /// The version at the original path.
    pub at_path: VersionMark,
    pub detected_ms: i64,
}

impl ConflictMark {
    /// One header-safe value: `application/x-www-form-urlencoded` pairs.
    pub fn encode(&self) -> String {
        let mut f = url::form_urlencoded::Serializer::new(String::new());
        f.append_pair("of", &self.of);
        f.append_pair("size", &self.at_path.size.to_string());
        f.append_pair("at", &self.detected_ms.to_string());
        let v = &self.at_path;
        for (k, val) in [
            ("sha256", v.sha256.clone()),
            ("mtime", v.mtime_ns.map(|m| m.to_string())),
            ("etag", v.etag.clone()),
            ("writer", v.writer.clone()),
        ] {
            if let Some(val) = val {
                f.append_pair(k, &val);
            }
        }
        f.finish()
    }

    /// `None` when the value is not ours or names no original.
    pub fn decode(s: &str) -> Option<ConflictMark> {
        let mut m = ConflictMark::default();
        for (k, v) in url::form_urlencoded::parse(s.as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "of" => m.of = v,
                "size" => m.at_path.size = v.parse().ok()?,
                "at" => m.detected_ms = v.parse().ok()?,
                "sha256" => m.at_path.sha256 = Some(v),
                "mtime" => m.at_path.mtime_ns = v.parse().ok(),
                "etag" => m.at_path.etag = Some(v),
                "writer" => m.at_path.writer = Some(v),
                _ => {}
            }
        }
        let valid = !m.of.is_empty() && check_component(m.of.as_bytes()).is_ok();
        valid.then_some(m)
    }
}

const META_WRITER: &str = "stratus_writer";
const META_CONFLICT: &str = "stratus_conflict";
const META_MTIME: &str = "stratus_mtime";
const META_MODE: &str = "stratus_mode";
const META_UID: &str = "stratus_uid";
const META_GID: &str = "stratus_gid";
const META_SHA256: &str = "stratus_sha256";
const META_SYMLINK: &str = "stratus_symlink";
const META_TYPE: &str = "stratus_type";
const META_RDEV: &str = "stratus_rdev";
const META_LINK: &str = "stratus_link";

/// A device number as `MAJOR:MINOR`, the form `ls -l` and `/proc/devices` use, so that the
/// metadata reads the same on every machine whatever its `dev_t` encoding.
pub fn rdev_text(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

pub fn parse_rdev(s: &str) -> Option<u64> {
    let (maj, min) = s.split_once(':')?;
    Some(libc::makedev(
        maj.trim().parse().ok()?,
        min.trim().parse().ok()?,
    ))
}

/// Bytes that cannot travel in an HTTP header value, escaped in the symlink target.
/// Spaces too: HTTP trims them at either end of a header value.
const HEADER_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b' ');

impl Meta {
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k.to_string(), v));
            }
        };
        push(META_MTIME, self.mtime_ns.map(|v| v.to_string()));
        push(META_MODE, self.mode.map(|v| format!("{v:o}")));
        push(META_UID, self.uid.map(|v| v.to_string()));
        push(META_GID, self.gid.map(|v| v.to_string()));
        push(META_SHA256, self.sha256.clone());
        push(
            META_SYMLINK,
            // percent_encoding always escapes non-ASCII bytes too.
            self.symlink
                .as_ref()
                .map(|t| percent_encoding::utf8_percent_encode(t, HEADER_UNSAFE).to_string()),
        );
        push(META_TYPE, self.special.map(|t| t.name().to_string()));
        push(
            META_RDEV,
            self.special
                .filter(|t| matches!(t, Special::CharDev(_) | Special::BlockDev(_)))
                .map(|t| rdev_text(t.rdev())),
        );
        push(META_LINK, self.link.clone());
        push(
            META_WRITER,
            self.writer
                .as_ref()
                .map(|w| percent_encoding::utf8_percent_encode(w, HEADER_UNSAFE).to_string()),
        );
        push(META_CONFLICT, self.conflict.as_ref().map(|c| c.encode()));
        out
    }

    /// What an object carrying this metadata stands for (`dir` for a directory marker).
    pub fn object_kind(&self, dir: bool) -> ObjectKind {
        if dir {
            ObjectKind::Dir
        } else if self.symlink.is_some() {
            ObjectKind::Symlink
        } else if let Some(s) = self.special {
            ObjectKind::Special(s)
        } else {
            ObjectKind::File
        }
    }

    /// [`Meta::to_pairs`] and then the keys rclone, s3fs and gcsfuse read (`mtime` in
    /// `flavor`'s format, `mode`, `uid`, `gid`; see `interop`), for an object that is a
    /// directory marker when `dir`.
    pub fn to_pairs_for(&self, flavor: Flavor, dir: bool) -> Vec<(String, String)> {
        let mut out = self.to_pairs();
        out.extend(interop::tool_pairs(self, flavor, dir));
        out
    }

    /// Reads our metadata back, and the times, mode and owner other tools keep where ours are
    /// missing or were changed by such a tool since (see `interop::ToolKeys::apply`); anything
    /// missing or malformed is `None`.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Meta {
        let mut m = Meta::default();
        let mut tools = interop::ToolKeys::default();
        let (mut special, mut rdev) = (None, 0);
        for (k, v) in pairs {
            // Some servers hand `stratus_mtime` back as `stratus-mtime` (moto rebuilds header
            // names from CGI variables), so both spellings are read.
            let k = k.to_ascii_lowercase().replace('-', "_");
            match k.as_str() {
                META_MTIME => m.mtime_ns = v.parse().ok(),
                META_MODE => m.mode = u32::from_str_radix(v, 8).ok().map(|v| v & 0o7777),
                META_UID => m.uid = v.parse().ok(),
                META_GID => m.gid = v.parse().ok(),
                META_SHA256 => m.sha256 = Some(v.to_string()),
                META_SYMLINK => {
                    m.symlink = percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .ok()
                        .map(|s| s.into_owned())
                }
                META_WRITER => {
                    m.writer = percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .ok()
                        .map(|s| s.into_owned())
                }
                META_CONFLICT => m.conflict = ConflictMark::decode(v).map(Box::new),
                META_TYPE => special = Some(v.trim().to_string()),
                META_RDEV => rdev = parse_rdev(v).unwrap_or(0),
                META_LINK => m.link = Some(v.trim().to_string()).filter(|l| !l.is_empty()),
                other => tools.note(other, v),
            }
        }
        m.special = special.and_then(|t| Special::parse(&t, rdev));
        tools.apply(&mut m);
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    File,
    Dir,
    Symlink,
    /// An empty object whose metadata names a fifo, socket or device node.
    Special(Special),
}

/// One entry of the remote tree as a scan sees it.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Relative path, `/`-separated, already checked to be a valid POSIX path.
    pub key: String,
    pub kind: ObjectKind,
    pub size: u64,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub last_modified_ns: Option<i64>,
    pub meta: Meta,
}

/// What a write expects to find at its key. The server checks it (If-Match, If-None-Match),
/// so a concurrent writer elsewhere is caught there and not guessed from clocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cond {
    #[default]
    Overwrite,
    /// Nothing may exist at the key.
    Create,
    /// The key must still hold this version.
    Match {
        etag: Option<String>,
        version: Option<String>,
    },
}

impl Cond {
    /// Whether an object with `etag` (or no object, `None`) satisfies the condition; for
    /// backends that compare before they write.
    pub fn admits(&self, current: Option<&str>) -> bool {
        match self {
            Cond::Overwrite => true,
            Cond::Create => current.is_none(),
            Cond::Match { etag: Some(e), .. } => current == Some(e.as_str()),
            Cond::Match { etag: None, .. } => true,
        }
    }
}

/// Whether the server decides conditional writes itself, as a mount found out once per state
/// dir by writing a scratch object ([`PROBE_PREFIX`]) under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preconditions {
    /// A second create-only write and a write against a replaced version were both refused.
    Enforced,
    /// The server let at least one of them through; `what` says which, for the log.
    Ignored { what: String },
}

impl Preconditions {
    /// The form kept in the state dir's database (`meta.preconditions`).
    pub fn encode(&self) -> String {
        match self {
            Preconditions::Enforced => "enforced".into(),
            Preconditions::Ignored { what } => format!("ignored: {what}"),
        }
    }

    pub fn decode(s: &str) -> Option<Preconditions> {
        if s == "enforced" {
            return Some(Preconditions::Enforced);
        }
        s.strip_prefix("ignored: ").map(|w| Preconditions::Ignored {
            what: w.to_string(),
        })
    }
}

/// Scratch objects of the mount-time precondition check sit at `PREFIX/.stratus-probe-<id>`:
/// never listed as user files, and names of this form cannot be created in a mount.
pub const PROBE_PREFIX: &str = ".stratus-probe-";

/// What the remote answered to a write.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub etag: Option<String>,
    pub version: Option<String>,
}

/// User metadata as the headers of a raw request: each key under the cloud's `prefix`
/// (`x-ms-meta-`, `x-goog-meta-`).
fn prefixed_meta(prefix: &str, meta: &[(String, String)]) -> Vec<(String, String)> {
    meta.iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

/// A parsed REMOTE argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
    Gcs { bucket: String, prefix: String },
}

impl RemoteUrl {
    pub fn parse(s: &str) -> Result<RemoteUrl, String> {
        let split = |rest: &str| -> Result<(String, String), String> {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{s}: missing bucket or container name"));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if let Some(reason) = prefix
                .split('/')
                .filter(|_| !prefix.is_empty())
                .find_map(|p| check_component(p.as_bytes()).err())
            {
                return Err(format!("{s}: bad prefix: {reason}"));
            }
            Ok((bucket.to_string(), prefix))
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = split(rest)?;
            return Ok(RemoteUrl::S3 { bucket, prefix });
        }
        if let Some(rest) = s.strip_prefix("az://") {
            let (container, prefix) = split(rest)?;
            return Ok(RemoteUrl::Azure { container, prefix });
        }
        if let Some(rest) = s.strip_prefix("gs://") {
            let (bucket, prefix) = split(rest)?;
            return Ok(RemoteUrl::Gcs { bucket, prefix });
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{s}: a file:// URL needs an absolute path (file:///abs/path)"
                ));
            }
            return Ok(RemoteUrl::Local(PathBuf::from(rest)));
        }
        if s.contains("://") {
            return Err(format!(
                "{s}: unknown scheme (expected a directory, file://, s3://, az:// or gs://)"
            ));
        }
        if s.is_empty() {
            return Err("empty remote".into());
        }
        let p = Path::new(s);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| e.to_string())?.join(p)
        };
        Ok(RemoteUrl::Local(abs))
    }

    /// A stable, human-readable identity, used to name the default state dir.
    pub fn canonical(&self) -> String {
        match self {
            RemoteUrl::Local(p) => format!("file://{}", p.display()),
            RemoteUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            RemoteUrl::Azure { container, prefix } => format!("az://{container}/{prefix}"),
            RemoteUrl::Gcs { bucket, prefix } => format!("gs://{bucket}/{prefix}"),
        }
    }
}

/// Longest name one path component may have, as on Linux filesystems.
pub const NAME_MAX: usize = 255;

/// Why a path component cannot be a file name in the mount, if it cannot.
pub fn check_component(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty path component".into());
    }
    if name == b"." || name == b".." {
        return Err(format!(
            "'{}' is not a file name",
            String::from_utf8_lossy(name)
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!("component longer than {NAME_MAX} bytes"));
    }
    if name.contains(&0) || name.contains(&b'/') {
        return Err("NUL or '/' inside a name".into());
    }
    Ok(())
}

/// Splits a remote key into valid components, or says why it cannot be shown.
pub fn check_key(key: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = key.split('/').collect();
    for p in &parts {
        check_component(p.as_bytes())?;
    }
    Ok(parts)
}

/// Builds a consistent tree from raw listing rows: drops keys that are not valid POSIX paths,
/// adds the directories that are only implied by deeper keys, and settles keys that are both
/// a file and a directory (the directory wins; the file is skipped with a warning, never deleted).
/// Sorted by key. In place: a first mount of a big bucket holds its whole listing here, and a
/// second copy of it (a map of the rows) doubled the daemon's peak memory.
pub fn normalize_listing(mut rows: Vec<ObjectInfo>) -> Vec<ObjectInfo> {
    rows.retain(|row| match check_key(&row.key) {
        Ok(_) => true,
        Err(reason) => {
            tracing::warn!(key = %row.key, %reason, "skipping remote key that is not a valid path");
            false
        }
    });
    let is_dir = |o: &ObjectInfo| o.kind == ObjectKind::Dir;
    // Every directory a key implies or a marker names.
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for row in &rows {
        for (i, _) in row.key.match_indices('/') {
            if !dirs.contains(&row.key[..i]) {
                dirs.insert(row.key[..i].to_string());
            }
        }
        if is_dir(row) && !dirs.contains(&row.key) {
            dirs.insert(row.key.clone());
        }
    }
    // A directory sorts before a file of the same key, so the dedup keeps the directory.
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(is_dir(b).cmp(&is_dir(a))));
    rows.dedup_by(|later, kept| {
        let same = later.key == kept.key;
        if same && is_dir(kept) && !is_dir(later) {
            tracing::warn!(key = %later.key, "remote key is both a file and a directory; showing the directory");
        }
        same
    });
    for row in rows.iter_mut() {
        if !is_dir(row) && dirs.contains(&row.key) {
            tracing::warn!(key = %row.key, "remote key is both a file and a directory; showing the directory");
            *row = implied_dir(&row.key);
        }
    }
    let missing: Vec<ObjectInfo> = dirs
        .iter()
        .filter(|d| {
            rows.binary_search_by(|r| r.key.as_str().cmp(d.as_str()))
                .is_err()
        })
        .map(|d| implied_dir(d))
        .collect();
    if !missing.is_empty() {
        rows.extend(missing);
        rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
    rows
}

fn implied_dir(key: &str) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        kind: ObjectKind::Dir,
        size: 0,
        etag: None,
        version: None,
        last_modified_ns: None,
        meta: Meta::default(),
    }
}

tokio::task_local! {
    /// Bytes of the upload in progress that the server has taken: the backends add each
    /// part as it is answered (`note_sent`), `stratus status` shows it.
    static SENT: std::sync::Arc<health::Progress>;
}

/// A part of `bytes` of the upload in progress was copied on the server from the previous
/// version (a differential upload): progress, but nothing on the wire, so not in the rate.
pub(crate) fn note_copied(bytes: u64) {
    let _ = SENT.try_with(|s| s.copied(bytes));
}

/// A part of `bytes` of the upload in progress was taken by the server.
pub(crate) fn note_sent(bytes: u64) {
    let _ = SENT.try_with(|s| s.add(bytes));
}

/// The remote a mount talks to: one backend, plus what is the same for every backend (name
/// checks, listing normalization, the remote's health and the offline switch, which gate
/// network traffic). vfs, sync and the daemon see only this type.
pub struct Remote {
    backend: Box<dyn Backend>,
    health: std::sync::Arc<Health>,
    /// A read-only mount (`-o ro`): every request that would change the remote is refused
    /// here, whoever makes it, so that such a mount never writes to the remote.
    read_only: std::sync::atomic::AtomicBool,
    /// `--bwlimit`: shared by every transfer of this remote, changeable while mounted.
    bw: std::sync::Arc<bwlimit::BwLimit>,
}

impl Remote {
    /// Builds the client for `url`; `options` are extra object_store settings from
    /// `--store-opt`.
    pub fn open(url: &RemoteUrl, options: &[(String, String)]) -> Result<Remote, String> {
        let backend: Box<dyn Backend> = match url {
            RemoteUrl::Local(p) => {
                if !options.is_empty() {
                    return Err("--store-opt applies to cloud remotes only".into());
                }
                Box::new(LocalRemote::new(p.clone()))
            }
            RemoteUrl::S3 { bucket, prefix } => Box::new(s3::S3::open(bucket, prefix, options)?),
            RemoteUrl::Azure { container, prefix } => {
                Box::new(azure::Azure::open(container, prefix, options)?)
            }
            RemoteUrl::Gcs { bucket, prefix } => Box::new(gcs::Gcs::open(bucket, prefix, options)?),
        };
        Ok(Remote::new(backend))
    }

    /// A remote over any backend (tests plug in their own).
    pub fn new(backend: Box<dyn Backend>) -> Remote {
        Remote {
            backend,
            health: Default::default(),
            read_only: Default::default(),
            bw: Default::default(),
        }
    }

    /// Whether `key` names an object_store setting of `url`'s backend (what `--store-opt`
    /// takes), so that `-o KEY=VALUE` can tell one from a mistyped mount option.
    pub fn is_store_option(url: &RemoteUrl, key: &str) -> bool {
        use object_store::{aws::AmazonS3ConfigKey, azure::AzureConfigKey, gcp::GoogleConfigKey};
        match url {
            RemoteUrl::Local(_) => false,
            RemoteUrl::S3 { .. } => key.parse::<AmazonS3ConfigKey>().is_ok(),
            RemoteUrl::Azure { .. } => key.parse::<AzureConfigKey>().is_ok(),
            RemoteUrl::Gcs { .. } => key.parse::<GoogleConfigKey>().is_ok(),
        }
    }

    /// Makes every later write request fail without reaching the server (`-o ro`).
    pub fn set_read_only(&self) {
        self.read_only
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn writable(&self, key: &str) -> RemoteResult<()> {
        if self.is_read_only() {
            tracing::warn!(key, "write to the remote refused: the mount is read-only");
            return Err(RemoteError::Permanent(format!(
                "{key}: the mount is read-only"
            )));
        }
        Ok(())
    }

    /// The bandwidth limits in force (`--bwlimit`, `stratus bwlimit`).
    pub fn bwlimit(&self) -> Limits {
        self.bw.limits()
    }

    /// Sets the bandwidth limits; transfers already waiting for their turn take the new
    /// rate within 100 ms.
    pub fn set_bwlimit(&self, l: Limits) {
        self.bw.set(l);
    }

    /// Runs `f` with the backends' pacing ([`bwlimit::pace_up`], [`bwlimit::pace_down`])
    /// reaching this remote's limits.
    async fn paced<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let pace = bwlimit::Pace {
            limit: self.bw.clone(),
            health: self.health.clone(),
        };
        bwlimit::PACE.scope(pace, f).await
    }

    /// What this mount knows of the remote's health, and the user's offline switch.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Runs a request that sends no body under the health's watch for a silent server, and
    /// counts any answer (an error of the server's included) as contact.
    async fn watched<T>(
        &self,
        request: impl std::future::Future<Output = RemoteResult<T>>,
    ) -> RemoteResult<T> {
        self.watched_sending(0, request).await
    }

    /// [`Remote::watched`] for a request that sends `bytes`: allowed the time to send them at
    /// [`SLOWEST_SEND`], or at the upload limit when that is slower.
    async fn watched_sending<T>(
        &self,
        bytes: u64,
        request: impl std::future::Future<Output = RemoteResult<T>>,
    ) -> RemoteResult<T> {
        let up = self.bw.up.rate();
        let rate = if up.is_off() {
            SLOWEST_SEND
        } else {
            up.0.min(SLOWEST_SEND)
        };
        self.watched_for(self.health.watch_paced(bytes, rate), request)
            .await
    }

    /// [`Remote::watched`] for a request that receives `bytes`: under a download limit it is
    /// allowed the time to take them at that rate, since it is we who hold the server back.
    async fn watched_receiving<T>(
        &self,
        bytes: u64,
        request: impl std::future::Future<Output = RemoteResult<T>>,
    ) -> RemoteResult<T> {
        let down = self.bw.down.rate();
        let watch = if down.is_off() {
            self.health.watch()
        } else {
            self.health.watch_paced(bytes, down.0)
        };
        self.watched_for(watch, request).await
    }

    async fn watched_for<T>(
        &self,
        watch: Watch<'_>,
        request: impl std::future::Future<Output = RemoteResult<T>>,
    ) -> RemoteResult<T> {
        let r = request.await;
        drop(watch);
        match &r {
            Err(e) if e.is_transient() => {}
            Err(RemoteError::Io(_)) => {}
            _ => self.health.answered(),
        }
        r
    }

    /// An empty in-memory remote with a server's semantics (see `Memory`), for running the
    /// core in-process; `Remote::new(Box::new(memory.clone()))` keeps a handle to edit it.
    pub fn memory() -> Remote {
        Remote::new(Box::new(Memory::new()))
    }

    /// `inner` behind the faults `faults` plans (see `Faulty`); the test keeps a clone of
    /// `faults` to change the plan while the core runs.
    pub fn faulty(inner: Box<dyn Backend>, faults: Faults) -> Remote {
        Remote::new(Box::new(Faulty::new(inner, faults)))
    }

    /// Whether an empty directory can be stored on the remote. Where it cannot, a directory
    /// missing from the remote may simply be empty, so the poller keeps it. Every backend
    /// stores them today (GCS since its `dir/` markers).
    pub fn has_dir_markers(&self) -> bool {
        self.backend.has_dir_markers()
    }

    /// Longest key (relative path) the backend accepts.
    pub fn max_key_len(&self) -> usize {
        self.backend.max_key_len()
    }

    /// Whether the backend can store a file of this name; `Err` says why not.
    pub fn check_name(&self, name: &[u8]) -> Result<(), String> {
        check_component(name)?;
        let s = std::str::from_utf8(name).map_err(|_| "name is not valid UTF-8".to_string())?;
        self.backend.check_name(s)
    }

    /// Cheap request that proves the remote answers and accepts our credentials.
    pub async fn check(&self) -> RemoteResult<()> {
        self.watched(self.backend.check()).await
    }

    /// Checks once whether the server refuses what it must refuse (see `Preconditions`);
    /// `None` for a local folder, where mounts serialize through `.stratus-lock` instead.
    pub async fn probe_preconditions(&self) -> Option<RemoteResult<Preconditions>> {
        // The probe writes a scratch object.
        if let Err(e) = self.writable("precondition probe") {
            return Some(Err(e));
        }
        Some(self.backend.probe_preconditions()?.await)
    }

    /// Tells the remote that the server ignores preconditions: every conditional write then
    /// compares with a HEAD just before it goes out (best effort, see docs/semantics.md).
    pub fn set_preconditions_ignored(&self, ignored: bool) {
        self.backend.set_preconditions_ignored(ignored)
    }

    /// The whole tree with metadata, normalized.
    pub async fn scan(&self) -> RemoteResult<Vec<ObjectInfo>> {
        Ok(normalize_listing(self.watched(self.backend.scan()).await?))
    }

    /// The tree without per-object metadata (a listing, no HEADs), normalized: what the poller
    /// compares against the last synced versions.
    pub async fn list(&self) -> RemoteResult<Vec<ObjectInfo>> {
        Ok(normalize_listing(self.watched(self.backend.list()).await?))
    }

    /// Whether [`Remote::list`] carries each object's metadata (see `Backend::listing_has_meta`).
    pub fn listing_has_meta(&self) -> bool {
        self.backend.listing_has_meta()
    }

    /// One object (or directory marker) with its metadata, `None` when absent.
    pub async fn head(&self, key: &str, dir: bool) -> RemoteResult<Option<ObjectInfo>> {
        self.watched(self.backend.head(key, dir)).await
    }

    /// Bytes `range` of the object, only if it is still the version with ETag `if_match`
    /// (another version answers `Conflict`), so one read never mixes two versions.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> RemoteResult<bytes::Bytes> {
        let len = range.end.saturating_sub(range.start);
        self.paced(self.watched_receiving(len, self.backend.get_range(key, range, if_match)))
            .await
    }

    /// The whole object as a stream of chunks, pinned to `if_match`: one long GET for a reader
    /// going through a large file from its start. `None` where a stream buys nothing (a local
    /// folder is read by ranges at disk speed).
    pub async fn get_stream(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> Option<RemoteResult<ByteStream>> {
        let body = self.backend.get_stream(key, if_match)?.await;
        // The stream is read after this call returns, outside any paced scope: each chunk
        // pays the download bucket as it comes.
        let bw = self.bw.clone();
        Some(body.map(|s| {
            use futures::StreamExt;
            s.then(move |chunk| {
                let bw = bw.clone();
                async move {
                    if let Ok(c) = &chunk {
                        bw.down.take(c.len() as u64).await;
                    }
                    chunk
                }
            })
            .boxed()
        }))
    }

    /// Downloads the whole object to `dest`, returning its size.
    pub async fn download(&self, key: &str, dest: &Path) -> RemoteResult<u64> {
        self.paced(self.backend.download(key, dest)).await
    }

    /// Uploads a file's content with metadata; `meta.sha256` must already be set.
    pub async fn upload_file(
        &self,
        key: &str,
        src: &Path,
        size: u64,
        meta: &Meta,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        self.upload_changes(key, src, size, meta, cond, None).await
    }

    /// [`Remote::upload_file`] that, with `delta`, may send only the changed ranges and have
    /// the server copy the rest from the version `delta` builds on (which `cond` must name),
    /// where the backend can; otherwise the whole file goes.
    pub async fn upload_changes(
        &self,
        key: &str,
        src: &Path,
        size: u64,
        meta: &Meta,
        cond: &Cond,
        delta: Option<&Delta>,
    ) -> RemoteResult<Written> {
        /// Ends the upload's progress however the upload ends (also when it is dropped).
        struct Ends<'a>(&'a Health);
        impl Drop for Ends<'_> {
            fn drop(&mut self) {
                self.0.end_upload();
            }
        }
        self.writable(key)?;
        let sent = self.health.start_upload(key, size);
        let _ends = Ends(&self.health);
        let written = SENT
            .scope(
                sent.clone(),
                self.paced(self.watched_sending(size, async {
                    let differential = delta
                        .and_then(|d| self.backend.upload_delta(key, src, size, meta, cond, d));
                    match differential {
                        Some(upload) => upload.await,
                        None => self.backend.upload_file(key, src, size, meta, cond).await,
                    }
                })),
            )
            .await?;
        // A single PUT (and a local folder) counts its bytes once they are all taken.
        sent.add(size.saturating_sub(sent.sent()));
        Ok(written)
    }

    pub async fn put_symlink(&self, key: &str, meta: &Meta, cond: &Cond) -> RemoteResult<Written> {
        self.writable(key)?;
        self.watched(self.backend.put_symlink(key, meta, cond))
            .await
    }

    pub async fn put_dir(&self, key: &str, meta: &Meta) -> RemoteResult<Written> {
        self.writable(key)?;
        self.watched(self.backend.put_dir(key, meta)).await
    }

    /// Replaces an object's metadata in place where the server can (S3: CopyObject onto
    /// itself; Azure: Set Blob Metadata; GCS: a copy onto itself, each conditioned on the
    /// version `cond` names); `None` where the backend cannot, and the whole object must be
    /// written again (a local folder's copy is a local read: no need for a shortcut).
    pub async fn update_meta(
        &self,
        key: &str,
        meta: &Meta,
        cond: &Cond,
        size: u64,
    ) -> RemoteResult<Option<Written>> {
        self.writable(key)?;
        self.watched(self.backend.update_meta(key, meta, cond, size))
            .await
    }

    /// Server-side copy of a file or symlink object, metadata included: only while `from`
    /// still holds `source` (the version the caller means to move), and only if `to`
    /// satisfies `cond`. Either refused answers `Conflict`; a missing source `NotFound`.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        source: Option<&str>,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        self.writable(to)?;
        self.watched(self.backend.copy(from, to, source, cond))
            .await
    }

    /// Deletes an object (or a directory marker); a missing key is success. With `expect`,
    /// only that version goes: another one answers `Conflict`.
    pub async fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        self.writable(key)?;
        self.watched(self.backend.delete(key, dir, expect)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            kind: ObjectKind::File,
            size: 1,
            etag: None,
            version: None,
            last_modified_ns: None,
            meta: Meta::default(),
        }
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            RemoteUrl::parse("s3://b/some/prefix/").unwrap(),
            RemoteUrl::S3 {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            RemoteUrl::parse("file:///tmp/x").unwrap(),
            RemoteUrl::Local("/tmp/x".into())
        );
        assert!(RemoteUrl::parse("s3://").is_err());
        assert!(RemoteUrl::parse("ftp://x").is_err());
        assert!(RemoteUrl::parse("file://relative").is_err());
        assert!(RemoteUrl::parse("s3://b/../x").is_err());
    }

    #[test]
    fn meta_round_trip() {
        let m = Meta {
            mtime_ns: Some(1_700_000_000_123_456_789),
            mode: Some(0o640),
            uid: Some(1000),
            gid: Some(100),
            sha256: Some("ab".repeat(32)),
            symlink: Some(" ../a b/%x\ny ".into()),
            special: Some(Special::BlockDev(libc::makedev(259, 1_048_577))),
            link: Some("0123456789abcdef0123456789abcdef".into()),
            writer: Some("host:/home/me/my files".into()),
            conflict: Some(Box::new(ConflictMark {
                of: "report ü.docx".into(),
                at_path: VersionMark {
                    sha256: Some("cd".repeat(32)),
                    size: 42,
                    mtime_ns: Some(7),
                    etag: Some("\"abc\"".into()),
                    writer: Some("other:/mnt/x&y=z".into()),
                },
                detected_ms: 1_800_000_000_000,
            })),
        };
        let pairs = m.to_pairs();
        assert!(pairs.iter().all(|(k, _)| !k.contains('-')));
        assert!(pairs
            .iter()
            .all(|(_, v)| !v.chars().any(|c| c.is_control())));
        let back = Meta::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, m);
        assert!(pairs.contains(&("stratus_rdev".into(), "259:1048577".into())));
        // A fifo carries no device number; a type we do not know is no special file.
        let fifo = Meta {
            special: Some(Special::Fifo),
            ..Meta::default()
        };
        assert_eq!(
            fifo.to_pairs(),
            vec![("stratus_type".to_string(), "fifo".to_string())]
        );
        let odd = Meta::from_pairs([("stratus_type", "door")]);
        assert_eq!(odd.object_kind(false), ObjectKind::File);
    }

    #[test]
    fn bad_keys_are_dropped_and_dirs_implied() {
        let rows = vec![
            file("a//b"),
            file("../x"),
            file("x/./y"),
            file("."),
            file(&"n".repeat(256)),
            file("ok/deep/file"),
            file("both"),
            file("both/child"),
        ];
        let out = normalize_listing(rows);
        let keys: Vec<(&str, ObjectKind)> = out.iter().map(|o| (o.key.as_str(), o.kind)).collect();
        assert_eq!(
            keys,
            vec![
                ("both", ObjectKind::Dir),
                ("both/child", ObjectKind::File),
                ("ok", ObjectKind::Dir),
                ("ok/deep", ObjectKind::Dir),
                ("ok/deep/file", ObjectKind::File),
            ]
        );
    }
}
