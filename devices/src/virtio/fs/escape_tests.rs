//! The escape battery's raw-FUSE half: requests no Linux guest would send
//! (names with `/` or NUL, forged node ids and file handles, device nodes,
//! setuid modes, host-only xattrs), fed to the real worker and server in
//! plain memory. Each attempt must fail and leave the host untouched; the
//! table printed at the end says which defence stopped each one. The
//! guest-side half is in tests/tests/integration/escape.rs.

use std::os::unix::fs::MetadataExt;

use super::harness::*;

const ROOT_ID: u64 = 1;

fn op(o: fuse_backend_rs::abi::fuse_abi::Opcode) -> u32 {
    o as u32
}

struct Battery {
    h: Harness,
    rows: Vec<(&'static str, &'static str, i32)>,
}

impl Battery {
    fn new(readonly: bool) -> Battery {
        let mut h = Harness::new(readonly);
        h.init();
        Battery {
            h,
            rows: Vec::new(),
        }
    }

    /// Sends `request`; it must fail with `errno` (or any error if None).
    fn attempt(
        &mut self,
        name: &'static str,
        defence: &'static str,
        request: Vec<u8>,
        errno: Option<i32>,
    ) {
        let (len, error, _) = self.h.request(&request);
        match errno {
            Some(e) => assert_eq!(error, -e, "{name}: expected errno {e}, got {error}"),
            None => assert!(error < 0 || len == 0, "{name}: the request succeeded"),
        }
        self.rows.push((name, defence, error));
        self.h.still_serves();
    }

    fn lookup_node(&mut self, name: &[u8]) -> u64 {
        let (_, error, reply) = self.h.lookup(name);
        assert_eq!(error, 0, "lookup {:?}", String::from_utf8_lossy(name));
        node_of(&reply)
    }

    /// Nothing appeared beside the share, and the outside file is intact.
    fn host_untouched(&self) {
        let base = self.h.share_dir().parent().unwrap().to_path_buf();
        let mut names: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["secret", "share"],
            "files appeared outside the share"
        );
        assert_eq!(std::fs::read(base.join("secret")).unwrap(), b"outside");
        for e in std::fs::read_dir(self.h.share_dir()).unwrap() {
            let m = e.unwrap().metadata().unwrap();
            let kind = m.mode() & libc::S_IFMT;
            assert!(
                kind != libc::S_IFBLK && kind != libc::S_IFCHR,
                "device node"
            );
            if !m.is_dir() {
                assert_eq!(
                    m.mode() & (libc::S_ISUID | libc::S_ISGID),
                    0,
                    "setuid/setgid"
                );
            }
        }
    }

    fn print(&self, title: &str) {
        println!("escape battery ({title}):");
        for (name, defence, error) in &self.rows {
            // An attempt that 'succeeds' harmlessly (`..` at the root
            // answering the root) stayed inside the share.
            let outcome = if *error == 0 { "contained" } else { "blocked" };
            println!("  {outcome:<9} {name:<44} errno {:<4} {defence}", -error);
        }
    }
}

const NAMES: &str = "name check: fuse-backend-rs refuses names with '/', '..' and empty ones";
const ROOT_DOTDOT: &str = "'..' at the share root is rewritten to '.'";
const NUL: &str = "names end at the first NUL (CStr); the rest is not a path";
const NAME_MAX: &str = "host kernel: NAME_MAX (255) on openat";
const NODE_TABLE: &str = "node ids index Ferry's inode table; forged ones match nothing";
const HANDLE_TABLE: &str = "file handles index Ferry's handle table; forged ones match nothing";
const OPATH: &str = "share policy: no O_PATH in FUSE OPEN (EINVAL)";
const DEVICES: &str = "share policy: no device nodes (EPERM)";
const SETID: &str = "share policy: no setuid/setgid files (EPERM)";
const XATTRS: &str = "share policy: security.* and trusted.* are the host's (EPERM)";
const READONLY: &str = "share policy: read-only share (EROFS); Landlock read-only rule below it";

