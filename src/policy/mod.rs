//! The policy engine: the checks and rewrites kt applies to LLM traffic.

pub mod secrets;
