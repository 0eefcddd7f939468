//! The stall watch for uploads, on both paths (the SDK's stalled-stream protection for
//! uploads, and one step further): an upload fails with `504 backend_timeout` when S3 holds
//! data it has not taken for the grace period, or has not answered for the grace period after
//! the body's last byte. Time the body spends waiting on the client does not count: the
//! client's own idle limit (`server.body_idle_timeout`) watches that.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;

use crate::error::{ApiError, Code};
use crate::{Body, BoxError};

/// The watch on one upload.
pub(super) struct UploadWatch {
    progress: Arc<Progress>,
}

impl UploadWatch {
    /// Watches `body`: returns the body to send and its watch.
    pub(super) fn new(body: Body) -> (Body, UploadWatch) {
        let progress = Arc::new(Progress::new());
        let body = Tracked {
            inner: body,
            progress: progress.clone(),
        }
        .boxed();
        (body, UploadWatch { progress })
    }

    /// Awaits `sending` (the request that carries the watched body), failing when S3 takes
    /// none of the body, or gives no answer after its end, for `grace`.
    pub(super) async fn bound<T>(
        &self,
        sending: impl Future<Output = Result<T, ApiError>>,
        grace: Duration,
    ) -> Result<T, ApiError> {
        tokio::select! {
            sent = sending => sent,
            () = self.progress.stalled(grace) => {
                let what = if self.progress.ended.load(Ordering::Relaxed) {
                    "gave no answer after the upload's last byte"
                } else {
                    "took no upload data"
                };
                Err(ApiError::new(Code::BackendTimeout, "the backend did not answer in time")
                    .detail(format!("the backend {what} for {grace:?}")))
            }
        }
    }
}

/// Where an upload stands: since when S3 has had something to do (take data it holds, or
/// answer a body that has ended), or nothing while the body waits on the client.
struct Progress {
    origin: Instant,
    /// Milliseconds since `origin` plus one; 0 for "not waiting on S3".
    waiting_since: AtomicU64,
    /// The body has handed over its last byte.
    ended: AtomicBool,
}

impl Progress {
    /// Waiting on S3 from the start: it has to take the request's head first.
    fn new() -> Self {
        Progress {
            origin: Instant::now(),
            waiting_since: AtomicU64::new(1),
            ended: AtomicBool::new(false),
        }
    }

    fn mark(&self, waiting_on_backend: bool) {
        let since = if waiting_on_backend {
            self.origin.elapsed().as_millis() as u64 + 1
        } else {
            0
        };
        self.waiting_since.store(since, Ordering::Relaxed);
    }

    /// Ends when S3 has had something to do and done nothing for `grace`.
    async fn stalled(&self, grace: Duration) {
        loop {
            let wait = match self.waiting_since.load(Ordering::Relaxed) {
                0 => grace / 2,
                since => {
                    let waited = self
                        .origin
                        .elapsed()
                        .saturating_sub(Duration::from_millis(since - 1));
                    if waited >= grace {
                        return;
                    }
                    grace - waited
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// An upload body that tells [`Progress`] when it hands S3 data, when it waits on the client
/// and when it has ended.
struct Tracked {
    inner: Body,
    progress: Arc<Progress>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let (waiting_on_backend, ended) = match &polled {
            // Data to take; at the end, S3 has the whole body and owes its answer.
            Poll::Ready(Some(Ok(_))) => (true, self.inner.is_end_stream()),
            Poll::Ready(None) => (true, true),
            // Waiting on the client, or failing.
            Poll::Pending | Poll::Ready(Some(Err(_))) => (false, false),
        };
        if ended {
            self.progress.ended.store(true, Ordering::Relaxed);
        }
        self.progress.mark(waiting_on_backend);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
