//! queryfs-bench: the same workloads on a native directory, a minimal FUSE
//! passthrough (`qfs-passthrough`, the floor) and a queryfs mount, in one
//! run; medians of several repetitions and the ratios between them.
//!
//! Run as root (mounts, drop_caches): `cargo build --release && target/release/queryfs-bench`.
//! `--help` lists the knobs. Results go to stdout as Markdown.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng, SeedableRng};

#[derive(Parser, Clone)]
#[command(about = "queryfs benchmarks against a native directory and a FUSE passthrough")]
struct Args {
    /// Work directory (on the disk to measure; everything is created inside).
    #[arg(long, default_value = "/var/tmp/queryfs-bench")]
    dir: PathBuf,
    /// Repetitions of each workload (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the sequential file, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// Small files to create/stat/read/unlink.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Files in the tar to extract (in 500 folders).
    #[arg(long, default_value_t = 20_000)]
    tar_files: usize,
    /// Files in the query-folder store (0 skips that part).
    #[arg(long, default_value_t = 100_000)]
    query_files: usize,
    /// Size of the file written for the peak-RSS check, MiB (0 skips).
    #[arg(long, default_value_t = 4096)]
    rss_mib: usize,
    /// Size of the big file in the export/import tree, MiB (beside the tar's files).
    #[arg(long, default_value_t = 512)]
    xchg_big_mib: usize,
    /// The LiteboxFS binary (`cargo install liteboxfs-cli`); skipped if it does not run.
    #[arg(long, default_value = "litebox")]
    litebox: PathBuf,
    /// Only these workload groups (seq,random,small,tar,sparse,dedup,query,rss,exchange).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The groups LiteboxFS runs (its random 4 KiB step on a 1 GiB file had
    /// not finished after 20 minutes, so it is left out by default).
    #[arg(long, value_delimiter = ',', default_value = "seq,small,tar")]
    litebox_groups: Vec<String>,
}

fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join(name)
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("warning: cannot drop caches ({e}); cold reads are warm");
    }
}

