//! /inbox: the home of files and directories made through tag folders, and the names they vacate.

#[allow(unused_imports)]
use super::*;

impl Folders {
    /// `/inbox`, made on first use.
    pub(super) fn inbox(&self, caller: Caller) -> Result<Attr> {
        match self.core.lookup(ROOT, INBOX) {
            Ok(i) if i.is_dir() => Ok(i),
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => {
                let i = self.real_mkdir(ROOT, INBOX, 0o755, caller)?;
                self.tx(|m| Ok(m.store_set(INBOX_KEY, &i.ino.to_string())?))?;
                *self.virt.inbox_ino.lock() = Some(Some(i.ino));
                Ok(i)
            }
            Err(e) => Err(e),
        }
    }

    /// A free real place for a file named `name` in a tag folder:
    /// `/inbox/NAME`, else `/inbox/2/NAME`, `/inbox/3/NAME`, ..., so that
    /// the file keeps the very name it was given in the folder.
    pub(super) fn inbox_slot(&self, name: &[u8], caller: Caller) -> Result<(u64, Vec<u8>)> {
        let inbox = self.inbox(caller)?;
        let free = |dir: u64| match self.core.lookup(dir, name) {
            Err(FsError::NotFound) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        if free(inbox.ino)? {
            return Ok((inbox.ino, name.to_vec()));
        }
        for k in 2..=SLOT_MAX {
            let slot = k.to_string().into_bytes();
            let dir = match self.core.lookup(inbox.ino, &slot) {
                Ok(d) if d.is_dir() => d,
                Ok(_) => continue,
                Err(FsError::NotFound) => self.real_mkdir(inbox.ino, &slot, 0o755, caller)?,
                Err(e) => return Err(e),
            };
            if free(dir.ino)? {
                return Ok((dir.ino, name.to_vec()));
            }
        }
        Err(FsError::Exists)
    }

    /// The numbered slot `dir` of /inbox: its name there, if it is one.
    pub(super) fn slot_of(&self, dir: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(inbox) = self.our_inbox()? else {
            return Ok(None);
        };
        let place = self.meta().parent_of(dir)?;
        Ok(place.filter(|(p, n)| *p == inbox.ino && is_slot_name(n)))
    }

    pub(super) fn is_inbox_dir(&self, dir: u64) -> Result<bool> {
        match self.our_inbox()? {
            Some(i) if i.ino == dir => Ok(true),
            Some(_) => Ok(self.slot_of(dir)?.is_some()),
            None => Ok(false),
        }
    }

    /// `/inbox` when queryfs made it (its inode number is kept in the
    /// store): a user's own folder of that name is never taken for it, so
    /// nothing of it is deleted through a tag folder.
    pub(super) fn our_inbox(&self) -> Result<Option<Attr>> {
        let Ok(i) = self.core.lookup(ROOT, INBOX) else {
            return Ok(None);
        };
        Ok((i.is_dir() && self.inbox_ino()? == Some(i.ino)).then_some(i))
    }

    /// The inode number of the `/inbox` queryfs made, read from the store
    /// once per mount (only [`Fs::inbox`] changes it).
    pub(super) fn inbox_ino(&self) -> Result<Option<u64>> {
        let mut known = self.virt.inbox_ino.lock();
        if known.is_none() {
            let stored = self.meta().store_get(INBOX_KEY)?;
            *known = Some(stored.and_then(|v| v.parse().ok()));
        }
        Ok(known.flatten())
    }

    /// The one real name of `i` when it lies in /inbox (or a slot): a file
    /// that exists only because a tag folder made it.
    pub(super) fn inbox_place(&self, i: &Attr) -> Result<Option<(u64, Vec<u8>)>> {
        if i.is_dir() || i.nlink != 1 {
            return Ok(None);
        }
        let place = self.meta().parent_of(i.ino)?;
        match place {
            Some((p, n)) if self.is_inbox_dir(p)? => Ok(Some((p, n))),
            _ => Ok(None),
        }
    }

    /// Removes a numbered slot of /inbox that a file just left, if empty.
    pub(super) fn tidy_slot(&self, dir: u64) {
        if let Ok(Some((inbox, name))) = self.slot_of(dir) {
            // Fails harmlessly (ENOTEMPTY) while the slot holds a file.
            let _ = self.real_rmdir(inbox, &name);
        }
    }

    /// One real (parent, name) of `ino`.
    pub(super) fn place_of(&self, ino: u64) -> Result<(u64, Vec<u8>)> {
        self.meta().parent_of(ino)?.ok_or(FsError::NotFound)
    }

    /// Whether `name` is free in `parent`, which must still be a directory
    /// (a vacated place whose directory was removed since is no place).
    pub(super) fn is_free(&self, parent: u64, name: &[u8]) -> Result<bool> {
        match self.core.getattr(parent) {
            Ok(d) if d.is_dir() && d.nlink > 0 => {}
            Ok(_) | Err(FsError::NotFound | FsError::Stale) => return Ok(false),
            Err(e) => return Err(e),
        }
        match self.core.lookup(parent, name) {
            Err(FsError::NotFound) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn remember<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
        if map.len() >= MEMORY_CAP {
            map.clear();
        }
        map.insert(k, v);
    }

    /// A name vacated in `folder` that a new file may take: the place it
    /// had, when that place is still free and the file that left is not
    /// `not`.
    pub(super) fn take_vacated(
        &self,
        folder: u64,
        name: &[u8],
        not: u64,
    ) -> Result<Option<Vacated>> {
        let v = self.virt.vacated.lock().remove(&(folder, name.to_vec()));
        match v {
            Some(v)
                if v.ino != not
                    && v.at.elapsed() < VACATED_FOR
                    && self.is_free(v.parent, &v.name)? =>
            {
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }

    /// An entry of `folder` that `rm` untagged moments ago in this very
    /// process, whose file is still at the real place it had.
    pub(super) fn take_unlinked(&self, folder: u64, name: &[u8]) -> Result<Option<Vacated>> {
        let pid = REQUEST_PID.with(|c| c.get());
        let e = self.virt.unlinked.lock().remove(&(folder, name.to_vec()));
        match e {
            Some((v, by))
                if by == pid
                    && pid != 0
                    && v.at.elapsed() < VACATED_FOR
                    && matches!(self.core.lookup(v.parent, &v.name), Ok(i) if i.ino == v.ino) =>
            {
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }

    /// `new` took the place that `v.ino` left: it inherits its tags and
    /// xattrs (the old file stays where the rename put it).
    pub(super) fn succeed(&self, new: u64, v: &Vacated) -> Result<()> {
        self.inherit(new, v.ino)
    }

    /// Remembers that this request's process removed entry `name` of
    /// `folder`, whose file `ino` stays at real place (`p`, `n`).
    pub(super) fn remember_unlinked(&self, folder: u64, name: &[u8], ino: u64, p: u64, n: Vec<u8>) {
        let pid = REQUEST_PID.with(|c| c.get());
        if pid == 0 {
            return;
        }
        let v = Vacated {
            ino,
            parent: p,
            name: n,
            at: std::time::Instant::now(),
        };
        Self::remember(
            &mut self.virt.unlinked.lock(),
            (folder, name.to_vec()),
            (v, pid),
        );
    }

    /// An entry of `folder` listed under another name that also has the
    /// real name `name` in /inbox (after `ln tmp final` in the folder the
    /// file is listed once, as `final`; `rm tmp` means this file).
    pub(super) fn other_inbox_name(&self, folder: u64, name: &[u8]) -> Result<Attr> {
        let l = self.listing(folder)?;
        for (_, t) in &l.entries {
            if let Target::Real(i) = t {
                if i.nlink > 1
                    && !i.is_dir()
                    && self.inbox_names(i.ino)?.iter().any(|(_, n)| n == name)
                {
                    return Ok(i.clone());
                }
            }
        }
        Err(FsError::NotFound)
    }

    /// Every real name of `ino` that lies in /inbox (or a slot).
    pub(super) fn inbox_names(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        // (Bound first: the metadata lock must not be held in the loop.)
        let names = self.meta().names_of(ino)?;
        for (p, n) in names {
            if self.is_inbox_dir(p)? {
                out.push((p, n));
            }
        }
        Ok(out)
    }

    /// For a file with several names, all in /inbox: the name to remove
    /// when `shown` is removed through a tag folder (the name it is shown
    /// by, else its first one).
    pub(super) fn inbox_name(&self, i: &Attr, shown: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        if i.is_dir() || i.nlink < 2 {
            return Ok(None);
        }
        let names = self.inbox_names(i.ino)?;
        if names.len() != i.nlink as usize {
            return Ok(None);
        }
        Ok(names
            .iter()
            .find(|(_, n)| n == shown)
            .or(names.first())
            .cloned())
    }
}
