//! Who may open a route, decided before the upgrade: before an upstream is
//! dialled or a hub name is taken. A route's [`RouteAuth`] checks the
//! `Origin` header, then (with a `jwt` table) finds the token in the
//! `Authorization: Bearer` header, a cookie or the query, removes it from
//! the query so it is neither logged nor forwarded, and verifies it. The
//! [`Identity`] it yields travels with the session: the hub client's name,
//! the headers an upstream member gets.

mod expiry;
mod jwt;
mod mtls;

pub(crate) use expiry::Expiry;
pub(crate) use mtls::{certificate_name, verifier as client_verifier};

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use serde_json::Value;

use tracing::{info, warn};

use crate::close::{AuthFailure, Rejection};
use crate::config::{Access, ConfigIssue, JwtConfig, OriginPattern};
use crate::metrics;
use crate::names::check_client_name;
pub(crate) use jwt::Claims;

/// One route's access rules, with their keys read.
pub(crate) struct RouteAuth {
    origins: Vec<OriginPattern>,
    allow_no_origin: bool,
    jwt: Option<(JwtConfig, jwt::Verifier)>,
    /// A verified TLS client certificate is required.
    client_cert: bool,
}

/// Who a verified token says the client is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The token's `sub`.
    pub(crate) subject: String,
    pub(crate) claims: Claims,
}

impl Identity {
    /// `exp`, as Unix seconds, if the token has one.
    pub(crate) fn expires(&self) -> Option<u64> {
        // As the verifier reads it: a fractional `exp` is rounded.
        let exp = self.claims.get("exp")?;
        exp.as_u64().or_else(|| {
            exp.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.round() as u64)
        })
    }
}

/// A hub client's `refresh` request: verify a fresh token and move the
/// session's deadline to its `exp`; the text says why not.
pub(crate) type Refresh = Box<dyn Fn(&str) -> Result<(), &'static str> + Send + Sync>;

/// The session's expiry timer, when a token with `exp` let it in.
pub(crate) fn expiry(
    identity: Option<&Identity>,
    rules: Option<&RouteAuth>,
    parent: &tokio_util::sync::CancellationToken,
) -> Option<Expiry> {
    let (config, _) = rules?.jwt.as_ref()?;
    let exp = identity?.expires()?;
    Some(Expiry::start(parent, exp, config.expiry_grace))
}

/// What a `refresh` request does for the session of `identity`, when it
/// has a token that runs out.
pub(crate) fn refresher(
    rules: Option<&Arc<RouteAuth>>,
    expiry: Option<&Arc<Expiry>>,
    identity: Option<&Identity>,
) -> Option<Refresh> {
    let (rules, expiry) = (rules?.clone(), expiry?.clone());
    let subject = identity?.subject.clone();
    Some(Box::new(move |token: &str| {
        let Some((_, verifier)) = &rules.jwt else {
            return Err("this route takes no tokens");
        };
        let claims = verifier.verify(token).map_err(AuthFailure::message)?;
        if claims.get("sub").and_then(Value::as_str) != Some(subject.as_str()) {
            return Err("the token names another client");
        }
        let exp = claims.get("exp").and_then(Value::as_u64);
        expiry.extend(exp.ok_or("the token has no exp")?);
        Ok(())
    }))
}

impl RouteAuth {
    /// The rules of `access`, or `None` when the route is open to all.
    /// Reads key files (again on every reload); a problem names its key
    /// under `routes[{route}]`.
    pub(crate) fn new(access: &Access, route: &str) -> Result<Option<RouteAuth>, ConfigIssue> {
        if access.origins.is_empty() && access.jwt.is_none() && !access.client_cert {
            return Ok(None);
        }
        let prefix = format!("routes[{route}]");
        let jwt = match &access.jwt {
            Some(config) => Some((config.clone(), jwt::Verifier::new(config, &prefix)?)),
            None => None,
        };
        Ok(Some(RouteAuth {
            origins: access.origins.clone(),
            allow_no_origin: access.allow_no_origin,
            jwt,
            client_cert: access.client_cert,
        }))
    }

    /// Check `req` against the rules; the token, if any, is taken out of
    /// the query first, whatever the outcome.
    pub(crate) fn admit<B>(
        &self,
        req: &mut Request<B>,
        client_cert: Option<&str>,
    ) -> Result<Option<Identity>, AuthFailure> {
        // Every place the token can come in is emptied, so no member
        // receives (and could replay) the client's credential.
        let token = self.jwt.as_ref().and_then(|(config, _)| {
            let header = take_bearer(req.headers_mut());
            let cookie = config
                .cookie
                .as_deref()
                .and_then(|name| take_cookie(req.headers_mut(), name));
            let query = take_query_param(req, &config.query);
            header.or(cookie).or(query)
        });
        self.check_origin(req.headers())?;
        if self.client_cert && client_cert.is_none() {
            return Err(AuthFailure::NoClientCert);
        }
        let Some((_, verifier)) = &self.jwt else {
            // Without a token, the certificate names the client.
            return Ok(client_cert
                .filter(|_| self.client_cert)
                .map(|name| Identity {
                    subject: name.to_owned(),
                    claims: Claims::new(),
                }));
        };
        let token = token.ok_or(AuthFailure::MissingToken)?;
        let claims = verifier.verify(&token)?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::Malformed)?
            .to_owned();
        Ok(Some(Identity { subject, claims }))
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        if self.origins.is_empty() {
            return Ok(());
        }
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) if self.allow_no_origin => Ok(()),
            (None, _) => Err(AuthFailure::NoOrigin),
            (Some(origin), None) => {
                let origin = origin.to_str().map_err(|_| AuthFailure::Origin)?;
                match self.origins.iter().any(|p| p.matches(origin)) {
                    true => Ok(()),
                    false => Err(AuthFailure::Origin),
                }
            }
            (Some(_), Some(_)) => Err(AuthFailure::Origin),
        }
    }

    /// On an upstream route: remove the client's headers of the names the
    /// identity goes in, then set them from `identity`.
    pub(crate) fn identity_headers(&self, headers: &mut HeaderMap, identity: Option<&Identity>) {
        let Some((config, _)) = &self.jwt else {
            return;
        };
        let claim_headers = config
            .claim_headers
            .iter()
            .map(|(c, h)| (Some(c.as_str()), h));
        let subject_header = config.subject_header.iter().map(|h| (None, h));
        for (claim, name) in subject_header.chain(claim_headers) {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            headers.remove(&name);
            let Some(identity) = identity else { continue };
            let value = match claim {
                None => Some(identity.subject.clone()),
                Some(claim) => identity.claims.get(claim).map(claim_text),
            };
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(name, value);
            }
        }
    }
}

