//! `ferry run`: boot a throwaway microVM whose root is the host's `/`
//! (read-only), run one command in it with the caller's directory, user and
//! environment, and hand back its output and exit status.
//!
//! The host side (this module) plans the shares, writes the [`RunSpec`] for
//! the guest init ([`guest_init`], which is this same binary running as the
//! guest's PID 1) and maps how the VM ended to an exit status.

mod dhcp;
pub mod guest_init;
mod guest_net;
mod initramfs;
mod kernel_image;
mod kernel_path;
mod modules;
mod overlay;
mod spec;
mod user;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use ferry_devices::virtio::fs::{FsShare, IdMap, IdMapping};

use crate::cli::{BootArgs, RunArgs, RwArg};
use crate::exit::ExitReason;
use crate::fs_option::FsArg;
use crate::vm::{self, ConsoleMode, VmConfig};
use guest_init::{SPEC_ENV, STATUS_SETUP_FAILED};
use spec::{GuestMount, RunSpec};

pub const ROOT_TAG: &str = "ferry-root";
const STATUS_TIMEOUT: i32 = 124;
/// How much of the guest's console to show when the guest fails.
const CONSOLE_TAIL: usize = 16 << 10;

/// Variables that describe the caller's session on this host and mean
/// nothing (or mislead) inside the VM.
const HOST_ONLY_ENV: &[&str] = &[
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "GPG_AGENT_INFO",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "NOTIFY_SOCKET",
    "OLDPWD",
    "PWD",
    "SHLVL",
    "SSH_AGENT_PID",
    "SSH_AUTH_SOCK",
    "SSH_CLIENT",
    "SSH_CONNECTION",
    "SSH_TTY",
    "STY",
    "TMPDIR",
    "TMUX",
    "TMUX_PANE",
    "WAYLAND_DISPLAY",
    "WINDOWID",
    "XAUTHORITY",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_ID",
    "_",
];

/// The modules a kernel of `release` needs loaded for Ferry's devices, or
/// None when it has them built in (the project kernel) or this host has no
/// modules for it: `--modules DIR` when given (a missing one is an error),
/// else `/lib/modules/RELEASE`.
fn module_tree(
    given: Option<&Path>,
    release: &str,
    wanted: &[&str],
) -> Result<Option<(PathBuf, modules::ModuleTree)>> {
    let dir = match given {
        Some(dir) if !dir.is_dir() => bail!("--modules {}: not a directory", dir.display()),
        Some(dir) => dir.to_path_buf(),
        None => match modules::installed(release) {
            Some(dir) => dir,
            None => return Ok(None),
        },
    };
    let tree = modules::ModuleTree::open(&dir)?;
    if !tree.needed(wanted) {
        log::info!(
            "kernel {release}: {} built in; no modules from {}",
            wanted.join(", "),
            dir.display()
        );
        return Ok(None);
    }
    Ok(Some((dir, tree)))
}

/// Runs `args` and returns Ferry's exit status.
pub fn run(args: &RunArgs) -> i32 {
    match run_vm(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            STATUS_SETUP_FAILED
        }
    }
}

