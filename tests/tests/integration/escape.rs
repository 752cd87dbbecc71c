//! The escape battery, guest side: a real guest tries to read or change
//! host files outside its share. Every attempt must be blocked, the host
//! must be as the test left it, and the test prints which defence stopped
//! each attempt. The raw-FUSE half (requests no Linux guest would send) is
//! devices/src/virtio/fs/escape_tests.rs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::{Guest, Outcome};
use libtest_mimic::Trial;

use crate::virtiofs::Share;
use crate::{check, guest_ok, trial, TestResult};

const GUEST_VFS: &str =
    "the guest kernel resolves '..' and symlinks in its own namespace, where the host is absent";
const NAME_CHECK: &str = "the file server opens one component at a time, O_NOFOLLOW";
const POLICY_DEV: &str = "share policy: no device nodes (EPERM)";
const POLICY_SETID: &str = "share policy: no setuid/setgid files (EPERM)";
const POLICY_XATTR: &str = "share policy: security.*/trusted.* are the host's (EPERM)";
const POLICY_RO: &str = "share policy: read-only share (EROFS)";
const POLICY_OVERLAY_XATTR: &str =
    "share policy: trusted.overlay.* reads as absent (ENODATA), never the host's value";
const POLICY_SETID_WRITE: &str =
    "share policy: a write, truncation or O_TRUNC open of a setuid/setgid file clears the bits first";
const POLICY_DEV_HELD: &str =
    "share policy: a device node already in the share is not chmod'ed, chown'ed or linked (EPERM)";
const NO_HANDLES: &str =
    "a forged FUSE handle names a node id Ferry never gave out: no inode in the guest, none in Ferry's table";
const NAME_MAX: &str = "guest VFS: NAME_MAX";
const LANDLOCK: &str = "Landlock: the file server may open files only beneath its share";

