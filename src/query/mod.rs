//! Query folders: from a path under `/by-tag`, `/sql` or `/queries` to a
//! query, and from rows to directory entries. Pure logic: SQL runs in
//! [`crate::meta`] (trusted, compiled listings with bound parameters) or in
//! its sandbox (users' SQL).
//!
//! # Tags
//! A tag name is UTF-8 (any script), 1 to 200 bytes, and case-sensitive
//! (`Jazz` and `jazz` are two tags). It may not contain `/`, `,`, NUL or
//! control characters (they cannot appear in a folder name or the
//! comma-separated `user.tags`), nor `=`, `<`, `>`, `!`, `|` (the `/by-tag`
//! syntax), and may not be `.` or `..` or start or end with a space. A value
//! is UTF-8 up to 1024 bytes without `,`, NUL or control characters.
//!
//! # `/by-tag` syntax
//! Each folder level below `/by-tag` is a term; the levels are ANDed:
//! - `jazz`: tagged jazz;
//! - `!jazz`: not tagged jazz;
//! - `jazz|blues`: tagged jazz or blues (alternatives may be comparisons);
//! - `year=1959`, `year!=1959`, `year<1960`, `year<=1960`, `year>1950`,
//!   `year>=1950`: the tag's value compared, as numbers when the literal
//!   is a number, else as text.
//!
//! # Word syntax (no shell quoting needed)
//! The same terms spelled with words, for folder names and the command
//! line: `not.live` is `!live`, `jazz.or.blues` is `jazz|blues`, and
//! `year.eq.1959`, `.ne.`, `.lt.`, `.le.`, `.gt.`, `.ge.` are `=`, `!=`,
//! `<`, `<=`, `>`, `>=`. [`parse_words`] also reads a whole query written
//! as words: `jazz and not live year.ge.1950` (adjacent terms are ANDed,
//! `and` may be written or left out; `not X or Y` negates the whole
//! or-group `X or Y`).

pub mod saved;

use std::collections::{BTreeMap, HashSet};

use rusqlite::types::Value;

/// Longest tag name, in bytes (so that `user.tag.<name>` fits an xattr name).
pub const TAG_MAX: usize = 200;
/// Longest tag value, in bytes.
pub const VALUE_MAX: usize = 1024;

/// Why a tag name, a tag value, a `user.tags` set, a `/by-tag` term or a
/// query name was refused. The messages are what users see (in logs, the
/// CLI and through `EINVAL` from the mount).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("a tag name cannot be empty")]
    EmptyTag,
    #[error("tag name longer than {TAG_MAX} bytes")]
    TagTooLong,
    /// `.` or `..`.
    #[error("{0:?} cannot be a tag name")]
    DotTag(String),
    #[error("tag name {0:?} starts or ends with a space")]
    TagSpace(String),
    #[error(
        "tag name {name:?} contains {c:?}; '/', ',', '=', '<', '>', '!', '|' and control characters are not allowed"
    )]
    TagChar { name: String, c: char },
    #[error("tag value longer than {VALUE_MAX} bytes")]
    ValueTooLong,
    #[error("tag value {0:?} contains ',' or a control character")]
    ValueChar(String),
    #[error("tags must be UTF-8")]
    NotUtf8,
    /// A saved query's name that cannot be a folder name.
    #[error("{0:?} is not a valid query name")]
    BadQueryName(String),
    #[error("query name {0:?} contains '/' or a control character")]
    QueryNameChar(String),
    /// The name of a query shipped with queryfs.
    #[error("{0:?} is a shipped query and cannot be replaced")]
    ShippedQuery(String),
    /// A tag query in words that does not parse.
    #[error("tag query: {0}")]
    BadQuery(String),
}

