//! The system calls each thread role may make. Anything else traps
//! (SIGSYS) and stops Ferry with a report (see `sigsys`).
//!
//! The lists come from tracing Ferry through its integration tests
//! (strace, one role per thread name) and from reading the code paths
//! behind each call; arguments are checked where a call has a dangerous
//! use next to the needed one (ioctl, clone, prctl).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A thread's job, which decides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The event loop: console, signals, the watchdog, exit.
    Main,
    /// `KVM_RUN` and the device emulation behind guest port and MMIO exits.
    Vcpu,
    /// A virtio-fs queue worker (and the thread that starts them).
    FileServer,
    /// The virtio-net worker (and the thread that starts it): its queues
    /// and the backend's socket, nothing else.
    Network,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Main => "main loop",
            Role::Vcpu => "vCPU",
            Role::FileServer => "file server",
            Role::Network => "network",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// KVM's ioctl type byte (`KVMIO`).
const KVMIO: u64 = 0xAE;

/// Every thread: memory, futexes, signals, time, its own exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_restart_syscall,
];

/// The network worker: the backend socket (std's stream reads are
/// recvfrom) and the spawner's thread start (clone, checked below).
/// openat: the worker's first log line made one (glibc loading what it
/// formats with); Landlock gives this role no file at all, so it can only
/// fail.
const NETWORK: &[libc::c_long] = &[
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_clone3,
    libc::SYS_openat,
];

/// The vCPU: on top of COMMON, KVM's ioctls (checked below) and the
/// eventfds a device makes when the guest activates it.
const VCPU: &[libc::c_long] = &[libc::SYS_eventfd2, libc::SYS_dup3];

/// The main loop: its event loop, vCPU kicks, the terminal (checked
/// below), and removing `ferry run`'s spec directory at the end.
const MAIN: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_tgkill,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_unlinkat,
];

/// The file server: what fuse-backend-rs's passthrough file system does
/// for FUSE requests, DAX mappings, and thread starts (clone, checked
/// below).
const FILE_SERVER: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_flock,
    libc::SYS_copy_file_range,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_fsetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_setxattr,
    libc::SYS_getxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_lsetxattr,
    libc::SYS_lgetxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_fchdir,
    libc::SYS_umask,
    // Per-thread credentials of the requesting guest user.
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    // The parent's group while a guest user makes an inode in it.
    libc::SYS_getgroups,
    libc::SYS_setgroups,
    // CAP_FSETID dropped around writes that must clear setuid bits.
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_dup3,
    libc::SYS_clone3,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).context("seccomp condition")
}

/// ioctl requests of one type byte (bits 8..16 of the request).
fn ioctl_type(kind: u64) -> Result<SeccompRule> {
    Ok(SeccompRule::new(vec![cond(
        1,
        SeccompCmpOp::MaskedEq(0xff00),
        kind << 8,
    )?])?)
}

fn ioctl_request(request: u64) -> Result<SeccompRule> {
    Ok(SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, request)?])?)
}

fn prctl_rules() -> Result<Vec<SeccompRule>> {
    // PR_SET_NO_NEW_PRIVS: seccompiler sets it again before each filter it
    // installs (harmless: it only takes privileges away).
    [
        libc::PR_SET_NAME,
        libc::PR_GET_NAME,
        libc::PR_SET_NO_NEW_PRIVS,
    ]
    .into_iter()
    .map(|op| {
        Ok(SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::Eq,
            u64::from(op.unsigned_abs()), // PR_* numbers are small and positive
        )?])?)
    })
    .collect()
}

/// The allow-list of `role`, as rules by system call number.
pub(super) fn rules(role: Role) -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra = match role {
        Role::Main => MAIN,
        Role::Vcpu => VCPU,
        Role::FileServer => FILE_SERVER,
        Role::Network => NETWORK,
    };
    for &nr in COMMON.iter().chain(extra) {
        rules.insert(nr, Vec::new());
    }
    rules.insert(libc::SYS_prctl, prctl_rules()?);
    match role {
        Role::Vcpu => {
            rules.insert(libc::SYS_ioctl, vec![ioctl_type(KVMIO)?]);
        }
        Role::Main => {
            // Restoring the terminal at exit; its size on SIGWINCH.
            let tty = [
                libc::TCGETS,
                libc::TCSETS,
                libc::TCSETSW,
                libc::TCSETSF,
                libc::TIOCGWINSZ,
            ];
            let tty = tty.into_iter().map(ioctl_request);
            rules.insert(libc::SYS_ioctl, tty.collect::<Result<_>>()?);
        }
        Role::FileServer | Role::Network => {
            // Threads only (the spawner starting workers), never processes.
            let thread = libc::CLONE_THREAD as u64;
            rules.insert(
                libc::SYS_clone,
                vec![SeccompRule::new(vec![cond(
                    0,
                    SeccompCmpOp::MaskedEq(thread),
                    thread,
                )?])?],
            );
        }
    }
    Ok(rules)
}

/// The compiled filter of `role`.
pub(super) fn compile(role: Role) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(
        rules(role)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        ARCH,
    )
    .with_context(|| format!("seccomp filter for {role}"))?;
    filter
        .try_into()
        .with_context(|| format!("compiling the seccomp filter for {role}"))
}

/// clone3 answers ENOSYS (glibc then uses clone, whose flags the file
/// server's filter checks); everything else passes to the other filters.
pub(super) fn no_clone3() -> Result<BpfProgram> {
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .context("clone3 filter")?;
    filter.try_into().context("compiling the clone3 filter")
}
