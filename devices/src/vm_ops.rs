//! What devices may ask of the VM, without seeing KVM: ioeventfds on their
//! notify addresses, MSI routes for their irqfds, and memory slots for
//! shared-memory BARs. `vmm` implements it.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An MSI message as the guest programmed it into an MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// Host memory shown to the guest at a guest physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestMapping {
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
    /// Guest writes exit to the VMM (and are dropped) instead of landing.
    pub readonly: bool,
}

pub trait VmOps: Send + Sync {
    /// Makes a guest write to MMIO `addr` signal `evt` inside KVM, with no
    /// exit to user space.
    fn register_ioevent(&self, evt: &EventFd, addr: u64) -> io::Result<()>;
    fn unregister_ioevent(&self, evt: &EventFd, addr: u64) -> io::Result<()>;
    /// Reserves a GSI for an MSI vector and attaches `irqfd` to it.
    fn add_msi_vector(&self, irqfd: &EventFd) -> io::Result<u32>;
    /// Points `gsi` at `msg`.
    fn route_msi(&self, gsi: u32, msg: MsiMessage) -> io::Result<()>;
    /// A memory slot number of the device's own, not yet showing anything.
    fn new_memory_slot(&self) -> u32;
    /// Makes `slot` show `mapping`, or nothing with `None`.
    fn set_memory_slot(&self, slot: u32, mapping: Option<GuestMapping>) -> io::Result<()>;
}
