//! The virtio-pci wire formats (virtio 1.2, 4.1.4), which virtio-bindings
//! does not carry: the vendor capabilities that tell the driver where each
//! structure lies in BAR 0 (or the shared memory BAR), the common
//! configuration's registers as named offsets of its `#[repr(C)]` layout,
//! and BAR 0's map.

use std::mem::{offset_of, size_of};

use vm_memory::ByteValued;

/// `struct virtio_pci_common_cfg`: the registers' offsets come from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciCommonCfg {
    pub device_feature_select: u32,
    pub device_feature: u32,
    pub driver_feature_select: u32,
    pub driver_feature: u32,
    pub config_msix_vector: u16,
    pub num_queues: u16,
    pub device_status: u8,
    pub config_generation: u8,
    pub queue_select: u16,
    pub queue_size: u16,
    pub queue_msix_vector: u16,
    pub queue_enable: u16,
    pub queue_notify_off: u16,
    pub queue_desc: u64,
    pub queue_driver: u64,
    pub queue_device: u64,
}

/// Offsets of the common configuration's registers; a 64-bit register's
/// high half is at `+ 4` (`_HI`).
pub mod common {
    use super::*;

    const fn at(offset: usize) -> u64 {
        offset as u64
    }

    pub const DEVICE_FEATURE_SELECT: u64 =
        at(offset_of!(VirtioPciCommonCfg, device_feature_select));
    pub const DEVICE_FEATURE: u64 = at(offset_of!(VirtioPciCommonCfg, device_feature));
    pub const DRIVER_FEATURE_SELECT: u64 =
        at(offset_of!(VirtioPciCommonCfg, driver_feature_select));
    pub const DRIVER_FEATURE: u64 = at(offset_of!(VirtioPciCommonCfg, driver_feature));
    pub const CONFIG_MSIX_VECTOR: u64 = at(offset_of!(VirtioPciCommonCfg, config_msix_vector));
    pub const NUM_QUEUES: u64 = at(offset_of!(VirtioPciCommonCfg, num_queues));
    pub const DEVICE_STATUS: u64 = at(offset_of!(VirtioPciCommonCfg, device_status));
    pub const CONFIG_GENERATION: u64 = at(offset_of!(VirtioPciCommonCfg, config_generation));
    pub const QUEUE_SELECT: u64 = at(offset_of!(VirtioPciCommonCfg, queue_select));
    pub const QUEUE_SIZE: u64 = at(offset_of!(VirtioPciCommonCfg, queue_size));
    pub const QUEUE_MSIX_VECTOR: u64 = at(offset_of!(VirtioPciCommonCfg, queue_msix_vector));
    pub const QUEUE_ENABLE: u64 = at(offset_of!(VirtioPciCommonCfg, queue_enable));
    pub const QUEUE_NOTIFY_OFF: u64 = at(offset_of!(VirtioPciCommonCfg, queue_notify_off));
    pub const QUEUE_DESC: u64 = at(offset_of!(VirtioPciCommonCfg, queue_desc));
    pub const QUEUE_DESC_HI: u64 = QUEUE_DESC + 4;
    pub const QUEUE_AVAIL: u64 = at(offset_of!(VirtioPciCommonCfg, queue_driver));
    pub const QUEUE_AVAIL_HI: u64 = QUEUE_AVAIL + 4;
    pub const QUEUE_USED: u64 = at(offset_of!(VirtioPciCommonCfg, queue_device));
    pub const QUEUE_USED_HI: u64 = QUEUE_USED + 4;
    /// The structure's length, as its capability gives it.
    pub const SIZE: u64 = size_of::<VirtioPciCommonCfg>() as u64;
}

/// `struct virtio_pci_cap` (16 bytes). PCI config space writes the first
/// two bytes (the capability id and the next pointer) itself; the rest is
/// [`VirtioPciCap::body`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciCap {
    pub cap_vndr: u8,
    pub cap_next: u8,
    pub cap_len: u8,
    pub cfg_type: u8,
    pub bar: u8,
    pub id: u8,
    pub padding: [u8; 2],
    pub offset: u32,
    pub length: u32,
}

/// `struct virtio_pci_notify_cap`: the notify capability and its
/// multiplier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciNotifyCap {
    pub cap: VirtioPciCap,
    pub notify_off_multiplier: u32,
}

/// `struct virtio_pci_cap64`: for a shared memory region, with the high
/// halves of its offset and length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciCap64 {
    pub cap: VirtioPciCap,
    pub offset_hi: u32,
    pub length_hi: u32,
}

