//! The zero pages behind parked and faulted window pages.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

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
