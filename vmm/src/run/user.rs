//! `ferry run --user USER`: whom the command runs as in the guest. The
//! guest's root is the host's `/`, so the host's passwd and group databases
//! are the guest's too, and the user is looked up here, before boot.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The guest user a `--user` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: OsString,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {0}: no such user in this host's passwd database (a name or a numeric uid)")]
    Unknown(String),
    #[error("--user {0}: a name must not contain a NUL byte")]
    Nul(String),
    #[error("--user {name}: cannot read the passwd database")]
    Lookup {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Looks `spec` up: a user name, or a numeric uid. A uid with no passwd
/// entry is still accepted (as `docker run --user` does): its gid is the
/// uid, it has no supplementary groups and its home is `/`.
pub fn resolve(spec: &str) -> Result<GuestUser, UserError> {
    let by_uid = spec.parse::<u32>().ok();
    let found = match by_uid {
        Some(uid) => passwd_entry(spec, Lookup::Uid(uid))?,
        None => {
            let name = CString::new(spec).map_err(|_| UserError::Nul(spec.to_string()))?;
            passwd_entry(spec, Lookup::Name(&name))?
        }
    };
    match (found, by_uid) {
        (Some(user), _) => Ok(user),
        (None, Some(uid)) => Ok(GuestUser {
            uid,
            gid: uid,
            groups: Vec::new(),
            name: spec.into(),
            home: PathBuf::from("/"),
        }),
        (None, None) => Err(UserError::Unknown(spec.to_string())),
    }
}

enum Lookup<'a> {
    Uid(u32),
    Name(&'a CStr),
}

fn passwd_entry(spec: &str, key: Lookup<'_>) -> Result<Option<GuestUser>, UserError> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data; zeroed is a valid value to fill.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and buf's length is
        // passed with it; the entry's strings point into buf.
        let rc = unsafe {
            match key {
                Lookup::Uid(uid) => libc::getpwuid_r(
                    uid,
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
                Lookup::Name(name) => libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
            }
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(UserError::Lookup {
                name: spec.to_string(),
                source: io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name and pw_dir are NUL-terminated strings
        // in buf, which outlives these borrows.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(pwd.pw_name).to_bytes().to_vec(),
                CStr::from_ptr(pwd.pw_dir).to_bytes().to_vec(),
            )
        };
        let groups = group_list(&name, pwd.pw_gid);
        return Ok(Some(GuestUser {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            groups,
            name: OsString::from_vec(name),
            home: PathBuf::from(OsString::from_vec(home)),
        }));
    }
}

/// The user's groups from the group database, its primary group first.
fn group_list(name: &[u8], gid: u32) -> Vec<u32> {
    let Ok(cname) = CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; usize::try_from(n).unwrap_or(64)];
        let mut count = n;
        // SAFETY: groups holds `count` entries; getgrouplist writes at
        // most that many and sets count to the number it has.
        let rc =
            unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            return groups;
        }
        if count <= n || n >= 65536 {
            return vec![gid];
        }
        n = count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_by_name_and_by_uid() {
        let by_name = resolve("root").unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert_eq!(by_name.home, PathBuf::from("/root"));
        assert!(by_name.groups.contains(&0));
        assert_eq!(resolve("0").unwrap(), by_name);
    }

    #[test]
    fn an_unknown_name_is_refused_and_a_bare_uid_is_not() {
        assert!(matches!(
            resolve("no-such-user-ferry"),
            Err(UserError::Unknown(_))
        ));
        let bare = resolve("4242").unwrap();
        assert_eq!(
            (bare.uid, bare.gid, bare.home),
            (4242, 4242, PathBuf::from("/"))
        );
        assert!(matches!(resolve("a\0b"), Err(UserError::Nul(_))));
    }
}
