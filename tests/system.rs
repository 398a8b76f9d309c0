//! queryfs as the system sees it, through the real binary and real mounts:
//! mount(8)'s helper (`mount -t queryfs`, an fstab line), `mount
//! --background`, the type in /proc/mounts, refusals (a non-empty mount
//! point, unmounting a busy mount), the mount point removed when a mount
//! fails, logging (`-q`, `-v`, `RUST_LOG`, no escape codes in log files),
//! man pages, completions, `--version` and the tools crate kept apart.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .expect("running a command")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The fstype of the mount at `mp` in /proc/self/mounts, if any.
fn fstype(mp: &Path) -> Option<String> {
    let want = mp.display().to_string();
    String::from_utf8_lossy(&fs::read("/proc/self/mounts").unwrap())
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .map(|l| l.split(' ').nth(2).unwrap().to_string())
}

/// `queryfs [global] mount --background MP --log-file LOG ...`; unmounted
/// (by `queryfs umount`, which waits for the store) on drop.
struct Background {
    mp: PathBuf,
    out: Output,
}

impl Background {
    fn start(global: &[&str], store: &Path, mp: &Path, log: &Path, extra: &[&str]) -> Background {
        let out = run(Command::new(bin())
            .args(global)
            .arg("--store")
            .arg(store)
            .arg("mount")
            .arg("--background")
            .arg(mp)
            .arg("--log-file")
            .arg(log)
            .args(extra));
        Background {
            mp: mp.to_path_buf(),
            out,
        }
    }

    fn ok(&self) -> bool {
        self.out.status.success()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.ok() && is_mounted(&self.mp) {
            let o = run(Command::new(bin()).arg("umount").arg(&self.mp));
            if !o.status.success() {
                force_unmount(&self.mp);
            }
        }
    }
}

fn new_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    qfs_ok(&store, &["init"]);
    store
}

#[test]
fn background_returns_once_the_mount_answers() {
    let d = tempfile::tempdir().unwrap();
    let store = new_store(d.path());
    let mp = d.path().join("mnt");
    let log = d.path().join("log/mount.log");
    let t = Instant::now();
    let m = Background::start(&[], &store, &mp, &log, &[]);
    assert!(m.ok(), "mount --background: {}", text(&m.out.stderr));
    // At once, without waiting: mounted, typed fuse.queryfs, answering.
    assert_eq!(fstype(&mp).as_deref(), Some("fuse.queryfs"));
    // (The root lists no query folder; they answer by name.)
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 0);
    assert!(fs::metadata(mp.join("by-tag")).unwrap().is_dir());
    fs::write(mp.join("f"), b"x").unwrap();
    assert!(t.elapsed() < Duration::from_secs(30));
    let err = text(&m.out.stderr);
    assert!(err.contains("in the background"), "{err}");
    assert!(err.contains(&log.display().to_string()), "{err}");
    drop(m);
    assert!(!is_mounted(&mp));
    // The log file got the serving process's own messages.
    let l = fs::read_to_string(&log).unwrap();
    assert!(l.contains("mounted") && l.contains("unmounted"), "{l}");
    assert_eq!(qfs_ok(&store, &["cat", "/f"]), "x");
}

#[test]
fn a_failed_background_mount_reports_why() {
    let d = tempfile::tempdir().unwrap();
    let mp = d.path().join("mnt");
    let log = d.path().join("mount.log");
    let m = Background::start(&[], &d.path().join("nothing-here"), &mp, &log, &[]);
    assert_eq!(m.out.status.code(), Some(2));
    let err = text(&m.out.stderr);
    assert!(
        err.contains("without mounting") && err.contains("nothing-here"),
        "{err}"
    );
    assert!(!mp.exists());
}

#[test]
fn a_non_empty_mount_point_is_refused_unless_asked() {
    let d = tempfile::tempdir().unwrap();
    let store = new_store(d.path());
    let mp = d.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    fs::write(mp.join("precious"), b"p").unwrap();
    for memory in [false, true] {
        let mut args = vec!["mount"];
        if memory {
            args.push("--memory");
        }
        let mpath = mp.to_str().unwrap();
        args.push(mpath);
        let o = qfs(&store, &args);
        assert_eq!(o.status.code(), Some(2));
        let err = text(&o.stderr);
        assert!(
            err.contains("not empty") && err.contains("--nonempty"),
            "{err}"
        );
        assert!(!is_mounted(&mp));
    }
    let log = d.path().join("mount.log");
    let m = Background::start(&[], &store, &mp, &log, &["--nonempty"]);
    assert!(m.ok(), "{}", text(&m.out.stderr));
    assert!(!mp.join("precious").exists());
    drop(m);
    assert_eq!(fs::read(mp.join("precious")).unwrap(), b"p");
}

