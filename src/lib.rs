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
//! - [`llm`]: knowledge about LLM providers (which hosts carry LLM traffic).
//! - [`policy`]: the policy engine applied to LLM traffic;
//!   [`policy::secrets`] finds and redacts credentials in prompt text.
//! - [`shutdown`]: graceful-drain signalling shared by every connection task.
//!
//! `proxy` knows nothing of LLMs beyond a host matcher it is handed; `tls`
//! and `upstream` never call into `proxy`.

pub mod cli;
pub mod config;
pub mod llm;
pub mod policy;
pub mod proxy;
pub mod shutdown;
pub mod tls;
pub mod upstream;

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub mod body;
pub mod gateway;
pub mod netio;
