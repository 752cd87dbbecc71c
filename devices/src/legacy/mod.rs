//! PC legacy devices: COM1, the i8042 reset line and Ferry's exit port.

mod exit_port;
mod i8042;
mod serial;

pub use exit_port::{ExitPort, GuestExit, EXIT_PORT};
pub use i8042::{I8042, I8042_PORT, I8042_PORT_COUNT};
pub use serial::{EventFdTrigger, Serial, COM1_IRQ, COM1_PORT, SERIAL_PORT_COUNT};
