//! Linear-time, interruptible versions of SQLite's built-in functions whose
//! single call can run for minutes: `instr`, `replace`, two-argument
//! `trim`/`ltrim`/`rtrim`, two-argument `unhex`, `like` and `glob`.
//!
//! A single function call is one step of SQLite's VM: neither the progress
//! handler nor `sqlite3_interrupt` stops it. SQLite's `instr` and `replace`
//! compare at every position (O(n·m)); `trim(X, Y)` and `unhex(X, Y)` scan
//! all of Y for each character of X; LIKE/GLOB backtrack. These versions
//! give the same results (each is a port of SQLite's own code, checked
//! against the built-ins by the tests below) but search with
//! `memchr::memmem` or hash sets, and every long loop checks whether the
//! statement was interrupted (the sandbox's watchdog), failing the call with
//! `SQLITE_INTERRUPT` if so. They are registered on the sandbox connection
//! only.

// Numbers cross between SQLite (i64), the kernel (u32, u64) and Rust
// (usize) here: each conversion is checked, none wraps or truncates.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, c_void, CString};

use rusqlite::ffi;

/// The statement was interrupted while the function ran.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped;

/// Checks a stop condition about every 4096 units of work.
pub struct Ticker<'a> {
    stop: &'a dyn Fn() -> bool,
    left: i64,
}

