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
        if host.parse::<Ipv4Addr>().is_err() && !is_hostname(host) {
            return Err(AuthorityError::BadHost);
        }
        (host.trim_end_matches('.').to_ascii_lowercase(), port)
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
}
