//! Core tests without a kernel: an in-memory database and container.

use super::*;
use crate::blob::MemBlobs;
use crate::meta::{Meta, MetaRead};
use crate::qvfs::{Container, MemDevice};

/// The backend pairs every core test runs on (see `on_every_backend!` at
/// the end): a new backend is one more case here and one more line there.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// Blobs in memory ([`MemBlobs`]), metadata in SQLite on `:memory:`.
    Memory,
    /// What a store folder holds: the QVFS container on files and the
    /// SQLite database file, in a temporary folder.
    Disk,
}

impl Backend {
    pub(crate) fn fs(self) -> Fs {
        self.fs_with(Tuning::default())
    }

    pub(crate) fn fs_with(self, tuning: Tuning) -> Fs {
        match self {
            Backend::Memory => {
                let meta = Meta::open_in_memory().unwrap();
                meta.write::<_, crate::meta::MetaError>(|m| {
                    m.store_set("durable_barrier", "0")?;
                    m.insert_root(0o755, 0, 0, now_ns())
                })
                .unwrap();
                Fs::new(
                    Arc::new(Mutex::new(Box::new(meta))),
                    Arc::new(MemBlobs::new()),
                    64 * 1024,
                    tuning,
                    None,
                )
            }
            Backend::Disk => {
                use crate::store::{DB_FILE, QFD_FILE, QFI_FILE};
                let dir = tempfile::tempdir().unwrap();
                let at = dir.path().join("store");
                crate::store::init(&at).unwrap();
                let meta = Meta::open(&at.join(DB_FILE), false).unwrap();
                let file = |name: &str| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(at.join(name))
                        .unwrap()
                };
                let c =
                    Container::open(Box::new(file(QFI_FILE)), Box::new(file(QFD_FILE))).unwrap();
                Fs::new(
                    Arc::new(Mutex::new(Box::new(meta))),
                    Arc::new(c),
                    64 * 1024,
                    tuning,
                    Some(crate::store::folder_room(&at)),
                )
                .holding(Box::new(dir))
            }
        }
    }
}

/// A filesystem on an in-memory database, with `qfd` as the cluster device
/// of a container (for tests of what only a container does: device faults).
fn fs_on(qfd: Box<dyn crate::qvfs::Device>, tuning: Tuning) -> Fs {
    let meta = Meta::open_in_memory().unwrap();
    meta.write::<_, crate::meta::MetaError>(|m| {
        m.store_set("durable_barrier", "0")?;
        m.insert_root(0o755, 0, 0, now_ns())
    })
    .unwrap();
    let c = Container::create(Box::new(MemDevice::default()), qfd, b"").unwrap();
    Fs::new(
        Arc::new(Mutex::new(Box::new(meta))),
        Arc::new(c),
        64 * 1024,
        tuning,
        None,
    )
}

/// Storage units holding blobs (container clusters, or blobs in memory).
fn used_units(fs: &Fs) -> u64 {
    fs.blobs().usage().unwrap().units_used
}

fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino).unwrap();
    let mut out = Vec::new();
    loop {
        let d = fs.read(fh, out.len() as u64, 100_000).unwrap();
        if d.is_empty() {
            break;
        }
        out.extend(d);
    }
    fs.release(fh).unwrap();
    out
}

fn write_read_across_chunks_and_commits(b: Backend) {
    let fs = b.fs_with(Tuning {
        dirty_limit: 200_000,
        ..Tuning::default()
    });
    let (a, fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    // Odd-sized pieces, so writes straddle chunks and commits happen mid-way.
    let mut off = 0;
    for piece in data.chunks(77_777) {
        fs.write(fh, off as u64, piece).unwrap();
        off += piece.len();
    }
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().size, data.len() as u64);
    assert_eq!(read_all(&fs, a.ino), data);
}

