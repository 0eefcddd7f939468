//! The light signed path: GET and HEAD of an object, and an upload stored with one
//! PutObject, go out on a plain hyper client, signed by [`super::sigv4`], instead of through the
//! aws-sdk-s3 orchestrator, whose per-call work costs as much CPU as the rest of a small
//! request put together (`cargo bench --bench sdk_overhead`; figures in
//! `docs/performance.md`).
//!
//! It behaves as the SDK path does, and the tests hold it to that (`tests/it/relay.rs` compares
//! the two): the endpoint is resolved once by the SDK's own endpoint rules, credentials come
//! from the same provider (cached until shortly before they expire), and the attempt timeout,
//! the retries (the SDK's standard mode: 3 attempts, exponential backoff with jitter, the same
//! transient statuses and error codes, a retry quota; an upload's body cannot be replayed, so
//! it is tried once, as the SDK does with a streamed body), the stalled-stream protection and
//! the error mapping ([`super::errors::classify`]) are the SDK's. `backend.light_path = false`
//! turns it off.
//! It is used only where it applies unchanged: an endpoint signed with plain SigV4 and no
//! extra endpoint headers; anything else (S3 Express, multi-region access points) stays on
//! the SDK.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::errors::{classify, describe_answer};
use super::pool::{Driven, Pool};
use super::sigv4::{EMPTY_PAYLOAD, Signer, UNSIGNED_PAYLOAD};
use super::watch::UploadWatch;
use super::{Fetched, ObjectMeta, Read, ReadConditions};
use crate::error::{ApiError, Code};
use crate::policy::ObjectKey;
use crate::{Body, BoxError};

mod credentials;
mod endpoint;
mod retry;

use credentials::Credentials;
use endpoint::{Target, platform_roots};
use retry::*;

/// The most a connection to S3 reads ahead. hyper's default (about 400 KiB) lets each of many
/// concurrent downloads grow a buffer that large; 64 KiB saved a little more memory but cost
/// more CPU, a read per half of the embedded backend's 128 KiB chunks (peak RSS figures:
/// `docs/performance.md`).
const MAX_READ_BUF: usize = 128 * 1024;
/// How long a connection to S3 is kept open unused (hyper-util's pool used 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most of an error answer read for its code and message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How the SDK encodes an object key in the path: everything but unreserved characters and
/// `/` (a "greedy" label).
const KEY_ENCODING: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// What the light path needs from the backend's setup.
pub(super) struct Setup<'a> {
    pub(super) bucket: &'a str,
    pub(super) region: &'a str,
    pub(super) endpoint: Option<&'a str>,
    pub(super) force_path_style: bool,
    pub(super) use_fips: bool,
    pub(super) use_dual_stack: bool,
    pub(super) credentials: SharedCredentialsProvider,
    pub(super) connect_timeout: Duration,
    pub(super) first_byte_timeout: Duration,
    /// A download that sends nothing for this long while it is read fails.
    pub(super) stall_grace: Duration,
    /// `backend.download_gather` in bytes.
    pub(super) download_gather: usize,
}

/// The connection pools of the light path, one per endpoint, while the buckets are set up.
#[derive(Default)]
pub(super) struct Pools(std::collections::HashMap<String, Arc<Pool>>);

/// Signs and sends GET and HEAD of objects, and single-request uploads.
pub(super) struct Relay {
    pool: Arc<Pool>,
    /// Scheme, authority and path up to the key, e.g. `http://127.0.0.1:9000/bucket/`.
    base: String,
    host: HeaderValue,
    signer: Signer,
    credentials: Credentials,
    first_byte_timeout: Duration,
    stall_grace: Duration,
    retry_quota: AtomicI64,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("base", &self.base).finish()
    }
}

impl Relay {
    /// Resolves the bucket's endpoint with the SDK's rules. `Err` says why the light path
    /// does not apply (the SDK path is used instead).
    ///
    /// Buckets behind the same endpoint share its connection pool through `pools` (keyed by
    /// scheme and authority).
    pub(super) async fn new(setup: Setup<'_>, pools: &mut Pools) -> Result<Relay, String> {
        let target = Target::resolve(&setup).await?;
        let endpoint = http::Uri::try_from(target.base.as_str()).map_err(|e| e.to_string())?;
        let endpoint = http::Uri::builder()
            .scheme(endpoint.scheme_str().unwrap_or("https"))
            .authority(endpoint.authority().map_or("", |a| a.as_str()))
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let pool = match pools.0.get(&endpoint.to_string()) {
            Some(pool) => pool.clone(),
            None => {
                let pool = Self::pool(&setup, target.https, endpoint.clone())?;
                pools.0.insert(endpoint.to_string(), pool.clone());
                pool
            }
        };
        Ok(Relay {
            pool,
            base: target.base,
            host: target.host,
            signer: Signer::new(target.signing_region, target.signing_name),
            credentials: Credentials::new(setup.credentials),
            first_byte_timeout: setup.first_byte_timeout,
            stall_grace: setup.stall_grace,
            retry_quota: AtomicI64::new(RETRY_QUOTA),
        })
    }

