//! Azure Blob Storage: object_store for data, requests of our own signed by object_store's
//! `AzureAuthorizer` (`azure/requests.rs`) for listings and every write the server must
//! condition; directories as folder blobs (`hdi_isfolder=true`).

mod requests;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use object_store::azure::{AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::{Attribute, AttributeValue, Attributes, MultipartId, PutMode, PutPayload};

use super::backend::{Backend, ByteStream};
use super::bucket::{
    cond_headers, etag, kind_of, listed, meta_of, parts_reusing_then_complete, put_mode, put_parts,
    retry_config, Bucket, CLIENT_DEFAULTS, MULTIPART_THRESHOLD, PART,
};
use super::delta::parts;
use super::http::classify_message;
use super::{
    Cond, Delta, Flavor, Meta, ObjectInfo, Preconditions, RemoteError, RemoteResult, Written,
};
use requests::{AzureRaw, BlockRef};

/// Azure's directory marker: an empty blob at the directory's own name carrying this metadata,
/// as blobfuse2 and Data Lake Storage write it. object_store cannot name a blob that ends in
/// `/` (S3's convention), and this one other Azure tools already understand.
const FOLDER_META: &str = "hdi_isfolder";

pub struct Azure {
    bucket: Bucket,
    /// The client by its own type: part uploads and presigned metadata updates.
    az: Arc<MicrosoftAzure>,
    client: reqwest::Client,
    raw: AzureRaw,
}

/// Whether an object's metadata marks it as a folder blob.
fn is_folder(attrs: &Attributes) -> bool {
    attrs.iter().any(|(k, v)| {
        matches!(k, Attribute::Metadata(k) if k.eq_ignore_ascii_case(FOLDER_META))
            && v.as_ref().eq_ignore_ascii_case("true")
    })
}

impl Azure {
    /// The client for `az://container/prefix`, configured from the environment (`AZURE_*`)
    /// and then `options` (object_store's `AzureConfigKey` names).
    pub fn open(
        container: &str,
        prefix: &str,
        options: &[(String, String)],
    ) -> Result<Azure, String> {
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
            let key: AzureConfigKey = k.parse().map_err(|e| format!("-o {k}: {e}"))?;
            b = b.with_config(key, v);
        }
        let container_url = container_url(&b, container);
        let account = b.get_config_value(&AzureConfigKey::AccountName);
        let az = Arc::new(b.build().map_err(|e| format!("az://{container}: {e}"))?);
        // object_store's build needs the account too: this holds once it succeeded.
        let (url, account_name) =
            container_url.ok_or_else(|| format!("az://{container}: no storage account name"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("az://{container}: {e}"))?;
        let raw = AzureRaw::new(
            client.clone(),
            url,
            account.unwrap_or(account_name),
            az.credentials().clone(),
        );
        Ok(Azure {
            bucket: Bucket::new(az.clone(), prefix, Flavor::Azure),
            az,
            client,
            raw,
        })
    }

