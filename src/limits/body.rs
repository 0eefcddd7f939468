//! The guarded request body: everything the gateway enforces on bytes as they stream.
//!
//! One wrapper, one pass over each frame:
//! - **idle timeout**: a client that sends nothing for `body_idle_timeout` while the gateway
//!   waits for it fails the body (only time spent *waiting on the client* counts, never time
//!   the gateway spent not reading because S3 was slow);
//! - **size**: the frame that would cross the limit becomes an error;
//! - **digest**: `Content-MD5` and SHA-256 digests are computed as bytes pass and checked at
//!   the end. The last frame is held back until the check passes, so a body with a wrong
//!   digest never reaches S3 complete and can never be stored.
//!
//! The failure is also recorded in a shared [`BodyWatch`], so when the S3 call that consumed
//! the body fails, the handler blames the right party (413, 408, 400) instead of the backend.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// Why a request body stopped early, as seen by the body itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// More bytes than the limit.
    TooLarge,
    /// The client sent nothing for the idle timeout.
    Idle,
    /// The bytes do not match the digest the client sent.
    BadDigest,
    /// The client's stream failed: a malformed chunk, a protocol error.
    Client,
    /// The client went away mid-body: the connection closed, the stream was reset.
    Closed,
}

impl BodyFailure {
    fn code(self) -> u8 {
        match self {
            BodyFailure::TooLarge => 1,
            BodyFailure::Idle => 2,
            BodyFailure::BadDigest => 3,
            BodyFailure::Client => 4,
            BodyFailure::Closed => 5,
        }
    }
}

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFailure::TooLarge => "the body is larger than the limit",
            BodyFailure::Idle => "the client sent no body bytes for too long",
            BodyFailure::BadDigest => "the body does not match its digest",
            BodyFailure::Client => "the request body failed",
            BodyFailure::Closed => "the client went away mid-body",
        })
    }
}

impl std::error::Error for BodyFailure {}

/// Shared between a [`GuardedBody`] and the handler that gave it away: the SHA-256 the body
/// computed, and how it failed. (Who is to blame for a failed upload is found in the error's
/// source chain, where the body's [`BodyFailure`] is kept; the failure here is for tests.)
#[derive(Debug, Default)]
pub struct BodyWatch {
    failure: AtomicU8,
    sha256: Mutex<Option<String>>,
}

impl BodyWatch {
    fn set(&self, f: BodyFailure) {
        // The first failure is the cause; later ones are consequences.
        let _ = self
            .failure
            .compare_exchange(0, f.code(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The failure the body ended with, if it failed.
    pub fn failure(&self) -> Option<BodyFailure> {
        match self.failure.load(Ordering::Relaxed) {
            1 => Some(BodyFailure::TooLarge),
            2 => Some(BodyFailure::Idle),
            3 => Some(BodyFailure::BadDigest),
            4 => Some(BodyFailure::Client),
            5 => Some(BodyFailure::Closed),
            _ => None,
        }
    }

    /// The hex SHA-256 of the whole body, when the gateway computed one.
    pub fn sha256(&self) -> Option<String> {
        self.sha256.lock().ok()?.clone()
    }
}

/// Digests a client sent, to be checked against the bytes.
#[derive(Clone, Debug, Default)]
pub struct ExpectedDigests {
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
    /// An S3 `x-amz-checksum-*` (the S3 door), sent as a header or as a trailer.
    pub checksum: Option<ExpectedChecksum>,
}

impl ExpectedDigests {
    pub fn is_empty(&self) -> bool {
        self.md5.is_none() && self.sha256.is_none() && self.checksum.is_none()
    }
}

/// The S3 checksum algorithms (`x-amz-checksum-<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    /// From the header's name without its `x-amz-checksum-` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "crc32" => Self::Crc32,
            "crc32c" => Self::Crc32c,
            "crc64nvme" => Self::Crc64Nvme,
            "sha1" => Self::Sha1,
            "sha256" => Self::Sha256,
            _ => return None,
        })
    }

    fn hasher(self) -> s3s::checksum::ChecksumHasher {
        let mut h = s3s::checksum::ChecksumHasher::default();
        match self {
            Self::Crc32 => h.crc32 = Some(Default::default()),
            Self::Crc32c => h.crc32c = Some(Default::default()),
            Self::Crc64Nvme => h.crc64nvme = Some(Default::default()),
            Self::Sha1 => h.sha1 = Some(Default::default()),
            Self::Sha256 => h.sha256 = Some(Default::default()),
        }
        h
    }

    /// The base64 value of this algorithm in `sums`.
    fn pick(self, sums: s3s::dto::Checksum) -> Option<String> {
        match self {
            Self::Crc32 => sums.checksum_crc32,
            Self::Crc32c => sums.checksum_crc32c,
            Self::Crc64Nvme => sums.checksum_crc64nvme,
            Self::Sha1 => sums.checksum_sha1,
            Self::Sha256 => sums.checksum_sha256,
        }
    }
}

