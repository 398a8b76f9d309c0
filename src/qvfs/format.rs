//! The bytes of a plain QVFS image: directory entries, long-name fragments,
//! the packed date/time and the naming rules.
//!
//! This module is the executable half of `docs/qvfs-format.md`; the
//! constants and layouts here are the ones that document gives, and the
//! worked example there is a test below.

use std::collections::HashSet;

/// Size of one directory entry.
pub const ENTRY_SIZE: usize = 64;
/// Entries per 4 KiB cluster.
pub const ENTRIES_PER_CLUSTER: usize = 64;
/// Bytes of the name field of a (short) entry.
pub const NAME_LEN: usize = 39;

/// Property bits.
pub mod prop {
    /// Never written; ends the scan of a folder.
    pub const EMPTY: u8 = 0x00;
    pub const DELETED: u8 = 0x01;
    pub const DIR: u8 = 0x02;
    pub const FILE: u8 = 0x04;
    pub const HIDDEN: u8 = 0x08;
    pub const READ_ONLY: u8 = 0x10;
    pub const SYSTEM: u8 = 0x20;
    pub const ARCHIVE: u8 = 0x40;
    /// A long-name fragment; always written with `DELETED`.
    pub const LONG_NAME: u8 = 0x80;
    /// The property byte of every long-name fragment.
    pub const FRAGMENT: u8 = LONG_NAME | DELETED;
}

/// Name bytes carried by one long-name fragment.
pub const FRAGMENT_BYTES: usize = 60;
/// Longest long name (bytes of UTF-8), as on Linux.
pub const LONG_NAME_MAX: usize = 255;
/// Most fragments one long name may use.
pub const MAX_FRAGMENTS: usize = LONG_NAME_MAX.div_ceil(FRAGMENT_BYTES);
/// Largest file size a QVFS entry can hold (i32).
pub const FILE_SIZE_MAX: u64 = i32::MAX as u64;
/// Name of the metadata file at the root of images queryfs writes.
pub const SIDECAR_NAME: &str = ".queryfs-meta.json";

/// Why a run of long-name fragments or a name breaks the rules of the
/// format. The messages are what `queryfs qvfs check` reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A run of no fragment, or of more than [`MAX_FRAGMENTS`].
    #[error("{0} long-name fragments")]
    FragmentCount(usize),
    #[error("long-name fragments out of order")]
    FragmentOrder,
    /// The checksum names another short entry.
    #[error("long-name fragment belongs to another entry")]
    FragmentChecksum,
    #[error("long name is not UTF-8")]
    LongNotUtf8,
    /// Empty, `.` or `..` (long or short).
    #[error("{0:?} is not a name")]
    NotAName(String),
    /// A long name over [`LONG_NAME_MAX`] bytes (its length).
    #[error("long name of {0} bytes")]
    LongTooLong(usize),
    #[error("long name holds '/' or NUL")]
    LongChar,
    #[error("name is not valid UTF-8")]
    ShortNotUtf8,
    #[error("empty name")]
    ShortEmpty,
    /// A short name over [`NAME_LEN`] bytes (its length).
    #[error("name of {0} bytes (at most {NAME_LEN})")]
    ShortTooLong(usize),
    #[error("name holds the character {0:?}")]
    ShortChar(char),
}

/// One 64-byte short entry, decoded without judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub property: u8,
    pub name: [u8; NAME_LEN],
    pub created: u32,
    pub modified: u32,
    pub start: i32,
    pub size: i32,
}

