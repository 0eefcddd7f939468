//! The object API end to end: a real gateway, a real S3 server (s3s-fs), spoken to over HTTP.

use std::time::Duration;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn put(g: &TestGateway, key: &str, auth: &str, body: Vec<u8>) -> reqwest::Response {
    g.call(Method::PUT, key, auth)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get(g: &TestGateway, key: &str, auth: &str) -> reqwest::Response {
    g.call(Method::GET, key, auth).send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> String {
    let request_id = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["request_id"], request_id.as_str(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_length_round_trip() {
    let g = gateway("").await;
    // A PNG signature, so sniffing agrees with the declared type.
    let mut data = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    data.extend(random_bytes(3 * 1024 * 1024 + 17, 1));
    let resp = g
        .call(Method::PUT, "users/alice/photo.png", ALICE)
        .header("content-type", "image/png")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["key"], "users/alice/photo.png");
    assert_eq!(v["size"], data.len() as u64);
    assert_eq!(v["content_type"], "image/png");
    let etag = v["etag"].as_str().unwrap().to_owned();

    let resp = get(&g, "users/alice/photo.png", ALICE).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert_eq!(h["etag"], etag.as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["cache-control"], "private");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("last-modified"));
    assert!(!h.contains_key("content-disposition"));
    assert_eq!(sha256(&resp.bytes().await.unwrap()), sha256(&data));

    let head = g
        .call(Method::HEAD, "users/alice/photo.png", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_goes_multipart_and_round_trips() {
    let g = gateway("").await;
    // Three 5 MiB parts and a bit: several parts, sent chunked in odd-sized pieces.
    let data = random_bytes(15 * 1024 * 1024 + 12345, 2);
    let resp = g
        .call(Method::PUT, "big/chunked.bin", ADMIN)
        .body(chunked_body(data.clone(), 100_003))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["size"], data.len() as u64);
    assert!(
        v["etag"].as_str().unwrap().ends_with("-4\""),
        "a 4-part upload: {v}"
    );

    let body = get(&g, "big/chunked.bin", ADMIN)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&body), sha256(&data));
    assert!(g.pending_uploads().await.is_empty());

    // A chunked body smaller than one part is one PutObject.
    let small = random_bytes(1000, 3);
    let resp = g
        .call(Method::PUT, "big/small.bin", ADMIN)
        .body(chunked_body(small.clone(), 7))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert!(!v["etag"].as_str().unwrap().contains('-'), "{v}");
    assert_eq!(
        get(&g, "big/small.bin", ADMIN)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        small
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges() {
    let g = gateway("").await;
    let data: Vec<u8> = (0..100u8).collect();
    assert_eq!(
        put(&g, "r", ADMIN, data.clone()).await.status(),
        StatusCode::OK
    );
    let ranged = |key: &'static str, r: &'static str| {
        g.call(Method::GET, key, ADMIN).header("range", r).send()
    };
    let range = |r: &'static str| ranged("r", r);

    let resp = range("bytes=10-19").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 10-19/100");
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[10..20].to_vec());

    let resp = range("bytes=-5").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[95..].to_vec());

    let resp = range("bytes=90-").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[90..].to_vec());

    let resp = range("bytes=500-600").await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(resp).await, "range_not_satisfiable");

    for bad in ["bytes=0-1,5-6", "bytes=9-2", "lines=1-2", "bytes=x-"] {
        let resp = range(bad).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(resp).await, "invalid_range");
    }

    // Any range of an empty object is unsatisfiable, as on S3 (s3s-fs alone panics on the
    // suffix range; the embedded backend answers first).
    let resp = g
        .call(Method::PUT, "empty", ADMIN)
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for r in ["bytes=-5", "bytes=0-", "bytes=0-0"] {
        let resp = ranged("empty", r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{r}");
        assert_eq!(error_code(resp).await, "range_not_satisfiable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_reads() {
    let g = gateway("").await;
    let resp = put(&g, "c", ADMIN, b"hello".to_vec()).await;
    let etag = resp.json::<Value>().await.unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let req = || g.call(Method::GET, "c", ADMIN);

    let resp = req().header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = req()
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    assert_eq!(
        req()
            .header("if-modified-since", &future)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        req()
            .header("if-modified-since", &past)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let head = g
        .call(Method::HEAD, "c", ADMIN)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_MODIFIED);

    let resp = req().header("if-match", "\"nope\"").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(resp).await, "precondition_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes() {
    let g = gateway("").await;
    let create = |body: &'static [u8]| {
        g.call(Method::PUT, "w", ADMIN)
            .header("if-none-match", "*")
            .body(body)
            .send()
    };
    let resp = create(b"first").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let etag = resp.json::<Value>().await.unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = create(b"second").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(resp).await, "precondition_failed");
    assert_eq!(g.bucket_object("w").await.unwrap(), b"first");

    let replace = |etag: &str, body: &'static [u8]| {
        g.call(Method::PUT, "w", ADMIN)
            .header("if-match", etag)
            .body(body)
            .send()
    };
    assert_eq!(
        replace("\"0000\"", b"third").await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(g.bucket_object("w").await.unwrap(), b"first");
    assert_eq!(
        replace(&etag, b"fourth").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(g.bucket_object("w").await.unwrap(), b"fourth");

    // Create-only on a chunked multipart body is checked at completion.
    let data = random_bytes(6 * 1024 * 1024, 9);
    let resp = g
        .call(Method::PUT, "w", ADMIN)
        .header("if-none-match", "*")
        .body(chunked_body(data, 65536))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(g.bucket_object("w").await.unwrap(), b"fourth");
    assert!(g.settle_uploads().await.is_empty());

    let resp = g
        .call(Method::PUT, "w", ADMIN)
        .header("if-none-match", "\"x\"")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_round_trip_through_every_route() {
    let g = gateway("").await;
    let keys = [
        "users/alice/a b.png",
        "users/alice/plus+sign",
        "users/alice/(paren):colon",
        "users/alice/100%done",
        "users/alice/at@amp&q?hash#eq=",
        "users/alice/excl!quote'star*",
        "users/alice/été/日本語/ñ",
        "users/alice/%2F-literal",
        "users/alice/semi;comma,tilde~",
    ];
    for (i, key) in keys.iter().enumerate() {
        let body = format!("body {i}").into_bytes();
        let resp = put(&g, key, ALICE, body.clone()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{key}");
        assert_eq!(resp.json::<Value>().await.unwrap()["key"], *key);
        let resp = get(&g, key, ALICE).await;
        assert_eq!(resp.status(), StatusCode::OK, "{key}");
        assert_eq!(resp.bytes().await.unwrap().to_vec(), body, "{key}");
        let head = g.call(Method::HEAD, key, ALICE).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "{key}");
    }
    let mut in_bucket = g.bucket_keys().await;
    in_bucket.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(
        in_bucket, expected,
        "the bucket holds exactly the keys sent"
    );

    let listed: Value = g
        .http
        .get(format!("{}/v1/objects?limit=1000", g.url))
        .header("authorization", bearer(ALICE))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut listed: Vec<String> = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, expected);

    for key in keys {
        let resp = g.call(Method::DELETE, key, ALICE).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{key}");
        assert_eq!(
            get(&g, key, ALICE).await.status(),
            StatusCode::NOT_FOUND,
            "{key}"
        );
    }
    assert!(g.bucket_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication() {
    let g = gateway("").await;
    let resp = g
        .http
        .get(g.object_url("users/alice/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(resp).await, "unauthenticated");

    for header in ["Bearer wrong-key", "Basic YWxpY2U6eA==", "Bearer ", ALICE] {
        let resp = g
            .http
            .get(g.object_url("users/alice/x"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert_eq!(error_code(resp).await, "unauthenticated");
    }
    // Listing and every method are behind the same gate.
    let resp = g
        .http
        .get(format!("{}/v1/objects", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = g
        .http
        .put(g.object_url("users/alice/x"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(g.bucket_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_the_same_whether_or_not_the_object_exists() {
    let g = gateway("").await;
    assert_eq!(
        put(&g, "users/bob/exists", ADMIN, b"bob".to_vec())
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        put(&g, "users/alice/exists", ADMIN, b"alice".to_vec())
            .await
            .status(),
        StatusCode::OK
    );

    // Outside the prefix: 403 whether or not the key exists, with identical bodies but the id.
    let a = get(&g, "users/bob/exists", ALICE).await;
    let b = get(&g, "users/bob/missing", ALICE).await;
    assert_eq!(a.status(), StatusCode::FORBIDDEN);
    assert_eq!(b.status(), StatusCode::FORBIDDEN);
    let strip = |v: Value| {
        let mut v = v;
        v["error"]["request_id"] = Value::Null;
        v
    };
    assert_eq!(
        strip(a.json().await.unwrap()),
        strip(b.json().await.unwrap())
    );
    // A prefix that only looks like alice's.
    assert_eq!(
        get(&g, "users/alicex/exists", ALICE).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(&g, "users/bob/new", ALICE, b"x".to_vec())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    // Missing permission: the reader may get but not put or delete.
    assert_eq!(
        get(&g, "users/alice/exists", READER).await.status(),
        StatusCode::OK
    );
    let resp = put(&g, "users/alice/exists", READER, b"overwrite".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(resp).await, "forbidden");
    let resp = g
        .call(Method::DELETE, "users/alice/exists", READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = g
        .call(Method::DELETE, "users/alice/missing", READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        g.bucket_object("users/alice/exists").await.unwrap(),
        b"alice"
    );
    assert_eq!(g.bucket_object("users/bob/exists").await.unwrap(), b"bob");
    assert!(!g.bucket_keys().await.contains(&"users/bob/new".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_are_refused_before_s3() {
    let g = gateway("").await;
    let long = "a".repeat(1025);
    let cases: Vec<(&str, String)> = vec![
        ("empty segment", "users/alice//x".into()),
        ("trailing slash", "users/alice/x/".into()),
        ("dot segment", "users/alice/./x".into()),
        ("dot-dot segment", "users/alice/../bob/x".into()),
        ("encoded dot-dot", "users/alice/%2E%2E/bob/x".into()),
        (
            "encoded slash dot-dot",
            "users/alice/x%2F..%2F..%2Fbob".into(),
        ),
        ("leading slash", "%2Fusers/alice/x".into()),
        ("backslash", "users/alice/a%5Cb".into()),
        ("control character", "users/alice/a%0Ab".into()),
        ("NUL", "users/alice/a%00b".into()),
        ("DEL", "users/alice/a%7Fb".into()),
        ("invalid UTF-8", "users/alice/%FF%FE".into()),
        ("bad escape", "users/alice/100%zz".into()),
        ("too long", format!("users/alice/{long}")),
    ];
    // Raw HTTP: a client library would normalize `.` and `..` away before sending.
    for (what, path) in cases {
        for method in ["GET", "HEAD", "PUT", "DELETE"] {
            let raw = format!(
                "{method} /v1/objects/{path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
            );
            let out = g.raw(raw.as_bytes(), Duration::from_secs(10)).await;
            assert!(out.starts_with("HTTP/1.1 400"), "{what} ({method}): {out}");
            if method != "HEAD" {
                assert!(
                    out.contains("\"code\":\"invalid_key\""),
                    "{what} ({method}): {out}"
                );
            }
        }
    }
    assert!(g.bucket_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_paginates_within_the_prefix() {
    let g = gateway("").await;
    for i in 0..5 {
        assert_eq!(
            put(
                &g,
                &format!("users/alice/f{i}"),
                ALICE,
                vec![i; i as usize + 1]
            )
            .await
            .status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        put(&g, "users/bob/secret", ADMIN, b"s".to_vec())
            .await
            .status(),
        StatusCode::OK
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/v1/objects?limit=2", g.url);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = g
            .http
            .get(&url)
            .header("authorization", bearer(READER))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = resp.json().await.unwrap();
        pages += 1;
        for o in v["objects"].as_array().unwrap() {
            assert!(
                o["size"].as_u64().is_some() && o["last_modified"].as_str().is_some(),
                "{o}"
            );
            seen.push(o["key"].as_str().unwrap().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(
        seen,
        (0..5)
            .map(|i| format!("users/alice/f{i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(pages, 3);

    let list = |q: &str, key: &str| {
        g.http
            .get(format!("{}/v1/objects?{q}", g.url))
            .header("authorization", bearer(key))
            .send()
    };
    // A narrower prefix is fine; another principal's or the whole bucket is not.
    let v: Value = list("prefix=users%2Falice%2Ff3", READER)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["objects"].as_array().unwrap().len(), 1);
    assert_eq!(
        list("prefix=users%2Fbob%2F", READER)
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        list("prefix=", READER).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        list("prefix=users%2Fali", READER).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // Admin sees everything.
    let v: Value = list("", ADMIN).await.unwrap().json().await.unwrap();
    assert_eq!(v["objects"].as_array().unwrap().len(), 6);
    // Bad parameters.
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=***",
        "delimiter=%2F",
        "prefix=a&prefix=b",
    ] {
        let resp = list(q, ADMIN).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(error_code(resp).await, "bad_request");
    }
    // A principal without `list`.
    let resp = g
        .http
        .get(format!("{}/v1/objects", g.url))
        .header("authorization", bearer(ALICE))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_411_405_404_and_query_strings() {
    let g = gateway("").await;
    let auth = bearer(ADMIN);
    // Neither Content-Length nor chunked: 411.
    let raw = format!(
        "PUT /v1/objects/x HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    let out = g.raw(raw.as_bytes(), Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 411"), "{out}");
    assert!(out.contains("length_required"), "{out}");

    let resp = g
        .http
        .post(g.object_url("x"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD, PUT, DELETE");
    assert_eq!(error_code(resp).await, "method_not_allowed");
    let resp = g
        .http
        .delete(format!("{}/v1/objects", g.url))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");

    let resp = get(&g, "nothing/here", ADMIN).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "not_found");
    let resp = g
        .http
        .head(g.object_url("nothing/here"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = g
        .http
        .get(format!("{}/nowhere", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Deleting twice is fine, as on S3.
    assert_eq!(
        put(&g, "d", ADMIN, b"x".to_vec()).await.status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        let resp = g
            .http
            .delete(g.object_url("d"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }

    // S3 sub-resources can never ride along.
    for q in [
        "acl",
        "uploads",
        "versionId=1",
        "response-content-type=text/html",
        "tagging",
    ] {
        let url = format!("{}?{q}", g.object_url("q"));
        let resp = g
            .http
            .put(&url)
            .header("authorization", &auth)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        let resp = g
            .http
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    assert!(!g.bucket_keys().await.contains(&"q".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_amz_headers_are_never_forwarded() {
    let g = gateway("").await;
    let resp = g
        .call(Method::PUT, "users/alice/h", ADMIN)
        .header("x-amz-website-redirect-location", "https://evil.example/")
        .header("x-amz-acl", "public-read")
        .header("x-amz-meta-owner", "mallory")
        .header("x-amz-tagging", "a=b")
        .header("x-amz-copy-source", "test-bucket/users/bob/secret")
        .header("x-amz-server-side-encryption-customer-algorithm", "AES256")
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let head =
        g.s3.head_object()
            .bucket(BUCKET)
            .key("users/alice/h")
            .send()
            .await
            .unwrap();
    assert_eq!(head.website_redirect_location(), None);
    assert!(
        head.metadata().is_none_or(|m| m.is_empty()),
        "{:?}",
        head.metadata()
    );
    assert_eq!(g.bucket_object("users/alice/h").await.unwrap(), b"plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_content_is_an_attachment() {
    let g = gateway("").await;
    let resp = g
        .call(Method::PUT, "users/alice/page.html", ALICE)
        .header("content-type", "text/html; charset=utf-8")
        .body("<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get(&g, "users/alice/page.html", ALICE).await;
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let cd = resp.headers()["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("attachment"), "{cd}");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids() {
    let g = gateway("").await;
    let resp = g
        .http
        .get(g.object_url("x"))
        .header("x-request-id", "client-id.42:abc_DEF")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id.42:abc_DEF");
    assert_eq!(error_code(resp).await, "unauthenticated");
    for bad in ["has space", &"x".repeat(65), "quote\"", "semi;colon"] {
        let resp = g
            .http
            .get(g.object_url("x"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert!(!id.is_empty() && id.len() <= 64);
    }
    let a = g
        .http
        .get(format!("{}/nowhere", g.url))
        .send()
        .await
        .unwrap();
    let b = g
        .http
        .get(format!("{}/nowhere", g.url))
        .send()
        .await
        .unwrap();
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
}

/// h2 downloads go out in writes gathered from several frames (`server/coalesce.rs`): every
/// size around the 16 KiB frames and the 64 KiB batches arrives whole, side by side on one
/// connection, ranges too, and none waits for a flush that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_downloads_of_every_size_arrive_whole_side_by_side() {
    let g = gateway("").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let sizes = [
        1,
        8 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        64 * 1024 - 1,
        64 * 1024 + 9,
        200_001,
        1024 * 1024 + 7,
        3 * 1024 * 1024,
    ];
    for (i, size) in sizes.iter().enumerate() {
        g.call(Method::PUT, &format!("h2/{i}"), ADMIN)
            .body(random_bytes(*size, i as u64))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    for round in 0..2 {
        let gets = sizes.iter().enumerate().map(|(i, size)| {
            let (h2, url) = (h2.clone(), g.object_url(&format!("h2/{i}")));
            async move {
                let resp = h2
                    .get(url)
                    .header("authorization", bearer(ADMIN))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.version(), reqwest::Version::HTTP_2);
                let body = resp.bytes().await.unwrap();
                assert!(
                    body[..] == random_bytes(*size, i as u64)[..],
                    "round {round}, {size} bytes"
                );
            }
        });
        tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(gets),
        )
        .await
        .expect("every download ends");
    }
    let resp = h2
        .get(g.object_url("h2/7"))
        .header("authorization", bearer(ADMIN))
        .header("range", "bytes=70000-1000000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let body = resp.bytes().await.unwrap();
    assert!(body[..] == random_bytes(1024 * 1024 + 7, 7)[70000..=1_000_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge() {
    let g = gateway("").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let data = random_bytes(200_000, 5);
    let resp = h2
        .put(g.object_url("h2"))
        .header("authorization", bearer(ADMIN))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    // No content-length on HTTP/2: a streamed body, relayed as it comes.
    let resp = h2
        .put(g.object_url("h2s"))
        .header("authorization", bearer(ADMIN))
        .body(chunked_body(data.clone(), 4096))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = h2
        .get(g.object_url("h2s"))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&body), sha256(&data));
    // A HEAD answer has no body on h2 either, errors included (a DATA frame on a HEAD stream
    // is a protocol error to clients such as Go's).
    for key in ["h2s", "missing"] {
        let resp = h2
            .head(g.object_url(key))
            .header("authorization", bearer(ADMIN))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        if key == "h2s" {
            assert_eq!(resp.headers()["content-length"], "200000");
        }
        let body = resp.bytes().await;
        assert!(
            matches!(&body, Ok(b) if b.is_empty()),
            "{key} {status}: {body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_only_writes_of_one_key_create_it_once() {
    let g = gateway("").await;
    for round in 0..3 {
        let key = format!("race/{round}");
        let writers = (0..6u64).map(|i| {
            let req = g
                .call(Method::PUT, &key, ADMIN)
                .header("if-none-match", "*")
                .body(random_bytes(256 * 1024, i));
            async move {
                let resp = req.send().await.unwrap();
                let status = resp.status();
                if status != StatusCode::CREATED && status != StatusCode::PRECONDITION_FAILED {
                    eprintln!(
                        "writer {i}: {status}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
                (i, status)
            }
        });
        let answers = futures_util::future::join_all(writers).await;
        let created: Vec<u64> = answers
            .iter()
            .filter(|(_, s)| *s == StatusCode::CREATED)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(created.len(), 1, "round {round}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|(_, s)| *s == StatusCode::CREATED || *s == StatusCode::PRECONDITION_FAILED),
            "{answers:?}"
        );
        // What is stored is the one write that was told it created the key.
        assert_eq!(
            g.bucket_object(&key).await.unwrap(),
            random_bytes(256 * 1024, created[0])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_embedded_backend_cannot_hold_are_refused_before_a_write() {
    let g = gateway("").await;
    assert_eq!(
        put(&g, "clash/inner", ADMIN, b"inner".to_vec())
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        put(&g, "file", ADMIN, b"file".to_vec()).await.status(),
        StatusCode::OK
    );
    let long_segment = format!("long/{}", "s".repeat(300));
    let long_key = format!("deep/{}", "k/".repeat(80)) + "end";
    for key in [
        long_segment.as_str(),
        long_key.as_str(),
        "clash",
        "file/under",
    ] {
        for chunked in [false, true] {
            let req = g.call(Method::PUT, key, ADMIN);
            let req = if chunked {
                req.body(chunked_body(b"x".repeat(10), 4))
            } else {
                req.body("x")
            };
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::BAD_REQUEST,
                "{key} chunked={chunked}"
            );
            assert_eq!(error_code(resp).await, "invalid_key", "{key}");
        }
    }
    // Nothing was written, nothing overwritten, nothing left open.
    assert_eq!(g.bucket_keys().await, vec!["clash/inner", "file"]);
    assert_eq!(g.bucket_object("clash/inner").await.unwrap(), b"inner");
    assert_eq!(g.bucket_object("file").await.unwrap(), b"file");
    assert!(g.settle_uploads().await.is_empty());
    // A folder on disk is no object.
    assert_eq!(
        get(&g, "clash", ADMIN).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        g.call(Method::HEAD, "clash", ADMIN)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_with_tag_lists_if_range_and_long_suffixes() {
    let g = gateway("").await;
    let data: Vec<u8> = (0..100u8).collect();
    let resp = put(&g, "cond", ADMIN, data.clone()).await;
    let etag = resp.json::<Value>().await.unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let modified = get(&g, "cond", ADMIN).await.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();
    let with = |pairs: &[(&str, &str)]| {
        let mut r = g.call(Method::GET, "cond", ADMIN);
        for (k, v) in pairs {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let status = |pairs: &'static [(&'static str, &'static str)]| {
        let r = with(pairs);
        async move { r.await.unwrap().status() }
    };
    // A suffix longer than the object is the whole object.
    let resp = with(&[("range", "bytes=-500")]).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 0-99/100");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
    // Lists of tags.
    let listed = format!("\"x\", {etag}, W/\"y\"");
    let resp = with(&[("if-match", &listed)]).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        status(&[("if-match", "\"x\", \"y\"")]).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        with(&[("if-none-match", &listed)]).await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        status(&[("if-none-match", "\"x\", \"y\"")]).await,
        StatusCode::OK
    );
    let weak = format!("W/{etag}");
    assert_eq!(
        with(&[("if-none-match", &weak)]).await.unwrap().status(),
        StatusCode::NOT_MODIFIED,
        "If-None-Match compares weakly"
    );
    assert_eq!(
        status(&[("if-match", "\"a\"b")]).await,
        StatusCode::BAD_REQUEST
    );
    // If-Match beside a failing date: the tag decides.
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    let resp = with(&[("if-match", &listed), ("if-unmodified-since", &past)])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // If-Match on a missing key: 412, not 404.
    let missing = g
        .call(Method::GET, "no-such-key", ADMIN)
        .header("if-match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(missing).await, "precondition_failed");
    // If-Range: the range while the validator holds, the whole object once it does not.
    for validator in [etag.as_str(), modified.as_str()] {
        let resp = with(&[("range", "bytes=0-9"), ("if-range", validator)])
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{validator}");
        assert_eq!(resp.bytes().await.unwrap().to_vec(), data[..10].to_vec());
    }
    for stale in ["\"other\"", "Tue, 01 Jan 2019 00:00:00 GMT", "W/\"weak\""] {
        let resp = with(&[("range", "bytes=0-9"), ("if-range", stale)])
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{stale}");
        assert_eq!(resp.bytes().await.unwrap().to_vec(), data, "{stale}");
    }
    // PUT takes one tag.
    let resp = g
        .call(Method::PUT, "cond", ADMIN)
        .header("if-match", &listed)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(g.bucket_object("cond").await.unwrap(), data);
}
