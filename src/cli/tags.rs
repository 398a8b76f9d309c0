//! `tag`, `tags` and `query`: tags and SQL from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use queryfs::error::FsError;
use queryfs::meta::sandbox::value_text;
use queryfs::store::{self, Access, Store};

use super::{json_line, Outcome};

#[derive(Subcommand)]
pub enum TagCmd {
    /// Tag a file: TAG or TAG=VALUE.
    Add {
        path: PathBuf,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Untag a file.
    Rm {
        path: PathBuf,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// List a file's tags.
    Ls {
        #[arg(long)]
        json: bool,
        path: PathBuf,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct QueryArgs {
    #[command(subcommand)]
    cmd: Option<QueryCmd>,
    /// A SELECT over the views files, tags, tag_list and xattrs.
    sql: Option<String>,
    /// One JSON object per row.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum QueryCmd {
    /// Save a query; it shows as /queries/NAME/ in the mount.
    Save { name: String, sql: String },
    /// List shipped and saved queries.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a saved query.
    Rm { name: String },
}

fn open(dir: &Path, write: Option<&str>) -> Result<Store> {
    let access = match write {
        Some(what) => Access::Write {
            purpose: format!("queryfs {what}"),
            recover: true,
        },
        None => Access::Read,
    };
    Ok(store::open(dir, access, false)?)
}

pub fn tag(dir: &Path, cmd: TagCmd) -> Result<Outcome> {
    match cmd {
        TagCmd::Add { path, tags } => {
            let s = open(dir, Some("tag add"))?;
            let i = super::files::resolve(&s.fs, super::files::bytes(&path))?;
            let path = path.display();
            for t in &tags {
                let (n, v) = queryfs::query::parse_item(t).map_err(|e| anyhow!("{t:?}: {e}"))?;
                let name = format!("user.tag.{n}");
                s.fs.setxattr(i.ino, name.as_bytes(), v.unwrap_or_default().as_bytes(), 0)
                    .map_err(|e| anyhow!("{path}: tag {t:?}: {e}"))?;
            }
            Ok(Outcome::Ok)
        }
        TagCmd::Rm { path, tags } => {
            let s = open(dir, Some("tag rm"))?;
            let i = super::files::resolve(&s.fs, super::files::bytes(&path))?;
            let path = path.display();
            let mut missing = false;
            for t in &tags {
                let name = format!("user.tag.{t}");
                match s.fs.removexattr(i.ino, name.as_bytes()) {
                    Ok(()) => {}
                    Err(queryfs::error::FsError::NoAttr) => {
                        eprintln!("queryfs: {path}: not tagged {t:?}");
                        missing = true;
                    }
                    Err(e) => bail!("{path}: tag {t:?}: {e}"),
                }
            }
            Ok(if missing {
                Outcome::NothingFound
            } else {
                Outcome::Ok
            })
        }
        TagCmd::Ls { json, path } => {
            let s = open(dir, None)?;
            let i = super::files::resolve(&s.fs, super::files::bytes(&path))?;
            let tags = s.fs.file_tags(i.ino)?;
            let mut out = std::io::stdout().lock();
            for (n, v) in &tags {
                if json {
                    json_line(&mut out, &serde_json::json!({"tag": n, "value": v}))?;
                } else {
                    match v {
                        Some(v) => writeln!(out, "{n}={v}")?,
                        None => writeln!(out, "{n}")?,
                    }
                }
            }
            Ok(if tags.is_empty() {
                Outcome::NothingFound
            } else {
                Outcome::Ok
            })
        }
    }
}

pub fn tags(dir: &Path, json: bool) -> Result<Outcome> {
    let s = open(dir, None)?;
    let counts = s.fs.tag_counts()?;
    let mut out = std::io::stdout().lock();
    for (t, n) in &counts {
        if json {
            json_line(&mut out, &serde_json::json!({"tag": t, "files": n}))?;
        } else {
            writeln!(out, "{n:>8}  {t}")?;
        }
    }
    Ok(if counts.is_empty() {
        Outcome::NothingFound
    } else {
        Outcome::Ok
    })
}

pub fn query(dir: &Path, a: QueryArgs) -> Result<Outcome> {
    match a.cmd {
        Some(QueryCmd::Save { name, sql }) => {
            let s = open(dir, Some("query save"))?;
            s.fs.save_query(&name, &sql)
                .map_err(|e| anyhow!("query {name:?}: {e}"))?;
            Ok(Outcome::Ok)
        }
        Some(QueryCmd::Rm { name }) => {
            let s = open(dir, Some("query rm"))?;
            s.fs.delete_query(&name)
                .map_err(|e| anyhow!("query {name:?}: {e}"))?;
            Ok(Outcome::Ok)
        }
        Some(QueryCmd::Ls { json }) => {
            let s = open(dir, None)?;
            let mut out = std::io::stdout().lock();
            for (n, q, shipped) in s.fs.queries()? {
                if json {
                    json_line(
                        &mut out,
                        &serde_json::json!({"name": n, "sql": q, "shipped": shipped}),
                    )?;
                } else {
                    let one: Vec<&str> = q
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("--"))
                        .map(str::trim)
                        .collect();
                    writeln!(
                        out,
                        "{n}\t{}{}",
                        if shipped { "(shipped) " } else { "" },
                        one.join(" ")
                    )?;
                }
            }
            Ok(Outcome::Ok)
        }
        None => {
            let Some(sql) = a.sql else {
                bail!("give a query, e.g. queryfs query 'SELECT path, size FROM files'");
            };
            let s = open(dir, None)?;
            let r = s.fs.run_query(&sql).map_err(|e| match e {
                // The sandbox's own words (a timeout, a cap, a syntax error).
                FsError::Query(q) => anyhow!("query: {q}"),
                e => anyhow!("query: {e}"),
            })?;
            let mut out = std::io::stdout().lock();
            if a.json {
                for i in 0..r.rows.len() {
                    json_line(&mut out, &r.row_json(i))?;
                }
            } else {
                // Cells as their bytes (a name that is not UTF-8 is written
                // as it is); widths count the characters a terminal shows.
                let cells: Vec<Vec<Vec<u8>>> = r
                    .rows
                    .iter()
                    .map(|row| row.iter().map(value_text).collect())
                    .collect();
                let width = |c: &[u8]| String::from_utf8_lossy(c).chars().count();
                let mut w: Vec<usize> = r.columns.iter().map(|c| c.chars().count()).collect();
                for row in &cells {
                    for (i, c) in row.iter().enumerate() {
                        w[i] = w[i].max(width(c));
                    }
                }
                // Columns align up to this width; longer cells run over
                // (a huge value must not pad every other row to its width).
                const WIDEST: usize = 200;
                for x in w.iter_mut() {
                    *x = (*x).min(WIDEST);
                }
                let line = |out: &mut dyn Write, row: &[Vec<u8>]| -> std::io::Result<()> {
                    let mut l = Vec::new();
                    for (i, c) in row.iter().enumerate() {
                        if i > 0 {
                            l.extend_from_slice(b"  ");
                        }
                        l.extend_from_slice(c);
                        l.resize(l.len() + w[i].saturating_sub(width(c)), b' ');
                    }
                    while l.last() == Some(&b' ') {
                        l.pop();
                    }
                    l.push(b'\n');
                    out.write_all(&l)
                };
                let head: Vec<Vec<u8>> = r.columns.iter().map(|c| c.clone().into_bytes()).collect();
                line(&mut out, &head)?;
                line(
                    &mut out,
                    &w.iter().map(|n| vec![b'-'; *n]).collect::<Vec<_>>(),
                )?;
                for row in &cells {
                    line(&mut out, row)?;
                }
            }
            if r.truncated {
                eprintln!(
                    "queryfs: only the first {} rows are shown",
                    queryfs::vfs::ROW_CAP
                );
            }
            Ok(if r.rows.is_empty() {
                Outcome::NothingFound
            } else {
                Outcome::Ok
            })
        }
    }
}
