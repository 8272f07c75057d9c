//! Google Cloud Storage: object_store for data, XML-API requests of our own with its bearer
//! token (`gcs/requests.rs`) for listings, `dir/` markers and every write the server must
//! condition, which GCS decides by generation.

mod requests;

use std::sync::Arc;

use futures::future::BoxFuture;
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::PutMode;

use super::backend::{Backend, ByteStream};
use super::bucket::{
    etag, headed, old_marker_gone, parts_then_complete, retry_config, Bucket, CLIENT_DEFAULTS,
    MULTIPART_THRESHOLD,
};
use super::{
    Cond, Delta, Flavor, Meta, ObjectInfo, Preconditions, RemoteError, RemoteResult, Written,
    PROBE_PREFIX,
};
use requests::GcsRaw;

/// Below this a whole upload costs about what compose's three requests do.
const COMPOSE_MIN_BASE: u64 = 4 << 20;
/// The appended bytes go up in one PUT, read into memory: more goes as a whole upload.
const COMPOSE_MAX_TAIL: u64 = MULTIPART_THRESHOLD;
/// The most of the base's end an append may have marked as changed (one cache block) that is
/// read back to prove it unchanged.
const COMPOSE_MAX_CHECK: u64 = 1 << 20;

pub struct Gcs {
    bucket: Bucket,
    /// The client by its own type, for the part uploads of a multipart upload.
    gcs: Arc<GoogleCloudStorage>,
    raw: GcsRaw,
}

