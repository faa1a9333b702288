#![no_main]
//! See `fuzz/checks/config_loader.rs` for the input layout and the invariants; the
//! same checks run on `fuzz/regressions/config_loader/` in `cargo test`.

#[path = "../checks/config_loader.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
