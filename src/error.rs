//! One error type for every refusal and failure, and the one function that turns it into a
//! status and a JSON body (SPEC section 7).
//!
//! Each error knows where it came from: the client (a bad request), the backend (S3 failed or
//! refused), or the gateway itself. The client gets the code and a safe message; the cause,
//! with backend text, bucket names and AWS request ids, only goes to the log.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderValue, StatusCode, header};

use crate::config::units::Size;

/// The stable error codes of SPEC section 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    InvalidKey,
    InvalidRange,
    BadDigest,
    Unauthenticated,
    Forbidden,
    LinkInvalid,
    LinkExpired,
    NotFound,
    /// A multipart upload that is not open (the S3 door's multipart calls).
    NoSuchUpload,
    MethodNotAllowed,
    BodyTimeout,
    /// The client went away mid-request (nginx's 499); only ever logged.
    ClientClosed,
    LengthRequired,
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    RateLimited,
    QuotaExceeded,
    Internal,
    BackendError,
    Overloaded,
    BackendUnavailable,
    BackendTimeout,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            BadRequest => "bad_request",
            InvalidKey => "invalid_key",
            InvalidRange => "invalid_range",
            BadDigest => "bad_digest",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            LinkInvalid => "link_invalid",
            LinkExpired => "link_expired",
            NotFound => "not_found",
            NoSuchUpload => "no_such_upload",
            MethodNotAllowed => "method_not_allowed",
            BodyTimeout => "body_timeout",
            ClientClosed => "client_closed",
            LengthRequired => "length_required",
            PreconditionFailed => "precondition_failed",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RangeNotSatisfiable => "range_not_satisfiable",
            RateLimited => "rate_limited",
            QuotaExceeded => "quota_exceeded",
            Internal => "internal_error",
            BackendError => "backend_error",
            Overloaded => "overloaded",
            BackendUnavailable => "backend_unavailable",
            BackendTimeout => "backend_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        use Code::*;
        match self {
            BadRequest | InvalidKey | InvalidRange | BadDigest => StatusCode::BAD_REQUEST,
            Unauthenticated => StatusCode::UNAUTHORIZED,
            Forbidden | LinkInvalid | LinkExpired => StatusCode::FORBIDDEN,
            NotFound | NoSuchUpload => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ClientClosed => StatusCode::from_u16(499).expect("499 is a status code"),
            LengthRequired => StatusCode::LENGTH_REQUIRED,
            PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            RateLimited | QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            BackendError => StatusCode::BAD_GATEWAY,
            Overloaded | BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Where an error came from; decides the log level and who is to blame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Backend,
    Internal,
}

/// A refusal or failure on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub origin: Origin,
    /// Safe to show the client.
    pub message: Cow<'static, str>,
    /// For the log only: backend text, request ids.
    pub detail: Option<String>,
    /// The error this one was made from, kept whole (its chain is logged, and walked to
    /// find who is to blame).
    pub source: Option<crate::BoxError>,
    /// Extra response headers (`WWW-Authenticate`, `Allow`, `Retry-After`, `Content-Range`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        let origin = match code {
            Code::Internal => Origin::Internal,
            Code::BackendError | Code::BackendUnavailable | Code::BackendTimeout => Origin::Backend,
            _ => Origin::Client,
        };
        Self {
            code,
            origin,
            message: message.into(),
            detail: None,
            source: None,
            headers: Vec::new(),
        }
    }

    /// Keeps the error this one was made from.
    pub fn caused_by(mut self, source: impl Into<crate::BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The first error of type `E` in this error's source chain.
    pub fn find_cause<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut cause = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = cause {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            cause = e.source();
        }
        None
    }

    /// Adds log-only detail.
    pub fn detail(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn invalid_key(reason: impl fmt::Display) -> Self {
        Self::new(Code::InvalidKey, format!("invalid key: {reason}"))
    }

    /// `401` for a request without a credential: `WWW-Authenticate: Bearer`.
    pub fn unauthenticated(message: &'static str) -> Self {
        Self::new(Code::Unauthenticated, message)
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// `401` for a credential that was presented and is not valid:
    /// `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn invalid_token(message: &'static str) -> Self {
        Self::new(Code::Unauthenticated, message).header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            Code::Forbidden,
            "this principal may not do that on that key",
        )
    }

    pub fn not_found() -> Self {
        Self::new(Code::NotFound, "no such object")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(Code::MethodNotAllowed, "method not allowed on this route")
            .header(header::ALLOW, HeaderValue::from_static(allow))
    }

    pub fn too_large(limit: Size) -> Self {
        Self::new(
            Code::PayloadTooLarge,
            format!("the body is larger than the limit of {limit}"),
        )
    }

    pub fn unsupported_type(media_type: &str) -> Self {
        Self::new(
            Code::UnsupportedMediaType,
            format!("content type `{media_type}` is not allowed here"),
        )
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(Code::Internal, "internal error").detail(detail)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error and its causes, as one line: `outer: inner: innermost`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The JSON body of an error response.
pub fn error_body(err: &ApiError, request_id: &str) -> String {
    serde_json::json!({
        "error": { "code": err.code.as_str(), "message": err.message, "request_id": request_id }
    })
    .to_string()
}
