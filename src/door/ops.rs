//! The S3 operations, over the gateway's own admission phase and relay. Each one: the key by
//! the one strict decode, the caller's principal from its (verified) access key, the bucket
//! name checked against the principal's, authorize, admit; then the relay call, its bodies in
//! the same streaming limits as `/v1`.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use s3s::auth::Credentials;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, TrailingHeaders};

use super::errors::{refusal, to_s3};
use crate::Body;
use crate::api::AppState;
use crate::api::admission::admit;
use crate::api::conditions::IfRange;
use crate::api::objects::{Store, shaped, store, write_condition};
use crate::auth::{AuthMethod, Identity};
use crate::error::{ApiError, Code};
use crate::limits::{
    ChecksumAlgorithm, ChecksumValue, ExpectedChecksum, ExpectedDigests, expected_digests,
    media_type,
};
use crate::obs::{RequestId, note};
use crate::policy::{Action, ObjectKey, percent_decode_once};
use crate::relay::{Fetched, ObjectHeaders, Read, ReadConditions, Replace};

pub(super) struct Ops {
    pub(super) state: Arc<AppState>,
}

impl Ops {
    pub(super) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// A request's parts once s3s has parsed it: the head (method, URI, headers and the
/// gateway's extensions), the operation's input, and what s3s verified.
pub(super) struct Parts<T> {
    pub head: Request<()>,
    pub input: T,
    pub credentials: Option<Credentials>,
    pub trailers: Option<TrailingHeaders>,
}

pub(super) fn split<T>(req: S3Request<T>) -> Parts<T> {
    let mut head = Request::new(());
    *head.method_mut() = req.method;
    *head.uri_mut() = req.uri;
    *head.headers_mut() = req.headers;
    *head.extensions_mut() = req.extensions;
    Parts {
        head,
        input: req.input,
        credentials: req.credentials,
        trailers: req.trailing_headers,
    }
}

/// The request id, for error bodies.
pub(super) fn request_id<B>(head: &Request<B>) -> String {
    head.extensions()
        .get::<RequestId>()
        .map_or_else(|| "-".to_owned(), |r| r.0.to_string())
}

/// Runs `op` and turns its refusal into S3's error with the request id; a failure of the
/// client's raw aws-chunked body (a stall, a chunk too large) is what the client is told.
pub(super) async fn answer<T>(
    head: &Request<()>,
    op: impl Future<Output = Result<S3Response<T>, ApiError>>,
) -> S3Result<S3Response<T>> {
    op.await.map_err(|e| {
        let raw = head.extensions().get::<super::RawFailure>();
        if raw.is_some_and(super::RawFailure::signature_failed) {
            let mut err = refusal(
                S3ErrorCode::SignatureDoesNotMatch,
                "a chunk's signature does not match its bytes",
            );
            err.set_request_id(request_id(head));
            return err;
        }
        let e = match raw {
            Some(raw) => raw.blame(e),
            None => e,
        };
        to_s3(&e, &request_id(head))
    })
}

impl Ops {
    /// The principal of the verified access key, recorded in the log; `bucket`, when the
    /// operation names one, must be the principal's (any other is `AccessDenied`, without
    /// saying whether it exists).
    pub(super) fn caller(
        &self,
        head: &Request<()>,
        credentials: Option<&Credentials>,
        bucket: Option<&str>,
    ) -> Result<Identity, ApiError> {
        let principal = credentials
            .and_then(|c| self.state.access_keys.get(&c.access_key))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| ApiError::new(Code::Unauthenticated, "Access Denied"))?;
        note(head, |n| {
            n.principal = Some(principal.name.to_string());
            n.bucket = Some(principal.bucket.clone());
            n.auth = Some(AuthMethod::SigV4);
        });
        if let Some(bucket) = bucket
            && bucket != &*principal.bucket
        {
            return Err(ApiError::new(Code::Forbidden, "Access Denied")
                .detail(format_args!("the request names the bucket `{bucket}`")));
        }
        Ok(Identity {
            principal,
            method: AuthMethod::SigV4,
            link: None,
        })
    }

