//! Ethernet frames on the backend's descriptor: on a stream socket, as
//! passt and QEMU's `-netdev stream` carry them, each frame preceded by its
//! length, a 4-byte big-endian integer; on a tap device one frame per read
//! or write. Both directions are bounded by one largest frame, so what the
//! other end sends (or fails to drain) never makes Ferry allocate more.

use std::io::{self, Read, Write};

/// The largest frame either side may send: an IP packet's 65,535 bytes
/// plus the 14-byte Ethernet header (passt sends no VLAN tags). passt's
/// default MTU, 65,520, stays under it.
pub const MAX_FRAME: usize = 65_535 + 14;
/// The smallest: an Ethernet header.
pub const MIN_FRAME: usize = 14;
const LEN_PREFIX: usize = 4;

/// The stream is no longer one Ethernet frame after another: a length
/// prefix out of range. Nothing after it can be trusted (a stream has no
/// resynchronisation point), so the backend is done with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the network backend sent a frame length of {0} bytes (allowed {MIN_FRAME}..={MAX_FRAME})")]
pub struct BadFrameLength(pub u32);

/// How frames are delimited on the backend's descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// A stream: each frame behind its length (passt).
    #[default]
    LengthPrefixed,
    /// A tap device: a read gives one whole frame, a write takes one.
    Datagram,
}

/// Frames from the backend: a buffer of one largest frame and its prefix
/// (which, for a tap's frames, the reader writes itself, so both framings
/// are read back the same way).
pub struct FrameReader {
    framing: Framing,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new(Framing::default())
    }
}

impl FrameReader {
    pub fn new(framing: Framing) -> Self {
        FrameReader {
            framing,
            buf: vec![0; LEN_PREFIX + MAX_FRAME].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The length of the frame at the front, if its prefix is in.
    fn front_len(&self) -> Result<Option<usize>, BadFrameLength> {
        let Some(prefix) = self.buf.get(self.start..self.start + LEN_PREFIX) else {
            return Ok(None);
        };
        if self.end - self.start < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        match usize::try_from(len) {
            Ok(n) if (MIN_FRAME..=MAX_FRAME).contains(&n) => Ok(Some(n)),
            _ => Err(BadFrameLength(len)),
        }
    }

    /// The whole frame at the front, if it has arrived.
    pub fn frame(&self) -> Result<Option<&[u8]>, BadFrameLength> {
        Ok(self.front_len()?.and_then(|len| {
            let at = self.start + LEN_PREFIX;
            self.buf.get(at..at + len).filter(|_| self.end >= at + len)
        }))
    }

    /// Drops the frame at the front (after [`FrameReader::frame`] gave it).
    pub fn consume(&mut self) {
        if let Ok(Some(len)) = self.front_len() {
            self.start = (self.start + LEN_PREFIX + len).min(self.end);
        }
    }

    /// Reads what `from` has, up to the end of the frame at the front (so
    /// the buffer never holds more than one): Ok(0) at end of stream.
    /// Call only while [`FrameReader::frame`] has none whole.
    pub fn fill(&mut self, from: &mut impl Read) -> io::Result<usize> {
        if self.framing == Framing::Datagram {
            return self.fill_datagram(from);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Up to the end of the front frame (or of its prefix), no further:
        // the next frame waits in the socket, where the kernel bounds it.
        let want = match self.front_len() {
            Ok(Some(len)) => LEN_PREFIX + len,
            _ => LEN_PREFIX,
        };
        if self.end >= want {
            // A whole frame (or a bad prefix) waits: the caller's to take.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a whole frame waits in the buffer",
            ));
        }
        let n = from.read(&mut self.buf[self.end..want])?;
        self.end += n;
        Ok(n)
    }

    /// One read, one frame, its length written in front as a stream's.
    fn fill_datagram(&mut self, from: &mut impl Read) -> io::Result<usize> {
        if self.end > self.start {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a whole frame waits in the buffer",
            ));
        }
        let n = from.read(&mut self.buf[LEN_PREFIX..])?;
        let len = u32::try_from(n).unwrap_or(u32::MAX);
        self.buf[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        self.start = 0;
        self.end = if n == 0 { 0 } else { LEN_PREFIX + n };
        Ok(n)
    }
}

/// Frames to the backend: at most one frame waits for it to drain.
#[derive(Default)]
pub struct FrameWriter {
    framing: Framing,
    pending: Vec<u8>,
    sent: usize,
}

impl FrameWriter {
    pub fn new(framing: Framing) -> Self {
        FrameWriter {
            framing,
            ..FrameWriter::default()
        }
    }

