//! PEM files → `rustls::ServerConfig`: TLS 1.2 and 1.3 only, ALPN
//! `http/1.1` (and `h2` where `[listen] http2`), the certificate chosen by SNI with a default, client
//! certificates asked for where `client_auth` says (`auth::mtls`). The
//! server connection itself runs on wsgate's own stream (`stream`), which
//! owns its buffers; tokio-rustls serves the client side only.

mod buffers;
mod stream;

pub(crate) use stream::TlsStream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth;
use crate::config::{CertPair, ClientAuth, ConfigIssue, TlsConfig, UpstreamTls};
use crate::metrics;
use crate::names::{ServerName, normalize_sni};

/// The crypto provider wsgate uses everywhere (server and test clients).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS side of the public front: one server config per client
/// certificate rule. Most fronts have one; a `[[tls.sni]]` entry with its
/// own `client_auth` gets its own, picked from the ClientHello's name.
pub struct TlsFront {
    default: Arc<rustls::ServerConfig>,
    exact: HashMap<String, Arc<rustls::ServerConfig>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<rustls::ServerConfig>>,
}

/// Which of a [`TlsFront`]'s configs a connection got (and so which CA
/// verified its client certificate): a `[[tls.sni]]` entry with its own
/// `client_auth`, by exact name or wildcard suffix, or the listener's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Exact(String),
    /// The suffix after `*.`.
    Wildcard(String),
    Default,
}

/// The config choice for one connection: the entry, and the SNI name it
/// was chosen by (normalized, see [`normalize_sni`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub(crate) entry: Entry,
    pub(crate) name: Option<String>,
}

impl Chosen {
    /// The one host a client certificate verified on this connection counts
    /// for: the entry's own name, or for a wildcard entry and the default
    /// the SNI name that chose it. Derived from the entry, never from the
    /// SNI text alone: a name that has its own entry never chooses the
    /// default, so a certificate the listener's CA verified never counts
    /// for a name whose entry has its own `client_auth`. A name that still
    /// ends in a dot (it had two) is bound to nothing, as no `Host` header
    /// compares equal to it.
    pub(crate) fn cert_host(&self) -> Option<&str> {
        match &self.entry {
            Entry::Exact(name) => Some(name.as_str()),
            Entry::Wildcard(suffix) => self.name.as_deref().filter(|name| {
                name.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            }),
            Entry::Default => self.name.as_deref(),
        }
        .filter(|name| !name.ends_with('.'))
    }
}

impl TlsFront {
    /// The handshake, with the config the client's SNI name asks for, and
    /// which config that was.
    pub(crate) async fn accept<IO>(&self, io: IO) -> std::io::Result<(TlsStream<IO>, Chosen)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut chosen = None;
        let tls = stream::accept(io, |name| {
            let (choice, config) = self.config_for(name);
            chosen = Some(choice);
            config.clone()
        })
        .await?;
        // `accept` asks for the config before it can succeed.
        let chosen = chosen.unwrap_or(Chosen {
            entry: Entry::Default,
            name: None,
        });
        Ok((tls, chosen))
    }

    /// Exact name, then one-label wildcard, then the default; the name
    /// normalized as the certificate resolver does.
    fn config_for(&self, name: Option<&str>) -> (Chosen, &Arc<rustls::ServerConfig>) {
        let name = name.map(normalize_sni);
        let (entry, config) = match name.as_deref() {
            Some(name) => match self.exact.get_key_value(name) {
                Some((key, config)) => (Entry::Exact(key.clone()), config),
                None => match name
                    .split_once('.')
                    .and_then(|(_, suffix)| self.wildcard.get_key_value(suffix))
                {
                    Some((suffix, config)) => (Entry::Wildcard(suffix.clone()), config),
                    None => (Entry::Default, &self.default),
                },
            },
            None => (Entry::Default, &self.default),
        };
        (Chosen { entry, name }, config)
    }
}

