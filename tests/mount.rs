//! End-to-end tests through a real FUSE mount.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::util::*;

fn rename2(a: &Path, b: &Path, flags: u32) -> Result<(), i32> {
    // SAFETY: valid C strings; AT_FDCWD.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(a).as_ptr(),
            libc::AT_FDCWD,
            c(b).as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

#[test]
fn files_dirs_links_and_attributes() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    let root = &m.mp;

    // Create, write, read, append.
    fs::write(m.path("a.txt"), b"hello").unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path("a.txt"))
        .unwrap();
    f.write_all(b", world").unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"hello, world");

    // Directories and their link counts.
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("d/sub1")).unwrap();
    fs::create_dir(m.path("d/sub2")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 4);
    assert_eq!(fs::metadata(root).unwrap().nlink(), 3);
    assert_eq!(
        fs::create_dir(m.path("d")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sub1", "sub2"]);
    fs::write(m.path("d/sub1/x"), b"x").unwrap();
    assert_eq!(
        fs::remove_dir(m.path("d/sub1")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir(m.path("d/sub2")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);

    // chmod, chown, utimes with explicit times and with "now", truncate.
    fs::set_permissions(m.path("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.path("a.txt")).unwrap().mode() & 0o7777,
        0o640
    );
    std::os::unix::fs::chown(m.path("a.txt"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(m.path("a.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 987_654_321,
        },
    ];
    assert_eq!(
        // SAFETY: valid path and array of two timespecs.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c(&m.path("a.txt")).as_ptr(),
                times.as_ptr(),
                0,
            )
        },
        0
    );
    let md = fs::metadata(m.path("a.txt")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 987_654_321));
    let now = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    assert_eq!(
        // SAFETY: as above.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c(&m.path("a.txt")).as_ptr(),
                now.as_ptr(),
                0,
            )
        },
        0
    );
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((fs::metadata(m.path("a.txt")).unwrap().mtime() - wall).abs() < 5);
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("a.txt"))
        .unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"hello");

    // Hard links and their count; symlinks.
    fs::hard_link(m.path("a.txt"), m.path("d/hard")).unwrap();
    assert_eq!(fs::metadata(m.path("a.txt")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.path("d/hard")).unwrap().ino(),
        fs::metadata(m.path("a.txt")).unwrap().ino()
    );
    fs::write(m.path("d/hard"), b"through the link").unwrap();
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"through the link");
    fs::remove_file(m.path("a.txt")).unwrap();
    assert_eq!(fs::metadata(m.path("d/hard")).unwrap().nlink(), 1);
    std::os::unix::fs::symlink("d/hard", m.path("sym")).unwrap();
    assert_eq!(
        fs::read_link(m.path("sym")).unwrap().to_str(),
        Some("d/hard")
    );
    assert_eq!(fs::read(m.path("sym")).unwrap(), b"through the link");
    assert!(fs::symlink_metadata(m.path("sym"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Special files through mknod.
    for (name, mode, dev) in [
        ("fifo", libc::S_IFIFO | 0o644, 0),
        ("sock", libc::S_IFSOCK | 0o644, 0),
        ("chr", libc::S_IFCHR | 0o600, libc::makedev(1, 3)),
        ("blk", libc::S_IFBLK | 0o600, libc::makedev(7, 0)),
    ] {
        assert_eq!(
            // SAFETY: valid path.
            unsafe { libc::mknod(c(&m.path(name)).as_ptr(), mode, dev) },
            0,
            "mknod {name}: {}",
            errno()
        );
    }
    let ft = |n: &str| fs::symlink_metadata(m.path(n)).unwrap().file_type();
    assert!(
        ft("fifo").is_fifo()
            && ft("sock").is_socket()
            && ft("chr").is_char_device()
            && ft("blk").is_block_device()
    );
    assert_eq!(
        fs::metadata(m.path("chr")).unwrap().rdev(),
        libc::makedev(1, 3)
    );

    // Renames: plain, over a file, NOREPLACE, EXCHANGE, over an empty dir, into itself.
    fs::write(m.path("r1"), b"one").unwrap();
    fs::write(m.path("r2"), b"two").unwrap();
    fs::rename(m.path("r1"), m.path("r2")).unwrap();
    assert_eq!(fs::read(m.path("r2")).unwrap(), b"one");
    assert!(!m.path("r1").exists());
    fs::write(m.path("r3"), b"three").unwrap();
    assert_eq!(
        rename2(&m.path("r3"), &m.path("r2"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    rename2(&m.path("r3"), &m.path("r2"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("r2")).unwrap(), b"three");
    assert_eq!(fs::read(m.path("r3")).unwrap(), b"one");
    fs::create_dir(m.path("empty")).unwrap();
    fs::create_dir(m.path("moving")).unwrap();
    fs::rename(m.path("moving"), m.path("empty")).unwrap();
    assert!(!m.path("moving").exists() && m.path("empty").is_dir());
    assert_eq!(
        fs::rename(m.path("d"), m.path("d/sub1/in"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        fs::rename(m.path("r2"), m.path("d"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EISDIR)
    );
    fs::rename(m.path("d/sub1"), m.path("empty/sub1")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.path("empty")).unwrap().nlink(), 3);

    // Extended attributes in the user namespace.
    let p = m.path("r2");
    setxattr(&p, "user.colour", b"blue", 0).unwrap();
    setxattr(&p, "user.empty", b"", 0).unwrap();
    assert_eq!(getxattr(&p, "user.colour").unwrap(), b"blue");
    assert_eq!(getxattr(&p, "user.empty").unwrap(), b"");
    assert_eq!(
        setxattr(&p, "user.colour", b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&p, "user.nope", b"x", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(getxattr(&p, "user.missing"), Err(libc::ENODATA));
    // Other namespaces are not supported, as on a filesystem without them
    // (and `ls -l` then stops asking for labels and ACLs on this mount).
    for other in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(getxattr(&p, other), Err(libc::EOPNOTSUPP), "{other}");
    }
    // (An ACL value is parsed by the kernel first, so only these two reach us.)
    for other in ["security.selinux", "trusted.x"] {
        assert_eq!(
            setxattr(&p, other, b"x", 0),
            Err(libc::EOPNOTSUPP),
            "{other}"
        );
    }
    let mut l = listxattr(&p);
    l.sort();
    assert_eq!(l, ["user.colour", "user.empty"]);
    let n = CString::new("user.colour").unwrap();
    // SAFETY: valid strings.
    assert_eq!(unsafe { libc::removexattr(c(&p).as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(getxattr(&p, "user.colour"), Err(libc::ENODATA));
    // The setfattr/getfattr tools use the same calls.
    if Command::new("setfattr").arg("--version").output().is_ok() {
        let st = Command::new("setfattr")
            .args(["-n", "user.tool", "-v", "yes"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new("getfattr")
            .args(["--only-values", "-n", "user.tool"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"yes");
    }

    // Names too long, statfs, access.
    let long = "x".repeat(256);
    assert_eq!(
        fs::write(m.path(&long), b"").unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    // SAFETY: a plain C struct, filled by statvfs below.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c(root).as_ptr(), &mut sv) }, 0);
    assert!(sv.f_blocks > 0 && sv.f_namemax == 255);
    assert_eq!(
        // SAFETY: valid path.
        unsafe { libc::access(c(&m.path("r2")).as_ptr(), libc::R_OK | libc::W_OK) },
        0
    );
    drop(m);
}

#[test]
fn persistence_across_remount_with_stable_inodes() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::new(t.path());
    fs::create_dir_all(m.path("x/y")).unwrap();
    let data = pattern(1, 3_000_000);
    fs::write(m.path("x/y/big"), &data).unwrap();
    fs::write(m.path("small"), b"tiny").unwrap();
    std::os::unix::fs::symlink("x/y/big", m.path("link")).unwrap();
    setxattr(&m.path("small"), "user.k", b"v", 0).unwrap();
    let ino = fs::metadata(m.path("x/y/big")).unwrap().ino();
    let mtime = fs::metadata(m.path("x/y/big")).unwrap().mtime_nsec();
    m.remount();
    assert_eq!(fs::read(m.path("x/y/big")).unwrap(), data);
    assert_eq!(fs::read(m.path("small")).unwrap(), b"tiny");
    assert_eq!(
        fs::read_link(m.path("link")).unwrap().to_str(),
        Some("x/y/big")
    );
    assert_eq!(getxattr(&m.path("small"), "user.k").unwrap(), b"v");
    assert_eq!(fs::metadata(m.path("x/y/big")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(m.path("x/y/big")).unwrap().mtime_nsec(), mtime);
    m.stop();
    let out = qfs(&m.store, &["fsck", "--verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn big_file_in_odd_pieces_and_sparse_files() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::new(t.path());
    // 256 MiB written in pieces of odd sizes.
    let total: usize = 256 << 20;
    let sizes = [4093usize, 65_537, 1_000_003, 7, 131_071, 333_333];
    let mut h = blake3::Hasher::new();
    {
        let mut f = File::create(m.path("big")).unwrap();
        let mut done = 0usize;
        let mut i = 0u64;
        while done < total {
            let n = sizes[i as usize % sizes.len()].min(total - done);
            let piece = pattern(i, n);
            f.write_all(&piece).unwrap();
            h.update(&piece);
            done += n;
            i += 1;
        }
        f.sync_all().unwrap();
    }
    let want = h.finalize();
    assert_eq!(fs::metadata(m.path("big")).unwrap().len(), total as u64);
    assert_eq!(hash_file(&m.path("big")), want);

    // Sparse: write far past the end; the gap reads as zeros.
    {
        let mut f = File::create(m.path("sparse")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(50_000_000)).unwrap();
        f.write_all(b"tail").unwrap();
    }
    let mut f = File::open(m.path("sparse")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 50_000_004);
    let mut mid = vec![1u8; 1 << 20];
    f.seek(SeekFrom::Start(20_000_000)).unwrap();
    f.read_exact(&mut mid).unwrap();
    assert!(mid.iter().all(|&b| b == 0));
    drop(f);
    // A hole costs nothing: far less stored than the logical size.
    m.remount();
    assert_eq!(hash_file(&m.path("big")), want);
    let sparse = fs::read(m.path("sparse")).unwrap();
    assert_eq!(&sparse[..4], b"head");
    assert_eq!(&sparse[50_000_000..], b"tail");
    m.stop();
    let info = info_json(&m.store);
    let stored = info["stored_bytes"].as_u64().unwrap();
    assert!(stored < total as u64 + (1 << 20), "stored {stored}");
}

#[test]
fn ten_thousand_files_listed_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..10_000 {
        fs::write(m.path(&format!("many/f{i:05}")), format!("{i}")).unwrap();
    }
    let names: Vec<_> = fs::read_dir(m.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 10_000);
    assert_eq!(fs::read(m.path("many/f04321")).unwrap(), b"4321");
    for n in &names {
        fs::remove_file(m.path("many").join(n)).unwrap();
    }
    assert_eq!(fs::read_dir(m.path("many")).unwrap().count(), 0);
    fs::remove_dir(m.path("many")).unwrap();
}

#[test]
fn identical_content_is_stored_once() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::new(t.path());
    let data = pattern(99, 64 << 20);
    fs::write(m.path("copy1"), &data).unwrap();
    fs::copy(m.path("copy1"), m.path("copy2")).unwrap();
    m.stop();
    let info = info_json(&m.store);
    assert_eq!(info["logical_bytes"].as_u64().unwrap(), 128 << 20);
    let stored = info["stored_bytes"].as_u64().unwrap();
    // Two copies cost about one.
    assert!(stored <= (64 << 20) + (64 << 20) / 100, "stored {stored}");
    assert!(info["dedup_ratio"].as_f64().unwrap() > 1.98);
}

#[test]
fn a_second_writer_is_refused_while_mounted() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    fs::write(m.path("f"), b"data").unwrap();
    let src = t.path().join("src.txt");
    fs::write(&src, b"x").unwrap();
    // A command that changes the store goes through the mount (one writer).
    qfs_ok(&m.store, &["put", src.to_str().unwrap(), "/"]);
    assert_eq!(fs::read(m.path("src.txt")).unwrap(), b"x");
    // gc needs the store itself: refused, saying how.
    let o = qfs(&m.store, &["gc"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&m.mp.display().to_string()), "{err}");
    assert!(err.contains("queryfs umount"), "{err}");
    // A second mount of the same store is refused, naming the holder.
    let other = t.path().join("mnt2");
    let o = std::process::Command::new(bin())
        .arg("--store")
        .arg(&m.store)
        .arg("mount")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("pid {}", m.pid())), "{err}");
    assert!(err.contains(&m.mp.display().to_string()), "{err}");
    assert!(!is_mounted(&other));
    // Readers may look while it is mounted: they see what is committed, so
    // a file once it is fsync'd, and any file within the group-commit window.
    std::fs::File::open(m.path("f"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(qfs_ok(&m.store, &["cat", "/f"]), "data");
    fs::write(m.path("g"), b"later").unwrap();
    let start = std::time::Instant::now();
    while qfs(&m.store, &["cat", "/g"]).stdout != b"later" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "a closed file was not committed within a second"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn other_users_see_permissions_enforced() {
    let t = tempfile::tempdir().unwrap();
    // SAFETY: chmod on a valid path; the nobody user must reach the mount.
    unsafe { libc::chmod(c(t.path()).as_ptr(), 0o755) };
    let m = Mount::with_args(t.path(), &["--allow-other"]);
    fs::write(m.path("public"), b"for all").unwrap();
    fs::write(m.path("secret"), b"root only").unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let as_nobody = |script: &str| {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let o = as_nobody(&format!("cat {}", m.path("public").display()));
    assert_eq!(
        o.stdout,
        b"for all",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!as_nobody(&format!("cat {}", m.path("secret").display()))
        .status
        .success());
    assert!(
        !as_nobody(&format!("echo x > {}", m.path("public").display()))
            .status
            .success()
    );
    assert!(!as_nobody(&format!("touch {}", m.path("new").display()))
        .status
        .success());
    assert_eq!(fs::read(m.path("public")).unwrap(), b"for all");
    let _ = OpenOptions::new().mode(0o644);
}

/// Walkers of the mount root (`find`, `du`, `tar`) see each real file
/// once: the root does not list the query folders, which are still
/// reached by name; `--show-folders` lists them.
#[test]
fn walkers_of_the_root_see_each_real_file_once() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::new(t.path());
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..20 {
        let f = m.path(&format!("d/f{i}"));
        fs::write(&f, vec![b'x'; 10_000]).unwrap();
        for tag in ["a", "b", "c", "d"] {
            setxattr(&f, &format!("user.tag.{tag}"), b"", 0).unwrap();
        }
    }
    let run = |cmd: &str| {
        let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let mp = m.mp.display().to_string();
    // The root, d, and 20 files: nothing under by-tag, sql or queries.
    assert_eq!(run(&format!("find {mp} | wc -l")).trim(), "22");
    let listed: Vec<String> = fs::read_dir(&m.mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec!["d".to_string()]);
    let tarred = run(&format!("tar -cf - -C {mp} . | tar -tf - | wc -l"));
    assert_eq!(tarred.trim(), "22", "tar of the root");
    // du counts the 20 files once (about 200 KB, not five times that).
    let kb: u64 = run(&format!("du -sk {mp}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kb < 400, "du says {kb} KiB for 200 KB of files");
    // The folders are there by name.
    let files = fs::read_dir(m.path("by-tag/a"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count();
    assert_eq!(files, 20);
    assert!(fs::metadata(m.path("sql")).unwrap().is_dir());
    assert!(fs::metadata(m.path("queries")).unwrap().is_dir());
    m.stop();
    let mut m = Mount::with_args(t.path(), &["--show-folders"]);
    let mut listed: Vec<String> = fs::read_dir(&m.mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["by-tag", "d", "queries", "sql"]);
    m.stop();
}

/// A request that panics (through the test-only fault hook: a lookup of
/// one name panics while holding the metadata lock) costs that request
/// only: it answers EIO, the next requests are served, writes and commits
/// still work, and the mount unmounts cleanly with everything committed.
#[test]
fn a_panicking_request_costs_one_request_not_the_mount() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::with_env(
        t.path(),
        &["--threads", "2"],
        &[("QUERYFS_TEST_PANIC_LOOKUP", "boom")],
    );
    fs::write(m.path("before"), b"one").unwrap();
    for _ in 0..3 {
        let e = fs::metadata(m.path("boom")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    // The lock held during the panic is usable again, on both threads.
    for i in 0..50 {
        fs::write(m.path(&format!("after{i}")), format!("{i}")).unwrap();
    }
    assert_eq!(fs::read(m.path("before")).unwrap(), b"one");
    assert_eq!(fs::read_dir(&m.mp).unwrap().count(), 51);
    m.stop();
    let o = qfs(&m.store, &["fsck", "--verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(qfs_ok(&m.store, &["cat", "/after49"]), "49");
}

/// The shape that used to panic the mount: a short chunk, a short chunk far
/// out, and a buffered read of the whole file; also the rest of the data
/// calls real programs make (fallocate modes, SEEK_HOLE, st_blocks,
/// statfs), through the kernel.
#[test]
fn short_chunks_holes_fallocate_and_seek_through_the_kernel() {
    use std::os::unix::io::AsRawFd;
    let t = tempfile::tempdir().unwrap();
    let m = Mount::with_args(t.path(), &["--threads", "2"]);
    let p = m.path("f");
    fs::write(&p, [7u8; 100]).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(&[9u8; 4095], 1 << 20).unwrap();
    drop(f);
    let all = fs::read(&p).unwrap();
    assert_eq!(all.len(), (1 << 20) + 4095);
    assert!(all[..100].iter().all(|&b| b == 7) && all[100..1 << 20].iter().all(|&b| b == 0));

    // A 10 GiB sparse file holds (almost) nothing and has holes.
    let sp = m.path("sparse");
    let f = File::create(&sp).unwrap();
    f.set_len(10 << 30).unwrap();
    f.write_at(b"x", 5 << 30).unwrap();
    f.sync_all().unwrap();
    let md = fs::metadata(&sp).unwrap();
    assert_eq!(md.len(), 10 << 30);
    assert!(md.blocks() <= 8, "st_blocks {}", md.blocks());
    let fd = f.as_raw_fd();
    // SAFETY: a valid fd.
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 0);
    // SAFETY: as above.
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    assert_eq!(data, 5 << 30);
    // SAFETY: as above.
    let past = unsafe { libc::lseek(fd, (5 << 30) + (1 << 20), libc::SEEK_DATA) };
    assert_eq!(past, -1);
    assert_eq!(errno(), libc::ENXIO);

    // fallocate: mode 0 grows, KEEP_SIZE does not, PUNCH_HOLE zeroes,
    // ZERO_RANGE zeroes, COLLAPSE_RANGE is not supported.
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("g"))
        .unwrap();
    let gfd = g.as_raw_fd();
    g.write_at(&[5u8; 300_000], 0).unwrap();
    // SAFETY: valid fd for each call below.
    unsafe {
        assert_eq!(libc::fallocate(gfd, 0, 0, 400_000), 0);
        assert_eq!(g.metadata().unwrap().len(), 400_000);
        assert_eq!(
            libc::fallocate(gfd, libc::FALLOC_FL_KEEP_SIZE, 0, 900_000),
            0
        );
        assert_eq!(g.metadata().unwrap().len(), 400_000);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(libc::fallocate(gfd, punch, 1000, 150_000), 0);
        assert_eq!(
            libc::fallocate(gfd, libc::FALLOC_FL_ZERO_RANGE, 250_000, 10),
            0
        );
        assert_eq!(
            libc::fallocate(gfd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 65536),
            -1
        );
        assert_eq!(errno(), libc::EOPNOTSUPP);
    }
    let mut want = vec![5u8; 300_000];
    want.resize(400_000, 0);
    want[1000..151_000].fill(0);
    want[250_000..250_010].fill(0);
    g.sync_all().unwrap();
    drop(g);
    // SAFETY: as above.
    let cold = fs::read(m.path("g")).unwrap();
    assert!(cold == want, "fallocate content differs");

    // statfs: total inodes >= free, and more than the files held.
    let c = c(&m.mp);
    // SAFETY: a plain C struct, filled by statvfs below.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0);
    assert!(v.f_files >= v.f_ffree && v.f_files > 3 && v.f_ffree > 1000);
    // Past the maximum size: EFBIG.
    let h = File::create(m.path("h")).unwrap();
    let e = h.set_len((1u64 << 50) + 1).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
    h.set_len(999_999_999_999_999).unwrap();
    assert_eq!(h.metadata().unwrap().len(), 999_999_999_999_999);
}

#[test]
fn truncating_sets_times_like_a_local_filesystem() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    let p = m.path("t");
    let old = || {
        let ts = [libc::timespec {
            tv_sec: 978_307_200,
            tv_nsec: 0,
        }; 2];
        assert_eq!(
            // SAFETY: valid C string and timespec array.
            unsafe { libc::utimensat(libc::AT_FDCWD, c(&p).as_ptr(), ts.as_ptr(), 0) },
            0
        );
    };
    let mtime = || fs::metadata(&p).unwrap().mtime();
    let open_trunc = || {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
    };
    // open(O_TRUNC) of an empty file: POSIX marks mtime and ctime.
    File::create(&p).unwrap();
    old();
    open_trunc();
    assert!(
        mtime() > 978_307_200,
        "O_TRUNC of an empty file kept the old mtime"
    );
    // open(O_TRUNC) of a full file empties it and sets the times.
    fs::write(&p, b"some content").unwrap();
    old();
    open_trunc();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    assert!(mtime() > 978_307_200);
    // truncate(2) and ftruncate(2) to the current size set them too (ext4).
    fs::write(&p, vec![7u8; 70_000]).unwrap();
    old();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::truncate(c(&p).as_ptr(), 70_000) }, 0);
    assert!(
        mtime() > 978_307_200,
        "truncate(2) to the same size kept the mtime"
    );
    old();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(70_000)
        .unwrap();
    assert!(
        mtime() > 978_307_200,
        "ftruncate(2) to the same size kept the mtime"
    );
    assert_eq!(fs::read(&p).unwrap(), vec![7u8; 70_000]);
    // O_RDONLY|O_TRUNC truncates on Linux too.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(&p)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    drop(m);
}
