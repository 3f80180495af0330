//! One helper per client action: connect over wss through the test CA, read
//! the next data message, wait for the Close, close, and HTTP requests
//! through hyper's client (to the admin listener, and upgrade requests the
//! gateway refuses). Raw byte helpers are for tests that deliberately send
//! what a real client would not.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Running, upgrade_request};

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A WebSocket upgrade key (RFC 6455's sample nonce).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// TLS to `addr` as `name`, trusting `ca`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    ca: &Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, name, ca).await
}

/// TLS as `name`, trusting `ca`, over a stream the caller opened.
pub async fn tls_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &str,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(client_config(ca))
        .connect(name, stream)
        .await
}

/// wss to `path` on `addr` as `name`, trusting `ca`.
pub async fn ws_connect(
    addr: SocketAddr,
    name: &str,
    path: &str,
    ca: &Path,
) -> Result<Ws, tungstenite::Error> {
    let tls = tls_connect(addr, name, ca).await?;
    let url = format!("wss://{name}:{}{path}", addr.port());
    let (ws, _response) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(ws)
}

/// wss to `path` on `addr` as `name`, trusting `ca`, presenting the client
/// certificate chain `cert` with its `key`.
pub async fn ws_connect_with_cert(
    addr: SocketAddr,
    name: &str,
    path: &str,
    ca: &Path,
    (cert, key): (&Path, &Path),
) -> Result<Ws, tungstenite::Error> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await?;
    let url = format!("wss://{name}:{}{path}", addr.port());
    let (ws, _response) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(ws)
}

/// The next text or binary message (or Close), skipping pings and pongs.
pub async fn next_data<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    loop {
        match ws.next().await.expect("stream open").expect("no error") {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Read on until the peer's Close; returns its frame (None: no code).
pub async fn next_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<CloseFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}

/// Close the normal way and read until the server ends the connection.
pub async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// Send one HTTP/1.1 request over `io` with hyper's client; returns
/// (status, body).
pub async fn http_over<S>(io: S, request: Request<Full<Bytes>>) -> hyper::Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP request to a plain-TCP listener (the admin API, Prometheus).
pub async fn try_http(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    Ok(http_over(tcp, request).await?)
}

/// A request to `addr`, with its Host header.
pub fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
}

/// GET `path` from a plain-TCP listener; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let get = request(Method::GET, addr, path)
        .body(Full::default())
        .unwrap();
    try_http(addr, get).await.expect("HTTP GET")
}

impl Running {
    pub async fn ws(&self, path: &str) -> Ws {
        self.try_ws(path).await.expect("websocket connects")
    }

    /// wss to `path` as "localhost"; the error if the gateway refuses.
    pub async fn try_ws(&self, path: &str) -> Result<Ws, tungstenite::Error> {
        ws_connect(self.addr, "localhost", path, &self.certs.ca).await
    }

    /// wss with extra request headers (subprotocols, cookies); returns the
    /// gateway's 101 response too.
    pub async fn ws_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Ws, http::Response<Option<Vec<u8>>>) {
        let tls = self.tls().await.unwrap();
        let mut req = format!("wss://localhost:{}{path}", self.addr.port())
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        tokio_tungstenite::client_async(req, tls).await.unwrap()
    }

    /// A client whose receive buffer is small and fixed (so the kernel
    /// cannot absorb much on its behalf). Tests that never read from it see
    /// the gateway's backpressure.
    pub async fn ws_small_rcvbuf(&self, path: &str) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        let tls = tls_over(tcp, "localhost", &self.certs.ca).await.unwrap();
        let url = format!("wss://localhost:{}{path}", self.addr.port());
        tokio_tungstenite::client_async(url, tls).await.unwrap().0
    }

    /// TLS to the public listener as "localhost".
    pub async fn tls(&self) -> std::io::Result<TlsStream<TcpStream>> {
        tls_connect(self.addr, "localhost", &self.certs.ca).await
    }

    /// A well-formed upgrade request to `path`, sent with hyper's client
    /// over TLS, for the answers that refuse it; returns (status, body).
    pub async fn upgrade(&self, path: &str) -> (u16, String) {
        let request = Request::get(path)
            .header("host", "localhost")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY)
            .body(Full::default())
            .unwrap();
        let tls = self.tls().await.unwrap();
        http_over(tls, request).await.expect("an HTTP answer")
    }

    /// GET a path on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path).await
    }

    /// Any request to the admin listener (`request(..)` sets its Host).
    pub async fn admin_request(&self, request: Request<Full<Bytes>>) -> (u16, String) {
        try_http(self.admin_addr, request)
            .await
            .expect("an HTTP answer")
    }

    /// Send raw bytes over TLS and return everything the server sends back
    /// until it closes the connection (for requests no real client sends).
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut tls = self.tls().await.unwrap();
        tls.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Send raw bytes over TLS and return the response head only (for a
    /// 101, after which the connection stays open).
    pub async fn raw_head(&self, request: &[u8]) -> String {
        self.raw_upgrade_with(request).await.0
    }

    /// Complete a valid upgrade to `path` by hand; returns the open stream,
    /// for tests that play a misbehaving client at the frame level.
    pub async fn raw_upgrade(&self, path: &str) -> TlsStream<TcpStream> {
        let (head, tls) = self
            .raw_upgrade_with(upgrade_request(path, "").as_bytes())
            .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tls
    }

    /// Send an upgrade request by hand; returns the response head and the
    /// stream, open for frames after a 101.
    pub async fn raw_upgrade_with(&self, request: &[u8]) -> (String, TlsStream<TcpStream>) {
        let mut tls = self.tls().await.unwrap();
        tls.write_all(request).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tls.read_u8().await.unwrap());
        }
        (String::from_utf8_lossy(&head).into_owned(), tls)
    }
}
