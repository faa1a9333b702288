//! `kt gateway run`: resolve flags and config, bind, serve, drain on signal.

use super::store::Store;
use super::HomeArgs;
use crate::config::Config;
use crate::gateway::{self, GatewaySettings};
use crate::idle_poll::IdlePoll;
use crate::proxy::InterceptMode;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The most `--max-connections` can be: past a million open sockets the
/// process runs out of descriptors long before the limit means anything.
const MAX_CONNECTIONS: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Run the gateway in the foreground.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy config file (YAML).
    #[arg(long, value_name = "FILE")]
    pub policy_config: Option<PathBuf>,
    /// Address to listen on (an IP, or a name such as `localhost`).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:41002",
          value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Extra PEM roots for upstream TLS (the OS roots are always trusted).
    #[arg(long, value_name = "PEMFILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Dial ADDR:PORT for HOST:PORT, keeping HOST as the TLS name (an
    /// empty ADDR or target PORT keeps the request's own, as in curl).
    #[arg(long, value_name = "HOST:PORT:ADDR:PORT")]
    pub connect_to: Vec<String>,
    /// Chain through this proxy, http:// or https:// (default: $HTTPS_PROXY / $HTTP_PROXY).
    #[arg(long, value_name = "URL")]
    pub upstream_proxy: Option<String>,
    /// Which CONNECT targets are decrypted.
    #[arg(long, value_enum, default_value_t = InterceptArg::Llm)]
    pub intercept: InterceptArg,
    /// Most concurrent client connections (tunnels included).
    #[arg(long, value_name = "N", default_value_t = 16384,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_CONNECTIONS))]
    pub max_connections: usize,
    /// Most concurrent connections from one client address (0: no limit;
    /// `auth.trusted_proxies` are exempt).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections_per_client: usize,
    /// Memory for all the bodies read whole for the policies at once, in
    /// MiB; a body still arriving past it gets 503.
    #[arg(long, value_name = "MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_buffered_body_mib: u64,
    /// How long SIGTERM/SIGINT waits for in-flight requests and streams.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Longest time the gateway keeps polling for I/O after a request
    /// before its thread sleeps, adapted to the traffic (0: never). Applies
    /// with one CPU, where the single-threaded runtime serves everything.
    /// At most 10000: past a few wake-up costs, sleeping is cheaper.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(..=10_000))]
    pub idle_poll_us: u64,
    /// Shared store for events and access keys (`postgres://USER@HOST/DB`)
    /// or a folder; overrides the policy config's `storage:`.
    #[arg(long, value_name = "URL", env = "KEEPTRUSTS_STORAGE")]
    pub storage: Option<String>,
}

/// In hosted mode, the local copy of the shared store's access keys.
const SHARED_KEYS_COPY: &str = "keys.shared.json";
/// How long start-up waits for the shared store before serving anyway.
const SHARED_STORE_WAIT: Duration = Duration::from_secs(10);
/// How long exit waits to ship the last events.
const SHIP_ON_EXIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InterceptArg {
    /// Built-in LLM hosts plus `intercept.hosts`.
    Llm,
    /// Every host.
    All,
    /// No host (every CONNECT is a blind tunnel).
    None,
}

pub fn run(home: &HomeArgs, cmd: GatewayCommand) -> anyhow::Result<ExitCode> {
    let GatewayCommand::Run(args) = cmd;
    // Before the load: an edit from here on is a change to reload.
    let loaded = args
        .policy_config
        .as_deref()
        .and_then(crate::policy::reload::fingerprint);
    let config = match &args.policy_config {
        Some(path) => {
            let config = Config::load(path)?;
            // The same warnings as `kt policy check`: a config that records
            // nothing, or silences its own redaction, should say so where
            // the gateway starts, not only to those who lint it.
            for w in &config.warnings {
                tracing::warn!("{}", w.display_in(path));
            }
            Some(std::sync::Arc::new(config))
        }
        None => None,
    };
    let mut settings = GatewaySettings::new(args.listen, home.ca_dir()?);
    // The local log is always written (in hosted mode it is the spool the
    // shipper reads); keys come from a file or from the shared store.
    match super::store::resolve(args.storage.as_deref(), config.as_deref(), home)? {
        Store::Files(dir) => {
            settings.events_dir = Some(dir.join("events"));
            settings.keys_file = Some(dir.join(crate::keys::KEYS_FILE));
        }
        Store::Postgres(url) => {
            let home_dir = home.home()?;
            settings.events_dir = Some(home_dir.join("events"));
            settings.keys_file = Some(home_dir.join(SHARED_KEYS_COPY));
            settings.shared_store = Some(url);
        }
    }
    settings.upstream_ca = args.upstream_ca.clone();
    settings.connect_to = args.connect_to.clone();
    settings.upstream_proxy = args.upstream_proxy.clone();
    settings.intercept = match args.intercept {
        InterceptArg::Llm => InterceptMode::Llm,
        InterceptArg::All => InterceptMode::All,
        InterceptArg::None => InterceptMode::None,
    };
    settings.limits.max_connections = args.max_connections;
    settings.limits.max_connections_per_client = args.max_connections_per_client;
    settings.limits.max_buffered_bodies =
        usize::try_from(args.max_buffered_body_mib << 20).unwrap_or(usize::MAX);
    if let Some(config) = &config {
        settings.apply_config(config);
    }
    // Access keys: required unless listening on loopback or
    // `auth.required: false` (then a start-up warning says the proxy is
    // open); see `gateway::build`.
    raise_fd_limit();
    warn_unused_console_settings();

    // One worker per CPU this process may use (affinity and cgroup quotas
    // count). With a single CPU the single-threaded scheduler does the same
    // work without cross-thread queues and wake-ups (a few µs per request
    // on the load benchmark); the test suite runs the gateway that way too.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .thread_name("kt-worker")
        .build()
        .context("cannot start the async runtime")?;
    // Polling from one task keeps one thread awake: that is the whole
    // runtime only when it is single-threaded.
    if cpus <= 1 && args.idle_poll_us > 0 {
        let poller = Arc::new(IdlePoll::new(Duration::from_micros(args.idle_poll_us)));
        if crate::idle_poll::install(poller.clone()) {
            runtime.spawn(async move { poller.run().await });
        }
    }
    runtime.block_on(serve(settings, args, loaded))
}

