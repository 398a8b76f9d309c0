//! Open files: the open-file table, handles, reads and writes.

#[allow(unused_imports)]
use super::*;

impl Fs {
    /// Gets the open state of `ino`, loading it on first open; counts one open.
    pub(super) fn acquire(&self, ino: u64) -> Result<Arc<OpenFile>> {
        if let Some(of) = self.open.lock().get(&ino) {
            of.opens.fetch_add(1, Ordering::AcqRel);
            return Ok(of.clone());
        }
        // Load and install under the metadata lock (order: metadata, then
        // the table): no commit or unlink of the file can fall between
        // reading its rows and publishing its open state. Loading outside
        // it let a reader install chunks that a close had just replaced, or
        // that an unlink had just freed.
        let m = self.meta();
        if let Some(of) = self.open.lock().get(&ino) {
            of.opens.fetch_add(1, Ordering::AcqRel);
            return Ok(of.clone());
        }
        let a = self.inode(&*m, ino).map_err(stale)?;
        if a.is_dir() {
            return Err(FsError::IsDir);
        }
        if a.kind != FileKind::File {
            return Err(FsError::Invalid("only regular files hold data".into()));
        }
        if a.nlink == 0 {
            // Unlinked and not open: it is being deleted.
            return Err(FsError::NotFound);
        }
        let c = m.chunks(ino)?;
        let of = self.install(&a, c);
        drop(m);
        Ok(of)
    }

    /// Counts one open of `attr`'s file, installing its open state (with
    /// the committed `chunks`) unless another open beat us to it.
    pub(super) fn install(&self, attr: &Attr, chunks: Vec<(u64, ChunkRef)>) -> Arc<OpenFile> {
        let mut table = self.open.lock();
        let of = table.entry(attr.ino).or_insert_with(|| {
            Arc::new(OpenFile {
                ino: attr.ino,
                opens: AtomicU32::new(0),
                size: AtomicU64::new(attr.size),
                mtime: AtomicI64::new(attr.mtime),
                blocks: AtomicU64::new(attr.blocks),
                attrs: Mutex::new(AttrChange::default()),
                cached: Mutex::new(None),
                data: RwLock::new(FileData {
                    epoch: self.rollbacks.load(Ordering::Acquire),
                    chunks: chunks.into_iter().collect(),
                    size: attr.size,
                    mtime: attr.mtime,
                    ..Default::default()
                }),
            })
        });
        of.opens.fetch_add(1, Ordering::AcqRel);
        of.clone()
    }

    /// Commits the file (when `commit`) and drops one open; the last one
    /// forgets the state and deletes the file if it has no name left.
    pub(super) fn release_file(&self, of: Arc<OpenFile>, commit: bool) -> Result<()> {
        let r = if commit {
            self.data_mut(&of)
                .and_then(|mut st| self.commit_locked(&of, &mut st))
        } else {
            Ok(())
        };
        let last = {
            let mut table = self.open.lock();
            if of.opens.fetch_sub(1, Ordering::AcqRel) == 1 {
                table.remove(&of.ino);
                true
            } else {
                false
            }
        };
        // Only a file without names left needs a transaction here.
        let unlinked = last && self.meta().inode(of.ino)?.is_some_and(|i| i.nlink == 0);
        if unlinked {
            let ino = of.ino;
            self.tx(|m, frees| {
                if let Some(i) = m.inode(ino)? {
                    if i.nlink == 0 {
                        self.purge(m, ino, frees)?;
                    }
                }
                Ok(())
            })?;
        }
        r
    }

    pub fn open(&self, ino: u64) -> Result<u64> {
        let of = self.acquire(ino)?;
        Ok(self.new_fh(Handle::File(of)))
    }

    /// open(2) with `O_TRUNC`: the file is cut to size 0 and, even when it
    /// was empty already, its mtime and ctime are set to now (POSIX; as
    /// ext4 and tmpfs do).
    pub fn open_truncating(&self, ino: u64) -> Result<u64> {
        let fh = self.open(ino)?;
        let cut = SetAttr {
            size: Some(0),
            mtime: Some(SetTime::Now),
            ..Default::default()
        };
        if let Err(e) = self.setattr(ino, &cut) {
            self.release(fh)?;
            return Err(e);
        }
        Ok(fh)
    }

