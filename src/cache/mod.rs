//! The engineering cache: exact-match answers to repeated LLM requests,
//! streams included, without contacting the provider.
//!
//! # Layout
//!
//! - [`key`]: what makes two requests the same (SHA-256 over a canonical
//!   form), and which requests are never cached.
//! - [`entry`]: a stored response and its binary form.
//! - [`memory`]: the in-process tier (bounded by bytes, per-entry TTL).
//! - [`redis`]: the optional shared tier for gateway replicas.
//! - [`flight`]: single flight, which is also the capture buffer.
//! - [`serve`]: the request path: lookup, replay, and the body wrapper that
//!   tees a response into the cache as it streams to the client.
//!
//! A [`Store`] is one set of tiers; [`Caches`] keeps one per distinct
//! backend so a policy reload keeps what was cached.

pub mod entry;
pub mod flight;
pub mod key;
pub mod memory;
pub mod redis;
pub mod serve;

use crate::config::{CacheBackend, CacheOptions, Scope};
use crate::redis_link::LinkError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// In-process tier size when `max_bytes` is not set.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Largest response stored when `max_entry_bytes` is not set.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 4 << 20;
/// Redis key prefix when `key_prefix` is not set.
pub const DEFAULT_KEY_PREFIX: &str = "kt:cache:";
/// With a Redis tier, replicas keep their in-process copy at most this
/// long, so a purge (which reaches Redis and one gateway) reaches every
/// replica soon after.
pub const REPLICA_COPY_TTL: Duration = Duration::from_secs(60);

/// Errors of the cache tiers. On the request path they are logged and
/// counted, never returned to a client.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] LinkError),
}

impl From<::redis::RedisError> for CacheError {
    fn from(e: ::redis::RedisError) -> Self {
        CacheError::Redis(LinkError::Redis(e))
    }
}

impl CacheError {
    /// Stable snake_case label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.as_link().kind()
    }

    /// The Redis failure behind it.
    pub fn as_link(&self) -> &LinkError {
        match self {
            CacheError::Redis(e) => e,
        }
    }
}

/// Counters since start, for `/metrics`, `/_kt/cache` and `kt cache stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Answered from a tier or a concurrent identical request.
    pub hits: AtomicU64,
    /// Of the hits, those read from this process's memory. Counted on its
    /// own rather than derived from the others: a scrape between a hit's
    /// two bumps would otherwise see this counter go down.
    pub memory_hits: AtomicU64,
    /// Of the hits, those that followed another request's upstream call.
    pub followed: AtomicU64,
    /// Of the hits, those read from Redis.
    pub redis_hits: AtomicU64,
    pub misses: AtomicU64,
    /// Requests the cache did not look up (no-cache, sampling, ...).
    pub bypasses: AtomicU64,
    /// Responses stored.
    pub stores: AtomicU64,
    /// Responses not stored (errors, truncated, too large, ...).
    pub not_stored: AtomicU64,
    pub redis_errors: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Which tiers a store has (two policies with the same spec share one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    backend: CacheBackend,
    max_bytes: u64,
    prefix: String,
}

impl Spec {
    fn of(o: &CacheOptions) -> Spec {
        Spec {
            backend: o.backend.clone(),
            max_bytes: o.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            prefix: o
                .key_prefix
                .as_deref()
                .unwrap_or(DEFAULT_KEY_PREFIX)
                .to_string(),
        }
    }

    /// Whether `o` asks for these tiers (without building its spec: a
    /// lookup allocates nothing).
    fn serves(&self, o: &CacheOptions) -> bool {
        self.backend == o.backend
            && self.max_bytes == o.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
            && self.prefix == o.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX)
    }
}

/// One set of tiers.
pub struct Store {
    spec: Spec,
    pub memory: memory::Memory,
    pub redis: Option<redis::RedisTier>,
    pub flights: Arc<flight::Flights>,
    pub stats: Arc<Stats>,
}

impl Store {
    /// How long the in-process copy of an entry with `ttl` lives.
    fn memory_ttl(&self, ttl: Duration) -> Duration {
        if self.redis.is_some() {
            ttl.min(REPLICA_COPY_TTL)
        } else {
            ttl
        }
    }
}

/// The stores of the running gateway, kept across policy reloads.
#[derive(Default)]
pub struct Caches {
    stores: Mutex<Vec<Arc<Store>>>,
    stats: Arc<Stats>,
}