    /// The admission phase of an object operation, as `/v1`'s: the key (the one decode),
    /// the caller, allowed `action` on the key, admitted within its rates and quota.
    pub(super) async fn admit_object(
        &self,
        head: &Request<()>,
        credentials: Option<&Credentials>,
        bucket: &str,
        key: &str,
        action: Action,
    ) -> Result<(ObjectKey, Identity), ApiError> {
        let key = self.key_of(head, bucket, key)?;
        let identity = self.caller(head, credentials, Some(bucket))?;
        identity.principal.authorize(action, &key)?;
        admit(&self.state, head, &identity).await?;
        Ok((key, identity))
    }

    /// The caller, allowed to list under `prefix`, and admitted.
    pub(super) async fn admitted_list(
        &self,
        head: &Request<()>,
        credentials: Option<&Credentials>,
        bucket: &str,
    ) -> Result<Identity, ApiError> {
        let identity = self.caller(head, credentials, Some(bucket))?;
        if !identity.principal.may(Action::List) {
            return Err(ApiError::forbidden());
        }
        admit(&self.state, head, &identity).await?;
        Ok(identity)
    }

    /// The object key of a request, by the one strict decode of its raw path (SPEC
    /// section 4), recorded in the log. s3s decoded the path too, more leniently; a key the
    /// two read differently is refused, so the key the policy checks is the key s3s verified.
    pub(super) fn key_of(
        &self,
        head: &Request<()>,
        bucket: &str,
        decoded: &str,
    ) -> Result<ObjectKey, ApiError> {
        let domain = self.state.door.as_ref().and_then(|d| d.domain.as_deref());
        key_of(head, bucket, decoded, domain)
    }
}

fn key_of(
    head: &Request<()>,
    bucket: &str,
    decoded: &str,
    domain: Option<&str>,
) -> Result<ObjectKey, ApiError> {
    let path = head.uri().path();
    let raw = path
        .strip_prefix('/')
        .and_then(|p| {
            p.strip_prefix(bucket)
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|_| !virtual_hosted(head, bucket, domain))
                .or(Some(p))
        })
        .unwrap_or(path);
    let key = ObjectKey::from_path(raw).map_err(ApiError::invalid_key)?;
    if key.as_str() != decoded {
        return Err(ApiError::invalid_key(
            "the path decodes to more than one key",
        ));
    }
    note(head, |n| n.key = Some(key.as_str().to_owned()));
    Ok(key)
}

/// Did the request name its bucket in the host (`BUCKET.<s3_api.domain>`)? Without a
/// domain, never: a host that merely starts with the bucket's name is path style.
fn virtual_hosted(head: &Request<()>, bucket: &str, domain: Option<&str>) -> bool {
    let Some(domain) = domain else {
        return false;
    };
    let host = head
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.eq_ignore_ascii_case(&format!("{bucket}.{domain}"))
}

/// The request's body as the gateway's body type; what its errors say about a chunk's
/// signature is noted in the request's [`super::RawFailure`].
pub(super) fn body_of(head: &Request<()>, blob: Option<StreamingBlob>) -> Body {
    let raw = head.extensions().get::<super::RawFailure>().cloned();
    match blob {
        None => crate::api::respond::empty(),
        Some(blob) => StreamBody::new(blob.map_ok(Frame::data).inspect_err(move |e| {
            if let Some(raw) = &raw {
                raw.decoded_error(&**e);
            }
        }))
        .boxed(),
    }
}

