//! What devices may ask of the VM, without seeing KVM: ioeventfds on their
//! notify addresses and MSI routes for their irqfds. `vmm` implements it.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An MSI message as the guest programmed it into an MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
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
}
