//! Multipart uploads driven by the client, part by part, held to the principal's limits as a
//! whole: each part may take only what the upload has left of `max_object_size` (the parts
//! already stored are asked of S3, so several instances agree), and `Complete` adds up the
//! parts it names and aborts an upload that is over. The type is checked at `Create` and the
//! first part is sniffed; nothing half-written stays on a refusal.

use http::Request;
use s3s::dto::*;
use s3s::{S3Response, S3Result};

use super::ops::{
    Ops, Parts, answer, body_of, declared_length, declared_type, digests, etag, key_of, timestamp,
    verified,
};
use crate::api::objects::{read_prefix, shaped};
use crate::error::{ApiError, Code};
use crate::limits::{
    ChecksumAlgorithm, Guard, GuardedBody, Prefixed, SNIFF_BYTES, Sniffed, media_type, sniff,
};
use crate::policy::{Action, ObjectKey};
use crate::relay::MAX_PARTS;

/// A backend's "no such key" in a multipart call means the upload is gone.
fn upload_gone(e: ApiError) -> ApiError {
    if e.code == Code::NotFound {
        ApiError::new(Code::NotFound, "The specified upload does not exist.").detail("NoSuchUpload")
    } else {
        e
    }
}

/// Maps [`upload_gone`]'s refusal to S3's `NoSuchUpload` on the way out.
async fn answer_upload<T>(
    head: &Request<()>,
    op: impl Future<Output = Result<S3Response<T>, ApiError>>,
) -> S3Result<S3Response<T>> {
    let raw_failed = |e: &ApiError| e.find_cause::<crate::limits::BodyFailure>().is_some();
    match op.await {
        Ok(r) => Ok(r),
        // A part whose raw body failed is answered for that (by `answer`), not as missing.
        Err(e) if e.code == Code::NotFound && !raw_failed(&e) => {
            let mut err = s3s::S3Error::with_message(
                s3s::S3ErrorCode::NoSuchUpload,
                "The specified upload does not exist.",
            );
            err.set_request_id(super::ops::request_id(head));
            Err(err)
        }
        Err(e) => answer(head, async { Err(e) }).await,
    }
}

pub(super) async fn create(
    ops: &Ops,
    p: Parts<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    answer(&p.head, async {
        let key = key_of(&p.head, &p.input.bucket, &p.input.key)?;
        let identity = ops
            .admitted(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &key,
                Action::Put,
            )
            .await?;
        let limits = identity.limits();
        let content_type = declared_type(p.input.content_type.as_deref())?
            .unwrap_or_else(|| "application/octet-stream".into());
        let essence = media_type(&content_type).unwrap_or_default();
        limits.check_type(&essence)?;
        let bucket = ops.state.bucket_of(&identity.principal)?;
        let headers = super::ops::forwarded(p.head.headers());
        let id = crate::api::timed(
            &p.head,
            "create_upload",
            bucket.create_upload(&key, &content_type, &headers),
        )
        .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(p.input.bucket.clone()),
            key: Some(p.input.key.clone()),
            upload_id: Some(id),
            ..Default::default()
        }))
    })
    .await
}

