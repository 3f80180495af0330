//! The TLS front's stream against a real rustls client: echo both ways on
//! TLS 1.2 and 1.3, tiny readers, key updates, close_notify and EOF, hostile
//! records, and the memory a quiet or stalled peer leaves held.

use std::time::Duration;

use futures_util::FutureExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

use super::*;
use crate::devcert;

struct Keys {
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn keys(tls12: bool) -> Keys {
    let made = devcert::generate(&["localhost".to_owned()]).unwrap();
    let chain = CertificateDer::pem_slice_iter(made.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(made.key_pem.as_bytes()).unwrap();
    let mut server = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(made.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Keys {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// Counts the largest single read the server made.
struct Counting<IO> {
    io: IO,
    largest: usize,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counting<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        self.largest = self.largest.max(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counting<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Server = TlsStream<Counting<DuplexStream>>;

async fn pair_with(tls12: bool, pipe: usize) -> (Server, ClientStream<DuplexStream>) {
    let keys = keys(tls12);
    let (a, b) = duplex(pipe);
    let config = keys.server.clone();
    let server = tokio::spawn(async move {
        let io = Counting { io: a, largest: 0 };
        accept(io, move |name| {
            assert_eq!(name, Some("localhost"));
            config
        })
        .await
    });
    let client = TlsConnector::from(keys.client)
        .connect(ServerName::try_from("localhost").unwrap(), b)
        .await
        .unwrap();
    let server = server.await.unwrap().unwrap();
    assert_eq!(server.server_name(), Some("localhost"));
    assert_eq!(server.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    (server, client)
}

async fn pair() -> (Server, ClientStream<DuplexStream>) {
    pair_with(false, 256 << 10).await
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The server echoes everything until EOF; the client sends `data` and
/// must get it back.
async fn echo(mut server: Server, client: ClientStream<DuplexStream>, data: Vec<u8>) -> Server {
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 8 << 10];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                server.shutdown().await.unwrap();
                return server;
            }
            server.write_all(&buf[..n]).await.unwrap();
            server.flush().await.unwrap();
        }
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            wr.write_all(chunk).await.unwrap();
        }
        wr.flush().await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    rd.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(
        back == data,
        "echo differs: {} of {} bytes",
        back.len(),
        data.len()
    );
    echo.await.unwrap()
}

#[tokio::test]
async fn echoes_small_and_large_writes_both_ways() {
    for tls12 in [false, true] {
        let (server, client) = pair_with(tls12, 256 << 10).await;
        echo(server, client, b"hello".to_vec()).await;
        let (server, client) = pair_with(tls12, 256 << 10).await;
        let server = echo(server, client, pattern(700 << 10)).await;
        assert!(
            server.io.largest > 16 << 10,
            "a burst is read in big reads: {}",
            server.io.largest
        );
    }
}

#[tokio::test]
async fn large_server_writes_and_a_one_byte_reader() {
    let (mut server, mut client) = pair().await;
    let data = pattern(300 << 10);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        server.write_all(&sent).await.unwrap();
        server.flush().await.unwrap();
        server
    });
    let mut got = vec![0u8; data.len()];
    client.read_exact(&mut got).await.unwrap();
    assert!(got == data);
    let mut server = writer.await.unwrap();

    // The other way, read one byte at a time.
    let data = pattern(70 << 10);
    client.write_all(&data).await.unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut one = [0u8; 1];
    while got.len() < data.len() {
        assert_eq!(server.read(&mut one).await.unwrap(), 1);
        got.push(one[0]);
    }
    assert!(got == data);
}

#[tokio::test]
async fn read_buffer_is_let_go_after_a_burst() {
    let (mut server, mut client) = pair().await;
    let data = pattern(1 << 20);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        client
    });
    let mut got = vec![0u8; data.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == data);
    let _client = writer.await.unwrap();
    assert!(server.io.largest >= 32 << 10, "{}", server.io.largest);
    // Quiet now: the next read finds nothing and holds no buffer.
    let mut buf = [0u8; 64];
    assert!(server.read(&mut buf).now_or_never().is_none());
    assert_eq!(server.incoming.capacity(), 0);
    assert_eq!(server.plaintext.capacity(), 0);
    assert_eq!(server.outgoing.capacity(), 0);
}

#[tokio::test]
async fn writes_wait_while_the_peer_does_not_read() {
    let (mut server, client) = pair_with(false, 16 << 10).await;
    let data = pattern(4 << 20);
    let stalled = timeout(Duration::from_millis(200), server.write_all(&data)).await;
    assert!(
        stalled.is_err(),
        "a peer that does not read stops the writer"
    );
    assert!(
        server.outgoing.len() <= WRITE_BOUND + MAX_RECORD,
        "held ciphertext is bounded: {}",
        server.outgoing.len()
    );
    drop(client);
}

/// A peer that sends a burst, then half a record, then waits: the
/// server holds that record's start, not the burst's buffer, and never
/// more than about one read and a record.
#[tokio::test]
async fn a_peer_quiet_in_the_middle_of_a_record_holds_little() {
    let keys = keys(false);
    let (server_io, server_far) = duplex(1 << 20);
    let (client_io, client_far) = duplex(1 << 20);
    let config = keys.server.clone();
    let accepting = tokio::spawn(accept(server_io, move |_| config));
    // The handshake through a pump that stops when told, keeping the
    // client's side for the test to forward by hand after.
    let (mut from_client, mut to_client) = tokio::io::split(client_far);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (mut far_rd, mut far_wr) = tokio::io::split(server_far);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut far_rd, &mut to_client).await;
    });
    let pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return (from_client, far_wr),
                n = from_client.read(&mut buf) => {
                    let n = n.unwrap();
                    far_wr.write_all(&buf[..n]).await.unwrap();
                }
            }
        }
    });
    let mut client = TlsConnector::from(keys.client)
        .connect(ServerName::try_from("localhost").unwrap(), client_io)
        .await
        .unwrap();
    let mut server = accepting.await.unwrap().unwrap();
    stop.send(()).unwrap();
    let (mut from_client, mut server_far) = pump.await.unwrap();

    // 200 KiB and 7000 bytes more: the client's ciphertext, all but
    // the end of the last record, reaches the server.
    let data = pattern((200 << 10) + 7000);
    client.write_all(&data).await.unwrap();
    client.flush().await.unwrap();
    let mut wire = vec![0u8; 1 << 20];
    let mut len = 0;
    while let Some(n) = from_client.read(&mut wire[len..]).now_or_never() {
        len += n.unwrap();
    }
    let cut = len - 3500;
    server_far.write_all(&wire[..cut]).await.unwrap();

    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut largest = 0;
    loop {
        largest = largest.max(server.incoming.capacity());
        match timeout(Duration::from_millis(200), server.read(&mut buf)).await {
            Ok(n) => got.extend_from_slice(&buf[..n.unwrap()]),
            Err(_) => break,
        }
    }
    assert!(
        got.len() > 180 << 10 && got.len() < data.len() && got == data[..got.len()],
        "the whole records arrived: {}",
        got.len()
    );
    assert!(largest <= 2 * (64 << 10), "incoming stays small: {largest}");
    assert!(
        server.incoming.capacity() <= MAX_RECORD,
        "a record's start is held, not a burst's buffer: {}",
        server.incoming.capacity()
    );
    assert!(server.incoming.len() < MAX_RECORD);
    assert_eq!(server.plaintext.capacity(), 0);

    // The rest of the record completes the data.
    server_far.write_all(&wire[cut..len]).await.unwrap();
    let mut rest = vec![0u8; data.len() - got.len()];
    server.read_exact(&mut rest).await.unwrap();
    assert!(rest == data[got.len()..]);
}

