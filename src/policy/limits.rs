//! What the `rate-limit` and `budget` policies remember between requests:
//! token buckets (requests and LLM tokens per minute) and dollars spent per
//! UTC day and month, per key (a user, a team, or everyone), in this
//! process, or in Redis for every replica with a `backend` ([`shared`]).
//!
//! A request is admitted on the input phase ([`RateLimiter::admit`],
//! [`BudgetTracker::check`]) and its usage is charged when the exchange
//! completes ([`RateLimiter::charge_tokens`], [`BudgetTracker::spend`]):
//! like Envoy AI Gateway, a response that goes over a token limit or a
//! budget finishes, and the next request is refused. Every call takes the
//! time as an argument, so the arithmetic is tested without sleeping.
//!
//! Memory: one small entry per key seen. An entry that is "at rest" (its
//! buckets full again, its budget periods over) is indistinguishable from a
//! fresh one, so it is dropped when the map is swept; the map never holds
//! more than about twice the keys active within a refill window or budget
//! period.

use crate::config::{BudgetAction, BudgetOptions, CounterBackend, RateLimitOptions, Scope};
use crate::redis_link::LinkError;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use time::{Date, OffsetDateTime};
use tokio_util::task::TaskTracker;

#[path = "limits_shared.rs"]
pub(crate) mod shared;
use shared::{Op, Shared};

/// The Redis counters of a policy with a Redis `backend`.
fn shared_of(policy: &str, backend: &CounterBackend) -> Result<Option<Shared>, LinkError> {
    match backend {
        CounterBackend::Memory => Ok(None),
        CounterBackend::Redis { url, key_prefix } => {
            Ok(Some(Shared::new(url, key_prefix, policy)?))
        }
    }
}

/// Failed or timed-out Redis calls of shared limits since start, for
/// `/metrics`: process-wide, so a reload does not reset the counter.
static REDIS_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Failed Redis calls of shared limits since start.
pub fn redis_errors() -> u64 {
    REDIS_ERRORS.load(Relaxed)
}

/// Notes a failed call: counted, and Redis rests while this process counts.
fn failed(s: &Shared, op: &str, e: &LinkError) {
    REDIS_ERRORS.fetch_add(1, Relaxed);
    s.link.failed(op, e, "counting in this process");
}

/// Runs `work` (a write to shared counters) beside the request, tracked by
/// `tasks` when given so a drain waits for it. `false` outside a runtime.
fn in_background(
    tasks: Option<&TaskTracker>,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    match tasks {
        Some(t) => drop(t.spawn(work)),
        None => drop(tokio::spawn(work)),
    }
    true
}

/// Whose counters a request uses. Mirrors the cache's scope ids
/// ([`crate::cache::scope_id`]): users without a team share the team
/// `default`; anonymous traffic is one user. Built from the identity's
/// `Arc<str>`s, so making one costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Global,
    Anonymous,
    User(Arc<str>),
    /// `None` is the team `default` (no team, or one named so).
    Team(Option<Arc<str>>),
}

impl Key {
    /// The key of a caller for a policy keyed `per` `scope`.
    pub fn of(scope: Scope, user: Option<&Arc<str>>, team: Option<&Arc<str>>) -> Key {
        match scope {
            Scope::Global => Key::Global,
            Scope::User => user.map_or(Key::Anonymous, |u| Key::User(u.clone())),
            Scope::Team => Key::Team(team.filter(|t| &***t != "default").cloned()),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Global => f.write_str("global"),
            Key::Anonymous => f.write_str("anonymous"),
            Key::User(u) => write!(f, "user:{u}"),
            Key::Team(t) => write!(f, "team:{}", t.as_deref().unwrap_or("default")),
        }
    }
}

/// The moment a decision is made: the monotonic clock for buckets, the
/// UTC calendar for budgets. Taken once per request.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub utc: OffsetDateTime,
}

impl Now {
    pub fn current() -> Now {
        Now {
            mono: Instant::now(),
            utc: OffsetDateTime::now_utc(),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RequestsPerMinute,
    TokensPerMinute,
    UsdPerDay,
    UsdPerMonth,
}

impl Limit {
    /// The option's name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TokensPerMinute => "tokens_per_minute",
            Limit::UsdPerDay => "usd_per_day",
            Limit::UsdPerMonth => "usd_per_month",
        }
    }

    /// True for the `budget` limits.
    pub fn is_budget(self) -> bool {
        matches!(self, Limit::UsdPerDay | Limit::UsdPerMonth)
    }
}

