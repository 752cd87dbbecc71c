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
    let Ok(fd) = i32::try_from(opened) else {
        return false;
    };
    // SAFETY: a descriptor the kernel just returned to us.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
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

/// A guest that looks up and forgets a directory on another mount beneath
/// the share, over and over, must not leak Ferry's descriptors. With file
/// handles, each first use of a mount opens that mount's root; the opening
/// must be closed again (fuse-backend-rs 0.14 leaked it: see
/// third_party/fuse-backend-rs/FERRY-PATCHES.md). The mount needs a mount
/// namespace of its own, so the case runs in a child under `unshare`.
#[cfg(test)]
mod submount_tests {
    use super::super::harness::{fuse_request, node_of, Harness, LOOKUP, ROOT};
    use super::usable;

    const CHILD_ENV: &str = "FERRY_SUBMOUNT_TEST_CHILD";
    const FORGET: u32 = fuse_backend_rs::abi::fuse_abi::Opcode::Forget as u32;
    const ROUNDS: usize = 200;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// The child: a tmpfs mounted at share/sub, then ROUNDS lookup/forget
    /// rounds of it.
    #[test]
    fn submount_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let mut h = Harness::new(false);
        h.init();
        let sub = h.share_dir().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let target = std::ffi::CString::new(sub.to_str().unwrap()).unwrap();
        // SAFETY: mounts a fresh tmpfs on a directory we made, in the
        // private mount namespace `unshare` gave this process.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        // Really root (not root of a user namespace): the case is about
        // handles, so make sure they are in use.
        if std::env::var_os(CHILD_ENV).is_some_and(|v| v == "root") {
            assert!(usable(&h.share_dir()), "root, yet no file handles");
        }
        let round = |h: &mut Harness| {
            let (_, error, reply) = h.request(&fuse_request(LOOKUP, 5, ROOT, b"sub\0"));
            assert_eq!(error, 0, "LOOKUP sub");
            let node = node_of(&reply);
            // FORGET has no reply; nlookup 1 drops the only reference.
            h.request(&fuse_request(FORGET, 6, node, &1u64.to_le_bytes()));
        };
        // The first round may open what is kept for good.
        round(&mut h);
        let before = open_fds();
        for _ in 0..ROUNDS {
            round(&mut h);
        }
        let after = open_fds();
        h.still_serves();
        println!("descriptors: {before} before, {after} after {ROUNDS} rounds");
        assert!(
            after <= before + 2,
            "{} descriptors leaked in {ROUNDS} lookup/forget rounds of a submount",
            after - before
        );
    }

    #[test]
    fn forgetting_a_submount_closes_what_its_lookup_opened() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // Root gets a mount namespace of its own; anyone else a user
        // namespace too (then there are no file handles, but the rounds
        // still must not leak).
        let mut args = vec!["--mount", "--propagation", "private"];
        if !root {
            args.insert(0, "--map-root-user");
        }
        let out = std::process::Command::new("unshare")
            .args(&args)
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "virtio::fs::file_handles::submount_tests::submount_child",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, if root { "root" } else { "user" })
            .output()
            .expect("run unshare (util-linux)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no case:\n{text}");
        assert!(text.contains("descriptors:"), "{text}");
    }
}
