//! `fs_request`: the virtio-fs request queue worker (Ferry's filter, INIT
//! amendment, DAX pinning and fuse-backend-rs's server and passthrough file
//! system behind it) driven through a split virtqueue in plain memory, as
//! `ferry_devices::virtio::fs::harness` lays it out.
//!
//! Input: one configuration byte (read-only share, DAX window and whether
//! the guest sees it, INIT first or not, POSIX ACLs, an id map), then
//! operations until the input
//! runs out: FUSE requests in well-formed or split chains, raw descriptor
//! chains (any address, length, flags, `next`; indirect tables; loops),
//! writes of bytes into guest memory or over the rings, and, with a DAX
//! window, what the host and the VMM do to it (truncating a mapped file,
//! the fault and repair paths).
//!
//! Checked after each run, beyond "no panic, no hang": every chain made
//! available on an intact ring comes back used; the server still answers;
//! the share keeps Ferry's policy (`oracle`), a read-only share is
//! unchanged; nothing appeared beside the share or in the sandbox, and the
//! file beside the share is untouched.

use std::sync::Arc;

use ferry_devices::virtio::fs::harness::{
    desc, fuse_request, Harness, AVAIL_RING, F_INDIRECT, F_NEXT, F_WRITE, QUEUE_LEN, REPLY_ADDR,
    REQ_ADDR, ROOT,
};
use ferry_devices::virtio::fs::{DaxWindow, IdMap, IdMapping};

/// The host user an id-mapped share makes its files as.
const FUZZ_USER: u32 = 1000;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::fuse_gen::{self, Known, GETATTR, INIT};
use crate::input::Input;
use crate::{oracle, sandbox};

/// The harness's guest memory: 16 MiB at 0.
const MEM_SIZE: u64 = 16 << 20;
/// Descriptor table, available and used rings.
const RING_END: u64 = 0x3000;
/// Where indirect descriptor tables go.
const INDIRECT_ADDR: u64 = 0x30_0000;
const INDIRECT_END: u64 = INDIRECT_ADDR + 0x1_0000;
/// Split requests and replies: one piece every 128 KiB from REQ_ADDR and
/// REPLY_ADDR.
const STRIDE: u64 = 0x2_0000;
/// Where the guest sees the DAX window, when it does: past RAM, shown in
/// the worker's memory view as the PCI transport shows it.
const DAX_SHOWN_AT: u64 = 0x200_0000;
const MAX_OPS: usize = 64;
/// INIT flags of a Linux 6.x virtiofs guest without DAX: bits 0 to 30
/// (INIT_EXT: a 64-byte fuse_init_in) but FILE_OPS, MAP_ALIGNMENT and
/// SUBMOUNTS.
const LINUX_INIT_FLAGS: u32 = 0x7fff_ffff & !(1 << 2) & !(1 << 26) & !(1 << 27);

struct State {
    known: Known,
    /// The guest scribbled over the rings (or let the device do it): chains
    /// may legitimately go missing.
    ring_dirty: bool,
}

/// Ranges whose corruption breaks the "every chain comes back" invariant.
fn sensitive(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return true;
    };
    let overlaps = |lo: u64, hi: u64| addr < hi && end > lo;
    overlaps(0, RING_END) || overlaps(INDIRECT_ADDR, INDIRECT_END)
}

/// With `FERRY_FUZZ_SKIP_KNOWN` 3: keeps the device from writing over the
/// rings or the indirect table area, and indirect tables in that area, so
/// that the available index only changes through `submit` (a wild one
/// makes the worker spin forever: README.md, "Findings").
fn guard(addr: u64, len: u32, flags: u16) -> u64 {
    if !sandbox::skip(3) {
        return addr;
    }
    if flags & F_INDIRECT != 0 {
        INDIRECT_ADDR
    } else if flags & F_WRITE != 0 && sensitive(addr, u64::from(len)) {
        REPLY_ADDR + 0x4000
    } else {
        addr
    }
}

