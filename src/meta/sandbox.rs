//! The sandbox that runs users' SQL: `/sql/<query>/` folders, saved queries
//! and `queryfs query`.
//!
//! Defence in depth, each layer enough on its own against writes:
//! 1. a connection opened read-only (`SQLITE_OPEN_READONLY`) with
//!    `query_only` set and no attached databases allowed;
//! 2. an authorizer that admits `SELECT`, reads of the documented views
//!    (and of the tables under them only on behalf of those views),
//!    recursive CTEs and ordinary functions; everything else (writes,
//!    `ATTACH`, `PRAGMA`, transactions, `load_extension`) is denied;
//! 3. one statement only, naming no internal table and no schema: its
//!    identifiers are checked before SQLite sees it, so every read of an
//!    internal table is one that a documented view makes;
//! 4. a time budget enforced by a progress handler, a row cap, and a cap on
//!    the size of any string or blob a query can build.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

/// The views a query may read, with the statements that define them.
pub const VIEWS: &[(&str, &str)] = &[
    ("files", include_str!("../../queries/views/files.sql")),
    ("tags", include_str!("../../queries/views/tags.sql")),
    ("tag_list", include_str!("../../queries/views/tag_list.sql")),
    ("xattrs", include_str!("../../queries/views/xattrs.sql")),
];

/// Table-valued functions that only compute.
const PURE_TABLES: &[&str] = &["json_each", "json_tree"];
/// Functions a query may not call.
const DENIED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer", "readfile", "writefile"];

/// Why a query was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than its budget of {0:?}")]
    Timeout(Duration),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Rows of a query.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
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

/// A read-only, sandboxed connection to a store's database.
pub struct Sandbox {
    conn: Connection,
    /// Deadline of the running statement, in ns after `base`; 0 = none.
    deadline: Arc<AtomicU64>,
    base: Instant,
}

