//! The socket and interface-ioctl helpers both sides of networking use:
//! the host's tap (`tap.rs`) and the guest init's card set-up
//! (`run/guest_net.rs`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The longest interface name (IFNAMSIZ less its NUL).
pub const MAX_NAME: usize = libc::IFNAMSIZ - 1;

/// A close-on-exec socket, owned.
pub fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned right away.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming interface `name`, cut to [`MAX_NAME`] bytes so its
/// last byte stays NUL.
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().take(MAX_NAME).zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    req
}

/// The size of `T` as socket calls take it.
pub const fn socklen<T>() -> libc::socklen_t {
    let n = size_of::<T>();
    assert!(n <= 1 << 16);
    #[allow(clippy::cast_possible_truncation)] // checked just above
    let len = n as libc::socklen_t;
    len
}

/// An address family as socket addresses hold it (checked when compiling).
pub const fn family(af: libc::c_int) -> libc::sa_family_t {
    assert!(af >= 0 && af <= 0xffff);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked just above
    let f = af as libc::sa_family_t;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_cut_to_fit_ifreq() {
        let req = ifreq("a-name-longer-than-ifnamsiz");
        assert_eq!(req.ifr_name[libc::IFNAMSIZ - 1], 0);
        assert_eq!(req.ifr_name[0], b'a'.cast_signed());
    }
}
