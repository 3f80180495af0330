//! HTTP `CONNECT` in: clients behind restrictive networks (or configured to use wsgate as
//! their HTTP proxy, like Qt's `QNetworkProxy::HttpProxy`) send
//! `CONNECT host:port`. A CONNECT to the gateway itself is answered 200 and
//! the TLS and WebSocket front runs on the tunnel, in process. A CONNECT
//! elsewhere is refused with 403 before anything is dialled, unless an
//! `[tunnel] allow` rule admits it; the check applies to the resolved
//! addresses, so a name cannot smuggle a tunnel to loopback, link-local or
//! private addresses (those need an explicit IP/CIDR rule), and the admin
//! listener is never a target.
//!
//! (CONNECT out, through an egress proxy to an upstream member, is
//! `egress`.)

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::admission::Ticket;
use crate::close::TunnelOutcome;
use base64::Engine;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, Span, debug, info};

use crate::config::TunnelConfig;
use crate::names::{HostPattern, ServerName, canonical, split_host_port};
use crate::{Body, Shared, conn, metrics};

/// Answer a CONNECT request.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    permit: Arc<Ticket>,
    peer: SocketAddr,
) -> Response<Body> {
    let (host, port) = match target(&req) {
        Ok(target) => target,
        Err(why) => return refuse(TunnelOutcome::BadRequest(why)),
    };
    let policy = &shared.tunnel;
    if !policy.config.users.is_empty() && !authorized(&req, &policy.config.users) {
        let mut r = refuse(TunnelOutcome::Unauthorized);
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"wsgate\""),
        );
        return r;
    }
    if policy.is_gateway(&host, port, &shared.live.load().sni_hosts) {
        metrics::tunnel(TunnelOutcome::Gateway);
        info!(%peer, target = %format!("{host}:{port}"), "CONNECT to the gateway itself");
        return serve_gateway(req, &shared, permit, peer);
    }
    match dial_target(policy, &host, port, peer).await {
        Ok(target_stream) => {
            metrics::tunnel(TunnelOutcome::Spliced);
            info!(%peer, target = %format!("{host}:{port}"), "CONNECT tunnel opened");
            splice_upgraded(req, target_stream, &shared, permit)
        }
        Err(refusal) => refusal,
    }
}

/// Answer 200 and run the TLS and WebSocket front on the tunnel, in
/// process; no CONNECT inside it, so tunnels never nest.
fn serve_gateway(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    permit: Arc<Ticket>,
    peer: SocketAddr,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(req);
    let task_shared = shared.clone();
    shared.shutdown.tracker.spawn(
        async move {
            match conn::handed_off(on_upgrade, &task_shared).await {
                Ok(upgraded) => {
                    conn::serve_tunnelled(TokioIo::new(upgraded), peer, permit, task_shared).await
                }
                Err(e) => debug!(error = %e, "CONNECT hand-off did not complete"),
            }
        }
        .instrument(Span::current()),
    );
    established(TunnelOutcome::Gateway)
}

/// A TCP stream to an allowed address of `host:port`, or the refusal to
/// answer with.
async fn dial_target(
    policy: &TunnelPolicy,
    host: &str,
    port: u16,
    peer: SocketAddr,
) -> Result<TcpStream, Response<Body>> {
    let denied = || refuse(TunnelOutcome::Denied);
    // No rule could admit it whatever it resolves to: refuse without even a
    // DNS lookup (a lookup is an outbound action too, and an oracle).
    if !policy.could_tunnel_to(host, port) {
        debug!(%peer, target = %format!("{host}:{port}"), "CONNECT refused: no rule admits it");
        return Err(denied());
    }
    let limit = policy.config.connect_timeout;
    let addresses = match resolve(host, port, limit).await {
        Ok(addresses) => addresses,
        Err(_) => return Err(refuse(TunnelOutcome::Unresolved)),
    };
    let allowed: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|a| policy.may_tunnel_to(host, *a))
        .collect();
    if allowed.is_empty() {
        debug!(%peer, target = %format!("{host}:{port}"), "CONNECT refused: not an allowed target");
        return Err(denied());
    }
    match timeout(limit, TcpStream::connect(&allowed[..])).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(_)) => Err(refuse(TunnelOutcome::Unreachable)),
        Err(_) => Err(refuse(TunnelOutcome::Timeout)),
    }
}

