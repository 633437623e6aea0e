//! The guest heap: power-of-two size classes (16 B to 8 MiB) carved from a static arena, each
//! class with a free list threaded through its free blocks. The driver lives for the whole run
//! and keeps allocating and freeing, so freed blocks must be reused. One vCPU and no interrupts:
//! relaxed atomics are enough to give `GlobalAlloc`'s `&self` interior mutability.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP_SIZE: usize = 8 << 20;
/// Smallest block: 16 bytes (room for the free-list link, and the largest common alignment).
const MIN_SHIFT: u32 = 4;
/// Classes 2^4 ..= 2^23.
const CLASSES: usize = 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the arena is only handed out in disjoint blocks by `SizeClassHeap::alloc`.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

struct SizeClassHeap {
    /// Offset of the first never-used byte of the arena.
    next: AtomicUsize,
    /// Address of the first free block of each class (0: none).
    free: [AtomicUsize; CLASSES],
}

/// The class of a layout: blocks of `1 << (class + MIN_SHIFT)` bytes, naturally aligned, which
/// covers both the size and the alignment.
fn class_of(layout: Layout) -> Option<usize> {
    let need = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = need.checked_next_power_of_two()?.trailing_zeros();
    let class = (shift - MIN_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

// SAFETY: `alloc` returns blocks that are disjoint (each is either fresh arena space past
// `next`, or a block `dealloc` returned to its class list and nothing else holds), at least
// `layout.size()` long and aligned to their power-of-two size, which is at least
// `layout.align()`; or null when the arena is exhausted.
unsafe impl GlobalAlloc for SizeClassHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return core::ptr::null_mut();
        };
        let head = self.free[class].load(Ordering::Relaxed);
        if head != 0 {
            // SAFETY: `head` is a free block of this class (pushed by `dealloc`), at least 16
            // bytes and 16-aligned; its first word holds the next free block's address.
            let next = unsafe { (head as *const usize).read() };
            self.free[class].store(next, Ordering::Relaxed);
            return head as *mut u8;
        }
        let size = 1usize << (class as u32 + MIN_SHIFT);
        let base = ARENA.0.get() as usize;
        let start = self.next.load(Ordering::Relaxed);
        let Some(aligned) = (base + start).checked_next_multiple_of(size) else {
            return core::ptr::null_mut();
        };
        let Some(end) = (aligned - base).checked_add(size) else {
            return core::ptr::null_mut();
        };
        if end > HEAP_SIZE {
            return core::ptr::null_mut();
        }
        self.next.store(end, Ordering::Relaxed);
        aligned as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else { return };
        let head = self.free[class].load(Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc's contract), so it is a
        // block of this class, at least 16 bytes and 16-aligned, which the caller no longer uses.
        unsafe { (ptr as *mut usize).write(head) };
        self.free[class].store(ptr as usize, Ordering::Relaxed);
    }
}

#[global_allocator]
static HEAP: SizeClassHeap = SizeClassHeap {
    next: AtomicUsize::new(0),
    free: [const { AtomicUsize::new(0) }; CLASSES],
};
