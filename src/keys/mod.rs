//! Access keys (contract §4): personal keys that name the user and team
//! behind a request, checked on the forward proxy, the admin routes and the
//! direct API.
//!
//! - [`key`]: generating keys and ids; the digests stored instead of keys.
//! - [`file`]: `keys.json` under the home folder, written atomically.
//! - [`store`]: the gateway's in-memory index of the file, reloaded when
//!   `kt keys create`/`revoke` change it.
//! - [`gate`]: turning a request's credentials into an [`Identity`], or the
//!   reason it is refused, under `auth.required`.
//!
//! [`Identity`]: crate::identity::Identity

pub mod file;
pub mod gate;
pub mod key;
pub mod store;

pub use file::{KeyFile, KeyRecord};
pub use gate::{AuthGate, Denied};
pub use store::{KeyStore, Lookup};

use std::path::PathBuf;

/// The name of the key file in the home folder.
pub const KEYS_FILE: &str = "keys.json";

/// Why reading or changing the stored keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("access key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("access key file {path} is not valid: {reason}; it was left untouched (fix it, or move it away to start over)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("access key file {path} has format version {version}, newer than this kt understands (1); upgrade kt")]
    Newer { path: PathBuf, version: u32 },
    #[error("access key file {path} is being changed by another kt (lock file {lock}); if no other kt is running, remove the lock file")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("no access key with id {0} (see `kt keys list`)")]
    UnknownId(String),
    #[error("{what} {value:?} is not valid: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}
