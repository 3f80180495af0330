//! The server side of TLS on the public front, on rustls' unbuffered API.
//!
//! Why not tokio-rustls: its buffered `ServerConnection` keeps a 4 KiB
//! read buffer for every connection for its whole life, and reads at most
//! 4 KiB per call, so a 16 KiB message costs several reads. Here wsgate owns
//! both buffers:
//!
//! * ciphertext in: a [`ReadBuffer`] that reads about twice what the last
//!   read brought (up to 64 KiB in a burst). After the handshake it holds at
//!   most one read and a record: the start of a record is completed and no
//!   more is read with it, and while the peer is quiet only that start is
//!   kept (nothing at all between records);
//! * ciphertext out: each record (16 KiB of plaintext at most) is sealed in
//!   a per-thread scratch buffer and written to the socket at once; only
//!   what the socket does not take is copied into the connection's own
//!   buffer. A write is not accepted while more than [`WRITE_BOUND`] bytes
//!   of earlier ciphertext are unsent, so that buffer holds at most that and
//!   a record, and it is given back once sent: an idle connection holds
//!   nothing, a busy one allocates nothing per write.
//!
//! Decrypted records go straight into the caller's buffer; only what does
//! not fit waits here, then is freed. That is at most what one read
//! brought: the write path must decrypt the records held to reach the
//! state where it may encrypt (rustls' unbuffered API), and making a write
//! wait for the reader instead could stall a relay whose reader waits for
//! its upstream, which waits for this write.
//!
//! The handshake ([`accept`]) first parses the ClientHello with rustls'
//! `Acceptor` to learn the SNI name, so that each name can have its own
//! `ServerConfig` (its own client certificate rule), then runs the real
//! connection on the same bytes. Errors from rustls become
//! `io::ErrorKind::InvalidData`, a TCP end without close_notify
//! `UnexpectedEof`, as with tokio-rustls.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{Acceptor, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{ServerConfig, pki_types::CertificateDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::buffers::{Outgoing, Plaintext, seal, with_scratch};
use crate::frame::ReadBuffer;

/// The longest TLS record on the wire: 16 KiB of payload, 2 KiB of
/// expansion, the 5-byte header (rustls refuses longer ones).
const MAX_RECORD: usize = 16_384 + 2_048 + 5;
/// A TLS record's header: type, version, length.
const HEADER: usize = 5;
/// The most ciphertext held while more is needed: a handshake message of up
/// to 64 KiB (rustls' limit) in several records, and the start of the next.
const MAX_HELD: usize = 0xffff + MAX_RECORD;
/// The most plaintext encrypted per write call (four full records).
const MAX_PLAIN: usize = 64 << 10;
/// The first read of a handshake.
const HELLO_READ: usize = 4 << 10;
/// A write is taken only while at most this much ciphertext waits.
pub const WRITE_BOUND: usize = 16 << 10;

/// A TLS server connection on `IO`, after the handshake.
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    incoming: ReadBuffer,
    outgoing: Outgoing,
    /// Decrypted bytes that did not fit the reader's buffer.
    plaintext: Plaintext,
    sni: Option<Box<str>>,
    /// The peer sent close_notify: reads end (`Ok(0)`).
    peer_closed: bool,
    /// The TCP stream ended (without close_notify, unless `peer_closed`).
    eof: bool,
    /// Our close_notify is queued; nothing more is written.
    closing: bool,
    /// The first fatal error; every later call reports it again.
    failed: Option<rustls::Error>,
}

