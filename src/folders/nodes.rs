//! The node table of query folders (bounded; trimmed as the kernel forgets), what each node is, and windows onto real directories.

#[allow(unused_imports)]
use super::*;

impl Folders {
    pub(super) fn vnode(&self, key: VKey, data: Option<(Arc<Vec<u8>>, bool)>) -> u64 {
        let mut t = self.virt.table.lock();
        let fixed = match &key {
            VKey::ByTag(v) if v.is_empty() => Some(BY_TAG),
            VKey::SqlRoot => Some(SQL),
            VKey::QueriesRoot => Some(QUERIES),
            _ => None,
        };
        let epoch = t.epoch;
        let ino = match t.by_key.get(&key) {
            Some(&i) => i,
            None => {
                if t.nodes.len() >= t.limit.max(NODE_CAP) {
                    t.trim();
                }
                let i = fixed.unwrap_or_else(|| {
                    t.next = t.next.max(16) + 1;
                    VIRTUAL_BIT | t.next
                });
                t.by_key.insert(key.clone(), i);
                t.nodes.insert(
                    i,
                    VNode {
                        key,
                        data: Arc::new(Vec::new()),
                        file: std::sync::Weak::new(),
                        size: 0,
                        link: false,
                        lookups: 0,
                        seen: epoch,
                    },
                );
                i
            }
        };
        let epoch = t.epoch;
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.seen = epoch;
        }
        if let Some((d, link)) = data {
            let n = t.nodes.get_mut(&ino).unwrap();
            n.size = d.len() as u64;
            n.link = link;
            if link {
                n.data = d;
            } else {
                n.file = Arc::downgrade(&d);
            }
        }
        ino
    }

    pub(super) fn vkey(&self, ino: u64) -> Result<VKey> {
        match ino {
            BY_TAG => return Ok(VKey::ByTag(Vec::new())),
            SQL => return Ok(VKey::SqlRoot),
            QUERIES => return Ok(VKey::QueriesRoot),
            _ => {}
        }
        let mut t = self.virt.table.lock();
        let epoch = t.epoch;
        let n = t.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        n.seen = epoch;
        Ok(n.key.clone())
    }

    /// The kernel took one more lookup of virtual node `ino` (an entry
    /// reply).
    pub fn note_lookup(&self, ino: u64) {
        if let Some(n) = self.virt.table.lock().nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel gave back `n` lookups of virtual node `ino` (FORGET).
    pub fn forget_virtual(&self, ino: u64, n: u64) {
        if let Some(v) = self.virt.table.lock().nodes.get_mut(&ino) {
            v.lookups = v.lookups.saturating_sub(n);
        }
    }

    /// How many virtual nodes the table holds (for tests and `info`).
    pub fn virtual_nodes(&self) -> usize {
        self.virt.table.lock().nodes.len()
    }

    /// Attributes of a virtual node.
    pub fn v_getattr(&self, ino: u64) -> Result<Attr> {
        if let Some(d) = self.window_dir(ino) {
            let mut i = self.core.getattr(d)?;
            i.ino = ino;
            return Ok(i);
        }
        let (k, perm, size) = match ino {
            BY_TAG => (FileKind::Dir, 0o755, 0),
            SQL => (FileKind::Dir, 0o555, 0),
            // Writable by the mount's owner: `user.query.NAME` saves a query.
            QUERIES => (FileKind::Dir, 0o755, 0),
            _ => {
                let t = self.virt.table.lock();
                let n = t.nodes.get(&ino).ok_or(FsError::NotFound)?;
                match n.key {
                    VKey::ByTag(_) => (FileKind::Dir, 0o755, 0),
                    VKey::Leaf(..) if n.link => (FileKind::Symlink, 0o777, n.size),
                    VKey::Leaf(..) => (FileKind::File, 0o444, n.size),
                    _ => (FileKind::Dir, 0o555, 0),
                }
            }
        };
        let me = Caller::current();
        Ok(Attr {
            ino,
            kind: k,
            perm,
            uid: me.uid,
            gid: me.gid,
            size,
            nlink: if k == FileKind::Dir { 2 } else { 1 },
            rdev: 0,
            atime: self.core.started(),
            mtime: self.core.started(),
            ctime: self.core.started(),
            btime: self.core.started(),
            blocks: 0,
        })
    }

    /// The query folders at the root, for its listing.
    pub fn v_root_entries(&self) -> Result<Vec<DirEntry>> {
        [BY_TAG, SQL, QUERIES]
            .iter()
            .zip(crate::vfs::RESERVED)
            .filter(|(&i, _)| i == BY_TAG || self.core.runs_sql())
            .map(|(&i, n)| {
                Ok(DirEntry {
                    name: n.to_vec(),
                    attr: self.v_getattr(i)?,
                })
            })
            .collect()
    }

    pub fn v_root_lookup(&self, name: &[u8]) -> Result<Attr> {
        let i = match name {
            b"by-tag" => BY_TAG,
            // Users' SQL runs in a sandbox connection beside the store's;
            // a store without one (in memory) has no `/sql`, `/queries`.
            _ if !self.core.runs_sql() => return Err(FsError::NotFound),
            b"sql" => SQL,
            _ => QUERIES,
        };
        self.v_getattr(i)
    }

    /// Whether a lookup in `ino`, or opening it, may run a user's query
    /// (`/sql`, its folders and saved-query folders whose listing is not
    /// cached, result files whose listing left the cache): the FUSE adapter
    /// hands those to its query threads and answers the rest at once. (If
    /// the cache changes in between, the request computes in place.)
    pub fn runs_queries(&self, ino: u64) -> bool {
        if !is_virtual(ino) {
            return false;
        }
        match self.vkey(ino) {
            Ok(VKey::SqlRoot) => true,
            Ok(VKey::Sql(_) | VKey::Saved(_)) => {
                let generation = self.core.generation();
                self.virt
                    .cache
                    .lock()
                    .map
                    .get(&(ino, crate::folders::perm::current_viewer()))
                    .is_none_or(|l| l.generation != generation)
            }
            Ok(VKey::Leaf(..)) => self
                .virt
                .table
                .lock()
                .nodes
                .get(&ino)
                .is_some_and(|n| !n.link && n.file.strong_count() == 0),
            _ => false,
        }
    }

    pub(super) fn terms_of(&self, ino: u64) -> Result<Vec<Term>> {
        match self.vkey(ino)? {
            VKey::ByTag(t) => Ok(t),
            _ => Err(FsError::NotPermitted),
        }
    }

    /// The real directory that virtual node `ino` is a window onto.
    pub fn window_dir(&self, ino: u64) -> Option<u64> {
        if !is_virtual(ino) {
            return None;
        }
        match self.virt.table.lock().nodes.get(&ino).map(|n| &n.key) {
            Some(VKey::Window(d)) => Some(*d),
            _ => None,
        }
    }

    /// Entry `name` (real inode `a`) of window `w`: a directory is a window
    /// of its own, except one the user tagged, which is a symlink to its
    /// real path (absolute: one window is reached by paths of different
    /// depths), so that `rm -r` of the window's folder does not walk into
    /// what another folder holds; anything else is itself.
    pub(super) fn in_window(&self, w: u64, name: &[u8], a: Attr) -> Result<Target> {
        if !a.is_dir() {
            return Ok(Target::Real(self.core.overlay(a)));
        }
        let mp = self.virt.mountpoint.lock().clone();
        if let Some(mp) = mp {
            let tags = self.meta().file_tags_placed(a.ino)?;
            if tags.iter().any(|(_, _, placed)| *placed == 0) {
                let mut target = mp;
                target.extend_from_slice(&self.core.path_bytes(a.ino)?);
                let v = self.vnode(self.leaf(w, name), Some((Arc::new(target), true)));
                return Ok(Target::Alias(v, a.ino));
            }
        }
        Ok(Target::Window(self.vnode(VKey::Window(a.ino), None), a.ino))
    }

    /// A real inode as a window shows it: a directory as a window of its
    /// own, anything else as itself.
    pub(super) fn through_window(&self, i: Attr) -> Attr {
        if i.is_dir() {
            let mut w = i;
            w.ino = self.vnode(VKey::Window(w.ino), None);
            w
        } else {
            i
        }
    }

    /// Whether a tag folder shows real directory `d` as a window: it was
    /// made through a tag folder and carries no tag the user gave it. Once
    /// it has one (it is in a folder of the user's), it shows as a symlink
    /// like any tagged directory, so that `rm -r` of one of its folders does
    /// not walk into it and delete what the other folder holds.
    pub(super) fn is_window_dir(&self, d: u64) -> Result<bool> {
        if !self.made_in_folder(d)? {
            return Ok(false);
        }
        let tags = self.meta().file_tags_placed(d)?;
        Ok(tags.iter().all(|(_, _, placed)| *placed > 0))
    }

    /// Whether real directory `d` was made through a tag folder: it lives
    /// in /inbox (or a slot).
    pub(super) fn made_in_folder(&self, d: u64) -> Result<bool> {
        // (Bound first: the metadata lock must not be held below.)
        let place = self.meta().parent_of(d)?;
        match place {
            Some((p, _)) => self.is_inbox_dir(p),
            None => Ok(false),
        }
    }
}
