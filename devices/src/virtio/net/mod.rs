//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue, the
//! MAC address, link status and MTU in config space, and an Ethernet
//! backend ([`Link`]): a stream socket (passt, see `frames`) or a tap
//! device. The worker thread owns the queues and the backend while the
//! device runs; a reset hands the backend back.
//!
//! Offloads: none. passt's socket carries bare Ethernet frames, no
//! virtio-net header, so a checksum left to the device or a TSO segment
//! would have to be finished in Ferry itself (a tap is opened without
//! IFF_VNET_HDR for the same reason). Instead the device offers
//! `VIRTIO_NET_F_MTU` at passt's 65,520: the guest sends and receives
//! frames up to that size (what TSO would buy on this path), and Linux
//! posts receive buffers big enough for them ("big packets"). A tap's
//! own MTU is offered instead, so the guest matches the host's side.

mod frames;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod link;
mod worker;

pub use frames::{BadFrameLength, Framing, MAX_FRAME};
pub use link::Link;
pub use worker::NET_HDR_LEN;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use self::worker::{Backend, NetQueue, NetWorker};
use super::{ActivateError, Activation, ConfineError, Spawner, VirtioDevice};
use crate::virtio::spec::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

/// virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// passt's default MTU: the largest 802.3 frame less its header, rounded
/// to 32 bits.
pub const MTU: u16 = 65_520;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

/// What the device did, for the log at exit and for tests.
#[derive(Debug, Default)]
pub struct NetStats {
    rx_frames: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
    backend_failures: AtomicU64,
}

impl NetStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    fn rx_frame(&self) {
        Self::bump(&self.rx_frames)
    }
    fn rx_dropped(&self) {
        Self::bump(&self.rx_dropped)
    }
    fn tx_frame(&self) {
        Self::bump(&self.tx_frames)
    }
    fn tx_dropped(&self) {
        Self::bump(&self.tx_dropped)
    }
    fn backend_failed(&self) {
        Self::bump(&self.backend_failures)
    }

    /// (received, receive drops, sent, send drops, backend failures).
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            get(&self.rx_frames),
            get(&self.rx_dropped),
            get(&self.tx_frames),
            get(&self.tx_dropped),
            get(&self.backend_failures),
        )
    }
}

/// The config space (virtio 1.2, 5.1.4): mac, status,
/// max_virtqueue_pairs, mtu.
fn config_bytes(mac: [u8; 6], link_up: bool, mtu: u16) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..6].copy_from_slice(&mac);
    let status = if link_up { VIRTIO_NET_S_LINK_UP } else { 0 };
    c[6..8].copy_from_slice(&status.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    c
}

/// What confines the network worker's thread (its seccomp role); run
/// once, on the thread that later starts the worker.
pub type ConfineNetwork = Box<dyn FnOnce() -> Result<(), ConfineError> + Send>;

enum State {
    /// Not running: the backend waits here for the next activation.
    Idle(Option<Backend>),
    Running {
        stop: EventFd,
        worker: JoinHandle<()>,
        /// Where the worker leaves the backend when it stops.
        returned: Arc<Mutex<Option<Backend>>>,
    },
}

pub struct VirtioNet {
    mac: [u8; 6],
    mtu: u16,
    /// Down for good once the backend fails (the worker clears it and
    /// raises a configuration interrupt, so the guest's driver sees the
    /// carrier go and stops queueing frames to nowhere).
    link_up: Arc<AtomicBool>,
    state: State,
    stats: Arc<NetStats>,
    spawner: Spawner,
}

impl VirtioNet {
    /// A network card with address `mac` whose frames go to and come
    /// from `link`; its worker runs confined by `confine`.
    pub fn new(mac: [u8; 6], link: Link, confine: Option<ConfineNetwork>) -> std::io::Result<Self> {
        let spawner = Spawner::start("net".into(), "network", move || match confine {
            Some(confine) => confine(),
            None => Ok(()),
        })?;
        Ok(VirtioNet {
            mac,
            mtu: link.mtu(),
            link_up: Arc::new(AtomicBool::new(true)),
            state: State::Idle(Some(Backend::new(link)?)),
            stats: Arc::default(),
            spawner,
        })
    }

    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    fn stop_worker(&mut self) {
        if !matches!(self.state, State::Running { .. }) {
            return;
        }
        if let State::Running {
            stop,
            worker,
            returned,
        } = std::mem::replace(&mut self.state, State::Idle(None))
        {
            let _ = stop.write(1);
            // The worker waits only in poll, which the stop event ends.
            let _ = worker.join();
            let backend = returned.lock().ok().and_then(|mut b| b.take());
            if backend.is_none() {
                log::error!("virtio-net: the worker panicked; the network is down");
            }
            self.state = State::Idle(backend);
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MTU
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = config_bytes(self.mac, self.link_up.load(Ordering::Relaxed), self.mtu);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = start
                .checked_add(i)
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn config_changes(&self) -> u8 {
        u8::from(!self.link_up.load(Ordering::Relaxed))
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.stop_worker();
        let mut rx = None;
        let mut tx = None;
        for q in activation.queues {
            let slot = match q.index {
                RX => &mut rx,
                TX => &mut tx,
                _ => continue,
            };
            *slot = Some(NetQueue {
                queue: q.queue,
                kick: q.kick,
                vector: q.vector,
            });
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::MissingQueue("receive and transmit"));
        };
        let backend = match &mut self.state {
            State::Idle(backend) => backend.take(),
            State::Running { .. } => None,
        };
        let Some(backend) = backend else {
            return Err(ActivateError::NoBackend);
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::StopEvent)?;
        let worker = NetWorker {
            rx,
            tx,
            backend,
            stop: stop.try_clone().map_err(ActivateError::CloneStop)?,
            mem: activation.mem,
            interrupt: activation.interrupt,
            bus_master: activation.bus_master,
            stats: self.stats.clone(),
            rx_starved: false,
            link_up: self.link_up.clone(),
            config_vector: activation.config_vector,
        };
        let returned = Arc::new(Mutex::new(None));
        let slot = returned.clone();
        let worker = self
            .spawner
            .spawn("net-worker".into(), move || {
                let backend = worker.run();
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(backend);
                }
            })
            .map_err(ActivateError::Spawn)?;
        self.state = State::Running {
            stop,
            worker,
            returned,
        };
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests;
