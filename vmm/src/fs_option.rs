//! `--fs tag=NAME,path=DIR[,queues=N][,readonly=on][,cache=auto|always|never]
//! [,dax=on][,cache-size=SIZE][,dev-suid=on][,acl=on|off][,uid-map=RULE]...
//! [,gid-map=RULE]...`.

use std::path::PathBuf;

use ferry_devices::virtio::fs::{
    CacheMode, FsShare, IdMap, IdMapping, IdRuleError, DAX_WINDOW_MIN, TAG_MAX_LEN,
};

use crate::size::{parse_size, SizeError};

/// Most request queues one share may have (each also takes an MSI-X vector
/// and a worker thread).
pub const MAX_QUEUES: u16 = 64;
/// The DAX window with `dax=on` alone. The guest spends 1/64 of the window
/// on page structs (16 MiB of RAM for 1 GiB).
pub const DAX_WINDOW_DEFAULT: u64 = 1 << 30;
pub const DAX_WINDOW_MAX: u64 = 64 << 30;

/// The smallest window a guest can use, measured with
/// `bench/dax-window.sh` (`ferry-dax fuzz`: random read/write/mmap/
/// truncate/fsync checked against a model, files larger than the window,
/// guests nested in the emulated KVM host). Linux hands the window out in
/// 2 MiB ranges and, when none is free, takes one back from a file
/// (reclaim). With one range (2M) one process failed reads and writes
/// with EBUSY in every run (after 9 to 4,765 operations on an 8 MiB
/// file): the guest kernel cannot invalidate the range it must take back.
/// With two (4M) one process passed every run on files of 8 MiB (4 runs
/// of 5,000 operations) and 64 MiB (2 runs of 3,000); on 32 MiB files a
/// read or write got a transient EBUSY in 4 of 10 runs of 4,000 (a retry
/// went through). With 2M a fault also blocked for good. Several processes
/// at once need more: four on 16 MiB files each failed with EBUSY at 4M
/// and 8M in every run, at 16M in one of three, and one 4M run left the
/// guest's tasks blocked with Ferry idle (the reclaim waits for a range
/// no one frees). No window size rules that out when the files in use
/// exceed it; size the window to them (the default is 1G).
pub const DAX_WINDOW_SMALLEST: u64 = 4 << 20;

/// Set (to anything), windows below [`DAX_WINDOW_SMALLEST`] are accepted:
/// for measuring where small windows fail (`bench/dax-window.sh`), not for
/// use.
pub const SMALL_WINDOWS_ENV: &str = "FERRY_DAX_SMALL_WINDOWS";

/// Why an `--fs` value (or the set of them) was refused. Each message
/// names the option as the user wrote it.
#[derive(Debug, thiserror::Error)]
pub enum FsOptionError {
    #[error("'{0}': expected key=value (tag=NAME,path=DIR,...)")]
    NotKeyValue(String),
    #[error(
        "unknown key '{0}' (known: tag, path, queues, readonly, cache, dax, cache-size, \
         dev-suid, acl, uid-map, gid-map, guest)"
    )]
    UnknownKey(String),
    #[error("queues={0}: must be 1 to {MAX_QUEUES}")]
    Queues(String),
    #[error("{key}={value}: expected on or off")]
    NotASwitch { key: String, value: String },
    #[error("cache={0}: expected auto, always or never")]
    Cache(String),
    #[error("cache-size={value}: {source}")]
    CacheSize {
        value: String,
        #[source]
        source: SizeError,
    },
    #[error(
        "cache-size={0}: must be a power of two from {min}M to {max}G",
        min = DAX_WINDOW_SMALLEST >> 20,
        max = DAX_WINDOW_MAX >> 30
    )]
    CacheSizeRange(String),
    #[error(
        "cache-size={0}: at least {min}M: the guest splits the window into 2 MiB ranges, and \
         with one its reclaim fails reads and writes with EBUSY",
        min = DAX_WINDOW_SMALLEST >> 20
    )]
    CacheSizeTooSmall(String),
    #[error("{key}={source}")]
    IdMap {
        key: &'static str,
        #[source]
        source: IdRuleError,
    },
    #[error("missing tag=NAME")]
    MissingTag,
    #[error("tag '{0}': must be 1 to {TAG_MAX_LEN} bytes")]
    TagLength(String),
    #[error("tag must not contain NUL")]
    TagNul,
    #[error("missing path=DIR")]
    MissingPath,
    #[error("path {}: {source}", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("--fs: tag '{0}' is used twice")]
    DuplicateTag(String),
    #[error("guest={0}: must be an absolute path")]
    GuestPathRelative(String),
}

