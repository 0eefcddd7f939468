//! A request body that counts its bytes, fails at the first byte over a limit, and tells the
//! handler afterwards why it failed, so a failed S3 call is blamed on the right party.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// The error a [`LimitedBody`] ends with when the body is larger than allowed.
#[derive(Debug, thiserror::Error)]
#[error("the body is larger than the limit of {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// Why a request body stopped early, as seen by the body itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// More bytes than the limit.
    TooLarge,
    /// The client's stream failed: a disconnect, a reset, a malformed chunk.
    Client,
}

/// Shared between a [`LimitedBody`] and the handler that gave it away.
#[derive(Debug, Default)]
pub struct BodyWatch(AtomicU8);

impl BodyWatch {
    fn set(&self, f: BodyFailure) {
        let v = match f {
            BodyFailure::TooLarge => 1,
            BodyFailure::Client => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// The failure the body ended with, if it failed.
    pub fn failure(&self) -> Option<BodyFailure> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(BodyFailure::TooLarge),
            2 => Some(BodyFailure::Client),
            _ => None,
        }
    }
}

/// Wraps a body; yields an error instead of the frame that would cross `limit` bytes.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    watch: Arc<BodyWatch>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        (
            Self {
                inner,
                seen: 0,
                limit,
                watch: watch.clone(),
            },
            watch,
        )
    }
}

impl<B> Body for LimitedBody<B>
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.watch.set(BodyFailure::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(TooLarge { limit: this.limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.watch.set(BodyFailure::Client);
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
