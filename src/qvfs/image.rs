//! Reading plain QVFS images: folders, files, paths, and the reader checks.
//!
//! Nothing here trusts the image. Every chain walk is bounded by the cluster
//! count; folders are scanned one cluster at a time; a file is streamed, never
//! read whole; the check claims each cluster at most once, so its work is
//! linear in the image size whatever the FAT says. The only allocations that
//! grow with the image are the FAT itself (the size of the `.qfi` file), one
//! owner slot per cluster, and one record per directory entry found in the
//! `.qfd` file.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::container::{Container, CLUSTER_SIZE, FAT_EOC, FAT_FREE};
use super::device::Device;
use super::format::{
    fold, join_fragments, short_name_problem, unpack_time, Fragment, RawEntry, ENTRY_SIZE,
};

/// Why an image cannot be read at all. (The inner errors are part of the
/// message, not `source`s, so that a chain printer does not repeat them.)
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// Opening or inspecting one of the two files failed.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
    #[error("{}: not a regular file", .0.display())]
    NotRegular(PathBuf),
    /// The `.qfd` device's length could not be had.
    #[error("{0}")]
    Device(io::Error),
    /// The two devices hold no readable container.
    #[error("{0}")]
    Container(io::Error),
    /// The image at `path` is unreadable for the inner reason.
    #[error("{}: {err}", path.display())]
    Image { path: PathBuf, err: Box<Unreadable> },
}

/// The `.qfd` path that goes with a `.qfi` path.
pub fn data_path(qfi: &Path) -> PathBuf {
    qfi.with_extension("qfd")
}

/// One live entry of a folder.
#[derive(Debug, Clone)]
pub struct Item {
    /// The name to show: the long name when the entry has a valid one, else
    /// the short name (lossily decoded if it is not UTF-8).
    pub name: String,
    /// The long name, when long-name fragments carry one.
    pub long: Option<String>,
    pub entry: RawEntry,
    /// Index of the entry's slot in its folder.
    pub slot: usize,
}

impl Item {
    pub fn is_dir(&self) -> bool {
        self.entry.is_dir()
    }
    pub fn short(&self) -> &[u8] {
        self.entry.name_bytes()
    }
    pub fn short_lossy(&self) -> String {
        String::from_utf8_lossy(self.short()).into_owned()
    }
    /// The size field; negative sizes read as 0 (the check reports them).
    pub fn size(&self) -> u64 {
        self.entry.size.max(0) as u64
    }
    pub fn modified_ns(&self) -> Option<i64> {
        unpack_time(self.entry.modified)
    }
    pub fn created_ns(&self) -> Option<i64> {
        unpack_time(self.entry.created)
    }
}

/// Something found while scanning one folder.
enum Found {
    Item(Item),
    /// Live-looking entry that is neither file nor folder (or both).
    BadProperty {
        slot: usize,
        property: u8,
    },
    /// Long-name fragments that belong to no following entry.
    Orphan {
        slot: usize,
        why: String,
    },
    /// A live entry after the end marker: invisible to readers.
    AfterEnd {
        slot: usize,
    },
}

/// An open image.
pub struct Image {
    c: Container,
    clusters: u32,
    qfd_len: u64,
}

