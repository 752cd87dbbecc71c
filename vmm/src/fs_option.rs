//! `--fs tag=NAME,path=DIR[,queues=N][,readonly=on][,cache=auto|always|never]`.

use std::path::PathBuf;

use ferry_devices::virtio::fs::{CacheMode, FsShare, TAG_MAX_LEN};

/// Most request queues one share may have (each also takes an MSI-X vector
/// and a worker thread).
pub const MAX_QUEUES: u16 = 64;

fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

/// Parses one `--fs` value and checks the directory.
pub fn parse_fs(s: &str) -> Result<FsShare, String> {
    let mut tag = None;
    let mut path = None;
    let mut queues = 1u16;
    let mut readonly = false;
    let mut cache = CacheMode::Auto;
    for item in s.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}': expected key=value (tag=NAME,path=DIR,...)"))?;
        match key {
            "tag" => tag = Some(value.to_string()),
            "path" => path = Some(PathBuf::from(value)),
            "queues" => {
                queues = value
                    .parse()
                    .ok()
                    .filter(|q| (1..=MAX_QUEUES).contains(q))
                    .ok_or_else(|| format!("queues={value}: must be 1 to {MAX_QUEUES}"))?
            }
            "readonly" => readonly = parse_switch(key, value)?,
            "cache" => {
                cache = match value {
                    "auto" => CacheMode::Auto,
                    "always" => CacheMode::Always,
                    "never" | "none" => CacheMode::Never,
                    _ => return Err(format!("cache={value}: expected auto, always or never")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown key '{key}' (known: tag, path, queues, readonly, cache)"
                ))
            }
        }
    }
    let tag = tag.ok_or("missing tag=NAME")?;
    if tag.is_empty() || tag.len() > TAG_MAX_LEN {
        return Err(format!("tag '{tag}': must be 1 to {TAG_MAX_LEN} bytes"));
    }
    if tag.contains('\0') {
        return Err("tag must not contain NUL".into());
    }
    let path = path.ok_or("missing path=DIR")?;
    let meta = std::fs::metadata(&path).map_err(|e| format!("path {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Err(format!("path {}: not a directory", path.display()));
    }
    let path = path
        .canonicalize()
        .map_err(|e| format!("path {}: {e}", path.display()))?;
    Ok(FsShare {
        tag,
        path,
        request_queues: queues,
        readonly,
        cache,
    })
}

/// Rejects two shares with one tag: the guest could mount only one of them.
pub fn check_unique_tags(shares: &[FsShare]) -> Result<(), String> {
    for (i, a) in shares.iter().enumerate() {
        if shares[..i].iter().any(|b| b.tag == a.tag) {
            return Err(format!("--fs: tag '{}' is used twice", a.tag));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> String {
        std::env::temp_dir().display().to_string()
    }

    #[test]
    fn full_option() {
        let s = parse_fs(&format!(
            "tag=myfs,path={},queues=4,readonly=on,cache=never",
            tmp()
        ))
        .unwrap();
        assert_eq!(s.tag, "myfs");
        assert_eq!(s.request_queues, 4);
        assert!(s.readonly);
        assert_eq!(s.cache, CacheMode::Never);
        assert!(s.path.is_absolute());
    }

    #[test]
    fn defaults() {
        let s = parse_fs(&format!("tag=a,path={}", tmp())).unwrap();
        assert_eq!(
            (s.request_queues, s.readonly, s.cache),
            (1, false, CacheMode::Auto)
        );
    }

    #[test]
    fn errors() {
        let t = tmp();
        let cases = [
            (format!("path={t}"), "missing tag"),
            ("tag=a".to_string(), "missing path"),
            ("tag=a,path=/nonexistent/dir".to_string(), "No such file"),
            ("tag=a,path=/etc/hostname".to_string(), "not a directory"),
            (format!("tag=,path={t}"), "1 to 36"),
            (format!("tag={},path={t}", "x".repeat(37)), "1 to 36"),
            (format!("tag=a,path={t},colour=blue"), "unknown key"),
            (format!("tag=a,path={t},queues=0"), "queues=0"),
            (format!("tag=a,path={t},queues=x"), "queues=x"),
            (format!("tag=a,path={t},readonly=maybe"), "on or off"),
            (format!("tag=a,path={t},cache=lots"), "cache=lots"),
            (format!("tag=a,path={t},junk"), "key=value"),
        ];
        for (input, want) in cases {
            let err = parse_fs(&input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn duplicate_tags() {
        let a = parse_fs(&format!("tag=a,path={}", tmp())).unwrap();
        let b = parse_fs(&format!("tag=b,path={}", tmp())).unwrap();
        assert!(check_unique_tags(&[a.clone(), b]).is_ok());
        assert!(check_unique_tags(&[a.clone(), a])
            .unwrap_err()
            .contains("twice"));
    }
}
