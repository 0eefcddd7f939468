//! The embedded backend: a real S3 protocol server (`s3s` + `s3s-fs`) inside the process, on
//! 127.0.0.1 and an ephemeral port, with generated credentials. The gateway talks to it
//! through aws-sdk-s3 exactly as it talks to AWS: one code path.
//!
//! `s3s-fs` stores objects as files. `Embedded` wraps it to add the parts of S3's documented
//! behaviour the gateway relies on and `s3s-fs` lacks: conditional GET and HEAD
//! (`If-None-Match`, `If-Modified-Since`, `If-Match`, `If-Unmodified-Since`) and
//! `ListMultipartUploads`, so tests can see that no upload was left unfinished. It also
//! makes writes to one key one at a time (so `If-None-Match: *` is atomic, as on S3), and
//! refuses, before anything is written, keys its files cannot hold (`KeyTooLongError`).

mod conditions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::RngCore;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running embedded S3 server.
#[derive(Debug)]
pub struct EmbeddedServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    task: JoinHandle<()>,
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an S3 server storing under `root` (created if missing) with `bucket` in it, on
/// 127.0.0.1 and a free port.
pub async fn start(root: &Path, bucket: &str) -> std::io::Result<EmbeddedServer> {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    start_with(root, &[bucket], local, DOWNLOAD_FRAME).await
}

/// Starts an S3 server storing under `root` with each of `buckets` in it, on `addr`, sending
/// downloads in pieces of at most `frame` bytes ([`DOWNLOAD_FRAME`]; benchmarks: `4096`
/// sends s3s-fs's reads as they come, as some S3 servers and TLS records do).
pub async fn start_with(
    root: &Path,
    buckets: &[&str],
    addr: SocketAddr,
    frame: usize,
) -> std::io::Result<EmbeddedServer> {
    for bucket in buckets {
        std::fs::create_dir_all(root.join(bucket))?;
    }
    // Only the gateway's user may look inside: s3s-fs writes its files with the umask's
    // modes (often world-readable), so the folder is what keeps other users out.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    let root = root.canonicalize()?;
    let fs = FileSystem::new(&root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let access_key = random_secret(15);
    let secret_key = random_secret(30);

    let mut builder = S3ServiceBuilder::new(Embedded {
        fs,
        root,
        writing: Default::default(),
        frame: frame.max(1),
    });
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        access_key.clone(),
        secret_key.clone(),
    ));
    let service = builder.build();

    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Without TCP_NODELAY small responses wait on Nagle's algorithm (~40ms each).
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(EmbeddedServer {
        endpoint: format!("http://{addr}"),
        addr,
        access_key,
        secret_key,
        task,
    })
}

fn random_secret(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `s3s-fs` plus conditional reads and `ListMultipartUploads`.
#[derive(Debug)]
struct Embedded {
    fs: FileSystem,
    root: PathBuf,
    /// Keys being written now, each with its lock.
    writing: KeyLocks,
    /// The largest piece a download is sent in.
    frame: usize,
}

/// The operations s3s-fs serves as they are; `open` ones first check the upload is open.
macro_rules! delegate {
    ($(open $name:ident: $input:ty => $output:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                req: S3Request<$input>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = S3Result<S3Response<$output>>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    self.upload_open(&req.input.upload_id)?;
                    self.fs.$name(req).await
                })
            }
        )*
    };
    ($($name:ident: $input:ty => $output:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                req: S3Request<$input>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = S3Result<S3Response<$output>>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                self.fs.$name(req)
            }
        )*
    };
}

#[async_trait::async_trait]
impl S3 for Embedded {
    delegate! {
        create_bucket: CreateBucketInput => CreateBucketOutput;
        delete_bucket: DeleteBucketInput => DeleteBucketOutput;
        head_bucket: HeadBucketInput => HeadBucketOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        delete_object: DeleteObjectInput => DeleteObjectOutput;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
        copy_object: CopyObjectInput => CopyObjectOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
    }

