//! RFC 6455 conformance: the Autobahn|Testsuite `fuzzingclient` (all 517
//! cases) against (a) the echo route over wss and (b) an upstream route whose
//! backend is a conformant tokio-tungstenite echo server. Fails on any case
//! not run, and on any result other than OK, NON-STRICT or INFORMATIONAL.
//! Both routes run with `compression = "on"`, so the permessage-deflate
//! cases (12.*, 13.*) are held to the same: on the relay, whose backend
//! has no permessage-deflate, the gateway inflates what the client
//! compressed and compresses the echoes.
//!
//! `scripts/test` installs `wstest` (Python 2.7 from pyenv) into
//! `target/autobahn` and sets `WSGATE_WSTEST`; without it this test fails
//! with that instruction.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Gateway, Route, within};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

const AGENTS: [(&str, &str); 2] = [("wsgate-echo", "/echo"), ("wsgate-relay", "/relay")];

/// The conformant backend behind the relay route.
async fn echo_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_fuzzingclient_passes_on_echo_and_relay() {
    let wstest = std::env::var("WSGATE_WSTEST").unwrap_or_else(|_| {
        panic!("WSGATE_WSTEST is not set: run scripts/test, which installs the Autobahn|Testsuite")
    });
    within(1500, async {
        let backend = echo_backend().await;
        // 16 MiB messages (cases 9.1.6, 9.2.6) must fit; no gateway pings or
        // idle closes to interleave with the cases.
        let gw = Gateway::builder()
            .limits(|l| {
                l.set("max_message_size", "17MiB")
                    .set("max_frame_size", "17MiB")
                    .set("ping_interval", "off")
                    .set("idle_timeout", "off")
                    .set("close_timeout", "2s")
            })
            // permessage-deflate on both (12.*, 13.* run on both), with
            // context kept where the client lets it.
            .route(
                Route::upstream("/relay", [format!("ws://{backend}")])
                    .key("compression", "on")
                    .key("compression_context_takeover", true),
            )
            .route(Route::echo("/echo").key("compression", "on").key("compression_context_takeover", true))
            .start()
            .await;

        // One wstest per agent, side by side (each is one Python process).
        // `WSGATE_AUTOBAHN_CASES` ("12.*,13.*") runs some cases only.
        let cases: Vec<String> = std::env::var("WSGATE_AUTOBAHN_CASES")
            .map(|c| c.split(',').map(str::to_owned).collect())
            .unwrap_or_else(|_| vec!["*".to_owned()]);
        let dir = tempfile::tempdir().unwrap();
        let runs = AGENTS.iter().map(|(agent, path)| {
            let outdir = dir.path().join(agent);
            let spec = serde_json::json!({
                "outdir": outdir,
                "servers": [{"agent": agent, "url": format!("wss://127.0.0.1:{}{path}", gw.addr.port())}],
                "cases": cases,
                "exclude-cases": [],
                "exclude-agent-cases": {},
            });
            let spec_path = dir.path().join(format!("{agent}.json"));
            std::fs::write(&spec_path, spec.to_string()).unwrap();
            let run = tokio::process::Command::new(&wstest)
                .args(["-m", "fuzzingclient", "-s"])
                .arg(&spec_path)
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .output();
            async move {
                // Some cases have no timer of their own: bound the whole run here.
                let out = tokio::time::timeout(Duration::from_secs(1200), run)
                    .await
                    .unwrap_or_else(|_| panic!("wstest for {agent} finished within 20 minutes"))
                    .expect("wstest runs");
                assert!(out.status.success(), "wstest failed: {}", String::from_utf8_lossy(&out.stderr));
                let index = std::fs::read_to_string(outdir.join("index.json")).expect("index.json");
                serde_json::from_str::<serde_json::Value>(&index).unwrap()
            }
        });
        let indexes = futures_util::future::join_all(runs).await;
        let mut index = serde_json::Map::new();
        for one in indexes {
            index.extend(one.as_object().cloned().unwrap_or_default());
        }
        let index = serde_json::Value::Object(index);
        let cases_all = cases == ["*"];
        let mut failures = Vec::new();
        for (agent, _) in AGENTS {
            let cases = index[agent].as_object().unwrap_or_else(|| panic!("no results for {agent}"));
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            let mut non_strict = Vec::new();
            for (case, result) in cases {
                let behavior = result["behavior"].as_str().unwrap_or("MISSING");
                let close = result["behaviorClose"].as_str().unwrap_or("MISSING");
                *tally.entry(behavior.to_owned()).or_default() += 1;
                if behavior == "NON-STRICT" {
                    non_strict.push(case.clone());
                }
                let ok = matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL") && matches!(close, "OK" | "INFORMATIONAL");
                if !ok {
                    failures.push(format!("{agent} {case}: behavior {behavior}, close {close}"));
                }
            }
            println!("autobahn {agent}: {} cases: {tally:?}; NON-STRICT: {non_strict:?}", cases.len());
            if cases_all {
                assert_eq!(cases.len(), 517, "{agent}: every case ran");
            }
        }
        assert!(failures.is_empty(), "{} non-conformant cases:\n{}", failures.len(), failures.join("\n"));
    })
    .await
}
