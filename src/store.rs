//! A store: one folder holding the SQLite database and the QVFS container.
//!
//! ```text
//! STORE/queryfs.db        metadata (WAL mode: also queryfs.db-wal, -shm)
//! STORE/blobs.qfi         container FAT
//! STORE/blobs.qfd         container clusters; cluster 0 = header
//! STORE/lock              flock'ed by the one process that may write
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
//! they read are checked against their BLAKE3 name.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::FsError;
use crate::meta::{self, BlobData, Meta, MetaError};
use crate::qvfs::{clusters_for, walk_chain, Container, CLUSTER_SIZE, FAT_FREE};
use crate::vfs::{Fs, Tuning};

pub const DB_FILE: &str = "queryfs.db";
pub const QFI_FILE: &str = "blobs.qfi";
pub const QFD_FILE: &str = "blobs.qfd";
pub const LOCK_FILE: &str = "lock";
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

/// An open store.
pub struct Store {
    pub dir: PathBuf,
    pub fs: Arc<Fs>,
    pub id: String,
    pub read_only: bool,
    /// Held for the life of the store when writing.
    _lock: Option<File>,
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
        let caller = crate::vfs::Caller::current();
        m.write::<_, MetaError>(|m| {
            m.store_set("store_id", &id)?;
            m.store_set("chunk_size", &DEFAULT_CHUNK_SIZE.to_string())?;
            m.store_set("durable_barrier", "0")?;
            m.store_set("created_ns", &crate::vfs::now_ns().to_string())?;
            m.insert_root(0o755, caller.uid, caller.gid, crate::vfs::now_ns())
        })
        .map_err(|e| StoreError::Meta(d.clone(), e))?;
        // Fold the WAL in so that only the one file needs renaming.
        m.barrier().map_err(|e| StoreError::Meta(d.clone(), e))?;
    }
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(dir.join(format!("{DB_FILE}.init{ext}")));
    }
    fs::rename(&tmp, dir.join(DB_FILE)).map_err(|e| StoreError::Io(d.clone(), e))?;
    drop(lock);
    Ok(())
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
    // SAFETY: a valid open fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
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

