//! The user-mode network backend: passt (the Debian package `passt`), the
//! backend Podman and libkrun use, started as a child process. Ferry hands
//! it one end of a socket pair (`--fd`), so there is no socket path to
//! race for or clean up; passt serves the guest DHCP, DNS forwarding and
//! NAT to the host's sockets, with no privilege on the host. It ends with
//! Ferry: its parent-death signal is SIGKILL, and Ferry's end of the pair
//! closing ends its connection.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Printed through anyhow's chain, so a message leaves its source out.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error(
        "--net user needs passt, which is not on PATH (Debian and Ubuntu: apt-get install \
         passt; Fedora: dnf install passt)"
    )]
    Missing,
    #[error("cannot make the socket pair for passt")]
    Socket(#[source] std::io::Error),
    #[error("cannot start {}", path.display())]
    Start {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `passt` in `PATH`.
fn find_on_path(path: Option<std::ffi::OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .map(|dir| dir.join("passt"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts passt on one end of a new socket pair and returns the other
/// end, for the network device. `forwards` are passt's own port options
/// (`-t 8080:80`, `-u ...`). Nothing waits for passt: it dies with Ferry
/// (parent-death signal), and if it dies first the device sees its end
/// close and the guest's network goes down.
pub fn start(forwards: &[String]) -> Result<UnixStream, PasstError> {
    let path = find_on_path(std::env::var_os("PATH")).ok_or(PasstError::Missing)?;
    let (ours, theirs) = UnixStream::pair().map_err(PasstError::Socket)?;
    let fd = theirs.as_raw_fd();
    let mut command = Command::new(&path);
    command
        .args(["--foreground", "--quiet", "--fd"])
        .arg(fd.to_string())
        .args(forwards)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: fcntl and prctl are async-signal-safe; `fd` stays open in
    // the parent until spawn returns.
    unsafe {
        command.pre_exec(move || {
            // The pair is made close-on-exec; passt's end must cross.
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child: Child = command.spawn().map_err(|source| PasstError::Start {
        path: path.clone(),
        source,
    })?;
    log::info!(
        "network: passt (pid {}) from {}",
        child.id(),
        path.display()
    );
    drop(theirs);
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_is_found_only_where_path_says() {
        let dir = std::env::temp_dir().join(format!("ferry-passt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(find_on_path(Some(dir.clone().into_os_string())), None);
        let fake = dir.join("passt");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        assert_eq!(
            find_on_path(Some(dir.clone().into_os_string())),
            None,
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_on_path(Some(dir.clone().into_os_string())), Some(fake));
        assert_eq!(find_on_path(None), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
