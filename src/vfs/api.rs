//! The core's request vocabulary: tuning, callers, attribute changes, listing entries, statfs, name checks.

#[allow(unused_imports)]
use super::*;

/// Tuning of the core, chosen from measurements (see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Blobs up to this size live inline in SQLite instead of the container.
    pub inline_max: usize,
    /// Commit a file's buffers when they hold more than this.
    pub dirty_limit: usize,
    /// A reader beside another process that may write: blob bytes are
    /// checked against their hash (their clusters could have been reused),
    /// and nothing is committed.
    pub read_only: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            inline_max: 16 * 1024,
            dirty_limit: 64 << 20,
            read_only: false,
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

    /// The calling process's own ids.
    pub fn current() -> Caller {
        Caller {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }
}

/// A time to set.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(i64),
}

/// Attribute changes of `setattr`.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<i64>,
    /// Birth time; set only by imports that restore it.
    pub btime: Option<i64>,
}

/// One directory listing entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// What `statfs` reports.
#[derive(Debug, Clone, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Checks a name for one directory entry.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(FsError::Invalid(format!(
            "{:?} is not a valid name",
            String::from_utf8_lossy(name)
        )));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid("a name cannot contain '/' or NUL".into()));
    }
    Ok(())
}

/// Space a store has, for `statfs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Space {
    pub total: u64,
    pub free: u64,
    /// Free for unprivileged users.
    pub avail: u64,
    /// Files that could still be made, if the place knows.
    pub files_free: Option<u64>,
}

/// Where a store lives, as far as room goes: what `statfs` reports, and what
/// to do when it runs out. Given by the composition root (a store folder:
/// its disk and its space reserve; memory: free RAM); the core has no
/// paths.
pub trait Room: Send + Sync {
    fn space(&self) -> Option<Space>;

    /// Called by the commit thread every few ticks: when the room is nearly
    /// gone, release what is held back for that moment (the space reserve),
    /// so that the commits that free space still fit.
    fn when_nearly_full(&self) {}
}

/// Names at the root kept for the folders the mount generates beside the
/// real tree (`/by-tag`, `/sql`, `/queries`): the core makes no real file
/// of these names, so that the mount's folders never hide one.
pub const RESERVED: &[&[u8]] = &[b"by-tag", b"sql", b"queries"];

/// Whether `name` in `parent` is one of the [`RESERVED`] names.
pub fn is_reserved(parent: u64, name: &[u8]) -> bool {
    parent == ROOT && RESERVED.contains(&name)
}
