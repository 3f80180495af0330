//! Verifying a JWT against one route's settings: the algorithm is pinned by
//! the configuration (the token's header cannot choose it, so `none` and an
//! HS256 token signed with an RSA public key are refused), the key comes
//! from a secret, a PEM public key or a JWKS file, and `exp`, `nbf`, `aud`
//! and `iss` are checked with the route's leeway.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::close::AuthFailure;
use crate::config::{ConfigIssue, JwtAlgorithm, JwtConfig, JwtKey};

/// The claims of a verified token.
pub(crate) type Claims = Map<String, Value>;

/// One route's token check, with its keys read.
pub(crate) struct Verifier {
    algorithm: JwtAlgorithm,
    keys: Keys,
    validation: Validation,
}

enum Keys {
    One(DecodingKey),
    /// From a JWKS file: by `kid`; a token without `kid` only when there is
    /// exactly one key.
    Set(Vec<(Option<String>, DecodingKey)>),
}

impl Verifier {
    /// Read the key; a problem names `{prefix}.jwt.<key>`.
    pub(crate) fn new(config: &JwtConfig, prefix: &str) -> Result<Verifier, ConfigIssue> {
        let keys = read_keys(config, prefix)?;
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = !config.audience.is_empty();
        if !config.audience.is_empty() {
            validation.set_audience(&config.audience);
        }
        if !config.issuer.is_empty() {
            validation.set_issuer(&config.issuer);
        }
        Ok(Verifier {
            algorithm: config.algorithm,
            keys,
            validation,
        })
    }

    /// The claims of `token` if it verifies.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthFailure> {
        let header = header(token)?;
        if header.alg != self.algorithm {
            return Err(AuthFailure::Algorithm);
        }
        let key = match &self.keys {
            Keys::One(key) => key,
            Keys::Set(keys) => match (&header.kid, keys.as_slice()) {
                (None, [(_, only)]) => only,
                (None, _) => return Err(AuthFailure::Signature),
                (Some(kid), keys) => keys
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                    .map(|(_, key)| key)
                    .ok_or(AuthFailure::Signature)?,
            },
        };
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| failure(e.kind()))
    }
}

/// What the header says, read without trusting it.
#[derive(serde::Deserialize)]
struct Header {
    alg: JwtAlgorithmName,
    kid: Option<String>,
}

/// `alg` as written: anything not in the list (`none`) is refused as an
/// algorithm, not as a malformed token.
#[derive(serde::Deserialize, PartialEq)]
#[serde(untagged)]
enum JwtAlgorithmName {
    Known(JwtAlgorithm),
    Other(String),
}

impl PartialEq<JwtAlgorithm> for JwtAlgorithmName {
    fn eq(&self, other: &JwtAlgorithm) -> bool {
        matches!(self, JwtAlgorithmName::Known(alg) if alg == other)
    }
}

fn header(token: &str) -> Result<Header, AuthFailure> {
    let first = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| AuthFailure::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthFailure::Malformed)
}

fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidAudience => AuthFailure::Audience,
        ErrorKind::InvalidIssuer => AuthFailure::Issuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthFailure::Algorithm,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => AuthFailure::Signature,
        _ => AuthFailure::Malformed,
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn read_keys(config: &JwtConfig, prefix: &str) -> Result<Keys, ConfigIssue> {
    let issue = |key: &str, problem: String| ConfigIssue {
        key: format!("{prefix}.jwt.{key}"),
        problem,
    };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| issue(key, format!("cannot read {}: {e}", path.display())))
    };
    match &config.key {
        JwtKey::SecretFile(path) => {
            let mut secret = read("secret_file", path)?;
            if secret.last() == Some(&b'\n') {
                secret.pop();
            }
            hmac_key(secret).map_err(|p| issue("secret_file", p))
        }
        JwtKey::SecretEnv(name) => match std::env::var(name) {
            Ok(secret) => hmac_key(secret.into_bytes()).map_err(|p| issue("secret_env", p)),
            Err(_) => Err(issue("secret_env", format!("${name} is not set"))),
        },
        JwtKey::PublicKey(path) => {
            let pem = read("public_key", path)?;
            let key = match config.algorithm {
                JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            let problem = |e| format!("not a {:?} PEM public key: {e}", config.algorithm);
            key.map(Keys::One)
                .map_err(|e| issue("public_key", problem(e)))
        }
        JwtKey::Jwks(path) => {
            let json = read("jwks", path)?;
            let set: JwkSet = serde_json::from_slice(&json)
                .map_err(|e| issue("jwks", format!("not a JWKS document: {e}")))?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| issue("jwks", format!("a key cannot be used: {e}")))?;
                keys.push((jwk.common.key_id.clone(), key));
            }
            if keys.is_empty() {
                return Err(issue("jwks", "the set has no keys".into()));
            }
            Ok(Keys::Set(keys))
        }
    }
}

/// An HMAC secret: at least 32 bytes, as RFC 7518 asks for HS256.
fn hmac_key(secret: Vec<u8>) -> Result<Keys, String> {
    if secret.len() < 32 {
        return Err("the secret must be at least 32 bytes".into());
    }
    Ok(Keys::One(DecodingKey::from_secret(&secret)))
}
