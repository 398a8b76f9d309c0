//! Namespace mode: one random sequence of namespace operations runs side
//! by side in DIR (the mount) and REFDIR (a kernel tmpfs); every return
//! value, errno and returned byte is compared, and every few hundred ops
//! both whole trees are compared (names, types, sizes, perm bits, nlink,
//! content hashes, symlink targets, user.* xattrs, mtimes set by utimensat).

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Opts {
    pub dir: PathBuf,
    pub refdir: PathBuf,
    pub seed: u64,
    pub ops: Option<u64>,
    pub seconds: Option<u64>,
    pub log: Option<PathBuf>,
    pub tree_every: u64,
    pub allow_unsupported: bool,
}

/// Errno pairs (mount, reference) that Linux filesystems legitimately
/// differ on, per op kind. Anything not here is a failure.
const ALLOW: &[(&str, i32, i32, &str)] = &[
    // POSIX lets rename onto / rmdir of a non-empty directory answer
    // EEXIST or ENOTEMPTY.
    (
        "rename",
        libc::EEXIST,
        libc::ENOTEMPTY,
        "POSIX: EEXIST or ENOTEMPTY",
    ),
    (
        "rmdir",
        libc::EEXIST,
        libc::ENOTEMPTY,
        "POSIX: EEXIST or ENOTEMPTY",
    ),
];

/// utimensat sets times in 2001..2004: an mtime in that range can only
/// come from utimensat, so it is compared exactly, and a later change that
/// should have moved it shows as a difference.
const SENTINEL_LO: i64 = 1_000_000_000;
const SENTINEL_HI: i64 = 1_100_000_000;

fn pool() -> Vec<Vec<u8>> {
    vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"c d".to_vec(),
        b"new\nline".to_vec(),
        "\u{fc}n\u{ef}-\u{65e5}\u{672c}".as_bytes().to_vec(),
        b"\x80\xff\xfe raw".to_vec(),
        vec![b'L'; 255],
        b".h".to_vec(),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    CreateExcl(Vec<u8>, u32),
    Create(Vec<u8>, u32),
    OpenTrunc(Vec<u8>),
    Mkdir(Vec<u8>, u32),
    Rmdir(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>, u32),
    Link(Vec<u8>, Vec<u8>),
    Unlink(Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
    Readlink(Vec<u8>),
    Chmod(Vec<u8>, u32),
    Utimens(Vec<u8>, (i64, i64), (i64, i64), bool),
    Truncate(Vec<u8>, i64),
    Write(Vec<u8>, i64, Vec<u8>, bool),
    Read(Vec<u8>),
    Stat(Vec<u8>),
    Readdir(Vec<u8>),
    SetX(Vec<u8>, String, Vec<u8>, i32, bool),
    GetX(Vec<u8>, String, usize),
    RemoveX(Vec<u8>, String),
    ListX(Vec<u8>, bool),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::CreateExcl(..) => "create_excl",
            Op::Create(..) => "create",
            Op::OpenTrunc(..) => "open_trunc",
            Op::Mkdir(..) => "mkdir",
            Op::Rmdir(..) => "rmdir",
            Op::Rename(_, _, 0) => "rename",
            Op::Rename(_, _, 1) => "rename_noreplace",
            Op::Rename(..) => "rename_exchange",
            Op::Link(..) => "link",
            Op::Unlink(..) => "unlink",
            Op::Symlink(..) => "symlink",
            Op::Readlink(..) => "readlink",
            Op::Chmod(..) => "chmod",
            Op::Utimens(..) => "utimensat",
            Op::Truncate(..) => "truncate",
            Op::Write(..) => "write",
            Op::Read(..) => "read",
            Op::Stat(..) => "lstat",
            Op::Readdir(..) => "readdir",
            Op::SetX(..) => "setxattr",
            Op::GetX(..) => "getxattr",
            Op::RemoveX(..) => "removexattr",
            Op::ListX(..) => "listxattr",
        }
    }

    fn describe(&self) -> String {
        match self {
            Op::CreateExcl(p, m) => format!("open {} O_CREAT|O_EXCL {m:o}", q(p)),
            Op::Create(p, m) => format!("open {} O_CREAT {m:o}", q(p)),
            Op::OpenTrunc(p) => format!("open {} O_WRONLY|O_TRUNC", q(p)),
            Op::Mkdir(p, m) => format!("mkdir {} {m:o}", q(p)),
            Op::Rmdir(p) => format!("rmdir {}", q(p)),
            Op::Rename(a, b, f) => format!("renameat2 {} {} flags={f}", q(a), q(b)),
            Op::Link(a, b) => format!("link {} {}", q(a), q(b)),
            Op::Unlink(p) => format!("unlink {}", q(p)),
            Op::Symlink(t, p) => format!("symlink target={} {}", q(t), q(p)),
            Op::Readlink(p) => format!("readlink {}", q(p)),
            Op::Chmod(p, m) => format!("chmod {} {m:o}", q(p)),
            Op::Utimens(p, a, m, nf) => {
                format!(
                    "utimensat {} atime={}.{:09} mtime={}.{:09} nofollow={nf}",
                    q(p),
                    a.0,
                    a.1,
                    m.0,
                    m.1
                )
            }
            Op::Truncate(p, n) => format!("truncate {} {n}", q(p)),
            Op::Write(p, off, d, app) => {
                format!("write {} off={off} len={} append={app}", q(p), d.len())
            }
            Op::Read(p) => format!("read {}", q(p)),
            Op::Stat(p) => format!("lstat {}", q(p)),
            Op::Readdir(p) => format!("readdir {}", q(p)),
            Op::SetX(p, n, v, f, l) => {
                format!(
                    "{}setxattr {} {n} len={} flags={f}",
                    if *l { "l" } else { "" },
                    q(p),
                    v.len()
                )
            }
            Op::GetX(p, n, s) => format!("getxattr {} {n} bufsize={s}", q(p)),
            Op::RemoveX(p, n) => format!("removexattr {} {n}", q(p)),
            Op::ListX(p, l) => format!("{}listxattr {}", if *l { "l" } else { "" }, q(p)),
        }
    }
}