    // s3s-fs answers an upload that is not open with `AccessDenied` (parts) or an empty list;
    // S3 answers `NoSuchUpload`, and so does this server.
    delegate! {
        open upload_part: UploadPartInput => UploadPartOutput;
        open upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
        open list_parts: ListPartsInput => ListPartsOutput;
        open abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.not_a_folder(&req.input.bucket, &req.input.key)?;
        let i = &req.input;
        let cond = conditions::Conditions {
            if_match: i.if_match.clone(),
            if_none_match: i.if_none_match.clone(),
            if_modified_since: i.if_modified_since.clone(),
            if_unmodified_since: i.if_unmodified_since.clone(),
        };
        // A suffix range of an empty object resolves to no bytes, where s3s-fs panics (it
        // subtracts past zero); S3 answers 416. Other ranges of an empty object s3s-fs
        // already refuses, so only a suffix range costs the extra look.
        let suffix = matches!(i.range, Some(s3s::dto::Range::Suffix { .. }));
        let (bucket, key) = (i.bucket.clone(), i.key.clone());
        let mut req = req;
        if !cond.is_empty() || suffix {
            let head = self.head_of(&req, bucket, key).await?;
            cond.evaluate(&head)?;
            let size = head.content_length.unwrap_or(0);
            if suffix && size == 0 {
                return Err(s3s::s3_error!(InvalidRange, "the object is empty"));
            }
            // A suffix longer than the object is the whole object (RFC 9110 section 14.1.3),
            // which s3s-fs refuses.
            if let Some(s3s::dto::Range::Suffix { length }) = req.input.range
                && length >= u64::try_from(size).unwrap_or(0)
            {
                req.input.range = Some(s3s::dto::Range::Int {
                    first: 0,
                    last: None,
                });
            }
        }
        let mut resp = self.fs.get_object(req).await?;
        resp.output.body = resp
            .output
            .body
            .take()
            .map(|b| StreamingBlob::new(Coalesce::new(b, self.frame)));
        Ok(resp)
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.storable(&bucket, &key)?;
        let _one_at_a_time = self.lock(&bucket, &key).await;
        // s3s-fs refuses a failed condition before reading the body, and its HTTP server then
        // closes the connection under a client still sending (which sees a broken pipe, not
        // the 412). S3 takes the body, then answers: so does this.
        let mut req = req;
        if self.write_refused(&req, bucket, key).await {
            if let Some(mut body) = req.input.body.take() {
                use futures_util::StreamExt;
                while let Some(Ok(_)) = body.next().await {}
            }
            return Err(s3s::S3Error::new(s3s::S3ErrorCode::PreconditionFailed));
        }
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.storable(&req.input.bucket, &req.input.key)?;
        self.fs.create_multipart_upload(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.upload_open(&req.input.upload_id)?;
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.storable(&bucket, &key)?;
        let _one_at_a_time = self.lock(&bucket, &key).await;
        self.fs.complete_multipart_upload(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.not_a_folder(&req.input.bucket, &req.input.key)?;
        let i = &req.input;
        let cond = conditions::Conditions {
            if_match: i.if_match.clone(),
            if_none_match: i.if_none_match.clone(),
            if_modified_since: i.if_modified_since.clone(),
            if_unmodified_since: i.if_unmodified_since.clone(),
        };
        let resp = self.fs.head_object(req).await?;
        cond.evaluate(&resp.output)?;
        Ok(resp)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let uploads = self
            .pending_uploads(&input.bucket, input.prefix.as_deref().unwrap_or(""))
            .await?;
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}

/// Longest file name the file systems s3s-fs runs on take.
const NAME_MAX: usize = 255;

impl Embedded {
    /// Holds the write lock of one key: a create-only write's look and write are one step.
    async fn lock(&self, bucket: &str, key: &str) -> KeyLock<'_> {
        let id = (bucket.to_owned(), key.to_owned());
        let lock = {
            let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            writing.entry(id.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        KeyLock {
            map: &self.writing,
            id,
            guard: Some(guard),
        }
    }

    /// Refuses, before anything is written, a key s3s-fs's files cannot hold: a path segment
    /// over 255 bytes, a key whose metadata file name (its base64 with the bucket's and an
    /// upload id) would be over 255 bytes, or a key that is a folder of other keys or lies
    /// under a key that is a file. S3 itself stores all of these.
    fn storable(&self, bucket: &str, key: &str) -> S3Result<()> {
        let refuse = |why: &str| {
            Err(s3s::S3Error::with_message(
                s3s::S3ErrorCode::KeyTooLongError,
                format!("the embedded backend cannot store this key: {why}"),
            ))
        };
        if key.split('/').any(|segment| segment.len() > NAME_MAX) {
            return refuse("a path segment is over 255 bytes");
        }
        let b64 = |n: usize| n.div_ceil(3) * 4;
        let upload = ".upload-".len() + 36;
        let name = ".bucket-.object-.metadata.json".len() + b64(bucket.len()) + b64(key.len());
        if name + upload > NAME_MAX {
            return refuse("it is too long for the embedded backend's file names");
        }
        let path = self.root.join(bucket).join(key);
        if path.is_dir() {
            return refuse("other keys lie under it, as under a folder");
        }
        let mut parent = path.parent();
        let top = self.root.join(bucket);
        while let Some(p) = parent.filter(|p| *p != top) {
            if p.is_file() {
                return refuse("a key that is a prefix of it is a file");
            }
            parent = p.parent();
        }
        Ok(())
    }

    /// Does a write's `If-None-Match: *` or `If-Match` fail on the key as it is now?
    async fn write_refused(
        &self,
        req: &S3Request<PutObjectInput>,
        bucket: String,
        key: String,
    ) -> bool {
        let (if_none_match, if_match) = (&req.input.if_none_match, &req.input.if_match);
        if if_none_match.is_none() && if_match.is_none() {
            return false;
        }
        let current = self.head_of(req, bucket, key).await.ok();
        if if_none_match.as_ref().is_some_and(|c| c.is_any()) && current.is_some() {
            return true;
        }
        match (if_match, &current) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(ETagCondition::Any), Some(_)) => false,
            (Some(ETagCondition::ETag(want)), Some(head)) => !head
                .e_tag
                .as_ref()
                .is_some_and(|have| want.strong_cmp(have)),
        }
    }

    /// A key that is a folder on disk (other keys lie under it) is not an object.
    fn not_a_folder(&self, bucket: &str, key: &str) -> S3Result<()> {
        if self.root.join(bucket).join(key).is_dir() {
            return Err(s3s::S3Error::new(s3s::S3ErrorCode::NoSuchKey));
        }
        Ok(())
    }

    async fn head_of<T>(
        &self,
        req: &S3Request<T>,
        bucket: String,
        key: String,
    ) -> S3Result<HeadObjectOutput> {
        let head = S3Request {
            input: HeadObjectInput {
                bucket,
                key,
                ..Default::default()
            },
            method: req.method.clone(),
            uri: req.uri.clone(),
            headers: req.headers.clone(),
            extensions: Default::default(),
            credentials: req.credentials.clone(),
            region: req.region.clone(),
            service: req.service.clone(),
            trailing_headers: None,
        };
        Ok(self.fs.head_object(head).await?.output)
    }

    /// `NoSuchUpload` unless `.upload-{id}.json` marks the upload as open.
    fn upload_open(&self, upload_id: &str) -> S3Result<()> {
        let well_formed = upload_id.len() == 36
            && upload_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-');
        if well_formed && self.root.join(format!(".upload-{upload_id}.json")).exists() {
            Ok(())
        } else {
            Err(s3_error!(NoSuchUpload))
        }
    }

    /// Unfinished uploads, read from s3s-fs's files: `.upload-{id}.json` marks an upload as
    /// open, and its metadata file names the bucket and key.
    async fn pending_uploads(&self, bucket: &str, prefix: &str) -> S3Result<Vec<MultipartUpload>> {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let want = format!(".bucket-{}.object-", b64(bucket));
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| s3_error!(e, InternalError))?;
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| s3_error!(e, InternalError))?
        {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name
                .strip_prefix(&want)
                .and_then(|r| r.strip_suffix(".metadata.json"))
            else {
                continue;
            };
            let Some((key_b64, upload_id)) = rest.split_once(".upload-") else {
                continue;
            };
            let Ok(key) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key_b64) else {
                continue;
            };
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            if !key.starts_with(prefix)
                || !self.root.join(format!(".upload-{upload_id}.json")).exists()
            {
                continue;
            }
            let initiated = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .map(Timestamp::from);
            out.push(MultipartUpload {
                key: Some(key),
                upload_id: Some(upload_id.to_owned()),
                initiated,
                ..Default::default()
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// The write locks of the keys being written, by bucket and key.
type KeyLocks = std::sync::Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// The write lock of one key; the map forgets the key once nobody holds or waits for it.
struct KeyLock<'a> {
    map: &'a KeyLocks,
    id: (String, String),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.id);
        }
    }
}

