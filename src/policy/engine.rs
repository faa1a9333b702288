//! The policy engine the proxy talks to: recognizes LLM requests, picks
//! the policies that apply, and swaps in a new chain on reload while
//! exchanges in flight keep the one they started with.

use super::chain::{Chain, ChainError};
use super::exchange::{Exchange, ExchangeInfo};
use crate::config::{Config, RequestFacts};
use crate::direct::{Routes, Target};
use crate::identity::Identity;
use crate::llm::hosts::HostSet;
use crate::llm::recognize::{classify_with, normalized_path, Classification, Provider};
use std::sync::{Arc, RwLock};

/// Shared by every connection.
pub struct Engine {
    chain: RwLock<Arc<Chain>>,
    /// The audit log's sender, when the gateway writes one.
    sink: Option<crate::events::EventSink>,
    /// Event sends and shared-limit writes in flight, so shutdown can wait
    /// for them before closing the log.
    sends: tokio_util::task::TaskTracker,
    metrics: Arc<crate::metrics::Metrics>,
    /// Hosts configured in `intercept.hosts`: Sourcegraph Enterprise
    /// instances unless the built-in table knows them.
    configured_hosts: RwLock<Arc<HostSet>>,
    /// The cache tiers, kept across reloads (a reload that keeps a cache
    /// policy's backend keeps its entries).
    caches: Arc<crate::cache::Caches>,
    /// The direct API's provider targets, swapped with the chain on reload.
    routes: RwLock<Arc<Routes>>,
}

impl Engine {
    /// The built-in chain (audit only) when there is no config.
    pub fn new(config: Option<&Config>) -> Result<Self, ChainError> {
        Self::with_sink(config, None)
    }

    /// Like [`Engine::new`], recording exchanges into `sink`.
    pub fn with_sink(
        config: Option<&Config>,
        sink: Option<crate::events::EventSink>,
    ) -> Result<Self, ChainError> {
        let (chain, hosts) = Self::compile(config, None)?;
        Ok(Engine {
            sink,
            sends: tokio_util::task::TaskTracker::new(),
            metrics: Arc::default(),
            chain: RwLock::new(Arc::new(chain)),
            configured_hosts: RwLock::new(Arc::new(hosts)),
            caches: Arc::default(),
            routes: RwLock::new(Arc::new(routes_of(config))),
        })
    }

    fn compile(
        config: Option<&Config>,
        previous: Option<&Chain>,
    ) -> Result<(Chain, HostSet), ChainError> {
        match config {
            // A config without `policies:` already lists the default
            // audit-logger; an empty list is an explicit `chain: []`.
            Some(c) => Ok((
                Chain::build_after(c, previous)?,
                HostSet::new(c.intercept.hosts.iter()),
            )),
            None => Ok((Chain::builtin(), HostSet::new(std::iter::empty::<&str>()))),
        }
    }

