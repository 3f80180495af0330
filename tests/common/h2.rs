//! An HTTP/2 client of the gateway (hyper's, over rustls with ALPN `h2`):
//! WebSockets as extended CONNECT streams (RFC 8441) on one connection, and
//! plain requests beside them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper::ext::Protocol;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Running, client_config};

/// A WebSocket carried by one HTTP/2 stream.
pub type H2Ws = WebSocketStream<TokioIo<Upgraded>>;

/// TLS to the gateway offering `alpn`, as "localhost".
pub async fn tls_alpn(gw: &Running, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut config = (*client_config(&gw.certs.ca)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// One HTTP/2 connection to the gateway.
pub struct H2 {
    sender: SendRequest<Empty<Bytes>>,
    port: u16,
    pub conn: JoinHandle<hyper::Result<()>>,
    extended: watch::Receiver<bool>,
}

impl H2 {
    /// Connect (ALPN `h2` only) and wait for the gateway's SETTINGS to
    /// allow extended CONNECT; the caller's `within` bounds the wait.
    pub async fn connect(gw: &Running) -> H2 {
        H2::connect_with(gw, |_| {}).await
    }

    /// [`H2::connect`] with the client's HTTP/2 settings changed first.
    pub async fn connect_with(
        gw: &Running,
        settings: impl FnOnce(&mut Builder<TokioExecutor>),
    ) -> H2 {
        let mut h2 = H2::connect_only(gw, settings).await;
        h2.extended
            .wait_for(|&enabled| enabled)
            .await
            .expect("the connection ended before its SETTINGS");
        h2
    }

    /// Connect without waiting for the gateway's SETTINGS.
    pub async fn connect_only(
        gw: &Running,
        settings: impl FnOnce(&mut Builder<TokioExecutor>),
    ) -> H2 {
        let tls = tls_alpn(gw, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut builder = Builder::new(TokioExecutor::new());
        settings(&mut builder);
        let (sender, mut conn) = builder.handshake(TokioIo::new(tls)).await.unwrap();
        // Drive the connection, publishing whether the gateway's SETTINGS
        // allow extended CONNECT (hyper keeps that on the connection).
        let (enabled, extended) = watch::channel(false);
        // hyper reads SETTINGS on a task of its own, which does not wake
        // this one: until they allow it, this task looks again each turn.
        let conn = tokio::spawn(std::future::poll_fn(move |cx| {
            let polled = Pin::new(&mut conn).poll(cx);
            if conn.is_extended_connect_protocol_enabled() {
                enabled.send_replace(true);
            } else if polled.is_pending() {
                cx.waker().wake_by_ref();
            }
            polled
        }));
        H2 {
            sender,
            port: gw.addr.port(),
            conn,
            extended,
        }
    }

    /// The extended CONNECT for a WebSocket to `path` (RFC 8441 section 5).
    pub fn connect_request(&self, path: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost:{}{path}", self.port))
            .extension(Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
    }

    /// Send any request; the response head.
    pub async fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// A WebSocket to `path` on a new stream; panics if it is refused.
    pub async fn ws(&mut self, path: &str) -> H2Ws {
        let request = self.connect_request(path).body(Empty::new()).unwrap();
        self.ws_with(request).await.0
    }

    /// A WebSocket from `request`, and the gateway's 200.
    pub async fn ws_with(&mut self, request: Request<Empty<Bytes>>) -> (H2Ws, Response<()>) {
        self.try_ws_with(request)
            .await
            .unwrap_or_else(|status| panic!("refused: {status}"))
    }

    async fn try_ws_with(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> Result<(H2Ws, Response<()>), u16> {
        let response = self.send(request).await.unwrap();
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        let (parts, body) = response.into_parts();
        let upgraded = hyper::upgrade::on(Response::from_parts(parts.clone(), body))
            .await
            .unwrap();
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        Ok((ws, Response::from_parts(parts, ())))
    }

    /// A request's status and body.
    pub async fn status(&mut self, request: Request<Empty<Bytes>>) -> (u16, String) {
        let response = self.send(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}