/// The length of an upload's bytes: `Content-Length`, or an aws-chunked body's
/// `x-amz-decoded-content-length` (clients send the trailer forms chunked, without a length).
pub(super) fn declared_length(content_length: Option<i64>, headers: &HeaderMap) -> Option<u64> {
    content_length.map(|l| l.max(0) as u64).or_else(|| {
        headers
            .get("x-amz-decoded-content-length")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

/// What a client's upload stores besides its type (SPEC section 11's list). The
/// `aws-chunked` coding is the request's framing, not the object's: S3 drops it, and so
/// does the door.
pub(super) fn forwarded(headers: &HeaderMap) -> ObjectHeaders {
    let mut h = ObjectHeaders::from_headers(headers);
    h.content_encoding = h.content_encoding.and_then(|e| {
        let kept: Vec<&str> = e
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        (!kept.is_empty()).then(|| kept.join(", "))
    });
    h
}

/// `Content-Type` as sent, if it is a media type.
pub(super) fn declared_type(t: Option<&str>) -> Result<Option<String>, ApiError> {
    match t {
        None | Some("") => Ok(None),
        Some(t) if media_type(t).is_some() => Ok(Some(t.to_owned())),
        Some(_) => Err(ApiError::bad_request(
            "Content-Type is not a media type like `image/png`",
        )),
    }
}

/// The digests an upload is checked against: `Content-MD5` and the `x-amz-checksum-*`
/// header or trailer, and the signed payload's SHA-256 (s3s checks that too, but only the
/// gateway holds back the last bytes until it matches).
pub(super) fn digests(
    head: &Request<()>,
    trailers: Option<&TrailingHeaders>,
) -> Result<ExpectedDigests, S3Error> {
    digests_of(head.headers(), trailers).map_err(|mut e| {
        e.set_request_id(request_id(head));
        e
    })
}

fn digests_of(
    headers: &HeaderMap,
    trailers: Option<&TrailingHeaders>,
) -> Result<ExpectedDigests, S3Error> {
    let invalid = |what: &str| refusal(S3ErrorCode::InvalidDigest, what.to_owned());
    let mut d = expected_digests(headers).map_err(|e| invalid(&e.message))?;
    if let Some(signed) = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 64)
        .and_then(|v| <[u8; 32]>::try_from(hex::decode(v).ok()?).ok())
    {
        if d.sha256.is_some_and(|s| s != signed) {
            return Err(refusal(
                S3ErrorCode::BadDigest,
                "x-amz-checksum-sha256 disagrees with the signed payload hash",
            ));
        }
        d.sha256 = Some(signed);
    }
    for name in ["crc32", "crc32c", "crc64nvme", "sha1"] {
        if let Some(v) = headers.get(format!("x-amz-checksum-{name}")) {
            let v = v
                .to_str()
                .map_err(|_| invalid("a checksum is not base64"))?;
            d.checksum = Some(ExpectedChecksum {
                algorithm: ChecksumAlgorithm::from_name(name).expect("a known name"),
                value: ChecksumValue::Header(v.trim().to_owned()),
            });
        }
    }
    if let Some(t) = headers.get("x-amz-trailer") {
        let name = t.to_str().unwrap_or("").trim().to_ascii_lowercase();
        let algorithm = name
            .strip_prefix("x-amz-checksum-")
            .and_then(ChecksumAlgorithm::from_name)
            .ok_or_else(|| {
                refusal(
                    S3ErrorCode::InvalidRequest,
                    format!("the trailer `{name}` is not an x-amz-checksum-* this gateway checks"),
                )
            })?;
        let Some(handle) = trailers.cloned() else {
            return Err(refusal(
                S3ErrorCode::InvalidRequest,
                "x-amz-trailer needs an aws-chunked body with trailers",
            ));
        };
        d.checksum = Some(ExpectedChecksum {
            algorithm,
            value: ChecksumValue::Trailer(Arc::new(move || {
                handle
                    .read(|h| {
                        h.get(&name)
                            .and_then(|v| v.to_str().ok())
                            .map(|v| v.trim().to_owned())
                    })
                    .flatten()
            })),
        });
    }
    Ok(d)
}

/// The validators of a `304 Not Modified`. s3s 0.14 answers with the status its output implies
/// and drops `S3Response::status`, so GET and HEAD leave this in the answer's extensions and
/// the door makes the answer a 304 after s3s (`apply`).
#[derive(Clone, Debug)]
pub(super) struct NotModified {
    etag: Option<String>,
    last_modified: Option<String>,
}

impl NotModified {
    fn answer<T: Default>(etag: Option<String>, last_modified: Option<String>) -> S3Response<T> {
        let mut resp = S3Response::new(T::default());
        resp.extensions.insert(NotModified {
            etag,
            last_modified,
        });
        resp
    }

    /// `resp` as a 304: no body, no length or type, the validators S3 sends with it.
    pub(super) fn apply<B: Default>(self, resp: &mut http::Response<B>) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.body_mut() = B::default();
        let h = resp.headers_mut();
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::CONTENT_TYPE);
        for (name, value) in [
            (header::ETAG, self.etag),
            (header::LAST_MODIFIED, self.last_modified),
        ] {
            if let Some(v) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
                h.insert(name, v);
            }
        }
    }
}

