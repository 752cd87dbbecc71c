//! DAX: the guest mounts with `-o dax` and maps host files through the
//! device's window. Ferry's request counters (logged at exit with
//! `--log-level debug`) show whether file data went through the window
//! (SETUPMAPPING) or through FUSE READ.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use ferry_tests::{Guest, Outcome};
use libtest_mimic::Trial;

use crate::virtiofs::{pseudo_random, sha256_hex, Share};
use crate::{check, field, guest_ok, line_with, trial, TestResult};

/// A guest with `share` mounted at /mnt with `-o dax`, running `script`.
fn dax_guest(share: &Share, opts: &str, script: &str) -> Guest {
    let cmd = format!("mount -t virtiofs -o dax share /mnt || exit 90\n{script}");
    Guest::command(&cmd)
        .fs(&share.spec("share", &format!(",dax=on{opts}")))
        .arg("--log-level")
        .arg("debug")
        .deadline(Duration::from_secs(600))
}

/// The count `name=N` from the device's exit summary.
fn counter(out: &Outcome, name: &str) -> Option<u64> {
    let line = line_with(&out.stderr, "virtio-fs 'share' requests:");
    field(line, name).and_then(|n| n.parse().ok())
}

fn counter_is(out: &Outcome, name: &str, ok: impl Fn(u64) -> bool) -> TestResult {
    let n = counter(out, name);
    check(
        n.is_some_and(ok),
        &format!("request counter {name} is {n:?}"),
        out,
    )
}

/// `key:value` printed by the guest script.
fn printed<'a>(out: &'a Outcome, key: &str) -> Option<&'a str> {
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
}

/// Waits (on the host) for the guest tool to report that `file`'s mapping
/// is in use.
fn wait_for_mapping(file: &Path) -> bool {
    let marker = std::path::PathBuf::from(format!("{}.mapped", file.display()));
    (0..1200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        marker.exists()
    })
}

fn mmap_read_goes_through_the_window() -> TestResult {
    let s = Share::new("dax_mmap_read");
    let data = pseudo_random(8 << 20, 0xda7a);
    fs::write(s.path("f.bin"), &data)?;
    let sum = sha256_hex(&data);
    let out = dax_guest(
        &s,
        "",
        r#"echo "mounts:$(grep ' /mnt virtiofs' /proc/mounts)"
echo "mmap-sum:$(ferry-dax cat /mnt/f.bin | sha256sum | cut -d' ' -f1)"
echo "read-sum:$(sha256sum /mnt/f.bin | cut -d' ' -f1)""#,
    )
    .run()?;
    guest_ok(&out, 0)?;
    check(
        printed(&out, "mounts").is_some_and(|m| m.contains("dax")),
        "/proc/mounts does not show dax",
        &out,
    )?;
    check(
        printed(&out, "mmap-sum") == Some(sum.as_str()),
        "the file read through mmap differs",
        &out,
    )?;
    check(
        printed(&out, "read-sum") == Some(sum.as_str()),
        "the file read with read(2) differs",
        &out,
    )?;
    counter_is(&out, "setupmapping", |n| n > 0)?;
    counter_is(&out, "read", |n| n == 0)
}

fn mmap_is_coherent_with_the_host() -> TestResult {
    let s = Share::new("dax_coherent");
    let file = s.path("f.bin");
    fs::write(&file, vec![b'.'; 3 * 4096])?;
    let host_file = file.clone();
    let host = std::thread::spawn(move || {
        if !wait_for_mapping(&host_file) {
            return false;
        }
        // In place, not a new file: the guest's mapping must see it.
        let mut f = fs::OpenOptions::new().write(true).open(&host_file).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(b"HOST-WROTE").unwrap();
        true
    });
    let out = dax_guest(
        &s,
        "",
        "ferry-dax wait /mnt/f.bin 100 HOST-WROTE 60 || exit 1\n\
         ferry-dax poke /mnt/f.bin 8192 GUEST-WROTE || exit 2",
    )
    .run()?;
    let host_acted = host.join().unwrap_or(false);
    guest_ok(&out, 0)?;
    check(host_acted, "the guest never mapped the file", &out)?;
    check(
        out.stdout.contains("seen HOST-WROTE"),
        "host write not seen",
        &out,
    )?;
    let bytes = fs::read(&file)?;
    check(
        bytes.get(8192..8192 + 11) == Some(b"GUEST-WROTE".as_slice()),
        "the guest's mmap write is not in the host file",
        &out,
    )?;
    counter_is(&out, "setupmapping", |n| n > 0)
}

