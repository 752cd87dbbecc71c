//! The 8250 UART on COM1 (vm-superio), raising IRQ 4 through an irqfd.

use std::io::Write;

use vm_superio::{serial::NoEvents, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const SERIAL_PORT_COUNT: u64 = 8;
/// IER bit: interrupt when received data is available.
const IER_RECEIVED_DATA: u8 = 0x01;
const DATA: u8 = 0;
const LSR: u8 = 5;
const LSR_DATA_READY: u8 = 0x01;

/// An interrupt line backed by an `EventFd` that KVM watches as an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1. Output goes to `out`; input comes from [`Serial::enqueue_input`].
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    /// Input taken back from the FIFO when the guest stopped listening (the
    /// tty was closed): the next driver start-up would read and drop it.
    held: Vec<u8>,
}

impl Serial {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(EventFdTrigger(irq), out),
            held: Vec::new(),
        }
    }

    /// Whether the guest's driver listens for input: the received-data
    /// interrupt is enabled. Until then input waits on the host side, since a
    /// driver starting up clears the FIFO and would lose it.
    fn guest_listens(&self) -> bool {
        self.uart.state().interrupt_enable & IER_RECEIVED_DATA != 0
    }

    /// Room for input the guest will see now (0 while it is not listening).
    pub fn input_capacity(&self) -> usize {
        if self.guest_listens() {
            self.uart.fifo_capacity()
        } else {
            0
        }
    }

    /// Queues host input for the guest; returns how many bytes it took.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if !self.guest_listens() {
            return 0;
        }
        // A full FIFO is the only error; report it as nothing taken.
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), &mut *data) {
            (Ok(off), [byte]) => *byte = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            let listened = self.guest_listens();
            if let Err(e) = self.uart.write(off, *byte) {
                log::debug!("serial: write at offset {off}: {e:?}");
            }
            match (listened, self.guest_listens()) {
                (true, false) => {
                    while self.uart.read(LSR) & LSR_DATA_READY != 0 {
                        let b = self.uart.read(DATA);
                        self.held.push(b);
                    }
                }
                (false, true) if !self.held.is_empty() => {
                    let held = std::mem::take(&mut self.held);
                    let taken = self.uart.enqueue_raw_bytes(&held).unwrap_or(0);
                    self.held = held[taken..].to_vec();
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::legacy::TestSink as Sink;

    #[test]
    fn transmit_reaches_output_and_input_is_readable() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");

        // Enable the received-data interrupt, then feed input.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'o');
    }

    #[test]
    fn input_waits_until_the_guest_listens() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(std::io::sink()));
        assert_eq!(s.input_capacity(), 0);
        assert_eq!(s.enqueue_input(b"early"), 0);
        s.write(1, &[0x01]);
        assert!(s.input_capacity() > 0);
        assert_eq!(s.enqueue_input(b"late"), 4);
    }

    #[test]
    fn input_survives_the_guest_closing_and_reopening_the_port() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(std::io::sink()));
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"echo"), 4);
        // The tty closes (IER off), then the 8250 start-up reads RX once
        // to clear it before enabling interrupts again.
        s.write(1, &[0x00]);
        let mut b = [0u8];
        s.read(0, &mut b);
        s.write(1, &[0x01]);
        let mut got = Vec::new();
        loop {
            s.read(u64::from(LSR), &mut b);
            if b[0] & LSR_DATA_READY == 0 {
                break;
            }
            s.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"echo");
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(std::io::sink()));
        let mut b = [0u8; 2];
        s.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        s.write(0, &[1, 2]);
    }

    #[test]
    fn full_fifo_takes_nothing() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(std::io::sink()));
        s.write(1, &[0x01]);
        let cap = s.input_capacity();
        assert_eq!(s.enqueue_input(&vec![b'x'; cap + 10]), cap);
        assert_eq!(s.enqueue_input(b"y"), 0);
    }
}
