//! The door's errors: every [`ApiError`] as the S3 error the SDKs know, in S3's XML.
//!
//! One table ([`s3_code`]) serves both the operations (whose errors s3s serializes) and the
//! refusals made before s3s sees a request (the shedding layer, the door's own checks), so a
//! client meets one vocabulary whichever layer refused it.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use s3s::{S3Error, S3ErrorCode};

use crate::Body;
use crate::error::{ApiError, Code};

/// S3's code and status for one of ours.
pub(crate) fn s3_code(code: Code) -> (S3ErrorCode, StatusCode) {
    use S3ErrorCode as S;
    let s = |c: S| {
        let status = c.status_code().unwrap_or(StatusCode::BAD_REQUEST);
        (c, status)
    };
    match code {
        Code::BadRequest => s(S::InvalidRequest),
        Code::InvalidKey => s(S::InvalidArgument),
        Code::InvalidRange | Code::RangeNotSatisfiable => s(S::InvalidRange),
        Code::BadDigest => s(S::BadDigest),
        // A refused credential; the signature codes are s3s's own.
        Code::Unauthenticated | Code::Forbidden | Code::LinkInvalid | Code::LinkExpired => {
            s(S::AccessDenied)
        }
        // A type the policy refuses is a denial, as a bucket policy's condition would be.
        Code::UnsupportedMediaType => s(S::AccessDenied),
        Code::NotFound => s(S::NoSuchKey),
        Code::NoSuchUpload => s(S::NoSuchUpload),
        Code::MethodNotAllowed => s(S::MethodNotAllowed),
        Code::BodyTimeout | Code::ClientClosed => s(S::RequestTimeout),
        Code::LengthRequired => s(S::MissingContentLength),
        Code::PreconditionFailed => s(S::PreconditionFailed),
        Code::PayloadTooLarge => s(S::EntityTooLarge),
        // Every rate limit and overload is the answer SDKs back off and retry.
        Code::RateLimited | Code::QuotaExceeded | Code::Overloaded => {
            (S::SlowDown, StatusCode::SERVICE_UNAVAILABLE)
        }
        Code::BackendUnavailable | Code::BackendTimeout => {
            (S::ServiceUnavailable, StatusCode::SERVICE_UNAVAILABLE)
        }
        Code::Internal | Code::BackendError => s(S::InternalError),
    }
}

