//! Saved queries shipped with queryfs (`queries/saved/*.sql`), shown in
//! `/queries/` beside the user's own (saved in the store).

use super::QueryError;

/// (name, SQL) of every shipped query.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "duplicates",
        include_str!("../../queries/saved/duplicates.sql"),
    ),
    ("large", include_str!("../../queries/saved/large.sql")),
    ("recent", include_str!("../../queries/saved/recent.sql")),
    ("untagged", include_str!("../../queries/saved/untagged.sql")),
];

/// The SQL of a shipped query.
pub fn shipped(name: &str) -> Option<&'static str> {
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(_, q)| *q)
}

/// Checks the name of a query to save: a valid folder name, not shipped.
pub fn check_name(name: &str) -> Result<(), QueryError> {
    if name.is_empty() || name.len() > 200 || name == "." || name == ".." {
        return Err(QueryError::BadQueryName(name.to_string()));
    }
    if name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(QueryError::QueryNameChar(name.to_string()));
    }
    if shipped(name).is_some() {
        return Err(QueryError::ShippedQuery(name.to_string()));
    }
    Ok(())
}
