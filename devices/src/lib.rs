//! Everything a Ferry guest can touch: the I/O and MMIO buses and the
//! devices on them. Devices get narrow handles from `vmm` (an `EventFd` to
//! raise an interrupt, a callback to end the VM) and never see KVM itself.

pub mod bus;
#[cfg(any(test, feature = "harness"))]
pub mod fake_vm;
pub mod legacy;
pub mod pci;
pub mod virtio;
pub mod vm_ops;

pub use bus::{Bus, BusDevice, BusError};
