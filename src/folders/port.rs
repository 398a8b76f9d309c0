//! The port the query folders use onto the core, and the core's side of it.
//!
//! Everything the folders do to the store goes through [`Tree`]: they read
//! the real tree and the metadata, run users' queries in the sandbox,
//! change the real tree with the very operations a user's request makes
//! (a window's `mkdir` is the real directory's `mkdir`), tag files in one
//! metadata write, and hand out read-only handles (listings and result
//! files) from the core's handle table, so that one handle space serves
//! the mount. Every inode number crossing the port is a real one.

use std::sync::Arc;

use parking_lot::MappedMutexGuard;

use crate::error::Result;
use crate::meta::sandbox::{QueryResult, Visibility};
use crate::meta::{MetaRead, MetaStore};
use crate::types::Attr;
use crate::vfs::{Caller, DirEntry, Fs, SetAttr, QUERY_BUDGET, ROW_CAP};

/// What the query folders need of the core.
pub trait Tree: Send + Sync {
    // Reading the real tree.
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr>;
    fn getattr(&self, ino: u64) -> Result<Attr>;
    fn readlink(&self, ino: u64) -> Result<Vec<u8>>;
    /// The first path of `ino` from the root.
    fn path_bytes(&self, ino: u64) -> Result<Vec<u8>>;
    fn resolve_bytes(&self, path: &[u8]) -> Result<Attr>;
    /// `attr` with the uncommitted state of its open file applied.
    fn overlay(&self, attr: Attr) -> Attr;
    /// The metadata, to read (lists, tags, parents): read-only, so that
    /// every change the folders make is a [`Tree::write`] or a user's
    /// operation.
    fn meta(&self) -> MappedMutexGuard<'_, dyn MetaRead>;
    /// Bumped by every metadata change; listings cache on it.
    fn generation(&self) -> u64;
    /// Whether users' SQL runs here (a store on disk).
    fn runs_sql(&self) -> bool;
    /// When the core started (the times of the folders themselves).
    fn started(&self) -> i64;
    /// Commits the open group of changes (a query sees committed data).
    fn settle(&self) -> Result<()>;
    /// Runs users' SQL in a sandbox connection, limited to what `vis` may
    /// reach and to `bytes_cap` bytes of values.
    fn run_query(
        &self,
        sql: &str,
        vis: Option<Arc<Visibility>>,
        bytes_cap: usize,
    ) -> Result<QueryResult>;

