//! Real WebSocket backends for relay tests: tokio-tungstenite servers on
//! 127.0.0.1:0, plain or TLS (optionally requiring a client certificate).
//! A backend echoes data messages, reports what it sees on a channel, and
//! obeys text commands:
//! - `cmd:close:CODE:REASON` closes with that code and reason;
//! - `cmd:ping:PAYLOAD` sends a ping;
//! - `cmd:flood:COUNT:SIZE` sends COUNT binary messages of SIZE bytes,
//!   reporting progress as `Event::Flooded(n)`.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::Certs;

/// What a backend saw.
#[derive(Debug)]
pub enum Event {
    /// An upgrade request: path with query, and headers.
    Upgrade {
        path: String,
        headers: HeaderMap,
    },
    Ping(Bytes),
    Pong(Bytes),
    /// The peer's Close (None: closed without a frame).
    Closed(Option<CloseFrame>),
    Flooded(usize),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Default)]
pub struct Options {
    /// Serve wss with this certificate.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Require a client certificate signed by this CA.
    pub client_ca: Option<std::path::PathBuf>,
    /// Answer upgrades whose path contains "forbidden" with 403.
    pub forbid: bool,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub events: mpsc::Receiver<Event>,
    listener: Arc<TcpListener>,
    tx: mpsc::Sender<Event>,
    opts: Options,
    tasks: JoinSet<()>,
}

impl Backend {
    pub async fn plain() -> Backend {
        Self::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Options::default(),
        )
    }

    pub async fn tls(certs: &Certs) -> Backend {
        let opts = Options {
            tls: Some((certs.cert.clone(), certs.key.clone())),
            ..Options::default()
        };
        Self::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), opts)
    }

    /// Serve on an already-bound listener (a port the test held).
    pub fn start(listener: TcpListener, opts: Options) -> Backend {
        let (tx, events) = mpsc::channel(4096);
        let mut backend = Backend {
            addr: listener.local_addr().unwrap(),
            events,
            listener: Arc::new(listener),
            tx,
            opts,
            tasks: JoinSet::new(),
        };
        backend.serve();
        backend
    }

    fn serve(&mut self) {
        let opts = &self.opts;
        let acceptor = opts
            .tls
            .as_ref()
            .map(|(cert, key)| tls_acceptor(cert, key, opts.client_ca.as_deref()));
        let (listener, tx, forbid) = (self.listener.clone(), self.tx.clone(), opts.forbid);
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                conns.spawn(async move {
                    let io: Box<dyn Io> = match acceptor {
                        Some(a) => match a.accept(tcp).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        },
                        None => Box::new(tcp),
                    };
                    serve(io, tx, forbid).await;
                });
            }
        });
    }

    /// Like a killed process: every connection dropped, no Close frames.
    /// The port stays held by this backend (so no other test can be given
    /// it): a connection to it is accepted and dropped at once.
    pub fn kill(&mut self) {
        self.tasks.abort_all();
        let listener = self.listener.clone();
        self.tasks.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                drop(tcp);
            }
        });
    }

    /// A killed backend restarted on its port.
    pub fn restart(&mut self) {
        self.tasks.abort_all();
        self.serve();
    }

    /// The next event, skipping pings and pongs unless asked for.
    pub async fn next(&mut self) -> Event {
        self.events.recv().await.expect("backend is running")
    }

    pub async fn next_upgrade(&mut self) -> (String, HeaderMap) {
        loop {
            if let Event::Upgrade { path, headers } = self.next().await {
                return (path, headers);
            }
        }
    }

    pub async fn next_close(&mut self) -> Option<CloseFrame> {
        loop {
            if let Event::Closed(frame) = self.next().await {
                return frame;
            }
        }
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                wsgate::tls::provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(builder.with_single_cert(chain, key).unwrap()))
}

// tungstenite's callback signature fixes the error type.
#[allow(clippy::result_large_err)]
async fn serve(io: Box<dyn Io>, tx: mpsc::Sender<Event>, forbid: bool) {
    let report = tx.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let _ = report.try_send(Event::Upgrade {
            path: path.clone(),
            headers: req.headers().clone(),
        });
        if forbid && path.contains("forbidden") {
            let mut refuse = ErrorResponse::new(Some("no entry for you".into()));
            *refuse.status_mut() = http::StatusCode::FORBIDDEN;
            refuse
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            return Err(refuse);
        }
        // Choose the last subprotocol offered, so the test can tell it chose.
        if let Some(offered) = req.headers().get("sec-websocket-protocol") {
            let last = offered
                .to_str()
                .unwrap()
                .split(',')
                .next_back()
                .unwrap()
                .trim()
                .to_owned();
            resp.headers_mut()
                .insert("sec-websocket-protocol", last.parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(io, callback).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(_) => {
                let _ = tx.send(Event::Closed(None)).await;
                return;
            }
        };
        match msg {
            Message::Text(t) if t.starts_with("cmd:") => {
                let parts: Vec<&str> = t.splitn(4, ':').collect();
                match parts[1] {
                    "close" => {
                        let code = parts[2].parse::<u16>().unwrap();
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: parts[3].to_owned().into(),
                        };
                        let _ = ws.close(Some(frame)).await;
                    }
                    "ping" => {
                        let _ = ws
                            .send(Message::Ping(Bytes::from(parts[2].to_owned())))
                            .await;
                    }
                    "flood" => {
                        let (count, size): (usize, usize) =
                            (parts[2].parse().unwrap(), parts[3].parse().unwrap());
                        let payload = Bytes::from(vec![0xAB; size]);
                        for i in 1..=count {
                            if ws.send(Message::Binary(payload.clone())).await.is_err() {
                                return;
                            }
                            let _ = tx.try_send(Event::Flooded(i));
                        }
                    }
                    other => panic!("unknown backend command {other}"),
                }
            }
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            Message::Ping(p) => {
                let _ = tx.send(Event::Ping(p)).await;
            }
            Message::Pong(p) => {
                let _ = tx.send(Event::Pong(p)).await;
            }
            Message::Close(frame) => {
                let _ = tx.send(Event::Closed(frame)).await;
            }
            Message::Frame(_) => {}
        }
    }
}
