//! The Redis the backplane tests run against (tests/common/redis.rs): a
//! fresh server per test on a port of its own, that can crash and come back
//! on the same port, empty.

mod common;

use common::{Redis, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A PING answered with PONG (the one inline command this probe needs).
async fn pong(port: u16) -> bool {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    tcp.write_all(b"PING\r\n").await.unwrap();
    let mut answer = [0u8; 7];
    tcp.read_exact(&mut answer).await.is_ok() && &answer == b"+PONG\r\n"
}

#[tokio::test]
async fn a_test_redis_starts_on_its_own_port_and_comes_back_after_a_crash() {
    within(60, async {
        let Some(mut redis) = Redis::start() else {
            return;
        };
        let Some(other) = Redis::start() else {
            return;
        };
        assert_ne!(redis.port, other.port);
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port));
        assert!(pong(redis.port).await && pong(other.port).await);
        redis.kill();
        assert!(!pong(redis.port).await, "down after a crash");
        redis.restart();
        assert!(pong(redis.port).await, "back on the same port");
    })
    .await
}