/// Checks a tag name; the error says what is wrong.
pub fn check_tag(name: &str) -> Result<(), QueryError> {
    if name.is_empty() {
        return Err(QueryError::EmptyTag);
    }
    if name.len() > TAG_MAX {
        return Err(QueryError::TagTooLong);
    }
    if name == "." || name == ".." {
        return Err(QueryError::DotTag(name.to_string()));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(QueryError::TagSpace(name.to_string()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || "/,=<>!|".contains(*c))
    {
        return Err(QueryError::TagChar {
            name: name.to_string(),
            c,
        });
    }
    Ok(())
}

/// Checks a tag value.
pub fn check_value(v: &str) -> Result<(), QueryError> {
    if v.len() > VALUE_MAX {
        return Err(QueryError::ValueTooLong);
    }
    if v.contains(',') || v.chars().any(|c| c.is_control()) {
        return Err(QueryError::ValueChar(v.to_string()));
    }
    Ok(())
}

/// A tag with an optional value.
pub type TagItem = (String, Option<String>);

/// Parses one `name` or `name=value` item.
pub fn parse_item(s: &str) -> Result<TagItem, QueryError> {
    let s = s.trim();
    match s.split_once('=') {
        Some((n, v)) => {
            let n = n.trim();
            check_tag(n)?;
            check_value(v.trim())?;
            let v = v.trim();
            Ok((n.to_string(), (!v.is_empty()).then(|| v.to_string())))
        }
        None => {
            check_tag(s)?;
            Ok((s.to_string(), None))
        }
    }
}

/// Parses a whole `user.tags` value: items separated by commas (empty items
/// and surrounding spaces ignored; a later item wins over an earlier one).
pub fn parse_tag_set(raw: &[u8]) -> Result<Vec<TagItem>, QueryError> {
    let s = std::str::from_utf8(raw).map_err(|_| QueryError::NotUtf8)?;
    let mut out: BTreeMap<String, Option<String>> = BTreeMap::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        let (n, v) = parse_item(part)?;
        out.insert(n, v);
    }
    Ok(out.into_iter().collect())
}

/// Formats a tag set as `user.tags` shows it: sorted, comma separated.
pub fn format_tag_set(tags: &[TagItem]) -> Vec<u8> {
    let parts: Vec<String> = tags
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("{n}={v}"),
            None => n.clone(),
        })
        .collect();
    parts.join(",").into_bytes()
}

/// A comparison operator of a value term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// One alternative of a term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Atom {
    Tag(String),
    Cmp(String, Op, String),
}

impl Atom {
    pub fn tag(&self) -> &str {
        match self {
            Atom::Tag(t) | Atom::Cmp(t, _, _) => t,
        }
    }
}

/// One folder level under `/by-tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    pub negated: bool,
    /// ORed alternatives (at least one).
    pub any: Vec<Atom>,
}

impl Term {
    /// The term of one (already checked) tag name.
    pub fn tag(name: &str) -> Term {
        Term {
            negated: false,
            any: vec![Atom::Tag(name.to_string())],
        }
    }

    /// A plain `tag` term.
    pub fn plain(&self) -> Option<&str> {
        match (self.negated, self.any.as_slice()) {
            (false, [Atom::Tag(t)]) => Some(t),
            _ => None,
        }
    }
}

/// Word operators: `NAME.ge.VALUE` and friends.
const WORD_OPS: &[(&str, Op)] = &[
    (".eq.", Op::Eq),
    (".ne.", Op::Ne),
    (".lt.", Op::Lt),
    (".le.", Op::Le),
    (".gt.", Op::Gt),
    (".ge.", Op::Ge),
];

fn parse_atom(s: &str) -> Result<Atom, QueryError> {
    for (tok, op) in WORD_OPS {
        if let Some((n, v)) = s.split_once(tok) {
            if check_tag(n).is_ok() && check_value(v).is_ok() {
                return Ok(Atom::Cmp(n.to_string(), *op, v.to_string()));
            }
        }
    }
    // Two-character operators first.
    for (tok, op) in [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("!=", Op::Ne),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ] {
        if let Some((n, v)) = s.split_once(tok) {
            check_tag(n)?;
            check_value(v)?;
            return Ok(Atom::Cmp(n.to_string(), op, v.to_string()));
        }
    }
    check_tag(s)?;
    Ok(Atom::Tag(s.to_string()))
}

/// Parses one folder name under `/by-tag`.
pub fn parse_term(name: &str) -> Result<Term, QueryError> {
    let (negated, rest) = match name.strip_prefix('!').or_else(|| name.strip_prefix("not.")) {
        Some(r) => (true, r),
        None => (false, name),
    };
    let any = rest
        .split('|')
        .flat_map(|a| a.split(".or."))
        .map(parse_atom)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Term { negated, any })
}

