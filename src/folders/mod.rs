//! The query folders: `/by-tag`, `/sql`, `/queries` as virtual
//! nodes beside the real tree.
//!
//! Virtual inode numbers have bit 62 set, so they never meet real ones.
//! A query folder's entries are the *real* files (their real inode numbers),
//! so reading, writing and tagging through them act on the files. Two kinds
//! of virtual entries exist besides folders: a directory among the results
//! is shown as a relative symlink to its real path (the kernel does not
//! allow one directory in two places), as is a symlink with a relative
//! target (rewritten to reach what it reaches at its real place); and a
//! `/sql` query whose rows name no file shows its result as `result.csv` and
//! `result.json`.
//!
//! Operations through a tag folder follow one rule: after any sequence of
//! ordinary tool operations that succeed through it, every file the user
//! copied, moved or saved still exists with the content they wrote, and no
//! stray copies pile up. Files made through a tag folder live in `/inbox`;
//! a rename within a folder acts on the real file, and the name it leaves
//! is taken at the same real place by the next file (an editor's save);
//! nothing answers EXDEV (which makes `mv` copy and delete). The README's
//! table gives every operation; `v_create`, `v_unlink` and `v_rename` say
//! how.
//!
//! Listings are computed on `opendir` and `lookup` and cached per folder
//! until the next metadata commit (a generation counter), so they are right
//! immediately after any change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{FsError, Result};
use crate::meta::sandbox::{value_text, Cell, QueryResult, Visibility};
use crate::meta::{MetaRead, MetaStore};
use crate::query::{self, saved, Term};
use crate::types::{Attr, FileKind, VIRTUAL_BIT};
use crate::vfs::{Caller, DirEntry, ROOT, ROW_CAP};

mod entries;
mod inbox;
mod listing;
mod lookup;
mod nodes;
pub(crate) mod perm;
mod port;
mod rename;
mod tagging;
#[cfg(test)]
mod tests;
mod windows;

pub use perm::{with_viewer, Viewer};
pub use port::Tree;

const BY_TAG: u64 = VIRTUAL_BIT | 1;
const SQL: u64 = VIRTUAL_BIT | 2;
const QUERIES: u64 = VIRTUAL_BIT | 3;

/// Most bytes of values a query folder's query may return (the CLI allows
/// [`crate::meta::sandbox::RESULT_BYTES_CAP`]).
pub const FOLDER_BYTES_CAP: usize = 8 << 20;
/// Largest `result.csv` or `result.json`.
pub const RESULT_FILE_CAP: usize = 8 << 20;
/// Most bytes the listing cache holds (result files included), and most
/// listings.
const CACHE_BYTES: usize = 32 << 20;
const CACHE_LISTINGS: usize = 256;
/// Where files made through a tag folder live (see `v_create`).
pub const INBOX: &[u8] = b"inbox";
/// The store key holding the inode number of the `/inbox` queryfs made.
const INBOX_KEY: &str = "inbox_ino";

fn is_virtual(ino: u64) -> bool {
    ino & VIRTUAL_BIT != 0
}

/// The query folders over one core: their virtual nodes, listings and the
/// memory of what was done through them. They reach the core only through
/// its [`Tree`] port: they read the real tree and the metadata, change the
/// real tree as a user would (the operations a window or a tag folder
/// passes on) and tag files.
pub struct Folders {
    core: Arc<dyn Tree>,
    virt: Virt,
}

impl Folders {
    pub fn new(core: Arc<dyn Tree>) -> Folders {
        Folders {
            core,
            virt: Virt::default(),
        }
    }

    /// The metadata, to read.
    fn meta(&self) -> parking_lot::MappedMutexGuard<'_, dyn MetaRead> {
        self.core.meta()
    }

    /// Runs `f` as one metadata write of the core (a transaction, or a
    /// savepoint of its group commit).
    fn tx<T>(&self, f: impl FnOnce(&dyn MetaStore) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.core.write(&mut |m| {
            let f = f
                .take()
                .ok_or(FsError::Invalid("a write ran twice".into()))?;
            out = Some(f(m)?);
            Ok(())
        })?;
        out.ok_or(FsError::Invalid("a write did not run".into()))
    }

    fn inode(&self, m: &dyn MetaRead, ino: u64) -> Result<Attr> {
        m.inode(ino)?.ok_or(FsError::NotFound)
    }
}

