//! SQLite's heap, counted per sandbox.
//!
//! SQLite offers only a process-wide heap limit, which would also fail the
//! metadata connection. Instead queryfs gives SQLite an allocator
//! (`SQLITE_CONFIG_MALLOC`, before SQLite is first used) that charges every
//! block to the *slot* of the thread that allocated it. A sandbox owns a
//! slot with a limit and enters it around each call into its connection; an
//! allocation that would take the slot past its limit fails, and SQLite
//! turns that into `SQLITE_NOMEM` for that one statement (its connection
//! stays usable). Slot 0 (every other connection) has no limit. A block
//! remembers its slot, so it is uncharged correctly whichever thread frees
//! it.

// Numbers cross between SQLite (i64), the kernel (u32, u64) and Rust
// (usize) here: each conversion is checked, none wraps or truncates.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use rusqlite::ffi;

const SLOTS: usize = 32;
/// Bytes in front of every block: its size and its slot.
const HDR: usize = 16;

static USED: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
static LIMIT: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
static TAKEN: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

fn current() -> usize {
    CURRENT.try_with(|c| c.get()).unwrap_or(0)
}

/// Charges `n` bytes to `slot`; false (nothing charged) if that would pass
/// its limit and `enforce` is set.
fn charge(slot: usize, n: i64, enforce: bool) -> bool {
    let now = USED[slot].fetch_add(n, Ordering::Relaxed) + n;
    let lim = LIMIT[slot].load(Ordering::Relaxed);
    if enforce && slot != 0 && lim > 0 && n > 0 && now > lim {
        USED[slot].fetch_sub(n, Ordering::Relaxed);
        return false;
    }
    true
}

/// # Safety
/// `p` must be a block from [`x_malloc`]/[`x_realloc`].
unsafe fn header(p: *mut c_void) -> (*mut u8, i64, usize) {
    let base = (p as *mut u8).sub(HDR);
    let n = *(base as *const i64);
    let slot = *(base.add(8) as *const usize);
    (base, n, slot.min(SLOTS - 1))
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Ok(size) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let slot = current();
    if !charge(slot, i64::from(n), true) {
        return std::ptr::null_mut();
    }
    let base = libc::malloc(size + HDR) as *mut u8;
    if base.is_null() {
        charge(slot, -i64::from(n), false);
        return std::ptr::null_mut();
    }
    *(base as *mut i64) = i64::from(n);
    *(base.add(8) as *mut usize) = slot;
    base.add(HDR) as *mut c_void
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let (base, n, slot) = header(p);
    charge(slot, -n, false);
    libc::free(base as *mut c_void);
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        return x_malloc(n);
    }
    let Ok(size) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let (base, old, slot) = header(p);
    let delta = i64::from(n) - old;
    if !charge(slot, delta, slot == current()) {
        return std::ptr::null_mut();
    }
    let nb = libc::realloc(base as *mut c_void, size + HDR) as *mut u8;
    if nb.is_null() {
        charge(slot, -delta, false);
        return std::ptr::null_mut();
    }
    *(nb as *mut i64) = i64::from(n);
    nb.add(HDR) as *mut c_void
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // Every size was a c_int when it was stored.
    c_int::try_from(header(p).1).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    (n + 7) & !7
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Installs the counting allocator. It must run before SQLite is first used
/// in the process (the start of `main`); later it changes nothing and
/// returns false, and sandboxes then run without a heap limit.
pub fn install() -> bool {
    if INSTALLED.load(Ordering::Acquire) {
        return true;
    }
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLite copies the struct; the functions are 'static.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        )
    };
    let ok = rc == ffi::SQLITE_OK;
    if ok {
        INSTALLED.store(true, Ordering::Release);
    }
    ok
}

pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// A slot with a limit, released when dropped.
pub struct Slot(usize);

impl Slot {
    /// A free slot limited to `limit` bytes, or None when all are taken.
    pub fn take(limit: i64) -> Option<Slot> {
        for i in 1..SLOTS {
            if TAKEN[i]
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                LIMIT[i].store(limit, Ordering::Relaxed);
                return Some(Slot(i));
            }
        }
        None
    }

    /// Charges this thread's SQLite allocations to the slot until the guard
    /// is dropped.
    pub fn enter(&self) -> Enter {
        let prev = CURRENT.with(|c| c.replace(self.0));
        Enter(prev)
    }

    /// Bytes SQLite holds for this slot now.
    pub fn used(&self) -> i64 {
        USED[self.0].load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        LIMIT[self.0].store(0, Ordering::Relaxed);
        TAKEN[self.0].store(false, Ordering::Release);
    }
}

pub struct Enter(usize);

impl Drop for Enter {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.0));
    }
}