fn run_vm(args: &RunArgs) -> Result<i32> {
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => kernel_path::default_kernel()?,
    };
    // A file that is not a kernel gets one line here, before any KVM work.
    let release = kernel_image::release(&kernel)?;
    log::info!("kernel {}: release {release}", kernel.display());
    let cwd = std::env::current_dir().context("the current directory")?;
    let (shares, mounts) = plan_shares(&cwd, &args.rw, &args.machine.fs)?;
    let share_paths: Vec<PathBuf> = mounts.iter().map(|m| m.path.clone()).collect();
    let overlays = overlay::plan(
        &args.overlay,
        args.no_overlay,
        &share_paths,
        !shares[0].readonly,
    )?;
    check_mount_points(&mounts, &overlays)?;
    let mut env = guest_env(std::env::vars_os(), &cwd);
    let (uid, gid, groups) = match &args.user {
        None => {
            let (uid, gid) = current_ids();
            (uid, gid, current_groups())
        }
        Some(spec) => {
            let user = user::resolve(spec)?;
            set_env(&mut env, "HOME", user.home.as_os_str());
            set_env(&mut env, "USER", &user.name);
            set_env(&mut env, "LOGNAME", &user.name);
            (user.uid, user.gid, user.groups)
        }
    };
    // As ssh: a terminal when Ferry runs on one (stdin and stdout), or
    // when asked; never with -T.
    // SAFETY: isatty only inspects the descriptor.
    let on_terminal = unsafe { libc::isatty(0) == 1 && libc::isatty(1) == 1 };
    let tty = !args.no_tty && (args.tty || on_terminal);
    let spec = RunSpec {
        tty: tty.then(|| crate::terminal::size().unwrap_or((24, 80))),
        argv: args.command.clone(),
        env,
        cwd,
        uid,
        gid,
        groups,
        umask: current_umask(),
        mounts,
        overlays,
        network: args.machine.net.is_some(),
    };
    let spec_file = SpecFile::write(&spec)?;
    let init = std::env::current_exe().context("the path of the ferry binary")?;
    // A distribution kernel: its modules come in Ferry's own initramfs.
    let wanted = modules::wanted(&spec);
    let initramfs = match module_tree(args.modules.as_deref(), &release, &wanted)? {
        Some((dir, tree)) => {
            let path = spec_file.dir.join("initramfs.cpio");
            initramfs::write(&path, &init, &tree, &release, &wanted)?;
            log::info!(
                "kernel {release}: modules from {} in an initramfs",
                dir.display()
            );
            Some(path)
        }
        None => None,
    };
    let mut cmdline = vec![
        format!("root={ROOT_TAG}"),
        "rootfstype=virtiofs".into(),
        "ro".into(),
        format!("init={}", cmdline_word(&init)?),
        format!("{SPEC_ENV}={}", cmdline_word(spec_file.path())?),
    ];
    let verbose = log::log_enabled!(log::Level::Info);
    if !verbose {
        cmdline.push("quiet".into());
    }
    cmdline.push(args.cmdline.clone());

    let console = Arc::new(Mutex::new(ConsoleTail::new(verbose)));
    let config = VmConfig {
        boot: BootArgs {
            kernel: Some(kernel),
            initramfs,
            cmdline: cmdline.join(" "),
            machine: crate::cli::MachineArgs {
                fs: shares
                    .into_iter()
                    .map(|share| FsArg { share, guest: None })
                    .collect(),
                ..args.machine.clone()
            },
        },
        console: ConsoleMode::Captured {
            output: Box::new(SharedConsole(console.clone())),
            stdin_to_port: true,
            terminal: tty,
        },
        timeout: args.timeout,
        violation_status: guest_init::STATUS_SETUP_FAILED,
    };
    let reason = vm::run(config)?;
    let failed = |what: &str| {
        let tail = console.lock().unwrap_or_else(|e| e.into_inner()).text();
        if tail.trim().is_empty() || verbose {
            eprintln!("ferry: {what}");
        } else {
            eprintln!("ferry: {what}; the guest console ended with:\n{tail}");
        }
        STATUS_SETUP_FAILED
    };
    Ok(match reason {
        ExitReason::GuestStatus(s) => i32::from(s),
        ExitReason::Signal(_) => reason.exit_code(),
        ExitReason::Timeout(d) => {
            eprintln!(
                "ferry: --timeout {} reached; the VM was stopped",
                humantime::format_duration(d)
            );
            STATUS_TIMEOUT
        }
        ExitReason::Reset | ExitReason::TripleFault => {
            failed("the guest stopped (reboot, panic or crash) before the command finished")
        }
        ExitReason::Stalled(msg) | ExitReason::KvmError(msg) => failed(&msg),
    })
}

/// One word of the kernel command line: it splits at white space and has no
/// quoting that Ferry could rely on.
fn cmdline_word(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("{s}: a path with white space or quotes cannot go on the kernel command line");
    }
    Ok(s.to_string())
}

