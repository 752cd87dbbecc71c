//! Command line: flags in the style of Cloud Hypervisor, checked before any
//! KVM object exists so that bad input is a one-line error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use ferry_arch::mptable::MAX_CPUS;

pub use crate::size::{parse_size, SizeError};

/// Smallest guest Ferry will build: the kernel and its page tables need room.
pub const MIN_MEMORY: u64 = 32 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "A small KVM hypervisor that boots Linux and shares host directories with it",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "The guest leaves by writing its exit status to I/O port 0xf4 \
                  (Ferry exits with that status), by rebooting (exit 0) or by a \
                  triple fault (exit 0). Ferry's own failures exit 1; usage errors exit 2."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub boot: BootArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one command in a throwaway microVM that sees the host's files:
    /// the host's / read-only, the current directory (and each --rw PATH)
    /// read-write at the same path. Exits with the command's status.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
}

const RUN_HELP: &str = "Exit status: the command's; 128+N if a signal N killed it; \
    124 when --timeout ends it; 125 when Ferry or the guest failed before the command \
    finished; 126 if the command cannot be executed; 127 if it is not found; 130/143 \
    when Ferry gets SIGINT/SIGTERM. The command reads Ferry's stdin (to its EOF); its \
    stdout and stderr arrive on Ferry's stdout and stderr, or, on a terminal (-t), \
    both on a pty as under ssh -t.";

/// `ferry --kernel ...`: boot a kernel with a console on the terminal.
#[derive(Args, Debug, Clone)]
pub struct BootArgs {
    /// Kernel to boot: a bzImage, or an ELF vmlinux (PVH entry if it has one).
    #[arg(long, value_name = "PATH", required = true)]
    pub kernel: Option<PathBuf>,

    /// Initramfs (cpio archive, optionally compressed) handed to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Extra kernel command line, appended to Ferry's base
    /// "console=ttyS0 reboot=k panic=-1 acpi=off" (later words win).
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,

    #[command(flatten)]
    pub machine: MachineArgs,
}

/// `ferry run [OPTIONS] -- CMD [ARGS...]`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Kernel to boot (default: the project's guest kernel, see README).
    /// Any x86-64 Linux image, a distribution's included
    /// (/boot/vmlinuz-VERSION): its modules for virtio-pci and virtio-fs
    /// come from /lib/modules/VERSION.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Take the kernel's modules from DIR instead of /lib/modules/VERSION:
    /// a kernel build tree (make modules) or an installed tree (make
    /// modules_install). Plain, .xz, .zst or .gz; each must be built for
    /// the kernel (its vermagic), or Ferry exits 125.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,

    /// Also share this host directory read-write at the same path, or at
    /// GUEST (an absolute path) with HOST:GUEST (repeatable). The current
    /// directory always is.
    #[arg(long, value_name = "PATH[:GUEST]", value_parser = parse_rw)]
    pub rw: Vec<RwArg>,

    /// Stop the VM and exit 124 after this long: 30s, 2m, 1h30m, 500ms
    /// (a bare number is seconds).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Extra kernel command line words.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,

    /// Make PATH writable in the guest, the changes kept in guest memory
    /// and dropped at exit (overlayfs, upper layer on tmpfs; repeatable).
    /// Added to the defaults: /etc /home /opt /root /srv /usr /var.
    #[arg(long, value_name = "PATH")]
    pub overlay: Vec<PathBuf>,

    /// No default overlays: the host's / is read-only in the guest except
    /// for the shares and each --overlay PATH.
    #[arg(long)]
    pub no_overlay: bool,

    /// Give the command a terminal (a pty in the guest) even when Ferry's
    /// stdin and stdout are not both terminals. Its stderr then joins
    /// stdout, as with `ssh -t`.
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,

    /// No terminal for the command even when Ferry runs on one: stdin is a
    /// pipe, stdout and stderr stay apart.
    #[arg(short = 'T', long)]
    pub no_tty: bool,

    /// Run the command as USER (a name or a numeric uid from this host's
    /// passwd) instead of as the caller. `--user root` is guest root with
    /// every capability (modprobe, mount, sysctl, bpf, netns); HOME, USER
    /// and LOGNAME follow the user. What guest root may do to host files:
    /// see README.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    #[command(flatten)]
    pub machine: MachineArgs,

    /// The command and its arguments, run in the current directory.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// One `--rw` value: a host directory and where the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RwArg {
    pub host: PathBuf,
    /// None: at the host path.
    pub guest: Option<PathBuf>,
}

/// `PATH` or `HOST:GUEST`. A value that names an existing host path is a
/// host path even if it holds a ':'; otherwise it splits at the last ':'
/// followed by '/'.
fn parse_rw(s: &str) -> Result<RwArg, String> {
    let whole = PathBuf::from(s);
    if whole.exists() {
        return Ok(RwArg {
            host: whole,
            guest: None,
        });
    }
    match s.rmatch_indices(":/").next() {
        Some((at, _)) if at > 0 => Ok(RwArg {
            host: PathBuf::from(&s[..at]),
            guest: Some(PathBuf::from(&s[at + 1..])),
        }),
        // A missing host path: plan_shares says so, naming it.
        _ => Ok(RwArg {
            host: whole,
            guest: None,
        }),
    }
}