/// Say loudly, once at start, which routes let in anyone: no origin list,
/// no token, no client certificate.
pub(crate) fn warn_open(routes: &[crate::config::Route]) {
    for route in routes {
        let access = &route.access;
        if access.origins.is_empty() && access.jwt.is_none() && !access.client_cert {
            warn!(
                route = route.name.as_str(),
                "route is open to every client: no origins, no jwt, no client_cert (see README Security)"
            );
        }
    }
}

/// A hub client's name and claims: with a token (or certificate), its
/// subject, and no other may be asked for with `?name=`; else what was asked.
pub(crate) fn hub_name(
    identity: Option<Identity>,
    asked: Option<String>,
) -> Result<(Option<String>, Option<Claims>), Rejection> {
    let refuse = |failure| Err(Rejection::Auth(failure));
    match identity {
        None => Ok((asked, None)),
        Some(_) if asked.is_some() => refuse(AuthFailure::NameGiven),
        Some(id) if check_client_name(&id.subject).is_err() => refuse(AuthFailure::Malformed),
        Some(id) => Ok((Some(id.subject), Some(id.claims))),
    }
}

/// Run `route`'s rules (if any) on `req`: the identity (set in the
/// configured headers for an upstream member), or the refusal,
/// counted in `wsgate_auth_failures_total` and logged once (without the
/// token, which is never logged).
pub(crate) fn check<B>(
    req: &mut Request<B>,
    route: &str,
    rules: Option<&RouteAuth>,
    client_cert: Option<&str>,
) -> Result<Option<Identity>, Rejection> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    match rules.admit(req, client_cert) {
        Ok(identity) => {
            rules.identity_headers(req.headers_mut(), identity.as_ref());
            Ok(identity)
        }
        Err(failure) => {
            metrics::auth_failed(route, failure);
            let path = req.uri().path();
            info!(route, reason = failure.label(), path, "access refused");
            Err(Rejection::Auth(failure))
        }
    }
}

/// A claim as header text: a string as it is, anything else as JSON.
fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The bearer token, with the `Authorization` header that carried it
/// removed.
fn take_bearer(headers: &mut HeaderMap) -> Option<String> {
    let token = crate::headers::bearer(headers)?.to_owned();
    headers.remove(header::AUTHORIZATION);
    Some(token)
}

/// The cookie `name`, removed from the request's cookies (the others stay).
fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let token = cookie(headers, name)?;
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .collect();
    let kept = HeaderValue::from_str(&kept.join("; ")).ok();
    headers.remove(header::COOKIE);
    if let Some(kept) = kept.filter(|v| !v.is_empty()) {
        headers.insert(header::COOKIE, kept);
    }
    Some(token)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_owned())
        })
}

/// Remove every `key=...` from the request's query; the first value.
fn take_query_param<B>(req: &mut Request<B>, key: &str) -> Option<String> {
    let query = req.uri().query()?;
    let mut found = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((k, v)) if k == key => {
                found.get_or_insert_with(|| v.to_owned());
            }
            None if pair == key => {}
            _ => kept.push(pair),
        }
    }
    found.as_ref()?;
    let path = req.uri().path();
    let path_and_query = match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    // Tokens are base64url: nothing to percent-decode but padding.
    found.map(|t| t.replace("%3D", "=").replace("%3d", "="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_leaves_the_query() {
        let mut req = Request::get("/chat?a=1&token=abc.def.ghi&b=2")
            .body(())
            .unwrap();
        assert_eq!(
            take_query_param(&mut req, "token").as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(req.uri().to_string(), "/chat?a=1&b=2");
        let mut req = Request::get("/chat?token=x").body(()).unwrap();
        assert_eq!(take_query_param(&mut req, "token").as_deref(), Some("x"));
        assert_eq!(req.uri().to_string(), "/chat");
        let mut req = Request::get("/chat?tokens=x").body(()).unwrap();
        assert_eq!(take_query_param(&mut req, "token"), None);
        assert_eq!(req.uri().to_string(), "/chat?tokens=x");
    }

    #[test]
    fn bearer_and_cookie_are_found() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a.b.c"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("x=1; jwt=d.e.f"));
        assert_eq!(crate::headers::bearer(&h), Some("a.b.c"));
        assert_eq!(cookie(&h, "jwt").as_deref(), Some("d.e.f"));
        assert_eq!(cookie(&h, "j"), None);
    }
}