impl<'a> Ticker<'a> {
    pub fn new(stop: &'a dyn Fn() -> bool) -> Ticker<'a> {
        Ticker { stop, left: 4096 }
    }

    #[inline]
    fn tick(&mut self) -> Result<(), Stopped> {
        self.ticks(0)
    }

    /// Work on `n` bytes at once (a memchr scan counts a unit per 16 bytes).
    #[inline]
    fn ticks(&mut self, n: usize) -> Result<(), Stopped> {
        // (n >> 4 of a usize always fits an i64.)
        self.left -= i64::try_from(n >> 4).unwrap_or(i64::MAX - 1) + 1;
        if self.left <= 0 {
            self.left = 4096;
            if (self.stop)() {
                return Err(Stopped);
            }
        }
        Ok(())
    }
}

#[inline]
fn is_cont(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// `instr(H, N)` on the bytes SQLite hands over: `text` counts characters
/// (as SQLite does: bytes that are not UTF-8 continuation bytes), otherwise
/// bytes. 0 when not found, 1 for an empty needle.
pub fn instr(h: &[u8], n: &[u8], text: bool, t: &mut Ticker) -> Result<i64, Stopped> {
    if n.is_empty() {
        return Ok(1);
    }
    if n.len() > h.len() {
        return Ok(0);
    }
    if !text {
        t.ticks(h.len())?;
        return Ok(memchr::memmem::find(h, n).map_or(0, |p| position(p) + 1));
    }
    // SQLite tries position 0 and then only character starts; a needle
    // that starts with a continuation byte can only match at 0.
    if is_cont(n[0]) {
        return Ok(if h.starts_with(n) { 1 } else { 0 });
    }
    let Some(p) = memchr::memmem::find(h, n) else {
        t.ticks(h.len())?;
        return Ok(0);
    };
    t.ticks(p)?;
    let chars = if p == 0 {
        0
    } else {
        h[1..=p].iter().filter(|&&b| !is_cont(b)).count()
    };
    Ok(1 + position(chars))
}

/// An index into a slice (at most `isize::MAX`) as SQLite's i64.
fn position(i: usize) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

/// Why a function failed.
#[derive(Debug, PartialEq, Eq)]
pub enum FnError {
    Stopped,
    TooBig,
}

impl From<Stopped> for FnError {
    fn from(_: Stopped) -> FnError {
        FnError::Stopped
    }
}

/// `replace(S, P, R)` on bytes: every non-overlapping occurrence of `p`,
/// left to right. A pattern that is empty or starts with NUL returns `s`
/// (as SQLite does). Fails with `TooBig` past `limit` bytes.
pub fn replace(
    s: &[u8],
    p: &[u8],
    r: &[u8],
    limit: usize,
    t: &mut Ticker,
) -> Result<Vec<u8>, FnError> {
    if p.is_empty() || p[0] == 0 {
        return Ok(s.to_vec());
    }
    let mut out = Vec::with_capacity(s.len().min(limit));
    let mut last = 0;
    for m in memchr::memmem::find_iter(s, p) {
        t.ticks(m - last)?;
        out.extend_from_slice(&s[last..m]);
        out.extend_from_slice(r);
        if out.len() > limit {
            return Err(FnError::TooBig);
        }
        last = m + p.len();
    }
    out.extend_from_slice(&s[last..]);
    if out.len() > limit {
        return Err(FnError::TooBig);
    }
    Ok(out)
}

/// The byte at `i` of a NUL-terminated string held as a slice (0 past the end).
#[inline]
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// SQLite's `SQLITE_SKIP_UTF8`.
#[inline]
fn skip_utf8(s: &[u8], i: &mut usize) {
    let b = at(s, *i);
    *i += 1;
    if b >= 0xc0 {
        while is_cont(at(s, *i)) {
            *i += 1;
        }
    }
}

const TRANS1: [u8; 64] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0x01, 0x02, 0x03, 0x00, 0x01, 0x00, 0x00,
];

/// SQLite's `sqlite3Utf8Read`.
#[inline]
fn utf8_read(s: &[u8], i: &mut usize) -> u32 {
    let mut c = at(s, *i) as u32;
    *i += 1;
    if c >= 0xc0 {
        c = TRANS1[(c - 0xc0) as usize] as u32;
        while is_cont(at(s, *i)) {
            c = c.wrapping_shl(6).wrapping_add((0x3f & at(s, *i)) as u32);
            *i += 1;
        }
        if c < 0x80 || (c & 0xFFFF_F800) == 0xD800 || (c & 0xFFFF_FFFE) == 0xFFFE {
            c = 0xFFFD;
        }
    }
    c
}

/// The characters of a trim set, each mapped to its first position.
/// SQLite splits the set with `SQLITE_SKIP_UTF8` up to the first NUL.
pub fn trim<'a>(s: &'a [u8], set: &[u8], flags: u8, t: &mut Ticker) -> Result<&'a [u8], Stopped> {
    let mut first: HashMap<&[u8], usize> = HashMap::new();
    let mut i = 0;
    let mut k = 0;
    while at(set, i) != 0 {
        let start = i;
        skip_utf8(set, &mut i);
        first.entry(&set[start..i.min(set.len())]).or_insert(k);
        k += 1;
        t.tick()?;
    }
    if first.is_empty() {
        return Ok(s);
    }
    let mut lens: Vec<usize> = first.keys().map(|c| c.len()).collect();
    lens.sort_unstable();
    lens.dedup();
    // The character of the set that SQLite would try first among those
    // that match: the lowest position.
    let best = |hit: &dyn Fn(usize) -> Option<&'a [u8]>, t: &mut Ticker| {
        let mut found: Option<(usize, usize)> = None;
        for &l in &lens {
            t.tick()?;
            let Some(piece) = hit(l) else { break };
            if let Some(&pos) = first.get(piece) {
                if found.is_none_or(|(p, _)| pos < p) {
                    found = Some((pos, l));
                }
            }
        }
        Ok::<_, Stopped>(found.map(|(_, l)| l))
    };
    let mut a = 0;
    let mut b = s.len();
    if flags & 1 != 0 {
        while a < b {
            let hit = |l: usize| (a + l <= b).then(|| &s[a..a + l]);
            match best(&hit, t)? {
                Some(l) => a += l,
                None => break,
            }
        }
    }
    if flags & 2 != 0 {
        while a < b {
            let hit = |l: usize| (l <= b - a).then(|| &s[b - l..b]);
            match best(&hit, t)? {
                Some(l) => b -= l,
                None => break,
            }
        }
    }
    Ok(&s[a..b])
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `unhex(H, P)`: hex digit pairs, with characters of `pass` allowed
/// between pairs; None (NULL) on anything else. Stops at a NUL like SQLite.
pub fn unhex(h: &[u8], pass: &[u8], t: &mut Ticker) -> Result<Option<Vec<u8>>, Stopped> {
    let mut allowed = HashSet::new();
    let mut i = 0;
    while i < pass.len() {
        allowed.insert(utf8_read(pass, &mut i));
        t.tick()?;
    }
    let mut out = Vec::with_capacity(h.len() / 2);
    let mut i = 0;
    loop {
        let mut c = at(h, i);
        if c == 0 {
            break;
        }
        while hex_val(c).is_none() {
            t.tick()?;
            let ch = utf8_read(h, &mut i);
            if !allowed.contains(&ch) {
                return Ok(None);
            }
            c = at(h, i);
            if c == 0 {
                return Ok(Some(out));
            }
        }
        i += 1;
        let d = at(h, i);
        i += 1;
        let Some(lo) = hex_val(d) else {
            return Ok(None);
        };
        out.push((hex_val(c).unwrap_or(0) << 4) | lo);
        t.tick()?;
    }
    Ok(Some(out))
}

