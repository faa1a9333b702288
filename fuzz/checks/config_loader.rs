//! `config::Config::parse` (the policy config YAML, strict validation) on
//! arbitrary text, lossily converted from the input bytes.
//!
//! Checks: no panic, whatever the YAML; errors are expected and fine, and
//! their messages must render.

use keeptrusts::config::Config;
use std::path::Path;

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            let _ = config.chain().count();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