fn gen_addr(inp: &mut Input<'_>) -> u64 {
    let small = u64::from(inp.u16());
    match inp.below(10) {
        0 | 1 => REQ_ADDR + small,
        2 | 3 => REPLY_ADDR + small,
        4 => INDIRECT_ADDR + (small & 0xfff),
        5 => DAX_SHOWN_AT + (u64::from(inp.u32()) % (4 << 20)),
        6 => MEM_SIZE - (small & 0xff),
        7 => small & 0x2fff,
        8 => inp.u64_from(&[0, MEM_SIZE, u64::MAX, u64::MAX - 15, 1 << 32]),
        _ => u64::from(inp.u32()) % MEM_SIZE,
    }
}

fn gen_len(inp: &mut Input<'_>) -> u32 {
    inp.u32_from(&[
        0,
        1,
        15,
        16,
        40,
        56,
        4096,
        0x2000,
        0x1_0000,
        0x10_0000,
        u32::MAX,
    ])
}

fn gen_flags(inp: &mut Input<'_>) -> u16 {
    if inp.chance(16) {
        inp.u16()
    } else {
        inp.u8() as u16 & (F_NEXT | F_WRITE | F_INDIRECT)
    }
}

/// Places `descs` (at most 4) in the descriptor table from the harness's
/// next free slot, makes the first one available and runs the worker.
/// Returns the used length, or `None` if the chain did not come back
/// (allowed only once the rings were scribbled over).
fn submit(h: &mut Harness, st: &mut State, descs: &[RawDescriptor]) -> Option<u32> {
    debug_assert!(descs.len() <= 4);
    let head = h.next_desc;
    let want = h.place_raw(descs);
    h.worker_round();
    let used_idx = h.used_idx();
    let (id, len) = h.used_elem(used_idx.wrapping_sub(1));
    if used_idx != want || id != u32::from(head) {
        assert!(
            st.ring_dirty,
            "chain {head} made available on an intact ring did not come back: \
             avail idx {want}, used idx {used_idx}, last used id {id}"
        );
        return None;
    }
    Some(len)
}

/// Reads what the device wrote into `pieces` (address, length), up to
/// `used` bytes.
fn gather(h: &Harness, pieces: &[(u64, u32)], used: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = used.min(1 << 20) as usize;
    for &(addr, len) in pieces {
        let n = (len as usize).min(left);
        let mut buf = vec![0u8; n];
        if h.mem.read_slice(&mut buf, GuestAddress(addr)).is_err() {
            break;
        }
        out.extend_from_slice(&buf);
        left -= n;
        if left == 0 {
            break;
        }
    }
    out
}

/// A request in one readable and one writable descriptor (or the readable
/// one alone).
fn send_simple(
    h: &mut Harness,
    st: &mut State,
    req: &[u8],
    reply_len: Option<u32>,
) -> Option<Vec<u8>> {
    h.mem.write_slice(req, GuestAddress(REQ_ADDR)).unwrap();
    let head = h.next_desc;
    if sandbox::verbose() {
        eprintln!(
            "fs: request opcode {} ({} bytes), reply space {reply_len:?}, header {:02x?}, body {:02x?}",
            u32::from_le_bytes(req[4..8].try_into().unwrap()),
            req.len(),
            &req[..req.len().min(40)],
            &req[req.len().min(40)..req.len().min(104)]
        );
    }
    let used = match reply_len {
        Some(len) => submit(
            h,
            st,
            &[
                desc(REQ_ADDR, req.len() as u32, F_NEXT, head + 1),
                desc(REPLY_ADDR, len, F_WRITE, 0),
            ],
        )?,
        None => submit(h, st, &[desc(REQ_ADDR, req.len() as u32, 0, 0)])?,
    };
    let reply = gather(h, &[(REPLY_ADDR, reply_len.unwrap_or(0))], used);
    if sandbox::verbose() {
        let error = reply
            .get(4..8)
            .map(|e| i32::from_le_bytes(e.try_into().unwrap()));
        eprintln!("fs:   -> used {used}, error {error:?}");
    }
    Some(reply)
}

fn op_request(h: &mut Harness, st: &mut State, inp: &mut Input<'_>) {
    let (opcode, req) = fuse_gen::request(inp, &mut st.known);
    let reply_len = match inp.below(12) {
        0 => None,
        1 => Some(inp.u32_from(&[0, 1, 15, 16, 17, 100])),
        2 => Some(inp.u32_from(&[0x10_0000, 0x1_0000, 4096])),
        _ => Some(0x2000),
    };
    if let Some(reply) = send_simple(h, st, &req, reply_len) {
        st.known.learn(opcode, &reply);
    }
}

