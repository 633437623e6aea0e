//! End-to-end tests of the VMM on real KVM with the bundled test guest. Each test skips (with a
//! message) when `/dev/kvm` cannot be opened.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use tagmem_device::SourceId;
use tagmem_rig::{byte_sum, Command, Report};
use tagmem_vmm::{MemslotError, VmConfig};

const WINDOW: u64 = 4 * GIB;

fn read_report(r: Report) -> (u64, Vec<u8>) {
    match r {
        Report::Read { sum, first, .. } => (sum, first),
        other => panic!("expected a READ report, got {other:?}"),
    }
}

#[test]
fn boots_says_hello_and_has_a_heap() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    assert_eq!(
        g.console_lines().first().map(String::as_str),
        Some("HELLO tagmem test guest")
    );
    let expected: u64 = (0..10_000u64).map(|i| i % 251).sum();
    assert_eq!(
        g.command(Command::Alloc { len: 10_000 }).unwrap(),
        Report::Alloc {
            len: 10_000,
            sum: expected
        }
    );
    assert_eq!(g.command(Command::Stop).unwrap(), Report::Stop);
}

#[test]
fn guest_reads_and_writes_memfd_mapping() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    // The guest's boot-time probe for a virtio-mmio device reads unbacked memory once.
    let unmapped_at_boot = g.vcpu.stats().unmapped_reads;
    add_memfd(&g, 1, 64 * MIB);
    let data = pattern(4096, 7);
    host_write(&g, 1, 2 * MIB, &data);
    g.vm.mapper()
        .lock()
        .map_range(&mapping(WINDOW, 4 * MIB, 1, 2 * MIB, false))
        .unwrap();

    let (sum, first) = read_report(g.read(WINDOW, 4096).unwrap());
    assert_eq!(sum, byte_sum(&data));
    assert_eq!(first, data[..8]);

    assert!(matches!(
        g.write(WINDOW + 8192, 16, 0x5a).unwrap(),
        Report::Wrote { .. }
    ));
    assert_eq!(host_read(&g, 1, 2 * MIB + 8192, 16), vec![0x5a; 16]);
    assert_eq!(g.vcpu.stats().unmapped_reads, unmapped_at_boot);
}

#[test]
fn readonly_mapping_keeps_backing_unchanged() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    add_memfd(&g, 1, 4 * MIB);
    let data = pattern(64, 3);
    host_write(&g, 1, 0, &data);
    g.vm.mapper()
        .lock()
        .map_range(&mapping(WINDOW, 2 * MIB, 1, 0, true))
        .unwrap();

    assert!(matches!(g.write(WINDOW, 64, 0xee).unwrap(), Report::Wrote { .. }));
    assert_eq!(
        host_read(&g, 1, 0, 64),
        data,
        "guest write reached a read-only backing"
    );
    assert!(g.vcpu.stats().readonly_writes >= 1);
    let (sum, _) = read_report(g.read(WINDOW, 64).unwrap());
    assert_eq!(sum, byte_sum(&data));
}

#[test]
fn unmapped_reads_return_no_backing_bytes_and_vmm_survives() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    add_memfd(&g, 1, 4 * MIB);
    host_write(&g, 1, 0, &[0x11; 64]);
    let m = mapping(WINDOW, 2 * MIB, 1, 0, false);
    g.vm.mapper().lock().map_range(&m).unwrap();
    assert_eq!(read_report(g.read(WINDOW, 64).unwrap()).0, 0x11 * 64);
    g.vm.mapper().lock().unmap_range(&m).unwrap();

    let before = g.vcpu.stats().unmapped_reads;
    let (sum, first) = read_report(g.read(WINDOW, 64).unwrap());
    assert_eq!((sum, first), (0xff * 64, vec![0xff; 8]));
    assert_eq!(g.vcpu.stats().unmapped_reads - before, 8);
    assert_eq!(g.vcpu.stats().last_unmapped, Some(WINDOW + 56));
    // Writes to nothing are dropped, and the guest keeps working.
    assert!(matches!(g.write(8 * GIB, 4, 1).unwrap(), Report::Wrote { .. }));
    assert_eq!(g.vcpu.stats().unmapped_writes, 4);
    assert!(matches!(
        g.command(Command::Alloc { len: 10 }).unwrap(),
        Report::Alloc { .. }
    ));
}

