//! The S3 front door (SPEC section 11), driven with aws-sdk-s3 and with hand-signed
//! requests over the embedded S3 server: the same principals, policy and limits as `/v1`,
//! S3's error codes, and what is left in the bucket after each refusal.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::common::*;

/// The name clients give the bucket (`backend.name`'s default).
const NAME: &str = "files";

type Put = Result<
    aws_sdk_s3::operation::put_object::PutObjectOutput,
    aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::put_object::PutObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
>;

/// A plain PutObject of `body` at `key`.
async fn put_bytes(s3: &aws_sdk_s3::Client, key: &str, body: Vec<u8>) -> Put {
    s3.put_object()
        .bucket(NAME)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
}

async fn put_static(s3: &aws_sdk_s3::Client, key: &str, body: &'static [u8]) -> Put {
    put_bytes(s3, key, body.to_vec()).await
}

#[tokio::test]
async fn objects_go_through_the_door_and_are_logged() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    // Keys with SPEC section 3's characters (space, unicode, `+`, `%`, `=`) reach S3 as is.
    for key in [
        "hello.txt",
        "dir/sp ace+plus%25=x.bin",
        "unicode/été/日本.txt",
    ] {
        let body = format!("body of {key}");
        s3.put_object()
            .bucket(NAME)
            .key(key)
            .content_type("text/plain")
            .body(ByteStream::from(body.clone().into_bytes()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        assert_eq!(
            g.bucket_object(key).await.as_deref(),
            Some(body.as_bytes()),
            "{key}"
        );
        let got = s3.get_object().bucket(NAME).key(key).send().await.unwrap();
        assert_eq!(got.content_type(), Some("text/plain"));
        assert_eq!(
            got.body.collect().await.unwrap().into_bytes(),
            body.as_bytes()
        );
        let head = s3.head_object().bucket(NAME).key(key).send().await.unwrap();
        assert_eq!(head.content_length(), Some(body.len() as i64));
    }
    // A range, and a condition.
    let part = s3
        .get_object()
        .bucket(NAME)
        .key("hello.txt")
        .range("bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(part.content_range(), Some("bytes 0-3/17"));
    assert_eq!(
        part.body.collect().await.unwrap().into_bytes(),
        &b"body"[..]
    );
    let stale = s3
        .get_object()
        .bucket(NAME)
        .key("hello.txt")
        .if_match("\"not-the-etag\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&stale), "PreconditionFailed");
    let missing = s3
        .get_object()
        .bucket(NAME)
        .key("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&missing), "NoSuchKey");

    s3.delete_object()
        .bucket(NAME)
        .key("hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(g.bucket_object("hello.txt").await, None);

    eventually("the DeleteObject line is written", || async {
        g.access_log_lines()
            .iter()
            .any(|l| l["route"] == "s3:DeleteObject")
    })
    .await;
    let lines = g.access_log_lines();
    let put = lines
        .iter()
        .find(|l| l["route"] == "s3:PutObject")
        .expect("a PutObject line");
    assert_eq!(put["auth"], "sigv4");
    assert_eq!(put["principal"], "admin");
    assert_eq!(put["bucket"], NAME);
    assert!(
        lines
            .iter()
            .any(|l| l["route"] == "s3:GetObject" && l["status"] == 206)
    );
    assert!(lines.iter().any(|l| l["route"] == "s3:GetObject"
        && l["status"] == 404
        && l["error_code"] == "NoSuchKey"));
    // Metrics by operation.
    let metrics = portcullis::obs::metrics::render();
    for op in ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("portcullis_requests_total{")
                    && l.contains(&format!("route=\"{op}\""))),
            "{op}: {metrics}"
        );
    }
}

/// A GET as a browser or download manager sends it: the request signed by hand, so any header
/// can be added.
async fn get_with(g: &TestGateway, method: &str, key: &str, headers: &[(&str, &str)]) -> Sent {
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let path = format!("/{NAME}/{key}");
    send_signed(
        g,
        &admin,
        method,
        &path,
        headers,
        &[],
        &hex_sha256(b""),
        |_| Vec::new(),
    )
    .await
}

#[tokio::test]
async fn a_cached_or_resumed_copy_gets_what_s3_would_send() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    let etag_of = || async {
        let head = s3
            .head_object()
            .bucket(NAME)
            .key("c.txt")
            .send()
            .await
            .unwrap();
        let modified = head
            .last_modified()
            .unwrap()
            .fmt(aws_sdk_s3::primitives::DateTimeFormat::HttpDate)
            .unwrap();
        (head.e_tag().unwrap().to_owned(), modified)
    };
    put_static(&s3, "c.txt", b"the first body").await.unwrap();
    let (old_tag, modified) = etag_of().await;

    // A copy that is still current: 304 with its ETag and no body, for GET and HEAD. A 200
    // with an empty body would replace a browser's cached copy of a presigned URL with
    // nothing.
    for method in ["GET", "HEAD"] {
        for condition in [
            ("if-none-match", old_tag.as_str()),
            ("if-modified-since", modified.as_str()),
        ] {
            let sent = get_with(&g, method, "c.txt", &[condition]).await;
            let what = format!("{method} {condition:?}");
            assert_eq!(sent.status, 304, "{what}: {}", sent.body);
            assert_eq!(sent.body, "", "{what}");
            assert_eq!(sent.headers["etag"], old_tag.as_str(), "{what}");
            assert!(sent.headers.get("content-length").is_none(), "{what}");
            assert_eq!(
                sent.headers["x-amz-request-id"], sent.headers["x-request-id"],
                "{what}"
            );
        }
    }
    let cached = s3
        .get_object()
        .bucket(NAME)
        .key("c.txt")
        .if_none_match(&old_tag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        cached.raw_response().map(|r| r.status().as_u16()),
        Some(304)
    );

    // A resumed download (If-Range) of an object replaced since: the whole new object, never
    // a range of it to splice onto the old one's bytes.
    put_static(&s3, "c.txt", b"replaced body!").await.unwrap();
    let (new_tag, _) = etag_of().await;
    for (validator, status, body) in [
        (old_tag.as_str(), 200, "replaced body!"),
        (new_tag.as_str(), 206, "repl"),
        ("\"not-a-tag\"", 200, "replaced body!"),
    ] {
        let headers = [("range", "bytes=0-3"), ("if-range", validator)];
        let sent = get_with(&g, "GET", "c.txt", &headers).await;
        assert_eq!(sent.status, status, "If-Range {validator}: {}", sent.body);
        assert_eq!(sent.body, body, "If-Range {validator}");
        assert_eq!(
            sent.headers.contains_key("content-range"),
            status == 206,
            "If-Range {validator}"
        );
    }

    // A Range S3 cannot serve as one range (several, or malformed) is ignored there: the
    // whole object. A browser adds its Range to a presigned URL unsigned; signed, s3s refuses
    // it before the door could ignore it.
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let path = format!("/{NAME}/c.txt");
    for range in ["bytes=0-1,3-4", "bytes=3-2", "items=0-1", "bytes=x"] {
        let sent = get_with_unsigned(&g, &admin, &path, &[("range", range)]).await;
        assert_eq!(sent.status, 200, "{range}: {}", sent.body);
        assert_eq!(sent.body, "replaced body!", "{range}");
        let signed = get_with(&g, "GET", "c.txt", &[("range", range)]).await;
        assert_eq!(signed.code.as_deref(), Some("InvalidArgument"), "{range}");
    }
    let sent = get_with_unsigned(&g, &admin, &path, &[("range", "bytes=0-3")]).await;
    assert_eq!((sent.status.as_u16(), sent.body.as_str()), (206, "repl"));
}

async fn get_with_unsigned(
    g: &TestGateway,
    signer: &Signer,
    path: &str,
    unsigned: &[(&str, &str)],
) -> Sent {
    let empty = hex_sha256(b"");
    send_signed(g, signer, "GET", path, &[], unsigned, &empty, |_| {
        Vec::new()
    })
    .await
}

#[tokio::test]
async fn the_bucket_calls_clients_make_first() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ALICE_AK);
    let buckets = s3.list_buckets().send().await.unwrap();
    let names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, [NAME], "only the principal's bucket, by its name");
    s3.head_bucket().bucket(NAME).send().await.unwrap();
    let other = s3
        .head_bucket()
        .bucket("test-bucket")
        .send()
        .await
        .unwrap_err();
    assert_eq!(other.raw_response().map(|r| r.status().as_u16()), Some(403));
    let location = s3.get_bucket_location().bucket(NAME).send().await.unwrap();
    assert!(
        location
            .location_constraint()
            .is_none_or(|c| c.as_str().is_empty())
    );
    let mine = s3.create_bucket().bucket(NAME).send().await.unwrap_err();
    assert_eq!(s3_code(&mine), "BucketAlreadyOwnedByYou");
    let theirs = s3
        .create_bucket()
        .bucket("another")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&theirs), "AccessDenied");
    // The S3 bucket's real name is never a bucket a client can reach.
    let real = s3
        .put_object()
        .bucket("test-bucket")
        .key("users/alice/x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&real), "AccessDenied");
    assert!(g.bucket_keys().await.is_empty());
    // Anything else is not implemented.
    let acl = s3.get_bucket_acl().bucket(NAME).send().await.unwrap_err();
    assert_eq!(s3_code(&acl), "NotImplemented");
}

