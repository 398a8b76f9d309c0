//! Query-folder tests without a kernel, through the view a mount serves
//! (on every backend pair of the core's tests).

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::types::Ino;
use crate::vfs::tests::{on_every_backend, Backend};
use crate::view::View;

/// The view of a new core on `b`, the query folders listed at the root.
fn view(b: Backend) -> View {
    View::new(Arc::new(b.fs()), true)
}

/// The virtual node table stays bounded under a stream of distinct folder
/// names once the kernel gives their lookups back, keeps every node the
/// kernel still holds, and a folder trimmed away is found again by name.
fn virtual_nodes_are_trimmed_once_forgotten(b: Backend) {
    let fs = view(b);
    let by_tag = fs.lookup(Ino(ROOT), b"by-tag").unwrap().ino;
    let held = fs.lookup(Ino(by_tag), b"!held").unwrap().ino;
    fs.folders().note_lookup(held);
    let total = 3 * NODE_CAP_FOR_TESTS;
    for i in 0..total {
        let name = format!("!t{i}");
        let ino = fs.lookup(Ino(by_tag), name.as_bytes()).unwrap().ino;
        // The kernel takes the lookup and, some time later, forgets it.
        fs.folders().note_lookup(ino);
        fs.folders().forget_virtual(ino, 1);
    }
    let n = fs.folders().virtual_nodes();
    assert!(
        n <= 2 * NODE_CAP_FOR_TESTS + 8,
        "{n} virtual nodes after {total} distinct names"
    );
    // The held node was kept, with its number.
    assert_eq!(fs.getattr(Ino(held)).unwrap().ino, held);
    assert_eq!(fs.lookup(Ino(by_tag), b"!held").unwrap().ino, held);
    // A trimmed folder is found again (under a new number).
    let again = fs.lookup(Ino(by_tag), b"!t0").unwrap();
    assert!(again.is_dir());
    assert!(fs.opendir(Ino(again.ino)).is_ok());
}

/// A tag folder's entry looked up by name is the entry its listing shows
/// under that name (the fast path by the name index must agree with the
/// listing): random trees with repeated names, clash-like names, hard
/// links, symlinks, directories, user tags and files made through folders.
fn tag_folder_lookups_agree_with_listings(b: Backend) {
    let names: [&[u8]; 7] = [b"a", b"b", b"a~1", b"x", b"n=1", b"\xff", b"y"];
    for seed in 1..=40u64 {
        let fs = view(b);
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let c = Caller::ROOT;
        let by_tag = fs.lookup(Ino(ROOT), b"by-tag").unwrap().ino;
        for t in ["x", "y", "z"] {
            fs.mkdir(Ino(by_tag), t.as_bytes(), 0o755, c).unwrap();
        }
        let dirs: Vec<u64> = (0..3)
            .map(|i| {
                fs.mkdir(Ino(ROOT), format!("d{i}").as_bytes(), 0o755, c)
                    .unwrap()
                    .ino
            })
            .collect();
        let mut made = Vec::new();
        for _ in 0..14 {
            let d = dirs[next() as usize % dirs.len()];
            let n = names[next() as usize % names.len()];
            let i = match next() % 6 {
                0 => fs.mkdir(Ino(d), n, 0o755, c).map(|i| i.ino),
                1 => fs.symlink(Ino(d), n, b"../d0/a", c).map(|i| i.ino),
                2 if !made.is_empty() => {
                    let f = made[next() as usize % made.len()];
                    fs.link(Ino(f), Ino(d), n).map(|i| i.ino)
                }
                _ => fs.create(Ino(d), n, 0o644, c).map(|(i, fh)| {
                    fs.core().release(fh).unwrap();
                    i.ino
                }),
            };
            if let Ok(i) = i {
                if fs.getattr(Ino(i)).unwrap().kind == FileKind::File {
                    made.push(i);
                }
                for t in ["x", "y", "z"] {
                    if next() % 2 == 0 {
                        let _ = fs.setxattr(Ino(i), format!("user.tag.{t}").as_bytes(), b"", 0);
                    }
                }
            }
        }
        let folder = |path: &[&str]| {
            let mut f = by_tag;
            for p in path {
                f = fs.lookup(Ino(f), p.as_bytes()).unwrap().ino;
            }
            f
        };
        // Files made through folders (placed tags, /inbox), some in a tree.
        for _ in 0..4 {
            let path: &[&str] = [&["x"][..], &["x", "y"], &["y"]][next() as usize % 3];
            let n = names[next() as usize % names.len()];
            if let Ok((_, fh)) = fs.create(Ino(folder(path)), n, 0o644, c) {
                fs.core().release(fh).unwrap();
            }
        }
        let paths: [&[&str]; 7] = [
            &["x"],
            &["y"],
            &["z"],
            &["x", "y"],
            &["y", "x"],
            &["!x"],
            &["x|z"],
        ];
        for path in paths {
            let f = folder(path);
            let fh = fs.opendir(Ino(f)).unwrap();
            let listed: Vec<DirEntry> = fs
                .core()
                .dir_page(fh, 0, 100_000)
                .unwrap()
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.name != b"." && e.name != b"..")
                .collect();
            fs.core().releasedir(fh).unwrap();
            let inos: HashSet<u64> = listed.iter().map(|e| e.attr.ino).collect();
            for e in &listed {
                let got = fs.lookup(Ino(f), &e.name).unwrap();
                assert_eq!(got.ino, e.attr.ino, "seed {seed} {path:?} {:?}", e.name);
            }
            for n in names {
                if listed.iter().any(|e| e.name == n) {
                    continue;
                }
                if let Ok(i) = fs.lookup(Ino(f), n) {
                    assert!(
                        is_virtual(i.ino) || inos.contains(&i.ino),
                        "seed {seed} {path:?}: {n:?} reaches {} which the folder does not list",
                        i.ino
                    );
                }
            }
        }
    }
}

/// A store that runs users' SQL shows `/sql` and `/queries`; one that
/// cannot (in memory) shows only `/by-tag`, and the others are not there.
#[test]
fn sql_folders_exist_only_where_sql_runs() {
    // What a directory listing through the kernel shows, with the query
    // folders listed at the root.
    let names = |fs: &View| -> Vec<Vec<u8>> {
        let fh = fs.opendir(Ino(ROOT)).unwrap();
        let page = fs.core().dir_page(fh, 0, 100).unwrap();
        fs.core().releasedir(fh).unwrap();
        page.into_iter()
            .map(|(_, e)| e.name)
            .filter(|n| n != b"." && n != b"..")
            .collect()
    };
    let disk = view(Backend::Disk);
    assert_eq!(
        names(&disk),
        vec![b"by-tag".to_vec(), b"sql".to_vec(), b"queries".to_vec()]
    );
    assert!(disk.lookup(Ino(ROOT), b"sql").unwrap().is_dir());
    let mem = view(Backend::Memory);
    assert_eq!(names(&mem), vec![b"by-tag".to_vec()]);
    assert!(matches!(
        mem.lookup(Ino(ROOT), b"sql"),
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        mem.lookup(Ino(ROOT), b"queries"),
        Err(FsError::NotFound)
    ));
    assert!(mem.lookup(Ino(ROOT), b"by-tag").unwrap().is_dir());
}

on_every_backend!(
    virtual_nodes_are_trimmed_once_forgotten,
    tag_folder_lookups_agree_with_listings,
);
