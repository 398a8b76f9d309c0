//! The filesystem exerciser (`qfs-exercise`, tools/exercise/main.rs) against real
//! mounts: data mode (10^5 ops), namespace mode against a kernel tmpfs
//! (10^4 ops), and 8 processes for 60 s on 2 FUSE threads followed by a
//! clean unmount, `fsck --verify` and a re-check of every file after a
//! remount.
//!
//! Seeds: a fixed list plus one from the clock; every seed is printed, and
//! a failure prints the replay command (see tools/exercise/main.rs).

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn exe() -> PathBuf {
    // A program of the tools crate: built by the test (tests/util.rs).
    tool("qfs-exercise")
}

fn clock_seed() -> u64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000) as u64
}

/// Runs qfs-exercise, echoes its output, returns (success, stdout).
fn exercise(args: &[&str]) -> (bool, String) {
    println!("$ qfs-exercise {}", args.join(" "));
    let t = Instant::now();
    let o = Command::new(exe())
        .args(args)
        .output()
        .expect("running qfs-exercise");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    println!("{out}");
    if !o.status.success() {
        // The failure report: seed, op number, last ops, replay command.
        eprintln!("{err}");
    }
    println!("({:.1} s, {})", t.elapsed().as_secs_f64(), o.status);
    (o.status.success(), out)
}

/// The mount arguments of each backend pair the exercisers run on: the
/// store folder (SQLite file + QVFS container) and a store in memory
/// (`--memory`: MemBlobs + SQLite on `:memory:`). A new backend is one
/// more case here.
const BACKENDS: [(&str, &[&str]); 2] = [
    ("store folder", &["--threads", "2"]),
    ("memory", &["--threads", "2", "--memory"]),
];

#[test]
fn exercise_data_mode() {
    // 10^5 ops in all: three fixed seeds and one from the clock.
    data_mode(BACKENDS[0], &[11u64, 12, 13, clock_seed()]);
}

#[test]
fn exercise_data_mode_in_memory() {
    data_mode(BACKENDS[1], &[11u64, clock_seed()]);
}

fn data_mode((backend, args): (&str, &[&str]), seeds: &[u64]) {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::with_args(t.path(), args);
    println!("data mode on the {backend} backend, seeds: {seeds:?}");
    for &s in seeds {
        let dir = m.path(&format!("data-{s}"));
        std::fs::create_dir(&dir).unwrap();
        let seed = s.to_string();
        let (ok, _) = exercise(&[
            "data",
            "--seed",
            &seed,
            "--ops",
            "25000",
            dir.to_str().unwrap(),
        ]);
        assert!(
            ok,
            "qfs-exercise data failed with seed {s} (replay command above)"
        );
    }
}

/// A kernel tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(p: &Path) -> Tmpfs {
        std::fs::create_dir_all(p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "qfs-exercise-ref"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Tmpfs(p.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.0).status().unwrap();
        if !st.success() {
            force_unmount(&self.0);
        }
    }
}

#[test]
fn exercise_namespace_mode_against_tmpfs() {
    // 1.5 x 10^4 ops in all: two fixed seeds (23 found the truncate/O_TRUNC
    // mtime difference of issue 12) and one from the clock.
    namespace_mode(BACKENDS[0], &[21u64, 23, clock_seed()]);
}

#[test]
fn exercise_namespace_mode_in_memory_against_tmpfs() {
    namespace_mode(BACKENDS[1], &[23u64, clock_seed()]);
}