#[tokio::test]
async fn signature_failures_have_the_sdk_codes_and_count_against_the_address() {
    let g = door_gateway(
        "[rate_limit]\nunauthenticated_per_ip = { requests_per_second = 1, burst = 3 }\n",
    )
    .await;
    let unknown = door_client_with(
        &g,
        "PCAKNOBODY000000000A",
        &secret_of(ADMIN_AK),
        "us-east-1",
    );
    let e = unknown
        .list_objects_v2()
        .bucket(NAME)
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "InvalidAccessKeyId");
    let wrong = door_client_with(&g, ADMIN_AK, &secret_of(ALICE_AK), "us-east-1");
    let e = wrong
        .list_objects_v2()
        .bucket(NAME)
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "SignatureDoesNotMatch");
    let region = door_client_with(&g, ADMIN_AK, &secret_of(ADMIN_AK), "eu-west-3");
    let e = region
        .list_objects_v2()
        .bucket(NAME)
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AuthorizationHeaderMalformed");
    // A clock 20 minutes off.
    let skewed = Signer::at(
        ADMIN_AK,
        &secret_of(ADMIN_AK),
        std::time::SystemTime::now() - Duration::from_secs(20 * 60),
    );
    let sent = send_signed(
        &g,
        &skewed,
        "GET",
        "/files/x",
        &[],
        &[],
        &hex_sha256(b""),
        |_| Vec::new(),
    )
    .await;
    assert_eq!(
        sent.code.as_deref(),
        Some("RequestTimeTooSkewed"),
        "{}",
        sent.body
    );
    // The request id is where S3 clients look for it when they report an error, and in the
    // XML as S3 has it.
    let id = sent.headers["x-amz-request-id"].to_str().unwrap();
    assert_eq!(id, sent.headers["x-request-id"]);
    assert!(
        sent.body.contains(&format!("<RequestId>{id}</RequestId>")),
        "{}",
        sent.body
    );
    // Four failures are over the address's budget of three: the right key is refused now too, as an
    // S3 client expects to be told to back off.
    let right = one_attempt(&door_client(&g, ADMIN_AK));
    let e = right
        .list_objects_v2()
        .bucket(NAME)
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "SlowDown");
    let raw = e.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    assert!(raw.headers().get("retry-after").is_some());
    assert!(raw.headers().get("x-amz-request-id").is_some());
}

