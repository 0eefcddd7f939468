//! Panic catching as a tower layer: a panic while a request is handled becomes a logged
//! `500 internal_error` answer for that request, never a dropped connection without an
//! access-log line.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};

use super::respond;
use crate::Body;
use crate::error::ApiError;
use crate::obs::{RequestId, RequestNote};

/// Catches a panic in the services inside it.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer;

impl<S> tower::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// [`CatchPanicLayer`]'s service.
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for CatchPanic<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Unpin,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Catching<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
        let note = req.extensions().get::<Arc<Mutex<RequestNote>>>().cloned();
        let s3 = req.extensions().get::<crate::door::S3Dialect>().is_some();
        // A panic in `call` itself is caught too.
        let inner = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        Catching {
            inner: inner.ok(),
            request_id,
            note,
            s3,
        }
    }
}

/// The future of a request whose panic is caught.
pub struct Catching<F> {
    /// `None` when `call` panicked.
    inner: Option<F>,
    request_id: Option<Arc<str>>,
    note: Option<Arc<Mutex<RequestNote>>>,
    /// Answer in S3's XML (the request came through the door).
    s3: bool,
}

impl<F, E> Future for Catching<F>
where
    F: Future<Output = Result<Response<Body>, E>> + Unpin,
{
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Some(inner) => std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))),
            None => Err(Box::new("panicked in call") as Box<dyn std::any::Any + Send>),
        };
        match polled {
            Ok(poll) => poll,
            Err(_) => {
                // The panicked future is dropped now, and with it whatever it held.
                this.inner = None;
                let err = ApiError::internal("handler panicked");
                if let Some(n) = &this.note
                    && let Ok(mut n) = n.lock()
                {
                    n.error_code = Some(err.code.as_str());
                }
                let id = this.request_id.clone().unwrap_or_else(|| Arc::from("-"));
                Poll::Ready(Ok(respond::error_in(&err, &id, this.s3)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    async fn answer<S>(service: S) -> (http::StatusCode, String, Option<&'static str>)
    where
        S: tower::Service<
                Request<Body>,
                Response = Response<Body>,
                Error = std::convert::Infallible,
            >,
        S::Future: Unpin,
    {
        let note = Arc::new(Mutex::new(RequestNote::default()));
        let mut req = Request::new(crate::api::respond::empty());
        req.extensions_mut().insert(RequestId(Arc::from("req-7")));
        req.extensions_mut().insert(note.clone());
        let resp = CatchPanicLayer.layer(service).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let code = note.lock().unwrap().error_code;
        (status, String::from_utf8_lossy(&body).into_owned(), code)
    }

    #[tokio::test]
    async fn a_panic_while_answering_is_a_500_with_the_request_id() {
        let panics_in_poll = tower::service_fn(|_req: Request<Body>| {
            futures_util::future::lazy(|_| -> Result<Response<Body>, std::convert::Infallible> {
                panic!("a bug")
            })
        });
        let (status, body, code) = answer(panics_in_poll).await;
        assert_eq!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body.contains("internal_error") && body.contains("req-7"),
            "{body}"
        );
        assert_eq!(code, Some("internal_error"));
    }

    #[tokio::test]
    async fn a_panic_in_call_is_caught_too() {
        let panics_in_call = tower::service_fn(
            |_req: Request<Body>| -> std::future::Ready<Result<Response<Body>, std::convert::Infallible>> {
                panic!("a bug before any future")
            },
        );
        let (status, _, code) = answer(panics_in_call).await;
        assert_eq!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code, Some("internal_error"));
    }
}
