//! Uploads of unknown length: gathered a part at a time (each part's memory from the shared
//! budget, `buffers.rs`), sent as a multipart upload, completed with the write's condition,
//! and aborted on any failure, so nothing half-written stays.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::buffers::PartBuffer;
use super::{Backend, MAX_PARTS, Stored, Upload, WriteCondition, blame, translate};
use crate::Body;
use crate::error::{ApiError, Code};
use crate::policy::ObjectKey;

impl Backend {
    pub(super) async fn put_multipart(&self, upload: Upload) -> Result<Stored, ApiError> {
        let Upload {
            key,
            content_type,
            condition,
            headers,
            mut body,
            ..
        } = upload;
        let mut buf = PartBuffer::new(&self.buffers, self.part_size);
        let ended = fill(&mut body, &mut buf).await?;
        if ended {
            // The whole body fits in one part: one PutObject, no multipart bookkeeping.
            let (first, _room) = buf.take_all();
            let length = first.len() as u64;
            let body = http_body_util::Full::new(first)
                .map_err(|e: std::convert::Infallible| match e {})
                .boxed();
            let upload = Upload {
                key,
                content_type,
                length: Some(length),
                condition,
                headers,
                body,
            };
            return self.put_single(upload, length).await;
        }

        let upload_id = self.create_upload(&key, &content_type, &headers).await?;

        let result = self
            .send_parts(&key, &upload_id, condition, body, buf)
            .await;
        if result.is_err()
            && let Err(e) = self.abort_upload(&key, &upload_id).await
        {
            tracing::error!(key = %key, upload_id, error = %e, "could not abort a failed multipart upload; the bucket lifecycle rule will remove it");
        }
        result
    }

    async fn send_parts(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        condition: WriteCondition,
        mut body: Body,
        mut buf: PartBuffer,
    ) -> Result<Stored, ApiError> {
        let mut parts = Vec::new();
        let mut size = 0u64;
        let mut ended = false;
        while !buf.is_empty() {
            let number = parts.len() as i32 + 1;
            if number > MAX_PARTS {
                return Err(ApiError::new(
                    Code::PayloadTooLarge,
                    "the body needs more than S3's 10,000 parts at the configured part size",
                ));
            }
            // The part's room in the budget is given back once S3 has it.
            let (part, room) = buf.take_part();
            size += part.len() as u64;
            let out = self
                .sdk
                .client
                .upload_part()
                .bucket(&*self.bucket)
                .key(key.as_str())
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .body(part_body(part))
                .send()
                .await
                .map_err(translate)?;
            drop(room);
            parts.push((number, out.e_tag.unwrap_or_default()));
            if !ended {
                ended = fill(&mut body, &mut buf).await?;
            }
        }
        let etag = self
            .complete_upload(key, upload_id, parts, condition)
            .await?;
        Ok(Stored { etag, size })
    }
}

/// Reads the body into `buf` until it holds at least a part or the body ends. Returns
/// whether the body ended.
async fn fill(body: &mut Body, buf: &mut PartBuffer) -> Result<bool, ApiError> {
    while !buf.has_part() {
        match body.frame().await {
            None => return Ok(true),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.push(&data).await?;
                }
            }
            Some(Err(e)) => {
                return Err(blame(
                    ApiError::new(Code::BadRequest, "the request body failed").caused_by(e),
                ));
            }
        }
    }
    Ok(false)
}

/// A part's body for the SDK: replayable, so a failed attempt is retried as before, but not
/// "in memory" to the signer, which would otherwise hash every part with SHA-256 to sign it
/// (as much CPU again as the rest of the upload); it goes with `UNSIGNED-PAYLOAD`, as a
/// streamed PutObject does.
fn part_body(part: Bytes) -> ByteStream {
    ByteStream::new(aws_smithy_types::body::SdkBody::retryable(move || {
        aws_smithy_types::body::SdkBody::from_body_1_x(http_body_util::Full::new(part.clone()))
    }))
}
