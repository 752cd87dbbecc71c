//! Where `ferry run` finds a guest kernel when `--kernel` is not given.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The first of: `$FERRY_KERNEL`; `target/guest/bzImage` beside a ferry
/// built in this repository (`target/<profile>/ferry`); `../share/ferry/
/// bzImage` beside an installed one; the newest kernel that
/// `resources/build-kernel.sh` cached (`$FERRY_CACHE`, else
/// `~/.cache/ferry`); then the host's own kernels: the running one's image
/// in `/boot`, then the newest there (a distribution kernel, whose modules
/// Ferry brings in an initramfs). The first readable one is taken.
pub fn default_kernel() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let mut candidates = candidates(
        std::env::var_os("FERRY_KERNEL").map(PathBuf::from),
        exe.as_deref(),
        cache_dir().as_deref(),
    );
    if std::env::var_os("FERRY_KERNEL").is_none() {
        candidates.extend(host_kernels(Path::new("/boot"), &running_release()));
    }
    let readable = |p: &&PathBuf| p.is_file() && std::fs::File::open(p).is_ok();
    if let Some(found) = candidates.iter().find(readable) {
        log::info!("kernel: {}", found.display());
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no guest kernel found (looked at: {}); build it with resources/build-kernel.sh \
         or pass --kernel",
        looked.join(", ")
    )
}

fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("FERRY_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferry")))
}

fn candidates(env: Option<PathBuf>, exe: Option<&Path>, cache: Option<&Path>) -> Vec<PathBuf> {
    if let Some(k) = env {
        // Named explicitly: the only candidate, so a typo is an error.
        return vec![k];
    }
    let mut list = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        list.push(dir.join("../guest/bzImage"));
        list.push(dir.join("../share/ferry/bzImage"));
    }
    if let Some(cache) = cache {
        list.extend(newest_cached(cache));
    }
    list
}

fn running_release() -> String {
    // SAFETY: utsname is plain data that uname fills.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `vmlinuz-RELEASE` images in `boot`: the running kernel's first, then
/// the others newest version first.
fn host_kernels(boot: &Path, running: &str) -> Vec<PathBuf> {
    let mut releases: Vec<String> = std::fs::read_dir(boot)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .collect();
    releases.sort_by_key(|r| std::cmp::Reverse(version_key(r)));
    if let Some(at) = releases.iter().position(|r| r == running) {
        let r = releases.remove(at);
        releases.insert(0, r);
    }
    releases
        .into_iter()
        .map(|r| boot.join(format!("vmlinuz-{r}")))
        .collect()
}

/// A release's parts, numbers as numbers: 6.10 after 6.9.
fn version_key(release: &str) -> Vec<(u64, String)> {
    release
        .split(['.', '-', '+', '~'])
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_string()),
        })
        .collect()
}

/// `kernel-<hash>/bzImage` under the cache, newest first.
fn newest_cached(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kernel-"))
        .map(|e| e.path().join("bzImage"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_variable_wins_alone() {
        let list = candidates(Some("/k".into()), Some(Path::new("/x/ferry")), None);
        assert_eq!(list, [PathBuf::from("/k")]);
    }

    #[test]
    fn host_kernels_running_first_then_newest() {
        let boot = std::env::temp_dir().join(format!("ferry-boot-{}", std::process::id()));
        std::fs::create_dir_all(&boot).unwrap();
        for r in [
            "6.1.0-9-amd64",
            "6.1.0-10-amd64",
            "6.10.2-1-amd64",
            "5.10.0-30-amd64",
        ] {
            std::fs::write(boot.join(format!("vmlinuz-{r}")), b"k").unwrap();
        }
        std::fs::write(boot.join("config-6.1.0-10-amd64"), b"").unwrap();
        let names: Vec<String> = host_kernels(&boot, "6.1.0-9-amd64")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "vmlinuz-6.1.0-9-amd64",
                "vmlinuz-6.10.2-1-amd64",
                "vmlinuz-6.1.0-10-amd64",
                "vmlinuz-5.10.0-30-amd64"
            ]
        );
        let _ = std::fs::remove_dir_all(boot);
    }

    #[test]
    fn looks_beside_the_binary_then_in_the_cache() {
        let cache = std::env::temp_dir().join(format!("ferry-kcache-{}", std::process::id()));
        let k = cache.join("kernel-abc");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("bzImage"), b"x").unwrap();
        let list = candidates(None, Some(Path::new("/r/target/debug/ferry")), Some(&cache));
        assert_eq!(
            list,
            [
                PathBuf::from("/r/target/debug/../guest/bzImage"),
                "/r/target/debug/../share/ferry/bzImage".into(),
                k.join("bzImage"),
            ]
        );
        let _ = std::fs::remove_dir_all(cache);
    }
}
