//! Hostile `/sql` folder names against a real mount: every one is answered
//! within 3 s, the mount root stays fast for a second process meanwhile,
//! the mount's memory stays bounded, and the store is unchanged afterwards.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::tags::{dump, err_of, file_hash, tagged};
use crate::util::*;

/// A folder name for `sql`: `%` and `/` percent-encoded.
fn enc(sql: &str) -> String {
    let s = sql.replace('%', "%25").replace('/', "%2F");
    assert!(s.len() <= 255, "corpus name too long ({}): {s}", s.len());
    s
}

/// The internal tables of a store (migrations/*.sql) and SQLite's own.
const TABLES: &[&str] = &[
    "inodes",
    "dentries",
    "blobs",
    "chunks",
    "store",
    "saved_queries",
    "file_tags",
    "tags",
    "xattrs",
    "quarantine",
];
const SCHEMA: &[&str] = &[
    "sqlite_master",
    "sqlite_schema",
    "sqlite_temp_master",
    "sqlite_temp_schema",
    "sqlite_sequence",
    "sqlite_stat1",
    "sqlite_stat4",
    "dentries_by_ino",
    "file_tags_by_ino",
    "inodes_by_chash",
    "qfs_files",
    "qfs_tags",
    "qfs_tag_list",
    "qfs_xattrs",
    "qfs_up",
];

