//! `PUT`, `GET`, `HEAD` and `DELETE` on `/v1/objects/{key}`.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use serde_json::json;

use super::admission::admit_object;
use super::conditions::{EntityTags, IfRange};
use super::{AppState, respond, timed};
use crate::Body;
use crate::error::{ApiError, Code};
use bytes::{Bytes, BytesMut};

use crate::auth::Identity;
use crate::limits::quota::Metered;
use crate::limits::{
    Guard, GuardedBody, Prefixed, SNIFF_BYTES, Sniffed, Throttled, expected_digests, media_type,
    sniff,
};
use crate::obs::note;
use crate::policy::Action;
use crate::relay::{Fetched, ReadConditions, Upload, WriteCondition};

pub(super) async fn put(
    state: &AppState,
    req: Request<Body>,
    encoded_key: &str,
) -> Result<Response<Body>, ApiError> {
    let (key, identity) = admit_object(state, &req, encoded_key, Action::Put).await?;
    let bucket = state.bucket_of(&identity.principal)?;
    let limits = &identity.limits();
    let link = identity.link.as_ref();
    let headers = req.headers();

    // Everything that can be refused from the head is refused before a byte of the body is
    // read: hyper sends `100 Continue` only when the body is first polled, so an
    // `Expect: 100-continue` client gets the refusal instead.
    let length = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?,
        ),
    };
    if length.is_none() && req.body().is_end_stream() {
        return Err(ApiError::new(
            Code::LengthRequired,
            "send Content-Length, or a chunked body (Transfer-Encoding: chunked)",
        ));
    }
    let declared = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| media_type(s).is_some())
                .ok_or_else(|| {
                    ApiError::bad_request("Content-Type is not a media type like `image/png`")
                })?
                .to_owned(),
        ),
    };
    // A link made for one content type takes only that type (and lends it to an upload
    // that declares none).
    let declared = match link.and_then(|l| l.content_type.as_deref()) {
        None => declared,
        Some(required) => match declared {
            None => Some(required.to_owned()),
            Some(d) if media_type(&d) == media_type(required) => Some(d),
            Some(d) => {
                return Err(ApiError::new(
                    Code::UnsupportedMediaType,
                    format!("this link only takes `{required}` uploads"),
                )
                .detail(format_args!("declared {d}")));
            }
        },
    };
    let declared_essence = declared.as_deref().and_then(media_type);
    if let Some(essence) = &declared_essence {
        limits.check_type(essence)?;
    }
    if let Some(length) = length {
        limits.check_length(length)?;
        bucket.admits(length)?;
    }
    let mut condition = write_condition(headers)?;
    if link.is_some_and(|l| l.create_only) {
        match condition {
            WriteCondition::None | WriteCondition::IfNoneMatchAny => {
                condition = WriteCondition::IfNoneMatchAny;
            }
            WriteCondition::IfMatch(_) => {
                return Err(ApiError::bad_request(
                    "this link only creates; it cannot be used with If-Match",
                ));
            }
        }
    }
    let digests = expected_digests(headers)?;
    let create_only = condition == WriteCondition::IfNoneMatchAny;

    let (parts, body) = req.into_parts();
    let head = Request::from_parts(parts, ());
    let spec = Store {
        key: key.clone(),
        declared,
        length,
        condition,
        digests,
        headers: Default::default(),
        idle_timeout: Some(state.body_idle_timeout),
    };
    let (stored, content_type) = store(state, &identity, limits, &head, spec, body).await?;
    let status = if create_only {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = respond::json(
        status,
        &json!({ "key": key.as_str(), "size": stored.size, "etag": stored.etag, "content_type": content_type }),
    );
    // As S3's own PUT answers do.
    if let Ok(etag) = HeaderValue::from_str(&stored.etag)
        && !stored.etag.is_empty()
    {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    Ok(resp)
}

/// An upload the admission phase and the head's checks have let through.
pub(crate) struct Store {
    pub key: crate::policy::ObjectKey,
    /// `Content-Type` as the client sent it (checked to be a media type).
    pub declared: Option<String>,
    pub length: Option<u64>,
    pub condition: WriteCondition,
    pub digests: crate::limits::ExpectedDigests,
    pub headers: crate::relay::ObjectHeaders,
    /// The body's idle timeout (`server.body_idle_timeout`; `None` when the caller watches
    /// the client's bytes itself).
    pub idle_timeout: Option<std::time::Duration>,
}

/// Streams an upload to the principal's bucket through the streaming limits: size, idle
/// timeout and digests as it streams, the sniffed type against the declared one and the
/// allowed ones, the quota and throttle. Returns what S3 stored and the type it was stored
/// with. `/v1` PUTs and the S3 door's PutObject both come here.
pub(crate) async fn store<B>(
    state: &AppState,
    identity: &Identity,
    limits: &crate::limits::Limits,
    head: &Request<B>,
    spec: Store,
    body: Body,
) -> Result<(crate::relay::Stored, String), ApiError> {
    let bucket = state.bucket_of(&identity.principal)?;
    let declared = spec.declared;
    let declared_essence = declared.as_deref().and_then(media_type);
    let guard = Guard {
        max_bytes: limits.max_object_size.bytes(),
        idle_timeout: spec.idle_timeout,
        digests: spec.digests,
    };
    let (mut body, watch) = GuardedBody::new(body, guard);

    // Sniff the first bytes; they still reach S3, replayed in front of the rest.
    let mut content_type = declared.clone();
    let mut prefix = Bytes::new();
    if limits.sniff {
        prefix = read_prefix(&mut body, SNIFF_BYTES).await?;
        match sniff(declared_essence.as_deref(), &prefix) {
            Sniffed::Accept(found) => {
                if content_type.is_none()
                    && let Some(found) = found
                {
                    limits.check_type(found)?;
                    content_type = Some(found.to_owned());
                }
            }
            Sniffed::Mismatch { declared, found } => {
                return Err(ApiError::new(
                    Code::UnsupportedMediaType,
                    format!("the content does not look like `{declared}`"),
                )
                .detail(format_args!("sniffed {}", found.unwrap_or("nothing known"))));
            }
        }
    }
    let content_type = match content_type {
        Some(t) => t,
        None => {
            limits.check_type("application/octet-stream")?;
            "application/octet-stream".to_owned()
        }
    };
    let upload = Upload {
        key: spec.key,
        content_type: content_type.clone(),
        length: spec.length,
        condition: spec.condition,
        headers: spec.headers,
        body: shaped(state, identity, Prefixed::new(prefix, body).boxed()),
    };
    let stored = timed(head, "put", bucket.put(upload)).await?;
    if let Some(sha) = watch.sha256() {
        note(head, |n| n.sha256 = Some(sha));
    }
    Ok((stored, content_type))
}

/// The body, counted toward the principal's daily quota and delayed to its
/// `bytes_per_second`, when it has them.
pub(crate) fn shaped(state: &AppState, identity: &Identity, body: Body) -> Body {
    let principal = &identity.principal;
    let body = match principal.max_bytes_per_day {
        Some(_) => Metered::new(body, state.ledger.clone(), principal.name.clone()).boxed(),
        None => body,
    };
    match &principal.gate.bytes {
        Some(rate) => Throttled::new(body, rate.clone()).boxed(),
        None => body,
    }
}

/// Reads up to `n` bytes from the front of the body (fewer if it ends first). A failure is
/// the body's own (too large, stalled, wrong digest), found in its error's chain, or else
/// the client's.
pub(crate) async fn read_prefix<B>(body: &mut B, n: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes, Error = crate::BoxError> + Unpin,
{
    let mut buf = BytesMut::new();
    while buf.len() < n {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                let err = ApiError::new(Code::BadRequest, "the request body failed").caused_by(e);
                let failure = err
                    .find_cause::<crate::limits::BodyFailure>()
                    .copied()
                    .unwrap_or(crate::limits::BodyFailure::Client);
                return Err(ApiError::from(failure).detail(&err).caused_by(err));
            }
        }
    }
    Ok(buf.freeze())
}

