//! GCS XML-API requests object_store cannot make, authorized with object_store's own GCS
//! credential provider (its bearer token): keys ending in `/` (directory markers), listings that
//! may hold keys object_store's `Path` rejects, and the writes the server must decide by
//! generation (`x-goog-if-generation-match`): copies, deletes, multipart completions and
//! metadata rewrites, which object_store's API sends without a precondition.

use std::collections::HashMap;
use std::time::Duration;

use object_store::gcp::GcpCredentialProvider;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Method, Response, StatusCode};

use crate::remote::bucket::RawHead;
use crate::remote::http::{header, xml_error};
use crate::remote::xml::{parse_error_body, parse_list_page, walk_xml, RawObject};
use crate::remote::{prefixed_meta, RemoteError, RemoteResult};

const META_PREFIX: &str = "x-goog-meta-";
const GENERATION: &str = "x-goog-generation";
const IF_GENERATION: &str = "x-goog-if-generation-match";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// GCS's own page size for XML listings.
const MAX_KEYS: &str = "1000";
/// Where object_store sends requests unless told otherwise.
pub const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";

pub struct GcsRaw {
    client: reqwest::Client,
    /// `{base}/{bucket}`, the bucket percent-encoded as object_store encodes it.
    bucket_url: String,
    credentials: GcpCredentialProvider,
}

/// What a write answered: the new ETag and generation.
pub type Version = (Option<String>, Option<String>);

impl GcsRaw {
    /// # Panics
    ///
    /// If the TLS backend cannot be initialised, which is a broken build rather than a runtime
    /// condition.
    pub fn new(base_url: &str, bucket: &str, credentials: GcpCredentialProvider) -> GcsRaw {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("building the HTTP client for raw GCS requests");
        GcsRaw {
            client,
            bucket_url: format!(
                "{}/{}",
                base_url.trim_end_matches('/'),
                utf8_percent_encode(bucket, NON_ALPHANUMERIC)
            ),
            credentials,
        }
    }

