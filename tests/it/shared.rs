//! Several instances sharing their limits through a real `redis-server` (SPEC section 12):
//! a burst, a lockout and a quota hold across two gateways; with Redis gone, `local` keeps
//! serving on per-instance limits and `deny` refuses; when it comes back, limits are shared
//! again.

use std::time::{Duration, Instant};

use crate::common::*;
use portcullis::auth::hash_key;
use portcullis::config::OnRedisError;
use reqwest::StatusCode;
use serde_json::Value;

const BURSTY: &str = "bursty-key-0123456789";
const QUOTA: &str = "quota-key-0123456789a";

fn principals() -> String {
    format!(
        r#"
[rate_limit]
unauthenticated_per_ip = {{ requests_per_second = 1, burst = 3 }}

[[principals]]
name = "bursty"
api_keys = ["{bursty}"]
allow = ["get", "put", "list"]
rate_limit = {{ requests_per_second = 1, burst = 10 }}

[[principals]]
name = "quota"
api_keys = ["{quota}"]
allow = ["get", "put"]
max_bytes_per_day = "1000B"
"#,
        bursty = hash_key(BURSTY),
        quota = hash_key(QUOTA),
    )
}

/// A gateway (with its own embedded S3) whose limits live in the Redis at `url`.
async fn instance(url: &str, prefix: &str, on_error: OnRedisError) -> TestGateway {
    let redis = redis_config(url, prefix, on_error);
    gateway_tweaked(&principals(), Relay::Direct, move |c| c.redis = Some(redis)).await
}

async fn me(g: &TestGateway, key: &str) -> reqwest::Response {
    g.http
        .get(format!("{}/v1/me", g.url))
        .header("authorization", bearer(key))
        .send()
        .await
        .unwrap()
}

