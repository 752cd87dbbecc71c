//! Ferry's output ports: two byte streams from the guest straight to host
//! files (Ferry's stdout and stderr), with no tty in between. A 1-, 2- or
//! 4-byte `out` at offset 0 appends those bytes to the first stream, at
//! offset 4 to the second. `ferry run`'s guest init relays the command's
//! stdout and stderr through them, so the two stay separate streams; a
//! 4-byte `out` carries four bytes per exit where a UART carries one.

use std::io::Write;

use crate::bus::BusDevice;

/// First port of the pair; ports `HOST_STREAM_PORT..+8`.
pub const HOST_STREAM_PORT: u64 = 0xf8;
pub const HOST_STREAM_PORT_COUNT: u64 = 8;
const STREAM_STRIDE: u64 = 4;

pub struct HostStreams {
    sinks: [Box<dyn Write + Send>; 2],
    /// A sink that failed (a closed pipe, say) drops what follows.
    broken: [bool; 2],
}

impl HostStreams {
    pub fn new(first: Box<dyn Write + Send>, second: Box<dyn Write + Send>) -> Self {
        HostStreams {
            sinks: [first, second],
            broken: [false; 2],
        }
    }
}

impl BusDevice for HostStreams {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only writes that start a stream's port count: a stray write to
        // the middle of one is dropped rather than guessed at.
        if !offset.is_multiple_of(STREAM_STRIDE) || data.len() as u64 > STREAM_STRIDE {
            return;
        }
        let Some(i) = usize::try_from(offset / STREAM_STRIDE)
            .ok()
            .filter(|&i| i < self.sinks.len())
        else {
            return;
        };
        if self.broken[i] {
            return;
        }
        if let Err(e) = self.sinks[i].write_all(data) {
            log::debug!("guest output stream {i} closed: {e}");
            self.broken[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::legacy::TestSink as Shared;

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_port_feeds_its_stream() {
        let (out, err) = (Shared::default(), Shared::default());
        let mut dev = HostStreams::new(Box::new(out.clone()), Box::new(err.clone()));
        dev.write(0, b"hell");
        dev.write(0, b"o");
        dev.write(4, b"oops");
        dev.write(2, b"xx"); // not a stream's first port
        dev.write(0, b"too long"); // wider than a port
        dev.write(8, b"x"); // past the pair
        assert_eq!(*out.0.lock().unwrap(), b"hello");
        assert_eq!(*err.0.lock().unwrap(), b"oops");
    }

    #[test]
    fn a_closed_sink_is_dropped_not_fatal() {
        let out = Shared::default();
        let mut dev = HostStreams::new(Box::new(Closed), Box::new(out.clone()));
        dev.write(0, b"lost");
        dev.write(0, b"lost");
        dev.write(4, b"kept");
        assert_eq!(*out.0.lock().unwrap(), b"kept");
    }
}
