//! A counting allocator for tests that measure memory: a test binary installs it with
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;`. It counts allocations,
//! allocated bytes, live bytes and their peak, process-wide (a binary that measures runs
//! its measured work one test at a time).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// What a piece of work allocated.
#[derive(Debug)]
pub struct Counted {
    pub allocations: usize,
    pub bytes: usize,
    /// Peak live bytes above the live bytes at the start.
    pub peak_extra: usize,
}

/// Runs `work`, counting what it allocates.
pub fn count<T>(work: impl FnOnce() -> T) -> (T, Counted) {
    let (allocations, bytes) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        ALLOCATED.load(Ordering::SeqCst),
    );
    let live = LIVE.load(Ordering::SeqCst);
    PEAK.store(live, Ordering::SeqCst);
    let out = work();
    let counted = Counted {
        allocations: ALLOCATIONS.load(Ordering::SeqCst) - allocations,
        bytes: ALLOCATED.load(Ordering::SeqCst) - bytes,
        peak_extra: PEAK.load(Ordering::SeqCst).saturating_sub(live),
    };
    (out, counted)
}

/// The bytes live now.
pub fn live() -> usize {
    LIVE.load(Ordering::SeqCst)
}
