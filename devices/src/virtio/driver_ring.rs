//! The driver's side of a split virtqueue in plain guest memory, for the
//! device tests, harnesses and fuzz targets: a ready `Queue` at a layout,
//! chains written into the descriptor table and published in the available
//! ring, the used ring read back. Test code: it panics on bad memory.

use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::ring::SplitRingLayout;

/// A queue the device side sees as set up and ready at `layout`.
pub fn ready_queue(layout: &SplitRingLayout) -> Queue {
    let mut queue = Queue::new(layout.size).expect("a valid queue size");
    queue
        .try_set_desc_table_address(GuestAddress(layout.desc))
        .expect("an aligned descriptor table");
    queue
        .try_set_avail_ring_address(GuestAddress(layout.avail))
        .expect("an aligned available ring");
    queue
        .try_set_used_ring_address(GuestAddress(layout.used))
        .expect("an aligned used ring");
    queue.set_ready(true);
    queue
}

/// Writes `descs` (as given, `next` fields included) from table slot
/// `head`, makes `head` available and returns the used index the device
/// reaches by serving it.
pub fn place(
    mem: &GuestMemoryMmap,
    layout: &SplitRingLayout,
    head: u16,
    descs: &[RawDescriptor],
) -> u16 {
    for (i, d) in (0u16..).zip(descs) {
        mem.write_obj(*d, layout.desc_addr(head.wrapping_add(i)))
            .expect("guest memory");
    }
    let idx: u16 = mem.read_obj(layout.avail_idx_addr()).expect("guest memory");
    mem.write_obj(head, layout.avail_slot_addr(idx))
        .expect("guest memory");
    mem.write_obj(idx.wrapping_add(1), layout.avail_idx_addr())
        .expect("guest memory");
    idx.wrapping_add(1)
}

/// The used ring's index.
pub fn used_idx(mem: &GuestMemoryMmap, layout: &SplitRingLayout) -> u16 {
    mem.read_obj(layout.used_idx_addr()).expect("guest memory")
}

/// The used element for free-running index `idx`: (id, len).
pub fn used_elem(mem: &GuestMemoryMmap, layout: &SplitRingLayout, idx: u16) -> (u32, u32) {
    let at = layout.used_elem_addr(idx);
    let id = mem.read_obj(at).expect("guest memory");
    let len = mem.read_obj(at.unchecked_add(4)).expect("guest memory");
    (id, len)
}
