//! Export to and import from plain QVFS images.
//!
//! An export writes a tree of the store as a plain image any QVFS reader can
//! open: folders as folders, files as files (symlinks as files holding their
//! target, other special files as empty files, every hard link as its own
//! copy). What QVFS cannot hold travels in two extensions plain readers never
//! see: long-name fragments (names over 39 bytes or with characters QVFS
//! refuses) and the metadata file `.queryfs-meta.json` at the root (exact
//! times, mode, owner, symlink targets, hard-link identity, tags, xattrs,
//! saved queries). An import reads both back, so export then import loses
//! nothing.
//!
//! Both sides go through [`crate::qvfs`]: the same container code that holds
//! the store's blobs writes and reads the image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::FsError;
use crate::qvfs::container::{clusters_for, Container};
use crate::qvfs::format::{
    assign_short_names, fold, long_name_fragments, name_field, pack_time, prop, RawEntry,
    ENTRIES_PER_CLUSTER, FILE_SIZE_MAX, SIDECAR_NAME,
};
use crate::qvfs::image::{data_path, Image, Item, Report};
use crate::types::{Attr, FileKind};
use crate::vfs::{check_name, Caller, Fs, SetAttr, SetTime, ROOT};

/// Bytes moved per read or write.
const PIECE: usize = 1 << 20;
/// `format` value of the metadata file.
pub const SIDECAR_FORMAT: &str = "queryfs-qvfs-meta";
pub const SIDECAR_VERSION: u32 = 1;

/// What went wrong, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("the image has {} problem(s) a reader cannot trust; run `queryfs qvfs check` for the list", .0.errors())]
    Damaged(Box<Report>),
}

type Result<T> = std::result::Result<T, ExchangeError>;

// ----- the metadata file -----

/// Bytes in JSON: a string when they are UTF-8, else `{"hex": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bytes {
    Text(String),
    Hex { hex: String },
}

impl Bytes {
    pub fn new(b: &[u8]) -> Bytes {
        match std::str::from_utf8(b) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Hex {
                hex: b.iter().map(|c| format!("{c:02x}")).collect(),
            },
        }
    }

    pub fn to_vec(&self) -> Option<Vec<u8>> {
        match self {
            Bytes::Text(s) => Some(s.as_bytes().to_vec()),
            Bytes::Hex { hex } => {
                if hex.len() % 2 != 0 {
                    return None;
                }
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect()
            }
        }
    }
}

/// What the metadata file says of one entry, keyed by its short path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// `dir`, `file`, `symlink`, `fifo`, `socket`, `char`, `block`.
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since the Unix epoch.
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub btime: i64,
    /// The exact name, only when it is not UTF-8 (a long name carries the
    /// others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Bytes>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u32,
    /// Short path of the first link of the same inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, Option<String>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(Bytes, Bytes)>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The metadata file at the root of an image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sidecar {
    pub format: String,
    pub version: u32,
    /// The exported folder itself.
    #[serde(default)]
    pub root: Option<EntryMeta>,
    /// Every tag of the store (with a whole-store export), used or not.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The user's saved queries (name, SQL).
    #[serde(default)]
    pub queries: Vec<(String, String)>,
    pub entries: BTreeMap<String, EntryMeta>,
}

// ----- export -----

/// Choices of an export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Folder of the store to export (`/` for all of it).
    pub from: String,
    /// Skip files over 2^31-1 bytes (reported) instead of refusing.
    pub skip_large: bool,
    /// Write the metadata file (off: a bare image, as a plain writer makes).
    pub metadata: bool,
}

/// What an export or import moved.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub folders: u64,
    pub files: u64,
    pub symlinks: u64,
    pub special: u64,
    pub hard_links: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} folders, {} files ({} bytes), {} symlinks, {} hard links, {} special files",
            self.folders, self.files, self.bytes, self.symlinks, self.hard_links, self.special
        )
    }
}

/// What an export did.
#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    #[serde(flatten)]
    pub counts: Counts,
    pub clusters: u64,
    /// Store paths of files skipped for being over 2^31-1 bytes.
    pub skipped: Vec<String>,
    /// (store path, short name) of entries whose name QVFS cannot hold as
    /// is; the exact name is in a long-name entry or the metadata file.
    pub renamed: Vec<(String, String)>,
}

