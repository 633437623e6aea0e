//! Mapping and unmapping many ranges leaks no memslot, host mapping or file descriptor. Kept in its
//! own test binary so no other test changes the process's maps or descriptors meanwhile.

mod common;

use common::*;
use tagmem_rig::Report;
use tagmem_vmm::VmConfig;

#[test]
fn thousand_map_unmap_cycles_leak_nothing() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    add_memfd(&g, 1, 64 * MIB);
    host_write(&g, 1, 0, &[0x42; 64]);
    let window = 4 * GIB;
    // Warm up: one full cycle including a guest run, so lazily created state exists already.
    let m0 = mapping(window, 2 * MIB, 1, 0, false);
    g.vm.mapper().lock().map_range(&m0).unwrap();
    assert!(matches!(
        g.read(window, 64).unwrap(),
        Report::Read { sum: 0x1080, .. }
    ));
    g.vm.mapper().lock().unmap_range(&m0).unwrap();

    let (maps, fds) = (count_maps(), count_fds());
    for i in 0..1000u64 {
        let gpa = window + (i % 64) * 4 * MIB;
        let off = (i % 16) * 2 * MIB;
        let a = mapping(gpa, 2 * MIB, 1, off, i % 3 == 0);
        let b = mapping(gpa + 2 * MIB, 2 * MIB, 1, off + 2 * MIB, i % 3 == 0);
        let mapper = g.vm.mapper();
        let mut m = mapper.lock();
        m.map_ranges(&[a, b]).unwrap();
        assert_eq!(m.slot_count(), 1);
        // Split off the first half, then remove the rest.
        m.unmap_range(&a).unwrap();
        m.unmap_range(&b).unwrap();
        assert_eq!(m.slot_count(), 0);
        drop(m);
        if i % 100 == 0 {
            g.vm.mapper().lock().map_range(&a).unwrap();
            assert!(matches!(g.read(gpa, 8).unwrap(), Report::Read { .. }));
            g.vm.mapper().lock().unmap_range(&a).unwrap();
        }
    }
    assert_eq!(g.vm.mapper().lock().slot_count(), 0);
    assert_eq!(count_maps(), maps, "host mappings leaked");
    assert_eq!(count_fds(), fds, "file descriptors leaked");
}