fn holes_read_as_zeros_and_truncate_trims(b: Backend) {
    let fs = b.fs();
    let (a, fh) = fs.create(ROOT, b"s", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 300_000, b"end").unwrap();
    fs.write(fh, 5, b"start").unwrap();
    fs.release(fh).unwrap();
    let d = read_all(&fs, a.ino);
    assert_eq!(d.len(), 300_003);
    assert_eq!(&d[5..10], b"start");
    assert!(d[10..300_000].iter().all(|&b| b == 0));
    // Shrink into the first chunk, then grow again: the cut bytes stay gone.
    fs.setattr(
        a.ino,
        &SetAttr {
            size: Some(7),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        a.ino,
        &SetAttr {
            size: Some(100_000),
            ..Default::default()
        },
    )
    .unwrap();
    let d = read_all(&fs, a.ino);
    assert_eq!(&d[..7], b"\0\0\0\0\0st");
    assert!(d[7..].iter().all(|&b| b == 0));
}

fn identical_content_is_stored_once_and_freed_with_the_last_copy(b: Backend) {
    let fs = b.fs();
    let base = used_units(&fs);
    let data = vec![42u8; 1 << 20];
    let mut inos = vec![];
    for name in [&b"a"[..], b"b"] {
        let (i, fh) = fs.create(ROOT, name, 0o644, Caller::ROOT).unwrap();
        fs.write(fh, 0, &data).unwrap();
        fs.release(fh).unwrap();
        inos.push(i.ino);
    }
    let s = fs.meta().stats().unwrap();
    assert_eq!(s.logical_bytes, 2 << 20);
    // 16 identical 64 KiB chunks in each file: one blob.
    assert_eq!(s.blobs, 1);
    assert_eq!(s.stored_bytes, 64 * 1024);
    fs.unlink(ROOT, b"a").unwrap();
    assert_eq!(fs.meta().stats().unwrap().blobs, 1);
    fs.unlink(ROOT, b"b").unwrap();
    assert_eq!(fs.meta().stats().unwrap().blobs, 0);
    // The storage is freed once the unlink is durable (the next barrier).
    assert!(
        used_units(&fs) > base,
        "freed before the unlink was durable"
    );
    fs.sync_all().unwrap();
    assert_eq!(used_units(&fs), base, "no blob storage is left");
}

fn unlinked_open_file_lives_until_release(b: Backend) {
    let fs = b.fs();
    let (a, fh) = fs.create(ROOT, b"tmp", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, &[1u8; 100_000]).unwrap();
    fs.flush(fh).unwrap();
    fs.unlink(ROOT, b"tmp").unwrap();
    assert_eq!(fs.read(fh, 0, 10).unwrap(), vec![1u8; 10]);
    fs.release(fh).unwrap();
    assert!(matches!(fs.getattr(a.ino), Err(FsError::Stale)));
    assert_eq!(fs.meta().stats().unwrap().blobs, 0);
}

fn directories_links_and_nlink(b: Backend) {
    let fs = b.fs();
    let c = Caller::ROOT;
    let d = fs.mkdir(ROOT, b"d", 0o755, c).unwrap();
    let sub = fs.mkdir(d.ino, b"sub", 0o755, c).unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 3);
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
    let (f, fh) = fs.create(d.ino, b"f", 0o600, c).unwrap();
    fs.release(fh).unwrap();
    fs.link(f.ino, ROOT, b"hard").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    assert!(matches!(
        fs.link(d.ino, ROOT, b"x"),
        Err(FsError::NotPermitted)
    ));
    assert!(matches!(fs.rmdir(ROOT, b"d"), Err(FsError::NotEmpty)));
    assert!(matches!(
        fs.mkdir(ROOT, b"d", 0o755, c),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        fs.mkdir(ROOT, &[b'x'; 256], 0o755, c),
        Err(FsError::NameTooLong)
    ));
    let s = fs.symlink(ROOT, b"ln", b"d/f", c).unwrap();
    assert_eq!(fs.readlink(s.ino).unwrap(), b"d/f");
    assert_eq!(fs.resolve("/d/sub").unwrap().kind, FileKind::Dir);
    assert_eq!(fs.path_of(sub.ino).unwrap(), "/d/sub");
    assert!(["/d/f", "/hard"].contains(&fs.path_of(f.ino).unwrap().as_str()));
}

