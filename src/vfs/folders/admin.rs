//! Tags and saved queries for the command line.

#[allow(unused_imports)]
use super::*;

impl Fs {
    /// Checks users' SQL without running it.
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
