//! A virtio-fs queue worker driven without a VM: a split virtqueue laid
//! out in plain memory, FUSE messages placed in it, the worker run by hand.
//! The unit tests feed it hostile chains; `benches/request_path.rs` times
//! the request path with it. Test code: it panics on setup failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::QueueWorker;
use super::{CacheMode, DaxWindow, FsShare, VirtioFs};
use crate::virtio::VirtioInterrupt;

pub const QUEUE_LEN: u16 = 16;
// Ring layout in plain guest memory.
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const REQ_ADDR: u64 = 0x10_0000;
pub const REPLY_ADDR: u64 = 0x20_0000;
pub const REPLY_LEN: u32 = 0x2000;
pub use crate::virtio::spec::{
    DESC_F_INDIRECT as F_INDIRECT, DESC_F_NEXT as F_NEXT, DESC_F_WRITE as F_WRITE,
};

pub const LOOKUP: u32 = Opcode::Lookup as u32;
pub const GETATTR: u32 = Opcode::Getattr as u32;
pub const INIT: u32 = Opcode::Init as u32;
pub const ROOT: u64 = 1;

#[derive(Default)]
pub struct CountingInterrupt(AtomicUsize);
impl VirtioInterrupt for CountingInterrupt {
    fn notify(&self, _vector: u16) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub(super) worker: QueueWorker,
    pub next_desc: u16,
    /// The device the worker serves for (its reset, its server).
    pub device: VirtioFs,
    dir: TempDir,
    /// Where the worker's memory view shows the DAX window.
    window_shown: Option<u64>,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn fuse_request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    fuse_request_as((0, 0), opcode, unique, nodeid, body)
}

/// A request from the guest user with these `(uid, gid)`.
pub fn fuse_request_as(
    (uid, gid): (u32, u32),
    opcode: u32,
    unique: u64,
    nodeid: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&nodeid.to_le_bytes());
    v.extend_from_slice(&uid.to_le_bytes());
    v.extend_from_slice(&gid.to_le_bytes());
    v.extend_from_slice(&[0; 8]); // pid, padding
    v.extend_from_slice(body);
    v
}

/// A NUL-terminated name, as FUSE sends names.
pub fn cstr(name: &[u8]) -> Vec<u8> {
    let mut v = name.to_vec();
    v.push(0);
    v
}

/// Little-endian 32-bit words: most FUSE request bodies.
pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// `struct fuse_setattr_in` with only the mode set (FATTR_MODE).
pub fn setattr_mode(mode: u32) -> Vec<u8> {
    let mut b = vec![0u8; 88];
    b[0..4].copy_from_slice(&1u32.to_le_bytes());
    b[68..72].copy_from_slice(&mode.to_le_bytes());
    b
}

/// The node id of an entry reply (`fuse_entry_out` after the header).
pub fn node_of(reply: &[u8]) -> u64 {
    u64::from_le_bytes(reply[16..24].try_into().unwrap())
}