/// `err` as an [`S3Error`]: S3's code, the safe message, the request id, and the headers it
/// carries (`Retry-After`). The detail and cause are logged here, as `respond::error` does.
pub(crate) fn to_s3(err: &ApiError, request_id: &str) -> S3Error {
    crate::api::respond::log(err, request_id);
    let (code, status) = s3_code(err.code);
    let mut e = S3Error::with_message(code, err.message.clone());
    e.set_status_code(status);
    e.set_request_id(request_id);
    let mut headers = HeaderMap::new();
    for (name, value) in &err.headers {
        // `WWW-Authenticate` is the bearer API's; S3 clients sign instead.
        if name != header::WWW_AUTHENTICATE {
            headers.insert(name.clone(), value.clone());
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE && !headers.contains_key(header::RETRY_AFTER) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if !headers.is_empty() {
        // s3s replaces the response's headers with these: keep its content type.
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        e.set_headers(headers);
    }
    e
}

/// The XML response for `err`, for refusals made outside s3s.
pub(crate) fn response(err: S3Error) -> http::Response<Body> {
    match err.to_http_response() {
        Ok(resp) => resp.map(|b| b.map_err(|e| -> crate::BoxError { e }).boxed()),
        Err(_) => {
            let mut resp = http::Response::new(crate::api::respond::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

/// An error response's S3 code, read back from its XML body (only error responses, whose
/// bodies are whole, are read): how the door learns a signature failed inside s3s.
pub(crate) fn code_of(resp: &s3s::HttpResponse) -> Option<String> {
    if resp.status().is_success() {
        return None;
    }
    let bytes: Bytes = resp.body().bytes()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(text[start..end].to_owned())
}

/// `resp` with `request_id` in its XML if it is an error without one: s3s's own errors (a
/// signature it refused, a request it could not parse) carry none, ours do.
pub(crate) fn with_request_id(resp: &mut s3s::HttpResponse, request_id: &str) {
    if resp.status().is_success() {
        return;
    }
    let Some(bytes) = resp.body().bytes() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return;
    };
    if text.contains("<RequestId>") {
        return;
    }
    let Some(end) = text.rfind("</Error>") else {
        return;
    };
    let xml = format!(
        "{}<RequestId>{request_id}</RequestId>{}",
        &text[..end],
        &text[end..]
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(xml.len()));
    *resp.body_mut() = s3s::Body::from(xml);
}

/// A door-only refusal with S3's own code (those our [`Code`]s do not name).
pub(crate) fn refusal(code: S3ErrorCode, message: impl Into<String>) -> S3Error {
    S3Error::with_message(code, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_limits_are_slow_down_with_retry_after() {
        for code in [Code::RateLimited, Code::QuotaExceeded, Code::Overloaded] {
            let e = to_s3(&ApiError::new(code, "slow"), "r1");
            assert_eq!(e.code(), &S3ErrorCode::SlowDown);
            assert_eq!(e.status_code(), Some(StatusCode::SERVICE_UNAVAILABLE));
            assert_eq!(e.headers().unwrap()[header::RETRY_AFTER], "1");
        }
        let e = to_s3(
            &ApiError::new(Code::QuotaExceeded, "q")
                .header(header::RETRY_AFTER, HeaderValue::from_static("3600")),
            "r1",
        );
        assert_eq!(e.headers().unwrap()[header::RETRY_AFTER], "3600");
    }

    #[test]
    fn the_sdk_codes() {
        let code = |c| s3_code(c).0;
        assert_eq!(code(Code::NotFound), S3ErrorCode::NoSuchKey);
        assert_eq!(code(Code::PayloadTooLarge), S3ErrorCode::EntityTooLarge);
        assert_eq!(code(Code::BadDigest), S3ErrorCode::BadDigest);
        assert_eq!(code(Code::Forbidden), S3ErrorCode::AccessDenied);
        assert_eq!(code(Code::InvalidRange), S3ErrorCode::InvalidRange);
        assert_eq!(
            code(Code::PreconditionFailed),
            S3ErrorCode::PreconditionFailed
        );
    }

    #[test]
    fn an_error_without_a_request_id_gets_one() {
        let xml = |resp: s3s::HttpResponse| {
            let len = resp.headers().get(header::CONTENT_LENGTH).cloned();
            let body = String::from_utf8(resp.body().bytes().unwrap().to_vec()).unwrap();
            (body, len)
        };
        let mut theirs = S3Error::with_message(S3ErrorCode::SignatureDoesNotMatch, "no")
            .to_http_response()
            .unwrap();
        with_request_id(&mut theirs, "r-1");
        let (body, len) = xml(theirs);
        assert!(
            body.ends_with("<RequestId>r-1</RequestId></Error>"),
            "{body}"
        );
        assert_eq!(len, Some(HeaderValue::from(body.len())));

        let mut ours = to_s3(&ApiError::new(Code::NotFound, "gone"), "r-2")
            .to_http_response()
            .unwrap();
        with_request_id(&mut ours, "r-3");
        let (body, _) = xml(ours);
        assert_eq!(body.matches("<RequestId>").count(), 1, "{body}");
        assert!(body.contains("<RequestId>r-2</RequestId>"), "{body}");

        let mut fine = s3s::HttpResponse::new(s3s::Body::from("<Error></Error>".to_owned()));
        with_request_id(&mut fine, "r-4");
        assert_eq!(xml(fine).0, "<Error></Error>");
    }
}