#[test]
fn a_failed_mount_removes_the_mount_point_it_created() {
    // /dev/fuse replaced by /dev/null in a private mount namespace: the
    // kernel refuses the mount after the command created its mount point.
    let d = tempfile::tempdir().unwrap();
    let store = new_store(d.path());
    let mp = d.path().join("new/deeper/mnt");
    let script = format!(
        "mount --bind /dev/null /dev/fuse && exec {} --store {} mount {}",
        bin().display(),
        store.display(),
        mp.display()
    );
    let o =
        run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("mounting at"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        !d.path().join("new").exists(),
        "the created folders are left"
    );
    // A mount point that existed before is kept.
    fs::create_dir(d.path().join("mine")).unwrap();
    let script = format!(
        "mount --bind /dev/null /dev/fuse && exec {} --store {} mount --memory {}",
        bin().display(),
        store.display(),
        d.path().join("mine").display()
    );
    let o =
        run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    assert_eq!(o.status.code(), Some(2));
    assert!(d.path().join("mine").is_dir());
}

#[test]
fn mount_t_queryfs_and_an_fstab_line() {
    // In a private mount namespace: /usr/sbin overlaid with a folder that
    // holds the helper (mount(8) looks for /sbin/mount.TYPE only), and a
    // scratch fstab read with `mount -T`.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let store = new_store(dir);
    let helpers = dir.join("helpers");
    fs::create_dir(&helpers).unwrap();
    std::os::unix::fs::symlink(bin(), helpers.join("mount.queryfs")).unwrap();
    std::os::unix::fs::symlink(bin(), helpers.join("mount.fuse.queryfs")).unwrap();
    fs::create_dir(dir.join("m1")).unwrap();
    fs::create_dir(dir.join("m2")).unwrap();
    fs::write(
        dir.join("fstab"),
        format!(
            "# a scratch fstab\n{s} {m2} queryfs noauto,nofail,_netdev,user,x-systemd.automount,threads=2,log={d}/m2.log 0 0\n",
            s = store.display(),
            m2 = dir.join("m2").display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let script = format!(
        r#"set -e
D={d}
Q={q}
mount -t overlay overlay -o lowerdir=$D/helpers:/usr/sbin /usr/sbin
wait_released() {{ i=0; until $Q --store $D/store fsck >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 500 ] || exit 9; sleep 0.02; done; }}
mount -t queryfs $D/store $D/m1 -o allow_other,noauto,_netdev,nofail,comment=x,log=$D/m1.log
grep " $D/m1 " /proc/self/mounts
echo hello > $D/m1/a
umount $D/m1
wait_released
mount -t fuse.queryfs $D/store $D/m1 -o nodev,log=$D/m1.log
grep " $D/m1 " /proc/self/mounts
cat $D/m1/a
$Q umount $D/m1
mount -T $D/fstab $D/m2
grep " $D/m2 " /proc/self/mounts
cat $D/m2/a
$Q umount $D/m2
if mount -t queryfs $D/store $D/m1 -o bogus 2>$D/bogus.err; then exit 8; fi
cat $D/bogus.err
echo ALL-DONE
"#,
        d = dir.display(),
        q = bin().display()
    );
    let o =
        run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    let out = text(&o.stdout);
    let err = text(&o.stderr);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let m1 = format!(
        "{} {} fuse.queryfs ",
        store.display(),
        dir.join("m1").display()
    );
    assert!(
        lines[0].starts_with(&m1) && lines[0].contains("allow_other"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&m1) && lines[1].contains("nodev"),
        "{out}"
    );
    assert_eq!(lines[2], "hello");
    let m2 = format!(
        "{} {} fuse.queryfs ",
        store.display(),
        dir.join("m2").display()
    );
    // `user` means noexec,nosuid,nodev to mount(8), which passes them on.
    assert!(
        lines[3].starts_with(&m2) && lines[3].contains("noexec"),
        "{out}"
    );
    assert_eq!(lines[4], "hello");
    assert!(out.contains("unknown mount option bogus"), "{out}");
    assert!(out.ends_with("ALL-DONE\n"), "{out}");
    let log = fs::read_to_string(dir.join("m2.log")).unwrap();
    assert!(log.contains("mounted"), "{log}");
}

#[test]
fn unmounting_a_busy_mount_says_who_keeps_it_busy() {
    let d = tempfile::tempdir().unwrap();
    let store = new_store(d.path());
    let mp = d.path().join("mnt");
    let m = Background::start(&[], &store, &mp, &d.path().join("log"), &[]);
    assert!(m.ok(), "{}", text(&m.out.stderr));
    fs::create_dir(mp.join("deep")).unwrap();
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .current_dir(mp.join("deep"))
        .spawn()
        .unwrap();
    let o = run(Command::new(bin()).arg("umount").arg(&mp));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("busy"), "{err}");
    assert!(
        err.contains(&format!("pid {} (sleep)", sleeper.id())) && err.contains("/deep"),
        "{err}"
    );
    assert!(is_mounted(&mp));
    drop(m);
    assert!(!is_mounted(&mp));
}