struct Node {
    name: Vec<u8>,
    attr: Attr,
    /// Store path, for messages.
    path: String,
    /// Path of short names in the image, relative (no leading `/`).
    short_path: String,
    short: String,
    long: Option<String>,
    /// A symlink's target, read once.
    target: Option<Vec<u8>>,
    /// For the second and later names of a hard-linked inode: the short path
    /// of its first name.
    link: Option<String>,
    children: Vec<usize>,
}

/// The decided export: every entry and its names, before anything is
/// written.
pub struct ExportPlan {
    nodes: Vec<Node>,
    /// Bytes of file content to copy.
    pub bytes: u64,
    sidecar: Option<Vec<u8>>,
    report: ExportReport,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "/" {
        format!("{}{name}", if parent == "/" { "/" } else { "" })
    } else {
        format!("{parent}/{name}")
    }
}

fn entry_count(n: &Node) -> usize {
    1 + n
        .long
        .as_ref()
        .map_or(0, |l| l.len().div_ceil(crate::qvfs::format::FRAGMENT_BYTES))
}

/// Walks the store and decides every name before anything is written, so
/// refusals (large files) come before the first byte.
pub fn plan_export(fs: &Fs, opts: &ExportOptions) -> Result<ExportPlan> {
    let root_attr = fs
        .resolve(&opts.from)
        .map_err(|e| ExchangeError::Refused(format!("{}: {e}", opts.from)))?;
    if !root_attr.is_dir() {
        return Err(ExchangeError::Refused(format!(
            "{}: not a folder (export a folder; its contents become the image's root)",
            opts.from
        )));
    }
    let from = if opts.from.trim_end_matches('/').is_empty() {
        "/".to_string()
    } else {
        opts.from.trim_end_matches('/').to_string()
    };
    let mut nodes = vec![Node {
        name: Vec::new(),
        attr: root_attr,
        path: from,
        short_path: String::new(),
        short: String::new(),
        long: None,
        target: None,
        link: None,
        children: Vec::new(),
    }];
    let mut first_name: HashMap<u64, String> = HashMap::new();
    let mut report = ExportReport::default();
    let mut large = Vec::new();
    let mut bytes = 0u64;
    let mut todo = vec![0usize];
    while let Some(d) = todo.pop() {
        let list = fs.list(nodes[d].attr.ino)?;
        let names: Vec<&[u8]> = list.iter().map(|e| e.name.as_slice()).collect();
        let mut taken = HashSet::new();
        if d == 0 && opts.metadata {
            taken.insert(fold(SIDECAR_NAME));
        }
        let shorts = assign_short_names(&names, &mut taken);
        let mut kids = Vec::new();
        for (e, short) in list.iter().zip(shorts) {
            let path = join_path(&nodes[d].path, &lossy(&e.name));
            if e.attr.kind == FileKind::File && e.attr.size > FILE_SIZE_MAX {
                if opts.skip_large {
                    report.skipped.push(path);
                } else {
                    large.push(format!("{path} ({} bytes)", e.attr.size));
                }
                continue;
            }
            let exact = std::str::from_utf8(&e.name).ok();
            let long = match exact {
                Some(x) if x != short => Some(x.to_string()),
                _ => None,
            };
            if exact != Some(short.as_str()) {
                report.renamed.push((path.clone(), short.clone()));
            }
            let short_path = if nodes[d].short_path.is_empty() {
                short.clone()
            } else {
                format!("{}/{short}", nodes[d].short_path)
            };
            let target = match e.attr.kind {
                FileKind::Symlink => Some(fs.readlink(e.attr.ino)?),
                _ => None,
            };
            bytes += match &target {
                Some(t) => t.len() as u64,
                None if e.attr.kind == FileKind::File => e.attr.size,
                None => 0,
            };
            let link = if e.attr.nlink > 1 && !e.attr.is_dir() {
                match first_name.get(&e.attr.ino) {
                    Some(p) => Some(p.clone()),
                    None => {
                        first_name.insert(e.attr.ino, short_path.clone());
                        None
                    }
                }
            } else {
                None
            };
            let idx = nodes.len();
            nodes.push(Node {
                name: e.name.clone(),
                attr: e.attr.clone(),
                path,
                short_path,
                short,
                long,
                target,
                link,
                children: Vec::new(),
            });
            kids.push(idx);
            if e.attr.is_dir() {
                todo.push(idx);
            }
        }
        nodes[d].children = kids;
    }
    if !large.is_empty() {
        return Err(ExchangeError::Refused(format!(
            "{} file(s) are over 2^31-1 bytes, more than a QVFS entry can hold (use --skip-large to leave them out):\n  {}",
            large.len(),
            large.join("\n  ")
        )));
    }
    let sidecar = if opts.metadata {
        Some(build_sidecar(fs, &nodes)?)
    } else {
        None
    };
    Ok(ExportPlan {
        nodes,
        bytes,
        sidecar,
        report,
    })
}

