//! Bucket and budget arithmetic with the time passed in: no sleeps.

use super::*;
use std::time::Duration;
use time::macros::datetime;

fn limiter(rpm: Option<u32>, burst: Option<u32>, tpm: Option<u64>) -> RateLimiter {
    RateLimiter::new(
        "rl",
        &RateLimitOptions {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            per: Scope::User,
            burst: burst.or(rpm),
            backend: CounterBackend::Memory,
        },
    )
    .unwrap()
}

fn user(name: &str) -> Key {
    Key::User(Arc::from(name))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn keys_read_like_the_cache_scope_ids() {
    let (a, core, default) = (Arc::from("a"), Arc::from("core"), Arc::from("default"));
    for scope in [Scope::User, Scope::Team, Scope::Global] {
        for (u, t) in [
            (Some(&a), Some(&core)),
            (Some(&a), None),
            (None, None),
            (None, Some(&default)),
        ] {
            assert_eq!(
                Key::of(scope, u, t).to_string(),
                crate::cache::scope_id(scope, u.map(|x| &**x), t.map(|x| &**x)),
            );
        }
    }
    // No team and the team named `default` are one key.
    assert_eq!(
        Key::of(Scope::Team, None, None),
        Key::of(Scope::Team, Some(&a), Some(&default))
    );
}

#[test]
fn retry_after_rounds_up_to_whole_seconds_of_at_least_one() {
    assert_eq!(retry_after_secs(0.0), 1);
    assert_eq!(retry_after_secs(0.2), 1);
    assert_eq!(retry_after_secs(1.0), 1);
    assert_eq!(retry_after_secs(1.01), 2);
    assert_eq!(retry_after_secs(29.999_999_9), 30);
    assert_eq!(retry_after_secs(30.000_000_1), 30);
    assert_eq!(retry_after_secs(-3.0), 1);
    assert_eq!(retry_after_secs(f64::INFINITY), 1);
}

#[test]
fn the_burst_is_available_at_once_then_the_rate_refills_it() {
    // 2 per minute, burst 2: one request every 30 s once the burst is used.
    let l = limiter(Some(2), Some(2), None);
    let (k, t0) = (user("a"), Instant::now());
    assert!(l.admit(&k, t0).is_ok());
    assert!(l.admit(&k, t0).is_ok());
    let refused = l.admit(&k, t0).unwrap_err();
    assert_eq!(refused.limit, Limit::RequestsPerMinute);
    assert_eq!(refused.retry_after_secs, 30);
    assert!(
        refused.message.contains("requests_per_minute limit of 2")
            && refused.message.contains("user:a")
            && refused.message.contains("30s"),
        "{}",
        refused.message
    );
    // 10 s later: 20 s to go.
    assert_eq!(
        l.admit(&k, t0 + secs(10.0)).unwrap_err().retry_after_secs,
        20
    );
    // 20.5 s: 9.5 s rounds up to 10.
    assert_eq!(
        l.admit(&k, t0 + secs(20.5)).unwrap_err().retry_after_secs,
        10
    );
    // A refused request took nothing: one is back at 30 s.
    assert!(l.admit(&k, t0 + secs(30.0)).is_ok());
    assert!(l.admit(&k, t0 + secs(30.0)).is_err());
    // A long pause refills to the burst, not beyond.
    let later = t0 + secs(3600.0);
    assert!(l.admit(&k, later).is_ok());
    assert!(l.admit(&k, later).is_ok());
    assert!(l.admit(&k, later).is_err());
}

#[test]
fn burst_above_the_rate_and_keys_apart() {
    let l = limiter(Some(60), Some(5), None);
    let t0 = Instant::now();
    for _ in 0..5 {
        assert!(l.admit(&user("a"), t0).is_ok());
    }
    assert_eq!(l.admit(&user("a"), t0).unwrap_err().retry_after_secs, 1);
    // Another key has its own bucket.
    assert!(l.admit(&user("b"), t0).is_ok());
    // One per second at 60/min.
    assert!(l.admit(&user("a"), t0 + secs(1.0)).is_ok());
    assert!(l.admit(&user("a"), t0 + secs(1.0)).is_err());
}

#[test]
fn a_refund_returns_the_request_without_overfilling() {
    let l = limiter(Some(1), Some(1), None);
    let (k, t0) = (user("a"), Instant::now());
    assert!(l.admit(&k, t0).is_ok());
    l.refund(&k, t0, None);
    assert!(l.admit(&k, t0).is_ok());
    assert!(l.admit(&k, t0).is_err());
    l.refund(&k, t0, None);
    l.refund(&k, t0, None);
    assert!(l.admit(&k, t0).is_ok());
    assert!(l.admit(&k, t0).is_err(), "capacity stays at the burst");
}

#[test]
fn tokens_are_charged_after_the_fact_and_the_next_request_waits_for_the_debt() {
    // 600 tokens per minute = 10 per second.
    let l = limiter(None, None, Some(600));
    let (k, t0) = (user("a"), Instant::now());
    assert!(l.admit(&k, t0).is_ok());
    // The exchange used more than the whole minute's allowance.
    l.charge_tokens(&k, 650, t0, None);
    let refused = l.admit(&k, t0).unwrap_err();
    assert_eq!(refused.limit, Limit::TokensPerMinute);
    // 50 tokens of debt at 10/s.
    assert_eq!(refused.retry_after_secs, 5);
    assert!(refused.message.contains("tokens_per_minute limit of 600"));
    assert_eq!(l.admit(&k, t0 + secs(4.5)).unwrap_err().retry_after_secs, 1);
    assert!(l.admit(&k, t0 + secs(5.1)).is_ok());
    // Under the allowance, requests keep going.
    l.charge_tokens(&k, 1, t0 + secs(5.1), None);
    assert!(l.admit(&k, t0 + secs(60.0)).is_ok());
}

#[test]
fn both_limits_in_one_policy() {
    let l = limiter(Some(10), Some(10), Some(100));
    let (k, t0) = (user("a"), Instant::now());
    assert!(l.admit(&k, t0).is_ok());
    l.charge_tokens(&k, 100, t0, None);
    // Tokens refuse first; the request bucket is untouched.
    assert_eq!(l.admit(&k, t0).unwrap_err().limit, Limit::TokensPerMinute);
    assert!(l.admit(&k, t0 + secs(1.0)).is_ok());
}

#[test]
fn keys_at_rest_are_swept_and_active_ones_kept() {
    let l = limiter(Some(60), Some(1), None);
    let t0 = Instant::now();
    for i in 0..SWEEP_FROM {
        assert!(l.admit(&user(&format!("u{i}")), t0).is_ok());
    }
    assert_eq!(l.local_keys(), SWEEP_FROM);
    // The first two minutes later: everyone refilled except u0, used again.
    let t1 = t0 + secs(120.0);
    assert!(l.admit(&user("u0"), t1).is_ok());
    assert!(l.admit(&user("new"), t1).is_ok());
    assert_eq!(l.local_keys(), 2, "u0 (empty bucket) and the new key");
    assert!(l.admit(&user("u0"), t1).is_err(), "u0 kept its state");
}

fn budget(day: Option<f64>, month: Option<f64>, action: BudgetAction) -> BudgetTracker {
    BudgetTracker::new(
        "money",
        &BudgetOptions {
            usd_per_day: day,
            usd_per_month: month,
            per: Scope::Team,
            action,
            backend: CounterBackend::Memory,
        },
    )
    .unwrap()
}

#[test]
fn a_day_budget_refuses_until_utc_midnight() {
    let b = budget(Some(1.0), None, BudgetAction::Block);
    let k = Key::Team(Some(Arc::from("core")));
    let t = datetime!(2026-11-23 22:00:00 UTC);
    assert!(b.check(&k, t).is_ok());
    b.spend(&k, 0.6, t, None);
    assert!(b.check(&k, t).is_ok());
    b.spend(&k, 0.6, t, None);
    let refused = b.check(&k, t).unwrap_err();
    assert_eq!(refused.limit, Limit::UsdPerDay);
    assert_eq!(refused.retry_after_secs, 2 * 3600);
    assert!(
        refused.message.contains("2026-11-24T00:00:00Z") && refused.message.contains("team:core"),
        "{}",
        refused.message
    );
    let t = datetime!(2026-11-23 23:59:59.5 UTC);
    assert_eq!(b.check(&k, t).unwrap_err().retry_after_secs, 1);
    // Another team is not affected.
    assert!(b.check(&Key::Team(None), t).is_ok());
    // The next UTC day starts from zero.
    assert!(b.check(&k, datetime!(2026-11-24 00:00:00 UTC)).is_ok());
}

#[test]
fn a_month_budget_refuses_until_the_first_of_next_month() {
    let b = budget(Some(100.0), Some(2.0), BudgetAction::Block);
    let k = Key::Global;
    // Spend across days of one month adds up.
    b.spend(&k, 1.5, datetime!(2026-12-30 12:00:00 UTC), None);
    b.spend(&k, 1.0, datetime!(2026-12-31 12:00:00 UTC), None);
    let refused = b.check(&k, datetime!(2026-12-31 12:00:00 UTC)).unwrap_err();
    assert_eq!(refused.limit, Limit::UsdPerMonth);
    // December rolls into January of the next year.
    assert_eq!(refused.retry_after_secs, 12 * 3600);
    assert!(refused.message.contains("2027-01-01T00:00:00Z"));
    assert!(b.check(&k, datetime!(2027-01-01 00:00:00 UTC)).is_ok());
    // A 30-day month.
    b.spend(&k, 5.0, datetime!(2027-04-30 23:00:00 UTC), None);
    let refused = b.check(&k, datetime!(2027-04-30 23:00:00 UTC)).unwrap_err();
    assert!(refused.message.contains("2027-05-01T00:00:00Z"));
    assert_eq!(refused.retry_after_secs, 3600);
}

#[test]
fn when_both_budgets_are_spent_the_month_is_the_later_reset() {
    let b = budget(Some(1.0), Some(1.0), BudgetAction::Block);
    let t = datetime!(2026-02-10 00:00:00 UTC);
    b.spend(&Key::Global, 1.0, t, None);
    let refused = b.check(&Key::Global, t).unwrap_err();
    assert_eq!(refused.limit, Limit::UsdPerMonth);
    assert_eq!(refused.retry_after_secs, 19 * 86_400);
}

#[test]
fn nothing_spent_costs_nothing_and_budgets_at_rest_are_fresh() {
    let b = budget(Some(1.0), None, BudgetAction::Log);
    assert!(!b.blocks());
    let t = datetime!(2026-02-10 00:00:00 UTC);
    b.spend(&Key::Global, 0.0, t, None);
    b.spend(&Key::Global, f64::NAN, t, None);
    assert!(b.check(&Key::Global, t).is_ok());
    let mut s = Spend::fresh(t.date());
    assert!(s.at_rest(t.date()));
    s.day_usd = 1.0;
    s.month_usd = 1.0;
    assert!(!s.at_rest(t.date()));
    assert!(!s.at_rest(datetime!(2026-02-11 00:00:00 UTC).date()));
    assert!(s.at_rest(datetime!(2026-03-01 00:00:00 UTC).date()));
}

#[test]
fn a_date_before_the_tracked_day_does_not_wipe_its_spend() {
    let b = budget(Some(1.0), Some(5.0), BudgetAction::Block);
    let k = Key::Global;
    let after_midnight = datetime!(2026-12-01 00:00:01 UTC);
    let before_midnight = datetime!(2026-11-30 23:59:59 UTC);
    b.spend(&k, 1.0, after_midnight, None);
    // A check stamped just before midnight (or a clock stepped back)
    // sees the spend, and leaves it in place for the day it belongs to.
    assert!(b.check(&k, before_midnight).is_err());
    assert_eq!(
        b.check(&k, after_midnight).unwrap_err().limit,
        Limit::UsdPerDay
    );
    // The same across a month's end.
    b.spend(&k, 4.0, after_midnight, None);
    b.spend(&k, 0.5, before_midnight, None);
    let refused = b.check(&k, datetime!(2026-12-02 00:00:00 UTC)).unwrap_err();
    assert_eq!(refused.limit, Limit::UsdPerMonth);
    // Nor is a spend on a later day swept as at rest.
    let mut s = Spend::fresh(after_midnight.date());
    s.day_usd = 1.0;
    s.month_usd = 1.0;
    assert!(!s.at_rest(before_midnight.date()));
}

/// The Redis of `KT_TEST_REDIS_URL`, or `None` with the skip notice.
fn test_redis(test: &str) -> Option<String> {
    match std::env::var("KT_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("KT-TEST-SKIPPED {test}: KT_TEST_REDIS_URL is not set");
            None
        }
    }
}

