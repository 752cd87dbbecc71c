//! Device nodes and setuid/setgid files on a share: where a guest may make
//! them, and what becomes of them when it may not.
//!
//! Ferry acts on the host as its own user, often root, so what a guest
//! makes in a share is real there: a guest-made block device node is a door
//! to host disks for host users, a guest's setuid-root binary a door to
//! root. Both are harmless where the host mount already neuters them
//! (`nodev`, `nosuid`), so there they are allowed, as on a local file
//! system. Elsewhere they are refused (EPERM) unless the share opts in with
//! `dev-suid=on`; the first refusal of each kind is logged with the way to
//! allow it. Each file is judged on its own mount (a share may span
//! several), read when the guest asks: only the rare requests that make or
//! change such a file pay for it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a share may be asked to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Privilege {
    /// Block and character device nodes.
    DeviceNode,
    /// Files that run with their owner's or group's ids.
    SetId,
}

impl Privilege {
    /// The `statvfs` mount flag under which the host ignores it.
    fn neutered_by(self) -> u64 {
        match self {
            Privilege::DeviceNode => libc::ST_NODEV,
            Privilege::SetId => libc::ST_NOSUID,
        }
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Privilege::DeviceNode => ("a device node", "nodev"),
            Privilege::SetId => ("a setuid/setgid file", "nosuid"),
        }
    }
}

/// One share's rules for device nodes and setuid/setgid files.
pub(super) struct Privileges {
    tag: String,
    /// `dev-suid=on`: both allowed on every mount.
    everywhere: bool,
    /// Whether a refusal of each kind was logged already.
    told: [AtomicBool; 2],
}

impl Privileges {
    pub(super) fn new(tag: &str, everywhere: bool) -> Self {
        Privileges {
            tag: tag.to_string(),
            everywhere,
            told: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// Whether the share allows `what` on every mount (no need to look).
    pub(super) fn everywhere(&self) -> bool {
        self.everywhere
    }

    /// Whether `what` is allowed on a mount with these `statvfs` flags.
    pub(super) fn allowed(&self, what: Privilege, mount_flags: u64) -> bool {
        self.everywhere || mount_flags & what.neutered_by() != 0
    }

    /// EPERM; the first refusal of its kind on this share is logged.
    pub(super) fn refuse<T>(&self, what: Privilege) -> io::Result<T> {
        let told = &self.told[what as usize];
        if !told.swap(true, Ordering::Relaxed) {
            let (thing, flag) = what.describe();
            log::warn!(
                "virtio-fs '{}': refused to let the guest make or change {thing} (EPERM): the \
                 share's host mount is not {flag}, so host users could use it. Mount it {flag}, \
                 or give the share dev-suid=on to allow device nodes and setuid/setgid files \
                 everywhere (only for a guest you trust with the host).",
                self.tag
            );
        }
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// A block or character device node.
pub(super) fn is_device(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFBLK | libc::S_IFCHR)
}

/// Whether `mode` makes a file that runs with someone else's ids: setuid,
/// or setgid with group execute (setgid without it marks mandatory
/// locking, and the kernel leaves it on writes). Setgid on a directory
/// only passes its group on, and setuid there means nothing.
pub(super) fn grants_ids(mode: u32, is_dir: bool) -> bool {
    !is_dir
        && (mode & libc::S_ISUID != 0
            || mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP)
}

/// `mode` as a write by an unprivileged process leaves it (the kernel's
/// `setattr_should_drop_suidgid`): no setuid, no setgid where group execute.
pub(super) fn without_ids(mode: u32) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_and_executable_setgid_files_grant_ids() {
        assert!(grants_ids(libc::S_IFREG | 0o4755, false));
        assert!(grants_ids(libc::S_IFREG | 0o2755, false));
        assert!(grants_ids(0o4000, false));
        // Mandatory-locking marker, directories: no ids granted.
        assert!(!grants_ids(libc::S_IFREG | 0o2644, false));
        assert!(!grants_ids(0o4755, true));
        assert!(!grants_ids(0o2775, true));
        assert!(!grants_ids(0o1777, true));
        assert!(!grants_ids(0o755, false));
    }

    #[test]
    fn without_ids_follows_the_kernel() {
        assert_eq!(without_ids(libc::S_IFREG | 0o6755), libc::S_IFREG | 0o755);
        assert_eq!(without_ids(0o4644), 0o644);
        assert_eq!(without_ids(0o2644), 0o2644);
        assert_eq!(without_ids(0o1755), 0o1755);
    }

    #[test]
    fn neutering_mounts_allow_and_the_opt_in_allows_everywhere() {
        let strict = Privileges::new("t", false);
        assert!(!strict.allowed(Privilege::DeviceNode, 0));
        assert!(!strict.allowed(Privilege::DeviceNode, libc::ST_NOSUID));
        assert!(strict.allowed(Privilege::DeviceNode, libc::ST_NODEV));
        assert!(!strict.allowed(Privilege::SetId, libc::ST_NODEV));
        assert!(strict.allowed(Privilege::SetId, libc::ST_NOSUID));
        let open = Privileges::new("t", true);
        assert!(open.allowed(Privilege::DeviceNode, 0) && open.allowed(Privilege::SetId, 0));
        let err = strict.refuse::<()>(Privilege::SetId).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(strict.told[Privilege::SetId as usize].load(Ordering::Relaxed));
        assert!(!strict.told[Privilege::DeviceNode as usize].load(Ordering::Relaxed));
    }

    #[test]
    fn device_nodes() {
        assert!(is_device(libc::S_IFBLK | 0o600) && is_device(libc::S_IFCHR));
        assert!(!is_device(libc::S_IFIFO) && !is_device(libc::S_IFREG) && !is_device(0));
    }
}
