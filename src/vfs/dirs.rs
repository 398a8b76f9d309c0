//! Directories: listings and open-directory snapshots.

#[allow(unused_imports)]
use super::*;

impl Fs {
    /// Opens a directory: the listing (names, with `.` and `..` first) is
    /// a snapshot taken now, so offsets stay valid whatever changes
    /// meanwhile. Attributes are served fresh by [`Fs::dir_page`].
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        self.opendir_with(ino, Vec::new())
    }

    /// [`Fs::opendir`], with `extra` entries after the directory's own,
    /// served as given (the root's query folders, made above the core).
    pub fn opendir_with(&self, ino: u64, extra: Vec<DirEntry>) -> Result<u64> {
        let (generation, entries) = {
            let m = self.meta();
            // Read under the lock that every change holds while it bumps
            // the generation, so the stamp is exactly the snapshot's.
            let generation = self.generation.load(Ordering::Acquire);
            let d = self.dir(&*m, ino)?;
            let parent = match m.parent_of(ino)? {
                Some((p, _)) if ino != ROOT => self.inode(&*m, p)?,
                _ => d.clone(),
            };
            let mut v = vec![
                DirEntry {
                    name: b".".to_vec(),
                    attr: d,
                },
                DirEntry {
                    name: b"..".to_vec(),
                    attr: parent,
                },
            ];
            for (name, attr) in m.list_dir(ino)? {
                v.push(DirEntry {
                    name,
                    attr: self.overlay(attr),
                });
            }
            (generation, v)
        };
        Ok(self.new_fh(Handle::Dir(Arc::new(DirSnap {
            ino,
            generation,
            fixed: false,
            extra: entries.len(),
            entries: entries.into_iter().chain(extra).collect(),
        }))))
    }

    /// Up to `max` entries of an open directory from position `from`, each
    /// with its position + 1 (the offset to continue from). Attributes are
    /// current as of this call, not of `opendir`: readdirplus hands them to
    /// the kernel, which caches them (and the names) as fresh. An entry
    /// removed or replaced since the snapshot is left out or shows its
    /// current inode; names created since may not appear (POSIX allows
    /// either).
    pub fn dir_page(&self, fh: u64, from: usize, max: usize) -> Result<Vec<(u64, DirEntry)>> {
        let snap = match self.handles.lock().get(&fh) {
            Some(Handle::Dir(v)) => v.clone(),
            _ => return Err(FsError::BadHandle),
        };
        let mut out = Vec::new();
        let m = self.meta();
        // Nothing committed or changed in the tree since the snapshot: its
        // rows are current (open files get their state applied below).
        let unchanged = snap.fixed || self.generation.load(Ordering::Acquire) == snap.generation;
        // Entries left out do not count against `max`: an empty page means
        // the end of the directory.
        for (k, e) in snap.entries.iter().enumerate().skip(from) {
            if out.len() >= max {
                break;
            }
            let cookie = (k + 1) as u64;
            let attr = if unchanged || k >= snap.extra {
                e.attr.clone()
            } else if e.name == b"." || e.name == b".." {
                match m.inode(e.attr.ino)? {
                    Some(a) => a,
                    None => continue,
                }
            } else {
                match m.lookup(snap.ino, &e.name)? {
                    Some(a) => a,
                    None => continue,
                }
            };
            out.push((
                cookie,
                DirEntry {
                    name: e.name.clone(),
                    attr: self.overlay(attr),
                },
            ));
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) -> Result<()> {
        self.handles.lock().remove(&fh);
        Ok(())
    }

    /// Lists a directory in one go (offline use).
    pub fn list(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let fh = self.opendir(ino)?;
        let v = self.dir_page(fh, 0, usize::MAX);
        self.releasedir(fh)?;
        Ok(v?.into_iter().skip(2).map(|(_, e)| e).collect())
    }
}
