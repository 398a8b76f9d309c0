//! Names are bytes (query folders, `/sql` results, every CLI command, JSON)
//! and each tag is listed once as an xattr (rsync -aX, cp -a and tar round
//! trips change nothing), end to end through a real mount.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

/// A name that is not UTF-8 (Latin-1 "café.txt").
const LATIN1: &[u8] = b"caf\xe9.txt";
/// Its base64, as `{"bytes": ...}` carries it.
const LATIN1_B64: &str = "Y2Fm6S50eHQ=";

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn run(cwd: &Path, prog: &str, args: &[&OsStr]) -> Output {
    Command::new(prog)
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"))
}

fn ok(cwd: &Path, prog: &str, args: &[&str]) -> String {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let o = run(cwd, prog, &a);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `queryfs --store STORE ARGS...` with arguments of any bytes; insists on
/// success and returns stdout as bytes.
fn qfs_bytes(store: &Path, args: &[&OsStr]) -> Vec<u8> {
    let o = Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "queryfs {args:?} failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn dir_names(p: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().into_vec())
        .collect();
    v.sort();
    v
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {s:?}"),
    };
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q
            .iter()
            .map(|&c| if c == b'=' { 0 } else { val(c) as u32 })
            .fold(0u32, |a, v| a << 6 | v);
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

/// A JSON name back to bytes: a string, or `{"bytes": base64}`.
fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Object(o) => {
            assert_eq!(o.len(), 1, "{v}");
            b64_decode(o["bytes"].as_str().unwrap())
        }
        _ => panic!("not a name: {v}"),
    }
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(out)
        .expect("JSON output is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A `/sql` folder for `sql` (no `/` in it).
fn sql_dir(m: &Mount, sql: &str) -> PathBuf {
    assert!(!sql.contains('/'));
    m.path("sql").join(sql)
}

#[test]
fn non_utf8_names_in_query_folders_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    fs::create_dir(m.path("docs")).unwrap();
    let f = m.path("docs").join(os(LATIN1));
    fs::write(&f, b"latin one\n").unwrap();
    fs::write(m.path("docs/tagged.txt"), b"x").unwrap();
    setxattr(&m.path("docs/tagged.txt"), "user.tag.t", b"", 0).unwrap();

    // /queries/untagged and /queries/recent list it by its own bytes.
    for q in ["untagged", "recent"] {
        let names = dir_names(&m.path("queries").join(q));
        assert!(names.contains(&LATIN1.to_vec()), "/queries/{q}: {names:?}");
        assert_eq!(
            fs::read(m.path("queries").join(q).join(os(LATIN1))).unwrap(),
            b"latin one\n"
        );
    }

    // A /sql query matching the bytes of the name (CAST AS BLOB), and the
    // same through LIKE on the text column.
    for sql in [
        "SELECT id, path FROM files WHERE CAST(name AS BLOB) = x'636166e92e747874'",
        "SELECT path FROM files WHERE name LIKE 'caf%'",
    ] {
        let d = sql_dir(&m, sql);
        assert_eq!(dir_names(&d), vec![LATIN1.to_vec()], "{sql}");
        assert_eq!(fs::read(d.join(os(LATIN1))).unwrap(), b"latin one\n");
    }

    // Rows that name no file: result.csv holds the bytes as they are,
    // result.json the documented encoding.
    let d = sql_dir(
        &m,
        "SELECT name AS n, parent AS p, size FROM files WHERE kind = 'file' ORDER BY size DESC",
    );
    let csv = fs::read(d.join("result.csv")).unwrap();
    let mut want = b"n,p,size\n".to_vec();
    want.extend_from_slice(LATIN1);
    want.extend_from_slice(b",/docs,10\ntagged.txt,/docs,1\n");
    assert_eq!(csv, want);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("result.json")).unwrap()).unwrap();
    assert_eq!(json[0]["n"], serde_json::json!({ "bytes": LATIN1_B64 }));
    assert_eq!(json_bytes(&json[0]["n"]), LATIN1);
    assert_eq!(json[1]["n"], serde_json::json!("tagged.txt"));
    assert_eq!(json[0]["p"], serde_json::json!("/docs"));

    // A path column that is not UTF-8 names a file too.
    let d = sql_dir(
        &m,
        "SELECT path || '' AS path FROM files WHERE name LIKE 'caf%'",
    );
    assert_eq!(dir_names(&d), vec![LATIN1.to_vec()]);

    // A saved query whose results hold the name (saved offline).
    m.stop();
    qfs_ok(
        &m.store,
        &[
            "query",
            "save",
            "latin",
            "SELECT id, path FROM files WHERE hex(name) = '636166E92E747874'",
        ],
    );
    m.start();
    assert_eq!(dir_names(&m.path("queries/latin")), vec![LATIN1.to_vec()]);
    assert_eq!(
        fs::read(m.path("queries/latin").join(os(LATIN1))).unwrap(),
        b"latin one\n"
    );
    m.stop();
}

