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
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::error::ApiError;
use crate::limits::{BodyFailure, IdleTimer};
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
    Data { left: u64, size: u64 },
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
    /// The declared size of the chunk being received, or 0 between chunks.
    fn open_chunk(&self) -> u64 {
        match self.state {
            State::Data { size, .. } => size,
            _ => 0,
        }
    }

    /// Follows `bytes`; an error says why the body is refused.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Data { left, .. } => {
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
                            State::Data {
                                left: size + 2,
                                size,
                            }
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
    /// No room in the chunk budget freed up in time.
    Busy,
}

impl RawFailure {
    /// `err`, or the body's own failure when the raw body failed first.
    pub(crate) fn blame(&self, err: ApiError) -> ApiError {
        match self.0.get() {
            Some(Raw::Body(f)) => ApiError::from(*f).detail(&err).caused_by(err),
            Some(Raw::Busy) => ApiError::new(
                crate::error::Code::Overloaded,
                "the gateway's memory for incoming chunks is in use; retry",
            )
            .caused_by(err),
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

/// How long a chunk may wait for room in the budget before the upload is refused.
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// A frame held back until its chunk has room.
struct Waiting {
    frame: Frame<Bytes>,
    need: usize,
    acquire:
        Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The request body with its chunk sizes capped, its pauses timed, and the chunk s3s is
/// gathering counted in the door's memory budget (`backend.upload_buffer_memory`): from a
/// chunk's header to its last byte, the upload holds room for its declared size, and waits
/// for room (reading nothing more) when there is none; if none frees up in 2 s, the upload
/// is refused `503 SlowDown`.
pub(super) struct ChunkCap {
    inner: Body,
    framing: Framing,
    failed: bool,
    idle: IdleTimer,
    raw: RawFailure,
    room: Arc<Semaphore>,
    /// Bytes of room held for the chunk being received.
    held: usize,
    waiting: Option<Waiting>,
}

impl ChunkCap {
    pub(super) fn new(inner: Body, idle: Duration, raw: RawFailure, room: Arc<Semaphore>) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            failed: false,
            idle: IdleTimer::new(Some(idle)),
            raw,
            room,
            held: 0,
            waiting: None,
        }
    }

    fn fail(&mut self, failure: BodyFailure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        self.idle.reset();
        self.waiting = None;
        let _ = self.raw.0.set(Raw::Body(failure));
        Poll::Ready(Some(Err(Box::new(failure))))
    }

    /// Holds room for the open chunk before `frame` goes on; `Some(frame)` when it may go now.
    fn make_room(&mut self, frame: Frame<Bytes>) -> Option<Frame<Bytes>> {
        let open = usize::try_from(self.framing.open_chunk()).unwrap_or(usize::MAX);
        if open <= self.held {
            self.room.add_permits(self.held - open);
            self.held = open;
            return Some(frame);
        }
        let need = open - self.held;
        let permits = u32::try_from(need).unwrap_or(u32::MAX);
        if let Ok(permit) = self.room.clone().try_acquire_many_owned(permits) {
            permit.forget();
            self.held = open;
            return Some(frame);
        }
        self.waiting = Some(Waiting {
            frame,
            need,
            acquire: Box::pin(self.room.clone().acquire_many_owned(permits)),
            deadline: Box::pin(tokio::time::sleep(ROOM_WAIT)),
        });
        None
    }
}

impl Drop for ChunkCap {
    fn drop(&mut self) {
        self.room.add_permits(self.held);
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
        if let Some(waiting) = &mut this.waiting {
            match waiting.acquire.as_mut().poll(cx) {
                Poll::Ready(Ok(permit)) => {
                    permit.forget();
                    let waiting = this.waiting.take().expect("waiting");
                    this.held += waiting.need;
                    return Poll::Ready(Some(Ok(waiting.frame)));
                }
                Poll::Ready(Err(_)) => return this.fail(BodyFailure::Client),
                Poll::Pending => {
                    ready!(waiting.deadline.as_mut().poll(cx));
                    let _ = this.raw.0.set(Raw::Busy);
                    this.failed = true;
                    this.waiting = None;
                    return Poll::Ready(Some(Err("no room for the chunk".into())));
                }
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            ready!(this.idle.poll_expired(cx));
            return this.fail(BodyFailure::Idle);
        }
        this.idle.reset();
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
        match polled {
            Poll::Ready(Some(Ok(frame))) => match this.make_room(frame) {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                // Polls the wait for room at once (it registers the waker).
                None => Pin::new(this).poll_frame(cx),
            },
            other => other,
        }
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
    fn the_open_chunk_is_known_from_its_header_to_its_end() {
        let mut f = Framing::default();
        f.feed(b"400;chunk-signature=ab\r\n").unwrap();
        assert_eq!(f.open_chunk(), 0x400);
        f.feed(&[b'x'; 0x400]).unwrap();
        assert_eq!(f.open_chunk(), 0x400, "until its closing CRLF");
        f.feed(b"\r\n").unwrap();
        assert_eq!(f.open_chunk(), 0);
        f.feed(b"0\r\n").unwrap();
        assert_eq!(f.open_chunk(), 0);
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
