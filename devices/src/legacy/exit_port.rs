//! Ferry's exit port: the guest writes one byte to I/O port 0xf4 and Ferry
//! exits with that value as its status. Wider writes use the low byte.

use std::sync::Arc;

use crate::bus::BusDevice;

pub const EXIT_PORT: u64 = 0xf4;

/// Receives the guest's request to end the VM.
pub trait GuestExit: Send + Sync {
    fn guest_exit(&self, status: u8);
}

pub struct ExitPort(Arc<dyn GuestExit>);

impl ExitPort {
    pub fn new(sink: Arc<dyn GuestExit>) -> Self {
        ExitPort(sink)
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(status)) = (offset, data.first()) {
            self.0.guest_exit(*status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Record(Mutex<Vec<u8>>);
    impl GuestExit for Record {
        fn guest_exit(&self, status: u8) {
            self.0.lock().unwrap().push(status);
        }
    }

    #[test]
    fn written_byte_is_the_status() {
        let rec = Arc::new(Record(Mutex::new(Vec::new())));
        let mut port = ExitPort::new(rec.clone());
        port.write(0, &[42]);
        port.write(0, &[3, 0, 0, 0]);
        assert_eq!(*rec.0.lock().unwrap(), vec![42, 3]);
    }
}
