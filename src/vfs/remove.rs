//! Namespace: removing and renaming.

#[allow(unused_imports)]
use super::*;

/// The checks of a rename's arguments that hold wherever it goes: the new
/// name, and the flags (RENAME_NOREPLACE or RENAME_EXCHANGE, not both).
pub fn check_rename(newname: &[u8], flags: u32) -> Result<()> {
    check_name(newname)?;
    let noreplace = flags & libc::RENAME_NOREPLACE != 0;
    let exchange = flags & libc::RENAME_EXCHANGE != 0;
    if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange) {
        return Err(FsError::Invalid("unsupported rename flags".into()));
    }
    Ok(())
}

impl Fs {
    /// Deletes an inode's content, xattrs and row. Its clusters go to `frees`.
    pub(super) fn purge(
        &self,
        m: &dyn MetaStore,
        ino: u64,
        frees: &mut Vec<BlobLoc>,
    ) -> Result<()> {
        for h in m.chunk_hashes(ino)? {
            if let Some(Some(loc)) = m.decref(&h)? {
                frees.push(loc);
            }
        }
        m.delete_all_chunks(ino)?;
        m.delete_inode_row(ino)?;
        Ok(())
    }

    /// Drops one name of a non-directory; deletes it when it was the last
    /// name and nobody has it open.
    pub(super) fn drop_link(
        &self,
        m: &dyn MetaStore,
        mut i: Attr,
        now: i64,
        frees: &mut Vec<BlobLoc>,
    ) -> Result<()> {
        i.nlink = i.nlink.saturating_sub(1);
        i.ctime = now;
        if i.nlink == 0 && !self.open.lock().contains_key(&i.ino) {
            self.purge(m, i.ino, frees)
        } else {
            // Still named elsewhere, or open: the last release deletes it.
            Ok(m.update_inode(&i)?)
        }
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        if is_reserved(parent, name) {
            return Err(FsError::IsDir);
        }
        let now = now_ns();
        self.tx(|m, frees| {
            let mut p = self.dir(m, parent)?;
            let i = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
            if i.is_dir() {
                return Err(FsError::IsDir);
            }
            m.delete_dentry(parent, name)?;
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            self.drop_link(m, i, now, frees)
        })
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("cannot remove '.'".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        if is_reserved(parent, name) {
            return Err(FsError::Busy);
        }
        let now = now_ns();
        self.tx(|m, frees| {
            let mut p = self.dir(m, parent)?;
            let d = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
            if !d.is_dir() {
                return Err(FsError::NotDir);
            }
            if m.dir_has_entries(d.ino)? {
                return Err(FsError::NotEmpty);
            }
            m.delete_dentry(parent, name)?;
            p.nlink = p.nlink.saturating_sub(1);
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            self.purge(m, d.ino, frees)
        })
    }

    /// True when `ino` is `ancestor` or lies below it.
    pub(super) fn is_within(&self, m: &dyn MetaStore, mut ino: u64, ancestor: u64) -> Result<bool> {
        let mut steps = 0;
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            match m.parent_of(ino)? {
                Some((p, _)) => ino = p,
                None => return Ok(false),
            }
            steps += 1;
            if steps > 1 << 16 {
                return Err(FsError::Corrupt("directory parents loop".into()));
            }
        }
    }

    /// rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_rename(newname, flags)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if is_reserved(parent, name) || is_reserved(newparent, newname) {
            return Err(FsError::Busy);
        }
        let now = now_ns();
        self.tx(|m, frees| {
            self.dir(m, parent)?;
            self.dir(m, newparent)?;
            let mut src = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
            let dst = m.lookup(newparent, newname)?;
            if exchange {
                let mut dst = dst.ok_or(FsError::NotFound)?;
                if src.is_dir() && self.is_within(m, newparent, src.ino)? {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                if dst.is_dir() && self.is_within(m, parent, dst.ino)? {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                m.set_dentry_ino(parent, name, dst.ino)?;
                m.set_dentry_ino(newparent, newname, src.ino)?;
                if parent != newparent && src.is_dir() != dst.is_dir() {
                    let (mut gains, mut loses) =
                        (self.inode(m, parent)?, self.inode(m, newparent)?);
                    if src.is_dir() {
                        std::mem::swap(&mut gains, &mut loses);
                    }
                    gains.nlink += 1;
                    loses.nlink = loses.nlink.saturating_sub(1);
                    m.update_inode(&gains)?;
                    m.update_inode(&loses)?;
                }
                src.ctime = now;
                dst.ctime = now;
                m.update_inode(&src)?;
                m.update_inode(&dst)?;
            } else {
                if let Some(d) = dst {
                    if noreplace {
                        return Err(FsError::Exists);
                    }
                    if d.ino == src.ino {
                        return Ok(()); // two names of one file: nothing to do
                    }
                    match (src.is_dir(), d.is_dir()) {
                        (true, false) => return Err(FsError::NotDir),
                        (false, true) => return Err(FsError::IsDir),
                        _ => {}
                    }
                    if src.is_dir() && self.is_within(m, newparent, src.ino)? {
                        return Err(FsError::Invalid(
                            "cannot move a directory into itself".into(),
                        ));
                    }
                    if d.is_dir() {
                        if m.dir_has_entries(d.ino)? {
                            return Err(FsError::NotEmpty);
                        }
                        m.delete_dentry(newparent, newname)?;
                        let mut np = self.inode(m, newparent)?;
                        np.nlink = np.nlink.saturating_sub(1);
                        m.update_inode(&np)?;
                        self.purge(m, d.ino, frees)?;
                    } else {
                        m.delete_dentry(newparent, newname)?;
                        self.drop_link(m, d, now, frees)?;
                    }
                } else if src.is_dir() && self.is_within(m, newparent, src.ino)? {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                m.delete_dentry(parent, name)?;
                m.insert_dentry(newparent, newname, src.ino)?;
                if src.is_dir() && parent != newparent {
                    let mut op = self.inode(m, parent)?;
                    op.nlink = op.nlink.saturating_sub(1);
                    m.update_inode(&op)?;
                    let mut np = self.inode(m, newparent)?;
                    np.nlink += 1;
                    m.update_inode(&np)?;
                }
                src = self.inode(m, src.ino)?;
                src.ctime = now;
                m.update_inode(&src)?;
            }
            for p in [parent, newparent] {
                let mut d = self.inode(m, p)?;
                d.mtime = now;
                d.ctime = now;
                m.update_inode(&d)?;
            }
            Ok(())
        })
    }
}