fn entry_meta(fs: &Fs, n: &Node) -> Result<EntryMeta> {
    let a = &n.attr;
    let mut m = EntryMeta {
        kind: a.kind.word().to_string(),
        mode: a.perm,
        uid: a.uid,
        gid: a.gid,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        btime: a.btime,
        rdev: a.rdev,
        ..Default::default()
    };
    if std::str::from_utf8(&n.name).is_err() {
        m.name = Some(Bytes::new(&n.name));
    }
    m.target = n.target.as_deref().map(Bytes::new);
    m.tags = fs.file_tags(a.ino)?;
    let names = fs.listxattr(a.ino)?;
    for x in names.split(|&c| c == 0).filter(|x| !x.is_empty()) {
        if x == b"user.tags" || x.starts_with(b"user.tag.") {
            continue;
        }
        let v = fs.getxattr(a.ino, x)?;
        m.xattrs.push((Bytes::new(x), Bytes::new(&v)));
    }
    Ok(m)
}

fn build_sidecar(fs: &Fs, nodes: &[Node]) -> Result<Vec<u8>> {
    let whole = nodes[0].attr.ino == ROOT;
    let mut sc = Sidecar {
        format: SIDECAR_FORMAT.into(),
        version: SIDECAR_VERSION,
        root: Some(entry_meta(fs, &nodes[0])?),
        ..Default::default()
    };
    if whole {
        sc.tags = fs.tag_names()?;
        sc.queries = fs
            .queries()?
            .into_iter()
            .filter(|q| !q.2)
            .map(|(n, s, _)| (n, s))
            .collect();
    }
    for n in &nodes[1..] {
        let m = match &n.link {
            // Everything else of a hard link is its first name's.
            Some(p) => EntryMeta {
                kind: n.attr.kind.word().to_string(),
                link: Some(p.clone()),
                name: std::str::from_utf8(&n.name)
                    .is_err()
                    .then(|| Bytes::new(&n.name)),
                ..Default::default()
            },
            None => entry_meta(fs, n)?,
        };
        sc.entries.insert(n.short_path.clone(), m);
    }
    Ok(serde_json::to_vec_pretty(&sc).map_err(io::Error::other)?)
}

/// A temporary file beside `path` that becomes `path` on success.
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
}