/// Parses a query given as words (each argument may hold several, split
/// at spaces): terms in the `/by-tag` syntax or the word syntax, joined by
/// `and` (or nothing) and `or`; `not` negates the or-group that follows.
/// `jazz and not live or demo year.ge.1950` is the folder
/// `/by-tag/jazz/!live|demo/year>=1950`.
pub fn parse_words<S: AsRef<str>>(args: &[S]) -> Result<Vec<Term>, QueryError> {
    let words: Vec<&str> = args
        .iter()
        .flat_map(|a| a.as_ref().split_whitespace())
        .collect();
    let bad = |w: &str| QueryError::BadQuery(w.to_string());
    let mut terms: Vec<Term> = Vec::new();
    let mut negate = false;
    // The next term joins the last one as an alternative.
    let mut or = false;
    // An `and` waits for its right-hand term.
    let mut and = false;
    for w in words {
        match w {
            "and" | "AND" => {
                if or || negate || and || terms.is_empty() {
                    return Err(bad("'and' needs a term on each side"));
                }
                and = true;
            }
            "or" | "OR" => {
                if or || negate || and || terms.is_empty() {
                    return Err(bad("'or' needs a term on each side"));
                }
                or = true;
            }
            "not" | "NOT" => {
                if or || negate {
                    return Err(bad(
                        "'not' cannot follow 'or' or 'not' (write not A or B for neither A nor B)",
                    ));
                }
                negate = true;
            }
            _ => {
                and = false;
                let t = parse_term(w)?;
                if or {
                    if t.negated {
                        return Err(bad("an alternative after 'or' cannot be negated"));
                    }
                    terms.last_mut().unwrap().any.extend(t.any);
                    or = false;
                } else {
                    terms.push(Term {
                        negated: negate ^ t.negated,
                        any: t.any,
                    });
                    negate = false;
                }
            }
        }
    }
    if or || negate || and {
        return Err(bad("the query ends with an operator"));
    }
    if terms.is_empty() {
        return Err(bad("the query is empty"));
    }
    Ok(terms)
}

fn atom_sql(a: &Atom, params: &mut Vec<Value>) -> String {
    match a {
        Atom::Tag(t) => {
            params.push(Value::Text(t.clone()));
            "tag = ?".into()
        }
        Atom::Cmp(t, op, lit) => {
            params.push(Value::Text(t.clone()));
            match lit.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => {
                    params.push(Value::Real(n));
                    format!(
                        "(tag = ? AND value GLOB '*[0-9]*' AND CAST(value AS REAL) {} ?)",
                        op.sql()
                    )
                }
                _ => {
                    params.push(Value::Text(lit.clone()));
                    format!("(tag = ? AND value {} ?)", op.sql())
                }
            }
        }
    }
}

/// The inode numbers matching `terms`, as one SELECT: the rows of the first
/// positive term, each kept if the other terms hold for it (probes of the
/// `(ino, tag)` index, far cheaper than intersecting whole tag sets).
fn matches_sql(terms: &[Term], params: &mut Vec<Value>) -> String {
    matches_sql_among(terms, params, None)
}

/// [`matches_sql`] among the inodes of set `among` only (SQL giving inode
/// numbers, with its one parameter): probes of the indexes for those few
/// instead of a walk over every file of the first term.
fn matches_sql_among(
    terms: &[Term],
    params: &mut Vec<Value>,
    among: Option<(&str, Value)>,
) -> String {
    let alts = |t: &Term, params: &mut Vec<Value>| -> String {
        let a: Vec<String> = t.any.iter().map(|a| atom_sql(a, params)).collect();
        a.join(" OR ")
    };
    let pos: Vec<&Term> = terms.iter().filter(|t| !t.negated).collect();
    let mut sql = match pos.first() {
        Some(first) => format!(
            "SELECT DISTINCT m0.ino AS ino FROM file_tags m0 WHERE ({})",
            alts(first, params)
        ),
        // Only negations: regular files only (not every directory and
        // symlink of the tree).
        None => format!(
            "SELECT m0.ino AS ino FROM inodes m0 WHERE m0.nlink > 0 AND m0.ino <> 1 AND m0.kind = {}",
            libc::S_IFREG
        ),
    };
    if let Some((set, p)) = among {
        sql.push_str(&format!(" AND m0.ino IN ({set})"));
        params.push(p);
    }
    for t in pos.iter().skip(1) {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM file_tags WHERE ino = m0.ino AND ({}))",
            alts(t, params)
        ));
    }
    for t in terms.iter().filter(|t| t.negated) {
        sql.push_str(&format!(
            " AND NOT EXISTS (SELECT 1 FROM file_tags WHERE ino = m0.ino AND ({}))",
            alts(t, params)
        ));
    }
    sql
}

/// SQL listing the files matching `terms`: rows of `name, <inode columns>`
/// (a file's first name, by parent and name), for [`crate::meta::MetaStore::listing`].
pub fn files_sql(terms: &[Term]) -> (String, Vec<Value>) {
    files_sql_named(terms, None)
}

