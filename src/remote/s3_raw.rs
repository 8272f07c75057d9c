//! Raw SigV4 requests for the few S3 calls object_store cannot express: keys ending in '/' and listings that may hold keys object_store's Path rejects.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use object_store::aws::{AwsCredential, AwsCredentialProvider};
use percent_encoding::percent_decode_str;
use quick_xml::events::Event;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::error::{RemoteError, RemoteResult};

/// The integration tests' moto launcher, reused for the one test that needs the `pub(crate)`
/// page-size hook and so cannot live in tests/.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/moto.rs"]
mod test_moto;

/// Every request here has an empty body (or none), so hashing it buys nothing; S3 accepts this
/// marker instead of the body hash.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const META_PREFIX: &str = "x-amz-meta-";
/// S3's own page size; stated explicitly so that a server with a different default behaves the same.
const DEFAULT_MAX_KEYS: u32 = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Error bodies are read only for their `<Code>` and `<Message>`; a misbehaving proxy answering with
/// a large page must not be buffered whole.
const MAX_ERROR_BODY: usize = 64 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// Cheap to clone: the HTTP connection pool and the configuration are shared.
#[derive(Clone)]
pub struct S3Raw {
    inner: Arc<Inner>,
    max_keys: u32,
}

struct Inner {
    client: reqwest::Client,
    scheme: String,
    /// `host[:port]` exactly as it goes both into the URL and into the signed Host header; keeping
    /// one string for both is what keeps the signature valid.
    authority: String,
    /// Canonical-URI prefix in front of the key: empty for virtual-hosted style, `/bucket` (after
    /// any path of the endpoint) for path style.
    base_path: String,
    region: String,
    bucket: String,
    credentials: AwsCredentialProvider,
}

/// One entry of a listing, with the key exactly as stored (it may not be a valid object_store Path).
#[derive(Debug, Clone)]
pub struct RawObject {
    pub key: String,
    pub size: u64,
    /// As the server sent it, quotes included, so it compares equal to object_store's `e_tag`.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct RawHead {
    pub size: u64,
    /// As the server sent it, quotes included, so it compares equal to object_store's `e_tag`.
    pub etag: Option<String>,
    pub version: Option<String>,
    /// Values exactly as the server returns them: nothing is decoded here, so a value reads the
    /// same whether object_store or [`S3Raw::put_empty`] wrote it.
    pub metadata: HashMap<String, String>,
}

