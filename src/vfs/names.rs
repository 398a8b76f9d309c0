//! Namespace: finding files by name and path, and making them.

#[allow(unused_imports)]
use super::*;

impl Fs {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let m = self.meta();
        if test_panic_name() == Some(name) {
            panic!(
                "test fault hook: lookup of {:?}",
                String::from_utf8_lossy(name)
            );
        }
        self.dir(&*m, parent)?;
        let attr = m.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        // Under the metadata lock: a commit of the file cannot slip between
        // reading its row and applying its open state.
        Ok(self.overlay(attr))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let of = self.open.lock().get(&ino).cloned();
        if let Some(of) = of {
            let hit = of.cached.lock().clone();
            let attr = match hit {
                Some((g, a)) if g == self.generation.load(Ordering::Acquire) => a,
                _ => {
                    let m = self.meta();
                    let g = self.generation.load(Ordering::Acquire);
                    let a = self.inode(&*m, ino).map_err(stale)?;
                    *of.cached.lock() = Some((g, a.clone()));
                    a
                }
            };
            return Ok(of.overlay(attr));
        }
        let m = self.meta();
        let attr = self.inode(&*m, ino).map_err(stale)?;
        Ok(self.overlay(attr))
    }

    /// Resolves a path relative to the root ("/a/b" or "a/b").
    pub fn resolve(&self, path: &str) -> Result<Attr> {
        self.resolve_bytes(path.as_bytes())
    }

    /// Resolves a path of any bytes (names need not be UTF-8).
    pub fn resolve_bytes(&self, path: &[u8]) -> Result<Attr> {
        let mut cur = self.getattr(ROOT)?;
        for part in path
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            if part == b".." {
                let parent = self
                    .meta()
                    .parent_of(cur.ino)?
                    .map(|(p, _)| p)
                    .unwrap_or(ROOT);
                cur = self.getattr(parent)?;
                continue;
            }
            if !cur.is_dir() {
                return Err(FsError::NotDir);
            }
            cur = self.lookup(cur.ino, part)?;
        }
        Ok(cur)
    }

    /// The path of an inode (one of its names), for messages.
    pub fn path_of(&self, ino: u64) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.path_bytes(ino)?).into_owned())
    }

    /// The path of an inode (one of its names), as the bytes it is.
    pub fn path_bytes(&self, ino: u64) -> Result<Vec<u8>> {
        let m = self.meta();
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut steps = 0;
        while cur != ROOT {
            let (p, name) = m.parent_of(cur)?.ok_or(FsError::NotFound)?;
            parts.push(name);
            cur = p;
            steps += 1;
            if steps > 4096 {
                return Err(FsError::Corrupt(format!("inode {ino}: parent chain loops")));
            }
        }
        parts.reverse();
        let mut out = Vec::new();
        for p in parts {
            out.push(b'/');
            out.extend_from_slice(&p);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        Ok(out)
    }

    pub(super) fn new_node(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> Result<Attr> {
        self.new_node_at(parent, name, mode, rdev, target, caller)
            .map(|(i, _)| i)
    }

    /// Creates a node; returns it and the generation its row is current for.
    pub(super) fn new_node_at(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        check_name(name)?;
        if is_reserved(parent, name) {
            return Err(FsError::Exists);
        }
        let now = now_ns();
        self.tx(|m, _| {
            let mut p = self.dir(m, parent)?;
            if m.lookup(parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let k = FileKind::from_bits(mode).ok_or_else(|| {
                FsError::Invalid(format!("{:#o} is not the mode of a file kind", mode))
            })?;
            let mut perm = mode & 0o7777;
            // BSD group semantics under a set-group-id directory.
            let gid = if p.perm & libc::S_ISGID != 0 {
                if k == FileKind::Dir {
                    perm |= libc::S_ISGID;
                }
                p.gid
            } else {
                caller.gid
            };
            let node = m.insert_inode(&NewInode {
                kind: k,
                perm,
                uid: caller.uid,
                gid,
                rdev,
                nlink: if k == FileKind::Dir { 2 } else { 1 },
                now,
                target,
                chash: (k == FileKind::File).then(|| content_id(&[], 0)),
            })?;
            m.insert_dentry(parent, name, node.ino)?;
            if k == FileKind::Dir {
                p.nlink += 1;
            }
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            Ok((node, self.generation_after_tx()))
        })
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr> {
        let k = mknod_kind(mode)?;
        self.new_node(parent, name, k | (mode & 0o7777), rdev, None, caller)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<Attr> {
        self.new_node(
            parent,
            name,
            FileKind::Dir | (perm & 0o7777),
            0,
            None,
            caller,
        )
    }

    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> Result<Attr> {
        if target.is_empty() || target.len() > 4095 {
            return Err(FsError::Invalid(
                "a symlink target is 1 to 4095 bytes".into(),
            ));
        }
        self.new_node(
            parent,
            name,
            FileKind::Symlink | 0o777,
            0,
            Some(target),
            caller,
        )
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let m = self.meta();
        let i = self.inode(&*m, ino)?;
        if i.kind != FileKind::Symlink {
            return Err(FsError::Invalid("not a symbolic link".into()));
        }
        m.symlink_target(ino)?
            .ok_or(FsError::Corrupt(format!("symlink {ino} has no target")))
    }

    /// Creates a regular file and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        let (attr, g) = self.new_node_at(
            parent,
            name,
            FileKind::File | (perm & 0o7777),
            0,
            None,
            caller,
        )?;
        // A new file has no content to load.
        let of = self.install(&attr, Vec::new());
        *of.cached.lock() = Some((g, attr.clone()));
        let fh = self.new_fh(Handle::File(of));
        Ok((attr, fh))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        check_name(newname)?;
        if is_reserved(newparent, newname) {
            return Err(FsError::Exists);
        }
        let now = now_ns();
        let attr = self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            if i.is_dir() {
                return Err(FsError::NotPermitted);
            }
            if i.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if i.nlink >= 65000 {
                return Err(FsError::TooManyLinks);
            }
            let mut p = self.dir(m, newparent)?;
            if m.lookup(newparent, newname)?.is_some() {
                return Err(FsError::Exists);
            }
            m.insert_dentry(newparent, newname, ino)?;
            i.nlink += 1;
            i.ctime = now;
            m.update_inode(&i)?;
            p.mtime = now;
            p.ctime = now;
            m.update_inode(&p)?;
            Ok(i)
        })?;
        Ok(self.overlay(attr))
    }
}

/// The kind of node mknod(2) makes of `mode` (no type bits: a regular
/// file): files, FIFOs, sockets and devices, nothing else.
pub fn mknod_kind(mode: u32) -> Result<FileKind> {
    let k = if mode & libc::S_IFMT == 0 {
        FileKind::File
    } else {
        FileKind::from_bits(mode).ok_or_else(|| {
            FsError::Invalid(format!("{:#o} is not the mode of a file kind", mode))
        })?
    };
    if ![
        FileKind::File,
        FileKind::Fifo,
        FileKind::Socket,
        FileKind::Char,
        FileKind::Block,
    ]
    .contains(&k)
    {
        return Err(FsError::Invalid(
            "mknod makes files, FIFOs, sockets and devices".into(),
        ));
    }
    Ok(k)
}
