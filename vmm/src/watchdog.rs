//! Notices a guest that can no longer make progress: every vCPU halted with
//! interrupts disabled (or never started) for several checks in a row, the
//! state an early-boot failure or a `cli; hlt` leaves behind. With the
//! in-kernel irqchip such a guest would otherwise sit there forever.
//!
//! The main loop calls [`Watchdog::tick`] about once a second; it kicks each
//! vCPU thread with a signal, and the interrupted `KVM_RUN` samples its own
//! state (`record`), since only the vCPU's thread may query it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED};

const RFLAGS_IF: u64 = 1 << 9;

/// One vCPU's latest sample.
#[derive(Default)]
pub struct VcpuProgress {
    epoch: AtomicU64,
    stuck: AtomicBool,
}

/// Whether a vCPU in this state can ever run again without outside help.
pub fn is_stuck(mp_state: u32, rflags: u64) -> bool {
    match mp_state {
        KVM_MP_STATE_HALTED => rflags & RFLAGS_IF == 0,
        KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
        _ => false,
    }
}

/// The current sampling round, shared with the vCPU threads.
#[derive(Default, Clone)]
pub struct Epoch(Arc<AtomicU64>);

impl Epoch {
    /// Called on the vCPU thread after a kick.
    pub fn record(&self, progress: &VcpuProgress, stuck: bool) {
        progress.stuck.store(stuck, Ordering::Relaxed);
        progress
            .epoch
            .store(self.0.load(Ordering::Acquire), Ordering::Release);
    }
}

pub struct Watchdog {
    epoch: Epoch,
    vcpus: Vec<Arc<VcpuProgress>>,
    strikes: u32,
    limit: u32,
}

impl Watchdog {
    /// `limit`: consecutive all-stuck rounds before the guest is declared dead.
    pub fn new(epoch: Epoch, vcpus: Vec<Arc<VcpuProgress>>, limit: u32) -> Self {
        Watchdog {
            epoch,
            vcpus,
            strikes: 0,
            limit,
        }
    }

    /// Judges the last round and opens the next one. Returns true once the
    /// guest has been stuck for `limit` rounds. The caller then kicks the vCPUs.
    pub fn tick(&mut self) -> bool {
        let round = self.epoch.0.load(Ordering::Acquire);
        let all_stuck = round > 0
            && self.vcpus.iter().all(|v| {
                v.epoch.load(Ordering::Acquire) == round && v.stuck.load(Ordering::Relaxed)
            });
        self.strikes = if all_stuck { self.strikes + 1 } else { 0 };
        self.epoch.0.store(round + 1, Ordering::Release);
        self.limit > 0 && self.strikes >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_states() {
        assert!(is_stuck(KVM_MP_STATE_HALTED, 0x2));
        assert!(!is_stuck(KVM_MP_STATE_HALTED, 0x202));
        assert!(is_stuck(KVM_MP_STATE_UNINITIALIZED, 0x202));
        assert!(!is_stuck(kvm_bindings::KVM_MP_STATE_RUNNABLE, 0x2));
    }

    #[test]
    fn needs_every_vcpu_stuck_for_consecutive_rounds() {
        let epoch = Epoch::default();
        let a = Arc::new(VcpuProgress::default());
        let b = Arc::new(VcpuProgress::default());
        let mut wd = Watchdog::new(epoch.clone(), vec![a.clone(), b.clone()], 2);
        assert!(!wd.tick()); // round 0 is never judged
        epoch.record(&a, true);
        epoch.record(&b, true);
        assert!(!wd.tick()); // one strike
        epoch.record(&a, true);
        epoch.record(&b, false);
        assert!(!wd.tick()); // b ran: strikes reset
        epoch.record(&a, true);
        epoch.record(&b, true);
        assert!(!wd.tick());
        epoch.record(&a, true);
        assert!(!wd.tick(), "b missed the round: not judged stuck");
        epoch.record(&a, true);
        epoch.record(&b, true);
        assert!(!wd.tick());
        epoch.record(&a, true);
        epoch.record(&b, true);
        assert!(wd.tick());
    }

    #[test]
    fn zero_limit_never_fires() {
        let epoch = Epoch::default();
        let a = Arc::new(VcpuProgress::default());
        let mut wd = Watchdog::new(epoch.clone(), vec![a.clone()], 0);
        for _ in 0..5 {
            epoch.record(&a, true);
            assert!(!wd.tick());
        }
    }
}
