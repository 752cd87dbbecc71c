//! Limits: a guest that makes 100,000 files, a share on a full file
//! system, a share deleted on the host while mounted. Ferry must stay
//! bounded and answer with errors, never crash or hang.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::Guest;
use libtest_mimic::Trial;

use crate::virtiofs::Share;
use crate::{check, guest_ok, trial, TestResult};

/// The pid of the `ferry` serving `share` (its command line names it).
fn ferry_pid(share: &Path) -> Option<u32> {
    let needle = share.display().to_string();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("--fs") && cmdline.contains(&needle)).then_some(pid)
    })
}

/// `VmHWM` (peak RSS) in KiB and the open descriptor count of `pid`.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((hwm, fds))
}

/// Samples, every 200 ms, the peak RSS and descriptor count of the Ferry
/// serving a share, until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, usize)>,
}

impl Sampler {
    fn start(share: &Path) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (root, host_stop) = (share.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut peak = (0u64, 0usize);
            let mut pid = None;
            while !host_stop.load(Ordering::Relaxed) {
                pid = pid.or_else(|| ferry_pid(&root));
                if let Some((hwm, fds)) = pid.and_then(sample) {
                    peak = (peak.0.max(hwm), peak.1.max(fds));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        Sampler { stop, thread }
    }

    /// Peak `VmHWM` in KiB and peak descriptor count.
    fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// 100,000 files created and stat'ed, all held by the guest at once. Ferry keeps inodes as file handles, so its
/// descriptors stay few; its peak memory beyond the guest's RAM stays
/// small.
fn hundred_thousand_files() -> TestResult {
    const FILES: u32 = 100_000;
    const GUEST_MIB: u64 = 512;
    let s = Share::new("limits_100k");
    let sampler = Sampler::start(&s.root);
    let out = Guest::command(&format!(
        "mount -t virtiofs share /mnt || exit 90\n\
         ferry-bench manyfiles /mnt/many {FILES} || exit 91"
    ))
    .fs(&s.spec("share", ""))
    .arg("--memory")
    .arg(&format!("{GUEST_MIB}M"))
    .arg("--log-level")
    .arg("info")
    .deadline(Duration::from_secs(1500))
    .run();
    let (hwm_kib, fds) = sampler.stop();
    let out = out?;
    guest_ok(&out, 0)?;
    println!(
        "100,000 files: Ferry's peak {fds} open descriptors, peak RSS {} MiB \
         (guest RAM {GUEST_MIB} MiB); {}",
        hwm_kib >> 10,
        crate::line_with(&out.stdout, "result manyfiles")
    );
    check(
        out.stderr.contains("inodes kept as file handles"),
        "Ferry did not use file handles",
        &out,
    )?;
    check(fds > 0, "Ferry's descriptors were never sampled", &out)?;
    check(
        fds < 1_000,
        &format!("{fds} descriptors open at once"),
        &out,
    )?;
    check(
        hwm_kib >> 10 < GUEST_MIB + 256,
        &format!("peak RSS {} MiB", hwm_kib >> 10),
        &out,
    )?;
    s.outside_untouched(&out)
}

/// A tmpfs of `size` mounted at a fresh directory; unmounted on drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(name: &str, size: &str) -> Result<TinyFs, String> {
        TinyFs::mount_at(ferry_tests::test_dir(name), size)
    }

    fn mount_at(dir: PathBuf, size: &str) -> Result<TinyFs, String> {
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!(
                "mount -t tmpfs at {} failed ({status}): this test needs root",
                dir.display()
            ));
        }
        Ok(TinyFs(dir))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A share on a full file system: the guest gets ENOSPC, the files it
/// wrote before stay whole, and once it frees space it writes again.
fn full_share_gives_enospc() -> TestResult {
    let tiny = TinyFs::mount("limits_enospc", "1m")?;
    let spec = format!("tag=share,path={}", tiny.0.display());
    let out = Guest::command(
        "mount -t virtiofs share /mnt || exit 90\n\
         echo kept > /mnt/kept || exit 91\n\
         dd if=/dev/zero of=/mnt/big bs=64k count=64 2>/tmp/dd.err; echo dd-status=$?\n\
         grep -o 'No space left on device' /tmp/dd.err | head -1\n\
         echo more > /mnt/more 2>/dev/null || echo small-write-refused\n\
         sync\n\
         cat /mnt/kept || exit 92\n\
         rm /mnt/big || exit 93\n\
         echo again > /mnt/again && cat /mnt/again || exit 94\n\
         exit 0",
    )
    .fs(&spec)
    .deadline(Duration::from_secs(180))
    .run()?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains("No space left on device"),
        "no ENOSPC",
        &out,
    )?;
    check(
        !out.stdout.contains("dd-status=0"),
        "dd into a full share succeeded",
        &out,
    )?;
    // The console ends lines with CR LF.
    let printed = |what: &str| out.stdout.lines().any(|l| l.trim() == what);
    check(printed("kept") && printed("again"), "file contents", &out)?;
    check(
        fs::read_to_string(tiny.0.join("kept"))? == "kept\n" && !tiny.0.join("big").exists(),
        "the host side does not match",
        &out,
    )
}

