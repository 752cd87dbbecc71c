//! Ferry's input port: a byte stream from the host (Ferry's stdin) to the
//! guest, the counterpart of the output ports in `host_stream`. `ferry
//! run`'s guest init reads it and feeds the command's stdin.
//!
//! Four ports, below the exit port. A 4-byte `in` at offset 0 reads the
//! status: the number of bytes ready (at most [`HOST_INPUT_CAPACITY`]),
//! with [`HOST_INPUT_EOF`] set once the host side has closed and nothing
//! is left, and in [`HOST_INPUT_WINSIZE_GEN`] a count of the host
//! terminal's size changes. Writing [`HOST_INPUT_SELECT_WINSIZE`] at
//! offset 2 makes the next 4-byte read at offset 0 return the size
//! instead (rows in the high half, columns in the low one). Byte reads at offset 1 take bytes off the stream, and `rep
//! insb` there moves up to a kilobyte per exit (KVM's string-I/O buffer),
//! so input needs no UART and no driver in the guest: any kernel that runs
//! Ferry's init can use it. A read past what is ready gets zeros (the guest
//! reads only what the status says).
//!
//! The guest has no interrupt to wait on; init polls the status with a
//! backoff while idle. When a read empties the buffer the device signals
//! `drained`, so the host refills it at once instead of on a timer.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First port of the device; ports `HOST_INPUT_PORT..+HOST_INPUT_PORT_COUNT`.
pub const HOST_INPUT_PORT: u64 = 0xf0;
pub const HOST_INPUT_PORT_COUNT: u64 = 4;
/// Bytes held for the guest at most: the host stops reading its input
/// while the guest does not take it (back-pressure, as a pipe gives).
pub const HOST_INPUT_CAPACITY: usize = 64 << 10;
/// Status bit: no more input will come.
pub const HOST_INPUT_EOF: u32 = 1 << 31;
/// Status bits: the terminal size's generation (wrapping).
pub const HOST_INPUT_WINSIZE_GEN: u32 = 0x7f << 24;
/// Written at offset 2: the next status read returns the terminal size.
pub const HOST_INPUT_SELECT_WINSIZE: u8 = 1;

const STATUS_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const SELECT_OFFSET: u64 = 2;

pub struct HostInput {
    ready: VecDeque<u8>,
    closed: bool,
    drained: Option<EventFd>,
    /// (rows, columns) of the host terminal, and how often it changed.
    winsize: (u16, u16),
    winsize_gen: u32,
    winsize_selected: bool,
}

impl Default for HostInput {
    fn default() -> Self {
        Self::new()
    }
}

impl HostInput {
    pub fn new() -> Self {
        HostInput {
            ready: VecDeque::new(),
            closed: false,
            drained: None,
            winsize: (0, 0),
            winsize_gen: 0,
            winsize_selected: false,
        }
    }

    /// `event` is written each time a guest read empties the buffer.
    pub fn notify_drained(&mut self, event: EventFd) {
        self.drained = Some(event);
    }

    /// Bytes the host may still add.
    pub fn room(&self) -> usize {
        HOST_INPUT_CAPACITY.saturating_sub(self.ready.len())
    }

    /// Adds what fits of `bytes`; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.closed {
            return 0;
        }
        let n = bytes.len().min(self.room());
        self.ready.extend(&bytes[..n]);
        n
    }

    /// The host's input ended: the guest sees EOF once it has read the rest.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// The host terminal's size changed (or is first known).
    pub fn set_winsize(&mut self, rows: u16, cols: u16) {
        self.winsize = (rows, cols);
        self.winsize_gen = self.winsize_gen.wrapping_add(1);
    }

    fn status(&mut self) -> u32 {
        if std::mem::take(&mut self.winsize_selected) {
            return (u32::from(self.winsize.0) << 16) | u32::from(self.winsize.1);
        }
        let gen = (self.winsize_gen << 24) & HOST_INPUT_WINSIZE_GEN;
        if self.ready.is_empty() && self.closed {
            HOST_INPUT_EOF | gen
        } else {
            // At most HOST_INPUT_CAPACITY, far below the generation bits.
            u32::try_from(self.ready.len()).map_or(0, |n| n & !HOST_INPUT_WINSIZE_GEN) | gen
        }
    }

    fn take(&mut self, data: &mut [u8]) {
        let n = data.len().min(self.ready.len());
        for (d, b) in data.iter_mut().zip(self.ready.drain(..n)) {
            *d = b;
        }
        data[n..].fill(0);
        if n > 0 && self.ready.is_empty() {
            if let Some(e) = &self.drained {
                let _ = e.write(1);
            }
        }
    }
}