    /// Does this relay send on the same connections as `other`?
    pub(super) fn shares_pool_with(&self, other: &Relay) -> bool {
        Arc::ptr_eq(&self.pool, &other.pool)
    }

    /// A connection pool to `endpoint`.
    fn pool(setup: &Setup<'_>, https: bool, endpoint: http::Uri) -> Result<Arc<Pool>, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(setup.connect_timeout));
        http.enforce_http(false);
        // A plain HTTP endpoint needs no certificates: the connector never uses TLS.
        let roots = if https {
            platform_roots()?
        } else {
            rustls::RootCertStore::empty()
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        Ok(Pool::new(
            connector,
            endpoint,
            MAX_READ_BUF,
            IDLE_TIMEOUT,
            setup.download_gather,
        ))
    }

    /// GET (with `body`) or HEAD (without), as [`super::Backend::fetch`].
    pub(super) async fn fetch(
        &self,
        key: &ObjectKey,
        range: Option<&str>,
        cond: &ReadConditions,
        read: Read,
    ) -> Result<Fetched, ApiError> {
        let uri = self.object_uri(key);
        let method = match read {
            Read::Body => Method::GET,
            Read::Head => Method::HEAD,
        };
        let mut attempt = 1;
        let mut retried = false;
        loop {
            let failure = match self.attempt(&method, &uri, range, cond).await {
                Ok(resp) => {
                    self.succeeded(retried);
                    return self.answer(resp, read);
                }
                Err(failure) => failure,
            };
            let cost = match failure.retry {
                Retry::No => return Err(failure.error),
                Retry::Transient => RETRY_COST,
                Retry::Timeout => TIMEOUT_RETRY_COST,
            };
            if attempt >= MAX_ATTEMPTS || !self.take_retry(cost) {
                return Err(failure.error);
            }
            tracing::debug!(attempt, error = %failure.error, "retrying a backend read");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            retried = true;
        }
    }

    /// PutObject of a body of known length, streamed. Tried once, as the SDK does with a
    /// streamed body (it cannot be sent again). Returns S3's ETag.
    pub(super) async fn put(
        &self,
        key: &ObjectKey,
        put: PutHeaders<'_>,
        body: Body,
    ) -> Result<String, ApiError> {
        let identity = self
            .credentials
            .get()
            .await
            .map_err(|e| no_credentials(&*e))?;
        let (body, watch) = UploadWatch::new(body);
        let mut req = Request::builder()
            .method(Method::PUT)
            .uri(self.object_uri(key))
            .body(body)
            .map_err(|e| ApiError::internal("could not build the backend request").detail(e))?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(put.length));
        let optional = [
            (header::CONTENT_TYPE, Some(put.content_type)),
            (header::IF_NONE_MATCH, put.if_none_match),
            (header::IF_MATCH, put.if_match),
            (
                header::HeaderName::from_static("x-amz-server-side-encryption"),
                put.sse,
            ),
            (
                header::HeaderName::from_static("x-amz-server-side-encryption-aws-kms-key-id"),
                put.kms_key_id,
            ),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                let value = HeaderValue::from_str(value).map_err(|e| {
                    ApiError::internal("could not build the backend request").detail(e)
                })?;
                h.insert(name, value);
            }
        }
        self.signer
            .sign(&mut req, &identity, UNSIGNED_PAYLOAD, SystemTime::now())
            .map_err(|e| ApiError::internal("could not sign the backend request").detail(e))?;