#[tokio::test]
async fn the_policy_holds_per_key_and_lists_stay_in_the_prefix() {
    let g = door_gateway("").await;
    let admin = door_client(&g, ADMIN_AK);
    let alice = door_client(&g, ALICE_AK);
    let reader = door_client(&g, READER_AK);
    for key in [
        "users/alice/a.txt",
        "users/alice/docs/b.txt",
        "users/bob/c.txt",
        "top.txt",
    ] {
        put_static(&admin, key, b"x").await.unwrap();
    }
    // Outside the prefix, or without the action: AccessDenied, and nothing changes.
    let e = put_static(&alice, "users/bob/evil.txt", b"x")
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let e = alice
        .get_object()
        .bucket(NAME)
        .key("top.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let e = put_static(&reader, "users/alice/r.txt", b"x")
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let e = reader
        .delete_object()
        .bucket(NAME)
        .key("users/alice/a.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    // A path that decodes past the prefix is refused, not normalized.
    let e = put_static(&alice, "users/alice/../bob/x", b"x")
        .await
        .unwrap_err();
    assert!(
        ["InvalidArgument", "AccessDenied"].contains(&s3_code(&e).as_str()),
        "{e:?}"
    );
    assert_eq!(g.bucket_keys().await.len(), 4);

    // Lists: above the prefix shows the way in; inside lists; beside it is denied.
    let top = alice
        .list_objects_v2()
        .bucket(NAME)
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<_> = top
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["users/"]);
    assert!(top.contents().is_empty(), "top.txt is not alice's");
    let all = alice.list_objects_v2().bucket(NAME).send().await.unwrap();
    let keys: Vec<_> = all.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["users/alice/a.txt", "users/alice/docs/b.txt"]);
    let inside = alice
        .list_objects_v2()
        .bucket(NAME)
        .prefix("users/alice/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = inside.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["users/alice/a.txt"]);
    let e = alice
        .list_objects_v2()
        .bucket(NAME)
        .prefix("users/bob/")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    // Pages: a continuation token and start-after; ListObjects (v1) too.
    let first = admin
        .list_objects_v2()
        .bucket(NAME)
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.is_truncated(), Some(true));
    let rest = admin
        .list_objects_v2()
        .bucket(NAME)
        .continuation_token(first.next_continuation_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(first.contents().len() + rest.contents().len(), 4);
    let after = admin
        .list_objects_v2()
        .bucket(NAME)
        .start_after("users/alice/docs/b.txt")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["users/bob/c.txt"]);
    let v1 = alice
        .list_objects()
        .bucket(NAME)
        .prefix("users/alice/")
        .send()
        .await
        .unwrap();
    assert_eq!(v1.contents().len(), 2);

    // DeleteObjects: each key on its own.
    let ids = ["users/alice/a.txt", "users/bob/c.txt"]
        .map(|k| ObjectIdentifier::builder().key(k).build().unwrap());
    let out = alice
        .delete_objects()
        .bucket(NAME)
        .delete(
            Delete::builder()
                .set_objects(Some(ids.to_vec()))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let deleted: Vec<_> = out.deleted().iter().filter_map(|d| d.key()).collect();
    assert_eq!(deleted, ["users/alice/a.txt"]);
    let errors: Vec<_> = out
        .errors()
        .iter()
        .map(|e| (e.key().unwrap(), e.code().unwrap()))
        .collect();
    assert_eq!(errors, [("users/bob/c.txt", "AccessDenied")]);
    assert_eq!(g.bucket_object("users/alice/a.txt").await, None);
    assert!(g.bucket_object("users/bob/c.txt").await.is_some());

    // CopyObject needs get on the source and put on the target.
    alice
        .copy_object()
        .bucket(NAME)
        .key("users/alice/copy.txt")
        .copy_source(format!("{NAME}/users/alice/docs/b.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        g.bucket_object("users/alice/copy.txt").await.as_deref(),
        Some(&b"x"[..])
    );
    let e = alice
        .copy_object()
        .bucket(NAME)
        .key("users/alice/stolen.txt")
        .copy_source(format!("{NAME}/users/bob/c.txt"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let e = alice
        .copy_object()
        .bucket(NAME)
        .key("users/bob/planted.txt")
        .copy_source(format!("{NAME}/users/alice/docs/b.txt"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let e = alice
        .copy_object()
        .bucket(NAME)
        .key("users/alice/x.txt")
        .copy_source("test-bucket/users/alice/docs/b.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    assert_eq!(g.bucket_object("users/alice/stolen.txt").await, None);
    assert_eq!(g.bucket_object("users/bob/planted.txt").await, None);
}

#[tokio::test]
async fn sizes_and_types_are_held_and_nothing_half_written_stays() {
    let g = door_gateway(
        r#"
[[principals]]
name = "pics"
allow = ["get", "put", "list"]
prefix = "pics/"
content_types = ["image/*"]
s3_access_keys = ["PCAKPICS00000000000A"]
"#,
    )
    .await;
    let alice = door_client(&g, ALICE_AK);
    // Over alice's 6 MiB in one PUT: refused from the declared length.
    let e = put_bytes(&alice, "users/alice/big.bin", random_bytes(7 << 20, 1))
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "EntityTooLarge");
    assert_eq!(g.bucket_object("users/alice/big.bin").await, None);

    // Multipart: a part that would take the upload over the limit is refused as it comes.
    let id = alice
        .create_multipart_upload()
        .bucket(NAME)
        .key("users/alice/mp.bin")
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let part = |n: i32, len: usize| {
        alice
            .upload_part()
            .bucket(NAME)
            .key("users/alice/mp.bin")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(random_bytes(len, n as u64)))
            .send()
    };
    let p1 = part(1, 5 << 20).await.unwrap();
    let e = part(2, 2 << 20).await.unwrap_err();
    assert_eq!(s3_code(&e), "EntityTooLarge");
    let p2 = part(2, 1 << 20).await.unwrap();
    // The limit shrinks by a reload: Complete adds the parts up, refuses and aborts.
    let mut smaller = g.config.clone();
    smaller
        .principals
        .iter_mut()
        .find(|p| p.name == "alice")
        .unwrap()
        .max_object_size = Some(portcullis::config::units::Size::mib(5));
    g.gateway.reload(&smaller).unwrap();
    let parts = [(1, p1.e_tag.unwrap()), (2, p2.e_tag.unwrap())]
        .map(|(n, t)| CompletedPart::builder().part_number(n).e_tag(t).build());
    let e = alice
        .complete_multipart_upload()
        .bucket(NAME)
        .key("users/alice/mp.bin")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts.to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "EntityTooLarge");
    assert_eq!(g.bucket_object("users/alice/mp.bin").await, None);
    assert!(
        g.pending_uploads().await.is_empty(),
        "the upload was aborted"
    );

    // Types: at PutObject, at CreateMultipartUpload, and sniffed on the first part.
    let pics = door_client(&g, "PCAKPICS00000000000A");
    let e = pics
        .put_object()
        .bucket(NAME)
        .key("pics/a.txt")
        .content_type("text/plain")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let e = pics
        .create_multipart_upload()
        .bucket(NAME)
        .key("pics/a.html")
        .content_type("text/html")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let id = pics
        .create_multipart_upload()
        .bucket(NAME)
        .key("pics/b.png")
        .content_type("image/png")
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let e = pics
        .upload_part()
        .bucket(NAME)
        .key("pics/b.png")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from_static(
            b"<!DOCTYPE html><html><script>alert(1)</script>",
        ))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let listed = pics
        .list_parts()
        .bucket(NAME)
        .key("pics/b.png")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert!(listed.parts().is_empty(), "the refused part is not stored");
    pics.abort_multipart_upload()
        .bucket(NAME)
        .key("pics/b.png")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let e = pics
        .upload_part()
        .bucket(NAME)
        .key("pics/b.png")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from_static(b"\x89PNG\r\n\x1a\n"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "NoSuchUpload");
    assert!(g.pending_uploads().await.is_empty());
    assert!(g.bucket_keys().await.is_empty());
}

#[tokio::test]
async fn a_multipart_upload_through_the_door_completes_and_is_listed() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    let key = "big/upload.bin";
    let id = s3
        .create_multipart_upload()
        .bucket(NAME)
        .key(key)
        .content_type("application/octet-stream")
        .metadata("owner", "tests")
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let uploads = s3
        .list_multipart_uploads()
        .bucket(NAME)
        .send()
        .await
        .unwrap();
    assert_eq!(uploads.uploads().len(), 1);
    let data = random_bytes(11 << 20, 9);
    let mut parts = Vec::new();
    for (i, chunk) in data.chunks(5 << 20).enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(NAME)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag.unwrap())
                .build(),
        );
    }
    let listed = s3
        .list_parts()
        .bucket(NAME)
        .key(key)
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.parts().len(), 3);
    s3.complete_multipart_upload()
        .bucket(NAME)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(g.bucket_object(key).await.as_deref(), Some(&data[..]));
    let head = s3.head_object().bucket(NAME).key(key).send().await.unwrap();
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("tests")
    );
    assert!(g.pending_uploads().await.is_empty());
}