/// One `--fs` value: the share, and where `ferry run`'s guest mounts it
/// (`guest=/path`; by default the host path).
#[derive(Debug, Clone)]
pub struct FsArg {
    pub share: FsShare,
    pub guest: Option<PathBuf>,
}

/// Parses one `--fs` value, `guest=` included, and checks the directory.
pub fn parse_fs_arg(s: &str) -> Result<FsArg, FsOptionError> {
    let mut guest = None;
    let mut rest = Vec::new();
    for item in s.split(',') {
        match item.strip_prefix("guest=") {
            Some(p) if p.starts_with('/') => guest = Some(PathBuf::from(p)),
            Some(p) => return Err(FsOptionError::GuestPathRelative(p.to_string())),
            None => rest.push(item),
        }
    }
    Ok(FsArg {
        share: parse_fs(&rest.join(","))?,
        guest,
    })
}

fn parse_cache_size(value: &str) -> Result<u64, FsOptionError> {
    let size = parse_size(value).map_err(|source| FsOptionError::CacheSize {
        value: value.to_string(),
        source,
    })?;
    if !size.is_power_of_two() || !(DAX_WINDOW_MIN..=DAX_WINDOW_MAX).contains(&size) {
        return Err(FsOptionError::CacheSizeRange(value.to_string()));
    }
    if size < DAX_WINDOW_SMALLEST && std::env::var_os(SMALL_WINDOWS_ENV).is_none() {
        return Err(FsOptionError::CacheSizeTooSmall(value.to_string()));
    }
    Ok(size)
}

fn parse_switch(key: &str, value: &str) -> Result<bool, FsOptionError> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(FsOptionError::NotASwitch {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Parses one `--fs` value and checks the directory.
pub fn parse_fs(s: &str) -> Result<FsShare, FsOptionError> {
    let mut tag = None;
    let mut path = None;
    let mut queues = 1u16;
    let mut readonly = false;
    let mut cache = CacheMode::Auto;
    let mut dax = None;
    let mut dax_window = DAX_WINDOW_DEFAULT;
    let mut dev_suid = false;
    // On by default: a local ext4 or tmpfs has ACLs, and tools that set
    // them (setfacl, rsync -A, systemd-tmpfiles) fail without; the guest
    // reads each inode's ACL once and caches it.
    let mut posix_acl = true;
    let (mut uids, mut gids) = (None::<IdMap>, None::<IdMap>);
    for item in s.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| FsOptionError::NotKeyValue(item.to_string()))?;
        match key {
            "tag" => tag = Some(value.to_string()),
            "path" => path = Some(PathBuf::from(value)),
            "queues" => {
                queues = value
                    .parse()
                    .ok()
                    .filter(|q| (1..=MAX_QUEUES).contains(q))
                    .ok_or_else(|| FsOptionError::Queues(value.to_string()))?
            }
            "readonly" => readonly = parse_switch(key, value)?,
            "cache" => {
                cache = match value {
                    "auto" => CacheMode::Auto,
                    "always" => CacheMode::Always,
                    "never" | "none" => CacheMode::Never,
                    _ => return Err(FsOptionError::Cache(value.to_string())),
                }
            }
            "dax" => dax = Some(parse_switch(key, value)?),
            "cache-size" => {
                dax_window = parse_cache_size(value)?;
                dax = dax.or(Some(true));
            }
            "dev-suid" => dev_suid = parse_switch(key, value)?,
            "acl" => posix_acl = parse_switch(key, value)?,
            "uid-map" => uids
                .get_or_insert_with(IdMap::default)
                .push_rule(value)
                .map_err(|source| FsOptionError::IdMap {
                    key: "uid-map",
                    source,
                })?,
            "gid-map" => gids
                .get_or_insert_with(IdMap::default)
                .push_rule(value)
                .map_err(|source| FsOptionError::IdMap {
                    key: "gid-map",
                    source,
                })?,
            _ => return Err(FsOptionError::UnknownKey(key.to_string())),
        }
    }
    let tag = tag.ok_or(FsOptionError::MissingTag)?;
    if tag.is_empty() || tag.len() > TAG_MAX_LEN {
        return Err(FsOptionError::TagLength(tag));
    }
    if tag.contains('\0') {
        return Err(FsOptionError::TagNul);
    }
    let path = path.ok_or(FsOptionError::MissingPath)?;
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(source) => return Err(FsOptionError::Path { path, source }),
    };
    if !meta.is_dir() {
        return Err(FsOptionError::NotADirectory(path));
    }
    let path = match path.canonicalize() {
        Ok(p) => p,
        Err(source) => return Err(FsOptionError::Path { path, source }),
    };
    Ok(FsShare {
        tag,
        path,
        request_queues: queues,
        readonly,
        cache,
        dax_window: dax.unwrap_or(false).then_some(dax_window),
        dev_suid,
        posix_acl,
        ids: IdMapping {
            uids: uids.unwrap_or_else(|| default_ids(own_ids().0)),
            gids: gids.unwrap_or_else(|| default_ids(own_ids().1)),
        },
    })
}

