//! The fs queue worker fed hostile descriptor chains and FUSE messages
//! through a split virtqueue laid out in plain memory (see `harness`): every
//! bad request gets an error reply or is dropped, and the worker serves the
//! next one.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, InHeader, IoctlIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, WriteIn,
};
use fuse_backend_rs::abi::virtio_fs::{
    RemovemappingIn, RemovemappingOne, SetupmappingFlags, SetupmappingIn,
};
use vm_memory::ByteValued;

use super::harness::*;
use super::*;

/// The inode number of an entry reply's attributes.
fn entry_ino(reply: &[u8]) -> u64 {
    reply_body::<EntryOut>(reply).attr.ino
}

#[test]
fn serves_init_lookup_getattr() {
    let mut h = Harness::new(false);
    h.init();
    let (_, error, _) = h.lookup(b"file");
    assert_eq!(error, 0);
    h.still_serves();
    assert!(h.worker.stats.queue_requests()[1] >= 3);
}

#[test]
fn dotdot_at_the_root_stays_at_the_root() {
    use std::os::unix::fs::MetadataExt;
    let mut h = Harness::new(false);
    h.init();
    let (_, error, reply) = h.lookup(b"..");
    let root_ino = std::fs::metadata(h.share_dir()).unwrap().ino();
    if error == 0 {
        assert_eq!(
            entry_ino(&reply),
            root_ino,
            "'..' at the root left the share"
        );
    }
    let (_, error, reply) = h.lookup(b".");
    if error == 0 {
        assert_eq!(
            entry_ino(&reply),
            root_ino,
            "'.' at the root is not the root"
        );
    }
    let (_, error, _) = h.lookup(b"../secret");
    assert_ne!(error, 0, "a name with '/' was looked up");
    h.still_serves();
}

#[test]
fn names_with_slash_or_empty_are_refused() {
    let mut h = Harness::new(false);
    h.init();
    for name in [&b"a/b"[..], b"/etc", b"", b"file/.."] {
        let (_, error, _) = h.lookup(name);
        assert_ne!(
            error,
            0,
            "lookup of {:?} succeeded",
            String::from_utf8_lossy(name)
        );
    }
    h.still_serves();
}

#[test]
fn chain_too_short_for_a_header_is_dropped() {
    let mut h = Harness::new(false);
    h.init();
    h.mem.write_slice(&[1; 10], GuestAddress(REQ_ADDR)).unwrap();
    let len = h.submit_pair((REQ_ADDR, 10), (REPLY_ADDR, REPLY_LEN));
    assert_eq!(len, 0);
    assert!(h.worker.stats.errors() >= 1);
    h.still_serves();
}

#[test]
fn header_longer_than_the_chain() {
    let mut h = Harness::new(false);
    h.init();
    let mut req = fuse_request(LOOKUP, 9, ROOT, b"file\0");
    let len = std::mem::offset_of!(InHeader, len);
    req[len..len + 4].copy_from_slice(&4096u32.to_le_bytes());
    let (len, error, _) = h.request(&req);
    assert!(len == 0 || error != 0 || len > 16, "unexpected reply");
    h.still_serves();
}

#[test]
fn write_only_chain_is_dropped() {
    let mut h = Harness::new(false);
    h.init();
    let len = h.submit_raw(&[desc(REPLY_ADDR, REPLY_LEN, F_WRITE, 0)]);
    assert_eq!(len, 0);
    h.still_serves();
}

#[test]
fn addresses_outside_guest_memory_are_dropped() {
    let mut h = Harness::new(false);
    h.init();
    assert_eq!(
        h.submit_pair((0xffff_0000_0000, 64), (REPLY_ADDR, REPLY_LEN)),
        0
    );
    // A reply buffer outside memory: the request cannot be answered.
    h.put_getattr();
    assert_eq!(h.submit_pair((REQ_ADDR, 56), (0xffff_0000_0000, 4096)), 0);
    // A descriptor that runs past the end of memory.
    assert_eq!(h.submit_pair(((16 << 20) - 8, 64), (REPLY_ADDR, 64)), 0);
    h.still_serves();
}

