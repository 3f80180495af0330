//! A read buffer sized by what the connection is doing: each read may take
//! about twice what the last one brought (at least [`IDLE`], at most
//! [`MAX`]), so a busy connection reads a whole batch in one call and an
//! idle one holds a few hundred bytes; a session that once carried a large
//! message does not keep the memory for it. Reads go into spare capacity,
//! which is never zero-filled.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What an idle direction holds: enough for a few small frames per read.
pub const IDLE: usize = 256;
/// The most one read takes.
pub const MAX: usize = 64 << 10;

#[derive(Debug)]
pub struct ReadBuffer {
    /// What was read and not yet consumed; its capacity is the buffer.
    bytes: Vec<u8>,
    /// The size of the last read: the next may take about twice as much.
    last: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            bytes: Vec::with_capacity(IDLE),
            last: 0,
        }
    }
}

impl ReadBuffer {
    /// Read more after what is held; `Ok(0)` is the end of the stream.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> io::Result<usize> {
        let want = self.want();
        if self.bytes.capacity() - self.bytes.len() < want {
            // Busier than it is big, or a frame's start waits for its rest.
            self.bytes.reserve_exact(want);
        }
        let n = src.read_buf(&mut self.bytes).await?;
        self.last = n;
        Ok(n)
    }

    /// Hold `bytes` as if they had been read (what came with a handshake).
    pub fn preload(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The bytes held.
    pub fn data(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Drop the first `n` bytes held, keeping the rest at the front; when
    /// nothing is left and the last read was small for the buffer, give the
    /// memory back.
    pub fn consume(&mut self, n: usize) {
        self.bytes.drain(..n);
        let want = self.want();
        if self.bytes.is_empty() && self.bytes.capacity() > 2 * want {
            self.bytes = Vec::with_capacity(want);
        }
    }

    /// What the next read may take: about twice the last.
    fn want(&self) -> usize {
        (self.last * 2).clamp(IDLE, MAX)
    }

    /// The memory this buffer holds.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_for_a_burst_and_shrinks_after() {
        let mut buf = ReadBuffer::default();
        let burst = vec![7u8; 256 << 10];
        let mut src: &[u8] = &burst;
        let (mut total, mut largest) = (0, 0);
        while total < burst.len() {
            total += buf.read_from(&mut src).await.unwrap();
            largest = largest.max(buf.capacity());
            let held = buf.data().len();
            buf.consume(held);
        }
        assert!(largest >= MAX, "grew while reads filled it: {largest}");
        for _ in 0..2 {
            let mut small: &[u8] = &[1, 2, 3];
            buf.read_from(&mut small).await.unwrap();
            assert_eq!(buf.data(), &[1, 2, 3]);
            buf.consume(3);
        }
        assert!(
            buf.capacity() <= 2 * IDLE,
            "small again: {}",
            buf.capacity()
        );
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