        let sending = async {
            self.pool
                .send(req)
                .await
                // The failure keeps its cause: an upload cut by its own body (too large,
                // stalled, wrong digest) is found in this chain and blamed on the client.
                .map_err(|e| transport_failure(&e).error.caused_by(e))
        };
        let resp = watch.bound(sending, self.stall_grace).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.refusal(resp).await.error);
        }
        let etag = header_text(resp.headers(), header::ETAG).unwrap_or_default();
        if !resp.body().is_end_stream() {
            // S3 sends no body here; a server that does is read to the end so that the
            // connection can be used again.
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY).collect();
            let _ = tokio::time::timeout(self.first_byte_timeout, body).await;
        }
        Ok(etag)
    }

    /// The object's URL: the SDK's encoding of the key after the bucket's base.
    fn object_uri(&self, key: &ObjectKey) -> String {
        format!(
            "{}{}",
            self.base,
            utf8_percent_encode(key.as_str(), KEY_ENCODING)
        )
    }

    /// One signed request, up to S3's answer. A response that is not the object or a 304 is
    /// read for its error code and returned as a failure.
    async fn attempt(
        &self,
        method: &Method,
        uri: &str,
        range: Option<&str>,
        cond: &ReadConditions,
    ) -> Result<Response<Driven>, Failure> {
        let identity = self.credentials.get().await.map_err(|e| Failure {
            error: no_credentials(&*e),
            retry: Retry::No,
        })?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| Failure {
                error: ApiError::internal("could not build the backend request").detail(e),
                retry: Retry::No,
            })?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        let text = |s: &str| HeaderValue::from_str(s);
        let conditions = [
            (header::RANGE, range.map(text)),
            (
                header::IF_NONE_MATCH,
                cond.if_none_match.as_deref().map(text),
            ),
            (header::IF_MATCH, cond.if_match.as_deref().map(text)),
            (
                header::IF_MODIFIED_SINCE,
                cond.if_modified_since
                    .map(|t| text(&httpdate::fmt_http_date(t))),
            ),
            (
                header::IF_UNMODIFIED_SINCE,
                cond.if_unmodified_since
                    .map(|t| text(&httpdate::fmt_http_date(t))),
            ),
        ];
        for (name, value) in conditions {
            if let Some(value) = value {
                let value = value.map_err(|e| Failure {
                    error: ApiError::internal("could not build the backend request").detail(e),
                    retry: Retry::No,
                })?;
                h.insert(name, value);
            }
        }
        self.signer
            .sign(&mut req, &identity, EMPTY_PAYLOAD, SystemTime::now())
            .map_err(|e| Failure {
                error: ApiError::internal("could not sign the backend request").detail(e),
                retry: Retry::No,
            })?;

        let resp = match tokio::time::timeout(self.first_byte_timeout, self.pool.send(req)).await {
            Err(_) => {
                return Err(Failure {
                    error: ApiError::new(
                        Code::BackendTimeout,
                        "the backend did not answer in time",
                    )
                    .detail(format!(
                        "no answer within first_byte_timeout ({:?})",
                        self.first_byte_timeout
                    )),
                    retry: Retry::Timeout,
                });
            }
            Ok(Err(e)) => return Err(transport_failure(&e)),
            Ok(Ok(resp)) => resp,
        };
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED => Ok(resp),
            _ => Err(self.refusal(resp).await),
        }
    }

    /// S3's refusal, read (bounded, within the attempt timeout) for its code and message.
    async fn refusal(&self, resp: Response<Driven>) -> Failure {
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let (request_id, id_2) = (header("x-amz-request-id"), header("x-amz-id-2"));
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY).collect();
        let body = match tokio::time::timeout(self.first_byte_timeout, body).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        let text = String::from_utf8_lossy(&body);
        // A HEAD answer has no body: the status alone decides, as in the SDK ("NotFound").
        let code = xml_text(&text, "Code").unwrap_or(if status == 404 { "NotFound" } else { "" });
        let message = xml_text(&text, "Message").unwrap_or("-");
        let retry = if TRANSIENT_STATUSES.contains(&status)
            || TRANSIENT_CODES.contains(&code)
            || THROTTLING_CODES.contains(&code)
        {
            Retry::Transient
        } else {
            Retry::No
        };
        let code_text = if code.is_empty() { "-" } else { code };
        Failure {
            error: classify(status, code).detail(describe_answer(
                status,
                code_text,
                message,
                &request_id,
                &id_2,
            )),
            retry,
        }
    }

    /// The object (or a 304) from S3's answer.
    fn answer(&self, resp: Response<Driven>, read: Read) -> Result<Fetched, ApiError> {
        let (parts, body) = resp.into_parts();
        let h = &parts.headers;
        if parts.status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified {
                etag: header_text(h, header::ETAG),
                last_modified: header_text(h, header::LAST_MODIFIED),
            });
        }
        let meta = ObjectMeta {
            size: header_text(h, header::CONTENT_LENGTH)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            etag: header_text(h, header::ETAG),
            content_type: header_text(h, header::CONTENT_TYPE),
            last_modified: header_text(h, header::LAST_MODIFIED)
                .and_then(|v| httpdate::parse_http_date(&v).ok()),
            headers: crate::relay::ObjectHeaders::from_headers(h).boxed(),
        };
        let body = (read == Read::Body).then(|| StallGuard::new(body, self.stall_grace).boxed());
        Ok(Fetched::Object {
            meta,
            content_range: header_text(h, header::CONTENT_RANGE),
            body,
        })
    }

    fn take_retry(&self, cost: i64) -> bool {
        self.retry_quota
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q >= cost).then_some(q - cost)
            })
            .is_ok()
    }

    /// A success refills the quota: by the cost of a retry when it took one, else by one.
    fn succeeded(&self, retried: bool) {
        let refund = if retried { RETRY_COST } else { 1 };
        let _ = self
            .retry_quota
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q < RETRY_QUOTA).then(|| (q + refund).min(RETRY_QUOTA))
            });
    }
}