/// [`files_sql`], only the files that have a real name `name` (the
/// candidates for the entry `name` of the folder).
pub fn files_sql_named(terms: &[Term], name: Option<&[u8]>) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let among = name.map(|n| {
        (
            "SELECT n.ino FROM dentries n WHERE n.name = ?",
            Value::Blob(n.to_vec()),
        )
    });
    let m = matches_sql_among(terms, &mut params, among);
    let sql = format!(
        "WITH m(ino) AS ({m}) \
         SELECT (SELECT d.name FROM dentries d WHERE d.ino = i.ino ORDER BY d.parent, d.name LIMIT 1), \
         i.ino, i.kind, i.perm, i.uid, i.gid, i.size, i.nlink, i.rdev, i.atime, i.mtime, i.ctime, i.btime, i.blocks \
         FROM m JOIN inodes i ON i.ino = m.ino WHERE i.nlink > 0 AND i.ino <> 1 ORDER BY i.ino"
    );
    (sql, params)
}

/// SQL giving one row when some file matches `terms`, none otherwise.
pub fn any_match_sql(terms: &[Term]) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let m = matches_sql(terms, &mut params);
    (format!("SELECT 'y' WHERE EXISTS ({m})"), params)
}

/// SQL listing the tags held by some file matching `terms` (the sub-folders
/// that narrow further), for [`crate::meta::MetaStore::strings`].
pub fn narrowing_sql(terms: &[Term]) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let m = matches_sql(terms, &mut params);
    let sql = format!(
        "WITH m(ino) AS ({m}) \
         SELECT DISTINCT f.tag FROM m JOIN file_tags f ON f.ino = m.ino ORDER BY f.tag"
    );
    (sql, params)
}

/// The tags a folder names (those of its positive terms).
pub fn named_tags(terms: &[Term]) -> Vec<&str> {
    terms
        .iter()
        .filter(|t| !t.negated)
        .flat_map(|t| t.any.iter().map(|a| a.tag()))
        .collect()
}

