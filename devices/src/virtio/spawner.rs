//! The thread that starts a device's queue workers.
//!
//! Queue workers start when the guest activates the device, on a vCPU
//! thread. A thread starts with its parent's seccomp filters and Landlock
//! domain, and can only narrow them, so a worker spawned by a vCPU would
//! carry the vCPU's sandbox, not its own. Instead each device has this one
//! thread, started (and confined in the device's role: a share's file
//! server, the network) while Ferry sets up; the vCPU asks it to start the
//! workers, which then inherit exactly that sandbox.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Why the sandbox could not confine a device's threads; the VMM's own
/// error, boxed.
pub type ConfineError = Box<dyn std::error::Error + Send + Sync>;

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread could not confine itself, so no worker may start.
/// (The cause is the `source()`, printed by the error chain.)
#[derive(Debug, thiserror::Error)]
#[error("cannot confine the {role}")]
pub struct ConfineFailed {
    role: &'static str,
    #[source]
    source: ConfineError,
}

struct Order {
    name: String,
    job: Job,
    reply: mpsc::SyncSender<io::Result<JoinHandle<()>>>,
}

pub struct Spawner {
    orders: Option<mpsc::Sender<Order>>,
    thread: Option<JoinHandle<()>>,
    /// Tests: how many more threads may start before `spawn` fails, as it
    /// does when the host is out of threads or memory.
    #[cfg(test)]
    pub spawns_left: Option<usize>,
}

impl Spawner {
    /// Starts the spawner thread `name`, which runs `confine` first; fails
    /// (naming `role`) if `confine` does.
    pub fn start(
        name: String,
        role: &'static str,
        confine: impl FnOnce() -> Result<(), ConfineError> + Send + 'static,
    ) -> io::Result<Spawner> {
        let (orders, inbox) = mpsc::channel::<Order>();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let confined = confine();
            let ok = confined.is_ok();
            let _ = ready_tx.send(confined);
            if !ok {
                return;
            }
            for order in inbox {
                let started = std::thread::Builder::new()
                    .name(order.name)
                    .spawn(order.job);
                let _ = order.reply.send(started);
            }
        })?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Spawner {
                orders: Some(orders),
                thread: Some(thread),
                #[cfg(test)]
                spawns_left: None,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(io::Error::other(ConfineFailed { role, source: e }))
            }
            Err(_) => Err(io::Error::other("the worker spawner thread died")),
        }
    }

    /// Starts `job` on a new thread `name`, a child of the spawner.
    pub fn spawn(
        &mut self,
        name: String,
        job: impl FnOnce() + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        #[cfg(test)]
        if let Some(left) = self.spawns_left.as_mut() {
            if *left == 0 {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            *left -= 1;
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || io::Error::other("the worker spawner thread is gone");
        self.orders
            .as_ref()
            .ok_or_else(gone)?
            .send(Order {
                name,
                job: Box::new(job),
                reply,
            })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing the channel ends the spawner's loop.
        self.orders.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn jobs_run_on_threads_the_spawner_started() {
        let mut s = Spawner::start("spawner-test".into(), "file server", || Ok(())).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let h = s
            .spawn("job-test".into(), move || {
                assert_eq!(std::thread::current().name(), Some("job-test"));
                r.store(true, Ordering::SeqCst);
            })
            .unwrap();
        h.join().unwrap();
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_failed_confinement_fails_the_start() {
        let e = Spawner::start("spawner-fail".into(), "file server", || Err("no".into()))
            .err()
            .expect("must fail");
        assert_eq!(e.to_string(), "cannot confine the file server");
        // The cause comes once, as the error's source.
        let cause = std::error::Error::source(&e).map(|c| c.to_string());
        assert_eq!(cause.as_deref(), Some("no"));
    }
}
