//! Turning the credentials of a request into an [`Identity`] — or the reason
//! it is refused — for each place keys are presented:
//!
//! - forward proxy (CONNECT and absolute-form): `Proxy-Authorization: Basic
//!   base64(user:KEY)`. The user part is informational; the key decides.
//!   A key given as the user with an empty password (`http://KEY@host`),
//!   or `Proxy-Authorization: Bearer KEY`, is accepted too.
//! - admin routes: `Authorization: Bearer KEY` of a key with admin rights.
//! - direct API: `Authorization: Bearer KEY` or `x-api-key: KEY`.
//!
//! With `auth.required` off, nothing is refused, but a valid key still names
//! its user and team (so a laptop's events are attributed too); an invalid
//! one is logged at debug level and the request is anonymous.

use super::store::{KeyStore, Lookup};
use crate::identity::Identity;
use base64::Engine as _;
use http::{header, HeaderMap};
use std::sync::Arc;

/// Why a request's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("an access key is required")]
    Missing,
    #[error("the access key is not valid (unknown, revoked or malformed)")]
    Invalid,
    #[error("this access key has no admin rights")]
    NotAdmin,
}

/// The gateway's key check: whether keys are required, and which exist.
#[derive(Clone)]
pub struct AuthGate {
    required: bool,
    store: Option<Arc<KeyStore>>,
    /// `auth.trusted_proxies`: whose `X-Forwarded-For` names the client.
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// What a request carried: nothing, something unusable, or a key.
enum Presented<'a> {
    Nothing,
    Malformed,
    Key(std::borrow::Cow<'a, str>),
}

impl AuthGate {
    /// `store` is `None` when the gateway has no key file (then no key is
    /// valid, and with `required` every request is refused).
    pub fn new(required: bool, store: Option<Arc<KeyStore>>) -> Self {
        AuthGate {
            required,
            store,
            trusted_proxies: Arc::from([]),
        }
    }

    /// `auth.trusted_proxies`.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.trusted_proxies
    }

    /// The same gate believing `X-Forwarded-For` from `proxies`.
    pub fn trusting(mut self, proxies: &[ipnet::IpNet]) -> Self {
        self.trusted_proxies = Arc::from(proxies);
        self
    }

    /// The client behind a request that came from `peer`
    /// ([`crate::identity::client_ip`]).
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &HeaderMap) -> std::net::IpAddr {
        crate::identity::client_ip(peer, headers, &self.trusted_proxies)
    }

    /// No keys, nothing required: every request is anonymous.
    pub fn open() -> Self {
        AuthGate::new(false, None)
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn store(&self) -> Option<&Arc<KeyStore>> {
        self.store.as_ref()
    }

    /// True while `key` is a valid, unrevoked key.
    pub fn still_valid(&self, key: &str) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| matches!(s.lookup(key), Lookup::Valid(_)))
    }

    /// The caller of a forward-proxy request (CONNECT or absolute-form),
    /// and the key that named it, if a valid one did (an intercepted
    /// session looks it up again per request).
    pub fn proxy(&self, headers: &HeaderMap) -> Result<(Identity, Option<Arc<str>>), Denied> {
        let presented = proxy_credentials(headers);
        let key = match &presented {
            Presented::Key(k) => Some(Arc::<str>::from(k.as_ref())),
            _ => None,
        };
        let id = self.check(presented, false)?;
        let key = key.filter(|_| id.user.is_some());
        Ok((id, key))
    }

    /// The caller of an admin route; refused unless its key is an admin's
    /// when keys are required.
    pub fn admin(&self, headers: &HeaderMap) -> Result<Identity, Denied> {
        self.check(bearer(headers), true)
    }

    /// The caller of a direct-API request (`Authorization: Bearer` first,
    /// else `x-api-key`).
    pub fn direct_api(&self, headers: &HeaderMap) -> Result<Identity, Denied> {
        let presented = match bearer(headers) {
            Presented::Nothing => match headers.get("x-api-key").map(|v| v.to_str()) {
                None => Presented::Nothing,
                Some(Ok(k)) => Presented::Key(k.trim().into()),
                Some(Err(_)) => Presented::Malformed,
            },
            other => other,
        };
        self.check(presented, false)
    }

    fn check(&self, presented: Presented<'_>, need_admin: bool) -> Result<Identity, Denied> {
        let found = match &presented {
            Presented::Nothing => None,
            Presented::Malformed => Some(Lookup::Unknown),
            Presented::Key(k) => Some(self.store.as_ref().map_or(Lookup::Unknown, |s| s.lookup(k))),
        };
        match found {
            Some(Lookup::Valid(id)) if need_admin && self.required && !id.admin => {
                tracing::debug!(
                    user = id.user.as_deref(),
                    "admin route refused: not an admin key"
                );
                Err(Denied::NotAdmin)
            }
            Some(Lookup::Valid(id)) => Ok(id),
            None if self.required => Err(Denied::Missing),
            None => Ok(Identity::anonymous()),
            Some(bad) => {
                match &bad {
                    Lookup::Revoked(id) => {
                        tracing::info!(key_id = %id, "a revoked access key was presented")
                    }
                    _ => tracing::debug!("an unknown or malformed access key was presented"),
                }
                if self.required {
                    Err(Denied::Invalid)
                } else {
                    Ok(Identity::anonymous())
                }
            }
        }
    }
}

