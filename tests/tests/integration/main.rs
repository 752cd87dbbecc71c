//! Integration tests: boot the project's guest kernel under `ferry` and
//! check what the guest did. They run on this host where the CPU has
//! vmx/svm, otherwise inside the emulated KVM host, booted once for the
//! whole run (see `ferry_tests::enter_kvm_host`).

// Test code: the trials are libtest-mimic functions, not #[test] ones, so
// clippy cannot tell them from production code. A setup step that fails
// panics its trial, which libtest-mimic reports as that trial's failure.
#![allow(clippy::unwrap_used)]

mod boot;
mod conformance;
mod dax;
mod escape;
mod limits;
mod net;
mod run;
mod unprivileged;
mod virtiofs;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_tests::{run_ferry, Outcome};
use libtest_mimic::{Arguments, Failed, Trial};

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

/// The first line of `text` containing `marker` ("" if none).
pub fn line_with<'a>(text: &'a str, marker: &str) -> &'a str {
    text.lines().find(|l| l.contains(marker)).unwrap_or("")
}

/// The value of `key=value` in a line of such words.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Bad input: non-zero exit, a message naming `expect` on stderr, never a
/// panic.
pub fn rejects(args: &[String], expect: &str) -> TestResult {
    let out = run_ferry(args, None, Duration::from_secs(30))?;
    check(
        out.code().is_some_and(|c| c != 0),
        "bad input must fail",
        &out,
    )?;
    check(!out.stderr.contains("panicked"), "Ferry panicked", &out)?;
    check(
        out.stderr.to_lowercase().contains(&expect.to_lowercase()),
        &format!("stderr should mention '{expect}'"),
        &out,
    )
}

/// The trials running now and since when (libtest-mimic, unlike libtest,
/// never says which tests are still running).
static RUNNING: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// A trial that takes this long is named when it ends.
const SLOW: Duration = Duration::from_secs(90);

/// A trial that the watcher can name while it runs.
pub fn trial(
    name: impl Into<String>,
    runner: impl FnOnce() -> TestResult + Send + 'static,
) -> Trial {
    let name = name.into();
    let key = name.clone();
    Trial::test(name, move || {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        let result = runner();
        let took = RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .map(|since| since.elapsed());
        // Tests near their deadlines add up: a run that outlasts CI's
        // bound says which ones took it (resources/test.sh repeats these).
        if let Some(took) = took.filter(|t| *t >= SLOW) {
            eprintln!("[slow] {key} took {:.0} s", took.as_secs_f64());
        }
        result
    })
}

/// Every five minutes, names each trial running longer than that: a run
/// that stalls (and is then killed, without libtest-mimic's summary) says
/// where in its log.
fn watch_running_trials() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(300));
        let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        for (name, since) in running.iter() {
            let secs = since.elapsed().as_secs();
            if secs >= 300 {
                eprintln!("test {name} has been running for over {secs} s");
            }
        }
    });
}

fn main() {
    ferry_tests::enter_kvm_host();
    watch_running_trials();
    let args = Arguments::from_args();
    let mut trials = boot::trials();
    trials.extend(virtiofs::trials());
    trials.extend(dax::trials());
    trials.extend(escape::trials());
    trials.extend(conformance::trials());
    trials.extend(limits::trials());
    trials.extend(net::trials());
    trials.extend(run::trials());
    trials.extend(unprivileged::trials());
    libtest_mimic::run(&args, trials).exit();
}