/// Where the expected value of a checksum comes from.
#[derive(Clone)]
pub enum ChecksumValue {
    /// A header: known before the body.
    Header(String),
    /// A trailer: read when the body has ended (the closure gives its value, if it came).
    Trailer(std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>),
}

impl std::fmt::Debug for ChecksumValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Header(v) => f.debug_tuple("Header").field(v).finish(),
            Self::Trailer(_) => f.write_str("Trailer"),
        }
    }
}

/// An S3 checksum to verify against the body.
#[derive(Clone, Debug)]
pub struct ExpectedChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub value: ChecksumValue,
}

/// The body idle timeout: armed when a body has nothing to give, reset when it gives
/// something. Only time spent waiting on the client counts: a body nobody polls is not idle.
pub struct IdleTimer {
    /// `None`: never expires.
    idle: Option<Duration>,
    /// Armed while waiting on the client.
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub fn new(idle: Option<Duration>) -> Self {
        Self { idle, timer: None }
    }

    /// After the body answered `Pending`: `Ready` once it has been waiting for the whole
    /// idle timeout (the first call arms the timer).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(idle) = self.idle else {
            return Poll::Pending;
        };
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + idle)))
            .as_mut()
            .poll(cx)
    }

    /// The body gave something (or ended).
    pub fn reset(&mut self) {
        self.timer = None;
    }
}

/// What a [`GuardedBody`] enforces.
#[derive(Clone, Debug)]
pub struct Guard {
    pub max_bytes: u64,
    /// `None`: the caller times the client's bytes itself (the S3 door's aws-chunked bodies,
    /// which arrive a whole chunk at a time).
    pub idle_timeout: Option<Duration>,
    pub digests: ExpectedDigests,
}

/// See the module documentation.
pub struct GuardedBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    idle: IdleTimer,
    md5: Option<(Md5, [u8; 16])>,
    sha256: Option<(Sha256, Option<[u8; 32]>)>,
    checksum: Option<(s3s::checksum::ChecksumHasher, ExpectedChecksum)>,
    /// The last data frame, held back until the digests are checked.
    held: Option<Bytes>,
    done: bool,
    watch: Arc<BodyWatch>,
}

