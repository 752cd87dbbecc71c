//! The guest side of `ferry run`. Ferry's own binary is the guest's init:
//! the guest's root is the host's `/` (read-only over virtio-fs), so the
//! kernel runs `init=<path of this binary>` with the host's own libraries,
//! and nothing needs to be installed on the host beyond Ferry itself.
//!
//! As PID 1 it mounts what a Linux userland expects (proc, sys, dev, tmpfs
//! where programs write), mounts the read-write shares at their host paths,
//! runs the command as the caller's user in the caller's directory and
//! environment, relays its stdout and stderr through Ferry's output ports,
//! and reports its exit status through the exit port.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_devices::legacy::{
    EXIT_PORT, HOST_INPUT_CAPACITY, HOST_INPUT_EOF, HOST_INPUT_PORT, HOST_INPUT_PORT_COUNT,
    HOST_INPUT_SELECT_WINSIZE, HOST_INPUT_WINSIZE_GEN, HOST_STREAM_PORT,
};

use super::guest_net;
use super::spec::{RunSpec, SpecError};
use crate::control::signalfd_for;

/// Set on the kernel command line by `ferry run`; the kernel hands unknown
/// `NAME=value` words to init as environment variables.
pub const SPEC_ENV: &str = "FERRY_RUN_SPEC";

/// Ferry's ports as `out` takes them (below 0x100, checked when compiling).
const fn port(p: u64) -> u16 {
    assert!(p <= 0xff);
    #[allow(clippy::cast_possible_truncation)] // checked just above
    let p16 = p as u16;
    p16
}
const EXIT: u16 = port(EXIT_PORT);
const STDOUT_PORT: u16 = port(HOST_STREAM_PORT);
const STDERR_PORT: u16 = port(HOST_STREAM_PORT + 4);
const INPUT_STATUS_PORT: u16 = port(HOST_INPUT_PORT);
const INPUT_DATA_PORT: u16 = port(HOST_INPUT_PORT + 1);
const INPUT_SELECT_PORT: u16 = port(HOST_INPUT_PORT + 2);
/// The input port has no interrupt: while it is idle init looks again
/// after 1, 2, 4, 8 and then every 16 ms (a keystroke waits at most that).
const INPUT_IDLE_POLL_MAX_MS: i32 = 16;
/// Exit statuses of init itself, as GNU timeout and env use them.
pub const STATUS_SETUP_FAILED: i32 = 125;
const STATUS_NOT_EXECUTABLE: i32 = 126;
const STATUS_NOT_FOUND: i32 = 127;
const RELAY_CHUNK: usize = 64 << 10;

/// When this process is the guest's init under `ferry run`, does its job
/// and never returns; otherwise returns at once.
pub fn run_if_guest_init() {
    if std::process::id() != 1 {
        return;
    }
    let Some(spec_path) = std::env::var_os(SPEC_ENV) else {
        return;
    };
    // The ports first, so every later failure can be reported.
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let ports_ok = unsafe {
        libc::ioperm(HOST_INPUT_PORT, HOST_INPUT_PORT_COUNT, 1) == 0
            && libc::ioperm(u64::from(EXIT), 1, 1) == 0
            && libc::ioperm(u64::from(STDOUT_PORT), 8, 1) == 0
    };
    if !ports_ok {
        eprintln!("ferry-init: no access to Ferry's I/O ports; not running under ferry run?");
        reboot();
    }
    if Path::new(super::initramfs::MANIFEST).exists() {
        let e = stage_one();
        say(&format!("ferry-init: {e}\n"));
        out_bytes(EXIT, &STATUS_SETUP_FAILED.to_le_bytes()[..1]);
        reboot();
    }
    let status = match init(Path::new(&spec_path)) {
        Ok(status) => status,
        Err(e) => {
            say(&format!("ferry-init: {e}\n"));
            STATUS_SETUP_FAILED
        }
    };
    // Data the command wrote through mmap or a cache must reach the host
    // before Ferry exits.
    // SAFETY: no arguments.
    unsafe { libc::sync() };
    // An exit status is one byte, as for any process.
    out_bytes(EXIT, &status.to_le_bytes()[..1]);
    reboot();
}

