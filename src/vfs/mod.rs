//! The filesystem core: protocol-neutral operations over the store.
//!
//! FUSE (through [`crate::view`]) and the offline CLI both drive this
//! module; it knows nothing of either. It owns the open-file table, the handle table and the write
//! buffers. It works over three ports the composition root (`store`) hands
//! it: a [`MetaStore`], a [`BlobStore`] and a [`Room`].
//!
//! # Files
//! - `mod.rs`: the [`Fs`] struct, its construction, shared helpers.
//! - `api.rs`: the request vocabulary (`Tuning`, `Caller`, `SetAttr`,
//!   `DirEntry`, `StatFs`, the `Room` port).
//! - `names.rs`: lookup, getattr, paths, making nodes (create, mkdir,
//!   mknod, symlink, link).
//! - `remove.rs`: unlink, rmdir, rename.
//! - `attrs.rs`: setattr, access, statfs.
//! - `xattrs.rs`: extended attributes, and tags as `user.tag.*`.
//! - `dirs.rs`: directory listings and open-directory snapshots.
//! - `files.rs`: the open-file table, open, read, write, release.
//! - `buffers.rs`: write buffers, truncate, holes, fallocate, SEEK_DATA,
//!   content ids.
//! - `commit.rs`: transactions, group commit (and its guard), barriers,
//!   deferred frees, committing a file's buffers.
//! - `catalogue.rs`: users' SQL in sandbox connections, tags and saved
//!   queries (for the CLI and, through their port, the query folders).
//!
//! The core serves the real tree only: the query folders
//! ([`crate::folders`]) sit above it and reach it through their port, and
//! the mount's view ([`crate::view`]) sends each request to one or the
//! other. The root's [`RESERVED`] names are kept free for those folders.
//!
//! # Files, chunks and write buffering
//! A file is a sequence of chunks of `chunk_size` bytes (64 KiB by default);
//! chunk `i` is a BLAKE3-named blob, stored once whatever the number of files
//! and positions that hold it. Writes go to per-file dirty chunk buffers and
//! are committed (hashed, stored, indexed in one SQLite transaction) when the
//! buffers pass `dirty_limit`, on `flush` (every `close`), on `fsync`, and on
//! the last `release`.
//!
//! # Durability protocol
//! 1. New blob bytes go to newly allocated clusters (blobs are immutable).
//! 2. Before a transaction that references new clusters commits, the
//!    container is synced (data, then FAT).
//! 3. Blobs are freed only after the transaction that dropped their last
//!    reference is durable: commits run with `synchronous=NORMAL`, so they
//!    wait for the next barrier (the group-commit thread runs one in the
//!    tick after any are released; `fsync`, unmount, or a backlog of
//!    `RELEASED_MAX` without group commit do too). Otherwise a power cut
//!    could roll the commit back and leave its metadata pointing at
//!    storage a new blob took (found by `crash_tests`).
//! 4. `fsync` commits the file's buffers and then runs a durable barrier
//!    (a `synchronous=FULL` commit that syncs the WAL).
//!
//! With group commit on (the mount), each write transaction above is a
//! savepoint in one open batch, committed when it is `window` old (by the
//! caller that notices, or the group-commit thread), or at once by `fsync`,
//! a query, or unmount; step 3 then waits for the batch. So `close`
//! returning means the data is in the batch, committed within the window
//! (plus one tick of the group-commit thread): a crash of the queryfs process
//! loses at most that, and always a suffix of the changes; `fsync` returning means everything before it
//! survives a crash of the machine. A crash between steps leaves only orphan
//! clusters, which opening the store for writing reclaims.
//!
//! Attribute changes (`utimensat`, `fchmod`, `fchown`, `ftruncate`) to a
//! file that another handle has unsaved writes on join those writes and are
//! committed with them.
//!
//! # Locking
//! Order: a file's data lock, then the metadata lock; the open-file and
//! handle tables are leaf locks held only for map operations. Reads hold
//! their file's data lock shared for the whole read, so a concurrent flush of
//! that file cannot free the clusters under them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{MappedMutexGuard, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::blob::BlobStore;
use crate::error::{FsError, Result};
use crate::meta::{BlobData, Checkpointer, ChunkRef, MetaStore, NewInode};
use crate::query;
use crate::types::{Attr, BlobHash, BlobLoc, FileKind};

mod api;
mod attrs;
mod buffers;
mod catalogue;
mod commit;
mod dirs;
mod files;
mod names;
mod remove;
mod xattrs;
pub use api::{
    check_name, is_reserved, now_ns, Caller, DirEntry, Room, SetAttr, SetTime, Space, StatFs,
    Tuning, RESERVED,
};
pub use attrs::check_access;
pub use buffers::content_id;
use buffers::{hash_chunks, trimmed_len, AttrChange, FileData, OpenFile};
pub use catalogue::{QUERY_BUDGET, ROW_CAP};
pub use commit::GroupCommit;
pub use names::mknod_kind;
pub use remove::check_rename;

