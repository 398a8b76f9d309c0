//! The real binary, offline: put/get round trips, JSON output, errors.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::util::*;

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/one.txt"), b"one\n").unwrap();
    fs::write(root.join("a/b/empty"), b"").unwrap();
    fs::write(root.join("a/b/c/big.bin"), pattern(5, 5_000_123)).unwrap();
    fs::write(root.join("a/b/c/dup.bin"), pattern(5, 5_000_123)).unwrap();
    fs::write(root.join("a/ünïcødé ✓.txt"), "text".repeat(1000)).unwrap();
    fs::set_permissions(root.join("a/one.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("b/c/big.bin", root.join("a/link")).unwrap();
    fs::hard_link(root.join("a/one.txt"), root.join("a/b/one-again")).unwrap();
}

/// Compares two trees: names, kinds, bytes, modes, mtimes, link targets.
fn assert_same_tree(x: &Path, y: &Path) {
    let mut xs: Vec<_> = fs::read_dir(x)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut ys: Vec<_> = fs::read_dir(y)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    xs.sort();
    ys.sort();
    assert_eq!(xs, ys, "entries of {} and {}", x.display(), y.display());
    for n in xs {
        let (a, b) = (x.join(&n), y.join(&n));
        let (ma, mb) = (
            fs::symlink_metadata(&a).unwrap(),
            fs::symlink_metadata(&b).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", a.display());
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&a).unwrap(), fs::read_link(&b).unwrap());
            continue;
        }
        assert_eq!(ma.mode(), mb.mode(), "mode of {}", a.display());
        if ma.is_dir() {
            assert_same_tree(&a, &b);
        } else {
            assert_eq!(
                fs::read(&a).unwrap(),
                fs::read(&b).unwrap(),
                "bytes of {}",
                a.display()
            );
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", a.display());
        }
    }
}

#[test]
fn put_get_round_trip_and_json() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    make_tree(&src);
    qfs_ok(&store, &["init"]);
    qfs_ok(&store, &["put", src.join("a").to_str().unwrap(), "/"]);
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    qfs_ok(&store, &["get", "/a", out.to_str().unwrap()]);
    assert_same_tree(&src.join("a"), &out.join("a"));

    // ls --json: one object per line, with real attributes.
    let lines = qfs_ok(&store, &["ls", "--json", "/a"]);
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "link", "one.txt", "ünïcødé ✓.txt"]);
    let one = &entries[2];
    assert_eq!(one["kind"], "file");
    assert_eq!(one["size"], 4);
    assert_eq!(one["mode"], "0600");
    assert_eq!(one["nlink"], 2, "the hard link was kept");
    assert_eq!(entries[1]["target"], "b/c/big.bin");

    let st: serde_json::Value =
        serde_json::from_str(qfs_ok(&store, &["stat", "--json", "/a/b/one-again"]).trim()).unwrap();
    assert_eq!(st["ino"], one["ino"]);

    let info = info_json(&store);
    assert_eq!(info["files"], 5);
    // big.bin and dup.bin share every chunk.
    let logical = info["logical_bytes"].as_u64().unwrap();
    let stored = info["stored_bytes"].as_u64().unwrap();
    assert_eq!(logical, 4 + 2 * 5_000_123 + 4000);
    assert!(stored < 5_000_123 + 10_000, "stored {stored}");

    let fsck: serde_json::Value =
        serde_json::from_str(qfs_ok(&store, &["fsck", "--json", "--verify"]).trim()).unwrap();
    assert_eq!(fsck["clean"], true);
    assert_eq!(qfs_ok(&store, &["cat", "/a/one.txt"]), "one\n");
}

#[test]
fn mkdir_mv_rm() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    qfs_ok(&store, &["init"]);
    qfs_ok(&store, &["mkdir", "-p", "/x/y/z"]);
    let f = t.path().join("f");
    fs::write(&f, b"content").unwrap();
    qfs_ok(&store, &["put", f.to_str().unwrap(), "/x/y/z/file"]);
    qfs_ok(&store, &["mv", "/x/y/z/file", "/x"]);
    assert_eq!(qfs_ok(&store, &["cat", "/x/file"]), "content");
    qfs_ok(&store, &["mv", "/x/file", "/x/renamed"]);
    assert_eq!(qfs_ok(&store, &["ls", "/x"]), "renamed\ny\n");
    // A bad operand: reported, exit 1 (as coreutils).
    let o = qfs(&store, &["rm", "/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a directory"));
    qfs_ok(&store, &["rm", "-r", "/x"]);
    assert_eq!(qfs_ok(&store, &["ls", "/"]), "");
    let info = info_json(&store);
    assert_eq!(info["blobs"], 0);
}

