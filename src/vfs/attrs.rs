//! Attributes: setattr, access checks, statfs.

#[allow(unused_imports)]
use super::*;

impl Fs {
    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr> {
        let now = now_ns();
        if let Some(size) = set.size {
            if size > FILE_MAX {
                return Err(FsError::TooBig);
            }
        }
        let t = |s: SetTime| match s {
            SetTime::Now => now,
            SetTime::At(v) => v,
        };
        let change = AttrChange {
            perm: set.mode.map(|m| m & 0o7777),
            uid: set.uid,
            gid: set.gid,
            atime: set.atime.map(t),
            mtime: set.mtime.map(t),
            btime: set.btime,
            ctime: Some(set.ctime.unwrap_or(now)),
        };
        // The open state of the file, held for the whole change: a truncate
        // needs it, and the change must not race the file's own commits.
        let of = match set.size {
            Some(_) => Some(self.acquire(ino)?),
            None => self.open.lock().get(&ino).cloned().inspect(|o| {
                o.opens.fetch_add(1, Ordering::AcqRel);
            }),
        };
        let Some(of) = of else {
            let i = self.tx(|m, _| {
                let mut i = self.inode(m, ino)?;
                change.apply(&mut i);
                m.update_inode(&i)?;
                Ok(i)
            })?;
            return Ok(self.overlay(i));
        };
        // An open file: the change joins its uncommitted state. While another
        // handle has unsaved writes, it is saved with them (at their flush,
        // fsync or close); otherwise it is committed now, in one transaction
        // with anything pending.
        let result = (|| -> Result<()> {
            let mut st = self.data_mut(&of)?;
            let others = of.opens.load(Ordering::Acquire) > 1;
            let defer = others && st.unsaved(&of);
            // A truncate sets mtime and ctime even when the size does not
            // change, as ext4 and tmpfs do for truncate(2), ftruncate(2) and
            // O_TRUNC (the kernel sends FUSE no time with any of them).
            if let Some(size) = set.size {
                self.truncate_locked(&of, &mut st, size, now);
            }
            {
                let mut a = of.attrs.lock();
                a.merge(&change);
                if let Some(m) = change.mtime {
                    st.mtime = m;
                    of.mtime.store(m, Ordering::Release);
                }
            }
            if !defer {
                self.commit_locked(&of, &mut st)?;
            }
            Ok(())
        })();
        self.release_file(of, false)?;
        result?;
        self.getattr(ino)
    }

    pub fn access(&self, ino: u64, mask: i32, caller: Caller) -> Result<()> {
        check_access(&self.getattr(ino)?, mask, caller)
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let (files, _) = {
            let s = self.meta().stats()?;
            (s.files + s.dirs, s.blobs)
        };
        // Inodes are rows: as many are free as the disk could hold rows
        // for; report the disk's own free inode count when it has one, and
        // keep total = used + free.
        let mut out = StatFs {
            bsize: 4096,
            namelen: NAME_MAX as u32,
            files,
            ffree: 1 << 32,
            ..Default::default()
        };
        if let Some(v) = self.room.as_ref().and_then(|r| r.space()) {
            out.blocks = v.total / 4096;
            out.bfree = v.free / 4096;
            out.bavail = v.avail / 4096;
            if let Some(f) = v.files_free.filter(|&f| f > 0) {
                out.ffree = f;
            }
        }
        out.files += out.ffree;
        Ok(out)
    }
}

/// access(2) of a node with attributes `i`.
pub fn check_access(i: &Attr, mask: i32, caller: Caller) -> Result<()> {
    if mask == libc::F_OK {
        return Ok(());
    }
    let bits = if caller.uid == 0 {
        // Root may read and write anything, and execute what anyone may.
        let x = if i.is_dir() || i.perm & 0o111 != 0 {
            1
        } else {
            0
        };
        6 | x
    } else if caller.uid == i.uid {
        (i.perm >> 6) & 7
    } else if caller.gid == i.gid {
        (i.perm >> 3) & 7
    } else {
        i.perm & 7
    };
    if (mask as u32) & !bits & 7 != 0 {
        return Err(FsError::Access);
    }
    Ok(())
}
