//! FUSE requests decoded from fuzz input: a known opcode (or any number),
//! a node and file handle the guest learned from earlier replies (or any
//! number), and a body laid out as that opcode's `struct fuse_*_in` with
//! each field drawn from values that matter for it. Now and then the body
//! is raw bytes, cut short, or has bytes added, and the header lies about
//! the length or carries another uid/gid.

use std::mem::{offset_of, size_of};

use fuse_backend_rs::abi::fuse_abi::{Dirent, EntryOut, InHeader, OpenOut, OutHeader};

use crate::input::Input;

// include/uapi/linux/fuse.h
pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const GETLK: u32 = 31;
pub const SETLK: u32 = 32;
pub const SETLKW: u32 = 33;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const BMAP: u32 = 37;
pub const DESTROY: u32 = 38;
pub const IOCTL: u32 = 39;
pub const POLL: u32 = 40;
pub const NOTIFY_REPLY: u32 = 41;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;
pub const SETUPMAPPING: u32 = 48;
pub const REMOVEMAPPING: u32 = 49;
pub const SYNCFS: u32 = 50;
pub const TMPFILE: u32 = 51;
pub const STATX: u32 = 52;

/// Weighted: the opcodes that change the share, and those that take file
/// handles, come up more often.
const OPCODES: &[u32] = &[
    LOOKUP,
    LOOKUP,
    FORGET,
    GETATTR,
    SETATTR,
    SETATTR,
    READLINK,
    SYMLINK,
    MKNOD,
    MKNOD,
    MKDIR,
    MKDIR,
    UNLINK,
    RMDIR,
    RENAME,
    RENAME2,
    LINK,
    OPEN,
    OPEN,
    READ,
    READ,
    WRITE,
    WRITE,
    STATFS,
    RELEASE,
    FSYNC,
    SETXATTR,
    GETXATTR,
    LISTXATTR,
    REMOVEXATTR,
    FLUSH,
    INIT,
    OPENDIR,
    READDIR,
    READDIRPLUS,
    READDIRPLUS,
    RELEASEDIR,
    FSYNCDIR,
    GETLK,
    SETLK,
    SETLKW,
    ACCESS,
    CREATE,
    CREATE,
    INTERRUPT,
    BMAP,
    DESTROY,
    IOCTL,
    POLL,
    NOTIFY_REPLY,
    BATCH_FORGET,
    FALLOCATE,
    LSEEK,
    COPY_FILE_RANGE,
    SETUPMAPPING,
    SETUPMAPPING,
    REMOVEMAPPING,
    REMOVEMAPPING,
    SYNCFS,
    TMPFILE,
    STATX,
    7,
    19,
    53,
    4096,
];

const NAMES: &[&[u8]] = &[
    b"file",
    b"file",
    b"a",
    b"b",
    b"dir",
    b"sub",
    b".",
    b"..",
    b"",
    b"secret",
    b"../secret",
    b"a/b",
    b"/etc/passwd",
    b"share",
    b"fifo",
    b"sock",
    b"dev",
];
const LINK_TARGETS: &[&[u8]] = &[
    b"file",
    b"../secret",
    b"/etc/passwd",
    b"/",
    b"..",
    b"dir/../..",
    b"a",
    b"/proc/self/root",
];
const XATTR_NAMES: &[&[u8]] = &[
    b"user.a",
    b"user.b",
    b"trusted.t",
    b"security.capability",
    b"security.selinux",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"",
    b"user.",
];
const MODES: &[u32] = &[
    libc::S_IFREG | 0o644,
    libc::S_IFDIR | 0o755,
    libc::S_IFLNK | 0o777,
    libc::S_IFIFO | 0o644,
    libc::S_IFSOCK | 0o644,
    libc::S_IFCHR | 0o600,
    libc::S_IFBLK | 0o600,
    libc::S_IFREG | 0o4755,
    libc::S_IFREG | 0o2755,
    0,
    0o7777,
];
const OPEN_BITS: &[i32] = &[
    libc::O_CREAT,
    libc::O_EXCL,
    libc::O_TRUNC,
    libc::O_APPEND,
    libc::O_DIRECTORY,
    libc::O_NOFOLLOW,
    libc::O_DIRECT,
    libc::O_NONBLOCK,
    libc::O_PATH,
    libc::O_TMPFILE,
    libc::O_SYNC,
    libc::O_NOATIME,
    libc::O_NOCTTY,
];
const OFFSETS: &[u64] = &[
    0,
    1,
    4095,
    4096,
    8192,
    2 << 20,
    (2 << 20) - 4096,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 4095,
];
const SIZES: &[u32] = &[
    0,
    1,
    16,
    4096,
    8192,
    0x1_0000,
    1 << 20,
    (1 << 20) + 1,
    u32::MAX,
];

