//! MSI-X: the vector table and pending-bit array a device exposes in a BAR,
//! with per-vector and function-wide masking.

pub const MSIX_ENTRY_SIZE: u64 = 16;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixTableEntry {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
    pub control: u32,
}

impl MsixTableEntry {
    pub fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }

    pub fn address(&self) -> u64 {
        u64::from(self.addr_lo) | (u64::from(self.addr_hi) << 32)
    }
}

/// What a table write changed, for the caller to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum MsixChange {
    /// Address or data of this vector changed: re-route it.
    Message(u16),
    /// This vector was unmasked: deliver it if it was pending.
    Unmasked(u16),
    None,
}

pub struct MsixState {
    pub table: Vec<MsixTableEntry>,
    pending: Vec<u64>,
    pub enabled: bool,
    pub function_masked: bool,
}

impl MsixState {
    pub fn new(vectors: u16) -> Self {
        MsixState {
            // Vectors start masked, as after reset.
            table: vec![
                MsixTableEntry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                usize::from(vectors)
            ],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    pub fn vectors(&self) -> u16 {
        // At most 2048 entries (the MSI-X table size field is 11 bits).
        u16::try_from(self.table.len()).unwrap_or(u16::MAX)
    }

    /// Applies the MSI-X control word (enable, function mask). Returns
    /// whether pending vectors may now be delivered.
    pub fn set_control(&mut self, control: u16) -> bool {
        let was_blocked = !self.enabled || self.function_masked;
        self.enabled = control & (1 << 15) != 0;
        self.function_masked = control & (1 << 14) != 0;
        was_blocked && self.enabled && !self.function_masked
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let value = self.table_dword(offset);
        fill(data, (offset % 4) as usize, value);
    }

    fn table_dword(&self, offset: u64) -> u64 {
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        let Some(e) = self.table.get(index) else {
            return u64::MAX;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        let w = ((offset % MSIX_ENTRY_SIZE) / 4) as usize;
        // A qword read takes two consecutive dwords.
        u64::from(words[w]) | (words.get(w + 1).map_or(0, |x| u64::from(*x)) << 32)
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        if index >= self.table.len() || !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return MsixChange::None;
        }
        let Ok(vector) = u16::try_from(index) else {
            return MsixChange::None;
        };
        let before = self.table[index];
        let mut value = [0u8; 8];
        value[..data.len()].copy_from_slice(data);
        let mut words = vec![u32::from_le_bytes(value[..4].try_into().expect("4 bytes"))];
        if data.len() == 8 {
            words.push(u32::from_le_bytes(value[4..].try_into().expect("4 bytes")));
        }
        let first = ((offset % MSIX_ENTRY_SIZE) / 4) as usize;
        let e = &mut self.table[index];
        for (i, w) in words.into_iter().enumerate() {
            match first + i {
                0 => e.addr_lo = w,
                1 => e.addr_hi = w,
                2 => e.data = w,
                3 => e.control = w & VECTOR_MASKED,
                _ => {}
            }
        }
        let after = *e;
        if after.masked() != before.masked() && !after.masked() {
            MsixChange::Unmasked(vector)
        } else if (after.addr_lo, after.addr_hi, after.data)
            != (before.addr_lo, before.addr_hi, before.data)
        {
            MsixChange::Message(vector)
        } else {
            MsixChange::None
        }
    }

    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let value = self
            .pending
            .get((offset / 8) as usize)
            .copied()
            .unwrap_or(0);
        // A qword of pending bits: a 32-bit read of its upper half starts at
        // byte 4 (it read the lower half again; issue 14 finding 7).
        fill(data, (offset % 8) as usize, value);
    }

    /// Whether `vector` may be delivered now.
    pub fn can_deliver(&self, vector: u16) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .table
                .get(usize::from(vector))
                .is_some_and(|e| !e.masked())
    }

    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        let (word, bit) = (usize::from(vector) / 64, vector % 64);
        if let Some(w) = self.pending.get_mut(word) {
            if pending {
                *w |= 1 << bit;
            } else {
                *w &= !(1 << bit);
            }
        }
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let (word, bit) = (usize::from(vector) / 64, vector % 64);
        self.pending.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Vectors that are pending and deliverable now; clears their bits.
    pub fn take_deliverable(&mut self) -> Vec<u16> {
        let ready: Vec<u16> = (0..self.vectors())
            .filter(|v| self.is_pending(*v) && self.can_deliver(*v))
            .collect();
        for v in &ready {
            self.set_pending(*v, false);
        }
        ready
    }