/// What one side answered: return value (or -1), errno, returned bytes.
#[derive(PartialEq, Eq, Clone, Debug)]
struct Out {
    ret: i64,
    err: i32,
    data: Vec<u8>,
}

impl Out {
    fn show(&self) -> String {
        if self.err != 0 {
            format!("-1 {}", ename(self.err))
        } else if self.data.is_empty() {
            format!("{}", self.ret)
        } else {
            format!("{} data={}", self.ret, q(&self.data))
        }
    }
}

fn join(root: &Path, rel: &[u8]) -> std::ffi::CString {
    let mut v = root.as_os_str().as_bytes().to_vec();
    v.push(b'/');
    v.extend_from_slice(rel);
    cstr(&v)
}

fn res(r: i64) -> Out {
    if r < 0 {
        Out {
            ret: -1,
            err: errno(),
            data: Vec::new(),
        }
    } else {
        Out {
            ret: r,
            err: 0,
            data: Vec::new(),
        }
    }
}

fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "reg",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "lnk",
        _ => "other",
    }
}

fn apply(root: &Path, op: &Op) -> Out {
    // SAFETY: (the whole function) plain system calls on valid C strings
    // and buffers we own; fds are closed before returning. Raw libc on
    // purpose: the exerciser passes the kernel exactly the arguments an op
    // names (invalid ones included) and compares errnos.
    unsafe {
        match op {
            Op::CreateExcl(p, m) | Op::Create(p, m) => {
                let excl = if matches!(op, Op::CreateExcl(..)) {
                    libc::O_EXCL
                } else {
                    0
                };
                let fd = libc::open(
                    join(root, p).as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | excl,
                    *m,
                );
                let o = res(fd as i64);
                if fd >= 0 {
                    libc::close(fd);
                    return Out { ret: 0, ..o };
                }
                o
            }
            Op::OpenTrunc(p) => {
                let fd = libc::open(join(root, p).as_ptr(), libc::O_WRONLY | libc::O_TRUNC);
                let o = res(fd as i64);
                if fd >= 0 {
                    libc::close(fd);
                    return Out { ret: 0, ..o };
                }
                o
            }
            Op::Mkdir(p, m) => res(libc::mkdir(join(root, p).as_ptr(), *m) as i64),
            Op::Rmdir(p) => res(libc::rmdir(join(root, p).as_ptr()) as i64),
            Op::Rename(a, b, f) => res(libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                join(root, a).as_ptr(),
                libc::AT_FDCWD,
                join(root, b).as_ptr(),
                *f,
            )),
            Op::Link(a, b) => {
                res(libc::link(join(root, a).as_ptr(), join(root, b).as_ptr()) as i64)
            }
            Op::Unlink(p) => res(libc::unlink(join(root, p).as_ptr()) as i64),
            Op::Symlink(t, p) => {
                res(libc::symlink(cstr(t).as_ptr(), join(root, p).as_ptr()) as i64)
            }
            Op::Readlink(p) => {
                let mut buf = vec![0u8; 8192];
                let r = libc::readlink(join(root, p).as_ptr(), buf.as_mut_ptr().cast(), buf.len());
                let mut o = res(r as i64);
                if r >= 0 {
                    buf.truncate(r as usize);
                    o.data = buf;
                }
                o
            }
            Op::Chmod(p, m) => res(libc::chmod(join(root, p).as_ptr(), *m) as i64),
            Op::Utimens(p, a, m, nf) => {
                let ts = [
                    libc::timespec {
                        tv_sec: a.0,
                        tv_nsec: a.1,
                    },
                    libc::timespec {
                        tv_sec: m.0,
                        tv_nsec: m.1,
                    },
                ];
                let fl = if *nf { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
                res(libc::utimensat(libc::AT_FDCWD, join(root, p).as_ptr(), ts.as_ptr(), fl) as i64)
            }
            Op::Truncate(p, n) => {
                let c = join(root, p);
                let mut st: libc::stat = std::mem::zeroed();
                let before = (libc::stat(c.as_ptr(), &mut st) == 0).then_some(st.st_size);
                let o = res(libc::truncate(c.as_ptr(), *n) as i64);
                if o.ret == 0 && before == Some(*n) {
                    // Local filesystems disagree on the times of a truncate
                    // to the current size (ext4 always sets them, tmpfs not
                    // for an empty file, POSIX only on a change); queryfs
                    // sets them. Both sides touch the file so that the
                    // comparison goes on from the same state.
                    libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0);
                }
                o
            }
            Op::Write(p, off, d, app) => {
                let fl = libc::O_WRONLY | if *app { libc::O_APPEND } else { 0 };
                let fd = libc::open(join(root, p).as_ptr(), fl);
                if fd < 0 {
                    return res(-1);
                }
                let r = if *app {
                    libc::write(fd, d.as_ptr().cast(), d.len())
                } else {
                    libc::pwrite(fd, d.as_ptr().cast(), d.len(), *off)
                };
                let o = res(r as i64);
                let c = libc::close(fd);
                if o.err == 0 && c != 0 {
                    return res(-1);
                }
                o
            }
            Op::Read(p) => {
                let fd = libc::open(join(root, p).as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    return res(-1);
                }
                let mut data = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let r = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if r < 0 {
                        let o = res(-1);
                        libc::close(fd);
                        return o;
                    }
                    if r == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..r as usize]);
                }
                libc::close(fd);
                Out {
                    ret: data.len() as i64,
                    err: 0,
                    data: blake3::hash(&data).as_bytes().to_vec(),
                }
            }
            Op::Stat(p) => {
                let mut st: libc::stat = std::mem::zeroed();
                let r = libc::lstat(join(root, p).as_ptr(), &mut st);
                let mut o = res(r as i64);
                if r == 0 {
                    let k = kind_of(st.st_mode);
                    let size = if k == "reg" || k == "lnk" {
                        st.st_size
                    } else {
                        0
                    };
                    o.data = format!(
                        "{k} {:o} nlink={} size={size}",
                        st.st_mode & 0o7777,
                        st.st_nlink
                    )
                    .into_bytes();
                }
                o
            }
            Op::Readdir(p) => {
                match std::fs::read_dir(std::ffi::OsStr::from_bytes(join(root, p).as_bytes())) {
                    Ok(rd) => {
                        let mut names: Vec<Vec<u8>> = Vec::new();
                        for e in rd {
                            match e {
                                Ok(e) => names.push(e.file_name().as_bytes().to_vec()),
                                Err(e) => {
                                    return Out {
                                        ret: -1,
                                        err: e.raw_os_error().unwrap_or(0),
                                        data: vec![],
                                    }
                                }
                            }
                        }
                        names.sort();
                        Out {
                            ret: names.len() as i64,
                            err: 0,
                            data: names.join(&b'/'),
                        }
                    }
                    Err(e) => Out {
                        ret: -1,
                        err: e.raw_os_error().unwrap_or(0),
                        data: vec![],
                    },
                }
            }
            Op::SetX(p, n, v, f, l) => {
                let n = cstr(n.as_bytes());
                let c = join(root, p);
                let r = if *l {
                    libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), *f)
                } else {
                    libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), *f)
                };
                res(r as i64)
            }
            Op::GetX(p, n, s) => {
                let n = cstr(n.as_bytes());
                let mut buf = vec![0u8; *s];
                let ptr = if *s == 0 {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                };
                let r = libc::getxattr(join(root, p).as_ptr(), n.as_ptr(), ptr, *s);
                let mut o = res(r as i64);
                if r > 0 && *s > 0 {
                    buf.truncate(r as usize);
                    o.data = buf;
                }
                o
            }
            Op::RemoveX(p, n) => {
                let n = cstr(n.as_bytes());
                res(libc::removexattr(join(root, p).as_ptr(), n.as_ptr()) as i64)
            }
            Op::ListX(p, l) => {
                let mut buf = vec![0u8; 65536];
                let c = join(root, p);
                let r = if *l {
                    libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                } else {
                    libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                };
                let mut o = res(r as i64);
                if r >= 0 {
                    buf.truncate(r as usize);
                    let mut names: Vec<&[u8]> =
                        buf.split(|&b| b == 0).filter(|s| !s.is_empty()).collect();
                    names.sort();
                    o.data = names.join(&b' ');
                }
                o
            }
        }
    }
}