fn two_vms_see_each_others_mmap_writes() -> TestResult {
    let s = Share::new("dax_two_vms");
    fs::write(s.path("f.bin"), vec![0u8; 2 * 4096])?;
    let spec = s.spec("share", ",dax=on");
    let guest = |script: &str| {
        let cmd = format!("mount -t virtiofs -o dax share /mnt || exit 90\n{script}");
        Guest::command(&cmd)
            .fs(&spec)
            .deadline(Duration::from_secs(300))
    };
    // Each waits through a mapping made before the other wrote.
    let a = guest(
        "ferry-dax poke /mnt/f.bin 0 FROM-A || exit 1\n\
         ferry-dax wait /mnt/f.bin 4096 FROM-B 120 || exit 2",
    );
    let b = guest(
        "ferry-dax wait /mnt/f.bin 0 FROM-A 120 || exit 1\n\
         ferry-dax poke /mnt/f.bin 4096 FROM-B || exit 2",
    );
    let b = std::thread::spawn(move || b.run());
    let out_a = a.run()?;
    let out_b = b.join().map_err(|_| "second VM thread panicked")??;
    guest_ok(&out_a, 0)?;
    guest_ok(&out_b, 0)?;
    check(
        out_a.stdout.contains("seen FROM-B"),
        "VM A did not see B",
        &out_a,
    )?;
    check(
        out_b.stdout.contains("seen FROM-A"),
        "VM B did not see A",
        &out_b,
    )
}

fn file_four_times_the_window() -> TestResult {
    let s = Share::new("dax_reclaim");
    let data = pseudo_random(128 << 20, 0xb16);
    fs::write(s.path("big.bin"), &data)?;
    let sum = sha256_hex(&data);
    drop(data);
    let out = dax_guest(
        &s,
        ",cache-size=32M",
        r#"echo "read-sum:$(sha256sum /mnt/big.bin | cut -d' ' -f1)"
echo "mmap-sum:$(ferry-dax cat /mnt/big.bin | sha256sum | cut -d' ' -f1)""#,
    )
    .run()?;
    guest_ok(&out, 0)?;
    for key in ["read-sum", "mmap-sum"] {
        check(
            printed(&out, key) == Some(sum.as_str()),
            &format!("{key} differs from the host's"),
            &out,
        )?;
    }
    counter_is(&out, "removemapping", |n| n > 0)?;
    counter_is(&out, "read", |n| n == 0)
}

