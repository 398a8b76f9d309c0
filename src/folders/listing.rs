//! Listings: tag paths and `/sql` names compiled to SQL, run in the read-only sandbox, named, cached per store generation.

#[allow(unused_imports)]
use super::*;

impl Folders {
    pub(super) fn sandbox_run(
        &self,
        sql: &str,
        vis: &Option<Arc<Visibility>>,
    ) -> Result<QueryResult> {
        self.core
            .run_query(sql, vis.clone(), FOLDER_BYTES_CAP)
            .inspect_err(|e| tracing::warn!("query {sql:?} refused: {e}"))
    }

    /// Relative path from a virtual folder to a real path (for dir symlinks).
    pub(super) fn link_to(&self, depth: usize, real: &[u8]) -> Vec<u8> {
        let mut s = "../".repeat(depth).into_bytes();
        let start = real.iter().position(|&c| c != b'/').unwrap_or(real.len());
        s.extend_from_slice(&real[start..]);
        s
    }

    pub(super) fn depth(key: &VKey) -> usize {
        match key {
            VKey::ByTag(t) => 1 + t.len(),
            _ => 2,
        }
    }

    /// Entries for real inodes: files as themselves, directories as symlinks.
    pub(super) fn real_entries(
        &self,
        folder: u64,
        key: &VKey,
        rows: Vec<(Vec<u8>, Attr)>,
        taken: &HashSet<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let rows: Vec<(Vec<u8>, u64, Attr)> =
            rows.into_iter().map(|(n, i)| (n, i.ino, i)).collect();
        let mut out = Vec::with_capacity(rows.len());
        for (name, _, attr) in query::unique_names(rows, taken) {
            if attr.is_dir() && self.is_window_dir(attr.ino)? {
                let v = self.vnode(VKey::Window(attr.ino), None);
                out.push((name, Target::Window(v, attr.ino)));
                continue;
            }
            // A directory cannot be in two places: it shows as a symlink to
            // its real path. A symlink with a relative target shows as a
            // symlink rewritten to reach what it reaches at its real place.
            let target = if attr.is_dir() {
                let path = self.core.path_bytes(attr.ino)?;
                Some(self.link_to(Self::depth(key), &path))
            } else if attr.kind == FileKind::Symlink {
                let t = self.core.readlink(attr.ino)?;
                if t.starts_with(b"/") {
                    None
                } else {
                    let path = self.core.path_bytes(attr.ino)?;
                    let cut = path.iter().rposition(|&c| c == b'/').unwrap_or(0);
                    let mut l = self.link_to(Self::depth(key), &path[..cut]);
                    if !l.ends_with(b"/") {
                        l.push(b'/');
                    }
                    l.extend_from_slice(&t);
                    Some(l)
                }
            } else {
                None
            };
            match target {
                Some(target) => {
                    let v = self.vnode(self.leaf(folder, &name), Some((Arc::new(target), true)));
                    out.push((name, Target::Alias(v, attr.ino)));
                }
                None => out.push((name, Target::Real(self.core.overlay(attr)))),
            }
        }
        Ok(out)
    }

    /// The key of a result file or directory symlink `name` in `folder`,
    /// for the current viewer: each viewer has its own (their content and
    /// targets come from what that viewer may see).
    pub(super) fn leaf(&self, folder: u64, name: &[u8]) -> VKey {
        match crate::folders::perm::current_viewer() {
            None => VKey::Leaf(folder, name.to_vec()),
            Some(v) => {
                // NUL never occurs in a name: no clash with another leaf.
                let mut k = name.to_vec();
                k.push(0);
                k.extend_from_slice(&v.key());
                VKey::Leaf(folder, k)
            }
        }
    }