fn rename_rules(b: Backend) {
    let fs = b.fs();
    let c = Caller::ROOT;
    let a = fs.mkdir(ROOT, b"a", 0o755, c).unwrap();
    let b = fs.mkdir(ROOT, b"b", 0o755, c).unwrap();
    let (f, fh) = fs.create(a.ino, b"f", 0o644, c).unwrap();
    fs.release(fh).unwrap();
    let (g, fh) = fs.create(b.ino, b"g", 0o644, c).unwrap();
    fs.release(fh).unwrap();
    // Over an existing file: the old one goes.
    fs.rename(a.ino, b"f", b.ino, b"g", 0).unwrap();
    assert_eq!(fs.lookup(b.ino, b"g").unwrap().ino, f.ino);
    assert!(matches!(fs.getattr(g.ino), Err(FsError::Stale)));
    // NOREPLACE refuses, EXCHANGE swaps.
    let (h, fh) = fs.create(a.ino, b"h", 0o644, c).unwrap();
    fs.release(fh).unwrap();
    assert!(matches!(
        fs.rename(a.ino, b"h", b.ino, b"g", libc::RENAME_NOREPLACE),
        Err(FsError::Exists)
    ));
    fs.rename(a.ino, b"h", b.ino, b"g", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs.lookup(b.ino, b"g").unwrap().ino, h.ino);
    assert_eq!(fs.lookup(a.ino, b"h").unwrap().ino, f.ino);
    // A directory cannot move into itself; moving updates link counts.
    assert!(matches!(
        fs.rename(ROOT, b"a", a.ino, b"x", 0),
        Err(FsError::Invalid(_))
    ));
    fs.rename(ROOT, b"a", b.ino, b"a", 0).unwrap();
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    // Over an empty directory works, over a non-empty one does not.
    fs.mkdir(ROOT, b"e", 0o755, c).unwrap();
    assert!(matches!(fs.rename(ROOT, b"b", ROOT, b"e", 0), Ok(())));
    assert!(matches!(
        fs.rename(ROOT, b"b", ROOT, b"e", 0),
        Err(FsError::NotFound)
    ));
    let m = fs.meta();
    assert!(
        m.consistency_problems().unwrap().is_empty(),
        "{:?}",
        m.consistency_problems()
    );
}

fn xattrs(b: Backend) {
    let fs = b.fs();
    let (f, fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
    fs.release(fh).unwrap();
    fs.setxattr(f.ino, b"user.colour", b"blue", 0).unwrap();
    assert_eq!(fs.getxattr(f.ino, b"user.colour").unwrap(), b"blue");
    assert!(matches!(
        fs.setxattr(f.ino, b"user.colour", b"red", libc::XATTR_CREATE),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        fs.setxattr(f.ino, b"user.size", b"1", libc::XATTR_REPLACE),
        Err(FsError::NoAttr)
    ));
    for other in [
        &b"trusted.x"[..],
        b"security.selinux",
        b"system.posix_acl_access",
    ] {
        assert!(matches!(
            fs.setxattr(f.ino, other, b"1", 0),
            Err(FsError::NotSupported)
        ));
        assert!(matches!(
            fs.getxattr(f.ino, other),
            Err(FsError::NotSupported)
        ));
        assert!(matches!(
            fs.removexattr(f.ino, other),
            Err(FsError::NotSupported)
        ));
    }
    assert_eq!(fs.listxattr(f.ino).unwrap(), b"user.colour\0");
    fs.removexattr(f.ino, b"user.colour").unwrap();
    assert!(matches!(
        fs.getxattr(f.ino, b"user.colour"),
        Err(FsError::NoAttr)
    ));
}

/// A store on disk with the mount's group commit, and a second, read-only
/// connection that sees only what is committed.
fn grouped_store(window: Duration) -> (tempfile::TempDir, crate::store::Store, Meta) {
    let t = tempfile::tempdir().unwrap();
    let s = crate::store::open(
        t.path(),
        crate::store::Access::Write {
            purpose: "test".into(),
            recover: true,
        },
        true,
    )
    .unwrap();
    s.fs.start_group_commit(window).unwrap();
    let reader = Meta::open_read_only(&t.path().join(crate::store::DB_FILE)).unwrap();
    (t, s, reader)
}

#[test]
fn group_commit_holds_changes_until_due_and_frees_clusters_after() {
    let (_t, s, reader) = grouped_store(Duration::from_secs(3600));
    let fs = &s.fs;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (a, fh) = fs.create(ROOT, b"big", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, &big).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    fs.mkdir(ROOT, b"d", 0o755, Caller::ROOT).unwrap();
    // A failing change inside the batch undoes only itself.
    assert!(matches!(
        fs.mkdir(ROOT, b"d", 0o755, Caller::ROOT),
        Err(FsError::Exists)
    ));
    // This connection sees everything; another one nothing yet.
    assert_eq!(read_all(fs, a.ino), big);
    assert!(reader.lookup(ROOT, b"big").unwrap().is_none());
    assert!(reader.lookup(ROOT, b"d").unwrap().is_none());
    fs.settle().unwrap();
    assert_eq!(reader.lookup(ROOT, b"big").unwrap().unwrap().size, 300_000);
    assert!(reader.lookup(ROOT, b"d").unwrap().is_some());

    // The clusters of a removed file stay allocated until its removal is
    // committed and durable (here the commit thread ticks every half hour:
    // `sync_all` runs the barrier).
    let used = used_units(fs);
    assert!(used > 0);
    fs.unlink(ROOT, b"big").unwrap();
    assert_eq!(used_units(fs), used);
    assert!(reader.lookup(ROOT, b"big").unwrap().is_some());
    fs.settle().unwrap();
    assert!(reader.lookup(ROOT, b"big").unwrap().is_none());
    assert_eq!(used_units(fs), used, "freed before the unlink was durable");
    fs.sync_all().unwrap();
    assert!(
        used_units(fs) < used,
        "the released clusters were not freed"
    );
}

#[test]
fn group_commit_thread_commits_within_the_window_and_fsync_at_once() {
    let (_t, s, reader) = grouped_store(Duration::from_millis(20));
    let fs = &s.fs;
    fs.mkdir(ROOT, b"soon", 0o755, Caller::ROOT).unwrap();
    let start = std::time::Instant::now();
    while reader.lookup(ROOT, b"soon").unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(2), "never committed");
        std::thread::sleep(Duration::from_millis(2));
    }
    // fsync commits (and syncs) everything before it at once.
    s.fs.stop_group_commit().unwrap();
    s.fs.start_group_commit(Duration::from_secs(3600)).unwrap();
    fs.mkdir(ROOT, b"first", 0o755, Caller::ROOT).unwrap();
    let (_, fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, b"abc").unwrap();
    assert!(reader.lookup(ROOT, b"first").unwrap().is_none());
    fs.fsync(fh).unwrap();
    assert!(reader.lookup(ROOT, b"first").unwrap().is_some());
    assert_eq!(reader.lookup(ROOT, b"f").unwrap().unwrap().size, 3);
    fs.release(fh).unwrap();
}

