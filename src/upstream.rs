//! Upstream pools: choose a member (round-robin or least connections,
//! skipping members in their failure backoff), dial it (TCP, optional TLS,
//! WebSocket upgrade) under deadlines, fail over, and track member health.
//! What the member is sent is `forward`'s; how it is reached (direct or
//! through an egress proxy) is `egress`'s.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::metrics::{Gauge, Histogram};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client_handshake::{Answer, UpgradeError, upgrade};
use crate::close::Rejection;
use crate::config::{
    Balance, ConfigIssue, Route, UpstreamCompression, UpstreamConfig, UpstreamUrl,
};
use crate::deflate::{self, Agreed, UpstreamAgreed};
use crate::egress::{self, UpstreamIo};
use crate::{forward, metrics, tls};

/// A route's upstream members and how to reach them.
pub(crate) struct Pool {
    /// The route's name, for logs and metric labels.
    route: String,
    /// The route's path prefix, for `strip_prefix`.
    route_path: String,
    /// Balance, deadlines, backoff, TLS and egress proxy settings.
    config: UpstreamConfig,
    members: Vec<Member>,
    /// Round-robin cursor: each dial starts one member further on.
    next: AtomicUsize,
    /// Built once per pool, only if some member is `wss://`.
    tls: Option<TlsConnector>,
    connect_seconds: Histogram,
}

struct Member {
    url: UpstreamUrl,
    /// The name its certificate must carry: `tls.server_name`, else its host.
    server_name: ServerName<'static>,
    /// Open sessions, for least-connections.
    active: AtomicUsize,
    /// Failure backoff; locked briefly, never across an `.await`.
    health: Mutex<Health>,
    /// Its health series: 1 in service, 0 in backoff.
    healthy: Gauge,
}

/// A member's failure record: consecutive failures set the backoff.
#[derive(Default)]
struct Health {
    /// Consecutive failed dials or health checks; a success resets it.
    failures: u32,
    /// Left out of the candidates until then.
    down_until: Option<Instant>,
}

/// An established upstream session and the member it holds.
pub(crate) struct Dialed {
    /// The member's stream, after its 101.
    pub(crate) io: Box<UpstreamIo>,
    /// What the member sent after its 101 in the same read: the start of
    /// its first frames, relayed before anything else it sends.
    pub(crate) early: Vec<u8>,
    /// The subprotocol the member chose, for the client's 101.
    pub(crate) protocol: Option<HeaderValue>,
    /// What the member agreed of the permessage-deflate offered to it.
    pub(crate) deflate: Option<UpstreamAgreed>,
    /// How often the session pings the member (`upstream_ping_interval`).
    pub(crate) ping_interval: Option<Duration>,
    /// Held for its `Drop`: counts the session against the member.
    pub(crate) _lease: Lease,
}

/// Counts the session against its member while it lives.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    member: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.members[self.member]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no upstream session was established.
pub(crate) enum DialError {
    /// Answered before or instead of dialling: 502/503/504.
    Rejected(Rejection),
    /// The member answered the upgrade with an HTTP error; it goes to the
    /// client as it is (status, content type, the part of the body that came
    /// with the head).
    Status(Response<Option<Vec<u8>>>),
}

/// One failed attempt on one member.
enum Attempt {
    Unreachable(io::Error),
    /// Out of a local resource while dialling (no descriptor, buffer or
    /// port): not the member's fault.
    Local(io::Error),
    /// The egress proxy failed or refused the CONNECT.
    Proxy(egress::ProxyError),
    Timeout,
    BadHandshake(UpgradeError),
    Status(Response<Option<Vec<u8>>>),
}

impl Attempt {
    /// A failed TCP connect: the member's fault, or ours when the kernel
    /// ran out of descriptors (EMFILE, ENFILE), buffers (ENOBUFS) or local
    /// ports (EADDRNOTAVAIL). Error numbers as on Linux.
    fn from_connect(e: io::Error) -> Attempt {
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        const ENOBUFS: i32 = 105;
        let local = e.kind() == io::ErrorKind::AddrNotAvailable
            || matches!(e.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS));
        if local {
            Attempt::Local(e)
        } else {
            Attempt::Unreachable(e)
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attempt::Unreachable(e) => write!(f, "unreachable: {e}"),
            Attempt::Local(e) => write!(f, "out of local resources: {e}"),
            Attempt::Proxy(e) => write!(f, "{e}"),
            Attempt::Timeout => f.write_str("timed out"),
            Attempt::BadHandshake(e) => write!(f, "bad upgrade answer: {e}"),
            Attempt::Status(r) => write!(f, "answered {}", r.status()),
        }
    }
}