// SAFETY: plain integers (and byte arrays) laid out with no padding, as
// the asserts below check; every bit pattern is a valid value.
unsafe impl ByteValued for VirtioPciCommonCfg {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioPciCap {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioPciNotifyCap {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioPciCap64 {}

/// Each capability structure's length, as its `cap_len` gives it.
pub const CAP_LEN: u8 = 16;
pub const NOTIFY_CAP_LEN: u8 = 20;
pub const CAP64_LEN: u8 = 24;

const _: () = assert!(size_of::<VirtioPciCommonCfg>() == 0x38);
const _: () = assert!(size_of::<VirtioPciCap>() == CAP_LEN as usize);
const _: () = assert!(size_of::<VirtioPciNotifyCap>() == NOTIFY_CAP_LEN as usize);
const _: () = assert!(size_of::<VirtioPciCap64>() == CAP64_LEN as usize);

/// `cfg_type` of a virtio vendor capability.
pub mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const SHARED_MEMORY: u8 = 8;
}

/// The PCI capability id of a vendor-specific capability.
pub const CAP_VENDOR: u8 = 0x09;

impl VirtioPciCap {
    /// A capability for `length` bytes at `offset` of BAR `bar`, of a
    /// structure `cap_len` bytes long (the notify and 64-bit ones are
    /// longer).
    pub fn new(cfg_type: u8, bar: u8, id: u8, offset: u64, length: u64, cap_len: u8) -> Self {
        VirtioPciCap {
            cap_vndr: CAP_VENDOR,
            cap_next: 0,
            cap_len,
            cfg_type,
            bar,
            id,
            padding: [0; 2],
            // The low halves; 64-bit regions give the high ones apart.
            offset: ((offset & 0xffff_ffff) as u32).to_le(),
            length: ((length & 0xffff_ffff) as u32).to_le(),
        }
    }
}

/// What the PCI config space takes of a capability structure: all but its
/// first two bytes, which it fills in itself.
pub fn body<T: ByteValued>(cap: &T) -> &[u8] {
    &cap.as_slice()[2..]
}

/// BAR 0: where each structure lies.
pub mod bar0 {
    pub const COMMON: u64 = 0x0000;
    pub const ISR: u64 = 0x1000;
    pub const ISR_SIZE: u64 = 4;
    pub const DEVICE: u64 = 0x2000;
    pub const DEVICE_SIZE: u64 = 0x1000;
    pub const NOTIFY: u64 = 0x3000;
    pub const NOTIFY_SIZE: u64 = 0x1000;
    /// Queue `i` is notified at `NOTIFY + i * NOTIFY_MULTIPLIER`.
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    pub const MSIX_TABLE: u64 = 0x4000;
    pub const MSIX_PBA: u64 = 0x6000;
    pub const MSIX_PBA_SIZE: u64 = 0x2000;
    pub const SIZE: u64 = 0x8000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_the_spec_s() {
        use common::*;
        assert_eq!(
            [
                DEVICE_FEATURE_SELECT,
                DEVICE_FEATURE,
                DRIVER_FEATURE_SELECT,
                DRIVER_FEATURE,
                CONFIG_MSIX_VECTOR,
                NUM_QUEUES,
                DEVICE_STATUS,
                CONFIG_GENERATION,
                QUEUE_SELECT,
                QUEUE_SIZE,
                QUEUE_MSIX_VECTOR,
                QUEUE_ENABLE,
                QUEUE_NOTIFY_OFF,
                QUEUE_DESC,
                QUEUE_AVAIL,
                QUEUE_USED
            ],
            [
                0x00, 0x04, 0x08, 0x0c, 0x10, 0x12, 0x14, 0x15, 0x16, 0x18, 0x1a, 0x1c, 0x1e, 0x20,
                0x28, 0x30
            ]
        );
    }

    #[test]
    fn capability_bytes() {
        let cap = VirtioPciCap::new(cfg_type::DEVICE, 0, 0, bar0::DEVICE, 0x1000, CAP_LEN);
        assert_eq!(
            body(&cap),
            [16, 4, 0, 0, 0, 0, 0x00, 0x20, 0, 0, 0x00, 0x10, 0, 0]
        );
        let notify = VirtioPciNotifyCap {
            cap: VirtioPciCap::new(cfg_type::NOTIFY, 0, 0, bar0::NOTIFY, 0x1000, NOTIFY_CAP_LEN),
            notify_off_multiplier: 4,
        };
        assert_eq!(&body(&notify)[14..], [4, 0, 0, 0]);
        let shm = VirtioPciCap64 {
            cap: VirtioPciCap::new(cfg_type::SHARED_MEMORY, 2, 0, 0, 1 << 33, CAP64_LEN),
            offset_hi: 0,
            length_hi: 2,
        };
        assert_eq!(body(&shm).len(), 22);
        assert_eq!(&body(&shm)[18..], [2, 0, 0, 0]);
    }
}
