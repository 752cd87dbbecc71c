//! The virtio spec's numbers, taken from `virtio-bindings` (the kernel's
//! UAPI headers) and given the widths Ferry's registers have: feature
//! masks are u64, the device status is a byte, descriptor flags are u16.
//! The bindings are all u32; the narrowing happens here only, each step
//! checked at compile time.

use virtio_bindings::bindings::{virtio_config as config, virtio_ring as ring};

/// A feature bit number as a mask of the 64-bit feature word.
const fn feature(bit: u32) -> u64 {
    assert!(bit < 64);
    1 << bit
}

/// A status bit as the byte the device status register holds.
#[allow(clippy::cast_possible_truncation)] // checked by the assert
const fn status(bits: u32) -> u8 {
    assert!(bits <= u8::MAX as u32);
    bits as u8
}

/// A descriptor flag as the u16 of the descriptor.
#[allow(clippy::cast_possible_truncation)] // checked by the assert
const fn desc_flag(bits: u32) -> u16 {
    assert!(bits <= u16::MAX as u32);
    bits as u16
}

pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = feature(ring::VIRTIO_RING_F_INDIRECT_DESC);
pub const VIRTIO_F_RING_EVENT_IDX: u64 = feature(ring::VIRTIO_RING_F_EVENT_IDX);
pub const VIRTIO_F_VERSION_1: u64 = feature(config::VIRTIO_F_VERSION_1);

pub const STATUS_ACKNOWLEDGE: u8 = status(config::VIRTIO_CONFIG_S_ACKNOWLEDGE);
pub const STATUS_DRIVER: u8 = status(config::VIRTIO_CONFIG_S_DRIVER);
pub const STATUS_DRIVER_OK: u8 = status(config::VIRTIO_CONFIG_S_DRIVER_OK);
pub const STATUS_FEATURES_OK: u8 = status(config::VIRTIO_CONFIG_S_FEATURES_OK);
pub const STATUS_NEEDS_RESET: u8 = status(config::VIRTIO_CONFIG_S_NEEDS_RESET);

pub const DESC_F_NEXT: u16 = desc_flag(ring::VRING_DESC_F_NEXT);
pub const DESC_F_WRITE: u16 = desc_flag(ring::VRING_DESC_F_WRITE);
pub const DESC_F_INDIRECT: u16 = desc_flag(ring::VRING_DESC_F_INDIRECT);

/// The virtio-fs device type.
pub const VIRTIO_ID_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the virtio 1.2 spec gives (sections 2.1, 2.7.5, 5.11,
    /// 6): a bindings update that moved one would show here.
    #[test]
    fn the_spec_s_values() {
        assert_eq!(VIRTIO_F_RING_INDIRECT_DESC, 1 << 28);
        assert_eq!(VIRTIO_F_RING_EVENT_IDX, 1 << 29);
        assert_eq!(VIRTIO_F_VERSION_1, 1 << 32);
        assert_eq!(
            [
                STATUS_ACKNOWLEDGE,
                STATUS_DRIVER,
                STATUS_DRIVER_OK,
                STATUS_FEATURES_OK,
                STATUS_NEEDS_RESET
            ],
            [1, 2, 4, 8, 64]
        );
        assert_eq!([DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT], [1, 2, 4]);
        assert_eq!(VIRTIO_ID_FS, 26);
    }
}
