//! What a guest may do to its share, decided on the file server's own copy
//! of each request (the server has parsed it out of guest memory, so the
//! guest cannot change it between the check and the use):
//!
//! - a read-only share refuses every change (EROFS);
//! - device nodes and setuid/setgid files only where the host mount
//!   neuters them, or where the share opts in (`privileges`); where setid
//!   is refused, an open for writing or truncation, a truncation or a
//!   writable mapping of an existing setuid/setgid file clears the bits
//!   first (a handle open before a host process made it setid is the
//!   host's doing), and an existing device node is not chmod'ed, chown'ed,
//!   linked or given an access ACL;
//! - POSIX ACLs offered where the share has them, with the umask left out
//!   under a default ACL and the ids inside mapped (`acl`);
//! - guest ids become host ids on the way in and back on the way out, as
//!   the share's `uid-map`/`gid-map` say (`id_map`);
//! - no `security.*` or `trusted.*` extended attributes (EPERM): file
//!   capabilities (`security.capability`) are setuid by another name, and
//!   `trusted.*` belongs to the host's own stacks (overlayfs); reading a
//!   `trusted.overlay.*` one answers ENODATA instead, so a guest overlayfs
//!   over the share sees plain files;
//!
//! Everything else goes to the inner file system unchanged.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid, FOPEN_IN_KILL_SUIDGID,
    WRITE_KILL_PRIV,
};
use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::server::supp_group;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::acl;
use super::id_map::IdMapping;
use super::privileges::{grants_ids, is_device, without_ids, Privilege, Privileges};

pub struct SharePolicy<F> {
    inner: F,
    readonly: bool,
    privileges: Privileges,
    ids: IdMapping,
    /// ACLs offered (the share asks and the host file system has them).
    acl: bool,
    /// ACLs negotiated with the guest's driver (set at each INIT).
    acl_on: AtomicBool,
}

