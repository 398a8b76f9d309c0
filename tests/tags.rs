//! Tags through xattrs and query folders, end to end through a real mount.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::util::*;

pub(crate) fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

pub(crate) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn err_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.raw_os_error().unwrap(),
    }
}

#[test]
fn tags_through_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    let f = m.path("song.flac");
    fs::write(&f, b"music").unwrap();

    setxattr(&f, "user.tags", b"jazz, year=1959,Jazz", 0).unwrap();
    assert_eq!(getxattr(&f, "user.tags").unwrap(), b"Jazz,jazz,year=1959");
    assert_eq!(getxattr(&f, "user.tag.year").unwrap(), b"1959");
    assert_eq!(getxattr(&f, "user.tag.jazz").unwrap(), b"");
    assert_eq!(getxattr(&f, "user.tag.blues"), Err(libc::ENODATA));
    let mut l = listxattr(&f);
    l.sort();
    assert_eq!(l, vec!["user.tag.Jazz", "user.tag.jazz", "user.tag.year",]);

    setxattr(&f, "user.tag.音楽", b"", 0).unwrap();
    setxattr(&f, "user.comment", b"plain attribute", 0).unwrap();
    assert_eq!(getxattr(&f, "user.comment").unwrap(), b"plain attribute");
    remove_xattr(&f, "user.tag.Jazz").unwrap();
    assert_eq!(
        getxattr(&f, "user.tags").unwrap(),
        "jazz,year=1959,音楽".as_bytes()
    );
    assert_eq!(remove_xattr(&f, "user.tag.Jazz"), Err(libc::ENODATA));

    // Bad names and values: EINVAL, nothing changed.
    for bad in ["user.tag.a/b", "user.tag.a,b", "user.tag.", "user.tag.x=y"] {
        assert_eq!(setxattr(&f, bad, b"", 0), Err(libc::EINVAL), "{bad}");
    }
    assert_eq!(
        setxattr(&f, "user.tags", b"ok,bad|name", 0),
        Err(libc::EINVAL)
    );
    assert_eq!(setxattr(&f, "user.tag.v", b"a,b", 0), Err(libc::EINVAL));
    assert_eq!(
        getxattr(&f, "user.tags").unwrap(),
        "jazz,year=1959,音楽".as_bytes()
    );

    // The whole set replaces; removing user.tags clears.
    setxattr(&f, "user.tags", b"blues", 0).unwrap();
    assert_eq!(getxattr(&f, "user.tags").unwrap(), b"blues");
    remove_xattr(&f, "user.tags").unwrap();
    assert_eq!(getxattr(&f, "user.tags"), Err(libc::ENODATA));

    // Tags survive a rename and a remount, and are shared by hard links.
    setxattr(&f, "user.tags", b"keep", 0).unwrap();
    fs::create_dir(m.path("moved")).unwrap();
    fs::rename(&f, m.path("moved/renamed.flac")).unwrap();
    fs::hard_link(m.path("moved/renamed.flac"), m.path("link.flac")).unwrap();
    assert_eq!(
        getxattr(&m.path("link.flac"), "user.tags").unwrap(),
        b"keep"
    );

    m.remount();
    assert_eq!(
        getxattr(&m.path("moved/renamed.flac"), "user.tags").unwrap(),
        b"keep"
    );
    assert_eq!(names(&m.path("by-tag/keep")), set(&["link.flac"]));
    m.stop();
}

pub(crate) fn tagged(m: &Mount, rel: &str, tags: &str) {
    let p = m.path(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, rel.as_bytes()).unwrap();
    if !tags.is_empty() {
        setxattr(&p, "user.tags", tags.as_bytes(), 0).unwrap();
    }
}

