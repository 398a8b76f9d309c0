//! qfs-passthrough: a minimal FUSE passthrough on fuser, the floor that any
//! FUSE filesystem pays on this machine. Used by `queryfs-bench` only.
//!
//! Usage: qfs-passthrough SOURCE_DIR MOUNTPOINT [THREADS]
//!
//! Same kernel settings as the queryfs mount (1 s entry/attr TTL,
//! readdirplus, keep-cache, 1 MiB writes, noatime); inodes map to paths, and
//! only open handles hold file descriptors.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::from_secs(1);

/// inode -> path, path -> inode, the last inode number given.
type Inodes = (HashMap<u64, PathBuf>, HashMap<PathBuf, u64>, u64);

struct Pass {
    inodes: RwLock<Inodes>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: Mutex<u64>,
}

fn err(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(s: i64, ns: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        UNIX_EPOCH
    }
}

impl Pass {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes
            .read()
            .unwrap()
            .0
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::from_i32(libc::ENOENT))
    }

    fn ino_for(&self, p: &Path) -> u64 {
        let mut t = self.inodes.write().unwrap();
        if let Some(&i) = t.1.get(p) {
            return i;
        }
        t.2 += 1;
        let i = t.2;
        t.0.insert(i, p.to_path_buf());
        t.1.insert(p.to_path_buf(), i);
        i
    }

    fn forget_path(&self, p: &Path) {
        let mut t = self.inodes.write().unwrap();
        if let Some(i) = t.1.remove(p) {
            t.0.remove(&i);
        }
    }

    fn attr(&self, p: &Path) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(p).map_err(err)?;
        let ino = self.ino_for(p);
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: time(m.ctime(), m.ctime_nsec()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn add_fh(&self, f: File) -> u64 {
        let mut n = self.next_fh.lock().unwrap();
        *n += 1;
        self.files.lock().unwrap().insert(*n, Arc::new(f));
        *n
    }

    fn fh(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.files
            .lock()
            .unwrap()
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::from_i32(libc::EBADF))
    }
}

impl Filesystem for Pass {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.attr(&p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.attr(&p)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let p = self.path(ino)?;
            if let Some(m) = mode {
                fs::set_permissions(&p, fs::Permissions::from_mode(m & 0o7777)).map_err(err)?;
            }
            if let Some(s) = size {
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(s))
                    .map_err(err)?;
            }
            if atime.is_some() || mtime.is_some() {
                use rustix::fs::{AtFlags, Timespec, Timestamps, CWD, UTIME_NOW, UTIME_OMIT};
                let ts = |t: Option<TimeOrNow>| match t {
                    None => Timespec {
                        tv_sec: 0,
                        tv_nsec: UTIME_OMIT,
                    },
                    Some(TimeOrNow::Now) => Timespec {
                        tv_sec: 0,
                        tv_nsec: UTIME_NOW,
                    },
                    Some(TimeOrNow::SpecificTime(t)) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        Timespec {
                            tv_sec: d.as_secs() as i64,
                            tv_nsec: d.subsec_nanos() as i64,
                        }
                    }
                };
                let times = Timestamps {
                    last_access: ts(atime),
                    last_modification: ts(mtime),
                };
                rustix::fs::utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| err(e.into()))?;
            }
            self.attr(&p)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.child(parent, name).and_then(|p| {
            fs::create_dir(&p).map_err(err)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777)).map_err(err)?;
            self.attr(&p)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name).and_then(|p| {
            fs::remove_file(&p)
                .map_err(err)
                .map(|_| self.forget_path(&p))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name).and_then(|p| {
            fs::remove_dir(&p)
                .map_err(err)
                .map(|_| self.forget_path(&p))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let a = self.child(parent, name)?;
            let b = self.child(newparent, newname)?;
            fs::rename(&a, &b).map_err(err)?;
            // Paths under a moved directory change: forget them all.
            let mut t = self.inodes.write().unwrap();
            let moved: Vec<PathBuf> =
                t.1.keys()
                    .filter(|p| p.starts_with(&a) || p.starts_with(&b))
                    .cloned()
                    .collect();
            for p in moved {
                if let Some(i) = t.1.remove(&p) {
                    t.0.remove(&i);
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| {
            let acc = flags.0 & libc::O_ACCMODE;
            OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .open(&p)
                .map_err(err)
        });
        match r {
            Ok(f) => reply.opened(FileHandle(self.add_fh(f)), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.child(parent, name).and_then(|p| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(mode & 0o7777)
                .open(&p)
                .map_err(err)?;
            Ok((self.attr(&p)?, f))
        });
        match r {
            Ok((a, f)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(self.add_fh(f)),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.fh(fh).and_then(|f| {
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(err(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .fh(fh)
            .and_then(|f| f.write_all_at(data, offset).map_err(err))
        {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().unwrap().remove(&fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fh(fh).and_then(|f| f.sync_all().map_err(err)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(p) = self.path(ino) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        let Ok(rd) = fs::read_dir(&p) else {
            return reply.error(Errno::from_i32(libc::EIO));
        };
        let entries: Vec<_> = rd.flatten().collect();
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let ft = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let ino = self.ino_for(&e.path());
            if reply.add(INodeNo(ino), i as u64 + 1, ft, e.file_name()) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Ok(p) = self.path(ino) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        let Ok(rd) = fs::read_dir(&p) else {
            return reply.error(Errno::from_i32(libc::EIO));
        };
        let entries: Vec<_> = rd.flatten().collect();
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let Ok(a) = self.attr(&e.path()) else {
                continue;
            };
            if reply.add(a.ino, i as u64 + 1, e.file_name(), &TTL, &a, Generation(0)) {
                break;
            }
        }
        reply.ok()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: qfs-passthrough SOURCE_DIR MOUNTPOINT [THREADS]");
        std::process::exit(2);
    }
    let src = fs::canonicalize(&args[1]).expect("source dir");
    let threads: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let mut t = (HashMap::new(), HashMap::new(), 1u64);
    t.0.insert(1, src.clone());
    t.1.insert(src, 1);
    let fs = Pass {
        inodes: RwLock::new(t),
        files: Mutex::new(HashMap::new()),
        next_fh: Mutex::new(0),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("qfs-passthrough".into()),
        fuser::MountOption::NoAtime,
    ];
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    let session = fuser::Session::new(fs, Path::new(&args[2]), &config).expect("mount");
    session.run().expect("serve");
}
