//! The CLI behaves as coreutils, TMSU and friends do: several operands,
//! closed pipes, many files per tag command, `files`, word queries,
//! `query save` without overwriting, `get` keeping what `put` keeps.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::*;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A store with /a (jazz), /b (jazz, live), /c (year=1959).
fn store_abc(t: &Path) -> std::path::PathBuf {
    let s = t.join("s");
    qfs_ok(&s, &["init"]);
    for n in ["a", "b", "c"] {
        fs::write(t.join(n), n.repeat(3)).unwrap();
    }
    let (a, b, c) = (t.join("a"), t.join("b"), t.join("c"));
    qfs_ok(
        &s,
        &[
            "put",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
            "/",
        ],
    );
    qfs_ok(&s, &["tag", "add", "/a", "/b", "--", "jazz"]);
    qfs_ok(&s, &["tag", "add", "/b", "live"]); // the one-file form
    qfs_ok(&s, &["tag", "add", "/c", "--", "year=1959"]);
    s
}

#[test]
fn several_operands_go_on_and_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let s = store_abc(t.path());
    let o = qfs(&s, &["cat", "/a", "/missing", "/b"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert_eq!(o.stdout, b"aaabbb");
    assert!(err(&o).contains("/missing: no such file"), "{}", err(&o));
    // One message for the bad operand, not the path twice.
    assert_eq!(err(&o).matches("/missing").count(), 1, "{}", err(&o));

    let o = qfs(&s, &["stat", "--json", "/nope", "/a"]);
    assert_eq!(code(&o), 1);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);

    let o = qfs(&s, &["mkdir", "/d1", "/nope/x", "/d2"]);
    assert_eq!(code(&o), 1);
    qfs_ok(&s, &["stat", "/d1", "/d2"]);

    let o = qfs(&s, &["rm", "/nope", "/d1", "/d2"]);
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("is a directory"), "{}", err(&o));
    let o = qfs(&s, &["rm", "-r", "/d1", "/nope", "/d2"]);
    assert_eq!(code(&o), 1);
    assert_eq!(code(&qfs(&s, &["stat", "/d1"])), 1);
    assert_eq!(code(&qfs(&s, &["stat", "/d2"])), 1);

    // Tagging goes on past a missing file too.
    let o = qfs(&s, &["tag", "add", "/nope", "/c", "--", "blue"]);
    assert_eq!(code(&o), 1);
    assert_eq!(qfs_ok(&s, &["tag", "ls", "/c"]), "blue\nyear=1959\n");
    let o = qfs(&s, &["tag", "rm", "/a", "/c", "--", "blue"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("/a: not tagged \"blue\""), "{}", err(&o));
    assert_eq!(qfs_ok(&s, &["tag", "ls", "/c"]), "year=1959\n");
}

/// `CMD | head -c1`: exit 0, nothing on stderr.
fn piped_to_head(args: &[&str]) {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    std::io::Read::read_exact(&mut out, &mut one).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{args:?}: {}", err(&o));
    assert_eq!(err(&o), "", "{args:?}");
}

