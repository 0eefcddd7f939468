//! One connection, from its first byte to its close: which protocol it speaks, and HTTP/1.1
//! connections parked between requests.
//!
//! hyper keeps an 8 KiB read buffer and a write buffer per HTTP/1.1 connection from its first
//! request on, and frees neither while the connection waits for the next one: with the rest of
//! its state, 27 KiB per idle keep-alive connection. So an HTTP/1.1 connection is served by a
//! hyper connection per burst of requests. Once every exchange on it is complete (request body
//! read to its end, response body sent to its end), hyper is told to stop; it is idle, so it
//! stops at once and hands back the socket with any bytes it read ahead. Then the socket waits
//! for its next request holding nothing but its place in the reactor, and goes to a new hyper
//! connection when bytes arrive, those read ahead first. A connection is parked once it has
//! been idle for a moment (`PARK_AFTER`), so one that sends request after request keeps its
//! hyper connection. A parked connection is closed after `server.keep_alive_timeout`; the
//! header deadline runs from a request's first byte.
//!
//! HTTP/2 (ALPN `h2`, or the prior-knowledge preface on plain TCP) goes to hyper's HTTP/2
//! server as it is: its streams come and go within one connection.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http_body::Body as _;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::coalesce::{self, Coalesce};
use super::framing::Framing;
use super::read_ahead::ReadAhead;
use super::send_deadline::{Deadline, SendWatch, Sending, StreamExecutor, Streams};
use super::{HttpService, gateway_fn};
use crate::BoxError;
use crate::obs::ConnInfo;
use crate::quiet::Quiet;

/// The first bytes of every HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection is served with.
pub(super) struct Protocols {
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<StreamExecutor>,
    pub(super) header_read_timeout: Duration,
    pub(super) keep_alive_timeout: Duration,
    /// An HTTP/1.1 connection idle this long is parked (less than the header deadline, which
    /// hyper runs while it waits).
    pub(super) park_after: Duration,
    /// A response the client takes nothing of for this long is given up.
    pub(super) send_idle_timeout: Duration,
    /// Cancelled when the server shuts down.
    pub(super) stop: CancellationToken,
}

/// A socket a parked connection can wait on.
pub(super) trait Parkable: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the peer has sent something (or closed).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
    /// Request bytes already received and decrypted, but not yet read.
    fn buffered(&mut self) -> io::Result<usize>;
}

impl Parkable for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }

    fn buffered(&mut self) -> io::Result<usize> {
        Ok(0)
    }
}

impl Parkable for ReadAhead<TcpStream> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        let ahead = self.unread() > 0;
        async move {
            if !ahead {
                self.get_ref().readable().await?;
            }
            Ok(())
        }
    }

    fn buffered(&mut self) -> io::Result<usize> {
        Ok(self.unread())
    }
}

impl Parkable for tokio_rustls::server::TlsStream<ReadAhead<TcpStream>> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.get_ref().0.readable()
    }

    fn buffered(&mut self) -> io::Result<usize> {
        // Records rustls holds but has not decrypted yet count too, and bytes read ahead.
        let (ahead, tls) = self.get_mut();
        let state = tls.process_new_packets().map_err(io::Error::other)?;
        Ok(state.plaintext_bytes_to_read() + ahead.unread())
    }
}