impl RawEntry {
    pub fn decode(b: &[u8]) -> RawEntry {
        let u = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&b[1..1 + NAME_LEN]);
        RawEntry {
            property: b[0],
            name,
            created: u(0x28),
            modified: u(0x2C),
            start: u(0x30) as i32,
            size: u(0x34) as i32,
        }
    }

    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0] = self.property;
        b[1..1 + NAME_LEN].copy_from_slice(&self.name);
        b[0x28..0x2C].copy_from_slice(&self.created.to_le_bytes());
        b[0x2C..0x30].copy_from_slice(&self.modified.to_le_bytes());
        b[0x30..0x34].copy_from_slice(&self.start.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// The name bytes before the first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        let end = self.name.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        &self.name[..end]
    }

    /// Whether a non-NUL byte follows the first NUL of the name field.
    pub fn name_padding_dirty(&self) -> bool {
        let n = self.name_bytes().len();
        self.name[n..].iter().any(|&c| c != 0)
    }

    pub fn is_end(&self) -> bool {
        self.property == prop::EMPTY
    }
    pub fn is_deleted(&self) -> bool {
        self.property & prop::DELETED != 0
    }
    pub fn is_fragment(&self) -> bool {
        self.property & prop::FRAGMENT == prop::FRAGMENT
    }
    pub fn is_dir(&self) -> bool {
        self.property & prop::DIR != 0
    }
}

/// Pads a short name into the 39-byte field. The caller has checked it.
pub fn name_field(name: &str) -> [u8; NAME_LEN] {
    let mut f = [0u8; NAME_LEN];
    f[..name.len()].copy_from_slice(name.as_bytes());
    f
}

/// The checksum a long-name fragment carries of its short entry's name
/// field: the VFAT rotate-right-and-add over all 39 bytes.
pub fn name_checksum(field: &[u8; NAME_LEN]) -> u8 {
    field
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

/// One long-name fragment entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// 1-based position in the name.
    pub seq: u8,
    /// Number of fragments of the name.
    pub count: u8,
    pub checksum: u8,
    pub bytes: [u8; FRAGMENT_BYTES],
}

impl Fragment {
    pub fn decode(b: &[u8]) -> Fragment {
        let mut bytes = [0u8; FRAGMENT_BYTES];
        bytes.copy_from_slice(&b[4..ENTRY_SIZE]);
        Fragment {
            seq: b[1],
            count: b[2],
            checksum: b[3],
            bytes,
        }
    }

    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0] = prop::FRAGMENT;
        b[1] = self.seq;
        b[2] = self.count;
        b[3] = self.checksum;
        b[4..].copy_from_slice(&self.bytes);
        b
    }
}

/// The fragments that carry `long` before a short entry named `short`.
pub fn long_name_fragments(long: &str, short: &[u8; NAME_LEN]) -> Vec<[u8; ENTRY_SIZE]> {
    let sum = name_checksum(short);
    let parts: Vec<&[u8]> = long.as_bytes().chunks(FRAGMENT_BYTES).collect();
    let count = parts.len() as u8;
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut bytes = [0u8; FRAGMENT_BYTES];
            bytes[..p.len()].copy_from_slice(p);
            Fragment {
                seq: i as u8 + 1,
                count,
                checksum: sum,
                bytes,
            }
            .encode()
        })
        .collect()
}

/// Joins a complete run of fragments (in order) into a long name, if the run
/// is well formed and belongs to the short entry `short`.
pub fn join_fragments(run: &[Fragment], short: &[u8; NAME_LEN]) -> Result<String, NameError> {
    let n = run.len();
    if n == 0 || n > MAX_FRAGMENTS {
        return Err(NameError::FragmentCount(n));
    }
    let sum = name_checksum(short);
    let mut out = Vec::with_capacity(n * FRAGMENT_BYTES);
    for (i, f) in run.iter().enumerate() {
        if f.seq as usize != i + 1 || f.count as usize != n {
            return Err(NameError::FragmentOrder);
        }
        if f.checksum != sum {
            return Err(NameError::FragmentChecksum);
        }
        let len = if i + 1 == n {
            f.bytes
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(FRAGMENT_BYTES)
        } else {
            FRAGMENT_BYTES
        };
        out.extend_from_slice(&f.bytes[..len]);
    }
    let s = String::from_utf8(out).map_err(|_| NameError::LongNotUtf8)?;
    check_long_name(&s)?;
    Ok(s)
}

