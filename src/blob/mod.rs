//! The blob-store port: where the bytes of content-addressed chunks live.
//!
//! The core stores every chunk it cannot keep inline through a
//! [`BlobStore`]: `put` returns an opaque [`BlobLoc`] that the metadata store
//! keeps beside the blob's hash, `get` reads it back, `delete` frees it. The
//! core never sees what a location means (a start cluster in the QVFS
//! container, a key in memory, an object name in S3).
//!
//! # The contract the core relies on
//! - `put` never overwrites: every put gets storage no live blob uses.
//! - `sync` is the durability barrier: when it returns `Ok`, every `put` so
//!   far survives a power cut. The core commits metadata that refers to a
//!   blob only after a `sync` that followed its `put`.
//! - A failed `sync` is sticky: every later `sync` fails (bytes put before it
//!   may be lost even if a later flush succeeds) until
//!   [`BlobStore::clear_sync_failure`], which the core calls once nothing
//!   that may refer to those bytes can still commit. [`BlobStore::sync_failures`]
//!   counts failures, so a writer can tell whether one happened while its
//!   bytes were in flight.
//! - `delete` is called only after the metadata transaction that dropped a
//!   blob's last reference is durable (deferred free), so neither a crash
//!   nor a power cut leaves metadata pointing at freed storage.
//! - Enumeration for gc and fsck: [`BlobStore::check`] compares the blobs the
//!   metadata references with what is stored, and [`BlobStore::reclaim`]
//!   frees stored blobs that nothing references (crash leftovers), but only
//!   when every referenced blob is whole.
//!
//! Implementations: [`container`] (the QVFS cluster container of a store
//! folder) and [`MemBlobs`] (memory, for fast tests).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

pub use crate::types::{BlobHash, BlobLoc};

pub mod container;
pub mod s3;

/// A blob the metadata references: where, and how many bytes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub loc: BlobLoc,
    pub len: u64,
}

/// A referenced blob that is not stored whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBlob {
    /// Index into the refs given to the check.
    pub index: usize,
    /// Why, in words.
    pub reason: String,
    /// The storage units (container clusters) of the blob that are still
    /// allocated: a repair keeps them.
    pub units: Vec<u64>,
    /// A unit the blob reaches that the store marks free (its own record was
    /// lost): a repair takes it back before anything else can use it.
    pub dangling: Option<u64>,
}

/// What [`BlobStore::check`] found.
#[derive(Debug, Clone, Default)]
pub struct BlobCheck {
    pub damaged: Vec<DamagedBlob>,
    /// Stored units that no reference (and nothing kept) reaches.
    pub orphans: Vec<u64>,
    /// Units the store has in all (container clusters, or blobs).
    pub units: u64,
}

/// What [`BlobStore::reclaim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaim {
    /// Every reference is whole; this many orphan units were freed.
    Freed(u64),
    /// Some references are damaged; nothing was freed.
    Damaged(Vec<DamagedBlob>),
}

/// Space a blob store uses, for `info` and `statfs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobUsage {
    /// Bytes the store's files or objects take.
    pub bytes: u64,
    /// Units in all and units holding blobs.
    pub units: u64,
    pub units_used: u64,
}

