//! What the three object_store backends (S3, Azure, GCS) share: their object_store handle
//! under the mount's prefix, reads, plain writes, the precondition check and its HEAD
//! fallback, listing rows, and multipart uploads whose completion is a raw request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientConfigKey, GetOptions, MultipartId, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tokio::io::AsyncWriteExt;

use super::backend::{Backend, ByteStream};
use super::http::{map_err, status_in};
use super::{
    Cond, Delta, Flavor, Meta, ObjectInfo, ObjectKind, Preconditions, RemoteError, RemoteResult,
    Written, PROBE_PREFIX,
};

/// What ends the key of an old-style directory marker (see `Bucket::old_marker`).
pub const OLD_MARKER_SUFFIX: &str = "_$folder$";

/// Files above this go up as multipart uploads.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once for one multipart upload: enough round trips overlapped for a
/// server across a network, and the setting of the benchmarks' plain-PUT baseline (on moto
/// 4 and 8 measure alike; docs/benchmarks.md, "What limits the upload drain"). Each holds
/// its 8 MiB buffer, so an upload holds 64 MiB at most.
const PARTS_IN_FLIGHT: usize = 8;
/// HEAD requests in flight at once while scanning.
const SCAN_CONCURRENCY: usize = 16;
/// All three clouds cap object names at 1024 bytes.
const MAX_KEY: usize = 1024;
/// How long a ranged read waits for the server to start answering. Reads block a user's
/// application, so a silent server must turn into EIO within seconds (see docs/semantics.md).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the body of a ranged read may go without a single byte.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Our own queue retries for as long as it takes; object_store's retries only smooth over
/// single dropped requests, so keep them short and let the status show the outage.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    }
}

/// Timeouts we want unless the environment or `-o` chose others. Set as config keys, not
/// with `with_client_options`, which would throw away what `from_env` read (AWS_ALLOW_HTTP).
pub const CLIENT_DEFAULTS: [(ClientConfigKey, &str); 2] = [
    (ClientConfigKey::ConnectTimeout, "5s"),
    (ClientConfigKey::Timeout, "120s"),
];

/// What a raw HEAD answered (S3, GCS XML API).
#[derive(Debug, Clone)]
pub struct RawHead {
    pub size: u64,
    /// As the server sent it, quotes included, so it compares equal to object_store's `e_tag`.
    pub etag: Option<String>,
    pub version: Option<String>,
    /// The user metadata headers, prefix stripped, names lowercased, values as sent.
    pub metadata: std::collections::HashMap<String, String>,
}

/// ETags in one spelling, quoted as HTTP sends them. Azure's listing gives them bare while its
/// headers quote them; compared as strings, every poll would see our own uploads as changed.
pub fn etag(e: Option<String>) -> Option<String> {
    e.map(|e| {
        if e.starts_with('"') || e.starts_with("W/") {
            e
        } else {
            format!("\"{e}\"")
        }
    })
}

/// `cond` as the precondition headers S3 and Azure both understand on the writes object_store
/// cannot condition (multipart completion, copies): the server decides, so a writer elsewhere
/// is caught there, not by a comparison made a moment before.
pub fn cond_headers(cond: &Cond) -> Vec<(&'static str, String)> {
    match cond {
        Cond::Overwrite | Cond::Match { etag: None, .. } => Vec::new(),
        Cond::Create => vec![("If-None-Match", "*".to_string())],
        Cond::Match { etag: Some(e), .. } => vec![("If-Match", e.clone())],
    }
}

pub fn put_mode(cond: &Cond) -> PutMode {
    match cond {
        Cond::Overwrite => PutMode::Overwrite,
        Cond::Create => PutMode::Create,
        Cond::Match {
            etag: None,
            version: None,
        } => PutMode::Overwrite,
        Cond::Match { etag, version } => PutMode::Update(object_store::UpdateVersion {
            e_tag: etag.clone(),
            version: version.clone(),
        }),
    }
}

