//! Metadata: the only place SQL runs.
//!
//! Connection setup (WAL, pragmas), migrations from `migrations/`, and typed
//! access to the statements in `queries/meta/`. Everything above this layer
//! sees rows as Rust types.
//!
//! Durability: commits run with `synchronous=NORMAL` (a commit survives a
//! crash of the process at once, and of the machine after the next WAL sync);
//! [`Meta::barrier`] runs one commit with `synchronous=FULL`, which syncs the
//! WAL and so makes every earlier commit durable too. `fsync` uses it.
//!
//! Group commit: with a window set ([`Meta::set_group_commit`]), `write`
//! calls join one open transaction, each inside its own savepoint (a failing
//! call rolls back only itself), and [`Meta::commit_batch`] commits them
//! together. Until then they are visible on this connection only. Work that
//! must be released only after the change that freed it commits (cluster
//! chains) waits in the batch ([`Meta::after_commit`]).

mod port;
pub mod quarantine;
pub mod queries;
pub mod safefn;
pub mod sandbox;
pub mod sqlmem;

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{named_params, Connection, OpenFlags, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};

pub use port::{MetaRead, MetaStore};
use quarantine::Quarantined;
use queries as q;

/// Errors of the metadata layer.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The query sandbox could not be opened.
    #[error("query connection: {0}")]
    Sandbox(sandbox::SandboxError),
}

pub type Result<T> = std::result::Result<T, MetaError>;

static MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../migrations/0001_initial.sql")),
    M::up(include_str!("../../migrations/0002_tags_and_queries.sql")),
    M::up(include_str!("../../migrations/0003_blocks.sql")),
    M::up(include_str!("../../migrations/0004_quarantine.sql")),
    M::up(include_str!("../../migrations/0005_placed_tags.sql")),
    M::up(include_str!("../../migrations/0006_dentry_names.sql")),
];

/// The migration list, for opening and for `validate()` in tests.
pub fn migrations() -> Migrations<'static> {
    Migrations::from_slice(MIGRATIONS)
}

pub use crate::types::{Attr as Inode, BlobLoc, FileKind};

/// An inode row, read from `r` from column `at` on.
fn inode_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Inode> {
    let bits: u32 = r.get(at + 1)?;
    let kind = FileKind::from_bits(bits).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            at + 1,
            rusqlite::types::Type::Integer,
            format!("{bits:#o} is not a file kind").into(),
        )
    })?;
    Ok(Inode {
        ino: r.get::<_, i64>(at)? as u64,
        kind,
        perm: r.get(at + 2)?,
        uid: r.get(at + 3)?,
        gid: r.get(at + 4)?,
        size: r.get::<_, i64>(at + 5)? as u64,
        nlink: r.get(at + 6)?,
        rdev: r.get(at + 7)?,
        atime: r.get(at + 8)?,
        mtime: r.get(at + 9)?,
        ctime: r.get(at + 10)?,
        btime: r.get(at + 11)?,
        blocks: r.get::<_, i64>(at + 12)? as u64,
    })
}

/// A new inode to insert.
pub struct NewInode<'a> {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub nlink: u32,
    pub now: i64,
    pub target: Option<&'a [u8]>,
    /// Content id of a regular file (`vfs::content_id`).
    pub chash: Option<[u8; 32]>,
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobData {
    /// In the blob store, at this location.
    Stored(BlobLoc),
    /// Stored inline in SQLite.
    Inline(Vec<u8>),
}

/// A chunk of a file: which blob, how long, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: [u8; 32],
    pub size: u32,
    pub data: BlobData,
}

/// One blob row, for checks.
pub struct BlobRow {
    pub hash: [u8; 32],
    pub size: u64,
    pub refcount: i64,
    pub data: BlobData,
}

/// Counts for `info`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub blobs: u64,
    pub stored_bytes: u64,
    pub inline_bytes: u64,
}

fn hash_of(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    v.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "blob hash is not 32 bytes".into(),
        )
    })
}

fn blob_data(loc: Option<i64>, data: Option<Vec<u8>>) -> BlobData {
    match (loc, data) {
        (Some(l), _) => BlobData::Stored(BlobLoc(l as u64)),
        (None, d) => BlobData::Inline(d.unwrap_or_default()),
    }
}

