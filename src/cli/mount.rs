//! `mount` and `umount`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use queryfs::fuse::{serve, MountConfig};
use queryfs::store::{self, Access};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Outcome;

#[derive(clap::Args)]
pub struct MountArgs {
    /// Where to mount (created if missing).
    mountpoint: PathBuf,
    /// Let other users (root included) use the mount.
    #[arg(long)]
    allow_other: bool,
    /// Serve a new, empty store held in memory instead of a store folder:
    /// nothing is kept after unmount (scratch space, tests); `/by-tag`
    /// works, `/sql` and `/queries` need a store folder.
    #[arg(long)]
    memory: bool,
    /// List the query folders (`by-tag`, `sql`, `queries`) in the root
    /// directory. Without it they are reached by name only (`ls MNT/by-tag`,
    /// `cd MNT/by-tag/jazz`), so that `find`, `du`, `tar` and `rsync -a` of
    /// the root see each real file once.
    #[arg(long)]
    show_folders: bool,
    /// Threads serving FUSE requests (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=MAX_THREADS))]
    threads: u32,
    /// Serve in the background: returns once the mount answers (or with
    /// the error of a failed mount); messages go to the --log-file.
    #[arg(long)]
    background: bool,
    /// The log file of --background (appended to; default
    /// $XDG_STATE_HOME/queryfs/mount.log, else ~/.local/state/queryfs/mount.log,
    /// else /var/log/queryfs.log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Mount over a folder that is not empty (its entries are hidden while mounted).
    #[arg(long)]
    nonempty: bool,
    /// Check everything (store, mount point) but mount nothing (mount -f).
    #[arg(long)]
    fake: bool,
    /// Read-only mount.
    #[arg(long)]
    ro: bool,
    /// Ignore set-user-id and set-group-id bits.
    #[arg(long)]
    nosuid: bool,
    /// Do not interpret device special files.
    #[arg(long)]
    nodev: bool,
    /// Do not allow programs to be executed from the mount.
    #[arg(long)]
    noexec: bool,
    /// Update access times (the default is noatime).
    #[arg(long, conflicts_with = "noatime")]
    atime: bool,
    /// Do not update access times (the default).
    #[arg(long)]
    noatime: bool,
    /// Synchronous writes (the kernel's MS_SYNCHRONOUS).
    #[arg(long)]
    sync: bool,
    /// Synchronous directory changes (the kernel's MS_DIRSYNC).
    #[arg(long)]
    dirsync: bool,
}

/// Set in the environment of the process that `--background` starts.
const CHILD_ENV: &str = "QUERYFS_BACKGROUND_CHILD";

impl MountArgs {
    /// The kernel flags of the mount.
    fn flags(&self) -> Vec<fuser::MountOption> {
        use fuser::MountOption as O;
        let mut f = vec![
            if self.atime { O::Atime } else { O::NoAtime },
            if self.nodev { O::NoDev } else { O::Dev },
            if self.nosuid { O::NoSuid } else { O::Suid },
        ];
        if self.ro {
            f.push(O::RO);
        }
        if self.noexec {
            f.push(O::NoExec);
        }
        if self.sync {
            f.push(O::Sync);
        }
        if self.dirsync {
            f.push(O::DirSync);
        }
        f
    }
}

/// Where `--background` logs without --log-file.
fn default_log_file() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        });
    match state {
        Some(d) => d.join("queryfs/mount.log"),
        None => PathBuf::from("/var/log/queryfs.log"),
    }
}

