//! Ferry on a pseudo-terminal, as a person at a terminal runs it: the
//! tests type into it, read what it shows, resize it, and check that it
//! hands the terminal back as it found it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `ferry` whose stdin, stdout and stderr are a terminal.
pub struct PtySession {
    /// The terminal's settings before Ferry started.
    pub initial: libc::termios,
    child: Child,
    master: File,
    /// A descriptor of the terminal itself, to read its settings.
    slave: OwnedFd,
    shown: Arc<Mutex<Vec<u8>>>,
    /// How much of `shown` earlier `expect`s have consumed.
    seen: usize,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtySession {
    /// Starts `ferry args` on a new terminal of `rows` x `cols`, as the
    /// session leader's foreground job (as a shell would run it).
    pub fn start(
        args: &[String],
        rows: u16,
        cols: u16,
        dir: &std::path::Path,
    ) -> Result<PtySession, String> {
        let (mut master_fd, mut slave_fd) = (-1, -1);
        let size = winsize(rows, cols);
        // SAFETY: openpty fills the two descriptors; the name, termios
        // and size pointers are null or valid.
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        if rc != 0 {
            return Err(format!("openpty: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: both were just opened and are ours alone.
        let (master, slave) =
            unsafe { (File::from_raw_fd(master_fd), OwnedFd::from_raw_fd(slave_fd)) };
        let stdio = |fd: &OwnedFd| -> Result<Stdio, String> {
            Ok(Stdio::from(fd.try_clone().map_err(|e| e.to_string())?))
        };
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut initial: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above, on the descriptor just opened.
        if unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut initial) } != 0 {
            return Err(format!("tcgetattr: {}", std::io::Error::last_os_error()));
        }
        let mut command = Command::new(crate::ferry_bin()?);
        command
            .current_dir(dir)
            .args(args)
            .stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(stdio(&slave)?);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start ferry: {e}"))?;
        let shown = Arc::new(Mutex::new(Vec::new()));
        let sink = shown.clone();
        let mut reader = master.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut chunk) {
                if let Ok(mut v) = sink.lock() {
                    v.extend_from_slice(&chunk[..n]);
                }
            }
        });
        Ok(PtySession {
            initial,
            child,
            master,
            slave,
            shown,
            seen: 0,
        })
    }

    /// Everything the terminal has shown so far.
    pub fn screen(&self) -> String {
        let v = self.shown.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Waits until `text` appears after what earlier calls matched, and
    /// moves past it.
    pub fn expect(&mut self, text: &str, within: Duration) -> Result<(), String> {
        let until = Instant::now() + within;
        loop {
            let found = {
                let v = self.shown.lock().map_err(|e| e.to_string())?;
                let hay = String::from_utf8_lossy(&v[self.seen.min(v.len())..]).into_owned();
                hay.find(text).map(|at| self.seen + at + text.len())
            };
            if let Some(end) = found {
                self.seen = end;
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "the terminal did not show {text:?} within {within:?}; it shows:\n{}\n\
                     (as bytes: {:?})",
                    self.screen(),
                    self.screen()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.master
            .write_all(bytes)
            .map_err(|e| format!("typing: {e}"))
    }

    /// Resizes the terminal (its foreground job gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads the struct given.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The terminal's settings now.
    pub fn termios(&self) -> Result<libc::termios, String> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above, on a descriptor we hold.
        if unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) } != 0 {
            return Err(format!("tcgetattr: {}", std::io::Error::last_os_error()));
        }
        Ok(t)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for Ferry to exit (killing it past `within`).
    pub fn wait(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "ferry did not exit within {within:?}; the terminal shows:\n{}",
                    self.screen()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether two terminal settings are the same in every field a program
/// can set.
pub fn same_termios(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
        && a.c_line == b.c_line
        && a.c_cc == b.c_cc
}
