//! The sandbox that runs users' SQL: `/sql/<query>/` folders, saved queries
//! and `queryfs query`.
//!
//! Defence in depth, each layer enough on its own against writes:
//! 1. a connection opened read-only (`SQLITE_OPEN_READONLY`) with
//!    `query_only` set and no attached databases allowed;
//! 2. an authorizer that decides by what SQLite will actually read, however
//!    the SQL spells it (quoted, bracketed, schema-qualified, through a CTE,
//!    `pragma_*` or a virtual table): it admits `SELECT`, reads of the
//!    documented views, reads of the tables under them only when SQLite
//!    reports the view as the reader, a bare row count of such a table only
//!    in a statement that reads it through a view (`count(*)` over a view
//!    is flattened into one), recursive CTEs, pure table-valued functions
//!    and ordinary functions; every other read (`sqlite_master`, `dbstat`,
//!    `pragma_*`, a base table named directly) and everything else
//!    (writes, `ATTACH`, `PRAGMA`, transactions, `load_extension`) is denied;
//! 3. one statement only, no NUL;
//! 4. a time budget enforced both by a progress handler and by a watchdog
//!    that interrupts a long statement (`sqlite3_interrupt`); the built-in
//!    functions whose one call could outlast it (`instr`, `replace`, `trim`
//!    and `unhex` with a set, `like`, `glob`) replaced by linear-time
//!    versions that notice the interrupt (`safefn`);
//! 5. caps: rows and bytes of a result, the size of any string or blob a
//!    query can build (`SQLITE_LIMIT_LENGTH`), LIKE pattern length, function
//!    arguments, and the heap SQLite may use for this connection (`sqlmem`:
//!    an allocation past it fails the statement with "out of memory", and
//!    nothing else in the process is affected). Temporary tables and sorts
//!    stay in that heap (`temp_store = MEMORY`): a query writes nothing to
//!    disk.

// Numbers cross between SQLite (i64), the kernel (u32, u64) and Rust
// (usize) here: each conversion is checked, none wraps or truncates.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::sqlmem;

/// The views a query may read, with the statements that define them.
pub const VIEWS: &[(&str, &str)] = &[
    ("files", include_str!("../../queries/views/files.sql")),
    ("tags", include_str!("../../queries/views/tags.sql")),
    ("tag_list", include_str!("../../queries/views/tag_list.sql")),
    ("xattrs", include_str!("../../queries/views/xattrs.sql")),
];

/// Table-valued functions that only compute.
const PURE_TABLES: &[&str] = &["json_each", "json_tree"];
/// Most bytes (text and blob values) a query result may hold.
pub const RESULT_BYTES_CAP: usize = 64 << 20;
/// Longest string or blob a query may build.
pub const VALUE_CAP: i32 = 16 << 20;
/// Most heap SQLite may hold for one sandbox connection (its page cache
/// included).
pub const HEAP_CAP: i64 = 48 << 20;
/// Longest LIKE or GLOB pattern.
pub const LIKE_PATTERN_CAP: i32 = 2000;
/// Most arguments of one function call (each may be `VALUE_CAP` long).
pub const FUNCTION_ARG_CAP: i32 = 64;
/// What a result value costs besides its bytes (for the byte cap).
const VALUE_OVERHEAD: usize = 32;

/// Functions a query may not call.
const DENIED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer", "readfile", "writefile"];