#[test]
fn by_tag_folders() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    tagged(&m, "music/kind-of-blue.flac", "jazz,year=1959");
    tagged(&m, "music/a-love-supreme.flac", "jazz,year=1965");
    tagged(&m, "music/highway-61.flac", "rock,year=1965");
    tagged(&m, "music/notes.txt", "");
    tagged(&m, "other/kind-of-blue.flac", "jazz,bootleg");

    assert_eq!(
        names(&m.path("by-tag")),
        set(&["bootleg", "jazz", "rock", "year"])
    );
    // Same name twice: the lower inode keeps it, the other gets ~INO.
    let other = fs::metadata(m.path("other/kind-of-blue.flac"))
        .unwrap()
        .ino();
    let clash = format!("kind-of-blue~{other}.flac");
    assert_eq!(
        names(&m.path("by-tag/jazz")),
        set(&[
            "kind-of-blue.flac",
            &clash,
            "a-love-supreme.flac",
            "bootleg",
            "year"
        ])
    );
    // Entries are the real files: same inode.
    assert_eq!(
        fs::metadata(m.path("by-tag/jazz").join(&clash))
            .unwrap()
            .ino(),
        other
    );
    // AND, OR, NOT, values.
    assert_eq!(
        names(&m.path("by-tag/jazz/year")),
        set(&["kind-of-blue.flac", "a-love-supreme.flac"])
    );
    assert_eq!(
        names(&m.path("by-tag/jazz/bootleg")),
        set(&["kind-of-blue.flac"])
    );
    assert_eq!(
        names(&m.path("by-tag/jazz|rock/year=1965")),
        set(&["a-love-supreme.flac", "highway-61.flac"])
    );
    assert_eq!(
        names(&m.path("by-tag/jazz/!bootleg")),
        set(&["kind-of-blue.flac", "a-love-supreme.flac"])
    );
    assert_eq!(
        names(&m.path("by-tag/year>1960")),
        set(&["a-love-supreme.flac", "highway-61.flac", "jazz", "rock"])
    );
    assert_eq!(
        names(&m.path("by-tag/year<=1959")),
        set(&["kind-of-blue.flac", "jazz"])
    );
    // Directories show as relative symlinks to their real place.
    setxattr(&m.path("music"), "user.tags", b"jazz", 0).unwrap();
    let link = m.path("by-tag/jazz/music");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(names(&link), names(&m.path("music")));
    // An unknown tag is not a folder.
    assert_eq!(err_of(fs::metadata(m.path("by-tag/nope"))), libc::ENOENT);

    // Writing through a query-folder entry changes the real file.
    fs::write(m.path("by-tag/rock/highway-61.flac"), b"revisited").unwrap();
    assert_eq!(
        fs::read(m.path("music/highway-61.flac")).unwrap(),
        b"revisited"
    );
    // Tagging through an entry tags the real file.
    setxattr(
        &m.path("by-tag/rock/highway-61.flac"),
        "user.tag.classic",
        b"",
        0,
    )
    .unwrap();
    assert_eq!(
        getxattr(&m.path("music/highway-61.flac"), "user.tags").unwrap(),
        b"classic,rock,year=1965"
    );
    m.stop();
}

