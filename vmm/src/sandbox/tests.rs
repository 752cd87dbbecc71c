//! Each case confines a thread for real, so it runs in a child process: this
//! test binary started again with `CHILD_ENV` naming the case.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_devices::virtio::fs::{CacheMode, FsShare};

use super::*;

const CHILD_ENV: &str = "FERRY_SANDBOX_TEST_CASE";
const DIR_ENV: &str = "FERRY_SANDBOX_TEST_DIR";
const VIOLATION: i32 = 77;

/// The child side: does nothing in a normal run.
#[test]
fn child() {
    let (Ok(case), Ok(dir)) = (std::env::var(CHILD_ENV), std::env::var(DIR_ENV)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    match case.as_str() {
        "violation" => {
            confine_file_server(&dir.join("share"), false);
            // A file server has no business with sockets.
            // SAFETY: plain syscall; the filter traps it.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            unreachable!("the seccomp filter let socket() through");
        }
        "file-server-works" => file_server_works(&dir),
        "landlock-moved-dir" => landlock_moved_dir(&dir),
        "vcpu-landlock" => {
            landlock_rules::restrict(Role::Vcpu, None).unwrap();
            let e = std::fs::read(dir.join("share/file")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        }
        "vcpu-open" => {
            let sandbox = Sandbox::prepare(SandboxMode::On, VIOLATION).unwrap();
            sandbox.confine_vcpu().unwrap();
            let _ = std::fs::read(dir.join("share/file"));
            unreachable!("the vCPU filter let openat through");
        }
        other => panic!("unknown case {other}"),
    }
}

fn run_child(case: &str, dir: &Path) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, case)
        .env(DIR_ENV, dir)
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-sandbox-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::fs::write(dir.join("share/file"), "inside").unwrap();
    std::fs::write(dir.join("outside/secret"), "host-secret").unwrap();
    dir
}

fn confine_file_server(share: &Path, readonly: bool) {
    let sandbox = Sandbox::prepare(SandboxMode::On, VIOLATION).unwrap();
    let confine = sandbox.file_server().unwrap();
    confine(&FsShare {
        tag: "t".into(),
        path: share.to_path_buf(),
        request_queues: 1,
        readonly,
        cache: CacheMode::Auto,
        dax_window: None,
        ..Default::default()
    })
    .unwrap();
}

fn assert_child_ok(case: &str, out: &Output) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{case}: {out:?}"
    );
}

#[test]
fn a_seccomp_violation_in_a_file_server_is_reported() {
    let dir = scratch("violation");
    let out = run_child("violation", &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VIOLATION), "{out:?}");
    assert!(
        stderr.contains(&format!(
            "(file server) made system call {}, which its seccomp filter forbids",
            libc::SYS_socket
        )),
        "{stderr}"
    );
}