fn attribute_changes_join_unsaved_writes(b: Backend) {
    let fs = b.fs();
    let (a, fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, b"hello").unwrap();
    let old = 1_000_000_000_123_456_789i64;
    let set = SetAttr {
        mtime: Some(SetTime::At(old)),
        atime: Some(SetTime::At(old - 5)),
        ..Default::default()
    };
    fs.setattr(a.ino, &set).unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        uid: Some(5),
        gid: Some(6),
        ..Default::default()
    };
    let got = fs.setattr(a.ino, &chmod).unwrap();
    // Seen at once, committed only with the data.
    assert_eq!((got.perm, got.uid, got.gid, got.size), (0o600, 5, 6, 5));
    assert_eq!((got.mtime, got.atime), (old, old - 5));
    let row = fs.meta().inode(a.ino).unwrap().unwrap();
    assert_eq!((row.perm, row.size), (0o644, 0));
    fs.release(fh).unwrap();
    let row = fs.meta().inode(a.ino).unwrap().unwrap();
    assert_eq!((row.perm, row.uid, row.gid, row.size), (0o600, 5, 6, 5));
    assert_eq!(
        (row.mtime, row.atime),
        (old, old - 5),
        "an explicit mtime is kept"
    );
    assert_eq!(read_all(&fs, a.ino), b"hello");

    // A write after an explicit mtime replaces it; a closed file's change
    // is committed at once.
    let fh = fs.open(a.ino).unwrap();
    fs.write(fh, 0, b"x").unwrap();
    fs.setattr(a.ino, &set).unwrap();
    fs.write(fh, 5, b"!").unwrap();
    fs.release(fh).unwrap();
    let row = fs.meta().inode(a.ino).unwrap().unwrap();
    assert!(row.mtime > old);
    assert_eq!(read_all(&fs, a.ino), b"xello!");
    fs.setattr(a.ino, &chmod_to(0o640)).unwrap();
    assert_eq!(fs.meta().inode(a.ino).unwrap().unwrap().perm, 0o640);
}

fn chmod_to(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..Default::default()
    }
}