    /// Replaces the chain; on error the old one stays in force. Rate limits
    /// and budgets whose policy kept its name and options keep counting.
    pub fn reload(&self, config: &Config) -> Result<(), ChainError> {
        let (chain, hosts) = Self::compile(Some(config), Some(&self.chain()))?;
        self.caches
            .keep_only(chain.policies().iter().filter_map(|p| match &p.action {
                super::chain::Action::Cache(o) => Some(o),
                _ => None,
            }));
        let fsync = chain.audit_options().map(|o| o.fsync).unwrap_or_default();
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(chain);
        // The audit log's writer takes the new `fsync:` after what is queued.
        if let (Some(sink), Ok(_)) = (&self.sink, tokio::runtime::Handle::try_current()) {
            let sink = sink.clone();
            self.sends.spawn(async move {
                let _ = sink.set_fsync(fsync).await;
            });
        }
        *self
            .configured_hosts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts);
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes_of(Some(config)));
        Ok(())
    }

    /// Waits until every audit event handed over so far is queued in the log
    /// (call after draining, before closing the log).
    pub async fn settle(&self) {
        self.sends.close();
        self.sends.wait().await;
    }

    /// Records a blind tunnel (`connect` event) when the audit logger asks
    /// for all access (`log_all_access: true`).
    pub fn record_tunnel(&self, target: &str, client: Option<&crate::identity::ClientAddr>) {
        self.record_connect(target, client, crate::events::Action::Tunnel, None);
    }

    /// Records a CONNECT (`connect` event with `action` and `reason`) when
    /// the audit logger asks for all access (`log_all_access: true`).
    pub fn record_connect(
        &self,
        target: &str,
        client: Option<&crate::identity::ClientAddr>,
        action: crate::events::Action,
        reason: Option<String>,
    ) {
        let Some(sink) = &self.sink else { return };
        let chain = self.chain();
        let wanted = chain.policies().iter().any(
            |p| matches!(&p.action, crate::policy::chain::Action::Audit(o) if o.log_all_access),
        );
        if !wanted {
            return;
        }
        let mut event = Box::new(crate::events::Event::new(
            crate::events::Phase::Connect,
            action,
        ));
        event.mode = Some(crate::events::Mode::Proxy);
        event.method = Some("CONNECT".into());
        event.host = Some(target.into());
        event.client_ip = client.map(|c| c.text.clone());
        event.reason = reason;
        crate::policy::exchange::submit(sink, &self.sends, [event]);
    }

    /// Exchange outcomes since start.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The cache tiers of `cache` policies.
    pub fn caches(&self) -> &Arc<crate::cache::Caches> {
        &self.caches
    }

    /// The chain new exchanges start with.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The direct API's routes in force.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An exchange for a direct-API request routed to `target`: classified
    /// by the client's path (`/v1/...`, which names the dialect), recorded
    /// with the upstream host and path. `None` when no policy applies.
    pub fn begin_direct(
        &self,
        target: &Target,
        method: &http::Method,
        client_path: &str,
        upstream_path: &str,
        headers: &http::HeaderMap,
        identity: &Identity,
    ) -> Option<Box<Exchange>> {
        let client_normalized = normalized_path(client_path);
        let class = classify_with(
            Some(target.provider),
            &target.origin.host,
            method,
            client_normalized.as_deref().unwrap_or(client_path),
            headers,
        );
        if !class.inspect() {
            return None;
        }
        let upstream_normalized = normalized_path(upstream_path);
        let upstream_path = upstream_normalized.as_deref().unwrap_or(upstream_path);
        let path = upstream_path
            .split_once('?')
            .map_or(upstream_path, |(p, _)| p);
        self.start(
            &class,
            &target.origin.host,
            path,
            method,
            identity,
            headers,
            Some(target.id.clone()),
        )
    }

    /// An exchange for this request if it is an LLM call some policy
    /// applies to; `None` means forward untouched (the common, free path).
    pub fn begin(
        &self,
        host: &Arc<str>,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        identity: &Identity,
    ) -> Option<Box<Exchange>> {
        let raw = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let normalized = normalized_path(raw);
        let path_and_query = normalized.as_deref().unwrap_or(raw);
        let hint = {
            let hosts = self
                .configured_hosts
                .read()
                .unwrap_or_else(|p| p.into_inner());
            (Provider::from_host(host) == Provider::Unknown && hosts.matches(host))
                .then_some(Provider::Sourcegraph)
        };
        let class = classify_with(hint, host, method, path_and_query, headers);
        if !class.inspect() && !class.websocket() {
            return None;
        }
        let path = match &normalized {
            Some(n) => n.split_once('?').map_or(n.as_str(), |(p, _)| p),
            None => uri.path(),
        };
        self.start(&class, host, path, method, identity, headers, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        class: &Classification<'_>,
        // Shared with the origin: a count, not a copy per exchange.
        host: &Arc<str>,
        path: &str,
        method: &http::Method,
        identity: &Identity,
        headers: &http::HeaderMap,
        target: Option<Arc<str>>,
    ) -> Option<Box<Exchange>> {
        let chain = self.chain();
        let endpoint = class.endpoint();
        let facts = RequestFacts {
            host,
            path,
            provider: target.as_deref().unwrap_or(class.provider().as_str()),
            endpoint,
            user: identity.user.as_deref(),
            team: identity.team.as_deref(),
            headers,
        };
        let selection = chain.select(&facts);
        if selection.is_empty() {
            return None;
        }
        let info = ExchangeInfo {
            provider: class.provider(),
            endpoint,
            api: class.api(),
            family: class.family(),
            autocomplete: class.autocomplete(),
            websocket: class.websocket(),
            host: host.clone(),
            path: path.into(),
            method: method.clone(),
            model: class.model().map(Arc::from),
            stream: class.stream_hint(),
            user: identity.user.clone(),
            team: identity.team.clone(),
            client: identity.client.clone(),
            mode: if target.is_some() {
                crate::events::Mode::Direct
            } else {
                crate::events::Mode::Proxy
            },
            target,
        };
        // Boxed: the exchange (about 700 bytes) travels by value through
        // several futures and into the response body; a pointer moves for
        // free where the struct was copied at every step.
        Some(Box::new(Exchange::new(
            chain,
            selection,
            info,
            self.sink.as_ref(),
            &self.sends,
            self.metrics.clone(),
        )))
    }
}

