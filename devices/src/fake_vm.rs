//! KVM and the interrupt controller as far as a device can tell, for unit
//! tests, benches and fuzz targets: one double in place of three. It keeps
//! what a device registers (ioeventfds, MSI routes, memory slots) and
//! answers as KVM does where it matters (EEXIST for a second ioeventfd at
//! one address, ENOENT for removing one never added, EINVAL/EEXIST for a
//! misaligned or overlapping slot), allocates GSIs from 24 (below are the
//! IOAPIC's) and slots from 1 (slot 0 holds RAM), and counts interrupts.
//! Chosen failures can be armed to test a device's error paths.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::virtio::VirtioInterrupt;
use crate::vm_ops::{GuestMapping, MsiMessage, VmOps};

/// Calls that fail once [`FakeVm::arm`] is called, as bits.
pub mod fail {
    pub const REGISTER_IOEVENT: u8 = 1;
    pub const UNREGISTER_IOEVENT: u8 = 2;
    pub const ROUTE_MSI: u8 = 4;
    pub const MEMORY_SLOT: u8 = 8;
}

/// The first GSI an MSI route gets.
pub const FIRST_GSI: u32 = 24;

pub struct FakeVm {
    ram_size: u64,
    ioevents: Mutex<Vec<(u64, EventFd)>>,
    next_gsi: AtomicU32,
    routes: Mutex<HashMap<u32, MsiMessage>>,
    next_slot: AtomicU32,
    slots: Mutex<HashMap<u32, GuestMapping>>,
    notified: Mutex<HashMap<u16, usize>>,
    fail: u8,
    armed: AtomicBool,
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FakeVm {
    /// A VM with `ram_size` bytes of RAM at guest address 0.
    pub fn new(ram_size: u64) -> Self {
        FakeVm::failing(ram_size, 0)
    }

    /// A VM whose calls in `fail` (bits of [`fail`]) fail once armed.
    pub fn failing(ram_size: u64, fail: u8) -> Self {
        FakeVm {
            ram_size,
            ioevents: Mutex::new(Vec::new()),
            next_gsi: AtomicU32::new(FIRST_GSI),
            routes: Mutex::new(HashMap::new()),
            next_slot: AtomicU32::new(1),
            slots: Mutex::new(HashMap::new()),
            notified: Mutex::new(HashMap::new()),
            fail,
            armed: AtomicBool::new(false),
        }
    }

    /// From now on the chosen calls fail.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    fn failing_now(&self, what: u8) -> bool {
        self.fail & what != 0 && self.armed.load(Ordering::Relaxed)
    }

    /// What KVM does on an MMIO write at `addr`: signals the ioeventfd
    /// registered there. Whether there was one.
    pub fn kick(&self, addr: u64) -> bool {
        let events = self.ioevents.lock().unwrap_or_else(|e| e.into_inner());
        match events.iter().find(|(a, _)| *a == addr) {
            Some((_, fd)) => fd.write(1).is_ok(),
            None => false,
        }
    }

    /// The memory slot showing `addr`, if any.
    pub fn slot_at(&self, addr: u64) -> Option<GuestMapping> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .find(|m| addr >= m.guest_addr && addr - m.guest_addr < m.size)
            .copied()
    }

    /// How many interrupts went to `vector` through [`VirtioInterrupt`].
    pub fn notified(&self, vector: u16) -> usize {
        let counts = self.notified.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&vector).copied().unwrap_or(0)
    }
}

impl VmOps for FakeVm {
    fn register_ioevent(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        if self.failing_now(fail::REGISTER_IOEVENT) {
            return Err(err(libc::ENOSPC));
        }
        let mut events = self.ioevents.lock().unwrap_or_else(|e| e.into_inner());
        if events.iter().any(|(a, _)| *a == addr) {
            return Err(err(libc::EEXIST));
        }
        events.push((addr, evt.try_clone()?));
        Ok(())
    }

