//! UTF-8 checked as text passes, across reads and fragments.

use super::Violation;

/// UTF-8 validated across chunk and frame boundaries: a character split
/// between two frames is held (at most 3 bytes) until its end arrives.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: [u8; 4],
    held: u8,
}

impl Utf8Stream {
    /// Validate the next bytes of the text.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        // First complete a character held from the last chunk.
        while self.held > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return Ok(());
            };
            self.pending[self.held as usize] = b;
            self.held += 1;
            bytes = rest;
            let held = &self.pending[..self.held as usize];
            match std::str::from_utf8(held) {
                Ok(_) => self.held = 0,
                Err(e) if e.error_len().is_some() => return Err(Violation::InvalidUtf8),
                Err(_) if self.held == 4 => return Err(Violation::InvalidUtf8),
                Err(_) => {}
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Violation::InvalidUtf8),
            Err(e) => {
                // An incomplete character at the end: hold it.
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.held = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The text ended: nothing may be held.
    pub fn finish(&mut self) -> Result<(), Violation> {
        let complete = self.held == 0;
        self.held = 0;
        if complete {
            Ok(())
        } else {
            Err(Violation::InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_checked_across_boundaries() {
        let text = "aé€😀z".as_bytes();
        for split in 0..=text.len() {
            let mut v = Utf8Stream::default();
            v.feed(&text[..split]).unwrap();
            v.feed(&text[split..]).unwrap();
            v.finish().unwrap();
        }
        // One byte at a time.
        let mut v = Utf8Stream::default();
        for b in text {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
        // Invalid as soon as it is invalid; truncated at the end.
        assert!(Utf8Stream::default().feed(&[0xCE, 0xBA, 0xFF]).is_err());
        let mut v = Utf8Stream::default();
        v.feed(&[0xF0, 0x9F]).unwrap();
        assert!(v.feed(&[0x41]).is_err());
        let mut v = Utf8Stream::default();
        v.feed(&[0xE2, 0x82]).unwrap();
        assert_eq!(v.finish(), Err(Violation::InvalidUtf8));
        // Surrogates and overlong forms are not UTF-8.
        assert!(Utf8Stream::default().feed(&[0xED, 0xA0, 0x80]).is_err());
        assert!(Utf8Stream::default().feed(&[0xC0, 0xAF]).is_err());
    }
}
