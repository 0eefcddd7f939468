//! The light signed path against the SDK path: the same reads and uploads, through two relays
//! on the same S3 server, must give the same answers (objects, ranges, conditions, errors,
//! retries, timeouts, a stalled download, a stalled upload) and store the same objects.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use http_body_util::BodyExt;
use portcullis::policy::ObjectKey;
use portcullis::relay::Read;
use portcullis::relay::{
    Backend, BackendSettings, Fetched, ReadConditions, Upload, WriteCondition,
};

/// Two relays to `endpoint` (default: the test gateway's S3 server): light reads, SDK reads.
async fn relays(
    g: &TestGateway,
    endpoint: Option<String>,
    extra: impl Fn(&mut portcullis::config::Config),
) -> (Backend, Backend) {
    let endpoint = endpoint.unwrap_or_else(|| format!("http://{}", g.s3_addr));
    let mut both = Vec::new();
    for light in [true, false] {
        let mut config = g.config.clone();
        config.backend.light_path = light;
        extra(&mut config);
        let settings = BackendSettings {
            endpoint: Some(endpoint.clone()),
            credentials: Some(g.s3_credentials.clone()),
        };
        let backend = portcullis::relay::connect(&config, settings)
            .await
            .first()
            .clone();
        assert_eq!(backend.light_path(), light);
        both.push(backend);
    }
    let sdk = both.pop().unwrap();
    (both.pop().unwrap(), sdk)
}

/// An upload of `body` to `key`; `length: None` is a body of unknown length (chunked).
fn upload(
    key: &str,
    content_type: &str,
    length: Option<u64>,
    condition: WriteCondition,
    body: portcullis::Body,
) -> Upload {
    Upload {
        key: ObjectKey::parse(key.to_owned()).unwrap(),
        content_type: content_type.into(),
        length,
        condition,
        headers: Default::default(),
        body,
    }
}

/// A refusal, in one comparable line.
fn refused(e: &portcullis::error::ApiError) -> String {
    format!("error {:?} {} {:?}", e.code, e.status(), e.message)
}

/// Everything a read's answer carries to the client, in one comparable line.
async fn summary(result: Result<Fetched, portcullis::error::ApiError>) -> String {
    match result {
        Err(e) => refused(&e),
        Ok(Fetched::NotModified {
            etag,
            last_modified,
        }) => {
            format!("304 etag={etag:?} last_modified={last_modified:?}")
        }
        Ok(Fetched::Object {
            meta,
            content_range,
            body,
        }) => {
            let body = match body {
                None => "none".to_string(),
                Some(b) => match b.collect().await {
                    Ok(c) => {
                        let bytes = c.to_bytes();
                        format!("{} bytes {}", bytes.len(), hex_of(&bytes))
                    }
                    Err(e) => format!("failed: {e}"),
                },
            };
            format!(
                "object size={} etag={:?} type={:?} modified={:?} range={content_range:?} body={body}",
                meta.size, meta.etag, meta.content_type, meta.last_modified
            )
        }
    }
}

