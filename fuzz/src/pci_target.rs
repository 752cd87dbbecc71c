//! `pci_config`: the PCI side of a virtio-fs or virtio-net device. A
//! `PciRoot` on an I/O bus (mechanism 1, ports 0xCF8..0xCFF), a
//! `VirtioPciDevice` wrapping a `VirtioFs` (or, with the configuration
//! byte's top bit, a `VirtioNet` on a socket pair whose far end plays
//! passt) on the MMIO bus, `FakeVm` as the `VmOps`, which behaves like KVM where
//! it matters (an MMIO write to a registered ioeventfd address signals it
//! instead of exiting; a memory slot may not overlap RAM or another slot;
//! a guest access inside a shown memory slot is memory, not MMIO, and a
//! fault there goes to the DAX window's repair as in the vCPU loop).
//!
//! Input: one configuration byte (request queues, DAX window, read-only,
//! cache mode; the device), one byte of `VmOps` failures to inject, then operations:
//! port I/O, config-space reads/writes through 0xCF8/0xCFC, MMIO reads and
//! writes on BAR 0 (common cfg, ISR, device cfg, notify, MSI-X table and
//! PBA) and around it, a driver handshake up to DRIVER_OK with fuzzed queue
//! sizes, addresses and vectors, requests posted on an active queue and
//! kicked (the queue workers then run as in Ferry, on their own threads),
//! guest memory writes, device resets; for virtio-net, frames and bytes
//! from the backend and its draining (the device's config space is read
//! through the MMIO operations).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_devices::bus::Bus;
use ferry_devices::fake_vm::FakeVm;
use ferry_devices::pci::{PciDevice, PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_COUNT};
use ferry_devices::virtio::fs::{CacheMode, DaxWindow, FsShare, VirtioFs};
use ferry_devices::virtio::pci_layout::common::*;
use ferry_devices::virtio::ring::SplitRingLayout;
use ferry_devices::virtio::spec::{
    DESC_F_NEXT, DESC_F_WRITE, STATUS_ACKNOWLEDGE as STATUS_ACK, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
};
use ferry_devices::virtio::net::{Link, VirtioNet};
use ferry_devices::virtio::{VirtioDevice, VirtioPciDevice};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::fuse_gen::{self, Known};
use crate::input::Input;
use crate::{oracle, sandbox};

const RAM_SIZE: u64 = 2 << 20;
const BAR0: u64 = 0xc000_0000;
const SHM_ADDR: u64 = 0x1_0000_0000;
const DAX_SIZE: u64 = 2 << 20;
const BAR_SIZE: u64 = ferry_devices::virtio::VIRTIO_PCI_BAR_SIZE;
const MAX_OPS: usize = 96;

/// The common configuration's registers and their widths, in the order
/// inputs pick them (the order is part of the input encoding).
const COMMON_REGS: &[(u64, usize)] = &[
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (CONFIG_MSIX_VECTOR, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 4),
    (QUEUE_DESC_HI, 4),
    (QUEUE_AVAIL, 4),
    (QUEUE_AVAIL_HI, 4),
    (QUEUE_USED, 4),
    (QUEUE_USED_HI, 4),
];
use ferry_devices::virtio::pci_layout::bar0::{
    DEVICE as DEVICE_CFG, ISR, MSIX_PBA, MSIX_TABLE, NOTIFY,
};

/// The feature word's high half as the driver writes it (select 1).
const F_VERSION_1_HI: u32 = (VIRTIO_F_VERSION_1 >> 32) as u32;
const F_INDIRECT_AND_EVENT_IDX: u32 =
    (VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX) as u32;
const _: () = assert!(F_VERSION_1_HI == 1 && F_INDIRECT_AND_EVENT_IDX == (1 << 28) | (1 << 29));

struct Machine {
    vm: Arc<FakeVm>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    io_bus: Bus,
    mmio_bus: Arc<Bus>,
    dev: Arc<Mutex<VirtioPciDevice>>,
    dax: Option<Arc<DaxWindow>>,
    queues: usize,
    msix_cap: usize,
    known: Known,
    /// With `FERRY_FUZZ_SKIP_KNOWN` 3: rings the workers may be serving.
    served: Mutex<Vec<(u16, u64, u64)>>,
}

