//! TLS client certificates: the verifier a TLS front asks with (rustls'
//! `WebPkiClientVerifier` over the configured `client_ca`), and the name a
//! verified certificate gives its client.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use crate::config::{ClientAuth, ClientAuthMode, ConfigIssue};

/// The verifier for `auth`, or `None` when client certificates are off.
/// A problem names `{section}.client_ca`.
pub(crate) fn verifier(
    auth: &ClientAuth,
    section: &str,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, ConfigIssue> {
    let issue = |problem: String| ConfigIssue {
        key: format!("{section}.client_ca"),
        problem,
    };
    let (ClientAuthMode::Optional | ClientAuthMode::Required) = auth.mode else {
        return Ok(None);
    };
    let Some(ca) = &auth.ca else {
        return Err(issue("is required with client_auth".into()));
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            issue(format!(
                "{}: cannot read PEM certificates: {e}",
                ca.display()
            ))
        })?;
    for cert in certs {
        roots.add(cert).map_err(|e| {
            issue(format!(
                "{}: not a usable CA certificate: {e}",
                ca.display()
            ))
        })?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider());
    let builder = match auth.mode {
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
        ClientAuthMode::Required | ClientAuthMode::Off => builder,
    };
    builder
        .build()
        .map(Some)
        .map_err(|e| issue(format!("{}: {e}", ca.display())))
}

/// The name a verified client certificate gives: its subject's common name,
/// else its first DNS name, e-mail address or URI.
pub(crate) fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
            Some((*s).to_owned())
        }
        _ => None,
    })
}
