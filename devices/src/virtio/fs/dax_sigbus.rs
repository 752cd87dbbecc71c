//! A host process may truncate a file while a queue worker copies to or
//! from its pages in a DAX window (a guest `read(2)` into a DAX-mapped
//! buffer, say). `DaxWindow::pin` checks the file size before the copy, but
//! the truncation can land during it, and touching a file page past EOF
//! raises SIGBUS, which would end Ferry. This handler puts a zero page over
//! the faulting window page and lets the copy go on: the guest reads zeros
//! where the file no longer is, as after the VMM's own repair
//! (`repair_truncated`, which later brings the window's books in line).
//! A SIGBUS anywhere else is a real crash: one line, then exit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Windows a process may have at once (one per share with DAX).
const SLOTS: usize = 64;

/// (start, length) of each registered window; length 0: free slot.
static WINDOWS: [(AtomicUsize, AtomicUsize); SLOTS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();

/// A window registered with the handler; unregistered on drop.
pub(super) struct Guard(Option<usize>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            WINDOWS[slot].1.store(0, Ordering::Release);
            WINDOWS[slot].0.store(0, Ordering::Release);
        }
    }
}

/// Registers `[base, base + len)` and installs the handler (once).
/// Without a free slot the window goes unguarded (logged), as before.
pub(super) fn guard(base: usize, len: usize, page: usize) -> Guard {
    INSTALL.call_once(|| {
        PAGE.store(page, Ordering::Relaxed);
        install();
    });
    for (slot, (start, size)) in WINDOWS.iter().enumerate() {
        // Claim a free slot by its start, then publish the length.
        if start
            .compare_exchange(0, base, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            size.store(len, Ordering::Release);
            return Guard(Some(slot));
        }
    }
    log::warn!("virtio-fs: more than {SLOTS} DAX windows; a host truncation may stop Ferry");
    Guard(None)
}

fn install() {
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO; the
    // handler only reads atomics and makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            log::warn!(
                "virtio-fs: no SIGBUS handler ({}); a host truncation may stop Ferry",
                std::io::Error::last_os_error()
            );
        }
    }
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    let in_window = WINDOWS.iter().any(|(start, size)| {
        let (start, size) = (start.load(Ordering::Acquire), size.load(Ordering::Acquire));
        size != 0 && addr >= start && addr - start < size
    });
    if in_window {
        // SAFETY: replaces one page inside a window's own reservation with
        // a private zero page; mmap is async-signal-safe.
        let done = unsafe {
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if done != libc::MAP_FAILED {
            return; // the faulting access runs again, on the zero page
        }
    }
    let msg: &[u8] = if in_window {
        b"ferry: SIGBUS in a DAX window that could not be repaired; Ferry stops\n"
    } else {
        b"ferry: SIGBUS (a bad memory access outside the DAX windows); Ferry stops\n"
    };
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(128 + libc::SIGBUS);
    }
}