/// Why a request is refused, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub limit: Limit,
    /// Whole seconds, rounded up, at least 1: the `retry-after` value.
    pub retry_after_secs: u64,
    /// Says which limit, whose, and when it resets; goes to the client and
    /// into the event's `reason`.
    pub message: String,
}

/// `retry-after` for a wait: whole seconds rounded up, at least 1 (a
/// client told `0` would retry at once and be refused again). A hair of
/// float noise (29.999999…, 30.000001…) is not a whole extra second.
pub fn retry_after_secs(wait_secs: f64) -> u64 {
    let secs = (wait_secs - 1e-6).ceil();
    if secs.is_finite() && secs >= 1.0 {
        secs as u64
    } else {
        1
    }
}

/// A refill rate and the most a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    capacity: f64,
    per_sec: f64,
}

impl Rate {
    fn per_minute(per_minute: f64, capacity: f64) -> Rate {
        Rate {
            capacity,
            per_sec: per_minute / 60.0,
        }
    }
}

/// A token bucket refilled continuously. Its level may go below zero when
/// usage is charged after the fact (a debt the refill pays back).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            level: rate.capacity,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // A clock read earlier by another thread must not drain the bucket.
        if now > self.at {
            let dt = now.duration_since(self.at).as_secs_f64();
            self.level = (self.level + dt * rate.per_sec).min(rate.capacity);
            self.at = now;
        }
    }

    /// Takes `n` when the bucket holds that much; else the seconds until
    /// it will.
    fn take(&mut self, rate: Rate, n: f64, now: Instant) -> Result<(), f64> {
        self.refill(rate, now);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err((n - self.level) / rate.per_sec)
        }
    }

    /// Admits while anything is left (the cost is not known yet); else the
    /// seconds until the debt is paid back.
    fn positive(&mut self, rate: Rate, now: Instant) -> Result<(), f64> {
        self.refill(rate, now);
        if self.level > 0.0 {
            Ok(())
        } else {
            Err(-self.level / rate.per_sec)
        }
    }

    fn charge(&mut self, rate: Rate, n: f64, now: Instant) {
        self.refill(rate, now);
        self.level -= n;
    }

    fn give_back(&mut self, rate: Rate, n: f64) {
        self.level = (self.level + n).min(rate.capacity);
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level + dt * rate.per_sec >= rate.capacity
    }
}

/// Sweep once the map holds this many keys (and then at twice what a
/// sweep left), so sweeping costs O(1) per new key.
const SWEEP_FROM: usize = 1024;

/// Per-key state behind one map lock (held to read, or to insert a new
/// key) and a lock per key (held for a few float operations).
#[derive(Debug)]
struct KeyMap<S> {
    map: RwLock<HashMap<Key, Mutex<S>>>,
    sweep_at: Mutex<usize>,
}

impl<S> KeyMap<S> {
    fn new() -> Self {
        KeyMap {
            map: RwLock::new(HashMap::new()),
            sweep_at: Mutex::new(SWEEP_FROM),
        }
    }