/// A metadata connection.
pub struct Meta {
    conn: Connection,
    batch: RefCell<Batch>,
    /// The next inode number to hand out (0: not read yet).
    next_ino: std::cell::Cell<u64>,
    /// The database file; `None` in memory.
    path: Option<std::path::PathBuf>,
    /// Called after every barrier (the crash tests note what is durable).
    #[cfg(test)]
    barrier_hook: RefCell<Option<Box<dyn Fn() + Send>>>,
}

/// A second connection that copies committed WAL frames into the database
/// file, so that the writer does not pause for it.
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    pub fn open(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(2))?;
        Ok(Checkpointer { conn })
    }

    /// One passive checkpoint (never waits for readers or the writer);
    /// returns the frames in the WAL.
    pub fn passive(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?)
    }

    /// Copies what is left and restarts the WAL from its start, waiting
    /// (up to the busy timeout) for readers. The caller keeps the writer
    /// idle meanwhile, or the WAL could only grow.
    pub fn restart(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Writes a batch holds at most before it is due regardless of its age.
const BATCH_MAX_WRITES: u32 = 4096;

/// The group-commit state of a connection.
#[derive(Default)]
struct Batch {
    /// How long a batch may stay open; `None`: every `write` commits.
    window: Option<Duration>,
    /// When the open batch began (`None`: no batch open).
    since: Option<Instant>,
    writes: u32,
    /// Cluster chains dropped by writes in the batch, released at commit.
    frees: Vec<BlobLoc>,
    /// Batches rolled back so far (their writes are lost).
    rollbacks: u64,
}

impl Batch {
    /// Closes the batch; returns how many writes it held.
    fn end(&mut self) -> u32 {
        self.since = None;
        std::mem::take(&mut self.writes)
    }

    /// Closes a batch that was rolled back: its frees are dropped (the
    /// chains stay referenced).
    fn abandon(&mut self) -> u32 {
        self.frees.clear();
        self.rollbacks += 1;
        self.end()
    }
}

impl Meta {
    /// Opens (creating if asked) the database at `path` and migrates it.
    /// Without `create`, a database with no queryfs schema (`user_version`
    /// 0: an empty or truncated file) is refused before anything is
    /// written to it, so that a damaged store is never "repaired" into an
    /// empty one.
    pub fn open(path: &Path, create: bool) -> Result<Meta> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)?;
        if !create {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            Self::require_schema(&conn, path)?;
        }
        Ok(Self::setup(conn)?.at(path))
    }

    /// Opens the database read-only (for offline readers beside a mount);
    /// refuses one with no queryfs schema, as [`Meta::open`] does.
    pub fn open_read_only(path: &Path) -> Result<Meta> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Self::require_schema(&conn, path)?;
        Ok(Meta::with(conn).at(path))
    }

    /// Fails unless the database carries a migrated queryfs schema. Only
    /// reads (an empty file reads as user_version 0 and writes nothing).
    fn require_schema(conn: &Connection, path: &Path) -> Result<()> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let has_store: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'store'",
            [],
            |r| r.get(0),
        )?;
        if version == 0 || has_store == 0 {
            return Err(MetaError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
                Some(format!(
                    "{} is empty or damaged (no queryfs schema); nothing was written to it",
                    path.display()
                )),
            )));
        }
        Ok(())
    }

    fn with(conn: Connection) -> Meta {
        Meta {
            conn,
            batch: RefCell::default(),
            next_ino: std::cell::Cell::new(0),
            path: None,
            #[cfg(test)]
            barrier_hook: RefCell::new(None),
        }
    }

    /// Test hook: no connection is opened beside this one (no checkpointer
    /// rewrites the database file, no sandbox).
    #[cfg(test)]
    pub(crate) fn alone(mut self) -> Meta {
        self.path = None;
        self
    }

    /// Test hook: `f` runs after every barrier returns.
    #[cfg(test)]
    pub(crate) fn on_barrier(&self, f: Box<dyn Fn() + Send>) {
        *self.barrier_hook.borrow_mut() = Some(f);
    }

    /// Notes the database file (for the connections opened beside this one).
    fn at(mut self, path: &Path) -> Meta {
        self.path = Some(path.to_path_buf());
        self
    }

    /// An in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Meta> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Meta> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // 16 MiB page cache: the hot part of the tree and chunk index.
        conn.pragma_update(None, "cache_size", -16384)?;
        migrations().to_latest(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(Meta::with(conn))
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Runs `f` in an IMMEDIATE transaction; commits on `Ok`, rolls back on
    /// `Err`. With group commit on, `f` runs in a savepoint of the open
    /// batch instead, and commits with it.
    pub fn write<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&Meta) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if self.batch.borrow().window.is_some() {
            return self.write_in_batch(f);
        }
        self.exec("BEGIN IMMEDIATE")?;
        match self.contain(f) {
            Ok(v) => {
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(MetaError::from(e).into());
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs `f`; if it panics, rolls back what it changed (the transaction,
    /// or its savepoint in a batch) before the panic goes on, so that a
    /// half-done change can never be committed with the batch.
    fn contain<T, E>(
        &self,
        f: impl FnOnce(&Meta) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(panic) => {
                if self.batch.borrow().since.is_some() && !self.conn.is_autocommit() {
                    let _ = self.exec("ROLLBACK TO qfs_write");
                    let _ = self.exec("RELEASE qfs_write");
                } else {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn write_in_batch<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&Meta) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if self.batch.borrow().since.is_none() {
            self.exec("BEGIN IMMEDIATE")?;
            self.batch.borrow_mut().since = Some(Instant::now());
        }
        self.exec("SAVEPOINT qfs_write")?;
        match self.contain(f) {
            Ok(v) => {
                self.exec("RELEASE qfs_write")?;
                self.batch.borrow_mut().writes += 1;
                Ok(v)
            }
            Err(e) => {
                if self.conn.is_autocommit() {
                    // SQLite rolled the whole batch back (a full disk, an
                    // I/O error): everything in it is gone.
                    let lost = self.batch.borrow_mut().abandon();
                    tracing::error!(
                        "a failed write rolled back a batch of {lost} metadata changes"
                    );
                } else {
                    let _ = self.exec("ROLLBACK TO qfs_write");
                    let _ = self.exec("RELEASE qfs_write");
                }
                Err(e)
            }
        }
    }

    /// Runs `f` in a read transaction, so that it sees one snapshot (inside
    /// an open batch it already does).
    pub fn read<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&Meta) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if self.batch_open() {
            return f(self);
        }
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(MetaError::from)?;
        let r = f(self);
        let _ = self.conn.execute_batch("COMMIT");
        r
    }

    /// The number for a new inode. Numbers are never handed out twice by
    /// one connection (a mount), even when the inode with the highest
    /// number is deleted or its insert is rolled back: the kernel may still
    /// hold a deleted inode's number with its cached attributes and pages,
    /// and would take a new file with that number for the old one.
    fn next_ino(&self) -> Result<u64> {
        let mut next = self.next_ino.get();
        if next == 0 {
            let max: i64 = self
                .conn
                .prepare_cached(q::INODE_MAX)?
                .query_row([], |r| r.get(0))?;
            next = max as u64 + 1;
        }
        self.next_ino.set(next + 1);
        Ok(next)
    }
}

impl MetaRead for Meta {
    // ----- store settings -----

    fn store_get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(q::STORE_GET)?
            .query_row(named_params! {":key": key}, |r| r.get(0))
            .optional()?)
    }
    fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        Ok(self
            .conn
            .prepare_cached(q::INODE_GET)?
            .query_row(named_params! {":ino": ino as i64}, |r| inode_from_row(r, 0))
            .optional()?)
    }
    fn chash(&self, ino: u64) -> Result<Option<[u8; 32]>> {
        Ok(self
            .conn
            .prepare_cached(q::INODE_CHASH)?
            .query_row(named_params! {":ino": ino as i64}, |r| r.get(0))
            .optional()?
            .flatten())
    }
    fn tag_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(q::TAG_EXISTS)?
            .query_row(named_params! {":name": name}, |r| r.get(0))?)
    }
    fn tag_used(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(q::TAG_USED)?
            .query_row(named_params! {":name": name}, |r| r.get(0))?)
    }
    fn tag_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut s = self.conn.prepare_cached(q::TAG_COUNTS)?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn tag_names(&self) -> Result<Vec<String>> {
        let mut s = self.conn.prepare_cached(q::TAG_NAMES)?;
        let rows = s.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn file_tags(&self, ino: u64) -> Result<Vec<(String, Option<String>)>> {
        let mut s = self.conn.prepare_cached(q::FILE_TAGS_GET)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn file_tag(&self, ino: u64, tag: &str) -> Result<Option<Option<String>>> {
        Ok(self
            .conn
            .prepare_cached(q::FILE_TAG_GET)?
            .query_row(named_params! {":ino": ino as i64, ":tag": tag}, |r| {
                r.get(0)
            })
            .optional()?)
    }
    fn file_tags_placed(&self, ino: u64) -> Result<Vec<(String, Option<String>, u32)>> {
        let mut s = self.conn.prepare_cached(q::FILE_TAGS_PLACED)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    // ----- saved queries -----

    fn saved_query(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(q::SAVED_GET)?
            .query_row(named_params! {":name": name}, |r| r.get(0))
            .optional()?)
    }
    fn saved_queries(&self) -> Result<Vec<(String, String)>> {
        let mut s = self.conn.prepare_cached(q::SAVED_LIST)?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn listing(
        &self,
        sql: &str,
        params: &[rusqlite::types::Value],
    ) -> Result<Vec<(Vec<u8>, Inode)>> {
        let mut s = self.conn.prepare_cached(sql)?;
        let rows = s.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, inode_from_row(r, 1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn strings(&self, sql: &str, params: &[rusqlite::types::Value]) -> Result<Vec<String>> {
        let mut s = self.conn.prepare_cached(sql)?;
        let rows = s.query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn symlink_target(&self, ino: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached(q::INODE_TARGET)?
            .query_row(named_params! {":ino": ino as i64}, |r| {
                r.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()?
            .flatten())
    }
    fn unlinked_inodes(&self) -> Result<Vec<u64>> {
        let mut s = self.conn.prepare_cached(q::INODE_UNLINKED)?;
        let rows = s.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|v| v as u64))
            .collect::<rusqlite::Result<_>>()?)
    }
    // ----- directory entries -----

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<Inode>> {
        Ok(self
            .conn
            .prepare_cached(q::DENTRY_LOOKUP)?
            .query_row(
                named_params! {":parent": parent as i64, ":name": name},
                |r| inode_from_row(r, 0),
            )
            .optional()?)
    }
    fn list_dir(&self, parent: u64) -> Result<Vec<(Vec<u8>, Inode)>> {
        let mut s = self.conn.prepare_cached(q::DENTRY_LIST)?;
        let rows = s.query_map(named_params! {":parent": parent as i64}, |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, inode_from_row(r, 1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn dir_has_entries(&self, parent: u64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(q::DENTRY_ANY)?
            .query_row(named_params! {":parent": parent as i64}, |r| r.get(0))?)
    }
    fn dir_perms(&self) -> Result<Vec<DirPerm>> {
        let mut s = self.conn.prepare_cached(q::DIR_PERMS)?;
        let rows = s.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn parents(&self, ino: u64) -> Result<Vec<u64>> {
        let mut s = self.conn.prepare_cached(q::DENTRY_PARENTS)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| {
            Ok(r.get::<_, i64>(0)? as u64)
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn tag_files(&self) -> Result<Vec<(String, u64)>> {
        let mut s = self.conn.prepare_cached(q::TAG_FILES)?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn names_of(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut s = self.conn.prepare_cached(q::DENTRY_NAMES)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn parent_of(&self, ino: u64) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .conn
            .prepare_cached(q::DENTRY_PARENT)?
            .query_row(named_params! {":ino": ino as i64}, |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?)
    }
    // ----- chunks and blobs -----

    fn chunks(&self, ino: u64) -> Result<Vec<(u64, ChunkRef)>> {
        let mut s = self.conn.prepare_cached(q::CHUNK_LIST)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                ChunkRef {
                    hash: hash_of(r.get(1)?)?,
                    size: r.get(2)?,
                    data: blob_data(r.get(3)?, r.get(4)?),
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn chunk_hashes(&self, ino: u64) -> Result<Vec<[u8; 32]>> {
        let mut s = self.conn.prepare_cached(q::CHUNK_HASHES)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| hash_of(r.get(0)?))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    fn blob(&self, hash: &[u8; 32]) -> Result<Option<(u32, BlobData)>> {
        Ok(self
            .conn
            .prepare_cached(q::BLOB_GET)?
            .query_row(named_params! {":hash": &hash[..]}, |r| {
                Ok((r.get::<_, u32>(0)?, blob_data(r.get(1)?, r.get(2)?)))
            })
            .optional()?)
    }
    fn blob_locations(&self) -> Result<Vec<BlobLoc>> {
        let mut s = self.conn.prepare_cached(q::BLOB_LOCS)?;
        let rows = s.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|v| BlobLoc(v as u64)))
            .collect::<rusqlite::Result<_>>()?)
    }
    fn all_blobs(&self) -> Result<Vec<BlobRow>> {
        let mut s = self.conn.prepare_cached(q::BLOB_ALL)?;
        let rows = s.query_map([], |r| {
            Ok(BlobRow {
                hash: hash_of(r.get(0)?)?,
                size: r.get::<_, i64>(1)? as u64,
                refcount: r.get(2)?,
                data: blob_data(r.get(3)?, r.get(4)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    // ----- xattrs -----

    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached(q::XATTR_GET)?
            .query_row(named_params! {":ino": ino as i64, ":name": name}, |r| {
                r.get(0)
            })
            .optional()?)
    }
    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let mut s = self.conn.prepare_cached(q::XATTR_LIST)?;
        let rows = s.query_map(named_params! {":ino": ino as i64}, |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
    // ----- statistics and checks -----

    fn stats(&self) -> Result<Stats> {
        Ok(self.conn.prepare_cached(q::STATS)?.query_row([], |r| {
            Ok(Stats {
                files: r.get::<_, i64>(0)? as u64,
                dirs: r.get::<_, i64>(1)? as u64,
                logical_bytes: r.get::<_, i64>(2)? as u64,
                blobs: r.get::<_, i64>(3)? as u64,
                stored_bytes: r.get::<_, i64>(4)? as u64,
                inline_bytes: r.get::<_, i64>(5)? as u64,
            })
        })?)
    }
    fn integrity_problems(&self) -> Result<Vec<String>> {
        let mut s = self.conn.prepare("PRAGMA integrity_check")?;
        let rows = s.query_map([], |r| r.get::<_, String>(0))?;
        let all: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all.into_iter().filter(|l| l != "ok").collect())
    }
    fn consistency_problems(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        {
            let mut s = self.conn.prepare_cached(q::BLOB_REFCOUNT_MISMATCH)?;
            let rows = s.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (h, rc, n) = row?;
                out.push(format!(
                    "blob {} has refcount {rc} but {n} chunk references",
                    hex(&h)
                ));
            }
        }
        {
            let mut s = self.conn.prepare_cached(q::CHUNK_MISSING_BLOB)?;
            let rows = s.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (ino, idx) = row?;
                out.push(format!(
                    "inode {ino} chunk {idx} names a blob that does not exist"
                ));
            }
        }
        {
            let mut s = self.conn.prepare_cached(q::CHUNK_ORPHAN)?;
            let rows = s.query_map([], |r| r.get::<_, i64>(0))?;
            for row in rows {
                out.push(format!(
                    "chunks belong to inode {} which does not exist",
                    row?
                ));
            }
        }
        {
            let mut s = self.conn.prepare_cached(q::DENTRY_ORPHAN)?;
            let rows = s.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (p, n, i) = row?;
                out.push(format!(
                    "entry {:?} in inode {p} names inode {i}, but one of them is missing or not a directory",
                    String::from_utf8_lossy(&n)
                ));
            }
        }
        {
            let mut s = self.conn.prepare_cached(q::NLINK_MISMATCH)?;
            let rows = s.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (ino, nlink, names, subdirs) = row?;
                if nlink == 0 && names == 0 {
                    continue; // unlinked but open at the crash: gc reclaims it
                }
                out.push(format!(
                    "inode {ino} has nlink {nlink} but {names} names and {subdirs} subdirectories"
                ));
            }
        }
        Ok(out)
    }
    // Quarantine (see `quarantine.rs`).
    fn has_quarantine(&self) -> Result<bool> {
        Meta::has_quarantine(self)
    }
    fn quarantined(&self) -> Result<Vec<Quarantined>> {
        Meta::quarantined(self)
    }
    fn blob_chains(&self) -> Result<Vec<([u8; 32], u64, BlobLoc)>> {
        Meta::blob_chains(self)
    }
    fn inodes_holding(&self, hash: &[u8; 32]) -> Result<Vec<u64>> {
        Meta::inodes_holding(self, hash)
    }
    fn runs_sql(&self) -> bool {
        self.path.is_some()
    }
}

impl MetaStore for Meta {
    fn set_group_commit(&self, window: Option<Duration>) -> Result<Vec<BlobLoc>> {
        let frees = if window.is_none() {
            self.commit_batch()?
        } else {
            Vec::new()
        };
        self.batch.borrow_mut().window = window;
        Ok(frees)
    }
    fn set_auto_checkpoint(&self, on: bool) -> Result<()> {
        let pages = if on { 1000 } else { 0 };
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }
    fn rollbacks(&self) -> u64 {
        self.batch.borrow().rollbacks
    }
    fn batch_open(&self) -> bool {
        self.batch.borrow().since.is_some()
    }
    fn batch_due(&self) -> bool {
        let b = self.batch.borrow();
        match (b.since, b.window) {
            (Some(t), Some(w)) => t.elapsed() >= w || b.writes >= BATCH_MAX_WRITES,
            _ => false,
        }
    }
    fn after_commit(&self, frees: Vec<BlobLoc>) -> Vec<BlobLoc> {
        let mut b = self.batch.borrow_mut();
        if b.since.is_some() {
            b.frees.extend(frees);
            Vec::new()
        } else {
            frees
        }
    }
    fn commit_batch(&self) -> Result<Vec<BlobLoc>> {
        let mut b = self.batch.borrow_mut();
        if b.since.is_none() {
            return Ok(std::mem::take(&mut b.frees));
        }
        let writes = b.end();
        if let Err(e) = self.exec("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            b.abandon();
            tracing::error!("a group commit of {writes} metadata changes failed: {e}");
            return Err(e);
        }
        Ok(std::mem::take(&mut b.frees))
    }
    fn rollback_batch(&self) -> u32 {
        let mut b = self.batch.borrow_mut();
        if b.since.is_none() {
            return 0;
        }
        let _ = self.conn.execute_batch("ROLLBACK");
        b.abandon()
    }
    fn barrier(&self) -> Result<()> {
        debug_assert!(!self.batch_open(), "a barrier inside an open batch");
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let r = self
            .conn
            .prepare_cached(q::BARRIER)
            .and_then(|mut s| s.execute([]));
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        r?;
        #[cfg(test)]
        if let Some(f) = &*self.barrier_hook.borrow() {
            f();
        }
        Ok(())
    }
    fn store_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached(q::STORE_SET)?
            .execute(named_params! {":key": key, ":value": value})?;
        Ok(())
    }
    // ----- inodes -----

    fn insert_root(&self, perm: u32, uid: u32, gid: u32, now: i64) -> Result<()> {
        self.conn
            .prepare_cached(q::INODE_INSERT_ROOT)?
            .execute(named_params! {
                ":kind": FileKind::Dir.bits(), ":perm": perm, ":uid": uid, ":gid": gid, ":now": now,
            })?;
        Ok(())
    }
    fn insert_inode(&self, n: &NewInode<'_>) -> Result<Inode> {
        let size = n.target.map(|t| t.len() as u64).unwrap_or(0);
        let ino = self.next_ino()?;
        self.conn.prepare_cached(q::INODE_INSERT)?.execute(named_params! {
            ":ino": ino as i64,
            ":kind": n.kind.bits(), ":perm": n.perm, ":uid": n.uid, ":gid": n.gid, ":size": size as i64,
            ":nlink": n.nlink, ":rdev": n.rdev, ":atime": n.now, ":mtime": n.now, ":ctime": n.now,
            ":btime": n.now, ":target": n.target, ":chash": n.chash.as_ref().map(|h| &h[..]),
        })?;
        Ok(Inode {
            ino,
            kind: n.kind,
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            size,
            nlink: n.nlink,
            rdev: n.rdev,
            atime: n.now,
            mtime: n.now,
            ctime: n.now,
            btime: n.now,
            blocks: 0,
        })
    }
    fn update_inode(&self, i: &Inode) -> Result<()> {
        self.update_inode_with(i, None)
    }
    fn update_inode_with(&self, i: &Inode, chash: Option<&[u8; 32]>) -> Result<()> {
        self.conn.prepare_cached(q::INODE_UPDATE)?.execute(named_params! {
            ":ino": i.ino as i64, ":perm": i.perm, ":uid": i.uid, ":gid": i.gid, ":size": i.size as i64,
            ":nlink": i.nlink, ":atime": i.atime, ":mtime": i.mtime, ":ctime": i.ctime, ":btime": i.btime, ":blocks": i.blocks as i64,
            ":chash": chash.map(|h| &h[..]),
        })?;
        Ok(())
    }
    fn delete_inode_row(&self, ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::INODE_DELETE)?
            .execute(named_params! {":ino": ino as i64})?;
        self.conn
            .prepare_cached(q::XATTR_DELETE_ALL)?
            .execute(named_params! {":ino": ino as i64})?;
        self.conn
            .prepare_cached(q::FILE_TAG_DELETE_ALL)?
            .execute(named_params! {":ino": ino as i64})?;
        Ok(())
    }
    // ----- tags -----

    fn create_tag(&self, name: &str, now: i64) -> Result<()> {
        self.conn
            .prepare_cached(q::TAG_CREATE)?
            .execute(named_params! {":name": name, ":now": now})?;
        Ok(())
    }
    fn delete_tag(&self, name: &str) -> Result<()> {
        self.conn
            .prepare_cached(q::TAG_DELETE)?
            .execute(named_params! {":name": name})?;
        Ok(())
    }
    fn rename_tag(&self, old: &str, new: &str) -> Result<()> {
        for sql in [q::TAG_RENAME, q::TAG_RENAME_USES] {
            self.conn
                .prepare_cached(sql)?
                .execute(named_params! {":old": old, ":new": new})?;
        }
        Ok(())
    }
    fn set_file_tag(&self, ino: u64, tag: &str, value: Option<&str>, now: i64) -> Result<()> {
        self.create_tag(tag, now)?;
        self.conn
            .prepare_cached(q::FILE_TAG_SET)?
            .execute(named_params! {":ino": ino as i64, ":tag": tag, ":value": value})?;
        Ok(())
    }
    fn place_file_tag(
        &self,
        ino: u64,
        tag: &str,
        value: Option<&str>,
        placed: u32,
        now: i64,
    ) -> Result<()> {
        self.create_tag(tag, now)?;
        self.conn.prepare_cached(q::FILE_TAG_PLACE)?.execute(
            named_params! {":ino": ino as i64, ":tag": tag, ":value": value, ":placed": placed},
        )?;
        Ok(())
    }
    fn delete_file_tag(&self, ino: u64, tag: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(q::FILE_TAG_DELETE)?
            .execute(named_params! {":ino": ino as i64, ":tag": tag})?
            > 0)
    }
    fn delete_file_tags(&self, ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::FILE_TAG_DELETE_ALL)?
            .execute(named_params! {":ino": ino as i64})?;
        Ok(())
    }
    fn save_query(&self, name: &str, sql: &str, now: i64) -> Result<()> {
        self.conn
            .prepare_cached(q::SAVED_SET)?
            .execute(named_params! {":name": name, ":sql": sql, ":now": now})?;
        Ok(())
    }
    fn delete_saved_query(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(q::SAVED_DELETE)?
            .execute(named_params! {":name": name})?
            > 0)
    }
    fn insert_dentry(&self, parent: u64, name: &[u8], ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::DENTRY_INSERT)?
            .execute(named_params! {":parent": parent as i64, ":name": name, ":ino": ino as i64})?;
        Ok(())
    }
    fn delete_dentry(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached(q::DENTRY_DELETE)?
            .execute(named_params! {":parent": parent as i64, ":name": name})?;
        Ok(())
    }
    fn set_dentry_ino(&self, parent: u64, name: &[u8], ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::DENTRY_SET_INO)?
            .execute(named_params! {":parent": parent as i64, ":name": name, ":ino": ino as i64})?;
        Ok(())
    }
    fn set_chunk(&self, ino: u64, idx: u64, hash: &[u8; 32]) -> Result<()> {
        self.conn
            .prepare_cached(q::CHUNK_UPSERT)?
            .execute(named_params! {":ino": ino as i64, ":idx": idx as i64, ":hash": &hash[..]})?;
        Ok(())
    }
    fn delete_chunks_from(&self, ino: u64, from: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::CHUNK_DELETE_FROM)?
            .execute(named_params! {":ino": ino as i64, ":from": from as i64})?;
        Ok(())
    }
    fn delete_chunk(&self, ino: u64, idx: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::CHUNK_DELETE)?
            .execute(named_params! {":ino": ino as i64, ":idx": idx as i64})?;
        Ok(())
    }
    fn delete_all_chunks(&self, ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(q::CHUNK_DELETE_ALL)?
            .execute(named_params! {":ino": ino as i64})?;
        Ok(())
    }
    fn insert_blob(&self, hash: &[u8; 32], size: u64, data: &BlobData) -> Result<()> {
        let (loc, inline): (Option<i64>, Option<&[u8]>) = match data {
            BlobData::Stored(l) => (Some(l.0 as i64), None),
            BlobData::Inline(d) => (None, Some(d)),
        };
        self.conn
            .prepare_cached(q::BLOB_INSERT)?
            .execute(named_params! {
                ":hash": &hash[..], ":size": size as i64, ":loc": loc, ":data": inline,
            })?;
        Ok(())
    }
    fn incref(&self, hash: &[u8; 32]) -> Result<()> {
        self.conn
            .prepare_cached(q::BLOB_INCREF)?
            .execute(named_params! {":hash": &hash[..]})?;
        Ok(())
    }
    fn decref(&self, hash: &[u8; 32]) -> Result<Option<Option<BlobLoc>>> {
        let row: Option<(i64, Option<i64>)> = self
            .conn
            .prepare_cached(q::BLOB_DECREF)?
            .query_row(named_params! {":hash": &hash[..]}, |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match row {
            Some((rc, loc)) if rc <= 0 => {
                self.conn
                    .prepare_cached(q::BLOB_DELETE)?
                    .execute(named_params! {":hash": &hash[..]})?;
                Ok(Some(loc.map(|l| BlobLoc(l as u64))))
            }
            _ => Ok(None),
        }
    }
    fn delete_unreferenced_blobs(&self) -> Result<Vec<Option<BlobLoc>>> {
        let rows: Vec<(Vec<u8>, Option<i64>)> = {
            let mut s = self.conn.prepare_cached(q::BLOB_UNREFERENCED)?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for (hash, loc) in rows {
            self.conn
                .prepare_cached(q::BLOB_DELETE)?
                .execute(named_params! {":hash": hash})?;
            out.push(loc.map(|l| BlobLoc(l as u64)));
        }
        Ok(out)
    }
    fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached(q::XATTR_SET)?
            .execute(named_params! {":ino": ino as i64, ":name": name, ":value": value})?;
        Ok(())
    }
    fn delete_xattr(&self, ino: u64, name: &[u8]) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(q::XATTR_DELETE)?
            .execute(named_params! {":ino": ino as i64, ":name": name})?
            > 0)
    }
    fn quarantine_blob(
        &self,
        hash: &[u8; 32],
        clusters: &[u32],
        reason: &str,
        now_ns: i64,
    ) -> Result<bool> {
        Meta::quarantine_blob(self, hash, clusters, reason, now_ns)
    }
    fn drop_quarantine(&self, hash: &[u8; 32]) -> Result<()> {
        Meta::drop_quarantine(self, hash)
    }
    fn write_dyn(&self, f: &mut dyn FnMut(&dyn MetaStore) -> bool) -> Result<()> {
        /// Why a write did not commit: the closure asked, or the store failed.
        enum Stop {
            Asked,
            Failed(MetaError),
        }
        impl From<MetaError> for Stop {
            fn from(e: MetaError) -> Stop {
                Stop::Failed(e)
            }
        }
        match self.write(|m| if f(m) { Ok(()) } else { Err(Stop::Asked) }) {
            Ok(()) | Err(Stop::Asked) => Ok(()),
            Err(Stop::Failed(e)) => Err(e),
        }
    }
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn MetaStore)) -> Result<()> {
        self.read(|m| {
            f(m);
            Ok::<(), MetaError>(())
        })
    }
    fn open_sandbox(&self) -> Result<Option<sandbox::Sandbox>> {
        match &self.path {
            Some(p) => Ok(Some(sandbox::Sandbox::open(p).map_err(MetaError::Sandbox)?)),
            None => Ok(None),
        }
    }
    fn checkpointer(&self) -> Result<Option<Checkpointer>> {
        self.path.as_deref().map(Checkpointer::open).transpose()
    }
}

