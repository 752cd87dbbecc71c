//! The guest side of networking under `ferry run`: `lo` always, and with
//! `--net` the virtio-net card, configured from passt's DHCP server by
//! Ferry's init itself.
//!
//! Why init and not the kernel's `ip=dhcp`: a distribution kernel has
//! virtio_net as a module (loaded from Ferry's initramfs) and no IP_PNP, so
//! only init can do it for every kernel; one path is also one thing to test.
//! The lease is taken once and never renewed: passt's leases do not expire
//! and the VM is throwaway.
//!
//! A reply is read from a packet socket because passt may send it to the
//! offered address, which the card does not have yet; the kernel would drop
//! that before any UDP socket saw it.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::dhcp::{self, ClientMessage, Kind, Reply};
use crate::netif::{family, ifreq, socket, socklen};

/// How long a kernel module's card may take to show up.
const CARD_WAIT: Duration = Duration::from_secs(5);
/// Each DHCP exchange is retried with this wait, doubling; passt answers at
/// once, so a lost message is the only reason to wait at all.
const FIRST_WAIT: Duration = Duration::from_millis(500);
const ATTEMPTS: u32 = 4;

/// IFF_UP as the short of `ifr_flags` (it is bit 0).
const IFF_UP: libc::c_short = 1;
const _: () = assert!(libc::IFF_UP == 1);
const ETH_P_IP: u16 = 0x0800;

const ARPHRD_ETHER: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no network card appeared within {}s (is virtio_net in the kernel?)", CARD_WAIT.as_secs())]
    NoCard,
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "no DHCP {0:?} after {ATTEMPTS} tries: nothing on the card's network answers DHCP \
         (passt does at once; a tap's network needs a DHCP server)"
    )]
    NoReply(Kind),
    #[error("the DHCP server refused the offered address {0}")]
    Refused(Ipv4Addr),
    #[error("the DHCP offer has no {0}")]
    Incomplete(&'static str),
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Os { what, source }
}

/// The configuration a lease gave the card.
#[derive(Debug)]
pub struct Lease {
    pub card: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr_in(a: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: const { family(libc::AF_INET) },
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn as_sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = sockaddr_in(a, 0);
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // it as the family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets IFF_UP on `name`.
fn link_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name);
    // SAFETY: both ioctls read and write the ifreq we own.
    unsafe {
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= IFF_UP;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req))
    }
}

/// Brings `lo` up: tests commonly talk to 127.0.0.1.
pub fn loopback_up() -> io::Result<()> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    link_up(&sock, "lo")
}

fn sysfs(card: &str, what: &str) -> io::Result<String> {
    Ok(
        std::fs::read_to_string(format!("/sys/class/net/{card}/{what}"))?
            .trim()
            .to_string(),
    )
}