    /// Runs `f` on `key`'s state, created by `fresh` when new. When a new
    /// key makes the map large, entries `at_rest` are dropped first.
    fn with<R>(
        &self,
        key: &Key,
        fresh: impl FnOnce() -> S,
        at_rest: impl Fn(&S) -> bool,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = map.get(key) {
                let mut state = slot.lock().unwrap_or_else(|p| p.into_inner());
                return f(&mut state);
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) {
            let mut sweep_at = self.sweep_at.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= *sweep_at {
                map.retain(|_, s| !at_rest(s.get_mut().unwrap_or_else(|p| p.into_inner())));
                *sweep_at = (map.len() * 2).max(SWEEP_FROM);
            }
        }
        let slot = map
            .entry(key.clone())
            .or_insert_with(|| Mutex::new(fresh()));
        f(slot.get_mut().unwrap_or_else(|p| p.into_inner()))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The buckets of one key.
#[derive(Debug)]
struct Buckets {
    requests: Bucket,
    tokens: Bucket,
}

/// A rate that is never used (a limit not configured): its bucket stays
/// full and at rest.
const UNUSED: Rate = Rate {
    capacity: 0.0,
    per_sec: 1.0,
};

/// One policy's buckets in this process: all of them, or with a Redis
/// backend those used while Redis is down.
#[derive(Debug)]
struct LocalBuckets {
    requests: Option<Rate>,
    tokens: Option<Rate>,
    keys: KeyMap<Buckets>,
}

impl LocalBuckets {
    fn state<R>(&self, key: &Key, now: Instant, f: impl FnOnce(&mut Buckets) -> R) -> R {
        let (rq, tk) = (
            self.requests.unwrap_or(UNUSED),
            self.tokens.unwrap_or(UNUSED),
        );
        self.keys.with(
            key,
            || Buckets {
                requests: Bucket::full(rq, now),
                tokens: Bucket::full(tk, now),
            },
            |b| b.requests.is_full(rq, now) && b.tokens.is_full(tk, now),
            f,
        )
    }

    /// Takes one request of `key`, unless its token bucket is in debt or its
    /// request bucket empty: then the limit and the seconds to wait.
    fn admit(&self, key: &Key, now: Instant) -> Option<(Limit, f64)> {
        self.state(key, now, |b| {
            if let Some(rate) = self.tokens {
                if let Err(wait) = b.tokens.positive(rate, now) {
                    return Some((Limit::TokensPerMinute, wait));
                }
            }
            if let Some(rate) = self.requests {
                if let Err(wait) = b.requests.take(rate, 1.0, now) {
                    return Some((Limit::RequestsPerMinute, wait));
                }
            }
            None
        })
    }

    /// A refund or a charge.
    fn apply(&self, key: &Key, op: Op, now: Instant) {
        match (op, self.requests, self.tokens) {
            (Op::Refund, Some(rate), _) => {
                self.state(key, now, |b| b.requests.give_back(rate, 1.0));
            }
            (Op::Charge(n), _, Some(rate)) if n > 0 => {
                self.state(key, now, |b| b.tokens.charge(rate, n as f64, now));
            }
            // Admission returns its verdict: see `admit`.
            _ => {}
        }
    }
}

/// The state of one `rate-limit` policy.
pub struct RateLimiter {
    options: RateLimitOptions,
    local: Arc<LocalBuckets>,
    shared: Option<Arc<Shared>>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limiter of the policy named `policy` (which names its shared
    /// counters); an error only for a Redis URL that cannot be used.
    pub fn new(policy: &str, options: &RateLimitOptions) -> Result<RateLimiter, LinkError> {
        let requests = options.requests_per_minute.map(|rpm| {
            let burst = options.burst.unwrap_or(rpm);
            Rate::per_minute(f64::from(rpm), f64::from(burst))
        });
        let tokens = options
            .tokens_per_minute
            .map(|tpm| Rate::per_minute(tpm as f64, tpm as f64));
        Ok(RateLimiter {
            options: options.clone(),
            local: Arc::new(LocalBuckets {
                requests,
                tokens,
                keys: KeyMap::new(),
            }),
            shared: shared_of(policy, &options.backend)?.map(Arc::new),
        })
    }

    pub fn options(&self) -> &RateLimitOptions {
        &self.options
    }

    /// Admits one request of `key`: takes one from its request bucket, and
    /// checks its token bucket is not in debt. A refused request takes
    /// nothing. This process's buckets only: see [`Self::admit_shared`].
    pub fn admit(&self, key: &Key, now: Instant) -> Result<(), Refusal> {
        match self.local.admit(key, now) {
            None => Ok(()),
            Some((limit, wait)) => Err(self.refusal(limit, wait, key)),
        }
    }

    /// Admits one request of `key` against the shared buckets, or this
    /// process's while Redis is down (or when there are none).
    pub async fn admit_shared(&self, key: &Key, now: Instant) -> Result<(), Refusal> {
        if let Some(s) = self.shared.as_ref().filter(|s| !s.link.resting()) {
            let (rq, tk) = (self.local.requests, self.local.tokens);
            match s.bucket(key, Op::Admit, rq, tk).await {
                Ok(refused) => {
                    s.link.recovered();
                    return match refused {
                        None => Ok(()),
                        Some((limit, wait)) => Err(self.refusal(limit, wait, key)),
                    };
                }
                Err(e) => failed(s, "admit", &e),
            }
        }
        self.admit(key, now)
    }

    fn refusal(&self, limit: Limit, wait: f64, key: &Key) -> Refusal {
        let retry_after_secs = retry_after_secs(wait);
        let amount = match limit {
            Limit::TokensPerMinute => self.options.tokens_per_minute.unwrap_or(0),
            _ => u64::from(self.options.requests_per_minute.unwrap_or(0)),
        };
        Refusal {
            limit,
            retry_after_secs,
            message: format!(
                "{} limit of {amount} reached for {key}; the next request is allowed in {retry_after_secs}s",
                limit.as_str()
            ),
        }
    }

    /// Returns the request an admit took, when a later policy refused the
    /// request after all.
    pub fn refund(&self, key: &Key, now: Instant, tasks: Option<&TaskTracker>) {
        if self.local.requests.is_some() {
            self.write(key, Op::Refund, now, tasks);
        }
    }

    /// Charges the tokens an exchange used (after the fact: it may leave
    /// the bucket in debt, and the next request waits for it).
    pub fn charge_tokens(&self, key: &Key, tokens: u64, now: Instant, tasks: Option<&TaskTracker>) {
        if self.local.tokens.is_some() && tokens > 0 {
            self.write(key, Op::Charge(tokens), now, tasks);
        }
    }

    /// Applies `op` to the shared buckets in the background when there are
    /// some and Redis is up, else (or when that write fails) to this
    /// process's.
    fn write(&self, key: &Key, op: Op, now: Instant, tasks: Option<&TaskTracker>) {
        if let Some(s) = self.shared.as_ref().filter(|s| !s.link.resting()) {
            let (s, local, key) = (s.clone(), self.local.clone(), key.clone());
            let sent = in_background(tasks, async move {
                match s.bucket(&key, op, local.requests, local.tokens).await {
                    Ok(_) => s.link.recovered(),
                    Err(e) => {
                        failed(&s, "update", &e);
                        local.apply(&key, op, Instant::now());
                    }
                }
            });
            if sent {
                return;
            }
        }
        self.local.apply(key, op, now);
    }

    /// True when this policy counts tokens (so usage must be charged).
    pub fn counts_tokens(&self) -> bool {
        self.local.tokens.is_some()
    }

    #[cfg(test)]
    fn local_keys(&self) -> usize {
        self.local.keys.len()
    }
}

/// Dollars spent by one key in the current UTC day and month.
#[derive(Debug, Clone, Copy)]
struct Spend {
    day: Date,
    day_usd: f64,
    /// The first day of the month `month_usd` counts.
    month: Date,
    month_usd: f64,
}

fn first_of_month(d: Date) -> Date {
    d.replace_day(1).unwrap_or(d)
}

/// Midnight UTC after `d` (the end of its day).
fn day_end(d: Date) -> Option<OffsetDateTime> {
    Some(d.next_day()?.midnight().assume_utc())
}

/// Midnight UTC on the first of the month after `d`'s.
fn month_end(d: Date) -> Option<OffsetDateTime> {
    let (year, month) = match d.month() {
        time::Month::December => (d.year().checked_add(1)?, time::Month::January),
        m => (d.year(), m.next()),
    };
    Some(
        Date::from_calendar_date(year, month, 1)
            .ok()?
            .midnight()
            .assume_utc(),
    )
}

impl Spend {
    fn fresh(today: Date) -> Spend {
        Spend {
            day: today,
            day_usd: 0.0,
            month: first_of_month(today),
            month_usd: 0.0,
        }
    }

    /// Starts the new day or month when `today` is in one. Never rolls
    /// back: a `today` before the tracked day (a wall clock stepped back,
    /// or a request whose time was taken just before another rolled the
    /// day) must not wipe what the later day has spent.
    fn roll(&mut self, today: Date) {
        if today > self.day {
            self.day = today;
            self.day_usd = 0.0;
        }
        let month = first_of_month(today);
        if month > self.month {
            self.month = month;
            self.month_usd = 0.0;
        }
    }

    fn at_rest(&self, today: Date) -> bool {
        (today > self.day || self.day_usd == 0.0)
            && (first_of_month(today) > self.month || self.month_usd == 0.0)
    }
}

/// The state of one `budget` policy.
pub struct BudgetTracker {
    options: BudgetOptions,
    /// This process's spend: all of it, or with a Redis backend what was
    /// spent while Redis was down.
    keys: Arc<KeyMap<Spend>>,
    shared: Option<Arc<Shared>>,
}

impl fmt::Debug for BudgetTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetTracker")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl BudgetTracker {
    /// The tracker of the policy named `policy` (which names its shared
    /// counters); an error only for a Redis URL that cannot be used.
    pub fn new(policy: &str, options: &BudgetOptions) -> Result<BudgetTracker, LinkError> {
        Ok(BudgetTracker {
            options: options.clone(),
            keys: Arc::new(KeyMap::new()),
            shared: shared_of(policy, &options.backend)?.map(Arc::new),
        })
    }

    pub fn options(&self) -> &BudgetOptions {
        &self.options
    }

    /// True when an exhausted budget refuses requests (`action: block`).
    pub fn blocks(&self) -> bool {
        self.options.action == BudgetAction::Block
    }

    fn state<R>(&self, key: &Key, utc: OffsetDateTime, f: impl FnOnce(&mut Spend) -> R) -> R {
        spend_state(&self.keys, key, utc, f)
    }

    /// `Err` when `key` has spent its day's or month's budget (the month's
    /// when both are spent: that is the later reset). This process's spend
    /// only: see [`Self::check_shared`].
    pub fn check(&self, key: &Key, utc: OffsetDateTime) -> Result<(), Refusal> {
        let spend = self.state(key, utc, |s| *s);
        self.verdict(key, spend, utc)
    }

    /// [`Self::check`] against the shared spend, or this process's while
    /// Redis is down (or when there is none).
    pub async fn check_shared(&self, key: &Key, utc: OffsetDateTime) -> Result<(), Refusal> {
        if let Some(s) = self.shared.as_ref().filter(|s| !s.link.resting()) {
            let today = utc.date();
            match s.spent(key, today).await {
                Ok((day_usd, month_usd)) => {
                    s.link.recovered();
                    let spend = Spend {
                        day: today,
                        day_usd,
                        month: first_of_month(today),
                        month_usd,
                    };
                    return self.verdict(key, spend, utc);
                }
                Err(e) => failed(s, "check", &e),
            }
        }
        self.check(key, utc)
    }

    fn verdict(&self, key: &Key, spend: Spend, utc: OffsetDateTime) -> Result<(), Refusal> {
        let over = |cap: Option<f64>, spent: f64| cap.filter(|c| spent >= *c);
        let (limit, cap, spent, resets) =
            if let Some(cap) = over(self.options.usd_per_month, spend.month_usd) {
                (
                    Limit::UsdPerMonth,
                    cap,
                    spend.month_usd,
                    month_end(spend.day),
                )
            } else if let Some(cap) = over(self.options.usd_per_day, spend.day_usd) {
                (Limit::UsdPerDay, cap, spend.day_usd, day_end(spend.day))
            } else {
                return Ok(());
            };
        // The calendar's end is far away; a day is a safe wait.
        let wait = resets.map_or(86_400.0, |r| (r - utc).as_seconds_f64());
        let retry_after_secs = retry_after_secs(wait);
        let resets_at = resets.map_or_else(
            || "later".to_string(),
            |r| format!("{}T00:00:00Z", r.date()),
        );
        Err(Refusal {
            limit,
            retry_after_secs,
            message: format!(
                "{} budget of ${cap} spent by {key} (${spent:.6} so far); it resets at {resets_at}",
                limit.as_str()
            ),
        })
    }

    /// Adds what an exchange cost to `key`'s day and month: in Redis in the
    /// background when shared and up, else (or when that write fails) in
    /// this process.
    pub fn spend(&self, key: &Key, usd: f64, utc: OffsetDateTime, tasks: Option<&TaskTracker>) {
        if !(usd > 0.0 && usd.is_finite()) {
            return;
        }
        if let Some(s) = self.shared.as_ref().filter(|s| !s.link.resting()) {
            let today = utc.date();
            let ends = |end: Option<OffsetDateTime>| end.map_or(0, |e| e.unix_timestamp());
            let (day_end, month_end) = (ends(day_end(today)), ends(month_end(today)));
            let (s, keys, key) = (s.clone(), self.keys.clone(), key.clone());
            let sent = in_background(tasks, async move {
                match s.spend(&key, usd, today, day_end, month_end).await {
                    Ok(()) => s.link.recovered(),
                    Err(e) => {
                        failed(&s, "spend", &e);
                        add_spend(&keys, &key, usd, utc);
                    }
                }
            });
            if sent {
                return;
            }
        }
        add_spend(&self.keys, key, usd, utc);
    }
}

fn spend_state<R>(
    keys: &KeyMap<Spend>,
    key: &Key,
    utc: OffsetDateTime,
    f: impl FnOnce(&mut Spend) -> R,
) -> R {
    let today = utc.date();
    keys.with(
        key,
        || Spend::fresh(today),
        |s| s.at_rest(today),
        |s| {
            s.roll(today);
            f(s)
        },
    )
}

fn add_spend(keys: &KeyMap<Spend>, key: &Key, usd: f64, utc: OffsetDateTime) {
    spend_state(keys, key, utc, |s| {
        s.day_usd += usd;
        s.month_usd += usd;
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "limits_tests.rs"]
mod tests;
