//! Multipart uploads driven by the client, part by part, held to the principal's limits as a
//! whole: each part may take only what the upload has left of `max_object_size` (the parts
//! already stored are asked of S3, so several instances agree), and `Complete` adds up the
//! parts it names and aborts an upload that is over. The type is checked at `Create` and the
//! first part is sniffed; nothing half-written stays on a refusal.

use s3s::dto::*;
use s3s::{S3Response, S3Result};

use super::ops::{
    Ops, Parts, answer, body_of, check_stored_type, declared_length, declared_type, digests, etag,
    timestamp, verified,
};
use crate::api::objects::{read_prefix, shaped};
use crate::error::{ApiError, Code};
use crate::limits::{Guard, GuardedBody, Prefixed, SNIFF_BYTES, Sniffed, sniff};
use crate::policy::{Action, ObjectKey};
use crate::relay::{MAX_PARTS, WriteCondition};

/// A part number S3 takes.
fn part_number(n: i32) -> Result<i32, ApiError> {
    if (1..=MAX_PARTS).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::bad_request("Part number must be from 1 to 10000"))
    }
}

/// What the upload has left for part `number`: the limit less its other parts S3 holds
/// (asked of S3, so several instances agree); `length` more must fit.
async fn room_for(
    bucket: &crate::relay::Backend,
    key: &ObjectKey,
    upload_id: &str,
    number: i32,
    limits: &crate::limits::Limits,
    length: u64,
) -> Result<u64, ApiError> {
    let others: u64 = bucket
        .parts(key, upload_id)
        .await?
        .iter()
        .filter(|part| part.number != number)
        .map(|part| part.size)
        .sum();
    let room = limits.max_object_size.bytes().saturating_sub(others);
    if length > room {
        return Err(ApiError::too_large(limits.max_object_size)
            .detail(format_args!("{others} bytes in the upload's other parts")));
    }
    Ok(room)
}

pub(super) async fn create(
    ops: &Ops,
    p: Parts<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    answer(&p.head, async {
        let (key, identity) = ops
            .admit_object(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &p.input.key,
                Action::Put,
            )
            .await?;
        let limits = identity.limits();
        let content_type = declared_type(p.input.content_type.as_deref())?
            .unwrap_or_else(|| "application/octet-stream".into());
        check_stored_type(&limits, Some(&content_type))?;
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
    let digests = digests(&p.head, p.trailers.as_ref())?;
    let checksum = digests.checksum.clone();
    let body = body_of(&p.head, p.input.body.take());
    answer(&p.head, async {
        let (key, identity) = ops
            .admit_object(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &p.input.key,
                Action::Put,
            )
            .await?;
        let number = part_number(p.input.part_number)?;
        let length =
            declared_length(p.input.content_length, p.head.headers()).ok_or_else(|| {
                ApiError::new(Code::LengthRequired, "UploadPart needs a Content-Length")
            })?;
        let limits = identity.limits();
        let bucket = ops.state.bucket_of(&identity.principal)?;
        let room = room_for(bucket, &key, &p.input.upload_id, number, &limits, length).await?;
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
        .await?;
        let sums = verified(&checksum, p.head.headers());
        let out = UploadPartOutput {
            e_tag: etag(&tag),
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

use http_body_util::BodyExt as _;

pub(super) async fn complete(
    ops: &Ops,
    p: Parts<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    answer(&p.head, async {
        let (key, identity) = ops
            .admit_object(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &p.input.key,
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
        let stored = bucket.parts(&key, &p.input.upload_id).await?;
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
            bucket.complete_upload(&key, &p.input.upload_id, named, WriteCondition::None),
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
    answer(&p.head, async {
        let (key, identity) = ops
            .admit_object(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &p.input.key,
                Action::Put,
            )
            .await?;
        let bucket = ops.state.bucket_of(&identity.principal)?;
        bucket.abort_upload(&key, &p.input.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    })
    .await
}

pub(super) async fn list_parts(
    ops: &Ops,
    p: Parts<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    answer(&p.head, async {
        let (key, identity) = ops
            .admit_object(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &p.input.key,
                Action::Put,
            )
            .await?;
        let bucket = ops.state.bucket_of(&identity.principal)?;
        let parts = bucket.parts(&key, &p.input.upload_id).await?;
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
                super::list::Scope::Outside => return Err(identity.principal.outside_prefix()),
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
    answer(&p.head, async {
        let (key, identity) = ops
            .admit_object(
                &p.head,
                p.credentials.as_ref(),
                &p.input.bucket,
                &p.input.key,
                Action::Put,
            )
            .await?;
        let number = part_number(p.input.part_number)?;
        let (source, meta) = ops.copy_source_of(&p.head, &identity).await?;
        let limits = identity.limits();
        check_stored_type(&limits, meta.content_type.as_deref())?;
        let length = copy_range(p.input.copy_source_range.as_deref(), meta.size)?;
        let bucket = ops.state.bucket_of(&identity.principal)?;
        room_for(bucket, &key, &p.input.upload_id, number, &limits, length).await?;
        let copying = bucket.upload_part_copy(
            (&key, &p.input.upload_id, number),
            &source,
            p.input.copy_source_range.clone(),
            super::ops::copy_conditions(p.head.headers()),
        );
        let (tag, modified) = crate::api::timed(&p.head, "upload_part_copy", copying).await?;
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