/// `mount --background`: starts this same command again (its process in a
/// session of its own, output to the log file) and waits until its mount
/// answers; when the mount fails, prints what the child logged.
fn background(a: &MountArgs) -> Result<Outcome> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::process::CommandExt;
    let mp = resolve(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    let log = a.log_file.clone().unwrap_or_else(default_log_file);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let start = file.seek(SeekFrom::End(0))?;
    let args = super::system::args();
    let exe = std::env::current_exe().context("finding the queryfs binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args[1..])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the
    // parent; it only makes the child leave the terminal's session, so that
    // Ctrl-C or a hang-up of the shell does not reach the mount.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount process")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait()? {
            let mut text = String::new();
            let mut f = std::fs::File::open(&log)?;
            f.seek(SeekFrom::Start(start))?;
            let _ = f.read_to_string(&mut text);
            let text = text.trim_end();
            if st.success() && a.fake {
                return Ok(Outcome::Ok);
            }
            // The child's own words ("queryfs: ..."), once.
            let msg = text
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("queryfs: ");
            bail!(
                "the mount process exited ({st}) without mounting: {msg} (log: {})",
                log.display()
            );
        }
        if mount_source(&mp).is_some() && std::fs::read_dir(&mp).is_ok() {
            if !super::system::quiet() {
                eprintln!(
                    "queryfs: mounted at {} in the background (pid {}, log {}); `queryfs umount {}` unmounts",
                    mp.display(),
                    child.id(),
                    log.display(),
                    mp.display()
                );
            }
            return Ok(Outcome::Ok);
        }
        if Instant::now() > deadline {
            bail!(
                "the mount at {} did not answer within 120 s (pid {}, log {})",
                mp.display(),
                child.id(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Refuses a mount point with entries in it, unless --nonempty.
fn check_empty(mp: &Path, a: &MountArgs) -> Result<()> {
    if a.nonempty || !mp.is_dir() {
        return Ok(());
    }
    let n = std::fs::read_dir(mp)
        .with_context(|| format!("reading mount point {}", mp.display()))?
        .count();
    if n > 0 {
        bail!(
            "mount point {} is not empty ({n} entries would be hidden while mounted); empty it, choose another, or pass --nonempty (-o nonempty)",
            mp.display()
        );
    }
    Ok(())
}

/// Most threads `--threads` accepts.
const MAX_THREADS: i64 = 64;

/// `p` made absolute with its longest existing ancestor canonicalized and
/// the rest normalized lexically, so that paths that do not exist yet can
/// be compared with ones that do.
fn resolve(p: &Path) -> std::io::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let mut base = abs.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let canon = loop {
        match base.canonicalize() {
            Ok(c) => break c,
            Err(_) => {
                let Some(name) = base.file_name() else {
                    break base.clone();
                };
                rest.push(name.to_os_string());
                if !base.pop() {
                    break PathBuf::from("/");
                }
            }
        }
    };
    let mut out = canon;
    for part in rest.into_iter().rev() {
        match part.to_str() {
            Some(".") => {}
            Some("..") => {
                out.pop();
            }
            _ => out.push(part),
        }
    }
    Ok(out)
}

/// Refuses a mount point that is the store folder, lies inside it, or
/// contains it (the mount would hide the store from itself).
fn check_nesting(store: &Path, mp: &Path) -> Result<()> {
    if mp.starts_with(store) {
        bail!(
            "mount point {} is the store folder {} or inside it; choose a folder outside the store",
            mp.display(),
            store.display()
        );
    }
    if store.starts_with(mp) {
        bail!(
            "the store {} lies inside the mount point {}; the mount would hide it; choose another mount point",
            store.display(),
            mp.display()
        );
    }
    Ok(())
}

/// Creates `mp` and its missing parents; returns the topmost folder
/// created (to remove if the mount fails), if any.
fn create_mount_point(mp: &Path) -> Result<Option<PathBuf>> {
    let mut top = None;
    let mut p = mp.to_path_buf();
    while !p.exists() {
        top = Some(p.clone());
        if !p.pop() {
            break;
        }
    }
    if top.is_some() {
        std::fs::create_dir_all(mp)
            .with_context(|| format!("creating mount point {}", mp.display()))?;
    }
    Ok(top)
}

/// Removes the folders [`create_mount_point`] made, if they are still empty.
fn remove_created(mp: &Path, top: &Option<PathBuf>) {
    let Some(top) = top else { return };
    let mut p = mp.to_path_buf();
    loop {
        if std::fs::remove_dir(&p).is_err() {
            return;
        }
        if &p == top || !p.pop() {
            return;
        }
    }
}

/// umount2(2); on EBUSY with `lazy`, detaches instead.
fn unmount(mp: &Path, lazy: bool) -> std::io::Result<()> {
    use rustix::mount::UnmountFlags;
    match rustix::mount::unmount(mp, UnmountFlags::empty()) {
        Err(rustix::io::Errno::BUSY) if lazy => {
            Ok(rustix::mount::unmount(mp, UnmountFlags::DETACH)?)
        }
        r => Ok(r?),
    }
}

pub fn mount(store_opt: &Option<PathBuf>, a: MountArgs) -> Result<Outcome> {
    if a.background && std::env::var_os(CHILD_ENV).is_none() {
        return background(&a);
    }
    if a.memory {
        let mp = resolve(&a.mountpoint)
            .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
        if mp.exists() && !mp.is_dir() {
            bail!("mount point {} is not a directory", mp.display());
        }
        check_empty(&mp, &a)?;
        if a.fake {
            return Ok(Outcome::Ok);
        }
        let s = store::open_memory()?;
        let created = create_mount_point(&mp)?;
        let r = serve_store(s, Path::new(store::MEMORY), &mp, &a);
        if r.is_err() {
            remove_created(&mp, &created);
        }
        return r;
    }
    let dir = store_opt.clone().unwrap_or_else(store::default_dir);
    // The default store is created on first use; a named one must exist.
    let create = store_opt.is_none();
    // Every check before anything is created or mounted.
    let mp = resolve(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if mp.exists() && !mp.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    let store_abs = resolve(&dir).with_context(|| format!("store {}", dir.display()))?;
    check_nesting(&store_abs, &mp)?;
    check_empty(&mp, &a)?;
    let s = store::open(
        &dir,
        Access::Write {
            purpose: format!("mounted at {}", mp.display()),
            recover: true,
        },
        create,
    )?;
    if a.fake {
        return Ok(Outcome::Ok);
    }
    // A damaged store was logged by the open (warn): it is served append-only.
    let created = create_mount_point(&mp)?;
    let r = serve_store(s, &dir, &mp, &a);
    if r.is_err() {
        remove_created(&mp, &created);
    }
    r
}

fn serve_store(s: store::Store, dir: &Path, mp: &Path, a: &MountArgs) -> Result<Outcome> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let fsname = {
        let d = dir.display().to_string();
        if d.contains([',', ' ', '\t', '\n', '\\']) {
            "queryfs".to_string()
        } else {
            d
        }
    };
    let fs = s.fs.clone();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let sig_mp = mp.to_path_buf();
    std::thread::spawn(move || {
        // A mount in use is not detached at the first signal: that would
        // leave the store locked by this process until its users leave,
        // without a word. The second signal detaches it (umount -l).
        let mut refused = false;
        for sig in signals.forever() {
            tracing::info!("signal {sig}: unmounting {}", sig_mp.display());
            match unmount(&sig_mp, refused) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    refused = true;
                    eprintln!(
                        "queryfs: {} is busy, not unmounted: {}; signal again (Ctrl-C) to detach it now (the store stays in use until they leave)",
                        sig_mp.display(),
                        busy_users(&sig_mp)
                    );
                }
                Err(e) => eprintln!("queryfs: could not unmount {}: {e}", sig_mp.display()),
                Ok(()) => {}
            }
        }
    });
    let cfg = MountConfig {
        allow_other: a.allow_other,
        threads: a.threads as usize,
        show_folders: a.show_folders,
        flags: a.flags(),
    };
    let group = fs
        .group_commit(queryfs::vfs::GROUP_COMMIT_WINDOW)
        .context("starting the group-commit thread")?;
    let shown = dir.display().to_string();
    let at = mp.display().to_string();
    serve(fs, mp, &cfg, &fsname, |_| {
        tracing::info!(store = %shown, mountpoint = %at, pid = std::process::id(), "mounted");
        if !super::system::quiet() {
            eprintln!(
                "queryfs: mounted {shown} at {at} (Ctrl-C or `queryfs umount {at}` to unmount)"
            );
        }
    })
    .with_context(|| format!("mounting at {}", mp.display()))?;
    // Commit whatever is left before the lock is released.
    group.finish().context("committing at unmount")?;
    drop(s);
    tracing::info!(mountpoint = %at, "unmounted");
    if !super::system::quiet() {
        eprintln!("queryfs: unmounted {at}");
    }
    Ok(Outcome::Ok)
}

/// A field of /proc/self/mountinfo with the kernel's octal escapes
/// (`\040` for a space, `\011`, `\012`, `\134`) undone.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The source (the store folder, or "queryfs") of a queryfs mount at `mp`.
/// /proc/self/mountinfo is read as bytes: mount points anywhere on the
/// system may have names that are not UTF-8.
fn mount_source(mp: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let text = std::fs::read("/proc/self/mountinfo").ok()?;
    let want = mp.as_os_str().as_bytes();
    let mut found = None;
    for line in text.split(|&b| b == b'\n') {
        let Some(sep) = memchr::memmem::find(line, b" - ") else {
            continue;
        };
        let (left, right) = (&line[..sep], &line[sep + 3..]);
        let Some(point) = left.split(|&b| b == b' ').nth(4) else {
            continue;
        };
        let mut r = right.split(|&b| b == b' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        let source = String::from_utf8_lossy(&unescape(source)).to_string();
        // "fuse": mounts of queryfs versions that did not give the kernel
        // the subtype.
        let ours =
            source == "queryfs" || source == store::MEMORY || store::exists(Path::new(&source));
        if unescape(point) == want && (fstype == b"fuse" || fstype == b"fuse.queryfs") && ours {
            // The last one: the mount on top.
            found = Some(source);
        }
    }
    found
}
pub fn umount(mountpoint: &Path) -> Result<Outcome> {
    let mp = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    let Some(source) = mount_source(&mp) else {
        bail!("{} is not a queryfs mount", mp.display());
    };
    unmount(&mp, false).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is busy, not unmounted: {}; end or move them and retry (or `umount -l` to detach it now)",
                mp.display(),
                busy_users(&mp)
            )
        } else {
            anyhow::anyhow!("unmounting {}: {e}", mp.display())
        }
    })?;
    // Wait for the serving process to commit and let go of the store.
    let store_dir = PathBuf::from(&source);
    if store::exists(&store_dir) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Check: takes the lock like a writer but writes nothing.
            match store::open(
                &store_dir,
                Access::Check {
                    purpose: "queryfs umount (waiting)".into(),
                },
                false,
            ) {
                Ok(_) => break,
                Err(store::StoreError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Outcome::Ok)
}