struct Gen {
    rng: StdRng,
    pool: Vec<Vec<u8>>,
}

impl Gen {
    fn name(&mut self) -> Vec<u8> {
        if self.rng.random_bool(0.01) {
            return vec![b'N'; 256];
        }
        let i = self.rng.random_range(0..self.pool.len());
        self.pool[i].clone()
    }

    /// A path of 1..=3 names; the first names mostly short, so the tree
    /// gets depth rather than only width.
    fn path(&mut self) -> Vec<u8> {
        let depth = match self.rng.random_range(0..10) {
            0..5 => 1,
            5..8 => 2,
            _ => 3,
        };
        let mut p = Vec::new();
        for i in 0..depth {
            if i > 0 {
                p.push(b'/');
            }
            if i + 1 < depth && self.rng.random_bool(0.7) {
                p.extend_from_slice([b"a".as_slice(), b"b", b"c d"][self.rng.random_range(0..3)]);
            } else {
                p.extend(self.name());
            }
        }
        p
    }

    /// A symlink target that never leaves the tree (no "..", not absolute):
    /// ops that follow symlinks must not touch anything outside.
    fn target(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..10) {
            0 => b"nowhere".to_vec(),
            1 => vec![b'z'; 1000],
            2 => b".".to_vec(),
            3..6 => self.name(),
            _ => {
                let mut t = self.name();
                t.push(b'/');
                t.extend(self.name());
                t
            }
        }
    }

    fn mode(&mut self) -> u32 {
        [
            0o644, 0o600, 0o755, 0o000, 0o4755, 0o2755, 0o1777, 0o444, 0o777, 0o640,
        ][self.rng.random_range(0..10)]
    }

    fn time(&mut self) -> (i64, i64) {
        (
            self.rng.random_range(SENTINEL_LO..SENTINEL_HI),
            self.rng.random_range(0..1_000_000_000),
        )
    }

    fn xname(&mut self) -> String {
        [
            "user.x0",
            "user.x1",
            "user.xattr-with-a-longer-name.and.dots",
            "user.x\u{e9}",
        ][self.rng.random_range(0..4)]
        .to_string()
    }

    fn xvalue(&mut self) -> Vec<u8> {
        let n = match self.rng.random_range(0..10) {
            0 => 0,
            1 => 4000,
            _ => self.rng.random_range(1..64),
        };
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v[..]);
        v
    }

    fn op(&mut self) -> Op {
        match self.rng.random_range(0..100) {
            0..8 => Op::CreateExcl(self.path(), self.mode() & 0o777),
            8..13 => Op::Create(self.path(), self.mode() & 0o777),
            13..15 => Op::OpenTrunc(self.path()),
            15..25 => Op::Mkdir(
                self.path(),
                [0o755, 0o700, 0o777, 0o1777][self.rng.random_range(0..4)],
            ),
            25..30 => Op::Rmdir(self.path()),
            30..36 => Op::Rename(self.path(), self.path(), 0),
            36..39 => Op::Rename(self.path(), self.path(), 1),
            39..42 => Op::Rename(self.path(), self.path(), 2),
            42..46 => Op::Link(self.path(), self.path()),
            46..51 => Op::Unlink(self.path()),
            51..55 => Op::Symlink(self.target(), self.path()),
            55..57 => Op::Readlink(self.path()),
            57..60 => Op::Chmod(self.path(), self.mode()),
            60..63 => {
                let (a, m) = (self.time(), self.time());
                let nf = self.rng.random_bool(0.3);
                Op::Utimens(self.path(), a, m, nf)
            }
            63..66 => Op::Truncate(
                self.path(),
                [0, 1, 100, 4096, 70000][self.rng.random_range(0..5)],
            ),
            66..74 => {
                let n = self.rng.random_range(1..4096);
                let mut d = vec![0u8; n];
                self.rng.fill(&mut d[..]);
                let off = self.rng.random_range(0..8192);
                let app = self.rng.random_bool(0.3);
                Op::Write(self.path(), off, d, app)
            }
            74..78 => Op::Read(self.path()),
            78..83 => Op::Stat(self.path()),
            83..86 => Op::Readdir(if self.rng.random_bool(0.2) {
                b".".to_vec()
            } else {
                self.path()
            }),
            86..92 => {
                let fl =
                    [0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE][self.rng.random_range(0..4)];
                let l = self.rng.random_bool(0.15);
                Op::SetX(self.path(), self.xname(), self.xvalue(), fl, l)
            }
            92..95 => Op::GetX(
                self.path(),
                self.xname(),
                [0, 8, 65536][self.rng.random_range(0..3)],
            ),
            95..97 => Op::RemoveX(self.path(), self.xname()),
            _ => Op::ListX(self.path(), self.rng.random_bool(0.3)),
        }
    }
}