/// What the guest has learned from replies: nodes and file handles.
pub struct Known {
    pub nodes: Vec<u64>,
    pub fhs: Vec<u64>,
    pub unique: u64,
}

impl Default for Known {
    fn default() -> Self {
        Known {
            nodes: vec![1],
            fhs: Vec::new(),
            unique: 2,
        }
    }
}

fn remember(list: &mut Vec<u64>, keep_first: bool, v: u64) {
    if list.contains(&v) {
        return;
    }
    if list.len() >= 16 {
        list.remove(usize::from(keep_first));
    }
    list.push(v);
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const OUT_HEADER: usize = size_of::<OutHeader>();
const ENTRY_OUT: usize = size_of::<EntryOut>();
const _: () = assert!(OUT_HEADER == 16 && ENTRY_OUT == 128 && size_of::<Dirent>() == 24);

impl Known {
    pub fn node(&mut self, inp: &mut Input<'_>) -> u64 {
        if inp.chance(230) {
            inp.pick(&self.nodes)
        } else {
            inp.u64_from(&[0, 1, 2, u64::MAX])
        }
    }

    pub fn fh(&mut self, inp: &mut Input<'_>) -> u64 {
        if !self.fhs.is_empty() && inp.chance(230) {
            inp.pick(&self.fhs)
        } else {
            inp.u64_from(&[0, 1, 2, u64::MAX])
        }
    }

    /// Learns nodes and handles from a reply to `opcode`.
    pub fn learn(&mut self, opcode: u32, reply: &[u8]) {
        if reply.len() < OUT_HEADER || le_u32(reply, offset_of!(OutHeader, error)) != Some(0) {
            return;
        }
        match opcode {
            LOOKUP | SYMLINK | MKNOD | MKDIR | LINK | CREATE | TMPFILE => {
                let entry = OUT_HEADER + offset_of!(EntryOut, nodeid);
                if let Some(n) = le_u64(reply, entry).filter(|&n| n != 0) {
                    remember(&mut self.nodes, true, n);
                }
                if opcode == CREATE || opcode == TMPFILE {
                    // CREATE's reply: fuse_entry_out, then fuse_open_out.
                    let fh = OUT_HEADER + ENTRY_OUT + offset_of!(OpenOut, fh);
                    if let Some(fh) = le_u64(reply, fh) {
                        remember(&mut self.fhs, false, fh);
                    }
                }
            }
            OPEN | OPENDIR => {
                if let Some(fh) = le_u64(reply, OUT_HEADER + offset_of!(OpenOut, fh)) {
                    remember(&mut self.fhs, false, fh);
                }
            }
            READDIRPLUS => {
                // struct fuse_direntplus { entry_out; dirent; name[] },
                // each padded to 8 bytes.
                let mut at = OUT_HEADER;
                while let (Some(node), Some(namelen)) = (
                    le_u64(reply, at + offset_of!(EntryOut, nodeid)),
                    le_u32(reply, at + ENTRY_OUT + offset_of!(Dirent, namelen)),
                ) {
                    if node != 0 {
                        remember(&mut self.nodes, true, node);
                    }
                    let len =
                        (ENTRY_OUT + size_of::<Dirent>() + namelen as usize).next_multiple_of(8);
                    at += len;
                }
            }
            _ => {}
        }
    }
}

struct Body<'i, 'a> {
    v: Vec<u8>,
    inp: &'i mut Input<'a>,
}

impl Body<'_, '_> {
    fn u32(&mut self, v: u32) {
        self.v.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.v.extend_from_slice(&v.to_le_bytes());
    }
    fn raw32(&mut self) {
        let v = self.inp.u32();
        self.u32(v);
    }
    fn raw64(&mut self) {
        let v = self.inp.u64();
        self.u64(v);
    }
    fn small32(&mut self, items: &[u32]) {
        let v = self.inp.u32_from(items);
        self.u32(v);
    }
    fn off(&mut self) {
        let v = self.inp.u64_from(OFFSETS);
        self.u64(v);
    }
    fn size(&mut self) {
        let v = self.inp.u32_from(SIZES);
        self.u32(v);
    }
    fn mode(&mut self) {
        let v = self.inp.u32_from(MODES);
        self.u32(v);
    }
    fn open_flags(&mut self) {
        let mut f = self
            .inp
            .pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR]);
        let bits = self.inp.u16();
        for (i, b) in OPEN_BITS.iter().enumerate() {
            if bits & (1 << i) != 0 {
                f |= b;
            }
        }
        if self.inp.chance(8) {
            f = self.inp.u32() as i32;
        }
        self.u32(f as u32);
    }
    fn text(&mut self, dictionary: &[&[u8]]) {
        match self.inp.below(16) {
            0 => {
                let raw = self.inp.bytes(300);
                self.v.extend_from_slice(raw);
            }
            1 => {
                let n = self.inp.pick(&[255usize, 256, 4095, 4096]);
                self.v.extend(std::iter::repeat_n(b'n', n));
            }
            _ => {
                let w = self.inp.pick(dictionary);
                self.v.extend_from_slice(w);
            }
        }
        if !self.inp.chance(8) {
            self.v.push(0);
        }
    }
    fn name(&mut self) {
        self.text(NAMES);
    }
    fn data(&mut self, max: usize) -> usize {
        let d = self.inp.bytes(max);
        self.v.extend_from_slice(d);
        d.len()
    }
}