#[test]
fn quiet_verbose_and_rust_log() {
    let d = tempfile::tempdir().unwrap();
    let store = new_store(d.path());
    let mp = d.path().join("mnt");
    // -q: nothing on stderr, nothing in the log.
    let log = d.path().join("q.log");
    let m = Background::start(&["-q"], &store, &mp, &log, &[]);
    assert!(m.ok());
    assert_eq!(text(&m.out.stderr), "");
    drop(m);
    assert_eq!(fs::read_to_string(&log).unwrap(), "");
    // Default: the progress lines, no log events below warn.
    let log = d.path().join("default.log");
    drop(Background::start(&[], &store, &mp, &log, &[]));
    let l = fs::read_to_string(&log).unwrap();
    assert!(l.contains("queryfs: mounted") && !l.contains("INFO"), "{l}");
    // -v: mount and unmount events at info.
    let log = d.path().join("v.log");
    drop(Background::start(&["-v"], &store, &mp, &log, &[]));
    let l = fs::read_to_string(&log).unwrap();
    assert!(l.contains(" INFO ") && l.contains("mounted"), "{l}");
    assert!(l.contains("unmounted") && !l.contains("DEBUG"), "{l}");
    // RUST_LOG: group commits and refused operations at debug; no colour
    // in the file.
    let log = d.path().join("debug.log");
    let out = run(Command::new(bin())
        .env("RUST_LOG", "queryfs=debug")
        .arg("--store")
        .arg(&store)
        .args(["mount", "--background"])
        .arg(&mp)
        .arg("--log-file")
        .arg(&log));
    assert!(out.status.success());
    let m = Background {
        mp: mp.clone(),
        out,
    };
    fs::write(mp.join("file"), b"data").unwrap();
    assert!(fs::metadata(mp.join("no-such-file")).is_err());
    let f = fs::File::open(mp.join("file")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    drop(m);
    let l = fs::read_to_string(&log).unwrap();
    assert!(l.contains("DEBUG") && l.contains("group commit"), "{l}");
    assert!(l.contains("errno=2"), "{l}");
    assert!(!l.contains('\x1b'), "escape codes in the log file:\n{l}");
    // QUERYFS_LOG wins over RUST_LOG, --log over both.
    let o = run(Command::new(bin())
        .env("RUST_LOG", "queryfs=trace")
        .env("QUERYFS_LOG", "queryfs=error")
        .arg("--store")
        .arg(&store)
        .arg("info"));
    assert!(o.status.success());
    assert!(!text(&o.stderr).contains("TRACE"), "{}", text(&o.stderr));
}

#[test]
fn man_pages_completions_and_version() {
    let d = tempfile::tempdir().unwrap();
    let man = d.path().join("man1");
    let o = run(Command::new(bin()).arg("man").arg(&man));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for page in [
        "queryfs.1",
        "queryfs-mount.1",
        "queryfs-umount.1",
        "queryfs-tag-add.1",
    ] {
        let t = fs::read_to_string(man.join(page)).unwrap_or_default();
        assert!(t.starts_with(".ie") || t.contains(".TH"), "{page}: {t}");
        assert!(t.len() > 200, "{page} is nearly empty");
    }
    let t = fs::read_to_string(man.join("queryfs-mount.1")).unwrap();
    assert!(t.contains("background") && t.contains("nonempty"), "{t}");
    for shell in ["bash", "zsh", "fish"] {
        let o = run(Command::new(bin()).args(["completions", shell]));
        assert!(o.status.success());
        let t = text(&o.stdout);
        assert!(
            t.len() > 1000 && t.contains("umount") && t.contains("--background"),
            "{shell}: {t}"
        );
    }
    let o = run(Command::new(bin()).arg("--version"));
    assert_eq!(
        text(&o.stdout),
        format!("queryfs {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        run(Command::new(bin()).args(["completions", "tcsh"]))
            .status
            .code()
            == Some(2)
    );
}

#[test]
fn the_tools_are_a_crate_apart() {
    // `cargo install --path .` installs the root package's binaries only.
    let manifest: String =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let bins = manifest.matches("[[bin]]").count();
    assert_eq!(bins, 1, "the root crate has one binary");
    assert!(
        manifest.contains("name = \"queryfs\"") && manifest.contains("default-members = [\".\"]")
    );
    // The test-built tool runs.
    let o = run(Command::new(tool("qfs-exercise")).arg("--help"));
    assert!(o.status.success() && text(&o.stdout).contains("qfs-exercise"));
}

#[test]
fn slow_queries_are_logged() {
    let d = tempfile::tempdir().unwrap();
    let store = new_store(d.path());
    // Runs into the 2 s budget, or finishes late: either way slow.
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 30000000) SELECT count(*) AS n FROM c";
    let o = qfs(&store, &["-v", "query", sql]);
    let err = text(&o.stderr);
    assert!(err.contains("slow query") && err.contains("ms="), "{err}");
    assert!(!err.contains('\x1b'), "colour in a pipe: {err}");
}
