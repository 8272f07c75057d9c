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
    /// A fifo, socket or device node: a name with attributes and no data. The kernel serves
    /// its traffic (a fifo's pipe, a socket's connections, a device's driver) itself.
    Special(Special),
}

/// The kind of a special file; a device carries its number (`dev_t`, as `makedev` builds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Socket,
    CharDev(u64),
    BlockDev(u64),
}

impl Special {
    /// The name it travels under in remote metadata (`stratus_type`).
    pub fn name(self) -> &'static str {
        match self {
            Special::Fifo => "fifo",
            Special::Socket => "socket",
            Special::CharDev(_) => "chr",
            Special::BlockDev(_) => "blk",
        }
    }

    /// From the metadata's type name and device number (`None` for a name we do not know).
    pub fn parse(name: &str, rdev: u64) -> Option<Special> {
        match name {
            "fifo" => Some(Special::Fifo),
            "socket" => Some(Special::Socket),
            "chr" => Some(Special::CharDev(rdev)),
            "blk" => Some(Special::BlockDev(rdev)),
            _ => None,
        }
    }

    /// The device number, 0 for a fifo or socket.
    pub fn rdev(self) -> u64 {
        match self {
            Special::Fifo | Special::Socket => 0,
            Special::CharDev(d) | Special::BlockDev(d) => d,
        }
    }

    /// From the `S_IFMT` bits of a mode as mknod(2) gives it; `None` for a regular file or a
    /// type mknod cannot make.
    pub fn from_mode(mode: u32, rdev: u64) -> Option<Special> {
        match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(Special::Fifo),
            libc::S_IFSOCK => Some(Special::Socket),
            libc::S_IFCHR => Some(Special::CharDev(rdev)),
            libc::S_IFBLK => Some(Special::BlockDev(rdev)),
            _ => None,
        }
    }
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

/// How a conflict is settled, as the user names it (`stratus resolve --keep`,
/// `user.stratus.resolve`). `Local` and `Remote` are relative to this mount (the version
/// written here, the other one); `Path` and `Copy` name where a version sits, which means the
/// same on every mount. Here, not in `control`, because the core settles conflicts
/// (`Vfs::resolve`) and must not import the control protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Local,
    Remote,
    /// The version at the original path stays; the copy goes.
    Path,
    /// The copy's version takes the path.
    Copy,
    /// Both stay: the copy becomes an ordinary file under its own name.
    Both,
}

impl Keep {
    pub fn parse(s: &str) -> Option<Keep> {
        match s.trim() {
            "local" => Some(Keep::Local),
            "remote" => Some(Keep::Remote),
            "path" => Some(Keep::Path),
            "copy" => Some(Keep::Copy),
            "both" => Some(Keep::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Local => "local",
            Keep::Remote => "remote",
            Keep::Path => "path",
            Keep::Copy => "copy",
            Keep::Both => "both",
        }
    }

    /// Where the kept version sits (`Path`, `Copy` or `Both`), given which side this mount
    /// wrote (`mine`). `Local`/`Remote` on a mount that wrote neither side is refused with a
    /// reason.
    pub fn placed(self, mine: Option<&str>) -> Result<Keep, String> {
        match (self, mine) {
            (Keep::Path | Keep::Copy | Keep::Both, _) => Ok(self),
            (Keep::Local, Some("path")) | (Keep::Remote, Some("copy")) => Ok(Keep::Path),
            (Keep::Local, Some("copy")) | (Keep::Remote, Some("path")) => Ok(Keep::Copy),
            (Keep::Local | Keep::Remote, _) => Err(
                "neither version was written on this mount: use path (keep the file), copy (keep the .conflict copy) or both"
                    .into(),
            ),
        }
    }
}

/// Reads an entry's metadata now, where a first mount filled the entry from a listing alone
/// (`Entry::unread`): the core calls it before it answers what it cannot answer honestly
/// without (opening a file, which might be a symlink or have a mode that forbids it; a change
/// whose upload would carry the attributes). The sync engine's metadata reader implements
/// it; the daemon's wiring hands it to the core, which does not import `sync`.
pub trait MetaSource: Send + Sync {
    /// `Ok(true)` when what the kernel holds for the entry no longer stands in a way an open
    /// must respect: the name is now another kind or another inode (a symlink, a special
    /// file, a hard link joined to its inode), or the mode or owner changed. `Err` says why
    /// the metadata could not be read.
    fn read_now(&self, id: EntryId) -> Result<bool, String>;
}
