//! Users' SQL and the catalogue: the sandbox connections that run queries
//! (for `/sql`, `/queries` and the CLI's `query`), tags and saved queries.

#[allow(unused_imports)]
use super::*;
use crate::meta::sandbox::{QueryResult, Sandbox, SandboxError, Visibility};
use crate::query::saved;

/// Time budget of one user query.
pub const QUERY_BUDGET: Duration = Duration::from_secs(2);
/// Most rows (entries) a query folder shows.
pub const ROW_CAP: usize = 100_000;
/// Idle sandbox connections kept for reuse.
const IDLE_SANDBOXES: usize = 4;

impl Fs {
    /// Calls `f` with a sandbox connection (one per running query, so that
    /// queries on several threads do not wait for each other), opening one
    /// when none is idle. A query the sandbox stops is [`FsError::Query`],
    /// saying why (a timeout, a cap).
    pub fn with_sandbox<T>(
        &self,
        vis: Option<Arc<Visibility>>,
        f: impl FnOnce(&Sandbox) -> std::result::Result<T, SandboxError>,
    ) -> Result<T> {
        // The sandbox has its own connection: it sees committed changes only.
        self.settle()?;
        let idle = self.sandboxes.lock().pop();
        let sb = match idle {
            Some(sb) => sb,
            None => self
                .meta()
                .open_sandbox()?
                .ok_or_else(|| FsError::Invalid("SQL queries need a store on disk".into()))?,
        };
        sb.set_visibility(vis);
        let r = f(&sb).map_err(FsError::from);
        sb.set_visibility(None);
        let mut idle = self.sandboxes.lock();
        if idle.len() < IDLE_SANDBOXES {
            idle.push(sb);
        }
        r
    }

    /// Runs users' SQL through the sandbox (the CLI's `query`).
    pub fn run_query(&self, sql: &str) -> Result<QueryResult> {
        self.with_sandbox(None, |sb| sb.run(sql, QUERY_BUDGET, ROW_CAP))
    }

    /// Compiles users' SQL in the sandbox without running it.
    pub fn check_query(&self, sql: &str) -> Result<()> {
        self.with_sandbox(None, |sb| sb.check(sql).map(|_| ()))
    }

    /// Every tag with the number of files holding it.
    pub fn tag_counts(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.meta().tag_counts()?)
    }

    /// Every tag name, used or not.
    pub fn tag_names(&self) -> Result<Vec<String>> {
        Ok(self.meta().tag_names()?)
    }

    /// Creates a tag unless it exists.
    pub fn ensure_tag(&self, name: &str) -> Result<()> {
        query::check_tag(name)?;
        let now = crate::vfs::now_ns();
        self.tx(|m, _| {
            if !m.tag_exists(name)? {
                m.create_tag(name, now)?;
            }
            Ok(())
        })
    }

    /// A file's tags.
    pub fn file_tags(&self, ino: u64) -> Result<Vec<query::TagItem>> {
        Ok(self.meta().file_tags(ino)?)
    }

    /// Saves (or replaces) a user query after checking it.
    pub fn save_query(&self, name: &str, sql: &str) -> Result<()> {
        saved::check_name(name)?;
        self.check_query(sql)?;
        let now = crate::vfs::now_ns();
        self.tx(|m, _| Ok(m.save_query(name, sql, now)?))
    }

    /// Deletes a user query; `NotFound` if there is none.
    pub fn delete_query(&self, name: &str) -> Result<()> {
        if saved::shipped(name).is_some() {
            return Err(FsError::Invalid(format!(
                "{name:?} is a shipped query and cannot be removed"
            )));
        }
        self.tx(|m, _| {
            if m.delete_saved_query(name)? {
                Ok(())
            } else {
                Err(FsError::NotFound)
            }
        })
    }

    /// Shipped and saved queries: (name, SQL, shipped).
    pub fn queries(&self) -> Result<Vec<(String, String, bool)>> {
        let mut v: Vec<(String, String, bool)> = saved::SHIPPED
            .iter()
            .map(|(n, q)| (n.to_string(), q.to_string(), true))
            .collect();
        v.extend(
            self.meta()
                .saved_queries()?
                .into_iter()
                .map(|(n, q)| (n, q, false)),
        );
        v.sort();
        Ok(v)
    }
}