/// Everything compared about one entry of a tree.
#[derive(PartialEq, Eq, Debug)]
struct Entry {
    kind: &'static str,
    perm: u32,
    nlink: u64,
    size: i64,
    hash: String,
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    mtime: Option<(i64, i64)>,
}

/// (name, value) pairs of a file's xattrs.
type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

fn xattrs_of(p: &std::ffi::CStr) -> Result<XattrList, String> {
    let mut buf = vec![0u8; 65536];
    let r = rustix::fs::llistxattr(p, &mut buf[..])
        .map_err(|e| format!("llistxattr: {}", ename(e.raw_os_error())))?;
    buf.truncate(r);
    let mut out = Vec::new();
    for n in buf.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if !n.starts_with(b"user.") {
            continue;
        }
        let cn = cstr(n);
        let mut v = vec![0u8; 65536];
        let r = rustix::fs::lgetxattr(p, cn.as_c_str(), &mut v[..])
            .map_err(|e| format!("lgetxattr {}: {}", q(n), ename(e.raw_os_error())))?;
        v.truncate(r);
        out.push((n.to_vec(), v));
    }
    out.sort();
    Ok(out)
}

fn root_entry(root: &Path) -> Result<Entry, String> {
    let c = cpath(root);
    let st = rustix::fs::lstat(c.as_c_str())
        .map_err(|e| format!("lstat of the root: {}", ename(e.raw_os_error())))?;
    entry_of(&st, &c)
}

