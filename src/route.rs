//! The route table: `(host, path) → route`, most specific first. Pure data,
//! no IO.

use std::sync::Arc;

use crate::config::Route;
use crate::names::{ServerName, normalize_host};

/// Routes sorted most specific first: exact host, then wildcard host, then
/// any host; within each, longest path prefix first.
#[derive(Debug)]
pub struct RouteTable<T> {
    entries: Vec<(Route, Arc<T>)>,
}

impl<T> RouteTable<T> {
    /// `attach` builds what each route carries at run time (metric handles).
    pub fn new(routes: &[Route], mut attach: impl FnMut(&Route) -> T) -> Self {
        let mut entries: Vec<(Route, Arc<T>)> = routes
            .iter()
            .map(|r| (r.clone(), Arc::new(attach(r))))
            .collect();
        entries.sort_by_key(|(r, _)| {
            let host_rank = match &r.host {
                Some(ServerName::Wildcard(_)) => 1,
                Some(ServerName::Exact(_)) => 0,
                None => 2,
            };
            (host_rank, std::cmp::Reverse(r.path.len()))
        });
        RouteTable { entries }
    }

    /// The route for a request. `host` is the `Host` header as sent (port
    /// and case are ignored); `path` excludes the query.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<(&Route, &Arc<T>)> {
        let host = host.map(normalize_host);
        self.entries
            .iter()
            .find(|(r, _)| {
                let host_ok = match (&r.host, &host) {
                    (None, _) => true,
                    (Some(pattern), Some(host)) => pattern.matches(host),
                    (Some(_), None) => false,
                };
                host_ok && prefix_matches(&r.path, path)
            })
            .map(|(r, t)| (r, t))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Route, &Arc<T>)> {
        self.entries.iter().map(|(r, t)| (r, t))
    }
}

/// `/echo` matches `/echo` and `/echo/...`, not `/echoes`; `/` matches all.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteKind;

    fn route(name: &str, host: Option<&str>, path: &str) -> Route {
        Route {
            name: name.into(),
            host: host.map(|h| ServerName::parse(h).unwrap()),
            path: path.into(),
            kind: RouteKind::Echo,
            subprotocols: None,
            access: Default::default(),
            compression: None,
        }
    }

    fn table() -> RouteTable<()> {
        RouteTable::new(
            &[
                route("root", None, "/"),
                route("echo", None, "/echo"),
                route("echo-deep", None, "/echo/deep"),
                route("api-echo", Some("api.example.com"), "/echo"),
                route("wild", Some("*.example.com"), "/"),
            ],
            |_| (),
        )
    }

    fn name(host: Option<&str>, path: &str) -> Option<String> {
        table().resolve(host, path).map(|(r, _)| r.name.clone())
    }

    #[test]
    fn most_specific_wins() {
        let cases = [
            (None, "/echo", Some("echo")),
            (Some("localhost:8443"), "/echo/x", Some("echo")),
            (None, "/echo/deep/er", Some("echo-deep")),
            (None, "/echoes", Some("root")),
            (None, "/", Some("root")),
            (Some("API.Example.com:443"), "/echo", Some("api-echo")),
            (Some("api.example.com"), "/other", Some("wild")),
            (Some("x.example.com"), "/echo", Some("wild")),
            (Some("a.b.example.com"), "/echo", Some("echo")),
            (Some("example.com"), "/echo", Some("echo")),
            (Some("[::1]:8443"), "/echo", Some("echo")),
        ];
        for (host, path, want) in cases {
            assert_eq!(
                name(host, path).as_deref(),
                want,
                "host {host:?} path {path}"
            );
        }
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = RouteTable::new(&[route("echo", None, "/echo")], |_| ());
        assert!(t.resolve(None, "/").is_none());
        assert!(t.resolve(None, "/ech").is_none());
        assert!(t.resolve(None, "/echoes").is_none());
        assert!(t.resolve(None, "/echo/").is_some());
    }

    #[test]
    fn host_routes_need_a_host() {
        let t = RouteTable::new(&[route("h", Some("a.test"), "/")], |_| ());
        assert!(t.resolve(None, "/").is_none());
        assert!(t.resolve(Some("b.test"), "/").is_none());
        assert!(t.resolve(Some("a.test."), "/").is_some());
    }
}
