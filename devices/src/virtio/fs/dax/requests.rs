//! The window as fuse-backend-rs's `PassthroughFs` drives it.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::pin::PINNED;
use super::DaxWindow;

pub(in crate::virtio::fs) struct DaxRequests(pub Arc<DaxWindow>);

impl DaxRequests {
    /// A SETUPMAPPING or REMOVEMAPPING whose own buffers lie in the window
    /// (so this thread pinned it) is refused. Judged here, on the call the
    /// server makes, not on the opcode the worker peeked: the guest may
    /// rewrite the request between the two reads.
    fn unpinned(&self) -> io::Result<()> {
        if PINNED.with(|p| p.get()) {
            log::debug!("virtio-fs: a DAX mapping change whose request lies in the window: EINVAL");
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

impl FsCacheReqHandler for DaxRequests {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        self.unpinned()?;
        self.0.map(foffset, moffset, len, flags, fd)
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        self.unpinned()?;
        self.0.unmap(&requests)
    }
}
