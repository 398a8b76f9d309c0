//! Commands that change a mounted store, carried out through the mount.
//!
//! A store has one writer. When a command that changes the store finds it
//! locked by a mount, it does not write beside it: it finds the mount
//! point (in `/proc/self/mountinfo`, whose source is the store folder, or
//! in the lock's "mounted at ..." line) and performs the change with
//! ordinary system calls on the mount (`put` copies files in, `rm`
//! unlinks, `mv` renames, `tag` sets `user.tag.*` xattrs, `query save`
//! sets `user.query.NAME` on `/queries`). The kernel checks the caller's
//! permissions as for any program, the mount stays the only writer, and
//! the change is visible through the mount at once.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use queryfs::store::{self, Access, Store, StoreError};

/// Where a command that changes the store does its work.
pub enum Target {
    /// The store itself (not mounted): the command holds the lock.
    Store(Store),
    /// The store is mounted here: the command works through the mount.
    Mount(PathBuf),
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// One line of `/proc/self/mountinfo`: (mount point, fs type, source),
/// as bytes (mount points need not be UTF-8).
pub fn mounts() -> Vec<(PathBuf, Vec<u8>, Vec<u8>)> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.split(|&c| c == b'\n') {
        let Some(sep) = line.windows(3).position(|w| w == b" - ") else {
            continue;
        };
        let (left, right) = (&line[..sep], &line[sep + 3..]);
        let Some(point) = left.split(|&c| c == b' ').nth(4) else {
            continue;
        };
        let mut r = right.split(|&c| c == b' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        out.push((
            PathBuf::from(OsStr::from_bytes(&unescape(point))),
            fstype.to_vec(),
            unescape(source),
        ));
    }
    out
}

fn is_fuse(fstype: &[u8]) -> bool {
    fstype == b"fuse" || fstype == b"fuse.queryfs"
}

/// The mount point of store `dir`, if it is mounted (the last mount of it,
/// as the kernel lists them), given the lock holder's `purpose`.
pub fn mount_point(dir: &Path, purpose: &str) -> Option<PathBuf> {
    let canon = dir.canonicalize().ok()?;
    let all = mounts();
    let by_source = all
        .iter()
        .rev()
        .find(|(_, t, s)| is_fuse(t) && s.as_slice() == canon.as_os_str().as_bytes())
        .map(|(p, _, _)| p.clone());
    if by_source.is_some() {
        return by_source;
    }
    // A store folder whose name cannot be the mount's source is mounted
    // as "queryfs": the lock names the mount point.
    let at = PathBuf::from(purpose.strip_prefix("mounted at ")?);
    all.iter()
        .any(|(p, t, _)| is_fuse(t) && *p == at)
        .then_some(at)
}

/// Opens the store to change it, or finds the mount that holds it.
pub fn open(dir: &Path, what: &str) -> anyhow::Result<Target> {
    match store::open(
        dir,
        Access::Write {
            purpose: format!("queryfs {what}"),
            recover: true,
        },
        false,
    ) {
        Ok(s) => Ok(Target::Store(s)),
        Err(StoreError::Busy {
            dir: d,
            pid,
            purpose,
        }) => match mount_point(dir, &purpose) {
            Some(mp) => {
                tracing::info!(
                    "store {d} is mounted at {}: {what} goes through the mount",
                    mp.display()
                );
                Ok(Target::Mount(mp))
            }
            None => Err(StoreError::Busy {
                dir: d,
                pid,
                purpose,
            }
            .into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The path under mount point `mp` of store path `p` (`/a/b` or `a/b`).
pub fn on_mount(mp: &Path, p: &[u8]) -> PathBuf {
    let rel: Vec<u8> = p.iter().copied().skip_while(|&c| c == b'/').collect();
    if rel.is_empty() {
        mp.to_path_buf()
    } else {
        mp.join(OsStr::from_bytes(&rel))
    }
}

/// The refusal of a command the mount cannot do for the caller.
pub fn refuse(dir: &Path, what: &str, mp: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs the store {} unmounted (it is mounted at {}); run `queryfs umount {}` first, then `queryfs --store {} {what}`",
        dir.display(),
        mp.display(),
        mp.display(),
        dir.display()
    )
}

/// A store error of a command that needs the store itself: when the store
/// is mounted, says so and how to run the command.
pub fn busy(dir: &Path, what: &str, e: StoreError) -> anyhow::Error {
    if let StoreError::Busy { purpose, .. } = &e {
        if let Some(mp) = mount_point(dir, purpose) {
            return refuse(dir, what, &mp);
        }
    }
    e.into()
}

/// An io error as the CLI shows it: its message without "(os error N)".
pub fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    // Lower case, as the store's own messages ("no such file or directory").
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape() {
        assert_eq!(super::unescape(br"/a\040b\134c"), b"/a b\\c".to_vec());
        assert_eq!(super::unescape(br"/x\04"), br"/x\04".to_vec());
    }
}
