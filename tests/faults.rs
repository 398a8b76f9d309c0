//! Faults of the store on disk, with the real binary and real files: a full
//! disk, a truncated database, a truncated container, a damaged cluster
//! chain, and bad mount arguments.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::util::*;

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs queryfs and insists on exit code `code`; returns stdout + stderr.
fn qfs_code(store: &Path, args: &[&str], code: i32) -> String {
    let o = qfs(store, args);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(code), "queryfs {args:?}: {text}");
    text
}

/// A tmpfs of `mib` MiB mounted at a fresh temporary folder, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
    _t: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u32) -> SmallDisk {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("disk");
        fs::create_dir(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        SmallDisk { dir, _t: t }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        force_unmount(&self.dir);
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let c = c(dir);
    // SAFETY: a plain C struct, filled by statvfs below.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Writes `path` until the disk says ENOSPC (1 MiB writes, then 4 KiB).
fn fill(path: &Path) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for size in [1 << 20, 4096, 512] {
        let buf = vec![0x5au8; size];
        loop {
            match f.write(&buf) {
                Ok(n) if n == buf.len() => {}
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
    }
    let _ = f.sync_all();
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn full_disk_store_opens_mounts_and_frees_space() {
    let disk = SmallDisk::new(64);
    let store = disk.dir.join("store");
    qfs_ok(&store, &["init"]);
    assert!(
        store.join("reserve").exists(),
        "init makes the reserve file"
    );
    let src = disk.dir.join("src");
    let big = pattern(1, 3_000_000);
    let small = pattern(2, 200_000);
    write_file(&src, &big);
    qfs_ok(&store, &["put", src.to_str().unwrap(), "/big"]);
    write_file(&src, &small);
    qfs_ok(&store, &["put", src.to_str().unwrap(), "/small"]);
    fs::remove_file(&src).unwrap();
    fs::create_dir(disk.dir.join("mnt")).unwrap();
    fill(&disk.dir.join("filler"));
    assert!(
        free_bytes(&disk.dir) < 4096,
        "the disk is full: {} bytes free",
        free_bytes(&disk.dir)
    );
    // Read-only commands work on the full disk.
    let ls = qfs_code(&store, &["ls", "/"], 0);
    assert!(ls.contains("big") && ls.contains("small"), "{ls}");
    assert!(
        !store.join("reserve").exists(),
        "the open released the reserve"
    );
    let info = info_json(&store);
    assert_eq!(info["files"], 2);
    qfs_code(&store, &["fsck"], 0);
    // Mount, delete, write, unmount.
    let mut m = Mount::new(&disk.dir);
    assert_eq!(fs::read(m.path("small")).unwrap(), small);
    fs::remove_file(m.path("big")).unwrap();
    let fresh = pattern(3, 100_000);
    write_file(&m.path("fresh"), &fresh);
    write_file(&m.path("tiny"), b"hello");
    assert_eq!(fs::read(m.path("fresh")).unwrap(), fresh);
    m.stop();
    let text = qfs_code(&store, &["fsck"], 0);
    assert!(text.contains("clean"), "{text}");
    let ls = qfs_code(&store, &["ls", "/"], 0);
    assert!(!ls.contains("big"), "{ls}");
    assert_eq!(qfs_ok(&store, &["cat", "/tiny"]), "hello");
    let o = qfs(&store, &["cat", "/fresh"]);
    assert!(o.status.success());
    assert_eq!(o.stdout, fresh);
    // Full again, with the reserve used up: readers still read (the
    // database is opened as an immutable file: no -shm, no -wal, no space),
    // and a mount is refused with a clear message instead of half-working.
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(store.join(format!("queryfs.db{ext}")));
    }
    fill(&disk.dir.join("filler"));
    assert!(free_bytes(&disk.dir) < 4096);
    assert!(!store.join("reserve").exists());
    let ls = qfs_code(&store, &["ls", "/"], 0);
    assert!(ls.contains("fresh") && ls.contains("tiny"), "{ls}");
    qfs_code(&store, &["fsck"], 0);
    assert_eq!(qfs_ok(&store, &["cat", "/tiny"]), "hello");
    let mut child = std::process::Command::new(bin())
        .arg("--store")
        .arg(&store)
        .arg("mount")
        .arg(&m.mp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            force_unmount(&m.mp);
            let _ = child.kill();
            panic!("mount on a full disk without a reserve did not give up");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("no reserve file is left"), "{}", out(&o));
    assert!(!is_mounted(&m.mp));
    // Freeing the filler lets the next writing open make the reserve again.
    fs::remove_file(disk.dir.join("filler")).unwrap();
    qfs_ok(&store, &["gc"]);
    assert!(
        store.join("reserve").exists(),
        "gc's open remade the reserve"
    );
}

#[test]
fn empty_database_is_refused_and_never_written() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init"]);
    let src = t.path().join("f");
    write_file(&src, &pattern(4, 50_000));
    qfs_ok(&store, &["put", src.to_str().unwrap(), "/f"]);
    let db = store.join("queryfs.db");
    File::create(&db).unwrap(); // truncate to 0 bytes
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(store.join(format!("queryfs.db{ext}")));
    }
    let mp = t.path().join("mnt");
    let srcs = src.to_str().unwrap();
    let mps = mp.to_str().unwrap();
    let cmds: Vec<Vec<&str>> = vec![
        vec!["ls", "/"],
        vec!["info"],
        vec!["fsck"],
        vec!["fsck", "--repair"],
        vec!["gc"],
        vec!["put", srcs, "/g"],
        vec!["cat", "/f"],
        vec!["mount", mps],
    ];
    for args in &cmds {
        let text = qfs_code(&store, args, 2);
        assert!(
            text.contains("queryfs.db is empty or damaged (0 bytes)"),
            "{args:?}: {text}"
        );
        assert_eq!(fs::metadata(&db).unwrap().len(), 0, "{args:?} wrote to it");
        for ext in ["-wal", "-shm"] {
            assert!(
                !store.join(format!("queryfs.db{ext}")).exists(),
                "{args:?} created queryfs.db{ext}"
            );
        }
        assert!(!is_mounted(&mp));
        assert!(!mp.exists(), "{args:?} left a mount point behind");
    }
}

/// Puts `data` as `/name` through the CLI.
fn put(store: &Path, tmp: &Path, name: &str, data: &[u8]) {
    let src = tmp.join("src");
    write_file(&src, data);
    qfs_ok(store, &["put", src.to_str().unwrap(), name]);
}

#[test]
fn truncated_container_is_reported_without_verify() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init"]);
    let first = pattern(5, 100_000);
    put(&store, t.path(), "/first", &first);
    put(&store, t.path(), "/last", &pattern(6, 1_000_000));
    qfs_code(&store, &["fsck"], 0);
    let qfd = store.join("blobs.qfd");
    let len = fs::metadata(&qfd).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&qfd)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let text = qfs_code(&store, &["fsck"], 1);
    assert!(text.contains("truncated"), "{text}");
    assert!(text.contains("held by /last"), "{text}");
    assert!(!text.contains("held by /first"), "{text}");
    // A writing open treats it as damage: gc refuses and frees nothing.
    let qfi_before = fs::read(store.join("blobs.qfi")).unwrap();
    let text = qfs_code(&store, &["gc"], 2);
    assert!(
        text.contains("/last") && text.contains("fsck --repair"),
        "{text}"
    );
    assert_eq!(fs::read(store.join("blobs.qfi")).unwrap(), qfi_before);
    // The mount still serves the healthy file.
    let mut m = Mount::new(t.path());
    assert_eq!(fs::read(m.path("first")).unwrap(), first);
    m.stop();
    let text = qfs_code(&store, &["fsck", "--repair"], 0);
    assert!(text.contains("damaged file: /last"), "{text}");
    let text = qfs_code(&store, &["fsck"], 1);
    assert!(text.contains("damaged: /last"), "{text}");
    qfs_code(&store, &["gc"], 0);
}

