#![no_main]
//! See `fuzz/checks/connect_authority.rs` for the input layout and the invariants; the
//! same checks run on `fuzz/regressions/connect_authority/` in `cargo test`.

#[path = "../checks/connect_authority.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