/// A FUSE request: (opcode, bytes).
pub fn request(inp: &mut Input<'_>, known: &mut Known) -> (u32, Vec<u8>) {
    let opcode = if inp.chance(240) {
        inp.pick(OPCODES)
    } else {
        inp.u32()
    };
    let nodeid = known.node(inp);
    let mut body = body(inp, known, opcode);
    // README.md, "Findings", with `FERRY_FUZZ_SKIP_KNOWN`: no O_PATH handles
    // (4: READ or WRITE on one closed its descriptor); no umask bits over
    // the file type in MKNOD (6: they turned a type the policy let through
    // into a device); no xattr or readdir reply sizes above 128 KiB (8:
    // allocated as asked, up to 4 GiB).
    let clear = |body: &mut Vec<u8>, at: usize, bits: u32| {
        if let Some(w) = body.get_mut(at..at + 4) {
            let v = u32::from_le_bytes((&*w).try_into().unwrap()) & !bits;
            w.copy_from_slice(&v.to_le_bytes());
        }
    };
    let skip = crate::sandbox::skip;
    match opcode {
        OPEN | OPENDIR | CREATE | TMPFILE if skip(4) => clear(&mut body, 0, libc::O_PATH as u32),
        MKNOD if skip(6) => clear(&mut body, 8, libc::S_IFMT),
        GETXATTR | LISTXATTR if skip(8) => clear(&mut body, 0, !0x1_ffff),
        READDIR | READDIRPLUS if skip(8) => clear(&mut body, 16, !0x1_ffff),
        _ => {}
    }
    let mut req =
        ferry_devices::virtio::fs::harness::fuse_request(opcode, known.unique, nodeid, &body);
    known.unique += 1;
    if inp.chance(24) {
        let (at, v) = match inp.below(4) {
            0 => (offset_of!(InHeader, len), inp.u32()),
            1 => (
                offset_of!(InHeader, uid),
                inp.u32_from(&[1000, 65534, u32::MAX]),
            ),
            2 => (
                offset_of!(InHeader, gid),
                inp.u32_from(&[1000, 65534, u32::MAX]),
            ),
            _ => (offset_of!(InHeader, pid), inp.u32()),
        };
        req[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    (opcode, req)
}

fn body(inp: &mut Input<'_>, known: &mut Known, opcode: u32) -> Vec<u8> {
    if inp.chance(16) {
        return inp.bytes(4096).to_vec();
    }
    let mut b = Body { v: Vec::new(), inp };
    match opcode {
        LOOKUP | UNLINK | RMDIR => b.name(),
        FORGET => b.off(),
        GETATTR => {
            b.small32(&[0, 1]); // FUSE_GETATTR_FH
            b.u32(0);
            let fh = known.fh(b.inp);
            b.u64(fh);
        }
        SETATTR => {
            // valid: MODE 1, UID 2, GID 4, SIZE 8, ATIME 16, MTIME 32, FH 64,
            // ATIME_NOW 128, MTIME_NOW 256, LOCKOWNER 512, CTIME 1024,
            // KILL_SUIDGID 2048
            b.small32(&[1, 2, 4, 6, 8, 8 | 64, 16 | 32, 128 | 256, 1024, 2048, 0xfff]);
            b.u32(0);
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off(); // size
            b.raw64(); // lock_owner
            for _ in 0..3 {
                b.raw64(); // atime, mtime, ctime
            }
            for _ in 0..3 {
                b.small32(&[0, 999_999_999, 1_000_000_000]);
            }
            b.mode();
            b.u32(0);
            b.small32(&[0, 1000, u32::MAX]); // uid
            b.small32(&[0, 1000, u32::MAX]); // gid
            b.u32(0);
        }
        READLINK | STATFS | DESTROY => {}
        SYMLINK => {
            b.name();
            b.text(LINK_TARGETS);
        }
        MKNOD => {
            b.mode();
            b.small32(&[0, 0x0800, 0x0103]); // rdev
            b.small32(&[0, 0o022, 0o777]); // umask
            b.u32(0);
            b.name();
        }
        MKDIR => {
            b.mode();
            b.small32(&[0, 0o022, 0o777]);
            b.name();
        }
        RENAME | RENAME2 | LINK => {
            let node = known.node(b.inp);
            b.u64(node);
            if opcode == RENAME2 {
                // NOREPLACE 1, EXCHANGE 2, WHITEOUT 4
                b.small32(&[0, 1, 2, 4, 3]);
                b.u32(0);
            }
            b.name();
            if opcode != LINK {
                b.name();
            }
        }
        OPEN | OPENDIR => {
            b.open_flags();
            b.raw32(); // open_flags (FUSE_OPEN_KILL_SUIDGID ...)
        }
        READ | READDIR | READDIRPLUS | WRITE => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off();
            let size_at = b.v.len();
            b.size();
            b.raw32(); // read_flags / write_flags
            b.raw64(); // lock_owner
            b.small32(&[0, libc::O_RDWR as u32, libc::O_APPEND as u32]);
            b.u32(0);
            if opcode == WRITE {
                let n = b.data(0x1_0000);
                if !b.inp.chance(16) {
                    b.v[size_at..size_at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                }
            }
        }
        RELEASE | RELEASEDIR => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.raw32();
            b.small32(&[0, 1, 2]); // RELEASE_FLUSH, FLOCK_UNLOCK
            b.raw64();
        }
        FSYNC | FSYNCDIR => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.small32(&[0, 1]);
            b.u32(0);
        }
        SETXATTR => {
            let size_at = b.v.len();
            b.u32(0);
            b.small32(&[0, 1, 2]); // XATTR_CREATE, XATTR_REPLACE
            b.text(XATTR_NAMES);
            let n = b.data(300);
            let size = if b.inp.chance(16) {
                b.inp.u32()
            } else {
                n as u32
            };
            b.v[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
        }
        GETXATTR | LISTXATTR => {
            b.size();
            b.u32(0);
            if opcode == GETXATTR {
                b.text(XATTR_NAMES);
            }
        }
        REMOVEXATTR => b.text(XATTR_NAMES),
        FLUSH => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.u32(0);
            b.u32(0);
            b.raw64();
        }
        INIT => {
            b.small32(&[7, 6, 8, 0]);
            b.small32(&[31, 36, 38, 0, 12]);
            b.small32(&[0x20000, 0]);
            let flags = b.inp.u32();
            b.u32(flags);
            if flags & (1 << 30) != 0 || b.inp.chance(16) {
                // INIT_EXT: struct fuse_init_in's flags2 and unused[11]
                b.raw32();
                b.v.extend_from_slice(&[0; 44]);
            }
        }
        GETLK | SETLK | SETLKW => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.raw64(); // owner
            b.off(); // start
            b.off(); // end
            b.small32(&[
                libc::F_RDLCK as u32,
                libc::F_WRLCK as u32,
                libc::F_UNLCK as u32,
            ]);
            b.raw32(); // pid
            b.small32(&[0, 1]); // FUSE_LK_FLOCK
            b.u32(0);
        }
        ACCESS => {
            b.small32(&[0, 1, 2, 4, 7]);
            b.u32(0);
        }
        CREATE | TMPFILE => {
            b.open_flags();
            b.mode();
            b.small32(&[0, 0o022]);
            b.raw32();
            b.name();
        }
        INTERRUPT => {
            let u = b.inp.u64_from(&[known.unique - 1, 0]);
            b.u64(u);
        }
        BMAP => {
            b.raw64();
            b.size();
            b.u32(0);
        }
        IOCTL => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.raw32(); // flags
            b.raw32(); // cmd
            b.raw64(); // arg
            b.size(); // in_size
            b.size(); // out_size
            b.data(256);
        }
        POLL => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.raw64();
            b.raw32();
            b.raw32();
        }
        NOTIFY_REPLY => {
            b.data(256);
        }
        BATCH_FORGET => {
            let n = b.inp.below(5);
            let count = if b.inp.chance(16) {
                b.inp.u32()
            } else {
                n as u32
            };
            b.u32(count);
            b.u32(0);
            for _ in 0..n {
                let node = known.node(b.inp);
                b.u64(node);
                b.off();
            }
        }
        FALLOCATE => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off();
            b.off();
            // KEEP_SIZE 1, PUNCH_HOLE 2, COLLAPSE_RANGE 8, ZERO_RANGE 0x10,
            // INSERT_RANGE 0x20
            b.small32(&[0, 1, 3, 8, 0x10, 0x20]);
            b.u32(0);
        }
        LSEEK => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off();
            b.small32(&[0, 1, 2, 3, 4]); // SET, CUR, END, DATA, HOLE
            b.u32(0);
        }
        COPY_FILE_RANGE => {
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off();
            let node = known.node(b.inp);
            b.u64(node);
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off();
            b.off(); // len
            b.raw64();
        }
        SETUPMAPPING => {
            // struct fuse_setupmapping_in { fh, foffset, len, flags, moffset }
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.off();
            let len = b.inp.u64_from(&[4096, 2 << 20, 0, 8192, u64::MAX - 4095]);
            b.u64(len);
            let flags = b.inp.u64_from(&[1, 2, 3, 0]);
            b.u64(flags);
            b.off();
        }
        REMOVEMAPPING => {
            // struct fuse_removemapping_in { count } then { moffset, len }
            let n = b.inp.below(4);
            let count = if b.inp.chance(16) {
                b.inp.u32()
            } else {
                n as u32
            };
            b.u32(count);
            for _ in 0..n {
                b.off();
                let len = b.inp.u64_from(&[4096, 2 << 20, u64::MAX, 0]);
                b.u64(len);
            }
        }
        SYNCFS => b.u64(0),
        STATX => {
            b.raw32();
            b.u32(0);
            let fh = known.fh(b.inp);
            b.u64(fh);
            b.raw32();
            b.raw32();
        }
        _ => {
            b.data(512);
        }
    }
    let mut v = b.v;
    match inp.below(32) {
        0 => {
            let keep = inp.below(v.len() + 1);
            v.truncate(keep);
        }
        1 => v.extend_from_slice(inp.bytes(64)),
        _ => {}
    }
    v
}
