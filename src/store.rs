//! A store: one folder holding the SQLite database and the QVFS container.
//!
//! ```text
//! STORE/queryfs.db        metadata (WAL mode: also queryfs.db-wal, -shm)
//! STORE/blobs.qfi         container FAT
//! STORE/blobs.qfd         container clusters; cluster 0 = header
//! STORE/lock              flock'ed by the one process that may write
//! STORE/reserve           disk space held back for a full disk (see below)
//! ```
//!
//! The container header (cluster 0) starts with `0x00`, so a plain QVFS
//! reader sees an empty root, followed by a magic line and the store id that
//! is also in the database: opening refuses a container that belongs to
//! another database.
//!
//! One owner: a process that writes (a mount, or an offline command that
//! changes the store) holds an exclusive `flock` on `STORE/lock` and writes
//! its pid and purpose there; a second writer is refused with that text.
//! Readers need no lock: SQLite's WAL gives them a snapshot, and blob bytes
//! they read are checked against their BLAKE3 name. `fsck` takes the lock
//! (a check beside a running mount would see the database and the FAT at
//! different moments and report damage that is not there) but opens
//! everything read-only: without `--repair` it never writes to the store.
//!
//! Opening never creates or migrates an existing store's database from
//! nothing: a `queryfs.db` that is empty (0 bytes) or has no queryfs schema
//! is refused before SQLite touches it.
//!
//! Damaged chains: every open for writing first walks every committed blob
//! chain ([`crate::qvfs::container::check_chains`]). If one is damaged, no
//! cluster is reclaimed (an allocated cluster that no chain reaches may be
//! the lost rest of a damaged one), the container is put in append-only
//! mode (nothing allocated now is ever reused, nothing is freed), the
//! damage is logged with the files that hold it, and `gc` refuses; `fsck
//! --repair` quarantines the damaged blobs (see `meta::quarantine`), after
//! which reclaim works again.
//!
//! Full disk: `STORE/reserve` ([`RESERVE_BYTES`], allocated with
//! `posix_fallocate` at init and at any writing open with room for it) is
//! deleted at open when the disk has less free space than its size, or when
//! opening fails for lack of space, and the open retried: opening needs a
//! little space even to read (SQLite creates and sizes `queryfs.db-shm`, and
//! a writer appends to the WAL), so a store on a 100% full disk can still
//! be mounted and files deleted to make room.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use parking_lot::Mutex;

use crate::blob::{self, BlobRef, BlobStore, Reclaim};
use crate::error::FsError;
use crate::meta::{self, BlobData, Meta, MetaError, MetaRead, MetaStore};
use crate::qvfs::container::QUARANTINED;
use crate::qvfs::{Container, CLUSTER_SIZE};
use crate::types::BlobLoc;
use crate::vfs::{Fs, Room, Space, Tuning};

pub const DB_FILE: &str = "queryfs.db";
pub const QFI_FILE: &str = "blobs.qfi";
pub const QFD_FILE: &str = "blobs.qfd";
pub const LOCK_FILE: &str = "lock";
pub const RESERVE_FILE: &str = "reserve";
/// Size of `STORE/reserve`.
pub const RESERVE_BYTES: u64 = 16 << 20;
const MAGIC: &[u8] = b"\0QUERYFS CONTAINER 1\n";
/// Default chunk size (see BENCHMARKS.md for the measurements behind it).
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024;

/// Errors of opening and maintaining a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not a queryfs store (no {DB_FILE}); create one with `queryfs init {0}`")]
    NotAStore(String),
    #[error("{0} is already a queryfs store")]
    AlreadyExists(String),
    #[error(
        "store {dir} is in use by pid {pid} ({purpose}); unmount it or stop that process first"
    )]
    Busy {
        dir: String,
        pid: String,
        purpose: String,
    },
    #[error("store {0}: the container does not belong to this database (store ids differ)")]
    Mismatch(String),
    #[error("store {0}: {1}")]
    Corrupt(String, String),
    #[error("store {dir}: {summary}; nothing was reclaimed. Unmount it and run `queryfs --store {dir} fsck --repair`")]
    Damaged { dir: String, summary: String },
    #[error("store {0}: {1}")]
    Io(String, std::io::Error),
    #[error("store {0}: {1}")]
    Meta(String, MetaError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How to open a store.
#[derive(Debug, Clone)]
pub enum Access {
    /// Exclusive writer; `purpose` is shown to anyone refused. With `recover`,
    /// crash leftovers (orphan clusters, unlinked inodes) are reclaimed.
    Write { purpose: String, recover: bool },
    /// Holds the lock like a writer (no mount beside it) but opens the
    /// database and the container read-only: writes nothing (`fsck`).
    Check { purpose: String },
    /// Reader beside whatever else runs.
    Read,
}

/// The default store: `$XDG_DATA_HOME/queryfs/default`, else
/// `~/.local/share/queryfs/default`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share")
        });
    base.join("queryfs").join("default")
}

