mod certs;
mod chain;
mod cli;
mod errors;
mod intercept;
mod lifecycle;
mod tunnel;
