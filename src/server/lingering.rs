//! Lingering on an unread request body, as nginx's `lingering_close` does.
//!
//! When the gateway answers before it has read the whole request body (a 413 from the
//! declared length, a backend that failed mid-upload), closing the connection at once would
//! make the kernel reset it while the client is still sending, and a client that writes its
//! whole body before reading would see the reset instead of the answer. So an unfinished body
//! that is dropped is read and discarded in the background for a bounded time and number of
//! bytes, letting the client finish writing and read the response. Not when the client sent
//! `Expect: 100-continue`: it is waiting for permission and has sent no body.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::conn::Half;

/// Longest time spent draining one body.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Longest wait for the next piece while draining.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// Most bytes read and thrown away for one body.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// A request body that drains itself if dropped unfinished.
pub(super) struct Lingering {
    inner: Option<Incoming>,
    linger: bool,
    /// Completed when the body has been read to its end (HTTP/1.1 only).
    half: Option<Half>,
}

impl Lingering {
    pub(super) fn new(inner: Incoming, expects_continue: bool, half: Option<Half>) -> Self {
        Self {
            inner: Some(inner),
            linger: !expects_continue,
            half,
        }
    }

    fn ended(&mut self) {
        if let Some(half) = self.half.as_mut() {
            half.complete();
        }
    }
}

impl Body for Lingering {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(None) = polled {
            self.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            self.ended();
            return;
        }
        if !self.linger {
            return;
        }
        let mut half = self.half.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut read = 0u64;
                while read <= DRAIN_BYTES {
                    match tokio::time::timeout(DRAIN_IDLE, body.frame()).await {
                        Ok(Some(Ok(frame))) => {
                            read += frame.data_ref().map_or(0, |d| d.len() as u64)
                        }
                        Ok(None) => {
                            if let Some(half) = half.as_mut() {
                                half.complete();
                            }
                            return;
                        }
                        _ => return,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}
