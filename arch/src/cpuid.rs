//! Per-vCPU CPUID, filtered from what KVM supports: APIC IDs, a topology of
//! one socket with `cpus` single-threaded cores, and the hypervisor bit.
//! VMX and SVM are hidden: Ferry offers no nested virtualization, and a
//! guest kernel that initialises KVM on a nested host can crash there.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_SVM: u32 = 0x8000_000a;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_VMX: u32 = 1 << 5;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EXT_ECX_SVM: u32 = 1 << 2;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` items (the APIC ID shift for a level).
fn bits_for(n: u32) -> u32 {
    u32::BITS - n.saturating_sub(1).leading_zeros()
}

/// Adjusts the supported CPUID for vCPU `id` of `cpus`.
pub fn filter_cpuid(cpuid: &mut CpuId, id: u8, cpus: u8) {
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, u32::from(id), u32::from(cpus));
    }
}

fn filter_entry(e: &mut kvm_cpuid_entry2, id: u32, cpus: u32) {
    let core_bits = bits_for(cpus);
    match e.function {
        LEAF_FEATURES => {
            // EBX: initial APIC ID (31..24), logical processors per package (23..16).
            e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((cpus & 0xff) << 16);
            e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_VMX;
            if cpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX 31..26: cores per package - 1. 25..14: threads sharing this
            // cache - 1: the last level (3) is shared by the package, the rest
            // are per core.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { cpus - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((cpus - 1) << 26) | (sharing << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = cpus;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_EXT_FEATURES => e.ecx &= !EXT_ECX_SVM,
        LEAF_AMD_SVM => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_AMD_SIZE_IDS => {
            // ECX: APIC ID size (15..12) and number of cores - 1 (7..0).
            e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (cpus - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            e.eax = id;
            e.ebx &= !0xff; // compute unit id
            e.ecx &= !0xff; // node id
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_count_in_leaf_1() {
        let mut e = entry(1, 0);
        e.ebx = 0xdead_0805;
        filter_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0805);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn nested_virtualization_is_hidden() {
        let mut leaf1 = entry(LEAF_FEATURES, 0);
        leaf1.ecx = ECX_VMX;
        filter_entry(&mut leaf1, 0, 1);
        assert_eq!(leaf1.ecx & ECX_VMX, 0);
        let mut ext = entry(LEAF_EXT_FEATURES, 0);
        ext.ecx = EXT_ECX_SVM | 1;
        filter_entry(&mut ext, 0, 1);
        assert_eq!(ext.ecx, 1);
        let mut svm = entry(LEAF_AMD_SVM, 0);
        svm.eax = 1;
        svm.edx = 0xff;
        filter_entry(&mut svm, 0, 1);
        assert_eq!((svm.eax, svm.edx), (0, 0));
    }

    #[test]
    fn topology_leaf_counts_cores() {
        let mut smt = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        filter_entry(&mut smt, 5, 6);
        filter_entry(&mut core, 5, 6);
        assert_eq!((smt.ebx, smt.edx, smt.ecx >> 8), (1, 5, 1));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (3, 6, 2));
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
        assert_eq!(bits_for(32), 5);
    }
}