/// Init from Ferry's own initramfs (a distribution kernel): loads the
/// modules the manifest lists, mounts the root share, makes it the root
/// and runs Ferry from it as init again. Returns only on failure.
fn stage_one() -> String {
    let manifest = match std::fs::read_to_string(super::initramfs::MANIFEST) {
        Ok(m) => m,
        Err(e) => return format!("{}: {e}", super::initramfs::MANIFEST),
    };
    let mut exe = None;
    for line in manifest.lines() {
        match line.split_once(' ') {
            Some(("module", path)) => {
                if let Err(e) = load_module(Path::new(path)) {
                    return format!("loading module {path}: {e}");
                }
            }
            Some(("exec", path)) => exe = Some(PathBuf::from(path)),
            _ => {}
        }
    }
    let Some(exe) = exe else {
        return "the initramfs names no init to run".into();
    };
    let root = Path::new("/newroot");
    // The device may still be probing when the modules are in.
    let mut tries = 0;
    loop {
        match mount(super::ROOT_TAG, root, "virtiofs", libc::MS_RDONLY, "") {
            Ok(()) => break,
            Err(e)
                if tries < 300
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::ENODEV | libc::ENOENT | libc::ENXIO)
                    ) =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return format!("mounting the root share: {e}"),
        }
    }
    let Ok(dot) = cstring(b".") else {
        return "no '.'".into();
    };
    let Ok(exe_c) = cstring(exe.as_os_str().as_bytes()) else {
        return format!("{}: not a path", exe.display());
    };
    // SAFETY: chdir, mount(MS_MOVE), chroot and execv with valid strings;
    // execv returns only on failure.
    unsafe {
        if std::env::set_current_dir(root).is_err()
            || libc::mount(
                dot.as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) != 0
            || libc::chroot(dot.as_ptr()) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return format!(
                "switching to the root share: {}",
                io::Error::last_os_error()
            );
        }
        let argv = [exe_c.as_ptr(), std::ptr::null()];
        libc::execv(exe_c.as_ptr(), argv.as_ptr());
    }
    format!(
        "running {} from the root share: {}",
        exe.display(),
        io::Error::last_os_error()
    )
}

/// Loads one kernel module from a file; one already loaded is fine.
fn load_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: finit_module reads the open file; the parameters are an
    // empty string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn reboot() -> ! {
    // SAFETY: ends the guest; Ferry stops the VM on the reset.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    loop {
        std::thread::park();
    }
}

/// Writes `bytes` to an output port, four at a time.
fn out_bytes(port: u16, bytes: &[u8]) {
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        // SAFETY: port I/O to a port ioperm granted; no memory is touched.
        unsafe {
            std::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack))
        };
    }
    for &b in words.remainder() {
        // SAFETY: as above.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") port, in("al") b, options(nomem, nostack))
        };
    }
}

/// Reads a 4-byte input port.
fn in_u32(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O from a port ioperm granted; no memory is touched.
    unsafe { std::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack)) };
    v
}

/// Fills `buf` from a byte port with one `rep insb` (KVM splits it into
/// exits of up to a kilobyte each).
fn ins_bytes(port: u16, buf: &mut [u8]) {
    // SAFETY: writes exactly buf.len() bytes at buf (the direction flag is
    // clear, as the ABI guarantees), from a port ioperm granted.
    unsafe {
        std::arch::asm!(
            "rep insb",
            inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") buf.len() => _,
            in("dx") port,
            options(nostack)
        )
    };
}

/// A message from init on Ferry's stderr.
fn say(msg: &str) {
    out_bytes(STDERR_PORT, msg.as_bytes());
}

