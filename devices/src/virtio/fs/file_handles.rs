//! Whether the file server can keep the inodes a guest holds as file
//! handles instead of open descriptors.
//!
//! By default fuse-backend-rs keeps one `O_PATH` descriptor per inode the
//! guest knows, so a guest that looks up 100,000 files holds 100,000 of
//! Ferry's descriptors. With file handles (`name_to_handle_at`) it keeps a
//! few bytes per inode and one descriptor per mount, and reopens with
//! `open_by_handle_at`, which needs CAP_DAC_READ_SEARCH and a file system
//! that exports handles. Trying both once on the share's root tells.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `struct file_handle` with room for any handle Linux makes (MAX_HANDLE_SZ).
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// Whether a handle for `dir` can be made and opened again by this process.
pub(super) fn usable(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: opens a path we own as a C string; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just opened and is owned here.
    let dir_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut handle = RawHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    let empty = c"";
    // SAFETY: the kernel writes at most handle_bytes (128) into f_handle and
    // one int into mount_id, both owned here.
    let made = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir_fd.as_raw_fd(),
            empty.as_ptr(),
            &mut handle as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if made != 0 {
        return false;
    }
    // SAFETY: reads the handle the kernel made; returns a new fd or -1.
    let opened = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir_fd.as_raw_fd(),
            &handle as *const RawHandle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if opened < 0 {
        return false;
    }
    // SAFETY: a descriptor the kernel just returned to us.
    drop(unsafe { OwnedFd::from_raw_fd(opened as i32) });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_has_no_handles() {
        assert!(!usable(Path::new("/nonexistent/ferry")));
    }

    #[test]
    fn handles_need_the_capability_and_the_file_system() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let shm = Path::new("/dev/shm");
        if root {
            // tmpfs exports handles, and root may open them.
            assert!(!shm.is_dir() || usable(shm));
            // procfs exports none.
            assert!(!usable(Path::new("/proc/self")));
        } else {
            assert!(!usable(shm));
        }
    }
}
