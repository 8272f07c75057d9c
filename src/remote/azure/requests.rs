//! Azure requests object_store cannot make, signed by object_store's `AzureAuthorizer`: List
//! Blobs (object_store's listing fails as a whole on one blob name its `Path` rejects, `a//b`,
//! which another tool can write, and it drops the metadata that marks folder blobs), and the
//! writes the server must decide: Put Block List, Copy Blob and Delete Blob with `If-Match` /
//! `If-None-Match` (object_store's multipart completion and copy take no condition).

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use object_store::azure::{AzureAuthorizer, AzureCredential, AzureCredentialProvider};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::remote::http::{classify, header, map_err};
use crate::remote::xml::walk_xml;
use crate::remote::{prefixed_meta, RemoteError, RemoteResult};

/// What stays unescaped in a blob name inside a URL (RFC 3986 unreserved characters).
const BLOB_NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// How long an asynchronous Copy Blob (`x-ms-copy-status: pending`) is waited for before the
/// job is retried. Within one storage account a copy is normally done when it is answered.
const COPY_WAIT: Duration = Duration::from_secs(120);

const API_VERSION: &str = "2021-08-06";

/// One blob of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBlob {
    pub name: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    /// Carries `hdi_isfolder=true`: a directory marker.
    pub folder: bool,
    /// Its user metadata (`include=metadata`), names as the service gives them: the listing
    /// carries what a HEAD would, so a first mount needs no request per blob.
    pub metadata: Vec<(String, String)>,
}

/// One block of a Put Block List.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRef {
    /// A block of the blob's committed version, by its name as Get Block List gave it.
    Committed(String),
    /// A block `put_part` uploaded, by the content id it answered.
    Uncommitted(String),
}