/// Why a query was refused or stopped. A refusal (the statement is not one
/// the sandbox admits) is told apart from a query that was stopped: by its
/// time budget ([`SandboxError::Timeout`]), the heap cap
/// ([`SandboxError::Memory`]) or the result size cap
/// ([`SandboxError::ResultTooLarge`]). The row cap truncates a result
/// ([`QueryResult::truncated`]) and is no error.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the query is empty")]
    Empty,
    #[error("a query cannot contain NUL")]
    Nul,
    #[error("only one statement is allowed")]
    MultipleStatements,
    #[error("EXPLAIN is not allowed in a query")]
    Explain,
    #[error("only SELECT queries are allowed")]
    NotSelect,
    /// A read of something other than the documented views.
    #[error("{0:?} is not one of the views a query may read (files, tags, tag_list, xattrs)")]
    NotAView(String),
    /// What the authorizer denied first (its message).
    #[error("{0}")]
    Denied(String),
    /// SQLite refused or failed the statement (its message: a syntax
    /// error, an unknown column, a value over the length cap...).
    #[error("{0}")]
    Invalid(String),
    /// Every sandbox connection slot is taken.
    #[error("too many queries are running at once")]
    Busy,
    #[error("the query ran longer than its budget of {0:?}")]
    Timeout(Duration),
    #[error("the query needs more memory than a query may use ({} MiB)", HEAP_CAP >> 20)]
    Memory,
    /// The values kept passed the byte cap (in bytes).
    #[error("the result is larger than {} MiB", .0 >> 20)]
    ResultTooLarge(usize),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// One value of a result. Text is kept as the bytes SQLite holds: a name
/// that is not UTF-8 (legal on Linux) comes through unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Cell {
    fn from(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

/// Rows of a query.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// More rows existed than the cap allowed.
    pub truncated: bool,
}

impl QueryResult {
    /// Row `i` as a JSON object keyed by column name.
    pub fn row_json(&self, i: usize) -> serde_json::Map<String, serde_json::Value> {
        self.columns
            .iter()
            .cloned()
            .zip(self.rows[i].iter().map(value_json))
            .collect()
    }
}

/// What the caller of a query may see: the views show only files the
/// caller could reach through the real tree (search permission on every
/// ancestor directory), and a file's `hash` only when the caller may read
/// it. `None` (root, or an in-process caller) sees everything.
#[derive(Debug, Clone, Default)]
pub struct Visibility {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Directories whose entries the caller cannot reach.
    pub hidden: HashSet<u64>,
    /// Directories whose entries the caller can reach (consulted when
    /// `hidden` is not empty: an unknown number is not reachable, so a
    /// query cannot tell a hidden directory from a missing one).
    pub reachable: HashSet<u64>,
}

impl Visibility {
    /// Whether entries of directory `dir` are reachable.
    pub fn sees(&self, dir: u64) -> bool {
        self.hidden.is_empty() || self.reachable.contains(&dir)
    }
}

impl Visibility {
    /// The permission bits (`rwx` as 4|2|1) the caller has on a node.
    pub fn bits(&self, uid: u32, gid: u32, perm: u32) -> u32 {
        if self.uid == 0 {
            return 7;
        }
        if self.uid == uid {
            (perm >> 6) & 7
        } else if self.gid == gid || self.groups.contains(&gid) {
            (perm >> 3) & 7
        } else {
            perm & 7
        }
    }
}

type VisCell = Arc<Mutex<Option<Arc<Visibility>>>>;

/// A read-only, sandboxed connection to a store's database.
pub struct Sandbox {
    conn: Connection,
    /// Who the running query is for (read by the `qfs_visible` functions).
    vis: VisCell,
    /// What the authorizer saw while the last statement was prepared.
    seen: Arc<Mutex<Seen>>,
    /// Deadline of the running statement, in ns after `base`; 0 = none.
    deadline: Arc<AtomicU64>,
    base: Instant,
    /// The heap SQLite holds for this connection is charged here (dropped
    /// after `conn`).
    slot: Option<sqlmem::Slot>,
}

