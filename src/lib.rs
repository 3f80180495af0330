//! wsgate: a TLS-terminating WebSocket gateway.
//!
//! A connection's way through the code, one module per stage, in the order
//! a connection meets them:
//!
//! - [`config`]: TOML + `WSGATE__*` env → validated [`Config`].
//! - [`tls`]: PEM files → rustls server config (SNI, TLS 1.2/1.3, ALPN
//!   http/1.1, and h2 where enabled).
//! - `listener`: accept loop; `admission` sheds (and counts) connections
//!   past the global and per-address limits.
//! - `conn`: the first byte picks TLS or plaintext; TLS handshake and HTTP
//!   request head under one deadline; hyper over HTTP/1.1, or `http2` where
//!   ALPN agreed on `h2` (each WebSocket a stream, RFC 8441).
//! - `handshake`: strict RFC 6455 upgrade check, [`route`] lookup, 101 or
//!   refusal; then the session task, which hands the client to its loop.
//! - `tunnel`: HTTP `CONNECT` in: to the gateway itself (the front again,
//!   through `conn`) or, when its policy allows, spliced to a target.
//! - `upstream`: pools: choosing a member, failover, health; `forward`
//!   builds the upgrade request a member gets; `egress` is the connection
//!   to it (TCP, or through an egress proxy's CONNECT); `client_handshake`
//!   sends that request and checks the member's 101.
//! - the session loops, one per route kind: `echo`; `relay` (client ↔
//!   upstream frames as they came, checked by the [`frame`] layer, with
//!   backpressure); `hub` (pub/sub channels, direct
//!   messages, presence, resume, and its HTTP API).
//! - `session`: what every loop shares: its context, keepalive pings, the
//!   idle deadline, bounded writes, the close handshake.
//! - [`close`]: the one place mapping refusals to HTTP statuses and session
//!   ends to close codes and metric labels.
//! - [`metrics`], `admin`: Prometheus names and the admin listener.
//! - [`shutdown`]: cancellation, task tracking, signals, readiness.
//!
//! Leaves that several stages share: [`frame`] (RFC 6455 frames without
//! messages: codec, rules, UTF-8, read buffers), [`names`] (host parsing, the two
//! host-pattern rules, client and channel names), `headers` (has a body;
//! constant-time secret comparison), `rate` (the one token bucket), and
//! [`devcert`] (the development certificate).
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests
//! start exactly what the binary runs, on port 0.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

mod admin;
mod admission;
mod auth;
pub mod client;
mod client_handshake;
pub mod close;
pub mod config;
mod conn;
mod deflate;
pub mod devcert;
mod echo;
mod egress;
mod files;
mod forward;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
mod handshake;
mod headers;
mod http2;
mod hub;
mod listener;
pub mod metrics;
pub mod names;
mod rate;
mod relay;
pub mod route;
mod session;
pub mod shutdown;
mod subprotocol;
pub mod tls;
mod tunnel;
mod upstream;

pub use config::{Config, ConfigError, ConfigSource};

use admission::Admission;
use config::{Limits, RouteKind};
use hub::Hub;
use metrics::RouteMetrics;
use route::RouteTable;
use shutdown::{Readiness, Shutdown};
use tunnel::TunnelPolicy;
use upstream::Pool;

/// Every response the public front writes: small, whole, in memory.
pub(crate) type Body = http_body_util::Full<bytes::Bytes>;

/// The listeners [`run`] serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// Public `wss://` listener.
    pub public: TcpListener,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
}

/// Why [`run`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates, keys or CA files that cannot be used; each names its key.
    #[error("configuration:{}", .0.iter().map(|i| format!("\n  {i}")).collect::<String>())]
    Config(Vec<config::ConfigIssue>),
}

/// What every connection shares. Certificates and routes are the `live`
/// snapshot, replaced whole on reload; the rest is fixed at start-up.
pub(crate) struct Shared {
    /// `[limits]`: deadlines and sizes for every connection and session.
    pub(crate) limits: Limits,
    pub(crate) live: ArcSwap<Live>,
    /// hyper's HTTP/1 settings (header limits, timer), built once and
    /// cloned per connection, which adds its own head deadline.
    pub(crate) http: http1::Builder,
    /// The HTTP/2 settings, where `[listen] http2` offers it.
    pub(crate) http2: Option<Arc<http2::Http2>>,
    /// One hub for the process: channels are one namespace across hub
    /// routes and the HTTP API, and outlive reloads.
    pub(crate) hub: Hub,
    /// `[listen] connect_tunnel`: whether the public listener serves CONNECT
    /// (never inside a tunnel).
    pub(crate) listen_connect_tunnel: bool,
    /// Where a CONNECT may go; knows the listeners' bound addresses.
    pub(crate) tunnel: TunnelPolicy,
    /// The start-up config, to tell which changes a reload cannot apply.
    base: Config,
    /// Connection limits, checked at accept, before any TLS work.
    pub(crate) admission: Admission,
    /// The root cancellation token and the tracker every connection,
    /// session and tunnel task is spawned on, for the drain.
    pub(crate) shutdown: Shutdown,
    /// Connections keeping permessage-deflate context, against
    /// `limits.compression_contexts`.
    pub(crate) contexts: Arc<deflate::ContextBudget>,
}

