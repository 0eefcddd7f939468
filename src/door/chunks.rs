//! A cap on `aws-chunked` chunk sizes, in front of s3s (which buffers each chunk whole to
//! check its signature, with no cap of its own), and the body idle timeout for such bodies.
//!
//! The wrapper passes every frame through unchanged and follows the framing as it goes:
//! `<hex size>[;chunk-signature=...]\r\n<data>\r\n` ... `0[;...]\r\n<trailers>\r\n`. A chunk
//! that declares more than [`MAX_CHUNK`] fails the body at its header, before its data is
//! read; so does a header line or a trailer section longer than any client sends.
//!
//! The idle timeout is watched here, on the bytes as the client sends them: after s3s, a
//! chunk arrives only once it is whole, and a slow client sending a large chunk would look
//! idle while its bytes flow.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::error::ApiError;
use crate::limits::BodyFailure;
use crate::{Body, BoxError};

/// The largest chunk the door takes.
pub const MAX_CHUNK: u64 = 16 * 1024 * 1024;
/// A chunk header is a size and one signature (about 90 bytes).
const MAX_HEADER_LINE: usize = 4096;
/// The trailer section: a checksum and its signature.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk header: the size so far, whether its digits ended, the line's length.
    Header {
        size: u64,
        digits_done: bool,
        len: usize,
    },
    /// Inside a chunk's data and its closing CRLF.
    Data { left: u64 },
    /// After the last chunk.
    Trailers { seen: usize },
}

/// Follows the framing of `aws-chunked` bytes; see the module documentation.
#[derive(Debug)]
pub(super) struct Framing {
    state: State,
}

impl Default for Framing {
    fn default() -> Self {
        Self {
            state: State::Header {
                size: 0,
                digits_done: false,
                len: 0,
            },
        }
    }
}

impl Framing {
    /// Follows `bytes`; an error says why the body is refused.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Data { left } => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.state = State::Header {
                            size: 0,
                            digits_done: false,
                            len: 0,
                        };
                    }
                }
                State::Trailers { seen } => {
                    *seen += bytes.len();
                    if *seen > MAX_TRAILERS {
                        return Err("the trailers are too long");
                    }
                    return Ok(());
                }
                State::Header {
                    size,
                    digits_done,
                    len,
                } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    *len += 1;
                    if *len > MAX_HEADER_LINE {
                        return Err("a chunk header is too long");
                    }
                    if b == b'\n' {
                        if *len == 1 {
                            return Err("a chunk header is empty");
                        }
                        let size = *size;
                        self.state = if size == 0 {
                            State::Trailers { seen: 0 }
                        } else {
                            State::Data { left: size + 2 }
                        };
                        continue;
                    }
                    if *digits_done {
                        continue;
                    }
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            *size = size.saturating_mul(16).saturating_add(u64::from(d));
                            if *size > MAX_CHUNK {
                                return Err("a chunk is larger than 16 MiB");
                            }
                        }
                        None if *len == 1 => return Err("a chunk header has no size"),
                        None => *digits_done = true,
                    }
                }
            }
        }
        Ok(())
    }
}

/// Why an aws-chunked body failed before the operation saw it, for the operation to answer
/// with: s3s wraps the body's errors without keeping them as sources, so the failure is
/// passed beside them.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawFailure(Arc<OnceLock<Raw>>);

#[derive(Clone, Copy, Debug)]
enum Raw {
    /// [`ChunkCap`] failed the client's bytes.
    Body(BodyFailure),
    /// s3s found a chunk (or the trailer) whose signature does not match.
    Signature,
}

impl RawFailure {
    /// `err`, or the body's own failure when the raw body failed first.
    pub(crate) fn blame(&self, err: ApiError) -> ApiError {
        match self.0.get() {
            Some(Raw::Body(f)) => ApiError::from(*f).detail(&err).caused_by(err),
            _ => err,
        }
    }

    /// Did a chunk's signature fail to match?
    pub(crate) fn signature_failed(&self) -> bool {
        matches!(self.0.get(), Some(Raw::Signature))
    }

