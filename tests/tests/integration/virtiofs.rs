//! virtio-fs: a guest mounts a host directory shared with `--fs` and what
//! it does there is checked on the host, and the other way round.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::{test_dir, Guest, Outcome};
use libtest_mimic::{Failed, Trial};

use crate::{check, field, guest_ok, line_with, trial, TestResult};

/// A share directory and, beside it, a directory the guest must never reach.
pub(crate) struct Share {
    pub root: PathBuf,
    outside: PathBuf,
}

impl Share {
    pub fn new(test: &str) -> Share {
        let base = test_dir(test);
        let root = base.join("share");
        let outside = base.join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "host-secret-data\n").unwrap();
        Share { root, outside }
    }

    pub fn spec(&self, tag: &str, extra: &str) -> String {
        format!("tag={tag},path={}{extra}", self.root.display())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| format!("<{e}>"))
    }

    /// The directory beside the share that the guest must never reach.
    pub fn outside(&self) -> &Path {
        &self.outside
    }

    /// The file outside the share is as the test left it.
    pub fn outside_untouched(&self, out: &Outcome) -> TestResult {
        let secret = fs::read_to_string(self.outside.join("secret")).unwrap_or_default();
        check(
            secret == "host-secret-data\n",
            "the file outside the share changed",
            out,
        )?;
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        check(
            names.len() == 1,
            &format!("files appeared outside the share: {names:?}"),
            out,
        )?;
        check(
            !out.stdout.contains("host-secret-data"),
            "the guest read the file outside the share",
            out,
        )
    }
}

/// Runs `script` in a guest with the share mounted at /mnt.
fn run_with_share(share: &Share, extra: &str, script: &str) -> Result<Outcome, Failed> {
    run_with_share_for(share, extra, script, Duration::from_secs(120))
}

fn run_with_share_for(
    share: &Share,
    extra: &str,
    script: &str,
    deadline: Duration,
) -> Result<Outcome, Failed> {
    let cmd = format!("mount -t virtiofs share /mnt || exit 90\n{script}");
    Ok(Guest::command(&cmd)
        .fs(&share.spec("share", extra))
        .deadline(deadline)
        .run()?)
}