impl Machine {
    fn bar(&self, index: usize) -> Option<u64> {
        let dev = self.dev.lock().unwrap();
        dev.config()
            .bars()
            .iter()
            .find(|b| b.index == index)
            .map(|b| b.addr)
    }

    fn bar0(&self) -> u64 {
        self.bar(0).expect("BAR 0")
    }

    /// A guest MMIO write, as KVM delivers it.
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.vm.kick(addr) {
            return;
        }
        if self.vm.slot_at(addr).is_some() {
            self.touch_shm(addr);
            return;
        }
        self.mmio_bus.write(addr, data);
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.vm.slot_at(addr).is_some() {
            self.touch_shm(addr);
            return;
        }
        if !self.mmio_bus.read(addr, data) {
            data.fill(0xff);
        }
    }

    /// The guest touched memory-slot memory: fine if mapped; otherwise KVM
    /// fails the access and the vCPU loop asks the windows to repair.
    fn touch_shm(&self, addr: u64) {
        if let Some(w) = &self.dax {
            w.handle_fault(Some(addr));
        }
    }

    fn common_write(&self, reg: u64, value: u64, len: usize) {
        let bytes = value.to_le_bytes();
        self.mmio_write(self.bar0() + reg, &bytes[..len]);
    }

    fn common_read(&self, reg: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.mmio_read(self.bar0() + reg, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// With `FERRY_FUZZ_SKIP_KNOWN` 2, before every operation memory decode
    /// goes off again, so the DAX window's BAR never stays in the queues'
    /// memory view (README.md, "Findings", 2: a guest that pointed a queue
    /// or a request at unmapped window pages crashed Ferry); with 3, each
    /// queue's available index is put back within a ring's length of what
    /// the device has consumed (a wild one made its worker spin forever).
    fn steer_clear(&self) {
        if sandbox::skip(2) {
            self.hide_shm();
        }
        if sandbox::skip(3) {
            self.sane_avail_idx();
        }
    }

    fn direct_read(&self, reg: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.lock().unwrap().bar_read(0, reg, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// The rings of every queue as the registers give them now: (size,
    /// avail, used).
    fn configured_rings(&self) -> Vec<(u16, u64, u64)> {
        let saved = self.direct_read(QUEUE_SELECT, 2);
        let mut rings = Vec::new();
        for q in 0..self.queues {
            self.dev
                .lock()
                .unwrap()
                .bar_write(0, QUEUE_SELECT, &(q as u16).to_le_bytes());
            let size = self.direct_read(QUEUE_SIZE, 2) as u16;
            let reg64 = |r| self.direct_read(r, 4) | (self.direct_read(r + 4, 4) << 32);
            rings.push((size, reg64(QUEUE_AVAIL), reg64(QUEUE_USED)));
        }
        self.dev
            .lock()
            .unwrap()
            .bar_write(0, QUEUE_SELECT, &(saved as u16).to_le_bytes());
        rings
    }

    fn active(&self) -> bool {
        let status = self.direct_read(DEVICE_STATUS, 1) as u8;
        status & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET) == STATUS_DRIVER_OK
    }

    /// Remembers the rings of an active device: workers keep serving them
    /// until a reset, even after the driver clears DRIVER_OK and rewrites
    /// the queue registers (README.md, "Findings").
    fn record_rings(&self) {
        let status = self.direct_read(DEVICE_STATUS, 1) as u8;
        let mut served = self.served.lock().unwrap();
        if status == 0 {
            served.clear();
        } else if self.active() {
            for r in self.configured_rings() {
                if !served.contains(&r) {
                    served.push(r);
                }
            }
        }
    }

    fn sane_avail_idx(&self) {
        let active = self.active();
        let guest = self.mem.memory();
        let configured = self.configured_rings();
        let served = self.served.lock().unwrap().clone();
        let rings = configured
            .iter()
            .map(|&r| (r, active))
            .chain(served.iter().map(|&r| (r, true)));
        for ((size, avail, used), active) in rings {
            if size == 0 || !in_ram(avail, 4) {
                continue;
            }
            // A ring at guest address 0 counts as not set up: the worker
            // pops nothing from it but still reads its index.
            let ring = SplitRingLayout {
                desc: 0,
                avail,
                used,
                size,
            };
            let consumed: u16 = if avail == 0 {
                0
            } else if active && in_ram(used, 4) {
                guest.read_obj(ring.used_idx_addr()).unwrap()
            } else {
                0
            };
            let idx: u16 = guest.read_obj(ring.avail_idx_addr()).unwrap();
            if idx.wrapping_sub(consumed) > size {
                guest.write_obj(consumed, ring.avail_idx_addr()).unwrap();
            }
        }
    }

    /// Whether `[addr, addr + len)` covers a ring index (see `steer_clear`).
    fn over_ring_index(&self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        let served = self.served.lock().unwrap().clone();
        self.configured_rings()
            .into_iter()
            .chain(served)
            .any(|(_, avail, used)| {
                [avail, used]
                    .iter()
                    .any(|&r| r < end && r.saturating_add(4) > addr)
            })
    }

    fn hide_shm(&self) {
        let mut dev = self.dev.lock().unwrap();
        let command = dev.config().command();
        if command & 2 != 0 {
            dev.config_mut().write(4, &(command & !2).to_le_bytes());
            dev.config_written(4, 2);
        }
    }

    fn status(&self) -> u8 {
        self.common_read(DEVICE_STATUS, 1) as u8
    }

    fn cfg_address(&self, slot: u32, reg: u32) {
        let a = (1u32 << 31) | (slot << 11) | (reg & 0xfc);
        self.io_bus.write(PCI_CONFIG_PORT, &a.to_le_bytes());
    }

    fn cfg_write(&self, slot: u32, reg: u32, data: &[u8]) {
        self.cfg_address(slot, reg);
        self.port_write(PCI_CONFIG_PORT + 4 + u64::from(reg & 3), data);
    }

    /// A guest port write. With `FERRY_FUZZ_SKIP_KNOWN` 2, a config write
    /// never turns on the device's memory decode: the DAX BAR would enter
    /// the workers' memory view, and a worker that is still starting up or
    /// serving may touch its unbacked pages (README.md, "Findings", 2).
    fn port_write(&self, port: u64, data: &[u8]) {
        let mut data = data.to_vec();
        if sandbox::skip(2) && (PCI_CONFIG_PORT + 4..PCI_CONFIG_PORT + 8).contains(&port) {
            let mut a = [0u8; 4];
            self.io_bus.read(PCI_CONFIG_PORT, &mut a);
            let a = u32::from_le_bytes(a);
            let ours = a & (1 << 31) != 0
                && (a >> 16) & 0xff == 0
                && (a >> 8) & 7 == 0
                && (a >> 11) & 0x1f == 1;
            // Byte 4 of config space: the command register's low byte.
            let first = (a & 0xfc) as u64 + (port - PCI_CONFIG_PORT - 4);
            if ours && first <= 4 && first + data.len() as u64 > 4 {
                data[(4 - first) as usize] &= !2;
            }
        }
        self.io_bus.write(port, &data);
    }
}

fn interesting_u32(inp: &mut Input<'_>) -> u32 {
    inp.u32_from(&[
        0,
        u32::MAX,
        BAR0 as u32,
        (BAR0 + BAR_SIZE) as u32,
        0xd000_0000,
        SHM_ADDR as u32,
        (SHM_ADDR >> 32) as u32,
        0x6,
        0x7,
        0x8000,
        0xc000,
        0x4000,
        0xfee0_0000,
        1,
    ])
}

fn mmio_offset(inp: &mut Input<'_>, queues: usize) -> (u64, usize) {
    let size = inp.pick(&[1usize, 2, 4, 4, 8, 3]);
    let off = match inp.below(9) {
        0..=2 => {
            let (reg, len) = inp.pick(COMMON_REGS);
            return (reg, len);
        }
        3 => ISR + inp.below(8) as u64,
        4 => DEVICE_CFG + inp.below(0x30) as u64,
        5 => NOTIFY + 4 * inp.below(queues + 2) as u64,
        6 => MSIX_TABLE + 16 * inp.below(queues + 3) as u64 + inp.pick(&[0u64, 4, 8, 12]),
        7 => MSIX_PBA + inp.below(16) as u64,
        _ => inp.below(BAR_SIZE as usize + 16) as u64,
    };
    (off, size)
}

fn mmio_addr(m: &Machine, inp: &mut Input<'_>) -> (u64, usize) {
    match inp.below(8) {
        0..=4 => {
            let (off, len) = mmio_offset(inp, m.queues);
            (m.bar0() + off, len)
        }
        5 => {
            let base = m.bar(2).unwrap_or(SHM_ADDR);
            (base.wrapping_add(u64::from(inp.u32()) % (2 * DAX_SIZE)), 4)
        }
        6 => {
            let a = inp.u64_from(&[BAR0, BAR0 + BAR_SIZE, BAR0 - 4, 0xd000_0000, SHM_ADDR]);
            (a.wrapping_add(u64::from(inp.u8())), inp.pick(&[1, 2, 4, 8]))
        }
        _ => (inp.u64(), inp.pick(&[1, 2, 4, 8])),
    }
}

/// Queue ring addresses: in RAM, inside the DAX window's BAR, over BAR 0,
/// straddling the end of RAM, or anything.
fn queue_base(m: &Machine, inp: &mut Input<'_>, q: usize) -> u64 {
    match inp.below(8) {
        0..=3 => 0x1_0000 * (q as u64 + 1),
        4 => m
            .bar(2)
            .unwrap_or(SHM_ADDR)
            .wrapping_add((u64::from(inp.u32()) % DAX_SIZE) & !0xfff),
        5 => RAM_SIZE - 0x100,
        6 => m.bar0(),
        _ => inp.u64(),
    }
}

fn op_driver(m: &mut Machine, inp: &mut Input<'_>) {
    if inp.chance(64) {
        m.common_write(DEVICE_STATUS, 0, 1);
    }
    let mut status = STATUS_ACK;
    m.common_write(DEVICE_STATUS, status.into(), 1);
    status |= STATUS_DRIVER;
    m.common_write(DEVICE_STATUS, status.into(), 1);
    for sel in 0..2u64 {
        m.common_write(DEVICE_FEATURE_SELECT, sel, 4);
        let _ = m.common_read(0x04, 4);
    }
    let lo = inp.u32_from(&[F_INDIRECT_AND_EVENT_IDX, 0, 1 << 28, 1 << 29]);
    let hi = inp.u32_from(&[F_VERSION_1_HI, F_VERSION_1_HI, 0]);
    m.common_write(DRIVER_FEATURE_SELECT, 0, 4);
    m.common_write(DRIVER_FEATURE, lo.into(), 4);
    m.common_write(DRIVER_FEATURE_SELECT, 1, 4);
    m.common_write(DRIVER_FEATURE, hi.into(), 4);
    status |= STATUS_FEATURES_OK;
    m.common_write(DEVICE_STATUS, status.into(), 1);
    // Bus mastering on, as a driver's probe does (no input read, so the
    // corpus decodes as before); fuzzed config writes may clear it.
    let command = m.dev.lock().unwrap().config().command();
    m.cfg_write(1, 4, &(command | 4).to_le_bytes());
    if inp.bool() {
        // MSI-X enable (and maybe function mask) in the capability.
        let control = inp.pick(&[0x8000u16, 0xc000, 0]);
        m.cfg_write(1, m.msix_cap as u32 + 2, &control.to_le_bytes());
    }
    let mask = inp.u8() | 2; // a request queue, mostly
    for q in 0..m.queues {
        if mask & (1 << q) == 0 {
            continue;
        }
        m.common_write(QUEUE_SELECT, q as u64, 2);
        let size = inp.u32_from(&[1024, 256, 16, 0, 3, 2048]) as u64;
        m.common_write(QUEUE_SIZE, size, 2);
        let base = queue_base(m, inp, q);
        let (desc, avail, used) = match inp.below(8) {
            0 => (base, inp.u64(), base.wrapping_add(0x8000)),
            1 => (
                base.wrapping_add(8),
                base.wrapping_add(0x4001),
                base.wrapping_add(0x8002),
            ),
            _ => (base, base.wrapping_add(0x4000), base.wrapping_add(0x8000)),
        };
        for (reg, v) in [(QUEUE_DESC, desc), (QUEUE_AVAIL, avail), (QUEUE_USED, used)] {
            m.common_write(reg, v & 0xffff_ffff, 4);
            m.common_write(reg + 4, v >> 32, 4);
        }
        let vector = inp.u32_from(&[q as u32, 0, 0xffff]) as u64;
        m.common_write(QUEUE_MSIX_VECTOR, vector, 2);
        if inp.bool() {
            // Program and unmask the vector.
            let entry = m.bar0() + MSIX_TABLE + 16 * (vector & 0xff);
            m.mmio_write(entry, &0xfee0_0000u32.to_le_bytes());
            m.mmio_write(entry + 8, &(0x40 + q as u32).to_le_bytes());
            m.mmio_write(entry + 12, &0u32.to_le_bytes());
        }
        m.common_write(QUEUE_ENABLE, 1, 2);
    }
    if !inp.chance(16) {
        m.steer_clear();
        status |= STATUS_DRIVER_OK;
        m.common_write(DEVICE_STATUS, status.into(), 1);
        if sandbox::skip(3) {
            m.record_rings();
        }
    }
}

/// The registers of queue `q`, read as a driver would (queue_select put
/// back after): (size, desc, avail, used).
fn queue_regs(m: &Machine, q: usize) -> (u16, u64, u64, u64) {
    let saved = m.common_read(QUEUE_SELECT, 2);
    m.common_write(QUEUE_SELECT, q as u64, 2);
    let size = m.common_read(QUEUE_SIZE, 2) as u16;
    let reg64 = |reg| m.common_read(reg, 4) | (m.common_read(reg + 4, 4) << 32);
    let regs = (
        size,
        reg64(QUEUE_DESC),
        reg64(QUEUE_AVAIL),
        reg64(QUEUE_USED),
    );
    m.common_write(QUEUE_SELECT, saved, 2);
    regs
}

fn in_ram(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= RAM_SIZE)
}

/// Buffer addresses for posted requests: RAM, or the DAX window's BAR.
fn buffer_addr(m: &Machine, inp: &mut Input<'_>, ram: u64) -> u64 {
    match inp.below(8) {
        0 => m
            .bar(2)
            .unwrap_or(SHM_ADDR)
            .wrapping_add(u64::from(inp.u32()) % DAX_SIZE),
        1 => inp.u64_from(&[RAM_SIZE - 8, 0, m.bar0()]),
        _ => ram,
    }
}

/// The guest puts a request on queue `q`'s rings (those in RAM) and kicks
/// it; the worker thread serves it. Waits a little for the used ring.
fn op_post(m: &mut Machine, inp: &mut Input<'_>) {
    let q = inp.below(m.queues + 1);
    let (size, desc_table, avail, used) = queue_regs(m, q);
    let size = size.max(1);
    let req_ram = 0x10_0000 + 0x1_0000 * q as u64;
    let reply_ram = 0x18_0000 + 0x1_0000 * q as u64;
    let (opcode, req) = if inp.bool() {
        let mut body = Vec::new();
        for w in [7u32, 38, 0x20000, inp.u32()] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        (
            fuse_gen::INIT,
            ferry_devices::virtio::fs::harness::fuse_request(fuse_gen::INIT, 1, 0, &body),
        )
    } else {
        fuse_gen::request(inp, &mut m.known)
    };
    let mut req_addr = buffer_addr(m, inp, req_ram);
    let mut reply_addr = buffer_addr(m, inp, reply_ram);
    let skip = sandbox::skip(3);
    if skip {
        // Not over a ring at guest address 0 (see `steer_clear`).
        if req_addr < 4 {
            req_addr = req_ram;
        }
        if reply_addr < 4 {
            reply_addr = reply_ram;
        }
    }
    let reply_len = inp.u32_from(&[0x2000, 0x1000, 16, 0]);
    let guest = m.mem.memory();
    if in_ram(req_addr, req.len() as u64) {
        guest.write_slice(&req, GuestAddress(req_addr)).unwrap();
    }
    let mut waited_for = None;
    let ring = SplitRingLayout {
        desc: desc_table,
        avail,
        used,
        size,
    };
    if in_ram(desc_table, ring.desc_table_len())
        && in_ram(avail, ring.avail_ring_len_no_event())
        && !(skip && (desc_table < 4 || avail == 0))
    {
        let head = inp.below(usize::from(size)) as u16;
        let next = (head + 1) % size;
        let (flags0, next0) = if inp.chance(16) {
            (inp.u16(), inp.u16())
        } else {
            (DESC_F_NEXT, next)
        };
        let d0 =
            ferry_devices::virtio::fs::harness::desc(req_addr, req.len() as u32, flags0, next0);
        let d1 = ferry_devices::virtio::fs::harness::desc(reply_addr, reply_len, DESC_F_WRITE, 0);
        guest.write_obj(d0, ring.desc_addr(head)).unwrap();
        guest.write_obj(d1, ring.desc_addr(next)).unwrap();
        let idx: u16 = guest.read_obj(ring.avail_idx_addr()).unwrap();
        guest.write_obj(head, ring.avail_slot_addr(idx)).unwrap();
        guest
            .write_obj(idx.wrapping_add(1), ring.avail_idx_addr())
            .unwrap();
        if in_ram(used, 4) {
            waited_for = Some((ring.used_idx_addr(), idx.wrapping_add(1)));
        }
    }
    drop(guest);
    if skip {
        m.sane_avail_idx();
    }
    // The kick: the notify address of queue q (queue_notify_off is q).
    let notify = m.bar0() + NOTIFY + 4 * q as u64;
    m.mmio_write(notify, &(q as u16).to_le_bytes());
    let active = m.status() & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET) == STATUS_DRIVER_OK;
    if sandbox::verbose() {
        eprintln!(
            "pci: post opcode {opcode} on queue {q} (size {size}, desc {desc_table:#x}, avail {avail:#x}, \
             used {used:#x}), request at {req_addr:#x}, reply at {reply_addr:#x}, active {active}"
        );
    }
    if let (true, Some((used_idx, want))) = (active, waited_for) {
        let deadline = Instant::now() + Duration::from_millis(50);
        while Instant::now() < deadline {
            let idx: u16 = m.mem.memory().read_obj(used_idx).unwrap();
            if idx == want {
                if sandbox::verbose() {
                    let mut h = [0u8; 16];
                    let _ = m.mem.memory().read_slice(&mut h, GuestAddress(reply_addr));
                    eprintln!("pci:   -> served, reply header {h:02x?}");
                }
                if in_ram(reply_addr, 0x100) {
                    let mut reply = vec![0u8; 0x100];
                    m.mem
                        .memory()
                        .read_slice(&mut reply, GuestAddress(reply_addr))
                        .unwrap();
                    m.known.learn(opcode, &reply);
                }
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn op_cfg(m: &mut Machine, inp: &mut Input<'_>, write: bool) {
    let slot = inp.u32_from(&[1, 1, 1, 0, 2, 31]) & 0x1f;
    let reg = match inp.below(6) {
        0 => 0x04,
        1 => 0x10 + 4 * inp.below(6) as u32,
        2 => m.msix_cap as u32 + inp.below(4) as u32,
        _ => inp.u8() as u32,
    };
    let len = inp.pick(&[4usize, 4, 2, 1]);
    let reg = reg & !(len as u32 - 1);
    if write {
        let v = interesting_u32(inp).to_le_bytes();
        m.cfg_write(slot, reg, &v[..len]);
        if inp.chance(16) {
            // A second write at once, as sizing and 64-bit BAR moves do.
            let v = interesting_u32(inp).to_le_bytes();
            m.cfg_write(slot, reg ^ 4, &v[..len]);
        }
    } else {
        m.cfg_address(slot, reg);
        let mut b = [0u8; 4];
        m.io_bus
            .read(PCI_CONFIG_PORT + 4 + u64::from(reg & 3), &mut b[..len]);
    }
}

fn op_port(m: &mut Machine, inp: &mut Input<'_>, write: bool) {
    let port = if inp.chance(230) {
        PCI_CONFIG_PORT + inp.below(PCI_CONFIG_PORT_COUNT as usize) as u64
    } else {
        u64::from(inp.u16())
    };
    let len = inp.pick(&[1usize, 2, 4]);
    if write {
        let v = interesting_u32(inp).to_le_bytes();
        m.port_write(port, &v[..len]);
    } else {
        let mut b = [0u8; 4];
        m.io_bus.read(port, &mut b[..len]);
    }
}

fn op_mmio(m: &mut Machine, inp: &mut Input<'_>, write: bool) {
    let (addr, len) = mmio_addr(m, inp);
    let len = len.clamp(1, 8);
    if write {
        let v = if inp.bool() {
            u64::from(interesting_u32(inp))
        } else {
            inp.u64()
        };
        m.mmio_write(addr, &v.to_le_bytes()[..len]);
    } else {
        let mut b = [0u8; 8];
        m.mmio_read(addr, &mut b[..len]);
    }
}

fn op_memory(m: &mut Machine, inp: &mut Input<'_>) {
    let addr = inp.u32() as u64 % RAM_SIZE;
    let data = inp.bytes(1024);
    if sandbox::skip(3) && m.over_ring_index(addr, data.len() as u64) {
        // Not over a ring's indexes (see `steer_clear`).
        return;
    }
    let _ = m.mem.memory().write_slice(data, GuestAddress(addr));
}

/// The share every run starts from: an empty directory beside a file that
/// must stay as it is.
/// passt's side of a virtio-net device: a frame (length prefix and
/// bytes, the length sometimes out of range), raw bytes, or a drain.
fn op_backend(passt: &mut UnixStream, inp: &mut Input<'_>) {
    match inp.below(3) {
        0 => {
            let len = inp.u32_from(&[60, 1514, 65_549, 0, 13, 65_550, u32::MAX]);
            let mut framed = len.to_be_bytes().to_vec();
            framed.resize(4 + usize::try_from(len.min(65_549)).unwrap_or(0), inp.u8());
            let _ = passt.write(&framed);
        }
        1 => {
            let n = usize::from(inp.u8());
            let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
            let _ = passt.write(&bytes);
        }
        _ => {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(1..) = passt.read(&mut buf) {}
        }
    }
}

fn fresh_share() -> (PathBuf, PathBuf) {
    let top = sandbox::sandbox().join("pci");
    sandbox::remove_tree(&top);
    let share = top.join("share");
    std::fs::create_dir_all(&share).expect("share dir");
    std::fs::write(top.join("secret"), "outside").expect("secret");
    (top, share)
}

/// Entry point of the `pci_config` target.
pub fn run(data: &[u8]) {
    let (top, share) = fresh_share();
    let fds = sandbox::FdWatch::new();
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let fail = inp.u8() & 0x0f;
    let fail = if inp.chance(32) { fail } else { 0 };
    let request_queues = 1 + u16::from(cfg & 3);
    let dax = cfg & 4 != 0;
    let cache = match (cfg >> 4) & 3 {
        0 => CacheMode::Never,
        1 => CacheMode::Always,
        _ => CacheMode::Auto,
    };
    let fs_share = FsShare {
        tag: "fuzz".into(),
        path: share.clone(),
        request_queues,
        readonly: cfg & 8 != 0,
        cache,
        dax_window: dax.then_some(DAX_SIZE),
        ..Default::default()
    };
    let net = cfg & 0x80 != 0;
    let mut passt = None;
    let (device, dax, queues): (Box<dyn VirtioDevice>, _, _) = if net {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        theirs.set_nonblocking(true).expect("a non-blocking far end");
        passt = Some(theirs);
        let card = VirtioNet::new([2, 0x46, 0x52, 0x59, 0, 1], Link::Stream(ours), None)
            .expect("virtio-net device");
        (Box::new(card), None, 2)
    } else {
        let fs = VirtioFs::new(fs_share, None).expect("virtio-fs device");
        let dax = fs.dax_window();
        (Box::new(fs), dax, 1 + usize::from(request_queues))
    };
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
        .expect("guest RAM");
    let mem = GuestMemoryAtomic::new(ram);
    let vm = Arc::new(FakeVm::failing(RAM_SIZE, fail));
    let dev = VirtioPciDevice::new(device, vm.clone(), mem.clone(), BAR0, Some(SHM_ADDR))
        .expect("virtio-pci device");
    vm.arm();
    let msix_cap = {
        // Walk the capability list for MSI-X (0x11).
        let mut at = usize::from(dev.config().read_u16(0x34) as u8);
        let mut found = 0;
        while at != 0 && found == 0 {
            let word = dev.config().read_u16(at);
            if word as u8 == 0x11 {
                found = at;
            }
            at = usize::from((word >> 8) as u8);
        }
        assert_ne!(found, 0, "no MSI-X capability");
        found
    };
    let dev = Arc::new(Mutex::new(dev));
    let mmio_bus = Arc::new(Bus::new());
    let mut root = PciRoot::new(mmio_bus.clone());
    assert_eq!(root.add_device(dev.clone()).expect("PCI slot"), 1);
    let io_bus = Bus::new();
    io_bus
        .insert(
            Arc::new(Mutex::new(root)),
            PCI_CONFIG_PORT,
            PCI_CONFIG_PORT_COUNT,
        )
        .expect("config ports");
    let mut m = Machine {
        vm,
        mem,
        io_bus,
        mmio_bus,
        dev,
        dax,
        queues,
        msix_cap,
        known: Known::default(),
        served: Mutex::new(Vec::new()),
    };

    let mut ops = 0;
    while !inp.is_empty() && ops < MAX_OPS {
        ops += 1;
        m.steer_clear();
        let op = inp.below(16);
        if sandbox::verbose() {
            eprintln!("pci: op {op}, status {:#x}", m.status());
        }
        match op {
            0 | 1 => op_cfg(&mut m, &mut inp, true),
            2 => op_cfg(&mut m, &mut inp, false),
            3 => {
                let write = inp.bool();
                op_port(&mut m, &mut inp, write)
            }
            4..=6 => op_mmio(&mut m, &mut inp, true),
            7 => op_mmio(&mut m, &mut inp, false),
            8 | 9 => op_driver(&mut m, &mut inp),
            10..=12 => op_post(&mut m, &mut inp),
            13 => op_memory(&mut m, &mut inp),
            14 => m.common_write(DEVICE_STATUS, u64::from(inp.u8()), 1),
            _ => {
                if let Some(p) = &mut passt {
                    op_backend(p, &mut inp);
                } else if let Some(w) = &m.dax {
                    w.repair_truncated();
                }
            }
        }
        if sandbox::skip(3) {
            m.record_rings();
        }
    }

    // Reset stops the workers (joins their threads) before the device goes.
    {
        let mut dev = m.dev.lock().unwrap();
        // Whatever the guest wrote, a failed DRIVER_OK must be its own
        // fault: this host has descriptors and threads to spare.
        let failed = dev.failed_activations();
        assert_eq!(
            failed.by_host, 0,
            "activation failed for a host reason ({failed:?}); see the log"
        );
        dev.bar_write(0, DEVICE_STATUS, &[0]);
        let mut status = [0xffu8];
        dev.bar_read(0, DEVICE_STATUS, &mut status);
        assert_eq!(status[0], 0, "status after reset");
    }
    drop(m);
    drop(passt);
    oracle::check_policy(&share);
    oracle::check_beside(&top);
    sandbox::check_sandbox(&[std::ffi::OsStr::new("pci")]);
    fds.check_none_leaked();
}
