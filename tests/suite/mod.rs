mod certs;
mod chain;
mod cli;
mod config;
mod errors;
mod intercept;
mod lifecycle;
mod tunnel;