#[test]
fn bad_input_gives_clear_errors_and_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-store");
    let o = qfs(&missing, &["ls", "/"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a queryfs store") && err.contains("no-such-store"),
        "{err}"
    );

    let store = t.path().join("s");
    qfs_ok(&store, &["init"]);
    let o = qfs(&store, &["cat", "/nope/file"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nope/file") && err.contains("no such file"),
        "{err}"
    );

    let o = qfs(&store, &["put", "/definitely/not/here", "/"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/definitely/not/here"));

    let o = qfs(&store, &["init"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already a queryfs store"));

    let o = qfs(&store, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));

    // A container that belongs to another store is refused.
    let other = t.path().join("other");
    qfs_ok(&other, &["init"]);
    fs::copy(other.join("blobs.qfd"), store.join("blobs.qfd")).unwrap();
    let o = qfs(&store, &["ls", "/"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not belong"));
}

#[test]
fn fsck_reports_damage_with_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    qfs_ok(&store, &["init"]);
    let f = t.path().join("f");
    fs::write(&f, pattern(3, 200_000)).unwrap();
    qfs_ok(&store, &["put", f.to_str().unwrap(), "/f"]);
    // Leak a cluster in the FAT: an orphan that fsck reports and gc reclaims.
    let qfi = store.join("blobs.qfi");
    let mut fat = fs::read(&qfi).unwrap();
    fat.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    fs::write(&qfi, &fat).unwrap();
    let o = qfs(&store, &["fsck"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("orphans"));
    assert!(qfs_ok(&store, &["gc"]).contains("reclaimed 1 orphan clusters"));
    assert_eq!(qfs(&store, &["fsck"]).status.code(), Some(0));
    // Flip bytes inside a data cluster: only --verify can see it.
    let qfd = store.join("blobs.qfd");
    let mut bytes = fs::read(&qfd).unwrap();
    bytes[4096 + 10] ^= 0xff;
    fs::write(&qfd, &bytes).unwrap();
    assert_eq!(qfs(&store, &["fsck"]).status.code(), Some(0));
    let o = qfs(&store, &["fsck", "--verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("does not match its hash"));
}

#[test]
fn files_view_paths_parents_and_extensions() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/c.TXT"), b"x").unwrap();
    fs::write(src.join("a/.bashrc"), b"x").unwrap();
    fs::write(src.join("top.tar.gz"), b"x").unwrap();
    fs::hard_link(src.join("top.tar.gz"), src.join("a/again")).unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init", store.to_str().unwrap()]);
    for e in ["a", "top.tar.gz"] {
        qfs_ok(&store, &["put", src.join(e).to_str().unwrap(), "/"]);
    }
    let out = qfs_ok(
        &store,
        &[
            "query",
            "--json",
            "SELECT path, parent, name, ext, kind FROM files ORDER BY path",
        ],
    );
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("path"), s("parent"), s("name"), s("ext"), s("kind"))
        })
        .collect();
    let want = [
        ("/a", "/", "a", "", "dir"),
        ("/a/.bashrc", "/a", ".bashrc", "", "file"),
        ("/a/again", "/a", "again", "", "file"),
        ("/a/b", "/a", "b", "", "dir"),
        ("/a/b/c.TXT", "/a/b", "c.TXT", "txt", "file"),
        ("/top.tar.gz", "/", "top.tar.gz", "gz", "file"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|w| (w.0.into(), w.1.into(), w.2.into(), w.3.into(), w.4.into()))
        .collect();
    assert_eq!(got, want);
    // A query that never reads `path` sees the same rows.
    let n = qfs_ok(&store, &["query", "SELECT count(*) FROM files"]);
    assert!(n.contains('6'), "{n}");
}

#[test]
fn put_keeps_user_xattrs_and_tags() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("doc.txt");
    fs::write(&src, b"words").unwrap();
    setxattr(&src, "user.comment", b"first draft", 0).unwrap();
    setxattr(&src, "user.tags", b"red,year=1959", 0).unwrap();
    setxattr(&src, "user.bin", &[0, 255, 7], 0).unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init", store.to_str().unwrap()]);
    qfs_ok(&store, &["put", src.to_str().unwrap(), "/"]);
    let tags = qfs_ok(&store, &["tag", "ls", "/doc.txt"]);
    assert_eq!(tags.lines().collect::<Vec<_>>(), ["red", "year=1959"]);
    let s = queryfs::store::open(&store, queryfs::store::Access::Read, false).unwrap();
    let ino = s.fs.resolve("/doc.txt").unwrap().ino;
    assert_eq!(s.fs.getxattr(ino, b"user.comment").unwrap(), b"first draft");
    assert_eq!(s.fs.getxattr(ino, b"user.bin").unwrap(), [0, 255, 7]);
}
