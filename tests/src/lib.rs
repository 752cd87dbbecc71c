//! Support for Ferry's integration tests: find the binaries and the guest,
//! pick where KVM guests can run, boot them with a deadline and collect what
//! they printed.
//!
//! KVM modes (`FERRY_KVM_MODE`):
//! - `direct`: run the tests on this host (needs a `/dev/kvm` with hardware
//!   virtualization to boot a stock kernel);
//! - `emulated`: re-run this test binary inside the emulated KVM host
//!   (`resources/emulated-host.sh`: QEMU TCG, `-cpu max`, nested SVM);
//! - `auto` (default): `direct` where `/proc/cpuinfo` shows vmx or svm,
//!   `emulated` otherwise.

pub mod pty;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod elf;

/// Set inside the emulated host so the harness does not recurse.
const INSIDE_ENV: &str = "FERRY_INSIDE_EMULATED_HOST";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmMode {
    Direct,
    Emulated,
}

pub fn host_has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

/// The mode chosen by `FERRY_KVM_MODE` or by the CPU flags.
pub fn kvm_mode() -> Result<KvmMode, String> {
    match std::env::var("FERRY_KVM_MODE").as_deref() {
        Ok("direct") => Ok(KvmMode::Direct),
        Ok("emulated") => Ok(KvmMode::Emulated),
        Ok("auto") | Ok("") | Err(_) => Ok(if host_has_hardware_virtualization() {
            KvmMode::Direct
        } else {
            KvmMode::Emulated
        }),
        Ok(other) => Err(format!(
            "FERRY_KVM_MODE={other}: expected direct, emulated or auto"
        )),
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Where KVM tests run. Called first thing by each test binary's `main`: in
/// emulated mode (and not yet inside) this re-runs the binary in the
/// emulated host, passes its exit status on and never returns.
pub fn enter_kvm_host() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(INSIDE_ENV).is_some() || args.iter().any(|a| a == "--list") {
        return;
    }
    let mode = match kvm_mode() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if mode == KvmMode::Direct {
        eprintln!("ferry-tests: KVM mode direct (this host's /dev/kvm)");
        return;
    }
    eprintln!(
        "ferry-tests: KVM mode emulated: re-running the tests inside the emulated KVM host \
         (set FERRY_KVM_MODE=direct to use this host's /dev/kvm)"
    );
    let mut args = args;
    // Inside, stdout is the emulated host's console (a tty): ask for plain
    // output when ours is not a terminal, so summaries parse as usual.
    // SAFETY: isatty only inspects fd 1.
    if unsafe { libc::isatty(1) } != 1 && !args.iter().any(|a| a.starts_with("--color")) {
        args.push("--color=never".into());
    }
    // One guest at a time inside the emulated host: with two guests booting
    // at once on its two emulated CPUs, a guest now and then panicked or the
    // emulated host stalled (seen in CI and in 1 of 3 runs of 30 parallel
    // pairs), while 40 guests in a row all passed. `--test-threads N`
    // still overrides.
    if !args.iter().any(|a| a.starts_with("--test-threads")) {
        args.push("--test-threads=1".into());
    }
    let exe = std::env::current_exe().expect("current test binary path");
    let script = repo_root().join("resources/emulated-host.sh");
    let status = Command::new(&script)
        .arg(&exe)
        .args(&args)
        .env(INSIDE_ENV, "1")
        .env("FERRY_KVM_MODE", "direct")
        .status();
    match status {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", script.display());
            std::process::exit(1);
        }
    }
}

fn existing(path: PathBuf, what: &str, hint: &str) -> Result<PathBuf, String> {
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{what} not found at {} ({hint})", path.display()))
    }
}

/// The `ferry` binary: `FERRY_BIN`, or the one cargo built next to this test.
pub fn ferry_bin() -> Result<PathBuf, String> {
    let path = match std::env::var_os("FERRY_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            // target/<profile>/deps/<test> -> target/<profile>/ferry
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("unexpected test binary location")?;
            profile_dir.join("ferry")
        }
    };
    let path = existing(
        path,
        "ferry binary",
        "run `cargo build` first, or set FERRY_BIN",
    )?;
    // `cargo test -p ferry-tests` does not rebuild the binary: a stale one
    // would test old code without a word.
    if std::env::var_os("FERRY_BIN").is_none() {
        const HINT: &str = "run `cargo build -p ferry` (or test with --workspace)";
        // Cargo's dep-info names exactly the sources the binary was built
        // from (test-only modules are not among them).
        match std::fs::read_to_string(path.with_extension("d")) {
            Ok(dep_info) => built_after_sources(&path, &dep_info, HINT)?,
            Err(_) => not_older_than_sources(
                &path,
                &["arch/src", "devices/src", "vmm/src", "third_party"],
                "rs",
                HINT,
            )?,
        }
    }
    Ok(path)
}

