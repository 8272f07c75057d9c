//! The filesystem core's errors and the one table that turns them into errnos.

use crate::cache::CacheError;
use crate::remote::RemoteError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    #[error("no such entry")]
    NotFound,
    #[error("entry exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Deliberately unsupported (hard links, special files): loud, see docs/semantics.md.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("no such attribute")]
    NoAttr,
    #[error("bad file handle")]
    BadHandle,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A data file's own I/O failed (the other cache errors map to their own variants).
    #[error(transparent)]
    Cache(CacheError),
    #[error("fetching from the remote: {0}")]
    Remote(#[from] RemoteError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// What the kernel holds for the name was made stale by metadata just read (a file that
    /// turned out to be a symlink, a mode that forbids the open): ESTALE makes the kernel look
    /// the path up again and retry the open once, with the true attributes.
    #[error("the entry changed when its metadata was read")]
    Stale,
    /// The metadata a listing lacked could not be read (the remote is unreachable).
    #[error("reading metadata: {0}")]
    Metadata(String),
}

pub type VfsResult<T> = Result<T, VfsError>;

impl From<CacheError> for VfsError {
    fn from(e: CacheError) -> VfsError {
        match e {
            CacheError::Io { .. } => VfsError::Cache(e),
            CacheError::DataIo(e) => VfsError::Io(e),
            CacheError::Store(e) => VfsError::Store(e),
            CacheError::Remote(e) => VfsError::Remote(e),
            CacheError::NotFound => VfsError::NotFound,
            CacheError::Invalid(m) => VfsError::Invalid(m),
        }
    }
}

impl VfsError {
    /// The errno the kernel sees. Exhaustive on purpose: a new variant does not compile until
    /// it is mapped here.
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::NotFound => libc::ENOENT,
            VfsError::Exists => libc::EEXIST,
            VfsError::NotDir => libc::ENOTDIR,
            VfsError::IsDir => libc::EISDIR,
            VfsError::NotEmpty => libc::ENOTEMPTY,
            VfsError::NameTooLong(_) => libc::ENAMETOOLONG,
            VfsError::Invalid(_) => libc::EINVAL,
            VfsError::NotSupported(_) => libc::ENOTSUP,
            VfsError::NoAttr => libc::ENODATA,
            VfsError::BadHandle => libc::EBADF,
            VfsError::Range => libc::ERANGE,
            VfsError::Store(crate::store::StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                e,
                _,
            ))) if e.code == rusqlite::ErrorCode::DiskFull => libc::ENOSPC,
            VfsError::Store(_) => libc::EIO,
            VfsError::Cache(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                Some(libc::EDQUOT) => libc::EDQUOT,
                Some(libc::EFBIG) => libc::EFBIG,
                _ => libc::EIO,
            },
            VfsError::Remote(_) => libc::EIO,
            VfsError::Stale => libc::ESTALE,
            VfsError::Metadata(_) => libc::EIO,
            VfsError::Io(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                Some(libc::EDQUOT) => libc::EDQUOT,
                Some(libc::EFBIG) => libc::EFBIG,
                _ => libc::EIO,
            },
        }
    }

    /// Expected outcomes are debug; anything that means lost service is a warning.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            VfsError::NotFound
                | VfsError::Exists
                | VfsError::NotDir
                | VfsError::IsDir
                | VfsError::NotEmpty
                | VfsError::NoAttr
                | VfsError::Range
                | VfsError::NameTooLong(_)
                | VfsError::Stale
        )
    }
}