#[test]
fn a_closed_pipe_is_success() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    qfs_ok(&s, &["init"]);
    let big = t.path().join("big");
    fs::write(&big, pattern(1, 8 << 20)).unwrap();
    qfs_ok(&s, &["put", big.to_str().unwrap(), "/big"]);
    let st = s.to_str().unwrap();
    piped_to_head(&["--store", st, "cat", "/big", "/big"]);
    let img = t.path().join("x.qfi");
    qfs_ok(&s, &["export-qvfs", img.to_str().unwrap()]);
    piped_to_head(&["qvfs", "cat", img.to_str().unwrap(), "/big", "/big"]);
    // An error names the path once.
    let o = qfs(&s, &["export-qvfs", img.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert_eq!(
        err(&o).matches("x.qfi").count(),
        1,
        "the path repeated: {}",
        err(&o)
    );
}

#[test]
fn files_prints_the_matching_paths() {
    let t = tempfile::tempdir().unwrap();
    let s = store_abc(t.path());
    assert_eq!(qfs_ok(&s, &["files", "jazz"]), "/a\n/b\n");
    assert_eq!(qfs_ok(&s, &["files", "jazz", "!live"]), "/a\n");
    // Words: no quoting needed.
    assert_eq!(qfs_ok(&s, &["files", "jazz", "and", "not", "live"]), "/a\n");
    assert_eq!(qfs_ok(&s, &["files", "jazz and not live"]), "/a\n");
    assert_eq!(
        qfs_ok(&s, &["files", "live", "or", "year.eq.1959"]),
        "/b\n/c\n"
    );
    assert_eq!(qfs_ok(&s, &["files", "year.ge.1950"]), "/c\n");
    assert_eq!(qfs_ok(&s, &["files", "year>=1950"]), "/c\n");
    assert_eq!(qfs_ok(&s, &["files", "-0", "jazz"]), "/a\0/b\0");
    assert_eq!(
        qfs_ok(&s, &["files", "--under", "/mnt/x", "year=1959"]),
        "/mnt/x/c\n"
    );
    // A tagged directory is listed by its path too.
    qfs_ok(&s, &["mkdir", "/dir"]);
    qfs_ok(&s, &["tag", "add", "/dir", "--", "live"]);
    assert_eq!(qfs_ok(&s, &["files", "live"]), "/b\n/dir\n");
    let o = qfs(&s, &["files", "nothing-has-this"]);
    assert_eq!(code(&o), 1);
    let o = qfs(&s, &["files", "jazz", "and"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn query_save_refuses_to_overwrite_and_json_keeps_column_order() {
    let t = tempfile::tempdir().unwrap();
    let s = store_abc(t.path());
    qfs_ok(&s, &["query", "save", "small", "SELECT path FROM files"]);
    let o = qfs(&s, &["query", "save", "small", "SELECT 1"]);
    assert_eq!(code(&o), 2);
    assert!(err(&o).contains("--force"), "{}", err(&o));
    qfs_ok(
        &s,
        &["query", "save", "--force", "small", "SELECT 2 AS two"],
    );
    let ls = qfs_ok(&s, &["query", "ls"]);
    assert!(ls.contains("small\tSELECT 2 AS two"), "{ls}");
    let j = qfs_ok(
        &s,
        &[
            "query",
            "--json",
            "SELECT size, path, 1 AS a FROM files WHERE path = '/a'",
        ],
    );
    assert_eq!(j, "{\"size\":3,\"path\":\"/a\",\"a\":1}\n");
}

#[test]
fn get_keeps_what_put_keeps() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    qfs_ok(&s, &["init"]);
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"hello").unwrap();
    fs::hard_link(src.join("d/f"), src.join("d/g")).unwrap();
    std::os::unix::fs::symlink("/does/not/exist", src.join("d/dangling")).unwrap();
    std::os::unix::fs::symlink("f", src.join("d/ok")).unwrap();
    fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(src.join("d/f"), Some(1234), Some(2345)).unwrap();
    setxattr(&src.join("d/f"), "user.tag.jazz", b"", 0).unwrap();
    setxattr(&src.join("d/f"), "user.comment", b"hi", 0).unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(src.join("d/f"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    qfs_ok(&s, &["put", src.to_str().unwrap(), "/"]);
    // A dangling symlink alone, too.
    qfs_ok(&s, &["put", src.join("d/dangling").to_str().unwrap(), "/"]);
    assert!(qfs_ok(&s, &["ls", "-l", "/"]).contains("dangling -> /does/not/exist"));
    assert_eq!(qfs_ok(&s, &["tag", "ls", "/src/d/g"]), "jazz\n");

    // A tagged symlink does not stop get (its tags cannot go to disk).
    qfs_ok(&s, &["tag", "add", "/src/d/ok", "--", "linked"]);
    let out = t.path().join("out");
    qfs_ok(&s, &["get", "/src", out.to_str().unwrap()]);
    let f = fs::symlink_metadata(out.join("d/f")).unwrap();
    let g = fs::symlink_metadata(out.join("d/g")).unwrap();
    assert_eq!(f.ino(), g.ino(), "hard link kept");
    assert_eq!(f.mode() & 0o7777, 0o640);
    assert_eq!((f.uid(), f.gid()), (1234, 2345));
    assert_eq!(f.mtime(), 1_000_000_000);
    assert_eq!(getxattr(&out.join("d/f"), "user.tag.jazz").unwrap(), b"");
    assert_eq!(getxattr(&out.join("d/f"), "user.comment").unwrap(), b"hi");
    assert_eq!(
        fs::read_link(out.join("d/dangling")).unwrap(),
        Path::new("/does/not/exist")
    );
    assert_eq!(fs::read(out.join("d/ok")).unwrap(), b"hello");
}