impl Image {
    /// Opens `NAME.qfi` and the `NAME.qfd` beside it.
    pub fn open(qfi: &Path) -> Result<Image, Unreadable> {
        let qfd = data_path(qfi);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |err| Unreadable::Io { path, err }
        };
        let f = File::open(qfi).map_err(io(qfi))?;
        let d = File::open(&qfd).map_err(io(&qfd))?;
        for (p, file) in [(qfi, &f), (qfd.as_path(), &d)] {
            let md = file.metadata().map_err(io(p))?;
            if !md.is_file() {
                return Err(Unreadable::NotRegular(p.to_path_buf()));
            }
        }
        Self::from_devices(Box::new(f), Box::new(d)).map_err(|e| Unreadable::Image {
            path: qfi.to_path_buf(),
            err: Box::new(e),
        })
    }

    /// Opens an image held by two devices.
    pub fn from_devices(qfi: Box<dyn Device>, qfd: Box<dyn Device>) -> Result<Image, Unreadable> {
        let qfd_len = qfd.len().map_err(Unreadable::Device)?;
        let c = Container::open(qfi, qfd).map_err(Unreadable::Container)?;
        let clusters = c.cluster_count() as u32;
        Ok(Image {
            c,
            clusters,
            qfd_len,
        })
    }

    pub fn cluster_count(&self) -> u32 {
        self.clusters
    }

    /// Scans the folder whose chain is `chain`. Stops at the end marker
    /// unless `past_end` (the check looks further for hidden entries).
    fn scan(&self, chain: &[u32], past_end: bool, mut found: impl FnMut(Found)) -> io::Result<()> {
        let mut buf = vec![0u8; CLUSTER_SIZE];
        let mut run: Vec<Fragment> = Vec::new();
        let mut run_start = 0usize;
        let mut ended = false;
        for k in 0..chain.len() {
            if chain[k] as u64 * CLUSTER_SIZE as u64 >= self.qfd_len {
                // Past the end of the data file: all zeros, no entries.
                if !past_end {
                    return Ok(());
                }
                if !ended {
                    orphan(
                        &mut run,
                        run_start,
                        "before the end of the folder",
                        &mut found,
                    );
                }
                ended = true;
                continue;
            }
            self.c.read_in(chain, (k * CLUSTER_SIZE) as u64, &mut buf)?;
            for (j, raw) in buf.chunks_exact(ENTRY_SIZE).enumerate() {
                let slot = k * (CLUSTER_SIZE / ENTRY_SIZE) + j;
                let e = RawEntry::decode(raw);
                if e.is_end() {
                    if !past_end {
                        return Ok(());
                    }
                    ended = true;
                    orphan(
                        &mut run,
                        run_start,
                        "before the end of the folder",
                        &mut found,
                    );
                    continue;
                }
                if ended {
                    if !e.is_deleted() {
                        found(Found::AfterEnd { slot });
                    }
                    continue;
                }
                if e.is_fragment() {
                    let f = Fragment::decode(raw);
                    if f.seq == 1 || run.is_empty() {
                        orphan(&mut run, run_start, "followed by another name", &mut found);
                        run_start = slot;
                    }
                    run.push(f);
                    continue;
                }
                if e.is_deleted() {
                    orphan(
                        &mut run,
                        run_start,
                        "followed by a deleted entry",
                        &mut found,
                    );
                    continue;
                }
                let kinds = e.property & (super::format::prop::DIR | super::format::prop::FILE);
                if kinds != super::format::prop::DIR && kinds != super::format::prop::FILE {
                    found(Found::BadProperty {
                        slot,
                        property: e.property,
                    });
                    run.clear();
                    continue;
                }
                let long = if run.is_empty() {
                    None
                } else {
                    match join_fragments(&run, &e.name) {
                        Ok(l) => Some(l),
                        Err(why) => {
                            found(Found::Orphan {
                                slot: run_start,
                                why: why.to_string(),
                            });
                            None
                        }
                    }
                };
                run.clear();
                let name = long
                    .clone()
                    .unwrap_or_else(|| String::from_utf8_lossy(e.name_bytes()).into_owned());
                found(Found::Item(Item {
                    name,
                    long,
                    entry: e,
                    slot,
                }));
            }
        }
        Ok(())
    }

    /// The chain of an entry (or of the root, start 0), checked.
    pub fn chain_of(&self, start: i32, what: &str) -> io::Result<Vec<u32>> {
        if start < 0 {
            return Err(invalid(format!("{what}: negative start cluster {start}")));
        }
        self.c
            .chain(start as u32)
            .map_err(|e| invalid(format!("{what}: {e}")))
    }

    /// The live entries of the folder whose chain starts at `start`
    /// (0 for the root).
    pub fn read_dir(&self, start: i32) -> io::Result<Vec<Item>> {
        let chain = self.chain_of(start, "folder")?;
        let mut out = Vec::new();
        self.scan(&chain, false, |f| {
            if let Found::Item(i) = f {
                out.push(i);
            }
        })?;
        Ok(out)
    }

    /// Finds `path` ("/" or "" is the root, which has no entry: `None`).
    /// Each component matches an entry's long name or short name exactly.
    pub fn resolve(&self, path: &str) -> io::Result<Option<Item>> {
        let mut cur: Option<Item> = None;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let start = match &cur {
                None => 0,
                Some(i) if i.is_dir() => i.entry.start,
                Some(i) => return Err(invalid(format!("{}: not a folder", i.name))),
            };
            let items = self.read_dir(start)?;
            let hit = items
                .iter()
                .find(|i| i.name == comp)
                .or_else(|| items.iter().find(|i| i.short() == comp.as_bytes()))
                .cloned();
            cur = Some(hit.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such entry"))
            })?);
        }
        Ok(cur)
    }

    /// Streams the bytes of a file entry to `sink`, in pieces of at most
    /// `piece` bytes.
    pub fn read_file(
        &self,
        item: &Item,
        piece: usize,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if item.is_dir() {
            return Err(invalid(format!("{}: is a folder", item.name)));
        }
        if item.entry.size < 0 {
            return Err(invalid(format!("{}: negative size", item.name)));
        }
        let chain = self.chain_of(item.entry.start, &item.name)?;
        let size = item.size();
        if (chain.len() as u64) * (CLUSTER_SIZE as u64) < size {
            return Err(invalid(format!(
                "{}: size {size} needs more than its {} clusters",
                item.name,
                chain.len()
            )));
        }
        let mut buf = vec![0u8; piece.min(size as usize).max(1)];
        let mut off = 0u64;
        while off < size {
            let n = ((size - off) as usize).min(buf.len());
            self.c.read_in(&chain, off, &mut buf[..n])?;
            sink(&buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    /// Runs the reader checks over the whole image.
    pub fn check(&self) -> Report {
        Checker::new(self).run()
    }
}

/// Reports a pending run of long-name fragments as orphans, and drops it.
fn orphan(run: &mut Vec<Fragment>, slot: usize, why: &str, found: &mut impl FnMut(Found)) {
    if !run.is_empty() {
        found(Found::Orphan {
            slot,
            why: format!("long-name fragments {why}"),
        });
        run.clear();
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

// ----- the check -----

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data or names a reader cannot trust.
    Error,
    /// Harmless to readers (lost clusters, writer-rule slips).
    Warning,
}

/// One finding of the check.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// A stable kebab-case kind: `bad-fat-value`, `loop`, `cross-link`, ...
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<u32>,
    pub message: String,
}

/// What the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub clusters: u64,
    pub folders: u64,
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// Problems found beyond the ones listed.
    pub omitted: u64,
    /// How many of the omitted problems are errors.
    pub omitted_errors: u64,
}

/// Problems listed in full; the rest are counted.
const MAX_PROBLEMS: usize = 1000;
/// Components shown of a deep path.
const PATH_SHOWN: usize = 32;
/// Ancestors looked at to call a cross-link a folder cycle.
const CYCLE_LOOKUP: usize = 4096;
const NONE: u32 = u32::MAX;

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.omitted == 0
    }
    /// Problems of severity error, listed or not.
    pub fn errors(&self) -> u64 {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count() as u64
            + self.omitted_errors
    }
    /// Problems of severity warning, listed or not.
    pub fn warnings(&self) -> u64 {
        self.problems.len() as u64 + self.omitted - self.errors()
    }
    /// Whether a problem of `kind` was found (at `path`, when given).
    pub fn has(&self, kind: &str, path: Option<&str>) -> bool {
        self.problems
            .iter()
            .any(|p| p.kind == kind && (path.is_none() || p.path.as_deref() == path))
    }
}