/// Fails when a source `dep_info` (a make rule, `target: sources...`)
/// lists was modified after `built_file`.
fn built_after_sources(built_file: &Path, dep_info: &str, hint: &str) -> Result<(), String> {
    let built = std::fs::metadata(built_file)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{}: {e}", built_file.display()))?;
    let sources = dep_info
        .lines()
        .next()
        .and_then(|rule| rule.split_once(": "))
        .map_or("", |(_, s)| s);
    for source in sources.split_whitespace().map(Path::new) {
        let newer = std::fs::metadata(source)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built);
        if newer {
            return Err(format!(
                "{} is older than {}: {hint}",
                built_file.display(),
                source.display()
            ));
        }
    }
    Ok(())
}

/// Fails when a file under `dirs` (relative to the repository, `ext` files
/// only) was modified after `built_file`: a stale build would test old
/// code without a word.
fn not_older_than_sources(
    built_file: &Path,
    dirs: &[&str],
    ext: &str,
    hint: &str,
) -> Result<(), String> {
    let built = std::fs::metadata(built_file)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{}: {e}", built_file.display()))?;
    let mut dirs: Vec<PathBuf> = dirs.iter().map(|d| repo_root().join(d)).collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == ext)
                && meta.modified().is_ok_and(|m| m > built)
            {
                return Err(format!(
                    "{} is older than {}: {hint}",
                    built_file.display(),
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn guest_file(env: &str, name: &str, hint: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guest").join(name));
    existing(path, name, hint)
}

/// The project's guest kernel (bzImage), or `FERRY_KERNEL`.
pub fn kernel() -> Result<PathBuf, String> {
    guest_file("FERRY_KERNEL", "bzImage", "run resources/build-kernel.sh")
}

/// The same kernel as an ELF vmlinux (PVH entry).
pub fn vmlinux() -> Result<PathBuf, String> {
    guest_file("FERRY_VMLINUX", "vmlinux", "run resources/build-kernel.sh")
}

/// The busybox initramfs, or `FERRY_INITRAMFS`. The project's own is
/// refused when a guest program's source is newer than it.
pub fn initramfs() -> Result<PathBuf, String> {
    const HINT: &str = "run resources/build-initramfs.sh";
    let path = guest_file("FERRY_INITRAMFS", "initramfs.cpio", HINT)?;
    if std::env::var_os("FERRY_INITRAMFS").is_none() {
        not_older_than_sources(&path, &["resources/guest"], "c", HINT)?;
    }
    Ok(path)
}

/// Fails loudly when KVM cannot be used here.
pub fn require_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be opened ({e}): KVM tests need it"))
}

/// What a finished `ferry` run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// A readable dump for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "exit: {:?} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `ferry` with `args`, feeding `stdin`, killing it after `deadline`.
pub fn run_ferry(
    args: &[String],
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<Outcome, String> {
    run_ferry_with(args, stdin, deadline, |_| {})
}

/// [`run_ferry`] with `setup` applied to the command first (its working
/// directory, its environment).
pub fn run_ferry_with(
    args: &[String],
    stdin: Option<&[u8]>,
    deadline: Duration,
    setup: impl FnOnce(&mut Command),
) -> Result<Outcome, String> {
    run_bounded(ferry_command(args, setup)?, stdin, deadline)
}

/// The `ferry` command with `args`, `setup` applied first.
fn ferry_command(args: &[String], setup: impl FnOnce(&mut Command)) -> Result<Command, String> {
    let mut command = Command::new(ferry_bin()?);
    setup(&mut command);
    command.args(args);
    Ok(command)
}

/// Runs `command`, feeding `stdin`, and collects its output; past
/// `deadline` it is killed and the error says what it was doing.
fn run_bounded(
    command: Command,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<Outcome, String> {
    Running::start(command, stdin)?.finish(deadline)
}

/// What a run's stdin is, for tests of input itself.
pub enum Input {
    /// These bytes through a pipe, then EOF.
    Bytes(Vec<u8>),
    /// A file, redirected.
    File(PathBuf),
    /// A pipe that never ends: a writer that stops only when the reader
    /// is gone.
    Endless,
    /// `/dev/null`.
    Null,
}

/// [`run_ferry_with`] with `input` as Ferry's stdin.
pub fn run_ferry_input(
    args: &[String],
    input: Input,
    deadline: Duration,
    setup: impl FnOnce(&mut Command),
) -> Result<Outcome, String> {
    let mut command = ferry_command(args, setup)?;
    let feed = match input {
        Input::Bytes(b) => Some(b),
        Input::File(path) => {
            let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            command.stdin(f);
            None
        }
        Input::Endless => Some(Vec::new()),
        Input::Null => {
            command.stdin(Stdio::null());
            None
        }
    };
    let endless = feed.as_ref().is_some_and(|b| b.is_empty());
    if feed.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut running = Running::spawn(command)?;
    if let (Some(bytes), Some(mut pipe)) = (feed, running.child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            if endless {
                let block = vec![b'y'; 64 << 10];
                while pipe.write_all(&block).is_ok() {}
            } else {
                let _ = pipe.write_all(&bytes);
            }
            // Dropped: EOF.
        });
    }
    running.finish(deadline)
}

/// A started run whose output is being collected. Every wait on it is
/// bounded: a hung run fails its test with its evidence instead of
/// stalling the suite.
pub struct Running {
    child: std::process::Child,
    program: String,
    stdout: Option<PipeReader>,
    stderr: Option<PipeReader>,
    start: Instant,
    status: Option<ExitStatus>,
}

impl Running {
    fn start(mut command: Command, stdin: Option<&[u8]>) -> Result<Running, String> {
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut running = Running::spawn(command)?;
        if let (Some(input), Some(mut pipe)) = (stdin, running.child.stdin.take()) {
            let input = input.to_vec();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&input);
                // Keep the pipe open a while so the guest reads input before EOF.
                std::thread::sleep(Duration::from_secs(30));
            });
        }
        Ok(running)
    }

    /// Starts `command` (its stdin already chosen) collecting its output.
    fn spawn(mut command: Command) -> Result<Running, String> {
        let start = Instant::now();
        let program = Path::new(command.get_program()).display().to_string();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdout = PipeReader::start(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = PipeReader::start(child.stderr.take().map(|p| Box::new(p) as _));
        Ok(Running {
            child,
            program,
            stdout: Some(stdout),
            stderr: Some(stderr),
            start,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (never waits).
    pub fn has_ended(&mut self) -> Result<bool, String> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|e| e.to_string())?;
        }
        Ok(self.status.is_some())
    }

    /// Waits until it exits, up to `deadline` from its start; past that it
    /// is killed and the error says what it was doing ([`Running::hung`]).
    pub fn finish(mut self, deadline: Duration) -> Result<Outcome, String> {
        while !self.has_ended()? {
            if self.start.elapsed() > deadline {
                return Err(self.hung(deadline));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = self.start.elapsed();
        // It has exited; a child it left behind could still hold the
        // pipes, so the readers get a bound too.
        let by = Instant::now() + Duration::from_secs(10);
        Ok(Outcome {
            status: self.status.expect("has_ended saw the status"),
            stdout: PipeReader::collect_from(self.stdout.take(), by),
            stderr: PipeReader::collect_from(self.stderr.take(), by),
            elapsed,
        })
    }

    /// Ends a run past its deadline and says what was going on: what each
    /// of its threads waited in (an idle Ferry points at the guest, whose
    /// blocked tasks the guest init's watchdog has printed by then),
    /// whether SIGKILL ended it, and what it printed.
    fn hung(mut self, deadline: Duration) -> String {
        let program = self.program.clone();
        let waits = thread_waits(self.child.id());
        // Ferry prints each vCPU's registers on SIGUSR1, at its next
        // once-a-second tick: where a guest that is not idle is spinning.
        if Path::new(&program)
            .file_name()
            .is_some_and(|n| n == "ferry")
        {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: a signal to our own child, which has not been reaped.
                unsafe { libc::kill(pid, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_millis(2500));
            }
        }
        let _ = self.child.kill();
        let child = &mut self.child;
        let ended = poll_until(Instant::now() + Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        let after_kill = if ended {
            String::new()
        } else {
            format!(
                "\n{program} outlived SIGKILL for 10 s; its threads now:\n{}",
                thread_waits(self.child.id())
            )
        };
        let by = Instant::now() + Duration::from_secs(if ended { 10 } else { 1 });
        let stdout = PipeReader::collect_from(self.stdout.take(), by);
        let stderr = PipeReader::collect_from(self.stderr.take(), by);
        format!(
            "{program} did not finish within {deadline:?}; its threads then:\n{waits}{after_kill}\n\
             --- stdout ---\n{stdout}\n--- stderr (last 60 lines) ---\n{}{}",
            last_lines(&stderr, 60),
            guest_symbols(&stderr)
        )
    }
}

/// The guest kernel functions the `rip=` values in Ferry's vCPU report
/// (SIGUSR1) fall in, from the project kernel's symbols (`nm -n` on
/// target/guest/vmlinux; the kernel is built without KASLR). Empty when
/// there is nothing to resolve.
fn guest_symbols(stderr: &str) -> String {
    let rips: Vec<u64> = stderr
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("rip=0x"))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .collect();
    if rips.is_empty() {
        return String::new();
    }
    let vmlinux = repo_root().join("target/guest/vmlinux");
    let Ok(out) = Command::new("nm").arg("-n").arg(&vmlinux).output() else {
        return "\n(nm not found: guest addresses unresolved)".into();
    };
    let symbols: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            matches!(kind, "t" | "T").then(|| (addr, name.to_string()))
        })
        .collect();
    let mut report = String::from("\n--- guest vCPUs were in ---\n");
    for rip in rips {
        let at = symbols.partition_point(|(a, _)| *a <= rip);
        match at.checked_sub(1).and_then(|i| symbols.get(i)) {
            Some((a, name)) => report += &format!("  {rip:#x} = {name}+{:#x}\n", rip - a),
            None => report += &format!("  {rip:#x} = (not in the kernel's text)\n"),
        }
    }
    report
}

