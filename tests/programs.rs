//! Real programs on a real mount: git, make + cc, SQLite (WAL), rsync and
//! tar, each working inside a real subdirectory of the mount, each checked
//! against what the same program does on (or with a copy from) the host's
//! own filesystem.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::util::*;

// ----- running programs -----

fn run(cwd: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"))
}

/// Runs a program, insists on exit 0 and returns its stdout.
fn ok(cwd: &Path, prog: &str, args: &[&str]) -> String {
    let o = run(cwd, prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} in {} exited {:?}\nstdout: {}\nstderr: {}",
        cwd.display(),
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn git(cwd: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "-c",
        "user.name=Program Test",
        "-c",
        "user.email=programs@queryfs.test",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "gc.auto=0",
        // `git commit` starts `git maintenance run --auto --detach`: a
        // detached git that may still sit in the repository when the test
        // unmounts (EBUSY). In the foreground it is done with the command.
        "-c",
        "maintenance.autoDetach=false",
        "-c",
        "protocol.file.allow=always",
    ];
    all.extend_from_slice(args);
    ok(cwd, "git", &all)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A mount with its working directory: a real folder inside the mount.
fn mounted(t: &tempfile::TempDir) -> (Mount, PathBuf) {
    let m = Mount::with_args(t.path(), &["--threads", "2"]);
    let work = m.path("work");
    fs::create_dir(&work).unwrap();
    (m, work)
}

// ----- xattrs without following symlinks -----

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn llistxattr(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid pointers and lengths.
    let r = unsafe { libc::llistxattr(cpath(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "llistxattr {}: {}", p.display(), errno());
    buf.truncate(r as usize);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect()
}

fn lgetxattr(p: &Path, name: &str) -> Vec<u8> {
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid pointers and lengths.
    let r = unsafe {
        libc::lgetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(r >= 0, "lgetxattr {} {name}: {}", p.display(), errno());
    buf.truncate(r as usize);
    buf
}

/// Sets atime and mtime (nanoseconds) without following a symlink.
fn set_times(p: &Path, secs: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid C string and timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}: {}", p.display(), errno());
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    // SAFETY: valid C string.
    let r = unsafe { libc::lchown(cpath(p).as_ptr(), uid, gid) };
    assert_eq!(r, 0, "lchown {}: {}", p.display(), errno());
}

// ----- comparing trees -----

/// What a tree comparison looks at for one path.
#[derive(Debug, PartialEq, Clone)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    content: Option<String>,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// For a file with more than one link: the first path (in sorted order)
    /// of the tree that has the same inode.
    link_group: Option<String>,
    nlink: u64,
}

#[derive(Clone, Copy)]
struct Look {
    mtimes: bool,
    owners: bool,
    xattrs: bool,
    links: bool,
    symlink_mtimes: bool,
}

const ALL: Look = Look {
    mtimes: true,
    owners: true,
    xattrs: true,
    links: true,
    symlink_mtimes: true,
};

fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in names {
        let r = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        out.push(r.clone());
        if fs::symlink_metadata(root.join(&r)).unwrap().is_dir() {
            walk(root, &r, out);
        }
    }
}

/// Every path under `root` (not `root` itself), skipping the relative paths
/// `skip` says to.
fn snapshot(
    root: &Path,
    look: Look,
    skip: &dyn Fn(&str) -> bool,
    xattr_filter: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, Entry> {
    let mut paths = Vec::new();
    walk(root, "", &mut paths);
    let mut first_of_inode: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for rel in paths.into_iter().filter(|p| !skip(p)) {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let content = (kind == "file").then(|| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            blake3::hash(&data).to_hex().to_string()
        });
        let target = (kind == "symlink").then(|| fs::read_link(&p).unwrap());
        let mut xattrs = BTreeMap::new();
        if look.xattrs && kind != "symlink" {
            for n in llistxattr(&p) {
                if n.starts_with("user.") && xattr_filter(&n) {
                    let v = lgetxattr(&p, &n);
                    xattrs.insert(n, v);
                }
            }
        }
        let link_group = (look.links && kind == "file" && md.nlink() > 1).then(|| {
            first_of_inode
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let mtime = if look.mtimes && (kind != "symlink" || look.symlink_mtimes) {
            (md.mtime(), md.mtime_nsec())
        } else {
            (0, 0)
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode(),
                uid: if look.owners { md.uid() } else { 0 },
                gid: if look.owners { md.gid() } else { 0 },
                size: if kind == "dir" { 0 } else { md.size() },
                mtime,
                content,
                target,
                xattrs,
                link_group,
                nlink: if look.links && kind == "file" {
                    md.nlink()
                } else {
                    0
                },
            },
        );
    }
    out
}

/// An xattr value as a short text: printable ones as they are, others as
/// length and hash.
fn show_value(v: &[u8]) -> String {
    if v.len() <= 40 && v.iter().all(|b| (0x20..0x7f).contains(b)) {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        format!("<{} bytes, {}>", v.len(), &blake3::hash(v).to_hex()[..12])
    }
}

/// The fields in which two entries differ, as `field: a != b`.
fn entry_diff(a: &Entry, b: &Entry) -> String {
    let mut d = Vec::new();
    macro_rules! field {
        ($f:ident) => {
            if a.$f != b.$f {
                d.push(format!("{}: {:?} != {:?}", stringify!($f), a.$f, b.$f));
            }
        };
    }
    field!(kind);
    if a.mode != b.mode {
        d.push(format!("mode: {:o} != {:o}", a.mode, b.mode));
    }
    field!(uid);
    field!(gid);
    field!(size);
    field!(mtime);
    field!(content);
    field!(target);
    field!(link_group);
    field!(nlink);
    if a.xattrs != b.xattrs {
        let show = |x: &BTreeMap<String, Vec<u8>>| {
            x.iter()
                .map(|(k, v)| format!("{k}={}", show_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        d.push(format!(
            "xattrs: {{{}}} != {{{}}}",
            show(&a.xattrs),
            show(&b.xattrs)
        ));
    }
    d.join("; ")
}

/// Differences between two snapshots, one line each.
fn differences(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("only in the first tree: {k}")),
            Some(vb) if va != vb => d.push(format!("{k}: {}", entry_diff(va, vb))),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            d.push(format!("only in the second tree: {k}"));
        }
    }
    d
}

fn assert_same_tree(what: &str, a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) {
    let d = differences(a, b);
    assert!(
        d.is_empty(),
        "{what}: {} differences (first 20):\n{}",
        d.len(),
        d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(!a.is_empty(), "{what}: empty tree");
}

fn no_skip(_: &str) -> bool {
    false
}

fn any_xattr(_: &str) -> bool {
    true
}

// ----- a tree with every kind of thing rsync and tar carry -----

/// Builds a tree at `root` (which must not exist): files of 0 B, a few
/// bytes, exactly 1 MiB, 1.5 MiB and more, a mostly-empty file with data at
/// 5 MiB, deep and wide folders, relative, absolute, dangling and folder
/// symlinks, a file with three hard links, `user.*` xattrs with text,
/// binary and empty values, odd modes and owners, and distinct nanosecond
/// mtimes from 1979 to 2100 on everything.
fn make_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    let w = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("empty", b"", 0o644);
    w("small.txt", b"hello, queryfs\n", 0o644);
    w("script.sh", b"#!/bin/sh\necho hi\n", 0o755);
    w("secret", b"only me\n", 0o600);
    w("setuid-prog", &pattern(1, 4000), 0o4711);
    w("one-mib.bin", &pattern(2, 1 << 20), 0o640);
    w("big.bin", &pattern(3, 1_500_013), 0o644);
    w("bigger.bin", &pattern(4, 3 * 65536 + 1), 0o664);
    w("naïve file ü.txt", "unicode name\n".as_bytes(), 0o644);
    // Mostly empty: 4 KiB at 0, 4 KiB at 5 MiB, 6 MiB long.
    {
        use std::io::{Seek, SeekFrom, Write};
        let p = root.join("sparse.img");
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&pattern(5, 4096)).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&pattern(6, 4096)).unwrap();
        f.set_len(6 << 20).unwrap();
    }
    for i in 0..40 {
        w(
            &format!("wide/f{i:02}"),
            &pattern(100 + i, (i as usize * 977) % 20_000),
            0o644,
        );
    }
    w("deep/a/b/c/d/e/leaf.txt", b"deep leaf\n", 0o644);
    w("ro/readonly.txt", b"read only\n", 0o444);
    // Hard links: three names, one inode, two folders.
    w("links/hard-a", &pattern(7, 100_000), 0o644);
    fs::create_dir_all(root.join("deep/a")).unwrap();
    fs::hard_link(root.join("links/hard-a"), root.join("links/hard-b")).unwrap();
    fs::hard_link(root.join("links/hard-a"), root.join("deep/a/hard-c")).unwrap();
    // Symlinks.
    std::os::unix::fs::symlink("../small.txt", root.join("links/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("links/abs")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", root.join("links/dangling")).unwrap();
    std::os::unix::fs::symlink("../deep", root.join("links/to-dir")).unwrap();
    // Owners.
    lchown(&root.join("secret"), 1234, 5678);
    lchown(&root.join("links/rel"), 4321, 8765);
    lchown(&root.join("deep/a/b"), 42, 43);
    // xattrs: text, binary (every byte value, NULs included), empty.
    setxattr(
        &root.join("small.txt"),
        "user.comment",
        b"a plain comment",
        0,
    )
    .unwrap();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    setxattr(&root.join("big.bin"), "user.binary", &all_bytes, 0).unwrap();
    setxattr(
        &root.join("big.bin"),
        "user.mime_type",
        b"application/octet-stream",
        0,
    )
    .unwrap();
    setxattr(&root.join("empty"), "user.empty-value", b"", 0).unwrap();
    setxattr(&root.join("deep/a"), "user.on-a-dir", b"folder", 0).unwrap();
    setxattr(
        &root.join("links/hard-b"),
        "user.shared",
        &pattern(8, 3000),
        0,
    )
    .unwrap();
    // Odd folder modes last (a 0555 folder takes no new entries as non-root).
    fs::create_dir(root.join("sticky")).unwrap();
    w("sticky/inside", b"in a sticky dir\n", 0o666);
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(root.join("deep/a/b/c"), fs::Permissions::from_mode(0o2750)).unwrap();
    // Distinct mtimes, children before their folders (a folder's mtime
    // changes when its entries do).
    let mut paths = Vec::new();
    walk(root, "", &mut paths);
    paths.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for (k, rel) in paths.iter().enumerate() {
        let secs = match k % 4 {
            0 => 300_000_000 + k as i64 * 86_400,   // 1979
            1 => 1_600_000_000 + k as i64 * 3_600,  // 2020
            2 => 4_102_444_800 + k as i64,          // 2100
            _ => 1_000_000_000 + k as i64 * 12_345, // 2001
        };
        set_times(
            &root.join(rel),
            secs,
            (k as i64 * 123_456_789) % 1_000_000_000,
        );
    }
}

/// Changes a tree made by [`make_tree`] the way a user's edits would:
/// bytes in the middle of large files, appends, truncation, a new file, a
/// removed file, a mode, an xattr, a hard-linked file's content.
fn change_tree(root: &Path, pass: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let open = |rel: &str| {
        fs::OpenOptions::new()
            .write(true)
            .open(root.join(rel))
            .unwrap()
    };
    let mut f = open("one-mib.bin");
    f.seek(SeekFrom::Start(300_000 + pass * 1000)).unwrap();
    f.write_all(&pattern(50 + pass, 5000)).unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(root.join("big.bin"))
        .unwrap();
    f.write_all(&pattern(60 + pass, 70_001)).unwrap();
    drop(f);
    open("bigger.bin").set_len(65_536 + 17 - pass * 3).unwrap();
    let mut f = open("links/hard-a");
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&pattern(70 + pass, 100)).unwrap();
    drop(f);
    fs::write(
        root.join(format!("wide/new-{pass}")),
        pattern(80 + pass, 12_345),
    )
    .unwrap();
    fs::remove_file(root.join(format!("wide/f{:02}", 3 + pass))).unwrap();
    fs::set_permissions(
        root.join("secret"),
        fs::Permissions::from_mode(0o640 - pass as u32 * 0o40),
    )
    .unwrap();
    setxattr(
        &root.join("small.txt"),
        "user.comment",
        format!("changed {pass}").as_bytes(),
        0,
    )
    .unwrap();
    // rsync's quick check compares mtimes in whole seconds: a file changed
    // in the same second as the last run, with the same size, would be
    // skipped (also from ext4 to ext4), so the changed files get mtimes
    // of their own.
    for (k, rel) in ["one-mib.bin", "big.bin", "bigger.bin", "links/hard-a"]
        .iter()
        .enumerate()
    {
        set_times(
            &root.join(rel),
            1_500_000_000 + pass as i64 * 100 + k as i64,
            7,
        );
    }
    set_times(&root.join("wide"), 1_700_000_000 + pass as i64, 5);
}

