//! The mounted tree: where a request enters.
//!
//! A mount shows two things under one root: the real tree (the core,
//! [`Fs`]) and the query folders beside it ([`Folders`]). Each request is
//! sent to one of them here, once, by the inode numbers it names: a
//! virtual number ([`Ino::is_virtual`]) goes to the folders, a real one to
//! the core, and the root's reserved names (`/by-tag`, `/sql`, `/queries`)
//! are looked up in the folders. Neither side checks again: the core never
//! sees a virtual number, and the folders reach the core only through its
//! port ([`crate::folders::Tree`]).
//!
//! Operations on open handles (read, write, flush, fsync, readdir pages)
//! go to the core, whose one handle table serves both sides.

use std::sync::Arc;

use crate::error::{FsError, Result};
use crate::folders::Folders;
use crate::types::{Attr, Ino};
use crate::vfs::{self, Caller, DirEntry, Fs, SetAttr, StatFs, NAME_MAX, ROOT};

/// The real tree and the query folders, as one mounted tree.
pub struct View {
    core: Arc<Fs>,
    folders: Folders,
    /// Whether listing the root shows the query folders (they are always
    /// reachable by name).
    show_folders: bool,
}

impl View {
    /// The view of `core`; `show_folders` lists the query folders at the
    /// root (otherwise they are reached by name only, and tree walkers see
    /// each real file once).
    pub fn new(core: Arc<Fs>, show_folders: bool) -> View {
        let folders = Folders::new(core.clone());
        View {
            core,
            folders,
            show_folders,
        }
    }

    /// The core, for operations on handles and the store.
    pub fn core(&self) -> &Arc<Fs> {
        &self.core
    }

