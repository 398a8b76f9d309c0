//! Data mode: seeded random operations on a few files, every result checked
//! against an in-memory sparse model (a map of 4 KiB pages; absent pages
//! are zeros, so sizes up to ~64 GiB cost only what was written).
//!
//! The op sequence depends only on the seed and the model (never on what
//! the filesystem answered), so the same seed and op count replay it.

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PG: u64 = 4096;
const CHUNK: u64 = 64 << 10;
const GIB: u64 = 1 << 30;
/// Model pages per file before the exerciser truncates it down (bounds
/// memory and the store).
const MAX_PAGES: usize = (96 << 20) / PG as usize;

pub struct Opts {
    pub dir: PathBuf,
    pub seed: u64,
    pub ops: Option<u64>,
    pub seconds: Option<u64>,
    pub files: usize,
    pub allow_unsupported: bool,
    pub log: Option<PathBuf>,
    pub drop_every: u64,
    pub timing: bool,
}

#[derive(Default, Clone)]
pub struct Model {
    pub size: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Model {
    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut pos = off;
        let mut src = data;
        while !src.is_empty() {
            let pn = pos / PG;
            let po = (pos % PG) as usize;
            let n = (PG as usize - po).min(src.len());
            let page = self
                .pages
                .entry(pn)
                .or_insert_with(|| vec![0u8; PG as usize].into_boxed_slice());
            page[po..po + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            pos += n as u64;
        }
        self.size = self.size.max(off + data.len() as u64);
    }

    /// Bytes [off, off+len) clipped to the size.
    pub fn read(&self, off: u64, len: u64) -> Vec<u8> {
        let end = (off + len).min(self.size);
        if off >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - off) as usize];
        for (&pn, page) in self.pages.range(off / PG..=(end - 1) / PG) {
            let ps = pn * PG;
            let a = ps.max(off);
            let b = (ps + PG).min(end);
            out[(a - off) as usize..(b - off) as usize]
                .copy_from_slice(&page[(a - ps) as usize..(b - ps) as usize]);
        }
        out
    }

    /// Zeros [off, end) without changing the size.
    pub fn zero(&mut self, off: u64, end: u64) {
        if off >= end {
            return;
        }
        let keys: Vec<u64> = self
            .pages
            .range(off / PG..=(end - 1) / PG)
            .map(|(k, _)| *k)
            .collect();
        for pn in keys {
            let ps = pn * PG;
            let a = ps.max(off);
            let b = (ps + PG).min(end);
            if a == ps && b == ps + PG {
                self.pages.remove(&pn);
            } else {
                let page = self.pages.get_mut(&pn).unwrap();
                page[(a - ps) as usize..(b - ps) as usize].fill(0);
            }
        }
    }

    pub fn truncate(&mut self, n: u64) {
        if n < self.size {
            let end = self.size.div_ceil(PG) * PG;
            self.zero(n, end);
        }
        self.size = n;
    }

    /// The first non-zero byte in [off, end), if any.
    pub fn first_nonzero(&self, off: u64, end: u64) -> Option<u64> {
        if off >= end {
            return None;
        }
        for (&pn, page) in self.pages.range(off / PG..=(end - 1) / PG) {
            let ps = pn * PG;
            let a = ps.max(off);
            let b = (ps + PG).min(end);
            if let Some(i) = page[(a - ps) as usize..(b - ps) as usize]
                .iter()
                .position(|&c| c != 0)
            {
                return Some(a + i as u64);
            }
        }
        None
    }

    pub fn pages(&self) -> usize {
        self.pages.len()
    }
}

struct File {
    path: PathBuf,
    fd: i32,
    dfd: Option<i32>,
    m: Model,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Pwrite,
    Pread,
    ReadAll,
    DirectRead,
    DirectWrite,
    MmapRead,
    MmapWrite,
    TruncDown,
    TruncUp,
    Falloc(i32),
    CopyRange,
    SeekData,
    SeekHole,
    Fstat,
    Fsync,
    Reopen,
}

const FL_KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
const FL_PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const FL_ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
const FL_COLLAPSE: i32 = libc::FALLOC_FL_COLLAPSE_RANGE;
const FL_INSERT: i32 = libc::FALLOC_FL_INSERT_RANGE;