#[test]
fn every_cli_command_takes_and_prints_non_utf8_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    qfs_ok(&store, &["init"]);
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let src = outside.join(os(LATIN1));
    fs::write(&src, b"latin one\n").unwrap();

    // put: a source and a destination that are not UTF-8.
    let mut dest = b"/d\xff".to_vec();
    qfs_bytes(&store, &[os(b"mkdir"), os(&dest)]);
    qfs_bytes(&store, &[os(b"put"), src.as_os_str(), os(&dest)]);
    dest.push(b'/');
    let mut p = dest.clone();
    p.extend_from_slice(LATIN1);

    // ls: raw bytes on a text output, {"bytes"} in JSON.
    let out = qfs_bytes(&store, &[os(b"ls"), os(b"/")]);
    assert_eq!(out, b"d\xff\n");
    let out = qfs_bytes(&store, &[os(b"ls"), os(&dest)]);
    assert_eq!(out, [LATIN1, b"\n"].concat());
    let out = qfs_bytes(&store, &[os(b"ls"), os(b"-l"), os(&dest)]);
    assert!(out.ends_with(&[b" ", LATIN1, b"\n"].concat()), "{out:?}");
    let j = json_lines(&qfs_bytes(&store, &[os(b"ls"), os(b"--json"), os(&dest)]));
    assert_eq!(j.len(), 1);
    assert_eq!(j[0]["name"], serde_json::json!({ "bytes": LATIN1_B64 }));
    assert_eq!(json_bytes(&j[0]["name"]), LATIN1);
    assert_eq!(json_bytes(&j[0]["path"]), p);

    // stat, text and JSON.
    let out = qfs_bytes(&store, &[os(b"stat"), os(&p)]);
    assert!(
        contains(&out, &[b"path: ", &p[..], b"\n"].concat()),
        "{out:?}"
    );
    let j = json_lines(&qfs_bytes(&store, &[os(b"stat"), os(b"--json"), os(&p)]));
    assert_eq!(json_bytes(&j[0]["path"]), p);
    assert_eq!(json_bytes(&j[0]["name"]), LATIN1);
    assert_eq!(j[0]["size"], 10);

    // cat and get.
    assert_eq!(qfs_bytes(&store, &[os(b"cat"), os(&p)]), b"latin one\n");
    let got = outside.join("got");
    fs::create_dir(&got).unwrap();
    qfs_bytes(&store, &[os(b"get"), os(&p), got.as_os_str()]);
    assert_eq!(fs::read(got.join(os(LATIN1))).unwrap(), b"latin one\n");
    qfs_bytes(&store, &[os(b"get"), os(&dest), got.as_os_str()]);
    assert_eq!(
        fs::read(got.join(os(b"d\xff")).join(os(LATIN1))).unwrap(),
        b"latin one\n"
    );

    // tag add / ls / rm.
    qfs_bytes(
        &store,
        &[os(b"tag"), os(b"add"), os(&p), os(b"lang=fr"), os(b"old")],
    );
    assert_eq!(
        qfs_bytes(&store, &[os(b"tag"), os(b"ls"), os(&p)]),
        b"lang=fr\nold\n"
    );
    let j = json_lines(&qfs_bytes(
        &store,
        &[os(b"tag"), os(b"ls"), os(b"--json"), os(&p)],
    ));
    assert_eq!(j[0]["tag"], "lang");
    qfs_bytes(&store, &[os(b"tag"), os(b"rm"), os(&p), os(b"old")]);
    assert_eq!(
        qfs_bytes(&store, &[os(b"tag"), os(b"ls"), os(&p)]),
        b"lang=fr\n"
    );

    // query: raw bytes in the table, {"bytes"} in JSON.
    let sql = "SELECT path, name FROM files WHERE kind = 'file'";
    let out = qfs_bytes(&store, &[os(b"query"), os(sql.as_bytes())]);
    assert!(contains(&out, &p), "{out:?}");
    let j = json_lines(&qfs_bytes(
        &store,
        &[os(b"query"), os(b"--json"), os(sql.as_bytes())],
    ));
    assert_eq!(j.len(), 1);
    assert_eq!(json_bytes(&j[0]["path"]), p);
    assert_eq!(j[0]["name"], serde_json::json!({ "bytes": LATIN1_B64 }));
    // Tag names stay UTF-8, refused clearly otherwise.
    let o = Command::new(bin())
        .arg("--store")
        .arg(&store)
        .args([os(b"tag"), os(b"add"), os(&p), os(b"bad\xff")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));

    // mv to another non-UTF-8 name, then rm; mkdir -p of such a path.
    let mut p2 = dest.clone();
    p2.extend_from_slice(b"r\xe9sum\xe9");
    qfs_bytes(&store, &[os(b"mv"), os(&p), os(&p2)]);
    assert_eq!(
        qfs_bytes(&store, &[os(b"ls"), os(&dest)]),
        b"r\xe9sum\xe9\n"
    );
    assert_eq!(qfs_bytes(&store, &[os(b"cat"), os(&p2)]), b"latin one\n");
    qfs_bytes(&store, &[os(b"rm"), os(&p2)]);
    assert_eq!(qfs_bytes(&store, &[os(b"ls"), os(&dest)]), b"");
    qfs_bytes(&store, &[os(b"mkdir"), os(b"-p"), os(b"/x\xfe/y\xfd")]);
    assert_eq!(qfs_bytes(&store, &[os(b"ls"), os(b"/x\xfe")]), b"y\xfd\n");
    qfs_bytes(&store, &[os(b"rm"), os(b"-r"), os(b"/x\xfe")]);
    assert_eq!(qfs_bytes(&store, &[os(b"ls"), os(b"/")]), b"d\xff\n");
}