#[tokio::test]
async fn digests_and_checksums_are_verified_before_the_object_exists() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    let data = b"the quick brown fox".to_vec();
    // Content-MD5: wrong is BadDigest, malformed is InvalidDigest.
    let e = s3
        .put_object()
        .bucket(NAME)
        .key("md5.txt")
        .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "BadDigest");
    let e = s3
        .put_object()
        .bucket(NAME)
        .key("md5.txt")
        .content_md5("not base64!")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "InvalidDigest");
    // A checksum header that does not match.
    let e = s3
        .put_object()
        .bucket(NAME)
        .key("crc.txt")
        .checksum_crc32(crc32_b64(b"something else"))
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "BadDigest");
    assert!(g.bucket_keys().await.is_empty());

    // A checksum header that matches is echoed in the answer, as S3 does, whatever its
    // algorithm (SHA-256 is checked alongside the signed payload hash, the others apart).
    for name in ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"] {
        let sum = checksum_b64(name, &data);
        let put = s3
            .put_object()
            .bucket(NAME)
            .key(format!("echo-{name}.txt"))
            .body(ByteStream::from(data.clone()));
        let put = match name {
            "crc32" => put.checksum_crc32(&sum),
            "crc32c" => put.checksum_crc32_c(&sum),
            "crc64nvme" => put.checksum_crc64_nvme(&sum),
            "sha1" => put.checksum_sha1(&sum),
            _ => put.checksum_sha256(&sum),
        };
        let out = put.send().await.unwrap();
        let echoed = [
            out.checksum_crc32(),
            out.checksum_crc32_c(),
            out.checksum_crc64_nvme(),
            out.checksum_sha1(),
            out.checksum_sha256(),
        ];
        assert_eq!(
            echoed.into_iter().flatten().collect::<Vec<_>>(),
            [sum.as_str()],
            "{name}"
        );
    }
    for name in ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"] {
        let key = format!("echo-{name}.txt");
        s3.delete_object()
            .bucket(NAME)
            .key(key)
            .send()
            .await
            .unwrap();
    }

    // The trailer forms, by hand: an unsigned aws-chunked body with a CRC32 trailer.
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let decoded = data.len().to_string();
    let put_trailer = |key: &'static str, trailer: String| {
        let decoded = decoded.clone();
        let data = data.clone();
        let admin = &admin;
        let g = &g;
        async move {
            send_signed(
                g,
                admin,
                "PUT",
                &format!("/{NAME}/{key}"),
                &[
                    ("content-encoding", "aws-chunked"),
                    ("x-amz-decoded-content-length", decoded.as_str()),
                    ("x-amz-trailer", "x-amz-checksum-crc32"),
                ],
                &[],
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                |_| unsigned_chunks_with_trailer(&data, 7, &trailer),
            )
            .await
        }
    };
    let bad = put_trailer(
        "trailer-bad.txt",
        format!("x-amz-checksum-crc32:{}", crc32_b64(b"nope")),
    )
    .await;
    assert_eq!(bad.code.as_deref(), Some("BadDigest"), "{}", bad.body);
    assert_eq!(g.bucket_object("trailer-bad.txt").await, None);
    let good = put_trailer(
        "trailer-good.txt",
        format!("x-amz-checksum-crc32:{}", crc32_b64(&data)),
    )
    .await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    assert_eq!(
        g.bucket_object("trailer-good.txt").await.as_deref(),
        Some(&data[..])
    );
    // `aws-chunked` framed the request; it is not the object's coding.
    let stored =
        g.s3.head_object()
            .bucket(BUCKET)
            .key("trailer-good.txt")
            .send()
            .await
            .unwrap();
    assert_eq!(stored.content_encoding(), None);
    // A trailer that never comes.
    let missing = put_trailer("trailer-missing.txt", String::new()).await;
    assert_eq!(
        missing.code.as_deref(),
        Some("BadDigest"),
        "{}",
        missing.body
    );
    assert_eq!(g.bucket_object("trailer-missing.txt").await, None);

    // A signed payload hash that does not match the bytes.
    let sent = send_signed(
        &g,
        &admin,
        "PUT",
        "/files/signed.txt",
        &[],
        &[],
        &hex_sha256(b"other bytes"),
        |_| data.clone(),
    )
    .await;
    assert_eq!(sent.code.as_deref(), Some("BadDigest"), "{}", sent.body);
    assert_eq!(g.bucket_object("signed.txt").await, None);
}

