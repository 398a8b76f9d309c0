//! The metadata-store port: every metadata operation the core and the
//! store's maintenance need, grouped into transactions.
//!
//! The core holds a `Box<dyn MetaStore>` and never sees SQL, connections or
//! row types. Writes run in [`MetaStore::write_dyn`] (or the typed
//! [`write`](trait.MetaStore.html#method.write) on `dyn MetaStore`): one
//! transaction, or with group commit on, one savepoint of the open batch,
//! committed when it is `window` old, by [`MetaStore::commit_batch`], or
//! rolled back as a whole by [`MetaStore::rollback_batch`] (the blob bytes
//! it refers to may be lost). Blob locations dropped by a write are handed
//! back by [`MetaStore::after_commit`] and the batch commit only once the
//! write that dropped them is committed (the deferred free of the blob
//! store contract, see `crate::blob`).
//!
//! Implementation: [`super::Meta`], on a SQLite file or on `:memory:` (for
//! fast tests).

use std::time::Duration;

use super::quarantine::Quarantined;
use super::{
    BlobData, BlobLoc, BlobRow, Checkpointer, ChunkRef, DirPerm, Inode, MetaError, NewInode,
    Result, Stats,
};
use crate::meta::sandbox::Sandbox;

/// See the module doc.
/// What the metadata store answers without changing anything.
pub trait MetaRead: Send {
    fn store_get(&self, key: &str) -> Result<Option<String>>;
    fn inode(&self, ino: u64) -> Result<Option<Inode>>;
    /// The stored content id of a regular file.
    fn chash(&self, ino: u64) -> Result<Option<[u8; 32]>>;
    fn tag_exists(&self, name: &str) -> Result<bool>;
    /// Whether any file holds the tag.
    fn tag_used(&self, name: &str) -> Result<bool>;
    /// Every tag with the number of files holding it.
    fn tag_counts(&self) -> Result<Vec<(String, u64)>>;
    fn tag_names(&self) -> Result<Vec<String>>;
    /// A file's tags with their values, by name.
    fn file_tags(&self, ino: u64) -> Result<Vec<(String, Option<String>)>>;
    /// One tag of a file: `None` if the file does not hold it.
    fn file_tag(&self, ino: u64, tag: &str) -> Result<Option<Option<String>>>;
    /// A file's tags with their values and `placed` positions (0: given
    /// by the user).
    fn file_tags_placed(&self, ino: u64) -> Result<Vec<(String, Option<String>, u32)>>;
    fn saved_query(&self, name: &str) -> Result<Option<String>>;
    fn saved_queries(&self) -> Result<Vec<(String, String)>>;
    /// Runs a listing compiled by the query-folder layer (trusted SQL with
    /// bound parameters) whose rows are `name, <inode columns>`.
    fn listing(
        &self,
        sql: &str,
        params: &[rusqlite::types::Value],
    ) -> Result<Vec<(Vec<u8>, Inode)>>;
    /// Runs a compiled query whose rows are one text column.
    fn strings(&self, sql: &str, params: &[rusqlite::types::Value]) -> Result<Vec<String>>;
    fn symlink_target(&self, ino: u64) -> Result<Option<Vec<u8>>>;
    fn unlinked_inodes(&self) -> Result<Vec<u64>>;
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<Inode>>;
    fn list_dir(&self, parent: u64) -> Result<Vec<(Vec<u8>, Inode)>>;
    fn dir_has_entries(&self, parent: u64) -> Result<bool>;
    /// One (parent, name) naming `ino`, if any.
    /// Every directory that has a name.
    fn dir_perms(&self) -> Result<Vec<DirPerm>>;
    /// The directories holding a name of `ino` (several for hard links).
    fn parents(&self, ino: u64) -> Result<Vec<u64>>;
    /// Every (tag, file) pair.
    fn tag_files(&self) -> Result<Vec<(String, u64)>>;
    /// Every (parent, name) of `ino`.
    fn names_of(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>>;
    fn parent_of(&self, ino: u64) -> Result<Option<(u64, Vec<u8>)>>;
    fn chunks(&self, ino: u64) -> Result<Vec<(u64, ChunkRef)>>;
    fn chunk_hashes(&self, ino: u64) -> Result<Vec<[u8; 32]>>;
    /// Size and location of a blob, if it exists.
    fn blob(&self, hash: &[u8; 32]) -> Result<Option<(u32, BlobData)>>;
    /// Start clusters of every blob in the container.
    fn blob_locations(&self) -> Result<Vec<BlobLoc>>;
    fn all_blobs(&self) -> Result<Vec<BlobRow>>;
    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>>;
    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>>;
    fn stats(&self) -> Result<Stats>;
    /// `PRAGMA integrity_check` lines other than "ok".
    fn integrity_problems(&self) -> Result<Vec<String>>;
    /// Text descriptions of every cross-table inconsistency.
    fn consistency_problems(&self) -> Result<Vec<String>>;
    /// True when the schema has the quarantine table (a read-only open of a
    /// store not yet migrated to 0004 has none).
    fn has_quarantine(&self) -> Result<bool>;
    /// Every quarantine row (none without the table).
    fn quarantined(&self) -> Result<Vec<Quarantined>>;
    /// `(hash, size, start cluster)` of every blob in the container (marker
    /// blobs of quarantined ones included), without inline data.
    fn blob_chains(&self) -> Result<Vec<([u8; 32], u64, BlobLoc)>>;
    /// The inodes whose chunks name blob `hash` (a scan of the chunk table).
    fn inodes_holding(&self, hash: &[u8; 32]) -> Result<Vec<u64>>;
    /// Whether [`MetaStore::open_sandbox`] can give one: `/sql` and
    /// `/queries` exist only then.
    fn runs_sql(&self) -> bool;
}

/// The metadata store: [`MetaRead`] and every change, in transactions
/// with group commit.
pub trait MetaStore: MetaRead {
    /// Runs `f` in a write transaction: committed when `f` returns true,
    /// rolled back when it returns false. With group commit on, `f` runs
    /// in a savepoint of the open batch and commits with it.
    fn write_dyn(&self, f: &mut dyn FnMut(&dyn MetaStore) -> bool) -> Result<()>;
    /// Runs `f` in a read transaction (one snapshot).
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn MetaStore)) -> Result<()>;
    /// Turns group commit on (`Some(window)`: a batch is due once it is that
    /// old) or off (committing any open batch first).
    fn set_group_commit(&self, window: Option<Duration>) -> Result<Vec<BlobLoc>>;
    /// Turns SQLite's own checkpoints at commit on or off (off when a
    /// [`Checkpointer`] does them beside this connection).
    fn set_auto_checkpoint(&self, on: bool) -> Result<()>;
    /// How many batches have been rolled back on this connection: state
    /// derived from their writes (open files' chunk maps) is stale.
    fn rollbacks(&self) -> u64;
    /// Whether a batch is open (writes not committed yet).
    fn batch_open(&self) -> bool;
    /// Whether the open batch should be committed now: old or big enough.
    fn batch_due(&self) -> bool;
    /// Hands over cluster chains dropped by a write: returns those that may
    /// be freed now (their write committed) and keeps the rest in the batch.
    fn after_commit(&self, frees: Vec<BlobLoc>) -> Vec<BlobLoc>;
    /// Commits the open batch, if any; returns the cluster chains it
    /// released. On failure the whole batch is rolled back (its frees are
    /// dropped: the chains stay referenced) and the error says how many
    /// writes were lost.
    fn commit_batch(&self) -> Result<Vec<BlobLoc>>;
    /// Rolls the open batch back, if any (the blob bytes it refers to may
    /// not be on disk); returns how many writes it held.
    fn rollback_batch(&self) -> u32;
    /// Makes every commit so far durable: one commit with `synchronous=FULL`.
    /// Commit any open batch first ([`MetaStore::commit_batch`]).
    fn barrier(&self) -> Result<()>;
    fn store_set(&self, key: &str, value: &str) -> Result<()>;
    fn insert_root(&self, perm: u32, uid: u32, gid: u32, now: i64) -> Result<()>;
    /// Inserts a new inode and returns it.
    fn insert_inode(&self, n: &NewInode<'_>) -> Result<Inode>;
    /// Writes back every mutable column of `i`.
    fn update_inode(&self, i: &Inode) -> Result<()>;
    /// Writes back every mutable column of `i` and, when given, the
    /// content id.
    fn update_inode_with(&self, i: &Inode, chash: Option<&[u8; 32]>) -> Result<()>;
    fn delete_inode_row(&self, ino: u64) -> Result<()>;
    /// Creates a tag if it does not exist yet.
    fn create_tag(&self, name: &str, now: i64) -> Result<()>;
    fn delete_tag(&self, name: &str) -> Result<()>;
    /// Renames a tag and every use of it.
    fn rename_tag(&self, old: &str, new: &str) -> Result<()>;
    /// Tags a file (creating the tag if needed).
    fn set_file_tag(&self, ino: u64, tag: &str, value: Option<&str>, now: i64) -> Result<()>;
    /// Tags a file as made in a tag folder: `placed` is the term's position
    /// in the folder's path (1 for the first). A tag the file already holds
    /// keeps what it was (given by the user, or placed earlier).
    fn place_file_tag(
        &self,
        ino: u64,
        tag: &str,
        value: Option<&str>,
        placed: u32,
        now: i64,
    ) -> Result<()>;
    /// Untags a file; false if it did not hold the tag.
    fn delete_file_tag(&self, ino: u64, tag: &str) -> Result<bool>;
    fn delete_file_tags(&self, ino: u64) -> Result<()>;
    fn save_query(&self, name: &str, sql: &str, now: i64) -> Result<()>;
    /// Deletes a saved query; false if there was none.
    fn delete_saved_query(&self, name: &str) -> Result<bool>;
    fn insert_dentry(&self, parent: u64, name: &[u8], ino: u64) -> Result<()>;
    fn delete_dentry(&self, parent: u64, name: &[u8]) -> Result<()>;
    fn set_dentry_ino(&self, parent: u64, name: &[u8], ino: u64) -> Result<()>;
    fn set_chunk(&self, ino: u64, idx: u64, hash: &[u8; 32]) -> Result<()>;
    fn delete_chunks_from(&self, ino: u64, from: u64) -> Result<()>;
    fn delete_chunk(&self, ino: u64, idx: u64) -> Result<()>;
    fn delete_all_chunks(&self, ino: u64) -> Result<()>;
    /// Inserts a blob with refcount 1.
    fn insert_blob(&self, hash: &[u8; 32], size: u64, data: &BlobData) -> Result<()>;
    fn incref(&self, hash: &[u8; 32]) -> Result<()>;
    /// Drops one reference. When it was the last, deletes the row and returns
    /// `Some(loc)` (`Some(None)` for an inline blob) so the caller can free the
    /// clusters after the transaction commits.
    fn decref(&self, hash: &[u8; 32]) -> Result<Option<Option<BlobLoc>>>;
    /// Deletes blob rows nobody references; returns their container chains.
    fn delete_unreferenced_blobs(&self) -> Result<Vec<Option<BlobLoc>>>;
    fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8]) -> Result<()>;
    /// Removes one xattr; false if it did not exist.
    fn delete_xattr(&self, ino: u64, name: &[u8]) -> Result<bool>;
    /// Quarantines container blob `hash` (call inside a write transaction):
    /// renames its chunks to the marker, moves its row to the marker with
    /// `loc` = [`crate::qvfs::container::QUARANTINED`], and records it. Returns false when the
    /// blob does not exist or is not in the container.
    fn quarantine_blob(
        &self,
        hash: &[u8; 32],
        clusters: &[u32],
        reason: &str,
        now_ns: i64,
    ) -> Result<bool>;
    /// Forgets a quarantine row (its clusters are no longer kept).
    fn drop_quarantine(&self, hash: &[u8; 32]) -> Result<()>;
    /// A read-only connection for `/sql` queries beside this one, if the
    /// store can give one (a database in memory cannot).
    fn open_sandbox(&self) -> Result<Option<Sandbox>>;
    /// A connection that checkpoints the write-ahead log beside this one
    /// (off the request path), if the store has a log.
    fn checkpointer(&self) -> Result<Option<Checkpointer>>;
}

impl dyn MetaStore + '_ {
    /// Runs `f` as one write (see [`MetaStore::write_dyn`]): committed on
    /// `Ok`, rolled back on `Err`.
    pub fn write<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&dyn MetaStore) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut f = Some(f);
        let mut out = None;
        let r = self.write_dyn(&mut |m| {
            let r = (f.take().expect("a write runs its closure once"))(m);
            let ok = r.is_ok();
            out = Some(r);
            ok
        });
        match (r, out) {
            // The closure succeeded and the commit failed.
            (Err(e), Some(Ok(_))) | (Err(e), None) => Err(e.into()),
            (_, Some(r)) => r,
            (Ok(()), None) => unreachable!("a write that succeeded ran its closure"),
        }
    }

    /// Runs `f` in a read transaction (one snapshot).
    pub fn read<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&dyn MetaStore) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut f = Some(f);
        let mut out = None;
        self.read_dyn(&mut |m| {
            if let Some(f) = f.take() {
                out = Some(f(m));
            }
        })?;
        out.expect("a read that succeeded ran its closure")
    }
}
