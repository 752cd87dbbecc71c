//! Type 0 configuration space: 256 bytes (no extended space without MCFG),
//! with per-bit write masks so BAR sizing and read-only fields behave as on
//! hardware.

const NUM_REGS: usize = 64;
const COMMAND_REG: usize = 1;
const STATUS_CAP_LIST: u32 = 1 << 20;
const BAR0_REG: usize = 4;
const CAP_POINTER_OFFSET: usize = 0x34;
const FIRST_CAP_OFFSET: usize = 0x40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Mmio32,
    /// 64-bit, prefetchable: takes two BAR slots.
    Mmio64Prefetchable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    pub index: usize,
    pub addr: u64,
    pub size: u64,
    pub kind: BarKind,
}

/// A BAR's address changed through a config write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    pub index: usize,
    pub old: u64,
    pub new: u64,
}

#[derive(Clone)]
pub struct PciConfig {
    regs: [u32; NUM_REGS],
    writable: [u32; NUM_REGS],
    bars: Vec<BarRegion>,
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfig {
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8, revision: u8) -> Self {
        let mut regs = [0u32; NUM_REGS];
        let mut writable = [0u32; NUM_REGS];
        regs[0] = u32::from(vendor) | (u32::from(device) << 16);
        regs[2] = (u32::from(class) << 24) | (u32::from(subclass) << 16) | u32::from(revision);
        writable[COMMAND_REG] = 0x0000_0547; // I/O, memory, bus master, parity, SERR, INTx disable
        writable[15] = 0x0000_00ff; // interrupt line
        PciConfig {
            regs,
            writable,
            bars: Vec::new(),
            last_cap: None,
            next_cap: FIRST_CAP_OFFSET,
        }
    }

    /// Sets the subsystem vendor and device IDs.
    pub fn set_subsystem(&mut self, vendor: u16, device: u16) {
        self.regs[11] = u32::from(vendor) | (u32::from(device) << 16);
    }

    /// Declares BAR `index` at `addr` of `size` bytes (a power of two, at
    /// least 16), naturally aligned.
    pub fn add_bar(&mut self, index: usize, addr: u64, size: u64, kind: BarKind) {
        assert!(size.is_power_of_two() && size >= 16 && addr.is_multiple_of(size));
        let reg = BAR0_REG + index;
        match kind {
            // Register halves: the low 32 bits, then the high ones.
            BarKind::Mmio32 => {
                self.regs[reg] = (addr & 0xffff_ffff) as u32;
                self.writable[reg] = !(((size - 1) & 0xffff_ffff) as u32);
            }
            BarKind::Mmio64Prefetchable => {
                self.regs[reg] = ((addr & 0xffff_ffff) as u32) | 0b1100; // 64-bit, prefetchable
                self.regs[reg + 1] = (addr >> 32) as u32;
                self.writable[reg] = !(((size - 1) & 0xffff_ffff) as u32) & !0xf;
                self.writable[reg + 1] = !(((size - 1) >> 32) as u32);
            }
        }
        self.bars.push(BarRegion {
            index,
            addr,
            size,
            kind,
        });
    }

    pub fn bars(&self) -> &[BarRegion] {
        &self.bars
    }

