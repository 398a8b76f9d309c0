//! One store, many SIGKILLs: three writer processes (sh + coreutils) create,
//! fsync, rename across folders, replace by rename, hard-link and delete
//! files on a `--threads 2` mount, a thread of the test commits SQLite transactions
//! (WAL, synchronous=FULL) and a lister process loops `ls -lR` over the
//! writers' folders; the mount is killed at a random (seeded, printed; set
//! QUERYFS_CRASH_SEED to repeat) moment, 60 times, always on the same store,
//! which grows to a few hundred files. After every kill: the dead mount is
//! cleared, a new mount runs recovery, every file a writer had reported
//! durable (only ever after its `sync FILE`, i.e. fsync, returned) must read
//! back exactly and be listed, every file present must be readable with its
//! st_size, the database must pass integrity_check and hold every committed
//! row; then a clean unmount and `queryfs fsck --verify` must exit 0 (and
//! `gc` + `fsck --verify` every tenth round). The writers' live checks (a
//! renamed or removed name is gone at once, a file just written has its
//! size) are asserted after the last round.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

/// Sizes of the pool files the writers copy from: empty, tiny, around the
/// 16 KiB inline limit, around the 64 KiB chunk, and several chunks.
const POOL_SIZES: [usize; 12] = [
    0, 1, 100, 4096, 16_383, 16_385, 65_536, 65_537, 200_000, 700_000, 1_500_000, 2_500_000,
];

/// One writer (sh, coreutils only). Arguments: writer number, round, seed,
/// its folder in the mount, the pool folder, the pool size, the cap on files
/// per folder. Every file NAME = `rRwWiI-P-K` holds "NAME\n" and then pool
/// file P from byte K on (so nearly every file has chunks of its own). It
/// prints, on stdout (a pipe to the test):
/// - `D PATH` after PATH's content and name were made durable by an fsync
///   (`sync FILE`) that returned;
/// - `U PATH` before PATH is renamed, replaced or removed (PATH is no longer
///   promised from then on);
/// - `M FROM TO` after FROM was renamed to TO and TO fsync'd (TO holds what
///   FROM held: durable if FROM was);
/// - `L FROM TO` after TO was made a hard link of FROM and fsync'd (durable
///   if FROM is; it stays when FROM is later removed or replaced);
/// - `E WHAT` when a live check failed.
///
/// It exits at its first failing file-system call (the mount was killed).
const WRITER: &str = r#"
W=$1; R=$2; r=$3; D=$4; P=$5; NP=$6; CAP=$7; i=0
rnd() { r=$(( (r * 1103515245 + 12345) % 2147483648 )); }
# Sets f to a random entry of folder $1 (empty if none) and c to the count.
pick() {
  l=$(ls "$1") || exit 1
  set -- $l
  c=$#; f=
  [ $# -gt 0 ] || return 0
  rnd; n=$(( r / 16 % $# + 1 ))
  eval f=\${$n}
}
# Live checks, while other processes list and stat the same folders: a name
# just renamed or removed is gone; a file just written has its size
# (stat and the bytes read back).
gone() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    [ -d "$D" ] && echo "E $2: the old name still exists right after"
  fi
}
check_size() {
  ps=$(stat -c %s "$P/$2"); want=$(( ${#4} + 1 + (ps > $3 ? ps - $3 : 0) ))
  st=$(stat -c %s "$1") || exit 1
  rd=$(wc -c < "$1") || exit 1
  if [ "$st" != $want ] || [ "$rd" != $want ]; then
    [ -d "$D" ] && echo "E $1: st_size $st, bytes read $rd, written $want"
  fi
}
while :; do
  i=$((i + 1)); rnd; op=$(( r / 65536 % 14 ))
  case $op in
  0|1|2|3)     # create (from a random offset of a pool file), fsync most
    rnd; p=$(( r / 256 % NP )); rnd; k=$(( r / 64 % 8192 )); n=r${R}w${W}i${i}-$p-$k
    { echo $n; tail -c +$((k + 1)) "$P/$p"; } > "$D/new/$n" || exit 1
    check_size "$D/new/$n" $p $k $n
    if [ $(( r % 5 )) -ne 0 ]; then sync "$D/new/$n" || exit 1; echo "D new/$n"; fi ;;
  4|5)         # rename into the other folder
    pick "$D/new"; [ -n "$f" ] || continue
    echo "U new/$f"
    mv "$D/new/$f" "$D/old/$f" || exit 1
    gone "$D/new/$f" "renamed new/$f"
    sync "$D/old/$f" || exit 1
    echo "M new/$f old/$f" ;;
  6)           # replace by rename (an editor's save): write, fsync, rename over
    pick "$D/old"; [ -n "$f" ] || continue
    p=${f#*-}; k=${p#*-}; p=${p%-*}
    { echo $f; tail -c +$((k + 1)) "$P/$p"; } > "$D/tmp/$f" || exit 1
    sync "$D/tmp/$f" || exit 1
    echo "U old/$f"
    mv "$D/tmp/$f" "$D/old/$f" || exit 1
    gone "$D/tmp/$f" "renamed tmp/$f"
    check_size "$D/old/$f" $p $k $f
    sync "$D/old/$f" || exit 1
    echo "D old/$f" ;;
  7|8)         # delete old files beyond the cap
    pick "$D/old"; [ -n "$f" ] && [ $c -gt $CAP ] || continue
    echo "U old/$f"
    rm "$D/old/$f" || exit 1
    gone "$D/old/$f" "removed old/$f" ;;
  9|10|11)     # delete fresh files beyond the cap
    pick "$D/new"; [ -n "$f" ] && [ $c -gt $CAP ] || continue
    echo "U new/$f"
    rm "$D/new/$f" || exit 1
    gone "$D/new/$f" "removed new/$f" ;;
  12)          # a second name (hard link) in another folder, fsync'd
    pick "$D/old"; [ -n "$f" ] || continue
    [ -e "$D/links/$f" ] && continue
    ln "$D/old/$f" "$D/links/$f" 2>/dev/null || { [ -d "$D" ] || exit 1; continue; }
    sync "$D/links/$f" || exit 1
    echo "L old/$f links/$f" ;;
  13)          # remove links beyond the cap (the other name stays)
    pick "$D/links"; [ -n "$f" ] && [ $c -gt $CAP ] || continue
    echo "U links/$f"
    rm "$D/links/$f" || exit 1
    gone "$D/links/$f" "removed links/$f" ;;
  esac