impl<B> GuardedBody<B> {
    /// Wraps `inner`; `compute_sha256` makes the gateway hash the body even without a digest
    /// to check (for the access log).
    pub fn new(inner: B, guard: Guard) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        let body = Self {
            inner,
            seen: 0,
            limit: guard.max_bytes,
            idle: IdleTimer::new(guard.idle_timeout),
            md5: guard.digests.md5.map(|want| (Md5::new(), want)),
            sha256: guard.digests.sha256.map(|want| (Sha256::new(), Some(want))),
            checksum: guard
                .digests
                .checksum
                .map(|want| (want.algorithm.hasher(), want)),
            held: None,
            done: false,
            watch: watch.clone(),
        };
        (body, watch)
    }

    fn holds_back(&self) -> bool {
        self.md5.is_some() || self.sha256.is_some() || self.checksum.is_some()
    }

    fn fail(&mut self, f: BodyFailure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.watch.set(f);
        self.done = true;
        self.held = None;
        Poll::Ready(Some(Err(Box::new(f))))
    }

    /// At the end of the body: check the digests, record the SHA-256.
    fn verify(&mut self) -> Result<(), BodyFailure> {
        let mut ok = true;
        if let Some((h, want)) = self.md5.take() {
            ok &= h.finalize().as_slice() == want;
        }
        if let Some((h, want)) = self.sha256.take() {
            let got: [u8; 32] = h.finalize().into();
            if let Ok(mut slot) = self.watch.sha256.lock() {
                *slot = Some(hex::encode(got));
            }
            ok &= want.is_none_or(|w| w == got);
        }
        if let Some((h, want)) = self.checksum.take() {
            let got = want.algorithm.pick(h.finalize());
            let expected = match &want.value {
                ChecksumValue::Header(v) => Some(v.clone()),
                ChecksumValue::Trailer(read) => read(),
            };
            ok &= got.is_some() && got == expected;
        }
        if ok {
            Ok(())
        } else {
            Err(BodyFailure::BadDigest)
        }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.held.take().map(|b| Ok(Frame::data(b))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    ready!(this.idle.poll_expired(cx));
                    return this.fail(BodyFailure::Idle);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.reset();
                    let Ok(data) = frame.into_data() else {
                        continue;
                    }; // trailers: not forwarded
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return this.fail(BodyFailure::TooLarge);
                    }
                    if let Some((h, _)) = &mut this.md5 {
                        h.update(&data);
                    }
                    if let Some((h, _)) = &mut this.sha256 {
                        h.update(&data);
                    }
                    if let Some((h, _)) = &mut this.checksum {
                        h.update(&data);
                    }
                    if !this.holds_back() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if let Some(previous) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(previous))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    tracing::debug!(error = %e, "request body failed");
                    // A wrapper inside (the door's chunk cap) may have said why already.
                    if let Some(f) = e.downcast_ref::<BodyFailure>() {
                        return this.fail(*f);
                    }
                    return this.fail(if client_went_away(&*e) {
                        BodyFailure::Closed
                    } else {
                        BodyFailure::Client
                    });
                }
                Poll::Ready(None) => {
                    this.idle.reset();
                    if let Err(f) = this.verify() {
                        return this.fail(f);
                    }
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        (self.done && self.held.is_none()) || (!self.holds_back() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl From<BodyFailure> for crate::error::ApiError {
    fn from(f: BodyFailure) -> Self {
        use crate::error::{ApiError, Code};
        match f {
            BodyFailure::TooLarge => {
                ApiError::new(Code::PayloadTooLarge, "the body is larger than the limit")
            }
            BodyFailure::Idle => ApiError::new(
                Code::BodyTimeout,
                "the client sent no body bytes for too long",
            ),
            BodyFailure::BadDigest => ApiError::new(
                Code::BadDigest,
                "the body does not match the digest sent with it",
            ),
            BodyFailure::Client => ApiError::new(
                Code::BadRequest,
                "the request body ended early or was malformed",
            ),
            BodyFailure::Closed => ApiError::new(
                Code::ClientClosed,
                "the client went away before the body ended",
            ),
        }
    }
}

/// Did the body fail because the client went away (closed the connection before the body
/// ended, or reset its stream), rather than because it sent something malformed?
fn client_went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && (h2.is_reset() || h2.is_io() || h2.is_go_away())
        {
            return true;
        }
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The size hint of a body with `held` bytes waiting in front of `inner`.
pub(super) fn hint_with_held(inner: SizeHint, held: Option<&Bytes>) -> SizeHint {
    let extra = held.map_or(0, |b| b.len() as u64);
    let mut hint = SizeHint::new();
    if let Some(upper) = inner.upper() {
        hint.set_upper(upper + extra);
    }
    hint.set_lower(inner.lower() + extra);
    hint
}

/// A body whose first bytes were already read (for sniffing) and are replayed first.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    inner: B,
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, inner: B) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        hint_with_held(self.inner.size_hint(), self.prefix.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body_of(
        chunks: Vec<&'static [u8]>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
        ))
    }

    fn guard(max: u64, digests: ExpectedDigests) -> Guard {
        Guard {
            max_bytes: max,
            idle_timeout: Some(Duration::from_secs(30)),
            digests,
        }
    }

    #[tokio::test]
    async fn passes_everything_within_the_limit() {
        let (b, watch) =
            GuardedBody::new(body_of(vec![b"ab", b"cd"]), guard(4, Default::default()));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(watch.failure(), None);
    }

    #[tokio::test]
    async fn fails_at_the_first_byte_over() {
        let (mut b, watch) = GuardedBody::new(
            body_of(vec![b"ab", b"cd", b"e"]),
            guard(4, Default::default()),
        );
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "cd");
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(watch.failure(), Some(BodyFailure::TooLarge));
    }

    #[tokio::test]
    async fn a_wrong_digest_withholds_the_last_bytes() {
        let want_md5: [u8; 16] = Md5::digest(b"abcd").into();
        let digests = ExpectedDigests {
            md5: Some(want_md5),
            ..Default::default()
        };
        let (b, watch) = GuardedBody::new(body_of(vec![b"ab", b"cd"]), guard(100, digests.clone()));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(watch.failure(), None);

        let (mut b, watch) = GuardedBody::new(body_of(vec![b"ab", b"cX"]), guard(100, digests));
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        // "cX" is never handed on: the body ends in an error instead.
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(watch.failure(), Some(BodyFailure::BadDigest));
    }

    #[tokio::test]
    async fn a_trailer_checksum_is_checked_before_the_last_bytes_go() {
        use base64::Engine as _;
        // CRC32 of "abcd" is 0xed82cd11.
        let right = base64::engine::general_purpose::STANDARD.encode(0xed82cd11u32.to_be_bytes());
        for (trailer, ok) in [
            (Some(right.clone()), true),
            (Some("AAAAAA==".into()), false),
            (None, false),
        ] {
            let trailer: Option<String> = trailer;
            let digests = ExpectedDigests {
                checksum: Some(ExpectedChecksum {
                    algorithm: ChecksumAlgorithm::Crc32,
                    value: ChecksumValue::Trailer(Arc::new(move || trailer.clone())),
                }),
                ..Default::default()
            };
            let (mut b, watch) = GuardedBody::new(body_of(vec![b"ab", b"cd"]), guard(100, digests));
            assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
            let last = b.frame().await.unwrap();
            assert_eq!(last.is_ok(), ok, "{right}");
            if !ok {
                assert_eq!(watch.failure(), Some(BodyFailure::BadDigest));
            }
        }
    }

    #[tokio::test]
    async fn records_the_sha256() {
        let want: [u8; 32] = Sha256::digest(b"abcd").into();
        let digests = ExpectedDigests {
            sha256: Some(want),
            ..Default::default()
        };
        let (b, watch) = GuardedBody::new(body_of(vec![b"a", b"bcd"]), guard(100, digests));
        b.collect().await.unwrap();
        assert_eq!(watch.sha256().unwrap(), hex::encode(want));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_times_out() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let stream = StreamBody::new(tokio_stream_of(rx));
        let g = Guard {
            max_bytes: 100,
            idle_timeout: Some(Duration::from_secs(30)),
            digests: Default::default(),
        };
        let (mut b, watch) = GuardedBody::new(stream, g);
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        // Time the gateway spends not reading does not count...
        tokio::time::sleep(Duration::from_secs(100)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        // ...time spent waiting on the client does.
        let started = Instant::now();
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(watch.failure(), Some(BodyFailure::Idle));
        drop(tx);
    }

    fn tokio_stream_of<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
