//! Query folders in the core: `/by-tag`, `/sql`, `/queries` as virtual
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Caller, DirEntry, Fs, Handle, ROOT};
use crate::error::{FsError, Result};
use crate::meta::sandbox::{value_text, Cell, QueryResult, Sandbox, SandboxError, Visibility};
use crate::meta::{kind, Inode};
use crate::query::{self, saved, Term};

/// The bit that marks a virtual inode number.
pub const VIRT: u64 = 1 << 62;
const BY_TAG: u64 = VIRT | 1;
const SQL: u64 = VIRT | 2;
const QUERIES: u64 = VIRT | 3;

/// Names at the root that belong to query folders.
pub const RESERVED: &[&[u8]] = &[b"by-tag", b"sql", b"queries"];

/// Time budget of one user query.
pub const QUERY_BUDGET: Duration = Duration::from_secs(2);
/// Most rows (entries) a query folder shows.
pub const ROW_CAP: usize = 100_000;
/// Most bytes of values a query folder's query may return (the CLI allows
/// [`crate::meta::sandbox::RESULT_BYTES_CAP`]).
pub const FOLDER_BYTES_CAP: usize = 8 << 20;
/// Largest `result.csv` or `result.json`.
pub const RESULT_FILE_CAP: usize = 8 << 20;
/// Most bytes the listing cache holds (result files included), and most
/// listings.
const CACHE_BYTES: usize = 32 << 20;
const CACHE_LISTINGS: usize = 256;
/// Idle sandbox connections kept for reuse.
const IDLE_SANDBOXES: usize = 4;
/// Where files made through a tag folder live (see `v_create`).
pub const INBOX: &[u8] = b"inbox";
/// The store key holding the inode number of the `/inbox` queryfs made.
const INBOX_KEY: &str = "inbox_ino";

pub fn is_virtual(ino: u64) -> bool {
    ino & VIRT != 0
}