#[test]
fn the_test_signer_reproduces_aws_published_streaming_example() {
    // "Signature Calculations for the Authorization Header: Transferring Payload in Multiple
    // Chunks (Chunked Upload)", AWS S3 API reference, example values.
    let mut signer = Signer::at(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        std::time::UNIX_EPOCH,
    );
    signer.amz_date = "20130524T000000Z".into();
    let (_, seed) = signer.authorization(
        "PUT",
        "/examplebucket/chunkObject.txt",
        "",
        &[
            ("content-encoding", "aws-chunked"),
            ("content-length", "66824"),
            ("host", "s3.amazonaws.com"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ],
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    );
    assert_eq!(
        seed,
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    );
    let c1 = signer.chunk_signature(&seed, &[b'a'; 65536]);
    assert_eq!(
        c1,
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    );
    let c2 = signer.chunk_signature(&c1, &[b'a'; 1024]);
    assert_eq!(
        c2,
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    );
    let c3 = signer.chunk_signature(&c2, b"");
    assert_eq!(
        c3,
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
    );
    // "... Including Trailing Headers": the chunks and the trailer's signature from its seed.
    let seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";
    let c1 = signer.chunk_signature(seed, &[b'a'; 65536]);
    assert_eq!(
        c1,
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2"
    );
    let c2 = signer.chunk_signature(&c1, &[b'a'; 1024]);
    assert_eq!(
        c2,
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7"
    );
    let c3 = signer.chunk_signature(&c2, b"");
    assert_eq!(
        c3,
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
    );
    assert_eq!(
        signer.trailer_signature(&c3, "x-amz-checksum-crc32c:sOO8/Q==\n"),
        "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
    );
}

/// A checksum of `data` in base64, by its `x-amz-checksum-` name.
fn checksum_b64(name: &str, data: &[u8]) -> String {
    let mut h = s3s::checksum::ChecksumHasher::default();
    match name {
        "crc32" => h.crc32 = Some(Default::default()),
        "crc32c" => h.crc32c = Some(Default::default()),
        "crc64nvme" => h.crc64nvme = Some(Default::default()),
        "sha1" => h.sha1 = Some(Default::default()),
        _ => h.sha256 = Some(Default::default()),
    }
    h.update(data);
    let sums = h.finalize();
    [
        sums.checksum_crc32,
        sums.checksum_crc32c,
        sums.checksum_crc64nvme,
        sums.checksum_sha1,
        sums.checksum_sha256,
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap()
}

#[tokio::test]
async fn every_checksum_trailer_is_verified_in_the_signed_trailer_form() {
    let g = door_gateway("").await;
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let data = random_bytes(150_000, 8);
    let decoded = data.len().to_string();
    for name in ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"] {
        for good in [true, false] {
            let key = format!("signed-trailer-{name}-{good}.bin");
            let value = if good {
                checksum_b64(name, &data)
            } else {
                checksum_b64(name, b"other bytes")
            };
            let trailer_name = format!("x-amz-checksum-{name}");
            let sent = send_signed(
                &g,
                &admin,
                "PUT",
                &format!("/{NAME}/{key}"),
                &[
                    ("content-encoding", "aws-chunked"),
                    ("x-amz-decoded-content-length", decoded.as_str()),
                    ("x-amz-trailer", trailer_name.as_str()),
                ],
                &[],
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                |seed| {
                    // Signed chunks, the final one's signature, then the signed trailer.
                    let mut body = Vec::new();
                    let mut previous = seed.to_owned();
                    for chunk in data.chunks(65536) {
                        let sig = admin.chunk_signature(&previous, chunk);
                        body.extend(format!("{:x};chunk-signature={sig}\r\n", chunk.len()).as_bytes());
                        body.extend(chunk);
                        body.extend(b"\r\n");
                        previous = sig;
                    }
                    let last = admin.chunk_signature(&previous, b"");
                    let trailer = format!("{trailer_name}:{value}");
                    let signature = admin.trailer_signature(&last, &format!("{trailer}\n"));
                    body.extend(
                        format!(
                            "0;chunk-signature={last}\r\n{trailer}\r\nx-amz-trailer-signature:{signature}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    body
                },
            )
            .await;
            if good {
                assert_eq!(sent.status, StatusCode::OK, "{name}: {}", sent.body);
                assert_eq!(
                    g.bucket_object(&key).await.as_deref(),
                    Some(&data[..]),
                    "{name}"
                );
            } else {
                assert_eq!(
                    sent.code.as_deref(),
                    Some("BadDigest"),
                    "{name}: {}",
                    sent.body
                );
                assert_eq!(g.bucket_object(&key).await, None, "{name}");
            }
        }
    }
}

#[tokio::test]
async fn signed_chunks_are_each_verified() {
    let g = door_gateway("").await;
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let data = random_bytes(200_000, 3);
    let decoded = data.len().to_string();
    let put = |key: &'static str, tamper: bool| {
        let data = data.clone();
        let decoded = decoded.clone();
        let admin = &admin;
        let g = &g;
        async move {
            send_signed(
                g,
                admin,
                "PUT",
                &format!("/{NAME}/{key}"),
                &[
                    ("content-encoding", "aws-chunked"),
                    ("x-amz-decoded-content-length", decoded.as_str()),
                ],
                &[],
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                |seed| {
                    let mut body = admin.signed_chunks(seed, &data, 65536);
                    if tamper {
                        // One byte of the second chunk's data changes; its signature does not.
                        let at = body.len() / 2;
                        body[at] ^= 1;
                    }
                    body
                },
            )
            .await
        }
    };
    let ok = put("chunks.bin", false).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(
        g.bucket_object("chunks.bin").await.as_deref(),
        Some(&data[..])
    );
    let tampered = put("tampered.bin", true).await;
    assert_eq!(
        tampered.code.as_deref(),
        Some("SignatureDoesNotMatch"),
        "{}",
        tampered.body
    );
    assert_eq!(g.bucket_object("tampered.bin").await, None);
    assert!(g.pending_uploads().await.is_empty());
}

#[tokio::test]
async fn a_chunk_over_16_mib_is_refused_before_its_data() {
    let g = door_gateway("").await;
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let sent = send_signed(
        &g,
        &admin,
        "PUT",
        "/files/huge-chunk.bin",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "16777217"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ],
        &[],
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        // The header claims 16 MiB + 1; only a little data follows.
        |_| b"1000001\r\nabc".to_vec(),
    )
    .await;
    assert_eq!(
        sent.code.as_deref(),
        Some("EntityTooLarge"),
        "{}",
        sent.body
    );
    assert_eq!(g.bucket_object("huge-chunk.bin").await, None);
}

#[tokio::test]
async fn what_the_door_never_does_for_a_client_is_refused() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    let acl = s3
        .put_object()
        .bucket(NAME)
        .key("acl.txt")
        .acl(aws_sdk_s3::types::ObjectCannedAcl::PublicRead)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&acl), "AccessDenied");
    s3.put_object()
        .bucket(NAME)
        .key("private.txt")
        .acl(aws_sdk_s3::types::ObjectCannedAcl::Private)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let ssec = s3
        .put_object()
        .bucket(NAME)
        .key("ssec.txt")
        .sse_customer_algorithm("AES256")
        .sse_customer_key("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
        .sse_customer_key_md5("zZ5FnqcIqUjVwvWmyog4zw==")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&ssec), "AccessDenied");
    let tagged = s3
        .put_object()
        .bucket(NAME)
        .key("tagged.txt")
        .tagging("a=b")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&tagged), "AccessDenied");
    assert_eq!(g.bucket_keys().await, ["private.txt"]);

    // An x-amz-* header added after signing.
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let sent = send_signed(
        &g,
        &admin,
        "PUT",
        "/files/unsigned.txt",
        &[],
        &[("x-amz-meta-sneaky", "1")],
        "UNSIGNED-PAYLOAD",
        |_| b"x".to_vec(),
    )
    .await;
    assert_eq!(sent.code.as_deref(), Some("AccessDenied"), "{}", sent.body);
    // SigV2 and a browser POST policy.
    let door = g.door_url.clone().unwrap();
    let v2 = g
        .http
        .get(format!("{door}/files/private.txt"))
        .header("authorization", format!("AWS {ADMIN_AK}:c2lnbmF0dXJl"))
        .header(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), StatusCode::BAD_REQUEST);
    assert!(
        v2.text()
            .await
            .unwrap()
            .contains("<Code>InvalidRequest</Code>")
    );
    let post = g
        .http
        .post(format!("{door}/files"))
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nposted.txt\r\n--xyz--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(g.bucket_keys().await, ["private.txt"]);
}

