//! The accept loop: admission (shed past `max_connections`, counted), then one
//! tracked task per connection. It never dies on a transient accept error;
//! shutdown is the only way out.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{Instrument, debug, error, info_span};

use crate::{Shared, conn, metrics};

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let token = shared.shutdown.token.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) if is_transient(&e) => {
                debug!(error = %e, "accept: transient error");
                continue;
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM: back off instead of spinning.
                error!(error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        // Shed, never queue: the ticket lives as long as the connection and
        // its session; without one the socket is closed at once.
        let ticket = match shared.admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(reason) => {
                metrics::connection_rejected(reason);
                debug!(%peer, reason = reason.label(), "connection refused at accept");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let span =
            info_span!("conn", %peer, sni = tracing::field::Empty, route = tracing::field::Empty);
        shared
            .shutdown
            .tracker
            .spawn(conn::serve(tcp, peer, ticket, shared.clone()).instrument(span));
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
