//! Commands that change a mounted store work, through the mount, and take
//! effect there at once; freedesktop `user.xdg.tags`; saving a query
//! through the mount itself.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn commands_work_while_mounted() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    let s = &m.store;
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"data").unwrap();
    fs::write(src.join("d/h"), b"other").unwrap();
    fs::hard_link(src.join("d/f"), src.join("d/g")).unwrap();
    std::os::unix::fs::symlink("/nowhere", src.join("d/dangling")).unwrap();
    setxattr(&src.join("d/f"), "user.tag.blue", b"", 0).unwrap();

    // put
    qfs_ok(s, &["put", src.join("d").to_str().unwrap(), "/"]);
    assert_eq!(fs::read(m.path("d/f")).unwrap(), b"data");
    let (f, g) = (
        fs::metadata(m.path("d/f")).unwrap(),
        fs::metadata(m.path("d/g")).unwrap(),
    );
    assert_eq!(f.ino(), g.ino());
    assert_eq!(
        fs::read_link(m.path("d/dangling")).unwrap(),
        Path::new("/nowhere")
    );
    assert!(names(&m.path("by-tag/blue")).contains(&"f".to_string()));

    // tag add / rm on several files
    qfs_ok(s, &["tag", "add", "/d/f", "/d/h", "--", "red", "year=1959"]);
    assert_eq!(
        getxattr(&m.path("d/f"), "user.tags").unwrap(),
        b"blue,red,year=1959"
    );
    assert!(names(&m.path("by-tag/red")).contains(&"f".to_string()));
    assert_eq!(names(&m.path("by-tag/year.eq.1959/blue")), ["f"]);
    qfs_ok(s, &["tag", "rm", "/d/f", "--", "red"]);
    assert_eq!(
        getxattr(&m.path("d/f"), "user.tags").unwrap(),
        b"blue,year=1959"
    );
    assert_eq!(qfs_ok(s, &["files", "blue"]), "/d/f\n");

    // mkdir, mv, rm
    qfs_ok(s, &["mkdir", "-p", "/x/y"]);
    assert!(m.path("x/y").is_dir());
    qfs_ok(s, &["mv", "/d/g", "/x"]);
    assert!(m.path("x/g").is_file());
    let o = qfs(s, &["rm", "/nope", "/x/g"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!m.path("x/g").exists());
    qfs_ok(s, &["rm", "-r", "/x"]);
    assert!(!m.path("x").exists());

    // query save / rm, and --force
    qfs_ok(
        s,
        &[
            "query",
            "save",
            "small",
            "SELECT path FROM files WHERE size < 10",
        ],
    );
    assert!(names(&m.path("queries")).contains(&"small".to_string()));
    assert!(names(&m.path("queries/small")).contains(&"f".to_string()));
    let o = qfs(s, &["query", "save", "small", "SELECT 1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let o = qfs(s, &["query", "save", "bad", "DELETE FROM files"]);
    assert_eq!(o.status.code(), Some(2));
    qfs_ok(
        s,
        &[
            "query",
            "save",
            "--force",
            "small",
            "SELECT path FROM files",
        ],
    );
    qfs_ok(s, &["query", "rm", "small"]);
    assert!(!names(&m.path("queries")).contains(&"small".to_string()));

    // gc and fsck say how instead of "in use by pid".
    for cmd in [&["gc"][..], &["fsck"]] {
        let o = qfs(s, cmd);
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("queryfs umount"), "{e}");
    }
}

#[test]
fn queries_saved_through_the_mount() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    fs::write(m.path("f"), b"x").unwrap();
    let q = m.path("queries");
    setxattr(&q, "user.query.mine", b"SELECT path FROM files", 0).unwrap();
    assert!(names(&q).contains(&"mine".to_string()));
    assert_eq!(names(&m.path("queries/mine")), ["f"]);
    assert_eq!(
        getxattr(&q, "user.query.mine").unwrap(),
        b"SELECT path FROM files"
    );
    // XATTR_CREATE refuses an existing one; bad SQL is EINVAL.
    assert_eq!(
        setxattr(&q, "user.query.mine", b"SELECT 1", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&q, "user.query.x", b"DROP TABLE files", 0),
        Err(libc::EINVAL)
    );
    // setfattr/getfattr work on it.
    let o = Command::new("setfattr")
        .args([
            "-n",
            "user.query.big",
            "-v",
            "SELECT path FROM files WHERE size > 0",
        ])
        .arg(&q)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(names(&m.path("queries/big")), ["f"]);
    remove_xattr(&q, "user.query.mine").unwrap();
    assert!(!names(&q).contains(&"mine".to_string()));
    assert_eq!(remove_xattr(&q, "user.query.mine"), Err(libc::ENODATA));
}

#[test]
fn xdg_tags_are_tags() {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::new(t.path());
    let f = m.path("song.flac");
    fs::write(&f, b"x").unwrap();
    // As Dolphin writes them.
    let o = Command::new("setfattr")
        .args(["-n", "user.xdg.tags", "-v", "Jazz,Favourite tunes"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(names(&m.path("by-tag/Jazz")).contains(&"song.flac".to_string()));
    assert!(names(&m.path("by-tag/Favourite tunes")).contains(&"song.flac".to_string()));
    assert_eq!(getxattr(&f, "user.tags").unwrap(), b"Favourite tunes,Jazz");
    // The other way round: tags set otherwise show in user.xdg.tags.
    setxattr(&f, "user.tag.live", b"", 0).unwrap();
    let o = Command::new("getfattr")
        .args(["--only-values", "-n", "user.xdg.tags"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, b"Favourite tunes,Jazz,live");
    // Removing it removes the tags.
    remove_xattr(&f, "user.xdg.tags").unwrap();
    assert_eq!(getxattr(&f, "user.tags"), Err(libc::ENODATA));
    assert!(!names(&m.path("by-tag/Jazz")).contains(&"song.flac".to_string()));
}

/// A mount point that is not UTF-8 elsewhere does not break `umount`.
#[test]
fn umount_beside_a_non_utf8_mount_point() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let odd = t.path().join(std::ffi::OsStr::from_bytes(b"odd-\xff-mnt"));
    fs::create_dir_all(&odd).unwrap();
    let c = c(&odd);
    let tmpfs = std::ffi::CString::new("tmpfs").unwrap();
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            c.as_ptr(),
            tmpfs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount tmpfs: {}", errno());
    let mut m = Mount::new(&t.path().join("q"));
    m.stop(); // `queryfs umount`, asserting success
    force_unmount(&odd);
}