/// A cluster device whose `sync` fails while `fail` is set (an I/O error or
/// a full disk at writeback).
struct FlakyDevice {
    inner: MemDevice,
    fail: Arc<AtomicBool>,
    syncs: Arc<AtomicU64>,
}

impl crate::qvfs::Device for FlakyDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn sync(&self) -> std::io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// A filesystem whose cluster device can fail its syncs; group commit on
/// (with a window long enough that only the test commits) when `grouped`.
fn flaky_fs(grouped: bool) -> (Arc<Fs>, Arc<AtomicBool>, Arc<AtomicU64>) {
    let fail = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let qfd = FlakyDevice {
        inner: MemDevice::default(),
        fail: fail.clone(),
        syncs: syncs.clone(),
    };
    let fs = Arc::new(fs_on(Box::new(qfd), Tuning::default()));
    if grouped {
        fs.start_group_commit(Duration::from_secs(3600)).unwrap();
    }
    (fs, fail, syncs)
}

fn write_file(fs: &Fs, name: &[u8], data: &[u8]) -> Result<u64> {
    let (a, fh) = fs.create(ROOT, name, 0o644, Caller::ROOT)?;
    fs.write(fh, 0, data)?;
    let r = fs.flush(fh);
    fs.release(fh)?;
    r.map(|_| a.ino)
}

#[test]
fn with_group_commit_blob_bytes_sync_once_per_group_and_a_failed_sync_rolls_the_group_back() {
    let (fs, fail, syncs) = flaky_fs(true);
    let big = |seed: u8| -> Vec<u8> { (0..200_000u32).map(|i| (i as u8) ^ seed).collect() };
    // Closing files does not sync the container; the group's commit does, once.
    let before = syncs.load(Ordering::SeqCst);
    let a = write_file(&fs, b"a", &big(1)).unwrap();
    write_file(&fs, b"b", &big(2)).unwrap();
    assert_eq!(syncs.load(Ordering::SeqCst), before);
    fs.settle().unwrap();
    assert_eq!(syncs.load(Ordering::SeqCst), before + 1);
    assert_eq!(read_all(&fs, a), big(1));

    // A failed sync: the group that refers to the unsynced bytes is rolled
    // back (the file and its name), and the failure is reported.
    let used = used_units(&fs);
    write_file(&fs, b"c", &big(3)).unwrap();
    fs.mkdir(ROOT, b"d", 0o755, Caller::ROOT).unwrap();
    fail.store(true, Ordering::SeqCst);
    assert!(matches!(fs.settle(), Err(FsError::Io(_))));
    fail.store(false, Ordering::SeqCst);
    assert!(matches!(fs.lookup(ROOT, b"c"), Err(FsError::NotFound)));
    assert!(matches!(fs.lookup(ROOT, b"d"), Err(FsError::NotFound)));
    // What was committed before is untouched, and the store goes on.
    assert_eq!(read_all(&fs, a), big(1));
    let e = write_file(&fs, b"e", &big(4)).unwrap();
    fs.settle().unwrap();
    assert_eq!(read_all(&fs, e), big(4));
    // The rolled-back file's clusters are orphans until gc or the next
    // start (they were never referenced), not reused under a live blob.
    assert!(used_units(&fs) > used);

    // fsync reports a failed sync; the group it would have made durable
    // (here the file's creation and data) is rolled back, not kept as if safe.
    let (_, fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, &big(5)).unwrap();
    fail.store(true, Ordering::SeqCst);
    assert!(matches!(fs.fsync(fh), Err(FsError::Io(_))));
    fail.store(false, Ordering::SeqCst);
    fs.release(fh).unwrap();
    assert!(matches!(fs.lookup(ROOT, b"f"), Err(FsError::NotFound)));
    let g = write_file(&fs, b"g", &big(6)).unwrap();
    fs.sync_all().unwrap();
    assert_eq!(read_all(&fs, g), big(6));
    assert_eq!(read_all(&fs, a), big(1));
    fs.stop_group_commit().unwrap();
}

#[test]
fn without_group_commit_a_failed_sync_fails_the_close_and_keeps_the_bytes_for_a_retry() {
    let (fs, fail, _) = flaky_fs(false);
    let data: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    let (f, fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, &data).unwrap();
    fail.store(true, Ordering::SeqCst);
    assert!(matches!(fs.flush(fh), Err(FsError::Io(_))));
    assert_eq!(fs.meta().inode(f.ino).unwrap().unwrap().size, 0);
    fail.store(false, Ordering::SeqCst);
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(read_all(&fs, f.ino), data);
}

