//! What every mode shares: the operation log (a ring of the last ops, and
//! optionally the whole log in a file), per-kind counts, errno names and a
//! few system-call wrappers.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// The number of log lines printed with a failure.
pub const TAIL: usize = 200;

/// A failure: the message printed with the seed, op number and log.
pub type R<T> = Result<T, String>;

/// The last ops, also reachable from the SIGBUS handler (an mmap access to
/// a file whose pages the mount fails to read kills us with SIGBUS).
pub static LAST: Mutex<Option<VecDeque<String>>> = Mutex::new(None);
pub static CONTEXT: Mutex<String> = Mutex::new(String::new());

pub struct OpLog {
    file: Option<std::io::BufWriter<std::fs::File>>,
    pub n: u64,
}

impl OpLog {
    /// `header` is the first line of the log file (a JSON object that
    /// `--replay` reads back).
    pub fn new(path: Option<&Path>, header: &str) -> OpLog {
        let file = path.map(|p| {
            let f = std::fs::File::create(p)
                .unwrap_or_else(|e| panic!("creating log {}: {e}", p.display()));
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            writeln!(w, "#qfs-exercise {header}").unwrap();
            w
        });
        *LAST.lock().unwrap() = Some(VecDeque::with_capacity(TAIL + 1));
        OpLog { file, n: 0 }
    }

    /// Starts op number `self.n + 1`, described by `s`.
    pub fn op(&mut self, s: String) {
        self.n += 1;
        let line = format!("{:>8} {s}", self.n);
        self.note(line);
    }

    /// A line that is not an op (a result, a remark).
    pub fn note(&mut self, line: String) {
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        let mut g = LAST.lock().unwrap();
        let q = g.as_mut().unwrap();
        if q.len() == TAIL {
            q.pop_front();
        }
        q.push_back(line);
    }

    pub fn tail(&self) -> String {
        tail_text()
    }

    pub fn finish(&mut self, trailer: &str) {
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "#{trailer}");
            let _ = f.flush();
        }
    }
}

pub fn tail_text() -> String {
    let g = LAST.lock().unwrap();
    let mut s = String::new();
    if let Some(q) = g.as_ref() {
        for l in q {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

extern "C" fn on_sigbus(_: libc::c_int) {
    // Best effort: we are about to die anyway.
    let mut msg = String::from("\nFATAL: SIGBUS (an mmap access the mount could not serve)\n");
    if let Ok(c) = CONTEXT.try_lock() {
        msg.push_str(&c);
        msg.push('\n');
    }
    if let Ok(g) = LAST.try_lock() {
        if let Some(q) = g.as_ref() {
            msg.push_str("last ops:\n");
            for l in q {
                msg.push_str(l);
                msg.push('\n');
            }
        }
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(3);
    }
}

pub fn install_sigbus() {
    // SAFETY: installing a plain handler.
    unsafe {
        libc::signal(libc::SIGBUS, on_sigbus as *const () as libc::sighandler_t);
    }
}

/// Op counts per kind, and ops the filesystem refused as unsupported.
#[derive(Default)]
pub struct Counts {
    pub done: BTreeMap<&'static str, u64>,
    pub unsupported: BTreeMap<&'static str, (u64, i32)>,
}

impl Counts {
    pub fn done(&mut self, k: &'static str) {
        *self.done.entry(k).or_default() += 1;
    }
    pub fn unsupported(&mut self, k: &'static str, e: i32) {
        let x = self.unsupported.entry(k).or_insert((0, e));
        x.0 += 1;
    }
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (k, n) in &self.done {
            s.push_str(&format!(" {k}={n}"));
        }
        if !self.unsupported.is_empty() {
            s.push_str(" | unsupported:");
            for (k, (n, e)) in &self.unsupported {
                s.push_str(&format!(" {k}={n}({})", ename(*e)));
            }
        }
        s
    }
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn ename(e: i32) -> String {
    let n = match e {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::E2BIG => "E2BIG",
        libc::ETXTBSY => "ETXTBSY",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => return format!("errno{e}"),
    };
    n.to_string()
}

pub fn cstr(p: &[u8]) -> CString {
    CString::new(p).expect("NUL in path")
}

pub fn cpath(p: &Path) -> CString {
    cstr(p.as_os_str().as_encoded_bytes())
}

/// Quotes bytes for a log line: printable ASCII as is, the rest escaped.
pub fn q(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for &c in b {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    if s.len() > 90 {
        let n = b.len();
        let mut t: String = s.chars().take(40).collect();
        t.push_str(&format!("...({n}B)\""));
        return t;
    }
    s
}

/// A 4096-aligned buffer for O_DIRECT.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: allocated with len bytes (at least).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    pub fn as_ref(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(4096), 4096).unwrap();
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// Picks one of `table` by weight.
pub fn pick<T: Copy>(rng: &mut impl rand::Rng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|t| t.1).sum();
    let mut x = rng.random_range(0..total);
    for &(k, w) in table {
        if x < w {
            return k;
        }
        x -= w;
    }
    unreachable!()
}

/// First differing offset of two byte strings, for messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.len().min(b.len());
    (0..n)
        .find(|&i| a[i] != b[i])
        .or(if a.len() != b.len() { Some(n) } else { None })
}

pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
