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
