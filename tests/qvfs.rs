//! Plain QVFS images through the real binary: the spec's worked example byte
//! for byte, a lossless round trip of a generated tree, an independent
//! Python reader, the large-file limit, and `qvfs check` exit codes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use queryfs::store::{self, Access, Store};
use queryfs::types::FileKind;
use queryfs::vfs::{Caller, Fs, SetAttr, SetTime, ROOT};

use crate::util::{bin, qfs, qfs_ok};

/// 2009-06-08 12:34:56 UTC in ns.
const EXAMPLE_NS: i64 = 1_244_464_496 * 1_000_000_000;

fn new_store(dir: &Path) -> Store {
    store::init(dir).unwrap();
    store::open(
        dir,
        Access::Write {
            purpose: "test".into(),
            recover: false,
        },
        false,
    )
    .unwrap()
}

fn read_store(dir: &Path) -> Store {
    store::open(dir, Access::Read, false).unwrap()
}

fn me() -> Caller {
    Caller::current()
}

fn put(fs: &Fs, parent: u64, name: &[u8], data: &[u8], perm: u32) -> u64 {
    let (i, fh) = fs.create(parent, name, perm, me()).unwrap();
    for (k, piece) in data.chunks(1 << 20).enumerate() {
        fs.write(fh, (k << 20) as u64, piece).unwrap();
    }
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    i.ino
}

