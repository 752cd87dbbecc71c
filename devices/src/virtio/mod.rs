//! virtio 1.x devices and their PCI transport.

#[cfg(any(test, feature = "harness"))]
pub mod driver_ring;
pub mod fs;
pub mod net;
mod pci;
mod queue_config;
pub mod ring;
mod spawner;
pub mod spec;
mod status;

pub use pci::{layout as pci_layout, FailedActivations, VirtioPciDevice, VIRTIO_PCI_BAR_SIZE};
pub use spawner::{ConfineError, Spawner};

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::vm_ops::GuestMemoryFault;

pub use spec::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1};

/// Guest memory as the device's workers see it. Atomic so a region (the
/// DAX window) can be added while workers run.
pub type GuestMemoryShared = GuestMemoryAtomic<GuestMemoryMmap>;

/// Raises a virtio interrupt: an MSI-X vector of the transport.
pub trait VirtioInterrupt: Send + Sync {
    fn notify(&self, vector: u16);
}

/// A queue's MSI-X vector, or the configuration-change one. The driver may
/// change it while the device runs (the spec locks only the ring's
/// registers after DRIVER_OK), so the transport and the device's worker
/// share it, and the worker reads it for each interrupt.
#[derive(Clone, Debug)]
pub struct QueueVector(Arc<AtomicU16>);

impl QueueVector {
    pub fn new(vector: u16) -> Self {
        QueueVector(Arc::new(AtomicU16::new(vector)))
    }

    pub fn get(&self) -> u16 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, vector: u16) {
        self.0.store(vector, Ordering::Relaxed)
    }
}

/// PCI bus mastering (bit 2 of the command register): the driver clears it
/// to stop the device touching guest memory, and an MSI is such a write
/// too. Queue workers check it before each ring access and interrupt.
#[derive(Clone, Debug, Default)]
pub struct BusMaster(Arc<AtomicBool>);

impl BusMaster {
    pub fn new(on: bool) -> Self {
        BusMaster(Arc::new(AtomicBool::new(on)))
    }

    pub fn on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Returns whether it was on.
    pub fn set(&self, on: bool) -> bool {
        self.0.swap(on, Ordering::AcqRel)
    }
}

/// A queue the driver set up, handed to the device on activation.
pub struct ActiveQueue {
    pub index: usize,
    pub queue: Queue,
    /// Signalled (by KVM, through an ioeventfd) when the driver kicks.
    pub kick: EventFd,
    pub vector: QueueVector,
}

pub struct Activation {
    pub mem: GuestMemoryShared,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub bus_master: BusMaster,
    pub features: u64,
    /// The vector of configuration-change interrupts, for a device whose
    /// configuration changes on its own (a network card's link status).
    pub config_vector: QueueVector,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("no request queue is ready; the device needs at least one")]
    NoRequestQueue,
    #[error("the driver did not set up the {0} queues")]
    MissingQueue(&'static str),
    #[error("the device has no backend (it was lost with a failed worker)")]
    NoBackend,
    #[error("cannot start the device: no stop event: {0}")]
    StopEvent(#[source] std::io::Error),
    #[error("cannot start the device: cannot share its stop event: {0}")]
    CloneStop(#[source] std::io::Error),
    #[error("cannot start the device: cannot start a queue worker: {0}")]
    Spawn(#[source] std::io::Error),
}

impl ActivateError {
    /// Whether the driver is to blame (it set the device up wrongly), as
    /// opposed to the host running out of descriptors or threads.
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            ActivateError::NoRequestQueue | ActivateError::MissingQueue(_)
        )
    }
}

/// A virtio shared memory region: host memory the guest sees through a
/// BAR (for virtio-fs, the DAX window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedMemoryRegion {
    /// The region's shmid (virtio-fs: 0, the cache).
    pub id: u8,
    pub host_addr: u64,
    /// A power of two.
    pub size: u64,
    pub readonly: bool,
}

/// A virtio device behind some transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Features the device offers, `VIRTIO_F_VERSION_1` included.
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> Vec<u16>;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Counts the device's own changes to its configuration, so that the
    /// transport's `config_generation` moves with them (virtio 1.2,
    /// 4.1.4.3.1).
    fn config_changes(&self) -> u8 {
        0
    }
    /// The device's shared memory region, if it has one.
    fn shared_memory(&self) -> Option<SharedMemoryRegion> {
        None
    }
    /// The guest now sees the shared memory region at `addr` (`None`: not
    /// at all, memory decode is off).
    /// `view` is the device's own view of guest memory (what its workers
    /// read through): the device moves the region in it.
    fn shared_memory_shown(&mut self, _view: &GuestMemoryShared, _addr: Option<u64>) {}
    /// What repairs the shared memory region when KVM cannot reach it.
    fn memory_fault_hook(&self) -> Option<Arc<dyn GuestMemoryFault>> {
        None
    }
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: stop serving and forget the queues.
    fn reset(&mut self);
}