/// `If-None-Match: *` (create only) or `If-Match: <etag>` on a PUT.
pub(crate) fn write_condition(headers: &HeaderMap) -> Result<WriteCondition, ApiError> {
    let inm = header_str(headers, header::IF_NONE_MATCH)?;
    let im = header_str(headers, header::IF_MATCH)?;
    match (inm, im) {
        (None, None) => Ok(WriteCondition::None),
        (Some("*"), None) => Ok(WriteCondition::IfNoneMatchAny),
        (Some(_), None) => Err(ApiError::bad_request("If-None-Match on PUT must be `*`")),
        // S3 takes one tag on a write.
        (None, Some(v)) => match EntityTags::parse("If-Match", v)?.for_s3() {
            Some(tag) if tag != "*" => Ok(WriteCondition::IfMatch(tag)),
            _ => Err(ApiError::bad_request(
                "If-Match on PUT takes one entity tag",
            )),
        },
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send If-None-Match or If-Match, not both",
        )),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, ApiError> {
    match headers.get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::bad_request(format!("{name} is not visible ASCII"))),
    }
}

fn header_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    // An unparseable date is ignored, as RFC 9110 asks.
    headers
        .get(name)?
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
}

pub(super) async fn get(
    state: &AppState,
    req: Request<Body>,
    encoded_key: &str,
    read: super::Read,
) -> Result<Response<Body>, ApiError> {
    let with_body = read == super::Read::Body;
    let (key, identity) = admit_object(state, &req, encoded_key, Action::Get).await?;
    let headers = req.headers();
    let range = match header_str(headers, header::RANGE)? {
        None => None,
        Some(r) => Some(parse_range(r)?),
    };
    let tags = |name: header::HeaderName| {
        header_str(headers, name.clone())?
            .map(|v| EntityTags::parse(name.as_str(), v))
            .transpose()
    };
    let if_match = tags(header::IF_MATCH)?;
    let if_none_match = tags(header::IF_NONE_MATCH)?;
    let if_range = match &range {
        Some(_) => header_str(headers, header::IF_RANGE)?.map(IfRange::parse),
        None => None,
    };
    // What S3 can evaluate goes to S3; a list of tags is evaluated here on its answer. A
    // date condition is ignored beside its tag condition (RFC 9110 section 13.2.2).
    let cond = ReadConditions {
        if_none_match: if_none_match.as_ref().and_then(EntityTags::for_s3),
        if_modified_since: if if_none_match.is_none() {
            header_date(headers, header::IF_MODIFIED_SINCE)
        } else {
            None
        },
        if_match: if_match.as_ref().and_then(EntityTags::for_s3),
        if_unmodified_since: if if_match.is_none() {
            header_date(headers, header::IF_UNMODIFIED_SINCE)
        } else {
            None
        },
    };
    let op = if with_body { "get" } else { "head" };
    let bucket = state.bucket_of(&identity.principal)?;
    let has_if_match = if_match.is_some();
    let fetch = |range: Option<String>| {
        let cond = &cond;
        let key = &key;
        let req = &req;
        async move {
            timed(req, op, bucket.fetch(key, range.as_deref(), cond, read))
                .await
                .map_err(|e| match e.code {
                    // If-Match on no representation fails (RFC 9110 section 13.1.1).
                    Code::NotFound if has_if_match => precondition_failed(),
                    _ => e,
                })
        }
    };
    let mut fetched = fetch(range.clone()).await?;
    if let Fetched::Object {
        meta,
        content_range,
        ..
    } = &fetched
    {
        let etag = meta.etag.as_deref();
        if if_match.as_ref().is_some_and(|t| !t.matches_strong(etag)) {
            return Err(precondition_failed());
        }
        if if_none_match.as_ref().is_some_and(|t| t.matches_weak(etag)) {
            let last_modified = meta.last_modified.map(httpdate::fmt_http_date);
            return Ok(not_modified(meta.etag.clone(), last_modified));
        }
        // A range of a representation that has changed since: the whole one instead.
        if content_range.is_some()
            && if_range
                .as_ref()
                .is_some_and(|r| !r.holds(etag, meta.last_modified))
        {
            fetched = fetch(None).await?;
        }
    }

    match fetched {
        Fetched::NotModified {
            etag,
            last_modified,
        } => Ok(not_modified(etag, last_modified)),
        Fetched::Object {
            meta,
            content_range,
            body,
        } => {
            let body = body.map(|b| shaped(state, &identity, b));
            let mut resp = Response::new(body.unwrap_or_else(respond::empty));
            if content_range.is_some() {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            }
            let h = resp.headers_mut();
            let stored_type = meta
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into());
            let essence = media_type(&stored_type);
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&stored_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
            if let Some(v) = meta.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
                h.insert(header::ETAG, v);
            }
            if let Some(t) = meta.last_modified {
                h.insert(
                    header::LAST_MODIFIED,
                    HeaderValue::from_str(&httpdate::fmt_http_date(t))
                        .expect("http dates are ASCII"),
                );
            }
            if let Some(v) = content_range.and_then(|r| HeaderValue::from_str(&r).ok()) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            // Defence in depth: even a document opened from here runs in an opaque origin.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            );
            if respond::is_active_content(essence.as_deref()) {
                h.insert(
                    header::CONTENT_DISPOSITION,
                    respond::attachment(key.file_name()),
                );
            }
            Ok(resp)
        }
    }
}

