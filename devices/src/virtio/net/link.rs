//! What the card's frames travel over: passt's end of a socket pair, or a
//! tap device the user brought. Both are one descriptor the worker polls;
//! they differ in how frames are delimited ([`Framing`]) and in the MTU
//! the guest is told.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::frames::Framing;
use super::MTU;

pub enum Link {
    /// A stream socket carrying length-prefixed frames (passt).
    Stream(UnixStream),
    /// A tap device opened with IFF_TAP | IFF_NO_PI, and its MTU (the
    /// guest gets the same, so neither side sends what the other drops).
    Tap { file: File, mtu: u16 },
}

impl Link {
    pub fn framing(&self) -> Framing {
        match self {
            Link::Stream(_) => Framing::LengthPrefixed,
            Link::Tap { .. } => Framing::Datagram,
        }
    }

    /// The MTU the device offers the guest.
    pub fn mtu(&self) -> u16 {
        match self {
            Link::Stream(_) => MTU,
            Link::Tap { mtu, .. } => *mtu,
        }
    }

    /// Whether the link carries on after a write that failed with `e`. A
    /// stream does not (a frame cut short would desynchronise it); a tap
    /// loses that one frame (ENOMEM, or EIO while the host has it down)
    /// unless it was detached (EBADFD).
    pub fn survives_write_error(&self, e: &io::Error) -> bool {
        match self {
            Link::Stream(_) => false,
            Link::Tap { .. } => e.raw_os_error() != Some(libc::EBADFD),
        }
    }

    /// Non-blocking: the worker waits in poll, never in a read or write.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Link::Stream(s) => s.set_nonblocking(true),
            Link::Tap { file, .. } => {
                let fd = file.as_raw_fd();
                // SAFETY: fcntl on a descriptor we own, flags only.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                if flags < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: as above.
                let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Stream(s) => s.read(buf),
            Link::Tap { file, .. } => file.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Stream(s) => s.write(buf),
            Link::Tap { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Link {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Link::Stream(s) => s.as_raw_fd(),
            Link::Tap { file, .. } => file.as_raw_fd(),
        }
    }
}
