//! Access inside the hub: names and direct messages in namespaces, the
//! sender's real name stamped into raw direct messages, and channel
//! permissions from a token's claim or the route's defaults.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::hub::{next_json, send_json};
use common::{Gateway, Route, Running, Ws, next_close, path, within};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use toml::Table;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

/// A raw room route whose JSON frames with `dst` go to that name.
fn raw_room(path: &str, channel: &str) -> Route {
    Route::hub(path)
        .name(path.trim_start_matches('/'))
        .key("protocol", "raw")
        .key("channel", channel)
        .key("direct_field", "dst")
        .key("sender_field", "src")
}

#[tokio::test]
async fn direct_messages_stay_in_their_namespace_and_carry_the_real_sender() {
    within(20, async {
        let gw = Gateway::builder()
            .route(raw_room("/a", "room-a"))
            .route(raw_room("/b", "room-b"))
            .route(raw_room("/c", "room-c").key("namespace", "a"))
            .start()
            .await;
        let ws = |name: &'static str, route: &'static str| {
            let gw: &Running = &gw;
            async move { gw.ws(&format!("{route}?name={name}")).await }
        };
        let mut alice = ws("alice", "/a").await;
        let mut carol = ws("carol", "/a").await;
        let mut bob_b = ws("bob", "/b").await;
        let mut dave_b = ws("dave", "/b").await;
        let mut bob_c = ws("bob", "/c").await;

        // To bob from namespace "a": bob on /c (namespace "a") gets it, bob on /b does not.
        send_json(
            &mut alice,
            json!({"src": "admin", "dst": "bob", "msg": "one"}),
        )
        .await;
        let got = next_json(&mut bob_c).await;
        assert_eq!(got["msg"], "one");
        assert_eq!(got["src"], "alice", "the forged src is overwritten");
        send_json(&mut alice, json!({"dst": "carol", "msg": "two"})).await;
        assert_eq!(next_json(&mut carol).await["src"], "alice");
        // bob on /b hears first what his own namespace sends him.
        send_json(
            &mut dave_b,
            json!({"src": "carol", "dst": "bob", "msg": "three"}),
        )
        .await;
        let got = next_json(&mut bob_b).await;
        assert_eq!(got["msg"], "three", "nothing crossed from namespace a");
        assert_eq!(got["src"], "dave");
    })
    .await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token; valid for an hour unless `claims` has its own `exp`.
fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    let key = EncodingKey::from_secret(SECRET);
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

async fn request(ws: &mut Ws, kind: &str, channel: &str, id: u64) -> Value {
    let mut req = json!({"type": kind, "channel": channel, "id": id});
    if kind == "publish" {
        req["data"] = json!({"x": 1});
    }
    send_json(ws, req).await;
    next_json(ws).await
}

/// `[routes.jwt]` with the test secret, written to `dir`.
fn jwt(dir: &std::path::Path) -> Table {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut jwt = Table::new();
    jwt.insert("algorithm".into(), "HS256".into());
    jwt.insert("secret_file".into(), path(&secret));
    jwt.insert("leeway".into(), "0s".into());
    jwt
}

#[tokio::test]
async fn channel_permissions_from_the_token_and_the_route() {
    within(20, async {
        let dir = tempfile::tempdir().unwrap();
        let jwt = jwt(dir.path());
        let gw = Gateway::builder()
            .route(
                Route::hub("/hub")
                    .name("hub")
                    .key("jwt", jwt)
                    .key("subscribe", vec!["public.*"])
                    .key("publish", Vec::<String>::new()),
            )
            .start()
            .await;
        let channels = json!({"subscribe": ["prices.*"], "publish": ["chat.*"]});
        let granted = token(json!({"sub": "alice", "channels": channels}));
        let mut alice = gw.ws(&format!("/hub?token={granted}")).await;
        assert_eq!(next_json(&mut alice).await["client"], "alice");
        assert_eq!(
            request(&mut alice, "subscribe", "prices.eur", 1).await["type"],
            "ack"
        );
        let refused = request(&mut alice, "subscribe", "secrets", 2).await;
        assert_eq!(
            (refused["type"].clone(), refused["code"].clone()),
            (json!("error"), json!("forbidden"))
        );
        assert_eq!(
            request(&mut alice, "publish", "prices.eur", 3).await["code"],
            "forbidden"
        );
        assert_eq!(
            request(&mut alice, "publish", "chat.main", 4).await["type"],
            "ack",
            "the connection stays"
        );

        // No claim: the route's defaults.
        let mut bob = gw
            .ws(&format!("/hub?token={}", token(json!({"sub": "bob"}))))
            .await;
        assert_eq!(next_json(&mut bob).await["client"], "bob");
        assert_eq!(
            request(&mut bob, "subscribe", "public.news", 1).await["type"],
            "ack"
        );
        assert_eq!(
            request(&mut bob, "subscribe", "prices.eur", 2).await["code"],
            "forbidden"
        );
        assert_eq!(
            request(&mut bob, "publish", "public.news", 3).await["code"],
            "forbidden"
        );
        // Who is in a channel is as private as what is said there.
        assert_eq!(
            request(&mut bob, "presence", "prices.eur", 4).await["code"],
            "forbidden"
        );
        assert_eq!(
            request(&mut bob, "presence", "public.news", 5).await["type"],
            "presence"
        );
    })
    .await;
}

/// Short-lived tokens (2 and 3 seconds): the sessions end at `exp`, no
/// sleeping, each wait is on the close or an answer.
#[tokio::test]
async fn sessions_end_when_their_token_does_unless_refreshed() {
    within(20, async {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::builder()
            .route(Route::hub("/hub").name("hub").key("jwt", jwt(dir.path())))
            .route(
                Route::echo("/private")
                    .name("private")
                    .key("jwt", jwt(dir.path())),
            )
            .start()
            .await;
        let short = |sub: &str, secs: u64| token(json!({"sub": sub, "exp": now() + secs}));
        let mut refreshed = gw.ws(&format!("/hub?token={}", short("bob", 2))).await;
        assert_eq!(next_json(&mut refreshed).await["client"], "bob");
        let mut lapsed = gw.ws(&format!("/hub?token={}", short("carol", 3))).await;
        assert_eq!(next_json(&mut lapsed).await["client"], "carol");
        let mut echo = gw.ws(&format!("/private?token={}", short("dave", 2))).await;

        // A fresh token for someone else is refused; bob's own is taken.
        let other = token(json!({"sub": "mallory"}));
        send_json(
            &mut refreshed,
            json!({"type": "refresh", "token": other, "id": 1}),
        )
        .await;
        assert_eq!(next_json(&mut refreshed).await["code"], "unauthorized");
        let fresh = token(json!({"sub": "bob"}));
        send_json(
            &mut refreshed,
            json!({"type": "refresh", "token": fresh, "id": 2}),
        )
        .await;
        assert_eq!(
            next_json(&mut refreshed).await,
            json!({"type": "ack", "id": 2})
        );

        for ws in [&mut echo, &mut lapsed] {
            let frame = next_close(ws).await.expect("a close frame");
            assert_eq!(
                (u16::from(frame.code), frame.reason.as_str()),
                (1008, "token expired")
            );
        }
        // carol's token ran out a second after bob's first one: bob is still here.
        assert_eq!(
            request(&mut refreshed, "subscribe", "news", 3).await["type"],
            "ack"
        );
    })
    .await;
}

/// POST `body` (JSON) to the hub API with `token`; the status.
async fn api_post(gw: &Running, path: &str, token: &str) -> u16 {
    let request = common::request(http::Method::POST, gw.admin_addr, path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"p\":1}",
        )))
        .unwrap();
    gw.admin_request(request).await.0
}