/// What an upload sends besides its key and body.
pub(super) struct PutHeaders<'a> {
    pub(super) content_type: &'a str,
    pub(super) length: u64,
    pub(super) if_none_match: Option<&'a str>,
    pub(super) if_match: Option<&'a str>,
    /// `x-amz-server-side-encryption` and the KMS key, when the bucket's objects are encrypted.
    pub(super) sse: Option<&'a str>,
    pub(super) kms_key_id: Option<&'a str>,
}

fn no_credentials(e: &(dyn std::error::Error + 'static)) -> ApiError {
    ApiError::new(Code::BackendError, "the backend failed")
        .detail(format!("no backend credentials: {e}"))
}

fn header_text(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_owned)
}

/// The text of the first `<tag>` in an S3 error document.
fn xml_text<'a>(doc: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let len = doc[start..].find(&format!("</{tag}>"))?;
    Some(&doc[start..start + len])
}

/// A download body that fails when S3 sends nothing for `grace` while it is being read (the
/// SDK's stalled-stream protection). Time the reader spends not asking (backpressure) does
/// not count: the clock starts when a read finds nothing ready.
struct StallGuard {
    inner: Driven,
    grace: Duration,
    stalled_at: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallGuard {
    fn new(inner: Driven, grace: Duration) -> Self {
        StallGuard {
            inner,
            grace,
            stalled_at: None,
        }
    }
}

impl HttpBody for StallGuard {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stalled_at = None;
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let grace = this.grace;
                let timer = this
                    .stalled_at
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(format!(
                    "the backend sent nothing for {grace:?} during a download"
                )
                .into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_the_sdk_does() {
        let enc = |k: &str| utf8_percent_encode(k, KEY_ENCODING).to_string();
        assert_eq!(enc("a/b c/ü+%.txt"), "a/b%20c/%C3%BC%2B%25.txt");
        assert_eq!(enc("x~y_z-1"), "x~y_z-1");
    }

    #[test]
    fn error_documents_give_code_and_message() {
        let doc =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        assert_eq!(xml_text(doc, "Code"), Some("NoSuchKey"));
        assert_eq!(xml_text(doc, "Message"), Some("gone"));
        assert_eq!(xml_text(doc, "RequestId"), None);
        assert_eq!(xml_text("<Code>unclosed", "Code"), None);
    }

    #[test]
    fn backoff_is_bounded_by_the_sdk_schedule() {
        for _ in 0..100 {
            assert!(backoff(1) <= Duration::from_secs(1));
            assert!(backoff(2) <= Duration::from_secs(2));
            assert!(backoff(40) <= MAX_BACKOFF);
        }
    }

    #[tokio::test]
    async fn resolves_path_style_and_aws_endpoints() {
        let provider = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "a", "b", None, None, "test",
        ));
        let setup = |endpoint: Option<&'static str>, path_style: bool| Setup {
            bucket: "my-bucket",
            region: "eu-west-1",
            endpoint,
            force_path_style: path_style,
            use_fips: false,
            use_dual_stack: false,
            credentials: provider.clone(),
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            stall_grace: Duration::from_secs(1),
            download_gather: 0,
        };
        let t = Target::resolve(&setup(Some("http://127.0.0.1:9000"), true))
            .await
            .unwrap();
        assert_eq!(t.base, "http://127.0.0.1:9000/my-bucket/");
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(
            (t.signing_name.as_str(), t.signing_region.as_str()),
            ("s3", "eu-west-1")
        );
        assert!(!t.https);
        let t = Target::resolve(&setup(Some("http://minio.local:9000"), false))
            .await
            .unwrap();
        assert_eq!(t.base, "http://my-bucket.minio.local:9000/");
        let t = Target::resolve(&setup(None, false)).await.unwrap();
        assert_eq!(t.base, "https://my-bucket.s3.eu-west-1.amazonaws.com/");
        assert_eq!(t.host, "my-bucket.s3.eu-west-1.amazonaws.com");
        assert!(t.https);
        // A bucket name that cannot be a host name goes path-style, as in the SDK.
        let mut dotted = setup(None, false);
        dotted.bucket = "my.bucket";
        let t = Target::resolve(&dotted).await.unwrap();
        assert!(t.base.ends_with("/my.bucket/"), "{}", t.base);
    }
}