impl fmt::Debug for S3Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credential provider is left out on purpose: nothing secret goes into logs.
        f.debug_struct("S3Raw")
            .field("scheme", &self.inner.scheme)
            .field("authority", &self.inner.authority)
            .field("base_path", &self.inner.base_path)
            .field("region", &self.inner.region)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl S3Raw {
    /// endpoint: Some("http://127.0.0.1:9000") for S3-compatible servers (then path-style URLs: {endpoint}/{bucket}/{key}),
    /// None for AWS itself (virtual-hosted: https://{bucket}.s3.{region}.amazonaws.com/{key}).
    /// `virtual_hosted` forces virtual-hosted style with a custom endpoint (https://{bucket}.{endpoint host}).
    ///
    /// An endpoint that already starts with `{bucket}.` is used as is in virtual-hosted style,
    /// which is how object_store wants such an endpoint written. An endpoint without
    /// `scheme://` is taken as https. Redirects are not followed: S3 answers a
    /// wrong region with a redirect to another host, and re-sending a signature made for this
    /// host there can only fail less clearly than reporting the redirect.
    ///
    /// # Panics
    ///
    /// If the TLS backend cannot be initialised, which is a broken build rather than a runtime
    /// condition.
    pub fn new(
        endpoint: Option<String>,
        bucket: String,
        region: String,
        virtual_hosted: bool,
        credentials: AwsCredentialProvider,
    ) -> Self {
        let (scheme, authority, base_path) = match endpoint {
            None => (
                "https".to_string(),
                format!("{bucket}.s3.{region}.amazonaws.com"),
                String::new(),
            ),
            Some(endpoint) => {
                let (scheme, rest) = match endpoint.split_once("://") {
                    Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
                    None => ("https".to_string(), endpoint.as_str()),
                };
                let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let path = path.trim_end_matches('/');
                if virtual_hosted {
                    // object_store expects a virtual-hosted endpoint to name the bucket already
                    // (https://bucket.host), and ours is usually read from its configuration.
                    let authority = if host.starts_with(&format!("{bucket}.")) {
                        host.to_string()
                    } else {
                        format!("{bucket}.{host}")
                    };
                    (scheme, authority, path.to_string())
                } else {
                    let bucket = uri_encode(&bucket, false);
                    (scheme, host.to_string(), format!("{path}/{bucket}"))
                }
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the HTTP client for raw S3 requests");
        S3Raw {
            inner: Arc::new(Inner {
                client,
                scheme,
                authority,
                base_path,
                region,
                bucket,
                credentials,
            }),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    /// Lets tests exercise continuation tokens without creating more than a thousand keys.
    #[cfg(test)]
    pub(crate) fn with_max_keys(mut self, max_keys: u32) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// ListObjectsV2 over all pages (continuation tokens), no delimiter; keys returned byte-for-byte as the server sent them (XML-unescaped), including keys ending in '/', keys with '//' etc.
    ///
    /// Asks for `encoding-type=url` because XML 1.0 cannot carry every byte a key may hold
    /// (control characters); keys are decoded again only when the server confirms it encoded them.
    pub async fn list(&self, prefix: &str) -> RemoteResult<Vec<RawObject>> {
        let max_keys = self.max_keys.to_string();
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2"),
                ("encoding-type", "url"),
                ("max-keys", max_keys.as_str()),
            ];
            if !prefix.is_empty() {
                query.push(("prefix", prefix));
            }
            if let Some(token) = &token {
                query.push(("continuation-token", token.as_str()));
            }
            let resp = self
                .send(Method::GET, None, &query, BTreeMap::new(), "list", prefix)
                .await?;
            if !resp.status().is_success() {
                return Err(status_error("list", prefix, resp).await);
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| transport_error("list", prefix, &e))?;
            let body = std::str::from_utf8(&body).map_err(|_| {
                RemoteError::Permanent(format!("list {prefix:?}: response is not UTF-8"))
            })?;
            let page = parse_list_page(body)
                .map_err(|e| RemoteError::Permanent(format!("list {prefix:?}: {e}")))?;
            objects.extend(page.objects);
            match (page.truncated, page.next_token) {
                (false, _) => return Ok(objects),
                // Asking again without a new token would return the same page forever.
                (true, None) => {
                    return Err(RemoteError::Permanent(format!(
                        "list {prefix:?}: truncated page without NextContinuationToken"
                    )))
                }
                (true, Some(next)) => {
                    if token.as_deref() == Some(next.as_str()) {
                        return Err(RemoteError::Permanent(format!(
                            "list {prefix:?}: server repeated continuation token"
                        )));
                    }
                    token = Some(next);
                }
            }
        }
    }

    /// HEAD; Ok(None) on 404. metadata = the x-amz-meta-* headers with that prefix stripped, names lowercased.
    pub async fn head(&self, key: &str) -> RemoteResult<Option<RawHead>> {
        let resp = self
            .send(Method::HEAD, Some(key), &[], BTreeMap::new(), "head", key)
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error("head", key, resp).await);
        }
        let headers = resp.headers();
        // Content-Length is read from the header: for a HEAD response the body is empty, so the
        // client's own notion of the length is 0.
        let size = header_str(headers, CONTENT_LENGTH.as_str())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                RemoteError::Permanent(format!("head {key:?}: missing or bad Content-Length"))
            })?;
        let mut metadata = HashMap::new();
        for (name, value) in headers {
            if let Some(meta) = name.as_str().strip_prefix(META_PREFIX) {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                metadata.insert(meta.to_ascii_lowercase(), value);
            }
        }
        Ok(Some(RawHead {
            size,
            etag: header_str(headers, ETAG.as_str()),
            version: header_str(headers, "x-amz-version-id"),
            metadata,
        }))
    }

    /// PUT of an empty body at `key` (used with keys ending in '/'), with x-amz-meta-{name}: {value} headers for each pair. Returns the ETag.
    ///
    /// Names are sent lowercased (S3 lowercases them anyway) and must be `[A-Za-z0-9_.-]`; a
    /// repeated name keeps its last value. Prefer `[a-z0-9]`: moto_server (werkzeug) silently
    /// drops request headers whose name holds `_`, and Azure rejects `-` in metadata names.
    /// Values should already be header-safe ASCII (`Meta` escapes symlink targets itself);
    /// anything that is not is percent-encoded on the way out rather than refused, see
    /// `encode_meta_value`.
    pub async fn put_empty(
        &self,
        key: &str,
        metadata: &[(String, String)],
    ) -> RemoteResult<Option<String>> {
        let headers = meta_headers("put", key, metadata)?;
        let resp = self
            .send(Method::PUT, Some(key), &[], headers, "put", key)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("put", key, resp).await);
        }
        Ok(header_str(resp.headers(), ETAG.as_str()))
    }

    /// Replaces the metadata of `key` by copying the object onto itself (CopyObject with
    /// `x-amz-metadata-directive: REPLACE`), only while it still has ETag `if_match`: a chmod
    /// of a file never fetched need not download and upload it again. Returns the new ETag.
    pub async fn copy_with_metadata(
        &self,
        key: &str,
        metadata: &[(String, String)],
        if_match: &str,
    ) -> RemoteResult<Option<String>> {
        let mut headers = meta_headers("copy", key, metadata)?;
        headers.insert(
            "x-amz-copy-source".into(),
            format!(
                "/{}/{}",
                uri_encode(&self.inner.bucket, false),
                uri_encode(key, true)
            ),
        );
        headers.insert("x-amz-metadata-directive".into(), "REPLACE".into());
        headers.insert("x-amz-copy-source-if-match".into(), if_match.to_string());
        let resp = self
            .send(Method::PUT, Some(key), &[], headers, "copy", key)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("copy", key, resp).await);
        }
        etag_of_body("copy", key, &read_limited(resp).await)
    }

    /// CopyObject of `from` to `to`, metadata included, decided by the server: only while
    /// `from` still has ETag `source_if_match` (`x-amz-copy-source-if-match`), and only if
    /// `to` satisfies `conditions` (`If-None-Match: *` or `If-Match`, as on a PUT). A failed
    /// condition answers `Conflict`, a missing source `NotFound`. Returns (ETag, version).
    pub async fn copy_object(
        &self,
        from: &str,
        to: &str,
        source_if_match: Option<&str>,
        conditions: &[(&'static str, String)],
    ) -> RemoteResult<(Option<String>, Option<String>)> {
        let mut headers: BTreeMap<String, String> = conditions
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        headers.insert(
            "x-amz-copy-source".into(),
            format!(
                "/{}/{}",
                uri_encode(&self.inner.bucket, false),
                uri_encode(from, true)
            ),
        );
        if let Some(etag) = source_if_match {
            headers.insert("x-amz-copy-source-if-match".into(), etag.to_string());
        }
        let resp = self
            .send(Method::PUT, Some(to), &[], headers, "copy", to)
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            let body = read_limited(resp).await;
            let (code, message) = parse_error_body(&body);
            let detail = describe("copy", from, status, &code, &message);
            return Err(match code.as_deref() {
                Some("NoSuchBucket") => RemoteError::Permanent(detail),
                _ => RemoteError::NotFound(detail),
            });
        }
        if !status.is_success() {
            return Err(conditional_error("copy", to, resp).await);
        }
        let version = header_str(resp.headers(), "x-amz-version-id");
        let etag = etag_of_body("copy", to, &read_limited(resp).await)?;
        Ok((etag, version))
    }

    /// CompleteMultipartUpload of `upload_id` with `parts` (the part ids object_store's
    /// `put_part` returned, in order), decided by the server against `conditions`
    /// (`If-None-Match: *` or `If-Match`): object_store's own completion cannot send them.
    /// A failed condition answers `Conflict`. Returns (ETag, version).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[String],
        conditions: &[(&'static str, String)],
    ) -> RemoteResult<(Option<String>, Option<String>)> {
        let headers: BTreeMap<String, String> = conditions
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let body = complete_body(parts)?;
        let resp = self
            .send_with_body(
                Method::POST,
                Some(key),
                &[("uploadId", upload_id)],
                headers,
                body.into_bytes(),
                "complete upload",
                key,
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            let body = read_limited(resp).await;
            let (code, message) = parse_error_body(&body);
            let detail = describe("complete upload", key, status, &code, &message);
            // NoSuchUpload: completed by an attempt whose answer was lost, or expired. Sending
            // the file again settles either (a completed twin is then our own version).
            return Err(match code.as_deref() {
                Some("NoSuchUpload") => RemoteError::unavailable(detail),
                _ => RemoteError::Permanent(detail),
            });
        }
        if !status.is_success() {
            return Err(conditional_error("complete upload", key, resp).await);
        }
        let version = header_str(resp.headers(), "x-amz-version-id");
        let etag = etag_of_body("complete upload", key, &read_limited(resp).await)?;
        Ok((etag, version))
    }

    /// DELETE; a missing key is Ok.
    ///
    /// S3 itself answers 204 for a missing key; some compatible servers answer 404 NoSuchKey,
    /// which is the same outcome. A missing bucket is not, and stays an error.
    pub async fn delete(&self, key: &str) -> RemoteResult<()> {
        self.delete_if(key, None).await
    }

    /// DELETE that only removes the version with ETag `if_match` (S3 conditional delete);
    /// another version answers `Conflict`. A missing key is Ok.
    pub async fn delete_if(&self, key: &str, if_match: Option<&str>) -> RemoteResult<()> {
        let mut headers = BTreeMap::new();
        if let Some(etag) = if_match {
            headers.insert("if-match".to_string(), etag.to_string());
        }
        let resp = self
            .send(Method::DELETE, Some(key), &[], headers, "delete", key)
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::NOT_FOUND {
            let body = read_limited(resp).await;
            let (code, message) = parse_error_body(&body);
            if code.as_deref() == Some("NoSuchBucket") {
                return Err(RemoteError::Permanent(describe(
                    "delete", key, status, &code, &message,
                )));
            }
            return Ok(());
        }
        Err(status_error("delete", key, resp).await)
    }

    /// Signs and sends one request without a body.
    async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: BTreeMap<String, String>,
        op: &str,
        what: &str,
    ) -> RemoteResult<Response> {
        self.send_with_body(method, key, query, headers, Vec::new(), op, what)
            .await
    }

    /// Signs and sends one request; any HTTP status comes back as a response, only transport
    /// failures become errors here. The body is not part of the signature (UNSIGNED-PAYLOAD).
    #[allow(clippy::too_many_arguments)]
    async fn send_with_body(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        mut headers: BTreeMap<String, String>,
        body: Vec<u8>,
        op: &str,
        what: &str,
    ) -> RemoteResult<Response> {
        let inner = &*self.inner;
        let (canonical_path, wire_path) = match key {
            Some(key) => key_paths(&inner.base_path, key)?,
            None if inner.base_path.is_empty() => ("/".to_string(), "/".to_string()),
            None => (inner.base_path.clone(), inner.base_path.clone()),
        };
        let query = canonical_query(query);
        let credential = inner.credentials.get_credential().await.map_err(|e| {
            // A credential provider fails when STS or the instance metadata service does; a key
            // that is simply wrong is reported by S3 as 403 instead.
            RemoteError::unavailable(format!("{op} {what:?}: fetching S3 credentials: {e}"))
        })?;
        let now = Utc::now();
        headers.insert("host".to_string(), inner.authority.clone());
        headers.insert(
            "x-amz-content-sha256".to_string(),
            UNSIGNED_PAYLOAD.to_string(),
        );
        headers.insert("x-amz-date".to_string(), amz_date(now));
        if let Some(token) = &credential.token {
            headers.insert("x-amz-security-token".to_string(), token.clone());
        }
        let authorization = authorization(
            &credential,
            &inner.region,
            now,
            method.as_str(),
            &canonical_path,
            &query,
            &headers,
            UNSIGNED_PAYLOAD,
        );
        let mut url = format!("{}://{}{}", inner.scheme, inner.authority, wire_path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        tracing::trace!(%method, %url, "raw S3 request");
        let mut request = inner.client.request(method.clone(), url);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        request = request.header(AUTHORIZATION, authorization);
        if method == Method::PUT || method == Method::POST {
            // S3 refuses a PUT without Content-Length (411), so state even an empty body.
            request = request
                .header(CONTENT_LENGTH, body.len().to_string())
                .body(body);
        }
        request
            .send()
            .await
            .map_err(|e| transport_error(op, what, &e))
    }
}

/// The ETag in the XML answer of a copy or a multipart completion. Both can fail after their
/// 200 has been sent: the error is then in the body, and the request is retried later.
fn etag_of_body(op: &str, key: &str, body: &str) -> RemoteResult<Option<String>> {
    let (code, message) = parse_error_body(body);
    if code.is_some() {
        return Err(RemoteError::unavailable(format!(
            "{op} {key:?}: {}: {}",
            code.unwrap_or_default(),
            message.unwrap_or_default()
        )));
    }
    let mut etag = None;
    walk_xml(body, |path, text| {
        if path.last().map(String::as_str) == Some("ETag") {
            etag = Some(text);
        }
        Ok(())
    })
    .map_err(|e| RemoteError::unavailable(format!("{op} {key:?}: {e}")))?;
    Ok(etag)
}

/// A refused conditional request: 412, or 409 `ConditionalRequestConflict` (S3's answer when
/// another conditional write to the key was in flight at the same moment), is a `Conflict`;
/// anything else as `status_error` says.
async fn conditional_error(op: &str, what: &str, resp: Response) -> RemoteError {
    if resp.status() != StatusCode::CONFLICT {
        return status_error(op, what, resp).await;
    }
    let status = resp.status();
    let body = read_limited(resp).await;
    let (code, message) = parse_error_body(&body);
    let detail = describe(op, what, status, &code, &message);
    match code.as_deref() {
        Some("ConditionalRequestConflict") => RemoteError::Conflict(detail),
        _ => RemoteError::Permanent(detail),
    }
}

/// The body of CompleteMultipartUpload. A part id is the part's ETag, or (when object_store
/// computed checksums) its `PartMetadata` record: the ETag with the part's checksum.
fn complete_body(parts: &[String]) -> RemoteResult<String> {
    let mut out =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (i, id) in parts.iter().enumerate() {
        let mut fields: Vec<(&'static str, String)> = Vec::new();
        if id.trim_start().starts_with('<') {
            walk_xml(id, |path, text| {
                let name = match path.get(1).map(String::as_str) {
                    Some("e_tag") => "ETag",
                    Some("checksum_sha256") => "ChecksumSHA256",
                    Some("checksum_crc64nvme") => "ChecksumCRC64NVME",
                    _ => return Ok(()),
                };
                fields.push((name, text));
                Ok(())
            })
            .map_err(|e| RemoteError::Permanent(format!("part id {id:?}: {e}")))?;
        } else {
            fields.push(("ETag", id.clone()));
        }
        out.push_str("<Part>");
        for (name, value) in fields {
            let value = quick_xml::escape::escape(value.as_str());
            out.push_str(&format!("<{name}>{value}</{name}>"));
        }
        out.push_str(&format!("<PartNumber>{}</PartNumber></Part>", i + 1));
    }
    out.push_str("</CompleteMultipartUpload>");
    Ok(out)
}

/// `x-amz-meta-*` headers for our metadata pairs. Names are sent lowercased (S3 lowercases them
/// anyway) and must be `[A-Za-z0-9_.-]`.
fn meta_headers(
    op: &str,
    key: &str,
    metadata: &[(String, String)],
) -> RemoteResult<BTreeMap<String, String>> {
    let mut headers = BTreeMap::new();
    for (name, value) in metadata {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(RemoteError::Permanent(format!(
                "{op} {key:?}: invalid metadata name {name:?}"
            )));
        }
        headers.insert(
            format!("{META_PREFIX}{}", name.to_ascii_lowercase()),
            encode_meta_value(value),
        );
    }
    Ok(headers)
}

/// SigV4's URI encoding: every byte except `A-Z a-z 0-9 - _ . ~` becomes `%XX` (uppercase hex),
/// and `/` is kept only when it separates path segments.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// (canonical URI, path to send) of `key`: the canonical URI is the key encoded by SigV4's rule;
/// the path sent differs from it only where dot segments force an encoded '/', see `wire_key`.
fn key_paths(base_path: &str, key: &str) -> RemoteResult<(String, String)> {
    Ok((
        format!("{base_path}/{}", uri_encode(key, true)),
        format!("{base_path}/{}", wire_key(key)?),
    ))
}

/// Encodes a key for the request path. Normally this is exactly its canonical URI (SigV4's
/// encoding, `/` kept, `//` and `.` segments left alone), but the URL type reqwest sends through
/// resolves `.` and `..` segments away (even written `%2E`), which would silently address
/// another key. So the `/` next to such a segment is sent as `%2F`: S3 decodes the path before
/// looking up the key and before re-encoding it for its own canonical request, so the key and
/// the signature stay those of the literal `x/./y` (moto, which checks signatures the same way
/// when asked to, accepts it). A key that is exactly `.` or `..` has no `/` to encode and cannot
/// be addressed at all.
fn wire_key(key: &str) -> RemoteResult<String> {
    let is_dot = |s: &str| s == "." || s == "..";
    let segments: Vec<&str> = key.split('/').collect();
    if key.is_empty() || (segments.len() == 1 && is_dot(key)) {
        return Err(RemoteError::Permanent(format!(
            "key {key:?} cannot be addressed in a request path"
        )));
    }
    let mut out = String::with_capacity(key.len() + 8);
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            if is_dot(segments[i - 1]) || is_dot(segment) {
                out.push_str("%2F");
            } else {
                out.push('/');
            }
        }
        out.push_str(&uri_encode(segment, false));
    }
    Ok(out)
}