// ----- one xattr listing: rsync -aX, cp -a, tar --xattrs -----

/// Every file of a tree (relative path) with its content and user.* xattrs.
type Snapshot = BTreeMap<PathBuf, (Vec<u8>, BTreeMap<String, Vec<u8>>)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let xs = listxattr(&p)
                .into_iter()
                .map(|n| {
                    let v = getxattr(&p, &n).unwrap();
                    (n, v)
                })
                .collect();
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (fs::read(&p).unwrap(), xs),
            );
        }
    }
    out
}

fn tags_of(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    snapshot(root)
        .keys()
        .map(|k| (k.clone(), getxattr(&root.join(k), "user.tags").ok()))
        .collect()
}

fn make_tagged_tree(t: &Path) {
    fs::create_dir_all(t.join("sub")).unwrap();
    fs::write(t.join("a.txt"), b"a").unwrap();
    fs::write(t.join("b.txt"), b"bb").unwrap();
    fs::write(t.join("sub/c.flac"), b"ccc").unwrap();
    fs::write(t.join("plain.txt"), b"no tags").unwrap();
    setxattr(&t.join("a.txt"), "user.tags", b"jazz,year=1959", 0).unwrap();
    setxattr(&t.join("b.txt"), "user.tag.blues", b"", 0).unwrap();
    setxattr(&t.join("b.txt"), "user.tag.mood", b"calm", 0).unwrap();
    setxattr(&t.join("b.txt"), "user.comment", b"an ordinary xattr", 0).unwrap();
    setxattr(&t.join("sub/c.flac"), "user.tag.jazz", b"", 0).unwrap();
    setxattr(&t.join("plain.txt"), "user.comment", b"only this", 0).unwrap();
}

