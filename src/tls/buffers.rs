//! The TLS stream's own buffers: ciphertext waiting for the socket,
//! decrypted bytes the reader has not taken, and sealing one record at a
//! time in a per-thread scratch buffer. Kept apart from `stream.rs`, which
//! drives rustls' state machine and the socket, so that each buffer's bound
//! and memory rule can be read on its own.

use std::io::IoSlice;

use rustls::unbuffered::{
    EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, WriteTraffic,
};
use tokio::io::ReadBuf;

/// Per-record room reserved when encrypting (header, nonce, tag, type).
const RECORD_OVERHEAD: usize = 64;

/// Ciphertext waiting for the socket: `buf[head..tail]`. `buf` is
/// initialized up to its length, so it is zero-filled only when it grows.
#[derive(Default)]
pub(super) struct Outgoing {
    buf: Vec<u8>,
    head: usize,
    tail: usize,
}

impl Outgoing {
    /// The memory held.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    pub(super) fn len(&self) -> usize {
        self.tail - self.head
    }

    pub(super) fn unsent(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }

    pub(super) fn sent(&mut self, n: usize) {
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
    pub(super) fn room(&mut self, n: usize) -> &mut [u8] {
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

    pub(super) fn encode(
        &mut self,
        data: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    ) {
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
    pub(super) fn push(&mut self, bytes: &[u8]) {
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

    pub(super) fn close_notify(
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
pub(super) const MAX_FRAGMENT: usize = 16 << 10;

thread_local! {
    /// Where writes are sealed (and gathered first): kept per thread, so a
    /// write allocates nothing and zero-fills nothing once the thread's
    /// scratch has grown to one record, and a connection holds nothing.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` with this thread's scratch buffer; borrowed only for one poll call
/// (never across an await). A TLS stream inside a tunnel of another writes
/// through it while the scratch is taken: that nested write gets its own.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Seal one record of `bufs`' bytes from `skip` on (up to
/// [`MAX_FRAGMENT`]; several small buffers are gathered into it) into the
/// start of `scratch`. Returns the plaintext bytes taken and the ciphertext
/// length (with a key update answer rustls puts before it).
pub(super) fn seal(
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
pub(super) struct Plaintext {
    bytes: Vec<u8>,
    read: usize,
}

impl Plaintext {
    /// The memory held.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Hand over a decrypted record: into `dst` as far as it fits (when
    /// nothing waits before it), the rest kept.
    pub(super) fn take(&mut self, payload: &[u8], dst: Option<&mut ReadBuf<'_>>) {
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
    pub(super) fn give(&mut self, dst: &mut ReadBuf<'_>) {
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
