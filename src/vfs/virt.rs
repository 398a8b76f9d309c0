//! Query folders in the core: `/by-tag`, `/sql`, `/queries` as virtual
//! nodes beside the real tree.
//!
//! Virtual inode numbers have bit 62 set, so they never meet real ones.
//! A query folder's entries are the *real* files (their real inode numbers),
//! so reading, writing and tagging through them act on the files. Two kinds
//! of virtual entries exist besides folders: a directory among the results
//! is shown as a relative symlink to its real path (the kernel does not
//! allow one directory in two places), and a `/sql` query whose rows name no
//! file shows its result as `result.csv` and `result.json`.
//!
//! Listings are computed on `opendir` and `lookup` and cached per folder
//! and viewer until the next metadata commit (a generation counter), so they
//! are right immediately after any change. A listing shows only files the
//! viewer could reach through the real tree (see `perm`); result files and
//! directory symlinks are virtual nodes of their viewer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Caller, DirEntry, Fs, Handle, ROOT};
use crate::error::{FsError, Result};
use crate::meta::sandbox::{value_text, Cell, QueryError, QueryResult, Sandbox, Visibility};
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
/// Where files copied into a tag folder from outside the store are kept.
pub const INBOX: &[u8] = b"inbox";

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
}

struct VNode {
    key: VKey,
    /// Content of a result file, or the target of a symlink.
    data: Arc<Vec<u8>>,
    link: bool,
}

/// The virtual inode table and the listing cache.
#[derive(Default)]
pub(super) struct Virt {
    table: parking_lot::Mutex<Table>,
    cache: parking_lot::Mutex<HashMap<ListingKey, Arc<Listing>>>,
    /// What each viewer may reach, per metadata generation.
    pub(super) vis: parking_lot::Mutex<super::perm::VisCache>,
    sandbox: parking_lot::Mutex<Option<Sandbox>>,
    /// Files created in a tag folder: ino -> the folder's terms and the
    /// name the file was created with.
    pub(super) staged: parking_lot::Mutex<HashMap<u64, Staged>>,
}

/// A file created in a tag folder: the folder's terms and the name it was
/// created with.
type Staged = (Vec<Term>, Vec<u8>);

/// A folder and the viewer its listing is for (`None`: everything).
type ListingKey = (u64, Option<super::perm::Viewer>);

#[derive(Default)]
struct Table {
    next: u64,
    by_key: HashMap<VKey, u64>,
    nodes: HashMap<u64, VNode>,
}

#[derive(Clone)]
enum Target {
    Real(Inode),
    Virtual(u64),
}

