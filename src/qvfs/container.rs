//! The FAT and the clusters: allocation, chains, and cluster I/O.
//!
//! One implementation serves the store's internal container (which holds blob
//! bytes) and plain QVFS images. The whole FAT lives in memory (4 bytes per
//! 4 KiB cluster: 1 MiB of FAT per GiB of data) and is written through to the
//! `.qfi` device entry by entry.
//!
//! Invariants:
//! - Cluster 0 is never free (it holds the root folder of a plain image, or
//!   the container header of a store).
//! - A chain is only ever written into clusters that were free; committed
//!   chains are never overwritten (copy-on-write happens above this layer).
//! - Data is written before the FAT entries that chain it, so a crash leaves
//!   at worst allocated-but-unreferenced clusters (orphans), which
//!   [`Container::reclaim`] frees.
//! - Every chain walk is bounded by the cluster count, so a hostile FAT can
//!   neither loop nor point outside the image.
//!
//! # Concurrency rule
//! One lock, `state`, guards the in-memory FAT *and* every write of FAT
//! entries to the `.qfi` device. Whoever changes an entry (allocate,
//! release, free, reclaim, join) does so under the write lock, and every
//! `.qfi` write happens under that same write lock and writes the entry's
//! *current* in-memory value. So the device can never receive a value that
//! a later change has already replaced: a free that races an allocation of
//! the same clusters either lands before it (and the allocation's publish
//! overwrites it) or is serialized after the new owner's publish — which
//! cannot happen, since the clusters stay allocated in memory until the
//! free has written its zeros under the lock. Before this rule, a free
//! wrote its zeros after dropping the lock, and a writer that had just
//! reused the clusters could see its published chain zeroed on disk.
//!
//! A cluster is owned by exactly one party at a time: the free list, a
//! writer that reserved it (until its chain is freed or referenced by a
//! committed blob), or a committed blob. Only the owner writes its data or
//! asks for its FAT entries to be published. Data reads take no FAT lock
//! beyond the chain walk when the caller guarantees the blob stays
//! referenced; [`Container::read_chain`] holds the read lock throughout.
//!
//! Durability is ordered above this layer: data is written before the FAT
//! entries that chain it, and [`Container::sync`] (data, then FAT) runs
//! before a metadata commit refers to a new chain.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use super::device::Device;

/// Size of one cluster in bytes.
pub const CLUSTER_SIZE: usize = 4096;
/// FAT value of a free cluster.
pub const FAT_FREE: u32 = 0;
/// FAT value of the last cluster of a chain (end of chain).
pub const FAT_EOC: u32 = 0xFFFF_FFFF;
/// Start cluster recorded for a blob whose chain was quarantined by
/// `fsck --repair`: never a valid cluster (allocation stops below it), so
/// every read of it fails, and freeing it does nothing.
pub const QUARANTINED: u32 = FAT_EOC;

/// Why a chain could not be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// The start cluster is outside the image.
    StartOutOfRange(u32),
    /// The chain reaches a cluster marked free.
    FreeCluster { at: u32 },
    /// A next-cluster value points outside the image.
    NextOutOfRange { at: u32, next: u32 },
    /// The chain is longer than the image: it loops.
    Loop { start: u32 },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::StartOutOfRange(QUARANTINED) => write!(
                f,
                "the blob was quarantined by `queryfs fsck --repair` (its chain was damaged)"
            ),
            ChainError::StartOutOfRange(c) => write!(f, "start cluster {c} is outside the image"),
            ChainError::FreeCluster { at } => write!(f, "chain reaches free cluster {at}"),
            ChainError::NextOutOfRange { at, next } => {
                write!(f, "cluster {at} points to {next}, outside the image")
            }
            ChainError::Loop { start } => write!(f, "chain from cluster {start} loops"),
        }
    }
}

/// Follows the chain from `start` in `fat`, bounded by the FAT length.
pub fn walk_chain(fat: &[u32], start: u32) -> Result<Vec<u32>, ChainError> {
    match walk_chain_partial(fat, start) {
        (chain, None) => Ok(chain),
        (_, Some(e)) => Err(e),
    }
}

/// Follows the chain from `start` as far as it is sound: the clusters
/// reached, and the fault that stopped the walk, if any. Never takes more
/// than `fat.len()` steps.
pub fn walk_chain_partial(fat: &[u32], start: u32) -> (Vec<u32>, Option<ChainError>) {
    let n = fat.len() as u64;
    if start as u64 >= n {
        return (Vec::new(), Some(ChainError::StartOutOfRange(start)));
    }
    let mut out = Vec::new();
    let mut cur = start;
    loop {
        if out.len() as u64 >= n {
            return (out, Some(ChainError::Loop { start }));
        }
        let v = fat[cur as usize];
        if v == FAT_FREE {
            return (out, Some(ChainError::FreeCluster { at: cur }));
        }
        out.push(cur);
        if v == FAT_EOC {
            return (out, None);
        }
        if v as u64 >= n {
            return (out, Some(ChainError::NextOutOfRange { at: cur, next: v }));
        }
        cur = v;
    }
}