/// What the tree comparison records of one lstat'ed path (size, content and
/// target are filled in by the caller for files and symlinks).
fn entry_of(st: &rustix::fs::Stat, c: &std::ffi::CStr) -> Result<Entry, String> {
    let kind = kind_of(st.st_mode);
    let nsec = i64::try_from(st.st_mtime_nsec).map_err(|_| "st_mtime_nsec out of range")?;
    Ok(Entry {
        kind,
        perm: st.st_mode & 0o7777,
        nlink: st.st_nlink,
        size: if kind == "reg" { st.st_size } else { 0 },
        hash: String::new(),
        target: Vec::new(),
        xattrs: xattrs_of(c)?,
        mtime: if (SENTINEL_LO..SENTINEL_HI).contains(&st.st_mtime) {
            Some((st.st_mtime, nsec))
        } else {
            None
        },
    })
}

fn walk(root: &Path, rel: &[u8], out: &mut BTreeMap<Vec<u8>, Entry>) -> Result<(), String> {
    if rel.is_empty() {
        out.insert(b"(root)".to_vec(), root_entry(root)?);
    }
    let dir = join(root, rel);
    let rd = std::fs::read_dir(std::ffi::OsStr::from_bytes(dir.as_bytes()))
        .map_err(|e| format!("readdir {}: {e}", q(rel)))?;
    for e in rd {
        let e = e.map_err(|e| format!("readdir {}: {e}", q(rel)))?;
        let name = e.file_name().as_bytes().to_vec();
        let mut r = rel.to_vec();
        if !r.is_empty() {
            r.push(b'/');
        }
        r.extend_from_slice(&name);
        let c = join(root, &r);
        let st = rustix::fs::lstat(c.as_c_str()).map_err(|e| {
            format!(
                "lstat {} (listed by readdir): {}",
                q(&r),
                ename(e.raw_os_error())
            )
        })?;
        let mut ent = entry_of(&st, &c)?;
        match ent.kind {
            "reg" => {
                let data = std::fs::read(std::ffi::OsStr::from_bytes(c.as_bytes()))
                    .map_err(|e| format!("reading {}: {e}", q(&r)))?;
                ent.hash = blake3::hash(&data).to_hex().to_string();
                if data.len() as i64 != st.st_size {
                    return Err(format!(
                        "{}: read {} bytes, st_size {}",
                        q(&r),
                        data.len(),
                        st.st_size
                    ));
                }
            }
            "lnk" => {
                ent.target = std::fs::read_link(std::ffi::OsStr::from_bytes(c.as_bytes()))
                    .map_err(|e| format!("readlink {}: {e}", q(&r)))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
            }
            _ => {}
        }
        let is_dir = ent.kind == "dir";
        out.insert(r.clone(), ent);
        if is_dir {
            walk(root, &r, out)?;
        }
    }
    Ok(())
}