/// Where blob bytes live. See the module doc for the contract.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` (the content of blob `hash`) in storage no live blob
    /// uses. Not durable before the next [`BlobStore::sync`].
    fn put(&self, hash: &BlobHash, bytes: &[u8]) -> io::Result<BlobLoc>;

    /// Reads `buf.len()` bytes from byte `offset` of the blob at `loc`.
    fn get(&self, loc: BlobLoc, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Whether a blob is stored at `loc`.
    fn has(&self, loc: BlobLoc) -> bool;

    /// Frees the blob at `loc`. Only after the metadata that dropped its
    /// last reference has committed.
    fn delete(&self, loc: BlobLoc) -> io::Result<()>;

    /// The durability barrier: every `put` so far is durable when it
    /// returns `Ok`. Sticky on failure (see the module doc).
    fn sync(&self) -> io::Result<()>;

    /// How many syncs have failed so far.
    fn sync_failures(&self) -> u64;

    /// Lets `sync` succeed again after a failure.
    fn clear_sync_failure(&self);

    /// Whether the bytes at a location may be replaced under a reader
    /// (storage of freed blobs reused while a damaged store is served, or
    /// another process writes): readers then check bytes against the hash.
    fn verify_reads(&self) -> bool;

    /// Checks the blobs the metadata references (`refs`) against what is
    /// stored; `keep` lists units that count as referenced (the storage of
    /// quarantined blobs). Reads only.
    fn check(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<BlobCheck>;

    /// Frees every stored unit no ref and nothing in `keep` reaches, but
    /// only when [`BlobStore::check`] finds no damage (an unreached unit may
    /// then be the lost part of a damaged blob).
    fn reclaim(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<Reclaim>;

    /// Space used.
    fn usage(&self) -> io::Result<BlobUsage>;
}

/// Blobs in memory: the second implementation, for fast tests. Keeps the
/// contract, durability included: [`MemBlobs::durable`] is what a power cut
/// would leave (the blobs put before the last successful sync).
#[derive(Default)]
pub struct MemBlobs {
    state: Mutex<MemState>,
    fail_syncs: AtomicBool,
    sync_failures: AtomicU64,
    sync_failed: AtomicBool,
}

#[derive(Default)]
struct MemState {
    next: u64,
    blobs: BTreeMap<u64, Vec<u8>>,
    /// Locations put since the last successful sync.
    unsynced: BTreeSet<u64>,
}

impl MemBlobs {
    pub fn new() -> MemBlobs {
        MemBlobs::default()
    }

    /// Test hook: make every sync fail (a dying disk) until turned off.
    pub fn fail_syncs(&self, on: bool) {
        self.fail_syncs.store(on, Ordering::Release);
    }

    /// The locations a power cut now would leave.
    pub fn durable(&self) -> Vec<BlobLoc> {
        let st = self.state.lock();
        st.blobs
            .keys()
            .filter(|k| !st.unsynced.contains(k))
            .map(|&k| BlobLoc(k))
            .collect()
    }
}

fn not_found(loc: BlobLoc) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no blob is stored at {}", loc.0),
    )
}

impl BlobStore for MemBlobs {
    fn put(&self, _hash: &BlobHash, bytes: &[u8]) -> io::Result<BlobLoc> {
        let mut st = self.state.lock();
        // Location 0 is never handed out (like cluster 0 of a container).
        st.next += 1;
        let k = st.next;
        st.blobs.insert(k, bytes.to_vec());
        st.unsynced.insert(k);
        Ok(BlobLoc(k))
    }

