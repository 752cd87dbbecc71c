//! Every system call that changes what the window's address range maps,
//! in one place: the reservation itself, file pages put into it and taken
//! out, the scratch file's zero pages, and the fault handler's zero page.
//! The rest of `dax/` is bookkeeping and calls these.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};

use super::einval;

/// The window's range of Ferry's address space, inaccessible
/// (`PROT_NONE`) until pages are mapped into it; unmapped when dropped.
pub(super) struct Reservation {
    base: usize,
    len: usize,
}

fn sys_len(len: u64) -> io::Result<usize> {
    usize::try_from(len).map_err(|_| einval(format!("length {len:#x} too large")))
}

fn sys_offset(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| einval(format!("file offset {offset:#x} too large")))
}

fn check(addr: *mut libc::c_void) -> io::Result<()> {
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Reservation {
    /// Reserves `len` bytes; nothing is backed until mapped.
    pub(super) fn new(len: u64) -> io::Result<Reservation> {
        let len = sys_len(len)?;
        // SAFETY: a fresh inaccessible reservation placed by the kernel;
        // nothing refers to it yet.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        check(base)?;
        Ok(Reservation {
            base: base as usize,
            len,
        })
    }

    pub(super) fn base(&self) -> usize {
        self.base
    }

    /// The address of `[offset, offset + len)`, which must lie inside.
    fn range(&self, offset: u64, len: u64) -> io::Result<(*mut libc::c_void, usize)> {
        let (start, n) = (sys_len(offset)?, sys_len(len)?);
        if start.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(einval(format!(
                "{offset:#x}+{len:#x} lies outside the DAX window"
            )));
        }
        Ok(((self.base + start) as *mut libc::c_void, n))
    }

    /// Maps `len` bytes of `file` from `file_offset` at window `offset`,
    /// shared (the guest sees the host's page cache), writable or not.
    /// The caller holds the window's write lock: no worker copies there.
    pub(super) fn map_file(
        &self,
        offset: u64,
        len: u64,
        file: BorrowedFd<'_>,
        file_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let (at, n) = self.range(offset, len)?;
        let file_offset = sys_offset(file_offset)?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: inside this reservation (checked by `range`); MAP_FIXED
        // replaces only window pages, and no worker copies there (the
        // caller holds the write lock).
        let addr = unsafe {
            libc::mmap(
                at,
                n,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                file_offset,
            )
        };
        check(addr)
    }

    /// Makes `[offset, offset + len)` inaccessible again, as reserved.
    pub(super) fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        let (at, n) = self.range(offset, len)?;
        // SAFETY: as for `map_file`.
        let addr = unsafe {
            libc::mmap(
                at,
                n,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        check(addr)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `new`, unmapped once; its owner
        // (the window) is gone, and the fault handler was unregistered
        // first (field order in `DaxWindow`).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// The system page size (at least 4 KiB).
pub(super) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(4096)
}

/// From a SIGBUS/SIGSEGV handler: puts a private zero page at `page_addr`
/// (page-aligned). Async-signal-safe (one mmap). Whether it worked.
///
/// # Safety
///
/// `page_addr..page_addr + page` must lie inside a live window's
/// reservation.
pub(super) unsafe fn zero_page_from_handler(page_addr: u64, page: u64) -> bool {
    // SAFETY: the caller's contract: the page is a window page, whose
    // old contents (none, or a truncated file's) nobody may rely on.
    let done = unsafe {
        libc::mmap(
            page_addr as *mut libc::c_void,
            usize::try_from(page).unwrap_or(4096),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    done != libc::MAP_FAILED
}

/// One shared 2 MiB memory file behind every parked page and every
/// unmapped page the guest faulted on, each window page at its offset
/// modulo 2 MiB. Private anonymous pages there cost host memory per page
/// the guest writes, so a guest that parked a 64 GiB window and wrote to
/// it took 64 GiB beyond `--memory`; these cost 2 MiB per window at most.
/// The pages read as zeros again whenever more pages are parked or
/// filled; in between, a guest write to one of them shows in the others
/// at the same offset (all past some file's end, or outside any mapping,
/// where a local file system would raise SIGBUS).
pub(super) struct Scratch {
    pub(super) file: File,
    /// A writable view of the file, for zeroing it (MADV_REMOVE).
    view: usize,
}

pub(super) const SCRATCH_LEN: u64 = SCRATCH_BYTES as u64;
const SCRATCH_BYTES: usize = 2 << 20;

impl Scratch {
    pub(super) fn new() -> io::Result<Scratch> {
        // SAFETY: a plain system call on a constant name.
        let fd = unsafe { libc::memfd_create(c"ferry-dax-scratch".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(SCRATCH_LEN)?;
        // SAFETY: a new shared mapping of our own file, placed by the kernel.
        let view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SCRATCH_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if view == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Scratch {
            file,
            view: view as usize,
        })
    }

    /// Maps the scratch pages at window `[offset, offset + len)` of
    /// `window`, each at its offset modulo 2 MiB.
    pub(super) fn fill(&self, window: &Reservation, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| einval(format!("{offset:#x}+{len:#x} overflows")))?;
        let mut at = offset;
        while at < end {
            let file_offset = at % SCRATCH_LEN;
            let n = (SCRATCH_LEN - file_offset).min(end - at);
            let (ptr, n_len) = window.range(at, n)?;
            let file_offset = sys_offset(file_offset)?;
            // SAFETY: inside the window's reservation (checked by
            // `range`), and no worker copies there (the caller holds the
            // write lock).
            let addr = unsafe {
                libc::mmap(
                    ptr,
                    n_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    self.file.as_raw_fd(),
                    file_offset,
                )
            };
            check(addr)?;
            at += n;
        }
        self.zero();
        Ok(())
    }

    /// Frees the file's pages: every page mapping it reads zeros.
    pub(super) fn zero(&self) {
        // SAFETY: our own shared writable mapping of the whole file.
        unsafe {
            libc::madvise(
                self.view as *mut libc::c_void,
                SCRATCH_BYTES,
                libc::MADV_REMOVE,
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the view is ours and nothing refers to it any more.
        unsafe { libc::munmap(self.view as *mut libc::c_void, SCRATCH_BYTES) };
    }
}
