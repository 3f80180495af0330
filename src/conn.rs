//! One client connection up to the upgrade: TLS handshake and HTTP request
//! head under one deadline, then hyper serves the request with upgrades
//! enabled. The session itself runs in its own task (see `session`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Span, debug};

use crate::close::EarlyFailure;
use crate::{Shared, handshake, metrics};

pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    let token = &shared.shutdown.token;

    let tls = tokio::select! {
        _ = token.cancelled() => return,
        accepted = timeout_at(deadline, shared.acceptor.accept(tcp)) => match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return early_failure(EarlyFailure::TlsError, &e),
            Err(_) => return early_failure(EarlyFailure::TlsTimeout, &"deadline passed"),
        },
    };
    if let Some(sni) = tls.get_ref().1.server_name() {
        Span::current().record("sni", sni);
    }

    // The permit moves into the session on upgrade; until then this
    // connection's service holds it.
    let permit = Arc::new(permit);
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let (shared, permit) = (service_shared.clone(), permit.clone());
        async move { Ok::<_, Infallible>(handshake::handle(req, shared, permit, peer).await) }
    });

    let mut http = shared.http.clone();
    // The request head must arrive within what is left of the same deadline.
    http.header_read_timeout(deadline.saturating_duration_since(Instant::now()));
    let conn = http
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = token.cancelled() => {
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
