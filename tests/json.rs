//! Every `--json` output against the one vocabulary the README documents
//! (the field list between `<!-- json-fields -->` markers).

use std::collections::BTreeSet;
use std::fs;

use serde_json::Value;

use crate::util::*;

fn documented_fields() -> BTreeSet<String> {
    let readme = include_str!("../README.md");
    let start = readme
        .find("<!-- json-fields -->")
        .expect("field list in README");
    let end = readme.find("<!-- /json-fields -->").unwrap();
    readme[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

const KINDS: &[&str] = &["file", "dir", "symlink", "fifo", "socket", "char", "block"];

/// The vocabulary rules for one object: kinds, modes, times.
fn check_rules(what: &str, v: &Value) {
    let Value::Object(m) = v else {
        panic!("{what}: not an object: {v}")
    };
    for (k, x) in m {
        if k.ends_with("_ns") {
            assert!(
                x.is_i64() || x.is_null(),
                "{what}: {k} = {x}: not integer ns"
            );
        }
        if k == "mode" {
            let s = x.as_str().unwrap_or_else(|| panic!("{what}: mode {x}"));
            assert!(
                s.len() == 4 && s.chars().all(|c| ('0'..='7').contains(&c)),
                "{what}: mode {s}"
            );
        }
        if k == "kind" && m.contains_key("size") {
            assert!(KINDS.contains(&x.as_str().unwrap()), "{what}: kind {x}");
        }
        // Names are never lossy: strings or {"bytes": ...}.
        if (k == "name" || k == "path") && !x.is_string() {
            assert!(x.get("bytes").is_some(), "{what}: {k} = {x}");
        }
    }
}

fn lines(what: &str, out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
        .collect()
}

#[test]
fn every_json_output_uses_the_documented_vocabulary() {
    let fields = documented_fields();
    assert!(fields.contains("mtime_ns") && fields.contains("kind"));
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    qfs_ok(&s, &["init"]);
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"hello").unwrap();
    std::os::unix::fs::symlink("f", src.join("d/l")).unwrap();
    qfs_ok(&s, &["put", src.to_str().unwrap(), "/"]);
    qfs_ok(&s, &["tag", "add", "/src/d/f", "--", "jazz", "year=1959"]);
    qfs_ok(&s, &["query", "save", "mine", "SELECT path FROM files"]);
    let img = t.path().join("x.qfi");
    qfs_ok(&s, &["export-qvfs", img.to_str().unwrap()]);
    let img = img.to_str().unwrap();

    // Entry listings: only documented fields.
    let entry_outputs: Vec<(&str, Vec<&str>)> = vec![
        ("ls", vec!["ls", "--json", "/src/d"]),
        ("ls root", vec!["ls", "--json", "/"]),
        (
            "stat",
            vec!["stat", "--json", "/src", "/src/d/f", "/src/d/l"],
        ),
        ("tag ls", vec!["tag", "ls", "--json", "/src/d/f"]),
        ("tags", vec!["tags", "--json"]),
        ("query ls", vec!["query", "ls", "--json"]),
        ("qvfs ls", vec!["qvfs", "ls", "--json", img, "/src/d"]),
        ("qvfs ls root", vec!["qvfs", "ls", "--json", img]),
    ];
    let mut kinds = BTreeSet::new();
    for (what, args) in &entry_outputs {
        let out = qfs_ok(&s, args);
        let vs = lines(what, &out);
        assert!(!vs.is_empty(), "{what}: no output");
        for v in &vs {
            check_rules(what, v);
            for k in v.as_object().unwrap().keys() {
                assert!(fields.contains(k), "{what}: field {k:?} is not documented");
            }
            if let Some(k) = v.get("kind").and_then(Value::as_str) {
                kinds.insert(k.to_string());
            }
        }
    }
    // One word for a directory everywhere (ls, stat and qvfs ls).
    assert!(kinds.contains("dir") && kinds.contains("file") && kinds.contains("symlink"));
    assert!(!kinds.contains("directory") && !kinds.contains("folder"));

    // Reports: the rules hold at every level.
    fn walk(what: &str, v: &Value) {
        match v {
            Value::Object(m) => {
                check_rules(what, v);
                m.values().for_each(|x| walk(what, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(what, x)),
            _ => {}
        }
    }
    for (what, args) in [
        ("info", vec!["info", "--json"]),
        ("fsck", vec!["fsck", "--json"]),
        ("gc", vec!["gc", "--json"]),
        ("qvfs check", vec!["qvfs", "check", "--json", img]),
        (
            "query",
            vec!["query", "--json", "SELECT path, kind, size FROM files"],
        ),
    ] {
        let out = qfs_ok(&s, &args);
        for v in lines(what, &out) {
            walk(what, &v);
        }
    }
    // The SQL views say "dir" too.
    let out = qfs_ok(
        &s,
        &[
            "query",
            "--json",
            "SELECT kind FROM files WHERE path = '/src'",
        ],
    );
    assert_eq!(out, "{\"kind\":\"dir\"}\n");
}
