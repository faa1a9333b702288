//! Keeps web pages in the user's browser from driving a gateway that asks
//! for no access key (a laptop's, on loopback).
//!
//! Such a gateway answers its direct API with the provider keys it injects,
//! and its admin pages with the audit trail. Any site the developer visits
//! can reach it: a cross-site `POST` with a `text/plain` body needs no CORS
//! preflight, and a site that points its own DNS name at 127.0.0.1 (DNS
//! rebinding) even reads the answers. Jupyter, Vite and Ollama close the
//! same hole the same two ways, which kt applies to its own routes (never
//! to proxied traffic, which a page cannot send):
//!
//! - **Origin.** Browsers name the page behind a cross-site request, and
//!   behind every `POST`, in `Origin`. An `http(s)` page not served from
//!   this machine (`localhost`, `*.localhost`, a loopback address), or the
//!   opaque `null` of sandboxed frames and `data:` pages, is refused.
//!   Clients that are not browsers send no `Origin`; the pages of
//!   installed apps (`vscode-webview://`, `app://`) and those kt serves
//!   itself (the dashboard, under the `Host` it was asked by) are let
//!   through.
//! - **Host.** A rebound page's requests carry its own name as `Host`. Only
//!   names no outsider can point here are answered: IP literals,
//!   single-label names (`localhost`), and the private suffixes
//!   `.localhost`, `.internal` (`host.docker.internal`), `.local` and
//!   `.home.arpa`. On a loopback connection this holds for every request.
//!   On any other (a LAN address, or a container's own address, where a
//!   gateway published on the host's loopback sees its connections
//!   arrive) it holds for kt's own pages under `/_kt/` and for requests
//!   that show a browser (`Origin`, which every `POST` carries, or
//!   `Sec-Fetch-*`): a page can rebind its name to a LAN address as
//!   easily, while IDEs and SDKs may reach a team's gateway by any DNS
//!   name. A same-origin `GET` from an `http` page shows neither, which
//!   leaves it the direct API's `GET`s (the model list).
//!
//! With keys required a request needs a key no page has, so neither check
//! applies; nor do they to the probes, `/metrics` and the CA download.

use super::error::ProxyError;
use super::ConnCtx;
use http::{header, Request};
use std::net::IpAddr;

/// Refuses a request to kt's own routes that a web page made, when keys
/// are optional.
pub(super) fn check<B>(ctx: &ConnCtx, req: &Request<B>) -> Result<(), ProxyError> {
    if ctx.gw.auth.required()
        || matches!(
            req.uri().path(),
            "/healthz" | "/readyz" | "/metrics" | "/_kt/ca.pem"
        )
    {
        return Ok(());
    }
    // `::ffff:127.0.0.1` on a dual-stack listener is loopback too.
    refusal(crate::loopback_tcp::is_loopback(ctx.local.ip()), req)
}

/// Why a request to kt's own routes is refused as a web page's, arriving on
/// a loopback connection or not.
fn refusal<B>(on_loopback: bool, req: &Request<B>) -> Result<(), ProxyError> {
    // A `Host` that is not text names nothing kt answers to.
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or_default()),
    };
    // Off loopback, a browser's same-origin GET from an `http` page
    // carries neither `Origin` nor `Sec-Fetch-*`: kt's own pages (the
    // audit trail) are held to the names whoever asks, as IDEs never ask.
    let checked = on_loopback || from_a_browser(req) || req.uri().path().starts_with("/_kt/");
    if let Some(host) = host.filter(|h| checked && !host_allowed(h)) {
        return Err(ProxyError::WebPage {
            refused: format!("the host name {host}"),
        });
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        // A page kt serves itself (the dashboard) is its own origin: its
        // name passed the host check above, so no outsider chose it.
        let own = host.is_some_and(|h| host_allowed(h) && same_authority(&origin, h));
        if !own && !origin_allowed(&origin) {
            return Err(ProxyError::WebPage {
                refused: format!("the web page at {origin}"),
            });
        }
    }
    Ok(())
}

/// Whether a browser sent `req`: browsers name the page behind a request
/// in `Origin` (every cross-site request and every `POST`) and describe
/// every request in `Sec-Fetch-Site` / `Sec-Fetch-Mode` (Chrome 76,
/// Firefox 90, Safari 16.4); other clients send neither.
fn from_a_browser<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(header::ORIGIN)
        || h.contains_key("sec-fetch-site")
        || h.contains_key("sec-fetch-mode")
}

