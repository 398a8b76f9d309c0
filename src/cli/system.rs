//! What makes queryfs fit the system: logging (`RUST_LOG`, `QUERYFS_LOG`,
//! `--log`, `-v`, `-q`), the `mount.queryfs` helper of mount(8) (the same
//! binary reached by that name), man pages and shell completions generated
//! from the clap definitions.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;

use super::{Cli, Outcome};

/// Set by `-q`: the informational lines on stderr ("mounted ...") are not
/// printed (errors still are).
static QUIET: AtomicBool = AtomicBool::new(false);

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The arguments the command was parsed from (after the helper's
/// translation): `mount --background` starts itself again with them.
static ARGS: std::sync::OnceLock<Vec<OsString>> = std::sync::OnceLock::new();

pub fn set_args(args: &[OsString]) {
    let _ = ARGS.set(args.to_vec());
}

pub fn args() -> Vec<OsString> {
    ARGS.get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().collect())
}

/// The log filter: `--log LEVEL`, `-v` (info), `-vv` (debug), `-vvv`
/// (trace) or `-q` (errors only) when given; otherwise `QUERYFS_LOG`, then
/// `RUST_LOG` (both in `tracing_subscriber::EnvFilter` syntax, e.g.
/// `queryfs=debug`), otherwise warnings. Messages go to stderr, coloured
/// only when stderr is a terminal and `NO_COLOR` is unset (never in log
/// files and pipes).
pub fn init_logging(level: Option<&str>, verbose: u8, quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    use tracing_subscriber::EnvFilter;
    let explicit = match (level, verbose, quiet) {
        (Some(l), _, _) => Some(l.to_string()),
        (None, 0, true) => Some("error".into()),
        (None, 0, false) => None,
        (None, 1, _) => Some("info".into()),
        (None, 2, _) => Some("debug".into()),
        (None, _, _) => Some("trace".into()),
    };
    let filter = match explicit {
        Some(l) => EnvFilter::new(format!("queryfs={l},fuser=error")),
        None => EnvFilter::try_from_env("QUERYFS_LOG")
            .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
            .unwrap_or_else(|_| EnvFilter::new("queryfs=warn,fuser=error")),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The names under which the binary acts as mount(8)'s helper:
/// `mount -t queryfs` runs `mount.queryfs`, `mount -t fuse.queryfs` runs
/// `mount.fuse.queryfs`.
const HELPER_NAMES: [&str; 2] = ["mount.queryfs", "mount.fuse.queryfs"];

/// mount(8) and fstab options that only mount(8) acts on, or that ask for
/// what queryfs does anyway: accepted and ignored.
fn ignored_option(o: &str) -> bool {
    matches!(
        o,
        "defaults"
            | "auto"
            | "noauto"
            | "_netdev"
            | "nofail"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "rw"
            | "async"
            | "exec"
            | "suid"
            | "dev"
            | "relatime"
            | "loud"
            | "silent"
            | "default_permissions"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
        || o.starts_with("user=")
        || o.starts_with("fsname=")
        || o.starts_with("subtype=")
}

/// `mount.queryfs STORE MOUNTPOINT [-sfnvN] [-o OPTIONS] [-t TYPE]` (the
/// calling convention of mount(8)'s helpers, see mount(8) "External
/// helpers") as the arguments of `queryfs --store STORE mount
/// --background ...`. Options:
///
/// - `allow_other`, `nonempty`, `ro`, `nosuid`, `nodev`, `noexec`,
///   `atime`, `noatime`, `sync`, `dirsync`: as the `mount` flags of the
///   same names;
/// - `threads=N`, `log=FILE` (the log file; default as for `--background`),
///   `loglevel=LEVEL`;
/// - `defaults`, `auto`, `noauto`, `_netdev`, `nofail`, `user`, `users`,
///   `owner`, `group`, `x-*`, `comment=*` and the defaults `rw`, `suid`,
///   `dev`, `exec`, `async`, `relatime`: mount(8)'s business, ignored;
/// - the store `memory` (`mount -t queryfs memory /mnt`) is a new store in
///   memory.
///
/// `-f` (fake) checks everything and mounts nothing, `-v` logs at info,
/// `-s` (sloppy) ignores unknown options instead of refusing them, `-n`
/// (no mtab) is what happens anyway.
pub fn helper_args(args: Vec<OsString>) -> Option<Result<Vec<OsString>>> {
    let argv0 = args.first()?;
    let name = Path::new(argv0).file_name()?.to_str()?;
    if !HELPER_NAMES.contains(&name) {
        return None;
    }
    Some(translate_helper(&args[1..]))
}

fn translate_helper(args: &[OsString]) -> Result<Vec<OsString>> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut fake, mut verbose, mut sloppy) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-o" {
            let v = it.next().context("-o needs a value")?;
            options.extend(
                v.to_str()
                    .context("mount options are not UTF-8")?
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string),
            );
        } else if let Some(v) = s.strip_prefix("-o") {
            options.extend(v.split(',').filter(|o| !o.is_empty()).map(str::to_string));
        } else if s == "-t" {
            let t = it.next().context("-t needs a value")?;
            let t = t.to_string_lossy();
            if t != "queryfs" && t != "fuse.queryfs" {
                bail!("mount.queryfs mounts type queryfs, not {t}");
            }
        } else if s.starts_with('-') && s.len() > 1 {
            for c in s[1..].chars() {
                match c {
                    'f' => fake = true,
                    'v' => verbose = true,
                    's' => sloppy = true,
                    'n' | 'N' => {}
                    _ => bail!("mount.queryfs: unknown flag -{c}"),
                }
            }
        } else {
            positional.push(a.clone());
        }
    }
    let [store, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        anyhow::anyhow!(
            "usage: mount.queryfs STORE MOUNTPOINT [-o OPTIONS] (got {} operands)",
            p.len()
        )
    })?;
    let mut out: Vec<OsString> = vec!["queryfs".into()];
    if verbose {
        out.push("-v".into());
    }
    let mut mount: Vec<OsString> = vec!["mount".into(), "--background".into()];
    if fake {
        mount.push("--fake".into());
    }
    for o in &options {
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        match (key, value) {
            ("threads", Some(n)) => mount.extend(["--threads".into(), n.into()]),
            ("log", Some(f)) => mount.extend(["--log-file".into(), f.into()]),
            ("loglevel", Some(l)) => out.extend(["--log".into(), l.into()]),
            (
                "allow_other" | "nonempty" | "ro" | "nosuid" | "nodev" | "noexec" | "atime"
                | "noatime" | "sync" | "dirsync",
                None,
            ) => mount.push(format!("--{}", key.replace('_', "-")).into()),
            _ if ignored_option(o) => {}
            _ if sloppy => tracing::warn!("mount.queryfs: ignoring unknown option {o}"),
            _ => bail!("mount.queryfs: unknown mount option {o}"),
        }
    }
    if store == "memory" {
        mount.push("--memory".into());
    } else {
        out.extend(["--store".into(), store]);
    }
    out.extend(mount);
    out.push(mountpoint);
    Ok(out)
}