#[test]
fn indirect_table_that_loops() {
    let mut h = Harness::new(false);
    h.init();
    // Two indirect descriptors pointing at each other.
    let table = 0x30_0000u64;
    h.mem
        .write_obj(desc(REQ_ADDR, 56, F_NEXT, 1), GuestAddress(table))
        .unwrap();
    h.mem
        .write_obj(desc(REQ_ADDR, 56, F_NEXT, 0), GuestAddress(table + 16))
        .unwrap();
    h.put_getattr();
    let len = h.submit_raw(&[desc(table, 32, F_INDIRECT, 0)]);
    assert_eq!(len, 0);
    h.still_serves();
}

#[test]
fn chain_longer_than_the_queue() {
    let mut h = Harness::new(false);
    h.init();
    h.put_getattr();
    // Descriptors n and n+1 point at each other: an endless chain.
    let n = h.next_desc;
    let len = h.submit_raw(&[
        desc(REQ_ADDR, 56, F_NEXT, n + 1),
        desc(REQ_ADDR, 56, F_NEXT, n),
    ]);
    assert_eq!(len, 0);
    h.still_serves();
}

#[test]
fn unknown_opcode_gets_an_error_reply() {
    let mut h = Harness::new(false);
    h.init();
    let (len, error, _) = h.request(&fuse_request(9999, 4, ROOT, &[0; 8]));
    assert_eq!(len, 16);
    assert_eq!(error, -libc::ENOSYS);
    h.still_serves();
}

#[test]
fn truncated_arguments_get_an_error() {
    let mut h = Harness::new(false);
    h.init();
    // SETATTR (4) wants an 88-byte body; MKDIR (9) a mode and a name.
    for (opcode, body) in [(4u32, vec![0u8; 8]), (9, vec![0u8; 3]), (LOOKUP, vec![])] {
        let (len, error, _) = h.request(&fuse_request(opcode, 6, ROOT, &body));
        assert!(
            len == 0 || error != 0,
            "opcode {opcode} with a truncated body succeeded"
        );
    }
    h.still_serves();
}

#[test]
fn second_init_does_not_break_the_server() {
    let mut h = Harness::new(false);
    h.init();
    let _ = h.request(&fuse_request(INIT, 2, 0, &init_body()));
    h.still_serves();
}

#[test]
fn readonly_share_refuses_writes_before_the_server() {
    let mut h = Harness::new(true);
    h.init();
    let args = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mkdir = Opcode::Mkdir as u32;
    let (_, error, _) = h.request(&fuse_struct_request(mkdir, 8, ROOT, &args, b"newdir\0"));
    assert_eq!(error, -libc::EROFS);
    assert!(!h.share_dir().join("newdir").exists());
    h.still_serves();
}

#[test]
fn readonly_share_refuses_writable_dax_mappings() {
    let window = Arc::new(DaxWindow::new(4 << 20).unwrap());
    let mut h = Harness::with_dax(true, Some(window.clone()));
    h.init();
    let setupmapping = |flags: SetupmappingFlags| {
        let args = SetupmappingIn {
            len: 2 << 20,
            flags: flags.bits(),
            ..SetupmappingIn::default()
        };
        fuse_struct_request(SETUPMAPPING, 9, ROOT, &args, &[])
    };
    let (_, error, _) = h.request(&setupmapping(SetupmappingFlags::WRITE));
    assert_eq!(error, -libc::EROFS);
    assert_eq!(window.mapped_bytes(), 0);
    let (_, error, _) = h.request(&setupmapping(SetupmappingFlags::READ));
    assert_ne!(error, -libc::EROFS, "a read-only mapping is no write");
    h.still_serves();
}

const SETUPMAPPING: u32 = Opcode::SetupMapping as u32;
const REMOVEMAPPING: u32 = Opcode::RemoveMapping as u32;

fn setupmapping(nodeid: u64, foffset: u64, len: u64, flags: u64, moffset: u64) -> Vec<u8> {
    let args = SetupmappingIn {
        fh: 0,
        foffset,
        len,
        flags,
        moffset,
    };
    fuse_struct_request(SETUPMAPPING, 10, nodeid, &args, &[])
}

