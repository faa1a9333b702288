//! `--connect-to HOST:PORT:ADDR:PORT`: where TCP goes for a given host and
//! port, leaving the TLS name untouched (curl's option of the same name).
//! An empty HOST or PORT on the left matches any; an empty ADDR or PORT on
//! the right keeps the request's own host or port, as in curl.

use std::fmt;

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    host: Option<String>,
    port: Option<u16>,
    /// `None`: dial the request's own host.
    addr: Option<String>,
    /// `None`: dial the request's own port.
    addr_port: Option<u16>,
}

/// A rule that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid --connect-to {rule:?}: {reason} (expected HOST:PORT:ADDR:PORT)")]
pub struct ConnectToError {
    rule: String,
    reason: &'static str,
}

impl ConnectTo {
    pub fn parse(rule: &str) -> Result<Self, ConnectToError> {
        let err = |reason| ConnectToError {
            rule: rule.to_string(),
            reason,
        };
        let mut rest = rule;
        let mut fields = Vec::with_capacity(4);
        for i in 0..4 {
            let (field, tail) = if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| err("unclosed '['"))?;
                let field = &after[..end];
                let tail = &after[end + 1..];
                if i < 3 && !tail.starts_with(':') {
                    return Err(err("expected ':' after ']'"));
                }
                (field, tail.strip_prefix(':').unwrap_or(tail))
            } else if i < 3 {
                let end = rest.find(':').ok_or_else(|| err("too few fields"))?;
                (&rest[..end], &rest[end + 1..])
            } else {
                (rest, "")
            };
            fields.push(field);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(err("too many fields"));
        }
        let port = |s: &str| -> Result<Option<u16>, ConnectToError> {
            if s.is_empty() {
                return Ok(None);
            }
            match s.parse::<u16>() {
                Ok(0) | Err(_) => Err(err("bad port")),
                Ok(p) => Ok(Some(p)),
            }
        };
        Ok(ConnectTo {
            host: (!fields[0].is_empty()).then(|| fields[0].to_ascii_lowercase()),
            port: port(fields[1])?,
            addr: (!fields[2].is_empty()).then(|| fields[2].to_string()),
            addr_port: port(fields[3])?,
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for ConnectTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |h: &str| {
            if h.contains(':') {
                format!("[{h}]")
            } else {
                h.to_string()
            }
        };
        write!(
            f,
            "{}:{}:{}:{}",
            self.host.as_deref().map(show).unwrap_or_default(),
            self.port.map(|p| p.to_string()).unwrap_or_default(),
            self.addr.as_deref().map(show).unwrap_or_default(),
            self.addr_port.map(|p| p.to_string()).unwrap_or_default(),
        )
    }
}

/// All rules; the first match wins.
#[derive(Debug, Clone, Default)]
pub struct ConnectToRules(Vec<ConnectTo>);

impl ConnectToRules {
    pub fn new(rules: Vec<ConnectTo>) -> Self {
        ConnectToRules(rules)
    }

    /// Where to dial for `host:port` (host without IPv6 brackets). The
    /// first matching rule decides, even one that keeps both.
    pub fn resolve<'a>(&'a self, host: &'a str, port: u16) -> (&'a str, u16) {
        self.0
            .iter()
            .find(|r| r.matches(host, port))
            .map_or((host, port), |r| {
                (
                    r.addr.as_deref().unwrap_or(host),
                    r.addr_port.unwrap_or(port),
                )
            })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let r = ConnectTo::parse("api.openai.com:443:127.0.0.1:8443").unwrap();
        let rules = ConnectToRules::new(vec![r]);
        assert_eq!(rules.resolve("api.openai.com", 443), ("127.0.0.1", 8443));
        assert_eq!(rules.resolve("API.OPENAI.COM", 443), ("127.0.0.1", 8443));
        assert_eq!(rules.resolve("api.openai.com", 80), ("api.openai.com", 80));
        assert_eq!(rules.resolve("other.com", 443), ("other.com", 443));
    }

    #[test]
    fn wildcards_and_ipv6() {
        let r = ConnectTo::parse("::[::1]:9000").unwrap();
        assert_eq!(r.to_string(), "::[::1]:9000");
        let rules = ConnectToRules::new(vec![r]);
        assert_eq!(rules.resolve("anything", 1), ("::1", 9000));
        let r = ConnectTo::parse("[::1]:443:127.0.0.1:1").unwrap();
        assert!(r.matches("::1", 443));
    }

    #[test]
    fn empty_target_keeps_the_requests_own_host_or_port() {
        let port_only = ConnectTo::parse("api.openai.com:443::8443").unwrap();
        assert_eq!(port_only.to_string(), "api.openai.com:443::8443");
        let host_only = ConnectTo::parse(":443:127.0.0.1:").unwrap();
        assert_eq!(host_only.to_string(), ":443:127.0.0.1:");
        // A rule that keeps both still matches first, as in curl.
        let neither = ConnectTo::parse("keep.example:443::").unwrap();
        let rules = ConnectToRules::new(vec![neither, port_only, host_only]);
        assert_eq!(
            rules.resolve("api.openai.com", 443),
            ("api.openai.com", 8443)
        );
        assert_eq!(rules.resolve("other.com", 443), ("127.0.0.1", 443));
        assert_eq!(rules.resolve("keep.example", 443), ("keep.example", 443));
        assert_eq!(rules.resolve("other.com", 80), ("other.com", 80));
    }

    #[test]
    fn rejects_bad_rules() {
        for bad in [
            "",
            "a:443:b",
            "a:443:b:0",
            "a:x:b:1",
            "a:1:b:x",
            "a:1:b:1:extra",
            "[::1:1:b:1",
        ] {
            assert!(ConnectTo::parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
