//! The admin listener: `/healthz` (the process is alive), `/readyz` (every bucket answered
//! its last check and the gateway is not draining) and `/metrics` (Prometheus text). It is a
//! separate listener, loopback by default, never the public one.
//!
//! Readiness is a cached `HeadBucket`, refreshed in the background, so a probe every second
//! from every load balancer costs S3 nothing.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::relay::{Backend, Buckets};

/// What the probes report.
#[derive(Debug)]
pub struct Health {
    /// Each bucket, and whether it answered the last check.
    buckets: Vec<(Backend, AtomicBool)>,
    draining: AtomicBool,
}

impl Health {
    pub fn new(buckets: &Buckets) -> Arc<Self> {
        Arc::new(Self {
            buckets: buckets
                .iter()
                .map(|b| (b.clone(), AtomicBool::new(false)))
                .collect(),
            draining: AtomicBool::new(false),
        })
    }

    /// Asks every bucket now and remembers the answers; `true` when all answered.
    pub async fn check(&self) -> bool {
        let answers =
            futures_util::future::join_all(self.buckets.iter().map(|(b, _)| b.ping())).await;
        let mut all = true;
        for ((backend, was), answer) in self.buckets.iter().zip(answers) {
            let ok = answer.is_ok();
            all &= ok;
            if ok != was.swap(ok, Ordering::Relaxed) {
                if ok {
                    tracing::info!(bucket = backend.name(), "the bucket answers: ready");
                } else {
                    tracing::warn!(
                        bucket = backend.name(),
                        "the bucket does not answer: not ready"
                    );
                }
            }
            crate::obs::metrics::backend_ready(backend.name(), ok);
        }
        all
    }

    /// Checks the buckets every `interval` for as long as the process runs (the first check
    /// one interval from now: start-up has just made one).
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                this.check().await;
            }
        })
    }

    /// From now on `/readyz` says no: the gateway is shutting down.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Every bucket answered its last check, and the gateway is not draining.
    pub fn is_ready(&self) -> bool {
        self.unready().is_empty() && !self.draining.load(Ordering::Relaxed)
    }

    /// The names of the buckets that did not answer their last check.
    fn unready(&self) -> Vec<&str> {
        self.buckets
            .iter()
            .filter(|(_, ok)| !ok.load(Ordering::Relaxed))
            .map(|(b, _)| b.name())
            .collect()
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let health = health.clone();
                let service = hyper::service::service_fn(move |req| answer(health.clone(), req));
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

async fn answer(
    health: Arc<Health>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET | &http::Method::HEAD, "/healthz") => {
            (StatusCode::OK, "text/plain", "ok\n".to_owned())
        }
        (&http::Method::GET | &http::Method::HEAD, "/readyz") => {
            if health.is_ready() {
                (StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else if health.draining.load(Ordering::Relaxed) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".to_owned(),
                )
            } else {
                let names = health.unready().join(", ");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: the bucket does not answer: {names}\n"),
                )
            }
        }
        (&http::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::obs::metrics::render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Asks the admin listener at `addr` for `path`: `Ok` with its answer when it is `200`, else
/// `Err` with why not (its status and answer, or what failed), for `portcullis health`.
pub async fn probe(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        s.take(4096)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head.lines().next().unwrap_or("").trim().to_owned();
        let body = body.trim().to_owned();
        if status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200") {
            Ok(body)
        } else if status.is_empty() {
            Err(format!("{addr} closed the connection without answering"))
        } else {
            Err(format!("{path}: {status}: {body}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{addr} did not answer within 5 s")))
}
