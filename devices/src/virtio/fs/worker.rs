//! One thread per queue: wait for the guest's kick (an ioeventfd), serve
//! every available chain through the FUSE server, return it as used and
//! interrupt the guest when the ring says it wants one (EVENT_IDX).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::dax::DaxRequests;
use super::{filter, init_reply, FsServer, FsStats};
use crate::virtio::{GuestMemoryShared, VirtioInterrupt};

pub(super) struct QueueWorker {
    pub tag: String,
    pub index: usize,
    pub queue: Queue,
    pub kick: EventFd,
    pub vector: u16,
    pub stop: EventFd,
    pub mem: GuestMemoryShared,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub server: Arc<FsServer>,
    pub readonly: bool,
    pub stats: Arc<FsStats>,
    /// Serves SETUPMAPPING and REMOVEMAPPING when the share has a window.
    pub dax: Option<DaxRequests>,
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

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
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        match self.drain(mem) {
            Ok(true) => match self.queue.needs_notification(mem) {
                Ok(true) => self.interrupt.notify(self.vector),
                Ok(false) => {}
                Err(e) => log::warn!("virtio-fs '{}' q{}: {e:?}", self.tag, self.index),
            },
            Ok(false) => {}
            // A broken ring (bad addresses, wild indexes) stops this round;
            // the next kick tries again. Ferry itself carries on.
            Err(e) => log::warn!("virtio-fs {} q{}: queue error: {e:?}", self.tag, self.index),
        }
    }

    /// Serves chains until the ring is empty; returns whether any were used.
    fn drain(&mut self, mem: &GuestMemoryMmap) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        loop {
            self.queue.disable_notification(mem)?;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = self.serve(mem, chain);
                self.queue.add_used(mem, head, len)?;
                used = true;
            }
            if !self.queue.enable_notification(mem)? {
                return Ok(used);
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

    fn try_serve(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<usize, String> {
        let mut peek =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(|e| e.to_string())?;
        let header: InHeader = peek.read_obj().map_err(|e| format!("FUSE header: {e}"))?;
        self.stats.request(self.index, header.opcode);
        // Buffers in the DAX window must be backed while the server copies.
        let window = self.dax.as_ref().map(|d| d.0.clone());
        let buffers = chain
            .clone()
            .map(|d| (d.addr().0, u64::from(d.len()), d.is_write_only()));
        let pin = match &window {
            Some(w) => w.pin(buffers).map_err(|e| e.to_string())?,
            None => None,
        };
        let mut writer = VirtioFsWriter::new(mem, chain.clone()).map_err(|e| e.to_string())?;
        let refused = if pin.is_some() && filter::changes_dax_mappings(header.opcode) {
            // Mapping changes wait for pins to go: this one would wait
            // for itself.
            Some(libc::EINVAL)
        } else {
            filter::refuse(&header, &mut peek, self.readonly)
        };
        if let Some(errno) = refused {
            let reply = OutHeader {
                len: std::mem::size_of::<OutHeader>() as u32,
                error: -errno,
                unique: header.unique,
            };
            writer
                .write_all(reply.as_slice())
                .map_err(|e| e.to_string())?;
            return Ok(reply.len as usize);
        }
        let reader =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(|e| e.to_string())?;
        let dax = self
            .dax
            .as_mut()
            .map(|d| d as &mut dyn fuse_backend_rs::transport::FsCacheReqHandler);
        let served = self
            .server
            .handle_message(reader, writer.into(), dax, None)
            .map_err(|e| e.to_string());
        if header.opcode == Opcode::Init as u32 && served.is_ok() {
            if let Some(added) = init_reply::amend(mem, chain) {
                log::info!("virtio-fs '{}': FUSE INIT also takes {added:?}", self.tag);
            }
        }
        drop(pin);
        // A file the guest truncated (its DAX pages parked) may have grown
        // again: map it back before the guest hears of the new size.
        if let Some(w) = window.filter(|_| filter::may_grow_file(header.opcode)) {
            w.restore_grown();
        }
        served
    }
}