    /// The query folders (the mount's hooks: forget, the kernel's names).
    pub fn folders(&self) -> &Folders {
        &self.folders
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if parent.is_virtual() {
            self.folders.v_lookup(parent.0, name)
        } else if vfs::is_reserved(parent.0, name) {
            self.folders.v_root_lookup(name)
        } else {
            self.core.lookup(parent.0, name)
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        if ino.is_virtual() {
            self.folders.v_getattr(ino.0)
        } else {
            self.core.getattr(ino.0)
        }
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        if ino.is_virtual() {
            self.folders.v_setattr(ino.0, set)
        } else {
            self.core.setattr(ino.0, set)
        }
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        if ino.is_virtual() {
            self.folders.v_readlink(ino.0)
        } else {
            self.core.readlink(ino.0)
        }
    }

    pub fn access(&self, ino: Ino, mask: i32, caller: Caller) -> Result<()> {
        vfs::check_access(&self.getattr(ino)?, mask, caller)
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u32, caller: Caller) -> Result<Attr> {
        if parent.is_virtual() {
            vfs::check_name(name)?;
            self.folders.v_mkdir(parent.0, name, perm, caller)
        } else {
            self.core.mkdir(parent.0, name, perm, caller)
        }
    }

    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr> {
        if parent.is_virtual() {
            self.folders.v_mknod(parent.0, name, mode, rdev, caller)
        } else {
            self.core.mknod(parent.0, name, mode, rdev, caller)
        }
    }

    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], caller: Caller) -> Result<Attr> {
        if parent.is_virtual() {
            self.folders.v_symlink(parent.0, name, target, caller)
        } else {
            self.core.symlink(parent.0, name, target, caller)
        }
    }

    /// Creates a regular file and opens it.
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        if parent.is_virtual() {
            vfs::check_name(name)?;
            self.folders.v_create(parent.0, name, perm, caller)
        } else {
            self.core.create(parent.0, name, perm, caller)
        }
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        vfs::check_name(newname)?;
        if newparent.is_virtual() {
            self.folders.v_link(ino.0, newparent.0, newname)
        } else if ino.is_virtual() {
            Err(FsError::NotPermitted)
        } else {
            self.core.link(ino.0, newparent.0, newname)
        }
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if parent.is_virtual() {
            self.folders.v_unlink(parent.0, name)
        } else {
            self.core.unlink(parent.0, name)
        }
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("cannot remove '.'".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        if parent.is_virtual() {
            self.folders.v_rmdir(parent.0, name)
        } else {
            self.core.rmdir(parent.0, name)
        }
    }

    /// rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE (not into or
    /// out of a query folder).
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        if !parent.is_virtual() && !newparent.is_virtual() {
            return self
                .core
                .rename(parent.0, name, newparent.0, newname, flags);
        }
        vfs::check_rename(newname, flags)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid(
                "RENAME_EXCHANGE does not apply to query folders".into(),
            ));
        }
        self.folders
            .v_rename(parent.0, name, newparent.0, newname, flags)?;
        // The kernel moves its cached entry to the new name, with the
        // inode it had: a real file, symlink or directory moved into a
        // query folder is shown there as another node (an alias).
        // (After the reply: the kernel holds that folder's lock.)
        self.folders.report_name(newparent.0, newname, false);
        Ok(())
    }

    pub fn open(&self, ino: Ino) -> Result<u64> {
        if ino.is_virtual() {
            self.folders.v_open(ino.0)
        } else {
            self.core.open(ino.0)
        }
    }

    /// open(2) with `O_TRUNC` (refused on what a query folder shows itself:
    /// its result files are read-only).
    pub fn open_truncating(&self, ino: Ino) -> Result<u64> {
        if ino.is_virtual() {
            Err(FsError::Access)
        } else {
            self.core.open_truncating(ino.0)
        }
    }

    /// Opens a directory. The root's listing holds the query folders only
    /// when the view shows them.
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        if ino.is_virtual() {
            self.folders.v_opendir(ino.0)
        } else if ino.0 == ROOT && self.show_folders {
            let extra = self.folders.v_root_entries()?;
            self.core.opendir_with(ROOT, extra)
        } else {
            self.core.opendir(ino.0)
        }
    }

    /// The root's query folders as listing entries.
    pub fn root_folders(&self) -> Result<Vec<DirEntry>> {
        self.folders.v_root_entries()
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if ino.is_virtual() {
            self.folders.v_setxattr(ino.0, name, value, flags)
        } else {
            self.core.setxattr(ino.0, name, value, flags)
        }
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if ino.is_virtual() {
            self.folders.v_getxattr(ino.0, name)
        } else {
            self.core.getxattr(ino.0, name)
        }
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        if ino.is_virtual() {
            self.folders.v_listxattr(ino.0)
        } else {
            self.folders.listxattr_real(ino.0)
        }
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        if ino.is_virtual() {
            self.folders.v_removexattr(ino.0, name)
        } else {
            self.core.removexattr(ino.0, name)
        }
    }

    /// Whether a request on `ino` may run a user's query (the FUSE adapter
    /// hands those to its query threads).
    pub fn runs_queries(&self, ino: Ino) -> bool {
        ino.is_virtual() && self.folders.runs_queries(ino.0)
    }

    /// Resolves a path from the root through both sides (`/by-tag/x/F`);
    /// `..` goes to the real parent of a real directory. Symlinks are not
    /// followed.
    pub fn resolve_bytes(&self, path: &[u8]) -> Result<Attr> {
        let mut cur = self.getattr(Ino::ROOT)?;
        for part in path
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            if part == b".." {
                if Ino(cur.ino).is_virtual() {
                    return Err(FsError::Invalid(
                        "`..` of a query folder is ambiguous: name the folder".into(),
                    ));
                }
                let up = self
                    .core
                    .resolve_bytes(&[self.core.path_bytes(cur.ino)?, b"/..".to_vec()].concat())?;
                cur = up;
                continue;
            }
            if !cur.is_dir() {
                return Err(FsError::NotDir);
            }
            cur = self.lookup(Ino(cur.ino), part)?;
        }
        Ok(cur)
    }

    /// Lists a directory of either side in one go (without `.` and `..`).
    pub fn list(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let fh = self.opendir(ino)?;
        let v = self.core.dir_page(fh, 0, usize::MAX);
        self.core.releasedir(fh)?;
        Ok(v?.into_iter().skip(2).map(|(_, e)| e).collect())
    }

    pub fn statfs(&self) -> Result<StatFs> {
        self.core.statfs()
    }
}