/// Decodes `%XX` escapes of a `/sql` folder name (`%2F` is `/`, `%25` is `%`).
/// A `%` not followed by two hex digits stays as it is.
pub fn percent_decode(name: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' && i + 2 < name.len() {
            if let (Some(h), Some(l)) = (hex(name[i + 1]), hex(name[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(name[i]);
        i += 1;
    }
    out
}

/// `stem~SUFFIX.ext` from `stem.ext` (a leading dot is not an extension).
pub fn with_suffix(name: &[u8], suffix: impl std::fmt::Display) -> Vec<u8> {
    let (stem, ext) = match name.iter().rposition(|&c| c == b'.') {
        Some(p) if p > 0 => (&name[..p], &name[p..]),
        _ => (name, &b""[..]),
    };
    [stem, format!("~{suffix}").as_bytes(), ext].concat()
}

/// Gives every entry a unique name. Entries are `(name, ino)`; duplicates of
/// the same pair are dropped. Among entries sharing a name, the lowest inode
/// keeps it (unless `taken` holds it already) and each other one becomes
/// `stem~INO.ext`, e.g. `report~1234.pdf`. Keeps the input order.
pub fn unique_names<T>(
    entries: Vec<(Vec<u8>, u64, T)>,
    taken: &HashSet<Vec<u8>>,
) -> Vec<(Vec<u8>, u64, T)> {
    let mut seen = HashSet::new();
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|(n, ino, _)| seen.insert((n.clone(), *ino)))
        .collect();
    let mut lowest: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
    for (n, ino, _) in &entries {
        let e = lowest.entry(n.as_slice()).or_insert(*ino);
        *e = (*e).min(*ino);
    }
    let keep: Vec<bool> = entries
        .iter()
        .map(|(n, ino, _)| lowest[n.as_slice()] == *ino && !taken.contains(n))
        .collect();
    // A made name may be some other entry's real name (`a~6` beside a
    // file named `a~6`): it takes one more suffix until it is unique.
    let mut used: HashSet<Vec<u8>> = entries
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|((n, _, _), _)| n.clone())
        .collect();
    used.extend(taken.iter().cloned());
    entries
        .into_iter()
        .zip(keep)
        .map(|((n, ino, t), keep)| {
            if keep {
                (n, ino, t)
            } else {
                let mut made = with_suffix(&n, ino);
                while used.contains(&made) {
                    made = with_suffix(&made, ino);
                }
                used.insert(made.clone());
                (made, ino, t)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_syntax() {
        let t = |s: &str| parse_term(s).unwrap();
        assert_eq!(t("not.live"), t("!live"));
        assert_eq!(t("jazz.or.blues"), t("jazz|blues"));
        assert_eq!(t("year.ge.1950"), t("year>=1950"));
        assert_eq!(t("year.eq.1959"), t("year=1959"));
        assert_eq!(t("v1.2"), Term::tag("v1.2"));
        let w = parse_words(&["jazz and not live or demo", "year.ge.1950"]).unwrap();
        assert_eq!(w, vec![t("jazz"), t("!live|demo"), t("year>=1950")]);
        assert_eq!(
            parse_words(&["jazz", "blues"]).unwrap(),
            vec![t("jazz"), t("blues")]
        );
        assert_eq!(
            parse_words(&["jazz or blues"]).unwrap(),
            vec![t("jazz|blues")]
        );
        assert_eq!(parse_words(&["!live"]).unwrap(), vec![t("!live")]);
        for bad in [
            "",
            "and",
            "jazz and",
            "jazz and and x",
            "jazz or",
            "not",
            "jazz or not x",
            "not not x",
        ] {
            assert!(parse_words(&[bad]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tag_names() {
        assert!(check_tag("jazz").is_ok());
        assert!(check_tag("Ünïcödé 音楽").is_ok());
        for bad in [
            "", "a/b", "a,b", "a=b", "!a", "a|b", "a\0b", ".", "..", " a", "a\n",
        ] {
            assert!(check_tag(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_tag(&"x".repeat(TAG_MAX + 1)).is_err());
        // The messages users see.
        assert_eq!(
            check_tag("").unwrap_err().to_string(),
            "a tag name cannot be empty"
        );
        assert_eq!(
            check_tag("a|b").unwrap_err(),
            QueryError::TagChar {
                name: "a|b".into(),
                c: '|'
            }
        );
        assert_eq!(
            check_tag("a|b").unwrap_err().to_string(),
            "tag name \"a|b\" contains '|'; '/', ',', '=', '<', '>', '!', '|' and control characters are not allowed"
        );
        assert_eq!(
            check_tag(&"x".repeat(TAG_MAX + 1)).unwrap_err().to_string(),
            "tag name longer than 200 bytes"
        );
        assert_eq!(
            check_value("a,b").unwrap_err().to_string(),
            "tag value \"a,b\" contains ',' or a control character"
        );
    }

    #[test]
    fn tag_sets() {
        let t = parse_tag_set(b" jazz, year=1959,,blues ,jazz").unwrap();
        assert_eq!(
            t,
            vec![
                ("blues".into(), None),
                ("jazz".into(), None),
                ("year".into(), Some("1959".into()))
            ]
        );
        assert_eq!(format_tag_set(&t), b"blues,jazz,year=1959");
        assert!(parse_tag_set(b"a/b").is_err());
        assert!(parse_tag_set(&[0xff]).is_err());
    }

    #[test]
    fn terms() {
        assert_eq!(parse_term("jazz").unwrap().plain(), Some("jazz"));
        let t = parse_term("!a|year>=1950").unwrap();
        assert!(t.negated);
        assert_eq!(
            t.any,
            vec![
                Atom::Tag("a".into()),
                Atom::Cmp("year".into(), Op::Ge, "1950".into())
            ]
        );
        assert_eq!(
            parse_term("year!=3").unwrap().any,
            vec![Atom::Cmp("year".into(), Op::Ne, "3".into())]
        );
        assert!(parse_term("a||b").is_err());
        assert!(parse_term("").is_err());
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode(b"a%2Fb%2fc"), b"a/b/c");
        assert_eq!(percent_decode(b"100%"), b"100%");
        assert_eq!(percent_decode(b"%zz%25"), b"%zz%");
    }

    #[test]
    fn clashes() {
        let v = vec![
            (b"a.txt".to_vec(), 9, ()),
            (b"a.txt".to_vec(), 3, ()),
            (b"a.txt".to_vec(), 3, ()),
            (b".rc".to_vec(), 4, ()),
            (b"b".to_vec(), 5, ()),
        ];
        let taken: HashSet<Vec<u8>> = [b"b".to_vec()].into();
        let names: Vec<Vec<u8>> = unique_names(v, &taken).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            vec![
                b"a~9.txt".to_vec(),
                b"a.txt".to_vec(),
                b".rc".to_vec(),
                b"b~5".to_vec()
            ]
        );
    }
}