/// What keeps `mp` busy: the processes with their working or root folder,
/// or an open file, under it (from /proc/PID/{cwd,root,fd}), for example
/// "pid 4242 (bash) has its working folder /mnt/a".
fn busy_users(mp: &Path) -> String {
    let me = std::process::id().to_string();
    let mut found: Vec<String> = Vec::new();
    let mut more = 0usize;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "a process uses it (see `fuser -vm`)".into();
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let dir = p.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let mut what: Vec<String> = Vec::new();
        for (link, label) in [("cwd", "its working folder"), ("root", "its root")] {
            if let Ok(t) = std::fs::read_link(dir.join(link)) {
                if t.starts_with(mp) {
                    what.push(format!("{label} {}", t.display()));
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(t) = std::fs::read_link(fd.path()) {
                    if t.starts_with(mp) {
                        what.push(format!("{} open", t.display()));
                    }
                }
            }
        }
        if what.is_empty() {
            continue;
        }
        if found.len() >= 8 {
            more += 1;
            continue;
        }
        what.truncate(3);
        found.push(format!("pid {pid} ({comm}) has {}", what.join(", ")));
    }
    if found.is_empty() {
        return "a process uses it (see `fuser -vm`)".into();
    }
    if more > 0 {
        found.push(format!("and {more} more processes"));
    }
    found.join("; ")
}
