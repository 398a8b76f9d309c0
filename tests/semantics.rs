//! Query-folder semantics through a real mount, with the real tools: after
//! any sequence of ordinary operations that succeed through a query folder,
//! every file the user copied, moved or saved still exists with the content
//! they wrote, and no stray copies pile up. Each test covers rows of the
//! README's semantics table (named in its comment).

#[allow(dead_code)]
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use util::*;

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs a program; returns (success, stdout + stderr).
fn run(prog: &str, args: &[&str], cwd: &Path) -> (bool, String) {
    let o = Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
    out.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), out)
}

fn run_ok(prog: &str, args: &[&str], cwd: &Path) {
    let (ok, out) = run(prog, args, cwd);
    assert!(ok, "{prog} {args:?} failed: {out}");
}

fn py(script: &str, cwd: &Path) {
    run_ok("python3", &["-c", script], cwd);
}

/// Every non-directory of the real tree (query folders left out): path ->
/// content (a symlink's target for a symlink).
fn real_tree(m: &Mount) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, top: bool, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if top && ["by-tag", "sql", "queries"].contains(&name.as_str()) {
                continue;
            }
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(root, &p, false, out);
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, t.as_os_str().as_encoded_bytes().to_vec());
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&m.mp, &m.mp, true, &mut out);
    out
}

/// The files under /inbox (relative paths).
fn inbox(m: &Mount) -> BTreeSet<String> {
    real_tree(m)
        .into_keys()
        .filter(|k| k.starts_with("inbox/"))
        .collect()
}

fn tags(p: &Path) -> String {
    match getxattr(p, "user.tags") {
        Ok(v) => String::from_utf8(v).unwrap(),
        Err(libc::ENODATA) => String::new(),
        Err(e) => panic!("getxattr {}: errno {e}", p.display()),
    }
}

fn write_tagged(m: &Mount, rel: &str, content: &str, tags: &str) {
    let p = m.path(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    if !tags.is_empty() {
        setxattr(&p, "user.tags", tags.as_bytes(), 0).unwrap();
    }
}

fn read(m: &Mount, rel: &str) -> String {
    fs::read_to_string(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The README rows "mv in (dir)", "rm (directory entry)", "mv in (file)",
/// "mv into /by-tag or /sql": `mv DIR /by-tag/x/` tags the directory in
/// place and loses nothing; what cannot be done is refused before mv
/// deletes anything.
#[test]
fn mv_dir_into_tag_folder_tags_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    let mp = m.mp.clone();
    run_ok("mkdir", &["-p", "Albums/H"], &mp);
    fs::write(m.path("Albums/H/01.flac"), "a\n").unwrap();
    run_ok("mkdir", &["by-tag/album"], &mp);
    run_ok("mv", &["Albums/H", "by-tag/album/"], &mp);
    assert_eq!(read(&m, "Albums/H/01.flac"), "a\n");
    assert_eq!(tags(&m.path("Albums/H")), "album");
    // In the folder, the directory is a symlink to its real place.
    let link = m.path("by-tag/album/H");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("../../Albums/H"));
    assert_eq!(read(&m, "by-tag/album/H/01.flac"), "a\n");
    assert_eq!(names(&m.path("Albums")), set(&["H"]));

    // A file moved in with another name is renamed where it is.
    fs::write(m.path("Albums/cover.jpg"), "jpg").unwrap();
    run_ok("mv", &["Albums/cover.jpg", "by-tag/album/front.jpg"], &mp);
    assert_eq!(names(&m.path("Albums")), set(&["H", "front.jpg"]));
    assert_eq!(tags(&m.path("Albums/front.jpg")), "album");
    assert_eq!(read(&m, "by-tag/album/front.jpg"), "jpg");

    // rm of the directory's entry untags it; the directory stays.
    run_ok("rm", &["by-tag/album/H"], &mp);
    assert_eq!(tags(&m.path("Albums/H")), "");
    assert_eq!(read(&m, "Albums/H/01.flac"), "a\n");

    // Places nothing can be moved to: mv fails, and deletes nothing.
    fs::write(m.path("keep.txt"), "keep").unwrap();
    for to in ["by-tag/", "sql/", "queries/", "queries/recent/"] {
        let (ok, out) = run("mv", &["keep.txt", to], &mp);
        assert!(!ok, "mv keep.txt {to} succeeded: {out}");
        assert_eq!(read(&m, "keep.txt"), "keep", "after mv to {to}");
        let (ok, _) = run("mv", &["Albums/H", to], &mp);
        assert!(!ok, "mv Albums/H {to} succeeded");
        assert_eq!(read(&m, "Albums/H/01.flac"), "a\n", "after mv to {to}");
    }
    let files = real_tree(&m);
    assert_eq!(
        files.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["Albums/H/01.flac", "Albums/front.jpg", "keep.txt"])
    );
    m.stop();
}

/// Sets up `notes/note-a.txt` ("one two\n", tagged notes, with a user
/// xattr) and returns the real tree before the save.
fn note(m: &Mount) -> BTreeMap<String, Vec<u8>> {
    write_tagged(m, "notes/note-a.txt", "one two\n", "notes");
    setxattr(&m.path("notes/note-a.txt"), "user.comment", b"mine", 0).unwrap();
    fs::write(m.path("notes/other.txt"), "other\n").unwrap();
    real_tree(m)
}

