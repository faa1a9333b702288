//! Keeptrusts `kt`: a gateway between AI coding assistants and LLM providers.
//!
//! # Layout
//!
//! - [`cli`]: the `kt` command line (clap). The only place that uses `anyhow`.
//! - [`config`]: the policy config file (`policy-config.yaml`), parsed strictly,
//!   and the gateway settings resolved from flags + config.
//! - [`tls`]: the local CA, per-host leaf minting with a bounded cache, and
//!   installing the CA into OS trust stores.
//! - [`upstream`]: everything outbound: `--connect-to`, upstream proxy
//!   chaining, verified TLS, and the pool of upstream HTTP connections.
//! - [`proxy`]: the listener: accept loop, CONNECT handling, blind tunnels,
//!   TLS interception, request forwarding, admin routes, and the one place
//!   that turns errors into HTTP responses.
//! - [`direct`]: the direct API's routing table: provider targets, model
//!   to target, upstream paths and the provider keys kt injects.
//! - [`doctor`]: the diagnostic checklist of `kt doctor` (gateway, CA
//!   trust, proxy variables, an end-to-end probe, keys, events, config).
//! - [`llm`]: knowledge about LLM providers (which hosts carry LLM traffic).
//! - [`policy`]: the policy engine applied to LLM traffic (chain, redaction,
//!   content filter, stream output checks, hot reload).
//! - [`cache`]: the engineering cache: exact-match keys, the in-process and
//!   Redis tiers, single flight, stream capture and replay.
//! - [`events`]: the audit trail: the event type, the hash-chained JSON-lines
//!   log (one writer fed by a bounded channel), verification, and reading it
//!   back for `kt events tail`.
//! - [`identity`]: who is behind a request (the access key's user and team).
//! - [`idle_poll`]: polling through the short gaps between requests on the
//!   single-threaded runtime, so a VM's slow wake-ups stay off the path.
//! - [`keys`]: access keys: generation, the hashed key file, and the check
//!   that turns a request's credentials into an identity.
//! - [`metrics`]: histograms and labelled counters of exchanges, rendered
//!   for `GET /metrics`.
//! - [`setup`]: client settings for `kt setup` (VS Code, Cody, Copilot,
//!   Continue, Zed, gptel, shell) and the careful merge into their files.
//! - [`shutdown`]: graceful-drain signalling shared by every connection task.
//! - [`redis_link`]: one Redis server as the cache and the shared limits
//!   use it: lazy connection, bounded calls, a cool-down after a failure.
//!
//! `proxy` knows nothing of LLMs beyond a host matcher it is handed; `tls`
//! and `upstream` never call into `proxy`.

pub mod cache;
pub mod cli;
pub mod config;
pub mod direct;
pub mod doctor;
pub mod events;
pub mod identity;
pub mod idle_poll;
pub mod keys;
pub mod llm;
pub mod loopback_tcp;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod redis_link;
pub mod setup;
pub mod shutdown;
pub mod storage;
pub mod tls;
pub mod upstream;

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

/// The TLS crypto provider for both legs of an intercepted connection:
/// aws-lc-rs with AES-128-GCM/SHA-256 preferred. kt's server leg picks by
/// this order, not the client's (`ignore_client_order`): the SHA-256 key
/// schedule and the 10-round cipher cost markedly less per handshake and
/// per byte than AES-256-GCM/SHA-384, which aws-lc-rs, OpenSSL and Node
/// list first; both remain offered.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let preferred = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    provider
        .cipher_suites
        .sort_by_key(|s| !preferred.iter().any(|p| p.suite() == s.suite()));
    provider
}

pub mod body;
pub mod gateway;
pub mod netio;

#[cfg(test)]
mod tests {
    #[test]
    fn aes_128_gcm_is_preferred_and_the_rest_still_offered() {
        let suites = super::crypto_provider().cipher_suites;
        assert_eq!(
            suites.first().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        let default = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        assert_eq!(suites.len(), default.len());
    }
}
