//! The in-process tier: a bounded map of entries (moka, weighed by bytes,
//! least-recently-used out first) that each expire after their own TTL.
//!
//! Expiry is checked on read against `tokio::time::Instant`, so it is exact
//! and testable with paused time; moka's own per-entry expiry only reclaims
//! the memory of entries nobody reads again.

use super::entry::Entry;
use super::key::Key;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// An entry and the moment it stops being served.
#[derive(Debug)]
pub struct Item {
    pub entry: Entry,
    pub expires: Instant,
}

struct Expiry;

impl moka::Expiry<Key, Arc<Item>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        item: &Arc<Item>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(item.expires.saturating_duration_since(Instant::now()))
    }
}

/// The in-process tier.
pub struct Memory {
    map: moka::sync::Cache<Key, Arc<Item>>,
}

impl Memory {
    /// A tier holding at most `max_bytes` of entries.
    pub fn new(max_bytes: u64) -> Self {
        let map = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &Key, v: &Arc<Item>| u32::try_from(v.entry.size()).unwrap_or(u32::MAX))
            .expire_after(Expiry)
            // Plain LRU. moka's default (TinyLFU) admits a new entry into a
            // full tier only if its key was asked for more often than the
            // entries it would push out; a key is stored right after its
            // first miss, so once the tier filled most new answers were
            // dropped just after being stored.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Memory { map }
    }

    /// The live entry under `key`, if any.
    pub fn get(&self, key: &Key) -> Option<Arc<Item>> {
        let item = self.map.get(key)?;
        if Instant::now() >= item.expires {
            self.map.invalidate(key);
            return None;
        }
        Some(item)
    }

    /// Stores `entry` for `ttl` from now.
    pub fn insert(&self, key: Key, entry: Entry, ttl: Duration) -> Arc<Item> {
        let item = Arc::new(Item {
            entry,
            expires: Instant::now() + ttl,
        });
        self.map.insert(key, item.clone());
        item
    }

    /// Drops every entry (of `scope` only, when given); returns how many.
    pub fn purge(&self, scope: Option<&str>) -> u64 {
        let mut n = 0;
        for (key, item) in self.map.iter() {
            if scope.is_none_or(|s| item.entry.scope == s) {
                self.map.invalidate(&*key);
                n += 1;
            }
        }
        self.map.run_pending_tasks();
        n
    }

    /// Entries held and their bytes (after pending evictions are applied).
    pub fn usage(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.entry_count(), self.map.weighted_size())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::entry::Stored;
    use bytes::Bytes;

    fn entry(scope: &str, body: &'static [u8]) -> Entry {
        Entry {
            status: 200,
            headers: http::HeaderMap::new(),
            body: Stored::Whole(Bytes::from_static(body)),
            scope: scope.into(),
            provider: "openai".into(),
            created_ms: 0,
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let m = Memory::new(1 << 20);
        let k = Key([1; 32]);
        m.insert(k, entry("global", b"x"), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(m.get(&k).is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(m.get(&k).is_none());
    }

    #[test]
    fn purge_by_scope_keeps_other_scopes() {
        let m = Memory::new(1 << 20);
        m.insert(Key([1; 32]), entry("team:a", b"1"), Duration::from_secs(60));
        m.insert(Key([2; 32]), entry("team:b", b"2"), Duration::from_secs(60));
        assert_eq!(m.purge(Some("team:a")), 1);
        assert!(m.get(&Key([1; 32])).is_none());
        assert!(m.get(&Key([2; 32])).is_some());
        assert_eq!(m.purge(None), 1);
        assert_eq!(m.usage().0, 0);
    }

    #[test]
    fn the_tier_is_bounded_by_bytes() {
        static BIG: [u8; 4096] = [b'x'; 4096];
        let m = Memory::new(16 * 1024);
        for i in 0..64u8 {
            m.insert(Key([i; 32]), entry("global", &BIG), Duration::from_secs(60));
        }
        let (_, bytes) = m.usage();
        assert!(bytes <= 16 * 1024, "{bytes}");
    }

    /// A full tier makes room for what it is given: the answer just stored
    /// is the one the next identical request reads, not one turned away
    /// for being new (frequency-based admission did that, while the store
    /// was counted).
    #[test]
    fn a_full_tier_keeps_the_newest_entry() {
        static BIG: [u8; 4096] = [b'x'; 4096];
        let m = Memory::new(16 * 1024);
        for i in 0..3u8 {
            m.insert(Key([i; 32]), entry("global", &BIG), Duration::from_secs(60));
            // Read often, as popular entries are.
            for _ in 0..4 {
                assert!(m.get(&Key([i; 32])).is_some());
            }
        }
        m.usage();
        for i in 3..8u8 {
            let k = Key([i; 32]);
            m.insert(k, entry("global", &BIG), Duration::from_secs(60));
            m.usage();
            assert!(m.get(&k).is_some(), "entry {i} was turned away");
        }
        // The least recently used went out to make room.
        assert!(m.get(&Key([0; 32])).is_none());
        let (_, bytes) = m.usage();
        assert!(bytes <= 16 * 1024, "{bytes}");
    }
}
