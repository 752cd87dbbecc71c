//! Per-queue registers of the common configuration structure, as the driver
//! writes them before DRIVER_OK.

use virtio_queue::{Queue, QueueT};

use super::QueueVector;

pub const NO_VECTOR: u16 = 0xffff;

/// Why the registers describe no queue the device can serve. All but
/// `MaxSize` are the driver's doing.
#[derive(Debug, thiserror::Error)]
pub enum QueueConfigError {
    /// The device offered a maximum size virtio-queue refuses: a bug here.
    #[error("{0:?}")]
    MaxSize(#[source] virtio_queue::Error),
    #[error("size {size}: {source:?}")]
    Size {
        size: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("descriptor table {addr:#x}: {source:?}")]
    DescTable {
        addr: u64,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("available ring {addr:#x}: {source:?}")]
    AvailRing {
        addr: u64,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("used ring {addr:#x}: {source:?}")]
    UsedRing {
        addr: u64,
        #[source]
        source: virtio_queue::Error,
    },
}

impl QueueConfigError {
    /// Whether the driver wrote something invalid (as opposed to a fault
    /// of the device's own).
    pub fn is_guest_fault(&self) -> bool {
        !matches!(self, QueueConfigError::MaxSize(_))
    }
}

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
    pub fn build(&self, event_idx: bool) -> Result<Queue, QueueConfigError> {
        use QueueConfigError as E;
        let mut q = Queue::new(self.max_size).map_err(E::MaxSize)?;
        let size = self.size;
        q.try_set_size(size)
            .map_err(|source| E::Size { size, source })?;
        let addr = self.desc;
        q.try_set_desc_table_address(vm_memory::GuestAddress(addr))
            .map_err(|source| E::DescTable { addr, source })?;
        let addr = self.avail;
        q.try_set_avail_ring_address(vm_memory::GuestAddress(addr))
            .map_err(|source| E::AvailRing { addr, source })?;
        let addr = self.used;
        q.try_set_used_ring_address(vm_memory::GuestAddress(addr))
            .map_err(|source| E::UsedRing { addr, source })?;
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
        assert!(matches!(
            c.build(false),
            Err(QueueConfigError::Size { size: 3, .. })
        ));
        c.size = 512;
        let err = c.build(false).unwrap_err();
        assert!(err.is_guest_fault());
        assert!(err.to_string().starts_with("size 512: "), "{err}");
        c.size = 128;
        c.desc = 0x1000;
        c.avail = 0x2000;
        c.used = 0x3000;
        assert!(c.build(true).is_ok());
    }
}
