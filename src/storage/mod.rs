//! Hosted mode's shared store: the audit events and access keys of every
//! replica in one PostgreSQL database (`storage.url: postgres://…`).
//!
//! - [`Db`] (this file): the connection pool, TLS choice and timeouts.
//! - [`schema`]: versioned migrations, applied on start under an advisory
//!   lock so that replicas starting together apply each one once.
//! - [`replica`]: the name of this replica's chain in the shared table.
//! - [`ship`]: copies the local hash-chained log (the spool) into the
//!   table; a database outage delays events, never loses them.
//! - [`feed`]: the whole team's events, history then new ones, for `kt
//!   events tail` and `/_kt/events`.
//! - [`audit`]: chain verification and cost reports over the table.
//! - [`hosted`]: a gateway's link: migrations, watcher and shipper.
//! - [`keys`]: access keys in the table, and the gateway's watcher that
//!   keeps its key index in step within a second.
//!
//! The local log stays the first place every event is written: requests
//! never wait on the database, and the spool is what makes an outage
//! lossless.

pub mod audit;
pub mod feed;
pub mod hosted;
pub mod keys;
pub mod replica;
pub mod schema;
pub mod ship;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// How long a connection attempt (TCP + TLS + auth) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Connections per process: one shipper, one feed poller, one key watcher
/// and the odd CLI query.
const POOL_SIZE: usize = 6;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage url: {0}")]
    Url(String),
    #[error("cannot get a database connection to {url}: {reason}")]
    Pool { url: String, reason: String },
    #[error("database {url}: {source}")]
    Query {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("TLS setup for the database failed: {0}")]
    Tls(String),
    #[error("the database schema has version {found}, newer than this kt understands ({known}); upgrade kt")]
    NewerSchema { found: i32, known: i32 },
    #[error("local audit log: {0}")]
    Spool(#[from] crate::events::EventsError),
    #[error("{0}")]
    Keys(#[from] crate::keys::KeysError),
    #[error("a storage task failed: {0}")]
    Task(String),
    #[error("local audit log: events not yet shipped are gone (the next kept one follows {next}, not {after}, the last one shipped); shipping waits: `kt events verify` shows where the log is cut")]
    Gap { after: String, next: String },
    #[error("local audit log {}: the line after {} is not a sealed event; neither it nor any event after it is shipped; shipping waits: `kt events verify` shows the damage", path.display(), after_text(.after))]
    Damaged {
        path: std::path::PathBuf,
        /// The hash of the last good event before it, if any.
        after: Option<String>,
    },
}

fn after_text(after: &Option<String>) -> String {
    match after {
        Some(hash) => format!("event {hash}"),
        None => "the start of the chain".into(),
    }
}

impl StorageError {
    /// Stable snake_case label.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::Url(_) => "storage_url",
            StorageError::Pool { .. } => "storage_unavailable",
            StorageError::Query { .. } => "storage_query",
            StorageError::Tls(_) => "storage_tls",
            StorageError::NewerSchema { .. } => "storage_schema_newer",
            StorageError::Spool(_) => "storage_spool",
            StorageError::Keys(_) => "storage_keys",
            StorageError::Task(_) => "storage_task",
            StorageError::Gap { .. } => "storage_gap",
            StorageError::Damaged { .. } => "storage_damaged",
        }
    }
}

impl StorageError {
    pub(crate) fn task(e: tokio::task::JoinError) -> StorageError {
        StorageError::Task(e.to_string())
    }
}

/// A pool of connections to the shared database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// The URL with any password hidden, for messages.
    shown: Arc<str>,
}

impl Db {
    /// A pool for `url`; no connection is made until one is needed, so a
    /// gateway starts (and serves) while the database is down.
    ///
    /// TLS: `sslmode=require` connects with TLS verified against the OS
    /// roots; otherwise (libpq's default `prefer` included) the connection
    /// is plain TCP, as inside a cluster network. An unverified TLS
    /// connection is never made.
    pub fn new(url: &str) -> Result<Db, StorageError> {
        crate::install_crypto_provider();
        let shown: Arc<str> = Arc::from(crate::config::redact_userinfo(url).as_str());
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StorageError::Url(format!("{shown}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("kt");
        }
        if config.get_ssl_mode() != SslMode::Require {
            config.ssl_mode(SslMode::Disable);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Url(format!("{shown}: {e}")))?;
        Ok(Db { pool, shown })
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Db, StorageError> {
        let db = Db::new(url)?;
        schema::migrate(&db).await?;
        Ok(db)
    }

    /// The URL, password hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A pooled connection.
    pub async fn conn(&self) -> Result<deadpool_postgres::Object, StorageError> {
        self.pool.get().await.map_err(|e| StorageError::Pool {
            url: self.shown.to_string(),
            reason: pool_reason(&e),
        })
    }

    /// Wraps a query error with the database it came from.
    pub(crate) fn err(&self, source: tokio_postgres::Error) -> StorageError {
        StorageError::Query {
            url: self.shown.to_string(),
            source,
        }
    }
}

/// The innermost cause: "connection refused" rather than "error connecting".
fn pool_reason(e: &deadpool_postgres::PoolError) -> String {
    use std::error::Error as _;
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}

fn tls_config() -> Result<rustls::ClientConfig, StorageError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let provider = Arc::new(crate::crypto_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
