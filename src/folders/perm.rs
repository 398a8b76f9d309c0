//! Who is looking: query folders show a caller only the files it could
//! reach through the real tree (search permission on every ancestor
//! directory, the rule the kernel applies with `default_permissions`), the
//! way `mlocate` shows each user only what that user can reach. Root sees
//! everything.
//!
//! The FUSE adapter runs a lookup or an opendir of a query folder inside
//! [`with_viewer`]; the listing code reads the viewer once, at the top of a
//! listing, and caches listings per viewer. A call outside `with_viewer` (an
//! in-process caller: the CLI, tests) sees everything: it has the store's
//! files anyway.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::{Folders, ROOT};
use crate::error::Result;
use crate::meta::sandbox::Visibility;

/// A caller of the mount: ids and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted.
    pub groups: Vec<u32>,
}

impl Viewer {
    /// The caller of a request: its ids, and the supplementary groups of the
    /// requesting process (`Groups:` of `/proc/<pid>/status`; none when the
    /// process is gone).
    pub fn of_process(uid: u32, gid: u32, pid: u32) -> Viewer {
        if uid == 0 {
            // Root sees everything: its groups do not matter.
            return Viewer {
                uid,
                gid,
                groups: Vec::new(),
            };
        }
        let mut groups: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
            })
            .unwrap_or_default();
        groups.sort_unstable();
        groups.dedup();
        Viewer { uid, gid, groups }
    }

    /// A short tag that tells viewers apart (in keys of virtual nodes).
    pub(super) fn key(&self) -> Vec<u8> {
        format!("{}:{}:{:?}", self.uid, self.gid, self.groups).into_bytes()
    }
}

thread_local! {
    static VIEWER: RefCell<Option<Viewer>> = const { RefCell::new(None) };
}

/// Runs `f` on behalf of `v`: query folders computed inside show what `v`
/// may reach.
pub fn with_viewer<T>(v: Viewer, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Viewer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take();
            VIEWER.with(|c| *c.borrow_mut() = old);
        }
    }
    let _restore = Restore(VIEWER.with(|c| c.borrow_mut().replace(v)));
    f()
}

/// The viewer of the running call; `None` sees everything (root, or a call
/// outside [`with_viewer`]).
pub(super) fn current_viewer() -> Option<Viewer> {
    VIEWER.with(|c| c.borrow().clone()).filter(|v| v.uid != 0)
}

/// Visibility computed for one viewer at one metadata generation.
#[derive(Default)]
pub(super) struct VisCache {
    map: HashMap<Viewer, (u64, Arc<Visibility>)>,
}

impl Folders {
    /// What the current viewer may see; `None` is everything.
    pub(super) fn visibility(&self) -> Result<Option<Arc<Visibility>>> {
        let Some(v) = current_viewer() else {
            return Ok(None);
        };
        let generation = self.core.generation();
        if let Some((g, vis)) = self.virt.vis.lock().map.get(&v) {
            if *g == generation {
                return Ok(Some(vis.clone()));
            }
        }
        let (dirs, root) = {
            let m = self.meta();
            (m.dir_perms()?, m.inode(ROOT)?)
        };
        let mut vis = Visibility {
            uid: v.uid,
            gid: v.gid,
            groups: v.groups.clone(),
            ..Default::default()
        };
        let search = |uid: u32, gid: u32, perm: u32| vis.bits(uid, gid, perm) & 1 != 0;
        // ino -> (parent, searchable by the viewer)
        let info: HashMap<u64, (u64, bool)> = dirs
            .iter()
            .map(|&(ino, parent, perm, uid, gid)| (ino, (parent, search(uid, gid, perm))))
            .collect();
        let root_ok = root.is_some_and(|r| search(r.uid, r.gid, r.perm));
        // reachable: the entries of the directory can be reached.
        let mut reachable: HashMap<u64, bool> = HashMap::with_capacity(info.len() + 1);
        reachable.insert(ROOT, root_ok);
        for &(ino, ..) in &dirs {
            let mut chain = Vec::new();
            let mut cur = ino;
            let ok = loop {
                if let Some(&r) = reachable.get(&cur) {
                    break r;
                }
                match info.get(&cur) {
                    Some(&(parent, true)) if chain.len() < 4096 => {
                        chain.push(cur);
                        cur = parent;
                    }
                    _ => {
                        chain.push(cur);
                        break false;
                    }
                }
            };
            for c in chain {
                reachable.insert(c, ok);
            }
        }
        for (d, ok) in reachable {
            if ok {
                vis.reachable.insert(d);
            } else {
                vis.hidden.insert(d);
            }
        }
        if vis.hidden.is_empty() {
            // Every directory is reachable: nothing to look up per row.
            vis.reachable = Default::default();
        }
        let vis = Arc::new(vis);
        let mut c = self.virt.vis.lock();
        if c.map.len() > 64 {
            c.map.clear();
        }
        c.map.insert(v, (generation, vis.clone()));
        Ok(Some(vis))
    }

    /// Whether some name of `ino` is reachable under `vis`.
    pub(super) fn reachable(&self, vis: &Option<Arc<Visibility>>, ino: u64) -> Result<bool> {
        match vis {
            Some(v) if !v.hidden.is_empty() => {
                Ok(self.meta().parents(ino)?.iter().any(|&p| v.sees(p)))
            }
            _ => Ok(true),
        }
    }
}
