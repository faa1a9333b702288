#![no_main]
//! See `fuzz/checks/json_text.rs` for the input layout and the invariants; the
//! same checks run on `fuzz/regressions/json_text/` in `cargo test`.

#[path = "../checks/json_text.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