/// What a LIKE or GLOB pattern means (SQLite's `compareInfo`).
#[derive(Clone, Copy)]
pub struct Pattern {
    pub match_all: u32,
    pub match_one: u32,
    pub match_set: u32,
    pub no_case: bool,
}

pub const GLOB: Pattern = Pattern {
    match_all: b'*' as u32,
    match_one: b'?' as u32,
    match_set: b'[' as u32,
    no_case: false,
};
pub const LIKE: Pattern = Pattern {
    match_all: b'%' as u32,
    match_one: b'_' as u32,
    match_set: 0,
    no_case: true,
};

const MATCH: u8 = 0;
const NOMATCH: u8 = 1;
const NOWILDCARDMATCH: u8 = 2;

#[inline]
fn lower(c: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&c) {
        c + 32
    } else {
        c
    }
}

/// SQLite's `patternCompare`, ported line by line, with a stop check.
pub fn pattern_compare(
    p: &[u8],
    mut pi: usize,
    s: &[u8],
    mut si: usize,
    info: &Pattern,
    match_other: u32,
    t: &mut Ticker,
) -> Result<u8, Stopped> {
    let match_one = info.match_one;
    let match_all = info.match_all;
    let no_case = info.no_case;
    let mut escaped: Option<usize> = None;
    loop {
        let mut c = utf8_read(p, &mut pi);
        if c == 0 {
            break;
        }
        t.tick()?;
        if c == match_all {
            loop {
                c = utf8_read(p, &mut pi);
                if c == match_all || (c == match_one && match_one != 0) {
                    if c == match_one && utf8_read(s, &mut si) == 0 {
                        return Ok(NOWILDCARDMATCH);
                    }
                } else {
                    break;
                }
            }
            if c == 0 {
                return Ok(MATCH);
            } else if c == match_other {
                if info.match_set == 0 {
                    c = utf8_read(p, &mut pi);
                    if c == 0 {
                        return Ok(NOWILDCARDMATCH);
                    }
                } else {
                    while at(s, si) != 0 {
                        let m = pattern_compare(p, pi - 1, s, si, info, match_other, t)?;
                        if m != NOMATCH {
                            return Ok(m);
                        }
                        skip_utf8(s, &mut si);
                    }
                    return Ok(NOWILDCARDMATCH);
                }
            }
            if let Some(c) = u8::try_from(c).ok().filter(u8::is_ascii) {
                let (a, b) = if no_case {
                    (c.to_ascii_uppercase(), c.to_ascii_lowercase())
                } else {
                    (c, c)
                };
                loop {
                    let rest = s.get(si..).unwrap_or(&[]);
                    let off = memchr::memchr3(a, b, 0, rest).unwrap_or(rest.len());
                    t.ticks(off)?;
                    si += off;
                    if at(s, si) == 0 {
                        break;
                    }
                    si += 1;
                    let m = pattern_compare(p, pi, s, si, info, match_other, t)?;
                    if m != NOMATCH {
                        return Ok(m);
                    }
                }
            } else {
                loop {
                    let c2 = utf8_read(s, &mut si);
                    if c2 == 0 {
                        break;
                    }
                    t.tick()?;
                    if c2 != c {
                        continue;
                    }
                    let m = pattern_compare(p, pi, s, si, info, match_other, t)?;
                    if m != NOMATCH {
                        return Ok(m);
                    }
                }
            }
            return Ok(NOWILDCARDMATCH);
        }
        if c == match_other {
            if info.match_set == 0 {
                c = utf8_read(p, &mut pi);
                if c == 0 {
                    return Ok(NOMATCH);
                }
                escaped = Some(pi);
            } else {
                let mut prior_c = 0u32;
                let mut seen = false;
                let mut invert = false;
                let c = utf8_read(s, &mut si);
                if c == 0 {
                    return Ok(NOMATCH);
                }
                let mut c2 = utf8_read(p, &mut pi);
                if c2 == b'^' as u32 {
                    invert = true;
                    c2 = utf8_read(p, &mut pi);
                }
                if c2 == b']' as u32 {
                    if c == b']' as u32 {
                        seen = true;
                    }
                    c2 = utf8_read(p, &mut pi);
                }
                while c2 != 0 && c2 != b']' as u32 {
                    t.tick()?;
                    if c2 == b'-' as u32 && at(p, pi) != b']' && at(p, pi) != 0 && prior_c > 0 {
                        c2 = utf8_read(p, &mut pi);
                        if c >= prior_c && c <= c2 {
                            seen = true;
                        }
                        prior_c = 0;
                    } else {
                        if c == c2 {
                            seen = true;
                        }
                        prior_c = c2;
                    }
                    c2 = utf8_read(p, &mut pi);
                }
                if c2 == 0 || !(seen ^ invert) {
                    return Ok(NOMATCH);
                }
                continue;
            }
        }
        let c2 = utf8_read(s, &mut si);
        if c == c2 {
            continue;
        }
        if no_case && lower(c) == lower(c2) && c < 0x80 && c2 < 0x80 {
            continue;
        }
        if c == match_one && Some(pi) != escaped && c2 != 0 {
            continue;
        }
        return Ok(NOMATCH);
    }
    Ok(if at(s, si) == 0 { MATCH } else { NOMATCH })
}

