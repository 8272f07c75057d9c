//! Shared vocabulary that every layer may use (the store records it, the remote carries it,
//! the CLI prints it).

/// One version of a file in a conflict, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionMark {
    /// SHA-256 of the content, hex.
    pub sha256: Option<String>,
    pub size: u64,
    pub mtime_ns: Option<i64>,
    pub etag: Option<String>,
    /// The mount (`host:mountpoint`) or client that wrote it, when known.
    pub writer: Option<String>,
}