/// The checksum an upload was verified against, to echo in the answer as S3 does. An
/// `x-amz-checksum-sha256` header is verified as the upload's SHA-256 digest, not as `d`, so
/// it is echoed from `headers`.
pub(super) fn verified(d: &Option<ExpectedChecksum>, headers: &HeaderMap) -> Checksum {
    let mut sums = Checksum {
        checksum_sha256: text(
            headers,
            header::HeaderName::from_static("x-amz-checksum-sha256"),
        ),
        ..Default::default()
    };
    let Some(c) = d else { return sums };
    let value = match &c.value {
        ChecksumValue::Header(v) => Some(v.clone()),
        ChecksumValue::Trailer(read) => read(),
    };
    *match c.algorithm {
        ChecksumAlgorithm::Crc32 => &mut sums.checksum_crc32,
        ChecksumAlgorithm::Crc32c => &mut sums.checksum_crc32c,
        ChecksumAlgorithm::Crc64Nvme => &mut sums.checksum_crc64nvme,
        ChecksumAlgorithm::Sha1 => &mut sums.checksum_sha1,
        ChecksumAlgorithm::Sha256 => &mut sums.checksum_sha256,
    } = value;
    sums
}

pub(super) fn etag(s: &str) -> Option<ETag> {
    if s.is_empty() {
        return None;
    }
    ETag::parse_http_header(s.as_bytes())
        .ok()
        .or_else(|| Some(ETag::Strong(s.trim_matches('"').to_owned())))
}

pub(super) fn timestamp(t: Option<SystemTime>) -> Option<Timestamp> {
    t.map(Timestamp::from)
}

fn expires_of(h: &ObjectHeaders) -> Option<Timestamp> {
    let t = httpdate::parse_http_date(h.expires.as_deref()?).ok()?;
    Some(Timestamp::from(t))
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// Headers every object answer carries on the door: nothing a browser opening a presigned
/// link could run as a page on this origin.
fn guarded(content_type: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if crate::api::respond::is_active_content(content_type.and_then(media_type).as_deref()) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    h
}

/// The operations whose code lives in `list.rs` and `multipart.rs`, as the trait's methods
/// (written out as `async_trait` would make them: it cannot see into a macro).
macro_rules! forward {
    ($($name:ident: $input:ty => $output:ty = $op:path;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                req: S3Request<$input>,
            ) -> std::pin::Pin<
                Box<dyn Future<Output = S3Result<S3Response<$output>>> + Send + 'async_trait>,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin($op(self, split(req)))
            }
        )*
    };
}

