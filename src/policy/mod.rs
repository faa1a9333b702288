//! The policy engine: the chain of checks and rewrites kt applies to LLM
//! traffic, built once per config and run per exchange.
//!
//! - [`engine`]: what the proxy calls; recognizes LLM requests, picks the
//!   policies that apply, swaps chains on reload.
//! - [`chain`]: the config's policies compiled, in order.
//! - [`exchange`]: one exchange's input and output phases and its record.
//! - [`stream`]: output policies on SSE streams with a bounded hold-back;
//!   [`whole`]: body policies over complete JSON (bodies, whole-text events).
//! - [`redact`], [`filter`], [`secrets`]: the `redact` and `content-filter`
//!   policies and the secret scanner behind them.
//! - [`limits`]: the counters of the `rate-limit` and `budget` policies.
//! - [`respond`]: block and `429` responses in the client's API dialect.
//! - [`reload`]: SIGHUP and file-change reloads.

pub mod chain;
pub mod engine;
pub mod exchange;
pub mod filter;
mod fold;
pub mod limits;
pub mod redact;
pub mod reload;
pub mod respond;
pub mod secrets;
pub mod stream;
mod whole;

pub use engine::Engine;