fn read_fat(store: &Path) -> Vec<u32> {
    fs::read(store.join("blobs.qfi"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_clusters(store: &Path, from: u32, to: u32) -> Vec<u8> {
    let mut f = File::open(store.join("blobs.qfd")).unwrap();
    f.seek(SeekFrom::Start(from as u64 * 4096)).unwrap();
    let mut buf = vec![0u8; (to - from) as usize * 4096];
    f.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn damaged_chain_is_never_reclaimed_and_repair_quarantines_it() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init"]);
    // The victim goes first: its first 64 KiB chunk is clusters 1..=16.
    let victim = pattern(7, 64 * 1024);
    put(&store, t.path(), "/victim", &victim);
    let fat = read_fat(&store);
    assert_eq!(&fat[1..4], &[2, 3, 4], "victim chain at cluster 1");
    assert_eq!(fat[16], u32::MAX);
    let healthy = pattern(8, 300_000);
    put(&store, t.path(), "/healthy", &healthy);
    let doomed = pattern(9, 200_000);
    put(&store, t.path(), "/doomed", &doomed);
    // Zero the FAT entry of cluster 8: the chain now ends there, and 9..=16
    // look like orphans.
    let mut qfi = OpenOptions::new()
        .write(true)
        .open(store.join("blobs.qfi"))
        .unwrap();
    qfi.seek(SeekFrom::Start(8 * 4)).unwrap();
    qfi.write_all(&[0; 4]).unwrap();
    drop(qfi);
    let fat_planted = read_fat(&store);
    let bytes_planted = read_clusters(&store, 1, 17);

    let text = qfs_code(&store, &["gc"], 2);
    assert!(
        text.contains("/victim") && text.contains("free cluster 8"),
        "{text}"
    );
    assert!(
        !text.contains("orphan clusters,"),
        "gc reported a reclaim: {text}"
    );
    assert_eq!(read_fat(&store), fat_planted, "gc changed the FAT");
    let text = qfs_code(&store, &["fsck"], 1);
    assert!(text.contains("held by /victim"), "{text}");
    assert!(!text.contains("/healthy"), "{text}");

    // The mount serves the store but reuses none of the damaged clusters,
    // even after a delete.
    let mut m = Mount::new(t.path());
    assert_eq!(fs::read(m.path("healthy")).unwrap(), healthy);
    let _ = fs::read(m.path("victim")); // EIO or bytes: not checked here
    fs::remove_file(m.path("doomed")).unwrap();
    let mut fresh = Vec::new();
    for i in 0..8u64 {
        let d = pattern(100 + i, 90_000 + i as usize * 1000);
        write_file(&m.path(&format!("new{i}")), &d);
        fresh.push(d);
    }
    m.stop();
    let fat_now = read_fat(&store);
    assert_eq!(
        &fat_now[..fat_planted.len()],
        &fat_planted[..],
        "the mount changed FAT entries that existed"
    );
    assert_eq!(read_clusters(&store, 1, 17), bytes_planted);
    for (i, d) in fresh.iter().enumerate() {
        let o = qfs(&store, &["cat", &format!("/new{i}")]);
        assert!(o.status.success(), "{}", out(&o));
        assert_eq!(&o.stdout, d, "new{i}");
    }

    // Repair quarantines the victim only.
    let text = qfs_code(&store, &["fsck", "--repair"], 0);
    assert!(text.contains("damaged file: /victim"), "{text}");
    assert!(text.contains("1 damaged blobs quarantined"), "{text}");
    assert_eq!(read_clusters(&store, 1, 17), bytes_planted);
    let text = qfs_code(&store, &["fsck"], 1);
    assert!(
        text.contains("damaged: /victim") && text.contains("0 problems"),
        "{text}"
    );
    let json = qfs_code(&store, &["fsck", "--json"], 1);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["known_damage"][0]["files"][0], "/victim");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    let text = qfs_code(&store, &["gc"], 0);
    assert!(text.contains("reclaimed"), "{text}");
    // The quarantined clusters stay allocated and untouched by new files.
    let fat_repaired = read_fat(&store);
    for cl in (1..8).chain(9..17) {
        assert_ne!(fat_repaired[cl], 0, "cluster {cl} was freed");
    }
    put(&store, t.path(), "/after", &pattern(10, 150_000));
    assert_eq!(read_clusters(&store, 1, 17), bytes_planted);
    // The damaged file reads EIO, with a clear message; healthy ones read.
    // A bad operand of cat: reported, exit 1 (coreutils).
    let text = qfs_code(&store, &["cat", "/victim"], 1);
    assert!(text.contains("quarantined"), "{text}");
    let o = qfs(&store, &["cat", "/healthy"]);
    assert_eq!(o.stdout, healthy);
    // Writing the victim's bytes again stores a healthy copy (no dedup
    // onto the quarantined one).
    put(&store, t.path(), "/restored", &victim);
    let o = qfs(&store, &["cat", "/restored"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(o.stdout, victim);
    // Deleting the damaged file ends the quarantine; gc takes the space back.
    qfs_ok(&store, &["rm", "/victim"]);
    qfs_ok(&store, &["gc"]);
    let text = qfs_code(&store, &["fsck", "--verify"], 0);
    assert!(text.contains("clean"), "{text}");
}

#[test]
fn bad_mount_points_and_thread_counts_are_refused_before_mounting() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init"]);
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (store.clone(), vec![], "is the store folder"),
        (store.join("sub/deeper"), vec![], "is the store folder"),
        (
            t.path().to_path_buf(),
            vec![],
            "lies inside the mount point",
        ),
        (
            t.path().join("new1"),
            vec!["--threads", "0"],
            "0 is not in 1..=64",
        ),
        (
            t.path().join("new2/deep"),
            vec!["--threads", "100000"],
            "100000 is not in 1..=64",
        ),
    ];
    for (mp, extra, want) in &cases {
        let mut args = vec!["mount", mp.to_str().unwrap()];
        args.extend(extra);
        let text = qfs_code(&store, &args, 2);
        assert!(text.contains(want), "{args:?}: {text}");
        assert!(!is_mounted(mp), "{args:?} left a mount");
    }
    for gone in ["store/sub", "new1", "new2"] {
        assert!(!t.path().join(gone).exists(), "{gone} was created");
    }
    // A store in use: refused, and the mount point it would have created
    // is not left behind. fsck beside a mount is refused, saying to
    // unmount first.
    let mut m = Mount::new(t.path());
    let text = qfs_code(
        &store,
        &["mount", t.path().join("new3/x").to_str().unwrap()],
        2,
    );
    assert!(text.contains("in use by pid"), "{text}");
    assert!(!t.path().join("new3").exists());
    let text = qfs_code(&store, &["fsck"], 2);
    assert!(text.contains("queryfs umount"), "{text}");
    m.stop();
    qfs_code(&store, &["fsck"], 0);
}

#[test]
fn cross_linked_chains_are_both_damaged_and_both_quarantined() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    qfs_ok(&store, &["init"]);
    put(&store, t.path(), "/a", &pattern(11, 64 * 1024)); // clusters 1..=16
    put(&store, t.path(), "/b", &pattern(12, 64 * 1024)); // clusters 17..=32
    let keep = pattern(13, 40_000);
    put(&store, t.path(), "/keep", &keep);
    assert_eq!(read_fat(&store)[17], 18, "b's chain at cluster 17");
    // b's 4th cluster now leads into a's 5th: b still has 16 clusters, so
    // only the shared clusters give it away.
    let mut qfi = OpenOptions::new()
        .write(true)
        .open(store.join("blobs.qfi"))
        .unwrap();
    qfi.seek(SeekFrom::Start(20 * 4)).unwrap();
    qfi.write_all(&5u32.to_le_bytes()).unwrap();
    drop(qfi);
    let planted = read_fat(&store);
    let text = qfs_code(&store, &["gc"], 2);
    assert!(
        text.contains("/a") && text.contains("/b") && !text.contains("/keep"),
        "{text}"
    );
    assert_eq!(read_fat(&store), planted);
    let text = qfs_code(&store, &["fsck"], 1);
    assert!(text.contains("cross-link"), "{text}");
    let text = qfs_code(&store, &["fsck", "--repair"], 0);
    assert!(
        text.contains("damaged file: /a") && text.contains("damaged file: /b"),
        "{text}"
    );
    assert!(text.contains("2 damaged blobs quarantined"), "{text}");
    let text = qfs_code(&store, &["fsck"], 1);
    assert!(
        text.contains("damaged: /a") && text.contains("damaged: /b") && text.contains("0 problems"),
        "{text}"
    );
    qfs_code(&store, &["gc"], 0);
    // Every cluster of both chains, and the orphaned rest of b, stays.
    let fat = read_fat(&store);
    for (cl, &v) in fat.iter().enumerate().take(33).skip(1) {
        assert_ne!(v, 0, "cluster {cl} was freed");
    }
    let o = qfs(&store, &["cat", "/keep"]);
    assert_eq!(o.stdout, keep);
    qfs_code(&store, &["cat", "/b"], 1);
}
