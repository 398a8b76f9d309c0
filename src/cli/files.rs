//! Offline file commands: `put`, `get`, `ls`, `cat`, `mkdir`, `rm`, `mv`, `stat`.
//!
//! They drive the same filesystem core as the mount, so a file put here is
//! exactly what a copy through the mount would make.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use queryfs::error::FsError;
use queryfs::names::bytes_json;
use queryfs::store::{self, Access, Store};
use queryfs::types::{Attr, FileKind};
use queryfs::vfs::{Caller, Fs, SetAttr, SetTime, ROOT};
use serde::Serialize;

use super::live::{self, Target};
use super::{each, json_line, progress_bar, Outcome};

const IO_SIZE: usize = 1 << 20;

fn open_read(dir: &Path) -> Result<Store> {
    Ok(store::open(dir, Access::Read, false)?)
}

/// A store path's bytes (names are bytes; they need not be UTF-8).
pub(super) fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// A store path for messages (bytes that are not UTF-8 shown escaped).
pub(super) fn show(p: &[u8]) -> String {
    Path::new(OsStr::from_bytes(p)).display().to_string()
}

/// Splits a store path into its parent and last name.
fn split(path: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let end = path.iter().rposition(|&c| c != b'/').map_or(0, |i| i + 1);
    let trimmed = &path[..end];
    let (parent, name): (&[u8], &[u8]) = match trimmed.iter().rposition(|&c| c == b'/') {
        Some(i) => (if i == 0 { b"/" } else { &trimmed[..i] }, &trimmed[i + 1..]),
        None => (b"/", trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        bail!("{:?} does not name an entry", show(path));
    }
    Ok((parent.to_vec(), name.to_vec()))
}

pub(super) fn resolve(fs: &Fs, path: &[u8]) -> Result<Attr> {
    fs.resolve_bytes(path)
        .map_err(|e| anyhow!("{}: {e}", show(path)))
}

fn mode_string(i: &Attr) -> String {
    let mut s = String::from(i.kind.letter());
    for shift in [6, 3, 0] {
        let b = (i.perm >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

// ----- put -----

#[derive(clap::Args)]
pub struct PutArgs {
    /// Files or directories on disk, then the destination in the store.
    #[arg(num_args = 2.., required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

struct Putter<'a> {
    fs: &'a Fs,
    bar: ProgressBar,
    /// (dev, ino) on disk -> inode in the store, to keep hard links.
    links: HashMap<(u64, u64), u64>,
    buf: Vec<u8>,
}

fn disk_bytes(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| disk_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

impl Putter<'_> {
    fn put(&mut self, src: &Path, parent: u64, name: &[u8]) -> Result<()> {
        let md = fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
        let who = Caller {
            uid: md.uid(),
            gid: md.gid(),
        };
        let existing = match self.fs.lookup(parent, name) {
            Ok(i) => Some(i),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let ft = md.file_type();
        if ft.is_dir() {
            let d = match existing {
                Some(i) if i.is_dir() => i,
                Some(_) => bail!(
                    "{}: a non-directory of that name is in the store",
                    src.display()
                ),
                None => self.fs.mkdir(parent, name, md.mode() & 0o7777, who)?,
            };
            let mut entries: Vec<_> = fs::read_dir(src)
                .with_context(|| format!("{}", src.display()))?
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("{}", src.display()))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let n = e.file_name();
                self.put(&e.path(), d.ino, n.as_encoded_bytes())?;
            }
            self.finish(d.ino, src, &md)?;
            return Ok(());
        }
        if let Some(i) = &existing {
            if i.is_dir() {
                bail!(
                    "{}: a directory of that name is in the store",
                    src.display()
                );
            }
        }
        if md.nlink() > 1 && !ft.is_dir() {
            if let Some(&target) = self.links.get(&(md.dev(), md.ino())) {
                if existing.is_some() {
                    self.fs.unlink(parent, name)?;
                }
                self.fs.link(target, parent, name)?;
                return Ok(());
            }
        }
        let ino = if ft.is_file() {
            let (ino, fh) = match existing {
                Some(i) if i.kind == FileKind::File => {
                    self.fs.setattr(
                        i.ino,
                        &SetAttr {
                            size: Some(0),
                            ..Default::default()
                        },
                    )?;
                    (i.ino, self.fs.open(i.ino)?)
                }
                Some(_) => {
                    self.fs.unlink(parent, name)?;
                    let (i, fh) = self.fs.create(parent, name, md.mode() & 0o7777, who)?;
                    (i.ino, fh)
                }
                None => {
                    let (i, fh) = self.fs.create(parent, name, md.mode() & 0o7777, who)?;
                    (i.ino, fh)
                }
            };
            let r = self.copy_in(src, fh);
            let rel = self.fs.release(fh);
            r?;
            rel?;
            ino
        } else {
            if existing.is_some() {
                self.fs.unlink(parent, name)?;
            }
            if ft.is_symlink() {
                let t = fs::read_link(src).with_context(|| format!("{}", src.display()))?;
                self.fs
                    .symlink(parent, name, t.as_os_str().as_encoded_bytes(), who)?
                    .ino
            } else if ft.is_fifo() || ft.is_socket() || ft.is_char_device() || ft.is_block_device()
            {
                self.fs
                    .mknod(parent, name, md.mode(), md.rdev() as u32, who)?
                    .ino
            } else {
                bail!("{}: unsupported file type", src.display());
            }
        };
        if md.nlink() > 1 {
            self.links.insert((md.dev(), md.ino()), ino);
        }
        if !ft.is_symlink() {
            self.finish(ino, src, &md)?;
        }
        Ok(())
    }

    fn copy_in(&mut self, src: &Path, fh: u64) -> Result<()> {
        let mut f = File::open(src).with_context(|| format!("{}", src.display()))?;
        let mut off = 0u64;
        loop {
            let n = f
                .read(&mut self.buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            self.fs
                .write(fh, off, &self.buf[..n])
                .map_err(|e| anyhow!("writing {} into the store: {e}", src.display()))?;
            off += n as u64;
            self.bar.inc(n as u64);
        }
        self.fs
            .flush(fh)
            .map_err(|e| anyhow!("committing {}: {e}", src.display()))?;
        Ok(())
    }

    fn finish(&self, ino: u64, src: &Path, md: &fs::Metadata) -> Result<()> {
        // user.* xattrs (user.tags and user.tag.* become tags).
        for (name, value) in disk_xattrs(src)? {
            self.fs.setxattr(ino, &name, &value, 0).map_err(|e| {
                anyhow!(
                    "{}: xattr {}: {e}",
                    src.display(),
                    String::from_utf8_lossy(&name)
                )
            })?;
        }
        self.fs.setattr(
            ino,
            &SetAttr {
                mode: Some(md.mode() & 0o7777),
                uid: Some(md.uid()),
                gid: Some(md.gid()),
                atime: Some(SetTime::At(md.atime() * 1_000_000_000 + md.atime_nsec())),
                mtime: Some(SetTime::At(mtime_ns(md))),
                ..Default::default()
            },
        )?;
        Ok(())
    }
}

/// The `user.*` extended attributes of a file on disk (not following a
/// symlink); none where the filesystem has no xattrs.
fn disk_xattrs(p: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use rustix::io::Errno;
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("listing xattrs of {}", p.display()))
        }
    };
    names.truncate(n);
    let mut out = Vec::new();
    let mut value = vec![0u8; 64 * 1024];
    for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let k = match rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut value[..]) {
            Ok(k) => k,
            Err(Errno::NODATA) => continue, // removed since the listing
            Err(e) => {
                return Err(std::io::Error::from(e)).with_context(|| {
                    format!(
                        "reading xattr {} of {}",
                        String::from_utf8_lossy(name),
                        p.display()
                    )
                })
            }
        };
        out.push((name.to_vec(), value[..k].to_vec()));
    }
    Ok(out)
}