    /// The entries of a folder as `vis` may see them; result files it
    /// makes are added to `files`.
    pub(super) fn compute(
        &self,
        ino: u64,
        key: &VKey,
        files: &mut Vec<Arc<Vec<u8>>>,
        vis: &Option<Arc<Visibility>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let restricted = vis.as_ref().is_some_and(|v| !v.hidden.is_empty());
        match key {
            VKey::ByTag(terms) if terms.is_empty() => {
                let mut names = self.meta().tag_names()?;
                if restricted {
                    // A tag held only by files out of the viewer's reach is
                    // not shown (an unused tag is).
                    let mut any: HashSet<String> = HashSet::new();
                    let mut seen: HashSet<String> = HashSet::new();
                    let pairs = self.meta().tag_files()?;
                    for (t, f) in pairs {
                        if !any.contains(&t) && self.reachable(vis, f)? {
                            any.insert(t.clone());
                        }
                        seen.insert(t);
                    }
                    names.retain(|n| any.contains(n) || !seen.contains(n));
                }
                Ok(names
                    .into_iter()
                    .map(|n| {
                        let v = self.vnode(VKey::ByTag(vec![Term::tag(&n)]), None);
                        (n.into_bytes(), Target::Virtual(v))
                    })
                    .collect())
            }
            VKey::ByTag(terms) => {
                let (mut files, mut narrow) = {
                    let m = self.meta();
                    let (sql, p) = query::files_sql(terms);
                    let files = m.listing(&sql, &p)?;
                    let (sql, p) = query::narrowing_sql(terms);
                    let narrow = m.strings(&sql, &p)?;
                    (files, narrow)
                };
                if restricted {
                    // Only files the viewer can reach, and only the tags
                    // those files hold narrow.
                    let mut kept = Vec::with_capacity(files.len());
                    let mut held: HashSet<String> = HashSet::new();
                    for (n, i) in files {
                        if self.reachable(vis, i.ino)? {
                            let tags = self.meta().file_tags(i.ino)?;
                            held.extend(tags.into_iter().map(|(t, _)| t));
                            kept.push((n, i));
                        }
                    }
                    files = kept;
                    narrow.retain(|t| held.contains(t));
                }
                // Tags already named by the path do not narrow.
                let used: HashSet<&str> = terms
                    .iter()
                    .flat_map(|t| t.any.iter().map(|a| a.tag()))
                    .collect();
                // Only a one-term folder lists the tags that narrow it: a
                // deeper folder (`/by-tag/a/b/`) is found by name in any
                // order but lists only its files. Otherwise every ordering
                // of a file's tags is a listed path, and `find`, `du` or a
                // backup of the mount meets a file with n tags n! times.
                // A window (a directory copied in) keeps its name: a tag of
                // that name does not take it (a re-run of `rsync` must find
                // the directory it made, not a folder).
                // (Only a one-term folder lists narrowing tags at all.)
                let mut windows: HashSet<Vec<u8>> = HashSet::new();
                if terms.len() == 1 && !narrow.is_empty() {
                    for (n, i) in &files {
                        if i.is_dir() && self.is_window_dir(i.ino)? {
                            windows.insert(n.clone());
                        }
                    }
                }
                let subs: Vec<String> = narrow
                    .into_iter()
                    .filter(|t| terms.len() == 1 && !used.contains(t.as_str()))
                    .filter(|t| !windows.contains(t.as_bytes()))
                    .collect();
                let taken: HashSet<Vec<u8>> = subs.iter().map(|s| s.as_bytes().to_vec()).collect();
                let mut out = self.real_entries(ino, key, files, &taken)?;
                for s in subs {
                    let mut t = terms.clone();
                    t.push(Term::tag(&s));
                    let v = self.vnode(VKey::ByTag(t), None);
                    out.push((s.into_bytes(), Target::Virtual(v)));
                }
                Ok(out)
            }
            VKey::SqlRoot => Ok(Vec::new()),
            VKey::QueriesRoot => {
                let mut names: Vec<String> =
                    saved::SHIPPED.iter().map(|(n, _)| n.to_string()).collect();
                names.extend(self.meta().saved_queries()?.into_iter().map(|(n, _)| n));
                names.sort();
                names.dedup();
                Ok(names
                    .into_iter()
                    .map(|n| {
                        let v = self.vnode(VKey::Saved(n.clone()), None);
                        (n.into_bytes(), Target::Virtual(v))
                    })
                    .collect())
            }
            VKey::Sql(sql) => self.sql_entries(ino, key, sql, files, vis),
            VKey::Saved(name) => {
                let sql = match saved::shipped(name) {
                    Some(s) => s.to_string(),
                    None => self.meta().saved_query(name)?.ok_or(FsError::NotFound)?,
                };
                self.sql_entries(ino, key, &sql, files, vis)
            }
            VKey::Leaf(..) => Err(FsError::NotDir),
            VKey::Window(d) => {
                let rows = self.meta().list_dir(*d)?;
                let mut out = Vec::with_capacity(rows.len());
                for (n, a) in rows {
                    let t = self.in_window(ino, &n, a)?;
                    out.push((n, t));
                }
                Ok(out)
            }
        }
    }

    pub(super) fn sql_entries(
        &self,
        ino: u64,
        key: &VKey,
        sql: &str,
        files: &mut Vec<Arc<Vec<u8>>>,
        vis: &Option<Arc<Visibility>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let r = self.sandbox_run(sql, vis)?;
        if r.truncated {
            tracing::warn!("query {sql:?}: only the first {} rows are shown", ROW_CAP);
        }
        let col = |names: &[&str]| {
            r.columns
                .iter()
                .position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
        };
        let id_col = col(&["id", "ino"]);
        let path_col = col(&["path"]);
        let name_col = col(&["name"]);
        if id_col.is_none() && path_col.is_none() {
            return self.result_files(ino, r, files);
        }
        let mut rows = Vec::new();
        // Paths and names are bytes (text or blob): a name need not be UTF-8.
        let bytes = |v: Option<&Cell>| match v {
            Some(Cell::Text(b) | Cell::Blob(b)) => Some(b.clone()),
            _ => None,
        };
        for row in &r.rows {
            let path = bytes(path_col.map(|c| &row[c]));
            let found = match (id_col.map(|c| &row[c]), &path) {
                (Some(Cell::Integer(i)), _) if *i > 0 => self.meta().inode(*i as u64)?,
                (_, Some(p)) => match self.core.resolve_bytes(p) {
                    Ok(i) => Some(i),
                    Err(FsError::NotFound | FsError::NotDir | FsError::NameTooLong) => None,
                    Err(e) => return Err(e),
                },
                _ => None,
            };
            let Some(attr) = found else { continue };
            if attr.nlink == 0 || attr.ino == ROOT || is_virtual(attr.ino) {
                continue;
            }
            // An id or path names a file whatever the views showed: only
            // files the viewer can reach are listed.
            if !self.reachable(vis, attr.ino)? {
                continue;
            }
            // A name that no directory may show (`.`, `..`, with `/` or
            // NUL, too long) gives way to the path's last part, then to the
            // file's real name.
            let base = |p: &[u8]| p.rsplit(|&c| c == b'/').next().unwrap_or(b"").to_vec();
            let name = match (bytes(name_col.map(|c| &row[c])), &path) {
                (Some(n), _) if listable(&n) => n,
                (_, Some(p)) if listable(&base(p)) => base(p),
                _ => match self.meta().parent_of(attr.ino)? {
                    Some((_, n)) => n,
                    None => continue,
                },
            };
            rows.push((name, attr));
        }
        self.real_entries(ino, key, rows, &HashSet::new())
    }

