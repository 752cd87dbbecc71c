//! What devices may ask of the VM, without seeing KVM: ioeventfds on their
//! notify addresses, MSI routes for their irqfds, and memory slots for
//! shared-memory BARs. `vmm` implements it. And the other way round, what
//! the VM asks of a device whose memory the guest sees: to repair it when
//! KVM cannot reach it (`GuestMemoryFault`).

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

/// A device that puts host memory in the guest's physical address space
/// (a shared-memory BAR) and can repair it: memory KVM could not reach
/// (a file truncated under a mapping, an unmapped part of a window). The
/// vCPUs and the control loop call every device's hook without knowing
/// what is behind it.
pub trait GuestMemoryFault: Send + Sync {
    /// KVM could not reach guest memory (at `gpa`, when KVM says where):
    /// make what is this device's reachable. Returns the bytes repaired;
    /// 0 means the fault was not this device's (or already repaired).
    fn on_fault(&self, gpa: Option<u64>) -> u64;

    /// Once a second, from the control loop: repair what KVM may be
    /// retrying without saying so. Must not wait on the device's workers.
    fn on_tick(&self) {}
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