/// A request cut into readable pieces at arbitrary points, the reply space
/// in several writable pieces; through an indirect table when that makes
/// more than four descriptors.
fn op_split_request(h: &mut Harness, st: &mut State, inp: &mut Input<'_>) {
    let (opcode, req) = fuse_gen::request(inp, &mut st.known);
    let nread = 1 + inp.below(4);
    let mut cuts: Vec<usize> = (1..nread).map(|_| inp.below(req.len() + 1)).collect();
    cuts.sort_unstable();
    let mut descs = Vec::new();
    let mut start = 0;
    for (i, end) in cuts.into_iter().chain([req.len()]).enumerate() {
        let addr = REQ_ADDR + STRIDE * i as u64;
        h.mem
            .write_slice(&req[start..end], GuestAddress(addr))
            .unwrap();
        descs.push((addr, (end - start) as u32, 0u16));
        start = end;
    }
    let nwrite = inp.below(5);
    let mut pieces = Vec::new();
    for i in 0..nwrite {
        let len = inp.u32_from(&[0, 8, 16, 24, 100, 4096, 0x2000]);
        let addr = REPLY_ADDR + STRIDE * i as u64;
        pieces.push((addr, len));
        descs.push((addr, len, F_WRITE));
    }
    if inp.chance(32) && descs.len() > 1 {
        // A readable piece after a writable one: the order is wrong.
        let i = inp.below(descs.len());
        let last = descs.len() - 1;
        descs.swap(i, last);
    }
    let used = if descs.len() <= 4 && !inp.chance(64) {
        let head = h.next_desc;
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let next = head + i as u16 + 1;
                desc(a, l, if i + 1 < n { f | F_NEXT } else { f }, next)
            })
            .collect();
        submit(h, st, &raw)
    } else {
        let n = descs.len();
        for (i, &(a, l, f)) in descs.iter().enumerate() {
            let flags = if i + 1 < n { f | F_NEXT } else { f };
            let d = desc(a, l, flags, i as u16 + 1);
            h.mem
                .write_obj(d, GuestAddress(INDIRECT_ADDR + 16 * i as u64))
                .unwrap();
        }
        submit(h, st, &[desc(INDIRECT_ADDR, 16 * n as u32, F_INDIRECT, 0)])
    };
    if let Some(used) = used {
        let reply = gather(h, &pieces, used);
        st.known.learn(opcode, &reply);
    }
}

/// Up to four descriptors straight into the table: any address, length,
/// flags and `next` (loops, indexes past the queue, indirect flags).
fn op_raw_chain(h: &mut Harness, st: &mut State, inp: &mut Input<'_>) {
    if inp.bool() {
        // Something worth parsing where most descriptors point.
        let (_, req) = fuse_gen::request(inp, &mut st.known);
        h.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
    }
    let n = 1 + inp.below(4);
    let head = h.next_desc;
    let mut descs = Vec::new();
    for i in 0..n as u16 {
        let len = gen_len(inp);
        let flags = gen_flags(inp);
        let addr = guard(gen_addr(inp), len, flags);
        let next = match inp.below(8) {
            0 => head + i,
            1 => head,
            2 => inp.u16(),
            3 => inp.u16() % (QUEUE_LEN + 2),
            _ => head + i + 1,
        };
        let indirect_elsewhere = flags & F_INDIRECT != 0 && addr != INDIRECT_ADDR;
        if (flags & F_WRITE != 0 && sensitive(addr, u64::from(len))) || indirect_elsewhere {
            st.ring_dirty = true;
        }
        descs.push(desc(addr, len, flags, next));
    }
    let _ = submit(h, st, &descs);
}