/// The virtio-fs devices and the guest mounts: the root read-only, then
/// each read-write directory (the current one and `--rw`), then the user's
/// own `--fs` shares, each mounted at its host path or at the guest path
/// given (`--rw HOST:GUEST`, `--fs ...,guest=PATH`).
fn plan_shares(
    cwd: &Path,
    rw: &[RwArg],
    extra: &[FsArg],
) -> Result<(Vec<FsShare>, Vec<GuestMount>)> {
    let mut at_home = Vec::new();
    let mut moved = Vec::new();
    let cwd_arg = RwArg {
        host: cwd.to_path_buf(),
        guest: None,
    };
    for r in std::iter::once(&cwd_arg).chain(rw) {
        let dir = r
            .host
            .canonicalize()
            .with_context(|| format!("--rw {}", r.host.display()))?;
        if !dir.is_dir() {
            bail!("--rw {}: not a directory", r.host.display());
        }
        match &r.guest {
            Some(g) if *g != dir => {
                moved.push((dir, guest_path(g, &format!("--rw {}", r.host.display()))?))
            }
            _ => at_home.push(dir),
        }
    }
    let at_home = outermost(at_home);
    let root_writable = at_home.iter().any(|d| d == Path::new("/"));
    let mut shares = vec![share(ROOT_TAG, PathBuf::from("/"), !root_writable)];
    let mut mounts = Vec::new();
    let rw_dirs = at_home
        .into_iter()
        .filter(|d| d != Path::new("/"))
        .map(|d| (d.clone(), d))
        .chain(moved);
    for (i, (host, guest)) in rw_dirs.enumerate() {
        let tag = format!("ferry-rw{i}");
        mounts.push(GuestMount {
            tag: tag.clone(),
            path: guest,
            options: String::new(),
        });
        shares.push(share(&tag, host, false));
    }
    for a in extra {
        let s = &a.share;
        let context = format!("--fs tag={}", s.tag);
        let path = match &a.guest {
            Some(g) => guest_path(g, &context)?,
            None => s.path.canonicalize().with_context(|| context.clone())?,
        };
        mounts.push(GuestMount {
            tag: s.tag.clone(),
            path,
            options: if s.dax_window.is_some() {
                "dax".into()
            } else {
                String::new()
            },
        });
        shares.push(s.clone());
    }
    // Parents before what is mounted inside them.
    mounts.sort_by_key(|m| m.path.components().count());
    Ok((shares, mounts))
}

/// A guest mount point as the user gave it: absolute, with no `.` or `..`,
/// and not the root (which is the host's own).
fn guest_path(p: &Path, what: &str) -> Result<PathBuf> {
    use std::path::Component;
    if !p.is_absolute() {
        bail!("{what}: the guest path {} must be absolute", p.display());
    }
    if p.components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
    {
        bail!(
            "{what}: the guest path {} must not contain . or ..",
            p.display()
        );
    }
    if p.components().count() == 1 {
        bail!("{what}: the guest's / is the host's; --rw / makes it writable");
    }
    Ok(p.components().collect())
}

/// Where the guest init mounts tmpfs of its own (`guest_init::mount_userland`).
const GUEST_TMPFS: [&str; 4] = ["/tmp", "/run", "/var/tmp", "/dev/shm"];

/// Where the guest can have a mount point: on the read-only root only
/// where the host has the directory, or under a guest tmpfs, an overlay or
/// a share mounted before (which init then creates it in).
fn check_mount_points(mounts: &[GuestMount], overlays: &[PathBuf]) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if m.path.is_dir() {
            continue;
        }
        if m.path.exists() {
            bail!(
                "mount point {}: not a directory on this host",
                m.path.display()
            );
        }
        let writable_parent = GUEST_TMPFS.iter().any(|t| m.path.starts_with(t))
            || overlays.iter().any(|o| m.path.starts_with(o))
            || mounts[..i]
                .iter()
                .any(|earlier| m.path.starts_with(&earlier.path));
        if !writable_parent {
            bail!(
                "mount point {}: not on this host, and the guest's root is read-only: use an \
                 existing directory, or one under /tmp or /run or inside an --overlay",
                m.path.display()
            );
        }
    }
    Ok(())
}

