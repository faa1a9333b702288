//! Assembling a gateway from resolved settings: the CA, the leaf cache, the
//! upstream client and the interception rules. Used by `kt gateway run` and
//! by tests, which start gateways in-process on `127.0.0.1:0`.

use crate::config::{Config, ConfigError};
use crate::events::{EventLog, EventsError, LogOptions, WriterHandle};
use crate::keys::{AuthGate, KeyStore, KeysError};
use crate::policy::chain::ChainError;
use crate::policy::Engine;
use crate::proxy::{Gateway, InterceptMode, InterceptRules, Limits};
use crate::storage::hosted::Hosted;
use crate::storage::keys::KeyWatcher;
use crate::storage::{Db, StorageError};
use crate::tls::{CaError, CaPaths, CertCache, CertificateAuthority, LeafMinter, MintError};
use crate::upstream::chain::{NoProxy, ProxyRules, ProxyUrl, ProxyUrlError};
use crate::upstream::connect_to::{ConnectTo, ConnectToError, ConnectToRules};
use crate::upstream::tls::TrustStoreError;
use crate::upstream::{Upstream, UpstreamTimeouts, UpstreamTls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything needed to build a gateway, after flags and config are merged.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub ca_dir: PathBuf,
    pub upstream_ca: Vec<PathBuf>,
    pub connect_to: Vec<String>,
    pub upstream_proxy: Option<String>,
    pub intercept: InterceptMode,
    pub intercept_hosts: Vec<String>,
    pub limits: Limits,
    pub upstream_timeouts: UpstreamTimeouts,
    /// Trust the OS roots for upstream TLS (always in production; tests
    /// turn it off to prove that only their own CA is trusted).
    pub os_roots: bool,
    /// Read `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment.
    pub env_proxy: bool,
    pub cert_cache_capacity: u64,
    pub cert_cache_ttl: Duration,
    /// The policy config; `None` runs the built-in chain (audit only).
    pub policy: Option<Arc<Config>>,
    /// Where the audit log is written (`<home>/events`); `None` writes none.
    pub events_dir: Option<PathBuf>,
    /// The access key file (`<home>/keys.json`); `None`: no keys.
    pub keys_file: Option<PathBuf>,
    /// `auth.required`; `None`: required unless listening on loopback.
    pub auth_required: Option<bool>,
    /// `auth.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Hosted mode: the shared PostgreSQL store (`postgres://…`). Events are
    /// still written to `events_dir` first and shipped from there; access
    /// keys come from the database, with `keys_file` as their local copy.
    pub shared_store: Option<String>,
}

impl GatewaySettings {
    /// Defaults for a gateway whose CA lives in `ca_dir`.
    pub fn new(listen: SocketAddr, ca_dir: PathBuf) -> Self {
        GatewaySettings {
            listen,
            ca_dir,
            upstream_ca: Vec::new(),
            connect_to: Vec::new(),
            upstream_proxy: None,
            intercept: InterceptMode::Llm,
            intercept_hosts: Vec::new(),
            limits: Limits::default(),
            upstream_timeouts: UpstreamTimeouts::default(),
            os_roots: true,
            env_proxy: true,
            cert_cache_capacity: 10_000,
            cert_cache_ttl: Duration::from_secs(7 * 24 * 3600),
            policy: None,
            events_dir: None,
            keys_file: None,
            auth_required: None,
            trusted_proxies: Vec::new(),
            shared_store: None,
        }
    }

