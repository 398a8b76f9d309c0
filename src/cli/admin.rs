//! `init`, `info`, `fsck`, `gc`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use queryfs::store::{self, Access};

use super::{json_line, Outcome};

pub fn init(dir: &Path) -> Result<Outcome> {
    store::init(dir)?;
    println!("created store {}", dir.display());
    Ok(Outcome::Ok)
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn info(dir: &Path, json: bool) -> Result<Outcome> {
    let s = store::open(dir, Access::Read, false)?;
    let i = s.info()?;
    let mut out = std::io::stdout().lock();
    if json {
        json_line(&mut out, &i)?;
    } else {
        writeln!(out, "store:          {}", i.store)?;
        writeln!(out, "files:          {}", i.files)?;
        writeln!(out, "directories:    {}", i.directories)?;
        writeln!(
            out,
            "logical bytes:  {} ({})",
            i.logical_bytes,
            human(i.logical_bytes)
        )?;
        writeln!(
            out,
            "stored bytes:   {} ({})",
            i.stored_bytes,
            human(i.stored_bytes)
        )?;
        writeln!(out, "dedup ratio:    {:.2}", i.dedup_ratio)?;
        writeln!(
            out,
            "blobs:          {} ({} inline)",
            i.blobs,
            human(i.inline_bytes)
        )?;
        writeln!(
            out,
            "container:      {} ({} of {} clusters used)",
            human(i.container_bytes),
            i.container_clusters_used,
            i.container_clusters
        )?;
        writeln!(out, "database:       {}", human(i.database_bytes))?;
        writeln!(out, "chunk size:     {}", human(i.chunk_size))?;
    }
    Ok(Outcome::Ok)
}

/// `fsck`: exit 0 when clean, 1 when there are problems or files hold
/// quarantined (known damaged) data. Holds the store lock (refused beside a
/// mount, whose in-flight state would read as damage) but opens everything
/// read-only. With `repair`, first quarantines damaged blobs (writing);
/// then exit 0 unless problems other than the known damage remain.
pub fn fsck(dir: &Path, verify: bool, json: bool, repair: bool) -> Result<Outcome> {
    let mut out = std::io::stdout().lock();
    if repair {
        let s = store::open(
            dir,
            Access::Write {
                purpose: "queryfs fsck --repair".into(),
                recover: false,
            },
            false,
        )
        .map_err(|e| super::live::busy(dir, "fsck --repair", e))?;
        let r = s
            .repair()
            .with_context(|| format!("repairing {}", dir.display()))?;
        if json {
            json_line(&mut out, &r)?;
        } else {
            for b in &r.quarantined {
                writeln!(
                    out,
                    "quarantined: blob {} ({} bytes): {}",
                    &b.blob[..16],
                    b.size,
                    b.reason
                )?;
                for f in &b.files {
                    writeln!(out, "damaged file: {f}")?;
                }
            }
            writeln!(
                out,
                "repair: {} damaged blobs quarantined; reclaimed {} orphan clusters, {} unreferenced blobs, {} unlinked files",
                r.quarantined.len(),
                r.reclaimed.orphan_clusters,
                r.reclaimed.unreferenced_blobs,
                r.reclaimed.unlinked_inodes
            )?;
        }
        drop(s);
    }
    let s = store::open(
        dir,
        Access::Check {
            purpose: "queryfs fsck".into(),
        },
        false,
    )
    .map_err(|e| super::live::busy(dir, "fsck", e))?;
    let r = s
        .fsck(verify)
        .with_context(|| format!("checking {}", dir.display()))?;
    if json {
        json_line(&mut out, &r)?;
    } else {
        for p in &r.problems {
            writeln!(out, "problem: {p}")?;
        }
        for k in &r.known_damage {
            for f in &k.files {
                writeln!(
                    out,
                    "damaged: {f} (known: blob {} of {} bytes quarantined by fsck --repair: {}); reads of it fail with EIO; restore or delete the file",
                    &k.blob[..16],
                    k.size,
                    k.reason
                )?;
            }
        }
        let files: usize = r.known_damage.iter().map(|k| k.files.len()).sum();
        writeln!(
            out,
            "{}: {} blobs{}, {} clusters, {} problems{}",
            if r.clean { "clean" } else { "NOT CLEAN" },
            r.blobs,
            if verify { " (all re-hashed)" } else { "" },
            r.clusters,
            r.problems.len(),
            if files > 0 {
                format!(", {files} damaged files (known, quarantined)")
            } else {
                String::new()
            }
        )?;
    }
    Ok(if r.clean || (repair && r.problems.is_empty()) {
        Outcome::Ok
    } else {
        Outcome::NothingFound
    })
}

pub fn gc(dir: &Path, json: bool) -> Result<Outcome> {
    let s = store::open(
        dir,
        Access::Write {
            purpose: "queryfs gc".into(),
            recover: false,
        },
        false,
    )
    .map_err(|e| super::live::busy(dir, "gc", e))?;
    let r = s.gc()?;
    let mut out = std::io::stdout().lock();
    if json {
        json_line(&mut out, &r)?;
    } else {
        writeln!(
            out,
            "reclaimed {} orphan clusters, {} unreferenced blobs, {} unlinked files",
            r.orphan_clusters, r.unreferenced_blobs, r.unlinked_inodes
        )?;
    }
    Ok(Outcome::Ok)
}
