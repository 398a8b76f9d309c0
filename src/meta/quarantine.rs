//! Quarantine of blobs whose container chain is damaged (`fsck --repair`).
//!
//! A quarantined blob `H` keeps its bytes' clusters allocated but stops
//! being readable or reusable: its chunk rows are renamed to a marker name
//! `M = BLAKE3("queryfs quarantine\0" || H)`, whose blob row has the old size
//! and refcount and `loc` = [`QUARANTINED`] (never a valid cluster, so every
//! read of it fails with EIO and freeing it does nothing). The row of `H`
//! itself is deleted, so a file written later with the same bytes stores a
//! fresh, healthy copy instead of deduplicating onto the damaged one. The
//! `quarantine` table (migration 0004) remembers `H`, the old start cluster,
//! the clusters kept allocated and why. When the last file holding `M` is
//! deleted, `M`'s row goes as any blob's does, and the next reclaim drops the
//! quarantine row and frees its clusters.

// Numbers cross between SQLite (i64), the kernel (u32, u64) and Rust
// (usize) here: each conversion is checked, none wraps or truncates.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use rusqlite::named_params;

use super::{hash_of, BlobData, BlobLoc, Meta, MetaRead, Result};
use crate::qvfs::container::QUARANTINED;

const INSERT: &str = include_str!("../../queries/meta/quarantine_insert.sql");
const LIST: &str = include_str!("../../queries/meta/quarantine_list.sql");
const DELETE: &str = include_str!("../../queries/meta/quarantine_delete.sql");
const MARKER_BLOB: &str = include_str!("../../queries/meta/quarantine_marker_blob.sql");
const RENAME_CHUNKS: &str = include_str!("../../queries/meta/quarantine_rename_chunks.sql");
const EXISTS: &str = include_str!("../../queries/meta/quarantine_exists.sql");
const CHUNK_INODES: &str = include_str!("../../queries/meta/chunk_inodes.sql");
const BLOB_CHAINS: &str = include_str!("../../queries/meta/blob_chains.sql");

/// One quarantine row.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub hash: [u8; 32],
    pub marker: [u8; 32],
    pub size: u64,
    /// The damaged chain's old start cluster.
    pub loc: u32,
    /// Clusters kept allocated for it.
    pub clusters: Vec<u32>,
    pub reason: String,
    pub created_ns: i64,
    /// Refcount of the marker blob; `None` once no file holds it.
    pub refcount: Option<i64>,
}

/// The marker name of quarantined blob `hash`.
pub fn marker_of(hash: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"queryfs quarantine\0");
    h.update(hash);
    *h.finalize().as_bytes()
}

