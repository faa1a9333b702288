#![no_main]
//! See `fuzz/checks/content_filter.rs` for the input layout and the
//! invariants; the same checks run on `fuzz/regressions/content_filter/` in
//! `cargo test`.

#[path = "../checks/content_filter.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