#[test]
fn one_tib_sparse_extent_first_and_last_page() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    add_memfd(&g, 1, TIB);
    let head = pattern(4096, 1);
    let tail = pattern(4096, 2);
    host_write(&g, 1, 0, &head);
    host_write(&g, 1, TIB - 4096, &tail);
    let gpa = TIB;
    g.vm.mapper()
        .lock()
        .map_range(&mapping(gpa, TIB, 1, 0, false))
        .unwrap();
    assert_eq!(g.vm.mapper().lock().slot_count(), 1);

    assert_eq!(
        read_report(g.read(gpa, 4096).unwrap()),
        (byte_sum(&head), head[..8].to_vec())
    );
    assert_eq!(
        read_report(g.read(gpa + TIB - 4096, 4096).unwrap()),
        (byte_sum(&tail), tail[..8].to_vec())
    );
    // Only the touched pages cost memory.
    let m = g.vm.mapper();
    let blocks = m
        .lock()
        .backing(SourceId(1))
        .unwrap()
        .file_handle()
        .metadata()
        .unwrap()
        .blocks();
    assert!(blocks * 512 <= 16 * MIB, "memfd grew to {} bytes", blocks * 512);
}

#[test]
fn coalescing_and_splitting_on_kvm() {
    let Some(mut g) = boot_or_skip(VmConfig::default()) else {
        return;
    };
    add_memfd(&g, 1, 16 * MIB);
    let data = pattern(6 * 1024 * 1024, 9);
    host_write(&g, 1, 0, &data);
    {
        let mapper = g.vm.mapper();
        let mut m = mapper.lock();
        // One batch (a chain's accepted extents), in any order: merged into one memslot.
        let batch: Vec<_> = [0, 2, 1]
            .into_iter()
            .map(|i| mapping(WINDOW + i * 2 * MIB, 2 * MIB, 1, i * 2 * MIB, false))
            .collect();
        m.map_ranges(&batch).unwrap();
        assert_eq!(m.slot_count(), 1, "{:?}", m.slots());
    }
    // A read across the former boundaries sees contiguous backing bytes.
    let span = 2 * MIB - 4096..2 * MIB + 4096;
    let (sum, _) = read_report(g.read(WINDOW + span.start, 8192).unwrap());
    assert_eq!(sum, byte_sum(&data[us(span.start)..us(span.end)]));

    g.vm.mapper()
        .lock()
        .unmap_range(&mapping(WINDOW + 2 * MIB, 2 * MIB, 1, 2 * MIB, false))
        .unwrap();
    let slots = g.vm.mapper().lock().slots();
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert_eq!(read_report(g.read(WINDOW + 3 * MIB, 16).unwrap()).0, 0xff * 16);
    let last = 4 * MIB + 4096;
    let (sum, _) = read_report(g.read(WINDOW + last, 64).unwrap());
    assert_eq!(sum, byte_sum(&data[us(last)..us(last) + 64]));
    let (sum, _) = read_report(g.read(WINDOW, 64).unwrap());
    assert_eq!(sum, byte_sum(&data[..64]));
}

#[test]
fn slot_limit_is_a_clear_error() {
    let config = VmConfig {
        max_mapper_slots: Some(4),
        ..Default::default()
    };
    let Some(g) = boot_or_skip(config) else { return };
    assert!(g.vm.kvm_memslots() > 4);
    add_memfd(&g, 1, 64 * MIB);
    let mapper = g.vm.mapper();
    let mut m = mapper.lock();
    for i in 0..4 {
        m.map_range(&mapping(WINDOW + i * 4 * MIB, MIB, 1, i * 4 * MIB, false))
            .unwrap();
    }
    let err = m
        .map_range(&mapping(WINDOW + 16 * MIB, MIB, 1, 16 * MIB, false))
        .unwrap_err();
    assert!(matches!(err, MemslotError::SlotLimit { needed: 5, limit: 4 }));
    assert!(err.to_string().contains("memslot limit"), "{err}");
    assert_eq!(m.slot_count(), 4);
}

#[test]
fn access_beyond_identity_map_reports_a_fault() {
    let config = VmConfig {
        identity_limit: 8 * GIB,
        ..Default::default()
    };
    let Some(mut g) = boot_or_skip(config) else { return };
    match g.read(8 * GIB, 8).unwrap() {
        Report::Fault(line) => assert!(line.contains("vector=14"), "{line}"),
        other => panic!("expected a page fault, got {other:?}"),
    }
}
