//! Commit and durability: transactions, group commit, the blob barrier and deferred frees, committing a file's buffers.

#[allow(unused_imports)]
use super::*;

impl Fs {
    /// Runs `f` as one write: with group commit on, it joins the open
    /// batch (committed when due); otherwise it commits at once. Blobs it
    /// released are freed once it is durable ([`Fs::free_blobs`]).
    pub(crate) fn tx<T>(
        &self,
        f: impl FnOnce(&dyn MetaStore, &mut Vec<BlobLoc>) -> Result<T>,
    ) -> Result<T> {
        let mut frees = Vec::new();
        let m = self.meta();
        let v = m.write(|m| f(m, &mut frees));
        // Once per write; twice for a failed one, so that nothing `f`
        // remembered as current for `generation_after_tx` stays current.
        let bumps = if v.is_ok() { 1 } else { 2 };
        self.generation.fetch_add(bumps, Ordering::AcqRel);
        self.rollbacks.store(m.rollbacks(), Ordering::Release);
        let v = v?;
        let mut free_now = m.after_commit(frees);
        if m.batch_due() {
            free_now.extend(self.commit_batch(&*m)?);
        }
        drop(m);
        self.free_blobs(&free_now);
        Ok(v)
    }

    /// Commits the open batch of metadata changes, if any.
    pub fn settle(&self) -> Result<()> {
        let frees = self.commit_batch(&*self.meta())?;
        self.free_blobs(&frees);
        Ok(())
    }

    /// Commits the open batch after syncing the blob bytes it refers to
    /// (a container sync is short here when the caller synced just before,
    /// outside the lock). If a container sync failed, the batch is rolled
    /// back instead: its blobs may not be on disk.
    pub(super) fn commit_batch(&self, m: &dyn MetaStore) -> Result<Vec<BlobLoc>> {
        let r = self.commit_batch_inner(m);
        tracing::debug!(ok = r.is_ok(), "group commit");
        self.rollbacks.store(m.rollbacks(), Ordering::Release);
        r
    }

    pub(super) fn commit_batch_inner(&self, m: &dyn MetaStore) -> Result<Vec<BlobLoc>> {
        if let Err(e) = self.blobs.sync() {
            let lost = m.rollback_batch();
            self.blobs.clear_sync_failure();
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::error!(
                "syncing the blob container failed ({e}): a group of {lost} metadata changes was rolled back"
            );
            return Err(e.into());
        }
        m.commit_batch().map_err(|e| {
            // Rolled back: what was read since is stale.
            self.generation.fetch_add(1, Ordering::AcqRel);
            e.into()
        })
    }

    /// Inside a write transaction: the generation the store will have once
    /// it ends (every write bumps it once, under the metadata lock).
    pub(super) fn generation_after_tx(&self) -> u64 {
        self.generation.load(Ordering::Acquire) + 1
    }

    /// Turns group commit on: metadata changes (create, mkdir, unlink,
    /// rename, chmod, xattrs, ...) join one transaction that is committed
    /// within `window`, or sooner by a flush, fsync, data commit or query.
    /// A thread commits batches that fall due while nothing else happens.
    pub(crate) fn start_group_commit(self: &Arc<Self>, window: Duration) -> Result<()> {
        if self.tuning.read_only {
            return Ok(());
        }
        // Checkpoints run on this thread's own connection, off the
        // request path (SQLite's own would run inside a commit).
        let checkpointer: Option<Checkpointer> = self.meta().checkpointer()?;
        {
            let m = self.meta();
            m.set_group_commit(Some(window))?;
            if checkpointer.is_some() {
                m.set_auto_checkpoint(false)?;
            }
        }
        self.ticker_stop.store(false, Ordering::Release);
        let weak = Arc::downgrade(self);
        let tick = (window / 2).max(Duration::from_millis(1));
        let h = std::thread::Builder::new()
            .name("queryfs-commit".into())
            .spawn(move || {
                let mut ticks = 0u32;
                loop {
                    // `stop_group_commit` unparks it.
                    std::thread::park_timeout(tick);
                    let Some(fs) = weak.upgrade() else { break };
                    if fs.ticker_stop.load(Ordering::Acquire) {
                        break;
                    }
                    let due = fs.meta().batch_due();
                    if due {
                        // The long part of the container sync, outside the
                        // lock (a failure is kept for `settle` to act on).
                        let _ = fs.blobs.sync();
                        if let Err(e) = fs.settle() {
                            tracing::error!("group commit failed: {e}");
                        }
                    }
                    if !fs.released.lock().is_empty() {
                        if let Err(e) = fs.free_released() {
                            tracing::warn!("freeing released blobs: {e}");
                        }
                    }
                    ticks = ticks.wrapping_add(1);
                    if let (Some(room), 0) = (&fs.room, ticks % CHECKPOINT_EVERY) {
                        room.when_nearly_full();
                    }
                    if let (Some(c), 0) = (&checkpointer, ticks % CHECKPOINT_EVERY) {
                        if let Err(e) = fs.checkpoint(c) {
                            tracing::warn!("checkpoint: {e}");
                        }
                    }
                }
            })
            .map_err(FsError::Io)?;
        *self.ticker.lock() = Some(h);
        Ok(())
    }

