//! The relay: the only module that speaks to S3, and the one place where a backend failure
//! becomes an [`ApiError`].
//!
//! GET and HEAD of objects and single-request uploads take a lighter path when they can:
//! signed by the gateway and sent on a plain hyper client (`light.rs`), with the SDK's
//! endpoint, credentials, timeouts, retries and error mapping, for a fraction of the SDK's CPU
//! per call.
//!
//! Uploads stream: a body of known length (up to S3's 5 GiB single-request limit) goes as one
//! `PutObject`; any other body goes as a multipart upload, one `part_size` buffer at a time,
//! completed only at the end and aborted on any failure. A body that turns out to fit in one
//! part is sent as a plain `PutObject` instead. Downloads hand S3's body straight to hyper, so
//! backpressure reaches S3.

mod buffers;
mod client;
mod door;
mod errors;
mod gather;
mod light;
mod multipart;
mod pool;
mod posture;
mod sigv4;
mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use http_body_util::BodyExt;

pub use client::{BackendSettings, connect};
pub use door::{ListPage, ListQuery, Part, Replace, Unfinished, UploadsPage};
pub use errors::translate;
pub use posture::{Answer, Posture};
pub use sigv4::{EMPTY_PAYLOAD, Signer, UNSIGNED_PAYLOAD, reference_sign};
use watch::UploadWatch;

use crate::config::Sse;
use crate::error::{ApiError, Code};
use crate::limits::BodyFailure;
use crate::policy::ObjectKey;
use crate::{Body, BoxError};

/// S3's largest single `PutObject`.
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;
/// S3's most parts in one multipart upload.
pub const MAX_PARTS: i32 = 10_000;

/// A handle on one bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The name clients, logs and metrics see.
    name: Arc<str>,
    /// The SDK clients of the bucket's endpoint and region, shared with the buckets on it.
    sdk: Arc<SdkClients>,
    bucket: Arc<str>,
    sse: Option<Sse>,
    kms_key_id: Option<String>,
    part_size: usize,
    /// The memory every upload's part buffer draws on.
    buffers: Arc<buffers::PartBuffers>,
    /// How long S3 may hold upload data without taking it, or leave an uploaded body
    /// unanswered, before the upload fails (`504`): twice `server.body_idle_timeout`.
    stall_grace: Duration,
    /// The light signed path for GET, HEAD and PutObject, when `backend.light_path` is on and the
    /// endpoint allows it.
    light: Option<Arc<light::Relay>>,
}

/// The aws-sdk-s3 clients of one endpoint and region.
#[derive(Debug)]
struct SdkClients {
    /// For calls with a streamed request body (PutObject): only the connect timeout.
    client: Client,
    /// The same client with an attempt timeout (`backend.first_byte_timeout`), for every call
    /// without a streamed request body. A second client rather than a per-call config
    /// override, which the SDK rebuilds on every request.
    bounded: Client,
}

/// The buckets behind the gateway, in config order (the first is the default one). Cheap to
/// clone; fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct Buckets(Arc<[Backend]>);

impl Buckets {
    /// At least one bucket (validation makes sure).
    pub fn new(buckets: Vec<Backend>) -> Self {
        assert!(!buckets.is_empty(), "a gateway has at least one bucket");
        Self(buckets.into())
    }

    /// The bucket clients call `name`.
    pub fn get(&self, name: &str) -> Option<&Backend> {
        self.0.iter().find(|b| &*b.name == name)
    }

    /// The first bucket: the default of principals and JWTs.
    pub fn first(&self) -> &Backend {
        &self.0[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.0.iter()
    }

    /// The names, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|b| b.name()).collect()
    }
}

/// What a read answers with: the object (GET), or its headers alone (HEAD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Body,
    Head,
}

/// A condition on a write, evaluated by S3 (the gateway never looks before it writes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    None,
    /// `If-None-Match: *`: create only.
    IfNoneMatchAny,
    /// `If-Match: <etag>`: replace only that version.
    IfMatch(String),
}

impl WriteCondition {
    /// `(If-None-Match, If-Match)` as S3 takes them.
    fn headers(self) -> (Option<String>, Option<String>) {
        match self {
            WriteCondition::None => (None, None),
            WriteCondition::IfNoneMatchAny => (Some("*".into()), None),
            WriteCondition::IfMatch(etag) => (None, Some(etag)),
        }
    }
}

