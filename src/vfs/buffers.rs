//! Write buffers: dirty chunks, truncation, holes, fallocate, SEEK_DATA.

#[allow(unused_imports)]
use super::*;

#[derive(Default)]
pub(super) struct FileData {
    /// Committed chunks, by index.
    pub(super) chunks: BTreeMap<u64, ChunkRef>,
    /// Chunks written but not committed, by index. A buffer may be shorter
    /// than the chunk; the rest reads as zeros.
    pub(super) dirty: BTreeMap<u64, Vec<u8>>,
    pub(super) dirty_bytes: usize,
    /// Committed chunks from this index on were cut off by a truncate.
    pub(super) drop_from: Option<u64>,
    /// Single committed chunks removed by a hole punch (their rows go at
    /// the next commit).
    pub(super) holes: BTreeSet<u64>,
    /// Hashes of committed chunks removed (truncate, punch): one reference
    /// each is dropped at the next commit.
    pub(super) dropped: Vec<[u8; 32]>,
    /// Size or times changed and not committed.
    pub(super) meta_dirty: bool,
    pub(super) size: u64,
    pub(super) mtime: i64,
    /// `Fs::rollbacks` when `chunks` was last known to match the store.
    pub(super) epoch: u64,
}

/// st_blocks (512-byte units) of a chunk holding `len` bytes.
pub(super) fn blocks_of(len: usize) -> u64 {
    (len as u64).div_ceil(512)
}

/// The length of `buf` without its trailing zeros: chunks are stored in
/// this canonical form (the rest reads as zeros), so equal content is one
/// blob and one content id however it was written, and a chunk of zeros is
/// a hole that holds nothing.
pub(super) fn trimmed_len(buf: &[u8]) -> usize {
    buf.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

impl FileData {
    /// A write or truncate at `now`: it replaces any explicit time set before.
    pub(super) fn set_mtime(&mut self, of: &OpenFile, now: i64) {
        self.mtime = now;
        self.meta_dirty = true;
        of.mtime.store(now, Ordering::Release);
        let mut a = of.attrs.lock();
        a.mtime = None;
        a.ctime = None;
    }

    /// Whether anything written to the file (or changed on it) is not
    /// committed yet.
    pub(super) fn unsaved(&self, of: &OpenFile) -> bool {
        !self.dirty.is_empty()
            || self.meta_dirty
            || self.drop_from.is_some()
            || !self.holes.is_empty()
            || !of.attrs.lock().is_empty()
    }

    /// The file's st_blocks as it stands (committed and dirty chunks).
    /// O(chunks held): called at commit, and for getattr of a dirty file
    /// through the `blocks` mirror.
    pub(super) fn blocks(&self) -> u64 {
        let committed: u64 = self
            .chunks
            .iter()
            .filter(|(i, _)| !self.dirty.contains_key(i))
            .map(|(_, c)| blocks_of(c.size as usize))
            .sum();
        committed + self.dirty.values().map(|b| blocks_of(b.len())).sum::<u64>()
    }
}

/// Attribute changes made to a file with unsaved writes, saved with them.
#[derive(Default, Clone, Copy, PartialEq)]
pub(super) struct AttrChange {
    pub(super) perm: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) atime: Option<i64>,
    /// An explicit mtime (`utimensat`); a later write replaces it.
    pub(super) mtime: Option<i64>,
    pub(super) btime: Option<i64>,
    pub(super) ctime: Option<i64>,
}

impl AttrChange {
    pub(super) fn is_empty(&self) -> bool {
        *self == AttrChange::default()
    }

    /// Adds a later change: what it sets wins.
    pub(super) fn merge(&mut self, later: &AttrChange) {
        self.perm = later.perm.or(self.perm);
        self.uid = later.uid.or(self.uid);
        self.gid = later.gid.or(self.gid);
        self.atime = later.atime.or(self.atime);
        self.mtime = later.mtime.or(self.mtime);
        self.btime = later.btime.or(self.btime);
        self.ctime = later.ctime.or(self.ctime);
    }

