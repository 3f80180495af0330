//! `kind = "static"` routes: plain files over HTTPS beside the WebSocket
//! routes. Without `dir`, the chat page compiled into the binary (HTML, CSS
//! and JavaScript in `page/`, no build step); with it, the operator's
//! directory. GET and HEAD only, no directory listing; `..`, encoded
//! separators and symlinks that leave the directory are refused. Every
//! answer carries a strict Content-Security-Policy: the page's own scripts
//! and styles, and WebSocket connections back to this origin only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tracing::{debug, warn};

use crate::close::FileRefusal;
use crate::config::{Route, StaticRoute};
use crate::route::RouteTable;
use crate::{Body, RouteState, Target, metrics};

/// Files bigger than this are refused: responses are built in memory.
const MAX_FILE: u64 = 16 << 20;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The built-in chat page: (path below the route, content type, bytes).
const PAGE: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("page/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("page/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("page/style.css"),
    ),
];

/// A static route at run time.
#[derive(Debug)]
pub(crate) struct Site {
    prefix: String,
    /// The directory, canonical (symlinks resolved); `None`: the page.
    root: Option<PathBuf>,
}

impl Site {
    pub(crate) fn new(route: &Route, config: &StaticRoute) -> Site {
        let root = config
            .dir
            .as_ref()
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()));
        Site {
            prefix: route.path.clone(),
            root,
        }
    }
}

/// The static site this request's route serves, if it is one.
pub(crate) fn site_for<B>(req: &Request<B>, routes: &RouteTable<RouteState>) -> Option<Arc<Site>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match &routes.resolve(host, req.uri().path())?.1.target {
        Target::Static(site) => Some(site.clone()),
        _ => None,
    }
}

/// Answer a request to a static route.
pub(crate) async fn serve<B>(req: &Request<B>, site: &Site) -> Response<Body> {
    let result = answer(req, site).await;
    metrics::static_request(
        result
            .as_ref()
            .map(|r| r.status() == StatusCode::OK)
            .map_err(|e| *e),
    );
    match result {
        Ok(response) => response,
        Err(refusal) => {
            debug!(
                reason = refusal.label(),
                path = req.uri().path(),
                "static request refused"
            );
            refused(refusal)
        }
    }
}

async fn answer<B>(req: &Request<B>, site: &Site) -> Result<Response<Body>, FileRefusal> {
    if req.headers().contains_key(header::UPGRADE) {
        return Err(FileRefusal::Upgrade);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(FileRefusal::Method);
    }
    let below = req
        .uri()
        .path()
        .strip_prefix(site.prefix.as_str())
        .unwrap_or("");
    let mut segments = segments(below)?;
    if below.is_empty() || below.ends_with('/') {
        segments.push("index.html".to_owned());
    }
    let (content_type, bytes, etag) = match &site.root {
        None => embedded(&segments.join("/"))?,
        Some(root) => from_dir(root, &segments).await?,
    };
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    Ok(response)
}

/// The path below the route, percent-decoded, one segment each: `..`, a
/// decoded `/` or `\`, NUL or text that is not UTF-8 is a bad path; empty
/// and `.` segments are dropped.
fn segments(below: &str) -> Result<Vec<String>, FileRefusal> {
    let mut out = Vec::new();
    for raw in below.split('/') {
        let decoded = percent_decode(raw).ok_or(FileRefusal::BadPath)?;
        if decoded == ".." || decoded.contains(['/', '\\', '\0']) {
            return Err(FileRefusal::BadPath);
        }
        if !decoded.is_empty() && decoded != "." {
            out.push(decoded);
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

type Found = (&'static str, Vec<u8>, String);

fn embedded(path: &str) -> Result<Found, FileRefusal> {
    let (_, content_type, bytes) = PAGE
        .iter()
        .find(|(name, _, _)| *name == path)
        .ok_or(FileRefusal::NotFound)?;
    // The binary's own build: its version and the content's length and
    // a hash name this version of the file.
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes.iter() {
        hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    let etag = format!(
        "\"{}-{:x}-{hash:08x}\"",
        env!("CARGO_PKG_VERSION"),
        bytes.len()
    );
    Ok((content_type, bytes.to_vec(), etag))
}

/// A file under `root`: hidden names are not served, a directory serves
/// its `index.html`, and the resolved path must stay inside `root`.
async fn from_dir(root: &Path, segments: &[String]) -> Result<Found, FileRefusal> {
    if segments.iter().any(|s| s.starts_with('.')) {
        return Err(FileRefusal::NotFound);
    }
    let mut path = inside(root, &root.join(segments.iter().collect::<PathBuf>())).await?;
    let mut meta = tokio::fs::metadata(&path)
        .await
        .map_err(|_| FileRefusal::NotFound)?;
    if meta.is_dir() {
        path = inside(root, &path.join("index.html")).await?;
        meta = tokio::fs::metadata(&path)
            .await
            .map_err(|_| FileRefusal::NotFound)?;
    }
    if !meta.is_file() {
        return Err(FileRefusal::NotFound);
    }
    if meta.len() > MAX_FILE {
        return Err(FileRefusal::TooLarge);
    }
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        warn!(path = %path.display(), error = %e, "static file unreadable");
        FileRefusal::Unreadable
    })?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{:x}-{modified:x}\"", bytes.len());
    Ok((content_type(&path), bytes, etag))
}

/// `path` with every symlink resolved, if it exists and stays in `root`.
async fn inside(root: &Path, path: &Path) -> Result<PathBuf, FileRefusal> {
    let real = tokio::fs::canonicalize(path)
        .await
        .map_err(|_| FileRefusal::NotFound)?;
    if real.starts_with(root) {
        Ok(real)
    } else {
        Err(FileRefusal::Outside)
    }
}

fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        http::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

fn refused(refusal: FileRefusal) -> Response<Body> {
    let body = format!("{} {}\n", refusal.status().as_u16(), refusal.message());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = refusal.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if refusal == FileRefusal::Method {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    secure(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_encoded_separators_are_bad_paths() {
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2e%2fetc",
            "/a%2fb",
            "/a%5cb",
            "/a%00",
            "/%zz",
            "/%c0%ae%c0%ae",
        ] {
            assert_eq!(segments(bad), Err(FileRefusal::BadPath), "{bad}");
        }
        assert_eq!(segments("/a/./b//c%20d").unwrap(), ["a", "b", "c d"]);
    }

    #[test]
    fn the_page_is_embedded_with_its_types() {
        assert!(embedded("index.html").unwrap().0.starts_with("text/html"));
        assert!(embedded("app.js").unwrap().0.starts_with("text/javascript"));
        assert_eq!(embedded("nope.js").unwrap_err(), FileRefusal::NotFound);
    }
}