/// `like(P, S [, E])` / `glob(P, S)`: whether `s` matches `pat`. `esc` is
/// the decoded escape character (LIKE with ESCAPE).
pub fn like(
    pat: &[u8],
    s: &[u8],
    info: Pattern,
    esc: Option<u32>,
    t: &mut Ticker,
) -> Result<bool, Stopped> {
    let mut info = info;
    let escape = match esc {
        Some(e) => {
            if e == info.match_all {
                info.match_all = 0;
            }
            if e == info.match_one {
                info.match_one = 0;
            }
            e
        }
        None => info.match_set,
    };
    Ok(pattern_compare(pat, 0, s, 0, &info, escape, t)? == MATCH)
}

/// Characters of a NUL-terminated string (SQLite's `sqlite3Utf8CharLen`).
fn char_len(s: &[u8]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while at(s, i) != 0 {
        skip_utf8(s, &mut i);
        n += 1;
    }
    n
}

// ----- registration on a connection -----

/// # Safety
/// `v` is a live argument of the running call; the slice is valid until the
/// value changes (the end of the call, or another conversion of it).
unsafe fn text<'a>(v: *mut ffi::sqlite3_value) -> Option<&'a [u8]> {
    let p = ffi::sqlite3_value_text(v);
    if p.is_null() {
        return None;
    }
    let n = usize::try_from(ffi::sqlite3_value_bytes(v)).unwrap_or(0);
    Some(std::slice::from_raw_parts(p, n))
}

/// # Safety
/// As [`text`].
unsafe fn blob<'a>(v: *mut ffi::sqlite3_value) -> &'a [u8] {
    let p = ffi::sqlite3_value_blob(v) as *const u8;
    let n = usize::try_from(ffi::sqlite3_value_bytes(v)).unwrap_or(0);
    if p.is_null() || n == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(p, n)
    }
}

/// # Safety
/// `ctx` is the context of a running call.
unsafe fn with_ticker<T>(ctx: *mut ffi::sqlite3_context, f: impl FnOnce(&mut Ticker) -> T) -> T {
    let db = ffi::sqlite3_context_db_handle(ctx) as usize;
    // SAFETY: the handle outlives the call.
    let stop = move || unsafe { ffi::sqlite3_is_interrupted(db as *mut ffi::sqlite3) != 0 };
    let mut t = Ticker::new(&stop);
    f(&mut t)
}

/// # Safety
/// `ctx` is the context of a running call.
unsafe fn result_text(ctx: *mut ffi::sqlite3_context, s: &[u8]) {
    ffi::sqlite3_result_text64(
        ctx,
        s.as_ptr() as *const _,
        s.len() as u64,
        ffi::SQLITE_TRANSIENT(),
        u8::try_from(ffi::SQLITE_UTF8).expect("SQLITE_UTF8 is 1"),
    );
}

