//! Building responses: JSON bodies, errors, and the headers every download carries.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};

use crate::limits::Permit;

use crate::Body;
use crate::error::{ApiError, error_body};

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|e| match e {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The response for an error: status, extra headers and the JSON body of SPEC section 7.
/// The error's log-only detail is logged here, once, with the request id.
pub(crate) fn error(err: &ApiError, request_id: &str) -> Response<Body> {
    log(err, request_id);
    let body = Full::new(Bytes::from(error_body(err, request_id)))
        .map_err(|e| match e {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in &err.headers {
        h.insert(name.clone(), value.clone());
    }
    resp
}

/// Logs an error once, with its request id: a refusal at debug, a failure at warn, with its
/// log-only detail and its cause (both `/v1`'s JSON and the S3 door's XML answers log here).
pub(crate) fn log(err: &ApiError, request_id: &str) {
    let cause = err.source.as_deref().map(|e| crate::error::chain(e));
    match err.origin {
        crate::error::Origin::Client => {
            tracing::debug!(
                request_id,
                code = err.code.as_str(),
                detail = err.detail.as_deref(),
                cause = cause.as_deref(),
                "request refused"
            )
        }
        _ => tracing::warn!(
            request_id,
            code = err.code.as_str(),
            detail = err.detail.as_deref(),
            cause = cause.as_deref(),
            "request failed"
        ),
    }
}

/// The answer to a request refused before it reached a handler: the error's code in its
/// access-log note, and the error response with its request id.
pub(crate) fn refuse<B>(req: &http::Request<B>, err: &ApiError) -> Response<Body> {
    crate::obs::note(req, |n| n.error_code = Some(err.code.as_str()));
    let id = req.extensions().get::<crate::obs::RequestId>();
    let s3 = req.extensions().get::<crate::door::S3Dialect>().is_some();
    error_in(err, id.map_or("-", |r| &r.0), s3)
}

/// [`error`], or S3's XML error for a request that came through the S3 door.
pub(crate) fn error_in(err: &ApiError, request_id: &str, s3: bool) -> Response<Body> {
    if !s3 {
        return error(err, request_id);
    }
    crate::door::errors::response(crate::door::errors::to_s3(err, request_id))
}

/// Moves `permits` onto the response body: they are released when it ends or is dropped.
pub(crate) fn holding(resp: Response<Body>, permits: Vec<Permit>) -> Response<Body> {
    if permits.is_empty() {
        return resp;
    }
    resp.map(|inner| {
        Holding {
            inner,
            _permits: permits,
        }
        .boxed()
    })
}

struct Holding {
    inner: Body,
    _permits: Vec<Permit>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Media types a browser may execute or render as a document on our origin: they are
/// always served as attachments.
pub(crate) fn is_active_content(media_type: Option<&str>) -> bool {
    let Some(t) = media_type else { return true };
    matches!(
        t,
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "application/wasm"
            | "text/css"
    ) || t.ends_with("+xml")
        || is_script_type(t)
}

/// The JavaScript MIME type essences of the WHATWG MIME Sniffing standard, plus the module
/// and JSON-script types browsers run: what a `<script src>` on our origin would execute.
fn is_script_type(t: &str) -> bool {
    matches!(
        t,
        "application/ecmascript"
            | "application/javascript"
            | "application/x-ecmascript"
            | "application/x-javascript"
            | "text/ecmascript"
            | "text/javascript"
            | "text/javascript1.0"
            | "text/javascript1.1"
            | "text/javascript1.2"
            | "text/javascript1.3"
            | "text/javascript1.4"
            | "text/javascript1.5"
            | "text/jscript"
            | "text/livescript"
            | "text/x-ecmascript"
            | "text/x-javascript"
            | "application/x-jscript"
            | "text/x-jscript"
            | "application/jscript"
    )
}

/// `attachment` with the key's last segment as the file name (ASCII fallback and RFC 5987).
pub(crate) fn attachment(file_name: &str) -> HeaderValue {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._- ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded =
        percent_encoding::utf8_percent_encode(file_name, percent_encoding::NON_ALPHANUMERIC);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_content() {
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xml",
            "application/atom+xml",
            "text/javascript",
            "text/jscript",
            "application/x-ecmascript",
            "text/livescript",
            "text/javascript1.5",
            "text/x-javascript",
            "text/css",
        ] {
            assert!(is_active_content(Some(t)), "{t}");
        }
        for t in [
            "image/png",
            "application/pdf",
            "text/plain",
            "application/octet-stream",
        ] {
            assert!(!is_active_content(Some(t)), "{t}");
        }
        assert!(is_active_content(None));
    }

    #[test]
    fn attachment_names() {
        let v = attachment("rapport été \"x\".html");
        let s = v.to_str().unwrap();
        assert!(
            s.starts_with(
                "attachment; filename=\"rapport _t_ _x_.html\"; filename*=UTF-8''rapport%20"
            ),
            "{s}"
        );
    }
}