    /// Copies committed WAL frames into the database beside the writer;
    /// once the WAL is big, restarts it while holding the writer idle.
    pub(super) fn checkpoint(&self, c: &Checkpointer) -> Result<()> {
        if c.passive()? < WAL_RESTART_FRAMES {
            return Ok(());
        }
        let m = self.meta();
        let frees = self.commit_batch(&*m)?;
        let r = c.restart();
        drop(m);
        self.free_blobs(&frees);
        Ok(r?)
    }

    /// Commits every open file and the open batch, syncs, and turns group
    /// commit off (unmount, the end of an import, shutdown).
    pub(crate) fn stop_group_commit(&self) -> Result<()> {
        let committed = self.commit_all();
        self.ticker_stop.store(true, Ordering::Release);
        let h = self.ticker.lock().take();
        if let Some(h) = h {
            h.thread().unpark();
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let (last, frees) = {
            let m = self.meta();
            let last = self.commit_batch(&*m);
            m.set_auto_checkpoint(true)?;
            (last, m.set_group_commit(None)?)
        };
        self.free_blobs(&frees);
        if let Ok(f) = &last {
            self.free_blobs(f);
        }
        let freed = self.free_released();
        committed.and(last.map(drop)).and(freed)
    }

    /// Takes blobs whose last reference a committed transaction dropped.
    /// They are deleted only once that commit is durable (after the next
    /// barrier, [`Fs::free_released`]): commits run with
    /// `synchronous=NORMAL`, so a power cut can still roll one back, and
    /// its metadata would then point at storage a new blob took.
    pub(super) fn free_blobs(&self, frees: &[BlobLoc]) {
        if frees.is_empty() {
            return;
        }
        let many = {
            let mut r = self.released.lock();
            r.extend_from_slice(frees);
            r.len() >= RELEASED_MAX
        };
        // Without group commit nothing else runs barriers: bound the list.
        if many {
            if let Err(e) = self.free_released() {
                tracing::warn!("freeing released blobs: {e}");
            }
        }
    }

    /// Makes every commit so far durable (one barrier) and then deletes the
    /// blobs those commits released.
    pub(super) fn free_released(&self) -> Result<()> {
        if self.released.lock().is_empty() || self.tuning.read_only {
            return Ok(());
        }
        self.barrier_then_free()
    }

    /// Commits the open batch, runs a barrier, and deletes what every
    /// commit so far released: all of it was released by a commit made
    /// before the barrier (frees are handed over after their commit, and no
    /// commit runs while the lock is held).
    fn barrier_then_free(&self) -> Result<()> {
        let m = self.meta();
        let mut durable = self.commit_batch(&*m)?;
        m.barrier()?;
        durable.append(&mut self.released.lock());
        drop(m);
        self.delete_blobs(&durable);
        Ok(())
    }

    /// Deletes blobs no durable metadata refers to: released ones after a
    /// barrier, or ones written for a commit that did not happen.
    pub(super) fn delete_blobs(&self, frees: &[BlobLoc]) {
        for &loc in frees {
            if let Err(e) = self.blobs.delete(loc) {
                // The blob row is gone; its storage is an orphan that gc reclaims.
                tracing::warn!("could not free blob at {}: {e}", loc.0);
            }
        }
    }

    /// Commits a file's buffers: hash, store new blobs, one transaction.
    pub(super) fn commit_locked(&self, of: &OpenFile, st: &mut FileData) -> Result<()> {
        if !st.unsaved(of) {
            return Ok(());
        }
        if self.tuning.read_only {
            return Err(FsError::Invalid("the store is open read-only".into()));
        }
        // Canonical chunks (the same content reads the same either way):
        // trailing zeros trimmed, and a chunk of zeros is a hole.
        let mut zero = Vec::new();
        for (&idx, buf) in st.dirty.iter_mut() {
            buf.truncate(trimmed_len(buf));
            if buf.is_empty() {
                zero.push(idx);
            }
        }
        for idx in zero {
            st.dirty.remove(&idx);
            st.dirty_bytes = st.dirty_bytes.saturating_sub(self.chunk_size as usize);
            if let Some(c) = st.chunks.remove(&idx) {
                st.dropped.push(c.hash);
                st.holes.insert(idx);
            }
        }
        let attrs = *of.attrs.lock();
        let items = hash_chunks(&st.dirty);
        match self.commit_items(of, st, &attrs, &items, false) {
            // A blob known before the transaction was dropped by another
            // file's commit meanwhile: store every new chunk's bytes.
            Err(FsError::Corrupt(m)) if m == VANISHED => {
                self.commit_items(of, st, &attrs, &items, true)
            }
            r => r,
        }
    }

    /// One attempt of [`Fs::commit_locked`]; with `write_all`, every chunk
    /// that goes to the container is written first, known or not.
    pub(super) fn commit_items(
        &self,
        of: &OpenFile,
        st: &mut FileData,
        attrs: &AttrChange,
        items: &[(u64, [u8; 32])],
        write_all: bool,
    ) -> Result<()> {
        // Which blobs that go to the container are new? Store those before
        // the transaction (inline ones are stored by it).
        let known: HashSet<[u8; 32]> = {
            let mut k = HashSet::new();
            let big: Vec<&[u8; 32]> = items
                .iter()
                .filter(|(idx, _)| !write_all && st.dirty[idx].len() > self.tuning.inline_max)
                .map(|(_, h)| h)
                .collect();
            if !big.is_empty() {
                let m = self.meta();
                for h in big {
                    if m.blob(h)?.is_some() {
                        k.insert(*h);
                    }
                }
            }
            k
        };
        let mut fresh: HashMap<[u8; 32], BlobData> = HashMap::new();
        let mut written = Vec::new();
        let failures = self.blobs.sync_failures();
        let store = (|| -> Result<()> {
            for (idx, h) in items {
                if known.contains(h) || fresh.contains_key(h) {
                    continue;
                }
                let buf = &st.dirty[idx];
                let d = if buf.len() <= self.tuning.inline_max {
                    BlobData::Inline(buf.clone())
                } else {
                    let loc = self.blobs.put(&BlobHash(*h), buf)?;
                    written.push(loc);
                    BlobData::Stored(loc)
                };
                fresh.insert(*h, d);
            }
            Ok(())
        })();
        if let Err(e) = store {
            self.delete_blobs(&written);
            return Err(e);
        }
        let ino = of.ino;
        // The content id and st_blocks after this commit, from the file's
        // chunk map in memory (truncation and holes already applied to it)
        // plus the new chunks.
        let chash = {
            let mut all: BTreeMap<u64, [u8; 32]> =
                st.chunks.iter().map(|(&i, c)| (i, c.hash)).collect();
            all.extend(items.iter().copied());
            content_id(&all.into_iter().collect::<Vec<_>>(), st.size)
        };
        let blocks = st.blocks();
        let mut used: HashSet<[u8; 32]> = HashSet::new();
        let result = self.tx(|m, frees| {
            if !written.is_empty() {
                if self.blobs.sync_failures() != failures {
                    return Err(FsError::Io(std::io::Error::other(
                        "a sync of the blob container failed while this file's data was written",
                    )));
                }
                // The bytes reach the disk before a commit refers to them:
                // with group commit, when the batch commits; else now.
                if !m.batch_open() {
                    if let Err(e) = self.blobs.sync() {
                        self.blobs.clear_sync_failure();
                        return Err(e.into());
                    }
                }
            }
            for h in &st.dropped {
                if let Some(Some(loc)) = m.decref(h)? {
                    frees.push(loc);
                }
            }
            if let Some(from) = st.drop_from {
                m.delete_chunks_from(ino, from)?;
            }
            for &idx in &st.holes {
                if st.drop_from.is_none_or(|f| idx < f) {
                    m.delete_chunk(ino, idx)?;
                }
            }
            let mut resolved = Vec::with_capacity(items.len());
            for (idx, h) in items {
                let old = st.chunks.get(idx).map(|c| c.hash);
                if old == Some(*h) {
                    continue;
                }
                let size = st.dirty[idx].len() as u32;
                let data = match m.blob(h)? {
                    Some((_, d)) => {
                        m.incref(h)?;
                        d
                    }
                    None => {
                        let d = fresh
                            .get(h)
                            .cloned()
                            .ok_or_else(|| FsError::Corrupt(VANISHED.into()))?;
                        m.insert_blob(h, size as u64, &d)?;
                        used.insert(*h);
                        d
                    }
                };
                m.set_chunk(ino, *idx, h)?;
                if let Some(oh) = old {
                    if let Some(Some(loc)) = m.decref(&oh)? {
                        frees.push(loc);
                    }
                }
                resolved.push((
                    *idx,
                    ChunkRef {
                        hash: *h,
                        size,
                        data,
                    },
                ));
            }
            if let Some(mut i) = m.inode(ino)? {
                i.size = st.size;
                i.blocks = blocks;
                i.mtime = i.mtime.max(st.mtime);
                i.ctime = i.ctime.max(st.mtime);
                attrs.apply(&mut i);
                m.update_inode_with(&i, Some(&chash))?;
                *of.cached.lock() = Some((self.generation_after_tx(), i));
            }
            Ok(resolved)
        });
        match result {
            Ok(resolved) => {
                // Clusters written for blobs someone else stored meanwhile.
                let unused: Vec<BlobLoc> = fresh
                    .iter()
                    .filter(|(h, _)| !used.contains(*h))
                    .filter_map(|(_, d)| match d {
                        BlobData::Stored(l) => Some(*l),
                        _ => None,
                    })
                    .collect();
                self.delete_blobs(&unused);
                for (idx, c) in resolved {
                    st.chunks.insert(idx, c);
                }
                st.dirty.clear();
                st.dirty_bytes = 0;
                st.dropped.clear();
                st.holes.clear();
                st.drop_from = None;
                st.meta_dirty = false;
                of.blocks.store(blocks, Ordering::Release);
                *of.attrs.lock() = AttrChange::default();
                Ok(())
            }
            Err(e) => {
                self.delete_blobs(&written);
                Err(e)
            }
        }
    }

    /// Commits the handle's file (what `close` promises).
    pub fn flush(&self, fh: u64) -> Result<()> {
        if let Some(Handle::Bytes(_)) = self.handles.lock().get(&fh) {
            return Ok(());
        }
        let of = self.file(fh)?;
        let mut st = self.data_mut(&of)?;
        self.commit_locked(&of, &mut st)
    }

    /// Commits the file and makes the store durable.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        self.flush(fh)?;
        self.sync_all()
    }