fn clusters_blob(c: &[u32]) -> Vec<u8> {
    c.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn clusters_of(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .collect()
}

impl Meta {
    /// Opens the database as an immutable file: SQLite neither creates nor
    /// reads `-shm`/`-wal` and takes no locks, so it needs no disk space at
    /// all. Only correct while no process can write the database and its
    /// WAL is empty (the store opens it so on a full disk, holding the store
    /// lock, when the WAL file is absent or empty).
    pub fn open_immutable(path: &std::path::Path) -> Result<Meta> {
        let mut uri = String::from("file:");
        for b in path.as_os_str().as_encoded_bytes() {
            match *b {
                b'%' | b'?' | b'#' | 0x80..=0xff => uri.push_str(&format!("%{b:02X}")),
                _ => uri.push(*b as char),
            }
        }
        uri.push_str("?immutable=1");
        let conn = rusqlite::Connection::open_with_flags(
            &uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_URI
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            return Err(super::MetaError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
                Some(format!("{} is empty or damaged", path.display())),
            )));
        }
        Ok(Meta::with(conn).at(path))
    }

    /// True when the schema has the quarantine table (a read-only open of a
    /// store not yet migrated to 0004 has none).
    pub fn has_quarantine(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(EXISTS)?
            .query_row([], |r| r.get::<_, i64>(0))?
            > 0)
    }

    /// Every quarantine row (none without the table).
    pub fn quarantined(&self) -> Result<Vec<Quarantined>> {
        if !self.has_quarantine()? {
            return Ok(Vec::new());
        }
        let mut s = self.conn.prepare_cached(LIST)?;
        let rows = s.query_map([], |r| {
            Ok(Quarantined {
                hash: hash_of(r.get(0)?)?,
                marker: hash_of(r.get(1)?)?,
                size: get_u64(r, 2)?,
                loc: r.get::<_, u32>(3)?,
                clusters: clusters_of(&r.get::<_, Vec<u8>>(4)?),
                reason: r.get(5)?,
                created_ns: r.get(6)?,
                refcount: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Quarantines container blob `hash` (call inside a write transaction):
    /// renames its chunks to the marker, moves its row to the marker with
    /// `loc` = [`QUARANTINED`], and records it. Returns false when the
    /// blob does not exist or is not in the container.
    pub fn quarantine_blob(
        &self,
        hash: &[u8; 32],
        clusters: &[u32],
        reason: &str,
        now_ns: i64,
    ) -> Result<bool> {
        let Some((size, BlobData::Stored(loc))) = self.blob(hash)? else {
            return Ok(false);
        };
        let marker = marker_of(hash);
        self.conn
            .prepare_cached(MARKER_BLOB)?
            .execute(named_params! {
                ":marker": &marker[..], ":loc": QUARANTINED as i64, ":hash": &hash[..],
            })?;
        self.conn
            .prepare_cached(RENAME_CHUNKS)?
            .execute(named_params! {":marker": &marker[..], ":hash": &hash[..]})?;
        self.conn
            .prepare_cached(super::queries::BLOB_DELETE)?
            .execute(named_params! {":hash": &hash[..]})?;
        self.conn.prepare_cached(INSERT)?.execute(named_params! {
            ":hash": &hash[..],
            ":marker": &marker[..],
            ":size": size as i64,
            ":loc": i64::try_from(loc.0).map_err(|_| rusqlite::Error::ToSqlConversionFailure(
                format!("blob location {} does not fit SQLite", loc.0).into()
            ))?,
            ":clusters": clusters_blob(clusters),
            ":reason": reason,
            ":created": now_ns,
        })?;
        Ok(true)
    }

    /// Forgets a quarantine row (its clusters are no longer kept).
    pub fn drop_quarantine(&self, hash: &[u8; 32]) -> Result<()> {
        self.conn
            .prepare_cached(DELETE)?
            .execute(named_params! {":hash": &hash[..]})?;
        Ok(())
    }

    /// `(hash, size, start cluster)` of every blob in the container (marker
    /// blobs of quarantined ones included), without inline data.
    pub fn blob_chains(&self) -> Result<Vec<([u8; 32], u64, BlobLoc)>> {
        let mut s = self.conn.prepare_cached(BLOB_CHAINS)?;
        let rows = s.query_map([], |r| {
            Ok((hash_of(r.get(0)?)?, get_u64(r, 1)?, BlobLoc(get_u64(r, 2)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The inodes whose chunks name blob `hash` (a scan of the chunk table).
    pub fn inodes_holding(&self, hash: &[u8; 32]) -> Result<Vec<u64>> {
        let mut s = self.conn.prepare_cached(CHUNK_INODES)?;
        let rows = s.query_map(named_params! {":hash": &hash[..]}, |r| get_u64(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Column `i` of a row as a u64 (a negative integer is out of range).
fn get_u64(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MetaError, MetaStore};

    #[test]
    fn statements_prepare() {
        let m = Meta::open_in_memory().unwrap();
        for sql in [
            INSERT,
            LIST,
            DELETE,
            MARKER_BLOB,
            RENAME_CHUNKS,
            EXISTS,
            CHUNK_INODES,
            BLOB_CHAINS,
        ] {
            m.conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn opening_an_empty_database_fails_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("queryfs.db");
        std::fs::File::create(&p).unwrap();
        for r in [Meta::open(&p, false).err(), Meta::open_read_only(&p).err()] {
            let e = r.expect("an empty database opened").to_string();
            assert!(e.contains("empty or damaged"), "{e}");
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        // A SQLite database with a version but no queryfs tables, too.
        {
            let c = rusqlite::Connection::open(&p).unwrap();
            c.execute_batch("PRAGMA user_version = 4; CREATE TABLE x (a);")
                .unwrap();
        }
        let e = Meta::open(&p, false).err().expect("opened").to_string();
        assert!(e.contains("empty or damaged"), "{e}");
        let c = rusqlite::Connection::open(&p).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the open created tables");
    }

    #[test]
    fn quarantine_moves_chunks_to_an_unreadable_marker() {
        let m = Meta::open_in_memory().unwrap();
        assert!(m.has_quarantine().unwrap());
        let h = [9u8; 32];
        let ok = [8u8; 32];
        m.write::<_, MetaError>(|t| {
            t.insert_root(0o755, 0, 0, 0)?;
            t.insert_blob(&h, 9000, &BlobData::Stored(BlobLoc(5)))?;
            t.insert_blob(&ok, 100, &BlobData::Stored(BlobLoc(9)))?;
            t.set_chunk(1, 0, &h)?;
            t.set_chunk(1, 1, &ok)?;
            t.incref(&h)?;
            t.set_chunk(1, 2, &h)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(m.inodes_holding(&h).unwrap(), vec![1]);
        m.write::<_, MetaError>(|t| {
            assert!(t.quarantine_blob(&h, &[5, 6], "chain reaches free cluster 6", 42)?);
            assert!(!t.quarantine_blob(&[1u8; 32], &[], "none", 42)?);
            Ok(())
        })
        .unwrap();
        // The damaged name is gone (new writes of its bytes store afresh)...
        assert!(m.blob(&h).unwrap().is_none());
        assert!(m.inodes_holding(&h).unwrap().is_empty());
        // ...its chunks point at the marker, which no read can follow...
        let mk = marker_of(&h);
        let chunks = m.chunks(1).unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].1.hash, mk);
        assert_eq!(
            chunks[0].1.data,
            BlobData::Stored(BlobLoc(QUARANTINED as u64))
        );
        assert_eq!(chunks[0].1.size, 9000);
        assert_eq!(chunks[1].1.hash, ok);
        assert_eq!(m.blob(&mk).unwrap().unwrap().0, 9000);
        assert!(m.consistency_problems().unwrap().is_empty());
        // ...and the quarantine remembers it.
        let q = m.quarantined().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].hash, q[0].loc, q[0].size, q[0].refcount),
            (h, 5, 9000, Some(2))
        );
        assert_eq!(q[0].clusters, vec![5, 6]);
        m.write::<_, MetaError>(|t| t.drop_quarantine(&h)).unwrap();
        assert!(m.quarantined().unwrap().is_empty());
    }
}
