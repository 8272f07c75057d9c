//! The S3 requests object_store cannot make, signed by object_store's own `AwsAuthorizer`:
//! listings that may hold keys object_store's `Path` rejects, `dir/` markers, and the writes
//! that must carry the server's precondition (multipart completion, copies, deletes).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;
use reqwest::header::{CONTENT_LENGTH, ETAG};
use reqwest::{Method, Response, StatusCode};

use super::wire::{
    complete_body, etag_of_body, key_path, meta_headers, query_string, uri_encode, META_PREFIX,
};
use crate::remote::bucket::RawHead;
use crate::remote::error::{RemoteError, RemoteResult};
use crate::remote::http::{describe, map_err, read_limited, transport_error, xml_error};
use crate::remote::xml::{parse_error_body, parse_list_page, RawObject};

/// S3's own page size; stated explicitly so that a server with a different default behaves the same.
const DEFAULT_MAX_KEYS: u32 = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Cheap to clone: the HTTP connection pool and the configuration are shared.
#[derive(Clone)]
pub struct S3Raw {
    inner: Arc<Inner>,
    max_keys: u32,
}

struct Inner {
    client: reqwest::Client,
    scheme: String,
    /// `host[:port]` as it goes into the URL (and so into the signed Host header).
    authority: String,
    /// Path prefix in front of the key: empty for virtual-hosted style, `/bucket` (after any
    /// path of the endpoint) for path style.
    base_path: String,
    region: String,
    bucket: String,
    credentials: AwsCredentialProvider,
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

