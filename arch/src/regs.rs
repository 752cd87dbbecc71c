//! Boot-time vCPU registers: general purpose, segment/control, FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::gdt::{kvm_segment_from_gdt, GDT_LONG_MODE, GDT_PROTECTED_MODE};
use crate::layout::*;
use crate::{Error, Result};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol: long mode, paging on, `rsi` = zero page.
    Linux64,
    /// PVH direct boot: 32-bit protected mode, paging off, `rbx` = start info.
    Pvh,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Kvm { what, err }
}

/// Sets every register the kernel entry expects. The boot CPU gets the
/// entry point; application processors are started by the guest (INIT/SIPI)
/// and need none of this.
pub fn setup_boot_vcpu<M: GuestMemory>(
    vcpu: &VcpuFd,
    mem: &M,
    protocol: BootProtocol,
    entry: GuestAddress,
    boot_info: GuestAddress,
) -> Result<()> {
    setup_fpu(vcpu)?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("segment registers"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            write_gdt(mem, &GDT_LONG_MODE)?;
            set_segments(&mut sregs, &GDT_LONG_MODE);
            setup_page_tables(mem, &mut sregs)?;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_info.raw_value();
        }
        BootProtocol::Pvh => {
            write_gdt(mem, &GDT_PROTECTED_MODE)?;
            set_segments(&mut sregs, &GDT_PROTECTED_MODE);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            regs.rbx = boot_info.raw_value();
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("segment registers"))?;
    vcpu.set_regs(&regs).map_err(kvm_err("general registers"))
}

fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("FPU"))
}

fn write_gdt<M: GuestMemory>(mem: &M, gdt: &[u64]) -> Result<()> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|_| Error::GuestMemory("GDT"))?;
    }
    // An empty IDT: the kernel installs its own before enabling interrupts.
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|_| Error::GuestMemory("IDT"))
}

fn set_segments(sregs: &mut kvm_sregs, gdt: &[u64; 4]) {
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_START;
    const GDT_LIMIT: u16 = {
        assert!(std::mem::size_of::<[u64; 4]>() <= 1 << 16);
        #[allow(clippy::cast_possible_truncation)] // checked just above
        let limit = (std::mem::size_of::<[u64; 4]>() - 1) as u16;
        limit
    };
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
}

/// Identity-maps the first 1 GiB with 2 MiB pages: enough for the kernel's
/// 64-bit entry, which builds its own page tables straight away.
fn setup_page_tables<M: GuestMemory>(mem: &M, sregs: &mut kvm_sregs) -> Result<()> {
    let err = |_| Error::GuestMemory("page tables");
    mem.write_obj(PDPT_START | 0x03, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PD_START | 0x03, GuestAddress(PDPT_START))
        .map_err(err)?;
    for i in 0..512u64 {
        // Present | writable | 2 MiB page.
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_START + i * 8))
            .map_err(err)?;
    }
    sregs.cr3 = PML4_START;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn page_tables_identity_map_first_gigabyte() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPT_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PD_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn gdt_lands_in_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_gdt(&mem, &GDT_LONG_MODE).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(code, GDT_LONG_MODE[1]);
    }
}
