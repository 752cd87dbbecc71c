//! The worker driven by hand: both queues in plain memory, the far end of
//! the socket pair playing passt.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::harness::*;
use super::worker::{Backend, NET_HDR_LEN};
use super::*;
use crate::fake_vm::FakeVm;
use crate::virtio::driver_ring;
use crate::virtio::spec::DESC_F_WRITE;
use crate::virtio::{ActiveQueue, BusMaster, QueueVector};

fn frame(n: usize, fill: u8) -> Vec<u8> {
    vec![fill; n]
}

#[test]
fn a_sent_frame_reaches_the_backend_without_its_header() {
    let mut r = Rig::new();
    let f = frame(60, 0x11);
    let want = r.guest_sends(&f, 0);
    r.worker.process();
    assert_eq!(r.passt_receives(), f);
    assert_eq!(driver_ring::used_idx(&r.mem, &TX_RING), want);
    assert_eq!(driver_ring::used_elem(&r.mem, &TX_RING, want - 1), (0, 0));
    assert_eq!(r.stats.snapshot().2, 1);
}

#[test]
fn a_received_frame_lands_in_a_posted_buffer_with_its_header() {
    let mut r = Rig::new();
    let f = frame(MAX_FRAME, 0x22);
    r.passt_sends(&f);
    let want = r.guest_posts(0x1_8000, 0);
    r.worker.process();
    assert_eq!(driver_ring::used_idx(&r.mem, &RX_RING), want);
    let len = n32(NET_HDR_LEN + f.len());
    assert_eq!(driver_ring::used_elem(&r.mem, &RX_RING, want - 1), (0, len));
    let got = r.received(0, NET_HDR_LEN + f.len());
    let mut header = [0u8; NET_HDR_LEN];
    header[10] = 1; // num_buffers
    assert_eq!(&got[..NET_HDR_LEN], &header);
    assert_eq!(&got[NET_HDR_LEN..], &f[..]);
}

#[test]
fn with_no_buffer_posted_frames_wait_in_the_socket() {
    let mut r = Rig::new();
    for i in 0..3u8 {
        r.passt_sends(&frame(100, i));
    }
    r.worker.process();
    assert!(r.worker.rx_starved, "nothing to receive into");
    assert_eq!(driver_ring::used_idx(&r.mem, &RX_RING), 0);
    for slot in 0..3 {
        r.guest_posts(2048, slot);
    }
    r.worker.rx_starved = false; // the guest's kick
    r.worker.process();
    assert_eq!(driver_ring::used_idx(&r.mem, &RX_RING), 3);
    for slot in 0..3u8 {
        assert_eq!(
            r.received(u64::from(slot), NET_HDR_LEN + 100)[NET_HDR_LEN..],
            frame(100, slot)[..]
        );
    }
}

#[test]
fn a_buffer_too_small_drops_that_frame_only() {
    let mut r = Rig::new();
    r.passt_sends(&frame(1000, 1));
    r.passt_sends(&frame(100, 2));
    r.guest_posts(500, 0);
    r.guest_posts(500, 1);
    r.worker.process();
    assert_eq!(driver_ring::used_elem(&r.mem, &RX_RING, 0), (0, 0));
    assert_eq!(
        driver_ring::used_elem(&r.mem, &RX_RING, 1),
        (1, n32(NET_HDR_LEN + 100))
    );
    let (rx, rx_dropped, ..) = r.stats.snapshot();
    assert_eq!((rx, rx_dropped), (1, 1));
}

#[test]
fn a_bad_frame_length_takes_the_backend_down_not_ferry() {
    for bad in [0u32, 5, u32::MAX] {
        let mut r = Rig::new();
        r.passt.write_all(&bad.to_be_bytes()).unwrap();
        r.guest_posts(2048, 0);
        r.worker.process();
        assert!(r.worker.backend.failed);
        assert_eq!(r.stats.snapshot().4, 1);
        // The guest still gets its transmit buffers back (dropped).
        let want = r.guest_sends(&frame(60, 3), 1);
        r.worker.process();
        assert_eq!(driver_ring::used_idx(&r.mem, &TX_RING), want);
        assert_eq!(r.stats.snapshot().3, 1);
    }
}

