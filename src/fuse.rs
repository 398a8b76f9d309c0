//! The FUSE adapter: turns fuser calls into core calls and core results into
//! replies. Type conversion only: no SQL, no policy, no errno choices (those
//! come from [`FsError::errno`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::folders::{with_pid, with_viewer, NameReport, Viewer};
use crate::types::Ino;
use crate::types::{Attr, FileKind};
use crate::vfs::{Caller, Fs, SetAttr, SetTime};
use crate::view::View;

/// How long the kernel may cache entries and attributes of real nodes. Every
/// change goes through this mount (one owner), so the kernel's own
/// invalidation keeps the cache right.
const TTL: Duration = Duration::from_secs(1);
/// Query folders and what they show change with any commit: no caching.
const NO_TTL: Duration = Duration::ZERO;

/// The kernel cache lifetime of an entry `ino` in `parent` (and its attributes).
fn ttl(parent: u64, ino: u64) -> &'static Duration {
    if Ino(parent).is_virtual() || Ino(ino).is_virtual() {
        &NO_TTL
    } else {
        &TTL
    }
}

/// Feeds directory entries from `offset` to `add` (which returns true once
/// the reply is full), a page of fresh entries at a time.
fn pages(
    fs: &Fs,
    fh: u64,
    offset: u64,
    mut add: impl FnMut(u64, &crate::vfs::DirEntry) -> bool,
) -> crate::error::Result<()> {
    let mut from = offset as usize;
    loop {
        let page = fs.dir_page(fh, from, 64)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        let next = *last as usize;
        for (cookie, e) in &page {
            if add(*cookie, e) {
                return Ok(());
            }
        }
        from = next;
    }
}

/// Threads that run users' queries (lookups and opens under `/sql` and
/// `/queries`), and how many such requests may wait for one.
const QUERY_THREADS: usize = 2;
const QUERY_QUEUE: usize = 16;

/// A request handed to the query threads; called with `true` when the
/// queue is full, to answer EBUSY instead.
type Job = Box<dyn FnOnce(bool) + Send>;

/// Runs query requests off the FUSE threads: a FUSE thread hands over the
/// request with its reply and returns at once, so a slow query holds up
/// only its caller (and the queries queued behind it), never the rest of
/// the mount. At most [`QUERY_THREADS`] queries run at once; past
/// [`QUERY_QUEUE`] waiting ones a request fails with EBUSY at once.
struct QueryPool {
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
}

impl QueryPool {
    fn new() -> QueryPool {
        // A test hook: run queries on the FUSE threads, as before the pool
        // (to show what the pool prevents).
        if std::env::var_os("QUERYFS_TEST_INLINE_QUERIES").is_some() {
            return QueryPool { tx: None };
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUERY_QUEUE);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..QUERY_THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("queryfs-query-{i}"))
                // LIKE/GLOB matching recurses once per wildcard.
                .stack_size(16 << 20)
                .spawn(move || loop {
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => job(false),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("starting a query thread failed: {e}");
            }
        }
        QueryPool { tx: Some(tx) }
    }

    fn submit(&self, job: Job) {
        match &self.tx {
            None => job(false),
            Some(tx) => match tx.try_send(job) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(job)) => {
                    tracing::warn!(
                        "{QUERY_QUEUE} queries are already waiting: a query folder request answered EBUSY"
                    );
                    job(true)
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(job)) => job(true),
            },
        }
    }
}

/// The mounted filesystem.
pub struct FuseFs {
    fs: Arc<View>,
    pool: QueryPool,
}

impl FuseFs {
    pub fn new(fs: Arc<View>) -> Self {
        FuseFs {
            fs,
            pool: QueryPool::new(),
        }
    }
}

fn busy() -> Errno {
    Errno::from_i32(libc::EBUSY)
}