impl BusDevice for HostInput {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            STATUS_OFFSET => {
                let status = self.status().to_le_bytes();
                let n = data.len().min(status.len());
                data[..n].copy_from_slice(&status[..n]);
                data[n..].fill(0);
            }
            DATA_OFFSET => self.take(data),
            _ => data.fill(0),
        }
    }

    /// `rep insb` at the data port: one read as long as the repetition.
    fn read_bulk(&mut self, offset: u64, data: &mut [u8]) -> bool {
        if offset != DATA_OFFSET {
            return false;
        }
        self.take(data);
        true
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == SELECT_OFFSET && data.first() == Some(&HOST_INPUT_SELECT_WINSIZE) {
            self.winsize_selected = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dev: &mut HostInput) -> u32 {
        let mut s = [0u8; 4];
        dev.read(STATUS_OFFSET, &mut s);
        u32::from_le_bytes(s)
    }

    #[test]
    fn bytes_flow_in_order_then_eof() {
        let mut dev = HostInput::new();
        assert_eq!(status(&mut dev), 0);
        assert_eq!(dev.push(b"hello "), 6);
        assert_eq!(dev.push(b"world"), 5);
        assert_eq!(status(&mut dev), 11);
        let mut word = [0u8; 4];
        dev.read(DATA_OFFSET, &mut word);
        assert_eq!(&word, b"hell");
        let mut rest = [0xaau8; 10];
        assert!(dev.read_bulk(DATA_OFFSET, &mut rest));
        // Seven were ready; the rest of the read is zeros.
        assert_eq!(&rest, b"o world\0\0\0");
        dev.close();
        assert_eq!(status(&mut dev), HOST_INPUT_EOF);
        assert_eq!(dev.push(b"late"), 0);
    }

    #[test]
    fn eof_waits_for_the_guest_to_read_the_rest() {
        let mut dev = HostInput::new();
        dev.push(b"ab");
        dev.close();
        assert_eq!(status(&mut dev), 2);
        let mut two = [0u8; 2];
        dev.read(DATA_OFFSET, &mut two);
        assert_eq!(status(&mut dev), HOST_INPUT_EOF);
    }

    #[test]
    fn capacity_gives_back_pressure() {
        let mut dev = HostInput::new();
        let big = vec![7u8; HOST_INPUT_CAPACITY + 100];
        assert_eq!(dev.push(&big), HOST_INPUT_CAPACITY);
        assert_eq!(dev.room(), 0);
        assert_eq!(dev.push(b"x"), 0);
        let mut kb = vec![0u8; 1024];
        assert!(dev.read_bulk(DATA_OFFSET, &mut kb));
        assert_eq!(dev.room(), 1024);
    }

    #[test]
    fn emptying_the_buffer_signals_the_host() {
        let mut dev = HostInput::new();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        dev.notify_drained(drained.try_clone().unwrap());
        dev.push(b"abc");
        let mut one = [0u8; 1];
        dev.read(DATA_OFFSET, &mut one);
        assert!(drained.read().is_err(), "not empty yet");
        let mut two = [0u8; 2];
        dev.read(DATA_OFFSET, &mut two);
        assert_eq!(drained.read().unwrap(), 1);
        // A read of nothing ready signals nothing.
        dev.read(DATA_OFFSET, &mut two);
        assert!(drained.read().is_err());
    }

    #[test]
    fn the_terminal_size_has_a_generation_and_a_register() {
        let mut dev = HostInput::new();
        dev.push(b"ab");
        assert_eq!(status(&mut dev), 2);
        dev.set_winsize(33, 101);
        let s = status(&mut dev);
        assert_eq!(s & !HOST_INPUT_WINSIZE_GEN, 2, "the count is unchanged");
        assert_eq!(s & HOST_INPUT_WINSIZE_GEN, 1 << 24);
        dev.write(SELECT_OFFSET, &[HOST_INPUT_SELECT_WINSIZE]);
        assert_eq!(status(&mut dev), (33 << 16) | 101);
        assert_eq!(
            status(&mut dev) & !HOST_INPUT_WINSIZE_GEN,
            2,
            "selected once"
        );
        for _ in 0..127 {
            dev.set_winsize(1, 1);
        }
        assert_eq!(
            status(&mut dev) & HOST_INPUT_WINSIZE_GEN,
            0,
            "wraps in 7 bits"
        );
        dev.close();
        let mut two = [0u8; 2];
        dev.read(DATA_OFFSET, &mut two);
        assert_eq!(status(&mut dev) & HOST_INPUT_EOF, HOST_INPUT_EOF);
    }

    #[test]
    fn other_offsets_and_bulk_status_reads_are_inert() {
        let mut dev = HostInput::new();
        dev.push(b"z");
        let mut s = [0xffu8; 8];
        assert!(!dev.read_bulk(STATUS_OFFSET, &mut s));
        dev.write(DATA_OFFSET, b"ignored");
        assert_eq!(status(&mut dev), 1);
    }
}