/// What the file server does for FUSE requests still works once confined,
/// made the way fuse-backend-rs makes it (relative to directory
/// descriptors): files, directories, links, xattrs, sync, threads.
fn file_server_works(dir: &Path) {
    let share = dir.join("share");
    let root = std::fs::File::open(&share).unwrap();
    confine_file_server(&share, false);
    let fd = root.as_raw_fd();
    let c = |s: &str| CString::new(s).unwrap();
    let ok = |r: libc::c_int, what: &str| {
        assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
        r
    };
    // SAFETY: (all calls below) valid descriptors, C strings and buffers.
    unsafe {
        let f = ok(
            libc::openat(fd, c("new").as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o644),
            "openat",
        );
        ok(
            i32::try_from(libc::pwrite(f, b"hello".as_ptr().cast(), 5, 0)).unwrap(),
            "pwrite",
        );
        let mut buf = [0u8; 5];
        ok(
            i32::try_from(libc::pread(f, buf.as_mut_ptr().cast(), 5, 0)).unwrap(),
            "pread",
        );
        assert_eq!(&buf, b"hello");
        ok(libc::ftruncate(f, 3), "ftruncate");
        ok(libc::fsync(f), "fsync");
        let set = libc::fsetxattr(f, c("user.ferry").as_ptr(), b"v".as_ptr().cast(), 1, 0);
        // tmpfs without user xattrs answers EOPNOTSUPP: allowed, not trapped.
        assert!(
            set == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP)
        );
        libc::close(f);
        ok(libc::mkdirat(fd, c("d").as_ptr(), 0o755), "mkdirat");
        ok(
            libc::renameat(fd, c("new").as_ptr(), fd, c("d/moved").as_ptr()),
            "renameat",
        );
        ok(
            libc::linkat(fd, c("d/moved").as_ptr(), fd, c("link").as_ptr(), 0),
            "linkat",
        );
        ok(
            libc::symlinkat(c("d/moved").as_ptr(), fd, c("sym").as_ptr()),
            "symlinkat",
        );
        let mut target = [0u8; 64];
        let n = libc::readlinkat(fd, c("sym").as_ptr(), target.as_mut_ptr().cast(), 64);
        assert_eq!(&target[..usize::try_from(n).unwrap()], b"d/moved");
        ok(libc::unlinkat(fd, c("link").as_ptr(), 0), "unlinkat");
        ok(libc::unlinkat(fd, c("sym").as_ptr(), 0), "unlinkat");
        ok(libc::unlinkat(fd, c("d/moved").as_ptr(), 0), "unlinkat");
        ok(
            libc::unlinkat(fd, c("d").as_ptr(), libc::AT_REMOVEDIR),
            "rmdir",
        );
    }
    // Reading a directory.
    assert_eq!(std::fs::read_dir(&share).unwrap().count(), 1);
    // Starting a worker thread (clone3 answers ENOSYS, clone goes through).
    let t = std::thread::Builder::new()
        .name("fs-t-q1".into())
        .spawn(|| 7)
        .unwrap();
    assert_eq!(t.join().unwrap(), 7);
}

#[test]
fn a_confined_file_server_still_serves_its_share() {
    let dir = scratch("works");
    assert_child_ok("file-server-works", &run_child("file-server-works", &dir));
}

/// A directory the server holds is moved out of the share on the host: by
/// descriptor it is still reachable, and only Landlock stops the read.
fn landlock_moved_dir(dir: &Path) {
    let share = dir.join("share");
    std::fs::create_dir(share.join("d")).unwrap();
    let held = std::fs::File::open(share.join("d")).unwrap();
    std::fs::rename(share.join("d"), dir.join("outside/d")).unwrap();
    std::fs::write(dir.join("outside/d/secret"), "host-secret").unwrap();
    let read_secret = || {
        let name = CString::new("secret").unwrap();
        // SAFETY: valid dir fd and C string.
        let fd = unsafe { libc::openat(held.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: fd was just opened.
            unsafe { libc::close(fd) };
            Ok(())
        }
    };
    // Unconfined, the held descriptor reaches outside the share.
    read_secret().expect("the moved directory must be reachable before confinement");
    confine_file_server(&share, false);
    let e = read_secret().expect_err("Landlock let the server read outside its share");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    // Straight paths outside fail too; the share still works.
    assert!(std::fs::read(dir.join("outside/secret")).is_err());
    assert_eq!(std::fs::read(share.join("file")).unwrap(), b"inside");
}

#[test]
fn landlock_stops_the_file_server_outside_its_share() {
    let dir = scratch("landlock");
    assert_child_ok("landlock-moved-dir", &run_child("landlock-moved-dir", &dir));
}

#[test]
fn a_confined_vcpu_opens_no_files() {
    let dir = scratch("vcpu");
    // Landlock alone denies it...
    assert_child_ok("vcpu-landlock", &run_child("vcpu-landlock", &dir));
    // ...and seccomp traps the call before Landlock sees it.
    let out = run_child("vcpu-open", &dir);
    assert_eq!(out.status.code(), Some(VIOLATION), "{out:?}");
    let nr = format!("(vCPU) made system call {}", libc::SYS_openat);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&nr),
        "{out:?}"
    );
}

#[test]
fn filters_compile_for_every_role() {
    for role in [Role::Main, Role::Vcpu, Role::FileServer, Role::Network] {
        assert!(
            !seccomp_filters::compile(role).unwrap().is_empty(),
            "{role}"
        );
    }
}
