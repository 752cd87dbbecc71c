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
    HOST_STREAM_PORT,
};

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
    #[error("signalfd: {0}")]
    Signalfd(#[source] io::Error),
    #[error("pipe: {0}")]
    Pipe(#[source] io::Error),
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
    mount_userland()?;
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
    if let Err(e) = loopback_up() {
        say(&format!("ferry-init: loopback stays down: {e}\n"));
    }
    run_command(&spec)
}

/// The file systems a Linux userland expects, on the read-only root.
fn mount_userland() -> Result<(), InitError> {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
    // (file system, where, flags, data); the source is the type's name.
    let kernel_fs = [
        ("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("devtmpfs", "/dev", MS_NOSUID, "mode=0755"),
        ("devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666"),
    ];
    let tmpfs = [
        ("/dev/shm", "mode=1777"),
        ("/tmp", "mode=1777"),
        ("/run", "mode=0755"),
        ("/var/tmp", "mode=1777"),
    ];
    let all = kernel_fs.into_iter().chain(
        tmpfs
            .into_iter()
            .map(|(at, data)| ("tmpfs", at, MS_NOSUID | MS_NODEV, data)),
    );
    for (fstype, at, flags, data) in all {
        let target = Path::new(at);
        // On the read-only root only a tmpfs or devtmpfs parent can take a
        // new directory (/dev/pts, /dev/shm); a missing one elsewhere is
        // left out.
        if !target.is_dir() && std::fs::create_dir(target).is_err() {
            continue;
        }
        mount(fstype, target, fstype, flags, data).map_err(|source| InitError::MountUserland {
            fstype,
            path: at,
            source,
        })?;
    }
    Ok(())
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

fn set_hostname(name: &str) {
    // SAFETY: a valid buffer of the given length.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
}

/// IFF_UP as the short of `ifr_flags` (it is bit 0).
const IFF_UP: libc::c_short = 1;
const _: () = assert!(libc::IFF_UP == 1);

/// Brings `lo` up: tests commonly talk to 127.0.0.1.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket, owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = src.cast_signed();
    }
    // SAFETY: both ioctls read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= IFF_UP;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
    let (out_r, out_w) = pipe().map_err(InitError::Pipe)?;
    let (err_r, err_w) = pipe().map_err(InitError::Pipe)?;
    let (in_r, in_w) = pipe().map_err(InitError::Pipe)?;
    set_nonblocking(in_w.as_raw_fd());
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().filter_map(|e| {
            let b = e.as_bytes();
            let eq = b.iter().position(|&c| c == b'=')?;
            Some((OsStr::from_bytes(&b[..eq]), OsStr::from_bytes(&b[eq + 1..])))
        }))
        .stdin(Stdio::from(in_r))
        .stdout(out_w)
        .stderr(err_w);
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
    let status = relay(pid, [out_r, err_r], StdinRelay::new(in_w), &sigchld);
    Ok(status)
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
    /// The pipe's write end (non-blocking); None once input is over.
    pipe: Option<File>,
    pending: Vec<u8>,
    sent: usize,
    idle_ms: i32,
}

impl StdinRelay {
    fn new(pipe: OwnedFd) -> Self {
        StdinRelay {
            pipe: Some(File::from(pipe)),
            pending: Vec::new(),
            sent: 0,
            idle_ms: 0,
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
            if status & HOST_INPUT_EOF != 0 {
                self.pipe = None;
                return;
            }
            let ready = usize::try_from(status).map_or(0, |n| n.min(HOST_INPUT_CAPACITY));
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
fn relay(child: libc::pid_t, pipes: [File; 2], mut input: StdinRelay, sigchld: &OwnedFd) -> i32 {
    let ports = [STDOUT_PORT, STDERR_PORT];
    let mut open: Vec<Option<File>> = pipes.into_iter().map(Some).collect();
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
                Ok(0) | Err(_) => open[i] = None,
                Ok(n) => out_bytes(ports[i], &buf[..n]),
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
