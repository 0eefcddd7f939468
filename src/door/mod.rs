//! The S3 front door (SPEC section 11): a second listener that speaks S3, so aws-cli, the
//! SDKs, rclone and s5cmd use the gateway unchanged, under the same principals, policy,
//! limits, rate limits, metrics and access log as `/v1`.
//!
//! A request meets, in order:
//! 1. the same tower stack as `/v1` (`crate::run_door`): access log, panic catching,
//!    shedding; their refusals are S3 XML here (the request carries [`S3Dialect`]);
//! 2. [`Door`], this module: the address's failed-auth block, then `front.rs`, the checks
//!    s3s 0.14.1 leaves open (SigV2 and POST policies refused, the region, the presigned
//!    expiry cap, unsigned `x-amz-*` headers, headers the door never forwards), and the cap
//!    on `aws-chunked` chunk sizes (`chunks.rs`);
//! 3. s3s: it parses the request, verifies SigV4 (header or query; the payload hash, every
//!    signed chunk, the trailer's signature) with the secrets of `keys.rs`, and routes it to
//!    an operation;
//! 4. `ops.rs`: each operation runs the `/v1` admission phase (the one key decode, policy,
//!    rates, quota) and relays through `relay`, with the bodies wrapped in the same streaming
//!    limits; a checksum header or trailer is verified against the bytes before the last of
//!    them reaches S3.
//!
//! Failed signatures (an unknown key id, a wrong secret, a skewed clock, a wrong region)
//! count toward the address's failed-authentication limit, as a wrong API key does.

mod chunks;
pub(crate) mod errors;
mod front;
mod keys;
mod list;
mod multipart;
mod ops;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use s3s::service::{S3Service, S3ServiceBuilder};

use crate::Body;
use crate::api::AppState;
use crate::limits::Admission;
use crate::obs::{ClientIp, RequestId, note};

pub use chunks::MAX_CHUNK;
pub(crate) use chunks::RawFailure;

/// Is this an aws-chunked upload (whose pauses `ChunkCap` times)?
fn streaming(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"))
}

/// The idle timeout for a decoded upload body: `server.body_idle_timeout`, or, for an
/// aws-chunked body, none: `ChunkCap` keeps it on the client's own bytes.
pub(crate) fn decoded_idle(headers: &http::HeaderMap, configured: Duration) -> Option<Duration> {
    (!streaming(headers)).then_some(configured)
}

/// `[s3_api]` as requests read it.
#[derive(Clone, Debug)]
pub struct Settings {
    pub region: String,
    pub max_presign_ttl: Duration,
    pub domain: Option<String>,
}

impl Settings {
    pub fn from_config(c: &crate::config::S3ApiConfig) -> Self {
        Self {
            region: c.region.clone(),
            max_presign_ttl: c.max_presign_ttl.get(),
            domain: c.domain.clone(),
        }
    }
}

/// Marks a request that came through the door: refusals made before it reaches [`Door`]
/// (shedding, a panic) are answered in S3's XML.
#[derive(Clone, Copy, Debug)]
pub struct S3Dialect;

/// The S3 codes that mean a presented credential failed: they count toward the address's
/// failed-authentication limit.
const FAILED_AUTH: [&str; 4] = [
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "RequestTimeTooSkewed",
    "AuthorizationHeaderMalformed",
];

/// The door's service for one config (swapped whole on reload, as `/v1`'s is).
#[derive(Clone)]
pub struct Door {
    state: Arc<AppState>,
    s3: Arc<S3Service>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door").finish_non_exhaustive()
    }
}

impl Door {
    /// The door over `state`, whose `door` settings must be set.
    pub fn new(state: Arc<AppState>) -> Self {
        let settings = state.door.clone().expect("the door is configured");
        let mut builder = S3ServiceBuilder::new(ops::Ops::new(state.clone()));
        builder.set_auth(keys::Keys::new(state.clone()));
        builder.set_access(keys::Access);
        if let Some(domain) = &settings.domain {
            builder.set_host(keys::Host::new(domain));
        }
        Self {
            state,
            s3: Arc::new(builder.build()),
        }
    }