/// What a long name may not be: empty, `.`/`..`, over 255 bytes, or hold
/// `/` or NUL (the rules of a Linux name).
pub fn check_long_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(NameError::NotAName(s.to_string()));
    }
    if s.len() > LONG_NAME_MAX {
        return Err(NameError::LongTooLong(s.len()));
    }
    if s.contains(['/', '\0']) {
        return Err(NameError::LongChar);
    }
    Ok(())
}

fn forbidden(c: char) -> bool {
    c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
}

/// Why `name` cannot be a short entry name, if it cannot.
pub fn short_name_problem(name: &[u8]) -> Option<NameError> {
    let Ok(s) = std::str::from_utf8(name) else {
        return Some(NameError::ShortNotUtf8);
    };
    if s.is_empty() {
        return Some(NameError::ShortEmpty);
    }
    if s == "." || s == ".." {
        return Some(NameError::NotAName(s.to_string()));
    }
    if s.len() > NAME_LEN {
        return Some(NameError::ShortTooLong(s.len()));
    }
    if let Some(c) = s.chars().find(|&c| forbidden(c)) {
        return Some(NameError::ShortChar(c));
    }
    None
}

/// The key under which two names clash (QVFS names are case-insensitive
/// for uniqueness).
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Assigns short names to the exact names of one folder, in order: a name
/// that is a valid, unclashing short name keeps itself; any other gets a
/// readable abbreviation `stem~N.ext` (forbidden characters as `_`, at most
/// 39 bytes), unique ignoring case. `taken` holds folded names already used
/// (for example the metadata file at the root).
pub fn assign_short_names(names: &[&[u8]], taken: &mut HashSet<String>) -> Vec<String> {
    let mut out: Vec<Option<String>> = vec![None; names.len()];
    for (i, n) in names.iter().enumerate() {
        if short_name_problem(n).is_none() {
            let s = std::str::from_utf8(n).unwrap();
            if taken.insert(fold(s)) {
                out[i] = Some(s.to_string());
            }
        }
    }
    for (i, n) in names.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let lossy = String::from_utf8_lossy(n);
        let clean: String = lossy
            .chars()
            .map(|c| if forbidden(c) { '_' } else { c })
            .collect();
        let clean = if clean == "." || clean == ".." || clean.is_empty() {
            "_".to_string()
        } else {
            clean
        };
        let (stem, ext) = match clean.rfind('.') {
            Some(p) if p > 0 && clean.len() - p <= 11 => (&clean[..p], &clean[p..]),
            _ => (clean.as_str(), ""),
        };
        let mut k = 1u64;
        let name = loop {
            let suffix = format!("~{k}{ext}");
            let s = format!("{}{suffix}", cut(stem, NAME_LEN - suffix.len()));
            if taken.insert(fold(&s)) {
                break s;
            }
            k += 1;
        };
        out[i] = Some(name);
    }
    out.into_iter().map(|s| s.unwrap()).collect()
}

// ----- packed date/time -----

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Packs a time (ns since the Unix epoch, UTC) into the FAT date/time u32;
/// 0 ("unknown") outside 1980-01-01 to 2107-12-31. Seconds round down to
/// an even number.
pub fn pack_time(ns: i64) -> u32 {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(1980..=2107).contains(&y) {
        return 0;
    }
    let date = ((y - 1980) as u32) << 9 | m << 5 | d;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let time = (h as u32) << 11 | (mi as u32) << 5 | (s as u32 / 2);
    date << 16 | time
}