#[test]
fn tagging_with_mv_cp_ln_rm_mkdir_rmdir() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    tagged(&m, "docs/report.pdf", "");
    tagged(&m, "docs/letter.txt", "");
    let report = m.path("docs/report.pdf");
    let ino = fs::metadata(&report).unwrap().ino();

    // mkdir creates a tag; an empty tag folder lists nothing.
    fs::create_dir(m.path("by-tag/office")).unwrap();
    assert_eq!(
        err_of(fs::create_dir(m.path("by-tag/office"))),
        libc::EEXIST
    );
    assert_eq!(
        err_of(fs::create_dir(m.path("by-tag/bad,name"))),
        libc::EINVAL
    );
    assert!(names(&m.path("by-tag/office")).is_empty());

    // mv into a tag folder tags; the file stays where it is.
    fs::rename(&report, m.path("by-tag/office/report.pdf")).unwrap();
    assert!(report.exists());
    assert_eq!(names(&m.path("by-tag/office")), set(&["report.pdf"]));
    assert_eq!(getxattr(&report, "user.tags").unwrap(), b"office");

    // ln into a tag folder tags, without a new name in the tree.
    fs::create_dir(m.path("by-tag/urgent")).unwrap();
    fs::hard_link(&report, m.path("by-tag/urgent/report.pdf")).unwrap();
    assert_eq!(fs::metadata(&report).unwrap().nlink(), 1);
    assert_eq!(getxattr(&report, "user.tags").unwrap(), b"office,urgent");

    // cp of a file of the store into a tag folder makes a real copy in
    // /inbox, tagged (so that removing the source afterwards loses
    // nothing; see tests/semantics.rs); the source is left alone.
    let files_before = info_files(&m);
    fs::copy(
        m.path("docs/letter.txt"),
        m.path("by-tag/office/letter.txt"),
    )
    .unwrap();
    assert_eq!(
        getxattr(&m.path("docs/letter.txt"), "user.tags"),
        Err(libc::ENODATA)
    );
    assert_eq!(
        getxattr(&m.path("inbox/letter.txt"), "user.tags").unwrap(),
        b"office"
    );
    assert_eq!(
        names(&m.path("by-tag/office")),
        set(&["report.pdf", "letter.txt", "urgent"])
    );
    assert_eq!(info_files(&m), files_before + 1);
    // cp of a new file keeps it, tagged, in /inbox.
    let outside = dir.path().join("new.txt");
    fs::write(&outside, b"from outside").unwrap();
    fs::copy(&outside, m.path("by-tag/office/new.txt")).unwrap();
    assert_eq!(fs::read(m.path("inbox/new.txt")).unwrap(), b"from outside");
    assert_eq!(
        getxattr(&m.path("inbox/new.txt"), "user.tags").unwrap(),
        b"office"
    );

    // mv between tag folders retags.
    fs::create_dir(m.path("by-tag/done")).unwrap();
    fs::rename(
        m.path("by-tag/urgent/report.pdf"),
        m.path("by-tag/done/report.pdf"),
    )
    .unwrap();
    assert_eq!(getxattr(&report, "user.tags").unwrap(), b"done,office");

    // rm in a tag folder untags and never deletes.
    fs::remove_file(m.path("by-tag/office/report.pdf")).unwrap();
    assert!(report.exists());
    assert_eq!(getxattr(&report, "user.tags").unwrap(), b"done");
    assert_eq!(fs::read(&report).unwrap(), b"docs/report.pdf");

    // rmdir: only an unused tag goes.
    assert_eq!(
        err_of(fs::remove_dir(m.path("by-tag/done"))),
        libc::ENOTEMPTY
    );
    fs::remove_dir(m.path("by-tag/urgent")).unwrap();
    assert!(!names(&m.path("by-tag")).contains("urgent"));
    // rm -r of a tag folder untags everything in it and removes the tag,
    // leaving the files of the tree and their other tags alone; the
    // copies that live only in /inbox for this tag go with it.
    setxattr(&m.path("docs/letter.txt"), "user.tag.done", b"", 0).unwrap();
    fs::remove_dir_all(m.path("by-tag/office")).unwrap();
    assert!(!names(&m.path("by-tag")).contains("office"));
    assert_eq!(
        getxattr(&m.path("docs/letter.txt"), "user.tags").unwrap(),
        b"done"
    );
    assert!(!m.path("inbox/new.txt").exists());
    assert!(!m.path("inbox/letter.txt").exists());
    assert_eq!(fs::read(&outside).unwrap(), b"from outside");

    // Renaming a tag folder renames the tag.
    fs::rename(m.path("by-tag/done"), m.path("by-tag/finished")).unwrap();
    assert_eq!(getxattr(&report, "user.tags").unwrap(), b"finished");

    // Moving out of a query folder moves the real file: tests/semantics.rs.
    assert_eq!(fs::metadata(&report).unwrap().ino(), ino);

    // Reserved names at the root.
    for n in ["by-tag", "sql", "queries"] {
        assert_eq!(err_of(fs::create_dir(m.path(n))), libc::EEXIST, "{n}");
        assert_eq!(err_of(fs::write(m.path(n), b"x")), libc::EISDIR, "{n}");
        assert_eq!(
            err_of(fs::rename(m.path("docs"), m.path(n))),
            libc::EBUSY,
            "{n}"
        );
    }
    m.stop();
    // The CLI sees the same tags.
    assert_eq!(
        qfs_ok(&m.store, &["tag", "ls", "/docs/report.pdf"]),
        "finished\n"
    );
    let tags = qfs_ok(&m.store, &["tags", "--json"]);
    let v: Vec<serde_json::Value> = tags
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        v.contains(&serde_json::json!({"tag": "finished", "files": 2})),
        "{v:?}"
    );
    assert!(!v.iter().any(|t| t["tag"] == "done"), "{v:?}");
}

fn info_files(m: &Mount) -> u64 {
    let o = std::process::Command::new("find")
        .arg(&m.mp)
        .args([
            "-path",
            &format!("{}/by-tag", m.mp.display()),
            "-prune",
            "-o",
        ])
        .args(["-path", &format!("{}/sql", m.mp.display()), "-prune", "-o"])
        .args([
            "-path",
            &format!("{}/queries", m.mp.display()),
            "-prune",
            "-o",
        ])
        .args(["-type", "f", "-print"])
        .output()
        .unwrap();
    o.stdout.iter().filter(|&&b| b == b'\n').count() as u64
}