fn file_operations_match_the_host() -> TestResult {
    let s = Share::new("fs_ops");
    fs::write(s.path("existing.txt"), "old\n")?;
    fs::write(s.path("victim.txt"), "loser\n")?;
    fs::write(s.path("mode.txt"), "x")?;
    fs::set_permissions(s.path("mode.txt"), fs::Permissions::from_mode(0o751))?;
    fs::create_dir(s.path("dir_to_remove"))?;
    let out = run_with_share(
        &s,
        "",
        r#"set -e
cd /mnt
echo created > new.txt
echo "read:$(cat existing.txt)"
echo line2 >> existing.txt
printf 0123456789 > trunc.txt
truncate -s 4 trunc.txt
echo moved > a.txt && mv a.txt b.txt
echo winner > c.txt && mv c.txt victim.txt
echo gone > del.txt && rm del.txt
mkdir newdir
rmdir dir_to_remove
ln -s new.txt link
echo "readlink:$(readlink link)"
ln new.txt hard.txt
chmod 0640 new.txt
chown 1234:5678 b.txt
touch -d '2001-02-03 04:05:06' trunc.txt
ferry-fsutil setxattr new.txt user.color blue
echo "getxattr:$(ferry-fsutil getxattr new.txt user.color)"
ferry-fsutil listxattr new.txt
ferry-fsutil statfs /mnt
ferry-fsutil fsync new.txt
ferry-fsutil flock new.txt
echo "hoststat:$(stat -c '%s %a' mode.txt)"
"#,
    )?;
    guest_ok(&out, 0)?;
    let o = &out;
    check(s.read("new.txt") == "created\n", "create/write", o)?;
    check(o.stdout.contains("read:old"), "read of a host file", o)?;
    check(s.read("existing.txt") == "old\nline2\n", "append", o)?;
    check(s.read("trunc.txt") == "0123", "truncate", o)?;
    check(
        !s.path("a.txt").exists() && s.read("b.txt") == "moved\n",
        "rename",
        o,
    )?;
    check(
        s.read("victim.txt") == "winner\n" && !s.path("c.txt").exists(),
        "rename over an existing file",
        o,
    )?;
    check(!s.path("del.txt").exists(), "unlink", o)?;
    check(
        s.path("newdir").is_dir() && !s.path("dir_to_remove").exists(),
        "mkdir/rmdir",
        o,
    )?;
    check(
        fs::read_link(s.path("link"))? == Path::new("new.txt"),
        "symlink",
        o,
    )?;
    check(o.stdout.contains("readlink:new.txt"), "readlink", o)?;
    let new = fs::metadata(s.path("new.txt"))?;
    let hard = fs::metadata(s.path("hard.txt"))?;
    check(new.ino() == hard.ino() && new.nlink() == 2, "hard link", o)?;
    check(
        new.mode() & 0o7777 == 0o640,
        &format!("chmod: mode {:o}", new.mode() & 0o7777),
        o,
    )?;
    let b = fs::metadata(s.path("b.txt"))?;
    check((b.uid(), b.gid()) == (1234, 5678), "chown", o)?;
    let t = fs::metadata(s.path("trunc.txt"))?;
    check(
        t.mtime() == 981_173_106,
        &format!("utimes: mtime {}", t.mtime()),
        o,
    )?;
    check(
        host_xattr(&s.path("new.txt"), "user.color").as_deref() == Some("blue"),
        "setxattr on the host",
        o,
    )?;
    check(
        o.stdout.contains("getxattr:blue") && o.stdout.contains("user.color"),
        "getxattr/listxattr",
        o,
    )?;
    check(
        statfs_matches(&s.root, &o.stdout),
        "statfs differs from the host's",
        o,
    )?;
    check(o.stdout.contains("fsync ok"), "fsync", o)?;
    check(
        o.stdout.contains("flock exclusive") && o.stdout.contains("flock released"),
        "flock",
        o,
    )?;
    check(
        o.stdout.contains("hoststat:1 751"),
        "a host file's size and mode as the guest sees them",
        o,
    )
}