/// Splits a list of cluster indices into runs of consecutive indices:
/// `(first cluster, position in the list, length)`.
fn runs(clusters: &[u32]) -> Vec<(u32, usize, usize)> {
    let mut out: Vec<(u32, usize, usize)> = Vec::new();
    for (i, &c) in clusters.iter().enumerate() {
        match out.last_mut() {
            Some((first, _, len)) if *first as u64 + *len as u64 == c as u64 => *len += 1,
            _ => out.push((c, i, 1)),
        }
    }
    out
}

/// Number of clusters a chain needs for `len` bytes (at least one).
pub fn clusters_for(len: u64) -> u64 {
    len.div_ceil(CLUSTER_SIZE as u64).max(1)
}

/// A committed chain to check: its start cluster and the byte length it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRef {
    pub start: u32,
    pub len: u64,
}

/// A chain that failed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedChain {
    /// Index into the `chains` given to the check.
    pub index: usize,
    pub start: u32,
    /// Why, in words.
    pub reason: String,
    /// The allocated clusters the walk reached (each once, in chain order).
    pub clusters: Vec<u32>,
    /// A cluster the chain points to that is marked free: its own FAT entry
    /// was lost, but it is part of the chain (see [`Container::hold`]).
    pub dangling: Option<u32>,
}

/// What [`check_chains`] found.
#[derive(Debug, Clone, Default)]
pub struct ChainCheck {
    /// Per cluster: reached by a chain, kept, or cluster 0.
    pub live: Vec<bool>,
    pub damaged: Vec<DamagedChain>,
}