/// Metadata pairs as object_store attributes.
pub fn attributes(pairs: Vec<(String, String)>) -> Attributes {
    pairs
        .into_iter()
        .map(|(k, v)| (Attribute::Metadata(k.into()), AttributeValue::from(v)))
        .collect()
}

pub fn meta_of(attrs: &Attributes) -> Meta {
    Meta::from_pairs(attrs.iter().filter_map(|(k, v)| match k {
        Attribute::Metadata(k) => Some((k.as_ref(), v.as_ref())),
        _ => None,
    }))
}

/// A listing row: no metadata yet (directory markers as `Dir`, everything else as `File` until
/// a HEAD says otherwise).
pub fn listed(
    rel: &str,
    marker: bool,
    size: u64,
    etag: Option<String>,
    last_modified_ns: Option<i64>,
) -> ObjectInfo {
    ObjectInfo {
        key: rel.to_string(),
        kind: if marker {
            ObjectKind::Dir
        } else {
            ObjectKind::File
        },
        size,
        etag,
        version: None,
        last_modified_ns,
        meta: Meta::default(),
    }
}

/// The object a raw HEAD of `rel` (or of its `rel/` marker, with `dir`) found.
pub fn headed(rel: &str, dir: bool, h: RawHead) -> ObjectInfo {
    let meta = Meta::from_pairs(h.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    ObjectInfo {
        key: rel.to_string(),
        kind: kind_of(dir, &meta),
        size: h.size,
        etag: etag(h.etag),
        version: h.version,
        last_modified_ns: None,
        meta,
    }
}

pub fn kind_of(dir: bool, meta: &Meta) -> ObjectKind {
    meta.object_kind(dir)
}

/// The delete of a directory's old-style marker (`Bucket::old_marker`) that follows the delete
/// of its `dir/` marker, best effort: most directories have none, and a server whose signature
/// check mishandles the `$` (moto with authentication on) must not make every rmdir fail.
pub fn old_marker_gone(key: &str, r: RemoteResult<()>) {
    if let Err(e) = r {
        tracing::debug!(key, error = %e, "could not delete an old-style folder marker");
    }
}

/// One prefix of one bucket or container, through object_store.
pub struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3`, `azure`, `gcs`: for messages.
    pub name: &'static str,
    /// Which formats the other tools' metadata keys take here.
    pub flavor: Flavor,
    /// Set when the mount-time check found that the server ignores preconditions: each
    /// conditional write then compares with a HEAD first (see `guard`).
    ignores_preconditions: AtomicBool,
}

impl Bucket {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, flavor: Flavor) -> Bucket {
        let name = match flavor {
            Flavor::S3 => "s3",
            Flavor::Azure => "azure",
            Flavor::Gcs => "gcs",
        };
        Bucket {
            store,
            prefix: prefix.to_string(),
            name,
            flavor,
            ignores_preconditions: AtomicBool::new(false),
        }
    }

    pub fn set_preconditions_ignored(&self, ignored: bool) {
        self.ignores_preconditions.store(ignored, Ordering::Relaxed);
    }

    /// Our metadata and the other tools' keys (see `Meta::to_pairs_for`) as attributes.
    pub fn attributes(&self, meta: &Meta, dir: bool) -> Attributes {
        attributes(meta.to_pairs_for(self.flavor, dir))
    }

    /// The whole key of `key`, prefix included.
    pub fn full(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    /// The key of a directory marker (`dir/`, as S3 tools and gcsfuse write them).
    pub fn marker(&self, key: &str) -> String {
        format!("{}/", self.full(key))
    }

    /// The older marker form `dir_$folder$` (S3 Organizer, Hadoop's s3n, s3fs before `dir/`):
    /// read as a directory, never written; an rmdir removes it too, or it would bring the
    /// directory back.
    pub fn old_marker(&self, key: &str) -> String {
        format!("{}{OLD_MARKER_SUFFIX}", self.full(key))
    }

    pub fn path(&self, key: &str) -> RemoteResult<Path> {
        let full = self.full(key);
        // `parse`, not `from`: `from` would percent-encode characters and the object would no
        // longer sit at the user's path byte for byte.
        Path::parse(&full)
            .map_err(|e| RemoteError::Permanent(format!("key {full:?} not accepted: {e}")))
    }

    /// What a listing of the whole mount asks for (`prefix/`, or everything).
    pub fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The key relative to the mount of a whole key from a listing.
    pub fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// The rows of a raw listing (S3, GCS) below the prefix: `dir/` keys are directory markers.
    pub fn slash_rows(&self, objects: Vec<super::xml::RawObject>) -> Vec<ObjectInfo> {
        let mut rows = Vec::new();
        for o in objects {
            let Some(rel) = self.strip(&o.key) else {
                continue;
            };
            let (rel, marker) = match rel.strip_suffix('/') {
                Some(r) => (r, true),
                None => match rel.strip_suffix(OLD_MARKER_SUFFIX) {
                    Some(r) if !r.is_empty() && !r.ends_with('/') => (r, true),
                    _ => (rel, false),
                },
            };
            if rel.is_empty() {
                continue;
            }
            let lm = o.last_modified.and_then(|t| t.timestamp_nanos_opt());
            rows.push(listed(rel, marker, o.size, o.etag, lm));
        }
        Bucket::without_probes(rows)
    }

    pub fn max_key_len(&self) -> usize {
        MAX_KEY.saturating_sub(self.prefix.len() + 2)
    }

    pub fn check_name(&self, name: &str) -> Result<(), String> {
        if name.chars().any(|c| c.is_ascii_control()) {
            return Err(format!(
                "{} object keys cannot hold control characters",
                self.name
            ));
        }
        if name.starts_with(PROBE_PREFIX) {
            // The listing hides these (the mount-time check's scratch objects), so a file of
            // this name would look deleted to every other mount.
            return Err(format!("names starting with {PROBE_PREFIX} are reserved"));
        }
        Ok(())
    }

    /// Lists a prefix that holds nothing: proves the bucket exists and that we may list it,
    /// which a HEAD of a missing key cannot tell apart from a missing bucket.
    pub async fn check(&self) -> RemoteResult<()> {
        let probe = self.path(".stratus-probe")?;
        match self.store.list_with_delimiter(Some(&probe)).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { path, .. }) => Err(RemoteError::Permanent(
                format!("{}: bucket or container not found ({path})", self.name),
            )),
            // object_store's GCS listing folds a missing bucket's 404 into a generic error.
            Err(e) => match map_err(e) {
                RemoteError::Permanent(msg) if status_in(&msg) == Some(404) => {
                    Err(RemoteError::Permanent(format!(
                        "{}: bucket or container not found ({})",
                        self.name,
                        super::error::brief_text(&msg)
                    )))
                }
                other => Err(other),
            },
        }
    }

    /// Finds out whether the server refuses a second create-only write (`If-None-Match: *`,
    /// GCS `x-goog-if-generation-match: 0`) and a write against a replaced version (`If-Match`,
    /// GCS by generation), with the same object_store writes the uploader makes, on a scratch
    /// object under the prefix that is removed afterwards. Four or five requests.
    pub async fn probe_preconditions(&self) -> RemoteResult<Preconditions> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("{PROBE_PREFIX}{:x}-{nanos:x}", std::process::id());
        let path = self.path(&key)?;
        let verdict = self.probe_at(&path).await;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(key = %path, error = %e, "could not remove the precondition probe")
            }
        }
        verdict
    }

    async fn probe_at(&self, path: &Path) -> RemoteResult<Preconditions> {
        let put = |body: &'static [u8], mode: PutMode| {
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            self.store
                .put_opts(path, PutPayload::from_static(body), opts)
        };
        let refused = |e: &object_store::Error| {
            matches!(
                e,
                object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
            )
        };
        let first = put(b"1", PutMode::Create).await.map_err(map_err)?;
        let mut ignored = Vec::new();
        match put(b"2", PutMode::Create).await {
            Ok(_) => {
                ignored.push("a second create-only write (If-None-Match: *) replaced the object")
            }
            Err(e) if refused(&e) => {
                put(b"2", PutMode::Overwrite).await.map_err(map_err)?;
            }
            Err(e) => return Err(map_err(e)),
        }
        // The object now holds "2": `first` names a replaced version.
        let stale = PutMode::Update(object_store::UpdateVersion {
            e_tag: first.e_tag,
            version: first.version,
        });
        match put(b"3", stale).await {
            Ok(_) => ignored.push("a write against a replaced version (If-Match) went through"),
            Err(e) if refused(&e) => {}
            Err(e) => return Err(map_err(e)),
        }
        Ok(if ignored.is_empty() {
            Preconditions::Enforced
        } else {
            Preconditions::Ignored {
                what: ignored.join("; "),
            }
        })
    }

    fn ignores_preconditions(&self) -> bool {
        self.ignores_preconditions.load(Ordering::Relaxed)
    }

    /// On a server that ignores preconditions: the comparison the server should make, made
    /// by us (through `backend`'s HEAD) just before the write. A writer between this HEAD and
    /// our write still goes unnoticed (docs/semantics.md); elsewhere the server decides and
    /// this does nothing.
    pub async fn guard(&self, backend: &dyn Backend, key: &str, cond: &Cond) -> RemoteResult<()> {
        if !self.ignores_preconditions() || *cond == Cond::Overwrite {
            return Ok(());
        }
        let current = backend.head(key, false).await?;
        let ok = match cond {
            Cond::Overwrite => true,
            Cond::Create => current.is_none(),
            Cond::Match { etag: Some(e), .. } => {
                current.and_then(|c| c.etag).as_deref() == Some(e.as_str())
            }
            Cond::Match {
                etag: None,
                version: Some(v),
            } => current.and_then(|c| c.version).as_deref() == Some(v.as_str()),
            Cond::Match {
                etag: None,
                version: None,
            } => true,
        };
        if ok {
            Ok(())
        } else {
            tracing::info!(
                key,
                "changed elsewhere (checked with a HEAD: the server ignores preconditions)"
            );
            Err(RemoteError::Conflict(key.to_string()))
        }
    }

    /// `guard` for the object a copy or a delete expects at `key` (a missing one is left to
    /// the request itself: a copy answers NotFound, a delete of nothing succeeds).
    pub async fn guard_present(
        &self,
        backend: &dyn Backend,
        key: &str,
        want: Option<&str>,
    ) -> RemoteResult<()> {
        let Some(want) = want else {
            return Ok(());
        };
        if !self.ignores_preconditions() {
            return Ok(());
        }
        match backend.head(key, false).await? {
            Some(h) if h.etag.as_deref() != Some(want) => {
                tracing::info!(
                    key,
                    "changed elsewhere (checked with a HEAD: the server ignores preconditions)"
                );
                Err(RemoteError::Conflict(key.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Drops the precondition check's scratch object (another mount's, mid-check) from a
    /// listing: it is no file.
    pub fn without_probes(mut rows: Vec<ObjectInfo>) -> Vec<ObjectInfo> {
        rows.retain(|r| !r.key.starts_with(PROBE_PREFIX) || r.key.contains('/'));
        rows
    }

    /// The listing `rows` with every object's metadata (one HEAD each through `backend`,
    /// several in flight).
    pub async fn scan(
        backend: &dyn Backend,
        rows: Vec<ObjectInfo>,
    ) -> RemoteResult<Vec<ObjectInfo>> {
        let results: Vec<RemoteResult<Option<ObjectInfo>>> = futures::stream::iter(rows)
            .map(|o| async move {
                if super::check_key(&o.key).is_err() {
                    // Reported by normalize_listing; not worth a HEAD.
                    return Ok(Some(o));
                }
                let dir = o.kind == ObjectKind::Dir;
                Ok(backend.head(&o.key, dir).await?.map(|h| ObjectInfo {
                    last_modified_ns: o.last_modified_ns,
                    ..h
                }))
            })
            .buffer_unordered(SCAN_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            if let Some(o) = r? {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// A HEAD through object_store (`get_opts` with `head`, which, unlike `head`, returns the
    /// user metadata); `None` when absent.
    pub async fn head_attributes(
        &self,
        key: &str,
    ) -> RemoteResult<Option<(object_store::ObjectMeta, Attributes)>> {
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.store.get_opts(&self.path(key)?, opts).await {
            Ok(r) => Ok(Some((r.meta, r.attributes))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> RemoteResult<bytes::Bytes> {
        let len = (range.end - range.start) as usize;
        let opts = GetOptions {
            // Bounded ranges only: Azure refuses suffix ranges inside object_store.
            range: Some(object_store::GetRange::Bounded(range)),
            if_match: if_match.map(str::to_string),
            ..Default::default()
        };
        let mut body = self.get_answer(key, opts).await?;
        let mut buf = bytes::BytesMut::with_capacity(len);
        loop {
            match tokio::time::timeout(STALL_TIMEOUT, body.try_next()).await {
                Err(_) => {
                    return Err(RemoteError::unavailable(format!(
                        "{key}: transfer stalled for {STALL_TIMEOUT:?}"
                    )))
                }
                Ok(chunk) => match chunk.map_err(map_err)? {
                    Some(c) => {
                        buf.extend_from_slice(&c);
                        super::bwlimit::pace_down(c.len() as u64).await;
                    }
                    None => break,
                },
            }
        }
        Ok(buf.freeze())
    }

    pub async fn get_stream(&self, key: &str, if_match: Option<&str>) -> RemoteResult<ByteStream> {
        let opts = GetOptions {
            if_match: if_match.map(str::to_string),
            ..Default::default()
        };
        Ok(self.get_answer(key, opts).await?.map_err(map_err).boxed())
    }

    /// Sends a GET for a reader that is waiting on it: a server that accepted the connection
    /// and then went silent must not hold it for the client's whole request timeout. The answer
    /// must start within FIRST_BYTE_TIMEOUT (the caller bounds stalls of the body, STALL_TIMEOUT
    /// for ranged reads); a slow but moving transfer is never cut.
    async fn get_answer(
        &self,
        key: &str,
        opts: GetOptions,
    ) -> RemoteResult<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>> {
        let r = tokio::time::timeout(
            FIRST_BYTE_TIMEOUT,
            self.store.get_opts(&self.path(key)?, opts),
        )
        .await
        .map_err(|_| {
            RemoteError::unavailable(format!("{key}: no answer within {FIRST_BYTE_TIMEOUT:?}"))
        })?
        .map_err(map_err)?;
        Ok(r.into_stream())
    }

    pub async fn download(&self, key: &str, dest: &std::path::Path) -> RemoteResult<u64> {
        let r = self.store.get(&self.path(key)?).await.map_err(map_err)?;
        let mut f = tokio::fs::File::create(dest).await?;
        let mut stream = r.into_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(map_err)? {
            f.write_all(&chunk).await?;
            n += chunk.len() as u64;
            super::bwlimit::pace_down(chunk.len() as u64).await;
        }
        f.flush().await?;
        Ok(n)
    }

    /// One PUT through object_store, its condition as `mode` (which object_store sends as
    /// If-Match / If-None-Match, or on GCS as a generation).
    pub async fn put(
        &self,
        key: &str,
        body: PutPayload,
        mode: PutMode,
        attributes: Attributes,
    ) -> RemoteResult<Written> {
        let opts = PutOptions {
            mode,
            attributes,
            ..Default::default()
        };
        let r = self
            .store
            .put_opts(&self.path(key)?, body, opts)
            .await
            .map_err(map_err)?;
        Ok(Written {
            etag: etag(r.e_tag),
            version: r.version,
        })
    }

    /// A file small enough for one PUT.
    pub async fn put_file(
        &self,
        key: &str,
        src: &std::path::Path,
        meta: &Meta,
        mode: PutMode,
    ) -> RemoteResult<Written> {
        let data = tokio::fs::read(src).await?;
        super::bwlimit::pace_up(data.len() as u64).await;
        self.put(
            key,
            PutPayload::from(data),
            mode,
            self.attributes(meta, false),
        )
        .await
    }

    /// A symlink: an object whose body is the target.
    pub async fn put_symlink(
        &self,
        key: &str,
        meta: &Meta,
        mode: PutMode,
    ) -> RemoteResult<Written> {
        // A special file's object is empty: its metadata says what it is.
        let body = meta.symlink.clone().unwrap_or_default().into_bytes();
        self.put(
            key,
            PutPayload::from(body),
            mode,
            self.attributes(meta, false),
        )
        .await
    }
}

/// Uploads `src` (`size` bytes) in parts through object_store, then lets `complete` (a raw
/// request that carries the server's precondition) assemble them. A refused or failed
/// completion aborts the upload, whose parts would otherwise be kept (and billed); if a
/// completion did go through, there is no upload left to abort.
pub async fn parts_then_complete<Fut>(
    store: Arc<dyn MultipartStore>,
    path: &Path,
    attributes: Attributes,
    src: &std::path::Path,
    size: u64,
    complete: impl FnOnce(MultipartId, Vec<String>) -> Fut,
) -> RemoteResult<Written>
where
    Fut: std::future::Future<Output = RemoteResult<(Option<String>, Option<String>)>>,
{
    multipart(store.clone(), path, attributes, |id| async move {
        let parts = put_parts(store, path, &id, src, size).await?;
        complete(id, parts).await
    })
    .await
}

/// Creates a multipart upload, runs `body` (its parts and its completion) and answers what
/// the completion wrote; aborts the upload when anything fails, so no parts are left behind.
async fn multipart<'a, F, Fut>(
    store: Arc<dyn MultipartStore>,
    path: &'a Path,
    attributes: Attributes,
    body: F,
) -> RemoteResult<Written>
where
    F: FnOnce(MultipartId) -> Fut,
    Fut: std::future::Future<Output = RemoteResult<(Option<String>, Option<String>)>> + 'a,
{
    let opts = PutMultipartOptions {
        attributes,
        ..Default::default()
    };
    let id = store
        .create_multipart_opts(path, opts)
        .await
        .map_err(map_err)?;
    match body(id.clone()).await {
        Ok((tag, version)) => Ok(Written {
            etag: etag(tag),
            version,
        }),
        Err(e) => {
            let _ = store.abort_multipart(path, &id).await;
            Err(e)
        }
    }
}

/// The size of a multipart upload's parts, for backends that plan a differential upload on
/// the same cut (S3 wants every part but the last at 5 MiB or more).
pub const PART: u64 = PART_SIZE as u64;

/// A differential multipart upload: each `PART`-sized range of `src` that `delta` holds
/// unchanged becomes a part copied on the server by `copy_part` (pinned to the base's ETag),
/// every other part is sent from `src`; `complete` (a raw request carrying the upload's
/// precondition, the base's ETag) assembles them. Aborted, like any multipart upload, when
/// anything fails.
#[allow(clippy::too_many_arguments)]
pub async fn parts_reusing_then_complete<C, CFut, Fut>(
    store: Arc<dyn MultipartStore>,
    path: &Path,
    attributes: Attributes,
    src: &std::path::Path,
    size: u64,
    delta: &Delta,
    copy_part: C,
    complete: impl FnOnce(MultipartId, Vec<String>) -> Fut,
) -> RemoteResult<Written>
where
    C: Fn(MultipartId, usize, std::ops::Range<u64>) -> CFut,
    CFut: std::future::Future<Output = RemoteResult<String>>,
    Fut: std::future::Future<Output = RemoteResult<(Option<String>, Option<String>)>>,
{
    multipart(store.clone(), path, attributes, |id| async move {
        let reuse = |idx: usize, range: std::ops::Range<u64>| {
            delta
                .unchanged(&range)
                .then(|| copy_part(id.clone(), idx, range))
        };
        let parts = send_parts(store, path, &id, src, size, reuse).await?;
        complete(id, parts).await
    })
    .await
}

/// Bytes `range` of the file at `src` (an error if the file is shorter).
pub(super) async fn read_range(
    src: &std::path::Path,
    range: std::ops::Range<u64>,
) -> std::io::Result<bytes::Bytes> {
    let file = Arc::new(std::fs::File::open(src)?);
    read_part(file, range).await
}

/// Uploads the parts of a multipart upload through object_store and returns their ids in
/// order; the completion is the caller's, because it must carry the server's precondition.
pub async fn put_parts(
    store: Arc<dyn MultipartStore>,
    path: &Path,
    id: &MultipartId,
    src: &std::path::Path,
    size: u64,
) -> RemoteResult<Vec<String>> {
    let no_reuse =
        |_: usize, _: std::ops::Range<u64>| None::<futures::future::Ready<RemoteResult<String>>>;
    send_parts(store, path, id, src, size, no_reuse).await
}

/// The parts of `src` (`size` bytes cut at `PART`), `PARTS_IN_FLIGHT` at once, in whatever
/// order they finish (a slow part holds one slot, not the whole upload): each one a
/// server-side copy where `reuse` answers one, else read from `src` once, straight into the
/// buffer that becomes the request's body, and sent. Answers the parts' ids in order.
///
/// Each part read pays the upload bucket before it goes out: under a limit, parts leave one
/// by one at its rate. Every part's buffer is in flight: memory stays at `PARTS_IN_FLIGHT`
/// parts, whatever the file's size.
async fn send_parts<C, CFut>(
    store: Arc<dyn MultipartStore>,
    path: &Path,
    id: &MultipartId,
    src: &std::path::Path,
    size: u64,
    reuse: C,
) -> RemoteResult<Vec<String>>
where
    C: Fn(usize, std::ops::Range<u64>) -> Option<CFut>,
    CFut: std::future::Future<Output = RemoteResult<String>>,
{
    let file = Arc::new(std::fs::File::open(src)?);
    let ranges: Vec<_> = super::delta::parts(size, PART).collect();
    let mut ids: Vec<Option<String>> = vec![None; ranges.len()];
    let mut done = futures::stream::iter(ranges.into_iter().enumerate())
        .map(|(idx, range)| {
            let copy = reuse(idx, range.clone());
            let (store, path, id, file) = (store.clone(), path.clone(), id.clone(), file.clone());
            async move {
                let n = range.end - range.start;
                if let Some(copy) = copy {
                    let part = copy.await?;
                    super::note_copied(n);
                    return Ok((idx, part));
                }
                let body = read_part(file, range).await?;
                super::bwlimit::pace_up(n).await;
                // On a task of its own: the request's signing hashes the body, and with
                // several parts in flight that work spreads over the runtime's threads.
                let part = Aborting(tokio::spawn(async move {
                    store
                        .put_part(&path, &id, idx, PutPayload::from(body))
                        .await
                }))
                .await
                .map_err(|e| RemoteError::Io(std::io::Error::other(e.to_string())))?
                .map_err(map_err)?;
                super::note_sent(n);
                Ok::<_, RemoteError>((idx, part.content_id))
            }
        })
        .buffer_unordered(PARTS_IN_FLIGHT);
    while let Some((idx, part)) = done.try_next().await? {
        ids[idx] = Some(part);
    }
    Ok(ids
        .into_iter()
        .map(|p| p.expect("every part answered"))
        .collect())
}

/// A spawned task that is aborted when its handle is dropped: a failed upload stops the
/// parts still in flight instead of leaving them running detached.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for Aborting<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bytes `range` of `file`, read with one positioned read (on a blocking thread) into the
/// buffer that becomes the part's body: no copy between the page cache and the request.
async fn read_part(
    file: Arc<std::fs::File>,
    range: std::ops::Range<u64>,
) -> std::io::Result<bytes::Bytes> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // The file shrank under the upload: this version cannot be sent; the
                // uploader's check of the entry after the upload sends the new one.
                std::io::Error::new(e.kind(), "the file shrank during its upload")
            } else {
                e
            }
        })?;
        Ok(bytes::Bytes::from(buf))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
}