#[tokio::test]
async fn api_keys_are_limited_to_their_channels() {
    within(20, async {
        const FULL: &str = "full-api-token-0123456789";
        const LIMITED: &str = "limited-api-token-0123456789";
        let mut key = Table::new();
        key.insert("token".into(), LIMITED.into());
        key.insert("channels".into(), vec!["prices.*"].into());
        let gw = Gateway::builder()
            .hub(|h| h.set("api_tokens", vec![FULL]).set("api_keys", vec![key]))
            .start()
            .await;
        let publish = |c: &str| format!("/api/channels/{c}/publish");
        assert_eq!(api_post(&gw, &publish("prices.eur"), LIMITED).await, 200);
        assert_eq!(api_post(&gw, &publish("secrets"), LIMITED).await, 403);
        assert_eq!(api_post(&gw, "/api/clients/bob/send", LIMITED).await, 403);
        assert_eq!(api_post(&gw, &publish("secrets"), FULL).await, 200);
        assert_eq!(
            api_post(&gw, &publish("secrets"), "not-a-token-at-all-0000").await,
            401
        );
        let list = common::request(http::Method::GET, gw.admin_addr, "/api/channels")
            .header("authorization", format!("Bearer {LIMITED}"))
            .body(http_body_util::Full::default())
            .unwrap();
        let (status, body) = gw.admin_request(list).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("prices.eur") && !body.contains("secrets"),
            "{body}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_raw_room_needs_both_permissions() {
    within(20, async {
        let dir = tempfile::tempdir().unwrap();
        let room = Route::hub("/room")
            .name("room")
            .key("protocol", "raw")
            .key("channel", "lobby");
        let gw = Gateway::builder()
            .route(room.key("jwt", jwt(dir.path())))
            .start()
            .await;
        let with = |channels: Value| token(json!({"sub": "ann", "channels": channels}));
        let listen_only = with(json!({"subscribe": ["lobby"], "publish": []}));
        let both = with(json!({"subscribe": ["lobby"], "publish": ["lobby"]}));
        let refused = gw
            .try_ws(&format!("/room?token={listen_only}"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("403"), "{refused}");
        assert!(gw.try_ws(&format!("/room?token={both}")).await.is_ok());
    })
    .await;
}