impl Sandbox {
    pub fn open(db: &Path) -> Result<Sandbox, SandboxError> {
        let slot = if sqlmem::installed() {
            Some(sqlmem::Slot::take(HEAP_CAP).ok_or(SandboxError::Busy)?)
        } else {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "the SQLite allocator was not installed before SQLite was used: \
                     queries run without a heap limit"
                )
            });
            None
        };
        let _in = slot.as_ref().map(|s| s.enter());
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::setup(conn, slot)
    }

    fn setup(conn: Connection, slot: Option<sqlmem::Slot>) -> Result<Sandbox, SandboxError> {
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.pragma_update(None, "cache_size", -4096)?;
        // Sorts and temporary b-trees in memory, where the heap cap holds
        // them; without the cap, in temporary files.
        conn.pragma_update(None, "temp_store", if slot.is_some() { 2 } else { 1 })?;
        register_functions(&conn)?;
        super::safefn::register(&conn)?;
        let vis: VisCell = Arc::default();
        register_visibility(&conn, &vis)?;
        // Each documented view reads the tables under it only through an
        // inner view whose name holds a secret of this connection; the
        // authorizer admits base-table reads only when SQLite names such an
        // inner view as the reader. A user's CTE may take any public name
        // (`WITH files AS (SELECT * FROM main.inodes) ...`), never the
        // secret one.
        let secret = format!("{:032x}", rand::random::<u128>());
        let tables: HashSet<String> = {
            let mut st =
                conn.prepare("SELECT lower(name) FROM main.sqlite_master WHERE type = 'table'")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (name, sql) in VIEWS {
            let inner = format!("qfs_{name}_{secret}");
            let body = sql
                .replacen(
                    &format!("CREATE TEMP VIEW {name} AS"),
                    &format!("CREATE TEMP VIEW {inner} AS"),
                    1,
                )
                .replace("qfs_up", &format!("qfs_up_{secret}"));
            conn.execute_batch(&body)?;
            conn.execute_batch(&format!(
                "CREATE TEMP VIEW {name} AS SELECT * FROM temp.{inner}"
            ))?;
        }
        conn.pragma_update(None, "query_only", true)?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, VALUE_CAP)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, LIKE_PATTERN_CAP)?;
        conn.set_limit(Limit::SQLITE_LIMIT_FUNCTION_ARG, FUNCTION_ARG_CAP)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        let key = secret.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            authorize(
                &key,
                &tables,
                &mut s2.lock().unwrap_or_else(|e| e.into_inner()),
                ctx,
            )
        }))?;
        let base = Instant::now();
        let deadline = Arc::new(AtomicU64::new(0));
        let d = deadline.clone();
        conn.progress_handler(
            1000,
            Some(move || {
                let end = d.load(Ordering::Relaxed);
                end != 0 && u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX) > end
            }),
        )?;
        Ok(Sandbox {
            conn,
            vis,
            seen,
            deadline,
            base,
            slot,
        })
    }

    fn enter(&self) -> Option<sqlmem::Enter> {
        self.slot.as_ref().map(|s| s.enter())
    }

    /// Bytes of heap SQLite holds for this connection (0 without the cap).
    pub fn heap_used(&self) -> i64 {
        self.slot.as_ref().map_or(0, |s| s.used())
    }

    /// Whom the next queries are for; `None` sees everything.
    pub fn set_visibility(&self, v: Option<Arc<Visibility>>) {
        *self.vis.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Checks that `sql` is one statement the sandbox admits, without running it.
    pub fn check(&self, sql: &str) -> Result<Vec<String>, SandboxError> {
        let _in = self.enter();
        let stmt = self.prepare(sql)?;
        Ok(stmt.column_names().iter().map(|s| s.to_string()).collect())
    }

    fn prepare(&self, sql: &str) -> Result<rusqlite::Statement<'_>, SandboxError> {
        if sql.trim().is_empty() {
            return Err(SandboxError::Empty);
        }
        if sql.contains('\0') {
            return Err(SandboxError::Nul);
        }
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Seen::default();
        let stmt = self.conn.prepare(sql).map_err(|e| match e {
            rusqlite::Error::MultipleStatement => SandboxError::MultipleStatements,
            rusqlite::Error::SqliteFailure(_, Some(m)) => SandboxError::Invalid(m),
            e => SandboxError::Sql(e),
        })?;
        if stmt.is_explain() != 0 {
            return Err(SandboxError::Explain);
        }
        if !stmt.readonly() {
            return Err(SandboxError::NotSelect);
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(t) = seen.counted.difference(&seen.via_view).next() {
            return Err(SandboxError::NotAView(t.clone()));
        }
        if let Some(d) = seen.denied {
            return Err(SandboxError::Denied(d));
        }
        Ok(stmt)
    }

    /// Runs one SELECT within `budget`, keeping at most `cap` rows and
    /// [`RESULT_BYTES_CAP`] bytes.
    pub fn run(
        &self,
        sql: &str,
        budget: Duration,
        cap: usize,
    ) -> Result<QueryResult, SandboxError> {
        self.run_capped(sql, budget, cap, RESULT_BYTES_CAP)
    }

    /// Runs one SELECT within `budget`, keeping at most `cap` rows; fails
    /// once the values kept pass `max_bytes` (each value counts its bytes,
    /// blobs twice as they are shown in hex, plus a fixed overhead).
    pub fn run_capped(
        &self,
        sql: &str,
        budget: Duration,
        cap: usize,
        max_bytes: usize,
    ) -> Result<QueryResult, SandboxError> {
        let _slow = SlowQuery {
            sql,
            started: Instant::now(),
        };
        let _in = self.enter();
        let mut stmt = self.prepare(sql)?;
        let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let n = columns.len();
        let end = self.base.elapsed() + budget;
        self.deadline.store(
            u64::try_from(end.as_nanos().max(1)).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // The progress handler runs between VM steps; one long function
        // call (a huge replace() or instr()) is one step. The watchdog
        // interrupts it from outside.
        let watchdog = Watchdog::start(self.conn.get_interrupt_handle(), budget);
        let mut bytes = 0usize;
        let out = (|| {
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            let mut truncated = false;
            while let Some(r) = rows.next()? {
                if out.len() == cap {
                    truncated = true;
                    break;
                }
                let mut row = Vec::with_capacity(n);
                for i in 0..n {
                    let v = Cell::from(r.get_ref(i)?);
                    bytes += VALUE_OVERHEAD
                        + match &v {
                            Cell::Text(t) => t.len(),
                            Cell::Blob(b) => 2 * b.len(),
                            _ => 0,
                        };
                    row.push(v);
                    if bytes > max_bytes {
                        return Err(SandboxError::ResultTooLarge(max_bytes));
                    }
                }
                out.push(row);
            }
            Ok::<_, SandboxError>((out, truncated))
        })();
        drop(watchdog);
        self.deadline.store(0, Ordering::Relaxed);
        match out {
            Ok((rows, truncated)) => Ok(QueryResult {
                columns,
                rows,
                truncated,
            }),
            Err(SandboxError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                Err(SandboxError::Timeout(budget))
            }
            Err(SandboxError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::OutOfMemory =>
            {
                Err(SandboxError::Memory)
            }
            Err(SandboxError::Sql(rusqlite::Error::SqliteFailure(_, Some(m)))) => {
                Err(SandboxError::Invalid(m))
            }
            Err(e) => Err(e),
        }
    }
}

/// What the authorizer saw while one statement was prepared.
#[derive(Default)]
struct Seen {
    /// Tables under the views read on behalf of a view.
    via_view: HashSet<String>,
    /// Tables whose rows were only counted (no column read) with no view
    /// named as the reader.
    counted: HashSet<String>,
    /// Why something was denied (the first denial).
    denied: Option<String>,
}

/// Interrupts the connection once `budget` has passed, unless dropped first.
struct Watchdog {
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(handle: rusqlite::InterruptHandle, budget: Duration) -> Watchdog {
        let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let d = done.clone();
        let thread = std::thread::Builder::new()
            .name("queryfs-query-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*d;
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) = cv
                    .wait_timeout_while(guard, budget, |done| !*done)
                    .unwrap_or_else(|e| e.into_inner());
                if !*guard {
                    handle.interrupt();
                }
            })
            .ok();
        Watchdog { done, thread }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn authorize(
    secret: &str,
    tables: &HashSet<String>,
    seen: &mut Seen,
    ctx: AuthContext<'_>,
) -> Authorization {
    let public = |name: &str| VIEWS.iter().any(|(v, _)| v.eq_ignore_ascii_case(name));
    let inner = |name: &str| {
        VIEWS.iter().any(|(v, _)| {
            name.strip_prefix("qfs_").and_then(|r| r.strip_prefix(*v))
                == Some(&format!("_{secret}"))
        })
    };
    let ours = |name: &str| public(name) || inner(name);
    let ok = match ctx.action {
        AuthAction::Select | AuthAction::Recursive => true,
        AuthAction::Read {
            table_name,
            column_name,
        } => {
            if ctx.database_name == Some("temp") && ours(table_name) {
                // A view itself (also from inside a CTE).
                true
            } else if PURE_TABLES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(table_name))
            {
                true
            } else if ctx.accessor == Some(format!("qfs_up_{secret}").as_str())
                && ctx.database_name == Some("main")
                && table_name == "dentries"
                && ["parent", "name", "ino"].contains(&column_name)
            {
                // The `files` view's path walk (a CTE inside the view, so
                // SQLite names the CTE, not the view). A user's own CTE of
                // that name gets no more than `files` shows anyway: the
                // name table's parent, name and inode columns.
                true
            } else if ctx.accessor.is_some_and(inner) && ctx.database_name == Some("main") {
                // A table under a view, read by that view.
                seen.via_view.insert(table_name.to_string());
                true
            } else if column_name.is_empty()
                && ctx.accessor.is_none()
                && ctx.database_name != Some("temp")
            {
                // A row count with no column read: allowed only when the
                // statement reads this table through a view too (checked
                // after prepare). Counting a CTE's rows is harmless.
                if tables.contains(&table_name.to_ascii_lowercase())
                    || table_name.to_ascii_lowercase().starts_with("sqlite_")
                {
                    seen.counted.insert(table_name.to_string());
                }
                true
            } else {
                false
            }
        }
        AuthAction::Function { function_name } => !DENIED_FUNCTIONS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(function_name)),
        _ => false,
    };
    if ok {
        Authorization::Allow
    } else {
        let what = match ctx.action {
            AuthAction::Read { table_name, .. } => format!(
                "{table_name:?} is not one of the views a query may read (files, tags, tag_list, xattrs)"
            ),
            a => format!("not allowed in a query: {a:?}"),
        };
        tracing::debug!(
            "sandbox denied {what} (database {:?}, via {:?})",
            ctx.database_name,
            ctx.accessor
        );
        seen.denied.get_or_insert(what);
        Authorization::Deny
    }
}

