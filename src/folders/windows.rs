//! Operations on virtual nodes that a window passes on to the real
//! directory it shows, and that every other virtual node refuses (but for
//! `/queries`, whose `user.query.NAME` xattrs are the saved queries):
//! making special files and symlinks, and extended attributes.

#[allow(unused_imports)]
use super::*;

/// The query an xattr name of `/queries` addresses: `user.query.NAME`.
fn query_attr(name: &[u8]) -> Result<&str> {
    name.strip_prefix(b"user.query.")
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or(FsError::NotSupported)
}

impl Folders {
    /// mknod in a virtual folder: in a window, made in the real directory;
    /// a regular file made by mknod in a tag folder (`tar -x` does so for
    /// files with xattrs) is a create there; anything else is refused.
    pub fn v_mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr> {
        let k = crate::vfs::mknod_kind(mode)?;
        crate::vfs::check_name(name)?;
        if let Some(d) = self.window_dir(parent) {
            let i = self.core.mknod(d, name, mode, rdev, caller)?;
            self.changed_behind_kernel(d, name);
            return Ok(i);
        }
        if k != FileKind::File {
            return Err(FsError::NotPermitted);
        }
        let (i, fh) = self.v_create(parent, name, mode & 0o7777, caller)?;
        self.core.release(fh)?;
        Ok(i)
    }

    /// symlink in a virtual folder: only a window makes one (in its real
    /// directory).
    pub fn v_symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr> {
        if target.is_empty() || target.len() > 4095 {
            return Err(FsError::Invalid(
                "a symlink target is 1 to 4095 bytes".into(),
            ));
        }
        crate::vfs::check_name(name)?;
        let d = self.window_dir(parent).ok_or(FsError::NotPermitted)?;
        let i = self.core.symlink(d, name, target, caller)?;
        self.changed_behind_kernel(d, name);
        Ok(i)
    }

    /// `setfattr -n user.query.NAME -v SQL /queries` saves query NAME
    /// (XATTR_CREATE: only if there is none), so that a mounted store's
    /// queries can be saved through the mount.
    fn set_query_attr(&self, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let n = query_attr(name)?;
        let sql = std::str::from_utf8(value)
            .map_err(|_| FsError::Invalid("a query must be UTF-8".into()))?;
        let exists = self.core.queries()?.iter().any(|(q, _, _)| q == n);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        self.core.save_query(n, sql).inspect_err(|e| {
            tracing::warn!("saving query {n:?} through /queries: {e}");
        })
    }

    pub fn v_setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if is_queries_root(ino) {
            return self.set_query_attr(name, value, flags);
        }
        match self.window_dir(ino) {
            Some(d) => self.core.setxattr(d, name, value, flags),
            None => Err(FsError::NotSupported),
        }
    }

    pub fn v_getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if let Some(d) = self.window_dir(ino) {
            return self.core.getxattr(d, name);
        }
        crate::vfs::Fs::check_xattr_name(name)?;
        if is_queries_root(ino) {
            let n = query_attr(name).map_err(|_| FsError::NoAttr)?;
            return self
                .core
                .queries()?
                .into_iter()
                .find(|(q, _, _)| q == n)
                .map(|(_, sql, _)| sql.into_bytes())
                .ok_or(FsError::NoAttr);
        }
        Err(FsError::NoAttr)
    }

    pub fn v_listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        match self.window_dir(ino) {
            Some(d) => self.listxattr_real(d),
            None => Ok(Vec::new()),
        }
    }

    /// listxattr of a real node: the tags a file was placed with are left
    /// out while it lives in /inbox (see [`Folders::lives_in_inbox`]).
    pub fn listxattr_real(&self, ino: u64) -> Result<Vec<u8>> {
        self.core.listxattr(ino, &|i| self.lives_in_inbox(i))
    }

    pub fn v_removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        if let Some(d) = self.window_dir(ino) {
            return self.core.removexattr(d, name);
        }
        crate::vfs::Fs::check_xattr_name(name)?;
        if is_queries_root(ino) {
            let n = query_attr(name).map_err(|_| FsError::NoAttr)?;
            return self.core.delete_query(n).map_err(|e| match e {
                FsError::NotFound => FsError::NoAttr,
                e => e,
            });
        }
        Err(FsError::NoAttr)
    }
}
