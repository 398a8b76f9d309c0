//! Query folders and `/sql` rows show a caller only what it could reach
//! through the real tree: user `nobody` on an `--allow-other` mount.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// In every name, tag, value and xattr of the private folder.
const MARKER: &str = "zq7marker";

/// Runs `prog args` as `nobody` (no supplementary groups), or as root;
/// returns (success, stdout + stderr).
fn run_as(nobody: bool, prog: &str, args: &[&str]) -> (bool, String) {
    let o = if nobody {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", prog])
            .args(args)
            .output()
    } else {
        Command::new(prog).args(args).output()
    }
    .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Everything `who` sees through the query folders: listings of /by-tag and
/// every folder under it that is listed, /queries/*, and `/sql` queries
/// (their listings and result files).
fn everything_seen(m: &Mount, nobody: bool, extra_sql: &[String]) -> String {
    let mut seen = String::new();
    let mut look = |prog: &str, p: &Path| {
        let (ok, out) = run_as(nobody, prog, &[p.to_str().unwrap()]);
        assert!(ok, "{prog} {} as nobody={nobody}: {out}", p.display());
        // (Not the path: a probe's SQL may hold the marker.)
        seen.push_str(&format!("== {prog}\n{out}"));
        out
    };
    // /by-tag, two levels down.
    let tags = look("ls", &m.path("by-tag"));
    for t in tags.lines() {
        let sub = look("ls", &m.path("by-tag").join(t));
        for s in sub.lines() {
            let p = m.path("by-tag").join(t).join(s);
            if p.is_dir() {
                look("ls", &p);
            }
        }
    }
    let saved = look("ls", &m.path("queries"));
    for q in saved.lines() {
        look("ls", &m.path("queries").join(q));
    }
    let mut sql: Vec<String> = [
        "SELECT * FROM files",
        "SELECT id, path FROM files",
        "SELECT * FROM tags",
        "SELECT * FROM xattrs",
        "SELECT name AS n, path AS p, parent AS q, hash AS h, ext, target AS t FROM files",
        "SELECT id AS i, tag, value FROM tags",
        "SELECT id AS i, name AS n, value AS v FROM xattrs",
        "SELECT * FROM tag_list",
        "SELECT group_concat(name) AS all_names, group_concat(hash) AS all_hashes FROM files",
        "SELECT count(*) AS c FROM files WHERE name LIKE '%zq7marker%'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sql.extend_from_slice(extra_sql);
    for q in &sql {
        let d = m.path("sql").join(q);
        let names = look("ls", &d);
        if names.lines().any(|l| l == "result.csv") {
            look("cat", &d.join("result.csv"));
            look("cat", &d.join("result.json"));
        }
    }
    seen
}

#[test]
fn nobody_sees_only_what_it_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let mut m = Mount::with_args(dir.path(), &["--allow-other"]);
    // The store itself stays root's; the mount is what nobody uses.
    chmod(&m.store, 0o700);

    // Root's private folder: names, a tag, a tag value and an xattr with
    // the marker.
    let private = m.path("private");
    fs::create_dir(&private).unwrap();
    fs::create_dir(private.join(format!("{MARKER}-dir"))).unwrap();
    for i in 0..3 {
        let f = private.join(format!("{MARKER}-{i}.txt"));
        fs::write(&f, format!("private {i}")).unwrap();
        setxattr(&f, "user.tag.shared", b"", 0).unwrap();
        setxattr(&f, &format!("user.tag.{MARKER}tag"), b"", 0).unwrap();
        setxattr(&f, "user.tag.note", format!("{MARKER}value").as_bytes(), 0).unwrap();
        setxattr(
            &f,
            "user.comment",
            format!("{MARKER} comment").as_bytes(),
            0,
        )
        .unwrap();
    }
    setxattr(
        &private.join(format!("{MARKER}-dir")),
        "user.tag.shared",
        b"",
        0,
    )
    .unwrap();
    chmod(&private, 0o700);
    // A world-readable folder with a root-only file and an open one.
    let public = m.path("pub");
    fs::create_dir(&public).unwrap();
    fs::write(public.join("top.txt"), b"TOPSECRET\n").unwrap();
    chmod(&public.join("top.txt"), 0o600);
    setxattr(&public.join("top.txt"), "user.tag.shared", b"", 0).unwrap();
    fs::write(public.join("open.txt"), b"open to all\n").unwrap();
    setxattr(&public.join("open.txt"), "user.tag.shared", b"", 0).unwrap();
    setxattr(&public.join("open.txt"), "user.tag.public", b"", 0).unwrap();
    fs::write(public.join("untagged.txt"), b"plain\n").unwrap();
    // An ordinary xattr of the root-only file: its value needs read access.
    setxattr(
        &public.join("top.txt"),
        "user.comment",
        b"TOPSECRET note",
        0,
    )
    .unwrap();

    // What root knows: the hash of top.txt and the id of a private file.
    let csv = |q: &str| fs::read_to_string(m.path("sql").join(q).join("result.csv")).unwrap();
    let top_hash = csv("SELECT hash AS h FROM files WHERE name = 'top.txt'")
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(top_hash.len(), 64, "{top_hash:?}");
    let private_id = csv(&format!(
        "SELECT ino AS i FROM files WHERE name = '{MARKER}-0.txt'"
    ))
    .lines()
    .nth(1)
    .unwrap()
    .to_string();
    let probes = vec![
        format!("SELECT {private_id} AS id"),
        format!("SELECT '%2Fprivate%2F{MARKER}-1.txt' AS path"),
        "SELECT name AS n, hash AS h FROM files WHERE name = 'top.txt'".to_string(),
    ];

    // Root sees it all (so the checks below can fail).
    let root = everything_seen(&m, false, &probes);
    assert!(root.contains(&format!("{MARKER}-0.txt")), "{root}");
    assert!(root.contains(&format!("{MARKER}tag")));
    assert!(root.contains(&format!("{MARKER}value")));
    assert!(root.contains(&format!("{MARKER} comment")));
    assert!(root.contains(&top_hash));

    // nobody: none of it, whatever the folder or query.
    let seen = everything_seen(&m, true, &probes);
    for bad in [MARKER, "TOPSECRET", top_hash.as_str()] {
        assert!(!seen.contains(bad), "nobody saw {bad:?}:\n{seen}");
    }
    // ... but what it can reach it sees: the open file with its hash, the
    // name of top.txt (its folder is searchable) without its hash.
    assert!(seen.contains("open.txt"), "{seen}");
    assert!(seen.contains("untagged.txt"), "{seen}");
    let (_, by_tag) = run_as(true, "ls", &[m.path("by-tag").to_str().unwrap()]);
    assert_eq!(by_tag.lines().collect::<Vec<_>>(), ["public", "shared"]);
    let (_, shared) = run_as(true, "ls", &[m.path("by-tag/shared").to_str().unwrap()]);
    assert_eq!(
        shared.lines().collect::<Vec<_>>(),
        ["open.txt", "public", "top.txt"],
        "{shared}"
    );
    let top = m
        .path("sql")
        .join("SELECT name AS n, hash AS h FROM files WHERE name = 'top.txt'")
        .join("result.csv");
    let (_, out) = run_as(true, "cat", &[top.to_str().unwrap()]);
    assert_eq!(out, "n,h\ntop.txt,\n");
    let open = m
        .path("sql")
        .join("SELECT name AS n, length(hash) AS l FROM files WHERE name = 'open.txt'")
        .join("result.csv");
    let (_, out) = run_as(true, "cat", &[open.to_str().unwrap()]);
    assert_eq!(out, "n,l\nopen.txt,64\n");
    let count = m
        .path("sql")
        .join("SELECT count(*) AS c FROM files WHERE name LIKE '%zq7marker%'")
        .join("result.csv");
    assert_eq!(run_as(true, "cat", &[count.to_str().unwrap()]).1, "c\n0\n");
    // The filter function itself tells a hidden folder from no folder not.
    let private_dir = csv("SELECT ino AS i FROM files WHERE name = 'private'")
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    for ino in [private_dir.as_str(), "987654321"] {
        let q = m
            .path("sql")
            .join(format!("SELECT qfs_visible({ino}) AS v"))
            .join("result.csv");
        assert_eq!(
            run_as(true, "cat", &[q.to_str().unwrap()]).1,
            "v\n0\n",
            "{ino}"
        );
    }
    let note = m
        .path("sql")
        .join("SELECT name AS n, value AS v FROM xattrs WHERE name = 'user.comment'")
        .join("result.csv");
    assert_eq!(
        run_as(true, "cat", &[note.to_str().unwrap()]).1,
        "n,v\nuser.comment,\n"
    );
    assert!(run_as(false, "cat", &[note.to_str().unwrap()])
        .1
        .contains("user.comment,TOPSECRET note\n"));
    assert_eq!(run_as(false, "cat", &[count.to_str().unwrap()]).1, "c\n4\n");
    // A private file cannot be reached through a tag folder by its name.
    let direct = m.path("by-tag/shared").join(format!("{MARKER}-0.txt"));
    let (ok, _) = run_as(true, "stat", &[direct.to_str().unwrap()]);
    assert!(!ok, "nobody reached a private file through /by-tag");
    let (ok, _) = run_as(false, "stat", &[direct.to_str().unwrap()]);
    assert!(ok, "root cannot reach it either");
    // The content of top.txt stays out of every query: blobs are no view.
    let blobs = m
        .path("sql")
        .join("SELECT cast(data AS TEXT) AS t FROM 'blobs'");
    let (ok, out) = run_as(true, "ls", &[blobs.to_str().unwrap()]);
    assert!(!ok && !out.contains("TOPSECRET"), "{out}");

    // Root's view is unchanged after nobody's (listings are per viewer).
    let again = everything_seen(&m, false, &probes);
    assert!(again.contains(&format!("{MARKER}-2.txt")));
    assert!(again.contains(&top_hash));
    m.stop();
}

#[test]
fn supplementary_groups_count() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let mut m = Mount::with_args(dir.path(), &["--allow-other"]);
    chmod(&m.store, 0o700);
    let team = m.path("team");
    fs::create_dir(&team).unwrap();
    fs::write(team.join("plan-g7.txt"), b"plan").unwrap();
    setxattr(&team.join("plan-g7.txt"), "user.tag.work", b"", 0).unwrap();
    std::os::unix::fs::chown(&team, Some(0), Some(4242)).unwrap();
    chmod(&team, 0o750);
    let ls = |groups: &str, p: &Path| {
        let o = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", groups, "ls"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let files = m
        .path("sql")
        .join("SELECT id, path FROM files WHERE kind = 'file'");
    // In group 4242 (a supplementary group): reachable, listed.
    assert_eq!(ls("--groups=4242", &files), "plan-g7.txt\n");
    assert_eq!(ls("--groups=4242", &m.path("by-tag/work")), "plan-g7.txt\n");
    // Without it: not.
    assert_eq!(ls("--clear-groups", &files), "");
    assert_eq!(ls("--clear-groups", &m.path("by-tag")), "");
    assert_eq!(ls("--groups=4242", &m.path("by-tag")), "work\n");
    m.stop();
}