impl Staged {
    fn new(dest: &Path) -> io::Result<(Staged, File)> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok((
            Staged {
                tmp,
                dest: dest.to_path_buf(),
            },
            f,
        ))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

fn property(a: &Attr) -> u8 {
    if a.is_dir() {
        prop::DIR
    } else if a.perm & 0o222 == 0 {
        prop::FILE | prop::READ_ONLY
    } else {
        prop::FILE
    }
}

fn created(a: &Attr) -> u32 {
    pack_time(if a.btime != 0 { a.btime } else { a.mtime })
}

/// Writes the planned export to `qfi` and the `.qfd` beside it. `progress`
/// hears the number of content bytes copied since its last call.
pub fn write_export(
    fs: &Fs,
    plan: ExportPlan,
    qfi: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportReport> {
    if qfi.extension().and_then(|e| e.to_str()) != Some("qfi") {
        return Err(ExchangeError::Refused(format!(
            "{}: an image is named NAME.qfi (its data goes to NAME.qfd)",
            qfi.display()
        )));
    }
    let qfd = data_path(qfi);
    if !force {
        for p in [qfi, qfd.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(ExchangeError::Refused(format!(
                    "{}: exists (use --force to replace it)",
                    p.display()
                )));
            }
        }
    }
    let (si, fi) = Staged::new(qfi)?;
    let (sd, fd) = Staged::new(&qfd)?;
    let c = Container::create(Box::new(fi), Box::new(fd), &[])?;
    let ExportPlan {
        nodes,
        sidecar,
        mut report,
        ..
    } = plan;

    // The root's chain starts at cluster 0 and grows if it must.
    let root_entries: usize = nodes[0]
        .children
        .iter()
        .map(|&k| entry_count(&nodes[k]))
        .sum::<usize>()
        + usize::from(sidecar.is_some());
    let root_chain = dir_chain(&c, root_entries, true)?;
    let mut todo: Vec<(usize, Vec<u32>)> = vec![(0, root_chain)];
    while let Some((d, chain)) = todo.pop() {
        let mut entries: Vec<u8> = Vec::new();
        let mut subdirs = Vec::new();
        for &k in &nodes[d].children {
            let n = &nodes[k];
            let a = &n.attr;
            let (start, size) = match a.kind {
                FileKind::Dir => {
                    let count: usize = n.children.iter().map(|&g| entry_count(&nodes[g])).sum();
                    let ch = dir_chain(&c, count, false)?;
                    let s = ch[0];
                    subdirs.push((k, ch));
                    report.counts.folders += 1;
                    (s, 0u64)
                }
                FileKind::File => {
                    report.counts.files += 1;
                    if n.link.is_some() {
                        report.counts.hard_links += 1;
                    }
                    let s = copy_file(fs, &c, n, progress)?;
                    report.counts.bytes += a.size;
                    (s, a.size)
                }
                FileKind::Symlink => {
                    report.counts.symlinks += 1;
                    let t = n.target.as_deref().unwrap_or_default();
                    progress(t.len() as u64);
                    (write_bytes(&c, t)?, t.len() as u64)
                }
                _ => {
                    report.counts.special += 1;
                    (write_bytes(&c, &[])?, 0)
                }
            };
            let e = RawEntry {
                property: property(a),
                name: name_field(&n.short),
                created: created(a),
                modified: pack_time(a.mtime),
                start: start as i32,
                size: size as i32,
            };
            if let Some(l) = &n.long {
                for f in long_name_fragments(l, &e.name) {
                    entries.extend_from_slice(&f);
                }
            }
            entries.extend_from_slice(&e.encode());
        }
        if d == 0 {
            if let Some(sc) = &sidecar {
                let start = write_bytes(&c, sc)?;
                let now = pack_time(crate::vfs::now_ns());
                let e = RawEntry {
                    property: prop::FILE | prop::HIDDEN,
                    name: name_field(SIDECAR_NAME),
                    created: now,
                    modified: now,
                    start: start as i32,
                    size: sc.len() as i32,
                };
                entries.extend_from_slice(&e.encode());
            }
        }
        c.write_in(&chain, 0, &entries, true)?;
        c.publish(&chain)?;
        // Folders in order: the stack pops the last pushed first.
        todo.extend(subdirs.into_iter().rev());
    }
    c.sync()?;
    report.clusters = c.cluster_count();
    drop(c);
    fs::rename(&si.tmp, &si.dest)?;
    fs::rename(&sd.tmp, &sd.dest)?;
    Ok(report)
}

/// Writes `data` (at most a few MiB) into a new chain; returns its start.
fn write_bytes(c: &Container, data: &[u8]) -> io::Result<u32> {
    let ch = c.reserve(clusters_for(data.len() as u64) as usize)?;
    c.write_in(&ch, 0, data, true)?;
    c.publish(&ch)?;
    Ok(ch[0])
}

/// Reserves the chain of a folder of `entries` entries; the root's starts
/// at cluster 0.
fn dir_chain(c: &Container, entries: usize, root: bool) -> io::Result<Vec<u32>> {
    let n = entries.div_ceil(ENTRIES_PER_CLUSTER).max(1);
    if !root {
        return c.reserve(n);
    }
    let mut chain = vec![0u32];
    if n > 1 {
        let more = c.reserve(n - 1)?;
        c.join(0, more[0]);
        chain.extend(more);
    }
    Ok(chain)
}

fn copy_file(fs: &Fs, c: &Container, n: &Node, progress: &mut dyn FnMut(u64)) -> Result<u32> {
    let size = n.attr.size;
    let chain = c.reserve(clusters_for(size) as usize)?;
    let fh = fs.open(n.attr.ino)?;
    let r = (|| -> Result<()> {
        let mut off = 0u64;
        while off < size {
            let want = ((size - off) as usize).min(PIECE);
            let d = fs.read(fh, off, want as u32)?;
            if d.is_empty() {
                return Err(ExchangeError::Refused(format!(
                    "{}: changed during the export (shorter than {size} bytes)",
                    n.path
                )));
            }
            c.write_in(&chain, off, &d, false)?;
            off += d.len() as u64;
            progress(d.len() as u64);
        }
        c.write_in(&chain, size, &[], true)?;
        Ok(())
    })();
    let rel = fs.release(fh);
    r?;
    rel?;
    c.publish(&chain)?;
    Ok(chain[0])
}

// ----- import -----

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    #[serde(flatten)]
    pub counts: Counts,
    /// Whether the image carried queryfs metadata.
    pub metadata: bool,
    /// Things imported with less than full fidelity, one line each.
    pub warnings: Vec<String>,
}