/// The name a source keeps in the destination folder: its last component
/// (a symlink's own name, dangling or not; `.` and `..` resolved).
fn source_name(src: &Path) -> Result<std::ffi::OsString> {
    if let Some(n) = src.file_name() {
        return Ok(n.to_os_string());
    }
    src.canonicalize()
        .with_context(|| format!("{}", src.display()))?
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| anyhow!("{}: has no name", src.display()))
}

pub fn put(dir: &Path, a: PutArgs) -> Result<Outcome> {
    let (dest, sources) = a.paths.split_last().unwrap();
    let dest = bytes(dest);
    let s = match live::open(dir, "put")? {
        Target::Store(s) => s,
        Target::Mount(mp) => return put_through(&mp, sources, dest),
    };
    let fs = &s.fs;
    let total: u64 = sources.iter().map(|p| disk_bytes(p)).sum();
    let bar = progress_bar(total);
    let mut p = Putter {
        fs,
        bar,
        links: HashMap::new(),
        buf: vec![0u8; IO_SIZE],
    };
    // Into an existing directory, each source keeps its name; otherwise the
    // one source takes the destination's name.
    let target = match fs.resolve_bytes(dest) {
        Ok(i) if i.is_dir() => Some(i.ino),
        Ok(_) | Err(FsError::NotFound) => None,
        Err(e) => bail!("{}: {e}", show(dest)),
    };
    match target {
        Some(d) => {
            for src in sources {
                let name = source_name(src)?;
                p.put(src, d, name.as_encoded_bytes())?;
            }
        }
        None => {
            if sources.len() != 1 {
                bail!(
                    "{}: not a directory in the store (needed for several sources)",
                    show(dest)
                );
            }
            let (parent, name) = split(dest)?;
            let pi = resolve(fs, &parent)?;
            p.put(&sources[0], pi.ino, &name)?;
        }
    }
    p.bar.finish_and_clear();
    fs.sync_all()?;
    Ok(Outcome::Ok)
}