    /// Applies the change to `i`; the mtime only when set explicitly.
    pub(super) fn apply(&self, i: &mut Attr) {
        i.perm = self.perm.unwrap_or(i.perm);
        i.uid = self.uid.unwrap_or(i.uid);
        i.gid = self.gid.unwrap_or(i.gid);
        i.atime = self.atime.unwrap_or(i.atime);
        i.mtime = self.mtime.unwrap_or(i.mtime);
        i.btime = self.btime.unwrap_or(i.btime);
        i.ctime = self.ctime.unwrap_or(i.ctime);
    }
}

/// State of a regular file while at least one handle has it open.
pub(super) struct OpenFile {
    pub(super) ino: u64,
    pub(super) opens: AtomicU32,
    /// Mirrors of `data.size` / `data.mtime`, readable without the data lock.
    pub(super) size: AtomicU64,
    pub(super) mtime: AtomicI64,
    /// st_blocks as the file stands, dirty chunks included.
    pub(super) blocks: AtomicU64,
    /// Attribute changes not yet committed (changed only under the data
    /// lock; read by `overlay` without it).
    pub(super) attrs: Mutex<AttrChange>,
    /// The committed inode row and the store generation it is current for:
    /// `getattr` of an open file needs no query until the next write.
    pub(super) cached: Mutex<Option<(u64, Attr)>>,
    pub(super) data: RwLock<FileData>,
}

impl OpenFile {
    /// `attr` (the committed row) with the uncommitted size, times and
    /// attributes applied.
    pub(super) fn overlay(&self, mut attr: Attr) -> Attr {
        attr.size = self.size.load(Ordering::Acquire);
        attr.blocks = self.blocks.load(Ordering::Acquire);
        let m = self.mtime.load(Ordering::Acquire);
        if m > attr.mtime {
            attr.mtime = m;
            attr.ctime = attr.ctime.max(m);
        }
        self.attrs.lock().apply(&mut attr);
        attr
    }
}

/// BLAKE3 of each dirty chunk, on every core when there are many (a large
/// file's commit hashes while the writer waits for it).
pub(super) fn hash_chunks(dirty: &BTreeMap<u64, Vec<u8>>) -> Vec<(u64, [u8; 32])> {
    let hash = |(&idx, buf): (&u64, &Vec<u8>)| (idx, *blake3::hash(buf).as_bytes());
    // Asked once: `available_parallelism` reads cgroup files each call.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let bytes: usize = dirty.values().map(Vec::len).sum();
    let threads = match bytes {
        b if b < 4 << 20 => 1,
        _ => *CORES
            .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8))),
    };
    if threads < 2 {
        return dirty.iter().map(hash).collect();
    }
    let all: Vec<(&u64, &Vec<u8>)> = dirty.iter().collect();
    std::thread::scope(|s| {
        let parts: Vec<_> = all
            .chunks(all.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(|&e| hash(e)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("hash thread"))
            .collect()
    })
}

/// Content id of a file: BLAKE3 over its size and the (index, hash) of
/// every chunk it holds, in index order. Chunks are canonical (trailing
/// zeros trimmed, zero chunks are holes, see [`trimmed_len`]), so files with
/// equal content have equal ids, and the work is proportional to the chunks
/// held, not to the size (a 1 PB sparse file costs nothing).
pub fn content_id(chunks: &[(u64, [u8; 32])], size: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"queryfs content id 2\0");
    h.update(&size.to_le_bytes());
    for (idx, hash) in chunks {
        h.update(&idx.to_le_bytes());
        h.update(hash);
    }
    *h.finalize().as_bytes()
}

impl Fs {
    /// What chunk `idx` contributes to st_blocks as things stand.
    pub(super) fn chunk_blocks(st: &FileData, idx: u64) -> u64 {
        match (st.dirty.get(&idx), st.chunks.get(&idx)) {
            (Some(b), _) => blocks_of(b.len()),
            (None, Some(c)) => blocks_of(c.size as usize),
            _ => 0,
        }
    }