struct Importer<'a> {
    fs: &'a Fs,
    img: &'a Image,
    sc: Option<Sidecar>,
    report: ImportReport,
    /// Short path -> inode imported there, for hard links.
    by_short: HashMap<String, u64>,
    /// Attributes to set once everything is in: (inode, meta or defaults,
    /// whether its tags and xattrs are still to set).
    finish: Vec<(u64, EntryMeta, bool)>,
}

fn defaults(item: &Item) -> EntryMeta {
    let mtime = item.modified_ns().unwrap_or(0);
    EntryMeta {
        kind: if item.is_dir() { "dir" } else { "file" }.into(),
        mode: if item.is_dir() {
            0o755
        } else if item.entry.property & prop::READ_ONLY != 0 {
            0o444
        } else {
            0o644
        },
        uid: Caller::current().uid,
        gid: Caller::current().gid,
        atime: mtime,
        mtime,
        ctime: mtime,
        btime: item.created_ns().unwrap_or(mtime),
        ..Default::default()
    }
}

/// Reads the metadata file of an image, if it has a sound one.
pub fn read_sidecar(img: &Image) -> (Option<Sidecar>, Option<String>) {
    let Ok(root) = img.read_dir(0) else {
        return (None, None);
    };
    let Some(item) = root
        .iter()
        .find(|i| !i.is_dir() && i.short() == SIDECAR_NAME.as_bytes())
    else {
        return (None, None);
    };
    let mut bytes = Vec::new();
    if let Err(e) = img.read_file(item, PIECE, |d| {
        bytes.extend_from_slice(d);
        Ok(())
    }) {
        return (
            None,
            Some(format!("{SIDECAR_NAME}: {e}; imported without it")),
        );
    }
    match serde_json::from_slice::<Sidecar>(&bytes) {
        Ok(sc) if sc.format == SIDECAR_FORMAT && sc.version <= SIDECAR_VERSION => (Some(sc), None),
        Ok(sc) => (
            None,
            Some(format!(
                "{SIDECAR_NAME}: format {:?} version {} is not one this queryfs reads; imported without it",
                sc.format, sc.version
            )),
        ),
        Err(e) => (None, Some(format!("{SIDECAR_NAME}: {e}; imported without it"))),
    }
}