    fn unregister_ioevent(&self, _evt: &EventFd, addr: u64) -> io::Result<()> {
        if self.failing_now(fail::UNREGISTER_IOEVENT) {
            return Err(err(libc::EINVAL));
        }
        // KVM matches the eventfd too; every kick has its own address here.
        let mut events = self.ioevents.lock().unwrap_or_else(|e| e.into_inner());
        match events.iter().position(|(a, _)| *a == addr) {
            Some(i) => {
                events.remove(i);
                Ok(())
            }
            None => Err(err(libc::ENOENT)),
        }
    }

    fn add_msi_vector(&self, _irqfd: &EventFd) -> io::Result<u32> {
        Ok(self.next_gsi.fetch_add(1, Ordering::Relaxed))
    }

    fn route_msi(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        if self.failing_now(fail::ROUTE_MSI) {
            return Err(err(libc::ENOMEM));
        }
        assert!(
            gsi >= FIRST_GSI && gsi < self.next_gsi.load(Ordering::Relaxed),
            "route for a GSI never allocated: {gsi}"
        );
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.insert(gsi, msg);
        Ok(())
    }

    fn new_memory_slot(&self) -> u32 {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    fn set_memory_slot(&self, slot: u32, mapping: Option<GuestMapping>) -> io::Result<()> {
        if self.failing_now(fail::MEMORY_SLOT) {
            return Err(err(libc::ENOMEM));
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(&slot);
        let Some(m) = mapping else {
            return Ok(());
        };
        let end = m
            .guest_addr
            .checked_add(m.size)
            .ok_or_else(|| err(libc::EINVAL))?;
        if m.size == 0 || m.guest_addr % 4096 != 0 || m.host_addr % 4096 != 0 {
            return Err(err(libc::EINVAL));
        }
        let overlaps = |a: u64, len: u64| m.guest_addr < a + len && end > a;
        if overlaps(0, self.ram_size) || slots.values().any(|o| overlaps(o.guest_addr, o.size)) {
            return Err(err(libc::EEXIST));
        }
        slots.insert(slot, m);
        Ok(())
    }
}

impl VirtioInterrupt for FakeVm {
    fn notify(&self, vector: u16) {
        let mut counts = self.notified.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(vector).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_kvm_does() {
        let vm = FakeVm::new(1 << 20);
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_ioevent(&fd, 0x1000).unwrap();
        let again = vm.register_ioevent(&fd, 0x1000).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EEXIST));
        assert!(vm.kick(0x1000) && !vm.kick(0x2000));
        assert_eq!(fd.read().unwrap(), 1);
        vm.unregister_ioevent(&fd, 0x1000).unwrap();
        let gone = vm.unregister_ioevent(&fd, 0x1000).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));

        assert_eq!(vm.add_msi_vector(&fd).unwrap(), FIRST_GSI);
        let slot = vm.new_memory_slot();
        assert_eq!(slot, 1);
        let over_ram = GuestMapping {
            guest_addr: 0,
            size: 4096,
            host_addr: 0x1000,
            readonly: false,
        };
        let refused = vm.set_memory_slot(slot, Some(over_ram)).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
        let above = GuestMapping {
            guest_addr: 1 << 32,
            ..over_ram
        };
        vm.set_memory_slot(slot, Some(above)).unwrap();
        assert_eq!(vm.slot_at((1 << 32) + 4095), Some(above));
        assert_eq!(vm.slot_at((1 << 32) + 4096), None);

        vm.notify(3);
        vm.notify(3);
        assert_eq!((vm.notified(3), vm.notified(0)), (2, 0));
    }

    #[test]
    fn armed_failures_fail() {
        let vm = FakeVm::failing(1 << 20, fail::REGISTER_IOEVENT | fail::MEMORY_SLOT);
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_ioevent(&fd, 0x1000).unwrap();
        vm.arm();
        assert!(vm.register_ioevent(&fd, 0x2000).is_err());
        assert!(vm.set_memory_slot(1, None).is_err());
        vm.unregister_ioevent(&fd, 0x1000).unwrap();
    }
}