async fn serve(
    settings: GatewaySettings,
    args: RunArgs,
    loaded: crate::policy::reload::Fingerprint,
) -> anyhow::Result<ExitCode> {
    let (listener, also) = bind_listeners(settings.listen).await?;
    let local = listener.local_addr()?;
    // Before anything serves (or says it does): see `stop_signal`.
    let stop = stop_signal(args.policy_config.is_some());
    let built = gateway::build(&settings)?;
    for w in &built.warnings {
        tracing::warn!("{w}");
    }
    if built.ca_created {
        tracing::info!(path = %built.ca.cert.display(), "created a new local CA; trust it with `kt ca install`");
    }
    if let Some(hosted) = &built.hosted {
        // Valid keys must work from the first request; a database that is
        // down does not keep the gateway from serving, with the last keys
        // it saw.
        if !hosted.ready(SHARED_STORE_WAIT).await {
            tracing::warn!(
                database = %hosted.db().shown(),
                "shared store not reachable yet; serving with the access keys known before"
            );
        }
    }
    eprint!(
        "{}",
        super::banner::for_gateway(
            local,
            also.as_ref().and_then(|l| l.local_addr().ok()),
            &built,
            &settings,
            args.policy_config.as_deref()
        )
    );

    let (trigger, shutdown) = crate::shutdown::channel();
    let listeners = std::iter::once(listener).chain(also).collect();
    let server = tokio::spawn(built.gateway.clone().serve_all(listeners, shutdown));
    let reloader = args.policy_config.clone().map(|path| {
        let engine = built.gateway.engine().clone();
        tokio::spawn(crate::policy::reload::watch(
            path,
            engine,
            crate::policy::reload::POLL,
            loaded,
        ))
    });
    stop.await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    tracing::info!(
        grace_secs = args.drain_seconds,
        "draining: no new connections; waiting for in-flight requests"
    );
    let drained = trigger.drain(Duration::from_secs(args.drain_seconds)).await;
    let _ = server.await;
    // Before the wait for events still being sent: a writer stuck on a
    // full disk must start giving up, or they never get in.
    if let Some(events) = &built.events {
        events.begin_close();
    }
    built.gateway.engine().settle().await;
    if let Some(events) = built.events {
        match events.close().await {
            Ok(()) => tracing::info!("audit log flushed"),
            Err(e) => tracing::error!("audit log: {e}"),
        }
    }
    if let Some(hosted) = built.hosted {
        hosted.finish(SHIP_ON_EXIT).await;
    }
    if drained {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("drain period over; closing the remaining connections");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGTERM or SIGINT (SIGHUP is handled too: its default action
/// would kill the gateway). The handlers are installed when this is called,
/// not when the future is first polled: a signal that arrives as soon as
/// the gateway serves must find them in place, or it kills the process.
#[cfg(unix)]
fn stop_signal(reloading: bool) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => if !reloading {
                    tracing::info!("SIGHUP: no --policy-config to reload");
                },
            }
        }
    }
}

#[cfg(not(unix))]
fn stop_signal(_reloading: bool) -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Deployment guides for a console-managed gateway set these; kt runs on
/// its own, and a setting that silently does nothing misleads.
fn warn_unused_console_settings() {
    let set: Vec<&str> = ["KEEPTRUSTS_GATEWAY_TOKEN", "KEEPTRUSTS_API_URL"]
        .into_iter()
        .filter(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        .collect();
    if !set.is_empty() {
        tracing::warn!(
            variables = %set.join(", "),
            "set but not used: this gateway runs on its own, with no console to connect to; developers' access keys come from `kt keys create`"
        );
    }
}

/// Tunnels hold two descriptors each; the usual soft limit of 1024 would
/// cap the gateway at a few hundred clients.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::debug!(error = %e, "cannot raise the open file limit"),
    }
}

