//! What kernel a file holds: its release (`uname -r`), read from the image
//! itself before any KVM work, so that a file that is not a kernel gets one
//! clear line, and a distribution kernel can be matched with its modules
//! (`/lib/modules/RELEASE`).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The bzImage setup header's fields (Documentation/arch/x86/boot.rst).
const BOOT_FLAG_OFFSET: usize = 0x1fe;
const BOOT_FLAG: [u8; 2] = [0x55, 0xaa];
const HEADER_MAGIC_OFFSET: usize = 0x202;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// A u16: the version string's offset, less 0x200.
const KERNEL_VERSION_OFFSET: usize = 0x20e;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// The start of `/proc/version`, which every kernel carries.
const LINUX_BANNER: &[u8] = b"Linux version ";
/// Read at most this much of an image looking for its release.
const SCAN_LIMIT: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a Linux kernel image (neither a bzImage nor an ELF vmlinux)", .0.display())]
    NotAKernel(PathBuf),
    #[error("{}: a kernel image with no readable version string", .0.display())]
    NoVersion(PathBuf),
}

/// The release of the kernel in `path`: `6.1.0-28-amd64`, say.
pub fn release(path: &Path) -> Result<String, KernelImageError> {
    let read_err = |source| KernelImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(SCAN_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if is_bzimage(&bytes) {
        bzimage_release(&bytes).ok_or_else(|| KernelImageError::NoVersion(path.to_path_buf()))
    } else if bytes.starts_with(ELF_MAGIC) {
        banner_release(&bytes).ok_or_else(|| KernelImageError::NoVersion(path.to_path_buf()))
    } else {
        Err(KernelImageError::NotAKernel(path.to_path_buf()))
    }
}

fn is_bzimage(b: &[u8]) -> bool {
    b.get(BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2) == Some(&BOOT_FLAG[..])
        && b.get(HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4) == Some(&HEADER_MAGIC[..])
}

/// The header's version string ("6.1.0-28-amd64 (debian-kernel@...) #1
/// SMP ..."): its first word.
fn bzimage_release(b: &[u8]) -> Option<String> {
    let at = b.get(KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2)?;
    let offset = usize::from(u16::from_le_bytes([at[0], at[1]])) + 0x200;
    first_word(b.get(offset..)?)
}

/// The release after the `Linux version ` banner (an ELF vmlinux keeps
/// it uncompressed).
fn banner_release(b: &[u8]) -> Option<String> {
    let at = b
        .windows(LINUX_BANNER.len())
        .position(|w| w == LINUX_BANNER)?;
    first_word(&b[at + LINUX_BANNER.len()..])
}

fn first_word(b: &[u8]) -> Option<String> {
    let end = b
        .iter()
        .position(|&c| c == b' ' || c == 0)
        .unwrap_or(b.len())
        .min(64);
    let word = std::str::from_utf8(&b[..end]).ok()?;
    let plausible = !word.is_empty()
        && word.starts_with(|c: char| c.is_ascii_digit())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+~".contains(c));
    plausible.then(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-kimage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A bzImage's first page as the boot protocol lays it out.
    fn bzimage_header(version: &str) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2].copy_from_slice(&BOOT_FLAG);
        b[HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4].copy_from_slice(HEADER_MAGIC);
        let at = 0x3c0usize;
        let rel = u16::try_from(at - 0x200).unwrap().to_le_bytes();
        b[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2].copy_from_slice(&rel);
        b[at..at + version.len()].copy_from_slice(version.as_bytes());
        b
    }

    #[test]
    fn a_bzimage_header_names_its_release() {
        let p = write(
            "bz",
            &bzimage_header("6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP"),
        );
        assert_eq!(release(&p).unwrap(), "6.1.0-28-amd64");
    }

    #[test]
    fn an_elf_vmlinux_names_its_release_through_the_banner() {
        let mut b = ELF_MAGIC.to_vec();
        b.extend_from_slice(&[0; 100]);
        b.extend_from_slice(b"Linux version 6.12.9-ferry (root@host) (gcc) #1\0");
        assert_eq!(release(&write("elf", &b)).unwrap(), "6.12.9-ferry");
    }

    #[test]
    fn other_files_are_not_kernels() {
        assert!(matches!(
            release(&write("text", b"hello, not a kernel")),
            Err(KernelImageError::NotAKernel(_))
        ));
        let mut bad = bzimage_header("");
        bad[0x3c0] = b'!';
        assert!(matches!(
            release(&write("badver", &bad)),
            Err(KernelImageError::NoVersion(_))
        ));
        assert!(matches!(
            release(Path::new("/no/such/kernel")),
            Err(KernelImageError::Read { .. })
        ));
    }
}