/// Build the server side. Errors name the config key of the bad file.
pub fn server_config(tls: &TlsConfig, http2: bool) -> Result<TlsFront, Vec<ConfigIssue>> {
    let provider = provider();
    let mut issues = Vec::new();
    let default = load_pair(&provider, &tls.default, "tls", "default", &mut issues);
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (i, sni) in tls.sni.iter().enumerate() {
        if let Some(key) = load_pair(
            &provider,
            &sni.files,
            &format!("tls.sni[{i}]"),
            &sni.host.to_string(),
            &mut issues,
        ) {
            match &sni.host {
                ServerName::Wildcard(suffix) => wildcard.insert(suffix.clone(), key),
                ServerName::Exact(name) => exact.insert(name.clone(), key),
            };
        }
    }
    let verifier = |auth: &Option<ClientAuth>, section: &str, issues: &mut Vec<ConfigIssue>| {
        let auth = auth.as_ref()?;
        auth::client_verifier(auth, section)
            .map_err(|i| issues.push(i))
            .ok()
            .map(|v| (v, auth.mode))
    };
    let listener_verifier = verifier(&tls.client_auth, "tls", &mut issues);
    let sni_verifiers: Vec<_> = (tls.sni.iter().enumerate())
        .map(|(i, sni)| verifier(&sni.client_auth, &format!("tls.sni[{i}]"), &mut issues))
        .collect();
    let Some(default) = default.filter(|_| issues.is_empty()) else {
        return Err(issues);
    };
    let resolver = Arc::new(SniResolver {
        default,
        exact,
        wildcard,
    });
    let mut front = TlsFront {
        default: build(
            &provider,
            &resolver,
            listener_verifier.and_then(|(v, _)| v),
            http2,
        ),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    for (sni, verifier) in tls.sni.iter().zip(sni_verifiers) {
        let Some((verifier, _)) = verifier else {
            continue;
        };
        let config = build(&provider, &resolver, verifier, http2);
        match &sni.host {
            ServerName::Wildcard(suffix) => front.wildcard.insert(suffix.clone(), config),
            ServerName::Exact(name) => front.exact.insert(name.clone(), config),
        };
    }
    Ok(front)
}

/// One server config: TLS 1.2 and 1.3, ALPN http/1.1 (`h2` first where
/// `http2`), certificates by SNI, client certificates asked for by
/// `verifier` (none without).
fn build(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<SniResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    http2: bool,
) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(config)
}

