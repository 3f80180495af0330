//! One connection attempt of `wsgate client`: TCP (directly, or through an
//! HTTP proxy's CONNECT, with the gateway's own egress code), TLS for
//! `wss://`, then the WebSocket handshake; each failure classified by its
//! exit status.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::{self, error::ProtocolError};

use super::exit::Exit;
use crate::config::EgressProxy;
use crate::egress::{ProxyError, dial_via};

/// Any byte stream a session runs over (TCP, TLS, either through a proxy).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// A failed attempt: its exit status and what to tell the user.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

/// Everything an attempt needs, built once from the command line.
pub(crate) struct Dialer {
    pub(crate) request: Request,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<Arc<ClientConfig>>,
    pub(crate) proxy: Option<EgressProxy>,
    pub(crate) timeout: Duration,
    pub(crate) ws: tungstenite::protocol::WebSocketConfig,
}

impl Dialer {
    /// Parse the URL into the upgrade request (headers added by the caller).
    pub(crate) fn request(url: &str) -> Result<(Request, String, u16, bool), Failure> {
        let request = url
            .into_client_request()
            .map_err(|e| Failure::new(Exit::Other, format!("{url}: {e}")))?;
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(Failure::new(Exit::Other, "the URL must be ws:// or wss://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| Failure::new(Exit::Other, "the URL has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok((request, host, port, tls))
    }

    /// One attempt, under the connect timeout.
    pub(crate) async fn connect(&self) -> Result<(Ws, Response), Failure> {
        match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                Exit::Connect,
                format!(
                    "no connection within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    async fn attempt(&self) -> Result<(Ws, Response), Failure> {
        let tcp = match self.proxy.as_ref().filter(|p| p.applies_to(&self.host)) {
            Some(proxy) => dial_via(proxy, &self.host, self.port).await.map_err(|e| {
                let why = match e {
                    ProxyError::Io(e) => format!("proxy {}: {e}", proxy.display),
                    ProxyError::Refused(status) => {
                        format!("proxy {} refused the CONNECT: {status}", proxy.display)
                    }
                };
                Failure::new(Exit::Proxy, why)
            })?,
            None => TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    Failure::new(Exit::Connect, format!("{}:{}: {e}", self.host, self.port))
                })?,
        };
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => Box::new(self.tls(config.clone(), tcp).await?),
        };
        let request = self.request.clone();
        tokio_tungstenite::client_async_with_config(request, io, Some(self.ws))
            .await
            .map_err(handshake_failure)
    }

    async fn tls(
        &self,
        config: Arc<ClientConfig>,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| Failure::new(Exit::Other, format!("{}: {e}", self.host)))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::new(Exit::Tls, format!("TLS with {}: {e}", self.host)))
    }
}

fn handshake_failure(e: tungstenite::Error) -> Failure {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            let status = response.status();
            Failure::new(Exit::Refused, format!("handshake refused: {status} {body}"))
        }
        tungstenite::Error::Protocol(p @ ProtocolError::SecWebSocketSubProtocolError(_)) => {
            Failure::new(Exit::Refused, format!("handshake refused: {p}"))
        }
        tungstenite::Error::Protocol(p) => {
            Failure::new(Exit::Refused, format!("bad handshake answer: {p}"))
        }
        other => Failure::new(Exit::Abnormal, format!("during the handshake: {other}")),
    }
}

/// TLS settings: `ca` (PEM) replaces the system's roots; `insecure` skips
/// verification altogether.
pub(crate) fn tls_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, Failure> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(Exit::Other, e.to_string()))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, Failure> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            let bad = |e: &dyn std::fmt::Display| {
                Failure::new(Exit::Other, format!("--ca {}: {e}", ca.display()))
            };
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in the file"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted (signatures are still checked,
/// so the handshake itself is sound; who is on the other end is not).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
