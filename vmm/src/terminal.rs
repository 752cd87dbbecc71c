//! Puts an interactive terminal into raw-ish mode for the guest's console
//! and puts it back exactly as it was.

use std::os::fd::RawFd;

/// Restores the saved terminal settings when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches `fd` to raw input if it is a terminal; `None` otherwise.
    /// Keystrokes (Ctrl-C included) go to the guest unchanged; output
    /// processing stays on so the host terminal renders the guest's lines.
    pub fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr only read/write the struct given.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
            raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::IGNCR);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawTerminal { fd, saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores settings read from this same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}