#[test]
fn sql_and_saved_query_folders() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    tagged(&m, "a/one.txt", "x");
    tagged(&m, "b/one.txt", "");
    tagged(&m, "b/two.md", "x,y");
    fs::write(m.path("b/dup.txt"), b"b/two.md").unwrap(); // same content as two.md

    let q = |s: &str| m.path("sql").join(s);
    assert_eq!(
        names(&q(
            "SELECT path FROM files WHERE ext = 'txt' AND kind = 'file'"
        )),
        {
            let one_b = fs::metadata(m.path("b/one.txt")).unwrap().ino();
            let one_a = fs::metadata(m.path("a/one.txt")).unwrap().ino();
            let hi = one_a.max(one_b);
            set(&["one.txt", &format!("one~{hi}.txt"), "dup.txt"])
        }
    );
    // `/` inside a query is %2F.
    assert_eq!(
        names(&q(
            "SELECT id, path FROM files WHERE path LIKE '%2Fb%2F%25'"
        )),
        set(&["one.txt", "two.md", "dup.txt"])
    );
    // Joins with tags.
    assert_eq!(
        names(&q(
            "SELECT f.id, f.name FROM files f JOIN tags t ON t.id = f.id WHERE t.tag = 'y'"
        )),
        set(&["two.md"])
    );
    // Rows that name no file: result.csv and result.json.
    let d = q("SELECT kind, count(*) AS n FROM files GROUP BY kind ORDER BY kind");
    assert_eq!(names(&d), set(&["result.csv", "result.json"]));
    assert_eq!(
        fs::read_to_string(d.join("result.csv")).unwrap(),
        "kind,n\ndir,2\nfile,4\n"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("result.json")).unwrap()).unwrap();
    assert_eq!(
        j,
        serde_json::json!([{"kind": "dir", "n": 2}, {"kind": "file", "n": 4}])
    );
    // Listings are right at once after a change.
    fs::write(m.path("a/three.txt"), b"3").unwrap();
    assert_eq!(
        fs::read_to_string(d.join("result.csv")).unwrap(),
        "kind,n\ndir,2\nfile,5\n"
    );
    // Writing through an entry writes the real file.
    fs::write(
        q("SELECT id, name FROM files WHERE name = 'three.txt'").join("three.txt"),
        b"33",
    )
    .unwrap();
    assert_eq!(fs::read(m.path("a/three.txt")).unwrap(), b"33");

    // Saved queries: shipped and the user's own.
    assert!(names(&m.path("queries")).is_superset(&set(&[
        "recent",
        "large",
        "untagged",
        "duplicates"
    ])));
    assert_eq!(
        names(&m.path("queries/untagged")),
        set(&["one.txt", "dup.txt", "three.txt"])
    );
    assert_eq!(
        names(&m.path("queries/duplicates")),
        set(&["two.md", "dup.txt"])
    );

    m.stop();
    qfs_ok(
        &m.store,
        &[
            "query",
            "save",
            "markdown",
            "SELECT id, path FROM files WHERE ext = 'md'",
        ],
    );
    let o = qfs(&m.store, &["query", "save", "evil", "DELETE FROM files"]);
    assert_eq!(o.status.code(), Some(2));
    let out = qfs_ok(
        &m.store,
        &[
            "query",
            "--json",
            "SELECT name, size FROM files WHERE name = 'two.md'",
        ],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(),
        serde_json::json!({"name": "two.md", "size": 8})
    );
    m.start();
    assert_eq!(names(&m.path("queries/markdown")), set(&["two.md"]));
    m.stop();
    qfs_ok(&m.store, &["query", "rm", "markdown"]);
    m.start();
    assert!(!names(&m.path("queries")).contains("markdown"));
    m.stop();
}

/// Every row of every table, in a stable order: the store's logical content.
pub(crate) fn dump(store: &Path) -> String {
    let c = rusqlite::Connection::open(store.join("queryfs.db")).unwrap();
    let mut out = String::new();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for t in tables {
        let mut s = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1, 2"))
            .unwrap();
        let n = s.column_count();
        let rows = s
            .query_map([], |r| {
                let mut v = Vec::new();
                for i in 0..n {
                    v.push(format!("{:?}", r.get::<_, rusqlite::types::Value>(i)?));
                }
                Ok(v.join("|"))
            })
            .unwrap();
        out.push_str(&format!("== {t}\n"));
        for r in rows {
            let r = r.unwrap();
            // The durable-barrier counter moves at every unmount, queries or not.
            if t == "store" && r.starts_with("Text(\"durable_barrier\")") {
                continue;
            }
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

pub(crate) fn file_hash(p: &Path) -> String {
    blake3::hash(&fs::read(p).unwrap()).to_hex().to_string()
}
