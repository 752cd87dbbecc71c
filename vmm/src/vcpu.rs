//! vCPU threads: each runs `KVM_RUN` and dispatches port I/O and MMIO exits
//! to the buses.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use ferry_devices::vm_ops::GuestMemoryFault;
use ferry_devices::Bus;

use crate::control::ReportRequests;
use crate::exit::{ExitReason, VmExit};
use crate::sandbox::Sandbox;
use crate::watchdog::{is_stuck, Epoch, VcpuProgress};

/// Signal used to kick a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler: its only job is to make `KVM_RUN`
/// return `EINTR`.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<VmExit>,
    pub epoch: Epoch,
    pub progress: Arc<VcpuProgress>,
    /// The devices that show host memory to the guest, and repair it.
    pub fault_hooks: Arc<[Arc<dyn GuestMemoryFault>]>,
    /// SIGUSR1 asks for this vCPU's registers; `reports_seen` counts the
    /// requests already answered.
    pub reports: ReportRequests,
    pub reports_seen: u64,
    /// Since when KVM_RUN has failed with EFAULT with nothing repaired
    /// (reset by any other exit).
    pub efault_since: Option<std::time::Instant>,
    /// Confines the thread before it runs the guest.
    pub sandbox: Sandbox,
}

/// How long EFAULTs with nothing repaired are retried before the VM ends.
const EFAULT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

enum Step {
    Continue,
    Interrupted,
    Stop(ExitReason),
    InternalError,
}

impl Vcpu {
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        // Read now, before the thread is confined (used in error messages).
        host_has_hardware_virtualization();
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        if let Err(e) = self.sandbox.confine_vcpu() {
            self.exit.request(ExitReason::KvmError(format!(
                "vCPU {}: cannot confine the thread: {:#}",
                self.id,
                anyhow::Error::new(e)
            )));
            return;
        }
        loop {
            let step = self.step();
            let reason = match step {
                Step::Continue => continue,
                Step::Interrupted => {
                    self.sample_progress();
                    if self.exit.reason().is_some() {
                        return;
                    }
                    continue;
                }
                Step::Stop(reason) => reason,
                Step::InternalError => ExitReason::KvmError(self.describe_internal_error()),
            };
            self.exit.request(reason);
            return;
        }
    }

    fn step(&mut self) -> Step {
        let id = self.id;
        let result = self.fd.run();
        if result.is_ok() {
            self.efault_since = None;
        }
        match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.io_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.io_bus.write(u64::from(port), data) {
                    log::trace!("vcpu{id}: write to unclaimed port {port:#x}");
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio_bus.read(addr, data) {
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio_bus.write(addr, data) {
                    log::trace!("vcpu{id}: write to unclaimed MMIO {addr:#x}");
                }
                Step::Continue
            }
            Ok(VcpuExit::Shutdown) => Step::Stop(ExitReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => Step::Stop(ExitReason::Reset),
                KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(ExitReason::TripleFault),
                other => Step::Stop(ExitReason::KvmError(format!(
                    "vCPU {id}: unexpected KVM system event {other}"
                ))),
            },
            Ok(VcpuExit::Hlt) => Step::Stop(ExitReason::Stalled(format!(
                "vCPU {id} halted outside the in-kernel irqchip"
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Stop(ExitReason::KvmError(format!(
                "vCPU {id}: KVM could not enter the guest on host CPU {cpu} \
                 (hardware entry failure reason {reason:#x})"
            ))),
            Ok(VcpuExit::InternalError) => Step::InternalError,
            Ok(VcpuExit::MemoryFault { gpa, .. }) => self.guest_memory_fault(Some(gpa)),
            Ok(other) => Step::Stop(ExitReason::KvmError(format!(
                "vCPU {id}: unexpected KVM exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Interrupted,
            Err(e) if e.errno() == libc::EFAULT => self.guest_memory_fault(None),
            Err(e) => Step::Stop(ExitReason::KvmError(format!(
                "vCPU {id}: KVM_RUN failed: {e}"
            ))),
        }
    }

    /// KVM could not reach the host page behind a guest page (at `gpa`,
    /// when KVM says where). The devices that show host memory repair
    /// what is theirs (a DAX window puts zero pages behind a truncated
    /// file or an unmapped range) and the guest goes on. Another vCPU (or a
    /// host process growing the file again) may have made it reachable
    /// already, so faults with nothing repaired are retried for
    /// [`EFAULT_PATIENCE`] before giving up: a host that truncates and
    /// regrows a mapped file in a loop made two in a row common (found by
    /// the DAX stress test; one retry ended the VM with EFAULT).
    fn guest_memory_fault(&mut self, gpa: Option<u64>) -> Step {
        let repaired: u64 = self.fault_hooks.iter().map(|h| h.on_fault(gpa)).sum();
        let at = gpa.map(|g| format!(" at {g:#x}")).unwrap_or_default();
        if repaired > 0 {
            return Step::Continue;
        }
        let since = *self
            .efault_since
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < EFAULT_PATIENCE {
            std::thread::sleep(std::time::Duration::from_millis(1));
            return Step::Continue;
        }
        Step::Stop(ExitReason::KvmError(format!(
            "vCPU {}: KVM_RUN failed: the guest touched memory{at} the host cannot provide \
             (EFAULT)",
            self.id
        )))
    }

    fn sample_progress(&mut self) {
        let (mp, regs) = (self.fd.get_mp_state(), self.fd.get_regs());
        let stuck = match (&mp, &regs) {
            (Ok(mp), Ok(regs)) => is_stuck(mp.mp_state, regs.rflags),
            _ => false,
        };
        if self.reports.new_since(&mut self.reports_seen) {
            match (&mp, &regs) {
                // One line per vCPU: where a guest that seems hung is.
                (Ok(mp), Ok(r)) => log::warn!(
                    "vCPU {}: rip={:#x} rsp={:#x} rbp={:#x} rflags={:#x} mp_state={}",
                    self.id,
                    r.rip,
                    r.rsp,
                    r.rbp,
                    r.rflags,
                    mp.mp_state
                ),
                _ => log::warn!("vCPU {}: registers unreadable", self.id),
            }
        }
        self.epoch.record(&self.progress, stuck);
    }

    fn describe_internal_error(&mut self) -> String {
        // SAFETY: KVM filled the `internal` member for this exit reason.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let what = match suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "it could not emulate an instruction",
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => {
                "an exception hit during exception delivery"
            }
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "an event could not be delivered",
            _ => "internal error",
        };
        let rip = self
            .fd
            .get_regs()
            .map(|r| format!("{:#x}", r.rip))
            .unwrap_or_else(|_| "unknown".into());
        let mut msg = format!(
            "vCPU {}: KVM internal error {suberror} ({what}) at RIP {rip}",
            self.id
        );
        if !host_has_hardware_virtualization() {
            msg.push_str(
                "; this host's CPU shows no vmx/svm, so /dev/kvm is a software KVM that cannot run \
                 a stock Linux guest: run Ferry inside a KVM-capable (nested) host, as the test \
                 harness does",
            );
        }
        msg
    }
}

/// Whether `/proc/cpuinfo` lists Intel VT-x or AMD-V. Read once: a
/// confined vCPU may not open files.
pub fn host_has_hardware_virtualization() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| {
                s.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(false)
    })
}
