//! The Intel MultiProcessor table (spec 1.4). Ferry gives its guests no ACPI
//! tables, so this is how Linux finds the vCPUs and the IOAPIC.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{low32, APIC_START, EBDA_SIZE, EBDA_START, IOAPIC_START};
use crate::{Error, Result};

/// Highest vCPU count Ferry supports; the table must fit in the EBDA.
pub const MAX_CPUS: u8 = 32;
/// IOAPIC pins.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const BUS_ID_PCI: u8 = 0;
const BUS_ID_ISA: u8 = 1;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

/// The IOAPIC's APIC ID: the first one after the vCPUs'.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// Builds the MP floating pointer and configuration table for `cpus` vCPUs,
/// as they will sit at guest physical address `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::MpTableTooLarge(cpus));
    }
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };

    for id in 0..cpus {
        let flags = CPU_FLAG_ENABLED | if id == 0 { CPU_FLAG_BSP } else { 0 };
        let mut e = vec![ENTRY_PROCESSOR, id, APIC_VERSION, flags];
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        push(&e);
    }
    push(&[ENTRY_BUS, BUS_ID_PCI, b'P', b'C', b'I', b' ', b' ', b' ']);
    push(&[ENTRY_BUS, BUS_ID_ISA, b'I', b'S', b'A', b' ', b' ', b' ']);
    let ioapic = ioapic_id(cpus);
    let mut e = vec![ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1];
    e.extend_from_slice(&const { low32(IOAPIC_START) }.to_le_bytes());
    push(&e);
    // ISA IRQ n on IOAPIC pin n, as KVM's default GSI routing has it (the
    // in-kernel PIT raises GSI 0, so IRQ 0 is an ordinary INT too).
    for irq in 0..IOAPIC_PINS {
        push(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            BUS_ID_ISA,
            irq,
            ioapic,
            irq,
        ]);
    }
    // LINT0 = ExtINT, LINT1 = NMI, on every local APIC (0xff).
    push(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        BUS_ID_ISA,
        0,
        0xff,
        0,
    ]);
    push(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        BUS_ID_ISA,
        0,
        0xff,
        1,
    ]);

    let table_len = HEADER_SIZE + entries.len();
    if (FLOATING_POINTER_SIZE + table_len) as u64 > EBDA_SIZE {
        return Err(Error::MpTableTooLarge(cpus));
    }
    let table_addr = base + FLOATING_POINTER_SIZE as u64;

    let mut fp = Vec::with_capacity(FLOATING_POINTER_SIZE);
    fp.extend_from_slice(b"_MP_");
    // Below 640 KiB: the table lies in the EBDA.
    let table_addr = u32::try_from(table_addr).map_err(|_| Error::MpTableTooLarge(cpus))?;
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length (16-byte units), spec 1.4
    fp[10] = checksum(&fp);

    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    // Fits: checked against the EBDA's size above.
    let table_len16 = u16::try_from(table_len).map_err(|_| Error::MpTableTooLarge(cpus))?;
    header.extend_from_slice(&table_len16.to_le_bytes());
    header.extend_from_slice(&[4, 0]); // spec revision, checksum (below)
    header.extend_from_slice(b"FERRY   ");
    header.extend_from_slice(b"FERRY-VM    ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&const { low32(APIC_START) }.to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    debug_assert_eq!(header.len(), HEADER_SIZE);

    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// The byte that makes `bytes` sum to zero (mod 256), given that the
/// checksum field in `bytes` is still zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the MP table for `cpus` vCPUs into the EBDA.
pub fn setup_mptable<M: GuestMemory>(mem: &M, cpus: u8) -> Result<()> {
    let table = build(cpus, EBDA_START)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|_| Error::GuestMemory("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_valid() {
        for cpus in [1, 2, 4, MAX_CPUS] {
            let t = build(cpus, EBDA_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let table_len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(&t[16..20], b"PCMP");
            assert_eq!(16 + table_len, t.len());
            assert_eq!(sum(&t[16..]), 0);
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_and_first_is_bsp() {
        let t = build(4, EBDA_START).unwrap();
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 4 + 2 + 1 + 24 + 2);
        let first = &t[16 + HEADER_SIZE..];
        assert_eq!(first[0], ENTRY_PROCESSOR);
        assert_eq!(first[3], CPU_FLAG_ENABLED | CPU_FLAG_BSP);
        assert_eq!(first[20 + 1], 1); // second CPU's APIC ID
        assert_eq!(first[20 + 3], CPU_FLAG_ENABLED);
    }

    #[test]
    fn table_pointer_follows_floating_pointer() {
        let t = build(2, EBDA_START).unwrap();
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, EBDA_START + 16);
    }

    #[test]
    fn bounds() {
        assert!(build(0, EBDA_START).is_err());
        assert!(build(MAX_CPUS + 1, EBDA_START).is_err());
        assert!(build(MAX_CPUS, EBDA_START).unwrap().len() as u64 <= EBDA_SIZE);
    }
}