/// Whether `origin` (`scheme://host[:port]`) names the authority `host`.
fn same_authority(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// The host `authority` names (lower-case, without brackets, port or a
/// final dot), parsed as strictly as a CONNECT target; `None` when it is
/// not a valid authority.
fn host_of(authority: &str) -> Option<String> {
    super::authority::parse_or_default_port(authority, 80)
        .ok()
        .map(|t| t.host)
}

/// Whether a `Host` names this machine in a way no outsider controls.
fn host_allowed(authority: &str) -> bool {
    let Some(host) = host_of(authority) else {
        return false;
    };
    const PRIVATE: [&str; 4] = [".localhost", ".internal", ".local", ".home.arpa"];
    host.parse::<IpAddr>().is_ok()
        || !host.contains('.')
        || PRIVATE.iter().any(|s| host.ends_with(s))
}

/// Whether the page an `Origin` names may call the gateway.
fn origin_allowed(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        // `null`, or not an origin at all.
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return true;
    }
    let Some(host) = host_of(rest) else {
        return false;
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off loopback (a LAN address, a container's own) IDEs and SDKs may
    /// use any name; a browser's request is held to the names no outsider
    /// controls, as every request is on loopback.
    #[test]
    fn off_loopback_only_browsers_are_held_to_private_names() {
        let req = |host: &str, extra: Option<(&str, &str)>| {
            let mut b = Request::builder()
                .uri("/v1/chat/completions")
                .header("host", host);
            if let Some((k, v)) = extra {
                b = b.header(k, v);
            }
            b.body(()).unwrap()
        };
        let name = "kt.corp.example:41002";
        assert!(refusal(false, &req(name, None)).is_ok());
        assert!(refusal(true, &req(name, None)).is_err());
        // kt's own pages, whoever asks: a same-origin GET from an `http`
        // page names no origin and no fetch context.
        let events = Request::builder()
            .uri("/_kt/events?n=1")
            .header("host", name)
            .body(())
            .unwrap();
        assert!(refusal(false, &events).is_err());
        for browser in [
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("origin", "http://kt.corp.example:41002"),
        ] {
            assert!(
                refusal(false, &req(name, Some(browser))).is_err(),
                "{browser:?}"
            );
            let ip = req("192.168.1.5:41002", Some(browser));
            // An IP literal passes; a page from elsewhere still does not.
            let from_elsewhere = browser.0 == "origin";
            assert_eq!(refusal(false, &ip).is_err(), from_elsewhere, "{browser:?}");
        }
    }

    #[test]
    fn pages_from_this_machine_and_installed_apps_pass() {
        for origin in [
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://app.localhost:5173",
            "http://127.0.0.1:41002",
            "http://127.1.2.3",
            "http://[::1]:8080",
            "vscode-webview://1a2b3c",
            "app://obsidian.md",
        ] {
            assert!(origin_allowed(origin), "{origin}");
        }
    }

    #[test]
    fn other_pages_and_opaque_origins_are_refused() {
        for origin in [
            "https://evil.example",
            "http://evil.example:41002",
            "http://localhost.evil.example",
            "http://192.168.1.5:3000",
            "http://[::2]",
            "null",
            "",
            "localhost",
        ] {
            assert!(!origin_allowed(origin), "{origin}");
        }
    }

    #[test]
    fn a_page_is_matched_to_the_host_it_was_served_by() {
        assert!(same_authority("http://mylaptop:41002", "mylaptop:41002"));
        assert!(same_authority(
            "http://Gateway.Corp:41002",
            "gateway.corp:41002"
        ));
        assert!(!same_authority("http://gateway.corp", "gateway.corp:41002"));
        assert!(!same_authority(
            "https://evil.example",
            "gateway.corp:41002"
        ));
        assert!(!same_authority("null", "null"));
    }

    #[test]
    fn only_names_outsiders_cannot_point_here_are_answered() {
        for host in [
            "localhost:41002",
            "localhost.:41002",
            "127.0.0.1:41002",
            "[::1]:41002",
            "10.0.0.5",
            "mylaptop",
            "dev.localhost:41002",
            "host.docker.internal:41002",
            "printer.local",
            "box.home.arpa:41002",
        ] {
            assert!(host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:41002",
            "evil.example",
            "localhost.evil.example",
            "a.b.c",
            "",
            ":41002",
        ] {
            assert!(!host_allowed(host), "{host}");
        }
    }
}
