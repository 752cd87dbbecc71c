//! Ferry's own request path, with no VM: FUSE requests placed in a split
//! virtqueue in plain memory and served by the virtio-fs queue worker
//! (descriptor walk, FUSE server, passthrough file system, used ring), one
//! request per iteration. Requests per second for LOOKUP, GETATTR and 4 KiB
//! READ and WRITE, so regressions in Ferry's code show without booting.
//!
//!   cargo bench -p ferry-devices --bench request_path
//!
//! (`cargo test` runs each once, as a smoke test.)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_devices::virtio::fs::harness::{
    fuse_request, fuse_struct_request, node_of, reply_body, Harness, GETATTR, LOOKUP, ROOT,
};
use fuse_backend_rs::abi::fuse_abi::{Opcode, OpenIn, OpenOut, ReadIn, WriteIn};

const OPEN: u32 = Opcode::Open as u32;
const READ: u32 = Opcode::Read as u32;
const WRITE: u32 = Opcode::Write as u32;
const BLOCK: usize = 4096;
const BLOCK_U32: u32 = 4096;

/// A served share with a 1 MiB file open read-write: (harness, nodeid, fh).
fn setup() -> (Harness, u64, u64) {
    let mut h = Harness::new(false);
    std::fs::write(h.share_dir().join("data"), vec![7u8; 1 << 20]).expect("data file");
    h.init();
    let (_, error, reply) = h.lookup(b"data");
    assert_eq!(error, 0, "LOOKUP data");
    let nodeid = node_of(&reply);
    let open = OpenIn {
        flags: libc::O_RDWR as u32,
        ..OpenIn::default()
    };
    let (_, error, reply) = h.request(&fuse_struct_request(OPEN, 9, nodeid, &open, &[]));
    assert_eq!(error, 0, "OPEN data");
    (h, nodeid, reply_body::<OpenOut>(&reply).fh)
}

fn request_path(c: &mut Criterion) {
    let (mut h, nodeid, fh) = setup();
    let lookup = fuse_request(LOOKUP, 10, ROOT, b"data\0");
    let getattr = fuse_request(GETATTR, 11, nodeid, &[0; 16]);
    let read_in = ReadIn {
        fh,
        offset: 4096,
        size: BLOCK_U32,
        ..ReadIn::default()
    };
    let read = fuse_struct_request(READ, 12, nodeid, &read_in, &[]);
    let write_in = WriteIn {
        fh,
        offset: 8192,
        size: BLOCK_U32,
        ..WriteIn::default()
    };
    let write = fuse_struct_request(WRITE, 13, nodeid, &write_in, &[5u8; BLOCK]);
    for (name, req, reply_len) in [
        ("lookup", &lookup, 16 + 128),
        ("getattr", &getattr, 16 + 104),
        ("read_4k", &read, 16 + BLOCK_U32),
        ("write_4k", &write, 16 + 8),
    ] {
        // Each request must really succeed before it is timed.
        let (len, error, _) = h.request(req);
        assert!(
            error == 0 && len == reply_len,
            "{name}: len {len}, error {error}"
        );
    }
    let mut group = c.benchmark_group("virtio-fs request");
    group.throughput(Throughput::Elements(1));
    for (name, req) in [
        ("lookup", &lookup),
        ("getattr", &getattr),
        ("read_4k", &read),
        ("write_4k", &write),
    ] {
        group.bench_function(name, |b| b.iter(|| h.serve(req)));
    }
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