#[tokio::test]
async fn the_bucket_script_takes_refunds_charges_into_debt_and_expires_at_rest() {
    let Some(url) = test_redis("bucket_script") else {
        return;
    };
    let prefix = format!("kt-unit:{:016x}:", rand::random::<u64>());
    let s = Shared::new(&url, &prefix, "rl").unwrap();
    let k = user("dev1");
    // 2 requests at once, refilled at 1 a minute; 600 tokens a minute.
    let rq = Some(Rate::per_minute(1.0, 2.0));
    let tk = Some(Rate::per_minute(600.0, 600.0));
    assert_eq!(s.bucket(&k, Op::Admit, rq, tk).await.unwrap(), None);
    assert_eq!(s.bucket(&k, Op::Admit, rq, tk).await.unwrap(), None);
    let (limit, wait) = s.bucket(&k, Op::Admit, rq, tk).await.unwrap().unwrap();
    assert_eq!(limit, Limit::RequestsPerMinute);
    assert!(
        (55.0..=60.0).contains(&wait),
        "a minute for the next: {wait}"
    );
    s.bucket(&k, Op::Refund, rq, tk).await.unwrap();
    assert_eq!(
        s.bucket(&k, Op::Admit, rq, tk).await.unwrap(),
        None,
        "refunded"
    );
    // 900 tokens against 600: 300 in debt, 30 s at 10 a second.
    s.bucket(&k, Op::Charge(900), rq, tk).await.unwrap();
    s.bucket(&k, Op::Refund, rq, tk).await.unwrap();
    let (limit, wait) = s.bucket(&k, Op::Admit, rq, tk).await.unwrap().unwrap();
    assert_eq!(limit, Limit::TokensPerMinute);
    assert!((29.0..=30.0).contains(&wait), "{wait}");
    // The key expires once both buckets would be full again: at most the
    // longer refill (2 min for the requests) and a second.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(s.bucket_key(&k))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=121_000).contains(&ttl), "{ttl}");
    // Another key, another policy prefix: untouched.
    assert_eq!(
        s.bucket(&user("dev2"), Op::Admit, rq, tk).await.unwrap(),
        None
    );
    // Spend adds up per day and month.
    let day = OffsetDateTime::now_utc().date();
    let ends = |e: Option<OffsetDateTime>| e.unwrap().unix_timestamp();
    let (day_ends, month_ends) = (ends(day_end(day)), ends(month_end(day)));
    s.spend(&k, 0.25, day, day_ends, month_ends).await.unwrap();
    s.spend(&k, 0.5, day, day_ends, month_ends).await.unwrap();
    let (d, m) = s.spent(&k, day).await.unwrap();
    assert!(
        (d - 0.75).abs() < 1e-9 && (m - 0.75).abs() < 1e-9,
        "{d} {m}"
    );
    let next = day.next_day().unwrap();
    let (d, m) = s.spent(&k, next).await.unwrap();
    assert_eq!(d, 0.0, "a new day starts at zero");
    if next.month() == day.month() {
        assert!(
            (m - 0.75).abs() < 1e-9,
            "the same month keeps counting: {m}"
        );
    }
    let _: () = redis::cmd("DEL")
        .arg(s.bucket_key(&k))
        .arg(s.spend_keys(&k, day).0)
        .arg(s.spend_keys(&k, day).1)
        .arg(s.bucket_key(&user("dev2")))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A proxy in front of the Redis at `redis` (`host:port`) that, once, lets
/// a script run (`EVALSHA`) and then cuts the connection instead of passing
/// back its answer (an error answer, such as `NOSCRIPT`, passes): Redis ran
/// the write, the client saw a broken connection. Returns its address and
/// whether it has cut one yet.
async fn answer_dropping_proxy(
    redis: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_flag = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&redis).await else {
                return;
            };
            let cut = cut_flag.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let armed = Arc::new(AtomicBool::new(false));
                let arm = armed.clone();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let script = chunk.windows(7).any(|w| w == b"EVALSHA");
                        arm.store(script, Ordering::SeqCst);
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let ran = armed.load(Ordering::SeqCst) && buf[0] != b'-';
                        if ran && !cut.swap(true, Ordering::SeqCst) {
                            // Both halves are dropped on return: the
                            // answer never reaches the client.
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (addr, cut)
}

/// A write whose answer was lost to a broken connection is retried, and
/// the retry must not apply it a second time: spend is added once and a
/// charge taken once.
#[tokio::test]
async fn a_write_retried_after_a_lost_answer_counts_once() {
    use std::sync::atomic::Ordering;
    let Some(url) = test_redis("write_retried_after_a_lost_answer") else {
        return;
    };
    let rest = url.strip_prefix("redis://").unwrap_or(&url);
    let (host, db) = rest.split_once('/').unwrap_or((rest, "0"));
    let day = OffsetDateTime::now_utc().date();
    let ends = |e: Option<OffsetDateTime>| e.unwrap().unix_timestamp();
    let (day_ends, month_ends) = (ends(day_end(day)), ends(month_end(day)));
    let k = user("dev1");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Spend.
    let (proxy, cut) = answer_dropping_proxy(host.to_string()).await;
    let prefix = format!("kt-unit:{:016x}:", rand::random::<u64>());
    let s = Shared::new(&format!("redis://{proxy}/{db}"), &prefix, "b").unwrap();
    s.spend(&k, 0.5, day, day_ends, month_ends)
        .await
        .expect("the retry answers");
    assert!(cut.load(Ordering::SeqCst), "no answer was cut");
    let (d, m) = s.spent(&k, day).await.unwrap();
    assert!((d - 0.5).abs() < 1e-9 && (m - 0.5).abs() < 1e-9, "{d} {m}");
    let (dk, mk) = s.spend_keys(&k, day);

    // A charge.
    let (proxy, cut) = answer_dropping_proxy(host.to_string()).await;
    let s2 = Shared::new(&format!("redis://{proxy}/{db}"), &prefix, "rl").unwrap();
    let tk = Some(Rate::per_minute(600.0, 600.0));
    s2.bucket(&k, Op::Charge(100), None, tk)
        .await
        .expect("the retry answers");
    assert!(cut.load(Ordering::SeqCst), "no answer was cut");
    let level: String = redis::cmd("HGET")
        .arg(s2.bucket_key(&k))
        .arg("tl")
        .query_async(&mut conn)
        .await
        .unwrap();
    let level: f64 = level.parse().unwrap();
    assert!((499.0..=510.0).contains(&level), "charged twice? {level}");

    let _: () = redis::cmd("DEL")
        .arg(dk)
        .arg(mk)
        .arg(s2.bucket_key(&k))
        .query_async(&mut conn)
        .await
        .unwrap();
}