/// `put` into a mounted store: an ordinary copy into the mount, keeping
/// what `put` keeps (modes, owners, times, symlinks, hard links, `user.*`
/// xattrs and so tags).
fn put_through(mp: &Path, sources: &[PathBuf], dest: &[u8]) -> Result<Outcome> {
    let d = live::on_mount(mp, dest);
    let mut c = DiskCopy::default();
    if d.is_dir() {
        for src in sources {
            c.copy(src, &d.join(source_name(src)?))?;
        }
    } else {
        if sources.len() != 1 {
            bail!(
                "{}: not a directory in the store (needed for several sources)",
                show(dest)
            );
        }
        c.copy(&sources[0], &d)?;
    }
    // One fsync commits everything done through the mount before it, as
    // the offline put syncs once at the end.
    if let Some(f) = &c.last_file {
        File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(|e| anyhow!("committing {}: {}", f.display(), live::io_msg(&e)))?;
    }
    Ok(Outcome::Ok)
}

/// Copies trees between two places on disk keeping everything `put`
/// keeps.
#[derive(Default)]
struct DiskCopy {
    /// (dev, ino) of a source -> the copy's path, to keep hard links.
    links: HashMap<(u64, u64), PathBuf>,
    /// The last file written (its fsync commits everything before it).
    last_file: Option<PathBuf>,
}

impl DiskCopy {
    fn copy(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let md = fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
        let ft = md.file_type();
        let ctx = |e: std::io::Error| anyhow!("{}: {}", dst.display(), live::io_msg(&e));
        let existing = fs::symlink_metadata(dst).ok();
        if ft.is_dir() {
            match existing {
                Some(e) if e.is_dir() => {}
                Some(_) => bail!(
                    "{}: a non-directory of that name is in the store",
                    src.display()
                ),
                None => fs::create_dir(dst).map_err(ctx)?,
            }
            let mut entries: Vec<_> = fs::read_dir(src)
                .with_context(|| format!("{}", src.display()))?
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("{}", src.display()))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                self.copy(&e.path(), &dst.join(e.file_name()))?;
            }
            return keep_attrs(src, dst, &md);
        }
        if let Some(e) = &existing {
            if e.is_dir() {
                bail!(
                    "{}: a directory of that name is in the store",
                    src.display()
                );
            }
        }
        if md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                if existing.is_some() {
                    fs::remove_file(dst).map_err(ctx)?;
                }
                fs::hard_link(first, dst).map_err(ctx)?;
                return Ok(());
            }
        }
        if ft.is_file() {
            let mut from = File::open(src).with_context(|| format!("{}", src.display()))?;
            let mut to = File::create(dst).map_err(ctx)?;
            std::io::copy(&mut from, &mut to).map_err(ctx)?;
            self.last_file = Some(dst.to_path_buf());
        } else {
            if existing.is_some() {
                fs::remove_file(dst).map_err(ctx)?;
            }
            if ft.is_symlink() {
                let t = fs::read_link(src).with_context(|| format!("{}", src.display()))?;
                std::os::unix::fs::symlink(t, dst).map_err(ctx)?;
            } else {
                use rustix::fs::{FileType, Mode, CWD};
                rustix::fs::mknodat(
                    CWD,
                    dst,
                    FileType::from_raw_mode(md.mode()),
                    Mode::from_raw_mode(md.mode() & 0o7777),
                    md.rdev(),
                )
                .map_err(|e| ctx(e.into()))?;
            }
        }
        if md.nlink() > 1 {
            self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
        }
        keep_attrs(src, dst, &md)
    }
}

