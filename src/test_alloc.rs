//! A counting allocator for unit tests: each thread's live bytes and peak,
//! so a test can show that reading a hostile image allocates no more than
//! the image justifies.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(d: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + d;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

/// Starts a measurement on this thread.
pub fn reset_peak() {
    let live = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(live));
}

/// Most bytes this thread held since [`reset_peak`], above `base` (the
/// live bytes at the reset).
pub fn peak_above(base: isize) -> isize {
    PEAK.with(|p| p.get()) - base
}

/// Bytes this thread holds now.
pub fn live() -> isize {
    LIVE.with(|l| l.get())
}

pub struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are plain thread-local cells with const initialisers, which
// neither allocate nor register destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            add(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            add(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        add(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            add(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;