#[test]
fn the_backend_closing_is_a_failure_not_a_hang() {
    let mut r = Rig::new();
    let (_, other) = UnixStream::pair().unwrap();
    drop(std::mem::replace(&mut r.passt, other));
    r.guest_posts(2048, 0);
    assert!(r.worker.link_up.load(Ordering::Relaxed));
    r.worker.process();
    assert!(r.worker.backend.failed);
    // The driver learns of it: link down, one configuration interrupt.
    assert!(!r.worker.link_up.load(Ordering::Relaxed));
    assert_eq!(r.vm.notified(CONFIG_VECTOR), 1);
    r.worker.process();
    assert_eq!(r.vm.notified(CONFIG_VECTOR), 1, "said once");
}

#[test]
fn a_tap_carries_bare_frames_both_ways() {
    let mut r = Rig::tap();
    let out = frame(60, 0x31);
    r.guest_sends(&out, 0);
    let inbound = frame(1514, 0x32);
    r.passt.write_all(&inbound).unwrap();
    r.guest_posts(2048, 0);
    r.worker.process();
    let mut got = vec![0u8; 4096];
    let n = r.passt.read(&mut got).unwrap();
    assert_eq!(&got[..n], &out[..], "one message, no length prefix");
    let len = NET_HDR_LEN + inbound.len();
    assert_eq!(driver_ring::used_elem(&r.mem, &RX_RING, 0), (0, n32(len)));
    assert_eq!(&r.received(0, len)[NET_HDR_LEN..], &inbound[..]);
    // The host's side closing is the tap going away.
    let (_, other) = UnixStream::pair().unwrap();
    drop(std::mem::replace(&mut r.passt, other));
    r.guest_posts(2048, 1);
    r.worker.process();
    assert!(r.worker.backend.failed);
}

#[test]
fn a_frame_the_tap_refuses_is_dropped_not_the_link() {
    let mut r = Rig::tap();
    // A send buffer too small for a big frame: the socket refuses it
    // (EMSGSIZE), as a tap refuses a frame with ENOMEM or EIO.
    let small: libc::c_int = 4096;
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on the rig's descriptor with an int of its size.
    let rc = unsafe {
        libc::setsockopt(
            r.worker.backend.link.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const small).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap(),
        )
    };
    assert_eq!(rc, 0);
    r.guest_sends(&frame(60_000, 1), 0);
    r.worker.process();
    assert!(!r.worker.backend.failed, "one frame lost, not the tap");
    let (.., tx, tx_dropped, _) = r.stats.snapshot();
    assert_eq!((tx, tx_dropped), (0, 1));
    let small_frame = frame(60, 2);
    r.guest_sends(&small_frame, 1);
    r.worker.process();
    let mut got = vec![0u8; 4096];
    let n = r.passt.read(&mut got).unwrap();
    assert_eq!(&got[..n], &small_frame[..]);
}

/// CPU time the thread behind `handle` has used.
fn thread_cpu(handle: &std::thread::JoinHandle<Backend>) -> std::time::Duration {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread is alive (joined only later); clock is ours.
    let rc = unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) };
    assert_eq!(rc, 0);
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock and a timespec we own.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut t) }, 0);
    std::time::Duration::new(
        u64::try_from(t.tv_sec).unwrap(),
        u32::try_from(t.tv_nsec).unwrap(),
    )
}

#[test]
fn an_idle_worker_sleeps_whatever_the_backend_or_the_guest_did() {
    for case in ["backend closed", "bus mastering off with a frame waiting"] {
        let mut r = Rig::new();
        if case == "backend closed" {
            let (_, other) = UnixStream::pair().unwrap();
            drop(std::mem::replace(&mut r.passt, other));
        } else {
            r.passt_sends(&frame(100, 1));
            r.worker.bus_master.set(false);
        }
        let Rig { worker, passt, .. } = r;
        let stop = worker.stop.try_clone().unwrap();
        let handle = std::thread::spawn(move || worker.run());
        std::thread::sleep(std::time::Duration::from_millis(400));
        let cpu = thread_cpu(&handle);
        stop.write(1).unwrap();
        handle.join().unwrap();
        drop(passt);
        assert!(
            cpu < std::time::Duration::from_millis(100),
            "{case}: the worker used {cpu:?} of CPU in 400 ms"
        );
    }
}