/// Gives `dst` on disk the `user.*` xattrs, owner, mode and times of
/// `src` (a symlink: xattrs, owner and times of the link itself).
fn keep_attrs(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    for (name, value) in disk_xattrs(src)? {
        set_disk_xattr(dst, &name, &value)?;
    }
    set_disk_owner_mode_times(
        dst,
        md.file_type().is_symlink(),
        md.uid(),
        md.gid(),
        md.mode() & 0o7777,
        md.atime() * 1_000_000_000 + md.atime_nsec(),
        mtime_ns(md),
    )
}

fn set_disk_xattr(dst: &Path, name: &[u8], value: &[u8]) -> Result<()> {
    rustix::fs::lsetxattr(
        dst,
        OsStr::from_bytes(name),
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| {
        anyhow!(
            "{}: xattr {}: {}",
            dst.display(),
            String::from_utf8_lossy(name),
            live::io_msg(&e.into())
        )
    })
}

/// chown (as root; others keep their own), chmod (not of a symlink) and
/// times (of the link itself for a symlink).
fn set_disk_owner_mode_times(
    dst: &Path,
    symlink: bool,
    uid: u32,
    gid: u32,
    mode: u32,
    atime: i64,
    mtime: i64,
) -> Result<()> {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
    let ctx = |e: rustix::io::Errno| anyhow!("{}: {}", dst.display(), live::io_msg(&e.into()));
    let me = rustix::process::geteuid();
    if me.is_root() {
        rustix::fs::chownat(
            CWD,
            dst,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(ctx)?;
    }
    if !symlink {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow!("{}: {}", dst.display(), live::io_msg(&e)))?;
    }
    let ts = |ns: i64| Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        CWD,
        dst,
        &Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(ctx)?;
    Ok(())
}

// ----- get -----

#[derive(clap::Args)]
pub struct GetArgs {
    /// Path in the store.
    src: PathBuf,
    /// Destination on disk.
    dest: PathBuf,
}

/// Copies store trees to disk keeping what `put` keeps.
struct Getter<'a> {
    fs: &'a Fs,
    bar: &'a ProgressBar,
    /// Store inode of a file with several links -> its first copy.
    links: HashMap<u64, PathBuf>,
}

impl Getter<'_> {
    fn get(&mut self, i: &Attr, dest: &Path) -> Result<()> {
        let fs = self.fs;
        let ctx = |e: std::io::Error| anyhow!("{}: {}", dest.display(), live::io_msg(&e));
        if i.kind != FileKind::Dir && i.nlink > 1 {
            if let Some(first) = self.links.get(&i.ino) {
                let _ = fs::remove_file(dest);
                fs::hard_link(first, dest).map_err(ctx)?;
                return Ok(());
            }
        }
        match i.kind {
            FileKind::Dir => {
                match fs::create_dir(dest) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                    r => r.map_err(ctx)?,
                }
                for e in fs.list(i.ino)? {
                    let name = std::ffi::OsStr::from_encoded_bytes_checked(&e.name);
                    self.get(&e.attr, &dest.join(name))?;
                }
            }
            FileKind::File => {
                let mut out = File::create(dest).map_err(ctx)?;
                let fh = fs.open(i.ino)?;
                let r = (|| -> Result<()> {
                    let mut off = 0u64;
                    loop {
                        let d = fs.read(fh, off, IO_SIZE as u32)?;
                        if d.is_empty() {
                            break;
                        }
                        out.write_all(&d).map_err(ctx)?;
                        off += d.len() as u64;
                        self.bar.inc(d.len() as u64);
                    }
                    Ok(())
                })();
                fs.release(fh)?;
                r?;
            }
            FileKind::Symlink => {
                let t = fs.readlink(i.ino)?;
                let _ = fs::remove_file(dest);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_encoded_bytes_checked(&t), dest)
                    .map_err(ctx)?;
            }
            _ => {
                use rustix::fs::{FileType, Mode, CWD};
                let _ = fs::remove_file(dest);
                rustix::fs::mknodat(
                    CWD,
                    dest,
                    FileType::from_raw_mode(i.kind.bits()),
                    Mode::from_raw_mode(i.perm),
                    u64::from(i.rdev),
                )
                .map_err(|e| ctx(e.into()))?;
            }
        }
        if i.kind != FileKind::Dir && i.nlink > 1 {
            self.links.insert(i.ino, dest.to_path_buf());
        }
        // user.* xattrs, tags included (as user.tag.NAME). Linux has no
        // user.* xattrs on symlinks: a tagged symlink's tags stay behind.
        let names = fs.listxattr(i.ino)?;
        if i.kind == FileKind::Symlink {
            if !names.is_empty() {
                eprintln!(
                    "queryfs: {}: a symlink's tags and xattrs cannot be kept on disk (Linux has no user.* xattrs on symlinks)",
                    dest.display()
                );
            }
        } else {
            for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let v = fs.getxattr(i.ino, name)?;
                set_disk_xattr(dest, name, &v)?;
            }
        }
        set_disk_owner_mode_times(
            dest,
            i.kind == FileKind::Symlink,
            i.uid,
            i.gid,
            i.perm,
            i.atime,
            i.mtime,
        )
    }
}