/// The functions the views filter with, reading the caller of the running
/// query: `qfs_restricted()` (1 when some directory is out of the caller's
/// reach), `qfs_visible(parent)` (1 when entries of directory `parent` are
/// reachable) and `qfs_readable(uid, gid, perm)` (1 when the caller may
/// read a node with those ids and bits). For a caller who sees everything
/// each is one lock and a constant.
fn register_visibility(conn: &Connection, vis: &VisCell) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8;
    let get = |v: &VisCell| v.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let v = vis.clone();
    conn.create_scalar_function("qfs_restricted", 0, flags, move |_| {
        Ok(get(&v).is_some_and(|v| !v.hidden.is_empty()))
    })?;
    let v = vis.clone();
    conn.create_scalar_function("qfs_visible", 1, flags, move |ctx| {
        let Some(v) = get(&v) else { return Ok(true) };
        let parent: Option<i64> = ctx.get(0)?;
        // (A negative number is no directory: u64::MAX is none either.)
        Ok(parent.is_some_and(|p| v.sees(u64::try_from(p).unwrap_or(u64::MAX))))
    })?;
    let v = vis.clone();
    conn.create_scalar_function("qfs_readable", 3, flags, move |ctx| {
        let Some(v) = get(&v) else { return Ok(true) };
        let (uid, gid, perm): (i64, i64, i64) = (ctx.get(0)?, ctx.get(1)?, ctx.get(2)?);
        // Ids and bits out of range are no real node's: not readable.
        let (Ok(uid), Ok(gid), Ok(perm)) =
            (u32::try_from(uid), u32::try_from(gid), u32::try_from(perm))
        else {
            return Ok(false);
        };
        Ok(v.bits(uid, gid, perm) & 4 != 0)
    })?;
    Ok(())
}

fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("qfs_user", 1, flags, |ctx| {
        let id: Option<i64> = ctx.get(0)?;
        Ok(id
            .map(|id| u32::try_from(id).map_or_else(|_| id.to_string(), |u| account_name(u, true))))
    })?;
    conn.create_scalar_function("qfs_group", 1, flags, |ctx| {
        let id: Option<i64> = ctx.get(0)?;
        Ok(id.map(|id| {
            u32::try_from(id).map_or_else(|_| id.to_string(), |g| account_name(g, false))
        }))
    })?;
    conn.create_scalar_function("qfs_ext", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Blob(b) | ValueRef::Text(b) => extension(b),
            _ => String::new(),
        })
    })
}

/// The extension of a name, lower-cased, without the dot: what follows the
/// last `.` that is not the first byte (`.bashrc` has none).
/// A query that runs longer than this is logged (info: `-v`) with its SQL.
pub const SLOW_QUERY: Duration = Duration::from_millis(500);

/// Logs the query at drop if it was slow, whatever its outcome.
struct SlowQuery<'a> {
    sql: &'a str,
    started: Instant,
}

impl Drop for SlowQuery<'_> {
    fn drop(&mut self) {
        let t = self.started.elapsed();
        if t >= SLOW_QUERY {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(ms, sql = self.sql, "slow query");
        }
    }
}