struct Listing {
    generation: u64,
    entries: Vec<(Vec<u8>, Target)>,
    index: HashMap<Vec<u8>, usize>,
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
        let ino = match t.by_key.get(&key) {
            Some(&i) => i,
            None => {
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
                        link: false,
                    },
                );
                i
            }
        };
        if let Some((d, link)) = data {
            let n = t.nodes.get_mut(&ino).unwrap();
            n.data = d;
            n.link = link;
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
        let t = self.virt.table.lock();
        t.nodes
            .get(&ino)
            .map(|n| n.key.clone())
            .ok_or(FsError::NotFound)
    }

    /// Attributes of a virtual node.
    pub(super) fn v_getattr(&self, ino: u64) -> Result<Inode> {
        let (k, perm, size) = match ino {
            BY_TAG => (kind::DIR, 0o755, 0),
            SQL | QUERIES => (kind::DIR, 0o555, 0),
            _ => {
                let t = self.virt.table.lock();
                let n = t.nodes.get(&ino).ok_or(FsError::NotFound)?;
                match n.key {
                    VKey::ByTag(_) => (kind::DIR, 0o755, 0),
                    VKey::Leaf(..) if n.link => (kind::SYMLINK, 0o777, n.data.len() as u64),
                    VKey::Leaf(..) => (kind::FILE, 0o444, n.data.len() as u64),
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

    fn terms_of(&self, ino: u64) -> Result<Vec<Term>> {
        match self.vkey(ino)? {
            VKey::ByTag(t) => Ok(t),
            _ => Err(FsError::NotPermitted),
        }
    }

    // ----- listings -----

    /// Calls `f` with the sandbox, opening it on first use; errors as text.
    fn with_sandbox<T>(
        &self,
        vis: Option<Arc<Visibility>>,
        f: impl FnOnce(&Sandbox) -> std::result::Result<T, QueryError>,
    ) -> std::result::Result<T, String> {
        let db = self
            .query_db
            .as_ref()
            .ok_or("queries need a store on disk")?;
        // The sandbox has its own connection: it sees committed changes only.
        self.settle().map_err(|e| e.to_string())?;
        let mut sb = self.virt.sandbox.lock();
        if sb.is_none() {
            *sb = Some(Sandbox::open(db).map_err(|e| e.to_string())?);
        }
        let sb = sb.as_ref().unwrap();
        sb.set_visibility(vis);
        let r = f(sb).map_err(|e| e.to_string());
        sb.set_visibility(None);
        r
    }

    fn sandbox_run(&self, sql: &str, vis: &Option<Arc<Visibility>>) -> Result<QueryResult> {
        self.with_sandbox(vis.clone(), |sb| sb.run(sql, QUERY_BUDGET, ROW_CAP))
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
            if attr.is_dir() {
                let path = self.path_bytes(attr.ino)?;
                let target = self.link_to(Self::depth(key), &path);
                let v = self.vnode(self.leaf(folder, &name), Some((Arc::new(target), true)));
                out.push((name, Target::Virtual(v)));
            } else {
                out.push((name, Target::Real(self.overlay(attr))));
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

    fn compute(
        &self,
        ino: u64,
        key: &VKey,
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
                let subs: Vec<String> = narrow
                    .into_iter()
                    .filter(|t| !used.contains(t.as_str()))
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
            VKey::Sql(sql) => self.sql_entries(ino, key, sql, vis),
            VKey::Saved(name) => {
                let sql = match saved::shipped(name) {
                    Some(s) => s.to_string(),
                    None => self.meta().saved_query(name)?.ok_or(FsError::NotFound)?,
                };
                self.sql_entries(ino, key, &sql, vis)
            }
            VKey::Leaf(..) => Err(FsError::NotDir),
        }
    }

    fn sql_entries(
        &self,
        ino: u64,
        key: &VKey,
        sql: &str,
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
            return Ok(self.result_files(ino, &r));
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
            let base = |p: &[u8]| p.rsplit(|&c| c == b'/').next().unwrap_or(b"").to_vec();
            let name = match (bytes(name_col.map(|c| &row[c])), &path) {
                (Some(n), _) if !n.is_empty() && !n.contains(&b'/') => n,
                (_, Some(p)) if !base(p).is_empty() => base(p),
                _ => match self.meta().parent_of(attr.ino)? {
                    Some((_, n)) => n,
                    None => continue,
                },
            };
            rows.push((name, attr));
        }
        self.real_entries(ino, key, rows, &HashSet::new())
    }

    /// `result.csv` and `result.json` for rows that name no file. The CSV
    /// holds text as the bytes it is; the JSON writes text that is not
    /// UTF-8 as `{"bytes": "<base64>"}`.
    fn result_files(&self, folder: u64, r: &QueryResult) -> Vec<(Vec<u8>, Target)> {
        let mut csv: Vec<u8> = Vec::new();
        let esc = |out: &mut Vec<u8>, s: &[u8]| {
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
        for (i, c) in r.columns.iter().enumerate() {
            if i > 0 {
                csv.push(b',');
            }
            esc(&mut csv, c.as_bytes());
        }
        csv.push(b'\n');
        for row in &r.rows {
            for (i, v) in row.iter().enumerate() {
                if i > 0 {
                    csv.push(b',');
                }
                esc(&mut csv, &value_text(v));
            }
            csv.push(b'\n');
        }
        let json: Vec<serde_json::Value> = (0..r.rows.len())
            .map(|i| serde_json::Value::Object(r.row_json(i)))
            .collect();
        let mut json = serde_json::to_vec_pretty(&json).unwrap_or_default();
        json.push(b'\n');
        [
            (b"result.csv".to_vec(), csv),
            (b"result.json".to_vec(), json),
        ]
        .into_iter()
        .map(|(n, d)| {
            let v = self.vnode(self.leaf(folder, &n), Some((Arc::new(d), false)));
            (n, Target::Virtual(v))
        })
        .collect()
    }

    fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
        let generation = self.generation.load(Ordering::Acquire);
        let ck = (ino, super::perm::current_viewer());
        if let Some(l) = self.virt.cache.lock().get(&ck) {
            if l.generation == generation {
                return Ok(l.clone());
            }
        }
        let key = self.vkey(ino)?;
        let vis = self.visibility()?;
        let entries = self.compute(ino, &key, &vis)?;
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let l = Arc::new(Listing {
            generation,
            entries,
            index,
        });
        let mut c = self.virt.cache.lock();
        if c.len() > 256 {
            c.clear();
        }
        c.insert(ck, l.clone());
        Ok(l)
    }

    fn target_attr(&self, t: &Target) -> Result<Inode> {
        match t {
            Target::Real(i) => Ok(i.clone()),
            Target::Virtual(v) => self.v_getattr(*v),
        }
    }

    // ----- operations -----

    pub(super) fn v_lookup(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        let key = self.vkey(parent)?;
        match &key {
            VKey::Leaf(..) => return Err(FsError::NotDir),
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
            VKey::ByTag(terms) => {
                // A plain tag that narrows is a listed sub-folder (folders
                // win name clashes): answer it with one EXISTS probe instead
                // of computing the whole parent listing.
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
                            return self.v_getattr(self.vnode(VKey::ByTag(all), None));
                        }
                    }
                }
            }
            _ => {}
        }
        let l = self.listing(parent)?;
        if let Some(&i) = l.index.get(name) {
            return self.target_attr(&l.entries[i].1);
        }
        if let VKey::ByTag(terms) = key {
            // Any valid term is a folder, listed or not (OR, NOT, values,
            // tags that do not narrow); a plain tag must exist.
            let s = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
            let term = query::parse_term(s).map_err(|_| FsError::NotFound)?;
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

    pub(super) fn v_readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let t = self.virt.table.lock();
        match t.nodes.get(&ino) {
            Some(n) if n.link => Ok(n.data.to_vec()),
            _ => Err(FsError::Invalid("not a symbolic link".into())),
        }
    }

    pub(super) fn v_open(&self, ino: u64) -> Result<u64> {
        let t = self.virt.table.lock();
        match t.nodes.get(&ino) {
            Some(n) if matches!(n.key, VKey::Leaf(..)) && !n.link => {
                let d = n.data.clone();
                drop(t);
                Ok(self.new_fh(Handle::Virtual(d)))
            }
            Some(_) => Err(FsError::IsDir),
            None => Err(FsError::NotFound),
        }
    }

    /// The real inode behind `name` in a tag folder.
    fn entry_in(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        let l = self.listing(parent)?;
        match l.index.get(name).map(|&i| &l.entries[i].1) {
            Some(Target::Real(i)) => Ok(i.clone()),
            Some(Target::Virtual(_)) => Err(FsError::IsDir),
            None => Err(FsError::NotFound),
        }
    }

    /// Tags `ino` so that it matches `terms` (each positive term must say
    /// what to set: a tag, or `tag=value`).
    fn tag_into(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let mut set = Vec::new();
        for t in terms {
            match (t.negated, t.any.as_slice()) {
                (false, [query::Atom::Tag(n)]) => set.push((n.clone(), None)),
                (false, [query::Atom::Cmp(n, query::Op::Eq, v)]) => {
                    set.push((n.clone(), Some(v.clone())))
                }
                _ => {
                    tracing::warn!(
                        "cannot tag a file into {t:?}: only plain tags and tag=value are settable"
                    );
                    return Err(FsError::NotPermitted);
                }
            }
        }
        if set.is_empty() {
            return Err(FsError::NotPermitted);
        }
        let now = super::now_ns();
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            for (n, v) in &set {
                m.set_file_tag(ino, n, v.as_deref(), now)?;
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
        let now = super::now_ns();
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            for a in &last.any {
                m.delete_file_tag(ino, a.tag())?;
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    pub(super) fn v_mkdir(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        let terms = self.terms_of(parent)?;
        let s = std::str::from_utf8(name)
            .map_err(|_| FsError::Invalid("a tag must be UTF-8".into()))?;
        if let Err(e) = query::check_tag(s) {
            tracing::warn!("mkdir in /by-tag: {e}");
            return Err(FsError::Invalid(e));
        }
        let now = super::now_ns();
        self.tx(|m, _| {
            if m.tag_exists(s)? {
                return Err(FsError::Exists);
            }
            Ok(m.create_tag(s, now)?)
        })?;
        let mut t = terms;
        t.push(Term::tag(s));
        self.v_getattr(self.vnode(VKey::ByTag(t), None))
    }

    pub(super) fn v_rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        let terms = self.terms_of(parent)?;
        let s = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let term = query::parse_term(s).map_err(|_| FsError::NotFound)?;
        if !terms.is_empty() {
            // A narrowing folder is not a thing of its own: removing it
            // succeeds once it shows nothing (what `rm -r` needs).
            let mut t = terms;
            t.push(term);
            let v = self.vnode(VKey::ByTag(t), None);
            let l = self.listing(v)?;
            return if l.entries.iter().any(|(_, t)| matches!(t, Target::Real(_))) {
                Err(FsError::NotEmpty)
            } else {
                Ok(())
            };
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

    pub(super) fn v_unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let terms = self.terms_of(parent)?;
        if terms.is_empty() {
            return Err(FsError::IsDir);
        }
        let i = self.entry_in(parent, name)?;
        self.untag_from(i.ino, &terms)
    }

    pub(super) fn v_link(&self, ino: u64, newparent: u64) -> Result<Inode> {
        if is_virtual(ino) {
            return Err(FsError::NotPermitted);
        }
        let terms = self.terms_of(newparent)?;
        self.tag_into(ino, &terms)?;
        self.getattr(ino)
    }

    /// rename(2) where either side is in a query folder.
    pub(super) fn v_rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
    ) -> Result<()> {
        let src_v = is_virtual(parent);
        let dst_v = is_virtual(newparent);
        match (src_v, dst_v) {
            (false, true) => {
                // Moving a real file into a tag folder tags it; it stays put.
                let terms = self.terms_of(newparent).map_err(|_| FsError::CrossDevice)?;
                let i = self.lookup(parent, name)?;
                if i.is_dir() || terms.is_empty() {
                    return Err(FsError::CrossDevice);
                }
                self.tag_into(i.ino, &terms)
            }
            (true, false) => Err(FsError::CrossDevice),
            _ => {
                let from = self.terms_of(parent).map_err(|_| FsError::CrossDevice)?;
                let to = self.terms_of(newparent).map_err(|_| FsError::CrossDevice)?;
                if from.is_empty() && to.is_empty() {
                    // Renaming a tag.
                    let old = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
                    let new = std::str::from_utf8(newname)
                        .map_err(|_| FsError::Invalid("a tag must be UTF-8".into()))?;
                    query::check_tag(new).map_err(FsError::Invalid)?;
                    return self.tx(|m, _| {
                        if !m.tag_exists(old)? {
                            return Err(FsError::NotFound);
                        }
                        if m.tag_exists(new)? {
                            return Err(FsError::Exists);
                        }
                        Ok(m.rename_tag(old, new)?)
                    });
                }
                let i = self.entry_in(parent, name)?;
                if from == to {
                    // Renaming the file itself, where it really lives.
                    let (p, n) = self.meta().parent_of(i.ino)?.ok_or(FsError::NotFound)?;
                    return self.rename(p, &n, p, newname, 0);
                }
                if to.is_empty() {
                    return Err(FsError::NotPermitted);
                }
                self.untag_from(i.ino, &from)?;
                self.tag_into(i.ino, &to)
            }
        }
    }

    /// create(2) in a tag folder: the new file lives in `/inbox`, tagged.
    /// When it is closed, if it has the name and content of another file
    /// of the store (a `cp` from inside), that file is tagged instead and
    /// the copy dropped: tagging by copy makes no second file.
    pub(super) fn v_create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Inode, u64)> {
        let terms = self.terms_of(parent)?;
        if terms.is_empty() || terms.iter().any(|t| t.negated || t.any.len() != 1) {
            return Err(FsError::NotPermitted);
        }
        let inbox = match self.lookup(ROOT, INBOX) {
            Ok(i) if i.is_dir() => i,
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => self.mkdir(ROOT, INBOX, 0o755, caller)?,
            Err(e) => return Err(e),
        };
        let mut n = name.to_vec();
        let mut k = 1;
        while self.lookup(inbox.ino, &n).is_ok() {
            k += 1;
            n = query::with_suffix(name, k);
        }
        let (attr, fh) = self.create(inbox.ino, &n, perm, caller)?;
        self.tag_into(attr.ino, &terms)?;
        self.virt
            .staged
            .lock()
            .insert(attr.ino, (terms, name.to_vec()));
        Ok((attr, fh))
    }

    /// At the close (flush) of a file created in a tag folder.
    pub(super) fn settle_staged(&self, ino: u64) -> Result<()> {
        let Some((terms, original)) = self.virt.staged.lock().remove(&ino) else {
            return Ok(());
        };
        let (twin, place) = {
            let m = self.meta();
            let Some(i) = m.inode(ino)? else {
                return Ok(());
            };
            if i.size == 0 || i.nlink == 0 {
                return Ok(());
            }
            let Some((p, name)) = m.parent_of(ino)? else {
                return Ok(());
            };
            // The commit at this close stored the content id.
            let Some(chash) = m.chash(ino)? else {
                return Ok(());
            };
            let twin = m
                .same_content(&chash, ino)?
                .into_iter()
                .find(|(_, n, _)| *n == original);
            (twin, (p, name))
        };
        if let Some((_, _, other)) = twin {
            self.tag_into(other, &terms)?;
            self.unlink(place.0, &place.1)?;
        }
        Ok(())
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
        query::check_tag(name).map_err(FsError::Invalid)?;
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
        saved::check_name(name).map_err(FsError::Invalid)?;
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