/// Imports an image into the folder `into` of the store (created, with its
/// parents, if missing). `check` is the image's check report: an image with
/// errors is refused, and so is a top-level name already taken in `into`,
/// before anything is written.
pub fn import(
    fs: &Fs,
    img: &Image,
    check: &Report,
    into: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport> {
    if check.errors() > 0 {
        return Err(ExchangeError::Damaged(Box::new(check.clone())));
    }
    let (sc, warn) = read_sidecar(img);
    let mut im = Importer {
        fs,
        img,
        report: ImportReport {
            metadata: sc.is_some(),
            warnings: warn.into_iter().collect(),
            ..Default::default()
        },
        sc,
        by_short: HashMap::new(),
        finish: Vec::new(),
    };
    let (target, fresh) = im.target(into)?;
    let top = img.read_dir(0)?;
    let mut clash = Vec::new();
    for item in top.iter().filter(|i| !im.is_sidecar(i, true)) {
        let name = im.final_name(item, &item.short_lossy());
        match fs.lookup(target, &name) {
            Ok(_) => clash.push(lossy(&name)),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !clash.is_empty() {
        return Err(ExchangeError::Refused(format!(
            "{into}: already holds {} (import into an empty or new folder with --into)",
            clash.join(", ")
        )));
    }
    if fresh {
        if let Some(root) = im.sc.as_ref().and_then(|s| s.root.clone()) {
            im.finish.push((target, root, true));
        }
    }
    im.tree(target, top, progress)?;
    // Folders last, deepest first, so that creating their entries does not
    // move the times just set.
    let finish = std::mem::take(&mut im.finish);
    for (ino, m, xattrs) in finish.iter().rev() {
        if *xattrs {
            im.set_xattrs(*ino, m, "folder");
        }
        im.set_attrs(*ino, m)?;
    }
    if let Some(sc) = &im.sc {
        for t in &sc.tags {
            if let Err(e) = fs.ensure_tag(t) {
                im.report.warnings.push(format!("tag {t:?}: {e}"));
            }
        }
        let have: HashMap<String, String> =
            fs.queries()?.into_iter().map(|(n, s, _)| (n, s)).collect();
        for (n, s) in &sc.queries {
            match have.get(n) {
                Some(old) if old == s => {}
                Some(_) => im.report.warnings.push(format!(
                    "saved query {n:?}: the store has another of that name; kept it"
                )),
                None => {
                    if let Err(e) = fs.save_query(n, s) {
                        im.report.warnings.push(format!("saved query {n:?}: {e}"));
                    }
                }
            }
        }
    }
    fs.sync_all()?;
    Ok(im.report)
}

impl Importer<'_> {
    /// The folder to import into, and whether it is the root or was made
    /// now (then it takes the exported folder's own attributes).
    fn target(&self, into: &str) -> Result<(u64, bool)> {
        let mut cur = ROOT;
        let mut made = true;
        for comp in into.split('/').filter(|c| !c.is_empty() && *c != ".") {
            cur = match self.fs.lookup(cur, comp.as_bytes()) {
                Ok(i) if i.is_dir() => {
                    made = false;
                    i.ino
                }
                Ok(_) => {
                    return Err(ExchangeError::Refused(format!(
                        "{into}: {comp} is not a folder"
                    )))
                }
                Err(FsError::NotFound) => {
                    self.fs
                        .mkdir(cur, comp.as_bytes(), 0o755, Caller::current())?
                        .ino
                }
                Err(e) => return Err(ExchangeError::Refused(format!("{into}: {e}"))),
            };
        }
        Ok((cur, made || cur == ROOT))
    }

    fn is_sidecar(&self, item: &Item, at_root: bool) -> bool {
        at_root && self.sc.is_some() && !item.is_dir() && item.short() == SIDECAR_NAME.as_bytes()
    }

    fn meta(&self, short_path: &str) -> Option<&EntryMeta> {
        self.sc.as_ref()?.entries.get(short_path)
    }

    fn final_name(&self, item: &Item, short_path: &str) -> Vec<u8> {
        if let Some(n) = self
            .meta(short_path)
            .and_then(|m| m.name.as_ref())
            .and_then(|b| b.to_vec())
        {
            if check_name(&n).is_ok() {
                return n;
            }
        }
        item.name.as_bytes().to_vec()
    }

    fn tree(&mut self, target: u64, top: Vec<Item>, progress: &mut dyn FnMut(u64)) -> Result<()> {
        let mut todo: Vec<(u64, String, Vec<Item>)> = vec![(target, String::new(), top)];
        while let Some((dir, prefix, items)) = todo.pop() {
            for item in items {
                if prefix.is_empty() && self.is_sidecar(&item, true) {
                    continue;
                }
                let short = item.short_lossy();
                let sp = if prefix.is_empty() {
                    short
                } else {
                    format!("{prefix}/{short}")
                };
                if let Some((ino, kids)) = self.entry(dir, &item, &sp, progress)? {
                    todo.push((ino, sp, kids));
                }
            }
        }
        Ok(())
    }

    /// Imports one entry; for a folder, returns it and its entries.
    fn entry(
        &mut self,
        dir: u64,
        item: &Item,
        sp: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<(u64, Vec<Item>)>> {
        let name = self.final_name(item, sp);
        let mut m = self.meta(sp).cloned();
        if let Some(x) = &m {
            let want_dir = x.kind == "dir";
            if want_dir != item.is_dir()
                || (x.link.is_none() && FileKind::from_word(&x.kind).is_none())
            {
                self.report.warnings.push(format!(
                    "{sp}: the metadata file says {:?}, the image holds a {}; imported as the image says",
                    x.kind,
                    if item.is_dir() { "folder" } else { "file" }
                ));
                m = None;
            }
        }
        let caller = Caller::current();
        if item.is_dir() {
            let i = self.fs.mkdir(dir, &name, 0o700, caller)?;
            self.report.counts.folders += 1;
            let kids = self.img.read_dir(item.entry.start)?;
            self.finish
                .push((i.ino, m.unwrap_or_else(|| defaults(item)), true));
            return Ok(Some((i.ino, kids)));
        }
        if let Some(p) = m.as_ref().and_then(|x| x.link.clone()) {
            match self.by_short.get(&p).copied() {
                Some(ino) => {
                    self.fs.link(ino, dir, &name)?;
                    self.report.counts.hard_links += 1;
                    progress(item.size());
                    // A link moves the inode's ctime: set the first name's
                    // attributes again at the end.
                    if let Some(first) = self.meta(&p).filter(|f| f.kind != "dir").cloned() {
                        self.finish.push((ino, first, false));
                    }
                    return Ok(None);
                }
                None => {
                    self.report.warnings.push(format!(
                        "{sp}: hard link to {p}, which is not in the image; imported as a copy"
                    ));
                    m = None;
                }
            }
        }
        let m = m.unwrap_or_else(|| defaults(item));
        let k = FileKind::from_word(&m.kind).unwrap_or(FileKind::File);
        let ino = match k {
            FileKind::Symlink => {
                let t = match m.target.as_ref().and_then(|t| t.to_vec()) {
                    Some(t) => t,
                    None => self.content(item)?,
                };
                progress(item.size());
                self.report.counts.symlinks += 1;
                self.fs.symlink(dir, &name, &t, caller)?.ino
            }
            FileKind::File => {
                let (i, fh) = self.fs.create(dir, &name, 0o600, caller)?;
                let mut off = 0u64;
                let fs = self.fs;
                let r = self.img.read_file(item, PIECE, |d| {
                    fs.write(fh, off, d).map_err(io::Error::other)?;
                    off += d.len() as u64;
                    progress(d.len() as u64);
                    Ok(())
                });
                let fl = r
                    .map_err(ExchangeError::from)
                    .and_then(|_| Ok(fs.flush(fh)?));
                let rel = fs.release(fh);
                fl?;
                rel?;
                self.report.counts.files += 1;
                self.report.counts.bytes += item.size();
                i.ino
            }
            _ => {
                self.report.counts.special += 1;
                self.fs
                    .mknod(dir, &name, k | (m.mode & 0o7777), m.rdev, caller)?
                    .ino
            }
        };
        self.set_xattrs(ino, &m, sp);
        self.set_attrs(ino, &m)?;
        self.by_short.insert(sp.to_string(), ino);
        Ok(None)
    }

    /// Tags and xattrs; a failure is a warning, not the end of the import.
    fn set_xattrs(&mut self, ino: u64, m: &EntryMeta, sp: &str) {
        for (n, v) in &m.tags {
            let attr = format!("user.tag.{n}");
            if let Err(e) = self.fs.setxattr(
                ino,
                attr.as_bytes(),
                v.as_deref().unwrap_or("").as_bytes(),
                0,
            ) {
                self.report.warnings.push(format!("{sp}: tag {n:?}: {e}"));
            }
        }
        for (n, v) in &m.xattrs {
            let (Some(n), Some(v)) = (n.to_vec(), v.to_vec()) else {
                self.report.warnings.push(format!(
                    "{sp}: an xattr in the metadata file is not valid hex"
                ));
                continue;
            };
            if let Err(e) = self.fs.setxattr(ino, &n, &v, 0) {
                self.report
                    .warnings
                    .push(format!("{sp}: xattr {}: {e}", lossy(&n)));
            }
        }
    }

    fn content(&self, item: &Item) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.img.read_file(item, PIECE, |d| {
            v.extend_from_slice(d);
            Ok(())
        })?;
        Ok(v)
    }

    fn set_attrs(&mut self, ino: u64, m: &EntryMeta) -> Result<()> {
        self.fs.setattr(
            ino,
            &SetAttr {
                mode: Some(m.mode & 0o7777),
                uid: Some(m.uid),
                gid: Some(m.gid),
                atime: Some(SetTime::At(m.atime)),
                mtime: Some(SetTime::At(m.mtime)),
                ctime: Some(m.ctime),
                btime: Some(m.btime),
                size: None,
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