    pub fn reset(&mut self) {
        *self = MsixState::new(self.vectors());
    }
}

/// Copies the bytes of `value` that an access of `data.len()` at `offset`
/// (relative to the dword/qword holding it) sees.
/// `data` from byte `start` of `value` (little-endian), zeros past its end.
fn fill(data: &mut [u8], start: usize, value: u64) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(start + i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_start_masked_and_need_enable() {
        let mut m = MsixState::new(4);
        assert!(!m.can_deliver(0));
        m.table_write(12, &0u32.to_le_bytes());
        assert!(!m.can_deliver(0), "MSI-X not enabled yet");
        m.set_control(1 << 15);
        assert!(m.can_deliver(0));
        m.set_control((1 << 15) | (1 << 14));
        assert!(!m.can_deliver(0), "function mask");
    }

    #[test]
    fn table_writes_report_changes() {
        let mut m = MsixState::new(2);
        assert_eq!(
            m.table_write(16, &0xfee0_0000u32.to_le_bytes()),
            MsixChange::Message(1)
        );
        assert_eq!(
            m.table_write(24, &0x41u32.to_le_bytes()),
            MsixChange::Message(1)
        );
        assert_eq!(
            m.table_write(28, &0u32.to_le_bytes()),
            MsixChange::Unmasked(1)
        );
        assert_eq!(m.table[1].address(), 0xfee0_0000);
        let mut b = [0u8; 4];
        m.table_read(24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x41);
        // Qword write of address.
        assert_eq!(
            m.table_write(0, &0x0000_0001_fee0_1000u64.to_le_bytes()),
            MsixChange::Message(0)
        );
        assert_eq!(m.table[0].address(), 0x1_fee0_1000);
    }

    #[test]
    fn out_of_range_and_odd_accesses_are_ignored() {
        let mut m = MsixState::new(1);
        assert_eq!(m.table_write(16, &[1, 2, 3, 4]), MsixChange::None);
        assert_eq!(m.table_write(1, &[1, 2, 3, 4]), MsixChange::None);
        assert_eq!(m.table_write(0, &[1, 2]), MsixChange::None);
        let mut b = [0u8; 4];
        m.table_read(64, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    /// A 32-bit read of a PBA qword's upper half shows the upper half (it
    /// showed the lower one again).
    #[test]
    fn pba_halves_read_as_dwords() {
        let mut m = MsixState::new(128);
        m.set_pending(64 + 1, true);
        m.set_pending(64 + 34, true);
        let mut w = [0u8; 4];
        m.pba_read(8, &mut w);
        assert_eq!(u32::from_le_bytes(w), 2, "lower half of qword 1");
        m.pba_read(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), 4, "upper half of qword 1");
        m.pba_read(4, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0, "upper half of qword 0");
    }

    #[test]
    fn pending_bits_deliver_on_unmask() {
        let mut m = MsixState::new(70);
        m.set_control(1 << 15);
        m.set_pending(65, true);
        let mut b = [0u8; 8];
        m.pba_read(8, &mut b);
        assert_eq!(u64::from_le_bytes(b), 2);
        assert!(m.take_deliverable().is_empty(), "still masked");
        m.table_write(65 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(m.take_deliverable(), vec![65]);
        assert!(!m.is_pending(65));
    }
}
