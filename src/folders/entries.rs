//! Making and removing entries through query folders: create, mkdir, link, unlink, rmdir.

#[allow(unused_imports)]
use super::*;

impl Folders {
    /// mkdir through a query folder: in a window, a real directory; in
    /// `/by-tag` itself, a tag; in a tag folder, a directory made in
    /// `/inbox` with the folder's tags, shown there as a window (what
    /// `cp -r`, `rsync` and `tar -x` of a tree need: the tree stays a tree).
    pub fn v_mkdir(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<Attr> {
        if let Some(d) = self.window_dir(parent) {
            return Ok(self.through_window(self.real_mkdir(d, name, perm, caller)?));
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        if !terms.is_empty() {
            Self::settable(&terms)?;
            let (p, n) = self.inbox_slot(name, caller)?;
            let d = self.real_mkdir(p, &n, perm, caller)?;
            self.tag_into(d.ino, &terms)?;
            return Ok(self.through_window(self.core.getattr(d.ino)?));
        }
        let s = std::str::from_utf8(name)
            .map_err(|_| FsError::Invalid("a tag must be UTF-8".into()))?;
        if let Err(e) = query::check_tag(s) {
            tracing::warn!("mkdir in /by-tag: {e}");
            return Err(e.into());
        }
        let now = crate::vfs::now_ns();
        self.tx(|m| {
            if m.tag_exists(s)? {
                return Err(FsError::Exists);
            }
            Ok(m.create_tag(s, now)?)
        })?;
        self.v_getattr(self.vnode(VKey::ByTag(vec![Term::tag(s)]), None))
    }

    pub fn v_rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if let Some(d) = self.window_dir(parent) {
            return self.real_rmdir(d, name);
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        if !terms.is_empty() {
            let l = self.listing(parent)?;
            if let Some(Target::Window(_, d)) = l.index.get(name).map(|&i| &l.entries[i].1) {
                return self.rmdir_window(*d, &terms);
            }
        }
        let s = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let term = query::parse_term(s).map_err(|_| FsError::NotFound)?;
        if !terms.is_empty() {
            // A narrowing folder is not a thing of its own: removing it
            // succeeds once it shows nothing (what `rm -r` needs).
            // A tag no file holds any more goes with it (the tags that
            // `cp -r DIR /by-tag/x/` made for DIR's sub-directories go with
            // `rm -r /by-tag/x`, as `mkdir /by-tag/x/NAME` made them).
            let mut t = terms;
            t.push(term.clone());
            let v = self.vnode(VKey::ByTag(t), None);
            let l = self.listing(v)?;
            if l.entries
                .iter()
                .any(|(_, t)| matches!(t, Target::Real(_) | Target::Alias(..) | Target::Window(..)))
            {
                return Err(FsError::NotEmpty);
            }
            if let Some(tag) = term.plain() {
                self.tx(|m| {
                    if m.tag_exists(tag)? && !m.tag_used(tag)? {
                        m.delete_tag(tag)?;
                    }
                    Ok(())
                })?;
            }
            return Ok(());
        }
        let tag = term.plain().ok_or(FsError::NotPermitted)?.to_string();
        self.tx(|m| {
            if !m.tag_exists(&tag)? {
                return Err(FsError::NotFound);
            }
            if m.tag_used(&tag)? {
                return Err(FsError::NotEmpty);
            }
            Ok(m.delete_tag(&tag)?)
        })
    }

    /// rmdir of a directory made through a tag folder, through one of its
    /// folders: it leaves the folder; it goes (when empty) once no tag is
    /// left that the user gave it, as a file of /inbox does.
    pub(super) fn rmdir_window(&self, d: u64, terms: &[Term]) -> Result<()> {
        let folder: Vec<&str> = query::named_tags(terms);
        let kept = self
            .meta()
            .file_tags_placed(d)?
            .into_iter()
            .any(|(t, _, placed)| placed == 0 && !folder.contains(&t.as_str()));
        if !kept {
            if !self.meta().list_dir(d)?.is_empty() {
                return Err(FsError::NotEmpty);
            }
            let (p, n) = self.place_of(d)?;
            self.real_rmdir(p, &n)?;
            self.tidy_slot(p);
            return Ok(());
        }
        let all: Vec<&Term> = terms.iter().collect();
        self.untag(d, &all)
    }

    /// rm through a tag folder; see the README table. The old file of a
    /// save through the folder is deleted (its content lives on in the
    /// file that took its place); a file that lives only in /inbox leaves
    /// the folder with all the folder's tags and is deleted when no tag is
    /// left (it exists for its tags, as a file exists for its names); any
    /// other file loses the innermost term's tags and stays where it is.
    pub fn v_unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        if let Some(d) = self.window_dir(parent) {
            // A file that carries a tag the user gave it still lives for that
            // tag (as for another name): it leaves this directory for /inbox
            // and stays in its folders (`rm -r /by-tag/x` of a copied tree
            // must not take a file the user also put in /by-tag/keep).
            let i = self.core.lookup(d, name)?;
            if i.is_dir() || i.nlink == 1 {
                let tags = self.meta().file_tags_placed(i.ino)?;
                if tags.iter().any(|(_, _, placed)| *placed == 0) {
                    let (p, n) = self.inbox_slot(name, Caller::ROOT)?;
                    return self.real_rename(d, name, p, &n, libc::RENAME_NOREPLACE);
                }
            }
            return self.real_unlink(d, name);
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        if terms.is_empty() {
            return Err(FsError::IsDir);
        }
        if terms.iter().all(|t| t.negated) {
            return Err(FsError::NotPermitted);
        }
        let i = self.entry_in(parent, name)?;
        // A file with a home outside /inbox is never deleted through a tag
        // folder (an editor's old copy included: what looks like a backup
        // may be a file the user renamed): it only loses the folder's tag.
        if let Some((p, n)) = self.inbox_place(&i)? {
            let all: Vec<&Term> = terms.iter().collect();
            self.untag(i.ino, &all)?;
            // Deleted when no tag is left that the user gave it: the tags of
            // where it was put (a copied tree's path) do not keep it.
            let left = self.meta().file_tags_placed(i.ino)?;
            if left.iter().all(|(_, _, placed)| *placed > 0) {
                self.real_unlink(p, &n)?;
                self.tidy_slot(p);
            } else {
                // Kept for a tag of the user's: the same process making
                // the name anew replaces it (`install` over it).
                self.remember_unlinked(parent, name, i.ino, p, n);
            }
            return Ok(());
        }
        if i.nlink > 1 && !i.is_dir() {
            // Its name in /inbox (the one shown) goes when it has others
            // elsewhere (`ln /by-tag/x/F /by-tag/x/D/G; rm /by-tag/x/F`).
            let names = self.inbox_names(i.ino)?;
            if let Some((p, n)) = names.iter().find(|(_, n)| n == name).cloned() {
                if names.len() < i.nlink as usize {
                    self.real_unlink(p, &n)?;
                    self.tidy_slot(p);
                    return Ok(());
                }
            }
        }
        if let Some((p, n)) = self.inbox_name(&i, name)? {
            // One of several names in /inbox (`ln tmp final && rm tmp`, as
            // git does): that name goes, as in a directory; the file stays.
            self.real_unlink(p, &n)?;
            self.tidy_slot(p);
            return Ok(());
        }
        self.untag_first(i.ino, &terms)?;
        if !i.is_dir() {
            // The same process creating this name next replaces the file.
            if let Ok((rp, rn)) = self.place_of(i.ino) {
                self.remember_unlinked(parent, name, i.ino, rp, rn);
            }
        }
        Ok(())
    }

    pub fn v_link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        if let Some(d) = self.window_dir(newparent) {
            return self.real_link(ino, d, newname);
        }
        let _dirs = RequestDirs::set(newparent, 0);
        if is_virtual(ino) {
            return Err(FsError::NotPermitted);
        }
        let terms = self.terms_of(newparent)?;
        let i = self.core.getattr(ino)?;
        if !i.is_dir() && self.inbox_names(ino)?.len() == i.nlink as usize {
            // A file that lives only in /inbox gets a real second name
            // there (`ln tmp final && rm tmp` must keep the file).
            let (p, _) = self.place_of(ino)?;
            let (np, nn) = if self.is_free(p, newname)? {
                (p, newname.to_vec())
            } else {
                self.inbox_slot(newname, Caller::ROOT)?
            };
            self.real_link(ino, np, &nn)?;
        }
        self.tag_into(ino, &terms)?;
        self.core.getattr(ino)
    }

    /// create(2) in a tag folder. The new file takes the real place of a
    /// file that just left this name by a rename within the folder (an
    /// editor's save); otherwise it lives in `/inbox`. Either way it is
    /// tagged with the folder's tags.
    pub fn v_create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        if let Some(d) = self.window_dir(parent) {
            return self.real_create(d, name, perm, caller);
        }
        let _dirs = RequestDirs::set(parent, 0);
        let terms = self.terms_of(parent)?;
        Self::settable(&terms)?;
        if let Some(v) = self.take_vacated(parent, name, 0)? {
            let (attr, fh) = self.real_create(v.parent, &v.name, perm, caller)?;
            self.tag_into(attr.ino, &terms)?;
            self.succeed(attr.ino, &v)?;
            return Ok((attr, fh));
        }
        if let Some(v) = self.take_unlinked(parent, name)? {
            // The process that just removed this entry makes it anew
            // (`install`, `cp --remove-destination`, `tar -x`): the old
            // file's name goes and the new file takes its place, as unlink
            // and create do in a directory; it keeps the old file's tags.
            let said = self.said_about(v.ino)?;
            self.real_unlink(v.parent, &v.name)?;
            let (attr, fh) = self.real_create(v.parent, &v.name, perm, caller)?;
            self.tag_into(attr.ino, &terms)?;
            self.take_said(attr.ino, said)?;
            return Ok((attr, fh));
        }
        let (p, n) = self.inbox_slot(name, caller)?;
        let (attr, fh) = self.real_create(p, &n, perm, caller)?;
        self.tag_into(attr.ino, &terms)?;
        Ok((attr, fh))
    }
}