// ----- git -----

fn git_in(outside: &Path, work: &Path, remount: &mut dyn FnMut()) {
    // The source repository, outside the mount: 40 commits of text and
    // binary files (adds, edits, deletes, renames), a branch merged back
    // with a merge commit, an annotated and a lightweight tag.
    let src = outside.join("src");
    fs::create_dir(&src).unwrap();
    git(&src, &["init", "-q"]);
    for i in 0..40u64 {
        fs::write(
            src.join(format!("text{}.txt", i % 7)),
            format!("line {i}\n").repeat(1 + i as usize * 3),
        )
        .unwrap();
        if i % 3 == 0 {
            fs::create_dir_all(src.join("bin")).unwrap();
            fs::write(
                src.join(format!("bin/blob{i}.dat")),
                pattern(i, 5_000 + i as usize * 7_000),
            )
            .unwrap();
        }
        if i % 9 == 8 {
            fs::remove_file(src.join(format!("bin/blob{}.dat", i - 8))).unwrap();
        }
        if i == 25 {
            git(&src, &["mv", "text1.txt", "renamed.txt"]);
        }
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-q", "-m", &format!("commit {i}")]);
        if i == 20 {
            git(&src, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
            git(&src, &["checkout", "-q", "-b", "feature"]);
            for j in 0..3 {
                fs::write(src.join(format!("feature{j}.c")), format!("int f{j};\n")).unwrap();
                git(&src, &["add", "-A"]);
                git(&src, &["commit", "-q", "-m", &format!("feature {j}")]);
            }
            git(&src, &["checkout", "-q", "main"]);
        }
    }
    git(
        &src,
        &["merge", "-q", "--no-ff", "feature", "-m", "merge feature"],
    );
    git(&src, &["tag", "light"]);
    let src_count: u64 = git(&src, &["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(src_count, 40 + 3 + 1);
    let src_head = git(&src, &["rev-parse", "HEAD"]);

    // Clone into the mount through the pack protocol (index-pack writes the
    // pack there), then check it.
    let clone = work.join("clone");
    git(
        work,
        &[
            "clone",
            "-q",
            "--no-local",
            &format!("file://{}", s(&src)),
            "clone",
        ],
    );
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), src_head);
    assert_eq!(git(&clone, &["tag"]), "light\nv1.0\n");
    assert!(git(&clone, &["branch", "-a"]).contains("remotes/origin/feature"));
    let worktree = Look {
        mtimes: false,
        owners: false,
        xattrs: false,
        links: false,
        symlink_mtimes: false,
    };
    let not_git = |p: &str| p == ".git" || p.starts_with(".git/");
    assert_same_tree(
        "source checkout vs checkout in the mount",
        &snapshot(&src, worktree, &not_git, &any_xattr),
        &snapshot(&clone, worktree, &not_git, &any_xattr),
    );

    // Repack everything, check again.
    git(&clone, &["gc", "--aggressive", "--prune=now", "-q"]);
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    let packs: Vec<_> = fs::read_dir(clone.join(".git/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    assert_eq!(packs.len(), 1, "after gc: {packs:?}");

    // A commit made in the mount.
    fs::write(clone.join("text0.txt"), "changed in the mount\n").unwrap();
    fs::write(clone.join("bin/new.dat"), pattern(999, 200_000)).unwrap();
    git(&clone, &["add", "-A"]);
    git(&clone, &["commit", "-q", "-m", "made in the mount"]);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    let count: u64 = git(&clone, &["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, src_count + 1);
    let head = git(&clone, &["rev-parse", "HEAD"]);
    git(&clone, &["fsck", "--full", "--strict"]);

    // The same after a remount (everything re-read from the store).
    remount();
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    git(&clone, &["fsck", "--full", "--strict"]);

    // Clone the mounted repository back out (local clone, objects copied),
    // and compare.
    let back = outside.join("back");
    git(
        outside,
        &["clone", "-q", "--no-hardlinks", s(&clone), s(&back)],
    );
    git(&back, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&back, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        git(&back, &["log", "--format=%H %T %P"]),
        git(&clone, &["log", "--format=%H %T %P"])
    );
    assert_eq!(git(&back, &["tag"]), "light\nv1.0\n");
    assert_same_tree(
        "checkout in the mount vs its clone outside",
        &snapshot(&clone, worktree, &not_git, &any_xattr),
        &snapshot(&back, worktree, &not_git, &any_xattr),
    );
}

/// Unmounts cleanly and insists that `fsck --verify` finds the store clean.
fn stop_and_fsck(m: &mut Mount, after: &str) {
    m.stop();
    let o = qfs(&m.store, &["fsck", "--verify"]);
    assert!(
        o.status.success(),
        "fsck --verify after {after}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn git_clone_fsck_gc_commit_and_clone_back() {
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    git_in(t.path(), &work, &mut || m.remount());
    m.stop();
    let o = qfs(&m.store, &["fsck", "--verify"]);
    assert!(
        o.status.success(),
        "fsck --verify after git: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("git test: {:.1} s", started.elapsed().as_secs_f64());
}

// ----- make + cc -----

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What the fixture's binary must print, computed here independently
/// (the CRC-32 check value of "123456789" and the count of primes below a
/// million are well-known constants).
fn expected_checksum_output() -> String {
    let mut x: u32 = 12345;
    let buf: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    format!(
        "crc32(123456789)=cbf43926\ncrc32(lcg 1MiB)={:08x}\nprimes<1000000=78498\n",
        crc32(&buf)
    )
}

/// `make -q` must say "up to date"; on failure shows why make thinks not.
fn assert_up_to_date(proj: &Path, when: &str) {
    let q = run(proj, "make", &["-q"]);
    if q.status.code() != Some(0) {
        let d = run(proj, "make", &["-d", "-q"]);
        let why: Vec<String> = String::from_utf8_lossy(&d.stdout)
            .lines()
            .filter(|l| l.contains("newer") || l.contains("remake") || l.contains("not exist"))
            .map(str::to_string)
            .collect();
        let times = ok(proj, "sh", &["-c", "stat -c '%n %.9Y %s' *"]);
        panic!(
            "{when}: make -q exited {:?}; make -d says:\n{}\nfiles:\n{times}",
            q.status.code(),
            why.join("\n")
        );
    }
}

fn make_lines(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| {
            ["CC ", "AR ", "GEN ", "LD "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `touch FILE`: mtime now, as the real touch sets it.
fn touch(p: &Path) {
    ok(Path::new("/"), "touch", &[s(p)]);
}

fn make_in(work: &Path, remount: &mut dyn FnMut()) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cproj");
    let proj = work.join("cproj");
    ok(work, "cp", &["-r", s(&fixture), s(&proj)]);
    let want = expected_checksum_output();
    let all = [
        "AR libutil.a",
        "CC crc.o",
        "CC lcg.o",
        "CC main.o",
        "CC sieve.o",
        "GEN table.h",
        "LD checksum",
    ];

    let out = ok(&proj, "make", &["-j2"]);
    assert_eq!(make_lines(&out), all, "first build: {out}");
    assert_eq!(ok(&proj, "./checksum", &[]), want);
    assert_up_to_date(&proj, "after the first build");
    // Nothing to do.
    assert_eq!(
        make_lines(&ok(&proj, "make", &["-j2"])),
        Vec::<String>::new()
    );

    ok(&proj, "make", &["clean"]);
    assert!(!proj.join("checksum").exists() && !proj.join("main.o").exists());
    assert_eq!(run(&proj, "make", &["-q"]).status.code(), Some(1));
    let out = ok(&proj, "make", &["-j2"]);
    assert_eq!(make_lines(&out), all, "build after clean: {out}");
    assert_eq!(ok(&proj, "./checksum", &[]), want);

    // One source: its object, the library and the link.
    touch(&proj.join("lcg.c"));
    assert_eq!(run(&proj, "make", &["-q"]).status.code(), Some(1));
    let out = ok(&proj, "make", &["-j2"]);
    assert_eq!(
        make_lines(&out),
        ["AR libutil.a", "CC lcg.o", "LD checksum"],
        "after touching lcg.c: {out}"
    );
    assert_up_to_date(&proj, "after rebuilding for lcg.c");
    // A header two objects include.
    touch(&proj.join("crc.h"));
    let out = ok(&proj, "make", &["-j2"]);
    assert_eq!(
        make_lines(&out),
        ["AR libutil.a", "CC crc.o", "CC main.o", "LD checksum"],
        "after touching crc.h: {out}"
    );
    // A real edit: the binary must change its output.
    let main_c = fs::read_to_string(proj.join("main.c")).unwrap();
    fs::write(
        proj.join("main.c"),
        main_c.replace("count_primes(1000000)", "count_primes(1000)"),
    )
    .unwrap();
    touch(&proj.join("main.c"));
    let out = ok(&proj, "make", &["-j2"]);
    assert_eq!(make_lines(&out), ["CC main.o", "LD checksum"], "{out}");
    assert_eq!(
        ok(&proj, "./checksum", &[]),
        want.replace("primes<1000000=78498", "primes<1000000=168")
    );
    // After a remount make still sees everything up to date and the binary
    // still runs.
    remount();
    assert_up_to_date(&proj, "after remount");
    assert_eq!(
        ok(&proj, "./checksum", &[]),
        want.replace("primes<1000000=78498", "primes<1000000=168")
    );
}

#[test]
fn make_builds_runs_and_rebuilds_only_what_changed() {
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    make_in(&work, &mut || m.remount());
    stop_and_fsck(&mut m, "make");
    eprintln!("make test: {:.1} s", started.elapsed().as_secs_f64());
}

// ----- SQLite -----

/// The whole table, in id order.
fn table(db: &rusqlite::Connection) -> BTreeMap<i64, (String, Vec<u8>)> {
    let mut st = db
        .prepare("SELECT id, name, data FROM t ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn integrity(db: &rusqlite::Connection) -> String {
    db.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn sqlite_in(work: &Path, remount: &mut dyn FnMut()) -> BTreeMap<i64, (String, Vec<u8>)> {
    let started = Instant::now();
    let path = work.join("db/test.sqlite");
    fs::create_dir(work.join("db")).unwrap();
    let mut model: BTreeMap<i64, (String, Vec<u8>)> = BTreeMap::new();
    {
        let mut db = rusqlite::Connection::open(&path).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        db.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, data BLOB NOT NULL);
             CREATE INDEX t_name ON t(name);",
        )
        .unwrap();
        let mut rng = pattern(2026, 8)
            .iter()
            .fold(1u64, |a, &b| a * 31 + b as u64);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut next_id = 1i64;
        for txn in 0..10_000u64 {
            if txn == 5_000 {
                // A full checkpoint that truncates the WAL half way.
                db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap();
            }
            if txn % 1000 == 999 {
                // Some commits synced through (fsync of the WAL).
                db.execute_batch("PRAGMA synchronous=FULL").unwrap();
            } else if txn % 1000 == 0 {
                db.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
            }
            let tx = db.transaction().unwrap();
            // Now and then a rolled-back transaction that must leave no trace.
            if txn % 97 == 0 {
                tx.execute(
                    "INSERT INTO t (id, name, data) VALUES (?1, 'rolled back', x'00')",
                    [next_id + 1_000_000],
                )
                .unwrap();
                tx.rollback().unwrap();
                continue;
            }
            for _ in 0..1 + next() % 4 {
                let r = next();
                let op = if model.len() < 50 { 0 } else { r % 10 };
                // Sizes around the 4 KiB page: overflow pages too.
                let len = [0usize, 10, 100, 1000, 4000, 4097, 9000][(r >> 8) as usize % 7];
                match op {
                    0..=4 => {
                        let id = next_id;
                        next_id += 1;
                        let name = format!("row-{id}-{}", r % 1000);
                        let data = pattern(r, len);
                        tx.execute(
                            "INSERT INTO t (id, name, data) VALUES (?1, ?2, ?3)",
                            rusqlite::params![id, name, data],
                        )
                        .unwrap();
                        model.insert(id, (name, data));
                    }
                    5..=7 => {
                        let k = *model.keys().nth((r >> 16) as usize % model.len()).unwrap();
                        let data = pattern(r ^ 0xABCD, len);
                        let n = tx
                            .execute(
                                "UPDATE t SET data = ?2 WHERE id = ?1",
                                rusqlite::params![k, data],
                            )
                            .unwrap();
                        assert_eq!(n, 1);
                        model.get_mut(&k).unwrap().1 = data;
                    }
                    _ => {
                        let k = *model.keys().nth((r >> 16) as usize % model.len()).unwrap();
                        let n = tx.execute("DELETE FROM t WHERE id = ?1", [k]).unwrap();
                        assert_eq!(n, 1);
                        model.remove(&k);
                    }
                }
            }
            tx.commit().unwrap();
        }
        assert_eq!(integrity(&db), "ok");
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, model.len());
        assert!(table(&db) == model, "table differs from the model");
        let by_name: i64 = db
            .query_row(
                "SELECT count(*) FROM t INDEXED BY t_name WHERE name LIKE 'row-%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(by_name as usize, model.len());
    }
    eprintln!(
        "sqlite: 10^4 transactions, {} rows, {:.1} s",
        model.len(),
        started.elapsed().as_secs_f64()
    );
    // Close, unmount, remount, open again.
    remount();
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(integrity(&db), "ok");
        assert!(
            table(&db) == model,
            "table differs from the model after remount"
        );
    }
    model
}

#[test]
fn sqlite_wal_ten_thousand_transactions_survive_remount() {
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    let model = sqlite_in(&work, &mut || m.remount());
    stop_and_fsck(&mut m, "sqlite");
    // And the copy read offline by the CLI is a sound database too.
    let copy = t.path().join("copy.sqlite");
    // The database's path inside the store (the mount's work folder).
    let in_store = ["", "work", "db", "test.sqlite"].join("/");
    qfs_ok(&m.store, &["get", &in_store, s(&copy)]);
    let db = rusqlite::Connection::open(&copy).unwrap();
    assert_eq!(integrity(&db), "ok");
    assert!(table(&db) == model, "offline copy differs from the model");
    eprintln!("sqlite test: {:.1} s", started.elapsed().as_secs_f64());
}

// ----- rsync -----

/// `rsync -aHX --itemize-changes FROM/ TO/`; returns the itemized lines.
fn rsync(from: &Path, to: &Path, extra: &[&str]) -> Vec<String> {
    let from = format!("{}/", s(from));
    let to = format!("{}/", s(to));
    let mut args = vec!["-aHX", "--itemize-changes"];
    args.extend_from_slice(extra);
    args.push(&from);
    args.push(&to);
    ok(Path::new("/"), "rsync", &args)
        .lines()
        .map(str::to_string)
        .collect()
}

fn rsync_in(outside: &Path, work: &Path, remount: &mut dyn FnMut()) {
    let started = Instant::now();
    let src = outside.join("src");
    make_tree(&src);
    let want = snapshot(&src, ALL, &no_skip, &any_xattr);

    let dst = work.join("dst");
    let first = rsync(&src, &dst, &[]);
    assert!(!first.is_empty());
    let second = rsync(&src, &dst, &[]);
    assert!(
        second.is_empty(),
        "second rsync into the mount changed things:\n{}",
        second.join("\n")
    );
    assert_same_tree(
        "source vs rsync copy in the mount",
        &want,
        &snapshot(&dst, ALL, &no_skip, &any_xattr),
    );
    // The same after a remount.
    remount();
    assert_same_tree(
        "source vs rsync copy in the mount, after remount",
        &want,
        &snapshot(&dst, ALL, &no_skip, &any_xattr),
    );
    let again = rsync(&src, &dst, &[]);
    assert!(
        again.is_empty(),
        "rsync after remount: {}",
        again.join("\n")
    );

    // Back out into a fresh folder, twice.
    let back = outside.join("back");
    assert!(!rsync(&dst, &back, &[]).is_empty());
    let second = rsync(&dst, &back, &[]);
    assert!(
        second.is_empty(),
        "second rsync out of the mount changed things:\n{}",
        second.join("\n")
    );
    assert_same_tree(
        "source vs the tree rsync'd back out of the mount",
        &want,
        &snapshot(&back, ALL, &no_skip, &any_xattr),
    );
    eprintln!("rsync main part: {:.1} s", started.elapsed().as_secs_f64());

    // Incremental updates into the mount: rsync's delta transfer writing
    // into the existing files (--inplace: writes at offsets in the middle
    // of chunked files), then with its usual temporary file and rename.
    for (pass, extra) in [
        (0u64, &["--delete", "--no-whole-file", "--inplace"][..]),
        (1, &["--delete", "--no-whole-file"][..]),
    ] {
        change_tree(&src, pass);
        let want = snapshot(&src, ALL, &no_skip, &any_xattr);
        assert!(!rsync(&src, &dst, extra).is_empty());
        let again = rsync(&src, &dst, extra);
        assert!(
            again.is_empty(),
            "update pass {pass} {extra:?}: second run changed things:\n{}",
            again.join("\n")
        );
        assert_same_tree(
            &format!("update pass {pass} {extra:?}: source vs the mount"),
            &want,
            &snapshot(&dst, ALL, &no_skip, &any_xattr),
        );
        assert!(!rsync(&dst, &back, extra).is_empty());
        assert_same_tree(
            &format!("update pass {pass} {extra:?}: source vs back out"),
            &want,
            &snapshot(&back, ALL, &no_skip, &any_xattr),
        );
    }
    remount();
    assert_same_tree(
        "after the updates and a remount: source vs the mount",
        &snapshot(&src, ALL, &no_skip, &any_xattr),
        &snapshot(&dst, ALL, &no_skip, &any_xattr),
    );
    eprintln!("rsync updates: {:.1} s", started.elapsed().as_secs_f64());

    // --- Tags ---
    // A file tagged through `user.tag.foo`: each tag is listed once (as
    // `user.tag.<name>`; `user.tags` is readable but not listed), so the
    // second and third runs find nothing to change and the tags stay.
    let tsrc = outside.join("tagsrc");
    fs::create_dir(&tsrc).unwrap();
    fs::write(tsrc.join("tagged.txt"), b"tagged file\n").unwrap();
    setxattr(&tsrc.join("tagged.txt"), "user.tag.foo", b"", 0).unwrap();
    setxattr(&tsrc.join("tagged.txt"), "user.tag.year", b"1959", 0).unwrap();
    setxattr(&tsrc.join("tagged.txt"), "user.note", b"plain", 0).unwrap();
    let tdst = work.join("tagdst");
    let r1 = rsync(&tsrc, &tdst, &[]);
    assert!(!r1.is_empty());
    for run in 2..=3 {
        let r = rsync(&tsrc, &tdst, &[]);
        assert!(
            r.is_empty(),
            "rsync run {run} of a tagged file changed: {r:?}"
        );
        assert_eq!(
            getxattr(&tdst.join("tagged.txt"), "user.tags").unwrap(),
            b"foo,year=1959",
            "tags after run {run}"
        );
    }
    let mut names = listxattr(&tdst.join("tagged.txt"));
    names.sort();
    assert_eq!(names, ["user.note", "user.tag.foo", "user.tag.year"]);
    // The old workaround (leaving user.tags out of the transfer) still
    // works: the user.tag.* names carry the tags one by one.
    let tdst2 = work.join("tagdst2");
    let skip_tags = ["--filter=-x user.tags"];
    rsync(&tsrc, &tdst2, &skip_tags);
    let again = rsync(&tsrc, &tdst2, &skip_tags);
    assert!(
        again.is_empty(),
        "rsync with user.tags filtered out does not converge: {again:?}"
    );
    assert_eq!(
        getxattr(&tdst2.join("tagged.txt"), "user.tags").unwrap(),
        b"foo,year=1959"
    );
    let tback = outside.join("tagback");
    rsync(&tdst2, &tback, &skip_tags);
    let again = rsync(&tdst2, &tback, &skip_tags);
    assert!(again.is_empty(), "tag round trip back out: {again:?}");
    assert_same_tree(
        "tagged file: source vs round trip with user.tags filtered",
        &snapshot(&tsrc, ALL, &no_skip, &any_xattr),
        &snapshot(&tback, ALL, &no_skip, &any_xattr),
    );
}

#[test]
fn rsync_round_trip_converges_and_preserves_everything() {
    assert!(
        have("rsync"),
        "rsync is not installed (.ci/run installs it)"
    );
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    rsync_in(t.path(), &work, &mut || m.remount());
    stop_and_fsck(&mut m, "rsync");
    eprintln!("rsync test: {:.1} s", started.elapsed().as_secs_f64());
}

// ----- tar -----

fn tar_in(outside: &Path, work: &Path, remount: &mut dyn FnMut()) {
    // The tree is made in the mount itself (every call through FUSE).
    let tree = work.join("tree");
    make_tree(&tree);
    // A tagged file too: its tags travel as user.tag.* xattrs.
    fs::write(tree.join("tagged.txt"), b"tagged\n").unwrap();
    setxattr(&tree.join("tagged.txt"), "user.tag.foo", b"", 0).unwrap();
    setxattr(&tree.join("tagged.txt"), "user.tag.year", b"1959", 0).unwrap();
    set_times(&tree.join("tagged.txt"), 1_234_567_890, 987_654_321);
    let want = snapshot(&tree, ALL, &no_skip, &any_xattr);
    // Each tag travels once, as user.tag.<name> (user.tags is not listed).
    assert_eq!(
        want["tagged.txt"]
            .xattrs
            .get("user.tag.year")
            .map(|v| v.as_slice()),
        Some(&b"1959"[..])
    );
    assert!(!want["tagged.txt"].xattrs.contains_key("user.tags"));

    // pax format keeps nanosecond mtimes and xattrs.
    let archive = outside.join("tree.tar");
    let tar_args = [
        "--xattrs",
        "--format=posix",
        "-cpf",
        s(&archive),
        "-C",
        s(&tree),
        ".",
    ];
    ok(work, "tar", &tar_args);
    let out = outside.join("out");
    fs::create_dir(&out).unwrap();
    ok(
        &out,
        "tar",
        &["--xattrs", "-xpf", s(&archive), "-C", s(&out)],
    );
    assert_same_tree(
        "tree in the mount vs tar extracted outside",
        &want,
        &snapshot(&out, ALL, &no_skip, &any_xattr),
    );

    // Into the mount, from the archive, and from an archive made outside.
    let into = work.join("into");
    fs::create_dir(&into).unwrap();
    ok(
        &into,
        "tar",
        &["--xattrs", "-xpf", s(&archive), "-C", s(&into)],
    );
    assert_same_tree(
        "tree in the mount vs tar extracted into the mount",
        &want,
        &snapshot(&into, ALL, &no_skip, &any_xattr),
    );
    let archive2 = outside.join("out.tar");
    ok(
        &out,
        "tar",
        &[
            "--xattrs",
            "--format=posix",
            "-cpf",
            s(&archive2),
            "-C",
            s(&out),
            ".",
        ],
    );
    let into2 = work.join("into2");
    fs::create_dir(&into2).unwrap();
    ok(
        &into2,
        "tar",
        &["--xattrs", "-xpf", s(&archive2), "-C", s(&into2)],
    );
    remount();
    assert_same_tree(
        "tree in the mount vs outside tree tar'd into the mount, after remount",
        &want,
        &snapshot(&into2, ALL, &no_skip, &any_xattr),
    );
    // Tags restored by tar are real tags.
    assert_eq!(
        getxattr(&into2.join("tagged.txt"), "user.tags").unwrap(),
        b"foo,year=1959"
    );
}

#[test]
fn tar_out_of_and_into_the_mount_keeps_everything() {
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    tar_in(t.path(), &work, &mut || m.remount());
    stop_and_fsck(&mut m, "tar");
    eprintln!("tar test: {:.1} s", started.elapsed().as_secs_f64());
}

// ----- all at once -----

/// The five program workloads at the same time on one `--threads 2` mount,
/// each in its own folder (no remounts in between), while a sixth process
/// lists the whole tree with `ls -lR` over and over, as a file manager or
/// an indexer would; then a clean unmount and `fsck --verify`.
#[test]
fn all_programs_at_once_on_one_mount() {
    assert!(
        have("rsync"),
        "rsync is not installed (.ci/run installs it)"
    );
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    type Job = fn(&Path, &Path);
    let jobs: [(&str, Job); 5] = [
        ("git", |o, w| git_in(o, w, &mut || ())),
        ("make", |_, w| make_in(w, &mut || ())),
        ("sqlite", |_, w| {
            sqlite_in(w, &mut || ());
        }),
        ("rsync", |o, w| rsync_in(o, w, &mut || ())),
        ("tar", |o, w| tar_in(o, w, &mut || ())),
    ];
    fs::write(work.join("lister-running"), b"").unwrap();
    let mut lister = Command::new("sh")
        .arg("-c")
        .arg(r#"while [ -e "$1/lister-running" ]; do ls -lR "$1" > /dev/null 2>&1; done"#)
        .arg("lister")
        .arg(&work)
        .spawn()
        .unwrap();
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(name, job)| {
            let outside = t.path().join(format!("outside-{name}"));
            let inside = work.join(name);
            fs::create_dir(&outside).unwrap();
            fs::create_dir(&inside).unwrap();
            (name, std::thread::spawn(move || job(&outside, &inside)))
        })
        .collect();
    let mut failed = Vec::new();
    for (name, h) in handles {
        if h.join().is_err() {
            failed.push(name);
        }
    }
    fs::remove_file(work.join("lister-running")).unwrap();
    lister.wait().unwrap();
    assert!(
        failed.is_empty(),
        "failed when run together: {failed:?} (see their panics above)"
    );
    stop_and_fsck(&mut m, "all programs at once");
    eprintln!("all at once: {:.1} s", started.elapsed().as_secs_f64());
}

// ----- git across SIGKILLs -----

/// A shell loop commits to a repository in the mount with every fsync git
/// offers (`core.fsync=all`), printing each commit's hash after `git
/// commit` returned; the mount is SIGKILLed at a random moment, 8 times.
/// After each recovery `git fsck --full` is clean and HEAD is the last
/// reported commit, a descendant of it, or its parent (git renames the ref
/// into place after its last fsync, and an fsync here makes everything
/// before it durable, so at most that last rename may be lost); the stale
/// lock files a killed git leaves are removed as a user would, and the
/// loop goes on in the same repository.
#[test]
fn git_commits_survive_sigkill() {
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    let repo = work.join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    fs::write(repo.join("log.txt"), "start\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "start"]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("git kill test: delay seed {seed}");
    let mut reported_total = 0usize;
    for round in 0..8u64 {
        let script = r#"
i=0
while :; do
  i=$((i + 1))
  echo "$1 $i" >> log.txt || exit 1
  head -c $(( (i % 7) * 20000 + 1 )) /dev/urandom > "bin$(( i % 5 )).dat" || exit 1
  git add -A || exit 1
  git commit -q -m "round $1 commit $i" || exit 1
  git rev-parse HEAD || exit 1
done
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("committer")
            .arg(round.to_string())
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Program Test")
            .env("GIT_AUTHOR_EMAIL", "programs@queryfs.test")
            .env("GIT_COMMITTER_NAME", "Program Test")
            .env("GIT_COMMITTER_EMAIL", "programs@queryfs.test")
            .env("GIT_CONFIG_COUNT", "4")
            .env("GIT_CONFIG_KEY_0", "core.fsync")
            .env("GIT_CONFIG_VALUE_0", "all")
            .env("GIT_CONFIG_KEY_1", "core.fsyncMethod")
            .env("GIT_CONFIG_VALUE_1", "fsync")
            .env("GIT_CONFIG_KEY_2", "gc.auto")
            .env("GIT_CONFIG_VALUE_2", "0")
            .env("GIT_CONFIG_KEY_3", "maintenance.autoDetach")
            .env("GIT_CONFIG_VALUE_3", "false")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = 300 + (seed.wrapping_mul(round + 1).wrapping_mul(0x9E37_79B9) >> 7) % 1500;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        m.kill();
        let out = child.wait_with_output().unwrap();
        let hashes: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.len() == 40)
            .map(str::to_string)
            .collect();
        reported_total += hashes.len();
        m.clear_dead();
        m.start();
        let what = format!(
            "round {round} (killed after {delay} ms, {} commits)",
            hashes.len()
        );
        let fsck = run(&repo, "git", &["fsck", "--full"]);
        assert!(
            fsck.status.success(),
            "{what}: git fsck --full after recovery exited {:?}:\n{}{}",
            fsck.status.code(),
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
        if let Some(last) = hashes.last() {
            let descendant = run(&repo, "git", &["merge-base", "--is-ancestor", last, &head])
                .status
                .success();
            let parent = git(&repo, &["rev-parse", &format!("{last}^")])
                .trim()
                .to_string();
            assert!(
                descendant || head == parent,
                "{what}: HEAD {head} is neither the last reported commit {last}, \
                 a descendant, nor its parent"
            );
        }
        // What a killed git leaves behind.
        for lock in [
            ".git/index.lock",
            ".git/HEAD.lock",
            ".git/refs/heads/main.lock",
        ] {
            let _ = fs::remove_file(repo.join(lock));
        }
        git(&repo, &["status", "--porcelain"]);
    }
    assert!(
        reported_total >= 8,
        "too few commits between the kills: {reported_total}"
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "after the kills"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    stop_and_fsck(&mut m, "the git kills");
    eprintln!(
        "git kill test: {reported_total} commits, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ----- SQLite shared by processes -----

/// Three processes (python3's sqlite3) and a connection of the test share
/// one WAL database in the mount: the `-shm` file is mmap'd MAP_SHARED by
/// all of them, which is how WAL readers and writers coordinate. Each does
/// 1000 `BEGIN IMMEDIATE` transactions that bump a shared counter and log a
/// row, and reads the counter back inside the transaction. No update may be
/// lost: the counter ends at the number of transactions, every log row is
/// there, integrity_check is "ok".
#[test]
fn sqlite_wal_shared_by_processes_loses_no_update() {
    assert!(have("python3"), "python3 is not installed");
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    let path = work.join("shared.sqlite");
    let per = 1000i64;
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        db.execute_batch(
            "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT INTO counter VALUES (1, 0);
             CREATE TABLE log (who TEXT NOT NULL, i INTEGER NOT NULL, seen INTEGER NOT NULL,
                               PRIMARY KEY (who, i));",
        )
        .unwrap();
    }
    let py = r#"
import sqlite3, sys
path, who, per = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, timeout=60, isolation_level=None)
db.execute("PRAGMA synchronous=NORMAL")
for i in range(per):
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
    (n,) = db.execute("SELECT n FROM counter WHERE id = 1").fetchone()
    db.execute("INSERT INTO log VALUES (?, ?, ?)", (who, i, n))
    db.execute("COMMIT")
    if i % 100 == 0:
        db.execute("SELECT count(*) FROM log").fetchone()
db.close()
"#;
    let children: Vec<_> = (0..3)
        .map(|k| {
            Command::new("python3")
                .arg("-c")
                .arg(py)
                .arg(&path)
                .arg(format!("py{k}"))
                .arg(per.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    {
        let mut db = rusqlite::Connection::open(&path).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(60)).unwrap();
        db.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        for i in 0..per {
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            tx.execute("UPDATE counter SET n = n + 1 WHERE id = 1", [])
                .unwrap();
            let n: i64 = tx
                .query_row("SELECT n FROM counter WHERE id = 1", [], |r| r.get(0))
                .unwrap();
            tx.execute(
                "INSERT INTO log VALUES ('rust', ?1, ?2)",
                rusqlite::params![i, n],
            )
            .unwrap();
            tx.commit().unwrap();
        }
    }
    for (k, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "python writer {k} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let check = |db: &rusqlite::Connection, when: &str| {
        assert_eq!(integrity(db), "ok", "{when}");
        let n: i64 = db
            .query_row("SELECT n FROM counter", [], |r| r.get(0))
            .unwrap();
        let rows: i64 = db
            .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
            .unwrap();
        // Each transaction saw its own increment: the values seen are
        // exactly 1..=4*per, once each.
        let distinct: i64 = db
            .query_row(
                "SELECT count(DISTINCT seen) FROM log WHERE seen BETWEEN 1 AND ?1",
                [4 * per],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            (n, rows, distinct),
            (4 * per, 4 * per, 4 * per),
            "{when}: lost updates"
        );
    };
    check(&rusqlite::Connection::open(&path).unwrap(), "at the end");
    m.remount();
    check(&rusqlite::Connection::open(&path).unwrap(), "after remount");
    stop_and_fsck(&mut m, "shared sqlite");
    eprintln!(
        "sqlite shared test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ----- sparse files through cp, fallocate, tar and rsync -----

fn blocks(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks()
}

/// Sparse files made and moved by the ordinary tools: `truncate`,
/// `fallocate` (allocate, punch a hole, zero a range, dig holes), `cp`
/// (copy_file_range and SEEK_DATA/SEEK_HOLE), `cp --sparse=always`, `tar -S`
/// and `rsync -S`, into, inside and out of the mount. Content is compared
/// byte for byte everywhere; a file that is mostly hole must take far fewer
/// blocks than its size once written by a sparse-aware tool.
#[test]
fn sparse_files_through_cp_fallocate_tar_and_rsync() {
    assert!(
        have("rsync"),
        "rsync is not installed (.ci/run installs it)"
    );
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();
    let (mut m, work) = mounted(&t);
    let sp = work.join("sparse");
    fs::create_dir(&sp).unwrap();
    // The model: what every copy must hold.
    let size = 9 << 20;
    let mut model = vec![0u8; size];
    let put = |model: &mut Vec<u8>, off: usize, data: &[u8]| {
        model[off..off + data.len()].copy_from_slice(data)
    };
    let f = sp.join("holes.img");
    ok(&sp, "truncate", &["-s", &size.to_string(), s(&f)]);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut h = fs::OpenOptions::new().write(true).open(&f).unwrap();
        for (off, seed, len) in [
            (0usize, 1u64, 4096usize),
            (1 << 20, 2, 70_000),
            (5 << 20, 3, 200_000),
            ((9 << 20) - 100, 4, 100),
        ] {
            let data = pattern(seed, len);
            h.seek(SeekFrom::Start(off as u64)).unwrap();
            h.write_all(&data).unwrap();
            put(&mut model, off, &data);
        }
    }
    // Punch 64 KiB out of the middle of the 200 000 bytes, zero 10 000 at
    // the 1 MiB island, then allocate (no change of content) at 7 MiB.
    let off = (5 << 20) + 65_536;
    ok(
        &sp,
        "fallocate",
        &["-p", "-o", &off.to_string(), "-l", "65536", s(&f)],
    );
    model[off..off + 65_536].fill(0);
    let off = (1 << 20) + 1000;
    ok(
        &sp,
        "fallocate",
        &["-z", "-o", &off.to_string(), "-l", "10000", s(&f)],
    );
    model[off..off + 10_000].fill(0);
    ok(
        &sp,
        "fallocate",
        &["-n", "-o", &(7 << 20).to_string(), "-l", "65536", s(&f)],
    );
    let check = |p: &Path, what: &str| {
        let got = fs::read(p).unwrap_or_else(|e| panic!("{what}: read {}: {e}", p.display()));
        assert_eq!(got.len(), model.len(), "{what}: length");
        if got != model {
            let first = got.iter().zip(&model).position(|(a, b)| a != b).unwrap();
            panic!("{what}: differs from the model first at byte {first}");
        }
    };
    check(&f, "after truncate/write/fallocate in the mount");
    let used = blocks(&f) * 512;
    assert!(
        used < 2 << 20,
        "holes.img: {used} bytes of blocks for {} bytes of data in 9 MiB",
        4096 + 70_000 + 200_000 + 100
    );

    // A file of zeros written the ordinary way, then holes dug in it.
    let z = sp.join("zeros.bin");
    fs::write(&z, vec![0u8; 3 << 20]).unwrap();
    ok(&sp, "fallocate", &["-d", s(&z)]);
    assert_eq!(
        fs::read(&z).unwrap(),
        vec![0u8; 3 << 20],
        "zeros.bin after dig-holes"
    );

    // cp inside the mount, out of it and back in; sparse and not.
    let copies = [
        (sp.join("cp-auto.img"), vec![]),
        (sp.join("cp-sparse.img"), vec!["--sparse=always"]),
    ];
    for (dst, extra) in &copies {
        let mut args: Vec<&str> = extra.clone();
        args.extend([s(&f), s(dst)]);
        ok(&sp, "cp", &args);
        check(dst, &format!("cp {extra:?} in the mount"));
    }
    assert!(
        blocks(&sp.join("cp-sparse.img")) * 512 < 2 << 20,
        "cp --sparse=always made {} bytes of blocks",
        blocks(&sp.join("cp-sparse.img")) * 512
    );
    let out = t.path().join("out.img");
    ok(&sp, "cp", &["--sparse=always", s(&f), s(&out)]);
    check(&out, "cp --sparse=always out of the mount");
    let back = sp.join("back.img");
    ok(&sp, "cp", &["--sparse=always", s(&out), s(&back)]);
    check(&back, "cp --sparse=always from outside into the mount");

    // tar -S and rsync -S, out and in.
    let archive = t.path().join("sparse.tar");
    ok(
        &sp,
        "tar",
        &["-S", "-cf", s(&archive), "-C", s(&sp), "holes.img"],
    );
    let tout = t.path().join("tar-out");
    fs::create_dir(&tout).unwrap();
    ok(&tout, "tar", &["-S", "-xf", s(&archive), "-C", s(&tout)]);
    check(&tout.join("holes.img"), "tar -S out of the mount");
    let tin = sp.join("tar-in");
    fs::create_dir(&tin).unwrap();
    ok(&tin, "tar", &["-S", "-xf", s(&archive), "-C", s(&tin)]);
    check(&tin.join("holes.img"), "tar -S into the mount");
    let rin = sp.join("rsync-in");
    ok(
        &sp,
        "rsync",
        &["-aS", &format!("{}/", s(&tout)), &format!("{}/", s(&rin))],
    );
    check(&rin.join("holes.img"), "rsync -S into the mount");
    let rout = t.path().join("rsync-out");
    ok(
        &sp,
        "rsync",
        &["-aS", &format!("{}/", s(&rin)), &format!("{}/", s(&rout))],
    );
    check(&rout.join("holes.img"), "rsync -S out of the mount");

    // Everything again from the store.
    remount_and_check(
        &mut m,
        &[&f, &back, &tin.join("holes.img"), &rin.join("holes.img")],
        &check,
    );
    assert_eq!(
        fs::read(&z).unwrap(),
        vec![0u8; 3 << 20],
        "zeros.bin after remount"
    );
    stop_and_fsck(&mut m, "sparse files");
    eprintln!("sparse test: {:.1} s", started.elapsed().as_secs_f64());
}

fn remount_and_check(m: &mut Mount, files: &[&Path], check: &dyn Fn(&Path, &str)) {
    m.remount();
    for f in files {
        check(f, &format!("{} after remount", f.display()));
    }
}
