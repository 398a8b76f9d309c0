//! The vocabulary every layer shares: the core, the FUSE adapter, the CLI,
//! the exporter and the backends speak these types; each backend's own row
//! types stay inside it.

use std::fmt;

/// The BLAKE3 hash that names a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first `n` bytes in lowercase hex (for messages).
    pub fn short(&self, n: usize) -> String {
        hex(&self.0[..n.min(32)])
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short(8))
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl From<[u8; 32]> for BlobHash {
    fn from(h: [u8; 32]) -> BlobHash {
        BlobHash(h)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Where a blob store keeps one blob: handed out by
/// [`crate::blob::BlobStore::put`], kept beside the blob's hash by the
/// metadata store, and meaningful only to the blob store that made it (a
/// start cluster in the container, a key in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobLoc(pub u64);

/// The kind of a file (its S_IFMT bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::File,
        FileKind::Dir,
        FileKind::Symlink,
        FileKind::Fifo,
        FileKind::Socket,
        FileKind::Char,
        FileKind::Block,
    ];

    /// The S_IFMT bits (what the metadata store keeps and `stat` shows).
    pub const fn bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::Char => libc::S_IFCHR,
            FileKind::Block => libc::S_IFBLK,
        }
    }

    /// The kind of a mode's S_IFMT bits.
    pub fn from_bits(mode: u32) -> Option<FileKind> {
        let t = mode & libc::S_IFMT;
        FileKind::ALL.into_iter().find(|k| k.bits() == t)
    }

    /// The word of exported manifests and `--json` output ("file", "dir").
    pub const fn word(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::Char => "char",
            FileKind::Block => "block",
        }
    }

    /// The kind a [`FileKind::word`] names.
    pub fn from_word(w: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| k.word() == w)
    }

    /// The name people read (`queryfs stat`).
    pub const fn name(self) -> &'static str {
        match self {
            FileKind::Dir => "directory",
            FileKind::Char => "char-device",
            FileKind::Block => "block-device",
            k => k.word(),
        }
    }

    /// The letter of `ls -l`.
    pub const fn letter(self) -> char {
        match self {
            FileKind::File => '-',
            FileKind::Dir => 'd',
            FileKind::Symlink => 'l',
            FileKind::Fifo => 'p',
            FileKind::Socket => 's',
            FileKind::Char => 'c',
            FileKind::Block => 'b',
        }
    }
}

/// `kind | perm`: a mode (S_IFMT and permission bits).
impl std::ops::BitOr<u32> for FileKind {
    type Output = u32;
    fn bitor(self, perm: u32) -> u32 {
        self.bits() | perm
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// The attributes of one file, as every layer sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// 07777 bits.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    /// Nanoseconds since the Unix epoch.
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub btime: i64,
    /// Stored content in 512-byte units (st_blocks): holes hold nothing.
    pub blocks: u64,
}

impl Attr {
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// st_mode: kind and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.bits() | self.perm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_bits_and_words() {
        for k in FileKind::ALL {
            assert_eq!(FileKind::from_bits(k.bits() | 0o644), Some(k));
            assert_eq!(FileKind::from_word(k.word()), Some(k));
        }
        assert_eq!(FileKind::from_bits(0), None);
        assert_eq!(FileKind::from_word("directory"), None);
    }
}

/// The bit that marks a virtual inode number (a query folder, or what one
/// shows of itself): real numbers are the metadata store's row ids and
/// never reach it.
pub const VIRTUAL_BIT: u64 = 1 << 62;

/// An inode number as a request names it: real (the core's) or virtual
/// (the query folders'). Where a request enters ([`crate::view::View`]),
/// this type decides which side serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);

    /// Whether a query folder serves this number.
    pub fn is_virtual(self) -> bool {
        self.0 & VIRTUAL_BIT != 0
    }
}

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