/// (mountinfo read as bytes: a mount point elsewhere that is not UTF-8
/// must not hide this one.)
fn is_mounted(mp: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let s = fs::read("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.as_os_str().as_bytes();
    s.split(|&b| b == b'\n')
        .any(|l| l.split(|&b| b == b' ').nth(4) == Some(want))
}

fn wait_mounted(mp: &Path, child: &mut Child) {
    let end = Instant::now() + Duration::from_secs(30);
    while !is_mounted(mp) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("mount of {} exited: {st}", mp.display());
        }
        assert!(Instant::now() < end, "{} did not mount", mp.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A place to run workloads.
struct Target {
    name: &'static str,
    root: PathBuf,
    child: Option<Child>,
    kind: Kind,
    litebox: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Native,
    Passthrough,
    Queryfs,
    Litebox,
}

impl Target {
    fn start(base: &Path, kind: Kind, litebox: &Path) -> Target {
        let (name, root) = match kind {
            Kind::Native => ("native", base.join("native")),
            Kind::Passthrough => ("passthrough", base.join("pt-mnt")),
            Kind::Queryfs => ("queryfs", base.join("q-mnt")),
            Kind::Litebox => ("litebox", base.join("lb-mnt")),
        };
        fs::create_dir_all(&root).unwrap();
        let mut t = Target {
            name,
            root: root.canonicalize().unwrap(),
            child: None,
            kind,
            litebox: litebox.to_path_buf(),
        };
        t.mount(base);
        t
    }

    fn mount(&mut self, base: &Path) {
        let child = match self.kind {
            Kind::Native => return,
            Kind::Passthrough => {
                let src = base.join("pt-src");
                fs::create_dir_all(&src).unwrap();
                Command::new(bin("qfs-passthrough"))
                    .arg(&src)
                    .arg(&self.root)
                    .arg("2")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("qfs-passthrough")
            }
            Kind::Litebox => {
                let db = base.join("litebox.db");
                if !db.exists() {
                    let st = Command::new(&self.litebox)
                        .arg("--file")
                        .arg(&db)
                        .arg("create")
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success(), "litebox create");
                }
                Command::new(&self.litebox)
                    .arg("--file")
                    .arg(&db)
                    .arg("mount")
                    .arg(&self.root)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("litebox mount")
            }
            Kind::Queryfs => {
                let store = base.join("store");
                if !store.join("queryfs.db").exists() {
                    let st = Command::new(bin("queryfs"))
                        .arg("init")
                        .arg(&store)
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
                Command::new(bin("queryfs"))
                    .arg("--store")
                    .arg(&store)
                    .arg("mount")
                    .arg(&self.root)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("queryfs mount")
            }
        };
        self.child = Some(child);
        wait_mounted(&self.root, self.child.as_mut().unwrap());
    }

    fn unmount(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg(&self.root).status();
            let _ = c.wait();
        }
    }

    /// Peak RSS of the serving process, KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn clear(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        // The query folders of a queryfs mount are not files to clear.
        if ["by-tag", "sql", "queries"].contains(&e.file_name().to_str().unwrap_or("")) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill(&mut v[..]);
    v
}

/// Results: workload -> target -> (value, unit).
type Results = BTreeMap<String, BTreeMap<&'static str, f64>>;

fn record(res: &mut Results, w: &str, t: &'static str, v: f64) {
    eprintln!("  {w:<34} {t:<12} {v:>12.1}");
    res.entry(w.to_string()).or_default().insert(t, v);
}

fn seq(t: &Target, a: &Args, res: &mut Results) {
    let block = random_bytes(1 << 20, 1);
    let mut w = Vec::new();
    let mut r = Vec::new();
    for run in 0..a.runs {
        let p = t.root.join("big");
        let start = Instant::now();
        let mut f = File::create(&p).unwrap();
        for i in 0..a.size_mib {
            // Vary each block so that nothing dedups.
            let mut b = block.clone();
            b[..8].copy_from_slice(&((run * 100_000 + i) as u64).to_le_bytes());
            f.write_all(&b).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        w.push(a.size_mib as f64 / start.elapsed().as_secs_f64());
        drop_caches();
        let start = Instant::now();
        let mut f = File::open(&p).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(n, a.size_mib << 20);
        r.push(a.size_mib as f64 / start.elapsed().as_secs_f64());
        if run + 1 < a.runs {
            fs::remove_file(&p).unwrap();
        }
    }
    record(
        res,
        &format!("seq write {} MiB + fsync (MiB/s)", a.size_mib),
        t.name,
        median(w),
    );
    record(
        res,
        &format!("seq read {} MiB, cold (MiB/s)", a.size_mib),
        t.name,
        median(r),
    );
}

fn random(t: &Target, a: &Args, res: &mut Results) {
    let p = t.root.join("big");
    if !p.exists() {
        seq(
            t,
            &Args {
                runs: 1,
                ..a.clone()
            },
            &mut Results::new(),
        );
    }
    let len = fs::metadata(&p).unwrap().len();
    let blocks = len / 4096;
    let ops = 4000;
    let mut rr = Vec::new();
    let mut ww = Vec::new();
    for run in 0..a.runs {
        drop_caches();
        let mut rng = rand::rngs::StdRng::seed_from_u64(run as u64);
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut buf = vec![0u8; 4096];
        let start = Instant::now();
        for _ in 0..ops {
            f.read_exact_at(&mut buf, rng.random_range(0..blocks) * 4096)
                .unwrap();
        }
        rr.push(ops as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for i in 0..ops {
            buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all_at(&buf, rng.random_range(0..blocks) * 4096)
                .unwrap();
        }
        f.sync_all().unwrap();
        ww.push(ops as f64 / start.elapsed().as_secs_f64());
    }
    record(res, "random 4 KiB reads, cold (ops/s)", t.name, median(rr));
    record(
        res,
        "random 4 KiB writes + fsync (ops/s)",
        t.name,
        median(ww),
    );
    fs::remove_file(&p).unwrap();
}

/// Work must follow the data held, not the size asked for: a truncate to
/// 999,999,999,999,999 bytes (just under 1 PB) of a file holding one byte,
/// a write at its far end, and a truncate back.
fn sparse(t: &Target, a: &Args, res: &mut Results) {
    let p = t.root.join("sparse");
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..a.runs {
        fs::write(&p, b"x").unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        let start = Instant::now();
        match f.set_len(999_999_999_999_999) {
            Ok(()) => {
                f.write_all_at(b"y", 999_999_999_999_000).unwrap();
                f.sync_all().unwrap();
                up.push(start.elapsed().as_secs_f64() * 1000.0);
                let start = Instant::now();
                f.set_len(1).unwrap();
                f.sync_all().unwrap();
                down.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            // A filesystem whose limit is below 1 PB (ext4: 16 TiB).
            Err(e) => {
                eprintln!("{}: truncate to 999,999,999,999,999: {e}", t.name);
                break;
            }
        }
        drop(f);
        fs::remove_file(&p).unwrap();
    }
    if !up.is_empty() {
        record(
            res,
            "truncate to ~1 PB + write at its end + fsync (ms)",
            t.name,
            median(up),
        );
        record(
            res,
            "truncate ~1 PB back to 1 byte + fsync (ms)",
            t.name,
            median(down),
        );
    }
}

fn small(t: &Target, a: &Args, res: &mut Results) {
    let data = random_bytes(4096, 2);
    let (mut c, mut s, mut r, mut u) = (vec![], vec![], vec![], vec![]);
    for _ in 0..a.runs {
        let d = t.root.join("small");
        fs::create_dir(&d).unwrap();
        let names: Vec<PathBuf> = (0..a.files).map(|i| d.join(format!("f{i:06}"))).collect();
        let start = Instant::now();
        for (i, p) in names.iter().enumerate() {
            let mut b = data.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            fs::write(p, &b).unwrap();
        }
        c.push(a.files as f64 / start.elapsed().as_secs_f64());
        drop_caches();
        let start = Instant::now();
        for p in &names {
            fs::metadata(p).unwrap();
        }
        s.push(a.files as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for p in &names {
            assert_eq!(fs::read(p).unwrap().len(), 4096);
        }
        r.push(a.files as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for p in &names {
            fs::remove_file(p).unwrap();
        }
        u.push(a.files as f64 / start.elapsed().as_secs_f64());
        fs::remove_dir(&d).unwrap();
    }
    let n = a.files;
    record(
        res,
        &format!("create {n} x 4 KiB (files/s)"),
        t.name,
        median(c),
    );
    record(res, &format!("stat {n}, cold (files/s)"), t.name, median(s));
    record(
        res,
        &format!("read {n} x 4 KiB (files/s)"),
        t.name,
        median(r),
    );
    record(res, &format!("unlink {n} (files/s)"), t.name, median(u));
}

fn make_tar(a: &Args) -> PathBuf {
    let tar = a.dir.join(format!("tree-{}.tar", a.tar_files));
    if tar.exists() {
        return tar;
    }
    let src = a.dir.join("tar-src");
    let _ = fs::remove_dir_all(&src);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for i in 0..a.tar_files {
        let d = src.join(format!("d{:03}", i % 500));
        if i < 500 {
            fs::create_dir_all(&d).unwrap();
        }
        let len = rng.random_range(100..8000);
        fs::write(
            d.join(format!("file{i:06}.txt")),
            random_bytes(len, i as u64),
        )
        .unwrap();
    }
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_dir_all(&src).unwrap();
    tar
}

fn timed(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let st = cmd.stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "{cmd:?}");
    start.elapsed().as_secs_f64()
}

fn tar(t: &Target, a: &Args, res: &mut Results) {
    let tarball = make_tar(a);
    let (mut x, mut l, mut d) = (vec![], vec![], vec![]);
    for _ in 0..a.runs {
        let dst = t.root.join("untar");
        fs::create_dir(&dst).unwrap();
        x.push(timed(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&dst),
        ));
        drop_caches();
        l.push(timed(Command::new("ls").arg("-lR").arg(&dst)));
        d.push(timed(Command::new("rm").arg("-rf").arg(&dst)));
    }
    let n = a.tar_files;
    record(res, &format!("untar {n} files (s)"), t.name, median(x));
    record(
        res,
        &format!("ls -lR {n} files, cold (s)"),
        t.name,
        median(l),
    );
    record(res, &format!("rm -rf {n} files (s)"), t.name, median(d));
}

fn stored_bytes(store: &Path) -> u64 {
    let o = Command::new(bin("queryfs"))
        .arg("--store")
        .arg(store)
        .args(["info", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["stored_bytes"].as_u64().unwrap()
}

fn dedup(t: &Target, a: &Args, res: &mut Results) {
    let data = random_bytes(256 << 20, 4);
    // fsync'd, so that the store on disk (read beside the mount) holds it.
    let write_synced = |name: &str| {
        let mut f = fs::File::create(t.root.join(name)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    };
    write_synced("copy1");
    let store = a.dir.join("store");
    let one = stored_bytes(&store);
    write_synced("copy2");
    let two = stored_bytes(&store);
    record(
        res,
        "2nd copy of 256 MiB adds (% of 1st)",
        t.name,
        100.0 * two.saturating_sub(one) as f64 / 256.0 / 1048576.0,
    );
    fs::remove_file(t.root.join("copy1")).unwrap();
    fs::remove_file(t.root.join("copy2")).unwrap();
}

fn rss(a: &Args, res: &mut Results) {
    let mut t = Target::start(&a.dir, Kind::Queryfs, &a.litebox);
    let block = random_bytes(1 << 20, 5);
    let mut f = File::create(t.root.join("huge")).unwrap();
    for i in 0..a.rss_mib {
        let mut b = block.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&b).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let kib = t.peak_rss_kib().unwrap_or(0);
    record(
        res,
        &format!("peak RSS writing {} MiB (MiB)", a.rss_mib),
        "queryfs",
        kib as f64 / 1024.0,
    );
    fs::remove_file(t.root.join("huge")).unwrap();
    t.unmount();
}

/// Builds a store of `n` files and 1,000 tags through the library, then
/// times query-folder listings through a mount.
fn query(a: &Args, res: &mut Results) {
    use queryfs::store::{self, Access};
    use queryfs::vfs::Caller;
    let dir = a.dir.join(format!("qstore-{}", a.query_files));
    let store_dir = dir.join("store");
    if !store_dir.join("queryfs.db").exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        eprintln!(
            "building a store of {} files and 1000 tags ...",
            a.query_files
        );
        store::init(&store_dir).unwrap();
        let s = store::open(
            &store_dir,
            Access::Write {
                purpose: "queryfs-bench".into(),
                recover: true,
            },
            false,
        )
        .unwrap();
        let who = Caller { uid: 0, gid: 0 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let n = a.query_files;
        let dirs: Vec<u64> = (0..100)
            .map(|i| {
                s.fs.mkdir(1, format!("dir{i:03}").as_bytes(), 0o755, who)
                    .unwrap()
                    .ino
            })
            .collect();
        for i in 0..n {
            let ext = [
                "txt", "md", "jpg", "flac", "rs", "pdf", "csv", "html", "png", "json",
            ][i % 10];
            let name = format!("file{i:06}.{ext}");
            let f =
                s.fs.mknod(
                    dirs[i % 100],
                    name.as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    who,
                )
                .unwrap();
            let mut tags = Vec::new();
            // x: 10,000 files; a and b: 20,000 each, 4,000 together.
            if i % (n / 10_000).max(1) == 0 {
                tags.push("x".to_string());
            }
            if i % 5 == 0 {
                tags.push("a".to_string());
            }
            if i % 5 == 1 || i % 25 == 0 {
                tags.push("b".to_string());
            }
            tags.push(format!("t{:03}", rng.random_range(0..997)));
            s.fs.setxattr(f.ino, b"user.tags", tags.join(",").as_bytes(), 0)
                .unwrap();
        }
        drop(s);
    }
    fs::create_dir_all(dir.join("mnt")).unwrap();
    let mp = dir.join("mnt").canonicalize().unwrap();
    let mut child = Command::new(bin("queryfs"))
        .arg("--store")
        .arg(&store_dir)
        .arg("mount")
        .arg(&mp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_mounted(&mp, &mut child);
    let list = |rel: &str| -> (f64, usize) {
        let start = Instant::now();
        let n = fs::read_dir(mp.join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .count();
        (start.elapsed().as_secs_f64() * 1000.0, n)
    };
    for (label, rel) in [
        ("/by-tag/x/", "by-tag/x"),
        ("/by-tag/a/b/", "by-tag/a/b"),
        (
            "/sql/ over all files (ext = 'md')",
            "sql/SELECT id, name FROM files WHERE ext = 'md'",
        ),
        ("/queries/untagged/ (all files scanned)", "queries/untagged"),
    ] {
        let mut v = Vec::new();
        let mut entries = 0;
        for _ in 0..a.runs.max(5) {
            // A change between runs, so the listing cache cannot answer.
            let _ = fs::write(mp.join("touch"), b"x");
            let (ms, n) = list(rel);
            v.push(ms);
            entries = n;
        }
        record(
            res,
            &format!("list {label}, {entries} entries (ms)"),
            "queryfs",
            median(v),
        );
    }
    let _ = Command::new("umount").arg(&mp).status();
    let _ = child.wait();
}

/// Export and import of a tree (the tar's small files plus one big file)
/// against `cp -r` of the same tree on the same disk, caches dropped first.
fn exchange(a: &Args, res: &mut Results) {
    let base = a.dir.join("xchg");
    let _ = fs::remove_dir_all(&base);
    let src = base.join("src");
    fs::create_dir_all(&src).unwrap();
    let tarball = make_tar(a);
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let mut f = File::create(src.join("big.bin")).unwrap();
    let block = random_bytes(1 << 20, 7);
    for i in 0..a.xchg_big_mib {
        let mut b = block.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&b).unwrap();
    }
    drop(f);
    let q = |store: &Path| {
        let mut c = Command::new(bin("queryfs"));
        c.arg("--store").arg(store);
        c
    };
    let store = base.join("store");
    let st = q(&store)
        .arg("init")
        .arg(&store)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let st = q(&store).arg("put").arg(&src).arg("/").status().unwrap();
    assert!(st.success());
    let (mut cp, mut ex, mut im) = (vec![], vec![], vec![]);
    let img = base.join("out.qfi");
    for _ in 0..a.runs {
        let dst = base.join("copy");
        drop_caches();
        cp.push(timed(Command::new("sh").arg("-c").arg(format!(
            "cp -r '{}' '{}' && sync",
            src.display(),
            dst.display()
        ))));
        fs::remove_dir_all(&dst).unwrap();
        let _ = fs::remove_file(&img);
        let _ = fs::remove_file(base.join("out.qfd"));
        drop_caches();
        ex.push(timed(
            q(&store).args(["export-qvfs", "--from", "/src"]).arg(&img),
        ));
        let back = base.join("back");
        let _ = fs::remove_dir_all(&back);
        drop_caches();
        im.push(timed(q(&back).arg("import-qvfs").arg(&img)));
    }
    let what = format!("{} files + {} MiB", a.tar_files + 1, a.xchg_big_mib);
    let cp = median(cp);
    record(
        res,
        &format!("export-qvfs of {what} vs cp -r (s)"),
        "native",
        cp,
    );
    record(
        res,
        &format!("export-qvfs of {what} vs cp -r (s)"),
        "queryfs",
        median(ex),
    );
    record(
        res,
        &format!("import-qvfs of {what} vs cp -r (s)"),
        "native",
        cp,
    );
    record(
        res,
        &format!("import-qvfs of {what} vs cp -r (s)"),
        "queryfs",
        median(im),
    );
    let _ = fs::remove_dir_all(&base);
}

fn main() {
    let a = Args::parse();
    fs::create_dir_all(&a.dir).unwrap();
    let want = |g: &str| a.only.is_empty() || a.only.iter().any(|o| o == g);
    let mut res = Results::new();
    let has_litebox = Command::new(&a.litebox)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_litebox {
        eprintln!(
            "LiteboxFS ({}) does not run: its column stays empty (cargo install liteboxfs-cli)",
            a.litebox.display()
        );
    }
    let mut kinds = vec![Kind::Native, Kind::Passthrough, Kind::Queryfs];
    if has_litebox {
        kinds.push(Kind::Litebox);
    }
    for kind in kinds {
        // A fresh place for each target.
        for sub in ["native", "pt-src", "store", "litebox.db"] {
            let _ = fs::remove_dir_all(a.dir.join(sub));
            let _ = fs::remove_file(a.dir.join(sub));
        }
        let mut t = Target::start(&a.dir, kind, &a.litebox);
        eprintln!("== {}", t.name);
        clear(&t.root);
        let runs =
            |g: &str| want(g) && (kind != Kind::Litebox || a.litebox_groups.iter().any(|x| x == g));
        if runs("seq") {
            seq(&t, &a, &mut res);
        }
        if runs("random") {
            random(&t, &a, &mut res);
        }
        if runs("small") {
            small(&t, &a, &mut res);
        }
        if runs("sparse") {
            sparse(&t, &a, &mut res);
        }
        if runs("tar") {
            tar(&t, &a, &mut res);
        }
        if want("dedup") && kind == Kind::Queryfs {
            dedup(&t, &a, &mut res);
        }
        if kind == Kind::Queryfs {
            if let Some(k) = t.peak_rss_kib() {
                record(
                    &mut res,
                    "peak RSS over these workloads (MiB)",
                    t.name,
                    k as f64 / 1024.0,
                );
            }
        }
        t.unmount();
    }
    if want("rss") && a.rss_mib > 0 {
        let _ = fs::remove_dir_all(a.dir.join("store"));
        rss(&a, &mut res);
    }
    if want("query") && a.query_files > 0 {
        query(&a, &mut res);
    }
    if want("exchange") {
        exchange(&a, &mut res);
    }

    println!(
        "| workload | native | passthrough | queryfs | litebox | queryfs / passthrough | queryfs / native | queryfs / litebox |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, by) in &res {
        let g = |t: &str| by.get(t).copied();
        let f = |v: Option<f64>| {
            v.map(|v| match v {
                v if v < 10.0 => format!("{v:.2}"),
                v => format!("{v:.1}"),
            })
            .unwrap_or_else(|| "–".into())
        };
        // For times (s, ms) lower is better: ratios are inverted so that
        // > 1 always means queryfs is faster.
        let lower_better = w.ends_with("(s)") || w.ends_with("(ms)");
        let ratio = |base: Option<f64>| match (g("queryfs"), base) {
            (Some(q), Some(b)) if q > 0.0 && b > 0.0 => {
                format!("{:.2}", if lower_better { b / q } else { q / b })
            }
            _ => "–".into(),
        };
        println!(
            "| {w} | {} | {} | {} | {} | {} | {} | {} |",
            f(g("native")),
            f(g("passthrough")),
            f(g("queryfs")),
            f(g("litebox")),
            ratio(g("passthrough")),
            ratio(g("native")),
            ratio(g("litebox"))
        );
    }
    println!(
        "\nRatios are speed ratios: above 1 means queryfs is faster (for times, base / queryfs). \
         Medians of {} runs.",
        a.runs
    );
}
