//! x86_64 guest setup for Ferry.
//!
//! Everything here writes guest memory or fills KVM structures; nothing here
//! owns a KVM object. `vmm` calls these in order: [`layout`] decides where
//! things go, [`boot`] writes the zero page / PVH start info, [`mptable`] the
//! MP table, and [`regs`], [`cpuid`], [`msr`] and [`lapic`] prepare each vCPU.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

/// Errors from guest setup. Each names the structure that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory too small or not mapped for the {0}")]
    GuestMemory(&'static str),
    #[error("the MP table for {0} vCPUs does not fit below 640 KiB")]
    MpTableTooLarge(u8),
    #[error("KVM ioctl failed while setting up the vCPU {what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("the KVM MSR list could not be built")]
    MsrList,
    #[error("KVM rejected boot MSR {0:#x}")]
    MsrRejected(u32),
}

pub type Result<T> = std::result::Result<T, Error>;
