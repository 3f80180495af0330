//! Access control before the upgrade: origins, tokens (header, cookie,
//! query; HS256, RS256, ES256, a JWKS reloaded), the identity a hub client
//! and an upstream member get, and every refusal's status and metric.

mod common;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Gateway, Route, Running, metric, next_data, status_of, upgrade_request, within};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use toml::Table;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `sub`, valid for an hour, for audience `wsgate` from `issuer`.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "aud": "wsgate", "iss": "https://issuer.test"})
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A `[routes.jwt]` table.
fn jwt(algorithm: &str, key: &str, file: &Path) -> Table {
    let mut t = Table::new();
    t.insert("algorithm".into(), algorithm.into());
    t.insert(key.into(), file.to_str().unwrap().into());
    t.insert("audience".into(), vec!["wsgate"].into());
    t.insert("issuer".into(), vec!["https://issuer.test"].into());
    t.insert("leeway".into(), "0s".into());
    t.insert("cookie".into(), "session".into());
    t
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The status of an upgrade to `path` with `extra` header lines.
async fn status(gw: &Running, path: &str, extra: &str) -> u16 {
    status_of(&gw.raw_head(upgrade_request(path, extra).as_bytes()).await)
}

async fn scrape(gw: &Running) -> String {
    gw.admin_get("/metrics").await.1
}

#[tokio::test]
async fn origins_are_checked_before_the_upgrade() {
    within(20, async {
        let origins = vec!["https://app.example.com", "https://*.example.com"];
        let gw = Gateway::builder()
            .route(
                Route::echo("/strict")
                    .name("strict")
                    .key("origins", origins.clone())
                    .key("allow_no_origin", false),
            )
            .route(
                Route::echo("/lenient")
                    .name("lenient")
                    .key("origins", origins),
            )
            .start()
            .await;
        let origin = |o: &str| format!("Origin: {o}\r\n");
        assert_eq!(
            status(&gw, "/strict", &origin("https://app.example.com")).await,
            101
        );
        assert_eq!(
            status(&gw, "/strict", &origin("https://chat.example.com")).await,
            101
        );
        assert_eq!(
            status(&gw, "/strict", &origin("https://evil.net")).await,
            403
        );
        assert_eq!(
            status(&gw, "/strict", &origin("http://app.example.com")).await,
            403
        );
        assert_eq!(status(&gw, "/strict", &origin("null")).await, 403);
        assert_eq!(status(&gw, "/strict", "").await, 403, "absent, refused");
        assert_eq!(status(&gw, "/lenient", "").await, 101, "absent, allowed");
        assert_eq!(
            status(&gw, "/lenient", &origin("https://evil.net")).await,
            403
        );
        assert_eq!(status(&gw, "/echo", &origin("https://evil.net")).await, 101);
        let body = scrape(&gw).await;
        let series = |r: &str, why: &str| {
            metric(
                &body,
                &format!("wsgate_auth_failures_total{{route=\"{r}\",reason=\"{why}\"}}"),
            )
        };
        assert_eq!(series("strict", "origin"), Some(3.0), "{body}");
        assert_eq!(series("strict", "no_origin"), Some(1.0));
        assert_eq!(series("lenient", "origin"), Some(1.0));
    })
    .await;
}

#[tokio::test]
async fn hs256_tokens_from_header_cookie_and_query() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let secret = write(dir.path(), "secret", SECRET);
        let gw = Gateway::builder()
            .route(Route::echo("/private").name("private").key("jwt", jwt("HS256", "secret_file", &secret)))
            .start()
            .await;
        let good = hs256(&claims("alice"));
        let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
        assert_eq!(status(&gw, "/private", &bearer(&good)).await, 101);
        assert_eq!(status(&gw, "/private", &format!("Cookie: a=b; session={good}\r\n")).await, 101);
        assert_eq!(status(&gw, &format!("/private?token={good}"), "").await, 101);
        assert_eq!(status(&gw, "/private", "").await, 401, "missing");
        assert_eq!(status(&gw, "/private", &format!("Cookie: other={good}\r\n")).await, 401);

        let refused = [
            (json!({"sub": "a", "exp": now() - 10, "aud": "wsgate", "iss": "https://issuer.test"}), "expired"),
            (json!({"sub": "a", "exp": now() + 3600, "nbf": now() + 600, "aud": "wsgate", "iss": "https://issuer.test"}), "not_yet_valid"),
            (json!({"sub": "a", "exp": now() + 3600, "aud": "other", "iss": "https://issuer.test"}), "wrong_audience"),
            (json!({"sub": "a", "exp": now() + 3600, "aud": "wsgate", "iss": "https://evil.test"}), "wrong_issuer"),
        ];
        for (claims, _) in &refused {
            assert_eq!(status(&gw, "/private", &bearer(&hs256(claims))).await, 401, "{claims}");
        }
        let other_key = encode(&Header::new(Algorithm::HS256), &claims("a"), &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!")).unwrap();
        assert_eq!(status(&gw, "/private", &bearer(&other_key)).await, 401);
        let hs512 = encode(&Header::new(Algorithm::HS512), &claims("a"), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(status(&gw, "/private", &bearer(&hs512)).await, 401);
        assert_eq!(status(&gw, "/private", &bearer(&unsigned(&claims("a")))).await, 401);
        assert_eq!(status(&gw, "/private", &bearer("not-a-token")).await, 401);

        let body = scrape(&gw).await;
        let series = |why: &str| {
            metric(&body, &format!("wsgate_auth_failures_total{{route=\"private\",reason=\"{why}\"}}"))
        };
        for (_, reason) in refused {
            assert_eq!(series(reason), Some(1.0), "{reason}: {body}");
        }
        assert_eq!(series("missing_token"), Some(2.0));
        assert_eq!(series("bad_signature"), Some(1.0));
        assert_eq!(series("wrong_algorithm"), Some(2.0), "HS512 and none");
        assert_eq!(series("malformed_token"), Some(1.0));
    })
    .await;
}