    /// Notes an error of the decoded body: s3s reports a chunk whose signature does not match
    /// as `AwsChunkedStreamError: SignatureMismatch`, and a body that does not match its
    /// signed SHA-256 as `UploadStreamError: Sha256Mismatch` (s3s is pinned; tests hold both).
    pub(crate) fn decoded_error(&self, e: &(dyn std::error::Error + 'static)) {
        let text = e.to_string();
        if text.contains("SignatureMismatch") {
            let _ = self.0.set(Raw::Signature);
        } else if text.contains("Sha256Mismatch") {
            let _ = self.0.set(Raw::Body(BodyFailure::BadDigest));
        }
    }
}

/// The request body with its chunk sizes capped and its pauses timed.
pub(super) struct ChunkCap {
    inner: Body,
    framing: Framing,
    failed: bool,
    idle: Duration,
    /// Armed while waiting on the client.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    raw: RawFailure,
}

impl ChunkCap {
    pub(super) fn new(inner: Body, idle: Duration, raw: RawFailure) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            failed: false,
            idle,
            timer: None,
            raw,
        }
    }

    fn fail(&mut self, failure: BodyFailure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        self.timer = None;
        let _ = self.raw.0.set(Raw::Body(failure));
        Poll::Ready(Some(Err(Box::new(failure))))
    }
}

impl http_body::Body for ChunkCap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            let idle = this.idle;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            ready!(timer.as_mut().poll(cx));
            return this.fail(BodyFailure::Idle);
        }
        this.timer = None;
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Err(why) = this.framing.feed(data)
        {
            tracing::debug!(why, "aws-chunked body refused");
            return this.fail(if why.contains("16 MiB") {
                BodyFailure::TooLarge
            } else {
                BodyFailure::Client
            });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn follow(parts: &[&[u8]]) -> Result<(), &'static str> {
        let mut f = Framing::default();
        for p in parts {
            f.feed(p)?;
        }
        Ok(())
    }

    #[test]
    fn signed_and_unsigned_framings_pass() {
        let sig = "a".repeat(64);
        let body = format!(
            "10000;chunk-signature={sig}\r\n{}\r\n400;chunk-signature={sig}\r\n{}\r\n0;chunk-signature={sig}\r\n\r\n",
            "x".repeat(0x10000),
            "y".repeat(0x400)
        );
        follow(&[body.as_bytes()]).unwrap();
        let trailer = "5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n";
        follow(&[trailer.as_bytes()]).unwrap();
    }

    #[test]
    fn a_chunk_over_16_mib_is_refused_at_its_header() {
        assert_eq!(
            follow(&[b"1000001;chunk-signature=abc\r\n"]),
            Err("a chunk is larger than 16 MiB")
        );
        // Exactly 16 MiB is taken.
        follow(&[b"1000000\r\n"]).unwrap();
        // Split anywhere, and with leading zeros that overflow nothing.
        assert!(follow(&[b"100", b"0001\r\n"]).is_err());
        assert!(follow(&[b"ffffffffffffffffffffffff"]).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(follow(&[b"\r\n"]).is_err());
        assert!(follow(&[b"\n"]).is_err());
        assert!(follow(&[&[b'0'; 5000]]).is_err());
        let mut long = b"0\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_TRAILERS + 1));
        assert!(follow(&[&long]).is_err());
    }

    proptest! {
        /// However the bytes are split into frames, the framing is followed the same way.
        #[test]
        fn splitting_changes_nothing(sizes in proptest::collection::vec(1usize..3000, 1..6), cut in 1usize..64) {
            let mut body = Vec::new();
            for s in &sizes {
                body.extend(format!("{s:x};chunk-signature=00\r\n").as_bytes());
                body.extend(std::iter::repeat_n(b'z', *s));
                body.extend(b"\r\n");
            }
            body.extend(b"0\r\n\r\n");
            let parts: Vec<&[u8]> = body.chunks(cut).collect();
            prop_assert!(follow(&parts).is_ok());
            let mut f = Framing::default();
            for p in &parts { f.feed(p).unwrap(); }
            let ended = matches!(f.state, State::Trailers { .. });
            prop_assert!(ended);
        }
    }
}