/// The first Ethernet card, waiting for a module's probe to make it.
fn find_card() -> Result<String, NetError> {
    let start = Instant::now();
    loop {
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            let mut cards: Vec<String> = dir
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lo" && sysfs(n, "type").is_ok_and(|t| t == ARPHRD_ETHER))
                .collect();
            cards.sort();
            if let Some(card) = cards.into_iter().next() {
                return Ok(card);
            }
        }
        if start.elapsed() > CARD_WAIT {
            return Err(NetError::NoCard);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The sockets of one exchange: DHCP out through UDP (the kernel frames
/// a broadcast from 0.0.0.0), replies in through the packet socket.
struct Client {
    card: String,
    mac: [u8; 6],
    udp: OwnedFd,
    packets: OwnedFd,
}

impl Client {
    fn open(card: &str) -> Result<Client, NetError> {
        let mac = sysfs(card, "address")
            .ok()
            .and_then(|s| parse_mac(&s))
            .ok_or_else(|| NetError::Os {
                what: format!("{card}: its MAC address"),
                source: io::ErrorKind::InvalidData.into(),
            })?;
        let index: libc::c_int = sysfs(card, "ifindex")
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| NetError::Os {
                what: format!("{card}: its index"),
                source: io::ErrorKind::InvalidData.into(),
            })?;
        let packets = socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            libc::c_int::from(ETH_P_IP.to_be()),
        )
        .map_err(os("a packet socket"))?;
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = const { family(libc::AF_PACKET) };
        ll.sll_protocol = ETH_P_IP.to_be();
        ll.sll_ifindex = index;
        // SAFETY: binds the socket we own to an address of the given size.
        check(unsafe {
            libc::bind(
                packets.as_raw_fd(),
                (&raw const ll).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        })
        .map_err(os("binding the packet socket"))?;

        let udp = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(os("a UDP socket"))?;
        let one: libc::c_int = 1;
        let name = CString::new(card).map_err(|_| NetError::NoCard)?;
        // SAFETY: setsockopt and bind with values of the sizes given.
        unsafe {
            check(libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BROADCAST,
                (&raw const one).cast(),
                socklen::<libc::c_int>(),
            ))
            .map_err(os("SO_BROADCAST"))?;
            check(libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                libc::socklen_t::try_from(name.as_bytes_with_nul().len()).unwrap_or(0),
            ))
            .map_err(os("SO_BINDTODEVICE"))?;
            let any = sockaddr_in(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT);
            check(libc::bind(
                udp.as_raw_fd(),
                (&raw const any).cast(),
                socklen::<libc::sockaddr_in>(),
            ))
            .map_err(os("binding the DHCP client port"))?;
        }
        Ok(Client {
            card: card.to_string(),
            mac,
            udp,
            packets,
        })
    }

    fn send(&self, m: &ClientMessage) -> io::Result<()> {
        let bytes = m.encode();
        let to = sockaddr_in(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
        // SAFETY: sends our buffer to an address of the given size.
        let n = unsafe {
            libc::sendto(
                self.udp.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const to).cast(),
                socklen::<libc::sockaddr_in>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The reply of `want` (or, to a REQUEST, the chosen server's NAK) to
    /// `m`, retrying as the server may not have seen the first.
    fn exchange(&self, m: &ClientMessage, want: Kind) -> Result<Reply, NetError> {
        let chosen = m.request.map(|(_, server)| server);
        let mut wait = FIRST_WAIT;
        for _ in 0..ATTEMPTS {
            self.send(m).map_err(os("sending a DHCP message"))?;
            let deadline = Instant::now() + wait;
            while let Some(reply) = self.receive(deadline)? {
                let nak = reply.kind == Some(Kind::Nak)
                    && chosen.is_some()
                    && (reply.server == chosen || reply.server.is_none());
                if reply.xid == m.xid && reply.mac == self.mac && (reply.kind == Some(want) || nak)
                {
                    return Ok(reply);
                }
            }
            wait *= 2;
        }
        Err(NetError::NoReply(want))
    }

    /// The next DHCP reply before `deadline`, `None` once it passes.
    fn receive(&self, deadline: Instant) -> Result<Option<Reply>, NetError> {
        let mut buf = [0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut pfd = libc::pollfd {
                fd: self.packets.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one pollfd we own.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(os("waiting for DHCP")(e));
            }
            if ready == 0 {
                continue;
            }
            // SAFETY: reads into our buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.packets.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return Err(os("reading DHCP")(io::Error::last_os_error()));
            };
            // The card sees all IPv4: anything but a DHCP reply is skipped.
            if let Some(reply) = buf
                .get(..n)
                .and_then(dhcp::client_payload)
                .and_then(Reply::parse)
            {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    fn lease(&self) -> Result<Lease, NetError> {
        let xid = {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.subsec_nanos() ^ std::process::id()
        };
        let discover = ClientMessage {
            xid,
            mac: self.mac,
            request: None,
        };
        let offer = self.exchange(&discover, Kind::Offer)?;
        let address = offer.address.ok_or(NetError::Incomplete("address"))?;
        let server = offer
            .server
            .or(offer.router)
            .ok_or(NetError::Incomplete("server identifier"))?;
        let request = ClientMessage {
            request: Some((address, server)),
            ..discover
        };
        let ack = self.exchange(&request, Kind::Ack)?;
        if ack.kind == Some(Kind::Nak) {
            return Err(NetError::Refused(address));
        }
        Ok(Lease {
            card: self.card.clone(),
            address: ack.address.unwrap_or(address),
            netmask: ack
                .netmask
                .or(offer.netmask)
                .unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
            router: ack.router.or(offer.router),
            dns: if ack.dns.is_empty() {
                offer.dns
            } else {
                ack.dns
            },
            domain: ack.domain.or(offer.domain),
        })
    }
}

/// Gives the card the lease's address, netmask and default route.
fn apply(lease: &Lease) -> Result<(), NetError> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(os("a socket"))?;
    let card = &lease.card;
    let mut req = ifreq(card);
    req.ifr_ifru.ifru_addr = as_sockaddr(lease.address);
    // SAFETY: the ioctls read the ifreq we own.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &mut req) })
        .map_err(os(format!("{card}: setting address {}", lease.address)))?;
    req.ifr_ifru.ifru_netmask = as_sockaddr(lease.netmask);
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &mut req) })
        .map_err(os(format!("{card}: setting netmask {}", lease.netmask)))?;
    let Some(router) = lease.router else {
        return Ok(());
    };
    let name = CString::new(card.as_str()).map_err(|_| NetError::NoCard)?;
    let route = |dst: Ipv4Addr, flags: libc::c_ushort| {
        // SAFETY: rtentry is plain data; all zeroes is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = as_sockaddr(dst);
        rt.rt_genmask = as_sockaddr(if flags & libc::RTF_HOST == 0 {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::BROADCAST
        });
        rt.rt_gateway = as_sockaddr(if flags & libc::RTF_GATEWAY == 0 {
            Ipv4Addr::UNSPECIFIED
        } else {
            router
        });
        rt.rt_flags = libc::RTF_UP | flags;
        rt.rt_dev = name.as_ptr().cast_mut();
        // SAFETY: reads the rtentry and the device name it points to, both
        // alive for the call.
        check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) })
    };
    let default = || route(Ipv4Addr::UNSPECIFIED, libc::RTF_GATEWAY);
    match default() {
        // A router outside the lease's subnet (passt copies the host's,
        // which may be so) is reachable on the link: say so, then again.
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => route(router, libc::RTF_HOST)
            .and_then(|()| default())
            .map_err(os(format!("{card}: a route to {router}"))),
        other => other.map_err(os(format!("{card}: a default route via {router}"))),
    }
}

