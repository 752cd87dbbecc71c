//! A PCI root bus reached through configuration mechanism 1 (ports
//! 0xCF8/0xCFC), the config-space model its devices share, and MSI-X.

mod config;
mod msix;
mod root;

pub use config::{BarKind, BarRegion, PciConfig};
pub use msix::{MsixChange, MsixState, MsixTableEntry, MSIX_ENTRY_SIZE};
pub use root::{PciError, PciHostBridge, PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_COUNT};

use crate::bus::BusDevice;

/// A guest-visible PCI function.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;

    /// Reads from BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes to BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// The guest moved BAR `bar` from `old` to `new`; the device re-points
    /// whatever it registered by address (ioeventfds, memory slots).
    fn bar_moved(&mut self, _bar: usize, _old: u64, _new: u64) {}

    /// A config-space write, after `PciConfig` applied it: devices with
    /// capabilities that act on writes (MSI-X control) hook in here.
    fn config_written(&mut self, _offset: usize, _len: usize) {}
}

/// Routes MMIO accesses in one BAR to its device.
pub struct BarRouter<D: PciDevice + ?Sized> {
    device: std::sync::Arc<std::sync::Mutex<D>>,
    bar: usize,
}

impl<D: PciDevice + ?Sized> BarRouter<D> {
    pub fn new(device: std::sync::Arc<std::sync::Mutex<D>>, bar: usize) -> Self {
        BarRouter { device, bar }
    }
}

impl<D: PciDevice + ?Sized> BusDevice for BarRouter<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_write(self.bar, offset, data);
    }
}
