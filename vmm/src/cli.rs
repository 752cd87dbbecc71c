//! Command line: flags in the style of Cloud Hypervisor, checked before any
//! KVM object exists so that bad input is a one-line error.

use std::path::PathBuf;

use clap::Parser;

use ferry_arch::mptable::MAX_CPUS;

/// Smallest guest Ferry will build: the kernel and its page tables need room.
pub const MIN_MEMORY: u64 = 32 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "A small KVM hypervisor that boots Linux and shares host directories with it",
    after_help = "The guest leaves by writing its exit status to I/O port 0xf4 \
                  (Ferry exits with that status), by rebooting (exit 0) or by a \
                  triple fault (exit 0). Ferry's own failures exit 1; usage errors exit 2."
)]
pub struct Cli {
    /// Kernel to boot: a bzImage, or an ELF vmlinux (PVH entry if it has one).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initramfs (cpio archive, optionally compressed) handed to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Extra kernel command line, appended to Ferry's base
    /// "console=ttyS0 reboot=k panic=-1 acpi=off" (later words win).
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,

    /// Number of vCPUs (1 to 32).
    #[arg(long, default_value_t = 1, value_parser = parse_cpus)]
    pub cpus: u8,

    /// Guest RAM, e.g. 256M, 2G, 1536M (suffixes K, M, G, T; bytes if none).
    #[arg(long, default_value = "512M", value_parser = parse_memory)]
    pub memory: u64,

    /// Share a host directory over virtio-fs (repeatable):
    /// tag=NAME,path=DIR[,queues=N][,readonly=on][,cache=auto|always|never]
    /// [,dax=on][,cache-size=SIZE (DAX window, default 1G)].
    /// In the guest: mount -t virtiofs NAME /mnt (-o dax with a DAX window).
    #[arg(long = "fs", value_name = "OPTIONS", value_parser = crate::fs_option::parse_fs)]
    pub fs: Vec<ferry_devices::virtio::fs::FsShare>,

    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, default_value = "warn", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,

    /// End the VM when no vCPU has made progress (all halted with interrupts
    /// off) for this many seconds. 0 turns the check off.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub stall_timeout: u64,
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a vCPU count (1 to {MAX_CPUS})"))?;
    if n == 0 || n > MAX_CPUS {
        return Err(format!("{n} vCPUs: must be 1 to {MAX_CPUS}"));
    }
    Ok(n)
}

/// Parses `256M`, `2G`, `1048576`, ... into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 256M, 2G)"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "'{s}': unknown size suffix '{suffix}' (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_memory(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "{s}: guest memory must be at least {}M",
            MIN_MEMORY >> 20
        ));
    }
    if bytes % 4096 != 0 {
        return Err(format!("{s}: guest memory must be a multiple of 4K"));
    }
    let host = host_memory();
    if bytes > host {
        return Err(format!(
            "{s}: more than this host's {} MiB of RAM",
            host >> 20
        ));
    }
    Ok(bytes)
}

/// Total RAM of the host, the upper bound for a guest.
fn host_memory() -> u64 {
    // SAFETY: sysinfo only writes into the struct we hand it.
    unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut info) == 0 {
            return (info.totalram as u64).saturating_mul(u64::from(info.mem_unit));
        }
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1536MiB"), Ok(1536 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("banana").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn memory_bounds() {
        assert!(parse_memory("0").unwrap_err().contains("at least"));
        assert!(parse_memory("1T").unwrap_err().contains("host"));
        assert!(parse_memory("banana").is_err());
        assert!(parse_memory("64M").is_ok());
        assert!(parse_memory("100001").is_err());
    }

    #[test]
    fn cpu_bounds() {
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("33").is_err());
        assert!(parse_cpus("x").is_err());
        assert_eq!(parse_cpus("32"), Ok(32));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
