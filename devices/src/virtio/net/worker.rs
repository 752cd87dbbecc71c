//! The virtio-net worker: one thread for both queues and the backend's
//! socket. Transmit: each chain the guest makes available is one frame
//! behind a `virtio_net_hdr_v1`, copied out and written to the socket;
//! while the socket is full, the transmit queue waits. Receive: frames from
//! the socket go one per receive chain; while the guest has posted no
//! buffer, the socket is not read (its kernel buffer holds what passt
//! sends, and passt's own flow control slows the sender). So neither side
//! makes Ferry buffer more than one frame each way.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::frames::{FrameReader, FrameWriter, MAX_FRAME, MIN_FRAME};
use super::link::Link;
use super::NetStats;
use crate::virtio::{BusMaster, GuestMemoryShared, QueueVector, VirtioInterrupt};

/// `virtio_net_hdr_v1` (virtio 1.2, 5.1.6): with VERSION_1 it always has
/// `num_buffers`, 12 bytes. Ferry offers no offload, so on transmit it is
/// all zeros to skip, and on receive all zeros but `num_buffers` = 1.
pub const NET_HDR_LEN: usize = 12;
const NUM_BUFFERS_AT: usize = 10;

/// While the guest has bus mastering off, the worker looks for it coming
/// back this often (the backend is not polled meanwhile: its frames
/// could not be delivered).
const BUS_MASTER_POLL_MS: i32 = 100;

/// One of the device's queues as the worker holds it.
pub struct NetQueue {
    pub queue: Queue,
    pub kick: EventFd,
    pub vector: QueueVector,
}

/// What outlives a worker: the backend and the frames in flight, given
/// back to the device on reset so the next activation carries on the same
/// stream (a frame cut in half would desynchronise it).
pub struct Backend {
    pub link: Link,
    pub inbound: FrameReader,
    pub outbound: FrameWriter,
    /// Set once the stream failed (passt gone, a bad frame length): from
    /// then on transmitted frames are dropped and nothing is received.
    pub failed: bool,
}

impl Backend {
    /// `link` made non-blocking: the worker waits in poll, never in a
    /// read or write.
    pub fn new(link: Link) -> std::io::Result<Self> {
        link.set_nonblocking()?;
        Ok(Backend {
            inbound: FrameReader::new(link.framing()),
            outbound: FrameWriter::new(link.framing()),
            link,
            failed: false,
        })
    }
}