    /// Appends a capability; `body` starts after the ID and next-pointer
    /// bytes. `writable` masks (same length as `body`) say which body bits
    /// the guest may change. Returns the capability's config offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let offset = self.next_cap;
        let len = (2 + body.len()).next_multiple_of(4);
        assert!(
            offset + len <= NUM_REGS * 4,
            "capabilities overflow config space"
        );
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(offset + 2 + i, *b);
            self.set_writable_byte(offset + 2 + i, writable.get(i).copied().unwrap_or(0));
        }
        // Capabilities live in the 256-byte config space.
        let pointer = u8::try_from(offset).expect("capabilities lie in the 256-byte config space");
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, pointer),
            None => {
                self.set_byte(CAP_POINTER_OFFSET, pointer);
                self.regs[COMMAND_REG] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = offset + len;
        offset
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.regs[offset / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(value) << shift);
    }

    fn set_writable_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.writable[offset / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(value) << shift);
    }

    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Reads `data.len()` (1, 2 or 4) bytes at `offset`.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let reg = self.read_reg(offset / 4).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = reg.get(offset % 4 + i).copied().unwrap_or(0xff);
        }
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn command(&self) -> u16 {
        (self.regs[COMMAND_REG] & 0xffff) as u16
    }

    /// Writes under the write masks. Returns the BAR that moved, if any.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        let reg = offset / 4;
        let shift = offset % 4;
        if reg >= NUM_REGS || shift + data.len() > 4 || data.is_empty() {
            return None;
        }
        let mut value = 0u32;
        let mut mask = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << ((shift + i) * 8);
            mask |= 0xff << ((shift + i) * 8);
        }
        let before = self.bar_addresses();
        let w = self.writable[reg] & mask;
        self.regs[reg] = (self.regs[reg] & !w) | (value & w);
        self.bar_addresses()
            .into_iter()
            .zip(before)
            .find(|((_, new), (_, old))| new != old)
            .map(|((index, new), (_, old))| {
                if let Some(bar) = self.bars.iter_mut().find(|b| b.index == index) {
                    bar.addr = new;
                }
                BarMove { index, old, new }
            })
    }

    fn bar_addresses(&self) -> Vec<(usize, u64)> {
        self.bars
            .iter()
            .map(|b| {
                let reg = BAR0_REG + b.index;
                let lo = u64::from(self.regs[reg] & !0xf);
                let addr = match b.kind {
                    BarKind::Mmio32 => lo,
                    BarKind::Mmio64Prefetchable => lo | (u64::from(self.regs[reg + 1]) << 32),
                };
                (b.index, addr)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> PciConfig {
        let mut c = PciConfig::new(0x1af4, 0x105a, 0x01, 0x80, 1);
        c.add_bar(0, 0xc000_0000, 0x8000, BarKind::Mmio32);
        c.add_bar(2, 0x1_0000_0000, 1 << 30, BarKind::Mmio64Prefetchable);
        c
    }

    fn read32(c: &PciConfig, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_and_class() {
        let c = dev();
        assert_eq!(read32(&c, 0), 0x105a_1af4);
        assert_eq!(read32(&c, 8) >> 8, 0x01_80_00);
    }

    #[test]
    fn bar_sizing_returns_size_and_restores() {
        let mut c = dev();
        assert_eq!(
            c.write(0x10, &0xffff_ffffu32.to_le_bytes()).map(|m| m.old),
            Some(0xc000_0000)
        );
        assert_eq!(read32(&c, 0x10), !(0x8000 - 1));
        c.write(0x10, &0xc000_0000u32.to_le_bytes());
        assert_eq!(read32(&c, 0x10), 0xc000_0000);
    }

    #[test]
    fn bar64_sizing_and_move() {
        let mut c = dev();
        c.write(0x18, &0xffff_ffffu32.to_le_bytes());
        c.write(0x1c, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&c, 0x18), 0xc000_000c); // 1 GiB, 64-bit, prefetchable
        assert_eq!(read32(&c, 0x1c), 0xffff_ffff);
        c.write(0x18, &0u32.to_le_bytes());
        let m = c.write(0x1c, &2u32.to_le_bytes()).unwrap();
        assert_eq!(m.new, 2 << 32);
        assert_eq!(c.bars()[1].addr, 2 << 32);
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut c = dev();
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(read32(&c, 0), 0x105a_1af4);
        c.write(4, &[0x07, 0]);
        assert_eq!(c.command(), 0x07);
    }

    #[test]
    fn capability_chain() {
        let mut c = dev();
        let a = c.add_capability(0x09, &[14, 1, 0, 0], &[]);
        let b = c.add_capability(0x11, &[0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0], &[0, 0xc0]);
        assert_eq!(a, 0x40);
        assert_eq!(c.read_u16(0x34) & 0xff, 0x40);
        assert_eq!(c.read_u16(a) >> 8, u16::try_from(b).unwrap());
        assert_ne!(read32(&c, 4) & STATUS_CAP_LIST, 0);
        // Only the masked bits of the MSI-X control word change.
        c.write(b + 2, &[0xff, 0xff]);
        assert_eq!(c.read_u16(b + 2), 0xc001);
    }

    #[test]
    fn bad_offsets_are_harmless() {
        let mut c = dev();
        assert!(c.write(300, &[1]).is_none());
        assert!(c.write(3, &[1, 2]).is_none());
        let mut b = [0u8; 4];
        c.read(400, &mut b);
        assert_eq!(b, [0xff; 4]);
    }
}