/// FNV-1a 64, as `ferry-dax fuzz` prints it.
fn fnv1a(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Runs `ferry-dax fuzz` on `file` (seed, ops, largest size in MiB) in a
/// guest with `--fs` options `opts`: the checker must finish, and the host
/// file must be what the guest's model says. `retry_busy`: a read or write
/// the guest kernel refuses with EBUSY is retried (see ferry-dax.c)
/// instead of ending the run.
fn model_run(
    share_name: &str,
    opts: &str,
    file: &str,
    (seed, ops, mib): (u64, u64, u64),
    retry_busy: bool,
) -> Result<Outcome, libtest_mimic::Failed> {
    let s = Share::new(share_name);
    let retry = u8::from(retry_busy);
    let out = dax_guest(
        &s,
        opts,
        &format!("FERRY_DAX_RETRY_BUSY={retry} ferry-dax fuzz /mnt/{file} {seed} {ops} {mib}"),
    )
    .run()?;
    guest_ok(&out, 0)?;
    let line = line_with(&out.stdout, "fuzz ok");
    check(
        field(line, "ops") == Some(ops.to_string().as_str()),
        "the checker did not finish",
        &out,
    )?;
    let host = fs::read(s.path(file))?;
    check(
        field(line, "size") == Some(host.len().to_string().as_str())
            && field(line, "fnv") == Some(fnv1a(&host).as_str()),
        "the host file differs from the guest's model",
        &out,
    )?;
    Ok(out)
}

/// `ferry-dax fuzz`: random read/write/mmap/truncate/fsync on a file of
/// up to 8 MiB, checked against a model, through the default 1G window
/// (the file never makes the guest reclaim).
fn random_workload_matches_a_model() -> TestResult {
    let out = model_run("dax_fuzz", "", "fuzz.bin", (20261123, 10_000, 8), false)?;
    counter_is(&out, "setupmapping", |n| n > 0)
}

/// The smallest window Ferry accepts (4M, two 2 MiB ranges) under a file
/// eight times its size: the guest takes ranges back from the file all the
/// time, and the data must stay right. The guest kernel itself now and then
/// refuses a read or write there with EBUSY (4 runs of 10 measured, see
/// docs/dax.md), or stops one short at a range boundary; either is retried
/// or resumed so the check runs to the end, and the counts are printed. (`bench/dax-window.sh` measures other sizes and several
/// processes; see fs_option.rs DAX_WINDOW_SMALLEST.)
fn smallest_window_runs_the_model_on_a_larger_file() -> TestResult {
    let out = model_run(
        "dax_small",
        ",cache-size=4M",
        "big.bin",
        (11, 4_000, 32),
        true,
    )?;
    let ok = line_with(&out.stdout, "fuzz ok");
    println!(
        "smallest window: {} EBUSY retried, {} short transfers resumed",
        field(ok, "busy").unwrap_or("?"),
        field(ok, "resumed").unwrap_or("?")
    );
    counter_is(&out, "removemapping", |n| n > 0)
}

/// Ferry's anonymous and shared memory (kB) now: guest RAM, its own heap,
/// the DAX windows' scratch files. Pages of shared files mapped through a
/// window are the host's page cache and not counted.
fn ferry_memory_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(kb("RssAnon:")? + kb("RssShmem:")?)
}

/// The bound docs/dax.md states for `--memory 512M` with one window: guest
/// RAM, 2 MiB of scratch and 96 MiB for Ferry itself.
const STRESS_MEMORY_KB: u64 = (512 + 2 + 96) << 10;

/// How long a stress run may take (nested guests are slow).
const STRESS_DEADLINE: Duration = Duration::from_secs(600);

