//! The counters of a `rate-limit` or `budget` policy with a Redis
//! `backend`: every replica of a hosted gateway reads and writes the same
//! buckets and spend, so N replicas allow the limit once, not N times.
//!
//! A bucket is one Redis hash per policy and key, updated by a Lua script
//! so that refill, check and take are one atomic step, timed by the Redis
//! server's clock (replicas' clocks may differ). Spend is two counters per
//! policy and key (the UTC day's, the month's), added to with
//! `INCRBYFLOAT` and expiring a day after their period ends. Every key
//! expires once it would be back at rest, so Redis holds only active users.
//!
//! When Redis fails, the caller counts in process for the cool-down
//! ([`RedisLink`]) and says so once in the log.
//!
//! A write is retried once when the connection broke ([`RedisLink`]); the
//! break may come after Redis ran it, with only the answer lost. So each
//! write carries a random id, and Redis applies an id once: the bucket
//! remembers the last one it took, and spend marks its id in a key that
//! expires after a minute.

use super::{Key, Limit, Rate};
use crate::redis_link::{LinkError, RedisLink};
use std::sync::OnceLock;
use time::Date;

/// Refill, check and take (or give back, or charge) in one step. Returns
/// `{'0'}` when admitted or done, `{'1', wait}` when the request bucket is
/// empty, `{'2', wait}` when the token bucket is in debt; `wait` in
/// seconds. All text: Lua numbers become integers on the way out.
const BUCKET_SCRIPT: &str = r#"
if redis.call('HGET', KEYS[1], 'op') == ARGV[7] then return {'0'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local rcap, rrate = tonumber(ARGV[2]), tonumber(ARGV[3])
local tcap, trate = tonumber(ARGV[4]), tonumber(ARGV[5])
local s = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
local function level(l, at, cap, rate)
  l = tonumber(l)
  at = tonumber(at)
  if l == nil or at == nil then return cap end
  if now > at then l = math.min(cap, l + (now - at) * rate) end
  return l
end
local rl = level(s[1], s[2], rcap, rrate)
local tl = level(s[3], s[4], tcap, trate)
if op == 'admit' then
  if trate > 0 and tcap > 0 and tl <= 0 then return {'2', tostring(-tl / trate)} end
  if rrate > 0 and rcap > 0 then
    if rl >= 1 then rl = rl - 1 else return {'1', tostring((1 - rl) / rrate)} end
  end
elseif op == 'refund' then
  rl = math.min(rcap, rl + 1)
elseif op == 'charge' then
  tl = tl - tonumber(ARGV[6])
end
redis.call('HSET', KEYS[1], 'rl', tostring(rl), 'rt', tostring(now), 'tl', tostring(tl), 'tt', tostring(now), 'op', ARGV[7])
local rest = 0
if rrate > 0 then rest = math.max(rest, (rcap - rl) / rrate) end
if trate > 0 then rest = math.max(rest, (tcap - tl) / trate) end
redis.call('PEXPIRE', KEYS[1], math.ceil(rest * 1000) + 1000)
return {'0'}
"#;

/// Adds `ARGV[1]` dollars to the day's and the month's counters (`KEYS[1]`,
/// `KEYS[2]`, expiring at `ARGV[2]`, `ARGV[3]`), once per write id: the
/// id's mark (`KEYS[3]`) outlives any retry.
const SPEND_SCRIPT: &str = r#"
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', 60000) then return 0 end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('INCRBYFLOAT', KEYS[2], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return 1
"#;

fn spend_script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(SPEND_SCRIPT))
}

/// A fresh id for one write, the same for its retry.
fn write_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

fn bucket_script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(BUCKET_SCRIPT))
}

/// What to do to a key's buckets.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    /// Take one request, refusing when empty or when tokens are in debt.
    Admit,
    /// Give back the request an admit took.
    Refund,
    /// Take this many tokens, into debt if need be.
    Charge(u64),
}

/// One policy's counters in Redis.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) link: RedisLink,
    /// `key_prefix` + the policy's name + `:`.
    prefix: String,
}

impl Shared {
    pub(super) fn new(url: &str, key_prefix: &str, policy: &str) -> Result<Self, LinkError> {
        Ok(Shared {
            link: RedisLink::new(url, "limits")?,
            prefix: format!("{key_prefix}{policy}:"),
        })
    }

    pub(super) fn bucket_key(&self, key: &Key) -> String {
        format!("{}rate:{key}", self.prefix)
    }

    pub(super) fn spend_keys(&self, key: &Key, day: Date) -> (String, String) {
        (
            format!("{}day:{day}:{key}", self.prefix),
            format!(
                "{}month:{:04}-{:02}:{key}",
                self.prefix,
                day.year(),
                u8::from(day.month())
            ),
        )
    }

    /// Runs `op` on `key`'s buckets; `Some((limit, wait))` when an admit
    /// is refused.
    pub(super) async fn bucket(
        &self,
        key: &Key,
        op: Op,
        requests: Option<Rate>,
        tokens: Option<Rate>,
    ) -> Result<Option<(Limit, f64)>, LinkError> {
        let (name, n) = match op {
            Op::Admit => ("admit", 0),
            Op::Refund => ("refund", 0),
            Op::Charge(n) => ("charge", n),
        };
        // An unused bucket: capacity 0 and rate 0 leave it out of every
        // decision and of the expiry.
        let rate = |r: Option<Rate>| r.map_or((0.0, 0.0), |r| (r.capacity, r.per_sec));
        let (rcap, rrate) = rate(requests);
        let (tcap, trate) = rate(tokens);
        let mut invocation = bucket_script().key(self.bucket_key(key));
        invocation
            .arg(name)
            .arg(rcap)
            .arg(rrate)
            .arg(tcap)
            .arg(trate)
            .arg(n)
            .arg(write_id());
        let answer: Vec<String> = self.link.run_script(&invocation).await?;
        let wait = || {
            answer
                .get(1)
                .and_then(|w| w.parse::<f64>().ok())
                .unwrap_or(1.0)
        };
        Ok(match answer.first().map(String::as_str) {
            Some("1") => Some((Limit::RequestsPerMinute, wait())),
            Some("2") => Some((Limit::TokensPerMinute, wait())),
            _ => None,
        })
    }

    /// Dollars `key` has spent on `day` and in its month.
    pub(super) async fn spent(&self, key: &Key, day: Date) -> Result<(f64, f64), LinkError> {
        let (d, m) = self.spend_keys(key, day);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(d).arg(m);
        let values: Vec<Option<String>> = self.link.run(&cmd).await?;
        let usd = |i: usize| {
            values
                .get(i)
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
        };
        Ok((usd(0), usd(1)))
    }

    /// Adds `usd` to `key`'s day and month; each counter expires a day after
    /// its period ends (`day_end`, `month_end`: Unix seconds).
    pub(super) async fn spend(
        &self,
        key: &Key,
        usd: f64,
        day: Date,
        day_end: i64,
        month_end: i64,
    ) -> Result<(), LinkError> {
        let (d, m) = self.spend_keys(key, day);
        let mut invocation = spend_script().key(&d);
        invocation
            .key(&m)
            .key(format!("{}op:{}", self.prefix, write_id()))
            .arg(usd)
            .arg(day_end + 86_400)
            .arg(month_end + 86_400);
        self.link.run_script::<i64>(&invocation).await.map(|_| ())
    }
}