pub fn is_reserved(parent: u64, name: &[u8]) -> bool {
    parent == ROOT && RESERVED.contains(&name)
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
pub(super) const NODE_CAP_FOR_TESTS: usize = NODE_CAP;

/// The virtual inode table and the listing cache.
#[derive(Default)]
pub(super) struct Virt {
    table: parking_lot::Mutex<Table>,
    cache: parking_lot::Mutex<Cache>,
    /// What each viewer may reach, per metadata generation.
    pub(super) vis: parking_lot::Mutex<super::perm::VisCache>,
    /// Idle sandbox connections (one is taken per running query).
    sandboxes: parking_lot::Mutex<Vec<Sandbox>>,
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
    Entry(Inode),
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
    Real(Inode),
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
type ListingKey = (u64, Option<super::perm::Viewer>);

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
        && n.len() <= super::NAME_MAX
}

impl Fs {
    fn vnode(&self, key: VKey, data: Option<(Arc<Vec<u8>>, bool)>) -> u64 {
        let mut t = self.virt.table.lock();
        let fixed = match &key {
            VKey::ByTag(v) if v.is_empty() => Some(BY_TAG),
            VKey::SqlRoot => Some(SQL),
            VKey::QueriesRoot => Some(QUERIES),
            _ => None,
        };
        let epoch = t.epoch;
        let ino = match t.by_key.get(&key) {
            Some(&i) => i,
            None => {
                if t.nodes.len() >= t.limit.max(NODE_CAP) {
                    t.trim();
                }
                let i = fixed.unwrap_or_else(|| {
                    t.next = t.next.max(16) + 1;
                    VIRT | t.next
                });
                t.by_key.insert(key.clone(), i);
                t.nodes.insert(
                    i,
                    VNode {
                        key,
                        data: Arc::new(Vec::new()),
                        file: std::sync::Weak::new(),
                        size: 0,
                        link: false,
                        lookups: 0,
                        seen: epoch,
                    },
                );
                i
            }
        };
        let epoch = t.epoch;
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.seen = epoch;
        }
        if let Some((d, link)) = data {
            let n = t.nodes.get_mut(&ino).unwrap();
            n.size = d.len() as u64;
            n.link = link;
            if link {
                n.data = d;
            } else {
                n.file = Arc::downgrade(&d);
            }
        }
        ino
    }

    fn vkey(&self, ino: u64) -> Result<VKey> {
        match ino {
            BY_TAG => return Ok(VKey::ByTag(Vec::new())),
            SQL => return Ok(VKey::SqlRoot),
            QUERIES => return Ok(VKey::QueriesRoot),
            _ => {}
        }
        let mut t = self.virt.table.lock();
        let epoch = t.epoch;
        let n = t.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        n.seen = epoch;
        Ok(n.key.clone())
    }

    /// The kernel took one more lookup of virtual node `ino` (an entry
    /// reply).
    pub fn note_lookup(&self, ino: u64) {
        if let Some(n) = self.virt.table.lock().nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel gave back `n` lookups of virtual node `ino` (FORGET).
    pub fn forget_virtual(&self, ino: u64, n: u64) {
        if let Some(v) = self.virt.table.lock().nodes.get_mut(&ino) {
            v.lookups = v.lookups.saturating_sub(n);
        }
    }

    /// How many virtual nodes the table holds (for tests and `info`).
    pub fn virtual_nodes(&self) -> usize {
        self.virt.table.lock().nodes.len()
    }

    /// Attributes of a virtual node.
    pub(super) fn v_getattr(&self, ino: u64) -> Result<Inode> {
        if let Some(d) = self.window_dir(ino) {
            let mut i = self.getattr(d)?;
            i.ino = ino;
            return Ok(i);
        }
        let (k, perm, size) = match ino {
            BY_TAG => (kind::DIR, 0o755, 0),
            SQL | QUERIES => (kind::DIR, 0o555, 0),
            _ => {
                let t = self.virt.table.lock();
                let n = t.nodes.get(&ino).ok_or(FsError::NotFound)?;
                match n.key {
                    VKey::ByTag(_) => (kind::DIR, 0o755, 0),
                    VKey::Leaf(..) if n.link => (kind::SYMLINK, 0o777, n.size),
                    VKey::Leaf(..) => (kind::FILE, 0o444, n.size),
                    _ => (kind::DIR, 0o555, 0),
                }
            }
        };
        let me = Caller::current();
        Ok(Inode {
            ino,
            kind: k,
            perm,
            uid: me.uid,
            gid: me.gid,
            size,
            nlink: if k == kind::DIR { 2 } else { 1 },
            rdev: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            btime: self.started,
            blocks: 0,
        })
    }

    /// The query folders at the root, for its listing.
    pub(super) fn v_root_entries(&self) -> Result<Vec<DirEntry>> {
        [BY_TAG, SQL, QUERIES]
            .iter()
            .zip(RESERVED)
            .map(|(&i, n)| {
                Ok(DirEntry {
                    name: n.to_vec(),
                    attr: self.v_getattr(i)?,
                })
            })
            .collect()
    }

    pub(super) fn v_root_lookup(&self, name: &[u8]) -> Result<Inode> {
        let i = match name {
            b"by-tag" => BY_TAG,
            b"sql" => SQL,
            _ => QUERIES,
        };
        self.v_getattr(i)
    }

    /// Whether a lookup in `ino`, or opening it, may run a user's query
    /// (`/sql`, its folders and saved-query folders whose listing is not
    /// cached, result files whose listing left the cache): the FUSE adapter
    /// hands those to its query threads and answers the rest at once. (If
    /// the cache changes in between, the request computes in place.)
    pub fn runs_queries(&self, ino: u64) -> bool {
        if !is_virtual(ino) {
            return false;
        }
        match self.vkey(ino) {
            Ok(VKey::SqlRoot) => true,
            Ok(VKey::Sql(_) | VKey::Saved(_)) => {
                let generation = self.generation.load(Ordering::Acquire);
                self.virt
                    .cache
                    .lock()
                    .map
                    .get(&(ino, super::perm::current_viewer()))
                    .is_none_or(|l| l.generation != generation)
            }
            Ok(VKey::Leaf(..)) => self
                .virt
                .table
                .lock()
                .nodes
                .get(&ino)
                .is_some_and(|n| !n.link && n.file.strong_count() == 0),
            _ => false,
        }
    }

    fn terms_of(&self, ino: u64) -> Result<Vec<Term>> {
        match self.vkey(ino)? {
            VKey::ByTag(t) => Ok(t),
            _ => Err(FsError::NotPermitted),
        }
    }

    /// The real directory that virtual node `ino` is a window onto.
    pub(super) fn window_dir(&self, ino: u64) -> Option<u64> {
        if !is_virtual(ino) {
            return None;
        }
        match self.virt.table.lock().nodes.get(&ino).map(|n| &n.key) {
            Some(VKey::Window(d)) => Some(*d),
            _ => None,
        }
    }

    /// Entry `name` (real inode `a`) of window `w`: a directory is a window
    /// of its own, except one the user tagged, which is a symlink to its
    /// real path (absolute: one window is reached by paths of different
    /// depths), so that `rm -r` of the window's folder does not walk into
    /// what another folder holds; anything else is itself.
    fn in_window(&self, w: u64, name: &[u8], a: Inode) -> Result<Target> {
        if !a.is_dir() {
            return Ok(Target::Real(self.overlay(a)));
        }
        let mp = self.virt.mountpoint.lock().clone();
        if let Some(mp) = mp {
            let tags = self.meta().file_tags_placed(a.ino)?;
            if tags.iter().any(|(_, _, placed)| *placed == 0) {
                let mut target = mp;
                target.extend_from_slice(&self.path_bytes(a.ino)?);
                let v = self.vnode(self.leaf(w, name), Some((Arc::new(target), true)));
                return Ok(Target::Alias(v, a.ino));
            }
        }
        Ok(Target::Window(self.vnode(VKey::Window(a.ino), None), a.ino))
    }

    /// A real inode as a window shows it: a directory as a window of its
    /// own, anything else as itself.
    fn through_window(&self, i: Inode) -> Inode {
        if i.is_dir() {
            let mut w = i;
            w.ino = self.vnode(VKey::Window(w.ino), None);
            w
        } else {
            i
        }
    }

    /// Whether a tag folder shows real directory `d` as a window: it was
    /// made through a tag folder and carries no tag the user gave it. Once
    /// it has one (it is in a folder of the user's), it shows as a symlink
    /// like any tagged directory, so that `rm -r` of one of its folders does
    /// not walk into it and delete what the other folder holds.
    fn is_window_dir(&self, d: u64) -> Result<bool> {
        if !self.made_in_folder(d)? {
            return Ok(false);
        }
        let tags = self.meta().file_tags_placed(d)?;
        Ok(tags.iter().all(|(_, _, placed)| *placed > 0))
    }

    /// Whether real directory `d` was made through a tag folder: it lives
    /// in /inbox (or a slot).
    fn made_in_folder(&self, d: u64) -> Result<bool> {
        // (Bound first: the metadata lock must not be held below.)
        let place = self.meta().parent_of(d)?;
        match place {
            Some((p, _)) => self.is_inbox_dir(p),
            None => Ok(false),
        }
    }

    // ----- listings -----

    /// Calls `f` with the sandbox, opening it on first use; errors as text.
    fn with_sandbox<T>(
        &self,
        vis: Option<Arc<Visibility>>,
        f: impl FnOnce(&Sandbox) -> std::result::Result<T, SandboxError>,
    ) -> std::result::Result<T, String> {
        let db = self
            .query_db
            .as_ref()
            .ok_or("queries need a store on disk")?;
        // The sandbox has its own connection: it sees committed changes only.
        self.settle().map_err(|e| e.to_string())?;
        // One connection per running query, so that queries on several
        // threads do not wait for each other.
        let idle = self.virt.sandboxes.lock().pop();
        let sb = match idle {
            Some(sb) => sb,
            None => Sandbox::open(db).map_err(|e| e.to_string())?,
        };
        sb.set_visibility(vis);
        let r = f(&sb).map_err(|e| e.to_string());
        sb.set_visibility(None);
        let mut idle = self.virt.sandboxes.lock();
        if idle.len() < IDLE_SANDBOXES {
            idle.push(sb);
        }
        r
    }

    fn sandbox_run(&self, sql: &str, vis: &Option<Arc<Visibility>>) -> Result<QueryResult> {
        self.with_sandbox(vis.clone(), |sb| {
            sb.run_capped(sql, QUERY_BUDGET, ROW_CAP, FOLDER_BYTES_CAP)
        })
        .map_err(|e| {
            tracing::warn!("query {sql:?} refused: {e}");
            FsError::Invalid(e)
        })
    }

    /// Runs users' SQL through the sandbox (query folders and the CLI).
    pub fn run_query(&self, sql: &str) -> std::result::Result<QueryResult, String> {
        self.with_sandbox(None, |sb| sb.run(sql, QUERY_BUDGET, ROW_CAP))
    }

    /// Relative path from a virtual folder to a real path (for dir symlinks).
    fn link_to(&self, depth: usize, real: &[u8]) -> Vec<u8> {
        let mut s = "../".repeat(depth).into_bytes();
        let start = real.iter().position(|&c| c != b'/').unwrap_or(real.len());
        s.extend_from_slice(&real[start..]);
        s
    }

    fn depth(key: &VKey) -> usize {
        match key {
            VKey::ByTag(t) => 1 + t.len(),
            _ => 2,
        }
    }

    /// Entries for real inodes: files as themselves, directories as symlinks.
    fn real_entries(
        &self,
        folder: u64,
        key: &VKey,
        rows: Vec<(Vec<u8>, Inode)>,
        taken: &HashSet<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let rows: Vec<(Vec<u8>, u64, Inode)> =
            rows.into_iter().map(|(n, i)| (n, i.ino, i)).collect();
        let mut out = Vec::with_capacity(rows.len());
        for (name, _, attr) in query::unique_names(rows, taken) {
            if attr.is_dir() && self.is_window_dir(attr.ino)? {
                let v = self.vnode(VKey::Window(attr.ino), None);
                out.push((name, Target::Window(v, attr.ino)));
                continue;
            }
            // A directory cannot be in two places: it shows as a symlink to
            // its real path. A symlink with a relative target shows as a
            // symlink rewritten to reach what it reaches at its real place.
            let target = if attr.is_dir() {
                let path = self.path_bytes(attr.ino)?;
                Some(self.link_to(Self::depth(key), &path))
            } else if attr.kind == kind::SYMLINK {
                let t = self.readlink(attr.ino)?;
                if t.starts_with(b"/") {
                    None
                } else {
                    let path = self.path_bytes(attr.ino)?;
                    let cut = path.iter().rposition(|&c| c == b'/').unwrap_or(0);
                    let mut l = self.link_to(Self::depth(key), &path[..cut]);
                    if !l.ends_with(b"/") {
                        l.push(b'/');
                    }
                    l.extend_from_slice(&t);
                    Some(l)
                }
            } else {
                None
            };
            match target {
                Some(target) => {
                    let v = self.vnode(self.leaf(folder, &name), Some((Arc::new(target), true)));
                    out.push((name, Target::Alias(v, attr.ino)));
                }
                None => out.push((name, Target::Real(self.overlay(attr)))),
            }
        }
        Ok(out)
    }

    /// The key of a result file or directory symlink `name` in `folder`,
    /// for the current viewer: each viewer has its own (their content and
    /// targets come from what that viewer may see).
    fn leaf(&self, folder: u64, name: &[u8]) -> VKey {
        match super::perm::current_viewer() {
            None => VKey::Leaf(folder, name.to_vec()),
            Some(v) => {
                // NUL never occurs in a name: no clash with another leaf.
                let mut k = name.to_vec();
                k.push(0);
                k.extend_from_slice(&v.key());
                VKey::Leaf(folder, k)
            }
        }
    }

    /// The entries of a folder as `vis` may see them; result files it
    /// makes are added to `files`.
    fn compute(
        &self,
        ino: u64,
        key: &VKey,
        files: &mut Vec<Arc<Vec<u8>>>,
        vis: &Option<Arc<Visibility>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let restricted = vis.as_ref().is_some_and(|v| !v.hidden.is_empty());
        match key {
            VKey::ByTag(terms) if terms.is_empty() => {
                let mut names = self.meta().tag_names()?;
                if restricted {
                    // A tag held only by files out of the viewer's reach is
                    // not shown (an unused tag is).
                    let mut any: HashSet<String> = HashSet::new();
                    let mut seen: HashSet<String> = HashSet::new();
                    let pairs = self.meta().tag_files()?;
                    for (t, f) in pairs {
                        if !any.contains(&t) && self.reachable(vis, f)? {
                            any.insert(t.clone());
                        }
                        seen.insert(t);
                    }
                    names.retain(|n| any.contains(n) || !seen.contains(n));
                }
                Ok(names
                    .into_iter()
                    .map(|n| {
                        let v = self.vnode(VKey::ByTag(vec![Term::tag(&n)]), None);
                        (n.into_bytes(), Target::Virtual(v))
                    })
                    .collect())
            }
            VKey::ByTag(terms) => {
                let (mut files, mut narrow) = {
                    let m = self.meta();
                    let (sql, p) = query::files_sql(terms);
                    let files = m.listing(&sql, &p)?;
                    let (sql, p) = query::narrowing_sql(terms);
                    let narrow = m.strings(&sql, &p)?;
                    (files, narrow)
                };
                if restricted {
                    // Only files the viewer can reach, and only the tags
                    // those files hold narrow.
                    let mut kept = Vec::with_capacity(files.len());
                    let mut held: HashSet<String> = HashSet::new();
                    for (n, i) in files {
                        if self.reachable(vis, i.ino)? {
                            let tags = self.meta().file_tags(i.ino)?;
                            held.extend(tags.into_iter().map(|(t, _)| t));
                            kept.push((n, i));
                        }
                    }
                    files = kept;
                    narrow.retain(|t| held.contains(t));
                }
                // Tags already named by the path do not narrow.
                let used: HashSet<&str> = terms
                    .iter()
                    .flat_map(|t| t.any.iter().map(|a| a.tag()))
                    .collect();
                // Only a one-term folder lists the tags that narrow it: a
                // deeper folder (`/by-tag/a/b/`) is found by name in any
                // order but lists only its files. Otherwise every ordering
                // of a file's tags is a listed path, and `find`, `du` or a
                // backup of the mount meets a file with n tags n! times.
                // A window (a directory copied in) keeps its name: a tag of
                // that name does not take it (a re-run of `rsync` must find
                // the directory it made, not a folder).
                // (Only a one-term folder lists narrowing tags at all.)
                let mut windows: HashSet<Vec<u8>> = HashSet::new();
                if terms.len() == 1 && !narrow.is_empty() {
                    for (n, i) in &files {
                        if i.is_dir() && self.is_window_dir(i.ino)? {
                            windows.insert(n.clone());
                        }
                    }
                }
                let subs: Vec<String> = narrow
                    .into_iter()
                    .filter(|t| terms.len() == 1 && !used.contains(t.as_str()))
                    .filter(|t| !windows.contains(t.as_bytes()))
                    .collect();
                let taken: HashSet<Vec<u8>> = subs.iter().map(|s| s.as_bytes().to_vec()).collect();
                let mut out = self.real_entries(ino, key, files, &taken)?;
                for s in subs {
                    let mut t = terms.clone();
                    t.push(Term::tag(&s));
                    let v = self.vnode(VKey::ByTag(t), None);
                    out.push((s.into_bytes(), Target::Virtual(v)));
                }
                Ok(out)
            }
            VKey::SqlRoot => Ok(Vec::new()),
            VKey::QueriesRoot => {
                let mut names: Vec<String> =
                    saved::SHIPPED.iter().map(|(n, _)| n.to_string()).collect();
                names.extend(self.meta().saved_queries()?.into_iter().map(|(n, _)| n));
                names.sort();
                names.dedup();
                Ok(names
                    .into_iter()
                    .map(|n| {
                        let v = self.vnode(VKey::Saved(n.clone()), None);
                        (n.into_bytes(), Target::Virtual(v))
                    })
                    .collect())
            }
            VKey::Sql(sql) => self.sql_entries(ino, key, sql, files, vis),
            VKey::Saved(name) => {
                let sql = match saved::shipped(name) {
                    Some(s) => s.to_string(),
                    None => self.meta().saved_query(name)?.ok_or(FsError::NotFound)?,
                };
                self.sql_entries(ino, key, &sql, files, vis)
            }
            VKey::Leaf(..) => Err(FsError::NotDir),
            VKey::Window(d) => {
                let rows = self.meta().list_dir(*d)?;
                let mut out = Vec::with_capacity(rows.len());
                for (n, a) in rows {
                    let t = self.in_window(ino, &n, a)?;
                    out.push((n, t));
                }
                Ok(out)
            }
        }
    }

    fn sql_entries(
        &self,
        ino: u64,
        key: &VKey,
        sql: &str,
        files: &mut Vec<Arc<Vec<u8>>>,
        vis: &Option<Arc<Visibility>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let r = self.sandbox_run(sql, vis)?;
        if r.truncated {
            tracing::warn!("query {sql:?}: only the first {ROW_CAP} rows are shown");
        }
        let col = |names: &[&str]| {
            r.columns
                .iter()
                .position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
        };
        let id_col = col(&["id", "ino"]);
        let path_col = col(&["path"]);
        let name_col = col(&["name"]);
        if id_col.is_none() && path_col.is_none() {
            return self.result_files(ino, r, files);
        }
        let mut rows = Vec::new();
        // Paths and names are bytes (text or blob): a name need not be UTF-8.
        let bytes = |v: Option<&Cell>| match v {
            Some(Cell::Text(b) | Cell::Blob(b)) => Some(b.clone()),
            _ => None,
        };
        for row in &r.rows {
            let path = bytes(path_col.map(|c| &row[c]));
            let found = match (id_col.map(|c| &row[c]), &path) {
                (Some(Cell::Integer(i)), _) if *i > 0 => self.meta().inode(*i as u64)?,
                (_, Some(p)) => match self.resolve_bytes(p) {
                    Ok(i) => Some(i),
                    Err(FsError::NotFound | FsError::NotDir | FsError::NameTooLong) => None,
                    Err(e) => return Err(e),
                },
                _ => None,
            };
            let Some(attr) = found else { continue };
            if attr.nlink == 0 || attr.ino == ROOT || is_virtual(attr.ino) {
                continue;
            }
            // An id or path names a file whatever the views showed: only
            // files the viewer can reach are listed.
            if !self.reachable(vis, attr.ino)? {
                continue;
            }
            // A name that no directory may show (`.`, `..`, with `/` or
            // NUL, too long) gives way to the path's last part, then to the
            // file's real name.
            let base = |p: &[u8]| p.rsplit(|&c| c == b'/').next().unwrap_or(b"").to_vec();
            let name = match (bytes(name_col.map(|c| &row[c])), &path) {
                (Some(n), _) if listable(&n) => n,
                (_, Some(p)) if listable(&base(p)) => base(p),
                _ => match self.meta().parent_of(attr.ino)? {
                    Some((_, n)) => n,
                    None => continue,
                },
            };
            rows.push((name, attr));
        }
        self.real_entries(ino, key, rows, &HashSet::new())
    }

    /// `result.csv` and `result.json` for rows that name no file, each at
    /// most [`RESULT_FILE_CAP`] bytes (a bigger result fails the folder).
    fn result_files(
        &self,
        folder: u64,
        r: QueryResult,
        files: &mut Vec<Arc<Vec<u8>>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let too_big = || {
            tracing::warn!(
                "a query result is larger than {} MiB; use `queryfs query` for it",
                RESULT_FILE_CAP >> 20
            );
            FsError::Invalid(format!(
                "the result is larger than {} MiB",
                RESULT_FILE_CAP >> 20
            ))
        };
        // CSV holds text as the bytes it is (a name need not be UTF-8).
        let esc = |s: &[u8], out: &mut Vec<u8>| {
            if s.iter().any(|c| b",\"\n\r".contains(c)) {
                out.push(b'"');
                for &c in s {
                    if c == b'"' {
                        out.push(b'"');
                    }
                    out.push(c);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(s);
            }
        };
        let mut csv = Vec::new();
        for (i, c) in r.columns.iter().enumerate() {
            if i > 0 {
                csv.push(b',');
            }
            esc(c.as_bytes(), &mut csv);
        }
        csv.push(b'\n');
        for row in &r.rows {
            for (i, v) in row.iter().enumerate() {
                if i > 0 {
                    csv.push(b',');
                }
                esc(&value_text(v), &mut csv);
            }
            csv.push(b'\n');
            if csv.len() > RESULT_FILE_CAP {
                return Err(too_big());
            }
        }
        // JSON written row by row, as `serde_json::to_vec_pretty` of the
        // array of row objects would write it.
        let mut json = Vec::new();
        if r.rows.is_empty() {
            json.extend_from_slice(b"[]");
        } else {
            json.extend_from_slice(b"[\n");
            for i in 0..r.rows.len() {
                let obj = serde_json::Value::Object(r.row_json(i));
                let text = serde_json::to_string_pretty(&obj).unwrap_or_default();
                for (k, line) in text.lines().enumerate() {
                    if k > 0 {
                        json.push(b'\n');
                    }
                    json.extend_from_slice(b"  ");
                    json.extend_from_slice(line.as_bytes());
                }
                json.extend_from_slice(if i + 1 < r.rows.len() { b",\n" } else { b"\n" });
                if json.len() > RESULT_FILE_CAP {
                    return Err(too_big());
                }
            }
            json.push(b']');
        }
        json.push(b'\n');
        drop(r);
        Ok([
            (b"result.csv".to_vec(), csv),
            (b"result.json".to_vec(), json),
        ]
        .into_iter()
        .map(|(n, d)| {
            let d = Arc::new(d);
            files.push(d.clone());
            let v = self.vnode(self.leaf(folder, &n), Some((d, false)));
            (n, Target::Virtual(v))
        })
        .collect())
    }

    fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
        let generation = self.generation.load(Ordering::Acquire);
        let epoch = self.virt.table.lock().epoch;
        let ck = (ino, super::perm::current_viewer());
        if let Some(l) = self.virt.cache.lock().map.get(&ck) {
            if l.generation == generation && l.epoch + 1 >= epoch {
                return Ok(l.clone());
            }
        }
        let key = self.vkey(ino)?;
        let vis = self.visibility()?;
        let mut files = Vec::new();
        let entries = self.compute(ino, &key, &mut files, &vis)?;
        let index: HashMap<Vec<u8>, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let bytes = entries
            .iter()
            .map(|(n, _)| 2 * n.len() + 256)
            .sum::<usize>()
            + files.iter().map(|f| f.len()).sum::<usize>();
        let l = Arc::new(Listing {
            generation,
            epoch,
            entries,
            index,
            files,
            bytes,
        });
        self.virt.cache.lock().insert(ck, l.clone());
        Ok(l)
    }

    fn target_attr(&self, t: &Target) -> Result<Inode> {
        match t {
            Target::Real(i) => Ok(i.clone()),
            Target::Virtual(v) | Target::Alias(v, _) | Target::Window(v, _) => self.v_getattr(*v),
        }
    }

    // ----- operations -----

    pub(super) fn v_lookup(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        let key = self.vkey(parent)?;
        match &key {
            VKey::Leaf(..) => return Err(FsError::NotDir),
            VKey::Window(d) => {
                let t = self.in_window(parent, name, self.lookup(*d, name)?)?;
                return self.target_attr(&t);
            }
            VKey::SqlRoot => {
                let decoded = query::percent_decode(name);
                let sql = String::from_utf8(decoded).map_err(|_| {
                    tracing::warn!("a /sql folder name is not UTF-8");
                    FsError::Invalid("a query must be UTF-8".into())
                })?;
                let v = self.vnode(VKey::Sql(sql), None);
                // Run it now: bad SQL fails the lookup, good SQL is cached.
                self.listing(v)?;
                return self.v_getattr(v);
            }
            VKey::ByTag(terms) if terms.len() == 1 => {
                // In a one-term folder a plain tag that narrows is a listed
                // sub-folder (folders win name clashes): answer it with one
                // EXISTS probe instead of computing the whole listing.
                let term = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| query::parse_term(s).ok());
                if let Some(term) = term {
                    if let Some(t) = term.plain() {
                        let used = terms.iter().any(|x| x.any.iter().any(|a| a.tag() == t));
                        let mut all = terms.clone();
                        all.push(term.clone());
                        let (sql, p) = query::any_match_sql(&all);
                        if !used && !self.meta().strings(&sql, &p)?.is_empty() {
                            let l = self.listing(parent)?;
                            if let Some(&i) = l.index.get(name) {
                                if let Target::Window(v, _) = l.entries[i].1 {
                                    return self.v_getattr(v);
                                }
                            }
                            return self.v_getattr(self.vnode(VKey::ByTag(all), None));
                        }
                    }
                }
            }
            _ => {}
        }
        let quick = self.quick(parent, name)?;
        if let Quick::Entry(i) = quick {
            return Ok(i);
        }
        if !matches!(quick, Quick::Absent) {
            let l = self.listing(parent)?;
            if let Some(&i) = l.index.get(name) {
                return self.target_attr(&l.entries[i].1);
            }
            if let Ok(i) = self.inbox_alias(parent, name) {
                return Ok(self.overlay(i));
            }
        }
        if let VKey::ByTag(terms) = key {
            // Any valid term is a folder, listed or not (OR, NOT, values,
            // tags that do not narrow); a plain tag must exist, and a term
            // on a tag the path already names is none (`/by-tag/x/x` is no
            // folder, so `cp -r x /by-tag/x/` makes a directory `x`).
            let s = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
            let term = query::parse_term(s).map_err(|_| FsError::NotFound)?;
            let named = query::named_tags(&terms);
            if term.any.iter().any(|a| named.contains(&a.tag())) {
                return Err(FsError::NotFound);
            }
            if let Some(t) = term.plain() {
                if !self.meta().tag_exists(t)? {
                    return Err(FsError::NotFound);
                }
            }
            let mut t = terms;
            t.push(term);
            return self.v_getattr(self.vnode(VKey::ByTag(t), None));
        }
        Err(FsError::NotFound)
    }

    pub(super) fn v_opendir(&self, ino: u64) -> Result<u64> {
        let key = self.vkey(ino)?;
        if matches!(key, VKey::Leaf(..)) {
            return Err(FsError::NotDir);
        }
        let l = self.listing(ino)?;
        let me = self.v_getattr(ino)?;
        let mut v = vec![
            DirEntry {
                name: b".".to_vec(),
                attr: me.clone(),
            },
            DirEntry {
                name: b"..".to_vec(),
                attr: me,
            },
        ];
        for (name, t) in &l.entries {
            v.push(DirEntry {
                name: name.clone(),
                attr: self.target_attr(t)?,
            });
        }
        Ok(self.new_fh(Handle::Dir(Arc::new(super::DirSnap {
            ino,
            generation: 0,
            entries: v,
        }))))
    }

    /// setattr(2) on a virtual node: setting the times of a tag folder
    /// succeeds and changes nothing (a folder has no times of its own;
    /// `rsync -a` and `cp -a` set them on every directory they fill).
    /// Anything else is refused.
    pub(super) fn v_setattr(&self, ino: u64, set: &super::SetAttr) -> Result<Inode> {
        // A tag folder has no times, mode or owner of its own: setting them
        // succeeds and changes nothing, so that `cp -a`, `rsync -a` and
        // `tar -x` of a tree into a tag folder do not fail on its folders.
        match self.vkey(ino)? {
            VKey::ByTag(_) if set.size.is_none() => self.v_getattr(ino),
            VKey::Window(d) => {
                let mut i = self.setattr(d, set)?;
                i.ino = ino;
                Ok(i)
            }
            _ => Err(FsError::NotPermitted),
        }
    }

    pub(super) fn v_readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let t = self.virt.table.lock();
        match t.nodes.get(&ino) {
            Some(n) if n.link => Ok(n.data.to_vec()),
            _ => Err(FsError::Invalid("not a symbolic link".into())),
        }
    }

    pub(super) fn v_open(&self, ino: u64) -> Result<u64> {
        let mut held = None;
        for _ in 0..2 {
            let folder = {
                let t = self.virt.table.lock();
                match t.nodes.get(&ino) {
                    Some(n) if !n.link => match &n.key {
                        VKey::Leaf(folder, _) => match n.file.upgrade() {
                            Some(d) => return Ok(self.new_fh(Handle::Virtual(d))),
                            None => *folder,
                        },
                        _ => return Err(FsError::IsDir),
                    },
                    Some(_) => return Err(FsError::IsDir),
                    None => return Err(FsError::NotFound),
                }
            };
            // The listing that made this file left the cache: make it again
            // (and hold it until the file is taken).
            held = Some(self.listing(folder)?);
        }
        drop(held);
        Err(FsError::NotFound)
    }

    /// The real inode behind `name` in a query folder: a file, or the
    /// directory or symlink that a virtual symlink there stands for.
    fn entry_in(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        if let Some(i) = self.quick_entry(parent, name)? {
            return Ok(i);
        }
        let l = self.listing(parent)?;
        match l.index.get(name).map(|&i| &l.entries[i].1) {
            Some(Target::Real(i)) => Ok(i.clone()),
            Some(Target::Alias(_, real) | Target::Window(_, real)) => self.getattr(*real),
            Some(Target::Virtual(v)) if self.v_getattr(*v)?.is_dir() => Err(FsError::IsDir),
            // A query result is no file of the tree.
            Some(Target::Virtual(_)) => Err(FsError::NotPermitted),
            None => self.inbox_alias(parent, name),
        }
    }

    /// The entry `name` of a tag folder when it is, without doubt, the one
    /// regular file of that real name the folder holds: found with a few
    /// indexed queries instead of the whole listing, which every change
    /// makes stale (`rm -r` of a folder of n files would compute n
    /// listings). `None` sends the caller to the listing: a name with `~`
    /// (a clash suffix), the name of a tag (a sub-folder), several or no
    /// candidates, a directory or symlink (shown as aliases), a file listed
    /// deeper (placed), a viewer who may not see everything.
    fn quick_entry(&self, folder: u64, name: &[u8]) -> Result<Option<Inode>> {
        match self.quick(folder, name)? {
            Quick::Entry(i) => Ok(Some(i)),
            _ => Ok(None),
        }
    }

    /// [`Fs::quick_entry`], and also whether the folder surely has no
    /// entry `name` (no file it holds has that real name: a create in a big
    /// folder need not compute its listing to know the name is free).
    fn quick(&self, folder: u64, name: &[u8]) -> Result<Quick> {
        if name.contains(&b'~') || name.contains(&b'=') || !listable(name) {
            return Ok(Quick::Unknown);
        }
        let terms = match self.vkey(folder)? {
            VKey::ByTag(t) if !t.is_empty() => t,
            _ => return Ok(Quick::Unknown),
        };
        if super::perm::current_viewer().is_some_and(|v| v.uid != 0)
            && self.visibility()?.is_some_and(|v| !v.hidden.is_empty())
        {
            return Ok(Quick::Unknown);
        }
        let m = self.meta();
        if let Ok(s) = std::str::from_utf8(name) {
            if m.tag_exists(s)? {
                return Ok(Quick::Unknown);
            }
        }
        let (sql, p) = query::files_sql_named(&terms, Some(name));
        let rows = m.listing(&sql, &p)?;
        if rows.is_empty() {
            return Ok(Quick::Absent);
        }
        let mut hits = rows.into_iter().filter(|(n, _)| n == name);
        let (Some((_, i)), None) = (hits.next(), hits.next()) else {
            return Ok(Quick::Unknown);
        };
        if i.kind != kind::FILE {
            return Ok(Quick::Unknown);
        }
        drop(m);
        Ok(Quick::Entry(self.overlay(i)))
    }

    /// A file of /inbox that tools still address through a tag folder by a
    /// name it is not listed under: another of its names there (after `ln
    /// tmp final`). Nothing else: a name of the folder never reaches a file
    /// of another folder (a file of /inbox stripped of its tags is in no
    /// folder; rsync -X does not strip the tags a file was put in a folder
    /// with, as they are not listed).
    fn inbox_alias(&self, folder: u64, name: &[u8]) -> Result<Inode> {
        if !matches!(self.vkey(folder)?, VKey::ByTag(t) if !t.is_empty()) {
            return Err(FsError::NotFound);
        }
        self.other_inbox_name(folder, name)
    }

    /// What putting a file into a folder of `terms` sets: every positive
    /// term must be a plain tag or `tag=value`.
    fn settable(terms: &[Term]) -> Result<Vec<(String, Option<String>)>> {
        let mut set = Vec::new();
        for t in terms {
            match (t.negated, t.any.as_slice()) {
                (true, _) => {}
                (false, [query::Atom::Tag(n)]) => set.push((n.clone(), None)),
                (false, [query::Atom::Cmp(n, query::Op::Eq, v)]) => {
                    set.push((n.clone(), Some(v.clone())))
                }
                _ => {
                    tracing::warn!(
                        "cannot put a file into {t:?}: only plain tags and tag=value are settable"
                    );
                    return Err(FsError::NotPermitted);
                }
            }
        }
        if set.is_empty() {
            return Err(FsError::NotPermitted);
        }
        Ok(set)
    }

    /// Tags `ino` so that it matches `terms` (each positive term must say
    /// what to set: a tag, or `tag=value`).
    /// A file living only in /inbox (made through a tag folder) gets them
    /// as placed tags, numbered along the folder's path.
    fn tag_into(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let set = Self::settable(terms)?;
        let placed = self.lives_in_inbox(&self.getattr(ino)?)?;
        let now = super::now_ns();
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            for (k, (n, v)) in set.iter().enumerate() {
                if placed {
                    m.place_file_tag(ino, n, v.as_deref(), k as u32 + 1, now)?;
                } else {
                    m.set_file_tag(ino, n, v.as_deref(), now)?;
                }
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Gives `ino` every tag of `from` (with its value), and the user
    /// xattrs of `from` that `ino` lacks: a file that takes another's place
    /// keeps what was said about it.
    fn inherit(&self, ino: u64, from: u64) -> Result<()> {
        let said = self.said_about(from)?;
        self.take_said(ino, said)
    }

    /// The tags (with values and placed positions) and user xattrs of
    /// `ino`; nothing for a file that is gone.
    fn said_about(&self, ino: u64) -> Result<Said> {
        let m = self.meta();
        if m.inode(ino)?.is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        let tags = m.file_tags_placed(ino)?;
        let mut xattrs = Vec::new();
        for n in m.xattr_names(ino)? {
            if let Some(v) = m.xattr(ino, &n)? {
                xattrs.push((n, v));
            }
        }
        Ok((tags, xattrs))
    }

    /// Gives `ino` the tags of `said`, and its xattrs that `ino` lacks.
    fn take_said(&self, ino: u64, said: Said) -> Result<()> {
        let (tags, xattrs) = said;
        if tags.is_empty() && xattrs.is_empty() {
            return Ok(());
        }
        let now = super::now_ns();
        let placed = self.lives_in_inbox(&self.getattr(ino)?)?;
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            for (n, v, at) in &tags {
                if placed && *at > 0 {
                    m.place_file_tag(ino, n, v.as_deref(), *at, now)?;
                } else {
                    m.set_file_tag(ino, n, v.as_deref(), now)?;
                }
            }
            for (n, v) in &xattrs {
                if m.xattr(ino, n)?.is_none() {
                    m.set_xattr(ino, n, v)?;
                }
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Removes the tags of the innermost term of a folder from `ino`.
    fn untag_from(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let last = terms.last().ok_or(FsError::NotPermitted)?;
        if last.negated {
            return Err(FsError::NotPermitted);
        }
        self.untag(ino, &[last])
    }

    /// Removes the tags of the first positive term of a folder from `ino`
    /// (`x` of `/by-tag/x/family/`): what `rm` and `mv` out take away, so
    /// that `rm -r /by-tag/x` or `rsync --delete SRC/ /by-tag/x/` only
    /// ever take away `x`, never a tag of a sub-folder they walk through.
    fn untag_first(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let first = terms
            .iter()
            .find(|t| !t.negated)
            .ok_or(FsError::NotPermitted)?;
        self.untag(ino, &[first])
    }

    /// Whether every name of `i` lies in /inbox (or a slot): a file that
    /// exists because a tag folder made it.
    pub(super) fn lives_in_inbox(&self, i: &Inode) -> Result<bool> {
        if i.is_dir() {
            return self.made_in_folder(i.ino);
        }
        if i.nlink == 0 {
            return Ok(false);
        }
        Ok(self.inbox_names(i.ino)?.len() == i.nlink as usize)
    }

    /// Removes the tags of `terms` from `ino`.
    fn untag(&self, ino: u64, terms: &[&Term]) -> Result<()> {
        let now = super::now_ns();
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            for t in terms.iter().filter(|t| !t.negated) {
                for a in &t.any {
                    m.delete_file_tag(ino, a.tag())?;
                }
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    // ----- the real tree, changed on behalf of a query folder -----

    /// Reports `name` in real directory `parent` as changed behind the
    /// kernel's back.
    ///
    /// The request waits (up to [`INVAL_WAIT`]) until the kernel has
    /// dropped the name, so that the caller's next call cannot find the
    /// stale one: a write to the old name of a file renamed through a folder
    /// must not land in the renamed file. A name in a directory of the
    /// request itself is dropped after the reply (the kernel holds that
    /// directory's lock until then), and so is every name when the kernel
    /// is slow to take the lock (another request holds it).
    pub(super) fn changed_behind_kernel(&self, parent: u64, name: &[u8]) {
        let (a, b) = REQUEST_DIRS.with(|c| c.get());
        self.report_name(parent, name, parent != a && parent != b);
    }

    /// Reports a changed name, waiting for the kernel if `wait`.
    pub(super) fn report_name(&self, parent: u64, name: &[u8], wait: bool) {
        let Some(tx) = self.virt.changed.lock().clone() else {
            return;
        };
        if wait {
            let (ack, done) = std::sync::mpsc::sync_channel(1);
            if tx.send((parent, name.to_vec(), Some(ack))).is_ok() {
                let _ = done.recv_timeout(INVAL_WAIT);
            }
        } else {
            let _ = tx.send((parent, name.to_vec(), None));
        }
    }

    /// A rename moved real directory `ino` into tag folder `folder` as
    /// `name`: the kernel moves its cached name there after the reply. That
    /// name is dropped right after the reply, and lookups by the real path
    /// wait for it ([`Fs::wait_moved`]).
    fn moved_into_folder(&self, ino: u64, folder: u64, name: &[u8]) {
        let Some(tx) = self.virt.changed.lock().clone() else {
            return;
        };
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if tx.send((folder, name.to_vec(), Some(ack))).is_err() {
            return;
        }
        self.virt.moved.0.lock().insert(ino);
        let moved = self.virt.moved.clone();
        let spawned = std::thread::Builder::new()
            .name("queryfs-moved".into())
            .spawn(move || {
                let _ = done.recv_timeout(INVAL_WAIT);
                moved.0.lock().remove(&ino);
                moved.1.notify_all();
            });
        if spawned.is_err() {
            self.virt.moved.0.lock().remove(&ino);
        }
    }

    /// Waits (at most [`INVAL_WAIT`]) until the kernel's name of directory
    /// `ino` in a tag folder, left there by a rename into the folder, is
    /// dropped.
    pub fn wait_moved(&self, ino: u64) {
        let (set, cv) = &*self.virt.moved;
        let mut m = set.lock();
        let until = std::time::Instant::now() + INVAL_WAIT;
        while m.contains(&ino) {
            if cv.wait_until(&mut m, until).timed_out() {
                break;
            }
        }
    }

    /// Where real names changed on behalf of query folders are reported:
    /// the kernel caches real names for a second and saw only the folder's
    /// side of such an operation, so the mount drops each reported name
    /// from the kernel's cache (from another thread: the kernel may hold
    /// the directory's lock until the reply of the running request).
    /// `None` stops the reports.
    pub fn on_real_names_changed(&self, tx: Option<NameReports>) {
        *self.virt.changed.lock() = tx;
    }

    /// Where the store is mounted (see [`Virt::mountpoint`]).
    pub fn set_mountpoint(&self, path: &std::path::Path) {
        use std::os::unix::ffi::OsStrExt;
        *self.virt.mountpoint.lock() = Some(path.as_os_str().as_bytes().to_vec());
    }

    fn real_rename(&self, p: u64, n: &[u8], np: u64, nn: &[u8], flags: u32) -> Result<()> {
        self.rename(p, n, np, nn, flags)?;
        self.changed_behind_kernel(p, n);
        self.changed_behind_kernel(np, nn);
        Ok(())
    }

    fn real_unlink(&self, p: u64, n: &[u8]) -> Result<()> {
        self.unlink(p, n)?;
        self.changed_behind_kernel(p, n);
        Ok(())
    }

    fn real_rmdir(&self, p: u64, n: &[u8]) -> Result<()> {
        self.rmdir(p, n)?;
        self.changed_behind_kernel(p, n);
        Ok(())
    }

    fn real_create(&self, p: u64, n: &[u8], perm: u32, caller: Caller) -> Result<(Inode, u64)> {
        let r = self.create(p, n, perm, caller)?;
        self.changed_behind_kernel(p, n);
        Ok(r)
    }

    fn real_link(&self, ino: u64, p: u64, n: &[u8]) -> Result<Inode> {
        let r = self.link(ino, p, n)?;
        self.changed_behind_kernel(p, n);
        Ok(r)
    }

    fn real_mkdir(&self, p: u64, n: &[u8], perm: u32, caller: Caller) -> Result<Inode> {
        let r = self.mkdir(p, n, perm, caller)?;
        self.changed_behind_kernel(p, n);
        Ok(r)
    }

    // ----- /inbox: the home of files made through tag folders -----

    /// `/inbox`, made on first use.
    fn inbox(&self, caller: Caller) -> Result<Inode> {
        match self.lookup(ROOT, INBOX) {
            Ok(i) if i.is_dir() => Ok(i),
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => {
                let i = self.real_mkdir(ROOT, INBOX, 0o755, caller)?;
                self.tx(|m, _| Ok(m.store_set(INBOX_KEY, &i.ino.to_string())?))?;
                *self.virt.inbox_ino.lock() = Some(Some(i.ino));
                Ok(i)
            }
            Err(e) => Err(e),
        }
    }

    /// A free real place for a file named `name` in a tag folder:
    /// `/inbox/NAME`, else `/inbox/2/NAME`, `/inbox/3/NAME`, ..., so that
    /// the file keeps the very name it was given in the folder.
    fn inbox_slot(&self, name: &[u8], caller: Caller) -> Result<(u64, Vec<u8>)> {
        let inbox = self.inbox(caller)?;
        let free = |dir: u64| match self.lookup(dir, name) {
            Err(FsError::NotFound) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        if free(inbox.ino)? {
            return Ok((inbox.ino, name.to_vec()));
        }
        for k in 2..=SLOT_MAX {
            let slot = k.to_string().into_bytes();
            let dir = match self.lookup(inbox.ino, &slot) {
                Ok(d) if d.is_dir() => d,
                Ok(_) => continue,
                Err(FsError::NotFound) => self.real_mkdir(inbox.ino, &slot, 0o755, caller)?,
                Err(e) => return Err(e),
            };
            if free(dir.ino)? {
                return Ok((dir.ino, name.to_vec()));
            }
        }
        Err(FsError::Exists)
    }

    /// The numbered slot `dir` of /inbox: its name there, if it is one.
    fn slot_of(&self, dir: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(inbox) = self.our_inbox()? else {
            return Ok(None);
        };
        let place = self.meta().parent_of(dir)?;
        Ok(place.filter(|(p, n)| *p == inbox.ino && is_slot_name(n)))
    }

    fn is_inbox_dir(&self, dir: u64) -> Result<bool> {
        match self.our_inbox()? {
            Some(i) if i.ino == dir => Ok(true),
            Some(_) => Ok(self.slot_of(dir)?.is_some()),
            None => Ok(false),
        }
    }

    /// `/inbox` when queryfs made it (its inode number is kept in the
    /// store): a user's own folder of that name is never taken for it, so
    /// nothing of it is deleted through a tag folder.
    fn our_inbox(&self) -> Result<Option<Inode>> {
        let Ok(i) = self.lookup(ROOT, INBOX) else {
            return Ok(None);
        };
        Ok((i.is_dir() && self.inbox_ino()? == Some(i.ino)).then_some(i))
    }

    /// The inode number of the `/inbox` queryfs made, read from the store
    /// once per mount (only [`Fs::inbox`] changes it).
    fn inbox_ino(&self) -> Result<Option<u64>> {
        let mut known = self.virt.inbox_ino.lock();
        if known.is_none() {
            let stored = self.meta().store_get(INBOX_KEY)?;
            *known = Some(stored.and_then(|v| v.parse().ok()));
        }
        Ok(known.flatten())
    }

    /// The one real name of `i` when it lies in /inbox (or a slot): a file
    /// that exists only because a tag folder made it.
    fn inbox_place(&self, i: &Inode) -> Result<Option<(u64, Vec<u8>)>> {
        if i.is_dir() || i.nlink != 1 {
            return Ok(None);
        }
        let place = self.meta().parent_of(i.ino)?;
        match place {
            Some((p, n)) if self.is_inbox_dir(p)? => Ok(Some((p, n))),
            _ => Ok(None),
        }
    }

    /// Removes a numbered slot of /inbox that a file just left, if empty.
    fn tidy_slot(&self, dir: u64) {
        if let Ok(Some((inbox, name))) = self.slot_of(dir) {
            // Fails harmlessly (ENOTEMPTY) while the slot holds a file.
            let _ = self.real_rmdir(inbox, &name);
        }
    }

    /// One real (parent, name) of `ino`.
    fn place_of(&self, ino: u64) -> Result<(u64, Vec<u8>)> {
        self.meta().parent_of(ino)?.ok_or(FsError::NotFound)
    }

    /// Whether `name` is free in `parent`, which must still be a directory
    /// (a vacated place whose directory was removed since is no place).
    fn is_free(&self, parent: u64, name: &[u8]) -> Result<bool> {
        match self.getattr(parent) {
            Ok(d) if d.is_dir() && d.nlink > 0 => {}
            Ok(_) | Err(FsError::NotFound | FsError::Stale) => return Ok(false),
            Err(e) => return Err(e),
        }
        match self.lookup(parent, name) {
            Err(FsError::NotFound) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn remember<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
        if map.len() >= MEMORY_CAP {
            map.clear();
        }
        map.insert(k, v);
    }

    /// A name vacated in `folder` that a new file may take: the place it
    /// had, when that place is still free and the file that left is not
    /// `not`.
    fn take_vacated(&self, folder: u64, name: &[u8], not: u64) -> Result<Option<Vacated>> {
        let v = self.virt.vacated.lock().remove(&(folder, name.to_vec()));
        match v {
            Some(v)
                if v.ino != not
                    && v.at.elapsed() < VACATED_FOR
                    && self.is_free(v.parent, &v.name)? =>
            {
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }

    /// An entry of `folder` that `rm` untagged moments ago in this very
    /// process, whose file is still at the real place it had.
    fn take_unlinked(&self, folder: u64, name: &[u8]) -> Result<Option<Vacated>> {
        let pid = REQUEST_PID.with(|c| c.get());
        let e = self.virt.unlinked.lock().remove(&(folder, name.to_vec()));
        match e {
            Some((v, by))
                if by == pid
                    && pid != 0
                    && v.at.elapsed() < VACATED_FOR
                    && matches!(self.lookup(v.parent, &v.name), Ok(i) if i.ino == v.ino) =>
            {
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }

    /// `new` took the place that `v.ino` left: it inherits its tags and
    /// xattrs (the old file stays where the rename put it).
    fn succeed(&self, new: u64, v: &Vacated) -> Result<()> {
        self.inherit(new, v.ino)
    }

    /// mkdir through a query folder: in a window, a real directory; in
    /// `/by-tag` itself, a tag; in a tag folder, a directory made in
    /// `/inbox` with the folder's tags, shown there as a window (what
    /// `cp -r`, `rsync` and `tar -x` of a tree need: the tree stays a tree).
    pub(super) fn v_mkdir(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<Inode> {
        if let Some(d) = self.window_dir(parent) {
            return Ok(self.through_window(self.real_mkdir(d, name, perm, caller)?));
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        if !terms.is_empty() {
            Self::settable(&terms)?;
            let (p, n) = self.inbox_slot(name, caller)?;
            let d = self.real_mkdir(p, &n, perm, caller)?;
            self.tag_into(d.ino, &terms)?;
            return Ok(self.through_window(self.getattr(d.ino)?));
        }
        let s = std::str::from_utf8(name)
            .map_err(|_| FsError::Invalid("a tag must be UTF-8".into()))?;
        if let Err(e) = query::check_tag(s) {
            tracing::warn!("mkdir in /by-tag: {e}");
            return Err(e.into());
        }
        let now = super::now_ns();
        self.tx(|m, _| {
            if m.tag_exists(s)? {
                return Err(FsError::Exists);
            }
            Ok(m.create_tag(s, now)?)
        })?;
        self.v_getattr(self.vnode(VKey::ByTag(vec![Term::tag(s)]), None))
    }

    pub(super) fn v_rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if let Some(d) = self.window_dir(parent) {
            return self.real_rmdir(d, name);
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        if !terms.is_empty() {
            let l = self.listing(parent)?;
            if let Some(Target::Window(_, d)) = l.index.get(name).map(|&i| &l.entries[i].1) {
                return self.rmdir_window(*d, &terms);
            }
        }
        let s = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let term = query::parse_term(s).map_err(|_| FsError::NotFound)?;
        if !terms.is_empty() {
            // A narrowing folder is not a thing of its own: removing it
            // succeeds once it shows nothing (what `rm -r` needs).
            // A tag no file holds any more goes with it (the tags that
            // `cp -r DIR /by-tag/x/` made for DIR's sub-directories go with
            // `rm -r /by-tag/x`, as `mkdir /by-tag/x/NAME` made them).
            let mut t = terms;
            t.push(term.clone());
            let v = self.vnode(VKey::ByTag(t), None);
            let l = self.listing(v)?;
            if l.entries
                .iter()
                .any(|(_, t)| matches!(t, Target::Real(_) | Target::Alias(..) | Target::Window(..)))
            {
                return Err(FsError::NotEmpty);
            }
            if let Some(tag) = term.plain() {
                self.tx(|m, _| {
                    if m.tag_exists(tag)? && !m.tag_used(tag)? {
                        m.delete_tag(tag)?;
                    }
                    Ok(())
                })?;
            }
            return Ok(());
        }
        let tag = term.plain().ok_or(FsError::NotPermitted)?.to_string();
        self.tx(|m, _| {
            if !m.tag_exists(&tag)? {
                return Err(FsError::NotFound);
            }
            if m.tag_used(&tag)? {
                return Err(FsError::NotEmpty);
            }
            Ok(m.delete_tag(&tag)?)
        })
    }

    /// rmdir of a directory made through a tag folder, through one of its
    /// folders: it leaves the folder; it goes (when empty) once no tag is
    /// left that the user gave it, as a file of /inbox does.
    fn rmdir_window(&self, d: u64, terms: &[Term]) -> Result<()> {
        let folder: Vec<&str> = query::named_tags(terms);
        let kept = self
            .meta()
            .file_tags_placed(d)?
            .into_iter()
            .any(|(t, _, placed)| placed == 0 && !folder.contains(&t.as_str()));
        if !kept {
            if !self.meta().list_dir(d)?.is_empty() {
                return Err(FsError::NotEmpty);
            }
            let (p, n) = self.place_of(d)?;
            self.real_rmdir(p, &n)?;
            self.tidy_slot(p);
            return Ok(());
        }
        let all: Vec<&Term> = terms.iter().collect();
        self.untag(d, &all)
    }

    /// rm through a tag folder; see the README table. The old file of a
    /// save through the folder is deleted (its content lives on in the
    /// file that took its place); a file that lives only in /inbox leaves
    /// the folder with all the folder's tags and is deleted when no tag is
    /// left (it exists for its tags, as a file exists for its names); any
    /// other file loses the innermost term's tags and stays where it is.
    pub(super) fn v_unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        if let Some(d) = self.window_dir(parent) {
            // A file that carries a tag the user gave it still lives for that
            // tag (as for another name): it leaves this directory for /inbox
            // and stays in its folders (`rm -r /by-tag/x` of a copied tree
            // must not take a file the user also put in /by-tag/keep).
            let i = self.lookup(d, name)?;
            if i.is_dir() || i.nlink == 1 {
                let tags = self.meta().file_tags_placed(i.ino)?;
                if tags.iter().any(|(_, _, placed)| *placed == 0) {
                    let (p, n) = self.inbox_slot(name, Caller::ROOT)?;
                    return self.real_rename(d, name, p, &n, libc::RENAME_NOREPLACE);
                }
            }
            return self.real_unlink(d, name);
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        if terms.is_empty() {
            return Err(FsError::IsDir);
        }
        if terms.iter().all(|t| t.negated) {
            return Err(FsError::NotPermitted);
        }
        let i = self.entry_in(parent, name)?;
        // A file with a home outside /inbox is never deleted through a tag
        // folder (an editor's old copy included: what looks like a backup
        // may be a file the user renamed): it only loses the folder's tag.
        if let Some((p, n)) = self.inbox_place(&i)? {
            let all: Vec<&Term> = terms.iter().collect();
            self.untag(i.ino, &all)?;
            // Deleted when no tag is left that the user gave it: the tags of
            // where it was put (a copied tree's path) do not keep it.
            let left = self.meta().file_tags_placed(i.ino)?;
            if left.iter().all(|(_, _, placed)| *placed > 0) {
                self.real_unlink(p, &n)?;
                self.tidy_slot(p);
            } else {
                // Kept for a tag of the user's: the same process making
                // the name anew replaces it (`install` over it).
                self.remember_unlinked(parent, name, i.ino, p, n);
            }
            return Ok(());
        }
        if i.nlink > 1 && !i.is_dir() {
            // Its name in /inbox (the one shown) goes when it has others
            // elsewhere (`ln /by-tag/x/F /by-tag/x/D/G; rm /by-tag/x/F`).
            let names = self.inbox_names(i.ino)?;
            if let Some((p, n)) = names.iter().find(|(_, n)| n == name).cloned() {
                if names.len() < i.nlink as usize {
                    self.real_unlink(p, &n)?;
                    self.tidy_slot(p);
                    return Ok(());
                }
            }
        }
        if let Some((p, n)) = self.inbox_name(&i, name)? {
            // One of several names in /inbox (`ln tmp final && rm tmp`, as
            // git does): that name goes, as in a directory; the file stays.
            self.real_unlink(p, &n)?;
            self.tidy_slot(p);
            return Ok(());
        }
        self.untag_first(i.ino, &terms)?;
        if !i.is_dir() {
            // The same process creating this name next replaces the file.
            if let Ok((rp, rn)) = self.place_of(i.ino) {
                self.remember_unlinked(parent, name, i.ino, rp, rn);
            }
        }
        Ok(())
    }

    /// Remembers that this request's process removed entry `name` of
    /// `folder`, whose file `ino` stays at real place (`p`, `n`).
    fn remember_unlinked(&self, folder: u64, name: &[u8], ino: u64, p: u64, n: Vec<u8>) {
        let pid = REQUEST_PID.with(|c| c.get());
        if pid == 0 {
            return;
        }
        let v = Vacated {
            ino,
            parent: p,
            name: n,
            at: std::time::Instant::now(),
        };
        Self::remember(
            &mut self.virt.unlinked.lock(),
            (folder, name.to_vec()),
            (v, pid),
        );
    }

    pub(super) fn v_link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Inode> {
        if let Some(d) = self.window_dir(newparent) {
            return self.real_link(ino, d, newname);
        }
        let _dirs = RequestDirs::set(newparent, 0);
        if is_virtual(ino) {
            return Err(FsError::NotPermitted);
        }
        let terms = self.terms_of(newparent)?;
        let i = self.getattr(ino)?;
        if !i.is_dir() && self.inbox_names(ino)?.len() == i.nlink as usize {
            // A file that lives only in /inbox gets a real second name
            // there (`ln tmp final && rm tmp` must keep the file).
            let (p, _) = self.place_of(ino)?;
            let (np, nn) = if self.is_free(p, newname)? {
                (p, newname.to_vec())
            } else {
                self.inbox_slot(newname, Caller::ROOT)?
            };
            self.real_link(ino, np, &nn)?;
        }
        self.tag_into(ino, &terms)?;
        self.getattr(ino)
    }

    /// An entry of `folder` listed under another name that also has the
    /// real name `name` in /inbox (after `ln tmp final` in the folder the
    /// file is listed once, as `final`; `rm tmp` means this file).
    fn other_inbox_name(&self, folder: u64, name: &[u8]) -> Result<Inode> {
        let l = self.listing(folder)?;
        for (_, t) in &l.entries {
            if let Target::Real(i) = t {
                if i.nlink > 1
                    && !i.is_dir()
                    && self.inbox_names(i.ino)?.iter().any(|(_, n)| n == name)
                {
                    return Ok(i.clone());
                }
            }
        }
        Err(FsError::NotFound)
    }

    /// Every real name of `ino` that lies in /inbox (or a slot).
    fn inbox_names(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        // (Bound first: the metadata lock must not be held in the loop.)
        let names = self.meta().names_of(ino)?;
        for (p, n) in names {
            if self.is_inbox_dir(p)? {
                out.push((p, n));
            }
        }
        Ok(out)
    }

    /// For a file with several names, all in /inbox: the name to remove
    /// when `shown` is removed through a tag folder (the name it is shown
    /// by, else its first one).
    fn inbox_name(&self, i: &Inode, shown: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        if i.is_dir() || i.nlink < 2 {
            return Ok(None);
        }
        let names = self.inbox_names(i.ino)?;
        if names.len() != i.nlink as usize {
            return Ok(None);
        }
        Ok(names
            .iter()
            .find(|(_, n)| n == shown)
            .or(names.first())
            .cloned())
    }

    /// rename(2) where either side is in a query folder; the README's
    /// table gives every case. In short: into a tag folder tags in place
    /// (files and directories); within one tag folder renames the real
    /// file, and onto an entry replaces that entry's real file (an atomic
    /// save); between tag folders retags; out of a query folder moves the
    /// real file (from a tag folder also removing the innermost tags).
    pub(super) fn v_rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let _dirs = RequestDirs::set(parent, newparent);
        // A window is the real directory it shows.
        let (wparent, wnewparent) = (parent, newparent);
        let parent = self.window_dir(parent).unwrap_or(parent);
        let newparent = self.window_dir(newparent).unwrap_or(newparent);
        if !is_virtual(parent) && !is_virtual(newparent) {
            let i = self.lookup(parent, name)?;
            self.real_rename(parent, name, newparent, newname, flags)?;
            if i.is_dir() && wparent == parent && wnewparent != newparent {
                // The kernel moves its name of the real directory into the
                // window: dropped before a lookup by the real path answers.
                self.moved_into_folder(i.ino, wnewparent, newname);
            }
            return Ok(());
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let from = self.side(parent)?;
        let to = self.side(newparent)?;
        if let (Side::Tags(f), Side::Tags(t)) = (&from, &to) {
            if f.is_empty() && t.is_empty() {
                return self.rename_tag(name, newname);
            }
        }
        let i = match from {
            Side::Real => self.lookup(parent, name)?,
            _ => self.entry_in(parent, name).map_err(|e| match e {
                FsError::IsDir => FsError::NotPermitted,
                e => e,
            })?,
        };
        if is_virtual(i.ino) {
            return Err(FsError::Busy);
        }
        match (from, to) {
            (Side::Real, Side::Real) => unreachable!("a rename between real folders"),
            (_, Side::Query) => Err(FsError::NotPermitted),
            (from, Side::Real) => {
                // Out of a query folder: the real file moves.
                let (p, n) = self.place_of(i.ino)?;
                self.real_rename(p, &n, newparent, newname, flags)?;
                self.tidy_slot(p);
                if let Side::Tags(f) = from {
                    if f.iter().any(|t| !t.negated) {
                        self.untag_first(i.ino, &f)?;
                    }
                }
                Ok(())
            }
            (_, Side::Tags(t)) if t.is_empty() => Err(FsError::NotPermitted),
            (Side::Real, Side::Tags(t)) if wparent != parent => {
                // Out of a window (a tree copied into /inbox) into a tag
                // folder: the entry leaves that tree, as the user sees it
                // leave the directory: onto an entry, it replaces that
                // entry's real file; otherwise it moves to /inbox.
                Self::settable(&t)?;
                let l = self.listing(newparent)?;
                if let Some(Target::Real(y)) = l.index.get(newname).map(|&k| &l.entries[k].1) {
                    if y.ino == i.ino {
                        return Ok(());
                    }
                    if noreplace || i.is_dir() {
                        return Err(FsError::Exists);
                    }
                    let (yp, yn) = self.place_of(y.ino)?;
                    self.inherit(i.ino, y.ino)?;
                    return self.real_rename(parent, name, yp, &yn, 0);
                }
                let (p, n) = self.inbox_slot(newname, Caller::ROOT)?;
                self.real_rename(parent, name, p, &n, libc::RENAME_NOREPLACE)?;
                self.tag_into(i.ino, &t)
            }
            (Side::Real, Side::Tags(t)) => {
                // Into a tag folder: tagged where it is (and renamed there
                // when given another name).
                Self::settable(&t)?;
                if newname != name {
                    self.real_rename(parent, name, parent, newname, libc::RENAME_NOREPLACE)?;
                }
                self.tag_into(i.ino, &t)?;
                if i.is_dir() && wparent == parent {
                    self.moved_into_folder(i.ino, newparent, newname);
                }
                Ok(())
            }
            (Side::Query, Side::Tags(t)) => self.tag_into(i.ino, &t),
            (Side::Tags(_), Side::Tags(_)) if parent == newparent => {
                self.rename_within(parent, &i, name, newname, noreplace)
            }
            (Side::Tags(f), Side::Tags(t)) => {
                Self::settable(&t)?;
                if newname != name {
                    // Given another name: renamed where it really is (EEXIST
                    // there, before anything changes, if the name is taken).
                    let (p, n) = self.place_of(i.ino)?;
                    self.real_rename(p, &n, p, newname, libc::RENAME_NOREPLACE)?;
                }
                if f.last().is_some_and(|t| !t.negated) {
                    self.untag_from(i.ino, &f)?;
                }
                self.tag_into(i.ino, &t)
            }
        }
    }

    /// What kind of folder `ino` is, for rename.
    fn side(&self, ino: u64) -> Result<Side> {
        if !is_virtual(ino) {
            return Ok(Side::Real);
        }
        match self.vkey(ino)? {
            VKey::ByTag(t) => Ok(Side::Tags(t)),
            VKey::Leaf(..) => Err(FsError::NotDir),
            _ => Ok(Side::Query),
        }
    }

    fn rename_tag(&self, name: &[u8], newname: &[u8]) -> Result<()> {
        let old = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let new = std::str::from_utf8(newname)
            .map_err(|_| FsError::Invalid("a tag must be UTF-8".into()))?;
        query::check_tag(new)?;
        self.tx(|m, _| {
            if !m.tag_exists(old)? {
                return Err(FsError::NotFound);
            }
            if m.tag_exists(new)? {
                return Err(FsError::Exists);
            }
            Ok(m.rename_tag(old, new)?)
        })
    }

    /// A rename within one tag folder: of the real file `e`.
    fn rename_within(
        &self,
        folder: u64,
        e: &Inode,
        name: &[u8],
        newname: &[u8],
        noreplace: bool,
    ) -> Result<()> {
        let l = self.listing(folder)?;
        let (ep, en) = self.place_of(e.ino)?;
        // A file of /inbox reached by a name the folder does not list (a
        // tool took the folder's tags off its temporary file) is put back
        // into the folder by the rename, as a rename keeps a file in its
        // directory.
        if !l.index.contains_key(name) && self.lives_in_inbox(e)? {
            self.tag_into(e.ino, &self.terms_of(folder)?)?;
        }
        if l.index.contains_key(newname) {
            let y = self.entry_in(folder, newname)?;
            if y.ino == e.ino {
                return Ok(());
            }
            if noreplace {
                return Err(FsError::Exists);
            }
            if e.is_dir() || y.is_dir() {
                return Err(FsError::Exists);
            }
            // Onto another entry (an atomic save): `e` replaces that
            // entry's real file at its real place, and keeps its tags.
            let (yp, yn) = self.place_of(y.ino)?;
            self.inherit(e.ino, y.ino)?;
            self.real_rename(ep, &en, yp, &yn, 0)?;
            self.tidy_slot(ep);
            return Ok(());
        }
        if let Some(v) = self.take_unlinked(folder, newname)? {
            // The process that just removed this entry renames a file onto
            // its name (`os.remove(F)`, then `os.rename(tmp, F)`): the file
            // takes the removed one's real place, as in a directory.
            if !e.is_dir() && v.ino != e.ino {
                let said = self.said_about(v.ino)?;
                self.real_rename(ep, &en, v.parent, &v.name, 0)?;
                self.tidy_slot(ep);
                return self.take_said(e.ino, said);
            }
        }
        let made_here = self.inbox_place(e)?.is_some();
        if let Some(v) = made_here
            .then(|| self.take_vacated(folder, newname, e.ino))
            .transpose()?
            .flatten()
        {
            // A file made through the folder, onto a name a file just left:
            // that file's real place (an editor writing a temporary file,
            // moving the original aside and renaming the temporary file).
            // A file with a home of its own stays in its own directory.
            self.real_rename(ep, &en, v.parent, &v.name, libc::RENAME_NOREPLACE)?;
            self.tidy_slot(ep);
            return self.succeed(e.ino, &v);
        }
        // A new name, where the file really is (a file of /inbox takes
        // the next free slot rather than fail).
        let (np, nn) = if self.inbox_place(e)?.is_some() && !self.is_free(ep, newname)? {
            self.inbox_slot(newname, Caller::ROOT)?
        } else {
            (ep, newname.to_vec())
        };
        self.real_rename(ep, &en, np, &nn, libc::RENAME_NOREPLACE)?;
        if np != ep {
            self.tidy_slot(ep);
        }
        let v = Vacated {
            ino: e.ino,
            parent: ep,
            name: en,
            at: std::time::Instant::now(),
        };
        Self::remember(&mut self.virt.vacated.lock(), (folder, name.to_vec()), v);
        Ok(())
    }

    /// create(2) in a tag folder. The new file takes the real place of a
    /// file that just left this name by a rename within the folder (an
    /// editor's save); otherwise it lives in `/inbox`. Either way it is
    /// tagged with the folder's tags.
    pub(super) fn v_create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Inode, u64)> {
        if let Some(d) = self.window_dir(parent) {
            return self.real_create(d, name, perm, caller);
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        Self::settable(&terms)?;
        if let Some(v) = self.take_vacated(parent, name, 0)? {
            let (attr, fh) = self.real_create(v.parent, &v.name, perm, caller)?;
            self.tag_into(attr.ino, &terms)?;
            self.succeed(attr.ino, &v)?;
            return Ok((attr, fh));
        }
        if let Some(v) = self.take_unlinked(parent, name)? {
            // The process that just removed this entry makes it anew
            // (`install`, `cp --remove-destination`, `tar -x`): the old
            // file's name goes and the new file takes its place, as unlink
            // and create do in a directory; it keeps the old file's tags.
            let said = self.said_about(v.ino)?;
            self.real_unlink(v.parent, &v.name)?;
            let (attr, fh) = self.real_create(v.parent, &v.name, perm, caller)?;
            self.tag_into(attr.ino, &terms)?;
            self.take_said(attr.ino, said)?;
            return Ok((attr, fh));
        }
        let (p, n) = self.inbox_slot(name, caller)?;
        let (attr, fh) = self.real_create(p, &n, perm, caller)?;
        self.tag_into(attr.ino, &terms)?;
        Ok((attr, fh))
    }
}

/// Tags and saved queries for the CLI.
impl Fs {
    /// Checks users' SQL without running it.
    pub fn check_query(&self, sql: &str) -> std::result::Result<(), String> {
        self.with_sandbox(None, |sb| sb.check(sql).map(|_| ()))
    }

    /// Every tag with the number of files holding it.
    pub fn tag_counts(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.meta().tag_counts()?)
    }

    /// Every tag name, used or not.
    pub fn tag_names(&self) -> Result<Vec<String>> {
        Ok(self.meta().tag_names()?)
    }

    /// Creates a tag unless it exists.
    pub fn ensure_tag(&self, name: &str) -> Result<()> {
        query::check_tag(name)?;
        let now = super::now_ns();
        self.tx(|m, _| {
            if !m.tag_exists(name)? {
                m.create_tag(name, now)?;
            }
            Ok(())
        })
    }

    /// A file's tags.
    pub fn file_tags(&self, ino: u64) -> Result<Vec<query::TagItem>> {
        Ok(self.meta().file_tags(ino)?)
    }

    /// Saves (or replaces) a user query after checking it.
    pub fn save_query(&self, name: &str, sql: &str) -> Result<()> {
        saved::check_name(name)?;
        self.check_query(sql).map_err(FsError::Invalid)?;
        let now = super::now_ns();
        self.tx(|m, _| Ok(m.save_query(name, sql, now)?))
    }

    /// Deletes a user query; `NotFound` if there is none.
    pub fn delete_query(&self, name: &str) -> Result<()> {
        if saved::shipped(name).is_some() {
            return Err(FsError::Invalid(format!(
                "{name:?} is a shipped query and cannot be removed"
            )));
        }
        self.tx(|m, _| {
            if m.delete_saved_query(name)? {
                Ok(())
            } else {
                Err(FsError::NotFound)
            }
        })
    }

    /// Shipped and saved queries: (name, SQL, shipped).
    pub fn queries(&self) -> Result<Vec<(String, String, bool)>> {
        let mut v: Vec<(String, String, bool)> = saved::SHIPPED
            .iter()
            .map(|(n, q)| (n.to_string(), q.to_string(), true))
            .collect();
        v.extend(
            self.meta()
                .saved_queries()?
                .into_iter()
                .map(|(n, q)| (n, q, false)),
        );
        v.sort();
        Ok(v)
    }
}
