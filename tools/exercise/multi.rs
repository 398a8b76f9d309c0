//! Multi-process mode: N workers (this binary re-executed with the hidden
//! `worker` sub-command), each with its own directory `pI/` and its own
//! names `wI_*` in the shared directory `shared/`. Each keeps a model of
//! its own files (every op on them is sequential, so every answer about
//! them is exact) and checks it constantly, while listing and stat'ing the
//! shared directory and the other workers' directories, whose answers may
//! race but must never be errors other than ENOENT.
//!
//! The parent writes every worker's final files (path, size, BLAKE3) to a
//! JSON manifest; `verify` checks a manifest again, e.g. after a remount.

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Opts {
    pub dir: PathBuf,
    pub seed: u64,
    pub ops: Option<u64>,
    pub seconds: Option<u64>,
    pub procs: usize,
    pub manifest: Option<PathBuf>,
    pub log: Option<PathBuf>,
}

const OWN: usize = 12;
const SHARED: usize = 6;
const MAX_LEN: usize = 1 << 20;

fn worker_seed(seed: u64, id: usize) -> u64 {
    seed.wrapping_mul(1000).wrapping_add(id as u64)
}

pub fn run(o: &Opts) -> i32 {
    let shared = o.dir.join("shared");
    if let Err(e) = std::fs::create_dir_all(&shared) {
        eprintln!(
            "qfs-exercise multi: cannot create {}: {e}",
            shared.display()
        );
        return 2;
    }
    for i in 0..o.procs {
        let d = o.dir.join(format!("p{i}"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
    }
    for e in std::fs::read_dir(&shared).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let mut children: Vec<(usize, Child, PathBuf)> = Vec::new();
    for i in 0..o.procs {
        let out = tmp.path().join(format!("w{i}.json"));
        let mut c = Command::new(&exe);
        c.arg("worker")
            .arg("--id")
            .arg(i.to_string())
            .arg("--seed")
            .arg(worker_seed(o.seed, i).to_string())
            .arg("--procs")
            .arg(o.procs.to_string())
            .arg("--out")
            .arg(&out);
        if let Some(s) = o.seconds {
            c.arg("--seconds").arg(s.to_string());
        }
        if let Some(n) = o.ops {
            c.arg("--ops").arg(n.to_string());
        }
        if let Some(l) = &o.log {
            c.arg("--log").arg(format!("{}.w{i}", l.display()));
        }
        c.arg(&o.dir);
        children.push((i, c.spawn().expect("spawning a worker"), out));
    }
    // Watchdog: a worker stuck in the filesystem is a failure too.
    let limit = Duration::from_secs(o.seconds.unwrap_or(600) + 180);
    let mut status: BTreeMap<usize, Option<std::process::ExitStatus>> = BTreeMap::new();
    loop {
        let mut running = 0;
        for (i, c, _) in children.iter_mut() {
            if status.get(i).is_some_and(|s| s.is_some()) {
                continue;
            }
            match c.try_wait().unwrap() {
                Some(st) => {
                    status.insert(*i, Some(st));
                }
                None => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        if start.elapsed() > limit {
            for (i, c, _) in children.iter_mut() {
                if status.get(i).is_none_or(|s| s.is_none()) {
                    eprintln!("qfs-exercise multi: worker {i} (pid {}) still running after {limit:?}: HUNG; killing it", c.id());
                    let _ = c.kill();
                    let _ = c.wait();
                    status.insert(*i, None);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = start.elapsed().as_secs_f64();
    let mut ok = true;
    let mut files = Vec::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_ops = 0;
    for (i, _, out) in &children {
        let st = status.get(i).copied().flatten();
        let rep: Option<Value> = std::fs::read_to_string(out)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let good = st.is_some_and(|s| s.success()) && rep.as_ref().is_some_and(|r| r["ok"] == true);
        if !good {
            ok = false;
            eprintln!(
                "qfs-exercise multi: worker {i} (seed {}) FAILED (exit {:?}): {}",
                worker_seed(o.seed, *i),
                st.map(|s| s.to_string()),
                rep.as_ref()
                    .map(|r| r["error"].to_string())
                    .unwrap_or_else(|| "no report".into())
            );
            if let Some(r) = &rep {
                eprintln!(
                    "---- worker {i}, last {TAIL} ops ----\n{}",
                    r["tail"].as_str().unwrap_or("")
                );
            }
        }
        if let Some(r) = rep {
            total_ops += r["ops"].as_u64().unwrap_or(0);
            if let Some(m) = r["counts"].as_object() {
                for (k, v) in m {
                    *totals.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
            }
            if let Some(fs) = r["files"].as_array() {
                files.extend(fs.iter().cloned());
            }
        }
    }
    let summary: String = totals.iter().map(|(k, v)| format!(" {k}={v}")).collect();
    if let Some(m) = &o.manifest {
        let doc = json!({ "seed": o.seed, "procs": o.procs, "complete": ok, "files": files });
        std::fs::write(m, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
    println!(
        "qfs-exercise multi: {} seed={} procs={} ops={total_ops} in {secs:.1}s, {} files in the manifest:{summary}",
        if ok { "PASS" } else { "FAIL" },
        o.seed,
        o.procs,
        files.len()
    );
    if ok {
        0
    } else {
        1
    }
}

struct W {
    id: usize,
    dir: PathBuf,
    procs: usize,
    rng: StdRng,
    model: BTreeMap<String, Vec<u8>>,
    log: OpLog,
    counts: Counts,
}

fn io(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

impl W {
    fn own_names(&self) -> Vec<String> {
        let mut v: Vec<String> = (0..OWN).map(|k| format!("p{}/f{k}", self.id)).collect();
        v.extend((0..SHARED).map(|k| format!("shared/w{}_{k}", self.id)));
        v
    }

    fn name(&mut self) -> String {
        let n = self.own_names();
        n[self.rng.random_range(0..n.len())].clone()
    }

    fn existing(&mut self) -> Option<String> {
        if self.model.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.model.len());
        self.model.keys().nth(i).cloned()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        if self.rng.random_bool(0.8) {
            self.rng.fill(&mut v[..]);
        }
        v
    }

    fn check_file(&mut self, rel: &str) -> R<()> {
        let want = self.model.get(rel).cloned();
        match (std::fs::read(self.p(rel)), want) {
            (Ok(got), Some(want)) => {
                let md = std::fs::metadata(self.p(rel)).map_err(|e| format!("stat {rel}: {e}"))?;
                if md.len() != want.len() as u64 {
                    return Err(format!(
                        "stat {rel}: size {} but the model says {}",
                        md.len(),
                        want.len()
                    ));
                }
                if got != want {
                    let d = first_diff(&got, &want).unwrap();
                    return Err(format!(
                        "read {rel}: {} bytes, model {}; first difference at {d}",
                        got.len(),
                        want.len()
                    ));
                }
                Ok(())
            }
            (Err(e), Some(want)) => Err(format!(
                "read {rel} ({} bytes in the model): {e}",
                want.len()
            )),
            (Ok(got), None) => Err(format!(
                "read {rel}: exists with {} bytes, but the model says it was removed",
                got.len()
            )),
            (Err(e), None) if io(e_ref(&e)) == libc::ENOENT => Ok(()),
            (Err(e), None) => Err(format!(
                "read {rel} (absent in the model): expected ENOENT, got {e}"
            )),
        }
    }

    /// Lists a directory and stats every entry: returns the names, fails on
    /// errors other than ENOENT of entries that are not ours.
    fn list(&mut self, rel: &str) -> R<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        let rd = std::fs::read_dir(self.p(rel)).map_err(|e| format!("readdir {rel}: {e}"))?;
        for e in rd {
            let e = e.map_err(|e| format!("readdir {rel}: {e}"))?;
            let name = String::from_utf8_lossy(e.file_name().as_bytes()).to_string();
            let full = format!("{rel}/{name}");
            let own = self.model.contains_key(&full) || self.own_names().contains(&full);
            match std::fs::symlink_metadata(e.path()) {
                Ok(md) => {
                    if let Some(want) = self.model.get(&full) {
                        if md.len() != want.len() as u64 {
                            return Err(format!(
                                "stat of {full} (listed by readdir of {rel}): size {}, model {}",
                                md.len(),
                                want.len()
                            ));
                        }
                    }
                }
                Err(err) if io(e_ref(&err)) == libc::ENOENT && !own => {}
                Err(err) => {
                    return Err(format!(
                        "stat of {full} (listed by readdir of {rel}): {err}"
                    ))
                }
            }
            names.insert(name);
        }
        Ok(names)
    }

    /// My entries in `shared/` are exactly the model's.
    fn check_shared(&mut self) -> R<()> {
        let names = self.list("shared")?;
        let prefix = format!("w{}_", self.id);
        let mine: BTreeSet<String> = names
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let want: BTreeSet<String> = self
            .model
            .keys()
            .filter_map(|k| k.strip_prefix("shared/"))
            .map(|s| s.to_string())
            .collect();
        if mine != want {
            return Err(format!(
                "readdir shared: my entries are {mine:?}, the model says {want:?}"
            ));
        }
        Ok(())
    }

    /// My directory holds exactly the model's files.
    fn check_own_dir(&mut self) -> R<()> {
        let rel = format!("p{}", self.id);
        let names = self.list(&rel)?;
        let want: BTreeSet<String> = self
            .model
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{rel}/")))
            .map(|s| s.to_string())
            .collect();
        if names != want {
            return Err(format!("readdir {rel}: {names:?}, the model says {want:?}"));
        }
        Ok(())
    }

    fn step(&mut self) -> R<()> {
        match self.rng.random_range(0..100) {
            0..14 => {
                let rel = self.name();
                let n = self.rng.random_range(0..256 << 10);
                let data = self.bytes(n);
                let pieces = self.rng.random_range(1..=3);
                let sync = self.rng.random_bool(0.1);
                self.log.op(format!(
                    "create/trunc {rel} {n} bytes in {pieces} writes fsync={sync}"
                ));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(self.p(&rel))
                    .map_err(|e| format!("create {rel}: {e}"))?;
                let step = n.div_ceil(pieces).max(1);
                for c in data.chunks(step) {
                    f.write_all(c).map_err(|e| format!("write {rel}: {e}"))?;
                }
                if sync {
                    f.sync_all().map_err(|e| format!("fsync {rel}: {e}"))?;
                }
                drop(f);
                self.model.insert(rel, data);
                self.counts.done("create");
            }
            14..26 => {
                let rel = if self.rng.random_bool(0.85) {
                    self.existing()
                } else {
                    None
                }
                .unwrap_or_else(|| self.name());
                let n = self.rng.random_range(1..16 << 10);
                let data = self.bytes(n);
                self.log.op(format!("append {rel} {n} bytes"));
                let r = std::fs::OpenOptions::new().append(true).open(self.p(&rel));
                match (r, self.model.contains_key(&rel)) {
                    (Ok(mut f), true) => {
                        f.write_all(&data)
                            .map_err(|e| format!("append {rel}: {e}"))?;
                        drop(f);
                        let m = self.model.get_mut(&rel).unwrap();
                        m.extend_from_slice(&data);
                        if m.len() > MAX_LEN {
                            // Keep files bounded: cut it back.
                            let n = self.rng.random_range(0..MAX_LEN / 2);
                            self.log.op(format!("truncate {rel} {n} (bound)"));
                            std::fs::OpenOptions::new()
                                .write(true)
                                .open(self.p(&rel))
                                .and_then(|f| f.set_len(n as u64))
                                .map_err(|e| format!("truncate {rel}: {e}"))?;
                            self.model.get_mut(&rel).unwrap().truncate(n);
                        }
                    }
                    (Err(e), false) if io(e_ref(&e)) == libc::ENOENT => {}
                    (Ok(_), false) => {
                        return Err(format!(
                            "open {rel} O_APPEND: opened, but the model says it does not exist"
                        ))
                    }
                    (Err(e), _) => return Err(format!("open {rel} O_APPEND: {e}")),
                }
                self.counts.done("append");
            }
            26..33 => {
                let Some(rel) = self.existing() else {
                    return Ok(());
                };
                let len = self.model[&rel].len();
                let off = self.rng.random_range(0..=len + 4096);
                let n = self.rng.random_range(1..64 << 10);
                let data = self.bytes(n);
                self.log
                    .op(format!("pwrite {rel} off={off} {n} bytes (size {len})"));
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.p(&rel))
                    .map_err(|e| format!("open {rel}: {e}"))?;
                use std::os::unix::fs::FileExt;
                f.write_all_at(&data, off as u64)
                    .map_err(|e| format!("pwrite {rel}: {e}"))?;
                drop(f);
                let m = self.model.get_mut(&rel).unwrap();
                if m.len() < off + n {
                    m.resize(off + n, 0);
                }
                m[off..off + n].copy_from_slice(&data);
                self.counts.done("pwrite");
            }
            33..37 => {
                let Some(rel) = self.existing() else {
                    return Ok(());
                };
                let len = self.model[&rel].len();
                let n = self.rng.random_range(0..=len + 70000);
                self.log.op(format!("truncate {rel} {n} (size {len})"));
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(0)
                    .open(self.p(&rel))
                    .and_then(|f| f.set_len(n as u64))
                    .map_err(|e| format!("truncate {rel}: {e}"))?;
                self.model.get_mut(&rel).unwrap().resize(n, 0);
                self.counts.done("truncate");
            }
            37..47 => {
                let Some(from) = self.existing() else {
                    return Ok(());
                };
                let to = self.name();
                self.log.op(format!(
                    "rename {from} -> {to}{}",
                    if self.model.contains_key(&to) {
                        " (replacing)"
                    } else {
                        ""
                    }
                ));
                std::fs::rename(self.p(&from), self.p(&to))
                    .map_err(|e| format!("rename {from} {to}: {e}"))?;
                if from != to {
                    let d = self.model.remove(&from).unwrap();
                    self.model.insert(to.clone(), d);
                }
                self.check_file(&from)?;
                self.check_file(&to)?;
                self.counts.done("rename");
            }
            47..53 => {
                let Some(rel) = self.existing() else {
                    return Ok(());
                };
                self.log.op(format!("unlink {rel}"));
                std::fs::remove_file(self.p(&rel)).map_err(|e| format!("unlink {rel}: {e}"))?;
                self.model.remove(&rel);
                self.check_file(&rel)?;
                self.counts.done("unlink");
            }
            53..56 => {
                let Some(rel) = self.existing() else {
                    return Ok(());
                };
                self.log.op(format!("fsync {rel}"));
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.p(&rel))
                    .and_then(|f| f.sync_all())
                    .map_err(|e| format!("fsync {rel}: {e}"))?;
                self.counts.done("fsync");
            }
            56..70 => {
                let rel = if self.rng.random_bool(0.8) {
                    self.existing()
                } else {
                    None
                }
                .unwrap_or_else(|| self.name());
                self.log.op(format!(
                    "read back {rel} ({:?} bytes in the model)",
                    self.model.get(&rel).map(|v| v.len())
                ));
                self.check_file(&rel)?;
                self.counts.done("readback");
            }
            70..80 => {
                self.log.op("readdir+stat shared".into());
                self.check_shared()?;
                self.counts.done("readdir_shared");
            }
            80..86 => {
                self.log.op(format!("readdir+stat p{} (own)", self.id));
                self.check_own_dir()?;
                self.counts.done("readdir_own");
            }
            _ => {
                let other = self.rng.random_range(0..self.procs);
                let rel = format!("p{other}");
                self.log.op(format!("readdir+stat {rel}"));
                self.list(&rel)?;
                self.counts.done("readdir_other");
            }
        }
        Ok(())
    }
}

fn e_ref(e: &std::io::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(-1))
}

#[allow(clippy::too_many_arguments)]
pub fn worker(
    id: usize,
    seed: u64,
    seconds: Option<u64>,
    ops: Option<u64>,
    procs: usize,
    dir: &Path,
    out: &Path,
    log: Option<&Path>,
) -> i32 {
    let header = json!({"mode": "worker", "id": id, "seed": seed}).to_string();
    let mut w = W {
        id,
        dir: dir.to_path_buf(),
        procs,
        rng: StdRng::seed_from_u64(seed),
        model: BTreeMap::new(),
        log: OpLog::new(log, &header),
        counts: Counts::default(),
    };
    let start = Instant::now();
    let mut result = Ok(());
    loop {
        if ops.is_some_and(|n| w.log.n >= n)
            || seconds.is_some_and(|s| start.elapsed().as_secs() >= s)
        {
            break;
        }
        result = w.step();
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        w.log.note("         final check of every own file".into());
        let names = w.own_names();
        result = names
            .iter()
            .try_for_each(|n| w.check_file(n))
            .and_then(|_| w.check_own_dir())
            .and_then(|_| w.check_shared());
    }
    let files: Vec<Value> = w
        .model
        .iter()
        .map(|(k, v)| json!({"path": k, "size": v.len(), "blake3": blake3::hash(v).to_hex().to_string()}))
        .collect();
    let counts: BTreeMap<&str, u64> = w.counts.done.clone();
    let ops_done = w.log.n;
    let rep = json!({
        "id": id, "seed": seed, "ok": result.is_ok(), "ops": ops_done,
        "error": result.as_ref().err(), "tail": if result.is_err() { w.log.tail() } else { String::new() },
        "counts": counts, "files": files,
    });
    w.log.finish(&match &result {
        Ok(()) => format!("end ops={ops_done}"),
        Err(_) => format!("fail op={ops_done}"),
    });
    std::fs::write(out, rep.to_string()).unwrap();
    if let Err(e) = &result {
        eprintln!("qfs-exercise worker {id}: FAIL seed={seed} at op {ops_done}: {e}");
        1
    } else {
        0
    }
}

pub fn verify(dir: &Path, manifest: &Path) -> i32 {
    let text = match std::fs::read_to_string(manifest) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("qfs-exercise verify: reading {}: {e}", manifest.display());
            return 2;
        }
    };
    let doc: Value = serde_json::from_str(&text).unwrap();
    let procs = doc["procs"].as_u64().unwrap_or(0) as usize;
    let mut bad = 0;
    let mut want: BTreeSet<String> = BTreeSet::new();
    let files = doc["files"].as_array().cloned().unwrap_or_default();
    for f in &files {
        let rel = f["path"].as_str().unwrap();
        want.insert(rel.to_string());
        match std::fs::read(dir.join(rel)) {
            Ok(d) => {
                let h = blake3::hash(&d).to_hex().to_string();
                if d.len() as u64 != f["size"].as_u64().unwrap()
                    || h != f["blake3"].as_str().unwrap()
                {
                    eprintln!(
                        "verify: {rel}: {} bytes hash {h}, manifest {} bytes hash {}",
                        d.len(),
                        f["size"],
                        f["blake3"]
                    );
                    bad += 1;
                }
            }
            Err(e) => {
                eprintln!("verify: {rel}: {e}");
                bad += 1;
            }
        }
    }
    // Nothing else of the workers' may exist.
    let mut have = BTreeSet::new();
    for i in 0..procs {
        if let Ok(rd) = std::fs::read_dir(dir.join(format!("p{i}"))) {
            for e in rd.flatten() {
                have.insert(format!("p{i}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("shared")) {
        for e in rd.flatten() {
            have.insert(format!("shared/{}", e.file_name().to_string_lossy()));
        }
    }
    for x in have.difference(&want) {
        eprintln!("verify: {x} exists but is not in the manifest");
        bad += 1;
    }
    for x in want.difference(&have) {
        eprintln!("verify: {x} is in the manifest but not listed");
        bad += 1;
    }
    if bad == 0 {
        println!("qfs-exercise verify: PASS {} files", files.len());
        0
    } else {
        println!(
            "qfs-exercise verify: FAIL {bad} problems in {} files",
            files.len()
        );
        1
    }
}