fn errno(e: &FsError) -> Errno {
    match e {
        FsError::Meta(_) | FsError::Io(_) | FsError::Corrupt(_) => {
            tracing::error!(errno = e.errno(), "failed: {e}")
        }
        _ => tracing::debug!(errno = e.errno(), "refused: {e}"),
    }
    Errno::from_i32(e.errno())
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::Char => FileType::CharDevice,
        FileKind::Block => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr(i: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.blocks,
        atime: time(i.atime),
        mtime: time(i.mtime),
        ctime: time(i.ctime),
        crtime: time(i.btime),
        kind: file_type(i.kind),
        perm: i.perm as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The caller of a request with its supplementary groups, for what query
/// folders show it (read from /proc only for query folders).
fn viewer(req: &Request) -> Viewer {
    Viewer::of_process(req.uid(), req.gid(), req.pid())
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(ns(t)),
    }
}

/// Replies with an entry; the kernel then holds one more lookup of it,
/// which a virtual node must know (it is not trimmed while held).
fn reply_entry(fs: &View, parent: u64, r: crate::error::Result<Attr>, reply: ReplyEntry) {
    match r {
        Ok(i) => {
            if Ino(i.ino).is_virtual() {
                fs.folders().note_lookup(i.ino);
            }
            reply.entry(ttl(parent, i.ino), &attr(&i), Generation(0))
        }
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(r: crate::error::Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(r: crate::error::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Runs one request. A panic in it is contained: the request answers EIO
/// (fuser replies EIO for a reply dropped unsent), the panic is logged with
/// its operation and inode, and every other request goes on being served.
/// Locks of the core do not poison (parking_lot), and a panic inside a
/// metadata transaction rolls that transaction back (`Meta::write`).
fn guard(op: &str, ino: u64, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!("{op} on inode {ino} panicked ({what}); answered EIO");
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // open(O_TRUNC) arrives as one open, not as a setattr the server
        // cannot tell from truncate(2) (which leaves times alone when the
        // size does not change, while O_TRUNC always sets them).
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.core().commit_all() {
            tracing::error!("committing at unmount failed: {e}");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if !Ino(parent.0).is_virtual() {
            return guard("lookup", parent.0, || {
                let r = self.fs.lookup(Ino(parent.0), name.as_bytes());
                if let Ok(i) = &r {
                    if i.is_dir() {
                        // Just moved into a tag folder: the kernel's name
                        // of it there must go first (see `Fs::wait_moved`).
                        self.fs.folders().wait_moved(i.ino);
                    }
                }
                reply_entry(&self.fs, parent.0, r, reply)
            });
        }
        let who = viewer(req);
        if with_viewer(who.clone(), || self.fs.runs_queries(Ino(parent.0))) {
            let fs = self.fs.clone();
            let name = name.to_owned();
            return self.pool.submit(Box::new(move |full| {
                if full {
                    return reply.error(busy());
                }
                guard("lookup", parent.0, || {
                    let r = with_viewer(who, || fs.lookup(Ino(parent.0), name.as_bytes()));
                    reply_entry(&fs, parent.0, r, reply)
                })
            }));
        }
        guard("lookup", parent.0, || {
            let r = with_viewer(who, || self.fs.lookup(Ino(parent.0), name.as_bytes()));
            reply_entry(&self.fs, parent.0, r, reply)
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if Ino(ino.0).is_virtual() {
            self.fs.folders().forget_virtual(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guard("getattr", ino.0, || match self.fs.getattr(Ino(ino.0)) {
            Ok(i) => reply.attr(ttl(i.ino, i.ino), &attr(&i)),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guard("setattr", ino.0, || {
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(set_time),
                mtime: mtime.map(set_time),
                ctime: ctime.map(ns),
                btime: crtime.map(ns),
            };
            match self.fs.setattr(Ino(ino.0), &set) {
                Ok(i) => reply.attr(ttl(i.ino, i.ino), &attr(&i)),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guard("readlink", ino.0, || match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guard("mknod", parent.0, || {
            let mode = mode & !(umask & 0o777);
            reply_entry(
                &self.fs,
                parent.0,
                with_pid(req.pid(), || {
                    self.fs
                        .mknod(Ino(parent.0), name.as_bytes(), mode, rdev, caller(req))
                }),
                reply,
            )
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guard("mkdir", parent.0, || {
            let mode = mode & !(umask & 0o777);
            reply_entry(
                &self.fs,
                parent.0,
                self.fs
                    .mkdir(Ino(parent.0), name.as_bytes(), mode, caller(req)),
                reply,
            )
        })
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("unlink", parent.0, || {
            let r = if Ino(parent.0).is_virtual() {
                with_viewer(viewer(req), || {
                    with_pid(req.pid(), || self.fs.unlink(Ino(parent.0), name.as_bytes()))
                })
            } else {
                self.fs.unlink(Ino(parent.0), name.as_bytes())
            };
            reply_empty(r, reply)
        })
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("rmdir", parent.0, || {
            let r = if Ino(parent.0).is_virtual() {
                with_viewer(viewer(req), || {
                    self.fs.rmdir(Ino(parent.0), name.as_bytes())
                })
            } else {
                self.fs.rmdir(Ino(parent.0), name.as_bytes())
            };
            reply_empty(r, reply)
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guard("symlink", parent.0, || {
            reply_entry(
                &self.fs,
                parent.0,
                self.fs.symlink(
                    Ino(parent.0),
                    link_name.as_bytes(),
                    target.as_os_str().as_bytes(),
                    caller(req),
                ),
                reply,
            )
        })
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guard("rename", parent.0, || {
            let go = || {
                self.fs.rename(
                    Ino(parent.0),
                    name.as_bytes(),
                    Ino(newparent.0),
                    newname.as_bytes(),
                    flags.bits(),
                )
            };
            let r = if Ino(parent.0).is_virtual() || Ino(newparent.0).is_virtual() {
                with_viewer(viewer(req), || with_pid(req.pid(), go))
            } else {
                go()
            };
            reply_empty(r, reply)
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guard("link", ino.0, || {
            reply_entry(
                &self.fs,
                newparent.0,
                self.fs
                    .link(Ino(ino.0), Ino(newparent.0), newname.as_bytes()),
                reply,
            )
        })
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let who = Ino(ino.0).is_virtual().then(|| viewer(req));
        if let Some(who) =
            who.filter(|w| with_viewer(w.clone(), || self.fs.runs_queries(Ino(ino.0))))
        {
            // A result file whose listing left the cache is made again, for
            // the viewer it belongs to.
            let fs = self.fs.clone();
            return self.pool.submit(Box::new(move |full| {
                if full {
                    return reply.error(busy());
                }
                guard("open", ino.0, || {
                    match with_viewer(who, || fs.open(Ino(ino.0))) {
                        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                        Err(e) => reply.error(errno(&e)),
                    }
                })
            }));
        }
        guard("open", ino.0, || {
            // With FUSE_ATOMIC_O_TRUNC the kernel leaves O_TRUNC to open
            // (after checking write permission, even for O_RDONLY|O_TRUNC,
            // which Linux truncates too).
            let opened = if flags.0 & libc::O_TRUNC != 0 {
                self.fs.open_truncating(Ino(ino.0))
            } else {
                self.fs.open(Ino(ino.0))
            };
            match opened {
                // Every change goes through this mount, so the page cache stays
                // right across opens.
                Ok(fh) if Ino(ino.0).is_virtual() => {
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                }
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard("read", ino.0, || {
            match self.fs.core().read(fh.0, offset, size) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guard("write", ino.0, || {
            match self.fs.core().write(fh.0, offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guard("flush", ino.0, || {
            reply_empty(self.fs.core().flush(fh.0), reply)
        })
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guard("release", ino.0, || {
            reply_empty(self.fs.core().release(fh.0), reply)
        })
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guard("fsync", ino.0, || {
            reply_empty(self.fs.core().fsync(fh.0), reply)
        })
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let answer = |r: crate::error::Result<u64>, reply: ReplyOpen| match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        };
        if !Ino(ino.0).is_virtual() {
            return guard("opendir", ino.0, || {
                answer(self.fs.opendir(Ino(ino.0)), reply)
            });
        }
        let who = viewer(req);
        if with_viewer(who.clone(), || self.fs.runs_queries(Ino(ino.0))) {
            let fs = self.fs.clone();
            return self.pool.submit(Box::new(move |full| {
                if full {
                    return reply.error(busy());
                }
                guard("opendir", ino.0, || {
                    answer(with_viewer(who, || fs.opendir(Ino(ino.0))), reply)
                })
            }));
        }
        guard("opendir", ino.0, || {
            answer(with_viewer(who, || self.fs.opendir(Ino(ino.0))), reply)
        })
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guard("readdir", ino.0, || {
            let r = pages(self.fs.core(), fh.0, offset, |cookie, e| {
                reply.add(
                    INodeNo(e.attr.ino),
                    cookie,
                    file_type(e.attr.kind),
                    OsStr::from_bytes(&e.name),
                )
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guard("readdirplus", ino.0, || {
            let r = pages(self.fs.core(), fh.0, offset, |cookie, e| {
                let full = reply.add(
                    INodeNo(e.attr.ino),
                    cookie,
                    OsStr::from_bytes(&e.name),
                    ttl(ino.0, e.attr.ino),
                    &attr(&e.attr),
                    Generation(0),
                );
                // The kernel takes a lookup of each entry it links, all
                // but `.` and `..`.
                if !full && Ino(e.attr.ino).is_virtual() && e.name != b"." && e.name != b".." {
                    self.fs.folders().note_lookup(e.attr.ino);
                }
                full
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guard("releasedir", ino.0, || {
            reply_empty(self.fs.core().releasedir(fh.0), reply)
        })
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guard("fsyncdir", ino.0, || {
            reply_empty(self.fs.core().sync_all(), reply)
        })
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        guard("statfs", ino.0, || match self.fs.core().statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guard("setxattr", ino.0, || {
            reply_empty(
                self.fs.setxattr(Ino(ino.0), name.as_bytes(), value, flags),
                reply,
            )
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guard("getxattr", ino.0, || {
            reply_xattr(self.fs.getxattr(Ino(ino.0), name.as_bytes()), size, reply)
        })
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guard("listxattr", ino.0, || {
            reply_xattr(self.fs.listxattr(Ino(ino.0)), size, reply)
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("removexattr", ino.0, || {
            reply_empty(self.fs.removexattr(Ino(ino.0), name.as_bytes()), reply)
        })
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guard("access", ino.0, || {
            reply_empty(self.fs.access(Ino(ino.0), mask.bits(), caller(req)), reply)
        })
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        guard("create", parent.0, || {
            let mode = mode & !(umask & 0o777);
            let r = with_pid(req.pid(), || {
                self.fs
                    .create(Ino(parent.0), name.as_bytes(), mode, caller(req))
            });
            match r {
                Ok((i, fh)) => reply.created(
                    ttl(parent.0, i.ino),
                    &attr(&i),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guard("fallocate", ino.0, || {
            reply_empty(self.fs.core().fallocate(fh.0, offset, length, mode), reply)
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guard("lseek", ino.0, || {
            // The kernel answers SEEK_SET/CUR/END itself.
            let r = match whence {
                libc::SEEK_DATA | libc::SEEK_HOLE if offset >= 0 => {
                    self.fs
                        .core()
                        .seek_data(fh.0, offset as u64, whence == libc::SEEK_HOLE)
                }
                libc::SEEK_DATA | libc::SEEK_HOLE => Err(FsError::NoSuchOffset),
                _ => Err(FsError::Invalid("lseek whence".into())),
            };
            match r {
                Ok(o) => reply.offset(o as i64),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        guard("copy_file_range", ino_in.0, || {
            match self
                .fs
                .core()
                .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }
}

/// Mount options of `queryfs mount`.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub allow_other: bool,
    pub threads: usize,
    /// List the query folders at the root (they are reachable by name
    /// either way).
    pub show_folders: bool,
    /// The mount's flags (`NoAtime`, `Dev`, `Suid`, `RO`, `NoExec`, ...).
    pub flags: Vec<fuser::MountOption>,
}

/// Mounts `fs` at `mountpoint` and serves until unmounted. `on_mounted`
/// receives a handle that unmounts (for signal handlers).
pub fn serve(
    fs: Arc<Fs>,
    mountpoint: &Path,
    cfg: &MountConfig,
    fsname: &str,
    on_mounted: impl FnOnce(fuser::SessionUnmounter),
) -> std::io::Result<()> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(fsname.to_string()),
        // Given to the kernel itself (fuser keeps `Subtype` for
        // fusermount): the type shows as fuse.queryfs in /proc/mounts.
        fuser::MountOption::CUSTOM("subtype=queryfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.mount_options.extend(cfg.flags.iter().cloned());
    if cfg.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = cfg.threads > 1;
    let fs = Arc::new(View::new(fs, cfg.show_folders));
    // (Resolved before the mount: afterwards the path leads into it.)
    fs.folders().set_mountpoint(
        &mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf()),
    );
    let mut session = fuser::Session::new(FuseFs::new(fs.clone()), mountpoint, &config)?;
    // Real names changed through query folders are dropped from the
    // kernel's cache by a thread of their own: a notification waits for the
    // directory's lock, which the kernel may hold until the reply of the
    // very request that made the change.
    let (tx, rx) = std::sync::mpsc::channel::<NameReport>();
    let notifier = session.notifier();
    let invalidator = std::thread::Builder::new()
        .name("queryfs-inval".into())
        .spawn(move || {
            for (parent, name, ack) in rx {
                // ENOENT: the kernel did not hold that name; nothing to drop.
                let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
                if let Some(ack) = ack {
                    let _ = ack.try_send(());
                }
            }
        })?;
    fs.folders().on_real_names_changed(Some(tx));
    on_mounted(session.unmount_callable());
    let served = session.run();
    fs.folders().on_real_names_changed(None);
    let _ = invalidator.join();
    served
}
