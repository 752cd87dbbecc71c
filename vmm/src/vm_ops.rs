//! `VmOps` for devices, backed by the KVM VM: ioeventfds, irqfds, memory
//! slots and the GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so the
//! table keeps the irqchip routes for legacy IRQs (the UART's) beside the
//! MSI routes.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MEM_READONLY,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use ferry_devices::vm_ops::{GuestMapping, MsiMessage, VmOps};

const IOAPIC_PINS: u32 = 24;

fn to_io(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

/// KVM's default routes: GSI 0-15 to both PICs and the IOAPIC, 16-23 to
/// the IOAPIC.
fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    routes
}

struct Routes {
    legacy: Vec<kvm_irq_routing_entry>,
    msi: Vec<(u32, MsiMessage)>,
    next_gsi: u32,
}

pub struct KvmVmOps {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
    /// The next free memory slot number, and the device slots KVM holds.
    slots: Mutex<(u32, HashSet<u32>)>,
}

impl KvmVmOps {
    /// `first_free_slot`: the memory slots below it hold guest RAM.
    pub fn new(vm: Arc<VmFd>, first_free_slot: u32) -> Self {
        KvmVmOps {
            vm,
            slots: Mutex::new((first_free_slot, HashSet::new())),
            routes: Mutex::new(Routes {
                legacy: legacy_routes(),
                msi: Vec::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    fn apply(&self, routes: &Routes) -> io::Result<()> {
        let mut entries = routes.legacy.clone();
        for (gsi, msg) in &routes.msi {
            entries.push(kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                u: kvm_irq_routing_entry__bindgen_ty_1 {
                    msi: kvm_irq_routing_msi {
                        address_lo: (msg.addr & 0xffff_ffff) as u32,
                        address_hi: (msg.addr >> 32) as u32,
                        data: msg.data,
                        ..Default::default()
                    },
                },
                ..Default::default()
            });
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm.set_gsi_routing(&table).map_err(to_io)
    }

    fn kvm_set_slot(&self, slot: u32, mapping: Option<GuestMapping>) -> io::Result<()> {
        let region = match mapping {
            Some(m) => kvm_userspace_memory_region {
                slot,
                flags: if m.readonly { KVM_MEM_READONLY } else { 0 },
                guest_phys_addr: m.guest_addr,
                memory_size: m.size,
                userspace_addr: m.host_addr,
            },
            // Size 0 deletes the slot.
            None => kvm_userspace_memory_region {
                slot,
                ..Default::default()
            },
        };
        // SAFETY: devices hand over mappings they own for the VM's whole
        // life (a DAX window lives as long as its device); KVM checks that
        // slots do not overlap.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(to_io)
    }
}

impl VmOps for KvmVmOps {
    fn register_ioevent(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(to_io)
    }

    fn unregister_ioevent(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        self.vm
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(to_io)
    }

    fn add_msi_vector(&self, irqfd: &EventFd) -> io::Result<u32> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let gsi = routes.next_gsi;
        self.vm.register_irqfd(irqfd, gsi).map_err(to_io)?;
        routes.next_gsi += 1;
        Ok(gsi)
    }

    fn route_msi(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match routes.msi.iter_mut().find(|(g, _)| *g == gsi) {
            Some(entry) => entry.1 = msg,
            None => routes.msi.push((gsi, msg)),
        }
        self.apply(&routes)
    }

    fn new_memory_slot(&self) -> u32 {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.0 += 1;
        slots.0 - 1
    }

    fn set_memory_slot(&self, slot: u32, mapping: Option<GuestMapping>) -> io::Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // KVM cannot move a slot in place (and refuses to delete an empty
        // one): delete it first if it is there.
        if slots.1.contains(&slot) {
            self.kvm_set_slot(slot, None)?;
            slots.1.remove(&slot);
        }
        if let Some(m) = mapping {
            self.kvm_set_slot(slot, Some(m))?;
            slots.1.insert(slot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_routes_match_kvm_defaults() {
        let r = legacy_routes();
        assert_eq!(r.len(), 16 * 2 + 8);
        // SAFETY: reading the union member these entries were built with.
        let uart: Vec<_> = r
            .iter()
            .filter(|e| e.gsi == 4)
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert_eq!(
            uart,
            vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
    }
}