/// An indirect table of up to 16 descriptors, reached from one head.
fn op_indirect(h: &mut Harness, st: &mut State, inp: &mut Input<'_>) {
    let n = 1 + inp.below(16);
    let valid = inp.bool();
    let (opcode, req) = fuse_gen::request(inp, &mut st.known);
    if valid {
        h.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
    }
    for i in 0..n {
        let (addr, len, flags) = if valid && i == 0 {
            (REQ_ADDR, req.len() as u32, F_NEXT)
        } else if valid && i == 1 && inp.chance(200) {
            (REPLY_ADDR, 0x2000, F_WRITE | if n > 2 { F_NEXT } else { 0 })
        } else {
            let (len, flags) = (gen_len(inp), gen_flags(inp));
            (guard(gen_addr(inp), len, flags), len, flags)
        };
        let next = if inp.chance(220) {
            i as u16 + 1
        } else {
            inp.u16() % (n as u16 + 2)
        };
        if flags & F_WRITE != 0 && sensitive(addr, u64::from(len)) {
            st.ring_dirty = true;
        }
        h.mem
            .write_obj(
                desc(addr, len, flags, next),
                GuestAddress(INDIRECT_ADDR + 16 * i as u64),
            )
            .unwrap();
    }
    let table_len = match inp.below(8) {
        0 => inp.u32(),
        1 => 16 * n as u32 + 8,
        2 => 0,
        3 => 16 * (n as u32 + 1),
        _ => 16 * n as u32,
    };
    let flags = if inp.chance(16) {
        gen_flags(inp) | F_INDIRECT
    } else {
        F_INDIRECT
    };
    if let Some(used) = submit(h, st, &[desc(INDIRECT_ADDR, table_len, flags, 0)]) {
        if valid {
            let reply = gather(h, &[(REPLY_ADDR, 0x2000)], used);
            st.known.learn(opcode, &reply);
        }
    }
}

fn op_write_memory(h: &mut Harness, st: &mut State, inp: &mut Input<'_>) {
    let addr = gen_addr(inp);
    let data = inp.bytes(4096);
    if sensitive(addr, data.len() as u64) {
        if sandbox::skip(3) {
            return;
        }
        st.ring_dirty = true;
    }
    let _ = h.mem.write_slice(data, GuestAddress(addr));
}

fn op_poke_ring(h: &mut Harness, st: &mut State, inp: &mut Input<'_>) {
    st.ring_dirty = true;
    let addr = if sandbox::skip(3) {
        // Ring entries and the used ring only: not the descriptor table, not
        // the available index.
        AVAIL_RING + 4 + inp.below((RING_END - AVAIL_RING - 4) as usize) as u64
    } else {
        inp.below(RING_END as usize) as u64
    };
    let data = inp.bytes(64);
    let _ = h.mem.write_slice(data, GuestAddress(addr));
    h.worker_round();
}

/// What the host and the VMM do to a DAX window meanwhile. Returns whether
/// the host changed a file in the share.
fn op_dax(h: &mut Harness, w: &DaxWindow, inp: &mut Input<'_>) -> bool {
    match inp.below(6) {
        0 | 1 => {
            // A host process truncates or extends a file in the share (never
            // through a symlink: the guest may have made one to anywhere).
            let name = inp.pick(&["file", "a", "b", "dir", "sub"]);
            let path = h.share_dir().join(name);
            let len = inp.u64_from(&[0, 1, 4096, 4097, 8192, 2 << 20]) % (4 << 20);
            let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
            if is_file {
                use std::os::unix::fs::OpenOptionsExt;
                if let Ok(f) = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                {
                    return f.set_len(len).is_ok();
                }
            }
        }
        2 => {
            // The VMM's once-a-second check.
            w.repair_truncated();
        }
        3 => {
            w.restore_grown();
        }
        4 => {
            // KVM could not reach a window page: the vCPU loop's repair.
            let gpa = inp
                .u64_from(&[DAX_SHOWN_AT, DAX_SHOWN_AT - 1])
                .wrapping_add(u64::from(inp.u32() % (5 << 20)));
            w.handle_fault(Some(gpa));
        }
        _ => {
            // The guest moves the BAR: the workers' memory view and the
            // window's record change at different moments; the input picks
            // which of them has changed yet.
            let shown = inp.bool().then_some(DAX_SHOWN_AT);
            match inp.below(3) {
                0 => h.show_window(w, shown),
                1 => w.set_guest_addr(shown),
                _ => {
                    h.show_window(w, shown);
                    w.set_guest_addr(shown);
                }
            }
        }
    }
    false
}

