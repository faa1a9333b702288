//! Chaining through another HTTP proxy (a corporate proxy): which targets use
//! it (`--upstream-proxy`, or `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the
//! environment), and the CONNECT handshake with it. The proxy itself may be
//! spoken to in TLS (`https://`); that link is set up in [`super::link`].

use super::HostPort;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a proxy URL's scheme is refused.
const UNSUPPORTED_SCHEME: &str =
    "only http:// and https:// proxies are supported: kt chains with HTTP CONNECT, not SOCKS";

/// Largest CONNECT reply head accepted from an upstream proxy.
const MAX_REPLY_HEAD: usize = 16 * 1024;

/// A parsed proxy URL (`http[s]://[user:pass@]host:port`).
#[derive(Clone)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// `https://`: kt speaks TLS to the proxy itself (verified like any
    /// upstream), and CONNECT and forwarded requests go inside it.
    pub tls: bool,
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials never appear in logs.
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", HostPort(&self.host, self.port))?;
        if self.authorization.is_some() {
            write!(f, " (with credentials)")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A proxy URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream proxy {url:?}: {reason}")]
pub struct ProxyUrlError {
    url: String,
    reason: String,
}

impl ProxyUrl {
    pub fn parse(url: &str) -> Result<Self, ProxyUrlError> {
        let err = |reason: &str| ProxyUrlError {
            url: redact_userinfo(url),
            reason: reason.to_string(),
        };
        // Schemes are case-insensitive (RFC 3986 §3.1): `HTTP://` is http.
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, r)) if scheme.eq_ignore_ascii_case("http") => (false, r),
            Some((scheme, r)) if scheme.eq_ignore_ascii_case("https") => (true, r),
            Some(_) => return Err(err(UNSUPPORTED_SCHEME)),
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let uri: http::uri::Authority = hostport.parse().map_err(|_| err("bad host:port"))?;
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("missing host"));
        }
        let authorization = match userinfo {
            Some(u) => {
                let decoded: Vec<u8> = percent_encoding::percent_decode_str(u).collect();
                let token = base64::engine::general_purpose::STANDARD.encode(decoded);
                let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| err("bad credentials"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(ProxyUrl {
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            authorization,
        })
    }

    /// Readies an HTTP/1.1 request (origin-form, with `Host`) for a plain
    /// `http://` origin to be forwarded by this proxy: the absolute-form
    /// target a proxy expects (RFC 9112 §3.2.2) and our credentials.
    /// Proxies commonly refuse CONNECT to port 80, so plain requests are
    /// forwarded, not tunnelled.
    pub fn to_absolute_form<B>(&self, req: &mut http::Request<B>, authority: &str) {
        let pq = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        if let Ok(uri) = format!("http://{authority}{pq}").parse::<http::Uri>() {
            *req.uri_mut() = uri;
        }
        if let Some(auth) = &self.authorization {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
        }
    }

    /// Opens a tunnel to `host:port` through this proxy on an already
    /// open `stream` to it. Returns any bytes the proxy sent after its reply.
    pub async fn connect_through<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        host: &str,
        port: u16,
    ) -> Result<Bytes, ChainError> {
        let authority = HostPort(host, port);
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &self.authorization {
            req.push_str("Proxy-Authorization: ");
            req.push_str(auth.to_str().unwrap_or_default());
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        // A TLS link holds the request until flushed.
        stream.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ChainError::Closed);
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = resp.code.unwrap_or(0);
                    if !(200..300).contains(&code) {
                        return Err(ChainError::Refused(code));
                    }
                    return Ok(buf.split_off(len).freeze());
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_REPLY_HEAD => continue,
                Ok(httparse::Status::Partial) => return Err(ChainError::BadReply),
                Err(_) => return Err(ChainError::BadReply),
            }
        }
    }
}

/// Failures talking to the upstream proxy.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("upstream proxy refused the tunnel with status {0}")]
    Refused(u16),
    #[error("upstream proxy sent an invalid reply")]
    BadReply,
    #[error("upstream proxy closed the connection")]
    Closed,
    #[error("upstream proxy i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake with the proxy failed: {0}")]
    Tls(String),
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***@{}", &url[..s + 3], &url[at + 1..]),
        (None, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// `NO_PROXY`: hosts (and their subdomains) and IPs reached directly.
#[derive(Debug, Clone, Default)]
pub struct NoProxy {
    all: bool,
    entries: Vec<String>,
}

impl NoProxy {
    pub fn parse(list: &str) -> Self {
        let mut np = NoProxy::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                np.all = true;
                continue;
            }
            let item = item.trim_start_matches("*.").trim_start_matches('.');
            // Drop a port suffix, keeping bracketed IPv6 intact.
            let host = match item.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(v6),
                None if item.matches(':').count() == 1 => item.split(':').next().unwrap_or(item),
                None => item,
            };
            np.entries.push(host.to_ascii_lowercase());
        }
        np
    }

    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.to_ascii_lowercase();
        self.entries.iter().any(|e| {
            host == *e
                || (host.len() > e.len()
                    && host.ends_with(e.as_str())
                    && host.as_bytes()[host.len() - e.len() - 1] == b'.')
        })
    }
}