#[async_trait::async_trait]
impl S3 for Ops {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let identity = self.caller(&p.head, p.credentials.as_ref(), None)?;
            admit(&self.state, &p.head, &identity).await?;
            let bucket = Bucket {
                name: Some(identity.principal.bucket.to_string()),
                creation_date: Some(Timestamp::from(SystemTime::UNIX_EPOCH)),
                bucket_region: self.state.door.as_ref().map(|d| d.region.clone()),
            };
            Ok(S3Response::new(ListBucketsOutput {
                buckets: Some(vec![bucket]),
                owner: Some(Owner {
                    display_name: Some(identity.principal.name.to_string()),
                    id: Some(identity.principal.name.to_string()),
                }),
                ..Default::default()
            }))
        })
        .await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let identity = self.caller(&p.head, p.credentials.as_ref(), Some(&p.input.bucket))?;
            admit(&self.state, &p.head, &identity).await?;
            Ok(S3Response::new(HeadBucketOutput {
                bucket_region: self.state.door.as_ref().map(|d| d.region.clone()),
                ..Default::default()
            }))
        })
        .await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let identity = self.caller(&p.head, p.credentials.as_ref(), Some(&p.input.bucket))?;
            admit(&self.state, &p.head, &identity).await?;
            // us-east-1 is S3's empty constraint.
            let region = self.state.door.as_ref().map(|d| d.region.clone());
            Ok(S3Response::new(GetBucketLocationOutput {
                location_constraint: region
                    .filter(|r| r != "us-east-1")
                    .map(BucketLocationConstraint::from),
            }))
        })
        .await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let p = split(req);
        let id = request_id(&p.head);
        match self.caller(&p.head, p.credentials.as_ref(), Some(&p.input.bucket)) {
            Ok(_) => {
                let mut e = refusal(
                    S3ErrorCode::BucketAlreadyOwnedByYou,
                    "Your previous request to create the named bucket succeeded and you already own it.",
                );
                e.set_request_id(id);
                Err(e)
            }
            Err(e) => Err(to_s3(&e, &id)),
        }
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let mut p = split(req);
        let digests = digests(&p.head, p.trailers.as_ref())?;
        let checksum = digests.checksum.clone();
        let body = body_of(&p.head, p.input.body.take());
        answer(&p.head, async {
            let (key, identity) = self
                .admit_object(
                    &p.head,
                    p.credentials.as_ref(),
                    &p.input.bucket,
                    &p.input.key,
                    Action::Put,
                )
                .await?;
            let limits = identity.limits();
            let declared = declared_type(p.input.content_type.as_deref())?;
            if let Some(essence) = declared.as_deref().and_then(media_type) {
                limits.check_type(&essence)?;
            }
            let length = declared_length(p.input.content_length, p.head.headers());
            if let Some(length) = length {
                limits.check_length(length)?;
                self.state.bucket_of(&identity.principal)?.admits(length)?;
            }
            let spec = Store {
                key,
                declared,
                length,
                condition: write_condition(p.head.headers())?,
                digests,
                headers: forwarded(p.head.headers()),
                idle_timeout: super::decoded_idle(p.head.headers(), self.state.body_idle_timeout),
            };
            let (stored, _) = store(&self.state, &identity, &limits, &p.head, spec, body).await?;
            let sums = verified(&checksum, p.head.headers());
            let out = PutObjectOutput {
                e_tag: etag(&stored.etag),
                checksum_crc32: sums.checksum_crc32,
                checksum_crc32c: sums.checksum_crc32c,
                checksum_crc64nvme: sums.checksum_crc64nvme,
                checksum_sha1: sums.checksum_sha1,
                checksum_sha256: sums.checksum_sha256,
                ..Default::default()
            };
            Ok(S3Response::new(out))
        })
        .await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let (key, identity) = self
                .admit_object(
                    &p.head,
                    p.credentials.as_ref(),
                    &p.input.bucket,
                    &p.input.key,
                    Action::Get,
                )
                .await?;
            if p.input.part_number.is_some() || p.input.version_id.is_some() {
                return Err(ApiError::bad_request(
                    "partNumber and versionId are not served here",
                ));
            }
            let (fetched, range) = self.fetch(&p.head, &identity, &key, Read::Body).await?;
            let (meta, content_range, body) = match fetched {
                Fetched::NotModified {
                    etag,
                    last_modified,
                } => return Ok(NotModified::answer(etag, last_modified)),
                Fetched::Object {
                    meta,
                    content_range,
                    body,
                } => (meta, content_range, body),
            };
            let body = body.map(|b| shaped(&self.state, &identity, b));
            let i = &p.input;
            let content_type = i
                .response_content_type
                .clone()
                .or(meta.content_type.clone());
            let stored = meta.headers.map(|h| *h).unwrap_or_default();
            let headers = guarded(content_type.as_deref());
            let out = GetObjectOutput {
                body: body.map(|b| StreamingBlob::from(s3s::Body::http_body(b))),
                accept_ranges: Some("bytes".into()),
                content_length: Some(meta.size as i64),
                content_range: content_range.filter(|_| range.is_some()),
                content_type,
                e_tag: meta.etag.as_deref().and_then(etag),
                last_modified: timestamp(meta.last_modified),
                cache_control: i
                    .response_cache_control
                    .clone()
                    .or(stored.cache_control.clone()),
                content_disposition: i
                    .response_content_disposition
                    .clone()
                    .or(stored.content_disposition.clone()),
                content_encoding: i
                    .response_content_encoding
                    .clone()
                    .or(stored.content_encoding.clone()),
                content_language: i
                    .response_content_language
                    .clone()
                    .or(stored.content_language.clone()),
                expires: i.response_expires.clone().or_else(|| expires_of(&stored)),
                metadata: (!stored.metadata.is_empty())
                    .then(|| stored.metadata.into_iter().collect()),
                ..Default::default()
            };
            let mut resp = S3Response::new(out);
            resp.headers = headers;
            Ok(resp)
        })
        .await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let (key, identity) = self
                .admit_object(
                    &p.head,
                    p.credentials.as_ref(),
                    &p.input.bucket,
                    &p.input.key,
                    Action::Get,
                )
                .await?;
            if p.input.part_number.is_some() || p.input.version_id.is_some() {
                return Err(ApiError::bad_request(
                    "partNumber and versionId are not served here",
                ));
            }
            let (fetched, range) = self.fetch(&p.head, &identity, &key, Read::Head).await?;
            let (meta, content_range) = match fetched {
                Fetched::NotModified {
                    etag,
                    last_modified,
                } => return Ok(NotModified::answer(etag, last_modified)),
                Fetched::Object {
                    meta,
                    content_range,
                    ..
                } => (meta, content_range),
            };
            let stored = meta.headers.map(|h| *h).unwrap_or_default();
            let out = HeadObjectOutput {
                accept_ranges: Some("bytes".into()),
                content_length: Some(meta.size as i64),
                content_range: content_range.filter(|_| range.is_some()),
                e_tag: meta.etag.as_deref().and_then(etag),
                last_modified: timestamp(meta.last_modified),
                expires: expires_of(&stored),
                metadata: (!stored.metadata.is_empty())
                    .then(|| stored.metadata.clone().into_iter().collect()),
                cache_control: stored.cache_control,
                content_disposition: stored.content_disposition,
                content_encoding: stored.content_encoding,
                content_language: stored.content_language,
                content_type: meta.content_type,
                ..Default::default()
            };
            Ok(S3Response::new(out))
        })
        .await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let (key, identity) = self
                .admit_object(
                    &p.head,
                    p.credentials.as_ref(),
                    &p.input.bucket,
                    &p.input.key,
                    Action::Delete,
                )
                .await?;
            if p.input.version_id.is_some() {
                return Err(ApiError::bad_request("versionId is not served here"));
            }
            let bucket = self.state.bucket_of(&identity.principal)?;
            crate::api::timed(&p.head, "delete", bucket.delete(&key)).await?;
            Ok(S3Response::new(DeleteObjectOutput::default()))
        })
        .await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let identity = self.caller(&p.head, p.credentials.as_ref(), Some(&p.input.bucket))?;
            if p.input.delete.objects.len() > 1000 {
                return Err(ApiError::bad_request("at most 1000 keys per DeleteObjects"));
            }
            admit(&self.state, &p.head, &identity).await?;
            let bucket = self.state.bucket_of(&identity.principal)?;
            let quiet = p.input.delete.quiet.unwrap_or(false);
            // Each key on its own: a denied key is an error in the answer, the others go, in
            // one call to S3.
            let mut refused: Vec<(usize, ApiError)> = Vec::new();
            let mut allowed: Vec<(usize, ObjectKey)> = Vec::new();
            for (i, object) in p.input.delete.objects.iter().enumerate() {
                let checked = ObjectKey::parse(object.key.clone())
                    .map_err(ApiError::invalid_key)
                    .and_then(|key| {
                        identity.principal.authorize(Action::Delete, &key)?;
                        if object.version_id.is_some() {
                            return Err(ApiError::bad_request("versionId is not served here"));
                        }
                        Ok(key)
                    });
                match checked {
                    Ok(key) => allowed.push((i, key)),
                    Err(e) => refused.push((i, e)),
                }
            }
            let keys: Vec<ObjectKey> = allowed.iter().map(|(_, k)| k.clone()).collect();
            let failed = crate::api::timed(&p.head, "delete", bucket.delete_many(&keys)).await?;
            for (i, key) in &allowed {
                if let Some((_, e)) = failed.iter().find(|(k, _)| k == key.as_str()) {
                    refused.push((*i, ApiError::new(e.code, e.message.clone())));
                }
            }
            let objects = &p.input.delete.objects;
            let errors: Vec<Error> = refused
                .iter()
                .map(|(i, e)| Error {
                    code: Some(super::errors::s3_code(e.code).0.as_str().to_owned()),
                    key: Some(objects[*i].key.clone()),
                    message: Some(e.message.to_string()),
                    version_id: objects[*i].version_id.clone(),
                })
                .collect();
            let deleted: Vec<DeletedObject> = if quiet {
                Vec::new()
            } else {
                allowed
                    .iter()
                    .filter(|(i, _)| !refused.iter().any(|(j, _)| j == i))
                    .map(|(i, _)| DeletedObject {
                        key: Some(objects[*i].key.clone()),
                        ..Default::default()
                    })
                    .collect()
            };
            Ok(S3Response::new(DeleteObjectsOutput {
                deleted: Some(deleted),
                errors: Some(errors),
                ..Default::default()
            }))
        })
        .await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let p = split(req);
        answer(&p.head, async {
            let (target, identity) = self
                .admit_object(
                    &p.head,
                    p.credentials.as_ref(),
                    &p.input.bucket,
                    &p.input.key,
                    Action::Put,
                )
                .await?;
            let (source, meta) = self.copy_source_of(&p.head, &identity).await?;
            let limits = identity.limits();
            let bucket = self.state.bucket_of(&identity.principal)?;
            limits.check_length(meta.size)?;
            if meta.size > crate::relay::MAX_SINGLE_PUT {
                return Err(ApiError::new(
                    Code::PayloadTooLarge,
                    "CopyObject copies at most 5 GiB; copy larger objects part by part",
                ));
            }
            let replace = p
                .input
                .metadata_directive
                .as_ref()
                .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
            let replace = if replace {
                let declared = declared_type(p.input.content_type.as_deref())?
                    .unwrap_or_else(|| "application/octet-stream".into());
                Some(Replace {
                    content_type: declared,
                    headers: forwarded(p.head.headers()),
                })
            } else {
                None
            };
            let stored_type = match &replace {
                Some(r) => Some(r.content_type.as_str()),
                None => meta.content_type.as_deref(),
            };
            check_stored_type(&limits, stored_type)?;
            let cond = copy_conditions(p.head.headers());
            let copying = bucket.copy(&source, &target, replace, cond);
            let (tag, modified) = crate::api::timed(&p.head, "copy", copying).await?;
            Ok(S3Response::new(CopyObjectOutput {
                copy_object_result: Some(CopyObjectResult {
                    e_tag: etag(&tag),
                    last_modified: timestamp(modified.or(Some(SystemTime::now()))),
                    ..Default::default()
                }),
                ..Default::default()
            }))
        })
        .await
    }

    forward! {
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output = super::list::list_v2;
        list_objects: ListObjectsInput => ListObjectsOutput = super::list::list_v1;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput = super::multipart::create;
        upload_part: UploadPartInput => UploadPartOutput = super::multipart::upload_part;
        complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput = super::multipart::complete;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput = super::multipart::abort;
        upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput = super::multipart::upload_part_copy;
        list_parts: ListPartsInput => ListPartsOutput = super::multipart::list_parts;
        list_multipart_uploads: ListMultipartUploadsInput => ListMultipartUploadsOutput = super::multipart::list_uploads;
    }
}

