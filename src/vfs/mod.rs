//! The filesystem core: protocol-neutral operations over the store.
//!
//! FUSE and the offline CLI both drive this module; it knows nothing of
//! either. It owns the open-file table, the handle table and the write
//! buffers.
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
//! 3. Clusters are freed only after the transaction that dropped their last
//!    reference has committed.
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{FsError, Result};
use crate::meta::{kind, BlobData, Checkpointer, ChunkRef, Inode, Meta, NewInode};
use crate::query;
use crate::qvfs::Container;

mod perm;
mod virt;
pub use perm::{with_viewer, Viewer};
pub use virt::{is_virtual, with_pid, NameReport, QUERY_BUDGET, RESERVED, ROW_CAP};

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

/// Free space on the store's disk under which the space reserve is released.
const LOW_SPACE: u64 = 32 << 20;

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
        // SAFETY: getuid/getgid cannot fail.
        unsafe {
            Caller {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
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
    pub attr: Inode,
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

/// An inode asked for by number that no longer exists: the kernel holds
/// it under a cached name that a query-folder operation replaced or
/// removed. ESTALE (not ENOENT) makes the kernel look the name up again.
fn stale(e: FsError) -> FsError {
    match e {
        FsError::NotFound => FsError::Stale,
        e => e,
    }
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

#[derive(Default)]
struct FileData {
    /// Committed chunks, by index.
    chunks: BTreeMap<u64, ChunkRef>,
    /// Chunks written but not committed, by index. A buffer may be shorter
    /// than the chunk; the rest reads as zeros.
    dirty: BTreeMap<u64, Vec<u8>>,
    dirty_bytes: usize,
    /// Committed chunks from this index on were cut off by a truncate.
    drop_from: Option<u64>,
    /// Single committed chunks removed by a hole punch (their rows go at
    /// the next commit).
    holes: BTreeSet<u64>,
    /// Hashes of committed chunks removed (truncate, punch): one reference
    /// each is dropped at the next commit.
    dropped: Vec<[u8; 32]>,
    /// Size or times changed and not committed.
    meta_dirty: bool,
    size: u64,
    mtime: i64,
    /// `Fs::rollbacks` when `chunks` was last known to match the store.
    epoch: u64,
}

/// st_blocks (512-byte units) of a chunk holding `len` bytes.
fn blocks_of(len: usize) -> u64 {
    (len as u64).div_ceil(512)
}

/// The length of `buf` without its trailing zeros: chunks are stored in
/// this canonical form (the rest reads as zeros), so equal content is one
/// blob and one content id however it was written, and a chunk of zeros is
/// a hole that holds nothing.
fn trimmed_len(buf: &[u8]) -> usize {
    buf.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

impl FileData {
    /// A write or truncate at `now`: it replaces any explicit time set before.
    fn set_mtime(&mut self, of: &OpenFile, now: i64) {
        self.mtime = now;
        self.meta_dirty = true;
        of.mtime.store(now, Ordering::Release);
        let mut a = of.attrs.lock();
        a.mtime = None;
        a.ctime = None;
    }

    /// Whether anything written to the file (or changed on it) is not
    /// committed yet.
    fn unsaved(&self, of: &OpenFile) -> bool {
        !self.dirty.is_empty()
            || self.meta_dirty
            || self.drop_from.is_some()
            || !self.holes.is_empty()
            || !of.attrs.lock().is_empty()
    }

    /// The file's st_blocks as it stands (committed and dirty chunks).
    /// O(chunks held): called at commit, and for getattr of a dirty file
    /// through the `blocks` mirror.
    fn blocks(&self) -> u64 {
        let committed: u64 = self
            .chunks
            .iter()
            .filter(|(i, _)| !self.dirty.contains_key(i))
            .map(|(_, c)| blocks_of(c.size as usize))
            .sum();
        committed + self.dirty.values().map(|b| blocks_of(b.len())).sum::<u64>()
    }
}

/// Attribute changes made to a file with unsaved writes, saved with them.
#[derive(Default, Clone, Copy, PartialEq)]
struct AttrChange {
    perm: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<i64>,
    /// An explicit mtime (`utimensat`); a later write replaces it.
    mtime: Option<i64>,
    btime: Option<i64>,
    ctime: Option<i64>,
}

impl AttrChange {
    fn is_empty(&self) -> bool {
        *self == AttrChange::default()
    }

    /// Adds a later change: what it sets wins.
    fn merge(&mut self, later: &AttrChange) {
        self.perm = later.perm.or(self.perm);
        self.uid = later.uid.or(self.uid);
        self.gid = later.gid.or(self.gid);
        self.atime = later.atime.or(self.atime);
        self.mtime = later.mtime.or(self.mtime);
        self.btime = later.btime.or(self.btime);
        self.ctime = later.ctime.or(self.ctime);
    }

    /// Applies the change to `i`; the mtime only when set explicitly.
    fn apply(&self, i: &mut Inode) {
        i.perm = self.perm.unwrap_or(i.perm);
        i.uid = self.uid.unwrap_or(i.uid);
        i.gid = self.gid.unwrap_or(i.gid);
        i.atime = self.atime.unwrap_or(i.atime);
        i.mtime = self.mtime.unwrap_or(i.mtime);
        i.btime = self.btime.unwrap_or(i.btime);
        i.ctime = self.ctime.unwrap_or(i.ctime);
    }
}

/// State of a regular file while at least one handle has it open.
struct OpenFile {
    ino: u64,
    opens: AtomicU32,
    /// Mirrors of `data.size` / `data.mtime`, readable without the data lock.
    size: AtomicU64,
    mtime: AtomicI64,
    /// st_blocks as the file stands, dirty chunks included.
    blocks: AtomicU64,
    /// Attribute changes not yet committed (changed only under the data
    /// lock; read by `overlay` without it).
    attrs: Mutex<AttrChange>,
    /// The committed inode row and the store generation it is current for:
    /// `getattr` of an open file needs no query until the next write.
    cached: Mutex<Option<(u64, Inode)>>,
    data: RwLock<FileData>,
}

impl OpenFile {
    /// `attr` (the committed row) with the uncommitted size, times and
    /// attributes applied.
    fn overlay(&self, mut attr: Inode) -> Inode {
        attr.size = self.size.load(Ordering::Acquire);
        attr.blocks = self.blocks.load(Ordering::Acquire);
        let m = self.mtime.load(Ordering::Acquire);
        if m > attr.mtime {
            attr.mtime = m;
            attr.ctime = attr.ctime.max(m);
        }
        self.attrs.lock().apply(&mut attr);
        attr
    }
}

/// An open directory: the snapshot its offsets index.
struct DirSnap {
    ino: u64,
    /// The store generation when it was taken.
    generation: u64,
    entries: Vec<DirEntry>,
}

enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<DirSnap>),
    /// A query result file (read-only bytes).
    Virtual(Arc<Vec<u8>>),
}

/// An xattr name that addresses tags.
enum TagAttr {
    /// `user.tags`: the whole set.
    All,
    /// `user.tag.<name>`: one tag.
    One(String),
}

impl TagAttr {
    fn parse(name: &[u8]) -> Result<Option<TagAttr>> {
        if name == b"user.tags" {
            return Ok(Some(TagAttr::All));
        }
        let Some(rest) = name.strip_prefix(b"user.tag.") else {
            return Ok(None);
        };
        let t = std::str::from_utf8(rest)
            .map_err(|_| FsError::Invalid("a tag name must be UTF-8".into()))?;
        if let Err(e) = query::check_tag(t) {
            tracing::warn!("xattr user.tag.{t}: {e}");
            return Err(e.into());
        }
        Ok(Some(TagAttr::One(t.to_string())))
    }
}

/// BLAKE3 of each dirty chunk, on every core when there are many (a large
/// file's commit hashes while the writer waits for it).
fn hash_chunks(dirty: &BTreeMap<u64, Vec<u8>>) -> Vec<(u64, [u8; 32])> {
    let hash = |(&idx, buf): (&u64, &Vec<u8>)| (idx, *blake3::hash(buf).as_bytes());
    // Asked once: `available_parallelism` reads cgroup files each call.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let bytes: usize = dirty.values().map(Vec::len).sum();
    let threads = match bytes {
        b if b < 4 << 20 => 1,
        _ => *CORES
            .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8))),
    };
    if threads < 2 {
        return dirty.iter().map(hash).collect();
    }
    let all: Vec<(&u64, &Vec<u8>)> = dirty.iter().collect();
    std::thread::scope(|s| {
        let parts: Vec<_> = all
            .chunks(all.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(|&e| hash(e)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("hash thread"))
            .collect()
    })
}

/// Content id of a file: BLAKE3 over its size and the (index, hash) of
/// every chunk it holds, in index order. Chunks are canonical (trailing
/// zeros trimmed, zero chunks are holes, see [`trimmed_len`]), so files with
/// equal content have equal ids, and the work is proportional to the chunks
/// held, not to the size (a 1 PB sparse file costs nothing).
pub fn content_id(chunks: &[(u64, [u8; 32])], size: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"queryfs content id 2\0");
    h.update(&size.to_le_bytes());
    for (idx, hash) in chunks {
        h.update(&idx.to_le_bytes());
        h.update(hash);
    }
    *h.finalize().as_bytes()
}