/// (name, shell command that succeeds only if the attempt escaped, defence)
const ATTEMPTS: &[(&str, &str, &str)] = &[
    (
        "dotdot_path",
        "cat /mnt/../outside/secret | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "dotdot_twice",
        "cat /mnt/../../outside/secret | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "dotdot_from_cwd",
        "cd /mnt && cat ../outside/secret | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "list_parent",
        "ls -a /mnt/.. | grep -q '^outside$'",
        GUEST_VFS,
    ),
    (
        "host_absolute_symlink",
        "cat /mnt/abs | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "host_relative_symlink",
        "cat /mnt/rel | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "host_symlink_to_dir",
        "cat /mnt/updir/secret | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "write_through_host_symlink",
        "echo pwned > /mnt/abs && grep -q pwned /mnt/abs",
        GUEST_VFS,
    ),
    (
        "guest_symlink_up",
        "ln -s ../../outside /mnt/up && cat /mnt/up/secret | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "guest_symlink_absolute",
        "ln -s /mnt/../outside/secret /mnt/gabs && cat /mnt/gabs | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "hard_link_to_outside",
        "ln /mnt/../outside/secret /mnt/h && grep -q host-secret /mnt/h",
        GUEST_VFS,
    ),
    (
        "hard_link_to_guest_file",
        "ln /bin/busybox /mnt/p",
        GUEST_VFS,
    ),
    (
        "dir_then_dotdot_chain",
        "mkdir -p /mnt/a/b && cd /mnt/a/b && cat ../../../outside/secret | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "symlink_component_on_host",
        "cat /mnt/hostlinkdir/secret | grep -q host-secret",
        NAME_CHECK,
    ),
    ("mknod_block_device", "mknod /mnt/blk b 8 0", POLICY_DEV),
    ("mknod_char_device", "mknod /mnt/mem c 1 1", POLICY_DEV),
    (
        "chmod_setuid_root_shell",
        "cp /bin/busybox /mnt/sh && chown 0:0 /mnt/sh && chmod 4755 /mnt/sh",
        POLICY_SETID,
    ),
    ("chmod_u_plus_s", "chmod u+s /mnt/sh", POLICY_SETID),
    ("chmod_setgid_file", "chmod 2755 /mnt/sh", POLICY_SETID),
    (
        "file_capability_xattr",
        // struct vfs_cap_data: revision 2, effective, permitted CAP_SYS_ADMIN
        // (a value the guest kernel accepts and passes on to the server).
        "ferry-fsutil setxattr /mnt/sh security.capability 0x0100000200002000000000000000000000000000",
        POLICY_XATTR,
    ),
    (
        "trusted_overlay_xattr",
        "ferry-fsutil setxattr /mnt/sh trusted.overlay.opaque y",
        POLICY_XATTR,
    ),
    (
        "read_trusted_xattr",
        "ferry-fsutil getxattr /mnt/marked trusted.ferry",
        POLICY_XATTR,
    ),
    (
        "read_trusted_overlay_xattr",
        "ferry-fsutil getxattr /mnt/marked trusted.overlay.opaque",
        POLICY_OVERLAY_XATTR,
    ),
    (
        "name_to_handle_and_forged_handle",
        "ferry-fsutil byhandle /mnt/sh",
        NO_HANDLES,
    ),
    (
        "over_long_name",
        "touch /mnt/$(head -c 300 /dev/zero | tr '\\0' a)",
        NAME_MAX,
    ),
    (
        "security_label_xattr",
        "ferry-fsutil setxattr /mnt/sh security.selinux system_u:object_r:shadow_t:s0",
        POLICY_XATTR,
    ),
    ("write_readonly_share", "echo x > /ro/file", POLICY_RO),
    (
        "truncate_readonly_share",
        "truncate -s 0 /ro/file",
        POLICY_RO,
    ),
    ("chmod_in_readonly_share", "chmod 0777 /ro/file", POLICY_RO),
    ("create_in_readonly_share", "touch /ro/new", POLICY_RO),
    ("mkdir_in_readonly_share", "mkdir /ro/dir", POLICY_RO),
    ("remove_from_readonly_share", "rm /ro/file", POLICY_RO),
    ("rename_into_readonly_share", "mv /mnt/sh /ro/sh", POLICY_RO),
    // Host files with setuid/setgid (root's, as a host binary would be):
    // each escapes if the guest changes the contents and the bit stays.
    (
        "append_to_setuid_root_file",
        "echo x >> /mnt/suid_append && [ -u /mnt/suid_append ]",
        POLICY_SETID_WRITE,
    ),
    (
        "overwrite_setuid_root_file",
        "cp /bin/busybox /mnt/suid_cp 2>/dev/null; [ -u /mnt/suid_cp ] && cmp -s /bin/busybox /mnt/suid_cp",
        POLICY_SETID_WRITE,
    ),
    (
        "truncate_setuid_root_file",
        "truncate -s 1 /mnt/suid_trunc && [ -u /mnt/suid_trunc ]",
        POLICY_SETID_WRITE,
    ),
    (
        "o_trunc_open_of_setuid_file",
        ": > /mnt/suid_otrunc && [ -u /mnt/suid_otrunc ]",
        POLICY_SETID_WRITE,
    ),
    (
        "append_to_setgid_file",
        "echo x >> /mnt/sgid_append && [ -g /mnt/sgid_append ]",
        POLICY_SETID_WRITE,
    ),
    (
        "dd_into_setuid_file",
        "dd if=/dev/zero of=/mnt/suid_dd bs=1 count=4 conv=notrunc 2>/dev/null && [ -u /mnt/suid_dd ]",
        POLICY_SETID_WRITE,
    ),
    (
        "copy_then_chmod_ug_plus_s",
        "cp /bin/busybox /mnt/sx && chmod u+s,g+s /mnt/sx",
        POLICY_SETID,
    ),
    ("chmod_g_plus_s", "chmod g+s /mnt/sh", POLICY_SETID),
    ("chmod_6755", "chmod 6755 /mnt/sh", POLICY_SETID),
    (
        "mknod_block_in_subdirectory",
        "mkdir -p /mnt/devdir && mknod /mnt/devdir/sda b 8 0",
        POLICY_DEV,
    ),
    (
        "mknod_char_kmem",
        "mknod /mnt/kmem c 1 2",
        POLICY_DEV,
    ),
    // A character device node a host user left in the share.
    ("chmod_host_device_node", "chmod 0666 /mnt/hostdev", POLICY_DEV_HELD),
    ("chown_host_device_node", "chown 1000 /mnt/hostdev", POLICY_DEV_HELD),
    (
        "link_host_device_node",
        "ln /mnt/hostdev /mnt/hostdev2",
        POLICY_DEV_HELD,
    ),
    (
        "ima_xattr",
        "ferry-fsutil setxattr /mnt/sh security.ima 0x0302",
        POLICY_XATTR,
    ),
    (
        "trusted_xattr_other",
        "ferry-fsutil setxattr /mnt/sh trusted.ferry y",
        POLICY_XATTR,
    ),
    (
        "symlink_loop_out",
        "ln -s /mnt/loop2 /mnt/loop1 && ln -s ../outside/secret /mnt/loop2 && cat /mnt/loop1 | grep -q host-secret",
        GUEST_VFS,
    ),
    (
        "rename_symlink_over_dir",
        "mkdir /mnt/rd && ln -s ../outside /mnt/rl && mv -T /mnt/rl /mnt/rd 2>/dev/null; cat /mnt/rd/secret | grep -q host-secret",
        GUEST_VFS,
    ),
];

