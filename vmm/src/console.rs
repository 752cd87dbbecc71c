//! The guest console on the host side: stdin into COM1, COM1 out to stdout.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use ferry_devices::legacy::Serial;

/// Unbuffered writes to one of Ferry's own descriptors: the guest's prompt
/// must appear before its newline.
pub struct FdWriter(i32);

impl FdWriter {
    pub const STDOUT: FdWriter = FdWriter(1);
    pub const STDERR: FdWriter = FdWriter(2);
}

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: writes from a valid buffer to a descriptor we keep open.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if let Ok(n) = usize::try_from(n) {
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const STDIN_FD: i32 = 0;

/// Moves host input into the UART's receive FIFO. When the FIFO is full,
/// stdin is dropped from the poll set until the main loop sees room again
/// and signals `resume`, so a flood of input never spins the loop.
pub struct StdinToSerial {
    serial: Arc<Mutex<Serial>>,
    resume: EventFd,
    pending: Vec<u8>,
    watching: bool,
    closed: bool,
}

impl StdinToSerial {
    pub fn new(serial: Arc<Mutex<Serial>>) -> io::Result<Self> {
        Ok(StdinToSerial {
            serial,
            resume: EventFd::new(libc::EFD_NONBLOCK)?,
            pending: Vec::new(),
            watching: false,
            closed: false,
        })
    }

    /// True while input waits for room in the FIFO.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || (!self.watching && !self.closed)
    }

    /// Called by the main loop: moves pending input into the FIFO as the
    /// guest drains it.
    pub fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let taken = self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(&self.pending);
            self.pending.drain(..taken);
        }
        if self.pending.is_empty() && !self.watching && !self.closed {
            let _ = self.resume.write(1);
        }
    }

    fn stdin_events() -> Events {
        Events::new_raw(STDIN_FD, EventSet::IN)
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let room = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_capacity();
        let mut buf = [0u8; 64];
        let want = room.clamp(1, buf.len());
        // SAFETY: reads into a valid local buffer.
        let n = unsafe { libc::read(STDIN_FD, buf.as_mut_ptr().cast(), want) };
        match n {
            n if n > 0 => {
                let n = n.unsigned_abs();
                let taken = self
                    .serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(&buf[..n]);
                self.pending.extend_from_slice(&buf[taken..n]);
                if !self.pending.is_empty() {
                    self.unwatch(ops);
                }
            }
            0 => {
                log::debug!("stdin closed");
                self.closed = true;
                self.unwatch(ops);
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted
                    && err.kind() != io::ErrorKind::WouldBlock
                {
                    log::warn!("stdin: {err}; no more console input");
                    self.closed = true;
                    self.unwatch(ops);
                }
            }
        }
    }

    fn unwatch(&mut self, ops: &mut EventOps) {
        if self.watching {
            let _ = ops.remove(Self::stdin_events());
            self.watching = false;
        }
    }

    fn watch(&mut self, ops: &mut EventOps) {
        if !self.watching && !self.closed {
            match ops.add(Self::stdin_events()) {
                Ok(()) => self.watching = true,
                Err(e) => {
                    // stdin that cannot be polled (a regular file, say) gives no input.
                    log::debug!("stdin cannot be polled ({e:?}); console input off");
                    self.closed = true;
                }
            }
        }
    }
}

impl MutEventSubscriber for StdinToSerial {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.resume, EventSet::IN)) {
            log::warn!("console resume event: {e:?}");
        }
        self.watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.resume.as_raw_fd() {
            let _ = self.resume.read();
            if self.pending.is_empty() {
                self.watch(ops);
            }
        } else if events.event_set().intersects(EventSet::IN) {
            self.read_stdin(ops);
        } else if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            self.closed = true;
            self.unwatch(ops);
        }
    }
}
