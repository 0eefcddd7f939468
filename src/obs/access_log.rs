//! The access log: one JSON line per request, written when the response body has been sent
//! (or abandoned), so byte counts and durations are those of the whole transfer.
//!
//! The layer also owns the request id: a client's `x-request-id` of at most 64 safe
//! characters is kept, anything else is replaced, and the id goes back on every response.
//! Handlers fill a shared [`RequestNote`] (principal, route, key, error) as they go, so even a
//! request whose client vanished mid-way is logged with what was known. No API key, token or
//! link signature is ever put in a note.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use serde::Serialize;
use tower::{Layer, Service};

use super::batch::Batch;
use crate::auth::AuthMethod;
use crate::server::TrustedProxies;
use crate::{Body, BoxError, HttpService};

/// Where access-log lines go: stdout, or a file that [`AccessLog::reopen`] opens again once
/// logrotate has moved it.
pub struct AccessLog {
    out: Out,
    /// `None` for stdout.
    file: Option<PathBuf>,
}

enum Out {
    /// Each line written by the worker that finished its request.
    Direct(Mutex<Box<dyn Write + Send>>),
    /// Lines gathered and written together by a thread of their own.
    Batched(Batch),
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("file", &self.file)
            .field("batched", &matches!(self.out, Out::Batched(_)))
            .finish()
    }
}

impl AccessLog {
    /// `"stdout"` or a file path (appended to). A line waits at most `flush` to be written
    /// with others; zero writes each line as its request ends.
    pub fn open(target: &str, flush: Duration) -> std::io::Result<Self> {
        let file = (target != "stdout").then(|| PathBuf::from(target));
        let out: Box<dyn Write + Send> = match &file {
            None => Box::new(std::io::stdout()),
            Some(path) => Box::new(append(path)?),
        };
        let out = if flush.is_zero() {
            Out::Direct(Mutex::new(out))
        } else {
            Out::Batched(Batch::start(out, flush)?)
        };
        Ok(Self { out, file })
    }

    /// Opens the file again by its name (`SIGHUP`), so lines go to a new file once the old one
    /// was moved away; lines gathered until then go to the old one. The file it had stays in
    /// use if the name cannot be opened. Nothing to do for stdout.
    pub fn reopen(&self) -> std::io::Result<Option<&Path>> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let new: Box<dyn Write + Send> = Box::new(append(path)?);
        match &self.out {
            Out::Direct(out) => {
                *out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
            }
            Out::Batched(batch) => batch.replace(new),
        }
        Ok(Some(path))
    }

    /// Writes the lines still gathered (shutdown, once requests have drained).
    pub fn flush(&self) {
        if let Out::Batched(batch) = &self.out {
            batch.flush();
        }
    }

    fn write(&self, record: &Record<'_>) {
        // A line is about 300 bytes: one allocation instead of a vector grown several times.
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        match &self.out {
            Out::Direct(out) => {
                let mut out = out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                    tracing::warn!(error = %e, "could not write the access log");
                }
            }
            Out::Batched(batch) => batch.push(&line),
        }
    }
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The remote address of the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// What a verified TLS client certificate (mTLS) says of its holder.
    pub client_cert: Option<std::sync::Arc<crate::auth::client_cert::ClientIdentity>>,
}

/// The client's address: the peer, or the forwarded client behind a trusted proxy.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub std::net::IpAddr);

/// The request id, for handlers (error bodies) and the log.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

/// What the handler learned about a request, shared with the access log.
#[derive(Clone, Debug, Default)]
pub struct RequestNote {
    pub principal: Option<String>,
    /// The name of the caller's bucket (never the S3 bucket's).
    pub bucket: Option<Arc<str>>,
    pub auth: Option<AuthMethod>,
    pub route: &'static str,
    pub key: Option<String>,
    pub error_code: Option<&'static str>,
    pub backend_ms: Option<f64>,
    /// Hex SHA-256 of an upload, when the gateway computed one.
    pub sha256: Option<String>,
    /// The `Origin` of a CORS preflight that was refused.
    pub origin: Option<String>,
}

/// Updates the request's note, if the access log gave it one.
pub fn note<B>(req: &Request<B>, f: impl FnOnce(&mut RequestNote)) {
    if let Some(n) = req.extensions().get::<Arc<Mutex<RequestNote>>>()
        && let Ok(mut n) = n.lock()
    {
        f(&mut n);
    }
}

#[derive(Serialize)]
struct Record<'a> {
    ts: String,
    request_id: &'a str,
    remote_addr: Option<&'a str>,
    principal: Option<&'a str>,
    bucket: Option<&'a str>,
    auth: &'static str,
    method: &'a str,
    http_version: &'static str,
    user_agent: Option<&'a str>,
    route: &'static str,
    key: Option<&'a str>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    backend_ms: Option<f64>,
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
}

/// Everything needed to write the line once the transfer ends.
struct Pending {
    log: Arc<AccessLog>,
    start: Instant,
    ts: SystemTime,
    request_id: Arc<str>,
    remote: Option<String>,
    method: http::Method,
    version: http::Version,
    user_agent: Option<String>,
    note: Arc<Mutex<RequestNote>>,
    bytes_in: Arc<AtomicU64>,
    status: u16,
}

