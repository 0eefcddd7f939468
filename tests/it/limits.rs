//! Rate limits, fairness, overload and connection deadlines, against a real gateway.

use std::time::Duration;

use crate::common::*;
use portcullis::auth::hash_key;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds")
}

async fn code(resp: reqwest::Response) -> String {
    resp.json::<Value>().await.unwrap()["error"]["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_rate_gets_429_with_retry_after() {
    let g = gateway(&format!(
        "[[principals]]\nname = \"slow\"\napi_keys = [\"{}\"]\nallow = [\"get\"]\nrate_limit = {{ requests_per_second = 1, burst = 3 }}\n",
        hash_key("slow-key-0123456789")
    ))
    .await;
    // Burst 3 at 1/s: the 4th request inside a second is refused. The bound allows one more
    // per second elapsed, so a slow machine cannot make this flaky.
    let started = std::time::Instant::now();
    let mut allowed = 0;
    let resp = loop {
        let resp = g
            .call(Method::GET, "x", "slow-key-0123456789")
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            break resp;
        }
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        allowed += 1;
        assert!(
            allowed <= 3 + started.elapsed().as_secs() as usize,
            "never limited"
        );
    };
    assert!(allowed >= 3, "the burst is allowed");
    assert!((1..=2).contains(&retry_after(&resp)));
    assert_eq!(code(resp).await, "rate_limited");
    // Others are not affected.
    assert_eq!(
        status_of(g.call(Method::GET, "x", ADMIN)).await,
        StatusCode::NOT_FOUND
    );
    // The budget refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        g.call(Method::GET, "x", "slow-key-0123456789")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_address() {
    let g =
        gateway("[rate_limit]\nunauthenticated_per_ip = { requests_per_second = 1, burst = 2 }\n")
            .await;
    // No credential at all is not an attempt.
    for _ in 0..5 {
        assert_eq!(
            g.http.get(g.object_url("x")).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..2 {
        let resp = g.call(Method::GET, "x", "guess").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = g.call(Method::GET, "x", "guess").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&resp) >= 1);
    // While blocked, not even a valid key is checked: guessing cannot go faster.
    let resp = g.call(Method::GET, "x", ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status_of(g.call(Method::GET, "x", ADMIN)).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_counts_only_from_trusted_proxies() {
    let limit = "unauthenticated_per_ip = { requests_per_second = 1, burst = 1 }";
    // Trusted: each forwarded client has its own budget, and the log shows it.
    let g = gateway(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[rate_limit]\n{limit}\n"
    ))
    .await;
    let from = |ip: &'static str| {
        g.call(Method::GET, "x", "guess")
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(
        from("198.51.100.1").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        from("198.51.100.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("198.51.100.2").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    eventually("the forwarded address is logged", || async {
        g.access_log_lines()
            .iter()
            .any(|l| l["remote_addr"] == "198.51.100.2")
    })
    .await;

    // Not trusted: the header is a mere claim and is ignored.
    let g = gateway(&format!("[rate_limit]\n{limit}\n")).await;
    let from = |ip: &'static str| {
        g.call(Method::GET, "x", "guess")
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(
        from("198.51.100.1").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        from("198.51.100.2").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    eventually("both requests are logged", || async {
        g.access_log_lines().len() >= 2
    })
    .await;
    assert!(
        g.access_log_lines()
            .iter()
            .all(|l| l["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_at_once_with_503() {
    let g = gateway("[server]\nmax_concurrent_requests = 2\n").await;
    let big = random_bytes(16 * 1024 * 1024, 3);
    assert_eq!(
        g.call(Method::PUT, "big", ADMIN)
            .body(big)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let a = slow_download(&g.url, ADMIN, "big").await.0;
    let b = slow_download(&g.url, ADMIN, "big").await.0;
    let started = std::time::Instant::now();
    let resp = g.call(Method::GET, "big", ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed at once, not queued"
    );
    assert_eq!(retry_after(&resp), 1);
    assert_eq!(code(resp).await, "overloaded");
    drop((a, b));
    eventually("the slots are released", || async {
        status_of(g.call(Method::HEAD, "big", ADMIN)).await == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_cannot_take_every_slot() {
    let g = gateway("[rate_limit]\nmax_concurrent_per_principal = 1\n").await;
    let big = random_bytes(16 * 1024 * 1024, 4);
    assert_eq!(
        g.call(Method::PUT, "users/alice/big", ADMIN)
            .body(big)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let held = slow_download(&g.url, ALICE, "users/alice/big").await.0;
    let resp = g
        .call(Method::HEAD, "users/alice/big", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&resp), 1);
    // Another principal is served.
    assert_eq!(
        status_of(g.call(Method::HEAD, "users/alice/big", READER)).await,
        StatusCode::OK
    );
    drop(held);
    eventually("alice's slot is released", || async {
        status_of(g.call(Method::HEAD, "users/alice/big", ALICE)).await == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_dropped() {
    let g = gateway("[server]\nheader_read_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /v1/objects/x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Trickle a byte now and then, never finishing the head.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b"a").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_per_second_delays_bodies_both_ways_and_corrupts_nothing() {
    let g = gateway("[rate_limit]\nbytes_per_second = \"256KiB\"\n").await;
    let data = random_bytes(768 * 1024, 9);
    // 256 KiB of burst, then 512 KiB at 256 KiB/s: at least 2 s each way. (A lower bound
    // only: a busy machine can only make it slower.)
    let started = std::time::Instant::now();
    let resp = g
        .call(Method::PUT, "t", ADMIN)
        .body(chunked_body(data.clone(), 100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let up = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    let body = g.fetch("t", ADMIN).await;
    let down = started.elapsed();
    assert_eq!(sha256(&body), sha256(&data));
    assert!(up >= Duration::from_millis(1900), "upload took {up:?}");
    assert!(
        down >= Duration::from_millis(1900),
        "download took {down:?}"
    );
    assert_eq!(g.bucket_object("t").await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_client_sees_the_413_and_oversized_headers_are_refused() {
    let g = gateway("").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = g.object_url("users/alice/h2-big");
    // Declared too large, and streamed past the limit.
    for chunked in [false, true] {
        let data = random_bytes(12 * 1024 * 1024, 5);
        let body = if chunked {
            chunked_body(data, 65536)
        } else {
            reqwest::Body::from(data)
        };
        let resp = h2
            .put(&url)
            .header("authorization", bearer(ALICE))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(
            resp.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "chunked={chunked}"
        );
        assert_eq!(code(resp).await, "payload_too_large");
    }
    // The connection is still good for the next request.
    let resp = h2
        .put(&url)
        .header("authorization", bearer(ALICE))
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(g.settle_uploads().await.is_empty());

    // 100 KiB of headers: more than the 64 KiB the server accepts.
    let resp = h2
        .get(&url)
        .header("authorization", bearer(ALICE))
        .header("x-big", "a".repeat(100 * 1024))
        .send()
        .await;
    assert!(resp.map(|r| !r.status().is_success()).unwrap_or(true));
}