/// `/queries` (whose `user.query.NAME` xattrs are the saved queries).
fn is_queries_root(ino: u64) -> bool {
    ino == QUERIES
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum VKey {
    /// `/by-tag/<terms...>`; no terms is `/by-tag` itself.
    ByTag(Vec<Term>),
    SqlRoot,
    Sql(String),
    QueriesRoot,
    Saved(String),
    /// A result file or a directory symlink inside a folder.
    Leaf(u64, Vec<u8>),
    /// A window onto real directory `ino`, made through a tag folder (it
    /// lives in /inbox): its entries are the directory's own, every change
    /// in it is a change of the real directory, and a directory in it is a
    /// window of its own (the kernel never sees one directory under two
    /// names). `cp -r DIR /by-tag/x/` makes DIR this way.
    Window(u64),
}

struct VNode {
    key: VKey,
    /// The target of a symlink.
    data: Arc<Vec<u8>>,
    /// The content of a result file: held by the listing that made it (and
    /// by open handles), so that it goes when the listing leaves the cache.
    file: std::sync::Weak<Vec<u8>>,
    size: u64,
    link: bool,
    /// Lookups the kernel holds (each entry reply is one; FORGET gives
    /// them back): a node the kernel knows is never trimmed.
    lookups: u64,
    /// The table epoch it was last used in (see [`Table::trim`]).
    seen: u64,
}

/// Virtual nodes kept before unused ones are trimmed: every distinct
/// `/sql` folder name or result file is one, and a mount must not grow
/// without bound under a stream of names.
const NODE_CAP: usize = 32_768;
#[cfg(test)]
pub(crate) const NODE_CAP_FOR_TESTS: usize = NODE_CAP;

/// The virtual inode table and the listing cache.
#[derive(Default)]
struct Virt {
    table: parking_lot::Mutex<Table>,
    cache: parking_lot::Mutex<Cache>,
    /// What each viewer may reach, per metadata generation.
    vis: parking_lot::Mutex<perm::VisCache>,
    /// Names that a rename within a tag folder took away from a file:
    /// (folder, name in the folder) -> where that name was. The next file
    /// that takes the name in the folder (create or rename) takes that
    /// real place: the save of an editor that moves the original aside.
    vacated: parking_lot::Mutex<HashMap<(u64, Vec<u8>), Vacated>>,
    /// Entries that `rm` through a tag folder only untagged (a file with a
    /// home of its own): (folder, name) -> that file's real place and the
    /// process that removed it. When the same process then creates the
    /// name in the folder (`install`, `cp --remove-destination`, `tar -x`
    /// over an entry: unlink, then create), the new file replaces the old
    /// one at its real place, as in a directory.
    unlinked: parking_lot::Mutex<HashMap<(u64, Vec<u8>), Unlinked>>,
    /// Real directories just moved into a tag folder by rename: the kernel
    /// moved its cached name of the directory into the folder, and until
    /// that name is dropped a lookup by the real path may fail with ESTALE
    /// (the kernel cannot have one directory under two names).
    moved: Arc<(parking_lot::Mutex<HashSet<u64>>, parking_lot::Condvar)>,
    /// Where the store is mounted (absolute), once it is: a directory the
    /// user tagged inside a window shows as a symlink to its real path,
    /// which only an absolute target can name (one window is reached by
    /// paths of different depths).
    mountpoint: parking_lot::Mutex<Option<Vec<u8>>>,
    /// Where to report real names changed on behalf of a query folder:
    /// the kernel saw the operation in the folder only, and its cache of
    /// the real names must be dropped (see [`Fs::on_real_names_changed`]).
    changed: parking_lot::Mutex<Option<NameReports>>,
    /// The stored inode number of the `/inbox` queryfs made (outer `None`:
    /// not read yet).
    inbox_ino: parking_lot::Mutex<Option<Option<u64>>>,
}

/// Where real names changed behind the kernel are sent: (parent, name).
/// The sender of an acknowledgement is set when the request waits for the
/// kernel to have dropped the name.
pub type NameReport = (u64, Vec<u8>, Option<std::sync::mpsc::SyncSender<()>>);
pub type NameReports = std::sync::mpsc::Sender<NameReport>;

thread_local! {
    /// The process of the request this thread serves (0: not known).
    static REQUEST_PID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// The directories of the request this thread serves through a query
    /// folder: the kernel holds their locks until the reply.
    static REQUEST_DIRS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Runs `f` on behalf of process `pid` (for [`Virt::unlinked`]).
pub fn with_pid<T>(pid: u32, f: impl FnOnce() -> T) -> T {
    let old = REQUEST_PID.with(|c| c.replace(pid));
    let r = f();
    REQUEST_PID.with(|c| c.set(old));
    r
}

/// Marks the directories of the running request until dropped.
struct RequestDirs((u64, u64));

impl RequestDirs {
    fn set(a: u64, b: u64) -> RequestDirs {
        RequestDirs(REQUEST_DIRS.with(|c| c.replace((a, b))))
    }
}

impl Drop for RequestDirs {
    fn drop(&mut self) {
        REQUEST_DIRS.with(|c| c.set(self.0));
    }
}

/// How long a request through a query folder waits for the kernel to drop
/// the real names it changed before it answers: at most the kernel's entry
/// timeout (1 s), after which a stale name has expired anyway.
const INVAL_WAIT: Duration = Duration::from_secs(1);

/// A name left by a rename within a tag folder.
#[derive(Clone)]
struct Vacated {
    /// The file that left it.
    ino: u64,
    /// Its real place before the rename.
    parent: u64,
    name: Vec<u8>,
    /// When: a name is taken over only shortly after it was left (an
    /// editor creates the new file right after moving the old one aside).
    at: std::time::Instant,
}

/// What was said about a file: its tags (name, value, placed position) and
/// user xattrs (name, value).
type Said = (Vec<(String, Option<String>, u32)>, Vec<(Vec<u8>, Vec<u8>)>);

/// What a tag folder holds under a name, found without its listing.
enum Quick {
    /// The one regular file of that name.
    Entry(Attr),
    /// No file the folder holds has that real name.
    Absent,
    /// The listing must say.
    Unknown,
}

/// An entry `rm` only untagged: the file's real place, and the process.
type Unlinked = (Vacated, u32);

/// How long a vacated name waits for a file to take its place.
const VACATED_FOR: Duration = Duration::from_secs(30);

/// Most remembered vacated names (per session).
const MEMORY_CAP: usize = 4096;

#[derive(Default)]
struct Table {
    next: u64,
    by_key: HashMap<VKey, u64>,
    nodes: HashMap<u64, VNode>,
    /// Advanced by each trim; listings of older epochs may name trimmed
    /// nodes and are computed again.
    epoch: u64,
    /// The size at which the next trim runs.
    limit: usize,
}

impl Table {
    /// Drops the nodes that the kernel does not hold and nobody used in
    /// this epoch or the one before (a listing being computed, or cached
    /// from the last epoch, uses only nodes of those). The roots stay.
    fn trim(&mut self) {
        self.epoch += 1;
        let e = self.epoch;
        let fixed = [BY_TAG, SQL, QUERIES];
        self.nodes
            .retain(|ino, n| fixed.contains(ino) || n.lookups > 0 || n.seen + 1 >= e);
        let nodes = &self.nodes;
        self.by_key.retain(|_, ino| nodes.contains_key(ino));
        self.limit = NODE_CAP.max(2 * self.nodes.len());
    }
}

#[derive(Clone)]
enum Target {
    Real(Attr),
    Virtual(u64),
    /// A virtual symlink standing for a real inode (a directory, or a
    /// symlink with a relative target): (virtual ino, real ino).
    Alias(u64, u64),
    /// A window onto a real directory: (virtual ino, real ino).
    Window(u64, u64),
}

/// Where a rename starts or ends.
enum Side {
    Real,
    /// A `/by-tag` folder (no terms: `/by-tag` itself).
    Tags(Vec<Term>),
    /// `/sql`, `/queries` and their folders.
    Query,
}

/// Slots of /inbox: /inbox/2 ... /inbox/SLOT_MAX.
const SLOT_MAX: u32 = 10_000;

fn is_slot_name(n: &[u8]) -> bool {
    !n.is_empty() && n[0] != b'0' && n.len() <= 5 && n.iter().all(u8::is_ascii_digit)
}

struct Listing {
    generation: u64,
    /// The node table's epoch when it was computed.
    epoch: u64,
    entries: Vec<(Vec<u8>, Target)>,
    index: HashMap<Vec<u8>, usize>,
    /// Result files of this listing: held here (never read through this
    /// field), so that they live as long as the listing.
    #[allow(dead_code)]
    files: Vec<Arc<Vec<u8>>>,
    /// About what it holds in memory.
    bytes: usize,
}

/// Listings by folder, bounded in number and bytes.
/// A folder and the viewer its listing is for (`None`: everything).
type ListingKey = (u64, Option<crate::folders::perm::Viewer>);

#[derive(Default)]
struct Cache {
    map: HashMap<ListingKey, Arc<Listing>>,
    bytes: usize,
}

impl Cache {
    fn insert(&mut self, key: ListingKey, l: Arc<Listing>) {
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.bytes;
        }
        if l.bytes > CACHE_BYTES {
            return;
        }
        while !self.map.is_empty()
            && (self.bytes + l.bytes > CACHE_BYTES || self.map.len() >= CACHE_LISTINGS)
        {
            let k = self.map.keys().next().expect("not empty").clone();
            if let Some(old) = self.map.remove(&k) {
                self.bytes -= old.bytes;
            }
        }
        self.bytes += l.bytes;
        self.map.insert(key, l);
    }
}

/// A name a directory listing may show: not empty, `.` or `..`, without
/// `/` or NUL, at most NAME_MAX bytes.
fn listable(n: &[u8]) -> bool {
    !n.is_empty()
        && n != b"."
        && n != b".."
        && !n.contains(&b'/')
        && !n.contains(&0)
        && n.len() <= crate::vfs::NAME_MAX
}