/// A directory for the reachability rule: (ino, parent, perm, uid, gid).
pub type DirPerm = (u64, u64, u32, u32, u32);

pub use crate::types::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn every_statement_prepares() {
        let m = Meta::open_in_memory().unwrap();
        for (name, sql) in queries::ALL {
            m.conn
                .prepare(sql)
                .unwrap_or_else(|e| panic!("queries/meta/{name}.sql: {e}"));
        }
    }

    #[test]
    fn refcounts_and_rollback() {
        let m = Meta::open_in_memory().unwrap();
        let h = [7u8; 32];
        m.write::<_, MetaError>(|t| t.insert_blob(&h, 3, &BlobData::Inline(vec![1, 2, 3])))
            .unwrap();
        m.incref(&h).unwrap();
        assert_eq!(m.decref(&h).unwrap(), None);
        assert_eq!(m.decref(&h).unwrap(), Some(None));
        assert!(m.blob(&h).unwrap().is_none());
        // A failed transaction leaves nothing behind.
        let r: std::result::Result<(), MetaError> = m.write(|t| {
            t.insert_blob(&h, 3, &BlobData::Stored(BlobLoc(5)))?;
            Err(MetaError::Sql(rusqlite::Error::InvalidQuery))
        });
        assert!(r.is_err());
        assert!(m.blob(&h).unwrap().is_none());
    }
}
