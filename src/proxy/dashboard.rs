//! `GET /_kt/`: the dashboard page, and the cookie that lets a browser use
//! the admin routes. A browser cannot put a bearer header on an
//! `EventSource`, so `/_kt/?key=KEY` checks the key once and stores it in
//! an HttpOnly, SameSite=Strict cookie scoped to `/_kt`; that cookie is
//! accepted for `/_kt/*` only, never for the proxy or the direct API.

use super::{AuthRoute, ConnCtx, ProxyError};
use crate::body::{self, Body};
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::OnceLock;

/// The page: plain HTML with one inline style and one inline script.
const PAGE: &str = include_str!("dashboard.html");
/// The cookie holding the admin key.
const COOKIE: &str = "kt_admin";
/// A dashboard session lasts a working day.
const COOKIE_MAX_AGE_SECS: u32 = 12 * 3600;

/// True for the dashboard's own paths.
pub(super) fn is_page(path: &str) -> bool {
    path == "/_kt" || path == "/_kt/"
}

/// `/_kt/?key=KEY`: checks the key as an admin key and answers with a
/// redirect to `/_kt/` that sets the cookie (so the key leaves the address
/// bar and history). `None` when the request carries no `key` parameter.
pub(super) fn key_login<B>(
    ctx: &ConnCtx,
    req: &Request<B>,
) -> Option<Result<Response<Body>, ProxyError>> {
    if !is_page(req.uri().path()) {
        return None;
    }
    let key = req
        .uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))?;
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Some(Err(ProxyError::BadRequest(
            "the key parameter must be a kt access key".into(),
        )));
    }
    let mut headers = HeaderMap::new();
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {key}")) else {
        return Some(Err(ProxyError::BadRequest("bad key parameter".into())));
    };
    headers.insert(header::AUTHORIZATION, bearer);
    if let Err(denied) = ctx.gw.auth.admin(&headers) {
        return Some(Err(ProxyError::Auth {
            route: AuthRoute::Admin,
            denied,
        }));
    }
    let cookie = format!(
        "{COOKIE}={key}; Path=/_kt; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}"
    );
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/_kt/"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(mut v) = HeaderValue::from_str(&cookie) {
        v.set_sensitive(true);
        h.insert(header::SET_COOKIE, v);
    }
    Some(Ok(r))
}

/// The request's admin credentials: its `Authorization` header, else the
/// dashboard cookie presented as a bearer key. Call only for `/_kt/*`.
pub(super) fn admin_credentials(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Cow::Borrowed(headers);
    }
    let key = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
    let Some(Ok(mut bearer)) = key.map(|k| HeaderValue::from_str(&format!("Bearer {k}"))) else {
        return Cow::Borrowed(headers);
    };
    bearer.set_sensitive(true);
    let mut with = headers.clone();
    with.insert(header::AUTHORIZATION, bearer);
    Cow::Owned(with)
}

/// The page with its Content-Security-Policy: only its own inline style
/// and script run (by hash), and it may connect only to this origin.
pub(super) fn page() -> Response<Body> {
    let csp = csp();
    let mut r = body::typed_response("text/html; charset=utf-8", PAGE);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Computed once from the page itself, so editing the page cannot leave
/// a stale hash behind.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = inline_hash(PAGE, "<script>", "</script>");
        let style = inline_hash(PAGE, "<style>", "</style>");
        format!(
            "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// `'sha256-…'` of the text between the first `open` and `close` tags
/// (`'none'` if the page has no such element).
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    let Some(start) = page.find(open).map(|i| i + open.len()) else {
        return "'none'".into();
    };
    let Some(len) = page[start..].find(close) else {
        return "'none'".into();
    };
    let digest = Sha256::digest(&page.as_bytes()[start..start + len]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let csp = csp();
        assert!(csp.contains("connect-src 'self'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("'none'; style-src 'none'"));
        let script = inline_hash(PAGE, "<script>", "</script>");
        assert!(script.starts_with("'sha256-") && csp.contains(&format!("script-src {script};")));
        assert_eq!(
            PAGE.matches("<script").count(),
            1,
            "one inline script, no external loads"
        );
        assert!(!PAGE.contains("src=\"http") && !PAGE.contains("href=\"http"));
        assert_eq!(inline_hash("<p>", "<script>", "</script>"), "'none'");
    }

    #[test]
    fn the_cookie_stands_in_for_a_missing_bearer_header_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; kt_admin=kt_abc"),
        );
        let c = admin_credentials(&h);
        assert_eq!(c.get(header::AUTHORIZATION).unwrap(), "Bearer kt_abc");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer kt_hdr"),
        );
        let c = admin_credentials(&h);
        assert_eq!(c.get(header::AUTHORIZATION).unwrap(), "Bearer kt_hdr");
        let none = HeaderMap::new();
        assert!(admin_credentials(&none)
            .get(header::AUTHORIZATION)
            .is_none());
    }
}