fn shared_up(g: &TestGateway) -> bool {
    g.gateway.state().shared.as_ref().unwrap().is_up()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_signatures_on_one_door_lock_the_address_out_of_the_other() {
    let redis = RedisServer::start().await;
    let config = redis_config(&redis.url(), "door:", OnRedisError::Local);
    let a = door_gateway_tweaked(&principals(), |c| c.redis = Some(config.clone())).await;
    let b = door_gateway_tweaked(&principals(), |c| c.redis = Some(config)).await;
    let wrong = one_attempt(&door_client_with(
        &a,
        ADMIN_AK,
        &secret_of(ALICE_AK),
        "us-east-1",
    ));
    for _ in 0..4 {
        let e = wrong
            .list_objects_v2()
            .bucket("files")
            .send()
            .await
            .unwrap_err();
        assert!(
            ["SignatureDoesNotMatch", "SlowDown"].contains(&s3_code(&e).as_str()),
            "{e:?}"
        );
    }
    // B saw no failure; its door refuses the right key as S3 clients expect to back off.
    let right = one_attempt(&door_client(&b, ADMIN_AK));
    let e = right
        .list_objects_v2()
        .bucket("files")
        .send()
        .await
        .unwrap_err();
    assert_eq!(s3_code(&e), "SlowDown");
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_burst() {
    let redis = RedisServer::start().await;
    let a = instance(&redis.url(), "burst:", OnRedisError::Local).await;
    let b = instance(&redis.url(), "burst:", OnRedisError::Local).await;
    assert!(shared_up(&a) && shared_up(&b));
    // 1/s, burst 10: alone, each instance would admit 10 at once (20 together).
    let started = Instant::now();
    let mut admitted = [0, 0];
    let mut refused = [0, 0];
    for i in 0..30 {
        let g = if i % 2 == 0 { &a } else { &b };
        match me(g, BURSTY).await.status() {
            StatusCode::OK => admitted[i % 2] += 1,
            StatusCode::TOO_MANY_REQUESTS => refused[i % 2] += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // One more request is earned each second the loop took.
    let earned = started.elapsed().as_secs() as usize;
    let total = admitted[0] + admitted[1];
    assert!(
        (10..=10 + earned).contains(&total),
        "{admitted:?} admitted in {:?}",
        started.elapsed()
    );
    assert!(refused[0] > 0 && refused[1] > 0, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_on_one_instance_holds_on_the_other() {
    let redis = RedisServer::start().await;
    let a = instance(&redis.url(), "lock:", OnRedisError::Local).await;
    let b = instance(&redis.url(), "lock:", OnRedisError::Local).await;
    // Three wrong keys on A (the burst), the fourth is refused there.
    for _ in 0..3 {
        assert_eq!(
            me(&a, "wrong-key-0123456789").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        me(&a, "wrong-key-0123456789").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // On B, which saw no failure, the address is locked out too, and a right key is
    // answered exactly as a wrong one.
    let right = me(&b, BURSTY).await;
    let wrong = me(&b, "wrong-key-0123456789").await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(wrong.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(right.headers().contains_key("retry-after"));
    let (right, wrong): (Value, Value) = (right.json().await.unwrap(), wrong.json().await.unwrap());
    assert_eq!(right["error"]["code"], wrong["error"]["code"]);
    assert_eq!(right["error"]["message"], wrong["error"]["message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_quota_holds_across_instances() {
    let redis = RedisServer::start().await;
    let a = instance(&redis.url(), "quota:", OnRedisError::Local).await;
    let b = instance(&redis.url(), "quota:", OnRedisError::Local).await;
    let put = a
        .call(reqwest::Method::PUT, "q.bin", QUOTA)
        .body(vec![7u8; 600]);
    assert_eq!(status_of(put).await, StatusCode::OK);
    // A's 600 bytes reach the shared count in its next flush; then 600 more do not fit on
    // B, and the upload is refused before its body.
    let day = portcullis::limits::quota::day_of(std::time::SystemTime::now());
    let key = format!("quota:quota:quota:{day}");
    eventually("A flushes its count", || async {
        redis.get(&key).await.as_deref() == Some("600")
    })
    .await;
    let refused = b
        .call(reqwest::Method::PUT, "q.bin", QUOTA)
        .body(vec![8u8; 600])
        .send()
        .await
        .unwrap();
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "quota_exceeded");
    assert!(b.bucket_object("q.bin").await.is_none());
    // A download that is admitted runs to its end even past the quota...
    let put = b
        .call(reqwest::Method::PUT, "small.bin", QUOTA)
        .body(vec![9u8; 100]);
    assert_eq!(status_of(put).await, StatusCode::OK);
    let got = a
        .call(reqwest::Method::GET, "q.bin", QUOTA)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().len(), 600);
    // ...and then the day is used up everywhere.
    for g in [&a, &b] {
        eventually("the quota is used up", || async {
            let got = g.call(reqwest::Method::GET, "small.bin", QUOTA);
            got.send().await.unwrap().status() == StatusCode::TOO_MANY_REQUESTS
        })
        .await;
    }
    // Other principals are not affected.
    assert_eq!(me(&a, BURSTY).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_local_serves_deny_refuses_and_sharing_resumes() {
    let mut redis = RedisServer::start().await;
    let local = instance(&redis.url(), "away:", OnRedisError::Local).await;
    let deny = instance(&redis.url(), "away:", OnRedisError::Deny).await;
    assert_eq!(me(&local, BURSTY).await.status(), StatusCode::OK);
    assert_eq!(me(&deny, BURSTY).await.status(), StatusCode::OK);

    redis.kill();
    // `local` keeps serving; `deny` answers 503 for what needs a shared decision.
    for _ in 0..3 {
        assert_eq!(me(&local, BURSTY).await.status(), StatusCode::OK);
    }
    assert!(!shared_up(&local));
    let refused = me(&deny, BURSTY).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "backend_unavailable");
    // Failed-auth limits never open up: the local one still locks the address out.
    for _ in 0..3 {
        me(&local, "wrong-key-0123456789").await;
    }
    assert_eq!(
        me(&local, "wrong-key-0123456789").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let metrics = portcullis::obs::metrics::render();
    assert!(
        metrics.contains("portcullis_shared_state_fallback_total"),
        "{metrics}"
    );

    redis.restart().await;
    for g in [&local, &deny] {
        eventually("Redis is seen again", || async { shared_up(g) }).await;
    }
    // Shared again: the decision is made in the restarted (empty) Redis.
    assert_eq!(redis.get("away:rate:bursty").await, None);
    assert_eq!(me(&deny, BURSTY).await.status(), StatusCode::OK);
    assert!(redis.get("away:rate:bursty").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_is_away_after_the_timeout() {
    let silent = silent_backend().await.replace("http://", "redis://");
    let mut config = redis_config(&silent, "silent:", OnRedisError::Local);
    config.timeout = portcullis::config::units::Span::millis(100);
    let local = gateway_tweaked(&principals(), Relay::Direct, move |c| {
        c.redis = Some(config)
    })
    .await;
    let started = Instant::now();
    assert_eq!(me(&local, BURSTY).await.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!shared_up(&local));
    let mut config = redis_config(&silent, "silent:", OnRedisError::Deny);
    config.timeout = portcullis::config::units::Span::millis(100);
    let deny = gateway_tweaked(&principals(), Relay::Direct, move |c| {
        c.redis = Some(config)
    })
    .await;
    assert_eq!(
        me(&deny, BURSTY).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn without_redis_the_quota_is_per_instance() {
    let g = gateway(&principals()).await;
    let put = g
        .call(reqwest::Method::PUT, "q.bin", QUOTA)
        .body(vec![1u8; 600]);
    assert_eq!(status_of(put).await, StatusCode::OK);
    let put = g
        .call(reqwest::Method::PUT, "r.bin", QUOTA)
        .body(vec![1u8; 600]);
    let refused = put.send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(g.bucket_object("r.bin").await.is_none());
    // 600 of 1000 used: a smaller one still fits.
    let put = g
        .call(reqwest::Method::PUT, "s.bin", QUOTA)
        .body(vec![1u8; 400]);
    assert_eq!(status_of(put).await, StatusCode::OK);
    let get = g.call(reqwest::Method::GET, "s.bin", QUOTA);
    assert_eq!(status_of(get).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let pki = Pki::new();
    let redis = RedisServer::start_tls(&pki).await;
    let url = format!("rediss://localhost:{}", redis.port);
    let mut trusted = redis_config(&url, "tls:", OnRedisError::Deny);
    trusted.ca_file = Some(pki.ca_file.clone());
    let g = gateway_tweaked(&principals(), Relay::Direct, move |c| {
        c.redis = Some(trusted)
    })
    .await;
    assert!(shared_up(&g));
    assert_eq!(me(&g, BURSTY).await.status(), StatusCode::OK);
    // Without the CA, the server's certificate is not trusted: Redis counts as away.
    let untrusted = redis_config(&url, "tls:", OnRedisError::Deny);
    let g = gateway_tweaked(&principals(), Relay::Direct, move |c| {
        c.redis = Some(untrusted)
    })
    .await;
    assert!(!shared_up(&g));
    assert_eq!(
        me(&g, BURSTY).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}
