//! Why the VM stopped, and the one place that records it.

use std::sync::Mutex;

use ferry_devices::legacy::GuestExit;
use vmm_sys_util::eventfd::EventFd;

/// What ended the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote its status to the exit port.
    GuestStatus(u8),
    /// The guest reset the CPU through the i8042 (`reboot`).
    Reset,
    /// A triple fault: KVM reports a shutdown (`reboot=t`, or a crash).
    TripleFault,
    /// No vCPU can make progress.
    Stalled(String),
    /// KVM could not run the guest.
    KvmError(String),
    /// Ferry was told to stop by a signal.
    Signal(i32),
    /// `ferry run --timeout` ran out.
    Timeout(std::time::Duration),
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestStatus(s) => i32::from(*s),
            ExitReason::Reset | ExitReason::TripleFault => 0,
            ExitReason::Stalled(_) | ExitReason::KvmError(_) => 1,
            ExitReason::Signal(sig) => 128 + sig,
            // As GNU timeout(1).
            ExitReason::Timeout(_) => 124,
        }
    }
}

/// Shared by the vCPUs, devices and main loop: the first reason wins and
/// wakes the main loop.
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl VmExit {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmExit {
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            log::debug!("VM exit requested: {reason:?}");
            *slot = Some(reason);
            // A full eventfd counter still wakes the loop, so a failed write
            // can be ignored.
            let _ = self.event.write(1);
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl GuestExit for VmExit {
    fn guest_exit(&self, status: u8) {
        self.request(ExitReason::GuestStatus(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let exit = VmExit::new().unwrap();
        assert_eq!(exit.reason(), None);
        exit.guest_exit(3);
        exit.request(ExitReason::Reset);
        assert_eq!(exit.reason(), Some(ExitReason::GuestStatus(3)));
        assert_eq!(exit.event().read().unwrap(), 1);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::GuestStatus(42).exit_code(), 42);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault.exit_code(), 0);
        assert_eq!(ExitReason::Stalled(String::new()).exit_code(), 1);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        let timeout = ExitReason::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(timeout.exit_code(), 124);
    }
}