/// An open store: the composition root. It opens the two backends (the
/// SQLite metadata and the QVFS container as the blob store), hands them to
/// the core, and runs gc, fsck and info over the same two.
pub struct Store {
    pub dir: PathBuf,
    pub fs: Arc<Fs>,
    /// The metadata store, shared with the core.
    meta: Arc<Mutex<Box<dyn MetaStore>>>,
    /// The blob store the core writes to, and the same container for what
    /// only a container has (repair's hold and append-only mode).
    blobs: Arc<dyn BlobStore>,
    container: Option<Arc<Container>>,
    pub id: String,
    pub read_only: bool,
    /// Blobs with damaged chains found at open (writing opens only); the
    /// container is append-only while this is not empty.
    pub damage: Vec<DamagedBlob>,
    /// The reserve file was deleted at this open to make room.
    pub reserve_released: bool,
    /// Held for the life of the store when writing.
    _lock: Option<File>,
}

/// A committed blob whose container chain is damaged.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedBlob {
    /// BLAKE3 name, hex.
    pub blob: String,
    pub size: u64,
    pub start_cluster: u64,
    pub reason: String,
    /// Paths of the files that hold it (one name per file).
    pub files: Vec<String>,
    #[serde(skip)]
    hash: [u8; 32],
    /// Clusters its chain reaches, and the free cluster it points to.
    #[serde(skip)]
    clusters: Vec<u64>,
    #[serde(skip)]
    dangling: Option<u64>,
}

impl DamagedBlob {
    fn line(&self) -> String {
        format!(
            "blob {} ({} bytes, chain at cluster {}): {}; held by {}",
            &self.blob[..16],
            self.size,
            self.start_cluster,
            self.reason,
            if self.files.is_empty() {
                "no file".to_string()
            } else {
                self.files.join(", ")
            }
        )
    }
}

/// The files holding damaged blobs, each once.
pub fn damaged_files(d: &[DamagedBlob]) -> Vec<&str> {
    let mut files: Vec<&str> = d
        .iter()
        .flat_map(|b| b.files.iter().map(String::as_str))
        .collect();
    files.sort_unstable();
    files.dedup();
    files
}

fn damage_summary(d: &[DamagedBlob]) -> String {
    let files = damaged_files(d);
    let mut why: Vec<String> = d
        .iter()
        .take(5)
        .map(|b| format!("{}: {}", &b.blob[..16], b.reason))
        .collect();
    if d.len() > 5 {
        why.push(format!("and {} more", d.len() - 5));
    }
    format!(
        "{} blob(s) have damaged cluster chains ({}), held by {}",
        d.len(),
        why.join("; "),
        if files.is_empty() {
            "no file".to_string()
        } else {
            files.join(", ")
        }
    )
}

fn disp(p: &Path) -> String {
    p.display().to_string()
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        b.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    }
    meta::hex(&b)
}

/// True when `dir` holds a store.
pub fn exists(dir: &Path) -> bool {
    dir.join(DB_FILE).exists()
}

/// Creates a new, empty store in `dir` (created if missing).
pub fn init(dir: &Path) -> Result<()> {
    let d = disp(dir);
    if exists(dir) {
        return Err(StoreError::AlreadyExists(d));
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::Io(d.clone(), e))?;
    let lock = lock_exclusive(dir, "init")?;
    let id = random_id();
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(id.as_bytes());
    header.push(b'\n');
    let open_rw = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .map_err(|e| StoreError::Io(d.clone(), e))
    };
    Container::create(
        Box::new(open_rw(QFI_FILE)?),
        Box::new(open_rw(QFD_FILE)?),
        &header,
    )
    .map_err(|e| StoreError::Io(d.clone(), e))?;
    // The database last: its presence is what makes the folder a store.
    let tmp = dir.join(format!("{DB_FILE}.init"));
    let _ = fs::remove_file(&tmp);
    {
        let m = Meta::open(&tmp, true).map_err(|e| StoreError::Meta(d.clone(), e))?;
        first_rows(&m, &id).map_err(|e| StoreError::Meta(d.clone(), e))?;
        // Fold the WAL in so that only the one file needs renaming.
        m.barrier().map_err(|e| StoreError::Meta(d.clone(), e))?;
    }
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(dir.join(format!("{DB_FILE}.init{ext}")));
    }
    fs::rename(&tmp, dir.join(DB_FILE)).map_err(|e| StoreError::Io(d.clone(), e))?;
    ensure_reserve(dir);
    drop(lock);
    Ok(())
}

/// The settings and root directory of a new store.
fn first_rows(m: &Meta, id: &str) -> std::result::Result<(), MetaError> {
    let caller = crate::vfs::Caller::current();
    m.write::<_, MetaError>(|m| {
        m.store_set("store_id", id)?;
        m.store_set("chunk_size", &DEFAULT_CHUNK_SIZE.to_string())?;
        m.store_set("durable_barrier", "0")?;
        m.store_set("created_ns", &crate::vfs::now_ns().to_string())?;
        m.insert_root(0o755, caller.uid, caller.gid, crate::vfs::now_ns())
    })
}

/// What [`Store::dir`] of a store in memory says.
pub const MEMORY: &str = "(memory)";