fn refuse<T>(errno: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(errno))
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
    pub(super) fn new(
        inner: F,
        readonly: bool,
        privileges: Privileges,
        ids: IdMapping,
        acl: bool,
    ) -> Self {
        SharePolicy {
            inner,
            readonly,
            privileges,
            ids,
            acl,
            acl_on: AtomicBool::new(false),
        }
    }

    /// The supplementary group a creating request carries (the parent's,
    /// FUSE_CREATE_SUPP_GROUP) as a host group.
    fn map_supp_group(&self) {
        if !self.ids.gids.is_identity() {
            supp_group::remap(|g| self.ids.gids.to_host(g));
        }
    }

    /// Host owners as the guest sees them.
    fn guest_owner(&self, st: &mut stat64) {
        st.st_uid = self.ids.uids.to_guest(st.st_uid);
        st.st_gid = self.ids.gids.to_guest(st.st_gid);
    }

    fn guest_entry(&self, mut entry: Entry) -> Entry {
        self.guest_owner(&mut entry.attr);
        entry
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

/// Whether a request that opens with `flags` may change the file.
fn opens_for_change(flags: u32) -> bool {
    let f = flags.cast_signed();
    f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0
}

impl SharePolicy<PassthroughFs<()>> {
    /// Drops every inode and open file the guest held (closing their host
    /// descriptors), keeping the share's root (library patch 8). After an
    /// unmount or a device reset the guest knows none of them; kept, they
    /// would let a guest that mounts or resets in a loop pile up host
    /// descriptors. (The library's DESTROY also reopens the root by path,
    /// which the sandbox may forbid: the root's mount point can lie
    /// outside the share.)
    pub fn forget_guest(&self) {
        self.inner.forget_all_but_root();
    }
}

impl<F: FileSystem> SharePolicy<F> {
    /// The umask for an inode made in `parent`: none where ACLs are on and
    /// the parent has a default ACL, which then decides the mode (the guest
    /// sends the umask apart with DONT_MASK; locally the kernel skips it
    /// under a default ACL).
    fn umask_in(&self, ctx: &Context, parent: u64, umask: u32) -> u32 {
        if !self.acl_on.load(Ordering::Relaxed) {
            return umask;
        }
        match self.inner.getxattr(ctx, parent.into(), acl::DEFAULT, 0) {
            Ok(GetxattrReply::Count(n)) if n > 0 => 0,
            _ => umask,
        }
    }

    /// Whether the guest may set or remove ACL `name` of `inode`: only with
    /// ACLs negotiated (else EOPNOTSUPP, as the guest kernel answers
    /// itself), and an access ACL rewrites the mode's permission bits (its
    /// mask becomes the group bits), so on a device node it is a chmod, and
    /// on a setuid/setgid file it can make one executable: both judged as
    /// such.
    fn acl_may_change(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if !self.acl_on.load(Ordering::Relaxed) {
            return refuse(libc::EOPNOTSUPP);
        }
        if name != acl::ACCESS {
            return Ok(());
        }
        let (st, _) = self.inner.getattr(ctx, inode.into(), None)?;
        if is_device(st.st_mode) {
            self.judge(ctx, inode, Privilege::DeviceNode)?;
        }
        let setid = st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        if st.st_mode & libc::S_IFMT == libc::S_IFREG && setid {
            self.judge(ctx, inode, Privilege::SetId)?;
        }
        Ok(())
    }

    /// Refuses `what` on the mount of `inode` unless allowed there.
    fn judge(&self, ctx: &Context, inode: u64, what: Privilege) -> io::Result<()> {
        if self.allowed_on(ctx, inode, what)? {
            Ok(())
        } else {
            self.privileges.refuse(what)
        }
    }

    /// Whether `what` is allowed on the mount of `inode`.
    fn allowed_on(&self, ctx: &Context, inode: u64, what: Privilege) -> io::Result<bool> {
        if self.privileges.everywhere() {
            return Ok(true);
        }
        let flags = self.inner.statfs(ctx, inode.into())?.f_flag;
        Ok(self.privileges.allowed(what, flags))
    }

    /// Whether `dir` holds `name` (a lookup, given back at once).
    fn holds(&self, ctx: &Context, dir: u64, name: &CStr) -> bool {
        match self.inner.lookup(ctx, dir.into(), name) {
            Ok(entry) if entry.inode != 0 => {
                self.inner.forget(ctx, entry.inode.into(), 1);
                true
            }
            _ => false,
        }
    }

    /// Clears setuid, and setgid where group-executable, from `inode` if it
    /// is a regular file that has them; `judged`: only where its mount does
    /// not allow setid.
    fn clear_ids(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
        judged: bool,
    ) -> io::Result<()> {
        let (st, _) = self
            .inner
            .getattr(ctx, inode.into(), handle.map(Into::into))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || !grants_ids(st.st_mode, false) {
            return Ok(());
        }
        if judged {
            let flags = self.inner.statfs(ctx, inode.into())?.f_flag;
            if self.privileges.allowed(Privilege::SetId, flags) {
                return Ok(());
            }
        }
        // SAFETY: stat64 is plain data; zero is a valid value.
        let mut attr: stat64 = unsafe { std::mem::zeroed() };
        attr.st_mode = without_ids(st.st_mode);
        self.inner
            .setattr(ctx, inode.into(), attr, None, SetattrValid::MODE)
            .map(|_| ())
    }

    /// HANDLE_KILLPRIV_V2: the guest asks that a write, truncation or
    /// truncating open by a process without CAP_FSETID clear setuid, and
    /// setgid where group-executable. The library drops CAP_FSETID and lets
    /// the host kernel decide, but the host judges the server (root, in no
    /// guest group), so it also cleared a non-executable setgid bit that
    /// the writer's group membership keeps locally (the conformance suite's
    /// `write.f2767.member`). Cleared here by the protocol's rule instead;
    /// the flag is then spent.
    fn kill_ids(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<()> {
        self.clear_ids(ctx, inode, handle, false)
    }

    /// Before the guest changes the contents of `inode`: a setuid/setgid
    /// file on a mount where setid is not allowed loses those bits first
    /// (as the kernel clears them for an unprivileged writer), so the guest
    /// never leaves one with contents of its choosing. Ferry's own files
    /// (made before the VM, say) stay setid until a guest writes them.
    fn clear_ids_before_change(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        if self.privileges.everywhere() {
            return Ok(());
        }
        self.clear_ids(ctx, inode, None, true)
    }
}

impl<F: FileSystem> FileSystem for SharePolicy<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = self.inner.init(capable)?;
        let acl_terms = FsOptions::POSIX_ACL | FsOptions::DONT_MASK;
        let acl_on = self.acl && capable.contains(acl_terms);
        if acl_on {
            opts |= acl_terms;
        }
        self.acl_on.store(acl_on, Ordering::Relaxed);
        Ok(opts)
    }

    /// Not reached: the queue worker answers DESTROY itself and calls
    /// [`SharePolicy::forget_guest`].
    fn destroy(&self) {}

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.inner
            .lookup(ctx, parent, name)
            .map(|e| self.guest_entry(e))
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
        let (mut st, timeout) = self.inner.getattr(ctx, inode, handle)?;
        self.guest_owner(&mut st);
        Ok((st, timeout))
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
        let ino: u64 = inode.into();
        let new_ids = valid.contains(SetattrValid::MODE)
            && attr.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        let owner_or_mode =
            valid.intersects(SetattrValid::MODE | SetattrValid::UID | SetattrValid::GID);
        if new_ids || owner_or_mode {
            let (st, _) = self.inner.getattr(ctx, ino.into(), None)?;
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if new_ids && grants_ids(attr.st_mode, is_dir) {
                self.judge(ctx, ino, Privilege::SetId)?;
            }
            // chmod 666 of a host's disk node would open it to host users.
            if owner_or_mode && is_device(st.st_mode) {
                self.judge(ctx, ino, Privilege::DeviceNode)?;
            }
        }
        let mut valid = valid;
        if valid.contains(SetattrValid::SIZE) {
            self.clear_ids_before_change(ctx, ino)?;
            if valid.contains(SetattrValid::KILL_SUIDGID) {
                self.kill_ids(ctx, ino, None)?;
                valid.remove(SetattrValid::KILL_SUIDGID);
            }
        }
        let mut attr = attr;
        attr.st_uid = self.ids.uids.to_host(attr.st_uid);
        attr.st_gid = self.ids.gids.to_host(attr.st_gid);
        let (mut st, timeout) = self.inner.setattr(ctx, ino.into(), attr, handle, valid)?;
        self.guest_owner(&mut st);
        Ok((st, timeout))
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
        self.map_supp_group();
        self.inner
            .symlink(ctx, linkname, parent, name)
            .map(|e| self.guest_entry(e))
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
        let parent: u64 = inode.into();
        // Judged as the server will make it: `mode & !umask`, with the
        // umask the server gets (a type of 0o070000 less a umask of
        // 0o010000 is a block device; found by the fuzzer; a default ACL
        // that drops the umask must not undo the judgement). Only
        // permission bits are a umask. Device nodes where allowed; no
        // directories or unknown types.
        let umask = self.umask_in(ctx, parent, umask) & 0o777;
        let made = mode & !umask;
        let kind = made & libc::S_IFMT;
        let plain = [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK];
        if is_device(made) {
            self.judge(ctx, parent, Privilege::DeviceNode)?;
        } else if !plain.contains(&kind) {
            return refuse(libc::EPERM);
        }
        if grants_ids(made, false) {
            self.judge(ctx, parent, Privilege::SetId)?;
        }
        self.map_supp_group();
        self.inner
            .mknod(ctx, parent.into(), name, mode, rdev, umask)
            .map(|e| self.guest_entry(e))
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
        let parent: u64 = parent.into();
        let umask = self.umask_in(ctx, parent, umask);
        self.map_supp_group();
        self.inner
            .mkdir(ctx, parent.into(), name, mode, umask)
            .map(|e| self.guest_entry(e))
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
        let ino: u64 = inode.into();
        let (st, _) = self.inner.getattr(ctx, ino.into(), None)?;
        if is_device(st.st_mode) {
            self.judge(ctx, ino, Privilege::DeviceNode)?;
        }
        self.inner
            .link(ctx, ino.into(), newparent, newname)
            .map(|e| self.guest_entry(e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let f = flags.cast_signed();
        if f & libc::O_PATH != 0 {
            // No Linux guest sends it (O_PATH opens never reach FUSE). The
            // server would open the handle's file O_PATH, fail its first
            // fcntl(F_SETFL) and close the descriptor the handle still
            // owns: the next request on the handle then used a closed or
            // reused descriptor (found by the fuzzer).
            return refuse(libc::EINVAL);
        }
        let ino: u64 = inode.into();
        let mut fuse_flags = fuse_flags;
        if opens_for_change(flags) {
            self.writable()?;
            self.clear_ids_before_change(ctx, ino)?;
            if f & libc::O_TRUNC != 0 && fuse_flags & FOPEN_IN_KILL_SUIDGID != 0 {
                self.kill_ids(ctx, ino, None)?;
                fuse_flags &= !FOPEN_IN_KILL_SUIDGID;
            }
        }
        self.inner.open(ctx, ino.into(), flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        if args.flags.cast_signed() & libc::O_PATH != 0 {
            return refuse(libc::EINVAL);
        }
        let dir: u64 = parent.into();
        let mut args = args;
        args.umask = self.umask_in(ctx, dir, args.umask);
        // Judged as the server will make it: `mode & !(umask & 0o777)`.
        // Without O_EXCL an existing file is only opened and the mode is
        // not used (locally that open succeeds): then the setid bits are
        // dropped from the request instead, which also covers the file
        // going away in between (it is made without them).
        if grants_ids(args.mode & !(args.umask & 0o777), false)
            && !self.allowed_on(ctx, dir, Privilege::SetId)?
        {
            if args.flags.cast_signed() & libc::O_EXCL == 0 && self.holds(ctx, dir, name) {
                args.mode &= !(libc::S_ISUID | libc::S_ISGID);
            } else {
                return self.privileges.refuse(Privilege::SetId);
            }
        }
        self.map_supp_group();
        let (mut entry, handle, opts, passthrough) =
            self.inner.create(ctx, dir.into(), name, args)?;
        // Without O_EXCL an existing file is opened: a setuid one the guest
        // may not keep must not stay so while the guest writes it.
        if opens_for_change(args.flags) && grants_ids(entry.attr.st_mode, false) {
            self.clear_ids_before_change(ctx, entry.inode)?;
            entry.attr.st_mode = self.inner.getattr(ctx, entry.inode.into(), None)?.0.st_mode;
        }
        Ok((self.guest_entry(entry), handle, opts, passthrough))
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
        let ino: u64 = inode.into();
        let fh: u64 = handle.into();
        let mut fuse_flags = fuse_flags;
        if fuse_flags & WRITE_KILL_PRIV != 0 {
            self.kill_ids(ctx, ino, Some(fh))?;
            fuse_flags &= !WRITE_KILL_PRIV;
        }
        self.inner.write(
            ctx,
            ino.into(),
            fh.into(),
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
        let ino: u64 = inode.into();
        if acl::is_acl(name) {
            self.acl_may_change(ctx, ino, name)?;
        }
        if acl::is_acl(name) && !self.ids.is_identity() {
            let mut value = value.to_vec();
            acl::map_ids(
                &mut value,
                |u| self.ids.uids.to_host(u),
                |g| self.ids.gids.to_host(g),
            );
            return self.inner.setxattr(ctx, ino.into(), name, &value, flags);
        }
        self.inner.setxattr(ctx, ino.into(), name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        // A guest overlayfs with the share as its lower layer (`ferry
        // run --overlay`) asks each lower file for its overlay xattrs and
        // fails the lookup on EPERM: to it they are absent, as on a plain
        // file system. The host's own values stay unread either way.
        if name.to_bytes().starts_with(b"trusted.overlay.") {
            return refuse(libc::ENODATA);
        }
        if name.to_bytes().starts_with(b"trusted.") {
            return refuse(libc::EPERM);
        }
        let size = size.min(XATTR_REPLY_MAX);
        let mut reply = self.inner.getxattr(ctx, inode, name, size)?;
        if let GetxattrReply::Value(value) = &mut reply {
            if acl::is_acl(name) && !self.ids.is_identity() {
                acl::map_ids(
                    value,
                    |u| self.ids.uids.to_guest(u),
                    |g| self.ids.gids.to_guest(g),
                );
            }
        }
        Ok(reply)
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
        let ino: u64 = inode.into();
        if acl::is_acl(name) {
            self.acl_may_change(ctx, ino, name)?;
        }
        self.inner.removexattr(ctx, ino.into(), name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        if flags.cast_signed() & libc::O_PATH != 0 {
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
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                add_entry(d, self.guest_entry(e))
            })
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
        let ino: u64 = inode.into();
        if flags & SetupmappingFlags::WRITE.bits() != 0 {
            self.writable()?;
            self.clear_ids_before_change(ctx, ino)?;
        }
        self.inner.setupmapping(
            ctx,
            ino.into(),
            handle,
            foffset,
            len,
            flags,
            moffset,
            vu_req,
        )
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

    /// Every request's guest user as a host user, before the server reads
    /// its arguments: whom the server acts as when it makes an inode, and
    /// whom it judges ACCESS for.
    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        ctx.uid = self.ids.uids.to_host(ctx.uid);
        ctx.gid = self.ids.gids.to_host(ctx.gid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
