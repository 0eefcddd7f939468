//! The HTTP front: turns a request into one operation, runs the phases in order, and turns
//! the outcome into a response. [`Gateway`] (the router, innermost in the stack `crate::run`
//! builds) refuses a request two hops could read two ways, then routes; each handler is a
//! sequence of plain async
//! phases: admission (`admission.rs`: resolve the key → authenticate → authorize → admit
//! within the principal's rate and transfer cap) → check limits → relay → respond. Errors
//! from any phase become JSON through `respond::error`, and every phase records what it
//! learned in the request's access-log note.

pub(crate) mod admission;
pub(crate) mod conditions;
mod links;
mod list;
pub(crate) mod objects;
mod panic;
pub(crate) mod respond;

pub use panic::{CatchPanic, CatchPanicLayer};

pub use objects::parse_range;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::FutureExt;
use http::{Method, Request, Response};
use tower::Service;

use crate::Body;
use crate::auth::{JwtVerifier, KeyTable, LinkSigner};
use crate::error::ApiError;
use crate::limits::{Admission, AuthFailures};
use crate::obs::{RequestId, note};
use crate::policy::{Action, Principal};
use crate::relay::{Backend, Buckets};

/// What every request can reach. Built from one config and swapped whole on reload, so a
/// request sees one consistent config from start to end; it holds no locks.
#[derive(Debug)]
pub struct AppState {
    /// Every bucket, fixed for the process; a principal names its own.
    pub buckets: Buckets,
    /// Bytes per principal today on this instance (kept across reloads).
    pub ledger: Arc<crate::limits::quota::Ledger>,
    /// `[redis]`: the limits shared with the other instances (kept across reloads).
    pub shared: Option<Arc<crate::limits::shared::SharedLimits>>,
    pub keys: KeyTable,
    /// `[jwt]`, when bearer JWTs are accepted.
    pub jwt: Option<JwtVerifier>,
    /// `[links]`, when signed links are issued and accepted.
    pub links: Option<LinkSigner>,
    /// Configured principals by name (the principal a link names).
    pub principals: HashMap<String, Arc<Principal>>,
    /// Configured principals by client-certificate subject (mTLS).
    pub subjects: HashMap<String, Arc<Principal>>,
    /// `[s3_api]`, when the S3 front door is open.
    pub door: Option<crate::door::Settings>,
    /// The door's access keys, with their derived secrets.
    pub access_keys: crate::auth::access_keys::AccessKeys,
    /// The door's budget for aws-chunked chunks being gathered (kept across reloads).
    pub chunk_room: Arc<tokio::sync::Semaphore>,
    /// `server.public_url`: makes links absolute.
    pub public_url: Option<String>,
    /// Failed authentication per client address (kept across reloads).
    pub auth_failures: Arc<AuthFailures>,
    /// `server.body_idle_timeout`.
    pub body_idle_timeout: std::time::Duration,
}

impl AppState {
    /// The bucket a principal works in.
    pub fn bucket_of(&self, principal: &Principal) -> Result<&Backend, ApiError> {
        // `build_state` refuses a principal whose bucket is not running.
        self.buckets.get(&principal.bucket).ok_or_else(|| {
            ApiError::internal(format!(
                "the principal's bucket `{}` is not running",
                principal.bucket
            ))
        })
    }
}

/// The innermost service: routing and handlers.
#[derive(Clone, Debug)]
pub struct Gateway {
    state: Arc<AppState>,
}

impl Gateway {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            // A request two hops could read two ways is refused before it is routed.
            if let Err(err) = read_one_way(&req) {
                return Ok(respond::refuse(&req, &err));
            }
            // The permits the request holds (its place from the shedding layer, then its
            // principal's) ride on the response body, so a streamed transfer holds its
            // place until its last byte.
            let admission = match req.extensions().get::<Admission>() {
                Some(admission) => admission.clone(),
                None => {
                    let admission = Admission::default();
                    req.extensions_mut().insert(admission.clone());
                    admission
                }
            };
            let request_id = req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_else(|| Arc::from("-"));
            let note_handle = req
                .extensions()
                .get::<Arc<std::sync::Mutex<crate::obs::RequestNote>>>()
                .cloned();
            let resp = match dispatch(&state, req).await {
                Ok(resp) => resp,
                Err(err) => {
                    if let Some(n) = note_handle
                        && let Ok(mut n) = n.lock()
                    {
                        n.error_code = Some(err.code.as_str());
                    }
                    respond::error(&err, &request_id)
                }
            };
            Ok(respond::holding(resp, admission.take()))
        })
    }
}

