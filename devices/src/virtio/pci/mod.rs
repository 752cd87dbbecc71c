//! virtio-pci, modern (1.x) only: common, notify, ISR and device
//! configuration in BAR 0, plus the MSI-X table and PBA there too. Each
//! queue's notify address is an ioeventfd, so a guest kick wakes the queue's
//! worker inside KVM without a vCPU exit to user space. A device with a
//! shared memory region (the virtio-fs DAX window) gets it as BAR 2, a
//! 64-bit prefetchable BAR backed by a KVM memory slot.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::queue_config::{set_half, QueueConfig, QueueConfigError, NO_VECTOR};
use super::spec::{
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use super::status::{self, FeaturesOk, Transition};
use super::{
    ActivateError, Activation, ActiveQueue, BusMaster, GuestMemoryShared, QueueVector,
    SharedMemoryRegion, VirtioDevice, VirtioInterrupt,
};
use crate::pci::{BarKind, MsixChange, MsixState, PciConfig, PciDevice, MSIX_ENTRY_SIZE};
use crate::vm_ops::{GuestMapping, GuestMemoryFault, MsiMessage, VmOps};

pub mod layout;

use layout::bar0::{
    DEVICE as DEVICE_OFFSET, DEVICE_SIZE, ISR as ISR_OFFSET, ISR_SIZE, MSIX_PBA as MSIX_PBA_OFFSET,
    MSIX_PBA_SIZE, MSIX_TABLE as MSIX_TABLE_OFFSET, NOTIFY as NOTIFY_OFFSET, NOTIFY_MULTIPLIER,
    NOTIFY_SIZE,
};
use layout::common::*;
use layout::{cfg_type, VirtioPciCap, VirtioPciCap64, VirtioPciNotifyCap, CAP_VENDOR};

pub const VIRTIO_PCI_BAR_SIZE: u64 = layout::bar0::SIZE;
const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

const CAP_MSIX: u8 = 0x11;
const CONFIG_BAR: usize = 0;
const CONFIG_BAR_INDEX: u8 = 0;
const SHM_BAR: usize = 2;
const SHM_BAR_INDEX: u8 = 2;
const COMMAND_OFFSET: usize = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// Delivers queue and config interrupts through MSI-X irqfds, or records
/// them as pending while masked.
pub struct MsixInterrupt {
    msix: Arc<Mutex<MsixState>>,
    irqfds: Vec<EventFd>,
}

impl MsixInterrupt {
    fn fire(&self, vector: u16) {
        if let Some(fd) = self.irqfds.get(usize::from(vector)) {
            if let Err(e) = fd.write(1) {
                log::warn!("virtio-pci: irqfd for vector {vector}: {e}");
            }
        }
    }

    /// Fires the pending vectors that may be delivered now. Under the
    /// lock, as in `notify`, so none fires after a mask that follows.
    fn deliver_pending(&self) {
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        for v in msix.take_deliverable() {
            self.fire(v);
        }
    }
}

impl VirtioInterrupt for MsixInterrupt {
    fn notify(&self, vector: u16) {
        if vector == NO_VECTOR {
            return;
        }
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if usize::from(vector) >= msix.table.len() {
            return;
        }
        // Fired with the lock held: the guest's mask write takes the same
        // lock, so a vector never fires after the write that masked it
        // (an irqfd write does not block).
        if msix.can_deliver(vector) {
            self.fire(vector);
        } else {
            msix.set_pending(vector, true);
        }
    }
}

pub struct VirtioPciDevice {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    vm: Arc<dyn VmOps>,
    mem: GuestMemoryShared,
    bar_addr: u64,
    shm: Option<ShmBar>,
    msix_cap: usize,
    interrupt: Arc<MsixInterrupt>,
    gsis: Vec<u32>,
    kicks: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    config_vector: QueueVector,
    /// The command register's bus master bit, shared with the workers.
    bus_master: BusMaster,
    queue_select: u16,
    /// A status write that cleared bits was reported once.
    warned_status_clear: bool,
    failed_activations: FailedActivations,
}

/// DRIVER_OK writes that did not start the device, by who was to blame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailedActivations {
    pub by_guest: u64,
    pub by_host: u64,
}