/// After a save through `by-tag/notes`: the real file at its real place
/// has the new content, tags and xattrs kept, the folder lists it once,
/// nothing new anywhere (in /inbox or beside the file).
fn saved(m: &Mount, before: &BTreeMap<String, Vec<u8>>, what: &str) {
    let real = m.path("notes/note-a.txt");
    assert_eq!(read(m, "notes/note-a.txt"), "ONE two\n", "{what}");
    assert_eq!(tags(&real), "notes", "{what}");
    assert_eq!(
        getxattr(&real, "user.comment").as_deref(),
        Ok(&b"mine"[..]),
        "{what}"
    );
    assert_eq!(names(&m.path("by-tag/notes")), set(&["note-a.txt"]), "{what}");
    assert_eq!(read(m, "by-tag/notes/note-a.txt"), "ONE two\n", "{what}");
    let mut want = before.clone();
    want.insert("notes/note-a.txt".into(), b"ONE two\n".to_vec());
    assert_eq!(&real_tree(m), &want, "{what}: the real tree");
    assert!(inbox(m).is_empty(), "{what}: {:?}", inbox(m));
}

/// README row "atomic save": `sed -i` and Python `os.replace` through a tag
/// folder replace the real file at its real place.
#[test]
fn atomic_save_replaces_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    let before = note(&m);
    run_ok(
        "sed",
        &["-i", "s/one/ONE/", "by-tag/notes/note-a.txt"],
        &m.mp,
    );
    saved(&m, &before, "sed -i");

    fs::write(m.path("notes/note-a.txt"), "one two\n").unwrap();
    py(
        "import os\n\
         with open('by-tag/notes/.note-a.txt.tmp', 'w') as f:\n    f.write('ONE two\\n')\n\
         os.replace('by-tag/notes/.note-a.txt.tmp', 'by-tag/notes/note-a.txt')\n",
        &m.mp,
    );
    saved(&m, &before, "os.replace");

    // The same from a second tag folder level (by-tag/notes/work).
    setxattr(&m.path("notes/note-a.txt"), "user.tag.work", b"", 0).unwrap();
    fs::write(m.path("notes/note-a.txt"), "one two\n").unwrap();
    run_ok(
        "sed",
        &["-i", "s/one/ONE/", "by-tag/notes/work/note-a.txt"],
        &m.mp,
    );
    assert_eq!(read(&m, "notes/note-a.txt"), "ONE two\n");
    assert_eq!(tags(&m.path("notes/note-a.txt")), "notes,work");
    assert!(inbox(&m).is_empty(), "{:?}", inbox(&m));
    m.stop();
}

/// README row "editor backup save": vim's save with `backupcopy=no` (the
/// original renamed to `name~` in the folder, a new `name` created and
/// written, the backup removed), by hand and with the real vim, swap file
/// included; and the emacs way, which keeps the backup.
#[test]
fn editor_saves_through_a_tag_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mount::new(dir.path());
    let before = note(&m);
    py(
        "import os\n\
         d = 'by-tag/notes/'\n\
         os.rename(d + 'note-a.txt', d + 'note-a.txt~')\n\
         fd = os.open(d + 'note-a.txt', os.O_WRONLY | os.O_CREAT, 0o644)\n\
         os.write(fd, b'ONE two\\n')\n\
         os.fsync(fd)\n\
         os.close(fd)\n\
         os.unlink(d + 'note-a.txt~')\n",
        &m.mp,
    );
    saved(&m, &before, "vim's sequence by hand");

    // The real vim. Under /tmp vim skips the backup ('backupskip'), so it
    // is cleared to make vim rename the original aside as it does
    // elsewhere; the plain command (writing in place) is run too.
    for opts in ["set backupcopy=no backupskip=", "set backupcopy=no"] {
        fs::write(m.path("notes/note-a.txt"), "one two\n").unwrap();
        run_ok(
            "vim",
            &[
                "-E",
                "-s",
                "-c",
                opts,
                "-c",
                "%s/one/ONE/",
                "-c",
                "wq",
                "by-tag/notes/note-a.txt",
            ],
            &m.mp,
        );
        saved(&m, &before, opts);
    }

    // Emacs: rename to name~, write a new name, keep the backup.
    fs::write(m.path("notes/note-a.txt"), "one two\n").unwrap();
    py(
        "import os\n\
         d = 'by-tag/notes/'\n\
         os.rename(d + 'note-a.txt', d + 'note-a.txt~')\n\
         with open(d + 'note-a.txt', 'w') as f:\n    f.write('ONE two\\n')\n",
        &m.mp,
    );
    assert_eq!(read(&m, "by-tag/notes/note-a.txt"), "ONE two\n");
    assert_eq!(read(&m, "by-tag/notes/note-a.txt~"), "one two\n");
    // The kernel may still hold the real name `notes/note-a.txt` for the
    // old file for its entry TTL (1 s): the rename through the folder
    // changed that name behind its back (a known limit, see the README).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(read(&m, "notes/note-a.txt"), "ONE two\n");
    assert_eq!(read(&m, "notes/note-a.txt~"), "one two\n");
    assert_eq!(tags(&m.path("notes/note-a.txt")), "notes");
    assert_eq!(
        names(&m.path("by-tag/notes")),
        set(&["note-a.txt", "note-a.txt~"])
    );
    assert!(inbox(&m).is_empty(), "{:?}", inbox(&m));
    m.stop();
}
