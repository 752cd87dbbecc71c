//! Local APIC LINT0/LINT1 wiring, as firmware leaves it: LINT0 takes the
//! PIC's ExtINT (virtual wire mode), LINT1 takes NMIs.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use crate::{Error, Result};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    // kvm_lapic_state holds the registers as C chars (i8 here).
    u32::from_le_bytes([
        b[0].cast_unsigned(),
        b[1].cast_unsigned(),
        b[2].cast_unsigned(),
        b[3].cast_unsigned(),
    ])
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = byte.cast_signed();
    }
}

/// Replaces the delivery mode (bits 8..11) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI on `vcpu`'s in-kernel LAPIC.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let err = |err| Error::Kvm { what: "LAPIC", err };
    let mut lapic = vcpu.get_lapic().map_err(err)?;
    program_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(err)
}

fn program_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0000 | 0x200);
        program_lint(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x400);
    }
}