/// `Proxy-Authorization: Basic base64(user:KEY)` (or `Bearer KEY`).
fn proxy_credentials(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
        return Presented::Nothing;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Key(rest.trim().into());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Presented::Malformed;
    }
    basic_key(rest).map_or(Presented::Malformed, |k| Presented::Key(k.into()))
}

/// The decoded `user:password` of `Basic` credentials; `encoded` is what
/// follows the scheme.
fn basic_decoded(encoded: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

/// `user` and `password` of decoded `Basic` credentials (the password
/// empty without a `:`).
fn user_password(decoded: &str) -> (&str, &str) {
    decoded.split_once(':').unwrap_or((decoded, ""))
}

/// The key in `Basic` credentials (`base64(user:key)`): the password, or
/// the user name when the password is empty (`key:`).
fn basic_key(encoded: &str) -> Option<String> {
    let decoded = String::from_utf8(basic_decoded(encoded)?).ok()?;
    let (user, password) = user_password(&decoded);
    Some(if password.is_empty() { user } else { password }.to_string())
}

/// What follows the scheme of a `Basic` credential header value.
fn basic_value(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("basic").then_some(rest)
}

/// The key of `Basic` credentials in a header value, if it is one.
fn basic_value_key(value: &str) -> Option<String> {
    basic_value(value).and_then(basic_key)
}

/// `Authorization: Bearer KEY`, or `Basic` credentials holding the key (a
/// base URL written `http://user:KEY@host/v1`).
fn bearer(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::Nothing;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    match bearer_token(value) {
        Some(key) => Presented::Key(key.into()),
        None => basic_value_key(value).map_or(Presented::Malformed, |k| Presented::Key(k.into())),
    }
}

/// The token of a `Bearer TOKEN` credential; `None` for another scheme.
/// Auth schemes are case-insensitive (RFC 9110 §11.1): `BEARER` counts.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// True when a credential header's value (`Authorization`, `x-api-key`,
/// `api-key`) is a kt access key, bare, as a `Bearer` token or inside
/// `Basic` credentials: the check that keeps one from going upstream, so
/// it reads the value as loosely as the gate or any provider might.
pub fn is_access_key(value: &http::HeaderValue) -> bool {
    let bytes = value.as_bytes();
    // Every intercepted request's credential comes here: most are a
    // provider's key, told apart by a scan for the prefix alone.
    let prefix = super::key::KEY_PREFIX.as_bytes();
    if bytes.windows(prefix.len()).any(|w| w == prefix) {
        let value = String::from_utf8_lossy(bytes);
        let token = bearer_token(&value).unwrap_or(value.trim());
        if token.starts_with(super::key::KEY_PREFIX) {
            return true;
        }
    }
    // Base64 hides the prefix: only `Basic` values are decoded, and
    // either part may hold the key.
    let decoded = std::str::from_utf8(bytes)
        .ok()
        .and_then(basic_value)
        .and_then(basic_decoded);
    decoded.is_some_and(|d| {
        let text = String::from_utf8_lossy(&d);
        let (user, password) = user_password(&text);
        user.starts_with(super::key::KEY_PREFIX) || password.starts_with(super::key::KEY_PREFIX)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::file::{create, revoke};
    use http::HeaderValue;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<KeyStore>,
        dev: String,
        admin: String,
        revoked: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let dev = create(&path, "dev1", Some("platform"), false).unwrap().key;
        let admin = create(&path, "ops", None, true).unwrap().key;
        let old = create(&path, "gone", None, true).unwrap();
        revoke(&path, &old.record.id).unwrap();
        Fixture {
            store: Arc::new(KeyStore::open(&path).unwrap()),
            _dir: dir,
            dev,
            admin,
            revoked: old.key,
        }
    }

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn basic(user: &str, key: &str) -> (&'static str, String) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
        ("proxy-authorization", format!("Basic {b64}"))
    }

    /// Who a forward-proxy request is.
    fn proxy(gate: &AuthGate, headers: &HeaderMap) -> Result<Identity, Denied> {
        gate.proxy(headers).map(|(id, _)| id)
    }

    #[test]
    fn access_keys_are_recognised_in_any_scheme_case() {
        for value in [
            "Bearer kt_x",
            "BEARER kt_x",
            "bEaReR\tkt_x",
            "kt_x",
            " kt_x ",
        ] {
            assert!(is_access_key(&HeaderValue::from_static(value)), "{value}");
        }
        for value in ["Bearer sk-x", "Basic kt_x", "sk-kt_x", "Bearer", ""] {
            assert!(!is_access_key(&HeaderValue::from_static(value)), "{value}");
        }
        assert_eq!(bearer_token("BEARER  kt_x "), Some("kt_x"));
        assert_eq!(bearer_token("Basic kt_x"), None);
        // `Basic base64(user:key)`, as a base URL `http://dev1:KEY@host`
        // makes clients send: the key is there once decoded.
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for creds in ["dev1:kt_x", "kt_x:", "kt_x"] {
            let value = HeaderValue::from_str(&format!("basic {}", b64(creds))).unwrap();
            assert!(is_access_key(&value), "{creds}");
        }
        for creds in ["dev1:sk-x", "user:"] {
            let value = HeaderValue::from_str(&format!("Basic {}", b64(creds))).unwrap();
            assert!(!is_access_key(&value), "{creds}");
        }
    }

    #[test]
    fn a_session_keeps_the_key_that_named_its_user() {
        let f = fixture();
        let gate = AuthGate::new(false, Some(f.store.clone()));
        let (_, key) = gate.proxy(&headers(&[basic("dev1", &f.dev)])).unwrap();
        assert_eq!(key.as_deref(), Some(f.dev.as_str()));
        let (id, key) = gate.proxy(&headers(&[basic("dev1", &f.revoked)])).unwrap();
        assert_eq!((id, key), (Identity::anonymous(), None));
    }

    #[test]
    fn proxy_credentials_when_required() {
        let f = fixture();
        let gate = AuthGate::new(true, Some(f.store.clone()));
        let dev = Identity::user("dev1", Some("platform"));
        assert_eq!(
            proxy(&gate, &headers(&[basic("dev1", &f.dev)])),
            Ok(dev.clone())
        );
        // The user part is informational; the key decides.
        assert_eq!(
            proxy(&gate, &headers(&[basic("someone", &f.dev)])),
            Ok(dev.clone())
        );
        // Key as the user name (`http://KEY@host`), and Bearer.
        assert_eq!(
            proxy(&gate, &headers(&[basic(&f.dev, "")])),
            Ok(dev.clone())
        );
        assert_eq!(
            proxy(
                &gate,
                &headers(&[("proxy-authorization", format!("bearer {}", f.dev))])
            ),
            Ok(dev)
        );
        assert_eq!(proxy(&gate, &HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(
            proxy(&gate, &headers(&[basic("dev1", &f.revoked)])),
            Err(Denied::Invalid)
        );
        assert_eq!(
            proxy(
                &gate,
                &headers(&[basic("dev1", &crate::keys::key::generate())])
            ),
            Err(Denied::Invalid)
        );
        for junk in ["Basic !!!", "Digest abc", "Basic"] {
            assert_eq!(
                proxy(
                    &gate,
                    &headers(&[("proxy-authorization", junk.to_string())])
                ),
                Err(Denied::Invalid),
                "{junk}"
            );
        }
        // Authorization is the upstream's business, not the proxy's.
        assert_eq!(
            proxy(
                &gate,
                &headers(&[("authorization", format!("Bearer {}", f.dev))])
            ),
            Err(Denied::Missing)
        );
    }

    #[test]
    fn not_required_attributes_good_keys_and_ignores_bad_ones() {
        let f = fixture();
        let gate = AuthGate::new(false, Some(f.store.clone()));
        assert_eq!(proxy(&gate, &HeaderMap::new()), Ok(Identity::anonymous()));
        assert_eq!(
            proxy(&gate, &headers(&[basic("x", &f.dev)])),
            Ok(Identity::user("dev1", Some("platform")))
        );
        assert_eq!(
            proxy(&gate, &headers(&[basic("x", &f.revoked)])),
            Ok(Identity::anonymous())
        );
        assert_eq!(gate.admin(&HeaderMap::new()), Ok(Identity::anonymous()));
        assert!(gate
            .admin(&headers(&[("authorization", format!("Bearer {}", f.dev))]))
            .is_ok());
        // No store at all: everybody is anonymous.
        assert_eq!(
            proxy(&AuthGate::open(), &headers(&[basic("x", &f.dev)])),
            Ok(Identity::anonymous())
        );
    }

    #[test]
    fn admin_routes_need_an_admin_key_when_required() {
        let f = fixture();
        let gate = AuthGate::new(true, Some(f.store.clone()));
        let bearer = |k: &str| headers(&[("authorization", format!("Bearer {k}"))]);
        assert_eq!(gate.admin(&HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(gate.admin(&bearer(&f.dev)), Err(Denied::NotAdmin));
        assert_eq!(gate.admin(&bearer(&f.revoked)), Err(Denied::Invalid));
        assert_eq!(gate.admin(&bearer("kt_nope")), Err(Denied::Invalid));
        let ops = gate.admin(&bearer(&f.admin)).unwrap();
        assert!(ops.admin && ops.user.as_deref() == Some("ops"));
        // Proxy credentials do not open admin routes.
        assert_eq!(
            gate.admin(&headers(&[basic("ops", &f.admin)])),
            Err(Denied::Missing)
        );
        assert_eq!(
            gate.admin(&headers(&[("authorization", format!("Basic {}", f.admin))])),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn direct_api_takes_bearer_or_x_api_key() {
        let f = fixture();
        let gate = AuthGate::new(true, Some(f.store.clone()));
        let dev = Identity::user("dev1", Some("platform"));
        assert_eq!(
            gate.direct_api(&headers(&[("authorization", format!("Bearer {}", f.dev))])),
            Ok(dev.clone())
        );
        assert_eq!(
            gate.direct_api(&headers(&[("x-api-key", f.dev.clone())])),
            Ok(dev)
        );
        assert_eq!(gate.direct_api(&HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(
            gate.direct_api(&headers(&[("x-api-key", "sk-provider-key".into())])),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn required_without_a_key_file_refuses_everyone() {
        let gate = AuthGate::new(true, None);
        assert_eq!(proxy(&gate, &HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(
            proxy(
                &gate,
                &headers(&[basic("x", &crate::keys::key::generate())])
            ),
            Err(Denied::Invalid)
        );
    }
}
