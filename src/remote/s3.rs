//! S3 (and S3-compatible servers): object_store for data, SigV4-signed requests of our own
//! (`s3/requests.rs`) for listings, `dir/` markers and every write the server must condition.

mod requests;
mod wire;

use std::sync::Arc;

use futures::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};

use super::backend::{Backend, ByteStream};
use super::bucket::{
    cond_headers, etag, headed, old_marker_gone, parts_reusing_then_complete, parts_then_complete,
    put_mode, retry_config, Bucket, CLIENT_DEFAULTS, MULTIPART_THRESHOLD, PART,
};
use super::{
    Cond, Delta, Flavor, Meta, ObjectInfo, Preconditions, RemoteError, RemoteResult, Written,
};
use requests::S3Raw;

/// CopyObject's limit for a single request.
const MAX_COPY: u64 = 5 << 30;

pub struct S3 {
    bucket: Bucket,
    /// The client by its own type, for the part uploads of a multipart upload.
    s3: Arc<AmazonS3>,
    raw: S3Raw,
}

impl S3 {
    /// The client for `s3://bucket/prefix`, configured from the environment (`AWS_*`) and
    /// then `options` (object_store's `AmazonS3ConfigKey` names).
    pub fn open(bucket: &str, prefix: &str, options: &[(String, String)]) -> Result<S3, String> {
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
            let key: AmazonS3ConfigKey = k.parse().map_err(|e| format!("-o {k}: {e}"))?;
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
            bucket.to_string(),
            region,
            virtual_hosted,
            s3.credentials().clone(),
        );
        Ok(S3 {
            bucket: Bucket::new(s3.clone(), prefix, Flavor::S3),
            s3,
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
            return self.bucket.put_file(key, src, meta, put_mode(cond)).await;
        }
        let full = self.bucket.full(key);
        let headers = cond_headers(cond);
        let raw = &self.raw;
        parts_then_complete(
            self.s3.clone(),
            &self.bucket.path(key)?,
            self.bucket.attributes(meta, false),
            src,
            size,
            |id, parts| async move { raw.complete_multipart(&full, &id, &parts, &headers).await },
        )
        .await
    }

    /// A multipart upload whose parts that `delta` holds unchanged are UploadPartCopy of the
    /// base version (pinned to its ETag by `x-amz-copy-source-if-match`), the others sent,
    /// completed only while the key still holds the base (`If-Match`). `None` (the caller
    /// sends the whole file) when there is no part to reuse or no base to pin.
    fn delta_upload<'a>(
        &'a self,
        key: &'a str,
        src: &'a std::path::Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
        delta: &'a Delta,
    ) -> Option<BoxFuture<'a, RemoteResult<Written>>> {
        let base = delta.base_for(cond, size, PART)?;
        Some(Box::pin(async move {
            self.bucket.guard(self, key, cond).await?;
            let full = self.bucket.full(key);
            let headers = cond_headers(cond);
            let raw = &self.raw;
            let (full, base) = (&full, base);
            tracing::debug!(
                key,
                reused = delta.reusable_parts(size, PART),
                "differential upload"
            );
            parts_reusing_then_complete(
                self.s3.clone(),
                &self.bucket.path(key)?,
                self.bucket.attributes(meta, false),
                src,
                size,
                delta,
                |id, idx, range| async move {
                    raw.upload_part_copy(full, &id, idx + 1, range, base).await
                },
                |id, parts| async move { raw.complete_multipart(full, &id, &parts, &headers).await },
            )
            .await
        }))
    }

    /// Replaces the metadata by copying the object onto itself (`x-amz-metadata-directive:
    /// REPLACE`), only while it holds the ETag `cond` names; above CopyObject's 5 GiB limit,
    /// or without an ETag to pin, the caller writes the whole object again.
    async fn update_meta(
        &self,
        key: &str,
        meta: &Meta,
        cond: &Cond,
        size: u64,
    ) -> RemoteResult<Option<Written>> {
        let Cond::Match {
            etag: Some(want), ..
        } = cond
        else {
            return Ok(None);
        };
        self.bucket.guard(self, key, cond).await?;
        if size > MAX_COPY {
            return Ok(None);
        }
        let tag = self
            .raw
            .copy_with_metadata(
                &self.bucket.full(key),
                &meta.to_pairs_for(Flavor::S3, false),
                want,
            )
            .await?;
        Ok(Some(Written {
            etag: etag(tag),
            version: None,
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
        let (tag, version) = self
            .raw
            .copy_object(
                &self.bucket.full(from),
                &self.bucket.full(to),
                source,
                &cond_headers(cond),
            )
            .await?;
        Ok(Written {
            etag: etag(tag),
            version,
        })
    }

    async fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        if dir {
            self.raw.delete(&self.bucket.marker(key)).await?;
            let old = self.raw.delete(&self.bucket.old_marker(key)).await;
            old_marker_gone(key, old);
            return Ok(());
        }
        self.bucket.guard_present(self, key, expect).await?;
        match self.raw.delete_if(&self.bucket.full(key), expect).await {
            // Deleted meanwhile by someone else: what we wanted.
            Err(RemoteError::NotFound(_)) => Ok(()),
            other => other,
        }
    }
}

impl Backend for S3 {
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
        Box::pin(S3::list(self))
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>> {
        Box::pin(S3::head(self, key, dir))
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
        Box::pin(S3::upload_file(self, key, src, size, meta, cond))
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
        self.delta_upload(key, src, size, meta, cond, delta)
    }

    fn put_symlink<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            self.bucket.guard(self, key, cond).await?;
            self.bucket.put_symlink(key, meta, put_mode(cond)).await
        })
    }

    fn put_dir<'a>(&'a self, key: &'a str, meta: &'a Meta) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let etag = self
                .raw
                .put_empty(
                    &self.bucket.marker(key),
                    &meta.to_pairs_for(Flavor::S3, true),
                )
                .await?;
            Ok(Written {
                etag,
                version: None,
            })
        })
    }

    fn update_meta<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
        size: u64,
    ) -> BoxFuture<'a, RemoteResult<Option<Written>>> {
        Box::pin(S3::update_meta(self, key, meta, cond, size))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(S3::copy(self, from, to, source, cond))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>> {
        Box::pin(S3::delete(self, key, dir, expect))
    }
}
