//! Main-loop events that end the VM: the exit event, the i8042 reset line
//! and SIGINT/SIGTERM/SIGHUP (taken through a signalfd); and SIGUSR1,
//! which asks each vCPU to print where it is (a guest that seems hung).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, VmExit};

const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// Asks for the vCPUs' registers on stderr.
pub const REPORT_SIGNAL: i32 = libc::SIGUSR1;

/// Blocks the stop signals and the report signal in the calling thread
/// (and every thread it starts afterwards) and returns a signalfd that
/// receives them.
pub fn take_stop_signals() -> io::Result<OwnedFd> {
    signalfd_for(&[
        STOP_SIGNALS[0],
        STOP_SIGNALS[1],
        STOP_SIGNALS[2],
        REPORT_SIGNAL,
    ])
}

/// How many reports were asked for; each vCPU prints its registers once
/// per request, when it is next kicked (within a second).
#[derive(Clone, Default)]
pub struct ReportRequests(Arc<AtomicU64>);

impl ReportRequests {
    fn ask(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// Whether a report was asked for since `seen`, which it updates.
    pub fn new_since(&self, seen: &mut u64) -> bool {
        let now = self.0.load(Ordering::Acquire);
        std::mem::replace(seen, now) != now
    }
}

/// Blocks `signals` in the calling thread (and the threads it starts
/// afterwards) and returns a non-blocking signalfd that receives them.
pub fn signalfd_for(signals: &[i32]) -> io::Result<OwnedFd> {
    // SAFETY: plain libc signal-set manipulation on local structs.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

pub struct Control {
    exit: Arc<VmExit>,
    reset: EventFd,
    signals: OwnedFd,
    reports: ReportRequests,
}

impl Control {
    pub fn new(
        exit: Arc<VmExit>,
        reset: EventFd,
        signals: OwnedFd,
        reports: ReportRequests,
    ) -> Self {
        Control {
            exit,
            reset,
            signals,
            reports,
        }
    }

    fn read_signal(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain integers; all zeroes is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads one siginfo into a local struct of that size.
        let n = unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        let whole = usize::try_from(n).is_ok_and(|n| n == size);
        whole.then(|| i32::try_from(info.ssi_signo).ok()).flatten()
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.exit.event().as_raw_fd(),
            self.reset.as_raw_fd(),
            self.signals.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch control event {fd}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.request(ExitReason::Reset);
        } else if fd == self.signals.as_raw_fd() {
            match self.read_signal() {
                Some(REPORT_SIGNAL) => self.reports.ask(),
                Some(sig) => self.exit.request(ExitReason::Signal(sig)),
                None => {}
            }
        } else if fd == self.exit.event().as_raw_fd() {
            // The main loop reads the reason after `run_with_timeout`.
            let _ = self.exit.event().read();
        }
    }
}
