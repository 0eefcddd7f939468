//! The one place where a backend failure is translated (an `SdkError`, or S3's answer to a
//! light signed read): into a status and code for the client, with everything S3 said (code,
//! message, request id) kept for the log only.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;

use crate::error::{ApiError, Code};

/// Maps any aws-sdk-s3 failure to the gateway's error.
pub fn translate<E>(err: SdkError<E, Response>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = describe(&err);
    let api = match &err {
        SdkError::ServiceError(service) => classify(
            service.raw().status().as_u16(),
            service.err().code().unwrap_or(""),
        ),
        SdkError::TimeoutError(_) => {
            ApiError::new(Code::BackendTimeout, "the backend did not answer in time")
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            ApiError::new(Code::BackendTimeout, "the backend did not answer in time")
        }
        SdkError::DispatchFailure(d) if d.is_io() => {
            ApiError::new(Code::BackendUnavailable, "the backend cannot be reached")
        }
        SdkError::ConstructionFailure(_) => {
            ApiError::internal("could not build the backend request")
        }
        _ => ApiError::new(Code::BackendError, "the backend failed"),
    };
    api.detail(detail).caused_by(err)
}

/// Maps S3's status and error code to the gateway's error. Shared by both read paths.
pub(super) fn classify(status: u16, code: &str) -> ApiError {
    match (status, code) {
        // The bucket itself is gone: the gateway's problem, not the client's.
        (_, "NoSuchBucket") => ApiError::new(Code::BackendError, "the backend failed"),
        (_, "NoSuchUpload") => {
            ApiError::new(Code::NoSuchUpload, "The specified upload does not exist.")
        }
        (404, _) | (_, "NoSuchKey" | "NotFound") => ApiError::not_found(),
        (412, _) | (_, "PreconditionFailed") => ApiError::new(
            Code::PreconditionFailed,
            "the object's state does not match the request's condition",
        ),
        // A concurrent conditional write won the race; to this client, the condition failed.
        (409, "ConditionalRequestConflict") => ApiError::new(
            Code::PreconditionFailed,
            "a concurrent write changed the object; retry",
        ),
        (416, _) | (_, "InvalidRange") => {
            ApiError::new(Code::RangeNotSatisfiable, "the range is outside the object")
        }
        (400, "EntityTooLarge") => ApiError::new(
            Code::PayloadTooLarge,
            "the object is too large for the backend",
        ),
        (400, "BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch") => {
            ApiError::new(Code::BadDigest, "the body does not match its digest")
        }
        // A key the backend's storage cannot hold (the embedded backend's file names).
        (400, "KeyTooLongError") => ApiError::new(
            Code::InvalidKey,
            "the backend cannot store this key (too long, or a path clash)",
        ),
        (503, _) | (_, "SlowDown") => ApiError::new(
            Code::BackendUnavailable,
            "the backend is unavailable; retry later",
        ),
        _ => ApiError::new(Code::BackendError, "the backend failed"),
    }
}

/// The log line of a failure S3 answered.
pub(super) fn describe_answer(
    status: u16,
    code: &str,
    message: &str,
    request_id: &str,
    id_2: &str,
) -> String {
    format!("S3 {status} {code}: {message} (request id {request_id}, extended id {id_2})")
}

/// Everything worth logging about a backend failure, AWS request ids included.
fn describe<E>(err: &SdkError<E, Response>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(s) => {
            let raw = s.raw();
            let meta = s.err().meta();
            describe_answer(
                raw.status().as_u16(),
                meta.code().unwrap_or("-"),
                meta.message().unwrap_or("-"),
                raw.headers().get("x-amz-request-id").unwrap_or("-"),
                raw.headers().get("x-amz-id-2").unwrap_or("-"),
            )
        }
        other => error_chain(other),
    }
}

/// An error and its causes, as one line.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain(e)
}