    /// Adds the config file's settings (flags given on the command line come
    /// first; config entries are appended).
    pub fn apply_config(&mut self, config: &Arc<Config>) {
        self.policy = Some(config.clone());
        self.intercept_hosts
            .extend(config.intercept.hosts.iter().cloned());
        self.connect_to
            .extend(config.upstream.connect_to.iter().cloned());
        self.upstream_ca
            .extend(config.upstream.ca_files.iter().cloned());
        if self.upstream_proxy.is_none() {
            self.upstream_proxy.clone_from(&config.upstream.proxy);
        }
        if self.auth_required.is_none() {
            self.auth_required = config.auth.required;
        }
        self.trusted_proxies
            .extend(config.auth.trusted_proxies.iter().copied());
        for &port in &config.upstream.allowed_connect_ports {
            if !self.limits.allowed_connect_ports.contains(&port) {
                self.limits.allowed_connect_ports.push(port);
            }
        }
        if let Some(timeout) = config.upstream.response_timeout {
            self.upstream_timeouts.response_head = timeout;
        }
        // Listing ports asks for the restriction, even on loopback.
        if !config.upstream.allowed_connect_ports.is_empty()
            && self.limits.restrict_connect_ports.is_none()
        {
            self.limits.restrict_connect_ports = Some(true);
        }
    }
}

