//! The guest console on the host side: stdin into COM1 (or, for `ferry
//! run`, into Ferry's input port), COM1 out to stdout.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use ferry_devices::legacy::{HostInput, Serial};

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
/// The most read from stdin at once (the input port's capacity).
const READ_CHUNK: usize = 64 << 10;
/// Reads of an unpollable stdin per wake-up, so a large file never holds
/// the main loop for long.
const UNPOLLABLE_READS_PER_WAKE: usize = 4;

/// Where host input goes: COM1's receive FIFO (the boot console) or
/// Ferry's input port (`ferry run`).
pub trait InputSink: Send {
    /// Bytes it takes now.
    fn room(&self) -> usize;
    /// Takes what fits of `bytes`; returns how many.
    fn push(&mut self, bytes: &[u8]) -> usize;
    /// The input ended.
    fn close(&mut self) {}
    /// Asks the sink to write `event` when the guest has emptied it; false
    /// for a sink that cannot, which the main loop then retries on a timer.
    fn notify_drained(&mut self, _event: EventFd) -> bool {
        false
    }
}

impl InputSink for Serial {
    fn room(&self) -> usize {
        self.input_capacity()
    }
    fn push(&mut self, bytes: &[u8]) -> usize {
        self.enqueue_input(bytes)
    }
}

impl InputSink for HostInput {
    fn room(&self) -> usize {
        HostInput::room(self)
    }
    fn push(&mut self, bytes: &[u8]) -> usize {
        HostInput::push(self, bytes)
    }
    fn close(&mut self) {
        HostInput::close(self);
    }
    fn notify_drained(&mut self, event: EventFd) -> bool {
        HostInput::notify_drained(self, event);
        true
    }
}

/// SIGWINCH (through a signalfd): the host terminal's new size, for the
/// guest's pty.
pub struct WindowSize {
    signals: std::os::fd::OwnedFd,
    input: Arc<Mutex<HostInput>>,
}

impl WindowSize {
    /// Starts with the terminal's size now.
    pub fn new(signals: std::os::fd::OwnedFd, input: Arc<Mutex<HostInput>>) -> Self {
        let me = WindowSize { signals, input };
        me.update();
        me
    }

    fn update(&self) {
        if let Some((rows, cols)) = crate::terminal::size() {
            self.input
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_winsize(rows, cols);
        }
    }
}

impl MutEventSubscriber for WindowSize {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.signals, EventSet::IN)) {
            log::warn!("terminal size signal: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        // SAFETY: reads into a local buffer of the right size; non-blocking.
        while unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                info.as_mut_ptr().cast(),
                info.len(),
            )
        } > 0
        {}
        self.update();
    }
}

/// Moves Ferry's stdin into an [`InputSink`]. When the sink is full, stdin
/// is dropped from the poll set until there is room again (the sink says
/// so, or the main loop retries), so a flood of input never spins the
/// loop. A stdin that cannot be polled (a regular file, `/dev/null`) is
/// read whenever the sink has room.
pub struct StdinPump {
    fd: i32,
    sink: Arc<Mutex<dyn InputSink>>,
    resume: EventFd,
    pending: Vec<u8>,
    buf: Vec<u8>,
    watching: bool,
    unpollable: bool,
    closed: bool,
    sink_notifies: bool,
}

impl StdinPump {
    pub fn new(sink: Arc<Mutex<dyn InputSink>>) -> io::Result<Self> {
        Self::reading(STDIN_FD, sink)
    }

    fn reading(fd: i32, sink: Arc<Mutex<dyn InputSink>>) -> io::Result<Self> {
        Ok(StdinPump {
            fd,
            sink,
            resume: EventFd::new(libc::EFD_NONBLOCK)?,
            pending: Vec::new(),
            buf: vec![0; READ_CHUNK],
            watching: false,
            unpollable: false,
            closed: false,
            sink_notifies: false,
        })
    }

    fn sink(&self) -> std::sync::MutexGuard<'_, dyn InputSink + 'static> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while input waits for room that only a timer will notice.
    pub fn has_pending(&self) -> bool {
        !self.sink_notifies && (!self.pending.is_empty() || (!self.watching && !self.closed))
    }