impl Sandbox {
    pub fn open(db: &Path) -> Result<Sandbox, QueryError> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::setup(conn)
    }

    fn setup(conn: Connection) -> Result<Sandbox, QueryError> {
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.pragma_update(None, "cache_size", -8192)?;
        register_functions(&conn)?;
        for (_, sql) in VIEWS {
            conn.execute_batch(sql)?;
        }
        conn.pragma_update(None, "query_only", true)?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, 16 << 20)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
        conn.authorizer(Some(authorize))?;
        let base = Instant::now();
        let deadline = Arc::new(AtomicU64::new(0));
        let d = deadline.clone();
        conn.progress_handler(
            1000,
            Some(move || {
                let end = d.load(Ordering::Relaxed);
                end != 0 && base.elapsed().as_nanos() as u64 > end
            }),
        )?;
        Ok(Sandbox {
            conn,
            deadline,
            base,
        })
    }

    /// Checks that `sql` is one statement the sandbox admits, without running it.
    pub fn check(&self, sql: &str) -> Result<Vec<String>, QueryError> {
        let stmt = self.prepare(sql)?;
        Ok(stmt.column_names().iter().map(|s| s.to_string()).collect())
    }

    fn prepare(&self, sql: &str) -> Result<rusqlite::Statement<'_>, QueryError> {
        if sql.trim().is_empty() {
            return Err(QueryError::Invalid("the query is empty".into()));
        }
        check_identifiers(sql)?;
        let stmt = self.conn.prepare(sql).map_err(|e| match e {
            rusqlite::Error::MultipleStatement => {
                QueryError::Invalid("only one statement is allowed".into())
            }
            rusqlite::Error::SqliteFailure(_, Some(m)) => QueryError::Invalid(m),
            e => QueryError::Sql(e),
        })?;
        if !stmt.readonly() {
            return Err(QueryError::Invalid(
                "only SELECT queries are allowed".into(),
            ));
        }
        Ok(stmt)
    }

    /// Runs one SELECT within `budget`, keeping at most `cap` rows.
    pub fn run(&self, sql: &str, budget: Duration, cap: usize) -> Result<QueryResult, QueryError> {
        let mut stmt = self.prepare(sql)?;
        let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let n = columns.len();
        let end = self.base.elapsed() + budget;
        self.deadline
            .store(end.as_nanos().max(1) as u64, Ordering::Relaxed);
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
                    row.push(r.get::<_, Value>(i)?);
                }
                out.push(row);
            }
            Ok::<_, rusqlite::Error>((out, truncated))
        })();
        self.deadline.store(0, Ordering::Relaxed);
        match out {
            Ok((rows, truncated)) => Ok(QueryResult {
                columns,
                rows,
                truncated,
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                Err(QueryError::Timeout(budget))
            }
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) => Err(QueryError::Invalid(m)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Identifiers a query may not use: schemas and the tables under the views.
const FORBIDDEN: &[&str] = &[
    "main",
    "temp",
    "temporary",
    "inodes",
    "dentries",
    "blobs",
    "chunks",
    "file_tags",
    "store",
    "saved_queries",
];

/// Refuses SQL that names a schema or an internal table (outside string
/// literals and comments). Views named like internal tables (`tags`,
/// `xattrs`) resolve to the views, which shadow them.
fn check_identifiers(sql: &str) -> Result<(), QueryError> {
    let b = sql.as_bytes();
    let mut i = 0;
    let bad = |id: &str| {
        let l = id.to_ascii_lowercase();
        if FORBIDDEN.contains(&l.as_str()) || l.starts_with("sqlite_") || l.starts_with("pragma_") {
            Err(QueryError::Invalid(format!(
                "{id:?} is not one of the views a query may read (files, tags, tag_list, xattrs)"
            )))
        } else {
            Ok(())
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // String literal ('' escapes a quote).
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let mut id = Vec::new();
                i += 1;
                while i < b.len() {
                    if b[i] == close {
                        if close != b']' && b.get(i + 1) == Some(&close) {
                            id.push(close);
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    id.push(b[i]);
                    i += 1;
                }
                bad(&String::from_utf8_lossy(&id))?;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                bad(&String::from_utf8_lossy(&b[start..i]))?;
            }
            c if c.is_ascii_digit() => {
                // Numbers, including 1e8 and 0x1F: not identifiers.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    let ours = |name: &str| VIEWS.iter().any(|(v, _)| v.eq_ignore_ascii_case(name));
    let ok = match ctx.action {
        AuthAction::Select | AuthAction::Recursive => true,
        AuthAction::Read { table_name, .. } => {
            // Reads of a view itself, of the tables under the views (user
            // SQL cannot name them: `check_identifiers`; SQLite does not
            // always report the view as accessor, e.g. for `count(*)`),
            // of CTEs and subqueries (no database), and of pure
            // table-valued functions.
            (ctx.database_name == Some("temp") && ours(table_name))
                || ctx.database_name == Some("main")
                || ctx.database_name.is_none()
                || PURE_TABLES
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(table_name))
        }
        AuthAction::Function { function_name } => !DENIED_FUNCTIONS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(function_name)),
        _ => false,
    };
    if ok {
        Authorization::Allow
    } else {
        tracing::debug!(
            "sandbox denied {:?} (database {:?}, via {:?})",
            ctx.action,
            ctx.database_name,
            ctx.accessor
        );
        Authorization::Deny
    }
}

fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("qfs_user", 1, flags, |ctx| {
        let id: Option<i64> = ctx.get(0)?;
        Ok(id.map(|id| account_name(id as u32, true)))
    })?;
    conn.create_scalar_function("qfs_group", 1, flags, |ctx| {
        let id: Option<i64> = ctx.get(0)?;
        Ok(id.map(|id| account_name(id as u32, false)))
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
pub fn extension(name: &[u8]) -> String {
    match name.iter().rposition(|&c| c == b'.') {
        Some(p) if p > 0 => String::from_utf8_lossy(&name[p + 1..]).to_lowercase(),
        _ => String::new(),
    }
}

/// The user or group name of an id, or the id as text when it has none.
pub fn account_name(id: u32, user: bool) -> String {
    let mut buf = vec![0u8; 4096];
    let mut out: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: the buffers outlive the calls; on success the returned record's
    // name points into `buf`, read before `buf` is dropped.
    unsafe {
        if user {
            let mut pw: libc::passwd = std::mem::zeroed();
            let r = libc::getpwuid_r(
                id,
                &mut pw,
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                &mut out as *mut *mut libc::c_void as *mut *mut libc::passwd,
            );
            if r == 0 && !out.is_null() {
                return std::ffi::CStr::from_ptr(pw.pw_name)
                    .to_string_lossy()
                    .into();
            }
        } else {
            let mut gr: libc::group = std::mem::zeroed();
            let r = libc::getgrgid_r(
                id,
                &mut gr,
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                &mut out as *mut *mut libc::c_void as *mut *mut libc::group,
            );
            if r == 0 && !out.is_null() {
                return std::ffi::CStr::from_ptr(gr.gr_name)
                    .to_string_lossy()
                    .into();
            }
        }
    }
    id.to_string()
}

/// A value as JSON (blobs as lowercase hex).
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(s) => s.clone().into(),
        Value::Blob(b) => super::hex(b).into(),
    }
}

/// A value as text for tables and CSV (NULL as empty).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => super::hex(b),
    }
}