/// Why a gateway could not be built (all are bad input or local problems).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error(transparent)]
    ConnectTo(#[from] ConnectToError),
    #[error(transparent)]
    Proxy(#[from] ProxyUrlError),
    #[error(transparent)]
    Trust(#[from] TrustStoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] ChainError),
    #[error("audit log: {0}")]
    Events(#[from] EventsError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error("shared store: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot keep the replica name in {path}: {source}")]
    Replica {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A built gateway and what the start-up banner reports.
pub struct Built {
    pub gateway: Arc<Gateway>,
    pub ca: CaPaths,
    pub ca_created: bool,
    pub upstream_proxy: Option<String>,
    pub warnings: Vec<String>,
    /// The audit log writer: close it after draining so every event is on
    /// disk before exit.
    pub events: Option<WriterHandle>,
    /// Hosted mode's link to the shared store: finish it after `events`.
    pub hosted: Option<Hosted>,
}

/// Builds the gateway. Must run inside a tokio runtime.
pub fn build(settings: &GatewaySettings) -> Result<Built, BuildError> {
    crate::install_crypto_provider();
    let paths = CaPaths::in_dir(&settings.ca_dir);
    let (ca, ca_created) = CertificateAuthority::load_or_create(&paths)?;
    let minter = Arc::new(LeafMinter::new(Arc::new(ca))?);
    let certs = CertCache::new(
        minter,
        settings.cert_cache_capacity,
        settings.cert_cache_ttl,
    );

    let rules = settings
        .connect_to
        .iter()
        .map(|r| ConnectTo::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut warnings = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let proxies = match &settings.upstream_proxy {
        Some(url) => {
            let no_proxy = NoProxy::parse(
                &env("NO_PROXY")
                    .or_else(|| env("no_proxy"))
                    .unwrap_or_default(),
            );
            ProxyRules::explicit(ProxyUrl::parse(url)?, no_proxy)
        }
        None if settings.env_proxy => {
            let (rules, w) = ProxyRules::from_env(env, settings.listen);
            warnings.extend(w);
            rules
        }
        None => ProxyRules::default(),
    };
    let upstream_proxy = proxies
        .summary()
        .map(|line| match &settings.upstream_proxy {
            Some(_) => line,
            None => format!("{line} (from the environment)"),
        });
    let tls = UpstreamTls::new(&settings.upstream_ca, settings.os_roots)?;
    let upstream = Upstream::new(
        ConnectToRules::new(rules),
        proxies,
        tls,
        settings.upstream_timeouts.clone(),
    );
    let intercept = InterceptRules::new(settings.intercept, &settings.intercept_hosts);
    let (sink, events) = match &settings.events_dir {
        Some(dir) => {
            let mut options = LogOptions::default();
            let audit = audit_options(settings.policy.as_deref());
            if let Some(audit) = audit {
                options.fsync = audit.fsync;
            }
            let (sink, handle) = EventLog::open(dir, options)?;
            (Some((sink, dir.clone())), Some(handle))
        }
        None => (None, None),
    };
    let engine = Arc::new(Engine::with_sink(
        settings.policy.as_deref(),
        sink.as_ref().map(|(s, _)| s.clone()),
    )?);
    // Only the log's writer prunes it, by the retention of the chain in
    // force (a reload may set or change it).
    if let Some((_, dir)) = &sink {
        start_pruning(dir.clone(), engine.clone(), settings.shared_store.is_some());
    }
    let (store, hosted, shared) = match (&settings.shared_store, &sink) {
        (Some(url), Some((sink, dir))) => {
            let db = Db::new(url)?;
            let replica =
                crate::storage::replica::id(dir).map_err(|source| BuildError::Replica {
                    path: dir.join(crate::storage::replica::FILE),
                    source,
                })?;
            let cache = settings
                .keys_file
                .clone()
                .unwrap_or_else(|| dir.join(crate::keys::KEYS_FILE));
            let watcher = KeyWatcher::new(db.clone(), cache)?;
            let store = watcher.store().clone();
            tracing::info!(database = %db.shown(), %replica, "hosted mode: events and access keys in the shared store");
            let hosted = Hosted::start(
                db.clone(),
                dir.clone(),
                replica,
                Some(sink.synced()),
                watcher,
            );
            (Some(store), Some(hosted), Some(db))
        }
        (Some(_), None) => {
            warnings.push("a shared store needs the audit log (its local spool); events are not shipped and keys are read from the local file".into());
            (open_key_file(settings)?, None, None)
        }
        (None, _) => (open_key_file(settings)?, None, None),
    };
    let shipping = hosted.as_ref().map(Hosted::ship_stats);
    let feed = sink.map(|(sink, dir)| crate::proxy::feed::EventsFeed {
        sink,
        dir,
        shared,
        shipping,
    });
    let auth = auth_gate(settings, store, hosted.is_some(), &mut warnings);
    let mut limits = settings.limits.clone();
    limits.restrict_connect_ports = Some(restricts_connect_ports(settings));
    let gateway = Gateway::new(certs, upstream, intercept, limits, engine, feed, auth);
    Ok(Built {
        gateway,
        ca: paths,
        ca_created,
        upstream_proxy,
        warnings,
        events,
        hosted,
    })
}

fn open_key_file(settings: &GatewaySettings) -> Result<Option<Arc<KeyStore>>, KeysError> {
    match &settings.keys_file {
        Some(path) => Ok(Some(Arc::new(KeyStore::open(path)?))),
        None => Ok(None),
    }
}

/// Access keys and whether they are required (contract §4): by default
/// only on loopback may the proxy run without keys; the two risky set-ups
/// are reported as start-up warnings.
fn auth_gate(
    settings: &GatewaySettings,
    store: Option<Arc<KeyStore>>,
    shared: bool,
    warnings: &mut Vec<String>,
) -> AuthGate {
    let loopback = settings.listen.ip().is_loopback();
    let required = settings.auth_required.unwrap_or(!loopback);
    if !required && !loopback {
        warnings.push(format!(
            "auth.required is false on {}, a non-loopback address: anyone who can reach this port can use the proxy",
            settings.listen
        ));
    }
    // A shared store's keys arrive after start; only a local file is known now.
    if required && !shared && store.as_ref().is_none_or(|s| s.active_keys() == 0) {
        warnings.push(
            "access keys are required but none exist yet, so every proxy request will be refused: create one with `kt keys create --user NAME`"
                .to_string(),
        );
    }
    AuthGate::new(required, store).trusting(&settings.trusted_proxies)
}

/// Whether CONNECT is held to the allowed ports: as configured, else
/// unless the gateway listens only on loopback.
fn restricts_connect_ports(settings: &GatewaySettings) -> bool {
    settings
        .limits
        .restrict_connect_ports
        .unwrap_or(!settings.listen.ip().is_loopback())
}

/// The options of the config's audit logger, if it has one.
fn audit_options(config: Option<&Config>) -> Option<&crate::config::AuditLoggerOptions> {
    config?.chain().find_map(|p| match &p.options {
        crate::config::PolicyOptions::AuditLogger(o) => Some(o),
        _ => None,
    })
}

/// How often expired segments are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(6 * 3600);

/// How often the retention in force is read: a reload that sets or
/// changes `retention_days` is applied within this.
const RETENTION_CHECK: Duration = Duration::from_secs(60);

/// Removes whole segments older than the audit logger's `retention_days`
/// now and every few hours, and at once when a reload changes it (the
/// newest segment always stays, so the chain stays verifiable); in hosted
/// mode never one not yet shipped.
fn start_pruning(dir: PathBuf, engine: Arc<Engine>, shipped: bool) {
    let retention = move || {
        engine
            .chain()
            .audit_options()
            .and_then(|o| o.retention_days)
    };
    let prune = move |days: u32| {
        let pruned = if shipped {
            crate::storage::ship::prune(&dir, days)
        } else {
            crate::events::prune(&dir, days)
        };
        match pruned {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    segments = removed.len(),
                    retention_days = days,
                    "pruned expired audit log segments"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("audit log retention: {e}"),
        }
    };
    let mut last = retention();
    if let Some(days) = last {
        prune(days);
    }
    tokio::spawn(async move {
        let mut pruned_at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(RETENTION_CHECK);
        tick.tick().await;
        loop {
            tick.tick().await;
            let days = retention();
            let due = days != last || pruned_at.elapsed() >= PRUNE_EVERY;
            last = days;
            let Some(days) = days.filter(|_| due) else {
                continue;
            };
            pruned_at = tokio::time::Instant::now();
            let prune = prune.clone();
            let _ = tokio::task::spawn_blocking(move || prune(days)).await;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    #[test]
    fn connect_ports_are_restricted_beyond_loopback_or_when_listed() {
        let settings = |listen: &str, yaml: Option<&str>| {
            let mut s =
                GatewaySettings::new(listen.parse().unwrap(), PathBuf::from("/nonexistent"));
            if let Some(yaml) = yaml {
                s.apply_config(&std::sync::Arc::new(
                    PolicyConfig::parse(yaml, std::path::Path::new("t.yaml")).unwrap(),
                ));
            }
            s
        };
        assert!(!restricts_connect_ports(&settings("127.0.0.1:41002", None)));
        assert!(!restricts_connect_ports(&settings("[::1]:41002", None)));
        assert!(restricts_connect_ports(&settings("0.0.0.0:41002", None)));
        assert!(restricts_connect_ports(&settings("10.1.2.3:41002", None)));
        let listed = "upstream:\n  allowed_connect_ports: [8443]\n";
        assert!(restricts_connect_ports(&settings(
            "127.0.0.1:41002",
            Some(listed)
        )));
    }

    /// A reload that sets `retention_days` prunes at the next check, not
    /// only after a restart.
    #[tokio::test(start_paused = true)]
    async fn a_reload_applies_its_retention() {
        let audit = |extra: &str| {
            PolicyConfig::parse(
                &format!(
                    "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {{{extra}}}\n"
                ),
                std::path::Path::new("t.yaml"),
            )
            .unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        std::fs::create_dir_all(&dir).unwrap();
        let old: Vec<PathBuf> = ["2020-01-01", "2020-01-02"]
            .iter()
            .map(|day| dir.join(format!("{day}.jsonl")))
            .collect();
        for path in &old {
            std::fs::write(path, "").unwrap();
        }
        let engine = Arc::new(Engine::new(Some(&audit(""))).unwrap());
        start_pruning(dir.clone(), engine.clone(), false);
        tokio::time::sleep(RETENTION_CHECK * 2).await;
        assert!(old[0].exists(), "pruned without a retention");
        engine.reload(&audit("retention_days: 30")).unwrap();
        for _ in 0..500 {
            if !old[0].exists() {
                break;
            }
            tokio::time::sleep(RETENTION_CHECK).await;
            // The prune runs on a blocking thread, in real time.
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!old[0].exists(), "the reloaded retention was not applied");
        assert!(old[1].exists(), "the newest segment stays");
    }
}
