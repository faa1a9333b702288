//! One Redis server as kt's shared features use it (the cache's shared
//! tier, rate limits and budgets shared by replicas): connected on first
//! use, every call bounded, and after a failure left alone for a short
//! cool-down, so a dead Redis does not add a timeout to every request.
//!
//! The callers decide what a failure means (a cache miss, counting in
//! process); this only says when to try again and logs one warning per
//! outage.

use redis::aio::ConnectionManager;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Bound on one Redis call as the gateway makes it.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on (re)connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis is skipped after a failure.
const COOL_DOWN: Duration = Duration::from_secs(2);

/// A failed Redis call.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
}

impl LinkError {
    /// The connection broke (a Redis that went away while it sat idle shows
    /// so at its next use). The manager is making a new one by then, so the
    /// call is worth one more try: without it the first call after an
    /// outage fails, and the caller counts in process for a cool-down.
    fn is_stale_connection(&self) -> bool {
        matches!(self, LinkError::Redis(e) if e.is_connection_dropped() || e.is_io_error())
    }

    /// Stable snake_case label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Redis(e) if e.is_connection_refusal() => "redis_refused",
            LinkError::Redis(e) if e.is_timeout() => "redis_timeout",
            LinkError::Redis(_) => "redis_error",
            LinkError::Timeout => "redis_timeout",
        }
    }
}

/// A Redis server (or the proxy in front of it) and whether it is resting.
pub struct RedisLink {
    client: redis::Client,
    /// Created on first use (it needs the runtime), then reconnects itself.
    conn: OnceLock<ConnectionManager>,
    /// Skip Redis until then, after a failure.
    down_until: Mutex<Option<Instant>>,
    /// The URL without credentials, for logs.
    shown: String,
    /// What uses it, for log lines: `cache`, `limits`.
    user: &'static str,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("redis", &self.shown)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `url` (`redis://` or `rediss://`); no connection yet.
    pub fn new(url: &str, user: &'static str) -> Result<Self, redis::RedisError> {
        Ok(RedisLink {
            client: redis::Client::open(url)?,
            conn: OnceLock::new(),
            down_until: Mutex::new(None),
            shown: crate::config::redact_userinfo(url),
            user,
        })
    }

    /// The URL without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The connection, made lazily on first use.
    fn conn(&self) -> Result<ConnectionManager, LinkError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.conn.get_or_init(|| made).clone())
    }

    /// True while Redis is left alone after a failure.
    pub fn resting(&self) -> bool {
        let guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        guard.is_some_and(|t| Instant::now() < t)
    }

    /// Notes a failed call: Redis rests for [`COOL_DOWN`], with one warning
    /// per outage saying what kt does meanwhile (`fallback`). An outage
    /// lasts until a call succeeds, however many rests it takes; true when
    /// this failure began one (and was logged).
    pub fn failed(&self, op: &str, e: &LinkError, fallback: &str) -> bool {
        let mut guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        let begins = guard.is_none();
        if begins {
            tracing::warn!(
                redis = %self.shown,
                op,
                kind = e.kind(),
                error = %e,
                "{}: Redis unavailable, {fallback} until it answers (tried again every {}s)",
                self.user,
                COOL_DOWN.as_secs()
            );
        }
        *guard = Some(Instant::now() + COOL_DOWN);
        begins
    }

    /// Notes a successful call (ending a rest, with a log line).
    pub fn recovered(&self) {
        let mut guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if guard.take().is_some() {
            tracing::info!(redis = %self.shown, "{}: Redis reachable again", self.user);
        }
    }

    /// Runs one command within [`OP_TIMEOUT`].
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LinkError> {
        let mut conn = self.conn()?;
        match bounded(cmd.query_async(&mut conn)).await {
            Err(e) if e.is_stale_connection() => bounded(cmd.query_async(&mut conn)).await,
            other => other,
        }
    }

    /// Runs a pipeline within [`OP_TIMEOUT`].
    pub async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, LinkError> {
        let mut conn = self.conn()?;
        match bounded(pipe.query_async(&mut conn)).await {
            Err(e) if e.is_stale_connection() => bounded(pipe.query_async(&mut conn)).await,
            other => other,
        }
    }

    /// Runs a script (by its hash, loading it when the server lacks it)
    /// within [`OP_TIMEOUT`].
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LinkError> {
        let mut conn = self.conn()?;
        match bounded(invocation.invoke_async(&mut conn)).await {
            Err(e) if e.is_stale_connection() => bounded(invocation.invoke_async(&mut conn)).await,
            other => other,
        }
    }
}

/// `call`'s answer, or [`LinkError::Timeout`] after [`OP_TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Err(_) => Err(LinkError::Timeout),
        Ok(r) => Ok(r?),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_errors_and_credentials_are_not_shown() {
        assert!(RedisLink::new("http://x", "cache").is_err());
        let link = RedisLink::new("redis://kt:secret@127.0.0.1:1/0", "limits").unwrap();
        assert!(!link.shown().contains("secret"));
    }

    #[tokio::test]
    async fn a_failure_rests_the_link_and_a_success_ends_the_rest() {
        let link = RedisLink::new("redis://127.0.0.1:1/0", "limits").unwrap();
        assert!(!link.resting());
        let e = link.run::<()>(&redis::cmd("PING")).await.unwrap_err();
        assert!(link.failed("ping", &e, "counting in process"));
        assert!(link.resting());
        link.recovered();
        assert!(!link.resting());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_warned_about_once_however_long_it_lasts() {
        let link = RedisLink::new("redis://127.0.0.1:1/0", "limits").unwrap();
        let e = LinkError::Timeout;
        assert!(link.failed("ping", &e, "counting in process"), "begins");
        for _ in 0..3 {
            tokio::time::advance(COOL_DOWN * 2).await;
            assert!(!link.resting(), "the rest is over");
            assert!(
                !link.failed("ping", &e, "counting in process"),
                "same outage"
            );
        }
        link.recovered();
        assert!(
            link.failed("ping", &e, "counting in process"),
            "a new outage"
        );
    }

    /// A TCP relay to `target` on `port` (0: any) that `abort` cuts, its
    /// connections included.
    async fn relay(port: u16, target: std::net::SocketAddr) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn the_first_call_after_redis_returns_is_answered() {
        let Ok(url) = std::env::var("KT_TEST_REDIS_URL") else {
            println!("KT-TEST-SKIPPED the_first_call_after_redis_returns_is_answered: KT_TEST_REDIS_URL is not set");
            return;
        };
        let info = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_info()
            .clone();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            panic!("a TCP Redis URL: {url}")
        };
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        let (port, task) = relay(0, target).await;
        let link = RedisLink::new(&format!("redis://127.0.0.1:{port}/15"), "limits").unwrap();
        let ping = || async { link.run::<String>(&redis::cmd("PING")).await };
        assert_eq!(ping().await.unwrap(), "PONG");
        // An outage while idle: the connection dies unused.
        task.abort();
        let _ = task.await;
        let (_, task) = relay(port, target).await;
        assert_eq!(ping().await.unwrap(), "PONG", "after an outage while idle");
        // An outage seen by a call.
        task.abort();
        let _ = task.await;
        assert!(ping().await.is_err(), "through a cut relay");
        let (_, task) = relay(port, target).await;
        assert_eq!(ping().await.unwrap(), "PONG", "once Redis is back");
        task.abort();
    }
}