    /// `result.csv` and `result.json` for rows that name no file, each at
    /// most [`RESULT_FILE_CAP`] bytes (a bigger result fails the folder).
    pub(super) fn result_files(
        &self,
        folder: u64,
        r: QueryResult,
        files: &mut Vec<Arc<Vec<u8>>>,
    ) -> Result<Vec<(Vec<u8>, Target)>> {
        let too_big = || {
            tracing::warn!(
                "a query result is larger than {} MiB; use `queryfs query` for it",
                RESULT_FILE_CAP >> 20
            );
            FsError::Invalid(format!(
                "the result is larger than {} MiB",
                RESULT_FILE_CAP >> 20
            ))
        };
        // CSV holds text as the bytes it is (a name need not be UTF-8).
        let esc = |s: &[u8], out: &mut Vec<u8>| {
            if s.iter().any(|c| b",\"\n\r".contains(c)) {
                out.push(b'"');
                for &c in s {
                    if c == b'"' {
                        out.push(b'"');
                    }
                    out.push(c);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(s);
            }
        };
        let mut csv = Vec::new();
        for (i, c) in r.columns.iter().enumerate() {
            if i > 0 {
                csv.push(b',');
            }
            esc(c.as_bytes(), &mut csv);
        }
        csv.push(b'\n');
        for row in &r.rows {
            for (i, v) in row.iter().enumerate() {
                if i > 0 {
                    csv.push(b',');
                }
                esc(&value_text(v), &mut csv);
            }
            csv.push(b'\n');
            if csv.len() > RESULT_FILE_CAP {
                return Err(too_big());
            }
        }
        // JSON written row by row, as `serde_json::to_vec_pretty` of the
        // array of row objects would write it.
        let mut json = Vec::new();
        if r.rows.is_empty() {
            json.extend_from_slice(b"[]");
        } else {
            json.extend_from_slice(b"[\n");
            for i in 0..r.rows.len() {
                let obj = serde_json::Value::Object(r.row_json(i));
                let text = serde_json::to_string_pretty(&obj).unwrap_or_default();
                for (k, line) in text.lines().enumerate() {
                    if k > 0 {
                        json.push(b'\n');
                    }
                    json.extend_from_slice(b"  ");
                    json.extend_from_slice(line.as_bytes());
                }
                json.extend_from_slice(if i + 1 < r.rows.len() { b",\n" } else { b"\n" });
                if json.len() > RESULT_FILE_CAP {
                    return Err(too_big());
                }
            }
            json.push(b']');
        }
        json.push(b'\n');
        drop(r);
        Ok([
            (b"result.csv".to_vec(), csv),
            (b"result.json".to_vec(), json),
        ]
        .into_iter()
        .map(|(n, d)| {
            let d = Arc::new(d);
            files.push(d.clone());
            let v = self.vnode(self.leaf(folder, &n), Some((d, false)));
            (n, Target::Virtual(v))
        })
        .collect())
    }

    pub(super) fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
        let generation = self.core.generation();
        let epoch = self.virt.table.lock().epoch;
        let ck = (ino, crate::folders::perm::current_viewer());
        if let Some(l) = self.virt.cache.lock().map.get(&ck) {
            if l.generation == generation && l.epoch + 1 >= epoch {
                return Ok(l.clone());
            }
        }
        let key = self.vkey(ino)?;
        let vis = self.visibility()?;
        let mut files = Vec::new();
        let entries = self.compute(ino, &key, &mut files, &vis)?;
        let index: HashMap<Vec<u8>, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let bytes = entries
            .iter()
            .map(|(n, _)| 2 * n.len() + 256)
            .sum::<usize>()
            + files.iter().map(|f| f.len()).sum::<usize>();
        let l = Arc::new(Listing {
            generation,
            epoch,
            entries,
            index,
            files,
            bytes,
        });
        self.virt.cache.lock().insert(ck, l.clone());
        Ok(l)
    }
}