/// `alg: none`, no signature.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// An RSA key pair made by the openssl CLI (ring cannot generate RSA keys):
/// (private PKCS#8 PEM, public SPKI PEM).
fn rsa_pair(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join("rsa.pem");
    let public = dir.join("rsa.pub.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let private_s = private.to_str().unwrap();
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private_s,
    ]);
    run(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(private).unwrap(),
        std::fs::read(public).unwrap(),
    )
}

#[tokio::test]
async fn rs256_es256_and_eddsa_with_keys_made_here() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let (rsa_private, rsa_public) = rsa_pair(dir.path());
        let rsa_public_file = write(dir.path(), "rsa.pub", &rsa_public);
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec_public = write(dir.path(), "ec.pub", ec.public_key_pem().as_bytes());
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_public = write(dir.path(), "ed.pub", ed.public_key_pem().as_bytes());
        let gw = Gateway::builder()
            .route(
                Route::echo("/rs")
                    .name("rs")
                    .key("jwt", jwt("RS256", "public_key", &rsa_public_file)),
            )
            .route(
                Route::echo("/es")
                    .name("es")
                    .key("jwt", jwt("ES256", "public_key", &ec_public)),
            )
            .route(
                Route::echo("/ed")
                    .name("ed")
                    .key("jwt", jwt("EdDSA", "public_key", &ed_public)),
            )
            .start()
            .await;
        let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims("a"),
            &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
        )
        .unwrap();
        let es = encode(
            &Header::new(Algorithm::ES256),
            &claims("a"),
            &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(status(&gw, "/rs", &bearer(&rs)).await, 101);
        assert_eq!(status(&gw, "/es", &bearer(&es)).await, 101);
        let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
        let eddsa = encode(&Header::new(Algorithm::EdDSA), &claims("a"), &ed_key).unwrap();
        assert_eq!(status(&gw, "/ed", &bearer(&eddsa)).await, 101);
        assert_eq!(status(&gw, "/ed", &bearer(&es)).await, 401);
        assert_eq!(
            status(&gw, "/rs", &bearer(&es)).await,
            401,
            "ES256 on an RS256 route"
        );
        // The classic confusion: HS256 with the RSA public key as the secret.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims("a"),
            &EncodingKey::from_secret(&rsa_public),
        )
        .unwrap();
        assert_eq!(status(&gw, "/rs", &bearer(&confused)).await, 401);
        let body = scrape(&gw).await;
        let series = "wsgate_auth_failures_total{route=\"rs\",reason=\"wrong_algorithm\"}";
        assert_eq!(metric(&body, series), Some(2.0), "{body}");
    })
    .await;
}

/// A JWKS document with one P-256 key.
fn jwks(kid: &str, key: &rcgen::KeyPair) -> Vec<u8> {
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
    });
    json!({"keys": [jwk]}).to_string().into_bytes()
}