impl Pool {
    pub(crate) fn new(route: &Route, config: &UpstreamConfig) -> Result<Pool, Vec<ConfigIssue>> {
        let prefix = format!("routes[{}]", route.name);
        let tls = if config.members.iter().any(|m| m.secure) {
            Some(TlsConnector::from(tls::client_config(
                &config.tls,
                &prefix,
            )?))
        } else {
            None
        };
        let mut issues = Vec::new();
        let members = config
            .members
            .iter()
            .filter_map(|url| {
                let name = config
                    .tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| url.host.clone());
                match ServerName::try_from(name) {
                    Ok(server_name) => Some(Member {
                        healthy: metrics::upstream_healthy(&route.name, &url.url),
                        url: url.clone(),
                        server_name,
                        active: AtomicUsize::new(0),
                        health: Mutex::new(Health::default()),
                    }),
                    Err(e) => {
                        issues.push(ConfigIssue {
                            key: format!("{prefix}.upstreams"),
                            problem: format!("{}: not a TLS server name: {e}", url.url),
                        });
                        None
                    }
                }
            })
            .collect::<Vec<_>>();
        if !issues.is_empty() {
            return Err(issues);
        }
        for m in &members {
            m.healthy.set(1.0);
        }
        Ok(Pool {
            route: route.name.clone(),
            route_path: route.path.clone(),
            config: config.clone(),
            members,
            next: AtomicUsize::new(0),
            tls,
            connect_seconds: metrics::upstream_connect_seconds(&route.name),
        })
    }

    /// Dial the first member that answers, in balance order, skipping those
    /// in backoff. `uri` and `headers` are the client's request; `client`,
    /// the permessage-deflate it agreed, if any (on a route with
    /// compression).
    pub(crate) async fn dial(
        self: &Arc<Self>,
        uri: &Uri,
        headers: &HeaderMap,
        peer: IpAddr,
        client: Option<&Agreed>,
    ) -> Result<Dialed, DialError> {
        let offer = match self.config.upstream_compression {
            UpstreamCompression::Auto => client.is_some(),
            UpstreamCompression::Always => true,
            UpstreamCompression::Off => false,
        };
        let offer = offer
            .then(|| HeaderValue::from_str(&deflate::upstream_offer(client)).ok())
            .flatten();
        let mut last = None;
        for index in self.candidates() {
            let member = &self.members[index];
            let strip_prefix = self.config.strip_prefix.then_some(self.route_path.as_str());
            let mut offer = offer.clone();
            let started = Instant::now();
            let attempt = loop {
                let mut request =
                    forward::upgrade_request(&member.url, strip_prefix, uri, headers, peer);
                if let Some(offer) = &offer {
                    request
                        .headers_mut()
                        .insert(header::SEC_WEBSOCKET_EXTENSIONS, offer.clone());
                }
                match self.dial_member(member, request).await {
                    // The member is up and speaks WebSocket; only its
                    // permessage-deflate is off: once more without it.
                    Err(Attempt::BadHandshake(UpgradeError::Extension(why))) if offer.is_some() => {
                        warn!(route = %self.route, upstream = %member.url.url, why, "member answered permessage-deflate wrongly: dialled again without offering it");
                        offer = None;
                    }
                    attempt => break attempt,
                }
            };
            match attempt {
                Ok((io, response, early)) => {
                    self.connect_seconds.record(started.elapsed().as_secs_f64());
                    self.succeeded(member);
                    member.active.fetch_add(1, Ordering::Relaxed);
                    let protocol = response
                        .headers()
                        .get(header::SEC_WEBSOCKET_PROTOCOL)
                        .cloned();
                    // Checked against the offer by `upgrade`: read again.
                    let answer = response.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
                    let answer = answer.iter().filter_map(|v| v.to_str().ok());
                    let deflate = offer
                        .as_ref()
                        .and_then(|o| o.to_str().ok())
                        .and_then(|o| deflate::upstream_agreed(answer, o).ok().flatten());
                    let lease = Lease {
                        pool: self.clone(),
                        member: index,
                    };
                    return Ok(Dialed {
                        io: Box::new(io),
                        early,
                        protocol,
                        deflate,
                        ping_interval: self.config.upstream_ping_interval,
                        _lease: lease,
                    });
                }
                // Our own shortage: the member stays in service, and the
                // next member would fare no better.
                Err(Attempt::Local(e)) => {
                    metrics::upstream_error(&self.route, "local_resources");
                    warn!(route = %self.route, upstream = %member.url.url, error = %e, "dial failed for want of local resources");
                    return Err(DialError::Rejected(Rejection::LocalResources));
                }
                // An HTTP answer is the application speaking: no failover.
                Err(Attempt::Status(response)) if response.status().as_u16() >= 400 => {
                    self.succeeded(member);
                    debug!(upstream = %member.url.url, status = %response.status(), "upstream refused the upgrade");
                    return Err(DialError::Status(response));
                }
                Err(attempt) => {
                    metrics::upstream_error(&self.route, attempt_label(&attempt));
                    self.failed(member, &attempt);
                    last = Some(attempt);
                }
            }
        }
        Err(DialError::Rejected(match last {
            None => Rejection::UpstreamsDown,
            Some(Attempt::Timeout) => Rejection::UpstreamTimeout,
            Some(Attempt::Unreachable(_) | Attempt::Proxy(_)) => Rejection::UpstreamUnreachable,
            Some(Attempt::Local(_)) => Rejection::LocalResources,
            Some(Attempt::BadHandshake(_) | Attempt::Status(_)) => Rejection::UpstreamBadHandshake,
        }))
    }

    /// Members to try, in order: balance order, those in backoff left out.
    fn candidates(&self) -> Vec<usize> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if self.config.balance == Balance::LeastConnections {
            // Stable: ties keep the rotating order.
            order.sort_by_key(|&i| self.members[i].active.load(Ordering::Relaxed));
        }
        let now = Instant::now();
        order.retain(|&i| {
            let health = self.members[i]
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            health.down_until.is_none_or(|until| until <= now)
        });
        order
    }

    async fn dial_member(
        &self,
        member: &Member,
        request: Request<()>,
    ) -> Result<(UpstreamIo, Response<()>, Vec<u8>), Attempt> {
        let (host, port) = (member.url.host.as_str(), member.url.port);
        let connect = async {
            match &self.config.proxy {
                Some(proxy) if proxy.applies_to(host) => egress::dial_via(proxy, host, port).await.map_err(|e| {
                    warn!(route = %self.route, upstream = %member.url.url, proxy = %proxy.display, error = %e, "egress proxy refused");
                    Attempt::Proxy(e)
                }),
                _ => TcpStream::connect((host, port)).await.map_err(Attempt::from_connect),
            }
        };
        let tcp = match timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(attempt)) => return Err(attempt),
            Err(_) => return Err(Attempt::Timeout),
        };
        let _ = tcp.set_nodelay(true);
        let handshake = async {
            let mut io = match (&self.tls, member.url.secure) {
                (Some(tls), true) => UpstreamIo::Tls(Box::new(
                    tls.connect(member.server_name.clone(), tcp)
                        .await
                        .map_err(Attempt::Unreachable)?,
                )),
                _ => UpstreamIo::Plain(tcp),
            };
            match upgrade(&mut io, &request).await {
                Ok(Answer::Upgraded(response, early)) => Ok((io, response, early)),
                Ok(Answer::Refused(response)) => Err(Attempt::Status(response)),
                Err(UpgradeError::Io(e)) => Err(Attempt::Unreachable(e)),
                Err(other) => Err(Attempt::BadHandshake(other)),
            }
        };
        timeout(self.config.handshake_timeout, handshake)
            .await
            .unwrap_or(Err(Attempt::Timeout))
    }

    fn failed(&self, member: &Member, why: &dyn fmt::Display) {
        let (failures, backoff) = {
            let mut health = member.health.lock().unwrap_or_else(|e| e.into_inner());
            health.failures = health.failures.saturating_add(1);
            let doubled = self
                .config
                .backoff
                .saturating_mul(1 << (health.failures - 1).min(20));
            let base = doubled.min(self.config.backoff_max);
            let backoff = base + base.mul_f64(rand::random_range(0.0..0.2));
            health.down_until = Some(Instant::now() + backoff);
            (health.failures, backoff)
        };
        member.healthy.set(0.0);
        if failures == 1 {
            warn!(route = %self.route, upstream = %member.url.url, error = %why, ?backoff, "upstream member down");
        } else {
            debug!(route = %self.route, upstream = %member.url.url, error = %why, failures, ?backoff, "upstream member still down");
        }
    }

    fn succeeded(&self, member: &Member) {
        let was_down = {
            let mut health = member.health.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *health).failures > 0
        };
        if was_down {
            member.healthy.set(1.0);
            info!(route = %self.route, upstream = %member.url.url, "upstream member up");
        }
    }

    /// The optional active check: a TCP connect to every member each period.
    pub(crate) async fn health_check(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            for member in &self.members {
                let addr = (member.url.host.as_str(), member.url.port);
                match timeout(self.config.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => self.succeeded(member),
                    Ok(Err(e)) => match Attempt::from_connect(e) {
                        // Our shortage says nothing about the member.
                        Attempt::Local(_) => {}
                        attempt => self.failed(member, &attempt),
                    },
                    Err(_) => self.failed(member, &Attempt::Timeout),
                }
            }
        }
    }

    /// Is any member in service (not in its failure backoff)?
    pub(crate) fn any_available(&self) -> bool {
        let now = Instant::now();
        self.members.iter().any(|m| {
            let health = m.health.lock().unwrap_or_else(|e| e.into_inner());
            health.down_until.is_none_or(|until| until <= now)
        })
    }

    pub(crate) fn health_check_interval(&self) -> Option<Duration> {
        self.config.health_check_interval
    }
}

fn attempt_label(attempt: &Attempt) -> &'static str {
    match attempt {
        Attempt::Unreachable(_) => "unreachable",
        Attempt::Local(_) => "local_resources",
        Attempt::Proxy(_) => "proxy",
        Attempt::Timeout => "timeout",
        Attempt::BadHandshake(_) | Attempt::Status(_) => "bad_handshake",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shortages_are_not_the_members_fault() {
        for errno in [23, 24, 105] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(
                matches!(Attempt::from_connect(e), Attempt::Local(_)),
                "{errno}"
            );
        }
        let e = io::Error::from(io::ErrorKind::AddrNotAvailable);
        assert!(matches!(Attempt::from_connect(e), Attempt::Local(_)));
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(matches!(Attempt::from_connect(e), Attempt::Unreachable(_)));
    }
}
