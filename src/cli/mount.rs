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
    if a.memory {
        let mp = resolve(&a.mountpoint)
            .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
        if mp.exists() && !mp.is_dir() {
            bail!("mount point {} is not a directory", mp.display());
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
    let s = store::open(
        &dir,
        Access::Write {
            purpose: format!("mounted at {}", mp.display()),
            recover: true,
        },
        create,
    )?;
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
        for sig in signals.forever() {
            tracing::info!("signal {sig}: unmounting {}", sig_mp.display());
            if let Err(e) = unmount(&sig_mp, true) {
                eprintln!("queryfs: could not unmount {}: {e}", sig_mp.display());
            }
        }
    });
    let cfg = MountConfig {
        allow_other: a.allow_other,
        threads: a.threads as usize,
        show_folders: a.show_folders,
    };
    let group = fs
        .group_commit(queryfs::vfs::GROUP_COMMIT_WINDOW)
        .context("starting the group-commit thread")?;
    let shown = dir.display().to_string();
    let at = mp.display().to_string();
    serve(fs, mp, &cfg, &fsname, |_| {
        eprintln!("queryfs: mounted {shown} at {at} (Ctrl-C or `queryfs umount {at}` to unmount)");
    })
    .with_context(|| format!("mounting at {}", mp.display()))?;
    // Commit whatever is left before the lock is released.
    group.finish().context("committing at unmount")?;
    drop(s);
    eprintln!("queryfs: unmounted {at}");
    Ok(Outcome::Ok)
}

/// The source (the store folder, or "queryfs") of a queryfs mount at `mp`.
/// mountinfo is read as bytes: a mount point elsewhere that is not UTF-8
/// does not hide this one.
fn mount_source(mp: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    super::live::mounts()
        .into_iter()
        .find_map(|(point, fstype, source)| {
            // A direct mount shows as "fuse" (the subtype needs fusermount).
            let ours = source == b"queryfs"
                || source == store::MEMORY.as_bytes()
                || store::exists(Path::new(std::ffi::OsStr::from_bytes(&source)));
            (point == mp && (fstype == b"fuse" || fstype == b"fuse.queryfs") && ours)
                .then(|| String::from_utf8_lossy(&source).into_owned())
        })
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
                "{} is busy: a process still uses it (see `fuser -vm {}`)",
                mp.display(),
                mp.display()
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
