//! The one rule that turns an HTTP failure into a `RemoteError`, for object_store's errors and
//! for our own raw requests alike.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::error::RemoteError;

/// Error bodies are read only for their code and message; a misbehaving proxy answering with a
/// large page must not be buffered whole.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The rule, given the status, the service's error code when it named one (S3's and GCS's
/// `<Code>`, Azure's `x-ms-error-code`), the message to keep and the server's Retry-After:
///
/// - 412, and 409 with `ConditionalRequestConflict` (S3: another conditional write to the key
///   was in flight) or `BlobAlreadyExists` (Azure's answer to `If-None-Match: *`): `Conflict`,
///   the condition the write carried did not hold.
/// - 408, 429, every 5xx, and S3's `RequestTimeout` / `SlowDown` codes (which some servers send
///   with a 400 or 503): `Unavailable`, waiting heals them.
/// - Everything else, 3xx included: `Permanent`. A redirect reaches us only when the client did
///   not follow it, and S3 sends one (301 `PermanentRedirect`) when the bucket lives in another
///   region than the one configured: retrying the same request can never succeed, so the job is
///   parked with the server's message (which names the bucket's region) instead of holding the
///   whole queue in backoff. Before this rule, object_store's errors took a 3xx as transient
///   and the raw S3 requests as permanent.
pub fn classify(
    status: u16,
    code: Option<&str>,
    message: String,
    retry_after: Option<Duration>,
) -> RemoteError {
    let conflict_code = matches!(
        code,
        Some("ConditionalRequestConflict" | "BlobAlreadyExists")
    );
    let transient_code = matches!(code, Some("RequestTimeout" | "SlowDown"));
    match status {
        412 => RemoteError::Conflict(message),
        409 if conflict_code => RemoteError::Conflict(message),
        408 | 429 | 500..=599 => RemoteError::Unavailable {
            message,
            retry_after,
        },
        _ if transient_code => RemoteError::Unavailable {
            message,
            retry_after,
        },
        _ => RemoteError::Permanent(message),
    }
}

/// Maps object_store's errors onto the same decisions. object_store folds most HTTP failures
/// into `Generic`, whose text still carries the status code; text without one is a transport
/// failure (refused, reset, timed out), which heals by waiting.
pub fn map_err(e: object_store::Error) -> RemoteError {
    use object_store::Error as E;
    match e {
        E::NotFound { path, .. } => RemoteError::NotFound(path),
        E::Precondition { path, .. } | E::AlreadyExists { path, .. } => RemoteError::Conflict(path),
        E::PermissionDenied { path, source } | E::Unauthenticated { path, source } => {
            RemoteError::Permanent(format!("access denied to {path}: {source}"))
        }
        E::InvalidPath { source } => RemoteError::Permanent(format!("invalid key: {source}")),
        e @ (E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }) => RemoteError::Permanent(e.to_string()),
        other => classify_message(other.to_string()),
    }
}

/// An error text that may name a status (`status code: NNN`); none means the request never got
/// an answer.
pub fn classify_message(msg: String) -> RemoteError {
    match status_in(&msg) {
        Some(code) => classify(code, None, msg, None),
        None => RemoteError::unavailable(msg),
    }
}

/// The HTTP status object_store's error text names, if any.
pub fn status_in(msg: &str) -> Option<u16> {
    msg.find("status code: ").and_then(|i| {
        msg[i + 13..]
            .chars()
            .take(3)
            .collect::<String>()
            .parse()
            .ok()
    })
}

/// A request that got no answer. Everything below HTTP (refused, reset, timed out, DNS) can
/// heal by itself; only a request that could not even be built is our fault.
pub fn transport_error(what: &str, err: &reqwest::Error) -> RemoteError {
    let mut message = format!("{what}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if err.is_builder() {
        RemoteError::Permanent(message)
    } else {
        RemoteError::unavailable(message)
    }
}

/// A response header as text.
pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Retry-After is either delta-seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The body of an answer, at most `MAX_ERROR_BODY` bytes of it. Best effort: an unreadable
/// body still leaves the status to report.
pub async fn read_limited(mut resp: reqwest::Response) -> String {
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

/// A failed answer of an XML service (S3, GCS's XML API): its `<Code>`, `<Message>` and
/// Retry-After go through `classify`. `what` names the request in the message.
pub async fn xml_error(what: &str, resp: reqwest::Response) -> RemoteError {
    let status = resp.status();
    let retry = retry_after(resp.headers(), Utc::now());
    let region = header(&resp, "x-amz-bucket-region");
    let body = read_limited(resp).await;
    let (code, message) = super::xml::parse_error_body(&body);
    let mut detail = describe(what, status.as_u16(), code.as_deref(), message.as_deref());
    if let Some(region) = region {
        // S3 names the bucket's real region when the configured one is wrong.
        detail.push_str(&format!(" (bucket region: {region})"));
    }
    classify(status.as_u16(), code.as_deref(), detail, retry)
}

/// `what: status code: NNN CODE: message`, the form `status_in` reads back.
pub fn describe(what: &str, status: u16, code: Option<&str>, message: Option<&str>) -> String {
    let mut out = format!("{what}: status code: {status}");
    if let Some(code) = code {
        out.push_str(&format!(" {code}"));
    }
    if let Some(message) = message {
        out.push_str(&format!(": {message}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_retry() {
        let p = classify_message("Server returned non-2xx status code: 400 Bad Request: x".into());
        assert!(matches!(p, RemoteError::Permanent(_)));
        let t =
            classify_message("Server returned non-2xx status code: 503 Service Unavailable".into());
        assert!(t.is_transient());
        let t =
            classify_message("Server returned non-2xx status code: 429 Too Many Requests".into());
        assert!(t.is_transient());
        let t = classify_message("error sending request: connection refused".into());
        assert!(t.is_transient());
    }

    /// One rule for both paths: object_store's text and a raw answer with the same status end
    /// the same way. A redirect is permanent on both (see `classify`).
    #[test]
    fn one_rule_for_object_store_and_raw_answers() {
        for (status, permanent) in [(301, true), (307, true), (403, true), (404, true)] {
            let from_text = classify_message(format!("x: status code: {status} y"));
            let raw = classify(status, None, "x".into(), None);
            assert_eq!(
                matches!(from_text, RemoteError::Permanent(_)),
                permanent,
                "{status}"
            );
            assert_eq!(
                matches!(raw, RemoteError::Permanent(_)),
                permanent,
                "{status}"
            );
        }
        for status in [408, 429, 500, 503] {
            assert!(classify_message(format!("status code: {status}")).is_transient());
            assert!(classify(status, None, String::new(), None).is_transient());
        }
        assert!(matches!(
            classify(412, None, String::new(), None),
            RemoteError::Conflict(_)
        ));
        assert!(matches!(
            classify(409, Some("BlobAlreadyExists"), String::new(), None),
            RemoteError::Conflict(_)
        ));
        assert!(matches!(
            classify(409, Some("BucketNotEmpty"), String::new(), None),
            RemoteError::Permanent(_)
        ));
        assert!(classify(400, Some("RequestTimeout"), String::new(), None).is_transient());
        match classify(503, None, String::new(), Some(Duration::from_secs(3))) {
            RemoteError::Unavailable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_forms() {
        use reqwest::header::{HeaderMap, RETRY_AFTER};
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Mon, 01 Jan 2024 00:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            RETRY_AFTER,
            "Sun, 31 Dec 2023 00:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
    }
}
