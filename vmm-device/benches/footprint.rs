//! Host memory the device core keeps per extent: live heap growth of a device holding N accepted
//! extents (no hypervisor, a fake mapper), divided by N. Prints a table; run with
//! `cargo bench -p tagmem-device --bench footprint`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use tagmem_device::test_utils::{Harness, NullMapper};
use tagmem_device::*;
use tagmem_wire::VIRTIO_MEM_EXTENT_ALIGN;
use uuid::Uuid;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's own arguments, so `System`'s
// guarantees hold unchanged; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `l`.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `alloc` above with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Offers and accepts `n` extents in chains of 100; `tagged` gives each chain one tag.
fn fill(h: &mut Harness, src: u64, n: u64, tagged: bool, spaced: bool) {
    let mut id = 0u64;
    let mut chain = 0u64;
    while id < n {
        let k = (n - id).min(100);
        chain += 1;
        let specs: Vec<ExtentSpec> = (id..id + k)
            .map(|i| ExtentSpec {
                tag: if tagged {
                    Uuid::from_u128(u128::from(chain))
                } else {
                    Uuid::nil()
                },
                length: VIRTIO_MEM_EXTENT_ALIGN,
                source: SourceRef {
                    id: SourceId(src),
                    offset: i * VIRTIO_MEM_EXTENT_ALIGN,
                },
                gpa: spaced.then(|| (8 << 30) + i * 2 * VIRTIO_MEM_EXTENT_ALIGN),
                flags: ExtentFlags::default(),
                perf: Perf {
                    read_latency_ns: 250,
                    ..Default::default()
                },
                node: 1,
                seq: 0,
                class: SourceClass::CxlDc,
            })
            .collect();
        h.offer_and_accept(&specs).expect("offer");
        id += k;
    }
    h.dev.take_host_events();
}

fn main() {
    println!("{:<44} {:>8} {:>14}", "layout", "extents", "bytes/extent");
    for (what, tagged, spaced) in [
        ("untagged, back to back", false, false),
        ("untagged, spaced (a free-list gap each)", false, true),
        ("tagged groups of 100, back to back", true, false),
    ] {
        for n in [1_000u64, 10_000] {
            let mut cfg = Harness::config();
            cfg.tagged = Some(TaggedWindow {
                addr: 4 << 30,
                size: 1 << 40,
            });
            let f = cfg.features();
            let mut h = Harness::with_mapper(cfg, f, Box::new(NullMapper), Default::default());
            // Warm up allocations the device makes once.
            fill(&mut h, 2, 1, false, false);
            let before = LIVE.load(Ordering::Relaxed);
            fill(&mut h, 1, n, tagged, spaced);
            let after = LIVE.load(Ordering::Relaxed);
            let per = after.saturating_sub(before) as f64 / n as f64;
            println!("{what:<44} {n:>8} {per:>14.0}");
        }
    }
}
