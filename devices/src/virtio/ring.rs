//! Where the parts of a split virtqueue lie in guest memory (virtio 1.2,
//! 2.7): the descriptor table (16 bytes a descriptor), the available ring
//! (flags, idx, `size` u16 heads, used_event) and the used ring (flags,
//! idx, `size` (id, len) elements, avail_event). `virtio-queue` walks the
//! rings; this is the arithmetic Ferry needs beside it (the worker's DAX
//! checks) and that its test harness and fuzz targets use to play the
//! driver, so there is one copy of it.
//!
//! Addresses are guest-controlled: every sum wraps instead of panicking,
//! and a wrapped address simply fails the memory access that follows.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

/// Bytes of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Bytes of one used element (id, len).
const USED_ELEM_SIZE: u64 = 8;
/// Bytes of the flags and idx fields that open both rings.
const RING_HEADER: u64 = 4;
/// Bytes of the event field that closes both rings (EVENT_IDX).
const RING_EVENT: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitRingLayout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Entries in each ring (the queue size the driver chose).
    pub size: u16,
}

impl SplitRingLayout {
    /// The layout the driver gave `queue`.
    pub fn of(queue: &Queue) -> Self {
        SplitRingLayout {
            desc: queue.desc_table(),
            avail: queue.avail_ring(),
            used: queue.used_ring(),
            size: queue.size(),
        }
    }

    fn entries(&self) -> u64 {
        u64::from(self.size)
    }

    pub fn desc_table_len(&self) -> u64 {
        DESC_SIZE * self.entries()
    }

    /// The available ring without its closing used_event field.
    pub fn avail_ring_len_no_event(&self) -> u64 {
        RING_HEADER + 2 * self.entries()
    }

    pub fn avail_len(&self) -> u64 {
        self.avail_ring_len_no_event() + RING_EVENT
    }

    pub fn used_len(&self) -> u64 {
        RING_HEADER + USED_ELEM_SIZE * self.entries() + RING_EVENT
    }

    /// The three areas as (address, length).
    pub fn areas(&self) -> [(u64, u64); 3] {
        [
            (self.desc, self.desc_table_len()),
            (self.avail, self.avail_len()),
            (self.used, self.used_len()),
        ]
    }

    /// Descriptor `index` (taken modulo the size, as a driver's `next`
    /// is; a size of 0 has only descriptor 0).
    pub fn desc_addr(&self, index: u16) -> GuestAddress {
        let i = u64::from(index % self.size.max(1));
        GuestAddress(self.desc.wrapping_add(DESC_SIZE * i))
    }

    /// The available ring's idx field.
    pub fn avail_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.avail.wrapping_add(2))
    }

    /// The available ring's slot for free-running index `idx`.
    pub fn avail_slot_addr(&self, idx: u16) -> GuestAddress {
        let slot = u64::from(idx % self.size.max(1));
        GuestAddress(self.avail.wrapping_add(RING_HEADER + 2 * slot))
    }

    /// The used ring's idx field.
    pub fn used_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.used.wrapping_add(2))
    }

    /// The used element for free-running index `idx`: its id; the len
    /// follows 4 bytes later.
    pub fn used_elem_addr(&self, idx: u16) -> GuestAddress {
        let slot = u64::from(idx % self.size.max(1));
        GuestAddress(self.used.wrapping_add(RING_HEADER + USED_ELEM_SIZE * slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: SplitRingLayout = SplitRingLayout {
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
        size: 16,
    };

    #[test]
    fn sizes_are_the_spec_s() {
        // virtio 1.2, 2.7: 16 * size, 6 + 2 * size, 6 + 8 * size.
        assert_eq!(RING.areas(), [(0x1000, 256), (0x2000, 38), (0x3000, 134)]);
        assert_eq!(RING.avail_ring_len_no_event(), 36);
    }

    #[test]
    fn indexes_wrap_at_the_size() {
        assert_eq!(RING.desc_addr(17), GuestAddress(0x1010));
        assert_eq!(RING.avail_idx_addr(), GuestAddress(0x2002));
        assert_eq!(RING.avail_slot_addr(16 + 3), GuestAddress(0x2004 + 6));
        assert_eq!(RING.used_idx_addr(), GuestAddress(0x3002));
        assert_eq!(RING.used_elem_addr(u16::MAX), GuestAddress(0x3004 + 8 * 15));
    }

    #[test]
    fn guest_addresses_never_overflow() {
        let wild = SplitRingLayout {
            desc: u64::MAX,
            avail: u64::MAX - 1,
            used: u64::MAX - 3,
            size: 0,
        };
        assert_eq!(wild.desc_addr(7), GuestAddress(u64::MAX));
        assert_eq!(wild.avail_slot_addr(9), GuestAddress(2));
        assert_eq!(wild.used_elem_addr(9), GuestAddress(0));
        assert_eq!(wild.areas()[2], (u64::MAX - 3, 6));
    }
}