/// # Safety
/// `ctx` is the context of a running call.
unsafe fn result_error(ctx: *mut ffi::sqlite3_context, e: FnError) {
    match e {
        FnError::Stopped => ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_INTERRUPT),
        FnError::TooBig => ffi::sqlite3_result_error_toobig(ctx),
    }
}

type Args = *mut *mut ffi::sqlite3_value;

/// Runs a function body, turning a panic into an SQL error (a panic must
/// not unwind into SQLite).
unsafe fn guarded(ctx: *mut ffi::sqlite3_context, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        let m = c"internal error in a function";
        ffi::sqlite3_result_error(ctx, m.as_ptr(), -1);
    }
}

unsafe extern "C" fn instr_fn(ctx: *mut ffi::sqlite3_context, _n: c_int, argv: Args) {
    guarded(ctx, || {
        let a = *argv;
        let b = *argv.add(1);
        let ta = ffi::sqlite3_value_type(a);
        let tb = ffi::sqlite3_value_type(b);
        if ta == ffi::SQLITE_NULL || tb == ffi::SQLITE_NULL {
            return;
        }
        if ffi::sqlite3_value_bytes(b) <= 0 {
            ffi::sqlite3_result_int64(ctx, 1);
            return;
        }
        let r = if ta == ffi::SQLITE_BLOB && tb == ffi::SQLITE_BLOB {
            with_ticker(ctx, |t| instr(blob(a), blob(b), false, t))
        } else if ta != ffi::SQLITE_BLOB && tb != ffi::SQLITE_BLOB {
            let (Some(h), Some(n)) = (text(a), text(b)) else {
                return;
            };
            with_ticker(ctx, |t| instr(h, n, true, t))
        } else {
            // As SQLite: copies, so that the arguments keep their type.
            let c1 = ffi::sqlite3_value_dup(a);
            let c2 = ffi::sqlite3_value_dup(b);
            let r = match (text(c1), text(c2)) {
                (Some(h), Some(n)) => Some(with_ticker(ctx, |t| instr(h, n, true, t))),
                _ => None,
            };
            ffi::sqlite3_value_free(c1);
            ffi::sqlite3_value_free(c2);
            match r {
                Some(r) => r,
                None => return,
            }
        };
        match r {
            Ok(n) => ffi::sqlite3_result_int64(ctx, n),
            Err(Stopped) => result_error(ctx, FnError::Stopped),
        }
    })
}

unsafe extern "C" fn replace_fn(ctx: *mut ffi::sqlite3_context, _n: c_int, argv: Args) {
    guarded(ctx, || {
        let Some(s) = text(*argv) else { return };
        let Some(p) = text(*argv.add(1)) else { return };
        if p.is_empty() || p[0] == 0 {
            result_text(ctx, s);
            return;
        }
        let Some(r) = text(*argv.add(2)) else { return };
        let db = ffi::sqlite3_context_db_handle(ctx);
        let limit =
            usize::try_from(ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_LENGTH, -1)).unwrap_or(0);
        match with_ticker(ctx, |t| replace(s, p, r, limit, t)) {
            Ok(out) => result_text(ctx, &out),
            Err(e) => result_error(ctx, e),
        }
    })
}

unsafe extern "C" fn trim_fn(ctx: *mut ffi::sqlite3_context, _n: c_int, argv: Args) {
    guarded(ctx, || {
        if ffi::sqlite3_value_type(*argv) == ffi::SQLITE_NULL {
            return;
        }
        let Some(s) = text(*argv) else { return };
        let Some(set) = text(*argv.add(1)) else {
            return;
        };
        // Registered with 1, 2 or 3.
        let flags = u8::try_from(ffi::sqlite3_user_data(ctx) as usize).expect("trim flags");
        match with_ticker(ctx, |t| trim(s, set, flags, t)) {
            Ok(out) => result_text(ctx, out),
            Err(Stopped) => result_error(ctx, FnError::Stopped),
        }
    })
}

