//! The listener: accept loop, TLS (rustls, optional), HTTP/1.1 and HTTP/2 on hyper (the
//! protocol and the parking of idle HTTP/1.1 connections in `conn.rs`), TCP_NODELAY on every
//! connection, the header read deadline, and graceful shutdown.

/// `AsyncWrite` for a read-side adapter `$ty<T>` whose writes all go straight to its field
/// `inner` (vectored writes included).
macro_rules! write_through {
    ($ty:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}

mod client_ip;
mod coalesce;
mod conn;
mod framing;
mod lingering;
mod read_ahead;
mod send_deadline;
pub mod tls;

pub use client_ip::TrustedProxies;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::obs::ConnInfo;
use crate::{Body, BoxError, HttpService};

/// Largest HTTP/1.1 read buffer per connection.
const H1_MAX_BUF: usize = 64 * 1024;
/// An HTTP/1.1 connection idle this long is parked outside hyper (`conn.rs`).
const PARK_AFTER: Duration = Duration::from_millis(500);
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 128;
/// Header bytes per request (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`).
const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Streams a client may reset before the server accepted them.
const H2_MAX_PENDING_RESETS: usize = 32;
/// Streams the server may reset for a client's protocol errors.
const H2_MAX_LOCAL_RESETS: usize = 256;

/// Marks a request whose head had both `Content-Length` and `Transfer-Encoding`: the gateway
/// refuses it (`400`), and hyper closes its connection after the answer.
#[derive(Clone, Copy, Debug)]
pub struct AmbiguousFraming;

/// Where each TLS handshake gets its config: the current one, swapped on reload.
#[derive(Clone)]
pub struct TlsSource(pub Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>);

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSource")
    }
}

/// Deadlines of the listener.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// TLS on the listener; plain HTTP when `None`.
    pub tls: Option<TlsSource>,
    /// A client that has not sent its request head by then is dropped (slowloris).
    pub header_read_timeout: Duration,
    /// An HTTP/1.1 connection idle between requests for this long is closed.
    pub keep_alive_timeout: Duration,
    /// After the shutdown signal, how long in-flight requests may run.
    pub shutdown_grace: Duration,
    /// A response the client takes nothing of for this long is given up (`send_deadline.rs`).
    pub send_idle_timeout: Duration,
    /// Connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for up to `shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    service: HttpService,
    opts: ServerOptions,
) {
    // A connection's read buffer grows with a fast upload up to this (hyper's default is
    // about 400 KiB): 64 uploads at once would hold 26 MiB in buffers alone. Reads of 64 KiB
    // cost no throughput here (see the README's performance section).
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(H1_MAX_BUF);
    // HTTP/2, set deliberately rather than left to defaults: a bounded number of streams per
    // connection and of header bytes per request, and a cap on streams a client opens and
    // resets before we answer (the "rapid reset" attack, CVE-2023-44487) and on streams we
    // must reset for its protocol errors; past either cap the connection is closed.
    // Each stream runs under the send deadline; PINGs find a peer that has gone away with
    // streams open (an idle connection is closed by `conn.rs`).
    let mut h2 = http2::Builder::new(send_deadline::StreamExecutor {
        limit: opts.send_idle_timeout,
    });
    h2.timer(TokioTimer::new())
        .keep_alive_interval(Some(opts.keep_alive_timeout / 2))
        .keep_alive_timeout(opts.header_read_timeout)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    let protocols = Arc::new(conn::Protocols {
        h1,
        h2,
        header_read_timeout: opts.header_read_timeout,
        keep_alive_timeout: opts.keep_alive_timeout,
        park_after: PARK_AFTER.min(opts.header_read_timeout / 2),
        send_idle_timeout: opts.send_idle_timeout,
        stop: CancellationToken::new(),
    });
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= opts.max_connections {
                    crate::obs::metrics::connection_refused();
                    tracing::debug!(%remote, max = opts.max_connections, "connection refused: server.max_connections are open");
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let protocols = protocols.clone();
                match &opts.tls {
                    None => {
                        let info = ConnInfo { remote, client_cert: None };
                        connections.spawn(counted(async move {
                            protocols.serve_plain(stream, service, info).await;
                        }));
                    }
                    Some(tls) => {
                        // The handshake runs in the connection's task, within the header
                        // deadline, so a slow client never holds up the accept loop.
                        let acceptor = tokio_rustls::TlsAcceptor::from((tls.0)());
                        let deadline = opts.header_read_timeout;
                        connections.spawn(counted(async move {
                            let stream = match tokio::time::timeout(deadline, acceptor.accept(read_ahead::ReadAhead::new(stream))).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    crate::obs::metrics::tls_handshake_failed();
                                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let client_cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(crate::auth::client_cert::identity_of)
                                .map(Arc::new);
                            let info = ConnInfo { remote, client_cert };
                            protocols.serve_tls(stream, service, info).await;
                        }));
                    }
                }
            }
            () = &mut shutdown => {
                drop(listener);
                break;
            }
        }
    }
    tracing::info!(grace = ?opts.shutdown_grace, "shutting down: no new connections, finishing in-flight requests");
    protocols.stop.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(opts.shutdown_grace) => tracing::warn!("shutdown grace ran out; closing the remaining connections"),
    }
}

