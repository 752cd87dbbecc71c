//! virtio-fs (device type 26): a FUSE server (fuse-backend-rs
//! `PassthroughFs`) inside Ferry, one worker thread per queue. Queue 0 is
//! hiprio (FORGET, INTERRUPT), queues 1..=n carry requests. With a DAX
//! window the guest maps host files straight into its memory.

mod acl;
mod dax;
mod file_handles;
mod filter;
mod id_map;
mod init_reply;
mod policy;
mod privileges;
mod stats;
mod worker;

pub use dax::{DaxWindow, DAX_WINDOW_MIN};
pub use id_map::{IdMap, IdMapping, IdRuleError};
pub use stats::FsStats;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use crate::vm_ops::GuestMemoryFault;

use super::{
    ActivateError, Activation, GuestMemoryShared, SharedMemoryRegion, Spawner, VirtioDevice,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

pub use crate::virtio::spec::VIRTIO_ID_FS;
pub const TAG_MAX_LEN: usize = 36;

/// `struct virtio_fs_config` (virtio 1.2, 5.11.4): the device's
/// configuration space.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct VirtioFsConfig {
    /// The tag, NUL-padded (not terminated when 36 bytes long).
    tag: [u8; TAG_MAX_LEN],
    num_request_queues: u32,
}

impl Default for VirtioFsConfig {
    fn default() -> Self {
        VirtioFsConfig {
            tag: [0; TAG_MAX_LEN],
            num_request_queues: 0,
        }
    }
}

// SAFETY: a byte array and a u32 with no padding (40 bytes, checked
// below); every bit pattern is valid.
unsafe impl ByteValued for VirtioFsConfig {}
const _: () = assert!(std::mem::size_of::<VirtioFsConfig>() == 40);
pub const QUEUE_SIZE: u16 = 1024;

/// How much the guest may cache, as with virtiofsd's `--cache`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Nothing cached: every access asks Ferry; host changes show at once.
    Never,
    /// Attributes and names cached for a second; file data revalidated on open.
    #[default]
    Auto,
    /// The guest owns the cache: fastest, host changes may go unseen.
    Always,
}

/// One shared directory, as given with `--fs`.
#[derive(Clone, Debug, Default)]
pub struct FsShare {
    pub tag: String,
    pub path: PathBuf,
    pub request_queues: u16,
    pub readonly: bool,
    pub cache: CacheMode,
    /// The DAX window's size, if the share has one.
    pub dax_window: Option<u64>,
    /// Device nodes and setuid/setgid files allowed on every mount of the
    /// share (`dev-suid=on`), not only where the host mount neuters them.
    pub dev_suid: bool,
    /// Guest ids to host ids and back.
    pub ids: IdMapping,
    /// POSIX ACLs offered to the guest where the host file system has
    /// them (`acl=on`, the CLI's default; off in `Default`).
    pub posix_acl: bool,
}

/// virtio-fs shared memory region ids: the DAX cache.
const SHMID_CACHE: u8 = 0;

type ShareFs = policy::SharePolicy<PassthroughFs<()>>;
pub(crate) type FsServer = Server<Arc<ShareFs>>;

/// Confines the calling thread as the file server of a share (the VMM's
/// sandbox). The device runs it once, on the thread that later starts the
/// share's queue workers, before the guest can send a request.
pub type ConfineFileServer = Arc<dyn Fn(&FsShare) -> Result<(), ConfineError> + Send + Sync>;

pub use crate::virtio::ConfineError;

pub struct VirtioFs {
    share: FsShare,
    dax: Option<Arc<DaxWindow>>,
    stats: Arc<FsStats>,
    /// One server for the device's life: it is built (and the share's root
    /// opened) before the sandbox closes. A reset drops what the old
    /// driver held (see [`VirtioFs::forget_driver`]).
    server: Arc<FsServer>,
    fs: Arc<ShareFs>,
    spawner: Spawner,
    run: Run,
    /// Where the workers' view of guest memory shows the DAX window.
    window_in_view: Option<u64>,
}

/// Whether the device serves a driver.
enum Run {
    /// Before the first DRIVER_OK and after each reset: no worker runs.
    Inactive,
    /// One worker per queue the driver set up; `stop` ends them all.
    Active {
        stop: EventFd,
        workers: Vec<JoinHandle<()>>,
    },
}