/// Which proxy (if any) each kind of target goes through.
#[derive(Debug, Clone, Default)]
pub struct ProxyRules {
    https: Option<ProxyUrl>,
    http: Option<ProxyUrl>,
    no_proxy: NoProxy,
}

impl ProxyRules {
    /// One proxy for every target (`--upstream-proxy`), still honouring `NO_PROXY`.
    pub fn explicit(url: ProxyUrl, no_proxy: NoProxy) -> Self {
        ProxyRules {
            https: Some(url.clone()),
            http: Some(url),
            no_proxy,
        }
    }

    /// From the environment, ignoring a proxy that points at our own
    /// listener (users export `HTTPS_PROXY=kt` in their shell profile).
    /// Returns the rules and warnings to log.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        listen: SocketAddr,
    ) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        // Users export both variables in their shell profile: one warning
        // names every variable that points back here, not one per variable.
        let mut ours = Vec::new();
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| get(n).filter(|v| !v.trim().is_empty()))
        };
        let mut pick = |names: &[&str]| -> Option<ProxyUrl> {
            let raw = var(names)?;
            match ProxyUrl::parse(raw.trim()) {
                Ok(url) if points_at(&url, listen) => {
                    ours.push(format!("{}={}", names[0], redact_userinfo(&raw)));
                    None
                }
                Ok(url) => Some(url),
                Err(e) => {
                    warnings.push(format!("ignoring {} from the environment: {e}", names[0]));
                    None
                }
            }
        };
        let https = pick(&["HTTPS_PROXY", "https_proxy"]);
        let http = pick(&["HTTP_PROXY", "http_proxy"]);
        if !ours.is_empty() {
            warnings.push(format!(
                "ignoring {} from the environment: {} at this gateway",
                ours.join(" and "),
                if ours.len() == 1 {
                    "it points"
                } else {
                    "they point"
                }
            ));
        }
        let no_proxy = NoProxy::parse(&var(&["NO_PROXY", "no_proxy"]).unwrap_or_default());
        (
            ProxyRules {
                https,
                http,
                no_proxy,
            },
            warnings,
        )
    }

    /// One line for the start-up banner, `None` when no proxy is used:
    /// the proxy for TLS targets, the one for plain `http://` when it is
    /// another (or the only one), and the hosts `NO_PROXY` sends direct.
    pub fn summary(&self) -> Option<String> {
        let mut line = match (&self.https, &self.http) {
            (None, None) => return None,
            (Some(s), Some(p)) if s.to_string() == p.to_string() => s.to_string(),
            (Some(s), Some(p)) => format!("{s}, plain http through {p}"),
            (Some(s), None) => format!("{s}, plain http direct"),
            (None, Some(p)) => format!("plain http only, through {p}"),
        };
        if self.no_proxy.all {
            line.push_str("; NO_PROXY=* sends every host direct");
        } else if !self.no_proxy.entries.is_empty() {
            line.push_str(&format!(
                "; direct to {} (NO_PROXY)",
                self.no_proxy.entries.join(",")
            ));
        }
        Some(line)
    }

    /// The proxy for a TLS (or tunnelled) target.
    pub fn for_tunnel(&self, host: &str) -> Option<&ProxyUrl> {
        self.https.as_ref().filter(|_| !self.no_proxy.matches(host))
    }

    /// The proxy for a plain `http://` target.
    pub fn for_plain(&self, host: &str) -> Option<&ProxyUrl> {
        self.http.as_ref().filter(|_| !self.no_proxy.matches(host))
    }
}