    /// Called by the main loop: moves pending input on as the guest drains
    /// the sink, and asks for more once it is all gone.
    pub fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let taken = self.sink().push(&self.pending);
            self.pending.drain(..taken);
        }
        // A sink that notifies brings the next round itself.
        if self.pending.is_empty() && !self.watching && !self.closed && !self.sink_notifies {
            let _ = self.resume.write(1);
        }
    }

    fn stdin_events(&self) -> Events {
        Events::new_raw(self.fd, EventSet::IN)
    }

    /// One read of stdin into the sink; false when there is nothing more
    /// to do now (stdin ended, the sink is full, or no data).
    fn read_stdin(&mut self, ops: &mut EventOps) -> bool {
        let room = self.sink().room();
        let want = room.clamp(1, self.buf.len());
        // SAFETY: reads into our own buffer of at least `want` bytes.
        let n = unsafe { libc::read(self.fd, self.buf.as_mut_ptr().cast(), want) };
        match n {
            n if n > 0 => {
                let n = n.unsigned_abs();
                let taken = self.sink().push(&self.buf[..n]);
                self.pending.extend_from_slice(&self.buf[taken..n]);
                if !self.pending.is_empty() {
                    self.unwatch(ops);
                    return false;
                }
                true
            }
            0 => {
                log::debug!("stdin closed");
                self.close(ops);
                false
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted
                    && err.kind() != io::ErrorKind::WouldBlock
                {
                    log::warn!("stdin: {err}; no more input for the guest");
                    self.close(ops);
                }
                false
            }
        }
    }

    fn close(&mut self, ops: &mut EventOps) {
        self.closed = true;
        self.unwatch(ops);
        self.sink().close();
    }

    /// Reads an unpollable stdin while the sink has room, a few reads at a
    /// time; a sink that notifies brings the next round.
    fn read_unpollable(&mut self, ops: &mut EventOps) {
        for _ in 0..UNPOLLABLE_READS_PER_WAKE {
            if self.closed || !self.pending.is_empty() || self.sink().room() == 0 {
                return;
            }
            if !self.read_stdin(ops) {
                return;
            }
        }
        // Room is left: come back at once rather than on the next drain.
        let _ = self.resume.write(1);
    }

    fn unwatch(&mut self, ops: &mut EventOps) {
        if self.watching {
            let _ = ops.remove(self.stdin_events());
            self.watching = false;
        }
    }

    fn watch(&mut self, ops: &mut EventOps) {
        if self.closed || self.watching {
            return;
        }
        if self.unpollable {
            self.read_unpollable(ops);
            return;
        }
        match ops.add(self.stdin_events()) {
            Ok(()) => self.watching = true,
            Err(e) => {
                // epoll refuses regular files and /dev/null: read them as
                // the sink makes room.
                log::debug!("stdin cannot be polled ({e:?}); read as the guest takes it");
                self.unpollable = true;
                self.read_unpollable(ops);
            }
        }
    }
}

impl MutEventSubscriber for StdinPump {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.resume, EventSet::IN)) {
            log::warn!("console resume event: {e:?}");
        }
        match self.resume.try_clone() {
            Ok(ev) => {
                let notifies = self.sink().notify_drained(ev);
                self.sink_notifies = notifies;
            }
            Err(e) => log::warn!("console resume event: {e}"),
        }
        self.watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.resume.as_raw_fd() {
            let _ = self.resume.read();
            self.flush_pending();
            if self.pending.is_empty() {
                self.watch(ops);
            }
        } else if events.event_set().intersects(EventSet::IN) {
            self.read_stdin(ops);
        } else if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            self.close(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd, IntoRawFd};

    use event_manager::{EventManager, SubscriberOps};
    use ferry_devices::bus::BusDevice;
    use ferry_devices::legacy::{HOST_INPUT_CAPACITY, HOST_INPUT_EOF};

    use super::*;

    type Pump = Arc<Mutex<StdinPump>>;

    fn pump_from(fd: i32) -> (EventManager<Pump>, Arc<Mutex<HostInput>>) {
        let input = Arc::new(Mutex::new(HostInput::new()));
        let pump = StdinPump::reading(fd, input.clone()).unwrap();
        let mut events = EventManager::<Pump>::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(pump)));
        (events, input)
    }

    /// What the guest would read now: (status, bytes).
    fn guest_reads(input: &Mutex<HostInput>) -> (u32, Vec<u8>) {
        let mut dev = input.lock().unwrap();
        let mut s = [0u8; 4];
        dev.read(0, &mut s);
        let status = u32::from_le_bytes(s);
        let ready = if status & HOST_INPUT_EOF != 0 {
            0
        } else {
            status as usize
        };
        let mut data = vec![0u8; ready];
        if ready > 0 {
            assert!(dev.read_bulk(1, &mut data));
        }
        (status, data)
    }

    /// Runs the loop until the guest has seen EOF; returns all it read.
    fn read_to_eof(events: &mut EventManager<Pump>, input: &Mutex<HostInput>) -> Vec<u8> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            events.run_with_timeout(100).unwrap();
            let (status, data) = guest_reads(input);
            all.extend(data);
            if status == HOST_INPUT_EOF {
                return all;
            }
        }
        panic!("no EOF after {} bytes", all.len());
    }

    #[test]
    fn a_pipe_reaches_the_port_then_eof() {
        let (r, w) = std::io::pipe().unwrap();
        let (mut events, input) = pump_from(r.as_raw_fd());
        let mut w = w;
        w.write_all(b"hello\n").unwrap();
        drop(w);
        assert_eq!(read_to_eof(&mut events, &input), b"hello\n");
        drop(r);
    }

    #[test]
    fn a_regular_file_larger_than_the_port_arrives_whole() {
        let dir = std::env::temp_dir().join(format!("ferry-pump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in");
        let data: Vec<u8> = (0..HOST_INPUT_CAPACITY * 3 + 17)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        std::fs::write(&path, &data).unwrap();
        let fd = std::fs::File::open(&path).unwrap().into_raw_fd();
        let (mut events, input) = pump_from(fd);
        // Never more than the port holds at once.
        events.run_with_timeout(100).unwrap();
        assert!(input.lock().unwrap().room() == 0);
        assert_eq!(read_to_eof(&mut events, &input), data);
        // SAFETY: closes the descriptor taken above, no longer used.
        unsafe { libc::close(fd) };
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_null_is_eof_at_once() {
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let (mut events, input) = pump_from(fd);
        assert_eq!(read_to_eof(&mut events, &input), b"");
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
}