    async fn handle(&self, mut req: Request<Body>) -> Response<Body> {
        note(&req, |n| n.route = "s3");
        let state = &self.state;
        let settings = state.door.as_ref().expect("the door is configured");
        let request_id: Arc<str> = req
            .extensions()
            .get::<RequestId>()
            .map_or_else(|| Arc::from("-"), |r| r.0.clone());
        let ip = req.extensions().get::<ClientIp>().map(|c| c.0);
        let admission = match req.extensions().get::<Admission>() {
            Some(a) => a.clone(),
            None => {
                let a = Admission::default();
                req.extensions_mut().insert(a.clone());
                a
            }
        };
        let note_handle = req
            .extensions()
            .get::<Arc<std::sync::Mutex<crate::obs::RequestNote>>>()
            .cloned();
        let refuse = |err: s3s::S3Error, code: &'static str| {
            if let Some(n) = &note_handle
                && let Ok(mut n) = n.lock()
            {
                n.error_code = Some(code);
            }
            errors::response(err)
        };
        if let Err(err) = crate::api::read_one_way(&req) {
            let code = err.code.as_str();
            return refuse(errors::to_s3(&err, &request_id), code);
        }
        if let Some(ip) = ip
            && let Err(err) = state.auth_failures.check(ip)
        {
            let code = err.code.as_str();
            return refuse(errors::to_s3(&err, &request_id), code);
        }
        let signed = match front::check(settings, &req) {
            Ok(signed) => signed,
            Err(refusal) => {
                let mut err = refusal.error;
                err.set_request_id(&*request_id);
                if refusal.failed_auth {
                    self.failed_auth(ip).await;
                }
                let code = static_code(err.code().as_str());
                return refuse(err, code);
            }
        };
        front::drop_ignored_range(&mut req, &signed);
        let payload = req.headers().get("x-amz-content-sha256");
        tracing::debug!(
            request_id = &*request_id,
            payload = ?payload,
            trailer = ?req.headers().get("x-amz-trailer"),
            "door request"
        );
        let streaming = streaming(req.headers());
        // Uploads learn why their body failed inside s3s through this (see `RawFailure`).
        let raw = matches!(*req.method(), http::Method::PUT | http::Method::POST).then(|| {
            let raw = chunks::RawFailure::default();
            req.extensions_mut().insert(raw.clone());
            raw
        });
        let req = match raw {
            Some(raw) if streaming => {
                let idle = state.body_idle_timeout;
                let room = state.chunk_room.clone();
                req.map(|b| chunks::ChunkCap::new(b, idle, raw, room).boxed())
            }
            _ => req,
        };
        let mut resp = match self.s3.call(req.map(s3s::Body::http_body)).await {
            Ok(resp) => resp,
            Err(e) => {
                let err = crate::error::ApiError::internal(format!("{e:?}"));
                return refuse(errors::to_s3(&err, &request_id), "internal_error");
            }
        };
        if let Some(validators) = resp.extensions_mut().remove::<ops::NotModified>() {
            validators.apply(&mut resp);
        }
        errors::with_request_id(&mut resp, &request_id);
        if let Some(code) = errors::code_of(&resp) {
            if FAILED_AUTH.contains(&code.as_str()) {
                self.failed_auth(ip).await;
            }
            if let Some(n) = &note_handle
                && let Ok(mut n) = n.lock()
                && n.error_code.is_none()
            {
                n.error_code = Some(static_code(&code));
            }
        }
        let resp = resp.map(|b| b.map_err(|e| -> crate::BoxError { e }).boxed());
        crate::api::respond::holding(resp, admission.take())
    }

    /// Counts a failed signature against the address, here and, with `[redis]`, everywhere.
    async fn failed_auth(&self, ip: Option<std::net::IpAddr>) {
        let Some(ip) = ip else { return };
        let err = crate::error::ApiError::new(crate::error::Code::Unauthenticated, "");
        let _ = self.state.auth_failures.failed(ip, err);
        if let Some(shared) = &self.state.shared {
            let _ = shared.failed(ip).await;
        }
    }
}

impl tower::Service<Request<Body>> for Door {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// The access log's `error_code` for an S3 code (a static string, as the log keeps).
fn static_code(code: &str) -> &'static str {
    match code {
        "AccessDenied" => "AccessDenied",
        "InvalidAccessKeyId" => "InvalidAccessKeyId",
        "SignatureDoesNotMatch" => "SignatureDoesNotMatch",
        "RequestTimeTooSkewed" => "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed" => "AuthorizationHeaderMalformed",
        "NoSuchKey" => "NoSuchKey",
        "NoSuchUpload" => "NoSuchUpload",
        "NoSuchBucket" => "NoSuchBucket",
        "EntityTooLarge" => "EntityTooLarge",
        "BadDigest" => "BadDigest",
        "InvalidDigest" => "InvalidDigest",
        "InvalidRange" => "InvalidRange",
        "PreconditionFailed" => "PreconditionFailed",
        "NotImplemented" => "NotImplemented",
        "SlowDown" => "SlowDown",
        "InvalidRequest" => "InvalidRequest",
        "InvalidArgument" => "InvalidArgument",
        "BucketAlreadyOwnedByYou" => "BucketAlreadyOwnedByYou",
        "InternalError" => "InternalError",
        "ServiceUnavailable" => "ServiceUnavailable",
        "MetadataTooLarge" => "MetadataTooLarge",
        "AuthorizationQueryParametersError" => "AuthorizationQueryParametersError",
        "MissingContentLength" => "MissingContentLength",
        "RequestTimeout" => "RequestTimeout",
        _ => "s3_error",
    }
}

/// The access log's route for an S3 operation: `s3:<Operation>`.
pub(crate) fn route_name(op: &str) -> &'static str {
    match op {
        "ListBuckets" => "s3:ListBuckets",
        "HeadBucket" => "s3:HeadBucket",
        "GetBucketLocation" => "s3:GetBucketLocation",
        "CreateBucket" => "s3:CreateBucket",
        "PutObject" => "s3:PutObject",
        "GetObject" => "s3:GetObject",
        "HeadObject" => "s3:HeadObject",
        "DeleteObject" => "s3:DeleteObject",
        "DeleteObjects" => "s3:DeleteObjects",
        "ListObjects" => "s3:ListObjects",
        "ListObjectsV2" => "s3:ListObjectsV2",
        "CopyObject" => "s3:CopyObject",
        "CreateMultipartUpload" => "s3:CreateMultipartUpload",
        "UploadPart" => "s3:UploadPart",
        "UploadPartCopy" => "s3:UploadPartCopy",
        "CompleteMultipartUpload" => "s3:CompleteMultipartUpload",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListParts" => "s3:ListParts",
        "ListMultipartUploads" => "s3:ListMultipartUploads",
        _ => "s3:other",
    }
}