/// With `--net`: the card up, its lease taken and applied (the name
/// servers are the caller's: see [`write_resolv_conf`]).
pub fn configure() -> Result<Lease, NetError> {
    let card = find_card()?;
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(os("a socket"))?;
    link_up(&sock, &card).map_err(os(format!("{card}: bringing it up")))?;
    let lease = Client::open(&card)?.lease()?;
    apply(&lease)?;
    Ok(lease)
}

/// The first line of the resolv.conf Ferry writes.
pub const RESOLV_CONF_HEAD: &str = "# ferry run: name servers from the DHCP lease";

/// The type of the file system that holds `path`: the deepest mount at or
/// above it in `mountinfo` (/proc/self/mountinfo's text), the last one
/// where several are stacked.
fn fs_type_at(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        let (Some(point), Some(fstype)) = (
            line.split(' ').nth(4),
            line.split(" - ").nth(1).and_then(|t| t.split(' ').next()),
        ) else {
            continue;
        };
        let point = Path::new(point);
        if path.starts_with(point) {
            let depth = point.components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, fstype));
            }
        }
    }
    best.map(|(_, t)| t.to_string())
}

/// Whether writes under `path` stay in the guest (its tmpfs mounts and
/// overlays), rather than reaching a host share.
fn guest_only(mountinfo: &str, path: &Path) -> bool {
    matches!(
        fs_type_at(mountinfo, path).as_deref(),
        Some("tmpfs" | "overlay")
    )
}

