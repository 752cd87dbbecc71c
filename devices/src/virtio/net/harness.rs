//! A virtio-net worker driven without a VM, for the unit tests and the
//! fuzz target: both queues in plain memory, the far end of the socket
//! pair playing passt, the worker run by hand. Test code: it panics on
//! setup failures.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Backend, NetQueue, NetWorker, NET_HDR_LEN};
use super::{Link, NetStats};
use crate::fake_vm::FakeVm;
use crate::virtio::driver_ring;
use crate::virtio::ring::SplitRingLayout;
use crate::virtio::spec::{DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{BusMaster, QueueVector};

pub const RAM: usize = 16 << 20;
/// The configuration-change vector (the queues use 0).
pub const CONFIG_VECTOR: u16 = 2;
pub const SIZE: u16 = 16;
pub const RX_RING: SplitRingLayout = SplitRingLayout {
    desc: 0x0,
    avail: 0x1000,
    used: 0x2000,
    size: SIZE,
};
pub const TX_RING: SplitRingLayout = SplitRingLayout {
    desc: 0x3000,
    avail: 0x4000,
    used: 0x5000,
    size: SIZE,
};
pub const BUFS: u64 = 0x10_0000;

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
        addr, len, flags, next,
    ))
}

pub struct Rig {
    pub mem: GuestMemoryMmap,
    pub worker: NetWorker,
    pub passt: UnixStream,
    pub rx_next: u16,
    pub tx_next: u16,
    pub stats: Arc<NetStats>,
    /// Where the worker's interrupts are counted.
    pub vm: Arc<FakeVm>,
}

pub fn queue(layout: &SplitRingLayout) -> NetQueue {
    NetQueue {
        queue: driver_ring::ready_queue(layout),
        kick: EventFd::new(libc::EFD_NONBLOCK).expect("net harness setup"),
        vector: QueueVector::new(0),
    }
}

impl Default for Rig {
    fn default() -> Self {
        Rig::new()
    }
}

impl Rig {
    /// The worker on a stream socket, as with passt.
    pub fn new() -> Rig {
        let (ours, passt) = UnixStream::pair().expect("net harness setup");
        Rig::on(Link::Stream(ours), passt)
    }

    /// The worker on a tap: a SOCK_SEQPACKET pair stands in for
    /// /dev/net/tun (a read gives one whole message, a write makes one, as
    /// a tap's do); `passt` is then the host's side of the tap.
    pub fn tap() -> Rig {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the two descriptors, owned right after.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "net harness setup: socketpair");
        // SAFETY: both descriptors were just made and are ours.
        let (ours, host) = unsafe { (File::from_raw_fd(fds[0]), UnixStream::from_raw_fd(fds[1])) };
        Rig::on(
            Link::Tap {
                file: ours,
                mtu: 1500,
            },
            host,
        )
    }

    fn on(link: Link, passt: UnixStream) -> Rig {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)])
            .expect("net harness setup");
        passt
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("net harness setup");
        let stats = Arc::new(NetStats::default());
        let vm = Arc::new(FakeVm::new(RAM as u64));
        let worker = NetWorker {
            rx: queue(&RX_RING),
            tx: queue(&TX_RING),
            backend: Backend::new(link).expect("net harness setup"),
            stop: EventFd::new(libc::EFD_NONBLOCK).expect("net harness setup"),
            mem: GuestMemoryAtomic::new(mem.clone()),
            interrupt: vm.clone(),
            bus_master: BusMaster::new(true),
            stats: stats.clone(),
            rx_starved: false,
            link_up: Arc::new(AtomicBool::new(true)),
            config_vector: QueueVector::new(CONFIG_VECTOR),
        };
        Rig {
            mem,
            worker,
            passt,
            rx_next: 0,
            tx_next: 0,
            stats,
            vm,
        }
    }

    /// The guest sends `frame` (header in its own descriptor, as Linux
    /// does not; both layouts must work) from buffer slot `slot`.
    pub fn guest_sends(&mut self, frame: &[u8], slot: u64) -> u16 {
        let at = BUFS + slot * 0x2_0000;
        self.mem
            .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(at))
            .expect("net harness setup");
        self.mem
            .write_slice(frame, GuestAddress(at + NET_HDR_LEN as u64))
            .expect("net harness setup");
        let head = self.tx_next;
        let len = u32::try_from(frame.len()).expect("net harness setup");
        let descs = [
            desc(at, n32(NET_HDR_LEN), DESC_F_NEXT, (head + 1) % SIZE),
            desc(at + NET_HDR_LEN as u64, len, 0, 0),
        ];
        self.tx_next = (head + 2) % SIZE;
        driver_ring::place(&self.mem, &TX_RING, head, &descs)
    }

    /// The guest posts a receive buffer of `len` bytes in slot `slot`.
    pub fn guest_posts(&mut self, len: u32, slot: u64) -> u16 {
        let at = 0x80_0000 + slot * 0x2_0000;
        let head = self.rx_next;
        self.rx_next = (head + 1) % SIZE;
        driver_ring::place(&self.mem, &RX_RING, head, &[desc(at, len, DESC_F_WRITE, 0)])
    }

    pub fn received(&self, slot: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.mem
            .read_slice(&mut out, GuestAddress(0x80_0000 + slot * 0x2_0000))
            .expect("net harness setup");
        out
    }

    pub fn passt_sends(&mut self, frame: &[u8]) {
        let len = u32::try_from(frame.len()).expect("net harness setup");
        self.passt
            .write_all(&len.to_be_bytes())
            .expect("net harness setup");
        self.passt.write_all(frame).expect("net harness setup");
    }

    pub fn passt_receives(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.passt.read_exact(&mut len).expect("net harness setup");
        let mut frame = vec![0; u32::from_be_bytes(len) as usize];
        self.passt
            .read_exact(&mut frame)
            .expect("net harness setup");
        frame
    }
}

pub fn n32(n: usize) -> u32 {
    u32::try_from(n).expect("a length that fits u32")
}