impl Ops {
    /// The object a copy reads (`x-amz-copy-source`), which the caller must be allowed to
    /// get, and what S3 says of it.
    pub(super) async fn copy_source_of(
        &self,
        head: &Request<()>,
        identity: &Identity,
    ) -> Result<(ObjectKey, crate::relay::ObjectMeta), ApiError> {
        let source = copy_source(head.headers(), &identity.principal.bucket)?;
        identity.principal.authorize(Action::Get, &source)?;
        let bucket = self.state.bucket_of(&identity.principal)?;
        match bucket
            .fetch(&source, None, &ReadConditions::default(), Read::Head)
            .await?
        {
            Fetched::Object { meta, .. } => Ok((source, meta)),
            Fetched::NotModified { .. } => {
                Err(ApiError::internal("a HEAD without conditions answered 304"))
            }
        }
    }

    /// GET or HEAD with the request's range and conditions, timed in the log.
    async fn fetch(
        &self,
        head: &Request<()>,
        identity: &Identity,
        key: &ObjectKey,
        read: Read,
    ) -> Result<(Fetched, Option<String>), ApiError> {
        let h = head.headers();
        let range = match h.get(header::RANGE) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::new(Code::InvalidRange, "Range is not ASCII"))?;
                Some(v.trim().to_owned())
            }
        };
        let cond = ReadConditions {
            if_none_match: text(h, header::IF_NONE_MATCH),
            if_modified_since: date(h, header::IF_MODIFIED_SINCE),
            if_match: text(h, header::IF_MATCH),
            if_unmodified_since: date(h, header::IF_UNMODIFIED_SINCE),
        };
        let bucket = self.state.bucket_of(&identity.principal)?;
        let op = if read == Read::Body { "get" } else { "head" };
        let fetched =
            crate::api::timed(head, op, bucket.fetch(key, range.as_deref(), &cond, read)).await?;
        // A range of a representation that has changed since the client's copy (a resumed
        // download): the whole one instead, as S3 answers `If-Range`.
        if let Fetched::Object {
            meta,
            content_range: Some(_),
            ..
        } = &fetched
            && let Some(if_range) = text(h, header::IF_RANGE)
            && !IfRange::parse(&if_range).holds(meta.etag.as_deref(), meta.last_modified)
        {
            let whole = crate::api::timed(head, op, bucket.fetch(key, None, &cond, read)).await?;
            return Ok((whole, None));
        }
        Ok((fetched, range))
    }
}

