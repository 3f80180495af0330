//! Hot reload: certificates and routes change for new connections while
//! every live session keeps running; a config that cannot be applied leaves
//! the running one in place; SIGHUP on the real binary.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{certs, config_text, start_with, wait_for_metric, within};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate::{Config, ConfigSource};

fn config(text: &str) -> Config {
    Config::load(ConfigSource::Text(text), Some(HashMap::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_live_through_a_reload_that_changes_cert_and_routes() {
    within(120, async {
        let old = certs(&["localhost"]);
        let new = certs(&["localhost"]);
        let old_ca = old.ca.clone();
        let text = config_text(&old, "", "");
        let gw = start_with(old, &text).await;

        // 200 sessions, each echoing 40 numbered messages, one at a time.
        const SESSIONS: usize = 200;
        const MESSAGES: usize = 40;
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            sessions.push(
                common::ws_connect(gw.addr, "localhost", "/echo", &old_ca)
                    .await
                    .unwrap(),
            );
        }
        let (halfway_tx, mut halfway_rx) = tokio::sync::mpsc::channel::<()>(SESSIONS);
        let (go_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        for (i, mut ws) in sessions.into_iter().enumerate() {
            let (halfway, mut go) = (halfway_tx.clone(), go_tx.subscribe());
            tasks.push(tokio::spawn(async move {
                for n in 0..MESSAGES {
                    if n == MESSAGES / 2 {
                        // Everyone waits here while the reload happens.
                        halfway.send(()).await.unwrap();
                        go.recv().await.unwrap();
                    }
                    let text = format!("{i}:{n}");
                    ws.send(Message::text(text.clone())).await.unwrap();
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) => {
                                assert_eq!(
                                    t.as_str(),
                                    text,
                                    "session {i} lost or reordered a message"
                                );
                                break;
                            }
                            Some(Ok(_)) => continue,
                            other => panic!("session {i} dropped at message {n}: {other:?}"),
                        }
                    }
                }
                ws.close(None).await.unwrap();
            }));
        }
        for _ in 0..SESSIONS {
            halfway_rx.recv().await.unwrap();
        }

        // Reload: a new certificate, and a new route.
        let extra = "[[routes]]\nname = \"added\"\npath = \"/added\"\nkind = \"echo\"\n";
        gw.reload
            .send(config(&config_text(&new, "", extra)))
            .await
            .unwrap();
        wait_for_metric(&gw, "wsgate_config_reloads_total{result=\"ok\"}", 1.0).await;
        go_tx.send(()).unwrap();

        // New connections see the new certificate and the new route...
        let mut fresh = common::ws_connect(gw.addr, "localhost", "/added", &new.ca)
            .await
            .unwrap();
        fresh.send(Message::text("new")).await.unwrap();
        assert_eq!(fresh.next().await.unwrap().unwrap(), Message::text("new"));
        assert!(
            common::tls_connect(gw.addr, "localhost", &old_ca)
                .await
                .is_err(),
            "the old certificate is gone"
        );
        // ...while every old session finishes all its messages.
        for task in tasks {
            task.await.expect("no session was dropped");
        }
    })
    .await
}

#[tokio::test]
async fn a_reload_that_cannot_be_applied_keeps_the_running_config() {
    within(20, async {
        let good = certs(&["localhost"]);
        let text = config_text(&good, "", "");
        let gw = start_with(good, &text).await;
        let mut ws = gw.ws("/echo").await;

        // A certificate file that is not a certificate.
        let broken = certs(&["localhost"]);
        std::fs::write(
            &broken.cert,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let extra = "[[routes]]\nname = \"never\"\npath = \"/never\"\nkind = \"echo\"\n";
        gw.reload
            .send(config(&config_text(&broken, "", extra)))
            .await
            .unwrap();
        wait_for_metric(&gw, "wsgate_config_reloads_total{result=\"failed\"}", 1.0).await;

        // The old certificate and routes still serve, and the session lives on.
        let mut again = gw.ws("/echo").await;
        again.send(Message::text("still")).await.unwrap();
        assert_eq!(again.next().await.unwrap().unwrap(), Message::text("still"));
        let never = gw
            .raw(common::upgrade_request("/never", "").as_bytes())
            .await;
        assert_eq!(common::status_of(&never), 404);
        ws.send(Message::text("alive")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("alive"));
    })
    .await
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    within(30, async {
        let old = certs(&["localhost"]);
        let new = certs(&["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wsgate.toml");
        let with_addrs = |text: String| {
            format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n{text}")
        };
        std::fs::write(&path, with_addrs(config_text(&old, "", ""))).unwrap();
        let (mut child, addr, _admin, logs) = common::start_binary(&path);
        let mut ws = common::ws_connect(addr, "localhost", "/echo", &old.ca)
            .await
            .unwrap();

        // An invalid file: refused, logged, nothing changes.
        std::fs::write(&path, "[listen]\nbogus = 1\n").unwrap();
        let hup = |pid: u32| {
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
        };
        assert!(hup(child.id()).success());
        while !logs.recv().unwrap().contains("reload refused") {}
        assert!(
            common::tls_connect(addr, "localhost", &old.ca)
                .await
                .is_ok()
        );

        // A valid one with a new certificate: applied.
        std::fs::write(&path, with_addrs(config_text(&new, "", ""))).unwrap();
        assert!(hup(child.id()).success());
        while !logs
            .recv()
            .unwrap()
            .contains("reloaded certificates and routes")
        {}
        assert!(
            common::ws_connect(addr, "localhost", "/echo", &new.ca)
                .await
                .is_ok()
        );
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
        let _ = child.kill();
        let _ = child.wait();
    })
    .await
}