impl Pending {
    fn finish(&self, bytes_out: u64, status: u16, fallback_error: Option<&'static str>) {
        // The line is the note's last reader.
        let note = self
            .note
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let route = if note.route.is_empty() {
            "other"
        } else {
            note.route
        };
        let error_code = note.error_code.or(fallback_error);
        super::metrics::in_flight(-1.0);
        let elapsed = self.start.elapsed();
        super::metrics::request_done(super::metrics::Done {
            bucket: note.bucket.as_ref(),
            route,
            method: &self.method,
            status,
            bytes_in,
            bytes_out,
            error_code,
            seconds: elapsed.as_secs_f64(),
        });
        let record = Record {
            ts: humantime::format_rfc3339_millis(self.ts).to_string(),
            request_id: &self.request_id,
            remote_addr: self.remote.as_deref(),
            principal: note.principal.as_deref(),
            bucket: note.bucket.as_deref(),
            auth: note.auth.unwrap_or(AuthMethod::None).as_str(),
            method: self.method.as_str(),
            http_version: version_name(self.version),
            user_agent: self.user_agent.as_deref(),
            route,
            key: note.key.as_deref(),
            status,
            bytes_in,
            bytes_out,
            duration_ms: (elapsed.as_micros() as f64) / 1000.0,
            backend_ms: note.backend_ms,
            error_code,
            sha256: note.sha256.as_deref(),
            origin: note.origin.as_deref(),
        };
        self.log.write(&record);
    }
}

/// Logs a request whose handler was dropped before it answered (the client went away).
struct DropGuard(Option<Pending>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // 499: nginx's "client closed request".
            p.finish(0, 499, Some("client_closed"));
        }
    }
}

/// The outermost layer: request id and access log.
#[derive(Clone, Debug)]
pub struct AccessLogLayer {
    log: Arc<AccessLog>,
    trusted: Arc<TrustedProxies>,
}

impl AccessLogLayer {
    pub fn new(log: Arc<AccessLog>, trusted: TrustedProxies) -> Self {
        Self {
            log,
            trusted: Arc::new(trusted),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Service = AccessLogService;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLogService {
            inner: HttpService::new(inner),
            log: self.log.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLogService {
    inner: HttpService,
    log: Arc<AccessLog>,
    trusted: Arc<TrustedProxies>,
}

impl Service<Request<Body>> for AccessLogService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        super::metrics::in_flight(1.0);
        let request_id: Arc<str> = match req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if is_safe_id(id) => Arc::from(id),
            _ => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
        };
        let note = Arc::new(Mutex::new(RequestNote::default()));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let peer = req.extensions().get::<ConnInfo>().map(|c| c.remote);
        let client_ip = peer.map(|p| self.trusted.client_ip(p, req.headers()));
        // The peer's address and port, or the forwarded client's address.
        let remote = match (peer, client_ip) {
            (Some(p), Some(ip)) if p.ip().to_canonical() == ip => Some(p.to_string()),
            (_, Some(ip)) => Some(ip.to_string()),
            _ => None,
        };
        let pending = Pending {
            log: self.log.clone(),
            start,
            ts: SystemTime::now(),
            request_id: request_id.clone(),
            remote,
            method: req.method().clone(),
            version: req.version(),
            user_agent: req.headers().get(http::header::USER_AGENT).map(|v| {
                String::from_utf8_lossy(&v.as_bytes()[..v.len().min(MAX_USER_AGENT)]).into_owned()
            }),
            note: note.clone(),
            bytes_in: bytes_in.clone(),
            status: 0,
        };

        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(RequestId(request_id.clone()));
        if let Some(ip) = client_ip {
            parts.extensions.insert(ClientIp(ip));
        }
        parts.extensions.insert(note);
        let body = CountIn {
            inner: body,
            count: bytes_in,
        }
        .boxed();
        let req = Request::from_parts(parts, body);

        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut guard = DropGuard(Some(pending));
            let Ok(response) = inner.call(req).await;
            let (mut parts, body) = response.into_parts();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                parts.headers.insert("x-request-id", v);
            }
            let mut pending = guard
                .0
                .take()
                .expect("the guard holds the record until here");
            pending.status = parts.status.as_u16();
            let body = CountOut {
                inner: body,
                count: 0,
                pending: Some(pending),
            }
            .boxed();
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// The most of a `User-Agent` the log keeps.
const MAX_USER_AGENT: usize = 256;

fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "other",
    }
}

/// At most 64 characters from a set that cannot break a log line or a header.
fn is_safe_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Counts request body bytes.
struct CountIn {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl HttpBody for CountIn {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts response body bytes and writes the log line when the body ends or is dropped.
struct CountOut {
    inner: Body,
    count: u64,
    pending: Option<Pending>,
}

impl HttpBody for CountOut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.done(None),
            Poll::Ready(Some(Err(e))) => {
                // The headers are out; the connection is aborted so the client sees a failed
                // transfer, never a silently truncated one.
                tracing::warn!(error = %e, "response body failed mid-stream");
                self.done(Some("backend_error"));
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl CountOut {
    fn done(&mut self, error: Option<&'static str>) {
        if let Some(p) = self.pending.take() {
            p.finish(self.count, p.status, error);
        }
    }
}

impl Drop for CountOut {
    fn drop(&mut self) {
        let error = if self.inner.is_end_stream() {
            None
        } else {
            Some("client_closed")
        };
        self.done(error);
    }
}