/// Names that must be refused (EINVAL), as SQL.
fn refused() -> Vec<String> {
    let mut v = Vec::new();
    for t in TABLES {
        // `tags` and `xattrs` are also the names of documented views: only
        // the spellings that name the base table must fail.
        let view = ["tags", "xattrs"].contains(t);
        let mut spell = vec![
            format!("SELECT * FROM main.{t}"),
            format!("SELECT * FROM \"main\".\"{t}\""),
            format!("SELECT * FROM [main].[{t}]"),
            format!("SELECT * FROM `main`.`{t}`"),
            format!("SELECT * FROM 'main'.'{t}'"),
            format!("SELECT count(*) FROM main.{t}"),
            format!("SELECT (SELECT count(*) FROM 'main'.{t})"),
            format!("WITH x AS (SELECT * FROM main.{t}) SELECT * FROM x"),
            format!("WITH files AS (SELECT * FROM main.{t}) SELECT * FROM files"),
            format!("SELECT id FROM files WHERE id IN (SELECT rowid FROM main.{t})"),
            format!("SELECT * FROM files f JOIN main.{t} x ON 1 LIMIT 1"),
            format!("SELECT * FROM files UNION ALL SELECT * FROM main.{t}"),
            format!("DELETE FROM main.{t}"),
            format!("UPDATE main.{t} SET rowid = rowid"),
            format!("INSERT INTO main.{t} DEFAULT VALUES"),
            format!("DROP TABLE main.{t}"),
        ];
        if !view {
            spell.extend([
                format!("SELECT * FROM {t}"),
                format!("SELECT * FROM \"{t}\""),
                format!("SELECT * FROM [{t}]"),
                format!("SELECT * FROM `{t}`"),
                format!("SELECT * FROM '{t}'"),
                format!("SELECT * FROM temp.{t}"),
                format!("SELECT count(*) FROM {t}"),
                format!("SELECT * FROM \"{}\"", t.to_uppercase()),
            ]);
        }
        v.extend(spell);
    }
    for s in SCHEMA {
        v.extend([
            format!("SELECT * FROM {s}"),
            format!("SELECT * FROM '{s}'"),
            format!("SELECT * FROM main.{s}"),
            format!("SELECT * FROM temp.{s}"),
            format!("SELECT count(*) FROM [{s}]"),
        ]);
    }
    v.extend(
        [
            "pragma_table_info('inodes')",
            "pragma_table_xinfo('blobs')",
            "pragma_table_list",
            "pragma_index_list('dentries')",
            "pragma_index_info('dentries_by_ino')",
            "pragma_index_xinfo('dentries_by_ino')",
            "pragma_database_list",
            "pragma_compile_options",
            "pragma_function_list",
            "pragma_module_list",
            "pragma_pragma_list",
            "pragma_collation_list",
            "pragma_page_count",
            "pragma_freelist_count",
            "pragma_integrity_check",
            "pragma_quick_check",
            "pragma_foreign_key_list('chunks')",
            "pragma_schema_version",
            "pragma_user_version",
            "pragma_data_version",
            "pragma_journal_mode",
            "main.pragma_table_info('inodes')",
            "dbstat",
            "dbstat('main')",
            "main.dbstat",
            "json_each((SELECT group_concat(name) FROM sqlite_master))",
            "json_each((SELECT json_group_array(hash) FROM main.blobs))",
            "json_tree((SELECT sql FROM sqlite_schema LIMIT 1))",
            "files INDEXED BY dentries_by_ino",
            "generate_series(1, 10)",
            "fts5vocab",
        ]
        .iter()
        .map(|t| format!("SELECT * FROM {t}")),
    );
    v.extend(
        [
            "SELECT name, pgsize FROM dbstat WHERE name = 'blobs'",
            "SELECT cast(data AS TEXT) FROM 'blobs' WHERE instr(data, cast('TOPSECRET' AS BLOB)) > 0",
            "SELECT * FROM files, dbstat",
            "SELECT * FROM files WHERE id = (SELECT count(*) FROM main.chunks)",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            "WITH qfs_up(ino, p) AS (SELECT ino, name FROM main.dentries) SELECT * FROM qfs_up",
            "WITH qfs_files AS (SELECT * FROM main.inodes) SELECT * FROM qfs_files",
            "INSERT INTO files (id) VALUES (99)",
            "UPDATE files SET size = 0",
            "DELETE FROM files",
            "DELETE FROM tags",
            "DROP VIEW files",
            "CREATE TABLE t (a)",
            "CREATE TEMP TABLE t (a)",
            "CREATE TEMP VIEW v AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE INDEX i ON inodes(size)",
            "CREATE TRIGGER t AFTER INSERT ON inodes BEGIN DELETE FROM inodes; END",
            "CREATE VIRTUAL TABLE t USING fts5(a)",
            "ALTER TABLE inodes ADD COLUMN x",
            "REPLACE INTO tags VALUES (1, 'a', NULL)",
            "ATTACH DATABASE '/tmp/evil.db' AS evil",
            "ATTACH ':memory:' AS m2",
            "DETACH main",
            "PRAGMA writable_schema = 1",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA user_version = 99",
            "PRAGMA query_only = 0",
            "PRAGMA case_sensitive_like = 1",
            "PRAGMA temp_store = FILE",
            "PRAGMA table_info(inodes)",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT a",
            "RELEASE a",
            "VACUUM",
            "VACUUM INTO '/tmp/copy.db'",
            "REINDEX",
            "ANALYZE",
            "EXPLAIN SELECT * FROM main.inodes",
            "EXPLAIN QUERY PLAN SELECT * FROM files",
            "SELECT load_extension('/tmp/x.so')",
            "SELECT load_extension('libc.so.6')",
            "SELECT fts3_tokenizer('simple')",
            "SELECT readfile('/etc/passwd')",
            "SELECT writefile('/tmp/x', 'y')",
            "SELECT 1; DELETE FROM inodes",
            "SELECT 1; SELECT 2",
            "SELECT 1;; SELECT 2",
            "SELECT * FROM files; PRAGMA query_only = 0",
            "SELEC * FROM files",
            "SELECT * FROM nothing",
            "SELECT",
            "-- only a comment",
            "/* open comment",
            "SELECT * FROM files WHERE name = 'unterminated",
            " ",
            "%",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v
}

/// Already encoded names with NUL that must be refused.
const NUL_NAMES: &[&str] = &[
    "%00",
    "SELECT 1 AS x%00; DELETE FROM tags",
    "SELECT '%00'",
    "SELECT 1%00",
    "%00SELECT 1",
    "SELECT * FROM files%00 WHERE 0",
];

/// Names that may succeed or fail, but must be answered in time without
/// leaking, writing, or blowing up the mount.
fn bounded() -> Vec<String> {
    let big = |n: u32| format!("replace(hex(zeroblob({n})),'0','a')");
    let c = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c";
    let mut v = vec![
        // Single-call CPU bombs.
        format!("SELECT instr({}, {}||'b')", big(4000000), big(2000000)),
        format!("SELECT instr(cast({} AS BLOB), cast({}||'b' AS BLOB))", big(4000000), big(2000000)),
        format!("SELECT length(replace({}, {}||'b', 'c'))", big(4000000), big(2000000)),
        format!("SELECT {} LIKE '%'||{}||'b%'", big(4000000), big(900)),
        format!("SELECT {} GLOB '*'||{}||'b*'", big(4000000), big(900)),
        format!("SELECT {} LIKE '%'||{}||'b%'", big(4000000), big(20000)),
        format!("SELECT {} LIKE '%a%a%a%a%a%a%a%a%a%a%a%a%a%b'", big(4000000)),
        format!("SELECT {} GLOB '*[a]*[a]*[a]*[a]*[a]*[a]*b'", big(4000000)),
        format!("SELECT like({}||'b', {}, '!')", big(900), big(8000000)),
        format!("SELECT length(trim({}, replace({},'a','b')||'a'))", big(4000000), big(2000000)),
        format!("SELECT length(ltrim({}, replace({},'a','b')||'a'))", big(4000000), big(2000000)),
        format!("SELECT length(unhex(replace({},'a','z'), replace({},'a','y')||'z'))", big(4000000), big(2000000)),
        format!("SELECT length(json_patch(a, a)) FROM (SELECT json_group_object(x, x) a FROM ({c} LIMIT 100000) SELECT x FROM c))"),
        format!("SELECT count(*) FROM ({c}) SELECT x FROM c) WHERE x LIKE '%1%2%3%4%5%6%7%8%9%'"),
        format!("{c}) SELECT substr(hex(zeroblob(4000000)), x, 1) FROM c"),
        format!("{c}) SELECT sum(length(hex(zeroblob(1000000)))) FROM c"),
        "SELECT count(*) FROM files a, files b, files c, files d, files e, files f, files g, files h".into(),
        "SELECT a.id FROM files a, files b, files c, files d, files e, files f, files g ORDER BY random()".into(),
        "SELECT count(*) FROM files, main.inodes".into(),
        "SELECT printf('%*d', 16000000, 1)".into(),
        "SELECT length(printf('%.*f', 100000000, 1.0))".into(),
        "SELECT printf('%.*c', 2000000000, 'x')".into(),
        "SELECT zeroblob(2000000000)".into(),
        "SELECT randomblob(1000000000)".into(),
        "SELECT length(hex(randomblob(8000000)))".into(),
        "SELECT replace(hex(zeroblob(10000000)), '0', '00000000')".into(),
        // Memory bombs.
        format!("{c}) SELECT x, hex(zeroblob(4000000)) FROM c"),
        format!("{c} LIMIT 40) SELECT x, hex(zeroblob(4000000)) FROM c"),
        format!("{c} LIMIT 40) SELECT x, randomblob(4000000) FROM c ORDER BY random()"),
        format!("{c} LIMIT 40) SELECT DISTINCT randomblob(4000000) FROM c"),
        format!("{c} LIMIT 100) SELECT length(group_concat(hex(zeroblob(1000000)))) FROM c"),
        format!("{c} LIMIT 100) SELECT length(json_group_array(hex(zeroblob(1000000)))) FROM c"),
        format!("{c} LIMIT 400) SELECT length(group_concat(hex(zeroblob(100000))) OVER (ORDER BY x)) FROM c"),
        format!("{c}) SELECT x FROM c ORDER BY x DESC LIMIT 1"),
        format!("{c}) SELECT x, randomblob(1000) FROM c ORDER BY 2 LIMIT 1"),
        format!("SELECT max({})", (0..7).map(|i| format!("hex(zeroblob(400000{i}))")).collect::<Vec<_>>().join(",")),
        format!("SELECT {}", (0..8).map(|i| format!("hex(zeroblob(400000{i}))")).collect::<Vec<_>>().join(",")),
        format!("SELECT length(a||a||a||a) FROM (SELECT {} a)", big(4000000)),
        // Result-size bombs.
        format!("{c} LIMIT 1000000) SELECT x FROM c"),
        format!("{c} LIMIT 100000) SELECT x, printf('%.*c', 1000, 'x') FROM c"),
        format!("{c} LIMIT 10) SELECT x, hex(zeroblob(2000000)) FROM c"),
        format!("{c} LIMIT 4) SELECT replace(hex(zeroblob(1000000)), '0', char(1)) FROM c"),
        format!("{c} LIMIT 100000) SELECT x, x, x, x, x, x, x, x, x, x, x, x FROM c"),
        format!("{c} LIMIT 100000) SELECT x AS id FROM c"),
        format!("{c} LIMIT 100000) SELECT '/' || x AS path FROM c"),
        // Harmless reads, and what views show.
        "SELECT * FROM files".into(),
        "SELECT * FROM tags".into(),
        "SELECT * FROM \"tags\"".into(),
        "SELECT * FROM [xattrs]".into(),
        "SELECT * FROM temp.tags".into(),
        "SELECT * FROM 'tag_list'".into(),
        "SELECT * FROM temp.files".into(),
        "SELECT * FROM json_each('[1,2,3]')".into(),
        "SELECT * FROM json_tree('{\"a\":[1,{\"b\":2}]}')".into(),
        "SELECT j.value FROM files f, json_each(json_array(f.name)) j".into(),
        "SELECT char(0)".into(),
        "SELECT sqlite_version(), sqlite_source_id()".into(),
        "SELECT name, hash, size FROM files WHERE kind = 'file'".into(),
        "SELECT count(*) FROM files".into(),
    ];
    v.retain(|s| !s.is_empty());
    v
}

/// A second process listing the mount root in a loop: each sample is the
/// time of one `os.listdir` of the root and of one stat+read of a file.
struct RootLister {
    child: std::process::Child,
    stop: PathBuf,
}

impl RootLister {
    fn start(mp: &Path, file: &str, stop: PathBuf) -> RootLister {
        let script = r#"
import os, sys, time
mp, f, stop = sys.argv[1], sys.argv[2], sys.argv[3]
out = []
while not os.path.exists(stop):
    t0 = time.perf_counter()
    os.listdir(mp)
    t1 = time.perf_counter()
    p = os.path.join(mp, f)
    os.stat(p)
    with open(p, 'rb') as h:
        h.read()
    t2 = time.perf_counter()
    out.append((t1 - t0, t2 - t1))
    time.sleep(0.01)
for a, b in out:
    print(f"{a * 1000:.3f} {b * 1000:.3f}")
"#;
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(mp)
            .arg(file)
            .arg(&stop)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for the root lister");
        RootLister { child, stop }
    }

    /// Stops it; the samples (ms) of root listings and of file operations.
    fn finish(self) -> (Vec<f64>, Vec<f64>) {
        fs::write(&self.stop, b"").unwrap();
        let o = self.child.wait_with_output().unwrap();
        assert!(o.status.success(), "root lister failed");
        let mut ls = Vec::new();
        let mut ops = Vec::new();
        for l in String::from_utf8(o.stdout).unwrap().lines() {
            let mut it = l.split(' ').map(|x| x.parse::<f64>().unwrap());
            ls.push(it.next().unwrap());
            ops.push(it.next().unwrap());
        }
        (ls, ops)
    }
}

/// Median, 99th percentile and maximum.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[s.len() / 2], s[s.len() * 99 / 100], *s.last().unwrap())
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Lists `/sql/<name>` and reads its result files; the time it took.
fn try_folder(m: &Mount, name: &std::ffi::OsStr) -> (Duration, Result<Vec<String>, i32>) {
    let p = m.path("sql").join(name);
    let t = Instant::now();
    let r = fs::read_dir(&p).and_then(|d| {
        let mut names = Vec::new();
        for e in d {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n.starts_with("result.") {
                let data = fs::read(p.join(&n))?;
                assert!(
                    !data.windows(9).any(|w| w == b"TOPSECRET"),
                    "{name:?} showed the secret"
                );
            }
            names.push(n);
        }
        Ok(names)
    });
    (t.elapsed(), r.map_err(|e| e.raw_os_error().unwrap_or(-1)))
}

#[test]
fn hostile_sql_folder_names_are_answered_in_time_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // QUERYFS_TEST_INLINE_QUERIES=1 runs queries on the FUSE threads as
    // before the query pool: the root-listing assertion then fails.
    let inline = std::env::var_os("QUERYFS_TEST_INLINE_QUERIES").is_some();
    let env: &[(&str, &str)] = if inline {
        &[("QUERYFS_TEST_INLINE_QUERIES", "1")]
    } else {
        &[]
    };
    let mut m = Mount::with_env(dir.path(), &[], env);
    tagged(&m, "a/f1.txt", "x");
    tagged(&m, "a/f2.txt", "y,year=1959");
    fs::write(m.path("big"), vec![7u8; 300_000]).unwrap();
    fs::create_dir(m.path("private")).unwrap();
    fs::write(m.path("private/secret.txt"), b"TOPSECRET data").unwrap();
    setxattr(&m.path("a/f1.txt"), "user.comment", b"hello", 0).unwrap();
    m.stop();
    qfs_ok(
        &m.store,
        &[
            "query",
            "save",
            "texts",
            "SELECT id FROM files WHERE ext = 'txt'",
        ],
    );
    let before = (
        dump(&m.store),
        file_hash(&m.store.join("blobs.qfd")),
        file_hash(&m.store.join("blobs.qfi")),
    );
    m.start();
    let pid = m.pid();
    let lister = RootLister::start(&m.mp, "a/f1.txt", dir.path().join("stop"));
    std::thread::sleep(Duration::from_millis(300));

    // Phase 1: every name, one at a time, each answered within 3 s.
    let refused = refused();
    let bounded = bounded();
    let mut total = 0;
    let mut slowest = (Duration::ZERO, String::new());
    let mut ok = BTreeSet::new();
    for sql in &refused {
        let (took, r) = try_folder(&m, std::ffi::OsStr::new(&enc(sql)));
        assert!(took < Duration::from_secs(3), "{sql:?} took {took:?}");
        assert_eq!(r.clone().err(), Some(libc::EINVAL), "{sql:?} gave {r:?}");
        if took > slowest.0 {
            slowest = (took, sql.clone());
        }
        total += 1;
    }
    for name in NUL_NAMES {
        let (took, r) = try_folder(&m, std::ffi::OsStr::new(name));
        assert!(took < Duration::from_secs(3), "{name:?} took {took:?}");
        assert_eq!(r.err(), Some(libc::EINVAL), "{name:?}");
        total += 1;
    }
    for sql in &bounded {
        let (took, r) = try_folder(&m, std::ffi::OsStr::new(&enc(sql)));
        assert!(took < Duration::from_secs(3), "{sql:?} took {took:?}");
        match &r {
            Ok(_) => {
                ok.insert(sql.clone());
            }
            Err(e) => assert!(
                [libc::EINVAL, libc::EIO].contains(e) || *e == libc::EBUSY,
                "{sql:?}: errno {e}"
            ),
        }
        if took > slowest.0 {
            slowest = (took, sql.clone());
        }
        total += 1;
    }
    // Names the kernel or the decoder refuse: invalid UTF-8, over-long.
    let bad = m
        .path("sql")
        .join(std::ffi::OsStr::from_bytes(b"SELECT '\xff\xfe'"));
    assert_eq!(err_of(fs::read_dir(&bad)), libc::EINVAL);
    let long = format!("SELECT '{}'", "x".repeat(300));
    assert_eq!(
        err_of(fs::read_dir(m.path("sql").join(long))),
        libc::ENAMETOOLONG
    );
    total += 2;
    assert!(total >= 150, "only {total} hostile names");
    eprintln!(
        "{total} hostile names; {} answered with rows; slowest {:?} ({})",
        ok.len(),
        slowest.0,
        slowest.1
    );
    // The harmless ones do work.
    for sql in [
        "SELECT * FROM files",
        "SELECT count(*) FROM files",
        "SELECT * FROM json_each('[1,2,3]')",
    ] {
        assert!(ok.contains(sql), "{sql}");
    }

    // Phase 2: six callers at once, each looping over slow queries, while
    // the root lister goes on.
    let big = |n: u32| format!("replace(hex(zeroblob({n})),'0','a')");
    let slow: Vec<String> = [
        format!("SELECT instr({}, {}||'b')", big(4000000), big(2000000)),
        format!("SELECT {} LIKE '%'||{}||'b%'", big(4000000), big(900)),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c".into(),
        "SELECT count(*) FROM files a, files b, files c, files d, files e, files f, files g, files h, files i".into(),
    ]
    .iter()
    .map(|s| enc(s))
    .collect();
    let until = Instant::now() + Duration::from_secs(8);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let mp = m.mp.clone();
            let slow = slow.clone();
            std::thread::spawn(move || {
                let mut worst = Duration::ZERO;
                let mut k = w;
                while Instant::now() < until {
                    let p = mp.join("sql").join(&slow[k % slow.len()]);
                    let t = Instant::now();
                    let r = fs::read_dir(&p).map(|d| d.count());
                    worst = worst.max(t.elapsed());
                    if let Err(e) = r {
                        let e = e.raw_os_error().unwrap();
                        assert!([libc::EINVAL, libc::EBUSY].contains(&e), "errno {e}");
                    }
                    k += 1;
                }
                worst
            })
        })
        .collect();
    let worst = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap();
    eprintln!("six concurrent slow callers: the slowest answer took {worst:?}");
    assert!(worst < Duration::from_secs(30), "{worst:?}");

    let (ls, ops) = lister.finish();
    let hwm = vm_hwm_kib(pid);
    let (ls_med, ls_p99, ls_max) = stats(&ls);
    let (op_med, op_p99, op_max) = stats(&ops);
    eprintln!(
        "root listings: {} samples, median {ls_med:.2} ms, p99 {ls_p99:.2} ms, max {ls_max:.2} ms; \
         stat+read of a file: median {op_med:.2} ms, p99 {op_p99:.2} ms, max {op_max:.2} ms; \
         mount VmHWM {} MiB",
        ls.len(),
        hwm / 1024
    );
    assert!(ls.len() >= 50, "only {} root listings", ls.len());
    // A FUSE thread held by a query would stall listings for the query's
    // whole budget (2 s). The other tests of this binary run beside this
    // one on a 2-core machine: a few samples may wait for the CPU, so 99 in
    // 100 must be under 100 ms and none may reach half the budget.
    assert!(
        ls_p99 < 100.0,
        "1 root listing in 100 took {ls_p99:.1} ms or more"
    );
    assert!(ls_max < 1000.0, "a root listing took {ls_max:.1} ms");
    assert!(
        op_p99 < 100.0,
        "1 stat+read in 100 took {op_p99:.1} ms or more"
    );
    assert!(op_max < 1000.0, "a stat+read took {op_max:.1} ms");
    assert!(
        hwm < 256 * 1024,
        "the mount's peak RSS was {} MiB",
        hwm / 1024
    );

    // The mount still serves.
    assert_eq!(fs::read(m.path("a/f1.txt")).unwrap(), b"a/f1.txt");
    m.stop();

    // The same through `queryfs query`: an answer or a clear error, quickly.
    let mut cli = 0;
    for sql in refused.iter().step_by(11).chain(bounded.iter().step_by(2)) {
        let t = Instant::now();
        let o = qfs(&m.store, &["query", sql]);
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "queryfs query {sql:?} took {took:?}"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => assert!(
                !String::from_utf8_lossy(&o.stdout).contains("TOPSECRET"),
                "{sql:?}"
            ),
            Some(2) => assert!(err.starts_with("queryfs: query: "), "{sql:?}: {err}"),
            c => panic!("queryfs query {sql:?} exited {c:?}: {err}"),
        }
        cli += 1;
    }
    for sql in refused.iter().filter(|s| s.contains("main.inodes")) {
        let o = qfs(&m.store, &["query", sql]);
        assert_eq!(o.status.code(), Some(2), "{sql}");
    }
    eprintln!("{cli} hostile queries through queryfs query");
    // Memory bombs stop at the query's own heap cap, not by luck of
    // another limit.
    let seven: Vec<String> = (0..7)
        .map(|i| format!("hex(zeroblob(400000{i}))"))
        .collect();
    for sql in [
        format!("SELECT max({})", seven.join(",")),
        format!(
            "SELECT length(max({}))",
            seven
                .join(",")
                .replace("hex(", "upper(hex(")
                .replace("))", ")))")
        ),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 40) \
         SELECT x, length(b) FROM (SELECT x, randomblob(4000000) b FROM c ORDER BY x DESC) \
         LIMIT 1 OFFSET 39"
            .into(),
    ] {
        let o = qfs(&m.store, &["query", &sql]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{sql}: {err}");
        assert!(
            err.contains("needs more memory than a query may use"),
            "{sql}: {err}"
        );
    }

    let after = (
        dump(&m.store),
        file_hash(&m.store.join("blobs.qfd")),
        file_hash(&m.store.join("blobs.qfi")),
    );
    if before.0 != after.0 {
        let a: Vec<&str> = before.0.lines().collect();
        let b: Vec<&str> = after.0.lines().collect();
        let gone: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
        let new: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
        panic!("the metadata changed: gone {gone:?}, new {new:?}");
    }
    assert!(before == after, "the container changed");
}

