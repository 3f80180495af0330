//! Static routes: the built-in chat page with its security headers, and an
//! operator's directory that never serves a listing or anything outside
//! itself (`..`, encoded traversal, symlinks out).

mod common;

use common::*;

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_built_in_page_is_served_with_strict_headers() {
    within(20, async {
        let gw = Gateway::builder()
            .route(Route::new_kind("static", "/"))
            .start()
            .await;
        let page = gw.raw(get("/", "").as_bytes()).await;
        assert_eq!(status_of(&page), 200, "{page}");
        assert_eq!(header(&page, "content-type"), Some("text/html; charset=utf-8"));
        let csp = header(&page, "content-security-policy").unwrap();
        for part in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(part), "{csp}");
        }
        assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&page, "x-frame-options"), Some("DENY"));
        assert!(page.contains("<script src=\"app.js\""), "{page}");
        let js = gw.raw(get("/app.js", "").as_bytes()).await;
        assert_eq!(header(&js, "content-type"), Some("text/javascript; charset=utf-8"));
        // Revalidation with the ETag: 304, no body.
        let etag = header(&js, "etag").unwrap();
        let again = gw.raw(get("/app.js", &format!("If-None-Match: {etag}\r\n")).as_bytes()).await;
        assert_eq!(status_of(&again), 304, "{again}");
        let head = gw.raw(b"HEAD /style.css HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&head), 200);
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let post = gw.raw(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&post), 405);
        assert_eq!(header(&post, "allow"), Some("GET, HEAD"));
        assert_eq!(status_of(&gw.raw(get("/missing.js", "").as_bytes()).await), 404);
        // A WebSocket upgrade that only the page's catch-all matches: 404;
        // the echo route beside it still upgrades.
        let (status, _) = gw.upgrade("/nowhere").await;
        assert_eq!(status, 404);
        let _ws = gw.ws("/echo").await;
    })
    .await;
}

#[tokio::test]
async fn a_directory_serves_files_and_nothing_outside() {
    within(20, async {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        let site = tempfile::tempdir().unwrap();
        let root = site.path();
        std::fs::write(root.join("index.html"), "<p>home</p>").unwrap();
        std::fs::create_dir(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.css"), "p{}").unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        std::fs::write(root.join(".env"), "KEY=1").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("leak.txt"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("docs/a.css"), root.join("ok.css")).unwrap();
        let gw = Gateway::builder()
            .route(Route::new_kind("static", "/site").key("dir", path(root)))
            .start()
            .await;
        let ok = |path: &'static str, body: &'static str, kind: &'static str| {
            let gw = &gw;
            async move {
                let r = gw.raw(get(path, "").as_bytes()).await;
                assert_eq!(status_of(&r), 200, "{path}: {r}");
                assert!(r.ends_with(body), "{path}: {r}");
                assert_eq!(header(&r, "content-type"), Some(kind), "{path}");
            }
        };
        ok("/site/", "<p>home</p>", "text/html; charset=utf-8").await;
        ok("/site", "<p>home</p>", "text/html; charset=utf-8").await;
        ok("/site/docs/a.css", "p{}", "text/css; charset=utf-8").await;
        ok("/site/ok.css", "p{}", "text/css; charset=utf-8").await;
        let status = |path: String| {
            let gw = &gw;
            async move {
                let r = gw.raw(get(&path, "").as_bytes()).await;
                assert!(!r.contains("secret"), "{path}: {r}");
                status_of(&r)
            }
        };
        assert_eq!(status("/site/empty/".into()).await, 404, "no listing");
        assert_eq!(status("/site/.env".into()).await, 404, "hidden files");
        assert_eq!(status("/site/../Cargo.toml".into()).await, 400);
        assert_eq!(status("/site/docs/../../x".into()).await, 400);
        assert_eq!(status("/site/%2e%2e/secret.txt".into()).await, 400);
        assert_eq!(status("/site/docs%2f..%2f..%2fx".into()).await, 400);
        assert_eq!(status("/site/..%5c..%5cx".into()).await, 400);
        assert_eq!(status("/site/leak.txt".into()).await, 403, "symlink out");
        assert_eq!(
            status("/site/out/secret.txt".into()).await,
            403,
            "symlinked dir out"
        );
        let scrape = gw.admin_get("/metrics").await.1;
        let outside = metric(&scrape, "wsgate_static_requests_total{result=\"outside\"}");
        assert!(outside >= Some(2.0), "{outside:?}");
    })
    .await;
}

#[test]
fn a_missing_directory_is_a_config_error_naming_the_key() {
    let text = "[[routes]]\npath = \"/\"\nkind = \"static\"\ndir = \"/no/such/dir\"\n";
    let err = wsgate::Config::load(wsgate::ConfigSource::Text(text), Some(Default::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("routes[0].dir"), "{err}");
}

#[test]
fn access_keys_on_a_static_route_are_refused_not_ignored() {
    // Files are served before any upgrade, so origins, tokens and client
    // certificates would protect nothing there.
    let text = "[[routes]]\npath = \"/\"\nkind = \"static\"\nclient_cert = true\n";
    let err = wsgate::Config::load(wsgate::ConfigSource::Text(text), Some(Default::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("routes[0].client_cert"), "{err}");
}