/// The error message the guest's tools print when `defence` is Ferry's
/// share policy.
fn policy_error(defence: &str) -> Option<&'static str> {
    match defence {
        POLICY_DEV | POLICY_SETID | POLICY_XATTR | POLICY_DEV_HELD => {
            Some("Operation not permitted")
        }
        POLICY_RO => Some("Read-only file system"),
        POLICY_OVERLAY_XATTR => Some("No data available"),
        _ => None,
    }
}

fn battery() -> TestResult {
    let s = Share::new("escape_battery");
    let ro = Share::new("escape_battery_ro");
    fs::write(ro.path("file"), "read-only\n")?;
    let ro_mode = fs::metadata(ro.path("file"))?.permissions().mode();
    let outside = s.outside().to_path_buf();
    std::os::unix::fs::symlink(outside.join("secret"), s.path("abs"))?;
    std::os::unix::fs::symlink("../outside/secret", s.path("rel"))?;
    std::os::unix::fs::symlink("../outside", s.path("updir"))?;
    std::os::unix::fs::symlink(&outside, s.path("hostlinkdir"))?;
    // Root's setuid/setgid files and a device node, made on the host.
    let setid = [
        ("suid_append", 0o4755),
        ("suid_cp", 0o4755),
        ("suid_trunc", 0o4755),
        ("suid_otrunc", 0o4755),
        ("sgid_append", 0o2755),
        ("suid_dd", 0o4755),
    ];
    for (name, mode) in setid {
        fs::write(s.path(name), "#!/bin/sh\necho host binary\n")?;
        fs::set_permissions(s.path(name), fs::Permissions::from_mode(mode))?;
    }
    // Host values the guest must never read.
    fs::write(s.path("marked"), "marked\n")?;
    let marked = std::ffi::CString::new(s.path("marked").as_os_str().as_encoded_bytes())?;
    for (name, value) in [
        (c"trusted.overlay.opaque", b"y".as_slice()),
        (c"trusted.ferry", b"secret"),
    ] {
        // SAFETY: a plain system call with valid strings and buffer.
        let rc = unsafe {
            libc::setxattr(
                marked.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            return Err(format!("setxattr {name:?}: {}", std::io::Error::last_os_error()).into());
        }
    }
    let dev = std::ffi::CString::new(s.path("hostdev").as_os_str().as_encoded_bytes())?;
    // SAFETY: a plain system call on a path we own (the test runs as root).
    if unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) } != 0 {
        return Err(format!("mknod hostdev: {}", std::io::Error::last_os_error()).into());
    }
    // Too long for the kernel command line: the guest runs it from the share.
    let mut script = String::from(
        "try() { if err=$(sh -c \"$2\" 2>&1); then echo \"ATTEMPT $1 ESCAPED\"; \
         else echo \"ATTEMPT $1 blocked: $(echo \"$err\" | tail -n 1)\"; fi; }\n",
    );
    for (name, cmd, _) in ATTEMPTS {
        script.push_str(&format!("try {name} '{}'\n", cmd.replace('\'', "'\\''")));
    }
    fs::write(s.path("battery.sh"), script)?;
    let out = Guest::command(
        "mount -t virtiofs share /mnt || exit 90\n\
         mkdir -p /ro && mount -t virtiofs ro /ro || exit 91\n\
         sh /mnt/battery.sh; exit 0",
    )
    .fs(&s.spec("share", ",cache=never"))
    .fs(&ro.spec("ro", ",readonly=on"))
    .deadline(Duration::from_secs(300))
    .run()?;
    guest_ok(&out, 0)?;
    println!("escape battery (guest):");
    for (name, _, defence) in ATTEMPTS {
        let line = crate::line_with(&out.stdout, &format!("ATTEMPT {name} blocked"));
        check(
            !line.is_empty(),
            &format!("attempt {name} was not blocked"),
            &out,
        )?;
        // Where Ferry's policy is the defence, the guest must see its errno.
        if let Some(errno) = policy_error(defence) {
            check(
                line.contains(errno),
                &format!("attempt {name} failed, but not with {errno}: {line}"),
                &out,
            )?;
        }
        println!("  blocked  {name:<34} {defence}");
    }
    s.outside_untouched(&out)?;
    check(
        ro.read("file") == "read-only\n",
        "the read-only share changed",
        &out,
    )?;
    let ro_names: Vec<_> = fs::read_dir(&ro.root)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    check(
        ro_names == ["file"] && fs::metadata(ro.path("file"))?.permissions().mode() == ro_mode,
        &format!("the read-only share changed: {ro_names:?}"),
        &out,
    )?;
    for entry in fs::read_dir(&s.root)? {
        let entry = entry?;
        let m = fs::symlink_metadata(entry.path())?;
        let kind = m.mode() & libc::S_IFMT;
        if entry.file_name() == "hostdev" {
            check(
                kind == libc::S_IFCHR
                    && m.mode() & 0o7777 == 0o600
                    && m.uid() == 0
                    && m.nlink() == 1,
                &format!(
                    "the host's device node changed: mode {:o} uid {}",
                    m.mode(),
                    m.uid()
                ),
                &out,
            )?;
            continue;
        }
        check(
            kind != libc::S_IFBLK && kind != libc::S_IFCHR,
            &format!("device node {:?} on the host", entry.file_name()),
            &out,
        )?;
        check(
            m.is_dir() || m.permissions().mode() & 0o6000 == 0,
            &format!("setuid/setgid file {:?} on the host", entry.file_name()),
            &out,
        )?;
    }
    Ok(())
}

