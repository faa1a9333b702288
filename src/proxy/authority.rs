//! Parsing the target of a CONNECT request (`host:port`), strictly: a port
//! is required and non-zero, hosts are DNS names, IPv4, or bracketed IPv6.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A CONNECT target. `host` has no brackets and is lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// True when `host` is an IP literal (no SNI can be expected for it).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::upstream::HostPort(&self.host, self.port).fmt(f)
    }
}

/// Why a CONNECT target was refused (always a client error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("CONNECT target must be host:port")]
    MissingPort,
    #[error("CONNECT target has an invalid port")]
    BadPort,
    #[error("CONNECT target has an invalid host")]
    BadHost,
}

/// Parses `host:port` / `[v6]:port`.
pub fn parse(authority: &str) -> Result<Target, AuthorityError> {
    if authority.len() > 260 {
        return Err(AuthorityError::BadHost);
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, tail) = rest.split_once(']').ok_or(AuthorityError::BadHost)?;
        let port = tail.strip_prefix(':').ok_or(AuthorityError::MissingPort)?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| AuthorityError::BadHost)?;
        (v6.to_ascii_lowercase(), port)
    } else {
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or(AuthorityError::MissingPort)?;
        if host.contains(':') {
            // An unbracketed IPv6 literal is ambiguous.
            return Err(AuthorityError::BadHost);
        }
        let host = if ends_in_a_number(host) {
            // `127.1`, `0x7f.1`, `2130706433`: what resolvers (and browsers)
            // read as IPv4, spelled as kt checks addresses, so a loop to
            // kt itself or a refused address is seen whatever the spelling.
            ipv4(host).ok_or(AuthorityError::BadHost)?.to_string()
        } else if is_hostname(host) {
            host.trim_end_matches('.').to_ascii_lowercase()
        } else {
            return Err(AuthorityError::BadHost);
        };
        (host, port)
    };
    if port.is_empty() {
        return Err(AuthorityError::MissingPort);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort);
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(AuthorityError::BadPort),
        Ok(p) => p,
    };
    Ok(Target { host, port })
}

/// An authority as an absolute-form request or a `Host` header gives it
/// (userinfo ignored, `default_port` when none is given), checked like a
/// CONNECT target.
pub fn parse_or_default_port(authority: &str, default_port: u16) -> Result<Target, AuthorityError> {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = if hostport.starts_with('[') {
        hostport.contains("]:")
    } else {
        hostport.contains(':')
    };
    if has_port {
        parse(hostport)
    } else {
        parse(&format!("{hostport}:{default_port}"))
    }
}

/// Whether the last label of `host` is a number (decimal, or hex with
/// `0x`): such a host is an IPv4 address or nothing (the URL standard's
/// "ends in a number").
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The URL standard's IPv4 parser: one to four parts, each decimal, octal
/// (leading `0`) or hex (`0x`), the last filling the bytes left.
fn ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if part.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
            return None;
        }
        let n = match digits {
            "" => 0,
            d => u64::from_str_radix(d, radix).ok()?,
        };
        numbers.push(n);
    }
    let (last, rest) = numbers.split_last()?;
    if rest.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (4 - rest.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut addr = *last;
    for (i, &n) in rest.iter().enumerate() {
        addr += n << (8 * (3 - i as u32));
    }
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

fn is_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn good_targets() {
        assert_eq!(
            parse("API.OpenAI.com:443").unwrap(),
            Target {
                host: "api.openai.com".into(),
                port: 443
            }
        );
        assert_eq!(parse("127.0.0.1:8443").unwrap().port, 8443);
        let v6 = parse("[::1]:443").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:443");
        assert!(v6.is_ip());
    }

    #[test]
    fn bad_targets() {
        assert_eq!(parse("example.com"), Err(AuthorityError::MissingPort));
        assert_eq!(parse("example.com:"), Err(AuthorityError::MissingPort));
        assert_eq!(parse("example.com:0"), Err(AuthorityError::BadPort));
        assert_eq!(parse("example.com:65536"), Err(AuthorityError::BadPort));
        assert_eq!(parse("example.com:+443"), Err(AuthorityError::BadPort));
        assert_eq!(parse("::1:443"), Err(AuthorityError::BadHost));
        assert_eq!(parse("[::1]"), Err(AuthorityError::MissingPort));
        assert_eq!(parse("[nope]:443"), Err(AuthorityError::BadHost));
        assert_eq!(parse(":443"), Err(AuthorityError::BadHost));
        assert_eq!(parse("a b:443"), Err(AuthorityError::BadHost));
        assert_eq!(parse("-x.com:443"), Err(AuthorityError::BadHost));
        let long = format!("{}.com:443", "a".repeat(10_000));
        assert_eq!(parse(&long), Err(AuthorityError::BadHost));
    }

    /// Hosts that end in a number are IPv4 addresses however they are
    /// spelled (as resolvers and browsers read them), or refused.
    #[test]
    fn numeric_hosts_are_read_as_the_ipv4_address_they_spell() {
        for (spelled, address) in [
            ("127.1", "127.0.0.1"),
            ("0", "0.0.0.0"),
            ("2130706433", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0251.0376.0251.0376", "169.254.169.254"),
            ("2852039166", "169.254.169.254"),
            ("169.254.169.254.", "169.254.169.254"),
            ("10.0.0.0x1", "10.0.0.1"),
            ("1.2.3.4", "1.2.3.4"),
        ] {
            let t = parse(&format!("{spelled}:443")).unwrap();
            assert_eq!(t.host, address, "{spelled}");
            assert!(t.is_ip(), "{spelled}");
        }
        for bad in [
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.256",
            "4294967296",
            "09",
            "1..2",
            "a.1",
        ] {
            assert_eq!(
                parse(&format!("{bad}:443")),
                Err(AuthorityError::BadHost),
                "{bad}"
            );
        }
        // A label that is not all number is a name.
        assert_eq!(parse("1.2.3.com:443").unwrap().host, "1.2.3.com");
        assert_eq!(parse("0x1g:443").unwrap().host, "0x1g");
    }

    #[test]
    fn absolute_form_hosts_are_checked_like_connect_targets() {
        let t = parse_or_default_port("Example.com", 80).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("example.com", 80));
        assert_eq!(
            parse_or_default_port("u:p@h.test:8080", 80).unwrap().port,
            8080
        );
        assert_eq!(parse_or_default_port("[::1]", 443).unwrap().host, "::1");
        assert_eq!(parse_or_default_port("[::1]:8443", 443).unwrap().port, 8443);
        assert_eq!(
            parse_or_default_port("plain.test%0d%0aX:1", 80),
            Err(AuthorityError::BadHost)
        );
        assert_eq!(
            parse_or_default_port("h.test:99999", 80),
            Err(AuthorityError::BadPort)
        );
        assert_eq!(
            parse_or_default_port("h.test:0", 80),
            Err(AuthorityError::BadPort)
        );
    }
}
