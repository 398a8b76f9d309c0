//! The crate doc's list of layers is the code's: every module uses only
//! modules of its own layer or below, and the adapters above the core
//! (CLI, FUSE, exporter) speak the shared types, not the SQL layer's rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers the crate doc lists, top first: each one's module names.
fn layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let item = regex::Regex::new(r"^//! (\d+)\. (.*)$").unwrap();
    let name = regex::Regex::new(r"`([a-z_]+)`").unwrap();
    let mut out = Vec::new();
    let mut in_layers = false;
    for line in doc.lines() {
        if line.starts_with("//! # ") {
            in_layers = line == "//! # Layers";
            continue;
        }
        if !in_layers {
            continue;
        }
        if let Some(c) = item.captures(line) {
            // The names before the first ':' are the layer's modules.
            let head = c[2].split(':').next().unwrap();
            let names: Vec<String> = name.captures_iter(head).map(|n| n[1].to_string()).collect();
            assert!(!names.is_empty(), "a layer without a module name: {line}");
            out.push(names);
        }
    }
    assert!(
        out.len() >= 5,
        "the crate doc lists no layers (a `# Layers` section)"
    );
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

/// The files of module `m` (a test file of a module is not part of it).
fn files_of(m: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let mut out = Vec::new();
    if m == "cli" {
        out.push(src.join("main.rs"));
    }
    rust_files(&src.join(m), &mut out);
    let file = src.join(format!("{m}.rs"));
    if file.exists() {
        out.push(file);
    }
    out.retain(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        n != "tests.rs" && !n.ends_with("_tests.rs")
    });
    out
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// module.
fn code_of(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let layers = layers();
    let mut level: BTreeMap<String, usize> = BTreeMap::new();
    for (i, names) in layers.iter().enumerate() {
        for n in names {
            assert!(level.insert(n.clone(), i).is_none(), "{n} is listed twice");
        }
    }
    // Every module of the crate is in the list.
    let lib = code_of(&root().join("src/lib.rs"));
    let decl = regex::Regex::new(r"(?m)^pub mod ([a-z_]+);").unwrap();
    for c in decl.captures_iter(&lib) {
        assert!(
            level.contains_key(&c[1]),
            "module {} is not in the crate doc's list of layers",
            &c[1]
        );
    }
    let used = regex::Regex::new(r"\b(?:crate|queryfs)::([a-z_]+)").unwrap();
    let mut wrong = Vec::new();
    for (m, &at) in &level {
        let files = files_of(m);
        assert!(!files.is_empty(), "layer module {m} has no files");
        for f in files {
            for c in used.captures_iter(&code_of(&f)) {
                let to = &c[1];
                match level.get(to) {
                    Some(&l) if l < at => wrong.push(format!(
                        "{} (layer {}, {m}) uses {to} (layer {}, above it)",
                        f.strip_prefix(root()).unwrap().display(),
                        at + 1,
                        l + 1
                    )),
                    _ => {}
                }
            }
        }
    }
    assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
}

#[test]
fn adapters_speak_the_shared_types_not_sql_rows() {
    let rows = regex::Regex::new(r"\bmeta::(\{[^}]*\b(Inode|kind)\b|Inode\b|kind\b)").unwrap();
    let mut wrong = Vec::new();
    for m in ["cli", "fuse", "exchange"] {
        for f in files_of(m) {
            if rows.is_match(&code_of(&f)) {
                wrong.push(f.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these use the SQL layer's row types (use queryfs::types instead): {wrong:?}"
    );
}
