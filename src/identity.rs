//! Who is behind a request: the user and team of the access key it carried
//! (anonymous when keys are not in use), for policies, events and costs,
//! and the client's address (through trusted reverse proxies).

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// The caller of one request. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The access key's user; `None` for anonymous traffic.
    pub user: Option<Arc<str>>,
    /// The access key's team, if it has one.
    pub team: Option<Arc<str>>,
    /// May read the admin routes (`/_kt/events`, `/_kt/`).
    pub admin: bool,
    /// The client's address: the TCP peer, or what a trusted proxy says in
    /// `X-Forwarded-For`.
    pub client: Option<ClientAddr>,
}

/// A client's address with its text, made once where the address is
/// learnt: every exchange of an intercepted session names it in its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// As `Display` writes it.
    pub text: Arc<str>,
}

impl From<IpAddr> for ClientAddr {
    fn from(ip: IpAddr) -> Self {
        ClientAddr {
            ip,
            text: ip_text(ip),
        }
    }
}

/// An address as text, formatted on the stack: `to_string` grows a `String`
/// piece by piece.
fn ip_text(ip: IpAddr) -> Arc<str> {
    use std::io::Write;
    // The longest form, an IPv4-mapped IPv6 address, is 45 characters.
    let mut buf = [0u8; 48];
    let mut rest = &mut buf[..];
    if write!(rest, "{ip}").is_err() {
        return Arc::from(ip.to_string());
    }
    let len = 48 - rest.len();
    Arc::from(std::str::from_utf8(&buf[..len]).unwrap_or_default())
}

impl Identity {
    /// Nobody in particular: no key was presented (or none is needed).
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// A named user, optionally in a team.
    pub fn user(user: &str, team: Option<&str>) -> Self {
        Identity {
            user: Some(Arc::from(user)),
            team: team.map(Arc::from),
            admin: false,
            client: None,
        }
    }
}

/// The client behind a connection from `peer`. When `peer` is one of the
/// `trusted` proxies, `X-Forwarded-For` is read from the right (each proxy
/// appends the address it saw) past every trusted hop, and the first other
/// address is the client. From an untrusted peer the header is ignored: it
/// is whatever the client wrote. Only entries right of the client matter:
/// garbage a client wrote to the left of what the proxies appended (the
/// load balancer appends the real address after it) changes nothing, and
/// garbage reached before any untrusted address stops the walk at the last
/// trusted hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        // A value that is not text is one garbled entry.
        let Ok(value) = value.to_str() else {
            return client;
        };
        for item in value.rsplit(',') {
            let Some(hop) = parse_hop(item) else {
                return client;
            };
            client = hop;
            if !is_trusted(&hop) {
                return hop;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port or brackets.
fn parse_hop(item: &str) -> Option<IpAddr> {
    let item = item.trim();
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = item.parse::<std::net::SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    item.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "fe80::1:2:3:4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let addr = ClientAddr::from(ip);
            assert_eq!((addr.ip, &*addr.text), (ip, ip.to_string().as_str()));
        }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["1.2.3.4"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &[]), ip("10.0.0.5"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        // client, then a trusted inner proxy; the peer is the outer one.
        let h = xff(&["198.51.100.7, 10.1.2.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        // A spoofed left-most entry is not believed past the real client.
        let h = xff(&["6.6.6.6, 198.51.100.7"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        // Split over two headers, with ports and IPv6.
        let h = xff(&["[2001:db8::1]:4711", "fd00::2"]);
        assert_eq!(client_ip(ip("fd00::1"), &h, &trusted), ip("2001:db8::1"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Every hop trusted: the left-most.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn garbage_is_not_trusted() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["198.51.100.7, not-an-ip"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        // Garbage past a trusted hop stops the walk there.
        let h = xff(&["198.51.100.7, junk, 10.2.2.2"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.2.2.2"));
        // Garbage a client wrote left of the address its load balancer
        // appended cannot hide that address.
        for h in [xff(&["junk, 198.51.100.7"]), xff(&["junk", "198.51.100.7"])] {
            assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        }
        // IPv4-mapped IPv6 peers match IPv4 blocks.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &xff(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
    }
}
