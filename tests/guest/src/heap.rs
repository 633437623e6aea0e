//! The guest heap: a bump allocator over a static array that starts over once every allocation
//! has been freed. One vCPU and no interrupts, so relaxed atomics are enough.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP_SIZE: usize = 8 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the arena is only handed out in disjoint pieces by `BumpHeap::alloc`.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

struct BumpHeap {
    next: AtomicUsize,
    live: AtomicUsize,
}

// SAFETY: `alloc` returns disjoint, suitably aligned pieces of ARENA, or null when it is full;
// space is reused only after `live` dropped to zero, i.e. once no piece is in use.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = ARENA.0.get() as usize;
        let start = self.next.load(Ordering::Relaxed);
        let Some(aligned) = (base + start).checked_next_multiple_of(layout.align()) else {
            return core::ptr::null_mut();
        };
        let Some(end) = (aligned - base).checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if end > HEAP_SIZE {
            return core::ptr::null_mut();
        }
        self.next.store(end, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::Relaxed);
        aligned as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {
        if self.live.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.next.store(0, Ordering::Relaxed);
        }
    }
}

#[global_allocator]
static HEAP: BumpHeap = BumpHeap { next: AtomicUsize::new(0), live: AtomicUsize::new(0) };
