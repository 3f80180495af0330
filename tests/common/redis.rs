//! A real `redis-server` per test, for the hub's backplane: on loopback,
//! with persistence off, in its own temporary directory, killed when
//! dropped. Its port is never probed and released: the server is started
//! on a random port below the ephemeral range and, if that one is taken ("Address already in
//! use"), started again on another. Ready means it logged that it accepts
//! connections, not that some time passed.
//!
//! Absent `redis-server`: outside CI the test is skipped with a loud
//! message (`Redis::start` returns `None`); in CI (`CI=true`) it fails,
//! since scripts/test installs Debian's package.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a starting server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);
const TRIES: usize = 20;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The arguments beyond the defaults (a TLS listener, ACL users).
    extra: Vec<String>,
}

/// What one start attempt came to.
enum Started {
    Ready(Child),
    PortTaken,
}

impl Redis {
    /// A fresh server, or `None` (after a loud message) where the test
    /// should be skipped. Blocks until the server is ready (a few
    /// milliseconds): call it before starting what uses it.
    pub fn start() -> Option<Redis> {
        Redis::start_with(Vec::new())
    }

    /// A fresh server with more arguments; `{port}` in them is its port
    /// (`--port 0 --tls-port {port} ...` serves TLS only).
    pub fn start_with(extra: Vec<String>) -> Option<Redis> {
        if !installed() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "redis-server is not installed: scripts/test installs it"
            );
            // Straight to stderr: the test harness hides what a passing
            // test prints with eprintln!.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"\n*** SKIPPED: redis-server is not installed (run scripts/test, \
                  which installs Debian's redis-server) ***\n",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..TRIES {
            // Below the kernel's ephemeral range (32768-60999 by default),
            // so no client socket takes it while a restart waits for it.
            let port = rand::random_range(10_000..32_000);
            if let Started::Ready(child) = spawn(port, dir.path(), &extra) {
                return Some(Redis {
                    child: Some(child),
                    port,
                    dir,
                    extra,
                });
            }
        }
        panic!("redis-server found no free port in {TRIES} tries");
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kill the server (as a crash would): its clients see the connection
    /// drop, and its data (persistence is off) is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again, empty, on the same port (a restart the clients must
    /// come back from). Panics if another process took the port meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        match spawn(self.port, self.dir.path(), &self.extra) {
            Started::Ready(child) => self.child = Some(child),
            Started::PortTaken => panic!("port {} was taken while Redis was down", self.port),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Start redis-server on `port` and wait for its verdict in its log.
fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Started {
    let port = port.to_string();
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra.iter().map(|a| a.replace("{port}", &port)))
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "", "--loglevel", "notice"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let verdict = if line.contains("Ready to accept connections") {
                Some(true)
            } else if line.contains("Address already in use") {
                Some(false)
            } else {
                None
            };
            if let Some(ready) = verdict {
                let _ = tx.send(ready);
            }
        }
    });
    match rx.recv_timeout(READY_WITHIN) {
        Ok(true) => Started::Ready(child),
        Ok(false) => {
            let _ = child.kill();
            let _ = child.wait();
            Started::PortTaken
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} exited, or was not ready in {READY_WITHIN:?}")
        }
    }
}
