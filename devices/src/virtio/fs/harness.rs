//! A virtio-fs queue worker driven without a VM: a split virtqueue laid
//! out in plain memory, FUSE messages placed in it, the worker run by hand.
//! The unit tests feed it hostile chains; `benches/request_path.rs` times
//! the request path with it. Test code: it panics on setup failures.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, InHeader, InitIn, Opcode, OutHeader, SetattrIn, SetattrValid,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::QueueWorker;
use super::{CacheMode, DaxWindow, FsShare, VirtioFs};
use crate::fake_vm::FakeVm;
use crate::virtio::driver_ring;
use crate::virtio::ring::SplitRingLayout;

pub const QUEUE_LEN: u16 = 16;
/// The harness's guest memory: plain RAM from address 0.
pub const GUEST_RAM: u64 = GUEST_RAM_BYTES as u64;
const GUEST_RAM_BYTES: usize = 16 << 20;
// Ring layout in plain guest memory.
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
/// The queue as the harness lays it out.
pub const RING: SplitRingLayout = SplitRingLayout {
    desc: DESC_TABLE,
    avail: AVAIL_RING,
    used: USED_RING,
    size: QUEUE_LEN,
};
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
    let header = InHeader {
        len: u32::try_from(std::mem::size_of::<InHeader>() + body.len())
            .expect("a test request under 4 GiB"),
        opcode,
        unique,
        nodeid,
        uid,
        gid,
        pid: 0,
        padding: 0,
    };
    [header.as_slice(), body].concat()
}

/// A request whose body is the FUSE struct `args`, then `tail` (a name,
/// data).
pub fn fuse_struct_request<T: ByteValued>(
    opcode: u32,
    unique: u64,
    nodeid: u64,
    args: &T,
    tail: &[u8],
) -> Vec<u8> {
    fuse_request(opcode, unique, nodeid, &[args.as_slice(), tail].concat())
}

/// The reply's header.
pub fn reply_header(reply: &[u8]) -> OutHeader {
    read_struct(reply, 0)
}

/// The FUSE struct `T` that follows the reply's header.
pub fn reply_body<T: ByteValued + Default>(reply: &[u8]) -> T {
    read_struct(reply, std::mem::size_of::<OutHeader>())
}

/// A `T` read from `bytes` at `offset` (no alignment needed).
fn read_struct<T: ByteValued + Default>(bytes: &[u8], offset: usize) -> T {
    let mut value = T::default();
    let len = std::mem::size_of::<T>();
    let from = bytes.get(offset..offset + len).unwrap_or_else(|| {
        panic!(
            "a {len}-byte struct at {offset} of a {}-byte reply",
            bytes.len()
        )
    });
    value.as_mut_slice().copy_from_slice(from);
    value
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
    SetattrIn {
        valid: SetattrValid::MODE.bits(),
        mode,
        ..SetattrIn::default()
    }
    .as_slice()
    .to_vec()
}

/// The node id of an entry reply.
pub fn node_of(reply: &[u8]) -> u64 {
    reply_body::<EntryOut>(reply).nodeid
}

/// INIT from a 7.31 driver with no flags.
pub fn init_body() -> Vec<u8> {
    InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0x20000,
        flags: 0,
    }
    .as_slice()
    .to_vec()
}

/// A test request's length as a descriptor holds it.
pub fn request_len(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("a test request under 4 GiB")
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
        std::fs::create_dir_all(dir.join("share")).expect("harness setup");
        std::fs::write(dir.join("share/file"), "content").expect("harness setup");
        std::fs::write(dir.join("secret"), "outside").expect("harness setup");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_RAM_BYTES)])
            .expect("harness setup");
        let queue = driver_ring::ready_queue(&RING);
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
        let fs = VirtioFs::new(share, None).expect("harness setup");
        let worker = QueueWorker {
            tag: "t".into(),
            index: 1,
            queue,
            kick: EventFd::new(libc::EFD_NONBLOCK).expect("harness setup"),
            vector: crate::virtio::QueueVector::new(0),
            stop: EventFd::new(libc::EFD_NONBLOCK).expect("harness setup"),
            mem: GuestMemoryAtomic::new(mem.clone()),
            interrupt: Arc::new(FakeVm::new(GUEST_RAM)),
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
        let want = self.place_raw(descs);
        self.worker_round();
        let used_idx = self.used_idx();
        assert_eq!(used_idx, want, "the chain was not returned as used");
        self.used_elem(used_idx.wrapping_sub(1)).1
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        driver_ring::used_idx(&self.mem, &RING)
    }

    /// The used element for free-running index `idx`: (id, len).
    pub fn used_elem(&self, idx: u16) -> (u32, u32) {
        driver_ring::used_elem(&self.mem, &RING, idx)
    }

    /// Places raw descriptors (as given) in the table and makes the first
    /// one available, without running the worker. Returns the used index
    /// the worker reaches by serving it.
    pub fn place_raw(&mut self, descs: &[RawDescriptor]) -> u16 {
        let head = self.next_desc;
        let reached = driver_ring::place(&self.mem, &RING, head, descs);
        let count = u16::try_from(descs.len()).expect("a chain shorter than the queue");
        self.next_desc = (head + count) % (QUEUE_LEN - 4);
        reached
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
            .expect("harness guest memory");
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
        self.mem
            .write_slice(bytes, GuestAddress(REQ_ADDR))
            .expect("harness guest memory");
        self.mem
            .write_slice(&vec![0xaa; REPLY_LEN as usize], GuestAddress(REPLY_ADDR))
            .expect("harness guest memory");
        let len = self.submit_pair((REQ_ADDR, request_len(bytes)), (REPLY_ADDR, REPLY_LEN));
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_ADDR))
            .expect("harness guest memory");
        let error = if reply.len() >= std::mem::size_of::<OutHeader>() {
            reply_header(&reply).error
        } else {
            0
        };
        (len, error, reply)
    }

    /// Serves one request with nothing else around it (no reply buffer
    /// reset, no reply copy): the used length.
    pub fn serve(&mut self, bytes: &[u8]) -> u32 {
        self.mem
            .write_slice(bytes, GuestAddress(REQ_ADDR))
            .expect("harness guest memory");
        self.submit_pair((REQ_ADDR, request_len(bytes)), (REPLY_ADDR, REPLY_LEN))
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
        super::dax::view::show_window(&self.worker.mem, window, old, new)
            .expect("show the DAX window in the memory view");
    }

    pub fn lookup(&mut self, name: &[u8]) -> (u32, i32, Vec<u8>) {
        let mut body = name.to_vec();
        body.push(0);
        self.request(&fuse_request(LOOKUP, 5, ROOT, &body))
    }
}