    // Changing the real tree, as a user's request does.
    fn create(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<(Attr, u64)>;
    fn mkdir(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<Attr>;
    fn mknod(&self, parent: u64, name: &[u8], mode: u32, rdev: u32, caller: Caller)
        -> Result<Attr>;
    fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> Result<Attr>;
    fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr>;
    fn unlink(&self, parent: u64, name: &[u8]) -> Result<()>;
    fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()>;
    fn rename(&self, parent: u64, name: &[u8], np: u64, nn: &[u8], flags: u32) -> Result<()>;
    fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr>;
    fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()>;
    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>>;
    /// listxattr, leaving out the placed tags of a file when `hide_placed`
    /// says so.
    fn listxattr(&self, ino: u64, hide_placed: &dyn Fn(&Attr) -> Result<bool>) -> Result<Vec<u8>>;
    fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()>;

    /// The saved queries (shipped ones too): (name, SQL, shipped).
    fn queries(&self) -> Result<Vec<(String, String, bool)>>;
    /// Saves a user query (checked in the sandbox first).
    fn save_query(&self, name: &str, sql: &str) -> Result<()>;
    /// Deletes a user query (`NotFound` if there is none).
    fn delete_query(&self, name: &str) -> Result<()>;

    /// Tagging (and the rest of the metadata the folders keep): `f` runs
    /// as one metadata write.
    fn write(&self, f: &mut dyn FnMut(&dyn MetaStore) -> Result<()>) -> Result<()>;

    // Handles.
    /// A directory handle over a listing the folders computed.
    fn open_listing(&self, ino: u64, entries: Vec<DirEntry>) -> u64;
    /// A read-only file handle over bytes (a result file).
    fn open_bytes(&self, bytes: Arc<Vec<u8>>) -> u64;
    fn release(&self, fh: u64) -> Result<()>;
}

impl Tree for Fs {
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        Fs::lookup(self, parent, name)
    }
    fn getattr(&self, ino: u64) -> Result<Attr> {
        Fs::getattr(self, ino)
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        Fs::readlink(self, ino)
    }
    fn path_bytes(&self, ino: u64) -> Result<Vec<u8>> {
        Fs::path_bytes(self, ino)
    }
    fn resolve_bytes(&self, path: &[u8]) -> Result<Attr> {
        Fs::resolve_bytes(self, path)
    }
    fn overlay(&self, attr: Attr) -> Attr {
        Fs::overlay(self, attr)
    }
    fn meta(&self) -> MappedMutexGuard<'_, dyn MetaRead> {
        MappedMutexGuard::map(Fs::meta(self), |m| m as &mut dyn MetaRead)
    }
    fn generation(&self) -> u64 {
        Fs::generation(self)
    }
    fn runs_sql(&self) -> bool {
        Fs::runs_sql(self)
    }
    fn started(&self) -> i64 {
        Fs::started(self)
    }
    fn settle(&self) -> Result<()> {
        Fs::settle(self)
    }
    fn run_query(
        &self,
        sql: &str,
        vis: Option<Arc<Visibility>>,
        bytes_cap: usize,
    ) -> Result<QueryResult> {
        self.with_sandbox(vis, |sb| {
            sb.run_capped(sql, QUERY_BUDGET, ROW_CAP, bytes_cap)
        })
    }
    fn create(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<(Attr, u64)> {
        Fs::create(self, parent, name, perm, caller)
    }
    fn mkdir(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<Attr> {
        Fs::mkdir(self, parent, name, perm, caller)
    }
    fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr> {
        Fs::mknod(self, parent, name, mode, rdev, caller)
    }
    fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> Result<Attr> {
        Fs::symlink(self, parent, name, target, caller)
    }
    fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        Fs::link(self, ino, newparent, newname)
    }
    fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        Fs::unlink(self, parent, name)
    }
    fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        Fs::rmdir(self, parent, name)
    }
    fn rename(&self, parent: u64, name: &[u8], np: u64, nn: &[u8], flags: u32) -> Result<()> {
        Fs::rename(self, parent, name, np, nn, flags)
    }
    fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr> {
        Fs::setattr(self, ino, set)
    }
    fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        Fs::setxattr(self, ino, name, value, flags)
    }
    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        Fs::getxattr(self, ino, name)
    }
    fn listxattr(&self, ino: u64, hide_placed: &dyn Fn(&Attr) -> Result<bool>) -> Result<Vec<u8>> {
        self.listxattr_hiding(ino, hide_placed)
    }
    fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        Fs::removexattr(self, ino, name)
    }
    fn queries(&self) -> Result<Vec<(String, String, bool)>> {
        Fs::queries(self)
    }
    fn save_query(&self, name: &str, sql: &str) -> Result<()> {
        Fs::save_query(self, name, sql)
    }
    fn delete_query(&self, name: &str) -> Result<()> {
        Fs::delete_query(self, name)
    }
    fn write(&self, f: &mut dyn FnMut(&dyn MetaStore) -> Result<()>) -> Result<()> {
        self.tx(|m, _| f(m))
    }
    fn open_listing(&self, ino: u64, entries: Vec<DirEntry>) -> u64 {
        Fs::open_listing(self, ino, entries)
    }
    fn open_bytes(&self, bytes: Arc<Vec<u8>>) -> u64 {
        Fs::open_bytes(self, bytes)
    }
    fn release(&self, fh: u64) -> Result<()> {
        Fs::release(self, fh)
    }
}
