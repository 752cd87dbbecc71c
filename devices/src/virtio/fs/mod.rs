//! virtio-fs (device type 26): a FUSE server (fuse-backend-rs
//! `PassthroughFs`) inside Ferry, one worker thread per queue. Queue 0 is
//! hiprio (FORGET, INTERRUPT), queues 1..=n carry requests.

mod filter;
mod stats;
mod worker;

pub use stats::FsStats;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, Activation, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
};

pub const VIRTIO_ID_FS: u32 = 26;
pub const TAG_MAX_LEN: usize = 36;
pub const QUEUE_SIZE: u16 = 1024;

/// How much the guest may cache, as with virtiofsd's `--cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Nothing cached: every access asks Ferry; host changes show at once.
    Never,
    /// Attributes and names cached for a second; file data revalidated on open.
    Auto,
    /// The guest owns the cache: fastest, host changes may go unseen.
    Always,
}

/// One shared directory, as given with `--fs`.
#[derive(Clone, Debug)]
pub struct FsShare {
    pub tag: String,
    pub path: PathBuf,
    pub request_queues: u16,
    pub readonly: bool,
    pub cache: CacheMode,
}

pub(crate) type FsServer = Server<Arc<PassthroughFs<()>>>;

pub struct VirtioFs {
    share: FsShare,
    stats: Arc<FsStats>,
    stop: Option<EventFd>,
    workers: Vec<JoinHandle<()>>,
}

impl VirtioFs {
    pub fn new(share: FsShare) -> Self {
        let queues = 1 + usize::from(share.request_queues);
        VirtioFs {
            share,
            stats: Arc::new(FsStats::new(queues)),
            stop: None,
            workers: Vec::new(),
        }
    }

    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    fn server(&self) -> std::io::Result<FsServer> {
        let (timeout, policy) = match self.share.cache {
            CacheMode::Never => (Duration::ZERO, CachePolicy::Never),
            CacheMode::Auto => (Duration::from_secs(1), CachePolicy::Auto),
            CacheMode::Always => (Duration::from_secs(86400), CachePolicy::Always),
        };
        let cfg = Config {
            root_dir: self.share.path.to_string_lossy().into_owned(),
            do_import: true,
            xattr: true,
            cache_policy: policy,
            attr_timeout: timeout,
            entry_timeout: timeout,
            ..Default::default()
        };
        let fs = PassthroughFs::<()>::new(cfg)?;
        fs.import()?;
        Ok(Server::new(Arc::new(fs)))
    }
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

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config = [0u8; TAG_MAX_LEN + 4];
        config[..self.share.tag.len()].copy_from_slice(self.share.tag.as_bytes());
        config[TAG_MAX_LEN..].copy_from_slice(&u32::from(self.share.request_queues).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let expected = 1 + usize::from(self.share.request_queues);
        if let Some(missing) =
            (0..expected).find(|i| !activation.queues.iter().any(|q| q.index == *i))
        {
            return Err(ActivateError::QueueNotReady(missing));
        }
        self.reset();
        let server = Arc::new(self.server().map_err(|e| {
            ActivateError::Start(format!("share {}: {e}", self.share.path.display()))
        })?);
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| ActivateError::Start(e.to_string()))?;
        log::info!(
            "virtio-fs '{}': active, {} request queue(s), features {:#x}",
            self.share.tag,
            self.share.request_queues,
            activation.features
        );
        for q in activation.queues {
            let worker = worker::QueueWorker {
                tag: self.share.tag.clone(),
                index: q.index,
                queue: q.queue,
                kick: q.kick,
                vector: q.vector,
                stop: stop
                    .try_clone()
                    .map_err(|e| ActivateError::Start(e.to_string()))?,
                mem: activation.mem.clone(),
                interrupt: activation.interrupt.clone(),
                server: server.clone(),
                readonly: self.share.readonly,
                stats: self.stats.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("fs-{}-q{}", self.share.tag, q.index))
                .spawn(move || worker.run())
                .map_err(|e| ActivateError::Start(e.to_string()))?;
            self.workers.push(handle);
        }
        self.stop = Some(stop);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.write(1);
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests;