fn hex_of(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

async fn read(
    b: &Backend,
    key: &str,
    range: Option<&str>,
    cond: &ReadConditions,
    with_body: bool,
) -> String {
    let key = ObjectKey::parse(key.to_owned()).unwrap();
    let read = if with_body { Read::Body } else { Read::Head };
    summary(b.fetch(&key, range, cond, read).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_reads_answer_as_the_sdk_does() {
    let g = gateway("").await;
    let data = random_bytes(300_000, 7);
    let keys = [
        "plain.bin",
        "users/alice/a file with spaces.txt",
        "ünïcødé/ключ/鍵.bin",
        "odd+chars%20=&;,$@!'()*~_-.x",
        "deep/a/b/c/d/e/f/g.bin",
        "empty",
    ];
    for key in keys {
        let body = if key == "empty" {
            Vec::new()
        } else {
            data.clone()
        };
        g.s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .content_type("application/x-test; charset=utf-8")
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
    let head =
        g.s3.head_object()
            .bucket(BUCKET)
            .key("plain.bin")
            .send()
            .await
            .unwrap();
    let etag = head.e_tag().unwrap().to_owned();
    let modified = SystemTime::try_from(*head.last_modified().unwrap()).unwrap();
    let (light, sdk) = relays(&g, None, |_| {}).await;

    let none = ReadConditions::default();
    let cond = |f: fn(&mut ReadConditions, &str, SystemTime)| {
        let mut c = ReadConditions::default();
        f(&mut c, &etag, modified);
        c
    };
    let conditions = [
        ("none", none.clone()),
        (
            "if-none-match same",
            cond(|c, e, _| c.if_none_match = Some(e.into())),
        ),
        (
            "if-none-match *",
            cond(|c, _, _| c.if_none_match = Some("*".into())),
        ),
        (
            "if-none-match other",
            cond(|c, _, _| c.if_none_match = Some("\"other\"".into())),
        ),
        ("if-match same", cond(|c, e, _| c.if_match = Some(e.into()))),
        (
            "if-match other",
            cond(|c, _, _| c.if_match = Some("\"other\"".into())),
        ),
        (
            "if-modified-since later",
            cond(|c, _, t| c.if_modified_since = Some(t + Duration::from_secs(3600))),
        ),
        (
            "if-modified-since earlier",
            cond(|c, _, t| c.if_modified_since = Some(t - Duration::from_secs(3600))),
        ),
        (
            "if-unmodified-since earlier",
            cond(|c, _, t| c.if_unmodified_since = Some(t - Duration::from_secs(3600))),
        ),
        (
            "if-unmodified-since later",
            cond(|c, _, t| c.if_unmodified_since = Some(t + Duration::from_secs(3600))),
        ),
    ];
    let ranges = [
        None,
        Some("bytes=0-9"),
        Some("bytes=-5"),
        Some("bytes=299990-"),
        Some("bytes=1000-1999"),
        Some("bytes=400000-"),
    ];

    let mut compared = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for key in keys
        .iter()
        .chain(["missing/key", "users/alice/nope"].iter())
    {
        for with_body in [true, false] {
            for range in ranges {
                for (name, c) in &conditions {
                    let a = read(&light, key, range, c, with_body).await;
                    let b = read(&sdk, key, range, c, with_body).await;
                    assert_eq!(
                        a, b,
                        "key {key:?}, body {with_body}, range {range:?}, {name}"
                    );
                    kinds.insert(a.split(' ').take(3).collect::<Vec<_>>().join(" "));
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 8 * 2 * 6 * 10);
    // The comparison covered every kind of answer: objects, 304, and the errors.
    let kinds = kinds.into_iter().collect::<Vec<_>>().join("\n");
    for kind in [
        "object size=",
        "304",
        "error NotFound",
        "error PreconditionFailed",
        "error RangeNotSatisfiable",
    ] {
        assert!(kinds.contains(kind), "{kind} never came up:\n{kinds}");
    }

    // A bucket that is gone is the gateway's problem on both paths.
    g.s3.delete_objects()
        .bucket(BUCKET)
        .delete(
            aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(
                    keys.iter()
                        .map(|k| {
                            aws_sdk_s3::types::ObjectIdentifier::builder()
                                .key(*k)
                                .build()
                                .unwrap()
                        })
                        .collect(),
                ))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    g.s3.delete_bucket().bucket(BUCKET).send().await.unwrap();
    for with_body in [true, false] {
        let a = read(&light, "plain.bin", None, &none, with_body).await;
        assert_eq!(a, read(&sdk, "plain.bin", None, &none, with_body).await);
        assert!(a.starts_with("error "), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_reads_retry_and_fail_as_the_sdk_does() {
    let g = gateway("").await;
    let none = ReadConditions::default();
    // (status, code, attempts the SDK makes for GET and for HEAD: a HEAD answer has no body,
    // so only its status can make it transient)
    let cases = [
        (500, "InternalError", 3, 3),
        (503, "SlowDown", 3, 3),
        (400, "RequestTimeout", 3, 1),
        (429, "SlowDown", 3, 1),
        (403, "AccessDenied", 1, 1),
        (404, "NoSuchKey", 1, 1),
        (400, "InvalidArgument", 1, 1),
    ];
    for (status, code, get_attempts, head_attempts) in cases {
        for with_body in [true, false] {
            let attempts = if with_body {
                get_attempts
            } else {
                head_attempts
            };
            let mut answers = Vec::new();
            let mut counts = Vec::new();
            for light in [true, false] {
                let (endpoint, count) = answering_backend(status, code).await;
                let (l, s) = relays(&g, Some(endpoint), |_| {}).await;
                let b = if light { l } else { s };
                answers.push(read(&b, "k", None, &none, with_body).await);
                counts.push(count.load(Ordering::SeqCst));
            }
            assert_eq!(answers[0], answers[1], "{status} {code} body={with_body}");
            assert_eq!(
                counts,
                vec![attempts, attempts],
                "{status} {code} body={with_body}"
            );
        }
    }

    // Nobody listening: unavailable on both, after the same retries.
    let (_held, refusing) = refusing_addr();
    let (l, s) = relays(&g, Some(format!("http://{refusing}")), |_| {}).await;
    let a = read(&l, "k", None, &none, true).await;
    assert_eq!(a, read(&s, "k", None, &none, true).await);
    assert!(a.starts_with("error BackendUnavailable"), "{a}");

    // Silent: the attempt timeout, on both.
    let (l, s) = relays(&g, Some(silent_backend().await), |c| {
        c.backend.first_byte_timeout = portcullis::config::units::Span::secs(1)
    })
    .await;
    let started = Instant::now();
    let a = read(&l, "k", None, &none, true).await;
    let light_took = started.elapsed();
    assert_eq!(a, read(&s, "k", None, &none, true).await);
    assert!(a.starts_with("error BackendTimeout"), "{a}");
    assert!(
        light_took >= Duration::from_secs(1) && light_took < Duration::from_secs(15),
        "{light_took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_backend_stops_sending_fails_on_both_paths() {
    let g = gateway("").await;
    let data = random_bytes(4 * 1024 * 1024, 9);
    g.s3.put_object()
        .bucket(BUCKET)
        .key("big")
        .body(data.into())
        .send()
        .await
        .unwrap();
    let proxy = stalling_proxy(g.s3_addr, 1024 * 1024).await;
    // Stall grace = 2 x body_idle_timeout = 2 s.
    let (l, s) = relays(&g, Some(proxy), |c| {
        c.server.body_idle_timeout = portcullis::config::units::Span::secs(1)
    })
    .await;
    for b in [&l, &s] {
        let started = Instant::now();
        let a = read(b, "big", None, &ReadConditions::default(), true).await;
        let took = started.elapsed();
        assert!(a.contains("body=failed"), "light={}: {a}", b.light_path());
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(20),
            "light={}: {took:?}",
            b.light_path()
        );
    }
}

/// Stores `data` through `b`; the answer, and what the bucket then holds, in one line.
async fn store(
    g: &TestGateway,
    b: &Backend,
    key: &str,
    content_type: &str,
    condition: WriteCondition,
    body: portcullis::Body,
    length: u64,
) -> String {
    let upload = upload(key, content_type, Some(length), condition, body);
    let answer = match b.put(upload).await {
        Ok(stored) => format!("stored etag={} size={}", stored.etag, stored.size),
        Err(e) => refused(&e),
    };
    let held = match g.s3.get_object().bucket(BUCKET).key(key).send().await {
        Ok(out) => {
            let kind = out.content_type.clone();
            let etag = out.e_tag.clone();
            let bytes = out.body.collect().await.unwrap().into_bytes();
            format!(
                "{} bytes {} type={kind:?} etag={etag:?}",
                bytes.len(),
                hex_of(&bytes)
            )
        }
        Err(e) => format!("nothing ({})", e.into_service_error()),
    };
    format!("{answer}; bucket: {held}")
}

fn full(data: &[u8]) -> portcullis::Body {
    http_body_util::Full::new(bytes::Bytes::copy_from_slice(data))
        .map_err(|never| match never {})
        .boxed()
}

/// `data` in 64 KiB frames, as the gateway's server hands on a client's upload.
fn framed(data: &[u8]) -> portcullis::Body {
    let frames = data
        .chunks(64 * 1024)
        .map(|c| {
            Ok::<_, portcullis::BoxError>(http_body::Frame::data(bytes::Bytes::copy_from_slice(c)))
        })
        .collect::<Vec<_>>();
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// A body that sends `good` bytes in 16 KiB chunks, then fails.
fn failing_after(good: usize) -> portcullis::Body {
    let chunks = random_bytes(good, 3)
        .chunks(16 * 1024)
        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .chain(std::iter::once(Err::<_, portcullis::BoxError>(
            "the client went away".into(),
        )))
        .collect::<Vec<_>>();
    http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_uploads_store_as_the_sdk_does() {
    let g = gateway("").await;
    let (light, sdk) = relays(&g, None, |_| {}).await;
    let data = random_bytes(700_000, 11);
    let other = random_bytes(1000, 12);
    let keys = [
        "plain.bin",
        "users/alice/a file with spaces.txt",
        "ünïcødé/ключ/鍵.bin",
        "odd+chars%20=&;,$@!'()*~_-.x",
    ];
    for key in keys {
        // Each path works on its own copy of the key, in the same steps.
        let mut lines = Vec::new();
        for (b, prefix) in [(&light, "light/"), (&sdk, "sdk/")] {
            let k = format!("{prefix}{key}");
            let mut steps = Vec::new();
            let ctype = "application/x-test; charset=utf-8";
            let g = &g;
            let put = |cond: WriteCondition, body: &[u8]| {
                let (k, body) = (k.clone(), body.to_vec());
                let len = body.len() as u64;
                async move { store(g, b, &k, ctype, cond, full(&body), len).await }
            };
            // Create only: stored, then refused (the object is there).
            steps.push(put(WriteCondition::IfNoneMatchAny, &data).await);
            steps.push(put(WriteCondition::IfNoneMatchAny, &other).await);
            // Replace only the version we name: refused with a wrong ETag, stored with its own.
            steps.push(put(WriteCondition::IfMatch("\"0123\"".into()), &other).await);
            let etag =
                g.s3.head_object()
                    .bucket(BUCKET)
                    .key(&k)
                    .send()
                    .await
                    .unwrap()
                    .e_tag
                    .unwrap();
            steps.push(put(WriteCondition::IfMatch(etag), &other).await);
            // Unconditional overwrite, an empty object.
            steps.push(put(WriteCondition::None, &data).await);
            steps.push(put(WriteCondition::None, &[]).await);
            lines.push(steps);
        }
        assert_eq!(lines[0], lines[1], "{key}");
        assert!(lines[0][0].starts_with("stored"), "{:?}", lines[0]);
        assert!(lines[0][1].starts_with("error"), "{:?}", lines[0]);
        assert!(lines[0][3].starts_with("stored"), "{:?}", lines[0]);
    }

    // If-Match on a key that is not there; a body that fails half way (nothing stored).
    for (key, cond, body, len) in [
        (
            "missing",
            WriteCondition::IfMatch("\"abc\"".into()),
            None,
            10,
        ),
        ("cut", WriteCondition::None, Some(300_000), 1_000_000),
    ] {
        let mut answers = Vec::new();
        for (b, prefix) in [(&light, "light/"), (&sdk, "sdk/")] {
            let body = match body {
                Some(good) => failing_after(good),
                None => full(&other[..10]),
            };
            let k = format!("{prefix}{key}");
            answers.push(store(&g, b, &k, "text/plain", cond.clone(), body, len).await);
        }
        assert!(answers[0].contains("bucket: nothing"), "{}", answers[0]);
        if body.is_none() {
            assert_eq!(answers[0], answers[1]);
        } else {
            // The body's own failure is what the gateway reports (the request's watch names
            // it); both paths fail the call and store nothing.
            assert!(answers[0].starts_with("error"), "{}", answers[0]);
            assert!(answers[1].starts_with("error"), "{}", answers[1]);
            assert!(answers[1].contains("bucket: nothing"), "{}", answers[1]);
        }
    }

    // Encrypted at rest (SSE-S3, and SSE-KMS with a key): the same headers, the same answer.
    for (sse, kms) in [
        (portcullis::config::Sse::Aes256, None),
        (
            portcullis::config::Sse::AwsKms,
            Some("alias/test".to_string()),
        ),
    ] {
        let (light, sdk) = relays(&g, None, |c| {
            c.backend.sse = Some(sse);
            c.backend.kms_key_id = kms.clone();
        })
        .await;
        let mut answers = Vec::new();
        for (b, prefix) in [(&light, "light/"), (&sdk, "sdk/")] {
            let k = format!("{prefix}encrypted-{sse:?}");
            let a = store(
                &g,
                b,
                &k,
                "text/plain",
                WriteCondition::None,
                full(&other),
                1000,
            )
            .await;
            answers.push(a);
        }
        assert_eq!(answers[0], answers[1], "{sse:?}");
    }

    // A bucket that is gone.
    g.s3.delete_objects()
        .bucket(BUCKET)
        .delete(
            aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(
                    g.bucket_keys()
                        .await
                        .into_iter()
                        .map(|k| {
                            aws_sdk_s3::types::ObjectIdentifier::builder()
                                .key(k)
                                .build()
                                .unwrap()
                        })
                        .collect(),
                ))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    g.s3.delete_bucket().bucket(BUCKET).send().await.unwrap();
    let mut answers = Vec::new();
    for b in [&light, &sdk] {
        let upload = upload(
            "k",
            "text/plain",
            Some(3),
            WriteCondition::None,
            full(b"abc"),
        );
        answers.push(match b.put(upload).await {
            Ok(s) => format!("stored {s:?}"),
            Err(e) => refused(&e),
        });
    }
    // (S3 refuses; s3s-fs makes the bucket's folder again and stores it: either way, the same.)
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_uploads_fail_as_the_sdk_does() {
    let g = gateway("").await;
    let put = |b: Backend| async move {
        let upload = upload(
            "k",
            "text/plain",
            Some(5),
            WriteCondition::None,
            full(b"hello"),
        );
        match b.put(upload).await {
            Ok(s) => format!("stored {s:?}"),
            Err(e) => refused(&e),
        }
    };
    // A streamed body cannot be sent twice: one attempt whatever S3 answers.
    for (status, code) in [
        (500, "InternalError"),
        (503, "SlowDown"),
        (400, "RequestTimeout"),
        (403, "AccessDenied"),
        (412, "PreconditionFailed"),
        (409, "ConditionalRequestConflict"),
    ] {
        let mut answers = Vec::new();
        let mut counts = Vec::new();
        for light in [true, false] {
            let (endpoint, count) = answering_backend(status, code).await;
            let (l, s) = relays(&g, Some(endpoint), |_| {}).await;
            answers.push(put(if light { l } else { s }).await);
            counts.push(count.load(Ordering::SeqCst));
        }
        assert_eq!(answers[0], answers[1], "{status} {code}");
        assert_eq!(counts, vec![1, 1], "{status} {code}");
    }

    // Nobody listening: unavailable on both.
    let (_held, refusing) = refusing_addr();
    let (l, s) = relays(&g, Some(format!("http://{refusing}")), |_| {}).await;
    let a = put(l).await;
    assert_eq!(a, put(s).await);
    assert!(a.starts_with("error BackendUnavailable"), "{a}");
}

/// Stores `body` through `b` to a backend that stalls on it, with a stall grace of 2 s; checks
/// that the store failed after the grace and well before 30 s, and left nothing in the bucket.
async fn stalled_store(
    g: &TestGateway,
    b: &Backend,
    key: &str,
    body: portcullis::Body,
    length: u64,
) -> String {
    let started = Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(30),
        store(
            g,
            b,
            key,
            "application/octet-stream",
            WriteCondition::None,
            body,
            length,
        ),
    )
    .await
    .unwrap_or_else(|_| "still waiting after 30 s".into());
    let took = started.elapsed();
    assert!(a.starts_with("error"), "light={}: {a}", b.light_path());
    assert!(
        a.contains("bucket: nothing"),
        "light={}: {a}",
        b.light_path()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "light={}: {took:?}: {a}",
        b.light_path()
    );
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_backend_stops_taking_fails_on_both_paths() {
    let g = gateway("").await;
    let proxy = swallowing_proxy(g.s3_addr, 256 * 1024).await;
    // Stall grace = 2 x body_idle_timeout = 2 s. The body comes in frames, as from a client:
    // on both paths the watch follows the frames S3 takes, so a body handed over in one piece
    // is out of its sight.
    let (l, s) = relays(&g, Some(proxy), |c| {
        c.server.body_idle_timeout = portcullis::config::units::Span::secs(1)
    })
    .await;
    let data = random_bytes(16 * 1024 * 1024, 5);
    let mut answers = Vec::new();
    for (b, key) in [(&s, "sdk-stalled"), (&l, "light-stalled")] {
        answers.push(stalled_store(&g, b, key, framed(&data), data.len() as u64).await);
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        answers[0].starts_with("error BackendTimeout"),
        "{}",
        answers[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_backend_never_answers_fails_on_both_paths() {
    let g = gateway("").await;
    let proxy = silent_proxy(g.s3_addr).await;
    // Stall grace = 2 x body_idle_timeout = 2 s, counted from the body's last byte.
    let (l, s) = relays(&g, Some(proxy), |c| {
        c.server.body_idle_timeout = portcullis::config::units::Span::secs(1)
    })
    .await;
    let data = random_bytes(256 * 1024, 6);
    let mut answers = Vec::new();
    // A body that says when it has ended (as the server's does, by its Content-Length) and
    // one that only finds out on the next poll.
    let bodies: [fn(&[u8]) -> portcullis::Body; 2] = [full, framed];
    for ((b, key), body) in [(&s, "sdk-unanswered"), (&l, "light-unanswered")]
        .into_iter()
        .flat_map(|path| bodies.map(|body| (path, body)))
    {
        answers.push(stalled_store(&g, b, key, body(&data), data.len() as u64).await);
    }
    for a in &answers {
        assert_eq!(a, &answers[0]);
    }
    assert!(
        answers[0].starts_with("error BackendTimeout"),
        "{}",
        answers[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_cut_off_on_the_way_is_sent_again() {
    let g = gateway("").await;
    // The first connection is cut 1 MiB into the first part; the SDK sends that part again
    // (parts are held in memory and replayable), and the upload completes.
    let proxy = cut_once_proxy(g.s3_addr, 1024 * 1024).await;
    let (light, _) = relays(&g, Some(proxy), |c| {
        c.backend.part_size = portcullis::config::units::Size::mib(5)
    })
    .await;
    let data = random_bytes(12 * 1024 * 1024, 8);
    let upload = upload(
        "parts/retried",
        "application/octet-stream",
        None,
        WriteCondition::None,
        framed(&data),
    );
    let stored = light.put(upload).await.unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(
        g.bucket_object("parts/retried").await.map(|b| hex_of(&b)),
        Some(hex_of(&data))
    );
    assert!(g.pending_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_uploads_send_the_headers_the_sdk_sends() {
    let g = gateway("").await;
    // The request line and the headers S3 acts on; the SDK's own (user agent, invocation id)
    // and the date differ anyway, and each backend has its own port. The SDK also marks the
    // operation in the query (`x-id=PutObject`), which S3 ignores.
    let kept = [
        "put ",
        "content-type:",
        "content-length:",
        "if-none-match:",
        "if-match:",
        "x-amz-content-sha256:",
        "x-amz-server-side-encryption",
    ];
    for (sse, kms, condition) in [
        (None, None, WriteCondition::None),
        (
            Some(portcullis::config::Sse::Aes256),
            None,
            WriteCondition::IfNoneMatchAny,
        ),
        (
            Some(portcullis::config::Sse::AwsKms),
            Some("alias/test".to_string()),
            WriteCondition::IfMatch("\"abc\"".into()),
        ),
    ] {
        let mut sent = Vec::new();
        for light in [true, false] {
            let (endpoint, heads) = recording_backend().await;
            let (l, s) = relays(&g, Some(endpoint), |c| {
                c.backend.sse = sse;
                c.backend.kms_key_id = kms.clone();
            })
            .await;
            let b = if light { l } else { s };
            let upload = upload(
                "dir/ünï code+key.txt",
                "text/plain; charset=utf-8",
                Some(5),
                condition.clone(),
                full(b"hello"),
            );
            assert_eq!(b.put(upload).await.unwrap().etag, "\"e1\"");
            let heads = heads.lock().unwrap().clone();
            assert_eq!(heads.len(), 1, "{heads:?}");
            let mut lines: Vec<String> = heads[0]
                .lines()
                .filter(|l| kept.iter().any(|k| l.starts_with(k)))
                .map(|l| l.replace("?x-id=putobject", ""))
                .collect();
            lines.sort();
            sent.push(lines);
        }
        assert_eq!(sent[0], sent[1], "{sse:?} {condition:?}");
        let expected_sse = sent[0]
            .iter()
            .filter(|l| l.starts_with("x-amz-server-side-encryption"))
            .count();
        assert_eq!(expected_sse, sse.map_or(0, |_| 1) + kms.map_or(0, |_| 1));
        assert!(
            sent[0].contains(&"x-amz-content-sha256: unsigned-payload".to_string()),
            "{:?}",
            sent[0]
        );
    }
}

/// A put through `b` of `data` to `key`: the answer only.
async fn put_plain(b: &Backend, key: &str, data: &[u8]) -> String {
    let upload = upload(
        key,
        "application/octet-stream",
        Some(data.len() as u64),
        WriteCondition::None,
        full(data),
    );
    match b.put(upload).await {
        Ok(stored) => format!("stored size={}", stored.size),
        Err(e) => refused(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_light_path_sends_request_after_request_on_one_connection() {
    let g = gateway("").await;
    let (url, connections) = counting_proxy(g.s3_addr, None).await;
    let (light, _) = relays(&g, Some(url), |_| {}).await;
    let data = random_bytes(300_000, 21);
    let none = ReadConditions::default();
    let mut answers = Vec::new();
    answers.push(put_plain(&light, "kept/a.bin", &data).await);
    answers.push(read(&light, "kept/a.bin", None, &none, true).await);
    answers.push(read(&light, "kept/a.bin", None, &none, false).await);
    answers.push(read(&light, "kept/a.bin", Some("bytes=10-19"), &none, true).await);
    answers.push(read(&light, "kept/missing", None, &none, true).await);
    answers.push(read(&light, "kept/missing", None, &none, false).await);
    let etag =
        g.s3.head_object()
            .bucket(BUCKET)
            .key("kept/a.bin")
            .send()
            .await
            .unwrap()
            .e_tag
            .unwrap();
    let cached = ReadConditions {
        if_none_match: Some(etag),
        ..ReadConditions::default()
    };
    answers.push(read(&light, "kept/a.bin", None, &cached, true).await);
    answers.push(put_plain(&light, "kept/b.bin", b"").await);
    answers.push(read(&light, "kept/a.bin", None, &none, true).await);
    let answers = answers.join("\n");
    assert!(
        answers.starts_with("stored size=300000\nobject size=300000"),
        "{answers}"
    );
    assert_eq!(answers.matches(&hex_of(&data)).count(), 2, "{answers}");
    assert!(
        answers.contains("range=Some(\"bytes 10-19/300000\")"),
        "{answers}"
    );
    assert!(answers.contains("error NotFound 404"), "{answers}");
    assert!(answers.contains("304 etag="), "{answers}");
    assert!(answers.contains("stored size=0"), "{answers}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "{answers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_backend_closed_while_idle_is_not_used_again() {
    let g = gateway("").await;
    let (url, connections) = counting_proxy(g.s3_addr, Some(Duration::from_millis(200))).await;
    let (light, _) = relays(&g, Some(url), |_| {}).await;
    let data = random_bytes(100_000, 22);
    let none = ReadConditions::default();
    assert_eq!(
        put_plain(&light, "idle/a.bin", &data).await,
        "stored size=100000"
    );
    // S3 closes the connection; an upload, which is sent only once, must not go out on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        put_plain(&light, "idle/b.bin", &data).await,
        "stored size=100000"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = read(&light, "idle/b.bin", None, &none, true).await;
    assert!(got.contains(&hex_of(&data)), "{got}");
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_dropped_half_read_takes_its_connection_with_it() {
    let g = gateway("").await;
    let (url, connections) = counting_proxy(g.s3_addr, None).await;
    let (light, _) = relays(&g, Some(url), |_| {}).await;
    let data = random_bytes(4 << 20, 23);
    assert_eq!(
        put_plain(&light, "half/a.bin", &data).await,
        "stored size=4194304"
    );
    let key = ObjectKey::parse("half/a.bin".to_owned()).unwrap();
    let none = ReadConditions::default();
    let Ok(Fetched::Object {
        body: Some(mut body),
        ..
    }) = light.fetch(&key, None, &none, Read::Body).await
    else {
        panic!("no object");
    };
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    // The rest of that answer is still on its connection: the next read needs another.
    let got = read(&light, "half/a.bin", None, &none, true).await;
    assert!(got.contains(&hex_of(&data)), "{got}");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    let got = read(&light, "half/a.bin", Some("bytes=0-0"), &none, true).await;
    assert!(got.contains("range=Some(\"bytes 0-0/4194304\")"), "{got}");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// Downloads from an S3 server that sends small frames and sometimes stalls: the gateway
/// gathers them in the kernel (`backend.download_gather`), and every byte still arrives, in
/// order, at the end of each answer, whether the gathering ends by the mark, the body's end
/// or the wait, and on connections reused for the next answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_from_small_frames_arrive_whole() {
    // 30 ms pauses every 100 KiB: gathering (64 KiB) reaches its mark, then its wait.
    let g = gateway_with("", Relay::SmallFrames(100 * 1024)).await;
    let sizes = [
        1,
        4095,
        4096 * 16 + 7,
        64 * 1024,
        1024 * 1024 + 3,
        3 * 1024 * 1024,
    ];
    let mut objects = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let body: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        let key = format!("gather/{i}.bin");
        let resp = g
            .http
            .put(format!("{}/v1/objects/{key}", g.url))
            .bearer_auth(ADMIN)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{key}: {}", resp.status());
        objects.push((key, body));
    }
    // Twice over, on the same keep-alive connections: a connection that carried a gathered
    // download must answer the next request's head at once.
    for _ in 0..2 {
        for (key, body) in &objects {
            let started = Instant::now();
            let resp = g
                .http
                .get(format!("{}/v1/objects/{key}", g.url))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{key}");
            let got = resp.bytes().await.unwrap();
            assert!(
                got[..] == body[..],
                "{key}: {} bytes, want {}",
                got.len(),
                body.len()
            );
            // The proxy's own pauses, plus far less than one more for gathering.
            let pauses = body.len() / (100 * 1024) + 1;
            assert!(
                started.elapsed() < Duration::from_millis(30 * pauses as u64 + 2_000),
                "{key}: {:?}",
                started.elapsed()
            );
        }
    }
    // A range from the middle.
    let (key, body) = &objects[5];
    let resp = g
        .http
        .get(format!("{}/v1/objects/{key}", g.url))
        .bearer_auth(ADMIN)
        .header("range", "bytes=1000-2000999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.unwrap()[..] == body[1000..2_001_000]);
}

/// Accepts TLS (the PKI's `localhost` certificate) and relays the plain bytes to `to`: an S3
/// endpoint over HTTPS, sending records of up to 16 KiB as AWS does.
async fn tls_front(pki: &Pki, to: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&pki.server_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    at
}

/// `portcullis serve` in front of an S3 endpoint over HTTPS whose CA it trusts through
/// `SSL_CERT_FILE`, as an operator with a private CA runs it: the light path (reads and
/// uploads of known length) and the SDK (multipart, listings, deletes) both speak TLS to it,
/// and every byte arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_endpoint_over_https_serves_every_operation() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let s3 = portcullis::embedded::start_with(
        &dir.path().join("data"),
        &["tls-bucket"],
        "127.0.0.1:0".parse().unwrap(),
        16 * 1024,
    )
    .await
    .unwrap();
    let front = tls_front(&pki, s3.addr).await;
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[backend]
kind = "s3"
bucket = "tls-bucket"
endpoint = "https://localhost:{port}"
force_path_style = true
part_size = "5MiB"
audit = "off"

[log]
access_log = "{log}"

[[principals]]
name = "admin"
api_keys = ["{admin}"]
allow = ["get", "put", "delete", "list"]
"#,
            port = front.port(),
            log = dir.path().join("access.log").display(),
            admin = portcullis::auth::hash_key(ADMIN),
        ),
    )
    .unwrap();
    // It waits for the start on this thread; the S3 server and the TLS front run on the other.
    let served = tokio::task::block_in_place(|| {
        ServeProcess::start(
            &config,
            &[
                ("SSL_CERT_FILE", pki.ca_file.to_str().unwrap()),
                ("AWS_ACCESS_KEY_ID", &s3.access_key),
                ("AWS_SECRET_ACCESS_KEY", &s3.secret_key),
                ("AWS_REGION", "us-east-1"),
            ],
        )
    });
    let url = served.url.clone();
    let http = reqwest::Client::new();
    // The admin's request on the object `key` ("" for the listing).
    let call = |method: reqwest::Method, key: &str| {
        let path = if key.is_empty() {
            String::new()
        } else {
            format!("/{key}")
        };
        http.request(method, format!("{url}/v1/objects{path}"))
            .header("authorization", bearer(ADMIN))
    };
    let stored = |key: &str| {
        let path = dir.path().join("data/tls-bucket").join(key);
        std::fs::read(path).ok()
    };

    // Known length: the light path's upload. Unknown length past the part size: multipart.
    for (key, size, chunked) in [
        ("one.bin", 3 * 1024 * 1024 + 5, false),
        ("small.txt", 11, false),
        ("parts.bin", 11 * 1024 * 1024 + 1, true),
    ] {
        let data = random_bytes(size, size as u64);
        let body = if chunked {
            chunked_body(data.clone(), 64 * 1024)
        } else {
            data.clone().into()
        };
        let resp = call(reqwest::Method::PUT, key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "{key}");
        assert_eq!(stored(key).as_deref(), Some(&data[..]), "{key}");
        // Read back whole, twice on the same connections, and a range.
        for _ in 0..2 {
            let resp = call(reqwest::Method::GET, key).send().await.unwrap();
            let body = resp.bytes().await.unwrap();
            assert!(body[..] == data[..], "{key}");
        }
        let resp = call(reqwest::Method::GET, key)
            .header("range", "bytes=3-")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::PARTIAL_CONTENT);
        assert!(resp.bytes().await.unwrap()[..] == data[3..], "{key}");
    }
    let resp = call(reqwest::Method::GET, "").send().await.unwrap();
    let listed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        listed["objects"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    let resp = call(reqwest::Method::DELETE, "one.bin")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(stored("one.bin"), None);
}