fn namespace_mode((backend, args): (&str, &[&str]), seeds: &[u64]) {
    let t = tempfile::tempdir().unwrap();
    let m = Mount::with_args(t.path(), args);
    let reference = Tmpfs::new(&t.path().join("ref"));
    println!("namespace mode on the {backend} backend, seeds: {seeds:?}");
    for &s in seeds {
        let dir = m.path(&format!("ns-{s}"));
        let rdir = reference.0.join(format!("ns-{s}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&rdir).unwrap();
        let seed = s.to_string();
        let (ok, _) = exercise(&[
            "ns",
            "--seed",
            &seed,
            "--ops",
            "5000",
            "--ref",
            rdir.to_str().unwrap(),
            dir.to_str().unwrap(),
        ]);
        assert!(
            ok,
            "qfs-exercise ns failed with seed {s} (replay command above)"
        );
    }
    drop(reference);
    assert!(
        !is_mounted(&t.path().join("ref")),
        "the reference tmpfs is still mounted"
    );
}

#[test]
fn exercise_eight_processes_then_fsck_and_remount() {
    let t = tempfile::tempdir().unwrap();
    let mut m = Mount::with_args(t.path(), &["--threads", "2"]);
    let seed = clock_seed();
    let dir = m.path("multi");
    std::fs::create_dir(&dir).unwrap();
    let manifest = t.path().join("manifest.json");
    let (ok, _) = exercise(&[
        "multi",
        "--seed",
        &seed.to_string(),
        "--procs",
        "8",
        "--seconds",
        "60",
        "--manifest",
        manifest.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    // Every later step runs even if this failed (fsck tells more), but the
    // test fails with everything that went wrong.
    let mut failures = Vec::new();
    if !ok {
        failures.push(format!(
            "qfs-exercise multi failed with seed {seed} (report above)"
        ));
    }
    // A mount whose serving process died answers ENOTCONN / ECONNABORTED.
    let alive =
        std::fs::read_dir(&m.mp).is_ok() && m.child.as_mut().unwrap().try_wait().unwrap().is_none();
    if !alive {
        failures.push("the mount died during the multi-process run".to_string());
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        m.clear_dead();
        panic!("{}", failures.join("\n"));
    }

    // A clean unmount commits everything; the store must then check clean,
    // blob contents included.
    m.stop();
    let o = qfs(&m.store, &["fsck", "--verify"]);
    println!(
        "fsck --verify: {:?}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout)
    );
    if !o.status.success() {
        failures.push(format!(
            "fsck --verify after the multi-process run: {:?}\n{}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }

    // After a remount every file of every process has its exact content,
    // and the workers' directories hold nothing else. (Only meaningful if
    // every worker's model held to the end.)
    m.start();
    if ok {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        let files = doc["files"].as_array().unwrap();
        assert!(!files.is_empty(), "the manifest lists no files");
        let mut want = std::collections::BTreeSet::new();
        let mut bad = 0;
        for f in files {
            let rel = f["path"].as_str().unwrap();
            want.insert(rel.to_string());
            match std::fs::read(dir.join(rel)) {
                Ok(data) => {
                    let h = blake3::hash(&data).to_hex().to_string();
                    if data.len() as u64 != f["size"].as_u64().unwrap()
                        || h != f["blake3"].as_str().unwrap()
                    {
                        failures.push(format!(
                            "{rel} after remount: {} bytes {h}, manifest {} bytes {}",
                            data.len(),
                            f["size"],
                            f["blake3"]
                        ));
                        bad += 1;
                    }
                }
                Err(e) => {
                    failures.push(format!("{rel} after remount: {e}"));
                    bad += 1;
                }
            }
        }
        let mut have = std::collections::BTreeSet::new();
        for sub in (0..8)
            .map(|i| format!("p{i}"))
            .chain(["shared".to_string()])
        {
            for e in std::fs::read_dir(dir.join(&sub)).unwrap() {
                have.insert(format!(
                    "{sub}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        if have != want {
            failures.push(format!(
                "after remount, not in the manifest: {:?}; missing: {:?}",
                have.difference(&want).collect::<Vec<_>>(),
                want.difference(&have).collect::<Vec<_>>()
            ));
        }
        // The binary's own verify agrees.
        let (vok, _) = exercise(&[
            "verify",
            "--manifest",
            manifest.to_str().unwrap(),
            dir.to_str().unwrap(),
        ]);
        if !vok {
            failures.push("qfs-exercise verify after remount failed".to_string());
        }
        println!("{} files re-verified after remount, {bad} bad", files.len());
    }
    m.stop();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