/// The canonical query string doubles as the query actually sent, so that what is signed is
/// byte-for-byte what the server sees.
fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Metadata travels in HTTP header values, which cannot carry control characters and carry
/// non-ASCII bytes unreliably. Our values are numbers, hex digests and symlink targets, and
/// `Meta` already escapes symlink targets (controls, `%`, non-ASCII) before they get here, so
/// for our own values this changes nothing: the server ends up holding exactly what
/// object_store would have written. Only a value that slipped through unescaped has its
/// control and non-ASCII bytes sent as `%XX`, which keeps the request valid; `%` is left alone
/// so that already-escaped values are not escaped twice, which also means this alone is not
/// reversible and [`S3Raw::head`] does not try to decode.
fn encode_meta_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii() && !b.is_ascii_control() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn amz_date(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

/// `headers` must have lowercase names; the map's order is SigV4's sort order.
fn canonical_request(
    method: &str,
    uri: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    payload_hash: &str,
) -> String {
    let mut out = format!("{method}\n{uri}\n{query}\n");
    for (name, value) in headers {
        out.push_str(name);
        out.push(':');
        out.push_str(&value.split_whitespace().collect::<Vec<_>>().join(" "));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers(headers));
    out.push('\n');
    out.push_str(payload_hash);
    out
}

fn signed_headers(headers: &BTreeMap<String, String>) -> String {
    headers
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(";")
}

fn string_to_sign(now: DateTime<Utc>, region: &str, canonical_request: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        amz_date(now),
        scope(now, region),
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn scope(now: DateTime<Utc>, region: &str) -> String {
    format!("{}/{region}/s3/aws4_request", now.format("%Y%m%d"))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signature(secret_key: &str, now: DateTime<Utc>, region: &str, string_to_sign: &str) -> String {
    let date = now.format("%Y%m%d").to_string();
    let k_date = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

#[allow(clippy::too_many_arguments)]
fn authorization(
    credential: &AwsCredential,
    region: &str,
    now: DateTime<Utc>,
    method: &str,
    uri: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    payload_hash: &str,
) -> String {
    let canonical = canonical_request(method, uri, query, headers, payload_hash);
    let to_sign = string_to_sign(now, region, &canonical);
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
        credential.key_id,
        scope(now, region),
        signed_headers(headers),
        signature(&credential.secret_key, now, region, &to_sign)
    )
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Everything below the HTTP layer (refused, reset, timed out, DNS) can heal by itself; only a
/// request that could not even be built is our fault.
fn transport_error(op: &str, what: &str, err: &reqwest::Error) -> RemoteError {
    let mut message = format!("{op} {what:?}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if err.is_builder() {
        RemoteError::Permanent(message)
    } else {
        RemoteError::Unavailable {
            message,
            retry_after: None,
        }
    }
}

/// Maps a non-success status onto what the caller has to decide: retry later, give up, or
/// re-read the object.
async fn status_error(op: &str, what: &str, resp: Response) -> RemoteError {
    let status = resp.status();
    let retry_after = parse_retry_after(resp.headers(), Utc::now());
    let region = header_str(resp.headers(), "x-amz-bucket-region");
    let body = read_limited(resp).await;
    let (code, message) = parse_error_body(&body);
    let mut detail = describe(op, what, status, &code, &message);
    if let Some(region) = region {
        // S3 names the bucket's real region when the configured one is wrong.
        detail.push_str(&format!(" (bucket region: {region})"));
    }
    // S3 also answers 400 RequestTimeout when the connection stalled mid-request, and SlowDown
    // with statuses other than 503 on some compatible servers: both heal by waiting.
    let transient_code = matches!(code.as_deref(), Some("RequestTimeout" | "SlowDown"));
    match status {
        StatusCode::PRECONDITION_FAILED => RemoteError::Conflict(detail),
        s if s.is_server_error()
            || s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT
            || transient_code =>
        {
            RemoteError::Unavailable {
                message: detail,
                retry_after,
            }
        }
        _ => RemoteError::Permanent(detail),
    }
}

fn describe(
    op: &str,
    what: &str,
    status: StatusCode,
    code: &Option<String>,
    message: &Option<String>,
) -> String {
    let mut out = format!("{op} {what:?}: HTTP {status}");
    if let Some(code) = code {
        out.push_str(&format!(" {code}"));
    }
    if let Some(message) = message {
        out.push_str(&format!(": {message}"));
    }
    out
}

/// Retry-After is either delta-seconds or an HTTP date.
fn parse_retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = header_str(headers, RETRY_AFTER.as_str())?;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Best effort: an unreadable error body still leaves the status to report.
async fn read_limited(mut resp: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Collects the text content of each element, resolving entity and character references, and
/// calls `on_end` with the path of element names (root first) when an element closes.
pub(super) fn walk_xml(
    xml: &str,
    mut on_end: impl FnMut(&[String], String) -> Result<(), String>,
) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|e| format!("bad XML: {e}"))? {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                text.clear();
            }
            Event::Empty(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                on_end(&path, String::new())?;
                path.pop();
            }
            Event::End(_) => {
                on_end(&path, std::mem::take(&mut text))?;
                path.pop();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| format!("bad XML: {e}"))?),
            Event::CData(t) => text.push_str(&t.decode().map_err(|e| format!("bad XML: {e}"))?),
            Event::GeneralRef(r) => {
                if let Some(ch) = r.resolve_char_ref().map_err(|e| format!("bad XML: {e}"))? {
                    text.push(ch);
                } else {
                    let name = r.decode().map_err(|e| format!("bad XML: {e}"))?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("bad XML: unknown entity &{name};"))?;
                    text.push_str(resolved);
                }
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

/// One page of a ListObjectsV2-style listing (S3's, and GCS's XML API, which answers the same
/// form to `list-type=2`).
#[derive(Debug, Default)]
pub(super) struct ListPage {
    pub(super) objects: Vec<RawObject>,
    pub(super) truncated: bool,
    pub(super) next_token: Option<String>,
}

pub(super) fn parse_list_page(xml: &str) -> Result<ListPage, String> {
    let mut page = ListPage::default();
    let mut url_encoded = false;
    let mut current: Option<RawObject> = None;
    walk_xml(xml, |path, text| {
        match path {
            [_, contents] if contents == "Contents" => {
                let object = current.take().ok_or("Contents without a Key")?;
                if object.key.is_empty() {
                    return Err("Contents without a Key".to_string());
                }
                page.objects.push(object);
            }
            [_, contents, field] if contents == "Contents" => {
                let object = current.get_or_insert_with(|| RawObject {
                    key: String::new(),
                    size: 0,
                    etag: None,
                    last_modified: None,
                });
                match field.as_str() {
                    "Key" => object.key = text,
                    "Size" => {
                        object.size = text
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad Size {text:?}"))?
                    }
                    "ETag" => object.etag = Some(text),
                    "LastModified" => {
                        object.last_modified = DateTime::parse_from_rfc3339(text.trim())
                            .ok()
                            .map(|t| t.with_timezone(&Utc))
                    }
                    _ => {}
                }
            }
            [_, field] if field == "IsTruncated" => page.truncated = text.trim() == "true",
            [_, field] if field == "NextContinuationToken" => page.next_token = Some(text),
            [_, field] if field == "EncodingType" => url_encoded = text.trim() == "url",
            _ => {}
        }
        Ok(())
    })?;
    if url_encoded {
        for object in &mut page.objects {
            object.key = decode_url_key(&object.key)?;
        }
    }
    Ok(page)
}

/// S3's `encoding-type=url` writes a space as `+` (and `+` as `%2B`), form-style.
fn decode_url_key(encoded: &str) -> Result<String, String> {
    let bytes: Vec<u8> = percent_decode_str(&encoded.replace('+', " ")).collect();
    String::from_utf8(bytes).map_err(|_| format!("key {encoded:?} decodes to invalid UTF-8"))
}

/// (Code, Message) of an S3 (or GCS XML API) error body, when there is one.
pub(super) fn parse_error_body(body: &str) -> (Option<String>, Option<String>) {
    let mut code = None;
    let mut message = None;
    // A body that is not XML (a proxy's HTML page) just yields neither.
    let _ = walk_xml(body, |path, text| {
        match path {
            [root, field] if root == "Error" && field == "Code" => code = Some(text),
            [root, field] if root == "Error" && field == "Message" => message = Some(text),
            _ => {}
        }
        Ok(())
    });
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test date")
            .with_timezone(&Utc)
    }

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn uri_encoding_follows_sigv4_rules() {
        assert_eq!(uri_encode("AZaz09-_.~", false), "AZaz09-_.~");
        assert_eq!(uri_encode("a b+c*d%e", false), "a%20b%2Bc%2Ad%25e");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("a/b", true), "a/b");
        assert_eq!(uri_encode("é", false), "%C3%A9");
        assert_eq!(uri_encode("\u{1}\t", false), "%01%09");
    }

    #[test]
    fn keys_keep_their_slashes_and_are_encoded_once() {
        for (key, path) in [
            ("photos/", "/b/photos/"),
            ("a//b", "/b/a//b"),
            ("/lead", "/b//lead"),
            ("test$file.text", "/b/test%24file.text"),
            ("100%/x y", "/b/100%25/x%20y"),
            ("a.b/.c/d..", "/b/a.b/.c/d.."),
            ("é~", "/b/%C3%A9~"),
        ] {
            // Without dot segments, what is sent is exactly what is signed.
            assert_eq!(
                key_paths("/b", key).unwrap(),
                (path.to_string(), path.to_string())
            );
        }
    }

    #[test]
    fn dot_segments_survive_url_parsing() {
        for (key, path) in [
            ("x/./y", "x%2F.%2Fy"),
            ("../x", "..%2Fx"),
            ("x/..", "x%2F.."),
            ("./", ".%2F"),
            ("a/./../b", "a%2F.%2F..%2Fb"),
        ] {
            let (canonical, wire) = key_paths("/bucket", key).unwrap();
            // Signed as the literal key, the way S3 re-encodes the decoded path.
            assert_eq!(canonical, format!("/bucket/{key}"), "{key}");
            assert_eq!(wire, format!("/bucket/{path}"), "{key}");
            let encoded = wire_key(key).unwrap();
            // The URL type reqwest uses must leave the path alone.
            let url = reqwest::Url::parse(&format!("http://h/bucket/{encoded}")).unwrap();
            assert_eq!(url.path(), format!("/bucket/{path}"), "{key}");
            let decoded = percent_decode_str(&url.path()["/bucket/".len()..])
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, key);
        }
        assert!(matches!(wire_key("."), Err(RemoteError::Permanent(_))));
        assert!(matches!(wire_key(".."), Err(RemoteError::Permanent(_))));
        assert!(matches!(wire_key(""), Err(RemoteError::Permanent(_))));
    }

    #[test]
    fn query_is_sorted_and_encoded() {
        assert_eq!(
            canonical_query(&[
                ("prefix", "a b/c"),
                ("list-type", "2"),
                ("continuation-token", "1+x/=="),
                ("encoding-type", "url"),
            ]),
            "continuation-token=1%2Bx%2F%3D%3D&encoding-type=url&list-type=2&prefix=a%20b%2Fc"
        );
        assert_eq!(canonical_query(&[]), "");
    }

    /// The "GET Object" example of the S3 SigV4 documentation ("Signature Calculations for the
    /// Authorization Header: Transferring Payload in a Single Chunk").
    #[test]
    fn aws_documented_get_object_example() {
        let now = at("2013-05-24T00:00:00Z");
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let (path, _) = key_paths("", "test.txt").unwrap();
        let canonical = canonical_request("GET", &path, "", &h, EMPTY_SHA256);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let to_sign = string_to_sign(now, "us-east-1", &canonical);
        assert_eq!(
            to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            signature(EXAMPLE_SECRET, now, "us-east-1", &to_sign),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        let credential = AwsCredential {
            key_id: "AKIAIOSFODNN7EXAMPLE".to_string(),
            secret_key: EXAMPLE_SECRET.to_string(),
            token: None,
        };
        assert_eq!(
            authorization(
                &credential,
                "us-east-1",
                now,
                "GET",
                &path,
                "",
                &h,
                EMPTY_SHA256
            ),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The "PUT Object" example of the same page: a key with a byte that needs encoding.
    #[test]
    fn aws_documented_put_object_example() {
        let now = at("2013-05-24T00:00:00Z");
        let payload = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        let h = headers(&[
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", payload),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ]);
        let (path, _) = key_paths("", "test$file.text").unwrap();
        let canonical = canonical_request("PUT", &path, "", &h, payload);
        assert_eq!(
            canonical,
            "PUT\n/test%24file.text\n\ndate:Fri, 24 May 2013 00:00:00 GMT\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n\
             x-amz-date:20130524T000000Z\nx-amz-storage-class:REDUCED_REDUNDANCY\n\n\
             date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n\
             44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let to_sign = string_to_sign(now, "us-east-1", &canonical);
        assert_eq!(
            signature(EXAMPLE_SECRET, now, "us-east-1", &to_sign),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    /// The "GET Bucket (List Objects)" example of the same page: a signed, sorted query string.
    #[test]
    fn aws_documented_list_objects_example() {
        let now = at("2013-05-24T00:00:00Z");
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let query = canonical_query(&[("prefix", "J"), ("max-keys", "2")]);
        assert_eq!(query, "max-keys=2&prefix=J");
        let canonical = canonical_request("GET", "/", &query, &h, EMPTY_SHA256);
        let to_sign = string_to_sign(now, "us-east-1", &canonical);
        assert_eq!(
            signature(EXAMPLE_SECRET, now, "us-east-1", &to_sign),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    /// What `put_empty` signs for a directory marker with metadata and a session token.
    #[test]
    fn canonical_request_for_a_marker_put() {
        let h = headers(&[
            ("host", "127.0.0.1:9000"),
            ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
            ("x-amz-date", "20240102T030405Z"),
            ("x-amz-meta-mode", "16877"),
            ("x-amz-meta-target", &encode_meta_value("../b c\u{1}")),
            ("x-amz-security-token", "tok"),
        ]);
        let (path, _) = key_paths("/bucket", "photos/2024 €/").unwrap();
        let canonical = canonical_request("PUT", &path, "", &h, UNSIGNED_PAYLOAD);
        assert_eq!(
            canonical,
            "PUT\n/bucket/photos/2024%20%E2%82%AC/\n\n\
             host:127.0.0.1:9000\n\
             x-amz-content-sha256:UNSIGNED-PAYLOAD\n\
             x-amz-date:20240102T030405Z\n\
             x-amz-meta-mode:16877\n\
             x-amz-meta-target:../b c%01\n\
             x-amz-security-token:tok\n\n\
             host;x-amz-content-sha256;x-amz-date;x-amz-meta-mode;x-amz-meta-target;x-amz-security-token\n\
             UNSIGNED-PAYLOAD"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_spaces_collapsed() {
        let h = headers(&[("host", "h"), ("x-amz-meta-a", "  a   b  ")]);
        let canonical = canonical_request("GET", "/", "", &h, UNSIGNED_PAYLOAD);
        assert!(canonical.contains("\nx-amz-meta-a:a b\n"), "{canonical}");
    }

    #[test]
    fn metadata_values_pass_through_unless_unsendable() {
        // What `Meta` produces is sent untouched, '%' escapes included.
        for value in [
            "12345",
            "755",
            "deadbeef",
            "../x y/%41",
            "t%C3%A9%01%25",
            "",
        ] {
            assert_eq!(encode_meta_value(value), value);
        }
        assert_eq!(encode_meta_value("é\u{1}\n\u{7f}"), "%C3%A9%01%0A%7F");
    }

    #[test]
    fn list_page_parsing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix></Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents><Key>dir/</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>
    <ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>0</Size>
    <Owner><ID>x</ID><DisplayName>y</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>a%2F%2Fb+c%2Bd%01</Key><Size>12</Size></Contents>
  <Contents><Key>x/./y%26</Key><Size>7</Size><ETag>"e"</ETag></Contents>
  <EncodingType>url</EncodingType>
  <NextContinuationToken>tok/+=</NextContinuationToken>
</ListBucketResult>"#;
        let page = parse_list_page(xml).unwrap();
        assert!(page.truncated);
        assert_eq!(page.next_token.as_deref(), Some("tok/+="));
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["dir/", "a//b c+d\u{1}", "x/./y&"]);
        assert_eq!(page.objects[0].size, 0);
        assert_eq!(
            page.objects[0].etag.as_deref(),
            Some("\"d41d8cd98f00b204e9800998ecf8427e\"")
        );
        assert_eq!(
            page.objects[0].last_modified,
            Some(at("2024-01-02T03:04:05Z"))
        );
        assert_eq!(page.objects[1].size, 12);
        assert_eq!(page.objects[1].etag, None);
        assert_eq!(page.objects[2].etag.as_deref(), Some("\"e\""));
    }

    #[test]
    fn list_page_without_encoding_keeps_keys_verbatim() {
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated>\
            <Contents><Key>a+b%20 &amp;&#x41;&lt;</Key><Size>1</Size></Contents></ListBucketResult>";
        let page = parse_list_page(xml).unwrap();
        assert!(!page.truncated);
        assert_eq!(page.next_token, None);
        assert_eq!(page.objects[0].key, "a+b%20 &A<");
    }

    #[test]
    fn malformed_list_pages_are_errors() {
        assert!(parse_list_page(
            "<ListBucketResult><Contents><Size>x</Size></Contents></ListBucketResult>"
        )
        .is_err());
        assert!(parse_list_page(
            "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"
        )
        .is_err());
        assert!(parse_list_page("<ListBucketResult><Contents><Key>a</Key></Oops>").is_err());
    }

    #[test]
    fn error_body_parsing() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
            <Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>";
        assert_eq!(
            parse_error_body(body),
            (
                Some("SlowDown".to_string()),
                Some("Please reduce your request rate.".to_string())
            )
        );
        assert_eq!(parse_error_body(""), (None, None));
        assert_eq!(parse_error_body("<html>oops</html>"), (None, None));
    }

    #[test]
    fn retry_after_forms() {
        let now = at("2024-01-01T00:00:00Z");
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Mon, 01 Jan 2024 00:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            RETRY_AFTER,
            "Sun, 31 Dec 2023 00:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::ZERO));
    }

    #[test]
    fn client_and_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let raw = fake_client("http://127.0.0.1:1".into(), None);
        send_sync(&raw);
        send(raw.list(""));
        send(raw.head("k"));
        send(raw.put_empty("k/", &[]));
        send(raw.delete("k"));
    }

    #[test]
    fn url_styles() {
        let creds: AwsCredentialProvider =
            Arc::new(object_store::StaticCredentialProvider::new(AwsCredential {
                key_id: "k".into(),
                secret_key: "s".into(),
                token: None,
            }));
        let aws = S3Raw::new(None, "b".into(), "eu-west-1".into(), false, creds.clone());
        assert_eq!(aws.inner.authority, "b.s3.eu-west-1.amazonaws.com");
        assert_eq!(aws.inner.base_path, "");
        let path = S3Raw::new(
            Some("http://127.0.0.1:9000/".into()),
            "b".into(),
            "us-east-1".into(),
            false,
            creds.clone(),
        );
        assert_eq!(
            (path.inner.scheme.as_str(), path.inner.authority.as_str()),
            ("http", "127.0.0.1:9000")
        );
        assert_eq!(path.inner.base_path, "/b");
        let vhost = S3Raw::new(
            Some("https://minio.local/s3".into()),
            "b".into(),
            "us-east-1".into(),
            true,
            creds.clone(),
        );
        assert_eq!(vhost.inner.authority, "b.minio.local");
        assert_eq!(vhost.inner.base_path, "/s3");
        let named = S3Raw::new(
            Some("http://b.localhost:9000".into()),
            "b".into(),
            "us-east-1".into(),
            true,
            creds,
        );
        assert_eq!(named.inner.authority, "b.localhost:9000");
        assert_eq!(named.inner.base_path, "");
        assert!(!format!("{vhost:?}").contains("secret"));
    }

    fn static_credentials(token: Option<&str>) -> AwsCredentialProvider {
        Arc::new(object_store::StaticCredentialProvider::new(AwsCredential {
            key_id: "test".into(),
            secret_key: "test".into(),
            token: token.map(str::to_string),
        }))
    }

    /// Serves one canned response per connection and hands back the raw requests it saw, so
    /// tests can see exactly what goes on the wire and how each status is mapped.
    fn fake_server(responses: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for response in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8_lossy(&request).into_owned());
                stream.write_all(response.as_bytes()).unwrap();
            }
            seen
        });
        (endpoint, handle)
    }

    fn fake_client(endpoint: String, token: Option<&str>) -> S3Raw {
        S3Raw::new(
            Some(endpoint),
            "bkt".into(),
            "us-east-1".into(),
            false,
            static_credentials(token),
        )
    }

    #[tokio::test]
    async fn put_empty_sends_a_signed_zero_length_put() {
        let (endpoint, server) = fake_server(vec![
            "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]);
        let host = endpoint.trim_start_matches("http://").to_string();
        let raw = fake_client(endpoint, Some("session-token"));
        let meta = [
            ("Mode".to_string(), "16877".to_string()),
            ("target".to_string(), "../x y".to_string()),
        ];
        let etag = raw.put_empty("x/./dir/", &meta).await.unwrap();
        assert_eq!(etag.as_deref(), Some("\"abc\""));
        let request = server.join().unwrap().remove(0).to_ascii_lowercase();
        assert!(
            request.starts_with("put /bkt/x%2f.%2fdir/ http/1.1\r\n"),
            "{request}"
        );
        for line in [
            format!("host: {host}\r\n"),
            "content-length: 0\r\n".to_string(),
            "x-amz-content-sha256: unsigned-payload\r\n".to_string(),
            "x-amz-meta-mode: 16877\r\n".to_string(),
            "x-amz-meta-target: ../x y\r\n".to_string(),
            "x-amz-security-token: session-token\r\n".to_string(),
            "signedheaders=host;x-amz-content-sha256;x-amz-date;x-amz-meta-mode;x-amz-meta-target;x-amz-security-token, signature=".to_string(),
        ] {
            assert!(request.contains(&line), "missing {line:?} in {request}");
        }
        assert_eq!(request.matches("content-length").count(), 1, "{request}");
    }

    #[tokio::test]
    async fn copy_with_metadata_copies_onto_itself_while_the_etag_holds() {
        let body = "<CopyObjectResult><ETag>&quot;def&quot;</ETag></CopyObjectResult>";
        let ok: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let late = "<Error><Code>InternalError</Code><Message>late</Message></Error>";
        let late_error: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{late}",
                late.len()
            )
            .into_boxed_str(),
        );
        let (endpoint, server) = fake_server(vec![
            ok,
            "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            late_error,
        ]);
        let raw = fake_client(endpoint, None);
        let meta = [("stratus_mode".to_string(), "600".to_string())];
        let etag = raw
            .copy_with_metadata("d/a b.bin", &meta, "\"abc\"")
            .await
            .unwrap();
        assert_eq!(etag.as_deref(), Some("\"def\""));
        assert!(matches!(
            raw.copy_with_metadata("d/a b.bin", &meta, "\"abc\"").await,
            Err(RemoteError::Conflict(_))
        ));
        assert!(matches!(
            raw.copy_with_metadata("d/a b.bin", &meta, "\"abc\"").await,
            Err(RemoteError::Unavailable { .. })
        ));
        let request = server.join().unwrap().remove(0).to_ascii_lowercase();
        for line in [
            "put /bkt/d/a%20b.bin http/1.1\r\n",
            "x-amz-copy-source: /bkt/d/a%20b.bin\r\n",
            "x-amz-metadata-directive: replace\r\n",
            "x-amz-copy-source-if-match: \"abc\"\r\n",
            "x-amz-meta-stratus_mode: 600\r\n",
        ] {
            assert!(request.contains(line), "missing {line:?} in {request}");
        }
    }

    #[tokio::test]
    async fn statuses_map_onto_remote_errors() {
        let (endpoint, server) = fake_server(vec![
            "HTTP/1.1 503 Slow Down\r\nRetry-After: 3\r\nContent-Length: 88\r\nConnection: close\r\n\r\n\
             <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 84\r\nConnection: close\r\n\r\n\
             <Error><Code>AccessDenied</Code><Message>Access Denied for you.</Message></Error>",
            "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 54\r\nConnection: close\r\n\r\n\
             <Error><Code>NoSuchKey</Code><Message>x</Message></Error>",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 57\r\nConnection: close\r\n\r\n\
             <Error><Code>NoSuchBucket</Code><Message>x</Message></Error>",
            "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 60\r\nConnection: close\r\n\r\n\
             <Error><Code>RequestTimeout</Code><Message>x</Message></Error>",
            "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]);
        let raw = fake_client(endpoint, None);
        match raw.list("p/").await {
            Err(RemoteError::Unavailable {
                message,
                retry_after,
            }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
                assert!(
                    message.contains("503") && message.contains("SlowDown"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match raw.head("k").await {
            // HEAD responses carry no body, so only the status is there to report.
            Err(RemoteError::Permanent(message)) => assert!(message.contains("403"), "{message}"),
            other => panic!("{other:?}"),
        }
        match raw.put_empty("k/", &[]).await {
            Err(RemoteError::Conflict(message)) => assert!(message.contains("412"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(raw.head("gone").await.unwrap().is_none());
        raw.delete("gone").await.unwrap();
        match raw.delete("k").await {
            Err(RemoteError::Permanent(message)) => {
                assert!(message.contains("NoSuchBucket"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            raw.delete("k").await,
            Err(RemoteError::Unavailable { .. })
        ));
        assert!(matches!(
            raw.put_empty("k/", &[]).await,
            Err(RemoteError::Unavailable { .. })
        ));
        match raw.list("").await {
            Err(RemoteError::Permanent(message)) => {
                assert!(
                    message.contains("301") && message.contains("eu-west-1"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with(
                "GET /bkt?encoding-type=url&list-type=2&max-keys=1000&prefix=p%2F HTTP/1.1\r\n"
            ),
            "{}",
            requests[0]
        );
        // The 403 body of the second exchange must be readable for a GET-style error too.
        let (endpoint, server) = fake_server(vec![
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 84\r\nConnection: close\r\n\r\n\
             <Error><Code>AccessDenied</Code><Message>Access Denied for you.</Message></Error>",
        ]);
        match fake_client(endpoint, None).list("").await {
            Err(RemoteError::Permanent(message)) => assert!(
                message.contains("403")
                    && message.contains("AccessDenied")
                    && message.contains("Access Denied for you."),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable() {
        // Bind and drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let raw = fake_client(format!("http://127.0.0.1:{port}"), None);
        assert!(matches!(
            raw.list("").await,
            Err(RemoteError::Unavailable { .. })
        ));
        assert!(matches!(
            raw.head("k").await,
            Err(RemoteError::Unavailable { .. })
        ));
    }

    #[tokio::test]
    async fn listing_follows_continuation_tokens_on_moto() {
        let moto = test_moto::Moto::start();
        moto.create_bucket("pages");
        let raw = S3Raw::new(
            Some(moto.endpoint.clone()),
            "pages".into(),
            "us-east-1".into(),
            false,
            static_credentials(None),
        );
        let mut keys: Vec<String> = (0..7).map(|i| format!("p/{i}/")).collect();
        keys.extend(["p//x".to_string(), "p/./y".to_string(), "q".to_string()]);
        for key in &keys {
            raw.put_empty(key, &[]).await.unwrap();
        }
        let listed: Vec<String> = raw
            .clone()
            .with_max_keys(2)
            .list("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mut expected: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with("p/"))
            .cloned()
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
        let all = raw.with_max_keys(3).list("").await.unwrap();
        assert_eq!(all.len(), keys.len());
    }
}