/// Writes the lease's name servers where the guest's resolver reads them,
/// never into a host file:
/// - /etc/resolv.conf a link into the guest's own /run (systemd-resolved's
///   stub): the link's target is made there;
/// - /etc on an overlay (the default): the file is replaced in it;
/// - else (/etc read-only, or a read-write share of the host's): a file in
///   the guest's /run is bind-mounted over it, which the host never sees;
///   a link there that leads nowhere in the guest cannot be, and is an
///   error the caller reports.
pub fn write_resolv_conf(lease: &Lease) -> io::Result<()> {
    if lease.dns.is_empty() {
        return Ok(());
    }
    let mut text = format!("{RESOLV_CONF_HEAD}\n");
    for a in &lease.dns {
        text.push_str(&format!("nameserver {a}\n"));
    }
    if let Some(domain) = &lease.domain {
        text.push_str(&format!("search {domain}\n"));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let etc = Path::new("/etc");
    let conf = etc.join("resolv.conf");
    if let Ok(target) = std::fs::read_link(&conf) {
        let target = normalize(&etc.join(target));
        if target.starts_with("/run") && guest_only(&mountinfo, &target) {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)?;
            }
            return std::fs::write(&target, &text);
        }
    }
    if guest_only(&mountinfo, etc) {
        match std::fs::remove_file(&conf) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        return std::fs::write(&conf, &text);
    }
    let ours = Path::new("/run/ferry/resolv.conf");
    std::fs::create_dir_all("/run/ferry")?;
    std::fs::write(ours, &text)?;
    super::guest_init::mount_bind(ours, &conf)
}

/// `path` with its `.` and `..` resolved by name (a link's target may
/// not exist in the guest, so the file system cannot be asked).
fn normalize(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_holding_a_path_is_the_deepest_and_last() {
        let info = "\
22 1 0:21 / / ro,relatime - virtiofs ferry-root rw
23 22 0:22 / /run rw - tmpfs tmpfs rw
30 22 0:30 / /etc rw - overlay overlay rw,lowerdir=/etc
31 22 0:31 / /home/me rw - virtiofs ferry-rw0 rw
32 31 0:32 / /home/me rw - tmpfs tmpfs rw
";
        let at = |p: &str| fs_type_at(info, Path::new(p));
        assert_eq!(at("/etc/resolv.conf").as_deref(), Some("overlay"));
        assert_eq!(at("/etcetera").as_deref(), Some("virtiofs"), "by component");
        assert_eq!(
            at("/run/systemd/resolve/stub-resolv.conf").as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            at("/home/me/x").as_deref(),
            Some("tmpfs"),
            "stacked: the last"
        );
        assert!(guest_only(info, Path::new("/etc")));
        assert!(!guest_only(info, Path::new("/usr")));
        assert_eq!(fs_type_at("", Path::new("/etc")), None);
        assert_eq!(
            normalize(Path::new("/etc/../run/./systemd/resolve/stub-resolv.conf")),
            Path::new("/run/systemd/resolve/stub-resolv.conf")
        );
    }

    #[test]
    fn macs_parse_as_sysfs_writes_them() {
        assert_eq!(
            parse_mac("02:46:52:59:00:01"),
            Some([0x02, 0x46, 0x52, 0x59, 0, 1])
        );
        assert_eq!(parse_mac("02:46:52:59:00"), None);
        assert_eq!(parse_mac("02:46:52:59:00:01:02"), None);
        assert_eq!(parse_mac("zz:46:52:59:00:01"), None);
    }
}
