//! A read buffer that is small while its connection is idle, doubles while
//! reads fill it, and goes back to small when the burst is over: a session
//! that once carried a large message does not keep the memory for it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What an idle direction holds: enough for a few small frames per read.
pub const IDLE: usize = 512;
/// The most a burst may grow it to: one read takes at most this much.
pub const MAX: usize = 16 << 10;

#[derive(Debug)]
pub struct ReadBuffer {
    bytes: Vec<u8>,
    /// `bytes[..filled]` holds what was read and not yet consumed.
    filled: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            bytes: vec![0; IDLE],
            filled: 0,
        }
    }
}

impl ReadBuffer {
    /// Read more after what is held; `Ok(0)` is the end of the stream. A
    /// read that fills the buffer doubles it for the next (up to [`MAX`]);
    /// a short read with nothing held shrinks it back to [`IDLE`].
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> io::Result<usize> {
        if self.filled == self.bytes.len() {
            // A frame's start is held and needs more room (at most a
            // header or a control frame: well under IDLE), or a burst.
            self.resize((self.bytes.len() * 2).clamp(IDLE, MAX.max(self.filled + 1)));
        }
        let n = src.read(&mut self.bytes[self.filled..]).await?;
        self.filled += n;
        Ok(n)
    }

    /// Hold `bytes` as if they had been read (what came with a handshake).
    pub fn preload(&mut self, bytes: &[u8]) {
        if self.bytes.len() < self.filled + bytes.len() {
            self.resize(self.filled + bytes.len());
        }
        self.bytes[self.filled..self.filled + bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    /// The bytes held.
    pub fn data(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.filled]
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Drop the first `n` bytes held, keeping the rest at the front; then
    /// size the buffer for what comes next.
    pub fn consume(&mut self, n: usize) {
        self.bytes.copy_within(n..self.filled, 0);
        self.filled -= n;
        let capacity = self.bytes.len();
        if self.filled == 0 && capacity > IDLE && n < capacity / 4 {
            // The last read was short: the burst is over.
            self.resize(IDLE);
        } else if self.filled == 0 && n == capacity && capacity < MAX {
            // The last read filled it: more is probably waiting.
            self.resize((capacity * 2).min(MAX));
        }
    }

    fn resize(&mut self, capacity: usize) {
        let mut bytes = vec![0; capacity];
        bytes[..self.filled].copy_from_slice(&self.bytes[..self.filled]);
        self.bytes = bytes;
    }

    /// The memory this buffer holds.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_for_a_burst_and_shrinks_after() {
        let mut buf = ReadBuffer::default();
        let burst = vec![7u8; 64 << 10];
        let mut src: &[u8] = &burst;
        let (mut total, mut largest) = (0, 0);
        while total < burst.len() {
            total += buf.read_from(&mut src).await.unwrap();
            largest = largest.max(buf.capacity());
            let held = buf.data().len();
            buf.consume(held);
        }
        assert_eq!(largest, MAX, "grew while reads filled it");
        let mut small: &[u8] = &[1, 2, 3];
        buf.read_from(&mut small).await.unwrap();
        assert_eq!(buf.data(), &[1, 2, 3]);
        buf.consume(3);
        assert_eq!(buf.capacity(), IDLE, "back to small after a short read");
    }

    #[tokio::test]
    async fn a_partial_frame_stays_at_the_front() {
        let mut buf = ReadBuffer::default();
        let mut src: &[u8] = &[1, 2, 3, 4, 5];
        buf.read_from(&mut src).await.unwrap();
        buf.consume(2);
        assert_eq!(buf.data(), &[3, 4, 5]);
        let mut more: &[u8] = &[6];
        buf.read_from(&mut more).await.unwrap();
        assert_eq!(buf.data(), &[3, 4, 5, 6]);
    }
}
