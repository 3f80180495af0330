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
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ServerConfig, pki_types::CertificateDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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
/// Per-record room reserved when encrypting (header, nonce, tag, type).
const RECORD_OVERHEAD: usize = 64;

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

/// Ciphertext waiting for the socket: `buf[head..tail]`. `buf` is
/// initialized up to its length, so it is zero-filled only when it grows.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    head: usize,
    tail: usize,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    fn len(&self) -> usize {
        self.tail - self.head
    }

    fn unsent(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }

    fn sent(&mut self, n: usize) {
        self.head += n;
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
            // Sent: the memory goes too. An idle connection holds no
            // outgoing buffer; an allocation per write costs little next to
            // encrypting it.
            self.buf = Vec::new();
        }
    }

    /// At least `n` writable bytes after `tail`.
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() - self.tail < n && self.head > 0 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.buf.len() - self.tail < n {
            self.buf.resize(self.tail + n, 0);
        }
        &mut self.buf[self.tail..]
    }

    fn encode(&mut self, data: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>) {
        let mut need = 512;
        loop {
            match data.encode(self.room(need)) {
                Ok(n) => self.tail += n,
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    need = required_size;
                    continue;
                }
                Err(EncodeError::AlreadyEncoded) => {}
            }
            return;
        }
    }

    /// Append `bytes` (without zero-filling first).
    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.buf.capacity() - self.tail < bytes.len() && self.head > 0 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        self.buf.truncate(self.tail);
        self.buf.extend_from_slice(bytes);
        self.tail = self.buf.len();
    }

    fn close_notify(
        &mut self,
        traffic: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    ) -> Result<(), rustls::Error> {
        let mut need = 2 * RECORD_OVERHEAD;
        loop {
            match traffic.queue_close_notify(self.room(need)) {
                Ok(n) => {
                    self.tail += n;
                    return Ok(());
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    need = required_size;
                }
                Err(_) => return Err(rustls::Error::EncryptError),
            }
        }
    }
}

/// The most plaintext in one record.
const MAX_FRAGMENT: usize = 16 << 10;

thread_local! {
    /// Where writes are sealed (and gathered first): kept per thread, so a
    /// write allocates nothing and zero-fills nothing once the thread's
    /// scratch has grown to one record, and a connection holds nothing.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` with this thread's scratch buffer; borrowed only for one poll call
/// (never across an await). A TLS stream inside a tunnel of another writes
/// through it while the scratch is taken: that nested write gets its own.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Seal one record of `bufs`' bytes from `skip` on (up to
/// [`MAX_FRAGMENT`]; several small buffers are gathered into it) into the
/// start of `scratch`. Returns the plaintext bytes taken and the ciphertext
/// length (with a key update answer rustls puts before it).
fn seal(
    traffic: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    bufs: &[IoSlice<'_>],
    mut skip: usize,
    scratch: &mut Vec<u8>,
) -> Result<(usize, usize), rustls::Error> {
    let mut slices = bufs.iter().map(|b| &b[..]);
    let first = loop {
        match slices.next() {
            Some(b) if skip >= b.len() => skip -= b.len(),
            Some(b) => break &b[skip..],
            None => return Ok((0, 0)),
        }
    };
    let rest = slices;
    let single = first.len() >= MAX_FRAGMENT || bufs.len() == 1;
    let total = if single {
        first.len().min(MAX_FRAGMENT)
    } else {
        (first.len() + rest.clone().map(<[u8]>::len).sum::<usize>()).min(MAX_FRAGMENT)
    };
    let staged = if single { 0 } else { total };
    let mut sealed = total + 4 * RECORD_OVERHEAD;
    loop {
        // The ciphertext first, then (when gathering) the plaintext.
        if scratch.len() < sealed + staged {
            scratch.resize(sealed + staged, 0);
        }
        let (out, stage) = scratch.split_at_mut(sealed);
        let plain: &[u8] = if single {
            &first[..total]
        } else {
            let mut at = 0;
            for slice in std::iter::once(first).chain(rest.clone()) {
                let take = slice.len().min(total - at);
                stage[at..at + take].copy_from_slice(&slice[..take]);
                at += take;
                if at == total {
                    break;
                }
            }
            &stage[..total]
        };
        match traffic.encrypt(plain, out) {
            Ok(n) => return Ok((total, n)),
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                sealed = required_size;
            }
            Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
        }
    }
}

/// Decrypted bytes the reader has not taken yet: `bytes[read..]`.
#[derive(Default)]
struct Plaintext {
    bytes: Vec<u8>,
    read: usize,
}

impl Plaintext {
    /// Hand over a decrypted record: into `dst` as far as it fits (when
    /// nothing waits before it), the rest kept.
    fn take(&mut self, payload: &[u8], dst: Option<&mut ReadBuf<'_>>) {
        let mut rest = payload;
        if let Some(dst) = dst
            && self.read == self.bytes.len()
        {
            let n = rest.len().min(dst.remaining());
            dst.put_slice(&rest[..n]);
            rest = &rest[n..];
        }
        self.bytes.extend_from_slice(rest);
    }

    /// Move what waits into `dst`; free the memory once all is taken.
    fn give(&mut self, dst: &mut ReadBuf<'_>) {
        if self.read == self.bytes.len() {
            return;
        }
        let n = (self.bytes.len() - self.read).min(dst.remaining());
        dst.put_slice(&self.bytes[self.read..self.read + n]);
        self.read += n;
        if self.read == self.bytes.len() {
            self.bytes = Vec::new();
            self.read = 0;
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
mod tests {
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
        assert_eq!(server.plaintext.bytes.capacity(), 0);
        assert_eq!(server.outgoing.buf.capacity(), 0);
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
        assert_eq!(server.plaintext.bytes.capacity(), 0);

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
        assert_eq!(server.outgoing.buf.capacity(), 0, "the socket took it all");
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
}