/// The shared memory region's BAR and the memory slot behind it.
struct ShmBar {
    slot: u32,
    /// The region at the BAR's current address.
    mapping: GuestMapping,
    /// What the slot shows now.
    shown: Option<GuestMapping>,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio-pci: {0}")]
    Io(#[from] std::io::Error),
    #[error("virtio-pci: the device has a shared memory region but no BAR address for it")]
    NoShmAddress,
    #[error("virtio-pci: {0} queues need more MSI-X vectors than one BAR holds")]
    TooManyQueues(usize),
    #[error("virtio-pci: device type {0} has no PCI device id")]
    DeviceType(u32),
}

impl VirtioPciDevice {
    /// Wraps `device` at BAR 0 address `bar_addr` (aligned to
    /// [`VIRTIO_PCI_BAR_SIZE`]), registering ioeventfds and MSI vectors. A
    /// device with a shared memory region needs `shm_addr` (aligned to the
    /// region's size, above RAM) for it.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        vm: Arc<dyn VmOps>,
        mem: GuestMemoryShared,
        bar_addr: u64,
        shm_addr: Option<u64>,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes();
        // One MSI-X vector per queue and one for configuration changes, all
        // in the table's part of BAR 0.
        let too_many = || VirtioPciError::TooManyQueues(max_sizes.len());
        let vectors = u16::try_from(max_sizes.len() + 1).map_err(|_| too_many())?;
        if u64::from(vectors) * MSIX_ENTRY_SIZE > MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET {
            return Err(too_many());
        }
        let device_id = u16::try_from(device.device_type())
            .ok()
            .and_then(|t| VIRTIO_PCI_DEVICE_BASE.checked_add(t))
            .ok_or(VirtioPciError::DeviceType(device.device_type()))?;
        let mut config = PciConfig::new(VIRTIO_PCI_VENDOR, device_id, 0x01, 0x80, 1);
        config.set_subsystem(VIRTIO_PCI_VENDOR, 0x40);
        config.add_bar(CONFIG_BAR, bar_addr, VIRTIO_PCI_BAR_SIZE, BarKind::Mmio32);
        let bar = CONFIG_BAR_INDEX;
        for (cfg_type, offset, len) in [
            (cfg_type::COMMON, layout::bar0::COMMON, layout::common::SIZE),
            (cfg_type::ISR, ISR_OFFSET, ISR_SIZE),
            (cfg_type::DEVICE, DEVICE_OFFSET, DEVICE_SIZE),
        ] {
            let cap = VirtioPciCap::new(cfg_type, bar, 0, offset, len, layout::CAP_LEN);
            config.add_capability(CAP_VENDOR, layout::body(&cap), &[]);
        }
        let notify = VirtioPciNotifyCap {
            cap: VirtioPciCap::new(
                cfg_type::NOTIFY,
                bar,
                0,
                NOTIFY_OFFSET,
                NOTIFY_SIZE,
                layout::NOTIFY_CAP_LEN,
            ),
            notify_off_multiplier: NOTIFY_MULTIPLIER.to_le(),
        };
        config.add_capability(CAP_VENDOR, layout::body(&notify), &[]);
        let mut msix = Vec::new();
        // Table size (N - 1), then the table's and the PBA's offsets in BAR 0
        // (BIR 0 in the low bits).
        msix.extend_from_slice(&(vectors - 1).to_le_bytes());
        msix.extend_from_slice(&((MSIX_TABLE_OFFSET & 0xffff_ffff) as u32).to_le_bytes());
        msix.extend_from_slice(&((MSIX_PBA_OFFSET & 0xffff_ffff) as u32).to_le_bytes());
        let msix_cap = config.add_capability(CAP_MSIX, &msix, &[0, 0xc0]);
        let shm = match device.shared_memory() {
            None => None,
            Some(region) => {
                let addr = shm_addr.ok_or(VirtioPciError::NoShmAddress)?;
                Some(add_shm_bar(&mut config, vm.as_ref(), region, addr))
            }
        };

        let mut irqfds = Vec::new();
        let mut gsis = Vec::new();
        for _ in 0..vectors {
            let fd = EventFd::new(libc::EFD_NONBLOCK)?;
            gsis.push(vm.add_msi_vector(&fd)?);
            irqfds.push(fd);
        }
        let kicks = (0..max_sizes.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, kick) in kicks.iter().enumerate() {
            vm.register_ioevent(kick, notify_addr(bar_addr, i))?;
        }
        Ok(VirtioPciDevice {
            config,
            device,
            vm,
            mem,
            bar_addr,
            shm,
            msix_cap,
            interrupt: Arc::new(MsixInterrupt {
                msix: Arc::new(Mutex::new(MsixState::new(vectors))),
                irqfds,
            }),
            gsis,
            kicks,
            queues: max_sizes.into_iter().map(QueueConfig::new).collect(),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            warned_status_clear: false,
            config_vector: QueueVector::new(NO_VECTOR),
            bus_master: BusMaster::default(),
            queue_select: 0,
            failed_activations: FailedActivations::default(),
        })
    }

