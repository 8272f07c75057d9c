//! S3, Azure Blob and Google Cloud Storage through object_store, plus raw requests where
//! object_store's `Path` cannot express a key or its API cannot send the server a precondition
//! (`s3_raw`, `azure_raw`, `gcs_raw`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientConfigKey, GetOptions, MultipartId, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::azure_raw::AzureList as AzureRaw;
use super::gcs_raw::GcsRaw;
use super::s3_raw::S3Raw;
use super::{
    Cond, Meta, ObjectInfo, ObjectKind, Preconditions, RemoteError, RemoteResult, RemoteUrl,
    Written, PROBE_PREFIX,
};

/// Files above this go up as multipart uploads.
const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once for one multipart upload.
const PARTS_IN_FLIGHT: usize = 4;
/// HEAD requests in flight at once while scanning.
const SCAN_CONCURRENCY: usize = 16;
/// All three clouds cap object names at 1024 bytes.
const MAX_KEY: usize = 1024;
/// Azure's directory marker: an empty blob at the directory's own name carrying this metadata,
/// as blobfuse2 and Data Lake Storage write it. object_store cannot name a blob that ends in
/// `/` (S3's convention), and this one other Azure tools already understand.
const AZURE_FOLDER_META: &str = "hdi_isfolder";

/// How a backend marks an empty directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Markers {
    /// A `dir/` key, written with raw requests (S3, and GCS as gcsfuse writes it).
    Slash,
    /// An empty blob at `dir` with `hdi_isfolder=true` (Azure).
    FolderBlob,
}

pub struct ObjectRemote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Present for S3: directory markers, listings, and the completions, copies and deletes
    /// that carry the server's precondition.
    raw: Option<S3Raw>,
    /// S3's client by its own type, for the part uploads of a multipart upload.
    s3: Option<Arc<AmazonS3>>,
    markers: Markers,
    /// Azure's client by its own type (part uploads, presigned metadata updates).
    azure: Option<(Arc<MicrosoftAzure>, reqwest::Client)>,
    /// Azure requests of our own (see `azure_raw`): listings, and Put Block List, Copy Blob
    /// and Delete Blob with the server's precondition.
    azure_raw: Option<AzureRaw>,
    /// GCS's client by its own type (part uploads) and our XML-API requests: directory
    /// markers, listings, and the writes conditioned on a generation.
    gcs: Option<Box<(Arc<GoogleCloudStorage>, GcsRaw)>>,
    name: &'static str,
    /// Set when the mount-time check found that the server ignores preconditions: each
    /// conditional write then compares with a HEAD first (see `guard`).
    ignores_preconditions: AtomicBool,
}

/// Whether an object's metadata marks it as an Azure folder.
fn is_folder(attrs: &Attributes) -> bool {
    attrs.iter().any(|(k, v)| {
        matches!(k, Attribute::Metadata(k) if k.eq_ignore_ascii_case(AZURE_FOLDER_META))
            && v.as_ref().eq_ignore_ascii_case("true")
    })
}

/// ETags in one spelling, quoted as HTTP sends them. Azure's listing gives them bare while its
/// headers quote them; compared as strings, every poll would see our own uploads as changed.
fn etag(e: Option<String>) -> Option<String> {
    e.map(|e| {
        if e.starts_with('"') || e.starts_with("W/") {
            e
        } else {
            format!("\"{e}\"")
        }
    })
}

/// Maps object_store's errors onto the decisions the uploader makes.
pub fn map_err(e: object_store::Error) -> RemoteError {
    use object_store::Error as E;
    match e {
        E::NotFound { path, .. } => RemoteError::NotFound(path),
        E::Precondition { path, .. } | E::AlreadyExists { path, .. } => RemoteError::Conflict(path),
        E::PermissionDenied { path, source } | E::Unauthenticated { path, source } => {
            RemoteError::Permanent(format!("access denied to {path}: {source}"))
        }
        E::InvalidPath { source } => RemoteError::Permanent(format!("invalid key: {source}")),
        e @ (E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }) => RemoteError::Permanent(e.to_string()),
        other => classify_message(other.to_string()),
    }
}

/// object_store folds HTTP failures into `Generic`; its text still carries the status code.
fn classify_message(msg: String) -> RemoteError {
    classify_status(status_in(&msg).unwrap_or(0), msg)
}

/// The HTTP status object_store's error text names, if any.
fn status_in(msg: &str) -> Option<u16> {
    msg.find("status code: ").and_then(|i| {
        msg[i + 13..]
            .chars()
            .take(3)
            .collect::<String>()
            .parse()
            .ok()
    })
}

/// The one rule for an HTTP failure: a 4xx other than 408 and 429 will not heal by waiting
/// (parked with the server's message), anything else is retried with backoff.
pub(super) fn classify_status(code: u16, msg: String) -> RemoteError {
    if (400..500).contains(&code) && code != 408 && code != 429 {
        RemoteError::Permanent(msg)
    } else {
        RemoteError::unavailable(msg)
    }
}

