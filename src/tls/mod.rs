//! TLS on the client-facing side: the local CA, per-host leaf certificates
//! minted from it (cached, single-flight), and trusting the CA in OS stores.

pub mod ca;
pub mod mint;
pub mod trust;

pub use ca::{CaError, CaPaths, CertificateAuthority};
pub use mint::{CertCache, LeafMinter, MintError};