#[test]
fn a_full_socket_holds_the_transmit_queue_without_blocking() {
    let mut r = Rig::new();
    // Far more than the socket buffer holds, and passt reads nothing yet.
    let f = frame(60_000, 9);
    let mut placed = 0;
    for round in 0..40u64 {
        placed = r.guest_sends(&f, round % 7);
        let started = std::time::Instant::now();
        r.worker.process();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        if r.worker.backend.outbound.busy() {
            break;
        }
    }
    assert!(r.worker.backend.outbound.busy(), "the socket never filled");
    let used_before = driver_ring::used_idx(&r.mem, &TX_RING);
    assert_eq!(used_before, placed);
    // More frames wait in the ring, not in Ferry.
    for slot in 0..3 {
        placed = r.guest_sends(&f, slot);
    }
    r.worker.process();
    assert_eq!(driver_ring::used_idx(&r.mem, &TX_RING), used_before);
    // passt drains; the queue moves on.
    let reader = std::thread::spawn({
        let mut passt = r.passt.try_clone().unwrap();
        move || {
            let mut n = 0usize;
            let mut buf = vec![0; 1 << 16];
            while let Ok(k @ 1..) = passt.read(&mut buf) {
                n += k;
            }
            n
        }
    });
    while r.worker.backend.outbound.busy() {
        r.worker.process();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(driver_ring::used_idx(&r.mem, &TX_RING), placed);
    drop(r);
    let _ = reader.join();
}

#[test]
fn chains_the_guest_gets_wrong_are_dropped_and_counted() {
    let mut r = Rig::new();
    // Too short, too long (1 MiB, within memory: not allocated), outside
    // memory, and write-only.
    let cases = [
        desc(BUFS, 10, 0, 0),
        desc(BUFS, 1 << 20, 0, 0),
        desc(u64::MAX - 100, 1000, 0, 0),
        desc(BUFS, 100, DESC_F_WRITE, 0),
    ];
    for (i, d) in cases.iter().enumerate() {
        let head = u16::try_from(i).unwrap();
        driver_ring::place(&r.mem, &TX_RING, head, &[*d]);
    }
    r.worker.process();
    assert_eq!(driver_ring::used_idx(&r.mem, &TX_RING), 4);
    let (.., tx, tx_dropped, failed) = r.stats.snapshot();
    assert_eq!((tx, tx_dropped, failed), (0, 4, 0));
}

#[test]
fn config_space_has_the_mac_the_link_and_the_mtu() {
    let (ours, _passt) = UnixStream::pair().unwrap();
    let dev = VirtioNet::new([2, 0, 0, 0, 0, 7], Link::Stream(ours), None).unwrap();
    let mut c = [0xffu8; 16];
    dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 7]);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "one queue pair");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), MTU);
    assert_eq!(&c[12..], &[0; 4], "past the end reads zero");
    let mut far = [0xffu8; 2];
    dev.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0, 0]);
    assert_eq!(dev.device_type(), VIRTIO_ID_NET);
    assert_eq!(dev.queue_max_sizes().len(), 2);
}

fn activation(mem: &GuestMemoryMmap, queues: &[usize]) -> Activation {
    Activation {
        mem: GuestMemoryAtomic::new(mem.clone()),
        queues: queues
            .iter()
            .map(|&index| ActiveQueue {
                index,
                queue: driver_ring::ready_queue(if index == 0 { &RX_RING } else { &TX_RING }),
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                vector: QueueVector::new(0),
            })
            .collect(),
        interrupt: Arc::new(FakeVm::new(RAM as u64)),
        bus_master: BusMaster::new(true),
        features: 0,
        config_vector: QueueVector::new(CONFIG_VECTOR),
    }
}

#[test]
fn the_backend_survives_a_reset_and_serves_the_next_activation() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let (ours, mut passt) = UnixStream::pair().unwrap();
    passt
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut dev = VirtioNet::new([2, 0, 0, 0, 0, 1], Link::Stream(ours), None).unwrap();
    assert!(matches!(
        dev.activate(activation(&mem, &[0])),
        Err(ActivateError::MissingQueue(_))
    ));
    dev.activate(activation(&mem, &[0, 1])).unwrap();
    dev.reset();
    dev.activate(activation(&mem, &[0, 1])).unwrap();
    // The second worker sends what the guest queued (it processes once on
    // start).
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(BUFS))
        .unwrap();
    mem.write_slice(&frame(64, 5), GuestAddress(BUFS + NET_HDR_LEN as u64))
        .unwrap();
    driver_ring::place(
        &mem,
        &TX_RING,
        0,
        &[desc(BUFS, n32(NET_HDR_LEN + 64), 0, 0)],
    );
    dev.reset();
    dev.activate(activation(&mem, &[0, 1])).unwrap();
    let mut len = [0u8; 4];
    passt.read_exact(&mut len).unwrap();
    assert_eq!(u32::from_be_bytes(len), 64);
    dev.reset();
}