pub(super) async fn upload_part(
    ops: &Ops,
    mut p: Parts<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let id = super::ops::request_id(&p.head);
    let digests = digests(p.head.headers(), p.trailers.as_ref()).map_err(|mut e| {
        e.set_request_id(&id);
        e
    })?;
    let checksum = digests.checksum.clone();
    let body = body_of(&p.head, p.input.body.take());
    answer_upload(&p.head, async {
        let key = key_of(&p.head, &p.input.bucket, &p.input.key)?;
        let identity = ops
            .admitted(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &key,
                Action::Put,
            )
            .await?;
        let number = p.input.part_number;
        if !(1..=MAX_PARTS).contains(&number) {
            return Err(ApiError::bad_request("Part number must be from 1 to 10000"));
        }
        let length =
            declared_length(p.input.content_length, p.head.headers()).ok_or_else(|| {
                ApiError::new(Code::LengthRequired, "UploadPart needs a Content-Length")
            })?;
        let limits = identity.limits();
        let bucket = ops.state.bucket_of(&identity.principal)?;
        // What the upload has left: the limit less the other parts already stored.
        let parts = bucket
            .parts(&key, &p.input.upload_id)
            .await
            .map_err(upload_gone)?;
        let others: u64 = parts
            .iter()
            .filter(|part| part.number != number)
            .map(|part| part.size)
            .sum();
        let room = limits.max_object_size.bytes().saturating_sub(others);
        if length > room {
            return Err(ApiError::too_large(limits.max_object_size)
                .detail(format_args!("{others} bytes in the upload's other parts")));
        }
        let guard = Guard {
            max_bytes: room,
            idle_timeout: super::decoded_idle(p.head.headers(), ops.state.body_idle_timeout),
            digests,
        };
        let (mut body, _watch) = GuardedBody::new(body, guard);
        let mut prefix = bytes::Bytes::new();
        if number == 1 && limits.sniff {
            prefix = read_prefix(&mut body, SNIFF_BYTES).await?;
            // The declared type was checked at Create; what the bytes are must be allowed too.
            if let Sniffed::Accept(Some(found)) = sniff(None, &prefix) {
                limits.check_type(found)?;
            }
        }
        let body = shaped(&ops.state, &identity, Prefixed::new(prefix, body).boxed());
        let tag = crate::api::timed(
            &p.head,
            "upload_part",
            bucket.upload_part(&key, &p.input.upload_id, number, length, body),
        )
        .await
        .map_err(upload_gone)?;
        let mut out = UploadPartOutput {
            e_tag: etag(&tag),
            ..Default::default()
        };
        if let Some((a, v)) = verified(&checksum) {
            match a {
                ChecksumAlgorithm::Crc32 => out.checksum_crc32 = Some(v),
                ChecksumAlgorithm::Crc32c => out.checksum_crc32c = Some(v),
                ChecksumAlgorithm::Crc64Nvme => out.checksum_crc64nvme = Some(v),
                ChecksumAlgorithm::Sha1 => out.checksum_sha1 = Some(v),
                ChecksumAlgorithm::Sha256 => out.checksum_sha256 = Some(v),
            }
        }
        Ok(S3Response::new(out))
    })
    .await
}

use http_body_util::BodyExt as _;

pub(super) async fn complete(
    ops: &Ops,
    p: Parts<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    answer_upload(&p.head, async {
        let key = key_of(&p.head, &p.input.bucket, &p.input.key)?;
        let identity = ops
            .admitted(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &key,
                Action::Put,
            )
            .await?;
        let named: Vec<(i32, String)> = p
            .input
            .multipart_upload
            .as_ref()
            .and_then(|m| m.parts.as_ref())
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|part| {
                        Some((part.part_number?, part.e_tag.as_ref()?.value().to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if named.is_empty() {
            return Err(ApiError::bad_request(
                "CompleteMultipartUpload names no parts",
            ));
        }
        let limits = identity.limits();
        let bucket = ops.state.bucket_of(&identity.principal)?;
        let stored = bucket
            .parts(&key, &p.input.upload_id)
            .await
            .map_err(upload_gone)?;
        let total: u64 = stored
            .iter()
            .filter(|part| named.iter().any(|(n, _)| *n == part.number))
            .map(|part| part.size)
            .sum();
        if total > limits.max_object_size.bytes() {
            // Over the limit as a whole: the upload goes, so nothing of it stays.
            if let Err(e) = bucket.abort_upload(&key, &p.input.upload_id).await {
                tracing::error!(key = %key, error = %e, "could not abort an upload over the limit");
            }
            return Err(ApiError::too_large(limits.max_object_size)
                .detail(format_args!("the parts add up to {total} bytes")));
        }
        let named = named
            .into_iter()
            .map(|(n, tag)| (n, format!("\"{}\"", tag.trim_matches('"'))))
            .collect();
        let tag = crate::api::timed(
            &p.head,
            "complete_upload",
            bucket.complete_upload(&key, &p.input.upload_id, named),
        )
        .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(p.input.bucket.clone()),
            key: Some(p.input.key.clone()),
            e_tag: etag(&tag),
            ..Default::default()
        }))
    })
    .await
}

