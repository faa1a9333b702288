//! Integration tests: real sockets on 127.0.0.1, a real TLS origin with its
//! own test CA (reached through `--connect-to`), gateways started in-process.
//! One test binary keeps link times down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod suite;
