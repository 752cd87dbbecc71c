//! Replays every kept input in `corpus/<target>/` through the target's
//! function (no sanitizer, no libFuzzer): `cargo test --manifest-path
//! fuzz/Cargo.toml`. A missing or empty corpus directory is a failure. One
//! process, targets in turn, so that the sandbox set-up (which points
//! `TMPDIR` at it) happens before any thread of the targets' own.
//!
//! The bugs the fuzzer found are fixed: the corpus replays without
//! `FERRY_FUZZ_SKIP_KNOWN`, and every input in `findings/` (the crashes and
//! hangs, named by target) replays as a regression test.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The input being replayed and since when: named by the panic hook and by
/// the slow-input watchdog only, so a passing replay prints a line per
/// target, not one per input.
static CURRENT: Mutex<Option<(PathBuf, Instant)>> = Mutex::new(None);

fn replaying(f: Option<&Path>) {
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    *current = f.map(|f| (f.to_path_buf(), Instant::now()));
}

fn current_input() -> Option<(PathBuf, Duration)> {
    let current = CURRENT.try_lock().ok()?;
    current.as_ref().map(|(f, at)| (f.clone(), at.elapsed()))
}

/// Names an input that runs past 30 s (a hang the fuzzer's timeout would
/// have caught), once, so a stalled replay says where it stalled.
fn watch_for_slow_inputs() {
    std::thread::spawn(|| {
        let mut named = None;
        loop {
            std::thread::sleep(Duration::from_secs(5));
            if let Some((f, took)) = current_input() {
                if took > Duration::from_secs(30) && named.as_ref() != Some(&f) {
                    eprintln!("replay_corpus: {} still running after {took:.0?}", f.display());
                    named = Some(f);
                }
            }
        }
    });
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty: run fuzz/run.sh {target} and minimize (see fuzz/README.md)",
        dir.display()
    );
    let start = Instant::now();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        replaying(Some(f));
        run(&data);
    }
    replaying(None);
    eprintln!(
        "{target}: {} inputs replayed in {:.2?}",
        files.len(),
        start.elapsed()
    );
    files.len()
}

/// Every finding (`findings/**/TARGET-*.bin`) through its target.
fn replay_findings() -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("findings");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("fuzzer-found")] {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("findings entry").path();
            if p.extension().is_some_and(|x| x == "bin") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no findings in {}", root.display());
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        replaying(Some(f));
        if name.starts_with("fs_request") {
            ferry_fuzz::fs_request(&data);
        } else if name.starts_with("pci_config") {
            ferry_fuzz::pci_config(&data);
        } else {
            panic!("finding {name}: no target named in its file name");
        }
    }
    replaying(None);
    eprintln!("findings: {} replayed", files.len());
    files.len()
}

fn main() {
    // A panic on a queue worker thread must fail the run too, not only
    // stop that thread.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        match current_input() {
            Some((f, _)) => eprintln!("replay_corpus: panic on {}; aborting", f.display()),
            None => eprintln!("replay_corpus: panic; aborting"),
        }
        std::process::abort();
    }));
    // libtest's --list and filters are not supported; say so for --list
    // so that tools enumerating tests see one.
    if std::env::args().any(|a| a == "--list") {
        println!("replay_corpus: test");
        return;
    }
    let _ = ferry_fuzz::sandbox::sandbox();
    watch_for_slow_inputs();
    let n = replay("fs_request", ferry_fuzz::fs_request)
        + replay("pci_config", ferry_fuzz::pci_config)
        + replay("cli", ferry_fuzz::cli)
        + replay("net_frames", ferry_fuzz::net_frames);
    let found = replay_findings();
    println!("replay_corpus: ok, {n} inputs, {found} findings");
}
