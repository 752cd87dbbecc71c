//! Address-range dispatch for port I/O and MMIO exits.
//!
//! Each device registers the ranges it owns; a vCPU exit looks its address up
//! and calls the device with the offset into its range. Each device has its
//! own lock, so vCPUs touching different devices never wait on each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// A string read (`rep insb`) that starts at `offset` but is longer
    /// than the range: KVM hands the whole repetition over as one read.
    /// Returns false (the default) for a device that has no such port.
    fn read_bulk(&mut self, _offset: u64, _data: &mut [u8]) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("no device at {0:#x}")]
    NotFound(u64),
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    // base -> (len, device)
    ranges: RwLock<BTreeMap<u64, (u64, SharedDevice)>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let overlaps_prev = ranges
            .range(..=base)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        let overlaps_next = ranges.range(base..base + len).next().is_some();
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        ranges.insert(base, (len, device));
        Ok(())
    }

    /// Removes the range that starts at `base` (a BAR being moved, say).
    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges
            .remove(&base)
            .map(|_| ())
            .ok_or(BusError::NotFound(base))
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, (len, dev)) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must lie inside the range.
        (offset.checked_add(size as u64)? <= *len).then(|| (offset, dev.clone()))
    }

    /// Dispatches a read; returns false when no device owns `addr`. A read
    /// that runs past its device's range is offered to the device as a
    /// string read ([`BusDevice::read_bulk`]).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        if let Some((offset, dev)) = self.find(addr, data.len()) {
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(offset, data);
            return true;
        }
        match self.find(addr, 1) {
            Some((offset, dev)) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_bulk(offset, data),
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write and echoes the offset on reads.
    #[derive(Default)]
    struct Probe {
        last: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offset() {
        let bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(probe.lock().unwrap().last, vec![(7, vec![9])]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn access_straddling_the_end_is_not_dispatched() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x1000, 4)
            .unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0x1000, &mut b));
        // Probe takes no string reads: the straddling read finds nobody.
        assert!(!bus.read(0x1002, &mut b));
    }

    /// Takes string reads at offset 1 only.
    struct Streamer;

    impl BusDevice for Streamer {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(1);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
        fn read_bulk(&mut self, offset: u64, data: &mut [u8]) -> bool {
            data.fill(2);
            offset == 1
        }
    }

    #[test]
    fn a_read_past_the_range_goes_to_the_device_as_a_string_read() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Streamer)), 0xf0, 4).unwrap();
        let mut kb = vec![0u8; 1024];
        assert!(bus.read(0xf1, &mut kb));
        assert!(kb.iter().all(|&b| b == 2));
        let mut b = [0u8; 2];
        assert!(bus.read(0xf1, &mut b), "inside the range: a plain read");
        assert_eq!(b, [1, 1]);
        assert!(!bus.read(0xf2, &mut kb), "refused by the device");
        assert!(!bus.read(0xef, &mut kb), "no device at the first port");
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x108, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf0, 0x20),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(dev(), 0x110, 0x10).is_ok());
        assert!(bus.insert(dev(), 0xf0, 0x10).is_ok());
        assert!(matches!(
            bus.insert(dev(), 0x0, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn remove_frees_the_range() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x100, 0x10)
            .unwrap();
        bus.remove(0x100).unwrap();
        assert!(!bus.write(0x100, &[1]));
        assert_eq!(bus.remove(0x100), Err(BusError::NotFound(0x100)));
    }
}
