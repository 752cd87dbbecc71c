//! One thread per queue: wait for the guest's kick (an ioeventfd), serve
//! every available chain through the FUSE server, return it as used and
//! interrupt the guest when the ring says it wants one (EVENT_IDX).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::dax::{DaxRequests, DaxWindow, PinError};
use super::{filter, init_reply, FsServer, FsStats, ShareFs};
use crate::virtio::ring::SplitRingLayout;
use crate::virtio::spec::{DESC_F_INDIRECT, DESC_F_NEXT};
use crate::virtio::{BusMaster, GuestMemoryShared, QueueVector, VirtioInterrupt};

pub(super) struct QueueWorker {
    pub tag: String,
    pub index: usize,
    pub queue: Queue,
    pub kick: EventFd,
    pub vector: QueueVector,
    pub stop: EventFd,
    pub mem: GuestMemoryShared,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Off: no ring access, no request, no interrupt until it is on again
    /// (the transport then kicks every queue).
    pub bus_master: BusMaster,
    /// Used entries added while bus mastering went off, not yet signalled.
    pub unsignalled: bool,
    pub server: Arc<FsServer>,
    /// The server's file system, for DESTROY (see below).
    pub fs: Arc<ShareFs>,
    pub stats: Arc<FsStats>,
    /// Serves SETUPMAPPING and REMOVEMAPPING when the share has a window.
    pub dax: Option<DaxRequests>,
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// A reply with no body: its header alone.
const OUT_HEADER_LEN: u32 = {
    assert!(std::mem::size_of::<OutHeader>() == 16);
    16
};

/// Why a round over the ring stopped early. Both are the guest's doing:
/// the next kick tries again and Ferry carries on.
#[derive(Debug, thiserror::Error)]
enum RingFault {
    #[error("{0:?}")]
    Queue(#[source] virtio_queue::Error),
    #[error("the available ring is broken (index or element out of range)")]
    BrokenAvailRing,
    /// Window pages come and go with mappings: Ferry cannot read a ring
    /// there safely.
    #[error("the guest placed the queue's rings in the DAX window")]
    RingsInWindow,
}

/// Why one chain went back unanswered (the guest sees an I/O error).
/// Every one is the guest's doing: what goes wrong on the host (a failed
/// open, a full disk) travels to the guest as an errno in a reply, not
/// here.
#[derive(Debug, thiserror::Error)]
enum RequestFault {
    #[error("an indirect descriptor table in the DAX window")]
    IndirectTableInWindow,
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A chain the transport cannot read or write (bad addresses, wrong
    /// directions, too short).
    #[error("{0}")]
    Chain(#[source] fuse_backend_rs::transport::Error),
    #[error("FUSE header: {0}")]
    Header(#[source] std::io::Error),
    #[error("{0}")]
    Reply(#[source] std::io::Error),
    /// A request the FUSE server refused to decode, or a reply buffer it
    /// could not fill.
    #[error("{0}")]
    Server(#[source] fuse_backend_rs::Error),
}

impl QueueWorker {
    pub fn run(mut self) {
        // Requests may already be waiting (a kick before activation).
        self.process();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.kick.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: polls two valid fds owned by this worker.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!(
                    "virtio-fs '{}' q{}: poll failed; worker stops",
                    self.tag,
                    self.index
                );
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let _ = self.kick.read();
                self.process();
            }
        }
    }

    #[cfg(any(test, feature = "harness"))]
    pub fn process_for_test(&mut self) {
        self.process();
    }

    fn process(&mut self) {
        if !self.bus_master.on() {
            return;
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        if self.rings_in_window(mem) {
            // The window's pages come and go with mappings: a ring there
            // would fault in Ferry (the fuzzer placed one there: SIGSEGV).
            log::warn!(
                "virtio-fs '{}' q{}: {}; requests ignored",
                self.tag,
                self.index,
                RingFault::RingsInWindow
            );
            return;
        }
        match self.drain(mem) {
            // With bus mastering off the interrupt waits until it is on.
            Ok(used) if !self.bus_master.on() => self.unsignalled |= used,
            Ok(used) => {
                if used | std::mem::take(&mut self.unsignalled) {
                    match self.queue.needs_notification(mem) {
                        Ok(true) => self.interrupt.notify(self.vector.get()),
                        Ok(false) => {}
                        Err(e) => log::warn!("virtio-fs '{}' q{}: {e:?}", self.tag, self.index),
                    }
                }
            }
            // A broken ring (bad addresses, wild indexes) stops this round;
            // the next kick tries again. Ferry itself carries on.
            Err(e) => log::warn!("virtio-fs '{}' q{}: queue error: {e}", self.tag, self.index),
        }
    }

    fn rings_in_window(&self, mem: &GuestMemoryMmap) -> bool {
        let Some(dax) = &self.dax else {
            return false;
        };
        let shown_at = dax.0.shown_in(mem);
        SplitRingLayout::of(&self.queue)
            .areas()
            .into_iter()
            .any(|(addr, len)| dax.0.overlaps(shown_at, addr, len))
    }

    /// Whether the chain from `head` uses an indirect table inside the
    /// window (read before the chain is walked: the walk itself would read
    /// the table). The direct descriptors lie in the descriptor table,
    /// which `rings_in_window` keeps out of the window.
    fn indirect_table_in(
        &self,
        window: &DaxWindow,
        shown_at: Option<u64>,
        mem: &GuestMemoryMmap,
        head: u16,
    ) -> bool {
        let ring = SplitRingLayout::of(&self.queue);
        let mut index = head;
        for _ in 0..ring.size {
            let Ok(d) = mem.read_obj::<RawDescriptor>(ring.desc_addr(index)) else {
                return false;
            };
            let d = SplitDescriptor::from(d);
            if d.flags() & DESC_F_INDIRECT != 0 {
                return window.overlaps(shown_at, d.addr().0, u64::from(d.len()));
            }
            if d.flags() & DESC_F_NEXT == 0 {
                return false;
            }
            index = d.next();
        }
        false
    }

    /// Serves chains until the ring is empty; returns whether any were used.
    fn drain(&mut self, mem: &GuestMemoryMmap) -> Result<bool, RingFault> {
        let mut used = false;
        let mut empty_rounds = 0;
        loop {
            self.queue
                .disable_notification(mem)
                .map_err(RingFault::Queue)?;
            let mut popped = false;
            while let Some(chain) = self
                .bus_master
                .on()
                .then(|| self.queue.pop_descriptor_chain(mem))
                .flatten()
            {
                let head = chain.head_index();
                let len = self.serve(mem, chain);
                self.queue
                    .add_used(mem, head, len)
                    .map_err(RingFault::Queue)?;
                used = true;
                popped = true;
            }
            if !self.bus_master.on() {
                return Ok(used);
            }
            if !self
                .queue
                .enable_notification(mem)
                .map_err(RingFault::Queue)?
            {
                return Ok(used);
            }
            // The ring says more is there, yet nothing could be popped:
            // `pop_descriptor_chain` reports a broken ring (an index past
            // its size, an element outside memory) as empty. One empty
            // round is a race with the guest; two mean popping again would
            // spin forever (found by the fuzzer). Wait for the next kick.
            empty_rounds = if popped { 0 } else { empty_rounds + 1 };
            if empty_rounds >= 2 {
                return Err(RingFault::BrokenAvailRing);
            }
        }
    }

    /// Returns the number of bytes written into the chain (0 on error: the
    /// chain goes back unanswered and the guest sees an I/O error).
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        match self.try_serve(mem, chain) {
            Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
            Err(e) => {
                self.stats.error();
                log::debug!(
                    "virtio-fs '{}' q{}: request dropped: {e}",
                    self.tag,
                    self.index
                );
                0
            }
        }
    }

    fn try_serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: Chain<'_>,
    ) -> Result<usize, RequestFault> {
        // Buffers in the DAX window must be backed while anything reads or
        // writes them, the header included (a header in an unmapped part
        // of the window faulted in Ferry: found by the fuzzer).
        let window = self.dax.as_ref().map(|d| d.0.clone());
        // Where this worker's memory view has the window: what it reads.
        let shown_at = window.as_ref().and_then(|w| w.shown_in(mem));
        // Only a window this view shows can hold a table: no walk otherwise.
        if let Some(w) = window.as_ref().filter(|_| shown_at.is_some()) {
            if self.indirect_table_in(w, shown_at, mem, chain.head_index()) {
                return Err(RequestFault::IndirectTableInWindow);
            }
        }
        let buffers = chain
            .clone()
            .map(|d| (d.addr().0, u64::from(d.len()), d.is_write_only()));
        let pin = match &window {
            Some(w) => w.pin(shown_at, buffers)?,
            None => None,
        };
        let mut peek =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(RequestFault::Chain)?;
        // Only the header is read here, to route the request; what the
        // guest may do is decided on the server's own copy (`policy`).
        let header: InHeader = peek.read_obj().map_err(RequestFault::Header)?;
        self.stats.request(self.index, header.opcode);
        let mut writer = VirtioFsWriter::new(mem, chain.clone()).map_err(RequestFault::Chain)?;
        // Unknown opcodes and DESTROY are answered here. Whatever matters
        // for safety is decided again on the server's own read of the
        // request (`policy`, `DaxRequests`): the guest may rewrite the
        // header after this peek.
        let answer = if !filter::is_known(header.opcode) {
            Some(libc::ENOSYS)
        } else if header.opcode == Opcode::Destroy as u32 {
            // The library's DESTROY replies but reports 0 bytes written:
            // answered here, after the guest's inodes and files are gone.
            self.fs.forget_guest();
            Some(0)
        } else {
            None
        };
        if let Some(errno) = answer {
            let reply = OutHeader {
                len: OUT_HEADER_LEN,
                error: -errno,
                unique: header.unique,
            };
            writer
                .write_all(reply.as_slice())
                .map_err(RequestFault::Reply)?;
            return Ok(reply.len as usize);
        }
        let reader =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(RequestFault::Chain)?;
        let dax = self
            .dax
            .as_mut()
            .map(|d| d as &mut dyn fuse_backend_rs::transport::FsCacheReqHandler);
        let served = self
            .server
            .handle_message(reader, writer.into(), dax, None)
            .map_err(RequestFault::Server);
        if header.opcode == Opcode::Init as u32 && served.is_ok() {
            if let Some(added) = init_reply::amend(mem, chain) {
                log::info!("virtio-fs '{}': FUSE INIT also takes {added:?}", self.tag);
            }
        }
        drop(pin);
        // A file the guest truncated (its DAX pages parked) may have grown
        // again: map it back before the guest hears of the new size. Cheap
        // when nothing is parked.
        if let Some(w) = window {
            w.restore_grown();
        }
        served
    }
}