    async fn list(&self) -> RemoteResult<Vec<ObjectInfo>> {
        let mut rows = Vec::new();
        for b in self.raw.list(&self.bucket.list_prefix()).await? {
            let Some(rel) = self.bucket.strip(&b.name) else {
                continue;
            };
            if rel.is_empty() {
                continue;
            }
            let lm = b.last_modified.and_then(|t| t.timestamp_nanos_opt());
            let meta = Meta::from_pairs(b.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            rows.push(ObjectInfo {
                kind: kind_of(b.folder, &meta),
                meta,
                ..listed(rel, b.folder, b.size, etag(b.etag), lm)
            });
        }
        Ok(Bucket::without_probes(rows))
    }

    /// A folder blob is no file, and a file is no directory marker: as on S3, where `dir` and
    /// `dir/` are different keys.
    async fn head(&self, rel: &str, dir: bool) -> RemoteResult<Option<ObjectInfo>> {
        let Some((m, attrs)) = self.bucket.head_attributes(rel).await? else {
            return Ok(None);
        };
        if is_folder(&attrs) != dir {
            return Ok(None);
        }
        let meta = meta_of(&attrs);
        Ok(Some(ObjectInfo {
            key: rel.to_string(),
            kind: kind_of(dir, &meta),
            size: m.size,
            etag: etag(m.e_tag),
            version: m.version,
            last_modified_ns: m.last_modified.timestamp_nanos_opt(),
            meta,
        }))
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
        let path = self.bucket.path(key)?;
        // Blocks nobody commits expire by themselves (Azure has no abort).
        let parts = put_parts(self.az.clone(), &path, &MultipartId::new(), src, size).await?;
        let tag = self
            .raw
            .put_block_list(
                &self.bucket.full(key),
                &parts,
                &meta.to_pairs_for(Flavor::Azure, false),
                &cond_headers(cond),
            )
            .await?;
        Ok(Written {
            etag: etag(tag),
            version: None,
        })
    }

    /// A Put Block List that reuses, for each 8 MiB part `delta` holds unchanged, the block
    /// the base version committed for it, and uploads the other parts as new blocks;
    /// committed only while the blob still holds the base (`If-Match`). Only a base whose
    /// committed blocks are our parts, cut the same way (a multipart upload of ours), has
    /// blocks to reuse; any other goes up whole, as does a base replaced since (its block
    /// list names another ETag: the conditioned write then finds the conflict).
    async fn delta_upload(
        &self,
        key: &str,
        src: &std::path::Path,
        size: u64,
        meta: &Meta,
        cond: &Cond,
        delta: &Delta,
    ) -> RemoteResult<Written> {
        self.bucket.guard(self, key, cond).await?;
        let full = self.bucket.full(key);
        let listed = self.raw.get_block_list(&full).await?;
        let base_parts: Vec<std::ops::Range<u64>> = parts(delta.base_len, PART).collect();
        let blocks = match listed {
            Some((tag, blocks))
                if etag(tag.clone()).as_deref() == Some(delta.base_etag.as_str())
                    && blocks.len() == base_parts.len()
                    && blocks
                        .iter()
                        .zip(&base_parts)
                        .all(|((_, n), r)| *n == r.end - r.start) =>
            {
                blocks
            }
            _ => {
                tracing::debug!(key, "base not in our blocks; uploading the whole file");
                return self.upload_file(key, src, size, meta, cond).await;
            }
        };
        // A part is reused only where the base's block is exactly its range (a file cut
        // inside its last part keeps a shorter last part than the base's block).
        let mut delta = delta.clone();
        for (idx, r) in parts(size, PART).enumerate() {
            let same_block = base_parts.get(idx) == Some(&r);
            if delta.unchanged(&r) && !same_block {
                delta.changed.push(r);
            }
        }
        delta.changed.sort_by_key(|r| r.start);
        const COMMITTED: &str = "committed:";
        let (raw, headers, pairs) = (
            &self.raw,
            cond_headers(cond),
            meta.to_pairs_for(Flavor::Azure, false),
        );
        let (full, blocks) = (&full, &blocks);
        tracing::debug!(
            key,
            reused = delta.reusable_parts(size, PART),
            "differential upload"
        );
        parts_reusing_then_complete(
            self.az.clone(),
            &self.bucket.path(key)?,
            // The metadata goes with the Put Block List (Azure's multipart takes none).
            Default::default(),
            src,
            size,
            &delta,
            |_, idx, _| async move { Ok(format!("{COMMITTED}{}", blocks[idx].0)) },
            |_, parts| async move {
                let refs: Vec<BlockRef> = parts
                    .into_iter()
                    .map(|p| match p.strip_prefix(COMMITTED) {
                        Some(name) => BlockRef::Committed(name.to_string()),
                        None => BlockRef::Uncommitted(p),
                    })
                    .collect();
                let tag = raw.put_block_list_of(full, &refs, &pairs, &headers).await?;
                Ok((tag, None))
            },
        )
        .await
    }

    /// Writes a folder blob. Never over a file of the same name: that would destroy a
    /// version (the file is someone else's, and the entry is parked with the reason).
    async fn put_dir(&self, key: &str, meta: &Meta) -> RemoteResult<Written> {
        let mut attributes = self.bucket.attributes(meta, true);
        attributes.insert(
            Attribute::Metadata(FOLDER_META.into()),
            AttributeValue::from("true"),
        );
        let put = |mode| {
            self.bucket
                .put(key, PutPayload::default(), mode, attributes.clone())
        };
        match put(PutMode::Create).await {
            // Our marker already (new attributes for it), or a file.
            Err(RemoteError::Conflict(_)) => {
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
            }
            other => other,
        }
    }

    /// Set Blob Metadata with `If-Match`, through a URL object_store presigns (so a shared
    /// key, a SAS token or a bearer token alike); `None` where it cannot presign.
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
        use object_store::signer::Signer;
        let Ok(mut url) = self
            .az
            .signed_url(
                reqwest::Method::PUT,
                &self.bucket.path(key)?,
                Duration::from_secs(600),
            )
            .await
        else {
            return Ok(None);
        };
        url.query_pairs_mut().append_pair("comp", "metadata");
        let mut req = self
            .client
            .put(url)
            .header("If-Match", want.as_str())
            .header("x-ms-version", "2021-08-06")
            .header("Content-Length", "0");
        for (k, v) in meta.to_pairs_for(Flavor::Azure, false) {
            req = req.header(format!("x-ms-meta-{k}"), v);
        }
        let r = req
            .send()
            .await
            .map_err(|e| RemoteError::unavailable(format!("set metadata of {key}: {e}")))?;
        match r.status().as_u16() {
            200..=299 => Ok(Some(Written {
                etag: etag(super::http::header(&r, "etag")),
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

    async fn copy(
        &self,
        from: &str,
        to: &str,
        source: Option<&str>,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        self.bucket.guard(self, to, cond).await?;
        self.bucket.guard_present(self, from, source).await?;
        let tag = self
            .raw
            .copy_blob(
                &self.bucket.full(from),
                &self.bucket.full(to),
                source,
                &cond_headers(cond),
            )
            .await?;
        Ok(Written {
            etag: etag(tag),
            version: None,
        })
    }

    async fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        if !dir {
            self.bucket.guard_present(self, key, expect).await?;
            return self.raw.delete_blob(&self.bucket.full(key), expect).await;
        }
        match self.head(key, true).await? {
            // Only that folder blob: a file that took the name since is not ours to delete,
            // and the server refuses it (`Conflict`).
            Some(folder) => {
                self.raw
                    .delete_blob(&self.bucket.full(key), folder.etag.as_deref())
                    .await
            }
            None => Ok(()),
        }
    }
}

/// The container's URL and the account name it implies, the way object_store's builder works
/// them out; `None` without an account name (which object_store's build refuses as well).
fn container_url(b: &MicrosoftAzureBuilder, container: &str) -> Option<(String, String)> {
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

impl Backend for Azure {
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
        Box::pin(Azure::list(self))
    }

    /// List Blobs with `include=metadata` carries every blob's metadata.
    fn listing_has_meta(&self) -> bool {
        true
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>> {
        Box::pin(Azure::head(self, key, dir))
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
        Box::pin(Azure::upload_file(self, key, src, size, meta, cond))
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
        delta.base_for(cond, size, PART)?;
        Some(Box::pin(Azure::delta_upload(
            self, key, src, size, meta, cond, delta,
        )))
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
        Box::pin(Azure::put_dir(self, key, meta))
    }

    fn update_meta<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
        _size: u64,
    ) -> BoxFuture<'a, RemoteResult<Option<Written>>> {
        Box::pin(Azure::update_meta(self, key, meta, cond))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(Azure::copy(self, from, to, source, cond))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>> {
        Box::pin(Azure::delete(self, key, dir, expect))
    }
}
