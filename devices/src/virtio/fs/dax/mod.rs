//! The DAX window: a range of Ferry's address space that the guest sees as
//! the virtio-fs cache (shared memory region 0, a 64-bit BAR backed by a KVM
//! memory slot). FUSE_SETUPMAPPING maps a piece of a host file into it with
//! `mmap(MAP_SHARED | MAP_FIXED)`, so the guest reads and writes the host's
//! page cache directly; FUSE_REMOVEMAPPING makes the range inaccessible
//! again (`PROT_NONE`, as the whole reservation starts).
//!
//! Two things can make KVM fail to reach a window page: the guest touching
//! an unmapped range, or a file truncated under its mapping. Pages past a
//! file's end are parked on zero pages ([`DaxWindow::repair_truncated`],
//! every second and on a fault) and get the file back when it grows again
//! ([`DaxWindow::restore_grown`]); an unmapped page the guest faulted on
//! gets a zero page ([`DaxWindow::handle_fault`]). Queue workers copy to and
//! from window pages only after [`DaxWindow::pin`] checked that they are
//! mapped, inside their file and writable as needed, and hold the pin until
//! done.
//!
//! The rooms: `mmap.rs` holds every system call that changes what the
//! window maps (the reservation, file pages, the scratch file's zero
//! pages, the fault handler's zero page), `map.rs` decides what SETUPMAPPING
//! and REMOVEMAPPING map, `mapping.rs` the pure bookkeeping of what is
//! mapped where, `pin.rs` the workers' pins, `repair.rs` the truncation and
//! fault repair (the window's `GuestMemoryFault` hook), `requests.rs`
//! the FUSE adapter, `faults.rs` the SIGBUS/SIGSEGV handler and `view.rs`
//! the window's place in the workers' view of guest memory.

mod faults;
mod map;
mod mapping;
mod mmap;
mod pin;
mod repair;
mod requests;
pub mod view;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use mapping::Mappings;
use mmap::{Reservation, Scratch};

pub use pin::PinError;
pub(super) use requests::DaxRequests;

/// The smallest window: Linux maps in 2 MiB ranges (FUSE_DAX_SZ).
pub const DAX_WINDOW_MIN: u64 = 2 << 20;
const NOT_SHOWN: u64 = u64::MAX;

/// Whether a window operation may wait for the mappings' lock.
#[derive(Clone, Copy)]
enum Wait {
    Yes,
    No,
}

pub struct DaxWindow {
    base: usize,
    size: u64,
    page: u64,
    /// Where the guest sees the window (its BAR), or NOT_SHOWN.
    guest_addr: AtomicU64,
    /// Mappings by window offset; they never overlap.
    mappings: RwLock<Mappings>,
    /// How many mappings have parked pages.
    parked: AtomicUsize,
    /// Zero pages for faults in the window during a worker's copy.
    /// Declared before `reservation`: fields drop in order, so the range
    /// is unguarded before it is given back (and maybe reused).
    faults: Option<faults::Guard>,
    /// What parked pages and fault fills show (see [`Scratch`]).
    scratch: Scratch,
    /// The address range itself; unmapped last.
    reservation: Reservation,
}

fn einval(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

impl DaxWindow {
    /// Reserves `size` bytes (a power of two, at least [`DAX_WINDOW_MIN`]).
    /// The reservation costs nothing until the guest touches it.
    pub fn new(size: u64) -> io::Result<Self> {
        if !size.is_power_of_two() || size < DAX_WINDOW_MIN {
            return Err(einval(format!(
                "DAX window size {size:#x}: must be a power of two of at least 2 MiB"
            )));
        }
        let reservation = Reservation::new(size)?;
        let base = reservation.base();
        let page = mmap::page_size();
        Ok(DaxWindow {
            base,
            size,
            page,
            guest_addr: AtomicU64::new(NOT_SHOWN),
            mappings: RwLock::new(BTreeMap::new()),
            parked: AtomicUsize::new(0),
            faults: Some(faults::guard(base as u64, size, page)),
            scratch: Scratch::new()?,
            reservation,
        })
    }

    /// Records where the guest sees the window (`None`: nowhere).
    pub fn set_guest_addr(&self, addr: Option<u64>) {
        self.guest_addr
            .store(addr.unwrap_or(NOT_SHOWN), Ordering::Release);
    }

    /// Where the guest sees the window, as last recorded (the vCPUs'
    /// view: KVM's memory slot).
    fn shown(&self) -> Option<u64> {
        let addr = self.guest_addr.load(Ordering::Acquire);
        (addr != NOT_SHOWN).then_some(addr)
    }

    /// Where `mem`, a queue worker's view of guest memory, shows the window:
    /// the guest address of its region backed by the window's reservation.
    /// When the guest moves the BAR, the view and [`set_guest_addr`] change
    /// at different moments, and a worker reads buffers through its view,
    /// so its checks and pins must place the window where that view does
    /// (a request read from a window page the pin had not judged faulted
    /// in Ferry: found by the fuzzer).
    ///
    /// [`set_guest_addr`]: DaxWindow::set_guest_addr
    pub fn shown_in(&self, mem: &GuestMemoryMmap) -> Option<u64> {
        mem.iter()
            .find(|r| r.as_ptr() as usize == self.base && r.len() == self.size)
            .map(|r| r.start_addr().0)
    }

    /// The window offsets of guest range `[gpa, gpa + len)` where it
    /// overlaps the window shown at `shown_at`.
    fn window_part(&self, shown_at: Option<u64>, gpa: u64, len: u64) -> Option<(u64, u64)> {
        let base = shown_at?;
        let start = gpa.max(base);
        let end = gpa.saturating_add(len).min(base.saturating_add(self.size));
        (start < end).then(|| (start - base, end - start))
    }

    /// Whether guest range `[gpa, gpa + len)` touches the window shown at
    /// `shown_at`.
    pub fn overlaps(&self, shown_at: Option<u64>, gpa: u64, len: u64) -> bool {
        self.window_part(shown_at, gpa, len).is_some()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the window starts in Ferry's address space.
    pub fn host_addr(&self) -> u64 {
        self.base as u64
    }

    /// Bytes of host files mapped right now.
    pub fn mapped_bytes(&self) -> u64 {
        self.read().values().map(|m| m.backed).sum()
    }

    fn read(&self) -> RwLockReadGuard<'_, Mappings> {
        self.mappings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mappings> {
        self.mappings.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_if(&self, wait: Wait) -> Option<RwLockReadGuard<'_, Mappings>> {
        match wait {
            Wait::Yes => Some(self.read()),
            Wait::No => match self.mappings.try_read() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            },
        }
    }

    fn write_if(&self, wait: Wait) -> Option<RwLockWriteGuard<'_, Mappings>> {
        match wait {
            Wait::Yes => Some(self.write()),
            Wait::No => match self.mappings.try_write() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests;
