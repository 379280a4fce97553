//! A global allocator that counts live heap bytes and their peak, for the binaries that
//! measure memory (`validator_memory`, `compression_memory`). Such a binary holds one test only,
//! so that no other thread allocates meanwhile. Include with
//! `#[path = "common/heap.rs"] mod heap;` and `#[global_allocator] static A: heap::Counting = heap::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Heap bytes allocated and not freed yet.
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The highest live heap above the starting level while `f` runs, in bytes, and its result.
#[allow(dead_code)] // not every binary measures peaks
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (isize, T) {
    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - base, out)
}