/// The other IP family's loopback address for a gateway on `127.0.0.1` or
/// `::1`: `localhost` resolves to both, and clients differ in which they try
/// (and whether they fall back), so the gateway answers on both.
fn companion_loopback(listen: SocketAddr) -> Option<SocketAddr> {
    match listen {
        SocketAddr::V4(a) if *a.ip() == std::net::Ipv4Addr::LOCALHOST => {
            Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())))
        }
        SocketAddr::V6(a) if *a.ip() == std::net::Ipv6Addr::LOCALHOST => {
            Some(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port())))
        }
        _ => None,
    }
}

/// How many ephemeral ports `--listen 127.0.0.1:0` tries for one that is
/// free on both loopback addresses: the kernel picks the port on one family
/// only, and the other family's port can be held by any other program.
const EPHEMERAL_PAIR_TRIES: usize = 16;

/// The gateway's listener on `listen`, and on [`companion_loopback`] of it
/// when that can be had. A machine without that family, or another program
/// on that port there, leaves the gateway on its main address alone; with
/// port 0 the gateway first tries other ports for a pair.
async fn bind_listeners(
    listen: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let mut tries = if listen.port() == 0 {
        EPHEMERAL_PAIR_TRIES
    } else {
        1
    };
    loop {
        let listener = crate::loopback_tcp::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let Some(addr) = companion_loopback(local) else {
            return Ok((listener, None));
        };
        tries -= 1;
        match crate::loopback_tcp::bind(addr).await {
            Ok(also) => return Ok((listener, Some(also))),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 0 => continue,
            Err(e) => {
                tracing::info!(
                    address = %addr,
                    error = %e,
                    "not listening on the other loopback address; clients that resolve localhost to it must use {}",
                    local.ip()
                );
                return Ok((listener, None));
            }
        }
    }
}

/// `--listen`: an IP address and port, or a host name and port. Guides
/// and users write `localhost:41002`; a name binds its first IPv4 address
/// (for `localhost`, the same 127.0.0.1 as the default), else its first
/// address.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "expected ADDR:PORT, e.g. 127.0.0.1:41002 (got {s:?})"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number (in {s:?})"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!(
            "expected ADDR:PORT, e.g. 127.0.0.1:41002 (got {s:?})"
        ));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_listen;

    /// Port 0 picks a port on one family; when other programs hold many
    /// ports on the other, the gateway still finds a pair. Without the
    /// retry about one pick in seven here comes back alone.
    #[tokio::test]
    async fn an_ephemeral_listen_port_is_free_on_both_loopback_addresses() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: nothing to pair");
            return;
        }
        let _ = rlimit::increase_nofile_limit(16_384);
        let held: Vec<_> = (0..4_000)
            .map_while(|_| std::net::TcpListener::bind("[::1]:0").ok())
            .collect();
        assert!(held.len() >= 2_000, "held only {} ports", held.len());
        for _ in 0..40 {
            let (main, also) = super::bind_listeners("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let also = also.expect("a companion on ::1");
            assert_eq!(
                main.local_addr().unwrap().port(),
                also.local_addr().unwrap().port()
            );
        }
    }

    #[test]
    fn a_loopback_listener_has_the_other_familys_loopback_as_companion() {
        use super::companion_loopback;
        let pairs = [
            ("127.0.0.1:41002", Some("[::1]:41002")),
            ("[::1]:7", Some("127.0.0.1:7")),
            ("127.0.0.2:41002", None),
            ("0.0.0.0:41002", None),
            ("[::]:41002", None),
            ("192.0.2.1:41002", None),
        ];
        for (listen, want) in pairs {
            let want = want.map(|w| w.parse().unwrap());
            assert_eq!(
                companion_loopback(listen.parse().unwrap()),
                want,
                "{listen}"
            );
        }
    }

    #[test]
    fn listen_takes_an_address_or_a_name_and_says_what_is_wrong() {
        assert_eq!(
            parse_listen("127.0.0.1:41002").unwrap(),
            "127.0.0.1:41002".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:8").unwrap(), "[::1]:8".parse().unwrap());
        let local = parse_listen("localhost:41002").unwrap();
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 41002);
        for (bad, says) in [
            ("localhost", "expected ADDR:PORT"),
            (":41002", "expected ADDR:PORT"),
            ("localhost:http", "not a port number"),
            ("localhost:70000", "not a port number"),
            (
                "no-such-host.invalid:41002",
                "cannot resolve \"no-such-host.invalid\"",
            ),
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