/// The share's directory is deleted on the host while the guest has it
/// mounted: the guest's calls fail, a remount gives no usable file system
/// (its INIT fails), Ferry carries on and the guest exits normally.
fn deleted_share_gives_errors() -> TestResult {
    let s = Share::new("limits_deleted");
    fs::write(s.path("file"), "data\n")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (root, host_stop) = (s.root.clone(), stop.clone());
    let host = std::thread::spawn(move || {
        while !host_stop.load(Ordering::Relaxed) {
            if root.join("ready").exists() {
                return fs::remove_dir_all(&root).is_ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let out = Guest::command(
        "mount -t virtiofs share /mnt || exit 90\n\
         cat /mnt/file || exit 91\n\
         touch /mnt/ready\n\
         i=0; while [ -e /mnt/ready ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         cat /mnt/file 2>/dev/null && echo STILL-READ\n\
         echo x > /mnt/new 2>/dev/null && echo STILL-WROTE\n\
         mkdir /mnt/d 2>/dev/null && echo STILL-MKDIR\n\
         ls /mnt; echo ls-status=$?\n\
         umount /mnt || exit 92\n\
         mount -t virtiofs share /mnt 2>/dev/null && ls /mnt >/dev/null 2>&1 && echo REMOUNTED\n\
         echo done\n\
         exit 0",
    )
    .fs(&s.spec("share", ",cache=never"))
    .deadline(Duration::from_secs(180))
    .run();
    stop.store(true, Ordering::Relaxed);
    let deleted = host.join().unwrap_or(false);
    let out = out?;
    guest_ok(&out, 0)?;
    check(deleted, "the host never deleted the share", &out)?;
    check(
        out.stdout.contains("done"),
        "the guest did not finish",
        &out,
    )?;
    for what in ["STILL-READ", "STILL-WROTE", "STILL-MKDIR", "REMOUNTED"] {
        check(
            !out.stdout.contains(what),
            &format!("{what} in a deleted share"),
            &out,
        )?;
    }
    check(!out.stderr.contains("panicked"), "Ferry panicked", &out)?;
    check(!s.root.exists(), "the share came back on the host", &out)
}

/// A guest that looks up a directory on another host mount inside its
/// share, drops its caches (so the kernel FORGETs it) and looks it up again,
/// a thousand times: each round makes the file server open that mount for
/// its file handles again, and must close it again (fuse-backend-rs 0.14
/// leaked one descriptor per round; third_party/fuse-backend-rs).
fn submount_lookups_do_not_leak() -> TestResult {
    const ROUNDS: usize = 1000;
    let s = Share::new("limits_submount");
    let sub = TinyFs::mount_at(s.path("sub"), "1m")?;
    fs::write(sub.0.join("marker"), "on the submount\n")?;
    let sampler = Sampler::start(&s.root);
    let out = Guest::command(&format!(
        "mount -t virtiofs share /mnt || exit 90\n\
         i=0; while [ $i -lt {ROUNDS} ]; do\n\
           cat /mnt/sub/marker > /dev/null || exit 91\n\
           echo 2 > /proc/sys/vm/drop_caches || exit 92\n\
           i=$((i+1))\n\
         done\n\
         echo rounds=$i; cat /mnt/sub/marker"
    ))
    .fs(&s.spec("share", ""))
    .arg("--log-level")
    .arg("info")
    .deadline(Duration::from_secs(600))
    .run();
    let (_, fds) = sampler.stop();
    let out = out?;
    guest_ok(&out, 0)?;
    println!("{ROUNDS} submount lookup/forget rounds: Ferry's peak {fds} open descriptors");
    check(
        out.stderr.contains("inodes kept as file handles"),
        "Ferry did not use file handles (the case needs them)",
        &out,
    )?;
    check(
        out.stdout.contains(&format!("rounds={ROUNDS}")) && out.stdout.contains("on the submount"),
        "the guest did not finish its rounds",
        &out,
    )?;
    check(fds > 0, "Ferry's descriptors were never sampled", &out)?;
    check(
        fds < ROUNDS / 4,
        &format!("{fds} descriptors open after {ROUNDS} rounds"),
        &out,
    )
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial("limits::hundred_thousand_files", hundred_thousand_files),
        trial("limits::full_share_gives_enospc", full_share_gives_enospc),
        trial(
            "limits::submount_lookups_do_not_leak",
            submount_lookups_do_not_leak,
        ),
        trial(
            "limits::deleted_share_gives_errors",
            deleted_share_gives_errors,
        ),
    ]
}
