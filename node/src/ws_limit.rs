//! Refuses a WebSocket frame by the length its header announces, before its payload is
//! read. actix-http's parser checks its size limit only once the whole frame has arrived, so
//! a client announcing a terabyte frame made the node buffer whatever it sent until then
//! (found by tests/tests/fuzz_signaling.rs: a header claiming 3 MB held the socket open).
//! [`FrameLimit`] follows the client's frame headers in the raw byte stream and ends the
//! stream with [`PayloadError::Overflow`] at the first header announcing more than the
//! limit; the session answers that with an error and a 1009 close.

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Where the scanner is in the client's frame stream.
#[derive(Debug, Default)]
struct Scanner {
    /// The bytes of the current frame header seen so far (at most 14).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
}

impl Scanner {
    /// Follows `chunk`; the announced length of the first frame over `max`, if any.
    fn scan(&mut self, chunk: &[u8], max: u64) -> Option<u64> {
        let mut i = 0;
        while i < chunk.len() {
            if self.skip > 0 {
                let n = self.skip.min((chunk.len() - i) as u64);
                self.skip -= n;
                i += n as usize;
                continue;
            }
            self.header.push(chunk[i]);
            i += 1;
            let Some((len, size)) = header_len(&self.header) else {
                continue;
            };
            if self.header.len() < size {
                continue;
            }
            self.header.clear();
            if len > max {
                return Some(len);
            }
            self.skip = len;
        }
        None
    }
}

/// The payload length and the header's size, once enough of the header is known to tell.
fn header_len(h: &[u8]) -> Option<(u64, usize)> {
    let second = *h.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (len, size) = match second & 0x7f {
        126 => {
            let b = h.get(2..4)?;
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let b: [u8; 8] = h.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    Some((len, size + mask))
}

/// A client's byte stream, ended at the first frame announced larger than `max`.
pub struct FrameLimit<S> {
    inner: S,
    max: u64,
    scanner: Scanner,
    failed: bool,
}

impl<S> FrameLimit<S> {
    pub fn new(inner: S, max: usize) -> Self {
        FrameLimit {
            inner,
            max: max as u64,
            scanner: Scanner::default(),
            failed: false,
        }
    }
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(len) = this.scanner.scan(&chunk, this.max) {
                    tracing::info!(
                        len,
                        max = this.max,
                        "websocket frame announced over the limit"
                    );
                    this.failed = true;
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

/// Whether a WebSocket stream error is [`FrameLimit`]'s refusal.
pub fn is_overflow(e: &actix_ws::ProtocolError) -> bool {
    match e {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<PayloadError>())
            .is_some_and(|p| matches!(p, PayloadError::Overflow)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u64, masked: bool) -> Vec<u8> {
        let m = if masked { 0x80 } else { 0 };
        let mut f = vec![0x81];
        if len < 126 {
            f.push(m | len as u8);
        } else if len <= 0xffff {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_chunking() {
        let mut bytes = Vec::new();
        for len in [0u64, 5, 125, 126, 300, 70_000] {
            bytes.extend(frame(len, true));
            bytes.extend(std::iter::repeat_n(b'x', len as usize));
        }
        for chunk in [1usize, 3, 7, 1000, bytes.len()] {
            let mut s = Scanner::default();
            for c in bytes.chunks(chunk) {
                assert_eq!(s.scan(c, 100_000), None, "chunks of {chunk}");
            }
            assert!(s.header.is_empty() && s.skip == 0);
        }
    }

    #[test]
    fn an_announced_oversize_frame_is_refused_at_its_header() {
        let mut bytes = frame(10, true);
        bytes.extend(b"0123456789");
        bytes.extend(frame(3_000_000, true));
        for chunk in [1usize, 2, 5, bytes.len()] {
            let mut s = Scanner::default();
            let got = bytes.chunks(chunk).find_map(|c| s.scan(c, 2 * 1024 * 1024));
            assert_eq!(got, Some(3_000_000), "chunks of {chunk}");
        }
        let mut s = Scanner::default();
        assert_eq!(
            s.scan(&frame(u64::MAX >> 1, false), 10),
            Some(u64::MAX >> 1)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_scanned_without_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut s = Scanner::default();
            for c in data.chunks(7) {
                let _ = s.scan(c, 1000);
            }
        }
    }
}