    /// What repairs the device's shared memory when KVM cannot reach it.
    pub fn memory_fault_hook(&self) -> Option<Arc<dyn GuestMemoryFault>> {
        self.device.memory_fault_hook()
    }

    /// How many activations failed so far, and whose fault each was.
    pub fn failed_activations(&self) -> FailedActivations {
        self.failed_activations
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device.features();
        let value: u64 = match offset {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            CONFIG_MSIX_VECTOR => u64::from(self.config_vector.get()),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => u64::from(self.status),
            CONFIG_GENERATION => u64::from(
                self.config_generation
                    .wrapping_add(self.device.config_changes()),
            ),
            QUEUE_SELECT => u64::from(self.queue_select),
            // Queue i is notified at NOTIFY + i * NOTIFY_MULTIPLIER, so each
            // queue's notify offset is its index.
            QUEUE_NOTIFY_OFF => u64::from(self.queue_select),
            _ => match self.selected_queue() {
                None => 0,
                Some(q) => match offset {
                    QUEUE_SIZE => u64::from(q.size),
                    QUEUE_MSIX_VECTOR => u64::from(q.vector.get()),
                    QUEUE_ENABLE => u64::from(q.ready),
                    QUEUE_DESC => q.desc & 0xffff_ffff,
                    QUEUE_DESC_HI => q.desc >> 32,
                    QUEUE_AVAIL => q.avail & 0xffff_ffff,
                    QUEUE_AVAIL_HI => q.avail >> 32,
                    QUEUE_USED => q.used & 0xffff_ffff,
                    QUEUE_USED_HI => q.used >> 32,
                    _ => 0,
                },
            },
        };
        put(data, value);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        // Registers are 1, 2 or 4 bytes wide: the access's low bytes.
        let value = get(data);
        let v32 = (value & 0xffff_ffff) as u32;
        let v16 = (value & 0xffff) as u16;
        let configurable = self.status & STATUS_DRIVER_OK == 0;
        // A vector past the MSI-X table reads back as NO_VECTOR: that is how
        // the driver learns the device could not take it (virtio 1.2,
        // 4.1.5.1.2).
        let vector = if usize::from(v16) < self.gsis.len() {
            v16
        } else {
            NO_VECTOR
        };
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v32,
            DRIVER_FEATURE if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => set_half(&mut self.driver_features, false, v32),
                    1 => set_half(&mut self.driver_features, true, v32),
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => self.config_vector.set(vector),
            DEVICE_STATUS => self.write_status((value & 0xff) as u8),
            QUEUE_SELECT => self.queue_select = v16,
            _ => {
                let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
                    return;
                };
                match offset {
                    QUEUE_SIZE if configurable => q.size = v16,
                    QUEUE_MSIX_VECTOR => q.vector.set(vector),
                    QUEUE_ENABLE if configurable => q.ready = v16 == 1,
                    QUEUE_DESC if configurable => set_half(&mut q.desc, false, v32),
                    QUEUE_DESC_HI if configurable => set_half(&mut q.desc, true, v32),
                    QUEUE_AVAIL if configurable => set_half(&mut q.avail, false, v32),
                    QUEUE_AVAIL_HI if configurable => set_half(&mut q.avail, true, v32),
                    QUEUE_USED if configurable => set_half(&mut q.used, false, v32),
                    QUEUE_USED_HI if configurable => set_half(&mut q.used, true, v32),
                    _ => {}
                }
            }
        }
    }

    fn write_status(&mut self, value: u8) {
        let old = self.status;
        let offered = self.device.features();
        let wanted = self.driver_features;
        let acceptable = || wanted & !offered == 0 && wanted & VIRTIO_F_VERSION_1 != 0;
        let (new, features, activate) = match status::next(old, value, acceptable) {
            Transition::Reset => {
                self.reset();
                return;
            }
            Transition::Ignore { cleared } => {
                if !std::mem::replace(&mut self.warned_status_clear, true) {
                    log::warn!(
                        "virtio-pci: driver wrote status {value:#x} over {old:#x}, clearing \
                         bits {cleared:#x}; ignored (only a write of 0 resets)"
                    );
                }
                return;
            }
            Transition::Set {
                status,
                features,
                activate,
            } => (status, features, activate),
        };
        match features {
            Some(FeaturesOk::Refused) => log::warn!(
                "virtio-pci: driver features {wanted:#x} not acceptable (offered {offered:#x})"
            ),
            Some(FeaturesOk::Accepted) => {
                log::debug!("virtio-pci: negotiated features {wanted:#x}")
            }
            None => {}
        }
        self.status = new;
        if activate {
            if let Err(e) = self.activate() {
                // A driver's mistake is the guest's business; running out of
                // descriptors or threads is the host operator's.
                let level = if e.is_guest_fault() {
                    self.failed_activations.by_guest += 1;
                    log::Level::Warn
                } else {
                    self.failed_activations.by_host += 1;
                    log::Level::Error
                };
                log::log!(
                    level,
                    "virtio-pci: device {} not started: {e}",
                    self.device.device_type()
                );
                self.status |= STATUS_NEEDS_RESET;
                self.config_generation = self.config_generation.wrapping_add(1);
                self.interrupt.notify(self.config_vector.get());
            }
        }
    }

    fn activate(&mut self) -> Result<(), DriverOkError> {
        if self.status & STATUS_FEATURES_OK == 0 {
            return Err(DriverOkError::NoFeaturesOk);
        }
        let event_idx = self.driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                continue;
            }
            let queue = cfg
                .build(event_idx)
                .map_err(|source| DriverOkError::Queue { index, source })?;
            let kick = self.kicks[index]
                .try_clone()
                .map_err(|source| DriverOkError::CloneKick { index, source })?;
            log::debug!(
                "virtio-pci: queue {index}: size {}, vector {}",
                cfg.size,
                cfg.vector.get()
            );
            queues.push(ActiveQueue {
                index,
                queue,
                kick,
                vector: cfg.vector.clone(),
            });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            bus_master: self.bus_master.clone(),
            features: self.driver_features,
            config_vector: self.config_vector.clone(),
        };
        Ok(self.device.activate(activation)?)
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        // Kicks that raced with the reset must not wake the next activation.
        for k in &self.kicks {
            let _ = k.read();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.status = 0;
        self.config_vector.set(NO_VECTOR);
        self.queue_select = 0;
    }

    fn msix_table_write(&mut self, offset: u64, data: &[u8]) {
        let change = self
            .interrupt
            .msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .table_write(offset, data);
        let vector = match change {
            MsixChange::Message(v) => v,
            MsixChange::Unmasked(v) => v,
            MsixChange::None => return,
        };
        self.route_vector(vector);
        self.interrupt.deliver_pending();
    }

    fn route_vector(&self, vector: u16) {
        let entry = {
            let msix = self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            msix.table[usize::from(vector)]
        };
        let msg = MsiMessage {
            addr: entry.address(),
            data: entry.data,
        };
        if let Err(e) = self.vm.route_msi(self.gsis[usize::from(vector)], msg) {
            log::warn!("virtio-pci: cannot route MSI vector {vector}: {e}");
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        if offset < COMMAND_OFFSET + 2 && offset + len > COMMAND_OFFSET {
            self.update_shm();
            let on = self.config.command() & COMMAND_BUS_MASTER != 0;
            if on && !self.bus_master.set(on) {
                // Workers skipped what came meanwhile: wake each to look.
                for k in &self.kicks {
                    let _ = k.write(1);
                }
            }
        }
        let control = self.msix_cap + 2;
        if offset < control + 2 && offset + len > control {
            let value = self.config.read_u16(control);
            let unblocked = self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_control(value);
            if unblocked {
                self.interrupt.deliver_pending();
            }
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        // The shared memory BAR is a memory slot; an access reaches here only
        // while it is being moved (or for a read-only region's writes).
        if bar != CONFIG_BAR {
            data.fill(0);
            return;
        }
        match offset {
            o if o < layout::bar0::COMMON + layout::common::SIZE => self.read_common(o, data),
            o if (ISR_OFFSET..ISR_OFFSET + ISR_SIZE).contains(&o) => data.fill(0),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .table_read(o - MSIX_TABLE_OFFSET, data),
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + MSIX_PBA_SIZE).contains(&o) => self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pba_read(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != CONFIG_BAR {
            return;
        }
        match offset {
            o if o < layout::bar0::COMMON + layout::common::SIZE => self.write_common(o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_SIZE).contains(&o) => {
                // Reached only when the ioeventfd is not (yet) registered.
                let queue = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                let kick = usize::try_from(queue).ok().and_then(|q| self.kicks.get(q));
                if let Some(k) = kick {
                    let _ = k.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix_table_write(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, _old: u64, new: u64) {
        if bar == SHM_BAR {
            if let Some(shm) = self.shm.as_mut() {
                shm.mapping.guest_addr = new;
            }
            self.update_shm();
            return;
        }
        // The ioeventfds sit where they were last registered, which is not
        // always `old`: sizing passes through an all-ones address.
        let registered = self.bar_addr;
        if registered == new {
            return;
        }
        for (i, kick) in self.kicks.iter().enumerate() {
            if let Err(e) = self.vm.unregister_ioevent(kick, notify_addr(registered, i)) {
                log::warn!(
                    "virtio-pci: unregister ioeventfd at {:#x}: {e}",
                    notify_addr(registered, i)
                );
            }
            if let Err(e) = self.vm.register_ioevent(kick, notify_addr(new, i)) {
                log::warn!(
                    "virtio-pci: register ioeventfd at {:#x}: {e}",
                    notify_addr(new, i)
                );
            }
        }
        self.bar_addr = new;
    }
}

impl VirtioPciDevice {
    /// Shows the shared memory region at its BAR while memory decode is on,
    /// and hides it while off (BAR sizing turns decode off).
    fn update_shm(&mut self) {
        let decode = self.config.command() & COMMAND_MEMORY != 0;
        let Some(shm) = self.shm.as_mut() else {
            return;
        };
        let want = decode.then_some(shm.mapping);
        if want == shm.shown {
            return;
        }
        match self.vm.set_memory_slot(shm.slot, want) {
            Ok(()) => shm.shown = want,
            Err(e) => {
                log::warn!(
                    "virtio-pci: shared memory at {:#x}: {e}",
                    shm.mapping.guest_addr
                );
                shm.shown = None;
            }
        }
        let shown = shm.shown.map(|m| m.guest_addr);
        self.device.shared_memory_shown(&self.mem, shown);
    }
}

/// Why a rising DRIVER_OK did not start the device.
#[derive(Debug, thiserror::Error)]
pub enum DriverOkError {
    #[error("DRIVER_OK without FEATURES_OK")]
    NoFeaturesOk,
    #[error("queue {index}: {source}")]
    Queue {
        index: usize,
        #[source]
        source: QueueConfigError,
    },
    #[error("queue {index}: cannot share its kick event: {source}")]
    CloneKick {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Device(#[from] ActivateError),
}

impl DriverOkError {
    /// Whether the driver is to blame, as opposed to the host.
    pub fn is_guest_fault(&self) -> bool {
        match self {
            DriverOkError::NoFeaturesOk => true,
            DriverOkError::Queue { source, .. } => source.is_guest_fault(),
            DriverOkError::CloneKick { .. } => false,
            DriverOkError::Device(e) => e.is_guest_fault(),
        }
    }
}

/// Declares `region` as BAR 2 at `addr` with its capability; the memory
/// slot shows it once the driver turns memory decode on.
fn add_shm_bar(
    config: &mut PciConfig,
    vm: &dyn VmOps,
    region: SharedMemoryRegion,
    addr: u64,
) -> ShmBar {
    config.add_bar(SHM_BAR, addr, region.size, BarKind::Mmio64Prefetchable);
    let cap = VirtioPciCap64 {
        cap: VirtioPciCap::new(
            cfg_type::SHARED_MEMORY,
            SHM_BAR_INDEX,
            region.id,
            0,
            region.size,
            layout::CAP64_LEN,
        ),
        offset_hi: 0,
        length_hi: ((region.size >> 32) as u32).to_le(),
    };
    config.add_capability(CAP_VENDOR, layout::body(&cap), &[]);
    ShmBar {
        slot: vm.new_memory_slot(),
        mapping: GuestMapping {
            guest_addr: addr,
            size: region.size,
            host_addr: region.host_addr,
            readonly: region.readonly,
        },
        shown: None,
    }
}

fn notify_addr(bar: u64, queue: usize) -> u64 {
    bar + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_MULTIPLIER)
}

/// Writes `value`'s low bytes into a register read of `data.len()` bytes.
fn put(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

fn get(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests;
