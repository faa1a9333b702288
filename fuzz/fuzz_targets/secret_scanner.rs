#![no_main]
//! See `fuzz/checks/secret_scanner.rs` for the input layout and the invariants; the
//! same checks run on `fuzz/regressions/secret_scanner/` in `cargo test`.

#[path = "../checks/secret_scanner.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
