//! The small error vocabulary that every backend maps its failures onto.

use std::time::Duration;

/// What went wrong talking to the remote, reduced to what the uploader must decide on:
/// retry later (`Unavailable`), give up on this entry (`Permanent`), or react to state.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("not found: {0}")]
    NotFound(String),
    /// A conditional write lost: the object changed (or appeared) since we last saw it.
    #[error("precondition failed: {0}")]
    Conflict(String),
    /// Connection refused or reset, timeouts, 5xx, throttling: try again later.
    #[error("remote unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The server refused for good (403, an invalid key, a bad request): park the entry.
    #[error("remote refused: {0}")]
    Permanent(String),
    #[error("local i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl RemoteError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        RemoteError::Unavailable {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Unavailable { .. })
    }
}

pub type RemoteResult<T> = Result<T, RemoteError>;

impl RemoteError {
    /// The error in one short line for a person (`stratus mount` failing, `stratus status`):
    /// see [`brief_text`].
    pub fn brief(&self) -> String {
        brief_text(&self.to_string())
    }
}

/// Longest text [`brief_text`] keeps.
const BRIEF_MAX: usize = 200;

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(s[start..end].trim())
}

/// An error message from object_store or a raw request, shortened for a person: the
/// server's own code and message where its answer carried them (S3, Azure and GCS answer
/// errors in XML), the host that could not be reached for a failed connection; never the
/// request URL with its query, nor a page of XML. What comes before the detail (`remote
/// refused: s3: bucket or container not found (`) is kept.
pub fn brief_text(msg: &str) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    // The part a backend or stratus wrote, before object_store's own words.
    let head_end = ["Generic ", "Error performing", "HTTP error"]
        .iter()
        .filter_map(|m| msg.find(m))
        .min()
        .unwrap_or(msg.len());
    let head = msg[..head_end].trim_end();
    let detail = &msg[head_end..];
    let short = if let Some(code) = between(detail, "<Code>", "</Code>") {
        let text = between(detail, "<Message>", "</Message>")
            .map(|m| one_line(m.split("RequestId:").next().unwrap_or(m)))
            .unwrap_or_default();
        let status = detail
            .find("status code: ")
            .map(|i| &detail[i + "status code: ".len()..])
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_digit()));
        match status {
            Some(st) => format!("{code}: {}, HTTP {st}", text.trim()),
            None => format!("{code}: {}", text.trim()),
        }
    } else if detail.contains("error sending request") || detail.contains("error trying to connect")
    {
        let host = detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://").or(w.strip_prefix("https://")))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .unwrap_or_else(|| "the server".into());
        format!("could not connect to {host} (no such host, or nothing listening)")
    } else if let Some(status) = detail.find("status code: ") {
        one_line(
            detail[status + "status code: ".len()..]
                .split(':')
                .next()
                .unwrap_or(""),
        )
    } else {
        one_line(detail)
    };
    let mut out = match (head.is_empty(), short.is_empty()) {
        (true, _) => short,
        (false, true) => head.trim_end_matches(['(', ' ', ':']).to_string(),
        (false, false) if head.ends_with('(') => format!("{head}{short})"),
        (false, false) => format!("{} ({short})", head.trim_end_matches([':', ' '])),
    };
    if out.chars().count() > BRIEF_MAX {
        out = out.chars().take(BRIEF_MAX - 3).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::brief_text;

    #[test]
    fn server_xml_becomes_its_code_and_message() {
        let m = "remote refused: s3: bucket or container not found (Generic S3 error: Error \
                 performing list request: Error performing GET http://127.0.0.1:44151/b?list-type=2 \
                 in 98ms - Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?> \
                 <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not \
                 exist</Message><RequestId>0vjg</RequestId></Error>)";
        assert_eq!(
            brief_text(m),
            "remote refused: s3: bucket or container not found (NoSuchBucket: The specified \
             bucket does not exist, HTTP 404)"
        );
        let az = "azure: bucket or container not found (Generic MicrosoftAzure error: x <Error> \
                  <Code>ContainerNotFound</Code> <Message>The specified container does not \
                  exist. RequestId:94586ab3 Time:2026</Message> </Error>)";
        assert_eq!(
            brief_text(az),
            "azure: bucket or container not found (ContainerNotFound: The specified container \
             does not exist.)"
        );
    }

    #[test]
    fn a_failed_connection_names_the_host() {
        let m = "remote unavailable: Generic S3 error: Error performing list request: Error \
                 performing GET http://no-such-host.invalid:9000/b?delimiter=%2F in 235ms, after 2 \
                 retries - HTTP error: error sending request";
        assert_eq!(
            brief_text(m),
            "remote unavailable (could not connect to no-such-host.invalid:9000 (no such host, \
             or nothing listening))"
        );
    }

    #[test]
    fn plain_messages_are_kept() {
        assert_eq!(brief_text("not found: a/b"), "not found: a/b");
        assert!(brief_text(&"x".repeat(500)).len() <= 200);
    }
}