    /// Lets tests exercise continuation tokens without a thousand keys.
    #[cfg(test)]
    fn with_max_keys(mut self, max_keys: u32) -> Self {
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
                return Err(failed("list", prefix, resp).await);
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| transport_error(&format!("list {prefix:?}"), &e))?;
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
            return Err(failed("head", key, resp).await);
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
            return Err(failed("put", key, resp).await);
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
            return Err(failed("copy", key, resp).await);
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
            let (code, detail) = not_found("copy", from, resp).await;
            return Err(match code.as_deref() {
                Some("NoSuchBucket") => RemoteError::Permanent(detail),
                _ => RemoteError::NotFound(detail),
            });
        }
        if !status.is_success() {
            return Err(failed("copy", to, resp).await);
        }
        let version = header_str(resp.headers(), "x-amz-version-id");
        let etag = etag_of_body("copy", to, &read_limited(resp).await)?;
        Ok((etag, version))
    }

    /// UploadPartCopy: part `part_number` (from 1) of upload `upload_id` of `key` becomes
    /// bytes `range` of the object at `key` itself, only while it still has ETag
    /// `source_if_match` (`x-amz-copy-source-if-match`; another version answers `Conflict`).
    /// Returns the part's ETag, which the completion lists.
    pub async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: usize,
        range: std::ops::Range<u64>,
        source_if_match: &str,
    ) -> RemoteResult<String> {
        let mut headers = BTreeMap::new();
        headers.insert(
            "x-amz-copy-source".to_string(),
            format!(
                "/{}/{}",
                uri_encode(&self.inner.bucket, false),
                uri_encode(key, true)
            ),
        );
        headers.insert(
            "x-amz-copy-source-range".to_string(),
            format!("bytes={}-{}", range.start, range.end - 1),
        );
        headers.insert(
            "x-amz-copy-source-if-match".to_string(),
            source_if_match.to_string(),
        );
        let part = part_number.to_string();
        let resp = self
            .send(
                Method::PUT,
                Some(key),
                &[("partNumber", part.as_str()), ("uploadId", upload_id)],
                headers,
                "copy part",
                key,
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            let (code, detail) = not_found("copy part", key, resp).await;
            // The base is gone: as for a changed base, the completion must not happen.
            return Err(match code.as_deref() {
                Some("NoSuchKey") | None => RemoteError::Conflict(detail),
                Some("NoSuchUpload") => RemoteError::unavailable(detail),
                _ => RemoteError::Permanent(detail),
            });
        }
        if !status.is_success() {
            return Err(failed("copy part", key, resp).await);
        }
        etag_of_body("copy part", key, &read_limited(resp).await)?.ok_or_else(|| {
            RemoteError::unavailable(format!("copy part {key:?}: answer without an ETag"))
        })
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
            let (code, detail) = not_found("complete upload", key, resp).await;
            // NoSuchUpload: completed by an attempt whose answer was lost, or expired. Sending
            // the file again settles either (a completed twin is then our own version).
            return Err(match code.as_deref() {
                Some("NoSuchUpload") => RemoteError::unavailable(detail),
                _ => RemoteError::Permanent(detail),
            });
        }
        if !status.is_success() {
            return Err(failed("complete upload", key, resp).await);
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
            let (code, detail) = not_found("delete", key, resp).await;
            if code.as_deref() == Some("NoSuchBucket") {
                return Err(RemoteError::Permanent(detail));
            }
            return Ok(());
        }
        Err(failed("delete", key, resp).await)
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

    /// Signs one request with object_store's `AwsAuthorizer` (SigV4, the payload unsigned:
    /// our bodies are empty or a small XML document, and S3 accepts `UNSIGNED-PAYLOAD`) and
    /// sends it; any HTTP status comes back as a response, only transport failures become
    /// errors here. Built as an `http::Request` for the signer, then handed to reqwest with
    /// the same URL and the headers the signer added, as the Azure requests do.
    #[allow(clippy::too_many_arguments)]
    async fn send_with_body(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
        op: &str,
        what: &str,
    ) -> RemoteResult<Response> {
        let inner = &*self.inner;
        let path = match key {
            Some(key) => key_path(&inner.base_path, key)?,
            None if inner.base_path.is_empty() => "/".to_string(),
            None => inner.base_path.clone(),
        };
        let mut url = format!("{}://{}{}", inner.scheme, inner.authority, path);
        let query = query_string(query);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        let credential = inner.credentials.get_credential().await.map_err(|e| {
            // A credential provider fails when STS or the instance metadata service does; a key
            // that is simply wrong is reported by S3 as 403 instead.
            RemoteError::unavailable(format!("{op} {what:?}: fetching S3 credentials: {e}"))
        })?;
        let mut request = http::Request::builder().method(method.clone()).uri(&url);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut request = request
            .body(HttpRequestBody::from(Vec::new()))
            .map_err(|e| RemoteError::Permanent(format!("{op} {what:?}: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &inner.region)
            .with_sign_payload(false)
            .try_authorize(&mut request, None)
            .map_err(map_err)?;
        tracing::trace!(%method, %url, "raw S3 request");
        let mut out = inner
            .client
            .request(method.clone(), url)
            .headers(request.headers().clone());
        if method == Method::PUT || method == Method::POST {
            // S3 refuses a PUT without Content-Length (411), so state even an empty body.
            out = out
                .header(CONTENT_LENGTH, body.len().to_string())
                .body(body);
        }
        out.send()
            .await
            .map_err(|e| transport_error(&format!("{op} {what:?}"), &e))
    }
}

/// A failed answer, classified by the one rule (`http::classify`).
/// A 404's S3 error code (`NoSuchKey`, `NoSuchBucket`, `NoSuchUpload`, ...) and the message
/// to report: the callers tell a missing bucket from a missing key or upload.
async fn not_found(op: &str, what: &str, resp: Response) -> (Option<String>, String) {
    let status = resp.status().as_u16();
    let body = read_limited(resp).await;
    let (code, message) = parse_error_body(&body);
    let detail = describe(
        &format!("{op} {what:?}"),
        status,
        code.as_deref(),
        message.as_deref(),
    );
    (code, detail)
}

async fn failed(op: &str, what: &str, resp: Response) -> RemoteError {
    xml_error(&format!("{op} {what:?}"), resp).await
}

fn header_str(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::aws::AwsCredential;

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
        let etag = raw.put_empty("x y/dir/", &meta).await.unwrap();
        assert_eq!(etag.as_deref(), Some("\"abc\""));
        let request = server.join().unwrap().remove(0).to_ascii_lowercase();
        assert!(
            request.starts_with("put /bkt/x%20y/dir/ http/1.1\r\n"),
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

    /// A differential upload's copied part names its range (inclusive, as HTTP ranges are)
    /// and is pinned to the base's ETag; a refused pin or a vanished base is a conflict, so
    /// the upload is abandoned instead of completing a mix of versions.
    #[tokio::test]
    async fn upload_part_copy_is_ranged_and_pinned_to_the_base() {
        let body = "<CopyPartResult><ETag>&quot;p1&quot;</ETag></CopyPartResult>";
        let ok: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (endpoint, server) = fake_server(vec![
            ok,
            "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 54\r\nConnection: close\r\n\r\n\
             <Error><Code>NoSuchKey</Code><Message>x</Message></Error>",
        ]);
        let raw = fake_client(endpoint, None);
        let etag = raw
            .upload_part_copy("d/big file", "up-1", 3, 16 << 20..24 << 20, "\"base\"")
            .await
            .unwrap();
        assert_eq!(etag, "\"p1\"");
        for _ in 0..2 {
            assert!(matches!(
                raw.upload_part_copy("d/big file", "up-1", 3, 0..1, "\"base\"")
                    .await,
                Err(RemoteError::Conflict(_))
            ));
        }
        let request = server.join().unwrap().remove(0).to_ascii_lowercase();
        for line in [
            "put /bkt/d/big%20file?partnumber=3&uploadid=up-1 http/1.1\r\n",
            "x-amz-copy-source: /bkt/d/big%20file\r\n",
            "x-amz-copy-source-range: bytes=16777216-25165823\r\n",
            "x-amz-copy-source-if-match: \"base\"\r\n",
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

    /// A listing goes on while the server says the page was truncated, each time with the
    /// token the previous page named, and keeps keys object_store's `Path` would refuse.
    #[tokio::test]
    async fn listing_follows_continuation_tokens() {
        let page = |body: &str| -> &'static str {
            Box::leak(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_boxed_str(),
            )
        };
        let (endpoint, server) = fake_server(vec![
            page(
                "<ListBucketResult><IsTruncated>true</IsTruncated>\
                 <Contents><Key>p//x</Key><Size>1</Size></Contents>\
                 <Contents><Key>p/0/</Key><Size>0</Size></Contents>\
                 <NextContinuationToken>t 1+/</NextContinuationToken></ListBucketResult>",
            ),
            page(
                "<ListBucketResult><IsTruncated>false</IsTruncated>\
                 <Contents><Key>p/./y</Key><Size>2</Size></Contents></ListBucketResult>",
            ),
        ]);
        let raw = fake_client(endpoint, None).with_max_keys(2);
        let keys: Vec<String> = raw
            .list("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["p//x", "p/0/", "p/./y"]);
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with(
                "GET /bkt?encoding-type=url&list-type=2&max-keys=2&prefix=p%2F HTTP/1.1\r\n"
            ),
            "{}",
            requests[0]
        );
        assert!(
            requests[1].starts_with(
                "GET /bkt?continuation-token=t%201%2B%2F&encoding-type=url&list-type=2&max-keys=2&prefix=p%2F HTTP/1.1\r\n"
            ),
            "{}",
            requests[1]
        );
    }
}
