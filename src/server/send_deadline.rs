//! The send deadline: a response the client takes nothing of for `body_idle_timeout` is given
//! up (the HTTP/2 stream reset, the HTTP/1.1 connection closed), so that its body, and the
//! admission permits riding on it, are dropped.
//!
//! A client that never reads (HTTP/1.1: its socket's window stays shut) or never opens the
//! flow-control window (HTTP/2: `SETTINGS_INITIAL_WINDOW_SIZE = 0`) leaves hyper unable to
//! send, and so hyper never polls the response body again: nothing inside the body can
//! notice. So the watch sits outside it, around what hyper polls: the HTTP/2 stream's task
//! ([`StreamExecutor`]) and the HTTP/1.1 connection's task (`conn.rs`). The response body
//! ([`Sending`]) only records when hyper last asked it for data; the watch around it sees how
//! long ago that was. The two are joined through a thread-local that is set while the watched
//! task is polled, since the body is made inside that poll.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use crate::{Body, BoxError};

thread_local! {
    /// The watch of the task being polled on this thread, if it is a watched one.
    static CURRENT: RefCell<Option<Arc<SendWatch>>> = const { RefCell::new(None) };
    /// The HTTP/2 connection being polled on this thread: the streams it spawns count in it.
    static CONNECTION: RefCell<Option<Arc<Streams>>> = const { RefCell::new(None) };
}

/// The streams of one HTTP/2 connection: how many run now, and since when none has.
#[derive(Debug)]
pub(super) struct Streams {
    base: Instant,
    running: AtomicUsize,
    /// Milliseconds after `base` when the last stream ended (0: none has run yet).
    idle_since: AtomicU64,
    /// Streams begun.
    begun: AtomicU64,
    /// The connection's task, woken when its last running stream ends.
    waker: futures_util::task::AtomicWaker,
}

impl Streams {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Streams {
            base: Instant::now(),
            running: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            waker: futures_util::task::AtomicWaker::new(),
        })
    }

    /// Runs `poll` (of the connection) with these as the current connection's streams; the
    /// connection's task is woken when its last stream ends.
    pub(super) fn enter<T>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> T,
    ) -> T {
        self.waker.register(cx.waker());
        let previous = CONNECTION.with(|c| c.replace(Some(self.clone())));
        let out = poll(cx);
        CONNECTION.with(|c| *c.borrow_mut() = previous);
        out
    }

    /// When the connection has been idle (no stream running) since, and whether any stream
    /// ever ran; `None` while one runs.
    pub(super) fn idle_since(&self) -> Option<(Instant, bool)> {
        if self.running.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since.load(Ordering::Acquire);
        let any = self.begun.load(Ordering::Acquire) > 0;
        Some((self.base + Duration::from_millis(ms), any))
    }
}

/// One running stream of a [`Streams`].
struct Running(Arc<Streams>);

impl Running {
    fn begin(streams: Arc<Streams>) -> Self {
        streams.begun.fetch_add(1, Ordering::AcqRel);
        streams.running.fetch_add(1, Ordering::AcqRel);
        Running(streams)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since.store(ms.max(1), Ordering::Release);
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.waker.wake();
        }
    }
}

/// When a task's responses last made progress, and how many are being sent.
#[derive(Debug)]
pub(super) struct SendWatch {
    base: Instant,
    /// Milliseconds after `base` of the last progress.
    last: AtomicU64,
    /// Response bodies made and not yet finished.
    open: AtomicUsize,
}

