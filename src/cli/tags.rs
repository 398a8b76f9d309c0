//! `tag`, `tags` and `query`: tags and SQL from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use queryfs::error::FsError;
use queryfs::meta::sandbox::{value_json, value_text};
use queryfs::store::{self, Access, Store};

use super::live::{self, Target};
use super::{each, json_line, Outcome};

#[derive(Subcommand)]
pub enum TagCmd {
    /// Tag files: `tag add PATH... -- TAG...` (or `tag add PATH TAG...` for one file).
    ///
    /// A TAG is NAME or NAME=VALUE.
    Add(TagArgs),
    /// Untag files: `tag rm PATH... -- TAG...` (or `tag rm PATH TAG...`).
    Rm(TagArgs),
    /// List a file's tags.
    Ls {
        /// JSON Lines: {"tag", "value"} (value null for a plain tag).
        #[arg(long)]
        json: bool,
        /// A file in the store.
        path: PathBuf,
    },
}

#[derive(Args)]
pub struct TagArgs {
    /// Files in the store; without `--`, the first is the file and the rest are tags.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The tags, after `--`.
    #[arg(last = true, value_name = "TAG")]
    tags: Vec<String>,
}

impl TagArgs {
    /// (files, tags) from either form.
    fn split(self) -> Result<(Vec<PathBuf>, Vec<String>)> {
        if !self.tags.is_empty() {
            return Ok((self.paths, self.tags));
        }
        let mut p = self.paths.into_iter();
        let file = p.next().unwrap();
        let tags: Vec<String> = p
            .map(|t| {
                t.into_os_string()
                    .into_string()
                    .map_err(|_| anyhow!("tags must be UTF-8"))
            })
            .collect::<Result<_>>()?;
        if tags.is_empty() {
            bail!("no tags given: queryfs tag add PATH... -- TAG...");
        }
        Ok((vec![file], tags))
    }
}

