//! qfs-exercise: queryfs's own filesystem exerciser, in the style of fsx and
//! fsstress. Three modes, each seeded and each checking every result:
//!
//! - `data DIR`: random I/O on a few files (pwrite/pread, O_DIRECT, mmap,
//!   truncate, fallocate, copy_file_range, SEEK_DATA/SEEK_HOLE, fsync,
//!   reopen with the page cache dropped) against an in-memory sparse model.
//! - `ns DIR --ref REFDIR`: the same random namespace operations in DIR and
//!   in a reference directory (a kernel tmpfs), every return value and
//!   errno compared, and both whole trees compared every few hundred ops.
//! - `multi DIR --procs N`: N processes, each with its own model of its own
//!   files, racing creates/appends/renames/unlinks against readdir+stat of
//!   everything; the final models go to a JSON manifest that `verify`
//!   (or any caller) checks again after a remount.
//!
//! A failure prints the seed, the op number, the last 200 ops and a replay
//! command; `--log FILE` writes the whole log (its first line is what
//! `--replay FILE` reads back). Exit code 0 only when every check passed.

mod common;
mod data;
mod multi;
mod ns;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "qfs-exercise", about = "queryfs filesystem exerciser")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Seed of the random sequence (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of operations (default 10000 unless --seconds).
    #[arg(long)]
    ops: Option<u64>,
    /// Run for this many seconds instead of a fixed op count.
    #[arg(long)]
    seconds: Option<u64>,
    /// Write the whole operation log to FILE.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Replay the run a log FILE recorded (seed, op count and options come
    /// from its first and last lines).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Count ops the filesystem answers EOPNOTSUPP/ENOSYS (fallocate,
    /// copy_file_range, SEEK_HOLE...) per kind instead of failing.
    #[arg(long)]
    allow_unsupported: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Random file I/O checked against a sparse in-memory model.
    Data {
        #[command(flatten)]
        c: Common,
        /// Number of files.
        #[arg(long, default_value_t = 3)]
        files: usize,
        /// Drop the whole page cache (echo 3 > drop_caches) every N ops; 0: never.
        #[arg(long, default_value_t = 2000)]
        drop_every: u64,
        /// Print the time spent per op kind.
        #[arg(long)]
        timing: bool,
        dir: PathBuf,
    },
    /// Namespace operations run side by side in DIR and REFDIR, compared.
    Ns {
        #[command(flatten)]
        c: Common,
        /// The reference directory (on a kernel tmpfs).
        #[arg(long = "ref")]
        refdir: PathBuf,
        /// Compare both whole trees every N ops.
        #[arg(long, default_value_t = 300)]
        tree_every: u64,
        dir: PathBuf,
    },
    /// Several processes racing on their own files and a shared directory.
    Multi {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 8)]
        procs: usize,
        /// Write every process's final files (path, size, BLAKE3) as JSON.
        #[arg(long)]
        manifest: Option<PathBuf>,
        dir: PathBuf,
    },
    /// Check the files of a manifest written by `multi` (after a remount).
    Verify {
        #[arg(long)]
        manifest: PathBuf,
        dir: PathBuf,
    },
    /// One process of `multi` (internal).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        id: usize,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        seconds: Option<u64>,
        #[arg(long)]
        ops: Option<u64>,
        #[arg(long)]
        procs: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        log: Option<PathBuf>,
        dir: PathBuf,
    },
}

/// Seed, op count and flags, with `--replay` applied.
struct Resolved {
    seed: u64,
    ops: Option<u64>,
    seconds: Option<u64>,
    allow_unsupported: bool,
    header: serde_json::Value,
}

fn resolve(c: &Common, mode: &str) -> Resolved {
    if let Some(f) = &c.replay {
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| die(&format!("reading {}: {e}", f.display())));
        let first = text.lines().next().unwrap_or("");
        let json = first
            .strip_prefix("#qfs-exercise ")
            .unwrap_or_else(|| die(&format!("{} is not a qfs-exercise log", f.display())));
        let h: serde_json::Value = serde_json::from_str(json).unwrap();
        if h["mode"] != mode {
            die(&format!(
                "{} is a log of mode {}, not {mode}",
                f.display(),
                h["mode"]
            ));
        }
        // The op count: where it failed or ended, else what was asked.
        let mut ops = h["ops"].as_u64();
        for l in text.lines().rev() {
            if let Some(rest) = l
                .strip_prefix("#fail op=")
                .or_else(|| l.strip_prefix("#end ops="))
            {
                ops = rest.trim().parse().ok();
                break;
            }
        }
        let ops = ops.unwrap_or_else(|| {
            // A log cut short (the exerciser died): the last op line.
            text.lines()
                .rev()
                .find_map(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        });
        let seed = h["seed"].as_u64().unwrap();
        println!("replaying {}: seed {seed}, {ops} ops", f.display());
        return Resolved {
            seed,
            ops: Some(ops),
            seconds: None,
            allow_unsupported: h["allow_unsupported"].as_bool().unwrap_or(false)
                || c.allow_unsupported,
            header: h,
        };
    }
    let seed = c.seed.unwrap_or_else(|| {
        let s = (common::now_ns() as u64) % 1_000_000_000;
        println!("seed (from the clock): {s}");
        s
    });
    let ops = if c.ops.is_none() && c.seconds.is_none() {
        Some(10_000)
    } else {
        c.ops
    };
    Resolved {
        seed,
        ops,
        seconds: c.seconds,
        allow_unsupported: c.allow_unsupported,
        header: serde_json::Value::Null,
    }
}

fn die(msg: &str) -> ! {
    eprintln!("qfs-exercise: {msg}");
    std::process::exit(2)
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Data {
            c,
            files,
            drop_every,
            timing,
            dir,
        } => {
            let r = resolve(&c, "data");
            let files = r.header["files"]
                .as_u64()
                .map(|n| n as usize)
                .unwrap_or(files);
            let drop_every = r.header["drop_every"].as_u64().unwrap_or(drop_every);
            data::run(&data::Opts {
                dir,
                seed: r.seed,
                ops: r.ops,
                seconds: r.seconds,
                files,
                allow_unsupported: r.allow_unsupported,
                log: c.log,
                drop_every,
                timing,
            })
        }
        Cmd::Ns {
            c,
            refdir,
            tree_every,
            dir,
        } => {
            let r = resolve(&c, "ns");
            let tree_every = r.header["tree_every"].as_u64().unwrap_or(tree_every);
            ns::run(&ns::Opts {
                dir,
                refdir,
                seed: r.seed,
                ops: r.ops,
                seconds: r.seconds,
                log: c.log,
                tree_every,
                allow_unsupported: r.allow_unsupported,
            })
        }
        Cmd::Multi {
            c,
            procs,
            manifest,
            dir,
        } => {
            let r = resolve(&c, "multi");
            let ops = if c.seconds.is_some() { None } else { r.ops };
            multi::run(&multi::Opts {
                dir,
                seed: r.seed,
                ops,
                seconds: r.seconds,
                procs,
                manifest,
                log: c.log,
            })
        }
        Cmd::Verify { manifest, dir } => multi::verify(&dir, &manifest),
        Cmd::Worker {
            id,
            seed,
            seconds,
            ops,
            procs,
            out,
            log,
            dir,
        } => multi::worker(id, seed, seconds, ops, procs, &dir, &out, log.as_deref()),
    };
    std::process::exit(code)
}
