//! Hot reload: certificates and routes change for new connections while
//! every live session keeps running; a config that cannot be applied leaves
//! the running one in place; SIGHUP on the real binary.

mod common;

use std::process::Command;

use common::{Gateway, Route, certs, wait_for_metric, within};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_live_through_a_reload_that_changes_cert_and_routes() {
    within(120, async {
        let gw = Gateway::builder()
            .with_certs(certs(&["localhost"]))
            .start()
            .await;
        let old_ca = gw.certs.ca.clone();

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
        let next = Gateway::builder()
            .with_certs(certs(&["localhost"]))
            .route(Route::echo("/added").name("added"));
        gw.reload(next.config()).await;
        wait_for_metric(&gw, "wsgate_config_reloads_total{result=\"ok\"}", 1.0).await;
        go_tx.send(()).unwrap();

        // New connections see the new certificate and the new route...
        let mut fresh = common::ws_connect(gw.addr, "localhost", "/added", &next.certs().ca)
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
        let gw = Gateway::builder()
            .with_certs(certs(&["localhost"]))
            .start()
            .await;
        let mut ws = gw.ws("/echo").await;

        // A certificate file that is not a certificate.
        let broken = certs(&["localhost"]);
        std::fs::write(
            &broken.cert,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let broken = Gateway::builder()
            .with_certs(broken)
            .route(Route::echo("/never").name("never"));
        gw.reload(broken.config()).await;
        wait_for_metric(&gw, "wsgate_config_reloads_total{result=\"failed\"}", 1.0).await;

        // The old certificate and routes still serve, and the session lives on.
        let mut again = gw.ws("/echo").await;
        again.send(Message::text("still")).await.unwrap();
        assert_eq!(again.next().await.unwrap().unwrap(), Message::text("still"));
        let (status, _) = gw.upgrade("/never").await;
        assert_eq!(status, 404);
        ws.send(Message::text("alive")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("alive"));
    })
    .await
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    within(30, async {
        let old = Gateway::builder().with_certs(certs(&["localhost"]));
        let new = Gateway::builder().with_certs(certs(&["localhost"]));
        let dir = tempfile::tempdir().unwrap();
        let path = old.write_binary_config(dir.path().join("wsgate.toml"));
        let (mut child, addr, _admin, logs) = common::start_binary(&path);
        let mut ws = common::ws_connect(addr, "localhost", "/echo", &old.certs().ca)
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
            common::tls_connect(addr, "localhost", &old.certs().ca)
                .await
                .is_ok()
        );

        // A valid one with a new certificate: applied.
        new.write_binary_config(&path);
        assert!(hup(child.id()).success());
        while !logs
            .recv()
            .unwrap()
            .contains("reloaded certificates and routes")
        {}
        assert!(
            common::ws_connect(addr, "localhost", "/echo", &new.certs().ca)
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
