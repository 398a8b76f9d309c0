//! Command-line interface: parsing, output and exit codes.
//!
//! Exit codes: 0 success; 1 the command ran but found nothing or found
//! problems (`fsck`), or some of several operands failed (each reported,
//! the others done, as coreutils do); 2 an error (the message names the
//! path and the cause).
//! A closed output pipe counts as success. `--json` prints JSON Lines: one
//! object per line.

mod admin;
mod files;
mod live;
mod mount;
mod qvfs;
mod system;
mod tags;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// A database you mount as a drive.
#[derive(Parser)]
#[command(name = "queryfs", version, about, propagate_version = true)]
pub struct Cli {
    /// The store folder (default: $XDG_DATA_HOME/queryfs/default, created on first use by `mount`).
    #[arg(long, global = true, value_name = "STORE")]
    store: Option<PathBuf>,
    /// Log level for messages on stderr (error, warn, info, debug, trace);
    /// without it, -v, -q, QUERYFS_LOG or RUST_LOG decide (default warn).
    #[arg(long, global = true, value_name = "LEVEL")]
    log: Option<String>,
    /// More log messages: -v info, -vv debug, -vvv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only: no warnings, no progress lines such as "mounted ...".
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new, empty store.
    Init {
        /// Where (default: --store, else the default store).
        dir: Option<PathBuf>,
    },
    /// Mount a store; serves in the foreground until unmounted or Ctrl-C.
    Mount(mount::MountArgs),
    /// Unmount a queryfs mount and wait for its process to finish.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Copy files or directory trees from disk into the store.
    Put(files::PutArgs),
    /// Copy a file or directory tree from the store to disk.
    Get(files::GetArgs),
    /// List a directory of the store.
    Ls(files::LsArgs),
    /// Print files of the store to standard output.
    Cat {
        /// Files in the store.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Create directories in the store.
    Mkdir {
        /// Create parents as needed; no error if it exists.
        #[arg(short, long)]
        parents: bool,
        /// Directories to create in the store.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Remove files (and with -r, directory trees) from the store.
    Rm {
        /// Remove directories and their contents.
        #[arg(short, long)]
        recursive: bool,
        /// Paths in the store.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Rename or move within the store.
    Mv {
        /// What to move (a path in the store).
        src: PathBuf,
        /// The new path, or an existing directory to move into.
        dest: PathBuf,
    },
    /// Show the attributes of paths in the store.
    Stat {
        /// JSON Lines, one object per path.
        #[arg(long)]
        json: bool,
        /// Paths in the store.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Store statistics: files, logical and stored bytes, dedup ratio, sizes.
    Info {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check the store; exit 0 when clean, 1 when problems or known damage were found.
    Fsck {
        /// Also re-hash every blob.
        #[arg(long)]
        verify: bool,
        /// Quarantine blobs whose cluster chains are damaged (the store must not be mounted).
        #[arg(long)]
        repair: bool,
        /// One JSON object (after --repair: two).
        #[arg(long)]
        json: bool,
    },
    /// Reclaim unreferenced blobs, orphan clusters and unlinked files (refused while a chain is damaged).
    Gc {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Add, remove or list the tags of files.
    #[command(subcommand)]
    Tag(tags::TagCmd),
    /// Print the paths of the files matching a tag query (one per line).
    Files(tags::FilesArgs),
    /// Every tag with the number of files holding it.
    Tags {
        /// JSON Lines: {"tag", "files"}.
        #[arg(long)]
        json: bool,
    },
    /// Run a SELECT over the store's views, or manage saved queries.
    Query(tags::QueryArgs),
    /// Write the store (or a folder of it) as a plain QVFS image.
    ExportQvfs(qvfs::ExportArgs),
    /// Read a QVFS image into the store (created if missing).
    ImportQvfs(qvfs::ImportArgs),
    /// Check or browse a QVFS image without importing it.
    #[command(subcommand)]
    Qvfs(qvfs::QvfsCmd),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (queryfs.1 and one per command) into a folder.
    Man {
        /// The folder (created if missing), e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
}

/// The outcome of a command that ran.
pub enum Outcome {
    Ok,
    NothingFound,
    /// Some operands failed (each reported on stderr); the others were
    /// done, as coreutils do. Exit 1.
    Failed,
}

/// Runs `f` on each operand, coreutils style: an operand that fails is
/// reported (`queryfs: MESSAGE`) and the others still run; `Failed` at
/// the end if any failed. A closed output pipe stops at once.
pub fn each<T>(items: &[T], mut f: impl FnMut(&T) -> Result<()>) -> Result<Outcome> {
    let mut failed = false;
    for i in items {
        if let Err(e) = f(i) {
            if is_broken_pipe(&e) {
                return Err(e);
            }
            let _ = std::io::stdout().flush();
            eprintln!("queryfs: {e:#}");
            failed = true;
        }
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub fn main() -> i32 {
    // Reached as mount(8)'s helper (`mount.queryfs`): its arguments are
    // translated into those of `queryfs mount --background`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match system::helper_args(args.clone()) {
        None => args,
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            eprintln!("mount.queryfs: {e:#}");
            // mount(8)'s "incorrect invocation or permissions".
            return 1;
        }
    };
    system::set_args(&args);
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    system::init_logging(cli.log.as_deref(), cli.verbose, cli.quiet);
    match run(cli) {
        Ok(Outcome::Ok) => 0,
        Ok(Outcome::NothingFound | Outcome::Failed) => 1,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("queryfs: {e:#}");
            2
        }
    }
}

fn store_dir(cli_store: &Option<PathBuf>) -> PathBuf {
    cli_store
        .clone()
        .unwrap_or_else(queryfs::store::default_dir)
}

fn run(cli: Cli) -> Result<Outcome> {
    let dir = store_dir(&cli.store);
    match cli.cmd {
        Cmd::Init { dir: d } => admin::init(&d.unwrap_or(dir)),
        Cmd::Mount(args) => mount::mount(&cli.store, args),
        Cmd::Umount { mountpoint } => mount::umount(&mountpoint),
        Cmd::Put(args) => files::put(&dir, args),
        Cmd::Get(args) => files::get(&dir, args),
        Cmd::Ls(args) => files::ls(&dir, args),
        Cmd::Cat { paths } => files::cat(&dir, &paths),
        Cmd::Mkdir { parents, paths } => files::mkdir(&dir, parents, &paths),
        Cmd::Rm { recursive, paths } => files::rm(&dir, recursive, &paths),
        Cmd::Mv { src, dest } => files::mv(&dir, &src, &dest),
        Cmd::Stat { json, paths } => files::stat(&dir, json, &paths),
        Cmd::Info { json } => admin::info(&dir, json),
        Cmd::Fsck {
            verify,
            json,
            repair,
        } => admin::fsck(&dir, verify, json, repair),
        Cmd::Gc { json } => admin::gc(&dir, json),
        Cmd::Tag(cmd) => tags::tag(&dir, cmd),
        Cmd::Files(a) => tags::files(&dir, a),
        Cmd::Tags { json } => tags::tags(&dir, json),
        Cmd::Query(a) => tags::query(&dir, a),
        Cmd::ExportQvfs(a) => qvfs::export(&dir, a),
        Cmd::ImportQvfs(a) => qvfs::import(&dir, a),
        Cmd::Qvfs(c) => qvfs::qvfs(c),
        Cmd::Completions { shell } => system::completions(shell),
        Cmd::Man { dir } => system::man(&dir),
    }
}

/// A byte progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Writes one JSON Lines record.
pub fn json_line(out: &mut impl Write, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every command and every flag has help text.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(c: &clap::Command, path: &str) {
            for a in c.get_arguments() {
                if matches!(a.get_id().as_str(), "help" | "version") {
                    continue;
                }
                assert!(
                    a.get_help().is_some() || a.get_long_help().is_some(),
                    "{path} {}: no help",
                    a.get_id()
                );
            }
            for s in c.get_subcommands() {
                assert!(s.get_about().is_some(), "{path} {}: no help", s.get_name());
                walk(s, &format!("{path} {}", s.get_name()));
            }
        }
        walk(&<super::Cli as clap::CommandFactory>::command(), "queryfs");
    }
}
