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

/// The id of an entry, which is also its inode number. Stable across remounts of one state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

impl EntryId {
    pub const ROOT: EntryId = EntryId(1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// What the kernel must forget because something other than a FUSE request changed the tree
/// (the poller, a conflict settled through an attribute). Sent over a channel to the FUSE
/// session, which neither the sync engine nor the core knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A name in a directory appeared, vanished or now means another entry.
    Entry { parent: EntryId, name: Vec<u8> },
    /// An entry's attributes and data changed.
    Inode(EntryId),
}