pub fn extension(name: &[u8]) -> String {
    match name.iter().rposition(|&c| c == b'.') {
        Some(p) if p > 0 => String::from_utf8_lossy(&name[p + 1..]).to_lowercase(),
        _ => String::new(),
    }
}

/// The user or group name of an id, or the id as text when it has none.
pub fn account_name(id: u32, user: bool) -> String {
    use nix::unistd::{Gid, Group, Uid, User};
    let name = if user {
        User::from_uid(Uid::from_raw(id)).map(|u| u.map(|u| u.name))
    } else {
        Group::from_gid(Gid::from_raw(id)).map(|g| g.map(|g| g.name))
    };
    match name {
        Ok(Some(n)) => n,
        _ => id.to_string(),
    }
}

/// A value as JSON: blobs as lowercase hex, text that is not UTF-8 as
/// `{"bytes": "<base64>"}` (see [`crate::names`]).
pub fn value_json(v: &Cell) -> serde_json::Value {
    match v {
        Cell::Null => serde_json::Value::Null,
        Cell::Integer(i) => (*i).into(),
        Cell::Real(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Cell::Text(s) => crate::names::bytes_json(s),
        Cell::Blob(b) => super::hex(b).into(),
    }
}

/// A value as bytes for tables and CSV (NULL as empty, text as it is).
pub fn value_text(v: &Cell) -> Vec<u8> {
    match v {
        Cell::Null => Vec::new(),
        Cell::Integer(i) => i.to_string().into_bytes(),
        Cell::Real(f) => f.to_string().into_bytes(),
        Cell::Text(s) => s.clone(),
        Cell::Blob(b) => super::hex(b).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_queries_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("meta.db");
        drop(super::super::Meta::open(&db, true).unwrap());
        let sb = Sandbox::open(&db).unwrap();
        let endless =
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let e = sb.run(endless, Duration::from_millis(200), 10).unwrap_err();
        assert!(matches!(e, SandboxError::Timeout(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the query ran longer than its budget of 200ms"
        );
        let many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) \
                    SELECT printf('%.100c', 'x') FROM c";
        let e = sb
            .run_capped(many, Duration::from_secs(10), 1_000_000, 1 << 20)
            .unwrap_err();
        assert!(matches!(e, SandboxError::ResultTooLarge(_)), "{e:?}");
        assert_eq!(e.to_string(), "the result is larger than 1 MiB");
        assert!(matches!(sb.check(" "), Err(SandboxError::Empty)));
        assert!(matches!(
            sb.check("SELECT 1; SELECT 2"),
            Err(SandboxError::MultipleStatements)
        ));
        // The row cap truncates, and is no error.
        let r = sb.run(many, Duration::from_secs(10), 3).unwrap();
        assert!(r.truncated && r.rows.len() == 3);
    }
}
