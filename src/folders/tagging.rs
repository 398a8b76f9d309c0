//! Tagging files on behalf of a folder, and changes of the real tree made for one (with the kernel told).

#[allow(unused_imports)]
use super::*;

impl Folders {
    /// What putting a file into a folder of `terms` sets: every positive
    /// term must be a plain tag or `tag=value`.
    pub(super) fn settable(terms: &[Term]) -> Result<Vec<(String, Option<String>)>> {
        let mut set = Vec::new();
        for t in terms {
            match (t.negated, t.any.as_slice()) {
                (true, _) => {}
                (false, [query::Atom::Tag(n)]) => set.push((n.clone(), None)),
                (false, [query::Atom::Cmp(n, query::Op::Eq, v)]) => {
                    set.push((n.clone(), Some(v.clone())))
                }
                _ => {
                    tracing::warn!(
                        "cannot put a file into {t:?}: only plain tags and tag=value are settable"
                    );
                    return Err(FsError::NotPermitted);
                }
            }
        }
        if set.is_empty() {
            return Err(FsError::NotPermitted);
        }
        Ok(set)
    }

    /// Tags `ino` so that it matches `terms` (each positive term must say
    /// what to set: a tag, or `tag=value`).
    /// A file living only in /inbox (made through a tag folder) gets them
    /// as placed tags, numbered along the folder's path.
    pub(super) fn tag_into(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let set = Self::settable(terms)?;
        let placed = self.lives_in_inbox(&self.core.getattr(ino)?)?;
        let now = crate::vfs::now_ns();
        self.tx(|m| {
            let mut i = self.inode(m, ino)?;
            for (k, (n, v)) in set.iter().enumerate() {
                if placed {
                    m.place_file_tag(ino, n, v.as_deref(), k as u32 + 1, now)?;
                } else {
                    m.set_file_tag(ino, n, v.as_deref(), now)?;
                }
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Gives `ino` every tag of `from` (with its value), and the user
    /// xattrs of `from` that `ino` lacks: a file that takes another's place
    /// keeps what was said about it.
    pub(super) fn inherit(&self, ino: u64, from: u64) -> Result<()> {
        let said = self.said_about(from)?;
        self.take_said(ino, said)
    }

    /// The tags (with values and placed positions) and user xattrs of
    /// `ino`; nothing for a file that is gone.
    pub(super) fn said_about(&self, ino: u64) -> Result<Said> {
        let m = self.meta();
        if m.inode(ino)?.is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        let tags = m.file_tags_placed(ino)?;
        let mut xattrs = Vec::new();
        for n in m.xattr_names(ino)? {
            if let Some(v) = m.xattr(ino, &n)? {
                xattrs.push((n, v));
            }
        }
        Ok((tags, xattrs))
    }

    /// Gives `ino` the tags of `said`, and its xattrs that `ino` lacks.
    pub(super) fn take_said(&self, ino: u64, said: Said) -> Result<()> {
        let (tags, xattrs) = said;
        if tags.is_empty() && xattrs.is_empty() {
            return Ok(());
        }
        let now = crate::vfs::now_ns();
        let placed = self.lives_in_inbox(&self.core.getattr(ino)?)?;
        self.tx(|m| {
            let mut i = self.inode(m, ino)?;
            for (n, v, at) in &tags {
                if placed && *at > 0 {
                    m.place_file_tag(ino, n, v.as_deref(), *at, now)?;
                } else {
                    m.set_file_tag(ino, n, v.as_deref(), now)?;
                }
            }
            for (n, v) in &xattrs {
                if m.xattr(ino, n)?.is_none() {
                    m.set_xattr(ino, n, v)?;
                }
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Removes the tags of the innermost term of a folder from `ino`.
    pub(super) fn untag_from(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let last = terms.last().ok_or(FsError::NotPermitted)?;
        if last.negated {
            return Err(FsError::NotPermitted);
        }
        self.untag(ino, &[last])
    }

    /// Removes the tags of the first positive term of a folder from `ino`
    /// (`x` of `/by-tag/x/family/`): what `rm` and `mv` out take away, so
    /// that `rm -r /by-tag/x` or `rsync --delete SRC/ /by-tag/x/` only
    /// ever take away `x`, never a tag of a sub-folder they walk through.
    pub(super) fn untag_first(&self, ino: u64, terms: &[Term]) -> Result<()> {
        let first = terms
            .iter()
            .find(|t| !t.negated)
            .ok_or(FsError::NotPermitted)?;
        self.untag(ino, &[first])
    }

    /// Whether every name of `i` lies in /inbox (or a slot): a file that
    /// exists because a tag folder made it.
    pub fn lives_in_inbox(&self, i: &Attr) -> Result<bool> {
        if i.is_dir() {
            return self.made_in_folder(i.ino);
        }
        if i.nlink == 0 {
            return Ok(false);
        }
        Ok(self.inbox_names(i.ino)?.len() == i.nlink as usize)
    }

    /// Removes the tags of `terms` from `ino`.
    pub(super) fn untag(&self, ino: u64, terms: &[&Term]) -> Result<()> {
        let now = crate::vfs::now_ns();
        self.tx(|m| {
            let mut i = self.inode(m, ino)?;
            for t in terms.iter().filter(|t| !t.negated) {
                for a in &t.any {
                    m.delete_file_tag(ino, a.tag())?;
                }
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Reports `name` in real directory `parent` as changed behind the
    /// kernel's back.
    ///
    /// The request waits (up to [`INVAL_WAIT`]) until the kernel has
    /// dropped the name, so that the caller's next call cannot find the
    /// stale one: a write to the old name of a file renamed through a folder
    /// must not land in the renamed file. A name in a directory of the
    /// request itself is dropped after the reply (the kernel holds that
    /// directory's lock until then), and so is every name when the kernel
    /// is slow to take the lock (another request holds it).
    pub(crate) fn changed_behind_kernel(&self, parent: u64, name: &[u8]) {
        let (a, b) = REQUEST_DIRS.with(|c| c.get());
        self.report_name(parent, name, parent != a && parent != b);
    }

    /// Reports a changed name, waiting for the kernel if `wait`.
    pub fn report_name(&self, parent: u64, name: &[u8], wait: bool) {
        let Some(tx) = self.virt.changed.lock().clone() else {
            return;
        };
        if wait {
            let (ack, done) = std::sync::mpsc::sync_channel(1);
            if tx.send((parent, name.to_vec(), Some(ack))).is_ok() {
                let _ = done.recv_timeout(INVAL_WAIT);
            }
        } else {
            let _ = tx.send((parent, name.to_vec(), None));
        }
    }

    /// A rename moved real directory `ino` into tag folder `folder` as
    /// `name`: the kernel moves its cached name there after the reply. That
    /// name is dropped right after the reply, and lookups by the real path
    /// wait for it ([`Fs::wait_moved`]).
    pub(super) fn moved_into_folder(&self, ino: u64, folder: u64, name: &[u8]) {
        let Some(tx) = self.virt.changed.lock().clone() else {
            return;
        };
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if tx.send((folder, name.to_vec(), Some(ack))).is_err() {
            return;
        }
        self.virt.moved.0.lock().insert(ino);
        let moved = self.virt.moved.clone();
        let spawned = std::thread::Builder::new()
            .name("queryfs-moved".into())
            .spawn(move || {
                let _ = done.recv_timeout(INVAL_WAIT);
                moved.0.lock().remove(&ino);
                moved.1.notify_all();
            });
        if spawned.is_err() {
            self.virt.moved.0.lock().remove(&ino);
        }
    }

    /// Waits (at most [`INVAL_WAIT`]) until the kernel's name of directory
    /// `ino` in a tag folder, left there by a rename into the folder, is
    /// dropped.
    pub fn wait_moved(&self, ino: u64) {
        let (set, cv) = &*self.virt.moved;
        let mut m = set.lock();
        let until = std::time::Instant::now() + INVAL_WAIT;
        while m.contains(&ino) {
            if cv.wait_until(&mut m, until).timed_out() {
                break;
            }
        }
    }

    /// Where real names changed on behalf of query folders are reported:
    /// the kernel caches real names for a second and saw only the folder's
    /// side of such an operation, so the mount drops each reported name
    /// from the kernel's cache (from another thread: the kernel may hold
    /// the directory's lock until the reply of the running request).
    /// `None` stops the reports.
    pub fn on_real_names_changed(&self, tx: Option<NameReports>) {
        *self.virt.changed.lock() = tx;
    }

    /// Where the store is mounted (see [`Virt::mountpoint`]).
    pub fn set_mountpoint(&self, path: &std::path::Path) {
        use std::os::unix::ffi::OsStrExt;
        *self.virt.mountpoint.lock() = Some(path.as_os_str().as_bytes().to_vec());
    }

    pub(super) fn real_rename(
        &self,
        p: u64,
        n: &[u8],
        np: u64,
        nn: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.core.rename(p, n, np, nn, flags)?;
        self.changed_behind_kernel(p, n);
        self.changed_behind_kernel(np, nn);
        Ok(())
    }

    pub(super) fn real_unlink(&self, p: u64, n: &[u8]) -> Result<()> {
        self.core.unlink(p, n)?;
        self.changed_behind_kernel(p, n);
        Ok(())
    }

    pub(super) fn real_rmdir(&self, p: u64, n: &[u8]) -> Result<()> {
        self.core.rmdir(p, n)?;
        self.changed_behind_kernel(p, n);
        Ok(())
    }

    pub(super) fn real_create(
        &self,
        p: u64,
        n: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        let r = self.core.create(p, n, perm, caller)?;
        self.changed_behind_kernel(p, n);
        Ok(r)
    }

    pub(super) fn real_link(&self, ino: u64, p: u64, n: &[u8]) -> Result<Attr> {
        let r = self.core.link(ino, p, n)?;
        self.changed_behind_kernel(p, n);
        Ok(r)
    }

    pub(super) fn real_mkdir(&self, p: u64, n: &[u8], perm: u32, caller: Caller) -> Result<Attr> {
        let r = self.core.mkdir(p, n, perm, caller)?;
        self.changed_behind_kernel(p, n);
        Ok(r)
    }
}
