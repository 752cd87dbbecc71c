//! POSIX ACLs on a share (`acl=on`, the default where the host file system
//! has them).
//!
//! With FUSE `POSIX_ACL` the guest kernel reads, caches and enforces ACLs
//! itself; the server only stores them, as the host file system's
//! `system.posix_acl_*` xattrs, and the host applies a directory's default
//! ACL to what is made in it. Two things are Ferry's: a default ACL replaces
//! the umask (so with `DONT_MASK` the guest sends the umask and the server
//! applies it only where the parent has no default ACL), and the ids inside
//! an ACL go through the share's id maps like any other owner.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(super) const ACCESS: &CStr = c"system.posix_acl_access";
pub(super) const DEFAULT: &CStr = c"system.posix_acl_default";

/// `posix_acl_xattr_header`: a version word.
const HEADER: usize = 4;
/// `posix_acl_xattr_entry`: tag, permissions, id.
const ENTRY: usize = 8;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

pub(super) fn is_acl(name: &CStr) -> bool {
    name == ACCESS || name == DEFAULT
}

/// Rewrites the user and group ids of the entries in an ACL xattr value;
/// anything that is not a whole ACL is left for the host to refuse.
pub(super) fn map_ids(value: &mut [u8], uid: impl Fn(u32) -> u32, gid: impl Fn(u32) -> u32) {
    if value.len() < HEADER || !(value.len() - HEADER).is_multiple_of(ENTRY) {
        return;
    }
    for e in value[HEADER..].chunks_exact_mut(ENTRY) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let mapped = match tag {
            ACL_USER => uid(id),
            ACL_GROUP => gid(id),
            _ => continue,
        };
        e[4..8].copy_from_slice(&mapped.to_le_bytes());
    }
}

/// Whether the file system holding `dir` stores POSIX ACLs.
pub(super) fn host_supports(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a size query (no buffer) on a path we own as a C string.
    let n = unsafe { libc::getxattr(path.as_ptr(), ACCESS.as_ptr(), std::ptr::null_mut(), 0) };
    n >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENODATA)
}

/// An ACL xattr value of (tag, permissions, id) entries, for tests.
#[cfg(test)]
pub(super) fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(entries)
    }

    #[test]
    fn user_and_group_entries_are_mapped_the_rest_kept() {
        let undefined = u32::MAX;
        let mut v = acl(&[
            (0x01, 6, undefined),
            (ACL_USER, 6, 1002),
            (0x04, 4, undefined),
            (ACL_GROUP, 4, 2000),
            (0x10, 6, undefined),
            (0x20, 4, undefined),
        ]);
        map_ids(&mut v, |u| u + 100, |g| g + 10);
        let want = acl(&[
            (0x01, 6, undefined),
            (ACL_USER, 6, 1102),
            (0x04, 4, undefined),
            (ACL_GROUP, 4, 2010),
            (0x10, 6, undefined),
            (0x20, 4, undefined),
        ]);
        assert_eq!(v, want);
    }

    #[test]
    fn malformed_values_are_left_alone() {
        for mut v in [vec![], vec![2, 0, 0], vec![2, 0, 0, 0, 2, 0, 6, 0, 1]] {
            let before = v.clone();
            map_ids(&mut v, |_| 0, |_| 0);
            assert_eq!(v, before);
        }
    }

    #[test]
    fn names() {
        assert!(is_acl(c"system.posix_acl_access") && is_acl(c"system.posix_acl_default"));
        assert!(!is_acl(c"user.posix_acl_access"));
    }

    #[test]
    fn tmpfs_or_ext4_temp_dirs_have_acls() {
        // The temp dir is ext4 or tmpfs on every machine this runs on.
        assert!(host_supports(&std::env::temp_dir()));
        assert!(!host_supports(Path::new("/nonexistent/dir")));
    }
}