/// Refuses a type (stored, or to be stored) the principal may not upload; none is
/// `application/octet-stream`, as S3 stores it.
pub(super) fn check_stored_type(
    limits: &crate::limits::Limits,
    content_type: Option<&str>,
) -> Result<(), ApiError> {
    let essence = content_type
        .and_then(media_type)
        .unwrap_or_else(|| "application/octet-stream".into());
    limits.check_type(&essence)
}

/// The `x-amz-copy-source-if-*` conditions, for S3 to evaluate.
pub(super) fn copy_conditions(h: &HeaderMap) -> ReadConditions {
    let name = header::HeaderName::from_static;
    ReadConditions {
        if_match: text(h, name("x-amz-copy-source-if-match")),
        if_none_match: text(h, name("x-amz-copy-source-if-none-match")),
        if_modified_since: date(h, name("x-amz-copy-source-if-modified-since")),
        if_unmodified_since: date(h, name("x-amz-copy-source-if-unmodified-since")),
    }
}

/// `x-amz-copy-source: [/]bucket/key`, in the principal's bucket, by the one strict decode.
pub(super) fn copy_source(headers: &HeaderMap, bucket: &str) -> Result<ObjectKey, ApiError> {
    let raw = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("x-amz-copy-source is missing"))?;
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    if raw.contains('?') {
        return Err(ApiError::bad_request(
            "a copy source's versionId is not served here",
        ));
    }
    let (b, key) = raw
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request("x-amz-copy-source is not bucket/key"))?;
    if percent_decode_once(b).map_err(ApiError::invalid_key)? != bucket {
        return Err(ApiError::new(Code::Forbidden, "Access Denied")
            .detail("the copy source names another bucket"));
    }
    ObjectKey::from_path(key).map_err(ApiError::invalid_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunked_framing_is_not_stored_as_a_coding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
            forwarded(&m).content_encoding
        };
        assert_eq!(h("aws-chunked"), None);
        assert_eq!(h("aws-chunked, gzip").as_deref(), Some("gzip"));
        assert_eq!(h("gzip,aws-chunked").as_deref(), Some("gzip"));
        assert_eq!(h("br").as_deref(), Some("br"));
    }
}