/// One operation of the data-path model test.
#[derive(Debug, Clone)]
enum DataOp {
    Write { off: u64, len: usize, seed: u8 },
    Read { off: u64, len: u32 },
    Truncate(u64),
    Punch { off: u64, len: u64 },
    Zero { off: u64, len: u64, keep: bool },
    Alloc { off: u64, len: u64, keep: bool },
    Commit,
    Reopen,
    SeekData(u64),
    SeekHole(u64),
}

fn data_op() -> impl proptest::strategy::Strategy<Value = DataOp> {
    use proptest::prelude::*;
    // Offsets cluster around chunk edges and small sizes, with a few far out.
    let off = prop_oneof![
        0u64..300_000,
        (0u64..8).prop_map(|k| k * 65_536),
        (0u64..8).prop_flat_map(|k| (k * 65_536).saturating_sub(3)..k * 65_536 + 3),
        (1u64 << 30)..(1u64 << 30) + 200_000,
    ];
    prop_oneof![
        (off.clone(), 0usize..140_000, any::<u8>()).prop_map(|(off, len, seed)| DataOp::Write {
            off,
            len,
            seed
        }),
        (off.clone(), 0u32..200_000).prop_map(|(off, len)| DataOp::Read { off, len }),
        off.clone().prop_map(DataOp::Truncate),
        (off.clone(), 1u64..200_000).prop_map(|(off, len)| DataOp::Punch { off, len }),
        (off.clone(), 1u64..200_000, any::<bool>()).prop_map(|(off, len, keep)| DataOp::Zero {
            off,
            len,
            keep
        }),
        (off.clone(), 1u64..200_000, any::<bool>()).prop_map(|(off, len, keep)| DataOp::Alloc {
            off,
            len,
            keep
        }),
        Just(DataOp::Commit),
        Just(DataOp::Reopen),
        off.clone().prop_map(DataOp::SeekData),
        off.prop_map(DataOp::SeekHole),
    ]
}

/// A sparse model file: 4 KiB pages, absent pages are zeros.
#[derive(Default)]
struct Model {
    pages: BTreeMap<u64, Vec<u8>>,
    size: u64,
}

impl Model {
    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let p = off + i as u64;
            self.pages.entry(p / 4096).or_insert_with(|| vec![0; 4096])[(p % 4096) as usize] = b;
        }
        self.size = self.size.max(off + data.len() as u64);
    }
    fn zero(&mut self, off: u64, end: u64) {
        let end = end.min(self.size);
        let mut p = off;
        while p < end {
            let pg = p / 4096;
            let to = ((pg + 1) * 4096).min(end);
            if let Some(v) = self.pages.get_mut(&pg) {
                v[(p % 4096) as usize..(to - pg * 4096) as usize].fill(0);
            }
            p = to;
        }
    }
    fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.zero(size, self.size);
        }
        self.size = size;
    }
    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        let end = (off + len).min(self.size).max(off);
        let mut out = vec![0u8; (end - off) as usize];
        for (&pg, v) in self.pages.range(off / 4096..end.div_ceil(4096)) {
            let (ps, pe) = (pg * 4096, pg * 4096 + 4096);
            let (from, to) = (ps.max(off), pe.min(end));
            if from < to {
                out[(from - off) as usize..(to - off) as usize]
                    .copy_from_slice(&v[(from - ps) as usize..(to - ps) as usize]);
            }
        }
        out
    }
    fn is_zero(&self, from: u64, to: u64) -> bool {
        self.pages
            .range(from / 4096..to.div_ceil(4096))
            .all(|(&pg, v)| {
                let (ps, pe) = (pg * 4096, pg * 4096 + 4096);
                let (a, b) = (ps.max(from), pe.min(to));
                a >= b
                    || v[(a - ps) as usize..(b - ps) as usize]
                        .iter()
                        .all(|&x| x == 0)
            })
    }
}