    pub(super) fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File(of)) => Ok(of.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Content of committed chunk `c` into `out`, from byte `from` of the chunk.
    pub(super) fn read_chunk(&self, c: &ChunkRef, from: usize, out: &mut [u8]) -> Result<()> {
        let have = (c.size as usize).saturating_sub(from).min(out.len());
        match &c.data {
            BlobData::Inline(d) => {
                // `from` may lie past the bytes a short chunk holds.
                let src = d.get(from..).unwrap_or(&[]);
                let avail = src.len().min(have);
                out[..avail].copy_from_slice(&src[..avail]);
                out[avail..].fill(0);
            }
            // A reader beside a writer, or a damaged store served
            // append-only until `fsck --repair` (a cross-linked chain could
            // hold another blob's bytes): check the bytes against the hash.
            BlobData::Stored(loc) if self.tuning.read_only || self.blobs.verify_reads() => {
                let mut whole = vec![0u8; c.size as usize];
                self.blobs.get(*loc, 0, &mut whole)?;
                if blake3::hash(&whole).as_bytes() != &c.hash {
                    return Err(FsError::Corrupt(format!(
                        "blob {} changed under the reader (the store is busy); try again",
                        crate::meta::hex(&c.hash[..8])
                    )));
                }
                if have > 0 {
                    out[..have].copy_from_slice(&whole[from..from + have]);
                }
                out[have..].fill(0);
            }
            BlobData::Stored(loc) => {
                if have > 0 {
                    self.blobs.get(*loc, from as u64, &mut out[..have])?;
                }
                out[have..].fill(0);
            }
        }
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        if let Some(Handle::Bytes(d)) = self.handles.lock().get(&fh) {
            let from = (offset as usize).min(d.len());
            let to = from.saturating_add(size as usize).min(d.len());
            return Ok(d[from..to].to_vec());
        }
        let of = self.file(fh)?;
        let st = self.data_ref(&of)?;
        if offset >= st.size {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(st.size);
        let mut out = vec![0u8; (end - offset) as usize];
        let cs = self.chunk_size;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..(pos - offset) as usize + n];
            if let Some(buf) = st.dirty.get(&idx) {
                // A dirty buffer may end before `within` (a short chunk).
                let src = buf.get(within..).unwrap_or(&[]);
                let avail = src.len().min(n);
                dst[..avail].copy_from_slice(&src[..avail]);
                dst[avail..].fill(0);
            } else if let Some(c) = st.chunks.get(&idx) {
                self.read_chunk(c, within, dst)?;
            } // else: a hole, already zeros
            pos += n as u64;
        }
        Ok(out)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let of = self.file(fh)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::TooBig)?;
        if end > FILE_MAX {
            return Err(FsError::TooBig);
        }
        let mut st = self.data_mut(&of)?;
        self.write_locked(&of, &mut st, offset, data)?;
        let now = now_ns();
        st.size = st.size.max(end);
        st.set_mtime(&of, now);
        of.size.store(st.size, Ordering::Release);
        if st.dirty_bytes >= self.tuning.dirty_limit {
            self.commit_locked(&of, &mut st)?;
        }
        Ok(data.len() as u32)
    }

    /// The file's data, write-locked and current: after a group commit
    /// was rolled back, the committed chunk map it had may name chunks the
    /// store no longer holds (and miss ones it holds again), and a commit
    /// from it would drop references it does not own. Reload it from the
    /// store first; writes not yet committed are kept.
    pub(super) fn data_mut<'a>(
        &self,
        of: &'a OpenFile,
    ) -> Result<parking_lot::RwLockWriteGuard<'a, FileData>> {
        let mut st = of.data.write();
        if st.epoch != self.rollbacks.load(Ordering::Acquire) {
            self.refresh(of, &mut st)?;
        }
        Ok(st)
    }

    /// The file's data, read-locked and current (see [`Fs::data_mut`]).
    pub(super) fn data_ref<'a>(
        &self,
        of: &'a OpenFile,
    ) -> Result<parking_lot::RwLockReadGuard<'a, FileData>> {
        let st = of.data.read();
        if st.epoch == self.rollbacks.load(Ordering::Acquire) {
            return Ok(st);
        }
        drop(st);
        Ok(parking_lot::RwLockWriteGuard::downgrade(self.data_mut(of)?))
    }

    pub(super) fn refresh(&self, of: &OpenFile, st: &mut FileData) -> Result<()> {
        let m = self.meta();
        let epoch = m.rollbacks();
        let chunks = m.chunks(of.ino)?;
        let row = m.inode(of.ino)?;
        drop(m);
        tracing::warn!(
            "inode {}: a group commit was rolled back; its open state is reloaded from the store (unsaved writes are kept)",
            of.ino
        );
        st.chunks = chunks.into_iter().collect();
        st.dropped.clear();
        st.holes.clear();
        st.drop_from = None;
        let cs = self.chunk_size;
        let dirty_end = st
            .dirty
            .iter()
            .next_back()
            .map_or(0, |(&i, b)| i * cs + b.len() as u64);
        if let Some(row) = row {
            st.size = row.size.max(dirty_end);
        }
        st.meta_dirty = true;
        st.epoch = epoch;
        of.size.store(st.size, Ordering::Release);
        of.blocks.store(st.blocks(), Ordering::Release);
        *of.cached.lock() = None;
        Ok(())
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let h = self.handles.lock().remove(&fh);
        match h {
            Some(Handle::File(of)) => self.release_file(of, true),
            Some(Handle::Dir(_)) | Some(Handle::Bytes(_)) => Ok(()),
            None => Err(FsError::BadHandle),
        }
    }
}