/// Entry point of the `fs_request` target.
pub fn run(data: &[u8]) {
    let _ = sandbox::sandbox();
    let fds = sandbox::FdWatch::new();
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let readonly = cfg & 1 != 0;
    let window = (cfg & 2 != 0).then(|| {
        let size = if cfg & 0x10 != 0 { 4 << 20 } else { 2 << 20 };
        Arc::new(DaxWindow::new(size).expect("DAX window"))
    });
    if let Some(w) = &window {
        if cfg & 8 != 0 {
            w.set_guest_addr(Some(DAX_SHOWN_AT));
        }
    }
    let mut h = Harness::with_share(readonly, window.clone(), |s| {
        s.posix_acl = cfg & 0x40 != 0;
        if cfg & 0x80 != 0 {
            // An unprivileged Ferry's default: every guest id is one user.
            s.ids = IdMapping {
                uids: IdMap::root_is(FUZZ_USER),
                gids: IdMap::root_is(FUZZ_USER),
            };
        }
    });
    if let Some(w) = window.as_ref().filter(|_| cfg & 8 != 0) {
        h.show_window(w, Some(DAX_SHOWN_AT));
    }
    let mut before = readonly.then(|| oracle::snapshot(&h.share_dir()));
    let mut st = State {
        known: Known::default(),
        ring_dirty: false,
    };
    if cfg & 4 == 0 {
        let fuzzed = cfg & 0x20 != 0;
        let flags = if fuzzed { inp.u32() } else { LINUX_INIT_FLAGS };
        let mut body = Vec::new();
        for w in [7u32, 38, 0x20000, flags] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        if flags & (1 << 30) != 0 {
            let flags2 = if fuzzed { inp.u32() } else { 0 };
            body.extend_from_slice(&flags2.to_le_bytes());
            body.extend_from_slice(&[0; 44]);
        }
        let reply = send_simple(
            &mut h,
            &mut st,
            &fuse_request(INIT, 1, 0, &body),
            Some(0x2000),
        )
        .expect("ring is intact");
        let error = reply
            .get(4..8)
            .map(|e| i32::from_le_bytes(e.try_into().unwrap()));
        assert!(
            fuzzed || (reply.len() >= 16 && error == Some(0)),
            "INIT of a fresh device failed: {error:?}, {} bytes",
            reply.len()
        );
    }

    let mut ops = 0;
    while !inp.is_empty() && ops < MAX_OPS {
        ops += 1;
        let op = inp.below(16);
        if sandbox::verbose() {
            eprintln!("fs: op {op} (ring dirty: {})", st.ring_dirty);
        }
        match op {
            0..=6 => op_request(&mut h, &mut st, &mut inp),
            7 | 8 => op_split_request(&mut h, &mut st, &mut inp),
            9 => op_raw_chain(&mut h, &mut st, &mut inp),
            10 => op_indirect(&mut h, &mut st, &mut inp),
            11 => op_write_memory(&mut h, &mut st, &mut inp),
            12 => op_poke_ring(&mut h, &mut st, &mut inp),
            13 => h.worker_round(),
            _ => match &window {
                Some(w) => {
                    if op_dax(&mut h, w, &mut inp) && readonly {
                        // The host may change a read-only share.
                        before = Some(oracle::snapshot(&h.share_dir()));
                    }
                }
                None => op_request(&mut h, &mut st, &mut inp),
            },
        }
    }

    if !st.ring_dirty {
        // The server still answers (an error is an answer: the guest may
        // have forgotten the root or sent DESTROY).
        let req = fuse_request(GETATTR, u64::MAX, ROOT, &[0; 16]);
        let reply = send_simple(&mut h, &mut st, &req, Some(0x2000)).expect("ring is intact");
        assert!(
            reply.len() >= 16,
            "the server stopped answering ({} bytes)",
            reply.len()
        );
    }

    // The share keeps the policy; a read-only one is as it was.
    let share = h.share_dir();
    oracle::check_policy(&share);
    if let Some(before) = before {
        assert_eq!(
            before,
            oracle::snapshot(&share),
            "a read-only share changed"
        );
    }
    // Nothing escaped the share.
    let top = share.parent().expect("share has a parent").to_path_buf();
    oracle::check_beside(&top);
    let top_name = top.file_name().expect("harness dir name").to_owned();
    sandbox::check_sandbox(&[&top_name, std::ffi::OsStr::new("pci")]);
    drop(h);
    // The window's mappings hold their files until it goes.
    drop(window);
    // The harness removes its directory; make sure, so the next run starts
    // from an empty share.
    sandbox::remove_tree(&top);
    fds.check_none_leaked();
}
