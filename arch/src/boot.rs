//! What the kernel reads at entry: the zero page (64-bit Linux boot
//! protocol) or the PVH start info, each with the e820 memory map, the
//! command line and the initramfs location.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use crate::layout::*;
use crate::{Error, Result};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

// linux-loader's bindgen structs are plain old data but carry no
// `ByteValued`; these wrappers let them be written to guest memory.
macro_rules! byte_valued {
    ($name:ident, $inner:ty) => {
        #[repr(transparent)]
        #[derive(Clone, Copy, Default)]
        struct $name($inner);
        // SAFETY: the inner type is a `repr(C)` struct of integers, valid
        // for any bit pattern.
        unsafe impl ByteValued for $name {}
    };
}
byte_valued!(BootParams, boot_params);
byte_valued!(StartInfo, hvm_start_info);
byte_valued!(MemmapEntry, hvm_memmap_table_entry);
byte_valued!(ModlistEntry, hvm_modlist_entry);

/// Where the initramfs was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// The guest's RAM as e820 sees it: `(start, size)`, with the legacy hole
/// between the EBDA and 1 MiB left out.
pub fn e820_ram(mem_size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (start, size) in ram_ranges(mem_size) {
        if start == 0 {
            out.push((0, EBDA_START));
            if size > HIMEM_START {
                out.push((HIMEM_START, size - HIMEM_START));
            }
        } else {
            out.push((start, size));
        }
    }
    out
}

/// Picks the initramfs address: page-aligned, as high as possible in low
/// RAM, below `addr_max` (the kernel's `initrd_addr_max`), above `kernel_end`.
pub fn place_initrd(mem_size: u64, kernel_end: u64, addr_max: u64, size: u64) -> Option<u64> {
    let low_end = ram_ranges(mem_size).first().map(|(s, l)| s + l)?;
    let top = low_end.min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

/// Writes the zero page for the 64-bit Linux boot protocol at
/// `ZERO_PAGE_START`. `header` is the bzImage's setup header, or `None` for
/// an ELF kernel entered at its 64-bit entry point.
pub fn write_zero_page<M: GuestMemory>(
    mem: &M,
    header: Option<setup_header>,
    cmdline_size: usize,
    initrd: Option<Initrd>,
    mem_size: u64,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = const { low32(CMDLINE_START) };
    params.hdr.cmdline_size =
        u32::try_from(cmdline_size).map_err(|_| Error::GuestMemory("command line"))?;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(rd) = initrd {
        // place_initrd puts it below the kernel's initrd_addr_max (< 4 GiB).
        let too_high = |_| Error::GuestMemory("initramfs (above 4 GiB)");
        params.hdr.ramdisk_image = u32::try_from(rd.addr).map_err(too_high)?;
        params.hdr.ramdisk_size = u32::try_from(rd.size).map_err(too_high)?;
    }
    let ram = e820_ram(mem_size);
    for (i, (addr, size)) in ram.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
        };
    }
    // e820_ram gives at most two ranges (below and above the 32-bit hole).
    params.e820_entries = u8::try_from(ram.len()).map_err(|_| Error::GuestMemory("e820 table"))?;
    mem.write_obj(BootParams(params), GuestAddress(ZERO_PAGE_START))
        .map_err(|_| Error::GuestMemory("zero page"))
}

/// Writes the PVH start info (with its memory map and module list) at
/// `ZERO_PAGE_START`.
pub fn write_pvh_start_info<M: GuestMemory>(
    mem: &M,
    initrd: Option<Initrd>,
    mem_size: u64,
) -> Result<()> {
    let err = |_| Error::GuestMemory("PVH start info");
    let ram = e820_ram(mem_size);
    for (i, (addr, size)) in ram.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
            reserved: 0,
        });
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<MemmapEntry>()) as u64;
        mem.write_obj(entry, GuestAddress(at)).map_err(err)?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(ram.len()).map_err(|_| Error::GuestMemory("PVH memmap"))?,
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        });
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(err)?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(StartInfo(info), GuestAddress(ZERO_PAGE_START))
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn e820_skips_legacy_hole_and_splits_at_mmio() {
        assert_eq!(
            e820_ram(256 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (256 << 20) - HIMEM_START)]
        );
        let big = e820_ram(5 << 30);
        assert_eq!(big.len(), 3);
        assert_eq!(big[2], (1 << 32, (5 << 30) - MMIO32_START));
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let mem = 256 << 20;
        let addr = place_initrd(mem, 16 << 20, 0x7fff_ffff, 10_000).unwrap();
        assert_eq!(addr % 4096, 0);
        assert!(addr + 10_000 <= mem);
        assert!(addr >= (256 << 20) - 3 * 4096);
        // Too big to fit above the kernel.
        assert_eq!(place_initrd(mem, 16 << 20, 0x7fff_ffff, 250 << 20), None);
        // Respects initrd_addr_max.
        let capped = place_initrd(1 << 30, 16 << 20, (64 << 20) - 1, 4096).unwrap();
        assert_eq!(capped, (64 << 20) - 4096);
    }

    #[test]
    fn zero_page_fields() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rd = Initrd {
            addr: 0x80_0000,
            size: 1234,
        };
        write_zero_page(&mem, None, 42, Some(rd), 512 << 20).unwrap();
        let p: BootParams = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.0.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, low32(CMDLINE_START));
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x80_0000);
        assert_eq!(p.0.e820_entries, 2);
    }

    #[test]
    fn pvh_start_info_fields() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_pvh_start_info(
            &mem,
            Some(Initrd {
                addr: 0x100_0000,
                size: 99,
            }),
            5 << 30,
        )
        .unwrap();
        let info: StartInfo = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(info.0.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.0.memmap_entries, 3);
        assert_eq!(info.0.nr_modules, 1);
        let m: ModlistEntry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((m.0.paddr, m.0.size), (0x100_0000, 99));
    }
}