/// `cond` as the precondition headers S3 and Azure both understand on the writes object_store
/// cannot condition (multipart completion, copies): the server decides, so a writer elsewhere
/// is caught there, not by a comparison made a moment before.
fn cond_headers(cond: &Cond) -> Vec<(&'static str, String)> {
    match cond {
        Cond::Overwrite | Cond::Match { etag: None, .. } => Vec::new(),
        Cond::Create => vec![("If-None-Match", "*".to_string())],
        Cond::Match { etag: Some(e), .. } => vec![("If-Match", e.clone())],
    }
}

fn put_mode(cond: &Cond) -> PutMode {
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

fn attributes(meta: &Meta) -> Attributes {
    meta.to_pairs()
        .into_iter()
        .map(|(k, v)| (Attribute::Metadata(k.into()), AttributeValue::from(v)))
        .collect()
}

fn meta_of(attrs: &Attributes) -> Meta {
    Meta::from_pairs(attrs.iter().filter_map(|(k, v)| match k {
        Attribute::Metadata(k) => Some((k.as_ref(), v.as_ref())),
        _ => None,
    }))
}

/// How long a ranged read waits for the server to start answering. Reads block a user's
/// application, so a silent server must turn into EIO within seconds (see docs/semantics.md).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the body of a ranged read may go without a single byte.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

fn retry_config() -> RetryConfig {
    // Our own queue retries for as long as it takes; object_store's retries only smooth over
    // single dropped requests, so keep them short and let the status show the outage.
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    }
}

/// Timeouts we want unless the environment or `-o` chose others. Set as config keys, not
/// with `with_client_options`, which would throw away what `from_env` read (AWS_ALLOW_HTTP).
const CLIENT_DEFAULTS: [(ClientConfigKey, &str); 2] = [
    (ClientConfigKey::ConnectTimeout, "5s"),
    (ClientConfigKey::Timeout, "120s"),
];