/// A run dropped unfinished (a test that returned early) is killed, not
/// left behind; never waits.
impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.try_wait();
        }
    }
}

/// Reads a pipe to its end on a thread of its own, keeping what it has
/// read so far where [`PipeReader::collect`] can take it even while the
/// pipe stays open (a process that outlived SIGKILL, or a child it left,
/// still holds it: what it printed before is the evidence).
struct PipeReader {
    read: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl PipeReader {
    fn start(pipe: Option<Box<dyn Read + Send>>) -> PipeReader {
        let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = read.clone();
        let thread = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                if let Ok(mut v) = sink.lock() {
                    v.extend_from_slice(&chunk[..n]);
                }
            }
        });
        PipeReader { read, thread }
    }

    fn collect_from(reader: Option<PipeReader>, by: Instant) -> String {
        reader.map(|r| r.collect(by)).unwrap_or_default()
    }

    /// What was read, once the pipe has closed or `by` has passed (then
    /// with a note that more may have followed).
    fn collect(self, by: Instant) -> String {
        let closed = poll_until(by, || self.thread.is_finished());
        let read = self.read.lock().map(|v| v.clone()).unwrap_or_default();
        let mut text = String::from_utf8_lossy(&read).into_owned();
        if !closed {
            text.push_str("\n(the pipe stayed open: what followed was not collected)");
        }
        text
    }
}