/// What a reload replaces: the certificates and the route table (with its
/// upstream pools). A connection takes the current snapshot when it starts
/// and keeps it, so a reload never touches a session in flight.
pub(crate) struct Live {
    pub(crate) routes: RouteTable<RouteState>,
    pub(crate) tls: Arc<tls::TlsFront>,
    /// The `[[tls.sni]]` host names: a CONNECT to one of them (on the
    /// listen port) is a CONNECT to this gateway.
    pub(crate) sni_hosts: Vec<names::ServerName>,
    /// Cancelled when this snapshot is replaced: stops its health checks.
    retired: CancellationToken,
}

impl Live {
    /// `http2`: whether ALPN offers `h2`; fixed at start-up (a reload keeps
    /// the running value).
    fn build(config: &Config, http2: bool, parent: &CancellationToken) -> Result<Live, Error> {
        let tls = tls::server_config(&config.tls, http2).map_err(Error::Config)?;
        let mut targets = Vec::new();
        let mut issues = Vec::new();
        for route in &config.routes {
            targets.push(match &route.kind {
                RouteKind::Echo => Target::Echo,
                RouteKind::Hub(hub) => Target::Hub(Arc::new((**hub).clone())),
                RouteKind::Static(site) => Target::Static(Arc::new(files::Site::new(route, site))),
                RouteKind::Upstream(upstream) => match Pool::new(route, upstream) {
                    Ok(pool) => Target::Upstream(Arc::new(pool)),
                    Err(mut e) => {
                        issues.append(&mut e);
                        Target::Echo
                    }
                },
            });
        }
        let mut auths = Vec::new();
        for route in &config.routes {
            match auth::RouteAuth::new(&route.access, &route.name) {
                Ok(rules) => auths.push(rules.map(Arc::new)),
                Err(issue) => issues.push(issue),
            }
        }
        if !issues.is_empty() {
            return Err(Error::Config(issues));
        }
        let mut targets = targets.into_iter();
        let mut auths = auths.into_iter();
        let routes = RouteTable::new(&config.routes, |r| RouteState {
            path: r.path.clone(),
            target: targets.next().unwrap_or(Target::Echo),
            metrics: RouteMetrics::new(r),
            auth: auths.next().flatten(),
        });
        Ok(Live {
            routes,
            tls: Arc::new(tls),
            sni_hosts: config.tls.sni.iter().map(|s| s.host.clone()).collect(),
            retired: parent.child_token(),
        })
    }

    /// Start this snapshot's background work (active health checks).
    fn start(&self) {
        for (_, state) in self.routes.iter() {
            if let Target::Upstream(pool) = &state.target
                && let Some(every) = pool.health_check_interval()
            {
                tokio::spawn(pool.clone().health_check(every, self.retired.clone()));
            }
        }
    }
}

/// What a route carries at run time.
pub(crate) struct RouteState {
    /// The route's path prefix (a hub route's raw channel may follow it).
    pub(crate) path: String,
    pub(crate) target: Target,
    /// The route's metric series, registered once per snapshot.
    pub(crate) metrics: RouteMetrics,
    /// Origin and token rules; `None`: open to all.
    pub(crate) auth: Option<Arc<auth::RouteAuth>>,
}

/// Where a route's sessions go.
pub(crate) enum Target {
    Echo,
    /// Relayed to a member of this pool (its health and leases live here).
    Upstream(Arc<Pool>),
    /// A client of the process's hub, with this route's settings.
    Hub(Arc<config::HubRoute>),
    /// Files over HTTPS: the built-in page or a directory.
    Static(Arc<files::Site>),
}

impl Shared {
    fn new(config: &Config) -> Result<Self, Error> {
        let limits = config.limits.clone();
        let mut http = http1::Builder::new();
        // Keep-alive stays on: with it off hyper appends `close` to the 101's
        // `Connection: Upgrade`, which clients such as Qt's QWebSocket
        // refuse. Every refusal carries `Connection: close` instead.
        http.timer(TokioTimer::new())
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(8192) + 1024);
        let shutdown = Shutdown::default();
        let live = Live::build(config, config.listen.http2, &shutdown.token)?;
        let hub = Hub::new(config.hub.clone()).map_err(|problem| {
            Error::Config(vec![config::ConfigIssue {
                key: "hub.backplane".into(),
                problem,
            }])
        })?;
        let http2 = (config.listen.http2).then(|| {
            Arc::new(http2::Http2::new(
                &config.listen,
                &limits,
                shutdown.tracker.clone(),
            ))
        });
        Ok(Shared {
            admission: Admission::new(&limits),
            http2,
            limits,
            live: ArcSwap::from_pointee(live),
            http,
            hub,
            listen_connect_tunnel: config.listen.connect_tunnel,
            tunnel: TunnelPolicy::new(config.tunnel.clone(), config.listen.addr, config.admin.addr),
            base: config.clone(),
            shutdown,
            contexts: Arc::default(),
        })
    }
}