    /// Durable barrier for everything committed so far.
    pub fn sync_all(&self) -> Result<()> {
        if self.tuning.read_only {
            return Ok(());
        }
        // The long part outside the lock; `commit_batch` syncs again (and
        // rolls the batch back if a sync failed).
        let _ = self.blobs.sync();
        // One lock hold, so that no new batch opens before the barrier.
        self.barrier_then_free()
    }

    /// Commits every open file (unmount, shutdown).
    pub fn commit_all(&self) -> Result<()> {
        let files: Vec<Arc<OpenFile>> = self.open.lock().values().cloned().collect();
        let mut first_err = None;
        for of in files {
            let r = self
                .data_mut(&of)
                .and_then(|mut st| self.commit_locked(&of, &mut st));
            if let Err(e) = r {
                tracing::error!("could not commit inode {}: {e}", of.ino);
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => self.sync_all(),
        }
    }
}

/// Group commit for as long as this guard lives (a mount, an import): made
/// by [`Fs::group_commit`]. [`GroupCommit::finish`] commits every open file
/// and the open batch, syncs, turns group commit off and says whether that
/// worked; dropping the guard does the same and logs a failure.
#[must_use = "group commit stops when the guard is dropped"]
pub struct GroupCommit {
    fs: Option<Arc<Fs>>,
}

impl GroupCommit {
    /// Ends group commit, committing everything first.
    pub fn finish(mut self) -> Result<()> {
        match self.fs.take() {
            Some(fs) => fs.stop_group_commit(),
            None => Ok(()),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            if let Err(e) = fs.stop_group_commit() {
                tracing::error!("committing at the end of group commit: {e}");
            }
        }
    }
}

impl Fs {
    /// Turns group commit on (see [`Fs::start_group_commit`]) until the
    /// returned guard is finished or dropped.
    pub fn group_commit(self: &Arc<Self>, window: Duration) -> Result<GroupCommit> {
        self.start_group_commit(window)?;
        Ok(GroupCommit {
            fs: Some(self.clone()),
        })
    }
}