impl Gcs {
    /// The client for `gs://bucket/prefix`, configured from the environment (`GOOGLE_*`) and
    /// then `options` (object_store's `GoogleConfigKey` names).
    pub fn open(bucket: &str, prefix: &str, options: &[(String, String)]) -> Result<Gcs, String> {
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
            let key: GoogleConfigKey = k.parse().map_err(|e| format!("-o {k}: {e}"))?;
            b = b.with_config(key, v);
        }
        let base_url = base_url(&b);
        let gcs = Arc::new(b.build().map_err(|e| format!("gs://{bucket}: {e}"))?);
        let raw = GcsRaw::new(&base_url, bucket, gcs.credentials().clone());
        Ok(Gcs {
            bucket: Bucket::new(gcs.clone(), prefix, Flavor::Gcs),
            gcs,
            raw,
        })
    }

    async fn list(&self) -> RemoteResult<Vec<ObjectInfo>> {
        let objects = self.raw.list(&self.bucket.list_prefix()).await?;
        Ok(self.bucket.slash_rows(objects))
    }

    async fn head(&self, rel: &str, dir: bool) -> RemoteResult<Option<ObjectInfo>> {
        let key = if dir {
            self.bucket.marker(rel)
        } else {
            self.bucket.full(rel)
        };
        let mut h = self.raw.head(&key).await?;
        if h.is_none() && dir {
            h = self.raw.head(&self.bucket.old_marker(rel)).await?;
        }
        Ok(h.map(|h| headed(rel, dir, h)))
    }

    /// `cond` as the generation GCS must find at `key` (`"0"`: no object), which the server
    /// then decides (`x-goog-if-generation-match`). A base known only by its ETag (a listing
    /// carries no generation) is looked up first: its generation is pinned only if it still
    /// has that ETag, so a writer in between is caught either here or by the server.
    async fn generation_for(&self, key: &str, cond: &Cond) -> RemoteResult<Option<String>> {
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
            } => match self.raw.head(&self.bucket.full(key)).await? {
                Some(h) if etag(h.etag.clone()).as_deref() == Some(want.as_str()) => {
                    h.version.map(Some).ok_or_else(|| {
                        RemoteError::Permanent(format!("{key}: the server named no generation"))
                    })
                }
                _ => Err(RemoteError::Conflict(key.to_string())),
            },
        }
    }

    /// The mode of a write through object_store: the condition as a generation (object_store's
    /// `PutMode::Update` sends only the generation on GCS).
    async fn put_mode(&self, key: &str, cond: &Cond) -> RemoteResult<PutMode> {
        Ok(match self.generation_for(key, cond).await? {
            None => PutMode::Overwrite,
            Some(g) if g == "0" => PutMode::Create,
            Some(g) => PutMode::Update(object_store::UpdateVersion {
                e_tag: None,
                version: Some(g),
            }),
        })
    }

    async fn upload_file(
        &self,
        key: &str,
        src: &std::path::Path,
        size: u64,
        meta: &Meta,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        self.bucket.guard(self, key, cond).await?;
        if size <= MULTIPART_THRESHOLD {
            let mode = self.put_mode(key, cond).await?;
            return self.bucket.put_file(key, src, meta, mode).await;
        }
        let generation = self.generation_for(key, cond).await?;
        let full = self.bucket.full(key);
        let raw = &self.raw;
        parts_then_complete(
            self.gcs.clone(),
            &self.bucket.path(key)?,
            self.bucket.attributes(meta, false),
            src,
            size,
            |id, parts| async move {
                raw.complete_multipart(&full, &id, &parts, generation.as_deref())
                    .await
            },
        )
        .await
    }

    /// An append as a compose: the appended bytes go up as a scratch object, and the server
    /// makes the new version from the base's generation and that object, only while the key
    /// still holds that generation. GCS composes whole objects only, so nothing else is
    /// differential here: a change inside the base, a base under [`COMPOSE_MIN_BASE`] or an
    /// append over [`COMPOSE_MAX_TAIL`] sends the whole file (`None`).
    fn compose_append<'a>(
        &'a self,
        key: &'a str,
        src: &'a std::path::Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
        delta: &'a Delta,
    ) -> Option<BoxFuture<'a, RemoteResult<Written>>> {
        let Cond::Match {
            etag: Some(base), ..
        } = cond
        else {
            return None;
        };
        let appended = size.checked_sub(delta.base_len)?;
        // Changes are known by cache block: an append to a file whose end is not on a block
        // boundary marks the base's last bytes too. Those (at most a block) are compared
        // with the base before the compose builds on them.
        let first = delta.changed.first().map_or(delta.base_len, |r| r.start);
        let check = first.min(delta.base_len)..delta.base_len;
        let append_only = *base == delta.base_etag
            && delta.base_len >= COMPOSE_MIN_BASE
            && (1..=COMPOSE_MAX_TAIL).contains(&appended)
            && check.end - check.start <= COMPOSE_MAX_CHECK
            && delta.unchanged(&(0..check.start));
        if !append_only {
            return None;
        }
        Some(Box::pin(async move {
            self.bucket.guard(self, key, cond).await?;
            if !check.is_empty() {
                let theirs = self
                    .bucket
                    .get_range(key, check.clone(), Some(base))
                    .await?;
                let ours = super::bucket::read_range(src, check.clone()).await?;
                if theirs[..] != ours[..] {
                    tracing::debug!(
                        key,
                        "not an append: the base's end changed; sending it whole"
                    );
                    return self.upload_file(key, src, size, meta, cond).await;
                }
            }
            let generation = self
                .generation_for(key, cond)
                .await?
                .ok_or_else(|| RemoteError::Conflict(key.to_string()))?;
            let tail = super::bucket::read_range(src, delta.base_len..size).await?;
            super::bwlimit::pace_up(appended).await;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            // A scratch name listings hide (as the precondition probe's): another mount never
            // takes it for a file.
            let scratch = self.bucket.full(&format!(
                "{PROBE_PREFIX}append-{:x}-{nanos:x}",
                std::process::id()
            ));
            let (_, scratch_gen) = self
                .raw
                .put(&scratch, tail.to_vec(), &[], Some("0"))
                .await?;
            let full = self.bucket.full(key);
            let composed = match scratch_gen {
                Some(g) => {
                    self.raw
                        .compose(
                            &full,
                            &[
                                (full.as_str(), generation.as_str()),
                                (scratch.as_str(), g.as_str()),
                            ],
                            &meta.to_pairs_for(Flavor::Gcs, false),
                            &generation,
                        )
                        .await
                }
                None => Err(RemoteError::Permanent(format!(
                    "{key}: the server named no generation for the appended bytes"
                ))),
            };
            if let Err(e) = self.raw.delete(&scratch, None).await {
                tracing::warn!(key = scratch, error = %e, "could not remove the scratch object of an append");
            }
            let (tag, version) = composed?;
            super::note_copied(delta.base_len);
            tracing::debug!(key, appended, "append composed on the server");
            Ok(Written {
                etag: etag(tag),
                version,
            })
        }))
    }

    /// Copies the object onto itself with `x-goog-metadata-directive: REPLACE`, pinned to the
    /// generation that holds the ETag `cond` names, on both sides of the copy (it is the same
    /// object): a writer in between makes the server refuse it.
    async fn update_meta(
        &self,
        key: &str,
        meta: &Meta,
        cond: &Cond,
    ) -> RemoteResult<Option<Written>> {
        let Cond::Match {
            etag: Some(want), ..
        } = cond
        else {
            return Ok(None);
        };
        self.bucket.guard(self, key, cond).await?;
        let generation = self.generation_for(key, cond).await?;
        let full = self.bucket.full(key);
        let (tag, version) = self
            .raw
            .copy(
                &full,
                &full,
                Some(want),
                generation.as_deref(),
                Some(&meta.to_pairs_for(Flavor::Gcs, false)),
            )
            .await?;
        Ok(Some(Written {
            etag: etag(tag),
            version,
        }))
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        source: Option<&str>,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        self.bucket.guard(self, to, cond).await?;
        self.bucket.guard_present(self, from, source).await?;
        let generation = self.generation_for(to, cond).await?;
        let (tag, version) = self
            .raw
            .copy(
                &self.bucket.full(from),
                &self.bucket.full(to),
                source,
                generation.as_deref(),
                None,
            )
            .await?;
        Ok(Written {
            etag: etag(tag),
            version,
        })
    }

    /// With `expect`, only the generation that holds that ETag goes.
    async fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        if dir {
            self.raw.delete(&self.bucket.marker(key), None).await?;
            let old = self.raw.delete(&self.bucket.old_marker(key), None).await;
            old_marker_gone(key, old);
            return Ok(());
        }
        self.bucket.guard_present(self, key, expect).await?;
        let full = self.bucket.full(key);
        let generation = match expect {
            None => None,
            Some(want) => match self.raw.head(&full).await? {
                // Deleted meanwhile by someone else: what we wanted.
                None => return Ok(()),
                Some(h) if etag(h.etag.clone()).as_deref() != Some(want) => {
                    return Err(RemoteError::Conflict(key.to_string()))
                }
                Some(h) => h.version,
            },
        };
        self.raw.delete(&full, generation.as_deref()).await
    }
}