impl Protocols {
    /// A plain TCP connection: HTTP/2 if it opens with the preface, else HTTP/1.1.
    pub(super) async fn serve_plain(
        &self,
        mut stream: TcpStream,
        service: HttpService,
        info: ConnInfo,
    ) {
        let mut first = BytesMut::with_capacity(H2_PREFACE.len());
        let sniff = async {
            while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
                if stream.read_buf(&mut first).await? == 0 {
                    break;
                }
            }
            io::Result::Ok(())
        };
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(self.header_read_timeout, sniff) => sniffed,
            // A connection that has not sent a request yet does not hold up a shutdown.
            () = self.stop.cancelled() => return,
        };
        match sniffed {
            Ok(Ok(())) if first.is_empty() => {}
            Ok(Ok(())) if &first[..] == H2_PREFACE => {
                let io = ReadAhead::with_unread(&first, stream);
                self.serve_h2(io, service, info).await;
            }
            Ok(Ok(())) => self.serve_h1(stream, first.freeze(), service, info).await,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, remote = %info.remote, "connection failed before its first request")
            }
            Err(_) => {
                tracing::debug!(remote = %info.remote, "no request head within header_read_timeout")
            }
        }
    }

    /// A TLS connection, by its ALPN protocol.
    pub(super) async fn serve_tls(
        &self,
        mut stream: tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>,
        service: HttpService,
        info: ConnInfo,
    ) {
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            // rustls takes at most its buffer limit (64 KiB by default) per write: room for a
            // whole gathered batch, so each goes out in one write.
            stream
                .get_mut()
                .1
                .set_buffer_limit(Some(2 * coalesce::FULL));
            self.serve_h2(stream, service, info).await;
        } else {
            self.serve_h1(stream, Bytes::new(), service, info).await;
        }
    }

    /// HTTP/2: hyper's server, closed (GOAWAY) once no stream has run for the header
    /// deadline (before its first request) or the keep-alive timeout (after).
    async fn serve_h2<T: Parkable>(&self, io: T, service: HttpService, info: ConnInfo) {
        let remote = info.remote;
        let conn = self.h2.serve_connection(
            TokioIo::new(Coalesce::new(io)),
            gateway_fn(service, info, None),
        );
        let mut conn = pin!(conn);
        let streams = Streams::new();
        let mut idle_timer = pin!(tokio::time::sleep(self.header_read_timeout));
        let mut closing = false;
        // An idle connection's GOAWAY waits for the peer to answer a PING; one that never
        // does is dropped this long after.
        let mut idle_closing = false;
        let mut stop = pin!(self.stop.cancelled());
        let result = poll_fn(|cx| {
            loop {
                if !closing && stop.as_mut().poll(cx).is_ready() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                if let Poll::Ready(r) = streams.enter(cx, |cx| conn.as_mut().poll(cx)) {
                    return Poll::Ready(r);
                }
                if idle_closing {
                    if idle_timer.as_mut().poll(cx).is_ready() {
                        tracing::debug!(%remote, "idle HTTP/2 connection dropped: no answer to its GOAWAY");
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
                if closing {
                    return Poll::Pending;
                }
                // While a stream runs, its end wakes this task.
                let Some((since, any)) = streams.idle_since() else {
                    return Poll::Pending;
                };
                let limit = if any {
                    self.keep_alive_timeout
                } else {
                    self.header_read_timeout
                };
                if idle_timer.deadline() != since + limit {
                    idle_timer.as_mut().reset(since + limit);
                }
                if idle_timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                tracing::debug!(%remote, ?limit, "idle HTTP/2 connection closed");
                closing = true;
                idle_closing = true;
                conn.as_mut().graceful_shutdown();
                let drop_at = tokio::time::Instant::now() + self.header_read_timeout;
                idle_timer.as_mut().reset(drop_at);
            }
        })
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, %remote, "connection ended with an error");
        }
    }

    /// HTTP/1.1, parked between bursts of requests (see the module's text).
    async fn serve_h1<T: Parkable>(
        &self,
        mut io: T,
        mut ahead: Bytes,
        service: HttpService,
        info: ConnInfo,
    ) {
        let remote = info.remote;
        let framing = Arc::new(Framing::default());
        framing.read(&ahead);
        loop {
            match self
                .serve_burst(io, ahead, service.clone(), info.clone(), &framing)
                .await
            {
                Burst::Closed => return,
                Burst::Idle(idle, unread) => (io, ahead) = (idle, unread),
            }
            if !ahead.is_empty() {
                continue;
            }
            match io.buffered() {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                    return;
                }
            }
            tracing::trace!(%remote, "connection parked");
            tokio::select! {
                ready = io.readable() => {
                    if ready.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(self.keep_alive_timeout) => {
                    let _ = io.shutdown().await;
                    return;
                }
                () = self.stop.cancelled() => {
                    let _ = io.shutdown().await;
                    return;
                }
            }
        }
    }

    /// One hyper connection on `io`, until it has been idle for `park_after` (the socket and
    /// the bytes read ahead are handed back; nothing else of it is kept) or it ends.
    async fn serve_burst<T: Parkable>(
        &self,
        io: T,
        ahead: Bytes,
        service: HttpService,
        info: ConnInfo,
        framing: &Arc<Framing>,
    ) -> Burst<T> {
        let remote = info.remote;
        let exchanges = Arc::new(Exchanges {
            framing: framing.clone(),
            ..Exchanges::default()
        });
        let svc = gateway_fn(service, info, Some(exchanges.clone()));
        let io = Rewind::new(ahead, io).following(framing.clone());
        let mut conn = self.h1.serve_connection(TokioIo::new(io), svc);
        let (mut parking, mut stopping) = (false, false);
        let mut stop = pin!(self.stop.cancelled());
        // Parked after `park_after` without a new request, so a client sending request after
        // request never pays for a new hyper connection.
        let mut idle_timer = pin!(tokio::time::sleep(self.park_after));
        let mut idle_at: Option<usize> = None;
        // hyper feeding a request body to the relay, which this same task drives, wakes the
        // task up to once per chunk: held back (see `Quiet`).
        let quiet = Quiet::default();
        // A response the client takes nothing of closes the connection (`send_deadline.rs`).
        let watch = SendWatch::new();
        let mut deadline = Deadline::new(watch.clone(), self.send_idle_timeout);
        let mut stalled = false;
        let served = poll_fn(|cx| {
            quiet.poll(cx, |cx| {
                loop {
                    if !stopping && stop.as_mut().poll(cx).is_ready() {
                        // Finish the exchange in flight, then close.
                        stopping = true;
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                    exchanges.waker.register(cx.waker());
                    let polled = watch.enter(|| conn.poll_without_shutdown(cx));
                    if polled.is_pending() && deadline.poll_stalled(cx).is_ready() {
                        stalled = true;
                        return Poll::Ready(Ok(()));
                    }
                    if polled.is_ready() || parking || stopping || !exchanges.idle() {
                        return polled;
                    }
                    // hyper is between requests.
                    let begun = exchanges.begun.load(Ordering::Acquire);
                    if idle_at != Some(begun) {
                        idle_at = Some(begun);
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.park_after);
                    }
                    if idle_timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Idle, it stops at once.
                    parking = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            })
        })
        .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, %remote, "connection ended with an error");
            return Burst::Closed;
        }
        if stalled {
            crate::obs::metrics::send_deadline_expired();
            tracing::debug!(%remote, limit = ?self.send_idle_timeout, "connection closed: the client took nothing of its response");
            return Burst::Closed;
        }
        let parts = conn.into_parts();
        let Rewind {
            first, mut inner, ..
        } = parts.io.into_inner();
        if !parking || stopping || exchanges.closing.load(Ordering::Relaxed) {
            let _ = inner.shutdown().await;
            return Burst::Closed;
        }
        Burst::Idle(inner, unread(parts.read_buf, first))
    }
}

