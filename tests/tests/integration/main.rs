//! Integration tests: boot the project's guest kernel under `ferry` and
//! check what the guest did. They run on this host where the CPU has
//! vmx/svm, otherwise inside the emulated KVM host, booted once for the
//! whole run (see `ferry_tests::enter_kvm_host`).

mod boot;
mod virtiofs;

use ferry_tests::Outcome;
use libtest_mimic::{Arguments, Failed};

pub type TestResult = Result<(), Failed>;

pub fn check(cond: bool, what: &str, out: &Outcome) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(format!("{what}\n{}", out.describe()).into())
    }
}

/// Kernel messages are quiet; the init prints its own status line.
pub fn guest_ok(out: &Outcome, status: i32) -> TestResult {
    check(
        out.code() == Some(status),
        &format!("expected exit status {status}"),
        out,
    )?;
    check(
        out.stdout
            .contains(&format!("ferry-init: exit status {status}")),
        "the guest init did not report the status",
        out,
    )
}

fn main() {
    ferry_tests::enter_kvm_host();
    let args = Arguments::from_args();
    let mut trials = boot::trials();
    trials.extend(virtiofs::trials());
    libtest_mimic::run(&args, trials).exit();
}
