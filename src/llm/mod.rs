//! Knowledge about LLM providers: which hosts carry LLM traffic.

pub mod hosts;
