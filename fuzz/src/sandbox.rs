//! Where the targets put host files, and the limits around them.
//!
//! Every share the targets serve lives under one sandbox directory:
//! `$FERRY_FUZZ_SANDBOX` if set (`run.sh` mounts a size-limited tmpfs there
//! in a private mount namespace when it can), else `$TMPDIR/ferry-fuzz-PID`,
//! removed at exit. `TMPDIR` is pointed at it so that the fs harness, which
//! makes its directories under `std::env::temp_dir()`, does too. A guest can
//! make files as large as it likes (WRITE at a huge offset, FALLOCATE,
//! COPY_FILE_RANGE), so the process also gets an `RLIMIT_FSIZE`.
//!
//! Log records are formatted and thrown away (set `FERRY_FUZZ_LOG=off` to
//! skip them, `=stderr` to see them): a user may run Ferry with
//! `--log-level debug`, so the formatting of what a guest can put in a log
//! line is part of what is fuzzed. Up to debug level only, by default:
//! `--log-level trace` has a known crash (see README.md, "Findings"):
//! fuse-backend-rs 0.14's `trace!("fuse: new req {:?}", Opcode::from(op))`
//! in `Server::handle_message` transmutes any opcode below 50 into
//! `Opcode`, and one that is no variant (0, 7, 19) is undefined behaviour
//! (a panic with debug assertions, SIGILL in a release build), so every
//! target would find it at once. `FERRY_FUZZ_LOG=trace` (or
//! `=stderr-trace`) includes trace records.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Largest file the targets may write (`RLIMIT_FSIZE`).
pub const FILE_SIZE_LIMIT: u64 = 256 << 20;

static SANDBOX: OnceLock<PathBuf> = OnceLock::new();
/// What the sandbox held before this process used it (left by an earlier
/// process that crashed, say): not this process's doing.
static BASELINE: OnceLock<Vec<OsString>> = OnceLock::new();
static OWNED: OnceLock<PathBuf> = OnceLock::new();

/// The sandbox directory, set up on first use.
pub fn sandbox() -> &'static Path {
    SANDBOX.get_or_init(|| {
        let dir = match std::env::var_os("FERRY_FUZZ_SANDBOX") {
            Some(d) => PathBuf::from(d),
            None => {
                let d = std::env::temp_dir().join(format!("ferry-fuzz-{}", std::process::id()));
                let _ = OWNED.set(d.clone());
                // SAFETY: registers a plain function; it runs once at exit.
                unsafe { libc::atexit(remove_owned_sandbox) };
                d
            }
        };
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("fuzz sandbox {}: {e}", dir.display()));
        let dir = dir.canonicalize().expect("canonical sandbox path");
        let _ = BASELINE.set(entries(&dir));
        // Done before the targets start any thread of their own.
        std::env::set_var("TMPDIR", &dir);
        limit_file_size();
        install_logger();
        dir
    })
}

extern "C" fn remove_owned_sandbox() {
    if let Some(d) = OWNED.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn limit_file_size() {
    let lim = libc::rlimit {
        rlim_cur: FILE_SIZE_LIMIT,
        rlim_max: FILE_SIZE_LIMIT,
    };
    // SAFETY: plain syscalls on this process. A write past the limit then
    // fails with EFBIG instead of killing the process with SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            eprintln!(
                "ferry-fuzz: cannot limit file sizes: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

struct Sink {
    stderr: bool,
}

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        if self.stderr {
            eprintln!("{line}");
        }
        std::hint::black_box(line);
    }

    fn flush(&self) {}
}

fn install_logger() {
    let mode = std::env::var("FERRY_FUZZ_LOG").unwrap_or_default();
    if mode == "off" {
        return;
    }
    let sink: &'static Sink = Box::leak(Box::new(Sink {
        stderr: mode.starts_with("stderr"),
    }));
    let level = if mode.ends_with("trace") {
        log::LevelFilter::Trace
    } else {
        log::LevelFilter::Debug
    };
    if log::set_logger(sink).is_ok() {
        log::set_max_level(level);
    }
}

/// `FERRY_FUZZ_SKIP_KNOWN`: the findings (numbered as in README.md,
/// "Findings") the targets steer clear of, so that a long run looks for new
/// bugs instead of finding those again every few seconds: `all`, or a comma
/// list such as `5,8`; unset, empty or `0`: none.
pub fn skip(finding: u8) -> bool {
    static V: OnceLock<Vec<u8>> = OnceLock::new();
    V.get_or_init(|| {
        let v = std::env::var("FERRY_FUZZ_SKIP_KNOWN").unwrap_or_default();
        if v.trim() == "all" {
            (1..=u8::MAX).collect()
        } else {
            v.split(',').filter_map(|n| n.trim().parse().ok()).collect()
        }
    })
    .contains(&finding)
}

/// `FERRY_FUZZ_VERBOSE=1`: the targets say what they do, on stderr (for
/// reading a crash or a seed).
pub fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FERRY_FUZZ_VERBOSE").is_some_and(|v| v != "0"))
}

/// Names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    };
    names.sort();
    names
}

/// Panics if the sandbox holds anything but `allowed`: a file made outside
/// the share it was made through.
pub fn check_sandbox(allowed: &[&std::ffi::OsStr]) {
    let dir = sandbox();
    for name in entries(dir) {
        let baseline = BASELINE.get().is_some_and(|b| b.contains(&name));
        assert!(
            baseline || allowed.iter().any(|a| *a == name),
            "something outside every share appeared in the sandbox: {}",
            dir.join(&name).display()
        );
    }
}

/// Removes `dir` and everything in it; panics if that fails, since a later
/// run would then not start from an empty share.
pub fn remove_tree(dir: &Path) {
    if std::fs::symlink_metadata(dir).is_err() {
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        panic!("cannot remove {}: {e}", dir.display());
    }
}

fn open_fds() -> Vec<i32> {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The descriptors open when a run starts: a run that ends with more open
/// is a finding (a guest could repeat it until Ferry runs out).
///
/// This is how fuse-backend-rs 0.14's `MountFds` leak showed up (README.md,
/// "Findings", 5: one `O_PATH` descriptor per mount descriptor made, fixed
/// in third_party/fuse-backend-rs). The first run in a process is not
/// judged: it opens what lazy statics keep for good.
pub struct FdWatch(Vec<i32>);

impl Default for FdWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl FdWatch {
    pub fn new() -> Self {
        FdWatch(open_fds())
    }

    /// Panics if the run left descriptors open (after the first run).
    pub fn check_none_leaked(&self) {
        static FIRST_RUN_DONE: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        if !FIRST_RUN_DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // A number whose link is gone was the listing's own descriptor.
        let leaked: Vec<String> = open_fds()
            .into_iter()
            .filter(|fd| !self.0.contains(fd))
            .filter_map(|fd| {
                let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
                Some(format!("{fd} -> {}", target.display()))
            })
            .collect();
        assert!(
            leaked.is_empty(),
            "the run left descriptors open: {leaked:?}"
        );
    }
}
