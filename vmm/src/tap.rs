//! `--net tap=NAME`: the card's frames go to a tap device the user
//! brought, for hosts where the guest belongs on a bridge or a routed
//! network rather than behind passt's NAT. Ferry only attaches: the tap's
//! addresses, bridge and DHCP server are the host's business. A tap made
//! for the user (`ip tuntap add NAME mode tap user USER`) needs no
//! privilege; root may also name one that does not exist yet, which the
//! kernel then makes and removes with Ferry.
//!
//! Opened without IFF_VNET_HDR: the device offers no offloads (see
//! `ferry_devices::virtio::net`), so frames cross as they are.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use ferry_devices::virtio::net::{Link, MAX_FRAME};

use crate::netif::{ifreq, socket};

/// Printed through anyhow's chain, so a message leaves its source out.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "--net tap: cannot open /dev/net/tun (the tun module makes it, modprobe tun; it must be \
         read-write for your user, as udev's 0666)"
    )]
    NoTun(#[source] io::Error),
    #[error(
        "--net tap={0}: not allowed to attach to it (make it for your user: \
         ip tuntap add {0} mode tap user $USER)"
    )]
    NotPermitted(String),
    #[error("--net tap={0}: busy (another program has it open)")]
    Busy(String),
    #[error("--net tap={name}: cannot attach")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The MTU of interface `name`; the guest is offered the same.
fn mtu(name: &str) -> io::Result<u16> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut req = ifreq(name);
    // SAFETY: the ioctl writes the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU set the union's mtu member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    // A frame is at most MAX_FRAME with its 14-byte header.
    let largest = u16::try_from(MAX_FRAME - 14).unwrap_or(u16::MAX);
    Ok(u16::try_from(mtu).unwrap_or(largest).min(largest))
}

/// Attaches to tap `name` (checked to fit IFNAMSIZ when parsed).
pub fn open(name: &str) -> Result<Link, TapError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(TapError::NoTun)?;
    let existed = std::path::Path::new("/sys/class/net").join(name).exists();
    let mut req = ifreq(name);
    let flags = libc::IFF_TAP | libc::IFF_NO_PI;
    req.ifr_ifru.ifru_flags = libc::c_short::try_from(flags).unwrap_or_default();
    // SAFETY: TUNSETIFF reads and writes back the ifreq we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => TapError::NotPermitted(name.to_string()),
            Some(libc::EBUSY) => TapError::Busy(name.to_string()),
            _ => TapError::Attach {
                name: name.to_string(),
                source: e,
            },
        });
    }
    let mtu = mtu(name).map_err(|source| TapError::Attach {
        name: name.to_string(),
        source,
    })?;
    if existed {
        log::info!("network: tap {name}, MTU {mtu}");
    } else {
        log::warn!(
            "network: tap {name} did not exist; the kernel made it, and removes it with Ferry"
        );
    }
    Ok(Link::Tap { file, mtu })
}
