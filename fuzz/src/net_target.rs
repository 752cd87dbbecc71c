//! `net_frames`: the virtio-net worker against a hostile guest and a
//! hostile backend. The guest side posts receive and transmit chains with
//! fuzzed descriptors (addresses, lengths, flags, `next` links) and
//! contents, scribbles on the rings, and turns bus mastering off and on;
//! the backend side (the socket's far end, where passt sits) sends fuzzed
//! bytes, well-formed frames of fuzzed sizes or bad length prefixes,
//! drains or stops draining, and closes. The first byte picks the backend:
//! passt's stream, or a tap (one frame per message, no length prefix;
//! a runt or an oversized message is its malformed input). The worker runs by hand between
//! operations. What must hold: no panic, every round ends (a hang is
//! libFuzzer's timeout), and the counters add up (every frame the backend
//! took came from the transmit queue).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferry_devices::virtio::driver_ring;
use ferry_devices::virtio::net::harness::{desc, Rig, RX_RING, SIZE, TX_RING};
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

const MAX_OPS: usize = 64;
/// Guest addresses the inputs pick from: inside RAM, at its end, past it.
const ADDRS: [u64; 6] = [0x10_0000, 0x80_0000, 0xff_f000, 0x100_0000 - 8, 0x100_0000, u64::MAX - 64];

fn addr(inp: &mut Input) -> u64 {
    let base = ADDRS[usize::from(inp.u8()) % ADDRS.len()];
    base.wrapping_add(u64::from(inp.u16()))
}

fn chain(inp: &mut Input, ring_size: u16, write: bool) -> Vec<virtio_queue::desc::RawDescriptor> {
    let n = 1 + inp.u8() % 4;
    (0..n)
        .map(|i| {
            let len = match inp.u8() % 4 {
                0 => u32::from(inp.u8()),
                1 => u32::from(inp.u16()),
                2 => 12 + 1514,
                _ => inp.u32(),
            };
            let mut flags = if write { 2 } else { 0 };
            if i + 1 < n {
                flags |= 1;
            }
            if inp.chance(16) {
                flags ^= inp.u16() & 7;
            }
            let next = if inp.chance(32) { inp.u16() } else { u16::from(i + 1) % ring_size };
            desc(addr(inp), len, flags, next)
        })
        .collect()
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let tap = inp.u8() & 1 == 1;
    let mut rig = if tap { Rig::tap() } else { Rig::new() };
    rig.passt
        .set_nonblocking(true)
        .expect("a non-blocking far end");
    let mut sent_by_backend = 0u64;
    let mut closed = false;
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 9 {
            0 => {
                let head = rig.rx_next;
                let c = chain(&mut inp, SIZE, true);
                rig.rx_next = (head + 1) % SIZE;
                driver_ring::place(&rig.mem, &RX_RING, head, &c);
                rig.worker.rx_starved = false;
            }
            1 => {
                let head = rig.tx_next;
                let c = chain(&mut inp, SIZE, false);
                for d in &c {
                    let d = virtio_queue::desc::split::Descriptor::from(*d);
                    let fill = vec![inp.u8(); usize::try_from(d.len().min(4096)).unwrap_or(0)];
                    let _ = rig.mem.write_slice(&fill, GuestAddress(d.addr().0));
                }
                rig.tx_next = (head + 1) % SIZE;
                driver_ring::place(&rig.mem, &TX_RING, head, &c);
            }
            2 if !closed => {
                let n = usize::from(inp.u8());
                let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
                let _ = rig.passt.write(&bytes);
            }
            3 if !closed => {
                let len = match inp.u8() % 3 {
                    0 => usize::from(inp.u8()).max(14),
                    1 => 1514,
                    _ => 65_549,
                };
                let mut framed = u32::try_from(len).unwrap_or(0).to_be_bytes().to_vec();
                framed.resize(4 + len, inp.u8());
                let _ = rig.passt.write(if tap { &framed[4..] } else { &framed });
            }
            4 if !closed => {
                let mut buf = vec![0u8; 1 << 17];
                while let Ok(n @ 1..) = rig.passt.read(&mut buf) {
                    sent_by_backend += n as u64;
                }
            }
            5 => {
                let on = rig.worker.bus_master.on();
                rig.worker.bus_master.set(!on);
            }
            6 if !closed => {
                let (_, other) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
                drop(std::mem::replace(&mut rig.passt, other));
                closed = true;
            }
            7 => {
                // The rings themselves: an index, a flag, an event field.
                let ring = if inp.bool() { &RX_RING } else { &TX_RING };
                let at = match inp.u8() % 3 {
                    0 => ring.avail_idx_addr(),
                    1 => ring.used_idx_addr(),
                    _ => GuestAddress(ring.avail + u64::from(inp.u8())),
                };
                let _ = rig.mem.write_obj(inp.u16(), at);
            }
            _ => {}
        }
        let started = Instant::now();
        rig.worker.process();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "one worker round took {:?}",
            started.elapsed()
        );
    }
    rig.worker.bus_master.set(true);
    rig.worker.process();
    let (_, _, tx, _, _) = rig.stats.snapshot();
    // Every frame the backend got was counted as sent (4-byte prefix and
    // at least an Ethernet header each).
    assert!(sent_by_backend <= tx * (4 + 65_549), "{sent_by_backend} bytes for {tx} frames");
}