/// Conditions on a read (or on a copy's source), evaluated by S3.
#[derive(Clone, Debug, Default)]
pub struct ReadConditions {
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<SystemTime>,
    pub if_match: Option<String>,
    pub if_unmodified_since: Option<SystemTime>,
}

/// An upload on its way to the relay.
pub struct Upload {
    pub key: ObjectKey,
    pub content_type: String,
    /// `Content-Length`, when the client sent one.
    pub length: Option<u64>,
    pub condition: WriteCondition,
    /// Stored with the object besides its type (the door forwards these).
    pub headers: ObjectHeaders,
    /// Already wrapped in the streaming limits; its errors say why it failed.
    pub body: Body,
}

/// What an object stores besides its type and bytes, as S3 takes and answers it: the
/// `Cache-Control`, `Content-Disposition`, `Content-Encoding`, `Content-Language` and
/// `Expires` headers and the user metadata (`x-amz-meta-*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHeaders {
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    /// `Expires`, as the client sent it (an HTTP date).
    pub expires: Option<String>,
    /// `x-amz-meta-*`, by the name after the prefix.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl ObjectHeaders {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Boxed, or `None` when empty.
    pub fn boxed(self) -> Option<Box<Self>> {
        (!self.is_empty()).then(|| Box::new(self))
    }

    /// From S3's answer (or a client's request): the headers this type names.
    pub fn from_headers(h: &http::HeaderMap) -> Self {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut metadata = std::collections::BTreeMap::new();
        for (name, value) in h {
            if let Some(key) = name.as_str().strip_prefix("x-amz-meta-")
                && let Ok(value) = value.to_str()
            {
                metadata.insert(key.to_owned(), value.to_owned());
            }
        }
        Self {
            cache_control: text("cache-control"),
            content_disposition: text("content-disposition"),
            content_encoding: text("content-encoding"),
            content_language: text("content-language"),
            expires: text("expires"),
            metadata,
        }
    }

    /// `Expires` as the SDK takes it (an unparseable date is left out, as S3 would ignore it).
    fn expires_time(&self) -> Option<aws_smithy_types::DateTime> {
        let t = httpdate::parse_http_date(self.expires.as_deref()?).ok()?;
        Some(aws_smithy_types::DateTime::from(t))
    }

    fn metadata_map(&self) -> Option<std::collections::HashMap<String, String>> {
        (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }
}

/// What S3 stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub etag: String,
    pub size: u64,
}

/// What S3 says about an object.
#[derive(Clone, Debug, Default)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// What the object stores besides its type; `None` when nothing (most objects, and no
    /// allocation for them).
    pub headers: Option<Box<ObjectHeaders>>,
}

/// The answer to a GET or HEAD.
pub enum Fetched {
    Object {
        meta: ObjectMeta,
        /// `Content-Range` of a `206`.
        content_range: Option<String>,
        /// `None` for HEAD.
        body: Option<Body>,
    },
    NotModified {
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// One object in a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// A page of a listing.
#[derive(Clone, Debug)]
pub struct Listing {
    pub objects: Vec<Listed>,
    /// The last key of this page when there are more.
    pub last_key: Option<String>,
}

/// What S3 says of an object, from the SDK's GetObject or HeadObject output (two types with
/// the same fields).
macro_rules! sdk_meta {
    ($out:ident) => {
        ObjectMeta {
            size: $out.content_length.unwrap_or(0).max(0) as u64,
            etag: $out.e_tag,
            content_type: $out.content_type,
            last_modified: $out
                .last_modified
                .and_then(|d| SystemTime::try_from(d).ok()),
            headers: ObjectHeaders {
                cache_control: $out.cache_control,
                content_disposition: $out.content_disposition,
                content_encoding: $out.content_encoding,
                content_language: $out.content_language,
                expires: $out.expires_string,
                metadata: $out.metadata.unwrap_or_default().into_iter().collect(),
            }
            .boxed(),
        }
    };
}

impl Backend {
    /// `backend.sse` and its KMS key, as every write sends them.
    fn encryption(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match self.sse {
            None => (None, None),
            Some(Sse::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(Sse::AwsKms) => (Some(ServerSideEncryption::AwsKms), self.kms_key_id.clone()),
        }
    }

    /// The S3 bucket's name (for the operator's log and the audit; never sent to clients).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The name clients, the access log and metrics see.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying client, for start-up checks and tests of the backend itself.
    pub fn client(&self) -> &Client {
        &self.sdk.client
    }

    /// Do the two buckets share their S3 clients (same endpoint, region and addressing)?
    pub fn shares_clients_with(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.sdk, &other.sdk)
            && match (&self.light, &other.light) {
                (Some(a), Some(b)) => a.shares_pool_with(b),
                (None, None) => true,
                _ => false,
            }
    }

    /// Do GET, HEAD and single PutObject uploads take the light signed path?
    pub fn light_path(&self) -> bool {
        self.light.is_some()
    }

    /// Is the bucket reachable with our credentials?
    pub async fn ping(&self) -> Result<(), ApiError> {
        self.sdk
            .bounded
            .head_bucket()
            .bucket(&*self.bucket)
            .send()
            .await
            .map_err(translate)?;
        Ok(())
    }

    /// Refuses, before the body is read, a declared length that could never be stored: more
    /// than S3's 10,000 parts at the configured part size.
    pub fn admits(&self, length: u64) -> Result<(), ApiError> {
        if length > MAX_SINGLE_PUT && length > self.part_size as u64 * MAX_PARTS as u64 {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                "the body needs more than S3's 10,000 parts at the configured part size",
            ));
        }
        Ok(())
    }

