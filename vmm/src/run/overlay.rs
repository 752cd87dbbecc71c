//! `ferry run --overlay PATH`: throwaway writes over the read-only host.
//! The guest init mounts an overlayfs at PATH whose lower layer is the
//! host's directory (through the read-only root share) and whose upper
//! layer lies in a tmpfs in guest memory, so the command can write there
//! and nothing reaches the host; it is all gone when the VM ends.

use std::path::{Path, PathBuf};

/// Where tools write that should work without touching the host: package
/// managers and installers (`/etc`, `/usr`, `/opt`, `/var`), programs'
/// dotfiles, caches and logs (`/home`, `/root`, `/var`), services' data
/// (`/srv`). virtme-ng's set plus `/root`, the HOME of `--user root`. A
/// default that does not exist on the host is left out.
pub const DEFAULT_OVERLAYS: [&str; 7] = ["/etc", "/home", "/opt", "/root", "/srv", "/usr", "/var"];

/// Paths that are not the host's files at all; with the guest's tmpfs
/// mounts (`super::GUEST_TMPFS`), where an overlay would hide what the
/// guest has of its own.
const KERNEL_DIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverlayError {
    #[error("--overlay {0}: no such directory on this host")]
    Missing(PathBuf),
    #[error("--overlay {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "--overlay /: the root itself cannot be overlaid; use --rw / or overlay directories in it"
    )]
    Root,
    #[error("--overlay {0}: the guest has a file system of its own there")]
    GuestOwn(PathBuf),
    #[error(
        "--overlay {0}: a path with ',', ':' or '\\' cannot be given to overlayfs; overlay a \
         directory above it"
    )]
    Unquotable(PathBuf),
}

/// The directories to overlay, outermost first, each canonical. `explicit`
/// are the user's `--overlay` paths (each must be a directory), and the
/// defaults join them unless `no_defaults`. An overlay equal to or inside
/// a read-write share (`rw_dirs`, canonical) is dropped: writes there are
/// meant for the host. One inside another is dropped too (the outer one
/// already covers it). With the root read-write there are none.
pub fn plan(
    explicit: &[PathBuf],
    no_defaults: bool,
    rw_dirs: &[PathBuf],
    root_writable: bool,
) -> Result<Vec<PathBuf>, OverlayError> {
    let guest_own: Vec<&str> = KERNEL_DIRS
        .iter()
        .chain(super::GUEST_TMPFS.iter())
        .copied()
        .collect();
    plan_with(explicit, no_defaults, rw_dirs, root_writable, &guest_own)
}

/// [`plan`] with the guest's own paths given (tests work under /tmp).
fn plan_with(
    explicit: &[PathBuf],
    no_defaults: bool,
    rw_dirs: &[PathBuf],
    root_writable: bool,
    guest_own: &[&str],
) -> Result<Vec<PathBuf>, OverlayError> {
    let mut dirs = Vec::new();
    for p in explicit {
        let dir = p
            .canonicalize()
            .map_err(|_| OverlayError::Missing(p.clone()))?;
        if !dir.is_dir() {
            return Err(OverlayError::NotADirectory(p.clone()));
        }
        if dir == Path::new("/") {
            return Err(OverlayError::Root);
        }
        if guest_own.iter().any(|g| dir.starts_with(g)) {
            return Err(OverlayError::GuestOwn(p.clone()));
        }
        dirs.push(dir);
    }
    if !no_defaults {
        dirs.extend(
            DEFAULT_OVERLAYS
                .iter()
                .filter_map(|d| Path::new(d).canonicalize().ok())
                .filter(|d| d.is_dir() && d != Path::new("/")),
        );
    }
    if root_writable {
        return Ok(Vec::new());
    }
    for d in &dirs {
        if d.to_str().is_none_or(|s| s.contains([',', ':', '\\'])) {
            return Err(OverlayError::Unquotable(d.clone()));
        }
    }
    dirs.retain(|d| !rw_dirs.iter().any(|rw| d.starts_with(rw)));
    let mut kept = super::outermost(dirs);
    kept.sort_by_key(|d| d.components().count());
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_paths_must_be_directories_of_the_host() {
        let tmp = std::env::temp_dir().join(format!("ferry-overlay-{}", std::process::id()));
        // The guest's own paths, less /tmp (where this test works).
        let plan = |e: &[PathBuf], n, rw: &[PathBuf], r| plan_with(e, n, rw, r, &["/proc", "/sys"]);
        let dir = tmp.join("d");
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        std::fs::write(tmp.join("f"), b"").unwrap();
        let got = plan(&[dir.join("inner"), dir.clone()], true, &[], false).unwrap();
        assert_eq!(got, vec![dir.canonicalize().unwrap()], "inner one dropped");
        assert_eq!(
            plan(&[tmp.join("missing")], true, &[], false),
            Err(OverlayError::Missing(tmp.join("missing")))
        );
        assert_eq!(
            plan(&[tmp.join("f")], true, &[], false),
            Err(OverlayError::NotADirectory(tmp.join("f")))
        );
        assert_eq!(
            plan(&["/".into()], true, &[], false),
            Err(OverlayError::Root)
        );
        assert_eq!(
            plan(&["/proc".into()], true, &[], false),
            Err(OverlayError::GuestOwn("/proc".into()))
        );
        let odd = tmp.join("a,b");
        std::fs::create_dir_all(&odd).unwrap();
        assert!(matches!(
            plan(std::slice::from_ref(&odd), true, &[], false),
            Err(OverlayError::Unquotable(_))
        ));
        // Inside a read-write share: writes there are for the host.
        let canon = dir.canonicalize().unwrap();
        assert!(plan(&[dir.join("inner")], true, &[canon], false)
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(tmp);
    }

    #[test]
    fn defaults_are_existing_directories_and_go_with_a_writable_root() {
        let got = plan(&[], false, &[], false).unwrap();
        assert!(got.iter().all(|d| d.is_dir() && d.is_absolute()));
        assert!(got.contains(&Path::new("/etc").canonicalize().unwrap()));
        assert!(plan(&[], true, &[], false).unwrap().is_empty());
        assert!(plan(&[], false, &[], true).unwrap().is_empty());
        // Outermost first.
        let depths: Vec<usize> = got.iter().map(|d| d.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]));
    }
}
