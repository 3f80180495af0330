//! `wsgate client URL`: a command-line WebSocket client in the spirit of
//! websocat and wscat. Lines on stdin become messages, messages received go
//! to stdout (one per line), events go to stderr. It reconnects when told
//! to, tunnels through an HTTP proxy's CONNECT, and ends with an exit
//! status a script can test (`exit.rs`).

mod dial;
mod exit;
mod options;
mod session;

use std::process::ExitCode;

use tokio::sync::mpsc;

pub use exit::{EXIT_CODES_HELP, Exit};
pub use options::ClientArgs;

use dial::Failure;
use session::{Output, Stdin};

/// Run the client to its end; the exit status says how it ended.
pub fn main(args: ClientArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate client: {e}");
            return Exit::Other.into();
        }
    };
    let exit = runtime.block_on(run(args));
    // stdin's reader thread may be blocked in a read: do not wait for it.
    runtime.shutdown_background();
    std::process::exit(i32::from(exit.code()))
}

async fn run(args: ClientArgs) -> Exit {
    let dialer = match args.dialer() {
        Ok(dialer) => dialer,
        Err(Failure { exit, message }) => {
            eprintln!("wsgate client: {message}");
            return exit;
        }
    };
    let output = Output::new(args.interactive());
    let (lines_tx, lines) = mpsc::channel(64);
    session::read_stdin(lines_tx);
    let mut stdin = Stdin::new(lines);
    let mut received = 0u64;
    let mut delay = args.reconnect_delay();
    loop {
        let ended = match dialer.connect().await {
            Ok((ws, response)) => {
                let protocol = response
                    .headers()
                    .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|p| p.to_str().ok())
                    .map(|p| format!(" (subprotocol {p})"))
                    .unwrap_or_default();
                output.event(&format!("connected to {}{protocol}", args.url));
                delay = args.reconnect_delay();
                session::run(ws, &args, &output, &mut stdin, &mut received).await
            }
            Err(failure) => failure,
        };
        output.event(&ended.message);
        let done = stdin.finished() || args.count().is_some_and(|n| received >= n);
        let Some(base) = delay.filter(|_| !done && ended.exit.retryable()) else {
            return ended.exit;
        };
        let wait = args.jittered(base);
        output.event(&format!(
            "disconnected, reconnecting in {}",
            humantime::format_duration(round(wait))
        ));
        tokio::time::sleep(wait).await;
        delay = Some(args.next_delay(base));
    }
}

/// A delay as people read it: whole milliseconds.
fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis() as u64)
}
