//! Per-queue registers of the common configuration structure, as the driver
//! writes them before DRIVER_OK.

use virtio_queue::{Queue, QueueT};

use super::QueueVector;

pub const NO_VECTOR: u16 = 0xffff;

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    /// Shared with the queue's worker once it runs.
    pub vector: QueueVector,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueConfig {
    pub fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            ready: false,
            vector: QueueVector::new(NO_VECTOR),
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    pub fn reset(&mut self) {
        *self = QueueConfig::new(self.max_size);
    }

    /// Builds the `virtio-queue` queue the device will serve, or says why
    /// the registers describe no valid queue.
    pub fn build(&self, event_idx: bool) -> Result<Queue, String> {
        let mut q = Queue::new(self.max_size).map_err(|e| format!("{e:?}"))?;
        q.try_set_size(self.size)
            .map_err(|e| format!("size {}: {e:?}", self.size))?;
        q.try_set_desc_table_address(vm_memory::GuestAddress(self.desc))
            .map_err(|e| format!("descriptor table {:#x}: {e:?}", self.desc))?;
        q.try_set_avail_ring_address(vm_memory::GuestAddress(self.avail))
            .map_err(|e| format!("available ring {:#x}: {e:?}", self.avail))?;
        q.try_set_used_ring_address(vm_memory::GuestAddress(self.used))
            .map_err(|e| format!("used ring {:#x}: {e:?}", self.used))?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Ok(q)
    }
}

/// Replaces the low or high half of a 64-bit register.
pub fn set_half(reg: &mut u64, high: bool, value: u32) {
    if high {
        *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *reg = (*reg & !0xffff_ffff) | u64::from(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves() {
        let mut r = 0;
        set_half(&mut r, false, 0x1000);
        set_half(&mut r, true, 0x2);
        assert_eq!(r, 0x2_0000_1000);
    }

    #[test]
    fn bad_size_is_rejected() {
        let mut c = QueueConfig::new(256);
        c.size = 3;
        assert!(c.build(false).is_err());
        c.size = 512;
        assert!(c.build(false).is_err());
        c.size = 128;
        c.desc = 0x1000;
        c.avail = 0x2000;
        c.used = 0x3000;
        assert!(c.build(true).is_ok());
    }
}