fn load_pair(
    provider: &CryptoProvider,
    pair: &CertPair,
    section: &str,
    sni: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Arc<CertifiedKey>> {
    let (chain, key) = read_pair(
        pair,
        &format!("{section}.cert"),
        &format!("{section}.key"),
        issues,
    )?;
    match x509_parser::parse_x509_certificate(&chain[0]) {
        Ok((_, leaf)) => metrics::cert_not_after(sni, leaf.validity().not_after.timestamp()),
        Err(e) => {
            let why = format!("the first certificate does not parse: {e}");
            issues.push(issue(&format!("{section}.cert"), &pair.cert, why));
            return None;
        }
    }
    match CertifiedKey::from_der(chain, key, provider) {
        Ok(certified) => Some(Arc::new(certified)),
        Err(e) => {
            issues.push(issue(
                &format!("{section}.key"),
                &pair.key,
                format!("unusable with {}: {e}", pair.cert.display()),
            ));
            None
        }
    }
}

fn issue(key: &str, path: &Path, problem: String) -> ConfigIssue {
    ConfigIssue {
        key: key.to_owned(),
        problem: format!("{}: {problem}", path.display()),
    }
}

/// A PEM certificate chain (at least one certificate).
fn read_chain(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigIssue> {
    match CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(chain) if chain.is_empty() => Err(issue(key, path, "no CERTIFICATE block found".into())),
        Ok(chain) => Ok(chain),
        Err(e) => Err(issue(
            key,
            path,
            format!("cannot read PEM certificates: {e}"),
        )),
    }
}

/// A certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
fn read_pair(
    pair: &CertPair,
    cert_key: &str,
    key_key: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = read_chain(&pair.cert, cert_key)
        .map_err(|i| issues.push(i))
        .ok()?;
    match PrivateKeyDer::from_pem_file(&pair.key) {
        Ok(key) => Some((chain, key)),
        Err(e) => {
            issues.push(issue(
                key_key,
                &pair.key,
                format!("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            ));
            None
        }
    }
}

/// The client side of TLS to `wss://` members: trust `ca` (or the system
/// roots), present a client certificate when configured, offer http/1.1.
/// Errors name the route's keys (`{prefix}.tls_ca`, ...).
pub fn client_config(
    tls: &UpstreamTls,
    prefix: &str,
) -> Result<Arc<rustls::ClientConfig>, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => match read_chain(ca, &format!("{prefix}.tls_ca")) {
            Ok(certs) => {
                for cert in certs {
                    if let Err(e) = roots.add(cert) {
                        issues.push(issue(
                            &format!("{prefix}.tls_ca"),
                            ca,
                            format!("not a usable CA certificate: {e}"),
                        ));
                    }
                }
            }
            Err(i) => issues.push(i),
        },
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                issues.push(ConfigIssue {
                    key: format!("{prefix}.tls_ca"),
                    problem: "no system CA certificates found; set tls_ca".into(),
                });
            }
        }
    }
    let client_auth = tls.client_cert.as_ref().and_then(|pair| {
        read_pair(
            pair,
            &format!("{prefix}.tls_client_cert"),
            &format!("{prefix}.tls_client_key"),
            &mut issues,
        )
    });
    if !issues.is_empty() {
        return Err(issues);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            vec![ConfigIssue {
                key: format!("{prefix}.tls_client_key"),
                problem: format!("unusable with tls_client_cert: {e}"),
            }]
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Exact SNI name, then one-label wildcard, then the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = normalize_sni(name);
        let found = self.exact.get(&name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, suffix)| self.wildcard.get(suffix))
        });
        Some(found.unwrap_or(&self.default).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcert;

    fn config() -> Arc<rustls::ServerConfig> {
        let made = devcert::generate(&["localhost".to_owned()]).unwrap();
        let chain = CertificateDer::pem_slice_iter(made.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(made.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    #[test]
    fn the_config_and_the_bound_name_come_from_one_normalized_lookup() {
        let (default, secure, wild) = (config(), config(), config());
        let front = TlsFront {
            default: default.clone(),
            exact: HashMap::from([("secure.test".to_owned(), secure.clone())]),
            wildcard: HashMap::from([("wild.test".to_owned(), wild.clone())]),
        };
        let pick = |name: Option<&str>| {
            let (chosen, config) = front.config_for(name);
            (
                chosen.entry.clone(),
                chosen.cert_host().map(str::to_owned),
                config.clone(),
            )
        };
        // A trailing dot and upper case are the same name: the entry's own
        // config (its CA), and the certificate counts for that entry's name.
        for sni in ["secure.test", "secure.test.", "Secure.TEST."] {
            let (entry, host, config) = pick(Some(sni));
            assert_eq!(entry, Entry::Exact("secure.test".into()), "{sni}");
            assert_eq!(host.as_deref(), Some("secure.test"), "{sni}");
            assert!(Arc::ptr_eq(&config, &secure), "{sni}");
        }
        for sni in ["a.wild.test", "a.wild.test.", "A.Wild.Test."] {
            let (entry, host, config) = pick(Some(sni));
            assert_eq!(entry, Entry::Wildcard("wild.test".into()), "{sni}");
            assert_eq!(host.as_deref(), Some("a.wild.test"), "{sni}");
            assert!(Arc::ptr_eq(&config, &wild), "{sni}");
        }
        // The default: bound to the name that chose it, which has no entry.
        let (entry, host, config) = pick(Some("other.test."));
        assert_eq!(entry, Entry::Default);
        assert_eq!(host.as_deref(), Some("other.test"));
        assert!(Arc::ptr_eq(&config, &default));
        let (entry, host, _) = pick(None);
        assert_eq!((entry, host), (Entry::Default, None));
        // Two dots: not a name rustls lets through, and bound to nothing.
        let (entry, host, _) = pick(Some("secure.test.."));
        assert_eq!((entry, host), (Entry::Default, None));
        // A wildcard entry binds only a name one label below its suffix.
        let odd = Chosen {
            entry: Entry::Wildcard("wild.test".into()),
            name: Some("wild.test".into()),
        };
        assert_eq!(odd.cert_host(), None);
    }
}
