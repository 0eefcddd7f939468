//! Keep-alive connections to the S3 endpoint for the light path, each driven by the request
//! that uses it.
//!
//! hyper-util's pooled client runs every connection in a task of its own and spawns one more
//! per request to hand the connection back to its pool: an answer crosses from the
//! connection's task to the request's, and with one request at a time the runtime parks and
//! wakes a second worker thread for them (what that cost: `docs/performance.md`). Here the
//! request's own task polls its
//! connection: while the request goes out, while it waits for the answer, and while the
//! answer's body is read ([`Driven`] carries the connection and hands it back when the body
//! has ended). An upload's body is then read from the client and written to S3 by the same
//! task, without a hop between tasks for every chunk.
//!
//! A connection in the pool is not polled, so one S3 closed while idle is found when it is
//! taken (a closed connection is noticed on that first poll and dropped; one that fails
//! before the request was written is replaced, as hyper-util does) and by a sweep every
//! [`SWEEP_EVERY`], which also drops connections idle for longer than the idle timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::gather::Gather;
use crate::quiet::Quiet;
use crate::{Body, BoxError};

/// How often idle connections are checked for having been closed or having idled too long.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Why a request got no answer.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made.
    Connect(BoxError),
    /// The connection failed while the request was sent or its answer awaited.
    Exchange(BoxError),
}

impl SendError {
    pub(super) fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("could not connect to the backend"),
            SendError::Exchange(_) => f.write_str("the backend connection failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(&**e),
            SendError::Exchange(e) => Some(&**e),
        }
    }
}

/// Idle connections to one endpoint, most recently used first out.
pub(super) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Scheme and authority of the endpoint.
    endpoint: Uri,
    max_buf_size: usize,
    idle_timeout: Duration,
    /// `backend.download_gather` in bytes; 0: off.
    gather: usize,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One HTTP/1.1 connection, and the waker its holder polls it with (see [`Quiet`]: the
/// connection handing an answer or a chunk to this same task must not count as the task
/// yielding). Kept in a box from the start: it is about 1.5 KiB and moves from the pool to
/// the request, into the answer's body and back, and every future and answer that carries
/// it would copy it each time.
struct Conn {
    link: Link,
    quiet: Quiet,
    /// A plain TCP connection's receive mark, when downloads are gathered.
    gather: Option<Gather>,
}

/// The handle requests are sent on and the state machine that reads and writes the socket,
/// polled by whoever holds the connection.
struct Link {
    send: http1::SendRequest<Body>,
    io: http1::Connection<Io, Body>,
    /// The state machine has finished (the connection is closed); it must not be polled again.
    done: bool,
}

impl Link {
    /// Lets the connection read and write what it can; `true` once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && Pin::new(&mut self.io).poll(cx).is_ready() {
            self.done = true;
        }
        self.done
    }

    /// Whether it can take another request, after a look at the socket (which notices a
    /// connection S3 has closed).
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.drive(&mut cx) && !self.send.is_closed()
    }
}

impl Pool {
    pub(super) fn new(
        connector: HttpsConnector<HttpConnector>,
        endpoint: Uri,
        max_buf_size: usize,
        idle_timeout: Duration,
        gather: usize,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connector,
            endpoint,
            max_buf_size,
            idle_timeout,
            gather,
            idle: Mutex::new(Vec::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends `req` (its URI absolute, as signed) on an idle connection or a new one, and
    /// returns S3's answer; its body drives the connection until it has been read.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Driven>, SendError> {
        // HTTP/1.1 to an origin server: the request line carries path and query only.
        let origin = req
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        *req.uri_mut() = origin;
        loop {
            let (conn, reused) = match self.take() {
                Some(conn) => (conn, true),
                // Boxed: the connector's future is larger than the rest of this one, and only
                // a request that finds no idle connection needs it.
                None => (Box::pin(self.connect()).await?, false),
            };
            match exchange(conn, req).await {
                Ok((resp, conn)) => {
                    let pool = Arc::downgrade(self);
                    return Ok(resp.map(|body| Driven {
                        body,
                        conn: Some(conn),
                        pool,
                    }));
                }
                // A kept-alive connection that S3 closed before the request went out: the
                // request is intact, try the next one (a new connection's failure is final).
                Err(Exchange {
                    unsent: Some(unsent),
                    ..
                }) if reused => req = unsent,
                Err(Exchange { error, .. }) => return Err(SendError::Exchange(error)),
            }
        }
    }

    fn take(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if since.elapsed() < self.idle_timeout && conn.link.reusable() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, mut conn: Box<Conn>) {
        // The task that used it is done with it: a wake for the idle connection (S3 closing
        // it) must not poll that task.
        conn.quiet.forget();
        if let Some(gather) = conn.gather.as_mut() {
            gather.reset();
        }
        if conn.link.reusable() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let io = self
            .connector
            .clone()
            .call(self.endpoint.clone())
            .await
            .map_err(SendError::Connect)?;
        // The socket stays open while the connection lives, and the mark with it.
        let gather = match &io {
            MaybeHttpsStream::Http(tcp) if self.gather > 1 => {
                use std::os::fd::AsRawFd;
                Some(Gather::new(tcp.inner().as_raw_fd(), self.gather))
            }
            _ => None,
        };
        let (send, io) = http1::Builder::new()
            .max_buf_size(self.max_buf_size)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        Ok(Box::new(Conn {
            link: Link {
                send,
                io,
                done: false,
            },
            quiet: Quiet::default(),
            gather,
        }))
    }

    /// Drops connections that idled too long or that S3 has closed.
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|i| i.since.elapsed() < self.idle_timeout && i.conn.link.reusable());
    }
}