/// Checks `done` every 20 ms until it holds or `by` passes; whether it
/// held.
fn poll_until(by: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= by {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Each thread of process `pid`: its name, state, wait channel and (as
/// root) kernel stack.
pub fn thread_waits(pid: u32) -> String {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(process {pid} is gone)\n");
    };
    let mut report = String::new();
    for task in tasks.flatten() {
        let t = task.path();
        let state = read(&t.join("status"))
            .lines()
            .find_map(|l| l.strip_prefix("State:").map(|s| s.trim().to_string()))
            .unwrap_or_default();
        report += &format!(
            "--- {} ({}): {state}, in {}\n",
            read(&t.join("comm")).trim(),
            task.file_name().to_string_lossy(),
            read(&t.join("wchan")).trim()
        );
        for frame in read(&t.join("stack")).lines().take(12) {
            report += &format!("    {frame}\n");
        }
    }
    report
}

/// A guest boot of the project kernel + initramfs running `cmd` in the
/// guest's shell.
pub struct Guest {
    kernel: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cmdline: Vec<String>,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            kernel: None,
            args: Vec::new(),
            env: Vec::new(),
            cmdline: vec!["quiet".into()],
            stdin: None,
            deadline: Duration::from_secs(120),
        }
    }
}

impl Guest {
    /// A guest whose init runs `cmd` with `sh -c` and exits with its status.
    pub fn command(cmd: &str) -> Self {
        let mut g = Guest::default();
        g.cmdline.push(format!("cmd64={}", base64(cmd.as_bytes())));
        g
    }

    /// A guest with no command: init starts a shell on the console.
    pub fn shell(stdin: &[u8]) -> Self {
        Guest {
            stdin: Some(stdin.to_vec()),
            ..Guest::default()
        }
    }

    pub fn kernel(mut self, path: PathBuf) -> Self {
        self.kernel = Some(path);
        self
    }

