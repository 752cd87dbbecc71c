//! Ferry as an ordinary host user: it cannot act as other users, so the
//! share's id maps decide whose files the guest makes. By default guest
//! root is Ferry's user and every other guest id is squashed to it; with
//! `uid-map`/`gid-map` a guest user can be Ferry's user instead.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use ferry_tests::{test_dir, Guest};
use libtest_mimic::Trial;

use crate::{check, field, guest_ok, line_with, trial, TestResult};

/// The host user Ferry runs as.
pub(crate) const USER: u32 = 1000;

/// The group that may open /dev/kvm, made so where it is not (the
/// emulated KVM host's devtmpfs gives /dev/kvm to root alone).
pub(crate) fn kvm_group() -> Result<u32, String> {
    let meta = fs::metadata("/dev/kvm").map_err(|e| format!("/dev/kvm: {e}"))?;
    if meta.mode() & 0o060 != 0o060 {
        fs::set_permissions("/dev/kvm", fs::Permissions::from_mode(meta.mode() | 0o060))
            .map_err(|e| format!("let /dev/kvm's group use it (needs root): {e}"))?;
    }
    Ok(meta.gid())
}

const SCRIPT: &str = r#"mount -t virtiofs share /mnt || exit 90
touch /mnt/by-root && echo root-create=ok
ferry-fsutil as 1000 1000 mkdir /mnt/by-1000 && echo user-mkdir=ok
ferry-fsutil as 65534 65534 touch /mnt/by-nobody && echo nobody-create=ok
for f in by-root by-1000 by-nobody host-own host-other; do echo "$f=$(stat -c %u:%g /mnt/$f)"; done
"#;

/// Runs `SCRIPT` under Ferry as `USER` with `map` added to the share, and
/// checks the host owners and that each file's `uid:gid` as the guest sees
/// it starts with the given text.
fn unprivileged_ferry(name: &str, map: &str, want_guest_view: &[(&str, &str)]) -> TestResult {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("this test starts Ferry as another user: it needs root".into());
    }
    let gid = kvm_group()?;
    let dir = test_dir(name);
    let share = dir.join("share");
    fs::create_dir(&share)?;
    std::os::unix::fs::chown(&dir, Some(USER), Some(gid))?;
    std::os::unix::fs::chown(&share, Some(USER), Some(gid))?;
    fs::set_permissions(&share, fs::Permissions::from_mode(0o777))?;
    fs::write(share.join("host-own"), "")?;
    std::os::unix::fs::chown(share.join("host-own"), Some(USER), Some(gid))?;
    fs::write(share.join("host-other"), "")?;
    std::os::unix::fs::chown(share.join("host-other"), Some(4242), Some(4343))?;
    // The kernel may live in root's cache (~/.cache/ferry): give Ferry's
    // user a copy it can read.
    let kernel = dir.join("bzImage");
    fs::copy(ferry_tests::kernel()?, &kernel)?;
    let out = Guest::command(SCRIPT)
        .kernel(kernel)
        .fs(&format!("tag=share,path={}{map}", share.display()))
        .run_as(USER, gid)?;
    guest_ok(&out, 0)?;
    for made in ["root-create=ok", "user-mkdir=ok", "nobody-create=ok"] {
        check(out.stdout.contains(made), &format!("expected {made}"), &out)?;
    }
    // On the host, everything the guest made is Ferry's user's.
    for f in ["by-root", "by-1000", "by-nobody"] {
        let meta = fs::metadata(share.join(f))?;
        check(
            (meta.uid(), meta.gid()) == (USER, gid),
            &format!("host owner of {f}: {}:{}", meta.uid(), meta.gid()),
            &out,
        )?;
    }
    for (f, want) in want_guest_view {
        let got = field(line_with(&out.stdout, &format!("{f}=")), f);
        check(
            got.is_some_and(|g| g.starts_with(want)),
            &format!("the guest sees {f} as {got:?}, expected {want}"),
            &out,
        )?;
    }
    Ok(())
}

pub fn trials() -> Vec<Trial> {
    vec![
        // Default: guest root is Ferry's user, every other guest id is
        // squashed to it, and Ferry's files show as guest root's.
        trial("unprivileged::default_map", || {
            unprivileged_ferry(
                "unprivileged_default",
                "",
                &[
                    ("by-root", "0:0"),
                    ("by-1000", "0:0"),
                    ("by-nobody", "0:0"),
                    ("host-own", "0:0"),
                    ("host-other", "4242:4343"),
                ],
            )
        }),
        // Guest user 1000 is Ferry's user; everyone else is squashed to
        // it (and shows as 1000 once made).
        trial("unprivileged::guest_user_map", || {
            unprivileged_ferry(
                "unprivileged_user_map",
                &format!(
                    ",uid-map=map:1000:{USER}:1,uid-map=squash-guest:0:{USER}:4294967295\
                     ,gid-map=squash-guest:0:{}:4294967295",
                    kvm_group()?
                ),
                &[
                    ("by-root", "1000:"),
                    ("by-1000", "1000:"),
                    ("host-own", "1000:"),
                    ("host-other", "4242:4343"),
                ],
            )
        }),
    ]
}