/// The fields two entries differ in, mount first.
fn entry_diff(w: &Entry, v: &Entry) -> String {
    let mut d = Vec::new();
    if w.kind != v.kind {
        d.push(format!("type {} / {}", w.kind, v.kind));
    }
    if w.perm != v.perm {
        d.push(format!("perm {:o} / {:o}", w.perm, v.perm));
    }
    if w.nlink != v.nlink {
        d.push(format!("nlink {} / {}", w.nlink, v.nlink));
    }
    if w.size != v.size {
        d.push(format!("size {} / {}", w.size, v.size));
    }
    if w.hash != v.hash {
        d.push(format!(
            "content {} / {}",
            &w.hash[..w.hash.len().min(16)],
            &v.hash[..v.hash.len().min(16)]
        ));
    }
    if w.target != v.target {
        d.push(format!(
            "symlink target {} / {}",
            q(&w.target),
            q(&v.target)
        ));
    }
    if w.xattrs != v.xattrs {
        let show = |x: &Vec<(Vec<u8>, Vec<u8>)>| {
            x.iter()
                .map(|(n, val)| format!("{}={}", q(n), q(val)))
                .collect::<Vec<_>>()
                .join(",")
        };
        d.push(format!(
            "xattrs [{}] / [{}]",
            show(&w.xattrs),
            show(&v.xattrs)
        ));
    }
    if w.mtime != v.mtime {
        d.push(format!(
            "mtime set by utimensat {:?} / {:?}",
            w.mtime, v.mtime
        ));
    }
    format!("(mount / reference) {}", d.join("; "))
}

fn compare_trees(a: &Path, b: &Path) -> Result<usize, String> {
    let mut ta = BTreeMap::new();
    let mut tb = BTreeMap::new();
    walk(a, b"", &mut ta).map_err(|e| format!("mount tree: {e}"))?;
    walk(b, b"", &mut tb).map_err(|e| format!("reference tree: {e}"))?;
    for (k, v) in &tb {
        match ta.get(k) {
            None => {
                return Err(format!(
                    "tree: {} missing on the mount (reference: {v:?})",
                    q(k)
                ))
            }
            Some(w) if w != v => {
                return Err(format!("tree: {} differs: {}", q(k), entry_diff(w, v)))
            }
            _ => {}
        }
    }
    for (k, v) in &ta {
        if !tb.contains_key(k) {
            return Err(format!("tree: {} exists on the mount only: {v:?}", q(k)));
        }
    }
    Ok(ta.len())
}