/// Answer 200 and splice the tunnel to `target_stream` in a tracked task
/// that holds the connection's admission `permit`.
fn splice_upgraded(
    req: Request<Incoming>,
    target_stream: TcpStream,
    shared: &Arc<Shared>,
    permit: Arc<Ticket>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(req);
    let idle = shared.tunnel.config.idle_timeout;
    let task_shared = shared.clone();
    shared.shutdown.tracker.spawn(
        async move {
            match conn::handed_off(on_upgrade, &task_shared).await {
                Ok(upgraded) => {
                    let cancel = &task_shared.shutdown.token;
                    let (up, down) =
                        splice(TokioIo::new(upgraded), target_stream, idle, cancel).await;
                    debug!(
                        client_to_target = up,
                        target_to_client = down,
                        "CONNECT tunnel closed"
                    );
                }
                Err(e) => debug!(error = %e, "CONNECT hand-off did not complete"),
            }
            drop(permit);
        }
        .instrument(Span::current()),
    );
    established(TunnelOutcome::Spliced)
}

/// Where a CONNECT may go: the `[tunnel]` rules, and the addresses that
/// mean this gateway and its admin listener.
pub(crate) struct TunnelPolicy {
    /// Allow rules, this gateway's extra names, users and timeouts.
    pub(crate) config: TunnelConfig,
    /// The public listener (as bound, once `run` has its listeners): a
    /// CONNECT to it is served in process.
    listen: SocketAddr,
    /// The admin listener (as bound): never a tunnel target.
    admin: SocketAddr,
}

impl TunnelPolicy {
    pub(crate) fn new(config: TunnelConfig, listen: SocketAddr, admin: SocketAddr) -> Self {
        TunnelPolicy {
            config,
            listen,
            admin,
        }
    }

    /// Is `host:port` this gateway (a CONNECT to serve in process)? Its port,
    /// and `localhost`, a loopback or the listen address, an SNI host (of
    /// the current certificates, `sni_hosts`), or a name in `[tunnel] names`.
    pub(crate) fn is_gateway(&self, host: &str, port: u16, sni_hosts: &[ServerName]) -> bool {
        if port != self.listen.port() {
            return false;
        }
        let by_ip = host.parse::<IpAddr>().is_ok_and(|ip| {
            let ip = canonical(ip);
            ip.is_loopback() || ip == self.listen.ip()
        });
        by_ip
            || host == "localhost"
            || self.config.names.iter().any(|n| n.matches(host))
            || sni_hosts.iter().any(|n| n.matches(host))
    }

    /// May a CONNECT for `host` go to `addr` (one of its resolved
    /// addresses)? An allow rule must match the name or the address and the
    /// port; a special address (loopback, private, link-local, ...) needs an
    /// IP/CIDR rule covering it; the admin listener never.
    pub(crate) fn may_tunnel_to(&self, host: &str, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let special = is_special(ip);
        let admin_ip = canonical(self.admin.ip());
        if addr.port() == self.admin.port()
            && (special || ip == admin_ip || admin_ip.is_unspecified())
        {
            return false;
        }
        self.config.allow.iter().any(|rule| {
            let port_ok = rule.port.is_none_or(|p| p == addr.port());
            let by_ip = rule.host.matches_ip(ip);
            let by_name = !special && rule.host.matches_name(host);
            port_ok && (by_ip || by_name)
        })
    }

    /// Could any allow rule admit `host:port`, before resolving it? (A name
    /// rule matching the name, or an IP/CIDR rule, on that port.)
    pub(crate) fn could_tunnel_to(&self, host: &str, port: u16) -> bool {
        self.config.allow.iter().any(|rule| {
            rule.port.is_none_or(|p| p == port)
                && (matches!(rule.host, HostPattern::Net(..)) || rule.host.matches_name(host))
        })
    }
}

/// The CONNECT target: `host:port` in authority form, no body.
pub(crate) fn target<B>(req: &Request<B>) -> Result<(String, u16), &'static str> {
    if crate::headers::has_body(req.headers()) {
        return Err("a CONNECT request must not have a body");
    }
    let authority = req.uri().authority().ok_or("CONNECT needs host:port")?;
    let port = authority
        .port_u16()
        .ok_or("CONNECT needs an explicit port")?;
    let host = split_host_port(authority.host()).0.to_ascii_lowercase();
    if host.is_empty()
        || req
            .uri()
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err("CONNECT needs host:port");
    }
    Ok((host, port))
}