/// Gathered writes, one record at a time, across slice boundaries; a
/// socket that takes everything leaves nothing held.
#[tokio::test]
async fn vectored_writes_are_sealed_record_by_record() {
    let (mut server, mut client) = pair().await;
    let data = pattern(5 + 20_000 + 3 + 30_000 + 100);
    let cuts = [0, 5, 20_005, 20_008, 50_008, 50_008, data.len()];
    let owned: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
    let mut slices: Vec<IoSlice<'_>> = owned.iter().map(|b| IoSlice::new(b)).collect();
    let mut bufs = &mut slices[..];
    let mut calls = 0;
    while !bufs.is_empty() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, bufs))
            .await
            .unwrap();
        assert!(n > 0);
        calls += 1;
        IoSlice::advance_slices(&mut bufs, n);
    }
    assert!(calls >= 1);
    assert_eq!(server.outgoing.capacity(), 0, "the socket took it all");
    let mut got = vec![0u8; data.len()];
    client.read_exact(&mut got).await.unwrap();
    assert!(got == data);
}

/// A write that finds the peer's records bad fails, and the alert for
/// that goes out with it, not only with a later flush.
#[tokio::test]
async fn a_failed_write_sends_its_alert() {
    let (mut server, mut client) = pair().await;
    client.write_all(b"hello").await.unwrap();
    client.flush().await.unwrap();
    // Then an application data record that does not decrypt, which the
    // server reads with "hello" but does not look at yet: the reader's
    // buffer is full.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend_from_slice(&[0x5a; 0x40]);
    client.get_mut().0.write_all(&record).await.unwrap();
    let mut hello = [0u8; 5];
    server.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    let (mut raw, mut conn) = client.into_inner();
    let e = server.write(b"x").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let mut wire = vec![0u8; 64 << 10];
    let mut len = 0;
    while let Some(n) = raw.read(&mut wire[len..]).now_or_never() {
        let n = n.unwrap();
        if n == 0 {
            break;
        }
        len += n;
    }
    conn.read_tls(&mut &wire[..len]).unwrap();
    let alert = conn.process_new_packets().unwrap_err();
    assert!(
        matches!(alert, rustls::Error::AlertReceived(_)),
        "{alert:?}"
    );
}