#[test]
fn raw_fuse_escape_attempts_are_blocked() {
    use fuse_backend_rs::abi::fuse_abi::Opcode::*;
    let mut b = Battery::new(false);
    let file = b.lookup_node(b"file");
    let (_, error, reply) = b.h.request(&fuse_request(
        op(Mkdir),
        3,
        ROOT_ID,
        &[words(&[0o755, 0]), cstr(b"dir")].concat(),
    ));
    assert_eq!(error, 0);
    let dir = node_of(&reply);

    b.attempt(
        "lookup '../secret'",
        NAMES,
        fuse_request(op(Lookup), 10, ROOT_ID, &cstr(b"../secret")),
        None,
    );
    b.attempt(
        "lookup '/etc/passwd'",
        NAMES,
        fuse_request(op(Lookup), 11, ROOT_ID, &cstr(b"/etc/passwd")),
        None,
    );
    b.attempt(
        "lookup '..' below the root, then 'secret'",
        NAMES,
        fuse_request(op(Lookup), 12, dir, &cstr(b"../../secret")),
        None,
    );
    // '..' at the root resolves to the root itself, never its parent.
    let (_, error, reply) = b.h.lookup(b"..");
    if error == 0 {
        let ino = reply_body::<fuse_backend_rs::abi::fuse_abi::EntryOut>(&reply)
            .attr
            .ino;
        assert_eq!(ino, std::fs::metadata(b.h.share_dir()).unwrap().ino());
    }
    b.rows.push(("lookup '..' at the root", ROOT_DOTDOT, error));
    b.attempt(
        "lookup 'fi\\0../../secret' (NUL inside)",
        NUL,
        fuse_request(op(Lookup), 13, ROOT_ID, b"fi\0../../secret\0"),
        Some(libc::ENOENT),
    );
    b.attempt(
        "lookup of a 4,000-byte name",
        NAME_MAX,
        fuse_request(op(Lookup), 14, ROOT_ID, &cstr(&[b'a'; 4000])),
        None,
    );
    b.attempt(
        "mkdir 'a/../../x'",
        NAMES,
        fuse_request(
            op(Mkdir),
            15,
            ROOT_ID,
            &[words(&[0o755, 0]), cstr(b"a/../../x")].concat(),
        ),
        None,
    );
    b.attempt(
        "create '../created'",
        NAMES,
        fuse_request(
            op(Create),
            16,
            ROOT_ID,
            &[
                words(&[libc::O_RDWR as u32, 0o644, 0, 0]),
                cstr(b"../created"),
            ]
            .concat(),
        ),
        None,
    );
    b.attempt(
        "rename 'file' to '../moved'",
        NAMES,
        fuse_request(
            op(Rename),
            17,
            ROOT_ID,
            &[
                ROOT_ID.to_le_bytes().to_vec(),
                cstr(b"file"),
                cstr(b"../moved"),
            ]
            .concat(),
        ),
        None,
    );
    b.attempt(
        "link 'file' as '../linked'",
        NAMES,
        fuse_request(
            op(Link),
            18,
            ROOT_ID,
            &[file.to_le_bytes().to_vec(), cstr(b"../linked")].concat(),
        ),
        None,
    );
    b.attempt(
        "symlink named '../sym'",
        NAMES,
        fuse_request(
            op(Symlink),
            19,
            ROOT_ID,
            &[cstr(b"../sym"), cstr(b"/etc/passwd")].concat(),
        ),
        None,
    );
    b.attempt(
        "getattr of a forged node id",
        NODE_TABLE,
        fuse_request(op(Getattr), 20, 0xdead_beef, &[0; 16]),
        None,
    );
    b.attempt(
        "lookup under a forged parent",
        NODE_TABLE,
        fuse_request(op(Lookup), 21, 0x7777, &cstr(b"secret")),
        None,
    );
    b.attempt(
        "open a forged node id",
        NODE_TABLE,
        fuse_request(op(Open), 22, 2_000_000, &words(&[0, 0])),
        None,
    );
    let read_in = [
        12345u64.to_le_bytes().to_vec(),
        0u64.to_le_bytes().to_vec(),
        words(&[4096, 0]),
        0u64.to_le_bytes().to_vec(),
        words(&[0, 0]),
    ]
    .concat();
    b.attempt(
        "read through a forged file handle",
        HANDLE_TABLE,
        fuse_request(op(Read), 23, file, &read_in),
        None,
    );
    b.attempt(
        "open with O_PATH (the library then closes a live handle's fd)",
        OPATH,
        fuse_request(
            op(Open),
            37,
            file,
            &words(&[(libc::O_RDWR | libc::O_PATH) as u32, 0]),
        ),
        Some(libc::EINVAL),
    );
    b.attempt(
        "mknod block device 8:0",
        DEVICES,
        fuse_request(
            op(Mknod),
            24,
            ROOT_ID,
            &[words(&[libc::S_IFBLK | 0o600, 0x800, 0, 0]), cstr(b"sda")].concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "mknod char device 1:1 (/dev/mem)",
        DEVICES,
        fuse_request(
            op(Mknod),
            25,
            ROOT_ID,
            &[words(&[libc::S_IFCHR | 0o600, 0x101, 0, 0]), cstr(b"mem")].concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "mknod setuid regular file",
        SETID,
        fuse_request(
            op(Mknod),
            26,
            ROOT_ID,
            &[words(&[libc::S_IFREG | 0o4755, 0, 0, 0]), cstr(b"suid")].concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "create setuid file 04755",
        SETID,
        fuse_request(
            op(Create),
            27,
            ROOT_ID,
            &[
                words(&[libc::O_RDWR as u32, libc::S_IFREG | 0o4755, 0, 0]),
                cstr(b"suid2"),
            ]
            .concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "chmod 04755 an existing file",
        SETID,
        fuse_request(op(Setattr), 28, file, &setattr_mode(libc::S_IFREG | 0o4755)),
        Some(libc::EPERM),
    );
    b.attempt(
        "chmod 02755 an existing file",
        SETID,
        fuse_request(op(Setattr), 29, file, &setattr_mode(libc::S_IFREG | 0o2755)),
        Some(libc::EPERM),
    );
    b.attempt(
        "setxattr security.capability",
        XATTRS,
        fuse_request(
            op(Setxattr),
            30,
            file,
            &[
                words(&[4, 0]),
                cstr(b"security.capability"),
                b"\x01\x00\x00\x02".to_vec(),
            ]
            .concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "setxattr trusted.overlay.opaque",
        XATTRS,
        fuse_request(
            op(Setxattr),
            31,
            file,
            &[
                words(&[1, 0]),
                cstr(b"trusted.overlay.opaque"),
                b"y".to_vec(),
            ]
            .concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "getxattr trusted.overlay.redirect",
        XATTRS,
        fuse_request(
            op(Getxattr),
            32,
            file,
            &[words(&[64, 0]), cstr(b"trusted.overlay.redirect")].concat(),
        ),
        // Absent to the guest (its own overlayfs asks), never the host's value.
        Some(libc::ENODATA),
    );
    b.attempt(
        "getxattr trusted.other",
        XATTRS,
        fuse_request(
            op(Getxattr),
            42,
            file,
            &[words(&[64, 0]), cstr(b"trusted.other")].concat(),
        ),
        Some(libc::EPERM),
    );
    b.attempt(
        "removexattr security.selinux",
        XATTRS,
        fuse_request(op(Removexattr), 33, file, &cstr(b"security.selinux")),
        Some(libc::EPERM),
    );
    b.host_untouched();
    // setgid stays allowed on directories (group inheritance).
    let (_, error, _) = b.h.request(&fuse_request(
        op(Setattr),
        34,
        dir,
        &setattr_mode(libc::S_IFDIR | 0o2775),
    ));
    assert_eq!(error, 0, "setgid directory refused");
    b.print("raw FUSE, read-write share");

    let mut ro = Battery::new(true);
    let file = ro.lookup_node(b"file");
    ro.attempt(
        "open for writing on a read-only share",
        READONLY,
        fuse_request(op(Open), 40, file, &words(&[libc::O_RDWR as u32, 0])),
        Some(libc::EROFS),
    );
    ro.attempt(
        "open O_TRUNC on a read-only share",
        READONLY,
        fuse_request(
            op(Open),
            41,
            file,
            &words(&[(libc::O_RDONLY | libc::O_TRUNC) as u32, 0]),
        ),
        Some(libc::EROFS),
    );
    ro.attempt(
        "unlink on a read-only share",
        READONLY,
        fuse_request(op(Unlink), 42, ROOT_ID, &cstr(b"file")),
        Some(libc::EROFS),
    );
    ro.attempt(
        "setattr on a read-only share",
        READONLY,
        fuse_request(op(Setattr), 43, file, &setattr_mode(libc::S_IFREG | 0o777)),
        Some(libc::EROFS),
    );
    ro.host_untouched();
    assert_eq!(
        std::fs::read(ro.h.share_dir().join("file")).unwrap(),
        b"content"
    );
    ro.print("raw FUSE, read-only share");
}
