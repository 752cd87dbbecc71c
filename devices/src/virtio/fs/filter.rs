//! What Ferry decides before the FUSE server sees a request: requests that
//! would change a read-only share get EROFS, and device nodes are never
//! created on the host (a guest-made block device node in the share would
//! hand host processes a door to host disks): EPERM.

use fuse_backend_rs::abi::fuse_abi::{InHeader, OpenIn};
use fuse_backend_rs::transport::Reader;

// FUSE opcodes (include/uapi/linux/fuse.h).
const SETATTR: u32 = 4;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const WRITE: u32 = 16;
const SETXATTR: u32 = 21;
const REMOVEXATTR: u32 = 24;
const CREATE: u32 = 35;
const FALLOCATE: u32 = 43;
const RENAME2: u32 = 45;
const COPY_FILE_RANGE: u32 = 47;
const SETUPMAPPING: u32 = 48;
const REMOVEMAPPING: u32 = 49;
const TMPFILE: u32 = 51;
// FUSE_SETUPMAPPING_FLAG_WRITE; READ is 1 << 1.
const SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;

/// SETUPMAPPING or REMOVEMAPPING: changes what the DAX window shows.
pub fn changes_dax_mappings(opcode: u32) -> bool {
    opcode == SETUPMAPPING || opcode == REMOVEMAPPING
}

/// WRITE, SETATTR, FALLOCATE, COPY_FILE_RANGE: may make a file longer.
pub fn may_grow_file(opcode: u32) -> bool {
    matches!(opcode, SETATTR | WRITE | FALLOCATE | COPY_FILE_RANGE)
}

/// The errno to answer with instead of serving the request, if any.
pub fn refuse<S: vm_memory::bitmap::BitmapSlice>(
    header: &InHeader,
    body: &mut Reader<'_, S>,
    readonly: bool,
) -> Option<i32> {
    if header.opcode == MKNOD {
        // struct fuse_mknod_in { u32 mode; u32 rdev; u32 umask; u32 padding; }
        let mode = body.clone().read_obj::<u32>().unwrap_or(0);
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Some(libc::EPERM);
        }
    }
    (readonly && modifies_share(header, body)).then_some(libc::EROFS)
}

/// Whether a request would change the share. `body` is positioned just
/// after the header.
fn modifies_share<S: vm_memory::bitmap::BitmapSlice>(
    header: &InHeader,
    body: &mut Reader<'_, S>,
) -> bool {
    match header.opcode {
        SETATTR | SYMLINK | MKNOD | MKDIR | UNLINK | RMDIR | RENAME | LINK | WRITE | SETXATTR
        | REMOVEXATTR | CREATE | FALLOCATE | RENAME2 | COPY_FILE_RANGE | TMPFILE => true,
        OPEN => match body.read_obj::<OpenIn>() {
            Ok(open) => {
                let flags = open.flags as i32;
                flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
            }
            // Truncated: let the server reject it.
            Err(_) => false,
        },
        SETUPMAPPING => {
            // struct fuse_setupmapping_in { u64 fh; u64 foffset; u64 len; u64 flags; u64 moffset; }
            let mut words = [0u64; 4];
            for w in &mut words {
                match body.read_obj::<u64>() {
                    Ok(v) => *w = v,
                    Err(_) => return false,
                }
            }
            words[3] & SETUPMAPPING_FLAG_WRITE != 0
        }
        _ => false,
    }
}