pub fn init_body() -> Vec<u8> {
    let mut b = Vec::new();
    for w in [7u32, 31, 0x20000, 0] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

impl Harness {
    /// The host directory behind the share.
    pub fn share_dir(&self) -> std::path::PathBuf {
        self.dir.0.join("share")
    }

    /// Requests the worker has served on its queue.
    pub fn requests_served(&self) -> u64 {
        self.worker.stats.queue_requests()[1]
    }

    pub fn new(readonly: bool) -> Harness {
        Harness::with_dax(readonly, None)
    }

    pub fn with_dax(readonly: bool, dax: Option<Arc<DaxWindow>>) -> Harness {
        Harness::with_share(readonly, dax, |_| {})
    }

    /// A harness whose share is amended by `amend` (options of `--fs`).
    pub fn with_share(
        readonly: bool,
        dax: Option<Arc<DaxWindow>>,
        amend: impl FnOnce(&mut FsShare),
    ) -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "ferry-fs-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(dir.join("share")).unwrap();
        std::fs::write(dir.join("share/file"), "content").unwrap();
        std::fs::write(dir.join("secret"), "outside").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut queue = Queue::new(QUEUE_LEN).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(DESC_TABLE))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(USED_RING))
            .unwrap();
        queue.set_ready(true);
        let mut share = FsShare {
            tag: "t".into(),
            path: dir.join("share"),
            request_queues: 1,
            readonly,
            cache: CacheMode::Never,
            dax_window: None,
            ..Default::default()
        };
        amend(&mut share);
        let fs = VirtioFs::new(share, None).unwrap();
        let worker = QueueWorker {
            tag: "t".into(),
            index: 1,
            queue,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            vector: crate::virtio::QueueVector::new(0),
            stop: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            mem: GuestMemoryAtomic::new(mem.clone()),
            interrupt: Arc::new(CountingInterrupt::default()),
            bus_master: crate::virtio::BusMaster::new(true),
            unsignalled: false,
            server: fs.server.clone(),
            fs: fs.fs.clone(),
            stats: fs.stats(),
            dax: dax.map(super::dax::DaxRequests),
        };
        Harness {
            mem,
            worker,
            next_desc: 0,
            device: fs,
            dir: TempDir(dir),
            window_shown: None,
        }
    }

    /// Places raw descriptors (as given, `next` fields included) in the
    /// table, makes the first one available and runs the worker. Returns the
    /// used length.
    pub fn submit_raw(&mut self, descs: &[RawDescriptor]) -> u32 {
        let idx = self.place_raw(descs).wrapping_sub(1);
        self.worker_round();
        let used = GuestAddress(USED_RING);
        let used_idx = self.used_idx();
        assert_eq!(
            used_idx,
            idx.wrapping_add(1),
            "the chain was not returned as used"
        );
        let slot = u64::from(used_idx.wrapping_sub(1) % QUEUE_LEN);
        self.mem
            .read_obj(used.unchecked_add(4 + 8 * slot + 4))
            .unwrap()
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(USED_RING).unchecked_add(2))
            .unwrap()
    }

    /// Places raw descriptors (as given) in the table and makes the first
    /// one available, without running the worker. Returns the used index
    /// the worker reaches by serving it.
    pub fn place_raw(&mut self, descs: &[RawDescriptor]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let at = DESC_TABLE + 16 * u64::from(head + i as u16);
            self.mem.write_obj(*d, GuestAddress(at)).unwrap();
        }
        let avail = GuestAddress(AVAIL_RING);
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        self.mem
            .write_obj(
                head,
                avail.unchecked_add(4 + 2 * u64::from(idx % QUEUE_LEN)),
            )
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.next_desc = (head + descs.len() as u16) % (QUEUE_LEN - 4);
        idx.wrapping_add(1)
    }

    pub fn worker_round(&mut self) {
        self.worker.process_for_test();
    }

    /// Puts a GETATTR of the root at REQ_ADDR (56 bytes).
    pub fn put_getattr(&self) {
        self.mem
            .write_slice(
                &fuse_request(GETATTR, 3, ROOT, &[0; 16]),
                GuestAddress(REQ_ADDR),
            )
            .unwrap();
    }

    /// Submits a two-descriptor chain: readable, then writable.
    pub fn submit_pair(&mut self, read: (u64, u32), write: (u64, u32)) -> u32 {
        let n = self.next_desc;
        self.submit_raw(&[
            desc(read.0, read.1, F_NEXT, n + 1),
            desc(write.0, write.1, F_WRITE, 0),
        ])
    }

    /// A well-formed request: one readable, one writable descriptor.
    pub fn request(&mut self, bytes: &[u8]) -> (u32, i32, Vec<u8>) {
        self.mem.write_slice(bytes, GuestAddress(REQ_ADDR)).unwrap();
        self.mem
            .write_slice(&vec![0xaa; REPLY_LEN as usize], GuestAddress(REPLY_ADDR))
            .unwrap();
        let len = self.submit_pair((REQ_ADDR, bytes.len() as u32), (REPLY_ADDR, REPLY_LEN));
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_ADDR))
            .unwrap();
        let error = if len >= 16 {
            i32::from_le_bytes(reply[4..8].try_into().unwrap())
        } else {
            0
        };
        (len, error, reply)
    }

    /// Serves one request with nothing else around it (no reply buffer
    /// reset, no reply copy): the used length.
    pub fn serve(&mut self, bytes: &[u8]) -> u32 {
        self.mem.write_slice(bytes, GuestAddress(REQ_ADDR)).unwrap();
        self.submit_pair((REQ_ADDR, bytes.len() as u32), (REPLY_ADDR, REPLY_LEN))
    }

    pub fn init(&mut self) {
        let (len, error, _) = self.request(&fuse_request(INIT, 1, 0, &init_body()));
        assert!(
            len >= 16 && error == 0,
            "INIT failed: len {len} error {error}"
        );
    }

    /// The worker still serves: GETATTR on the root succeeds.
    pub fn still_serves(&mut self) {
        let (len, error, _) = self.request(&fuse_request(GETATTR, 77, ROOT, &[0; 16]));
        assert_eq!(error, 0, "GETATTR after a bad request failed");
        assert!(len > 16);
    }

    /// Shows `window` in the worker's view of guest memory at `new`
    /// (`None`: nowhere), as the PCI transport does when the guest moves
    /// the BAR. The window's own record (`set_guest_addr`) is left to the
    /// caller: the two change at different moments in a real VM.
    pub fn show_window(&mut self, window: &DaxWindow, new: Option<u64>) {
        let old = std::mem::replace(&mut self.window_shown, new);
        let at = |guest_addr| crate::vm_ops::GuestMapping {
            guest_addr,
            size: window.size(),
            host_addr: window.host_addr(),
            readonly: false,
        };
        crate::virtio::pci::show_in_memory_view(&self.worker.mem, old.map(at), new.map(at))
            .expect("show the DAX window in the memory view");
    }

    pub fn lookup(&mut self, name: &[u8]) -> (u32, i32, Vec<u8>) {
        let mut body = name.to_vec();
        body.push(0);
        self.request(&fuse_request(LOOKUP, 5, ROOT, &body))
    }
}