/// The command runs as the caller, so host ids show as they are; where
/// Ferry is unprivileged, whatever a guest user makes is the caller's.
fn share(tag: &str, path: PathBuf, readonly: bool) -> FsShare {
    let (uid, gid) = crate::fs_option::own_ids();
    let ids = if uid == 0 {
        IdMapping::default()
    } else {
        IdMapping {
            uids: IdMap::all_to(uid),
            gids: IdMap::all_to(gid),
        }
    };
    FsShare {
        tag: tag.into(),
        path,
        request_queues: 1,
        readonly,
        ids,
        ..Default::default()
    }
}

/// Drops directories that lie inside another one in the list (and
/// duplicates): one share per tree keeps one cache per file.
fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !kept.iter().any(|k| d.starts_with(k)) {
            kept.push(d);
        }
    }
    kept
}

/// The caller's environment as the command gets it.
fn guest_env(vars: impl Iterator<Item = (OsString, OsString)>, cwd: &Path) -> Vec<OsString> {
    let mut env: Vec<OsString> = vars
        .filter(|(k, _)| {
            !HOST_ONLY_ENV.iter().any(|h| k.as_bytes() == h.as_bytes())
                && k.as_bytes() != SPEC_ENV.as_bytes()
        })
        .map(|(k, v)| {
            let mut e = k;
            e.push("=");
            e.push(v);
            e
        })
        .collect();
    let mut pwd = OsString::from("PWD=");
    pwd.push(cwd);
    env.push(pwd);
    env
}

/// Sets `key` in a `KEY=value` list, replacing any earlier value.
fn set_env(env: &mut Vec<OsString>, key: &str, value: &std::ffi::OsStr) {
    env.retain(|e| {
        let b = e.as_bytes();
        !(b.len() > key.len() && b.starts_with(key.as_bytes()) && b[key.len()] == b'=')
    });
    let mut e = OsString::from(key);
    e.push("=");
    e.push(value);
    env.push(e);
}

fn current_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn current_groups() -> Vec<u32> {
    // SAFETY: the first call asks for the count; the second fills a buffer
    // of that size.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n <= 0 {
            return Vec::new();
        }
        let mut groups = vec![0; usize::try_from(n).unwrap_or(0)];
        let n = libc::getgroups(n, groups.as_mut_ptr());
        groups.truncate(usize::try_from(n).unwrap_or(0));
        groups
    }
}

fn current_umask() -> u32 {
    // SAFETY: umask only swaps the mask; it is put back at once. Called
    // before any thread exists.
    unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask
    }
}

/// The spec in a private directory of its own, removed when Ferry is done.
struct SpecFile {
    dir: PathBuf,
    path: PathBuf,
}

