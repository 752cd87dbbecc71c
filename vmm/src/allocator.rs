//! Hands out guest physical ranges for BARs, naturally aligned, from a
//! window of the memory map.

#[derive(Debug, thiserror::Error)]
#[error("no room for a {size:#x}-byte BAR in the MMIO window {start:#x}..{end:#x}")]
pub struct OutOfSpace {
    size: u64,
    start: u64,
    end: u64,
}

pub struct AddressAllocator {
    start: u64,
    next: u64,
    end: u64,
}

impl AddressAllocator {
    pub fn new(start: u64, size: u64) -> Self {
        AddressAllocator {
            start,
            next: start,
            end: start + size,
        }
    }

    /// A `size`-byte range aligned to `size` (a power of two).
    pub fn allocate(&mut self, size: u64) -> Result<u64, OutOfSpace> {
        let err = OutOfSpace {
            size,
            start: self.start,
            end: self.end,
        };
        if !size.is_power_of_two() {
            return Err(err);
        }
        let addr = self.next.checked_next_multiple_of(size).ok_or(err)?;
        match addr.checked_add(size) {
            Some(end) if end <= self.end => {
                self.next = end;
                Ok(addr)
            }
            _ => Err(OutOfSpace {
                size,
                start: self.start,
                end: self.end,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_bounded() {
        let mut a = AddressAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x100).unwrap(), 0x1000);
        assert_eq!(a.allocate(0x8000).unwrap(), 0x8000);
        assert_eq!(a.allocate(0x1000).unwrap(), 0x10000);
        assert!(a.allocate(0x8000).is_err());
        assert!(a.allocate(0x300).is_err());
    }
}
