//! What `ferry run` asks the guest init to do, as a file the host writes and
//! the guest reads through the read-only root share: NUL-terminated
//! `key=value` records, so any argument, variable or path (none of which
//! can hold a NUL) passes unchanged.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// A virtio-fs share the guest init mounts at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    pub tag: String,
    pub path: PathBuf,
    /// Mount data, such as `dax`; empty for none.
    pub options: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSpec {
    pub argv: Vec<OsString>,
    /// `NAME=value` entries.
    pub env: Vec<OsString>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    /// In the order to mount them: parents before what lies inside.
    pub mounts: Vec<GuestMount>,
    /// Directories to overlay with a tmpfs upper layer, outermost first
    /// (mounted before the shares, so a share inside one lands on top).
    pub overlays: Vec<PathBuf>,
    /// A pty for the command, of (rows, columns).
    pub tty: Option<(u16, u16)>,
    /// `--net`: init configures the card from DHCP before the command.
    pub network: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("record {0} has no '='")]
    NoKey(usize),
    #[error("record {0}: unknown key '{1}'")]
    UnknownKey(usize, String),
    #[error("record {0}: '{1}' is not a number")]
    NotANumber(usize, String),
    #[error("record {0}: mount data before any mount_tag")]
    MountFieldFirst(usize),
    #[error("the file does not end with a complete record")]
    Truncated,
    #[error("no command to run")]
    NoCommand,
}

fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(0);
}

fn number(i: usize, v: &[u8]) -> Result<u32, SpecError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SpecError::NotANumber(i, String::from_utf8_lossy(v).into_owned()))
}

impl RunSpec {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for a in &self.argv {
            record(&mut out, "arg", a.as_bytes());
        }
        for e in &self.env {
            record(&mut out, "env", e.as_bytes());
        }
        record(&mut out, "cwd", self.cwd.as_os_str().as_bytes());
        record(&mut out, "uid", self.uid.to_string().as_bytes());
        record(&mut out, "gid", self.gid.to_string().as_bytes());
        for g in &self.groups {
            record(&mut out, "group", g.to_string().as_bytes());
        }
        record(&mut out, "umask", format!("{:o}", self.umask).as_bytes());
        for m in &self.mounts {
            record(&mut out, "mount_tag", m.tag.as_bytes());
            record(&mut out, "mount_path", m.path.as_os_str().as_bytes());
            record(&mut out, "mount_options", m.options.as_bytes());
        }
        for o in &self.overlays {
            record(&mut out, "overlay", o.as_os_str().as_bytes());
        }
        if let Some((rows, cols)) = self.tty {
            record(&mut out, "tty", format!("{rows}x{cols}").as_bytes());
        }
        if self.network {
            record(&mut out, "network", b"1");
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SpecError> {
        let mut spec = RunSpec::default();
        if bytes.last().is_some_and(|&b| b != 0) {
            return Err(SpecError::Truncated);
        }
        for (i, rec) in bytes.split(|&b| b == 0).enumerate() {
            if rec.is_empty() {
                continue;
            }
            let eq = rec
                .iter()
                .position(|&b| b == b'=')
                .ok_or(SpecError::NoKey(i))?;
            let (key, value) = (&rec[..eq], &rec[eq + 1..]);
            let text = || String::from_utf8_lossy(value).into_owned();
            let os = || OsString::from_vec(value.to_vec());
            match key {
                b"arg" => spec.argv.push(os()),
                b"env" => spec.env.push(os()),
                b"cwd" => spec.cwd = PathBuf::from(os()),
                b"uid" => spec.uid = number(i, value)?,
                b"gid" => spec.gid = number(i, value)?,
                b"group" => spec.groups.push(number(i, value)?),
                b"umask" => {
                    spec.umask = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| u32::from_str_radix(s, 8).ok())
                        .ok_or_else(|| SpecError::NotANumber(i, text()))?
                }
                b"overlay" => spec.overlays.push(PathBuf::from(os())),
                b"network" => spec.network = number(i, value)? != 0,
                b"tty" => {
                    spec.tty = Some(
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|s| s.split_once('x'))
                            .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
                            .ok_or_else(|| SpecError::NotANumber(i, text()))?,
                    )
                }
                b"mount_tag" => spec.mounts.push(GuestMount {
                    tag: text(),
                    path: PathBuf::new(),
                    options: String::new(),
                }),
                b"mount_path" | b"mount_options" => {
                    let m = spec
                        .mounts
                        .last_mut()
                        .ok_or(SpecError::MountFieldFirst(i))?;
                    if key == b"mount_path" {
                        m.path = PathBuf::from(os());
                    } else {
                        m.options = text();
                    }
                }
                _ => {
                    return Err(SpecError::UnknownKey(
                        i,
                        String::from_utf8_lossy(key).into_owned(),
                    ))
                }
            }
        }
        if spec.argv.is_empty() {
            return Err(SpecError::NoCommand);
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunSpec {
        RunSpec {
            argv: vec!["sh".into(), "-c".into(), "echo 'a=b' \"x\"\n".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "EMPTY=".into()],
            cwd: "/home/me/my project".into(),
            uid: 1000,
            gid: 100,
            groups: vec![100, 27],
            umask: 0o027,
            mounts: vec![GuestMount {
                tag: "ferry-rw0".into(),
                path: "/home/me/my project".into(),
                options: "dax".into(),
            }],
            overlays: vec!["/etc".into(), "/home/me/.cache".into()],
            tty: Some((33, 101)),
            network: true,
        }
    }

    #[test]
    fn round_trips_any_text() {
        let mut spec = sample();
        spec.argv.push(OsString::from_vec(vec![0xff, b'=', 0xfe]));
        assert_eq!(RunSpec::decode(&spec.encode()), Ok(spec));
    }

    #[test]
    fn bad_files_are_errors() {
        let good = sample().encode();
        assert_eq!(
            RunSpec::decode(&good[..good.len() - 1]),
            Err(SpecError::Truncated)
        );
        assert_eq!(RunSpec::decode(b"cwd=/\0"), Err(SpecError::NoCommand));
        assert!(matches!(
            RunSpec::decode(b"arg=x\0uid=me\0"),
            Err(SpecError::NotANumber(1, _))
        ));
        assert!(matches!(
            RunSpec::decode(b"arg=x\0what=1\0"),
            Err(SpecError::UnknownKey(1, _))
        ));
        assert_eq!(
            RunSpec::decode(b"arg=x\0mount_path=/a\0"),
            Err(SpecError::MountFieldFirst(1))
        );
        assert_eq!(RunSpec::decode(b"arg\0"), Err(SpecError::NoKey(0)));
    }
}