done
"#;

/// Lists and stats every writer's folders over and over (readdir, lookups,
/// getattr of entries that come and go), until the mount dies.
const LISTER: &str = r#"
while [ -d "$1/w0" ]; do ls -lR "$1/w0" "$1/w1" "$1/w2" > /dev/null 2>&1; done
"#;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What a file at `rel` (`wW/new/NAME` or `wW/old/NAME`) must hold.
fn expected(pool: &[Vec<u8>], rel: &str) -> Vec<u8> {
    let name = rel.rsplit('/').next().unwrap();
    let f: Vec<&str> = name.split('-').collect();
    let (p, k): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
    let mut v = format!("{name}\n").into_bytes();
    v.extend_from_slice(&pool[p][k.min(pool[p].len())..]);
    v
}

/// The writers' promises, per writer (their paths never overlap).
#[derive(Default)]
struct Model {
    durable: BTreeSet<String>,
    /// Paths given up with `U` that were durable then (for `M`).
    was_durable: BTreeSet<String>,
    reported: u64,
    /// What the writer's live checks saw wrong (`E` lines).
    errors: Vec<String>,
}

impl Model {
    fn apply(&mut self, prefix: &str, out: &str) {
        for line in out.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let p = |i: usize| format!("{prefix}/{}", f[i]);
            match f[0] {
                "D" => {
                    self.durable.insert(p(1));
                    self.reported += 1;
                }
                "U" => {
                    if self.durable.remove(&p(1)) {
                        self.was_durable.insert(p(1));
                    }
                }
                "M" => {
                    if self.was_durable.remove(&p(1)) {
                        self.durable.insert(p(2));
                        self.reported += 1;
                    }
                }
                "L" => {
                    if self.durable.contains(&p(1)) {
                        self.durable.insert(p(2));
                        self.reported += 1;
                    }
                }
                "E" => self.errors.push(line[2..].to_string()),
                _ => panic!("writer {prefix} printed {line:?}"),
            }
        }
    }
}

fn spawn_writer(
    w: usize,
    round: u64,
    seed: u64,
    dir: &Path,
    pool_dir: &Path,
    cap: usize,
) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WRITER)
        .arg("writer")
        .arg(w.to_string())
        .arg(round.to_string())
        .arg((seed % 2_147_483_648).to_string())
        .arg(dir)
        .arg(pool_dir)
        .arg(POOL_SIZES.len().to_string())
        .arg(cap.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning a writer");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    (child, reader)
}

fn row_len(n: i64) -> usize {
    [10, 500, 3000, 5000, 20_000, 100, 9000][n as usize % 7]
}

