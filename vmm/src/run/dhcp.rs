//! The DHCPv4 messages a client needs (RFC 2131/2132): DISCOVER and REQUEST
//! out, OFFER and ACK (or NAK) in, and the IPv4/UDP framing a packet
//! socket sees them in. Ferry's init uses it to take passt's lease.
//!
//! Written here rather than taken from `dhcproto`: that crate brings a DNS
//! library and about forty crates (ICU, url, rand) into the binary that is
//! also the guest's /init, for the four messages and seven options used.
//! Every read is bounds-checked; a message that does not parse is ignored.
//! (The MTU option is not asked for: the card's comes from its backend.)

use std::net::Ipv4Addr;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The BROADCAST flag: asks the server to broadcast its reply, since the
/// client has no address to receive a unicast on yet.
const FLAG_BROADCAST: u16 = 0x8000;
/// op .. file: the fixed part before the cookie.
const FIXED_LEN: usize = 236;
pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

mod option {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const DOMAIN_NAME: u8 = 15;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETERS: u8 = 55;
    pub const END: u8 = 255;
}

/// Message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Ack = 5,
    Nak = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            5 => Self::Ack,
            6 => Self::Nak,
            _ => return None,
        })
    }
}

/// What a client sends: DISCOVER, or REQUEST for an offered address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub xid: u32,
    pub mac: [u8; 6],
    /// `Some((address, server))` makes it a REQUEST for that offer.
    pub request: Option<(Ipv4Addr, Ipv4Addr)>,
}

impl ClientMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut m = vec![0u8; FIXED_LEN];
        m[0] = BOOTREQUEST;
        m[1] = HTYPE_ETHERNET;
        m[2] = 6;
        m[4..8].copy_from_slice(&self.xid.to_be_bytes());
        m[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        m[28..34].copy_from_slice(&self.mac);
        m.extend_from_slice(&MAGIC_COOKIE);
        let kind = match self.request {
            None => Kind::Discover,
            Some(_) => Kind::Request,
        };
        m.extend_from_slice(&[option::MESSAGE_TYPE, 1, kind as u8]);
        if let Some((address, server)) = self.request {
            m.extend_from_slice(&[option::REQUESTED_ADDRESS, 4]);
            m.extend_from_slice(&address.octets());
            m.extend_from_slice(&[option::SERVER_ID, 4]);
            m.extend_from_slice(&server.octets());
        }
        // No MTU: the card's comes from its backend, in config space.
        m.extend_from_slice(&[
            option::PARAMETERS,
            4,
            option::SUBNET_MASK,
            option::ROUTER,
            option::DNS,
            option::DOMAIN_NAME,
        ]);
        m.push(option::END);
        m
    }
}

/// A server's reply, with the options a client configures from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub kind: Option<Kind>,
    pub xid: u32,
    pub mac: [u8; 6],
    pub address: Option<Ipv4Addr>,
    pub server: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

impl Reply {
    /// Parses a BOOTREPLY; `None` for anything else or a malformed one.
    pub fn parse(m: &[u8]) -> Option<Reply> {
        if m.len() < FIXED_LEN + MAGIC_COOKIE.len()
            || m[0] != BOOTREPLY
            || m[FIXED_LEN..FIXED_LEN + 4] != MAGIC_COOKIE
        {
            return None;
        }
        let mut reply = Reply {
            xid: u32::from_be_bytes(m[4..8].try_into().ok()?),
            mac: m[28..34].try_into().ok()?,
            address: Some(ipv4(&m[16..20])?).filter(|a| !a.is_unspecified()),
            ..Reply::default()
        };
        let mut rest = &m[FIXED_LEN + 4..];
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                option::PAD => {
                    rest = tail;
                    continue;
                }
                option::END => break,
                _ => {}
            }
            let (&len, tail) = tail.split_first()?;
            let value = tail.get(..usize::from(len))?;
            rest = &tail[usize::from(len)..];
            match code {
                option::MESSAGE_TYPE => reply.kind = Kind::from_u8(*value.first()?),
                option::SUBNET_MASK => reply.netmask = ipv4(value),
                option::ROUTER => reply.router = ipv4(value),
                option::SERVER_ID => reply.server = ipv4(value),
                option::DNS => reply.dns = value.chunks_exact(4).filter_map(ipv4).collect(),
                option::DOMAIN_NAME => {
                    // A name goes into resolv.conf: printable, no spaces.
                    let name = String::from_utf8_lossy(value)
                        .trim_end_matches('\0')
                        .to_string();
                    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
                        reply.domain = Some(name);
                    }
                }
                _ => {}
            }
        }
        Some(reply)
    }
}