impl ChainCheck {
    /// Allocated clusters that nothing reaches.
    pub fn orphans(&self, fat: &[u32]) -> Vec<u32> {
        fat.iter()
            .enumerate()
            .filter(|&(i, &v)| v != FAT_FREE && !self.live.get(i).copied().unwrap_or(false))
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// What [`Container::reclaim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reclaim {
    /// The chains are sound; this many orphan clusters were freed.
    Freed(u64),
    /// Some chains are damaged; nothing was freed.
    Damaged(Vec<DamagedChain>),
}

/// Walks every chain once (each walk bounded by the FAT length) and finds
/// the damaged ones: a walk that fails, a chain whose length does not match
/// the bytes it holds (chains are allocated at exactly `clusters_for(len)`),
/// a cluster on two chains or on a chain and in `keep` or cluster 0 (all
/// sharers are damaged), and a cluster past the end of a `.qfd` of
/// `data_len` bytes. Clusters in `keep` count as live.
pub fn check_chains(fat: &[u32], chains: &[ChainRef], keep: &[u32], data_len: u64) -> ChainCheck {
    const NONE: u32 = u32::MAX;
    const KEPT: u32 = u32::MAX - 1;
    const SHARED: u32 = u32::MAX - 2;
    // Owner of each cluster: chain index, KEPT, SHARED or NONE.
    let mut owner = vec![NONE; fat.len()];
    let mut kept = vec![false; fat.len()];
    if !owner.is_empty() {
        owner[0] = KEPT;
        kept[0] = true;
    }
    for &k in keep {
        if let Some(o) = owner.get_mut(k as usize) {
            if fat[k as usize] != FAT_FREE {
                *o = KEPT;
                kept[k as usize] = true;
            }
        }
    }
    let clusters_in_data = data_len / CLUSTER_SIZE as u64;
    let mut reasons: Vec<Option<String>> = vec![None; chains.len()];
    let mut walked: Vec<Vec<u32>> = Vec::with_capacity(chains.len());
    let mut dangling: Vec<Option<u32>> = vec![None; chains.len()];
    for (i, c) in chains.iter().enumerate() {
        let (mut chain, err) = walk_chain_partial(fat, c.start);
        if let Some(ChainError::FreeCluster { at }) = err {
            dangling[i] = Some(at);
        }
        if let Some(e) = err {
            reasons[i] = Some(e.to_string());
            // A loop repeats clusters: keep each once.
            let mut seen = std::collections::HashSet::new();
            chain.retain(|x| seen.insert(*x));
        } else {
            let need = clusters_for(c.len);
            if chain.len() as u64 != need {
                reasons[i] = Some(format!(
                    "chain of {} clusters for {} bytes (needs {need})",
                    chain.len(),
                    c.len
                ));
            }
        }
        if reasons[i].is_none() {
            if let Some(&hi) = chain.iter().max() {
                if hi as u64 >= clusters_in_data {
                    reasons[i] = Some(format!(
                        "cluster {hi} lies past the end of blobs.qfd ({data_len} bytes, {clusters_in_data} clusters): the file was truncated"
                    ));
                }
            }
        }
        for &cl in &chain {
            let o = &mut owner[cl as usize];
            *o = match *o {
                NONE => i as u32,
                x if x == i as u32 => x,
                _ => SHARED,
            };
        }
        walked.push(chain);
    }
    // Second pass: every chain on a shared cluster is damaged.
    for (i, chain) in walked.iter().enumerate() {
        if reasons[i].is_some() {
            continue;
        }
        if let Some(&cl) = chain
            .iter()
            .find(|&&cl| matches!(owner[cl as usize], SHARED | KEPT))
        {
            reasons[i] = Some(if cl == 0 {
                "the chain reaches cluster 0, the container header (cross-link)".to_string()
            } else if kept[cl as usize] {
                format!("cluster {cl} also belongs to a quarantined chain (cross-link)")
            } else {
                format!("cluster {cl} is on another blob's chain too (cross-link)")
            });
        }
    }
    let live = owner.iter().map(|&o| o != NONE).collect();
    let damaged = reasons
        .into_iter()
        .zip(walked)
        .enumerate()
        .filter_map(|(i, (r, clusters))| {
            r.map(|reason| DamagedChain {
                index: i,
                start: chains[i].start,
                reason,
                clusters,
                dangling: dangling[i],
            })
        })
        .collect();
    ChainCheck { live, damaged }
}

struct FatState {
    fat: Vec<u32>,
    /// No free cluster below this index.
    hint: usize,
}

/// A QVFS cluster container: a `.qfi` FAT device and a `.qfd` cluster device.
pub struct Container {
    qfi: Box<dyn Device>,
    qfd: Box<dyn Device>,
    state: RwLock<FatState>,
    unsynced: AtomicBool,
    /// Failed syncs so far. After one, bytes written before it may be lost
    /// even if a later sync succeeds (the kernel may drop the dirty pages),
    /// so every later `sync` fails until [`Container::clear_sync_failure`].
    sync_failures: AtomicU64,
    sync_failed: AtomicBool,
    /// See [`Container::set_append_only`].
    append_only: AtomicBool,
    /// Held across a whole [`Container::sync`]: a second caller waits for a
    /// sync in progress instead of returning before its bytes are durable.
    syncing: std::sync::Mutex<()>,
}

impl Container {
    /// Creates a new container whose cluster 0 holds `cluster0` (zero-padded).
    pub fn create(qfi: Box<dyn Device>, qfd: Box<dyn Device>, cluster0: &[u8]) -> io::Result<Self> {
        assert!(cluster0.len() <= CLUSTER_SIZE);
        let mut c0 = vec![0u8; CLUSTER_SIZE];
        c0[..cluster0.len()].copy_from_slice(cluster0);
        qfd.write_at(&c0, 0)?;
        qfi.write_at(&FAT_EOC.to_le_bytes(), 0)?;
        qfd.sync()?;
        qfi.sync()?;
        Self::open(qfi, qfd)
    }

