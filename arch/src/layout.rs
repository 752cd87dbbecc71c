//! Guest physical memory map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT, then IDT (empty)
//! 0x0000_7000  zero page (struct boot_params) / PVH start info
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT, PD: identity map of the first 1 GiB
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA)
//! 0x0010_0000  kernel
//! ...          RAM up to the 32-bit MMIO hole
//! 0xc000_0000  32-bit MMIO hole: 32-bit BARs, then IOAPIC and LAPIC
//! 4 GiB        the rest of RAM
//! after RAM    64-bit MMIO (64-bit BARs such as DAX windows)
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const PVH_MEMMAP_START: u64 = 0xc000;
pub const PVH_MODLIST_START: u64 = 0x6000;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's COMMAND_LINE_SIZE on x86.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
pub const EBDA_SIZE: u64 = 0x400;
/// Where the kernel is loaded (the boot protocol's "high memory").
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole: RAM stops here and resumes at 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_END: u64 = 0x1_0000_0000;
/// The part of the hole handed to 32-bit BARs (the top is IOAPIC/LAPIC/etc).
pub const MMIO32_BARS_SIZE: u64 = 0x3000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
pub const RAM_HIGH_START: u64 = MMIO32_END;

/// Guest RAM ranges `(start, size)` for `mem_size` bytes of RAM: below the
/// hole first, the remainder from 4 GiB up.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO32_START), (RAM_HIGH_START, mem_size - MMIO32_START)]
    }
}

/// Room for 64-bit BARs: up to 1 TiB of guest physical address space
/// (40 bits, what every x86_64 host of the last decade offers).
pub const MMIO64_END: u64 = 1 << 40;

/// First guest physical address past RAM (and past the 32-bit hole): where
/// 64-bit BARs may go, aligned to 1 GiB.
pub fn mmio64_start(mem_size: u64) -> u64 {
    let end = ram_ranges(mem_size)
        .last()
        .map(|(start, size)| start + size)
        .unwrap_or(0)
        .max(MMIO32_END);
    end.next_multiple_of(1 << 30)
}

/// `addr` as the 32-bit field a boot protocol or the MP table holds it in.
/// Such addresses lie below 4 GiB by this layout; used in a constant, a
/// wrong one stops the build.
#[allow(clippy::cast_possible_truncation)] // checked by the assert
pub const fn low32(addr: u64) -> u32 {
    assert!(addr <= u32::MAX as u64, "a 32-bit boot field above 4 GiB");
    addr as u32
}

// The low boot structures must not overlap: checked when compiling.
const _: () = {
    assert!(IDT_START >= GDT_START + 4 * 8);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(PVH_MODLIST_START + 4096 <= ZERO_PAGE_START);
    assert!(PD_START + 4096 <= PVH_MEMMAP_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_START + EBDA_SIZE <= HIMEM_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range_below_the_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(mmio64_start(256 << 20), MMIO32_END);
    }

    #[test]
    fn ram_past_the_hole_moves_above_4g() {
        let r = ram_ranges(5 << 30);
        assert_eq!(
            r,
            vec![(0, MMIO32_START), (1 << 32, (5 << 30) - MMIO32_START)]
        );
        let total: u64 = r.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 5 << 30);
        assert_eq!(mmio64_start(5 << 30), 6 << 30);
    }
}
