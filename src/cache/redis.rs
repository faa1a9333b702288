//! The shared tier: entries in Redis under `<prefix><scope>:<key hex>`, set
//! with the entry's TTL, read by every replica.
//!
//! Redis is a speed-up, never a dependency: every call is bounded by a
//! timeout, a failure counts as a miss (with a warning and a metric), and
//! after one the tier is skipped for a short cool-down
//! ([`RedisLink`](crate::redis_link::RedisLink)).

use super::entry::Entry;
use super::key::Key;
use super::{CacheError, Stats};
use crate::redis_link::RedisLink;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Keys asked for per SCAN step by purge and stats.
const SCAN_COUNT: u64 = 500;

/// One Redis server (or the proxy in front of it).
pub struct RedisTier {
    link: RedisLink,
    prefix: String,
    stats: Arc<Stats>,
}

impl RedisTier {
    /// A tier for `url` (`redis://` or `rediss://`); no connection yet.
    pub fn new(url: &str, prefix: &str, stats: Arc<Stats>) -> Result<Self, CacheError> {
        Ok(RedisTier {
            link: RedisLink::new(url, "cache")?,
            prefix: prefix.to_string(),
            stats,
        })
    }

    fn key_name(&self, scope: &str, key: &Key) -> String {
        format!("{}{}:{}", self.prefix, scope, key.hex())
    }

    fn resting(&self) -> bool {
        self.link.resting()
    }

    fn failed(&self, op: &str, e: &CacheError) {
        self.stats.redis_errors.fetch_add(1, Relaxed);
        self.link.failed(op, e.as_link(), "serving without it");
    }

    fn recovered(&self) {
        self.link.recovered();
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CacheError> {
        Ok(self.link.run(cmd).await?)
    }

    /// The entry of `scope` under `key`; `None` on a miss, on any failure,
    /// and while resting.
    pub async fn get(&self, scope: &str, key: &Key) -> Option<Entry> {
        if self.resting() {
            return None;
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key_name(scope, key));
        let raw: Option<Vec<u8>> = match self.run(&cmd).await {
            Ok(v) => v,
            Err(e) => {
                self.failed("get", &e);
                return None;
            }
        };
        self.recovered();
        let entry = match Entry::decode(Bytes::from(raw?)) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, key = %key.short(), "cache: unreadable Redis entry ignored");
                return None;
            }
        };
        // The scope is in the key already; checked again because an entry
        // crossing scopes is the one failure a cache must never have.
        (entry.scope == scope).then_some(entry)
    }

    /// Stores an encoded entry of `scope` for `ttl`; failures are logged
    /// and counted.
    pub async fn set(&self, scope: &str, key: &Key, encoded: Bytes, ttl: Duration) {
        if self.resting() || ttl.is_zero() {
            return;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key_name(scope, key))
            .arg(encoded.as_ref())
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        match self.run::<()>(&cmd).await {
            Ok(()) => self.recovered(),
            Err(e) => self.failed("set", &e),
        }
    }

    /// The SCAN pattern of every entry (of one scope).
    fn pattern(&self, scope: Option<&str>) -> String {
        match scope {
            None => format!("{}*", glob_escape(&self.prefix)),
            // Exactly 64 characters after the scope, so `user:dev1` never
            // matches the entries of a user called `dev1:x`.
            Some(s) => format!(
                "{}{}:{}",
                glob_escape(&self.prefix),
                glob_escape(s),
                "?".repeat(64)
            ),
        }
    }

    /// Visits every key matching `pattern` in batches.
    async fn scan(&self, pattern: &str, mut each: impl AsyncBatch) -> Result<(), CacheError> {
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<Vec<u8>>) = self.run(&cmd).await?;
            if !keys.is_empty() {
                each.batch(self, keys).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Deletes every entry (of `scope`); returns how many. Errors are
    /// returned, not swallowed: this is an operator's command.
    pub async fn purge(&self, scope: Option<&str>) -> Result<u64, CacheError> {
        let mut deleter = Deleter(0);
        self.scan(&self.pattern(scope), &mut deleter).await?;
        Ok(deleter.0)
    }

    /// Entries stored and their bytes.
    pub async fn usage(&self) -> Result<(u64, u64), CacheError> {
        let mut sizer = Sizer(0, 0);
        self.scan(&self.pattern(None), &mut sizer).await?;
        Ok((sizer.0, sizer.1))
    }

    /// The URL without credentials.
    pub fn shown(&self) -> &str {
        self.link.shown()
    }
}

/// Work done on each batch of scanned keys.
trait AsyncBatch {
    async fn batch(&mut self, tier: &RedisTier, keys: Vec<Vec<u8>>) -> Result<(), CacheError>;
}

impl<T: AsyncBatch> AsyncBatch for &mut T {
    async fn batch(&mut self, tier: &RedisTier, keys: Vec<Vec<u8>>) -> Result<(), CacheError> {
        (**self).batch(tier, keys).await
    }
}

struct Deleter(u64);

impl AsyncBatch for Deleter {
    async fn batch(&mut self, tier: &RedisTier, keys: Vec<Vec<u8>>) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("UNLINK");
        for k in &keys {
            cmd.arg(k.as_slice());
        }
        let n: u64 = tier.run(&cmd).await?;
        self.0 += n;
        Ok(())
    }
}

struct Sizer(u64, u64);

impl AsyncBatch for Sizer {
    async fn batch(&mut self, tier: &RedisTier, keys: Vec<Vec<u8>>) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("STRLEN").arg(k.as_slice());
        }
        let lens: Vec<u64> = tier.link.run_pipe(&pipe).await?;
        // A key may expire between SCAN and STRLEN (length 0).
        self.0 += lens.iter().filter(|l| **l > 0).count() as u64;
        self.1 += lens.iter().sum::<u64>();
        Ok(())
    }
}

/// `s` with Redis glob metacharacters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_globs_and_pin_the_key_length() {
        let t = RedisTier::new("redis://127.0.0.1:1/0", "kt:*:", Arc::default()).unwrap();
        assert_eq!(t.pattern(None), "kt:\\*:*");
        let p = t.pattern(Some("user:a?b"));
        assert!(p.starts_with("kt:\\*:user:a\\?b:"));
        assert!(p.ends_with(&"?".repeat(64)));
    }

    #[test]
    fn bad_urls_are_errors() {
        assert!(RedisTier::new("http://x", "p:", Arc::default()).is_err());
    }
}