/// How a hyper connection ended.
enum Burst<T> {
    /// The connection is closed.
    Closed,
    /// Idle: the socket, and the bytes read from it that are still to be served.
    Idle(T, Bytes),
}

/// What hyper read ahead, then what it never got to of what it was handed. Takes both by
/// value: an empty `read_ahead` may still hold hyper's whole read buffer (16 KiB), which must
/// not stay alive while the connection is parked.
fn unread(read_ahead: Bytes, first: Bytes) -> Bytes {
    match (read_ahead.is_empty(), first.is_empty()) {
        (true, true) => Bytes::new(),
        (false, true) => read_ahead,
        (true, false) => first,
        (false, false) => [read_ahead, first].concat().into(),
    }
}

/// The exchanges of one hyper HTTP/1.1 connection: hyper is idle when at least one is
/// complete and none is open.
#[derive(Default)]
pub(super) struct Exchanges {
    /// Open halves: each exchange opens two (request body, response body).
    open: AtomicUsize,
    /// Exchanges begun.
    begun: AtomicUsize,
    /// An exchange has completed.
    completed: AtomicBool,
    /// The client asked to close after this exchange (`Connection: close`, HTTP/1.0).
    closing: AtomicBool,
    /// The connection's task, woken when the last half completes (through its `Quiet`: a
    /// half completed by hyper polling a body, inside the task's own poll, costs no wake).
    waker: AtomicWaker,
    /// The connection's request framing, as read from its bytes.
    pub(super) framing: Arc<Framing>,
}

impl Exchanges {
    /// A new exchange: its request half and its response half.
    pub(super) fn begin(self: &Arc<Self>, client_closes: bool) -> (Half, Half) {
        if client_closes {
            self.closing.store(true, Ordering::Relaxed);
        }
        self.open.fetch_add(2, Ordering::AcqRel);
        self.begun.fetch_add(1, Ordering::AcqRel);
        (Half(Some(self.clone())), Half(Some(self.clone())))
    }

    fn idle(&self) -> bool {
        self.completed.load(Ordering::Acquire) && self.open.load(Ordering::Acquire) == 0
    }
}

/// One half of an exchange. Completed explicitly when its body reached its end; a half
/// dropped unfinished (a response cut off, a request body left unread) never completes, and
/// that hyper connection is never parked: hyper closes it.
pub(super) struct Half(Option<Arc<Exchanges>>);

impl Half {
    pub(super) fn complete(&mut self) {
        if let Some(exchanges) = self.0.take()
            && exchanges.open.fetch_sub(1, Ordering::AcqRel) == 1
        {
            exchanges.completed.store(true, Ordering::Release);
            exchanges.waker.wake();
        }
    }
}

/// A socket with bytes already read from it in front; what is read from the socket itself
/// may be followed by a [`Framing`].
struct Rewind<T> {
    first: Bytes,
    inner: T,
    framing: Option<Arc<Framing>>,
}

impl<T> Rewind<T> {
    fn new(first: Bytes, inner: T) -> Self {
        Rewind {
            first,
            inner,
            framing: None,
        }
    }

    fn following(mut self, framing: Arc<Framing>) -> Self {
        self.framing = Some(framing);
        self
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(framing)) = (&polled, &this.framing) {
            framing.read(&buf.filled()[before..]);
        }
        polled
    }
}

write_through!(Rewind);

/// A response body that completes its exchange's half when it has been sent to its end. A
/// response to HEAD has no body on the wire: it is complete when hyper lets it go.
pub(super) struct Finishing {
    inner: Sending,
    half: Half,
    no_body: bool,
}

impl Finishing {
    pub(super) fn new(inner: Sending, half: Half, no_body: bool) -> Self {
        Finishing {
            inner,
            half,
            no_body,
        }
    }
}

impl http_body::Body for Finishing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.half.complete();
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

impl Drop for Finishing {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended.
        if self.no_body || self.inner.is_end_stream() {
            self.half.complete();
        }
    }
}