pub struct NetWorker {
    pub rx: NetQueue,
    pub tx: NetQueue,
    pub backend: Backend,
    pub stop: EventFd,
    pub mem: GuestMemoryShared,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub bus_master: BusMaster,
    pub stats: Arc<NetStats>,
    /// The card's link status, cleared when the backend fails.
    pub link_up: Arc<AtomicBool>,
    pub config_vector: QueueVector,
    /// The guest has no receive buffer: wait for its kick, not the socket.
    pub rx_starved: bool,
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Why one transmitted chain was dropped (the guest's doing).
#[derive(Debug, thiserror::Error)]
enum TxFault {
    #[error("{0}")]
    Chain(#[source] virtio_queue::Error),
    #[error("a frame of {0} bytes with its header (allowed {min}..={max})", min = NET_HDR_LEN + MIN_FRAME, max = NET_HDR_LEN + MAX_FRAME)]
    Size(usize),
    #[error("reading the frame: {0}")]
    Read(#[source] std::io::Error),
}

/// The frame in a transmit chain, without its header.
fn tx_frame(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<Vec<u8>, TxFault> {
    let mut reader = chain.reader(mem).map_err(TxFault::Chain)?;
    let total = reader.available_bytes();
    // Checked before the allocation: the guest names the length.
    if !(NET_HDR_LEN + MIN_FRAME..=NET_HDR_LEN + MAX_FRAME).contains(&total) {
        return Err(TxFault::Size(total));
    }
    let mut header = [0u8; NET_HDR_LEN];
    reader.read_exact(&mut header).map_err(TxFault::Read)?;
    let mut frame = vec![0u8; total - NET_HDR_LEN];
    reader.read_exact(&mut frame).map_err(TxFault::Read)?;
    Ok(frame)
}

/// What one pass over a queue did.
#[derive(Default)]
struct Pass {
    used: bool,
}

impl NetWorker {
    /// Serves until the stop event; returns the backend for the next
    /// activation.
    pub fn run(mut self) -> Backend {
        self.process();
        loop {
            let mastering = self.bus_master.on();
            let mut backend_events = 0;
            if !self.backend.failed && mastering {
                if !self.rx_starved {
                    backend_events |= libc::POLLIN;
                }
                if self.backend.outbound.busy() {
                    backend_events |= libc::POLLOUT;
                }
            }
            // A descriptor polled for no event still reports POLLHUP and
            // POLLERR (passt gone, a tap detached): left out, or the
            // worker would spin on it.
            let backend_fd = if backend_events == 0 {
                -1
            } else {
                self.backend.link.as_raw_fd()
            };
            let mut fds = [
                pollfd(self.stop.as_raw_fd(), libc::POLLIN),
                pollfd(self.rx.kick.as_raw_fd(), libc::POLLIN),
                pollfd(self.tx.kick.as_raw_fd(), libc::POLLIN),
                pollfd(backend_fd, backend_events),
            ];
            // Bus mastering comes back with no event to wake on.
            let timeout = if mastering { -1 } else { BUS_MASTER_POLL_MS };
            // SAFETY: polls four pollfds owned by this worker (a negative
            // fd is skipped by the kernel).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 4, timeout) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("virtio-net: poll failed; the worker stops");
                return self.backend;
            }
            if fds[0].revents != 0 {
                return self.backend;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let _ = self.rx.kick.read();
                self.rx_starved = false;
            }
            if fds[2].revents & libc::POLLIN != 0 {
                let _ = self.tx.kick.read();
            }
            self.process();
        }
    }

    /// One round over both directions (whatever woke the worker: each
    /// side checks its own state, so a spurious wake-up costs a few reads).
    pub fn process(&mut self) {
        if !self.bus_master.on() {
            return;
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        if let Err(e) = self.backend.outbound.flush(&mut self.backend.link) {
            self.write_failed(&e);
        }
        let tx = self.transmit(mem);
        Self::signal(mem, &mut self.tx, &self.interrupt, tx, "tx");
        let rx = self.receive(mem);
        Self::signal(mem, &mut self.rx, &self.interrupt, rx, "rx");
    }

    fn signal(
        mem: &GuestMemoryMmap,
        q: &mut NetQueue,
        interrupt: &Arc<dyn VirtioInterrupt>,
        pass: Pass,
        name: &str,
    ) {
        if !pass.used {
            return;
        }
        match q.queue.needs_notification(mem) {
            Ok(true) => {
                log::trace!("{name}: interrupt");
                interrupt.notify(q.vector.get())
            }
            Ok(false) => log::trace!("{name}: no interrupt needed"),
            Err(e) => log::warn!("virtio-net {name}: {e:?}"),
        }
    }

    /// A write the backend refused: that frame lost, or the backend,
    /// as its [`Link`] says.
    fn write_failed(&mut self, e: &std::io::Error) {
        if self.backend.link.survives_write_error(e) {
            log::debug!("virtio-net tx: the tap refused a frame: {e}");
            self.backend.outbound.discard();
            self.stats.tx_dropped();
        } else {
            self.backend_failed(&format!("writing to it: {e}"));
        }
    }

    fn backend_failed(&mut self, why: &str) {
        if !self.backend.failed {
            log::error!(
                "virtio-net: the network backend failed ({why}); the guest's network is down"
            );
            self.backend.failed = true;
            self.stats.backend_failed();
            self.link_up.store(false, Ordering::Relaxed);
            self.interrupt.notify(self.config_vector.get());
        }
    }

    /// Pops the next chain of `q`, re-enabling notifications when the ring
    /// looks empty so a chain added meanwhile is not missed (and a broken
    /// ring, which `virtio-queue` reports as empty, ends the pass).
    fn pop<'m>(q: &mut NetQueue, mem: &'m GuestMemoryMmap) -> Option<Chain<'m>> {
        for _ in 0..2 {
            if q.queue.disable_notification(mem).is_err() {
                return None;
            }
            if let Some(chain) = q.queue.pop_descriptor_chain(mem) {
                return Some(chain);
            }
            match q.queue.enable_notification(mem) {
                // Nothing more: the guest kicks when it adds some.
                Ok(false) | Err(_) => return None,
                Ok(true) => {}
            }
        }
        None
    }

    fn transmit(&mut self, mem: &GuestMemoryMmap) -> Pass {
        let mut pass = Pass::default();
        while !self.backend.outbound.busy() && self.bus_master.on() {
            let Some(chain) = Self::pop(&mut self.tx, mem) else {
                break;
            };
            let head = chain.head_index();
            match tx_frame(mem, chain) {
                Ok(frame) if !self.backend.failed => {
                    log::trace!("tx frame {} bytes", frame.len());
                    match self.backend.outbound.send(&frame, &mut self.backend.link) {
                        Ok(()) => self.stats.tx_frame(),
                        Err(e) => self.write_failed(&e),
                    }
                }
                Ok(_) => self.stats.tx_dropped(),
                Err(e) => {
                    self.stats.tx_dropped();
                    log::debug!("virtio-net tx: frame dropped: {e}");
                }
            }
            if let Err(e) = self.tx.queue.add_used(mem, head, 0) {
                log::warn!("virtio-net tx: {e:?}");
                break;
            }
            pass.used = true;
        }
        pass
    }

    fn receive(&mut self, mem: &GuestMemoryMmap) -> Pass {
        let mut pass = Pass::default();
        while !self.backend.failed && self.bus_master.on() {
            let frame = match self.backend.inbound.frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => match self.backend.inbound.fill(&mut self.backend.link) {
                    Ok(0) => {
                        self.backend_failed("it closed the connection");
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.backend_failed(&format!("reading from it: {e}"));
                        break;
                    }
                },
                Err(bad) => {
                    self.backend_failed(&bad.to_string());
                    break;
                }
            };
            let Some(chain) = Self::pop(&mut self.rx, mem) else {
                // Kept in the buffer until the guest posts a buffer.
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= NET_HDR_LEN + frame.len() => {
                    let mut header = [0u8; NET_HDR_LEN];
                    header[NUM_BUFFERS_AT] = 1;
                    match w.write_all(&header).and_then(|()| w.write_all(frame)) {
                        Ok(()) => {
                            self.stats.rx_frame();
                            log::trace!("rx frame {} bytes", frame.len());
                            NET_HDR_LEN + frame.len()
                        }
                        Err(e) => {
                            log::debug!("virtio-net rx: writing the frame: {e}");
                            self.stats.rx_dropped();
                            0
                        }
                    }
                }
                // A buffer too small for the frame (the driver sizes its
                // buffers for the MTU it was given): dropped, counted.
                _ => {
                    self.stats.rx_dropped();
                    0
                }
            };
            self.backend.inbound.consume();
            let len = u32::try_from(written).unwrap_or(0);
            if let Err(e) = self.rx.queue.add_used(mem, head, len) {
                log::warn!("virtio-net rx: {e:?}");
                break;
            }
            pass.used = true;
        }
        pass
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
