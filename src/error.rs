//! Error policy of the library.
//!
//! Each layer has its own `thiserror` enum; the filesystem core's [`FsError`]
//! is what every operation returns, and [`FsError::errno`] is the one place
//! where errors become errno values (for FUSE) — nothing else picks errnos.
//! Messages name the cause; callers add the path. The CLI wraps these in
//! `anyhow` with context; the library never uses `anyhow`.

use std::io;

use crate::meta::sandbox::SandboxError;
use crate::meta::MetaError;
use crate::query::QueryError;

/// Everything a filesystem operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A tag name, tag value, tag set, `/by-tag` term or query name that
    /// does not parse (EINVAL, as [`FsError::Invalid`]).
    #[error("invalid argument: {0}")]
    Tag(QueryError),
    /// Users' SQL refused or stopped by the sandbox; the variant tells a
    /// timeout from a refusal (EINVAL for all, as [`FsError::Invalid`]).
    #[error("invalid argument: {0}")]
    Query(SandboxError),
    #[error("file name too long (the limit is 255 bytes)")]
    NameTooLong,
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    Access,
    #[error("operation not supported")]
    NotSupported,
    #[error("bad file handle")]
    BadHandle,
    #[error("file too large")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("the name is reserved for a query folder")]
    Busy,
    /// The kernel still knows an inode that is gone (replaced or removed
    /// through a query folder, behind a cached name): ESTALE makes it look
    /// the name up again.
    #[error("stale file handle")]
    Stale,
    #[error("no space left on the store's disk")]
    NoSpace,
    #[error("no data or hole at or after this offset")]
    NoSuchOffset,
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub type Result<T> = std::result::Result<T, FsError>;

// (Not `#[from]`: that would make the inner error a `source` too, and the
// CLI's `{:#}` would print its message twice.)
impl From<QueryError> for FsError {
    fn from(e: QueryError) -> FsError {
        FsError::Tag(e)
    }
}

impl From<SandboxError> for FsError {
    fn from(e: SandboxError) -> FsError {
        FsError::Query(e)
    }
}

impl FsError {
    /// The errno this error reports through FUSE.
    pub fn errno(&self) -> i32 {
        use libc::*;
        match self {
            FsError::NotFound => ENOENT,
            FsError::Exists => EEXIST,
            FsError::NotDir => ENOTDIR,
            FsError::IsDir => EISDIR,
            FsError::NotEmpty => ENOTEMPTY,
            FsError::Invalid(_) | FsError::Tag(_) | FsError::Query(_) => EINVAL,
            FsError::NameTooLong => ENAMETOOLONG,
            FsError::NoAttr => ENODATA,
            FsError::Range => ERANGE,
            FsError::NotPermitted => EPERM,
            FsError::Access => EACCES,
            FsError::NotSupported => EOPNOTSUPP,
            FsError::BadHandle => EBADF,
            FsError::TooBig => EFBIG,
            FsError::TooManyLinks => EMLINK,
            FsError::NoSpace => ENOSPC,
            FsError::NoSuchOffset => ENXIO,
            FsError::Busy => EBUSY,
            FsError::Stale => ESTALE,
            FsError::Corrupt(_) => EIO,
            FsError::Meta(MetaError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::DiskFull =>
            {
                ENOSPC
            }
            FsError::Meta(_) => EIO,
            FsError::Io(e) => match e.kind() {
                io::ErrorKind::StorageFull => ENOSPC,
                _ => e.raw_os_error().unwrap_or(EIO),
            },
        }
    }
}