// Weights in tenths of a percent. fsync, msync(MS_SYNC) and reopen (close
// commits the file) cost tens of milliseconds each: they are rarer.
const TABLE: &[(Kind, u32)] = &[
    (Kind::Pwrite, 230),
    (Kind::Pread, 220),
    (Kind::ReadAll, 10),
    (Kind::DirectRead, 40),
    (Kind::DirectWrite, 40),
    (Kind::MmapRead, 40),
    (Kind::MmapWrite, 25),
    (Kind::TruncDown, 30),
    (Kind::TruncUp, 30),
    (Kind::Falloc(0), 20),
    (Kind::Falloc(FL_KEEP), 10),
    (Kind::Falloc(FL_PUNCH | FL_KEEP), 30),
    (Kind::Falloc(FL_ZERO), 20),
    (Kind::Falloc(FL_ZERO | FL_KEEP), 20),
    (Kind::Falloc(FL_COLLAPSE), 5),
    (Kind::Falloc(FL_INSERT), 5),
    (Kind::CopyRange, 60),
    (Kind::SeekData, 30),
    (Kind::SeekHole, 30),
    (Kind::Fstat, 50),
    (Kind::Fsync, 4),
    (Kind::Reopen, 12),
];

fn falloc_name(mode: i32) -> &'static str {
    match mode {
        0 => "falloc",
        FL_KEEP => "falloc_keep",
        m if m == FL_PUNCH | FL_KEEP => "punch",
        FL_ZERO => "zero_range",
        m if m == FL_ZERO | FL_KEEP => "zero_range_keep",
        FL_COLLAPSE => "collapse",
        FL_INSERT => "insert",
        _ => "falloc_other",
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Pwrite => "pwrite",
        Kind::Pread => "pread",
        Kind::ReadAll => "readall",
        Kind::DirectRead => "odirect_read",
        Kind::DirectWrite => "odirect_write",
        Kind::MmapRead => "mmap_read",
        Kind::MmapWrite => "mmap_write",
        Kind::TruncDown => "trunc_down",
        Kind::TruncUp => "trunc_up",
        Kind::Falloc(m) => falloc_name(m),
        Kind::CopyRange => "copy_range",
        Kind::SeekData => "seek_data",
        Kind::SeekHole => "seek_hole",
        Kind::Fstat => "fstat",
        Kind::Fsync => "fsync",
        Kind::Reopen => "reopen",
    }
}

/// An offset: mostly near the start or the end, sometimes at chunk
/// boundaries, sometimes far out (up to 64 GiB).
fn pick_off(rng: &mut StdRng, size: u64) -> u64 {
    match rng.random_range(0..100) {
        0..50 => rng.random_range(0..4 << 20),
        50..68 => {
            let lo = size.saturating_sub(128 << 10);
            rng.random_range(lo..size + (128 << 10))
        }
        68..82 => rng.random_range(0..64 << 20),
        82..92 => {
            let k = rng.random_range(0..64u64);
            let d: i64 = rng.random_range(-2..=2);
            (k * CHUNK).saturating_add_signed(d)
        }
        _ => {
            let bases = [GIB, 4 * GIB - 1, 16 * GIB + 12345, 64 * GIB - (2 << 20)];
            bases[rng.random_range(0..bases.len())] + rng.random_range(0..1 << 20)
        }
    }
}

fn pick_len(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..100) {
        0..45 => rng.random_range(1..=512),
        45..80 => rng.random_range(1..=64 << 10),
        80..95 => {
            let d: i64 = rng.random_range(-3..=3);
            ((CHUNK * rng.random_range(1..4)) as i64 + d) as u64
        }
        _ => rng.random_range(1..=3 << 19),
    }
}

/// The bytes of a write: random, zeros, or a repeated block (dedup).
fn fill(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    match rng.random_range(0..10) {
        0 => {}
        1 | 2 => {
            let mut blk = StdRng::seed_from_u64(rng.random_range(0..4));
            let mut b = vec![0u8; CHUNK as usize];
            blk.fill(&mut b[..]);
            for (i, c) in v.iter_mut().enumerate() {
                *c = b[i % b.len()];
            }
        }
        _ => rng.fill(&mut v[..]),
    }
    v
}

fn open_rw(p: &Path, extra: i32) -> Result<i32, i32> {
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            cpath(p).as_ptr(),
            libc::O_RDWR | libc::O_CREAT | extra,
            0o644,
        )
    };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

struct Run {
    rng: StdRng,
    files: Vec<File>,
    log: OpLog,
    counts: Counts,
    allow_unsupported: bool,
    direct_refused: Option<i32>,
    notes: Vec<String>,
}