pub struct AzureRaw {
    client: reqwest::Client,
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER`, or the emulator's path-style URL.
    container_url: String,
    account: String,
    credentials: AzureCredentialProvider,
}

impl AzureRaw {
    pub fn new(
        client: reqwest::Client,
        container_url: String,
        account: String,
        credentials: AzureCredentialProvider,
    ) -> AzureRaw {
        AzureRaw {
            client,
            container_url,
            account,
            credentials,
        }
    }

    /// Every blob whose name starts with `prefix`, with its folder mark.
    pub async fn list(&self, prefix: &str) -> RemoteResult<Vec<RawBlob>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut url = format!(
                "{}?restype=container&comp=list&include=metadata&maxresults=5000&prefix={}",
                self.container_url,
                utf8_percent_encode(prefix, NON_ALPHANUMERIC)
            );
            if let Some(m) = &marker {
                url.push_str(&format!(
                    "&marker={}",
                    utf8_percent_encode(m, NON_ALPHANUMERIC)
                ));
            }
            let page = self.page(&url).await?;
            out.extend(page.blobs);
            match page.next_marker.filter(|m| !m.is_empty()) {
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    async fn page(&self, url: &str) -> RemoteResult<ListPage> {
        let answer = self
            .send(http::Method::GET, url, Vec::new(), Vec::new(), "listing")
            .await?;
        let status = answer.status().as_u16();
        let body = answer
            .text()
            .await
            .map_err(|e| RemoteError::unavailable(format!("listing {url}: {e}")))?;
        match status {
            200 => parse_list_page(&body).map_err(RemoteError::unavailable),
            404 => Err(RemoteError::Permanent(format!(
                "container not found ({})",
                self.container_url
            ))),
            code => Err(classify(
                code,
                None,
                format!("listing: status code: {code}: {body}"),
                None,
            )),
        }
    }
}

impl AzureRaw {
    /// The URL of blob `name` (the whole name, prefix included).
    fn blob_url(&self, name: &str) -> String {
        let escaped: Vec<String> = name
            .split('/')
            .map(|s| utf8_percent_encode(s, BLOB_NAME).to_string())
            .collect();
        format!("{}/{}", self.container_url, escaped.join("/"))
    }

    /// Signs one request with object_store's `AzureAuthorizer` (shared key, SAS token or
    /// bearer token alike) and sends it; any HTTP status comes back as a response.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        what: &str,
    ) -> RemoteResult<reqwest::Response> {
        let credential = self.credentials.get_credential().await.map_err(map_err)?;
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .header("x-ms-version", API_VERSION);
        if method != http::Method::GET && method != http::Method::HEAD {
            // Part of what a shared key signs: stated, so that what is sent is what was signed.
            builder = builder.header("Content-Length", body.len().to_string());
        }
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let mut req = builder
            .body(object_store::client::HttpRequestBody::from(body.clone()))
            .map_err(|e| RemoteError::Permanent(format!("{what} {url}: {e}")))?;
        AzureAuthorizer::new(&credential, &self.account)
            .try_authorize(&mut req)
            .map_err(map_err)?;
        let mut out = self
            .client
            .request(method, req.uri().to_string())
            .headers(req.headers().clone());
        if !body.is_empty() {
            out = out.body(body);
        }
        out.send()
            .await
            .map_err(|e| RemoteError::unavailable(format!("{what} {url}: {e}")))
    }

    /// Put Block List: makes the blocks object_store's `put_part` uploaded (their content ids,
    /// in order) the content of blob `name`, with `meta` as its metadata, only if the blob
    /// satisfies `conditions` (`If-None-Match: *` or `If-Match`), which the server decides.
    /// Returns the new ETag.
    pub async fn put_block_list(
        &self,
        name: &str,
        blocks: &[String],
        meta: &[(String, String)],
        conditions: &[(&'static str, String)],
    ) -> RemoteResult<Option<String>> {
        let blocks: Vec<BlockRef> = blocks.iter().cloned().map(BlockRef::Uncommitted).collect();
        self.put_block_list_of(name, &blocks, meta, conditions)
            .await
    }

    /// Get Block List of blob `name`'s committed blocks: the blob's ETag and its blocks in
    /// order, each as (name as the service spells it, base64; size). `None` when the blob is
    /// missing. A differential upload reuses the blocks of unchanged ranges, and its Put Block
    /// List is conditioned on that ETag, so blocks of another version are never committed.
    pub async fn get_block_list(
        &self,
        name: &str,
    ) -> RemoteResult<Option<(Option<String>, Vec<(String, u64)>)>> {
        let url = format!(
            "{}?comp=blocklist&blocklisttype=committed",
            self.blob_url(name)
        );
        let r = self
            .send(
                http::Method::GET,
                &url,
                Vec::new(),
                Vec::new(),
                "get block list",
            )
            .await?;
        match r.status().as_u16() {
            200..=299 => {}
            404 => return Ok(None),
            _ => return Err(write_error("get block list", name, r).await),
        }
        let etag = header(&r, "etag");
        let body = r
            .text()
            .await
            .map_err(|e| RemoteError::unavailable(format!("get block list {name}: {e}")))?;
        let mut blocks: Vec<(String, u64)> = Vec::new();
        let mut current: (Option<String>, Option<u64>) = (None, None);
        walk_xml(&body, |path, text| {
            let in_committed = path.iter().any(|p| p == "CommittedBlocks");
            match path.last().map(String::as_str) {
                Some("Name") if in_committed => current.0 = Some(text),
                Some("Size") if in_committed => current.1 = text.trim().parse().ok(),
                Some("Block") if in_committed => {
                    let (Some(n), Some(size)) = (current.0.take(), current.1.take()) else {
                        return Err("a block without a name or size".into());
                    };
                    blocks.push((n, size));
                }
                _ => {}
            }
            Ok(())
        })
        .map_err(|e| RemoteError::unavailable(format!("get block list {name}: {e}")))?;
        Ok(Some((etag, blocks)))
    }

    /// Put Block List of `blocks`, each either already committed in the blob (reused from
    /// its current version) or uploaded by `put_part` and not yet committed.
    pub async fn put_block_list_of(
        &self,
        name: &str,
        blocks: &[BlockRef],
        meta: &[(String, String)],
        conditions: &[(&'static str, String)],
    ) -> RemoteResult<Option<String>> {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for b in blocks {
            match b {
                BlockRef::Committed(id) => xml.push_str(&format!(
                    "<Committed>{}</Committed>",
                    quick_xml::escape::escape(id.as_str())
                )),
                BlockRef::Uncommitted(id) => {
                    let id = base64::engine::general_purpose::STANDARD.encode(id);
                    xml.push_str(&format!("<Uncommitted>{id}</Uncommitted>"));
                }
            }
        }
        xml.push_str("</BlockList>");
        let mut headers = prefixed_meta("x-ms-meta-", meta);
        headers.extend(conditions.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let url = format!("{}?comp=blocklist", self.blob_url(name));
        let r = self
            .send(
                http::Method::PUT,
                &url,
                headers,
                xml.into_bytes(),
                "put block list",
            )
            .await?;
        match r.status().as_u16() {
            200..=299 => Ok(header(&r, "etag")),
            _ => Err(write_error("put block list", name, r).await),
        }
    }

    /// Copy Blob of `from` to `to` (metadata included), decided by the server: only while
    /// `from` has ETag `source_if_match` (`x-ms-source-if-match`) and `to` satisfies
    /// `conditions`. A failed condition answers `Conflict`, a missing source `NotFound`.
    /// Waits for a copy the service finishes asynchronously. Returns the new ETag.
    pub async fn copy_blob(
        &self,
        from: &str,
        to: &str,
        source_if_match: Option<&str>,
        conditions: &[(&'static str, String)],
    ) -> RemoteResult<Option<String>> {
        let mut source = url::Url::parse(&self.blob_url(from))
            .map_err(|e| RemoteError::Permanent(format!("copy source {from}: {e}")))?;
        let credential = self.credentials.get_credential().await.map_err(map_err)?;
        if let AzureCredential::SASToken(pairs) = &*credential {
            // A SAS token authorizes the source only inside its URL (as object_store does).
            source.query_pairs_mut().extend_pairs(pairs);
        }
        let mut headers = vec![("x-ms-copy-source".to_string(), source.to_string())];
        if let Some(etag) = source_if_match {
            headers.push(("x-ms-source-if-match".into(), etag.to_string()));
        }
        headers.extend(conditions.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let url = self.blob_url(to);
        let r = self
            .send(http::Method::PUT, &url, headers, Vec::new(), "copy")
            .await?;
        match r.status().as_u16() {
            200..=299 => {}
            404 => return Err(RemoteError::NotFound(format!("copy source {from}"))),
            _ => return Err(write_error("copy", to, r).await),
        }
        let mut status = header(&r, "x-ms-copy-status");
        let mut etag = header(&r, "etag");
        let started = std::time::Instant::now();
        while status.as_deref() == Some("pending") {
            if started.elapsed() > COPY_WAIT {
                return Err(RemoteError::unavailable(format!(
                    "copy {from} -> {to}: still pending after {COPY_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let h = self
                .send(
                    http::Method::HEAD,
                    &url,
                    Vec::new(),
                    Vec::new(),
                    "copy status",
                )
                .await?;
            if !h.status().is_success() {
                return Err(write_error("copy status", to, h).await);
            }
            status = header(&h, "x-ms-copy-status");
            etag = header(&h, "etag");
        }
        match status.as_deref() {
            None | Some("success") => Ok(etag),
            Some(other) => Err(RemoteError::unavailable(format!(
                "copy {from} -> {to}: {other}"
            ))),
        }
    }

    /// Delete Blob, only while it has ETag `if_match` when given (the server decides; another
    /// version answers `Conflict`). A missing blob is success.
    pub async fn delete_blob(&self, name: &str, if_match: Option<&str>) -> RemoteResult<()> {
        let headers = if_match
            .map(|e| vec![("If-Match".to_string(), e.to_string())])
            .unwrap_or_default();
        let r = self
            .send(
                http::Method::DELETE,
                &self.blob_url(name),
                headers,
                Vec::new(),
                "delete",
            )
            .await?;
        match r.status().as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(write_error("delete", name, r).await),
        }
    }
}

/// A refused write, by the one rule (`http::classify`): 412 (`ConditionNotMet`, a failed
/// `If-Match`) and 409 `BlobAlreadyExists` (a failed `If-None-Match: *`) are a `Conflict`.
async fn write_error(op: &str, name: &str, r: reqwest::Response) -> RemoteError {
    let code = r.status().as_u16();
    let retry = crate::remote::http::retry_after(r.headers(), Utc::now());
    let error_code = header(&r, "x-ms-error-code");
    let body = r.text().await.unwrap_or_default();
    let error_code = error_code.or_else(|| crate::remote::xml::parse_error_body(&body).0);
    let msg = format!("{op} {name}: status code: {code}: {body}");
    classify(code, error_code.as_deref(), msg, retry)
}

#[derive(Debug, Default)]
struct ListPage {
    blobs: Vec<RawBlob>,
    next_marker: Option<String>,
}

fn parse_list_page(xml: &str) -> Result<ListPage, String> {
    let mut page = ListPage::default();
    let mut current = RawBlob::default();
    walk_xml(xml, |path, text| {
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        match names.as_slice() {
            [_, "Blobs", "Blob"] => {
                let blob = std::mem::take(&mut current);
                if blob.name.is_empty() {
                    return Err("Blob without a Name".to_string());
                }
                page.blobs.push(blob);
            }
            [_, "Blobs", "Blob", "Name"] => current.name = text,
            [_, "Blobs", "Blob", "Properties", field] => match *field {
                "Content-Length" => {
                    current.size = text
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad Content-Length {text:?}"))?
                }
                "Etag" => current.etag = Some(text),
                "Last-Modified" => {
                    current.last_modified = DateTime::parse_from_rfc2822(text.trim())
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                }
                _ => {}
            },
            [_, "Blobs", "Blob", "Metadata", key] => {
                if key.eq_ignore_ascii_case("hdi_isfolder") {
                    current.folder = text.trim().eq_ignore_ascii_case("true")
                }
                current.metadata.push((key.to_string(), text));
            }
            [_, "NextMarker"] => page.next_marker = Some(text),
            _ => {}
        }
        Ok(())
    })?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_page_with_folders_odd_names_and_a_marker() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="box">
  <Prefix>data/</Prefix>
  <Blobs>
    <Blob><Name>data/a//b</Name><Properties><Last-Modified>Wed, 25 Nov 2026 10:52:45 GMT</Last-Modified><Etag>0x8DE1</Etag><Content-Length>3</Content-Length></Properties><Metadata/></Blob>
    <Blob><Name>data/dir</Name><Properties><Etag>0x8DE2</Etag><Content-Length>0</Content-Length></Properties><Metadata><hdi_isfolder>true</hdi_isfolder><stratus_mode>755</stratus_mode></Metadata></Blob>
    <Blob><Name>data/x &amp; y</Name><Properties><Etag>0x8DE3</Etag><Content-Length>12</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>2!data/z</NextMarker>
</EnumerationResults>"#;
        let page = parse_list_page(xml).unwrap();
        assert_eq!(page.blobs.len(), 3);
        assert_eq!(page.blobs[0].name, "data/a//b");
        assert_eq!(page.blobs[0].size, 3);
        assert_eq!(page.blobs[0].etag.as_deref(), Some("0x8DE1"));
        assert!(page.blobs[0].last_modified.is_some());
        assert!(!page.blobs[0].folder);
        assert_eq!(page.blobs[1].name, "data/dir");
        assert!(page.blobs[1].folder);
        assert_eq!(page.blobs[2].name, "data/x & y");
        assert_eq!(page.next_marker.as_deref(), Some("2!data/z"));
    }

    #[test]
    fn the_last_page_has_an_empty_marker() {
        let xml = "<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>";
        let page = parse_list_page(xml).unwrap();
        assert!(page.blobs.is_empty());
        assert_eq!(page.next_marker.as_deref(), Some(""));
    }
}