    /// Whether a frame still waits for the socket.
    pub fn busy(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// Takes `frame` (not busy: check first) and writes what the socket
    /// accepts now.
    pub fn send(&mut self, frame: &[u8], to: &mut impl Write) -> io::Result<()> {
        debug_assert!(!self.busy());
        self.pending.clear();
        if self.framing == Framing::LengthPrefixed {
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            self.pending.extend_from_slice(&len.to_be_bytes());
        }
        self.pending.extend_from_slice(frame);
        self.sent = 0;
        self.flush(to)
    }

    /// Gives up the waiting frame (one the backend refused).
    pub fn discard(&mut self) {
        self.sent = self.pending.len();
    }

    /// Writes more of the waiting frame; WouldBlock is not an error here
    /// (the frame stays, [`FrameWriter::busy`] says so).
    pub fn flush(&mut self, to: &mut impl Write) -> io::Result<()> {
        while self.busy() {
            match to.write(&self.pending[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // A tap takes a frame whole or not at all.
                Ok(_) if self.framing == Framing::Datagram => self.sent = self.pending.len(),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&u32::try_from(f.len()).unwrap().to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// A reader that hands out at most `step` bytes a call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn all_frames(stream: &[u8], step: usize) -> Result<Vec<Vec<u8>>, BadFrameLength> {
        let mut r = FrameReader::default();
        let mut src = Trickle(stream, step);
        let mut out = Vec::new();
        loop {
            if let Some(f) = r.frame()? {
                out.push(f.to_vec());
                r.consume();
                continue;
            }
            if r.fill(&mut src).unwrap() == 0 {
                return Ok(out);
            }
        }
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_is_cut() {
        let a = [0xaa; 14];
        let b = vec![0xbb; MAX_FRAME];
        let c = [0xcc; 60];
        let stream = framed(&[&a, &b, &c]);
        for step in [1, 3, 4, 5, 1000, usize::MAX] {
            let got = all_frames(&stream, step).unwrap();
            assert_eq!(got, vec![a.to_vec(), b.clone(), c.to_vec()], "step {step}");
        }
    }

    #[test]
    fn a_length_out_of_range_is_refused() {
        for bad in [0u32, 13, u32::try_from(MAX_FRAME).unwrap() + 1, u32::MAX] {
            let mut stream = bad.to_be_bytes().to_vec();
            stream.extend_from_slice(&[0; 64]);
            assert_eq!(all_frames(&stream, 7), Err(BadFrameLength(bad)));
        }
    }

    /// A writer that takes `room` bytes, then would block.
    struct Narrow(Vec<u8>, usize);
    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.1 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.1);
            self.0.extend_from_slice(&buf[..n]);
            self.1 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_socket_keeps_the_frame_until_it_drains() {
        let mut w = FrameWriter::default();
        let mut sock = Narrow(Vec::new(), 10);
        w.send(&[7; 20], &mut sock).unwrap();
        assert!(w.busy());
        sock.1 = 100;
        w.flush(&mut sock).unwrap();
        assert!(!w.busy());
        assert_eq!(sock.0, framed(&[&[7; 20]]));
    }

    /// A tap: each read hands out one queued frame, each write is one.
    #[derive(Default)]
    struct Tap {
        to_read: std::collections::VecDeque<Vec<u8>>,
        written: Vec<Vec<u8>>,
        full: bool,
    }
    impl Read for Tap {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let f = self.to_read.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Ok(n)
        }
    }
    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.written.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_tap_gives_and_takes_one_frame_per_call() {
        let frames = [vec![0xaa; 14], vec![0xbb; MAX_FRAME], vec![0xcc; 60]];
        let mut tap = Tap {
            to_read: frames.iter().cloned().collect(),
            ..Tap::default()
        };
        let mut r = FrameReader::new(Framing::Datagram);
        let mut got = Vec::new();
        while r.fill(&mut tap).is_ok() {
            got.push(r.frame().unwrap().expect("a whole frame").to_vec());
            assert!(r.fill(&mut tap).is_err(), "one frame held at a time");
            r.consume();
        }
        assert_eq!(got, frames);

        let mut w = FrameWriter::new(Framing::Datagram);
        tap.full = true;
        w.send(&frames[2], &mut tap).unwrap();
        assert!(w.busy(), "kept while the tap is full");
        tap.full = false;
        w.flush(&mut tap).unwrap();
        assert!(!w.busy());
        assert_eq!(tap.written, [frames[2].clone()], "no length prefix");
    }

    #[test]
    fn a_runt_from_a_tap_is_refused() {
        let mut tap = Tap {
            to_read: [vec![1u8; 5]].into_iter().collect(),
            ..Tap::default()
        };
        let mut r = FrameReader::new(Framing::Datagram);
        assert_eq!(r.fill(&mut tap).unwrap(), 5);
        assert_eq!(r.frame(), Err(BadFrameLength(5)));
    }
}