/// The filesystem core over one store.
pub struct Fs {
    meta: Mutex<Meta>,
    blobs: Arc<Container>,
    chunk_size: u64,
    tuning: Tuning,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// A folder on the disk holding the store, for `statfs`.
    statfs_dir: Option<PathBuf>,
    /// The store's space reserve, released when the disk is nearly full.
    reserve: Option<PathBuf>,
    /// The database file, for the query sandbox's own connection.
    query_db: Option<PathBuf>,
    /// Bumped by every metadata commit; query-folder listings cache on it.
    generation: AtomicU64,
    /// Batches rolled back so far (mirror of `Meta::rollbacks`, readable
    /// without the metadata lock): open files loaded before the last one
    /// reload their chunk maps ([`Fs::refresh`]).
    rollbacks: AtomicU64,
    /// When this core started (the times of virtual folders).
    started: i64,
    virt: virt::Virt,
    /// The group-commit thread, and its stop flag.
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    ticker_stop: AtomicBool,
}

impl Fs {
    /// Builds the core over an opened database and container.
    pub fn new(
        meta: Meta,
        blobs: Arc<Container>,
        chunk_size: u64,
        tuning: Tuning,
        statfs_dir: Option<PathBuf>,
    ) -> Fs {
        Fs {
            meta: Mutex::new(meta),
            blobs,
            chunk_size,
            tuning,
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            statfs_dir,
            reserve: None,
            query_db: None,
            generation: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            started: now_ns(),
            virt: virt::Virt::default(),
            ticker: Mutex::new(None),
            ticker_stop: AtomicBool::new(false),
        }
    }

    /// Lets query folders and `run_query` open the database at `db`.
    /// Lets the mount release the store's space reserve at `path` when the
    /// disk fills up.
    pub fn with_reserve(mut self, path: PathBuf) -> Fs {
        self.reserve = Some(path);
        self
    }

    pub fn with_query_db(mut self, db: PathBuf) -> Fs {
        self.query_db = Some(db);
        self
    }