pub fn run(o: &Opts) -> i32 {
    install_sigbus();
    std::fs::create_dir_all(&o.dir).unwrap();
    let header = serde_json::json!({
        "mode": "data", "seed": o.seed, "ops": o.ops, "seconds": o.seconds,
        "files": o.files, "allow_unsupported": o.allow_unsupported, "drop_every": o.drop_every,
    })
    .to_string();
    let mut files = Vec::new();
    for i in 0..o.files {
        let path = o.dir.join(format!("f{i}"));
        let _ = std::fs::remove_file(&path);
        let fd = open_rw(&path, libc::O_EXCL).unwrap_or_else(|e| {
            eprintln!("cannot create {}: {}", path.display(), ename(e));
            std::process::exit(2)
        });
        files.push(File {
            path,
            fd,
            dfd: None,
            m: Model::default(),
        });
    }
    let mut r = Run {
        rng: StdRng::seed_from_u64(o.seed),
        files,
        log: OpLog::new(o.log.as_deref(), &header),
        counts: Counts::default(),
        allow_unsupported: o.allow_unsupported,
        direct_refused: None,
        notes: Vec::new(),
    };
    *CONTEXT.lock().unwrap() = format!("data mode, seed {}", o.seed);
    let start = std::time::Instant::now();
    let mut result = Ok(());
    let mut times: BTreeMap<&'static str, f64> = BTreeMap::new();
    loop {
        if let Some(n) = o.ops {
            if r.log.n >= n {
                break;
            }
        }
        if let Some(s) = o.seconds {
            if start.elapsed().as_secs() >= s {
                break;
            }
        }
        if o.drop_every > 0 && r.log.n > 0 && r.log.n % o.drop_every == 0 {
            drop_caches(&mut r);
        }
        let t = std::time::Instant::now();
        let before = r.counts.done.clone();
        result = r.step();
        let dt = t.elapsed().as_secs_f64();
        // Time by kind: the kind whose count moved (or "other").
        let k = r
            .counts
            .done
            .iter()
            .find(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| *k)
            .unwrap_or("other");
        *times.entry(k).or_default() += dt;
        if result.is_err() {
            break;
        }
        *CONTEXT.lock().unwrap() = format!("data mode, seed {}, op {}", o.seed, r.log.n);
    }
    // A last full check of every file.
    if result.is_ok() {
        for i in 0..r.files.len() {
            r.log.note(format!(
                "         final check f{i} size {}",
                r.files[i].m.size
            ));
            result = r.final_check(i);
            if result.is_err() {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for f in &r.files {
        // SAFETY: our fds.
        unsafe {
            libc::close(f.fd);
            if let Some(d) = f.dfd {
                libc::close(d);
            }
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if o.timing {
        let mut v: Vec<_> = times.iter().collect();
        v.sort_by(|a, b| b.1.partial_cmp(a.1).unwrap());
        println!(
            "time by kind: {}",
            v.iter()
                .map(|(k, t)| format!("{k}={t:.1}s"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let ops = r.log.n;
    match result {
        Ok(()) => {
            r.log.finish(&format!("end ops={ops}"));
            println!(
                "qfs-exercise data: PASS seed={} ops={ops} in {secs:.1}s:{}",
                o.seed,
                r.counts.summary()
            );
            0
        }
        Err(msg) => {
            r.log.finish(&format!("fail op={ops}"));
            eprintln!("---- last {TAIL} ops ----\n{}", r.log.tail());
            eprintln!(
                "qfs-exercise data: FAIL seed={} at op {ops}: {msg}\nreplay: qfs-exercise data --seed {} --ops {ops} --files {}{} DIR",
                o.seed,
                o.seed,
                o.files,
                if o.allow_unsupported { " --allow-unsupported" } else { "" }
            );
            println!(
                "qfs-exercise data: FAIL seed={} ops={ops} in {secs:.1}s:{}",
                o.seed,
                r.counts.summary()
            );
            1
        }
    }
}

fn drop_caches(r: &mut Run) {
    r.log.note("         drop_caches".into());
    match std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
        Ok(()) => r.counts.done("drop_caches"),
        Err(e) => {
            if !r.notes.iter().any(|n| n.starts_with("drop_caches")) {
                r.notes
                    .push(format!("drop_caches unavailable ({e}); skipped"));
            }
        }
    }
}

impl Run {
    /// An unsupported answer: counted with --allow-unsupported, else a failure.
    fn unsupported(&mut self, k: &'static str, e: i32) -> R<()> {
        if self.allow_unsupported {
            self.counts.unsupported(k, e);
            Ok(())
        } else {
            Err(format!(
                "{k} answered {} (unsupported; --allow-unsupported counts these instead)",
                ename(e)
            ))
        }
    }

    fn step(&mut self) -> R<()> {
        let nf = self.files.len();
        let fi = self.rng.random_range(0..nf);
        // Bound memory and the store: a file with too many pages is cut.
        if self.files[fi].m.pages() > MAX_PAGES {
            let n = self.rng.random_range(0..8 << 20);
            self.log.op(format!(
                "ftruncate f{fi} {n} (model over {MAX_PAGES} pages)"
            ));
            return self.truncate(fi, n, "trunc_down");
        }
        let k = pick(&mut self.rng, TABLE);
        let size = self.files[fi].m.size;
        match k {
            Kind::Pwrite => {
                let off = pick_off(&mut self.rng, size);
                let len = pick_len(&mut self.rng);
                let data = fill(&mut self.rng, len as usize);
                self.log.op(format!("pwrite f{fi} off={off} len={len}"));
                let f = &mut self.files[fi];
                // SAFETY: valid buffer.
                let n = unsafe { libc::pwrite(f.fd, data.as_ptr().cast(), data.len(), off as i64) };
                if n < 0 {
                    return Err(format!("pwrite: {}", ename(errno())));
                }
                if n as u64 != len {
                    return Err(format!("pwrite wrote {n} of {len}"));
                }
                f.m.write(off, &data);
                self.counts.done("pwrite");
                Ok(())
            }
            Kind::Pread => {
                let off = if self.rng.random_bool(0.8) && size > 0 {
                    self.rng.random_range(0..size)
                } else {
                    pick_off(&mut self.rng, size)
                };
                let len = pick_len(&mut self.rng);
                self.log
                    .op(format!("pread f{fi} off={off} len={len} (size {size})"));
                self.check_read(fi, off, len, "pread")?;
                self.counts.done("pread");
                Ok(())
            }
            Kind::ReadAll => {
                self.log
                    .op(format!("read whole f{fi} buffered (size {size})"));
                self.read_all(fi)?;
                self.counts.done("readall");
                Ok(())
            }
            Kind::DirectRead | Kind::DirectWrite => {
                let off = pick_off(&mut self.rng, size) / PG * PG;
                let len = if self.rng.random_bool(0.1) {
                    self.rng.random_range(1..=256u64)
                } else {
                    self.rng.random_range(1..=32u64)
                } * PG;
                let data = if k == Kind::DirectWrite {
                    fill(&mut self.rng, len as usize)
                } else {
                    Vec::new()
                };
                self.direct(k, fi, off, len, data)
            }
            Kind::MmapRead | Kind::MmapWrite => {
                if size == 0 {
                    return self.step_nop();
                }
                let off = self.rng.random_range(0..size) / PG * PG;
                let len = self.rng.random_range(1..=(512u64 << 10)).min(size - off);
                let (woff, wlen) = {
                    let a = self.rng.random_range(0..len);
                    let b = self.rng.random_range(1..=(len - a).min(256 << 10));
                    (a, b)
                };
                let data = if k == Kind::MmapWrite {
                    fill(&mut self.rng, wlen as usize)
                } else {
                    Vec::new()
                };
                let sync = self.rng.random_bool(0.1);
                self.mmap(k, fi, off, len, woff, data, sync)
            }
            Kind::TruncDown => {
                let n = match self.rng.random_range(0..4) {
                    0 => 0,
                    1 => (self.rng.random_range(0..=size / CHUNK) * CHUNK)
                        .saturating_add_signed(self.rng.random_range(-1..=1))
                        .min(size),
                    _ => self.rng.random_range(0..=size),
                };
                self.log
                    .op(format!("ftruncate f{fi} {n} (down from {size})"));
                self.truncate(fi, n, "trunc_down")
            }
            Kind::TruncUp => {
                let n = if self.rng.random_bool(0.1) {
                    pick_off(&mut self.rng, size).max(size)
                } else {
                    size + self.rng.random_range(0..=2 << 20)
                };
                self.log.op(format!("ftruncate f{fi} {n} (up from {size})"));
                self.truncate(fi, n, "trunc_up")
            }
            Kind::Falloc(mode) => {
                let off = pick_off(&mut self.rng, size);
                let len = if self.rng.random_bool(0.3) {
                    self.rng.random_range(1..=4u64) * CHUNK
                } else {
                    pick_len(&mut self.rng) * self.rng.random_range(1..=3)
                };
                self.falloc(fi, mode, off, len)
            }
            Kind::CopyRange => {
                let fj = self.rng.random_range(0..nf);
                let ssize = self.files[fi].m.size;
                let off_in = if ssize > 0 && self.rng.random_bool(0.9) {
                    self.rng.random_range(0..ssize)
                } else {
                    ssize + self.rng.random_range(0..1000)
                };
                let len = pick_len(&mut self.rng) * self.rng.random_range(1..=2);
                let mut off_out = pick_off(&mut self.rng, self.files[fj].m.size);
                if fi == fj && off_out < off_in + len && off_in < off_out + len {
                    off_out = off_in + len + self.rng.random_range(0..CHUNK);
                }
                self.copy_range(fi, fj, off_in, off_out, len)
            }
            Kind::SeekData | Kind::SeekHole => {
                let off = if size > 0 && self.rng.random_bool(0.85) {
                    self.rng.random_range(0..size)
                } else {
                    size + self.rng.random_range(0..2 * CHUNK)
                };
                self.seek(k, fi, off)
            }
            Kind::Fstat => {
                self.log.op(format!("fstat f{fi} (model size {size})"));
                self.check_size(fi)?;
                self.counts.done("fstat");
                Ok(())
            }
            Kind::Fsync => {
                self.log.op(format!("fsync f{fi}"));
                // SAFETY: our fd.
                if unsafe { libc::fsync(self.files[fi].fd) } != 0 {
                    return Err(format!("fsync: {}", ename(errno())));
                }
                self.counts.done("fsync");
                Ok(())
            }
            Kind::Reopen => {
                self.log
                    .op(format!("fadvise DONTNEED, close, reopen f{fi}"));
                self.reopen(fi)?;
                self.counts.done("reopen");
                Ok(())
            }
        }
    }

    fn step_nop(&mut self) -> R<()> {
        let fi = 0;
        self.log.op(format!(
            "fstat f{fi} (model size {})",
            self.files[fi].m.size
        ));
        self.check_size(fi)?;
        self.counts.done("fstat");
        Ok(())
    }

    fn check_size(&mut self, fi: usize) -> R<()> {
        let f = &self.files[fi];
        // SAFETY: a plain C struct, filled by fstat below.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: our fd and a valid out-pointer.
        if unsafe { libc::fstat(f.fd, &mut st) } != 0 {
            return Err(format!("fstat: {}", ename(errno())));
        }
        if st.st_size as u64 != f.m.size {
            return Err(format!(
                "fstat f{fi}: st_size {} but the model says {}",
                st.st_size, f.m.size
            ));
        }
        Ok(())
    }

    fn compare(&self, fi: usize, off: u64, got: &[u8], want: &[u8], how: &str) -> R<()> {
        if got == want {
            return Ok(());
        }
        let d = first_diff(got, want).unwrap();
        let show = |v: &[u8]| {
            v.iter()
                .skip(d)
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Err(format!(
            "{how} f{fi} at {off}: got {} bytes, expected {}; first difference at file offset {} (+{d}): got [{}] expected [{}]",
            got.len(),
            want.len(),
            off + d as u64,
            show(got),
            show(want)
        ))
    }

    fn check_read(&mut self, fi: usize, off: u64, len: u64, how: &str) -> R<()> {
        let f = &self.files[fi];
        let want = f.m.read(off, len);
        let mut got = vec![0u8; len as usize];
        let mut n = 0usize;
        while n < got.len() {
            // SAFETY: valid buffer.
            let r = unsafe {
                libc::pread(
                    f.fd,
                    got[n..].as_mut_ptr().cast(),
                    got.len() - n,
                    (off + n as u64) as i64,
                )
            };
            if r < 0 {
                return Err(format!(
                    "{how} f{fi} off={} : {}",
                    off + n as u64,
                    ename(errno())
                ));
            }
            if r == 0 {
                break;
            }
            n += r as usize;
        }
        got.truncate(n);
        self.compare(fi, off, &got, &want, how)
    }

    fn read_all(&mut self, fi: usize) -> R<()> {
        let f = &self.files[fi];
        let limit = f.m.size.min(2 << 20);
        // SAFETY: our fd.
        if unsafe { libc::lseek(f.fd, 0, libc::SEEK_SET) } != 0 {
            return Err(format!("lseek 0: {}", ename(errno())));
        }
        let mut got = Vec::with_capacity(limit as usize);
        let mut buf = vec![0u8; 128 << 10];
        while (got.len() as u64) < limit || f.m.size <= 2 << 20 {
            // SAFETY: valid buffer.
            let r = unsafe { libc::read(f.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                return Err(format!("read f{fi} at {}: {}", got.len(), ename(errno())));
            }
            if r == 0 {
                break;
            }
            got.extend_from_slice(&buf[..r as usize]);
        }
        got.truncate(limit as usize);
        let want = f.m.read(0, limit);
        self.compare(fi, 0, &got, &want, "buffered read of the whole file")
    }

    fn final_check(&mut self, fi: usize) -> R<()> {
        self.check_size(fi)?;
        self.reopen(fi)?;
        // Every page the model holds, and the start of the file.
        let keys: Vec<u64> = self.files[fi].m.pages.keys().copied().collect();
        let mut i = 0;
        while i < keys.len() {
            let mut j = i + 1;
            while j < keys.len() && keys[j] == keys[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            let off = keys[i] * PG;
            let len = (j - i) as u64 * PG;
            self.check_read(fi, off, len, "final read")?;
            i = j;
        }
        self.read_all(fi)
    }

    fn truncate(&mut self, fi: usize, n: u64, k: &'static str) -> R<()> {
        let f = &mut self.files[fi];
        // SAFETY: our fd.
        if unsafe { libc::ftruncate(f.fd, n as i64) } != 0 {
            return Err(format!("ftruncate {n}: {}", ename(errno())));
        }
        f.m.truncate(n);
        self.counts.done(k);
        self.check_size(fi)
    }

    fn reopen(&mut self, fi: usize) -> R<()> {
        let f = &mut self.files[fi];
        // SAFETY: our fds.
        unsafe {
            libc::posix_fadvise(f.fd, 0, 0, libc::POSIX_FADV_DONTNEED);
            if libc::close(f.fd) != 0 {
                return Err(format!("close: {}", ename(errno())));
            }
            if let Some(d) = f.dfd.take() {
                libc::close(d);
            }
        }
        f.fd = open_rw(&f.path, 0).map_err(|e| format!("reopen: {}", ename(e)))?;
        self.check_size(fi)
    }

    fn direct(&mut self, k: Kind, fi: usize, off: u64, len: u64, data: Vec<u8>) -> R<()> {
        let kn = kind_name(k);
        let size = self.files[fi].m.size;
        self.log
            .op(format!("{kn} f{fi} off={off} len={len} (size {size})"));
        if let Some(e) = self.direct_refused {
            self.counts.unsupported(kn, e);
            return Ok(());
        }
        if self.files[fi].dfd.is_none() {
            match open_rw(&self.files[fi].path, libc::O_DIRECT) {
                Ok(d) => self.files[fi].dfd = Some(d),
                Err(libc::EINVAL) => {
                    self.direct_refused = Some(libc::EINVAL);
                    self.notes.push(
                        "the mount refuses O_DIRECT opens (EINVAL): O_DIRECT ops skipped".into(),
                    );
                    self.counts.unsupported(kn, libc::EINVAL);
                    return Ok(());
                }
                Err(e) => return Err(format!("open O_DIRECT: {}", ename(e))),
            }
        }
        let dfd = self.files[fi].dfd.unwrap();
        let mut buf = Aligned::new(len as usize);
        if k == Kind::DirectWrite {
            buf.as_mut().copy_from_slice(&data);
            // SAFETY: aligned buffer of len bytes.
            let n = unsafe {
                libc::pwrite(dfd, buf.as_ref().as_ptr().cast(), len as usize, off as i64)
            };
            if n < 0 {
                let e = errno();
                if e == libc::EINVAL {
                    self.direct_refused = Some(e);
                    self.notes.push(
                        "the mount refuses O_DIRECT writes (EINVAL): O_DIRECT ops skipped".into(),
                    );
                    self.counts.unsupported(kn, e);
                    return Ok(());
                }
                return Err(format!("O_DIRECT pwrite: {}", ename(e)));
            }
            if n as u64 != len {
                return Err(format!("O_DIRECT pwrite wrote {n} of {len}"));
            }
            self.files[fi].m.write(off, &data);
            self.counts.done(kn);
            self.check_size(fi)
        } else {
            let mut got = Vec::new();
            let mut pos = off;
            loop {
                let want = (off + len - pos) as usize;
                if want == 0 {
                    break;
                }
                // SAFETY: aligned buffer of len bytes; pos stays aligned
                // except after a short read at EOF, where we stop.
                let n =
                    unsafe { libc::pread(dfd, buf.as_mut().as_mut_ptr().cast(), want, pos as i64) };
                if n < 0 {
                    let e = errno();
                    if e == libc::EINVAL {
                        self.direct_refused = Some(e);
                        self.notes.push(
                            "the mount refuses O_DIRECT reads (EINVAL): O_DIRECT ops skipped"
                                .into(),
                        );
                        self.counts.unsupported(kn, e);
                        return Ok(());
                    }
                    return Err(format!("O_DIRECT pread at {pos}: {}", ename(e)));
                }
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf.as_ref()[..n as usize]);
                pos += n as u64;
                if pos % PG != 0 {
                    break;
                }
            }
            let want = self.files[fi].m.read(off, len);
            self.compare(fi, off, &got, &want, "O_DIRECT read")?;
            self.counts.done(kn);
            Ok(())
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mmap(
        &mut self,
        k: Kind,
        fi: usize,
        off: u64,
        len: u64,
        woff: u64,
        data: Vec<u8>,
        sync: bool,
    ) -> R<()> {
        let kn = kind_name(k);
        let f = &self.files[fi];
        if k == Kind::MmapWrite {
            self.log.op(format!(
                "mmap f{fi} off={off} len={len}, write {} bytes at +{woff}, msync {}",
                data.len(),
                if sync { "MS_SYNC" } else { "MS_ASYNC" }
            ));
        } else {
            self.log
                .op(format!("mmap f{fi} off={off} len={len}, read it"));
        }
        // SAFETY: mapping within the file size; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.fd,
                off as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", ename(errno())));
        }
        // SAFETY: p maps len bytes.
        let map = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len as usize) };
        let res = if k == Kind::MmapWrite {
            map[woff as usize..woff as usize + data.len()].copy_from_slice(&data);
            let how = if sync { libc::MS_SYNC } else { libc::MS_ASYNC };
            // SAFETY: our mapping.
            if unsafe { libc::msync(p, len as usize, how) } != 0 {
                Err(format!("msync: {}", ename(errno())))
            } else {
                Ok(())
            }
        } else {
            let want = f.m.read(off, len);
            self.compare(fi, off, map, &want, "mmap read")
        };
        // SAFETY: our mapping.
        unsafe { libc::munmap(p, len as usize) };
        res?;
        if k == Kind::MmapWrite {
            self.files[fi].m.write(off + woff, &data);
            self.check_read(fi, off + woff, data.len() as u64, "pread after mmap write")?;
        }
        self.counts.done(kn);
        self.check_size(fi)
    }

    fn falloc(&mut self, fi: usize, mode: i32, off: u64, len: u64) -> R<()> {
        let kn = falloc_name(mode);
        let size = self.files[fi].m.size;
        self.log.op(format!(
            "fallocate f{fi} {kn} off={off} len={len} (size {size})"
        ));
        let f = &mut self.files[fi];
        // SAFETY: our fd.
        let r = unsafe { libc::fallocate(f.fd, mode, off as i64, len as i64) };
        let e = if r == 0 { 0 } else { errno() };
        if mode == FL_COLLAPSE || mode == FL_INSERT {
            if e != libc::EOPNOTSUPP {
                return Err(format!(
                    "fallocate {kn}: expected EOPNOTSUPP, got {}",
                    ename(e)
                ));
            }
            self.counts.done(kn);
            return Ok(());
        }
        if e == libc::EOPNOTSUPP || e == libc::ENOSYS {
            return self.unsupported(kn, e);
        }
        if e != 0 {
            return Err(format!("fallocate {kn}: {}", ename(e)));
        }
        let end = off + len;
        match mode {
            0 => f.m.size = f.m.size.max(end),
            FL_KEEP => {}
            m if m == FL_PUNCH | FL_KEEP => f.m.zero(off, end.min(size)),
            FL_ZERO => {
                f.m.zero(off, end.min(size));
                f.m.size = f.m.size.max(end);
            }
            m if m == FL_ZERO | FL_KEEP => f.m.zero(off, end.min(size)),
            _ => unreachable!(),
        }
        self.counts.done(kn);
        self.check_size(fi)?;
        // Check the edges of the range at once.
        let a = off.saturating_sub(100);
        self.check_read(fi, a, 200, "pread after fallocate")?;
        self.check_read(fi, end.saturating_sub(100), 200, "pread after fallocate")
    }

    fn copy_range(&mut self, fi: usize, fj: usize, off_in: u64, off_out: u64, len: u64) -> R<()> {
        let ssize = self.files[fi].m.size;
        let dsize = self.files[fj].m.size;
        self.log.op(format!(
            "copy_file_range f{fi}@{off_in} -> f{fj}@{off_out} len={len} (sizes {ssize}, {dsize})"
        ));
        let (a, b) = (self.files[fi].fd, self.files[fj].fd);
        let mut oi = off_in as i64;
        let mut oo = off_out as i64;
        // SAFETY: our fds, valid offset pointers.
        let r = unsafe { libc::copy_file_range(a, &mut oi, b, &mut oo, len as usize, 0) };
        if r < 0 {
            let e = errno();
            if matches!(e, libc::EOPNOTSUPP | libc::ENOSYS | libc::EXDEV) {
                return self.unsupported("copy_range", e);
            }
            return Err(format!("copy_file_range: {}", ename(e)));
        }
        let r = r as u64;
        let expect = len.min(ssize.saturating_sub(off_in));
        if r > expect || (expect > 0 && r == 0) {
            return Err(format!(
                "copy_file_range copied {r} bytes, expected {expect} (or a short copy > 0)"
            ));
        }
        if oi as u64 != off_in + r || oo as u64 != off_out + r {
            return Err(format!(
                "copy_file_range left offsets at {oi}, {oo} after copying {r}"
            ));
        }
        if r < expect {
            self.log
                .note(format!("         short copy: {r} of {expect}"));
        }
        let data = self.files[fi].m.read(off_in, r);
        self.files[fj].m.write(off_out, &data);
        self.counts.done("copy_range");
        self.check_size(fj)?;
        self.check_read(
            fj,
            off_out.saturating_sub(10),
            r.min(1 << 20) + 20,
            "pread after copy_file_range",
        )
    }

    fn seek(&mut self, k: Kind, fi: usize, off: u64) -> R<()> {
        let kn = kind_name(k);
        let m = &self.files[fi].m;
        let size = m.size;
        self.log.op(format!("lseek f{fi} {kn} {off} (size {size})"));
        let whence = if k == Kind::SeekData {
            libc::SEEK_DATA
        } else {
            libc::SEEK_HOLE
        };
        // SAFETY: our fd.
        let r = unsafe { libc::lseek(self.files[fi].fd, off as i64, whence) };
        let e = if r < 0 { errno() } else { 0 };
        if e == libc::EINVAL || e == libc::EOPNOTSUPP || e == libc::ENOSYS {
            return self.unsupported(kn, e);
        }
        if off >= size {
            if e != libc::ENXIO {
                return Err(format!(
                    "lseek {kn} at {off} >= size {size}: expected ENXIO, got {}",
                    if e == 0 { r.to_string() } else { ename(e) }
                ));
            }
            self.counts.done(kn);
            return Ok(());
        }
        if k == Kind::SeekData {
            let next = m.first_nonzero(off, size);
            if e == libc::ENXIO {
                if let Some(n) = next {
                    return Err(format!(
                        "lseek SEEK_DATA at {off}: ENXIO, but byte {n} is not zero"
                    ));
                }
            } else if e != 0 {
                return Err(format!("lseek SEEK_DATA: {}", ename(e)));
            } else {
                let r = r as u64;
                if r < off || r >= size {
                    return Err(format!(
                        "lseek SEEK_DATA at {off} gave {r}, outside [{off}, {size})"
                    ));
                }
                if let Some(n) = next {
                    if n < r {
                        return Err(format!(
                            "lseek SEEK_DATA at {off} gave {r}, but byte {n} before it is not zero"
                        ));
                    }
                }
            }
        } else {
            if e != 0 {
                return Err(format!("lseek SEEK_HOLE at {off}: {}", ename(e)));
            }
            let r = r as u64;
            if r < off || r > size {
                return Err(format!(
                    "lseek SEEK_HOLE at {off} gave {r}, outside [{off}, {size}]"
                ));
            }
            if r < size && m.first_nonzero(r, r + 1).is_some() {
                return Err(format!(
                    "lseek SEEK_HOLE at {off} gave {r}, where the model has a non-zero byte"
                ));
            }
        }
        self.counts.done(kn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sparse model against a plain Vec under random writes, zeros,
    /// truncates and reads.
    #[test]
    fn sparse_model_matches_a_dense_one() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut m = Model::default();
        let mut d: Vec<u8> = Vec::new();
        for _ in 0..20000 {
            let off = rng.random_range(0..40000u64);
            let len = rng.random_range(0..9000u64);
            match rng.random_range(0..5) {
                0 | 1 => {
                    let mut v = vec![0u8; len as usize];
                    rng.fill(&mut v[..]);
                    m.write(off, &v);
                    if !v.is_empty() {
                        let end = (off + len) as usize;
                        if d.len() < end {
                            d.resize(end, 0);
                        }
                        d[off as usize..end].copy_from_slice(&v);
                    }
                }
                2 => {
                    let end = (off + len).min(d.len() as u64);
                    m.zero(off, end);
                    if off < end {
                        d[off as usize..end as usize].fill(0);
                    }
                }
                3 => {
                    m.truncate(off);
                    d.resize(off as usize, 0);
                }
                _ => {
                    let a = (off as usize).min(d.len());
                    let b = ((off + len) as usize).min(d.len());
                    assert_eq!(m.read(off, len), d[a..b].to_vec());
                    let nz = d[a..].iter().position(|&c| c != 0).map(|i| (a + i) as u64);
                    assert_eq!(
                        m.first_nonzero(off, d.len() as u64),
                        nz.filter(|_| off < d.len() as u64)
                    );
                }
            }
            assert_eq!(m.size, d.len() as u64);
        }
    }
}