/// Opens a store. With `create`, a missing store is created first.
pub fn open(dir: &Path, access: Access, create: bool) -> Result<Store> {
    let d = disp(dir);
    if !exists(dir) {
        if create {
            init(dir)?;
        } else {
            return Err(StoreError::NotAStore(d));
        }
    }
    let (lock, read_only) = match &access {
        Access::Write { purpose, .. } => (Some(lock_exclusive(dir, purpose)?), false),
        Access::Read => (None, true),
    };
    let meta = if read_only {
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
    if let Access::Write { recover: true, .. } = access {
        recover(&meta, &container)
            .map_err(|e| StoreError::Corrupt(d.clone(), format!("recovery: {e}")))?;
    }
    let tuning = Tuning {
        read_only,
        ..Tuning::default()
    };
    let fs = Arc::new(
        Fs::new(meta, container, chunk_size, tuning, Some(dir.to_path_buf()))
            .with_query_db(dir.join(DB_FILE)),
    );
    Ok(Store {
        dir: dir.to_path_buf(),
        fs,
        id,
        read_only,
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

/// Reclaims crash leftovers. Only safe while no other process uses the store.
fn recover(m: &Meta, c: &Container) -> std::result::Result<Reclaimed, FsError> {
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
    for loc in frees {
        let _ = c.free_chain(loc);
    }
    r.orphan_clusters = c.reclaim(m.blob_locations()?)?;
    c.sync()?;
    if r.orphan_clusters + r.unreferenced_blobs + r.unlinked_inodes > 0 {
        tracing::info!(?r, "reclaimed crash leftovers");
    }
    Ok(r)
}

impl Store {
    /// Reclaims unreferenced blobs, orphan clusters and unlinked inodes.
    pub fn gc(&self) -> Result<Reclaimed> {
        let m = self.fs.meta();
        recover(&m, self.fs.container()).map_err(StoreError::from)
    }

    /// Store statistics.
    pub fn info(&self) -> Result<Info> {
        let d = disp(&self.dir);
        let s = self
            .fs
            .meta()
            .stats()
            .map_err(|e| StoreError::Meta(d.clone(), e))?;
        let (qfi, qfd) = self
            .fs
            .container()
            .file_sizes()
            .map_err(|e| StoreError::Io(d.clone(), e))?;
        let db_bytes: u64 = ["", "-wal"]
            .iter()
            .filter_map(|ext| fs::metadata(self.dir.join(format!("{DB_FILE}{ext}"))).ok())
            .map(|m| m.len())
            .sum();
        let c = self.fs.container();
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
            container_bytes: qfi + qfd,
            container_clusters: c.cluster_count(),
            container_clusters_used: c.allocated_count(),
            database_bytes: db_bytes,
            chunk_size: self.fs.chunk_size(),
        })
    }

    /// Checks everything; `verify` also re-hashes every blob.
    pub fn fsck(&self, verify: bool) -> Result<FsckReport> {
        let d = disp(&self.dir);
        let m = self.fs.meta();
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
        drop(m);
        let c = self.fs.container();
        let fat = c.fat_snapshot();
        let mut owner: Vec<bool> = vec![false; fat.len()];
        owner[0] = true;
        let mut verified = 0u64;
        for b in &blobs {
            let hx = meta::hex(&b.hash[..8]);
            match &b.data {
                BlobData::Inline(data) => {
                    if data.len() as u64 != b.size {
                        problems.push(format!(
                            "inline blob {hx}: {} bytes stored, {} recorded",
                            data.len(),
                            b.size
                        ));
                    } else if verify && blake3::hash(data).as_bytes() != &b.hash {
                        problems.push(format!("inline blob {hx}: content does not match its hash"));
                    }
                }
                BlobData::Cluster(loc) => match walk_chain(&fat, *loc) {
                    Err(e) => problems.push(format!("blob {hx}: {e}")),
                    Ok(chain) => {
                        if (chain.len() as u64) < clusters_for(b.size) {
                            problems.push(format!(
                                "blob {hx}: chain of {} clusters is too short for {} bytes",
                                chain.len(),
                                b.size
                            ));
                        }
                        for &cl in &chain {
                            if owner[cl as usize] {
                                problems.push(format!(
                                    "blob {hx}: cluster {cl} is in two chains (cross-link)"
                                ));
                            }
                            owner[cl as usize] = true;
                        }
                        if verify && (chain.len() as u64) >= clusters_for(b.size) {
                            let mut buf = vec![0u8; b.size as usize];
                            match c.read_chain(*loc, 0, &mut buf) {
                                Ok(()) if blake3::hash(&buf).as_bytes() == &b.hash => {}
                                Ok(()) => problems
                                    .push(format!("blob {hx}: content does not match its hash")),
                                Err(e) => problems.push(format!("blob {hx}: {e}")),
                            }
                        }
                    }
                },
            }
            if verify {
                verified += 1;
            }
        }
        let orphans = fat
            .iter()
            .enumerate()
            .filter(|&(i, &v)| v != FAT_FREE && !owner[i])
            .count() as u64;
        if orphans > 0 {
            problems.push(format!("{orphans} clusters are allocated but belong to no blob (orphans); gc reclaims them"));
        }
        Ok(FsckReport {
            clean: problems.is_empty(),
            problems,
            blobs: blobs.len() as u64,
            blobs_verified: verified,
            clusters: fat.len() as u64,
            orphan_clusters: orphans,
        })
    }
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
    pub clean: bool,
    pub problems: Vec<String>,
    pub blobs: u64,
    pub blobs_verified: u64,
    pub clusters: u64,
    pub orphan_clusters: u64,
}