impl Shared {
    /// Can some route serve a new session? Echo and hub routes always can; an
    /// upstream route while any member is out of its failure backoff.
    pub(crate) fn can_serve(&self) -> bool {
        self.live
            .load()
            .routes
            .iter()
            .any(|(_, state)| match &state.target {
                Target::Echo | Target::Hub(_) => true,
                Target::Static(_) => false,
                Target::Upstream(pool) => pool.any_available(),
            })
    }
}

impl Shared {
    /// Replace certificates and routes with those of `config`, or keep the
    /// running ones if it cannot be applied. Changes that need a restart
    /// are logged and ignored.
    fn reload(&self, config: &Config) {
        let next = match Live::build(config, self.base.listen.http2, &self.shutdown.token) {
            Ok(live) => live,
            Err(e) => {
                metrics::config_reload(close::Reload::Failed);
                error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        let base = &self.base;
        let fixed = [
            ("listen", base.listen != config.listen),
            ("admin", base.admin != config.admin),
            ("limits", base.limits != config.limits),
            ("hub", base.hub != config.hub),
            ("tunnel", base.tunnel != config.tunnel),
        ];
        for (section, changed) in fixed {
            if changed {
                warn!(
                    section,
                    "reload: [{section}] changed, which needs a restart; kept as it was"
                );
            }
        }
        next.start();
        let old = self.live.swap(Arc::new(next));
        old.retired.cancel();
        metrics::config_reload(close::Reload::Ok);
        info!(
            routes = config.routes.len(),
            "reloaded certificates and routes"
        );
    }
}

/// Check everything in `config` that needs files read: certificates, keys,
/// CA files. `run` does the same at start; this lets `main` and
/// `check-config` report it before anything is bound.
pub fn preflight(config: &Config) -> Result<(), Error> {
    Shared::new(config).map(drop)
}

/// Serve until `shutdown` resolves, then drain: `/readyz` turns 503, the
/// listener stops accepting, every session gets Close 1001, and this waits
/// for them up to `limits.drain_timeout` before returning.
pub async fn run(
    listeners: Listeners,
    config: Config,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    run_with_reload(listeners, config, metrics, shutdown, reloads).await
}

/// [`run`], and apply each config that arrives on `reloads` (the binary
/// sends one per SIGHUP): new certificates and routes for new connections,
/// sessions in flight untouched; a config that cannot be applied is logged
/// and counted, and the running one stays.
pub async fn run_with_reload(
    listeners: Listeners,
    config: Config,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), Error> {
    let mut shared = Shared::new(&config)?;
    // The addresses actually bound (a test binds port 0): CONNECT decides
    // "this gateway" and "the admin listener" by them.
    if let (Ok(public), Ok(admin)) = (listeners.public.local_addr(), listeners.admin.local_addr()) {
        shared.tunnel = TunnelPolicy::new(config.tunnel.clone(), public, admin);
    }
    let shared = Arc::new(shared);
    shared.live.load().start();
    let hub_link = shared.hub.start(&shared.shutdown.token);
    let ready = Readiness::default();
    let admin_stop = CancellationToken::new();
    let admin_ctx = admin::Context {
        metrics,
        ready: ready.clone(),
        shared: shared.clone(),
        hub: shared.hub.clone(),
        max_body: config.limits.max_message_size,
        request_timeout: config.limits.handshake_timeout,
    };
    let admin_addr = listeners
        .admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = tokio::spawn(admin::serve(listeners.admin, admin_ctx, admin_stop.clone()));
    let public_addr = listeners
        .public
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let accept = tokio::spawn(listener::serve(listeners.public, shared.clone()));
    ready.set(true);
    info!(addr = %public_addr, admin = %admin_addr, routes = config.routes.len(), "serving");
    auth::warn_open(&config.routes);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(next) = reloads.recv() => shared.reload(&next),
        }
    }
    ready.set(false);
    let open = shared.shutdown.tracker.len();
    info!(open, drain_timeout = ?config.limits.drain_timeout, "draining");
    shared.shutdown.token.cancel();
    let _ = accept.await;
    shared.shutdown.tracker.close();
    if tokio::time::timeout(config.limits.drain_timeout, shared.shutdown.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            left = shared.shutdown.tracker.len(),
            "drain deadline passed; cutting what is left"
        );
    }
    if let Some(link) = hub_link {
        // Bounded by its own deadlines (a connect and one command).
        let _ = link.await;
    }
    admin_stop.cancel();
    let _ = admin.await;
    info!("stopped");
    Ok(())
}
