//! `ferry run`: one command in a throwaway VM whose root is the host's `/`
//! (read-only) and whose current directory is shared read-write. These run
//! without `--kernel`: Ferry finds the project kernel itself (or takes
//! `FERRY_KERNEL`, as the rest of the suite does).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::pty::{same_termios, PtySession};
use ferry_tests::{
    ferry_bin, require_kvm, run_ferry, run_ferry_input, run_ferry_with, scratch_dir, Input, Outcome,
};
use libtest_mimic::{Failed, Trial};

use crate::{check, rejects, trial, TestResult};

const DEADLINE: Duration = Duration::from_secs(120);

fn ferry_run_with(
    dir: &Path,
    args: &[&str],
    setup: impl FnOnce(&mut Command),
) -> Result<Outcome, Failed> {
    require_kvm()?;
    let mut all = vec!["run".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Ok(run_ferry_with(&all, None, DEADLINE, |c| {
        c.current_dir(dir);
        setup(c);
    })?)
}

fn ferry_run(dir: &Path, args: &[&str]) -> Result<Outcome, Failed> {
    ferry_run_with(dir, args, |_| {})
}

/// `ferry run ARGS` in `dir` with `input` as its stdin.
fn ferry_run_input(dir: &Path, args: &[&str], input: Input) -> Result<Outcome, Failed> {
    require_kvm()?;
    let mut all = vec!["run".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Ok(run_ferry_input(&all, input, DEADLINE, |c| {
        c.current_dir(dir);
    })?)
}

/// The command reads Ferry's stdin, to its end.
fn stdin_reaches_the_command() -> TestResult {
    let dir = scratch_dir("run_stdin");
    let out = ferry_run_input(&dir, &["wc", "-l"], Input::Bytes(b"a\nb\n".to_vec()))?;
    status_is(&out, 0)?;
    check(
        out.stdout.trim() == "2",
        "`printf 'a\\nb\\n' | ferry run -- wc -l` is not 2",
        &out,
    )?;
    // EOF reaches the command: cat ends and the shell goes on.
    let out = ferry_run_input(
        &dir,
        &["sh", "-c", "cat; echo after-eof"],
        Input::Bytes(b"first\n".to_vec()),
    )?;
    status_is(&out, 0)?;
    check(
        out.stdout == "first\nafter-eof\n",
        "the input and then EOF did not reach cat",
        &out,
    )?;
    let out = ferry_run_input(&dir, &["sh", "-c", "cat; echo end"], Input::Null)?;
    status_is(&out, 0)?;
    check(
        out.stdout == "end\n",
        "/dev/null is not an empty stdin",
        &out,
    )
}

/// 16 MiB of stdin, redirected from a file and through a pipe, arrive
/// byte for byte (sha256 against the host's).
fn large_stdin_arrives_intact() -> TestResult {
    let dir = scratch_dir("run_stdin_large");
    let mut data = vec![0u8; 16 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    let file = dir.join("input.bin");
    std::fs::write(&file, &data)?;
    let host = Command::new("sha256sum").arg(&file).output()?;
    let host_sum = String::from_utf8_lossy(&host.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    for (how, input) in [
        ("file", Input::File(file.clone())),
        ("pipe", Input::Bytes(data)),
    ] {
        let started = Instant::now();
        let out = ferry_run_input(&dir, &["sha256sum"], input)?;
        status_is(&out, 0)?;
        check(
            !host_sum.is_empty() && out.stdout.starts_with(&host_sum),
            &format!("16 MiB of stdin from a {how}: the guest's sha256 differs from {host_sum}"),
            &out,
        )?;
        println!("16 MiB of stdin from a {how}: {:.1?}", started.elapsed());
    }
    Ok(())
}

/// Input nobody reads never holds the VM: a command that ignores an
/// endless stdin ends, as does one that reads a part of it.
fn unread_stdin_does_not_hold_the_command() -> TestResult {
    let dir = scratch_dir("run_stdin_unread");
    let out = ferry_run_input(&dir, &["true"], Input::Endless)?;
    status_is(&out, 0)?;
    let out = ferry_run_input(
        &dir,
        &["sh", "-c", "head -c 100000 | wc -c"],
        Input::Endless,
    )?;
    status_is(&out, 0)?;
    check(
        out.stdout.trim() == "100000",
        "head did not get its 100000 bytes of an endless stdin",
        &out,
    )
}

fn status_is(out: &Outcome, status: i32) -> TestResult {
    check(
        out.code() == Some(status),
        &format!("expected exit status {status}"),
        out,
    )?;
    check(!out.stderr.contains("panicked"), "Ferry panicked", out)
}

fn exit_statuses_pass_through() -> TestResult {
    let dir = scratch_dir("run_status");
    for (cmd, status) in [
        (&["true"][..], 0),
        (&["false"][..], 1),
        (&["sh", "-c", "exit 42"][..], 42),
        (&["--", "/bin/sh", "-c", "exit 7"][..], 7),
        // Killed by a signal: 128 + its number, as a shell reports it.
        (&["sh", "-c", "kill -KILL $$"][..], 128 + 9),
    ] {
        status_is(&ferry_run(&dir, cmd)?, status)?;
    }
    Ok(())
}

fn stdout_and_stderr_stay_apart() -> TestResult {
    let dir = scratch_dir("run_streams");
    let out = ferry_run(
        &dir,
        &["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"],
    )?;
    status_is(&out, 0)?;
    // Exactly the command's output: no kernel or init messages in between.
    check(
        out.stdout == "to-out\nmore-out\n",
        "stdout is not exactly the command's stdout",
        &out,
    )?;
    check(
        out.stderr.contains("to-err\n") && !out.stderr.contains("to-out"),
        "stderr is not the command's stderr",
        &out,
    )
}

fn cwd_is_shared_read_write() -> TestResult {
    let dir = scratch_dir("run_cwd");
    std::fs::write(dir.join("from-host.txt"), "host data\n")?;
    let out = ferry_run(
        &dir,
        &[
            "sh",
            "-c",
            "pwd; cat from-host.txt; echo made-in-guest > new.txt; \
             mkdir sub && echo nested > sub/file",
        ],
    )?;
    status_is(&out, 0)?;
    let real = dir.canonicalize()?;
    check(
        out.stdout == format!("{}\nhost data\n", real.display()),
        "the command did not run in the caller's directory",
        &out,
    )?;
    check(
        std::fs::read_to_string(dir.join("new.txt")).ok().as_deref() == Some("made-in-guest\n")
            && std::fs::read_to_string(dir.join("sub/file"))
                .ok()
                .as_deref()
                == Some("nested\n"),
        "files written in the guest's cwd are not on the host",
        &out,
    )
}

/// The real ACL tools (the host's `setfacl`/`getfacl`, through `ferry
/// run`'s view of the host root) on a `--fs` share, where ACLs are on by
/// default: what they set is enforced in the guest (a named user reads a
/// 0600 file, another user may not), a default ACL is inherited, and
/// `getfacl` shows the same in the guest as on the host.
fn acl_tools_work_on_a_share() -> TestResult {
    let dir = scratch_dir("run_acl");
    let share = dir.join("acl");
    std::fs::create_dir(&share)?;
    let real = share.canonicalize()?;
    let spec = format!("tag=acl,path={}", real.display());
    let script = "set -e; cd acl; echo secret > f; chmod 0600 f; \
                  setfacl -m u:1002:r f; echo '--f'; getfacl -cn f; \
                  if setpriv --reuid=1002 --regid=1002 --clear-groups cat f >/dev/null; \
                  then echo named-user=read; fi; \
                  if setpriv --reuid=1003 --regid=1003 --clear-groups cat f 2>/dev/null; \
                  then echo other-user=read; else echo other-user=denied; fi; \
                  mkdir d; setfacl -d -m u:1002:rwx d; touch d/new; \
                  echo '--new'; getfacl -cn d/new";
    let out = ferry_run(&dir, &["--fs", &spec, "sh", "-c", script])?;
    status_is(&out, 0)?;
    for want in ["named-user=read", "other-user=denied"] {
        check(out.stdout.contains(want), &format!("expected {want}"), &out)?;
    }
    let host = |file: &str| -> Result<String, Failed> {
        let o = Command::new("getfacl")
            .args(["-cn", file])
            .current_dir(&real)
            .output()?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let guest_part = |from: &str, to: Option<&str>| -> String {
        let rest = out.stdout.split(from).nth(1).unwrap_or("");
        to.map_or(rest, |t| rest.split(t).next().unwrap_or(""))
            .trim()
            .to_string()
    };
    let (host_f, host_new) = (host("f")?, host("d/new")?);
    check(
        host_f.contains("user:1002:r--") && host_new.contains("user:1002:rwx"),
        &format!("the host has not the ACLs the guest set:\n{host_f}\n{host_new}"),
        &out,
    )?;
    check(
        guest_part("--f", Some("named-user")) == host_f.trim()
            && guest_part("--new", None) == host_new.trim(),
        &format!("getfacl differs between guest and host:\n{host_f}\n{host_new}"),
        &out,
    )
}

fn host_root_is_read_only() -> TestResult {
    let base = scratch_dir("run_readonly");
    let (cwd, outside) = (base.join("cwd"), base.join("outside"));
    std::fs::create_dir_all(&cwd)?;
    std::fs::create_dir_all(&outside)?;
    let file = outside.join("keep.txt");
    std::fs::write(&file, "original\n")?;
    let script = format!(
        "cat {f} || exit 10; \
         if echo changed > {f}; then exit 11; fi; \
         if rm {f}; then exit 12; fi; \
         if mkdir {o}/new; then exit 13; fi; \
         exit 0",
        f = file.display(),
        o = outside.display()
    );
    // Without the default overlays, which could cover the scratch space
    // (under /root or /home in direct mode).
    let out = ferry_run(&cwd, &["--no-overlay", "sh", "-c", &script])?;
    status_is(&out, 0)?;
    check(
        out.stderr.contains("Read-only file system"),
        "the guest's writes did not fail with EROFS",
        &out,
    )?;
    check(
        std::fs::read_to_string(&file)? == "original\n" && !outside.join("new").exists(),
        "the host path changed",
        &out,
    )
}

/// `--overlay DIR`: the command creates, changes and deletes files in a
/// host directory outside its shares and sees its changes; the host
/// directory is as it was.
fn overlay_keeps_writes_in_the_guest() -> TestResult {
    let base = scratch_dir("run_overlay");
    let (cwd, outside) = (base.join("cwd"), base.join("outside"));
    std::fs::create_dir_all(&cwd)?;
    std::fs::create_dir_all(outside.join("sub"))?;
    std::fs::write(outside.join("keep.txt"), "original\n")?;
    std::fs::write(outside.join("gone.txt"), "here\n")?;
    let script = format!(
        "cd {o} && echo changed > keep.txt && rm gone.txt && mkdir new && echo n > new/f \
         && rmdir sub && ls -a && cat keep.txt new/f",
        o = outside.display()
    );
    let overlay = outside.display().to_string();
    let out = ferry_run(&cwd, &["--overlay", &overlay, "sh", "-c", &script])?;
    status_is(&out, 0)?;
    check(
        out.stdout == ".\n..\nkeep.txt\nnew\nchanged\nn\n",
        "the guest did not see its own changes",
        &out,
    )?;
    let mut host: Vec<String> = std::fs::read_dir(&outside)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    host.sort();
    check(
        host == ["gone.txt", "keep.txt", "sub"]
            && std::fs::read_to_string(outside.join("keep.txt"))? == "original\n",
        &format!("the host directory changed: {host:?}"),
        &out,
    )
}

/// An overlay as a non-root user, compared with the same commands run on
/// the host as that user (on a copy): it may create in a directory it owns
/// and may not write a root-owned 0644 file there, and what it creates is
/// its own, in the guest exactly as on the host.
fn overlay_as_another_user_matches_the_host() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let base = scratch_dir("run_overlay_user");
    let cwd = base.join("cwd");
    std::fs::create_dir_all(&cwd)?;
    let prepare = |dir: &Path| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("rootfile"), "root's\n")?;
        std::fs::set_permissions(dir.join("rootfile"), std::fs::Permissions::from_mode(0o644))?;
        std::os::unix::fs::chown(dir, Some(65534), Some(65534))
    };
    let (guest_dir, host_dir) = (base.join("guest"), base.join("host"));
    prepare(&guest_dir)?;
    prepare(&host_dir)?;
    let script = |dir: &Path| {
        format!(
            "cd {} && echo new > mine && echo created; \
             if echo x > rootfile; then echo wrote-rootfile; else echo refused; fi; \
             stat -c '%u %g %a' mine; cat rootfile",
            dir.display()
        )
    };
    let host = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script(&host_dir))
        .output()?;
    let host_out = String::from_utf8_lossy(&host.stdout).into_owned();
    let overlay = guest_dir.display().to_string();
    let out = ferry_run(
        &cwd,
        &[
            "--user",
            "nobody",
            "--overlay",
            &overlay,
            "--",
            "sh",
            "-c",
            &script(&guest_dir),
        ],
    )?;
    status_is(&out, 0)?;
    check(
        host_out.starts_with("created\nrefused\n") && out.stdout == host_out,
        &format!("the guest differs from the host, which printed:\n{host_out}"),
        &out,
    )?;
    check(
        !guest_dir.join("mine").exists(),
        "the guest's file reached the host directory",
        &out,
    )
}

/// The default overlays: guest root writes under /etc and in its HOME,
/// reads it back, and the host has none of it; `--no-overlay` leaves /etc
/// read-only.
fn default_overlays_discard_writes() -> TestResult {
    let dir = scratch_dir("run_overlay_defaults");
    let probe = format!("ferry-probe-{}", std::process::id());
    let script = format!(
        "echo etc > /etc/{probe} && echo home > $HOME/{probe} && cat /etc/{probe} $HOME/{probe}"
    );
    let out = ferry_run(&dir, &["--user", "root", "--", "sh", "-c", &script])?;
    status_is(&out, 0)?;
    check(
        out.stdout == "etc\nhome\n",
        "the guest did not read its writes back",
        &out,
    )?;
    check(
        !Path::new("/etc").join(&probe).exists() && !Path::new("/root").join(&probe).exists(),
        "a guest write under /etc or /root reached the host",
        &out,
    )?;
    let out = ferry_run(
        &dir,
        &["--no-overlay", "--user", "root", "--", "sh", "-c", &script],
    )?;
    check(
        out.code().is_some_and(|c| c != 0) && out.stderr.contains("Read-only file system"),
        "with --no-overlay a write under /etc must fail with EROFS",
        &out,
    )
}

/// `--fs ...,guest=PATH` and `--rw HOST:GUEST`: shares mounted where the
/// user says, writes reaching the host directories.
fn shares_at_guest_paths() -> TestResult {
    let base = scratch_dir("run_guest_path");
    let (cwd, data, out_dir) = (base.join("cwd"), base.join("data"), base.join("out"));
    for d in [&cwd, &data, &out_dir] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(data.join("hello"), "from the host\n")?;
    let fs = format!("tag=data,path={},guest=/tmp/ferry-data", data.display());
    let rw = format!("{}:/var/ferry-out", out_dir.display());
    let out = ferry_run(
        &cwd,
        &[
            "--fs",
            &fs,
            "--rw",
            &rw,
            "--",
            "sh",
            "-c",
            "cat /tmp/ferry-data/hello && echo back > /tmp/ferry-data/reply \
             && echo out > /var/ferry-out/f",
        ],
    )?;
    status_is(&out, 0)?;
    check(
        out.stdout.starts_with("from the host\n"),
        "the --fs share is not at its guest path",
        &out,
    )?;
    check(
        std::fs::read_to_string(data.join("reply"))? == "back\n"
            && std::fs::read_to_string(out_dir.join("f"))? == "out\n",
        "writes at the guest paths did not reach the host directories",
        &out,
    )
}

/// How long a nested guest may take to show a prompt or answer a line.
const TTY_WAIT: Duration = Duration::from_secs(60);

fn run_args(args: &[&str]) -> Vec<String> {
    std::iter::once("run")
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

/// An interactive shell through a host terminal: it runs on a pty of the
/// host terminal's size, answers typed lines, survives Ctrl-C (which goes
/// to its foreground job), follows a resize, passes its exit status on,
/// and the host terminal ends as it began.
fn tty_interactive_shell() -> TestResult {
    require_kvm()?;
    let dir = scratch_dir("run_tty");
    let args = run_args(&[
        "--",
        "env",
        "PS1=ferry$ ",
        "bash",
        "--norc",
        "--noprofile",
        "-i",
    ]);
    let mut s = PtySession::start(&args, 33, 101, &dir)?;
    s.expect("ferry$ ", TTY_WAIT)?;
    s.send(b"echo $((6*7))\r")?;
    s.expect("42\r\n", TTY_WAIT)?;
    s.send(b"tty; stty size\r")?;
    s.expect("/dev/pts/", TTY_WAIT)?;
    s.expect("33 101", TTY_WAIT)?;
    s.send(b"sleep 100\r")?;
    std::thread::sleep(Duration::from_secs(2));
    s.send(b"\x03")?;
    s.expect("ferry$ ", TTY_WAIT)?;
    s.send(b"echo rc=$?\r")?;
    s.expect("rc=130", TTY_WAIT)?;
    s.resize(40, 120)?;
    let mut resized = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        s.send(b"stty size\r")?;
        if s.expect("40 120", Duration::from_secs(5)).is_ok() {
            resized = true;
            break;
        }
    }
    if !resized {
        return Err(format!("the guest's terminal never became 40x120:\n{}", s.screen()).into());
    }
    s.send(b"exit 7\r")?;
    ends_with_terminal_restored(&mut s, 7)
}

/// Ferry on `s` exits with `code`, and the host terminal's settings are
/// the ones it started with.
fn ends_with_terminal_restored(s: &mut PtySession, code: i32) -> TestResult {
    let status = s.wait(TTY_WAIT)?;
    if status.code() != Some(code) {
        return Err(format!("exit status {status:?}, expected {code}:\n{}", s.screen()).into());
    }
    if !same_termios(&s.termios()?, &s.initial) {
        return Err("the host terminal's settings differ from before".into());
    }
    Ok(())
}

/// A full-screen editor through the terminal: vim draws on the guest pty,
/// takes typed keys (insert mode, Escape, `:wq`), writes the file into the
/// shared directory, and the host terminal comes back as it was.
fn tty_vim_edits_a_file() -> TestResult {
    require_kvm()?;
    let dir = scratch_dir("run_tty_vim");
    let vim = "/usr/bin/vim.tiny";
    if !Path::new(vim).exists() {
        return Err(
            format!("{vim} is missing (resources/install-deps.sh installs vim-tiny)").into(),
        );
    }
    let args = run_args(&[
        "--",
        "env",
        "TERM=xterm",
        vim,
        "-u",
        "NONE",
        "-i",
        "NONE",
        "-N",
        "notes.txt",
    ]);
    let mut s = PtySession::start(&args, 24, 80, &dir)?;
    // vim's status line for a new file.
    s.expect("notes.txt", TTY_WAIT)?;
    s.send(b"ihello from vim")?;
    s.expect("hello from vim", TTY_WAIT)?;
    s.send(b"\x1b:wq\r")?;
    ends_with_terminal_restored(&mut s, 0)?;
    let written = std::fs::read_to_string(dir.join("notes.txt"))?;
    if written != "hello from vim\n" {
        return Err(format!("notes.txt holds {written:?}:\n{}", s.screen()).into());
    }
    Ok(())
}

/// `-T` on a terminal: the command gets no terminal; `-t` with pipes: it
/// gets one.
fn tty_forced_and_refused() -> TestResult {
    require_kvm()?;
    let dir = scratch_dir("run_tty_flags");
    let args = run_args(&["-T", "--", "sh", "-c", "test -t 0 || echo no-terminal"]);
    let mut s = PtySession::start(&args, 24, 80, &dir)?;
    s.expect("no-terminal", TTY_WAIT)?;
    let status = s.wait(TTY_WAIT)?;
    if status.code() != Some(0) {
        return Err(format!("-T: exit status {status:?}:\n{}", s.screen()).into());
    }
    let out = ferry_run(&dir, &["-t", "--", "tty"])?;
    status_is(&out, 0)?;
    check(
        out.stdout.contains("/dev/pts/"),
        "-t did not give the command a terminal",
        &out,
    )
}

/// Ferry killed with SIGKILL while the terminal is raw: its guard puts the
/// terminal back.
fn tty_restored_after_sigkill() -> TestResult {
    require_kvm()?;
    let dir = scratch_dir("run_tty_kill");
    let args = run_args(&["--", "sleep", "100"]);
    let mut s = PtySession::start(&args, 24, 80, &dir)?;
    let raw_by = Instant::now() + TTY_WAIT;
    while same_termios(&s.termios()?, &s.initial) {
        if Instant::now() > raw_by {
            return Err("Ferry never put the terminal in raw mode".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill sends a signal to the child we started.
    unsafe { libc::kill(libc::pid_t::try_from(s.pid())?, libc::SIGKILL) };
    s.wait(TTY_WAIT)?;
    let back_by = Instant::now() + Duration::from_secs(5);
    while !same_termios(&s.termios()?, &s.initial) {
        if Instant::now() > back_by {
            return Err("after SIGKILL the terminal stayed raw".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The newest Debian kernel in /boot (`linux-image-amd64`), and its
/// release.
pub(crate) fn debian_kernel() -> Result<(PathBuf, String), Failed> {
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let release = name.strip_prefix("vmlinuz-")?;
            release.ends_with("-amd64").then(|| release.to_string())
        })
        .collect();
    found.sort();
    let release = found.pop().ok_or(
        "no /boot/vmlinuz-*-amd64: these tests need Debian's packaged kernel \
         (apt-get install linux-image-amd64; resources/install-deps.sh does)",
    )?;
    Ok((PathBuf::from(format!("/boot/vmlinuz-{release}")), release))
}

/// How long a distribution kernel may take (it probes much more hardware
/// than the project's; about 35 s in the emulated KVM host).
pub(crate) const DISTRO_DEADLINE: Duration = Duration::from_secs(300);

/// `ferry run --kernel /boot/vmlinuz-…` with Debian's kernel: Ferry brings
/// virtio-pci, virtio-fs, FUSE and overlayfs from /lib/modules in its own
/// initramfs; the command sees that kernel, its stdin, its overlays and
/// the kernel file systems the distribution kernel has.
fn distro_kernel_runs_a_command() -> TestResult {
    require_kvm()?;
    let (kernel, release) = debian_kernel()?;
    let dir = scratch_dir("run_distro");
    let args: Vec<String> = run_args(&[
        "--kernel",
        &kernel.display().to_string(),
        "--user",
        "root",
        "--",
        "sh",
        "-c",
        "uname -r; cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' '; echo; \
         wc -l; echo x > /etc/ferry-probe && cat /etc/ferry-probe; \
         grep -c ' /sys/kernel/tracing tracefs ' /proc/self/mounts",
    ]);
    let started = Instant::now();
    let out = run_ferry_input(
        &args,
        Input::Bytes(b"a\nb\nc\n".to_vec()),
        DISTRO_DEADLINE,
        |c| {
            c.current_dir(&dir);
        },
    )?;
    status_is(&out, 0)?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    let modules = lines.get(1).copied().unwrap_or_default();
    check(
        lines.first() == Some(&release.as_str())
            && ["virtio_pci", "virtiofs", "fuse", "overlay"]
                .iter()
                .all(|m| modules.split(' ').any(|x| x == *m))
            && lines.get(2) == Some(&"3")
            && lines.get(3) == Some(&"x")
            && lines.get(4) == Some(&"1"),
        &format!(
            "expected release {release}, the modules loaded, 3 lines of stdin, an overlay \
             write and tracefs"
        ),
        &out,
    )?;
    println!(
        "Debian kernel {release}: ferry run in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// The modules `wanted` and everything they depend on, as Debian's
/// `modules.dep` for `release` lists them (paths under its directory).
fn debian_module_closure(release: &str, wanted: &[&str]) -> Result<Vec<String>, Failed> {
    let dep = std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep"))?;
    let mut files = Vec::new();
    for line in dep.lines() {
        let Some((file, deps)) = line.split_once(':') else {
            continue;
        };
        let stem = file.rsplit('/').next().unwrap_or(file);
        if wanted.iter().any(|w| stem == format!("{w}.ko")) {
            for f in std::iter::once(file).chain(deps.split_whitespace()) {
                if !files.iter().any(|x| x == f) {
                    files.push(f.to_string());
                }
            }
        }
    }
    if files.len() < wanted.len() {
        return Err(format!("{release}: modules.dep lacks some of {wanted:?}").into());
    }
    Ok(files)
}

/// Lays Debian's modules for Ferry's devices out as a kernel build tree
/// does (no `modules.dep`, the files where the build left them), each
/// compressed in turn with xz, zstd or gzip, as distributions ship them.
/// `patch` may rewrite a module's bytes on the way.
fn debian_modules_as_a_build_tree(
    release: &str,
    into: &Path,
    patch: impl Fn(&str, Vec<u8>) -> Vec<u8>,
) -> Result<(), Failed> {
    let files = debian_module_closure(release, &["virtio_pci", "virtiofs", "overlay"])?;
    for (i, file) in files.iter().enumerate() {
        let data = patch(
            file,
            std::fs::read(format!("/lib/modules/{release}/{file}"))?,
        );
        let (tool, ext) = [("xz", ".xz"), ("zstd", ".zst"), ("gzip", ".gz")][i % 3];
        let dest = into.join(format!("{}{ext}", file.trim_start_matches("kernel/")));
        std::fs::create_dir_all(dest.parent().ok_or("no parent")?)?;
        let mut child = Command::new(tool)
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&dest)?)
            .spawn()
            .map_err(|e| format!("{tool}: {e} (resources/install-deps.sh installs it)"))?;
        std::io::Write::write_all(&mut child.stdin.take().ok_or("no stdin")?, &data)?;
        if !child.wait()?.success() {
            return Err(format!("{tool} failed on {file}").into());
        }
    }
    std::fs::copy(
        format!("/lib/modules/{release}/modules.builtin"),
        into.join("modules.builtin"),
    )?;
    Ok(())
}

/// `--modules DIR` with a kernel build tree's layout, every module
/// compressed (xz, zstd, gzip): Ferry finds them without `modules.dep`,
/// orders them by their own `depends=`, decompresses them and the guest
/// loads them.
fn distro_kernel_with_a_build_tree() -> TestResult {
    require_kvm()?;
    let (kernel, release) = debian_kernel()?;
    let dir = scratch_dir("run_build_tree");
    let tree = dir.join("linux");
    debian_modules_as_a_build_tree(&release, &tree, |_, d| d)?;
    let kernel = kernel.display().to_string();
    let tree = tree.display().to_string();
    let args = run_args(&[
        "--kernel",
        &kernel,
        "--modules",
        &tree,
        "--",
        "sh",
        "-c",
        "cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' '; echo x > /etc/probe && cat /etc/probe",
    ]);
    let out = run_ferry_input(&args, Input::Null, DISTRO_DEADLINE, |c| {
        c.current_dir(&dir);
    })?;
    status_is(&out, 0)?;
    check(
        ["virtio_pci", "virtiofs", "fuse", "overlay"]
            .iter()
            .all(|m| out.stdout.split_whitespace().any(|x| x == *m))
            && out.stdout.trim_end().ends_with('x'),
        "expected the modules loaded from the build tree and an overlay write",
        &out,
    )
}

/// Modules built for another kernel (one module's vermagic names another
/// release) are refused before anything boots: one line, status 125.
fn modules_for_another_kernel() -> TestResult {
    let (kernel, release) = debian_kernel()?;
    let dir = scratch_dir("run_wrong_modules");
    let tree = dir.join("linux");
    let other = format!("{}X", &release[..release.len() - 1]);
    let needle = format!("vermagic={release}");
    debian_modules_as_a_build_tree(&release, &tree, |file, mut data| {
        if file.ends_with("/fuse.ko") {
            if let Some(at) = data
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let at = at + "vermagic=".len();
                data[at..at + other.len()].copy_from_slice(other.as_bytes());
            }
        }
        data
    })?;
    let kernel = kernel.display().to_string();
    let tree = tree.display().to_string();
    run_rejects_125(
        &["--kernel", &kernel, "--modules", &tree, "--", "true"],
        &format!("modules for another kernel: {tree}/fs/fuse/fuse.ko"),
    )?;
    run_rejects_125(
        &[
            "--kernel",
            &kernel,
            "--modules",
            "/no/such/tree",
            "--",
            "true",
        ],
        "--modules /no/such/tree: not a directory",
    )
}

fn timeout_stops_the_vm() -> TestResult {
    let dir = scratch_dir("run_timeout");
    let out = ferry_run(&dir, &["--timeout", "2s", "--", "sleep", "60"])?;
    status_is(&out, 124)?;
    // The 2 s count from the start; booting takes a few more. A bound
    // against hanging, not a performance figure.
    check(
        out.elapsed < Duration::from_secs(30),
        "the timeout did not stop the VM",
        &out,
    )
}

fn large_host_file_reads_back() -> TestResult {
    let base = scratch_dir("run_large");
    let file = base.join("big.bin");
    let mut data = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        // xorshift: incompressible and reproducible.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&file, &data)?;
    let host = Command::new("sha256sum").arg(&file).output()?;
    let host_sum = String::from_utf8_lossy(&host.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    // Read through the read-only root share (it is not the cwd).
    let cwd = base.join("cwd");
    std::fs::create_dir_all(&cwd)?;
    let out = ferry_run(&cwd, &["sha256sum", &file.display().to_string()])?;
    status_is(&out, 0)?;
    check(
        !host_sum.is_empty() && out.stdout.starts_with(&host_sum),
        &format!("guest sha256 differs from the host's {host_sum}"),
        &out,
    )
}

fn environment_and_identity_pass_through() -> TestResult {
    let dir = scratch_dir("run_env");
    let out = ferry_run_with(
        &dir,
        &[
            "sh",
            "-c",
            "echo \"probe=$FERRY_PROBE\"; echo \"display=${DISPLAY-unset}\"; \
             echo \"ids=$(id -u):$(id -g)\"; echo \"pwd=$PWD\"; echo \"umask=$(umask)\"",
        ],
        |c| {
            c.env("FERRY_PROBE", "a b  c").env("DISPLAY", ":9");
        },
    )?;
    status_is(&out, 0)?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let expect = format!(
        "probe=a b  c\ndisplay=unset\nids={uid}:{gid}\npwd={}\n",
        dir.canonicalize()?.display()
    );
    check(
        out.stdout.starts_with(&expect),
        &format!("expected the caller's environment and ids:\n{expect}"),
        &out,
    )
}

/// The use the command exists for: a project's own check, with make (from
/// the host's /usr/bin) writing in the project directory.
fn make_check_runs_in_the_project() -> TestResult {
    let dir = scratch_dir("run_make");
    std::fs::write(
        dir.join("Makefile"),
        "check: result.txt\n\tgrep -q built result.txt && echo check-passed\n\
         result.txt:\n\techo built > $@\n",
    )?;
    let out = ferry_run(&dir, &["make", "check"])?;
    status_is(&out, 0)?;
    check(
        out.stdout.contains("check-passed")
            && std::fs::read_to_string(dir.join("result.txt"))
                .ok()
                .as_deref()
                == Some("built\n"),
        "make check did not run in the project directory",
        &out,
    )
}

/// The `CapEff:` and `CapBnd:` masks printed by `grep Cap /proc/self/status`.
fn capabilities(out: &Outcome) -> (Option<&str>, Option<&str>) {
    let mask = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    (mask("CapEff:"), mask("CapBnd:"))
}

/// `--user root`: uid 0 with every capability, so it can mount.
fn user_root_has_every_capability() -> TestResult {
    let dir = scratch_dir("run_user_root");
    let out = ferry_run(
        &dir,
        &[
            "--user",
            "root",
            "--",
            "sh",
            "-c",
            "id -u; echo home=$HOME user=$USER; grep Cap /proc/self/status; \
             mount -t tmpfs none /mnt && echo mounted",
        ],
    )?;
    status_is(&out, 0)?;
    let (eff, bnd) = capabilities(&out);
    check(
        out.stdout.starts_with("0\nhome=/root user=root\n")
            && eff.is_some()
            && eff == bnd
            && out.stdout.contains("mounted\n"),
        "expected uid 0, root's HOME and USER, CapEff equal to CapBnd and a mount",
        &out,
    )
}

/// `--user nobody`: its uid, gid and HOME from passwd, no capabilities,
/// and it cannot do what root can.
fn user_by_name_runs_as_that_user() -> TestResult {
    let dir = scratch_dir("run_user_nobody");
    let out = ferry_run(
        &dir,
        &[
            "--user",
            "nobody",
            "--",
            "sh",
            "-c",
            "echo ids=$(id -u):$(id -g) user=$USER logname=$LOGNAME; grep Cap /proc/self/status; \
             mount -t tmpfs none /mnt 2>/dev/null || echo mount-refused",
        ],
    )?;
    status_is(&out, 0)?;
    let (eff, _) = capabilities(&out);
    check(
        out.stdout
            .starts_with("ids=65534:65534 user=nobody logname=nobody\n")
            && eff == Some("0000000000000000")
            && out.stdout.contains("mount-refused\n"),
        "expected nobody's ids and names, no capabilities, a refused mount",
        &out,
    )
}

/// The kernel file systems kernel and eBPF work expects are mounted where
/// systemd puts them, and they work (tracefs answers).
fn kernel_file_systems_are_mounted() -> TestResult {
    let dir = scratch_dir("run_kernel_fs");
    let out = ferry_run(
        &dir,
        &[
            "sh",
            "-c",
            "cat /proc/self/mounts; echo clock=$(cat /sys/kernel/tracing/trace_clock)",
        ],
    )?;
    status_is(&out, 0)?;
    let mounted = |fstype: &str, at: &str| {
        out.stdout.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == at && f[2] == fstype
        })
    };
    for (fstype, at) in [
        ("securityfs", "/sys/kernel/security"),
        ("debugfs", "/sys/kernel/debug"),
        ("tracefs", "/sys/kernel/tracing"),
        ("cgroup2", "/sys/fs/cgroup"),
        ("bpf", "/sys/fs/bpf"),
        ("configfs", "/sys/kernel/config"),
        ("mqueue", "/dev/mqueue"),
        ("hugetlbfs", "/dev/hugepages"),
    ] {
        check(
            mounted(fstype, at),
            &format!("{fstype} is not mounted at {at}"),
            &out,
        )?;
    }
    check(
        out.stdout
            .lines()
            .any(|l| l.starts_with("clock=") && l.contains("[local]")),
        "tracefs did not answer trace_clock",
        &out,
    )
}

fn missing_command_is_127() -> TestResult {
    let dir = scratch_dir("run_missing");
    let out = ferry_run(&dir, &["no-such-command-for-ferry"])?;
    status_is(&out, 127)?;
    check(
        out.stderr.contains("no-such-command-for-ferry"),
        "stderr should name the missing command",
        &out,
    )
}

fn default_kernel_is_found() -> TestResult {
    let dir = scratch_dir("run_kernel");
    let empty_cache = dir.join("empty-cache");
    std::fs::create_dir_all(&empty_cache)?;
    // Only the kernel beside the ferry binary (target/guest) can be found.
    let out = ferry_run_with(&dir, &["true"], |c| {
        c.env_remove("FERRY_KERNEL")
            .env("FERRY_CACHE", &empty_cache);
    })?;
    status_is(&out, 0)
}

/// With no `--kernel`, no project kernel beside the binary and an empty
/// cache, `ferry run` takes a kernel from /boot (the running one's, else
/// the newest: here Debian's) and its modules.
fn default_kernel_from_boot() -> TestResult {
    require_kvm()?;
    let (_, release) = debian_kernel()?;
    let dir = scratch_dir("run_kernel_boot");
    let empty_cache = dir.join("empty-cache");
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(&empty_cache)?;
    let copy = dir.join("bin/ferry");
    std::fs::copy(ferry_bin()?, &copy)?;
    // Bounded by timeout(1): a hang fails the test instead of the suite.
    let out = Command::new("timeout")
        .arg(DISTRO_DEADLINE.as_secs().to_string())
        .arg(&copy)
        .args(["run", "--", "uname", "-r"])
        .env_remove("FERRY_KERNEL")
        .env("FERRY_CACHE", &empty_cache)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(0) || stdout.trim() != release {
        return Err(format!(
            "expected {release} from /boot, got {:?}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Ferry's exit code once it exits, which must be within 20 s of `what`.
fn exit_within(child: &mut std::process::Child, what: &str) -> Result<Option<i32>, Failed> {
    let since = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st.code());
        }
        if since.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return Err(format!("ferry still ran 20 s after {what}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `ferry run` on a command that says "ready" and sleeps, sends
/// `signal` once the guest is ready, and checks Ferry's exit status.
fn signal_stops_the_vm(signal: i32, status: i32) -> TestResult {
    require_kvm()?;
    let dir = scratch_dir(&format!("run_signal_{signal}"));
    let mut child = Command::new(ferry_bin()?)
        .args(["run", "--", "sh", "-c", "echo ready; exec sleep 60"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(DEADLINE).is_err() {
        let _ = child.kill();
        return Err("the guest never became ready".into());
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id().cast_signed(), signal) };
    let code = exit_within(&mut child, &format!("signal {signal}"))?;
    if code != Some(status) {
        return Err(format!("signal {signal}: exit {code:?}, expected {status}").into());
    }
    Ok(())
}

/// `ferry run -- yes | head -1`: once nobody reads Ferry's stdout the VM
/// ends, as SIGPIPE ends a host process (128 + 13).
fn closed_stdout_ends_the_vm() -> TestResult {
    require_kvm()?;
    let dir = scratch_dir("run_sigpipe");
    let mut child = Command::new(ferry_bin()?)
        .args(["run", "--", "yes"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // The first line is read on a thread, so a guest that never prints
    // fails the test at the deadline instead of blocking it; the reader
    // then drops its end, which closes Ferry's stdout.
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let Ok(first) = rx.recv_timeout(DEADLINE) else {
        let _ = child.kill();
        return Err(format!("no line from `yes` within {DEADLINE:?}").into());
    };
    let code = exit_within(&mut child, "its stdout closed")?;
    if first != "y\n" || code != Some(141) {
        return Err(format!("first line {first:?}, exit {code:?}; expected \"y\", 141").into());
    }
    Ok(())
}

fn run_rejects(args: &[&str], expect: &str) -> TestResult {
    let mut all = vec!["run".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    rejects(&all, expect)
}

/// Bad input that only Ferry can judge (not the argument parser): exactly
/// one line on stderr and status 125.
fn run_rejects_125(args: &[&str], expect: &str) -> TestResult {
    let all = run_args(args);
    let out = run_ferry(&all, None, Duration::from_secs(60))?;
    status_is(&out, 125)?;
    check(
        out.stderr.trim_end().lines().count() == 1 && out.stderr.contains(expect),
        &format!("expected one line on stderr naming '{expect}'"),
        &out,
    )
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial("run::exit_statuses", exit_statuses_pass_through),
        trial("run::stdout_and_stderr", stdout_and_stderr_stay_apart),
        trial("run::cwd_read_write", cwd_is_shared_read_write),
        trial("run::acl_tools_on_a_share", acl_tools_work_on_a_share),
        trial("run::host_root_read_only", host_root_is_read_only),
        trial("run::timeout", timeout_stops_the_vm),
        trial("run::large_host_file", large_host_file_reads_back),
        trial(
            "run::environment_and_ids",
            environment_and_identity_pass_through,
        ),
        trial("run::make_check", make_check_runs_in_the_project),
        trial("run::missing_command", missing_command_is_127),
        trial("run::default_kernel", default_kernel_is_found),
        trial("run::sigterm", || signal_stops_the_vm(libc::SIGTERM, 143)),
        trial("run::sigint", || signal_stops_the_vm(libc::SIGINT, 130)),
        trial("run::stdout_closed", closed_stdout_ends_the_vm),
        trial("run::stdin::reaches_the_command", stdin_reaches_the_command),
        trial("run::stdin::large_intact", large_stdin_arrives_intact),
        trial(
            "run::stdin::unread_does_not_hold",
            unread_stdin_does_not_hold_the_command,
        ),
        trial("run::bad_input::no_command", || run_rejects(&[], "CMD")),
        trial("run::bad_input::missing_rw_dir", || {
            run_rejects(&["--rw", "/no/such/dir", "--", "true"], "/no/such/dir")
        }),
        trial("run::bad_input::missing_kernel", || {
            run_rejects(
                &["--kernel", "/no/such/bzImage", "--", "true"],
                "/no/such/bzImage",
            )
        }),
        trial("run::bad_input::bad_timeout", || {
            run_rejects(&["--timeout", "soon", "--", "true"], "duration")
        }),
        trial("run::kernel_file_systems", kernel_file_systems_are_mounted),
        trial("run::overlay::explicit", overlay_keeps_writes_in_the_guest),
        trial("run::overlay::defaults", default_overlays_discard_writes),
        trial(
            "run::overlay::other_user_as_on_the_host",
            overlay_as_another_user_matches_the_host,
        ),
        trial("run::bad_input::missing_overlay", || {
            run_rejects_125(
                &["--overlay", "/no/such/dir", "--", "true"],
                "--overlay /no/such/dir: no such directory",
            )
        }),
        trial("run::guest_paths", shares_at_guest_paths),
        trial("run::bad_input::relative_guest_path", || {
            run_rejects(
                &["--fs", "tag=x,path=/tmp,guest=relative", "--", "true"],
                "guest=relative: must be an absolute path",
            )
        }),
        trial("run::bad_input::uncreatable_guest_path", || {
            run_rejects(
                &[
                    "--no-overlay",
                    "--rw",
                    "/tmp:/no-such-dir-for-ferry/x",
                    "--",
                    "true",
                ],
                "the guest's root is read-only",
            )
        }),
        trial("run::tty::interactive_shell", tty_interactive_shell),
        trial("run::tty::forced_and_refused", tty_forced_and_refused),
        trial("run::tty::vim_edits_a_file", tty_vim_edits_a_file),
        trial(
            "run::tty::restored_after_sigkill",
            tty_restored_after_sigkill,
        ),
        trial("run::bad_input::not_a_kernel", || {
            run_rejects_125(
                &["--kernel", "/etc/hostname", "--", "true"],
                "/etc/hostname: not a Linux kernel image",
            )
        }),
        trial("run::distro::debian_kernel", distro_kernel_runs_a_command),
        trial(
            "run::distro::default_kernel_from_boot",
            default_kernel_from_boot,
        ),
        trial(
            "run::distro::build_tree_modules",
            distro_kernel_with_a_build_tree,
        ),
        trial(
            "run::bad_input::modules_for_another_kernel",
            modules_for_another_kernel,
        ),
        trial("run::user::root", user_root_has_every_capability),
        trial("run::user::by_name", user_by_name_runs_as_that_user),
        trial("run::bad_input::unknown_user", || {
            run_rejects(
                &["--user", "no-such-user-for-ferry", "--", "true"],
                "--user no-such-user-for-ferry: no such user",
            )
        }),
    ]
}