/// The time a packed value stands for (ns since the Unix epoch, UTC), or
/// `None` for 0 and for values that are no real date.
pub fn unpack_time(v: u32) -> Option<i64> {
    if v == 0 {
        return None;
    }
    let (date, time) = (v >> 16, v & 0xFFFF);
    let y = 1980 + (date >> 9) as i64;
    let m = (date >> 5) & 15;
    let d = date & 31;
    let (h, mi, s2) = (time >> 11, (time >> 5) & 63, time & 31);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || h > 23 || mi > 59 || s2 > 29 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + (h * 3600 + mi * 60 + s2 * 2) as i64;
    Some(secs * 1_000_000_000)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a time in ns, for listings.
pub fn format_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2009-06-08 12:34:56 UTC.
    pub const EXAMPLE_NS: i64 = 1_244_464_496 * 1_000_000_000;

    #[test]
    fn packed_time_of_the_spec_example() {
        assert_eq!(pack_time(EXAMPLE_NS), 0x3AC8_645C);
        assert_eq!(
            pack_time(EXAMPLE_NS).to_le_bytes(),
            [0x5C, 0x64, 0xC8, 0x3A]
        );
        assert_eq!(unpack_time(0x3AC8_645C), Some(EXAMPLE_NS));
        assert_eq!(format_time(EXAMPLE_NS), "2009-06-08 12:34:56");
        // Odd seconds round down; out of range is "unknown".
        assert_eq!(
            unpack_time(pack_time(EXAMPLE_NS + 1_000_000_999)),
            Some(EXAMPLE_NS)
        );
        assert_eq!(pack_time(0), 0);
        assert_eq!(unpack_time(0), None);
        // February 30th is no date.
        assert_eq!(unpack_time((29 << 9 | 2 << 5 | 30) << 16), None);
    }

    #[test]
    fn packed_time_round_trips_every_day() {
        let start = days_from_civil(1980, 1, 1);
        let end = days_from_civil(2107, 12, 31);
        for day in (start..=end).step_by(7) {
            let ns = (day * 86_400 + 86_399) * 1_000_000_000;
            assert_eq!(
                unpack_time(pack_time(ns)),
                Some(ns - 1_000_000_000),
                "day {day}"
            );
        }
    }

    #[test]
    fn entries_and_fragments_round_trip() {
        let e = RawEntry {
            property: prop::FILE,
            name: name_field("hello.txt"),
            created: 0x3AC8_645C,
            modified: 0x3AC8_645C,
            start: 2,
            size: 13,
        };
        let b = e.encode();
        assert_eq!(b[0], 0x04);
        assert_eq!(&b[1..10], b"hello.txt");
        assert_eq!(&b[0x30..0x38], &[2, 0, 0, 0, 13, 0, 0, 0]);
        assert_eq!(RawEntry::decode(&b), e);
        assert_eq!(e.name_bytes(), b"hello.txt");

        let long = "ü".repeat(100); // 200 bytes, a char split across fragments
        let short = name_field("üüü~1");
        let frags: Vec<Fragment> = long_name_fragments(&long, &short)
            .iter()
            .map(|b| {
                assert_eq!(b[0], 0x81);
                Fragment::decode(b)
            })
            .collect();
        assert_eq!(frags.len(), 4);
        assert_eq!(join_fragments(&frags, &short).unwrap(), long);
        assert!(join_fragments(&frags, &name_field("other")).is_err());
        assert!(join_fragments(&frags[1..], &short).is_err());
    }

    #[test]
    fn short_names_are_unique_readable_and_valid() {
        let long = "a".repeat(200) + ".tar.gz";
        let names: Vec<&[u8]> = vec![
            b"Readme",
            b"README",
            b"a:b?.txt",
            long.as_bytes(),
            long.as_bytes(),
            b"x\xffy",
            &[b'n'; 39],
        ];
        let mut taken = HashSet::new();
        let s = assign_short_names(&names, &mut taken);
        assert_eq!(s[0], "Readme");
        assert_eq!(s[1], "README~1");
        assert_eq!(s[2], "a_b_~1.txt");
        assert_eq!(s[3], format!("{}~1.gz", "a".repeat(34)));
        assert_eq!(s[4], format!("{}~2.gz", "a".repeat(34)));
        assert_eq!(s[5], "x\u{fffd}y~1");
        assert_eq!(s[6], "n".repeat(39));
        for n in &s {
            assert!(short_name_problem(n.as_bytes()).is_none(), "{n}");
        }
        assert_eq!(taken.len(), names.len());
    }
}