/// Turns raw name bytes into an OsStr.
trait FromBytes {
    fn from_encoded_bytes_checked(b: &[u8]) -> &std::ffi::OsStr;
}
impl FromBytes for std::ffi::OsStr {
    fn from_encoded_bytes_checked(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

pub fn get(dir: &Path, a: GetArgs) -> Result<Outcome> {
    let s = open_read(dir)?;
    let src = bytes(&a.src);
    let i = resolve(&s.fs, src)?;
    let dest = if a.dest.is_dir() {
        let name = split(src)
            .map(|(_, n)| n)
            .unwrap_or_else(|_| b"root".to_vec());
        a.dest.join(OsStr::from_bytes(&name))
    } else {
        a.dest.clone()
    };
    let bar = ProgressBar::new(if i.is_dir() { 0 } else { i.size });
    Getter {
        fs: &s.fs,
        bar: &bar,
        links: HashMap::new(),
    }
    .get(&i, &dest)?;
    bar.finish_and_clear();
    Ok(Outcome::Ok)
}

// ----- ls / stat -----

#[derive(clap::Args)]
pub struct LsArgs {
    /// Directory (or file) in the store; default the root.
    #[arg(default_value = "/")]
    path: PathBuf,
    /// Long listing: mode, links, owner, size, mtime, name.
    #[arg(short, long)]
    long: bool,
    /// JSON Lines, one object per entry.
    #[arg(long)]
    json: bool,
}

/// Names, paths and targets are strings when UTF-8, else
/// `{"bytes": "<base64>"}` (see `queryfs::names`).
#[derive(Serialize)]
struct EntryJson<'a> {
    name: serde_json::Value,
    path: serde_json::Value,
    ino: u64,
    kind: &'a str,
    mode: String,
    size: u64,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    atime_ns: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    btime_ns: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<serde_json::Value>,
}

fn entry_json(fs: &Fs, name: &[u8], path: &[u8], i: &Attr) -> EntryJson<'static> {
    EntryJson {
        name: bytes_json(name),
        path: bytes_json(path),
        ino: i.ino,
        // One word per kind, as in the SQL views and export metadata.
        kind: i.kind.word(),
        mode: format!("{:04o}", i.perm),
        size: i.size,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        atime_ns: i.atime,
        mtime_ns: i.mtime,
        ctime_ns: i.ctime,
        btime_ns: i.btime,
        target: if i.kind == FileKind::Symlink {
            fs.readlink(i.ino).ok().map(|t| bytes_json(&t))
        } else {
            None
        },
    }
}

fn fmt_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

