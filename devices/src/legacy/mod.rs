//! PC legacy devices: COM1, the i8042 reset line, and Ferry's exit port,
//! output streams and input port.

mod exit_port;
mod host_input;
mod host_stream;
mod i8042;
mod serial;

pub use exit_port::{ExitPort, GuestExit, EXIT_PORT};
pub use host_input::{
    HostInput, HOST_INPUT_CAPACITY, HOST_INPUT_EOF, HOST_INPUT_PORT, HOST_INPUT_PORT_COUNT,
    HOST_INPUT_SELECT_WINSIZE, HOST_INPUT_WINSIZE_GEN,
};
pub use host_stream::{HostStreams, HOST_STREAM_PORT, HOST_STREAM_PORT_COUNT};
pub use i8042::{I8042, I8042_PORT, I8042_PORT_COUNT};
pub use serial::{EventFdTrigger, Serial, COM1_IRQ, COM1_PORT, SERIAL_PORT_COUNT};

/// A `Write` whose bytes the test can read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TestSink(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for TestSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