fn removemapping(nodeid: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let count = RemovemappingIn {
        count: u32::try_from(ranges.len()).unwrap(),
    };
    let ones: Vec<u8> = ranges
        .iter()
        .flat_map(|&(moffset, len)| RemovemappingOne { moffset, len }.as_slice().to_vec())
        .collect();
    fuse_struct_request(REMOVEMAPPING, 11, nodeid, &count, &ones)
}

#[test]
fn dax_requests_are_checked_before_mapping() {
    const MIB: u64 = 1 << 20;
    let window = Arc::new(DaxWindow::new(4 * MIB).unwrap());
    let mut h = Harness::with_dax(false, Some(window.clone()));
    h.init();
    let (_, error, reply) = h.lookup(b"file");
    assert_eq!(error, 0);
    let node = node_of(&reply);
    // Outside the window, overflowing, misaligned: error replies, nothing mapped.
    for (foffset, len, moffset) in [
        (0, 2 * MIB, 4 * MIB),
        (0, 2 * MIB, 3 * MIB),
        (0, u64::MAX - 4095, 2 * MIB),
        (0, 2 * MIB, 100),
        (1, 2 * MIB, 0),
    ] {
        let (_, error, _) = h.request(&setupmapping(node, foffset, len, 2, moffset));
        assert_ne!(error, 0, "SETUPMAPPING {foffset:#x} {len:#x} {moffset:#x}");
        assert_eq!(window.mapped_bytes(), 0);
    }
    let (_, error, _) = h.request(&setupmapping(node, 0, 2 * MIB, 3, 2 * MIB));
    assert_eq!(error, 0);
    assert_eq!(window.mapped_bytes(), 2 * MIB);
    for bad in [(2 * MIB, u64::MAX - 1), (4 * MIB, 4096), (1, 4096)] {
        let (_, error, _) = h.request(&removemapping(node, &[bad]));
        assert_ne!(error, 0, "REMOVEMAPPING {bad:?}");
        assert_eq!(window.mapped_bytes(), 2 * MIB);
    }
    let (_, error, _) = h.request(&removemapping(node, &[(2 * MIB, 2 * MIB)]));
    assert_eq!(error, 0);
    assert_eq!(window.mapped_bytes(), 0);
    h.still_serves();
}

#[test]
fn device_nodes_are_never_created() {
    let mut h = Harness::new(false);
    h.init();
    let args = MknodIn {
        mode: libc::S_IFBLK | 0o600,
        rdev: 0x0800,
        ..MknodIn::default()
    };
    let mknod = Opcode::Mknod as u32;
    let (_, error, _) = h.request(&fuse_struct_request(mknod, 8, ROOT, &args, b"sda\0"));
    assert_eq!(error, -libc::EPERM);
    assert!(!h.share_dir().join("sda").exists());
    h.still_serves();
}

fn activation(indexes: &[usize]) -> crate::virtio::Activation {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    crate::virtio::Activation {
        mem: GuestMemoryAtomic::new(mem),
        queues: indexes
            .iter()
            .map(|&index| crate::virtio::ActiveQueue {
                index,
                queue: Queue::new(QUEUE_LEN).unwrap(),
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                vector: crate::virtio::QueueVector::new(0),
            })
            .collect(),
        interrupt: Arc::new(crate::fake_vm::FakeVm::new(1 << 20)),
        bus_master: crate::virtio::BusMaster::new(true),
        features: 0,
        config_vector: crate::virtio::QueueVector::new(crate::virtio::queue_config::NO_VECTOR),
    }
}