#[tokio::test]
async fn presigned_urls_work_within_the_cap() {
    use aws_sdk_s3::presigning::PresigningConfig;
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    let put = s3
        .put_object()
        .bucket(NAME)
        .key("presigned.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let resp = g.http.put(put.uri()).body("by url").send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
    let get = s3
        .get_object()
        .bucket(NAME)
        .key("presigned.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let resp = g.http.get(get.uri()).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "by url");
    // Longer than s3_api.max_presign_ttl (1 h here).
    let long = s3
        .get_object()
        .bucket(NAME)
        .key("presigned.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(7200)).unwrap())
        .await
        .unwrap();
    let resp = g.http.get(long.uri()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("AuthorizationQueryParametersError")
    );
    // Expired.
    let old = s3
        .get_object()
        .bucket(NAME)
        .key("presigned.txt")
        .presigned(
            PresigningConfig::builder()
                .start_time(std::time::SystemTime::now() - Duration::from_secs(120))
                .expires_in(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let resp = g.http.get(old.uri()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A tampered key.
    let tampered = get.uri().replace("presigned.txt", "presigned.txu");
    let resp = g.http.get(tampered).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("SignatureDoesNotMatch"));
}

#[tokio::test]
async fn rate_limits_are_slow_down_with_retry_after() {
    let g = door_gateway(
        r#"
[[principals]]
name = "slow"
allow = ["get", "list"]
rate_limit = { requests_per_second = 1, burst = 1 }
s3_access_keys = ["PCAKSLOW00000000000A"]
"#,
    )
    .await;
    // The SDK retries SlowDown itself; take one attempt to see the answer.
    let s3 = one_attempt(&door_client(&g, "PCAKSLOW00000000000A"));
    s3.list_objects_v2().bucket(NAME).send().await.unwrap();
    let e = s3.list_objects_v2().bucket(NAME).send().await.unwrap_err();
    assert_eq!(s3_code(&e), "SlowDown");
    let raw = e.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    assert!(raw.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_reload_revokes_a_removed_access_key() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ALICE_AK);
    s3.list_objects_v2()
        .bucket(NAME)
        .prefix("users/alice/")
        .send()
        .await
        .unwrap();
    let mut revoked = g.config.clone();
    revoked
        .principals
        .iter_mut()
        .find(|p| p.name == "alice")
        .unwrap()
        .s3_access_keys
        .clear();
    g.gateway.reload(&revoked).unwrap();
    let e = s3
        .list_objects_v2()
        .bucket(NAME)
        .prefix("users/alice/")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "InvalidAccessKeyId");
}

#[tokio::test]
async fn the_sweep_leaves_uploads_a_client_is_still_sending() {
    let g = door_gateway("").await;
    let s3 = door_client(&g, ADMIN_AK);
    let start = |key: &'static str| {
        let s3 = s3.clone();
        async move {
            let id = s3
                .create_multipart_upload()
                .bucket(NAME)
                .key(key)
                .send()
                .await
                .unwrap()
                .upload_id
                .unwrap();
            s3.upload_part()
                .bucket(NAME)
                .key(key)
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from(random_bytes(5 << 20, 1)))
                .send()
                .await
                .unwrap();
            id
        }
    };
    let alive = start("alive.bin").await;
    start("abandoned.bin").await;
    // S3 keeps times to the second: both uploads start well before the sweep's cut-off.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    s3.upload_part()
        .bucket(NAME)
        .key("alive.bin")
        .upload_id(&alive)
        .part_number(2)
        .body(ByteStream::from_static(b"more"))
        .send()
        .await
        .unwrap();
    let aborted = g
        .backend
        .sweep_abandoned_uploads(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(aborted, 1);
    assert_eq!(g.pending_uploads().await, ["alive.bin"]);
}

#[tokio::test]
async fn virtual_hosted_style_when_a_domain_is_set() {
    let g = door_gateway_tweaked("", |c| {
        c.s3_api.as_mut().unwrap().domain = Some("s3.portcullis.test".into());
    })
    .await;
    let s3 = door_client(&g, ADMIN_AK);
    put_static(&s3, "vh.txt", b"virtual").await.unwrap();
    // The same object named by the host.
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let port = g
        .door_url
        .as_ref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let host = format!("{NAME}.s3.portcullis.test:{port}");
    let empty = hex_sha256(b"");
    let signed = [
        ("host", host.as_str()),
        ("x-amz-date", admin.amz_date.as_str()),
        ("x-amz-content-sha256", empty.as_str()),
    ];
    let (authorization, _) = admin.authorization("GET", "/vh.txt", "", &signed, &empty);
    let client = reqwest::Client::builder()
        .resolve(
            &format!("{NAME}.s3.portcullis.test"),
            g.door_url
                .as_ref()
                .unwrap()
                .trim_start_matches("http://")
                .parse()
                .unwrap(),
        )
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://{host}/vh.txt"))
        .header("authorization", authorization)
        .header("x-amz-date", &admin.amz_date)
        .header("x-amz-content-sha256", &empty)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "virtual");
}

#[tokio::test]
async fn a_host_named_like_the_bucket_is_still_path_style_without_a_domain() {
    let g = door_gateway("").await;
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let addr = g
        .door_url
        .as_ref()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let host = format!("{NAME}.example.test:{port}");
    let payload = hex_sha256(b"path style");
    let signed = [
        ("host", host.as_str()),
        ("x-amz-date", admin.amz_date.as_str()),
        ("x-amz-content-sha256", payload.as_str()),
    ];
    let (authorization, _) =
        admin.authorization("PUT", "/files/host-check.txt", "", &signed, &payload);
    let client = reqwest::Client::builder()
        .resolve(&format!("{NAME}.example.test"), addr.parse().unwrap())
        .build()
        .unwrap();
    let resp = client
        .put(format!("http://{host}/files/host-check.txt"))
        .header("authorization", authorization)
        .header("x-amz-date", &admin.amz_date)
        .header("x-amz-content-sha256", &payload)
        .body("path style")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(
        g.bucket_object("host-check.txt").await.as_deref(),
        Some(&b"path style"[..])
    );
}

/// An aws-chunked body arrives at s3s's pace, a chunk at a time; its idle timeout is kept on
/// the client's own bytes, so a slow client sending a large chunk is not taken for a silent
/// one, and a silent one is still cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chunk_is_not_idle_and_a_silent_client_is() {
    let g = door_gateway("[server]\nbody_idle_timeout = \"1s\"\n").await;
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let data = random_bytes(64 * 1024, 4);
    let decoded = data.len().to_string();
    let trailer = format!("x-amz-checksum-crc32:{}", crc32_b64(&data));
    // The whole body in 4 KiB pieces, one every `gap`, and a pause of `stall` before the last.
    let paced = |gap: u64, stall: u64| {
        let body = unsigned_chunks_with_trailer(&data, data.len(), &trailer);
        let pieces: Vec<Vec<u8>> = body.chunks(4096).map(<[u8]>::to_vec).collect();
        let last = pieces.len() - 1;
        let stream = futures_util::stream::iter(pieces.into_iter().enumerate()).then(
            move |(i, piece)| async move {
                let wait = if i == last { stall } else { gap };
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Ok::<_, std::io::Error>(piece)
            },
        );
        reqwest::Body::wrap_stream(stream)
    };
    let put = |key: &'static str, gap: u64, stall: u64| {
        let (g, admin, decoded) = (&g, &admin, decoded.clone());
        async move {
            send_signed(
                g,
                admin,
                "PUT",
                &format!("/{NAME}/{key}"),
                &[
                    ("content-encoding", "aws-chunked"),
                    ("x-amz-decoded-content-length", decoded.as_str()),
                    ("x-amz-trailer", "x-amz-checksum-crc32"),
                ],
                &[],
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                |_| paced(gap, stall),
            )
            .await
        }
    };
    // 17 pieces 150 ms apart: 2.5 s for one chunk, never a second without a byte.
    let slow = put("slow-chunk.bin", 150, 150).await;
    assert_eq!(slow.status, StatusCode::OK, "{}", slow.body);
    assert_eq!(
        g.bucket_object("slow-chunk.bin").await.as_deref(),
        Some(&data[..])
    );
    // Silent for 2.5 s before its last bytes.
    let silent = put("silent.bin", 10, 2500).await;
    assert_eq!(
        silent.code.as_deref(),
        Some("RequestTimeout"),
        "{}",
        silent.body
    );
    assert_eq!(g.bucket_object("silent.bin").await, None);
}