/// `ls -a` of a folder: every name, `.` and `..` included, in order.
fn ls_a(p: &Path) -> Vec<String> {
    let o = Command::new("ls").arg("-a1").arg(p).output().unwrap();
    assert!(o.status.success(), "ls {}", p.display());
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn result_names_a_directory_cannot_hold_fall_back_to_the_real_name() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mount::new(dir.path());
    tagged(&m, "a/f1.txt", "");
    tagged(&m, "a/f2.txt", "");
    let one = "FROM files WHERE name = 'f1.txt'";
    for col in [
        "'.'",
        "'..'",
        "''",
        "'a' || char(0) || 'b'",
        "char(0)",
        "'x/y'",
        "printf('%.*c', 600, 'n')",
        "printf('%.*c', 256, 'n')",
    ] {
        for sql in [
            format!("SELECT id, {col} AS name {one}"),
            format!("SELECT path, {col} AS name {one}"),
        ] {
            let p = m.path("sql").join(enc(&sql));
            assert_eq!(ls_a(&p), [".", "..", "f1.txt"], "{sql}");
            assert_eq!(fs::read(p.join("f1.txt")).unwrap(), b"a/f1.txt", "{sql}");
        }
    }
    // A path whose last part cannot be a name gives way to the real name.
    for path in ["'/a/.'", "'/a/..'"] {
        let sql = format!("SELECT id, {path} AS path {one}");
        assert_eq!(
            ls_a(&m.path("sql").join(enc(&sql))),
            [".", "..", "f1.txt"],
            "{sql}"
        );
    }
    // Two files both named `..` by the query: each under its own name.
    let sql = "SELECT id, '..' AS name FROM files WHERE kind = 'file'";
    assert_eq!(
        ls_a(&m.path("sql").join(enc(sql))),
        [".", "..", "f1.txt", "f2.txt"]
    );
    // Names that are fine are used.
    let sql = format!("SELECT id, 'renamed.txt' AS name {one}");
    let p = m.path("sql").join(enc(&sql));
    assert_eq!(ls_a(&p), [".", "..", "renamed.txt"]);
    let long = "n".repeat(255);
    let sql = format!("SELECT id, printf('%.*c', 255, 'n') AS name {one}");
    let p = m.path("sql").join(enc(&sql));
    assert_eq!(ls_a(&p), [".".to_string(), "..".to_string(), long.clone()]);
    assert_eq!(fs::read(p.join(&long)).unwrap(), b"a/f1.txt");
}
