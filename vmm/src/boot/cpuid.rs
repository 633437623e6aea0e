//! The CPUID a vCPU sees: KVM's supported set, with this vCPU's APIC ID in the topology leaves,
//! the hypervisor bit set, and the KVM signature leaf present (what a Linux guest looks for to
//! use kvmclock and paravirtual features), as Firecracker and Cloud Hypervisor present it.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1: family, model, APIC ID, feature flags.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 0xb and 0x1f: extended topology (x2APIC ID in EDX).
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// The hypervisor range's first leaf: highest hypervisor leaf and the vendor signature.
pub const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// KVM's paravirtual feature leaf.
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT (the logical-processor count in EBX is valid).
const EDX_HTT: u32 = 1 << 28;

/// The CPUID of vCPU `apic_id` of `nr_vcpus`, derived from `supported`.
pub fn for_vcpu(supported: &CpuId, apic_id: u8, nr_vcpus: u8) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for e in &mut entries {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (u32::from(apic_id) << 24) | (u32::from(nr_vcpus.max(1)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if nr_vcpus > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => e.edx = u32::from(apic_id),
            LEAF_HYPERVISOR => {
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
                e.eax = e.eax.max(LEAF_KVM_FEATURES);
            }
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == LEAF_HYPERVISOR) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_KVM_FEATURES,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    if !entries.iter().any(|e| e.function == LEAF_KVM_FEATURES) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_KVM_FEATURES,
            ..Default::default()
        });
    }
    // `from_entries` fails only beyond KVM_MAX_CPUID_ENTRIES, which the two added leaves of a
    // supported set cannot reach in practice; fall back to the unmodified set if they do.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

/// Whether `cpuid` carries the KVM signature.
pub fn has_kvm_signature(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_HYPERVISOR && [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_id_topology_and_hypervisor_bit() {
        let supported = CpuId::from_entries(&[
            entry(1, 0, 0xff00_1234, 0, 0),
            entry(0xb, 0, 0, 0, 7),
            entry(0xb, 1, 0, 0, 7),
        ])
        .unwrap();
        let c = for_vcpu(&supported, 3, 4);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx, 0x0304_1234);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(find(&c, 0xb, 0).edx, 3);
        assert_eq!(find(&c, 0xb, 1).edx, 3);
    }

    #[test]
    fn kvm_signature_added_when_missing_and_kept_when_present() {
        let bare = CpuId::from_entries(&[entry(1, 0, 0, 0, 0)]).unwrap();
        assert!(!has_kvm_signature(&bare));
        let c = for_vcpu(&bare, 0, 1);
        assert!(has_kvm_signature(&c));
        assert_eq!(find(&c, LEAF_HYPERVISOR, 0).eax, LEAF_KVM_FEATURES);
        let again = for_vcpu(&c, 0, 1);
        assert_eq!(
            again
                .as_slice()
                .iter()
                .filter(|e| e.function == LEAF_HYPERVISOR)
                .count(),
            1
        );
    }
}
