//! Extended attributes (`user.*`), and tags as xattrs.

#[allow(unused_imports)]
use super::*;

/// An xattr name that addresses tags.
pub(super) enum TagAttr {
    /// `user.tags`: the whole set.
    All,
    /// `user.tag.<name>`: one tag.
    One(String),
}

impl TagAttr {
    pub(super) fn parse(name: &[u8]) -> Result<Option<TagAttr>> {
        // `user.xdg.tags` (the freedesktop convention: comma-separated, as
        // KDE Dolphin and Baloo write it) is the same set as `user.tags`.
        if name == b"user.tags" || name == b"user.xdg.tags" {
            return Ok(Some(TagAttr::All));
        }
        let Some(rest) = name.strip_prefix(b"user.tag.") else {
            return Ok(None);
        };
        let t = std::str::from_utf8(rest)
            .map_err(|_| FsError::Invalid("a tag name must be UTF-8".into()))?;
        if let Err(e) = query::check_tag(t) {
            tracing::warn!("xattr user.tag.{t}: {e}");
            return Err(e.into());
        }
        Ok(Some(TagAttr::One(t.to_string())))
    }
}

impl Fs {
    pub(crate) fn check_xattr_name(name: &[u8]) -> Result<()> {
        if name.len() > NAME_MAX {
            return Err(FsError::Range);
        }
        if !name.starts_with(b"user.") || name.len() == 5 {
            return Err(FsError::NotSupported);
        }
        Ok(())
    }

    /// flags: XATTR_CREATE (1) fails if it exists, XATTR_REPLACE (2) if not.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        Self::check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(FsError::Range);
        }
        let now = now_ns();
        if let Some(t) = TagAttr::parse(name)? {
            let bad = |e: String| {
                tracing::warn!("setxattr {}: {e}", String::from_utf8_lossy(name));
                FsError::Invalid(e)
            };
            let value_str = || {
                std::str::from_utf8(value)
                    .map(|v| v.trim().to_string())
                    .map_err(|_| bad("a tag value must be UTF-8".into()))
            };
            let set = match &t {
                TagAttr::All => query::parse_tag_set(value).map_err(|e| bad(e.to_string()))?,
                TagAttr::One(n) => {
                    let v = value_str()?;
                    query::check_value(&v).map_err(|e| bad(e.to_string()))?;
                    vec![(n.clone(), (!v.is_empty()).then_some(v))]
                }
            };
            return self.tx(|m, _| {
                let mut i = self.inode(m, ino)?;
                let exists = match &t {
                    TagAttr::All => !m.file_tags(ino)?.is_empty(),
                    TagAttr::One(n) => m.file_tag(ino, n)?.is_some(),
                };
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(FsError::Exists);
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(FsError::NoAttr);
                }
                if let TagAttr::All = t {
                    m.delete_file_tags(ino)?;
                }
                for (n, v) in &set {
                    m.set_file_tag(ino, n, v.as_deref(), now)?;
                }
                i.ctime = now;
                m.update_inode(&i)?;
                Ok(())
            });
        }
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            let exists = m.xattr(ino, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoAttr);
            }
            m.set_xattr(ino, name, value)?;
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }

    /// Names outside `user.*` are not supported (`EOPNOTSUPP`, as on a
    /// filesystem without that namespace): tools such as `ls -l` then stop
    /// asking for SELinux labels and ACLs on this mount, instead of asking
    /// the daemon twice per file.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        Self::check_xattr_name(name)?;
        let m = self.meta();
        self.inode(&*m, ino)?;
        match TagAttr::parse(name) {
            Ok(Some(TagAttr::All)) => {
                let t = m.file_tags(ino)?;
                if t.is_empty() {
                    return Err(FsError::NoAttr);
                }
                return Ok(query::format_tag_set(&t));
            }
            Ok(Some(TagAttr::One(n))) => {
                let v = m.file_tag(ino, &n)?.ok_or(FsError::NoAttr)?;
                return Ok(v.unwrap_or_default().into_bytes());
            }
            Ok(None) => {}
            Err(_) => return Err(FsError::NoAttr),
        }
        m.xattr(ino, name)?.ok_or(FsError::NoAttr)
    }

    /// Names, each followed by NUL, as listxattr(2) returns them. Each tag
    /// is listed once, as `user.tag.<name>`; `user.tags` (the whole set in
    /// one value) can be read and set but is not listed, so tools that copy
    /// every listed xattr (`rsync -aX`, `cp -a`, `tar --xattrs`) carry each
    /// tag exactly once and a second run finds nothing to change.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        self.listxattr_hiding(ino, &|_| Ok(false))
    }

    /// [`Fs::listxattr`], leaving out the tags a file was placed with
    /// (see below) when `hide_placed` says so of it.
    pub fn listxattr_hiding(
        &self,
        ino: u64,
        hide_placed: &dyn Fn(&Attr) -> Result<bool>,
    ) -> Result<Vec<u8>> {
        let m = self.meta();
        let mut out = Vec::new();
        // Tags a file was given by the tag folder it was made in (placed)
        // are not listed: they say where it was put, and `rsync -X`,
        // `cp -a` or `tar --xattrs` into a tag folder would otherwise take
        // them off the file they are writing, which then leaves the folder.
        // `user.tags` and `getfattr -n user.tag.NAME` still show them.
        let tags = m.file_tags_placed(ino)?;
        let names = m.xattr_names(ino)?;
        let i = self.inode(&*m, ino)?;
        drop(m);
        // (Only while it lives in /inbox: a file that has a place of its
        // own lists every tag.)
        let hide = tags.iter().any(|t| t.2 > 0) && hide_placed(&i)?;
        for (n, _, _) in tags.into_iter().filter(|t| t.2 == 0 || !hide) {
            out.extend_from_slice(b"user.tag.");
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        Self::check_xattr_name(name)?;
        let now = now_ns();
        if let Some(t) = TagAttr::parse(name).map_err(|_| FsError::NoAttr)? {
            return self.tx(|m, _| {
                let mut i = self.inode(m, ino)?;
                let had = match &t {
                    TagAttr::All => {
                        let had = !m.file_tags(ino)?.is_empty();
                        m.delete_file_tags(ino)?;
                        had
                    }
                    TagAttr::One(n) => m.delete_file_tag(ino, n)?,
                };
                if !had {
                    return Err(FsError::NoAttr);
                }
                i.ctime = now;
                m.update_inode(&i)?;
                Ok(())
            });
        }
        self.tx(|m, _| {
            let mut i = self.inode(m, ino)?;
            if !m.delete_xattr(ino, name)? {
                return Err(FsError::NoAttr);
            }
            i.ctime = now;
            m.update_inode(&i)?;
            Ok(())
        })
    }
}
