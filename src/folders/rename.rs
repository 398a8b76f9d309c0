//! Renames into, out of and within query folders, and of tags.

#[allow(unused_imports)]
use super::*;

impl Folders {
    /// rename(2) where either side is in a query folder; the README's
    /// table gives every case. In short: into a tag folder tags in place
    /// (files and directories); within one tag folder renames the real
    /// file, and onto an entry replaces that entry's real file (an atomic
    /// save); between tag folders retags; out of a query folder moves the
    /// real file (from a tag folder also removing the innermost tags).
    pub fn v_rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let _dirs = RequestDirs::set(parent, newparent);
        // A window is the real directory it shows.
        let (wparent, wnewparent) = (parent, newparent);
        let parent = self.window_dir(parent).unwrap_or(parent);
        let newparent = self.window_dir(newparent).unwrap_or(newparent);
        if !is_virtual(parent) && !is_virtual(newparent) {
            let i = self.core.lookup(parent, name)?;
            self.real_rename(parent, name, newparent, newname, flags)?;
            if i.is_dir() && wparent == parent && wnewparent != newparent {
                // The kernel moves its name of the real directory into the
                // window: dropped before a lookup by the real path answers.
                self.moved_into_folder(i.ino, wnewparent, newname);
            }
            return Ok(());
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let from = self.side(parent)?;
        let to = self.side(newparent)?;
        if let (Side::Tags(f), Side::Tags(t)) = (&from, &to) {
            if f.is_empty() && t.is_empty() {
                return self.rename_tag(name, newname);
            }
        }
        let i = match from {
            Side::Real => self.core.lookup(parent, name)?,
            _ => self.entry_in(parent, name).map_err(|e| match e {
                FsError::IsDir => FsError::NotPermitted,
                e => e,
            })?,
        };
        if is_virtual(i.ino) {
            return Err(FsError::Busy);
        }
        match (from, to) {
            (Side::Real, Side::Real) => unreachable!("a rename between real folders"),
            (_, Side::Query) => Err(FsError::NotPermitted),
            (from, Side::Real) => {
                // Out of a query folder: the real file moves.
                let (p, n) = self.place_of(i.ino)?;
                self.real_rename(p, &n, newparent, newname, flags)?;
                self.tidy_slot(p);
                if let Side::Tags(f) = from {
                    if f.iter().any(|t| !t.negated) {
                        self.untag_first(i.ino, &f)?;
                    }
                }
                Ok(())
            }
            (_, Side::Tags(t)) if t.is_empty() => Err(FsError::NotPermitted),
            (Side::Real, Side::Tags(t)) if wparent != parent => {
                // Out of a window (a tree copied into /inbox) into a tag
                // folder: the entry leaves that tree, as the user sees it
                // leave the directory: onto an entry, it replaces that
                // entry's real file; otherwise it moves to /inbox.
                Self::settable(&t)?;
                let l = self.listing(newparent)?;
                if let Some(Target::Real(y)) = l.index.get(newname).map(|&k| &l.entries[k].1) {
                    if y.ino == i.ino {
                        return Ok(());
                    }
                    if noreplace || i.is_dir() {
                        return Err(FsError::Exists);
                    }
                    let (yp, yn) = self.place_of(y.ino)?;
                    self.inherit(i.ino, y.ino)?;
                    return self.real_rename(parent, name, yp, &yn, 0);
                }
                let (p, n) = self.inbox_slot(newname, Caller::ROOT)?;
                self.real_rename(parent, name, p, &n, libc::RENAME_NOREPLACE)?;
                self.tag_into(i.ino, &t)
            }
            (Side::Real, Side::Tags(t)) => {
                // Into a tag folder: tagged where it is (and renamed there
                // when given another name).
                Self::settable(&t)?;
                if newname != name {
                    self.real_rename(parent, name, parent, newname, libc::RENAME_NOREPLACE)?;
                }
                self.tag_into(i.ino, &t)?;
                if i.is_dir() && wparent == parent {
                    self.moved_into_folder(i.ino, newparent, newname);
                }
                Ok(())
            }
            (Side::Query, Side::Tags(t)) => self.tag_into(i.ino, &t),
            (Side::Tags(_), Side::Tags(_)) if parent == newparent => {
                self.rename_within(parent, &i, name, newname, noreplace)
            }
            (Side::Tags(f), Side::Tags(t)) => {
                Self::settable(&t)?;
                if newname != name {
                    // Given another name: renamed where it really is (EEXIST
                    // there, before anything changes, if the name is taken).
                    let (p, n) = self.place_of(i.ino)?;
                    self.real_rename(p, &n, p, newname, libc::RENAME_NOREPLACE)?;
                }
                if f.last().is_some_and(|t| !t.negated) {
                    self.untag_from(i.ino, &f)?;
                }
                self.tag_into(i.ino, &t)
            }
        }
    }

