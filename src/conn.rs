//! One client connection up to the upgrade. The first byte decides: a TLS
//! ClientHello (0x16) gets the TLS front; anything else is plaintext HTTP,
//! which serves only `CONNECT` (when enabled). The TLS handshake and the HTTP
//! request head share one deadline; then hyper serves the request with
//! upgrades enabled, over HTTP/1.1, or over HTTP/2 (`http2`) where ALPN
//! agreed on `h2`. Sessions and tunnels run in their own tasks.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::admission::Ticket;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Span, debug};

use crate::close::EarlyFailure;
use crate::handshake::Front;
use crate::{Shared, auth, handshake, metrics};
use hyper::upgrade::{OnUpgrade, Upgraded};

const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The hand-off after a `101` or a CONNECT's `200`: the connection hyper
/// gives back once the answer is out. Bounded by the handshake deadline,
/// and given up at a drain unless it is ready too (a session then sees the
/// drain itself and says 1001).
pub(crate) async fn handed_off(on_upgrade: OnUpgrade, shared: &Shared) -> Result<Upgraded, String> {
    tokio::select! {
        biased;
        handed = timeout(shared.limits.handshake_timeout, on_upgrade) => match handed {
            Ok(handed) => handed.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        },
        _ = shared.shutdown.token.cancelled() => Err("draining".to_owned()),
    }
}

/// Serve one accepted connection. `permit` is its admission ticket, held
/// until the last session or tunnel on it has ended.
pub(crate) async fn serve(tcp: TcpStream, peer: SocketAddr, permit: Ticket, shared: Arc<Shared>) {
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = shared.shutdown.token.cancelled() => return,
        peeked = timeout_at(deadline, tcp.peek(&mut first)) => peeked,
    };
    let permit = Arc::new(permit);
    match peeked {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {
            let connect = shared.listen_connect_tunnel;
            serve_tls_until(tcp, peer, permit, shared, connect, deadline).await;
        }
        Ok(Ok(1)) => {
            let front = Front {
                peer,
                tls: false,
                connect: shared.listen_connect_tunnel,
                client_cert: None,
                sni: None,
            };
            serve_http(TokioIo::new(tcp), front, permit, shared, deadline).await;
        }
        Ok(_) => {}
        Err(_) => early_failure(
            EarlyFailure::TlsTimeout,
            &"nothing sent before the deadline",
        ),
    }
}

/// The TLS front inside a CONNECT tunnel to the gateway itself, without
/// CONNECT. Boxed as `dyn Send`: this serves the front that accepted the
/// CONNECT again, and the recursion needs a named type.
pub(crate) fn serve_tunnelled<IO>(
    io: IO,
    peer: SocketAddr,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(serve_tls(io, peer, permit, shared, false))
}

/// The TLS front on `io`: a client connection, or a CONNECT tunnel to the
/// gateway itself. `connect`: whether CONNECT is served inside.
async fn serve_tls<IO>(
    io: IO,
    peer: SocketAddr,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
    connect: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    serve_tls_until(io, peer, permit, shared, connect, deadline).await;
}

async fn serve_tls_until<IO>(
    io: IO,
    peer: SocketAddr,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
    connect: bool,
    deadline: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let front = shared.live.load().tls.clone();
    let (tls, chosen) = tokio::select! {
        _ = shared.shutdown.token.cancelled() => return,
        accepted = timeout_at(deadline, front.accept(io)) => match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(e)) => return early_failure(EarlyFailure::tls(&e), &e),
            Err(_) => return early_failure(EarlyFailure::TlsTimeout, &"deadline passed"),
        },
    };
    let sni = tls.server_name();
    if let Some(sni) = sni {
        Span::current().record("sni", sni);
    }
    let client_cert = (tls.peer_certificates())
        .and_then(|chain| chain.first())
        .and_then(auth::certificate_name)
        // Bound to the config that verified it, not to the SNI text.
        .map(|name| (Arc::from(name), chosen.cert_host().map(Arc::from)));
    let front = Front {
        peer,
        tls: true,
        connect,
        client_cert,
        sni: sni.map(|sni| Arc::from(crate::names::normalize_sni(sni))),
    };
    if let Some(http2) = &shared.http2
        && tls.alpn_protocol() == Some(b"h2")
    {
        let http2 = http2.clone();
        return crate::http2::serve(tls, front, permit, shared, &http2, deadline).await;
    }
    serve_http(TokioIo::new(tls), front, permit, shared, deadline).await;
}

/// hyper on `io`: the request head must arrive by `deadline`.
async fn serve_http<IO>(
    io: TokioIo<IO>,
    front: Front,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
    deadline: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The permit moves into the session or tunnel on upgrade; until then
    // this connection's service holds it.
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let (shared, permit, front) = (service_shared.clone(), permit.clone(), front.clone());
        async move { Ok::<_, Infallible>(handshake::handle(req, shared, permit, front, None).await) }
    });
    let mut http = shared.http.clone();
    http.header_read_timeout(deadline.saturating_duration_since(Instant::now()));
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shared.shutdown.token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            timeout(shared.limits.close_timeout, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        let failure = if e.is_timeout() {
            EarlyFailure::HeadTimeout
        } else if e.is_parse_too_large() {
            EarlyFailure::HeadTooLarge
        } else if e.is_parse() {
            EarlyFailure::HeadMalformed
        } else {
            debug!(error = %e, "connection ended with an error");
            return;
        };
        early_failure(failure, &e);
    }
}

fn early_failure(failure: EarlyFailure, error: &dyn std::fmt::Display) {
    debug!(reason = failure.label(), error = %error, tls = failure.is_tls(), "handshake failed");
    metrics::early_failure(failure);
}
