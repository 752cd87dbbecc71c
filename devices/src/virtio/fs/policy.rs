//! What a guest may do to its share, decided on the file server's own copy
//! of each request (the server has parsed it out of guest memory, so the
//! guest cannot change it between the check and the use):
//!
//! - a read-only share refuses every change (EROFS);
//! - no device nodes (EPERM): a guest-made block device in the share would
//!   hand host users a door to host disks;
//! - no setuid files and no setgid files (EPERM): Ferry runs as its host
//!   user, often root, and a guest's setuid-root binary would be one for
//!   host users too;
//! - no `security.*` or `trusted.*` extended attributes (EPERM): file
//!   capabilities (`security.capability`) are setuid by another name, and
//!   `trusted.*` belongs to the host's own stacks (overlayfs);
//!
//! Everything else goes to the inner file system unchanged.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// FUSE_SETUPMAPPING_FLAG_WRITE.
const SETUPMAPPING_FLAG_WRITE: u64 = 1;

pub struct SharePolicy<F> {
    inner: F,
    readonly: bool,
}

fn refuse<T>(errno: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(errno))
}

/// Whether `mode` makes a file that runs with someone else's ids.
fn grants_ids(mode: u32, is_dir: bool) -> bool {
    mode & libc::S_ISUID != 0 || (mode & libc::S_ISGID != 0 && !is_dir)
}

/// The file flags a READ or WRITE names, less those `fcntl(F_SETFL)` may
/// refuse (O_DIRECT where the file system has no direct I/O, O_NOATIME on
/// a file Ferry does not own). fuse-backend-rs 0.14 applies them to the
/// open file first, and when that fails it closes the descriptor the
/// handle still owns (a `File` made from the borrowed fd is dropped on the
/// error path): the next request on the handle then hits a closed or
/// reused descriptor, and a write can land in another file (found by the
/// fuzzer).
fn settable_flags(flags: u32) -> u32 {
    flags & !((libc::O_DIRECT | libc::O_NOATIME) as u32)
}

/// The most a reply buffer may take: fuse-backend-rs allocates the size the
/// guest names (up to 4 GiB) before it reads anything (found by the
/// fuzzer). An xattr value or list is at most 64 KiB (XATTR_SIZE_MAX), a
/// directory reply at most one request (MAX_PAGES: 1 MiB).
const XATTR_REPLY_MAX: u32 = 64 << 10;
const DIR_REPLY_MAX: u32 = 1 << 20;

/// Extended attributes only the host may set.
fn host_only_xattr(name: &CStr) -> bool {
    let n = name.to_bytes();
    n.starts_with(b"security.") || n.starts_with(b"trusted.")
}

impl<F> SharePolicy<F> {
    pub fn new(inner: F, readonly: bool) -> Self {
        SharePolicy { inner, readonly }
    }

    /// EROFS on a read-only share.
    fn writable(&self) -> io::Result<()> {
        if self.readonly {
            refuse(libc::EROFS)
        } else {
            Ok(())
        }
    }
}

impl<F: FileSystem> FileSystem for SharePolicy<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    /// Nothing: the library's DESTROY drops every inode and reopens the
    /// share's root and its mount by path, which the sandboxed server may
    /// not do (the mount point can lie outside the share). The guest has
    /// forgotten its inodes by then, and the next INIT serves afresh.
    fn destroy(&self) {}

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        if valid.contains(SetattrValid::MODE) && attr.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0
        {
            // setgid is fine on directories (group inheritance); ask.
            let inode_u64: u64 = inode.into();
            let (st, _) = self.inner.getattr(ctx, inode_u64.into(), None)?;
            if grants_ids(attr.st_mode, st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
                return refuse(libc::EPERM);
            }
            return self
                .inner
                .setattr(ctx, inode_u64.into(), attr, handle, valid);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        // Judged as the server will make it: `mode & !umask` (a type of
        // 0o070000 less a umask of 0o010000 is a block device; found by
        // the fuzzer). Regular files, FIFOs and sockets only.
        let made = mode & !umask;
        let kind = made & libc::S_IFMT;
        let allowed = [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK];
        if !allowed.contains(&kind) || grants_ids(made, false) {
            return refuse(libc::EPERM);
        }
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        // RENAME_WHITEOUT leaves a character device (0:0) behind.
        if flags & libc::RENAME_WHITEOUT != 0 {
            return refuse(libc::EPERM);
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let f = flags as i32;
        if f & libc::O_PATH != 0 {
            // No Linux guest sends it (O_PATH opens never reach FUSE). The
            // server would open the handle's file O_PATH, fail its first
            // fcntl(F_SETFL) and close the descriptor the handle still
            // owns: the next request on the handle then used a closed or
            // reused descriptor (found by the fuzzer).
            return refuse(libc::EINVAL);
        }
        if f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0 {
            self.writable()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        if args.flags as i32 & libc::O_PATH != 0 {
            return refuse(libc::EINVAL);
        }
        if grants_ids(args.mode, false) {
            return refuse(libc::EPERM);
        }
        self.inner.create(ctx, parent, name, args)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let flags = settable_flags(flags);
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let flags = settable_flags(flags);
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        if host_only_xattr(name) {
            return refuse(libc::EPERM);
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if name.to_bytes().starts_with(b"trusted.") {
            return refuse(libc::EPERM);
        }
        let size = size.min(XATTR_REPLY_MAX);
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        let size = size.min(XATTR_REPLY_MAX);
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        if host_only_xattr(name) {
            return refuse(libc::EPERM);
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        if flags as i32 & libc::O_PATH != 0 {
            return refuse(libc::EINVAL);
        }
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let size = size.min(DIR_REPLY_MAX);
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let size = size.min(DIR_REPLY_MAX);
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        if flags & SETUPMAPPING_FLAG_WRITE != 0 {
            self.writable()?;
        }
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_and_setgid_files_grant_ids_setgid_dirs_do_not() {
        assert!(grants_ids(libc::S_IFREG | 0o4755, false));
        assert!(grants_ids(libc::S_IFREG | 0o2755, false));
        assert!(grants_ids(0o4755, true));
        assert!(!grants_ids(0o2775, true));
        assert!(!grants_ids(0o1777, true));
        assert!(!grants_ids(0o755, false));
    }

    #[test]
    fn flags_fcntl_may_refuse_are_dropped() {
        let f = (libc::O_WRONLY | libc::O_APPEND | libc::O_DIRECT | libc::O_NOATIME) as u32;
        assert_eq!(settable_flags(f), (libc::O_WRONLY | libc::O_APPEND) as u32);
    }

    #[test]
    fn security_and_trusted_xattrs_are_the_hosts() {
        assert!(host_only_xattr(c"security.capability"));
        assert!(host_only_xattr(c"trusted.overlay.opaque"));
        assert!(!host_only_xattr(c"user.mime_type"));
        assert!(!host_only_xattr(c"system.posix_acl_access"));
        assert!(!host_only_xattr(c"securityfoo"));
    }
}