/// s3s-fs reads a file 4 KiB at a time, each read a trip through tokio's blocking pool, and
/// sends each piece as it comes: with TCP_NODELAY, a 4 KiB segment each, and a wake-up for
/// every one of them at the reader. This gathers pieces into chunks of up to
/// [`DOWNLOAD_FRAME`] (or the server's `frame`) before sending them (bounded memory per download, fewer segments).
struct Coalesce {
    inner: StreamingBlob,
    buf: bytes::BytesMut,
    /// Send once this many bytes are gathered.
    frame: usize,
    done: bool,
}

/// The largest piece a download is sent in, unless asked otherwise.
pub const DOWNLOAD_FRAME: usize = 128 * 1024;

impl Coalesce {
    fn new(inner: StreamingBlob, frame: usize) -> Self {
        Self {
            inner,
            buf: bytes::BytesMut::new(),
            frame,
            done: false,
        }
    }
}

impl futures_util::Stream for Coalesce {
    type Item = Result<bytes::Bytes, s3s::StdError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.buf.is_empty() && bytes.len() >= this.frame {
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    this.buf.extend_from_slice(&bytes);
                    if this.buf.len() >= this.frame {
                        return Poll::Ready(Some(Ok(this.buf.split().freeze())));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(this.buf.split().freeze())));
                }
                // The inner stream wakes us when its next piece is read.
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl s3s::stream::ByteStream for Coalesce {}