impl SpecFile {
    fn write(spec: &RunSpec) -> Result<Self> {
        let base = std::env::temp_dir();
        let mut last_err = None;
        for attempt in 0..16u32 {
            let dir = base.join(format!("ferry-run-{}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let file = SpecFile {
                        path: dir.join("spec"),
                        dir,
                    };
                    std::fs::write(&file.path, spec.encode())
                        .with_context(|| format!("cannot write {}", file.path.display()))?;
                    return Ok(file);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
            .with_context(|| format!("cannot create a directory in {}", base.display()))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The guest's kernel console: kept (the last [`CONSOLE_TAIL`] bytes) to
/// explain a failed boot, and shown on stderr at `--log-level info` and up.
pub struct ConsoleTail {
    tail: std::collections::VecDeque<u8>,
    echo: bool,
}

impl ConsoleTail {
    fn new(echo: bool) -> Self {
        ConsoleTail {
            tail: std::collections::VecDeque::new(),
            echo,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.echo {
            let _ = std::io::stderr().write_all(bytes);
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(CONSOLE_TAIL);
        self.tail.drain(..excess);
    }

    fn text(&self) -> String {
        let bytes: Vec<u8> = self.tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }
}

struct SharedConsole(Arc<Mutex<ConsoleTail>>);

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_directories_share_once() {
        let dirs = outermost(vec![
            "/a/b".into(),
            "/a".into(),
            "/ab".into(),
            "/a".into(),
            "/c/d".into(),
        ]);
        assert_eq!(dirs, [PathBuf::from("/a"), "/ab".into(), "/c/d".into()]);
    }

    #[test]
    fn host_session_variables_stay_behind() {
        let vars = [
            ("PATH", "/bin"),
            ("DISPLAY", ":0"),
            ("PWD", "/old"),
            ("HOME", "/h"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = guest_env(vars.into_iter(), Path::new("/work"));
        assert_eq!(env, ["PATH=/bin", "HOME=/h", "PWD=/work"]);
    }

    #[test]
    fn shares_cover_cwd_rw_and_extra() {
        let tmp = std::env::temp_dir().join(format!("ferry-plan-{}", std::process::id()));
        let (a, b) = (tmp.join("a"), tmp.join("a/b"));
        std::fs::create_dir_all(&b).unwrap();
        let rw = |p: &Path| RwArg {
            host: p.to_path_buf(),
            guest: None,
        };
        let (shares, mounts) = plan_shares(&b, &[rw(&a)], &[]).unwrap();
        assert_eq!(shares.len(), 2);
        assert!(shares[0].readonly && shares[0].path == Path::new("/"));
        assert!(!shares[1].readonly);
        assert_eq!(mounts.len(), 1, "cwd lies inside --rw: one share");
        assert_eq!(mounts[0].path, a.canonicalize().unwrap());
        assert!(plan_shares(&b, &[rw(&tmp.join("missing"))], &[]).is_err());
        let file = tmp.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(plan_shares(&b, &[rw(&file)], &[]).is_err());
        // `--rw /` makes the root itself writable.
        let (shares, mounts) = plan_shares(&b, &[rw(Path::new("/"))], &[]).unwrap();
        assert!(!shares[0].readonly && mounts.is_empty());
        // HOST:GUEST: its own share, mounted at GUEST, even inside another.
        let moved = RwArg {
            host: a.clone(),
            guest: Some("/srv/data".into()),
        };
        let (shares, mounts) = plan_shares(&b, &[moved], &[]).unwrap();
        assert_eq!(shares.len(), 3);
        assert_eq!(mounts[0].path, Path::new("/srv/data"));
        assert_eq!(shares[2].path, a.canonicalize().unwrap());
        for bad in ["relative", "/", "/srv/../etc"] {
            let r = RwArg {
                host: a.clone(),
                guest: Some(bad.into()),
            };
            assert!(plan_shares(&b, &[r], &[]).is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(tmp);
    }

    #[test]
    fn kernel_words_refuse_white_space() {
        assert!(cmdline_word(Path::new("/usr/bin/ferry")).is_ok());
        assert!(cmdline_word(Path::new("/my dir/ferry")).is_err());
        assert!(cmdline_word(Path::new("")).is_err());
    }

    #[test]
    fn set_env_replaces_only_that_key() {
        let mut env: Vec<OsString> = ["HOME=/home/me", "HOMEDIR=x", "USER=me"]
            .iter()
            .map(OsString::from)
            .collect();
        set_env(&mut env, "HOME", std::ffi::OsStr::new("/root"));
        assert_eq!(
            env,
            ["HOMEDIR=x", "USER=me", "HOME=/root"].map(OsString::from)
        );
    }

    #[test]
    fn mount_points_need_a_place_on_the_read_only_root() {
        let at = |p: &str| GuestMount {
            tag: "t".into(),
            path: p.into(),
            options: String::new(),
        };
        let missing = "/no-such-dir-for-ferry/data";
        assert!(
            check_mount_points(&[at("/etc")], &[]).is_ok(),
            "exists on the host"
        );
        assert!(check_mount_points(&[at(missing)], &[]).is_err());
        assert!(
            check_mount_points(&[at("/tmp/new/data")], &[]).is_ok(),
            "guest tmpfs"
        );
        assert!(
            check_mount_points(&[at(missing)], &["/no-such-dir-for-ferry".into()]).is_ok(),
            "inside an overlay"
        );
        assert!(
            check_mount_points(&[at("/no-such-dir-for-ferry"), at(missing)], &[]).is_err(),
            "the first has no place either"
        );
        assert!(check_mount_points(&[at("/etc"), at("/etc/ferry-new")], &[]).is_ok());
        assert!(
            check_mount_points(&[at("/etc/hostname")], &[]).is_err(),
            "a file"
        );
    }
}
