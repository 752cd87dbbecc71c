//! Reports a seccomp violation: the filter traps (SIGSYS), and this handler
//! writes one line naming the thread, its role and the system call, then
//! ends Ferry. Only async-signal-safe work here: no allocation, no locks.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};

use super::Role;

static VIOLATION_STATUS: AtomicI32 = AtomicI32::new(1);

thread_local! {
    // Const-initialised and without a destructor: safe to read from a
    // signal handler.
    static ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

/// Records the calling thread's role for the report.
pub(super) fn set_thread_role(role: Role) {
    ROLE.with(|r| r.set(Some(role)));
}

pub(super) fn install(violation_status: i32) -> std::io::Result<()> {
    VIOLATION_STATUS.store(violation_status, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction with our handler and an empty mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fixed buffer the report is built in without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report for a trapped call `nr` on a thread of `role` named `name`.
fn report(name: &[u8], role: Option<Role>, nr: i32) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"ferry: sandbox: thread '");
    line.push(name);
    line.push(b"' (");
    line.push(role.map_or("unconfined", Role::name).as_bytes());
    line.push(b") made system call ");
    line.push_number(u64::from(nr.unsigned_abs()));
    line.push(b", which its seccomp filter forbids; Ferry stops (--sandbox off to debug)\n");
    line
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // struct siginfo for SIGSYS: si_signo, si_errno, si_code, padding, then
    // _sigsys { void *_call_addr; int _syscall; unsigned _arch; }.
    // SAFETY: the kernel hands a valid siginfo; offset 24 is _syscall.
    let nr = unsafe { *((info as *const u8).add(24) as *const i32) };
    let role = ROLE.try_with(Cell::get).ok().flatten();
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`. prctl is
    // allowed in every role.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let line = report(&name[..name_len], role, nr);
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_STATUS.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_thread_role_and_call() {
        let l = report(b"fs-share-q1", Some(Role::FileServer), 41);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert_eq!(
            s,
            "ferry: sandbox: thread 'fs-share-q1' (file server) made system call 41, which its \
             seccomp filter forbids; Ferry stops (--sandbox off to debug)\n"
        );
    }

    #[test]
    fn report_fits_long_names_and_numbers() {
        let l = report(&[b'x'; 16], None, i32::MAX);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(s.contains("(unconfined) made system call 2147483647,"));
        assert!(s.ends_with('\n'));
    }
}
