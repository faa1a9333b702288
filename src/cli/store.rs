//! Where stored state lives for the commands that read or write it (`keys`,
//! `events`, `report`, and the gateway): `--storage URL` (env
//! `KEEPTRUSTS_STORAGE`), else the policy config's `storage:`, else the
//! files under the home folder.

use super::HomeArgs;
use crate::config::{Config, Storage};
use crate::storage::Db;
use anyhow::Context as _;
use std::path::PathBuf;

/// The flags every storage-reading command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Policy config whose `storage:` names the store.
    #[arg(long, value_name = "FILE")]
    pub policy_config: Option<PathBuf>,
    /// Storage URL (`postgres://USER@HOST:PORT/DB`) or folder; overrides
    /// the policy config's.
    #[arg(long, value_name = "URL", env = "KEEPTRUSTS_STORAGE")]
    pub storage: Option<String>,
}

/// The resolved store.
#[derive(Debug, Clone)]
pub enum Store {
    /// Files in a folder: `events/` and `keys.json`.
    Files(PathBuf),
    /// The shared database of a hosted gateway.
    Postgres(String),
}

impl StoreArgs {
    pub fn resolve(&self, home: &HomeArgs) -> anyhow::Result<Store> {
        let config = match &self.policy_config {
            Some(path) if self.storage.is_none() => Some(Config::load(path)?),
            _ => None,
        };
        resolve(self.storage.as_deref(), config.as_ref(), home)
    }
}

/// `--storage`/env first, then the config's `storage:`, then the home folder.
pub fn resolve(
    flag: Option<&str>,
    config: Option<&Config>,
    home: &HomeArgs,
) -> anyhow::Result<Store> {
    let storage = match flag.filter(|s| !s.trim().is_empty()) {
        Some(url) => {
            Some(Storage::parse(url).map_err(|e| anyhow::anyhow!("--storage {url:?}: {e}"))?)
        }
        None => config.and_then(|c| c.storage.clone()),
    };
    Ok(match storage {
        None => Store::Files(home.home()?),
        Some(Storage::Files { dir }) => Store::Files(dir),
        Some(Storage::Postgres { url }) => Store::Postgres(url),
    })
}

impl Store {
    /// Connects (and migrates) the shared database.
    pub async fn db(url: &str) -> anyhow::Result<Db> {
        Db::open(url).await.context("cannot open the shared store")
    }
}

/// A single-threaded runtime for a command's database work.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
