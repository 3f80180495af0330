//! Development certificates: a throw-away CA and a leaf signed by it, as PEM.
//! Used by `wsgate gen-cert`, by the first run on the shipped config, and by
//! the tests. Never for production.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Names a dev certificate covers when none are given.
pub const DEFAULT_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A CA and a leaf, PEM-encoded.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// The CA certificate clients trust.
    pub ca_pem: String,
    /// The leaf followed by the CA: the chain the server presents.
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

/// Make a CA and a leaf valid for `hosts` (DNS names; IP addresses become IP
/// SANs, which clients such as Qt check). Valid from an hour ago for 397 days.
pub fn generate(hosts: &[String]) -> Result<DevCert, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(397);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "wsgate development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    let cn = hosts.first().map_or("wsgate", String::as_str);
    leaf.distinguished_name.push(DnType::CommonName, cn);
    // Server and client: the same dev leaf can try out mTLS to a backend.
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    Ok(DevCert {
        ca_pem: ca_cert.pem(),
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// Where [`DevCert::write`] put the files.
#[derive(Debug, Clone)]
pub struct Written {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCert {
    /// Write `cert` and `key` where given and `ca.pem` beside `cert`,
    /// creating directories. The key file is readable by its owner only.
    pub fn write(&self, cert: &Path, key: &Path) -> io::Result<Written> {
        let ca = cert.with_file_name("ca.pem");
        for path in [cert, key] {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
        }
        std::fs::write(&ca, &self.ca_pem)?;
        std::fs::write(cert, &self.chain_pem)?;
        write_private(key, self.key_pem.as_bytes())?;
        Ok(Written {
            ca,
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::write(path, data)
}