fn host_xattr(path: &Path, name: &str) -> Option<String> {
    use std::ffi::CString;
    let p = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer of the given size.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(len)
        .ok()
        .map(|len| String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn statfs_matches(path: &Path, guest_out: &str) -> bool {
    use std::ffi::CString;
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct we pass.
    let host = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(p.as_ptr(), &mut s) != 0 {
            return false;
        }
        s
    };
    guest_out.contains(&format!("bsize={} blocks={}", host.f_bsize, host.f_blocks))
}

/// The guest signals through the share itself: it creates `ready`, the host
/// changes the file and creates `go`, then the guest reads the file again.
fn host_change_seen(test: &str, cache: &str, wait_in_guest: &str) -> TestResult {
    let s = Share::new(test);
    fs::write(s.path("data.txt"), "version-1\n")?;
    let root = s.root.clone();
    let host = std::thread::spawn(move || {
        for _ in 0..600 {
            if root.join("ready").exists() {
                fs::write(root.join("data.txt.tmp"), "version-2\n").unwrap();
                fs::rename(root.join("data.txt.tmp"), root.join("data.txt")).unwrap();
                fs::write(root.join("go"), "").unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let script = format!(
        r#"echo "before:$(cat /mnt/data.txt)"
touch /mnt/ready
i=0; while [ ! -e /mnt/go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
{wait_in_guest}
echo "after:$(cat /mnt/data.txt)"
"#
    );
    let out = run_with_share(&s, &format!(",cache={cache}"), &script)?;
    let host_acted = host.join().unwrap_or(false);
    guest_ok(&out, 0)?;
    check(host_acted, "the guest never signalled ready", &out)?;
    check(out.stdout.contains("before:version-1"), "first read", &out)?;
    check(
        out.stdout.contains("after:version-2"),
        "the host's change is not visible",
        &out,
    )
}

fn two_shares_and_a_readonly_one() -> TestResult {
    let rw = Share::new("fs_two_rw");
    let ro = Share::new("fs_two_ro");
    fs::write(ro.path("keep.txt"), "original\n")?;
    let script = r#"mount -t virtiofs rw /mnt || exit 90
mkdir -p /ro && mount -t virtiofs ro /ro || exit 91
echo rw-ok > /mnt/w.txt || exit 92
echo "ro-read:$(cat /ro/keep.txt)"
for op in 'echo x > /ro/new.txt' 'echo x >> /ro/keep.txt' 'rm /ro/keep.txt' 'mkdir /ro/d' \
          'touch /ro/keep.txt' 'chmod 777 /ro/keep.txt' 'mv /ro/keep.txt /ro/moved' 'ln -s x /ro/l' \
          'truncate -s 0 /ro/keep.txt' 'ferry-fsutil setxattr /ro/keep.txt user.x y'; do
    if sh -c "$op" 2>/tmp/err; then echo "WRITE-ALLOWED: $op"; else echo "refused: $op: $(cat /tmp/err)"; fi
done
"#;
    let out = Guest::command(script)
        .fs(&rw.spec("rw", ""))
        .fs(&ro.spec("ro", ",readonly=on"))
        .run()?;
    guest_ok(&out, 0)?;
    check(
        rw.read("w.txt") == "rw-ok\n",
        "write to the read-write share",
        &out,
    )?;
    check(
        out.stdout.contains("ro-read:original"),
        "read from the read-only share",
        &out,
    )?;
    check(
        !out.stdout.contains("WRITE-ALLOWED"),
        "a write to the read-only share succeeded",
        &out,
    )?;
    check(
        out.stdout.matches("Read-only file system").count() >= 8,
        "writes should fail with EROFS",
        &out,
    )?;
    let names: Vec<_> = fs::read_dir(&ro.root)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    check(
        names.len() == 1 && ro.read("keep.txt") == "original\n",
        "the read-only share changed",
        &out,
    )?;
    let meta = fs::metadata(ro.path("keep.txt"))?;
    check(meta.mode() & 0o777 != 0o777, "chmod went through", &out)
}

fn many_shares_at_once() -> TestResult {
    let shares: Vec<Share> = (0..8)
        .map(|i| Share::new(&format!("fs_many_{i}")))
        .collect();
    let mut guest = Guest::command(
        r#"for i in 0 1 2 3 4 5 6 7; do mkdir -p /m$i && mount -t virtiofs s$i /m$i && echo "share $i" > /m$i/id || exit 1; done"#,
    );
    for (i, s) in shares.iter().enumerate() {
        guest = guest.fs(&s.spec(&format!("s{i}"), ""));
    }
    let out = guest.run()?;
    guest_ok(&out, 0)?;
    for (i, s) in shares.iter().enumerate() {
        check(
            s.read("id") == format!("share {i}\n"),
            &format!("share {i}"),
            &out,
        )?;
    }
    Ok(())
}

/// 512 MiB each way (FERRY_TEST_LARGE_MIB overrides). Under the emulated
/// KVM host every guest page touched costs a nested fault emulated by TCG,
/// so this takes minutes there (about 1.6 MB/s written, 4 MB/s read,
/// measured); on hardware KVM it takes seconds.
fn large_file_round_trip() -> TestResult {
    let s = Share::new("fs_large");
    let size: usize = std::env::var("FERRY_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        << 20;
    let data = pseudo_random(size, 0x5eed);
    fs::write(s.path("from_host.bin"), &data)?;
    let host_sum = sha256_hex(&data);
    drop(data);
    let out = run_with_share_for(
        &s,
        "",
        &format!(
            "echo \"guest-sum:$(sha256sum /mnt/from_host.bin | cut -d' ' -f1)\"\n\
             dd if=/dev/urandom of=/mnt/from_guest.bin bs=1M count={} 2>/dev/null || exit 1\n\
             echo \"guest-wrote:$(sha256sum /mnt/from_guest.bin | cut -d' ' -f1)\"",
            size >> 20
        ),
        Duration::from_secs(1800),
    )?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains(&format!("guest-sum:{host_sum}")),
        "host file read in the guest differs",
        &out,
    )?;
    let written = fs::read(s.path("from_guest.bin"))?;
    check(
        written.len() == size,
        "size of the guest-written file",
        &out,
    )?;
    let sum = sha256_hex(&written);
    check(
        out.stdout.contains(&format!("guest-wrote:{sum}")),
        "guest file read on the host differs",
        &out,
    )
}

/// Ferry's transport terms in FUSE INIT and its open-file limit, in a real
/// guest: 16 MiB written with `dd bs=1M` goes in requests far larger than
/// the server's own 4 KiB default (at most 64 WRITEs, not 4,096), and 5,000
/// files held at once by the guest (one host descriptor each, past the
/// usual limits of 1,024 and 4,096) create, stat and unlink without EMFILE.
fn large_requests_and_many_files() -> TestResult {
    let big = Share::new("fs_big_requests");
    let many = Share::new("fs_many_files");
    let script = "mount -t virtiofs big /mnt || exit 90\n\
                  mkdir -p /many && mount -t virtiofs many /many || exit 91\n\
                  dd if=/dev/zero of=/mnt/w.bin bs=1M count=16 2>/dev/null || exit 92\n\
                  ferry-bench smallfiles /many/files 5000 || exit 93";
    let out = Guest::command(script)
        .fs(&big.spec("big", ""))
        .fs(&many.spec("many", ""))
        .arg("--log-level")
        .arg("debug")
        .deadline(Duration::from_secs(600))
        .run()?;
    guest_ok(&out, 0)?;
    check(
        fs::metadata(big.path("w.bin"))?.len() == 16 << 20,
        "size of the written file",
        &out,
    )?;
    check(
        line_with(&out.stderr, "FUSE INIT also takes").contains("MAX_PAGES"),
        "Ferry did not grant MAX_PAGES",
        &out,
    )?;
    let writes = field(line_with(&out.stderr, "virtio-fs 'big' requests:"), "write")
        .and_then(|n| n.parse::<u64>().ok());
    check(
        writes.is_some_and(|n| (16..=64).contains(&n)),
        &format!("16 MiB took {writes:?} WRITE requests"),
        &out,
    )
}

fn four_queues_four_writers() -> TestResult {
    let s = Share::new("fs_queues");
    let script = r#"mount -t virtiofs share /mnt || exit 90
for w in 1 2 3 4; do
  (i=0; while [ $i -lt 200 ]; do echo "writer $w line $i"; i=$((i+1)); done > /mnt/w$w.txt;
   dd if=/dev/zero bs=64k count=64 2>/dev/null | tr '\0' "$w" > /mnt/big$w.bin) &
done
wait
echo writers-done
"#;
    let out = Guest::command(script)
        .fs(&s.spec("share", ",queues=4"))
        // Two vCPUs, as many as the emulated KVM host has (four there
        // triple-fault now and then under load: nested SVM in QEMU TCG).
        // Linux then uses two of the four request queues: the device must
        // work with the subset.
        .arg("--cpus")
        .arg("2")
        .arg("--log-level")
        .arg("debug")
        .run()?;
    guest_ok(&out, 0)?;
    for w in 1..=4u8 {
        let expected: String = (0..200).map(|i| format!("writer {w} line {i}\n")).collect();
        check(
            s.read(&format!("w{w}.txt")) == expected,
            &format!("writer {w} text"),
            &out,
        )?;
        let big = fs::read(s.path(&format!("big{w}.bin")))?;
        check(
            big.len() == 64 * 65536 && big.iter().all(|b| *b == b'0' + w),
            &format!("writer {w} data"),
            &out,
        )?;
    }
    // More than one request queue served requests.
    let line = line_with(&out.stderr, "virtio-fs 'share' requests:");
    let busy = (1..=4).filter(|q| {
        field(line, &format!("queue{q}"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    });
    check(
        busy.count() >= 2,
        &format!("requests were not spread over the queues: {line}"),
        &out,
    )?;
    check(
        out.stderr.contains("2 of 4 request queue(s) in use"),
        "the device did not start with the queues the driver set up",
        &out,
    )
}

fn driver_rebind_mounts_again() -> TestResult {
    let s = Share::new("fs_rebind");
    fs::write(s.path("f.txt"), "still here\n")?;
    let out = run_with_share(
        &s,
        "",
        r#"cat /mnt/f.txt && umount /mnt || exit 1
d=$(basename /sys/bus/virtio/drivers/virtiofs/virtio*)
echo "$d" > /sys/bus/virtio/drivers/virtiofs/unbind || exit 2
echo "$d" > /sys/bus/virtio/drivers/virtiofs/bind || exit 3
mount -t virtiofs share /mnt || exit 4
echo "again:$(cat /mnt/f.txt)"
echo after-rebind > /mnt/g.txt
"#,
    )?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains("again:still here"),
        "share not readable after rebind",
        &out,
    )?;
    check(
        s.read("g.txt") == "after-rebind\n",
        "share not writable after rebind",
        &out,
    )?;
    // The reset dropped the old driver's inodes and files and reopened the
    // root, inside the file server's sandbox.
    check(
        !out.stderr.contains("could not drop"),
        "the reset could not drop the old driver's state",
        &out,
    )
}

fn bad_fs_option(
    spec: fn(&Share) -> Vec<String>,
    expect: &'static str,
    test: &'static str,
) -> TestResult {
    let s = Share::new(test);
    fs::write(s.path("file"), "x")?;
    let kernel = ferry_tests::kernel()?.display().to_string();
    let mut args = vec!["--kernel".to_string(), kernel];
    for f in spec(&s) {
        args.push("--fs".into());
        args.push(f);
    }
    crate::rejects(&args, expect)
}

fn bad_fs_trials() -> Vec<Trial> {
    let t = |name: &'static str, spec: fn(&Share) -> Vec<String>, expect: &'static str| {
        trial(format!("fs_bad_option::{name}"), move || {
            bad_fs_option(spec, expect, name)
        })
    };
    vec![
        t(
            "missing_dir",
            |s| vec![format!("tag=a,path={}/nope", s.root.display())],
            "No such file",
        ),
        t(
            "file_not_dir",
            |s| vec![format!("tag=a,path={}/file", s.root.display())],
            "not a directory",
        ),
        t(
            "duplicate_tag",
            |s| vec![s.spec("a", ""), s.spec("a", "")],
            "used twice",
        ),
        t("empty_tag", |s| vec![s.spec("", "")], "1 to 36 bytes"),
        t(
            "long_tag",
            |s| vec![s.spec(&"t".repeat(37), "")],
            "1 to 36 bytes",
        ),
        t(
            "unknown_key",
            |s| vec![s.spec("a", ",colour=red")],
            "unknown key",
        ),
        t(
            "zero_queues",
            |s| vec![s.spec("a", ",queues=0")],
            "queues=0",
        ),
        t(
            "dax_cache_size_not_power_of_two",
            |s| vec![s.spec("a", ",dax=on,cache-size=3M")],
            "power of two",
        ),
        t(
            "dax_cache_size_too_large",
            |s| vec![s.spec("a", ",dax=on,cache-size=1T")],
            "power of two",
        ),
        t(
            "dax_bad_switch",
            |s| vec![s.spec("a", ",dax=maybe")],
            "on or off",
        ),
        t(
            "dax_window_too_small_for_the_guest",
            |s| vec![s.spec("a", ",cache-size=2M")],
            "at least 4M",
        ),
        t(
            "bad_id_map",
            |s| vec![s.spec("a", ",uid-map=0:1000")],
            "uid-map",
        ),
        t(
            "bad_acl_switch",
            |s| vec![s.spec("a", ",acl=maybe")],
            "on or off",
        ),
    ]
}

/// Deterministic bytes (xorshift), so large files need no RNG crate.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// sha256 through the host's `sha256sum`, the same tool family the guest uses.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A host mount inside the share is its own mount in the guest (FUSE
/// SUBMOUNTS): another device number, listed in /proc/mounts, and hard
/// links and renames across it fail with EXDEV, as on the host.
fn host_mount_is_a_guest_submount() -> TestResult {
    let s = Share::new("fs_submount");
    let sub = s.path("sub");
    fs::create_dir(&sub)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "submount", sub.to_str().unwrap()])
        .status()?;
    if !status.success() {
        return Err("mount a tmpfs inside the share (needs root)".into());
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(sub.clone());
    fs::write(sub.join("inner"), "inside\n")?;
    fs::write(s.path("outer"), "outside\n")?;
    let out = run_with_share(
        &s,
        "",
        r#"echo "read=$(cat /mnt/sub/inner)"
echo "dev-root=$(stat -c %d /mnt/outer) dev-sub=$(stat -c %d /mnt/sub/inner)"
echo "mounts=$(grep -c ' /mnt' /proc/mounts)"
ln /mnt/sub/inner /mnt/link-out 2>&1 | grep -q 'cross-device' && echo link-in-out=EXDEV
ln /mnt/outer /mnt/sub/link-in 2>&1 | grep -q 'cross-device' && echo link-out-in=EXDEV
ferry-fsutil rename /mnt/sub/inner /mnt/moved | grep -q 'cross-device' && echo rename-in-out=EXDEV
ferry-fsutil rename /mnt/outer /mnt/sub/moved | grep -q 'cross-device' && echo rename-out-in=EXDEV
echo made > /mnt/sub/new && echo write=ok"#,
    )?;
    guest_ok(&out, 0)?;
    let line = line_with(&out.stdout, "dev-root=");
    check(
        field(line, "dev-root").is_some() && field(line, "dev-root") != field(line, "dev-sub"),
        "the submount has the parent's device number",
        &out,
    )?;
    check(
        field(line_with(&out.stdout, "mounts="), "mounts") == Some("2"),
        "the submount is not in /proc/mounts",
        &out,
    )?;
    for want in [
        "read=inside",
        "link-in-out=EXDEV",
        "link-out-in=EXDEV",
        "rename-in-out=EXDEV",
        "rename-out-in=EXDEV",
        "write=ok",
    ] {
        check(out.stdout.contains(want), &format!("expected {want}"), &out)?;
    }
    check(
        fs::read_to_string(sub.join("new"))? == "made\n",
        "the write into the submount is not on the host",
        &out,
    )
}

pub fn trials() -> Vec<Trial> {
    let mut t = vec![
        trial(
            "fs::file_operations_match_the_host",
            file_operations_match_the_host,
        ),
        trial("fs::host_change_seen_cache_never", || {
            host_change_seen("fs_never", "never", "")
        }),
        trial("fs::host_change_seen_cache_auto", || {
            host_change_seen("fs_auto", "auto", "sleep 1.5")
        }),
        trial(
            "fs::two_shares_and_a_readonly_one",
            two_shares_and_a_readonly_one,
        ),
        trial("fs::eight_shares", many_shares_at_once),
        trial("fs::large_file_round_trip", large_file_round_trip),
        trial(
            "fs::large_requests_and_many_files",
            large_requests_and_many_files,
        ),
        trial("fs::four_queues_four_writers", four_queues_four_writers),
        trial("fs::driver_rebind", driver_rebind_mounts_again),
        trial(
            "fs::host_mount_is_a_guest_submount",
            host_mount_is_a_guest_submount,
        ),
    ];
    t.extend(bad_fs_trials());
    t
}
