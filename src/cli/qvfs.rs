//! `export-qvfs`, `import-qvfs` and `qvfs check|ls|cat`: plain QVFS images.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use queryfs::exchange::{self, ExchangeError, ExportOptions};
use queryfs::qvfs::format::format_time;
use queryfs::qvfs::image::{Image, Item, Report, Severity};
use queryfs::store::{self, Access};
use serde::Serialize;

use super::{json_line, progress_bar, Outcome};

#[derive(Args)]
pub struct ExportArgs {
    /// The image to write: OUT.qfi (the data goes to OUT.qfd beside it).
    out: PathBuf,
    /// Folder of the store to export; its contents become the image's root.
    #[arg(long, default_value = "/", value_name = "PATH")]
    from: PathBuf,
    /// Leave out files over 2^31-1 bytes (each is reported) instead of refusing.
    #[arg(long)]
    skip_large: bool,
    /// Write no metadata file: a bare image, as a plain QVFS writer makes
    /// (times to 2 s, no modes, owners, symlinks, tags or xattrs).
    #[arg(long)]
    no_meta: bool,
    /// Replace OUT.qfi/OUT.qfd if they exist.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The image to read: NAME.qfi (with NAME.qfd beside it).
    image: PathBuf,
    /// Folder of the store to import into (created if missing).
    #[arg(long, default_value = "/", value_name = "PATH")]
    into: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum QvfsCmd {
    /// Run the reader checks; exit 0 clean, 1 problems, 2 unreadable.
    Check {
        /// The image (NAME.qfi).
        image: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List a folder of an image (default its root).
    Ls {
        /// The image (NAME.qfi).
        image: PathBuf,
        /// Folder (or file) of the image.
        #[arg(default_value = "/")]
        path: String,
        /// Long listing: kind, size, modified time, name (and short name).
        #[arg(short, long)]
        long: bool,
        /// JSON Lines, one object per entry.
        #[arg(long)]
        json: bool,
    },
    /// Print files of an image to standard output.
    Cat {
        /// The image (NAME.qfi).
        image: PathBuf,
        /// Files of the image.
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

/// `PATH: MESSAGE`, unless the message already starts with the path.
fn at(p: &Path, e: anyhow::Error) -> anyhow::Error {
    let shown = p.display().to_string();
    let msg = format!("{e:#}");
    if msg.starts_with(&format!("{shown}:")) {
        anyhow!(msg)
    } else {
        anyhow!("{shown}: {msg}")
    }
}

fn explain(e: ExchangeError) -> anyhow::Error {
    match e {
        ExchangeError::Damaged(r) => {
            let mut lines = vec![ExchangeError::Damaged(r.clone()).to_string()];
            lines.extend(
                r.problems
                    .iter()
                    .filter(|p| p.severity == Severity::Error)
                    .take(20)
                    .map(problem_line),
            );
            anyhow!(lines.join("\n  "))
        }
        e => anyhow!(e),
    }
}

/// A store folder for export and import: QVFS images hold Unicode names
/// (UTF-16 long names), so the folder must be named in UTF-8.
fn utf8_store_path(p: &Path, what: &str) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        anyhow!(
            "{what} {}: not UTF-8; a QVFS image holds Unicode names only",
            p.display()
        )
    })
}

pub fn export(dir: &Path, a: ExportArgs) -> Result<Outcome> {
    let s = store::open(dir, Access::Read, false)?;
    let opts = ExportOptions {
        from: utf8_store_path(&a.from, "--from")?,
        skip_large: a.skip_large,
        metadata: !a.no_meta,
    };
    let plan = exchange::plan_export(&s.fs, &opts).map_err(explain)?;
    let b = progress_bar(plan.bytes);
    let r = exchange::write_export(&s.fs, plan, &a.out, a.force, &mut |n| b.inc(n))
        .map_err(|e| at(&a.out, explain(e)));
    b.finish_and_clear();
    let r = r?;
    for p in &r.skipped {
        eprintln!("queryfs: skipped {p}: over 2^31-1 bytes");
    }
    if a.json {
        json_line(&mut std::io::stdout().lock(), &r)?;
    } else {
        println!(
            "{}: {}, {} clusters{}{}",
            a.out.display(),
            r.counts,
            r.clusters,
            if r.renamed.is_empty() {
                String::new()
            } else {
                format!("; {} names kept as long names", r.renamed.len())
            },
            if r.skipped.is_empty() {
                String::new()
            } else {
                format!("; {} large files skipped", r.skipped.len())
            },
        );
    }
    Ok(Outcome::Ok)
}

pub fn import(dir: &Path, a: ImportArgs) -> Result<Outcome> {
    let img = Image::open(&a.image)?;
    let s = store::open(
        dir,
        Access::Write {
            purpose: "queryfs import-qvfs".into(),
            recover: true,
        },
        true,
    )
    .map_err(|e| super::live::busy(dir, "import-qvfs", e))?;
    let check = img.check();
    let b = progress_bar(check.bytes);
    // One commit per 25 ms instead of several per file; all of it is
    // committed (and synced) before the summary.
    let group = s.fs.group_commit(queryfs::vfs::GROUP_COMMIT_WINDOW)?;
    let into = utf8_store_path(&a.into, "--into")?;
    let r = exchange::import(&s.fs, &img, &check, &into, &mut |n| b.inc(n))
        .map_err(|e| at(&a.image, explain(e)));
    b.finish_and_clear();
    group.finish().context("committing the import")?;
    let r = r?;
    for w in &r.warnings {
        eprintln!("queryfs: warning: {w}");
    }
    if a.json {
        json_line(&mut std::io::stdout().lock(), &r)?;
    } else {
        println!(
            "{} into {}: {}{}",
            a.image.display(),
            into,
            r.counts,
            if r.metadata {
                ""
            } else {
                " (plain image: no queryfs metadata)"
            },
        );
    }
    Ok(Outcome::Ok)
}

fn problem_line(p: &queryfs::qvfs::image::Problem) -> String {
    let sev = match p.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut s = format!("{sev}: {}", p.kind);
    if let Some(path) = &p.path {
        s.push_str(&format!(" {path}"));
    }
    if let Some(c) = p.cluster {
        s.push_str(&format!(" (cluster {c})"));
    }
    s.push_str(&format!(": {}", p.message));
    s
}

#[derive(Serialize)]
struct CheckJson<'a> {
    image: String,
    clean: bool,
    #[serde(flatten)]
    report: &'a Report,
}

