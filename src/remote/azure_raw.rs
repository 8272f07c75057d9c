//! Azure's List Blobs as a request of our own, signed by object_store's `AzureAuthorizer`.
//! object_store's listing fails as a whole on one blob name its `Path` rejects (`a//b`, which
//! another tool can write), and it drops the metadata that marks folder blobs.

use chrono::{DateTime, Utc};
use object_store::azure::{AzureAuthorizer, AzureCredentialProvider};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::s3_raw::walk_xml;
use super::{RemoteError, RemoteResult};

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
}

pub struct AzureList {
    client: reqwest::Client,
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER`, or the emulator's path-style URL.
    container_url: String,
    account: String,
    credentials: AzureCredentialProvider,
}

impl AzureList {
    pub fn new(
        client: reqwest::Client,
        container_url: String,
        account: String,
        credentials: AzureCredentialProvider,
    ) -> AzureList {
        AzureList {
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
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(super::object::map_err)?;
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .header("x-ms-version", API_VERSION)
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| RemoteError::Permanent(format!("listing URL {url}: {e}")))?;
        AzureAuthorizer::new(&credential, &self.account)
            .try_authorize(&mut req)
            .map_err(super::object::map_err)?;
        let answer = self
            .client
            .get(req.uri().to_string())
            .headers(req.headers().clone())
            .send()
            .await
            .map_err(|e| RemoteError::unavailable(format!("listing {url}: {e}")))?;
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
            code => Err(super::object::classify_status(
                code,
                format!("listing: status code: {code}: {body}"),
            )),
        }
    }
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
            [_, "Blobs", "Blob", "Metadata", key] if key.eq_ignore_ascii_case("hdi_isfolder") => {
                current.folder = text.trim().eq_ignore_ascii_case("true")
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