impl ObjectRemote {
    pub fn open(url: &RemoteUrl, options: &[(String, String)]) -> Result<ObjectRemote, String> {
        let bad_opt = |k: &str, e: object_store::Error| format!("-o {k}: {e}");
        match url {
            RemoteUrl::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config());
                for (k, v) in CLIENT_DEFAULTS {
                    let key = AmazonS3ConfigKey::Client(k);
                    if b.get_config_value(&key).is_none() {
                        b = b.with_config(key, v);
                    }
                }
                for (k, v) in options {
                    let key: AmazonS3ConfigKey = k.parse().map_err(|e| bad_opt(k, e))?;
                    b = b.with_config(key, v);
                }
                let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
                let region = b
                    .get_config_value(&AmazonS3ConfigKey::Region)
                    .unwrap_or_else(|| "us-east-1".into());
                let virtual_hosted = b
                    .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
                    .is_some_and(|v| v == "true");
                let s3 = Arc::new(b.build().map_err(|e| format!("s3://{bucket}: {e}"))?);
                let raw = S3Raw::new(
                    endpoint,
                    bucket.clone(),
                    region,
                    virtual_hosted,
                    s3.credentials().clone(),
                );
                let mut remote =
                    ObjectRemote::new(s3.clone(), prefix, Some(raw), Markers::Slash, "s3");
                remote.s3 = Some(s3);
                Ok(remote)
            }
            RemoteUrl::Azure { container, prefix } => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry_config());
                for (k, v) in CLIENT_DEFAULTS {
                    let key = AzureConfigKey::Client(k);
                    if b.get_config_value(&key).is_none() {
                        b = b.with_config(key, v);
                    }
                }
                for (k, v) in options {
                    let key: AzureConfigKey = k.parse().map_err(|e| bad_opt(k, e))?;
                    b = b.with_config(key, v);
                }
                let container_url = azure_container_url(&b, container);
                let account = b.get_config_value(&AzureConfigKey::AccountName);
                let az = Arc::new(b.build().map_err(|e| format!("az://{container}: {e}"))?);
                // object_store's build needs the account too: this holds once it succeeded.
                let (url, account_name) = container_url
                    .ok_or_else(|| format!("az://{container}: no storage account name"))?;
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(60))
                    .build()
                    .map_err(|e| format!("az://{container}: {e}"))?;
                let mut remote =
                    ObjectRemote::new(az.clone(), prefix, None, Markers::FolderBlob, "azure");
                remote.azure_raw = Some(AzureRaw::new(
                    client.clone(),
                    url,
                    account.unwrap_or(account_name),
                    az.credentials().clone(),
                ));
                remote.azure = Some((az, client));
                Ok(remote)
            }
            RemoteUrl::Gcs { bucket, prefix } => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config());
                for (k, v) in CLIENT_DEFAULTS {
                    let key = GoogleConfigKey::Client(k);
                    if b.get_config_value(&key).is_none() {
                        b = b.with_config(key, v);
                    }
                }
                for (k, v) in options {
                    let key: GoogleConfigKey = k.parse().map_err(|e| bad_opt(k, e))?;
                    b = b.with_config(key, v);
                }
                let base_url = gcs_base_url(&b);
                let gcs = Arc::new(b.build().map_err(|e| format!("gs://{bucket}: {e}"))?);
                let raw = GcsRaw::new(&base_url, bucket, gcs.credentials().clone());
                let mut remote =
                    ObjectRemote::new(gcs.clone(), prefix, None, Markers::Slash, "gcs");
                remote.gcs = Some(Box::new((gcs, raw)));
                Ok(remote)
            }
            RemoteUrl::Local(_) => Err("not an object store URL".into()),
        }
    }

    fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        raw: Option<S3Raw>,
        markers: Markers,
        name: &'static str,
    ) -> ObjectRemote {
        ObjectRemote {
            store,
            prefix: prefix.to_string(),
            raw,
            s3: None,
            markers,
            azure: None,
            azure_raw: None,
            gcs: None,
            name,
            ignores_preconditions: AtomicBool::new(false),
        }
    }

    pub fn set_preconditions_ignored(&self, ignored: bool) {
        self.ignores_preconditions.store(ignored, Ordering::Relaxed);
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

    /// On a server that ignores preconditions: the comparison the server should make, made
    /// by us just before the write. A writer between this HEAD and our write still goes
    /// unnoticed (docs/semantics.md); elsewhere the server decides and this does nothing.
    async fn guard(&self, key: &str, cond: &Cond) -> RemoteResult<()> {
        if !self.ignores_preconditions.load(Ordering::Relaxed) || *cond == Cond::Overwrite {
            return Ok(());
        }
        let current = self.head(key, false).await?;
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
    async fn guard_present(&self, key: &str, want: Option<&str>) -> RemoteResult<()> {
        let Some(want) = want else {
            return Ok(());
        };
        if !self.ignores_preconditions.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.head(key, false).await? {
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

    /// Whether empty directories can be stored on this backend: on every one now (S3 and
    /// GCS `dir/` objects, Azure folder blobs).
    pub fn has_dir_markers(&self) -> bool {
        true
    }

    /// `cond` as the generation GCS must find at `key` (`"0"`: no object), which the server
    /// then decides (`x-goog-if-generation-match`). A base known only by its ETag (a listing
    /// carries no generation) is looked up first: its generation is pinned only if it still
    /// has that ETag, so a writer in between is caught either here or by the server.
    async fn generation_for(
        &self,
        raw: &GcsRaw,
        key: &str,
        cond: &Cond,
    ) -> RemoteResult<Option<String>> {
        match cond {
            Cond::Overwrite
            | Cond::Match {
                etag: None,
                version: None,
            } => Ok(None),
            Cond::Create => Ok(Some("0".into())),
            Cond::Match {
                version: Some(v), ..
            } => Ok(Some(v.clone())),
            Cond::Match {
                etag: Some(want),
                version: None,
            } => match raw.head(&self.full(key)).await? {
                Some(h) if etag(h.etag.clone()).as_deref() == Some(want.as_str()) => {
                    h.version.map(Some).ok_or_else(|| {
                        RemoteError::Permanent(format!("{key}: the server named no generation"))
                    })
                }
                _ => Err(RemoteError::Conflict(key.to_string())),
            },
        }
    }

    /// The mode of a write through object_store: on GCS the condition as a generation
    /// (object_store's `PutMode::Update` sends only the generation there), elsewhere as is.
    async fn gcs_put_mode(&self, key: &str, cond: &Cond) -> RemoteResult<PutMode> {
        let Some((_, raw)) = self.gcs.as_deref() else {
            return Ok(put_mode(cond));
        };
        Ok(match self.generation_for(raw, key, cond).await? {
            None => PutMode::Overwrite,
            Some(g) if g == "0" => PutMode::Create,
            Some(g) => PutMode::Update(object_store::UpdateVersion {
                e_tag: None,
                version: Some(g),
            }),
        })
    }

    fn full(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    fn path(&self, key: &str) -> RemoteResult<Path> {
        let full = self.full(key);
        // `parse`, not `from`: `from` would percent-encode characters and the object would no
        // longer sit at the user's path byte for byte.
        Path::parse(&full)
            .map_err(|e| RemoteError::Permanent(format!("key {full:?} not accepted: {e}")))
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
                        "{}: bucket or container not found ({msg})",
                        self.name
                    )))
                }
                other => Err(other),
            },
        }
    }

    fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// The listing alone: keys, sizes and ETags, no metadata (directory markers as `Dir`,
    /// everything else as `File` until a HEAD says otherwise).
    pub async fn list(&self) -> RemoteResult<Vec<ObjectInfo>> {
        let list_prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut rows: Vec<ObjectInfo> = Vec::new();
        let row = |rel: &str, marker: bool, size, etag, lm| ObjectInfo {
            key: rel.to_string(),
            kind: if marker {
                ObjectKind::Dir
            } else {
                ObjectKind::File
            },
            size,
            etag,
            version: None,
            last_modified_ns: lm,
            meta: Meta::default(),
        };
        if let Some(azure) = &self.azure_raw {
            for b in azure.list(&list_prefix).await? {
                let Some(rel) = self.strip(&b.name) else {
                    continue;
                };
                if rel.is_empty() {
                    continue;
                }
                let lm = b.last_modified.and_then(|t| t.timestamp_nanos_opt());
                rows.push(row(rel, b.folder, b.size, etag(b.etag), lm));
            }
        } else if self.raw.is_some() || self.gcs.is_some() {
            let objects = match (&self.raw, self.gcs.as_deref()) {
                (Some(raw), _) => raw.list(&list_prefix).await?,
                (None, Some((_, gcs))) => gcs.list(&list_prefix).await?,
                (None, None) => unreachable!("checked just above"),
            };
            for o in objects {
                let Some(rel) = self.strip(&o.key) else {
                    continue;
                };
                let (rel, marker) = match rel.strip_suffix('/') {
                    Some(r) => (r, true),
                    None => (rel, false),
                };
                if rel.is_empty() {
                    continue;
                }
                let lm = o.last_modified.and_then(|t| t.timestamp_nanos_opt());
                rows.push(row(rel, marker, o.size, o.etag, lm));
            }
        } else {
            let prefix = if self.prefix.is_empty() {
                None
            } else {
                Some(self.path("")?)
            };
            let mut s = self.store.list(prefix.as_ref());
            while let Some(o) = s.try_next().await.map_err(map_err)? {
                let Some(rel) = self.strip(o.location.as_ref()) else {
                    continue;
                };
                let lm = o.last_modified.timestamp_nanos_opt();
                rows.push(row(rel, false, o.size, etag(o.e_tag), lm));
            }
        }
        // The precondition check's scratch object (another mount's, mid-check) is no file.
        rows.retain(|r| !r.key.starts_with(PROBE_PREFIX) || r.key.contains('/'));
        Ok(rows)
    }

    /// The listing with every object's metadata (one HEAD each, several in flight).
    pub async fn scan(&self) -> RemoteResult<Vec<ObjectInfo>> {
        let rows = self.list().await?;
        let results: Vec<RemoteResult<Option<ObjectInfo>>> = futures::stream::iter(rows)
            .map(|o| async move {
                if super::check_key(&o.key).is_err() {
                    // Reported by normalize_listing; not worth a HEAD.
                    return Ok(Some(o));
                }
                let dir = o.kind == ObjectKind::Dir;
                Ok(self.head(&o.key, dir).await?.map(|h| ObjectInfo {
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

    /// One object with our metadata; `None` if it is not there.
    pub async fn head(&self, rel: &str, dir: bool) -> RemoteResult<Option<ObjectInfo>> {
        let kind_of = |meta: &Meta| {
            if dir {
                ObjectKind::Dir
            } else if meta.symlink.is_some() {
                ObjectKind::Symlink
            } else {
                ObjectKind::File
            }
        };
        if self.raw.is_some() || self.gcs.is_some() {
            let key = if dir {
                format!("{}/", self.full(rel))
            } else {
                self.full(rel)
            };
            let h = match (&self.raw, self.gcs.as_deref()) {
                (Some(raw), _) => raw.head(&key).await?,
                (None, Some((_, gcs))) => gcs.head(&key).await?,
                (None, None) => unreachable!("checked just above"),
            };
            let Some(h) = h else {
                return Ok(None);
            };
            let meta = Meta::from_pairs(h.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            return Ok(Some(ObjectInfo {
                key: rel.to_string(),
                kind: kind_of(&meta),
                size: h.size,
                etag: etag(h.etag),
                version: h.version,
                last_modified_ns: None,
                meta,
            }));
        }
        if dir && self.markers != Markers::FolderBlob {
            return Ok(None);
        }
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.store.get_opts(&self.path(rel)?, opts).await {
            Ok(r) => {
                // A folder blob is no file, and a file is no directory marker: as on S3, where
                // `dir` and `dir/` are different keys.
                if (self.markers == Markers::FolderBlob && is_folder(&r.attributes)) != dir {
                    return Ok(None);
                }
                let meta = meta_of(&r.attributes);
                Ok(Some(ObjectInfo {
                    key: rel.to_string(),
                    kind: kind_of(&meta),
                    size: r.meta.size,
                    etag: etag(r.meta.e_tag),
                    version: r.meta.version,
                    last_modified_ns: r.meta.last_modified.timestamp_nanos_opt(),
                    meta,
                }))
            }
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
                    Some(c) => buf.extend_from_slice(&c),
                    None => break,
                },
            }
        }
        Ok(buf.freeze())
    }

    pub async fn get_stream(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> RemoteResult<futures::stream::BoxStream<'static, RemoteResult<bytes::Bytes>>> {
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
        }
        f.flush().await?;
        Ok(n)
    }

    /// For writes we cannot have the server condition (a backend without raw requests; every
    /// cloud backend has them now): compare, then write.
    async fn precheck(&self, key: &str, cond: &Cond) -> RemoteResult<()> {
        if *cond == Cond::Overwrite {
            return Ok(());
        }
        let current = self.head(key, false).await?;
        if cond.admits(current.as_ref().and_then(|o| o.etag.as_deref())) {
            Ok(())
        } else {
            Err(RemoteError::Conflict(key.to_string()))
        }
    }

    pub async fn upload_file(
        &self,
        key: &str,
        src: &std::path::Path,
        size: u64,
        meta: &Meta,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        let path = self.path(key)?;
        self.guard(key, cond).await?;
        if size <= MULTIPART_THRESHOLD {
            let data = tokio::fs::read(src).await?;
            let opts = PutOptions {
                mode: self.gcs_put_mode(key, cond).await?,
                attributes: attributes(meta),
                ..Default::default()
            };
            let r = self
                .store
                .put_opts(&path, PutPayload::from(data), opts)
                .await
                .map_err(map_err)?;
            return Ok(Written {
                etag: etag(r.e_tag),
                version: r.version,
            });
        }
        if let (Some(s3), Some(raw)) = (&self.s3, &self.raw) {
            let full = self.full(key);
            let headers = cond_headers(cond);
            return parts_then_complete(s3.clone(), &path, meta, src, |id, parts| async move {
                raw.complete_multipart(&full, &id, &parts, &headers).await
            })
            .await;
        }
        if let Some((gcs, raw)) = self.gcs.as_deref() {
            let generation = self.generation_for(raw, key, cond).await?;
            let full = self.full(key);
            return parts_then_complete(gcs.clone(), &path, meta, src, |id, parts| async move {
                raw.complete_multipart(&full, &id, &parts, generation.as_deref())
                    .await
            })
            .await;
        }
        if let (Some((az, _)), Some(azure)) = (&self.azure, &self.azure_raw) {
            // Blocks nobody commits expire by themselves (Azure has no abort).
            let parts = put_parts(az.clone(), &path, &MultipartId::new(), src).await?;
            let tag = azure
                .put_block_list(
                    &self.full(key),
                    &parts,
                    &meta.to_pairs(),
                    &cond_headers(cond),
                )
                .await?;
            return Ok(Written {
                etag: etag(tag),
                version: None,
            });
        }
        self.precheck(key, cond).await?;
        let opts = PutMultipartOptions {
            attributes: attributes(meta),
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&path, opts)
            .await
            .map_err(map_err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut f = tokio::fs::File::open(src).await?;
        let mut buf = vec![0u8; PART_SIZE];
        let r: RemoteResult<()> = async {
            loop {
                let n = read_full(&mut f, &mut buf).await?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(map_err)?;
                w.write(&buf[..n]);
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            // An aborted upload leaves no partial object behind.
            let _ = w.abort().await;
            return Err(e);
        }
        let r = w.finish().await.map_err(map_err)?;
        Ok(Written {
            etag: etag(r.e_tag),
            version: r.version,
        })
    }

    pub async fn put_symlink(&self, key: &str, meta: &Meta, cond: &Cond) -> RemoteResult<Written> {
        let body = meta.symlink.clone().unwrap_or_default().into_bytes();
        self.guard(key, cond).await?;
        let opts = PutOptions {
            mode: self.gcs_put_mode(key, cond).await?,
            attributes: attributes(meta),
            ..Default::default()
        };
        let r = self
            .store
            .put_opts(&self.path(key)?, PutPayload::from(body), opts)
            .await
            .map_err(map_err)?;
        Ok(Written {
            etag: etag(r.e_tag),
            version: r.version,
        })
    }

    pub async fn put_dir(&self, key: &str, meta: &Meta) -> RemoteResult<Written> {
        if let Some((_, gcs)) = self.gcs.as_deref() {
            let (etag, version) = gcs
                .put_empty(&format!("{}/", self.full(key)), &meta.to_pairs())
                .await?;
            return Ok(Written { etag, version });
        }
        match (&self.raw, self.markers) {
            (Some(raw), _) => {
                let etag = raw
                    .put_empty(&format!("{}/", self.full(key)), &meta.to_pairs())
                    .await?;
                Ok(Written {
                    etag,
                    version: None,
                })
            }
            (None, Markers::FolderBlob) => self.put_folder_blob(key, meta).await,
            (None, _) => {
                tracing::warn!(
                    backend = self.name,
                    key,
                    "directory markers are not supported on this backend yet; an empty directory \
                     exists only in this mount until it holds a file"
                );
                Ok(Written::default())
            }
        }
    }

    /// Replaces the metadata of the object at `key` without moving its data, where the server
    /// can and `cond` names the version to change (S3: CopyObject onto itself, conditional on
    /// the source's ETag; Azure: Set Blob Metadata with `If-Match`; GCS: a copy onto itself
    /// with `x-goog-metadata-directive: REPLACE`, conditional on the generation). `None`: not
    /// possible here, the caller writes the whole object again.
    pub async fn update_meta(
        &self,
        key: &str,
        meta: &Meta,
        cond: &Cond,
        size: u64,
    ) -> RemoteResult<Option<Written>> {
        /// CopyObject's limit for a single request.
        const MAX_COPY: u64 = 5 << 30;
        let Cond::Match {
            etag: Some(want), ..
        } = cond
        else {
            return Ok(None);
        };
        self.guard(key, cond).await?;
        if let Some((_, gcs)) = self.gcs.as_deref() {
            // Pinned to the generation that holds `want`, on both sides of the copy (it is
            // the same object): a writer in between makes the server refuse it.
            let generation = self.generation_for(gcs, key, cond).await?;
            let full = self.full(key);
            let (tag, version) = gcs
                .copy(
                    &full,
                    &full,
                    Some(want),
                    generation.as_deref(),
                    Some(&meta.to_pairs()),
                )
                .await?;
            return Ok(Some(Written {
                etag: etag(tag),
                version,
            }));
        }
        if let Some(raw) = &self.raw {
            if size > MAX_COPY {
                return Ok(None);
            }
            let tag = raw
                .copy_with_metadata(&self.full(key), &meta.to_pairs(), want)
                .await?;
            return Ok(Some(Written {
                etag: etag(tag),
                version: None,
            }));
        }
        let Some((az, client)) = &self.azure else {
            return Ok(None);
        };
        use object_store::signer::Signer;
        let Ok(mut url) = az
            .signed_url(
                reqwest::Method::PUT,
                &self.path(key)?,
                Duration::from_secs(600),
            )
            .await
        else {
            return Ok(None);
        };
        url.query_pairs_mut().append_pair("comp", "metadata");
        let mut req = client
            .put(url)
            .header("If-Match", want.as_str())
            .header("x-ms-version", "2021-08-06")
            .header("Content-Length", "0");
        for (k, v) in meta.to_pairs() {
            req = req.header(format!("x-ms-meta-{k}"), v);
        }
        let r = req
            .send()
            .await
            .map_err(|e| RemoteError::unavailable(format!("set metadata of {key}: {e}")))?;
        match r.status().as_u16() {
            200..=299 => Ok(Some(Written {
                etag: etag(
                    r.headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                ),
                version: None,
            })),
            404 | 412 => Err(RemoteError::Conflict(key.to_string())),
            code => {
                let body = r.text().await.unwrap_or_default();
                Err(classify_message(format!(
                    "set metadata of {key}: status code: {code}: {body}"
                )))
            }
        }
    }

    /// Writes an Azure folder blob. Never over a file of the same name: that would destroy a
    /// version (the file is someone else's, and the entry is parked with the reason).
    async fn put_folder_blob(&self, key: &str, meta: &Meta) -> RemoteResult<Written> {
        let path = self.path(key)?;
        let mut attributes = attributes(meta);
        attributes.insert(
            Attribute::Metadata(AZURE_FOLDER_META.into()),
            AttributeValue::from("true"),
        );
        let put = |mode| {
            let opts = PutOptions {
                mode,
                attributes: attributes.clone(),
                ..Default::default()
            };
            self.store.put_opts(&path, PutPayload::default(), opts)
        };
        let r = match put(PutMode::Create).await {
            Ok(r) => r,
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                // Our marker already (new attributes for it), or a file.
                let Some(h) = self.head(key, true).await? else {
                    return Err(RemoteError::Permanent(format!(
                        "{key}: the remote holds a file where this mount has a directory"
                    )));
                };
                put(PutMode::Update(object_store::UpdateVersion {
                    e_tag: h.etag,
                    version: h.version,
                }))
                .await
                .map_err(map_err)?
            }
            Err(e) => return Err(map_err(e)),
        };
        Ok(Written {
            etag: etag(r.e_tag),
            version: r.version,
        })
    }

    /// Server-side copy of `from` to `to`, metadata included: only while `from` holds
    /// `source` (the version the caller means to move), and only if `to` satisfies `cond`.
    /// The server decides both (GCS: the destination by its generation, see `generation_for`).
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        source: Option<&str>,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        self.guard(to, cond).await?;
        self.guard_present(from, source).await?;
        if let Some(raw) = &self.raw {
            let (tag, version) = raw
                .copy_object(
                    &self.full(from),
                    &self.full(to),
                    source,
                    &cond_headers(cond),
                )
                .await?;
            return Ok(Written {
                etag: etag(tag),
                version,
            });
        }
        if let Some((_, gcs)) = self.gcs.as_deref() {
            let generation = self.generation_for(gcs, to, cond).await?;
            let (tag, version) = gcs
                .copy(
                    &self.full(from),
                    &self.full(to),
                    source,
                    generation.as_deref(),
                    None,
                )
                .await?;
            return Ok(Written {
                etag: etag(tag),
                version,
            });
        }
        if let Some(azure) = &self.azure_raw {
            let tag = azure
                .copy_blob(
                    &self.full(from),
                    &self.full(to),
                    source,
                    &cond_headers(cond),
                )
                .await?;
            return Ok(Written {
                etag: etag(tag),
                version: None,
            });
        }
        self.precheck(to, cond).await?;
        if let Some(want) = source {
            match self.head(from, false).await? {
                Some(h) if h.etag.as_deref() != Some(want) => {
                    return Err(RemoteError::Conflict(from.to_string()))
                }
                _ => {}
            }
        }
        let to_path = self.path(to)?;
        self.store
            .copy(&self.path(from)?, &to_path)
            .await
            .map_err(map_err)?;
        let m = self.store.head(&to_path).await.map_err(map_err)?;
        Ok(Written {
            etag: etag(m.e_tag),
            version: m.version,
        })
    }

    /// Deletes an object; with `expect`, only the version with that ETag (decided at the
    /// server: S3 and Azure by the ETag, GCS by the generation that held it). Another version
    /// answers `Conflict`.
    pub async fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        if !dir {
            self.guard_present(key, expect).await?;
        }
        if let Some((_, gcs)) = self.gcs.as_deref() {
            if dir {
                return gcs.delete(&format!("{}/", self.full(key)), None).await;
            }
            let generation = match expect {
                None => None,
                Some(want) => match gcs.head(&self.full(key)).await? {
                    // Deleted meanwhile by someone else: what we wanted.
                    None => return Ok(()),
                    Some(h) if etag(h.etag.clone()).as_deref() != Some(want) => {
                        return Err(RemoteError::Conflict(key.to_string()))
                    }
                    Some(h) => h.version,
                },
            };
            return gcs.delete(&self.full(key), generation.as_deref()).await;
        }
        if dir {
            if let Some(raw) = &self.raw {
                raw.delete(&format!("{}/", self.full(key))).await?;
            } else if let Some(folder) = self.head(key, true).await? {
                // Only that folder blob: a file that took the name since is not ours to
                // delete, and the server refuses it (`Conflict`).
                if let Some(azure) = &self.azure_raw {
                    return azure
                        .delete_blob(&self.full(key), folder.etag.as_deref())
                        .await;
                }
                match self.store.delete(&self.path(key)?).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(map_err(e)),
                }
            }
            return Ok(());
        }
        if let Some(raw) = &self.raw {
            return match raw.delete_if(&self.full(key), expect).await {
                // Deleted meanwhile by someone else: what we wanted.
                Err(RemoteError::NotFound(_)) => Ok(()),
                other => other,
            };
        }
        if let Some(azure) = &self.azure_raw {
            return azure.delete_blob(&self.full(key), expect).await;
        }
        if let Some(want) = expect {
            // Compare, then delete: the window between the two is in docs/semantics.md.
            if let Some(now) = self.head(key, false).await? {
                if now.etag.as_deref() != Some(want) {
                    return Err(RemoteError::Conflict(key.to_string()));
                }
            }
        }
        match self.store.delete(&self.path(key)?).await {
            // Azure answers NotFound for a missing key where S3 says nothing: both are success.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }
}

/// Where GCS requests go, the way object_store's builder decides it: `google_base_url`, else
/// the `gcs_base_url` of the service-account key (what emulators and our test server use),
/// else Google's endpoint.
fn gcs_base_url(b: &GoogleCloudStorageBuilder) -> String {
    if let Some(url) = b.get_config_value(&GoogleConfigKey::BaseUrl) {
        return url;
    }
    let key = b
        .get_config_value(&GoogleConfigKey::ServiceAccountKey)
        .or_else(|| {
            b.get_config_value(&GoogleConfigKey::ServiceAccount)
                .and_then(|p| std::fs::read_to_string(p).ok())
        });
    key.and_then(|k| serde_json::from_str::<serde_json::Value>(&k).ok())
        .and_then(|v| v.get("gcs_base_url")?.as_str().map(str::to_string))
        .unwrap_or_else(|| super::gcs_raw::DEFAULT_BASE_URL.to_string())
}

/// The container's URL and the account name it implies, the way object_store's builder works
/// them out; `None` without an account name (which object_store's build refuses as well).
fn azure_container_url(b: &MicrosoftAzureBuilder, container: &str) -> Option<(String, String)> {
    let setting = |k| b.get_config_value(&k);
    let on = |k| setting(k).is_some_and(|v| v == "true");
    let account = setting(AzureConfigKey::AccountName);
    let base = if on(AzureConfigKey::UseEmulator) {
        let account = account.unwrap_or_else(|| "devstoreaccount1".into());
        let url = std::env::var("AZURITE_BLOB_STORAGE_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:10000".into());
        return Some((
            format!("{}/{account}/{container}", url.trim_end_matches('/')),
            account,
        ));
    } else if let Some(endpoint) = setting(AzureConfigKey::Endpoint) {
        endpoint
    } else if on(AzureConfigKey::UseFabricEndpoint) {
        format!("https://{}.blob.fabric.microsoft.com", account.as_ref()?)
    } else {
        format!("https://{}.blob.core.windows.net", account.as_ref()?)
    };
    Some((
        format!("{}/{container}", base.trim_end_matches('/')),
        account?,
    ))
}

/// Uploads `src` in parts through object_store, then lets `complete` (a raw request that
/// carries the server's precondition) assemble them. A refused or failed completion aborts
/// the upload, whose parts would otherwise be kept (and billed); if a completion did go
/// through, there is no upload left to abort.
async fn parts_then_complete<Fut>(
    store: Arc<dyn MultipartStore>,
    path: &Path,
    meta: &Meta,
    src: &std::path::Path,
    complete: impl FnOnce(MultipartId, Vec<String>) -> Fut,
) -> RemoteResult<Written>
where
    Fut: std::future::Future<Output = RemoteResult<(Option<String>, Option<String>)>>,
{
    let opts = PutMultipartOptions {
        attributes: attributes(meta),
        ..Default::default()
    };
    let id = store
        .create_multipart_opts(path, opts)
        .await
        .map_err(map_err)?;
    let done = async {
        let parts = put_parts(store.clone(), path, &id, src).await?;
        complete(id.clone(), parts).await
    }
    .await;
    match done {
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

/// Uploads the parts of a multipart upload through object_store (`PARTS_IN_FLIGHT` at once)
/// and returns their ids in order; the completion is ours, because it must carry the
/// server's precondition.
async fn put_parts(
    store: Arc<dyn MultipartStore>,
    path: &Path,
    id: &MultipartId,
    src: &std::path::Path,
) -> RemoteResult<Vec<String>> {
    let mut f = tokio::fs::File::open(src).await?;
    let mut in_flight = std::collections::VecDeque::new();
    let mut ids = Vec::new();
    let result: RemoteResult<()> = async {
        for idx in 0.. {
            let mut buf = vec![0u8; PART_SIZE];
            let n = read_full(&mut f, &mut buf).await?;
            if n == 0 && idx > 0 {
                break;
            }
            buf.truncate(n);
            let (store, path, id) = (store.clone(), path.clone(), id.clone());
            in_flight.push_back(tokio::spawn(async move {
                store
                    .put_part(&path, &id, idx, PutPayload::from(buf))
                    .await
                    .map_err(map_err)
            }));
            if in_flight.len() >= PARTS_IN_FLIGHT {
                ids.push(join_part(in_flight.pop_front()).await?);
            }
            if n < PART_SIZE {
                break;
            }
        }
        while let Some(h) = in_flight.pop_front() {
            ids.push(join_part(Some(h)).await?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        for h in in_flight {
            h.abort();
        }
        return Err(e);
    }
    Ok(ids)
}

async fn join_part(
    h: Option<tokio::task::JoinHandle<RemoteResult<object_store::multipart::PartId>>>,
) -> RemoteResult<String> {
    let h = h.expect("a part in flight");
    let part = h
        .await
        .map_err(|e| RemoteError::Io(std::io::Error::other(e.to_string())))??;
    Ok(part.content_id)
}

async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw GCS requests must reach the server object_store talks to: an emulator's key names
    /// it (`gcs_base_url`), `google_base_url` overrides that, and Google's is the default.
    #[test]
    fn gcs_requests_go_where_object_store_sends_them() {
        let key = r#"{"private_key":"x","private_key_id":"x","client_email":"x","disable_oauth":true,"gcs_base_url":"http://127.0.0.1:9"}"#;
        let b = GoogleCloudStorageBuilder::new().with_service_account_key(key);
        assert_eq!(gcs_base_url(&b), "http://127.0.0.1:9");
        let b = b.with_config(GoogleConfigKey::BaseUrl, "http://10.0.0.1:8");
        assert_eq!(gcs_base_url(&b), "http://10.0.0.1:8");
        assert_eq!(
            gcs_base_url(&GoogleCloudStorageBuilder::new()),
            "https://storage.googleapis.com"
        );
    }

    #[test]
    fn status_codes_decide_retry() {
        let p = classify_message("Server returned non-2xx status code: 400 Bad Request: x".into());
        assert!(matches!(p, RemoteError::Permanent(_)));
        let t =
            classify_message("Server returned non-2xx status code: 503 Service Unavailable".into());
        assert!(t.is_transient());
        let t =
            classify_message("Server returned non-2xx status code: 429 Too Many Requests".into());
        assert!(t.is_transient());
        let t = classify_message("error sending request: connection refused".into());
        assert!(t.is_transient());
    }
}
