#![no_main]
//! See `fuzz/checks/sse_decoder.rs` for the input layout and the invariants; the
//! same checks run on `fuzz/regressions/sse_decoder/` in `cargo test`.

#[path = "../checks/sse_decoder.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
