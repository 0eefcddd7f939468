//! The HTTP front: turns a request into one operation, runs the phases in order, and turns
//! the outcome into a response. Each handler is a sequence of plain async phases:
//! route → authenticate → resolve the key → authorize → check limits → relay → respond.
//! Errors from any phase become JSON through [`respond::error`], and every phase records
//! what it learned in the request's access-log note.

mod list;
mod objects;
pub(crate) mod respond;

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use http::{Method, Request, Response};
use tower::Service;

use crate::Body;
use crate::auth::{Identity, KeyTable};
use crate::error::ApiError;
use crate::obs::{RequestId, note};
use crate::relay::Backend;

/// What every request can reach. Swapped whole on reload (later), so it holds no locks.
#[derive(Debug)]
pub struct AppState {
    pub backend: Backend,
    pub keys: KeyTable,
    /// `server.body_idle_timeout`.
    pub body_idle_timeout: std::time::Duration,
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let request_id = req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_else(|| Arc::from("-"));
            let note_handle = req
                .extensions()
                .get::<Arc<std::sync::Mutex<crate::obs::RequestNote>>>()
                .cloned();
            // A panic in a handler becomes a 500 for this request, never a dropped connection
            // without a log line.
            let outcome = AssertUnwindSafe(dispatch(&state, req)).catch_unwind().await;
            let result = outcome.unwrap_or_else(|_| Err(ApiError::internal("handler panicked")));
            Ok(match result {
                Ok(resp) => resp,
                Err(err) => {
                    if let Some(n) = note_handle
                        && let Ok(mut n) = n.lock()
                    {
                        n.error_code = Some(err.code.as_str());
                    }
                    respond::error(&err, &request_id)
                }
            })
        })
    }
}

/// The routes of SPEC section 3 that this build serves.
async fn dispatch(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    if let Some(encoded_key) = path.strip_prefix("/v1/objects/").filter(|k| !k.is_empty()) {
        note(&req, |n| n.route = "object");
        let encoded_key = encoded_key.to_owned();
        return match *req.method() {
            Method::GET => objects::get(state, req, &encoded_key, true).await,
            Method::HEAD => objects::get(state, req, &encoded_key, false).await,
            Method::PUT => objects::put(state, req, &encoded_key).await,
            Method::DELETE => objects::delete(state, req, &encoded_key).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE")),
        };
    }
    if path == "/v1/objects" || path == "/v1/objects/" {
        note(&req, |n| n.route = "list");
        return match *req.method() {
            Method::GET | Method::HEAD => list::list(state, req).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD")),
        };
    }
    Err(ApiError::new(crate::error::Code::NotFound, "no such route"))
}

/// Authenticates the request and records who it is.
fn authenticate(state: &AppState, req: &Request<Body>) -> Result<Identity, ApiError> {
    let identity = state.keys.authenticate(req.headers())?;
    note(req, |n| {
        n.principal = Some(identity.principal.name.clone());
        n.auth = Some(identity.method);
    });
    Ok(identity)
}
