//! The Redis backplane's connection: TLS with the operator's own CA, an
//! ACL user with a password, a database number; the password never in
//! what wsgate prints.

mod common;

use common::hub::{json_client, next_json, send_json, subscribe};
use common::{Gateway, Redis, Route, Running, wait_for_readyz, within};
use serde_json::json;

/// Two nodes of `gateway`, once both have joined the hub over Redis.
async fn two_nodes(gateway: impl Fn() -> Gateway) -> (Running, Running) {
    let (a, b) = (gateway().start().await, gateway().start().await);
    wait_for_readyz(&a, "ready").await;
    wait_for_readyz(&b, "ready").await;
    (a, b)
}

/// A node on the TLS Redis as user `app` in database 3.
fn node(url: &str, ca: &std::path::Path) -> Gateway {
    Gateway::builder()
        .hub(|h| {
            h.table("backplane", |b| {
                b.set("kind", "redis")
                    .set("url", url)
                    .set("tls_ca", common::path(ca))
            })
        })
        .route(Route::hub("/hub").name("hub"))
}

#[tokio::test]
async fn nodes_share_a_hub_over_tls_as_an_acl_user_in_a_numbered_database() {
    within(60, async {
        let certs = common::certs(&["localhost"]);
        let tls =
            |flag: &str, path: &std::path::Path| [flag.to_owned(), path.display().to_string()];
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(tls("--tls-cert-file", &certs.cert));
        args.extend(tls("--tls-key-file", &certs.key));
        args.extend(tls("--tls-ca-cert-file", &certs.ca));
        args.extend(["--user", "default", "off"].map(str::to_owned));
        args.extend(["--user", "app", "on", ">s3cret", "~*", "&*", "+@all"].map(str::to_owned));
        let Some(redis) = Redis::start_with(args) else {
            return;
        };
        let url = format!("rediss://app:s3cret@localhost:{}/3", redis.port);
        let (a, b) = two_nodes(|| node(&url, &certs.ca)).await;
        let mut bob = json_client(&b, "/hub", "bob").await;
        assert_eq!(subscribe(&mut bob, "c", 1).await["type"], "ack");
        let mut ann = json_client(&a, "/hub", "ann").await;
        send_json(
            &mut ann,
            json!({"type": "publish", "channel": "c", "id": 2, "data": "hi"}),
        )
        .await;
        let ack = next_json(&mut ann).await;
        assert_eq!(
            (ack["type"].as_str(), ack["seq"].as_u64()),
            (Some("ack"), Some(1))
        );
        let msg = next_json(&mut bob).await;
        assert_eq!(
            (msg["data"].as_str(), msg["from"].as_str()),
            (Some("hi"), Some("ann"))
        );

        // The wrong password: the node serves alone, and says so.
        let wrong = format!("rediss://app:wrong@localhost:{}/3", redis.port);
        let c = node(&wrong, &certs.ca).start().await;
        // Starting (503) until its first attempt has failed, then degraded
        // (200): it serves its own clients and keeps trying.
        wait_for_readyz(&c, "degraded").await;
    })
    .await
}

/// One inline command to the Redis on `port`; its first reply line.
async fn redis_command(port: u16, command: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("Redis accepts");
    tcp.write_all(format!("{command}\r\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(tcp).read_line(&mut line).await.unwrap();
    line
}

fn plain_node(redis: &Redis) -> Gateway {
    Gateway::builder()
        .hub(|h| {
            h.table("backplane", |b| {
                b.set("kind", "redis").set("url", redis.url())
            })
        })
        .route(Route::hub("/hub").name("hub"))
}

#[tokio::test]
async fn redis_losing_messages_a_node_saw_starts_a_new_epoch_and_subscribers_hear_of_the_gap() {
    within(60, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let (a, b) = two_nodes(|| plain_node(&redis)).await;
        let mut bob = json_client(&b, "/hub", "bob").await;
        let first_epoch = subscribe(&mut bob, "c", 1).await["epoch"].clone();
        let mut al = json_client(&a, "/hub", "al").await;
        assert_eq!(subscribe(&mut al, "c", 1).await["epoch"], first_epoch);
        let mut ann = json_client(&a, "/hub", "ann").await;
        for n in 1..=5 {
            send_json(
                &mut ann,
                json!({"type": "publish", "channel": "c", "id": n, "data": n}),
            )
            .await;
            assert_eq!(next_json(&mut ann).await["seq"], n);
            assert_eq!(next_json(&mut bob).await["seq"], n);
            assert_eq!(next_json(&mut al).await["seq"], n);
        }
        // As after a failover to a replica that missed the last writes:
        // Redis's head goes back to 2, and every node reconnects.
        assert_eq!(
            redis_command(redis.port, "HSET wsgate:{c}:m s 2").await,
            ":0\r\n"
        );
        redis_command(redis.port, "CLIENT KILL TYPE pubsub").await;
        // Subscribers on both nodes hear of the gap, in one new epoch:
        // never seq 3..5 again in the old one.
        let notice = next_json(&mut bob).await;
        assert_eq!(
            (notice["type"].as_str(), notice["code"].as_str()),
            (Some("error"), Some("gap")),
            "{notice}"
        );
        assert_ne!(notice["epoch"], first_epoch);
        assert_eq!(notice["seq"], 0);
        // Once Al has heard it too, node A follows Redis again.
        assert_eq!(next_json(&mut al).await, notice);
        send_json(
            &mut ann,
            json!({"type": "publish", "channel": "c", "id": 6, "data": 6}),
        )
        .await;
        let ack = next_json(&mut ann).await;
        assert_eq!(
            (ack["seq"].as_u64(), &ack["epoch"]),
            (Some(1), &notice["epoch"])
        );
        for sub in [&mut bob, &mut al] {
            let msg = next_json(sub).await;
            assert_eq!(
                (msg["data"].as_u64(), &msg["epoch"]),
                (Some(6), &notice["epoch"])
            );
        }
    })
    .await
}
