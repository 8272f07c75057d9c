//! Plain requests to the test servers for what object_store's own clients cannot show or
//! write (keys like `a//b`, `dir/` markers, Azure's folder metadata in a listing), signed by
//! object_store's `AwsAuthorizer` / `AzureAuthorizer`. Never stratus's own request code: these
//! read back what stratus wrote.

use std::collections::BTreeMap;

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::azure::{AzureAuthorizer, AzureCredential};
use object_store::client::HttpRequestBody;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986's unreserved characters is escaped in a query value or a segment.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One object of an S3 listing: its key and the user metadata a HEAD of it shows.
pub struct S3Object {
    pub key: String,
    pub meta: BTreeMap<String, String>,
}

/// An S3 bucket on a test server, with moto's test credentials.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
}

impl S3 {
    /// A key as a request path: SigV4's segment encoding, and a `/` next to a `.` or `..`
    /// segment sent as `%2F`, because the URL type resolves such segments away (the server
    /// decodes the path back to the literal key).
    fn path(&self, key: &str) -> String {
        let dot = |s: &str| s == "." || s == "..";
        let segments: Vec<&str> = key.split('/').collect();
        let mut out = String::new();
        for (i, s) in segments.iter().enumerate() {
            if i > 0 {
                let sep = if dot(segments[i - 1]) || dot(s) {
                    "%2F"
                } else {
                    "/"
                };
                out.push_str(sep);
            }
            out.push_str(&utf8_percent_encode(s, STRICT).to_string());
        }
        format!("/{}/{out}", self.bucket)
    }

    async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let url = format!("{}{path_and_query}", self.endpoint);
        let credential = AwsCredential {
            key_id: "test".into(),
            secret_key: "test".into(),
            token: None,
        };
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(HttpRequestBody::from(Vec::new()))
            .unwrap();
        AwsAuthorizer::new(&credential, "s3", "us-east-1")
            .with_sign_payload(false)
            .try_authorize(&mut req, None)
            .unwrap();
        reqwest::Client::new()
            .request(method, url)
            .headers(req.headers().clone())
            .header("content-length", body.len().to_string())
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// ListObjectsV2 of everything under `prefix`, with each object's metadata (a HEAD each).
    pub async fn list(&self, prefix: &str) -> Vec<S3Object> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![
                ("encoding-type", "url".to_string()),
                ("list-type", "2".to_string()),
                ("prefix", prefix.to_string()),
            ];
            if let Some(t) = &token {
                q.push(("continuation-token", t.clone()));
            }
            let query: Vec<String> = q
                .iter()
                .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, STRICT)))
                .collect();
            let r = self
                .send(
                    http::Method::GET,
                    &format!("/{}?{}", self.bucket, query.join("&")),
                    Vec::new(),
                )
                .await;
            assert!(r.status().is_success(), "listing: {}", r.status());
            let body = r.text().await.unwrap();
            for k in elements(&body, "Key") {
                // encoding-type=url: form-style, a space as `+`.
                let k = percent_decode_str(&k.replace('+', " "))
                    .decode_utf8()
                    .unwrap()
                    .into_owned();
                keys.push(k);
            }
            let truncated =
                elements(&body, "IsTruncated").first().map(String::as_str) == Some("true");
            token = elements(&body, "NextContinuationToken").into_iter().next();
            if !truncated || token.is_none() {
                break;
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let meta = self.head(&key).await.unwrap_or_default();
            out.push(S3Object { key, meta });
        }
        out
    }

    /// The user metadata of `key` (`x-amz-meta-*`, prefix stripped); `None` when absent.
    pub async fn head(&self, key: &str) -> Option<BTreeMap<String, String>> {
        let r = self
            .send(http::Method::HEAD, &self.path(key), Vec::new())
            .await;
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "HEAD {key}: {}", r.status());
        Some(
            r.headers()
                .iter()
                .filter_map(|(k, v)| {
                    let k = k.as_str().strip_prefix("x-amz-meta-")?;
                    Some((k.to_string(), v.to_str().ok()?.to_string()))
                })
                .collect(),
        )
    }

    /// A PUT of any key, also ones object_store cannot address (`a//b`, `x/./y`, `dir/`).
    pub async fn put(&self, key: &str, body: &[u8]) {
        let r = self
            .send(http::Method::PUT, &self.path(key), body.to_vec())
            .await;
        assert!(r.status().is_success(), "PUT {key}: {}", r.status());
    }
}

/// One blob of an Azure listing: its name and whether it is a folder blob (`hdi_isfolder`).
pub struct Blob {
    pub name: String,
    pub folder: bool,
}

/// List Blobs with metadata of the container at `container_url`, signed by object_store's
/// `AzureAuthorizer` with the account key: object_store's own listing fails whole on a name
/// its `Path` rejects and drops the metadata that marks folders.
pub async fn azure_list(container_url: &str, account: &str, key: &str, prefix: &str) -> Vec<Blob> {
    let credential =
        AzureCredential::AccessKey(object_store::azure::AzureAccessKey::try_new(key).unwrap());
    let mut out = Vec::new();
    let mut marker = String::new();
    loop {
        let mut url = format!(
            "{container_url}?restype=container&comp=list&include=metadata&prefix={}",
            utf8_percent_encode(prefix, STRICT)
        );
        if !marker.is_empty() {
            url.push_str(&format!("&marker={}", utf8_percent_encode(&marker, STRICT)));
        }
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(&url)
            .header("x-ms-version", "2021-08-06")
            .body(HttpRequestBody::from(Vec::new()))
            .unwrap();
        AzureAuthorizer::new(&credential, account)
            .try_authorize(&mut req)
            .unwrap();
        let r = reqwest::Client::new()
            .get(&url)
            .headers(req.headers().clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "listing: {}", r.status());
        let body = r.text().await.unwrap();
        for blob in body.split("<Blob>").skip(1) {
            let name = elements(blob, "Name").into_iter().next().unwrap();
            let folder = elements(blob, "hdi_isfolder").first().map(String::as_str) == Some("true");
            out.push(Blob { name, folder });
        }
        marker = elements(&body, "NextMarker")
            .into_iter()
            .next()
            .unwrap_or_default();
        if marker.is_empty() {
            return out;
        }
    }
}

/// The unescaped text of every `<name>` element in `xml` (flat: good enough for listings).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| text))
        .map(|text| quick_xml::escape::unescape(text).unwrap().into_owned())
        .collect()
}