/// The chunk s3s gathers is counted in `backend.upload_buffer_memory`: uploads wait for
/// room, and one whose chunk can get none is refused `SlowDown` with nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_being_gathered_draw_on_the_upload_memory_budget() {
    let g = door_gateway("[backend]\nupload_buffer_memory = \"5MiB\"\n").await;
    let admin = Signer::now(ADMIN_AK, &secret_of(ADMIN_AK));
    let put = |key: String, data: Vec<u8>, chunk: usize| {
        let (g, admin) = (&g, &admin);
        async move {
            let decoded = data.len().to_string();
            let trailer = format!("x-amz-checksum-crc32:{}", crc32_b64(&data));
            send_signed(
                g,
                admin,
                "PUT",
                &format!("/{NAME}/{key}"),
                &[
                    ("content-encoding", "aws-chunked"),
                    ("x-amz-decoded-content-length", decoded.as_str()),
                    ("x-amz-trailer", "x-amz-checksum-crc32"),
                ],
                &[],
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                |_| unsigned_chunks_with_trailer(&data, chunk, &trailer),
            )
            .await
        }
    };
    // Four uploads of 4 MiB chunks at once: never more than one chunk's room at a time,
    // and each waits its turn.
    let data = random_bytes(8 << 20, 6);
    let results = futures_util::future::join_all(
        (0..4).map(|i| put(format!("turns/{i}.bin"), data.clone(), 4 << 20)),
    )
    .await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.status, StatusCode::OK, "{i}: {}", r.body);
        assert_eq!(
            g.bucket_object(&format!("turns/{i}.bin")).await.as_deref(),
            Some(&data[..])
        );
    }
    // A chunk larger than the whole budget never gets room.
    let big = put(
        "too-big-a-chunk.bin".into(),
        random_bytes(6 << 20, 7),
        6 << 20,
    )
    .await;
    assert_eq!(big.code.as_deref(), Some("SlowDown"), "{}", big.body);
    assert_eq!(big.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(g.bucket_object("too-big-a-chunk.bin").await, None);
    assert_eq!(
        g.gateway.state().chunk_room.available_permits(),
        5 << 20,
        "every upload gave its room back"
    );
}