#[derive(Args)]
pub struct FilesArgs {
    /// A tag query: terms as in /by-tag (`jazz`, `!live`, `year>=1950`) or in
    /// words (`jazz and not live year.ge.1950`); several are ANDed.
    #[arg(required = true, value_name = "QUERY")]
    query: Vec<String>,
    /// End each path with NUL instead of a newline (for `xargs -0`).
    #[arg(short = '0', long = "print0")]
    print0: bool,
    /// Print each path under this mount point instead of as a store path.
    #[arg(long, value_name = "MOUNTPOINT")]
    under: Option<PathBuf>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct QueryArgs {
    #[command(subcommand)]
    cmd: Option<QueryCmd>,
    /// A SELECT over the views files, tags, tag_list and xattrs.
    sql: Option<String>,
    /// One JSON object per row, keys in the order of the SELECT's columns.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum QueryCmd {
    /// Save a query; it shows as /queries/NAME/ in the mount.
    Save {
        /// The query's name (its folder under /queries).
        name: String,
        /// A SELECT over the views (see `queryfs query --help`).
        sql: String,
        /// Replace a saved query of that name.
        #[arg(long)]
        force: bool,
    },
    /// List shipped and saved queries.
    Ls {
        /// JSON Lines: {"name", "sql", "shipped"}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a saved query.
    Rm {
        /// The query's name.
        name: String,
    },
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

/// A tag operation through a mount: the errno of setxattr/removexattr.
fn xattr_err(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

pub fn tag(dir: &Path, cmd: TagCmd) -> Result<Outcome> {
    match cmd {
        TagCmd::Add(a) => {
            let (paths, tags) = a.split()?;
            let items = tags
                .iter()
                .map(|t| queryfs::query::parse_item(t).map_err(|e| anyhow!("{t:?}: {e}")))
                .collect::<Result<Vec<_>>>()?;
            let target = live::open(dir, "tag add")?;
            each(&paths, |path| {
                let shown = path.display();
                match &target {
                    Target::Store(s) => {
                        let i = super::files::resolve(&s.fs, super::files::bytes(path))?;
                        for (t, (n, v)) in tags.iter().zip(&items) {
                            let name = format!("user.tag.{n}");
                            s.fs.setxattr(
                                i.ino,
                                name.as_bytes(),
                                v.as_deref().unwrap_or_default().as_bytes(),
                                0,
                            )
                            .map_err(|e| anyhow!("{shown}: tag {t:?}: {e}"))?;
                        }
                        Ok(())
                    }
                    Target::Mount(mp) => {
                        let p = live::on_mount(mp, super::files::bytes(path));
                        for (t, (n, v)) in tags.iter().zip(&items) {
                            let name = format!("user.tag.{n}");
                            rustix::fs::lsetxattr(
                                &p,
                                name.as_str(),
                                v.as_deref().unwrap_or_default().as_bytes(),
                                rustix::fs::XattrFlags::empty(),
                            )
                            .map_err(|e| {
                                anyhow!("{shown}: tag {t:?}: {}", live::io_msg(&xattr_err(e)))
                            })?;
                        }
                        Ok(())
                    }
                }
            })
        }
        TagCmd::Rm(a) => {
            let (paths, tags) = a.split()?;
            let target = live::open(dir, "tag rm")?;
            each(&paths, |path| {
                let shown = path.display();
                let mut missing = Vec::new();
                for t in &tags {
                    let name = format!("user.tag.{t}");
                    let r = match &target {
                        Target::Store(s) => {
                            let i = super::files::resolve(&s.fs, super::files::bytes(path))?;
                            match s.fs.removexattr(i.ino, name.as_bytes()) {
                                Ok(()) => Ok(()),
                                Err(FsError::NoAttr) => Err(None),
                                Err(e) => Err(Some(e.to_string())),
                            }
                        }
                        Target::Mount(mp) => {
                            let p = live::on_mount(mp, super::files::bytes(path));
                            match rustix::fs::lremovexattr(&p, name.as_str()) {
                                Ok(()) => Ok(()),
                                Err(rustix::io::Errno::NODATA) => Err(None),
                                Err(e) => Err(Some(live::io_msg(&xattr_err(e)))),
                            }
                        }
                    };
                    match r {
                        Ok(()) => {}
                        Err(None) => missing.push(format!("{t:?}")),
                        Err(Some(e)) => bail!("{shown}: tag {t:?}: {e}"),
                    }
                }
                if !missing.is_empty() {
                    bail!("{shown}: not tagged {}", missing.join(", "));
                }
                Ok(())
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

/// `files QUERY...`: the paths of the files matching a tag query (each
/// file once, by its first name), read like the folder `/by-tag/TERMS/`.
pub fn files(dir: &Path, a: FilesArgs) -> Result<Outcome> {
    use queryfs::types::Ino;
    let terms = queryfs::query::parse_words(&a.query)?;
    let s = open(dir, None)?;
    // Through the view a mount serves: the folder is a query folder.
    let fs = queryfs::view::View::new(s.fs.clone(), false);
    let mut folder = b"/by-tag".to_vec();
    for t in &terms {
        folder.push(b'/');
        folder.extend_from_slice(term_folder(t).as_bytes());
    }
    // A tag no file holds (or none at all): nothing found.
    let d = match fs.resolve_bytes(&folder) {
        Ok(d) => d,
        Err(queryfs::error::FsError::NotFound) => return Ok(Outcome::NothingFound),
        Err(e) => bail!("{}: {e}", super::files::show(&folder)),
    };
    let mut paths: Vec<Vec<u8>> = Vec::new();
    for e in fs.list(Ino(d.ino))? {
        if !Ino(e.attr.ino).is_virtual() {
            paths.push(s.fs.path_bytes(e.attr.ino)?);
        } else if e.attr.kind == queryfs::types::FileKind::Symlink {
            // A tagged directory: a symlink to its real place.
            let t = fs.readlink(Ino(e.attr.ino))?;
            let real = lexical_join(&folder, &t);
            if let Ok(i) = fs.resolve_bytes(&real) {
                if !Ino(i.ino).is_virtual() {
                    paths.push(s.fs.path_bytes(i.ino)?);
                }
            }
        }
        // Other virtual entries: narrowing sub-folders.
    }
    paths.sort();
    paths.dedup();
    let mut out = std::io::stdout().lock();
    for p in &paths {
        match &a.under {
            Some(mp) => out.write_all(live::on_mount(mp, p).as_os_str().as_encoded_bytes())?,
            None => out.write_all(p)?,
        }
        out.write_all(if a.print0 { b"\0" } else { b"\n" })?;
    }
    Ok(if paths.is_empty() {
        Outcome::NothingFound
    } else {
        Outcome::Ok
    })
}

/// `target` (a symlink's, relative to folder `dir`, or absolute) as an
/// absolute store path, `.` and `..` resolved lexically.
fn lexical_join(dir: &[u8], target: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let base: &[u8] = if target.starts_with(b"/") { b"" } else { dir };
    for p in base
        .split(|&c| c == b'/')
        .chain(target.split(|&c| c == b'/'))
    {
        match p {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// A term written as its `/by-tag` folder name.
fn term_folder(t: &queryfs::query::Term) -> String {
    use queryfs::query::{Atom, Op};
    let alts: Vec<String> = t
        .any
        .iter()
        .map(|a| match a {
            Atom::Tag(n) => n.clone(),
            Atom::Cmp(n, op, v) => {
                let o = match op {
                    Op::Eq => "=",
                    Op::Ne => "!=",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                };
                format!("{n}{o}{v}")
            }
        })
        .collect();
    format!("{}{}", if t.negated { "!" } else { "" }, alts.join("|"))
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
        Some(QueryCmd::Save { name, sql, force }) => {
            let target = live::open(dir, "query save")?;
            let exists = |fs: &queryfs::vfs::Fs| -> Result<bool> {
                Ok(fs
                    .queries()?
                    .iter()
                    .any(|(n, _, shipped)| *n == name && !shipped))
            };
            match target {
                Target::Store(s) => {
                    if !force && exists(&s.fs)? {
                        bail!("query {name:?} exists (use --force to replace it)");
                    }
                    s.fs.save_query(&name, &sql)
                        .map_err(|e| anyhow!("query {name:?}: {e}"))?;
                }
                Target::Mount(mp) => {
                    let flags = if force {
                        rustix::fs::XattrFlags::empty()
                    } else {
                        rustix::fs::XattrFlags::CREATE
                    };
                    rustix::fs::setxattr(
                        mp.join("queries"),
                        format!("user.query.{name}").as_str(),
                        sql.as_bytes(),
                        flags,
                    )
                    .map_err(|e| match e {
                        rustix::io::Errno::EXIST => {
                            anyhow!("query {name:?} exists (use --force to replace it)")
                        }
                        // The mount logs the sandbox's reason.
                        rustix::io::Errno::INVAL => anyhow!(
                            "query {name:?}: refused by the mount at {} (an invalid name or SQL; its log says why; `queryfs query` runs the SQL here)",
                            mp.display()
                        ),
                        e => anyhow!("query {name:?}: {}", live::io_msg(&xattr_err(e))),
                    })?;
                }
            }
            Ok(Outcome::Ok)
        }
        Some(QueryCmd::Rm { name }) => {
            match live::open(dir, "query rm")? {
                Target::Store(s) => {
                    s.fs.delete_query(&name)
                        .map_err(|e| anyhow!("query {name:?}: {e}"))?
                }
                Target::Mount(mp) => rustix::fs::removexattr(
                    mp.join("queries"),
                    format!("user.query.{name}").as_str(),
                )
                .map_err(|e| match e {
                    rustix::io::Errno::NODATA => anyhow!("query {name:?}: not found"),
                    e => anyhow!("query {name:?}: {}", live::io_msg(&xattr_err(e))),
                })?,
            }
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
                // Keys in the order of the SELECT's columns.
                for i in 0..r.rows.len() {
                    let mut line = Vec::from(*b"{");
                    for (k, (col, cell)) in r.columns.iter().zip(&r.rows[i]).enumerate() {
                        let v = value_json(cell);
                        if k > 0 {
                            line.push(b',');
                        }
                        serde_json::to_writer(&mut line, col)?;
                        line.push(b':');
                        serde_json::to_writer(&mut line, &v)?;
                    }
                    line.extend_from_slice(b"}\n");
                    out.write_all(&line)?;
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