impl VirtioFs {
    /// Sets up the device: opens the share, reserves the DAX window (if
    /// any) and starts the thread that will start the queue workers,
    /// confined by `confine`.
    pub fn new(share: FsShare, confine: Option<ConfineFileServer>) -> std::io::Result<Self> {
        let queues = 1 + usize::from(share.request_queues);
        let dax = match share.dax_window {
            Some(size) => Some(Arc::new(DaxWindow::new(size)?)),
            None => None,
        };
        let fs = Arc::new(share_fs(&share)?);
        let server = Arc::new(Server::new(fs.clone()));
        let confined_share = share.clone();
        let spawner =
            Spawner::start(
                format!("fs-{}", share.tag),
                "file server",
                move || match confine {
                    Some(confine) => confine(&confined_share),
                    None => Ok(()),
                },
            )?;
        Ok(VirtioFs {
            share,
            dax,
            stats: Arc::new(FsStats::new(queues)),
            server,
            fs,
            spawner,
            run: Run::Inactive,
            window_in_view: None,
        })
    }

    /// Tells the queue workers to stop and waits for them; the device is
    /// then inactive.
    fn stop_workers(&mut self) {
        if let Run::Active { stop, workers } = std::mem::replace(&mut self.run, Run::Inactive) {
            let _ = stop.write(1);
            for w in workers {
                let _ = w.join();
            }
        }
    }

    /// How many queue workers run (0 while inactive).
    pub fn running_workers(&self) -> usize {
        match &self.run {
            Run::Inactive => 0,
            Run::Active { workers, .. } => workers.len(),
        }
    }

    /// The DAX window, for repairs after a host truncation.
    pub fn dax_window(&self) -> Option<Arc<DaxWindow>> {
        self.dax.clone()
    }

    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    /// Starts one worker per active queue, all stopped by `stop`.
    fn start_workers(
        &mut self,
        stop: &EventFd,
        activation: Activation,
        workers: &mut Vec<JoinHandle<()>>,
    ) -> Result<(), ActivateError> {
        for q in activation.queues {
            let worker = worker::QueueWorker {
                tag: self.share.tag.clone(),
                index: q.index,
                queue: q.queue,
                kick: q.kick,
                vector: q.vector,
                stop: stop.try_clone().map_err(ActivateError::CloneStop)?,
                mem: activation.mem.clone(),
                interrupt: activation.interrupt.clone(),
                bus_master: activation.bus_master.clone(),
                unsignalled: false,
                server: self.server.clone(),
                fs: self.fs.clone(),
                stats: self.stats.clone(),
                dax: self.dax.clone().map(dax::DaxRequests),
            };
            let handle = self
                .spawner
                .spawn(format!("fs-{}-q{}", self.share.tag, q.index), move || {
                    worker.run()
                })
                .map_err(ActivateError::Spawn)?;
            workers.push(handle);
        }
        Ok(())
    }

    /// Drops every inode and open file the old driver held (closing their
    /// host descriptors) and reopens the share's root, as a fresh server
    /// would start: a reset driver knows none of them, and a guest that
    /// resets in a loop would otherwise pile up host descriptors. Runs on
    /// a thread confined as the file server (reopening the root is file
    /// server work, which a vCPU's sandbox does not allow).
    fn forget_driver(&mut self) {
        let fs = self.fs.clone();
        let done = self
            .spawner
            .spawn(format!("fs-{}-reset", self.share.tag), move || {
                fs.forget_guest()
            })
            .map(|h| h.join());
        if !matches!(done, Ok(Ok(()))) {
            log::warn!(
                "virtio-fs '{}': could not drop the old driver's inodes and files",
                self.share.tag
            );
        }
    }
}