#[tokio::test]
async fn a_part_copied_from_an_object_is_held_to_the_same_rights_and_limits() {
    let g = door_gateway("").await;
    let admin = door_client(&g, ADMIN_AK);
    let alice = door_client(&g, ALICE_AK);
    let data = random_bytes(5 << 20, 12);
    for key in ["users/alice/src.bin", "users/bob/src.bin"] {
        put_bytes(&admin, key, data.clone()).await.unwrap();
    }
    let target = "users/alice/assembled.bin";
    let id = alice
        .create_multipart_upload()
        .bucket(NAME)
        .key(target)
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let copy = |n: i32, source: &str, range: Option<&str>| {
        alice
            .upload_part_copy()
            .bucket(NAME)
            .key(target)
            .upload_id(&id)
            .part_number(n)
            .copy_source(format!("{NAME}/{source}"))
            .set_copy_source_range(range.map(str::to_owned))
            .send()
    };
    // Another principal's object is not a source.
    let e = copy(1, "users/bob/src.bin", None).await.unwrap_err();
    assert_eq!(s3_code(&e), "AccessDenied");
    let p1 = copy(1, "users/alice/src.bin", None).await.unwrap();
    // alice's 6 MiB: 5 MiB copied, then 2 MiB more would be over.
    let e = copy(2, "users/alice/src.bin", Some("bytes=0-2097151"))
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "EntityTooLarge");
    let p2 = copy(2, "users/alice/src.bin", Some("bytes=0-1023"))
        .await
        .unwrap();
    let parts = [(1, p1), (2, p2)].map(|(n, out)| {
        CompletedPart::builder()
            .part_number(n)
            .e_tag(out.copy_part_result.unwrap().e_tag.unwrap())
            .build()
    });
    alice
        .complete_multipart_upload()
        .bucket(NAME)
        .key(target)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts.to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut want = data.clone();
    want.extend_from_slice(&data[..1024]);
    assert_eq!(g.bucket_object(target).await.as_deref(), Some(&want[..]));
    assert!(g.pending_uploads().await.is_empty());
}

#[tokio::test]
async fn a_page_can_use_the_doors_presigned_urls_under_cors() {
    use aws_sdk_s3::presigning::PresigningConfig;
    let g = door_gateway("[cors]\nallowed_origins = [\"https://app.example\"]\n").await;
    let door = g.door_url.clone().unwrap();
    let preflight = |origin: &'static str| {
        g.http
            .request(reqwest::Method::OPTIONS, format!("{door}/files/page.txt"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("<Code>AccessDenied</Code>")
    );

    let s3 = door_client(&g, ADMIN_AK);
    let put = s3
        .put_object()
        .bucket(NAME)
        .key("page.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let resp = g
        .http
        .put(put.uri())
        .header("origin", "https://app.example")
        .header("content-type", "text/plain")
        .body("from a page")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("etag")
    );
    assert_eq!(
        g.bucket_object("page.txt").await.as_deref(),
        Some(&b"from a page"[..])
    );
}