    /// Stores an upload, streaming.
    pub async fn put(&self, upload: Upload) -> Result<Stored, ApiError> {
        match upload.length {
            Some(length) if length <= MAX_SINGLE_PUT => self.put_single(upload, length).await,
            _ => {
                // Run the multipart upload in its own task: if the client goes away and hyper
                // drops this future, the task still sees the body fail and aborts the upload,
                // so no unfinished multipart upload is left behind.
                let this = self.clone();
                tokio::spawn(async move { this.put_multipart(upload).await })
                    .await
                    .map_err(|e| ApiError::internal(format!("upload task failed: {e}")))?
            }
        }
    }

    async fn put_single(&self, upload: Upload, length: u64) -> Result<Stored, ApiError> {
        let Upload {
            key,
            content_type,
            condition,
            headers,
            body,
            ..
        } = upload;
        let (if_none_match, if_match) = condition.headers();
        let (sse, kms_key_id) = self.encryption();
        // The light path signs a few fixed headers; an upload with more takes the SDK's.
        if let Some(light) = self.light.as_ref().filter(|_| headers.is_empty()) {
            let put = light::PutHeaders {
                content_type: &content_type,
                length,
                if_none_match: if_none_match.as_deref(),
                if_match: if_match.as_deref(),
                sse: sse.as_ref().map(ServerSideEncryption::as_str),
                kms_key_id: kms_key_id.as_deref(),
            };
            let etag = light.put(&key, put, body).await.map_err(blame)?;
            return Ok(Stored { etag, size: length });
        }
        let request = self
            .sdk
            .client
            .put_object()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .content_length(length as i64)
            .set_if_none_match(if_none_match)
            .set_if_match(if_match)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key_id)
            .set_cache_control(headers.cache_control.clone())
            .set_content_disposition(headers.content_disposition.clone())
            .set_content_encoding(headers.content_encoding.clone())
            .set_content_language(headers.content_language.clone())
            .set_expires(headers.expires_time())
            .set_metadata(headers.metadata_map());
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
        Ok(Stored {
            etag: out.e_tag.unwrap_or_default(),
            size: length,
        })
    }

    /// Aborts the unfinished multipart uploads initiated more than `age` ago: what a killed
    /// process leaves behind (a running gateway aborts every upload it gives up on). Returns
    /// how many were aborted.
    pub async fn sweep_abandoned_uploads(&self, age: Duration) -> Result<usize, ApiError> {
        let cutoff = SystemTime::now() - age;
        let mut aborted = 0;
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .sdk
                .bounded
                .list_multipart_uploads()
                .bucket(&*self.bucket)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(translate)?;
            for upload in page.uploads() {
                let initiated = upload
                    .initiated()
                    .and_then(|d| SystemTime::try_from(*d).ok());
                let (Some(key), Some(id), Some(initiated)) =
                    (upload.key(), upload.upload_id(), initiated)
                else {
                    continue;
                };
                if initiated > cutoff {
                    continue;
                }
                // A client still sending parts (the S3 door's uploads are driven part by
                // part, for as long as the client likes) keeps its upload alive.
                if self
                    .last_part_at(key, id)
                    .await?
                    .is_some_and(|at| at > cutoff)
                {
                    continue;
                }
                self.sdk
                    .bounded
                    .abort_multipart_upload()
                    .bucket(&*self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(translate)?;
                tracing::info!(key, upload_id = id, "aborted an abandoned multipart upload");
                aborted += 1;
            }
            if page.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(aborted);
            }
        }
    }

    /// When the newest part of an upload was stored.
    async fn last_part_at(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<SystemTime>, ApiError> {
        let parts = self.parts_of(key, upload_id).await?;
        Ok(parts.iter().filter_map(|p| p.last_modified).max())
    }

    /// GET ([`Read::Body`]) or HEAD ([`Read::Head`]).
    pub async fn fetch(
        &self,
        key: &ObjectKey,
        range: Option<&str>,
        cond: &ReadConditions,
        read: Read,
    ) -> Result<Fetched, ApiError> {
        if let Some(light) = &self.light {
            return light.fetch(key, range, cond, read).await;
        }
        // The SDK's futures are boxed (here and in `put_single`): inline, they would make
        // this future several KiB larger for the light path's requests too.
        if read == Read::Body {
            let out = self
                .sdk
                .bounded
                .get_object()
                .bucket(&*self.bucket)
                .key(key.as_str())
                .set_range(range.map(str::to_owned))
                .set_if_none_match(cond.if_none_match.clone())
                .set_if_modified_since(cond.if_modified_since.map(Into::into))
                .set_if_match(cond.if_match.clone())
                .set_if_unmodified_since(cond.if_unmodified_since.map(Into::into))
                .send();
            let out = Box::pin(out).await;
            let out = match out {
                Ok(out) => out,
                Err(e) => return not_modified(&e).ok_or_else(|| translate(e)),
            };
            let meta = sdk_meta!(out);
            let body = out.body.into_inner().map_err(sdk_body_error).boxed();
            Ok(Fetched::Object {
                meta,
                content_range: out.content_range,
                body: Some(body),
            })
        } else {
            let out = self
                .sdk
                .bounded
                .head_object()
                .bucket(&*self.bucket)
                .key(key.as_str())
                .set_range(range.map(str::to_owned))
                .set_if_none_match(cond.if_none_match.clone())
                .set_if_modified_since(cond.if_modified_since.map(Into::into))
                .set_if_match(cond.if_match.clone())
                .set_if_unmodified_since(cond.if_unmodified_since.map(Into::into))
                .send();
            let out = Box::pin(out).await;
            let out = match out {
                Ok(out) => out,
                Err(e) => return not_modified(&e).ok_or_else(|| translate(e)),
            };
            let meta = sdk_meta!(out);
            Ok(Fetched::Object {
                meta,
                content_range: out.content_range,
                body: None,
            })
        }
    }

    /// Deletes an object. Deleting a key that does not exist succeeds, as on S3.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), ApiError> {
        match self
            .sdk
            .bounded
            .delete_object()
            .bucket(&*self.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match translate(e) {
                err if err.code == Code::NotFound => Ok(()),
                err => Err(err),
            },
        }
    }

    /// One page of keys under `prefix`, after `start_after`.
    pub async fn list(
        &self,
        prefix: &str,
        limit: i32,
        start_after: Option<String>,
    ) -> Result<Listing, ApiError> {
        let query = ListQuery {
            prefix: prefix.to_owned(),
            max_keys: limit,
            start_after,
            ..Default::default()
        };
        let page = self.list_page(&query).await?;
        let last_key = if page.truncated {
            page.objects.last().map(|o| o.key.clone())
        } else {
            None
        };
        Ok(Listing {
            objects: page.objects,
            last_key,
        })
    }
}

/// A failed call whose request body failed first is the body's fault (too large, stalled,
/// wrong digest, cut off), not the backend's.
///
/// The body's failure is found by walking the error's source chain: the light path's
/// transport error, hyper's and the SDK's dispatch errors all keep the body's error as
/// their cause.
fn blame(err: ApiError) -> ApiError {
    match err.find_cause::<BodyFailure>().copied() {
        Some(failure) => ApiError::from(failure).detail(&err).caused_by(err),
        None => err,
    }
}

/// S3 answers a failed `If-None-Match`/`If-Modified-Since` with 304, which the SDK reports as
/// an error; it is a successful answer.
fn not_modified<E>(
    err: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> Option<Fetched> {
    let raw = err.raw_response()?;
    if raw.status().as_u16() != 304 {
        return None;
    }
    let header = |name: &str| raw.headers().get(name).map(str::to_owned);
    Some(Fetched::NotModified {
        etag: header("etag"),
        last_modified: header("last-modified"),
    })
}

fn sdk_body_error(e: aws_smithy_types::body::Error) -> BoxError {
    e
}