/// A new, empty store held in memory: blobs in [`blob::MemBlobs`], metadata
/// in SQLite on `:memory:`, the same core over them. Nothing outlives it
/// (`queryfs mount --memory`: scratch space, and the exerciser's second
/// backend). It has `/by-tag` but no `/sql` or `/queries`: users' SQL runs
/// in a sandbox connection that needs a database file.
pub fn open_memory() -> Result<Store> {
    let d = MEMORY.to_string();
    let meta = Meta::open_in_memory().map_err(|e| StoreError::Meta(d.clone(), e))?;
    let id = random_id();
    first_rows(&meta, &id).map_err(|e| StoreError::Meta(d.clone(), e))?;
    let blobs: Arc<dyn BlobStore> = Arc::new(blob::MemBlobs::new());
    let meta: Arc<Mutex<Box<dyn MetaStore>>> = Arc::new(Mutex::new(Box::new(meta)));
    let fs = Arc::new(Fs::new(
        meta.clone(),
        blobs.clone(),
        DEFAULT_CHUNK_SIZE,
        Tuning::default(),
        Some(Arc::new(MemoryRoom {
            blobs: blobs.clone(),
        })),
    ));
    Ok(Store {
        dir: PathBuf::from(MEMORY),
        fs,
        meta,
        blobs,
        container: None,
        id,
        read_only: false,
        damage: Vec::new(),
        reserve_released: false,
        _lock: None,
    })
}

fn lock_exclusive(dir: &Path, purpose: &str) -> Result<File> {
    let d = disp(dir);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| StoreError::Io(d.clone(), e))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let mut lines = text.lines();
        let pid = lines.next().unwrap_or("?").to_string();
        let purpose = lines.next().unwrap_or("unknown").to_string();
        return Err(StoreError::Busy {
            dir: d,
            pid,
            purpose,
        });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}\n{}\n", std::process::id(), purpose);
    let _ = f.flush();
    Ok(f)
}