/// The UDP payload of an IPv4 packet (as a `SOCK_DGRAM` packet socket
/// hands it over: no Ethernet header) from the DHCP server port to the
/// client port.
pub fn client_payload(packet: &[u8]) -> Option<&[u8]> {
    let &first = packet.first()?;
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header < 20 || packet.get(9)? != &17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes(packet.get(2..4)?.try_into().ok()?));
    let packet = packet.get(..total)?;
    let udp = packet.get(header..)?;
    let src = u16::from_be_bytes(udp.get(..2)?.try_into().ok()?);
    let dst = u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    if src != SERVER_PORT || dst != CLIENT_PORT || len < 8 {
        return None;
    }
    udp.get(8..len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x46, 0x52, 0x59, 0, 1];

    /// A server's reply as RFC 2131 lays it out, built independently of
    /// the encoder above.
    fn server_reply(kind: u8, options: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![0u8; 236];
        m[0] = 2;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        m[16..20].copy_from_slice(&[10, 0, 2, 15]);
        m[28..34].copy_from_slice(&MAC);
        m.extend_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        m.extend_from_slice(&[53, 1, kind]);
        for o in options {
            m.extend_from_slice(o);
        }
        m.push(255);
        m
    }

    #[test]
    fn discover_and_request_are_laid_out_as_rfc_2131_says() {
        let discover = ClientMessage {
            xid: 7,
            mac: MAC,
            request: None,
        }
        .encode();
        assert_eq!(&discover[..4], &[1, 1, 6, 0]);
        assert_eq!(&discover[4..8], &7u32.to_be_bytes());
        assert_eq!(&discover[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&discover[28..34], &MAC);
        assert_eq!(&discover[236..243], &[0x63, 0x82, 0x53, 0x63, 53, 1, 1]);
        assert_eq!(discover.last(), Some(&255));

        let request = ClientMessage {
            xid: 7,
            mac: MAC,
            request: Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
        }
        .encode();
        assert_eq!(
            &request[240..255],
            &[53, 1, 3, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]
        );
    }

    #[test]
    fn an_ack_gives_the_lease() {
        let m = server_reply(
            5,
            &[
                &[0, 0],
                &[1, 4, 255, 255, 255, 0],
                &[3, 4, 10, 0, 2, 2],
                &[6, 8, 10, 0, 2, 3, 1, 1, 1, 1],
                &[54, 4, 10, 0, 2, 2],
                &[15, 7, b'e', b'x', b'.', b'o', b'r', b'g', 0],
            ],
        );
        let r = Reply::parse(&m).unwrap();
        assert_eq!(r.kind, Some(Kind::Ack));
        assert_eq!(r.xid, 0xdead_beef);
        assert_eq!(r.mac, MAC);
        assert_eq!(r.address, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(r.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.domain.as_deref(), Some("ex.org"));
    }

    #[test]
    fn malformed_replies_are_refused_not_misread() {
        let good = server_reply(2, &[&[1, 4, 255, 255, 255, 0]]);
        assert!(Reply::parse(&good).is_some());
        // Cut anywhere inside the fixed part, the cookie or an option.
        for cut in 0..good.len() - 1 {
            if let Some(r) = Reply::parse(&good[..cut]) {
                assert!(cut >= 240, "parsed a reply cut at {cut}");
                assert_ne!(r.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
            }
        }
        // An option longer than the message.
        assert_eq!(Reply::parse(&server_reply(2, &[&[6, 200, 1, 2]])), None);
        // A request, or the wrong cookie.
        let mut request = good.clone();
        request[0] = 1;
        assert_eq!(Reply::parse(&request), None);
        let mut cookie = good.clone();
        cookie[236] = 0;
        assert_eq!(Reply::parse(&cookie), None);
        // A domain with a space would split a resolv.conf line.
        let spaced = server_reply(5, &[&[15, 3, b'a', b' ', b'b']]);
        assert_eq!(Reply::parse(&spaced).unwrap().domain, None);
    }

    #[test]
    fn the_payload_is_found_only_in_udp_to_the_client_port() {
        let payload = [1u8, 2, 3];
        let packet = |proto: u8, src: u16, dst: u16, ihl: u8| {
            let header = usize::from(ihl) * 4;
            let total = header + 8 + payload.len();
            let mut p = vec![0u8; header];
            p[0] = 0x40 | ihl;
            p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
            p[9] = proto;
            p.extend_from_slice(&src.to_be_bytes());
            p.extend_from_slice(&dst.to_be_bytes());
            p.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&payload);
            p.extend_from_slice(&[0xee; 4]); // Ethernet padding past the total
            p
        };
        assert_eq!(client_payload(&packet(17, 67, 68, 5)), Some(&payload[..]));
        assert_eq!(client_payload(&packet(17, 67, 68, 6)), Some(&payload[..]));
        assert_eq!(client_payload(&packet(6, 67, 68, 5)), None);
        assert_eq!(client_payload(&packet(17, 67, 69, 5)), None);
        assert_eq!(
            client_payload(&packet(17, 53, 68, 5)),
            None,
            "not from a server"
        );
        assert_eq!(client_payload(&packet(17, 67, 68, 4)), None);
        let good = packet(17, 67, 68, 5);
        for cut in 0..good.len() - 4 {
            assert_eq!(client_payload(&good[..cut]), None, "cut at {cut}");
        }
    }
}