/// The machine: CPUs, memory, shares, logging. Both ways of running have it.
#[derive(Args, Debug, Clone)]
pub struct MachineArgs {
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
    /// Under `ferry run` the guest mounts it at DIR itself, or at
    /// guest=/PATH.
    #[arg(long = "fs", value_name = "OPTIONS", value_parser = crate::fs_option::parse_fs_arg)]
    pub fs: Vec<crate::fs_option::FsArg>,

    /// Give the guest a network card (virtio-net). `user`: user-mode
    /// networking through passt (which must be installed): passt serves
    /// the guest its address, route and DNS by DHCP (`ferry run` takes
    /// them itself; another guest asks, e.g. with `ip=dhcp`), and the
    /// guest reaches what the host reaches, with no privilege on the host. `tap=NAME`: attach to the
    /// host's tap device NAME (make it for your user with `ip tuntap add
    /// NAME mode tap user $USER`; its addresses, bridge and DHCP server are
    /// the host's). Default: none.
    #[arg(long, value_name = "user|tap=NAME", value_parser = parse_net)]
    pub net: Option<NetMode>,

    /// Forward a host port to the guest (with --net user; repeatable), as
    /// podman -p: HOST_PORT:GUEST_PORT, /udp for UDP (default TCP). The
    /// host side listens on all the host's addresses.
    #[arg(long, value_name = "HOST:GUEST[/udp]", value_parser = parse_publish, requires = "net")]
    pub publish: Vec<Publish>,

    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, default_value = "warn", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,

    /// End the VM when no vCPU has made progress (all halted with interrupts
    /// off) for this many seconds. 0 turns the check off.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub stall_timeout: u64,

    /// Confine Ferry once the VM is set up: seccomp filters per thread
    /// role, Landlock limiting each file server to its share, no_new_privs.
    /// `off` is for debugging only.
    #[arg(long, default_value = "on", value_name = "on|off")]
    pub sandbox: crate::sandbox::SandboxMode,
}

/// `--publish`: a host port forwarded to a guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host: u16,
    pub guest: u16,
    pub udp: bool,
}

impl Publish {
    /// The passt options that make the forward.
    pub fn passt_args(&self) -> [String; 2] {
        let flag = if self.udp { "-u" } else { "-t" };
        [flag.into(), format!("{}:{}", self.host, self.guest)]
    }
}

fn parse_publish(s: &str) -> Result<Publish, String> {
    let (ports, udp) = match s.split_once('/') {
        None => (s, false),
        Some((ports, "tcp")) => (ports, false),
        Some((ports, "udp")) => (ports, true),
        Some((_, other)) => return Err(format!("'{other}': expected tcp or udp")),
    };
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("'{p}' is not a port (1 to 65535)")),
            Ok(n) => Ok(n),
        }
    };
    let (host, guest) = ports
        .split_once(':')
        .ok_or_else(|| format!("'{s}': expected HOST_PORT:GUEST_PORT[/udp]"))?;
    Ok(Publish {
        host: port(host)?,
        guest: port(guest)?,
        udp,
    })
}

/// `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// passt, started by Ferry.
    User,
    /// A tap device of the host, by name.
    Tap(String),
}

fn parse_net(s: &str) -> Result<NetMode, String> {
    match s.split_once('=') {
        None if s == "user" => Ok(NetMode::User),
        Some(("tap", name)) => {
            let max = crate::netif::MAX_NAME;
            if name.is_empty() || name.len() > max {
                Err(format!("'{name}': a tap name is 1 to {max} bytes"))
            } else if name.bytes().any(|b| b == b'/' || b <= b' ' || b == 0x7f) {
                Err(format!("'{name}': not an interface name"))
            } else {
                Ok(NetMode::Tap(name.to_string()))
            }
        }
        _ => Err(format!("'{s}': expected user or tap=NAME")),
    }
}

impl Cli {
    pub fn machine(&self) -> &MachineArgs {
        match &self.command {
            Some(Command::Run(run)) => &run.machine,
            None => &self.boot.machine,
        }
    }
}

/// Why a `--timeout` did not parse.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("'{text}' is not a duration (examples: 30s, 2m, 500ms): {source}")]
    NotADuration {
        text: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("'{0}': the timeout must be longer than 0")]
    Zero(String),
}

/// `30s`, `2m`, `1h30m`, `500ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t).map_err(|source| DurationError::NotADuration {
            text: s.to_string(),
            source,
        })?,
    };
    if d.is_zero() {
        return Err(DurationError::Zero(s.to_string()));
    }
    Ok(d)
}

