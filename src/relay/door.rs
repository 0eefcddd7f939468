//! The S3 calls only the front door makes: listings with delimiters and tokens, multipart
//! uploads driven by the client part by part, and copies. Every request is built from the
//! gateway's own values (the key the policy checked, the bucket's SSE), never from the
//! client's headers.

use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier,
};

use super::watch::UploadWatch;
use super::{Backend, Listed, ObjectHeaders, ReadConditions, WriteCondition, blame, translate};
use crate::Body;
use crate::error::{ApiError, Code};
use crate::policy::ObjectKey;

/// A listing request, its prefix already confined to the principal's.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub max_keys: i32,
    pub continuation: Option<String>,
    pub start_after: Option<String>,
}

/// A page of a listing.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    pub next_token: Option<String>,
}

/// One uploaded part.
#[derive(Clone, Debug)]
pub struct Part {
    pub number: i32,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// One unfinished multipart upload.
#[derive(Clone, Debug)]
pub struct Unfinished {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// A page of unfinished uploads.
#[derive(Clone, Debug, Default)]
pub struct UploadsPage {
    pub uploads: Vec<Unfinished>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

/// What a copy replaces on the target (`MetadataDirective: REPLACE`); `None` keeps the
/// source's.
pub struct Replace {
    pub content_type: String,
    pub headers: ObjectHeaders,
}

fn time(d: Option<&aws_smithy_types::DateTime>) -> Option<SystemTime> {
    d.and_then(|d| SystemTime::try_from(*d).ok())
}

fn no_id() -> ApiError {
    ApiError::new(Code::BackendError, "the backend failed")
        .detail("no UploadId in CreateMultipartUpload")
}

impl Backend {
    /// One page of ListObjectsV2.
    pub async fn list_page(&self, q: &ListQuery) -> Result<ListPage, ApiError> {
        let out = self
            .sdk
            .bounded
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(&q.prefix)
            .set_delimiter(q.delimiter.clone())
            .max_keys(q.max_keys)
            .set_continuation_token(q.continuation.clone())
            .set_start_after(q.start_after.clone())
            .send()
            .await
            .map_err(translate)?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_owned),
                    last_modified: time(o.last_modified()),
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        Ok(ListPage {
            objects,
            common_prefixes,
            truncated: out.is_truncated().unwrap_or(false),
            next_token: out.next_continuation_token().map(str::to_owned),
        })
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_upload(
        &self,
        key: &ObjectKey,
        content_type: &str,
        headers: &ObjectHeaders,
    ) -> Result<String, ApiError> {
        let (sse, kms_key_id) = self.encryption();
        let out = self
            .sdk
            .bounded
            .create_multipart_upload()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .set_cache_control(headers.cache_control.clone())
            .set_content_disposition(headers.content_disposition.clone())
            .set_content_encoding(headers.content_encoding.clone())
            .set_content_language(headers.content_language.clone())
            .set_expires(headers.expires_time())
            .set_metadata(headers.metadata_map())
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key_id)
            .send()
            .await
            .map_err(translate)?;
        out.upload_id.ok_or_else(no_id)
    }

    /// Streams one part; returns its ETag. The body is already wrapped in the limits.
    pub async fn upload_part(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        number: i32,
        length: u64,
        body: Body,
    ) -> Result<String, ApiError> {
        let request = self
            .sdk
            .client
            .upload_part()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .part_number(number)
            .content_length(length as i64);
        let (body, upload) = UploadWatch::new(body);
        let sending = async {
            Box::pin(request.body(ByteStream::from_body_1_x(body)).send())
                .await
                .map_err(translate)
        };
        let out = upload
            .bound(sending, self.stall_grace)
            .await
            .map_err(blame)?;
        Ok(out.e_tag.unwrap_or_default())
    }

    /// Copies `range` (`bytes=a-b`, or the whole object) of `source` as one part of an
    /// upload; returns the part's ETag and time.
    pub async fn upload_part_copy(
        &self,
        target: (&ObjectKey, &str, i32),
        source: &ObjectKey,
        range: Option<String>,
        cond: ReadConditions,
    ) -> Result<(String, Option<SystemTime>), ApiError> {
        let (key, upload_id, number) = target;
        let out = self
            .sdk
            .bounded
            .upload_part_copy()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(self.copy_source(source))
            .set_copy_source_range(range)
            .set_copy_source_if_match(cond.if_match)
            .set_copy_source_if_none_match(cond.if_none_match)
            .set_copy_source_if_modified_since(cond.if_modified_since.map(Into::into))
            .set_copy_source_if_unmodified_since(cond.if_unmodified_since.map(Into::into))
            .send()
            .await
            .map_err(translate)?;
        let result = out.copy_part_result;
        Ok((
            result
                .as_ref()
                .and_then(|r| r.e_tag().map(str::to_owned))
                .unwrap_or_default(),
            result.as_ref().and_then(|r| time(r.last_modified())),
        ))
    }

    /// `x-amz-copy-source` for a key of this bucket.
    fn copy_source(&self, source: &ObjectKey) -> String {
        format!(
            "{}/{}",
            self.bucket,
            crate::policy::percent_encode_key(source.as_str())
        )
    }

