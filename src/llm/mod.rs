//! Knowledge about LLM providers: which hosts carry LLM traffic, how a
//! request is classified (provider, endpoint, dialect), where each wire
//! family keeps its text and usage, and the parsers that read LLM bodies
//! without disturbing them (JSON string rewriting, incremental SSE).

pub mod content;
pub mod family;
pub mod hosts;
pub mod inspect;
pub mod json_scan;
pub mod json_text;
pub mod pricing;
pub mod recognize;
pub mod sse;
pub mod stream;
pub mod tap;

#[cfg(test)]
mod fixtures;