/// A thread in the test process: one SQLite database in WAL mode with
/// synchronous=FULL in the mount, one row per transaction; `last` holds the
/// highest row whose COMMIT returned. Old rows are deleted so at most 2000
/// stay. Stops at the first error (the mount was killed).
fn sqlite_writer(path: PathBuf, last: Arc<AtomicI64>) {
    let Ok(mut db) = rusqlite::Connection::open(&path) else {
        return;
    };
    let setup = db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS c (n INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    );
    if setup.is_err() {
        return;
    }
    let mut n = last.load(Ordering::SeqCst);
    loop {
        n += 1;
        let Ok(tx) = db.transaction() else { return };
        if tx
            .execute(
                "INSERT INTO c (n, data) VALUES (?1, ?2)",
                rusqlite::params![n, pattern(n as u64, row_len(n))],
            )
            .is_err()
        {
            return;
        }
        if n % 50 == 0
            && tx
                .execute("DELETE FROM c WHERE n <= ?1", [n - 2000])
                .is_err()
        {
            return;
        }
        if tx.commit().is_err() {
            return;
        }
        last.store(n, Ordering::SeqCst);
    }
}

/// After recovery: the database is sound and holds every committed row,
/// a contiguous run of rows ending at or after `committed`, each exact.
/// Returns the highest row.
fn check_sqlite(path: &Path, committed: i64, what: &str) -> i64 {
    if committed == 0 && !path.exists() {
        return 0;
    }
    let db = rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{what}: integrity_check: {e}"));
    assert_eq!(ok, "ok", "{what}: integrity_check");
    let (lo, hi, count): (Option<i64>, Option<i64>, i64) = db
        .query_row("SELECT min(n), max(n), count(*) FROM c", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap_or_else(|e| panic!("{what}: select: {e}"));
    let hi = hi.unwrap_or(0);
    assert!(
        hi >= committed,
        "{what}: rows up to {hi}, but row {committed} had committed (synchronous=FULL)"
    );
    if let Some(lo) = lo {
        assert_eq!(count, hi - lo + 1, "{what}: rows {lo}..={hi} have gaps");
        let mut st = db.prepare("SELECT n, data FROM c ORDER BY n").unwrap();
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap();
        for row in rows {
            let (n, data) = row.unwrap();
            assert!(
                data == pattern(n as u64, row_len(n)),
                "{what}: row {n} differs"
            );
        }
    }
    hi
}

fn fsck_verify(store: &Path, round: u64, seed: u64) {
    let o = qfs(store, &["fsck", "--verify"]);
    assert!(
        o.status.success(),
        "seed {seed} round {round}: fsck --verify exited {:?}:\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sigkill_with_concurrent_writers_loses_nothing_fsynced() {
    let started = Instant::now();
    let seed: u64 = std::env::var("QUERYFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (rerun with QUERYFS_CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let t = tempfile::tempdir().unwrap();
    let pool_dir = t.path().join("pool");
    fs::create_dir(&pool_dir).unwrap();
    let pool: Vec<Vec<u8>> = POOL_SIZES
        .iter()
        .enumerate()
        .map(|(k, &n)| pattern(1000 + k as u64, n))
        .collect();
    for (k, data) in pool.iter().enumerate() {
        fs::write(pool_dir.join(k.to_string()), data).unwrap();
    }

    let writers = 3usize;
    let rounds = 60u64;
    let mut m = Mount::with_args(t.path(), &["--threads", "2"]);
    for w in 0..writers {
        for sub in ["new", "old", "tmp", "links"] {
            fs::create_dir_all(m.path(&format!("w{w}/{sub}"))).unwrap();
        }
    }
    fs::create_dir(m.path("db")).unwrap();
    let mut models: Vec<Model> = (0..writers).map(|_| Model::default()).collect();
    let sql_last = Arc::new(AtomicI64::new(0));
    let mut live_errors: Vec<String> = Vec::new();
    let mut sql_commits = 0i64;
    let mut most_live = 0usize;
    for round in 0..rounds {
        let cap = 10 + round as usize / 2;
        let sql_round_start = sql_last.load(Ordering::SeqCst);
        let mut running = Vec::new();
        for w in 0..writers {
            let dir = m.path(&format!("w{w}"));
            running.push(spawn_writer(w, round, rng.next(), &dir, &pool_dir, cap));
        }
        let mut lister = Command::new("sh")
            .arg("-c")
            .arg(LISTER)
            .arg("lister")
            .arg(&m.mp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the lister");
        let sql = {
            let (p, l) = (m.path("db/c.sqlite"), sql_last.clone());
            std::thread::spawn(move || sqlite_writer(p, l))
        };
        // A random moment: 150..1650 ms into the round.
        let delay = 150 + rng.next() % 1500;
        std::thread::sleep(Duration::from_millis(delay));
        m.kill();
        sql.join().unwrap();
        lister.wait().unwrap();
        for (w, (mut child, reader)) in running.into_iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "seed {seed} round {round}: writer {w} still running a minute after the kill"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            models[w].apply(&format!("w{w}"), &reader.join().unwrap());
        }
        m.clear_dead();
        // The live checks' failures are reported at the end, so that the
        // durability checks run every round.
        for model in models.iter_mut() {
            for e in std::mem::take(&mut model.errors) {
                live_errors.push(format!("round {round}: {e}"));
            }
        }

        // Recovery runs in the new mount.
        m.start();
        let committed = sql_last.load(Ordering::SeqCst);
        let hi = check_sqlite(
            &m.path("db/c.sqlite"),
            committed,
            &format!("seed {seed} round {round} (delay {delay} ms): sqlite"),
        );
        sql_commits += hi - sql_round_start;
        sql_last.store(hi, Ordering::SeqCst);
        let mut live = 0usize;
        for (w, model) in models.iter().enumerate() {
            for rel in &model.durable {
                let got = fs::read(m.path(rel)).unwrap_or_else(|e| {
                    panic!("seed {seed} round {round} (delay {delay} ms): durable {rel}: {e}")
                });
                let want = expected(&pool, rel);
                assert!(
                    got == want,
                    "seed {seed} round {round} (delay {delay} ms): durable {rel} differs: \
                     {} bytes, want {}",
                    got.len(),
                    want.len()
                );
            }
            // Every file present reads without error, and every durable
            // file is listed by its folder.
            for sub in ["new", "old", "tmp", "links"] {
                let dir = m.path(&format!("w{w}/{sub}"));
                let listed: BTreeSet<String> = fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {}: {e}", dir.display()))
                    .map(|e| format!("w{w}/{sub}/{}", e.unwrap().file_name().to_str().unwrap()))
                    .collect();
                for rel in &listed {
                    let p: PathBuf = m.path(rel);
                    let md = fs::metadata(&p)
                        .unwrap_or_else(|e| panic!("seed {seed} round {round}: stat {rel}: {e}"));
                    let data = fs::read(&p)
                        .unwrap_or_else(|e| panic!("seed {seed} round {round}: read {rel}: {e}"));
                    assert_eq!(
                        data.len() as u64,
                        md.len(),
                        "seed {seed} round {round}: {rel}: st_size vs bytes read"
                    );
                }
                for rel in model
                    .durable
                    .iter()
                    .filter(|r| r.starts_with(&format!("w{w}/{sub}/")))
                {
                    assert!(
                        listed.contains(rel),
                        "seed {seed} round {round}: durable {rel} reads but is not listed"
                    );
                }
                live += listed.len();
            }
        }
        most_live = most_live.max(live);
        m.stop();
        fsck_verify(&m.store, round, seed);
        if round % 10 == 9 {
            qfs_ok(&m.store, &["gc"]);
            fsck_verify(&m.store, round, seed);
        }
        let durable: usize = models.iter().map(|m| m.durable.len()).sum();
        eprintln!(
            "round {round}: killed after {delay} ms; {durable} durable of {live} files; \
             sqlite rows up to {hi}; {:.0} s",
            started.elapsed().as_secs_f64()
        );
        m.start();
    }
    m.stop();
    fsck_verify(&m.store, rounds, seed);
    let reported: u64 = models.iter().map(|m| m.reported).sum();
    let durable: usize = models.iter().map(|m| m.durable.len()).sum();
    let info = info_json(&m.store);
    eprintln!(
        "crash test: {rounds} kills, {reported} durable reports, {durable} durable files at the end, \
         at most {most_live} files, {:.0} s; info: {info}",
        started.elapsed().as_secs_f64()
    );
    eprintln!("sqlite: {sql_commits} commits over all rounds");
    assert!(
        live_errors.is_empty(),
        "seed {seed}: the writers' live checks failed {} times (first 20):\n{}",
        live_errors.len(),
        live_errors
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sql_commits > 1000, "too few sqlite commits: {sql_commits}");
    assert!(
        reported > 500,
        "the writers made too few durable files: {reported}"
    );
    assert!(durable > 100, "too few durable files at the end: {durable}");
}