pub fn ls(dir: &Path, a: LsArgs) -> Result<Outcome> {
    let s = open_read(dir)?;
    let fs = &s.fs;
    let path = bytes(&a.path);
    let i = resolve(fs, path)?;
    let entries: Vec<(Vec<u8>, Vec<u8>, Attr)> = if i.is_dir() {
        fs.list(i.ino)?
            .into_iter()
            .map(|e| {
                let p = join(path, &e.name);
                (e.name, p, e.attr)
            })
            .collect()
    } else {
        let n = split(path).map(|(_, n)| n).unwrap_or_default();
        vec![(n, path.to_vec(), i)]
    };
    // Names are written as the bytes they are.
    let mut out = std::io::stdout().lock();
    for (name, path, e) in entries {
        if a.json {
            json_line(&mut out, &entry_json(fs, &name, &path, &e))?;
        } else if a.long {
            write!(
                out,
                "{} {:>3} {:>5} {:>5} {:>12} {} ",
                mode_string(&e),
                e.nlink,
                e.uid,
                e.gid,
                e.size,
                fmt_time(e.mtime)
            )?;
            out.write_all(&name)?;
            if e.kind == FileKind::Symlink {
                out.write_all(b" -> ")?;
                out.write_all(&fs.readlink(e.ino).unwrap_or_default())?;
            }
            out.write_all(b"\n")?;
        } else {
            out.write_all(&name)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(Outcome::Ok)
}

pub fn stat(dir: &Path, json: bool, paths: &[PathBuf]) -> Result<Outcome> {
    let s = open_read(dir)?;
    let fs = &s.fs;
    let mut out = std::io::stdout().lock();
    each(paths, |p| {
        let p = bytes(p);
        let i = resolve(fs, p)?;
        let name = split(p).map(|(_, n)| n).unwrap_or_else(|_| b"/".to_vec());
        let e = entry_json(fs, &name, p, &i);
        if json {
            json_line(&mut out, &e)?;
        } else {
            out.write_all(b"  path: ")?;
            out.write_all(p)?;
            write!(out, "\n  kind: {}", e.kind)?;
            if i.kind == FileKind::Symlink {
                out.write_all(b" -> ")?;
                out.write_all(&fs.readlink(i.ino).unwrap_or_default())?;
            }
            out.write_all(b"\n")?;
            writeln!(
                out,
                "   ino: {}   links: {}   size: {}",
                e.ino, e.nlink, e.size
            )?;
            writeln!(
                out,
                "  mode: {} ({})   uid: {}   gid: {}",
                e.mode,
                mode_string(&i),
                e.uid,
                e.gid
            )?;
            writeln!(out, " atime: {}", fmt_time(e.atime_ns))?;
            writeln!(out, " mtime: {}", fmt_time(e.mtime_ns))?;
            writeln!(out, " ctime: {}", fmt_time(e.ctime_ns))?;
            writeln!(out, " btime: {}", fmt_time(e.btime_ns))?;
        }
        Ok(())
    })
}

// ----- cat, mkdir, rm, mv -----

pub fn cat(dir: &Path, paths: &[PathBuf]) -> Result<Outcome> {
    let s = open_read(dir)?;
    let fs = &s.fs;
    let mut out = std::io::stdout().lock();
    each(paths, |p| {
        let i = resolve(fs, bytes(p))?;
        let p = p.display();
        if i.is_dir() {
            bail!("{p}: is a directory");
        }
        let fh = fs.open(i.ino).map_err(|e| anyhow!("{p}: {e}"))?;
        let mut off = 0u64;
        let r = (|| -> Result<()> {
            loop {
                let d = fs
                    .read(fh, off, IO_SIZE as u32)
                    .map_err(|e| anyhow!("{p}: {e}"))?;
                if d.is_empty() {
                    return Ok(());
                }
                out.write_all(&d)?;
                off += d.len() as u64;
            }
        })();
        fs.release(fh)?;
        r
    })
}

fn mkdir_parents(fs: &Fs, path: &Path, who: Caller) -> Result<()> {
    let p = path.display();
    let mut cur = ROOT;
    for part in bytes(path)
        .split(|&c| c == b'/')
        .filter(|x| !x.is_empty() && *x != b".")
    {
        cur = match fs.lookup(cur, part) {
            Ok(i) if i.is_dir() => i.ino,
            Ok(_) => bail!("{p}: {} is not a directory", show(part)),
            Err(FsError::NotFound) => {
                fs.mkdir(cur, part, 0o755, who)
                    .map_err(|e| anyhow!("{p}: {e}"))?
                    .ino
            }
            Err(e) => bail!("{p}: {e}"),
        };
    }
    Ok(())
}

/// An io error on a mount path, shown with the store path.
fn mount_err(p: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{}: {}", p.display(), live::io_msg(&e))
}

pub fn mkdir(dir: &Path, parents: bool, paths: &[PathBuf]) -> Result<Outcome> {
    let s = match live::open(dir, "mkdir")? {
        Target::Store(s) => s,
        Target::Mount(mp) => {
            return each(paths, |path| {
                let m = live::on_mount(&mp, bytes(path));
                if parents {
                    fs::create_dir_all(&m)
                } else {
                    fs::create_dir(&m)
                }
                .map_err(mount_err(path))
            })
        }
    };
    let fs = &s.fs;
    let who = Caller::current();
    let r = each(paths, |path| {
        if parents {
            mkdir_parents(fs, path, who)
        } else {
            let p = path.display();
            let (parent, name) = split(bytes(path))?;
            let pi = resolve(fs, &parent)?;
            fs.mkdir(pi.ino, &name, 0o755, who)
                .map_err(|e| anyhow!("{p}: {e}"))?;
            Ok(())
        }
    });
    fs.sync_all()?;
    r
}

fn remove_tree(fs: &Fs, parent: u64, name: &[u8]) -> Result<()> {
    let i = fs.lookup(parent, name)?;
    if i.is_dir() {
        for e in fs.list(i.ino)? {
            remove_tree(fs, i.ino, &e.name)?;
        }
        fs.rmdir(parent, name)?;
    } else {
        fs.unlink(parent, name)?;
    }
    Ok(())
}

pub fn rm(dir: &Path, recursive: bool, paths: &[PathBuf]) -> Result<Outcome> {
    let s = match live::open(dir, "rm")? {
        Target::Store(s) => s,
        Target::Mount(mp) => {
            return each(paths, |path| {
                split(bytes(path))?;
                let m = live::on_mount(&mp, bytes(path));
                let md = fs::symlink_metadata(&m).map_err(mount_err(path))?;
                if md.is_dir() {
                    if !recursive {
                        bail!("{}: is a directory (use -r)", path.display());
                    }
                    fs::remove_dir_all(&m)
                } else {
                    fs::remove_file(&m)
                }
                .map_err(mount_err(path))
            })
        }
    };
    let fs = &s.fs;
    let r = each(paths, |path| {
        let p = path.display();
        let (parent, name) = split(bytes(path))?;
        let pi = resolve(fs, &parent)?;
        let i = fs.lookup(pi.ino, &name).map_err(|e| anyhow!("{p}: {e}"))?;
        if i.is_dir() && !recursive {
            bail!("{p}: is a directory (use -r)");
        }
        remove_tree(fs, pi.ino, &name).map_err(|e| anyhow!("{p}: {e}"))
    });
    fs.sync_all()?;
    r
}

pub fn mv(dir: &Path, src: &Path, dest: &Path) -> Result<Outcome> {
    let s = match live::open(dir, "mv")? {
        Target::Store(s) => s,
        Target::Mount(mp) => {
            let (_, sn) = split(bytes(src))?;
            let from = live::on_mount(&mp, bytes(src));
            let mut to = live::on_mount(&mp, bytes(dest));
            if to.is_dir() {
                to = to.join(OsStr::from_bytes(&sn));
            }
            fs::rename(&from, &to).map_err(|e| {
                anyhow!(
                    "moving {} to {}: {}",
                    src.display(),
                    dest.display(),
                    live::io_msg(&e)
                )
            })?;
            return Ok(Outcome::Ok);
        }
    };
    let fs = &s.fs;
    let (sp, sn) = split(bytes(src))?;
    let spi = resolve(fs, &sp)?;
    fs.lookup(spi.ino, &sn)
        .map_err(|e| anyhow!("{}: {e}", src.display()))?;
    let (dp, dn) = match fs.resolve_bytes(bytes(dest)) {
        Ok(d) if d.is_dir() => (d.ino, sn.clone()),
        _ => {
            let (p, n) = split(bytes(dest))?;
            (resolve(fs, &p)?.ino, n)
        }
    };
    fs.rename(spi.ino, &sn, dp, &dn, 0)
        .map_err(|e| anyhow!("moving {} to {}: {e}", src.display(), dest.display()))?;
    fs.sync_all()?;
    Ok(Outcome::Ok)
}