fn precondition_failed() -> ApiError {
    ApiError::new(
        Code::PreconditionFailed,
        "the object's state does not match the request's condition",
    )
}

/// `304 Not Modified` with the validators.
fn not_modified(etag: Option<String>, last_modified: Option<String>) -> Response<Body> {
    let mut resp = Response::new(respond::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = last_modified.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    resp
}

/// A single byte range, re-serialized canonically: `bytes=A-B`, `bytes=A-` or `bytes=-N`.
/// Several ranges, or anything else, is `400 invalid_range`.
pub fn parse_range(value: &str) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            Code::InvalidRange,
            format!("Range {why}; send one range like `bytes=0-1023`"),
        )
    };
    let spec = value
        .strip_prefix("bytes=")
        .ok_or_else(|| bad("must be in bytes"))?
        .trim();
    if spec.contains(',') {
        return Err(bad("with several ranges is not supported"));
    }
    let (first, last) = spec.split_once('-').ok_or_else(|| bad("is malformed"))?;
    let num = |s: &str| -> Result<u64, ApiError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 19 {
            return Err(bad("is malformed"));
        }
        s.parse().map_err(|_| bad("is malformed"))
    };
    match (first.trim(), last.trim()) {
        ("", n) => {
            let n = num(n)?;
            if n == 0 {
                return Err(bad("asks for no bytes"));
            }
            Ok(format!("bytes=-{n}"))
        }
        (a, "") => Ok(format!("bytes={}-", num(a)?)),
        (a, b) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad("ends before it starts"));
            }
            Ok(format!("bytes={a}-{b}"))
        }
    }
}

pub(super) async fn delete(
    state: &AppState,
    req: Request<Body>,
    encoded_key: &str,
) -> Result<Response<Body>, ApiError> {
    let (key, identity) = admit_object(state, &req, encoded_key, Action::Delete).await?;
    let bucket = state.bucket_of(&identity.principal)?;
    timed(&req, "delete", bucket.delete(&key)).await?;
    let mut resp = Response::new(respond::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99").unwrap(), "bytes=0-99");
        assert_eq!(parse_range("bytes=100-").unwrap(), "bytes=100-");
        assert_eq!(parse_range("bytes=-5").unwrap(), "bytes=-5");
        for bad in [
            "bytes=5-1",
            "bytes=-0",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn range_parse_is_canonical(a in 0u64..u64::MAX / 2, len in 0u64..1_000_000) {
            let s = format!("bytes={}-{}", a, a + len);
            prop_assert_eq!(parse_range(&s).unwrap(), s);
        }

        #[test]
        fn range_never_panics(s in "\\PC{0,40}") {
            let _ = parse_range(&s);
        }
    }
}
