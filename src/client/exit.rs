//! How `wsgate client` ends, as an exit status a script can test: one code
//! per kind of failure, each with its line in `--help`.

use std::process::ExitCode;

/// Shown under `wsgate client --help`; the README repeats it.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0  clean close: the server closed with 1000, or stdin ended / --count was reached and the close handshake completed
  1  any other error (bad URL, bad --ca file, stdout closed)
  2  bad command line
  3  handshake refused: the server answered the upgrade with an HTTP status (404, 400, 403, ...) or a bad subprotocol
  4  TLS failure: certificate not trusted, wrong name, no common protocol
  5  proxy failure: the proxy could not be reached, or refused the CONNECT (407, 403, 502, ...)
  6  abnormal close: a close code other than 1000, the connection dropped without a close, or no pong to --ping
  7  could not connect: name not resolved, connection refused, or --connect-timeout passed";

/// Why a connection attempt or a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Clean,
    Other,
    Refused,
    Tls,
    Proxy,
    Abnormal,
    Connect,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::Other => 1,
            Exit::Refused => 3,
            Exit::Tls => 4,
            Exit::Proxy => 5,
            Exit::Abnormal => 6,
            Exit::Connect => 7,
        }
    }

    /// Can another attempt help? (A bad URL or file, never.)
    pub fn retryable(self) -> bool {
        match self {
            Exit::Clean
            | Exit::Refused
            | Exit::Tls
            | Exit::Proxy
            | Exit::Abnormal
            | Exit::Connect => true,
            Exit::Other => false,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_and_documented() {
        let all = [
            Exit::Clean,
            Exit::Other,
            Exit::Refused,
            Exit::Tls,
            Exit::Proxy,
            Exit::Abnormal,
            Exit::Connect,
        ];
        for (i, e) in all.iter().enumerate() {
            assert!(all[..i].iter().all(|o| o.code() != e.code()), "{e:?}");
            let line = format!("\n  {}  ", e.code());
            assert!(EXIT_CODES_HELP.contains(&line), "{e:?}");
        }
    }
}
