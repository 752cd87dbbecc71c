//! What must hold of a share after any guest, checked on the host side:
//! Ferry's share policy (`devices/src/virtio/fs/policy.rs`) as seen in the
//! directory itself, and an unchanged tree for a read-only share.
//!
//! - no character or block device nodes, unless the share's mount is
//!   `nodev`;
//! - no setuid file and no group-executable setgid file, unless the mount is
//!   `nosuid` (setgid directories, setuid on a directory and setgid without
//!   group execute grant nothing);
//! - no `security.*` or `trusted.*` extended attributes.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One file as a read-only share must keep it (times aside).
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub nlink: u64,
    /// Regular files up to 64 KiB.
    pub content: Option<Vec<u8>>,
    pub xattrs: Vec<Vec<u8>>,
}

fn xattr_names(path: &Path) -> Vec<Vec<u8>> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: `c` is a valid C string, `buf` a writable buffer of that size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut names: Vec<Vec<u8>> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names.sort();
    names
}

/// Every file under `root` (itself included), without following symlinks,
/// in path order.
pub fn snapshot(root: &Path) -> Vec<Node> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&path) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
        let content = (md.is_file() && md.len() <= 64 * 1024)
            .then(|| std::fs::read(&path).ok())
            .flatten();
        out.push(Node {
            path: path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: if md.is_dir() { 0 } else { md.size() },
            rdev: md.rdev(),
            nlink: if md.is_dir() { 0 } else { md.nlink() },
            content,
            xattrs: xattr_names(&path),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The `statvfs` flags of the mount holding `root`.
fn mount_flags(root: &Path) -> u64 {
    let path = CString::new(root.as_os_str().as_bytes()).expect("share path");
    // SAFETY: statvfs writes into the struct we own; zero is valid for it.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the path is a valid C string.
    assert_eq!(
        unsafe { libc::statvfs(path.as_ptr(), &mut vfs) },
        0,
        "statvfs of the share"
    );
    vfs.f_flag
}

/// Panics where the tree under `root` breaks the share policy.
pub fn check_policy(root: &Path) {
    let flags = mount_flags(root);
    let (nodev, nosuid) = (flags & libc::ST_NODEV != 0, flags & libc::ST_NOSUID != 0);
    for n in snapshot(root) {
        let kind = n.mode & libc::S_IFMT;
        let what = root.join(&n.path);
        // RENAME_WHITEOUT leaves a 0:0 character device, the overlayfs
        // whiteout (README.md, "Findings", 7): tolerated with
        // `FERRY_FUZZ_SKIP_KNOWN` 7.
        let whiteout = kind == libc::S_IFCHR && n.rdev == 0 && crate::sandbox::skip(7);
        assert!(
            nodev || whiteout || (kind != libc::S_IFCHR && kind != libc::S_IFBLK),
            "a device node in the share: {} (mode {:o}, rdev {:#x})",
            what.display(),
            n.mode,
            n.rdev
        );
        assert!(
            nosuid || n.mode & libc::S_ISUID == 0 || kind == libc::S_IFDIR,
            "a setuid file in the share: {} (mode {:o})",
            what.display(),
            n.mode
        );
        let setgid_exec = libc::S_ISGID | libc::S_IXGRP;
        assert!(
            nosuid || n.mode & setgid_exec != setgid_exec || kind == libc::S_IFDIR,
            "a setgid file in the share: {} (mode {:o})",
            what.display(),
            n.mode
        );
        for x in &n.xattrs {
            assert!(
                !x.starts_with(b"security.") && !x.starts_with(b"trusted."),
                "a host-only xattr in the share: {} on {}",
                String::from_utf8_lossy(x),
                what.display()
            );
        }
    }
}

/// Nothing escaped the share: only `secret` and `share` lie in `top`, and
/// `secret` still holds what the target wrote there.
pub fn check_beside(top: &Path) {
    assert_eq!(
        crate::sandbox::entries(top),
        ["secret", "share"],
        "files appeared beside the share in {}",
        top.display()
    );
    assert_eq!(
        std::fs::read(top.join("secret")).ok().as_deref(),
        Some(&b"outside"[..]),
        "the file beside the share changed"
    );
}