/// Why init could not run the command (it then exits 125, as GNU
/// `timeout` and `env` do when they fail before the command).
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("cannot read {}: {source}", path.display())]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    DecodeSpec {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error("cannot create mount point {}: {source}", path.display())]
    MountPoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount share '{tag}' at {}: {source}", path.display())]
    MountShare {
        tag: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {fstype} at {path}: {source}")]
    MountUserland {
        fstype: &'static str,
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot overlay {}: {source} (--no-overlay leaves the default overlays out)", path.display())]
    Overlay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network: {0}")]
    Network(#[source] guest_net::NetError),
    #[error("signalfd: {0}")]
    Signalfd(#[source] io::Error),
    #[error("pipe: {0}")]
    Pipe(#[source] io::Error),
    #[error("pty: {0}")]
    Pty(#[source] io::Error),
    #[error("working directory {}: {source}", path.display())]
    Cwd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn init(spec_path: &Path) -> Result<i32, InitError> {
    // Read before /tmp gets its tmpfs: the spec may lie in the host's /tmp.
    let path = || spec_path.to_path_buf();
    let bytes = std::fs::read(spec_path).map_err(|source| InitError::ReadSpec {
        path: path(),
        source,
    })?;
    let spec = RunSpec::decode(&bytes).map_err(|source| InitError::DecodeSpec {
        path: path(),
        source,
    })?;
    mount_userland(&spec.overlays)?;
    for m in &spec.mounts {
        if !m.path.is_dir() {
            std::fs::create_dir_all(&m.path).map_err(|source| InitError::MountPoint {
                path: m.path.clone(),
                source,
            })?;
        }
        mount(&m.tag, &m.path, "virtiofs", 0, &m.options).map_err(|source| {
            InitError::MountShare {
                tag: m.tag.clone(),
                path: m.path.clone(),
                source,
            }
        })?;
    }
    set_hostname("ferry");
    if let Err(e) = guest_net::loopback_up() {
        say(&format!("ferry-init: loopback stays down: {e}\n"));
    }
    if spec.network {
        let lease = guest_net::configure().map_err(InitError::Network)?;
        if let Err(e) = guest_net::write_resolv_conf(&lease) {
            say(&format!(
                "ferry-init: the network is up, but /etc/resolv.conf could not be written: {e}\n"
            ));
        }
    }
    run_command(&spec)
}

/// The file systems a Linux userland expects, on the read-only root, and
/// the overlays: /run first (it holds the overlays' upper layers), then
/// the overlays, then the other tmpfs mounts, so that /var/tmp lands on
/// top of a /var overlay rather than under it.
fn mount_userland(overlays: &[PathBuf]) -> Result<(), InitError> {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
    // (file system, where, flags, data); the source is the type's name.
    let kernel_fs = [
        ("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("devtmpfs", "/dev", MS_NOSUID, "mode=0755"),
        ("devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666"),
        ("tmpfs", "/run", MS_NOSUID | MS_NODEV, "mode=0755"),
    ];
    for (fstype, at, flags, data) in kernel_fs {
        mount_userland_fs(fstype, at, flags, data)?;
    }
    mount_kernel_extras();
    mount_overlays(overlays)?;
    for (at, data) in [
        ("/dev/shm", "mode=1777"),
        ("/tmp", "mode=1777"),
        ("/var/tmp", "mode=1777"),
    ] {
        mount_userland_fs("tmpfs", at, MS_NOSUID | MS_NODEV, data)?;
    }
    Ok(())
}

fn mount_userland_fs(
    fstype: &'static str,
    at: &'static str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), InitError> {
    let target = Path::new(at);
    // On the read-only root only a tmpfs or devtmpfs parent can take a
    // new directory (/dev/pts, /dev/shm); a missing one elsewhere is left
    // out.
    if !target.is_dir() && std::fs::create_dir(target).is_err() {
        return Ok(());
    }
    mount(fstype, target, fstype, flags, data).map_err(|source| InitError::MountUserland {
        fstype,
        path: at,
        source,
    })
}

/// Where the overlays' upper and work directories live: guest memory.
const OVERLAY_STATE: &str = "/run/ferry/overlay";

/// Mounts an overlayfs on each directory: the host's files below, a tmpfs
/// directory above (owned and moded as the host's directory, since the
/// merged directory takes the upper one's attributes).
fn mount_overlays(overlays: &[PathBuf]) -> Result<(), InitError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    for (i, lower) in overlays.iter().enumerate() {
        let failed = |source| InitError::Overlay {
            path: lower.clone(),
            source,
        };
        let state = Path::new(OVERLAY_STATE).join(i.to_string());
        let (upper, work) = (state.join("upper"), state.join("work"));
        let meta = std::fs::metadata(lower).map_err(failed)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work)
            .and_then(|()| std::fs::create_dir(&upper))
            .and_then(|()| std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid())))
            .and_then(|()| {
                std::fs::set_permissions(
                    &upper,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                )
            })
            .map_err(failed)?;
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount("overlay", lower, "overlay", 0, &data).map_err(failed)?;
    }
    Ok(())
}

/// What kernel, tracing and eBPF work expects, where systemd puts it.
const KERNEL_EXTRAS: [(&str, &str); 8] = [
    ("securityfs", "/sys/kernel/security"),
    ("debugfs", "/sys/kernel/debug"),
    ("tracefs", "/sys/kernel/tracing"),
    ("cgroup2", "/sys/fs/cgroup"),
    ("bpf", "/sys/fs/bpf"),
    ("configfs", "/sys/kernel/config"),
    ("mqueue", "/dev/mqueue"),
    ("hugetlbfs", "/dev/hugepages"),
];

/// Mounts [`KERNEL_EXTRAS`] where the kernel has the file system (a type
/// missing from /proc/filesystems is left out: a distribution kernel with
/// it as a module not loaded, say). A failure is noted in the kernel log
/// and is not fatal: the command may not need it.
fn mount_kernel_extras() {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
    let known = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has = |fstype: &str| {
        known
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
    };
    for (fstype, at) in KERNEL_EXTRAS {
        if !has(fstype) {
            continue;
        }
        let target = Path::new(at);
        let flags = match fstype {
            "hugetlbfs" => MS_NOSUID | MS_NODEV,
            _ => MS_NOSUID | MS_NODEV | MS_NOEXEC,
        };
        let done = (target.is_dir() || std::fs::create_dir_all(target).is_ok())
            .then(|| mount(fstype, target, fstype, flags, ""));
        let err = match done {
            Some(Ok(())) => continue,
            Some(Err(e)) => e.to_string(),
            None => "no mount point".to_string(),
        };
        let _ = std::fs::write(
            "/dev/kmsg",
            format!("ferry-init: {fstype} on {at}: {err}\n"),
        );
    }
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (source, fstype, data) = (
        cstring(source.as_bytes())?,
        cstring(fstype.as_bytes())?,
        cstring(data.as_bytes())?,
    );
    let target = cstring(target.as_os_str().as_bytes())?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn mount_bind(from: &Path, onto: &Path) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes())?;
    let onto = CString::new(onto.as_os_str().as_bytes())?;
    // SAFETY: valid C strings; a bind mount reads no data argument.
    let rc = unsafe {
        libc::mount(
            from.as_ptr(),
            onto.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_hostname(name: &str) {
    // SAFETY: a valid buffer of the given length.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
}

/// A pipe: (read end, write end).
fn pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are ours.
    unsafe { Ok((File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

fn run_command(spec: &RunSpec) -> Result<i32, InitError> {
    // Blocked before the fork; the child's mask is reset by spawn.
    let sigchld = signalfd_for(&[libc::SIGCHLD]).map_err(InitError::Signalfd)?;
    let mut cmd = Command::new(&spec.argv[0]);
    // Where the command's output and input go: pipes, or one pty.
    let (outputs, input) = match spec.tty {
        None => {
            let (out_r, out_w) = pipe().map_err(InitError::Pipe)?;
            let (err_r, err_w) = pipe().map_err(InitError::Pipe)?;
            let (in_r, in_w) = pipe().map_err(InitError::Pipe)?;
            set_nonblocking(in_w.as_raw_fd());
            cmd.stdin(Stdio::from(in_r)).stdout(out_w).stderr(err_w);
            ([Some(out_r), Some(err_r)], StdinRelay::new(in_w, None))
        }
        Some((rows, cols)) => {
            let (master, slave) = open_pty(rows, cols, spec.uid).map_err(InitError::Pty)?;
            let copy = |fd: &OwnedFd| fd.try_clone().map_err(InitError::Pty);
            cmd.stdin(copy(&slave)?).stdout(copy(&slave)?).stderr(slave);
            let writer = copy(&master)?;
            set_nonblocking(writer.as_raw_fd());
            let tty = writer.as_raw_fd();
            (
                [Some(File::from(master)), None],
                StdinRelay::new(writer, Some(tty)),
            )
        }
    };
    let controlling_tty = spec.tty.is_some();
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().filter_map(|e| {
            let b = e.as_bytes();
            let eq = b.iter().position(|&c| c == b'=')?;
            Some((OsStr::from_bytes(&b[..eq]), OsStr::from_bytes(&b[eq + 1..])))
        }));
    let (uid, gid, groups, umask) = (spec.uid, spec.gid, spec.groups.clone(), spec.umask);
    let cwd = cstring(spec.cwd.as_os_str().as_bytes()).map_err(|source| InitError::Cwd {
        path: spec.cwd.clone(),
        source,
    })?;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Ferry's ports are init's alone: a command that wrote the
            // exit port would end the VM under init's feet.
            libc::ioperm(HOST_INPUT_PORT, HOST_INPUT_PORT_COUNT, 0);
            libc::ioperm(u64::from(EXIT), 1, 0);
            libc::ioperm(u64::from(STDOUT_PORT), 8, 0);
            let ok = libc::setsid() >= 0
                && (!controlling_tty || libc::ioctl(0, libc::TIOCSCTTY, 0) == 0)
                && libc::setgroups(groups.len(), groups.as_ptr()) == 0
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0;
            if !ok {
                return Err(io::Error::last_os_error());
            }
            libc::umask(umask);
            // After setuid: the directory must be the user's to enter.
            if libc::chdir(cwd.as_ptr()) != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("chdir: {e}")));
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let name = spec.argv[0].to_string_lossy();
            say(&format!("ferry: {name}: {e}\n"));
            return Ok(match e.kind() {
                io::ErrorKind::NotFound => STATUS_NOT_FOUND,
                _ => STATUS_NOT_EXECUTABLE,
            });
        }
    };
    // The write ends now live only in the child.
    drop(cmd);
    // Pids fit a pid_t (the kernel's pid_max is at most 2^22).
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    let status = relay(pid, outputs, input, &sigchld);
    Ok(status)
}

/// A pty of `rows` x `cols` whose terminal belongs to `uid` and the `tty`
/// group, mode 0620, as a login's does (so `tty`, `write` and `script`
/// work); (master, terminal).
fn open_pty(rows: u16, cols: u16, uid: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty fills both descriptors; the other pointers are null
    // or valid.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: getgrnam returns a pointer into static storage or null;
    // fchown/fchmod act on our own descriptor.
    unsafe {
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        let group = libc::getgrnam(c"tty".as_ptr());
        let gid = if group.is_null() {
            u32::MAX // leaves the group as it is
        } else {
            (*group).gr_gid
        };
        libc::fchown(slave.as_raw_fd(), uid, gid);
        libc::fchmod(slave.as_raw_fd(), 0o620);
    }
    Ok((master, slave))
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
    }
}

/// Ferry's stdin on its way to the command's: from the input port (which
/// has no interrupt, so it is polled, less often while idle) into the
/// command's stdin pipe, no faster than the command reads it. The port's
/// EOF closes the pipe; a command that closes its stdin ends the relay.
struct StdinRelay {
    /// The pipe's write end, or the pty master (non-blocking); None once
    /// input is over.
    pipe: Option<File>,
    pending: Vec<u8>,
    sent: usize,
    idle_ms: i32,
    /// The pty master, whose size follows the host terminal's.
    tty: Option<RawFd>,
    winsize_gen: u32,
}

impl StdinRelay {
    fn new(pipe: OwnedFd, tty: Option<RawFd>) -> Self {
        StdinRelay {
            pipe: Some(File::from(pipe)),
            pending: Vec::new(),
            sent: 0,
            idle_ms: 0,
            tty,
            winsize_gen: 0,
        }
    }

    /// A new host terminal size goes to the pty (the kernel then sends
    /// SIGWINCH to the command's foreground job).
    fn follow_winsize(&mut self, status: u32) {
        let (Some(tty), gen) = (self.tty, status & HOST_INPUT_WINSIZE_GEN) else {
            return;
        };
        if gen == self.winsize_gen {
            return;
        }
        self.winsize_gen = gen;
        out_bytes(INPUT_SELECT_PORT, &[HOST_INPUT_SELECT_WINSIZE]);
        let size = in_u32(INPUT_STATUS_PORT);
        let ws = libc::winsize {
            ws_row: u16::try_from(size >> 16).unwrap_or(0),
            ws_col: u16::try_from(size & 0xffff).unwrap_or(0),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if ws.ws_row > 0 && ws.ws_col > 0 {
            // SAFETY: TIOCSWINSZ reads the struct given, on our master.
            unsafe { libc::ioctl(tty, libc::TIOCSWINSZ, &ws) };
        }
    }

    /// Moves what the port holds into the pipe until either runs dry.
    fn pump(&mut self) {
        while let Some(pipe) = self.pipe.as_mut() {
            if self.sent < self.pending.len() {
                match pipe.write(&self.pending[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EPIPE: the command closed its stdin; the rest is
                    // nobody's.
                    Err(_) => self.pipe = None,
                }
                continue;
            }
            let status = in_u32(INPUT_STATUS_PORT);
            self.follow_winsize(status);
            if status & HOST_INPUT_EOF != 0 {
                if let (Some(_), Some(master)) = (self.tty, self.pipe.as_mut()) {
                    // A terminal has no end of input of its own: the
                    // line discipline's EOF character (Ctrl-D) stands in.
                    let _ = master.write(&[4]);
                }
                self.pipe = None;
                return;
            }
            let count = status & !(HOST_INPUT_EOF | HOST_INPUT_WINSIZE_GEN);
            let ready = usize::try_from(count).map_or(0, |n| n.min(HOST_INPUT_CAPACITY));
            if ready == 0 {
                return;
            }
            self.pending.resize(ready, 0);
            ins_bytes(INPUT_DATA_PORT, &mut self.pending);
            self.sent = 0;
            self.idle_ms = 0;
        }
    }

    /// The pipe, while the command has not taken what was sent (poll it
    /// for room).
    fn blocked_on(&self) -> Option<RawFd> {
        match &self.pipe {
            Some(p) if self.sent < self.pending.len() => Some(p.as_raw_fd()),
            _ => None,
        }
    }

    /// How long poll may wait before the port is looked at again.
    fn next_look_ms(&mut self) -> i32 {
        if self.pipe.is_none() || self.blocked_on().is_some() {
            return -1;
        }
        let wait = self.idle_ms;
        self.idle_ms = (wait * 2).clamp(1, INPUT_IDLE_POLL_MAX_MS);
        wait
    }
}

/// Copies the command's output to Ferry, and Ferry's input to the command,
/// until it has exited and its output pipes are drained, reaping every
/// orphan meanwhile (PID 1's duty). Returns its exit status, or 128 + the
/// signal that killed it.
fn relay(
    child: libc::pid_t,
    outputs: [Option<File>; 2],
    mut input: StdinRelay,
    sigchld: &OwnedFd,
) -> i32 {
    let ports = [STDOUT_PORT, STDERR_PORT];
    let mut open: Vec<Option<File>> = outputs.into();
    let mut buf = vec![0u8; RELAY_CHUNK];
    let mut status = None;
    loop {
        if let Some(code) = status {
            // The command is gone: take what its pipes hold now and stop,
            // even if a background child still keeps one open.
            for (i, pipe) in open.iter_mut().enumerate() {
                if let Some(p) = pipe.take() {
                    drain_nonblocking(p, ports[i], &mut buf);
                }
            }
            return code;
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|p| libc::pollfd {
                fd: p.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        fds.push(libc::pollfd {
            fd: sigchld.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        input.pump();
        fds.push(libc::pollfd {
            fd: input.blocked_on().unwrap_or(-1),
            events: libc::POLLOUT,
            revents: 0,
        });
        let wait = input.next_look_ms();
        // SAFETY: a valid array of pollfds of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        if n < 0 {
            continue;
        }
        for (i, fd) in fds[..2].iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let Some(pipe) = open[i].as_mut() else {
                continue;
            };
            match pipe.read(&mut buf) {
                Ok(n @ 1..) => out_bytes(ports[i], &buf[..n]),
                // A pty master shares its non-blocking flag with the
                // input side's copy.
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                // EOF, or EIO from a pty master once the terminal is
                // closed everywhere.
                Ok(0) | Err(_) => open[i] = None,
            }
        }
        if fds[2].revents != 0 {
            drain_signalfd(sigchld.as_raw_fd());
            status = reap(child).or(status);
        }
    }
}

fn drain_signalfd(fd: RawFd) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: reads into a local buffer of the right size; non-blocking.
    while unsafe { libc::read(fd, info.as_mut_ptr().cast(), info.len()) } > 0 {}
}

/// Reaps every child that has ended; the command's status if it is one.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut found = None;
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if pid == child {
            let st = std::process::ExitStatus::from_raw(raw);
            found = st.code().or(st.signal().map(|s| 128 + s));
        }
    }
}

fn drain_nonblocking(mut pipe: File, port: u16, buf: &mut [u8]) {
    set_nonblocking(pipe.as_raw_fd());
    while let Ok(n) = pipe.read(buf) {
        if n == 0 {
            break;
        }
        out_bytes(port, &buf[..n]);
    }
}