/// Refuses a request that two hops could read two ways: one framed by both `Content-Length`
/// and `Transfer-Encoding` (SPEC section 6), or without exactly one host. An HTTP/1.1 request
/// names its host once (RFC 9112 section 3.2: a server must answer 400 to none or several);
/// HTTP/1.0 and HTTP/2 (`:authority`) may leave it out, but never repeat it.
pub(crate) fn read_one_way<B>(req: &Request<B>) -> Result<(), ApiError> {
    if req
        .extensions()
        .get::<crate::server::AmbiguousFraming>()
        .is_some()
    {
        return Err(ApiError::bad_request(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    let hosts = req.headers().get_all(http::header::HOST).iter().count();
    match (req.version(), hosts) {
        (_, 2..) => Err(ApiError::bad_request(
            "the request has more than one Host header",
        )),
        (http::Version::HTTP_11, 0) => Err(ApiError::bad_request(
            "an HTTP/1.1 request needs a Host header",
        )),
        _ => Ok(()),
    }
}

pub(crate) use crate::relay::Read;

/// The routes of SPEC section 3 that this build serves.
///
/// Each handler's future is boxed: inline, this future would be as large as the largest of
/// them (an upload's, about 24 KiB), and every request would allocate and copy that much.
async fn dispatch(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    if let Some(encoded_key) = path.strip_prefix("/v1/objects/").filter(|k| !k.is_empty()) {
        note(&req, |n| n.route = "object");
        let encoded_key = encoded_key.to_owned();
        return match *req.method() {
            Method::GET => Box::pin(objects::get(state, req, &encoded_key, Read::Body)).await,
            Method::HEAD => Box::pin(objects::get(state, req, &encoded_key, Read::Head)).await,
            Method::PUT => Box::pin(objects::put(state, req, &encoded_key)).await,
            Method::DELETE => Box::pin(objects::delete(state, req, &encoded_key)).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE")),
        };
    }
    if crate::console::is_asset(path) {
        note(&req, |n| n.route = "console");
        return match *req.method() {
            Method::GET | Method::HEAD => {
                Ok(crate::console::serve(path, &req).expect("is_asset said it is one"))
            }
            _ => Err(ApiError::method_not_allowed("GET, HEAD")),
        };
    }
    if path == "/v1/me" {
        note(&req, |n| n.route = "me");
        return match *req.method() {
            Method::GET => me(state, req).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        };
    }
    if path == "/v1/links" || path == "/s3/upload-url" || path == "/s3/download-url" {
        note(&req, |n| n.route = "link");
        return match (path, req.method()) {
            ("/v1/links", &Method::POST) => Box::pin(links::create(state, req)).await,
            ("/s3/upload-url", &Method::POST) => Box::pin(links::upload_url(state, req)).await,
            ("/s3/download-url", &Method::GET) => Box::pin(links::download_url(state, req)).await,
            ("/s3/download-url", _) => Err(ApiError::method_not_allowed("GET")),
            _ => Err(ApiError::method_not_allowed("POST")),
        };
    }
    if path == "/v1/objects" || path == "/v1/objects/" {
        note(&req, |n| n.route = "list");
        return match *req.method() {
            Method::GET | Method::HEAD => Box::pin(list::list(state, req)).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD")),
        };
    }
    Err(ApiError::new(crate::error::Code::NotFound, "no such route"))
}

/// `GET /v1/me`: who the credential is and what it may do, for the console (and any client
/// that wants to know its prefix before it uploads).
async fn me(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let identity = admission::authenticate(state, &req).await?;
    let p = &identity.principal;
    let allow: Vec<&str> = [
        Action::Get,
        Action::Put,
        Action::Delete,
        Action::List,
        Action::Link,
    ]
    .into_iter()
    .filter(|a| p.may(*a))
    .map(Action::as_str)
    .collect();
    Ok(respond::json(
        http::StatusCode::OK,
        &serde_json::json!({
            "principal": &*p.name,
            "bucket": &*p.bucket,
            "auth": identity.method.as_str(),
            "prefix": p.prefix,
            "allow": allow,
            "max_object_size": p.limits.max_object_size.bytes(),
            "links": state.links.is_some() && p.may(Action::Link),
            // The longest link lifetime that may be asked for, in seconds.
            "max_link_seconds": state.links.as_ref().map(|l| l.max_ttl.as_secs()),
        }),
    ))
}

/// Runs a relay call and records its time in the access log and the metrics.
///
/// A combinator rather than an `async fn`: an `async fn` would hold `call` twice in its
/// state, as its argument and as the future it awaits, and a relay call's future is large.
pub(crate) fn timed<'a, B, T>(
    req: &'a Request<B>,
    op: &'static str,
    call: impl Future<Output = T> + 'a,
) -> impl Future<Output = T> + 'a {
    let start = Instant::now();
    call.inspect(move |_| {
        let elapsed = start.elapsed();
        let mut bucket = None;
        note(req, |n| {
            n.backend_ms = Some(elapsed.as_micros() as f64 / 1000.0);
            bucket = n.bucket.clone();
        });
        crate::obs::metrics::backend_call(bucket.as_ref(), op, elapsed.as_secs_f64());
    })
}
