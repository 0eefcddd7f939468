//! Every way an upload can fail leaves the bucket as it was: no new object, no partial
//! object, no unfinished multipart upload, the previous version intact.

use std::time::Duration;

use crate::common::*;
use portcullis::auth::hash_key;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PHOTOS: &str = "photos-key-0123456789";

fn photos() -> String {
    format!(
        "[[principals]]\nname = \"photos\"\napi_keys = [\"{}\"]\nallow = [\"put\", \"get\"]\nprefix = \"photos/\"\ncontent_types = [\"image/*\"]\n",
        hash_key(PHOTOS)
    )
}

async fn seed(g: &TestGateway, key: &str) -> Vec<u8> {
    let old = b"the previous version".to_vec();
    let resp = g
        .call(Method::PUT, key, ADMIN)
        .body(old.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    old
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_cut_and_aborted() {
    let g = gateway("").await;
    let key = "users/alice/too-big";
    let old = seed(&g, key).await;
    // alice may store 6 MiB; 12 MiB chunked crosses it after the first 5 MiB part was sent.
    let resp = g
        .call(Method::PUT, key, ALICE)
        .body(chunked_body(random_bytes(12 * 1024 * 1024, 1), 64 * 1024))
        .send()
        .await;
    // The client may see the connection reset before it reads the answer (it is still
    // sending); the access log says how the request ended either way.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
    }
    eventually("the cut upload is logged as payload_too_large", || async {
        g.access_log_lines().iter().any(|l| {
            l["key"] == key && l["status"] == 413 && l["error_code"] == "payload_too_large"
        })
    })
    .await;
    assert!(
        g.settle_uploads().await.is_empty(),
        "no unfinished multipart upload"
    );
    assert_eq!(
        g.bucket_object(key).await.unwrap(),
        old,
        "the previous version is intact"
    );
    assert_eq!(g.bucket_keys().await, vec![key.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_length_over_the_limit_is_refused_before_the_body() {
    let g = gateway("").await;
    let key = "users/alice/declared";
    let old = seed(&g, key).await;
    let raw = format!(
        "PUT /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        7 * 1024 * 1024
    );
    let out = g.raw(raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        out.starts_with("HTTP/1.1 413"),
        "the 413 comes first, no 100 Continue: {out}"
    );
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(out.contains("payload_too_large"), "{out}");
    assert_eq!(g.bucket_object(key).await.unwrap(), old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_outside_the_allowed_patterns_is_415() {
    let g = gateway(&photos()).await;
    let put = |ct: Option<&'static str>, body: &'static [u8]| {
        let mut r = g.call(Method::PUT, "photos/p", PHOTOS);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.body(body).send()
    };
    let code = |resp: reqwest::Response| async move {
        let status = resp.status();
        (
            status,
            resp.json::<Value>().await.unwrap()["error"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    };
    let refused = (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type".to_owned(),
    );
    // Declared types outside image/*.
    assert_eq!(
        code(put(Some("text/html"), HTML).await.unwrap()).await,
        refused
    );
    assert_eq!(
        code(put(Some("application/x-executable"), ELF).await.unwrap()).await,
        refused
    );
    let resp = put(Some("not a type"), b"x").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Sniffing: an HTML page, an executable, or text is never an image; a JPEG is not a PNG.
    assert_eq!(
        code(put(Some("image/png"), HTML).await.unwrap()).await,
        refused
    );
    assert_eq!(
        code(put(Some("image/gif"), ELF).await.unwrap()).await,
        refused
    );
    assert_eq!(
        code(put(Some("image/png"), b"plain text").await.unwrap()).await,
        refused
    );
    assert_eq!(
        code(put(Some("image/png"), JPEG).await.unwrap()).await,
        refused
    );
    // No Content-Type: the sniffed type decides; unknown content is octet-stream (refused here).
    assert_eq!(code(put(None, b"who knows").await.unwrap()).await, refused);
    assert_eq!(code(put(None, HTML).await.unwrap()).await, refused);
    assert!(
        g.bucket_keys().await.is_empty(),
        "nothing refused was stored"
    );

    let resp = put(Some("image/jpeg"), JPEG).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = put(None, PNG).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["content_type"],
        "image/png"
    );
    // The sniffed bytes still reached S3.
    assert_eq!(g.bucket_object("photos/p").await.unwrap(), PNG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_are_checked_while_streaming() {
    digests_checked_on(true).await;
}

/// The same on the SDK path, where the upload's failure must also be found in the SDK's
/// error chain to be blamed on the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_are_checked_while_streaming_through_the_sdk() {
    digests_checked_on(false).await;
}

async fn digests_checked_on(light_path: bool) {
    use base64::Engine;
    use sha2::Digest;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let g = gateway(&format!("[backend]\nlight_path = {light_path}\n")).await;
    assert_eq!(g.backend.light_path(), light_path);
    let key = "users/alice/digest";
    let old = seed(&g, key).await;
    let data = random_bytes(6 * 1024 * 1024 + 3, 31);
    let sha = sha2::Sha256::digest(&data);
    let md5 = md5::Md5::digest(&data);
    let mut wrong = data.clone();
    *wrong.last_mut().unwrap() ^= 1;

    // Every form, known length and chunked, with the right and then a wrong body.
    let forms: Vec<(&str, String)> = vec![
        ("content-md5", b64(&md5)),
        ("x-amz-checksum-sha256", b64(&sha)),
        ("repr-digest", format!("sha-256=:{}:", b64(&sha))),
    ];
    for (name, value) in &forms {
        for chunked in [false, true] {
            let body = |b: Vec<u8>| {
                if chunked {
                    chunked_body(b, 65536)
                } else {
                    reqwest::Body::from(b)
                }
            };
            let resp = g
                .call(Method::PUT, key, ADMIN)
                .header(*name, value)
                .body(body(wrong.clone()))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::BAD_REQUEST,
                "{name} chunked={chunked}"
            );
            assert_eq!(
                resp.json::<Value>().await.unwrap()["error"]["code"],
                "bad_digest"
            );
            assert_eq!(
                g.bucket_object(key).await.unwrap(),
                old,
                "{name} chunked={chunked}: nothing stored"
            );
            assert!(g.settle_uploads().await.is_empty());

            let resp = g
                .call(Method::PUT, key, ADMIN)
                .header(*name, value)
                .body(body(data.clone()))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{name} chunked={chunked}");
            assert_eq!(sha256(&g.bucket_object(key).await.unwrap()), sha256(&data));
            seed(&g, key).await;
        }
    }
    let resp = g
        .call(Method::PUT, key, ADMIN)
        .header("content-md5", "not base64!")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "bad_digest"
    );

    // The access log records the SHA-256 the gateway computed.
    let hex_sha = hex::encode(sha);
    eventually("the access log has the SHA-256", || async {
        g.access_log_lines()
            .iter()
            .any(|l| l["sha256"] == hex_sha.as_str())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_408_and_aborted() {
    let g = gateway("[server]\nbody_idle_timeout = \"1s\"\n").await;
    let key = "users/alice/stalled";
    let old = seed(&g, key).await;
    for chunked in [false, true] {
        let head = if chunked {
            format!(
                "PUT /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
        } else {
            format!(
                "PUT /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 20000000\r\n\r\n"
            )
        };
        // 6 MiB (a multipart part has gone out when chunked), then silence.
        let mut body = Vec::new();
        for _ in 0..96 {
            if chunked {
                body.extend_from_slice(b"10000\r\n");
            }
            body.extend_from_slice(&random_bytes(65536, 4));
            if chunked {
                body.extend_from_slice(b"\r\n");
            }
        }
        let mut s = TcpStream::connect(g.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut out = Vec::new();
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "chunked={chunked}: {out}");
        assert!(out.contains("body_timeout"), "{out}");
        assert!(g.settle_uploads().await.is_empty());
        assert_eq!(g.bucket_object(key).await.unwrap(), old);
    }
}

/// Sends the head and part of a body, then drops the connection.
async fn disconnect_midway(g: &TestGateway, head: &str, body: &[u8]) {
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_mid_chunked_body_leaves_nothing() {
    let g = gateway("").await;
    let key = "users/alice/cut-chunked";
    let old = seed(&g, key).await;
    let head = format!(
        "PUT /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // 5.5 MiB of chunks: the first part has gone to S3 as a multipart upload.
    let mut body = Vec::new();
    for _ in 0..88 {
        body.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        body.extend_from_slice(&random_bytes(65536, 7));
        body.extend_from_slice(b"\r\n");
    }
    disconnect_midway(&g, &head, &body).await;
    eventually("the cut upload is logged as client_closed", || async {
        g.access_log_lines().iter().any(|l| {
            l["key"] == key
                && l["method"] == "PUT"
                && l["status"] == 499
                && l["error_code"] == "client_closed"
        })
    })
    .await;
    assert!(
        g.settle_uploads().await.is_empty(),
        "the multipart upload was aborted"
    );
    assert_eq!(g.bucket_object(key).await.unwrap(), old);
    assert_eq!(g.bucket_keys().await, vec![key.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_mid_known_length_body_leaves_nothing() {
    let g = gateway("").await;
    let key = "users/alice/cut-known";
    let old = seed(&g, key).await;
    let head = format!(
        "PUT /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 1000000\r\n\r\n"
    );
    disconnect_midway(&g, &head, &random_bytes(400_000, 8)).await;
    // Logged as the client's leaving (499), not as a bad request; seen, so it was handled.
    eventually("the cut upload is logged as client_closed", || async {
        g.access_log_lines().iter().any(|l| {
            l["key"] == key
                && l["method"] == "PUT"
                && l["status"] == 499
                && l["error_code"] == "client_closed"
        })
    })
    .await;
    assert_eq!(g.bucket_object(key).await.unwrap(), old);
    assert_eq!(g.bucket_keys().await, vec![key.to_string()]);
    assert!(g.settle_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_content_length_is_not_stored() {
    let g = gateway("").await;
    let key = "users/alice/liar";
    // Claims 100 bytes, sends 10, then half-closes: the body ends early.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "PUT /v1/objects/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    // Handled (the body ended before its length: the client went away), and nothing stored.
    eventually("the short upload is logged", || async {
        g.access_log_lines()
            .iter()
            .any(|l| l["key"] == key && l["status"] == 499 && l["error_code"] == "client_closed")
    })
    .await;
    assert!(g.bucket_keys().await.is_empty());
    assert!(g.settle_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_503_without_details() {
    let (_held, refusing) = refusing_addr();
    let g = gateway_with("", Relay::Endpoint(format!("http://{refusing}"))).await;
    let resp = g
        .call(Method::PUT, "x", ADMIN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "backend_unavailable");
    assert!(
        !text.contains(BUCKET) && !text.contains("127.0.0.1"),
        "no backend detail leaks: {text}"
    );
    let resp = g.call(Method::GET, "x", ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A chunked upload fails the same way, and nothing reached the (real) bucket.
    let resp = g
        .call(Method::PUT, "y", ADMIN)
        .body(chunked_body(random_bytes(6 * 1024 * 1024, 3), 65536))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    eventually(
        "the chunked upload is logged as backend_unavailable",
        || async {
            g.access_log_lines().iter().any(|l| {
                l["key"] == "y" && l["status"] == 503 && l["error_code"] == "backend_unavailable"
            })
        },
    )
    .await;
    assert!(g.bucket_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_every_field_and_no_secret() {
    let g = gateway("").await;
    let data = random_bytes(5000, 11);
    g.call(Method::PUT, "users/alice/log me", ALICE)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    g.fetch("users/alice/log me", ALICE).await;
    g.http
        .get(g.object_url("users/alice/x"))
        .header("authorization", "Bearer not-a-real-key-secret")
        .send()
        .await
        .unwrap();
    g.call(Method::GET, "users/bob/x", ALICE)
        .header("x-request-id", "trace-me")
        .send()
        .await
        .unwrap();
    eventually("four access log lines", || async {
        g.access_log_lines().len() >= 4
    })
    .await;

    let text = std::fs::read_to_string(&g.access_log).unwrap();
    for secret in [ALICE, ADMIN, "not-a-real-key-secret"] {
        assert!(!text.contains(secret), "a key leaked into the access log");
    }
    let lines = g.access_log_lines();
    // The admin seed is not here; 4 requests, 4 lines.
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        for field in [
            "ts",
            "request_id",
            "remote_addr",
            "principal",
            "auth",
            "method",
            "route",
            "key",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "backend_ms",
            "error_code",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
    }
    let put = lines.iter().find(|l| l["method"] == "PUT").unwrap();
    assert_eq!(put["principal"], "alice");
    assert_eq!(put["auth"], "api_key");
    assert_eq!(put["key"], "users/alice/log me");
    assert_eq!(put["status"], 200);
    assert_eq!(put["bytes_in"], 5000);
    assert!(put["backend_ms"].as_f64().is_some());
    let get = lines
        .iter()
        .find(|l| l["method"] == "GET" && l["status"] == 200)
        .unwrap();
    assert_eq!(get["bytes_out"], 5000);
    let denied = lines.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(denied["auth"], "none");
    assert_eq!(denied["error_code"], "unauthenticated");
    let forbidden = lines
        .iter()
        .find(|l| l["request_id"] == "trace-me")
        .unwrap();
    assert_eq!(forbidden["status"], 403);
    assert_eq!(forbidden["error_code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refusal_is_502_without_details() {
    let g = gateway("").await;
    // Take the bucket away behind the gateway's back.
    g.s3.delete_bucket().bucket(BUCKET).send().await.unwrap();
    let resp = g
        .http
        .get(format!("{}/v1/objects", g.url))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "backend_error");
    assert!(
        !text.contains(BUCKET) && !text.contains("NoSuchBucket"),
        "no backend detail leaks: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_gets_every_byte() {
    use tokio::io::AsyncReadExt;
    let g = gateway("").await;
    let data = random_bytes(24 * 1024 * 1024, 21);
    let resp = g
        .call(Method::PUT, "slow", ADMIN)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A small receive window and a pause longer than the SDK's stalled-stream grace period
    // (5 s): backpressure must hold the download, not fail it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = socket.connect(g.addr).await.unwrap();
    let head = format!(
        "GET /v1/objects/slow HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 65536];
    let n = s.read(&mut first).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let mut all = first[..n].to_vec();
    all.extend_from_slice(&rest);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(all.starts_with(b"HTTP/1.1 200"));
    assert_eq!(sha256(&all[split..]), sha256(&data));
}

/// Writes the whole request, body and all, and only then reads the answer: what simple
/// clients do. The write must not fail and the answer must be there.
async fn send_whole_body_then_read(g: &TestGateway, head: String, body: Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let wrote = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await
    }
    .await;
    if let Err(e) = wrote {
        return format!("write failed: {e}");
    }
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&out).into_owned(),
        Ok(Err(e)) => format!(
            "read failed after {} bytes: {e}; got {}",
            out.len(),
            String::from_utf8_lossy(&out)
        ),
        Err(_) => String::from_utf8_lossy(&out).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sending_an_over_limit_body_reliably_sees_413() {
    let g = gateway("").await;
    for _ in 0..3 {
        // Declared too large: refused before reading, then the rest is drained so the client
        // can finish writing and read the answer instead of a reset.
        let len = 32 * 1024 * 1024;
        let head = format!(
            "PUT /v1/objects/users/alice/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        let out = send_whole_body_then_read(&g, head, random_bytes(len, 1)).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("payload_too_large"), "{out}");

        // Chunked, cut at the limit mid-stream.
        let head = format!(
            "PUT /v1/objects/users/alice/y HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ALICE}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let mut body = Vec::new();
        for _ in 0..(32 * 16) {
            body.extend_from_slice(b"10000\r\n");
            body.extend_from_slice(&random_bytes(65536, 2));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let out = send_whole_body_then_read(&g, head, body).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    }
    assert!(g.settle_uploads().await.is_empty());
    assert!(g.bucket_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_multipart_uploads_are_swept() {
    let g = gateway("").await;
    // What a killed gateway leaves: an upload started and never finished.
    let created =
        g.s3.create_multipart_upload()
            .bucket(BUCKET)
            .key("users/alice/orphan")
            .send()
            .await
            .unwrap();
    assert!(created.upload_id().is_some());
    assert_eq!(
        g.pending_uploads().await,
        vec!["users/alice/orphan".to_string()]
    );
    // Too young to sweep...
    assert_eq!(
        g.backend
            .sweep_abandoned_uploads(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(g.pending_uploads().await.len(), 1);
    // ...old enough.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        g.backend
            .sweep_abandoned_uploads(Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
    assert!(g.pending_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_needs_more_than_10000_parts_is_refused_up_front() {
    let g = gateway("[limits]\nmax_object_size = \"5TiB\"\n").await;
    // 60 GiB is within the limit, but at 5 MiB parts it needs more than 10,000 of them:
    // refused before a byte is read.
    let raw = format!(
        "PUT /v1/objects/huge HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        60u64 * 1024 * 1024 * 1024
    );
    let out = g.raw(raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("10,000 parts"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_mid_upload_leaves_nothing() {
    // Any connection to S3 that carries more than 3 MiB is cut.
    let g = gateway_with("", Relay::CutAfter(3 * 1024 * 1024)).await;
    let key = "users/alice/cut-by-backend";
    let old = seed(&g, key).await;

    // Known length: one PutObject, cut in the middle.
    let data = random_bytes(6 * 1024 * 1024, 41);
    let resp = g
        .call(Method::PUT, key, ADMIN)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let v: Value = resp.json().await.unwrap();
    assert!(
        ["backend_error", "backend_unavailable"].contains(&v["error"]["code"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(g.bucket_object(key).await.unwrap(), old);

    // Chunked: the first 5 MiB part fits, the second part's connection is cut; the upload
    // is aborted (on a fresh connection) and nothing is completed.
    let resp = g
        .call(Method::PUT, key, ADMIN)
        .body(chunked_body(random_bytes(12 * 1024 * 1024, 42), 65536))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    assert!(
        g.settle_uploads().await.is_empty(),
        "no unfinished multipart upload"
    );
    assert_eq!(g.bucket_object(key).await.unwrap(), old);
    assert_eq!(g.bucket_keys().await, vec![key.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_is_504() {
    let g = gateway_with(
        "[backend]\nfirst_byte_timeout = \"1s\"\n",
        Relay::Endpoint(silent_backend().await),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = g.call(Method::GET, "x", ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "backend_timeout"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_buffers_share_one_budget_and_a_full_one_refuses_with_503() {
    let g = gateway("[backend]\nupload_buffer_memory = \"6MiB\"\n").await;
    let chunks = |data: &[u8]| {
        let mut wire = Vec::new();
        for c in data.chunks(64 * 1024) {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire
    };
    // A holds 4 MiB of the 6 in its part buffer and stalls.
    let a_data = random_bytes(5 * 1024 * 1024 + 1000, 21);
    let mut a = TcpStream::connect(g.addr).await.unwrap();
    a.write_all(
        format!(
            "PUT /v1/objects/budget/a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    a.write_all(&chunks(&a_data[..4 * 1024 * 1024]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B finds no room for its part and is refused, soon, with nothing left behind.
    let started = std::time::Instant::now();
    let resp = g
        .call(Method::PUT, "budget/b", ADMIN)
        .body(chunked_body(random_bytes(4 * 1024 * 1024, 22), 64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A goes on and completes.
    let mut rest = chunks(&a_data[4 * 1024 * 1024..]);
    rest.extend_from_slice(b"0\r\n\r\n");
    a.write_all(&rest).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read(&mut a, &mut answer),
    )
    .await
    .expect("A's answer within 20 s")
    .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(g.bucket_object("budget/a").await.unwrap(), a_data);
    assert_eq!(g.bucket_keys().await, vec!["budget/a"]);
    assert!(g.settle_uploads().await.is_empty());
    // The budget is whole again: B's retry goes through.
    let b_data = random_bytes(4 * 1024 * 1024, 23);
    let resp = g
        .call(Method::PUT, "budget/b", ADMIN)
        .body(chunked_body(b_data.clone(), 64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(g.bucket_object("budget/b").await.unwrap(), b_data);
}
