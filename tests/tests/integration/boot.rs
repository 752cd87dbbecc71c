//! Booting: the project kernel runs a command, exits with its status, sees
//! its CPUs and memory; misbehaving tiny kernels end Ferry cleanly; bad
//! input is rejected.

use std::time::Duration;

use ferry_tests::elf::{tiny_elf, EXIT_42, HALT_FOREVER, JUMP_INTO_NOTHING, TRIPLE_FAULT};
use ferry_tests::{run_ferry, temp_file, Guest, Outcome};
use libtest_mimic::{Failed, Trial};

use crate::{check, guest_ok, trial, TestResult};

fn boots_and_runs_a_command() -> TestResult {
    let out = Guest::command("echo hello from the $(uname -s) guest").run()?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains("hello from the Linux guest"),
        "greeting missing",
        &out,
    )
}

fn exit_status_passes_through() -> TestResult {
    let out = Guest::command("exit 3").run()?;
    guest_ok(&out, 3)
}

fn elf_vmlinux_boots_through_pvh() -> TestResult {
    let out = Guest::command("echo pvh-ok")
        .kernel(ferry_tests::vmlinux()?)
        .arg("--log-level")
        .arg("info")
        .run()?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains("pvh-ok"),
        "command output missing",
        &out,
    )?;
    check(
        out.stderr.contains("PVH entry"),
        "Ferry did not use the PVH entry",
        &out,
    )
}

fn four_cpus_are_online() -> TestResult {
    let out = Guest::command("echo cpus=$(grep -c ^processor /proc/cpuinfo) online=$(cat /sys/devices/system/cpu/online)")
        .arg("--cpus")
        .arg("4")
        .run()?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains("cpus=4 online=0-3"),
        "expected 4 online CPUs",
        &out,
    )
}