/// Longest name of one directory entry, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest xattr value.
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Largest file (what SQLite's i64 sizes and chunk indexes allow, with room).
pub const FILE_MAX: u64 = 1 << 50;
/// How long changes made through a mount (or an import) may wait to be
/// committed together; `fsync`, a query or unmount commits them at once.
pub const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(25);

/// The group-commit thread checkpoints the WAL every this many ticks.
const CHECKPOINT_EVERY: u32 = 8;

/// Released blobs wait for a barrier; without group commit (whose thread
/// runs one every tick when any wait) one is run once this many wait.
const RELEASED_MAX: usize = 4096;

/// The WAL is restarted once it holds this many frames (16 MiB).
const WAL_RESTART_FRAMES: i64 = 4096;

/// The message of a commit that found a blob gone that it had seen before
/// its transaction (it then retries, writing the bytes itself).
const VANISHED: &str = "a blob vanished during commit";

/// Test-only fault hook: a lookup of the name in `QUERYFS_TEST_PANIC_LOOKUP`
/// panics while holding the metadata lock (the mount test that proves a
/// panic costs one request, not the mount, sets it).
fn test_panic_name() -> Option<&'static [u8]> {
    static NAME: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var_os("QUERYFS_TEST_PANIC_LOOKUP")
            .map(|v| v.into_encoded_bytes())
            .filter(|v| !v.is_empty())
    })
    .as_deref()
}

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// An inode asked for by number that no longer exists: the kernel holds
/// it under a cached name that a query-folder operation replaced or
/// removed. ESTALE (not ENOENT) makes the kernel look the name up again.
fn stale(e: FsError) -> FsError {
    match e {
        FsError::NotFound => FsError::Stale,
        e => e,
    }
}

/// An open directory: the snapshot its offsets index.
struct DirSnap {
    ino: u64,
    /// The store generation when it was taken.
    generation: u64,
    /// Attributes are served as taken (a listing made above the core).
    fixed: bool,
    /// Entries from this index on are served as taken (made above the
    /// core: see [`Fs::opendir_with`]).
    extra: usize,
    entries: Vec<DirEntry>,
}

enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<DirSnap>),
    /// A read-only file of bytes (a query folder's result file).
    Bytes(Arc<Vec<u8>>),
}

/// The filesystem core over one store.
pub struct Fs {
    meta: Arc<Mutex<Box<dyn MetaStore>>>,
    blobs: Arc<dyn BlobStore>,
    chunk_size: u64,
    tuning: Tuning,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Where the store lives, for `statfs` and a full disk.
    room: Option<Arc<dyn Room>>,
    /// Bumped by every metadata commit; query-folder listings cache on it.
    generation: AtomicU64,
    /// Batches rolled back so far (mirror of `Meta::rollbacks`, readable
    /// without the metadata lock): open files loaded before the last one
    /// reload their chunk maps ([`Fs::refresh`]).
    rollbacks: AtomicU64,
    /// Blobs released by commits that may not be durable yet, deleted after
    /// the next barrier ([`Fs::free_released`]).
    released: Mutex<Vec<BlobLoc>>,
    /// Whether the metadata store runs users' SQL (`/sql`, `/queries`).
    runs_sql: bool,
    /// When this core started (the times of virtual folders).
    started: i64,
    /// Idle sandbox connections for users' SQL (one is taken per running
    /// query).
    sandboxes: Mutex<Vec<crate::meta::sandbox::Sandbox>>,
    /// The group-commit thread, and its stop flag.
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    ticker_stop: AtomicBool,
    /// What must outlive the core (a test's temporary store folder); last,
    /// so that it is dropped after everything above.
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Fs {
    /// Builds the core over an opened database and container.
    pub fn new(
        meta: Arc<Mutex<Box<dyn MetaStore>>>,
        blobs: Arc<dyn BlobStore>,
        chunk_size: u64,
        tuning: Tuning,
        room: Option<Arc<dyn Room>>,
    ) -> Fs {
        let runs_sql = meta.lock().runs_sql();
        Fs {
            meta,
            blobs,
            chunk_size,
            tuning,
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            room,
            generation: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            released: Mutex::new(Vec::new()),
            runs_sql,
            started: now_ns(),
            sandboxes: Mutex::new(Vec::new()),
            ticker: Mutex::new(None),
            ticker_stop: AtomicBool::new(false),
            held: Vec::new(),
        }
    }

    /// Keeps `thing` alive as long as the core (a test's temporary folder).
    pub fn holding(mut self, thing: Box<dyn std::any::Any + Send + Sync>) -> Fs {
        self.held.push(thing);
        self
    }

    /// The metadata connection (the core's own and its tests').
    pub(crate) fn meta(&self) -> MappedMutexGuard<'_, dyn MetaStore> {
        MutexGuard::map(self.meta.lock(), |m| &mut **m)
    }

    /// The blob store (for tests).
    #[cfg(test)]
    pub(crate) fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Bumped by every metadata change.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the metadata store runs users' SQL (`/sql`, `/queries`).
    pub fn runs_sql(&self) -> bool {
        self.runs_sql
    }

    /// When this core started.
    pub(crate) fn started(&self) -> i64 {
        self.started
    }

    /// A directory handle over `entries` (a listing computed above the
    /// core: the query folders'). Its attributes are served as given.
    pub(crate) fn open_listing(&self, ino: u64, entries: Vec<DirEntry>) -> u64 {
        self.new_fh(Handle::Dir(Arc::new(DirSnap {
            ino,
            generation: 0,
            fixed: true,
            extra: entries.len(),
            entries,
        })))
    }

    /// A read-only file handle over `bytes`.
    pub(crate) fn open_bytes(&self, bytes: Arc<Vec<u8>>) -> u64 {
        self.new_fh(Handle::Bytes(bytes))
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    /// Applies an open file's uncommitted size, times and attributes.
    pub(crate) fn overlay(&self, attr: Attr) -> Attr {
        if attr.kind != FileKind::File {
            return attr;
        }
        match self.open.lock().get(&attr.ino) {
            Some(of) => of.overlay(attr),
            None => attr,
        }
    }

    fn inode(&self, m: &dyn MetaStore, ino: u64) -> Result<Attr> {
        m.inode(ino)?.ok_or(FsError::NotFound)
    }

    fn dir(&self, m: &dyn MetaStore, ino: u64) -> Result<Attr> {
        let d = self.inode(m, ino)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if let Err(e) = self.stop_group_commit() {
            tracing::error!("committing on shutdown failed: {e}");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