    /// The whole key in one path segment (`/` as `%2F`, as object_store sends it): no URL
    /// parser can fold `a/./b` or `a//b` into another key on the way.
    fn url(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.bucket_url,
            utf8_percent_encode(key, NON_ALPHANUMERIC)
        )
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        what: &str,
    ) -> RemoteResult<Response> {
        let credential = self.credentials.get_credential().await.map_err(|e| {
            RemoteError::unavailable(format!("{what}: fetching GCS credentials: {e}"))
        })?;
        let mut req = self.client.request(method.clone(), url);
        if !credential.bearer.is_empty() {
            req = req.bearer_auth(&credential.bearer);
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if method == Method::PUT || method == Method::POST {
            req = req
                .header("Content-Length", body.len().to_string())
                .body(body);
        }
        req.send()
            .await
            .map_err(|e| RemoteError::unavailable(format!("{what}: {e}")))
    }

    /// Every object under `prefix` (all pages), keys exactly as stored.
    pub async fn list(&self, prefix: &str) -> RemoteResult<Vec<RawObject>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = url::Url::parse(&self.bucket_url)
                .map_err(|e| RemoteError::Permanent(format!("bucket URL: {e}")))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("list-type", "2")
                    .append_pair("max-keys", MAX_KEYS);
                if !prefix.is_empty() {
                    q.append_pair("prefix", prefix);
                }
                if let Some(t) = &token {
                    q.append_pair("continuation-token", t);
                }
            }
            let what = format!("list {prefix:?}");
            let r = self
                .send(Method::GET, url.as_str(), &[], Vec::new(), &what)
                .await?;
            if !r.status().is_success() {
                return Err(error(&what, r).await);
            }
            let body = r
                .text()
                .await
                .map_err(|e| RemoteError::unavailable(format!("{what}: {e}")))?;
            let page = parse_list_page(&body)
                .map_err(|e| RemoteError::Permanent(format!("{what}: {e}")))?;
            out.extend(page.objects);
            match (page.truncated, page.next_token) {
                (false, _) => return Ok(out),
                (true, Some(next)) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => {
                    return Err(RemoteError::Permanent(format!(
                        "{what}: truncated page without a new continuation token"
                    )))
                }
            }
        }
    }

    /// HEAD; `None` when absent. `version` is the generation, `metadata` the `x-goog-meta-*`
    /// headers with that prefix stripped.
    pub async fn head(&self, key: &str) -> RemoteResult<Option<RawHead>> {
        let what = format!("head {key:?}");
        let r = self
            .send(Method::HEAD, &self.url(key), &[], Vec::new(), &what)
            .await?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(error(&what, r).await);
        }
        let size = header(&r, "content-length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| RemoteError::Permanent(format!("{what}: no Content-Length")))?;
        let mut metadata = HashMap::new();
        for (name, value) in r.headers() {
            if let Some(k) = name.as_str().strip_prefix(META_PREFIX) {
                metadata.insert(
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                );
            }
        }
        Ok(Some(RawHead {
            size,
            etag: header(&r, "etag"),
            version: header(&r, GENERATION),
            metadata,
        }))
    }

    /// An empty object at `key` (a directory marker `dir/`, as gcsfuse and the Cloud Console
    /// write them) with `meta` as its metadata.
    pub async fn put_empty(&self, key: &str, meta: &[(String, String)]) -> RemoteResult<Version> {
        self.put(key, Vec::new(), meta, None).await
    }

    /// `body` at `key` with `meta`, only while `key` has generation `generation` ("0":
    /// nothing there).
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        meta: &[(String, String)],
        generation: Option<&str>,
    ) -> RemoteResult<Version> {
        let mut headers = prefixed_meta(META_PREFIX, meta);
        if let Some(g) = generation {
            headers.push((IF_GENERATION.into(), g.to_string()));
        }
        let what = format!("put {key:?}");
        let r = self
            .send(Method::PUT, &self.url(key), &headers, body, &what)
            .await?;
        if !r.status().is_success() {
            return Err(error(&what, r).await);
        }
        Ok((header(&r, "etag"), header(&r, GENERATION)))
    }

    /// `PUT key?compose`: `key` becomes the concatenation of `components` (each a key of this
    /// bucket pinned to one generation), with `meta`, only while `key` has generation
    /// `generation`. A component that is gone (or at another generation) answers `NotFound`
    /// or `Conflict`, a failed destination condition `Conflict`.
    pub async fn compose(
        &self,
        key: &str,
        components: &[(&str, &str)],
        meta: &[(String, String)],
        generation: &str,
    ) -> RemoteResult<Version> {
        let mut body = String::from("<ComposeRequest>");
        for (name, g) in components {
            body.push_str(&format!(
                "<Component><Name>{}</Name><Generation>{}</Generation></Component>",
                quick_xml::escape::escape(*name),
                quick_xml::escape::escape(*g)
            ));
        }
        body.push_str("</ComposeRequest>");
        let mut url = url::Url::parse(&self.url(key))
            .map_err(|e| RemoteError::Permanent(format!("compose {key:?}: {e}")))?;
        url.query_pairs_mut().append_key_only("compose");
        let mut headers = prefixed_meta(META_PREFIX, meta);
        headers.push((IF_GENERATION.into(), generation.to_string()));
        let what = format!("compose {key:?}");
        let r = self
            .send(
                Method::PUT,
                url.as_str(),
                &headers,
                body.into_bytes(),
                &what,
            )
            .await?;
        match r.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(not_found(&what, r).await),
            _ => return Err(error(&what, r).await),
        }
        let generation = header(&r, GENERATION);
        let etag = header(&r, "etag");
        Ok((etag, generation))
    }

    /// Server-side copy of `from` to `to`, decided by the server: only while `from` has ETag
    /// `source_etag`, and only while `to` has generation `generation` ("0": nothing there).
    /// `replace`: the copy's metadata (`x-goog-metadata-directive: REPLACE`) instead of the
    /// source's. A failed condition answers `Conflict`, a missing source `NotFound`.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        source_etag: Option<&str>,
        generation: Option<&str>,
        replace: Option<&[(String, String)]>,
    ) -> RemoteResult<Version> {
        let source = format!(
            "{}/{}",
            self.bucket_url
                .rsplit('/')
                .next()
                .expect("the bucket URL ends with the bucket"),
            utf8_percent_encode(from, NON_ALPHANUMERIC)
        );
        let mut headers = vec![("x-goog-copy-source".to_string(), source)];
        if let Some(e) = source_etag {
            headers.push(("x-goog-copy-source-if-match".into(), e.to_string()));
        }
        if let Some(g) = generation {
            headers.push((IF_GENERATION.into(), g.to_string()));
        }
        if let Some(meta) = replace {
            headers.push(("x-goog-metadata-directive".into(), "REPLACE".into()));
            headers.extend(prefixed_meta(META_PREFIX, meta));
        }
        let what = format!("copy {from:?} to {to:?}");
        let r = self
            .send(Method::PUT, &self.url(to), &headers, Vec::new(), &what)
            .await?;
        match r.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(not_found(&what, r).await),
            _ => return Err(error(&what, r).await),
        }
        let generation = header(&r, GENERATION);
        let etag = header(&r, "etag");
        let body = r.text().await.unwrap_or_default();
        let etag = etag.or_else(|| xml_field(&body, "ETag"));
        Ok((etag, generation))
    }

    /// Completes an XML multipart upload from the part ETags object_store's `put_part`
    /// returned, in order, only while `key` has generation `generation` ("0": nothing there).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[String],
        generation: Option<&str>,
    ) -> RemoteResult<Version> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, etag) in parts.iter().enumerate() {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                quick_xml::escape::escape(etag.as_str())
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let mut url = url::Url::parse(&self.url(key))
            .map_err(|e| RemoteError::Permanent(format!("complete {key:?}: {e}")))?;
        url.query_pairs_mut().append_pair("uploadId", upload_id);
        let headers: Vec<(String, String)> = generation
            .map(|g| vec![(IF_GENERATION.to_string(), g.to_string())])
            .unwrap_or_default();
        let what = format!("complete upload {key:?}");
        let r = self
            .send(
                Method::POST,
                url.as_str(),
                &headers,
                body.into_bytes(),
                &what,
            )
            .await?;
        if r.status() == StatusCode::NOT_FOUND {
            // Completed by an attempt whose answer was lost, or expired: sending the file
            // again settles either.
            let body = r.text().await.unwrap_or_default();
            return Err(RemoteError::unavailable(format!("{what}: 404: {body}")));
        }
        if !r.status().is_success() {
            return Err(error(&what, r).await);
        }
        let generation = header(&r, GENERATION);
        let body = r.text().await.unwrap_or_default();
        Ok((xml_field(&body, "ETag"), generation))
    }

    /// Deletes `key`, only while it has generation `generation` when given (another version
    /// answers `Conflict`). A missing object is success.
    pub async fn delete(&self, key: &str, generation: Option<&str>) -> RemoteResult<()> {
        let headers: Vec<(String, String)> = generation
            .map(|g| vec![(IF_GENERATION.to_string(), g.to_string())])
            .unwrap_or_default();
        let what = format!("delete {key:?}");
        let r = self
            .send(Method::DELETE, &self.url(key), &headers, Vec::new(), &what)
            .await?;
        match r.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => match not_found(&what, r).await {
                e @ RemoteError::Permanent(_) => Err(e),
                _ => Ok(()),
            },
            _ => Err(error(&what, r).await),
        }
    }
}

/// The first `<name>` element's text in an XML answer.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let mut out = None;
    let _ = walk_xml(body, |path, text| {
        if out.is_none() && path.last().map(String::as_str) == Some(name) {
            out = Some(text);
        }
        Ok(())
    });
    out
}

/// A 404: a missing bucket is for good (`Permanent`), a missing object `NotFound`.
async fn not_found(what: &str, r: Response) -> RemoteError {
    let body = r.text().await.unwrap_or_default();
    let (code, message) = parse_error_body(&body);
    let msg = format!(
        "{what}: 404 {}: {}",
        code.as_deref().unwrap_or_default(),
        message.unwrap_or_default()
    );
    match code.as_deref() {
        Some("NoSuchBucket") => RemoteError::Permanent(msg),
        _ => RemoteError::NotFound(msg),
    }
}

/// A refused request, by the one rule (`http::classify`; 412, a failed precondition, is a
/// `Conflict`).
async fn error(what: &str, r: Response) -> RemoteError {
    xml_error(what, r).await
}