    /// Every part of an upload so far, in order.
    pub async fn parts(&self, key: &ObjectKey, upload_id: &str) -> Result<Vec<Part>, ApiError> {
        self.parts_of(key.as_str(), upload_id).await
    }

    /// [`Backend::parts`] of any key in the bucket (the sweep's keys were never decoded).
    pub(super) async fn parts_of(&self, key: &str, upload_id: &str) -> Result<Vec<Part>, ApiError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .sdk
                .bounded
                .list_parts()
                .bucket(&*self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(translate)?;
            parts.extend(out.parts().iter().filter_map(|p| {
                Some(Part {
                    number: p.part_number()?,
                    size: p.size().unwrap_or(0).max(0) as u64,
                    etag: p.e_tag().map(str::to_owned),
                    last_modified: time(p.last_modified()),
                })
            }));
            match out.next_part_number_marker() {
                Some(next) if out.is_truncated() == Some(true) => marker = Some(next.to_owned()),
                _ => return Ok(parts),
            }
        }
    }

    /// Completes an upload from `(part number, ETag)` pairs, under the write's `condition`.
    pub async fn complete_upload(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: Vec<(i32, String)>,
        condition: WriteCondition,
    ) -> Result<String, ApiError> {
        let (if_none_match, if_match) = condition.headers();
        let parts = parts
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
            .collect();
        let out = self
            .sdk
            .client
            .complete_multipart_upload()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_none_match(if_none_match)
            .set_if_match(if_match)
            .send()
            .await
            .map_err(translate)?;
        Ok(out.e_tag.unwrap_or_default())
    }

    pub async fn abort_upload(&self, key: &ObjectKey, upload_id: &str) -> Result<(), ApiError> {
        self.sdk
            .bounded
            .abort_multipart_upload()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .send()
            .await
            .map_err(translate)?;
        Ok(())
    }

    /// One page of the unfinished uploads under `prefix`.
    pub async fn uploads(
        &self,
        prefix: &str,
        delimiter: Option<String>,
        key_marker: Option<String>,
        upload_id_marker: Option<String>,
        max: i32,
    ) -> Result<UploadsPage, ApiError> {
        let out = self
            .sdk
            .bounded
            .list_multipart_uploads()
            .bucket(&*self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter)
            .set_key_marker(key_marker)
            .set_upload_id_marker(upload_id_marker)
            .max_uploads(max)
            .send()
            .await
            .map_err(translate)?;
        Ok(UploadsPage {
            uploads: out
                .uploads()
                .iter()
                .filter_map(|u| {
                    Some(Unfinished {
                        key: u.key()?.to_owned(),
                        upload_id: u.upload_id()?.to_owned(),
                        initiated: time(u.initiated()),
                    })
                })
                .collect(),
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned))
                .collect(),
            truncated: out.is_truncated() == Some(true),
            next_key_marker: out.next_key_marker().map(str::to_owned),
            next_upload_id_marker: out.next_upload_id_marker().map(str::to_owned),
        })
    }

    /// Deletes up to 1000 keys in one call; each key's own failure, if any, by key.
    pub async fn delete_many(
        &self,
        keys: &[ObjectKey],
    ) -> Result<Vec<(String, ApiError)>, ApiError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k.as_str()).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::internal)?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(ApiError::internal)?;
        let out = self
            .sdk
            .bounded
            .delete_objects()
            .bucket(&*self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(translate)?;
        Ok(out
            .errors()
            .iter()
            .filter(|e| e.code() != Some("NoSuchKey"))
            .map(|e| {
                let key = e.key().unwrap_or_default().to_owned();
                let err = super::errors::classify(500, e.code().unwrap_or("InternalError"))
                    .detail(e.message().unwrap_or_default());
                (key, err)
            })
            .collect())
    }

    /// Copies `source` to `target` inside this bucket; returns the new ETag and time.
    pub async fn copy(
        &self,
        source: &ObjectKey,
        target: &ObjectKey,
        replace: Option<Replace>,
        cond: ReadConditions,
    ) -> Result<(String, Option<SystemTime>), ApiError> {
        let (sse, kms_key_id) = self.encryption();
        let copy_source = self.copy_source(source);
        let mut request = self
            .sdk
            .bounded
            .copy_object()
            .bucket(&*self.bucket)
            .key(target.as_str())
            .copy_source(copy_source)
            .set_copy_source_if_match(cond.if_match)
            .set_copy_source_if_none_match(cond.if_none_match)
            .set_copy_source_if_modified_since(cond.if_modified_since.map(Into::into))
            .set_copy_source_if_unmodified_since(cond.if_unmodified_since.map(Into::into))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key_id);
        if let Some(r) = replace {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .content_type(r.content_type)
                .set_cache_control(r.headers.cache_control.clone())
                .set_content_disposition(r.headers.content_disposition.clone())
                .set_content_encoding(r.headers.content_encoding.clone())
                .set_content_language(r.headers.content_language.clone())
                .set_expires(r.headers.expires_time())
                .set_metadata(r.headers.metadata_map());
        }
        let out = request.send().await.map_err(translate)?;
        let result = out.copy_object_result;
        Ok((
            result
                .as_ref()
                .and_then(|r| r.e_tag().map(str::to_owned))
                .unwrap_or_default(),
            result.as_ref().and_then(|r| time(r.last_modified())),
        ))
    }
}