/// Refuses a `queryfs.db` that is empty or carries no queryfs schema, by
/// reading its header only (SQLite is not opened, nothing is written).
fn check_db_header(dir: &Path) -> Result<()> {
    let d = disp(dir);
    let path = dir.join(DB_FILE);
    let mut f = File::open(&path).map_err(|e| StoreError::Io(disp(&path), e))?;
    let mut h = [0u8; 100];
    let mut n = 0;
    while n < h.len() {
        match f.read(&mut h[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(StoreError::Io(disp(&path), e)),
        }
    }
    let bad = |why: String| {
        Err(StoreError::Corrupt(
            d.clone(),
            format!("{DB_FILE} is empty or damaged ({why}); nothing was written to it. Restore it from a backup"),
        ))
    };
    if n == 0 {
        return bad("0 bytes".into());
    }
    if n < h.len() || &h[..16] != b"SQLite format 3\0" {
        return bad("not a SQLite database".into());
    }
    let user_version = u32::from_be_bytes([h[60], h[61], h[62], h[63]]);
    if user_version == 0 {
        return bad("no queryfs schema".into());
    }
    Ok(())
}

/// Free bytes for unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Free space on the store's disk under which the space reserve is released.
const LOW_SPACE: u64 = 32 << 20;

/// A store folder's room: the disk holding it, and its space reserve.
struct FolderRoom {
    dir: PathBuf,
}

/// The room of the store folder `dir`.
pub fn folder_room(dir: &Path) -> Arc<dyn Room> {
    Arc::new(FolderRoom {
        dir: dir.to_path_buf(),
    })
}

impl Room for FolderRoom {
    fn space(&self) -> Option<Space> {
        let v = rustix::fs::statvfs(&self.dir).ok()?;
        Some(Space {
            total: v.f_blocks.saturating_mul(v.f_frsize),
            free: v.f_bfree.saturating_mul(v.f_frsize),
            avail: v.f_bavail.saturating_mul(v.f_frsize),
            files_free: Some(v.f_favail),
        })
    }

    /// Deletes the space reserve when the disk is nearly full, so that the
    /// metadata commits that free space (unlink, rmdir, truncate) still fit.
    fn when_nearly_full(&self) {
        let reserve = reserve_path(&self.dir);
        let Some(free) = free_bytes(&self.dir) else {
            return;
        };
        if free < LOW_SPACE && reserve.exists() {
            match fs::remove_file(&reserve) {
                Ok(()) => tracing::warn!(
                    "the disk holding the store has {free} bytes free: released the space reserve"
                ),
                Err(e) => tracing::warn!("releasing the space reserve: {e}"),
            }
        }
    }
}

/// A store in memory: its room is the machine's free memory, and what its
/// blobs hold is in use.
struct MemoryRoom {
    blobs: Arc<dyn BlobStore>,
}

impl Room for MemoryRoom {
    fn space(&self) -> Option<Space> {
        let si = rustix::system::sysinfo();
        let unit = u64::from(si.mem_unit.max(1));
        let free = si.freeram.saturating_mul(unit);
        let used = self.blobs.usage().map_or(0, |u| u.bytes);
        Some(Space {
            total: free.saturating_add(used),
            free,
            avail: free,
            files_free: None,
        })
    }
}

/// Path of the reserve file of the store in `dir`.
pub fn reserve_path(dir: &Path) -> PathBuf {
    dir.join(RESERVE_FILE)
}

/// Deletes the reserve file; true if there was one.
pub fn release_reserve(dir: &Path) -> bool {
    let p = reserve_path(dir);
    match fs::remove_file(&p) {
        Ok(()) => {
            tracing::warn!(
                "the disk of store {} is (nearly) full: deleted its {} MiB reserve file to make room; delete files to free space",
                dir.display(),
                RESERVE_BYTES >> 20
            );
            true
        }
        Err(_) => false,
    }
}

/// Creates the reserve file when it is missing and the disk has room for it
/// twice over. Best effort: a store works without it.
fn ensure_reserve(dir: &Path) {
    let p = reserve_path(dir);
    if p.exists() || free_bytes(dir).is_none_or(|f| f < 2 * RESERVE_BYTES) {
        return;
    }
    let Ok(f) = OpenOptions::new().write(true).create_new(true).open(&p) else {
        return;
    };
    // glibc's posix_fallocate (rustix has only the raw fallocate, which has
    // no fallback where the file system lacks it).
    // SAFETY: `f` is an open file; the call only reads its descriptor.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, RESERVE_BYTES as libc::off_t) };
    if r != 0 {
        drop(f);
        let _ = fs::remove_file(&p);
        tracing::debug!("could not allocate {}: errno {r}", p.display());
    }
}

/// True when `e` says the disk is full (SQLite reports a failed -shm
/// extension as a plain I/O error, so that counts too when space is short).
fn is_full(e: &StoreError, dir: &Path) -> bool {
    let full_msg = |m: &MetaError| {
        matches!(m, MetaError::Sql(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::DiskFull || f.code == rusqlite::ErrorCode::SystemIoFailure)
    };
    let low = free_bytes(dir).is_some_and(|f| f < RESERVE_BYTES);
    match e {
        StoreError::Meta(_, m) => full_msg(m) && low,
        StoreError::Io(_, io) => io.raw_os_error() == Some(libc::ENOSPC),
        StoreError::Corrupt(_, msg) => msg.contains("No space left") || msg.contains("full"),
        StoreError::Fs(FsError::NoSpace) => true,
        StoreError::Fs(FsError::Meta(m)) => full_msg(m) && low,
        StoreError::Fs(FsError::Io(io)) => io.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    }
}

/// Opens a store. With `create`, a missing store is created first.
///
/// When the disk is short of space (less free than [`RESERVE_BYTES`]), or
/// the open fails for lack of it, the reserve file is deleted and the open
/// retried once.
pub fn open(dir: &Path, access: Access, create: bool) -> Result<Store> {
    let d = disp(dir);
    if !exists(dir) {
        if create {
            init(dir)?;
        } else {
            return Err(StoreError::NotAStore(d));
        }
    }
    check_db_header(dir)?;
    let mut released = false;
    if free_bytes(dir).is_some_and(|f| f < RESERVE_BYTES) {
        released = release_reserve(dir);
    }
    let mut s = match open_once(dir, &access, false) {
        Err(e) if !released && is_full(&e, dir) && release_reserve(dir) => {
            released = true;
            open_once(dir, &access, false)
        }
        r => r,
    };
    // Reading needs no space at all when nothing writes the store and its
    // WAL is empty: then the database is opened as an immutable file.
    if let Err(e) = &s {
        if is_full(e, dir) && !matches!(access, Access::Write { .. }) {
            if let Ok(ro) = open_once(dir, &access, true) {
                tracing::warn!(
                    "the disk of store {d} is full: reading it as an immutable file (no writer runs)"
                );
                s = Ok(ro);
            }
        }
    }
    let mut s = s.map_err(|e| {
        if is_full(&e, dir) {
            let cause = match &e {
                StoreError::Meta(_, m) => m.to_string(),
                StoreError::Io(_, io) => io.to_string(),
                StoreError::Corrupt(_, m) => m.clone(),
                other => other.to_string(),
            };
            StoreError::Corrupt(
                d.clone(),
                format!("{cause}: the store's disk is full and no reserve file is left; free some space on it"),
            )
        } else {
            e
        }
    })?;
    s.reserve_released = released;
    if matches!(access, Access::Write { .. }) && !released {
        ensure_reserve(dir);
    }
    Ok(s)
}

/// A shared lock on `STORE/lock` (no writer can start while it is held),
/// taken without writing anything.
fn lock_shared_quiet(dir: &Path) -> Result<File> {
    let d = disp(dir);
    let f = File::open(dir.join(LOCK_FILE)).map_err(|e| StoreError::Io(d.clone(), e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared)
        .map_err(|e| StoreError::Io(d, e.into()))?;
    Ok(f)
}

/// One open attempt. With `immutable` (readers only, on a full disk), the
/// store lock is held so that no writer runs, and the database is opened as
/// an immutable file when its WAL is empty.
fn open_once(dir: &Path, access: &Access, immutable: bool) -> Result<Store> {
    let d = disp(dir);
    let (lock, read_only) = match access {
        Access::Write { purpose, .. } => (Some(lock_exclusive(dir, purpose)?), false),
        Access::Check { purpose } => (Some(lock_exclusive(dir, purpose)?), true),
        Access::Read if immutable => (Some(lock_shared_quiet(dir)?), true),
        Access::Read => (None, true),
    };
    let meta = if immutable {
        let wal = fs::metadata(dir.join(format!("{DB_FILE}-wal"))).map_or(0, |m| m.len());
        if !read_only || wal != 0 {
            return Err(StoreError::Corrupt(
                d,
                "the write-ahead log is not empty".into(),
            ));
        }
        Meta::open_immutable(&dir.join(DB_FILE))
    } else if read_only {
        Meta::open_read_only(&dir.join(DB_FILE))
    } else {
        Meta::open(&dir.join(DB_FILE), false)
    }
    .map_err(|e| StoreError::Meta(d.clone(), e))?;
    let id = meta
        .store_get("store_id")
        .map_err(|e| StoreError::Meta(d.clone(), e))?
        .ok_or_else(|| StoreError::Corrupt(d.clone(), "the database has no store id".into()))?;
    let chunk_size: u64 = meta
        .store_get("chunk_size")
        .map_err(|e| StoreError::Meta(d.clone(), e))?
        .and_then(|v| v.parse().ok())
        .filter(|&c: &u64| c >= 4096 && c % 4096 == 0 && c <= 64 << 20)
        .ok_or_else(|| {
            StoreError::Corrupt(d.clone(), "the database has no valid chunk size".into())
        })?;
    let open_file = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(dir.join(name))
            .map_err(|e| StoreError::Io(format!("{d}/{name}"), e))
    };
    let container = Container::open(
        Box::new(open_file(QFI_FILE)?),
        Box::new(open_file(QFD_FILE)?),
    )
    .map_err(|e| StoreError::Corrupt(d.clone(), format!("container: {e}")))?;
    let mut c0 = [0u8; CLUSTER_SIZE];
    container
        .read_cluster(0, &mut c0)
        .map_err(|e| StoreError::Io(d.clone(), e))?;
    let mut want = MAGIC.to_vec();
    want.extend_from_slice(id.as_bytes());
    if !c0.starts_with(&want) {
        return Err(StoreError::Mismatch(d));
    }
    let container = Arc::new(container);
    let blobs: Arc<dyn BlobStore> = container.clone();
    let mut damage = Vec::new();
    if let Access::Write { recover: want, .. } = access {
        let r = if *want {
            recover(&meta, &*blobs)
        } else {
            damage_of(&meta, &*blobs).map(|damage| Recovery {
                damage,
                ..Default::default()
            })
        }
        .map_err(|e| StoreError::Corrupt(d.clone(), format!("recovery: {e}")))?;
        damage = r.damage;
        if !damage.is_empty() {
            container.set_append_only(true);
        }
        // Without recovery the caller reports the damage (gc refuses,
        // repair repairs).
        if !damage.is_empty() && *want {
            tracing::warn!(
                "store {d}: {}; serving it append-only (no cluster is reused or freed) and reclaiming nothing. Run `queryfs --store {d} fsck --repair` while it is not mounted",
                damage_summary(&damage)
            );
        }
    }
    let tuning = Tuning {
        read_only,
        ..Tuning::default()
    };
    let meta: Arc<Mutex<Box<dyn MetaStore>>> = Arc::new(Mutex::new(Box::new(meta)));
    let fs = Arc::new(Fs::new(
        meta.clone(),
        blobs.clone(),
        chunk_size,
        tuning,
        Some(folder_room(dir)),
    ));
    Ok(Store {
        dir: dir.to_path_buf(),
        fs,
        meta,
        blobs,
        container: Some(container),
        id,
        read_only,
        damage,
        reserve_released: false,
        _lock: lock,
    })
}

/// What recovery or gc reclaimed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Reclaimed {
    pub orphan_clusters: u64,
    pub unreferenced_blobs: u64,
    pub unlinked_inodes: u64,
}

/// What recovery did, or the damage that stopped it.
#[derive(Debug, Default, Clone)]
struct Recovery {
    reclaimed: Reclaimed,
    damage: Vec<DamagedBlob>,
}

/// One path of `ino` (a name of it and of each parent), for messages.
fn path_of(m: &dyn MetaStore, ino: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = ino;
    while cur != crate::vfs::ROOT {
        match m.parent_of(cur) {
            Ok(Some((p, name))) if parts.len() < 4096 => {
                parts.push(String::from_utf8_lossy(&name).into_owned());
                cur = p;
            }
            _ => return format!("<inode {ino}, no name>"),
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

fn paths_holding(
    m: &dyn MetaStore,
    hash: &[u8; 32],
) -> std::result::Result<Vec<String>, MetaError> {
    Ok(m.inodes_holding(hash)?
        .into_iter()
        .map(|ino| path_of(m, ino))
        .collect())
}

/// The blobs in the blob store the metadata references (quarantined ones
/// excluded) and the units kept for quarantined blobs that files still hold.
#[allow(clippy::type_complexity)]
fn chains_and_keep(
    m: &dyn MetaStore,
) -> std::result::Result<(Vec<([u8; 32], BlobRef)>, Vec<u64>), MetaError> {
    let chains = m
        .blob_chains()?
        .into_iter()
        .filter(|&(_, _, loc)| loc != BlobLoc(u64::from(QUARANTINED)))
        .map(|(hash, len, loc)| (hash, BlobRef { loc, len }))
        .collect();
    let mut keep: Vec<u64> = m
        .quarantined()?
        .into_iter()
        .filter(|q| q.refcount.is_some())
        .flat_map(|q| q.clusters.into_iter().map(u64::from))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    Ok((chains, keep))
}

fn damaged_blobs(
    m: &dyn MetaStore,
    chains: &[([u8; 32], BlobRef)],
    found: Vec<blob::DamagedBlob>,
) -> std::result::Result<Vec<DamagedBlob>, MetaError> {
    found
        .into_iter()
        .map(|dc| {
            let (hash, r) = chains[dc.index];
            Ok(DamagedBlob {
                blob: meta::hex(&hash),
                size: r.len,
                start_cluster: r.loc.0,
                reason: dc.reason,
                files: paths_holding(m, &hash)?,
                hash,
                clusters: dc.units,
                dangling: dc.dangling,
            })
        })
        .collect()
}

/// The damaged blobs of the store (reads only).
fn damage_of(
    m: &dyn MetaStore,
    c: &dyn BlobStore,
) -> std::result::Result<Vec<DamagedBlob>, FsError> {
    let (chains, keep) = chains_and_keep(m)?;
    let refs: Vec<BlobRef> = chains.iter().map(|x| x.1).collect();
    let found = c.check(&refs, &keep)?.damaged;
    Ok(damaged_blobs(m, &chains, found)?)
}

/// Reclaims crash leftovers. Only safe while no other process uses the
/// store. Checks every chain first: on any damage it changes nothing and
/// returns the damage.
fn recover(m: &dyn MetaStore, c: &dyn BlobStore) -> std::result::Result<Recovery, FsError> {
    // Quarantined blobs no file holds any more: their clusters go back.
    let resolved: Vec<[u8; 32]> = m
        .quarantined()?
        .into_iter()
        .filter(|q| q.refcount.is_none())
        .map(|q| q.hash)
        .collect();
    if !resolved.is_empty() {
        m.write(|m| -> std::result::Result<(), FsError> {
            for h in &resolved {
                m.drop_quarantine(h)?;
            }
            Ok(())
        })?;
    }
    let damage = damage_of(m, c)?;
    if !damage.is_empty() {
        return Ok(Recovery {
            damage,
            ..Default::default()
        });
    }
    let mut r = Reclaimed::default();
    let mut frees = Vec::new();
    m.write(|m| -> std::result::Result<(), FsError> {
        // Inodes unlinked while open when the last process died.
        for ino in m.unlinked_inodes()? {
            for h in m.chunk_hashes(ino)? {
                if let Some(Some(loc)) = m.decref(&h)? {
                    frees.push(loc);
                }
            }
            m.delete_all_chunks(ino)?;
            m.delete_inode_row(ino)?;
            r.unlinked_inodes += 1;
        }
        let gone = m.delete_unreferenced_blobs()?;
        r.unreferenced_blobs = gone.len() as u64;
        frees.extend(gone.into_iter().flatten());
        Ok(())
    })?;
    // The commit above must be durable before storage it released is
    // reused (it ran with synchronous=NORMAL).
    if !frees.is_empty() {
        m.barrier()?;
    }
    for loc in frees {
        // Sound, unshared chains (checked above); QUARANTINED frees nothing.
        let _ = c.delete(loc);
    }
    let (chains, keep) = chains_and_keep(m)?;
    let refs: Vec<BlobRef> = chains.iter().map(|x| x.1).collect();
    match c.reclaim(&refs, &keep)? {
        Reclaim::Freed(n) => r.orphan_clusters = n,
        Reclaim::Damaged(found) => {
            c.sync()?;
            return Ok(Recovery {
                reclaimed: r,
                damage: damaged_blobs(m, &chains, found)?,
            });
        }
    }
    c.sync()?;
    if r.orphan_clusters + r.unreferenced_blobs + r.unlinked_inodes > 0 {
        tracing::info!(?r, "reclaimed crash leftovers");
    }
    Ok(Recovery {
        reclaimed: r,
        damage: Vec::new(),
    })
}

/// What `fsck --repair` did.
#[derive(Debug, Clone, Serialize)]
pub struct Repair {
    /// The blobs quarantined now, with the files that held them.
    pub quarantined: Vec<DamagedBlob>,
    /// What the reclaim after the quarantine freed.
    pub reclaimed: Reclaimed,
}

impl Store {
    /// Commits what the core holds and frees what it released (a barrier),
    /// so that the store's own maintenance sees one settled state.
    fn settle_core(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.fs
            .sync_all()
            .map_err(|e| StoreError::Corrupt(disp(&self.dir), e.to_string()))
    }

    fn meta(&self) -> parking_lot::MappedMutexGuard<'_, dyn MetaStore> {
        parking_lot::MutexGuard::map(self.meta.lock(), |m| &mut **m)
    }

    /// Reclaims unreferenced blobs, orphan clusters and unlinked inodes.
    /// Refuses (and reclaims nothing) when a chain is damaged.
    pub fn gc(&self) -> Result<Reclaimed> {
        // Blobs the core released but has not freed yet (they wait for a
        // barrier) would look like orphans here and be freed twice.
        self.settle_core()?;
        let m = self.meta();
        let r = recover(&*m, &*self.blobs)?;
        if !r.damage.is_empty() {
            return Err(StoreError::Damaged {
                dir: disp(&self.dir),
                summary: damage_summary(&r.damage),
            });
        }
        Ok(r.reclaimed)
    }

    /// Deletes the reserve file (see the module doc); true if there was one.
    pub fn release_reserve(&self) -> bool {
        release_reserve(&self.dir)
    }

    /// Quarantines every blob whose chain is damaged (see
    /// `meta::quarantine`): their clusters, and every cluster that no chain
    /// reaches now (it may be the lost part of one), stay allocated while a
    /// file holds them; the files read EIO where the damage is. Healthy
    /// blobs are not touched. Then reclaims as `gc` does.
    pub fn repair(&self) -> Result<Repair> {
        let d = disp(&self.dir);
        if self.read_only {
            return Err(StoreError::Corrupt(d, "repair needs a writing open".into()));
        }
        self.settle_core()?;
        let m = self.meta();
        let me = |e| StoreError::Meta(d.clone(), e);
        let Some(c) = &self.container else {
            return Err(StoreError::Corrupt(
                d,
                "repair works on a QVFS container only".into(),
            ));
        };
        let (chains, keep) = chains_and_keep(&*m).map_err(me)?;
        let refs: Vec<BlobRef> = chains.iter().map(|x| x.1).collect();
        let check = self
            .blobs
            .check(&refs, &keep)
            .map_err(|e| StoreError::Io(d.clone(), e))?;
        let orphans = check.orphans;
        let damaged = damaged_blobs(&*m, &chains, check.damaged).map_err(me)?;
        let now = crate::vfs::now_ns();
        // A free cluster a damaged chain points to lost only its own FAT
        // entry: it holds the blob's bytes, so it is taken out of the free
        // list before anything else can be written.
        let dangling: Vec<u32> = damaged
            .iter()
            .filter_map(|b| b.dangling)
            .filter_map(|u| u32::try_from(u).ok())
            .collect();
        c.hold(&dangling)
            .and_then(|_| c.sync())
            .map_err(|e| StoreError::Io(d.clone(), e))?;
        m.write(|m| -> std::result::Result<(), MetaError> {
            for b in &damaged {
                let mut kept = b.clusters.clone();
                kept.extend(b.dangling);
                kept.extend(&orphans);
                kept.sort_unstable();
                kept.dedup();
                let kept: Vec<u32> = kept
                    .into_iter()
                    .filter_map(|u| u32::try_from(u).ok())
                    .collect();
                m.quarantine_blob(&b.hash, &kept, &b.reason, now)?;
            }
            Ok(())
        })
        .map_err(me)?;
        for b in &damaged {
            tracing::warn!("quarantined {}", b.line());
        }
        let r = recover(&*m, &*self.blobs)?;
        if !r.damage.is_empty() {
            return Err(StoreError::Damaged {
                dir: d,
                summary: format!("still damaged after repair: {}", damage_summary(&r.damage)),
            });
        }
        c.set_append_only(false);
        Ok(Repair {
            quarantined: damaged,
            reclaimed: r.reclaimed,
        })
    }

    /// Store statistics.
    pub fn info(&self) -> Result<Info> {
        let d = disp(&self.dir);
        let s = self
            .meta
            .lock()
            .stats()
            .map_err(|e| StoreError::Meta(d.clone(), e))?;
        let usage = self
            .blobs
            .usage()
            .map_err(|e| StoreError::Io(d.clone(), e))?;
        let db_bytes: u64 = ["", "-wal"]
            .iter()
            .filter_map(|ext| fs::metadata(self.dir.join(format!("{DB_FILE}{ext}"))).ok())
            .map(|m| m.len())
            .sum();
        Ok(Info {
            store: d,
            store_id: self.id.clone(),
            files: s.files,
            directories: s.dirs,
            logical_bytes: s.logical_bytes,
            stored_bytes: s.stored_bytes,
            inline_bytes: s.inline_bytes,
            blobs: s.blobs,
            dedup_ratio: if s.stored_bytes == 0 {
                1.0
            } else {
                s.logical_bytes as f64 / s.stored_bytes as f64
            },
            container_bytes: usage.bytes,
            container_clusters: usage.units,
            container_clusters_used: usage.units_used,
            database_bytes: db_bytes,
            chunk_size: self.fs.chunk_size(),
        })
    }

    /// Checks everything; `verify` also re-hashes every blob. Reads only.
    pub fn fsck(&self, verify: bool) -> Result<FsckReport> {
        let d = disp(&self.dir);
        let m = self.meta();
        let me = |e| StoreError::Meta(d.clone(), e);
        let mut problems = m.integrity_problems().map_err(me)?;
        problems.extend(m.consistency_problems().map_err(me)?);
        let unlinked = m.unlinked_inodes().map_err(me)?;
        for ino in &unlinked {
            problems.push(format!(
                "inode {ino} has no name left (unlinked while open); gc reclaims it"
            ));
        }
        let blobs = m.all_blobs().map_err(me)?;
        let c = &*self.blobs;
        let (chains, keep) = chains_and_keep(&*m).map_err(me)?;
        let refs: Vec<BlobRef> = chains.iter().map(|x| x.1).collect();
        let check = c
            .check(&refs, &keep)
            .map_err(|e| StoreError::Io(d.clone(), e))?;
        let damaged_idx: std::collections::HashSet<usize> =
            check.damaged.iter().map(|x| x.index).collect();
        let damaged = damaged_blobs(&*m, &chains, check.damaged.clone()).map_err(me)?;
        for b in &damaged {
            problems.push(format!(
                "{}; `queryfs fsck --repair` quarantines it",
                b.line()
            ));
        }
        let mut verified = 0u64;
        for b in &blobs {
            let hx = meta::hex(&b.hash[..8]);
            if let BlobData::Inline(data) = &b.data {
                if data.len() as u64 != b.size {
                    problems.push(format!(
                        "inline blob {hx}: {} bytes stored, {} recorded",
                        data.len(),
                        b.size
                    ));
                } else if verify && blake3::hash(data).as_bytes() != &b.hash {
                    problems.push(format!("inline blob {hx}: content does not match its hash"));
                }
                if verify {
                    verified += 1;
                }
            }
        }
        if verify {
            for (i, (hash, r)) in chains.iter().enumerate() {
                if damaged_idx.contains(&i) {
                    continue;
                }
                verified += 1;
                let mut buf = vec![0u8; r.len as usize];
                match c.get(r.loc, 0, &mut buf) {
                    Ok(()) if blake3::hash(&buf).as_bytes() == hash => {}
                    Ok(()) => problems.push(format!(
                        "blob {}: content does not match its hash; held by {}",
                        meta::hex(&hash[..8]),
                        paths_holding(&*m, hash).map_err(me)?.join(", ")
                    )),
                    Err(e) => problems.push(format!("blob {}: {e}", meta::hex(&hash[..8]))),
                }
            }
        }
        let orphans = check.orphans.len() as u64;
        if orphans > 0 {
            problems.push(if damaged.is_empty() {
                format!("{orphans} clusters are allocated but belong to no blob (orphans); gc reclaims them")
            } else {
                format!("{orphans} clusters are allocated but reached by no chain; they may be the lost part of a damaged chain, so nothing reclaims them before `fsck --repair`")
            });
        }
        let mut known = Vec::new();
        for q in m.quarantined().map_err(me)? {
            if q.refcount.is_none() {
                continue;
            }
            let files = paths_holding(&*m, &q.marker).map_err(me)?;
            known.push(KnownDamage {
                blob: meta::hex(&q.hash),
                size: q.size,
                reason: q.reason,
                quarantined_ns: q.created_ns,
                files,
            });
        }
        drop(m);
        Ok(FsckReport {
            clean: problems.is_empty() && known.is_empty(),
            problems,
            damaged,
            known_damage: known,
            blobs: blobs.len() as u64,
            blobs_verified: verified,
            clusters: check.units,
            orphan_clusters: orphans,
        })
    }
}

/// A blob quarantined by an earlier `fsck --repair` that files still hold.
#[derive(Debug, Clone, Serialize)]
pub struct KnownDamage {
    pub blob: String,
    pub size: u64,
    pub reason: String,
    pub quarantined_ns: i64,
    /// The files that read EIO where this blob was.
    pub files: Vec<String>,
}

/// What `info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub store: String,
    pub store_id: String,
    pub files: u64,
    pub directories: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub inline_bytes: u64,
    pub blobs: u64,
    pub dedup_ratio: f64,
    pub container_bytes: u64,
    pub container_clusters: u64,
    pub container_clusters_used: u64,
    pub database_bytes: u64,
    pub chunk_size: u64,
}

/// What `fsck` reports.
#[derive(Debug, Clone, Serialize)]
pub struct FsckReport {
    /// No problems and no known damage.
    pub clean: bool,
    /// Everything wrong that was not known before (damaged chains included).
    pub problems: Vec<String>,
    /// Blobs whose chains are damaged and not yet quarantined.
    pub damaged: Vec<DamagedBlob>,
    /// Quarantined blobs that files still hold (see `fsck --repair`).
    pub known_damage: Vec<KnownDamage>,
    pub blobs: u64,
    pub blobs_verified: u64,
    pub clusters: u64,
    pub orphan_clusters: u64,
}