unsafe extern "C" fn unhex_fn(ctx: *mut ffi::sqlite3_context, _n: c_int, argv: Args) {
    guarded(ctx, || {
        let h = text(*argv);
        let pass = text(*argv.add(1));
        let (Some(h), Some(pass)) = (h, pass) else {
            return;
        };
        match with_ticker(ctx, |t| unhex(h, pass, t)) {
            Ok(Some(b)) => {
                ffi::sqlite3_result_blob64(
                    ctx,
                    b.as_ptr() as *const c_void,
                    b.len() as u64,
                    ffi::SQLITE_TRANSIENT(),
                );
            }
            Ok(None) => {}
            Err(Stopped) => result_error(ctx, FnError::Stopped),
        }
    })
}

unsafe extern "C" fn like_fn(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: Args) {
    guarded(ctx, || {
        let glob = ffi::sqlite3_user_data(ctx) as usize == 1;
        let info = if glob { GLOB } else { LIKE };
        let db = ffi::sqlite3_context_db_handle(ctx);
        let n_pat = ffi::sqlite3_value_bytes(*argv);
        if n_pat > ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, -1) {
            let m = c"LIKE or GLOB pattern too complex";
            ffi::sqlite3_result_error(ctx, m.as_ptr(), -1);
            return;
        }
        let esc = if argc == 3 {
            let Some(e) = text(*argv.add(2)) else { return };
            if char_len(e) != 1 {
                let m = c"ESCAPE expression must be a single character";
                ffi::sqlite3_result_error(ctx, m.as_ptr(), -1);
                return;
            }
            let mut i = 0;
            Some(utf8_read(e, &mut i))
        } else {
            None
        };
        let pat = text(*argv);
        let s = text(*argv.add(1));
        let (Some(pat), Some(s)) = (pat, s) else {
            return;
        };
        match with_ticker(ctx, |t| like(pat, s, info, esc, t)) {
            Ok(m) => ffi::sqlite3_result_int64(ctx, m as i64),
            Err(Stopped) => result_error(ctx, FnError::Stopped),
        }
    })
}

type XFunc = unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, Args);

/// Longest argument of `json_patch`/`jsonb_patch`: SQLite merges objects by
/// a linear search of the target for each key of the patch (O(n·m), one
/// call), so it runs on bounded inputs only.
pub const JSON_PATCH_CAP: usize = 64 << 10;

/// `json_patch` and `jsonb_patch` with bounded arguments, computed by the
/// built-in on a private in-memory connection (the same results).
fn register_json_patch(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::{Value, ValueRef};
    for name in ["json_patch", "jsonb_patch"] {
        let side = std::sync::Mutex::new(rusqlite::Connection::open_in_memory()?);
        let sql = format!("SELECT {name}(?1, ?2)");
        conn.create_scalar_function(
            name,
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            move |ctx| {
                let mut args = Vec::with_capacity(2);
                for i in 0..2 {
                    let v = ctx.get_raw(i);
                    let n = match v {
                        ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
                        _ => 0,
                    };
                    if n > JSON_PATCH_CAP {
                        return Err(rusqlite::Error::UserFunctionError(
                            format!(
                                "{name}: an argument is longer than {} KiB, the most a query may patch",
                                JSON_PATCH_CAP >> 10
                            )
                            .into(),
                        ));
                    }
                    args.push(rusqlite::types::ToSqlOutput::Borrowed(v));
                }
                let side = side.lock().unwrap_or_else(|e| e.into_inner());
                let mut st = side.prepare_cached(&sql)?;
                let out = st.query_row(rusqlite::params_from_iter(args), |r| {
                    r.get::<_, Value>(0)
                });
                out.map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(_, Some(m)) => {
                        rusqlite::Error::UserFunctionError(m.into())
                    }
                    e => e,
                })
            },
        )?;
    }
    Ok(())
}