#[test]
fn each_tag_is_listed_once_and_copies_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    let src = m.path("src");
    make_tagged_tree(&src);

    // Each tag once, user.tags not listed (but readable).
    let mut l = listxattr(&src.join("b.txt"));
    l.sort();
    assert_eq!(l, ["user.comment", "user.tag.blues", "user.tag.mood"]);
    assert_eq!(
        getxattr(&src.join("b.txt"), "user.tags").unwrap(),
        b"blues,mood=calm"
    );
    // Values that are not UTF-8 stay refused, nothing changed.
    assert_eq!(
        setxattr(&src.join("b.txt"), "user.tag.mood", b"\xff", 0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        getxattr(&src.join("b.txt"), "user.tag.mood").unwrap(),
        b"calm"
    );

    let want = snapshot(&src);
    let want_tags = tags_of(&src);
    assert_eq!(
        want_tags[Path::new("a.txt")].as_deref(),
        Some(&b"jazz,year=1959"[..])
    );

    // rsync -aX three times into another folder of the mount.
    let dst = m.path("dst");
    let rsync = || {
        ok(
            Path::new("/"),
            "rsync",
            &[
                "-aX",
                "--itemize-changes",
                &format!("{}/", src.display()),
                &format!("{}/", dst.display()),
            ],
        )
    };
    let first = rsync();
    assert!(!first.trim().is_empty());
    assert_eq!(snapshot(&dst), want);
    assert_eq!(tags_of(&dst), want_tags);
    for run in 2..=3 {
        let out = rsync();
        assert_eq!(out.trim(), "", "rsync run {run} itemized changes");
        assert_eq!(snapshot(&dst), want, "after run {run}");
        assert_eq!(tags_of(&dst), want_tags, "tags after run {run}");
    }
    // The tags are real: the tag folder lists both copies of both files.
    let jazz: Vec<Vec<u8>> = dir_names(&m.path("by-tag/jazz"))
        .into_iter()
        .filter(|n| m.path("by-tag/jazz").join(os(n)).is_file())
        .collect();
    assert_eq!(jazz.len(), 4, "{jazz:?}");

    // cp -a, twice over the same destination.
    let cp = m.path("cp");
    for _ in 0..2 {
        ok(
            Path::new("/"),
            "cp",
            &[
                "-a",
                "-T",
                &src.display().to_string(),
                &cp.display().to_string(),
            ],
        );
        assert_eq!(snapshot(&cp), want);
        assert_eq!(tags_of(&cp), want_tags);
    }

    // tar --xattrs out of the mount and back in.
    let archive = dir.path().join("t.tar");
    ok(
        &src,
        "tar",
        &[
            "--xattrs",
            "--format=posix",
            "-cf",
            &archive.display().to_string(),
            ".",
        ],
    );
    let tx = m.path("tarred");
    fs::create_dir(&tx).unwrap();
    ok(
        &tx,
        "tar",
        &["--xattrs", "-xf", &archive.display().to_string()],
    );
    assert_eq!(snapshot(&tx), want);
    assert_eq!(tags_of(&tx), want_tags);
    // The archive carries each tag once.
    let listing = ok(
        Path::new("/"),
        "tar",
        &["--xattrs", "-tvvf", &archive.display().to_string()],
    );
    assert!(listing.contains(" user.tag.jazz\n"), "{listing}");
    assert!(!listing.contains("user.tags"), "{listing}");

    // After a remount everything is still there.
    m.remount();
    assert_eq!(snapshot(&dst), want);
    assert_eq!(tags_of(&tx), want_tags);
    m.stop();
}