fn times(fs: &Fs, ino: u64, atime: i64, mtime: i64, btime: i64) {
    fs.setattr(
        ino,
        &SetAttr {
            atime: Some(SetTime::At(atime)),
            mtime: Some(SetTime::At(mtime)),
            btime: Some(btime),
            ..Default::default()
        },
    )
    .unwrap();
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn worked_example_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let st = t.path().join("store");
    {
        let s = new_store(&st);
        let docs = s.fs.mkdir(ROOT, b"docs", 0o755, me()).unwrap().ino;
        let hello = put(&s.fs, docs, b"hello.txt", b"Hello, QVFS!\n", 0o644);
        times(&s.fs, hello, EXAMPLE_NS, EXAMPLE_NS, EXAMPLE_NS);
        times(&s.fs, docs, EXAMPLE_NS, EXAMPLE_NS, EXAMPLE_NS);
        s.fs.sync_all().unwrap();
    }
    let img = t.path().join("example.qfi");
    qfs_ok(&st, &["export-qvfs", "--no-meta", s(&img)]);

    // The vector, written from the spec's words.
    let time = [0x5C, 0x64, 0xC8, 0x3A];
    let mut qfd = vec![0u8; 3 * 4096];
    let mut entry = |at: usize, prop: u8, name: &[u8], start: u8, size: u8| {
        qfd[at] = prop;
        qfd[at + 1..at + 1 + name.len()].copy_from_slice(name);
        qfd[at + 0x28..at + 0x2C].copy_from_slice(&time);
        qfd[at + 0x2C..at + 0x30].copy_from_slice(&time);
        qfd[at + 0x30] = start;
        qfd[at + 0x34] = size;
    };
    entry(0, 0x02, b"docs", 1, 0);
    entry(4096, 0x04, b"hello.txt", 2, 13);
    qfd[8192..8205].copy_from_slice(b"Hello, QVFS!\n");
    assert_eq!(std::fs::read(&img).unwrap(), vec![0xFF; 12]);
    assert_eq!(std::fs::read(t.path().join("example.qfd")).unwrap(), qfd);

    // Read back: check, ls, cat, and an import into a fresh store.
    let o = run(&["qvfs", "check", s(&img)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let ls = String::from_utf8(run(&["qvfs", "ls", "-l", s(&img), "docs"]).stdout).unwrap();
    assert_eq!(ls.trim(), "-           13 2009-06-08 12:34:56 hello.txt");
    let cat = run(&["qvfs", "cat", s(&img), "/docs/hello.txt"]);
    assert_eq!(cat.stdout, b"Hello, QVFS!\n");
    let back = t.path().join("back");
    let out = qfs_ok(&back, &["import-qvfs", s(&img)]);
    assert!(out.contains("plain image"), "{out}");
    let b = read_store(&back);
    let h = b.fs.resolve("/docs/hello.txt").unwrap();
    assert_eq!(h.mtime, EXAMPLE_NS);
    assert_eq!(h.size, 13);
    assert_eq!(h.perm, 0o644);
}

/// Everything a round trip must keep, per path.
#[derive(Debug, PartialEq)]
struct Rec {
    kind: FileKind,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    rdev: u32,
    atime: i64,
    mtime: i64,
    ctime: i64,
    btime: i64,
    content: [u8; 32],
    target: Option<Vec<u8>>,
    tags: Vec<(String, Option<String>)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// First path (in walk order) of the same inode, for hard links.
    link_of: Option<Vec<u8>>,
}

fn content_hash(fs: &Fs, ino: u64) -> [u8; 32] {
    let fh = fs.open(ino).unwrap();
    let mut h = blake3::Hasher::new();
    let mut off = 0u64;
    loop {
        let d = fs.read(fh, off, 1 << 20).unwrap();
        if d.is_empty() {
            break;
        }
        h.update(&d);
        off += d.len() as u64;
    }
    fs.release(fh).unwrap();
    *h.finalize().as_bytes()
}

fn snapshot(fs: &Fs) -> BTreeMap<Vec<u8>, Rec> {
    let mut out = BTreeMap::new();
    let mut first: std::collections::HashMap<u64, Vec<u8>> = Default::default();
    let mut todo = vec![(b"/".to_vec(), fs.getattr(ROOT).unwrap())];
    while let Some((path, a)) = todo.pop() {
        let link_of = if !a.is_dir() && a.nlink > 1 {
            match first.get(&a.ino) {
                Some(p) => Some(p.clone()),
                None => {
                    first.insert(a.ino, path.clone());
                    None
                }
            }
        } else {
            None
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = fs
            .listxattr(a.ino)
            .unwrap()
            .split(|&c| c == 0)
            .filter(|n| !n.is_empty() && !n.starts_with(b"user.tag"))
            .map(|n| (n.to_vec(), fs.getxattr(a.ino, n).unwrap()))
            .collect();
        xattrs.sort();
        let mut tags = fs.file_tags(a.ino).unwrap();
        tags.sort();
        out.insert(
            path.clone(),
            Rec {
                kind: a.kind,
                perm: a.perm,
                uid: a.uid,
                gid: a.gid,
                size: a.size,
                nlink: a.nlink,
                rdev: a.rdev,
                atime: a.atime,
                mtime: a.mtime,
                ctime: a.ctime,
                btime: a.btime,
                content: if a.kind == FileKind::File {
                    content_hash(fs, a.ino)
                } else {
                    [0; 32]
                },
                target: (a.kind == FileKind::Symlink).then(|| fs.readlink(a.ino).unwrap()),
                tags,
                xattrs,
                link_of,
            },
        );
        if a.is_dir() {
            let mut kids = fs.list(a.ino).unwrap();
            kids.sort_by(|x, y| y.name.cmp(&x.name));
            for e in kids {
                let mut p = path.clone();
                if p.len() > 1 {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                todo.push((p, e.attr));
            }
        }
    }
    out
}

/// Deterministic bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn name_of_len(prefix: &str, len: usize) -> Vec<u8> {
    let mut n = prefix.as_bytes().to_vec();
    n.resize(len, b'n');
    n
}

/// A tree of `files` regular files with every hard case in it; `big` adds
/// a file over 100 MiB.
fn generate(fs: &Fs, files: usize, big: bool) {
    let dir_names: Vec<Vec<u8>> = vec![
        b"docs".to_vec(),
        "ünï cödé".as_bytes().to_vec(),
        "日本語のフォルダ".as_bytes().to_vec(),
        "emoji 😀".as_bytes().to_vec(),
        b"a:b?c".to_vec(),
        name_of_len("dir-", 39),
        name_of_len("dir-", 40),
        name_of_len("dir-", 200),
    ];
    let mut dirs = vec![ROOT];
    for (i, n) in dir_names.iter().enumerate() {
        let d = fs.mkdir(ROOT, n, 0o755, me()).unwrap().ino;
        dirs.push(d);
        for j in 0..3 {
            let sub = fs
                .mkdir(
                    d,
                    format!("sub{j}").as_bytes(),
                    [0o755, 0o700, 0o750][j],
                    me(),
                )
                .unwrap()
                .ino;
            dirs.push(sub);
            if i == 0 && j == 0 {
                // Deep nesting.
                let mut cur = sub;
                for k in 0..12 {
                    cur = fs
                        .mkdir(cur, format!("level{k}").as_bytes(), 0o755, me())
                        .unwrap()
                        .ino;
                }
                dirs.push(cur);
            }
        }
    }
    let mut inos = Vec::new();
    for i in 0..files {
        let d = dirs[i % dirs.len()];
        let name: Vec<u8> = match i % 9 {
            0 => format!("file-{i}.txt").into_bytes(),
            1 => format!("файл-{i}.dat").into_bytes(),
            2 => name_of_len(&format!("{i}-"), 39),
            3 => name_of_len(&format!("{i}-"), 40),
            4 => name_of_len(&format!("{i}-"), 200),
            5 => format!("odd:{i}?*|.txt").into_bytes(),
            6 => format!("Case{i}").into_bytes(),
            7 => format!("CASE{i}").into_bytes(),
            _ => format!("{i} ✓ 😀.bin").into_bytes(),
        };
        let data = match i % 11 {
            0 => Vec::new(),
            1 => b"same content everywhere".to_vec(),
            _ => noise(i as u64, (i * 37) % 20_000),
        };
        let perm = [0o644, 0o600, 0o755, 0o444, 0o4755][i % 5];
        let ino = put(fs, d, &name, &data, perm);
        if i % 10 == 0 {
            fs.setxattr(ino, b"user.tag.red", b"", 0).unwrap();
        }
        if i % 25 == 0 {
            fs.setxattr(
                ino,
                b"user.tag.year",
                format!("{}", 1950 + i % 70).as_bytes(),
                0,
            )
            .unwrap();
        }
        if i % 15 == 0 {
            fs.setxattr(ino, b"user.comment", format!("note {i}").as_bytes(), 0)
                .unwrap();
        }
        if i == 30 {
            fs.setxattr(ino, b"user.binary", &[0, 255, 1, 128], 0)
                .unwrap();
        }
        fs.setattr(
            ino,
            &SetAttr {
                uid: Some(1000 + (i % 3) as u32),
                gid: Some(100 + (i % 2) as u32),
                ..Default::default()
            },
        )
        .unwrap();
        let mtime = match i % 13 {
            0 => 123_456_789,               // 1970: before packed times
            1 => 7_258_118_400_000_000_001, // 2200: after them
            _ => 1_600_000_000_000_000_000 + i as i64 * 1_000_003_007,
        };
        times(fs, ino, mtime + 5, mtime, mtime - 99);
        inos.push((d, ino));
    }
    // Hard links, across folders.
    for g in 0..10 {
        let (_, ino) = inos[g * 7 + 3];
        for k in 0..(1 + g % 2) {
            let d = dirs[(g + k + 1) % dirs.len()];
            fs.link(ino, d, format!("hardlink-{g}-{k}").as_bytes())
                .unwrap();
        }
    }
    // Symlinks.
    for k in 0..20 {
        let target: Vec<u8> = match k % 4 {
            0 => b"../docs/file-0.txt".to_vec(),
            1 => b"/absolute/dangling".to_vec(),
            2 => "ünï/ziel".as_bytes().to_vec(),
            _ => vec![b't'; 300],
        };
        let d = dirs[k % dirs.len()];
        let l = fs
            .symlink(d, format!("link-{k}").as_bytes(), &target, me())
            .unwrap();
        fs.setattr(
            l.ino,
            &SetAttr {
                mtime: Some(SetTime::At(1_500_000_000_123_456_789)),
                ..Default::default()
            },
        )
        .unwrap();
    }
    fs.mknod(ROOT, b"fifo", libc::S_IFIFO | 0o640, 0, me())
        .unwrap();
    // A name that is not UTF-8 (legal on Linux, impossible in QVFS).
    put(fs, dirs[2], b"latin1-caf\xe9.txt", b"caf\xe9", 0o644);
    if big {
        put(
            fs,
            ROOT,
            b"big.bin",
            &noise(99, (100 << 20) + 12_345),
            0o644,
        );
    }
    fs.ensure_tag("unused").unwrap();
    fs.save_query("small", "SELECT path FROM files WHERE size < 100")
        .unwrap();
    fs.setxattr(dirs[1], b"user.tag.red", b"", 0).unwrap();
    fs.setxattr(dirs[1], b"user.comment", b"a folder", 0)
        .unwrap();
    // Folder times last (creating entries moves them).
    for (k, &d) in dirs.iter().enumerate().rev() {
        times(
            fs,
            d,
            1_400_000_000_000_000_000 + k as i64,
            1_400_000_000_000_000_000 + 7 * k as i64,
            1_300_000_000_000_000_000,
        );
    }
    fs.sync_all().unwrap();
}

#[test]
fn round_trip_keeps_every_name_byte_time_mode_tag_and_xattr() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    {
        let s = new_store(&src);
        generate(&s.fs, 1100, true);
    }
    let img = t.path().join("all.qfi");
    let out = qfs_ok(&src, &["export-qvfs", s(&img)]);
    assert!(out.contains("1100") || out.contains("files"), "{out}");
    let o = run(&["qvfs", "check", s(&img)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    qfs_ok(&dst, &["import-qvfs", s(&img)]);

    let a = snapshot(&read_store(&src).fs);
    let b = snapshot(&read_store(&dst).fs);
    let files = a.values().filter(|r| r.kind == FileKind::File).count();
    assert!(files >= 1000, "only {files} files");
    assert!(a.values().any(|r| r.size > 100 << 20));
    assert!(a.values().any(|r| r.link_of.is_some()));
    assert!(a
        .values()
        .any(|r| r.xattrs.iter().any(|x| x.1 == [0, 255, 1, 128])));
    assert_eq!(a.len(), b.len());
    for (path, ra) in &a {
        let rb = b.get(path).unwrap_or_else(|| {
            panic!(
                "{} missing after the round trip",
                String::from_utf8_lossy(path)
            )
        });
        assert_eq!(ra, rb, "{}", String::from_utf8_lossy(path));
    }
    let dst_store = read_store(&dst);
    assert!(dst_store
        .fs
        .tag_names()
        .unwrap()
        .contains(&"unused".to_string()));
    assert!(dst_store
        .fs
        .queries()
        .unwrap()
        .iter()
        .any(|q| q.0 == "small"));

    // A plain reader (no extensions) sees a valid tree of short names with
    // one entry per source entry (the metadata file besides).
    let o = Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qvfs_reader.py"),
            "list",
            s(&img),
            "--plain",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8(o.stdout).unwrap();
    assert_eq!(listing.lines().count(), a.len() - 1 + 1);
    for l in listing.lines() {
        let name = l.rsplit('/').next().unwrap();
        assert!(
            name.len() <= 39 && !name.contains([':', '?', '*', '|']),
            "{l}"
        );
    }
}

#[test]
fn an_independent_python_reader_agrees_with_the_store() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    {
        let s = new_store(&src);
        generate(&s.fs, 300, false);
    }
    let img = t.path().join("py.qfi");
    qfs_ok(&src, &["export-qvfs", s(&img)]);
    let out = t.path().join("extracted");
    let o = Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qvfs_reader.py"),
            "extract",
            s(&img),
            s(&out),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Every entry of the store is there under its exact name, with its
    // bytes (a symlink as a file holding its target, a fifo as an empty
    // file), and nothing else is (the metadata file aside).
    let st = read_store(&src);
    let snap = snapshot(&st.fs);
    let mut seen = 0;
    for (path, r) in &snap {
        if path == b"/" {
            continue;
        }
        let Ok(rel) = std::str::from_utf8(&path[1..]) else {
            // Not UTF-8: a plain reader sees it under its short name only.
            seen += 1;
            continue;
        };
        let p = out.join(rel);
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        seen += 1;
        match r.kind {
            FileKind::Dir => assert!(md.is_dir()),
            FileKind::File => {
                let bytes = std::fs::read(&p).unwrap();
                assert_eq!(
                    *blake3::hash(&bytes).as_bytes(),
                    r.content,
                    "{}",
                    p.display()
                );
            }
            FileKind::Symlink => {
                assert_eq!(&std::fs::read(&p).unwrap(), r.target.as_ref().unwrap())
            }
            _ => assert_eq!(md.len(), 0),
        }
    }
    let mut on_disk = 0;
    let mut todo = vec![out.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            on_disk += 1;
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    assert_eq!(on_disk, seen + 1, "the extracted tree has extra entries");
    assert!(out.join(".queryfs-meta.json").exists());
}

#[test]
fn files_over_2_gib_are_refused_by_name_or_skipped() {
    let t = tempfile::tempdir().unwrap();
    let st = t.path().join("store");
    {
        let s = new_store(&st);
        let d = s.fs.mkdir(ROOT, b"videos", 0o755, me()).unwrap().ino;
        for (name, size) in [("huge.mkv", 3u64 << 30), ("edge.bin", 1u64 << 31)] {
            let ino = put(&s.fs, d, name.as_bytes(), b"", 0o644);
            s.fs.setattr(
                ino,
                &SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        put(&s.fs, d, b"fits.bin", &vec![1u8; 5000], 0o644);
        // Exactly 2^31-1 bytes fits.
        let ino = put(&s.fs, ROOT, b"max.bin", b"", 0o644);
        s.fs.setattr(
            ino,
            &SetAttr {
                size: Some((1 << 31) - 1),
                ..Default::default()
            },
        )
        .unwrap();
        s.fs.sync_all().unwrap();
    }
    let img = t.path().join("v.qfi");
    let o = qfs(&st, &["export-qvfs", s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/videos/huge.mkv") && err.contains("/videos/edge.bin"),
        "{err}"
    );
    assert!(err.contains("--skip-large"), "{err}");
    assert!(!img.exists() && !t.path().join("v.qfd").exists());
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1,
        "no partial files left"
    );

    let o = qfs(&st, &["export-qvfs", "--skip-large", s(&img)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipped /videos/huge.mkv") && err.contains("skipped /videos/edge.bin"),
        "{err}"
    );
    let ls = String::from_utf8(run(&["qvfs", "ls", s(&img), "videos"]).stdout).unwrap();
    assert_eq!(ls.trim(), "fits.bin");
    let ls = String::from_utf8(run(&["qvfs", "ls", "-l", s(&img)]).stdout).unwrap();
    assert!(ls.contains(&format!("{} ", (1u64 << 31) - 1)), "{ls}");

    // An existing image is not replaced without --force.
    let o = qfs(&st, &["export-qvfs", "--skip-large", s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    qfs_ok(&st, &["export-qvfs", "--skip-large", "--force", s(&img)]);
}

#[test]
fn check_exit_codes_and_a_damaged_image_is_not_imported() {
    let t = tempfile::tempdir().unwrap();
    let st = t.path().join("store");
    {
        let s = new_store(&st);
        let d = s.fs.mkdir(ROOT, b"d", 0o755, me()).unwrap().ino;
        put(&s.fs, d, b"a.txt", b"alpha", 0o644);
        put(&s.fs, d, b"b.txt", b"bravo", 0o644);
        s.fs.sync_all().unwrap();
    }
    let img = t.path().join("c.qfi");
    qfs_ok(&st, &["export-qvfs", s(&img)]);
    let o = run(&["qvfs", "check", "--json", s(&img)]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clean"], true);

    // Cross-link b.txt onto a.txt's chain.
    let qfd_path = t.path().join("c.qfd");
    let mut qfd = std::fs::read(&qfd_path).unwrap();
    let d_start = u32::from_le_bytes(qfd[0x30..0x34].try_into().unwrap()) as usize;
    let a_start: [u8; 4] = qfd[d_start * 4096 + 0x30..d_start * 4096 + 0x34]
        .try_into()
        .unwrap();
    qfd[d_start * 4096 + 64 + 0x30..d_start * 4096 + 64 + 0x34].copy_from_slice(&a_start);
    std::fs::write(&qfd_path, &qfd).unwrap();
    let o = run(&["qvfs", "check", "--json", s(&img)]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "cross-link" && p["path"] == "/d/b.txt"),
        "{v}"
    );
    let human = String::from_utf8(run(&["qvfs", "check", s(&img)]).stdout).unwrap();
    assert!(human.contains("error: cross-link /d/b.txt"), "{human}");

    let dst = t.path().join("dst");
    let o = qfs(&dst, &["import-qvfs", s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cross-link"));
    assert!(read_store(&dst).fs.list(ROOT).unwrap().is_empty());

    // Unreadable: a FAT whose length is no multiple of 4; a missing .qfd.
    std::fs::write(&img, [0xFF; 5]).unwrap();
    assert_eq!(run(&["qvfs", "check", s(&img)]).status.code(), Some(2));
    std::fs::write(&img, [0xFF; 4]).unwrap();
    std::fs::remove_file(&qfd_path).unwrap();
    let o = run(&["qvfs", "check", s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("c.qfd"));
}
