//! Puts the kernel, its command line and the initramfs into guest memory
//! and writes what the kernel reads at entry.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress};

use ferry_arch::boot::{place_initrd, write_pvh_start_info, write_zero_page, Initrd};
use ferry_arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START};
use ferry_arch::regs::BootProtocol;

use crate::memory::GuestMemoryFerry;

/// Ferry's part of every command line: serial console, reboot through the
/// i8042 (which ends the VM), reboot at once on panic, and no ACPI probing
/// (Ferry gives its guests none: they use the MP table).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 acpi=off";

/// Entry offset of the 64-bit boot protocol in a loaded bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest initramfs address for kernels that do not say (ELF, PVH).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open kernel {0}: {1}")]
    OpenKernel(PathBuf, std::io::Error),
    #[error("{0} is not a kernel Ferry can boot (neither a bzImage nor an ELF vmlinux): {1}")]
    NotAKernel(PathBuf, loader::Error),
    #[error("cannot read initramfs {0}: {1}")]
    OpenInitramfs(PathBuf, std::io::Error),
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory below {max:#x}; give the guest more memory")]
    InitramfsTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("cannot copy initramfs into guest memory: {0}")]
    CopyInitramfs(vm_memory::GuestMemoryError),
    #[error("kernel command line: {0} (at most {max} bytes)", max = CMDLINE_MAX_SIZE - 1)]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(loader::Error),
    #[error(transparent)]
    Boot(#[from] ferry_arch::Error),
}

/// Where and how the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    pub protocol: BootProtocol,
    pub entry: GuestAddress,
    /// Zero page or PVH start info address.
    pub boot_info: GuestAddress,
}

pub fn build_cmdline(extra: &str) -> Result<Cmdline, LoadError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoadError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(LoadError::Cmdline)?;
    let extra = extra.trim();
    if !extra.is_empty() {
        cmdline.insert_str(extra).map_err(LoadError::Cmdline)?;
    }
    Ok(cmdline)
}

fn is_elf(file: &mut File) -> bool {
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF"
}

pub fn load_kernel(
    mem: &GuestMemoryFerry,
    mem_size: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<KernelEntry, LoadError> {
    let open_err = |e| LoadError::OpenKernel(kernel.into(), e);
    let mut file = File::open(kernel).map_err(open_err)?;
    if !file.metadata().map_err(open_err)?.is_file() {
        return Err(open_err(std::io::Error::other("not a regular file")));
    }
    let highmem = Some(GuestAddress(HIMEM_START));
    let elf = is_elf(&mut file);
    let not_a_kernel = |e| LoadError::NotAKernel(kernel.into(), e);
    let loaded = if elf {
        Elf::load(mem, None, &mut file, highmem).map_err(not_a_kernel)?
    } else {
        BzImage::load(mem, None, &mut file, highmem).map_err(not_a_kernel)?
    };

    let (protocol, entry) = match (elf, loaded.pvh_boot_cap) {
        (true, PvhBootCapability::PvhEntryPresent(addr)) => (BootProtocol::Pvh, addr),
        (true, _) => (BootProtocol::Linux64, loaded.kernel_load),
        (false, _) => (
            BootProtocol::Linux64,
            loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
        ),
    };
    log::info!(
        "kernel {}: {} entry at {:#x}",
        kernel.display(),
        if protocol == BootProtocol::Pvh {
            "PVH"
        } else {
            "64-bit"
        },
        entry.raw_value()
    );

    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(LoadError::WriteCmdline)?;
    let cmdline_size = cmdline
        .as_cstring()
        .map_err(LoadError::Cmdline)?
        .as_bytes_with_nul()
        .len();

    let addr_max = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let initrd = match initramfs {
        Some(path) => Some(load_initramfs(
            mem,
            mem_size,
            path,
            loaded.kernel_end,
            addr_max,
        )?),
        None => None,
    };

    match protocol {
        BootProtocol::Linux64 => {
            write_zero_page(mem, loaded.setup_header, cmdline_size, initrd, mem_size)?
        }
        BootProtocol::Pvh => write_pvh_start_info(mem, initrd, mem_size)?,
    }
    Ok(KernelEntry {
        protocol,
        entry,
        boot_info: GuestAddress(ZERO_PAGE_START),
    })
}

fn load_initramfs(
    mem: &GuestMemoryFerry,
    mem_size: u64,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
) -> Result<Initrd, LoadError> {
    let open_err = |e| LoadError::OpenInitramfs(path.into(), e);
    let mut file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(open_err(std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    let too_large = || LoadError::InitramfsTooLarge {
        path: path.into(),
        size,
        max: addr_max,
    };
    let addr = place_initrd(mem_size, kernel_end, addr_max, size).ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(LoadError::CopyInitramfs)?;
    Ok(Initrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_starts_with_base_and_appends() {
        let c = build_cmdline("  quiet init=/bin/sh ").unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(s, format!("{BASE_CMDLINE} quiet init=/bin/sh"));
    }

    #[test]
    fn overlong_cmdline_is_an_error() {
        assert!(build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("ferry-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let err = load_kernel(&mem, 64 << 20, &path, None, &build_cmdline("").unwrap());
        assert!(matches!(err, Err(LoadError::NotAKernel(..))), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