    /// How long the whole run may take before it counts as hung.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Adds `--fs SPEC`.
    pub fn fs(self, spec: &str) -> Self {
        self.arg("--fs").arg(spec)
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds `word` to the guest kernel's command line.
    pub fn cmdline(mut self, word: &str) -> Self {
        self.cmdline.push(word.into());
        self
    }

    /// Sets `key` in Ferry's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn run(self) -> Result<Outcome, String> {
        self.run_with(|_| {})
    }

    /// Starts the guest and returns at once, for a test that acts while
    /// it runs; [`Running::finish`] with the same deadline collects it.
    pub fn spawn(self) -> Result<Running, String> {
        let (command, stdin) = self.ferry_command(|_| {})?;
        Running::start(command, stdin.as_deref())
    }

    /// [`Guest::run`] with Ferry started as host user `uid`, group `gid`
    /// (and no supplementary groups).
    pub fn run_as(self, uid: u32, gid: u32) -> Result<Outcome, String> {
        use std::os::unix::process::CommandExt;
        self.run_with(|c| {
            c.uid(uid).gid(gid);
        })
    }

    fn run_with(self, setup: impl FnOnce(&mut Command)) -> Result<Outcome, String> {
        let deadline = self.deadline;
        let (command, stdin) = self.ferry_command(setup)?;
        run_bounded(command, stdin.as_deref(), deadline)
    }

    /// The `ferry` command line for this guest, and its input.
    fn ferry_command(
        self,
        setup: impl FnOnce(&mut Command),
    ) -> Result<(Command, Option<Vec<u8>>), String> {
        require_kvm()?;
        let kernel = match self.kernel {
            Some(k) => k,
            None => kernel()?,
        };
        let mut cmdline = self.cmdline;
        // The guest init's watchdog prints the guest's blocked tasks a
        // little before the deadline, so a hung run shows where it hung.
        let secs = self.deadline.as_secs();
        if secs >= 45 {
            cmdline.push(format!("ferry_watchdog={}", secs - 15));
        }
        let mut command = Command::new(ferry_bin()?);
        setup(&mut command);
        command.args([
            "--kernel".to_string(),
            kernel.display().to_string(),
            "--initramfs".into(),
            initramfs()?.display().to_string(),
            "--cmdline".into(),
            cmdline.join(" "),
        ]);
        command.args(self.args);
        command.envs(self.env);
        Ok((command, self.stdin))
    }
}

/// Standard base64 (busybox `base64 -d` reads it in the guest).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A fresh, empty directory for one test (`name` must be unique per test).
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("ferry-tests-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// Where [`scratch_dir`]s go: `FERRY_TEST_SCRATCH` (the emulated KVM host
/// sets it to a tmpfs of its own at /mnt), else `target/scratch`, else,
/// when the repository itself lies under a path `ferry run` guests replace
/// with their own tmpfs, `~/.cache/ferry/test-scratch`.
pub fn scratch_root() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_TEST_SCRATCH") {
        return PathBuf::from(p);
    }
    let target = repo_root().join("target/scratch");
    let real = repo_root().canonicalize().unwrap_or_else(|_| repo_root());
    let guest_private = ["/tmp", "/run", "/var/tmp", "/dev"]
        .iter()
        .any(|d| real.starts_with(d));
    match std::env::var_os("HOME") {
        Some(home) if guest_private => PathBuf::from(home).join(".cache/ferry/test-scratch"),
        _ => target,
    }
}

/// A fresh, empty directory for one test outside `/tmp`, `/run` and
/// `/var/tmp` (which `ferry run` guests replace with their own tmpfs), so
/// the guest sees it through the host root; see [`scratch_root`].
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_root()
        .join(format!("ferry-tests-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `bytes` to a fresh file in a per-process temp dir.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("temp file");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_run_past_its_deadline_is_killed_and_reported() {
        let begun = Instant::now();
        let err = run_bounded(
            sh("echo started; exec sleep 60"),
            None,
            Duration::from_millis(500),
        )
        .expect_err("a run past its deadline is an error");
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "took {:?}",
            begun.elapsed()
        );
        assert!(err.contains("did not finish within 500ms"), "{err}");
        assert!(err.contains("--- sleep ("), "the threads are named: {err}");
        assert!(err.contains("started"), "what it printed is kept: {err}");
    }

    #[test]
    fn a_child_left_holding_the_pipes_does_not_stall_the_collection() {
        let begun = Instant::now();
        let out = run_bounded(sh("sleep 60 & echo parent"), None, Duration::from_secs(30))
            .expect("the run itself ends");
        assert!(out.status.success());
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "took {:?}",
            begun.elapsed()
        );
        assert!(
            out.stdout.contains("parent"),
            "what came first is kept: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("the pipe stayed open"),
            "{}",
            out.stdout
        );
    }
}