fn clear(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        // Make everything removable first (dirs with mode 0 are fine for
        // root, but be safe).
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

pub fn run(o: &Opts) -> i32 {
    for d in [&o.dir, &o.refdir] {
        if let Err(e) = clear(d) {
            eprintln!("qfs-exercise ns: cannot empty {}: {e}", d.display());
            return 2;
        }
        // The roots themselves are reachable through symlinks to "." (and
        // compared): same mode, no user.* xattrs on both sides.
        let c = cpath(d);
        let _ = rustix::fs::chmod(c.as_c_str(), rustix::fs::Mode::from_raw_mode(0o755));
        if let Ok(xs) = xattrs_of(&c) {
            for (n, _) in xs {
                let _ = rustix::fs::removexattr(c.as_c_str(), cstr(&n).as_c_str());
            }
        }
    }
    // umask(0): modes are what the ops ask for on both sides.
    rustix::process::umask(rustix::fs::Mode::empty());
    let header = serde_json::json!({
        "mode": "ns", "seed": o.seed, "ops": o.ops, "seconds": o.seconds,
        "tree_every": o.tree_every,
    })
    .to_string();
    let mut log = OpLog::new(o.log.as_deref(), &header);
    let mut counts = Counts::default();
    let mut g = Gen {
        rng: StdRng::seed_from_u64(o.seed),
        pool: pool(),
    };
    let mut allowed: BTreeMap<String, u64> = BTreeMap::new();
    let start = std::time::Instant::now();
    let mut trees = 0u64;
    let mut entries = 0usize;
    let mut result: R<()> = Ok(());
    loop {
        if o.ops.is_some_and(|n| log.n >= n)
            || o.seconds.is_some_and(|s| start.elapsed().as_secs() >= s)
        {
            break;
        }
        let op = g.op();
        log.op(op.describe());
        let a = apply(&o.dir, &op);
        let b = apply(&o.refdir, &op);
        if a != b {
            let k = op.kind();
            let base = k.split('_').next().unwrap();
            let ok = a.data == b.data
                && ALLOW
                    .iter()
                    .any(|&(ak, ea, eb, _)| ak == base && ea == a.err && eb == b.err);
            if ok {
                *allowed
                    .entry(format!("{k}:{}/{}", ename(a.err), ename(b.err)))
                    .or_default() += 1;
            } else {
                result = Err(format!(
                    "{}: mount answered {}, reference answered {}",
                    op.describe(),
                    a.show(),
                    b.show()
                ));
                break;
            }
        }
        log.note(format!("         -> {}", b.show()));
        counts.done(op.kind());
        if o.tree_every > 0 && log.n % o.tree_every == 0 {
            match compare_trees(&o.dir, &o.refdir) {
                Ok(n) => {
                    trees += 1;
                    entries = entries.max(n);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if result.is_ok() {
        log.note("         final tree comparison".into());
        match compare_trees(&o.dir, &o.refdir) {
            Ok(n) => {
                trees += 1;
                entries = entries.max(n);
            }
            Err(e) => result = Err(e),
        }
    }
    let _ = o.allow_unsupported;
    let secs = start.elapsed().as_secs_f64();
    let ops = log.n;
    let extra = format!(
        " | tree comparisons={trees} max entries={entries}{}",
        if allowed.is_empty() {
            String::new()
        } else {
            format!(" allowed differences: {allowed:?}")
        }
    );
    match result {
        Ok(()) => {
            log.finish(&format!("end ops={ops}"));
            println!(
                "qfs-exercise ns: PASS seed={} ops={ops} in {secs:.1}s:{}{extra}",
                o.seed,
                counts.summary()
            );
            0
        }
        Err(msg) => {
            log.finish(&format!("fail op={ops}"));
            eprintln!("---- last {TAIL} ops ----\n{}", log.tail());
            eprintln!(
                "qfs-exercise ns: FAIL seed={} at op {ops}: {msg}\nreplay: qfs-exercise ns --seed {} --ops {ops} --tree-every {} --ref REFDIR DIR",
                o.seed, o.seed, o.tree_every
            );
            println!(
                "qfs-exercise ns: FAIL seed={} ops={ops} in {secs:.1}s:{}{extra}",
                o.seed,
                counts.summary()
            );
            1
        }
    }
}