    /// The metadata connection (for the store's own checks and statistics).
    pub fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock()
    }

    /// The blob container.
    pub fn container(&self) -> &Arc<Container> {
        &self.blobs
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Runs `f` as one write: with group commit on, it joins the open
    /// batch (committed when due); otherwise it commits at once. Clusters it
    /// released are freed once it has committed.
    fn tx<T>(&self, f: impl FnOnce(&Meta, &mut Vec<u32>) -> Result<T>) -> Result<T> {
        let mut frees = Vec::new();
        let m = self.meta();
        let v = m.write(|m| f(m, &mut frees));
        // Once per write; twice for a failed one, so that nothing `f`
        // remembered as current for `generation_after_tx` stays current.
        let bumps = if v.is_ok() { 1 } else { 2 };
        self.generation.fetch_add(bumps, Ordering::AcqRel);
        self.rollbacks.store(m.rollbacks(), Ordering::Release);
        let v = v?;
        let mut free_now = m.after_commit(frees);
        if m.batch_due() {
            free_now.extend(self.commit_batch(&m)?);
        }
        drop(m);
        self.free_clusters(&free_now);
        Ok(v)
    }

    /// Commits the open batch of metadata changes, if any.
    pub fn settle(&self) -> Result<()> {
        let frees = self.commit_batch(&self.meta())?;
        self.free_clusters(&frees);
        Ok(())
    }

    /// Commits the open batch after syncing the blob bytes it refers to
    /// (a container sync is short here when the caller synced just before,
    /// outside the lock). If a container sync failed, the batch is rolled
    /// back instead: its blobs may not be on disk.
    fn commit_batch(&self, m: &Meta) -> Result<Vec<u32>> {
        let r = self.commit_batch_inner(m);
        self.rollbacks.store(m.rollbacks(), Ordering::Release);
        r
    }

    fn commit_batch_inner(&self, m: &Meta) -> Result<Vec<u32>> {
        if let Err(e) = self.blobs.sync() {
            let lost = m.rollback_batch();
            self.blobs.clear_sync_failure();
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::error!(
                "syncing the blob container failed ({e}): a group of {lost} metadata changes was rolled back"
            );
            return Err(e.into());
        }
        m.commit_batch().map_err(|e| {
            // Rolled back: what was read since is stale.
            self.generation.fetch_add(1, Ordering::AcqRel);
            e.into()
        })
    }

    /// Inside a write transaction: the generation the store will have once
    /// it ends (every write bumps it once, under the metadata lock).
    fn generation_after_tx(&self) -> u64 {
        self.generation.load(Ordering::Acquire) + 1
    }

    /// Turns group commit on: metadata changes (create, mkdir, unlink,
    /// rename, chmod, xattrs, ...) join one transaction that is committed
    /// within `window`, or sooner by a flush, fsync, data commit or query.
    /// A thread commits batches that fall due while nothing else happens.
    pub fn start_group_commit(self: &Arc<Self>, window: Duration) -> Result<()> {
        if self.tuning.read_only {
            return Ok(());
        }
        // Checkpoints run on this thread's own connection, off the
        // request path (SQLite's own would run inside a commit).
        let checkpointer = match &self.query_db {
            Some(db) => Some(Checkpointer::open(db)?),
            None => None,
        };
        {
            let m = self.meta();
            m.set_group_commit(Some(window))?;
            if checkpointer.is_some() {
                m.set_auto_checkpoint(false)?;
            }
        }
        self.ticker_stop.store(false, Ordering::Release);
        let weak = Arc::downgrade(self);
        let tick = (window / 2).max(Duration::from_millis(1));
        let h = std::thread::Builder::new()
            .name("queryfs-commit".into())
            .spawn(move || {
                let mut ticks = 0u32;
                loop {
                    // `stop_group_commit` unparks it.
                    std::thread::park_timeout(tick);
                    let Some(fs) = weak.upgrade() else { break };
                    if fs.ticker_stop.load(Ordering::Acquire) {
                        break;
                    }
                    let due = fs.meta().batch_due();
                    if due {
                        // The long part of the container sync, outside the
                        // lock (a failure is kept for `settle` to act on).
                        let _ = fs.blobs.sync();
                        if let Err(e) = fs.settle() {
                            tracing::error!("group commit failed: {e}");
                        }
                    }
                    ticks = ticks.wrapping_add(1);
                    if ticks % CHECKPOINT_EVERY == 0 {
                        fs.release_reserve_when_full();
                    }
                    if let (Some(c), 0) = (&checkpointer, ticks % CHECKPOINT_EVERY) {
                        if let Err(e) = fs.checkpoint(c) {
                            tracing::warn!("checkpoint: {e}");
                        }
                    }
                }
            })
            .map_err(FsError::Io)?;
        *self.ticker.lock() = Some(h);
        Ok(())
    }

    /// When the disk holding the store is nearly full, deletes the store's
    /// space reserve (given by [`Fs::with_reserve`]), so that the metadata
    /// commits that free space (unlink, rmdir, truncate) still fit.
    fn release_reserve_when_full(&self) {
        let (Some(reserve), Some(v)) = (&self.reserve, self.disk_space()) else {
            return;
        };
        let free = v.f_bavail * v.f_frsize;
        if free < LOW_SPACE && reserve.exists() {
            match std::fs::remove_file(reserve) {
                Ok(()) => tracing::warn!(
                    "the disk holding the store has {free} bytes free: released the space reserve"
                ),
                Err(e) => tracing::warn!("releasing the space reserve: {e}"),
            }
        }
    }

    /// statvfs(3) of the disk holding the store, if the store is on disk.
    fn disk_space(&self) -> Option<libc::statvfs> {
        let dir = self.statfs_dir.as_ref()?;
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: a plain C struct, filled by statvfs below.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid C string and v a valid out-pointer.
        (unsafe { libc::statvfs(c.as_ptr(), &mut v) } == 0).then_some(v)
    }

    /// Copies committed WAL frames into the database beside the writer;
    /// once the WAL is big, restarts it while holding the writer idle.
    fn checkpoint(&self, c: &Checkpointer) -> Result<()> {
        if c.passive()? < WAL_RESTART_FRAMES {
            return Ok(());
        }
        let m = self.meta();
        let frees = self.commit_batch(&m)?;
        let r = c.restart();
        drop(m);
        self.free_clusters(&frees);
        Ok(r?)
    }

    /// Commits every open file and the open batch, syncs, and turns group
    /// commit off (unmount, the end of an import, shutdown).
    pub fn stop_group_commit(&self) -> Result<()> {
        let committed = self.commit_all();
        self.ticker_stop.store(true, Ordering::Release);
        let h = self.ticker.lock().take();
        if let Some(h) = h {
            h.thread().unpark();
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let (last, frees) = {
            let m = self.meta();
            let last = self.commit_batch(&m);
            m.set_auto_checkpoint(true)?;
            (last, m.set_group_commit(None)?)
        };
        self.free_clusters(&frees);
        if let Ok(f) = &last {
            self.free_clusters(f);
        }
        committed.and(last.map(drop))
    }

    fn free_clusters(&self, frees: &[u32]) {
        for &loc in frees {
            if let Err(e) = self.blobs.free_chain(loc) {
                // The blob row is gone; the clusters become orphans that gc reclaims.
                tracing::warn!("could not free cluster chain {loc}: {e}");
            }
        }
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    /// Applies an open file's uncommitted size, times and attributes.
    fn overlay(&self, attr: Inode) -> Inode {
        if attr.kind != kind::FILE {
            return attr;
        }
        match self.open.lock().get(&attr.ino) {
            Some(of) => of.overlay(attr),
            None => attr,
        }
    }

    fn inode(&self, m: &Meta, ino: u64) -> Result<Inode> {
        m.inode(ino)?.ok_or(FsError::NotFound)
    }

    fn dir(&self, m: &Meta, ino: u64) -> Result<Inode> {
        let d = self.inode(m, ino)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }

    // ----- names -----

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if is_virtual(parent) {
            return self.v_lookup(parent, name);
        }
        if virt::is_reserved(parent, name) {
            return self.v_root_lookup(name);
        }
        let m = self.meta();
        if test_panic_name() == Some(name) {
            panic!(
                "test fault hook: lookup of {:?}",
                String::from_utf8_lossy(name)
            );
        }
        self.dir(&m, parent)?;
        let attr = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        // Under the metadata lock: a commit of the file cannot slip between
        // reading its row and applying its open state.
        Ok(self.overlay(attr))
    }

    pub fn getattr(&self, ino: u64) -> Result<Inode> {
        if is_virtual(ino) {
            return self.v_getattr(ino);
        }
        let of = self.open.lock().get(&ino).cloned();
        if let Some(of) = of {
            let hit = of.cached.lock().clone();
            let attr = match hit {
                Some((g, a)) if g == self.generation.load(Ordering::Acquire) => a,
                _ => {
                    let m = self.meta();
                    let g = self.generation.load(Ordering::Acquire);
                    let a = self.inode(&m, ino).map_err(stale)?;
                    *of.cached.lock() = Some((g, a.clone()));
                    a
                }
            };
            return Ok(of.overlay(attr));
        }
        let m = self.meta();
        let attr = self.inode(&m, ino).map_err(stale)?;
        Ok(self.overlay(attr))
    }

    /// Resolves a path relative to the root ("/a/b" or "a/b").
    pub fn resolve(&self, path: &str) -> Result<Inode> {
        self.resolve_bytes(path.as_bytes())
    }

    /// Resolves a path of any bytes (names need not be UTF-8).
    pub fn resolve_bytes(&self, path: &[u8]) -> Result<Inode> {
        let mut cur = self.getattr(ROOT)?;
        for part in path
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            if part == b".." {
                let parent = self
                    .meta()
                    .parent_of(cur.ino)?
                    .map(|(p, _)| p)
                    .unwrap_or(ROOT);
                cur = self.getattr(parent)?;
                continue;
            }
            if !cur.is_dir() {
                return Err(FsError::NotDir);
            }
            cur = self.lookup(cur.ino, part)?;
        }
        Ok(cur)
    }

    /// The path of an inode (one of its names), for messages.
    pub fn path_of(&self, ino: u64) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.path_bytes(ino)?).into_owned())
    }

    /// The path of an inode (one of its names), as the bytes it is.
    pub fn path_bytes(&self, ino: u64) -> Result<Vec<u8>> {
        let m = self.meta();
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut steps = 0;
        while cur != ROOT {
            let (p, name) = m.parent_of(cur)?.ok_or(FsError::NotFound)?;
            parts.push(name);
            cur = p;
            steps += 1;
            if steps > 4096 {
                return Err(FsError::Corrupt(format!("inode {ino}: parent chain loops")));
            }
        }
        parts.reverse();
        let mut out = Vec::new();
        for p in parts {
            out.push(b'/');
            out.extend_from_slice(&p);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        Ok(out)
    }

    // ----- creating -----

    fn new_node(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> Result<Inode> {
        self.new_node_at(parent, name, mode, rdev, target, caller)
            .map(|(i, _)| i)
    }

    /// Creates a node; returns it and the generation its row is current for.
    fn new_node_at(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> Result<(Inode, u64)> {
        check_name(name)?;
        if is_virtual(parent) {
            // In a window: made in the real directory it shows.
            let d = self.window_dir(parent).ok_or(FsError::NotPermitted)?;
            let r = self.new_node_at(d, name, mode, rdev, target, caller)?;
            self.changed_behind_kernel(d, name);
            return Ok(r);
        }
        if virt::is_reserved(parent, name) {
            return Err(FsError::Exists);
        }
        let now = now_ns();
        self.tx(|m, _| {
            let mut p = self.dir(m, parent)?;
            if m.lookup(parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let k = mode & libc::S_IFMT;
            let mut perm = mode & 0o7777;
            // BSD group semantics under a set-group-id directory.
            let gid = if p.perm & libc::S_ISGID != 0 {
                if k == kind::DIR {
                    perm |= libc::S_ISGID;
                }
                p.gid
            } else {
                caller.gid
            };
            let node = m.insert_inode(&NewInode {
                kind: k,
                perm,
                uid: caller.uid,
                gid,
                rdev,
                nlink: if k == kind::DIR { 2 } else { 1 },
                now,
                target,
                chash: (k == kind::FILE).then(|| content_id(&[], 0)),
            })?;
            m.insert_dentry(parent, name, node.ino)?;
            if k == kind::DIR {
                p.nlink += 1;
            }
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            Ok((node, self.generation_after_tx()))
        })
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Inode> {
        let k = mode & libc::S_IFMT;
        let k = if k == 0 { kind::FILE } else { k };
        if ![
            kind::FILE,
            kind::FIFO,
            kind::SOCKET,
            kind::CHAR,
            kind::BLOCK,
        ]
        .contains(&k)
        {
            return Err(FsError::Invalid(
                "mknod makes files, FIFOs, sockets and devices".into(),
            ));
        }
        if k == kind::FILE && is_virtual(parent) && self.window_dir(parent).is_none() {
            // A regular file made by mknod in a tag folder (`tar -x` does
            // so for files with xattrs) is a create there.
            check_name(name)?;
            let (i, fh) = self.v_create(parent, name, mode & 0o7777, caller)?;
            self.release(fh)?;
            return Ok(i);
        }
        self.new_node(parent, name, k | (mode & 0o7777), rdev, None, caller)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<Inode> {
        if is_virtual(parent) {
            check_name(name)?;
            return self.v_mkdir(parent, name, perm, caller);
        }
        self.new_node(parent, name, kind::DIR | (perm & 0o7777), 0, None, caller)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Inode> {
        if target.is_empty() || target.len() > 4095 {
            return Err(FsError::Invalid(
                "a symlink target is 1 to 4095 bytes".into(),
            ));
        }
        self.new_node(parent, name, kind::SYMLINK | 0o777, 0, Some(target), caller)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        if is_virtual(ino) {
            return self.v_readlink(ino);
        }
        let m = self.meta();
        let i = self.inode(&m, ino)?;
        if i.kind != kind::SYMLINK {
            return Err(FsError::Invalid("not a symbolic link".into()));
        }
        m.symlink_target(ino)?
            .ok_or(FsError::Corrupt(format!("symlink {ino} has no target")))
    }

    /// Creates a regular file and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Inode, u64)> {
        if is_virtual(parent) {
            check_name(name)?;
            return self.v_create(parent, name, perm, caller);
        }
        let (attr, g) =
            self.new_node_at(parent, name, kind::FILE | (perm & 0o7777), 0, None, caller)?;
        // A new file has no content to load.
        let of = self.install(&attr, Vec::new());
        *of.cached.lock() = Some((g, attr.clone()));
        let fh = self.new_fh(Handle::File(of));
        Ok((attr, fh))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Inode> {
        check_name(newname)?;
        if is_virtual(newparent) {
            return self.v_link(ino, newparent, newname);
        }
        if is_virtual(ino) {
            return Err(FsError::NotPermitted);
        }
        if virt::is_reserved(newparent, newname) {
            return Err(FsError::Exists);
        }
        let now = now_ns();
        let attr = self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            if i.is_dir() {
                return Err(FsError::NotPermitted);
            }
            if i.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if i.nlink >= 65000 {
                return Err(FsError::TooManyLinks);
            }
            let mut p = self.dir(m, newparent)?;
            if m.lookup(newparent, newname)?.is_some() {
                return Err(FsError::Exists);
            }
            m.insert_dentry(newparent, newname, ino)?;
            i.nlink += 1;
            i.ctime = now;
            m.update_inode(&i)?;
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            Ok(i)
        })?;
        Ok(self.overlay(attr))
    }

    // ----- removing -----

    /// Deletes an inode's content, xattrs and row. Its clusters go to `frees`.
    fn purge(&self, m: &Meta, ino: u64, frees: &mut Vec<u32>) -> Result<()> {
        for h in m.chunk_hashes(ino)? {
            if let Some(Some(loc)) = m.decref(&h)? {
                frees.push(loc);
            }
        }
        m.delete_all_chunks(ino)?;
        m.delete_inode_row(ino)?;
        Ok(())
    }

    /// Drops one name of a non-directory; deletes it when it was the last
    /// name and nobody has it open.
    fn drop_link(&self, m: &Meta, mut i: Inode, now: i64, frees: &mut Vec<u32>) -> Result<()> {
        i.nlink = i.nlink.saturating_sub(1);
        i.ctime = now;
        if i.nlink == 0 && !self.open.lock().contains_key(&i.ino) {
            self.purge(m, i.ino, frees)
        } else {
            // Still named elsewhere, or open: the last release deletes it.
            Ok(m.update_inode(&i)?)
        }
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        if is_virtual(parent) {
            return self.v_unlink(parent, name);
        }
        if virt::is_reserved(parent, name) {
            return Err(FsError::IsDir);
        }
        let now = now_ns();
        self.tx(|m, frees| {
            let mut p = self.dir(m, parent)?;
            let i = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
            if i.is_dir() {
                return Err(FsError::IsDir);
            }
            m.delete_dentry(parent, name)?;
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            self.drop_link(m, i, now, frees)
        })
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("cannot remove '.'".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        if is_virtual(parent) {
            return self.v_rmdir(parent, name);
        }
        if virt::is_reserved(parent, name) {
            return Err(FsError::Busy);
        }
        let now = now_ns();
        self.tx(|m, frees| {
            let mut p = self.dir(m, parent)?;
            let d = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
            if !d.is_dir() {
                return Err(FsError::NotDir);
            }
            if m.dir_has_entries(d.ino)? {
                return Err(FsError::NotEmpty);
            }
            m.delete_dentry(parent, name)?;
            p.nlink = p.nlink.saturating_sub(1);
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            self.purge(m, d.ino, frees)
        })
    }

    /// True when `ino` is `ancestor` or lies below it.
    fn is_within(&self, m: &Meta, mut ino: u64, ancestor: u64) -> Result<bool> {
        let mut steps = 0;
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            match m.parent_of(ino)? {
                Some((p, _)) => ino = p,
                None => return Ok(false),
            }
            steps += 1;
            if steps > 1 << 16 {
                return Err(FsError::Corrupt("directory parents loop".into()));
            }
        }
    }

    /// rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(FsError::Invalid("unsupported rename flags".into()));
        }
        if is_virtual(parent) || is_virtual(newparent) {
            if exchange {
                return Err(FsError::Invalid(
                    "RENAME_EXCHANGE does not apply to query folders".into(),
                ));
            }
            self.v_rename(parent, name, newparent, newname, flags)?;
            // The kernel moves its cached entry to the new name, with the
            // inode it had: a real file, symlink or directory moved into a
            // query folder is shown there as another node (an alias).
            // (After the reply: the kernel holds that folder's lock.)
            self.report_name(newparent, newname, false);
            return Ok(());
        }
        if virt::is_reserved(parent, name) || virt::is_reserved(newparent, newname) {
            return Err(FsError::Busy);
        }
        let now = now_ns();
        self.tx(|m, frees| {
            self.dir(m, parent)?;
            self.dir(m, newparent)?;
            let mut src = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
            let dst = m.lookup(newparent, newname)?;
            if exchange {
                let mut dst = dst.ok_or(FsError::NotFound)?;
                if src.is_dir() && self.is_within(m, newparent, src.ino)? {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                if dst.is_dir() && self.is_within(m, parent, dst.ino)? {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                m.set_dentry_ino(parent, name, dst.ino)?;
                m.set_dentry_ino(newparent, newname, src.ino)?;
                if parent != newparent && src.is_dir() != dst.is_dir() {
                    let (mut gains, mut loses) =
                        (self.inode(m, parent)?, self.inode(m, newparent)?);
                    if src.is_dir() {
                        std::mem::swap(&mut gains, &mut loses);
                    }
                    gains.nlink += 1;
                    loses.nlink = loses.nlink.saturating_sub(1);
                    m.update_inode(&gains)?;
                    m.update_inode(&loses)?;
                }
                src.ctime = now;
                dst.ctime = now;
                m.update_inode(&src)?;
                m.update_inode(&dst)?;
            } else {
                if let Some(d) = dst {
                    if noreplace {
                        return Err(FsError::Exists);
                    }
                    if d.ino == src.ino {
                        return Ok(()); // two names of one file: nothing to do
                    }
                    match (src.is_dir(), d.is_dir()) {
                        (true, false) => return Err(FsError::NotDir),
                        (false, true) => return Err(FsError::IsDir),
                        _ => {}
                    }
                    if src.is_dir() && self.is_within(m, newparent, src.ino)? {
                        return Err(FsError::Invalid(
                            "cannot move a directory into itself".into(),
                        ));
                    }
                    if d.is_dir() {
                        if m.dir_has_entries(d.ino)? {
                            return Err(FsError::NotEmpty);
                        }
                        m.delete_dentry(newparent, newname)?;
                        let mut np = self.inode(m, newparent)?;
                        np.nlink = np.nlink.saturating_sub(1);
                        m.update_inode(&np)?;
                        self.purge(m, d.ino, frees)?;
                    } else {
                        m.delete_dentry(newparent, newname)?;
                        self.drop_link(m, d, now, frees)?;
                    }
                } else if src.is_dir() && self.is_within(m, newparent, src.ino)? {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                m.delete_dentry(parent, name)?;
                m.insert_dentry(newparent, newname, src.ino)?;
                if src.is_dir() && parent != newparent {
                    let mut op = self.inode(m, parent)?;
                    op.nlink = op.nlink.saturating_sub(1);
                    m.update_inode(&op)?;
                    let mut np = self.inode(m, newparent)?;
                    np.nlink += 1;
                    m.update_inode(&np)?;
                }
                src = self.inode(m, src.ino)?;
                src.ctime = now;
                m.update_inode(&src)?;
            }
            for p in [parent, newparent] {
                let mut d = self.inode(m, p)?;
                d.mtime = now;
                d.ctime = now;
                m.update_inode(&d)?;
            }
            Ok(())
        })
    }

    // ----- attributes -----

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Inode> {
        if is_virtual(ino) {
            return self.v_setattr(ino, set);
        }
        let now = now_ns();
        if let Some(size) = set.size {
            if size > FILE_MAX {
                return Err(FsError::TooBig);
            }
        }
        let t = |s: SetTime| match s {
            SetTime::Now => now,
            SetTime::At(v) => v,
        };
        let change = AttrChange {
            perm: set.mode.map(|m| m & 0o7777),
            uid: set.uid,
            gid: set.gid,
            atime: set.atime.map(t),
            mtime: set.mtime.map(t),
            btime: set.btime,
            ctime: Some(set.ctime.unwrap_or(now)),
        };
        // The open state of the file, held for the whole change: a truncate
        // needs it, and the change must not race the file's own commits.
        let of = match set.size {
            Some(_) => Some(self.acquire(ino)?),
            None => self.open.lock().get(&ino).cloned().inspect(|o| {
                o.opens.fetch_add(1, Ordering::AcqRel);
            }),
        };
        let Some(of) = of else {
            let i = self.tx(|m, _| {
                let mut i = self.inode(m, ino)?;
                change.apply(&mut i);
                m.update_inode(&i)?;
                Ok(i)
            })?;
            return Ok(self.overlay(i));
        };
        // An open file: the change joins its uncommitted state. While another
        // handle has unsaved writes, it is saved with them (at their flush,
        // fsync or close); otherwise it is committed now, in one transaction
        // with anything pending.
        let result = (|| -> Result<()> {
            let mut st = self.data_mut(&of)?;
            let others = of.opens.load(Ordering::Acquire) > 1;
            let defer = others && st.unsaved(&of);
            // A truncate sets mtime and ctime even when the size does not
            // change, as ext4 and tmpfs do for truncate(2), ftruncate(2) and
            // O_TRUNC (the kernel sends FUSE no time with any of them).
            if let Some(size) = set.size {
                self.truncate_locked(&of, &mut st, size, now);
            }
            {
                let mut a = of.attrs.lock();
                a.merge(&change);
                if let Some(m) = change.mtime {
                    st.mtime = m;
                    of.mtime.store(m, Ordering::Release);
                }
            }
            if !defer {
                self.commit_locked(&of, &mut st)?;
            }
            Ok(())
        })();
        self.release_file(of, false)?;
        result?;
        self.getattr(ino)
    }

    pub fn access(&self, ino: u64, mask: i32, caller: Caller) -> Result<()> {
        let i = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        let bits = if caller.uid == 0 {
            // Root may read and write anything, and execute what anyone may.
            let x = if i.is_dir() || i.perm & 0o111 != 0 {
                1
            } else {
                0
            };
            6 | x
        } else if caller.uid == i.uid {
            (i.perm >> 6) & 7
        } else if caller.gid == i.gid {
            (i.perm >> 3) & 7
        } else {
            i.perm & 7
        };
        if (mask as u32) & !bits & 7 != 0 {
            return Err(FsError::Access);
        }
        Ok(())
    }

    // ----- xattrs (`user.*` only) -----

    fn check_xattr_name(name: &[u8]) -> Result<()> {
        if name.len() > NAME_MAX {
            return Err(FsError::Range);
        }
        if !name.starts_with(b"user.") || name.len() == 5 {
            return Err(FsError::NotSupported);
        }
        Ok(())
    }

    /// flags: XATTR_CREATE (1) fails if it exists, XATTR_REPLACE (2) if not.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if let Some(d) = self.window_dir(ino) {
            return self.setxattr(d, name, value, flags);
        }
        if is_virtual(ino) {
            return Err(FsError::NotSupported);
        }
        Self::check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(FsError::Range);
        }
        let now = now_ns();
        if let Some(t) = TagAttr::parse(name)? {
            let bad = |e: String| {
                tracing::warn!("setxattr {}: {e}", String::from_utf8_lossy(name));
                FsError::Invalid(e)
            };
            let value_str = || {
                std::str::from_utf8(value)
                    .map(|v| v.trim().to_string())
                    .map_err(|_| bad("a tag value must be UTF-8".into()))
            };
            let set = match &t {
                TagAttr::All => query::parse_tag_set(value).map_err(|e| bad(e.to_string()))?,
                TagAttr::One(n) => {
                    let v = value_str()?;
                    query::check_value(&v).map_err(|e| bad(e.to_string()))?;
                    vec![(n.clone(), (!v.is_empty()).then_some(v))]
                }
            };
            return self.tx(|m, _| {
                let mut i = self.inode(m, ino)?;
                let exists = match &t {
                    TagAttr::All => !m.file_tags(ino)?.is_empty(),
                    TagAttr::One(n) => m.file_tag(ino, n)?.is_some(),
                };
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(FsError::Exists);
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(FsError::NoAttr);
                }
                if let TagAttr::All = t {
                    m.delete_file_tags(ino)?;
                }
                for (n, v) in &set {
                    m.set_file_tag(ino, n, v.as_deref(), now)?;
                }
                i.ctime = now;
                m.update_inode(&i)?;
                Ok(())
            });
        }
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            let exists = m.xattr(ino, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoAttr);
            }
            m.set_xattr(ino, name, value)?;
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Names outside `user.*` are not supported (`EOPNOTSUPP`, as on a
    /// filesystem without that namespace): tools such as `ls -l` then stop
    /// asking for SELinux labels and ACLs on this mount, instead of asking
    /// the daemon twice per file.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if let Some(d) = self.window_dir(ino) {
            return self.getxattr(d, name);
        }
        Self::check_xattr_name(name)?;
        if is_virtual(ino) {
            return Err(FsError::NoAttr);
        }
        let m = self.meta();
        self.inode(&m, ino)?;
        match TagAttr::parse(name) {
            Ok(Some(TagAttr::All)) => {
                let t = m.file_tags(ino)?;
                if t.is_empty() {
                    return Err(FsError::NoAttr);
                }
                return Ok(query::format_tag_set(&t));
            }
            Ok(Some(TagAttr::One(n))) => {
                let v = m.file_tag(ino, &n)?.ok_or(FsError::NoAttr)?;
                return Ok(v.unwrap_or_default().into_bytes());
            }
            Ok(None) => {}
            Err(_) => return Err(FsError::NoAttr),
        }
        m.xattr(ino, name)?.ok_or(FsError::NoAttr)
    }

    /// Names, each followed by NUL, as listxattr(2) returns them. Each tag
    /// is listed once, as `user.tag.<name>`; `user.tags` (the whole set in
    /// one value) can be read and set but is not listed, so tools that copy
    /// every listed xattr (`rsync -aX`, `cp -a`, `tar --xattrs`) carry each
    /// tag exactly once and a second run finds nothing to change.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        if let Some(d) = self.window_dir(ino) {
            return self.listxattr(d);
        }
        if is_virtual(ino) {
            return Ok(Vec::new());
        }
        let m = self.meta();
        let mut out = Vec::new();
        // Tags a file was given by the tag folder it was made in (placed)
        // are not listed: they say where it was put, and `rsync -X`,
        // `cp -a` or `tar --xattrs` into a tag folder would otherwise take
        // them off the file they are writing, which then leaves the folder.
        // `user.tags` and `getfattr -n user.tag.NAME` still show them.
        let tags = m.file_tags_placed(ino)?;
        let names = m.xattr_names(ino)?;
        let i = self.inode(&m, ino)?;
        drop(m);
        // (Only while it lives in /inbox: a file that has a place of its
        // own lists every tag.)
        let hide = tags.iter().any(|t| t.2 > 0) && self.lives_in_inbox(&i)?;
        for (n, _, _) in tags.into_iter().filter(|t| t.2 == 0 || !hide) {
            out.extend_from_slice(b"user.tag.");
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        if let Some(d) = self.window_dir(ino) {
            return self.removexattr(d, name);
        }
        Self::check_xattr_name(name)?;
        if is_virtual(ino) {
            return Err(FsError::NoAttr);
        }
        let now = now_ns();
        if let Some(t) = TagAttr::parse(name).map_err(|_| FsError::NoAttr)? {
            return self.tx(|m, _| {
                let mut i = self.inode(m, ino)?;
                let had = match &t {
                    TagAttr::All => {
                        let had = !m.file_tags(ino)?.is_empty();
                        m.delete_file_tags(ino)?;
                        had
                    }
                    TagAttr::One(n) => m.delete_file_tag(ino, n)?,
                };
                if !had {
                    return Err(FsError::NoAttr);
                }
                i.ctime = now;
                m.update_inode(&i)?;
                Ok(())
            });
        }
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            if !m.delete_xattr(ino, name)? {
                return Err(FsError::NoAttr);
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    // ----- directories -----

    /// Opens a directory: the listing (names, with `.` and `..` first) is
    /// a snapshot taken now, so offsets stay valid whatever changes
    /// meanwhile. Attributes are served fresh by [`Fs::dir_page`].
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        if is_virtual(ino) {
            return self.v_opendir(ino);
        }
        let (generation, mut entries) = {
            let m = self.meta();
            // Read under the lock that every change holds while it bumps
            // the generation, so the stamp is exactly the snapshot's.
            let generation = self.generation.load(Ordering::Acquire);
            let d = self.dir(&m, ino)?;
            let parent = match m.parent_of(ino)? {
                Some((p, _)) if ino != ROOT => self.inode(&m, p)?,
                _ => d.clone(),
            };
            let mut v = vec![
                DirEntry {
                    name: b".".to_vec(),
                    attr: d,
                },
                DirEntry {
                    name: b"..".to_vec(),
                    attr: parent,
                },
            ];
            for (name, attr) in m.list_dir(ino)? {
                v.push(DirEntry {
                    name,
                    attr: self.overlay(attr),
                });
            }
            (generation, v)
        };
        if ino == ROOT {
            entries.extend(self.v_root_entries()?);
        }
        Ok(self.new_fh(Handle::Dir(Arc::new(DirSnap {
            ino,
            generation,
            entries,
        }))))
    }

    /// Up to `max` entries of an open directory from position `from`, each
    /// with its position + 1 (the offset to continue from). Attributes are
    /// current as of this call, not of `opendir`: readdirplus hands them to
    /// the kernel, which caches them (and the names) as fresh. An entry
    /// removed or replaced since the snapshot is left out or shows its
    /// current inode; names created since may not appear (POSIX allows
    /// either).
    pub fn dir_page(&self, fh: u64, from: usize, max: usize) -> Result<Vec<(u64, DirEntry)>> {
        let snap = match self.handles.lock().get(&fh) {
            Some(Handle::Dir(v)) => v.clone(),
            _ => return Err(FsError::BadHandle),
        };
        let mut out = Vec::new();
        let virtual_dir = is_virtual(snap.ino);
        let m = self.meta();
        // Nothing committed or changed in the tree since the snapshot: its
        // rows are current (open files get their state applied below).
        let unchanged = virtual_dir || self.generation.load(Ordering::Acquire) == snap.generation;
        // Entries left out do not count against `max`: an empty page means
        // the end of the directory.
        for (k, e) in snap.entries.iter().enumerate().skip(from) {
            if out.len() >= max {
                break;
            }
            let cookie = (k + 1) as u64;
            let attr = if unchanged || is_virtual(e.attr.ino) {
                e.attr.clone()
            } else if e.name == b"." || e.name == b".." {
                match m.inode(e.attr.ino)? {
                    Some(a) => a,
                    None => continue,
                }
            } else {
                match m.lookup(snap.ino, &e.name)? {
                    Some(a) => a,
                    None => continue,
                }
            };
            out.push((
                cookie,
                DirEntry {
                    name: e.name.clone(),
                    attr: self.overlay(attr),
                },
            ));
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) -> Result<()> {
        self.handles.lock().remove(&fh);
        Ok(())
    }

    /// Lists a directory in one go (offline use). The root's listing leaves
    /// out the query folders, so that tree walks (`get /`, `rm -r`) see each
    /// file once; they are still reachable by name.
    pub fn list(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let fh = self.opendir(ino)?;
        let v = self.dir_page(fh, 0, usize::MAX);
        self.releasedir(fh)?;
        Ok(v?
            .into_iter()
            .skip(2)
            .map(|(_, e)| e)
            .filter(|e| ino != ROOT || !is_virtual(e.attr.ino))
            .collect())
    }

    // ----- open files -----

    /// Gets the open state of `ino`, loading it on first open; counts one open.
    fn acquire(&self, ino: u64) -> Result<Arc<OpenFile>> {
        if let Some(of) = self.open.lock().get(&ino) {
            of.opens.fetch_add(1, Ordering::AcqRel);
            return Ok(of.clone());
        }
        // Load and install under the metadata lock (order: metadata, then
        // the table): no commit or unlink of the file can fall between
        // reading its rows and publishing its open state. Loading outside
        // it let a reader install chunks that a close had just replaced, or
        // that an unlink had just freed.
        let m = self.meta();
        if let Some(of) = self.open.lock().get(&ino) {
            of.opens.fetch_add(1, Ordering::AcqRel);
            return Ok(of.clone());
        }
        let a = self.inode(&m, ino).map_err(stale)?;
        if a.is_dir() {
            return Err(FsError::IsDir);
        }
        if a.kind != kind::FILE {
            return Err(FsError::Invalid("only regular files hold data".into()));
        }
        if a.nlink == 0 {
            // Unlinked and not open: it is being deleted.
            return Err(FsError::NotFound);
        }
        let c = m.chunks(ino)?;
        let of = self.install(&a, c);
        drop(m);
        Ok(of)
    }

    /// Counts one open of `attr`'s file, installing its open state (with
    /// the committed `chunks`) unless another open beat us to it.
    fn install(&self, attr: &Inode, chunks: Vec<(u64, ChunkRef)>) -> Arc<OpenFile> {
        let mut table = self.open.lock();
        let of = table.entry(attr.ino).or_insert_with(|| {
            Arc::new(OpenFile {
                ino: attr.ino,
                opens: AtomicU32::new(0),
                size: AtomicU64::new(attr.size),
                mtime: AtomicI64::new(attr.mtime),
                blocks: AtomicU64::new(attr.blocks),
                attrs: Mutex::new(AttrChange::default()),
                cached: Mutex::new(None),
                data: RwLock::new(FileData {
                    epoch: self.rollbacks.load(Ordering::Acquire),
                    chunks: chunks.into_iter().collect(),
                    size: attr.size,
                    mtime: attr.mtime,
                    ..Default::default()
                }),
            })
        });
        of.opens.fetch_add(1, Ordering::AcqRel);
        of.clone()
    }

    /// Commits the file (when `commit`) and drops one open; the last one
    /// forgets the state and deletes the file if it has no name left.
    fn release_file(&self, of: Arc<OpenFile>, commit: bool) -> Result<()> {
        let r = if commit {
            self.data_mut(&of)
                .and_then(|mut st| self.commit_locked(&of, &mut st))
        } else {
            Ok(())
        };
        let last = {
            let mut table = self.open.lock();
            if of.opens.fetch_sub(1, Ordering::AcqRel) == 1 {
                table.remove(&of.ino);
                true
            } else {
                false
            }
        };
        // Only a file without names left needs a transaction here.
        let unlinked = last && self.meta().inode(of.ino)?.is_some_and(|i| i.nlink == 0);
        if unlinked {
            let ino = of.ino;
            self.tx(|m, frees| {
                if let Some(i) = m.inode(ino)? {
                    if i.nlink == 0 {
                        self.purge(m, ino, frees)?;
                    }
                }
                Ok(())
            })?;
        }
        r
    }

    pub fn open(&self, ino: u64) -> Result<u64> {
        if is_virtual(ino) {
            return self.v_open(ino);
        }
        let of = self.acquire(ino)?;
        Ok(self.new_fh(Handle::File(of)))
    }

    /// open(2) with `O_TRUNC`: the file is cut to size 0 and, even when it
    /// was empty already, its mtime and ctime are set to now (POSIX; as
    /// ext4 and tmpfs do).
    pub fn open_truncating(&self, ino: u64) -> Result<u64> {
        if is_virtual(ino) {
            return Err(FsError::Access);
        }
        let fh = self.open(ino)?;
        let cut = SetAttr {
            size: Some(0),
            mtime: Some(SetTime::Now),
            ..Default::default()
        };
        if let Err(e) = self.setattr(ino, &cut) {
            self.release(fh)?;
            return Err(e);
        }
        Ok(fh)
    }

    fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File(of)) => Ok(of.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Content of committed chunk `c` into `out`, from byte `from` of the chunk.
    fn read_chunk(&self, c: &ChunkRef, from: usize, out: &mut [u8]) -> Result<()> {
        let have = (c.size as usize).saturating_sub(from).min(out.len());
        match &c.data {
            BlobData::Inline(d) => {
                // `from` may lie past the bytes a short chunk holds.
                let src = d.get(from..).unwrap_or(&[]);
                let avail = src.len().min(have);
                out[..avail].copy_from_slice(&src[..avail]);
                out[avail..].fill(0);
            }
            // A reader beside a writer, or a damaged store served
            // append-only until `fsck --repair` (a cross-linked chain could
            // hold another blob's bytes): check the bytes against the hash.
            BlobData::Cluster(loc) if self.tuning.read_only || self.blobs.append_only() => {
                let mut whole = vec![0u8; c.size as usize];
                self.blobs.read_chain(*loc, 0, &mut whole)?;
                if blake3::hash(&whole).as_bytes() != &c.hash {
                    return Err(FsError::Corrupt(format!(
                        "blob {} changed under the reader (the store is busy); try again",
                        crate::meta::hex(&c.hash[..8])
                    )));
                }
                if have > 0 {
                    out[..have].copy_from_slice(&whole[from..from + have]);
                }
                out[have..].fill(0);
            }
            BlobData::Cluster(loc) => {
                if have > 0 {
                    self.blobs.read_chain(*loc, from as u64, &mut out[..have])?;
                }
                out[have..].fill(0);
            }
        }
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        if let Some(Handle::Virtual(d)) = self.handles.lock().get(&fh) {
            let from = (offset as usize).min(d.len());
            let to = from.saturating_add(size as usize).min(d.len());
            return Ok(d[from..to].to_vec());
        }
        let of = self.file(fh)?;
        let st = self.data_ref(&of)?;
        if offset >= st.size {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(st.size);
        let mut out = vec![0u8; (end - offset) as usize];
        let cs = self.chunk_size;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..(pos - offset) as usize + n];
            if let Some(buf) = st.dirty.get(&idx) {
                // A dirty buffer may end before `within` (a short chunk).
                let src = buf.get(within..).unwrap_or(&[]);
                let avail = src.len().min(n);
                dst[..avail].copy_from_slice(&src[..avail]);
                dst[avail..].fill(0);
            } else if let Some(c) = st.chunks.get(&idx) {
                self.read_chunk(c, within, dst)?;
            } // else: a hole, already zeros
            pos += n as u64;
        }
        Ok(out)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let of = self.file(fh)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::TooBig)?;
        if end > FILE_MAX {
            return Err(FsError::TooBig);
        }
        let mut st = self.data_mut(&of)?;
        self.write_locked(&of, &mut st, offset, data)?;
        let now = now_ns();
        st.size = st.size.max(end);
        st.set_mtime(&of, now);
        of.size.store(st.size, Ordering::Release);
        if st.dirty_bytes >= self.tuning.dirty_limit {
            self.commit_locked(&of, &mut st)?;
        }
        Ok(data.len() as u32)
    }

    /// The file's data, write-locked and current: after a group commit
    /// was rolled back, the committed chunk map it had may name chunks the
    /// store no longer holds (and miss ones it holds again), and a commit
    /// from it would drop references it does not own. Reload it from the
    /// store first; writes not yet committed are kept.
    fn data_mut<'a>(
        &self,
        of: &'a OpenFile,
    ) -> Result<parking_lot::RwLockWriteGuard<'a, FileData>> {
        let mut st = of.data.write();
        if st.epoch != self.rollbacks.load(Ordering::Acquire) {
            self.refresh(of, &mut st)?;
        }
        Ok(st)
    }

    /// The file's data, read-locked and current (see [`Fs::data_mut`]).
    fn data_ref<'a>(&self, of: &'a OpenFile) -> Result<parking_lot::RwLockReadGuard<'a, FileData>> {
        let st = of.data.read();
        if st.epoch == self.rollbacks.load(Ordering::Acquire) {
            return Ok(st);
        }
        drop(st);
        Ok(parking_lot::RwLockWriteGuard::downgrade(self.data_mut(of)?))
    }

    fn refresh(&self, of: &OpenFile, st: &mut FileData) -> Result<()> {
        let m = self.meta();
        let epoch = m.rollbacks();
        let chunks = m.chunks(of.ino)?;
        let row = m.inode(of.ino)?;
        drop(m);
        tracing::warn!(
            "inode {}: a group commit was rolled back; its open state is reloaded from the store (unsaved writes are kept)",
            of.ino
        );
        st.chunks = chunks.into_iter().collect();
        st.dropped.clear();
        st.holes.clear();
        st.drop_from = None;
        let cs = self.chunk_size;
        let dirty_end = st
            .dirty
            .iter()
            .next_back()
            .map_or(0, |(&i, b)| i * cs + b.len() as u64);
        if let Some(row) = row {
            st.size = row.size.max(dirty_end);
        }
        st.meta_dirty = true;
        st.epoch = epoch;
        of.size.store(st.size, Ordering::Release);
        of.blocks.store(st.blocks(), Ordering::Release);
        *of.cached.lock() = None;
        Ok(())
    }

    /// What chunk `idx` contributes to st_blocks as things stand.
    fn chunk_blocks(st: &FileData, idx: u64) -> u64 {
        match (st.dirty.get(&idx), st.chunks.get(&idx)) {
            (Some(b), _) => blocks_of(b.len()),
            (None, Some(c)) => blocks_of(c.size as usize),
            _ => 0,
        }
    }

    /// Puts `data` at `offset` into the dirty buffers (size and times are
    /// the caller's).
    fn write_locked(
        &self,
        of: &OpenFile,
        st: &mut FileData,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let cs = self.chunk_size;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            let before = Self::chunk_blocks(st, idx);
            if !st.dirty.contains_key(&idx) {
                // Start from the committed chunk unless the write covers it all.
                let mut buf = Vec::with_capacity(cs as usize);
                if !(within == 0 && n as u64 == cs) {
                    if let Some(c) = st.chunks.get(&idx) {
                        buf.resize(c.size as usize, 0);
                        self.read_chunk(c, 0, &mut buf)?;
                    }
                }
                st.dirty_bytes += cs as usize;
                st.dirty.insert(idx, buf);
            }
            let buf = st.dirty.get_mut(&idx).unwrap();
            // Overwrite what the buffer holds, append the rest (no zero fill
            // of bytes about to be written).
            if buf.len() < within {
                buf.resize(within, 0);
            }
            let over = (buf.len() - within).min(n);
            buf[within..within + over].copy_from_slice(&src[..over]);
            buf.extend_from_slice(&src[over..]);
            let after = Self::chunk_blocks(st, idx);
            let b = of.blocks.load(Ordering::Acquire);
            of.blocks
                .store((b + after).saturating_sub(before), Ordering::Release);
            pos += n as u64;
        }
        Ok(())
    }

    fn truncate_locked(&self, of: &OpenFile, st: &mut FileData, size: u64, now: i64) {
        let cs = self.chunk_size;
        if size < st.size {
            let keep = size.div_ceil(cs);
            let cut: Vec<u64> = st.chunks.range(keep..).map(|(&i, _)| i).collect();
            for i in cut {
                let c = st.chunks.remove(&i).unwrap();
                st.dropped.push(c.hash);
            }
            st.drop_from = Some(st.drop_from.map_or(keep, |d| d.min(keep)));
            let removed: Vec<u64> = st.dirty.range(keep..).map(|(&k, _)| k).collect();
            for k in removed {
                st.dirty.remove(&k);
                st.dirty_bytes = st.dirty_bytes.saturating_sub(cs as usize);
            }
            let tail = (size % cs) as usize;
            if tail != 0 {
                let idx = size / cs;
                if let Some(buf) = st.dirty.get_mut(&idx) {
                    buf.truncate(tail);
                } else if let Some(c) = st.chunks.get(&idx) {
                    if c.size as usize > tail {
                        let mut buf = vec![0u8; tail];
                        // On a read error the chunk reads as zeros from here on.
                        if self.read_chunk(c, 0, &mut buf).is_err() {
                            buf.fill(0);
                        }
                        st.dirty.insert(idx, buf);
                        st.dirty_bytes += cs as usize;
                    }
                }
            }
        }
        st.size = size;
        st.set_mtime(of, now);
        of.size.store(size, Ordering::Release);
        of.blocks.store(st.blocks(), Ordering::Release);
    }

    /// Makes `[offset, offset + len)` read as zeros and hold nothing:
    /// whole chunks in it are dropped (their references go at the next
    /// commit), partial ones get zeros written. Work is proportional to the
    /// chunks the range holds, not to its length. The size is unchanged.
    fn punch_locked(
        &self,
        of: &OpenFile,
        st: &mut FileData,
        offset: u64,
        len: u64,
        now: i64,
    ) -> Result<()> {
        let end = offset.saturating_add(len).min(st.size);
        if offset >= end {
            return Ok(());
        }
        let cs = self.chunk_size;
        let (first, last) = (offset / cs, (end - 1) / cs);
        let mut held: BTreeSet<u64> = st.chunks.range(first..=last).map(|(&i, _)| i).collect();
        held.extend(st.dirty.range(first..=last).map(|(&i, _)| i));
        for idx in held {
            let (cstart, cend) = (idx * cs, ((idx + 1) * cs).min(st.size));
            if offset <= cstart && end >= cend {
                if st.dirty.remove(&idx).is_some() {
                    st.dirty_bytes = st.dirty_bytes.saturating_sub(cs as usize);
                }
                if let Some(c) = st.chunks.remove(&idx) {
                    st.dropped.push(c.hash);
                    st.holes.insert(idx);
                }
            } else {
                let (from, to) = (offset.max(cstart), end.min(cend));
                let zeros = vec![0u8; (to - from) as usize];
                self.write_locked(of, st, from, &zeros)?;
            }
        }
        st.set_mtime(of, now);
        of.blocks.store(st.blocks(), Ordering::Release);
        Ok(())
    }

    /// fallocate(2): mode 0 and `KEEP_SIZE` (nothing to reserve in a
    /// content-addressed store: the size grows unless `KEEP_SIZE`),
    /// `PUNCH_HOLE | KEEP_SIZE`, and `ZERO_RANGE` (with or without
    /// `KEEP_SIZE`). Collapse, insert and unshare are not supported.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(KEEP | PUNCH | ZERO) != 0 || (mode & PUNCH != 0 && mode & ZERO != 0) {
            return Err(FsError::NotSupported);
        }
        if mode & PUNCH != 0 && mode & KEEP == 0 {
            return Err(FsError::NotSupported);
        }
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes".into()));
        }
        let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
        if end > FILE_MAX {
            return Err(FsError::TooBig);
        }
        let of = self.file(fh)?;
        let mut st = self.data_mut(&of)?;
        let now = now_ns();
        if mode & (PUNCH | ZERO) != 0 {
            self.punch_locked(&of, &mut st, offset, len, now)?;
        }
        if mode & KEEP == 0 && end > st.size {
            st.size = end;
            st.set_mtime(&of, now);
            of.size.store(end, Ordering::Release);
        }
        Ok(())
    }

    /// lseek(2) with `SEEK_DATA` / `SEEK_HOLE`, at chunk granularity:
    /// a chunk that holds nothing is a hole; the end of the file is one.
    pub fn seek_data(&self, fh: u64, offset: u64, hole: bool) -> Result<u64> {
        let of = self.file(fh)?;
        let st = self.data_ref(&of)?;
        if offset >= st.size {
            return Err(FsError::NoSuchOffset);
        }
        let cs = self.chunk_size;
        let held = |idx: u64| st.dirty.contains_key(&idx) || st.chunks.contains_key(&idx);
        let start = offset / cs;
        if hole {
            // The first index at or after `start` that holds nothing.
            let mut idx = start;
            let mut it = st
                .chunks
                .range(start..)
                .map(|(&i, _)| i)
                .chain(st.dirty.range(start..).map(|(&i, _)| i))
                .collect::<BTreeSet<u64>>()
                .into_iter();
            loop {
                match it.next() {
                    Some(i) if i == idx => idx += 1,
                    _ => break,
                }
            }
            Ok((idx * cs).max(offset).min(st.size))
        } else {
            if held(start) {
                return Ok(offset);
            }
            let next = st
                .chunks
                .range(start..)
                .map(|(&i, _)| i)
                .next()
                .into_iter()
                .chain(st.dirty.range(start..).map(|(&i, _)| i).next())
                .min();
            match next {
                Some(i) if i * cs < st.size => Ok(i * cs),
                _ => Err(FsError::NoSuchOffset),
            }
        }
    }

    /// copy_file_range(2): a read and a write through the core (chunks that
    /// come out equal are stored once anyway).
    pub fn copy_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let len = len.min(1 << 30) as usize;
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(4 << 20);
            let data = self.read(fh_in, off_in + done as u64, n as u32)?;
            if data.is_empty() {
                break;
            }
            self.write(fh_out, off_out + done as u64, &data)?;
            done += data.len();
            if data.len() < n {
                break;
            }
        }
        Ok(done as u32)
    }

    /// Commits a file's buffers: hash, store new blobs, one transaction.
    fn commit_locked(&self, of: &OpenFile, st: &mut FileData) -> Result<()> {
        if !st.unsaved(of) {
            return Ok(());
        }
        if self.tuning.read_only {
            return Err(FsError::Invalid("the store is open read-only".into()));
        }
        // Canonical chunks (the same content reads the same either way):
        // trailing zeros trimmed, and a chunk of zeros is a hole.
        let mut zero = Vec::new();
        for (&idx, buf) in st.dirty.iter_mut() {
            buf.truncate(trimmed_len(buf));
            if buf.is_empty() {
                zero.push(idx);
            }
        }
        for idx in zero {
            st.dirty.remove(&idx);
            st.dirty_bytes = st.dirty_bytes.saturating_sub(self.chunk_size as usize);
            if let Some(c) = st.chunks.remove(&idx) {
                st.dropped.push(c.hash);
                st.holes.insert(idx);
            }
        }
        let attrs = *of.attrs.lock();
        let items = hash_chunks(&st.dirty);
        match self.commit_items(of, st, &attrs, &items, false) {
            // A blob known before the transaction was dropped by another
            // file's commit meanwhile: store every new chunk's bytes.
            Err(FsError::Corrupt(m)) if m == VANISHED => {
                self.commit_items(of, st, &attrs, &items, true)
            }
            r => r,
        }
    }

    /// One attempt of [`Fs::commit_locked`]; with `write_all`, every chunk
    /// that goes to the container is written first, known or not.
    fn commit_items(
        &self,
        of: &OpenFile,
        st: &mut FileData,
        attrs: &AttrChange,
        items: &[(u64, [u8; 32])],
        write_all: bool,
    ) -> Result<()> {
        // Which blobs that go to the container are new? Store those before
        // the transaction (inline ones are stored by it).
        let known: HashSet<[u8; 32]> = {
            let mut k = HashSet::new();
            let big: Vec<&[u8; 32]> = items
                .iter()
                .filter(|(idx, _)| !write_all && st.dirty[idx].len() > self.tuning.inline_max)
                .map(|(_, h)| h)
                .collect();
            if !big.is_empty() {
                let m = self.meta();
                for h in big {
                    if m.blob(h)?.is_some() {
                        k.insert(*h);
                    }
                }
            }
            k
        };
        let mut fresh: HashMap<[u8; 32], BlobData> = HashMap::new();
        let mut written = Vec::new();
        let failures = self.blobs.sync_failures();
        let store = (|| -> Result<()> {
            for (idx, h) in items {
                if known.contains(h) || fresh.contains_key(h) {
                    continue;
                }
                let buf = &st.dirty[idx];
                let d = if buf.len() <= self.tuning.inline_max {
                    BlobData::Inline(buf.clone())
                } else {
                    let loc = self.blobs.write_chain(buf)?;
                    written.push(loc);
                    BlobData::Cluster(loc)
                };
                fresh.insert(*h, d);
            }
            Ok(())
        })();
        if let Err(e) = store {
            self.free_clusters(&written);
            return Err(e);
        }
        let ino = of.ino;
        // The content id and st_blocks after this commit, from the file's
        // chunk map in memory (truncation and holes already applied to it)
        // plus the new chunks.
        let chash = {
            let mut all: BTreeMap<u64, [u8; 32]> =
                st.chunks.iter().map(|(&i, c)| (i, c.hash)).collect();
            all.extend(items.iter().copied());
            content_id(&all.into_iter().collect::<Vec<_>>(), st.size)
        };
        let blocks = st.blocks();
        let mut used: HashSet<[u8; 32]> = HashSet::new();
        let result = self.tx(|m, frees| {
            if !written.is_empty() {
                if self.blobs.sync_failures() != failures {
                    return Err(FsError::Io(std::io::Error::other(
                        "a sync of the blob container failed while this file's data was written",
                    )));
                }
                // The bytes reach the disk before a commit refers to them:
                // with group commit, when the batch commits; else now.
                if !m.batch_open() {
                    if let Err(e) = self.blobs.sync() {
                        self.blobs.clear_sync_failure();
                        return Err(e.into());
                    }
                }
            }
            for h in &st.dropped {
                if let Some(Some(loc)) = m.decref(h)? {
                    frees.push(loc);
                }
            }
            if let Some(from) = st.drop_from {
                m.delete_chunks_from(ino, from)?;
            }
            for &idx in &st.holes {
                if st.drop_from.is_none_or(|f| idx < f) {
                    m.delete_chunk(ino, idx)?;
                }
            }
            let mut resolved = Vec::with_capacity(items.len());
            for (idx, h) in items {
                let old = st.chunks.get(idx).map(|c| c.hash);
                if old == Some(*h) {
                    continue;
                }
                let size = st.dirty[idx].len() as u32;
                let data = match m.blob(h)? {
                    Some((_, d)) => {
                        m.incref(h)?;
                        d
                    }
                    None => {
                        let d = fresh
                            .get(h)
                            .cloned()
                            .ok_or_else(|| FsError::Corrupt(VANISHED.into()))?;
                        m.insert_blob(h, size as u64, &d)?;
                        used.insert(*h);
                        d
                    }
                };
                m.set_chunk(ino, *idx, h)?;
                if let Some(oh) = old {
                    if let Some(Some(loc)) = m.decref(&oh)? {
                        frees.push(loc);
                    }
                }
                resolved.push((
                    *idx,
                    ChunkRef {
                        hash: *h,
                        size,
                        data,
                    },
                ));
            }
            if let Some(mut i) = m.inode(ino)? {
                i.size = st.size;
                i.blocks = blocks;
                i.mtime = i.mtime.max(st.mtime);
                i.ctime = i.ctime.max(st.mtime);
                attrs.apply(&mut i);
                m.update_inode_with(&i, Some(&chash))?;
                *of.cached.lock() = Some((self.generation_after_tx(), i));
            }
            Ok(resolved)
        });
        match result {
            Ok(resolved) => {
                // Clusters written for blobs someone else stored meanwhile.
                let unused: Vec<u32> = fresh
                    .iter()
                    .filter(|(h, _)| !used.contains(*h))
                    .filter_map(|(_, d)| match d {
                        BlobData::Cluster(l) => Some(*l),
                        _ => None,
                    })
                    .collect();
                self.free_clusters(&unused);
                for (idx, c) in resolved {
                    st.chunks.insert(idx, c);
                }
                st.dirty.clear();
                st.dirty_bytes = 0;
                st.dropped.clear();
                st.holes.clear();
                st.drop_from = None;
                st.meta_dirty = false;
                of.blocks.store(blocks, Ordering::Release);
                *of.attrs.lock() = AttrChange::default();
                Ok(())
            }
            Err(e) => {
                self.free_clusters(&written);
                Err(e)
            }
        }
    }

    /// Commits the handle's file (what `close` promises).
    pub fn flush(&self, fh: u64) -> Result<()> {
        if let Some(Handle::Virtual(_)) = self.handles.lock().get(&fh) {
            return Ok(());
        }
        let of = self.file(fh)?;
        let mut st = self.data_mut(&of)?;
        self.commit_locked(&of, &mut st)
    }

    /// Commits the file and makes the store durable.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        self.flush(fh)?;
        self.sync_all()
    }

    /// Durable barrier for everything committed so far.
    pub fn sync_all(&self) -> Result<()> {
        if self.tuning.read_only {
            return Ok(());
        }
        // The long part outside the lock; `commit_batch` syncs again (and
        // rolls the batch back if a sync failed).
        let _ = self.blobs.sync();
        // One lock hold, so that no new batch opens before the barrier.
        let m = self.meta();
        let frees = self.commit_batch(&m)?;
        m.barrier()?;
        drop(m);
        self.free_clusters(&frees);
        Ok(())
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let h = self.handles.lock().remove(&fh);
        match h {
            Some(Handle::File(of)) => self.release_file(of, true),
            Some(Handle::Dir(_)) | Some(Handle::Virtual(_)) => Ok(()),
            None => Err(FsError::BadHandle),
        }
    }

    /// Commits every open file (unmount, shutdown).
    pub fn commit_all(&self) -> Result<()> {
        let files: Vec<Arc<OpenFile>> = self.open.lock().values().cloned().collect();
        let mut first_err = None;
        for of in files {
            let r = self
                .data_mut(&of)
                .and_then(|mut st| self.commit_locked(&of, &mut st));
            if let Err(e) = r {
                tracing::error!("could not commit inode {}: {e}", of.ino);
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => self.sync_all(),
        }
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let (files, _) = {
            let s = self.meta().stats()?;
            (s.files + s.dirs, s.blobs)
        };
        // Inodes are rows: as many are free as the disk could hold rows
        // for; report the disk's own free inode count when it has one, and
        // keep total = used + free.
        let mut out = StatFs {
            bsize: 4096,
            namelen: NAME_MAX as u32,
            files,
            ffree: 1 << 32,
            ..Default::default()
        };
        if let Some(v) = self.disk_space() {
            let scale = (v.f_frsize / 4096).max(1);
            out.blocks = v.f_blocks * scale;
            out.bfree = v.f_bfree * scale;
            out.bavail = v.f_bavail * scale;
            if v.f_favail > 0 {
                out.ffree = v.f_favail;
            }
        }
        out.files += out.ffree;
        Ok(out)
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