fn pattern_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]

    /// Every read of any shape of file at any offset returns the model's
    /// bytes; sizes, SEEK_DATA/SEEK_HOLE and st_blocks stay consistent;
    /// the store stays consistent (fsck-style checks) after each run.
    #[test]
    fn data_path_matches_a_model(
        ops in proptest::collection::vec(data_op(), 1..40),
        disk in proptest::bool::ANY,
    ) {
        let b = if disk { Backend::Disk } else { Backend::Memory };
        let fs = b.fs_with(Tuning { dirty_limit: 300_000, ..Tuning::default() });
        let (a, mut fh) = fs.create(ROOT, b"f", 0o644, Caller::ROOT).unwrap();
        let mut model = Model::default();
        for op in &ops {
            match op {
                DataOp::Write { off, len, seed } => {
                    let d = pattern_bytes(*seed, *len);
                    fs.write(fh, *off, &d).unwrap();
                    model.write(*off, &d);
                }
                DataOp::Read { off, len } => {
                    let got = fs.read(fh, *off, *len).unwrap();
                    proptest::prop_assert_eq!(got, model.read(*off, *len as u64), "{:?}", op);
                }
                DataOp::Truncate(size) => {
                    fs.setattr(a.ino, &SetAttr { size: Some(*size), ..Default::default() }).unwrap();
                    model.truncate(*size);
                }
                DataOp::Punch { off, len } => {
                    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                    fs.fallocate(fh, *off, *len, mode).unwrap();
                    model.zero(*off, off + len);
                }
                DataOp::Zero { off, len, keep } => {
                    let mut mode = libc::FALLOC_FL_ZERO_RANGE;
                    if *keep { mode |= libc::FALLOC_FL_KEEP_SIZE; }
                    fs.fallocate(fh, *off, *len, mode).unwrap();
                    model.zero(*off, off + len);
                    if !*keep { model.size = model.size.max(off + len); }
                }
                DataOp::Alloc { off, len, keep } => {
                    let mode = if *keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                    fs.fallocate(fh, *off, *len, mode).unwrap();
                    if !*keep { model.size = model.size.max(off + len); }
                }
                DataOp::Commit => fs.flush(fh).unwrap(),
                DataOp::Reopen => {
                    fs.release(fh).unwrap();
                    fh = fs.open(a.ino).unwrap();
                }
                DataOp::SeekData(off) => match fs.seek_data(fh, *off, false) {
                    Ok(d) => {
                        proptest::prop_assert!(d >= *off && d < model.size);
                        proptest::prop_assert!(model.is_zero(*off, d));
                    }
                    Err(FsError::NoSuchOffset) => {
                        proptest::prop_assert!(*off >= model.size || model.is_zero(*off, model.size));
                    }
                    Err(e) => proptest::prop_assert!(false, "{e}"),
                },
                DataOp::SeekHole(off) => match fs.seek_data(fh, *off, true) {
                    Ok(h) => {
                        proptest::prop_assert!(h >= *off && h <= model.size);
                        let chunk_end = (h / 65_536 + 1) * 65_536;
                        proptest::prop_assert!(h == model.size || model.is_zero(h, chunk_end.min(model.size)));
                    }
                    Err(FsError::NoSuchOffset) => proptest::prop_assert!(*off >= model.size),
                    Err(e) => proptest::prop_assert!(false, "{e}"),
                },
            }
            proptest::prop_assert_eq!(fs.getattr(a.ino).unwrap().size, model.size);
        }
        fs.release(fh).unwrap();
        let st = fs.getattr(a.ino).unwrap();
        proptest::prop_assert_eq!(st.size, model.size);
        // st_blocks counts stored bytes only: at most one chunk per 64 KiB
        // of model data (rounded up to whole pages of the model).
        let held = model.pages.values().filter(|p| p.iter().any(|&b| b != 0)).count() as u64;
        proptest::prop_assert!(st.blocks <= (held * 4096).div_ceil(512) + 8 * 128, "{} blocks for {held} pages", st.blocks);
        // Every page the model holds, and the chunk edges around it, read
        // back cold (a whole read of a 1 GiB sparse file is not needed).
        let fh = fs.open(a.ino).unwrap();
        let mut probes: Vec<u64> = model.pages.keys().map(|p| p * 4096).collect();
        probes.extend([0, model.size.saturating_sub(70_000)]);
        for off in probes {
            let off = off.saturating_sub(5000);
            let got = fs.read(fh, off, 80_000).unwrap();
            proptest::prop_assert!(got == model.read(off, 80_000), "cold read at {off}");
        }
        fs.release(fh).unwrap();
        let m = fs.meta();
        proptest::prop_assert!(m.consistency_problems().unwrap().is_empty());
    }
}

