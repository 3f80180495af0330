//! Metrics as operators see them: exact counters after known traffic,
//! gauges back to their baseline, `promtool check metrics` on a real scrape,
//! and a real Prometheus server scraping wsgate.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::backend::Backend;
use common::{Gateway, Route, close, metric, next_data, wait_for_metric, within};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

async fn echo_back(ws: &mut common::Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(next_data(ws).await, msg);
}

#[tokio::test]
async fn counters_are_exact_and_gauges_return_to_zero() {
    within(20, async {
        let backend = Backend::plain().await;
        let gw = Gateway::builder()
            .route(Route::echo("/metered").name("metered"))
            .route(
                Route::upstream("/relay", [format!("ws://{}", backend.addr)]).name("metered-relay"),
            )
            .start()
            .await;
        let mut a = gw.ws("/metered").await;
        let mut b = gw.ws("/metered").await;
        let mut r = gw.ws("/relay").await;
        wait_for_metric(
            &gw,
            "wsgate_connections_active{route=\"metered\",kind=\"echo\"}",
            2.0,
        )
        .await;
        wait_for_metric(
            &gw,
            "wsgate_connections_active{route=\"metered-relay\",kind=\"upstream\"}",
            1.0,
        )
        .await;
        echo_back(&mut a, Message::text("hello")).await; // 5 bytes
        echo_back(&mut a, Message::binary(vec![0u8; 10])).await; // 10
        echo_back(&mut b, Message::text("")).await; // 0
        echo_back(&mut r, Message::text("four")).await; // 4
        echo_back(&mut r, Message::binary(vec![1u8; 6])).await; // 6
        close(a).await;
        close(b).await;
        close(r).await;
        // The gauges come back to exactly zero once the sessions have ended.
        wait_for_metric(
            &gw,
            "wsgate_connections_active{route=\"metered\",kind=\"echo\"}",
            0.0,
        )
        .await;
        wait_for_metric(
            &gw,
            "wsgate_connections_active{route=\"metered-relay\",kind=\"upstream\"}",
            0.0,
        )
        .await;

        let (_, scrape) = gw.admin_get("/metrics").await;
        for (series, value) in [
            (
                "wsgate_connections_total{route=\"metered\",kind=\"echo\"}",
                2.0,
            ),
            (
                "wsgate_messages_total{route=\"metered\",direction=\"client_to_upstream\"}",
                3.0,
            ),
            (
                "wsgate_messages_total{route=\"metered\",direction=\"upstream_to_client\"}",
                3.0,
            ),
            (
                "wsgate_bytes_total{route=\"metered\",direction=\"client_to_upstream\"}",
                15.0,
            ),
            (
                "wsgate_bytes_total{route=\"metered\",direction=\"upstream_to_client\"}",
                15.0,
            ),
            (
                "wsgate_sessions_ended_total{route=\"metered\",reason=\"client_closed\"}",
                2.0,
            ),
            (
                "wsgate_session_duration_seconds_count{route=\"metered\"}",
                2.0,
            ),
            (
                "wsgate_connections_total{route=\"metered-relay\",kind=\"upstream\"}",
                1.0,
            ),
            (
                "wsgate_messages_total{route=\"metered-relay\",direction=\"client_to_upstream\"}",
                2.0,
            ),
            (
                "wsgate_messages_total{route=\"metered-relay\",direction=\"upstream_to_client\"}",
                2.0,
            ),
            (
                "wsgate_bytes_total{route=\"metered-relay\",direction=\"client_to_upstream\"}",
                10.0,
            ),
            (
                "wsgate_bytes_total{route=\"metered-relay\",direction=\"upstream_to_client\"}",
                10.0,
            ),
            (
                "wsgate_upstream_connect_seconds_count{route=\"metered-relay\"}",
                1.0,
            ),
            ("wsgate_build_info{version=\"0.1.0\"}", 1.0),
        ] {
            assert_eq!(
                metric(&scrape, series),
                Some(value),
                "{series} in\n{scrape}"
            );
        }
        assert!(
            metric(
                &scrape,
                "wsgate_tls_cert_not_after_seconds{sni=\"default\"}"
            )
            .unwrap()
                > 1.7e9
        );
        assert!(metric(&scrape, "process_resident_memory_bytes").unwrap() > 0.0);
        assert!(metric(&scrape, "process_open_fds").unwrap() > 0.0);
    })
    .await
}

/// Is `tool` on PATH? `scripts/test` installs Prometheus' tools; running
/// `cargo test` alone without them fails here with this message.
fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        found,
        "{tool} is not installed: run scripts/test, which installs Debian's prometheus package"
    );
}

#[tokio::test]
async fn promtool_accepts_a_real_scrape() {
    within(20, async {
        require("promtool");
        let gw = Gateway::builder().start().await;
        let mut ws = gw.ws("/echo").await;
        echo_back(&mut ws, Message::text("x")).await;
        let _ = gw.upgrade("/nowhere").await;
        let (status, scrape) = gw.admin_get("/metrics").await;
        assert_eq!(status, 200);
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}\nscrape:\n{scrape}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
}

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_wsgate() {
    within(90, async {
        require("prometheus");
        let gw = Gateway::builder()
            .route(Route::echo("/scraped").name("scraped"))
            .start()
            .await;
        let mut ws = gw.ws("/scraped").await;
        echo_back(&mut ws, Message::text("count me")).await;

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wsgate\n    static_configs:\n      - targets: [\"{}\"]\n",
                gw.admin_addr
            ),
        )
        .unwrap();
        // Prometheus binds a port of its own choosing (port 0) and logs it.
        let mut prometheus = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = prometheus.stderr.take().unwrap();
        let _prometheus = Killed(prometheus);
        let addr = tokio::task::spawn_blocking(move || listening_on(log))
            .await
            .unwrap();
        // Ask its query API until the series is there: Prometheus scrapes
        // every second, so this polls at a bounded pace.
        let query = "/api/v1/query?query=wsgate_connections_total%7Broute%3D%22scraped%22%7D";
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let body = loop {
            tick.tick().await;
            let get = common::request(http::Method::GET, addr, query)
                .body(Default::default())
                .unwrap();
            let Ok((status, body)) = common::try_http(addr, get).await else {
                continue;
            };
            if status == 200 && body.contains("\"scraped\"") {
                break body;
            }
        };
        let answer: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
        let series = &answer["data"]["result"][0];
        assert_eq!(series["metric"]["__name__"], "wsgate_connections_total");
        assert_eq!(series["metric"]["kind"], "echo");
        assert_eq!(series["value"][1], "1");
    })
    .await
}

/// The address in Prometheus' `msg="Listening on" address=...` log line
/// (the rest of its log is drained so it never blocks on a full pipe).
fn listening_on(log: std::process::ChildStderr) -> std::net::SocketAddr {
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(log));
    let addr = loop {
        let line = lines
            .next()
            .expect("prometheus logs where it listens")
            .unwrap();
        if line.contains("msg=\"Listening on\"") {
            let addr = line.split("address=").nth(1).unwrap();
            break addr.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    addr
}