/// Two guest processes read mapped files over and over, a third stores to
/// every page of its mapped file (the parked pages too, once the host has
/// truncated it) and a fourth writes, while the host truncates and regrows
/// the mapped files; between
/// rounds the guest unmounts and resets the device (unbind, bind). With
/// `sigterm`, SIGTERM comes at a moment drawn from the clock once the
/// readers run, and Ferry must end within a second; without, all three
/// rounds must finish. Either way Ferry's memory stays within docs/dax.md's
/// bound and nothing panics.
fn stress(name: &str, sigterm: bool) -> TestResult {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    ferry_tests::require_kvm()?;
    let s = Share::new(name);
    for f in 1..=3 {
        fs::write(s.path(&format!("f{f}.bin")), vec![0x5au8; 8 << 20])?;
    }
    let script = "for r in 1 2 3; do\n\
                  mount -t virtiofs -o dax share /mnt || exit 90\n\
                  echo round-$r\n\
                  for f in 1 2; do ferry-dax spin /mnt/f$f.bin 3 > /tmp/s$f.out 2>&1 & done\n\
                  ferry-dax spin /mnt/f3.bin 3 write > /tmp/s3.out 2>&1 &\n\
                  dd if=/dev/urandom of=/mnt/w.bin bs=64k count=128 2>/dev/null\n\
                  wait\n\
                  cat /tmp/s1.out /tmp/s2.out /tmp/s3.out\n\
                  umount /mnt || exit 91\n\
                  d=$(basename /sys/bus/virtio/drivers/virtiofs/virtio*)\n\
                  echo $d > /sys/bus/virtio/drivers/virtiofs/unbind || exit 92\n\
                  echo $d > /sys/bus/virtio/drivers/virtiofs/bind || exit 93\n\
                  done\n\
                  echo stress-done";
    let mut ferry = Guest::command(script)
        .arg("--memory")
        .arg("512M")
        .fs(&s.spec("share", ",dax=on,cache-size=64M"))
        .deadline(STRESS_DEADLINE)
        .spawn()?;
    let pid = ferry.pid();
    // Set on every way out of this function (an early `?` too), so the
    // helper threads always end.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let peak_kb = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, peak_kb) = (stop.clone(), peak_kb.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = ferry_memory_kb(pid) {
                    peak_kb.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let host = {
        let (stop, root) = (stop.clone(), s.root.clone());
        std::thread::spawn(move || {
            let mut cycles = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for f in 1..=3 {
                    let path = root.join(format!("f{f}.bin"));
                    if let Ok(file) = fs::OpenOptions::new().write(true).open(&path) {
                        let _ = file.set_len(0);
                        std::thread::sleep(Duration::from_millis(150));
                        let _ = file.set_len(8 << 20);
                    }
                }
                cycles += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            cycles
        })
    };
    let since = Instant::now();
    let mut term_to_exit = None;
    while !ferry.has_ended()? && since.elapsed() < STRESS_DEADLINE {
        if sigterm && s.path("f1.bin.mapped").exists() {
            // A moment of the run drawn from the clock: up to 3 s on.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            std::thread::sleep(Duration::from_millis(u64::from(nanos % 3000)));
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) };
            let sent = Instant::now();
            while !ferry.has_ended()? && sent.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
            term_to_exit = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ended by now, or past its time: then finish() kills it and fails
    // with what its threads were doing. Before the joins: a Ferry stuck
    // on a mapped page could hold the host thread's truncation too.
    let out = ferry.finish(since.elapsed().min(STRESS_DEADLINE));
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let out = out?;
    let cycles = host.join().unwrap_or(0);
    check(!out.stderr.contains("panicked"), "Ferry panicked", &out)?;
    let peak = peak_kb.load(Ordering::Relaxed);
    println!(
        "{name}: Ferry's memory peaked at {peak} kB (bound {STRESS_MEMORY_KB} kB), \
         {cycles} host truncation cycles, SIGTERM to exit: {term_to_exit:?}"
    );
    check(
        peak > 0 && peak <= STRESS_MEMORY_KB,
        &format!("Ferry's memory peaked at {peak} kB (bound {STRESS_MEMORY_KB} kB)"),
        &out,
    )?;
    if sigterm {
        let took = term_to_exit.ok_or("the readers never started")?;
        check(
            took <= Duration::from_secs(1) && out.code() == Some(143),
            &format!("SIGTERM: exit {:?} after {took:?}", out.code()),
            &out,
        )
    } else {
        guest_ok(&out, 0)?;
        check(
            out.stdout.contains("round-3") && out.stdout.contains("stress-done"),
            "the guest did not finish three rounds",
            &out,
        )?;
        check(cycles > 0, "the host never truncated the files", &out)
    }
}