    /// Puts `data` at `offset` into the dirty buffers (size and times are
    /// the caller's).
    pub(super) fn write_locked(
        &self,
        of: &OpenFile,
        st: &mut FileData,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let cs = self.chunk_size;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            let before = Self::chunk_blocks(st, idx);
            if !st.dirty.contains_key(&idx) {
                // Start from the committed chunk unless the write covers it all.
                let mut buf = Vec::with_capacity(cs as usize);
                if !(within == 0 && n as u64 == cs) {
                    if let Some(c) = st.chunks.get(&idx) {
                        buf.resize(c.size as usize, 0);
                        self.read_chunk(c, 0, &mut buf)?;
                    }
                }
                st.dirty_bytes += cs as usize;
                st.dirty.insert(idx, buf);
            }
            let buf = st.dirty.get_mut(&idx).unwrap();
            // Overwrite what the buffer holds, append the rest (no zero fill
            // of bytes about to be written).
            if buf.len() < within {
                buf.resize(within, 0);
            }
            let over = (buf.len() - within).min(n);
            buf[within..within + over].copy_from_slice(&src[..over]);
            buf.extend_from_slice(&src[over..]);
            let after = Self::chunk_blocks(st, idx);
            let b = of.blocks.load(Ordering::Acquire);
            of.blocks
                .store((b + after).saturating_sub(before), Ordering::Release);
            pos += n as u64;
        }
        Ok(())
    }

    pub(super) fn truncate_locked(&self, of: &OpenFile, st: &mut FileData, size: u64, now: i64) {
        let cs = self.chunk_size;
        if size < st.size {
            let keep = size.div_ceil(cs);
            let cut: Vec<u64> = st.chunks.range(keep..).map(|(&i, _)| i).collect();
            for i in cut {
                let c = st.chunks.remove(&i).unwrap();
                st.dropped.push(c.hash);
            }
            st.drop_from = Some(st.drop_from.map_or(keep, |d| d.min(keep)));
            let removed: Vec<u64> = st.dirty.range(keep..).map(|(&k, _)| k).collect();
            for k in removed {
                st.dirty.remove(&k);
                st.dirty_bytes = st.dirty_bytes.saturating_sub(cs as usize);
            }
            let tail = (size % cs) as usize;
            if tail != 0 {
                let idx = size / cs;
                if let Some(buf) = st.dirty.get_mut(&idx) {
                    buf.truncate(tail);
                } else if let Some(c) = st.chunks.get(&idx) {
                    if c.size as usize > tail {
                        let mut buf = vec![0u8; tail];
                        // On a read error the chunk reads as zeros from here on.
                        if self.read_chunk(c, 0, &mut buf).is_err() {
                            buf.fill(0);
                        }
                        st.dirty.insert(idx, buf);
                        st.dirty_bytes += cs as usize;
                    }
                }
            }
        }
        st.size = size;
        st.set_mtime(of, now);
        of.size.store(size, Ordering::Release);
        of.blocks.store(st.blocks(), Ordering::Release);
    }

    /// Makes `[offset, offset + len)` read as zeros and hold nothing:
    /// whole chunks in it are dropped (their references go at the next
    /// commit), partial ones get zeros written. Work is proportional to the
    /// chunks the range holds, not to its length. The size is unchanged.
    pub(super) fn punch_locked(
        &self,
        of: &OpenFile,
        st: &mut FileData,
        offset: u64,
        len: u64,
        now: i64,
    ) -> Result<()> {
        let end = offset.saturating_add(len).min(st.size);
        if offset >= end {
            return Ok(());
        }
        let cs = self.chunk_size;
        let (first, last) = (offset / cs, (end - 1) / cs);
        let mut held: BTreeSet<u64> = st.chunks.range(first..=last).map(|(&i, _)| i).collect();
        held.extend(st.dirty.range(first..=last).map(|(&i, _)| i));
        for idx in held {
            let (cstart, cend) = (idx * cs, ((idx + 1) * cs).min(st.size));
            if offset <= cstart && end >= cend {
                if st.dirty.remove(&idx).is_some() {
                    st.dirty_bytes = st.dirty_bytes.saturating_sub(cs as usize);
                }
                if let Some(c) = st.chunks.remove(&idx) {
                    st.dropped.push(c.hash);
                    st.holes.insert(idx);
                }
            } else {
                let (from, to) = (offset.max(cstart), end.min(cend));
                let zeros = vec![0u8; (to - from) as usize];
                self.write_locked(of, st, from, &zeros)?;
            }
        }
        st.set_mtime(of, now);
        of.blocks.store(st.blocks(), Ordering::Release);
        Ok(())
    }

    /// fallocate(2): mode 0 and `KEEP_SIZE` (nothing to reserve in a
    /// content-addressed store: the size grows unless `KEEP_SIZE`),
    /// `PUNCH_HOLE | KEEP_SIZE`, and `ZERO_RANGE` (with or without
    /// `KEEP_SIZE`). Collapse, insert and unshare are not supported.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(KEEP | PUNCH | ZERO) != 0 || (mode & PUNCH != 0 && mode & ZERO != 0) {
            return Err(FsError::NotSupported);
        }
        if mode & PUNCH != 0 && mode & KEEP == 0 {
            return Err(FsError::NotSupported);
        }
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes".into()));
        }
        let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
        if end > FILE_MAX {
            return Err(FsError::TooBig);
        }
        let of = self.file(fh)?;
        let mut st = self.data_mut(&of)?;
        let now = now_ns();
        if mode & (PUNCH | ZERO) != 0 {
            self.punch_locked(&of, &mut st, offset, len, now)?;
        }
        if mode & KEEP == 0 && end > st.size {
            st.size = end;
            st.set_mtime(&of, now);
            of.size.store(end, Ordering::Release);
        }
        Ok(())
    }

    /// lseek(2) with `SEEK_DATA` / `SEEK_HOLE`, at chunk granularity:
    /// a chunk that holds nothing is a hole; the end of the file is one.
    pub fn seek_data(&self, fh: u64, offset: u64, hole: bool) -> Result<u64> {
        let of = self.file(fh)?;
        let st = self.data_ref(&of)?;
        if offset >= st.size {
            return Err(FsError::NoSuchOffset);
        }
        let cs = self.chunk_size;
        let held = |idx: u64| st.dirty.contains_key(&idx) || st.chunks.contains_key(&idx);
        let start = offset / cs;
        if hole {
            // The first index at or after `start` that holds nothing.
            let mut idx = start;
            let mut it = st
                .chunks
                .range(start..)
                .map(|(&i, _)| i)
                .chain(st.dirty.range(start..).map(|(&i, _)| i))
                .collect::<BTreeSet<u64>>()
                .into_iter();
            loop {
                match it.next() {
                    Some(i) if i == idx => idx += 1,
                    _ => break,
                }
            }
            Ok((idx * cs).max(offset).min(st.size))
        } else {
            if held(start) {
                return Ok(offset);
            }
            let next = st
                .chunks
                .range(start..)
                .map(|(&i, _)| i)
                .next()
                .into_iter()
                .chain(st.dirty.range(start..).map(|(&i, _)| i).next())
                .min();
            match next {
                Some(i) if i * cs < st.size => Ok(i * cs),
                _ => Err(FsError::NoSuchOffset),
            }
        }
    }

    /// copy_file_range(2): a read and a write through the core (chunks that
    /// come out equal are stored once anyway).
    pub fn copy_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let len = len.min(1 << 30) as usize;
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(4 << 20);
            let data = self.read(fh_in, off_in + done as u64, n as u32)?;
            if data.is_empty() {
                break;
            }
            self.write(fh_out, off_out + done as u64, &data)?;
            done += data.len();
            if data.len() < n {
                break;
            }
        }
        Ok(done as u32)
    }
}