    /// Opens an existing container, reading the whole FAT. Checks only what
    /// makes the FAT usable at all; chain checks are the caller's (fsck).
    pub fn open(qfi: Box<dyn Device>, qfd: Box<dyn Device>) -> io::Result<Self> {
        let len = qfi.len()?;
        if len == 0 || len % 4 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("FAT file length {len} is not a positive multiple of 4"),
            ));
        }
        if len / 4 > u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "FAT has more than 2^32 entries",
            ));
        }
        // Read in pieces, so that opening costs the FAT and little more.
        let mut fat: Vec<u32> = Vec::with_capacity((len / 4) as usize);
        let mut raw = vec![0u8; (len as usize).min(1 << 20)];
        let mut at = 0u64;
        while at < len {
            let n = ((len - at) as usize).min(raw.len());
            qfi.read_at(&mut raw[..n], at)?;
            fat.extend(
                raw[..n]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            at += n as u64;
        }
        if fat[0] == FAT_FREE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "FAT[0] is free: no root cluster",
            ));
        }
        Ok(Container {
            qfi,
            qfd,
            state: RwLock::new(FatState { fat, hint: 1 }),
            unsynced: AtomicBool::new(false),
            sync_failures: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            append_only: AtomicBool::new(false),
            syncing: std::sync::Mutex::new(()),
        })
    }

    /// Number of clusters (FAT entries).
    pub fn cluster_count(&self) -> u64 {
        self.read_state().fat.len() as u64
    }

    /// Number of clusters not free.
    pub fn allocated_count(&self) -> u64 {
        self.state
            .read()
            .unwrap()
            .fat
            .iter()
            .filter(|&&v| v != FAT_FREE)
            .count() as u64
    }

    /// Runs `f` on the FAT, under the read lock.
    pub fn with_fat<R>(&self, f: impl FnOnce(&[u32]) -> R) -> R {
        f(&self.read_state().fat)
    }

    /// A copy of the FAT, for checks.
    pub fn fat_snapshot(&self) -> Vec<u32> {
        self.read_state().fat.clone()
    }

    /// Size of both files in bytes: (qfi, qfd).
    pub fn file_sizes(&self) -> io::Result<(u64, u64)> {
        Ok((self.qfi.len()?, self.qfd.len()?))
    }

    /// Reads one whole cluster.
    pub fn read_cluster(&self, index: u32, buf: &mut [u8; CLUSTER_SIZE]) -> io::Result<()> {
        self.qfd.read_at(buf, index as u64 * CLUSTER_SIZE as u64)
    }

    /// The chain starting at `start`.
    pub fn chain(&self, start: u32) -> Result<Vec<u32>, ChainError> {
        walk_chain(&self.read_state().fat, start)
    }

    /// Writes `data` into newly allocated clusters (lowest free first, then
    /// appended) and chains them; returns the start cluster. The clusters are
    /// reserved in memory before any I/O, so concurrent writers never share one.
    pub fn write_chain(&self, data: &[u8]) -> io::Result<u32> {
        let n = clusters_for(data.len() as u64) as usize;
        let clusters = self.allocate(n)?;
        match self.write_clusters(&clusters, data) {
            Ok(()) => Ok(clusters[0]),
            Err(e) => {
                self.release(&clusters);
                Err(e)
            }
        }
    }

    fn allocate(&self, n: usize) -> io::Result<Vec<u32>> {
        let mut st = self.write_state();
        let mut out = Vec::with_capacity(n);
        let mut i = st.hint.max(1);
        if self.append_only.load(Ordering::Acquire) {
            // Skip the scan: no free cluster is handed out (see set_append_only).
            i = st.fat.len();
        }
        while out.len() < n && i < st.fat.len() {
            if st.fat[i] == FAT_FREE {
                out.push(i as u32);
            }
            i += 1;
        }
        // Everything below `i` that was free is now taken.
        if !self.append_only.load(Ordering::Acquire) {
            st.hint = i;
        }
        while out.len() < n {
            let next = st.fat.len();
            if next as u64 >= FAT_EOC as u64 {
                // Give back what was taken before failing.
                for &c in &out {
                    st.fat[c as usize] = FAT_FREE;
                }
                st.hint = st.hint.min(out.first().copied().unwrap_or(1) as usize);
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "container has 2^32 clusters",
                ));
            }
            st.fat.push(FAT_FREE);
            out.push(next as u32);
        }
        for w in 0..out.len() {
            let next = if w + 1 < out.len() {
                out[w + 1]
            } else {
                FAT_EOC
            };
            st.fat[out[w] as usize] = next;
        }
        Ok(out)
    }

    fn release(&self, clusters: &[u32]) {
        let mut st = self.write_state();
        for &c in clusters {
            st.fat[c as usize] = FAT_FREE;
            st.hint = st.hint.min(c as usize);
        }
        // Best effort: a publish may have reached the device before the
        // failure. Stale entries left here are orphans that reclaim frees.
        let mut sorted = clusters.to_vec();
        sorted.sort_unstable();
        let _ = self.write_entries(&st.fat, &sorted);
    }

    /// The FAT under its write lock (a poisoned lock is taken over: every
    /// change below completes its memory update before any I/O).
    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, FatState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, FatState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the current in-memory values of `sorted` (ascending cluster
    /// numbers) to the `.qfi` device. Callers hold the write lock.
    fn write_entries(&self, fat: &[u32], sorted: &[u32]) -> io::Result<()> {
        for (first, _, len) in runs(sorted) {
            let mut left = len;
            let mut at = first as usize;
            while left > 0 {
                let k = left.min(1024);
                let mut raw = Vec::with_capacity(k * 4);
                for v in &fat[at..at + k] {
                    raw.extend_from_slice(&v.to_le_bytes());
                }
                self.qfi.write_at(&raw, at as u64 * 4)?;
                at += k;
                left -= k;
            }
        }
        self.unsynced.store(true, Ordering::Release);
        Ok(())
    }

    fn write_clusters(&self, clusters: &[u32], data: &[u8]) -> io::Result<()> {
        // Data first: a crash before the FAT write leaves only free clusters
        // with junk in them.
        self.write_in(clusters, 0, data, true)?;
        self.publish(clusters)
    }

    /// Reads `buf.len()` bytes of the chain at `start`, from byte `offset` of
    /// the chain. Holds the FAT read lock for the whole read, so the clusters
    /// cannot be freed and reused under it.
    pub fn read_chain(&self, start: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.read_state();
        let chain = walk_chain(&st.fat, start)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.read_in(&chain, offset, buf)
    }

    /// Reads `buf.len()` bytes at byte `offset` of an already walked chain.
    pub fn read_in(&self, chain: &[u32], offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cs = CLUSTER_SIZE as u64;
        let end = offset + buf.len() as u64;
        if end > chain.len() as u64 * cs {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "read past the end of the chain at cluster {}",
                    chain.first().copied().unwrap_or(0)
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let first = (offset / cs) as usize;
        let last = end.div_ceil(cs) as usize;
        let mut done = 0usize;
        for (c0, pos, len) in runs(&chain[first..last]) {
            let run_start = (first + pos) as u64 * cs;
            let from = offset.max(run_start);
            let to = end.min(run_start + len as u64 * cs);
            let n = (to - from) as usize;
            let dev_off = c0 as u64 * cs + (from - run_start);
            self.qfd.read_at(&mut buf[done..done + n], dev_off)?;
            done += n;
        }
        Ok(())
    }

    /// Reserves a chain of `n` clusters (lowest free first, then appended)
    /// in memory, for a writer that fills it with [`Container::write_in`]
    /// and then publishes it with [`Container::publish`].
    pub fn reserve(&self, n: usize) -> io::Result<Vec<u32>> {
        self.allocate(n.max(1))
    }

    /// Writes `data` at byte `offset` of a reserved chain; with `pad`, zeros
    /// the rest of the chain after it, so that every cluster is written.
    pub fn write_in(&self, chain: &[u32], offset: u64, data: &[u8], pad: bool) -> io::Result<()> {
        let cs = CLUSTER_SIZE as u64;
        let cap = chain.len() as u64 * cs;
        let end = offset + data.len() as u64;
        if end > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of a reserved chain",
            ));
        }
        let mut at = offset;
        let mut done = 0usize;
        while at < end || (pad && at < cap) {
            let idx = (at / cs) as usize;
            // Extend over clusters that are consecutive on the device.
            let mut run = 1;
            while idx + run < chain.len() && chain[idx + run] == chain[idx] + run as u32 {
                run += 1;
            }
            let run_end = (idx + run) as u64 * cs;
            let dev = chain[idx] as u64 * cs + at % cs;
            let n = (end.min(run_end).saturating_sub(at)) as usize;
            if n > 0 {
                self.qfd.write_at(&data[done..done + n], dev)?;
                done += n;
                at += n as u64;
            } else {
                // Only padding is left in this run.
                let z = vec![0u8; (run_end - at) as usize];
                self.qfd.write_at(&z, dev)?;
                at = run_end;
            }
        }
        self.unsynced.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes the FAT entries of a reserved chain to the `.qfi` file.
    pub fn publish(&self, chain: &[u32]) -> io::Result<()> {
        let mut sorted = chain.to_vec();
        sorted.sort_unstable();
        let st = self.write_state();
        self.write_entries(&st.fat, &sorted)
    }

    /// Appends the chain starting at `next` to the chain ending at `last`
    /// (in memory; publish `last` to write it).
    pub fn join(&self, last: u32, next: u32) {
        self.write_state().fat[last as usize] = next;
    }

    /// Frees the chain at `start`. Only call this after the transaction that
    /// dropped its last reference has committed.
    ///
    /// In append-only mode, and for [`QUARANTINED`], nothing is freed: the
    /// clusters stay allocated (orphans) until a reclaim on a sound store.
    pub fn free_chain(&self, start: u32) -> io::Result<()> {
        if start == QUARANTINED || self.append_only.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.write_state();
        let chain = match walk_chain(&st.fat, start) {
            Ok(c) => c,
            // A damaged chain is left for fsck to report rather than freeing
            // clusters that may belong to someone else.
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };
        for &c in &chain {
            st.fat[c as usize] = FAT_FREE;
        }
        st.hint = st.hint.min(*chain.iter().min().unwrap() as usize);
        let mut sorted = chain;
        sorted.sort_unstable();
        // Under the same write lock: no allocation can take these clusters
        // before their zeros are on the device (see the concurrency rule).
        self.write_entries(&st.fat, &sorted)
    }

    /// Puts the container in (or out of) append-only mode: allocation only
    /// appends new clusters at the end and [`Container::free_chain`] frees
    /// nothing, so no cluster that is allocated now (which may belong to a
    /// damaged chain) is ever handed to a new writer. A store with damaged
    /// chains is served this way until `fsck --repair`.
    pub fn set_append_only(&self, on: bool) {
        self.append_only.store(on, Ordering::Release);
    }

    pub fn append_only(&self) -> bool {
        self.append_only.load(Ordering::Acquire)
    }

    /// Frees every allocated cluster (except 0) that is provably unreferenced:
    /// on no chain of `chains` and not in `keep`. First walks every chain once
    /// ([`check_chains`]); if any is damaged (broken, looping, too short or
    /// too long for its size, sharing a cluster with another, or reaching
    /// past the end of the `.qfd` file), nothing is freed — an allocated
    /// cluster might then be the lost part of a damaged chain — and the
    /// damage is returned instead. The check and the frees happen under the
    /// write lock.
    pub fn reclaim(&self, chains: &[ChainRef], keep: &[u32]) -> io::Result<Reclaim> {
        let data_len = self.qfd.len()?;
        let mut st = self.write_state();
        let check = check_chains(&st.fat, chains, keep, data_len);
        if !check.damaged.is_empty() {
            return Ok(Reclaim::Damaged(check.damaged));
        }
        let orphans: Vec<u32> = st
            .fat
            .iter()
            .enumerate()
            .filter(|&(i, &v)| v != FAT_FREE && !check.live[i])
            .map(|(i, _)| i as u32)
            .collect();
        if orphans.is_empty() {
            return Ok(Reclaim::Freed(0));
        }
        for &c in &orphans {
            st.fat[c as usize] = FAT_FREE;
            st.hint = st.hint.min(c as usize);
        }
        self.write_entries(&st.fat, &orphans)?;
        Ok(Reclaim::Freed(orphans.len() as u64))
    }

    /// Marks those of `clusters` that are free as allocated (end of chain),
    /// so that no writer is ever given them: for the clusters of a damaged
    /// chain whose own FAT entries were lost. Under the write lock, like
    /// every FAT change.
    pub fn hold(&self, clusters: &[u32]) -> io::Result<()> {
        let mut st = self.write_state();
        let mut changed: Vec<u32> = clusters
            .iter()
            .copied()
            .filter(|&c| (c as usize) < st.fat.len() && st.fat[c as usize] == FAT_FREE)
            .collect();
        changed.sort_unstable();
        changed.dedup();
        for &c in &changed {
            st.fat[c as usize] = FAT_EOC;
        }
        self.write_entries(&st.fat, &changed)
    }

    /// [`check_chains`] on the current FAT and `.qfd` length.
    pub fn check(&self, chains: &[ChainRef], keep: &[u32]) -> io::Result<ChainCheck> {
        let data_len = self.qfd.len()?;
        let st = self.read_state();
        Ok(check_chains(&st.fat, chains, keep, data_len))
    }

    /// Makes all data and FAT writes so far durable: data first, then FAT.
    /// Fails while an earlier failure is not cleared.
    pub fn sync(&self) -> io::Result<()> {
        // One sync at a time: `unsynced` is cleared before the device syncs
        // run, so without this a second caller would see it clear and
        // return while the first one's syncs (covering its bytes) are still
        // in progress.
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier sync of the container failed: what was written before it may be lost",
            ));
        }
        if self.unsynced.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.qfd.sync().and_then(|_| self.qfi.sync()) {
                self.unsynced.store(true, Ordering::Release);
                self.sync_failures.fetch_add(1, Ordering::AcqRel);
                self.sync_failed.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// How many syncs have failed: a writer notes it before writing blob
    /// bytes, and does not commit references to them if it moved.
    pub fn sync_failures(&self) -> u64 {
        self.sync_failures.load(Ordering::Acquire)
    }

    /// Lets `sync` succeed again, once nothing that may refer to bytes
    /// written before the failure can still commit (its references were
    /// rolled back, and later writers check [`Container::sync_failures`]).
    pub fn clear_sync_failure(&self) {
        self.sync_failed.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qvfs::device::MemDevice;
    use std::sync::Arc;

    struct Shared(Arc<MemDevice>);
    impl Device for Shared {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mem() -> (Container, Arc<MemDevice>, Arc<MemDevice>) {
        let qfi = Arc::new(MemDevice::default());
        let qfd = Arc::new(MemDevice::default());
        let c = Container::create(
            Box::new(Shared(qfi.clone())),
            Box::new(Shared(qfd.clone())),
            b"",
        )
        .unwrap();
        (c, qfi, qfd)
    }

    #[test]
    fn write_read_free_reuse() {
        let (c, qfi, qfd) = mem();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let s = c.write_chain(&data).unwrap();
        assert_eq!(s, 1);
        assert_eq!(c.chain(s).unwrap(), vec![1, 2, 3]);
        let mut back = vec![0u8; data.len()];
        c.read_chain(s, 0, &mut back).unwrap();
        assert_eq!(back, data);
        let mut mid = vec![0u8; 5000];
        c.read_chain(s, 3000, &mut mid).unwrap();
        assert_eq!(&mid[..], &data[3000..8000]);
        assert_eq!(qfi.len().unwrap(), 16);
        assert_eq!(qfd.len().unwrap(), 4 * 4096);
        // The tail of the last cluster is zeroed.
        assert!(qfd.snapshot()[4096 + 10_000..4 * 4096]
            .iter()
            .all(|&b| b == 0));
        c.free_chain(s).unwrap();
        assert_eq!(&qfi.snapshot()[4..16], &[0u8; 12]);
        // Lowest free first.
        let t = c.write_chain(b"x").unwrap();
        assert_eq!(t, 1);
        assert_eq!(c.allocated_count(), 2);
        // Reopen reads the same FAT.
        let c2 = Container::open(
            Box::new(MemDevice::with_bytes(qfi.snapshot())),
            Box::new(MemDevice::with_bytes(qfd.snapshot())),
        )
        .unwrap();
        assert_eq!(c2.fat_snapshot(), c.fat_snapshot());
    }

    fn refs(starts: &[(u32, u64)]) -> Vec<ChainRef> {
        starts
            .iter()
            .map(|&(start, len)| ChainRef { start, len })
            .collect()
    }

    #[test]
    fn reclaim_frees_unreferenced_chains() {
        let (c, _, _) = mem();
        let a = c.write_chain(&[1u8; 9000]).unwrap();
        let b = c.write_chain(&[2u8; 100]).unwrap();
        assert_eq!(
            c.reclaim(&refs(&[(a, 9000)]), &[]).unwrap(),
            Reclaim::Freed(1)
        );
        assert!(c.chain(b).is_err());
        assert_eq!(c.chain(a).unwrap().len(), 3);
        // Kept clusters are not freed.
        let d = c.write_chain(&[3u8; 5000]).unwrap();
        let kept = c.chain(d).unwrap();
        assert_eq!(
            c.reclaim(&refs(&[(a, 9000)]), &kept).unwrap(),
            Reclaim::Freed(0)
        );
        assert_eq!(c.chain(d).unwrap(), kept);
    }

    /// Plants one kind of damage in a store of three blobs plus an orphan
    /// and checks that reclaim frees nothing and names exactly the victims.
    fn damaged_case(plant: impl FnOnce(&Container, &[Vec<u32>]), want: &[usize], why: &str) {
        let (c, _, _) = mem();
        let sizes = [3 * 4096u64, 2 * 4096 + 1, 4096];
        let starts: Vec<u32> = sizes
            .iter()
            .map(|&n| c.write_chain(&vec![7u8; n as usize]).unwrap())
            .collect();
        let chains: Vec<Vec<u32>> = starts.iter().map(|&s| c.chain(s).unwrap()).collect();
        let orphan = c.write_chain(b"orphan").unwrap();
        plant(&c, &chains);
        let before = c.fat_snapshot();
        let r: Vec<ChainRef> = starts
            .iter()
            .zip(sizes)
            .map(|(&start, len)| ChainRef { start, len })
            .collect();
        match c.reclaim(&r, &[]).unwrap() {
            Reclaim::Damaged(d) => {
                let got: Vec<usize> = d.iter().map(|x| x.index).collect();
                assert_eq!(got, want, "{why}: {d:?}");
                assert!(d.iter().all(|x| x.reason.contains(why)), "{why}: {d:?}");
            }
            other => panic!("{why}: reclaim on a damaged FAT gave {other:?}"),
        }
        // Nothing freed: not the orphan, not the damaged chains' clusters.
        assert_eq!(c.fat_snapshot(), before, "{why}");
        assert_ne!(c.fat_snapshot()[orphan as usize], FAT_FREE);
    }

    fn set(c: &Container, cl: u32, v: u32) {
        c.write_state().fat[cl as usize] = v;
    }

    #[test]
    fn reclaim_refuses_every_kind_of_damaged_chain() {
        // A FAT entry zeroed in the middle of blob 0's chain.
        damaged_case(|c, ch| set(c, ch[0][1], FAT_FREE), &[0], "free cluster");
        // A loop.
        damaged_case(|c, ch| set(c, ch[0][2], ch[0][0]), &[0], "loops");
        // Out of range.
        damaged_case(|c, ch| set(c, ch[1][0], 999_999), &[1], "outside the image");
        // Shorter than its size needs.
        damaged_case(|c, ch| set(c, ch[0][1], FAT_EOC), &[0], "needs 3");
        // Two blobs share a cluster: blob 2's only cluster now leads into
        // blob 1's last one.
        damaged_case(|c, ch| set(c, ch[2][0], ch[1][2]), &[1, 2], "");
        // Longer than its size needs (pointing into an orphan).
        damaged_case(
            |c, ch| {
                let o = c.write_chain(b"x").unwrap();
                set(c, ch[2][0], o);
            },
            &[2],
            "needs 1",
        );
    }

    #[test]
    fn check_finds_chains_past_the_end_of_the_data_file() {
        let (c0, qfi, qfd) = mem();
        let a = c0.write_chain(&[1u8; 4096]).unwrap();
        let b = c0.write_chain(&[2u8; 8192]).unwrap();
        let r = [
            ChainRef {
                start: a,
                len: 4096,
            },
            ChainRef {
                start: b,
                len: 8192,
            },
        ];
        assert!(c0.check(&r, &[]).unwrap().damaged.is_empty());
        let mut short = qfd.snapshot();
        short.truncate(3 * 4096);
        let c = Container::open(
            Box::new(MemDevice::with_bytes(qfi.snapshot())),
            Box::new(MemDevice::with_bytes(short)),
        )
        .unwrap();
        let d = c.check(&r, &[]).unwrap().damaged;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].start, b);
        assert!(d[0].reason.contains("truncated"), "{}", d[0].reason);
        assert!(matches!(c.reclaim(&r, &[]).unwrap(), Reclaim::Damaged(_)));
    }

    #[test]
    fn hold_keeps_a_free_cluster_from_writers() {
        let (c, qfi, _) = mem();
        let a = c.write_chain(&[1u8; 3 * 4096]).unwrap();
        let ch = c.chain(a).unwrap();
        set(&c, ch[1], FAT_FREE);
        let d = c
            .check(
                &[ChainRef {
                    start: a,
                    len: 3 * 4096,
                }],
                &[],
            )
            .unwrap();
        assert_eq!(d.damaged[0].dangling, Some(ch[1]));
        assert_eq!(d.damaged[0].clusters, vec![ch[0]]);
        c.hold(&[ch[1]]).unwrap();
        assert_eq!(
            &qfi.snapshot()[ch[1] as usize * 4..][..4],
            &FAT_EOC.to_le_bytes()
        );
        let b = c.write_chain(b"x").unwrap();
        assert!(!ch.contains(&b), "a held cluster was reused");
    }

    #[test]
    fn append_only_never_reuses_a_cluster() {
        let (c, _, _) = mem();
        let a = c.write_chain(&[1u8; 3 * 4096]).unwrap();
        let a_chain = c.chain(a).unwrap();
        set(&c, a_chain[1], FAT_FREE); // damage: cluster 2 is free now
        c.set_append_only(true);
        let n = c.cluster_count();
        let b = c.write_chain(&[2u8; 4096]).unwrap();
        assert_eq!(b as u64, n, "allocation appends");
        // Frees do nothing.
        c.free_chain(b).unwrap();
        assert_ne!(c.fat_snapshot()[b as usize], FAT_FREE);
        c.set_append_only(false);
        assert_eq!(c.write_chain(b"x").unwrap(), a_chain[1]);
    }

    #[test]
    fn hostile_fat_is_bounded() {
        // 0 -> EOC, 1 -> 2, 2 -> 1 (loop), 3 -> 99 (out of range), 4 free.
        let fat = vec![FAT_EOC, 2, 1, 99, 0];
        assert_eq!(walk_chain(&fat, 1), Err(ChainError::Loop { start: 1 }));
        assert_eq!(
            walk_chain(&fat, 3),
            Err(ChainError::NextOutOfRange { at: 3, next: 99 })
        );
        assert_eq!(walk_chain(&fat, 4), Err(ChainError::FreeCluster { at: 4 }));
        assert_eq!(walk_chain(&fat, 7), Err(ChainError::StartOutOfRange(7)));
    }

    #[test]
    fn open_rejects_bad_fat_files() {
        let bad = Container::open(
            Box::new(MemDevice::with_bytes(vec![1, 2, 3])),
            Box::new(MemDevice::default()),
        );
        assert!(bad.is_err());
        let free_root = Container::open(
            Box::new(MemDevice::with_bytes(vec![0; 4])),
            Box::new(MemDevice::default()),
        );
        assert!(free_root.is_err());
    }
}
