//! One connected session of `wsgate client`: stdin lines out, messages in,
//! pings, and the close handshake; and how the terminal shows them.

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use super::ClientArgs;
use super::dial::{Failure, Ws};
use super::exit::Exit;

/// A send that makes no progress for this long ends the session.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the server's answer to our Close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Read stdin line by line (newline stripped) into `lines`, on a thread of
/// its own (a read from a terminal or pipe blocks); a line is at most
/// `MAX_LINE` bytes (a longer one goes in pieces). Ends at EOF.
pub(crate) fn read_stdin(lines: mpsc::Sender<Vec<u8>>) {
    const MAX_LINE: u64 = 16 << 20;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match (&mut stdin).take(MAX_LINE).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    if lines.blocking_send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Stdin's lines, kept across reconnects: a line that could not be sent
/// waits for the next connection.
pub(crate) struct Stdin {
    lines: mpsc::Receiver<Vec<u8>>,
    held: Option<Vec<u8>>,
    finished: bool,
}

impl Stdin {
    pub(crate) fn new(lines: mpsc::Receiver<Vec<u8>>) -> Stdin {
        Stdin {
            lines,
            held: None,
            finished: false,
        }
    }

    /// Stdin has ended and every line was sent.
    pub(crate) fn finished(&self) -> bool {
        self.finished && self.held.is_none()
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(line) = self.held.take() {
            return Some(line);
        }
        let line = self.lines.recv().await;
        self.finished = line.is_none();
        line
    }
}

/// Where messages and events go. At a terminal, each is printed on a line
/// of its own (the line being typed is cleared first and the prompt put
/// back after), so incoming text never runs into what the user types.
pub(crate) struct Output {
    interactive: bool,
}

impl Output {
    pub(crate) fn new(interactive: bool) -> Output {
        let out = Output { interactive };
        out.prompt();
        out
    }

    fn clear(&self) {
        if self.interactive {
            eprint!("\r\x1b[2K");
        }
    }

    fn prompt(&self) {
        if self.interactive {
            eprint!("> ");
        }
    }

    pub(crate) fn event(&self, text: &str) {
        self.clear();
        eprintln!("wsgate client: {text}");
        self.prompt();
    }

    fn message(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.clear();
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.write_all(b"\n")?;
        out.flush()?;
        self.prompt();
        Ok(())
    }
}

/// Run one connected session to its end; the end says how (and whether
/// the whole client is done: stdin over, or --count reached).
pub(crate) async fn run(
    mut ws: Ws,
    args: &ClientArgs,
    out: &Output,
    stdin: &mut Stdin,
    received: &mut u64,
) -> Failure {
    let mut pings = args
        .ping
        .map(|every| tokio::time::interval_at(Instant::now() + every, every));
    let mut awaiting_pong = false;
    let mut closed_by_peer: Option<Option<CloseFrame>> = None;
    let mut close_deadline: Option<Instant> = None;
    // After the server's Close (answered for us), how long it may take to
    // end the connection before we do.
    let mut drop_deadline: Option<Instant> = None;
    loop {
        let tick = async {
            match pings.as_mut() {
                Some(p) => p.tick().await,
                None => std::future::pending().await,
            }
        };
        let closing = async {
            match close_deadline.or(drop_deadline) {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = stdin.next(), if close_deadline.is_none() && closed_by_peer.is_none() => {
                let Some(message) = outgoing(line.as_deref(), args.binary) else {
                    out.event("a line that is not UTF-8 was not sent (use --binary)");
                    continue;
                };
                if line.is_none() {
                    close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                if let Err(e) = send(&mut ws, message).await {
                    // Not sent: it goes out on the next connection.
                    stdin.held = line;
                    return e;
                }
            }
            next = ws.next() => match next {
                Some(Ok(Message::Text(text))) => {
                    if let Some(end) = deliver(out, text.as_bytes(), args, received, &mut ws, &mut close_deadline).await {
                        return end;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some(end) = deliver(out, &bytes, args, received, &mut ws, &mut close_deadline).await {
                        return end;
                    }
                }
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Close(frame))) => {
                    closed_by_peer = Some(frame);
                    drop_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed)) | None => {
                    return ended(closed_by_peer, close_deadline.is_some());
                }
                Some(Err(e)) => return Failure::new(Exit::Abnormal, format!("connection lost: {e}")),
            },
            _ = tick => {
                if awaiting_pong {
                    return Failure::new(Exit::Abnormal, "no pong to the last ping: connection dead");
                }
                awaiting_pong = true;
                if let Err(e) = send(&mut ws, Message::Ping(Bytes::from_static(b"wsgate"))).await {
                    return e;
                }
            }
            _ = closing => {
                if closed_by_peer.is_some() {
                    // Both Closes went; the server only kept the socket open.
                    return ended(closed_by_peer, close_deadline.is_some());
                }
                return Failure::new(Exit::Abnormal, "the server did not answer the close in 5 s");
            }
        }
    }
}

/// The message for a stdin line; at the end of stdin, Close 1000. `None`:
/// a text line that is not UTF-8.
fn outgoing(line: Option<&[u8]>, binary: bool) -> Option<Message> {
    Some(match line {
        Some(line) if binary => Message::binary(line.to_vec()),
        Some(line) => Message::text(std::str::from_utf8(line).ok()?),
        None => Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })),
    })
}

/// Print a message; at --count, start the close.
async fn deliver(
    out: &Output,
    bytes: &[u8],
    args: &ClientArgs,
    received: &mut u64,
    ws: &mut Ws,
    close_deadline: &mut Option<Instant>,
) -> Option<Failure> {
    if let Err(e) = out.message(bytes) {
        return Some(Failure::new(Exit::Other, format!("stdout: {e}")));
    }
    *received += 1;
    if close_deadline.is_none() && args.count().is_some_and(|n| *received >= n) {
        *close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if let Err(e) = send(ws, Message::Close(Some(bye))).await {
            return Some(e);
        }
    }
    None
}

async fn send(ws: &mut Ws, message: Message) -> Result<(), Failure> {
    match timeout(SEND_TIMEOUT, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(
            Exit::Abnormal,
            format!("connection lost: {e}"),
        )),
        Err(_) => Err(Failure::new(
            Exit::Abnormal,
            "the server stopped reading (send timed out)",
        )),
    }
}

/// The session is over: clean if the close code was 1000.
fn ended(frame: Option<Option<CloseFrame>>, we_closed: bool) -> Failure {
    match frame {
        Some(Some(frame)) => {
            let code = u16::from(frame.code);
            let text = format!("closed: {code} {}", frame.reason)
                .trim_end()
                .to_owned();
            let exit = if code == 1000 {
                Exit::Clean
            } else {
                Exit::Abnormal
            };
            Failure::new(exit, text)
        }
        Some(None) if we_closed => Failure::new(Exit::Clean, "closed"),
        Some(None) => Failure::new(Exit::Abnormal, "closed without a status code"),
        None => Failure::new(Exit::Abnormal, "connection dropped without a close"),
    }
}