#[derive(Serialize)]
struct LsJson<'a> {
    name: &'a str,
    short: String,
    kind: &'static str,
    size: u64,
    start: i32,
    /// Nanoseconds since 1970, as every `*_ns` field (null: not recorded).
    mtime_ns: Option<i64>,
    btime_ns: Option<i64>,
    property: u8,
}

pub fn qvfs(cmd: QvfsCmd) -> Result<Outcome> {
    match cmd {
        QvfsCmd::Check { image, json } => {
            let img = match Image::open(&image) {
                Ok(i) => i,
                Err(e) => {
                    if json {
                        json_line(
                            &mut std::io::stdout().lock(),
                            &serde_json::json!({"image": image.display().to_string(), "unreadable": e.to_string()}),
                        )?;
                    }
                    bail!("{e}");
                }
            };
            let r = img.check();
            let mut out = std::io::stdout().lock();
            if json {
                json_line(
                    &mut out,
                    &CheckJson {
                        image: image.display().to_string(),
                        clean: r.is_clean(),
                        report: &r,
                    },
                )?;
            } else {
                for p in &r.problems {
                    writeln!(out, "{}", problem_line(p))?;
                }
                if r.omitted > 0 {
                    writeln!(out, "... and {} more problems", r.omitted)?;
                }
                writeln!(
                    out,
                    "{}: {} clusters, {} folders, {} files, {} bytes: {}",
                    image.display(),
                    r.clusters,
                    r.folders,
                    r.files,
                    r.bytes,
                    if r.is_clean() {
                        "clean".to_string()
                    } else {
                        format!("{} errors, {} warnings", r.errors(), r.warnings())
                    }
                )?;
            }
            Ok(if r.is_clean() {
                Outcome::Ok
            } else {
                Outcome::NothingFound
            })
        }
        QvfsCmd::Ls {
            image,
            path,
            long,
            json,
        } => {
            let img = Image::open(&image)?;
            let items: Vec<Item> = match img
                .resolve(&path)
                .map_err(|e| anyhow!("{}: {e}", image.display()))?
            {
                None => img.read_dir(0)?,
                Some(i) if i.is_dir() => img
                    .read_dir(i.entry.start)
                    .map_err(|e| anyhow!("{path}: {e}"))?,
                Some(i) => vec![i],
            };
            let mut out = std::io::stdout().lock();
            for i in &items {
                let kind = if i.is_dir() { "dir" } else { "file" };
                if json {
                    json_line(
                        &mut out,
                        &LsJson {
                            name: &i.name,
                            short: i.short_lossy(),
                            kind,
                            size: i.size(),
                            start: i.entry.start,
                            mtime_ns: i.modified_ns(),
                            btime_ns: i.created_ns(),
                            property: i.entry.property,
                        },
                    )?;
                } else if long {
                    let t = i
                        .modified_ns()
                        .map(format_time)
                        .unwrap_or_else(|| "-".repeat(19));
                    let short = if i.long.is_some() {
                        format!("  [{}]", i.short_lossy())
                    } else {
                        String::new()
                    };
                    writeln!(
                        out,
                        "{} {:>12} {t} {}{}{short}",
                        if i.is_dir() { 'd' } else { '-' },
                        i.size(),
                        i.name,
                        if i.is_dir() { "/" } else { "" },
                    )?;
                } else {
                    writeln!(out, "{}{}", i.name, if i.is_dir() { "/" } else { "" })?;
                }
            }
            Ok(Outcome::Ok)
        }
        QvfsCmd::Cat { image, paths } => {
            let img = Image::open(&image)?;
            let mut out = std::io::stdout().lock();
            super::each(&paths, |p| {
                let item = img
                    .resolve(p)
                    .map_err(|e| anyhow!("{p}: {e}"))?
                    .ok_or_else(|| anyhow!("{p}: is the root folder"))?;
                // A closed pipe is success: keep the io error's kind.
                let mut write_err = None;
                let r = img.read_file(&item, 1 << 20, |d| {
                    out.write_all(d).inspect_err(|e| {
                        write_err = Some(std::io::Error::new(e.kind(), e.to_string()))
                    })
                });
                if let Some(e) = write_err {
                    return Err(e.into());
                }
                r.map_err(|e| anyhow!("{p}: {e}"))
            })
        }
    }
}