#[test]
fn driver_may_use_fewer_request_queues_than_offered() {
    let dir = std::env::temp_dir();
    let mut fs = VirtioFs::new(
        FsShare {
            tag: "q".into(),
            path: dir,
            request_queues: 4,
            readonly: false,
            cache: CacheMode::Auto,
            dax_window: None,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    // Linux sets up no more request queues than it has CPUs.
    assert!(fs.activate(activation(&[0, 1, 2])).is_ok());
    fs.reset();
    assert!(matches!(
        fs.activate(activation(&[0])),
        Err(ActivateError::NoRequestQueue)
    ));
}

#[test]
fn dropping_an_active_device_joins_its_workers() {
    let mut fs = VirtioFs::new(
        FsShare {
            tag: "d".into(),
            path: std::env::temp_dir(),
            request_queues: 2,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    fs.activate(activation(&[0, 1, 2])).unwrap();
    assert_eq!(fs.running_workers(), 3);
    // Each worker holds the device's counters until its thread ends.
    let stats = fs.stats();
    assert!(Arc::strong_count(&stats) > 2);
    drop(fs);
    assert_eq!(
        Arc::strong_count(&stats),
        1,
        "a worker outlived the device it served"
    );
}

#[test]
fn a_failed_activation_stops_the_workers_it_started() {
    // The first worker starts, the second cannot (no threads left on the
    // host): activation fails and the running worker is stopped and joined
    // then. Before, its stop event was never kept, and the next reset
    // joined a worker nobody had told to stop: the vCPU hung.
    let mut fs = VirtioFs::new(
        FsShare {
            tag: "f".into(),
            path: std::env::temp_dir(),
            request_queues: 2,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    fs.spawner.spawns_left = Some(1);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let failed = fs.activate(activation(&[0, 1, 2])).is_err();
        let running = fs.running_workers();
        fs.reset();
        fs.spawner.spawns_left = None;
        let again = fs.activate(activation(&[0, 1])).is_ok();
        fs.reset();
        let _ = done_tx.send((failed, running, again));
    });
    let (failed, running, again) = done
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a reset after a failed activation hung");
    assert!(failed, "activation should fail when a worker cannot start");
    assert_eq!(running, 0, "workers left running after a failed activation");
    assert!(again, "the device cannot be activated again");
}

#[test]
fn nothing_is_served_while_bus_mastering_is_off() {
    // The driver cleared bus mastering: the worker must not read the
    // rings, serve, or signal until it is set again (issue 14, finding 7).
    let mut h = Harness::new(false);
    h.init();
    h.worker.bus_master.set(false);
    h.put_getattr();
    let n = h.next_desc;
    let served = h.place_raw(&[
        desc(REQ_ADDR, 56, F_NEXT, n + 1),
        desc(REPLY_ADDR, REPLY_LEN, F_WRITE, 0),
    ]);
    h.worker_round();
    assert_eq!(
        h.used_idx(),
        served.wrapping_sub(1),
        "served with bus mastering off"
    );
    h.worker.bus_master.set(true);
    h.worker_round();
    assert_eq!(h.used_idx(), served, "not served once it was on again");
    h.still_serves();
}

#[test]
fn destroy_is_answered_and_a_new_init_serves_again() {
    // DESTROY (unmount) is answered by the worker, and the next mount's
    // INIT serves again.
    let mut h = Harness::new(false);
    h.init();
    let (_, error, _) = h.lookup(b"file");
    assert_eq!(error, 0);
    let destroy = Opcode::Destroy as u32;
    let (len, error, _) = h.request(&fuse_request(destroy, 9, 0, &[]));
    assert_eq!((len, error), (16, 0));
    h.init();
    let (_, error, _) = h.lookup(b"file");
    assert_eq!(error, 0);
    h.still_serves();
}

#[test]
fn unmount_and_reset_drop_what_the_guest_held() {
    // After DESTROY or a device reset the old driver's inodes and open
    // files are gone (their host descriptors closed), as with a fresh
    // server; before, both survived, and a guest mounting or resetting in
    // a loop piled up descriptors.
    let getattr = Opcode::Getattr as u32;
    let destroy = Opcode::Destroy as u32;
    for by_reset in [false, true] {
        let mut h = Harness::new(false);
        h.init();
        let (_, error, reply) = h.lookup(b"file");
        assert_eq!(error, 0);
        let old_node = node_of(&reply);
        let old_fh = open_fh(&mut h, old_node, libc::O_RDWR);
        if by_reset {
            h.device.reset();
        } else {
            let (_, error, _) = h.request(&fuse_request(destroy, 9, 0, &[]));
            assert_eq!(error, 0);
        }
        h.init();
        let (_, error, _) = h.request(&fuse_request(getattr, 10, old_node, &[0; 16]));
        assert_eq!(
            error,
            -libc::EBADF,
            "reset {by_reset}: the old inode is still known"
        );
        let (_, error, reply) = h.lookup(b"file");
        assert_eq!(error, 0);
        let node = node_of(&reply);
        let (_, error, _) = h.request(&write_request(node, old_fh, 0, 0, b"x"));
        assert_eq!(
            error,
            -libc::EBADF,
            "reset {by_reset}: the old file is still open"
        );
        h.still_serves();
    }
}

#[test]
fn a_wild_available_index_does_not_spin_the_worker() {
    // Found by the fuzzer: the ring claimed more entries than it can hold,
    // pop_descriptor_chain answered "empty" and the worker looped forever.
    let mut h = Harness::new(false);
    h.init();
    let avail_idx = GuestAddress(AVAIL_RING + 2);
    let before: u16 = h.mem.read_obj(avail_idx).unwrap();
    h.mem
        .write_obj(before.wrapping_add(3 * QUEUE_LEN), avail_idx)
        .unwrap();
    h.worker_round(); // returns: the test would hang otherwise
    h.mem.write_obj(before, avail_idx).unwrap();
    h.still_serves();
}

#[test]
fn opcodes_in_the_gaps_get_enosys() {
    // 0, 7 and 19 have no variant in the library's Opcode enum (its
    // conversion is a transmute): answered before the server sees them.
    let mut h = Harness::new(false);
    h.init();
    for gap in [0u32, 7, 19] {
        let (len, error, _) = h.request(&fuse_request(gap, 50, ROOT, &[0; 16]));
        assert_eq!((len, error), (16, -libc::ENOSYS), "opcode {gap}");
    }
    h.still_serves();
}

/// Sets or clears the append-only attribute (`chattr +a`) on a host file.
fn set_append_only(path: &std::path::Path, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one long we own.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        flags = if on { flags | 0x20 } else { flags & !0x20 }; // FS_APPEND_FL
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn open_fh(h: &mut Harness, node: u64, flags: i32) -> u64 {
    let open = Opcode::Open as u32;
    let args = OpenIn {
        flags: flags.cast_unsigned(),
        ..OpenIn::default()
    };
    let (_, error, reply) = h.request(&fuse_struct_request(open, 8, node, &args, &[]));
    assert_eq!(error, 0, "OPEN");
    reply_body::<OpenOut>(&reply).fh
}

/// A WRITE of `data` at `offset` with open flags `flags`.
fn write_request(node: u64, fh: u64, offset: u64, flags: i32, data: &[u8]) -> Vec<u8> {
    let write = Opcode::Write as u32;
    let args = WriteIn {
        fh,
        offset,
        size: request_len(data),
        flags: flags.cast_unsigned(),
        ..WriteIn::default()
    };
    fuse_struct_request(write, 9, node, &args, data)
}

/// A WRITE whose flags the host refuses to apply (clearing O_APPEND on an
/// append-only file) fails, and the handle keeps its descriptor: upstream
/// fuse-backend-rs closed it on that error path, so the handle's next
/// WRITE landed in whatever file was opened next.
#[test]
fn refused_write_flags_leave_the_handle_its_file() {
    let mut h = Harness::new(false);
    h.init();
    let log = h.share_dir().join("log");
    let other = h.share_dir().join("other");
    std::fs::write(&log, "A").unwrap();
    std::fs::write(&other, "other").unwrap();
    set_append_only(&log, true).expect("chattr +a needs root (CAP_LINUX_IMMUTABLE) and ext4/tmpfs");
    struct ClearOnDrop(std::path::PathBuf);
    impl Drop for ClearOnDrop {
        fn drop(&mut self) {
            let _ = set_append_only(&self.0, false);
        }
    }
    let _clear = ClearOnDrop(log.clone());

    let (_, error, reply) = h.lookup(b"log");
    assert_eq!(error, 0);
    let log_node = node_of(&reply);
    let log_fh = open_fh(&mut h, log_node, libc::O_WRONLY | libc::O_APPEND);
    let (_, error, _) = h.request(&write_request(log_node, log_fh, 1, libc::O_WRONLY, b"x"));
    assert_eq!(
        error,
        -libc::EPERM,
        "clearing O_APPEND on an append-only file"
    );

    // The next descriptor the server opens takes the lowest free number.
    let (_, error, reply) = h.lookup(b"other");
    assert_eq!(error, 0);
    let other_node = node_of(&reply);
    let _other_fh = open_fh(&mut h, other_node, libc::O_RDWR);

    let (_, error, _) = h.request(&write_request(
        log_node,
        log_fh,
        1,
        libc::O_WRONLY | libc::O_APPEND,
        b"B",
    ));
    assert_eq!(error, 0, "WRITE on the append-only file's own handle");
    assert_eq!(
        std::fs::read(&other).unwrap(),
        b"other",
        "the write went astray"
    );
    assert_eq!(std::fs::read(&log).unwrap(), b"AB");
}

/// The guest moves the DAX window's BAR while a worker serves: the worker's
/// memory view already shows the window at its new place, the window's
/// record does not yet (or the other way round). A request whose header
/// lies in an unmapped page of the window as the view shows it is refused,
/// never read (it faulted in Ferry: found by the fuzzer, pci_config).
#[test]
fn a_request_in_the_window_is_judged_where_the_worker_sees_it() {
    const SHOWN_AT: u64 = 0x200_0000; // past the harness's 16 MiB of RAM
    let window = Arc::new(DaxWindow::new(2 << 20).unwrap());
    let mut h = Harness::with_dax(false, Some(window.clone()));
    h.init();
    let header = fuse_request(GETATTR, 3, ROOT, &[0; 16]);
    for recorded in [None, Some(0x400_0000)] {
        h.show_window(&window, Some(SHOWN_AT));
        window.set_guest_addr(recorded);
        let len = h.submit_pair((SHOWN_AT, request_len(&header)), (REPLY_ADDR, REPLY_LEN));
        assert_eq!(len, 0, "a request in an unmapped window page was served");
        h.show_window(&window, None);
        h.still_serves();
    }
    // Shown in both, the pin judges it the same way.
    h.show_window(&window, Some(SHOWN_AT));
    window.set_guest_addr(Some(SHOWN_AT));
    let len = h.submit_pair((SHOWN_AT, request_len(&header)), (REPLY_ADDR, REPLY_LEN));
    assert_eq!(len, 0);
    use vm_memory::GuestAddressSpace;
    assert_eq!(window.shown_in(&h.worker.mem.memory()), Some(SHOWN_AT));
}

/// A SETUPMAPPING whose own request lies in a mapped window page: serving
/// it would change the mappings while this worker's pin holds them (it
/// would wait for itself, and with it every later pin and the VMM's
/// repair). It is refused where the server asks for the change, so a guest
/// that rewrites the opcode after the worker's peek gets the same answer.
#[test]
fn a_mapping_change_from_inside_the_window_is_refused() {
    const MIB: u64 = 1 << 20;
    const SHOWN_AT: u64 = 0x200_0000;
    let window = Arc::new(DaxWindow::new(2 * MIB).unwrap());
    let mut h = Harness::with_dax(false, Some(window.clone()));
    h.init();
    std::fs::write(h.share_dir().join("file"), vec![0u8; 8192]).unwrap();
    let (_, error, reply) = h.lookup(b"file");
    assert_eq!(error, 0);
    let node = node_of(&reply);
    let open = Opcode::Open as u32;
    let (_, error, reply) = h.request(&fuse_request(open, 4, node, &[2, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(error, 0);
    let fh = reply_body::<OpenOut>(&reply).fh;
    let map = |moffset: u64| {
        let args = SetupmappingIn {
            fh,
            foffset: 0,
            len: 4096,
            flags: (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits(),
            moffset,
        };
        fuse_struct_request(SETUPMAPPING, 12, node, &args, &[])
    };
    // Window page 0 shows the file, read-write.
    let (_, error, _) = h.request(&map(0));
    assert_eq!(error, 0, "SETUPMAPPING from RAM");
    h.show_window(&window, Some(SHOWN_AT));
    window.set_guest_addr(Some(SHOWN_AT));
    // The next SETUPMAPPING is placed in that window page.
    let request = map(MIB);
    // SAFETY: window page 0 is mapped read-write just above.
    unsafe {
        std::ptr::copy_nonoverlapping(
            request.as_ptr(),
            window.host_addr() as *mut u8,
            request.len(),
        )
    };
    h.mem
        .write_slice(&[0xaa; 64], vm_memory::GuestAddress(REPLY_ADDR))
        .unwrap();
    let len = h.submit_pair((SHOWN_AT, request_len(&request)), (REPLY_ADDR, REPLY_LEN));
    let mut out = [0u8; 16];
    h.mem
        .read_slice(&mut out, vm_memory::GuestAddress(REPLY_ADDR))
        .unwrap();
    let error = reply_header(&out).error;
    assert_eq!(
        (len, error),
        (16, -libc::EINVAL),
        "the change was not refused"
    );
    assert_eq!(window.mapped_bytes(), 4096, "the mappings changed");
    // Pins and repairs still work: nothing is stuck on the lock.
    assert_eq!(window.repair_truncated(), 0);
    h.still_serves();
}

/// FUSE_IOCTL names the size of its in buffer, and the library allocated
/// that much before anything looked (up to 4 GiB, issue 14 finding 1): the
/// chain's readable bytes did not bound it, as a guest can point many
/// descriptors at the same pages. Here 15 descriptors of 8 MiB alias one
/// region: 120 MiB readable, in_size 100 MiB, a header of 72 bytes. The
/// server now answers EINVAL from its own parse (before: it allocated and
/// read 100 MiB, then answered ENOTTY).
#[test]
fn ioctl_in_buffer_is_bounded_by_the_message() {
    const IOCTL: u32 = Opcode::Ioctl as u32;
    let mut h = Harness::new(false);
    h.init();
    let (_, error, reply) = h.lookup(b"file");
    assert_eq!(error, 0);
    let node = node_of(&reply);
    let args = IoctlIn {
        cmd: 0x5401, // TCGETS
        in_size: 100 << 20,
        ..IoctlIn::default()
    };
    let req = fuse_struct_request(IOCTL, 60, node, &args, &[]);
    h.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
    // The whole table, from slot 0 (the previous chains are used).
    h.next_desc = 0;
    let n = 0;
    let alias = 0x40_0000;
    let mut descs = vec![desc(REQ_ADDR, request_len(&req), F_NEXT, n + 1)];
    for i in 0..QUEUE_LEN - 2 {
        descs.push(desc(alias, 8 << 20, F_NEXT, n + 2 + i));
    }
    descs.push(desc(REPLY_ADDR, REPLY_LEN, F_WRITE, 0));
    let len = h.submit_raw(&descs);
    let mut reply = vec![0u8; len as usize];
    h.mem
        .read_slice(&mut reply, GuestAddress(REPLY_ADDR))
        .unwrap();
    assert!(len >= 16, "no reply");
    let error = reply_header(&reply).error;
    assert_eq!(
        error,
        -libc::EINVAL,
        "an ioctl buffer beyond its message was taken"
    );
    h.still_serves();
}

#[test]
fn config_space_holds_the_tag_and_queue_count() {
    let fs = VirtioFs::new(
        FsShare {
            tag: "myfs".into(),
            path: std::env::temp_dir(),
            request_queues: 3,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let mut config = [0xffu8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..4], b"myfs");
    assert!(config[4..36].iter().all(|&b| b == 0), "tag not NUL-padded");
    assert_eq!(config[36..], 3u32.to_le_bytes());
    // A read of the count alone, and one past the end (zeros).
    let mut word = [0u8; 4];
    fs.read_config(36, &mut word);
    assert_eq!(u32::from_le_bytes(word), 3);
    fs.read_config(u64::MAX - 1, &mut word);
    assert_eq!(word, [0; 4]);
}