/// One connection, counted in the metrics while it is open.
async fn counted(conn: impl Future<Output = ()>) {
    crate::obs::metrics::connections(1.0);
    conn.await;
    crate::obs::metrics::connections(-1.0);
}

/// The hyper service of one connection. On HTTP/1.1, `exchanges` learns when each exchange is
/// complete, so the connection can be parked between requests.
fn gateway_fn(
    service: HttpService,
    info: ConnInfo,
    exchanges: Option<Arc<conn::Exchanges>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = BoxFuture<'static, Result<Response<Body>, Infallible>>,
> + Clone {
    hyper::service::service_fn(move |req| to_gateway(&service, &info, exchanges.as_ref(), req))
}

/// Hands a hyper request to the gateway, with the connection's details.
fn to_gateway(
    service: &HttpService,
    info: &ConnInfo,
    exchanges: Option<&Arc<conn::Exchanges>>,
    req: Request<Incoming>,
) -> BoxFuture<'static, Result<Response<Body>, Infallible>> {
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(info.clone());
    let expects_continue = parts
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (request_half, response_half) = match exchanges {
        Some(e) => {
            if e.framing.next_is_ambiguous() {
                parts.extensions.insert(AmbiguousFraming);
            }
            let (a, b) = e.begin(client_closes(&parts));
            (Some(a), Some(b))
        }
        None => (None, None),
    };
    let no_body = parts.method == http::Method::HEAD;
    let body = lingering::Lingering::new(body, expects_continue, request_half);
    let req = Request::from_parts(parts, body.map_err(box_hyper_error).boxed());
    let answer = service.clone().oneshot(req);
    // The body is made (and so joins its task's send deadline) inside hyper's poll.
    match response_half {
        // hyper leaves a HEAD answer's body out on HTTP/1.1, but on h2 it sends it as DATA,
        // which clients reject as a protocol error: it goes (and what it held with it) here.
        None if no_body => {
            Box::pin(answer.map(|resp| resp.map(|resp| resp.map(|_| crate::api::respond::empty()))))
        }
        None => Box::pin(answer.map(move |resp| {
            resp.map(|resp| resp.map(|b| send_deadline::Sending::new(b).boxed()))
        })),
        Some(half) => Box::pin(answer.map(move |resp| {
            resp.map(|resp| {
                resp.map(|b| {
                    conn::Finishing::new(send_deadline::Sending::new(b), half, no_body).boxed()
                })
            })
        })),
    }
}

/// Does the client want the connection closed after this request?
fn client_closes(parts: &http::request::Parts) -> bool {
    let says = |token: &str| {
        parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match parts.version {
        http::Version::HTTP_10 => !says("keep-alive"),
        _ => says("close"),
    }
}

/// A named function, not a closure: a closure's `Box<dyn Error>` return type would get a
/// higher-ranked lifetime that no longer matches the service's body type.
fn box_hyper_error(e: hyper::Error) -> BoxError {
    Box::new(e)
}