/// Ferry's effective uid and gid.
pub fn own_ids() -> (u32, u32) {
    // SAFETY: no arguments, cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Without `uid-map`/`gid-map`: root Ferry shows host ids as they are and
/// acts as each guest user; an unprivileged one cannot, so guest root is
/// Ferry's own id and every other guest id is squashed to it.
fn default_ids(own: u32) -> IdMap {
    // Root (uid 0) may act as anyone, gids included; `own` is the uid or
    // the gid being defaulted.
    if own_ids().0 == 0 {
        IdMap::default()
    } else {
        IdMap::root_is(own)
    }
}

/// Rejects two shares with one tag: the guest could mount only one of them.
pub fn check_unique_tags(shares: &[FsShare]) -> Result<(), FsOptionError> {
    for (i, a) in shares.iter().enumerate() {
        if shares[..i].iter().any(|b| b.tag == a.tag) {
            return Err(FsOptionError::DuplicateTag(a.tag.clone()));
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
            (
                s.request_queues,
                s.readonly,
                s.cache,
                s.dev_suid,
                s.posix_acl
            ),
            (1, false, CacheMode::Auto, false, true)
        );
        assert!(
            parse_fs(&format!("tag=a,path={},dev-suid=on", tmp()))
                .unwrap()
                .dev_suid
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
            (format!("tag=a,path={t},dax=maybe"), "on or off"),
            (format!("tag=a,path={t},dev-suid=maybe"), "on or off"),
            (format!("tag=a,path={t},acl=maybe"), "on or off"),
            (format!("tag=a,path={t},uid-map=0:1"), "uid-map='0:1'"),
            (format!("tag=a,path={t},gid-map=x:1:2:3"), "unknown rule"),
            (format!("tag=a,path={t},cache-size=3M"), "power of two"),
            (format!("tag=a,path={t},cache-size=1M"), "power of two"),
            (format!("tag=a,path={t},cache-size=2M"), "at least 4M"),
            (format!("tag=a,path={t},cache-size=2M"), "EBUSY"),
            (format!("tag=a,path={t},cache-size=128G"), "power of two"),
            (format!("tag=a,path={t},cache-size=lots"), "cache-size=lots"),
        ];
        for (input, want) in cases {
            let err = parse_fs(&input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn dax_options() {
        let t = tmp();
        let window = |opts: &str| {
            parse_fs(&format!("tag=a,path={t}{opts}"))
                .unwrap()
                .dax_window
        };
        assert_eq!(window(""), None);
        assert_eq!(window(",dax=on"), Some(DAX_WINDOW_DEFAULT));
        assert_eq!(window(",cache-size=64M"), Some(64 << 20));
        assert_eq!(window(",cache-size=4M"), Some(4 << 20));
        assert_eq!(window(",dax=on,cache-size=2G"), Some(2 << 30));
        assert_eq!(window(",dax=off,cache-size=2G"), None);
    }

    #[test]
    fn id_maps() {
        let t = tmp();
        let s = parse_fs(&format!(
            "tag=a,path={t},uid-map=0:1000:1,uid-map=squash-guest:1:1000:99,gid-map=map:0:50:1"
        ))
        .unwrap();
        assert_eq!(
            (
                s.ids.uids.to_host(0),
                s.ids.uids.to_host(5),
                s.ids.uids.to_host(100)
            ),
            (1000, 1000, 100)
        );
        assert_eq!((s.ids.gids.to_host(0), s.ids.gids.to_guest(50)), (50, 0));
        let s = parse_fs(&format!("tag=a,path={t}")).unwrap();
        let own = own_ids();
        if own.0 == 0 {
            assert!(s.ids.is_identity());
        } else {
            assert_eq!(s.ids.uids, IdMap::root_is(own.0));
            assert_eq!(s.ids.gids, IdMap::root_is(own.1));
        }
    }

    #[test]
    fn duplicate_tags() {
        let a = parse_fs(&format!("tag=a,path={}", tmp())).unwrap();
        let b = parse_fs(&format!("tag=b,path={}", tmp())).unwrap();
        assert!(check_unique_tags(&[a.clone(), b]).is_ok());
        assert!(matches!(
            check_unique_tags(&[a.clone(), a]),
            Err(FsOptionError::DuplicateTag(t)) if t == "a"
        ));
    }
}