fn mem_total_kib(out: &Outcome) -> Option<u64> {
    let line = out.stdout.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn memory_matches(size: &str, bytes: u64) -> TestResult {
    let out = Guest::command("grep MemTotal /proc/meminfo")
        .arg("--memory")
        .arg(size)
        .run()?;
    guest_ok(&out, 0)?;
    let kib = mem_total_kib(&out).ok_or_else(|| format!("no MemTotal\n{}", out.describe()))?;
    let expected = bytes / 1024;
    let low = expected * 9 / 10;
    let high = expected * 11 / 10;
    check(
        (low..=high).contains(&kib),
        &format!("MemTotal {kib} KiB not within 10% of {expected} KiB"),
        &out,
    )
}

fn reboot_ends_ferry_cleanly() -> TestResult {
    let out = Guest::command("echo rebooting; reboot -f; sleep 30")
        .arg("--log-level")
        .arg("info")
        .run()?;
    check(
        out.code() == Some(0),
        "reboot should end Ferry with status 0",
        &out,
    )?;
    check(
        out.stdout.contains("rebooting"),
        "command did not run",
        &out,
    )?;
    check(
        !out.stdout.contains("ferry-init: exit status"),
        "guest left through the exit port, not reboot",
        &out,
    )?;
    check(
        out.stderr.contains("guest reset"),
        "Ferry did not report the reset",
        &out,
    )
}

fn console_input_reaches_the_guest_shell() -> TestResult {
    let out = Guest::shell(b"echo typed-$((6 * 7))\nexit 5\n").run()?;
    check(
        out.stdout.contains("typed-42"),
        "shell did not run the typed line",
        &out,
    )?;
    guest_ok(&out, 5)
}

fn tiny_kernel(name: &str, code: &[u8], extra: &[&str], deadline: u64) -> Result<Outcome, Failed> {
    ferry_tests::require_kvm()?;
    let path = temp_file(name, &tiny_elf(code));
    let mut args = vec!["--kernel".to_string(), path.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(run_ferry(&args, None, Duration::from_secs(deadline))?)
}

fn exit_port_sets_the_status() -> TestResult {
    let out = tiny_kernel("exit42.elf", EXIT_42, &[], 30)?;
    check(
        out.code() == Some(42),
        "exit port value should be the status",
        &out,
    )
}

fn triple_fault_stops_the_vm() -> TestResult {
    let out = tiny_kernel("triple.elf", TRIPLE_FAULT, &["--log-level", "info"], 30)?;
    check(
        out.code() == Some(0),
        "a triple fault is a clean stop",
        &out,
    )?;
    check(
        out.stderr.contains("triple-faulted"),
        "Ferry did not say why it stopped",
        &out,
    )
}

fn stalled_guest_is_detected() -> TestResult {
    let out = tiny_kernel("halt.elf", HALT_FOREVER, &["--stall-timeout", "2"], 30)?;
    check(
        out.code() == Some(1),
        "a dead guest must end Ferry with status 1",
        &out,
    )?;
    check(
        out.stderr.contains("stopped making progress"),
        "no stall message",
        &out,
    )?;
    check(
        out.elapsed < Duration::from_secs(15),
        "stall detection took too long",
        &out,
    )
}

/// A guest that never ends fails its test at the deadline, with the
/// evidence a hang needs: the guest's processes (the init's watchdog, a
/// little before the deadline) and what each Ferry thread waited in.
fn hung_guest_fails_with_its_evidence() -> TestResult {
    let run = Guest::command("mkfifo /tmp/never; echo waiting; cat /tmp/never")
        .deadline(Duration::from_secs(45))
        .run();
    let Err(report) = run else {
        return Err(format!("a guest that never ends ended: {run:?}").into());
    };
    for evidence in [
        "did not finish within 45s",
        "waiting",
        "ferry-init: still running after 30 s",
        "cat /tmp/never",
        "--- vcpu0 (",
        // Ferry's vCPU report (SIGUSR1), resolved in the kernel's symbols.
        "vCPU 0: rip=0x",
        "--- guest vCPUs were in ---",
    ] {
        if !report.contains(evidence) {
            return Err(format!("the report lacks {evidence:?}:\n{report}").into());
        }
    }
    Ok(())
}

fn kvm_internal_error_is_reported() -> TestResult {
    let out = tiny_kernel("nothing.elf", JUMP_INTO_NOTHING, &[], 30)?;
    check(
        out.code() == Some(1),
        "a KVM failure must end Ferry with status 1",
        &out,
    )?;
    check(
        out.stderr.contains("RIP 0x30000000") || out.stderr.contains("KVM"),
        "the error should name KVM and the RIP",
        &out,
    )?;
    check(out.stderr.lines().count() == 1, "one line of error", &out)
}

/// Bad input: one clear line on stderr, non-zero exit, never a panic.
fn rejects(args: &[&str], expect: &str) -> TestResult {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    crate::rejects(&args, expect)
}

fn bad_input_trials() -> Vec<Trial> {
    let garbage = || {
        temp_file("garbage.bin", &[0x5a; 64 * 1024])
            .display()
            .to_string()
    };
    let kernel = || ferry_tests::kernel().map(|k| k.display().to_string());
    vec![
        trial("bad_input::missing_kernel", || {
            rejects(&["--kernel", "/nonexistent/bzImage"], "cannot open kernel")
        }),
        trial("bad_input::kernel_is_a_directory", || {
            rejects(&["--kernel", "/"], "kernel")
        }),
        trial("bad_input::file_that_is_no_kernel", move || {
            ferry_tests::require_kvm()?;
            rejects(&["--kernel", &garbage()], "not a kernel")
        }),
        trial("bad_input::memory_zero", move || {
            rejects(&["--kernel", &kernel()?, "--memory", "0"], "at least")
        }),
        trial("bad_input::memory_1t", move || {
            rejects(&["--kernel", &kernel()?, "--memory", "1T"], "host")
        }),
        trial("bad_input::memory_banana", move || {
            rejects(
                &["--kernel", &kernel()?, "--memory", "banana"],
                "not a size",
            )
        }),
        trial("bad_input::cpus_zero", move || {
            rejects(&["--kernel", &kernel()?, "--cpus", "0"], "must be 1 to 32")
        }),
        trial("bad_input::cpus_too_many", move || {
            rejects(&["--kernel", &kernel()?, "--cpus", "33"], "must be 1 to 32")
        }),
        trial("bad_input::unknown_flag", move || {
            rejects(
                &["--kernel", &kernel()?, "--frobnicate"],
                "unexpected argument",
            )
        }),
        trial("bad_input::missing_initramfs", move || {
            ferry_tests::require_kvm()?;
            rejects(
                &["--kernel", &kernel()?, "--initramfs", "/nonexistent.cpio"],
                "initramfs",
            )
        }),
    ]
}

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![
        trial("boot::runs_a_command", boots_and_runs_a_command),
        trial(
            "boot::exit_status_passes_through",
            exit_status_passes_through,
        ),
        trial("boot::elf_vmlinux_pvh", elf_vmlinux_boots_through_pvh),
        trial("boot::four_cpus_online", four_cpus_are_online),
        trial("boot::memory_256m", || memory_matches("256M", 256 << 20)),
        trial("boot::memory_5g", || memory_matches("5G", 5 << 30)),
        trial("boot::reboot_ends_cleanly", reboot_ends_ferry_cleanly),
        trial("boot::console_input", console_input_reaches_the_guest_shell),
        trial("exit::exit_port_sets_status", exit_port_sets_the_status),
        trial("exit::triple_fault", triple_fault_stops_the_vm),
        trial("exit::stalled_guest", stalled_guest_is_detected),
        trial("exit::kvm_internal_error", kvm_internal_error_is_reported),
        trial(
            "exit::hung_guest_fails_with_evidence",
            hung_guest_fails_with_its_evidence,
        ),
    ];
    trials.extend(bad_input_trials());
    trials
}