struct Node {
    parent: u32,
    name: String,
    is_dir: bool,
}

struct Checker<'a> {
    img: &'a Image,
    report: Report,
    owner: Vec<u32>,
    nodes: Vec<Node>,
}

impl<'a> Checker<'a> {
    fn new(img: &'a Image) -> Self {
        Checker {
            img,
            report: Report {
                clusters: img.clusters as u64,
                ..Default::default()
            },
            owner: vec![NONE; img.clusters as usize],
            nodes: vec![Node {
                parent: NONE,
                name: String::new(),
                is_dir: true,
            }],
        }
    }

    fn path(&self, mut node: u32) -> String {
        let mut parts = Vec::new();
        while node != 0 && node != NONE {
            if parts.len() == PATH_SHOWN {
                parts.push("…");
                break;
            }
            let n = &self.nodes[node as usize];
            parts.push(n.name.as_str());
            node = n.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn add(
        &mut self,
        severity: Severity,
        kind: &'static str,
        node: Option<u32>,
        cluster: Option<u32>,
        message: String,
    ) {
        if self.report.problems.len() >= MAX_PROBLEMS {
            self.report.omitted += 1;
            if severity == Severity::Error {
                self.report.omitted_errors += 1;
            }
            return;
        }
        let path = node.map(|n| self.path(n));
        self.report.problems.push(Problem {
            severity,
            kind,
            path,
            cluster,
            message,
        });
    }

    fn is_ancestor(&self, maybe: u32, mut of: u32) -> bool {
        for _ in 0..CYCLE_LOOKUP {
            if of == maybe {
                return true;
            }
            if of == NONE || of == 0 {
                return maybe == 0;
            }
            of = self.nodes[of as usize].parent;
        }
        false
    }

    /// Claims the chain from `start` for `node`; returns the sound prefix.
    fn claim(&mut self, node: u32, start: u32, fat: &[u32]) -> Vec<u32> {
        let n = fat.len() as u32;
        let mut chain = Vec::new();
        let mut cur = start;
        loop {
            if cur >= n {
                let what = if chain.is_empty() {
                    format!("start cluster {cur} is outside the image ({n} clusters)")
                } else {
                    format!("chain leaves the image: next cluster {cur}")
                };
                self.add(
                    Severity::Error,
                    "bad-chain",
                    Some(node),
                    chain.last().copied().or(Some(cur)),
                    what,
                );
                break;
            }
            let v = fat[cur as usize];
            if v == FAT_FREE {
                self.add(
                    Severity::Error,
                    "free-in-chain",
                    Some(node),
                    Some(cur),
                    format!("chain reaches free cluster {cur}"),
                );
                break;
            }
            let o = self.owner[cur as usize];
            if o != NONE {
                if o == node {
                    self.add(
                        Severity::Error,
                        "loop",
                        Some(node),
                        Some(cur),
                        format!("chain loops back to cluster {cur}"),
                    );
                } else if self.nodes[o as usize].is_dir
                    && self.nodes[node as usize].is_dir
                    && self.is_ancestor(o, node)
                {
                    self.add(
                        Severity::Error,
                        "folder-cycle",
                        Some(node),
                        Some(cur),
                        format!("folder contains its own ancestor {}", self.path(o)),
                    );
                } else {
                    let other = self.path(o);
                    self.add(
                        Severity::Error,
                        "cross-link",
                        Some(node),
                        Some(cur),
                        format!("cluster {cur} also belongs to {other}"),
                    );
                }
                break;
            }
            self.owner[cur as usize] = node;
            chain.push(cur);
            if v == FAT_EOC {
                break;
            }
            cur = v;
        }
        chain
    }

    fn run(mut self) -> Report {
        let img = self.img;
        img.c.with_fat(|fat| self.run_with(fat));
        self.report
    }

    fn run_with(&mut self, fat: &[u32]) {
        let n = fat.len() as u64;
        // Every FAT value.
        let mut bad_values = 0u64;
        for (i, &v) in fat.iter().enumerate() {
            if v != FAT_FREE && v != FAT_EOC && v as u64 >= n {
                bad_values += 1;
                if bad_values <= 100 {
                    self.add(
                        Severity::Error,
                        "bad-fat-value",
                        None,
                        Some(i as u32),
                        format!(
                            "FAT[{i}] = {v:#x}, not free, end of chain, or a cluster below {n}"
                        ),
                    );
                }
            }
        }
        if bad_values > 100 {
            self.add(
                Severity::Error,
                "bad-fat-value",
                None,
                None,
                format!("{} more FAT values out of range", bad_values - 100),
            );
        }
        // The data file matches the FAT.
        let want = n * CLUSTER_SIZE as u64;
        if self.img.qfd_len < want {
            self.add(
                Severity::Error,
                "truncated-data",
                None,
                None,
                format!(
                    "data file holds {} bytes, the FAT needs {want}",
                    self.img.qfd_len
                ),
            );
        } else if self.img.qfd_len > want {
            self.add(
                Severity::Warning,
                "trailing-data",
                None,
                None,
                format!(
                    "data file holds {} bytes after the last cluster",
                    self.img.qfd_len - want
                ),
            );
        }

        // The tree, folder by folder, without recursion.
        let root_chain = self.claim(0, 0, fat);
        let mut todo: Vec<(u32, Vec<u32>)> = vec![(0, root_chain)];
        while let Some((dir, chain)) = todo.pop() {
            self.report.folders += 1;
            let mut found = Vec::new();
            if let Err(e) = self.img.scan(&chain, true, |f| found.push(f)) {
                self.add(Severity::Error, "io", Some(dir), None, e.to_string());
                continue;
            }
            let mut names: HashSet<String> = HashSet::new();
            for f in found {
                match f {
                    Found::BadProperty { slot, property } => self.add(
                        Severity::Error,
                        "bad-property",
                        Some(dir),
                        None,
                        format!(
                            "entry {slot}: property {property:#04x} is neither file nor folder"
                        ),
                    ),
                    Found::Orphan { slot, why } => self.add(
                        Severity::Warning,
                        "orphan-long-name",
                        Some(dir),
                        None,
                        format!("entry {slot}: {why}"),
                    ),
                    Found::AfterEnd { slot } => self.add(
                        Severity::Warning,
                        "entry-after-end",
                        Some(dir),
                        None,
                        format!("entry {slot} follows the end marker; readers never see it"),
                    ),
                    Found::Item(item) => self.item(dir, item, fat, &mut names, &mut todo),
                }
            }
        }

        // Lost clusters (counted, the first few named).
        let mut lost = 0u64;
        let mut first: Vec<String> = Vec::new();
        for (i, (&v, &o)) in fat.iter().zip(&self.owner).enumerate() {
            if v != FAT_FREE && o == NONE {
                lost += 1;
                if first.len() < 10 {
                    first.push(i.to_string());
                }
            }
        }
        if lost > 0 {
            self.add(
                Severity::Warning,
                "lost-clusters",
                None,
                first.first().and_then(|c| c.parse().ok()),
                format!(
                    "{lost} allocated clusters belong to no entry (first: {})",
                    first.join(", ")
                ),
            );
        }
    }

    fn item(
        &mut self,
        dir: u32,
        item: Item,
        fat: &[u32],
        names: &mut HashSet<String>,
        todo: &mut Vec<(u32, Vec<u32>)>,
    ) {
        let e = &item.entry;
        let node = self.nodes.len() as u32;
        self.nodes.push(Node {
            parent: dir,
            name: item.name.clone(),
            is_dir: item.is_dir(),
        });
        let short = e.name_bytes();
        match std::str::from_utf8(short) {
            Err(_) => self.add(
                Severity::Error,
                "bad-name",
                Some(node),
                None,
                "name is not valid UTF-8".into(),
            ),
            Ok(s) => {
                if let Some(why) = short_name_problem(short) {
                    self.add(
                        Severity::Error,
                        "bad-name",
                        Some(node),
                        None,
                        why.to_string(),
                    );
                }
                if !s.is_empty() && !names.insert(fold(s)) {
                    self.add(
                        Severity::Error,
                        "duplicate-name",
                        Some(node),
                        None,
                        format!("another entry of this folder is named {s:?} (ignoring case)"),
                    );
                }
            }
        }
        if e.name_padding_dirty() {
            self.add(
                Severity::Warning,
                "bad-name",
                Some(node),
                None,
                "bytes after the name's NUL padding".into(),
            );
        }
        if e.start < 0 {
            self.add(
                Severity::Error,
                "bad-chain",
                Some(node),
                None,
                format!("negative start cluster {}", e.start),
            );
            return;
        }
        if e.start == 0 {
            let kind = if item.is_dir() {
                "folder-cycle"
            } else {
                "cross-link"
            };
            self.add(
                Severity::Error,
                kind,
                Some(node),
                Some(0),
                "entry starts at cluster 0, the root folder".into(),
            );
            return;
        }
        let chain = self.claim(node, e.start as u32, fat);
        if item.is_dir() {
            if e.size != 0 {
                self.add(
                    Severity::Warning,
                    "folder-size",
                    Some(node),
                    None,
                    format!("folder entry has size {}", e.size),
                );
            }
            if !chain.is_empty() {
                todo.push((node, chain));
            }
            return;
        }
        self.report.files += 1;
        if e.size < 0 {
            self.add(
                Severity::Error,
                "bad-size",
                Some(node),
                None,
                format!("negative size {}", e.size),
            );
            return;
        }
        self.report.bytes += e.size as u64;
        let need = (e.size as u64).div_ceil(CLUSTER_SIZE as u64).max(1);
        let have = chain.len() as u64;
        // A chain cut short by a fault was reported when it was claimed.
        let whole = have > 0 && fat[*chain.last().unwrap() as usize] == FAT_EOC;
        if have < need && whole {
            self.add(
                Severity::Error,
                "short-chain",
                Some(node),
                Some(e.start as u32),
                format!(
                    "size {} needs {need} clusters, the chain has {have}",
                    e.size
                ),
            );
        } else if have > need && whole {
            self.add(
                Severity::Warning,
                "long-chain",
                Some(node),
                Some(e.start as u32),
                format!(
                    "size {} needs {need} clusters, the chain has {have}",
                    e.size
                ),
            );
        }
    }
}