/// Records before a bad one are read; the error comes with the next read.
#[tokio::test]
async fn plaintext_before_a_bad_record_is_not_lost() {
    let (mut server, mut client) = pair().await;
    client.write_all(b"last words").await.unwrap();
    client.flush().await.unwrap();
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend_from_slice(&[0x5a; 0x40]);
    client.get_mut().0.write_all(&record).await.unwrap();
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"last words");
    let e = server.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

#[tokio::test]
async fn a_client_key_update_mid_stream() {
    let (mut server, mut client) = pair().await;
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(&[round; 1000]).await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 1000];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 1000]);
        // Our answer (a key update of our own) goes before this data.
        server.write_all(&[round + 10; 500]).await.unwrap();
        server.flush().await.unwrap();
        let mut back = [0u8; 500];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [round + 10; 500]);
    }
}

#[tokio::test]
async fn close_notify_is_the_end_and_ours_is_sent() {
    let (mut server, mut client) = pair().await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
    assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"bye");
}

#[tokio::test]
async fn tcp_end_without_close_notify_is_an_unexpected_eof() {
    // Mid-record.
    let (mut server, client) = pair().await;
    let (mut raw, _) = client.into_inner();
    raw.write_all(&[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3])
        .await
        .unwrap();
    drop(raw);
    let e = server.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    // Between records.
    let (mut server, client) = pair().await;
    drop(client);
    let e = server.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn garbage_or_oversized_records_are_invalid_data() {
    let keys = keys(false);
    let hello_of = |bytes: &'static [u8]| {
        let config = keys.server.clone();
        async move {
            let (server, mut client) = duplex(64 << 10);
            client.write_all(bytes).await.unwrap();
            match accept(server, move |_| config).await {
                Ok(_) => panic!("accepted {bytes:?}"),
                Err(e) => e,
            }
        }
    };
    let e = hello_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let e = hello_of(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3]).await;
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

    // After the handshake: a record longer than TLS allows.
    let (mut server, client) = pair().await;
    let (mut raw, _) = client.into_inner();
    raw.write_all(&[0x17, 0x03, 0x03, 0x50, 0x00, 0, 0, 0])
        .await
        .unwrap();
    let e = server.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(server.incoming.capacity() <= MAX_HELD);
    // And it stays failed.
    let e = server.write(b"x").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

#[tokio::test]
async fn an_alert_before_the_client_hello_ends_the_handshake() {
    let keys = keys(false);
    let (server, mut client) = duplex(64 << 10);
    // A plaintext close_notify, then the start of a ClientHello.
    client
        .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00])
        .await
        .unwrap();
    let accepting = tokio::spawn(accept(server, move |_| keys.server.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The server may have given up already.
    let _ = client
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x10, 1, 2, 3])
        .await;
    let outcome = timeout(Duration::from_secs(5), accepting).await;
    let e = outcome.expect("no spin").unwrap().err().unwrap();
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        ),
        "{e}"
    );
    drop(client);
}

#[tokio::test]
async fn the_handshake_fails_on_a_peer_that_goes_away() {
    let keys = keys(false);
    let (server, mut client) = duplex(64 << 10);
    client.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
    drop(client);
    let e = accept(server, move |_| keys.server.clone())
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}
