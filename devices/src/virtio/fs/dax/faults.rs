//! Faults in a DAX window that Ferry's own code takes, turned into zero
//! pages instead of the end of Ferry.
//!
//! A queue worker copies FUSE headers, arguments and small replies with
//! plain loads and stores, and the guest may place them in the window. The
//! worker pins those pages first (`DaxWindow::pin`), but two things can
//! still pull a page away during the copy:
//! - a host process truncates the file: touching a page past EOF raises
//!   SIGBUS;
//! - the guest rewrites a descriptor after the pin judged it (virtio-queue
//!   reads the chain from guest memory on every walk): the copy may touch
//!   an unmapped (`PROT_NONE`, SIGSEGV) or read-only page.
//!
//! The handler puts a private zero page over the faulting window page and
//! lets the access run again; the guest reads zeros there, and its writes
//! land nowhere. The window's books are then out of step with its pages, so
//! the handler flags the window, and the next `repair_truncated` or
//! `restore_grown` maps every file-backed page again. A fault anywhere else
//! goes to the handler that was there before (Rust's, a sanitizer's) or
//! gets the default action, as if this one did not exist.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

/// Windows a process may have at once (one per share with DAX).
const SLOTS: usize = 64;

/// Each slot: the window's start page number and log2 of its size in one
/// word, so that the handler never sees half of a registration; 0: free.
static WINDOWS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Set by the handler when it replaced a page of that slot's window.
static REPAIRED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
static PAGE: AtomicU64 = AtomicU64::new(4096);
static INSTALL: Once = Once::new();
static PREVIOUS: [OnceLock<libc::sigaction>; 2] = [OnceLock::new(), OnceLock::new()];
const SIGNALS: [libc::c_int; 2] = [libc::SIGBUS, libc::SIGSEGV];

fn pack(base: u64, size: u64) -> u64 {
    (base >> 12) << 8 | u64::from(size.trailing_zeros())
}

fn unpack(word: u64) -> (u64, u64) {
    ((word >> 8) << 12, 1 << (word & 0xff))
}

/// A window registered with the handler; unregistered on drop.
pub(super) struct Guard(Option<usize>);

impl Guard {
    /// Whether the handler replaced pages of this window since last asked.
    /// Whether the handler put zero pages in the window since the last
    /// [`take_repaired`](Guard::take_repaired), which this leaves set.
    pub(super) fn repaired(&self) -> bool {
        self.0
            .is_some_and(|slot| REPAIRED[slot].load(Ordering::Acquire))
    }

    pub(super) fn take_repaired(&self) -> bool {
        // Asked after every request on a DAX share: a plain load first, so
        // the common case writes no shared cache line.
        self.0.is_some_and(|slot| {
            REPAIRED[slot].load(Ordering::Acquire) && REPAIRED[slot].swap(false, Ordering::AcqRel)
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            WINDOWS[slot].store(0, Ordering::Release);
        }
    }
}

/// Registers the window `[base, base + size)` (page-aligned, `size` a power
/// of two) and installs the handler (once). Without a free slot the window
/// goes unguarded, as before the handler existed (logged).
pub(super) fn guard(base: u64, size: u64, page: u64) -> Guard {
    INSTALL.call_once(|| {
        PAGE.store(page, Ordering::Relaxed);
        install();
    });
    let word = pack(base, size);
    for (slot, entry) in WINDOWS.iter().enumerate() {
        if entry
            .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            REPAIRED[slot].store(false, Ordering::Release);
            return Guard(Some(slot));
        }
    }
    log::warn!("virtio-fs: more than {SLOTS} DAX windows; a fault in this one stops Ferry");
    Guard(None)
}

fn install() {
    for (signal, previous) in SIGNALS.iter().zip(&PREVIOUS) {
        // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO;
        // the old action is kept before ours can run (`PREVIOUS` is set
        // before the call returns, and the handler only reads it).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(*signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let _ = previous.set(old);
            if libc::sigaction(*signal, &action, std::ptr::null_mut()) != 0 {
                log::warn!(
                    "virtio-fs: no handler for signal {signal} ({}); a fault in a DAX window \
                     stops Ferry",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// The registered window slot holding `addr`, if any.
fn slot_of(addr: u64) -> Option<usize> {
    WINDOWS.iter().position(|entry| {
        let word = entry.load(Ordering::Acquire);
        let (start, size) = unpack(word);
        word != 0 && addr >= start && addr - start < size
    })
}

extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as u64) };
    // si_code > 0: raised by the kernel for this access, not sent by kill.
    if code > 0 {
        if let Some(slot) = slot_of(addr) {
            let page = PAGE.load(Ordering::Relaxed);
            // SAFETY: the page lies inside a registered (live) window's
            // reservation: `slot_of` found it there.
            let done = unsafe { super::mmap::zero_page_from_handler(addr & !(page - 1), page) };
            if done {
                REPAIRED[slot].store(true, Ordering::Release);
                return; // the access runs again, on the zero page
            }
        }
    }
    pass_on(signal, info, ctx);
}

/// Hands a fault that is not a window's to the previous handler, or
/// restores the default action so that the access, run again, ends the
/// process as it would have without this handler.
fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let index = usize::from(signal == libc::SIGSEGV);
    let previous = PREVIOUS[index].get();
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: a default action for the signal; sigaction is
        // async-signal-safe.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
        return;
    }
    let flags = previous.map_or(0, |p| p.sa_flags);
    // SAFETY: the handler that was installed for this signal, called as it
    // asked to be (with or without siginfo).
    unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(signal, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "FERRY_WINDOW_FAULTS_CHILD";

    /// The child: a window (so the handler is installed), then a fault
    /// outside it.
    #[test]
    fn fault_outside_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let _w = super::super::DaxWindow::new(2 << 20).unwrap();
        // SAFETY: none: this reads an unmapped address on purpose, to die.
        unsafe { std::ptr::read_volatile(8 as *const u8) };
        unreachable!("read address 8");
    }

    /// A fault outside every window still ends the process by its signal
    /// (the handler passes it on), not by a silent zero page or an exit.
    #[test]
    fn a_fault_outside_the_windows_still_kills() {
        use std::os::unix::process::ExitStatusExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "virtio::fs::dax::faults::tests::fault_outside_child",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSEGV),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_registration_is_one_word() {
        let (base, size) = (0x7f12_3456_7000u64, 4u64 << 20);
        assert_eq!(unpack(pack(base, size)), (base, size));
        assert_ne!(pack(base, size), 0);
    }
}