/// The handshake on `io`: read the ClientHello, let `pick` choose the
/// config by its SNI name, complete the handshake with it.
pub async fn accept<IO, F>(mut io: IO, pick: F) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Option<&str>) -> Arc<ServerConfig>,
{
    let mut incoming = ReadBuffer::default();
    // A ClientHello (1-2 KiB, more with post-quantum key shares) in one read.
    incoming.expect(HELLO_READ);
    let mut acceptor = Acceptor::default();
    let sni = loop {
        if incoming.len() >= MAX_HELD {
            return Err(invalid("ClientHello too large"));
        }
        let fed = incoming.len();
        if incoming.read_from(&mut io).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tls handshake eof",
            ));
        }
        // The acceptor gets a copy; the connection gets the originals.
        let mut fresh = &incoming.data()[fed..];
        while !fresh.is_empty() {
            // 0: it takes nothing more (an alert ended it); never spin.
            if acceptor.read_tls(&mut fresh)? == 0 {
                return Err(invalid("TLS ended before the ClientHello"));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted.client_hello().server_name().map(Box::from),
            Ok(None) => {}
            Err((error, mut alert)) => {
                let mut bytes = Vec::new();
                if alert.write_all(&mut bytes).is_ok() {
                    let _ = io.write_all(&bytes).await;
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
    };
    let conn = UnbufferedServerConnection::new(pick(sni.as_deref()))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming,
        outgoing: Outgoing::default(),
        plaintext: Plaintext::default(),
        sni,
        peer_closed: false,
        eof: false,
        closing: false,
        failed: None,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// What the caller of [`TlsStream::process`] wants from it.
enum Want<'a, 'b> {
    /// Plaintext into this buffer (what does not fit waits).
    Read(&'a mut ReadBuf<'b>),
    /// Any progress; plaintext waits.
    Progress,
    /// One record of this plaintext, from byte `skip` on, encrypted into
    /// `scratch` (see [`with_scratch`]).
    Write {
        bufs: &'a [IoSlice<'a>],
        skip: usize,
        scratch: &'a mut Vec<u8>,
    },
    /// Our close_notify into the outgoing buffer.
    Close,
}

/// Where one [`TlsStream::process`] call stopped.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Plaintext arrived (into the reader's buffer or [`Plaintext`]).
    Plaintext,
    /// Nothing more to do with the bytes held; the handshake or the next
    /// record needs more from the peer.
    NeedInput,
    /// `plain` bytes were encrypted into `scratch[..sealed]` (`Want::Write`).
    Sealed { plain: usize, sealed: usize },
    /// The close_notify was queued (`Want::Close`).
    Queued,
    /// Both sides sent close_notify.
    Closed,
}

impl<IO> TlsStream<IO> {
    /// The SNI name the client asked for, lower case.
    pub fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The protocol ALPN agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The client's certificate chain, when it presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Run the state machine on the bytes held until it needs the peer or
    /// has done what `want` asks. Handshake and post-handshake messages
    /// (tickets, key updates, alerts) are queued in `outgoing` on the way.
    fn process(&mut self, mut want: Want<'_, '_>) -> io::Result<Outcome> {
        if let Some(e) = &self.failed {
            return Err(invalid_tls(e.clone()));
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(self.incoming.data());
            let step = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result: Result<(), rustls::Error> = Ok(());
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                // rustls' API: a record's own discard is
                                // added to the status's before discarding
                                // (0 while payloads are copied out; not so
                                // once rustls decrypts in place).
                                discard += record.discard;
                                let dst = match &mut want {
                                    Want::Read(dst) => Some(&mut **dst),
                                    _ => None,
                                };
                                self.plaintext.take(record.payload, dst);
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    match (result, &want) {
                        (Err(e), _) => Err(e),
                        (Ok(()), Want::Read(_) | Want::Progress) => Ok(Some(Outcome::Plaintext)),
                        // A writer keeps going until it may encrypt.
                        (Ok(()), Want::Write { .. } | Want::Close) => Ok(None),
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    self.outgoing.encode(&mut data);
                    Ok(None)
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    // The bytes are ours to send now, in order.
                    data.done();
                    Ok(None)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Outcome::Closed))
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Outcome::NeedInput)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match &mut want {
                    Want::Write {
                        bufs,
                        skip,
                        scratch,
                    } => seal(&mut traffic, bufs, *skip, scratch)
                        .map(|(plain, sealed)| Some(Outcome::Sealed { plain, sealed })),
                    Want::Close => self
                        .outgoing
                        .close_notify(&mut traffic)
                        .map(|()| Some(Outcome::Queued)),
                    Want::Read(_) | Want::Progress => Ok(Some(Outcome::NeedInput)),
                },
                Ok(_) => Err(rustls::Error::General("unexpected TLS state".into())),
            };
            self.incoming.consume(discard);
            match step {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Remember a fatal error and queue the alert rustls has for it. The
    /// state machine is asked only while it has something to send (it hands
    /// that out before it looks at the records again, which would fail the
    /// same way twice).
    ///
    /// Every error return then tries to send the alert once (`poll_send`,
    /// best effort: the socket may be full). No alert is sent where rustls
    /// has none queued: for errors found here rather than by rustls (a
    /// handshake message beyond [`MAX_HELD`] in [`TlsStream::poll_fill`],
    /// an unexpected state in `process`), since the unbuffered connection
    /// gives no way to queue one and encrypting an alert ourselves is not
    /// possible; the TCP connection just ends. After the handshake
    /// `incoming` holds at most one record's start, so an oversized record
    /// is found by rustls' own length check, which does queue its alert.
    /// A failed handshake's alert is tried once: [`accept`] does not wait
    /// for a peer that does not read.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        self.failed = Some(error.clone());
        while self.conn.wants_write() {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.incoming.data());
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    self.outgoing.encode(&mut data);
                    true
                }
                _ => false,
            };
            self.incoming.consume(discard);
            if !encoded {
                break;
            }
        }
        invalid_tls(error)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let outcome = match self.process(Want::Progress) {
                Ok(outcome) => outcome,
                Err(e) => {
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                // Tickets went out with the last flight; plaintext that
                // came with the Finished waits for the first read.
                return Pin::new(&mut self.io).poll_flush(cx);
            }
            match outcome {
                Outcome::Plaintext | Outcome::Queued | Outcome::Sealed { .. } => continue,
                Outcome::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Outcome::NeedInput => {}
            }
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
        }
    }

    /// Read more ciphertext after what is held. During the handshake that
    /// is at most [`MAX_HELD`] in all (a handshake message of up to 64 KiB);
    /// after it, a start of a record (all that is held when more is needed)
    /// is completed and no more is read, and with nothing held one read
    /// takes up to 64 KiB. So `incoming` never holds more than one read
    /// and a record, and a peer quiet in the middle of a record leaves
    /// that record's start held, not the buffer of an earlier burst.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let limit = self.read_limit();
        if limit == 0 {
            let e = rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge);
            return Poll::Ready(Err(self.fail(e)));
        }
        match self.incoming.poll_read_at_most(cx, &mut self.io, limit) {
            Poll::Pending => {
                self.incoming.release();
                self.incoming.shrink_to_held(MAX_RECORD);
                Poll::Pending
            }
            ready => ready,
        }
    }

    /// How much the next read may take (see [`TlsStream::poll_fill`]).
    fn read_limit(&mut self) -> usize {
        let held = self.incoming.len();
        if self.conn.is_handshaking() {
            return MAX_HELD.saturating_sub(held);
        }
        if held == 0 {
            return usize::MAX;
        }
        let data = self.incoming.data();
        let record = match data {
            [_, _, _, hi, lo, ..] => HEADER + usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => MAX_RECORD,
        };
        record.min(MAX_RECORD).saturating_sub(held)
    }

    /// Write freshly sealed ciphertext: straight to the socket while
    /// nothing waits before it, and only what the socket does not take is
    /// copied into `outgoing` (the waker is registered then).
    fn send_sealed(&mut self, cx: &mut Context<'_>, mut sealed: &[u8]) -> io::Result<()> {
        if self.outgoing.is_empty() {
            while !sealed.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, sealed) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => sealed = &sealed[n..],
                    Poll::Ready(Err(e)) => {
                        // Kept in order, as if queued: the error comes
                        // again with the next write or flush.
                        self.outgoing.push(sealed);
                        return Err(e);
                    }
                    Poll::Pending => break,
                }
            }
        }
        self.outgoing.push(sealed);
        Ok(())
    }

    /// Write out the ciphertext queued.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.outgoing.unsent()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.sent(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        this.plaintext.give(buf);
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let outcome = match this.process(Want::Read(buf)) {
                Ok(outcome) => outcome,
                Err(e) => {
                    let _ = this.poll_send(cx);
                    if buf.filled().len() > before {
                        // Plaintext that came before the bad record is
                        // delivered; the error (kept) comes with the next
                        // call.
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(e));
                }
            };
            if outcome == Outcome::Plaintext {
                continue;
            }
            // Whatever processing queued (an alert, a key update answer)
            // goes out now if the socket takes it; the rest, and any write
            // error, with the next write or flush: reading goes on.
            let _ = this.poll_send(cx);
            if buf.filled().len() > before || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.eof = true;
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if this.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after TLS close_notify",
            )));
        }
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        if this.outgoing.len() > WRITE_BOUND {
            // The socket is full and enough waits: no more until it drains.
            return Poll::Pending;
        }
        // Record by record, each sent as it is sealed; what the socket does
        // not take waits in `outgoing` (after at most WRITE_BOUND), and then
        // this write ends.
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(MAX_PLAIN);
        let mut written = 0;
        while written < total && (written == 0 || this.outgoing.is_empty()) {
            let sealed = with_scratch(|scratch| {
                let want = Want::Write {
                    bufs,
                    skip: written,
                    scratch: &mut *scratch,
                };
                match this.process(want)? {
                    Outcome::Sealed { plain, sealed } => {
                        this.send_sealed(cx, &scratch[..sealed])?;
                        Ok(plain)
                    }
                    Outcome::Closed => Err(io::ErrorKind::BrokenPipe.into()),
                    Outcome::NeedInput | Outcome::Plaintext | Outcome::Queued => {
                        Err(invalid("write before the handshake ended"))
                    }
                }
            });
            match sealed {
                Ok(plain) => written += plain,
                Err(e) => {
                    // The alert a TLS error queued goes out if the socket
                    // takes it now (best effort: the error is reported
                    // either way, and again with every later call).
                    let _ = this.poll_send(cx);
                    if written > 0 {
                        // What was sealed before stays written (and sent).
                        break;
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            // A failed connection sent its alert instead.
            let _ = this.process(Want::Close);
        }
        ready!(this.poll_send(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn invalid_tls(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