fn points_at(url: &ProxyUrl, listen: SocketAddr) -> bool {
    if url.port != listen.port() {
        return false;
    }
    let host = url.host.to_ascii_lowercase();
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip == listen.ip() || ip.is_loopback() || listen.ip().is_unspecified(),
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let u = ProxyUrl::parse("http://user:p%40ss@proxy.corp:3128/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("proxy.corp", 3128));
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(
            u.authorization.unwrap().to_str().unwrap(),
            format!("Basic {expected}")
        );
        assert_eq!(ProxyUrl::parse("10.0.0.1:8080").unwrap().port, 8080);
        assert_eq!(ProxyUrl::parse("http://[::1]:3128").unwrap().host, "::1");
        assert!(!u.tls);
        assert!(ProxyUrl::parse("socks5://proxy:1080").is_err());
        let dbg = format!("{:?}", ProxyUrl::parse("http://u:secret@p:1").unwrap());
        assert!(!dbg.contains("secret"));
    }

    #[test]
    fn https_proxy_urls_speak_tls_to_the_proxy_and_default_to_port_443() {
        let u = ProxyUrl::parse("https://user:pass@proxy.corp").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("proxy.corp", 443));
        assert_eq!(u.to_string(), "https://proxy.corp:443 (with credentials)");
        let u = ProxyUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        assert_eq!(u.to_string(), "https://[::1]:8443");
        let plain = ProxyUrl::parse("proxy.corp").unwrap();
        assert_eq!((plain.tls, plain.port), (false, 80));
        let e = ProxyUrl::parse("socks5h://u:secret@proxy:1080")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not SOCKS") && !e.contains("secret"), "{e}");

        // From the environment too, where it used to be ignored.
        let listen: SocketAddr = "127.0.0.1:41002".parse().unwrap();
        let env = |k: &str| (k == "HTTPS_PROXY").then(|| "https://corp:8443".to_string());
        let (rules, warnings) = ProxyRules::from_env(env, listen);
        let p = rules.for_tunnel("api.openai.com").unwrap();
        assert_eq!((p.tls, p.port), (true, 8443));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn proxy_url_schemes_are_case_insensitive() {
        for url in ["HTTP://LOCALHOST:3128", "Http://proxy.corp:3128/"] {
            let u = ProxyUrl::parse(url).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(u.port, 3128, "{url}");
        }
        assert!(ProxyUrl::parse("HTTPS://proxy:443").unwrap().tls);
        // The own-listener check sees through the case too.
        let listen: SocketAddr = "127.0.0.1:41002".parse().unwrap();
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("HTTP://LOCALHOST:41002".to_string()),
            "HTTP_PROXY" => Some("HTTP://CORP:3128".to_string()),
            _ => None,
        };
        let (rules, warnings) = ProxyRules::from_env(env, listen);
        assert!(rules.for_tunnel("api.openai.com").is_none());
        assert_eq!(rules.for_plain("example.com").unwrap().port, 3128);
        assert_eq!(
            warnings,
            vec![
                "ignoring HTTPS_PROXY=HTTP://LOCALHOST:41002 from the environment: \
                 it points at this gateway"
                    .to_string()
            ]
        );
    }

    #[test]
    fn no_proxy_matching() {
        let np =
            NoProxy::parse("localhost, .corp.example, 10.1.2.3, [::1]:80, registry.npmjs.org:443");
        assert!(np.matches("localhost"));
        assert!(np.matches("a.corp.example"));
        assert!(np.matches("corp.example"));
        assert!(!np.matches("xcorp.example"));
        assert!(np.matches("10.1.2.3"));
        assert!(np.matches("::1"));
        assert!(np.matches("registry.npmjs.org"));
        assert!(!np.matches("api.openai.com"));
        assert!(NoProxy::parse("*").matches("anything"));
    }

    #[test]
    fn env_proxy_pointing_at_ourselves_is_ignored() {
        let listen: SocketAddr = "127.0.0.1:41002".parse().unwrap();
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://localhost:41002".to_string()),
            "http_proxy" => Some("http://corp:3128".to_string()),
            "NO_PROXY" => Some("internal".to_string()),
            _ => None,
        };
        let (rules, warnings) = ProxyRules::from_env(env, listen);
        assert!(rules.for_tunnel("api.openai.com").is_none());
        assert_eq!(rules.for_plain("example.com").unwrap().host, "corp");
        assert!(rules.for_plain("a.internal").is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn both_env_proxies_pointing_at_ourselves_give_one_warning() {
        let listen: SocketAddr = "127.0.0.1:41002".parse().unwrap();
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://localhost:41002".to_string()),
            "HTTP_PROXY" => Some("http://127.0.0.1:41002".to_string()),
            _ => None,
        };
        let (rules, warnings) = ProxyRules::from_env(env, listen);
        assert!(rules.for_tunnel("api.openai.com").is_none());
        assert!(rules.for_plain("example.com").is_none());
        assert_eq!(
            warnings,
            vec![
                "ignoring HTTPS_PROXY=http://localhost:41002 and HTTP_PROXY=http://127.0.0.1:41002 \
                 from the environment: they point at this gateway"
                    .to_string()
            ]
        );
    }

    #[test]
    fn the_banner_summary_names_each_proxy_and_the_direct_hosts() {
        let listen: SocketAddr = "127.0.0.1:41002".parse().unwrap();
        let from = |vars: &'static [(&'static str, &'static str)]| {
            let env = |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            };
            ProxyRules::from_env(env, listen).0.summary()
        };
        assert_eq!(from(&[]), None);
        assert_eq!(
            from(&[("HTTPS_PROXY", "http://u:secret@corp:3128")]).as_deref(),
            Some("http://corp:3128 (with credentials), plain http direct")
        );
        assert_eq!(
            from(&[
                ("HTTPS_PROXY", "http://corp:3128"),
                ("HTTP_PROXY", "http://corp:3128"),
                ("no_proxy", ".internal, localhost:8080"),
            ])
            .as_deref(),
            Some("http://corp:3128; direct to internal,localhost (NO_PROXY)")
        );
        assert_eq!(
            from(&[("HTTP_PROXY", "http://web:80"), ("NO_PROXY", "*")]).as_deref(),
            Some("plain http only, through http://web:80; NO_PROXY=* sends every host direct")
        );
        let explicit = ProxyRules::explicit(
            ProxyUrl::parse("http://corp:3128").unwrap(),
            NoProxy::default(),
        );
        assert_eq!(explicit.summary().as_deref(), Some("http://corp:3128"));
    }
}
