//! The SDK's standard retry mode, as the light path applies it: which failures are
//! retried, how long to wait, and what a failure is.

use std::time::Duration;

use super::super::errors::error_chain;
use super::super::pool::SendError;
use crate::error::{ApiError, Code};

/// The SDK's standard retry mode: attempts per call, backoff, and the retry quota.
pub(super) const MAX_ATTEMPTS: u32 = 3;
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(20);
pub(super) const RETRY_QUOTA: i64 = 500;
pub(super) const RETRY_COST: i64 = 5;
pub(super) const TIMEOUT_RETRY_COST: i64 = 10;
/// Statuses and S3 error codes the SDK retries.
pub(super) const TRANSIENT_STATUSES: &[u16] = &[500, 502, 503, 504];
pub(super) const TRANSIENT_CODES: &[&str] = &["RequestTimeout", "RequestTimeoutException"];
pub(super) const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Why an attempt failed, and whether the SDK would try again.
pub(super) struct Failure {
    pub(super) error: ApiError,
    pub(super) retry: Retry,
}

pub(super) enum Retry {
    No,
    Transient,
    Timeout,
}

/// The SDK's mapping of a failure to send: cannot connect or the connection broke ->
/// unavailable (and retried); anything else (a malformed answer) -> backend error.
pub(super) fn transport_failure(e: &SendError) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io = e.is_connect();
    while let Some(s) = source {
        io |= s.is::<std::io::Error>();
        source = s.source();
    }
    let detail = error_chain(e);
    if io {
        Failure {
            error: ApiError::new(Code::BackendUnavailable, "the backend cannot be reached")
                .detail(detail),
            retry: Retry::Transient,
        }
    } else {
        Failure {
            error: ApiError::new(Code::BackendError, "the backend failed").detail(detail),
            retry: Retry::No,
        }
    }
}

/// The SDK's backoff before retry number `attempt`: a random share of 1 s, 2 s, 4 s...
pub(super) fn backoff(attempt: u32) -> Duration {
    let ceiling = INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt - 1))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(rand::random::<f64>())
}