/// Where GCS requests go, the way object_store's builder decides it: `google_base_url`, else
/// the `gcs_base_url` of the service-account key (what emulators and our test server use),
/// else Google's endpoint.
fn base_url(b: &GoogleCloudStorageBuilder) -> String {
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
        .unwrap_or_else(|| requests::DEFAULT_BASE_URL.to_string())
}

impl Backend for Gcs {
    fn max_key_len(&self) -> usize {
        self.bucket.max_key_len()
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        self.bucket.check_name(name)
    }

    fn check(&self) -> BoxFuture<'_, RemoteResult<()>> {
        Box::pin(self.bucket.check())
    }

    fn probe_preconditions(&self) -> Option<BoxFuture<'_, RemoteResult<Preconditions>>> {
        Some(Box::pin(self.bucket.probe_preconditions()))
    }

    fn set_preconditions_ignored(&self, ignored: bool) {
        self.bucket.set_preconditions_ignored(ignored)
    }

    fn scan(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(async move { Bucket::scan(self, self.list().await?).await })
    }

    fn list(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(Gcs::list(self))
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>> {
        Box::pin(Gcs::head(self, key, dir))
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: std::ops::Range<u64>,
        if_match: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<bytes::Bytes>> {
        Box::pin(self.bucket.get_range(key, range, if_match))
    }

    fn get_stream<'a>(
        &'a self,
        key: &'a str,
        if_match: Option<&'a str>,
    ) -> Option<BoxFuture<'a, RemoteResult<ByteStream>>> {
        Some(Box::pin(self.bucket.get_stream(key, if_match)))
    }

    fn download<'a>(
        &'a self,
        key: &'a str,
        dest: &'a std::path::Path,
    ) -> BoxFuture<'a, RemoteResult<u64>> {
        Box::pin(self.bucket.download(key, dest))
    }

    fn upload_file<'a>(
        &'a self,
        key: &'a str,
        src: &'a std::path::Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(Gcs::upload_file(self, key, src, size, meta, cond))
    }

    fn upload_delta<'a>(
        &'a self,
        key: &'a str,
        src: &'a std::path::Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
        delta: &'a Delta,
    ) -> Option<BoxFuture<'a, RemoteResult<Written>>> {
        self.compose_append(key, src, size, meta, cond, delta)
    }

    fn put_symlink<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            self.bucket.guard(self, key, cond).await?;
            let mode = self.put_mode(key, cond).await?;
            self.bucket.put_symlink(key, meta, mode).await
        })
    }

    fn put_dir<'a>(&'a self, key: &'a str, meta: &'a Meta) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let (etag, version) = self
                .raw
                .put_empty(
                    &self.bucket.marker(key),
                    &meta.to_pairs_for(Flavor::Gcs, true),
                )
                .await?;
            Ok(Written { etag, version })
        })
    }

    fn update_meta<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
        _size: u64,
    ) -> BoxFuture<'a, RemoteResult<Option<Written>>> {
        Box::pin(Gcs::update_meta(self, key, meta, cond))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(Gcs::copy(self, from, to, source, cond))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>> {
        Box::pin(Gcs::delete(self, key, dir, expect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw GCS requests must reach the server object_store talks to: an emulator's key names
    /// it (`gcs_base_url`), `google_base_url` overrides that, and Google's is the default.
    #[test]
    fn requests_go_where_object_store_sends_them() {
        let key = r#"{"private_key":"x","private_key_id":"x","client_email":"x","disable_oauth":true,"gcs_base_url":"http://127.0.0.1:9"}"#;
        let b = GoogleCloudStorageBuilder::new().with_service_account_key(key);
        assert_eq!(base_url(&b), "http://127.0.0.1:9");
        let b = b.with_config(GoogleConfigKey::BaseUrl, "http://10.0.0.1:8");
        assert_eq!(base_url(&b), "http://10.0.0.1:8");
        assert_eq!(
            base_url(&GoogleCloudStorageBuilder::new()),
            "https://storage.googleapis.com"
        );
    }
}