fn huge_sparse_truncate_is_cheap_and_past_the_maximum_is_efbig(b: Backend) {
    let fs = b.fs();
    let (a, fh) = fs.create(ROOT, b"big", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, b"head").unwrap();
    fs.release(fh).unwrap();
    let t = std::time::Instant::now();
    let set = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    fs.setattr(a.ino, &set(999_999_999_999_999)).unwrap();
    let fh = fs.open(a.ino).unwrap();
    fs.write(fh, 999_999_999_999_000, b"tail").unwrap();
    fs.release(fh).unwrap();
    // Not a timing assertion of speed, a guard against work per chunk index
    // of the size (15 billion of them): that would take hours, not seconds.
    assert!(t.elapsed() < Duration::from_secs(20));
    let i = fs.getattr(a.ino).unwrap();
    assert_eq!(i.size, 999_999_999_999_999);
    // Two chunks at most (the tail chunk holds the zeros before "tail").
    assert!(i.blocks <= 256, "{} blocks", i.blocks);
    assert!(matches!(
        fs.setattr(a.ino, &set(FILE_MAX + 1)),
        Err(FsError::TooBig)
    ));
    assert!(fs.setattr(a.ino, &set(FILE_MAX)).is_ok());
    let fh = fs.open(a.ino).unwrap();
    assert!(matches!(fs.write(fh, FILE_MAX, b"x"), Err(FsError::TooBig)));
    assert_eq!(fs.seek_data(fh, 5, true).unwrap(), 65_536);
    fs.release(fh).unwrap();
}

fn reads_past_a_short_chunk_return_zeros(b: Backend) {
    // The shape that panicked the mount: a short inline chunk, then a
    // short chunk far out, then a buffered read of everything.
    let fs = b.fs();
    let (a, fh) = fs.create(ROOT, b"s", 0o644, Caller::ROOT).unwrap();
    fs.write(fh, 0, &[7u8; 100]).unwrap();
    fs.release(fh).unwrap();
    let fh = fs.open(a.ino).unwrap();
    fs.write(fh, 1 << 20, &[9u8; 4095]).unwrap();
    // Dirty buffer shorter than the read offset within it.
    let d = fs.read(fh, (1 << 20) + 5000, 4096).unwrap();
    assert!(d.iter().all(|&b| b == 0) && d.is_empty() || d.len() <= 4096);
    fs.release(fh).unwrap();
    let all = read_all(&fs, a.ino);
    assert_eq!(all.len(), (1 << 20) + 4095);
    assert!(all[..100].iter().all(|&b| b == 7));
    assert!(all[100..1 << 20].iter().all(|&b| b == 0));
    assert!(all[1 << 20..].iter().all(|&b| b == 9));
    let fh = fs.open(a.ino).unwrap();
    assert!(fs.read(fh, 200, 65_536).unwrap().iter().all(|&b| b == 0));
    fs.release(fh).unwrap();
}

fn inode_numbers_are_not_reused_within_a_mount(b: Backend) {
    let fs = b.fs();
    let mut seen = HashSet::new();
    for i in 0..300 {
        let name = format!("f{i}");
        let (a, fh) = fs
            .create(ROOT, name.as_bytes(), 0o644, Caller::ROOT)
            .unwrap();
        fs.release(fh).unwrap();
        assert!(seen.insert(a.ino), "inode {} handed out twice", a.ino);
        fs.unlink(ROOT, name.as_bytes()).unwrap();
    }
}

/// Runs each named test above on every [`Backend`] (the query folders'
/// tests use it too).
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(super::Backend::Memory) } )*
        }
        mod disk {
            $( #[test] fn $name() { super::$name(super::Backend::Disk) } )*
        }
    };
}
pub(crate) use on_every_backend;

on_every_backend!(
    write_read_across_chunks_and_commits,
    holes_read_as_zeros_and_truncate_trims,
    identical_content_is_stored_once_and_freed_with_the_last_copy,
    unlinked_open_file_lives_until_release,
    directories_links_and_nlink,
    rename_rules,
    xattrs,
    attribute_changes_join_unsaved_writes,
    huge_sparse_truncate_is_cheap_and_past_the_maximum_is_efbig,
    reads_past_a_short_chunk_return_zeros,
    inode_numbers_are_not_reused_within_a_mount,
);
