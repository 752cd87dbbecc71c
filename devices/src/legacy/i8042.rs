//! The i8042 keyboard controller, present only for its CPU reset line:
//! Linux's `reboot=k` writes 0xFE to port 0x64. Reads return 0 so the
//! kernel's "wait until input buffer empty" loop ends.

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use super::serial::EventFdTrigger;
use crate::bus::BusDevice;

pub const I8042_PORT: u64 = 0x60;
/// 0x60..=0x64 (data, port 0x61 system control, status/command).
pub const I8042_PORT_COUNT: u64 = 5;

pub struct I8042(I8042Device<EventFdTrigger>);

impl I8042 {
    /// `reset` is signalled when the guest asks for a CPU reset.
    pub fn new(reset: EventFd) -> Self {
        I8042(I8042Device::new(EventFdTrigger(reset)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The bus hands this device its two ports only: offset 0 or 4.
        let value = u8::try_from(offset).map_or(0xff, |o| self.0.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.0.write(off, *byte) {
                log::warn!("i8042: could not signal reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_and_status_reads_zero() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        let mut b = [0xaau8];
        dev.read(4, &mut b);
        assert_eq!(b[0], 0);
        dev.write(4, &[0x01]);
        assert!(evt.read().is_err(), "no reset for other commands");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