/// `queryfs completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<Outcome> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "queryfs", &mut out);
    Ok(Outcome::Ok)
}

/// `queryfs man DIR`: `queryfs.1` and one `queryfs-COMMAND.1` per command
/// (and `queryfs-COMMAND-SUB.1` per subcommand) written into DIR.
pub fn man(dir: &Path) -> Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut written = 0;
    write_pages(&cmd, "queryfs", dir, &mut written)?;
    if !quiet() {
        eprintln!("queryfs: {written} man pages written to {}", dir.display());
    }
    Ok(Outcome::Ok)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, n: &mut usize) -> Result<()> {
    // The page's own title and NAME section carry the full name.
    let cmd = cmd
        .clone()
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let file = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .with_context(|| format!("rendering {}", file.display()))?;
    std::fs::write(&file, buf).with_context(|| format!("writing {}", file.display()))?;
    *n += 1;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Vec<String>> {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        Ok(translate_helper(&v)?
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect())
    }

    #[test]
    fn helper_options() {
        assert_eq!(
            t(&[
                "/s",
                "/m",
                "-o",
                "rw,noauto,_netdev,nofail,allow_other,threads=4,x-systemd.automount"
            ])
            .unwrap(),
            [
                "queryfs",
                "--store",
                "/s",
                "mount",
                "--background",
                "--allow-other",
                "--threads",
                "4",
                "/m"
            ]
        );
        assert_eq!(
            t(&[
                "memory",
                "/m",
                "-fv",
                "-t",
                "fuse.queryfs",
                "-onodev,log=/l"
            ])
            .unwrap(),
            [
                "queryfs",
                "-v",
                "mount",
                "--background",
                "--fake",
                "--nodev",
                "--log-file",
                "/l",
                "--memory",
                "/m"
            ]
        );
        assert!(t(&["/s", "/m", "-o", "bogus"]).is_err());
        assert!(t(&["/s", "/m", "-s", "-o", "bogus"]).is_ok());
        assert!(t(&["/s"]).is_err());
        assert!(t(&["/s", "/m", "-t", "ext4"]).is_err());
    }
}
