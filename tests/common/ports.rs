//! Ports a test needs with nothing serving on them. A port is never probed,
//! released and bound again (another test could be given it in between): it
//! stays held by this test's socket for as long as the test runs.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// A loopback port bound by this test but not listening: connections to it
/// are refused, and no other socket can be given it. `listen` opens it later
/// (a member coming back on its port) without binding again.
pub struct ClosedPort {
    socket: TcpSocket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        ClosedPort { socket, addr }
    }

    /// Start listening on the held port.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).unwrap()
    }
}