pub(super) async fn abort(
    ops: &Ops,
    p: Parts<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    answer_upload(&p.head, async {
        let key = key_of(&p.head, &p.input.bucket, &p.input.key)?;
        let identity = ops
            .admitted(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &key,
                Action::Put,
            )
            .await?;
        let bucket = ops.state.bucket_of(&identity.principal)?;
        bucket
            .abort_upload(&key, &p.input.upload_id)
            .await
            .map_err(upload_gone)?;
        let mut resp = S3Response::new(AbortMultipartUploadOutput::default());
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    })
    .await
}

pub(super) async fn list_parts(
    ops: &Ops,
    p: Parts<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    answer_upload(&p.head, async {
        let key = key_of(&p.head, &p.input.bucket, &p.input.key)?;
        let identity = ops
            .admitted(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &key,
                Action::Put,
            )
            .await?;
        let bucket = ops.state.bucket_of(&identity.principal)?;
        let parts = bucket
            .parts(&key, &p.input.upload_id)
            .await
            .map_err(upload_gone)?;
        let marker = p.input.part_number_marker.unwrap_or(0);
        let max = p.input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let after: Vec<_> = parts
            .into_iter()
            .filter(|part| part.number > marker)
            .collect();
        let truncated = after.len() > max;
        let page: Vec<_> = after.into_iter().take(max).collect();
        let next = page.last().map(|part| part.number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(p.input.bucket.clone()),
            key: Some(p.input.key.clone()),
            upload_id: Some(p.input.upload_id.clone()),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            part_number_marker: p.input.part_number_marker,
            next_part_number_marker: next.filter(|_| truncated),
            parts: Some(
                page.into_iter()
                    .map(|part| Part {
                        part_number: Some(part.number),
                        size: Some(part.size as i64),
                        e_tag: part.etag.as_deref().and_then(etag),
                        last_modified: timestamp(part.last_modified),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    })
    .await
}

pub(super) async fn list_uploads(
    ops: &Ops,
    p: Parts<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    answer(&p.head, async {
        let identity = ops
            .admitted_list(&p.head, p.credentials.as_ref(), &p.input.bucket)
            .await?;
        let i = &p.input;
        let asked = i.prefix.clone().unwrap_or_default();
        let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
        let max = i.max_uploads.unwrap_or(1000).clamp(0, 1000);
        let page =
            match super::list::scope(&identity.principal.prefix, &asked, delimiter.as_deref()) {
                super::list::Scope::Outside => {
                    return Err(ApiError::new(
                        Code::Forbidden,
                        format!(
                            "keys of this principal start with `{}`",
                            identity.principal.prefix
                        ),
                    ));
                }
                super::list::Scope::One(prefix) => crate::relay::UploadsPage {
                    common_prefixes: vec![prefix],
                    ..Default::default()
                },
                super::list::Scope::List(prefix) => {
                    let bucket = ops.state.bucket_of(&identity.principal)?;
                    bucket
                        .uploads(
                            &prefix,
                            delimiter.clone(),
                            i.key_marker.clone(),
                            i.upload_id_marker.clone(),
                            max,
                        )
                        .await?
                }
            };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket.clone()),
            prefix: Some(asked),
            delimiter: i.delimiter.clone(),
            key_marker: i.key_marker.clone(),
            upload_id_marker: i.upload_id_marker.clone(),
            max_uploads: Some(max),
            is_truncated: Some(page.truncated),
            next_key_marker: page.next_key_marker,
            next_upload_id_marker: page.next_upload_id_marker,
            uploads: Some(
                page.uploads
                    .into_iter()
                    .filter(|u| ObjectKey::parse(u.key.clone()).is_ok())
                    .map(|u| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: timestamp(u.initiated),
                        ..Default::default()
                    })
                    .collect(),
            ),
            common_prefixes: Some(
                page.common_prefixes
                    .into_iter()
                    .map(|prefix| CommonPrefix {
                        prefix: Some(prefix),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    })
    .await
}

/// `bytes=a-b` of an object of `size` bytes: the part's length, or why it is refused.
fn copy_range(range: Option<&str>, size: u64) -> Result<u64, ApiError> {
    let Some(range) = range else { return Ok(size) };
    let parsed = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match parsed {
        None => Err(ApiError::bad_request(
            "x-amz-copy-source-range must be bytes=first-last",
        )),
        Some((first, last)) if first > last || last >= size => Err(ApiError::new(
            Code::RangeNotSatisfiable,
            "the range is outside the source object",
        )),
        Some((first, last)) => Ok(last - first + 1),
    }
}

/// A part copied from an object: get on the source and put on the upload's key, and the
/// copied length held to what the upload has left of `max_object_size`.
pub(super) async fn upload_part_copy(
    ops: &Ops,
    p: Parts<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    answer_upload(&p.head, async {
        let key = key_of(&p.head, &p.input.bucket, &p.input.key)?;
        let identity = ops
            .admitted(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &key,
                Action::Put,
            )
            .await?;
        let source = super::ops::copy_source(p.head.headers(), &identity.principal.bucket)?;
        identity.principal.authorize(Action::Get, &source)?;
        let number = p.input.part_number;
        if !(1..=MAX_PARTS).contains(&number) {
            return Err(ApiError::bad_request("Part number must be from 1 to 10000"));
        }
        let limits = identity.limits();
        let bucket = ops.state.bucket_of(&identity.principal)?;
        let fetched = bucket
            .fetch(
                &source,
                None,
                &crate::relay::ReadConditions::default(),
                crate::relay::Read::Head,
            )
            .await?;
        let crate::relay::Fetched::Object { meta, .. } = fetched else {
            return Err(ApiError::internal("a HEAD without conditions answered 304"));
        };
        let essence = meta
            .content_type
            .as_deref()
            .and_then(media_type)
            .unwrap_or_else(|| "application/octet-stream".into());
        limits.check_type(&essence)?;
        let length = copy_range(p.input.copy_source_range.as_deref(), meta.size)?;
        let parts = bucket
            .parts(&key, &p.input.upload_id)
            .await
            .map_err(upload_gone)?;
        let others: u64 = parts
            .iter()
            .filter(|part| part.number != number)
            .map(|part| part.size)
            .sum();
        if others + length > limits.max_object_size.bytes() {
            return Err(ApiError::too_large(limits.max_object_size)
                .detail(format_args!("{others} bytes in the upload's other parts")));
        }
        let copying = bucket.upload_part_copy(
            (&key, &p.input.upload_id, number),
            &source,
            p.input.copy_source_range.clone(),
            super::ops::copy_conditions(p.head.headers()),
        );
        let (tag, modified) = crate::api::timed(&p.head, "upload_part_copy", copying)
            .await
            .map_err(upload_gone)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: etag(&tag),
                last_modified: timestamp(modified.or(Some(std::time::SystemTime::now()))),
                ..Default::default()
            }),
            ..Default::default()
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range(None, 10).unwrap(), 10);
        assert_eq!(copy_range(Some("bytes=0-9"), 10).unwrap(), 10);
        assert_eq!(copy_range(Some("bytes=2-4"), 10).unwrap(), 3);
        assert!(copy_range(Some("bytes=5-10"), 10).is_err());
        assert!(copy_range(Some("bytes=5-4"), 10).is_err());
        assert!(copy_range(Some("bytes=-4"), 10).is_err());
        assert!(copy_range(Some("0-4"), 10).is_err());
    }
}