    fn get(&self, loc: BlobLoc, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.state.lock();
        let b = st.blobs.get(&loc.0).ok_or_else(|| not_found(loc))?;
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = from.checked_add(buf.len()).filter(|&e| e <= b.len());
        match end {
            Some(end) => {
                buf.copy_from_slice(&b[from..end]);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blob {} holds {} bytes, {} asked from {offset}",
                    loc.0,
                    b.len(),
                    buf.len()
                ),
            )),
        }
    }

    fn has(&self, loc: BlobLoc) -> bool {
        self.state.lock().blobs.contains_key(&loc.0)
    }

    fn delete(&self, loc: BlobLoc) -> io::Result<()> {
        let mut st = self.state.lock();
        st.unsynced.remove(&loc.0);
        st.blobs
            .remove(&loc.0)
            .map(drop)
            .ok_or_else(|| not_found(loc))
    }

    fn sync(&self) -> io::Result<()> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier sync of the blob store failed: what was written before it may be lost",
            ));
        }
        if self.fail_syncs.load(Ordering::Acquire) {
            self.sync_failures.fetch_add(1, Ordering::AcqRel);
            self.sync_failed.store(true, Ordering::Release);
            return Err(io::Error::other("injected sync failure"));
        }
        self.state.lock().unsynced.clear();
        Ok(())
    }

    fn sync_failures(&self) -> u64 {
        self.sync_failures.load(Ordering::Acquire)
    }

    fn clear_sync_failure(&self) {
        self.sync_failed.store(false, Ordering::Release);
    }

    fn verify_reads(&self) -> bool {
        false
    }

    fn check(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<BlobCheck> {
        let st = self.state.lock();
        let stored = st.blobs.iter().map(|(k, v)| (*k, v.len() as u64)).collect();
        Ok(check_against(&stored, refs, keep))
    }

    fn reclaim(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<Reclaim> {
        let check = self.check(refs, keep)?;
        if !check.damaged.is_empty() {
            return Ok(Reclaim::Damaged(check.damaged));
        }
        let mut st = self.state.lock();
        for k in &check.orphans {
            st.blobs.remove(k);
            st.unsynced.remove(k);
        }
        Ok(Reclaim::Freed(check.orphans.len() as u64))
    }

    fn usage(&self) -> io::Result<BlobUsage> {
        let st = self.state.lock();
        Ok(BlobUsage {
            bytes: st.blobs.values().map(|b| b.len() as u64).sum(),
            units: st.blobs.len() as u64,
            units_used: st.blobs.len() as u64,
        })
    }
}

/// [`BlobStore::check`] for a store that can list what it holds:
/// `stored` maps each stored location to its size.
pub(crate) fn check_against(
    stored: &BTreeMap<u64, u64>,
    refs: &[BlobRef],
    keep: &[u64],
) -> BlobCheck {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut damaged = Vec::new();
    for (index, r) in refs.iter().enumerate() {
        let reason = match stored.get(&r.loc.0) {
            None => Some(format!("blob {:#x} is not stored", r.loc.0)),
            Some(&len) if len != r.len => Some(format!(
                "blob {:#x} holds {len} bytes, {} recorded",
                r.loc.0, r.len
            )),
            Some(_) => seen.insert(r.loc.0, index).map(|other| {
                format!(
                    "blob {:#x} is referenced twice (also by reference {other})",
                    r.loc.0
                )
            }),
        };
        if let Some(reason) = reason {
            let units = if stored.contains_key(&r.loc.0) {
                vec![r.loc.0]
            } else {
                Vec::new()
            };
            damaged.push(DamagedBlob {
                index,
                reason,
                units,
                dangling: None,
            });
        }
    }
    let orphans = stored
        .keys()
        .filter(|k| !seen.contains_key(k) && !keep.contains(k))
        .copied()
        .collect();
    BlobCheck {
        damaged,
        orphans,
        units: stored.len() as u64,
    }
}

/// Checks that `s` keeps the contract (panics where it does not): every
/// implementation's tests run it, this crate's and a new backend's alike.
/// It puts, syncs, reads, checks, reclaims and deletes a few small blobs.
#[doc(hidden)]
pub fn check_contract(s: &dyn BlobStore) {
    let a = s.put(&BlobHash::of(b"alpha"), b"alpha").unwrap();
    let b = s.put(&BlobHash::of(b"beta!"), b"beta!").unwrap();
    assert_ne!(a, b, "two puts share storage");
    s.sync().unwrap();
    let mut buf = [0u8; 3];
    s.get(a, 2, &mut buf).unwrap();
    assert_eq!(&buf, b"pha");
    assert!(s.has(a) && s.has(b));
    let refs = [BlobRef { loc: a, len: 5 }, BlobRef { loc: b, len: 5 }];
    let c = s.check(&refs, &[]).unwrap();
    assert!(c.damaged.is_empty(), "{:?}", c.damaged);
    assert!(c.orphans.is_empty(), "{:?}", c.orphans);
    // An orphan (put, never referenced) is found and reclaimed; the
    // referenced blobs stay.
    let o = s.put(&BlobHash::of(b"orphan"), b"orphan").unwrap();
    assert!(!s.check(&refs, &[]).unwrap().orphans.is_empty());
    assert!(matches!(s.reclaim(&refs, &[]).unwrap(), Reclaim::Freed(n) if n > 0));
    assert!(!s.has(o));
    s.get(b, 0, &mut [0u8; 5]).unwrap();
    // A ref far longer than what is stored is damage, and then nothing
    // is freed.
    let bad = [
        BlobRef { loc: a, len: 5 },
        BlobRef {
            loc: b,
            len: 1 << 20,
        },
    ];
    let o2 = s.put(&BlobHash::of(b"orphan2"), b"orphan2").unwrap();
    assert!(matches!(s.reclaim(&bad, &[]).unwrap(), Reclaim::Damaged(d) if d[0].index == 1));
    assert!(s.has(o2));
    s.delete(a).unwrap();
    assert!(!s.has(a));
    assert!(s.get(a, 0, &mut [0u8; 1]).is_err());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_keeps_the_contract() {
        check_contract(&MemBlobs::new());
    }

    #[test]
    fn container_store_keeps_the_contract() {
        use crate::qvfs::device::MemDevice;
        use crate::qvfs::Container;
        let c = Container::create(
            Box::new(MemDevice::default()),
            Box::new(MemDevice::default()),
            b"",
        )
        .unwrap();
        check_contract(&c);
    }

    #[test]
    fn memory_sync_is_the_durability_barrier() {
        let s = MemBlobs::new();
        let a = s.put(&BlobHash::of(b"a"), b"a").unwrap();
        assert!(s.durable().is_empty());
        s.sync().unwrap();
        assert_eq!(s.durable(), vec![a]);
        s.fail_syncs(true);
        let b = s.put(&BlobHash::of(b"b"), b"b").unwrap();
        assert!(s.sync().is_err());
        s.fail_syncs(false);
        assert!(s.sync().is_err(), "a failed sync is sticky");
        assert_eq!(s.sync_failures(), 1);
        s.clear_sync_failure();
        s.sync().unwrap();
        assert_eq!(s.durable(), vec![a, b]);
    }
}