impl SendWatch {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(SendWatch {
            base: Instant::now(),
            last: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// When the deadline of the responses being sent falls, or `None` when none is.
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(self.base + Duration::from_millis(self.last.load(Ordering::Relaxed)) + limit)
    }

    /// Runs `poll` with this watch as the current one, so response bodies made in it report
    /// to it.
    pub(super) fn enter<T>(self: &Arc<Self>, poll: impl FnOnce() -> T) -> T {
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        let out = poll();
        CURRENT.with(|c| *c.borrow_mut() = previous);
        out
    }
}

/// A response body that reports to the watch of the task it was made in (none outside a
/// watched task).
pub(super) struct Sending {
    inner: Body,
    watch: Option<Arc<SendWatch>>,
}

impl Sending {
    pub(super) fn new(inner: Body) -> Self {
        let watch = CURRENT.with(|c| c.borrow().clone());
        if let Some(w) = &watch {
            w.touch();
            w.open.fetch_add(1, Ordering::AcqRel);
        }
        Sending { inner, watch }
    }

    fn finish(&mut self) {
        if let Some(w) = self.watch.take() {
            w.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl http_body::Body for Sending {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(w) = &self.watch {
            w.touch();
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The timer of one watch: ready once a response has made no progress for `limit`.
pub(super) struct Deadline {
    watch: Arc<SendWatch>,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub(super) fn new(watch: Arc<SendWatch>, limit: Duration) -> Self {
        Deadline {
            watch,
            limit,
            timer: None,
        }
    }

    /// Ready when a response being sent has stalled past the limit. Call it after each poll
    /// of the watched task: it arms its timer (with `cx`) while a response is open.
    pub(super) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(at) = self.watch.deadline(self.limit) else {
                self.timer = None;
                return Poll::Pending;
            };
            match &mut self.timer {
                Some(t) if t.deadline() == at => {
                    if t.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired: stalled unless progress moved the deadline meanwhile.
                    if self.watch.deadline(self.limit) == Some(at) {
                        return Poll::Ready(());
                    }
                }
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }
}

/// hyper's HTTP/2 executor: spawns each stream's task on tokio, under a send deadline.
#[derive(Clone, Debug)]
pub(super) struct StreamExecutor {
    pub(super) limit: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let watch = SendWatch::new();
        let running = CONNECTION.with(|c| c.borrow().clone()).map(Running::begin);
        tokio::spawn(Watched {
            stream: Box::pin(stream),
            deadline: Deadline::new(watch.clone(), self.limit),
            watch,
            _running: running,
        });
    }
}

/// An HTTP/2 stream's task, dropped (and so reset) when its response stalls.
struct Watched<F> {
    stream: Pin<Box<F>>,
    watch: Arc<SendWatch>,
    deadline: Deadline,
    _running: Option<Running>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this
            .watch
            .enter(|| this.stream.as_mut().poll(cx))
            .is_ready()
        {
            return Poll::Ready(());
        }
        if this.deadline.poll_stalled(cx).is_ready() {
            crate::obs::metrics::send_deadline_expired();
            tracing::debug!(limit = ?this.deadline.limit, "HTTP/2 stream reset: the client took nothing of its response");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn pending_body() -> Body {
        http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, BoxError>,
        >())
        .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_nobody_polls_stalls_after_the_limit() {
        let watch = SendWatch::new();
        let mut deadline = Deadline::new(watch.clone(), Duration::from_secs(5));
        let body = watch.enter(|| Sending::new(pending_body()));
        let started = Instant::now();
        std::future::poll_fn(|cx| deadline.poll_stalled(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(body);
        // Nothing open: never stalls.
        let polled = std::future::poll_fn(|cx| Poll::Ready(deadline.poll_stalled(cx))).await;
        assert!(polled.is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn progress_moves_the_deadline() {
        let watch = SendWatch::new();
        let mut deadline = Deadline::new(watch.clone(), Duration::from_secs(5));
        let mut body = watch.enter(|| Sending::new(pending_body()));
        let started = Instant::now();
        let stalled = std::pin::pin!(std::future::poll_fn(|cx| deadline.poll_stalled(cx)));
        let mut stalled = stalled;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            // hyper asks for more: progress.
            let _ =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            assert!(futures_util::poll!(stalled.as_mut()).is_pending());
        }
        stalled.await;
        assert_eq!(started.elapsed(), Duration::from_secs(14));
    }
}
