//! The DAX window in the device's own view of guest memory: the view the
//! queue workers read requests through. When the guest moves the window's
//! BAR, the view follows, so a buffer in the window (a DAX-mapped page
//! handed to read(2)) can be served, and no other device's window is ever
//! in it (its pages this device could not check).

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::DaxWindow;
use crate::virtio::GuestMemoryShared;

/// Why the window could not be moved in the view.
#[derive(Debug, thiserror::Error)]
pub enum MemoryViewError {
    #[error("the memory view's lock is poisoned")]
    Poisoned,
    #[error("cannot take the old region out: {0}")]
    Remove(#[source] vm_memory::GuestRegionCollectionError),
    #[error("cannot describe the region: {0}")]
    Build(#[source] vm_memory::mmap::MmapRegionError),
    #[error("shared memory address overflows")]
    AddressOverflow,
    /// The guest moved the BAR over RAM or another region.
    #[error("cannot put the region in: {0}")]
    Insert(#[source] vm_memory::GuestRegionCollectionError),
}

/// Moves `window` in `view` from guest address `old` to `new` (`None`:
/// not shown).
pub fn show_window(
    view: &GuestMemoryShared,
    window: &DaxWindow,
    old: Option<u64>,
    new: Option<u64>,
) -> Result<(), MemoryViewError> {
    let guard = view.lock().map_err(|_| MemoryViewError::Poisoned)?;
    let mut next: GuestMemoryMmap = (*view.memory()).clone();
    if let Some(at) = old {
        next = next
            .remove_region(GuestAddress(at), window.size())
            .map_err(MemoryViewError::Remove)?
            .0;
    }
    if let Some(at) = new {
        let len = usize::try_from(window.size()).map_err(|_| MemoryViewError::AddressOverflow)?;
        // SAFETY: the range is the window's reservation, which outlives the
        // view (the device owns it for the VM's life); `build_raw` does not
        // take ownership, so nothing unmaps it twice.
        let region = unsafe {
            MmapRegion::build_raw(
                window.host_addr() as *mut u8,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(MemoryViewError::Build)?;
        let region = GuestRegionMmap::new(region, GuestAddress(at))
            .ok_or(MemoryViewError::AddressOverflow)?;
        next = next
            .insert_region(Arc::new(region))
            .map_err(MemoryViewError::Insert)?;
    }
    guard.replace(next);
    Ok(())
}
