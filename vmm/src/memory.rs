//! Guest RAM: anonymous mappings laid out by `ferry_arch::layout`, each
//! registered with KVM as one memory slot.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use ferry_arch::layout::ram_ranges;

pub type GuestMemoryFerry = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} MiB of guest memory: {err}")]
    Map {
        size: u64,
        err: vm_memory::mmap::FromRangesError,
    },
    #[error("{0} MiB of guest memory do not fit this host's address space")]
    TooLarge(u64),
    #[error("KVM refused guest memory slot {slot}: {err}")]
    Register { slot: u32, err: kvm_ioctls::Error },
}

/// Maps `size` bytes of guest RAM (lazily: nothing is touched until used).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryFerry, MemoryError> {
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| Ok((GuestAddress(start), usize::try_from(len)?)))
        .collect::<Result<Vec<_>, std::num::TryFromIntError>>()
        .map_err(|_| MemoryError::TooLarge(size >> 20))?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|err| MemoryError::Map {
        size: size >> 20,
        err,
    })
}

/// Hands every RAM region to KVM, slots numbered from 0. Returns the next free slot.
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryFerry) -> Result<u32, MemoryError> {
    let mut slot = 0;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .expect("a region's start is mapped") as u64;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the mapping lives in `mem`, which the VM keeps for its whole
        // life, and does not overlap another slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|err| MemoryError::Register { slot, err })?;
        slot += 1;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_hole_is_split() {
        let mem = create_guest_memory(5 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 5 << 30);
        assert!(mem.address_in_range(GuestAddress(1 << 32)));
        assert!(!mem.address_in_range(GuestAddress(0xd000_0000)));
    }
}