async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

/// A failed exchange, with the request when it was never written.
struct Exchange {
    error: BoxError,
    unsent: Option<Request<Body>>,
}

/// Sends `req` on `conn`, polling the connection in this task, up to the answer's head.
async fn exchange(
    mut conn: Box<Conn>,
    req: Request<Body>,
) -> Result<(Response<Incoming>, Box<Conn>), Exchange> {
    let mut req = Some(req);
    // Handing the request over wakes the connection's state machine, so it is done inside
    // the quiet poll too.
    let sent = std::future::poll_fn(|cx| {
        let link = &mut conn.link;
        conn.quiet.poll(cx, |cx| {
            let done = link.drive(cx);
            match link.send.poll_ready(cx) {
                Poll::Pending if done => Poll::Ready(Err(closed())),
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Ok(req.take().map(|req| link.send.try_send_request(req))))
                }
            }
        })
    })
    .await;
    let mut answer = match sent {
        Ok(Some(answer)) => std::pin::pin!(answer),
        Ok(None) => unreachable!("the request is sent once"),
        Err(error) => {
            return Err(Exchange { error, unsent: req });
        }
    };
    let answer = std::future::poll_fn(|cx| {
        let link = &mut conn.link;
        conn.quiet.poll(cx, |cx| {
            let done = link.drive(cx);
            match answer.as_mut().poll(cx) {
                Poll::Ready(Ok(resp)) => Poll::Ready(Ok(resp)),
                Poll::Ready(Err(mut failed)) => Poll::Ready(Err(Exchange {
                    unsent: failed.take_message(),
                    error: failed.into_error().into(),
                })),
                // A connection that has finished answers nothing more.
                Poll::Pending if done => Poll::Ready(Err(Exchange {
                    error: closed(),
                    unsent: None,
                })),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await;
    answer.map(|resp| (resp, conn))
}

/// A connection that ended without an error of its own.
fn closed() -> BoxError {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the backend closed the connection",
    )
    .into()
}

/// An answer's body that drives its connection while it is read, and returns the connection
/// to the pool once the body has ended (dropped before then, the connection is closed: it
/// still holds part of the answer).
pub(super) struct Driven {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Weak<Pool>,
}

impl Driven {
    fn release(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.put(conn);
        }
    }
}

impl HttpBody for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let body = &mut this.body;
        let polled = match this.conn.as_deref_mut() {
            Some(Conn {
                link,
                quiet,
                gather,
            }) => {
                let polled = quiet.poll(cx, |cx| match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => {
                        // The connection reads what S3 sent into the body; look again.
                        link.drive(cx);
                        Pin::new(&mut *body).poll_frame(cx)
                    }
                    ready => ready,
                });
                if let Some(gather) = gather.as_mut().filter(|_| !link.done) {
                    match &polled {
                        // All S3 sent so far has been read: what the body lacks is still to come.
                        Poll::Pending => gather.hold(cx, body.size_hint().exact()),
                        Poll::Ready(Some(Ok(_))) => gather.frame(),
                        Poll::Ready(_) => gather.reset(),
                    }
                }
                polled
            }
            None => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
