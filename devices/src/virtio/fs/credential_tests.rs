//! Guest users' requests through the worker: what a non-root guest user
//! makes gets its ids, and device nodes and setuid/setgid files follow the
//! share's rules. These need root (Ferry as root takes the guest user's ids
//! per request), as CI has; elsewhere they fail, loudly.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuse_backend_rs::abi::fuse_abi::Opcode;

use super::harness::*;

const MKDIR: u32 = Opcode::Mkdir as u32;
const MKNOD: u32 = Opcode::Mknod as u32;
const SYMLINK: u32 = Opcode::Symlink as u32;
const CREATE: u32 = Opcode::Create as u32;
const SETATTR: u32 = Opcode::Setattr as u32;
const OPEN: u32 = Opcode::Open as u32;

const NOBODY: (u32, u32) = (65534, 65534);
const STRANGER: (u32, u32) = (65533, 65532);

fn must_be_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these cases need root: Ferry as root acts with each guest user's ids"
    );
}

fn with_name(mut body: Vec<u8>, name: &str) -> Vec<u8> {
    body.extend_from_slice(&cstr(name.as_bytes()));
    body
}

/// A harness whose share holds `dir`, owned by `owner` with `mode`; the
/// node of `dir` as the guest sees it.
fn share_with_dir(
    h: &mut Harness,
    dir: &str,
    (uid, gid): (u32, u32),
    mode: u32,
) -> (std::path::PathBuf, u64) {
    let path = h.share_dir().join(dir);
    std::fs::create_dir(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let (_, error, reply) = h.lookup(dir.as_bytes());
    assert_eq!(error, 0, "LOOKUP {dir}");
    (path, node_of(&reply))
}

/// Every way a guest user makes an inode, in a directory it may write to:
/// each succeeds and the inode has the user's uid and gid. Before, mkdir
/// and symlink failed with EPERM: the library changed the thread's uid and
/// then reopened the parent from its file handle, which needs a capability
/// the uid change had cleared.
#[test]
fn guest_users_make_inodes_with_their_own_ids() {
    must_be_root();
    let mut h = Harness::new(false);
    h.init();
    for (dir, owner, mode, user) in [
        ("home", NOBODY, 0o755, NOBODY),
        ("open", (0, 0), 0o777, STRANGER),
    ] {
        let (path, node) = share_with_dir(&mut h, dir, owner, mode);
        let umask = 0o022;
        let requests = [
            ("d", MKDIR, with_name(words(&[0o777, umask]), "d")),
            (
                "f",
                CREATE,
                with_name(
                    words(&[
                        libc::O_RDWR as u32 | libc::O_CREAT as u32,
                        0o100666,
                        umask,
                        0,
                    ]),
                    "f",
                ),
            ),
            (
                "p",
                MKNOD,
                with_name(words(&[libc::S_IFIFO | 0o666, 0, umask, 0]), "p"),
            ),
            ("l", SYMLINK, b"l\0target\0".to_vec()),
        ];
        for (i, (name, opcode, body)) in requests.into_iter().enumerate() {
            let (_, error, _) =
                h.request(&fuse_request_as(user, opcode, 100 + i as u64, node, &body));
            assert_eq!(error, 0, "{dir}/{name} by uid {}: errno {}", user.0, -error);
            let meta = std::fs::symlink_metadata(path.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), user, "{dir}/{name}: owner");
        }
        assert_eq!(
            std::fs::metadata(path.join("d")).unwrap().mode() & 0o7777,
            0o755,
            "{dir}/d: mode less umask"
        );
    }
    // The worker thread is root again: guest root makes root's files.
    let (_, error, _) = h.request(&fuse_request(
        MKDIR,
        200,
        ROOT,
        &with_name(words(&[0o755, 0]), "by-root"),
    ));
    assert_eq!(error, 0);
    let meta = std::fs::metadata(h.share_dir().join("by-root")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    h.still_serves();
}

fn errno_of(h: &mut Harness, req: &[u8]) -> i32 {
    -h.request(req).1
}

/// The share's temp directory lies on a mount that is neither nodev nor
/// nosuid (asserted): device nodes and setuid files are refused there by
/// default, and allowed with `dev-suid=on`.
#[test]
fn device_nodes_and_setid_files_need_a_neutering_mount_or_the_opt_in() {
    must_be_root();
    for dev_suid in [false, true] {
        let mut h = Harness::with_share(false, None, |s| s.dev_suid = dev_suid);
        h.init();
        // SAFETY: statvfs is plain integers; all zeroes is valid.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        let dir = std::ffi::CString::new(h.share_dir().to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes into the struct we own.
        assert_eq!(unsafe { libc::statvfs(dir.as_ptr(), &mut vfs) }, 0);
        assert_eq!(
            vfs.f_flag & (libc::ST_NODEV | libc::ST_NOSUID),
            0,
            "the temp dir's mount neuters"
        );
        let want = if dev_suid { 0 } else { libc::EPERM };
        let blk = with_name(words(&[libc::S_IFBLK | 0o600, 0x0801, 0, 0]), "disk");
        assert_eq!(
            errno_of(&mut h, &fuse_request(MKNOD, 10, ROOT, &blk)),
            want,
            "mknod b, dev-suid={dev_suid}"
        );
        let suid = with_name(
            words(&[libc::O_WRONLY as u32 | libc::O_CREAT as u32, 0o104755, 0, 0]),
            "suid",
        );
        assert_eq!(
            errno_of(&mut h, &fuse_request(CREATE, 11, ROOT, &suid)),
            want,
            "create u+s"
        );
        // Setgid without group execute grants nothing: always allowed.
        let lock = with_name(
            words(&[libc::O_WRONLY as u32 | libc::O_CREAT as u32, 0o102644, 0, 0]),
            "lock",
        );
        assert_eq!(
            errno_of(&mut h, &fuse_request(CREATE, 12, ROOT, &lock)),
            0,
            "create g+s, g-x"
        );
        let (_, error, reply) = h.lookup(b"file");
        assert_eq!(error, 0);
        let file = node_of(&reply);
        assert_eq!(
            errno_of(
                &mut h,
                &fuse_request(SETATTR, 13, file, &setattr_mode(0o4755))
            ),
            want,
            "chmod u+s"
        );
        assert_eq!(
            errno_of(
                &mut h,
                &fuse_request(SETATTR, 14, file, &setattr_mode(0o2775))
            ),
            want,
            "chmod g+s"
        );
        // Setgid directories pass their group on: always allowed.
        let (_, error, reply) = h.request(&fuse_request(
            MKDIR,
            15,
            ROOT,
            &with_name(words(&[0o755, 0]), "dir"),
        ));
        assert_eq!(error, 0);
        assert_eq!(
            errno_of(
                &mut h,
                &fuse_request(SETATTR, 16, node_of(&reply), &setattr_mode(0o2775))
            ),
            0,
            "chmod g+s dir"
        );
        h.still_serves();
    }
}

/// A host's device node in the share is not chmod'ed, chown'ed or linked
/// by the guest where device nodes are not allowed; and a setuid file the
/// guest opens for writing loses its setuid bit first.
#[test]
fn existing_device_nodes_and_setid_files_are_defused() {
    must_be_root();
    let mut h = Harness::new(false);
    h.init();
    let share = h.share_dir();
    let node = std::ffi::CString::new(share.join("null").to_str().unwrap()).unwrap();
    // SAFETY: makes a node at a path we own; checked.
    let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(made, 0);
    let (_, error, reply) = h.lookup(b"null");
    assert_eq!(error, 0);
    let null = node_of(&reply);
    assert_eq!(
        errno_of(
            &mut h,
            &fuse_request(SETATTR, 20, null, &setattr_mode(0o666))
        ),
        libc::EPERM
    );
    let link = with_name(null.to_le_bytes().to_vec(), "null2");
    assert_eq!(
        errno_of(&mut h, &fuse_request(Opcode::Link as u32, 21, ROOT, &link)),
        libc::EPERM
    );
    assert_eq!(
        std::fs::metadata(share.join("null")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(!share.join("null2").exists());

    let prog = share.join("prog");
    std::fs::write(&prog, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let (_, error, reply) = h.lookup(b"prog");
    assert_eq!(error, 0);
    let prog_node = node_of(&reply);
    // Read-only: left alone.
    assert_eq!(
        errno_of(
            &mut h,
            &fuse_request(OPEN, 22, prog_node, &words(&[libc::O_RDONLY as u32, 0]))
        ),
        0
    );
    assert_eq!(std::fs::metadata(&prog).unwrap().mode() & 0o7777, 0o6755);
    assert_eq!(
        errno_of(
            &mut h,
            &fuse_request(OPEN, 23, prog_node, &words(&[libc::O_WRONLY as u32, 0]))
        ),
        0
    );
    assert_eq!(
        std::fs::metadata(&prog).unwrap().mode() & 0o7777,
        0o755,
        "setuid/setgid kept for a guest writer"
    );
    h.still_serves();
}

/// INIT offering POSIX_ACL and DONT_MASK, as Linux does.
fn init_with_acls(h: &mut Harness) {
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    let flags = u32::try_from((FsOptions::POSIX_ACL | FsOptions::DONT_MASK).bits()).unwrap();
    let (len, error, _) = h.request(&fuse_request(INIT, 1, 0, &words(&[7, 31, 0x20000, flags])));
    assert!(len >= 16 && error == 0, "INIT failed: {error}");
}

use super::acl::encode as acl_value;

/// `fuse_setxattr_in` (size, flags), the name, the value.
fn setxattr_body(name: &str, value: &[u8]) -> Vec<u8> {
    let mut b = words(&[request_len(value), 0]);
    b.extend_from_slice(&cstr(name.as_bytes()));
    b.extend_from_slice(value);
    b
}

const SETXATTR: u32 = Opcode::Setxattr as u32;
const EVERYONE_RWX: &[(u16, u16, u32)] = &[
    (0x01, 7, u32::MAX),
    (0x04, 7, u32::MAX),
    (0x20, 7, u32::MAX),
];

/// A default ACL drops the umask the server applies; the device-node and
/// setid judgement must use the umask the server will use (found in
/// review: with the guest's umask judged, mode S_IFBLK less umask
/// 0o060000 looked like a plain file and made a block device).
#[test]
fn a_default_acl_does_not_undo_the_mknod_judgement() {
    must_be_root();
    let mut h = Harness::with_share(false, None, |s| s.posix_acl = true);
    init_with_acls(&mut h);
    let (path, dir) = share_with_dir(&mut h, "acl", (0, 0), 0o777);
    let (_, error, _) = h.request(&fuse_request(
        SETXATTR,
        30,
        dir,
        &setxattr_body("system.posix_acl_default", &acl_value(EVERYONE_RWX)),
    ));
    assert_eq!(error, 0, "set a default ACL");
    for (name, mode, umask) in [
        ("blk", libc::S_IFBLK | 0o600, 0o060000),
        ("suid", libc::S_IFREG | 0o4755, 0o4000),
    ] {
        let body = with_name(words(&[mode, 0x0801, umask, 0]), name);
        assert_eq!(
            errno_of(&mut h, &fuse_request(MKNOD, 31, dir, &body)),
            libc::EPERM,
            "{name}"
        );
        assert!(!path.join(name).exists(), "{name} was made");
    }
    h.still_serves();
}

/// An access ACL rewrites the mode (its mask becomes the group bits): on
/// a setgid file it could make it group-executable, on a device node it is
/// a chmod. Judged as such; and no ACL changes at all without ACLs.
#[test]
fn access_acls_are_judged_like_chmod() {
    must_be_root();
    let mut h = Harness::with_share(false, None, |s| s.posix_acl = true);
    init_with_acls(&mut h);
    let share = h.share_dir();
    std::fs::write(share.join("sgid"), "payload").unwrap();
    std::fs::set_permissions(share.join("sgid"), std::fs::Permissions::from_mode(0o2644)).unwrap();
    let node = std::ffi::CString::new(share.join("null").to_str().unwrap()).unwrap();
    // SAFETY: makes a node at a path we own; checked.
    let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(made, 0);
    let acl = setxattr_body("system.posix_acl_access", &acl_value(EVERYONE_RWX));
    for name in ["sgid", "null"] {
        let (_, error, reply) = h.lookup(name.as_bytes());
        assert_eq!(error, 0);
        assert_eq!(
            errno_of(&mut h, &fuse_request(SETXATTR, 40, node_of(&reply), &acl)),
            libc::EPERM,
            "{name}"
        );
    }
    assert_eq!(
        std::fs::metadata(share.join("sgid")).unwrap().mode() & 0o7777,
        0o2644
    );
    assert_eq!(
        std::fs::metadata(share.join("null")).unwrap().mode() & 0o777,
        0o600
    );
    // A plain file takes it.
    let (_, _, reply) = h.lookup(b"file");
    assert_eq!(
        errno_of(&mut h, &fuse_request(SETXATTR, 41, node_of(&reply), &acl)),
        0
    );
    assert_eq!(
        std::fs::metadata(share.join("file")).unwrap().mode() & 0o777,
        0o777
    );

    // Without ACLs negotiated: EOPNOTSUPP, as a Linux guest answers itself.
    let mut h = Harness::new(false);
    h.init();
    let (_, _, reply) = h.lookup(b"file");
    assert_eq!(
        errno_of(&mut h, &fuse_request(SETXATTR, 42, node_of(&reply), &acl)),
        libc::EOPNOTSUPP
    );
    h.still_serves();
}

/// `open(O_CREAT, 04755)` of an existing file only opens it, locally and
/// here, even where setuid files may not be made; with O_EXCL, or where
/// the file does not exist, the setuid request is refused.
#[test]
fn creating_open_of_an_existing_file_ignores_a_setuid_mode() {
    must_be_root();
    let mut h = Harness::new(false);
    h.init();
    let open_creat = (libc::O_WRONLY | libc::O_CREAT) as u32;
    let body = |flags: u32, name: &str| with_name(words(&[flags, 0o104755, 0, 0]), name);
    let file = h.share_dir().join("file");
    let mode = || std::fs::metadata(&file).unwrap().mode() & 0o7777;
    let before = mode();
    let req = fuse_request(CREATE, 50, ROOT, &body(open_creat, "file"));
    assert_eq!(errno_of(&mut h, &req), 0);
    assert_eq!(mode(), before);
    let excl = open_creat | libc::O_EXCL as u32;
    assert_eq!(
        errno_of(&mut h, &fuse_request(CREATE, 51, ROOT, &body(excl, "file"))),
        libc::EPERM
    );
    assert_eq!(
        errno_of(
            &mut h,
            &fuse_request(CREATE, 52, ROOT, &body(open_creat, "new"))
        ),
        libc::EPERM
    );
    assert!(!h.share_dir().join("new").exists());
    h.still_serves();
}
