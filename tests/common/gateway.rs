//! The gateway under test, built like linkerd's `server::http1().route(..).run()`:
//! `Gateway::builder().route(..).limits(..).start().await` writes its config
//! as a TOML value (the documented keys of config/wsgate.toml, never the
//! Rust config types), loads it through `Config::load` and runs it on
//! 127.0.0.1:0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use toml::{Table, Value};
use wsgate::{Config, ConfigSource, Listeners};

use super::{Certs, certs};

/// The keys of one config table (`[limits]`, `[hub]`, ...), as documented.
#[derive(Clone, Debug, Default)]
pub struct Section(Table);

impl Section {
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Section {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// A nested table (`[hub.backplane]` is `hub(|h| h.table("backplane", ..))`).
    pub fn table(self, key: &str, keys: impl FnOnce(Section) -> Section) -> Section {
        let Section(table) = keys(Section::default());
        self.set(key, Value::Table(table))
    }
}

/// A file path as a config value.
pub fn path(p: &Path) -> Value {
    Value::from(p.to_str().expect("a UTF-8 path"))
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct Route(Table);

impl Route {
    /// A route of any kind, its keys added with `key`.
    pub fn new_kind(kind: &str, path: &str) -> Route {
        Route::new(kind, path)
    }

    fn new(kind: &str, path: &str) -> Route {
        let mut table = Table::new();
        table.insert("path".into(), path.into());
        table.insert("kind".into(), kind.into());
        Route(table)
    }

    pub fn echo(path: &str) -> Route {
        Route::new("echo", path)
    }

    pub fn hub(path: &str) -> Route {
        Route::new("hub", path)
    }

    /// An upstream route to a pool of member URLs.
    pub fn upstream<M: ToString>(path: &str, members: impl IntoIterator<Item = M>) -> Route {
        let members: Vec<String> = members.into_iter().map(|m| m.to_string()).collect();
        Route::new("upstream", path).key("upstreams", members)
    }

    /// The route's name (its metric label; the path when unnamed).
    pub fn name(self, name: &str) -> Route {
        self.key("name", name)
    }

    pub fn key(mut self, key: &str, value: impl Into<Value>) -> Route {
        self.0.insert(key.to_owned(), value.into());
        self
    }
}

/// A gateway config being built. Every gateway has the default certificate
/// (made for the test unless `with_certs` gives one) and, after the routes
/// added here, an echo route on `/echo` (unless one of them is on `/echo`).
pub struct Gateway {
    certs: Certs,
    /// Default certificate and key files other than `certs`' own.
    tls_files: Option<(PathBuf, PathBuf)>,
    sections: Table,
    sni: Vec<Value>,
    routes: Vec<Route>,
}

impl Gateway {
    pub fn builder() -> Gateway {
        Gateway {
            certs: certs(&["localhost", "127.0.0.1"]),
            tls_files: None,
            sections: Table::new(),
            sni: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// Serve this certificate (the gateway keeps it, and its directory).
    pub fn with_certs(mut self, certs: Certs) -> Gateway {
        self.certs = certs;
        self
    }

    /// Name these files as `tls.cert` and `tls.key` (a test that checks
    /// what the gateway makes of them keeps them).
    pub fn tls_files(mut self, cert: &Path, key: &Path) -> Gateway {
        self.tls_files = Some((cert.to_owned(), key.to_owned()));
        self
    }

    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    pub fn route(mut self, route: Route) -> Gateway {
        self.routes.push(route);
        self
    }

    /// A `[[tls.sni]]` certificate for `host` (the test keeps `certs`).
    pub fn sni(mut self, host: &str, certs: &Certs) -> Gateway {
        let entry = Section::default()
            .set("host", host)
            .set("cert", path(&certs.cert))
            .set("key", path(&certs.key));
        self.sni.push(Value::Table(entry.0));
        self
    }

    pub fn limits(self, keys: impl FnOnce(Section) -> Section) -> Gateway {
        self.section("limits", keys)
    }

    pub fn hub(self, keys: impl FnOnce(Section) -> Section) -> Gateway {
        self.section("hub", keys)
    }

    pub fn listen(self, keys: impl FnOnce(Section) -> Section) -> Gateway {
        self.section("listen", keys)
    }

    /// `[tls]` keys besides the certificate (`client_ca`, `client_auth`).
    pub fn tls(self, keys: impl FnOnce(Section) -> Section) -> Gateway {
        self.section("tls", keys)
    }

    /// A `[[tls.sni]]` entry with more keys than `sni` sets.
    pub fn sni_with(
        mut self,
        host: &str,
        certs: &Certs,
        keys: impl FnOnce(Section) -> Section,
    ) -> Gateway {
        let entry = keys(
            Section::default()
                .set("host", host)
                .set("cert", path(&certs.cert))
                .set("key", path(&certs.key)),
        );
        self.sni.push(Value::Table(entry.0));
        self
    }

    pub fn admin(self, keys: impl FnOnce(Section) -> Section) -> Gateway {
        self.section("admin", keys)
    }

    /// CONNECT tunnels on (`listen.connect_tunnel`), with these `[tunnel]` keys.
    pub fn tunnel(self, keys: impl FnOnce(Section) -> Section) -> Gateway {
        self.listen(|l| l.set("connect_tunnel", true))
            .section("tunnel", keys)
    }

    fn section(mut self, name: &str, keys: impl FnOnce(Section) -> Section) -> Gateway {
        let current = match self.sections.remove(name) {
            Some(Value::Table(t)) => t,
            _ => Table::new(),
        };
        let Section(table) = keys(Section(current));
        self.sections.insert(name.to_owned(), Value::Table(table));
        self
    }

    /// The config as TOML text, serialised from a structured value.
    pub fn toml(&self) -> String {
        toml::to_string(&self.document()).expect("a TOML table serialises")
    }

    fn document(&self) -> Table {
        let mut doc = self.sections.clone();
        let (cert, key) = match &self.tls_files {
            Some((cert, key)) => (cert, key),
            None => (&self.certs.cert, &self.certs.key),
        };
        let keys = match doc.remove("tls") {
            Some(Value::Table(keys)) => Section(keys),
            _ => Section::default(),
        };
        let mut tls = keys.set("cert", path(cert)).set("key", path(key));
        if !self.sni.is_empty() {
            tls = tls.set("sni", self.sni.clone());
        }
        doc.insert("tls".into(), Value::Table(tls.0));
        // The default echo route, unless a test gave `/echo` its own keys.
        let echo = Route::echo("/echo");
        let has_echo = self
            .routes
            .iter()
            .any(|r| r.0.get("path") == echo.0.get("path"));
        let routes = self
            .routes
            .iter()
            .chain((!has_echo).then_some(&echo))
            .map(|r| Value::Table(r.0.clone()))
            .collect::<Vec<_>>();
        doc.insert("routes".into(), Value::Array(routes));
        doc
    }

    /// The config, loaded through the gateway's public API.
    pub fn config(&self) -> Config {
        let text = self.toml();
        Config::load(ConfigSource::Text(&text), Some(HashMap::new()))
            .unwrap_or_else(|e| panic!("test config is valid: {e}\n{text}"))
    }

    /// Write the config for the real binary to `file`: both listeners on
    /// loopback, port 0, unless `listen`/`admin` set their `addr`.
    pub fn write_binary_config(&self, file: impl Into<PathBuf>) -> PathBuf {
        let mut doc = self.document();
        for listener in ["listen", "admin"] {
            let table = doc
                .entry(listener)
                .or_insert_with(|| Value::Table(Table::new()));
            table
                .as_table_mut()
                .unwrap()
                .entry("addr")
                .or_insert_with(|| "127.0.0.1:0".into());
        }
        let file = file.into();
        std::fs::write(&file, toml::to_string(&doc).unwrap()).unwrap();
        file
    }

    /// Run the gateway on 127.0.0.1:0 (public and admin listeners bound
    /// before this returns, so clients can connect at once).
    pub async fn start(self) -> Running {
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.start_on(public).await
    }

    /// Run the gateway on this public listener (a restart on the port a
    /// stopped gateway had).
    pub async fn start_on(self, public: TcpListener) -> Running {
        let config = self.config();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let (reloads, reloads_rx) = mpsc::channel(1);
        let stopped = async {
            let _ = stopped.await;
        };
        let join = tokio::spawn(wsgate::run_with_reload(
            Listeners { public, admin },
            config,
            wsgate::metrics::install(),
            stopped,
            reloads_rx,
        ));
        Running {
            addr,
            admin_addr,
            certs: self.certs,
            shutdown: Some(shutdown),
            reloads,
            join,
        }
    }
}

/// A running gateway: its addresses, its certificates, and handles to stop
/// it, reload it and wait for it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub certs: Certs,
    shutdown: Option<oneshot::Sender<()>>,
    reloads: mpsc::Sender<Config>,
    /// `run()`'s result.
    pub join: JoinHandle<Result<(), wsgate::Error>>,
}

impl Running {
    /// A handle on a gateway running elsewhere (the real binary), for the
    /// same client helpers. It cannot be stopped or reloaded through this.
    pub fn attach(addr: SocketAddr, admin_addr: SocketAddr, certs: &Certs) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::copy(&certs.ca, &ca).unwrap();
        let (reloads, _) = mpsc::channel(1);
        Running {
            addr,
            admin_addr,
            certs: Certs {
                ca,
                cert: certs.cert.clone(),
                key: certs.key.clone(),
                dir,
            },
            shutdown: None,
            reloads,
            join: tokio::spawn(async { Ok(()) }),
        }
    }

    /// Trigger shutdown (as SIGTERM does) without waiting.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Hand the gateway a new config, as SIGHUP does.
    pub async fn reload(&self, config: Config) {
        self.reloads.send(config).await.expect("the gateway runs");
    }
}
