//! Where `ferry run` finds a guest kernel when `--kernel` is not given.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The first of: `$FERRY_KERNEL`; `target/guest/bzImage` beside a ferry
/// built in this repository (`target/<profile>/ferry`); `../share/ferry/
/// bzImage` beside an installed one; the newest kernel that
/// `resources/build-kernel.sh` cached (`$FERRY_CACHE`, else
/// `~/.cache/ferry`).
pub fn default_kernel() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let candidates = candidates(
        std::env::var_os("FERRY_KERNEL").map(PathBuf::from),
        exe.as_deref(),
        cache_dir().as_deref(),
    );
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
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
