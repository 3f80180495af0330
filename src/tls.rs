//! PEM files → `rustls::ServerConfig`: TLS 1.2 and 1.3 only, ALPN
//! `http/1.1`, the certificate chosen by SNI with a default.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertPair, ConfigIssue, TlsConfig};

/// The crypto provider wsgate uses everywhere (server and test clients).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the server config. Errors name the config key of the bad file.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, Vec<ConfigIssue>> {
    let provider = provider();
    let mut issues = Vec::new();
    let default = load_pair(&provider, &tls.default, "tls", &mut issues);
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (i, sni) in tls.sni.iter().enumerate() {
        if let Some(key) = load_pair(&provider, &sni.files, &format!("tls.sni[{i}]"), &mut issues) {
            match sni.host.strip_prefix("*.") {
                Some(suffix) => wildcard.insert(suffix.to_owned(), key),
                None => exact.insert(sni.host.clone(), key),
            };
        }
    }
    let Some(default) = default.filter(|_| issues.is_empty()) else {
        return Err(issues);
    };
    let resolver = SniResolver {
        default,
        exact,
        wildcard,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_pair(
    provider: &CryptoProvider,
    pair: &CertPair,
    section: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Arc<CertifiedKey>> {
    let mut issue = |key: &str, path: &Path, problem: String| {
        issues.push(ConfigIssue {
            key: format!("{section}.{key}"),
            problem: format!("{}: {problem}", path.display()),
        });
    };
    let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&pair.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
    {
        Ok(chain) if chain.is_empty() => {
            issue("cert", &pair.cert, "no CERTIFICATE block found".into());
            None
        }
        Ok(chain) => Some(chain),
        Err(e) => {
            issue(
                "cert",
                &pair.cert,
                format!("cannot read PEM certificates: {e}"),
            );
            None
        }
    }?;
    let key = match PrivateKeyDer::from_pem_file(&pair.key) {
        Ok(key) => key,
        Err(e) => {
            issue(
                "key",
                &pair.key,
                format!("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            );
            return None;
        }
    };
    match CertifiedKey::from_der(chain, key, provider) {
        Ok(certified) => Some(Arc::new(certified)),
        Err(e) => {
            issue(
                "key",
                &pair.key,
                format!("unusable with {}: {e}", pair.cert.display()),
            );
            None
        }
    }
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
        let name = name.to_ascii_lowercase();
        let found = self.exact.get(&name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, suffix)| self.wildcard.get(suffix))
        });
        Some(found.unwrap_or(&self.default).clone())
    }
}
