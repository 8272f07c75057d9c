//! How S3 requests are written and their answers read: keys and queries in SigV4's encoding
//! (what object_store's `AwsAuthorizer` signs is the path and query as sent), metadata
//! headers, the CompleteMultipartUpload body, and the ETag of a copy's or completion's answer.

use std::collections::BTreeMap;

use crate::remote::error::{RemoteError, RemoteResult};
use crate::remote::xml::{parse_error_body, walk_xml};

pub const META_PREFIX: &str = "x-amz-meta-";

/// The ETag in the XML answer of a copy or a multipart completion. Both can fail after their
/// 200 has been sent: the error is then in the body, and the request is retried later.
pub fn etag_of_body(op: &str, key: &str, body: &str) -> RemoteResult<Option<String>> {
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

/// The body of CompleteMultipartUpload. A part id is the part's ETag, or (when object_store
/// computed checksums) its `PartMetadata` record: the ETag with the part's checksum.
pub fn complete_body(parts: &[String]) -> RemoteResult<String> {
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
pub fn meta_headers(
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
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
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

/// The request path of `key`: SigV4's encoding of it (`/` kept, `//` left alone), which is also
/// the canonical URI object_store's `AwsAuthorizer` signs, since for S3 it signs the path as
/// sent. A key with a `.` or `..` segment is refused: the URL type both the signer and reqwest
/// parse through resolves such segments away, which would address (and sign) another key. No
/// key the mount writes has one (`check_key`); the listing still shows them to be skipped.
pub fn key_path(base_path: &str, key: &str) -> RemoteResult<String> {
    if key.is_empty() || key.split('/').any(|s| s == "." || s == "..") {
        return Err(RemoteError::Permanent(format!(
            "key {key:?} cannot be addressed in a request path"
        )));
    }
    Ok(format!("{base_path}/{}", uri_encode(key, true)))
}

/// The query, sorted and strictly percent-encoded (a space as `%20`, `+` as `%2B`): the form
/// the signer's canonical query takes it back to, so the server computes the same string.
pub fn query_string(params: &[(&str, &str)]) -> String {
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
pub fn encode_meta_value(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(key_path("/b", key).unwrap(), path);
            // The URL type the signer and reqwest parse through must leave the path alone:
            // what is signed is what is sent.
            let url = reqwest::Url::parse(&format!("http://h{path}")).unwrap();
            assert_eq!(url.path(), path, "{key}");
        }
    }

    /// `x/./y` would reach the server as `x/y`: another key, signed as such.
    #[test]
    fn dot_segments_are_refused() {
        for key in ["x/./y", "../x", "x/..", "./", ".", "..", ""] {
            assert!(
                matches!(key_path("/b", key), Err(RemoteError::Permanent(_))),
                "{key}"
            );
        }
    }

    #[test]
    fn query_is_sorted_and_encoded() {
        assert_eq!(
            query_string(&[
                ("prefix", "a b/c"),
                ("list-type", "2"),
                ("continuation-token", "1+x/=="),
                ("encoding-type", "url"),
            ]),
            "continuation-token=1%2Bx%2F%3D%3D&encoding-type=url&list-type=2&prefix=a%20b%2Fc"
        );
        assert_eq!(query_string(&[]), "");
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
}
