//! Puts an interactive terminal into raw mode for the guest and puts it
//! back exactly as it was, on every way out: when dropped, and, through a
//! small guard process, when Ferry dies without dropping it (SIGKILL, a
//! sandbox violation's `_exit`, an abort).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// How raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMode {
    /// The boot console: keystrokes (Ctrl-C included) go to the guest
    /// unchanged; output processing stays on so the host terminal renders
    /// the guest's serial lines.
    Console,
    /// `ferry run` with a terminal: everything raw, output processing
    /// included, since the guest's pty does it.
    Pty,
}

/// Restores the saved terminal settings when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
    /// Closed on drop: the guard then exits without touching anything.
    _guard: Option<OwnedFd>,
}

impl RawTerminal {
    /// Switches `fd` to raw mode if it is a terminal; `None` otherwise.
    pub fn enter(fd: RawFd, mode: RawMode) -> Option<Self> {
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
            match mode {
                RawMode::Console => {
                    raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
                    raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::IGNCR);
                    raw.c_cc[libc::VMIN] = 1;
                    raw.c_cc[libc::VTIME] = 0;
                }
                RawMode::Pty => libc::cfmakeraw(&mut raw),
            }
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            // What the terminal holds now (the driver may adjust).
            let mut applied = raw;
            libc::tcgetattr(fd, &mut applied);
            let guard = spawn_guard(fd, &saved, &applied);
            Some(RawTerminal {
                fd,
                saved,
                _guard: guard,
            })
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

fn same(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
        && a.c_cc == b.c_cc
}

/// Forks a process that waits for Ferry to go (the pipe's write end,
/// which only Ferry holds, closes however Ferry ends) and then puts the
/// terminal back, but only if it still has Ferry's raw settings: after a
/// clean exit Ferry has restored it already, and a shell that took the
/// terminal back is not overruled. Returns the write end.
fn spawn_guard(fd: RawFd, saved: &libc::termios, raw: &libc::termios) -> Option<OwnedFd> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log::debug!("terminal guard: pipe: {}", std::io::Error::last_os_error());
        return None;
    }
    let (saved, raw) = (*saved, *raw);
    // SAFETY: the child runs only async-signal-safe calls (close, signal,
    // read, tcgetattr, tcsetattr, _exit) and never returns; Ferry may have
    // threads by now.
    match unsafe { libc::fork() } {
        // SAFETY: the child's side, as said above: async-signal-safe calls
        // on its own descriptors, then _exit.
        0 => unsafe {
            // Nothing of Ferry's but the terminal and the pipe: the VM's
            // descriptors and Ferry's output pipes are not the guard's to
            // keep open.
            for other in 3..4096 {
                if other != ends[0] && other != fd {
                    libc::close(other);
                }
            }
            // Keystrokes and job control are the guest's; the guard only
            // waits (and may restore from the background: no SIGTTOU).
            for sig in [
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTSTP,
                libc::SIGTTOU,
                libc::SIGTTIN,
                libc::SIGTERM,
                libc::SIGUSR1,
            ] {
                libc::signal(sig, libc::SIG_IGN);
            }
            let mut byte = 0u8;
            while libc::read(ends[0], (&raw mut byte).cast(), 1) < 0 {}
            let mut now: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut now) == 0 && same(&now, &raw) {
                libc::tcsetattr(fd, libc::TCSANOW, &saved);
            }
            libc::_exit(0)
        },
        pid if pid > 0 => {
            // SAFETY: both ends are ours; the read end is the guard's now.
            unsafe {
                libc::close(ends[0]);
                Some(OwnedFd::from_raw_fd(ends[1]))
            }
        }
        _ => {
            log::debug!("terminal guard: fork: {}", std::io::Error::last_os_error());
            // SAFETY: both ends are ours.
            unsafe {
                libc::close(ends[0]);
                libc::close(ends[1]);
            }
            None
        }
    }
}

/// The size of the terminal on stdout, else on stdin: (rows, columns).
pub fn size() -> Option<(u16, u16)> {
    [1, 0].into_iter().find_map(|fd| {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: as above, on a descriptor of this process.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
        (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    })
}