/// The direct API's routes of `config`, with what is wrong with them logged.
fn routes_of(config: Option<&Config>) -> Routes {
    let routes = Routes::from_config(config);
    for warning in routes.warnings() {
        tracing::warn!("{warning}");
    }
    routes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::policy::exchange::Input;
    use bytes::Bytes;
    use std::path::Path;

    const BLOCK: &str = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    patterns: ['zeus']\n";

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, Path::new("t.yaml")).unwrap()
    }

    fn begin(engine: &Engine, path: &str) -> Option<Box<Exchange>> {
        let uri: http::Uri = path.parse().unwrap();
        engine.begin(
            &Arc::from("api.openai.com"),
            &http::Method::POST,
            &uri,
            &http::HeaderMap::new(),
            &Identity::anonymous(),
        )
    }

    const BODY: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"about zeus"}]}"#;

    /// A reload that changes a cache policy's store (its size here) drops
    /// the old store and its entries; one that keeps it keeps them.
    #[test]
    fn a_reload_drops_the_cache_stores_no_policy_uses() {
        let cache = |size: &str| {
            config(&format!(
                "policies:\n  chain: [c]\npolicy:\n  c: {{type: cache, max_bytes: {size}}}\n"
            ))
        };
        let engine = Engine::new(Some(&cache("1MiB"))).unwrap();
        let options = |engine: &Engine| {
            engine
                .chain()
                .policies()
                .iter()
                .find_map(|p| match &p.action {
                    super::super::chain::Action::Cache(o) => Some(o.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let store = engine.caches().store(&options(&engine)).unwrap();
        assert_eq!(Arc::strong_count(&store), 2, "held by the gateway");
        engine.reload(&cache("1MiB")).unwrap();
        assert_eq!(Arc::strong_count(&store), 2, "the same store stays");
        engine.reload(&cache("2MiB")).unwrap();
        assert_eq!(Arc::strong_count(&store), 1, "the old store was kept");
        let new = engine.caches().store(&options(&engine)).unwrap();
        assert!(!Arc::ptr_eq(&store, &new));
    }

    #[tokio::test]
    async fn an_immutable_audit_refuses_what_it_cannot_record() {
        let immutable = config(
            "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger:\n    immutable: true\n",
        );
        let plain = config("policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n");
        // No log at all.
        let engine = Engine::new(Some(&immutable)).unwrap();
        assert!(begin(&engine, "/v1/chat/completions")
            .unwrap()
            .unrecordable());
        let engine = Engine::new(Some(&plain)).unwrap();
        assert!(!begin(&engine, "/v1/chat/completions")
            .unwrap()
            .unrecordable());
        // A log that is open, then closed.
        let dir = tempfile::tempdir().unwrap();
        let (sink, writer) =
            crate::events::EventLog::open(dir.path(), crate::events::LogOptions::default())
                .unwrap();
        let engine = Engine::with_sink(Some(&immutable), Some(sink)).unwrap();
        let mut open = begin(&engine, "/v1/chat/completions").unwrap();
        assert!(!open.unrecordable());
        open.complete(Some(200));
        writer.close().await.unwrap();
        assert!(begin(&engine, "/v1/chat/completions")
            .unwrap()
            .unrecordable());
    }

    #[tokio::test]
    async fn an_exchange_waits_for_room_while_the_audit_queue_is_full() {
        use crate::events::{Action, Event, EventLog, LogOptions, Phase};
        let plain = config("policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n");
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            capacity: 1,
            // The writer holds its first event this long before writing.
            linger: std::time::Duration::from_secs(2),
            ..LogOptions::default()
        };
        let (sink, writer) = EventLog::open(dir.path(), options).unwrap();
        let engine = Engine::with_sink(Some(&plain), Some(sink.clone())).unwrap();
        let exchange = begin(&engine, "/v1/chat/completions").unwrap();
        let long = std::time::Duration::from_secs(30);
        assert!(
            ready_at_first_poll(std::pin::pin!(exchange.audit_room(long))).await,
            "room in an empty queue"
        );

        sink.send(Event::new(Phase::Input, Action::Pass))
            .await
            .unwrap();
        while sink.queued() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The writer lingers over the first event; this one fills the queue.
        sink.try_send(Event::new(Phase::Input, Action::Pass))
            .unwrap();
        assert!(
            !exchange
                .audit_room(std::time::Duration::from_millis(20))
                .await,
            "no room came"
        );
        {
            let mut room = std::pin::pin!(exchange.audit_room(long));
            assert!(
                !ready_at_first_poll(room.as_mut()).await,
                "room in a full queue"
            );
            // Once the writer takes the queued event.
            assert!(room.await);
        }
        drop(exchange);
        writer.close().await.unwrap();
    }

    /// Polls `fut` once; true if it was ready. The poll registers the waker,
    /// so awaiting `fut` afterwards still works.
    async fn ready_at_first_poll<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> bool {
        std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx).is_ready())).await
    }

    #[test]
    fn an_exchange_keeps_the_chain_it_started_with() {
        let engine = Engine::new(None).unwrap();
        let mut before = begin(&engine, "/v1/chat/completions").unwrap();
        engine.reload(&config(BLOCK)).unwrap();
        let mut after = begin(&engine, "/v1/chat/completions").unwrap();
        assert!(matches!(
            before.input(Bytes::from_static(BODY)),
            Input::Forward(_)
        ));
        assert!(matches!(
            after.input(Bytes::from_static(BODY)),
            Input::Respond(_)
        ));
    }

    #[test]
    fn non_llm_paths_and_unselected_requests_get_no_exchange() {
        let engine = Engine::new(Some(&config(BLOCK))).unwrap();
        assert!(begin(&engine, "/v1/models").is_none());
        assert!(begin(&engine, "/_ping").is_none());
        let scoped = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    patterns: ['zeus']\n    when:\n      endpoints: [embeddings]\n";
        let engine = Engine::new(Some(&config(scoped))).unwrap();
        assert!(begin(&engine, "/v1/chat/completions").is_none());
        assert!(begin(&engine, "/v1/embeddings").is_some());
    }

    #[test]
    fn when_paths_match_the_path_the_classifier_and_upstream_read() {
        for pattern in ["/v1/chat/completions", "/v1/*"] {
            let scoped = format!("{BLOCK}    when:\n      paths: ['{pattern}']\n");
            let engine = Engine::new(Some(&config(&scoped))).unwrap();
            for path in [
                "/v1/chat/completions",
                "/v1/chat/completions/",
                "//v1/chat/completions",
                "/v1/x/../chat/completions",
                "/v1/./chat//completions?x=1",
            ] {
                assert!(begin(&engine, path).is_some(), "{pattern} {path}");
            }
            assert!(
                begin(&engine, "/v2/chat/completions").is_none(),
                "{pattern}"
            );
        }
    }

    #[test]
    fn direct_api_when_paths_match_without_the_trailing_slash() {
        let yaml = format!(
            "providers:\n  targets:\n    - id: openai\n      provider:\n        base_url: https://api.openai.com/v1/\n{BLOCK}    when:\n      paths: ['/v1/chat/completions']\n"
        );
        let engine = Engine::new(Some(&config(&yaml))).unwrap();
        let routes = engine.routes();
        let target = routes
            .route(crate::direct::Shape::OpenAi, Some("gpt-4o"))
            .unwrap();
        let client = "/v1/chat/completions/";
        let exchange = engine.begin_direct(
            target,
            &http::Method::POST,
            client,
            &target.upstream_path(client),
            &http::HeaderMap::new(),
            &Identity::anonymous(),
        );
        assert!(exchange.is_some());
    }

    #[test]
    fn an_empty_chain_runs_nothing_and_a_config_without_one_keeps_the_audit() {
        let names = |yaml: &str| -> Vec<String> {
            let engine = Engine::new(Some(&config(yaml))).unwrap();
            let chain = engine.chain();
            chain
                .policies()
                .iter()
                .map(|p| p.name.to_string())
                .collect()
        };
        assert!(names("policies:\n  chain: []\n").is_empty());
        assert!(names("policies: []\n").is_empty());
        assert_eq!(
            names("intercept:\n  hosts: [llm.internal]\n"),
            ["audit-logger"]
        );
        let engine = Engine::new(Some(&config("policies:\n  chain: []\n"))).unwrap();
        assert!(begin(&engine, "/v1/chat/completions").is_none());
    }
}
