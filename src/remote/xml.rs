//! Reading the XML that S3, GCS's XML API and Azure answer with: a small event walker, the
//! ListObjectsV2 page (S3's, and GCS's answer to `list-type=2`) and the `<Error>` body.

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use quick_xml::events::Event;

/// One entry of a listing, with the key exactly as stored (it may not be a valid object_store
/// `Path`).
#[derive(Debug, Clone)]
pub struct RawObject {
    pub key: String,
    pub size: u64,
    /// As the server sent it, quotes included, so it compares equal to object_store's `e_tag`.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// Collects the text content of each element, resolving entity and character references, and
/// calls `on_end` with the path of element names (root first) when an element closes.
pub fn walk_xml(
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
pub struct ListPage {
    pub objects: Vec<RawObject>,
    pub truncated: bool,
    pub next_token: Option<String>,
}

pub fn parse_list_page(xml: &str) -> Result<ListPage, String> {
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
pub fn parse_error_body(body: &str) -> (Option<String>, Option<String>) {
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
#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test date")
            .with_timezone(&Utc)
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
}