fn share_fs(share: &FsShare) -> std::io::Result<ShareFs> {
    let (timeout, policy) = match share.cache {
        CacheMode::Never => (Duration::ZERO, CachePolicy::Never),
        CacheMode::Auto => (Duration::from_secs(1), CachePolicy::Auto),
        CacheMode::Always => (Duration::from_secs(86400), CachePolicy::Always),
    };
    let inode_file_handles = file_handles::usable(&share.path);
    log::info!(
        "virtio-fs '{}': inodes kept as {}",
        share.tag,
        if inode_file_handles {
            "file handles"
        } else {
            "open descriptors (no file handles here: they need CAP_DAC_READ_SEARCH and a file system that exports them)"
        }
    );
    let cfg = Config {
        root_dir: share.path.to_string_lossy().into_owned(),
        do_import: true,
        inode_file_handles,
        xattr: true,
        // The guest kernel asks for setuid/setgid to be cleared where a
        // local file system would (a write or truncation by a process
        // without CAP_FSETID): the server writes without CAP_FSETID then.
        killpriv_v2: true,
        cache_policy: policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        ..Default::default()
    };
    let fs = PassthroughFs::<()>::new(cfg)?;
    fs.import()?;
    let privileges = privileges::Privileges::new(&share.tag, share.dev_suid);
    let posix_acl = share.posix_acl && acl::host_supports(&share.path);
    if share.posix_acl && !posix_acl {
        log::info!(
            "virtio-fs '{}': no POSIX ACLs: the host file system does not store them",
            share.tag
        );
    }
    Ok(policy::SharePolicy::new(
        fs,
        share.readonly,
        privileges,
        share.ids.clone(),
        posix_acl,
    ))
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 1 + usize::from(self.share.request_queues)]
    }

    fn shared_memory(&self) -> Option<SharedMemoryRegion> {
        self.dax.as_ref().map(|w| SharedMemoryRegion {
            id: SHMID_CACHE,
            host_addr: w.host_addr(),
            size: w.size(),
            readonly: self.share.readonly,
        })
    }

    fn shared_memory_shown(&mut self, view: &GuestMemoryShared, addr: Option<u64>) {
        let Some(w) = &self.dax else {
            return;
        };
        // The workers' view first, then the window's own record: a request
        // the window's record lets through must find the pages in the view.
        match dax::view::show_window(view, w, self.window_in_view, addr) {
            Ok(()) => self.window_in_view = addr,
            Err(e) => log::warn!(
                "virtio-fs '{}': the DAX window in the queues' view of memory: {e}",
                self.share.tag
            ),
        }
        w.set_guest_addr(addr);
    }

    fn memory_fault_hook(&self) -> Option<Arc<dyn GuestMemoryFault>> {
        let window: Arc<dyn GuestMemoryFault> = self.dax.clone()?;
        Some(window)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = VirtioFsConfig {
            tag: [0; TAG_MAX_LEN],
            num_request_queues: u32::from(self.share.request_queues).to_le(),
        };
        // The tag was checked to fit when the share was parsed.
        let tag = self.share.tag.as_bytes();
        let n = tag.len().min(TAG_MAX_LEN);
        config.tag[..n].copy_from_slice(&tag[..n]);
        let bytes = config.as_slice();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| bytes.get(at)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        // A driver may use fewer request queues than offered (Linux: no
        // more than it has CPUs); it needs at least one.
        if !activation.queues.iter().any(|q| q.index >= 1) {
            return Err(ActivateError::NoRequestQueue);
        }
        self.reset();
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::StopEvent)?;
        log::info!(
            "virtio-fs '{}': active, {} of {} request queue(s) in use, features {:#x}",
            self.share.tag,
            activation.queues.iter().filter(|q| q.index >= 1).count(),
            self.share.request_queues,
            activation.features
        );
        // The stop event is kept before any worker starts, so a failure
        // part-way (no descriptors or threads left) can stop and join the
        // workers already running: a later reset would otherwise join
        // workers never told to stop, and hang the vCPU that asked.
        let mut workers = Vec::new();
        let started = self.start_workers(&stop, activation, &mut workers);
        self.run = Run::Active { stop, workers };
        if let Err(e) = started {
            self.reset();
            return Err(e);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
        self.forget_driver();
        // A new driver starts with an empty window; drop the old mappings
        // (and the files they hold open).
        if let Some(w) = &self.dax {
            if let Err(e) = w.clear() {
                log::warn!(
                    "virtio-fs '{}': cannot empty the DAX window: {e}",
                    self.share.tag
                );
            }
        }
    }
}

/// How long a dropped device waits for its workers to stop.
const DROP_PATIENCE: Duration = Duration::from_secs(2);

/// A device dropped while active (a VM torn down without a reset, a
/// test) stops and joins its workers, so none outlives it. Unlike a
/// reset, the wait is bounded: a worker stuck in a host call (reading a
/// FIFO nobody writes) must not hold up Ferry's exit; it is left behind
/// with a warning. The window unmaps itself when its last holder goes.
impl Drop for VirtioFs {
    fn drop(&mut self) {
        let Run::Active { stop, workers } = std::mem::replace(&mut self.run, Run::Inactive) else {
            return;
        };
        let _ = stop.write(1);
        let deadline = std::time::Instant::now() + DROP_PATIENCE;
        for w in workers {
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if w.is_finished() {
                let _ = w.join();
            } else {
                log::warn!(
                    "virtio-fs '{}': a queue worker did not stop within {DROP_PATIENCE:?}; \
                     left behind",
                    self.share.tag
                );
            }
        }
    }
}

#[cfg(test)]
mod credential_tests;
#[cfg(test)]
mod escape_tests;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
#[cfg(test)]
mod tests;