impl Caches {
    pub fn new() -> Self {
        Self::default()
    }

    /// The store for a cache policy's options (created on first use; a
    /// lookup allocates nothing).
    pub fn store(&self, o: &CacheOptions) -> Result<Arc<Store>, CacheError> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.iter().find(|s| s.spec.serves(o)) {
            return Ok(s.clone());
        }
        let spec = Spec::of(o);
        let redis = match &o.backend {
            CacheBackend::Memory => None,
            CacheBackend::Redis(url) => Some(redis::RedisTier::new(
                url,
                &spec.prefix,
                self.stats.clone(),
            )?),
        };
        let store = Arc::new(Store {
            memory: memory::Memory::new(spec.max_bytes),
            redis,
            flights: Arc::default(),
            stats: self.stats.clone(),
            spec,
        });
        stores.push(store.clone());
        Ok(store)
    }

    /// Drops the stores that none of `options` (the cache policies of a
    /// reloaded chain) uses: their in-process entries would otherwise hold
    /// memory, up to their old `max_bytes`, for as long as the gateway
    /// runs. An exchange still using one keeps it until it ends.
    pub fn keep_only<'o>(&self, options: impl IntoIterator<Item = &'o CacheOptions>) {
        let options: Vec<&CacheOptions> = options.into_iter().collect();
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| options.iter().any(|o| s.spec.serves(o)));
    }

    /// Counters over every store.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn all(&self) -> Vec<Arc<Store>> {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Entries and bytes held in process, over every store.
    pub fn memory_usage(&self) -> (u64, u64) {
        self.all()
            .iter()
            .map(|s| s.memory.usage())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Drops in-process entries (of one scope id); returns how many.
    pub fn purge_memory(&self, scope: Option<&str>) -> u64 {
        self.all().iter().map(|s| s.memory.purge(scope)).sum()
    }

    /// Flights in progress, over every store.
    pub fn flights(&self) -> usize {
        self.all().iter().map(|s| s.flights.len()).sum()
    }

    /// The counters and in-process usage as a JSON object (the
    /// `/_kt/cache` admin route and `kt cache stats`).
    pub fn snapshot(&self) -> serde_json::Value {
        let s = &self.stats;
        let (entries, bytes) = self.memory_usage();
        serde_json::json!({
            "hits": s.hits.load(Relaxed),
            "followed": s.followed.load(Relaxed),
            "redis_hits": s.redis_hits.load(Relaxed),
            "misses": s.misses.load(Relaxed),
            "bypasses": s.bypasses.load(Relaxed),
            "stores": s.stores.load(Relaxed),
            "not_stored": s.not_stored.load(Relaxed),
            "redis_errors": s.redis_errors.load(Relaxed),
            "memory_entries": entries,
            "memory_bytes": bytes,
            "flights": self.flights(),
        })
    }
}

/// The scope id of a caller: who may read what they store. Users without a
/// team share the team `default`; anonymous traffic is user-less.
pub fn scope_id(scope: Scope, user: Option<&str>, team: Option<&str>) -> String {
    match scope {
        Scope::Global => "global".to_string(),
        Scope::Team => format!("team:{}", team.unwrap_or("default")),
        Scope::User => match user {
            Some(u) => format!("user:{u}"),
            None => "anonymous".to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scope_ids() {
        assert_eq!(scope_id(Scope::Team, Some("a"), Some("core")), "team:core");
        assert_eq!(scope_id(Scope::Team, Some("a"), None), "team:default");
        assert_eq!(scope_id(Scope::Team, None, None), "team:default");
        assert_eq!(scope_id(Scope::User, Some("a"), Some("core")), "user:a");
        assert_eq!(scope_id(Scope::User, None, None), "anonymous");
        assert_eq!(scope_id(Scope::Global, Some("a"), Some("core")), "global");
    }

    #[test]
    fn policies_with_the_same_backend_share_a_store() {
        let caches = Caches::new();
        let o = CacheOptions {
            ttl_seconds: 60,
            scope: Scope::Team,
            backend: CacheBackend::Memory,
            max_bytes: None,
            max_entry_bytes: None,
            allow_nondeterministic: false,
            key_prefix: None,
        };
        let a = caches.store(&o).unwrap();
        let b = caches
            .store(&CacheOptions {
                ttl_seconds: 5,
                ..o.clone()
            })
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = caches
            .store(&CacheOptions {
                max_bytes: Some(1 << 20),
                ..o
            })
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
