//! A read buffer sized by what the connection is doing: each read may take
//! about twice what the last one brought (at least [`IDLE`], at most
//! [`MAX`]), so a busy connection reads a whole batch in one call and an
//! idle one holds a few hundred bytes; a session that once carried a large
//! message does not keep the memory for it. Reads go into spare capacity,
//! which is never zero-filled. Consumed bytes are skipped, not moved: what
//! is left is moved to the front only when a read needs the room.
//!
//! The TLS front (`tls::stream`) keeps its ciphertext here too, and lets the
//! memory go entirely ([`ReadBuffer::release`]) while the peer is quiet.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncRead;

/// What an idle direction holds: enough for a few small frames per read.
pub const IDLE: usize = 256;
/// The most one read takes.
pub const MAX: usize = 64 << 10;

#[derive(Debug)]
pub struct ReadBuffer {
    /// What was read; `bytes[start..]` is not consumed yet. Its capacity
    /// is the buffer.
    bytes: Vec<u8>,
    start: usize,
    /// The size of the last read: the next may take about twice as much.
    last: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            bytes: Vec::with_capacity(IDLE),
            start: 0,
            last: 0,
        }
    }
}

impl ReadBuffer {
    /// Read more after what is held; `Ok(0)` is the end of the stream.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_from(cx, src)).await
    }

    /// [`ReadBuffer::read_from`] as a poll: one read into spare capacity.
    pub fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
    ) -> Poll<io::Result<usize>> {
        self.poll_read_at_most(cx, src, usize::MAX)
    }

    /// One read of at most `limit` bytes (at least 1), into spare capacity;
    /// the buffer grows by at most that much.
    pub fn poll_read_at_most<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        let limit = limit.max(1);
        let want = self.want().min(limit);
        if self.bytes.capacity() - self.bytes.len() < want {
            // Busier than it is big, or a frame's start waits for its rest.
            if self.start > 0 {
                self.bytes.drain(..self.start);
                self.start = 0;
            }
            if self.bytes.capacity() - self.bytes.len() < want {
                self.bytes.reserve_exact(want);
            }
        }
        let mut room = bytes::BufMut::limit(&mut self.bytes, limit);
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(src), cx, &mut room))?;
        self.last = n;
        Poll::Ready(Ok(n))
    }

    /// Hold `bytes` as if they had been read (what came with a handshake).
    pub fn preload(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The bytes held.
    pub fn data(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.bytes.len()
    }

    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Drop the first `n` bytes held, keeping the rest; when nothing is
    /// left and the last read was small for the buffer, give the memory
    /// back.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.bytes.len());
        if self.start >= self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
            let want = self.want();
            if self.bytes.capacity() > 2 * want {
                self.bytes = Vec::with_capacity(want);
            }
        }
    }

    /// While nothing is held, hold no memory either (the peer is quiet).
    /// The next read allocates what the last one suggests, so a busy
    /// connection still reads in big steps.
    pub fn release(&mut self) {
        if self.is_empty() && self.bytes.capacity() > 0 {
            self.bytes = Vec::new();
            self.start = 0;
        }
    }

    /// While the peer is quiet in the middle of a record, hold no more than
    /// that record's start: a buffer grown for a burst goes.
    pub fn shrink_to_held(&mut self, bound: usize) {
        if self.bytes.capacity() > bound.max(self.len()) {
            self.bytes.drain(..self.start);
            self.start = 0;
            self.bytes.shrink_to_fit();
        }
    }

    /// Let the next read take at least `n` bytes (up to [`MAX`]): for a
    /// peer known to send that much at once (a TLS ClientHello).
    pub fn expect(&mut self, n: usize) {
        self.last = self.last.max(n.div_ceil(2));
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

    #[tokio::test]
    async fn consumed_bytes_make_room_before_the_buffer_grows() {
        let mut buf = ReadBuffer::default();
        let first = vec![1u8; IDLE];
        buf.read_from(&mut &first[..]).await.unwrap();
        buf.consume(IDLE - 2);
        assert_eq!(buf.len(), 2);
        let mut more: &[u8] = &[9; 10];
        buf.read_from(&mut more).await.unwrap();
        assert_eq!(buf.data(), &[1, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        buf.consume(12);
        assert!(buf.is_empty());
        buf.release();
        assert_eq!(buf.capacity(), 0);
        let mut again: &[u8] = &[5, 6];
        buf.read_from(&mut again).await.unwrap();
        assert_eq!(buf.data(), &[5, 6]);
    }
}