    /// What kind of folder `ino` is, for rename.
    pub(super) fn side(&self, ino: u64) -> Result<Side> {
        if !is_virtual(ino) {
            return Ok(Side::Real);
        }
        match self.vkey(ino)? {
            VKey::ByTag(t) => Ok(Side::Tags(t)),
            VKey::Leaf(..) => Err(FsError::NotDir),
            _ => Ok(Side::Query),
        }
    }

    pub(super) fn rename_tag(&self, name: &[u8], newname: &[u8]) -> Result<()> {
        let old = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let new = std::str::from_utf8(newname)
            .map_err(|_| FsError::Invalid("a tag must be UTF-8".into()))?;
        query::check_tag(new)?;
        self.tx(|m| {
            if !m.tag_exists(old)? {
                return Err(FsError::NotFound);
            }
            if m.tag_exists(new)? {
                return Err(FsError::Exists);
            }
            Ok(m.rename_tag(old, new)?)
        })
    }

    /// A rename within one tag folder: of the real file `e`.
    pub(super) fn rename_within(
        &self,
        folder: u64,
        e: &Attr,
        name: &[u8],
        newname: &[u8],
        noreplace: bool,
    ) -> Result<()> {
        let l = self.listing(folder)?;
        let (ep, en) = self.place_of(e.ino)?;
        // A file of /inbox reached by a name the folder does not list (a
        // tool took the folder's tags off its temporary file) is put back
        // into the folder by the rename, as a rename keeps a file in its
        // directory.
        if !l.index.contains_key(name) && self.lives_in_inbox(e)? {
            self.tag_into(e.ino, &self.terms_of(folder)?)?;
        }
        if l.index.contains_key(newname) {
            let y = self.entry_in(folder, newname)?;
            if y.ino == e.ino {
                return Ok(());
            }
            if noreplace {
                return Err(FsError::Exists);
            }
            if e.is_dir() || y.is_dir() {
                return Err(FsError::Exists);
            }
            // Onto another entry (an atomic save): `e` replaces that
            // entry's real file at its real place, and keeps its tags.
            let (yp, yn) = self.place_of(y.ino)?;
            self.inherit(e.ino, y.ino)?;
            self.real_rename(ep, &en, yp, &yn, 0)?;
            self.tidy_slot(ep);
            return Ok(());
        }
        if let Some(v) = self.take_unlinked(folder, newname)? {
            // The process that just removed this entry renames a file onto
            // its name (`os.remove(F)`, then `os.rename(tmp, F)`): the file
            // takes the removed one's real place, as in a directory.
            if !e.is_dir() && v.ino != e.ino {
                let said = self.said_about(v.ino)?;
                self.real_rename(ep, &en, v.parent, &v.name, 0)?;
                self.tidy_slot(ep);
                return self.take_said(e.ino, said);
            }
        }
        let made_here = self.inbox_place(e)?.is_some();
        if let Some(v) = made_here
            .then(|| self.take_vacated(folder, newname, e.ino))
            .transpose()?
            .flatten()
        {
            // A file made through the folder, onto a name a file just left:
            // that file's real place (an editor writing a temporary file,
            // moving the original aside and renaming the temporary file).
            // A file with a home of its own stays in its own directory.
            self.real_rename(ep, &en, v.parent, &v.name, libc::RENAME_NOREPLACE)?;
            self.tidy_slot(ep);
            return self.succeed(e.ino, &v);
        }
        // A new name, where the file really is (a file of /inbox takes
        // the next free slot rather than fail).
        let (np, nn) = if self.inbox_place(e)?.is_some() && !self.is_free(ep, newname)? {
            self.inbox_slot(newname, Caller::ROOT)?
        } else {
            (ep, newname.to_vec())
        };
        self.real_rename(ep, &en, np, &nn, libc::RENAME_NOREPLACE)?;
        if np != ep {
            self.tidy_slot(ep);
        }
        let v = Vacated {
            ino: e.ino,
            parent: ep,
            name: en,
            at: std::time::Instant::now(),
        };
        Self::remember(&mut self.virt.vacated.lock(), (folder, name.to_vec()), v);
        Ok(())
    }
}
