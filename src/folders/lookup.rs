//! Lookups, opens and attributes of entries in query folders.

#[allow(unused_imports)]
use super::*;

impl Folders {
    pub(super) fn target_attr(&self, t: &Target) -> Result<Attr> {
        match t {
            Target::Real(i) => Ok(i.clone()),
            Target::Virtual(v) | Target::Alias(v, _) | Target::Window(v, _) => self.v_getattr(*v),
        }
    }

    pub fn v_lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let key = self.vkey(parent)?;
        match &key {
            VKey::Leaf(..) => return Err(FsError::NotDir),
            VKey::Window(d) => {
                let t = self.in_window(parent, name, self.core.lookup(*d, name)?)?;
                return self.target_attr(&t);
            }
            VKey::SqlRoot => {
                let decoded = query::percent_decode(name);
                let sql = String::from_utf8(decoded).map_err(|_| {
                    tracing::warn!("a /sql folder name is not UTF-8");
                    FsError::Invalid("a query must be UTF-8".into())
                })?;
                let v = self.vnode(VKey::Sql(sql), None);
                // Run it now: bad SQL fails the lookup, good SQL is cached.
                self.listing(v)?;
                return self.v_getattr(v);
            }
            VKey::ByTag(terms) if terms.len() == 1 => {
                // In a one-term folder a plain tag that narrows is a listed
                // sub-folder (folders win name clashes): answer it with one
                // EXISTS probe instead of computing the whole listing.
                let term = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| query::parse_term(s).ok());
                if let Some(term) = term {
                    if let Some(t) = term.plain() {
                        let used = terms.iter().any(|x| x.any.iter().any(|a| a.tag() == t));
                        let mut all = terms.clone();
                        all.push(term.clone());
                        let (sql, p) = query::any_match_sql(&all);
                        if !used && !self.meta().strings(&sql, &p)?.is_empty() {
                            let l = self.listing(parent)?;
                            if let Some(&i) = l.index.get(name) {
                                if let Target::Window(v, _) = l.entries[i].1 {
                                    return self.v_getattr(v);
                                }
                            }
                            return self.v_getattr(self.vnode(VKey::ByTag(all), None));
                        }
                    }
                }
            }
            _ => {}
        }
        let quick = self.quick(parent, name)?;
        if let Quick::Entry(i) = quick {
            return Ok(i);
        }
        if !matches!(quick, Quick::Absent) {
            let l = self.listing(parent)?;
            if let Some(&i) = l.index.get(name) {
                return self.target_attr(&l.entries[i].1);
            }
            if let Ok(i) = self.inbox_alias(parent, name) {
                return Ok(self.core.overlay(i));
            }
        }
        if let VKey::ByTag(terms) = key {
            // Any valid term is a folder, listed or not (OR, NOT, values,
            // tags that do not narrow); a plain tag must exist, and a term
            // on a tag the path already names is none (`/by-tag/x/x` is no
            // folder, so `cp -r x /by-tag/x/` makes a directory `x`).
            let s = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
            let term = query::parse_term(s).map_err(|_| FsError::NotFound)?;
            let named = query::named_tags(&terms);
            if term.any.iter().any(|a| named.contains(&a.tag())) {
                return Err(FsError::NotFound);
            }
            if let Some(t) = term.plain() {
                if !self.meta().tag_exists(t)? {
                    return Err(FsError::NotFound);
                }
            }
            let mut t = terms;
            t.push(term);
            return self.v_getattr(self.vnode(VKey::ByTag(t), None));
        }
        Err(FsError::NotFound)
    }

    pub fn v_opendir(&self, ino: u64) -> Result<u64> {
        let key = self.vkey(ino)?;
        if matches!(key, VKey::Leaf(..)) {
            return Err(FsError::NotDir);
        }
        let l = self.listing(ino)?;
        let me = self.v_getattr(ino)?;
        let mut v = vec![
            DirEntry {
                name: b".".to_vec(),
                attr: me.clone(),
            },
            DirEntry {
                name: b"..".to_vec(),
                attr: me,
            },
        ];
        for (name, t) in &l.entries {
            v.push(DirEntry {
                name: name.clone(),
                attr: self.target_attr(t)?,
            });
        }
        Ok(self.core.open_listing(ino, v))
    }

    /// setattr(2) on a virtual node: setting the times of a tag folder
    /// succeeds and changes nothing (a folder has no times of its own;
    /// `rsync -a` and `cp -a` set them on every directory they fill).
    /// Anything else is refused.
    pub fn v_setattr(&self, ino: u64, set: &crate::vfs::SetAttr) -> Result<Attr> {
        // A tag folder has no times, mode or owner of its own: setting them
        // succeeds and changes nothing, so that `cp -a`, `rsync -a` and
        // `tar -x` of a tree into a tag folder do not fail on its folders.
        match self.vkey(ino)? {
            VKey::ByTag(_) if set.size.is_none() => self.v_getattr(ino),
            VKey::Window(d) => {
                let mut i = self.core.setattr(d, set)?;
                i.ino = ino;
                Ok(i)
            }
            _ => Err(FsError::NotPermitted),
        }
    }

    pub fn v_readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let t = self.virt.table.lock();
        match t.nodes.get(&ino) {
            Some(n) if n.link => Ok(n.data.to_vec()),
            _ => Err(FsError::Invalid("not a symbolic link".into())),
        }
    }

    pub fn v_open(&self, ino: u64) -> Result<u64> {
        let mut held = None;
        for _ in 0..2 {
            let folder = {
                let t = self.virt.table.lock();
                match t.nodes.get(&ino) {
                    Some(n) if !n.link => match &n.key {
                        VKey::Leaf(folder, _) => match n.file.upgrade() {
                            Some(d) => return Ok(self.core.open_bytes(d)),
                            None => *folder,
                        },
                        _ => return Err(FsError::IsDir),
                    },
                    Some(_) => return Err(FsError::IsDir),
                    None => return Err(FsError::NotFound),
                }
            };
            // The listing that made this file left the cache: make it again
            // (and hold it until the file is taken).
            held = Some(self.listing(folder)?);
        }
        drop(held);
        Err(FsError::NotFound)
    }

    /// The real inode behind `name` in a query folder: a file, or the
    /// directory or symlink that a virtual symlink there stands for.
    pub(super) fn entry_in(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if let Some(i) = self.quick_entry(parent, name)? {
            return Ok(i);
        }
        let l = self.listing(parent)?;
        match l.index.get(name).map(|&i| &l.entries[i].1) {
            Some(Target::Real(i)) => Ok(i.clone()),
            Some(Target::Alias(_, real) | Target::Window(_, real)) => self.core.getattr(*real),
            Some(Target::Virtual(v)) if self.v_getattr(*v)?.is_dir() => Err(FsError::IsDir),
            // A query result is no file of the tree.
            Some(Target::Virtual(_)) => Err(FsError::NotPermitted),
            None => self.inbox_alias(parent, name),
        }
    }

    /// The entry `name` of a tag folder when it is, without doubt, the one
    /// regular file of that real name the folder holds: found with a few
    /// indexed queries instead of the whole listing, which every change
    /// makes stale (`rm -r` of a folder of n files would compute n
    /// listings). `None` sends the caller to the listing: a name with `~`
    /// (a clash suffix), the name of a tag (a sub-folder), several or no
    /// candidates, a directory or symlink (shown as aliases), a file listed
    /// deeper (placed), a viewer who may not see everything.
    pub(super) fn quick_entry(&self, folder: u64, name: &[u8]) -> Result<Option<Attr>> {
        match self.quick(folder, name)? {
            Quick::Entry(i) => Ok(Some(i)),
            _ => Ok(None),
        }
    }

    /// [`Fs::quick_entry`], and also whether the folder surely has no
    /// entry `name` (no file it holds has that real name: a create in a big
    /// folder need not compute its listing to know the name is free).
    pub(super) fn quick(&self, folder: u64, name: &[u8]) -> Result<Quick> {
        if name.contains(&b'~') || name.contains(&b'=') || !listable(name) {
            return Ok(Quick::Unknown);
        }
        let terms = match self.vkey(folder)? {
            VKey::ByTag(t) if !t.is_empty() => t,
            _ => return Ok(Quick::Unknown),
        };
        if crate::folders::perm::current_viewer().is_some_and(|v| v.uid != 0)
            && self.visibility()?.is_some_and(|v| !v.hidden.is_empty())
        {
            return Ok(Quick::Unknown);
        }
        let m = self.meta();
        if let Ok(s) = std::str::from_utf8(name) {
            if m.tag_exists(s)? {
                return Ok(Quick::Unknown);
            }
        }
        let (sql, p) = query::files_sql_named(&terms, Some(name));
        let rows = m.listing(&sql, &p)?;
        if rows.is_empty() {
            return Ok(Quick::Absent);
        }
        let mut hits = rows.into_iter().filter(|(n, _)| n == name);
        let (Some((_, i)), None) = (hits.next(), hits.next()) else {
            return Ok(Quick::Unknown);
        };
        if i.kind != FileKind::File {
            return Ok(Quick::Unknown);
        }
        drop(m);
        Ok(Quick::Entry(self.core.overlay(i)))
    }

    /// A file of /inbox that tools still address through a tag folder by a
    /// name it is not listed under: another of its names there (after `ln
    /// tmp final`). Nothing else: a name of the folder never reaches a file
    /// of another folder (a file of /inbox stripped of its tags is in no
    /// folder; rsync -X does not strip the tags a file was put in a folder
    /// with, as they are not listed).
    pub(super) fn inbox_alias(&self, folder: u64, name: &[u8]) -> Result<Attr> {
        if !matches!(self.vkey(folder)?, VKey::ByTag(t) if !t.is_empty()) {
            return Err(FsError::NotFound);
        }
        self.other_inbox_name(folder, name)
    }
}