/// Do the `Proxy-Authorization: Basic` credentials match a `[tunnel]`
/// user? Every user is compared, each in constant time.
pub(crate) fn authorized<B>(req: &Request<B>, users: &[(String, String)]) -> bool {
    let Some(given) = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
    else {
        return false;
    };
    let expected: Vec<String> = users.iter().map(|(u, p)| format!("{u}:{p}")).collect();
    crate::headers::matches_any(expected.iter().map(|e| e.as_bytes()), &given)
}

/// The addresses `host` resolves to, within `limit`.
async fn resolve(host: &str, port: u16, limit: Duration) -> io::Result<Vec<SocketAddr>> {
    match timeout(limit, tokio::net::lookup_host((host, port))).await {
        Ok(addresses) => Ok(addresses?.collect()),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Addresses a name must never lead to by itself: loopback, private,
/// link-local, unique-local, unspecified, multicast, broadcast, documentation,
/// and the IPv4-mapped forms of all of these. Only an IP/CIDR allow rule
/// covering the address opens it.
fn is_special(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 0
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (first & 0xffc0) == 0xfe80 // fe80::/10 link local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

fn established(outcome: TunnelOutcome) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = outcome.status();
    r
}

fn refuse(outcome: TunnelOutcome) -> Response<Body> {
    metrics::tunnel(outcome);
    let status = outcome.status();
    let body = format!("{} {}\n", status.as_u16(), outcome.message());
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Copy bytes both ways until both sides are done, either side fails, the
/// tunnel is idle for `idle`, or the gateway drains. Each direction is read
/// only as fast as the other side takes it. Returns bytes (up, down).
pub(crate) async fn splice<A, B>(
    client: A,
    target: B,
    idle: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut target_read, mut target_write) = tokio::io::split(target);
    let mut up_buf = vec![0u8; 8 << 10];
    let mut down_buf = vec![0u8; 8 << 10];
    let (mut up, mut down) = (0u64, 0u64);
    let (mut up_open, mut down_open) = (true, true);
    let mut deadline = Instant::now() + idle;
    while up_open || down_open {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(deadline) => break,
            read = client_read.read(&mut up_buf), if up_open => {
                match carry(read, &up_buf, &mut target_write, idle, true).await {
                    Step::Moved(n) => up += n,
                    Step::Closed => up_open = false,
                    Step::Broken => break,
                }
            }
            read = target_read.read(&mut down_buf), if down_open => {
                match carry(read, &down_buf, &mut client_write, idle, false).await {
                    Step::Moved(n) => down += n,
                    Step::Closed => down_open = false,
                    Step::Broken => break,
                }
            }
        }
        deadline = Instant::now() + idle;
    }
    (up, down)
}

/// What one read on one direction of a tunnel led to.
enum Step {
    /// This many bytes went across.
    Moved(u64),
    /// That side finished sending; the other side's write half is shut.
    Closed,
    /// A write failed or stalled for `idle`: end the tunnel.
    Broken,
}

async fn carry<W: AsyncWrite + Unpin>(
    read: io::Result<usize>,
    buf: &[u8],
    to: &mut W,
    idle: Duration,
    client_to_target: bool,
) -> Step {
    match read {
        Ok(0) | Err(_) => {
            let _ = to.shutdown().await;
            Step::Closed
        }
        Ok(n) => match timeout(idle, to.write_all(&buf[..n])).await {
            Ok(Ok(())) => {
                metrics::tunnel_bytes(client_to_target, n as u64);
                Step::Moved(n as u64)
            }
            _ => Step::Broken,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
        ] {
            assert!(is_special(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"] {
            assert!(!is_special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn targets_need_host_and_port_and_no_body() {
        let connect = |uri: &str| Request::connect(uri).body(()).unwrap();
        assert_eq!(
            target(&connect("example.com:443")),
            Ok(("example.com".into(), 443))
        );
        assert_eq!(target(&connect("[::1]:8443")), Ok(("::1".into(), 8443)));
        assert!(target(&connect("example.com")).is_err());
        let with_body = Request::connect("example.com:443")
            .header("content-length", "3")
            .body(())
            .unwrap();
        assert!(target(&with_body).is_err());
    }
}
