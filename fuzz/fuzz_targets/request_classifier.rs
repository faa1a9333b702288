#![no_main]
//! See `fuzz/checks/request_classifier.rs` for the input layout and the invariants; the
//! same checks run on `fuzz/regressions/request_classifier/` in `cargo test`.

#[path = "../checks/request_classifier.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