/// Waits on the host for `path` to appear (the guest's signal).
fn wait_for(path: &Path, stop: &AtomicBool) -> bool {
    while !stop.load(Ordering::Relaxed) {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The guest holds a directory (its cwd); a host process moves it out of
/// the share and puts a secret in it. The file server still reaches it by
/// descriptor, so only Landlock stands between the guest and the secret:
/// with `--sandbox off` the same guest reads it (the control run).
fn held_dir_moved_out(sandbox: &'static str) -> Result<Outcome, libtest_mimic::Failed> {
    let s = Share::new(&format!("escape_moved_dir_{sandbox}"));
    fs::create_dir(s.path("d"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (root, outside) = (s.root.clone(), s.outside().to_path_buf());
    let host_stop = stop.clone();
    let host = std::thread::spawn(move || {
        if !wait_for(&root.join("d/ready"), &host_stop) {
            return false;
        }
        fs::rename(root.join("d"), outside.join("d")).unwrap();
        fs::write(outside.join("d/secret"), "host-secret-data\n").unwrap();
        fs::write(root.join("moved"), "").unwrap();
        true
    });
    let script = "mount -t virtiofs share /mnt || exit 90\n\
                  cd /mnt/d && touch /mnt/d/ready\n\
                  i=0; while [ ! -e /mnt/moved ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
                  [ -e /mnt/moved ] || exit 91\n\
                  cat secret && echo READ-OUTSIDE\n\
                  echo pwned > planted && echo WROTE-OUTSIDE\n\
                  ls . >/dev/null && echo LISTED-OUTSIDE\n\
                  exit 0";
    let out = Guest::command(script)
        .fs(&s.spec("share", ",cache=never"))
        .arg("--sandbox")
        .arg(sandbox)
        .deadline(Duration::from_secs(180))
        .run();
    stop.store(true, Ordering::Relaxed);
    let moved = host.join().unwrap_or(false);
    let out = out?;
    guest_ok(&out, 0)?;
    check(moved, "the host never moved the directory", &out)?;
    Ok(out)
}

fn landlock_stops_a_held_dir_moved_out() -> TestResult {
    let out = held_dir_moved_out("on")?;
    for what in ["READ-OUTSIDE", "WROTE-OUTSIDE", "LISTED-OUTSIDE"] {
        check(
            !out.stdout.contains(what),
            &format!("{what}: Landlock did not stop it"),
            &out,
        )?;
    }
    check(
        out.stdout.contains("Permission denied"),
        "the guest should see EACCES (Landlock)",
        &out,
    )?;
    println!("  blocked  held_dir_moved_out_by_host         {LANDLOCK}");
    Ok(())
}

fn without_sandbox_the_moved_dir_is_reachable() -> TestResult {
    // The control: proves the attempt above is real and Landlock is what
    // stops it. The file server's own checks cannot see the move.
    let out = held_dir_moved_out("off")?;
    check(
        out.stdout.contains("host-secret-data") && out.stdout.contains("READ-OUTSIDE"),
        "with --sandbox off the guest should reach the moved directory",
        &out,
    )
}

/// A host process swaps a directory in the share for a symlink to the
/// outside and back, as fast as it can, while the guest keeps opening a
/// file beneath it: between LOOKUP and OPEN the name may be either.
fn dir_symlink_swap_race() -> TestResult {
    let s = Share::new("escape_swap_race");
    fs::create_dir(s.path("sw"))?;
    fs::write(s.path("sw/secret"), "share-data\n")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (root, outside) = (s.root.clone(), s.outside().to_path_buf());
    let host_stop = stop.clone();
    let host = std::thread::spawn(move || {
        let mut swaps = 0u64;
        if !wait_for(&root.join("go"), &host_stop) {
            return swaps;
        }
        while !host_stop.load(Ordering::Relaxed) {
            let _ = fs::rename(root.join("sw"), root.join("sw.real"));
            let _ = std::os::unix::fs::symlink(&outside, root.join("sw"));
            let _ = fs::remove_file(root.join("sw"));
            let _ = fs::rename(root.join("sw.real"), root.join("sw"));
            swaps += 1;
        }
        swaps
    });
    let script = "mount -t virtiofs share /mnt || exit 90\n\
                  touch /mnt/go\n\
                  n=0; while [ $n -lt 400 ]; do \
                  cat /mnt/sw/secret 2>/dev/null | grep -q host-secret && echo ESCAPED; \
                  n=$((n+1)); done\n\
                  exit 0";
    let out = Guest::command(script)
        .fs(&s.spec("share", ",cache=never"))
        .deadline(Duration::from_secs(300))
        .run();
    stop.store(true, Ordering::Relaxed);
    let swaps = host.join().unwrap_or(0);
    let out = out?;
    guest_ok(&out, 0)?;
    check(
        swaps > 100,
        &format!("only {swaps} swaps on the host"),
        &out,
    )?;
    check(
        !out.stdout.contains("ESCAPED"),
        "the swap let the guest out",
        &out,
    )?;
    s.outside_untouched(&out)?;
    println!("  blocked  dir_symlink_swap_race ({swaps} swaps)  {NAME_CHECK}; {GUEST_VFS}");
    Ok(())
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial("escape::battery", battery),
        trial(
            "escape::landlock_stops_a_held_dir_moved_out",
            landlock_stops_a_held_dir_moved_out,
        ),
        trial(
            "escape::without_sandbox_the_moved_dir_is_reachable",
            without_sandbox_the_moved_dir_is_reachable,
        ),
        trial("escape::dir_symlink_swap_race", dir_symlink_swap_race),
    ]
}