fn host_truncation_does_not_kill_the_guest() -> TestResult {
    let s = Share::new("dax_truncate");
    let file = s.path("t.bin");
    fs::write(&file, vec![0x41u8; 4 << 20])?;
    let host_file = file.clone();
    let host = std::thread::spawn(move || {
        if !wait_for_mapping(&host_file) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
        fs::OpenOptions::new()
            .write(true)
            .open(&host_file)
            .and_then(|f| f.set_len(0))
            .is_ok()
    });
    let out = dax_guest(
        &s,
        "",
        "ferry-dax spin /mnt/t.bin 6 || exit 1\n\
         echo still-here > /mnt/after.txt && cat /mnt/after.txt",
    )
    .run()?;
    let truncated = host.join().unwrap_or(false);
    check(truncated, "the host never truncated the file", &out)?;
    guest_ok(&out, 0)?;
    let spin = line_with(&out.stdout, "spin done");
    let count = |k: &str| {
        field(spin, k)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    check(
        count("sigbus") + count("zero-pages") > 0,
        "the guest never noticed the truncation",
        &out,
    )?;
    check(
        out.stderr.contains("mapped into a DAX window shrank")
            || out.stderr.contains("past the end of a truncated file"),
        "Ferry did not warn about the truncation",
        &out,
    )?;
    check(
        s.read("after.txt") == "still-here\n",
        "the guest could not go on using the share",
        &out,
    )
}

/// write(2) from a DAX mapping: the FUSE WRITE's buffers are window pages.
/// Into the same share they are served (pinned); into another device's
/// share they are not that device's memory: the write may fail, but Ferry
/// carries on.
fn buffers_in_the_window_are_served() -> TestResult {
    let a = Share::new("dax_buffers_a");
    let b = Share::new("dax_buffers_b");
    let data = pseudo_random(4 << 20, 0xc0b1);
    fs::write(a.path("src.bin"), &data)?;
    let script = "mount -t virtiofs -o dax a /mnt || exit 90\n\
                  mkdir -p /b && mount -t virtiofs b /b || exit 91\n\
                  ferry-dax copy /mnt/src.bin /mnt/same.bin || exit 1\n\
                  ferry-dax copy /mnt/src.bin /b/other.bin\n\
                  echo \"other-status:$?\"\n\
                  echo \"after:$(cat /mnt/src.bin | wc -c)\"";
    let out = Guest::command(script)
        .fs(&a.spec("a", ",dax=on"))
        .fs(&b.spec("b", ""))
        .deadline(Duration::from_secs(300))
        .run()?;
    guest_ok(&out, 0)?;
    check(
        fs::read(a.path("same.bin"))? == data,
        "the copy within the DAX share differs",
        &out,
    )?;
    let other_ok = printed(&out, "other-status") == Some("0");
    check(
        !other_ok || fs::read(b.path("other.bin"))? == data,
        "a copy into the other share reported success but differs",
        &out,
    )?;
    check(
        printed(&out, "after") == Some((4 << 20).to_string().as_str()),
        "the share stopped working",
        &out,
    )
}

fn readonly_share_maps_read_only() -> TestResult {
    let s = Share::new("dax_readonly");
    fs::write(s.path("f.bin"), "read-only content\n")?;
    let out = dax_guest(
        &s,
        ",readonly=on",
        "echo \"mapped:$(ferry-dax cat /mnt/f.bin)\"\n\
         ferry-dax poke /mnt/f.bin 0 X && exit 1\n\
         exit 0",
    )
    .run()?;
    guest_ok(&out, 0)?;
    check(
        printed(&out, "mapped") == Some("read-only content"),
        "mapping a read-only share failed",
        &out,
    )?;
    check(
        s.read("f.bin") == "read-only content\n",
        "the read-only share changed",
        &out,
    )?;
    counter_is(&out, "setupmapping", |n| n > 0)
}

pub fn trials() -> Vec<Trial> {
    let t = |name: &str, f: fn() -> TestResult| trial(format!("dax::{name}"), f);
    vec![
        t(
            "mmap_read_goes_through_the_window",
            mmap_read_goes_through_the_window,
        ),
        t(
            "mmap_is_coherent_with_the_host",
            mmap_is_coherent_with_the_host,
        ),
        t(
            "two_vms_see_each_others_mmap_writes",
            two_vms_see_each_others_mmap_writes,
        ),
        t("file_four_times_the_window", file_four_times_the_window),
        t(
            "random_workload_matches_a_model",
            random_workload_matches_a_model,
        ),
        t(
            "smallest_window_runs_the_model_on_a_larger_file",
            smallest_window_runs_the_model_on_a_larger_file,
        ),
        t(
            "host_truncation_does_not_kill_the_guest",
            host_truncation_does_not_kill_the_guest,
        ),
        // Marked ignored: they keep guest CPUs busy for their whole run, so
        // resources/test.sh runs them alone after the suite
        // (`-- --ignored dax::stress`), not beside the other guests.
        trial("dax::stress_truncation_and_resets", || {
            stress("dax_stress", false)
        })
        .with_ignored_flag(true),
        trial("dax::stress_then_sigterm", || {
            stress("dax_stress_term", true)
        })
        .with_ignored_flag(true),
        t(
            "readonly_share_maps_read_only",
            readonly_share_maps_read_only,
        ),
        t(
            "buffers_in_the_window_are_served",
            buffers_in_the_window_are_served,
        ),
    ]
}