#[tokio::test]
async fn a_jwks_file_is_read_again_on_reload() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let first = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let second = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let file = write(dir.path(), "jwks.json", &jwks("k1", &first));
        let builder = Gateway::builder().route(
            Route::echo("/keys")
                .name("keys")
                .key("jwt", jwt("ES256", "jwks", &file)),
        );
        let config = builder.config();
        let gw = builder.start().await;
        let token = |kid: &str, key: &rcgen::KeyPair| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            let key = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
            format!(
                "Authorization: Bearer {}\r\n",
                encode(&header, &claims("a"), &key).unwrap()
            )
        };
        assert_eq!(status(&gw, "/keys", &token("k1", &first)).await, 101);
        assert_eq!(status(&gw, "/keys", &token("k2", &second)).await, 401);
        // The key is rotated: the file is replaced and SIGHUP reloads it.
        std::fs::write(&file, jwks("k2", &second)).unwrap();
        gw.reload(config).await;
        let mut tries = 0;
        while status(&gw, "/keys", &token("k2", &second)).await != 101 {
            tries += 1;
            assert!(tries < 200, "the new key was never taken");
            tokio::task::yield_now().await;
        }
        assert_eq!(status(&gw, "/keys", &token("k1", &first)).await, 401);
    })
    .await;
}

#[tokio::test]
async fn the_hub_names_a_client_by_its_token() {
    within(20, async {
        let dir = tempfile::tempdir().unwrap();
        let secret = write(dir.path(), "secret", SECRET);
        let gw = Gateway::builder()
            .route(
                Route::hub("/hub")
                    .name("hub")
                    .key("jwt", jwt("HS256", "secret_file", &secret)),
            )
            .start()
            .await;
        let token = hs256(&claims("alice"));
        let mut ws = gw.ws(&format!("/hub?token={token}")).await;
        let Message::Text(welcome) = next_data(&mut ws).await else {
            panic!("a text welcome");
        };
        let welcome: Value = serde_json::from_str(&welcome).unwrap();
        assert_eq!(welcome, json!({"type": "welcome", "client": "alice"}));
        let asked = format!("/hub?name=mallory&token={token}");
        assert_eq!(status(&gw, &asked, "").await, 403, "?name= with a token");
        assert_eq!(status(&gw, "/hub?name=mallory", "").await, 401);
    })
    .await;
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_backend() {
    within(20, async {
        let dir = tempfile::tempdir().unwrap();
        let secret = write(dir.path(), "secret", SECRET);
        let mut backend = common::backend::Backend::plain().await;
        let mut jwt = jwt("HS256", "secret_file", &secret);
        jwt.insert("subject_header".into(), "X-User".into());
        jwt.insert(
            "claim_headers".into(),
            vec!["role=X-Role", "tenant=X-Tenant"].into(),
        );
        jwt.insert("cookie".into(), "session".into());
        let gw = Gateway::builder()
            .route(
                Route::upstream("/app", [format!("ws://{}/", backend.addr)])
                    .name("app")
                    .key("jwt", jwt),
            )
            .start()
            .await;
        let mut claims = claims("alice");
        claims["role"] = json!("admin");
        let token = hs256(&claims);
        let forged = "X-User: root\r\nX-Role: root\r\nX-Tenant: 1\r\n";
        let head = gw
            .raw_head(upgrade_request(&format!("/app/x?a=1&token={token}"), forged).as_bytes())
            .await;
        assert_eq!(status_of(&head), 101, "{head}");
        let (path, headers) = backend.next_upgrade().await;
        assert!(!path.contains("token"), "the token left the query: {path}");
        assert!(path.ends_with("/app/x?a=1"), "{path}");
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-user"), ["alice"]);
        assert_eq!(all("x-role"), ["admin"]);
        assert!(
            all("x-tenant").is_empty(),
            "no such claim: the forged value is gone"
        );

        // The token in a header or a cookie is not passed on either; the
        // client's other cookies are.
        let carriers =
            format!("Authorization: Bearer {token}\r\nCookie: theme=dark; session={token}\r\n");
        let head = gw
            .raw_head(upgrade_request("/app/y", &carriers).as_bytes())
            .await;
        assert_eq!(status_of(&head), 101, "{head}");
        let (_, headers) = backend.next_upgrade().await;
        assert!(headers.get("authorization").is_none(), "{headers:?}");
        assert_eq!(headers.get("cookie").unwrap(), "theme=dark");
    })
    .await;
}