/// Why a `--cpus` did not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpusError {
    #[error("'{0}' is not a vCPU count (1 to {MAX_CPUS})")]
    NotACount(String),
    #[error("{0} vCPUs: must be 1 to {MAX_CPUS}")]
    OutOfRange(u8),
}

fn parse_cpus(s: &str) -> Result<u8, CpusError> {
    let n: u8 = s.parse().map_err(|_| CpusError::NotACount(s.to_string()))?;
    if n == 0 || n > MAX_CPUS {
        return Err(CpusError::OutOfRange(n));
    }
    Ok(n)
}

/// Why a `--memory` was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("{0}: guest memory must be at least {min}M", min = MIN_MEMORY >> 20)]
    TooSmall(String),
    #[error("{0}: guest memory must be a multiple of 4K")]
    NotPageMultiple(String),
    #[error("{text}: more than this host's {host_mib} MiB of RAM")]
    MoreThanHost { text: String, host_mib: u64 },
}

fn parse_memory(s: &str) -> Result<u64, MemoryError> {
    let bytes = parse_size(s)?;
    if bytes < MIN_MEMORY {
        return Err(MemoryError::TooSmall(s.to_string()));
    }
    if bytes % 4096 != 0 {
        return Err(MemoryError::NotPageMultiple(s.to_string()));
    }
    let host = host_memory();
    if bytes > host {
        return Err(MemoryError::MoreThanHost {
            text: s.to_string(),
            host_mib: host >> 20,
        });
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
    fn net_modes_parse() {
        assert_eq!(parse_net("user"), Ok(NetMode::User));
        assert_eq!(parse_net("tap=tap0"), Ok(NetMode::Tap("tap0".into())));
        assert_eq!(
            parse_net("tap=sixteen-bytes-xx"),
            Err("'sixteen-bytes-xx': a tap name is 1 to 15 bytes".into())
        );
        assert!(parse_net("tap=fifteen-bytes-x").is_ok());
        for bad in ["tap=", "tap=a/b", "tap=a b", "bridge=br0", "users", "tap"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn published_ports_parse_as_podman_writes_them() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(p.passt_args(), ["-t".to_string(), "8080:80".into()]);
        let p = parse_publish("5353:53/udp").unwrap();
        assert_eq!(p.passt_args(), ["-u".to_string(), "5353:53".into()]);
        assert!(parse_publish("80:80/tcp").is_ok_and(|p| !p.udp));
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp", ":80", ""] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_bounds() {
        assert!(parse_memory("0")
            .unwrap_err()
            .to_string()
            .contains("at least 32M"));
        assert!(matches!(
            parse_memory("1T"),
            Err(MemoryError::MoreThanHost { .. })
        ));
        assert!(matches!(parse_memory("64K"), Err(MemoryError::TooSmall(_))));
        assert!(matches!(
            parse_memory("12Q"),
            Err(MemoryError::Size(SizeError::UnknownSuffix { .. }))
        ));
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
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3s").is_err());
    }

    #[test]
    fn run_takes_the_command_after_its_options() {
        let cli =
            Cli::try_parse_from(["ferry", "run", "--timeout", "5s", "--", "ls", "-l"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("not a run")
        };
        assert_eq!(run.command, ["ls", "-l"]);
        assert_eq!(run.timeout, Some(Duration::from_secs(5)));
        // Without `--` too, and options of the command stay its own.
        let cli = Cli::try_parse_from(["ferry", "run", "sh", "-c", "exit 7"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("not a run")
        };
        assert_eq!(run.command, ["sh", "-c", "exit 7"]);
        assert!(Cli::try_parse_from(["ferry", "run"]).is_err(), "no command");
        assert!(Cli::try_parse_from(["ferry"]).is_err(), "no kernel");
        assert!(Cli::try_parse_from(["ferry", "--kernel", "k"]).is_ok());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn rw_values_split_at_the_guest_path() {
        let tmp = std::env::temp_dir();
        let t = tmp.display().to_string();
        assert_eq!(
            parse_rw(&t),
            Ok(RwArg {
                host: tmp.clone(),
                guest: None
            })
        );
        assert_eq!(
            parse_rw(&format!("{t}:/srv/out")),
            Ok(RwArg {
                host: tmp.clone(),
                guest: Some("/srv/out".into())
            })
        );
        // An existing path with a ':' is a host path.
        let odd = tmp.join(format!("ferry-rw:/x-{}", std::process::id()));
        std::fs::create_dir_all(&odd).unwrap();
        let arg = parse_rw(&odd.display().to_string()).unwrap();
        assert_eq!((arg.host, arg.guest), (odd.clone(), None));
        let _ = std::fs::remove_dir_all(tmp.join("ferry-rw:"));
        // Nothing to split: left whole for the share planner to refuse.
        assert_eq!(parse_rw("missing").unwrap().guest, None);
        assert_eq!(parse_rw(":/x").unwrap().guest, None);
    }
}