/// Registers the safe versions on `conn`, replacing the built-ins there.
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    register_json_patch(conn)?;
    let list: &[(&str, c_int, usize, XFunc)] = &[
        ("instr", 2, 0, instr_fn),
        ("replace", 3, 0, replace_fn),
        ("ltrim", 2, 1, trim_fn),
        ("rtrim", 2, 2, trim_fn),
        ("trim", 2, 3, trim_fn),
        ("unhex", 2, 0, unhex_fn),
        ("like", 2, 0, like_fn),
        ("like", 3, 0, like_fn),
        ("glob", 2, 1, like_fn),
    ];
    for &(name, n, data, f) in list {
        let cname = CString::new(name).expect("no NUL in a function name");
        // SAFETY: a live connection; the function pointers are 'static and
        // the user data is a plain integer.
        let rc = unsafe {
            ffi::sqlite3_create_function_v2(
                conn.handle(),
                cname.as_ptr(),
                n,
                ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC,
                data as *mut c_void,
                Some(f),
                None,
                None,
                None,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(rc),
                Some(format!("registering {name}")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value;
    use rusqlite::Connection;

    fn never() -> bool {
        false
    }

    /// The same expression on a plain connection and on one with the safe
    /// functions, over values bound as parameters.
    fn same(plain: &Connection, safe: &Connection, sql: &str, args: &[Value]) {
        let p = plain.query_row(sql, rusqlite::params_from_iter(args), |r| {
            r.get::<_, Value>(0)
        });
        let s = safe.query_row(sql, rusqlite::params_from_iter(args), |r| {
            r.get::<_, Value>(0)
        });
        match (p, s) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{sql} {args:?}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{sql} {args:?}"),
            (a, b) => panic!("{sql} {args:?}: built-in {a:?}, safe {b:?}"),
        }
    }

    fn conns() -> (Connection, Connection) {
        let plain = Connection::open_in_memory().unwrap();
        let safe = Connection::open_in_memory().unwrap();
        register(&safe).unwrap();
        (plain, safe)
    }

    fn values() -> Vec<Value> {
        let mut v: Vec<Value> = [
            "",
            "a",
            "ab",
            "aab",
            "aaab",
            "ba",
            "abab",
            "é",
            "éa",
            "aé",
            "ééa",
            "x%y",
            "a_b",
            "A",
            "AB",
            "[a]",
            "]",
            "^",
            "a-c",
            "%",
            "_",
            "*",
            "?",
            "[",
            "[]]",
            "[^a]",
            "[a-]",
            "[]-a]",
            "a*b?c",
            "%a%",
            "_a_",
            "%é%",
            "\\",
            "a\\%b",
            "日本語",
            "本",
            "ＡＢ",
            "a\u{0}b",
            "\u{0}",
        ]
        .iter()
        .map(|s| Value::Text(s.to_string()))
        .collect();
        v.extend([
            Value::Null,
            Value::Integer(12),
            Value::Integer(-1),
            Value::Real(1.5),
            Value::Blob(vec![]),
            Value::Blob(b"ab".to_vec()),
            Value::Blob(vec![0xc3]),
            Value::Blob(vec![0xa9, 0x61]),
            Value::Blob(vec![0xc3, 0xa9, 0x61, 0xc3]),
            Value::Blob(vec![0x80, 0x80, 0x61]),
            Value::Blob(vec![0, 0x61]),
            Value::Blob(vec![0xff, 0xfe, 0x61]),
        ]);
        v
    }

    #[test]
    fn same_results_as_the_built_ins() {
        let (plain, safe) = conns();
        let v = values();
        for a in &v {
            for b in &v {
                for sql in [
                    "SELECT instr(?1, ?2)",
                    "SELECT hex(replace(?1, ?2, 'XY'))",
                    "SELECT hex(replace(?1, ?2, ''))",
                    "SELECT hex(replace(?1, ?2, ?1))",
                    "SELECT hex(trim(?1, ?2))",
                    "SELECT hex(ltrim(?1, ?2))",
                    "SELECT hex(rtrim(?1, ?2))",
                    "SELECT hex(unhex(?1, ?2))",
                    "SELECT ?2 LIKE ?1",
                    "SELECT ?2 GLOB ?1",
                    "SELECT like(?1, ?2, '\\')",
                    "SELECT like(?1, ?2, '%')",
                    "SELECT like(?1, ?2, '_')",
                    "SELECT like(?1, ?2, ?2)",
                    "SELECT json_patch(?1, ?2)",
                ] {
                    same(&plain, &safe, sql, &[a.clone(), b.clone()]);
                }
            }
        }
        for (h, p) in [
            ("12 34", " "),
            ("12-34", "- "),
            ("1 234", " "),
            ("12é34", "é"),
            ("ab\u{0}cd", ""),
            ("zz", "z"),
            ("12zz", "z"),
            ("", ""),
        ] {
            same(
                &plain,
                &safe,
                "SELECT hex(unhex(?1, ?2))",
                &[Value::Text(h.into()), Value::Text(p.into())],
            );
        }
    }

    #[test]
    fn json_patch_is_the_built_in_on_bounded_input() {
        let (plain, safe) = conns();
        for (a, b) in [
            (
                r#"{"a":1,"b":{"c":2}}"#,
                r#"{"b":{"c":null,"d":3},"e":[1]}"#,
            ),
            (r#"[1,2]"#, r#"{"x":1}"#),
            (r#"{"a":1.0e5}"#, r#"{"z":"é"}"#),
            ("not json", "{}"),
        ] {
            let args = [Value::Text(a.into()), Value::Text(b.into())];
            same(&plain, &safe, "SELECT json_patch(?1, ?2)", &args);
            same(&plain, &safe, "SELECT hex(jsonb_patch(?1, ?2))", &args);
            same(&plain, &safe, "SELECT json_patch(jsonb(?1), ?2)", &args);
        }
        let big = format!("[{}1]", "1,".repeat(JSON_PATCH_CAP));
        let e = safe
            .query_row("SELECT json_patch(?1, '{}')", [big], |r| {
                r.get::<_, Value>(0)
            })
            .unwrap_err();
        assert!(e.to_string().contains("longer than 64 KiB"), "{e}");
    }

    #[test]
    fn random_patterns_match_like_the_built_ins() {
        let (plain, safe) = conns();
        let alphabet: Vec<&str> = vec![
            "a", "b", "A", "%", "_", "*", "?", "[", "]", "^", "-", "é", "\\", "\u{80}",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            usize::try_from(x % n as u64).unwrap()
        };
        for _ in 0..4000 {
            let pl = 1 + next(6);
            let sl = next(8);
            let p: String = (0..pl).map(|_| alphabet[next(alphabet.len())]).collect();
            let s: String = (0..sl).map(|_| alphabet[next(alphabet.len())]).collect();
            let args = [Value::Text(p), Value::Text(s)];
            for sql in [
                "SELECT ?2 LIKE ?1",
                "SELECT ?2 GLOB ?1",
                "SELECT like(?1, ?2, '\\')",
                "SELECT instr(?2, ?1)",
                "SELECT replace(?2, ?1, '.')",
                "SELECT trim(?2, ?1)",
            ] {
                same(&plain, &safe, sql, &args);
            }
        }
    }

    #[test]
    fn worst_cases_are_fast_and_stoppable() {
        let stop = never;
        let mut t = Ticker::new(&stop);
        let h = vec![b'a'; 8_000_000];
        let mut n = vec![b'a'; 4_000_000];
        n.push(b'b');
        let start = std::time::Instant::now();
        assert_eq!(instr(&h, &n, true, &mut t), Ok(0));
        assert_eq!(
            replace(&h, &n, b"x", 16 << 20, &mut t).unwrap().len(),
            h.len()
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // LIKE is still O(n·m) in the worst case, but stops when told.
        let flag = std::sync::atomic::AtomicBool::new(false);
        let stop = || flag.load(std::sync::atomic::Ordering::Relaxed);
        let mut t = Ticker::new(&stop);
        let mut pat = b"%".to_vec();
        pat.extend(vec![b'a'; 1000]);
        pat.extend(b"b%");
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(like(&pat, &h, LIKE, None, &mut t), Err(Stopped));
        let set: Vec<u8> = [vec![b'b'; 4_000_000], vec![b'a']].concat();
        let stop = never;
        let mut t = Ticker::new(&stop);
        let start = std::time::Instant::now();
        assert_eq!(trim(&h, &set, 3, &mut t), Ok(&b""[..]));
        let hexes = vec![b'z'; 4_000_000];
        assert_eq!(unhex(&hexes, &set, &mut t), Ok(None));
        let pass: Vec<u8> = [vec![b'b'; 4_000_000], vec![b'z']].concat();
        assert_eq!(unhex(&hexes, &pass, &mut t), Ok(Some(Vec::new())));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // Through SQL: the built-in takes seconds on this (O(n·m)), the
        // registered version does not.
        let (_, safe) = conns();
        let start = std::time::Instant::now();
        let n: i64 = safe
            .query_row(
                "SELECT instr(replace(hex(zeroblob(400000)),'0','a'), \
                 replace(hex(zeroblob(200000)),'0','a')||'b')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
    }
}
