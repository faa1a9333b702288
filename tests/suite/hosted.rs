//! Hosted mode against a real PostgreSQL (and Redis): gateway processes
//! that share one audit trail, one key table and one cache; shipping that
//! resumes after a restart; a database outage in the middle of traffic
//! that loses no event.
//!
//! Each test gets a database of its own, dropped at the end. Without
//! `KT_TEST_POSTGRES_URL` the tests print a skip notice and pass.

use crate::common::client::{read_head, tls, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::TestCa;
use crate::suite::cache::{chat, post, redis_config, redis_url, unique_prefix, Killed};
use crate::suite::cli::spawn_gateway;
use base64::Engine as _;
use keeptrusts::events::{Action, Checkpoints, Event, EventLog, Filters, LogOptions, Phase};
use keeptrusts::storage::feed::TeamFeed;
use keeptrusts::storage::{audit, keys, ship, Db};
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "api.openai.com";
const PATH: &str = "/v1/chat/completions";

/// A database of its own for one test; dropped with it.
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create(test: &str) -> Option<TestDb> {
        let admin = match std::env::var("KT_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                println!("KT-TEST-SKIPPED {test}: KT_TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        let name = format!("kt_test_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("KT_TEST_POSTGRES_URL {admin}: {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = with_database(&admin, &name);
        Some(TestDb { admin, name, url })
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Rows in the shared events table (0 before the schema exists).
    async fn events(&self) -> i64 {
        let c = self.client().await;
        c.query_one("SELECT count(*) FROM kt_events", &[])
            .await
            .map_or(0, |r| r.get(0))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

/// `postgres://u@h:p/db?x` with `db` replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &base[..host_end])
}

fn kt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(args)
        .env_remove("KEEPTRUSTS_STORAGE")
        .env_remove("KEEPTRUSTS_ACCESS_KEY")
        .env(
            "KEEPTRUSTS_HOME",
            std::env::temp_dir().join("kt-hosted-test-home"),
        )
        .output()
        .unwrap()
}

async fn kt_ok(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        kt(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "kt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// CONNECT with a key, then TLS and HTTP; `None` with the refusal status.
async fn connect_with_key(
    gw: SocketAddr,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    user: &str,
    key: &str,
) -> Result<Http, u16> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    let req = format!(
        "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let reply = read_head(&mut s).await;
    if reply.status != 200 {
        return Err(reply.status);
    }
    let t = tls(s, HOST, roots, &[b"h2"]).await.unwrap();
    Ok(Http::over(t, true).await)
}

/// Polls `check` every 50 ms until it holds, failing after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_replicas_share_keys_cache_and_one_verifiable_audit_trail() {
    let test = "two_replicas_share_keys_cache_and_one_verifiable_audit_trail";
    let Some(db) = TestDb::create(test).await else {
        return;
    };
    let Some(redis) = redis_url(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let prefix = unique_prefix("hosted");
    std::fs::write(
        &policy,
        format!("auth:\n  required: true\n{}", redis_config(&redis, &prefix)),
    )
    .unwrap();
    // The key is created before any gateway runs: the table is made on demand.
    let created = kt_ok(&[
        "keys",
        "create",
        "--user",
        "alice",
        "--team",
        "red",
        "--storage",
        &db.url,
    ])
    .await;
    let key = created.trim().to_string();
    let list = kt_ok(&["keys", "list", "--json", "--storage", &db.url]).await;
    assert!(list.contains("\"alice\"") && !list.contains(&key), "{list}");

    let ca = TestCa::new("hosted CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let args = [
        "--policy-config".as_ref(),
        policy.as_os_str(),
        "--storage".as_ref(),
        db.url.as_ref(),
    ];
    let a = Killed(spawn_gateway(&ca, &origin, &args));
    let b = Killed(spawn_gateway(&ca, &origin, &args));

    // A key from the shared table works on both replicas.
    let mut ha = connect_with_key(a.0.addr, &[a.0.ca_der()], "alice", &key)
        .await
        .expect("replica A refused a key from the shared table");
    let first = post(&mut ha, HOST, PATH, chat("shared", false), &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    // Replica B answers from the entry A stored in Redis.
    let mut hb = connect_with_key(b.0.addr, &[b.0.ca_der()], "alice", &key)
        .await
        .expect("replica B refused a key from the shared table");
    let mut second = post(&mut hb, HOST, PATH, chat("shared", false), &[]).await;
    for _ in 0..100 {
        if second.cache == "hit" {
            break;
        }
        // A's write to Redis may not have landed yet: ask again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        second = post(&mut hb, HOST, PATH, chat("shared", false), &[]).await;
    }
    assert_eq!((second.cache.as_str(), &second.body), ("hit", &first.body));
    assert_eq!(origin.hits.load(SeqCst), 1);

    // B's live feed shows A's events: the whole team's trail.
    eventually(
        "both replicas' events in the table",
        Duration::from_secs(20),
        || async { db.events().await >= 4 },
    )
    .await;
    let gw_b = format!("http://{}", b.0.addr);
    let admin = kt_ok(&[
        "keys",
        "create",
        "--user",
        "ops",
        "--admin",
        "--storage",
        &db.url,
    ])
    .await;
    let admin = admin.trim().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The new admin key reaches B's key index within a second.
        let args = [
            "events",
            "tail",
            "--gateway",
            &gw_b,
            "--key",
            &admin,
            "--json",
            "-n",
            "50",
            "--no-follow",
        ]
        .map(String::from);
        let out = tokio::task::spawn_blocking(move || kt(&args.each_ref().map(String::as_str)))
            .await
            .unwrap();
        let seen = String::from_utf8_lossy(&out.stdout).into_owned();
        let events: Vec<Event> = seen
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let a_miss = events.iter().any(|e| {
            e.phase == Phase::Output
                && e.cache_hit != Some(true)
                && e.user.as_deref() == Some("alice")
        });
        if a_miss && events.iter().any(|e| e.action == Action::CacheHit) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's feed never showed A's miss and B's hit:\n{seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The table holds two chains, both intact.
    let verified = kt_ok(&["events", "verify", "--storage", &db.url]).await;
    assert!(verified.contains("in 2 replica chains"), "{verified}");
    let tail = kt_ok(&[
        "events",
        "tail",
        "--storage",
        &db.url,
        "--json",
        "-n",
        "100",
        "--no-follow",
        "--filter",
        "user=alice",
    ])
    .await;
    assert!(tail.lines().count() >= 4, "{tail}");
    let costs = kt_ok(&[
        "report",
        "costs",
        "--by",
        "user",
        "--json",
        "--storage",
        &db.url,
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&costs).unwrap();
    let alice = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "alice")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(alice["requests"], 2, "{v}");

    // A revocation in the table reaches both replicas within seconds.
    let id = serde_json::from_str::<serde_json::Value>(&list).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    kt_ok(&["keys", "revoke", &id, "--storage", &db.url]).await;
    for gw in [&a.0, &b.0] {
        eventually(
            "the revoked key is refused",
            Duration::from_secs(10),
            || async {
                connect_with_key(gw.addr, &[gw.ca_der()], "alice", &key)
                    .await
                    .err()
                    == Some(407)
            },
        )
        .await;
    }

    // Tampering with the table is found.
    let c = db.client().await;
    c.batch_execute("ALTER TABLE kt_events DISABLE TRIGGER kt_events_no_update")
        .await
        .unwrap();
    c.batch_execute(
        "UPDATE kt_events SET line = replace(line, '\"alice\"', '\"mallory\"') WHERE id = (SELECT min(id) FROM kt_events WHERE line LIKE '%alice%')",
    )
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let url = db.url.clone();
        move || kt(&["events", "verify", "--storage", &url])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match its hash"), "{err}");
}

/// A TCP relay in front of the database that can be cut and restored on
/// the same port, to stage an outage.
struct Relay {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    target: SocketAddr,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = Relay {
            port,
            task: None,
            target,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Closes the listener and every relayed connection.
    async fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

/// The host:port of a postgres URL.
fn pg_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let hostport = rest.split(['/', '?']).next().unwrap();
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    use std::net::ToSocketAddrs;
    hostport.to_socket_addrs().unwrap().next().unwrap()
}

/// The URL with its host:port replaced by the relay's.
fn via(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth_host, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let user = auth_host.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!(
        "{scheme}://{}127.0.0.1:{port}{path}",
        user.unwrap_or_default()
    )
}

#[tokio::test]
async fn a_database_outage_mid_traffic_loses_no_event() {
    let Some(db) = TestDb::create("a_database_outage_mid_traffic_loses_no_event").await else {
        return;
    };
    let mut relay = Relay::start(pg_addr(&db.url)).await;
    let through_relay = via(&db.url, relay.port);
    let ca = TestCa::new("outage CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let gw = Killed(spawn_gateway(
        &ca,
        &origin,
        &["--storage".as_ref(), through_relay.as_ref()],
    ));
    let mut http =
        crate::common::client::through_proxy(gw.0.addr, HOST, &[gw.0.ca_der()], &[b"h2"])
            .await
            .0;
    for i in 0..5 {
        let r = post(
            &mut http,
            HOST,
            PATH,
            chat(&format!("before {i}"), false),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    eventually(
        "the first events shipped",
        Duration::from_secs(20),
        || async { db.events().await == 10 },
    )
    .await;

    relay.cut().await;
    for i in 0..5 {
        let r = post(
            &mut http,
            HOST,
            PATH,
            chat(&format!("during {i}"), true),
            &[],
        )
        .await;
        assert_eq!(
            r.status, 200,
            "requests are served while the database is down"
        );
    }
    assert_eq!(
        db.events().await,
        10,
        "nothing can have arrived through a cut relay"
    );

    relay.restore().await;
    eventually(
        "the backlog shipped after the outage",
        Duration::from_secs(30),
        || async { db.events().await == 20 },
    )
    .await;
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT count(DISTINCT hash), count(DISTINCT replica), min(seq), max(seq) FROM kt_events",
            &[],
        )
        .await
        .unwrap();
    let (hashes, replicas, min, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((hashes, replicas, min, max), (20, 1, 1, 20));
    let during = c
        .query_one(
            "SELECT count(*) FROM kt_events WHERE line LIKE '%\"phase\":\"output\"%' AND event->>'status' = '200'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(during.get::<_, i64>(0), 10);
    let verified = kt_ok(&["events", "verify", "--storage", &db.url]).await;
    assert!(
        verified.contains("ok: 20 events in 1 replica chains"),
        "{verified}"
    );
    // The outage shows in /metrics: what was shipped, and the failed tries.
    // A batch is counted when its commit's answer reaches kt, a moment
    // after the rows are visible to the query above.
    let addr = gw.0.addr;
    let metrics = || async move {
        crate::common::client::raw_exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: kt\r\nConnection: close\r\n\r\n",
        )
        .await
    };
    let value = |metrics: &str, name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    eventually(
        "every event counted as shipped",
        Duration::from_secs(10),
        || async move { value(&metrics().await, "kt_events_shipped_total") == 20 },
    )
    .await;
    let last = metrics().await;
    assert_eq!(value(&last, "kt_events_shipped_total"), 20, "{last}");
    assert!(value(&last, "kt_events_ship_failures_total") >= 1, "{last}");
}

#[tokio::test]
async fn a_shipper_finishing_during_a_database_outage_retries_within_its_grace() {
    let Some(tdb) =
        TestDb::create("a_shipper_finishing_during_a_database_outage_retries_within_its_grace")
            .await
    else {
        return;
    };
    let mut relay = Relay::start(pg_addr(&tdb.url)).await;
    let db = Db::open(&via(&tdb.url, relay.port)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    relay.cut().await;
    let (sink, writer) = EventLog::open(&events, LogOptions::default()).unwrap();
    let shipper = ship::start(
        db,
        events.clone(),
        "r1.test".into(),
        Some(sink.synced()),
        tokio::sync::watch::channel(true).1,
    );
    for i in 0..7 {
        sink.send(event(i)).await.unwrap();
    }
    writer.close().await.unwrap();
    let stats = Arc::clone(shipper.stats());
    let before = stats.failures();
    let finishing = tokio::spawn(shipper.finish(Duration::from_secs(60)));
    // At most one attempt can fall between `before` and the stop; a
    // shipper that gave up at its first failure once stopping never
    // reaches three more.
    eventually(
        "the finishing shipper retried",
        Duration::from_secs(30),
        || async { stats.failures() >= before + 3 },
    )
    .await;
    assert!(!finishing.is_finished(), "finish waits while it retries");
    assert_eq!(stats.shipped(), 0);
    relay.restore().await;
    finishing.await.unwrap();
    assert_eq!(stats.shipped(), 7, "shipped once the database answered");
    assert_eq!(tdb.events().await, 7);
}

/// A commit whose answer never came back went through: the shipper then
/// finds the shared chain's head ahead of it and counts those events as
/// shipped, so `kt_events_shipped_total` matches the store. Here another
/// shipper of the same replica stores them first, which looks the same.
#[tokio::test]
async fn events_stored_by_a_commit_whose_answer_was_lost_count_as_shipped() {
    let Some(tdb) = TestDb::create("events_stored_by_a_commit_whose_answer_was_lost").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ours, other) = (a.path().join("events"), b.path().join("events"));
    let (sink, writer) = EventLog::open(&ours, LogOptions::default()).unwrap();
    for i in 0..3 {
        sink.send(event(i)).await.unwrap();
    }
    writer.close().await.unwrap();
    let ready = || tokio::sync::watch::channel(true).1;
    let shipper = ship::start(db.clone(), ours.clone(), "r1.test".into(), None, ready());
    let stats = Arc::clone(shipper.stats());
    eventually("the first events shipped", Duration::from_secs(20), || {
        let stats = Arc::clone(&stats);
        async move { stats.shipped() == 3 }
    })
    .await;

    // The same log, two events longer, shipped by another shipper.
    std::fs::create_dir(&other).unwrap();
    for f in std::fs::read_dir(&ours).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), other.join(f.file_name())).unwrap();
    }
    let (sink, writer) = EventLog::open(&other, LogOptions::default()).unwrap();
    for i in 3..5 {
        sink.send(event(i)).await.unwrap();
    }
    writer.close().await.unwrap();
    let first = ship::start(db.clone(), other.clone(), "r1.test".into(), None, ready());
    let first_stats = Arc::clone(first.stats());
    first.finish(Duration::from_secs(20)).await;
    assert_eq!(first_stats.shipped(), 2);
    assert_eq!(tdb.events().await, 5);

    // Our log gets the same two lines (appended, as the writer would).
    for f in std::fs::read_dir(&other).unwrap() {
        let f = f.unwrap();
        let name = f.file_name();
        if !name.to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let longer = std::fs::read(f.path()).unwrap();
        let have = std::fs::read(ours.join(&name)).unwrap_or_default();
        assert!(longer.starts_with(&have));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(ours.join(&name))
            .unwrap();
        std::io::Write::write_all(&mut file, &longer[have.len()..]).unwrap();
    }
    eventually("the stored events counted", Duration::from_secs(20), || {
        let stats = Arc::clone(&stats);
        async move { stats.shipped() == 5 }
    })
    .await;
    shipper.finish(Duration::from_secs(20)).await;
    assert_eq!(stats.shipped(), 5);
    assert_eq!(tdb.events().await, 5, "nothing stored twice");
}

fn event(i: usize) -> Event {
    Event {
        user: Some(format!("u{i}").into()),
        ..Event::new(Phase::Input, Action::Pass)
    }
}

#[tokio::test]
async fn shipping_resumes_after_a_restart_without_gaps_or_repeats() {
    let Some(tdb) =
        TestDb::create("shipping_resumes_after_a_restart_without_gaps_or_repeats").await
    else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    // Small segments: the resume point is in an older segment than the end.
    let options = || LogOptions {
        segment_max_bytes: 600,
        ..LogOptions::default()
    };
    let ready = tokio::sync::watch::channel(true).1;
    for round in 0..3usize {
        let (sink, writer) = EventLog::open(&events, options()).unwrap();
        let shipper = ship::start(
            db.clone(),
            events.clone(),
            "r1.test".into(),
            Some(sink.synced()),
            ready.clone(),
        );
        for i in 0..7 {
            sink.send(event(round * 10 + i)).await.unwrap();
        }
        writer.close().await.unwrap();
        let stats = Arc::clone(shipper.stats());
        shipper.finish(Duration::from_secs(10)).await;
        assert_eq!(
            stats.shipped(),
            7,
            "round {round} ships only its own events ({} failed attempts)",
            stats.failures()
        );
    }
    assert_eq!(tdb.events().await, 21);
    let report = audit::verify(&db, &mut Checkpoints::default())
        .await
        .unwrap();
    assert!(report.broken.is_empty(), "{:?}", report.broken);
    assert_eq!(report.chains.len(), 1);
    let chain = &report.chains[0];
    assert_eq!((chain.events, chain.first_seq, chain.last_seq), (21, 1, 21));
    assert!(chain.from_genesis);
    // `--expect`: the table's last hash is found, a hash it never held is not.
    assert_eq!(chain.last_hash.len(), 64);
    let never = "0".repeat(64);
    let mut checkpoints = Checkpoints::new([chain.last_hash.clone(), never.clone()]);
    audit::verify(&db, &mut checkpoints).await.unwrap();
    assert_eq!(checkpoints.missing(), [never.as_str()]);
    assert!(
        std::fs::read_dir(&events)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jsonl"))
            .count()
            > 3,
        "the log rolled into several segments"
    );
}

/// Ships `events` as replica `replica` from a log of their own.
async fn ship_events(db: &Db, replica: &str, events: Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let (sink, writer) = EventLog::open(&log, LogOptions::default()).unwrap();
    let n = events.len() as u64;
    for e in events {
        sink.send(e).await.unwrap();
    }
    writer.close().await.unwrap();
    let ready = tokio::sync::watch::channel(true).1;
    let shipper = ship::start(db.clone(), log, replica.into(), None, ready);
    let stats = Arc::clone(shipper.stats());
    shipper.finish(Duration::from_secs(20)).await;
    assert_eq!(stats.shipped(), n, "{} failed attempts", stats.failures());
}

/// PostgreSQL's jsonb refuses the escape `\u0000`: an event with a NUL in
/// a client's text stopped its replica's shipping for good. It ships, the
/// queryable copy reads U+FFFD there, and the line stays what was hashed.
#[tokio::test]
async fn an_event_with_a_nul_ships_and_verifies() {
    let Some(tdb) = TestDb::create("an_event_with_a_nul_ships_and_verifies").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let nul = Event {
        model: Some("x\u{0}".into()),
        ..event(0)
    };
    ship_events(&db, "r1.test", vec![event(1), nul, event(2)]).await;
    let c = tdb.client().await;
    let row = c
        .query_one(
            "SELECT line, event->>'model' FROM kt_events WHERE seq = 2",
            &[],
        )
        .await
        .unwrap();
    let (line, model): (String, String) = (row.get(0), row.get(1));
    assert!(line.contains(r#""model":"x\u0000""#), "{line}");
    assert_eq!(model, "x\u{fffd}");
    let report = audit::verify(&db, &mut Checkpoints::default())
        .await
        .unwrap();
    assert!(report.broken.is_empty(), "{:?}", report.broken);
    assert_eq!(report.chains[0].events, 3);
}

/// A feed poll that fails part-way (here: reading one replica's rows)
/// hands out nothing and keeps its place, so the rows of the replicas read
/// before the failure come with the next poll instead of being skipped.
#[tokio::test]
async fn a_feed_poll_that_fails_part_way_loses_no_event() {
    let Some(tdb) = TestDb::create("a_feed_poll_that_fails_part_way_loses_no_event").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    // The feed reads through views that fail for a replica listed in
    // trap.fail, replicas in name order.
    tdb.client()
        .await
        .batch_execute(
            r#"
            CREATE SCHEMA trap;
            CREATE TABLE trap.fail (replica text);
            CREATE FUNCTION trap.pass(r text) RETURNS boolean LANGUAGE plpgsql AS $$
                BEGIN
                    IF EXISTS (SELECT 1 FROM trap.fail WHERE replica = r) THEN
                        RAISE EXCEPTION 'reading %: trapped', r;
                    END IF;
                    RETURN true;
                END $$;
            CREATE VIEW trap.kt_replicas AS
                SELECT * FROM public.kt_replicas ORDER BY replica;
            CREATE VIEW trap.kt_events AS
                SELECT * FROM public.kt_events WHERE trap.pass(replica);
            "#,
        )
        .await
        .unwrap();
    let trapped = Db::new(&format!("{}?options=-c%20search_path%3Dtrap", tdb.url)).unwrap();
    let (history, mut feed) = TeamFeed::start(&trapped, 10, Filters::default())
        .await
        .unwrap();
    assert!(history.is_empty());
    ship_events(&db, "a.test", vec![event(0), event(1)]).await;
    ship_events(&db, "b.test", vec![event(2), event(3)]).await;
    let c = tdb.client().await;
    c.execute("INSERT INTO trap.fail VALUES ('b.test')", &[])
        .await
        .unwrap();
    // Polls read a's rows, then fail on b's.
    assert!(tokio::time::timeout(Duration::from_secs(2), feed.next())
        .await
        .is_err());
    c.execute("DELETE FROM trap.fail", &[]).await.unwrap();
    let mut users = Vec::new();
    for _ in 0..4 {
        let e = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap_or_else(|_| panic!("an event is missing; got {users:?}"));
        users.push(e.user.unwrap().to_string());
    }
    users.sort();
    assert_eq!(users, ["u0", "u1", "u2", "u3"]);
}

/// Rows whose head row was deleted still count in reports and feeds:
/// verification checks them and reports the missing head.
#[tokio::test]
async fn verify_reports_rows_whose_head_was_deleted() {
    let Some(tdb) = TestDb::create("verify_reports_rows_whose_head_was_deleted").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    ship_events(&db, "a.test", vec![event(0)]).await;
    ship_events(&db, "b.test", vec![event(1), event(2)]).await;
    let c = tdb.client().await;
    c.execute("DELETE FROM kt_replicas WHERE replica = 'b.test'", &[])
        .await
        .unwrap();
    let report = audit::verify(&db, &mut Checkpoints::default())
        .await
        .unwrap();
    assert_eq!(report.chains.len(), 1, "{:?}", report.chains);
    assert_eq!(report.chains[0].replica, "a.test");
    assert_eq!(
        report.broken,
        [audit::Broken::Headless {
            replica: "b.test".into(),
            last_seq: 2
        }]
    );
    let out = kt(&["events", "verify", "--storage", &tdb.url]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replica b.test: rows up to seq 2 but no head"),
        "{stderr}"
    );
}

/// kt numbers every chain from seq 1 and never deletes rows: a chain whose
/// oldest rows were deleted fails the check, instead of its first row left
/// passing as the start.
#[tokio::test]
async fn verify_reports_rows_deleted_from_a_chains_start() {
    let Some(tdb) = TestDb::create("verify_reports_rows_deleted_from_a_chains_start").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    ship_events(&db, "r1.test", (0..5).map(event).collect()).await;
    tdb.client()
        .await
        .execute(
            "DELETE FROM kt_events WHERE replica = 'r1.test' AND seq <= 3",
            &[],
        )
        .await
        .unwrap();
    let report = audit::verify(&db, &mut Checkpoints::default())
        .await
        .unwrap();
    assert!(report.chains.is_empty(), "{:?}", report.chains);
    assert_eq!(
        report.broken,
        [audit::Broken::Start {
            replica: "r1.test".into(),
            seq: 4
        }]
    );
    let out = kt(&["events", "verify", "--storage", &tdb.url]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replica r1.test: its first row is seq 4, not 1"),
        "{stderr}"
    );
}

/// A chain under a new name (the host name or `KT_REPLICA_ID` changed, or
/// `replica.id` was removed) continues after the last event the log
/// shipped under the old one, instead of shipping the whole log again.
#[tokio::test]
async fn a_renamed_replica_continues_after_what_was_shipped() {
    let Some(tdb) = TestDb::create("a_renamed_replica_continues_after_what_was_shipped").await
    else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let ready = tokio::sync::watch::channel(true).1;
    for (name, range) in [("a.test", 0..3), ("b.test", 3..5)] {
        let (sink, writer) = EventLog::open(&events, LogOptions::default()).unwrap();
        for i in range.clone() {
            sink.send(event(i)).await.unwrap();
        }
        writer.close().await.unwrap();
        let shipper = ship::start(db.clone(), events.clone(), name.into(), None, ready.clone());
        let stats = Arc::clone(shipper.stats());
        shipper.finish(Duration::from_secs(20)).await;
        assert_eq!(
            stats.shipped(),
            range.len() as u64,
            "{name} ships only what was not shipped"
        );
    }
    assert_eq!(tdb.events().await, 5);
    let report = audit::verify(&db, &mut Checkpoints::default())
        .await
        .unwrap();
    assert!(report.broken.is_empty(), "{:?}", report.broken);
    let renamed = &report.chains[1];
    assert_eq!(
        (
            renamed.replica.as_str(),
            renamed.events,
            renamed.from_genesis
        ),
        ("b.test", 2, false),
        "linked to the old chain's last event"
    );
    // `kt events verify --storage` says so, not that it was pruned.
    let verified = kt_ok(&["events", "verify", "--storage", &tdb.url]).await;
    let line = verified
        .lines()
        .find(|l| l.starts_with("replica b.test: ok: 2 events (seq 1..2)"))
        .unwrap_or_else(|| panic!("{verified}"));
    assert!(line.contains("continuing an earlier chain"), "{line}");
}

/// Events removed from the local log before they were shipped stop
/// shipping with an error instead of leaving a silent hole in the shared
/// chain.
#[tokio::test]
async fn events_lost_before_shipping_stop_shipping() {
    let Some(tdb) = TestDb::create("events_lost_before_shipping_stop_shipping").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    // A segment per event.
    let options = || LogOptions {
        segment_max_bytes: 1,
        ..LogOptions::default()
    };
    let ready = tokio::sync::watch::channel(true).1;
    let write = |range: std::ops::Range<usize>| {
        let events = events.clone();
        async move {
            let (sink, writer) = EventLog::open(&events, options()).unwrap();
            for i in range {
                sink.send(event(i)).await.unwrap();
            }
            writer.close().await.unwrap();
        }
    };
    write(0..2).await;
    let shipper = ship::start(
        db.clone(),
        events.clone(),
        "r1.test".into(),
        None,
        ready.clone(),
    );
    shipper.finish(Duration::from_secs(20)).await;
    assert_eq!(tdb.events().await, 2);
    write(2..4).await;
    let mut segments: Vec<_> = std::fs::read_dir(&events)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segments.sort_by_key(|p| {
        keeptrusts::events::segment::parse_name(p.file_name().unwrap().to_str().unwrap())
    });
    assert_eq!(segments.len(), 4);
    // The first event not yet shipped goes.
    std::fs::remove_file(&segments[2]).unwrap();
    let shipper = ship::start(db.clone(), events.clone(), "r1.test".into(), None, ready);
    let stats = Arc::clone(shipper.stats());
    eventually("the gap refused", Duration::from_secs(20), || {
        let stats = Arc::clone(&stats);
        async move { stats.failures() >= 2 }
    })
    .await;
    shipper.finish(Duration::from_millis(100)).await;
    assert_eq!(stats.shipped(), 0);
    assert_eq!(tdb.events().await, 2, "nothing shipped across the gap");
}

/// A revocation draws its version when it is made, not when it commits:
/// a key created meanwhile can commit first with a higher one, and a
/// replica that reads the table between the two commits has then seen the
/// highest version and the number of keys that hold after the revocation
/// too. The revocation is still picked up.
#[tokio::test]
async fn a_revocation_committed_after_a_newer_change_is_picked_up() {
    let Some(tdb) =
        TestDb::create("a_revocation_committed_after_a_newer_change_is_picked_up").await
    else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let old = keys::create(&db, "old", None, false).await.unwrap();
    // The revocation, made (its version drawn) and not yet committed.
    let mut revoker = tdb.client().await;
    let revoking = revoker.transaction().await.unwrap();
    let revoked = revoking
        .execute(
            // What `kt keys revoke` runs.
            "UPDATE kt_keys SET revoked_at = $2, version = nextval('kt_keys_version') WHERE id = $1",
            &[&old.record.id, &keeptrusts::keys::file::now()],
        )
        .await
        .unwrap();
    assert_eq!(revoked, 1);
    keys::create(&db, "new", None, false).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let watcher = keys::KeyWatcher::new(db.clone(), cache.path().join("keys.json")).unwrap();
    let seen = watcher.load_now().await.unwrap();
    let store = Arc::clone(watcher.store());
    assert_eq!(
        store.active_keys(),
        2,
        "the revocation is not committed yet"
    );
    revoking.commit().await.unwrap();
    let watching = tokio::spawn(watcher.run(Some(seen)));
    eventually("the revocation picked up", Duration::from_secs(10), || {
        let store = Arc::clone(&store);
        async move { store.active_keys() == 1 }
    })
    .await;
    watching.abort();
}

/// A line in the middle of the local log that is damaged (not a sealed
/// event any more) or gone stops shipping at it: the events before it are
/// shipped, none after it, instead of a hole in the shared chain.
#[tokio::test]
async fn a_damaged_or_missing_line_stops_shipping_there() {
    let Some(tdb) = TestDb::create("a_damaged_or_missing_line_stops_shipping_there").await else {
        return;
    };
    let db = Db::open(&tdb.url).await.unwrap();
    let ready = tokio::sync::watch::channel(true).1;
    type Damage = fn(&str) -> Option<String>;
    let damages: [(&str, Damage); 2] = [
        ("damaged.test", |line| Some(line.replacen('{', "x", 1))),
        ("missing.test", |_| None),
    ];
    for (replica, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        let (sink, writer) = EventLog::open(&events, LogOptions::default()).unwrap();
        for i in 0..5 {
            sink.send(event(i)).await.unwrap();
        }
        writer.close().await.unwrap();
        let segment = keeptrusts::events::segment::list(&events)
            .unwrap()
            .pop()
            .unwrap()
            .path;
        let text = std::fs::read_to_string(&segment).unwrap();
        let damaged: String = text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                if i == 2 {
                    damage(line)
                } else {
                    Some(line.into())
                }
            })
            .map(|line| line + "\n")
            .collect();
        std::fs::write(&segment, damaged).unwrap();
        let shipper = ship::start(db.clone(), events, replica.into(), None, ready.clone());
        let stats = Arc::clone(shipper.stats());
        eventually(
            &format!("{replica}: the break refused"),
            Duration::from_secs(20),
            || {
                let stats = Arc::clone(&stats);
                async move { stats.failures() >= 2 }
            },
        )
        .await;
        shipper.finish(Duration::from_millis(100)).await;
        assert_eq!(stats.shipped(), 2, "{replica}: the events before the break");
        let rows: i64 = tdb
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM kt_events WHERE replica = $1",
                &[&replica],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 2, "{replica}: nothing shipped past the break");
    }
    let report = audit::verify(&db, &mut Checkpoints::default())
        .await
        .unwrap();
    assert!(report.broken.is_empty(), "{:?}", report.broken);
}
